//! One service of a compose file, read into the model: its image or build, command, ports,
//! mounts, networks, dependencies, health check, restart and deploy keys.

use super::model::{Build, Deploy, Health, Mount, Service};
use super::read::{normalize, Reader};
use super::yaml::{Node, Value};
use super::ComposeError;
use crate::container::ports::PortSpec;
use std::path::PathBuf;

const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "networks",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "user",
    "working_dir",
    "hostname",
    "labels",
    "init",
    "stop_signal",
    "stop_grace_period",
    "secrets",
    "configs",
    "profiles",
    "extends",
    "container_name",
];

/// Reads one service (its `extends` already applied, values interpolated).
pub(super) fn service(r: &mut Reader, name: &str, n: &Node) -> Result<Service, ComposeError> {
    let p = format!("services.{name}");
    r.map(n, &p)?;
    r.check_keys(n, &p, SERVICE_KEYS);
    let mut s = Service::default();
    let key = |k: &str| format!("{p}.{k}");
    if let Some(v) = n.get("image") {
        s.image = Some(r.string(v, &key("image"))?);
    }
    if let Some(v) = n.get("build") {
        s.build = Some(build(r, v, &key("build"))?);
    }
    if s.image.is_none() && s.build.is_none() {
        return Err(r.err(n, &p, "has neither an image nor a build"));
    }
    if let Some(v) = n.get("command") {
        s.command = Some(r.words(v, &key("command"))?);
    }
    if let Some(v) = n.get("entrypoint") {
        s.entrypoint = Some(r.words(v, &key("entrypoint"))?);
    }
    if let Some(v) = n.get("env_file") {
        let files = match &v.value {
            Value::Scalar(f, _) => vec![f.clone()],
            _ => r.strings(v, &key("env_file"))?,
        };
        for f in files {
            let path = r.dir.join(&f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| r.err(v, &key("env_file"), format!("read {}: {e}", path.display())))?;
            for (k, val) in super::interp::parse_env_file(&text) {
                s.environment.insert(k, Some(val));
            }
        }
    }
    if let Some(v) = n.get("environment") {
        s.environment.extend(r.pairs(v, &key("environment"))?);
    }
    if let Some(v) = n.get("ports") {
        for (i, x) in r.seq(v, &key("ports"))?.iter().enumerate() {
            s.ports.extend(port(r, x, &format!("{p}.ports[{i}]"))?);
        }
    }
    if let Some(v) = n.get("expose") {
        s.expose = r.strings(v, &key("expose"))?;
    }
    if let Some(v) = n.get("volumes") {
        for (i, x) in r.seq(v, &key("volumes"))?.iter().enumerate() {
            s.volumes.push(mount(r, x, &format!("{p}.volumes[{i}]"))?);
        }
    }
    match n.get("networks") {
        None => {
            s.networks.insert("default".into(), Vec::new());
        }
        Some(v) => match &v.value {
            Value::Seq(_) => {
                for net in r.strings(v, &key("networks"))? {
                    s.networks.insert(net, Vec::new());
                }
            }
            _ => {
                for e in r.map(v, &key("networks"))? {
                    let np = format!("{p}.networks.{}", e.key);
                    let aliases = match e.value.get("aliases") {
                        Some(a) => r.strings(a, &format!("{np}.aliases"))?,
                        None => Vec::new(),
                    };
                    r.check_keys(&e.value, &np, &["aliases"]);
                    s.networks.insert(e.key.clone(), aliases);
                }
            }
        },
    }
    if let Some(v) = n.get("depends_on") {
        match &v.value {
            Value::Seq(_) => {
                for d in r.strings(v, &key("depends_on"))? {
                    s.depends_on.insert(d, "service_started".into());
                }
            }
            _ => {
                for e in r.map(v, &key("depends_on"))? {
                    let dp = format!("{p}.depends_on.{}", e.key);
                    let cond = match e.value.get("condition") {
                        Some(c) => r.string(c, &format!("{dp}.condition"))?,
                        None => "service_started".into(),
                    };
                    if ![
                        "service_started",
                        "service_healthy",
                        "service_completed_successfully",
                    ]
                    .contains(&cond.as_str())
                    {
                        return Err(r.err(&e.value, &format!("{dp}.condition"), format!("{cond:?} is not service_started, service_healthy or service_completed_successfully")));
                    }
                    r.check_keys(&e.value, &dp, &["condition", "restart", "required"]);
                    s.depends_on.insert(e.key.clone(), cond);
                }
            }
        }
    }
    if let Some(v) = n.get("healthcheck") {
        s.healthcheck = Some(health(r, v, &key("healthcheck"))?);
    }
    if let Some(v) = n.get("restart") {
        let pol = r.string(v, &key("restart"))?;
        let base = pol.split(':').next().unwrap_or("");
        if !["no", "always", "on-failure", "unless-stopped"].contains(&base) {
            return Err(r.err(
                v,
                &key("restart"),
                format!("{pol:?} is not no, always, on-failure[:N] or unless-stopped"),
            ));
        }
        s.restart = Some(pol);
    }
    if let Some(v) = n.get("deploy") {
        s.deploy = deploy(r, v, &key("deploy"))?;
    }
    for (k, slot) in [
        ("user", &mut s.user),
        ("working_dir", &mut s.working_dir),
        ("hostname", &mut s.hostname),
        ("stop_signal", &mut s.stop_signal),
    ] {
        if let Some(v) = n.get(k) {
            *slot = Some(r.string(v, &key(k))?);
        }
    }
    if let Some(v) = n.get("stop_grace_period") {
        s.stop_grace_period = Some(r.duration(v, &key("stop_grace_period"))?);
    }
    if let Some(v) = n.get("labels") {
        s.labels = r
            .pairs(v, &key("labels"))?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
    }
    if let Some(v) = n.get("init") {
        s.init = Some(r.boolean(v, &key("init"))?);
    }
    for (k, slot) in [("secrets", &mut s.secrets), ("configs", &mut s.configs)] {
        if let Some(v) = n.get(k) {
            for (i, x) in r.seq(v, &key(k))?.iter().enumerate() {
                // Short form: the name; long form: `source:`.
                let name = match x.get("source") {
                    Some(src) => r.string(src, &format!("{p}.{k}[{i}].source"))?,
                    None => r.string(x, &format!("{p}.{k}[{i}]"))?,
                };
                slot.push(name);
            }
        }
    }
    if let Some(v) = n.get("profiles") {
        s.profiles = r.strings(v, &key("profiles"))?;
    }
    if let Some(v) = n.get("container_name") {
        r.warn(
            v.line,
            &key("container_name"),
            "not supported by kiln (containers are named <project>-<service>-<n>), ignored",
        );
    }
    Ok(s)
}

