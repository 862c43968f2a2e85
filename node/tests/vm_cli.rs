//! End-to-end tests of `novacron vm ...`: real processes, real KVM, the real jail.
//! Each test that needs /dev/kvm says why it skipped when the host has none.

#[allow(dead_code)]
#[path = "common/guest.rs"]
mod guest;
use guest::kvm_usable;
use std::path::Path;
use std::process::{Command, Output};

use novacron_vm::guest_kit::{counter_expected, result_line, BuiltinGuest, CounterParams};

fn novacron() -> Command {
    Command::new(env!("CARGO_BIN_EXE_novacron"))
}

fn run(args: &[&str]) -> Output {
    let out = novacron().args(args).output().expect("spawn novacron");
    eprintln!(
        "novacron {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The result line the default counter guest must print.
fn default_counter_line() -> String {
    result_line(counter_expected(&CounterParams::default()))
}

fn result_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("result=")).collect()
}

#[test]
fn hello_prints_its_line_and_exits_zero() {
    if !kvm_usable("hello") {
        return;
    }
    let out = run(&["vm", "run", "--guest", "builtin:hello", "--mem", "64M"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), novacron_vm::guest_kit::HELLO_MESSAGE);
}

#[test]
fn counter_prints_the_reference_result() {
    if !kvm_usable("counter") {
        return;
    }
    let params = CounterParams {
        words: 4096,
        passes: 5,
        ..CounterParams::default()
    };
    let spec = BuiltinGuest::Counter(params).to_string();
    let out = run(&[
        "vm", "run", "--guest", &spec, "--mem", "256M", "--vcpus", "2",
    ]);
    assert!(out.status.success());
    assert_eq!(
        result_lines(&stdout(&out)),
        vec![result_line(counter_expected(&params))]
    );
}

