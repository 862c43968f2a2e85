//! The node's cell: what it tells its cell about itself, how it finds its cell's members
//! beyond its routing table (the cell's DHT key, which every member provides), and the
//! signed summary a representative publishes.
//!
//! The free capacity a node gossips is its admission accounting's (`super::capacity`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::api::MemberStatus;
use crate::hex::{from_hex, to_hex};
use novacron_mesh::cells::sign_summary;
use novacron_mesh::cells::{estimate_mesh_size, next_prefix_bits, SummaryRecord};
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, NodeRecord, Reachability, RecordBook, SignedRecord};
use novacron_mesh::summaries::{
    build_summary_record, estimate_mesh_size_from_book, is_representative, SummaryBook,
    DEFAULT_REPRESENTATIVES,
};
use novacron_mesh::swarm::cell::{CellMembership, Member, MemberInfo, MAX_GOSSIPED_ADDRS};
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
        signed_record: None,
    }
}

/// A member as the API (and placement) sees it: what it gossips about itself.
pub fn member_status(peer: &PeerId, live: bool, signed: bool, info: MemberInfo) -> MemberStatus {
    MemberStatus {
        signed,
        peer_id: peer.to_string(),
        live,
        vcpus: info.vcpus,
        mem_mib: info.mem_mib,
        free_slots: info.free_slots,
        load_permille: info.load_permille.into(),
        version: info.version,
        addrs: info.addrs.iter().map(|a| a.to_string()).collect(),
    }
}

/// A signed node record is re-issued at least this often (it lives twice as long).
const RECORD_RESIGN_S: u64 = 30 * 60;

/// Issues the node's signed record for its cell: its stable facts (addresses, version, the
/// machine's totals as its offer), signed with the node key, re-signed when they change or
/// after [`RECORD_RESIGN_S`]. The changing load and free capacity travel unsigned beside it
/// (re-signing them every round would cost every member a record per member per round).
pub struct RecordSigner {
    identity: NodeIdentity,
    seq: u64,
    facts: Option<(Vec<String>, Capacity)>,
    issued_at: u64,
    hex: Option<String>,
}

impl RecordSigner {
    pub fn new(identity: NodeIdentity) -> RecordSigner {
        RecordSigner {
            identity,
            seq: 0,
            facts: None,
            issued_at: 0,
            hex: None,
        }
    }

