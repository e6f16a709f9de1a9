//! A container's life after `create`: running it (attached or under a detached supervisor), its log, stop, kill and removal.

use super::*;
#[allow(unused_imports)]
use kiln_store::ContainerState;

/// One line of the container's log (Docker's json-file driver format).
#[derive(Serialize, Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// `run` in the foreground: the container's output on the terminal, SIGINT/SIGTERM forwarded; its
/// exit code. A container that could not start is recorded as exited with 125 and, with `--rm`,
/// removed.
pub fn run_attached(
    store: &Store,
    row: &ContainerRow,
    stdin: Stdio,
) -> Result<i32, ContainerError> {
    let id = &row.record.id;
    run(store, row, Tee::Terminal, stdin, true).inspect_err(|_| {
        let _ = store
            .containers()
            .exited(id, Some(125), kiln_store::store::now());
        if spec_of(row).is_ok_and(|s| s.remove) {
            let _ = remove_with_volumes(store, id);
        }
    })
}

/// `run -d`: starts the container under a supervisor of its own; one that could not start is
/// removed with `--rm`.
pub fn run_detached(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    start_detached(store, row).inspect_err(|_| {
        if spec_of(row).is_ok_and(|s| s.remove) {
            let _ = remove_with_volumes(store, &row.record.id);
        }
    })
}

/// Where the container's output goes besides the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// Detached: the log only.
    None,
    /// Foreground: also to kiln's own stdout/stderr.
    Terminal,
}

