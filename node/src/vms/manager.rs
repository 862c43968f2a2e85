//! The VM manager: the node's VMs' records, and the supervisor thread and command channel
//! of each VM whose VMM runs here. What it does with them is in the sibling files, one
//! concept each ([`lifecycle`](super::lifecycle), [`removal`](super::removal),
//! [`restart`](super::restart), [`adoption`](super::adoption),
//! [`outgoing`](super::outgoing), [`receive`](super::receive)).

pub(super) use novacron_mesh::util::lock;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use novacron_vm::process::control::SandboxSettings;
use novacron_vm::process::launcher::VmmProcess;
use tokio::sync::oneshot;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{now_ms, VmInfo, VmSpec, VmState};
use crate::state::VmRecord;

use super::paths::VmPaths;
use super::process_backend::ProcessVm;
use super::process_supervisor::ProcessSupervisor;
use super::registry::Registry;
use super::supervisor::{self, Cmd, Supervisor};

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
    novacron_mesh::util::hex::encode(&blake3::hash(seed).as_bytes()[..4])
}

pub struct VmManager {
    pub(super) opts: VmOptions,
    pub(super) registry: Arc<Registry>,
    /// The command channel of each supervised VM.
    pub(super) handles: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
    /// Supervisor threads still running, by VM (each holds a [`SupervisorGuard`]).
    pub(super) supervisors: Supervised,
    /// Where payload files come from (the daemon's mesh); none: specs that need one fail
    /// to start, saying so.
    pub(super) payload_source: std::sync::OnceLock<Arc<dyn super::payload::PayloadSource>>,
}

/// How many supervisor threads run for each VM.
pub(super) type Supervised = Arc<Mutex<HashMap<String, usize>>>;

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

/// The guest's console file, appended to across restores, adoptions and migrations in.
pub(super) fn open_console(paths: &VmPaths) -> Result<Stdio, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.console())
        .map(Stdio::from)
        .map_err(|e| format!("cannot open {}: {e}", paths.console().display()))
}

