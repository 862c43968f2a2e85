//! Child processes that die with the process that spawned them (their owner), however it
//! ends: exit, panic, SIGKILL, out of memory.
//!
//! The kernel's tool is `PR_SET_PDEATHSIG`, set in the child between fork and exec. Two
//! traps, both handled here:
//! - it fires when the *thread* that forked the child ends, not the process: a child
//!   forked by a short-lived thread (tokio's blocking pool retires idle threads after 10 s)
//!   would be killed while its owner lives. So every such child is forked by one thread
//!   that lives as long as the process ([`spawn`] hands the command to it);
//! - the owner may die between fork and `prctl`: the signal is then never sent. So the
//!   child compares `getppid()` with the owner's pid read before the fork, after the
//!   `prctl`, and fails (the spawn returns an error) if it was re-parented meanwhile.
//!
//! What this does not do: a child that is meant to outlive its owner (an adoptable VMM,
//! a daemon's process-backend jail) must not be spawned here.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// A command to fork, the death signal it gets, the owner's pid, and where the result goes.
struct Job {
    cmd: Command,
    signal: libc::c_int,
    owner: libc::pid_t,
    done: mpsc::SyncSender<io::Result<Child>>,
}

/// The spawner thread's queue; the thread lives as long as the process.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Spawns `cmd` so that the child receives `signal` when this process ends (SIGKILL to
/// make sure; SIGTERM to let it clean up). The caller's own `pre_exec` steps run first.
pub fn spawn(cmd: Command, signal: libc::c_int) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let owner = unsafe { libc::getpid() };
    spawn_for(cmd, signal, owner)
}

/// [`spawn`] for an owner whose pid is given (tests give a wrong one to see the check).
fn spawn_for(cmd: Command, signal: libc::c_int, owner: libc::pid_t) -> io::Result<Child> {
    let queue = SPAWNER.get_or_init(start_spawner);
    let (done, result) = mpsc::sync_channel(1);
    let job = Job {
        cmd,
        signal,
        owner,
        done,
    };
    let gone = || io::Error::other("the process's spawner thread is gone");
    queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

fn start_spawner() -> Mutex<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let started = std::thread::Builder::new()
        .name("child-spawner".into())
        .spawn(move || {
            // Ends only with the process: the sender lives in a static.
            for job in rx {
                let _ = job.done.send(fork_owned(job.cmd, job.signal, job.owner));
            }
        });
    if let Err(e) = started {
        // Every spawn then fails with "the spawner thread is gone" (its receiver dropped).
        tracing::error!(error = %e, "cannot start the child spawner thread");
    }
    Mutex::new(tx)
}

/// On the spawner thread: fork `cmd` with the death signal and the re-parenting check.
fn fork_owned(mut cmd: Command, signal: libc::c_int, owner: libc::pid_t) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: die_with_parent is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || die_with_parent(signal, owner));
    }
    cmd.spawn().map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => io::Error::other(format!(
            "the owner process (pid {owner}) ended before its child could start"
        )),
        _ => e,
    })
}

/// In a child between fork and exec (async-signal-safe, no allocation): arms `signal` for
/// when its parent ends, then checks that the parent is still `parent` (as this process
/// sees pids), which it may not be if the parent ended before the `prctl`. Err(ESRCH, "no
/// such process") then: the child must not go on.
pub fn die_with_parent(signal: libc::c_int, parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid with integer arguments; no memory is touched.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            // Only an errno crosses back to a spawner.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(child: &mut Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        // Forked by the caller thread, the child would get SIGKILL when that thread ends.
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            spawn(cmd, libc::SIGKILL).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let lived = alive(&mut child);
        let _ = child.kill();
        let _ = child.wait();
        assert!(lived, "the child died with the thread that spawned it");
    }

    #[test]
    fn a_child_whose_owner_is_not_its_parent_is_refused() {
        // As if the owner had died between fork and prctl: the child was re-parented.
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: getppid has no preconditions.
        let not_the_owner = unsafe { libc::getppid() };
        let started = Instant::now();
        match spawn_for(cmd, libc::SIGKILL, not_the_owner) {
            Ok(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a child whose owner is gone was started");
            }
            Err(e) => assert!(
                e.to_string().contains("ended before its child could start"),
                "{e}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The pid of a process and whether it still runs (a zombie does not).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
    }

    /// Set in the environment of the owner process [`the_child_dies_with_its_owner_process`]
    /// starts (this test binary again, running only [`owner_process`]).
    const OWNER_ENV: &str = "NOVACRON_TEST_CHILD_LIFETIME_OWNER";

    #[test]
    #[ignore = "the owner process of the_child_dies_with_its_owner_process"]
    fn owner_process() {
        if std::env::var_os(OWNER_ENV).is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut child = spawn(cmd, libc::SIGKILL).unwrap();
        println!("owned-child-pid={}", child.id());
        // The test kills this process meanwhile.
        let _ = child.wait();
    }

    #[test]
    fn the_child_dies_with_its_owner_process() {
        use std::io::BufRead;
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::child_lifetime::tests::owner_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OWNER_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(owner.stdout.take().unwrap());
        let child: u32 = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                let (_, pid) = l.split_once("owned-child-pid=")?;
                pid.split_whitespace().next()?.parse().ok()
            })
            .expect("the owner process printed no child pid");
        assert!(running(child));
        owner.kill().unwrap();
        owner.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let survived = running(child);
        if survived {
            // SAFETY: kill with integer arguments, on the pid we just saw running.
            unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
        }
        assert!(!survived, "the child outlived its owner (SIGKILL)");
    }
}
