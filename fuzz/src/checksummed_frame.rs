//! `read_checksummed`: the 48-byte framed header (magic, version, kind, length, blake3) of
//! state and manifest files, read from a real file.
//!
//! Invariants: the first input byte picks the expected kind and the payload limit, the rest is
//! the file. When a frame is accepted, writing its payload again with `write_checksummed`
//! gives a byte-identical file (the frame has exactly one encoding), and every error message
//! names the file.

use novacron_vm::storage::checksummed::{kind, HEADER_LEN};
use novacron_vm::storage::{read_checksummed, write_checksummed};

use crate::{scratch, Seed};

/// Payload limits the selector byte chooses from (callers use 16 KiB and 64 MiB).
const LIMITS: [u64; 4] = [0, 64, 16 << 10, u64::MAX];

pub fn check(data: &[u8]) -> bool {
    let Some((&selector, file)) = data.split_first() else {
        return false;
    };
    let want_kind = if selector & 1 == 0 {
        kind::STATE
    } else {
        kind::MANIFEST
    };
    let limit = LIMITS[usize::from(selector >> 1) % LIMITS.len()];
    let dir = scratch::dir();
    let path = scratch::file(dir.path(), "framed", file);
    let payload = match read_checksummed(&path, want_kind, limit) {
        Ok(payload) => payload,
        Err(e) => {
            let shown = path.display().to_string();
            assert!(
                e.to_string().contains(&shown),
                "error without the path: {e}"
            );
            return false;
        }
    };
    assert!(payload.len() as u64 <= limit, "payload over the limit");
    assert_eq!(payload.len() + HEADER_LEN, file.len());
    let again = dir.path().join("rewritten");
    write_checksummed(&again, want_kind, &payload)
        .unwrap_or_else(|e| panic!("an accepted payload does not write back: {e}"));
    let rewritten =
        std::fs::read(&again).unwrap_or_else(|e| panic!("cannot read {}: {e}", again.display()));
    assert_eq!(rewritten, file, "an accepted frame has a second encoding");
    true
}

fn framed(selector: u8, kind: u16, payload: &[u8]) -> Vec<u8> {
    let dir = scratch::dir();
    let path = dir.path().join("seed");
    write_checksummed(&path, kind, payload)
        .unwrap_or_else(|e| panic!("seed frame does not write: {e}"));
    let mut out = vec![selector];
    out.extend(
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
    );
    out
}

pub fn seeds() -> Vec<Seed> {
    // Selector: bit 0 = manifest kind, bits 1.. = index into LIMITS (2 = 16 KiB).
    vec![
        ("empty_state", framed(2 << 1, kind::STATE, b"")),
        (
            "small_state",
            framed(2 << 1, kind::STATE, b"opaque state bytes"),
        ),
        (
            "manifest",
            framed((2 << 1) | 1, kind::MANIFEST, &[0x5A; 300]),
        ),
    ]
}
