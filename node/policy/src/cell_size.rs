//! How big the node's cell should be: the mesh-size estimate (this cell's live members
//! pooled with the other cells' summaries) and the prefix length it calls for (the gossip
//! interval follows the cell's live size: `novacron_mesh::gossip_pace`). Pure: the cell
//! keeper ([`super::cell_keeper`]) and the simulator call these with what the node holds.

use std::time::Duration;

use novacron_mesh::cells::{estimate_mesh_size, next_prefix_bits, SummaryRecord};
use novacron_mesh::summaries::{estimate_mesh_size_from_book, SummaryBook};

/// The node's estimate of the mesh size (what cell sizing uses, and the
/// `novacron_mesh_size_estimate` metric): this cell (`live` members at `bits`) pooled with
/// the consensus of each other cell in `summaries` (unexpired at `now`, since the unix
/// epoch: summaries are signed with wall-clock expiries).
pub fn mesh_size_estimate(
    bits: u8,
    live: u64,
    summaries: impl IntoIterator<Item = SummaryRecord>,
    now: Duration,
) -> u64 {
    let mut book = SummaryBook::default();
    for s in summaries {
        // The node's book verified them; expired or crowded-out ones simply do not count.
        let _ = book.insert(s, now);
    }
    estimate_mesh_size_from_book(&book, Some((live, bits)))
        .unwrap_or_else(|| estimate_mesh_size(live, bits))
}

/// The prefix length the mesh-size estimate ([`mesh_size_estimate`]) calls for, with the
/// estimate, when it differs from `bits`; `next_prefix_bits` keeps cells of 100–250 with
/// hysteresis.
pub fn next_cell_bits(
    bits: u8,
    live: u64,
    summaries: impl IntoIterator<Item = SummaryRecord>,
    now: Duration,
) -> Option<(u8, u64)> {
    let estimate = mesh_size_estimate(bits, live, summaries, now);
    let next = next_prefix_bits(bits, estimate);
    (next != bits).then_some((next, estimate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::cells::{cell_id, CellId};
    use novacron_mesh::identity::NodeIdentity;
    use novacron_mesh::records::Capacity;
    use novacron_mesh::summaries::build_summary_record;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A summary of `members` members for the cell of `bits` bits that `signer` is in.
    fn summary(signer: &NodeIdentity, bits: u8, members: u64) -> SummaryRecord {
        let me = signer.peer_id();
        let cell = cell_id(&me, bits);
        let cap = Capacity {
            vcpus: 2,
            free_vcpus: 2,
            memory_bytes: 1 << 30,
            free_memory_bytes: 1 << 30,
            free_slots: 2,
            load_permille: 100,
        };
        let mut record = build_summary_record(
            cell,
            [(&me, &cap)],
            &me,
            3,
            Duration::from_secs(1_000),
            Duration::from_secs(600),
        )
        .unwrap();
        record.summary.members = u32::try_from(members).unwrap();
        record
    }

    /// Identities in `n` distinct cells of `bits` bits.
    fn in_distinct_cells(n: usize, bits: u8) -> Vec<NodeIdentity> {
        let mut seen: Vec<CellId> = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let id = NodeIdentity::generate().unwrap();
            let cell = cell_id(&id.peer_id(), bits);
            if !seen.contains(&cell) {
                seen.push(cell);
                out.push(id);
            }
        }
        out
    }

    /// Summaries of five cells of a 50,000-node mesh (8 bits, ~195 members each).
    fn large_mesh() -> Vec<SummaryRecord> {
        in_distinct_cells(5, 8)
            .iter()
            .map(|id| summary(id, 8, 195))
            .collect()
    }

    #[test]
    fn a_node_in_one_cell_of_a_large_mesh_moves_to_its_prefix_length() {
        let heard = large_mesh();
        let (bits, estimate) = next_cell_bits(0, 1, heard.clone(), secs(1_100)).unwrap();
        assert_eq!(bits, 8, "estimate {estimate}");
        assert!(estimate > 35_000, "{estimate}");
        // Once there (a cell of ~195 live members at 8 bits), it stays.
        assert_eq!(next_cell_bits(8, 195, heard.clone(), secs(1_100)), None);
        // Expired summaries do not count: alone, a small cell keeps 0 bits.
        assert_eq!(next_cell_bits(0, 40, heard, secs(5_000)), None);
    }

    #[test]
    fn the_mesh_size_estimate_pools_summaries_not_just_the_live_members() {
        // Two live members at 0 bits who hold the summaries of five cells of a 50,000-node
        // mesh: the estimate is the mesh's, not the two it sees.
        let heard = large_mesh();
        let estimate = mesh_size_estimate(0, 2, heard.clone(), secs(1_100));
        assert!(estimate > 30_000, "{estimate}");
        assert_eq!(
            next_cell_bits(0, 2, heard, secs(1_100)).map(|(_, e)| e),
            Some(estimate)
        );
        // Alone with no summaries: its own cell, scaled by its prefix.
        assert_eq!(mesh_size_estimate(0, 2, Vec::new(), secs(1_100)), 2);
        assert_eq!(mesh_size_estimate(2, 10, Vec::new(), secs(1_100)), 40);
    }

    #[test]
    fn a_small_mesh_keeps_one_cell_and_a_shrunken_one_merges() {
        assert_eq!(next_cell_bits(0, 50, Vec::new(), secs(1_000)), None);
        // A 2-bit cell that shrank to 10 members (mesh of ~40): back to one cell.
        assert_eq!(
            next_cell_bits(2, 10, Vec::new(), secs(1_000)),
            Some((0, 40))
        );
    }
}
