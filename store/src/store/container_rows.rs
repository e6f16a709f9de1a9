//! The containers table's writes that other tables depend on (images in use).

use super::*;

impl Store {
    /// Records a container (the runner's state; here so the store knows which images are in use).
    pub fn add_container(&self, c: &ContainerRecord) -> Result<()> {
        let db = self.db();
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

    pub fn remove_container(&self, id: &str) -> Result<bool> {
        let db = self.db();
        Ok(db.execute("DELETE FROM containers WHERE id = ?1", [id])? > 0)
    }

    /// The containers (id, name) that use an image.
    pub fn containers_using(&self, manifest: &Digest) -> Result<Vec<(String, String)>> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT id, name FROM containers WHERE image = ?1 ORDER BY created")?;
        let rows = st.query_map([manifest.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
