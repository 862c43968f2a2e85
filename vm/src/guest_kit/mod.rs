//! The builtin guest kit: tiny x86-64 programs that tests and benchmarks run inside
//! NovaCron microVMs, assembled at run time with iced-x86 (no external assembler).
//!
//! Programs (see [`BuiltinGuest`]):
//! - `hello`: prints a greeting on COM1 and exits.
//! - `counter`: a deterministic register + memory computation whose result changes if a
//!   snapshot, restore or migration loses either; [`counter_expected`] is its reference.
//! - `idle`: reports STARTED and halts for good (no EXIT).
//! - `dirtier`: dirties one word per 4 KiB page of a working set at a paced rate, forever.
//!
//! Execution environment the programs rely on (the VMM must provide it): 64-bit long mode
//! at CPL 0 with flat segments, the identity map of [`layout::IDENTITY_MAPPED_END`] bytes,
//! interrupts off, `RSP = GuestImage::stack_top`, `RIP = GuestImage::entry`. The programs
//! never fault and never enable interrupts; they talk to the host only through `out` to
//! COM1 (one byte each, no LSR polling) and the paravirtual report port
//! (`layout::PV_PORT_*`). Each finishing program reports `EXIT(0)` and then parks in a
//! `cli; hlt; jmp` loop: the VMM is expected to stop the guest at the EXIT report.
//!
//! Every program first reports `STARTED(program id)` (see [`BuiltinGuest::program_id`]).

mod asm;
mod spec;

use crate::machine::layout;
use thiserror::Error;

pub use asm::HELLO_MESSAGE;
pub use spec::{program_names, usage, PROGRAMS};

/// Program id reported with `STARTED` by `hello`.
pub const PROGRAM_ID_HELLO: u64 = 1;
/// Program id reported with `STARTED` by `counter`.
pub const PROGRAM_ID_COUNTER: u64 = 2;
/// Program id reported with `STARTED` by `dirtier`.
pub const PROGRAM_ID_DIRTIER: u64 = 3;
/// `STARTED` value of `idle`.
pub const PROGRAM_ID_IDLE: u64 = 4;

/// Default number of 8-byte words of the `counter` data range (2 MiB, so the default range
/// `[COUNTER_DEFAULT_BASE, +2 MiB)` fits in the smallest guest, `layout::MIN_MEM_BYTES`).
pub const COUNTER_DEFAULT_WORDS: u64 = 256 * 1024;
/// Default number of passes of `counter`: 786,432 inner iterations. Calibration on the
/// nested development KVM (software-nested, 2 busy cores): ~3.7 us per inner iteration, so
/// the default run takes ~3 s (10 passes took 9.6 s, more than "a few seconds").
pub const COUNTER_DEFAULT_PASSES: u64 = 3;
/// Measured cost of one inner `counter` iteration on the nested development KVM, in ns
/// (a hint for timeouts).
pub const COUNTER_CALIBRATED_NS_PER_ITERATION: u64 = 3_700;
/// Largest `passes` accepted (the pass counter is reported as a 64-bit value, but more than
/// this is surely a mistake).
pub const COUNTER_MAX_PASSES: u64 = u32::MAX as u64;
/// Initial accumulator of `counter` (the 64-bit golden ratio constant).
pub const COUNTER_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// Multiplier of `counter` (the 64-bit FNV prime).
pub const COUNTER_MULTIPLIER: u64 = 0x0000_0100_0000_01B3;
/// Rotation of `counter`'s accumulator, in bits.
pub const COUNTER_ROTATE: u32 = 17;

/// Default working-set size of `dirtier`, in MiB.
pub const DIRTIER_DEFAULT_MIB: u64 = 128;
/// Default dirtying rate of `dirtier`, in MiB/s of pages (0 = unpaced).
pub const DIRTIER_DEFAULT_RATE_MIB_S: u64 = 20;
/// Largest rate accepted, in MiB/s (1 TiB/s: far above what a vCPU can dirty).
pub const DIRTIER_MAX_RATE_MIB_S: u64 = 1 << 20;
/// If `dirtier` falls behind its schedule by more than this (e.g. after the VM was paused),
/// it restarts the schedule from "now" instead of bursting to catch up.
pub const DIRTIER_MAX_LAG_MS: u64 = 100;
/// `dirtier` reports `PROGRESS(total pages dirtied)` each time this many pages were dirtied.
pub const DIRTIER_PROGRESS_PAGES: u64 = 256;
/// Pages of 4 KiB per MiB.
const PAGES_PER_MIB: u64 = (1 << 20) / layout::PAGE_SIZE;

