//! Planning with the bases' configs: the two-pass plan the builder and the linter share.

use super::*;

/// Plans `df` with the configs of the images it names: a first plan finds the images (bases,
/// `COPY --from`, `RUN --mount from=`), `base` gives each one's config given the line that names
/// it (None: not available), and a second plan uses them (ONBUILD triggers, ENV, USER and WORKDIR
/// come from the base). The builder and the linter both plan this way. Returns the plan and the
/// images `base` had no config for.
pub fn plan_with_bases<E: From<DockerfileError>>(
    df: &Dockerfile,
    opts: &PlanOptions,
    mut base: impl FnMut(&str, usize) -> Result<Option<Config>, E>,
) -> Result<(Plan, Vec<String>), E> {
    let first = plan(df, opts)?;
    let mut with = opts.clone();
    let mut missing = Vec::new();
    for r in first.image_refs() {
        match base(&r, first.line_naming(&r).unwrap_or(0))? {
            Some(cfg) => {
                with.bases.insert(r, cfg);
            }
            None => missing.push(r),
        }
    }
    if with.bases.is_empty() {
        return Ok((first, missing));
    }
    Ok((plan(df, &with)?, missing))
}

impl Plan {
    /// The line of the first instruction naming image `r` (FROM, or COPY --from).
    pub fn line_naming(&self, r: &str) -> Option<usize> {
        self.stages.iter().find_map(|s| match &s.base {
            Base::Image(i) if i == r => Some(s.line),
            _ => s.steps.iter().find_map(|st| match &st.kind {
                StepKind::Copy(c) if c.source == Source::Image(r.to_string()) => Some(st.line),
                StepKind::Run(run) if run.mount_sources.contains(&Source::Image(r.to_string())) => {
                    Some(st.line)
                }
                _ => None,
            }),
        })
    }
}
