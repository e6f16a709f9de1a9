//! `stack convert --to kubernetes`: a stack as Kubernetes manifests, for when it outgrows one
//! machine. Pure: the model in, YAML documents out, with a warning for each thing Kubernetes
//! has no word for.
//!
//! The stack becomes a Namespace; each service a Deployment (a DaemonSet in `global` mode)
//! labelled `app.kubernetes.io/name: <service>`, its Pods selected by that label; published
//! ports a Service of type LoadBalancer named after the service (so other services reach it by
//! the same name as on the stack's networks), exposed-only ports a ClusterIP Service; named
//! volumes PersistentVolumeClaims; secrets and configs Secrets and ConfigMaps made from their
//! files, mounted where compose mounts them (`/run/secrets/<name>`, `/<name>`).

use crate::compose::model::Service;
use crate::compose::Project;
use crate::container::ports::PortSpec;
use crate::container::ContainerError;
use serde_json::{json, Map, Value};

const NAME_LABEL: &str = "app.kubernetes.io/name";
const PART_OF: &str = "app.kubernetes.io/part-of";

/// A Kubernetes object name (RFC 1123 label: lowercase letters, digits and '-', 63 at most).
fn dns_name(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    let t = out.trim_matches('-').to_string();
    if t.is_empty() {
        "x".into()
    } else if t.starts_with(|c: char| c.is_ascii_digit()) {
        format!("s-{t}").chars().take(63).collect()
    } else {
        t
    }
}

fn nanos_to_secs(d: &Option<String>) -> Option<u64> {
    d.as_deref()
        .and_then(crate::frontend::instructions::parse_go_duration)
        .map(|n| n.div_ceil(1_000_000_000))
}

/// Converts `p` to manifests: the YAML text (documents separated by `---`) and warnings.
pub fn convert(p: &Project) -> Result<(String, Vec<String>), ContainerError> {
    let mut warn = Vec::new();
    let ns = dns_name(&p.name);
    let mut docs: Vec<Value> = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns, "labels": { PART_OF: p.name } },
    })];
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": { PART_OF: p.name } });
    for (key, f) in &p.secrets {
        let data = std::fs::read(&f.file).map_err(|e| {
            ContainerError::Invalid(format!("secret {key}: read {}: {e}", f.file.display()))
        })?;
        docs.push(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta(&dns_name(key)),
            "type": "Opaque",
            "data": { "content": base64(&data) },
        }));
    }
    for (key, f) in &p.configs {
        let text = std::fs::read_to_string(&f.file).map_err(|e| {
            ContainerError::Invalid(format!("config {key}: read {}: {e}", f.file.display()))
        })?;
        docs.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&dns_name(key)),
            "data": { "content": text },
        }));
    }
    let mut claims: Vec<String> = Vec::new();
    for (svc, s) in &p.services {
        let name = dns_name(svc);
        if name != *svc {
            warn.push(format!("service {svc} is named {name} in Kubernetes"));
        }
        let pod = pod_spec(p, svc, s, &mut claims, &mut warn)?;
        let labels = json!({ NAME_LABEL: name, PART_OF: p.name });
        let template = json!({ "metadata": { "labels": labels }, "spec": pod });
        let selector = json!({ "matchLabels": { NAME_LABEL: name } });
        let mut m = meta(&name);
        m["labels"][NAME_LABEL] = json!(name);
        if s.deploy.mode.as_deref() == Some("global") {
            docs.push(json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": m,
                "spec": { "selector": selector, "template": template },
            }));
        } else {
            let n = s.deploy.update_parallelism.unwrap_or(1).max(1);
            let (surge, unavailable) = match s.deploy.update_order.as_deref() {
                Some("start-first") => (n, 0),
                _ => (0, n),
            };
            docs.push(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": m,
                "spec": {
                    "replicas": s.deploy.replicas.unwrap_or(1),
                    "selector": selector,
                    "strategy": { "type": "RollingUpdate", "rollingUpdate": {
                        "maxSurge": surge, "maxUnavailable": unavailable,
                    }},
                    "template": template,
                },
            }));
        }
        docs.extend(services(svc, &name, s, &meta, &mut warn)?);
    }
    for c in &claims {
        docs.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(c),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": "1Gi" } },
            },
        }));
    }
    let text = docs
        .iter()
        .map(crate::compose::emit::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n");
    Ok((text, warn))
}

