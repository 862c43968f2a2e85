//! A small in-memory [`NodeService`] for the API's tests: VMs and migrations in maps, an
//! error to answer with on demand, events published by the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::api::service::{NodeService, ServiceError, ServiceResult, VmDeleted};
use crate::api::types::{
    EventEnvelope, JobInfo, JobLogs, MigrationDirection, MigrationInfo, MigrationRequest,
    MigrationState, NodeEvent, OwnerSetting, PolitenessInfo, VmInfo, VmSpec, VmState,
};
use crate::api::{CellStatus, MemberStatus, NodeStatus, SummaryStatus};
use crate::metrics::Metrics;

pub struct Fake {
    pub vms: Mutex<BTreeMap<String, VmInfo>>,
    pub migrations: Mutex<BTreeMap<String, MigrationInfo>>,
    pub jobs: Mutex<BTreeMap<String, JobInfo>>,
    /// Answered (once) by the next call that can fail.
    pub fail_next: Mutex<Option<ServiceError>>,
    pub drained: Mutex<Option<u64>>,
    pub owner: Mutex<OwnerSetting>,
    pub events: broadcast::Sender<EventEnvelope>,
    pub metrics: Arc<Metrics>,
    seq: Mutex<u64>,
}

impl Fake {
    pub fn new(event_capacity: usize) -> Arc<Fake> {
        let (events, _) = broadcast::channel(event_capacity);
        Arc::new(Fake {
            vms: Mutex::new(BTreeMap::new()),
            migrations: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            fail_next: Mutex::new(None),
            drained: Mutex::new(None),
            owner: Mutex::new(OwnerSetting::Auto),
            events,
            metrics: Arc::new(Metrics::new()),
            seq: Mutex::new(0),
        })
    }

    pub fn fail_with(&self, e: ServiceError) {
        *self.fail_next.lock().unwrap() = Some(e);
    }

    fn check(&self) -> ServiceResult<()> {
        match self.fail_next.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn publish(&self, event: NodeEvent) -> u64 {
        let mut seq = self.seq.lock().unwrap();
        let envelope = EventEnvelope {
            seq: *seq,
            at_ms: crate::api::types::now_ms(),
            event,
        };
        *seq += 1;
        let _ = self.events.send(envelope);
        *seq - 1
    }

    /// Sets a migration's state and publishes the change.
    pub fn update_migration(&self, id: &str, state: MigrationState) {
        let m = {
            let mut all = self.migrations.lock().unwrap();
            let Some(m) = all.get_mut(id) else { return };
            m.state = state;
            if state.is_final() {
                m.ended_at_ms = Some(m.started_at_ms + 1500);
            }
            m.clone()
        };
        self.publish(NodeEvent::Migration {
            migration: Box::new(m),
        });
    }

    fn set_vm_state(&self, id: &str, want_from: &[VmState], to: VmState) -> ServiceResult<VmInfo> {
        self.check()?;
        let mut vms = self.vms.lock().unwrap();
        let vm = vms
            .get_mut(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))?;
        if !want_from.contains(&vm.state) {
            return Err(ServiceError::Conflict(format!(
                "VM {id} is {}",
                vm.state.as_str()
            )));
        }
        vm.state = to;
        Ok(vm.clone())
    }
}

pub fn member(peer: &str, live: bool) -> MemberStatus {
    MemberStatus {
        peer_id: peer.into(),
        live,
        signed: true,
        vcpus: 4,
        mem_mib: 8192,
        free_slots: 2,
        load_permille: 100,
        version: "0.1.0".into(),
        addrs: vec!["/ip4/10.0.0.2/tcp/4001".into()],
    }
}

pub fn migration(id: &str, vm: &str) -> MigrationInfo {
    MigrationInfo {
        id: id.into(),
        vm_id: vm.into(),
        direction: MigrationDirection::Out,
        peer: "12D3KooWPeer".into(),
        mode: crate::api::types::MigrationMode::Live,
        state: MigrationState::Running,
        started_at_ms: 1_000,
        ended_at_ms: None,
        downtime_ms: None,
        wire_bytes: 0,
        error: None,
        progress: None,
    }
}

impl NodeService for Fake {
    async fn status(&self) -> ServiceResult<NodeStatus> {
        self.check()?;
        Ok(NodeStatus {
            peer_id: "12D3KooWSelf".into(),
            version: "0.1.0".into(),
            uptime_s: 1.5,
            listen_addrs: vec![],
            connected_peers: 1,
            routing_table_peers: 1,
            wire_sent: 0,
            wire_received: 0,
            wire_by_protocol: Vec::new(),
            mesh_size_estimate: 2,
            cell: Some(CellStatus {
                id: "1/0".into(),
                members: vec![member("12D3KooWSelf", true), member("12D3KooWPeer", false)],
                gossip_sent: 0,
                gossip_received: 0,
                gossip_interval_ms: 1000,
            }),
            summaries: vec![SummaryStatus {
                cell: "1/0".into(),
                signer: "12D3KooWSelf".into(),
                issued_at: 1,
                members: 2,
                total_vcpus: 8,
                free_vcpus: 4,
                total_memory_mib: 16384,
                free_slots: 4,
                mean_load_permille: 100,
            }],
        })
    }

    fn vms(&self) -> Vec<VmInfo> {
        self.vms.lock().unwrap().values().cloned().collect()
    }

    fn vm(&self, id: &str) -> Option<VmInfo> {
        self.vms.lock().unwrap().get(id).cloned()
    }

