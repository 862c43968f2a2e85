//! `novacron demo` end to end: interrupted at any moment (Ctrl-C to its process group, as a
//! terminal sends it: while its nodes start, while its VM runs, during a VM move, twice),
//! killed with SIGKILL, or with its stdout closed (`demo | head`), it leaves no process and
//! no directory behind.
//!
//! Each run gets a TMPDIR of its own, so the demo's directory is the only thing in it, and
//! every process the demo starts (its nodes, their VMMs) inherits it in its environment:
//! after the run, no process on the machine may still hold that TMPDIR, no process seen
//! below the demo while it ran may still run, and the TMPDIR must be empty.

#[allow(dead_code)]
#[path = "common/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a demo may take to stop after it was told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the demo may take to reach a moment the test waits for.
const REACH_TIMEOUT: Duration = Duration::from_secs(90);

/// A running `novacron demo` in a process group of its own, and what was seen below it.
struct Demo {
    child: Child,
    tmp: tempfile::TempDir,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Processes seen below the demo: pid -> (start time in ticks, command line).
    seen: BTreeMap<i32, (u64, String)>,
}

fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// Field 22 of /proc/PID/stat, and whether the process is a zombie (or dead).
fn stat(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Live (not zombie) processes whose environment holds `needle`.
fn holding(needle: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, zombie)| !zombie))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

