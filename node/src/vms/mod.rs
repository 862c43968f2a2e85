//! The node's VMs: starting them in jailed VMM processes, supervising them, checkpointing
//! them, and accounting for every one of them across daemon restarts.
//!
//! Each VM has a directory `<dataDir>/vms/<id>/` ([`paths::VmPaths`]: console, checkpoints,
//! adoption socket, tombstone) and a row in the state database written before its VMM starts,
//! so a daemon killed at any moment finds every VM it ever started ([`recovery`]).

pub mod events;
pub mod in_doubt;
pub mod paths;
pub mod process_backend;
mod process_supervisor;
pub mod recovery;
pub mod registry;
pub mod spec;
mod supervisor;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::unix::net::UnixStream;

use novacron_vm::process::control::{
    AdoptedState, Event, Launch, LaunchSource, MigrateOut, SandboxSettings,
};
use novacron_vm::process::launcher::{describe_reason, VmmProcess};
use tokio::sync::oneshot;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{
    now_ms, Backend, MigrationDirection, MigrationInfo, MigrationState, VmInfo, VmSpec, VmState,
};
use crate::mesh_migration::IncomingMigration;
use crate::state::VmRecord;

use paths::VmPaths;
use process_backend::ProcessVm;
use process_supervisor::ProcessSupervisor;
use recovery::{Found, Plan};
use registry::Registry;
use supervisor::{Cmd, Supervisor};

/// How long a VMM may take to build its machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a VM migrating in may take from its streams to running here.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a restarted daemon asks a VMM that a migration keeps busy to be adopted.
const MIGRATING_ADOPT_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct VmOptions {
    /// The novacron binary (it runs the VMM as `novacron vmm`).
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    /// Jail the VMMs (off only for measurements).
    pub sandbox: bool,
    /// Checkpoint running VMs this often (BOINC's default checkpoint interval is 60 s).
    pub checkpoint_every: Option<Duration>,
    /// Tells this node's VMMs from other nodes' on the same host: 8 hex digits, e.g. of
    /// the node's PeerId ([`host_tag`]).
    pub host_tag: String,
    /// The only directories a spec's kernel and initrd may come from (absolute).
    pub image_dirs: Vec<PathBuf>,
    /// VMs outlive the daemon: a daemon that exits or is killed leaves their VMMs and jails
    /// running for its next start to adopt. False (`novacron node --ephemeral`): they die
    /// with it — stopped when it exits, killed by the kernel if it dies.
    pub outlive_node: bool,
}

/// A node's tag for its VMM names: 8 hex digits of blake3 of `seed` (its PeerId).
pub fn host_tag(seed: &[u8]) -> String {
    crate::hex::to_hex(&blake3::hash(seed).as_bytes()[..4])
}

/// What a starting daemon found (see [`recovery`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveryReport {
    pub adopted: Vec<String>,
    pub restored: Vec<String>,
    /// VMs that ended while the daemon was down, with their new state.
    pub ended: Vec<(String, VmState)>,
}

pub struct VmManager {
    opts: VmOptions,
    registry: Arc<Registry>,
    /// The command channel of each supervised VM.
    handles: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
    /// Supervisor threads still running, by VM (each holds a [`SupervisorGuard`]).
    supervisors: Supervised,
}

/// How many supervisor threads run for each VM.
type Supervised = Arc<Mutex<HashMap<String, usize>>>;

/// Counts a supervisor thread of a VM as running until it ends.
struct SupervisorGuard {
    running: Supervised,
    id: String,
}

impl SupervisorGuard {
    fn new(running: &Supervised, id: &str) -> SupervisorGuard {
        *lock(running).entry(id.to_string()).or_default() += 1;
        SupervisorGuard {
            running: running.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(n) = running.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.id);
            }
        }
    }
}

/// Files of removed VMs are moved to `<dataDir>/vms/<this><id>-<ms>` first (at once, under
/// the name no VM can have), then deleted; a start deletes any a crash left.
const REMOVED_PREFIX: &str = ".removed-";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The guest's console file, appended to across restores, adoptions and migrations in.
fn open_console(paths: &VmPaths) -> Result<Stdio, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.console())
        .map(Stdio::from)
        .map_err(|e| format!("cannot open {}: {e}", paths.console().display()))
}

/// The record of a VM about to start here.
fn starting_record(id: &str, spec: VmSpec, detail: Option<String>) -> VmRecord {
    let now = now_ms();
    VmRecord {
        info: VmInfo {
            id: id.to_string(),
            spec,
            state: VmState::Starting,
            detail,
            pid: None,
            created_at_ms: now,
            updated_at_ms: now,
            snapshot_at_ms: None,
            last_report: None,
            adoptions: 0,
        },
        pid_start_ticks: None,
    }
}

/// What adopting a VM's VMM came to.
enum Adoption {
    /// Its VM runs (or waits paused) under a supervisor again.
    Supervised,
    /// Its VM had ended (how, if it said): the VMM exited.
    Ended(Option<novacron_vm::process::control::ExitReason>),
}

/// Removes and returns the first item of `items` that `pick` accepts.
fn take_first<T>(items: &mut Vec<T>, pick: impl Fn(&T) -> bool) -> Option<T> {
    let at = items.iter().position(pick)?;
    Some(items.remove(at))
}

/// A fresh VM id: 16 hex digits of randomness.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = now_ms().to_le_bytes();
    }
    crate::hex::to_hex(&bytes)
}

