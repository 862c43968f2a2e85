//! The node's cell: what it tells its cell about itself, how it finds its cell's members
//! beyond its routing table (the cell's DHT key, which every member provides), and the
//! signed summary a representative publishes.
//!
//! What this cannot do yet: the prefix length is chosen at start (0 bits, one cell, until
//! the mesh outgrows ~300 nodes: see `cells::next_prefix_bits`); the daemon does not move to
//! a new cell when the estimate changes. Free capacity is what the machine has free: no VMs
//! run under the daemon yet.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use novacron_mesh::cells::sign_summary;
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, Reachability};
use novacron_mesh::summaries::{build_summary_record, is_representative, DEFAULT_REPRESENTATIVES};
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

#[cfg(test)]
mod tests {
    use super::*;

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
