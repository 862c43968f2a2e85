//! One thread per process-backend VM: applies commands to its jailed process and records
//! how it ends. A process has no memory snapshot: parking it stops it (it restarts from
//! scratch when the node may run it again), and it moves only by cold restart on the peer.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use crate::api::types::VmState;

use super::process_backend::ProcessVm;
use super::registry::Registry;
use super::supervisor::Cmd;

/// How often the thread checks whether the process ended.
const POLL: Duration = Duration::from_millis(100);

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct ProcessSupervisor {
    pub id: String,
    pub process: ProcessVm,
    pub registry: Arc<Registry>,
    /// The process outlives the daemon (else it is stopped when the daemon lets go).
    pub outlive_node: bool,
}

impl ProcessSupervisor {
    pub fn run(mut self, commands: Receiver<Cmd>) {
        loop {
            match commands.recv_timeout(POLL) {
                Ok(cmd) => {
                    if self.command(cmd).is_some() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if self.outlive_node => {
                    // The daemon exits without draining: the process runs on, to be adopted.
                    tracing::info!(vm = %self.id, "leaving the process to be re-adopted");
                    let _ = self.process.release();
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // An ephemeral node's process ends with it.
                    let ended = self.process.stop(STOP_GRACE);
                    let detail = ended.map_or_else(
                        |e| format!("stopping it with the node failed: {e}"),
                        |outcome| format!("stopped with the node: {}", outcome.describe()),
                    );
                    self.record_end(VmState::Exited, Some(detail));
                    return;
                }
            }
            if let Some(outcome) = self.process.try_exit() {
                let failed = !matches!(
                    outcome,
                    super::process_backend::ExitOutcome::Exited { code: 0 }
                );
                let state = if failed {
                    VmState::Failed
                } else {
                    VmState::Exited
                };
                self.record_end(state, Some(outcome.describe()));
                return;
            }
        }
    }

    /// Applies a command; returns the VM's final state when the command ended it.
    fn command(&mut self, cmd: Cmd) -> Option<VmState> {
        let id = self.id.clone();
        match cmd {
            Cmd::Pause(reply) => {
                let r = self.process.pause();
                if r.is_ok() {
                    self.registry
                        .update(&id, |v| v.info.state = VmState::Paused);
                }
                let _ = reply.send(r);
            }
            Cmd::Resume(reply) => {
                let r = self.process.resume();
                if r.is_ok() {
                    self.registry
                        .update(&id, |v| v.info.state = VmState::Running);
                }
                let _ = reply.send(r);
            }
            Cmd::Stop(reply) => return self.stop(reply, VmState::Exited),
            Cmd::Suspend(reply) => return self.stop(reply, VmState::Suspended),
            Cmd::MigrateOut { reply, .. }
            | Cmd::ReconnectMigration { reply, .. }
            | Cmd::CancelMigration { reply, .. }
            | Cmd::Discard { reply, .. } => {
                let _ = reply.send(Err(
                    "a process-backend VM moves only by cold restart".to_string()
                ));
            }
        }
        None
    }

    /// Stops the process; the VM ends in `state` (exited, or suspended to restart later).
    fn stop(&mut self, reply: super::supervisor::Reply, state: VmState) -> Option<VmState> {
        match self.process.stop(STOP_GRACE) {
            Ok(outcome) => {
                tracing::info!(vm = %self.id, outcome = %outcome.describe(), "process stopped");
                let detail = match state {
                    VmState::Suspended => {
                        "stopped until the node may run it again (a process restarts from \
                         scratch)"
                    }
                    _ => "stopped on request",
                };
                self.registry.update(&self.id, |r| {
                    if r.info.state.is_active() {
                        r.info.state = state;
                        r.info.detail = Some(detail.into());
                    }
                    r.info.pid = None;
                    r.pid_start_ticks = None;
                });
                let _ = reply.send(Ok(()));
                Some(state)
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    fn record_end(&self, state: VmState, detail: Option<String>) {
        self.registry.update(&self.id, |r| {
            // A stop on request keeps the state the manager set before asking (suspended,
            // moved away); an exit of its own is recorded as it happened.
            if r.info.state.is_active() {
                r.info.state = state;
            }
            if detail.is_some() {
                r.info.detail = detail;
            }
            r.info.pid = None;
            r.pid_start_ticks = None;
        });
    }
}
