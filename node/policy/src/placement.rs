//! Choosing the peer a VM moves to: among the live members of the node's cell that say they
//! have a free slot and enough memory, the one with the most free slots, then the least
//! load. Pure: the daemon gives it the members its cell gossip reports (hints, so a choice
//! can still be refused by the peer; the caller then tries the next).
//!
//! Ties are broken by `seed`, not by PeerId: nodes that look alike (several on one host
//! report the same load) would otherwise always lose to the same one, and a VM moved on
//! again and again would shuttle between two of them. The daemon draws a fresh seed per
//! choice; with the same seed the choice is the same.

use novacron_model::MemberStatus;

/// Live members that could take a VM of `mem_mib`, best first, skipping `me` and `exclude`;
/// equals in an order drawn from `seed`.
pub fn candidates<'a>(
    members: &'a [MemberStatus],
    me: &str,
    mem_mib: u64,
    exclude: &[String],
    seed: u64,
) -> Vec<&'a MemberStatus> {
    let mut fit: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| m.live && m.peer_id != me && !exclude.contains(&m.peer_id))
        .filter(|m| m.free_slots > 0 && m.mem_mib >= mem_mib)
        .collect();
    fit.sort_by_cached_key(|m| {
        (
            std::cmp::Reverse(m.free_slots),
            m.load_permille,
            std::cmp::Reverse(m.signed),
            tie_break(seed, &m.peer_id),
        )
    });
    fit
}

/// A member's place among equals for `seed`: the first 8 bytes of blake3(seed, PeerId).
pub(crate) fn tie_break(seed: u64, peer: &str) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(peer.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, live: bool, slots: u32, mem: u64, load: u32) -> MemberStatus {
        MemberStatus {
            peer_id: id.into(),
            live,
            signed: true,
            vcpus: 4,
            mem_mib: mem,
            free_slots: slots,
            load_permille: load,
            version: "0.1.0".into(),
            addrs: vec![],
        }
    }

    #[test]
    fn the_freest_live_member_that_fits_comes_first() {
        let members = vec![
            member("me", true, 9, 9999, 0),
            member("dead", false, 9, 9999, 0),
            member("full", true, 0, 9999, 0),
            member("small", true, 5, 32, 0),
            member("busy", true, 2, 4096, 900),
            member("idle", true, 2, 4096, 100),
            member("roomy", true, 3, 4096, 500),
            member("excluded", true, 8, 4096, 0),
        ];
        for seed in 0..8 {
            let ids: Vec<&str> = candidates(&members, "me", 64, &["excluded".to_string()], seed)
                .iter()
                .map(|m| m.peer_id.as_str())
                .collect();
            assert_eq!(ids, ["roomy", "idle", "busy"]);
        }
        assert!(candidates(&members, "me", 1 << 20, &[], 0).is_empty());
    }

    #[test]
    fn equals_are_ordered_by_the_seed_so_each_gets_its_turn() {
        let members: Vec<MemberStatus> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| member(id, true, 2, 4096, 500))
            .collect();
        let first = |seed| candidates(&members, "me", 64, &[], seed)[0].peer_id.clone();
        let firsts: std::collections::BTreeSet<String> = (0..64).map(first).collect();
        assert_eq!(
            firsts.len(),
            4,
            "over 64 seeds some equal member never came first"
        );
        assert_eq!(first(7), first(7), "the same seed, the same choice");
        // A better member wins whatever the seed.
        let mut members = members;
        members.push(member("freer", true, 3, 4096, 500));
        assert!((0..64).all(|s| candidates(&members, "me", 64, &[], s)[0].peer_id == "freer"));
    }
}
