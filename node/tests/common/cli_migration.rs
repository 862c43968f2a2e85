//! The two sides of a migration from the command line: `novacron vm receive` and
//! `novacron vm run --migrate-to`, as processes under test.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use super::proc::Proc;

/// Longest a CLI process may take to exit (a hang fails the test after this).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

pub fn result_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("result=")).collect()
}

pub fn dump(procs: &[&Proc]) {
    for p in procs {
        eprintln!("{}", p.dump());
    }
}

/// `novacron vm receive --listen 127.0.0.1:0 EXTRA`, and the address it listens on.
pub fn spawn_receiver(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["vm", "receive", "--listen", "127.0.0.1:0", "--wait", "120"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn("destination", &args);
    const READY: &str = "novacron: waiting for a VM on ";
    let line = p
        .wait_stderr_line(READY, Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the receiver did not print {READY:?} within 30 s\n{}",
                p.dump()
            )
        });
    let addr = line
        .split_once(READY)
        .and_then(|(_, a)| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected {READY}HOST:PORT, got {line:?}"));
    (p, addr)
}

/// `novacron vm run --guest GUEST --mem 256M --migrate-to TO --migrate-after AFTER_MS
/// EXTRA`.
pub fn spawn_source(guest: &str, to: SocketAddr, after_ms: u64, extra: &[&str]) -> Proc {
    spawn_migrating("run", guest, to, after_ms, extra)
}

/// [`spawn_source`] with `vm SUBCOMMAND` (`run` or `migrate`).
pub fn spawn_migrating(
    subcommand: &str,
    guest: &str,
    to: SocketAddr,
    after_ms: u64,
    extra: &[&str],
) -> Proc {
    let to = to.to_string();
    let after = after_ms.to_string();
    let mut args = vec![
        "vm",
        subcommand,
        "--guest",
        guest,
        "--mem",
        "256M",
        "--migrate-to",
        &to,
        "--migrate-after",
        &after,
    ];
    args.extend_from_slice(extra);
    Proc::spawn("source", &args)
}

/// Waits for both processes (source first), prints their output, returns their statuses.
pub fn wait_both(src: &mut Proc, dst: &mut Proc) -> (ExitStatus, ExitStatus) {
    let s = src.wait(EXIT_TIMEOUT);
    let d = dst.wait(EXIT_TIMEOUT);
    dump(&[src, dst]);
    (s, d)
}