/// The record of a VM about to start here.
pub(super) fn starting_record(id: &str, spec: VmSpec, detail: Option<String>) -> VmRecord {
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

impl VmManager {
    pub fn new(opts: VmOptions, registry: Arc<Registry>) -> Arc<VmManager> {
        Arc::new(VmManager {
            opts,
            registry,
            handles: Mutex::new(HashMap::new()),
            supervisors: Arc::new(Mutex::new(HashMap::new())),
            payload_source: std::sync::OnceLock::new(),
        })
    }

    /// Gives the manager the mesh to fetch payload files from (once; later calls are
    /// ignored).
    pub fn set_payload_source(&self, source: Arc<dyn super::payload::PayloadSource>) {
        let _ = self.payload_source.set(source);
    }

    /// This node's payload directory (`<dataDir>/payloads`).
    pub fn payload_dir(&self) -> PathBuf {
        self.opts.data_dir.join(super::payload::PAYLOAD_DIR)
    }

    /// Removes the payload files no VM here names and nothing needed for a while
    /// ([`payload::sweep`](super::payload::sweep)); returns how many. Blocking.
    pub fn sweep_payloads(&self) -> usize {
        let dir = self.payload_dir();
        let in_use: std::collections::HashSet<String> = self
            .registry
            .vms()
            .iter()
            .flat_map(|r| super::payload::sets_of(&r.info.spec, &dir))
            .collect();
        let removed = super::payload::sweep(&dir, &in_use, super::payload::KEEP_UNUSED);
        for path in &removed {
            tracing::info!(file = %path.display(), "removed a payload file no VM uses");
        }
        removed.len()
    }

    /// Fetches the chunk sets `sets` this node does not hold yet into its payload directory,
    /// within [`FETCH_TIMEOUT`](super::payload::FETCH_TIMEOUT) (what came is kept in the
    /// chunk store for the next try).
    pub async fn fetch_payload(&self, sets: &[String]) -> Result<(), String> {
        use super::payload::FETCH_TIMEOUT;
        let source = self.payload_source.get().map(|s| s.as_ref());
        let dir = self.payload_dir();
        let fetch = super::payload::fetch_missing(source, &dir, sets);
        match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(fetched) => fetched,
            Err(_) => Err(format!(
                "not fetched within {FETCH_TIMEOUT:?} (the chunks that came are kept for the \
                 next try)"
            )),
        }
    }

    /// Fetches the files of `spec` (a process's) that this node does not hold yet.
    pub async fn fetch_files(&self, spec: &VmSpec) -> Result<(), String> {
        let sets: Vec<String> = spec.files.iter().map(|f| f.chunk_set.clone()).collect();
        self.fetch_payload(&sets).await
    }

    /// [`fetch_files`](Self::fetch_files) of VM `id`'s spec.
    pub(super) async fn fetch_files_of(&self, id: &str) -> Result<(), String> {
        match self.registry.vm(id) {
            Some(record) => self.fetch_files(&record.info.spec).await,
            None => Ok(()),
        }
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

    pub(super) fn paths(&self, id: &str) -> VmPaths {
        VmPaths::new(&self.opts.data_dir, id)
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.registry.vm_infos()
    }

    pub fn get(&self, id: &str) -> Option<VmInfo> {
        self.registry.vm(id).map(|r| r.info)
    }

    /// VMs that occupy this node now.
    pub fn active(&self) -> Vec<VmInfo> {
        self.list()
            .into_iter()
            .filter(|v| v.state.is_active())
            .collect()
    }

    pub(super) fn info(&self, id: &str) -> ServiceResult<VmInfo> {
        self.get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))
    }

    /// Where a VM's VMM can be adopted, when VMs outlive the node (else the VMM dies with
    /// it: [`novacron_vm::process::child_lifetime`]).
    pub(super) fn adopt_socket(&self, paths: &VmPaths) -> Option<PathBuf> {
        self.opts.outlive_node.then(|| paths.control_socket())
    }

    /// The jail of a VM's VMM: it may write only its own directory (checkpoints, tombstone).
    pub(super) fn sandbox_settings(&self, paths: &VmPaths) -> SandboxSettings {
        SandboxSettings {
            enabled: self.opts.sandbox,
            writable_dirs: vec![paths.dir.clone()],
            memory_limit_bytes: None,
            cpu_limit: None,
            nice: Some(crate::politeness::VM_NICE),
        }
    }

    /// As [`supervise`](Self::supervise), for a process-backend VM.
    pub(super) fn supervise_process(
        &self,
        id: &str,
        process: ProcessVm,
        mark: impl FnOnce(&mut VmRecord),
    ) {
        let sup = ProcessSupervisor {
            id: id.to_string(),
            process,
            registry: self.registry.clone(),
            outlive_node: self.opts.outlive_node,
        };
        self.start_supervisor(id, format!("proc-{id}"), mark, move |rx| sup.run(rx));
    }

    /// Hands the VMM to a supervisor thread. `mark` updates the VM's record once commands
    /// can reach the supervisor and before it handles any event, so a request that sees
    /// the new state always finds the VM supervised.
    pub(super) fn supervise(&self, id: &str, vmm: VmmProcess, mark: impl FnOnce(&mut VmRecord)) {
        let sup = Supervisor {
            id: id.to_string(),
            vmm,
            registry: self.registry.clone(),
            paths: self.paths(id),
            // The VM's own interval (a job's), else the node's.
            checkpoint_every: self
                .registry
                .vm(id)
                .and_then(|r| r.info.spec.checkpoint_interval_s)
                .map(Duration::from_secs)
                .or(self.opts.checkpoint_every),
        };
        self.start_supervisor(id, format!("vm-{id}"), mark, move |rx| sup.run(rx));
    }

    /// Opens VM `id`'s command channel, marks its record, and runs `run` on a thread named
    /// `name`, counted as the VM's supervisor until it ends.
    fn start_supervisor(
        &self,
        id: &str,
        name: String,
        mark: impl FnOnce(&mut VmRecord),
        run: impl FnOnce(mpsc::Receiver<Cmd>) + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel();
        lock(&self.handles).insert(id.to_string(), tx);
        self.registry.update(id, mark);
        let guard = SupervisorGuard::new(&self.supervisors, id);
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || {
            let _running = guard;
            run(rx)
        }) {
            tracing::error!(vm = id, error = %e, "cannot start the VM's supervisor thread");
        }
    }

    /// Sends a command to a VM's supervisor and waits for its answer.
    pub(super) async fn ask(
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
