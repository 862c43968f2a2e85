//! The evacuation planner: emptying the node (drain on SIGTERM, or the owner needing the
//! machine) by moving every active VM away, each by the modes of its migration policy in
//! order (live, then warm, ...), to the best peer that takes it; a VM that cannot move, or is
//! still here when the deadline passes, is parked (snapshotted and stopped here).
//!
//! Pure: the daemon creates an [`Evacuation`], carries out what [`Evacuation::poll`] says
//! (start a migration, cancel one that takes too long, park a VM), reports back what
//! happened ([`Evacuation::started`], [`Evacuation::refused`], [`Evacuation::ended`]) and
//! sleeps until [`Evacuation::next_deadline`]. Time is a [`Duration`] since the driver's
//! fixed epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use super::admission::held_by;
use novacron_model::{Backend, MigrationMode, VmInfo, DEFAULT_PRIORITY};

/// How long one migration may take before the evacuation cancels it and tries the VM's
/// next mode.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start moving `vm` by `mode` to the best peer of the cell that takes it; report
    /// [`Evacuation::started`] or [`Evacuation::refused`], then [`Evacuation::ended`].
    Migrate { vm: String, mode: MigrationMode },
    /// Migration `migration` of `vm` took too long: cancel it (the VM's next mode follows).
    Cancel { vm: String, migration: String },
    /// `vm` could not move, or the deadline passed: snapshot and stop it here (cancelling a
    /// migration it may still be in). Nothing is reported back.
    Park { vm: String },
}

/// Where one VM's evacuation is.
#[derive(Clone, Debug)]
enum Step {
    /// Its next mode is to be tried.
    Next,
    /// A migration was asked for and has not started yet.
    Asked,
    /// Migration `id` runs; it is cancelled at `timeout`.
    Moving { id: String, timeout: Duration },
    /// It moved, or was parked: nothing more to do.
    Over,
}

#[derive(Clone, Debug)]
struct VmEvacuation {
    /// The modes not tried yet, first to try first.
    modes: Vec<MigrationMode>,
    step: Step,
}

/// The modes a VM moves by, in the order tried: its policy's, but a process-backend VM
/// moves only by cold restart whatever its policy lists.
pub fn modes_for(vm: &VmInfo) -> Vec<MigrationMode> {
    match vm.spec.backend {
        Backend::Process => vec![MigrationMode::Cold],
        Backend::Kvm => vm.spec.migration.clone(),
    }
}

/// The VMs to move away so that the rest of `active` fits `mem_cap_bytes`: the lowest
/// priority first and, among equals, the largest, until what stays fits; then any of those
/// that fits back after all stays, the highest priority first (none leaves when all fits
/// already, or there is no cap).
pub fn to_fit_memory(mut active: Vec<VmInfo>, mem_cap_bytes: u64) -> Vec<VmInfo> {
    let mut used = held_by(&active).mem_bytes;
    if mem_cap_bytes == 0 || used <= mem_cap_bytes {
        return Vec::new();
    }
    active.sort_by_key(|v| {
        (
            v.spec.priority.unwrap_or(DEFAULT_PRIORITY),
            std::cmp::Reverse(v.spec.mem_mib),
        )
    });
    let mut over = Vec::new();
    for vm in active {
        if used <= mem_cap_bytes {
            break;
        }
        used = used.saturating_sub(vm.spec.mem_mib << 20);
        over.push(vm);
    }
    // Leaving in priority order may have taken more than was needed.
    for i in (0..over.len()).rev() {
        let mem = over[i].spec.mem_mib << 20;
        if used.saturating_add(mem) <= mem_cap_bytes {
            used += mem;
            over.remove(i);
        }
    }
    over
}

/// One evacuation of the node.
#[derive(Clone, Debug)]
pub struct Evacuation {
    deadline: Duration,
    vms: BTreeMap<String, VmEvacuation>,
}

