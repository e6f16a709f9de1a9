//! Creating a container: flags checked, the image's config and `run`'s options merged into its spec, its root prepared by the snapshotter, its cgroups made.

use super::*;
#[allow(unused_imports)]
use kiln_store::ContainerState;

/// Creates a container: resolves the image, makes its directories and records it. Returns the
/// container's row, in state "created".
pub fn create(store: &Store, o: &RunOptions) -> Result<ContainerRow, ContainerError> {
    runtime::need_root("kiln run").map_err(ContainerError::Invalid)?;
    check_flags(o)?;
    let resolved = image::resolve(store, &o.image)?;
    let img = resolved.image;
    let cfg = image::read_config(store, &img)?;
    let snaps = crate::snapshotter::unpack_image(store, &img).map_err(ImageError::from)?;
    let lowers: Vec<PathBuf> = snaps.iter().map(|s| store.snapshot_fs(s)).collect();
    let view = crate::snapshotter::view(&lowers);
    let rc = &cfg.config;

    let id = new_id()?;
    let name = match &o.name {
        Some(n) if !valid_name(n) => {
            return Err(ContainerError::Invalid(format!(
                "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )))
        }
        Some(n) => n.clone(),
        None => generate_name(store, &id)?,
    };
    let hostname = o.hostname.clone().unwrap_or_else(|| id[..12].to_string());

    // Docker's rules: --entrypoint replaces the image's and drops its CMD; CLI args replace CMD.
    let entrypoint: Vec<String> = match &o.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => rc.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !o.cmd.is_empty() {
        o.cmd.clone()
    } else if o.entrypoint.is_some() {
        vec![]
    } else {
        rc.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(ContainerError::Invalid(format!(
            "no command specified: image {} has no CMD or ENTRYPOINT; give one after the image name",
            o.image
        )));
    }

    // Env: the image's, HOSTNAME, then --env-file, then -e; PATH and HOME as Docker sets them.
    let mut env: Vec<String> = rc.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::plan::DEFAULT_PATH));
    }
    set_env(&mut env, &format!("HOSTNAME={hostname}"));
    for f in &o.env_files {
        for kv in read_env_file(f)? {
            set_env(&mut env, &kv);
        }
    }
    for kv in &o.env {
        set_env(&mut env, kv);
    }
    let user = o
        .user
        .clone()
        .or_else(|| rc.user.clone())
        .unwrap_or_default();
    let ids: Ids = runtime::user::resolve(
        &user,
        view.read_string("/etc/passwd").as_deref(),
        view.read_string("/etc/group").as_deref(),
    )
    .map_err(|e| ContainerError::Invalid(e.to_string()))?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            ids.home.clone().unwrap_or_else(|| "/".into())
        ));
    }
    let cwd = o
        .workdir
        .clone()
        .or_else(|| rc.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());

    // The network: a bridge network (the default one unless named), or a mode.
    let mode = match o.network.as_str() {
        "" | "default" => crate::network::DEFAULT,
        m => m,
    };
    // Rootless, the default network is the container's own namespace with pasta
    // (network/rootless.rs); user-defined networks live in the user's shared namespace.
    let rootless_net = crate::rootless::active() && mode == crate::network::DEFAULT;
    let bridge_net = match mode {
        _ if rootless_net => None,
        "host" | "none" | "private" => None,
        m if m.starts_with("container:") => {
            return Err(ContainerError::Invalid(format!(
                "--network {m}: joining another container's network is not supported; put both on a user network"
            )))
        }
        m => Some(crate::network::resolve(store, m)?),
    };
    let user_net = bridge_net
        .as_ref()
        .is_some_and(|n| n.name != crate::network::DEFAULT);
    if !user_net && o.ip.is_some() {
        return Err(ContainerError::Invalid(
            "user specified IP address is supported on user defined networks only".into(),
        ));
    }
    if !user_net && !o.network_aliases.is_empty() {
        return Err(ContainerError::Invalid(
            "network-scoped alias is supported only for containers in user defined networks".into(),
        ));
    }
    let net = match mode {
        "host" => Net::Host,
        "none" | "private" => Net::Private,
        _ => Net::Join(crate::network::netns::path(store.root(), &id)),
    };
    let mut ports = o.ports.clone();
    if o.publish_all {
        for p in rc.exposed_ports.iter().flat_map(|m| m.keys()) {
            let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            if let Ok(n) = num.parse::<u16>() {
                if !ports
                    .iter()
                    .any(|q| q.container_port == n && q.proto == proto)
                {
                    ports.push(PortSpec {
                        host_ip: "0.0.0.0".into(),
                        host_port: 0,
                        container_port: n,
                        proto: proto.to_string(),
                    });
                }
            }
        }
    }
    if !ports.is_empty() && matches!(mode, "host" | "none") {
        return Err(ContainerError::Invalid(format!(
            "ports cannot be published with --network {mode}"
        )));
    }
    if crate::rootless::active() {
        let lowest = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
            .unwrap_or(1024);
        if let Some(p) = ports
            .iter()
            .find(|p| p.host_port != 0 && p.host_port < lowest)
        {
            return Err(ContainerError::Invalid(format!(
                "-p {}:{}: a rootless kiln cannot listen on host ports below {lowest} (net.ipv4.ip_unprivileged_port_start); publish on a higher port, e.g. -p {}:{}",
                p.host_port, p.container_port, p.host_port as u32 + 8000, p.container_port
            )));
        }
    }
    let stop_signal = o
        .stop_signal
        .clone()
        .or_else(|| rc.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".into());
    if crate::sys::proc::signal_number(&stop_signal).is_none() {
        return Err(ContainerError::Invalid(format!(
            "invalid stop signal {stop_signal:?}"
        )));
    }

    let limits = Limits {
        memory: o.memory,
        cpus: o.cpus,
        pids: o.pids_limit,
    };
    // Volumes (made now, a new one filled from the image), bind mounts, tmpfs mounts.
    let image_volumes: Vec<String> = rc.volumes.iter().flat_map(|m| m.keys().cloned()).collect();
    let mounts = volume::resolve(store, &o.mounts, &image_volumes, &view)?;
    // Its address on the network (released again if anything below fails).
    let networks: Vec<crate::network::Attached> = match &bridge_net {
        Some(n) => {
            store
                .networks()
                .attach(&n.id, &id, o.ip, &o.network_aliases)
                .map_err(|e| match e {
                    kiln_store::Error::InUse(m) => {
                        ContainerError::Invalid(format!("{m} is already in use"))
                    }
                    e => e.into(),
                })?;
            vec![crate::network::Attached {
                network: n.id.clone(),
                interface: "eth0".into(),
            }]
        }
        None => vec![],
    };
    let d = dir(store, &id);
    let files = d.join("files");
    // Everything made from here on is removed again if a later step fails.
    // The root filesystem, the mount stubs it needs, its control groups.
    type Prepared = (Rootfs, Vec<(String, bool)>, Vec<PathBuf>);
    let prepared = (|| -> Result<Prepared, ContainerError> {
        fs::create_dir_all(&files).map_err(io_err(format!("create {}", d.display())))?;
        runtime::write_etc_files(&files, &hostname).map_err(io_err("prepare /etc files"))?;
        write_network_files(store, &id, &files, &hostname, &networks, &net, o)?;
        let mut stubs =
            runtime::missing_mount_points(&view).map_err(io_err("look up mount points"))?;
        // Mount points the image lacks are made in the container's own root (in-root, as the
        // runtime resolves every target): a directory, or a file for a bind of one.
        for m in &mounts {
            let t = m.target();
            if view
                .resolve(t, true)
                .map_err(io_err(format!("look up {t}")))?
                .is_none()
            {
                let file = matches!(m, volume::MountSpec::Bind { source, .. } if !source.is_dir());
                stubs.push((t.to_string(), !file));
            }
        }
        let (kind, _) = crate::snapshotter::choose(store.root(), None);
        let snapshotter = kind.get();
        let dirs = crate::snapshotter::Dirs {
            upper: d.join(if kind == crate::snapshotter::Kind::Overlay {
                "upper"
            } else {
                "tree"
            }),
            work: d.join("work"),
            target: d.join("rootfs"),
            empty: files.join("empty"),
        };
        let active = snapshotter
            .prepare(store, &lowers, &dirs, false)
            .map_err(io_err("prepare the root filesystem"))?;
        let rootfs = snapshotter.mounts(&active);
        Ok((rootfs, stubs, cgroups(&id, &limits, &o.security)?))
    })();
    let (rootfs, stubs, cgroups) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_dir_all(&d);
            volume::remove_anonymous(store, &mounts);
            let _ = store.networks().release(&id);
            return Err(e);
        }
    };
    let runtime_mounts = mounts
        .iter()
        .map(|m| match m {
            volume::MountSpec::Bind {
                source,
                target,
                readonly,
            } => bind(target, source.clone(), *readonly),
            volume::MountSpec::Volume {
                name,
                target,
                readonly,
                ..
            } => bind(
                target,
                store.root().join("volumes").join(name).join("_data"),
                *readonly,
            ),
            volume::MountSpec::Tmpfs { target, options } => runtime::ExtraMount::Tmpfs {
                target: target.clone(),
                options: options.clone(),
            },
        })
        .collect();
    let spec = ContainerSpec {
        runtime: Spec {
            rootfs,
            argv: argv.clone(),
            env,
            cwd,
            ids,
            hostname,
            net,
            files: vec![
                ("/etc/hosts".into(), files.join("hosts")),
                ("/etc/hostname".into(), files.join("hostname")),
                ("/etc/resolv.conf".into(), files.join("resolv.conf")),
            ],
            stubs,
            script: None,
            no_new_privs: true,
            mask_proc: true,
            tty: o.tty,
            winsize: None,
            cgroups,
            mounts: runtime_mounts,
            security: o.security.clone(),
            init: o.init,
        },
        ports,
        stop_signal,
        stop_timeout: o.stop_timeout.unwrap_or(10),
        remove: o.remove,
        command: argv,
        mounts,
        restart: o.restart,
        limits,
        health: health::HealthConfig::resolve(
            rc.extra.get("Healthcheck"),
            &o.health,
            o.no_healthcheck,
        ),
        network_mode: mode.to_string(),
        networks,
        dns: o.dns.clone(),
        labels: {
            let mut l: std::collections::BTreeMap<String, String> = rc
                .extra
                .get("Labels")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            l.extend(o.labels.clone());
            l
        },
    };
    let rec = ContainerRecord {
        id: id.clone(),
        name: name.clone(),
        image: img.manifest.digest,
        image_ref: o.image.clone(),
        created: kiln_store::store::now(),
        state: ContainerState::Created,
    };
    let json = serde_json::to_string(&spec).expect("spec serializes");
    if let Err(e) = store.containers().create(&rec, &json) {
        let _ = fs::remove_dir_all(&d);
        volume::remove_anonymous(store, &spec.mounts);
        let _ = store.networks().release(&id);
        for cg in &spec.runtime.cgroups {
            runtime::devices::remove_cgroup(cg);
        }
        return Err(match e {
            kiln_store::Error::AlreadyExists(_) => ContainerError::NameInUse(name),
            e => e.into(),
        });
    }
    store
        .containers()
        .get(&id)?
        .ok_or_else(|| ContainerError::NotFound(id.clone()))
}

