//! The daemon's politeness loop: samples the host every second (and at once when the owner
//! override changes), feeds the policy's state machine, and acts when its decision changes —
//! caps the VMs' CPU, moves them away when the owner needs the machine, parks them in place
//! when nothing may run, and brings back what it parked once the node may run VMs again.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::api::service::ServiceResult;
use crate::api::types::{NodeEvent, OwnerSetting, PolitenessInfo, VmState};
use crate::policy::evacuation;
use crate::policy::politeness::observation::OwnerSignal;
use crate::policy::politeness::{Decision, Park};
use crate::politeness::sources::owner;
use crate::politeness::{cpu_cap, Sampler, SAMPLE_INTERVAL};

use super::{lock, Daemon};
use crate::api::service::ServiceError;

/// How long an evacuation the owner asked for may take before VMs are parked in place.
const EVACUATION_DEADLINE: Duration = Duration::from_secs(120);

/// How long `POST /api/v1/politeness/owner` waits for the policy to decide with the new
/// word before it answers with what it has.
const OWNER_DECISION_WAIT: Duration = Duration::from_secs(5);

/// The owner override a previous run kept in `data_dir`; a file that cannot be read counts
/// as none (logged: the node still starts, judging the owner by the hook files and devices).
pub(super) fn kept_owner_override(data_dir: &Path) -> Option<OwnerSignal> {
    owner::read_override(data_dir)
        .map_err(|e| tracing::warn!(error = %e, "the owner override is not read: none is set"))
        .ok()
        .flatten()
}

impl Daemon {
    /// What the policy allows now, and the owner override in force.
    pub(super) fn politeness_info(&self) -> PolitenessInfo {
        let mut info = lock(&self.politeness).info();
        info.owner_override = match *lock(&self.owner_override) {
            Some(OwnerSignal::Active) => OwnerSetting::Active,
            Some(OwnerSignal::Idle) => OwnerSetting::Idle,
            None => OwnerSetting::Auto,
        };
        info
    }

    /// Sets the owner override (`Auto` clears it): kept in the data directory first, then
    /// handed to the politeness loop, which samples at once; answers with what the policy
    /// decided with it (or, if the loop is busy acting on an earlier decision for longer than
    /// [`OWNER_DECISION_WAIT`], what it has now).
    pub(super) async fn set_owner_override(
        &self,
        owner: OwnerSetting,
    ) -> ServiceResult<PolitenessInfo> {
        let signal = match owner {
            OwnerSetting::Active => Some(OwnerSignal::Active),
            OwnerSetting::Idle => Some(OwnerSignal::Idle),
            OwnerSetting::Auto => None,
        };
        let generation = {
            let _one_at_a_time = self.owner_writes.lock().await;
            let dir = self.data_dir.clone();
            tokio::task::spawn_blocking(move || owner::write_override(&dir, signal))
                .await
                .map_err(|e| ServiceError::Internal(format!("owner override task: {e}")))?
                .map_err(|e| {
                    ServiceError::Internal(format!(
                        "cannot keep the owner override in {}: {e}",
                        self.data_dir.join(owner::OWNER_OVERRIDE_FILE).display()
                    ))
                })?;
            *lock(&self.owner_override) = signal;
            self.owner_generation.fetch_add(1, Ordering::SeqCst) + 1
        };
        tracing::info!(owner = owner.as_str(), "owner override set through the API");
        let mut observed = self.owner_observed.subscribe();
        self.resample.notify_one();
        let decided = observed.wait_for(|g| *g >= generation);
        let _ = tokio::time::timeout(OWNER_DECISION_WAIT, decided).await;
        Ok(self.politeness_info())
    }

