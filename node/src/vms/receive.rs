//! VMs arriving at this node: a migration in starts the VM's VMM on the migration's
//! streams (a process-backend VM's command afresh) and records how it went.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use novacron_vm::exit::describe_reason;
use novacron_vm::process::control::{Event, Launch, LaunchSource};
use novacron_vm::process::launcher::VmmProcess;

use crate::api::types::{
    now_ms, Backend, MigrationDirection, MigrationInfo, MigrationState, VmInfo, VmState,
};
use crate::mesh_migration::IncomingMigration;

use super::manager::{open_console, starting_record, VmManager};

/// How long a VM migrating in may take from its streams to running here.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(180);

impl VmManager {
    /// Runs a VM migrating in: records it (and the migration), starts a VMM on the streams
    /// and waits until the VM runs here. Blocking work runs off the async threads.
    pub async fn receive(self: &Arc<Self>, incoming: IncomingMigration) -> anyhow::Result<()> {
        let offer = incoming.offer.clone();
        let id = offer.vm_id.clone();
        let peer = incoming.peer.to_string();
        let now = now_ms();
        let migration = MigrationInfo {
            id: novacron_mesh::util::hex::encode(&offer.session[..8]),
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
        let started = self.fetch_and_start(id, false).await;
        let answer = [if started.is_ok() {
            super::process_backend::RESTARTED
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
            result_blob: Some(paths.result_blob()),
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
}
