//! `cells::verify_summary`: signed cell summaries read from the DHT and gossipsub.
//!
//! Invariants when bytes verify (at a fixed clock): they were within the size limit; the
//! summary is within every limit, its contacts lie in its cell and include the signer; its
//! archive decodes back to the same summary; the envelope, re-encoded, verifies again to it.

use std::time::Duration;

use novacron_mesh::cells::{
    sign_summary, verify_summary, CellId, CellSummary, SummaryRecord, MAX_SIGNED_SUMMARY_LEN,
};
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, SignedRecord};

use crate::Seed;

/// The clock every check and seed uses (unix seconds).
pub const NOW: u64 = 1_800_000_000;

pub fn check(data: &[u8]) -> bool {
    let Ok(record) = verify_summary(data, Duration::from_secs(NOW)) else {
        return false;
    };
    assert!(data.len() <= MAX_SIGNED_SUMMARY_LEN, "over the size limit");
    assert!(
        record.check_limits().is_ok(),
        "a summary over a limit verified"
    );
    let again = record
        .to_bytes()
        .and_then(|bytes| SummaryRecord::from_bytes(&bytes));
    assert_eq!(
        again.as_ref(),
        Ok(&record),
        "decode(encode(summary)) differs"
    );
    let envelope = SignedRecord::decode(data, MAX_SIGNED_SUMMARY_LEN)
        .and_then(|signed| signed.encode())
        .and_then(|bytes| verify_summary(&bytes, Duration::from_secs(NOW)));
    assert_eq!(
        envelope,
        Ok(record),
        "the re-encoded envelope verifies differently"
    );
    true
}

/// A one-cell mesh of `n` nodes, summarised and signed by its best representative.
fn signed_summary(n: u8, contacts: usize) -> Vec<u8> {
    let ids: Vec<NodeIdentity> = (1..=n)
        .map(|i| NodeIdentity::from_seed(&[i; 32]).expect("seed identity"))
        .collect();
    let members: Vec<_> = ids
        .iter()
        .map(|id| {
            let cap = Capacity {
                vcpus: 4,
                free_vcpus: 1,
                memory_bytes: 8 << 30,
                free_memory_bytes: 1 << 30,
                free_slots: 1,
                load_permille: 500,
            };
            (id.peer_id(), cap)
        })
        .collect();
    let cell = CellId::new(0, 0).expect("cell 0/0");
    let summary = CellSummary::fold(cell, members.iter().map(|(p, c)| (p, c)), contacts);
    let first = summary.contact_peers().expect("contacts parse")[0];
    let signer = ids
        .iter()
        .find(|id| id.peer_id() == first)
        .expect("the first contact is a member");
    let record = SummaryRecord {
        signer: first.to_bytes(),
        issued_at: NOW - 10,
        expires_at: NOW + 600,
        summary,
    };
    sign_summary(signer, &record)
        .and_then(|s| s.encode())
        .expect("seed summary signs")
}

pub fn seeds() -> Vec<Seed> {
    vec![
        ("one_contact", signed_summary(3, 1)),
        ("three_contacts", signed_summary(12, 3)),
    ]
}
