//! The politeness state machine: observations in, a decision out when it changes. Sans-IO:
//! time is the caller's milliseconds (any monotonic origin), nothing here reads the host.
//!
//! How the rules combine (docs/node.md "Politeness" says why):
//! 1. On battery (and `runOnBatteries` off): **Suspend**, whatever else holds; moving VMs
//!    away would spend the battery on the very work the rule forbids.
//! 2. Else the owner active in idle-only mode (`runWhileInUse: false`), or outside the time
//!    window: **Evacuate**; the condition lasts (minutes to hours), so the VMs are better off
//!    running on a peer than paused here.
//! 3. Else other programs' load above `suspendCpuUsagePct`: **Suspend**; pausing frees the
//!    CPU at once and such load is usually short.
//! 4. Else **Run** with the busy memory cap while the owner is active, the idle cap
//!    otherwise.
//!
//! Hysteresis: the owner counts as active at once and as idle only after
//! `idleTimeToRunMin` without input; a load counts as high after `loadHighForS` above its
//! threshold and (for `suspendCpuUsagePct`) as low again after `loadLowForS` below.
//! Battery and time window act at once: they change rarely and discretely.
//!
//! What it cannot do: it does not escalate a long suspension into an evacuation (a VM
//! suspended by CPU load for hours stays here; the daemon may move its snapshot), and a
//! changed policy needs a new `Politeness` (the hysteresis state restarts).

use std::time::Duration;

use super::decision::{Decision, Reason};
use super::observation::{Observation, OwnerSignal};
use super::policy::Policy;
use super::window::TimeWindow;
use novacron_model::PolitenessInfo;

const MIB: u64 = 1 << 20;

/// A boolean input that must hold for a while before the output follows it.
#[derive(Clone, Debug, Default)]
struct Gate {
    high: bool,
    /// When the input started to disagree with `high`.
    since: Option<Duration>,
}

impl Gate {
    /// Feeds one reading (None = unknown: nothing changes) and returns the output.
    fn update(
        &mut self,
        now: Duration,
        above: Option<bool>,
        rise: Duration,
        fall: Duration,
    ) -> bool {
        let Some(above) = above else {
            return self.high;
        };
        if above == self.high {
            self.since = None;
            return self.high;
        }
        let since = *self.since.get_or_insert(now);
        let needed = if above { rise } else { fall };
        if now.saturating_sub(since) >= needed {
            self.high = above;
            self.since = None;
        }
        self.high
    }

    fn reset(&mut self) {
        *self = Gate::default();
    }
}

/// What the last observation established (for the decision and the API).
#[derive(Clone, Debug, Default)]
struct Facts {
    /// Time since the owner's last activity, when known (None also for the idle override).
    owner_idle: Option<Duration>,
    owner_active: bool,
    on_battery: Option<bool>,
    /// The window that applied and whether the time was inside it.
    window: Option<(TimeWindow, bool)>,
    load_high: bool,
    mem_total_bytes: Option<u64>,
    /// `MemAvailable` of the last observation that had it (for admission).
    mem_available_bytes: Option<u64>,
}

/// The politeness policy of one node over time.
#[derive(Clone, Debug)]
pub struct Politeness {
    policy: Policy,
    current: Decision,
    facts: Facts,
    /// `suspendCpuUsagePct`.
    suspend_load: Gate,
    /// `ownerLoadPct`, for hosts without input devices.
    owner_load: Gate,
    /// The last observation at which the owner's load counted as high.
    owner_load_high_at: Option<Duration>,
}

