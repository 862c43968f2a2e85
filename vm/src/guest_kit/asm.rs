//! The guest programs, written with iced-x86's `CodeAssembler`.
//!
//! The images hold code only (strings are emitted as immediates), so a whole image decodes
//! as instructions. No program touches memory outside its stack, its data range and its
//! code; none can fault, since the VMM gives them no IDT.

use super::{CounterParams, DirtierParams, Pacing};
use super::{
    COUNTER_MULTIPLIER, COUNTER_ROTATE, COUNTER_SEED, DIRTIER_PROGRESS_PAGES, PROGRAM_ID_COUNTER,
    PROGRAM_ID_DIRTIER, PROGRAM_ID_HELLO, PROGRAM_ID_IDLE,
};
use crate::machine::layout::{self, pv_event};
use iced_x86::code_asm::*;

/// What `hello` prints on COM1.
pub const HELLO_MESSAGE: &str = "Hello from the NovaCron guest kit\n";

type AsmResult<T> = Result<T, IcedError>;

/// `hello`: STARTED, the greeting, EXIT(0).
pub(super) fn hello() -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    report_imm(&mut a, pv_event::STARTED, PROGRAM_ID_HELLO)?;
    print_str(&mut a, HELLO_MESSAGE)?;
    exit_and_park(&mut a)?;
    a.assemble(layout::GUEST_KIT_CODE_ADDR)
}

/// `idle`: STARTED, then halts for good without exiting (the migration benchmark's idle
/// guest: nothing runs, nothing is dirtied).
pub(super) fn idle() -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    report_imm(&mut a, pv_event::STARTED, PROGRAM_ID_IDLE)?;
    park(&mut a)?;
    a.assemble(layout::GUEST_KIT_CODE_ADDR)
}

/// `counter`; see [`super::counter_expected`] for the computation.
///
/// Registers: rbx = acc, r8 = base, r9 = words, r10 = passes, r11 = multiplier,
/// r12 = pass index, rsi = word pointer, rcx = words left in the pass.
pub(super) fn counter(p: &CounterParams) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    report_imm(&mut a, pv_event::STARTED, PROGRAM_ID_COUNTER)?;
    a.mov(r8, p.base)?;
    a.mov(r9, p.words)?;
    a.mov(r10, p.passes)?;
    a.mov(r11, COUNTER_MULTIPLIER)?;
    a.mov(rbx, COUNTER_SEED)?;
    a.xor(r12d, r12d)?;

    // Validation guarantees words > 0 and passes > 0, so both loops test at the bottom.
    let mut pass_loop = a.create_label();
    let mut word_loop = a.create_label();
    a.set_label(&mut pass_loop)?;
    a.mov(rsi, r8)?;
    a.mov(rcx, r9)?;
    a.set_label(&mut word_loop)?;
    a.xor(rbx, qword_ptr(rsi))?;
    a.imul_2(rbx, r11)?;
    a.rol(rbx, COUNTER_ROTATE)?;
    a.add(rbx, r12)?;
    a.mov(qword_ptr(rsi), rbx)?;
    a.add(rsi, 8)?;
    a.dec(rcx)?;
    a.jnz(word_loop)?;
    a.inc(r12)?;
    report_reg(&mut a, pv_event::PROGRESS, r12)?;
    if p.print_passes {
        // rcx and rdi are free here: the next pass sets rcx again.
        print_str(&mut a, "pass=")?;
        print_hex64(&mut a, r12)?;
        print_str(&mut a, "\n")?;
    }
    a.cmp(r12, r10)?;
    a.jb(pass_loop)?;

    report_reg(&mut a, pv_event::RESULT, rbx)?;
    if p.result_blob {
        // The result over the range's first word, handed over through the result port.
        a.mov(qword_ptr(r8), rbx)?;
        report_reg(&mut a, pv_event::RESULT_BLOB_ADDR, r8)?;
        report_imm(&mut a, pv_event::RESULT_BLOB_LEN, 8)?;
    }
    print_str(&mut a, "result=")?;
    print_hex64(&mut a, rbx)?;
    print_str(&mut a, "\n")?;
    exit_and_park(&mut a)?;
    a.assemble(layout::GUEST_KIT_CODE_ADDR)
}

/// `dirtier`: forever, add 1 to the first word of the next page of the working set,
/// waiting for its TSC deadline first when paced.
///
/// Registers: rsi = page pointer, r8 = base, r9 = end, r14 = pages dirtied,
/// r12 = ticks per page, r13 = deadline of the next page, r15 = largest tolerated lag.
pub(super) fn dirtier(p: &DirtierParams, pacing: Option<Pacing>) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    report_imm(&mut a, pv_event::STARTED, PROGRAM_ID_DIRTIER)?;
    a.mov(r8, p.base)?;
    a.mov(r9, p.base + (p.mib << 20))?;
    a.mov(rsi, r8)?;
    a.xor(r14d, r14d)?;
    if let Some(pacing) = pacing {
        a.mov(r12, pacing.ticks_per_page)?;
        a.mov(r15, pacing.max_lag_ticks)?;
        read_tsc(&mut a)?;
        a.mov(r13, rax)?;
    }

    let mut page_loop = a.create_label();
    let mut no_wrap = a.create_label();
    let mut no_report = a.create_label();
    if pacing.is_some() {
        wait_for_deadline(&mut a, &mut page_loop)?;
    } else {
        a.set_label(&mut page_loop)?;
    }
    a.add(qword_ptr(rsi), 1)?;
    a.inc(r14)?;
    a.add(rsi, layout::PAGE_SIZE as i32)?;
    a.cmp(rsi, r9)?;
    a.jb(no_wrap)?;
    a.mov(rsi, r8)?;
    a.set_label(&mut no_wrap)?;
    a.test(r14d, (DIRTIER_PROGRESS_PAGES - 1) as u32)?;
    a.jnz(no_report)?;
    report_reg(&mut a, pv_event::PROGRESS, r14)?;
    a.set_label(&mut no_report)?;
    a.jmp(page_loop)?;
    a.assemble(layout::GUEST_KIT_CODE_ADDR)
}

