//! `kiln build --check`: the verdict (exit 0/1) and the `FILE:LINE` of every finding, on valid
//! and broken Dockerfiles, multi-stage ones with heredocs included. Nothing is executed.

use crate::common::{needs, tar_gz, Kiln};
use std::path::Path;
use std::process::Output;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

/// Runs `kiln build --check EXTRA... CTX` from inside the context; (exit code, stdout+stderr).
fn check(k: &Kiln, ctx: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["build", "--check"];
    args.extend_from_slice(extra);
    args.push(".");
    let o: Output = k.cmd().current_dir(ctx).args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code().unwrap_or(-1), out)
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE} AS deps
COPY requirements.txt /app/
RUN <<EOF
set -e
echo installing
EOF

FROM deps AS build
WORKDIR /app
COPY --chmod=0755 <<-'SCRIPT' /usr/local/bin/run
	#!/bin/sh
	exec echo "$@"
	SCRIPT
COPY src/ ./src/
RUN python3 <<PY > /app/out.txt
print("hello")
PY

FROM scratch
COPY --from=build /app /app
ENV MODE=prod
CMD ["/usr/local/bin/run"]
"#;

/// The same file with the second heredoc's terminator misspelled: it swallows the rest.
const MULTI_STAGE_BROKEN: &str = r#"FROM scratch AS deps
RUN <<EOF
echo one
EOF

FROM deps AS build
RUN python3 <<PY
print("hello")
Py

FROM scratch
COPY --from=build /app /app
"#;

type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    i32,
    &'static [&'static str],
);

/// (name, Dockerfile, extra args, exit code, text that must appear in the output)
const CASES: &[Case] = &[
    ("multi-stage with heredocs", MULTI_STAGE, &[], 0, &["check complete, no warnings found"]),
    (
        "multi-stage with an unterminated heredoc",
        MULTI_STAGE_BROKEN,
        &[],
        1,
        &["Dockerfile:7: error: unterminated heredoc \"PY\"", "   7 | RUN python3 <<PY"],
    ),
    (
        "unknown instruction",
        "FROM scratch\n\nRUNN echo\n",
        &[],
        1,
        &["Dockerfile:3: error: unknown instruction \"RUNN\" (did you mean RUN?)", "   3 | RUNN echo"],
    ),
    ("bad flag", "FROM scratch\nRUN --chown=1 true\n", &[], 1, &["Dockerfile:2: error: unknown flag: --chown"]),
    (
        "bad JSON",
        "FROM scratch\nCMD [\"a\", 1]\n",
        &[],
        1,
        &["Dockerfile:2: error: when using JSON array syntax, arrays must be comprised of strings only"],
    ),
    (
        "undefined stage",
        "FROM scratch AS a\nRUN true\nFROM scratch\nCOPY --from=7 /x /y\n",
        &[],
        1,
        &["Dockerfile:4: error: undefined stage in --from=7"],
    ),
    (
        "later stage",
        "FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\n",
        &["--target", "a"],
        1,
        &["Dockerfile:2: error: undefined stage in --from=b"],
    ),
    (
        "required variable",
        "FROM scratch\nARG VERSION\nWORKDIR /opt/${VERSION:?set --build-arg VERSION}\n",
        &[],
        1,
        &["Dockerfile:3: error:", "VERSION: set --build-arg VERSION"],
    ),
    (
        "required variable given",
        "FROM scratch\nARG VERSION\nWORKDIR /opt/${VERSION:?set it}\n",
        &["--build-arg", "VERSION=1"],
        0,
        &["check complete"],
    ),
    (
        "missing source",
        "FROM scratch\nCOPY nothere.txt /\n",
        &[],
        1,
        &["Dockerfile:2: error: COPY source \"nothere.txt\" matches no file"],
    ),
    (
        "ignored source",
        "FROM scratch\nCOPY secret.key /\n",
        &[],
        1,
        &["Dockerfile:2: error: COPY source \"secret.key\" is excluded by"],
    ),
    ("wildcard source", "FROM scratch\nCOPY src/*.py /app/\n", &[], 0, &["check complete"]),
    // BuildKit copies with AllowEmptyWildcard: a wildcard matching nothing copies nothing.
    ("empty wildcard", "FROM scratch\nCOPY *.nothing /app/\n", &[], 0, &["check complete"]),
    ("unknown target", "FROM scratch AS a\n", &["--target", "b"], 1, &["error: target stage \"b\" could not be found"]),
    ("empty file", "", &[], 1, &["Dockerfile: error: file with no instructions"]),
    ("instruction before FROM", "ENV A=1\nFROM scratch\n", &[], 1, &["Dockerfile:1: error: ENV must come after FROM"]),
    (
        "warnings only",
        "FROM scratch\nMAINTAINER me\nENV A 1\nCMD run\n\nRUN a \\\n\n  b\n",
        &[],
        0,
        &[
            "Dockerfile:2: warning: MaintainerDeprecated",
            "Dockerfile:3: warning: LegacyKeyValueFormat",
            "Dockerfile:4: warning: JSONArgsRecommended",
            "Dockerfile:8: warning: NoEmptyContinuation",
            "check complete, 4 warnings",
        ],
    ),
    (
        "warnings are errors by directive",
        "# check=error=true\nFROM scratch\nCMD run\n",
        &[],
        1,
        &["Dockerfile:3: warning: JSONArgsRecommended", "check failed"],
    ),
    (
        "skipped rule",
        "# check=skip=JSONArgsRecommended\nFROM scratch\nCMD run\n",
        &[],
        0,
        &["check complete, no warnings found"],
    ),
    (
        "unused build arg",
        "FROM scratch\n",
        &["--build-arg", "UNUSED=1"],
        0,
        &["warning: UnusedBuildArg: one or more build args were not consumed: UNUSED"],
    ),
    (
        "escape directive",
        "# escape=`\nFROM scratch\nRUN echo a `\n  b\nCOPY src\\main.py C:\\\n",
        &[],
        1,
        &["Dockerfile:5: error: COPY source \"src\\\\main.py\""],
    ),
    (
        "chained onbuild",
        "FROM scratch\nONBUILD COPY . /app\nONBUILD ONBUILD RUN x\n",
        &[],
        1,
        &["Dockerfile:3: error: chaining ONBUILD"],
    ),
];