    async fn create_vm(&self, spec: VmSpec) -> ServiceResult<VmInfo> {
        self.check()?;
        if spec.mem_mib == 0 {
            return Err(ServiceError::BadRequest(
                "mem_mib must be at least 1".into(),
            ));
        }
        let mut vms = self.vms.lock().unwrap();
        let id = format!("vm{}", vms.len());
        let info = VmInfo {
            id: id.clone(),
            spec,
            state: VmState::Starting,
            detail: None,
            pid: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            snapshot_at_ms: None,
            last_report: None,
            adoptions: 0,
        };
        vms.insert(id, info.clone());
        Ok(info)
    }

    async fn delete_vm(&self, id: &str) -> ServiceResult<VmDeleted> {
        let ended = self
            .vms
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|v| !v.state.is_active() && v.state != VmState::Suspended);
        if ended {
            self.check()?;
            self.vms.lock().unwrap().remove(id);
            return Ok(VmDeleted::Removed);
        }
        self.set_vm_state(
            id,
            &[VmState::Starting, VmState::Running, VmState::Paused],
            VmState::Exited,
        )
        .map(|vm| VmDeleted::Stopped(Box::new(vm)))
    }

    async fn pause_vm(&self, id: &str) -> ServiceResult<VmInfo> {
        self.set_vm_state(id, &[VmState::Running, VmState::Starting], VmState::Paused)
    }

    async fn resume_vm(&self, id: &str) -> ServiceResult<VmInfo> {
        self.set_vm_state(id, &[VmState::Paused], VmState::Running)
    }

    fn migrations(&self) -> Vec<MigrationInfo> {
        self.migrations.lock().unwrap().values().cloned().collect()
    }

    fn migration(&self, id: &str) -> Option<MigrationInfo> {
        self.migrations.lock().unwrap().get(id).cloned()
    }

    async fn start_migration(
        &self,
        vm_id: &str,
        request: MigrationRequest,
    ) -> ServiceResult<MigrationInfo> {
        self.check()?;
        if !self.vms.lock().unwrap().contains_key(vm_id) {
            return Err(ServiceError::NotFound(format!("no VM {vm_id}")));
        }
        let mut all = self.migrations.lock().unwrap();
        let id = format!("m{}", all.len());
        let mut m = migration(&id, vm_id);
        m.peer = request.to;
        m.mode = request.mode;
        all.insert(id, m.clone());
        Ok(m)
    }

    async fn cancel_migration(&self, id: &str) -> ServiceResult<MigrationInfo> {
        self.check()?;
        let mut all = self.migrations.lock().unwrap();
        let m = all
            .get_mut(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no migration {id}")))?;
        if m.state.is_final() {
            return Err(ServiceError::Conflict(format!("migration {id} has ended")));
        }
        m.state = MigrationState::Cancelled;
        Ok(m.clone())
    }

    fn politeness(&self) -> PolitenessInfo {
        PolitenessInfo {
            state: "run".into(),
            reasons: vec![],
            owner_idle_s: Some(600),
            on_battery: false,
            cpu_cap_percent: 100,
            mem_cap_mib: 4096,
            owner_override: *self.owner.lock().unwrap(),
        }
    }

    async fn set_owner(&self, owner: OwnerSetting) -> ServiceResult<PolitenessInfo> {
        self.check()?;
        *self.owner.lock().unwrap() = owner;
        Ok(self.politeness())
    }

    async fn drain(&self, deadline_s: u64) -> ServiceResult<()> {
        self.check()?;
        *self.drained.lock().unwrap() = Some(deadline_s);
        Ok(())
    }

    fn jobs(&self) -> Vec<JobInfo> {
        self.jobs.lock().unwrap().values().cloned().collect()
    }

    async fn cell_jobs(&self) -> Vec<JobInfo> {
        self.jobs()
    }

    async fn submit_job(&self, submission: Vec<u8>) -> ServiceResult<JobInfo> {
        self.check()?;
        Err(ServiceError::BadRequest(format!(
            "submission refused: {} bytes that are not a signed submission",
            submission.len()
        )))
    }

    async fn job(&self, id: &str) -> ServiceResult<JobInfo> {
        self.check()?;
        self.jobs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no job {id}")))
    }

    async fn cancel_job(&self, id: &str) -> ServiceResult<JobInfo> {
        self.check()?;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs
            .get_mut(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no job {id}")))?;
        if job.state.is_final() {
            return Err(ServiceError::Conflict(format!("job {id} has ended")));
        }
        job.state = crate::api::types::JobState::Cancelled;
        Ok(job.clone())
    }

    async fn job_logs(
        &self,
        id: &str,
        replica: Option<u32>,
        offset: u64,
    ) -> ServiceResult<JobLogs> {
        let job = self.job(id).await?;
        let text = "hello\n".to_string();
        let from = (offset as usize).min(text.len());
        Ok(JobLogs {
            job_id: job.id,
            replica: replica.unwrap_or(0),
            offset,
            next_offset: text.len() as u64,
            finished: job.state.is_final(),
            text: text[from..].to_string(),
        })
    }

    async fn job_result(&self, id: &str) -> ServiceResult<Vec<u8>> {
        let job = self.job(id).await?;
        match job.result_hash {
            Some(_) => Ok(b"hello\n".to_vec()),
            None => Err(ServiceError::Conflict(format!(
                "job {id} has no result yet"
            ))),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.events.subscribe()
    }

    async fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}
