//! `control::recv`: JSON-lines messages of the control protocol, as the VMM (`Launch`,
//! `Command`) and the parent (`Event`) read them.
//!
//! Input: a byte picking the reader's buffer size (so lines arrive split across
//! `fill_buf` calls), then the stream. Every message type reads the stream until it closes
//! or a line is refused. Invariants: every accepted line fits `MAX_LINE_BYTES`, re-sending
//! an accepted message and reading it back gives the same message, an oversized line is
//! refused, and reading never loops (each call consumes input or ends the stream).

use std::io::{BufReader, Cursor, Seek};

use serde::de::DeserializeOwned;
use serde::Serialize;

use novacron_vm::process::control::{
    recv, send, Command, ControlError, Event, ExitReason, Launch, LaunchSource, SandboxSettings,
    SnapshotMode, MAX_LINE_BYTES,
};

use crate::Seed;

/// Reader buffer sizes the first byte picks from (BufReader's default is 8 KiB).
const BUFFER_SIZES: [usize; 4] = [1, 7, 64, 8192];

pub fn check(data: &[u8]) -> bool {
    let Some((&selector, stream)) = data.split_first() else {
        return false;
    };
    let capacity = BUFFER_SIZES[usize::from(selector) % BUFFER_SIZES.len()];
    let launches = read_all::<Launch>(stream, capacity);
    let commands = read_all::<Command>(stream, capacity);
    let events = read_all::<Event>(stream, capacity);
    launches + commands + events > 0
}

/// Reads messages of type `T` until the stream ends or a line is too long; returns how many
/// were accepted.
fn read_all<T>(stream: &[u8], capacity: usize) -> usize
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut reader = BufReader::with_capacity(capacity, Cursor::new(stream));
    let mut accepted = 0;
    loop {
        let before = position(&mut reader);
        match recv::<T>(&mut reader) {
            Ok(msg) => {
                let line = position(&mut reader) - before;
                assert!(line <= MAX_LINE_BYTES as u64, "accepted a {line}-byte line");
                round_trip(&msg);
                accepted += 1;
            }
            Err(ControlError::Malformed(_)) => {}
            Err(ControlError::Closed) => return accepted,
            Err(ControlError::TooLong) => {
                let rest = stream.len() as u64 - before;
                assert!(
                    rest > MAX_LINE_BYTES as u64,
                    "refused a {rest}-byte rest as too long"
                );
                return accepted;
            }
            Err(ControlError::Io(e)) => panic!("in-memory stream failed: {e}"),
        }
        assert!(position(&mut reader) > before, "recv consumed nothing");
    }
}

/// Bytes consumed so far.
fn position(reader: &mut BufReader<Cursor<&[u8]>>) -> u64 {
    reader
        .stream_position()
        .unwrap_or_else(|e| panic!("in-memory stream position: {e}"))
}

fn round_trip<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut line = Vec::new();
    send(&mut line, msg).unwrap_or_else(|e| panic!("an accepted message does not send: {e}"));
    assert!(
        line.len() <= MAX_LINE_BYTES,
        "a re-sent message is too long to read back"
    );
    let back: T = recv(&mut Cursor::new(&line))
        .unwrap_or_else(|e| panic!("a re-sent message does not read back: {e}: {line:?}"));
    assert_eq!(&back, msg, "message changed through send/recv");
}

fn lines<T: Serialize>(selector: u8, msgs: &[T]) -> Vec<u8> {
    let mut out = vec![selector];
    for m in msgs {
        send(&mut out, m).unwrap_or_else(|e| panic!("seed message does not send: {e}"));
    }
    out
}

fn launch(source: LaunchSource) -> Launch {
    Launch {
        vm_id: "vm-1_a".into(),
        source,
        mem_bytes: 256 << 20,
        vcpus: 2,
        fill_pattern: Some((0x20_0000, 4096)),
        start_paused: false,
        adopt: None,
        result_blob: Some("/var/lib/novacron/vms/vm-1_a/result.blob".into()),
        sandbox: SandboxSettings {
            enabled: true,
            writable_dirs: vec!["/var/lib/novacron/snap".into()],
            memory_limit_bytes: Some(300 << 20),
            cpu_limit: Some(1.5),
            nice: Some(19),
        },
    }
}

pub fn seeds() -> Vec<Seed> {
    let builtin = LaunchSource::Builtin {
        spec: "builtin:counter:passes=4".into(),
    };
    let linux = LaunchSource::Linux {
        kernel: "/boot/vmlinux".into(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
    };
    let restore = LaunchSource::Restore {
        dir: "/var/lib/novacron/snap".into(),
    };
    vec![
        ("launch_builtin", lines(3, &[launch(builtin)])),
        (
            "launch_linux_restore",
            lines(1, &[launch(linux), launch(restore)]),
        ),
        (
            "commands",
            lines(
                2,
                &[
                    Command::Pause,
                    Command::Snapshot {
                        dir: "/snap".into(),
                        mode: SnapshotMode::Incremental,
                        then_stop: true,
                    },
                    Command::Stats,
                ],
            ),
        ),
        (
            "events",
            lines(
                0,
                &[
                    Event::Guest {
                        code: 3,
                        value: u64::MAX,
                    },
                    Event::Stats {
                        rss_bytes: 1 << 30,
                        guest_touched_bytes: 5,
                    },
                    Event::Exited(ExitReason::Failed {
                        message: "tab\t\"quote\" \u{2028}".into(),
                    }),
                ],
            ),
        ),
    ]
}