/// Runs a created container to its end: starts it, publishes its ports, writes its log, and
/// records its start and exit. Returns the exit code (Docker's: 125 setup, 126, 127, else the
/// command's; 128+N when killed by signal N).
pub fn run(
    store: &Store,
    row: &ContainerRow,
    tee: Tee,
    stdin: Stdio,
    forward_signals: bool,
) -> Result<i32, ContainerError> {
    let id = row.record.id.clone();
    // Held until the exit is recorded (close-on-exec: no container inherits it).
    let owner = owner_lock_file(store, &id).map_err(io_err("open the container's owner lock"))?;
    owner
        .lock()
        .map_err(io_err("take the container's owner lock"))?;
    let mut spec = spec_of(row)?;
    // Its control groups went when it last exited: a start makes them again.
    if spec.runtime.cgroups.iter().any(|c| !c.exists()) {
        spec.runtime.cgroups = super::cgroups(&id, &spec.limits, &spec.runtime.security)?;
    }
    let listeners = ports::bind(&mut spec.ports).map_err(ContainerError::Invalid)?;
    // Its network namespace, undone when it exits (or if it cannot start). netavark sets it up
    // while the container's init makes the rest of the container, which waits at its gate
    // before the exec until the network is there.
    let mut net_guard = None;
    let mut pending = None;
    if !spec.networks.is_empty() {
        net_guard = Some(NetGuard { store, id: &id });
        pending = Some(crate::network::prepare(
            store,
            &id,
            &row.record.name,
            &spec.networks,
            &spec.dns,
        )?);
    }
    let mut rootless_ns = None;
    if spec.networks.is_empty()
        && crate::rootless::active()
        && matches!(spec.runtime.net, runtime::Net::Join(_))
    {
        net_guard = Some(NetGuard { store, id: &id });
        rootless_ns = Some(crate::network::rootless::prepare(store.root(), &id)?);
    }
    let gated = pending.is_some() || rootless_ns.is_some();
    // The chosen host ports (for -P and `-p 80`) are what ps shows.
    store
        .containers()
        .set_spec(&id, &serde_json::to_string(&spec).expect("spec serializes"))?;

    let log_path = dir(store, &id).join("log.json");
    let log = Arc::new(Mutex::new(
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?,
    ));
    // With -t the container's three streams are the slave side of a pseudo-terminal; kiln
    // relays the master side (and, in the foreground, puts its own terminal in raw mode).
    let mut pty_master: Option<fs::File> = None;
    let mut child = if spec.runtime.tty {
        use std::os::fd::AsFd;
        let (ours, theirs) =
            crate::sys::proc::socketpair().map_err(io_err("create the terminal socket"))?;
        let mut rt = spec.runtime.clone();
        rt.winsize = crate::sys::proc::window_size(io::stdin().as_fd());
        drop(stdin);
        // stderr stays a pipe until the terminal replaces it: setup errors still reach kiln.
        let c = runtime::spawn_gated(
            &rt,
            Stdio::from(theirs),
            Stdio::null(),
            Stdio::piped(),
            gated,
        )
        .map_err(io_err("start the container"))?;
        // The terminal is made past the gate: the network first.
        let c = finish_network(pending.take(), rootless_ns.take(), c)?;
        // No terminal means the helper failed before making one; its exit code says why.
        if let Ok(master) = crate::sys::proc::recv_fd(ours.as_fd()) {
            pty_master = Some(fs::File::from(master));
        }
        c
    } else {
        let c = runtime::spawn_gated(&spec.runtime, stdin, Stdio::piped(), Stdio::piped(), gated)
            .map_err(io_err("start the container"))?;
        finish_network(pending.take(), rootless_ns.take(), c)?
    };
    let helper = child.child.id();
    // The PID arrives once the workload is forked, the pipe's end once it has exec'd: then it
    // is "running", so `exec` and `stop` meet a container set up.
    let init = child.wait_started();
    let mut child = child.child;
    let health_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut health_thread = None;
    if let Some(pid) = init {
        store
            .containers()
            .started(&id, pid as i64, kiln_store::store::now())?;
        if let Some(cfg) = spec.health.clone() {
            let exec = super::exec::exec_spec(&spec, pid);
            health_thread = Some(super::health::monitor(
                dir(store, &id),
                cfg,
                exec,
                health_stop.clone(),
            ));
        }
        if forward_signals {
            std::thread::spawn(move || {
                let sigs = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
                while let Ok(sig) = crate::sys::proc::wait_signal(&sigs) {
                    let _ = crate::sys::proc::kill(pid, sig);
                }
            });
        }
        if let Ok(ns) = fs::File::open(format!("/proc/{helper}/ns/net")) {
            let _ = ports::serve(listeners, ns.into());
        }
    }
    let mut pumps = Vec::new();
    let mut raw_mode = None;
    let mut tty_reader: Option<Box<dyn io::Read + Send>> = None;
    if let Some(master) = &pty_master {
        use std::os::fd::AsFd;
        tty_reader = Some(Box::new(
            master.try_clone().map_err(io_err("dup the terminal"))?,
        ));
        if tee == Tee::Terminal {
            raw_mode = crate::sys::proc::make_raw(io::stdin().as_fd()).ok();
            let mut writer = master.try_clone().map_err(io_err("dup the terminal"))?;
            // Keyboard input to the container, until kiln ends.
            std::thread::spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut writer);
            });
        }
    }
    for (reader, stream) in [
        (
            tty_reader.or_else(|| {
                child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn io::Read + Send>)
            }),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn io::Read + Send>),
            "stderr",
        ),
    ] {
        let Some(reader) = reader else { continue };
        let log = log.clone();
        pumps.push(std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if tee == Tee::Terminal {
                    let _ = if stream == "stdout" {
                        let mut o = io::stdout().lock();
                        o.write_all(&buf).and_then(|_| o.flush())
                    } else {
                        io::stderr().lock().write_all(&buf)
                    };
                }
                let line = LogLine {
                    log: String::from_utf8_lossy(&buf).into_owned(),
                    stream: stream.into(),
                    time: timefmt::rfc3339_nanos(std::time::SystemTime::now()),
                };
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = serde_json::to_writer(&mut *f, &line);
                let _ = f.write_all(b"\n");
            }
        }));
    }
    let status = child.wait().map_err(io_err("wait for the container"))?;
    // Before the exit is recorded: whoever waits for it finds the network gone too.
    drop(net_guard);
    health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = health_thread {
        let _ = t.join();
    }
    // The terminal's reader sees EOF (EIO) once every slave copy is closed; ours went to the
    // child, so only the master copies remain.
    drop(pty_master);
    for p in pumps {
        let _ = p.join();
    }
    if let Some(t) = raw_mode {
        use std::os::fd::AsFd;
        crate::sys::proc::restore_terminal(io::stdin().as_fd(), &t);
    }
    let code = runtime::exit_code(status);
    store
        .containers()
        .exited(&id, Some(code as i64), kiln_store::store::now())?;
    // Its control groups only matter while it runs (as Docker's): they go now, not at `rm`, so
    // a stopped container that is never removed leaves nothing in /sys/fs/cgroup.
    for cg in &spec.runtime.cgroups {
        runtime::devices::remove_cgroup(cg);
    }
    if spec.remove {
        remove_with_volumes(store, &id)?;
    }
    Ok(code)
}

