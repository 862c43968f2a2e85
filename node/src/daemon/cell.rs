//! The node's cell: what it tells its cell about itself, how it finds its cell's members
//! beyond its routing table (the cell's DHT key, which every member provides), and the
//! signed summary a representative publishes.
//!
//! The free capacity a node gossips is its admission accounting's (`super::capacity`).

use std::time::Duration;

use anyhow::Context;

use crate::api::MemberStatus;
use crate::policy::cell_keeper::SUMMARY_TTL_S;
use novacron_mesh::cells::sign_summary;
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, NodeRecord, Reachability, RecordBook, SignedRecord};
use novacron_mesh::summaries::{build_summary_record, is_representative, DEFAULT_REPRESENTATIVES};
use novacron_mesh::swarm::cell::{CellMembership, Member, MemberInfo, MAX_GOSSIPED_ADDRS};
use novacron_mesh::swarm::clock::unix_now;
use novacron_mesh::swarm::{MeshNode, Multiaddr, PeerId};
use novacron_mesh::util::hex;

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
pub fn member_status(peer: &PeerId, live: bool, signed: bool, info: &MemberInfo) -> MemberStatus {
    MemberStatus {
        signed,
        peer_id: peer.to_string(),
        live,
        vcpus: info.vcpus,
        mem_mib: info.mem_mib,
        free_slots: info.free_slots,
        load_permille: info.load_permille.into(),
        version: info.version.clone(),
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
    /// `now`: since the unix epoch (the record carries whole seconds).
    pub fn current(
        &mut self,
        cap: &Capacity,
        addrs: &[Multiaddr],
        now: Duration,
    ) -> Option<String> {
        let now = now.as_secs();
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
                self.hex = Some(hex::encode(&bytes));
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
    now: Duration,
) -> bool {
    let Some(bytes) = hex.and_then(hex::decode) else {
        return false;
    };
    let Ok(record) = SignedRecord::verify(&bytes, now) else {
        return false;
    };
    if record.peer_id().ok().as_ref() != Some(member) {
        return false;
    }
    let seq = record.seq;
    match book.insert(record, now) {
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

/// Announces this node as a member of its cell in the DHT (a provider record on the peers
/// closest to the cell's key).
pub async fn announce_in_dht(mesh: &MeshNode, cell: &CellMembership) -> anyhow::Result<()> {
    mesh.start_providing(DhtKey::Cell(cell.cell()))
        .await
        .context("announcing the cell in the DHT")
}

/// Hands every member of the cell the DHT knows of to chitchat as a candidate. Returns how
/// many were found.
pub async fn find_members_in_dht(mesh: &MeshNode, cell: &CellMembership) -> anyhow::Result<usize> {
    let key = DhtKey::Cell(cell.cell());
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
    let record = build_summary_record(
        cell.cell(),
        caps.iter().map(|(p, c)| (p, c)),
        &me,
        DEFAULT_REPRESENTATIVES,
        unix_now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
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
        let first = signer.current(&cap, &addrs, secs(1_000_000)).unwrap();
        // Same facts, load changed: the same record is kept.
        let busier = Capacity {
            load_permille: 900,
            ..cap
        };
        assert_eq!(
            signer.current(&busier, &addrs, secs(1_000_010)),
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
            signer.current(&full, &addrs, secs(1_000_011)),
            Some(first.clone())
        );
        let mut book = RecordBook::new(16);
        assert!(member_record_verified(
            &a.peer_id(),
            Some(&first),
            &mut book,
            secs(1_000_020)
        ));
        // b cannot pass a's record off as its own, nor garbage as a record.
        assert!(!member_record_verified(
            &b.peer_id(),
            Some(&first),
            &mut book,
            secs(1_000_020)
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            Some("zz"),
            &mut book,
            secs(1_000_020)
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            None,
            &mut book,
            secs(1_000_020)
        ));
        // New facts: a newer record; the older one replayed afterwards no longer counts.
        let moved: Vec<Multiaddr> = vec!["/ip4/10.0.0.2/tcp/4001".parse().unwrap()];
        let second = signer.current(&cap, &moved, secs(1_000_030)).unwrap();
        assert_ne!(second, first);
        assert!(member_record_verified(
            &a.peer_id(),
            Some(&second),
            &mut book,
            secs(1_000_040)
        ));
        assert!(!member_record_verified(
            &a.peer_id(),
            Some(&first),
            &mut book,
            secs(1_000_040)
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
            secs(1_000_040)
        ));
        // The hex fits one gossiped value.
        assert!(
            second.len() <= novacron_mesh::cell_wire::MAX_VALUE_BYTES,
            "{}",
            second.len()
        );
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
