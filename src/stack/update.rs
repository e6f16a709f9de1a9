//! Rolling updates, as swarm does them: replicas running an older version are replaced
//! `update_config.parallelism` at a time (1 by default, 0 = all), `delay` apart, each batch's
//! new replicas started before the old ones stop (`order: start-first`) or after
//! (`stop-first`, the default). A new replica that dies or turns unhealthy before it is ready
//! is a failure, and so is one that ends within `monitor` after it was ready (kiln's default:
//! 0, where swarm's is 5 s, watched while the next batches go on): `failure_action: pause` (the
//! default) stops the update there, `rollback` returns the service to its previous version the
//! same way.

use super::supervise::{current, log, refresh, retire, State};
use super::tasks::{self, Task};
use super::{load, save, Record};
use crate::container::ContainerError;
use kiln_store::{ContainerState, Store};
use std::time::{Duration, Instant};

/// How long a new replica may take to become ready before the update counts it failed.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Rolls the service's outdated replicas to its current version, batch by batch; returns when
/// none is left, the update failed, or the record changed under it.
pub(super) fn roll(
    store: &Store,
    r: &Record,
    st: &mut State,
    b: &super::balance::Backends,
) -> Result<(), ContainerError> {
    if r.update_state == "paused" {
        return Ok(());
    }
    let d = &r.service().deploy;
    let parallelism = match d.update_parallelism.unwrap_or(1) {
        0 => r.spec.replicas.max(1),
        n => n,
    } as usize;
    let delay = d
        .update_delay
        .as_deref()
        .and_then(crate::frontend::instructions::parse_go_duration)
        .map_or(Duration::ZERO, Duration::from_nanos);
    let start_first = d.update_order.as_deref() == Some("start-first");
    let monitor = d
        .update_monitor
        .as_deref()
        .and_then(crate::frontend::instructions::parse_go_duration)
        .map_or(Duration::ZERO, Duration::from_nanos);
    let mut first_batch = true;
    loop {
        // A newer deploy or a removal takes over from here.
        match load(store, &r.name)? {
            Some(now) if now.spec.hash == r.spec.hash && now.update_state == r.update_state => {}
            _ => return Ok(()),
        }
        let ts = tasks::tasks(store, &r.name)?;
        let outdated: Vec<Task> = (1..=r.spec.replicas)
            .filter_map(|slot| current(&ts, slot))
            .filter(|t| t.version != r.spec.hash && t.running())
            .take(parallelism)
            .cloned()
            .collect();
        if outdated.is_empty() {
            return finish(store, r);
        }
        if !first_batch {
            std::thread::sleep(delay);
        }
        first_batch = false;
        log(
            store,
            &r.name,
            &format!(
                "updating {} replica(s) to version {}",
                outdated.len(),
                &r.spec.hash
            ),
        );
        let mut made = Vec::new();
        for old in &outdated {
            if !start_first {
                retire(store, r, old, st, b);
            }
            if tasks::create(store, r, &r.spec, old.slot).is_err() {
                return failed(store, r, &format!("{}.{}", r.name, old.slot));
            }
            made.push(old.slot);
        }
        // Each new replica must become ready.
        let t = Instant::now();
        loop {
            let ts = tasks::tasks(store, &r.name)?;
            refresh(store, r, &ts, st, b);
            let news: Vec<&Task> = made.iter().filter_map(|s| current(&ts, *s)).collect();
            if let Some(bad) = news.iter().find(|n| {
                n.version != r.spec.hash
                    || n.unhealthy
                    || !matches!(
                        n.row.record.state,
                        ContainerState::Running | ContainerState::Created
                    )
            }) {
                return failed(store, r, &bad.row.record.name);
            }
            if news.iter().all(|n| st.ready.contains(&n.row.record.id)) {
                break;
            }
            if t.elapsed() > READY_WITHIN {
                return failed(store, r, &news[0].row.record.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if start_first {
            for old in &outdated {
                retire(store, r, old, st, b);
            }
        }
        // `monitor`: the new replicas must keep running (and healthy) that long too.
        let t = Instant::now();
        while t.elapsed() < monitor {
            let ts = tasks::tasks(store, &r.name)?;
            refresh(store, r, &ts, st, b);
            if let Some(bad) = made
                .iter()
                .filter_map(|s| current(&ts, *s))
                .find(|n| !n.running() || n.unhealthy)
            {
                return failed(store, r, &bad.row.record.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Records the update as done (or the rollback).
fn finish(store: &Store, r: &Record) -> Result<(), ContainerError> {
    let state = match r.update_state.as_str() {
        "updating" => "completed",
        "rollback_started" => "rollback_completed",
        _ => return Ok(()),
    };
    let mut now = r.clone();
    now.update_state = state.into();
    now.update_message = if state == "completed" {
        "update completed".into()
    } else {
        // Why it rolled back stays in the message.
        format!("rollback completed: {}", r.update_message)
    };
    log(store, &r.name, &now.update_message);
    save(store, &now)
}

/// A new replica failed: pause, or roll back to the previous version.
fn failed(store: &Store, r: &Record, task: &str) -> Result<(), ContainerError> {
    let mut now = r.clone();
    let rollback = r.service().deploy.update_failure_action.as_deref() == Some("rollback");
    match (&r.previous, rollback && r.update_state == "updating") {
        (Some(prev), true) => {
            now.spec = prev.clone();
            now.previous = Some(r.spec.clone());
            now.update_state = "rollback_started".into();
            now.update_message =
                format!("update rolled back due to failure or early termination of task {task}");
        }
        _ => {
            now.update_state = "paused".into();
            now.update_message =
                format!("update paused due to failure or early termination of task {task}");
        }
    }
    log(store, &r.name, &now.update_message);
    save(store, &now)
}