impl VmManager {
    pub fn new(opts: VmOptions, registry: Arc<Registry>) -> Arc<VmManager> {
        Arc::new(VmManager {
            opts,
            registry,
            handles: Mutex::new(HashMap::new()),
            supervisors: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The name of VM `id`'s VMM on this host (its cgroup is named after it): the VM id and
    /// this node's tag, so two nodes on one host (tests, the demo) never share a cgroup
    /// while a VM moves between them.
    pub fn vmm_id(&self, id: &str) -> String {
        format!("{id}-{}", self.opts.host_tag)
    }

    fn paths(&self, id: &str) -> VmPaths {
        VmPaths::new(&self.opts.data_dir, id)
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.registry.vm_infos()
    }

    pub fn get(&self, id: &str) -> Option<VmInfo> {
        self.registry.vm(id).map(|r| r.info)
    }

    /// The peer that may run VM `id`, if the VM is paused here because its last migration
    /// ended in doubt. Nothing automatic may then move, park or resume it: only an operator
    /// who checked that peer decides (resume or stop it).
    pub fn in_doubt_with(&self, id: &str) -> Option<String> {
        let vm = self.registry.vm(id)?;
        if vm.info.state != VmState::Paused {
            return None;
        }
        self.last_outgoing_migration(id)
            .filter(in_doubt::in_doubt)
            .map(|m| m.peer)
    }

    /// The newest migration of VM `id` away from this node.
    fn last_outgoing_migration(&self, id: &str) -> Option<MigrationInfo> {
        self.registry
            .migrations()
            .into_iter()
            .filter(|m| m.vm_id == id && m.direction == MigrationDirection::Out)
            .max_by_key(|m| m.started_at_ms)
    }

    /// VMs that occupy this node now.
    pub fn active(&self) -> Vec<VmInfo> {
        self.list()
            .into_iter()
            .filter(|v| v.state.is_active())
            .collect()
    }

    /// Checks a spec completely ([`spec::check`]) before anything is recorded: 400 naming
    /// the field. Returns the spec to record.
    pub async fn check(&self, spec: VmSpec) -> ServiceResult<VmSpec> {
        let image_dirs = self.opts.image_dirs.clone();
        tokio::task::spawn_blocking(move || spec::check(spec, &image_dirs))
            .await
            .map_err(|e| ServiceError::Internal(format!("spec check task: {e}")))?
            .map_err(ServiceError::BadRequest)
    }

    /// Records a new VM of a checked spec (starting); returns its id. The row exists
    /// before the VMM does: a daemon killed in between finds it.
    pub fn record_new(&self, spec: VmSpec) -> ServiceResult<String> {
        let id = new_id();
        self.registry.insert(starting_record(&id, spec, None))?;
        Ok(id)
    }

    /// Starts a VM [recorded](Self::record_new); answers once its machine is built and
    /// running (a VMM that fails leaves the VM failed, saying why).
    pub async fn start_new(self: &Arc<Self>, id: &str) -> ServiceResult<VmInfo> {
        self.start_recorded(id, false).await
    }

    /// Starts VM `id` (from its checkpoint when `restore`) off the async threads; a start
    /// that fails leaves a new VM failed and a restored one suspended, saying why.
    async fn start_recorded(self: &Arc<Self>, id: &str, restore: bool) -> ServiceResult<VmInfo> {
        let me = self.clone();
        let vm_id = id.to_string();
        let started = tokio::task::spawn_blocking(move || me.start_vm(&vm_id, restore))
            .await
            .map_err(|e| ServiceError::Internal(format!("VM start task: {e}")))?;
        if let Err(e) = started {
            let (state, detail, what) = match restore {
                false => (VmState::Failed, e.clone(), "start"),
                true => (
                    VmState::Suspended,
                    format!("could not resume: {e}"),
                    "resume",
                ),
            };
            self.registry.update(id, |r| {
                r.info.state = state;
                r.info.detail = Some(detail);
            });
            return Err(ServiceError::Internal(format!(
                "VM {id} did not {what}: {e}"
            )));
        }
        self.info(id)
    }

    /// Starts VM `id` by its backend; `restore`: a KVM VM from its checkpoint, a process
    /// from scratch (it has no memory snapshot). Blocking.
    fn start_vm(&self, id: &str, restore: bool) -> Result<(), String> {
        let record = self.registry.vm(id).ok_or_else(|| format!("no VM {id}"))?;
        match record.info.spec.backend {
            Backend::Kvm => self.start_vmm(id, restore),
            Backend::Process => self.start_process(id, restore),
        }
    }

    /// Starts a process-backend VM's jailed command and hands it to a supervisor thread.
    fn start_process(&self, id: &str, restart: bool) -> Result<(), String> {
        let record = self.registry.vm(id).ok_or_else(|| format!("no VM {id}"))?;
        let paths = self.paths(id);
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| format!("cannot create {}: {e}", paths.dir.display()))?;
        let _ = std::fs::remove_file(paths.dir.join(process_backend::STATUS_FILE));
        let process = ProcessVm::spawn(
            &self.opts.exe,
            &self.vmm_id(id),
            &paths.dir,
            &record.info.spec,
            self.opts.outlive_node,
        )?;
        let (pid, ticks) = (process.pid(), process.start_ticks());
        self.supervise_process(id, process, |r| {
            r.info.pid = Some(pid);
            r.pid_start_ticks = Some(ticks);
            r.info.state = VmState::Running;
            r.info.detail = restart.then(|| {
                "restarted from scratch (the process backend has no snapshots)".to_string()
            });
        });
        Ok(())
    }

    /// As [`supervise`](Self::supervise), for a process-backend VM.
    fn supervise_process(&self, id: &str, process: ProcessVm, mark: impl FnOnce(&mut VmRecord)) {
        let (tx, rx) = mpsc::channel();
        lock(&self.handles).insert(id.to_string(), tx);
        self.registry.update(id, mark);
        let sup = ProcessSupervisor {
            id: id.to_string(),
            process,
            registry: self.registry.clone(),
            outlive_node: self.opts.outlive_node,
        };
        let guard = SupervisorGuard::new(&self.supervisors, id);
        if let Err(e) = std::thread::Builder::new()
            .name(format!("proc-{id}"))
            .spawn(move || {
                let _running = guard;
                sup.run(rx)
            })
        {
            tracing::error!(vm = id, error = %e, "cannot start the VM's supervisor thread");
        }
    }

    /// Spawns the VMM of VM `id` (from its spec, or from its checkpoint when `restore`),
    /// waits until it runs and hands it to a supervisor thread. Blocking.
    fn start_vmm(&self, id: &str, restore: bool) -> Result<(), String> {
        let record = self.registry.vm(id).ok_or_else(|| format!("no VM {id}"))?;
        let spec = &record.info.spec;
        let paths = self.paths(id);
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| format!("cannot create {}: {e}", paths.dir.display()))?;
        let source = if restore {
            LaunchSource::Restore {
                dir: paths.snapshot(),
            }
        } else {
            spec::launch_source(spec)?
        };
        let launch = Launch {
            vm_id: self.vmm_id(id),
            source,
            mem_bytes: spec.mem_mib << 20,
            vcpus: spec.vcpus,
            // A restored VM has its memory from the checkpoint.
            fill_pattern: spec
                .prefill_mib
                .filter(|_| !restore)
                .map(|mib| (novacron_vm::machine::layout::PATTERN_BASE, mib << 20)),
            start_paused: false,
            sandbox: self.sandbox_settings(&paths),
            adopt: self.adopt_socket(&paths),
        };
        let console = open_console(&paths)?;
        let mut vmm =
            VmmProcess::spawn(&self.opts.exe, &launch, console).map_err(|e| e.to_string())?;
        let pid = vmm.pid();
        let ticks = vmm.start_ticks();
        self.registry.update(id, |r| {
            r.info.pid = Some(pid);
            r.pid_start_ticks = ticks;
        });
        vmm.wait_ready(READY_TIMEOUT).map_err(|e| e.to_string())?;
        self.supervise(id, vmm, |r| {
            r.info.state = VmState::Running;
            if restore {
                r.info.detail = Some("restored from its last checkpoint".into());
            }
        });
        Ok(())
    }

    /// Where a VM's VMM can be adopted, when VMs outlive the node (else the VMM dies with
    /// it: [`novacron_vm::process::child_lifetime`]).
    fn adopt_socket(&self, paths: &VmPaths) -> Option<PathBuf> {
        self.opts.outlive_node.then(|| paths.control_socket())
    }

    /// The jail of a VM's VMM: it may write only its own directory (checkpoints, tombstone).
    fn sandbox_settings(&self, paths: &VmPaths) -> SandboxSettings {
        SandboxSettings {
            enabled: self.opts.sandbox,
            writable_dirs: vec![paths.dir.clone()],
            memory_limit_bytes: None,
            cpu_limit: None,
            nice: Some(crate::politeness::VM_NICE),
        }
    }

    /// Hands the VMM to a supervisor thread. `mark` updates the VM's record once commands
    /// can reach the supervisor and before it handles any event, so a request that sees
    /// the new state always finds the VM supervised.
    fn supervise(&self, id: &str, vmm: VmmProcess, mark: impl FnOnce(&mut VmRecord)) {
        let (tx, rx) = mpsc::channel();
        lock(&self.handles).insert(id.to_string(), tx);
        self.registry.update(id, mark);
        let sup = Supervisor {
            id: id.to_string(),
            vmm,
            registry: self.registry.clone(),
            paths: self.paths(id),
            checkpoint_every: self.opts.checkpoint_every,
        };
        let name = format!("vm-{id}");
        let guard = SupervisorGuard::new(&self.supervisors, id);
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || {
            let _running = guard;
            sup.run(rx)
        }) {
            tracing::error!(vm = id, error = %e, "cannot start the VM's supervisor thread");
        }
    }

