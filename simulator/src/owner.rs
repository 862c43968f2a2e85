//! The volunteer at the keyboard: while a host is up, its owner alternates sessions at the
//! machine and time away, and the node's own politeness state machine
//! ([`novacron_policy::politeness::Politeness`], with the scenario's policy in the node's
//! config keys) decides from what the daemon would observe whether VMs may run, with which
//! caps, or must leave.
//!
//! The daemon observes the host every few seconds; the model observes it where the
//! decision can change: when the owner comes or goes, when the owner has been away
//! `idleTimeToRunMin`, and at each local full hour when the policy has time windows (each
//! host has a UTC offset; the run starts on a Monday at 00:00 UTC). A host comes up with
//! its owner at it (someone turned it on). Hosts that are not desktops have no input
//! devices and no load but ours: their owner is never active.

use std::time::Duration;

use novacron_policy::politeness::observation::{LocalTime, Observation};
use novacron_policy::politeness::{Decision, Policy, Politeness};

use crate::rng::SimRng;
use crate::scenario::OwnerSection;
use crate::time::{SimDuration, SimTime};

const HOUR_US: u64 = 3_600_000_000;

/// What the owner of one host is doing, and what the node decided.
#[derive(Clone, Debug)]
pub struct OwnerState {
    politeness: Politeness,
    desktop: bool,
    active: bool,
    /// When the owner last left the machine.
    away_since: SimTime,
    utc_offset_h: i8,
    /// The decision in force since `last_at`, and whether the owner was at the machine.
    running: bool,
    evacuating: bool,
    last_at: SimTime,
}

/// Time and transitions over all hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnerTotals {
    /// Up time, and of it: VMs may run; may run with the owner at the machine; must leave.
    pub up_us: u128,
    pub run_us: u128,
    pub run_owner_active_us: u128,
    pub evacuate_us: u128,
    /// Decisions that turned to `Evacuate`, and owners who came back while VMs ran.
    pub evacuations: u64,
    pub owner_returns_while_running: u64,
    pub observations: u64,
}

/// What to schedule after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Next {
    /// The owner's next arrival or departure.
    pub toggle_at: SimTime,
    /// The next instant the decision may change without the owner moving.
    pub observe_at: Option<SimTime>,
}

/// The owner model of a run.
#[derive(Clone, Debug)]
pub struct Owners {
    policy: Policy,
    desktop_fraction: f64,
    session_mean_us: f64,
    away_mean_us: f64,
    windows: bool,
}

impl Owners {
    pub fn from_section(section: &OwnerSection) -> Owners {
        let p = &section.politeness;
        Owners {
            policy: p.clone(),
            desktop_fraction: section.desktop_fraction,
            session_mean_us: section.session_mean_min * 60e6,
            away_mean_us: section.away_mean_min * 60e6,
            windows: p.start_hour != p.end_hour || p.days != Default::default(),
        }
    }

    fn idle_needed(&self) -> SimDuration {
        SimDuration(self.policy.idle_time_to_run_ms() * 1_000)
    }

    /// The host came up at `now`, its owner at it.
    pub fn arrive(
        &self,
        now: SimTime,
        rng: &mut SimRng,
        totals: &mut OwnerTotals,
    ) -> (OwnerState, Next) {
        let desktop = rng.chance(self.desktop_fraction);
        let mut st = OwnerState {
            politeness: Politeness::new(self.policy.clone()),
            desktop,
            active: desktop,
            away_since: now,
            utc_offset_h: (rng.below(24) as i8) - 11,
            running: false,
            evacuating: false,
            last_at: now,
        };
        self.observe(&mut st, now, totals);
        let next = Next {
            toggle_at: now + self.stay(desktop, true, rng),
            observe_at: self.next_look(&st, now),
        };
        (st, next)
    }

    /// How long the owner stays at the machine (`active`) or away.
    fn stay(&self, desktop: bool, active: bool, rng: &mut SimRng) -> SimDuration {
        if !desktop {
            // No owner at all: nothing changes until the host leaves.
            return SimDuration(u64::MAX / 4);
        }
        let mean = if active {
            self.session_mean_us
        } else {
            self.away_mean_us
        };
        SimDuration(rng.exponential(1.0 / mean).max(1.0) as u64)
    }

