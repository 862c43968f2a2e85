//! The database schema and its migrations (1: VMs, migrations, events, peers; 2: jobs).
//!
//! The schema version is SQLite's `user_version`. Each migration runs in one transaction
//! with the version bump, so a node killed mid-migration finds the database at the old
//! version and runs it again. A database newer than this binary is refused (an older binary
//! must not write tables it does not understand).

use rusqlite::Connection;

/// Migration N (1-based) brings the schema from version N-1 to N. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: VMs, migrations, events, peers of note.
    "CREATE TABLE vms (
         id TEXT PRIMARY KEY,
         spec TEXT NOT NULL,
         state TEXT NOT NULL,
         detail TEXT,
         pid INTEGER,
         pid_start_ticks INTEGER,
         created_at_ms INTEGER NOT NULL,
         updated_at_ms INTEGER NOT NULL,
         snapshot_at_ms INTEGER,
         last_report_code INTEGER,
         last_report_value INTEGER,
         adoptions INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE migrations (
         id TEXT PRIMARY KEY,
         vm_id TEXT NOT NULL,
         direction TEXT NOT NULL,
         peer TEXT NOT NULL,
         mode TEXT NOT NULL,
         state TEXT NOT NULL,
         started_at_ms INTEGER NOT NULL,
         ended_at_ms INTEGER,
         downtime_ms REAL,
         wire_bytes INTEGER NOT NULL DEFAULT 0,
         error TEXT
     );
     CREATE INDEX migrations_by_vm ON migrations (vm_id);
     CREATE TABLE events (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         at_ms INTEGER NOT NULL,
         kind TEXT NOT NULL,
         body TEXT NOT NULL
     );
     CREATE TABLE peers (
         peer_id TEXT PRIMARY KEY,
         note TEXT NOT NULL,
         addrs TEXT NOT NULL,
         updated_at_ms INTEGER NOT NULL
     );",
    // 2: jobs, as the node they were submitted through (origin) and as a node running one of
    // their replicas (runner) knows them: the signed submission, and the job as JSON.
    "CREATE TABLE jobs (
         id TEXT NOT NULL,
         role TEXT NOT NULL,
         submission BLOB NOT NULL,
         info TEXT NOT NULL,
         state TEXT NOT NULL,
         submitter TEXT NOT NULL,
         expires_at INTEGER NOT NULL,
         updated_at_ms INTEGER NOT NULL,
         PRIMARY KEY (id, role)
     );
     CREATE INDEX jobs_by_submitter ON jobs (submitter, state);",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database is at schema version {found}, newer than this novacron understands \
         ({SCHEMA_VERSION}): run the newer novacron, or point DB_URL at another database"
    )]
    TooNew { found: u32 },
    #[error("schema migration {version} failed: {source}")]
    Migration {
        version: u32,
        source: rusqlite::Error,
    },
    #[error("cannot read the schema version: {0}")]
    Version(rusqlite::Error),
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it found.
pub fn migrate(conn: &mut Connection) -> Result<u32, SchemaError> {
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(SchemaError::Version)?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u32 + 1;
        let fail = |source| SchemaError::Migration { version, source };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_reaches_the_current_version_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('vms', 'migrations', 'events', 'peers', 'jobs')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 5);
    }

    #[test]
    fn a_version_1_database_gains_the_jobs_table_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO vms (id, spec, state, created_at_ms, updated_at_ms) \
             VALUES ('v', '{}', 'running', 1, 1)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 1);
        let (vms, jobs): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM vms), (SELECT count(*) FROM jobs)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((vms, jobs), (1, 0));
    }

    #[test]
    fn a_newer_database_is_refused_and_left_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION + 1);
    }

    #[test]
    fn a_failed_migration_leaves_the_old_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A table in the way makes migration 1 fail half-way through its batch.
        conn.execute_batch("CREATE TABLE events (x INTEGER);")
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("migration 1"), "{err}");
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 0);
        let vms: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'vms'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(vms, 0, "the transaction rolled the first table back");
    }
}
