//! The image configuration a stage builds up (ENV, USER, WORKDIR, CMD...), from a base's config or from `--change` instructions.

#[allow(unused_imports)]
use super::*;

/// The image configuration a stage builds up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Environment, in definition order (a redefinition replaces in place).
    pub env: Vec<(String, String)>,
    /// CMD.
    pub cmd: Option<Vec<String>>,
    /// ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// USER.
    pub user: String,
    /// WORKDIR (absolute); empty means `/`.
    pub workdir: String,
    /// LABELs.
    pub labels: BTreeMap<String, String>,
    /// EXPOSEd ports, `80/tcp` form.
    pub exposed: BTreeSet<String>,
    /// VOLUMEs.
    pub volumes: BTreeSet<String>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// HEALTHCHECK.
    pub healthcheck: Option<Healthcheck>,
    /// SHELL; empty means `["/bin/sh", "-c"]`.
    pub shell: Vec<String>,
    /// ONBUILD triggers recorded for images built from this one.
    pub onbuild: Vec<String>,
    /// MAINTAINER.
    pub author: Option<String>,
}

impl Config {
    /// The shell, defaulted.
    pub fn shell(&self) -> Vec<String> {
        if self.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            self.shell.clone()
        }
    }

    /// The working directory, defaulted.
    pub fn workdir(&self) -> String {
        if self.workdir.is_empty() {
            "/".into()
        } else {
            self.workdir.clone()
        }
    }

    pub(super) fn set_env(&mut self, k: &str, v: String) {
        match self.env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v,
            None => self.env.push((k.to_string(), v)),
        }
    }

    pub(super) fn get_env(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_str())
    }
}

impl From<&crate::image::oci::RunConfig> for Config {
    /// The parts of an image's config that planning needs (env, workdir, user, shell, ONBUILD
    /// triggers...), read from the OCI/Docker config JSON.
    fn from(rc: &crate::image::oci::RunConfig) -> Config {
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Config {
            env: rc
                .env
                .iter()
                .flatten()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.clone(), String::new()),
                })
                .collect(),
            cmd: rc.cmd.clone(),
            entrypoint: rc.entrypoint.clone(),
            user: rc.user.clone().unwrap_or_default(),
            workdir: rc.working_dir.clone().unwrap_or_default(),
            labels: rc.labels.clone().unwrap_or_default(),
            exposed: rc
                .exposed_ports
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            volumes: rc.volumes.iter().flat_map(|m| m.keys().cloned()).collect(),
            stop_signal: rc.stop_signal.clone(),
            healthcheck: rc.extra.get("Healthcheck").map(|h| {
                let n = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                Healthcheck {
                    test: strings(h.get("Test")),
                    interval: n("Interval"),
                    timeout: n("Timeout"),
                    start_period: n("StartPeriod"),
                    start_interval: n("StartInterval"),
                    retries: n("Retries"),
                }
            }),
            shell: strings(rc.extra.get("Shell")),
            onbuild: strings(rc.extra.get("OnBuild")),
            author: None,
        }
    }
}

impl Config {
    /// Writes this configuration into an image config's `config` object as BuildKit does
    /// (empty values absent; unknown fields of `rc` kept).
    pub fn write_to(&self, rc: &mut crate::image::oci::RunConfig) {
        let c = self;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        rc.user = opt(&c.user);
        rc.working_dir = opt(&c.workdir);
        rc.env =
            (!c.env.is_empty()).then(|| c.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        rc.cmd = c.cmd.clone();
        rc.entrypoint = c.entrypoint.clone();
        rc.labels = (!c.labels.is_empty()).then(|| c.labels.clone());
        let set = |v: &BTreeSet<String>| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|p| (p.clone(), serde_json::json!({})))
                    .collect()
            })
        };
        rc.exposed_ports = set(&c.exposed);
        rc.volumes = set(&c.volumes);
        rc.stop_signal = c.stop_signal.clone();
        rc.extra.remove("OnBuild");
        if !c.onbuild.is_empty() {
            rc.extra
                .insert("OnBuild".into(), serde_json::json!(c.onbuild));
        }
        if !c.shell.is_empty() {
            rc.extra.insert("Shell".into(), serde_json::json!(c.shell));
        }
        if let Some(h) = &c.healthcheck {
            let mut m = serde_json::Map::new();
            m.insert("Test".into(), serde_json::json!(h.test));
            for (k, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
                ("Retries", h.retries),
            ] {
                if v != 0 {
                    m.insert(k.into(), serde_json::json!(v));
                }
            }
            rc.extra
                .insert("Healthcheck".into(), serde_json::Value::Object(m));
        }
    }
}

/// The instructions `kiln import --change` takes (those Docker's commit and import accept).
pub const CHANGE_INSTRUCTIONS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "USER",
    "VOLUME",
    "WORKDIR",
    "STOPSIGNAL",
    "HEALTHCHECK",
];

/// The configuration `kiln import --change` values make: each a Dockerfile line, parsed and
/// applied by the same frontend and planner as a build, and nothing else (no default PATH or
/// WorkingDir that no change set, as `docker import`). Another instruction is an error naming it.
pub fn config_from_changes(changes: &[String]) -> Result<Config, DockerfileError> {
    let text = format!("FROM scratch\n{}\n", changes.join("\n"));
    let df = Dockerfile::parse("--change", text.as_bytes())?;
    let mut sets_workdir = false;
    let mut sets_path = false;
    for l in df.instructions.iter().skip(1) {
        let kw = l.instruction.keyword();
        if !CHANGE_INSTRUCTIONS.contains(&kw) {
            return Err(df.error_at(
                l.line,
                format!(
                    "{kw} is not allowed in --change (allowed: {})",
                    CHANGE_INSTRUCTIONS.join(", ")
                ),
            ));
        }
        match &l.instruction {
            Instruction::Workdir(_) => sets_workdir = true,
            Instruction::Env(pairs) => sets_path |= pairs.iter().any(|(k, _)| k == "PATH"),
            _ => {}
        }
    }
    let plan = plan(&df, &PlanOptions::default())?;
    let mut config = plan.stages[plan.target].config.clone();
    if !sets_workdir {
        config.workdir.clear();
    }
    if !sets_path {
        config.env.retain(|(k, _)| k != "PATH");
    }
    Ok(config)
}
