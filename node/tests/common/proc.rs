//! A `novacron` CLI process under test: its stdout and stderr are collected by reader
//! threads (so the test can wait for a line while the process runs), every wait has a
//! timeout, and dropping it kills the process and everything it spawned.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Proc {
    pub name: String,
    args: Vec<String>,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => into
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

impl Proc {
    /// Spawns `novacron ARGS` with stdout and stderr piped.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_wrapped(name, &[], args)
    }

    /// Spawns `WRAPPER... novacron ARGS` (e.g. `ip netns exec NS`), stdout and stderr piped.
    pub fn spawn_wrapped(name: &str, wrapper: &[&str], args: &[&str]) -> Proc {
        let exe = env!("CARGO_BIN_EXE_novacron");
        let (program, rest) = match wrapper.split_first() {
            Some((first, rest)) => (*first, rest.iter().copied().chain([exe]).collect()),
            None => (exe, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(rest)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn novacron");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Proc {
            name: name.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Everything known about the process, for failure messages and CI logs.
    pub fn dump(&self) -> String {
        format!(
            "=== {} (pid {}): novacron {}\n--- status: {:?}\n--- stdout\n{}--- stderr\n{}===",
            self.name,
            self.pid(),
            self.args.join(" "),
            self.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits for a stderr line containing `needle` and returns it; None after `timeout` or
    /// when the process exited without printing it.
    pub fn wait_stderr_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the text before checking for exit, so a line printed just before the
            // exit is seen.
            let exited = self.try_wait().is_some();
            let text = self.stderr();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if exited && self.readers.iter().all(|r| r.is_finished()) {
                return None;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on a child");
        }
        self.status
    }

    /// Waits for the exit and for the output pipes to drain; kills the process tree and
    /// panics (with everything it printed) after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                self.kill_tree();
                panic!(
                    "{} did not exit within {timeout:?}; killed it\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The VMM shares the pipes: they close when it is gone too. Do not wait forever
        // for a VMM that outlived its parent (that would be a bug the dump shows).
        let drained = Instant::now() + Duration::from_secs(10);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.readers.iter().all(|r| r.is_finished()) {
            eprintln!(
                "warning: {}'s output pipes stayed open 10 s after it exited (a process it \
                 spawned is still alive?): {:?}",
                self.name,
                descendants(self.pid())
            );
        }
        status
    }

    /// The direct children of the process (the VMM process it spawned).
    pub fn children(&self) -> Vec<i32> {
        children(self.pid())
    }

    /// Kills the VMM process this CLI spawned with SIGKILL (its jailed child dies with it:
    /// PR_SET_PDEATHSIG). Returns the pid killed.
    pub fn kill_vmm(&self) -> i32 {
        let kids = self.children();
        assert_eq!(
            kids.len(),
            1,
            "{} should have exactly one child, its VMM process; it has {kids:?}\n{}",
            self.name,
            self.dump()
        );
        // SAFETY: kill(2) on a pid we just read as our child's child; no memory involved.
        let rc = unsafe { libc::kill(kids[0], libc::SIGKILL) };
        assert_eq!(
            rc,
            0,
            "kill -9 {} ({}'s VMM): {}",
            kids[0],
            self.name,
            std::io::Error::last_os_error()
        );
        kids[0]
    }

    /// SIGKILL to this process only (what it spawned lives on, re-parented); reaps it.
    pub fn kill_only(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGKILL to every process below this one (deepest first), then to it; reaps it.
    pub fn kill_tree(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        for pid in descendants(self.pid()).into_iter().rev() {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_tree();
    }
}

/// Children of every thread of `pid` (a child belongs to the thread that forked it).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut kids: Vec<i32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    kids.sort_unstable();
    kids.dedup();
    kids
}

/// Every process below `pid`, parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for c in children(p) {
            all.push(c);
            next.push(c);
        }
    }
    all
}