impl Politeness {
    /// Starts in `Suspend { NotObserved }`: observe once before acting on `current()`.
    pub fn new(policy: Policy) -> Self {
        Politeness {
            policy,
            current: Decision::Suspend {
                reasons: vec![Reason::NotObserved],
            },
            facts: Facts::default(),
            suspend_load: Gate::default(),
            owner_load: Gate::default(),
            owner_load_high_at: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the machine was observed at least once (before that, it suspends).
    pub fn observed(&self) -> bool {
        !self.current.reasons().contains(&Reason::NotObserved)
    }

    /// The decision in force.
    #[cfg(test)]
    pub fn current(&self) -> &Decision {
        &self.current
    }

    /// Takes the machine's state at `now` (since the driver's epoch) and returns the new
    /// decision if it changed (the first observation always returns one).
    pub fn observe(&mut self, now: Duration, obs: &Observation) -> Option<Decision> {
        let first = self.current.reasons().contains(&Reason::NotObserved);
        self.facts = self.establish(now, obs);
        let next = decide(&self.policy, &self.facts);
        if first || next != self.current {
            self.current = next.clone();
            Some(next)
        } else {
            None
        }
    }

    fn establish(&mut self, now: Duration, obs: &Observation) -> Facts {
        let p = &self.policy;
        let load_high = Duration::from_secs(p.load_high_for_s.into());
        let load_low = Duration::from_secs(p.load_low_for_s.into());
        let idle_needed = Duration::from_millis(p.idle_time_to_run_ms());

        let (owner_idle, owner_active) = match (obs.owner_override, obs.owner_idle) {
            (Some(OwnerSignal::Active), _) => (Some(Duration::ZERO), true),
            (Some(OwnerSignal::Idle), _) => (None, false),
            (None, Some(idle)) => (Some(idle), idle < idle_needed),
            (None, None) => {
                // No input devices: the owner is whoever makes load that is not ours.
                let above = (p.owner_load_pct > 0)
                    .then(|| {
                        obs.other_cpu_load
                            .map(|l| l * 100.0 >= f64::from(p.owner_load_pct))
                    })
                    .flatten();
                if p.owner_load_pct == 0 {
                    self.owner_load.reset();
                }
                if self
                    .owner_load
                    .update(now, above, load_high, Duration::ZERO)
                {
                    self.owner_load_high_at = Some(now);
                }
                // Never seen busy: idle (a daemon restarted on a quiet server runs at once).
                let idle = self.owner_load_high_at.map(|t| now.saturating_sub(t));
                (idle, idle.is_some_and(|d| d < idle_needed))
            }
        };

        let window = obs.local_time.map(|t| {
            let w = p.window_on(t.weekday);
            (w, w.contains(t.hour, t.minute))
        });

        let load_is_high = if p.suspend_cpu_usage_pct == 0 {
            self.suspend_load.reset();
            false
        } else {
            let limit = f64::from(p.suspend_cpu_usage_pct);
            let above = obs.other_cpu_load.map(|l| l * 100.0 > limit);
            self.suspend_load.update(now, above, load_high, load_low)
        };

        Facts {
            owner_idle,
            owner_active,
            on_battery: obs.on_battery,
            window,
            load_high: load_is_high,
            mem_total_bytes: obs.mem_total_bytes.or(self.facts.mem_total_bytes),
            mem_available_bytes: obs.mem_available_bytes.or(self.facts.mem_available_bytes),
        }
    }

    /// The host's memory as last observed: (`MemTotal`, `MemAvailable`), each when known.
    pub fn memory(&self) -> (Option<u64>, Option<u64>) {
        (self.facts.mem_total_bytes, self.facts.mem_available_bytes)
    }

    /// The memory cap VMs run under now and its share of `MemTotal` (percent); None when
    /// the decision is not a run or the host's total was never known.
    pub fn mem_cap(&self) -> Option<(u64, u8)> {
        let Decision::Run { .. } = self.current else {
            return None;
        };
        let total = self.facts.mem_total_bytes?;
        let p = &self.policy;
        let pct = if self.facts.owner_active {
            p.ram_max_used_busy_pct
        } else {
            p.ram_max_used_idle_pct
        };
        Some((p.mem_cap_bytes(total, self.facts.owner_active), pct))
    }

    /// The decision and the facts behind it, for the API.
    pub fn info(&self) -> PolitenessInfo {
        let f = &self.facts;
        let (state, reasons, cpu, mem) = match &self.current {
            Decision::Run {
                cpu_cap_percent,
                mem_cap_bytes,
            } => {
                let mut reasons = Vec::new();
                if f.owner_active {
                    reasons.push(format!(
                        "the owner is using the machine: VMs get {}% of its memory",
                        self.policy.ram_max_used_busy_pct
                    ));
                }
                if *cpu_cap_percent < 100 {
                    reasons.push(format!("CPU use capped at {cpu_cap_percent}%"));
                }
                let state = if reasons.is_empty() {
                    "run"
                } else {
                    "throttled"
                };
                (state, reasons, *cpu_cap_percent, mem_cap_bytes / MIB)
            }
            other => (
                other.kind(),
                other.reasons().iter().map(ToString::to_string).collect(),
                0,
                0,
            ),
        };
        PolitenessInfo {
            state: state.to_string(),
            reasons,
            owner_idle_s: f.owner_idle.map(|d| d.as_secs()),
            on_battery: f.on_battery.unwrap_or(false),
            cpu_cap_percent: cpu,
            mem_cap_mib: mem,
            // The daemon knows whether its API set it.
            owner_override: Default::default(),
        }
    }
}

/// The rules of the module doc, applied to established facts.
fn decide(p: &Policy, f: &Facts) -> Decision {
    if f.on_battery == Some(true) && !p.run_on_batteries {
        let mut reasons = vec![Reason::OnBattery];
        reasons.extend(evacuate_reasons(p, f));
        reasons.extend(suspend_reasons(p, f));
        return Decision::Suspend { reasons };
    }
    let evacuate = evacuate_reasons(p, f);
    if !evacuate.is_empty() {
        let mut reasons = evacuate;
        reasons.extend(suspend_reasons(p, f));
        return Decision::Evacuate { reasons };
    }
    let suspend = suspend_reasons(p, f);
    if !suspend.is_empty() {
        return Decision::Suspend { reasons: suspend };
    }
    Decision::Run {
        cpu_cap_percent: p.cpu_usage_limit_pct,
        mem_cap_bytes: f
            .mem_total_bytes
            .map_or(u64::MAX, |total| p.mem_cap_bytes(total, f.owner_active)),
    }
}

fn evacuate_reasons(p: &Policy, f: &Facts) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if f.owner_active && !p.run_while_in_use {
        reasons.push(Reason::OwnerActive);
    }
    if let Some((w, false)) = f.window {
        reasons.push(Reason::OutsideTimeWindow {
            start_hour: w.start_hour,
            end_hour: w.end_hour,
        });
    }
    reasons
}

fn suspend_reasons(p: &Policy, f: &Facts) -> Vec<Reason> {
    if f.load_high {
        vec![Reason::CpuLoad {
            limit_pct: p.suspend_cpu_usage_pct,
        }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::observation::LocalTime;
    use super::super::window::DayWindows;
    use super::*;

    const GIB: u64 = 1 << 30;
    const S: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);

    /// A desktop on mains at Wednesday noon with 16 GiB, idle for `idle_s`.
    fn desktop(idle_s: u64) -> Observation {
        Observation {
            owner_idle: Some(Duration::from_secs(idle_s)),
            on_battery: Some(false),
            local_time: Some(LocalTime {
                weekday: 3,
                hour: 12,
                minute: 0,
            }),
            other_cpu_load: Some(0.0),
            mem_total_bytes: Some(16 * GIB),
            mem_available_bytes: Some(12 * GIB),
            owner_override: None,
        }
    }

    /// A server: no input devices, the given load of other programs.
    fn server(load: f64) -> Observation {
        Observation {
            owner_idle: None,
            on_battery: None,
            other_cpu_load: Some(load),
            ..desktop(0)
        }
    }

    fn at(weekday: u8, hour: u8, minute: u8) -> Observation {
        Observation {
            local_time: Some(LocalTime {
                weekday,
                hour,
                minute,
            }),
            ..desktop(3600)
        }
    }

    fn idle_only() -> Policy {
        Policy {
            run_while_in_use: false,
            ..Policy::default()
        }
    }

    fn run(mem_pct: u64) -> Decision {
        Decision::Run {
            cpu_cap_percent: 100,
            mem_cap_bytes: 16 * GIB * mem_pct / 100,
        }
    }

    fn evacuate(reasons: &[Reason]) -> Decision {
        Decision::Evacuate {
            reasons: reasons.to_vec(),
        }
    }

    fn suspend(reasons: &[Reason]) -> Decision {
        Decision::Suspend {
            reasons: reasons.to_vec(),
        }
    }

    #[test]
    fn idle_only_runs_after_three_idle_minutes_and_evacuates_when_the_owner_returns() {
        let mut p = Politeness::new(idle_only());
        assert_eq!(p.current().reasons(), &[Reason::NotObserved]);
        // The owner typed 10 s ago.
        assert_eq!(
            p.observe(Duration::ZERO, &desktop(10)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
        assert_eq!(p.observe(60 * S, &desktop(70)), None);
        assert_eq!(p.observe(169 * S, &desktop(179)), None);
        assert_eq!(p.observe(170 * S, &desktop(180)), Some(run(90)));
        assert_eq!(p.info().state, "run");
        assert_eq!(p.observe(10 * MIN, &desktop(580)), None);
        // The owner comes back: at once.
        assert_eq!(
            p.observe(10 * MIN + S, &desktop(0)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
        let info = p.info();
        assert_eq!(info.state, "evacuate");
        assert_eq!(info.reasons, vec!["the owner is using the machine"]);
        assert_eq!((info.cpu_cap_percent, info.mem_cap_mib), (0, 0));
        assert_eq!(info.owner_idle_s, Some(0));
    }

    #[test]
    fn by_default_vms_run_while_in_use_with_the_busy_memory_cap() {
        let mut p = Politeness::new(Policy::default());
        assert_eq!(p.observe(Duration::ZERO, &desktop(5)), Some(run(50)));
        let info = p.info();
        assert_eq!(info.state, "throttled");
        assert_eq!(info.mem_cap_mib, 16 * 1024 / 2);
        assert_eq!(info.cpu_cap_percent, 100);
        assert!(info.reasons[0].contains("50%"), "{:?}", info.reasons);
        assert_eq!(p.observe(100 * S, &desktop(105)), None);
        assert_eq!(p.observe(200 * S, &desktop(205)), Some(run(90)));
        assert_eq!(p.info().state, "run");
        assert!(p.info().reasons.is_empty());
        assert_eq!(p.observe(201 * S, &desktop(0)), Some(run(50)));
    }

    #[test]
    fn the_first_observation_always_answers_even_if_it_suspends() {
        let mut p = Politeness::new(Policy::default());
        let obs = Observation {
            on_battery: Some(true),
            ..desktop(600)
        };
        assert_eq!(
            p.observe(Duration::ZERO, &obs),
            Some(suspend(&[Reason::OnBattery]))
        );
        assert_eq!(p.observe(S, &obs), None);
    }

    #[test]
    fn battery_suspends_at_once_and_mains_resumes_at_once() {
        let mut p = Politeness::new(Policy::default());
        let battery = |idle| Observation {
            on_battery: Some(true),
            ..desktop(idle)
        };
        assert_eq!(p.observe(Duration::ZERO, &desktop(600)), Some(run(90)));
        assert_eq!(
            p.observe(S, &battery(601)),
            Some(suspend(&[Reason::OnBattery]))
        );
        assert_eq!(p.info().state, "suspended");
        assert!(p.info().on_battery);
        assert_eq!(p.observe(2 * S, &desktop(602)), Some(run(90)));

        // Unknown power (a VM, a container) counts as mains.
        let unknown = Observation {
            on_battery: None,
            ..desktop(600)
        };
        assert_eq!(p.observe(3 * S, &unknown), None);

        // Allowed on batteries: nothing changes.
        let mut p = Politeness::new(Policy {
            run_on_batteries: true,
            ..Policy::default()
        });
        assert_eq!(p.observe(Duration::ZERO, &battery(600)), Some(run(90)));
        assert_eq!(p.observe(S, &desktop(601)), None);
    }

    #[test]
    fn battery_beats_evacuation_and_evacuation_beats_cpu_load() {
        let mut p = Politeness::new(Policy {
            suspend_cpu_usage_pct: 25,
            load_high_for_s: 0,
            ..idle_only()
        });
        let busy = Observation {
            other_cpu_load: Some(0.9),
            ..desktop(1)
        };
        let all = [Reason::OwnerActive, Reason::CpuLoad { limit_pct: 25 }];
        assert_eq!(p.observe(Duration::ZERO, &busy), Some(evacuate(&all)));
        let on_battery = Observation {
            on_battery: Some(true),
            ..busy.clone()
        };
        let mut with_battery = vec![Reason::OnBattery];
        with_battery.extend(all);
        assert_eq!(p.observe(S, &on_battery), Some(suspend(&with_battery)));
        // The owner leaves but the load stays: suspend for the load alone.
        let owner_gone = Observation {
            owner_idle: Some(Duration::from_secs(3600)),
            ..busy
        };
        assert_eq!(
            p.observe(2 * S, &owner_gone),
            Some(suspend(&[Reason::CpuLoad { limit_pct: 25 }]))
        );
    }

    #[test]
    fn time_window_evacuates_outside_and_wraps_past_midnight() {
        let mut p = Politeness::new(Policy {
            start_hour: 22,
            end_hour: 7,
            ..Policy::default()
        });
        let outside = evacuate(&[Reason::OutsideTimeWindow {
            start_hour: 22,
            end_hour: 7,
        }]);
        assert_eq!(
            p.observe(Duration::ZERO, &at(3, 21, 59)),
            Some(outside.clone())
        );
        assert!(p.info().reasons[0].contains("22:00-7:00"));
        assert_eq!(p.observe(MIN, &at(3, 22, 0)), Some(run(90)));
        assert_eq!(p.observe(2 * MIN, &at(3, 23, 59)), None);
        assert_eq!(p.observe(3 * MIN, &at(4, 0, 0)), None);
        assert_eq!(p.observe(4 * MIN, &at(4, 6, 59)), None);
        assert_eq!(p.observe(5 * MIN, &at(4, 7, 0)), Some(outside));
        // Unknown local time counts as inside.
        let unknown = Observation {
            local_time: None,
            ..at(4, 7, 0)
        };
        assert_eq!(p.observe(6 * MIN, &unknown), Some(run(90)));
    }

    #[test]
    fn weekday_windows_replace_the_everyday_one() {
        let mut p = Politeness::new(Policy {
            start_hour: 18,
            end_hour: 8,
            days: DayWindows {
                sat: Some(TimeWindow::new(0, 24)),
                sun: Some(TimeWindow::new(24, 0)),
                ..DayWindows::default()
            },
            ..Policy::default()
        });
        assert_eq!(p.observe(Duration::ZERO, &at(6, 12, 0)), Some(run(90)));
        assert_eq!(
            p.observe(MIN, &at(0, 12, 0)),
            Some(evacuate(&[Reason::OutsideTimeWindow {
                start_hour: 24,
                end_hour: 0
            }]))
        );
        assert_eq!(p.observe(2 * MIN, &at(0, 23, 0)), None);
        assert_eq!(
            p.observe(3 * MIN, &at(1, 12, 0)),
            Some(evacuate(&[Reason::OutsideTimeWindow {
                start_hour: 18,
                end_hour: 8
            }]))
        );
        assert_eq!(p.observe(4 * MIN, &at(1, 19, 0)), Some(run(90)));
    }

    #[test]
    fn cpu_load_needs_ten_seconds_above_and_a_minute_below() {
        let mut p = Politeness::new(Policy {
            suspend_cpu_usage_pct: 25,
            ..Policy::default()
        });
        let load = |l| Observation {
            other_cpu_load: Some(l),
            ..desktop(3600)
        };
        let cpu = suspend(&[Reason::CpuLoad { limit_pct: 25 }]);
        assert_eq!(p.observe(Duration::ZERO, &load(0.1)), Some(run(90)));
        // A 5-second spike does nothing.
        for t in 1..=5 {
            assert_eq!(p.observe(t * S, &load(0.9)), None);
        }
        assert_eq!(p.observe(6 * S, &load(0.2)), None);
        // Exactly the limit is not above it (as BOINC).
        assert_eq!(p.observe(7 * S, &load(0.25)), None);
        // Ten seconds above: suspend.
        for t in 10..20 {
            assert_eq!(p.observe(t * S, &load(0.5)), None, "t={t}");
        }
        assert_eq!(p.observe(20 * S, &load(0.5)), Some(cpu.clone()));
        // Unknown load keeps the state.
        let unknown = Observation {
            other_cpu_load: None,
            ..load(0.0)
        };
        assert_eq!(p.observe(21 * S, &unknown), None);
        // A short dip does not resume; the minute restarts after it.
        assert_eq!(p.observe(30 * S, &load(0.1)), None);
        assert_eq!(p.observe(31 * S, &load(0.6)), None);
        for t in 32..92 {
            assert_eq!(p.observe(t * S, &load(0.1)), None, "t={t}");
        }
        assert_eq!(p.observe(92 * S, &load(0.1)), Some(run(90)));
    }

    #[test]
    fn a_server_without_input_judges_the_owner_by_load() {
        let mut p = Politeness::new(idle_only());
        // Never seen busy: idle at once.
        assert_eq!(p.observe(Duration::ZERO, &server(0.1)), Some(run(90)));
        assert_eq!(p.info().owner_idle_s, None);
        // Busy for 10 s: the owner is active.
        for t in 1..11 {
            assert_eq!(p.observe(t * S, &server(0.5)), None, "t={t}");
        }
        assert_eq!(
            p.observe(11 * S, &server(0.5)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
        // Quiet again: idle counts from the last busy reading, 3 minutes to run.
        assert_eq!(p.observe(12 * S, &server(0.05)), None);
        assert_eq!(p.info().owner_idle_s, Some(1));
        assert_eq!(
            p.observe(11 * S + 3 * MIN - Duration::from_millis(1), &server(0.05)),
            None
        );
        assert_eq!(p.observe(11 * S + 3 * MIN, &server(0.05)), Some(run(90)));
        // ownerLoadPct 0: load never makes the owner active.
        let mut p = Politeness::new(Policy {
            owner_load_pct: 0,
            load_high_for_s: 0,
            ..idle_only()
        });
        assert_eq!(p.observe(Duration::ZERO, &server(1.0)), Some(run(90)));
        assert_eq!(p.observe(MIN, &server(1.0)), None);
    }

    #[test]
    fn the_owner_override_beats_the_devices() {
        let mut p = Politeness::new(idle_only());
        let with = |signal, idle| Observation {
            owner_override: Some(signal),
            ..desktop(idle)
        };
        assert_eq!(
            p.observe(Duration::ZERO, &with(OwnerSignal::Active, 3600)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
        assert_eq!(p.observe(S, &with(OwnerSignal::Idle, 0)), Some(run(90)));
        assert_eq!(p.info().owner_idle_s, None);
        assert_eq!(
            p.observe(2 * S, &desktop(0)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
        // Active works even when idleTimeToRunMin is 0.
        let mut p = Politeness::new(Policy {
            idle_time_to_run_min: 0,
            ..idle_only()
        });
        assert_eq!(p.observe(Duration::ZERO, &desktop(0)), Some(run(90)));
        assert_eq!(
            p.observe(S, &with(OwnerSignal::Active, 0)),
            Some(evacuate(&[Reason::OwnerActive]))
        );
    }

    #[test]
    fn memory_caps_follow_the_known_total() {
        let mut p = Politeness::new(Policy {
            cpu_usage_limit_pct: 60,
            ..Policy::default()
        });
        let mem = |total| Observation {
            mem_total_bytes: total,
            ..desktop(3600)
        };
        let capped = |bytes| Decision::Run {
            cpu_cap_percent: 60,
            mem_cap_bytes: bytes,
        };
        assert_eq!(
            p.observe(Duration::ZERO, &mem(None)),
            Some(capped(u64::MAX))
        );
        assert_eq!(p.observe(S, &mem(Some(10 * GIB))), Some(capped(9 * GIB)));
        assert_eq!(p.observe(2 * S, &mem(None)), None);
        let info = p.info();
        assert_eq!(info.state, "throttled");
        assert_eq!((info.cpu_cap_percent, info.mem_cap_mib), (60, 9 * 1024));
        assert_eq!(
            p.observe(
                3 * S,
                &Observation {
                    owner_idle: Some(Duration::ZERO),
                    ..mem(None)
                }
            ),
            Some(capped(5 * GIB))
        );
    }

    #[test]
    fn admission_reads_the_cap_in_force_and_the_last_known_memory() {
        let mut p = Politeness::new(Policy::default());
        assert_eq!(p.mem_cap(), None, "not observed yet");
        p.observe(Duration::ZERO, &desktop(3600));
        assert_eq!(p.mem_cap(), Some((16 * GIB * 9 / 10, 90)));
        assert_eq!(p.memory(), (Some(16 * GIB), Some(12 * GIB)));
        p.observe(S, &desktop(0));
        assert_eq!(p.mem_cap(), Some((8 * GIB, 50)));
        // A reading without memory keeps the last known figures.
        let blind = Observation {
            mem_total_bytes: None,
            mem_available_bytes: None,
            ..desktop(0)
        };
        p.observe(2 * S, &blind);
        assert_eq!(p.memory(), (Some(16 * GIB), Some(12 * GIB)));
        // No run, no cap.
        let mut p = Politeness::new(idle_only());
        p.observe(Duration::ZERO, &desktop(0));
        assert_eq!(p.mem_cap(), None);
    }

    #[test]
    fn time_going_backwards_does_not_break_it() {
        let mut p = Politeness::new(Policy {
            suspend_cpu_usage_pct: 10,
            ..idle_only()
        });
        p.observe(100 * S, &server(0.9));
        p.observe(5 * S, &server(0.9));
        p.observe(Duration::ZERO, &server(0.0));
        p.observe(Duration::MAX, &server(0.9));
        p.observe(Duration::ZERO, &desktop(u64::MAX));
        assert!(!p.current().reasons().contains(&Reason::NotObserved));
    }
}
