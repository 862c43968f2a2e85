//! What this node offers the mesh: its slots and memory under the politeness caps minus
//! what its VMs hold (the admission accounting, [`super::admission`], so the gossip and the
//! node's own answer to a VM never disagree), and the host's load (1-minute load average
//! per CPU, in per mille).

use novacron_mesh::records::{Capacity, MAX_LOAD_PERMILLE};

use crate::policy::admission::Accounting;

/// The capacity to gossip: `vcpus` is the slots VMs may use, `memory_bytes` the host's
/// `MemTotal`; the free figures are the accounting's (zero while the node takes nothing).
pub fn offer(acc: &Accounting, load_permille: u16) -> Capacity {
    let free = acc.free();
    let memory_bytes = acc.mem_total_bytes.unwrap_or(0);
    Capacity {
        vcpus: acc.slots,
        free_vcpus: free.slots.min(acc.slots),
        memory_bytes,
        free_memory_bytes: free.mem_bytes.min(memory_bytes),
        free_slots: free.slots.min(acc.slots),
        load_permille,
    }
}

/// The host's 1-minute load average per online CPU, per mille (0 when /proc/loadavg cannot
/// be read: logged).
pub fn host_load_permille() -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let load = std::fs::read_to_string("/proc/loadavg")
        .map_err(|e| tracing::warn!(error = %e, "cannot read /proc/loadavg"))
        .ok()
        .and_then(|t| parse_loadavg(&t))
        .unwrap_or(0.0);
    load_permille(load, cpus)
}

/// The 1-minute load average.
fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn load_permille(load: f64, vcpus: u32) -> u16 {
    let per_cpu = load / f64::from(vcpus.max(1));
    (per_cpu * 1000.0)
        .round()
        .clamp(0.0, f64::from(MAX_LOAD_PERMILLE)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::admission::{Closed, Load, MemCap};

    const MIB: u64 = 1 << 20;

    #[test]
    fn loadavg_is_read() {
        assert_eq!(parse_loadavg("1.50 0.80 0.40 2/300 1234\n"), Some(1.5));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(load_permille(1.5, 2), 750);
        assert_eq!(load_permille(1e9, 2), MAX_LOAD_PERMILLE);
        assert!(host_load_permille() <= MAX_LOAD_PERMILLE);
    }

    /// A 2-CPU host with 4 GiB (3000 MiB available) and the busy cap (50%), `held` by VMs.
    fn host(held: Load) -> Accounting {
        Accounting {
            slots: 2,
            mem_total_bytes: Some(4096 * MIB),
            mem_available_bytes: Some(3000 * MIB),
            mem_cap: Some(MemCap {
                bytes: 2048 * MIB,
                pct: 50,
            }),
            closed: None,
            held,
        }
    }

    #[test]
    fn a_node_running_a_vm_offers_what_is_left() {
        let mut acc = host(Load::default());
        let idle = offer(&acc, 100);
        assert_eq!((idle.vcpus, idle.free_slots, idle.free_vcpus), (2, 2, 2));
        assert_eq!(idle.free_memory_bytes, 2048 * MIB);
        assert_eq!(idle.memory_bytes, 4096 * MIB);
        acc.held = Load::new(1, 512 * MIB);
        let busy = offer(&acc, 100);
        assert_eq!((busy.vcpus, busy.free_slots, busy.free_vcpus), (2, 1, 1));
        assert_eq!(busy.free_memory_bytes, 1536 * MIB);
        acc.held = Load::new(2, 1024 * MIB);
        assert_eq!(offer(&acc, 100).free_slots, 0);
        // Closed: nothing free, whatever is left.
        acc.held = Load::default();
        acc.closed = Some(Closed::Draining);
        let closed = offer(&acc, 100);
        assert_eq!((closed.free_slots, closed.free_memory_bytes), (0, 0));
        // Free never exceeds the totals a record must respect.
        acc.closed = None;
        acc.mem_total_bytes = None;
        assert_eq!(offer(&acc, 0).free_memory_bytes, 0);
    }

    #[test]
    fn auto_placement_skips_a_node_whose_vms_take_its_slots() {
        use novacron_mesh::identity::NodeIdentity;
        let node = |held: Load| {
            let info = super::super::cell::member_info(&offer(&host(held), 0), Vec::new());
            let peer = NodeIdentity::generate().unwrap().peer_id();
            super::super::cell::member_status(&peer, true, true, info)
        };
        let full = node(Load::new(2, 128 * MIB));
        let half = node(Load::new(1, 128 * MIB));
        let members = [full.clone(), half.clone()];
        let picked: Vec<&str> = crate::policy::placement::candidates(&members, "me", 64, &[], 0)
            .iter()
            .map(|m| m.peer_id.as_str())
            .collect();
        assert_eq!(picked, [half.peer_id.as_str()]);
        assert_eq!((full.free_slots, half.free_slots), (0, 1));
        // Memory counts too: the half-full node has 1920 MiB under its cap.
        assert_eq!(half.mem_mib, 1920);
        assert!(crate::policy::placement::candidates(&members, "me", 1921, &[], 0).is_empty());
    }
}
