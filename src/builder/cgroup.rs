//! A RUN step's device cgroup: Docker's device list holds in RUN too, as BuildKit's runc gets it.

use super::exec::{setup, RunError};
use crate::runtime;
use std::fs;

/// A RUN step's device cgroup (`kiln/build-<pid>-<n>`), removed when the step ends; what a
/// killed build left is swept by the next one.
pub(super) struct StepCgroup(pub(super) Option<std::path::PathBuf>);

impl StepCgroup {
    pub(super) fn create(sec: &runtime::Security) -> Result<StepCgroup, RunError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let Some(rules) = sec.device_rules() else {
            return Ok(StepCgroup(None));
        };
        // Rootless: no cgroups to write, and none needed, since the kernel refuses to make
        // device nodes in a user namespace.
        if crate::rootless::active() {
            return Ok(StepCgroup(None));
        }
        let pid = std::process::id();
        if N.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            runtime::devices::sweep("build-");
        }
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime::devices::create(&format!("build-{pid}-{n}"), &rules)
            .map(|d| StepCgroup(Some(d)))
            .map_err(setup("limit the step's devices"))
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            // The step's last processes leave the cgroup a moment after they are reaped: remove
            // it now if it is empty, else in the background (the build does not wait; what a
            // build that ended first leaves, the next one sweeps).
            if fs::remove_dir(&d).is_err() && d.exists() {
                std::thread::spawn(move || runtime::devices::remove_cgroup(&d));
            }
        }
    }
}
