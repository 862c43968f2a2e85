//! The node's durable state: an embedded SQLite database (default `<dataDir>/state.db`,
//! `DB_URL` may point elsewhere) holding its VMs, migrations, events, peers of note and jobs
//! (`jobs.rs`).
//!
//! Every write is one transaction in WAL mode with `synchronous=FULL`: a node killed -9 (or
//! losing power) after a write returned finds it on restart; one killed during a write finds
//! the state before it. The VM table is what makes a restarted daemon account for every VM:
//! see `crate::vms::recovery`.
//!
//! What this cannot do: other databases (a `DB_URL` that is not SQLite is refused with an
//! error saying so), or share one database between two nodes (each node owns its file).

mod jobs;
pub mod schema;

pub use jobs::{JobRecord, JobRole};

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use crate::api::types::{
    MigrationDirection, MigrationInfo, MigrationMode, MigrationState, VmInfo, VmSpec, VmState,
};

/// The database file's name in the data directory.
pub const DEFAULT_DB_NAME: &str = "state.db";

/// Events kept; older ones are deleted as new ones arrive.
pub const EVENTS_KEPT: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "DB_URL {0:?}: only SQLite is supported (sqlite:///absolute/path.db, \
         sqlite://relative/path.db or a plain path)"
    )]
    UnsupportedUrl(String),
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: {source}")]
    Schema {
        path: PathBuf,
        source: schema::SchemaError,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database row {table}/{id}: {reason}")]
    BadRow {
        table: &'static str,
        id: String,
        reason: String,
    },
}

/// Where the database is, from `DB_URL` / `dbUrl` (relative paths are relative to the data
/// directory) or the default in the data directory.
pub fn db_path(db_url: Option<&str>, data_dir: &Path) -> Result<PathBuf, StateError> {
    let Some(url) = db_url else {
        return Ok(data_dir.join(DEFAULT_DB_NAME));
    };
    let rest = if let Some(r) = url.strip_prefix("sqlite://") {
        r
    } else if let Some(r) = url.strip_prefix("sqlite:") {
        r
    } else if url.contains("://") {
        return Err(StateError::UnsupportedUrl(url.to_string()));
    } else {
        url
    };
    if rest.is_empty() || rest.contains('?') {
        return Err(StateError::UnsupportedUrl(url.to_string()));
    }
    let path = Path::new(rest);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        data_dir.join(path)
    })
}

/// What the daemon keeps about one VM beyond what the API shows.
#[derive(Clone, Debug, PartialEq)]
pub struct VmRecord {
    pub info: VmInfo,
    /// The VMM process's start time (clock ticks since boot, /proc/PID/stat field 22), so a
    /// restarted daemon never takes a recycled pid for the VMM.
    pub pid_start_ticks: Option<u64>,
}

pub struct StateDb {
    conn: Mutex<Connection>,
}

