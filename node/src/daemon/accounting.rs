//! The daemon's side of admission ([`super::admission`]): it gathers the accounting's inputs
//! (its VMs, the offers it accepted, the politeness decision and the host's memory as the
//! politeness sampler last read it), admits new VMs, suspended VMs coming back and incoming
//! migration offers one at a time (so two requests cannot both take the last slot), and
//! reserves what an accepted offer will hold until its VM is recorded.

use std::sync::atomic::Ordering;

use novacron_mesh::swarm::PeerId;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{Backend, MigrationMode, VmInfo, VmState};
use crate::mesh_migration::MigrationOffer;

use super::{lock, Daemon};
use crate::policy::admission::{held_by, Accounting, Closed, Load, MemCap};

/// The host's online CPUs.
fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

impl Daemon {
    /// The accounting now: what the node offers, what its VMs and accepted offers hold, and
    /// whether it takes VMs at all.
    pub(super) fn accounting(&self) -> Accounting {
        let (slots, (mem_total_bytes, mem_available_bytes), mem_cap, info) = {
            let p = lock(&self.politeness);
            (
                p.policy().usable_cpus(host_cpus()),
                p.memory(),
                p.mem_cap(),
                p.info(),
            )
        };
        let closed = if self.draining.load(Ordering::SeqCst) {
            Some(Closed::Draining)
        } else if info.state != "run" && info.state != "throttled" {
            Some(Closed::Owner {
                state: info.state,
                reasons: info.reasons,
            })
        } else {
            None
        };
        let active = self.vms.active();
        let reserved = lock(&self.reservations).held(self.started.elapsed(), |id| {
            active.iter().any(|v| v.id == id)
        });
        Accounting {
            slots,
            mem_total_bytes,
            mem_available_bytes,
            mem_cap: mem_cap.map(|(bytes, pct)| MemCap { bytes, pct }),
            closed,
            held: held_by(&active).plus(reserved),
        }
    }

    /// Why the node takes no VMs at all now (draining, the owner's policy), if so.
    pub(super) fn closed(&self) -> Option<Closed> {
        self.accounting().closed
    }

    /// Admits a VM asking for `ask` and runs `take` (which records it, so it counts from
    /// then on) with no other admission in between; a VM that does not fit is 503, naming
    /// what is short.
    pub(super) fn admit_then<T>(
        &self,
        ask: Load,
        take: impl FnOnce() -> ServiceResult<T>,
    ) -> ServiceResult<T> {
        let _one_at_a_time = lock(&self.admitting);
        self.accounting().admit(ask).map_err(|short| {
            ServiceError::Unavailable(format!("this node cannot take the VM now: {short}"))
        })?;
        take()
    }

    /// Brings a suspended VM back from its snapshot if it fits here now.
    pub(super) async fn resume_suspended(&self, id: &str) -> ServiceResult<VmInfo> {
        let vm = self
            .vms
            .get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))?;
        if vm.state != VmState::Suspended {
            return Err(ServiceError::Conflict(format!(
                "VM {id} is {}, not suspended",
                vm.state.as_str()
            )));
        }
        let ask = Load::new(vm.spec.vcpus, vm.spec.mem_mib << 20);
        self.admit_then(ask, || self.vms.claim_suspended(id))?;
        self.vms.start_claimed(id).await
    }

    /// The answer to a peer's migration offer (an `Err` is the refusal sent back): the VM
    /// must be one this node can run and does not run already, and fit by the same
    /// accounting as a new VM; an accepted offer holds its room until its VM is recorded.
    pub(super) fn admit_offer(&self, peer: &PeerId, offer: &MigrationOffer) -> Result<(), String> {
        if offer.spec.backend == Backend::Process && offer.mode != MigrationMode::Cold {
            return Err("a process-backend VM moves only cold".into());
        }
        if let Some(vm) = self.vms.get(&offer.vm_id) {
            if vm.state.is_active() {
                return Err(format!("VM {} already runs here", offer.vm_id));
            }
        }
        let ask = Load::new(offer.vcpus, offer.mem_bytes);
        let _one_at_a_time = lock(&self.admitting);
        self.accounting()
            .admit(ask)
            .map_err(|short| format!("this node cannot take the VM now: {short}"))?;
        lock(&self.reservations).reserve(offer.session, &offer.vm_id, ask, self.started.elapsed());
        tracing::info!(%peer, vm = %offer.vm_id, "taking a migrating VM");
        Ok(())
    }

    /// An accepted offer's VM is recorded here (it ran, or failed): its reservation ends.
    pub(super) fn release_offer(&self, session: &[u8; 16]) {
        lock(&self.reservations).release(session);
    }
}
