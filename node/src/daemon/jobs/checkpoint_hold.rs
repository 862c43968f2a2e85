//! Holding other nodes' replica checkpoints: a replica's runner asks this node to keep its
//! latest checkpoint (`Hold`); this node checks the submission by its own trust, fetches
//! the checkpoint's files as chunk sets from the mesh (only the files it lacks: layers are
//! never rewritten under one name) into `<dataDir>/held/<job>-<replica>/`, and answers once
//! they are on disk. When the replica's node dies, the job's origin may ask this node to
//! run the replica from it (a `Place` with `restore`): the files become the new VM's
//! snapshot directory. The job's end (`Release`) or its age drops the copy.
//!
//! A held copy is always whole: the files are fetched under temp names and renamed, the
//! `MANIFEST` last, and the record (`hold.json`) only after it. A copy whose record is
//! missing or unreadable is never restored from, and is swept.
//!
//! What this cannot do: a pusher's chunk set is fetched before its size is compared with
//! the size it announced (a lying pusher costs a download, not a bad restore); the free
//! disk space is not checked before a hold.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::{hex, lock};
use serde::{Deserialize, Serialize};

use crate::api::types::now_ms;
use crate::daemon::Daemon;
use crate::jobs::wire::{valid_file_name, CheckpointFile, JobResponse};
use crate::state::JobRole;

/// The held checkpoints' directory inside the data directory.
pub const HELD_DIR: &str = "held";
/// The record of a held copy, written after its files.
const RECORD: &str = "hold.json";
/// How long past its job's `maxRuntimeS` a copy whose job never said it ended is kept.
const KEEP_PAST_RUNTIME_MS: u64 = 3_600_000;
/// A checkpoint is at most its VM's memory this many times over (a full layer and a chain
/// of incrementals), plus the state.
const MEMORY_TIMES: u64 = 8;
const STATE_ALLOWANCE: u64 = 64 << 20;

/// What a held copy is, as `hold.json` says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoldRecord {
    pub job_id: String,
    pub replica: u32,
    /// The generation the replica ran at when this checkpoint was taken.
    pub generation: u64,
    pub origin: String,
    /// The runner that pushed it.
    pub pusher: String,
    pub seq: u64,
    pub files: Vec<CheckpointFile>,
    /// The signed submission (hex), to run the replica from it.
    pub submission: String,
    pub held_at_ms: u64,
    pub max_runtime_s: u64,
}

/// A copy being written or read: one use at a time per replica.
pub(super) struct HeldBusy {
    key: String,
    busy: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Drop for HeldBusy {
    fn drop(&mut self) {
        lock(&self.busy).remove(&self.key);
    }
}

/// A held checkpoint taken for a restore: its directory and number.
pub(super) struct TakenCheckpoint {
    pub dir: PathBuf,
    pub seq: u64,
    pub files: Vec<CheckpointFile>,
    pub _busy: HeldBusy,
}

fn key(job_id: &str, replica: u32) -> String {
    format!("{job_id}-{replica}")
}

impl Daemon {
    fn held_dir(&self, job_id: &str, replica: u32) -> PathBuf {
        self.data_dir.join(HELD_DIR).join(key(job_id, replica))
    }

    fn claim_held(&self, job_id: &str, replica: u32) -> Result<HeldBusy, String> {
        let k = key(job_id, replica);
        if !lock(&self.jobs.holding).insert(k.clone()) {
            return Err(format!(
                "the checkpoint of replica {replica} of job {job_id} is busy here; try again"
            ));
        }
        Ok(HeldBusy {
            key: k,
            busy: self.jobs.holding.clone(),
        })
    }