    /// Waits until politeness observed the machine once (until then every VM is refused
    /// "not observed yet"), at most `limit`: the node says it is ready after this.
    pub async fn first_politeness_observation(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !lock(&self.politeness).observed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Runs until the task is dropped.
    pub async fn politeness_loop(self: Arc<Self>, mut sampler: Sampler) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.resample.notified() => {}
            }
            // The generation first: an override set after this is seen at the next sample.
            let generation = self.owner_generation.load(Ordering::SeqCst);
            sampler.set_owner_override(*lock(&self.owner_override));
            let pids: Vec<u32> = self.vms.active().iter().filter_map(|v| v.pid).collect();
            sampler.set_vm_pids(pids);
            // Reading /proc, /sys and /dev is quick but blocking.
            let (back, obs) = match tokio::task::spawn_blocking(move || {
                let obs = sampler.sample();
                (sampler, obs)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "politeness sampler failed; it stops");
                    return;
                }
            };
            sampler = back;
            let changed = lock(&self.politeness).observe(self.started.elapsed(), &obs);
            let Some(decision) = changed else {
                self.owner_observed.send_replace(generation);
                continue;
            };
            let info = self.politeness_info();
            tracing::info!(state = %info.state, reasons = ?info.reasons, "politeness");
            self.metrics.set_politeness(&info);
            self.bus.publish(NodeEvent::Politeness { politeness: info });
            self.owner_observed.send_replace(generation);
            self.act(decision).await;
        }
    }

    async fn act(self: &Arc<Self>, decision: Decision) {
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        match decision {
            Decision::Run {
                cpu_cap_percent,
                mem_cap_bytes,
            } => {
                self.cap_cpu(cpu_cap_percent);
                self.fit_memory(mem_cap_bytes).await;
                self.bring_back().await;
            }
            Decision::Evacuate { .. } => {
                let me = self.clone();
                tokio::spawn(async move {
                    me.evacuate(EVACUATION_DEADLINE, "the owner needs the machine")
                        .await;
                });
            }
            Decision::Suspend { .. } => {
                let park = lock(&self.politeness).policy().park();
                for vm in self.vms.active() {
                    match park {
                        Park::SnapshotAndStop => self.park(&vm.id).await,
                        Park::KeepPaused => {
                            if vm.state == VmState::Running && self.vms.pause(&vm.id).await.is_ok()
                            {
                                lock(&self.paused_by_policy).insert(vm.id.clone());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Moves the largest VMs away (or parks them) until the rest fits the memory cap (it
    /// drops to 50% of the host's memory while the owner is active).
    async fn fit_memory(self: &Arc<Self>, mem_cap_bytes: u64) {
        let over = evacuation::to_fit_memory(self.vms.active(), mem_cap_bytes);
        if over.is_empty() {
            return;
        }
        for vm in &over {
            tracing::info!(vm = %vm.id, "over the memory cap: moving it away");
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.evacuate_vms(over, EVACUATION_DEADLINE, "over the memory cap")
                .await;
        });
    }

    /// Writes each running KVM VM's cgroup `cpu.max` for the CPU share cap.
    fn cap_cpu(&self, cpu_cap_percent: u8) {
        if !self.vm_opts_sandbox {
            return;
        }
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let usable = lock(&self.politeness).policy().usable_cpus(host_cpus);
        let Ok(layout) = novacron_vm::sandbox::cgroup::detect() else {
            return;
        };
        for vm in self.vms.active() {
            let max = cpu_cap::cpu_max(cpu_cap_percent, usable, vm.spec.vcpus.into());
            let name = novacron_vm::process::launcher::cgroup_name(&self.vms.vmm_id(&vm.id));
            if let Err(e) = cpu_cap::apply_cpu_max(&layout, &name, max) {
                tracing::debug!(vm = %vm.id, error = %e, "cannot cap the VM's CPU");
            }
        }
    }

    /// Resumes what the policy parked: suspended VMs from their snapshots (as many as the
    /// node's admission takes), paused ones.
    async fn bring_back(self: &Arc<Self>) {
        for vm in self.vms.list() {
            if vm.state == VmState::Suspended {
                match self.resume_suspended(&vm.id).await {
                    Ok(_) => tracing::info!(vm = %vm.id, "resumed: the node may run VMs again"),
                    Err(ServiceError::Unavailable(why)) => {
                        tracing::info!(vm = %vm.id, %why, "stays suspended")
                    }
                    Err(e) => tracing::warn!(vm = %vm.id, error = %e, "cannot resume"),
                }
            }
        }
        let paused: Vec<String> = lock(&self.paused_by_policy).drain().collect();
        for id in paused {
            let _ = self.vms.resume(&id).await;
        }
    }
}
