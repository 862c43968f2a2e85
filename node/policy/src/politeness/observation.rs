//! What the policy looks at: the machine's state at one instant, as the sources read it.
//! Everything the host might not tell is an `Option` (None = unknown), and the core says
//! what unknown means for each rule.

use std::time::Duration;

/// An explicit word about the owner, beating what the input devices say: the test hook
/// (`<dataDir>/owner-active`, `<dataDir>/owner-idle`) and the API override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSignal {
    /// The owner is using the machine now.
    Active,
    /// The owner has been away for a long time (longer than any idle rule).
    Idle,
}

/// Local wall-clock time, as `localtime_r` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// 0 = Sunday .. 6 = Saturday (`tm_wday`).
    pub weekday: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
}

/// The inputs of one decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Time since the owner's last input; None when the host has no input devices or
    /// terminals to tell (a server): the core then judges the owner by CPU load.
    pub owner_idle: Option<Duration>,
    /// None when the host reports no power supplies (a VM, a container): counts as mains.
    pub on_battery: Option<bool>,
    /// None when the local time is unknown: counts as inside every time window.
    pub local_time: Option<LocalTime>,
    /// The load of everything but NovaCron's VMs, 0.0-1.0 of the whole host, over the last
    /// sampling interval; None on the first sample (a load needs two readings).
    pub other_cpu_load: Option<f64>,
    /// Host memory (`MemTotal`); None when unknown: the last known total is used, or no
    /// memory cap if there never was one.
    pub mem_total_bytes: Option<u64>,
    /// `MemAvailable`: not part of the decision (the caps are shares of the total, as BOINC);
    /// carried for the daemon's admission of new VMs.
    pub mem_available_bytes: Option<u64>,
    /// The test hook / API override; beats `owner_idle` and the load.
    pub owner_override: Option<OwnerSignal>,
}