/// Parameters of the `counter` program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterParams {
    /// Guest-physical address of the data range (8-byte aligned).
    pub base: u64,
    /// Number of 8-byte words in the data range.
    pub words: u64,
    /// Number of passes over the range.
    pub passes: u64,
    /// Also print `pass=<n>` (16 hex digits) on the console after each pass: output that
    /// grows while the guest runs, for tests that a console survives restores and moves.
    pub print_passes: bool,
    /// Also hand the result (8 bytes, little-endian, stored over the range's first word)
    /// over through the result port before exiting.
    pub result_blob: bool,
}

impl Default for CounterParams {
    fn default() -> Self {
        Self {
            base: layout::COUNTER_DEFAULT_BASE,
            words: COUNTER_DEFAULT_WORDS,
            passes: COUNTER_DEFAULT_PASSES,
            print_passes: false,
            result_blob: false,
        }
    }
}

/// Parameters of the `dirtier` program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtierParams {
    /// Guest-physical address of the working set (4 KiB aligned).
    pub base: u64,
    /// Working-set size in MiB.
    pub mib: u64,
    /// Target rate in MiB/s of dirtied pages (`rate * 256` pages per second); 0 = unpaced.
    pub rate_mib_s: u64,
}

impl Default for DirtierParams {
    fn default() -> Self {
        Self {
            base: layout::DIRTIER_DEFAULT_BASE,
            mib: DIRTIER_DEFAULT_MIB,
            rate_mib_s: DIRTIER_DEFAULT_RATE_MIB_S,
        }
    }
}

/// A builtin guest program and its parameters. Parse one from a CLI spec with
/// [`std::str::FromStr`] (`"builtin:counter:words=1024,passes=8"`); [`std::fmt::Display`]
/// gives back a spec that parses to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinGuest {
    Hello,
    Idle,
    Counter(CounterParams),
    Dirtier(DirtierParams),
}

/// A program ready to load: copy `code` to guest-physical `load_addr`, set `RIP = entry`
/// and `RSP = stack_top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub code: Vec<u8>,
    pub load_addr: u64,
    pub entry: u64,
    pub stack_top: u64,
}

/// Everything that can go wrong parsing a spec or building a program.
#[derive(Debug, Error)]
pub enum GuestKitError {
    #[error("guest spec {spec:?} does not start with \"builtin:\"")]
    NotBuiltin { spec: String },
    #[error("unknown builtin guest program {name:?} (known: {})", program_names())]
    UnknownProgram { name: String },
    #[error("builtin:{program}: unknown parameter {key:?} (known: {known})")]
    UnknownKey {
        program: &'static str,
        key: String,
        known: String,
    },
    #[error("builtin:{program}: parameter {param:?} is not of the form key=value")]
    MalformedParam {
        program: &'static str,
        param: String,
    },
    #[error("builtin:{program}: parameter {key:?} given more than once")]
    DuplicateKey { program: &'static str, key: String },
    #[error("builtin:{program}: {key}={value:?} is not a decimal or 0x-hex 64-bit number")]
    BadNumber {
        program: &'static str,
        key: &'static str,
        value: String,
    },
    #[error("builtin:{program}: {key}={value:?} is not 0 or 1")]
    BadFlag {
        program: &'static str,
        key: &'static str,
        value: String,
    },
    #[error("builtin:{program}: {field} must not be zero")]
    Zero {
        program: &'static str,
        field: &'static str,
    },
    #[error("builtin:{program}: {field}={value} exceeds the limit {max}")]
    TooLarge {
        program: &'static str,
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("builtin:{program}: base={base:#x} is not {align}-byte aligned")]
    Misaligned {
        program: &'static str,
        base: u64,
        align: u64,
    },
    #[error(
        "builtin:{program}: data range [{start:#x}, {end:#x}) must lie in [{min:#x}, {limit:#x}) \
         (above the guest kit code region, inside guest RAM below the MMIO hole and the identity map)"
    )]
    RangeOutside {
        program: &'static str,
        start: u64,
        end: u64,
        min: u64,
        limit: u64,
    },
    #[error("builtin:{program}: data range at base={base:#x} overflows 64-bit addresses")]
    RangeOverflow { program: &'static str, base: u64 },
    #[error(
        "guest memory of {mem_bytes:#x} bytes does not hold the guest kit code region ending at {needed:#x}"
    )]
    MemoryTooSmall { mem_bytes: u64, needed: u64 },
    #[error(
        "builtin:dirtier: rate={rate_mib_s} MiB/s needs the host TSC frequency, but tsc_khz is 0"
    )]
    MissingTscKhz { rate_mib_s: u64 },
    #[error(
        "builtin:dirtier: rate={rate_mib_s} MiB/s is too fast to pace with a {tsc_khz} kHz TSC \
         (less than one tick per page)"
    )]
    RateTooHigh { rate_mib_s: u64, tsc_khz: u32 },
    #[error("builtin:{program}: assembled code is {len} bytes, the code region holds {max}")]
    CodeTooLarge {
        program: &'static str,
        len: usize,
        max: u64,
    },
    #[error("builtin:{program}: iced-x86 failed to assemble: {source}")]
    Assemble {
        program: &'static str,
        #[source]
        source: iced_x86::IcedError,
    },
}