fn build(r: &mut Reader, n: &Node, p: &str) -> Result<Build, ComposeError> {
    let mut b = Build::default();
    if let Value::Scalar(ctx, _) = &n.value {
        b.context = r.dir.join(ctx);
        return Ok(b);
    }
    r.check_keys(
        n,
        p,
        &[
            "context",
            "dockerfile",
            "args",
            "target",
            "cache_from",
            "cache_to",
            "secrets",
        ],
    );
    b.context = match n.get("context") {
        Some(c) => r.dir.join(r.string(c, &format!("{p}.context"))?),
        None => r.dir.to_path_buf(),
    };
    if let Some(v) = n.get("dockerfile") {
        b.dockerfile = Some(r.string(v, &format!("{p}.dockerfile"))?);
    }
    if let Some(v) = n.get("args") {
        b.args = r.pairs(v, &format!("{p}.args"))?;
    }
    if let Some(v) = n.get("target") {
        b.target = Some(r.string(v, &format!("{p}.target"))?);
    }
    for (k, slot) in [
        ("cache_from", &mut b.cache_from),
        ("cache_to", &mut b.cache_to),
        ("secrets", &mut b.secrets),
    ] {
        if let Some(v) = n.get(k) {
            *slot = r.strings(v, &format!("{p}.{k}"))?;
        }
    }
    Ok(b)
}

/// One `ports:` entry: short (`"4000:80"`, `80`, `127.0.0.1:4000:80/udp`, ranges) or long.
fn port(r: &mut Reader, n: &Node, p: &str) -> Result<Vec<String>, ComposeError> {
    let spec = match &n.value {
        Value::Map(_) => {
            r.check_keys(
                n,
                p,
                &[
                    "target",
                    "published",
                    "host_ip",
                    "protocol",
                    "mode",
                    "name",
                    "app_protocol",
                ],
            );
            let target = n
                .get("target")
                .ok_or_else(|| r.err(n, p, "a long-syntax port needs target"))?;
            let mut s = r.string(target, &format!("{p}.target"))?;
            if let Some(v) = n.get("published") {
                s = format!("{}:{s}", r.string(v, &format!("{p}.published"))?);
                if let Some(ip) = n.get("host_ip") {
                    s = format!("{}:{s}", r.string(ip, &format!("{p}.host_ip"))?);
                }
            }
            if let Some(v) = n.get("protocol") {
                s = format!("{s}/{}", r.string(v, &format!("{p}.protocol"))?);
            }
            s
        }
        _ => r.string(n, p)?,
    };
    let specs = PortSpec::parse_ranges(&spec)
        .map_err(|_| r.err(n, p, format!("{spec:?} is not a port")))?;
    Ok(specs
        .iter()
        .map(|s| {
            let host = if s.host_port == 0 {
                String::new()
            } else {
                s.host_port.to_string()
            };
            format!("{}:{host}:{}/{}", s.host_ip, s.container_port, s.proto)
        })
        .collect())
}