/// Runs the default counter with snapshots at `at_ms` into `dir`; checks it was stopped
/// before printing its result.
fn run_counter_with_snapshots(dir: &Path, at_ms: &str) -> Output {
    let out = run(&[
        "vm",
        "run",
        "--guest",
        "builtin:counter",
        "--mem",
        "256M",
        "--snapshot-at",
        at_ms,
        "--snapshot-to",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        result_lines(&stdout(&out)).is_empty(),
        "the counter finished before its last snapshot; the test needs a longer guest"
    );
    out
}

#[test]
fn counter_snapshotted_mid_run_resumes_to_the_same_result() {
    if !kvm_usable("snapshot/restore") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let out = run_counter_with_snapshots(&snap, "700");
    assert!(stderr(&out).contains("Full snapshot"), "{}", stderr(&out));
    let restored = run(&["vm", "restore", snap.to_str().unwrap()]);
    assert!(restored.status.success());
    assert_eq!(
        result_lines(&stdout(&restored)),
        vec![default_counter_line()]
    );
}

#[test]
fn counter_survives_a_chain_of_incremental_snapshots_across_processes() {
    if !kvm_usable("incremental snapshots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let s = snap.to_str().unwrap();
    // A full snapshot, then two incremental ones; the last stops the guest.
    let out = run_counter_with_snapshots(&snap, "400,800,1200");
    assert_eq!(stderr(&out).matches("Incremental snapshot").count(), 2);
    // Restore, run a little, and extend the same chain from the restored process.
    let resumed = run(&[
        "vm",
        "restore",
        s,
        "--snapshot-at",
        "300",
        "--snapshot-to",
        s,
    ]);
    assert!(resumed.status.success());
    assert!(stderr(&resumed).contains("Incremental snapshot"));
    assert!(result_lines(&stdout(&resumed)).is_empty());
    let finished = run(&["vm", "restore", s]);
    assert!(finished.status.success());
    assert_eq!(
        result_lines(&stdout(&finished)),
        vec![default_counter_line()]
    );
}

#[test]
fn a_chatty_guest_is_snapshotted_on_time_and_restored() {
    if !kvm_usable("dirtier snapshot") {
        return;
    }
    // The unpaced dirtier reports progress thousands of times a second: the snapshot
    // deadline must still be met while those events stream in.
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let s = snap.to_str().unwrap();
    let spec = "builtin:dirtier:mib=8,rate=0";
    // The dirtier's range starts at 96 MiB: above the default memory.
    let out = run(&[
        "vm",
        "run",
        "--guest",
        spec,
        "--mem",
        "256M",
        "--snapshot-at",
        "300,600",
        "--snapshot-to",
        s,
    ]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("Incremental snapshot"));
    let out = run(&[
        "vm",
        "restore",
        s,
        "--snapshot-at",
        "300",
        "--snapshot-to",
        s,
    ]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("Incremental snapshot"));
}

fn snapshot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn tampered_or_truncated_snapshots_are_refused_and_left_untouched() {
    if !kvm_usable("tampered snapshots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let s = snap.to_str().unwrap();
    run_counter_with_snapshots(&snap, "300");
    let layer = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ncl"))
        .expect("a memory layer file");
    let state = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ncs"))
        .expect("a state file");

    // One flipped bit in the page data.
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&layer, &bytes).unwrap();
    let before = snapshot_files(&snap);
    let out = run(&["vm", "restore", s]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&*layer.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("checksum") || err.contains("blake3"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(&snap),
        before,
        "a failed restore changed the snapshot"
    );
    bytes[mid] ^= 0x01;
    std::fs::write(&layer, &bytes).unwrap();

    // A truncated state file.
    let state_bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &state_bytes[..state_bytes.len() - 100]).unwrap();
    let out = run(&["vm", "restore", s]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&*state.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(&state, &state_bytes).unwrap();

    // Repaired, it restores again.
    let out = run(&["vm", "restore", s]);
    assert!(out.status.success());
    assert_eq!(result_lines(&stdout(&out)), vec![default_counter_line()]);
}

#[test]
fn bad_input_gets_an_error_that_names_the_problem() {
    if !kvm_usable("bad input") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let garbled = dir.path().join("garbled-kernel");
    std::fs::write(&garbled, b"this is not a kernel, just some text bytes").unwrap();
    let g = garbled.to_str().unwrap();
    let missing = dir.path().join("no-such-kernel");
    let m = missing.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--kernel", g], "neither an ELF vmlinux nor a bzImage"),
        (vec!["--kernel", m], "no-such-kernel"),
        (
            vec!["--guest", "builtin:hello", "--mem", "1M"],
            "out of range",
        ),
        (
            vec!["--guest", "builtin:hello", "--mem", "2T"],
            "out of range",
        ),
        (vec!["--guest", "builtin:hello", "--vcpus", "0"], "vCPUs"),
        (vec!["--guest", "builtin:hello", "--vcpus", "200"], "vCPUs"),
        (vec!["--guest", "builtin:nope"], "nope"),
        (vec!["--guest", "builtin:counter:words=0"], "words"),
        (
            vec!["--guest", "builtin:dirtier:mib=4096", "--mem", "256M"],
            "dirtier",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["vm", "run", "--mem", "64M"];
        if args.contains(&"--mem") {
            all.truncate(2);
        }
        all.extend(args.iter());
        let out = run(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "{all:?}: expected {needle:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{all:?} panicked: {err}");
    }
    let out = run(&[
        "vm",
        "restore",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a snapshot directory"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["vm", "restore", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("MANIFEST"), "{}", stderr(&out));
}

#[test]
fn a_host_without_kvm_gets_a_clear_error() {
    // Hide /dev/kvm in a private mount namespace (needs root and unshare(1)).
    let has_unshare = Command::new("unshare").arg("--version").output().is_ok();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !has_unshare {
        eprintln!("skipping no-KVM test: needs root and unshare(1)");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && \
         exec {} vm run --guest builtin:hello --mem 64M",
        env!("CARGO_BIN_EXE_novacron")
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(!out.status.success());
    assert!(err.contains("/dev/kvm"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_jail_denies_files_and_kills_forbidden_syscalls() {
    if !kvm_usable("sandbox check") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping sandbox check: cgroups and namespaces need root here");
        return;
    }
    let out = run(&["vm", "check-sandbox"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("denied   open /etc/passwd: Permission denied"),
        "{text}"
    );
    assert!(text.contains("killed   socket(AF_INET)"), "{text}");
    assert!(text.contains("SIGSYS"), "{text}");
}

#[test]
fn linux_boots_to_its_console_when_a_kernel_is_given() {
    use std::io::{BufRead, BufReader};
    let Some(kernel) = std::env::var_os("NOVACRON_TEST_KERNEL") else {
        eprintln!(
            "skipping Linux boot: set NOVACRON_TEST_KERNEL (and optionally \
             NOVACRON_TEST_INITRD) to a bzImage or vmlinux (.ci/run fetches one)"
        );
        return;
    };
    if !kvm_usable("Linux boot") {
        return;
    }
    let secs: u64 = std::env::var("NOVACRON_TEST_KERNEL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let kernel = kernel.to_string_lossy().into_owned();
    let initrd = std::env::var("NOVACRON_TEST_INITRD").ok();
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1";
    let mut args = vec![
        "vm",
        "run",
        "--kernel",
        &kernel,
        "--mem",
        "512M",
        "--cmdline",
        cmdline,
    ];
    if let Some(initrd) = &initrd {
        args.extend(["--initrd", initrd.as_str()]);
    }
    let mut child = novacron()
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the console until the kernel has shown it found our boot parameters; on
    // this project's nested software KVM that takes tens of seconds (a stock kernel then
    // stops on an emulation failure much later, so the test does not wait for init).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut console = Vec::new();
    let wanted = |c: &[String]| {
        c.iter().any(|l| l.contains("Linux version"))
            && c.iter()
                .any(|l| l.contains(&format!("Command line: {cmdline}")))
            && c.iter().any(|l| {
                l.contains("BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable")
            })
            && c.iter().any(|l| l.contains("Hypervisor detected: KVM"))
    };
    while !wanted(&console) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("{line}");
                console.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        wanted(&console),
        "within {secs} s the console did not show the banner, our command line, our e820 \
         map and KVM"
    );
}
