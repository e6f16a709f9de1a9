//! A service's supervisor (`kiln __kiln-service ROOT NAME`): one small process per service,
//! in its own session, holding the service's lock for as long as it runs. It binds the
//! published ports, reports `ok` (or why not) on its standard output to whoever started it,
//! then converges every 200 ms: the record says how many replicas of which version; it
//! replaces dead replicas by its restart policy, removes the ones above the count, rolls
//! outdated ones (`update.rs`) and keeps the balancer's list to the ready ones. It ends when
//! the record is gone or on SIGTERM (the commands that remove or rebind a service send it),
//! leaving the replicas as they are.

use super::balance::{self, Backends};
use super::tasks::{self, Task};
use super::{file, load, Record};
use crate::container::{self, ContainerError};
use kiln_store::{ContainerState, Store};
use nix::fcntl::{Flock, FlockArg};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SUPERVISE_ARG: &str = "__kiln-service";

/// How many tasks a slot keeps, its current one included (swarm's task history limit).
const HISTORY: usize = 5;

fn lock_file(store: &Store, name: &str) -> Result<fs::File, ContainerError> {
    fs::create_dir_all(super::dir(store))
        .map_err(super::io_err("create the services dir".into()))?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file(store, name, "lock"))
        .map_err(super::io_err(format!("open service {name}'s lock")))
}

/// Whether service `name` has a supervisor.
pub fn running(store: &Store, name: &str) -> bool {
    let Ok(f) = lock_file(store, name) else {
        return false;
    };
    Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err()
}

/// Starts service `name`'s supervisor unless it has one; returns once it holds its ports.
pub fn ensure(store: &Store, name: &str) -> Result<(), ContainerError> {
    if running(store, name) {
        return Ok(());
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file(store, name, "log"))
        .map_err(super::io_err(format!("open service {name}'s log")))?;
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg(SUPERVISE_ARG)
        .arg(store.root())
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(super::io_err(format!("start service {name}'s supervisor")))?;
    let mut line = String::new();
    let out = child.stdout.take().expect("piped");
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    match line.trim() {
        "ok" => Ok(()),
        "" => Err(ContainerError::Invalid(format!(
            "service {name}: its supervisor ended at once (see {})",
            file(store, name, "log").display()
        ))),
        why => Err(ContainerError::Invalid(format!("service {name}: {why}"))),
    }
}