impl StateDb {
    /// Opens (creating) the database and brings its schema up to date. Its directory must
    /// exist: a mistyped `DB_URL` makes no directories anywhere.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Node state is the node's alone: the file (and the WAL SQLite makes with its mode)
        // is created 0600.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StateError::Open {
                    path: path.to_path_buf(),
                    source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
                })?;
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::migrate(&mut conn).map_err(|source| StateError::Schema {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(StateDb {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or replaces a VM's row.
    pub fn put_vm(&self, vm: &VmRecord) -> Result<(), StateError> {
        let i = &vm.info;
        let spec = serde_json::to_string(&i.spec).map_err(|e| StateError::BadRow {
            table: "vms",
            id: i.id.clone(),
            reason: e.to_string(),
        })?;
        self.conn().execute(
            "INSERT OR REPLACE INTO vms (id, spec, state, detail, pid, pid_start_ticks,
                 created_at_ms, updated_at_ms, snapshot_at_ms, last_report_code,
                 last_report_value, adoptions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                i.id,
                spec,
                i.state.as_str(),
                i.detail,
                i.pid,
                vm.pid_start_ticks.map(|t| t as i64),
                i.created_at_ms as i64,
                i.updated_at_ms as i64,
                i.snapshot_at_ms.map(|t| t as i64),
                i.last_report.map(|r| r.0),
                i.last_report.map(|r| r.1 as i64),
                i.adoptions,
            ],
        )?;
        Ok(())
    }

    /// Deletes a VM's row (its migrations stay, as history).
    pub fn delete_vm(&self, id: &str) -> Result<(), StateError> {
        self.conn().execute("DELETE FROM vms WHERE id = ?1", [id])?;
        Ok(())
    }

    #[cfg(test)] // what the daemon writes, read back by the tests
    pub fn vm(&self, id: &str) -> Result<Option<VmRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{VM_COLUMNS} WHERE id = ?1"))?;
        let row = rusqlite::OptionalExtension::optional(stmt.query_row([id], raw_vm))?;
        row.map(RawVm::parse).transpose()
    }

    /// Every VM, oldest first.
    pub fn vms(&self) -> Result<Vec<VmRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{VM_COLUMNS} ORDER BY created_at_ms, id"))?;
        let rows = stmt.query_map([], raw_vm)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.parse()?);
        }
        Ok(out)
    }

    /// Inserts or replaces a migration's row.
    pub fn put_migration(&self, m: &MigrationInfo) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO migrations (id, vm_id, direction, peer, mode, state,
                 started_at_ms, ended_at_ms, downtime_ms, wire_bytes, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                m.id,
                m.vm_id,
                enum_text(&m.direction),
                m.peer,
                enum_text(&m.mode),
                enum_text(&m.state),
                m.started_at_ms as i64,
                m.ended_at_ms.map(|t| t as i64),
                m.downtime_ms,
                m.wire_bytes as i64,
                m.error,
            ],
        )?;
        Ok(())
    }

    /// The newest `limit` migrations, newest first.
    pub fn migrations(&self, limit: usize) -> Result<Vec<MigrationInfo>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, vm_id, direction, peer, mode, state, started_at_ms, ended_at_ms,
                    downtime_ms, wire_bytes, error
             FROM migrations ORDER BY started_at_ms DESC, id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<f64>>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, vm_id, dir, peer, mode, state, started, ended, downtime, bytes, error) = row?;
            let bad = |reason: String| StateError::BadRow {
                table: "migrations",
                id: id.clone(),
                reason,
            };
            out.push(MigrationInfo {
                direction: text_enum::<MigrationDirection>(&dir).map_err(bad)?,
                mode: text_enum::<MigrationMode>(&mode).map_err(bad)?,
                state: text_enum::<MigrationState>(&state).map_err(bad)?,
                id: id.clone(),
                vm_id,
                peer,
                started_at_ms: started.max(0) as u64,
                ended_at_ms: ended.map(|t| t.max(0) as u64),
                downtime_ms: downtime,
                wire_bytes: bytes.max(0) as u64,
                error,
                progress: None,
            });
        }
        Ok(out)
    }

    /// Appends an event (kind and JSON body), dropping the oldest beyond [`EVENTS_KEPT`];
    /// returns its sequence number.
    pub fn append_event(&self, at_ms: u64, kind: &str, body: &str) -> Result<u64, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO events (at_ms, kind, body) VALUES (?1, ?2, ?3)",
            params![at_ms as i64, kind, body],
        )?;
        let seq = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM events WHERE seq <= ?1",
            [seq.saturating_sub(EVENTS_KEPT)],
        )?;
        tx.commit()?;
        Ok(seq.max(0) as u64)
    }

    #[cfg(test)] // what the daemon writes, read back by the tests
    /// Events after `after_seq`, oldest first, at most `limit`: (seq, at_ms, kind, body).
    pub fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64, String, String)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, kind, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remembers a peer of note (one the node migrated with, a bootstrap that answered).
    pub fn note_peer(
        &self,
        peer_id: &str,
        note: &str,
        addrs: &[String],
        at_ms: u64,
    ) -> Result<(), StateError> {
        let addrs = serde_json::to_string(addrs).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            "INSERT OR REPLACE INTO peers (peer_id, note, addrs, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![peer_id, note, addrs, at_ms as i64],
        )?;
        Ok(())
    }

    #[cfg(test)] // what the daemon writes, read back by the tests
    /// Peers of note: (peer id, note, addresses), newest first.
    pub fn peers(&self) -> Result<Vec<(String, String, Vec<String>)>, StateError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT peer_id, note, addrs FROM peers ORDER BY updated_at_ms DESC")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (peer, note, addrs) = row?;
            out.push((peer, note, serde_json::from_str(&addrs).unwrap_or_default()));
        }
        Ok(out)
    }
}

