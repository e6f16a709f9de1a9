//! Resolving `USER`/`--user`/`--chown` values against an image's /etc/passwd and /etc/group, as
//! Docker does (moby/sys user.GetExecUser): `name`, `uid`, `name:group`, `uid:gid`, any mix.
//! A numeric user absent from passwd is still valid (gid 0 unless given); a name must exist.
//! Supplementary groups are the groups that list the user by name.

use super::Ids;

/// A user that cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd(text: &str) -> Vec<Passwd<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: f[0],
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5],
            })
        })
        .collect()
}

fn groups(text: &str) -> Vec<(&str, u32, Vec<&str>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
            Some((f[0], f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `spec` (empty = root) with the image's passwd and group files (None = absent).
pub fn resolve(
    spec: &str,
    passwd_file: Option<&str>,
    group_file: Option<&str>,
) -> Result<Ids, UserError> {
    let users = passwd(passwd_file.unwrap_or(""));
    let grps = groups(group_file.unwrap_or(""));
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = users.iter().find(|p| p.name == u).or_else(|| {
        u.parse::<u32>()
            .ok()
            .and_then(|n| users.iter().find(|p| p.uid == n))
    });
    let (uid, mut gid, name, home) = match (entry, u.parse::<u32>()) {
        (Some(p), _) => (p.uid, p.gid, Some(p.name), Some(p.home.to_string())),
        (None, Ok(n)) => (n, 0, None, None),
        (None, Err(_)) => return Err(UserError::NoUser(u.to_string())),
    };
    let mut supplementary = Vec::new();
    match g {
        Some(g) if !g.is_empty() => {
            gid = match grps.iter().find(|(n, _, _)| *n == g) {
                Some((_, id, _)) => *id,
                None => g.parse().map_err(|_| UserError::NoGroup(g.to_string()))?,
            };
        }
        _ => {
            if let Some(name) = name {
                supplementary = grps
                    .iter()
                    .filter(|(_, _, m)| m.contains(&name))
                    .map(|(_, id, _)| *id)
                    .collect();
            }
        }
    }
    let mut all = vec![gid];
    for s in supplementary {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    Ok(Ids {
        uid,
        gid,
        groups: all,
        // No passwd entry: no home (the runtime then uses "/", as runc's setupUser).
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:app,www\napp:x:1001:\n";

    #[test]
    fn resolves_names_numbers_and_groups_as_docker() {
        let r = |s| resolve(s, Some(PASSWD), Some(GROUP));
        assert_eq!(r("").unwrap().uid, 0);
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1001, vec![1001, 50])
        );
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let w = r("33").unwrap();
        assert_eq!((w.uid, w.gid), (33, 33));
        let n = r("4242").unwrap();
        assert_eq!((n.uid, n.gid, n.groups.clone()), (4242, 0, vec![0]));
        let x = r("app:staff").unwrap();
        assert_eq!((x.uid, x.gid, x.groups.clone()), (1000, 50, vec![50]));
        assert_eq!(r("7:8").unwrap().gid, 8);
        assert_eq!(r("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(r("app:nogroup"), Err(UserError::NoGroup("nogroup".into())));
        assert_eq!(resolve("5", None, None).unwrap().uid, 5);
        assert_eq!(
            resolve("", None, None).unwrap().home,
            None,
            "root without passwd"
        );
        assert_eq!(r("").unwrap().home.as_deref(), Some("/root"));
    }
}