/// Ends service `name`'s supervisor (SIGTERM; SIGKILL after 10 s) and waits until it is gone.
pub fn stop(store: &Store, name: &str) -> Result<(), ContainerError> {
    let pid = fs::read_to_string(file(store, name, "pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let t = Instant::now();
    let mut sig = libc::SIGTERM;
    while running(store, name) {
        if let Some(pid) = pid {
            let _ = crate::sys::proc::kill(pid, sig);
        }
        if t.elapsed() > Duration::from_secs(10) {
            sig = libc::SIGKILL;
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(ContainerError::Invalid(format!(
                "service {name}: its supervisor (PID {pid:?}) does not end"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// What the supervisor remembers between rounds.
#[derive(Default)]
pub(super) struct State {
    /// Tasks (container IDs) that answered on the service's first published port.
    pub ready: HashSet<String>,
    /// Tasks leaving: out of the balancer's list before they are stopped.
    pub draining: HashSet<String>,
    /// Replacements made per slot (restart_policy.max_attempts).
    attempts: HashMap<u32, u32>,
    /// When a slot's dead task was first seen dead (restart_policy.delay).
    died: HashMap<String, Instant>,
    /// Slots whose last start failed before a container existed, and when.
    failed: HashMap<u32, Instant>,
    /// What `<name>.status` says now.
    written: super::Status,
}

/// The supervisor's process; returns its exit code.
pub fn main(root: &Path, name: &str) -> i32 {
    let _ = crate::sys::proc::close_fds_from(3, true);
    let _ = nix::unistd::setsid();
    let say = |m: &str| {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "{m}");
        let _ = o.flush();
    };
    let store = match Store::open(root) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("open the store: {e}"));
            return 1;
        }
    };
    let lock =
        match lock_file(&store, name).map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock)) {
            Ok(Ok(l)) => l,
            Ok(Err(_)) => {
                say("ok"); // another supervisor has it
                return 0;
            }
            Err(e) => {
                say(&e.to_string());
                return 1;
            }
        };
    let _ = fs::write(file(&store, name, "pid"), std::process::id().to_string());
    let Ok(Some(rec)) = load(&store, name) else {
        say(&format!("service {name} has no record"));
        return 1;
    };
    let mut ports = rec.ports.clone();
    let listeners = match container::ports::bind(&mut ports) {
        Ok(l) => l,
        Err(e) => {
            say(&e);
            return 1;
        }
    };
    let backends = Arc::new(Backends::default());
    for (l, spec) in listeners.into_tcp() {
        let b = backends.clone();
        std::thread::spawn(move || balance::serve(l, spec.container_port, b));
    }
    say("ok");
    if let Ok(null) = fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let mut st = State::default();
    loop {
        match load(&store, name) {
            Ok(Some(r)) => {
                if let Err(e) = round(&store, &r, &mut st, &backends) {
                    log(&store, name, &e.to_string());
                }
            }
            Ok(None) => break,
            Err(e) => log(&store, name, &e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(lock);
    0
}

/// A line in the service's log (`<name>.log`), for whoever wonders what its supervisor did.
pub(super) fn log(store: &Store, name: &str, m: &str) {
    let line = format!(
        "{} {name}: {m}\n",
        crate::timefmt::rfc3339(kiln_store::store::now())
    );
    if let Ok(mut f) = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file(store, name, "log"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A slot's current task: its newest.
pub(super) fn current(ts: &[Task], slot: u32) -> Option<&Task> {
    ts.iter().rfind(|t| t.slot == slot)
}

/// Whether a task may take connections (`tasks::ready`, remembered once true while it runs).
pub(super) fn probe(r: &Record, t: &Task, st: &mut State) -> bool {
    if !t.running() || t.unhealthy || t.health_starting {
        return false;
    }
    if st.ready.contains(&t.row.record.id) {
        return true;
    }
    let ok = tasks::ready(r, t);
    if ok {
        st.ready.insert(t.row.record.id.clone());
    }
    ok
}

/// Sets the balancer's list to the ready tasks that are not leaving, by slot.
pub(super) fn refresh(store: &Store, r: &Record, ts: &[Task], st: &mut State, b: &Backends) {
    // What it remembers of removed tasks goes with them (a service lives through many updates).
    let exists = |id: &String| ts.iter().any(|t| &t.row.record.id == id);
    st.ready.retain(exists);
    st.draining.retain(exists);
    st.died.retain(|id, _| exists(id));
    let mut list: Vec<(u32, std::net::Ipv4Addr)> = Vec::new();
    for t in ts {
        if probe(r, t, st) && !st.draining.contains(&t.row.record.id) {
            if let Some(ip) = t.ip {
                list.push((t.slot, ip));
            }
        }
    }
    list.sort();
    b.set(list.iter().map(|(_, ip)| *ip).collect());
    // What the commands read: which tasks take connections, which this supervisor stopped.
    let now = super::Status {
        serving: ts
            .iter()
            .filter(|t| {
                let id = &t.row.record.id;
                t.running() && st.ready.contains(id) && !st.draining.contains(id)
            })
            .map(|t| t.row.record.id.clone())
            .collect(),
        retired: ts
            .iter()
            .filter(|t| st.draining.contains(&t.row.record.id))
            .map(|t| t.row.record.id.clone())
            .collect(),
    };
    if now != st.written {
        let path = file(store, &r.name, "status");
        let tmp = file(store, &r.name, "status.tmp");
        let text = serde_json::to_vec(&now).expect("a status serializes");
        if fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, &path))
            .is_ok()
        {
            st.written = now;
        }
    }
}

/// Takes a task out of the balancer's list, waits for its connections, stops it.
pub(super) fn retire(store: &Store, r: &Record, t: &Task, st: &mut State, b: &Backends) {
    st.draining.insert(t.row.record.id.clone());
    if let Ok(ts) = tasks::tasks(store, &r.name) {
        refresh(store, r, &ts, st, b);
    }
    if let Some(ip) = t.ip {
        b.drain(ip, Duration::from_secs(10));
    }
    tasks::stop(store, t);
    st.ready.remove(&t.row.record.id);
}

/// Whether a dead task's slot gets a new one, by the service's restart policy.
fn wants_restart(r: &Record, t: &Task, st: &State) -> bool {
    let d = &r.service().deploy;
    let failed = t.row.exit_code != Some(0) || t.unhealthy;
    let condition_met = match d.restart_condition.as_deref().unwrap_or("any") {
        "none" => false,
        "on-failure" => failed,
        _ => true,
    };
    condition_met
        && d.restart_max_attempts
            .is_none_or(|m| st.attempts.get(&t.slot).copied().unwrap_or(0) < m)
}

/// One round of convergence.
fn round(store: &Store, r: &Record, st: &mut State, b: &Backends) -> Result<(), ContainerError> {
    let ts = tasks::tasks(store, &r.name)?;
    refresh(store, r, &ts, st, b);
    // A replica its health check calls unhealthy has failed: stopped, then replaced.
    for t in ts.iter().filter(|t| t.running() && t.unhealthy) {
        log(
            store,
            &r.name,
            &format!("task {} is unhealthy", t.row.record.name),
        );
        retire(store, r, t, st, b);
    }
    // Older tasks still running (an update its supervisor did not see through) stop.
    for t in ts
        .iter()
        .filter(|t| t.running() && t.slot <= r.spec.replicas)
    {
        if current(&ts, t.slot).is_some_and(|c| c.row.record.id != t.row.record.id) {
            retire(store, r, t, st, b);
        }
    }
    // Replicas above the count go, highest slot first.
    for t in ts.iter().rev().filter(|t| t.slot > r.spec.replicas) {
        retire(store, r, t, st, b);
        container::remove(store, &t.row.record.id)?;
    }
    let delay = r
        .service()
        .deploy
        .restart_delay
        .as_deref()
        .and_then(crate::frontend::instructions::parse_go_duration)
        .map_or(Duration::from_secs(5), Duration::from_nanos);
    for slot in 1..=r.spec.replicas {
        match current(&ts, slot) {
            None => {
                if st.failed.get(&slot).is_none_or(|t| t.elapsed() >= delay) {
                    st.failed.remove(&slot);
                    if !start(store, r, slot) {
                        st.failed.insert(slot, Instant::now());
                    }
                }
            }
            Some(t) if matches!(t.row.record.state, ContainerState::Running) => {}
            Some(t) => {
                if !wants_restart(r, t, st) {
                    continue;
                }
                let seen = *st
                    .died
                    .entry(t.row.record.id.clone())
                    .or_insert_with(Instant::now);
                if seen.elapsed() >= delay {
                    *st.attempts.entry(slot).or_default() += 1;
                    st.died.remove(&t.row.record.id);
                    start(store, r, slot);
                }
            }
        }
    }
    // History beyond the limit goes, oldest first.
    for slot in 1..=r.spec.replicas {
        let mine: Vec<&Task> = ts.iter().filter(|t| t.slot == slot).collect();
        for t in mine.iter().take(mine.len().saturating_sub(HISTORY)) {
            if !t.running() {
                container::remove(store, &t.row.record.id)?;
            }
        }
    }
    super::update::roll(store, r, st, b)
}

/// Starts a task of the service's current version in `slot`; a failure is logged (the next
/// round sees the slot's task dead, or none, and tries again by the policy).
pub(super) fn start(store: &Store, r: &Record, slot: u32) -> bool {
    match tasks::create(store, r, &r.spec, slot) {
        Ok(()) => true,
        Err(e) => {
            log(store, &r.name, &format!("start a task in slot {slot}: {e}"));
            false
        }
    }
}
