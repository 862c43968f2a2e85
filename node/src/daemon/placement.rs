//! Choosing the peer a VM moves to: among the live members of the node's cell that say they
//! have a free slot and enough memory, the one with the most free slots, then the least
//! load. Pure: the daemon gives it the members its cell gossip reports (hints, so a choice
//! can still be refused by the peer; the caller then tries the next).

use crate::api::MemberStatus;

/// Live members that could take a VM of `mem_mib`, best first, skipping `me` and `exclude`.
pub fn candidates<'a>(
    members: &'a [MemberStatus],
    me: &str,
    mem_mib: u64,
    exclude: &[String],
) -> Vec<&'a MemberStatus> {
    let mut fit: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| m.live && m.peer_id != me && !exclude.contains(&m.peer_id))
        .filter(|m| m.free_slots > 0 && m.mem_mib >= mem_mib)
        .collect();
    fit.sort_by(|a, b| {
        b.free_slots
            .cmp(&a.free_slots)
            .then(a.load_permille.cmp(&b.load_permille))
            .then(b.signed.cmp(&a.signed))
            .then(a.peer_id.cmp(&b.peer_id))
    });
    fit
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
        let ids: Vec<&str> = candidates(&members, "me", 64, &["excluded".to_string()])
            .iter()
            .map(|m| m.peer_id.as_str())
            .collect();
        assert_eq!(ids, ["roomy", "idle", "busy"]);
        assert!(candidates(&members, "me", 1 << 20, &[]).is_empty());
    }
}