    /// The current signed record as hex (None if signing failed: logged).
    pub fn current(&mut self, cap: &Capacity, addrs: &[Multiaddr], now: u64) -> Option<String> {
        // The offer: totals only, so VMs starting and stopping do not re-sign it.
        let offer = Capacity {
            free_vcpus: cap.vcpus,
            free_memory_bytes: cap.memory_bytes,
            free_slots: cap.vcpus,
            load_permille: 0,
            ..*cap
        };
        let texts: Vec<String> = addrs
            .iter()
            .take(MAX_GOSSIPED_ADDRS)
            .map(|a| a.to_string())
            .collect();
        let facts = (texts, offer);
        let fresh = now.saturating_sub(self.issued_at) < RECORD_RESIGN_S;
        if self.facts.as_ref() == Some(&facts) && fresh && self.hex.is_some() {
            return self.hex.clone();
        }
        // Sequence numbers grow across restarts too: start from the clock.
        self.seq = (self.seq + 1).max(now.saturating_mul(1000));
        let record = NodeRecord {
            peer_id: self.identity.peer_id().to_bytes(),
            seq: self.seq,
            issued_at: now,
            expires_at: now + 2 * RECORD_RESIGN_S,
            listen_addrs: facts.0.clone(),
            capacity: facts.1,
            version: env!("CARGO_PKG_VERSION").to_string(),
            reachability: Reachability::Unknown,
        };
        match SignedRecord::sign(&self.identity, &record).and_then(|s| s.encode()) {
            Ok(bytes) => {
                self.hex = Some(to_hex(&bytes));
                self.facts = Some(facts);
                self.issued_at = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign the node record"),
        }
        self.hex.clone()
    }
}

/// Whether `member`'s gossiped record is its own, valid and the newest seen: its bytes
/// verify (signature, key owning the peer id, lifetime, limits), it names `member`, and the
/// book takes it or already holds this very record (a replayed older one is not counted).
pub fn member_record_verified(
    member: &PeerId,
    hex: Option<&str>,
    book: &mut RecordBook,
    now: u64,
) -> bool {
    let Some(bytes) = hex.and_then(from_hex) else {
        return false;
    };
    let Ok(record) = SignedRecord::verify(&bytes, Duration::from_secs(now)) else {
        return false;
    };
    if record.peer_id().ok().as_ref() != Some(member) {
        return false;
    }
    let seq = record.seq;
    match book.insert(record, Duration::from_secs(now)) {
        Ok(_) => true,
        Err(_) => book.get(member).is_some_and(|held| held.seq == seq),
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
        Duration::from_secs(now),
        Duration::from_secs(SUMMARY_TTL_S),
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

/// The node's estimate of the mesh size (what cell sizing uses, and the
/// `novacron_mesh_size_estimate` metric): this cell (`live` members at `bits`) pooled with
/// the consensus of each other cell in `summaries`.
pub fn mesh_size_estimate(
    bits: u8,
    live: u64,
    summaries: impl IntoIterator<Item = SummaryRecord>,
    now: u64,
) -> u64 {
    let mut book = SummaryBook::default();
    for s in summaries {
        // The node's book verified them; expired or crowded-out ones simply do not count.
        let _ = book.insert(s, Duration::from_secs(now));
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
    now: u64,
) -> Option<(u8, u64)> {
    let estimate = mesh_size_estimate(bits, live, summaries, now);
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
        let (bits, estimate) = next_cell_bits(0, 1, heard.clone(), 1_100).unwrap();
        assert_eq!(bits, 8, "estimate {estimate}");
        assert!(estimate > 35_000, "{estimate}");
        // Once there (a cell of ~195 live members at 8 bits), it stays.
        assert_eq!(next_cell_bits(8, 195, heard.clone(), 1_100), None);
        // Expired summaries do not count: alone, a small cell keeps 0 bits.
        assert_eq!(next_cell_bits(0, 40, heard, 5_000), None);
    }

    #[test]
    fn the_mesh_size_estimate_pools_summaries_not_just_the_live_members() {
        // Two live members at 0 bits who hold the summaries of five cells of a 50,000-node
        // mesh: the estimate is the mesh's, not the two it sees.
        let heard = large_mesh();
        let estimate = mesh_size_estimate(0, 2, heard.clone(), 1_100);
        assert!(estimate > 30_000, "{estimate}");
        assert_eq!(
            next_cell_bits(0, 2, heard, 1_100).map(|(_, e)| e),
            Some(estimate)
        );
        // Alone with no summaries: its own cell, scaled by its prefix.
        assert_eq!(mesh_size_estimate(0, 2, Vec::new(), 1_100), 2);
        assert_eq!(mesh_size_estimate(2, 10, Vec::new(), 1_100), 40);
    }

    #[test]
    fn members_records_verify_only_when_signed_by_them_and_newest() {
        let a = NodeIdentity::generate().unwrap();
        let b = NodeIdentity::generate().unwrap();
        let cap = Capacity {
            vcpus: 4,
            free_vcpus: 1,
            memory_bytes: 8 << 30,
            free_memory_bytes: 2 << 30,
            free_slots: 1,
            load_permille: 700,
        };
        let addrs: Vec<Multiaddr> = vec!["/ip4/10.0.0.1/tcp/4001".parse().unwrap()];
        let mut signer = RecordSigner::new(a.clone());
        let first = signer.current(&cap, &addrs, 1_000_000).unwrap();
        // Same facts, load changed: the same record is kept.
        let busier = Capacity {
            load_permille: 900,
            ..cap
        };
        assert_eq!(
            signer.current(&busier, &addrs, 1_000_010),
            Some(first.clone())
        );
        // Nor do VMs taking the free capacity re-sign it.
        let full = Capacity {
            free_vcpus: 0,
            free_memory_bytes: 0,
            free_slots: 0,
            ..cap
        };
        assert_eq!(
            signer.current(&full, &addrs, 1_000_011),
            Some(first.clone())
        );
        let mut book = RecordBook::new(16);
        assert!(member_record_verified(
            &a.peer_id(),
            Some(&first),
            &mut book,
            1_000_020
        ));
        // b cannot pass a's record off as its own, nor garbage as a record.
        assert!(!member_record_verified(
            &b.peer_id(),
            Some(&first),
            &mut book,
            1_000_020
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            Some("zz"),
            &mut book,
            1_000_020
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            None,
            &mut book,
            1_000_020
        ));
        // New facts: a newer record; the older one replayed afterwards no longer counts.
        let moved: Vec<Multiaddr> = vec!["/ip4/10.0.0.2/tcp/4001".parse().unwrap()];
        let second = signer.current(&cap, &moved, 1_000_030).unwrap();
        assert_ne!(second, first);
        assert!(member_record_verified(
            &a.peer_id(),
            Some(&second),
            &mut book,
            1_000_040
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            Some(&first),
            &mut book,
            1_000_040
        ));
        // A tampered byte breaks the signature.
        let mut bad = second.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(!member_record_verified(
            &a.peer_id(),
            Some(&bad),
            &mut RecordBook::new(4),
            1_000_040
        ));
        // The hex fits one gossiped value.
        assert!(
            second.len() <= novacron_mesh::cell_wire::MAX_VALUE_BYTES,
            "{}",
            second.len()
        );
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
