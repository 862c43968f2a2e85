//! The daemon's politeness loop: samples the host every second, feeds the policy's state
//! machine, and acts when its decision changes — caps the VMs' CPU, moves them away when the
//! owner needs the machine, parks them in place when nothing may run, and brings back what
//! it parked once the node may run VMs again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::api::types::{now_ms, NodeEvent, PolitenessInfo, VmState};
use crate::politeness::{cpu_cap, Decision, Park, Sampler, SAMPLE_INTERVAL};

use super::accounting::held_by;
use super::{lock, Daemon};
use crate::api::service::ServiceError;

/// How long an evacuation the owner asked for may take before VMs are parked in place.
const EVACUATION_DEADLINE: Duration = Duration::from_secs(120);

impl Daemon {
    /// What the policy allows now.
    pub(super) fn politeness_info(&self) -> PolitenessInfo {
        lock(&self.politeness).info()
    }

    /// Runs until the task is dropped.
    pub async fn politeness_loop(self: Arc<Self>, mut sampler: Sampler) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
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
            let changed = lock(&self.politeness).observe(now_ms(), &obs);
            let Some(decision) = changed else { continue };
            let info = self.politeness_info();
            tracing::info!(state = %info.state, reasons = ?info.reasons, "politeness");
            self.metrics.set_politeness(&info);
            self.bus.publish(NodeEvent::Politeness { politeness: info });
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
        let mut active = self.vms.active();
        let mut used = held_by(&active).mem_bytes;
        if mem_cap_bytes == 0 || used <= mem_cap_bytes {
            return;
        }
        active.sort_by_key(|v| std::cmp::Reverse(v.spec.mem_mib));
        for vm in active {
            if used <= mem_cap_bytes {
                break;
            }
            used = used.saturating_sub(vm.spec.mem_mib << 20);
            tracing::info!(vm = %vm.id, "over the memory cap: moving it away");
            let me = self.clone();
            tokio::spawn(async move {
                let moved = tokio::time::timeout(EVACUATION_DEADLINE, me.move_away(&vm.id)).await;
                if !matches!(moved, Ok(true)) {
                    me.park(&vm.id).await;
                }
            });
        }
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
            let name = novacron_vm::launcher::cgroup_name(&self.vms.vmm_id(&vm.id));
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