    /// The owner comes or goes at `now`.
    pub fn toggle(
        &self,
        st: &mut OwnerState,
        now: SimTime,
        rng: &mut SimRng,
        totals: &mut OwnerTotals,
    ) -> Next {
        self.account(st, now, totals);
        st.active = !st.active;
        if st.active && st.running {
            totals.owner_returns_while_running += 1;
        }
        if !st.active {
            st.away_since = now;
        }
        self.observe(st, now, totals);
        Next {
            toggle_at: now + self.stay(st.desktop, st.active, rng),
            observe_at: self.next_look(st, now),
        }
    }

    /// A scheduled look at the host: returns the next one.
    pub fn tick(
        &self,
        st: &mut OwnerState,
        now: SimTime,
        totals: &mut OwnerTotals,
    ) -> Option<SimTime> {
        self.account(st, now, totals);
        self.observe(st, now, totals);
        self.next_look(st, now)
    }

    /// After `now`, the first instant the decision may change with the owner staying put:
    /// the owner has been away `idleTimeToRunMin`, or (with time windows) a full hour.
    fn next_look(&self, st: &OwnerState, now: SimTime) -> Option<SimTime> {
        // (A host without an owner has no idle time to wait for.)
        let idle_at = (st.desktop && !st.active && now.since(st.away_since) < self.idle_needed())
            .then(|| st.away_since + self.idle_needed());
        // Offsets are whole hours: local full hours are UTC full hours.
        let hour_at = self
            .windows
            .then(|| SimTime((now.0 / HOUR_US + 1) * HOUR_US));
        match (idle_at, hour_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The host goes down at `now`.
    pub fn leave(&self, st: &mut OwnerState, now: SimTime, totals: &mut OwnerTotals) {
        self.account(st, now, totals);
    }

    fn account(&self, st: &mut OwnerState, now: SimTime, totals: &mut OwnerTotals) {
        let span = u128::from(now.since(st.last_at).0);
        totals.up_us += span;
        if st.running {
            totals.run_us += span;
            if st.active {
                totals.run_owner_active_us += span;
            }
        }
        if st.evacuating {
            totals.evacuate_us += span;
        }
        st.last_at = now;
    }

    fn observe(&self, st: &mut OwnerState, now: SimTime, totals: &mut OwnerTotals) {
        totals.observations += 1;
        let obs = Observation {
            owner_idle: st.desktop.then(|| {
                if st.active {
                    Duration::ZERO
                } else {
                    Duration::from_micros(now.since(st.away_since).0)
                }
            }),
            on_battery: None,
            local_time: Some(local_time(now, st.utc_offset_h)),
            other_cpu_load: Some(0.0),
            mem_total_bytes: None,
            mem_available_bytes: None,
            owner_override: None,
        };
        if let Some(decision) = st.politeness.observe(Duration::from_micros(now.0), &obs) {
            let evacuating = matches!(decision, Decision::Evacuate { .. });
            if evacuating && !st.evacuating {
                totals.evacuations += 1;
            }
            st.evacuating = evacuating;
            st.running = matches!(decision, Decision::Run { .. });
        }
    }
}

/// Local time at `now` for a host `offset_h` hours from UTC; the run starts Monday 00:00 UTC.
fn local_time(now: SimTime, offset_h: i8) -> LocalTime {
    let hours = (now.0 / HOUR_US) as i64 + i64::from(offset_h) + 24 * 7;
    let minute = ((now.0 % HOUR_US) / 60_000_000) as u8;
    LocalTime {
        // 0 = Sunday: Monday is 1.
        weekday: ((hours / 24 + 1) % 7) as u8,
        hour: (hours % 24) as u8,
        minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::OwnerSection;

    fn owners(desktops: f64, policy: Policy) -> Owners {
        Owners::from_section(&OwnerSection {
            desktop_fraction: desktops,
            session_mean_min: 60.0,
            away_mean_min: 180.0,
            politeness: policy,
        })
    }

    fn idle_only() -> Policy {
        Policy {
            run_while_in_use: false,
            ..Policy::default()
        }
    }

    const MIN: u64 = 60_000_000;

    #[test]
    fn vms_run_after_the_idle_time_and_leave_when_the_owner_comes_back() {
        let model = owners(1.0, idle_only());
        let mut totals = OwnerTotals::default();
        let mut rng = SimRng::new(1);
        let (mut st, first) = model.arrive(SimTime::ZERO, &mut rng, &mut totals);
        // Turned on by its owner: in idle-only mode VMs may not run.
        assert!(st.evacuating && !st.running);
        assert_eq!(first.observe_at, None);
        let away = SimTime(10 * MIN);
        let next = model.toggle(&mut st, away, &mut rng, &mut totals);
        assert!(!st.running, "runs before the owner was away 3 minutes");
        assert_eq!(next.observe_at, Some(SimTime(13 * MIN)));
        let look = model.tick(&mut st, SimTime(13 * MIN), &mut totals);
        assert!(st.running && !st.evacuating);
        assert_eq!(look, None);
        model.toggle(&mut st, SimTime(40 * MIN), &mut rng, &mut totals);
        assert!(st.evacuating && !st.running);
        model.leave(&mut st, SimTime(50 * MIN), &mut totals);
        assert_eq!(totals.evacuations, 2);
        assert_eq!(totals.owner_returns_while_running, 1);
        assert_eq!(totals.up_us, u128::from(50 * MIN));
        assert_eq!(totals.run_us, u128::from(27 * MIN));
        // Until the owner has been away 3 minutes, VMs still must leave.
        assert_eq!(totals.evacuate_us, u128::from(23 * MIN));
    }

    /// Drives one host for `hours` (never down), as the overlay does.
    fn run_host(model: &Owners, seed: u64, hours: u64, totals: &mut OwnerTotals) {
        let mut rng = SimRng::new(seed);
        let end = SimTime(hours * 60 * MIN);
        let (mut st, mut next) = model.arrive(SimTime::ZERO, &mut rng, totals);
        loop {
            let look = next.observe_at.filter(|&at| at < next.toggle_at);
            match look {
                Some(at) if at < end => {
                    next.observe_at = model.tick(&mut st, at, totals);
                }
                _ if next.toggle_at < end => {
                    next = model.toggle(&mut st, next.toggle_at, &mut rng, totals);
                }
                _ => break,
            }
        }
        model.leave(&mut st, end, totals);
    }

    #[test]
    fn over_a_long_run_vms_get_the_owners_time_away_less_the_idle_time() {
        let model = owners(1.0, idle_only());
        let mut totals = OwnerTotals::default();
        for seed in 0..200 {
            run_host(&model, seed, 24 * 7, &mut totals);
        }
        // Away 180 min on average (exponential), of which all but the first 3 minutes:
        // 180 * exp(-3 / 180) of every 240.
        let expected = 180.0 * (-3.0f64 / 180.0).exp() / 240.0;
        let got = totals.run_us as f64 / totals.up_us as f64;
        assert!((got - expected).abs() < 0.02, "{got} vs {expected}");
        assert_eq!(totals.run_owner_active_us, 0);
    }

    #[test]
    fn with_the_default_policy_vms_run_while_the_owner_works() {
        let model = owners(1.0, Policy::default());
        let mut totals = OwnerTotals::default();
        for seed in 0..50 {
            run_host(&model, seed, 48, &mut totals);
        }
        assert_eq!(totals.run_us, totals.up_us);
        assert_eq!(totals.evacuations, 0);
        let share_active = totals.run_owner_active_us as f64 / totals.run_us as f64;
        assert!((share_active - 0.25).abs() < 0.05, "{share_active}");
    }

    #[test]
    fn a_time_window_is_kept_in_each_hosts_local_time() {
        let window = Policy {
            start_hour: 9,
            end_hour: 17,
            ..Policy::default()
        };
        let model = owners(0.0, window);
        let mut totals = OwnerTotals::default();
        for seed in 0..100 {
            run_host(&model, seed, 24 * 3, &mut totals);
        }
        let got = totals.run_us as f64 / totals.up_us as f64;
        assert!((got - 8.0 / 24.0).abs() < 0.01, "{got}");
        assert_eq!(totals.run_owner_active_us, 0);
    }

    #[test]
    fn local_time_starts_on_monday_and_follows_the_offset() {
        let t = local_time(SimTime(25 * 60 * MIN + 7 * MIN), 0);
        assert_eq!((t.weekday, t.hour, t.minute), (2, 1, 7));
        let t = local_time(SimTime::ZERO, -5);
        assert_eq!((t.weekday, t.hour), (0, 19));
    }
}
