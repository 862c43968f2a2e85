//! The node's cell: what it tells its cell about itself, how it finds its cell's members
//! beyond its routing table (the cell's DHT key, which every member provides), and the
//! signed summary a representative publishes.
//!
//! What this cannot do yet: the prefix length is chosen at start (0 bits, one cell, until
//! the mesh outgrows ~300 nodes: see `cells::next_prefix_bits`); the daemon does not move to
//! a new cell when the estimate changes. Free capacity is what the machine has free: no VMs
//! run under the daemon yet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use novacron_mesh::cells::sign_summary;
use novacron_mesh::cells::{next_prefix_bits, SummaryRecord};
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, Reachability};
use novacron_mesh::summaries::{
    build_summary_record, estimate_mesh_size_from_book, is_representative, SummaryBook,
    DEFAULT_REPRESENTATIVES,
};
use novacron_mesh::swarm::cell::{CellMembership, Member, MemberInfo};
use novacron_mesh::swarm::{MeshNode, Multiaddr, PeerId};

/// How long a published summary is valid.
pub const SUMMARY_TTL_S: u64 = 600;

const MIB: u64 = 1024 * 1024;

/// What the node gossips about itself: the machine's capacity and where to reach it.
pub fn member_info(cap: &Capacity, addrs: Vec<Multiaddr>) -> MemberInfo {
    MemberInfo {
        vcpus: cap.vcpus,
        mem_mib: cap.free_memory_bytes / MIB,
        free_slots: cap.free_slots,
        load_permille: cap.load_permille,
        reachability: Reachability::Unknown,
        version: env!("CARGO_PKG_VERSION").to_string(),
        addrs,
    }
}

/// A member's gossiped info as capacity for a summary (memory offered counts as free).
fn capacity_of(info: &MemberInfo) -> Capacity {
    let mem = info.mem_mib.saturating_mul(MIB);
    Capacity {
        vcpus: info.vcpus,
        free_vcpus: info.vcpus.min(info.free_slots),
        memory_bytes: mem,
        free_memory_bytes: mem,
        free_slots: info.free_slots,
        load_permille: info.load_permille,
    }
}

/// Announces this node as a member of its cell in the DHT and hands every member the DHT
/// knows of to chitchat as a candidate. Returns how many were found.
pub async fn find_members_in_dht(mesh: &MeshNode, cell: &CellMembership) -> anyhow::Result<usize> {
    let key = DhtKey::Cell(cell.cell());
    mesh.start_providing(key)
        .await
        .context("announcing the cell in the DHT")?;
    let found: Vec<(PeerId, Vec<Multiaddr>)> = mesh
        .providers(key)
        .await
        .context("looking up the cell's members")?
        .into_iter()
        .filter(|p| *p != mesh.peer_id())
        .map(|p| (p, Vec::new()))
        .collect();
    let n = found.len();
    cell.add_candidates(found);
    Ok(n)
}

/// If this node is one of its cell's representatives, signs the cell's summary and puts it
/// in the DHT and on the cells topic. Returns whether it published.
pub async fn publish_summary_if_representative(
    mesh: &MeshNode,
    identity: &NodeIdentity,
    cell: &CellMembership,
) -> anyhow::Result<bool> {
    let me = mesh.peer_id();
    let members: Vec<Member> = cell
        .members()
        .await
        .into_iter()
        .filter(|m| m.live)
        .collect();
    let live: Vec<PeerId> = members.iter().map(|m| m.peer).collect();
    if !is_representative(&me, cell.cell(), &live, DEFAULT_REPRESENTATIVES) {
        return Ok(false);
    }
    let caps: Vec<(PeerId, Capacity)> = members
        .iter()
        .map(|m| (m.peer, capacity_of(&m.info)))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = build_summary_record(
        cell.cell(),
        caps.iter().map(|(p, c)| (p, c)),
        &me,
        DEFAULT_REPRESENTATIVES,
        now,
        SUMMARY_TTL_S,
    )?;
    let signed = sign_summary(identity, &record)?.encode()?;
    mesh.put_cell_summary(signed.clone())
        .await
        .context("putting the cell summary in the DHT")?;
    if let Err(e) = mesh.publish_cell_summary(signed).await {
        // Nobody subscribed yet (a lone node): the DHT copy is there.
        tracing::debug!(error = %e, "cell summary not gossiped");
    }
    Ok(true)
}