impl BuiltinGuest {
    /// The program's name as used in specs (`"hello"`, `"counter"`, ...: [`PROGRAMS`]).
    pub fn name(&self) -> &'static str {
        match self {
            BuiltinGuest::Hello => "hello",
            BuiltinGuest::Idle => "idle",
            BuiltinGuest::Counter(_) => "counter",
            BuiltinGuest::Dirtier(_) => "dirtier",
        }
    }

    /// The value the program reports with `STARTED`.
    pub fn program_id(&self) -> u64 {
        match self {
            BuiltinGuest::Hello => PROGRAM_ID_HELLO,
            BuiltinGuest::Idle => PROGRAM_ID_IDLE,
            BuiltinGuest::Counter(_) => PROGRAM_ID_COUNTER,
            BuiltinGuest::Dirtier(_) => PROGRAM_ID_DIRTIER,
        }
    }

    /// Checks the parameters against a guest of `mem_bytes` bytes (the guest kit's code
    /// region and each program's data range inside the guest's RAM): everything
    /// [`assemble`](Self::assemble) checks except what needs the guest's TSC frequency (a
    /// paced `dirtier` too fast for its TSC), which only the VMM knows. Callers that start a
    /// VM later (the daemon, `vm run`) call this first, so a spec that cannot run is refused
    /// before anything is recorded or spawned.
    pub fn validate(&self, mem_bytes: u64) -> Result<(), GuestKitError> {
        if mem_bytes < layout::GUEST_KIT_CODE_END {
            return Err(GuestKitError::MemoryTooSmall {
                mem_bytes,
                needed: layout::GUEST_KIT_CODE_END,
            });
        }
        match self {
            BuiltinGuest::Hello | BuiltinGuest::Idle => Ok(()),
            BuiltinGuest::Counter(p) => validate_counter(p, mem_bytes),
            BuiltinGuest::Dirtier(p) => validate_dirtier(p, mem_bytes),
        }
    }

    /// Validates the parameters against a guest of `mem_bytes` bytes
    /// ([`validate`](Self::validate)) and assembles the program. `tsc_khz` (the guest TSC
    /// frequency) is only used by a paced `dirtier`.
    pub fn assemble(&self, mem_bytes: u64, tsc_khz: u32) -> Result<GuestImage, GuestKitError> {
        self.validate(mem_bytes)?;
        let program = self.name();
        let code = match self {
            BuiltinGuest::Hello => asm::hello(),
            BuiltinGuest::Idle => asm::idle(),
            BuiltinGuest::Counter(p) => asm::counter(p),
            BuiltinGuest::Dirtier(p) => asm::dirtier(p, dirtier_pacing(p.rate_mib_s, tsc_khz)?),
        }
        .map_err(|source| GuestKitError::Assemble { program, source })?;
        let max = layout::GUEST_KIT_CODE_END - layout::GUEST_KIT_CODE_ADDR;
        if code.len() as u64 > max {
            return Err(GuestKitError::CodeTooLarge {
                program,
                len: code.len(),
                max,
            });
        }
        tracing::debug!(program, len = code.len(), "assembled builtin guest");
        Ok(GuestImage {
            code,
            load_addr: layout::GUEST_KIT_CODE_ADDR,
            entry: layout::GUEST_KIT_CODE_ADDR,
            stack_top: layout::GUEST_KIT_STACK_TOP,
        })
    }
}

