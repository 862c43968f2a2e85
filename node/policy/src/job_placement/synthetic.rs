//! A synthetic view of a 50,000-node mesh as one node holds it, for the placement's tests
//! and `novacron bench jobs` (one builder, so both measure and check the same shape): 256
//! cells of 180-209 members at 8 prefix bits, three signed summaries per cell (its
//! representatives), some expired, and the node's own cell's 195 members, one in 20 dead.
//! Deterministic per seed (xorshift), no I/O.

use std::time::Duration;

use novacron_mesh::cells::{CellSummary, SummaryRecord};

use novacron_model::MemberStatus;

const GIB: u64 = 1 << 30;

/// A 50,000-node mesh as one node sees it: 256 cells of ~195 at 8 bits, three records
/// per cell (its representatives), and its own cell's 195 members.
pub fn view_of_50k(seed: u64, now: Duration) -> (Vec<SummaryRecord>, Vec<MemberStatus>) {
    let mut x = seed | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut summaries = Vec::new();
    for prefix in 0..256u32 {
        for signer in 0..3u8 {
            let members = 180 + next(30) as u32;
            let free_vcpus = next(u64::from(members) * 4);
            summaries.push(SummaryRecord {
                signer: vec![signer, prefix as u8],
                issued_at: now.as_secs() - next(600),
                expires_at: now.as_secs() - 100 + next(700),
                summary: CellSummary {
                    prefix_bits: 8,
                    prefix,
                    members,
                    total_vcpus: u64::from(members) * 8,
                    free_vcpus,
                    total_memory_bytes: u64::from(members) * 16 * GIB,
                    free_memory_bytes: next(u64::from(members) * 16) * GIB,
                    free_slots: next(u64::from(members) * 2),
                    mean_load_permille: next(1001) as u16,
                    contacts: vec![vec![signer, prefix as u8]],
                },
            });
        }
    }
    let members = (0..195)
        .map(|i| MemberStatus {
            peer_id: format!("12D3KooWmember{i:04}"),
            live: next(20) != 0,
            signed: true,
            vcpus: 1 + next(16) as u32,
            mem_mib: next(16 * 1024),
            free_slots: next(4) as u32,
            load_permille: next(1001) as u32,
            version: "0.1.0".into(),
            addrs: vec![],
        })
        .collect();
    (summaries, members)
}