impl Demo {
    /// Starts `novacron demo ARGS` with a TMPDIR of its own; `stdout` piped and collected
    /// unless the test takes it.
    fn start(args: &[&str], take_stdout: bool) -> (Demo, Option<std::process::ChildStdout>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_novacron"))
            .arg("demo")
            .args(args)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn novacron demo");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take();
        let taken = match take_stdout {
            true => pipe,
            false => {
                collect(pipe.unwrap(), stdout.clone());
                None
            }
        };
        collect(child.stderr.take().unwrap(), stderr.clone());
        let demo = Demo {
            child,
            tmp,
            stdout,
            stderr,
            seen: BTreeMap::new(),
        };
        (demo, taken)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn tmp_env(&self) -> String {
        format!("TMPDIR={}", self.tmp.path().display())
    }

    /// Records the processes below the demo now.
    fn sample(&mut self) {
        for pid in proc::descendants(self.pid()) {
            if let Some((ticks, _)) = stat(pid) {
                self.seen
                    .entry(pid)
                    .or_insert_with(|| (ticks, cmdline(pid)));
            }
        }
    }

    fn dump(&self) -> String {
        format!(
            "--- demo stdout\n{}--- demo stderr\n{}--- seen below it\n{:#?}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap(),
            self.seen
        )
    }

    /// Samples until `done` says so (true) or `timeout` passes (false).
    fn until(&mut self, timeout: Duration, mut done: impl FnMut(&Demo) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.sample();
            if done(self) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return done(self);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits (sampling) for a stdout line holding `needle`.
    fn reach(&mut self, needle: &str) {
        let found = self.until(REACH_TIMEOUT, |d| d.stdout.lock().unwrap().contains(needle));
        assert!(found, "the demo never printed {needle:?}\n{}", self.dump());
    }

    /// Waits (sampling) for a stderr line holding `needle`.
    fn reach_stderr(&mut self, needle: &str) {
        let found = self.until(REACH_TIMEOUT, |d| d.stderr.lock().unwrap().contains(needle));
        assert!(found, "the demo never said {needle:?}\n{}", self.dump());
    }

    /// Sends `signal` to the demo's process group, as a terminal does on Ctrl-C.
    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with plain integers, on the process group we created.
        let rc = unsafe { libc::kill(-self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the exit, sampling meanwhile.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let exited = self.until(timeout, |_| false) || self.child.try_wait().unwrap().is_some();
        if !exited {
            for pid in proc::descendants(self.pid()).into_iter().rev() {
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the demo did not stop within {timeout:?}\n{}", self.dump());
        }
        self.child.wait().unwrap()
    }

    /// Nothing of the demo may be left: no process seen below it still running, no process
    /// holding its TMPDIR (processes may take a moment to be reaped by init), and an empty
    /// TMPDIR unless `dir_may_stay`.
    fn assert_nothing_left(&self, dir_may_stay: bool) {
        let env = self.tmp_env();
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = loop {
            let mut left: Vec<(i32, String)> = self
                .seen
                .iter()
                .filter(|(&pid, (ticks, _))| {
                    stat(pid).is_some_and(|(now, zombie)| now == *ticks && !zombie)
                })
                .map(|(&pid, (_, cmd))| (pid, cmd.clone()))
                .collect();
            left.extend(holding(&env));
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for (pid, _) in &left {
            // SAFETY: kill(2) with plain integers: clean up what the demo left.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        assert!(
            left.is_empty(),
            "processes outlived the demo: {left:#?}\n{}",
            self.dump()
        );
        let entries: Vec<_> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            dir_may_stay || entries.is_empty(),
            "the demo left {entries:?}\n{}",
            self.dump()
        );
        let stderr = self.stderr.lock().unwrap();
        assert!(!stderr.contains("panicked"), "{}", self.dump());
    }
}

/// A random delay up to `max_ms` (printed, so a failure can be replayed by hand).
fn random_delay(what: &str, max_ms: u64) -> Duration {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let ms = u64::from_le_bytes(b) % (max_ms + 1);
    eprintln!("{what}: interrupting {ms} ms after it");
    Duration::from_millis(ms)
}

/// Sleeps `d` while sampling the demo's processes.
fn pause(demo: &mut Demo, d: Duration) {
    let until = Instant::now() + d;
    demo.until(d + Duration::from_secs(1), |_| Instant::now() >= until);
}

const ARGS: [&str; 6] = ["--nodes", "3", "--move-every", "2", "--seconds", "300"];

/// Runs a demo, lets `reach` bring it to the moment to interrupt, sends `signals` Ctrl-Cs,
/// and checks that it exits 0 and leaves nothing.
fn interrupt_at(args: &[&str], reach: impl FnOnce(&mut Demo), signals: usize) {
    let (mut demo, _) = Demo::start(args, false);
    reach(&mut demo);
    for _ in 0..signals {
        demo.signal_group(libc::SIGINT);
        pause(&mut demo, Duration::from_millis(30));
    }
    let status = demo.wait(STOP_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", demo.dump());
    demo.assert_nothing_left(false);
}

#[test]
fn ctrl_c_while_the_nodes_start_leaves_nothing() {
    let mut args = ARGS.to_vec();
    if !guest::kvm_usable("the demo's VM in ctrl_c_while_the_nodes_start_leaves_nothing") {
        args.push("--no-vm");
    }
    // From its first word on (before, a Ctrl-C kills it by default, and it started nothing).
    interrupt_at(
        &args,
        |demo| {
            demo.reach_stderr("novacron: starting");
            pause(demo, random_delay("nodes starting", 1500));
        },
        1,
    );
}

#[test]
fn ctrl_c_while_the_vm_runs_or_moves_leaves_nothing() {
    if !guest::kvm_usable("ctrl_c_while_the_vm_runs_or_moves_leaves_nothing") {
        return;
    }
    // Just after the VM started.
    interrupt_at(
        &ARGS,
        |demo| {
            demo.reach("starts on node-001");
            pause(demo, random_delay("VM started", 500));
        },
        1,
    );
    // During a move (a move takes ~100-200 ms here; the delay lands before, in or after
    // its switchover).
    interrupt_at(
        &ARGS,
        |demo| {
            demo.reach("moving it live to");
            pause(demo, random_delay("move started", 150));
        },
        1,
    );
}

#[test]
fn a_second_ctrl_c_during_a_move_hurries_the_demo_and_still_leaves_nothing() {
    if !guest::kvm_usable("a_second_ctrl_c_during_a_move_hurries_the_demo") {
        return;
    }
    interrupt_at(
        &ARGS,
        |demo| {
            demo.reach("moving it live to");
            pause(demo, random_delay("move started", 100));
        },
        2,
    );
}

#[test]
fn a_closed_stdout_stops_the_demo_cleanly() {
    let kvm = guest::kvm_usable("the demo's VM in a_closed_stdout_stops_the_demo_cleanly");
    let mut args = ARGS.to_vec();
    if !kvm {
        args.push("--no-vm");
    }
    // `novacron demo | head -3`: the reader takes a few lines and goes.
    let (mut demo, stdout) = Demo::start(&args, true);
    let mut reader = BufReader::new(stdout.unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "{}", demo.dump());
    }
    drop(reader);
    let status = demo.wait(STOP_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(141),
        "a closed stdout ends the demo with 128 + SIGPIPE: {status:?}\n{}",
        demo.dump()
    );
    assert!(status.signal().is_none());
    demo.assert_nothing_left(false);
}

#[test]
fn a_demo_killed_with_sigkill_takes_its_nodes_and_vms_with_it() {
    if !guest::kvm_usable("a_demo_killed_with_sigkill_takes_its_nodes_and_vms_with_it") {
        return;
    }
    let (mut demo, _) = Demo::start(&ARGS, false);
    demo.reach("moving it live to");
    pause(&mut demo, random_delay("move started", 150));
    // SAFETY: kill(2) on our child only (not its group: the kernel must do the rest).
    unsafe { libc::kill(demo.pid(), libc::SIGKILL) };
    let status = demo.wait(STOP_TIMEOUT);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Nobody is left to remove the directory; every process must be gone all the same.
    demo.assert_nothing_left(true);
}

#[test]
fn demo_check_tells_the_whole_story_and_sums_it_up_as_json() {
    if !guest::kvm_usable("demo_check_tells_the_whole_story_and_sums_it_up_as_json") {
        return;
    }
    let (mut demo, _) = Demo::start(&["--check", "--json", "--move-every", "5"], false);
    let status = demo.wait(Duration::from_secs(300));
    let out = demo.stdout.lock().unwrap().clone();
    let summary: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", demo.dump()));
    let steps: Vec<&str> = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "hello",
            "tally",
            "job_move",
            "recovery",
            "marathon",
            "live_move"
        ],
        "{}",
        demo.dump()
    );
    assert_eq!(summary["ok"], true, "{}", demo.dump());
    assert!(status.success(), "{status:?}\n{}", demo.dump());
    // The commentary said what happened in plain words.
    let said = demo.stderr.lock().unwrap().clone();
    for words in [
        "job hello",
        "killing node-",
        "is placed again on",
        "restored from checkpoint",
        "is held by",
        "moving it live",
        "moving job marathon's VM live",
    ] {
        assert!(said.contains(words), "{words:?} missing\n{}", demo.dump());
    }
    demo.assert_nothing_left(false);
}