/// Pure-Rust reference of the `counter` program: the value it reports with `RESULT`.
/// Allocates `words * 8` bytes (as much as the guest's data range).
pub fn counter_expected(params: &CounterParams) -> u64 {
    let words = usize::try_from(params.words).unwrap_or(usize::MAX);
    let mut mem = vec![0u64; words];
    let mut acc = COUNTER_SEED;
    for pass in 0..params.passes {
        for word in mem.iter_mut() {
            acc = (acc ^ *word)
                .wrapping_mul(COUNTER_MULTIPLIER)
                .rotate_left(COUNTER_ROTATE)
                .wrapping_add(pass);
            *word = acc;
        }
    }
    acc
}

/// The line `counter` prints on the serial console for `result` (without the newline).
pub fn result_line(result: u64) -> String {
    format!("result={result:016x}")
}

/// The line `counter` with `print_passes` prints after pass `n` (counted from 1; without
/// the newline).
pub fn pass_line(n: u64) -> String {
    format!("pass={n:016x}")
}

/// The result blob `counter` with `result_blob` hands over: its result, little-endian.
pub fn counter_expected_blob(params: &CounterParams) -> Vec<u8> {
    counter_expected(params).to_le_bytes().to_vec()
}

/// Everything `counter` prints on the serial console: the pass lines when it prints them,
/// then its result line.
pub fn counter_expected_output(params: &CounterParams) -> String {
    let mut out = String::new();
    if params.print_passes {
        for n in 1..=params.passes {
            out.push_str(&pass_line(n));
            out.push('\n');
        }
    }
    out.push_str(&result_line(counter_expected(params)));
    out.push('\n');
    out
}

/// Highest address (exclusive) a data range may reach in a guest of `mem_bytes` bytes: RAM
/// above `MMIO_GAP_START` is relocated above 4 GiB, outside the identity map.
fn data_limit(mem_bytes: u64) -> u64 {
    mem_bytes
        .min(layout::MMIO_GAP_START)
        .min(layout::IDENTITY_MAPPED_END)
}

/// Checks that `[base, base + len)` lies above the code region and inside usable RAM.
fn check_range(
    program: &'static str,
    base: u64,
    len: u64,
    mem_bytes: u64,
) -> Result<(), GuestKitError> {
    let end = base
        .checked_add(len)
        .ok_or(GuestKitError::RangeOverflow { program, base })?;
    let (min, limit) = (layout::GUEST_KIT_CODE_END, data_limit(mem_bytes));
    if base < min || end > limit {
        return Err(GuestKitError::RangeOutside {
            program,
            start: base,
            end,
            min,
            limit,
        });
    }
    Ok(())
}

fn validate_counter(p: &CounterParams, mem_bytes: u64) -> Result<(), GuestKitError> {
    const PROGRAM: &str = "counter";
    if p.words == 0 {
        return Err(GuestKitError::Zero {
            program: PROGRAM,
            field: "words",
        });
    }
    if p.passes == 0 {
        return Err(GuestKitError::Zero {
            program: PROGRAM,
            field: "passes",
        });
    }
    at_most(PROGRAM, "passes", p.passes, COUNTER_MAX_PASSES)?;
    if p.base % 8 != 0 {
        return Err(GuestKitError::Misaligned {
            program: PROGRAM,
            base: p.base,
            align: 8,
        });
    }
    let len = p.words.checked_mul(8).ok_or(GuestKitError::RangeOverflow {
        program: PROGRAM,
        base: p.base,
    })?;
    check_range(PROGRAM, p.base, len, mem_bytes)
}

/// How a paced `dirtier` spaces its pages, in TSC ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    /// Ticks between two pages.
    pub ticks_per_page: u64,
    /// Lag beyond which the schedule restarts from "now".
    pub max_lag_ticks: u64,
}