/// /etc/hosts and /etc/resolv.conf for the container's network: its own address for its
/// hostname on a bridge network, `--add-host` lines, and the resolvers [`crate::network::resolv_conf`]
/// chooses (the host's file as it is with `--network host`).
fn write_network_files(
    store: &Store,
    id: &str,
    files: &Path,
    hostname: &str,
    networks: &[crate::network::Attached],
    net: &Net,
    o: &RunOptions,
) -> Result<(), ContainerError> {
    let eps = crate::network::endpoints(store, id, networks)?;
    let mut hosts = runtime::hosts_file(hostname);
    if let Some(e) = eps.first() {
        hosts = hosts.replace("127.0.1.1\t", &format!("{}\t", e.ip));
    }
    for h in &o.add_hosts {
        hosts.push_str(&crate::network::add_host_line(h, &eps)?);
    }
    fs::write(files.join("hosts"), hosts).map_err(io_err("write /etc/hosts"))?;
    if *net != Net::Host {
        for d in &o.dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                return Err(ContainerError::Invalid(format!(
                    "invalid --dns {d:?}: not an IP address"
                )));
            }
        }
        let conf = crate::network::resolv_conf(&eps, &o.dns, &runtime::resolv_conf());
        fs::write(files.join("resolv.conf"), conf).map_err(io_err("write /etc/resolv.conf"))?;
    }
    Ok(())
}

