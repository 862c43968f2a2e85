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

/// How far a measured figure must move from the one told last before the cell is told the
/// new one: every value a member changes is a new version that each member's chitchat copies
/// and sends, and figures that wobble (the load average, the host's available memory) made
/// most gossip rounds of a 200-member cell carry a change that changed no placement.
#[derive(Clone, Copy, Debug)]
pub struct TellStep {
    /// The smallest move told.
    pub min: u64,
    /// A move of at least the told figure divided by this is told too (0: none).
    pub divisor: u64,
}

/// The load, per mille of a CPU: a tenth of a CPU, or a quarter of the told load.
pub const LOAD_STEP: TellStep = TellStep {
    min: 100,
    divisor: 4,
};

/// The host's available memory: 64 MiB. Memory the node's own VMs hold is not behind this
/// step: the accounting subtracts it exactly.
pub const AVAILABLE_MEMORY_STEP: TellStep = TellStep {
    min: 64 << 20,
    divisor: 0,
};

/// The figure to tell, given the one told last (None: nothing yet) and the one measured now:
/// the measured one when it moved far enough (`step`), else the told one.
pub fn figure_to_tell(told: Option<u64>, measured: u64, step: TellStep) -> u64 {
    let Some(told) = told else {
        return measured;
    };
    let relative = told.checked_div(step.divisor).unwrap_or(0);
    if measured.abs_diff(told) >= step.min.max(relative) {
        measured
    } else {
        told
    }
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
    fn a_figure_is_told_again_only_when_it_moved_a_step() {
        let load = |told: Option<u64>, measured| figure_to_tell(told, measured, LOAD_STEP);
        assert_eq!(load(None, 37), 37, "the first is told as measured");
        assert_eq!(load(Some(300), 399), 300);
        assert_eq!(load(Some(300), 201), 300);
        assert_eq!(load(Some(300), 400), 400);
        assert_eq!(load(Some(300), 200), 200);
        // A high load moves by a quarter of itself.
        assert_eq!(load(Some(2000), 2400), 2000);
        assert_eq!(load(Some(2000), 2500), 2500);
        assert_eq!(load(Some(2000), 1500), 1500);
        // A wobble around one figure is told once.
        let mut told = None;
        let mut changes = 0;
        for measured in [500u64, 540, 470, 520, 455, 545, 500] {
            let next = load(told, measured);
            changes += usize::from(told != Some(next));
            told = Some(next);
        }
        assert_eq!((told, changes), (Some(500), 1));
        // Memory moves by an absolute step, whatever its size.
        let mib = 1u64 << 20;
        let mem = |told, measured| figure_to_tell(Some(told), measured, AVAILABLE_MEMORY_STEP);
        assert_eq!(mem(21_483 * mib, 21_484 * mib), 21_483 * mib);
        assert_eq!(mem(21_483 * mib, 21_419 * mib), 21_419 * mib);
        assert_eq!(mem(100 * mib, 37 * mib), 100 * mib);
        assert_eq!(mem(100 * mib, 36 * mib), 36 * mib);
    }

    #[test]
    fn auto_placement_skips_a_node_whose_vms_take_its_slots() {
        use novacron_mesh::identity::NodeIdentity;
        let node = |held: Load| {
            let info = super::super::cell::member_info(&offer(&host(held), 0), Vec::new());
            let peer = NodeIdentity::generate().unwrap().peer_id();
            super::super::cell::member_status(&peer, true, true, &info)
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