/// Validates a `dirtier`'s working set and rate bound (its pacing needs the TSC:
/// [`dirtier_pacing`]).
fn validate_dirtier(p: &DirtierParams, mem_bytes: u64) -> Result<(), GuestKitError> {
    const PROGRAM: &str = "dirtier";
    if p.mib == 0 {
        return Err(GuestKitError::Zero {
            program: PROGRAM,
            field: "mib",
        });
    }
    if p.base % layout::PAGE_SIZE != 0 {
        return Err(GuestKitError::Misaligned {
            program: PROGRAM,
            base: p.base,
            align: layout::PAGE_SIZE,
        });
    }
    let len = p
        .mib
        .checked_mul(1 << 20)
        .ok_or(GuestKitError::RangeOverflow {
            program: PROGRAM,
            base: p.base,
        })?;
    check_range(PROGRAM, p.base, len, mem_bytes)?;
    at_most(PROGRAM, "rate", p.rate_mib_s, DIRTIER_MAX_RATE_MIB_S)
}

/// A parameter that must not exceed `max`.
fn at_most(
    program: &'static str,
    field: &'static str,
    value: u64,
    max: u64,
) -> Result<(), GuestKitError> {
    if value > max {
        return Err(GuestKitError::TooLarge {
            program,
            field,
            value,
            max,
        });
    }
    Ok(())
}

