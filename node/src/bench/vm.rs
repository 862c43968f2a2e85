//! `novacron bench vm`: VMM start latency (with and without the sandbox, against a bare
//! kvm-ioctls program in the same run), VMM memory overhead, snapshot and restore times
//! (against memcpy and blake3 of the same data in the same run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use novacron_vm::machine::layout::{pv_event, PATTERN_BASE};
use novacron_vm::process::control::{
    Command, Event, ExitReason, Launch, LaunchSource, SandboxSettings, SnapshotMode,
};
use novacron_vm::process::launcher::VmmProcess;

use super::report::{in_scratch_dir, median, Goal, Report};

#[derive(Args, Debug)]
pub struct VmBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Samples of each start-latency figure.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Samples of each snapshot/restore figure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where snapshots are written (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl VmBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(args: &VmBenchArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    in_scratch_dir("vm", args.dir.as_deref(), |scratch| {
        measure(&exe, scratch, args)
    })
}

fn measure(exe: &Path, scratch: &Path, args: &VmBenchArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("vm");
    let mut sandboxed = Vec::new();
    let mut unsandboxed = Vec::new();
    let mut bare = Vec::new();
    let mut bare_in_process = Vec::new();
    for _ in 0..args.starts.max(1) {
        sandboxed.push(start_to_first_exit_ms(exe, true)?);
        unsandboxed.push(start_to_first_exit_ms(exe, false)?);
        bare.push(bare_kvm_process_ms(exe)?);
        let t = novacron_vm::machine::vcpu::monotonic_ns();
        bare_in_process.push((bare_kvm_first_exit_ns()? - t) as f64 / 1e6);
    }
    let sandboxed = median(&mut sandboxed);
    let bare = median(&mut bare);
    report.add(
        "start_to_first_exit_ms_p50",
        sandboxed,
        "ms",
        Some(Goal::at_most(5.0)),
    );
    report.add(
        "start_to_first_exit_unsandboxed_ms_p50",
        median(&mut unsandboxed),
        "ms",
        None,
    );
    report.add("bare_kvm_first_exit_ms_p50", bare, "ms", None);
    report.add(
        "bare_kvm_in_process_ms_p50",
        median(&mut bare_in_process),
        "ms",
        None,
    );
    report.add(
        "start_vs_bare_ratio",
        sandboxed / bare.max(1e-9),
        "x",
        Some(Goal::at_most(3.0)),
    );

    report.add(
        "vmm_overhead_rss_mib",
        vmm_overhead_rss_mib(exe)?,
        "MiB",
        Some(Goal::at_most(5.0)),
    );

    let mut full = Vec::new();
    let mut incremental = Vec::new();
    let mut restore = Vec::new();
    let mut restore_in_process = Vec::new();
    for round in 0..args.rounds.max(1) {
        let dir = scratch.join(format!("snap-{round}"));
        let (f, i) = snapshot_full_then_incremental(exe, &dir)?;
        full.push(f);
        incremental.push(i);
        let (whole, in_process) = restore_ms(exe, &dir)?;
        restore.push(whole);
        restore_in_process.push(in_process);
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.add(
        "snapshot_full_ms",
        median(&mut full),
        "ms",
        Some(Goal::at_most(100.0)),
    );
    report.add(
        "snapshot_incremental_ms",
        median(&mut incremental),
        "ms",
        Some(Goal::at_most(15.0)),
    );
    report.add(
        "restore_ms",
        median(&mut restore),
        "ms",
        Some(Goal::at_most(20.0)),
    );
    report.add(
        "restore_in_process_ms",
        median(&mut restore_in_process),
        "ms",
        None,
    );
    let (memcpy_ms, blake3_ms) = references_64mib();
    report.add("memcpy_64mib_ms", memcpy_ms, "ms", None);
    report.add("blake3_64mib_ms", blake3_ms, "ms", None);
    report.notes.push(
        "snapshot/restore: 512 MiB guest, 64 MiB pattern at 16 MiB filled by the host; the \
         incremental snapshot follows one lap of builtin:dirtier over 8 MiB"
            .into(),
    );
    report.notes.push(
        "restore_ms runs from spawning the VMM process to the restored guest running; \
         restore_in_process_ms excludes process start"
            .into(),
    );
    Ok(report)
}

fn launch(source: LaunchSource, mem_bytes: u64, sandbox: bool, dirs: Vec<PathBuf>) -> Launch {
    Launch {
        vm_id: novacron_vm::process::launcher::new_vm_id(),
        source,
        mem_bytes,
        vcpus: 1,
        fill_pattern: None,
        start_paused: false,
        adopt: None,
        result_blob: None,
        sandbox: SandboxSettings {
            enabled: sandbox,
            writable_dirs: dirs,
            ..SandboxSettings::default()
        },
    }
}

fn builtin(spec: &str) -> LaunchSource {
    LaunchSource::Builtin { spec: spec.into() }
}

/// Spawn to the guest's first port-I/O exit, for builtin:hello in 64 MiB.
fn start_to_first_exit_ms(exe: &Path, sandbox: bool) -> anyhow::Result<f64> {
    let l = launch(builtin("builtin:hello"), 64 * MIB, sandbox, vec![]);
    let mut vmm = VmmProcess::spawn(exe, &l, Stdio::null())?;
    let spawned = vmm.spawned_ns;
    let at = vmm.wait_for(TIMEOUT, |e| match e {
        Event::FirstIoExit { at_ns } => Some(Ok(*at_ns)),
        Event::Exited(r) => Some(Err(r.clone())),
        _ => None,
    })?;
    let at = at.map_err(|r| anyhow::anyhow!("hello guest ended early: {r:?}"))?;
    vmm.wait_for(TIMEOUT, |e| matches!(e, Event::Exited(_)).then_some(()))?;
    let _ = vmm.wait();
    Ok(at.saturating_sub(spawned) as f64 / 1e6)
}

/// The reference program: spawn this binary as `novacron bare-kvm` (the same executable
/// the VMM runs, so exec costs match) and time spawn to its first I/O exit.
fn bare_kvm_process_ms(exe: &Path) -> anyhow::Result<f64> {
    let spawned = novacron_vm::machine::vcpu::monotonic_ns();
    let out = std::process::Command::new(exe)
        .arg("bare-kvm")
        .output()
        .context("cannot run the bare-KVM reference")?;
    if !out.status.success() {
        bail!(
            "bare-KVM reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let at: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("bare-KVM reference printed no time")?;
    Ok(at.saturating_sub(spawned) as f64 / 1e6)
}

/// The reference: create a VM, 1 MiB of memory and one vCPU in real mode, run to the
/// first `out` — no sandbox, no devices, no irqchip. Returns CLOCK_MONOTONIC ns of the exit.
pub fn bare_kvm_first_exit_ns() -> anyhow::Result<u64> {
    use kvm_ioctls::{Kvm, VcpuExit};
    let kvm = Kvm::new().context("bare KVM: /dev/kvm")?;
    let vm = kvm.create_vm().context("bare KVM: create VM")?;
    let size = 1 << 20;
    // SAFETY: a fresh anonymous private mapping, unmapped below after the VM is gone.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if host == libc::MAP_FAILED {
        bail!("bare KVM: mmap failed");
    }
    // `out 0x10, al; hlt` at guest address 0x1000.
    // SAFETY: the mapping is 1 MiB and writable.
    unsafe {
        std::ptr::copy_nonoverlapping(
            [0xe6u8, 0x10, 0xf4].as_ptr(),
            (host as *mut u8).add(0x1000),
            3,
        )
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: host as u64,
    };
    let result = (|| -> anyhow::Result<u64> {
        // SAFETY: the region maps memory we own for the VM's lifetime (VM dropped first).
        unsafe { vm.set_user_memory_region(region) }.context("bare KVM: memory")?;
        let mut vcpu = vm.create_vcpu(0).context("bare KVM: vCPU")?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        })?;
        loop {
            match vcpu.run().context("bare KVM: run")? {
                VcpuExit::IoOut(..) => return Ok(novacron_vm::machine::vcpu::monotonic_ns()),
                VcpuExit::Hlt => bail!("bare KVM: halted before the out"),
                _ => {}
            }
        }
    })();
    drop(vm);
    // SAFETY: unmapping the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(host, size) };
    result
}

/// RSS of a running VMM process minus the guest memory it touched.
fn vmm_overhead_rss_mib(exe: &Path) -> anyhow::Result<f64> {
    let l = launch(
        builtin("builtin:dirtier:mib=8,rate=50"),
        512 * MIB,
        true,
        vec![],
    );
    let mut vmm = VmmProcess::spawn(exe, &l, Stdio::null())?;
    wait_progress(&mut vmm, 2048)?;
    vmm.send(&Command::Stats)?;
    let (rss, touched) = vmm.wait_for(TIMEOUT, |e| match e {
        Event::Stats {
            rss_bytes,
            guest_touched_bytes,
        } => Some((*rss_bytes, *guest_touched_bytes)),
        _ => None,
    })?;
    vmm.send(&Command::Stop)?;
    let _ = vmm.wait();
    Ok((rss.saturating_sub(touched)) as f64 / MIB as f64)
}

/// Waits until the guest reported at least `pages` of progress.
fn wait_progress(vmm: &mut VmmProcess, pages: u64) -> anyhow::Result<()> {
    vmm.wait_for(TIMEOUT, |e| match e {
        Event::Guest { code, value } if *code == pv_event::PROGRESS && *value >= pages => {
            Some(Ok(()))
        }
        Event::Exited(r) => Some(Err(r.clone())),
        _ => None,
    })?
    .map_err(|r: ExitReason| anyhow::anyhow!("guest ended early: {r:?}"))
}

fn snapshot(
    vmm: &mut VmmProcess,
    dir: &Path,
    mode: SnapshotMode,
    stop: bool,
) -> anyhow::Result<f64> {
    vmm.send(&Command::Snapshot {
        dir: dir.to_path_buf(),
        mode,
        then_stop: stop,
    })?;
    vmm.wait_for(TIMEOUT, |e| match e {
        Event::SnapshotDone { micros, .. } => Some(Ok(*micros as f64 / 1e3)),
        Event::CommandFailed { message } => Some(Err(message.clone())),
        _ => None,
    })?
    .map_err(|m| anyhow::anyhow!(m))
}

/// A 512 MiB guest with 64 MiB of pattern: full snapshot before it runs, then an
/// incremental one after the dirtier went once over its 8 MiB.
fn snapshot_full_then_incremental(exe: &Path, dir: &Path) -> anyhow::Result<(f64, f64)> {
    let mut l = launch(
        builtin("builtin:dirtier:mib=8,rate=0"),
        512 * MIB,
        true,
        vec![dir.to_path_buf()],
    );
    l.fill_pattern = Some((PATTERN_BASE, 64 * MIB));
    l.start_paused = true;
    std::fs::create_dir_all(dir)?;
    let mut vmm = VmmProcess::spawn(exe, &l, Stdio::null())?;
    vmm.wait_ready(TIMEOUT)?;
    let full = snapshot(&mut vmm, dir, SnapshotMode::Full, false)?;
    vmm.send(&Command::Resume)?;
    wait_progress(&mut vmm, 8 * MIB / 4096)?;
    let incremental = snapshot(&mut vmm, dir, SnapshotMode::Incremental, true)?;
    let _ = vmm.wait();
    Ok((full, incremental))
}

/// Reading the snapshot's size, spawning, to running again; and the in-process part.
fn restore_ms(exe: &Path, dir: &Path) -> anyhow::Result<(f64, f64)> {
    let asked = novacron_vm::machine::vcpu::monotonic_ns();
    let saved = novacron_vm::Machine::describe_snapshot(dir)?;
    let mut l = launch(
        LaunchSource::Restore {
            dir: dir.to_path_buf(),
        },
        saved.mem_bytes,
        true,
        vec![],
    );
    l.vcpus = saved.vcpus;
    let mut vmm = VmmProcess::spawn(exe, &l, Stdio::null())?;
    let spawned = asked;
    let ready = vmm.wait_ready(TIMEOUT).context("restore failed")?;
    let (start, ready) = (ready.process_start_ns, ready.ready_ns);
    vmm.send(&Command::Stop)?;
    let _ = vmm.wait();
    Ok((
        ready.saturating_sub(spawned) as f64 / 1e6,
        ready.saturating_sub(start) as f64 / 1e6,
    ))
}

/// memcpy and blake3 of 64 MiB of the pattern, for scale.
fn references_64mib() -> (f64, f64) {
    let src = novacron_mesh::workload::pattern((64 * MIB) as usize);
    let mut dst = vec![0u8; src.len()];
    dst.copy_from_slice(&src); // fault the pages in before timing
    let t = Instant::now();
    dst.copy_from_slice(std::hint::black_box(&src));
    let memcpy = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(std::hint::black_box(&dst));
    std::hint::black_box(hasher.finalize());
    (memcpy, t.elapsed().as_secs_f64() * 1e3)
}
