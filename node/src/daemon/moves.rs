//! Moving VMs between this node and its peers over the mesh: migrations asked for through
//! the API, migrations coming in, and emptying the node (drain on SIGTERM, or the owner
//! needing the machine): each VM moves by its migration policy (live, then warm, ...) to the
//! best peer that takes it, or is snapshotted and stopped here when none does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use novacron_mesh::swarm::clock::Epoch;
use novacron_mesh::swarm::PeerId;
use novacron_vm::process::control::{MigrateOut, OnNoConverge};
use tokio::sync::mpsc;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{
    now_ms, Backend, MigrationDirection, MigrationInfo, MigrationMode, MigrationRequest,
    MigrationState, NodeEvent, VmInfo, VmState,
};
use crate::mesh_migration::{IncomingMigration, MigrationOffer};
use crate::policy::evacuation::{Action, Evacuation};
use crate::policy::in_doubt;
use crate::vms::process_backend::RESTARTED;

use super::Daemon;

/// How many data streams a mesh migration uses.
const DATA_STREAMS: u8 = 2;

/// Live mode's default downtime budget (ms), as for direct migrations.
const DEFAULT_DOWNTIME_BUDGET_MS: u64 = 50;

/// Times a migration in doubt asks its peer, a second apart, before leaving it to the VMM.
const RESOLVE_TRIES: u32 = 60;

/// How often the node asks the peers of its migrations in doubt (first at start).
const IN_DOUBT_ASK_EVERY: Duration = Duration::from_secs(15);

/// How long an evacuation's attempt waits for its migration to end at most: the planner
/// cancels it after [`crate::policy::evacuation::MIGRATION_TIMEOUT`]; this only bounds the
/// wait of one whose cancel never took.
const ATTEMPT_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// What an evacuation's attempt reports to its planner.
enum Report {
    Started {
        vm: String,
        migration: String,
    },
    Refused {
        vm: String,
    },
    Ended {
        vm: String,
        migration: String,
        moved: bool,
    },
}

fn control_mode(m: MigrationMode) -> novacron_vm::process::control::MigrationMode {
    match m {
        MigrationMode::Live => novacron_vm::process::control::MigrationMode::Live,
        MigrationMode::Warm => novacron_vm::process::control::MigrationMode::Warm,
        MigrationMode::Cold => novacron_vm::process::control::MigrationMode::Cold,
    }
}

/// A fresh seed for placement's tie-break.
fn random_seed() -> u64 {
    let s = new_session();
    u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
}

