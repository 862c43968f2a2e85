//! Jobs in the state database: one row per job and role. The node a job was submitted
//! through keeps it as `origin` (it places the replicas and counts their results); a node
//! running a replica keeps it as `runner`. A node can hold both rows of one job (it placed a
//! replica on itself). Each row holds the signed submission as it arrived (so the job can be
//! sent on and checked again) and the job as the API shows it, JSON.

use rusqlite::{params, OptionalExtension};

use super::{StateDb, StateError};
use crate::model::JobInfo;

/// Which side of a job a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobRole {
    Origin,
    Runner,
}

impl JobRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JobRole::Origin => "origin",
            JobRole::Runner => "runner",
        }
    }
}

/// A job row.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub role: JobRole,
    pub info: JobInfo,
    /// The signed submission's wire bytes.
    pub submission: Vec<u8>,
    /// When the submission's validity window ends (unix seconds).
    pub expires_at: u64,
}

impl StateDb {
    /// Inserts or replaces a job's row for its role.
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StateError> {
        let info = serde_json::to_string(&job.info).map_err(|e| StateError::BadRow {
            table: "jobs",
            id: job.info.id.clone(),
            reason: e.to_string(),
        })?;
        self.conn().execute(
            "INSERT OR REPLACE INTO jobs (id, role, submission, info, state, submitter,
                 expires_at, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                job.info.id,
                job.role.as_str(),
                job.submission,
                info,
                job.info.state.as_str(),
                job.info.submitter,
                job.expires_at as i64,
                job.info.updated_at_ms as i64,
            ],
        )?;
        Ok(())
    }

    /// One job's row for `role`.
    pub fn job(&self, id: &str, role: JobRole) -> Result<Option<JobRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{JOB_COLUMNS} WHERE id = ?1 AND role = ?2"))?;
        let row = stmt
            .query_row(params![id, role.as_str()], raw_job)
            .optional()?;
        row.map(RawJob::parse).transpose()
    }

    /// Every job row of `role`, oldest first.
    pub fn jobs(&self, role: JobRole) -> Result<Vec<JobRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{JOB_COLUMNS} WHERE role = ?1 ORDER BY updated_at_ms, id"
        ))?;
        let rows = stmt.query_map([role.as_str()], raw_job)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.parse()?);
        }
        Ok(out)
    }
}

const JOB_COLUMNS: &str = "SELECT id, role, submission, info, expires_at FROM jobs";

struct RawJob {
    id: String,
    role: String,
    submission: Vec<u8>,
    info: String,
    expires_at: i64,
}

fn raw_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        id: row.get(0)?,
        role: row.get(1)?,
        submission: row.get(2)?,
        info: row.get(3)?,
        expires_at: row.get(4)?,
    })
}

impl RawJob {
    fn parse(self) -> Result<JobRecord, StateError> {
        let bad = |reason: String| StateError::BadRow {
            table: "jobs",
            id: self.id.clone(),
            reason,
        };
        let role = match self.role.as_str() {
            "origin" => JobRole::Origin,
            "runner" => JobRole::Runner,
            other => return Err(bad(format!("unknown role {other:?}"))),
        };
        let info: JobInfo = serde_json::from_str(&self.info).map_err(|e| bad(e.to_string()))?;
        if info.id != self.id {
            return Err(bad(format!("its info names job {}", info.id)));
        }
        Ok(JobRecord {
            role,
            info,
            submission: self.submission,
            expires_at: self.expires_at.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSpec, JobState, ReplicaInfo, ReplicaState};

    fn job(id: &str, state: JobState) -> JobRecord {
        let spec: JobSpec =
            serde_json::from_str(r#"{"payload":{"guest":"builtin:hello"},"replicas":2}"#).unwrap();
        JobRecord {
            role: JobRole::Origin,
            info: JobInfo {
                id: id.into(),
                spec,
                submitter: "ed25519:00".into(),
                state,
                detail: None,
                origin: "me".into(),
                replicas: vec![ReplicaInfo {
                    index: 0,
                    state: ReplicaState::Running,
                    node: Some("peer".into()),
                    generation: 1,
                    vm_id: Some("vm".into()),
                    result_hash: None,
                    log_set: None,
                    result_set: None,
                    detail: None,
                    updated_at_ms: 5,
                    moved_from: None,
                    checkpoint: None,
                    restored_from: None,
                    signed_status: None,
                }],
                result_hash: None,
                retries: 0,
                submitted_at_ms: 1,
                updated_at_ms: 2,
            },
            submission: vec![1, 2, 3],
            expires_at: 99,
        }
    }

    #[test]
    fn jobs_read_back_by_role_and_replace_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).unwrap();
        let mut a = job("a", JobState::Running);
        db.put_job(&a).unwrap();
        let mut runner = job("a", JobState::Running);
        runner.role = JobRole::Runner;
        db.put_job(&runner).unwrap();
        assert_eq!(db.job("a", JobRole::Origin).unwrap(), Some(a.clone()));
        assert_eq!(db.job("a", JobRole::Runner).unwrap(), Some(runner));
        a.info.state = JobState::Succeeded;
        a.info.updated_at_ms = 3;
        db.put_job(&a).unwrap();
        db.put_job(&job("b", JobState::Queued)).unwrap();
        let all = db.jobs(JobRole::Origin).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|j| j.info.id == "a").unwrap(), &a);
        assert!(db.job("zz", JobRole::Origin).unwrap().is_none());
        drop(db);
        let db = StateDb::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(
            db.jobs(JobRole::Origin).unwrap().len(),
            2,
            "kept across opens"
        );
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).unwrap();
        db.put_job(&job("a", JobState::Running)).unwrap();
        db.conn()
            .execute("UPDATE jobs SET info = '{' WHERE id = 'a'", [])
            .unwrap();
        let e = db.jobs(JobRole::Origin).unwrap_err().to_string();
        assert!(e.contains("jobs/a"), "{e}");
    }
}
