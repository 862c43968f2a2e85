//! `records::SignedRecord::verify`: signed node records any peer may send.
//!
//! Invariants when bytes verify (at a fixed clock): they were within the size limit; the
//! record is within every field limit and names the key that signed it; its archive decodes
//! back to the same record; and the envelope, re-encoded, verifies again to the same record.

use std::time::Duration;

use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{
    Capacity, NodeRecord, Reachability, SignedRecord, MAX_SIGNED_RECORD_LEN,
};

use crate::Seed;

/// The clock every check and seed uses (unix seconds).
pub const NOW: u64 = 1_800_000_000;

pub fn check(data: &[u8]) -> bool {
    let Ok(record) = SignedRecord::verify(data, Duration::from_secs(NOW)) else {
        return false;
    };
    assert!(data.len() <= MAX_SIGNED_RECORD_LEN, "over the size limit");
    assert!(
        record.check_limits().is_ok(),
        "a record over a limit verified"
    );
    let again = record
        .to_bytes()
        .and_then(|bytes| NodeRecord::from_bytes(&bytes));
    assert_eq!(
        again.as_ref(),
        Ok(&record),
        "decode(encode(record)) differs"
    );
    let envelope = SignedRecord::decode(data, MAX_SIGNED_RECORD_LEN)
        .and_then(|signed| signed.encode())
        .and_then(|bytes| SignedRecord::verify(&bytes, Duration::from_secs(NOW)));
    assert_eq!(
        envelope,
        Ok(record),
        "the re-encoded envelope verifies differently"
    );
    true
}

fn record(identity: &NodeIdentity, seq: u64, addrs: &[&str], reach: Reachability) -> NodeRecord {
    NodeRecord {
        peer_id: identity.peer_id().to_bytes(),
        seq,
        issued_at: NOW - 60,
        expires_at: NOW + 3600,
        listen_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        capacity: Capacity {
            vcpus: 8,
            free_vcpus: 2,
            memory_bytes: 16 << 30,
            free_memory_bytes: 4 << 30,
            free_slots: 1,
            load_permille: 700,
        },
        version: "0.1.0".into(),
        reachability: reach,
    }
}

pub fn seeds() -> Vec<Seed> {
    let public = NodeIdentity::from_seed(&[1; 32]).expect("seed identity");
    let private = NodeIdentity::from_seed(&[2; 32]).expect("seed identity");
    let cases = [
        (
            "public",
            &public,
            record(
                &public,
                1,
                &["/ip4/192.0.2.1/udp/4001/quic-v1", "/ip4/192.0.2.1/tcp/4001"],
                Reachability::Public,
            ),
        ),
        (
            "private_no_addrs",
            &private,
            record(&private, 9, &[], Reachability::Private),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, id, r)| {
            let bytes = SignedRecord::sign(id, &r)
                .and_then(|s| s.encode())
                .expect("seed record signs");
            (name, bytes)
        })
        .collect()
}