impl Evacuation {
    /// Plans moving `vms` (the active VMs) away, starting at `now`, parking what is still
    /// here `within` later.
    pub fn new(vms: &[VmInfo], now: Duration, within: Duration) -> Evacuation {
        let vms = vms
            .iter()
            .map(|vm| {
                let mut modes = modes_for(vm);
                modes.reverse();
                (
                    vm.id.clone(),
                    VmEvacuation {
                        modes,
                        step: Step::Next,
                    },
                )
            })
            .collect();
        Evacuation {
            deadline: now.saturating_add(within),
            vms,
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let past_deadline = now >= self.deadline;
        let mut out = Vec::new();
        for (id, vm) in &mut self.vms {
            if past_deadline && !matches!(vm.step, Step::Over) {
                vm.step = Step::Over;
                out.push(Action::Park { vm: id.clone() });
                continue;
            }
            if let Step::Moving {
                id: migration,
                timeout,
            } = &vm.step
            {
                if now >= *timeout {
                    out.push(Action::Cancel {
                        vm: id.clone(),
                        migration: migration.clone(),
                    });
                    vm.step = Step::Next;
                }
            }
            if matches!(vm.step, Step::Next) {
                match vm.modes.pop() {
                    Some(mode) => {
                        vm.step = Step::Asked;
                        out.push(Action::Migrate {
                            vm: id.clone(),
                            mode,
                        });
                    }
                    None => {
                        vm.step = Step::Over;
                        out.push(Action::Park { vm: id.clone() });
                    }
                }
            }
        }
        out
    }

    /// The migration asked for `vm` started as `migration` at `now`.
    pub fn started(&mut self, vm: &str, migration: &str, now: Duration) {
        if let Some(v) = self.vms.get_mut(vm) {
            if matches!(v.step, Step::Asked) {
                v.step = Step::Moving {
                    id: migration.to_string(),
                    timeout: now.saturating_add(MIGRATION_TIMEOUT),
                };
            }
        }
    }

    /// No peer took `vm` by the mode asked (or it could not start): its next mode follows.
    pub fn refused(&mut self, vm: &str) {
        if let Some(v) = self.vms.get_mut(vm) {
            if matches!(v.step, Step::Asked) {
                v.step = Step::Next;
            }
        }
    }

    /// Migration `migration` of `vm` ended: the VM `moved`, or it is still here (its next
    /// mode follows). A migration that ended after it was given up on counts only if the
    /// VM moved after all.
    pub fn ended(&mut self, vm: &str, migration: &str, moved: bool) {
        let Some(v) = self.vms.get_mut(vm) else {
            return;
        };
        if moved {
            v.step = Step::Over;
            return;
        }
        if matches!(&v.step, Step::Moving { id, .. } if id == migration) {
            v.step = Step::Next;
        }
    }

    /// When [`Self::poll`] must be called again with no report in between: the earliest
    /// migration timeout, or the deadline; None once every VM moved or was parked.
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        for vm in self.vms.values() {
            let at = match vm.step {
                Step::Over => continue,
                Step::Next => Duration::ZERO,
                Step::Asked => self.deadline,
                Step::Moving { timeout, .. } => timeout.min(self.deadline),
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// Whether every VM moved or was parked.
    pub fn is_finished(&self) -> bool {
        self.vms.values().all(|v| matches!(v.step, Step::Over))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::VmState;

    const S: Duration = Duration::from_secs(1);

    fn vm(id: &str, backend: Backend, modes: &[MigrationMode]) -> VmInfo {
        let mut vm = novacron_model::fixtures::vm(id, VmState::Running);
        vm.spec.backend = backend;
        vm.spec.migration = modes.to_vec();
        vm
    }

    fn migrate(vm: &str, mode: MigrationMode) -> Action {
        Action::Migrate {
            vm: vm.into(),
            mode,
        }
    }

    fn park(vm: &str) -> Action {
        Action::Park { vm: vm.into() }
    }

    use MigrationMode::{Cold, Live, Warm};

    #[test]
    fn each_vm_tries_its_modes_in_order_then_is_parked() {
        let vms = [vm("a", Backend::Kvm, &[Live, Warm])];
        let mut e = Evacuation::new(&vms, Duration::ZERO, 600 * S);
        assert_eq!(e.poll(Duration::ZERO), vec![migrate("a", Live)]);
        // Nothing more until it is answered.
        assert_eq!(e.poll(S), vec![]);
        e.refused("a");
        assert_eq!(e.poll(S), vec![migrate("a", Warm)]);
        e.started("a", "m1", S);
        e.ended("a", "m1", false);
        assert_eq!(e.poll(2 * S), vec![park("a")]);
        assert!(e.is_finished());
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn a_vm_that_moved_is_done_and_a_process_moves_only_cold() {
        let vms = [
            vm("k", Backend::Kvm, &[Live]),
            vm("p", Backend::Process, &[Live, Warm]),
        ];
        let mut e = Evacuation::new(&vms, Duration::ZERO, 600 * S);
        assert_eq!(
            e.poll(Duration::ZERO),
            vec![migrate("k", Live), migrate("p", Cold)]
        );
        e.started("k", "m1", S);
        e.ended("k", "m1", true);
        e.started("p", "m2", S);
        e.ended("p", "m2", true);
        assert_eq!(e.poll(2 * S), vec![]);
        assert!(e.is_finished());
    }

    #[test]
    fn a_migration_that_takes_too_long_is_cancelled_and_the_next_mode_tried() {
        let vms = [vm("a", Backend::Kvm, &[Live, Warm])];
        let mut e = Evacuation::new(&vms, Duration::ZERO, 3600 * S);
        e.poll(Duration::ZERO);
        e.started("a", "m1", 10 * S);
        assert_eq!(e.next_deadline(), Some(10 * S + MIGRATION_TIMEOUT));
        assert_eq!(e.poll(10 * S + MIGRATION_TIMEOUT - S), vec![]);
        assert_eq!(
            e.poll(10 * S + MIGRATION_TIMEOUT),
            vec![
                Action::Cancel {
                    vm: "a".into(),
                    migration: "m1".into()
                },
                migrate("a", Warm)
            ]
        );
        // The cancelled one ending now does not end the warm attempt...
        e.ended("a", "m1", false);
        assert_eq!(e.poll(200 * S), vec![]);
        // ...but had it moved the VM after all, the VM is gone.
        e.ended("a", "m1", true);
        assert!(e.is_finished());
    }

    #[test]
    fn at_the_deadline_every_vm_still_here_is_parked_once() {
        let vms = [
            vm("a", Backend::Kvm, &[Live]),
            vm("b", Backend::Kvm, &[Live]),
            vm("c", Backend::Kvm, &[Live]),
        ];
        let mut e = Evacuation::new(&vms, Duration::ZERO, 30 * S);
        e.poll(Duration::ZERO);
        e.started("a", "ma", S);
        e.ended("a", "ma", true);
        e.started("b", "mb", S);
        // c was asked and never answered; b is moving: both wait for the deadline.
        assert_eq!(e.next_deadline(), Some(30 * S));
        assert_eq!(e.poll(30 * S), vec![park("b"), park("c")]);
        assert_eq!(e.poll(31 * S), vec![]);
        // A late report changes nothing.
        e.refused("c");
        e.ended("b", "mb", false);
        assert_eq!(e.poll(32 * S), vec![]);
        assert!(e.is_finished());
    }

    #[test]
    fn the_lowest_priority_then_largest_vms_leave_until_the_rest_fits_the_memory_cap() {
        let sized = |id: &str, mib: u64| {
            let mut v = vm(id, Backend::Kvm, &[Live]);
            v.spec.mem_mib = mib;
            v
        };
        let active_default = || vec![sized("s", 64), sized("l", 512), sized("m", 256)];
        let active = active_default();
        let ids = |v: Vec<VmInfo>| v.into_iter().map(|v| v.id).collect::<Vec<_>>();
        // 832 MiB held: under a 1 GiB cap, or with no cap, nobody moves.
        assert!(to_fit_memory(active.clone(), 1 << 30).is_empty());
        assert!(to_fit_memory(active.clone(), 0).is_empty());
        // A 400 MiB cap: the 512 MiB one leaves and the rest (320 MiB) fits.
        assert_eq!(ids(to_fit_memory(active.clone(), 400 << 20)), ["l"]);
        // A 100 MiB cap: the two largest leave.
        assert_eq!(ids(to_fit_memory(active.clone(), 100 << 20)), ["l", "m"]);
        // Lower priority leaves first: with the 512 MiB one at priority 9, a 600 MiB cap
        // moves the 256 MiB one (priority 5) and keeps the small one (priority 2), which
        // fits back once the other left.
        let mut ranked = active;
        ranked[0].spec.priority = Some(2);
        ranked[1].spec.priority = Some(9);
        assert_eq!(ids(to_fit_memory(ranked.clone(), 600 << 20)), ["m"]);
        assert_eq!(ids(to_fit_memory(active_default(), 600 << 20)), ["l"]);
        // A VM over the cap by itself leaves whatever its priority.
        assert_eq!(ids(to_fit_memory(ranked, 400 << 20)), ["l"]);
    }

    #[test]
    fn nothing_to_move_is_finished_at_once() {
        let mut e = Evacuation::new(&[], Duration::ZERO, 30 * S);
        assert!(e.is_finished());
        assert_eq!(e.poll(Duration::ZERO), vec![]);
        assert_eq!(e.next_deadline(), None);
    }
}
