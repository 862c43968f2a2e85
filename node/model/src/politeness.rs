//! What the owner's politeness policy lets the node do, and the owner's own word.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the politeness policy lets the node do now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PolitenessInfo {
    /// run, throttled, evacuate, suspended.
    pub state: String,
    /// Why (owner active, on battery, outside the time window, ...).
    pub reasons: Vec<String>,
    /// Seconds since the owner's last input or activity, when known.
    pub owner_idle_s: Option<u64>,
    pub on_battery: bool,
    /// The share of each CPU VMs may use, percent.
    pub cpu_cap_percent: u8,
    /// The memory VMs may use now, MiB.
    pub mem_cap_mib: u64,
    /// What the owner override says (`POST /api/v1/politeness/owner`): `auto` when none is
    /// set (the hook files, then the devices, judge the owner).
    #[serde(default)]
    pub owner_override: OwnerSetting,
}

/// The volunteer's word about themselves, beating the hook files and the devices.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSetting {
    /// "I'm using the machine": VMs get the busy memory cap, or leave in idle-only mode.
    Active,
    /// "I'm away": the owner counts as idle at once, whatever the devices say.
    Idle,
    /// No override: the hook files, then the devices and load, judge the owner.
    #[default]
    Auto,
}

impl OwnerSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerSetting::Active => "active",
            OwnerSetting::Idle => "idle",
            OwnerSetting::Auto => "auto",
        }
    }
}
