//! A VM's life on this node at an operator's (or the daemon's) request: check, record and
//! start it, pause, resume, stop, suspend and restore it.

use std::sync::Arc;
use std::time::Duration;

use novacron_vm::process::control::{Launch, LaunchSource};
use novacron_vm::process::launcher::VmmProcess;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{now_ms, Backend, VmInfo, VmSpec, VmState};

use super::manager::{open_console, starting_record, VmManager};
use super::process_backend::{self, ProcessVm};
use super::spec;
use super::supervisor::Cmd;

/// How long a VMM may take to build its machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh VM id: 16 hex digits of randomness.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = now_ms().to_le_bytes();
    }
    novacron_mesh::util::hex::encode(&bytes)
}

impl VmManager {
    /// Checks a spec completely ([`spec::check`]) before anything is recorded: 400 naming
    /// the field. Returns the spec to record.
    pub async fn check(&self, spec: VmSpec) -> ServiceResult<VmSpec> {
        // Kernels fetched by chunk set are verified files of the node's own.
        let mut image_dirs = self.opts.image_dirs.clone();
        image_dirs.push(self.payload_dir());
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
        self.start_recorded(id, false, false).await
    }

    /// Starts a VM [recorded](Self::record_new) whose snapshot directory holds a checkpoint
    /// taken elsewhere (a job replica a checkpoint holder restores): it resumes from it,
    /// and a failure leaves it failed, saying why.
    pub async fn start_new_from_snapshot(self: &Arc<Self>, id: &str) -> ServiceResult<VmInfo> {
        self.start_recorded(id, true, false).await
    }

    /// Starts VM `id` (from its checkpoint when `restore`) off the async threads; a start
    /// that fails leaves the VM failed, or suspended when `resumable` (a restore of this
    /// node's own VM, which may be resumed later), saying why.
    async fn start_recorded(
        self: &Arc<Self>,
        id: &str,
        restore: bool,
        resumable: bool,
    ) -> ServiceResult<VmInfo> {
        let started = self.fetch_and_start(id, restore).await;
        if let Err(e) = started {
            let (state, detail, what) = match (restore, resumable) {
                (false, _) => (VmState::Failed, e.clone(), "start"),
                (true, false) => (
                    VmState::Failed,
                    format!("could not restore: {e}"),
                    "restore",
                ),
                (true, true) => (
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

    /// Fetches the payload files VM `id` lacks, then starts it ([`Self::start_vm`]) off the
    /// async threads.
    pub(super) async fn fetch_and_start(
        self: &Arc<Self>,
        id: &str,
        restore: bool,
    ) -> Result<(), String> {
        self.fetch_files_of(id).await?;
        let me = self.clone();
        let vm_id = id.to_string();
        tokio::task::spawn_blocking(move || me.start_vm(&vm_id, restore))
            .await
            .map_err(|e| format!("VM start task: {e}"))?
    }

    /// Starts VM `id` by its backend; `restore`: a KVM VM from its checkpoint, a process
    /// from scratch (it has no memory snapshot). Blocking.
    pub(super) fn start_vm(&self, id: &str, restore: bool) -> Result<(), String> {
        let record = self.registry.vm(id).ok_or_else(|| format!("no VM {id}"))?;
        match record.info.spec.backend {
            Backend::Kvm => self.start_vmm(id, restore),
            Backend::Process => self.start_process(id, restore),
        }
    }

    /// Starts a process-backend VM's jailed command and hands it to a supervisor thread.
    pub(super) fn start_process(&self, id: &str, restart: bool) -> Result<(), String> {
        let record = self.registry.vm(id).ok_or_else(|| format!("no VM {id}"))?;
        let paths = self.paths(id);
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| format!("cannot create {}: {e}", paths.dir.display()))?;
        let _ = std::fs::remove_file(paths.dir.join(process_backend::STATUS_FILE));
        super::payload::place_files(
            &self.payload_dir(),
            &paths.dir.join(process_backend::WORK_DIR),
            &record.info.spec.files,
        )?;
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
            result_blob: Some(paths.result_blob()),
        };
        if restore {
            // The guest goes back to the checkpoint: so does its output.
            super::console::rewind_to_checkpoint(&paths)?;
        }
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
        self.start_recorded(id, true, true).await
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
}