#[test]
fn verdicts_and_lines() {
    let mut failures = Vec::new();
    for (name, dockerfile, extra, want_code, want) in CASES {
        let k = Kiln::new();
        let ctx = k.dir.path().join("ctx");
        write(
            &ctx,
            &[
                ("Dockerfile", dockerfile),
                ("requirements.txt", "flask\n"),
                ("src/app.py", "print(1)\n"),
                ("secret.key", "k"),
                (".dockerignore", "*.key\n"),
            ],
        );
        let (code, out) = check(&k, &ctx, extra);
        if code != *want_code {
            failures.push(format!("{name}: exit {code}, want {want_code}\n{out}"));
            continue;
        }
        for l in *want {
            if !out.contains(l) {
                failures.push(format!("{name}: output lacks {l:?}\n{out}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn dockerfile_flag_and_its_own_ignore_file() {
    let k = Kiln::new();
    let ctx = k.dir.path().join("ctx");
    write(
        &ctx,
        &[
            ("docker/app.Dockerfile", "FROM scratch\nCOPY a.txt /\n"),
            ("docker/app.Dockerfile.dockerignore", "a.txt\n"),
            ("a.txt", "a"),
        ],
    );
    let (code, out) = check(&k, &ctx, &["-f", "docker/app.Dockerfile"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("docker/app.Dockerfile:2: error: COPY source \"a.txt\" is excluded by"),
        "{out}"
    );
    let (code, out) = check(&k, &ctx, &["-f", "nope/Dockerfile"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("kiln: error: read Dockerfile nope/Dockerfile"),
        "{out}"
    );
}

#[test]
fn base_images_in_the_store_are_used_for_planning() {
    if !needs(&["tar"]) {
        return;
    }
    let k = Kiln::new();
    let rootfs = k.dir.path().join("rootfs");
    write(&rootfs, &[("etc/hostname", "base\n")]);
    let tgz = k.dir.path().join("base.tgz");
    tar_gz(&rootfs, &tgz);
    k.ok(&["import", tgz.to_str().unwrap(), "base:1"]);
    let ctx = k.dir.path().join("ctx");
    write(
        &ctx,
        &[(
            "Dockerfile",
            "FROM base:1\nRUN true\nFROM absent:2\nCOPY --from=0 /etc /etc\n",
        )],
    );
    let (code, out) = check(&k, &ctx, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Dockerfile:3: warning: BaseImageNotLocal: image \"absent:2\""),
        "{out}"
    );
    assert!(!out.contains("base:1"), "{out}");
}