    /// `Hold` from `from`: keeps checkpoint `seq` of `replica` of the signed submission.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn job_hold(
        self: &Arc<Self>,
        from: PeerId,
        submission_bytes: &[u8],
        replica: u32,
        generation: u64,
        origin: &str,
        seq: u64,
        files: Vec<CheckpointFile>,
    ) -> JobResponse {
        let started = Instant::now();
        match self
            .hold_here(
                from,
                submission_bytes,
                replica,
                generation,
                origin,
                seq,
                files,
            )
            .await
        {
            Ok(fetched_bytes) => JobResponse::Held {
                fetched_bytes,
                ms: started.elapsed().as_millis() as u64,
            },
            Err(reason) => JobResponse::refuse(reason),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn hold_here(
        self: &Arc<Self>,
        from: PeerId,
        submission_bytes: &[u8],
        replica: u32,
        generation: u64,
        origin: &str,
        seq: u64,
        mut files: Vec<CheckpointFile>,
    ) -> Result<u64, String> {
        if !self.jobs.run_replicas {
            return Err(super::NO_REPLICAS.into());
        }
        let (verified, spec) = self.open_trusted(submission_bytes)?;
        let job_id = verified.id.to_hex();
        if let Ok(Some(rec)) = self.state_db.job(&job_id, JobRole::Runner) {
            if rec
                .info
                .replicas
                .first()
                .is_some_and(|r| !r.state.is_final())
            {
                return Err(format!(
                    "this node runs a replica of job {job_id}: it holds no checkpoint of another"
                ));
            }
        }
        let limit = (spec.memory_mib << 20)
            .saturating_mul(MEMORY_TIMES)
            .saturating_add(STATE_ALLOWANCE);
        let total: u64 = files.iter().map(|f| f.bytes).fold(0, u64::saturating_add);
        if total > limit {
            return Err(format!(
                "the checkpoint is {total} bytes, over the {limit} bytes a {} MiB VM's may be",
                spec.memory_mib
            ));
        }
        if !files
            .iter()
            .any(|f| f.name == novacron_vm::storage::snapshot_dir::MANIFEST_NAME)
        {
            return Err("the checkpoint has no MANIFEST".into());
        }
        if files.iter().any(|f| f.name == RECORD) {
            return Err(format!("{RECORD} is not a checkpoint file name"));
        }
        let _busy = self.claim_held(&job_id, replica)?;
        let dir = self.held_dir(&job_id, replica);
        if let Some(held) = read_record(&dir) {
            if held.generation > generation {
                return Err(format!(
                    "{}: this node holds generation {} of replica {replica}",
                    super::STALE,
                    held.generation
                ));
            }
            if held.generation == generation && held.seq >= seq {
                return Ok(0);
            }
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The MANIFEST last: until it is renamed in, the copy's files are the older
        // checkpoint's plus new ones nothing names yet.
        files.sort_by_key(|f| f.name == novacron_vm::storage::snapshot_dir::MANIFEST_NAME);
        let kept = read_record(&dir).map(|r| r.files).unwrap_or_default();
        let (manifest, others): (Vec<&CheckpointFile>, Vec<&CheckpointFile>) = files
            .iter()
            .filter(|f| !(kept.contains(f) && dir.join(&f.name).is_file()))
            .partition(|f| f.name == novacron_vm::storage::snapshot_dir::MANIFEST_NAME);
        // The new files at once, from the pusher (no DHT lookup); then the MANIFEST.
        let mut fetched = 0u64;
        for wave in [others, manifest] {
            let got = futures::future::join_all(
                wave.iter()
                    .map(|f| self.fetch_checkpoint_file(&dir, f, from)),
            )
            .await;
            for bytes in got {
                fetched += bytes?;
            }
        }
        let record = HoldRecord {
            job_id: job_id.clone(),
            replica,
            generation,
            origin: origin.to_string(),
            pusher: from.to_string(),
            seq,
            files,
            submission: hex::encode(submission_bytes),
            held_at_ms: now_ms(),
            max_runtime_s: spec.max_runtime_s,
        };
        write_record(&dir, &record)?;
        remove_unnamed(&dir, &record.files);
        let gone: Vec<CheckpointFile> = kept
            .into_iter()
            .filter(|k| !record.files.iter().any(|f| f.set == k.set))
            .collect();
        self.withdraw_files(&gone);
        tracing::info!(job = %job_id, replica, seq, fetched, "holding a replica's checkpoint");
        Ok(fetched)
    }

    /// Fetches checkpoint file `f` from `pusher` into `dir` (temp + rename): its wire bytes.
    async fn fetch_checkpoint_file(
        &self,
        dir: &Path,
        f: &CheckpointFile,
        pusher: PeerId,
    ) -> Result<u64, String> {
        let path = dir.join(&f.name);
        let chunk_sets = crate::daemon::chunk_sets::fetch_from;
        let got = chunk_sets(&self.mesh, &self.exchange, &f.set, &[pusher], &path)
            .await
            .map_err(|e| format!("cannot fetch {} of the checkpoint: {e:#}", f.name))?;
        if got.bytes != f.bytes {
            let _ = std::fs::remove_file(&path);
            self.withdraw_files(std::slice::from_ref(f));
            return Err(format!(
                "{} of the checkpoint is {} bytes, not the {} announced",
                f.name, got.bytes, f.bytes
            ));
        }
        Ok(got.wire_bytes)
    }

    /// Stops serving the chunk sets of `files` (their copies are gone from here).
    pub(super) fn withdraw_files(&self, files: &[CheckpointFile]) {
        for f in files {
            if let Ok(id) = crate::daemon::chunk_sets::parse_id(&f.set) {
                self.exchange.withdraw(&id);
            }
        }
    }

    /// `Release` from `from`: drops the copy if `from` is its job's origin or its pusher.
    pub(super) fn job_release(&self, from: PeerId, job_id: &str, replica: u32) -> JobResponse {
        let dir = self.held_dir(job_id, replica);
        let Some(held) = read_record(&dir) else {
            return JobResponse::NotFound;
        };
        let from = from.to_string();
        if from != held.origin && from != held.pusher {
            return JobResponse::refuse(
                "only the job's origin or the checkpoint's runner drops it",
            );
        }
        let Ok(_busy) = self.claim_held(job_id, replica) else {
            return JobResponse::refuse("the checkpoint is in use; ask again");
        };
        self.withdraw_files(&held.files);
        drop_copy(&dir);
        JobResponse::Ack
    }

    /// The copy of `replica` of `job_id` at checkpoint `at_least` or later, for a restore at
    /// a generation above the one it was taken at.
    pub(super) fn take_held(
        &self,
        job_id: &str,
        replica: u32,
        at_least: u64,
        generation: u64,
    ) -> Result<TakenCheckpoint, String> {
        let busy = self.claim_held(job_id, replica)?;
        let dir = self.held_dir(job_id, replica);
        let held = read_record(&dir).ok_or_else(|| {
            format!("this node holds no checkpoint of replica {replica} of job {job_id}")
        })?;
        if held.seq < at_least || held.generation >= generation {
            return Err(format!(
                "this node holds checkpoint {} of generation {}, not {at_least} or later of an \
                 earlier generation than {generation}",
                held.seq, held.generation
            ));
        }
        Ok(TakenCheckpoint {
            dir,
            seq: held.seq,
            files: held.files,
            _busy: busy,
        })
    }

    /// Drops copies whose job is long over (by its runtime limit), and half-written ones.
    pub(super) fn sweep_held(&self) {
        let root = self.data_dir.join(HELD_DIR);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let now = now_ms();
        for entry in entries.flatten() {
            let dir = entry.path();
            let old = match read_record(&dir) {
                Some(r) => {
                    let keep = r.max_runtime_s.saturating_mul(1000) + KEEP_PAST_RUNTIME_MS;
                    now.saturating_sub(r.held_at_ms) > keep
                }
                // Half-written (or not ours): gone after the same grace as a finished job.
                None => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_millis() as u64 > KEEP_PAST_RUNTIME_MS),
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let in_use = lock(&self.jobs.holding).contains(&name);
            if old && !in_use {
                tracing::info!(dir = %dir.display(), "dropping an expired checkpoint copy");
                if let Some(r) = read_record(&dir) {
                    self.withdraw_files(&r.files);
                }
                drop_copy(&dir);
            }
        }
    }
}

/// Copies the checkpoint files of held copy `from` into the snapshot directory `to` (a new
/// VM's), the MANIFEST last.
pub(super) fn copy_checkpoint(from: &Path, to: &Path) -> Result<(), String> {
    let held = read_record(from).ok_or("the held checkpoint has no record")?;
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut files = held.files;
    files.sort_by_key(|f| f.name == novacron_vm::storage::snapshot_dir::MANIFEST_NAME);
    for f in &files {
        if !valid_file_name(&f.name) {
            return Err(format!("{:?} is not a checkpoint file name", f.name));
        }
        std::fs::copy(from.join(&f.name), to.join(&f.name))
            .map_err(|e| format!("cannot copy {} of the checkpoint: {e}", f.name))?;
    }
    Ok(())
}

/// Removes a held copy (its record first, so a half-removed copy is never restored from).
pub(super) fn drop_copy(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(RECORD));
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot drop a checkpoint copy");
    }
}

fn read_record(dir: &Path) -> Option<HoldRecord> {
    let bytes = std::fs::read(dir.join(RECORD)).ok()?;
    if bytes.len() > 1 << 20 {
        return None;
    }
    let r: HoldRecord = serde_json::from_slice(&bytes).ok()?;
    r.files
        .iter()
        .all(|f| valid_file_name(&f.name))
        .then_some(r)
}

fn write_record(dir: &Path, r: &HoldRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec(r).map_err(|e| e.to_string())?;
    novacron_vm::storage::write_atomically(&dir.join(RECORD), |w| w.write_all(&bytes))
        .map_err(|e| format!("cannot record the held checkpoint: {e}"))
}

/// Deletes files of `dir` that `files` does not name (older layers, temp files).
fn remove_unnamed(dir: &Path, files: &[CheckpointFile]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != RECORD && !files.iter().any(|f| f.name == name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> CheckpointFile {
        CheckpointFile {
            name: name.into(),
            set: "ab".repeat(32),
            bytes: 3,
        }
    }

    fn record(files: Vec<CheckpointFile>) -> HoldRecord {
        HoldRecord {
            job_id: "ab".repeat(32),
            replica: 0,
            generation: 1,
            origin: "o".into(),
            pusher: "p".into(),
            seq: 2,
            files,
            submission: "00".into(),
            held_at_ms: 1,
            max_runtime_s: 60,
        }
    }

    #[test]
    fn a_copy_is_restored_only_whole_and_only_files_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let held = tmp.path().join("held");
        std::fs::create_dir_all(&held).unwrap();
        for n in [
            "MANIFEST",
            "state-2.ncs",
            "layer-1.ncl",
            "layer-0.ncl",
            ".tmp123",
        ] {
            std::fs::write(held.join(n), n).unwrap();
        }
        let to = tmp.path().join("vm/snapshot");
        assert!(
            copy_checkpoint(&held, &to).is_err(),
            "no record: not a copy"
        );
        let files = vec![file("MANIFEST"), file("state-2.ncs"), file("layer-1.ncl")];
        write_record(&held, &record(files.clone())).unwrap();
        assert_eq!(read_record(&held), Some(record(files.clone())));
        remove_unnamed(&held, &files);
        assert!(!held.join("layer-0.ncl").exists() && !held.join(".tmp123").exists());
        copy_checkpoint(&held, &to).unwrap();
        let mut copied: Vec<String> = std::fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        copied.sort();
        assert_eq!(copied, ["MANIFEST", "layer-1.ncl", "state-2.ncs"]);
        drop_copy(&held);
        assert!(!held.exists());
    }

    #[test]
    fn a_record_naming_a_path_outside_the_copy_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        write_record(tmp.path(), &record(vec![file("../etc")])).unwrap();
        assert_eq!(read_record(tmp.path()), None);
        std::fs::write(tmp.path().join(RECORD), b"{not json").unwrap();
        assert_eq!(read_record(tmp.path()), None);
    }
}
