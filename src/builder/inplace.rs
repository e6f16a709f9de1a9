//! RUN with `--isolation=none`: the command runs in the container kiln runs in, whose `/` the
//! in-place snapshotter made the step's root (`snapshotter/inplace.rs`). Nothing can be mounted
//! there, so the step's mounts are emulated by copies, as kaniko would: a cache or a bind mount's
//! contents are copied to its target before the command and (cache mounts) back after it; a
//! secret is written there; a tmpfs is an empty directory. The targets never reach the layer
//! (the differ skips them) and are removed afterwards, with the parents made for them.

use super::exec::RunError;
use crate::runtime::{ExtraMount, Spec};
use crate::snapshotter::view::View;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// What a step's emulated mounts left in `/`, undone by [`Mounts::undo`].
pub struct Mounts {
    /// (target, the directory to copy it back to).
    copy_back: Vec<(PathBuf, PathBuf)>,
    targets: Vec<PathBuf>,
    /// Parents made for targets, deepest last.
    made: Vec<PathBuf>,
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RunError + '_ {
    move |e| RunError::Setup(format!("--isolation=none: {what}: {e}"))
}

/// Makes `target`'s missing parents, recording them.
fn parents(target: &Path, made: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = target.parent();
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d)?;
        made.push(d);
    }
    Ok(())
}

/// Copies `source` (a directory or a file) to `target`.
fn copy_in(source: &Path, target: &Path) -> io::Result<()> {
    if source.is_dir() {
        fs::create_dir_all(target)?;
        crate::snapshotter::copy_dir(&View::new(vec![source.to_path_buf()]), "/", target)
    } else {
        fs::copy(source, target).map(drop)
    }
}

fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Puts the step's mounts in place (see the module docs); `stubs` are the mount points the image
/// lacks that the layer keeps, as the isolated modes' runtime leaves them.
fn mounts(spec: &Spec, stubs: &[String]) -> Result<Mounts, RunError> {
    let mut m = Mounts {
        copy_back: vec![],
        targets: vec![],
        made: vec![],
    };
    let mut names = Vec::new();
    for x in &spec.mounts {
        let (target, source, back) = match x {
            ExtraMount::Tmpfs { target, .. } => (target, None, false),
            ExtraMount::Bind { target, source } => (target, Some(source), true),
            ExtraMount::ReadOnly { target, source } => (target, Some(source), false),
        };
        let t = PathBuf::from(target);
        names.push(target.clone());
        parents(&t, &mut m.made).map_err(setup("make a mount's parents"))?;
        remove(&t).map_err(setup("clear a mount's target"))?;
        match source {
            Some(s) if fs::metadata(s).is_ok_and(|md| md.is_dir() || md.is_file()) => {
                copy_in(s, &t).map_err(setup("copy a mount's contents in"))?;
                if back && s.is_dir() {
                    m.copy_back.push((t.clone(), s.clone()));
                }
            }
            Some(s) => {
                return Err(RunError::Setup(format!(
                    "--isolation=none cannot provide {} at {target} (a socket, such as an ssh agent, needs a mount)",
                    s.display()
                )))
            }
            None => fs::create_dir_all(&t).map_err(setup("make a tmpfs target"))?,
        }
        m.targets.push(t);
    }
    crate::snapshotter::ignore_for_step(&names, stubs);
    Ok(m)
}

impl Mounts {
    /// Copies cache mounts back, then removes every target and the parents made for them.
    pub fn undo(self) -> Result<(), RunError> {
        for (t, s) in &self.copy_back {
            remove(s).map_err(setup("empty a cache mount"))?;
            copy_in(t, s).map_err(setup("copy a cache mount back"))?;
        }
        for t in &self.targets {
            remove(t).map_err(setup("remove a mount's target"))?;
        }
        for d in self.made.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }
}

/// Starts the step's command in `/` as the step's user, its output to `stdout`/`stderr`.
pub fn spawn(
    spec: &Spec,
    stubs: &[String],
    stdout: Stdio,
    stderr: Stdio,
) -> Result<(Child, Mounts), RunError> {
    let m = mounts(spec, stubs)?;
    if let Some((name, body)) = &spec.script {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new("/dev/pipes");
        fs::create_dir_all(dir).map_err(setup("make /dev/pipes"))?;
        let f = dir.join(name);
        fs::write(&f, body).map_err(setup("write the heredoc"))?;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755))
            .map_err(setup("chmod the heredoc"))?;
    }
    fs::create_dir_all(&spec.cwd).map_err(setup("make the working directory"))?;
    let (prog, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| RunError::Setup("RUN has no command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if spec.ids.uid != 0 || spec.ids.gid != 0 {
        cmd.uid(spec.ids.uid).gid(spec.ids.gid);
    }
    match cmd.spawn() {
        Ok(c) => Ok((c, m)),
        Err(e) => {
            let _ = m.undo();
            let code = if e.kind() == io::ErrorKind::NotFound {
                crate::runtime::EXIT_NOT_FOUND
            } else {
                crate::runtime::EXIT_CANNOT_EXEC
            };
            Err(RunError::Exit {
                code,
                tail: vec![format!("{prog}: {e}")],
            })
        }
    }
}