fn bind(target: &str, source: PathBuf, readonly: bool) -> runtime::ExtraMount {
    let target = target.to_string();
    if readonly {
        runtime::ExtraMount::ReadOnly { target, source }
    } else {
        runtime::ExtraMount::Bind { target, source }
    }
}

/// Refuses what Docker refuses, before anything is created: an environment entry with no name
/// (`-e =x`), a relative working directory, a hostname the kernel would refuse, bad limits.
pub(super) fn check_flags(o: &RunOptions) -> Result<(), ContainerError> {
    if o.remove && o.restart != restart::RestartPolicy::No {
        return Err(ContainerError::Invalid(
            "conflicting options: --restart and --rm".into(),
        ));
    }
    for kv in &o.env {
        if kv.is_empty() || kv.starts_with('=') {
            return Err(ContainerError::Invalid(format!(
                "invalid environment variable: {kv:?}: the name is empty"
            )));
        }
    }
    if let Some(w) = &o.workdir {
        if !w.starts_with('/') {
            return Err(ContainerError::Invalid(format!(
                "the working directory {w:?} is invalid: it needs to be an absolute path"
            )));
        }
    }
    if let Some(h) = &o.hostname {
        // HOST_NAME_MAX
        if h.len() > 64 || h.is_empty() {
            return Err(ContainerError::Invalid(format!(
                "invalid hostname {h:?}: a hostname has 1 to 64 characters"
            )));
        }
    }
    check_limits(o)
}

