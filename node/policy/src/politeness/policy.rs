//! The volunteer's rules: what the owner allows NovaCron to do on this machine. This is both
//! the `politeness:` section of the node's YAML (camelCase keys, unknown keys refused) and
//! the configuration of the sans-IO core.
//!
//! Every default is BOINC's (lib/prefs.cpp `GLOBAL_PREFS::defaults` and the defaults its
//! preference web form offers, summed up in /work/shared/data/mesh-models.toml
//! `[politeness]`); the comment on each field says which. Two knobs are NovaCron's own
//! (`ownerLoadPct`, the hysteresis times): BOINC has no equivalent.

use serde::Deserialize;

use super::policy_error::PolicyError;
use super::window::{DayWindows, TimeWindow};

/// The owner's rules. See docs/node.md "Politeness" for how they combine.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    /// The owner counts as idle once there has been no input (or, without input devices, no
    /// owner CPU load) for this many minutes. BOINC `idle_time_to_run` = 3.
    pub idle_time_to_run_min: u32,
    /// Whether VMs may run while the owner is active (with the busy memory cap). BOINC
    /// `run_if_user_active` = yes. `false` is the idle-only mode: VMs leave when the owner
    /// comes back and return after `idleTimeToRunMin` of idleness.
    pub run_while_in_use: bool,
    /// Memory VMs may use while the owner is active, percent of host memory. BOINC
    /// `ram_max_used_busy_frac` = 0.5.
    pub ram_max_used_busy_pct: u8,
    /// Memory VMs may use while the owner is idle, percent. BOINC `ram_max_used_idle_frac`
    /// = 0.9.
    pub ram_max_used_idle_pct: u8,
    /// The share of each CPU a VM may use, percent (enforced with the cgroup `cpu.max`).
    /// BOINC `cpu_usage_limit` = 100.
    pub cpu_usage_limit_pct: u8,
    /// The share of the host's CPUs VMs may use, percent (at least one CPU). BOINC
    /// `max_ncpus_pct` = 100 (its code stores 0 for "all", its form shows 100).
    pub max_cpus_pct: u8,
    /// Whether VMs may run while the machine is on battery. BOINC's preference form
    /// defaults "suspend when computer is on batteries" to yes, so this is false.
    pub run_on_batteries: bool,
    /// Suspend VMs while the load of everything but NovaCron is above this percent of the
    /// host; 0 = never. BOINC `suspend_cpu_usage` (off unless the owner sets it; its form
    /// suggests 25).
    pub suspend_cpu_usage_pct: u8,
    /// On a host without input devices (a server), the owner counts as active while the load
    /// of everything but NovaCron is at or above this percent; 0 = load never makes the owner
    /// active. NovaCron's own (BOINC would find such a host always idle); 25 is the figure
    /// BOINC's form suggests for `suspend_cpu_usage`.
    pub owner_load_pct: u8,
    /// The load must stay above a threshold this long before it counts (seconds).
    pub load_high_for_s: u32,
    /// ... and below `suspendCpuUsagePct` this long before VMs resume (seconds).
    pub load_low_for_s: u32,
    /// VMs run only from `startHour` to `endHour` (local time, whole hours 0-24; end before
    /// start wraps past midnight; equal = always). BOINC `start_hour` = `end_hour` = 0.
    pub start_hour: u8,
    pub end_hour: u8,
    /// Per weekday windows that replace the one above on that day (BOINC `day_prefs`).
    pub days: DayWindows,
    /// When VMs must stop in place, keep them paused in memory (resume at once) instead of
    /// snapshotting them to disk and stopping their VMM (frees the memory). BOINC
    /// `leave_apps_in_memory` = no.
    pub keep_in_memory: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            idle_time_to_run_min: 3,
            run_while_in_use: true,
            ram_max_used_busy_pct: 50,
            ram_max_used_idle_pct: 90,
            cpu_usage_limit_pct: 100,
            max_cpus_pct: 100,
            run_on_batteries: false,
            suspend_cpu_usage_pct: 0,
            owner_load_pct: 25,
            load_high_for_s: 10,
            load_low_for_s: 60,
            start_hour: 0,
            end_hour: 0,
            days: DayWindows::default(),
            keep_in_memory: false,
        }
    }
}