    /// Sends a command to a VM's supervisor and waits for its answer.
    async fn ask(
        &self,
        id: &str,
        make: impl FnOnce(supervisor::Reply) -> Cmd,
    ) -> ServiceResult<()> {
        let tx = lock(&self.handles)
            .get(id)
            .cloned()
            .ok_or_else(|| match self.get(id) {
                Some(vm) => ServiceError::Conflict(format!(
                    "VM {id} is {}: it has no running VMM",
                    vm.state.as_str()
                )),
                None => ServiceError::NotFound(format!("no VM {id}")),
            })?;
        let (reply, answer) = oneshot::channel();
        if tx.send(make(reply)).is_err() {
            // Its supervisor is gone: the VMM ended. Forget the channel.
            lock(&self.handles).remove(id);
            let state = self.get(id).map_or("gone", |v| v.state.as_str());
            return Err(ServiceError::Conflict(format!(
                "VM {id} is {state}: it has no running VMM"
            )));
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Conflict(format!("VM {id}: {e}"))),
            Err(_) => Err(ServiceError::Conflict(format!("VM {id} ended meanwhile"))),
        }
    }

    fn info(&self, id: &str) -> ServiceResult<VmInfo> {
        self.get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))
    }

    pub async fn pause(&self, id: &str) -> ServiceResult<VmInfo> {
        self.ask(id, Cmd::Pause).await?;
        self.info(id)
    }

    /// Resumes a paused VM (a suspended one comes back through the daemon's admission).
    pub async fn resume(self: &Arc<Self>, id: &str) -> ServiceResult<VmInfo> {
        let in_doubt = self.in_doubt_with(id).is_some();
        self.ask(id, Cmd::Resume).await?;
        if in_doubt {
            self.record_operator_resolution(id);
        }
        self.info(id)
    }

    /// Marks the in-doubt end of VM `id`'s last migration as settled by an operator who
    /// resumed the VM here, so a later pause does not make it look in doubt again.
    fn record_operator_resolution(&self, id: &str) {
        if let Some(m) = self.last_outgoing_migration(id) {
            self.registry.update_migration(&m.id, true, |m| {
                let was = m.error.take().unwrap_or_default();
                m.error = Some(format!("resumed here by an operator after: {was}"));
                m.ended_at_ms = Some(now_ms());
            });
        }
    }

    /// Stops a VM; answers once its VMM has exited.
    pub async fn stop(&self, id: &str) -> ServiceResult<VmInfo> {
        let vm = self.info(id)?;
        if vm.state == VmState::Suspended {
            let vm = self
                .registry
                .update(id, |r| {
                    r.info.state = VmState::Exited;
                    r.info.detail = Some("stopped on request while suspended".into());
                })
                .map(|r| r.info);
            return vm.ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")));
        }
        if vm.state == VmState::Migrating {
            return Err(ServiceError::Conflict(format!(
                "VM {id} is migrating: cancel the migration first"
            )));
        }
        self.ask(id, Cmd::Stop).await?;
        self.wait_state(id, |s| !s.is_active(), Duration::from_secs(30))
            .await
    }

    /// Removes the record of a VM that ended (exited, failed, moved away), and moves its
    /// files out of the way; returns where they went, for [`dispose`](Self::dispose). Only
    /// once its supervisor has reaped its VMM (else 409: try again).
    pub fn remove_ended(&self, id: &str) -> ServiceResult<Option<PathBuf>> {
        if lock(&self.supervisors).contains_key(id) {
            return Err(ServiceError::Conflict(format!(
                "VM {id} has ended but its VMM is still being reaped: try again in a moment"
            )));
        }
        let dir = self.paths(id).dir;
        let trash = dir.with_file_name(format!("{REMOVED_PREFIX}{id}-{}", now_ms()));
        let moved = match std::fs::rename(&dir, &trash) {
            Ok(()) => Some(trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ServiceError::Internal(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                )))
            }
        };
        if let Err(e) = self.registry.remove_ended(id) {
            // Not removable after all: its files go back.
            if let Some(t) = &moved {
                if let Err(back) = std::fs::rename(t, &dir) {
                    tracing::error!(vm = id, error = %back, "cannot put the VM's files back");
                }
            }
            return Err(e);
        }
        lock(&self.handles).remove(id);
        Ok(moved)
    }

    /// Deletes the files [`remove_ended`](Self::remove_ended) moved away (logged if it
    /// cannot; the next start tries again).
    pub async fn dispose(&self, moved: Option<PathBuf>) {
        let Some(dir) = moved else { return };
        let deleted = tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("removal task: {e}")));
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "cannot delete a removed VM's files");
        }
    }

    /// Deletes the files of VMs removed before a crash (blocking, at start).
    fn sweep_removed(&self) {
        let vms = self.opts.data_dir.join(paths::VMS_DIR);
        let Ok(entries) = std::fs::read_dir(&vms) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(REMOVED_PREFIX))
            {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot delete a removed VM's files");
                }
            }
        }
    }

    /// Snapshots the VM and stops its VMM; it waits on disk ([`VmState::Suspended`]).
    pub async fn suspend(&self, id: &str) -> ServiceResult<VmInfo> {
        self.ask(id, Cmd::Suspend).await?;
        self.wait_state(id, |s| !s.is_active(), Duration::from_secs(30))
            .await
    }

    /// Marks a suspended VM as starting again (so it counts against the node's capacity
    /// from now on); [`start_claimed`](Self::start_claimed) then restores it.
    pub fn claim_suspended(&self, id: &str) -> ServiceResult<VmInfo> {
        let vm = self.info(id)?;
        if vm.state != VmState::Suspended {
            return Err(ServiceError::Conflict(format!(
                "VM {id} is {}, not suspended",
                vm.state.as_str()
            )));
        }
        self.registry
            .update(id, |r| r.info.state = VmState::Starting)
            .map(|r| r.info)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))
    }

    /// Restores a [claimed](Self::claim_suspended) VM from its snapshot; one that does not
    /// come back is suspended again, saying why.
    pub async fn start_claimed(self: &Arc<Self>, id: &str) -> ServiceResult<VmInfo> {
        self.start_recorded(id, true).await
    }

    /// Waits until the VM's state passes `done` (polling the registry).
    pub async fn wait_state(
        &self,
        id: &str,
        done: impl Fn(VmState) -> bool,
        timeout: Duration,
    ) -> ServiceResult<VmInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let vm = self.info(id)?;
            if done(vm.state) {
                return Ok(vm);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::Internal(format!(
                    "VM {id} is still {} after {timeout:?}",
                    vm.state.as_str()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accounts for every VM the database lists (see [`recovery`]). Blocking; run once at
    /// start, before the API takes requests.
    pub fn recover(&self) -> RecoveryReport {
        self.sweep_removed();
        let mut report = RecoveryReport::default();
        // Every migration still open was left so by the dead daemon (or by an earlier
        // recovery that could not tell whether the VM started here: still nobody can).
        let mut open: Vec<MigrationInfo> = self
            .registry
            .migrations()
            .into_iter()
            .filter(|m| m.state == MigrationState::Running)
            .filter(|m| !(m.direction == MigrationDirection::In && m.error.is_some()))
            .collect();
        for record in self.registry.vms() {
            let id = record.info.id.clone();
            let paths = self.paths(&id);
            let alive = record
                .info
                .pid
                .is_some_and(|pid| recovery::same_process(pid, record.pid_start_ticks));
            let process = record.info.spec.backend == Backend::Process;
            let ended = |paths: &VmPaths| match process {
                true => recovery::read_process_status(paths),
                false => recovery::read_tombstone(paths),
            };
            // A process can always start again from scratch; a KVM VM needs its checkpoint.
            let restorable = process || paths.has_snapshot();
            // The migration of this VM left open, if the VM is still arriving or leaving (a
            // VM recorded as neither never got a VMM for it: settled below).
            let migration = match record.info.state.is_active() {
                true => take_first(&mut open, |m| m.vm_id == id),
                false => None,
            };
            let migrating_in = migration
                .as_ref()
                .filter(|m| m.direction == MigrationDirection::In)
                .map(|m| m.peer.clone());
            let plan_for =
                |found: &Found| recovery::plan(&record, found, restorable, migrating_in.as_deref());
            let mut found = recovery::found(
                alive,
                record.info.pid.is_some(),
                (!alive).then(|| ended(&paths)).flatten(),
            );
            let mut plan = plan_for(&found);
            if plan == Plan::Adopt {
                let adopted = match process {
                    true => self.adopt_process(&record, &paths),
                    false => self.adopt_patiently(&record, &paths),
                };
                match adopted {
                    Ok(Adoption::Supervised) => {
                        self.settle_open_migration(&record, &found, migration.as_ref());
                        report.adopted.push(id);
                        continue;
                    }
                    Ok(Adoption::Ended(reason)) => {
                        // It only waited to say how the VM ended: as good as its tombstone.
                        found = Found::Gone(reason.or_else(|| ended(&paths)));
                        plan = plan_for(&found);
                    }
                    Err(e) => {
                        tracing::warn!(vm = %id, error = %e, "cannot adopt its VMM; killing it");
                        recovery::kill_leftovers(
                            &self.vmm_id(&id),
                            record.info.pid,
                            record.pid_start_ticks,
                        );
                        found = Found::Gone(ended(&paths));
                        plan = plan_for(&found);
                    }
                }
            }
            self.settle_open_migration(&record, &found, migration.as_ref());
            match plan {
                Plan::Keep => {
                    // Its end is on record: a VMM still there (one that waits to tell how
                    // its VM ended, or a suspended VM's) has nothing left to run.
                    recovery::kill_leftovers(
                        &self.vmm_id(&id),
                        record.info.pid,
                        record.pid_start_ticks,
                    );
                }
                Plan::Adopt => {}
                Plan::Restore => {
                    recovery::kill_leftovers(&self.vmm_id(&id), None, None);
                    match self.start_vm(&id, true) {
                        Ok(()) => report.restored.push(id),
                        Err(e) => {
                            self.registry.update(&id, |r| {
                                r.info.state = VmState::Failed;
                                r.info.pid = None;
                                r.info.detail =
                                    Some(format!("could not restore its checkpoint: {e}"));
                            });
                            report.ended.push((id, VmState::Failed));
                        }
                    }
                }
                Plan::Ended { state, detail } => {
                    recovery::kill_leftovers(&self.vmm_id(&id), None, None);
                    self.registry.update(&id, |r| {
                        r.info.state = state;
                        r.info.detail = Some(detail);
                        r.info.pid = None;
                        r.pid_start_ticks = None;
                    });
                    report.ended.push((id, state));
                }
            }
        }
        for m in open {
            let vm = self.registry.vm(&m.vm_id).map(|r| r.info.state);
            let settled = recovery::settle_without_vmm(m.direction, vm);
            self.record_settled(&m, &settled);
        }
        report
    }

    /// Settles the migration of the VM of `record` that the dead daemon left open
    /// ([`recovery::settle`]), after the VM itself was accounted for.
    fn settle_open_migration(
        &self,
        record: &VmRecord,
        found: &Found,
        migration: Option<&MigrationInfo>,
    ) {
        let Some(migration) = migration else { return };
        let id = &record.info.id;
        let adopted_as = matches!(found, Found::Alive)
            .then(|| self.registry.vm(id).map(|r| r.info.state))
            .flatten();
        let settled = recovery::settle(
            migration.direction,
            found,
            record.info.state,
            adopted_as,
            &migration.peer,
        );
        self.record_settled(migration, &settled);
        if let (recovery::Settled::Failed(why), Some(VmState::Paused)) = (&settled, adopted_as) {
            self.registry
                .update(id, |r| r.info.detail = Some(format!("migration {why}")));
        }
    }

    /// Records how a migration left open or in doubt ended.
    fn record_settled(&self, migration: &MigrationInfo, settled: &recovery::Settled) {
        tracing::info!(vm = %migration.vm_id, migration = %migration.id, ?settled, "migration settled");
        self.registry
            .update_migration(&migration.id, true, |m| match settled {
                recovery::Settled::Done => {
                    m.state = MigrationState::Done;
                    m.ended_at_ms = Some(now_ms());
                    m.error = None;
                }
                recovery::Settled::Failed(why) => {
                    m.state = MigrationState::Failed;
                    m.ended_at_ms = Some(now_ms());
                    m.error = Some(why.clone());
                }
                recovery::Settled::Open(why) => m.error = Some(why.clone()),
            });
    }

    /// This node's migrations in doubt (each the newest outgoing one of its VM), with what
    /// is here of the VM ([`in_doubt`]).
    pub fn in_doubt_here(&self) -> Vec<(MigrationInfo, in_doubt::Here)> {
        let mut found = Vec::new();
        for vm in self.registry.vm_infos() {
            let Some(m) = self
                .last_outgoing_migration(&vm.id)
                .filter(in_doubt::in_doubt)
            else {
                continue;
            };
            let here = match vm.state {
                VmState::Paused => in_doubt::Here::Paused,
                VmState::Running => in_doubt::Here::Running,
                state if state.is_active() => in_doubt::Here::Busy,
                state => {
                    let paths = self.paths(&vm.id);
                    in_doubt::Here::NoVmm {
                        tombstone: recovery::read_tombstone(&paths),
                        died: state == VmState::Failed,
                        restorable: paths.has_snapshot(),
                    }
                }
            };
            found.push((m, here));
        }
        found
    }

    /// Carries out how migration `m`, in doubt, settled ([`in_doubt::settle`]): the VM here
    /// first, then the record, so a daemon killed in between settles it again the same way.
    pub async fn settle_in_doubt(
        self: &Arc<Self>,
        m: &MigrationInfo,
        here: &in_doubt::Here,
        outcome: &in_doubt::Outcome,
    ) {
        use in_doubt::{Outcome, Then};
        let id = &m.vm_id;
        let settled = match outcome {
            Outcome::AskPeer | Outcome::StillInDoubt(_) => {
                tracing::info!(vm = %id, migration = %m.id, ?outcome, "migration still in doubt");
                return;
            }
            Outcome::MovedAway(why) => {
                let detail = format!("runs on {} (a migration in doubt settled: {why})", m.peer);
                if *here == in_doubt::Here::Paused {
                    // Its paused copy here goes: the VM runs there.
                    if let Err(e) = self.discard(id, detail).await {
                        tracing::warn!(vm = %id, error = %e, "cannot discard the copy here");
                        return;
                    }
                } else {
                    self.registry.update(id, |r| {
                        r.info.state = VmState::MovedAway;
                        r.info.detail = Some(detail);
                        r.info.pid = None;
                    });
                }
                recovery::Settled::Done
            }
            Outcome::RolledBack { why, then } => {
                let detail = format!("migration rolled back: {why}");
                match then {
                    Then::Resume => {
                        if let Err(e) = self.ask(id, Cmd::Resume).await {
                            tracing::warn!(vm = %id, error = %e, "cannot resume the VM");
                            return;
                        }
                        self.registry
                            .update(id, |r| r.info.detail = Some(detail.clone()));
                    }
                    Then::Restore => self.restore_after_doubt(id, &detail).await,
                    Then::Nothing => {}
                }
                recovery::Settled::Failed(format!("rolled back: {why}"))
            }
        };
        self.record_settled(m, &settled);
    }

    /// Brings VM `id` back from its checkpoint: its VMM died while its migration was in
    /// doubt, and the peer never started it.
    async fn restore_after_doubt(self: &Arc<Self>, id: &str, detail: &str) {
        recovery::kill_leftovers(&self.vmm_id(id), None, None);
        let me = self.clone();
        let vm_id = id.to_string();
        let restored = tokio::task::spawn_blocking(move || me.start_vm(&vm_id, true))
            .await
            .unwrap_or_else(|e| Err(format!("restore task: {e}")));
        self.registry.update(id, |r| match restored {
            Ok(()) => r.info.detail = Some(format!("{detail}; restored from its last checkpoint")),
            Err(e) => {
                r.info.state = VmState::Failed;
                r.info.pid = None;
                r.info.detail = Some(format!("{detail}; could not restore its checkpoint: {e}"));
            }
        });
    }

    /// Stops the VMM of VM `id`, which runs elsewhere now: its record says moved away, with
    /// `detail`. Answers once the VMM exited.
    async fn discard(&self, id: &str, detail: String) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::Discard { detail, reply }).await?;
        self.wait_state(id, |s| !s.is_active(), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Takes a process-backend VM's running command back (by pid and start time).
    fn adopt_process(&self, record: &VmRecord, paths: &VmPaths) -> Result<Adoption, String> {
        let id = &record.info.id;
        let pid = record.info.pid.ok_or("no pid recorded")?;
        let ticks = record.pid_start_ticks.ok_or("no start time recorded")?;
        let process = ProcessVm::adopt(&self.vmm_id(id), &paths.dir, pid, ticks)?;
        self.supervise_process(id, process, |r| r.info.adoptions += 1);
        Ok(Adoption::Supervised)
    }

    /// [`adopt`](Self::adopt), asked again while the VMM lives and a migration keeps it
    /// busy: a VMM answers adoption only once its migration ended, which its owner's death
    /// cuts short at the VMM's next look at its inputs, but one busy with a round on a loaded
    /// host may take longer than one try. Giving up would kill what may be the VM's only copy.
    fn adopt_patiently(&self, record: &VmRecord, paths: &VmPaths) -> Result<Adoption, String> {
        let migrating = matches!(record.info.state, VmState::Migrating | VmState::Starting);
        let deadline = std::time::Instant::now() + MIGRATING_ADOPT_PATIENCE;
        loop {
            match self.adopt(record, paths) {
                Err(e)
                    if migrating
                        && std::time::Instant::now() < deadline
                        && record.info.pid.is_some_and(|pid| {
                            recovery::same_process(pid, record.pid_start_ticks)
                        }) =>
                {
                    tracing::warn!(vm = %record.info.id, error = %e, "its VMM is busy migrating; asking again");
                }
                adopted => return adopted,
            }
        }
    }

    /// Takes a running VMM back through its adoption socket. A VMM whose VM ended while
    /// nobody owned it only says how, and is let exit.
    fn adopt(&self, record: &VmRecord, paths: &VmPaths) -> Result<Adoption, String> {
        let id = &record.info.id;
        let pid = record.info.pid.ok_or("no pid recorded")?;
        let cgroup = self
            .opts
            .sandbox
            .then(|| novacron_vm::process::launcher::cgroup_name(&self.vmm_id(id)));
        let (mut vmm, adopted) =
            VmmProcess::adopt(&paths.control_socket(), pid, cgroup).map_err(|e| e.to_string())?;
        let state = match adopted.state {
            AdoptedState::Paused => VmState::Paused,
            AdoptedState::Running => VmState::Running,
            AdoptedState::Exited => {
                // It says how the VM ended next; told, it stops waiting for an owner and
                // exits (cut short, it would wait on).
                let told = vmm.wait_for(novacron_vm::process::launcher::ADOPT_TIMEOUT, |e| {
                    matches!(e, Event::Exited(_)).then_some(())
                });
                match told
                    .map_err(|e| e.to_string())
                    .and_then(|()| vmm.wait().map_err(|e| e.to_string()))
                {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(vm = %id, error = %e, "the ended VMM did not exit: killing it");
                        vmm.kill();
                    }
                }
                return Ok(Adoption::Ended(adopted.exit));
            }
        };
        self.supervise(id, vmm, |r| {
            r.info.adoptions += 1;
            r.info.last_report = adopted.last_guest.or(r.info.last_report);
            r.info.state = state;
        });
        Ok(Adoption::Supervised)
    }

    /// Hands `streams` (control first) to the VM's VMM and starts migrating it out; the
    /// supervisor records the migration's progress and end under `migration_id`.
    pub async fn migrate_out(
        &self,
        id: &str,
        cmd: MigrateOut,
        streams: Vec<UnixStream>,
        migration_id: &str,
        peer: &str,
        in_doubt: Option<supervisor::InDoubtSender>,
    ) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::MigrateOut {
            cmd: Box::new(cmd),
            streams,
            migration_id: migration_id.to_string(),
            peer: peer.to_string(),
            in_doubt,
            reply,
        })
        .await
    }

    /// Hands a migration in doubt new streams to the destination (control first), on which
    /// the VMM asks whether the VM started there.
    pub async fn reconnect_migration(
        &self,
        id: &str,
        session: [u8; 16],
        streams: Vec<UnixStream>,
    ) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::ReconnectMigration {
            session,
            streams,
            reply,
        })
        .await
    }

    pub async fn cancel_migration(&self, id: &str, reason: &str) -> ServiceResult<()> {
        let reason = reason.to_string();
        self.ask(id, |reply| Cmd::CancelMigration { reason, reply })
            .await
    }

    /// Runs a VM migrating in: records it (and the migration), starts a VMM on the streams
    /// and waits until the VM runs here. Blocking work runs off the async threads.
    pub async fn receive(self: &Arc<Self>, incoming: IncomingMigration) -> anyhow::Result<()> {
        let offer = incoming.offer.clone();
        let id = offer.vm_id.clone();
        let peer = incoming.peer.to_string();
        let now = now_ms();
        let migration = MigrationInfo {
            id: crate::hex::to_hex(&offer.session[..8]),
            vm_id: id.clone(),
            direction: MigrationDirection::In,
            peer: peer.clone(),
            mode: offer.mode,
            state: MigrationState::Running,
            started_at_ms: now,
            ended_at_ms: None,
            downtime_ms: None,
            wire_bytes: 0,
            error: None,
            progress: None,
        };
        self.registry.put_migration(migration.clone(), true);
        let record = starting_record(
            &id,
            offer.spec.clone(),
            Some(format!("migrating in from {peer}")),
        );
        // A VM that once ran here (and moved away) comes back under its old record.
        if self.registry.vm(&id).is_some() {
            let info = record.info.clone();
            self.registry.update(&id, |r| {
                r.info = VmInfo {
                    created_at_ms: r.info.created_at_ms,
                    ..info
                };
                r.pid_start_ticks = None;
            });
        } else {
            self.registry.insert(record)?;
        }
        if offer.spec.backend == Backend::Process {
            return self.receive_process(&id, &migration.id, incoming).await;
        }
        let me = self.clone();
        let session = offer.session;
        let (mem_bytes, vcpus) = (offer.mem_bytes, offer.vcpus);
        let vm_id = id.clone();
        let IncomingMigration {
            streams, bridges, ..
        } = incoming;
        let result = tokio::task::spawn_blocking(move || {
            me.start_incoming(&vm_id, session, mem_bytes, vcpus, &streams)
        })
        .await
        .map_err(|e| anyhow::anyhow!("incoming VM task: {e}"))?;
        match result {
            Ok(_) => {
                // What crossed the mesh (after the VMMs' framing, before noise and yamux).
                let wire_bytes = bridges.bytes_from_peer();
                self.registry.update_migration(&migration.id, true, |m| {
                    m.state = MigrationState::Done;
                    m.ended_at_ms = Some(now_ms());
                    m.wire_bytes = wire_bytes;
                });
                Ok(())
            }
            Err(e) => {
                self.registry.update_migration(&migration.id, true, |m| {
                    m.state = MigrationState::Failed;
                    m.ended_at_ms = Some(now_ms());
                    m.error = Some(e.clone());
                });
                self.registry.update(&id, |r| {
                    r.info.state = VmState::MovedAway;
                    r.info.detail = Some(format!(
                        "an incoming migration from {peer} failed ({e}); it runs there"
                    ));
                    r.info.pid = None;
                });
                Err(anyhow::anyhow!(e))
            }
        }
    }

    /// A process-backend VM moving in: its command starts here afresh, and the source hears
    /// one byte back (1: it runs here, 0: it could not start).
    async fn receive_process(
        self: &Arc<Self>,
        id: &str,
        migration_id: &str,
        incoming: IncomingMigration,
    ) -> anyhow::Result<()> {
        let me = self.clone();
        let vm_id = id.to_string();
        let started = tokio::task::spawn_blocking(move || me.start_process(&vm_id, false))
            .await
            .map_err(|e| anyhow::anyhow!("process start task: {e}"))?;
        let answer = [if started.is_ok() {
            crate::daemon::RESTARTED
        } else {
            0
        }];
        if let Some(mut control) = incoming.streams.into_iter().next() {
            use std::io::Write;
            let _ = control.write_all(&answer).and_then(|_| control.flush());
        }
        let state = if started.is_ok() {
            MigrationState::Done
        } else {
            MigrationState::Failed
        };
        self.registry.update_migration(migration_id, true, |m| {
            m.state = state;
            m.ended_at_ms = Some(now_ms());
            m.error = started.as_ref().err().cloned();
        });
        if let Err(e) = &started {
            self.registry.update(id, |r| {
                r.info.state = VmState::Failed;
                r.info.detail = Some(format!("could not start here: {e}"));
            });
        }
        started.map_err(anyhow::Error::msg)
    }

    /// Spawns the receiving VMM and waits until the VM runs; returns the wire bytes.
    fn start_incoming(
        &self,
        id: &str,
        session: [u8; 16],
        mem_bytes: u64,
        vcpus: u8,
        streams: &[UnixStream],
    ) -> Result<u64, String> {
        let paths = self.paths(id);
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| format!("cannot create {}: {e}", paths.dir.display()))?;
        let launch = Launch {
            vm_id: self.vmm_id(id),
            source: LaunchSource::Incoming {
                session,
                store: None,
                verify_memory: false,
            },
            mem_bytes,
            vcpus,
            fill_pattern: None,
            start_paused: false,
            sandbox: self.sandbox_settings(&paths),
            adopt: self.adopt_socket(&paths),
        };
        let console = open_console(&paths)?;
        let fds: Vec<std::os::fd::BorrowedFd<'_>> =
            streams.iter().map(std::os::fd::AsFd::as_fd).collect();
        let mut vmm = VmmProcess::spawn_with_streams(&self.opts.exe, &launch, console, &fds)
            .map_err(|e| e.to_string())?;
        let pid = vmm.pid();
        let ticks = vmm.start_ticks();
        self.registry.update(id, |r| {
            r.info.pid = Some(pid);
            r.pid_start_ticks = ticks;
        });
        let wire_bytes = vmm
            .wait_for(INCOMING_TIMEOUT, |e| match e {
                Event::MigratedIn { wire_bytes, .. } => Some(Ok(*wire_bytes)),
                Event::Exited(reason) => Some(Err(describe_reason(reason))),
                _ => None,
            })
            .map_err(|e| e.to_string())??;
        self.supervise(id, vmm, |r| {
            r.info.state = VmState::Running;
            r.info.detail = None;
        });
        Ok(wire_bytes)
    }

    /// Supervisor threads still running: a VMM that has moved away or stopped is reaped
    /// (and its cgroup removed) when its supervisor ends.
    pub fn supervised(&self) -> usize {
        lock(&self.supervisors).values().sum()
    }

    /// Waits up to `timeout` until no supervisor thread runs (each reaped its VMM or let go
    /// of it).
    pub async fn wait_unsupervised(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.supervised() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether VMs outlive the node ([`VmOptions::outlive_node`]).
    pub fn outlive_node(&self) -> bool {
        self.opts.outlive_node
    }

    /// Lets go of every VM as the daemon exits: the next start adopts them, or, when VMs do
    /// not outlive the node, their supervisors stop them (wait with [`supervised`](Self::supervised)).
    pub fn release_all(&self) {
        lock(&self.handles).clear();
    }
}