/// The Services of one compose service: a LoadBalancer for its published ports, a ClusterIP
/// one for ports it only exposes.
fn services(
    svc: &str,
    name: &str,
    s: &Service,
    meta: &dyn Fn(&str) -> Value,
    warn: &mut Vec<String>,
) -> Result<Vec<Value>, ContainerError> {
    let bad = |m: String| ContainerError::Invalid(format!("service {svc}: {m}"));
    let mut published = Vec::new();
    for p in &s.ports {
        let spec = PortSpec::parse(p).map_err(bad)?;
        let port = if spec.host_port == 0 {
            spec.container_port
        } else {
            spec.host_port
        };
        published.push(json!({
            "name": format!("{}-{port}", spec.proto),
            "port": port,
            "targetPort": spec.container_port,
            "protocol": spec.proto.to_uppercase(),
        }));
    }
    let mut exposed = Vec::new();
    for e in &s.expose {
        let (num, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let port: u16 = num
            .parse()
            .map_err(|_| bad(format!("expose {e:?} is not a port")))?;
        exposed.push(json!({
            "name": format!("{proto}-{port}"),
            "port": port,
            "targetPort": port,
            "protocol": proto.to_uppercase(),
        }));
    }
    let mut out = Vec::new();
    let mut one = |n: &str, kind: &str, ports: Vec<Value>| {
        let mut m = meta(n);
        m["labels"][NAME_LABEL] = json!(name);
        out.push(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": m,
            "spec": { "type": kind, "selector": { NAME_LABEL: name }, "ports": ports },
        }));
    };
    match (published.is_empty(), exposed.is_empty()) {
        (false, true) => one(name, "LoadBalancer", published),
        (true, false) => one(name, "ClusterIP", exposed),
        (false, false) => {
            one(name, "LoadBalancer", published);
            one(&format!("{name}-internal"), "ClusterIP", exposed);
        }
        (true, true) => {
            if !s.networks.is_empty() && !s.depends_on.is_empty() {
                warn.push(format!(
                    "service {svc} has no ports: no Kubernetes Service is made for it"
                ));
            }
        }
    }
    Ok(out)
}