/// One `volumes:` entry of a service: short (`SRC:DST[:ro]`, `DST`) or long.
fn mount(r: &mut Reader, n: &Node, p: &str) -> Result<Mount, ComposeError> {
    let (kind, source, target, read_only) = match &n.value {
        Value::Map(_) => {
            r.check_keys(
                n,
                p,
                &[
                    "type",
                    "source",
                    "target",
                    "read_only",
                    "bind",
                    "volume",
                    "tmpfs",
                    "consistency",
                ],
            );
            let kind = match n.get("type") {
                Some(t) => r.string(t, &format!("{p}.type"))?,
                None => "volume".into(),
            };
            let target = n
                .get("target")
                .ok_or_else(|| r.err(n, p, "a long-syntax volume needs target"))?;
            let source = n
                .get("source")
                .map(|s| r.string(s, &format!("{p}.source")))
                .transpose()?;
            let ro = n
                .get("read_only")
                .map(|v| r.boolean(v, &format!("{p}.read_only")))
                .transpose()?;
            (
                kind,
                source,
                r.string(target, &format!("{p}.target"))?,
                ro.unwrap_or(false),
            )
        }
        _ => {
            let s = r.string(n, p)?;
            let parts: Vec<&str> = s.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [d] => (None, *d, ""),
                [src, d] => (Some(*src), *d, ""),
                [src, d, m] => (Some(*src), *d, *m),
                _ => return Err(r.err(n, p, format!("{s:?} is not SOURCE:TARGET[:MODE]"))),
            };
            let ro = mode.split(',').any(|m| m == "ro");
            let kind = match src {
                Some(x) if x.starts_with(['.', '/', '~']) => "bind",
                _ => "volume",
            };
            (
                kind.to_string(),
                src.map(str::to_string),
                dst.to_string(),
                ro,
            )
        }
    };
    if !target.starts_with('/') {
        return Err(r.err(
            n,
            p,
            format!("the target {target:?} must be an absolute path"),
        ));
    }
    let source = match (kind.as_str(), source) {
        ("bind", Some(s)) => {
            let home = std::env::var("HOME").unwrap_or_default();
            let path = match s.strip_prefix('~') {
                Some(rest) => PathBuf::from(format!("{home}{rest}")),
                None => r.dir.join(&s),
            };
            Some(normalize(&path).to_string_lossy().into_owned())
        }
        ("bind", None) => return Err(r.err(n, p, "a bind mount needs a source")),
        ("volume", s) => s,
        ("tmpfs", _) => None,
        (k, _) => return Err(r.err(n, p, format!("{k:?} is not bind, volume or tmpfs"))),
    };
    Ok(Mount {
        kind,
        source,
        target,
        read_only,
    })
}

fn health(r: &mut Reader, n: &Node, p: &str) -> Result<Health, ComposeError> {
    r.check_keys(
        n,
        p,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
    );
    let mut h = Health::default();
    if let Some(v) = n.get("disable") {
        if r.boolean(v, &format!("{p}.disable"))? {
            h.test = vec!["NONE".into()];
            return Ok(h);
        }
    }
    if let Some(v) = n.get("test") {
        h.test = match &v.value {
            Value::Scalar(s, _) => vec!["CMD-SHELL".into(), s.clone()],
            _ => r.strings(v, &format!("{p}.test"))?,
        };
        if !h.test.is_empty() && !["CMD", "CMD-SHELL", "NONE"].contains(&h.test[0].as_str()) {
            return Err(r.err(
                v,
                &format!("{p}.test"),
                "a list must start with CMD, CMD-SHELL or NONE",
            ));
        }
    }
    for (k, slot) in [
        ("interval", &mut h.interval),
        ("timeout", &mut h.timeout),
        ("start_period", &mut h.start_period),
    ] {
        if let Some(v) = n.get(k) {
            *slot = Some(r.duration(v, &format!("{p}.{k}"))?);
        }
    }
    if let Some(v) = n.get("retries") {
        h.retries = Some(r.number(v, &format!("{p}.retries"))?);
    }
    Ok(h)
}

