//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`), `kiln start`,
//! `kiln restart` and `kiln system restore`, as Docker has them, without a daemon: the
//! container's supervisor runs it again after Docker's back-off (100 ms, doubling, at most a
//! minute, back to 100 ms after 10 s up), and what a user did is kept beside the container:
//!
//! ```text
//! <root>/containers/<id>/restart.json   {"count": N, "stopped_by_user": bool}
//! ```
//!
//! A `stop` or `kill` marks the container stopped by its user first, so its policy does not bring
//! it back; `start` clears that. After a reboot nothing runs (no daemon): `system restore`, which
//! a boot unit calls, starts every container whose policy says so.

use super::{dir, spec_of, ContainerError, ContainerRow};
use kiln_store::{ContainerState, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::time::{Duration, Instant};

/// When the supervisor runs a container again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never (the default).
    #[default]
    No,
    /// After a non-zero exit, at most `max` times (None: no limit).
    OnFailure { max: Option<u32> },
    /// After every exit, unless its user stopped it.
    Always,
    /// As `Always`, and `system restore` leaves it stopped when its user stopped it.
    UnlessStopped,
}

impl RestartPolicy {
    /// Parses `--restart`.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        let (name, n) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let p = match (name, n) {
            ("no", None) => RestartPolicy::No,
            ("always", None) => RestartPolicy::Always,
            ("unless-stopped", None) => RestartPolicy::UnlessStopped,
            ("on-failure", None) => RestartPolicy::OnFailure { max: None },
            ("on-failure", Some(n)) => RestartPolicy::OnFailure {
                max: Some(n.parse().map_err(|_| {
                    format!("invalid restart policy {s:?}: the retry count {n:?} is not a number")
                })?),
            },
            (_, Some(_)) => {
                return Err(format!(
                    "invalid restart policy {s:?}: only on-failure takes a retry count"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid restart policy {s:?}: use no, on-failure[:N], always or unless-stopped"
                ))
            }
        };
        Ok(p)
    }

    /// Docker's name for it.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure { .. } => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Whether an exit with `code`, after `count` restarts, runs the container again.
    pub fn wants(self, code: i32, count: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => code != 0 && max.is_none_or(|m| count < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

/// What the restart policy has done, and whether the user stopped the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    pub count: u32,
    pub stopped_by_user: bool,
}

/// The container's restart state.
pub fn state(store: &Store, id: &str) -> RestartState {
    fs::read(dir(store, id).join("restart.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(store: &Store, id: &str, st: RestartState) -> Result<(), ContainerError> {
    let d = dir(store, id);
    let tmp = d.join("restart.json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec(&st).expect("restart state serializes"),
    )
    .and_then(|_| fs::rename(&tmp, d.join("restart.json")))
    .map_err(super::io_err("record the restart state"))
}

/// Marks the container stopped by its user (before `stop` or `kill` signals it).
pub fn mark_stopped(store: &Store, id: &str) -> Result<(), ContainerError> {
    if !dir(store, id).exists() {
        return Ok(());
    }
    let st = RestartState {
        stopped_by_user: true,
        ..state(store, id)
    };
    save(store, id, st)
}

/// The supervisor's loop: runs the container, and again while its policy asks, with Docker's
/// back-off; returns the last exit code.
pub(super) fn supervise(store: &Store, id: &str) -> Result<i32, ContainerError> {
    let mut delay = Duration::from_millis(100);
    loop {
        let row = store
            .containers()
            .get(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let policy = spec_of(&row)?.restart;
        let t = Instant::now();
        let code = super::run(
            store,
            &row,
            super::Tee::None,
            std::process::Stdio::null(),
            false,
        )?;
        let mut st = state(store, id);
        if st.stopped_by_user || !policy.wants(code, st.count) || !dir(store, id).exists() {
            return Ok(code);
        }
        if t.elapsed() >= Duration::from_secs(10) {
            delay = Duration::from_millis(100);
        }
        st.count += 1;
        save(store, id, st)?;
        store
            .containers()
            .restarting(id, code as i64, kiln_store::store::now())?;
        // The back-off, cut short by a stop.
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if state(store, id).stopped_by_user {
                store
                    .containers()
                    .exited(id, Some(code as i64), kiln_store::store::now())?;
                return Ok(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// `kiln start`: runs a stopped container again under a new supervisor (its root, volumes and
/// log are where they were). A running one is left as it is.
pub fn start(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    let row = super::refresh(store, row.clone())?;
    match row.record.state {
        ContainerState::Running | ContainerState::Restarting => return Ok(()),
        ContainerState::Created | ContainerState::Exited => {}
    }
    save(store, &row.record.id, RestartState::default())?;
    store.containers().recreated(&row.record.id)?;
    super::start_detached(store, &row)
}

/// `kiln system restore`: after a reboot, starts every container whose policy asks for it:
/// `always` ones, and `unless-stopped` ones their user did not stop. Returns their names.
pub fn restore(store: &Store) -> Result<Vec<String>, ContainerError> {
    let mut started = Vec::new();
    for row in store.containers().list()? {
        let row = super::refresh(store, row)?;
        if matches!(
            row.record.state,
            ContainerState::Running | ContainerState::Restarting
        ) {
            continue;
        }
        let Ok(spec) = spec_of(&row) else { continue };
        let st = state(store, &row.record.id);
        let wanted = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::UnlessStopped => !st.stopped_by_user,
            _ => false,
        };
        if wanted {
            start(store, &row)?;
            started.push(row.record.name);
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_decide_as_docker() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure { max: Some(3) }
        );
        assert_eq!(
            RestartPolicy::parse("unless-stopped").unwrap(),
            RestartPolicy::UnlessStopped
        );
        for bad in ["sometimes", "always:2", "on-failure:x"] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
        let of = RestartPolicy::OnFailure { max: Some(2) };
        assert!(of.wants(1, 0) && of.wants(1, 1) && !of.wants(1, 2) && !of.wants(0, 0));
        assert!(RestartPolicy::Always.wants(0, 1000));
        assert!(!RestartPolicy::No.wants(1, 0));
    }
}
