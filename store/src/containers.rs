//! Containers' runtime state, rows of the `containers` table: what the runner recorded when it
//! created, started and reaped each one. `spec` is the runner's own JSON (kiln-store does not
//! read it); every transition is one UPDATE, so a reader sees one state or the next, never half.

use crate::digest::Digest;
use crate::store::{ContainerRecord, Store};
use crate::{Error, Result};
use rusqlite::{params, OptionalExtension};

/// Where a container is in its life. Stored as Docker's words (`created`, `running`, `exited`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Made, never started (or its start failed before the workload ran).
    Created,
    /// Its init process runs (as far as the last writer knew: see the runner's refresh).
    Running,
    /// Its init process ended; the exit code is recorded.
    Exited,
    /// Ended, and waiting out its restart policy's back-off before it runs again.
    Restarting,
}

impl ContainerState {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Restarting => "restarting",
        }
    }

    fn parse(s: &str) -> Option<ContainerState> {
        match s {
            "created" => Some(ContainerState::Created),
            "running" => Some(ContainerState::Running),
            "exited" => Some(ContainerState::Exited),
            "restarting" => Some(ContainerState::Restarting),
            _ => None,
        }
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::ToSql for ContainerState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for ContainerState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        ContainerState::parse(s).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown container state {s:?}").into())
        })
    }
}

/// A container as the runner tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRow {
    pub record: ContainerRecord,
    /// The runner's JSON description (command, ports, env...).
    pub spec: String,
    /// Host PID of the container's init process while it runs.
    pub pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

const COLUMNS: &str =
    "id, name, image, image_ref, created, state, spec, pid, exit_code, started, finished";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContainerRow> {
    let image: String = r.get(2)?;
    Ok(ContainerRow {
        record: ContainerRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            image: image.parse().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            image_ref: r.get(3)?,
            created: r.get(4)?,
            state: r.get(5)?,
        },
        spec: r.get(6)?,
        pid: r.get(7)?,
        exit_code: r.get(8)?,
        started: r.get(9)?,
        finished: r.get(10)?,
    })
}

/// The containers table (`store.containers()`).
pub struct Containers<'s> {
    store: &'s Store,
}

impl Store {
    /// The containers table.
    pub fn containers(&self) -> Containers<'_> {
        Containers { store: self }
    }
}

impl Containers<'_> {
    /// Records a new container with its spec, in state "created".
    pub fn create(&self, c: &ContainerRecord, spec: &str) -> Result<()> {
        self.add(c)?;
        let db = self.store.db();
        db.execute(
            "UPDATE containers SET spec = ?2 WHERE id = ?1",
            params![c.id, spec],
        )?;
        Ok(())
    }

    /// Replaces a container's spec (the runner fills in host ports chosen at start).
    pub fn set_spec(&self, id: &str, spec: &str) -> Result<()> {
        self.update(
            id,
            "UPDATE containers SET spec = ?2 WHERE id = ?1",
            params![id, spec],
        )
    }

    /// Every container, newest first (the later insert first within a second).
    pub fn list(&self) -> Result<Vec<ContainerRow>> {
        let db = self.store.db();
        let mut st = db.prepare(&format!(
            "SELECT {COLUMNS} FROM containers ORDER BY created DESC, rowid DESC"
        ))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One container by full ID.
    pub fn get(&self, id: &str) -> Result<Option<ContainerRow>> {
        let db = self.store.db();
        Ok(db
            .query_row(
                &format!("SELECT {COLUMNS} FROM containers WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?)
    }

    /// The container started: its init's host PID.
    pub fn started(&self, id: &str, pid: i64, at: i64) -> Result<()> {
        self.update(
            id,
            "UPDATE containers SET state = 'running', pid = ?2, started = ?3, exit_code = NULL, finished = NULL WHERE id = ?1",
            params![id, pid, at],
        )
    }

    /// The container exited with `code` (None: unknown, its supervisor died).
    pub fn exited(&self, id: &str, code: Option<i64>, at: i64) -> Result<()> {
        self.update(
            id,
            "UPDATE containers SET state = 'exited', pid = NULL, exit_code = ?2, finished = ?3 WHERE id = ?1",
            params![id, code, at],
        )
    }

    /// The container exited with `code` and will run again after its back-off.
    pub fn restarting(&self, id: &str, code: i64, at: i64) -> Result<()> {
        self.update(
            id,
            "UPDATE containers SET state = 'restarting', pid = NULL, exit_code = ?2, finished = ?3 WHERE id = ?1",
            params![id, code, at],
        )
    }

    /// The container is to start again (`kiln start`): back to "created".
    pub fn recreated(&self, id: &str) -> Result<()> {
        self.update(
            id,
            "UPDATE containers SET state = 'created', pid = NULL WHERE id = ?1",
            params![id],
        )
    }

    fn update(&self, id: &str, sql: &str, p: impl rusqlite::Params) -> Result<()> {
        let db = self.store.db();
        if db.execute(sql, p)? == 0 {
            return Err(Error::NotFound(format!("container {id}")));
        }
        Ok(())
    }

    /// Records a container (the runner's state; here so the store knows which images are in use).
    pub fn add(&self, c: &ContainerRecord) -> Result<()> {
        let db = self.store.db();
        db.execute(
            "INSERT INTO containers(id, name, image, image_ref, created, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![c.id, c.name, c.image.to_string(), c.image_ref, c.created, c.state],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                Error::AlreadyExists(format!("container {} ({})", c.name, c.id))
            }
            e => e.into(),
        })?;
        Ok(())
    }

    /// Removes a container's row; true when there was one.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let db = self.store.db();
        Ok(db.execute("DELETE FROM containers WHERE id = ?1", [id])? > 0)
    }

    /// The containers (id, name) that use an image.
    pub fn using(&self, manifest: &Digest) -> Result<Vec<(String, String)>> {
        let db = self.store.db();
        let mut st =
            db.prepare_cached("SELECT id, name FROM containers WHERE image = ?1 ORDER BY created")?;
        let rows = st.query_map([manifest.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