fn deploy(r: &mut Reader, n: &Node, p: &str) -> Result<Deploy, ComposeError> {
    r.check_keys(
        n,
        p,
        &[
            "replicas",
            "resources",
            "restart_policy",
            "update_config",
            "placement",
            "mode",
            "labels",
        ],
    );
    let mut d = Deploy::default();
    if let Some(v) = n.get("mode") {
        let m = r.string(v, &format!("{p}.mode"))?;
        if m != "replicated" && m != "global" {
            return Err(r.err(
                v,
                &format!("{p}.mode"),
                format!("{m:?} is not replicated or global"),
            ));
        }
        d.mode = Some(m);
    }
    if let Some(v) = n.get("replicas") {
        d.replicas = Some(r.number(v, &format!("{p}.replicas"))?);
    }
    if let Some(res) = n.get("resources") {
        r.check_keys(res, &format!("{p}.resources"), &["limits", "reservations"]);
        if let Some(l) = res.get("limits") {
            let lp = format!("{p}.resources.limits");
            r.check_keys(l, &lp, &["cpus", "memory", "pids"]);
            if let Some(v) = l.get("cpus") {
                let c: f64 = r.number(v, &format!("{lp}.cpus"))?;
                if c <= 0.0 {
                    return Err(r.err(v, &format!("{lp}.cpus"), "must be more than 0"));
                }
                d.cpus = Some(c);
            }
            if let Some(v) = l.get("memory") {
                let s = r.string(v, &format!("{lp}.memory"))?;
                d.memory = Some(
                    crate::timefmt::ram_in_bytes(&s)
                        .map_err(|e| r.err(v, &format!("{lp}.memory"), e))?,
                );
            }
        }
    }
    if let Some(rp) = n.get("restart_policy") {
        let pp = format!("{p}.restart_policy");
        r.check_keys(rp, &pp, &["condition", "delay", "max_attempts", "window"]);
        if let Some(v) = rp.get("condition") {
            let c = r.string(v, &format!("{pp}.condition"))?;
            if !["none", "on-failure", "any"].contains(&c.as_str()) {
                return Err(r.err(
                    v,
                    &format!("{pp}.condition"),
                    format!("{c:?} is not none, on-failure or any"),
                ));
            }
            d.restart_condition = Some(c);
        }
        if let Some(v) = rp.get("max_attempts") {
            d.restart_max_attempts = Some(r.number(v, &format!("{pp}.max_attempts"))?);
        }
        if let Some(v) = rp.get("delay") {
            d.restart_delay = Some(r.duration(v, &format!("{pp}.delay"))?);
        }
    }
    if let Some(u) = n.get("update_config") {
        let up = format!("{p}.update_config");
        r.check_keys(
            u,
            &up,
            &[
                "parallelism",
                "delay",
                "order",
                "failure_action",
                "monitor",
                "max_failure_ratio",
            ],
        );
        if let Some(v) = u.get("parallelism") {
            d.update_parallelism = Some(r.number(v, &format!("{up}.parallelism"))?);
        }
        if let Some(v) = u.get("delay") {
            d.update_delay = Some(r.duration(v, &format!("{up}.delay"))?);
        }
        if let Some(v) = u.get("monitor") {
            d.update_monitor = Some(r.duration(v, &format!("{up}.monitor"))?);
        }
        for (k, allowed, slot) in [
            ("order", ["stop-first", "start-first"], &mut d.update_order),
            (
                "failure_action",
                ["pause", "rollback"],
                &mut d.update_failure_action,
            ),
        ] {
            if let Some(v) = u.get(k) {
                let s = r.string(v, &format!("{up}.{k}"))?;
                if !allowed.contains(&s.as_str()) {
                    return Err(r.err(
                        v,
                        &format!("{up}.{k}"),
                        format!("{s:?} is not {} or {}", allowed[0], allowed[1]),
                    ));
                }
                *slot = Some(s);
            }
        }
    }
    if let Some(pl) = n.get("placement") {
        r.check_keys(
            pl,
            &format!("{p}.placement"),
            &["constraints", "preferences", "max_replicas_per_node"],
        );
        if let Some(c) = pl.get("constraints") {
            d.placement_constraints = r.strings(c, &format!("{p}.placement.constraints"))?;
        }
    }
    Ok(d)
}