/// Checks the resource flags before anything is created (Docker's ranges: `--cpus` from 0.01
/// to the number of CPUs, a memory limit of at least 6 MiB).
pub(super) fn check_limits(o: &RunOptions) -> Result<(), ContainerError> {
    if let Some(c) = o.cpus {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if !c.is_finite() || c < 0.01 || c > ncpu {
            return Err(ContainerError::Invalid(format!(
                "invalid --cpus {c}: the range of CPUs is from 0.01 to {ncpu} (the CPUs available)"
            )));
        }
    }
    if let Some(m) = o.memory {
        if m < 6 << 20 {
            return Err(ContainerError::Invalid(format!(
                "invalid -m {m}: the minimum memory limit allowed is 6MB"
            )));
        }
    }
    Ok(())
}

/// Creates the container's control groups (cgroup v1: `/sys/fs/cgroup/<controller>/kiln/<id>`):
/// `devices` always (Docker's device list, unless `--privileged`); `memory`, `cpuacct` and `pids`
/// always too, for `kiln stats`, with the limits of `-m` and `--pids-limit`; `cpu` for `--cpus`.
/// A controller the machine lacks is an error only when a limit needs it. Whatever was created
/// is removed again if a later one fails.
pub(super) fn cgroups(
    id: &str,
    limits: &Limits,
    security: &runtime::Security,
) -> Result<Vec<PathBuf>, ContainerError> {
    /// (controller, files to write, whether a limit needs it)
    type Want<'a> = (&'a str, Vec<(&'a str, String)>, bool);
    let mut want: Vec<Want> = Vec::new();
    let memory: Vec<(&str, String)> = limits
        .memory
        .map(|m| ("memory.limit_in_bytes", m.to_string()))
        .into_iter()
        .collect();
    want.push(("memory", memory, limits.memory.is_some()));
    if let Some(c) = limits.cpus {
        let period = 100_000u64;
        let quota = ((c * period as f64).round() as u64).max(1000);
        want.push((
            "cpu",
            vec![
                ("cpu.cfs_period_us", period.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ],
            true,
        ));
    }
    want.push(("cpuacct", vec![], false));
    let pids: Vec<(&str, String)> = limits
        .pids
        .map(|p| ("pids.max", p.to_string()))
        .into_iter()
        .collect();
    want.push(("pids", pids, limits.pids.is_some()));
    if crate::rootless::active() {
        // No cgroups without root here (cgroup v1, or v2 without delegation): a limit is refused
        // by name; without one there is nothing to make, and devices need no controller, since
        // the kernel refuses device nodes in a user namespace.
        let flag = [
            (limits.memory.is_some(), "-m/--memory"),
            (limits.cpus.is_some(), "--cpus"),
            (limits.pids.is_some(), "--pids-limit"),
        ]
        .into_iter()
        .find_map(|(set, f)| set.then_some(f));
        if let Some(f) = flag {
            return Err(ContainerError::Invalid(format!(
                "{f}: a rootless kiln cannot set cgroup limits on this machine (they need cgroup v2 with delegation to the user); run without the limit, or as root"
            )));
        }
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    let undo = |out: &Vec<PathBuf>| {
        for d in out {
            runtime::devices::remove_cgroup(d);
        }
    };
    if let Some(rules) = security.device_rules() {
        match runtime::devices::create(id, &rules) {
            Ok(d) => out.push(d),
            Err(e) => {
                return Err(ContainerError::Io {
                    context: "limit the container's devices".into(),
                    source: e,
                })
            }
        }
    }
    for (ctrl, files, required) in want {
        let base = Path::new(runtime::devices::CGROUP_ROOT).join(ctrl);
        if !base.join("cgroup.procs").exists() {
            if !required {
                continue;
            }
            undo(&out);
            return Err(ContainerError::Invalid(format!(
                "this machine has no cgroup v1 {ctrl} controller at {}: the {ctrl} limit cannot be set",
                base.display()
            )));
        }
        let dir = base.join("kiln").join(id);
        if let Err(e) = fs::create_dir_all(&dir) {
            undo(&out);
            return Err(io_err(format!("create cgroup {}", dir.display()))(e));
        }
        out.push(dir.clone());
        for (f, v) in files {
            if let Err(e) = fs::write(dir.join(f), &v) {
                undo(&out);
                return Err(io_err(format!("set {f}={v} in {}", dir.display()))(e));
            }
        }
    }
    Ok(out)
}
