//! Placement constraints (`deploy.placement.constraints`) on the one node kiln has: this
//! machine, a manager, with no node or engine labels. A constraint it meets is met; one it
//! cannot is an error naming it, never a silent skip.

/// The node's attributes as swarm names them.
struct Node {
    hostname: String,
    os: &'static str,
    arch: String,
}

fn this_node() -> Node {
    Node {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: "linux",
        arch: std::env::consts::ARCH.into(),
    }
}

/// Checks every constraint against this machine.
pub fn check(constraints: &[String]) -> Result<(), String> {
    let node = this_node();
    for c in constraints {
        check_one(c, &node)?;
    }
    Ok(())
}

fn check_one(c: &str, node: &Node) -> Result<(), String> {
    let (key, eq, value) = if let Some((k, v)) = c.split_once("==") {
        (k.trim(), true, v.trim())
    } else if let Some((k, v)) = c.split_once("!=") {
        (k.trim(), false, v.trim())
    } else {
        return Err(format!(
            "placement constraint {c:?}: expected KEY==VALUE or KEY!=VALUE"
        ));
    };
    let actual: Option<String> = match key {
        "node.role" => Some("manager".into()),
        "node.hostname" => Some(node.hostname.clone()),
        "node.platform.os" => Some(node.os.into()),
        "node.platform.arch" => Some(node.arch.clone()),
        // kiln's one node is known by its hostname (swarm's node IDs do not exist here).
        "node.id" => Some(node.hostname.clone()),
        k if k.starts_with("node.labels.") || k.starts_with("engine.labels.") => None,
        k => {
            return Err(format!(
                "placement constraint {c:?}: unknown attribute {k:?} (node.role, node.hostname, node.id, node.platform.os, node.platform.arch, node.labels.*, engine.labels.*)"
            ))
        }
    };
    // Swarm compares case-insensitively.
    let matches = actual
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case(value));
    if matches == eq {
        return Ok(());
    }
    let what = match &actual {
        Some(a) => format!("{key} is {a} on this machine"),
        None => format!("this machine has no {key}"),
    };
    Err(format!(
        "placement constraint {c} cannot be met: kiln runs services on one node, this machine, and {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            hostname: "box".into(),
            os: "linux",
            arch: "x86_64".into(),
        }
    }

    #[test]
    fn constraints_are_met_or_refused_with_a_reason() {
        let n = node();
        for ok in [
            "node.role == manager",
            "node.role==Manager",
            "node.role != worker",
            "node.hostname == box",
            "node.platform.os == linux",
            "node.labels.zone != east",
        ] {
            assert_eq!(check_one(ok, &n), Ok(()), "{ok}");
        }
        let e = check_one("node.role == worker", &n).unwrap_err();
        assert!(e.contains("node.role is manager"), "{e}");
        let e = check_one("node.labels.zone == east", &n).unwrap_err();
        assert!(e.contains("has no node.labels.zone"), "{e}");
        assert!(check_one("node.colour == red", &n)
            .unwrap_err()
            .contains("unknown attribute"));
        assert!(check_one("node.role", &n)
            .unwrap_err()
            .contains("KEY==VALUE"));
    }
}
