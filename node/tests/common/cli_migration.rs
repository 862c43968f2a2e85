//! The two sides of a migration from the command line: `novacron vm receive` and
//! `novacron vm run --migrate-to`, as processes under test.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use super::guest::counter;
use super::proc::Proc;
use super::proxy::{Proxy, ProxyConfig};

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

/// A counter (3 passes) moved by `vm run --migrate-to` one second into its run, in `mode`,
/// with `receiver_extra` and `source_extra` options: asserts that it moved (the source
/// reported the migration and printed no result, the destination received the VM and printed
/// the reference result) and returns both processes, to read what they printed.
pub fn move_counter(mode: &str, receiver_extra: &[&str], source_extra: &[&str]) -> (Proc, Proc) {
    let (spec, expected) = counter(3);
    let (mut dst, addr) = spawn_receiver(receiver_extra);
    let mut extra = vec!["--mode", mode];
    extra.extend_from_slice(source_extra);
    let mut src = spawn_source(&spec, addr, 1000, &extra);
    let (s, d) = wait_both(&mut src, &mut dst);
    assert!(s.success(), "{mode}: the source failed: {s:?}");
    assert!(
        src.stderr().contains("novacron: migrated in"),
        "{mode}: the source did not report the migration"
    );
    assert!(
        result_lines(&src.stdout()).is_empty(),
        "{mode}: the source printed a result: the guest ran (or finished) there"
    );
    assert!(d.success(), "{mode}: the destination failed: {d:?}");
    assert!(
        dst.stderr().contains("novacron: VM received"),
        "{mode}: the destination did not report the VM"
    );
    assert_eq!(
        result_lines(&dst.stdout()),
        vec![expected.as_str()],
        "{mode}: the destination's result"
    );
    (src, dst)
}

/// `vm receive` behind a fault-injecting proxy configured by `cfg`, and `vm run --guest
/// GUEST --migrate-to` the proxy after `after_ms` with `extra`: (source, destination, proxy).
pub fn migrate_through_proxy(
    guest: &str,
    cfg: ProxyConfig,
    after_ms: u64,
    extra: &[&str],
) -> (Proc, Proc, Proxy) {
    let (dst, dst_addr) = spawn_receiver(&[]);
    let proxy = Proxy::start(dst_addr, cfg);
    let src = spawn_source(guest, proxy.addr, after_ms, extra);
    (src, dst, proxy)
}