/// The pod template's spec of one service.
fn pod_spec(
    p: &Project,
    svc: &str,
    s: &Service,
    claims: &mut Vec<String>,
    warn: &mut Vec<String>,
) -> Result<Value, ContainerError> {
    let name = dns_name(svc);
    let image = s.image.clone().ok_or_else(|| {
        ContainerError::Invalid(format!(
            "service {svc}: image is required (Kubernetes pulls images; build and push it first)"
        ))
    })?;
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    c.insert("image".into(), json!(image));
    if let Some(e) = &s.entrypoint {
        c.insert("command".into(), json!(e));
    }
    if let Some(cmd) = &s.command {
        c.insert("args".into(), json!(cmd));
    }
    let env: Vec<Value> = s
        .environment
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v.clone().unwrap_or_default() }))
        .collect();
    if !env.is_empty() {
        c.insert("env".into(), json!(env));
    }
    if let Some(w) = &s.working_dir {
        c.insert("workingDir".into(), json!(w));
    }
    let mut ports: Vec<Value> = Vec::new();
    for spec in s.ports.iter().filter_map(|p| PortSpec::parse(p).ok()) {
        ports.push(
            json!({ "containerPort": spec.container_port, "protocol": spec.proto.to_uppercase() }),
        );
    }
    if !ports.is_empty() {
        c.insert("ports".into(), json!(ports));
    }
    let mut limits = Map::new();
    if let Some(cpus) = s.deploy.cpus {
        limits.insert(
            "cpu".into(),
            json!(format!("{}m", (cpus * 1000.0).round() as u64)),
        );
    }
    if let Some(m) = s.deploy.memory {
        limits.insert("memory".into(), json!(m.to_string()));
    }
    if !limits.is_empty() {
        c.insert("resources".into(), json!({ "limits": limits }));
    }
    if let Some(h) = s
        .healthcheck
        .as_ref()
        .filter(|h| h.test.first().is_some_and(|t| t != "NONE"))
    {
        let command: Vec<String> = match h.test[0].as_str() {
            "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), h.test[1..].join(" ")],
            _ => h.test[1..].to_vec(),
        };
        let mut probe = json!({ "exec": { "command": command } });
        if let Some(n) = nanos_to_secs(&h.interval) {
            probe["periodSeconds"] = json!(n.max(1));
        }
        if let Some(n) = nanos_to_secs(&h.timeout) {
            probe["timeoutSeconds"] = json!(n.max(1));
        }
        if let Some(n) = h.retries {
            probe["failureThreshold"] = json!(n.max(1));
        }
        if let Some(n) = nanos_to_secs(&h.start_period) {
            probe["initialDelaySeconds"] = json!(n);
        }
        c.insert("livenessProbe".into(), probe.clone());
        c.insert("readinessProbe".into(), probe);
    }
    if let Some(u) = &s.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
        match uid.parse::<u64>() {
            Ok(n) => {
                let mut sc = json!({ "runAsUser": n });
                if let Ok(g) = gid.parse::<u64>() {
                    sc["runAsGroup"] = json!(g);
                }
                c.insert("securityContext".into(), sc);
            }
            Err(_) => warn.push(format!(
                "service {svc}: user {u:?} is a name; Kubernetes takes only numeric IDs (runAsUser), so the image's user applies"
            )),
        }
    }
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for (i, m) in s.volumes.iter().enumerate() {
        let vname = format!("v{i}");
        let mut mount = json!({ "name": vname, "mountPath": m.target });
        if m.read_only {
            mount["readOnly"] = json!(true);
        }
        mounts.push(mount);
        volumes.push(match (m.kind.as_str(), &m.source) {
            ("bind", Some(src)) => {
                warn.push(format!(
                    "service {svc}: bind mount {src} becomes a hostPath volume: the path must exist on the node that runs the pod"
                ));
                json!({ "name": vname, "hostPath": { "path": src } })
            }
            ("volume", Some(key)) => {
                let claim = dns_name(p.volumes.get(key).map_or(key, |v| &v.name));
                if !claims.contains(&claim) {
                    claims.push(claim.clone());
                }
                json!({ "name": vname, "persistentVolumeClaim": { "claimName": claim } })
            }
            ("tmpfs", _) => json!({ "name": vname, "emptyDir": { "medium": "Memory" } }),
            _ => json!({ "name": vname, "emptyDir": {} }),
        });
    }
    for (kind, names, dir) in [
        ("secret", &s.secrets, "/run/secrets/"),
        ("config", &s.configs, "/"),
    ] {
        for n in names {
            let vname = format!("{kind}-{}", dns_name(n));
            mounts.push(json!({
                "name": vname, "mountPath": format!("{dir}{n}"), "subPath": "content", "readOnly": true,
            }));
            volumes.push(if kind == "secret" {
                json!({ "name": vname, "secret": { "secretName": dns_name(n) } })
            } else {
                json!({ "name": vname, "configMap": { "name": dns_name(n) } })
            });
        }
    }
    if !mounts.is_empty() {
        c.insert("volumeMounts".into(), json!(mounts));
    }
    let mut pod = json!({ "containers": [Value::Object(c)] });
    if !volumes.is_empty() {
        pod["volumes"] = json!(volumes);
    }
    if let Some(h) = &s.hostname {
        pod["hostname"] = json!(dns_name(h));
    }
    if let Some(n) = nanos_to_secs(&s.stop_grace_period) {
        pod["terminationGracePeriodSeconds"] = json!(n);
    }
    let mut selector = Map::new();
    for c in &s.deploy.placement_constraints {
        let Some((k, v)) = c.split_once("==").map(|(k, v)| (k.trim(), v.trim())) else {
            warn.push(format!(
                "service {svc}: placement constraint {c} has no Kubernetes form: left out"
            ));
            continue;
        };
        match k {
            "node.hostname" => {
                selector.insert("kubernetes.io/hostname".into(), json!(v));
            }
            "node.platform.os" => {
                selector.insert("kubernetes.io/os".into(), json!(v));
            }
            k if k.starts_with("node.labels.") => {
                selector.insert(k["node.labels.".len()..].into(), json!(v));
            }
            _ => warn.push(format!(
                "service {svc}: placement constraint {c} has no Kubernetes form: left out"
            )),
        }
    }
    if !selector.is_empty() {
        pod["nodeSelector"] = Value::Object(selector);
    }
    match s.deploy.restart_condition.as_deref() {
        Some("none") | Some("on-failure") => warn.push(format!(
            "service {svc}: a Deployment's pods always restart (restart_policy.condition {} has no Kubernetes form)",
            s.deploy.restart_condition.as_deref().unwrap_or_default()
        )),
        _ => {}
    }
    Ok(pod)
}

/// Standard base64 with padding (Secret data).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_base64_are_what_kubernetes_takes() {
        assert_eq!(dns_name("web_Front.1"), "web-front-1");
        assert_eq!(dns_name("9lives"), "s-9lives");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_published_service_gets_a_deployment_and_a_load_balancer_that_selects_it() {
        let mut p = Project {
            name: "app".into(),
            ..Default::default()
        };
        let mut s = Service {
            image: Some("friendlyhello".into()),
            ports: vec!["0.0.0.0:4000:80/tcp".into()],
            ..Default::default()
        };
        s.deploy.replicas = Some(5);
        s.deploy.cpus = Some(0.1);
        s.deploy.memory = Some(50 << 20);
        s.networks.insert("webnet".into(), vec![]);
        p.services.insert("web".into(), s);
        let (yaml, _) = convert(&p).unwrap();
        for want in [
            "kind: Deployment",
            "replicas: 5",
            "cpu: 100m",
            "memory: \"52428800\"",
            "type: LoadBalancer",
            "port: 4000",
            "targetPort: 80",
            "app.kubernetes.io/name: web",
        ] {
            assert!(yaml.contains(want), "{want} in\n{yaml}");
        }
    }
}