/// A paced `dirtier`'s spacing of pages on a `tsc_khz` TSC (`None` when unpaced); the rate
/// is within [`DIRTIER_MAX_RATE_MIB_S`] ([`validate_dirtier`]).
fn dirtier_pacing(rate_mib_s: u64, tsc_khz: u32) -> Result<Option<Pacing>, GuestKitError> {
    if rate_mib_s == 0 {
        return Ok(None);
    }
    if tsc_khz == 0 {
        return Err(GuestKitError::MissingTscKhz { rate_mib_s });
    }
    let ticks_per_s = u64::from(tsc_khz) * 1000;
    let pages_per_s = rate_mib_s.saturating_mul(PAGES_PER_MIB);
    // Round to nearest: the rate error is at most half a tick per page.
    let ticks_per_page = (ticks_per_s + pages_per_s / 2) / pages_per_s;
    if ticks_per_page == 0 {
        return Err(GuestKitError::RateTooHigh {
            rate_mib_s,
            tsc_khz,
        });
    }
    Ok(Some(Pacing {
        ticks_per_page,
        max_lag_ticks: u64::from(tsc_khz) * DIRTIER_MAX_LAG_MS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};

    const MEM: u64 = 256 << 20;
    const TSC_KHZ: u32 = 2_000_000;

    fn all_guests() -> Vec<BuiltinGuest> {
        vec![
            BuiltinGuest::Hello,
            BuiltinGuest::Idle,
            BuiltinGuest::Counter(CounterParams::default()),
            BuiltinGuest::Counter(CounterParams {
                base: 0x30_0008,
                words: 1,
                passes: 1,
                print_passes: false,
                result_blob: false,
            }),
            BuiltinGuest::Dirtier(DirtierParams::default()),
            BuiltinGuest::Dirtier(DirtierParams {
                rate_mib_s: 0,
                ..DirtierParams::default()
            }),
        ]
    }

    fn decode(image: &GuestImage) -> Vec<Instruction> {
        let mut decoder = Decoder::with_ip(64, &image.code, image.load_addr, DecoderOptions::NONE);
        decoder.iter().collect()
    }

    #[test]
    fn images_decode_fully_and_fit_the_code_region() {
        for guest in all_guests() {
            let image = guest.assemble(MEM, TSC_KHZ).unwrap();
            assert_eq!(image.load_addr, layout::GUEST_KIT_CODE_ADDR);
            assert_eq!(image.entry, layout::GUEST_KIT_CODE_ADDR);
            assert_eq!(image.stack_top, layout::GUEST_KIT_STACK_TOP);
            assert!(!image.code.is_empty());
            assert!(
                image.load_addr + image.code.len() as u64 <= layout::GUEST_KIT_CODE_END,
                "{guest}: {} bytes",
                image.code.len()
            );
            let instructions = decode(&image);
            let decoded_len: usize = instructions.iter().map(|i| i.len()).sum();
            assert_eq!(decoded_len, image.code.len(), "{guest}: trailing bytes");
            for ins in &instructions {
                assert!(
                    !ins.is_invalid(),
                    "{guest}: invalid instruction at {:#x}",
                    ins.ip()
                );
            }
        }
    }

    #[test]
    fn images_never_raise_or_enable_interrupts() {
        let forbidden = [
            Mnemonic::Int,
            Mnemonic::Int1,
            Mnemonic::Int3,
            Mnemonic::Into,
            Mnemonic::Sti,
            Mnemonic::Iret,
            Mnemonic::Iretd,
            Mnemonic::Iretq,
            Mnemonic::Ud0,
            Mnemonic::Ud1,
            Mnemonic::Ud2,
            Mnemonic::Popf,
            Mnemonic::Popfq,
            Mnemonic::Syscall,
            Mnemonic::Sysret,
        ];
        for guest in all_guests() {
            let image = guest.assemble(MEM, TSC_KHZ).unwrap();
            for ins in decode(&image) {
                assert!(
                    !forbidden.contains(&ins.mnemonic()),
                    "{guest}: {:?} at {:#x}",
                    ins.mnemonic(),
                    ins.ip()
                );
            }
        }
    }

    #[test]
    fn branches_stay_inside_the_image() {
        for guest in all_guests() {
            let image = guest.assemble(MEM, TSC_KHZ).unwrap();
            let end = image.load_addr + image.code.len() as u64;
            for ins in decode(&image) {
                if ins.op0_kind() == iced_x86::OpKind::NearBranch64 {
                    let target = ins.near_branch_target();
                    assert!(
                        (image.load_addr..end).contains(&target),
                        "{guest}: branch at {:#x} to {target:#x}",
                        ins.ip()
                    );
                }
            }
        }
    }

    #[test]
    fn finishing_programs_end_parked_in_cli_hlt_jmp() {
        for guest in [
            BuiltinGuest::Hello,
            BuiltinGuest::Idle,
            BuiltinGuest::Counter(CounterParams::default()),
        ] {
            let image = guest.assemble(MEM, 0).unwrap();
            let ins = decode(&image);
            let tail: Vec<Mnemonic> = ins[ins.len() - 3..].iter().map(|i| i.mnemonic()).collect();
            assert_eq!(
                tail,
                [Mnemonic::Cli, Mnemonic::Hlt, Mnemonic::Jmp],
                "{guest}"
            );
            let cli_ip = ins[ins.len() - 3].ip();
            assert_eq!(ins[ins.len() - 1].near_branch_target(), cli_ip, "{guest}");
        }
    }

    #[test]
    fn hello_prints_the_message_as_immediates() {
        let image = BuiltinGuest::Hello.assemble(MEM, 0).unwrap();
        let printed: Vec<u8> = decode(&image)
            .windows(2)
            .filter(|w| w[0].mnemonic() == Mnemonic::Mov && w[1].mnemonic() == Mnemonic::Out)
            .filter(|w| w[0].op0_register() == iced_x86::Register::AL)
            .map(|w| w[0].immediate8())
            .collect();
        assert_eq!(printed, HELLO_MESSAGE.as_bytes());
    }

    #[test]
    fn counter_known_answers() {
        let one = |words, passes| {
            counter_expected(&CounterParams {
                base: layout::COUNTER_DEFAULT_BASE,
                words,
                passes,
                print_passes: false,
                result_blob: false,
            })
        };
        // words=1, passes=1: rotl17((seed ^ 0) * M) + 0, worked out independently.
        assert_eq!(one(1, 1), 0xd666_9721_af5e_457f);
        // words=1, passes=2: the second pass reads back acc, so acc ^ x = 0 and acc = 0 + 1.
        assert_eq!(one(1, 2), 1);
        // With one word, memory always equals acc after a pass, so later passes give p.
        assert_eq!(one(1, 3), 2);
        assert_eq!(one(1, 1000), 999);
        // Memory matters: words=2 differs from words=1 and passes matter.
        assert_ne!(one(2, 1), one(1, 1));
        assert_ne!(one(2, 2), one(2, 3));
    }

    #[test]
    fn result_line_is_sixteen_lower_case_digits() {
        assert_eq!(result_line(1), "result=0000000000000001");
        assert_eq!(
            result_line(0xDEAD_BEEF_0BAD_F00D),
            "result=deadbeef0badf00d"
        );
        assert_eq!(result_line(u64::MAX), "result=ffffffffffffffff");
    }

    #[test]
    fn counter_defaults_fit_the_smallest_guest() {
        let guest = BuiltinGuest::Counter(CounterParams::default());
        guest.assemble(layout::MIN_MEM_BYTES, 0).unwrap();
        // "A few seconds" on the calibrated nested KVM.
        let iterations = COUNTER_DEFAULT_WORDS * COUNTER_DEFAULT_PASSES;
        let ms = iterations * COUNTER_CALIBRATED_NS_PER_ITERATION / 1_000_000;
        assert!((2_000..=5_000).contains(&ms), "{ms} ms");
    }

    fn counter(base: u64, words: u64, passes: u64) -> BuiltinGuest {
        BuiltinGuest::Counter(CounterParams {
            base,
            words,
            passes,
            print_passes: false,
            result_blob: false,
        })
    }

    fn dirtier(base: u64, mib: u64, rate_mib_s: u64) -> BuiltinGuest {
        BuiltinGuest::Dirtier(DirtierParams {
            base,
            mib,
            rate_mib_s,
        })
    }

    #[test]
    fn counter_validation_errors() {
        let base = layout::COUNTER_DEFAULT_BASE;
        assert!(matches!(
            counter(base, 0, 1).assemble(MEM, 0),
            Err(GuestKitError::Zero {
                program: "counter",
                field: "words"
            })
        ));
        assert!(matches!(
            counter(base, 1, 0).assemble(MEM, 0),
            Err(GuestKitError::Zero {
                program: "counter",
                field: "passes"
            })
        ));
        assert!(matches!(
            counter(base, 1, COUNTER_MAX_PASSES + 1).assemble(MEM, 0),
            Err(GuestKitError::TooLarge {
                field: "passes",
                ..
            })
        ));
        assert!(matches!(
            counter(base + 4, 1, 1).assemble(MEM, 0),
            Err(GuestKitError::Misaligned { align: 8, .. })
        ));
        // Inside the code region.
        assert!(matches!(
            counter(layout::GUEST_KIT_CODE_END - 8, 1, 1).assemble(MEM, 0),
            Err(GuestKitError::RangeOutside { .. })
        ));
        // Last word exactly at the end of memory is fine, one more is not.
        counter(MEM - 8, 1, 1).assemble(MEM, 0).unwrap();
        assert!(matches!(
            counter(MEM - 8, 2, 1).assemble(MEM, 0),
            Err(GuestKitError::RangeOutside { end, limit, .. }) if end == MEM + 8 && limit == MEM
        ));
        // A big guest: the range must stay below the MMIO hole.
        let big = 8 << 30;
        assert!(matches!(
            counter(layout::MMIO_GAP_START, 1, 1).assemble(big, 0),
            Err(GuestKitError::RangeOutside { limit, .. }) if limit == layout::MMIO_GAP_START
        ));
        assert!(matches!(
            counter(base, u64::MAX / 4, 1).assemble(MEM, 0),
            Err(GuestKitError::RangeOverflow { .. })
        ));
        assert!(matches!(
            counter(u64::MAX - 7, 2, 1).assemble(MEM, 0),
            Err(GuestKitError::RangeOverflow { .. })
        ));
    }

    #[test]
    fn dirtier_validation_errors() {
        let base = layout::DIRTIER_DEFAULT_BASE;
        assert!(matches!(
            dirtier(base, 0, 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::Zero {
                program: "dirtier",
                field: "mib"
            })
        ));
        assert!(matches!(
            dirtier(base + 8, 1, 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::Misaligned { align: 4096, .. })
        ));
        assert!(matches!(
            dirtier(base, 161, 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::RangeOutside { .. })
        ));
        dirtier(base, 160, 1).assemble(MEM, TSC_KHZ).unwrap();
        assert!(matches!(
            dirtier(0x10_0000, 1, 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::RangeOutside { min, .. }) if min == layout::GUEST_KIT_CODE_END
        ));
        assert!(matches!(
            dirtier(base, u64::MAX >> 10, 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::RangeOverflow { .. })
        ));
        assert!(matches!(
            dirtier(base, 1, 20).assemble(MEM, 0),
            Err(GuestKitError::MissingTscKhz { rate_mib_s: 20 })
        ));
        dirtier(base, 1, 0).assemble(MEM, 0).unwrap();
        assert!(matches!(
            dirtier(base, 1, DIRTIER_MAX_RATE_MIB_S + 1).assemble(MEM, TSC_KHZ),
            Err(GuestKitError::TooLarge { field: "rate", .. })
        ));
        // 1 MHz TSC, 8192 MiB/s = 2_097_152 pages/s: under half a tick per page.
        assert!(matches!(
            dirtier(base, 1, 8192).assemble(MEM, 1000),
            Err(GuestKitError::RateTooHigh {
                rate_mib_s: 8192,
                tsc_khz: 1000
            })
        ));
    }

    #[test]
    fn validate_refuses_before_launch_what_assemble_would_refuse() {
        // The specs of issue 12: the dirtier's default working set (96 MiB + 128 MiB) in a
        // 64 MiB guest, and a counter whose data would overwrite the boot tables at 0.
        let small = 64 << 20;
        let default_dirtier: BuiltinGuest = "builtin:dirtier".parse().unwrap();
        assert!(matches!(
            default_dirtier.validate(small),
            Err(GuestKitError::RangeOutside { program: "dirtier", limit, .. }) if limit == small
        ));
        let at_zero: BuiltinGuest = "builtin:counter:passes=1,base=0x0".parse().unwrap();
        assert!(matches!(
            at_zero.validate(small),
            Err(GuestKitError::RangeOutside {
                program: "counter",
                start: 0,
                ..
            })
        ));
        assert!(matches!(
            BuiltinGuest::Idle.validate(layout::GUEST_KIT_CODE_END - 1),
            Err(GuestKitError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            dirtier(layout::DIRTIER_DEFAULT_BASE, 1, DIRTIER_MAX_RATE_MIB_S + 1).validate(MEM),
            Err(GuestKitError::TooLarge { field: "rate", .. })
        ));
        // Whatever validates assembles, but for the TSC the VMM alone knows.
        for guest in all_guests() {
            guest.validate(MEM).unwrap();
            guest.assemble(MEM, TSC_KHZ).unwrap();
        }
        let paced = dirtier(layout::DIRTIER_DEFAULT_BASE, 1, 20);
        paced.validate(MEM).unwrap();
        assert!(matches!(
            paced.assemble(MEM, 0),
            Err(GuestKitError::MissingTscKhz { .. })
        ));
    }

    #[test]
    fn memory_must_hold_the_code_region() {
        assert!(matches!(
            BuiltinGuest::Hello.assemble(layout::GUEST_KIT_CODE_END - 1, 0),
            Err(GuestKitError::MemoryTooSmall { .. })
        ));
        BuiltinGuest::Hello
            .assemble(layout::GUEST_KIT_CODE_END, 0)
            .unwrap();
    }

    #[test]
    fn dirtier_pacing_rounds_to_the_nearest_tick() {
        // 2 GHz, 20 MiB/s = 5120 pages/s: 390625 ticks per page exactly; lag 100 ms.
        assert_eq!(
            dirtier_pacing(20, 2_000_000).unwrap(),
            Some(Pacing {
                ticks_per_page: 390_625,
                max_lag_ticks: 200_000_000
            })
        );
        // 3 GHz / 256 pages/s = 11718750 exactly; 3 GHz / 768 = 3906250.
        assert_eq!(
            dirtier_pacing(3, 3_000_000)
                .unwrap()
                .map(|p| p.ticks_per_page),
            Some(3_906_250)
        );
        // 1000 ticks/s over 3 pages/s... use a case that rounds: 2_500_001 kHz / 256.
        assert_eq!(
            dirtier_pacing(1, 2_500_001)
                .unwrap()
                .map(|p| p.ticks_per_page),
            Some(9_765_629) // 2_500_001_000 / 256 = 9_765_628.9
        );
        assert_eq!(dirtier_pacing(0, 0).unwrap(), None);
    }

    #[test]
    fn names_and_program_ids_are_distinct() {
        let guests = all_guests();
        assert_eq!(
            guests.iter().map(|g| g.name()).collect::<Vec<_>>(),
            ["hello", "idle", "counter", "counter", "dirtier", "dirtier"]
        );
        let mut ids: Vec<u64> = [0, 1, 2, 4]
            .iter()
            .map(|&i| guests[i].program_id())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{ids:?}");
    }
}