fn new_session() -> [u8; 16] {
    let mut s = [0u8; 16];
    if getrandom::fill(&mut s).is_err() {
        s[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    s
}

/// The session of an outgoing migration as the peer knows it, from its record id (the
/// session's first 8 bytes; see [`crate::mesh_migration::MeshMigrations::ask`]).
fn session_of_record(id: &str) -> Option<[u8; 16]> {
    let bytes = novacron_mesh::util::hex::decode(id).filter(|b| b.len() == 8)?;
    let mut session = [0u8; 16];
    session[..8].copy_from_slice(&bytes);
    Some(session)
}

/// Whether this node started the VM of incoming migration `session` from `peer`, from
/// the migration's record (persisted, so the answer outlives the VMM and a restart): None
/// while it still runs, or for a session this node has no record of from that peer.
pub(super) fn started_incoming(
    registry: &crate::vms::registry::Registry,
    peer: &PeerId,
    session: &[u8; 16],
) -> Option<bool> {
    let m = registry.migration(&novacron_mesh::util::hex::encode(&session[..8]))?;
    if m.direction != MigrationDirection::In || m.peer != peer.to_string() {
        return None;
    }
    match m.state {
        MigrationState::Done => Some(true),
        MigrationState::Failed | MigrationState::Cancelled => Some(false),
        MigrationState::Running => None,
    }
}

impl Daemon {
    /// Starts moving VM `vm_id` as `request` says; answers once the VMM is migrating.
    pub(super) async fn migrate_vm(
        &self,
        vm_id: &str,
        request: MigrationRequest,
    ) -> ServiceResult<MigrationInfo> {
        let vm = self
            .vms
            .get(vm_id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {vm_id}")))?;
        if !matches!(vm.state, VmState::Running | VmState::Paused) {
            return Err(ServiceError::Conflict(format!(
                "VM {vm_id} is {}: only a running or paused VM can migrate",
                vm.state.as_str()
            )));
        }
        if let Some(peer) = self.vms.in_doubt_with(vm_id) {
            return Err(ServiceError::Conflict(format!(
                "VM {vm_id} is paused after a migration in doubt: {peer} may run it; check \
                 there, then resume it here (`novacron vms resume`) or stop it"
            )));
        }
        if vm.spec.backend == Backend::Process && request.mode != MigrationMode::Cold {
            return Err(ServiceError::BadRequest(
                "mode: a process-backend VM moves only by cold restart: use mode cold".into(),
            ));
        }
        let me = self.mesh.peer_id().to_string();
        let peers: Vec<String> = if request.to == "auto" {
            let members = self
                .cell_status()
                .await
                .map(|c| c.members)
                .unwrap_or_default();
            crate::policy::placement::candidates(&members, &me, vm.spec.mem_mib, &[], random_seed())
                .into_iter()
                .map(|m| m.peer_id.clone())
                .collect()
        } else {
            let peer: PeerId = request.to.parse().map_err(|_| {
                ServiceError::BadRequest(format!(
                    "to: {:?} is neither a PeerId nor \"auto\"",
                    request.to
                ))
            })?;
            if peer.to_string() == me {
                return Err(ServiceError::BadRequest(
                    "to: that is this node; name another peer".into(),
                ));
            }
            vec![peer.to_string()]
        };
        if peers.is_empty() {
            return Err(ServiceError::Unavailable(
                "no live peer in this node's cell has a free slot and enough memory for the VM"
                    .into(),
            ));
        }
        let mut refusals = Vec::new();
        for peer in peers {
            match self.migrate_to(vm_id, &peer, &request).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::info!(vm = vm_id, %peer, error = %e, "peer did not take the VM");
                    refusals.push(format!("{peer}: {e}"));
                }
            }
        }
        Err(ServiceError::Unavailable(format!(
            "no peer took VM {vm_id}: {}",
            refusals.join("; ")
        )))
    }

    /// Offers the VM to one peer and, once it accepted, starts the VMM's migration.
    async fn migrate_to(
        &self,
        vm_id: &str,
        peer: &str,
        request: &MigrationRequest,
    ) -> ServiceResult<MigrationInfo> {
        let Some(migrations) = self.migrations.as_ref() else {
            return Err(ServiceError::Unavailable(
                "mesh migration is not running".into(),
            ));
        };
        let vm = self
            .vms
            .get(vm_id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {vm_id}")))?;
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| ServiceError::BadRequest(format!("bad peer {peer}")))?;
        let session = new_session();
        let id = novacron_mesh::util::hex::encode(&session[..8]);
        let offer = MigrationOffer {
            session,
            vm_id: vm_id.to_string(),
            spec: vm.spec.clone(),
            mode: request.mode,
            mem_bytes: vm.spec.mem_mib << 20,
            vcpus: vm.spec.vcpus,
        };
        let mut info = MigrationInfo {
            id: id.clone(),
            vm_id: vm_id.to_string(),
            direction: MigrationDirection::Out,
            peer: peer.to_string(),
            mode: request.mode,
            state: MigrationState::Running,
            started_at_ms: now_ms(),
            ended_at_ms: None,
            downtime_ms: None,
            wire_bytes: 0,
            error: None,
            progress: None,
        };
        self.vms.registry().put_migration(info.clone(), true);
        let fail = |info: &mut MigrationInfo, why: String| {
            info.state = MigrationState::Failed;
            info.ended_at_ms = Some(now_ms());
            info.error = Some(why.clone());
            self.vms.registry().put_migration(info.clone(), true);
            ServiceError::Unavailable(why)
        };
        if vm.spec.backend == Backend::Process {
            return self.restart_on(peer_id, offer, info).await;
        }
        let opened = match migrations.open(peer_id, offer, DATA_STREAMS).await {
            Ok(o) if o.session == session => o,
            Ok(o) => {
                o.bridges.abort();
                return Err(fail(
                    &mut info,
                    "the streams opened for another session".into(),
                ));
            }
            Err(e) => return Err(fail(&mut info, e.to_string())),
        };
        let cmd = MigrateOut {
            session,
            mode: control_mode(request.mode),
            // The move's own budget, else the VM's (a job's), else the default.
            downtime_budget_ms: request
                .downtime_budget_ms
                .or(vm.spec.downtime_budget_ms)
                .unwrap_or(DEFAULT_DOWNTIME_BUDGET_MS),
            max_rounds: 30,
            max_precopy_ms: 30_000,
            on_no_converge: OnNoConverge::Warm,
            store: None,
            verify_memory: false,
        };
        let (in_doubt_tx, in_doubt) = mpsc::unbounded_channel();
        if let Err(e) = self
            .vms
            .migrate_out(vm_id, cmd, opened.streams, &id, peer, Some(in_doubt_tx))
            .await
        {
            opened.bridges.abort();
            return Err(fail(&mut info, e.to_string()));
        }
        self.watch_migration(&id, vm_id, peer_id, session, opened.bridges, in_doubt);
        if let Err(e) = self
            .state_db
            .note_peer(peer, "migrated a VM to it", &[], now_ms())
        {
            tracing::debug!(error = %e, "cannot note the peer");
        }
        Ok(self.vms.registry().migration(&id).unwrap_or(info))
    }

    /// Moves a process-backend VM by cold restart: the peer starts the command afresh and
    /// confirms with one byte on the control stream; then the command stops here.
    async fn restart_on(
        &self,
        peer: PeerId,
        offer: MigrationOffer,
        mut info: MigrationInfo,
    ) -> ServiceResult<MigrationInfo> {
        let Some(migrations) = self.migrations.as_ref() else {
            return Err(ServiceError::Unavailable(
                "mesh migration is not running".into(),
            ));
        };
        let vm_id = offer.vm_id.clone();
        let outcome = match migrations.open(peer, offer, 1).await {
            Ok(opened) => {
                let mut streams = opened.streams.into_iter();
                match streams.next() {
                    Some(control) => tokio::task::spawn_blocking(move || read_confirm(control))
                        .await
                        .unwrap_or_else(|e| Err(format!("confirm task: {e}"))),
                    None => Err("no control stream".into()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        info.ended_at_ms = Some(now_ms());
        match outcome {
            Ok(()) => {
                self.vms.registry().update(&vm_id, |r| {
                    r.info.state = VmState::MovedAway;
                    r.info.detail = Some(format!("restarted on {peer} (cold)"));
                });
                if let Err(e) = self.vms.stop(&vm_id).await {
                    tracing::warn!(vm = %vm_id, error = %e, "cannot stop the moved process");
                }
                info.state = MigrationState::Done;
                self.vms.registry().put_migration(info.clone(), true);
                Ok(info)
            }
            Err(why) => {
                info.state = MigrationState::Failed;
                info.error = Some(why.clone());
                self.vms.registry().put_migration(info, true);
                Err(ServiceError::Unavailable(why))
            }
        }
    }

    /// Once migration `id` ends, records the bytes its streams carried to the peer (the
    /// figure the destination records too).
    /// Until migration `id` ends: each time it goes in doubt (its streams broke after the
    /// state left), asks the peer whether it started the VM (see [`Self::resolve_in_doubt`]);
    /// at the end, records the bytes bridged.
    fn watch_migration(
        &self,
        id: &str,
        vm_id: &str,
        peer: PeerId,
        session: [u8; 16],
        bridges: crate::mesh_migration::Bridges,
        mut in_doubt: mpsc::UnboundedReceiver<()>,
    ) {
        let registry = self.vms.registry().clone();
        let myself = self.myself.clone();
        let (id, vm_id) = (id.to_string(), vm_id.to_string());
        tokio::spawn(async move {
            // What each resolution handed the VMM, held until the migration ends.
            let mut resolutions = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
            while tokio::time::Instant::now() < deadline {
                match registry.migration(&id) {
                    Some(m) if m.state.is_final() => {
                        let bytes = bridges.bytes_to_peer();
                        registry.update_migration(&id, true, |m| m.wire_bytes = bytes);
                        return;
                    }
                    None => return,
                    Some(_) => {}
                }
                tokio::select! {
                    Some(()) = in_doubt.recv() => {
                        let Some(me) = myself.get().and_then(Weak::upgrade) else { return };
                        if let Some(r) = me.resolve_in_doubt(&id, &vm_id, peer, session).await {
                            resolutions.push(r);
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
    }

    /// Opens a resolution stream to `peer` and hands it to the VMM, which asks whether the
    /// peer started the VM: "started" ends the migration done, "not started" rolls it back.
    /// A peer that does not know yet (or cannot be reached) is asked again every second,
    /// for up to [`RESOLVE_TRIES`] tries or until the migration ended (the VMM gives up on
    /// its own in time, and keeps the VM paused for an operator).
    async fn resolve_in_doubt(
        &self,
        id: &str,
        vm_id: &str,
        peer: PeerId,
        session: [u8; 16],
    ) -> Option<crate::mesh_migration::Resolution> {
        let migrations = self.migrations.as_ref()?;
        for attempt in 1..=RESOLVE_TRIES {
            if self
                .vms
                .registry()
                .migration(id)
                .is_none_or(|m| m.state.is_final())
            {
                return None;
            }
            match migrations.resolve(peer, session).await {
                Ok(mut r) => {
                    let streams = std::mem::take(&mut r.streams);
                    match self.vms.reconnect_migration(vm_id, session, streams).await {
                        Ok(()) => {
                            tracing::info!(vm = vm_id, %peer, "migration in doubt: asking the peer");
                            return Some(r);
                        }
                        Err(e) => {
                            r.bridges.abort();
                            tracing::warn!(vm = vm_id, error = %e, "cannot hand the VMM its new streams");
                            return None;
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(vm = vm_id, %peer, attempt, error = %e, "migration in doubt: the peer cannot answer yet");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        None
    }

    /// Settles this node's migrations in doubt ([`crate::policy::in_doubt`]): at start, then
    /// every [`IN_DOUBT_ASK_EVERY`], each from what is here of its VM or else from its
    /// peer's answer. Runs until the task is dropped.
    pub(super) async fn settle_in_doubt_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(IN_DOUBT_ASK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let settling = self.vms.in_doubt_here().into_iter().map(|(m, here)| {
                let me = self.clone();
                async move {
                    let mut outcome = in_doubt::settle(&here, None, &m.peer);
                    if outcome == in_doubt::Outcome::AskPeer {
                        let answer = me.ask_peer(&m).await;
                        outcome = in_doubt::settle(&here, Some(&answer), &m.peer);
                    }
                    me.vms.settle_in_doubt(&m, &here, &outcome).await;
                }
            });
            futures::future::join_all(settling).await;
        }
    }

    /// Whether the peer of migration `m` started its VM, as it answers.
    async fn ask_peer(&self, m: &MigrationInfo) -> in_doubt::PeerAnswer {
        use in_doubt::PeerAnswer;
        let Some(migrations) = self.migrations.as_ref() else {
            return PeerAnswer::Unknown("mesh migration is not running".into());
        };
        let Ok(peer) = m.peer.parse::<PeerId>() else {
            return PeerAnswer::Unknown(format!("{:?} is not a PeerId", m.peer));
        };
        let Some(session) = session_of_record(&m.id) else {
            return PeerAnswer::Unknown(format!("{:?} is not a migration id", m.id));
        };
        match migrations.ask(peer, session).await {
            Ok(true) => PeerAnswer::Started,
            Ok(false) => PeerAnswer::NotStarted,
            Err(e) => PeerAnswer::Unknown(e.to_string()),
        }
    }

    pub(super) async fn cancel_vm_migration(&self, id: &str) -> ServiceResult<MigrationInfo> {
        let m = self
            .vms
            .registry()
            .migration(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no migration {id}")))?;
        if m.state.is_final() {
            return Err(ServiceError::Conflict(format!(
                "migration {id} already ended ({:?})",
                m.state
            )));
        }
        if m.direction == MigrationDirection::In {
            return Err(ServiceError::Conflict(
                "an incoming migration is cancelled by its source".into(),
            ));
        }
        self.vms
            .cancel_migration(&m.vm_id, "cancelled through the API")
            .await?;
        Ok(self.vms.registry().migration(id).unwrap_or(m))
    }

    /// Waits until migration `id` reaches a final state (or `timeout`).
    pub(super) async fn wait_migration(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Option<MigrationInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.vms.registry().migration(id) {
                Some(m) if m.state.is_final() => return Some(m),
                None => return None,
                Some(_) if tokio::time::Instant::now() >= deadline => return None,
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Runs incoming migrations as they complete their handshake.
    pub(super) async fn take_incoming(self: Arc<Self>, mut rx: mpsc::Receiver<IncomingMigration>) {
        while let Some(incoming) = rx.recv().await {
            let me = self.clone();
            tokio::spawn(async move {
                let vm = incoming.offer.vm_id.clone();
                let session = incoming.offer.session;
                if let Err(e) = me.vms.receive(incoming).await {
                    tracing::warn!(%vm, error = %e, "incoming migration failed");
                }
                // Recorded by now (and running, or ended): its record counts, not the offer.
                me.release_offer(&session);
            });
        }
    }

    /// Starts draining (once): every active VM moves away, or is snapshotted when the
    /// deadline passes or no peer takes it.
    pub fn start_drain(&self, deadline: Duration) {
        let Some(me) = self.myself.get().and_then(Weak::upgrade) else {
            return;
        };
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.bus.publish(NodeEvent::Draining {
            deadline_s: deadline.as_secs(),
        });
        tokio::spawn(async move {
            me.evacuate(deadline, "the node is draining").await;
        });
    }

    /// Moves every active VM away (by its migration policy, to the best peer that takes
    /// it), in parallel; a VM that cannot move, or is still here at `deadline`, is
    /// snapshotted and stopped. Returns when no VM is active here.
    pub(super) async fn evacuate(self: &Arc<Self>, deadline: Duration, why: &str) {
        self.evacuate_vms(self.vms.active(), deadline, why).await;
    }

    /// Moves `vms` away as the evacuation planner ([`Evacuation`]) says: starts their
    /// migrations, cancels the ones that take too long, parks what cannot move or is still
    /// here at `deadline`. Returns once each moved or was parked.
    pub(super) async fn evacuate_vms(
        self: &Arc<Self>,
        vms: Vec<VmInfo>,
        deadline: Duration,
        why: &str,
    ) {
        tracing::info!(n = vms.len(), why, "moving VMs away");
        let epoch = Epoch::start();
        let mut plan = Evacuation::new(&vms, Duration::ZERO, deadline);
        let (tx, mut reports) = mpsc::unbounded_channel::<Report>();
        let mut parks = tokio::task::JoinSet::new();
        loop {
            for action in plan.poll(epoch.now()) {
                match action {
                    Action::Migrate { vm, mode } => {
                        tokio::spawn(self.clone().attempt_move(vm, mode, tx.clone()));
                    }
                    Action::Cancel { vm, .. } => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let _ = me.vms.cancel_migration(&vm, "took too long").await;
                        });
                    }
                    Action::Park { vm } => {
                        let me = self.clone();
                        parks.spawn(async move { me.park(&vm).await });
                    }
                }
            }
            // None once every VM moved or was parked.
            let Some(next) = plan.next_deadline() else {
                break;
            };
            tokio::select! {
                Some(report) = reports.recv() => match report {
                    Report::Started { vm, migration } => {
                        plan.started(&vm, &migration, epoch.now())
                    }
                    Report::Refused { vm } => plan.refused(&vm),
                    Report::Ended { vm, migration, moved } => plan.ended(&vm, &migration, moved),
                },
                _ = tokio::time::sleep_until(epoch.instant(next)) => {}
            }
        }
        while parks.join_next().await.is_some() {}
    }

    /// One try at moving `vm` by `mode` to the best peer that takes it, reported to the
    /// evacuation as it starts and ends.
    async fn attempt_move(
        self: Arc<Self>,
        vm: String,
        mode: MigrationMode,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let request = MigrationRequest {
            to: "auto".into(),
            mode,
            downtime_budget_ms: None,
        };
        let started = match self.migrate_vm(&vm, request).await {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(%vm, ?mode, error = %e, "no peer took the VM");
                let _ = reports.send(Report::Refused { vm });
                return;
            }
        };
        let _ = reports.send(Report::Started {
            vm: vm.clone(),
            migration: started.id.clone(),
        });
        // The evacuation cancels it when it takes too long; this waits for its end.
        let ended = self.wait_migration(&started.id, ATTEMPT_WAIT_LIMIT).await;
        let moved = ended
            .as_ref()
            .is_some_and(|m| m.state == MigrationState::Done);
        if let Some(m) = ended.filter(|_| !moved) {
            tracing::info!(%vm, ?mode, error = ?m.error, "did not move");
        }
        let _ = reports.send(Report::Ended {
            vm,
            migration: started.id,
            moved,
        });
    }

    /// Snapshots a VM that must leave but cannot move, and stops it here (it resumes when
    /// the node may run it again).
    pub(super) async fn park(&self, vm_id: &str) {
        let Some(vm) = self.vms.get(vm_id) else {
            return;
        };
        if vm.state == VmState::Migrating {
            let _ = self
                .vms
                .cancel_migration(vm_id, "the deadline passed")
                .await;
            let _ = self
                .vms
                .wait_state(vm_id, |s| s != VmState::Migrating, Duration::from_secs(30))
                .await;
        }
        let Some(vm) = self.vms.get(vm_id) else {
            return;
        };
        if !vm.state.is_active() {
            return;
        }
        if let Some(peer) = self.vms.in_doubt_with(vm_id) {
            // A snapshot would come back running when the node may run VMs again, while
            // the peer may run it already: it stays paused for an operator.
            tracing::warn!(vm = vm_id, %peer, "not parked: paused after a migration in doubt");
            return;
        }
        match self.vms.suspend(vm_id).await {
            Ok(_) => tracing::info!(vm = vm_id, "snapshotted and stopped until allowed again"),
            Err(e) => {
                tracing::error!(vm = vm_id, error = %e, "cannot snapshot the VM; stopping it");
                let _ = self.vms.stop(vm_id).await;
            }
        }
    }
}

/// How long the source waits for the peer to say a restarted process runs there.
const RESTART_CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the destination's one-byte answer after a cold restart (1: it runs there).
fn read_confirm(mut control: std::os::unix::net::UnixStream) -> Result<(), String> {
    use std::io::Read;
    control
        .set_read_timeout(Some(RESTART_CONFIRM_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    match control.read_exact(&mut answer) {
        Ok(()) if answer[0] == RESTARTED => Ok(()),
        Ok(()) => Err("the peer could not start the command".into()),
        Err(e) => Err(format!("no answer from the peer: {e}")),
    }
}