/// What the daemon does with a VM that must stop on this node and cannot (or need not) move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Park {
    /// Snapshot it to disk and stop its VMM; restore from the snapshot later.
    SnapshotAndStop,
    /// Pause its vCPUs and keep the VMM (and its memory) until it may run again.
    KeepPaused,
}

/// Largest `idleTimeToRunMin` (a day): more is almost certainly a unit mistake.
const MAX_IDLE_MIN: u32 = 24 * 60;
/// Largest hysteresis time (an hour).
const MAX_HYSTERESIS_S: u32 = 3600;

impl Policy {
    /// Checks every value; the error names the key, the value and the allowed range.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let pct = |key: &'static str, v: u8, min: u8| {
            if v < min || v > 100 {
                return Err(PolicyError {
                    key,
                    reason: format!("{v} is not a percentage from {min} to 100"),
                });
            }
            Ok(())
        };
        pct(
            "politeness.ramMaxUsedBusyPct",
            self.ram_max_used_busy_pct,
            0,
        )?;
        pct(
            "politeness.ramMaxUsedIdlePct",
            self.ram_max_used_idle_pct,
            1,
        )?;
        pct("politeness.cpuUsageLimitPct", self.cpu_usage_limit_pct, 1)?;
        pct("politeness.maxCpusPct", self.max_cpus_pct, 1)?;
        pct(
            "politeness.suspendCpuUsagePct",
            self.suspend_cpu_usage_pct,
            0,
        )?;
        pct("politeness.ownerLoadPct", self.owner_load_pct, 0)?;
        if self.ram_max_used_busy_pct > self.ram_max_used_idle_pct {
            return Err(PolicyError {
                key: "politeness.ramMaxUsedBusyPct",
                reason: format!(
                    "{} is above ramMaxUsedIdlePct ({}): VMs may not get more memory while \
                     the owner is active than while idle; lower it or raise the idle cap",
                    self.ram_max_used_busy_pct, self.ram_max_used_idle_pct
                ),
            });
        }
        if self.idle_time_to_run_min > MAX_IDLE_MIN {
            return Err(PolicyError {
                key: "politeness.idleTimeToRunMin",
                reason: format!(
                    "{} minutes is over a day ({MAX_IDLE_MIN}); the value is in minutes",
                    self.idle_time_to_run_min
                ),
            });
        }
        for (key, v) in [
            ("politeness.loadHighForS", self.load_high_for_s),
            ("politeness.loadLowForS", self.load_low_for_s),
        ] {
            if v > MAX_HYSTERESIS_S {
                return Err(PolicyError {
                    key,
                    reason: format!("{v} seconds is over the {MAX_HYSTERESIS_S}-second limit"),
                });
            }
        }
        TimeWindow::new(self.start_hour, self.end_hour)
            .check()
            .map_err(|(which, reason)| PolicyError {
                key: if which == 0 {
                    "politeness.startHour"
                } else {
                    "politeness.endHour"
                },
                reason,
            })?;
        self.days.check()
    }

    /// The window that applies on `weekday` (0 = Sunday, as `tm_wday`).
    pub fn window_on(&self, weekday: u8) -> TimeWindow {
        self.days
            .get(weekday)
            .unwrap_or(TimeWindow::new(self.start_hour, self.end_hour))
    }

    pub fn idle_time_to_run_ms(&self) -> u64 {
        u64::from(self.idle_time_to_run_min) * 60_000
    }

    /// How many of `host_cpus` VMs may use together: `maxCpusPct` of them, rounded down,
    /// at least one (as BOINC).
    pub fn usable_cpus(&self, host_cpus: u32) -> u32 {
        let n = u64::from(host_cpus) * u64::from(self.max_cpus_pct.min(100)) / 100;
        (n as u32).max(1)
    }

    /// The memory VMs may use, from the host's total: the busy or idle share.
    pub fn mem_cap_bytes(&self, mem_total_bytes: u64, owner_active: bool) -> u64 {
        let pct = if owner_active {
            self.ram_max_used_busy_pct
        } else {
            self.ram_max_used_idle_pct
        };
        (u128::from(mem_total_bytes) * u128::from(pct.min(100)) / 100) as u64
    }

    /// What to do with VMs that must stop in place.
    pub fn park(&self) -> Park {
        if self.keep_in_memory {
            Park::KeepPaused
        } else {
            Park::SnapshotAndStop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Policy, String> {
        serde_norway::from_str::<Policy>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_boincs() {
        let p = Policy::default();
        assert_eq!(p.idle_time_to_run_ms(), 180_000);
        assert!(p.run_while_in_use && !p.run_on_batteries && !p.keep_in_memory);
        assert_eq!((p.ram_max_used_busy_pct, p.ram_max_used_idle_pct), (50, 90));
        assert_eq!((p.cpu_usage_limit_pct, p.max_cpus_pct), (100, 100));
        assert_eq!(p.suspend_cpu_usage_pct, 0);
        assert!(p.window_on(3).is_always());
        assert_eq!(p.park(), Park::SnapshotAndStop);
        p.validate().unwrap();
        // An empty section is the defaults.
        assert_eq!(parse("{}").unwrap(), p);
    }

    #[test]
    fn every_key_parses_in_camel_case() {
        let p = parse(
            "idleTimeToRunMin: 10\nrunWhileInUse: false\nramMaxUsedBusyPct: 30\n\
             ramMaxUsedIdlePct: 80\ncpuUsageLimitPct: 60\nmaxCpusPct: 50\n\
             runOnBatteries: true\nsuspendCpuUsagePct: 25\nownerLoadPct: 40\n\
             loadHighForS: 5\nloadLowForS: 30\nstartHour: 22\nendHour: 7\n\
             days: {sat: {startHour: 0, endHour: 24}}\nkeepInMemory: true\n",
        )
        .unwrap();
        p.validate().unwrap();
        assert_eq!(p.idle_time_to_run_min, 10);
        assert!(!p.run_while_in_use && p.run_on_batteries && p.keep_in_memory);
        assert_eq!(p.cpu_usage_limit_pct, 60);
        assert_eq!(p.window_on(6), TimeWindow::new(0, 24));
        assert_eq!(p.window_on(1), TimeWindow::new(22, 7));
        assert_eq!(p.park(), Park::KeepPaused);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (yaml, needle) in [
            ("idleTimeToRun: 3\n", "idleTimeToRun"),
            ("ramMaxUsedBusyPct: 300\n", "ramMaxUsedBusyPct"),
            ("runOnBatteries: maybe\n", "runOnBatteries"),
            ("days: {funday: {startHour: 1}}\n", "funday"),
            ("days: {mon: {startHour: 1, end: 2}}\n", "end"),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
        for (yaml, key) in [
            ("ramMaxUsedBusyPct: 101\n", "ramMaxUsedBusyPct"),
            ("ramMaxUsedBusyPct: 95\n", "ramMaxUsedBusyPct"),
            (
                "ramMaxUsedIdlePct: 0\nramMaxUsedBusyPct: 0\n",
                "ramMaxUsedIdlePct",
            ),
            ("cpuUsageLimitPct: 0\n", "cpuUsageLimitPct"),
            ("maxCpusPct: 0\n", "maxCpusPct"),
            ("suspendCpuUsagePct: 101\n", "suspendCpuUsagePct"),
            ("idleTimeToRunMin: 100000\n", "idleTimeToRunMin"),
            ("loadLowForS: 7200\n", "loadLowForS"),
            ("startHour: 25\n", "startHour"),
            ("endHour: 30\n", "endHour"),
            (
                "days: {tue: {startHour: 9, endHour: 25}}\n",
                "days.tue.endHour",
            ),
        ] {
            let err = parse(yaml).unwrap().validate().unwrap_err();
            assert_eq!(err.key, format!("politeness.{key}"), "{yaml:?}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn caps_from_the_host() {
        let p = Policy::default();
        let gib = 1u64 << 30;
        assert_eq!(p.mem_cap_bytes(16 * gib, true), 8 * gib);
        assert_eq!(p.mem_cap_bytes(10 * gib, false), 9 * gib);
        assert_eq!(p.mem_cap_bytes(u64::MAX, false), u64::MAX / 100 * 90 + 13);
        let half = Policy {
            max_cpus_pct: 50,
            ..Policy::default()
        };
        assert_eq!(half.usable_cpus(8), 4);
        assert_eq!(half.usable_cpus(1), 1);
        assert_eq!(half.usable_cpus(0), 1);
        assert_eq!(p.usable_cpus(6), 6);
    }
}
