//! One thread per VM that owns its VMM process: sends it commands, reads its events, keeps
//! the VM's record current and checkpoints it on a schedule.
//!
//! The thread ends when the VMM exits (the record then says how) or when the manager lets
//! go of it (the daemon is exiting without draining): then the control connection closes and
//! the VMM, launched adoptable, keeps the VM running until the next daemon adopts it; one
//! that is not adoptable (an ephemeral node's) stops, and the thread reaps it.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_vm::exit::describe_reason;
use novacron_vm::process::control::{Command, Event, ExitReason, MigrateOut, SnapshotMode};
use novacron_vm::process::launcher::{LaunchError, VmmProcess};
use tokio::sync::oneshot;

use crate::api::types::{now_ms, MigrationProgressInfo, MigrationState, VmState};

use super::paths::VmPaths;
use super::registry::Registry;

/// How long the thread waits for an event before it looks at its commands again.
const POLL: Duration = Duration::from_millis(20);

/// Incremental layers between full checkpoints (a restore reads the whole chain).
const INCREMENTALS_PER_FULL: u32 = 15;

pub type Reply = oneshot::Sender<Result<(), String>>;
/// Told each time an outgoing migration goes in doubt.
pub type InDoubtSender = tokio::sync::mpsc::UnboundedSender<()>;

pub enum Cmd {
    Pause(Reply),
    Resume(Reply),
    Stop(Reply),
    /// Snapshot, then stop: the VM waits on disk until it may run again.
    Suspend(Reply),
    /// Stop the VMM of a VM that runs elsewhere now (a migration in doubt settled as moved):
    /// the record says moved away, with `detail`.
    Discard {
        detail: String,
        reply: Reply,
    },
    /// Migrate out over `streams` (control first), recorded as migration `migration_id`.
    /// Each time the VMM reports the migration in doubt, `in_doubt` hears of it.
    MigrateOut {
        cmd: Box<MigrateOut>,
        streams: Vec<UnixStream>,
        migration_id: String,
        peer: String,
        in_doubt: Option<InDoubtSender>,
        reply: Reply,
    },
    /// New streams for a migration in doubt (control first), to ask the destination.
    ReconnectMigration {
        session: [u8; 16],
        streams: Vec<UnixStream>,
        reply: Reply,
    },
    CancelMigration {
        reason: String,
        reply: Reply,
    },
}

/// What the VMM's end will mean, when the node asked for it.
#[derive(Default)]
enum Ending {
    #[default]
    Unasked,
    /// Snapshotted and stopped: it waits on disk.
    Suspend,
    /// Stopped because it runs elsewhere: why.
    Discard(String),
}

/// What the thread was told and is waiting to hear back about, in order.
enum Waiting {
    Pause(Reply),
    Resume(Reply),
    Snapshot { reply: Option<Reply>, stop: bool },
}

pub struct Supervisor {
    pub id: String,
    pub vmm: VmmProcess,
    pub registry: Arc<Registry>,
    pub paths: VmPaths,
    /// Periodic checkpoints (None: only on demand).
    pub checkpoint_every: Option<Duration>,
}

/// A migration in progress.
struct Outgoing {
    id: String,
    peer: String,
    in_doubt: Option<InDoubtSender>,
}