/// Sets up the network a gated helper's workload waits for, then lets it go on; on failure the
/// workload gives up before its exec.
fn finish_network(
    pending: Option<crate::network::Pending>,
    rootless_ns: Option<PathBuf>,
    mut helper: runtime::Helper,
) -> Result<runtime::Helper, ContainerError> {
    let done = match (pending, rootless_ns) {
        (Some(p), _) => p.finish(),
        (None, Some(ns)) => crate::network::rootless::finish(&ns),
        (None, None) => Ok(()),
    };
    if let Err(e) = done {
        helper.abort();
        return Err(e.into());
    }
    helper.open_gate();
    Ok(helper)
}

/// Tears the container's network down when dropped: at its exit, or when its start failed.
struct NetGuard<'a> {
    store: &'a Store,
    id: &'a str,
}

impl Drop for NetGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = crate::network::teardown(self.store.root(), self.id) {
            tracing::warn!("container {}: network teardown: {e}", &self.id[..12]);
        }
    }
}

/// Starts a created container under a detached supervisor (`kiln __kiln-supervise`) in its own
/// session, and waits until it runs (or failed to).
pub fn start_detached(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    let id = &row.record.id;
    let errfile = dir(store, id).join("supervisor.err");
    let err = fs::File::create(&errfile).map_err(io_err("create the supervisor's error file"))?;
    std::process::Command::new("/proc/self/exe")
        .arg(SUPERVISE_ARG)
        .arg(store.root())
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(io_err("start the supervisor"))?;
    let t = std::time::Instant::now();
    loop {
        let r = store
            .containers()
            .get(id)?
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        match r.record.state {
            ContainerState::Running | ContainerState::Restarting => return Ok(()),
            // It ran and ended already; its restart policy takes it from here.
            ContainerState::Exited
                if r.started.is_some()
                    && spec_of(&r)
                        .is_ok_and(|s| s.restart != super::restart::RestartPolicy::No) =>
            {
                return Ok(())
            }
            ContainerState::Exited => {
                let why = fs::read_to_string(&errfile).unwrap_or_default();
                if r.exit_code.unwrap_or(0) != 0 || !why.trim().is_empty() {
                    return Err(ContainerError::Invalid(format!(
                        "container {} exited at once (code {}){}",
                        &id[..12],
                        r.exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        if why.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", why.trim())
                        }
                    )));
                }
                return Ok(());
            }
            _ => {}
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(ContainerError::Invalid(format!(
                "container {} did not start within 30 s",
                &id[..12]
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The supervisor: `kiln __kiln-supervise ROOT ID`. Leaves the caller's session, runs the
/// container with its output to the log, records its end, and exits.
pub fn supervise_main(root: &Path, id: &str) -> i32 {
    // The caller's descriptors stay with the caller: a supervisor lives as long as its
    // container, and would otherwise hold them (a pipe never closing, a file kept open).
    let _ = crate::sys::proc::close_fds_from(3, true);
    let _ = nix::unistd::setsid();
    let result = (|| -> Result<i32, ContainerError> {
        let store = Store::open(root)?;
        let row = store
            .containers()
            .get(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        drop(row);
        super::restart::supervise(&store, id)
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("supervise {id}: {e}");
            if let Ok(store) = Store::open(root) {
                let _ = store
                    .containers()
                    .exited(id, Some(125), kiln_store::store::now());
            }
            125
        }
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout` seconds. Returns whether it
/// was running.
pub fn stop(
    store: &Store,
    row: &ContainerRow,
    timeout: Option<u64>,
) -> Result<bool, ContainerError> {
    let row = refresh(store, row.clone())?;
    // Stopped by its user: its restart policy does not bring it back.
    super::restart::mark_stopped(store, &row.record.id)?;
    if row.record.state == ContainerState::Restarting {
        // Its supervisor ends the back-off when it sees the mark; one that is gone cannot.
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            match store.containers().get(&row.record.id)? {
                Some(r) if r.record.state == ContainerState::Restarting => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return Ok(true),
            }
        }
        store
            .containers()
            .exited(&row.record.id, row.exit_code, kiln_store::store::now())?;
        return Ok(true);
    }
    if row.record.state != ContainerState::Running {
        return Ok(false);
    }
    let spec = spec_of(&row)?;
    let Some(pid) = row.pid else { return Ok(false) };
    let sig = crate::sys::proc::signal_number(&spec.stop_signal).unwrap_or(libc::SIGTERM);
    let _ = crate::sys::proc::kill(pid as i32, sig);
    let wait = Duration::from_secs(timeout.unwrap_or(spec.stop_timeout));
    if !wait_exit(store, &row.record.id, pid, wait) {
        let _ = crate::sys::proc::kill(pid as i32, libc::SIGKILL);
        wait_exit(store, &row.record.id, pid, Duration::from_secs(10));
    }
    Ok(true)
}

/// Sends `sig` to a running container's init.
pub fn kill(store: &Store, row: &ContainerRow, sig: libc::c_int) -> Result<(), ContainerError> {
    let row = refresh(store, row.clone())?;
    match (row.record.state, row.pid) {
        (ContainerState::Running, Some(pid)) => {
            super::restart::mark_stopped(store, &row.record.id)?;
            crate::sys::proc::kill(pid as i32, sig).map_err(io_err("send the signal"))?;
            if sig == libc::SIGKILL {
                wait_exit(store, &row.record.id, pid, Duration::from_secs(10));
            }
            Ok(())
        }
        _ => Err(ContainerError::Invalid(format!(
            "container {} is not running",
            row.record.name
        ))),
    }
}

/// Waits until the container's owner recorded its exit (or its init is gone).
pub(super) fn wait_exit(store: &Store, id: &str, pid: i64, timeout: Duration) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        let exited = store
            .containers()
            .get(id)
            .ok()
            .flatten()
            .is_none_or(|r| r.record.state != ContainerState::Running);
        if exited {
            return true;
        }
        if !alive(pid) {
            // The owner (supervisor or foreground kiln) records the code once it reaps the
            // helper, and holds its lock until then: wait for the record while it works, and
            // record the exit as unknown only when it is gone too (killed with the container)
            // or stuck past a minute.
            let t2 = std::time::Instant::now();
            while owner_busy(store, id) && t2.elapsed() < Duration::from_secs(60) {
                match store.containers().get(id) {
                    Ok(Some(r)) if r.record.state == ContainerState::Running => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => return true,
                }
            }
            if let Ok(Some(r)) = store.containers().get(id) {
                if r.record.state == ContainerState::Running {
                    let _ = store
                        .containers()
                        .exited(id, None, kiln_store::store::now());
                }
            }
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Removes a stopped container and the anonymous volumes made for it (`rm -v`, and `run --rm`
/// when it exits, as Docker's); named volumes stay.
pub fn remove_with_volumes(store: &Store, id: &str) -> Result<(), ContainerError> {
    let anonymous: Vec<String> = store
        .containers()
        .get(id)?
        .and_then(|row| spec_of(&row).ok())
        .map(|spec| {
            super::volume::anonymous(&spec.mounts)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    remove(store, id)?;
    for name in anonymous {
        // Another container may have taken it with --volumes-from: then it stays.
        match super::volume::remove(store, &name) {
            Ok(()) | Err(ContainerError::NoSuchVolume(_)) => {}
            Err(ContainerError::Invalid(m)) if m.contains("in use") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes a stopped container: its network (if a killed owner left it set up) and addresses,
/// its control groups, its directory, then its row.
pub fn remove(store: &Store, id: &str) -> Result<(), ContainerError> {
    crate::network::teardown(store.root(), id)?;
    store.networks().release(id)?;
    if let Some(row) = store.containers().get(id)? {
        if let Ok(spec) = spec_of(&row) {
            for cg in &spec.runtime.cgroups {
                runtime::devices::remove_cgroup(cg);
            }
        }
    }
    let d = dir(store, id);
    if d.exists() {
        fs::remove_dir_all(&d).map_err(io_err(format!("remove {}", d.display())))?;
    }
    store.containers().remove(id)?;
    Ok(())
}

/// `system reset`: kills and removes every container, removes every network with its bridge
/// and rules, then the whole store (images, volumes, cache). Nothing is left on the machine.
pub fn reset(store: Store) -> Result<(), ContainerError> {
    for row in store.containers().list()? {
        let row = refresh(&store, row)?;
        if row.record.state == ContainerState::Running {
            kill(&store, &row, libc::SIGKILL)?;
        }
        remove(&store, &row.record.id)?;
    }
    crate::network::reset(&store)?;
    let root = store.root().to_path_buf();
    drop(store);
    fs::remove_dir_all(&root).map_err(io_err(format!("remove {}", root.display())))
}

/// The container's log lines.
pub fn read_log(store: &Store, id: &str) -> Result<Vec<LogLine>, ContainerError> {
    let p = dir(store, id).join("log.json");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
