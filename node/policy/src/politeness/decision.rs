//! What the policy tells the daemon to do with the VMs of this node.

use std::fmt;

/// Why VMs may not run here now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The owner is using the machine (input, the owner-active hook, or owner CPU load on a
    /// host without input devices) and the policy runs VMs only while idle.
    OwnerActive,
    /// On battery and `runOnBatteries` is off.
    OnBattery,
    /// Outside the hours the owner allows (`startHour`/`endHour`, `days`).
    OutsideTimeWindow { start_hour: u8, end_hour: u8 },
    /// The load of everything but NovaCron is above `suspendCpuUsagePct`.
    CpuLoad { limit_pct: u8 },
    /// No observation yet: the daemon must observe once before it acts.
    NotObserved,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::OwnerActive => write!(f, "the owner is using the machine"),
            Reason::OnBattery => write!(f, "on battery"),
            Reason::OutsideTimeWindow {
                start_hour,
                end_hour,
            } => write!(
                f,
                "outside the time window ({start_hour}:00-{end_hour}:00 local time)"
            ),
            Reason::CpuLoad { limit_pct } => {
                write!(f, "other programs use more than {limit_pct}% of the CPU")
            }
            Reason::NotObserved => write!(f, "the machine has not been observed yet"),
        }
    }
}

/// What VMs may do on this node now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// VMs may run within these caps. The daemon writes `cpu_cap_percent` into each VMM's
    /// cgroup (`cpu_cap::cpu_max`) and moves VMs away (as for `Evacuate`) until the memory
    /// of its VMs fits `mem_cap_bytes`; the cap drops from the idle to the busy share the
    /// moment the owner comes back.
    Run {
        /// The share of each CPU a VM may use.
        cpu_cap_percent: u8,
        /// All VMs together (`u64::MAX` when the host memory was never known).
        mem_cap_bytes: u64,
    },
    /// The owner needs the machine for a while: VMs move to peers by their migration policy
    /// (live, then warm); one no peer takes is parked in place (`Policy::park`).
    Evacuate { reasons: Vec<Reason> },
    /// Nothing may run for now, and moving would cost what the rule protects (battery) or
    /// the condition is short (CPU load): VMs are parked in place, not migrated.
    Suspend { reasons: Vec<Reason> },
}

impl Decision {
    /// `run`, `evacuate` or `suspended` (the API adds `throttled` for a capped run).
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Run { .. } => "run",
            Decision::Evacuate { .. } => "evacuate",
            Decision::Suspend { .. } => "suspended",
        }
    }

    pub fn reasons(&self) -> &[Reason] {
        match self {
            Decision::Run { .. } => &[],
            Decision::Evacuate { reasons } | Decision::Suspend { reasons } => reasons,
        }
    }
}