impl Supervisor {
    pub fn run(mut self, commands: Receiver<Cmd>) {
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut outgoing: Option<Outgoing> = None;
        let mut ending = Ending::Unasked;
        let mut last_checkpoint = Instant::now();
        // The first checkpoint of a VMM is full: its dirty log starts at its own start.
        let mut checkpoints_since_full: Option<u32> = None;
        loop {
            loop {
                match commands.try_recv() {
                    Ok(cmd) => {
                        if let Err((reply, why)) =
                            self.command(cmd, &mut waiting, &mut outgoing, &mut ending)
                        {
                            let _ = reply.send(Err(why));
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.vmm.adopt_socket().is_some() => {
                        // The manager let go: leave the VM running for the next daemon.
                        tracing::info!(vm = %self.id, "leaving the VM to be re-adopted");
                        self.vmm.abandon();
                        return;
                    }
                    Err(TryRecvError::Disconnected) => {
                        // Nobody could adopt it: the VM ends with the node (closing the
                        // control channel stops it; a migration rolls back first).
                        tracing::info!(vm = %self.id, "stopping the VM with the node");
                        self.finish(Some(ExitReason::Stopped), &ending, &outgoing, waiting);
                        return;
                    }
                }
            }
            match self.vmm.next_event(Some(POLL)) {
                Ok(event) => {
                    if let Some(reason) =
                        self.event(event, &mut waiting, &mut outgoing, &mut last_checkpoint)
                    {
                        self.finish(Some(reason), &ending, &outgoing, waiting);
                        return;
                    }
                }
                Err(LaunchError::Timeout(_)) => {}
                Err(e) => {
                    tracing::warn!(vm = %self.id, error = %e, "lost the VMM");
                    self.finish(None, &ending, &outgoing, waiting);
                    return;
                }
            }
            let due = self
                .checkpoint_every
                .is_some_and(|every| last_checkpoint.elapsed() >= every);
            let unasked = matches!(ending, Ending::Unasked);
            if due && outgoing.is_none() && waiting.is_empty() && unasked {
                let running = self
                    .registry
                    .vm(&self.id)
                    .is_some_and(|r| r.info.state == VmState::Running);
                last_checkpoint = Instant::now();
                if running {
                    let mode = next_mode(&mut checkpoints_since_full);
                    if self.snapshot(mode, false).is_ok() {
                        waiting.push_back(Waiting::Snapshot {
                            reply: None,
                            stop: false,
                        });
                    }
                }
            }
        }
    }

    fn snapshot(&mut self, mode: SnapshotMode, then_stop: bool) -> Result<(), String> {
        self.vmm
            .send(&Command::Snapshot {
                dir: self.paths.snapshot(),
                mode,
                then_stop,
            })
            .map_err(|e| e.to_string())
    }

    /// Sends a command; on failure gives the reply back with the reason.
    fn command(
        &mut self,
        cmd: Cmd,
        waiting: &mut VecDeque<Waiting>,
        outgoing: &mut Option<Outgoing>,
        ending: &mut Ending,
    ) -> Result<(), (Reply, String)> {
        let send = |vmm: &mut VmmProcess, c: &Command| vmm.send(c).map_err(|e| e.to_string());
        match cmd {
            Cmd::Pause(reply) => match send(&mut self.vmm, &Command::Pause) {
                Ok(()) => waiting.push_back(Waiting::Pause(reply)),
                Err(e) => return Err((reply, e)),
            },
            Cmd::Resume(reply) => match send(&mut self.vmm, &Command::Resume) {
                Ok(()) => waiting.push_back(Waiting::Resume(reply)),
                Err(e) => return Err((reply, e)),
            },
            Cmd::Stop(reply) => match send(&mut self.vmm, &Command::Stop) {
                // Answered once the VMM says it exited.
                Ok(()) => {
                    let _ = reply.send(Ok(()));
                }
                Err(e) => return Err((reply, e)),
            },
            Cmd::Suspend(reply) => match self.snapshot(SnapshotMode::Full, true) {
                Ok(()) => {
                    *ending = Ending::Suspend;
                    waiting.push_back(Waiting::Snapshot {
                        reply: Some(reply),
                        stop: true,
                    });
                }
                Err(e) => return Err((reply, e)),
            },
            Cmd::Discard { detail, reply } => {
                if outgoing.is_some() {
                    return Err((reply, "a migration of this VM is running".into()));
                }
                match send(&mut self.vmm, &Command::Stop) {
                    Ok(()) => {
                        *ending = Ending::Discard(detail);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => return Err((reply, e)),
                }
            }
            Cmd::MigrateOut {
                cmd,
                streams,
                migration_id,
                peer,
                in_doubt,
                reply,
            } => {
                if outgoing.is_some() {
                    return Err((reply, "a migration of this VM is already running".into()));
                }
                match self.send_with_streams(&Command::MigrateOut(*cmd), &streams) {
                    Ok(()) => {
                        // The VMM holds its own copies of the streams now.
                        drop(streams);
                        *outgoing = Some(Outgoing {
                            id: migration_id,
                            peer,
                            in_doubt,
                        });
                        self.registry
                            .update(&self.id, |r| r.info.state = VmState::Migrating);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => return Err((reply, e)),
                }
            }
            Cmd::ReconnectMigration {
                session,
                streams,
                reply,
            } => {
                if outgoing.is_none() {
                    return Err((reply, "no migration of this VM is running".into()));
                }
                match self.send_with_streams(&Command::MigrationReconnect { session }, &streams) {
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => return Err((reply, e)),
                }
            }
            Cmd::CancelMigration { reason, reply } => {
                if outgoing.is_none() {
                    return Err((reply, "no migration of this VM is running".into()));
                }
                match send(&mut self.vmm, &Command::CancelMigration { reason }) {
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => return Err((reply, e)),
                }
            }
        }
        Ok(())
    }

    /// Sends `cmd` with `streams` (the VMM keeps its own copies).
    fn send_with_streams(&mut self, cmd: &Command, streams: &[UnixStream]) -> Result<(), String> {
        let fds: Vec<std::os::fd::BorrowedFd<'_>> =
            streams.iter().map(std::os::fd::AsFd::as_fd).collect();
        self.vmm
            .send_with_streams(cmd, &fds)
            .map_err(|e| e.to_string())
    }

    /// Handles one VMM event; returns the exit reason when the VMM is done.
    fn event(
        &mut self,
        event: Event,
        waiting: &mut VecDeque<Waiting>,
        outgoing: &mut Option<Outgoing>,
        last_checkpoint: &mut Instant,
    ) -> Option<ExitReason> {
        let id = self.id.clone();
        match event {
            Event::Guest { code, value } => self.registry.report(&id, code, value),
            Event::Paused => {
                self.registry
                    .update(&id, |r| r.info.state = VmState::Paused);
                if let Some(Waiting::Pause(reply)) =
                    take_front(waiting, |w| matches!(w, Waiting::Pause(_)))
                {
                    let _ = reply.send(Ok(()));
                }
            }
            Event::Resumed => {
                self.registry
                    .update(&id, |r| r.info.state = VmState::Running);
                if let Some(Waiting::Resume(reply)) =
                    take_front(waiting, |w| matches!(w, Waiting::Resume(_)))
                {
                    let _ = reply.send(Ok(()));
                }
            }
            Event::SnapshotDone { console_bytes, .. } => {
                *last_checkpoint = Instant::now();
                // The output that belongs to this checkpoint goes with it.
                match console_bytes {
                    Some(bytes) => {
                        if let Err(e) = super::console::keep_for_checkpoint(&self.paths, bytes) {
                            tracing::warn!(vm = %id, error = %e, "the checkpoint has no copy of the console");
                        }
                    }
                    None => {
                        tracing::warn!(vm = %id, "the VMM did not say how long its console was")
                    }
                }
                self.registry
                    .update(&id, |r| r.info.snapshot_at_ms = Some(now_ms()));
                if let Some(Waiting::Snapshot {
                    reply: Some(reply), ..
                }) = take_front(waiting, |w| matches!(w, Waiting::Snapshot { .. }))
                {
                    let _ = reply.send(Ok(()));
                }
            }
            Event::CommandFailed { message } => {
                tracing::warn!(vm = %id, %message, "VMM command failed");
                match waiting.pop_front() {
                    Some(Waiting::Pause(reply)) | Some(Waiting::Resume(reply)) => {
                        let _ = reply.send(Err(message));
                    }
                    Some(Waiting::Snapshot { reply, stop }) => {
                        if stop {
                            tracing::error!(vm = %id, "suspend failed: the VM keeps running");
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(message));
                        }
                    }
                    None => {}
                }
            }
            Event::MigrationProgress(p) => {
                if let Some(out) = outgoing.as_ref() {
                    self.registry.update_migration(&out.id, false, |m| {
                        m.wire_bytes = p.wire_bytes;
                        m.progress = Some(MigrationProgressInfo {
                            phase: p.phase.clone(),
                            round: p.round,
                            bytes_sent: p.bytes_sent,
                            wire_bytes: p.wire_bytes,
                            bytes_skipped_zero: p.bytes_skipped_zero,
                            bytes_skipped_held: p.bytes_skipped_held,
                            bytes_total: p.bytes_total,
                            bytes_done: p.bytes_done,
                            bandwidth_bps: p.bandwidth_bps,
                            dirty_rate_bps: p.dirty_rate_bps,
                            est_remaining_ms: p.est_remaining_ms,
                        });
                    });
                }
            }
            Event::MigratedOut(summary) => {
                if let Some(out) = outgoing.as_ref() {
                    let peer = out.peer.clone();
                    self.registry.update_migration(&out.id, true, |m| {
                        m.state = MigrationState::Done;
                        m.ended_at_ms = Some(now_ms());
                        m.wire_bytes = summary.progress.wire_bytes;
                        m.downtime_ms = summary
                            .paused_ns
                            .map(|p| summary.ended_ns.saturating_sub(p) as f64 / 1e6);
                    });
                    self.registry.update(&id, |r| {
                        r.info.state = VmState::MovedAway;
                        r.info.detail = Some(format!("runs on {peer}"));
                        r.info.pid = None;
                    });
                }
            }
            Event::MigrationFailed { reason, summary } => {
                if let Some(out) = outgoing.take() {
                    self.registry.update_migration(&out.id, true, |m| {
                        m.state = if reason.contains("cancel") {
                            MigrationState::Cancelled
                        } else {
                            MigrationState::Failed
                        };
                        m.ended_at_ms = Some(now_ms());
                        m.wire_bytes = summary.progress.wire_bytes;
                        m.error = Some(reason.clone());
                    });
                }
                // After an in-doubt end the VMM keeps the VM paused (the destination may
                // run it): an operator decides; any other failure rolled it back running.
                let in_doubt = novacron_vm::process::control::MigrationEnd::of(&reason)
                    == novacron_vm::process::control::MigrationEnd::InDoubt;
                self.registry.update(&id, |r| {
                    r.info.state = if in_doubt {
                        VmState::Paused
                    } else {
                        VmState::Running
                    };
                    r.info.detail = Some(if in_doubt {
                        format!("migration {reason}: check the peer before resuming it")
                    } else {
                        format!("migration rolled back: {reason}")
                    });
                });
            }
            Event::MigrationInDoubt => {
                tracing::warn!(vm = %id, "migration in doubt: the VM stays paused");
                if let Some(tx) = outgoing.as_ref().and_then(|o| o.in_doubt.as_ref()) {
                    let _ = tx.send(());
                }
            }
            Event::Exited(reason) => return Some(reason),
            _ => {}
        }
        None
    }

    /// Records how the VMM ended and reaps it; `reason` None: it died without saying.
    fn finish(
        mut self,
        reason: Option<ExitReason>,
        ending: &Ending,
        outgoing: &Option<Outgoing>,
        waiting: VecDeque<Waiting>,
    ) {
        let status = self.vmm.wait();
        let reason = reason.or_else(|| super::leftovers::read_tombstone(&self.paths));
        let died = match &status {
            Ok(s) => novacron_vm::process::launcher::describe_exit(*s),
            Err(e) => e.to_string(),
        };
        for w in waiting {
            let reply = match w {
                Waiting::Pause(r) | Waiting::Resume(r) => Some(r),
                Waiting::Snapshot { reply, .. } => reply,
            };
            if let Some(reply) = reply {
                let _ = reply.send(Err(format!("the VMM exited: {died}")));
            }
        }
        if let Some(out) = outgoing {
            if !matches!(reason, Some(ExitReason::MigratedAway)) {
                self.registry.update_migration(&out.id, true, |m| {
                    if !m.state.is_final() {
                        m.state = MigrationState::Failed;
                        m.ended_at_ms = Some(now_ms());
                        m.error = Some(format!("the source VMM ended: {died}"));
                    }
                });
            }
        }
        let (state, detail) = match (&reason, ending) {
            (Some(ExitReason::MigratedAway), _) => (VmState::MovedAway, None),
            (Some(ExitReason::Stopped), Ending::Suspend) => (
                VmState::Suspended,
                Some("snapshotted and stopped until the node may run it".to_string()),
            ),
            (Some(ExitReason::Stopped), Ending::Discard(why)) => {
                (VmState::MovedAway, Some(why.clone()))
            }
            (Some(r @ ExitReason::Failed { .. }), _) => (VmState::Failed, Some(describe_reason(r))),
            (Some(r), _) => (VmState::Exited, Some(describe_reason(r))),
            (None, _) => (VmState::Failed, Some(format!("the VMM {died}"))),
        };
        self.registry.update(&self.id, |r| {
            r.info.state = state;
            if detail.is_some() || state != VmState::MovedAway {
                r.info.detail = detail.or(r.info.detail.take());
            }
            r.info.pid = None;
            r.pid_start_ticks = None;
        });
        let _ = std::fs::remove_file(self.paths.control_socket());
    }
}

/// The first waiting entry if it is of the expected kind (events answer commands in order;
/// an unexpected one is logged and left).
fn take_front(
    waiting: &mut VecDeque<Waiting>,
    expected: impl Fn(&Waiting) -> bool,
) -> Option<Waiting> {
    if waiting.front().is_some_and(&expected) {
        waiting.pop_front()
    } else {
        None
    }
}

fn next_mode(since_full: &mut Option<u32>) -> SnapshotMode {
    match since_full {
        Some(n) if *n < INCREMENTALS_PER_FULL => {
            *n += 1;
            SnapshotMode::Incremental
        }
        _ => {
            *since_full = Some(0);
            SnapshotMode::Full
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_start_full_then_chain_incrementals() {
        let mut n = None;
        assert_eq!(next_mode(&mut n), SnapshotMode::Full);
        for _ in 0..INCREMENTALS_PER_FULL {
            assert_eq!(next_mode(&mut n), SnapshotMode::Incremental);
        }
        assert_eq!(next_mode(&mut n), SnapshotMode::Full);
    }
}