/// Cell gossip bytes per node per second the interval is chosen for (sent + received; the
/// goal is 20 KB/s for everything, the rest of the node's traffic included).
pub const GOSSIP_BUDGET_BYTES_PER_S: u64 = 15_000;

/// Bytes one member costs per gossip round, as measured: ~12 digests pass through a node
/// per round (3 exchanges started, ~3 answered, a digest each way), ~21 B per member each.
const ROUND_BYTES_PER_MEMBER: u64 = 12 * 21;

/// The gossip interval that keeps a cell of `members` within the byte budget: 1 s up to
/// ~60 members, growing linearly after (195 members: ~3.3 s), at most 5 s. Failure detection
/// takes ~6 intervals, so big cells detect more slowly; that is the price of the budget.
pub fn gossip_interval_for(members: u64) -> Duration {
    let ms = members
        .saturating_mul(ROUND_BYTES_PER_MEMBER)
        .saturating_mul(1000)
        / GOSSIP_BUDGET_BYTES_PER_S;
    Duration::from_millis(ms.clamp(1000, 5000))
}

/// The prefix length the mesh-size estimate calls for, with the estimate, when it differs
/// from `bits`: the estimate pools this cell (`live` members at `bits`) with the consensus of
/// each other cell in `summaries`; `next_prefix_bits` keeps cells of 100–250 with hysteresis.
pub fn next_cell_bits(
    bits: u8,
    live: u64,
    summaries: impl IntoIterator<Item = SummaryRecord>,
    now: u64,
) -> Option<(u8, u64)> {
    let mut book = SummaryBook::default();
    for s in summaries {
        // The node's book verified them; expired or crowded-out ones simply do not count.
        let _ = book.insert(s, now);
    }
    let estimate = estimate_mesh_size_from_book(&book, Some((live, bits)))?;
    let next = next_prefix_bits(bits, estimate);
    (next != bits).then_some((next, estimate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::cells::{cell_id, CellId};

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
        let mut record = build_summary_record(cell, [(&me, &cap)], &me, 3, 1_000, 600).unwrap();
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

    #[test]
    fn a_node_in_one_cell_of_a_large_mesh_moves_to_its_prefix_length() {
        // Five cells of a 50,000-node mesh (8 bits, ~195 members each) are heard of.
        let heard: Vec<SummaryRecord> = in_distinct_cells(5, 8)
            .iter()
            .map(|id| summary(id, 8, 195))
            .collect();
        let (bits, estimate) = next_cell_bits(0, 1, heard.clone(), 1_100).unwrap();
        assert_eq!(bits, 8, "estimate {estimate}");
        assert!(estimate > 35_000, "{estimate}");
        // Once there (a cell of ~195 live members at 8 bits), it stays.
        assert_eq!(next_cell_bits(8, 195, heard.clone(), 1_100), None);
        // Expired summaries do not count: alone, a small cell keeps 0 bits.
        assert_eq!(next_cell_bits(0, 40, heard, 5_000), None);
    }

    #[test]
    fn the_interval_keeps_bigger_cells_within_the_budget() {
        assert_eq!(gossip_interval_for(0), Duration::from_secs(1));
        assert_eq!(gossip_interval_for(50), Duration::from_secs(1));
        let big = gossip_interval_for(195);
        assert!(
            big > Duration::from_secs(3) && big < Duration::from_secs(4),
            "{big:?}"
        );
        assert_eq!(gossip_interval_for(100_000), Duration::from_secs(5));
    }

    #[test]
    fn a_small_mesh_keeps_one_cell_and_a_shrunken_one_merges() {
        assert_eq!(next_cell_bits(0, 50, Vec::new(), 1_000), None);
        // A 2-bit cell that shrank to 10 members (mesh of ~40): back to one cell.
        assert_eq!(next_cell_bits(2, 10, Vec::new(), 1_000), Some((0, 40)));
    }

    #[test]
    fn gossiped_info_reads_back_as_capacity() {
        let cap = Capacity {
            vcpus: 8,
            free_vcpus: 8,
            memory_bytes: 32 << 30,
            free_memory_bytes: 16 << 30,
            free_slots: 4,
            load_permille: 250,
        };
        let info = member_info(&cap, vec![]);
        assert_eq!(info.mem_mib, 16 * 1024);
        let back = capacity_of(&info);
        assert_eq!(back.vcpus, 8);
        assert_eq!(back.free_vcpus, 4);
        assert_eq!(back.memory_bytes, 16 << 30);
        assert_eq!(back.load_permille, 250);
    }
}