const VM_COLUMNS: &str = "SELECT id, spec, state, detail, pid, pid_start_ticks, created_at_ms,
    updated_at_ms, snapshot_at_ms, last_report_code, last_report_value, adoptions FROM vms";

/// A VM row as stored, before its text columns are checked.
struct RawVm {
    id: String,
    spec: String,
    state: String,
    detail: Option<String>,
    pid: Option<i64>,
    pid_start_ticks: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
    snapshot_at_ms: Option<i64>,
    report: (Option<i64>, Option<i64>),
    adoptions: i64,
}

fn raw_vm(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawVm> {
    Ok(RawVm {
        id: r.get(0)?,
        spec: r.get(1)?,
        state: r.get(2)?,
        detail: r.get(3)?,
        pid: r.get(4)?,
        pid_start_ticks: r.get(5)?,
        created_at_ms: r.get(6)?,
        updated_at_ms: r.get(7)?,
        snapshot_at_ms: r.get(8)?,
        report: (r.get(9)?, r.get(10)?),
        adoptions: r.get(11)?,
    })
}

impl RawVm {
    fn parse(self) -> Result<VmRecord, StateError> {
        let bad = |reason: String| StateError::BadRow {
            table: "vms",
            id: self.id.clone(),
            reason,
        };
        let spec: VmSpec =
            serde_json::from_str(&self.spec).map_err(|e| bad(format!("spec: {e}")))?;
        let state = text_enum::<VmState>(&self.state).map_err(bad)?;
        let nonneg = |v: i64| v.max(0) as u64;
        Ok(VmRecord {
            info: VmInfo {
                id: self.id.clone(),
                spec,
                state,
                detail: self.detail,
                pid: self.pid.and_then(|p| u32::try_from(p).ok()),
                created_at_ms: nonneg(self.created_at_ms),
                updated_at_ms: nonneg(self.updated_at_ms),
                snapshot_at_ms: self.snapshot_at_ms.map(nonneg),
                last_report: match self.report {
                    (Some(code), Some(value)) => {
                        u32::try_from(code).ok().map(|c| (c, value as u64))
                    }
                    _ => None,
                },
                adoptions: u32::try_from(self.adoptions).unwrap_or(0),
            },
            pid_start_ticks: self.pid_start_ticks.map(nonneg),
        })
    }
}

/// A unit enum's serde name ("moved_away").
fn enum_text<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn text_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown value {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::Backend;

    fn spec() -> VmSpec {
        serde_json::from_str(r#"{"guest":"builtin:counter","mem_mib":32}"#).unwrap()
    }

    fn vm(id: &str, state: VmState) -> VmRecord {
        VmRecord {
            info: VmInfo {
                id: id.into(),
                spec: spec(),
                state,
                detail: Some("why".into()),
                pid: Some(4242),
                created_at_ms: 1_000,
                updated_at_ms: 2_000,
                snapshot_at_ms: Some(1_500),
                last_report: Some((3, u64::MAX >> 1)),
                adoptions: 2,
            },
            pid_start_ticks: Some(987_654),
        }
    }

    #[test]
    fn urls_name_sqlite_files_and_others_are_refused() {
        let d = Path::new("/data");
        assert_eq!(db_path(None, d).unwrap(), d.join("state.db"));
        assert_eq!(
            db_path(Some("sqlite:///var/lib/x.db"), d).unwrap(),
            Path::new("/var/lib/x.db")
        );
        assert_eq!(db_path(Some("sqlite://x.db"), d).unwrap(), d.join("x.db"));
        assert_eq!(db_path(Some("sqlite:y.db"), d).unwrap(), d.join("y.db"));
        assert_eq!(db_path(Some("/abs.db"), d).unwrap(), Path::new("/abs.db"));
        for bad in ["postgres://h/db", "sqlite://", "sqlite:///x.db?mode=ro"] {
            let err = db_path(Some(bad), d).unwrap_err().to_string();
            assert!(err.contains("only SQLite"), "{bad}: {err}");
        }
    }

    /// A live migration of VM `vm` that is done.
    fn migration(id: &str, vm: &str) -> MigrationInfo {
        MigrationInfo {
            id: id.into(),
            vm_id: vm.into(),
            direction: MigrationDirection::Out,
            peer: "12D3KooW".into(),
            mode: MigrationMode::Live,
            state: MigrationState::Done,
            started_at_ms: 10,
            ended_at_ms: Some(20),
            downtime_ms: Some(3.5),
            wire_bytes: 1 << 40,
            error: None,
            progress: None,
        }
    }

    #[test]
    fn vms_and_migrations_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.put_vm(&vm("a", VmState::Running)).unwrap();
            db.put_vm(&vm("b", VmState::MovedAway)).unwrap();
            let mut a = vm("a", VmState::Paused);
            a.info.spec.backend = Backend::Process;
            db.put_vm(&a).unwrap();
            db.put_migration(&migration("m1", "a")).unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let vms = db.vms().unwrap();
        assert_eq!(vms.len(), 2);
        let a = db.vm("a").unwrap().unwrap();
        assert_eq!(a.info.state, VmState::Paused);
        assert_eq!(a.info.spec.backend, Backend::Process);
        assert_eq!(a, {
            let mut x = vm("a", VmState::Paused);
            x.info.spec.backend = Backend::Process;
            x
        });
        assert_eq!(db.vm("b").unwrap().unwrap().info.state, VmState::MovedAway);
        assert!(db.vm("nope").unwrap().is_none());
        let m = db.migrations(10).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].state, MigrationState::Done);
        assert_eq!(m[0].wire_bytes, 1 << 40);
    }

    #[test]
    fn a_deleted_vm_is_gone_after_a_reopen_and_its_migrations_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.put_vm(&vm("a", VmState::Failed)).unwrap();
            db.put_vm(&vm("b", VmState::Running)).unwrap();
            db.put_migration(&migration("m1", "a")).unwrap();
            db.delete_vm("a").unwrap();
            db.delete_vm("nope").unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let ids: Vec<String> = db.vms().unwrap().into_iter().map(|r| r.info.id).collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(db.migrations(10).unwrap().len(), 1);
    }

    #[test]
    fn a_row_with_an_unknown_state_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).unwrap();
        db.put_vm(&vm("a", VmState::Running)).unwrap();
        db.conn()
            .execute("UPDATE vms SET state = 'zombie' WHERE id = 'a'", [])
            .unwrap();
        let err = db.vms().unwrap_err().to_string();
        assert!(err.contains("vms/a") && err.contains("zombie"), "{err}");
    }

    #[test]
    fn events_are_numbered_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).unwrap();
        let first = db.append_event(1, "vm", "{}").unwrap();
        let second = db.append_event(2, "vm", "{\"x\":1}").unwrap();
        assert_eq!(second, first + 1);
        let after = db.events_after(first, 10).unwrap();
        assert_eq!(after, vec![(second, 2, "vm".into(), "{\"x\":1}".into())]);
        db.note_peer(
            "p",
            "migrated a VM to it",
            &["/ip4/1.2.3.4/tcp/1".into()],
            5,
        )
        .unwrap();
        assert_eq!(
            db.peers().unwrap(),
            vec![(
                "p".into(),
                "migrated a VM to it".into(),
                vec!["/ip4/1.2.3.4/tcp/1".into()]
            )]
        );
    }
}