/// Spins until `rdtsc >= r13`, then advances r13 by r12 for the next page. If the deadline
/// is more than r15 ticks in the past (the VM was paused, or the vCPU cannot keep up),
/// restarts the schedule from now instead of bursting. `poll` is set on the first
/// instruction. Clobbers rax, rdx.
fn wait_for_deadline(a: &mut CodeAssembler, poll: &mut CodeLabel) -> AsmResult<()> {
    let mut early = a.create_label();
    let mut due = a.create_label();
    a.set_label(poll)?;
    read_tsc(a)?;
    a.mov(rdx, rax)?;
    a.sub(rdx, r13)?;
    a.js(early)?;
    a.cmp(rdx, r15)?;
    a.jbe(due)?;
    a.mov(r13, rax)?;
    a.jmp(due)?;
    a.set_label(&mut early)?;
    a.pause()?;
    a.jmp(*poll)?;
    a.set_label(&mut due)?;
    a.add(r13, r12)
}

/// rax = the 64-bit TSC. Clobbers rdx.
fn read_tsc(a: &mut CodeAssembler) -> AsmResult<()> {
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    Ok(())
}

/// Reports (`code`, `value`) on the PV port. Preserves every register.
fn report_imm(a: &mut CodeAssembler, code: u32, value: u64) -> AsmResult<()> {
    a.push(rax)?;
    a.push(rdx)?;
    a.mov(rax, value)?;
    report_rax(a, code)?;
    a.pop(rdx)?;
    a.pop(rax)
}

/// Reports (`code`, `value` register) on the PV port. Preserves every register.
fn report_reg(a: &mut CodeAssembler, code: u32, value: AsmRegister64) -> AsmResult<()> {
    a.push(rax)?;
    a.push(rdx)?;
    if value != rax {
        a.mov(rax, value)?;
    }
    report_rax(a, code)?;
    a.pop(rdx)?;
    a.pop(rax)
}

/// The three `out`s of a report of rax. Clobbers rax, rdx.
fn report_rax(a: &mut CodeAssembler, code: u32) -> AsmResult<()> {
    a.mov(edx, u32::from(layout::PV_PORT_VALUE_LO))?;
    a.out(dx, eax)?;
    a.shr(rax, 32)?;
    a.mov(edx, u32::from(layout::PV_PORT_VALUE_HI))?;
    a.out(dx, eax)?;
    a.mov(eax, code)?;
    a.mov(edx, u32::from(layout::PV_PORT_EVENT))?;
    a.out(dx, eax)
}

/// Writes `text` to COM1, one immediate byte per `out`. Clobbers rax, rdx.
fn print_str(a: &mut CodeAssembler, text: &str) -> AsmResult<()> {
    a.mov(edx, u32::from(layout::COM1_PORT_BASE))?;
    for byte in text.bytes() {
        a.mov(al, u32::from(byte))?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Writes `value` to COM1 as 16 lower-case hex digits. Clobbers rax, rcx, rdx, rdi.
fn print_hex64(a: &mut CodeAssembler, value: AsmRegister64) -> AsmResult<()> {
    let mut digit_loop = a.create_label();
    let mut decimal = a.create_label();
    a.mov(rdi, value)?;
    a.mov(ecx, 16u32)?;
    a.mov(edx, u32::from(layout::COM1_PORT_BASE))?;
    a.set_label(&mut digit_loop)?;
    a.rol(rdi, 4u32)?;
    a.mov(eax, edi)?;
    a.and(eax, 0xfu32)?;
    a.cmp(eax, 10u32)?;
    a.jb(decimal)?;
    a.add(eax, u32::from(b'a' - b'0' - 10))?;
    a.set_label(&mut decimal)?;
    a.add(eax, u32::from(b'0'))?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(digit_loop)
}

/// Reports EXIT(0), then parks the vCPU for good (`cli; hlt; jmp` back).
fn exit_and_park(a: &mut CodeAssembler) -> AsmResult<()> {
    report_imm(a, pv_event::EXIT, 0)?;
    park(a)
}

/// Parks the vCPU for good: interrupts off, `hlt`, and back should anything wake it.
fn park(a: &mut CodeAssembler) -> AsmResult<()> {
    let mut park = a.create_label();
    a.set_label(&mut park)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(park)
}
