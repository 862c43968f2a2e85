//! Pushing the checkpoints of replicas running here to peers of the cell, so that one of
//! them can restore the replica if this node dies (`policy::job_fencing` says which).
//!
//! The VM's supervisor checkpoints it at its interval (the job's `checkpointIntervalS`)
//! into its snapshot directory: a `MANIFEST`, a state file and a chain of memory layers,
//! each file written once under a new name. On the follower's tick, a replica whose VM
//! committed a checkpoint its holders do not have yet gets it pushed: each file not
//! published yet becomes a chunk set in the chunk store (content-addressed: a layer is
//! published once), and [`HOLDERS`] peers are asked to hold it (`Hold`); they fetch what
//! they lack from the mesh and answer once it is on their disk. The replica's record, and
//! its report to the origin, then name the checkpoint and its holders.
//!
//! One push per replica at a time; a checkpoint committed during a push is pushed on a
//! later tick. A push that finds its files replaced meanwhile (a newer checkpoint dropped
//! an old layer) gives up and the next tick pushes the newer one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_mesh::submission::JobId;
use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::{hex, lock};
use novacron_vm::storage::manifest::Manifest;
use novacron_vm::storage::snapshot_dir::MANIFEST_NAME;

use crate::api::types::now_ms;
use crate::daemon::Daemon;
use crate::jobs::wire::{CheckpointFile, JobRequest, JobResponse};
use crate::model::{ReplicaCheckpoint, ReplicaState};
use crate::policy::job_fencing::{holder_candidates, HOLDERS};
use crate::state::{JobRecord, JobRole};
use crate::vms::console::checkpoint_console_name;
use crate::vms::paths::VmPaths;

/// How long a replica whose last push failed (no peer would hold it, a file vanished) waits
/// before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long a committed checkpoint waits for the supervisor's copy of its console before it
/// is pushed without one (restored, its output then starts at the checkpoint).
const CONSOLE_COPY_GRACE: Duration = Duration::from_secs(5);

/// Whether checkpoint `generation` in `dir` can be pushed: its console copy is there, or
/// its MANIFEST is older than [`CONSOLE_COPY_GRACE`] (the copy will not come).
fn console_copy_ready(dir: &std::path::Path, generation: u64) -> bool {
    if dir.join(checkpoint_console_name(generation)).is_file() {
        return true;
    }
    std::fs::metadata(dir.join(MANIFEST_NAME))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age >= CONSOLE_COPY_GRACE)
}

/// A replica's push: running, or failed and waiting for its retry.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pushing {
    InFlight,
    RetryAt(Instant),
}

/// The files of the checkpoints of one VM published so far, by name.
pub(super) type Published = HashMap<String, CheckpointFile>;

impl Daemon {
    /// Starts a push for each replica here whose VM has a checkpoint newer than the one
    /// its holders have (and no push in flight).
    pub(super) fn push_checkpoints(self: &Arc<Self>) {
        for vm in self.jobs.watched() {
            let Some(job_id) = self.jobs.job_of(&vm) else {
                continue;
            };
            let Ok(Some(rec)) = self.state_db.job(&job_id, JobRole::Runner) else {
                continue;
            };
            let Some(r) = rec.info.replicas.first() else {
                continue;
            };
            if r.state != ReplicaState::Running || r.vm_id.as_deref() != Some(vm.as_str()) {
                continue;
            }
            let dir = VmPaths::new(&self.data_dir, &vm).snapshot();
            let Ok(manifest) = novacron_vm::storage::read_manifest(&dir) else {
                continue;
            };
            if r.checkpoint.as_ref().map(|c| c.seq) >= Some(manifest.generation) {
                continue;
            }
            if !console_copy_ready(&dir, manifest.generation) {
                continue;
            }
            {
                // One push per replica at a time, and none before a failed one's retry.
                let mut pushing = lock(&self.jobs.pushing);
                match pushing.get(&job_id) {
                    Some(Pushing::InFlight) => continue,
                    Some(Pushing::RetryAt(at)) if Instant::now() < *at => continue,
                    _ => {}
                }
                pushing.insert(job_id.clone(), Pushing::InFlight);
            }
            let me = self.clone();
            tokio::spawn(async move {
                let seq = manifest.generation;
                let next = match me.push_checkpoint(&rec, &vm, manifest).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::info!(job = %job_id, vm, seq, error = %e, "checkpoint not pushed; trying again in {RETRY_AFTER:?}");
                        Some(Instant::now() + RETRY_AFTER)
                    }
                };
                let mut pushing = lock(&me.jobs.pushing);
                match next {
                    Some(at) => pushing.insert(job_id, Pushing::RetryAt(at)),
                    None => pushing.remove(&job_id),
                };
            });
        }
    }

    /// Publishes checkpoint `manifest` of VM `vm` (running `rec`'s replica) and has it held.
    async fn push_checkpoint(
        self: &Arc<Self>,
        rec: &JobRecord,
        vm: &str,
        manifest: Manifest,
    ) -> Result<(), String> {
        let started = Instant::now();
        let r = rec.info.replicas.first().ok_or("no replica")?;
        let dir = VmPaths::new(&self.data_dir, vm).snapshot();
        let mut names = vec![manifest.state.name.clone()];
        names.extend(manifest.layers.iter().map(|l| l.name.clone()));
        let console = checkpoint_console_name(manifest.generation);
        if dir.join(&console).is_file() {
            names.push(console);
        }
        names.push(MANIFEST_NAME.to_string());
        let mut published = lock(&self.jobs.published)
            .get(vm)
            .cloned()
            .unwrap_or_default();
        let mut files = Vec::with_capacity(names.len());
        // Sets of files no longer in the checkpoint (older layers, the old MANIFEST).
        let mut stale = Vec::new();
        for name in &names {
            // Files are written once under a name, but the MANIFEST is replaced.
            if let Some(f) = published.get(name).filter(|_| name != MANIFEST_NAME) {
                files.push(f.clone());
                continue;
            }
            // Served, not announced: the holders are told to fetch from this node.
            let p = crate::daemon::chunk_sets::serve(
                &self.mesh,
                &self.exchange,
                &dir.join(name),
                Some(name.clone()),
            )
            .await
            .map_err(|e| format!("cannot publish {name}: {e:#}"))?;
            let f = CheckpointFile {
                name: name.clone(),
                set: p.id,
                bytes: p.bytes,
            };
            stale.extend(
                published
                    .insert(name.clone(), f.clone())
                    .filter(|old| *old != f),
            );
            files.push(f);
        }
        published.retain(|name, f| {
            let keep = names.contains(name);
            if !keep {
                stale.push(f.clone());
            }
            keep
        });
        lock(&self.jobs.published).insert(vm.to_string(), published);
        let publish_ms = started.elapsed().as_millis() as u64;
        // Still that checkpoint? (Names are never reused: the same generation means the
        // files published are its files.)
        let now = novacron_vm::storage::read_manifest(&dir).map_err(|e| e.to_string())?;
        if now.generation != manifest.generation {
            return Err(format!(
                "checkpoint {} replaced by {} while it was published",
                manifest.generation, now.generation
            ));
        }

        let job = JobId::parse(&rec.info.id).ok_or("the job id is not hex")?;
        let me = self.mesh.peer_id().to_string();
        let live: Vec<String> = self
            .cell_status()
            .await
            .map(|s| s.live_peers())
            .unwrap_or_default();
        let current: Vec<String> = r
            .checkpoint
            .as_ref()
            .map(|c| c.holders.clone())
            .unwrap_or_default();
        let candidates = holder_candidates(&job, r.index, &me, &live, &current);
        let ask = JobRequest::Hold {
            submission: hex::encode(&rec.submission),
            replica: r.index,
            generation: r.generation,
            origin: rec.info.origin.clone(),
            seq: manifest.generation,
            files: files.clone(),
        };
        let (holders, pushed_bytes, refusals) = self.ask_holders(&candidates, &ask).await;
        // The holders have what they need of this checkpoint (or none took it): older
        // files are not served any more.
        self.withdraw_files(&stale);
        if holders.is_empty() {
            return Err(format!("no peer holds it: {}", refusals.join("; ")));
        }
        for gone in current.iter().filter(|p| !holders.contains(p)) {
            self.clone().tell(
                gone.clone(),
                JobRequest::Release {
                    job_id: rec.info.id.clone(),
                    replica: r.index,
                },
            );
        }
        let checkpoint = ReplicaCheckpoint {
            seq: manifest.generation,
            holders,
            bytes: files.iter().map(|f| f.bytes).sum(),
            pushed_bytes,
            push_ms: started.elapsed().as_millis() as u64,
            publish_ms,
            taken_at_ms: now_ms(),
        };
        tracing::info!(
            job = %rec.info.id,
            seq = checkpoint.seq,
            holders = ?checkpoint.holders,
            pushed_bytes,
            ms = checkpoint.push_ms,
            "checkpoint held by peers"
        );
        let vm = vm.to_string();
        self.update_runner(&rec.info.id, |r| {
            // The replica may have moved on (a move, an end) during the push.
            if r.vm_id.as_deref() == Some(vm.as_str()) && !r.state.is_final() {
                r.checkpoint = Some(checkpoint);
            }
        });
        Ok(())
    }

    /// Stops following replica VM `vm` and serving the checkpoint files it published.
    pub(super) fn unwatch_replica_vm(&self, vm: &str) {
        let files = self.jobs.unwatch(vm);
        self.withdraw_files(&files);
    }

    /// Asks `candidates` in order, [`HOLDERS`] at a time, to hold a checkpoint until
    /// [`HOLDERS`] agree: those that hold it, the bytes they fetched, why others did not.
    async fn ask_holders(
        &self,
        candidates: &[String],
        ask: &JobRequest,
    ) -> (Vec<String>, u64, Vec<String>) {
        let Some(link) = self.jobs.link() else {
            return (
                Vec::new(),
                0,
                vec!["the job protocol is not running".into()],
            );
        };
        let (mut holders, mut fetched, mut refusals) = (Vec::new(), 0u64, Vec::new());
        let mut next = candidates.iter();
        while holders.len() < HOLDERS {
            let wave: Vec<&String> = next.by_ref().take(HOLDERS - holders.len()).collect();
            if wave.is_empty() {
                break;
            }
            let answers = futures::future::join_all(wave.iter().map(|peer| async move {
                let answer = match peer.parse::<PeerId>() {
                    Ok(id) => link.request(id, ask).await.map_err(|e| e.to_string()),
                    Err(_) => Err("not a peer id".to_string()),
                };
                (peer.to_string(), answer)
            }))
            .await;
            for (peer, answer) in answers {
                match answer {
                    Ok(JobResponse::Held { fetched_bytes, .. }) => {
                        fetched += fetched_bytes;
                        holders.push(peer);
                    }
                    Ok(JobResponse::Refuse { reason }) => {
                        refusals.push(format!("{peer}: {reason}"))
                    }
                    Ok(other) => refusals.push(format!("{peer}: answered {other:?}")),
                    Err(e) => refusals.push(format!("{peer}: {e}")),
                }
            }
        }
        (holders, fetched, refusals)
    }
}
