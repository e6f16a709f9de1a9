//! No input makes the frontend panic: arbitrary bytes, and Dockerfile-shaped text built from
//! the tokens that drive the parser's state machines (keywords, flags, quotes, escapes,
//! continuations, heredoc markers, `$`/`${`), go through parsing, planning, word expansion and
//! `.dockerignore` compilation and come out as values or errors. Run longer with
//! `PROPTEST_CASES=100000 cargo test --lib fuzz`.

use proptest::prelude::*;

use super::shell::{Lexer, NoEnv};
use super::Dockerfile;
use crate::context::dockerignore::Matcher;
use crate::plan::{plan, PlanOptions};

const TOKENS: &[&str] = &[
    "FROM ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ENV ",
    "ARG ",
    "LABEL ",
    "CMD ",
    "ENTRYPOINT ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "SHELL ",
    "WORKDIR ",
    "USER ",
    "EXPOSE ",
    "VOLUME ",
    "STOPSIGNAL ",
    "MAINTAINER ",
    "scratch",
    " AS ",
    "x",
    "a=b",
    "--from=",
    "--mount=type=cache,target=/c ",
    "--chown=",
    "--link ",
    "--network=none ",
    "-- ",
    "[",
    "]",
    "\"",
    "'",
    ",",
    "\\",
    "`",
    "\n",
    "\r\n",
    " ",
    "\t",
    "#",
    "# escape=`\n",
    "# syntax=x\n",
    "# check=error=true\n",
    "<<",
    "<<-",
    "EOF",
    "'EOF'",
    "$",
    "${",
    "}",
    ":-",
    ":?",
    "#",
    "%%",
    "//",
    "/",
    "*",
    "?",
    "0",
    "\u{feff}",
    "é",
    "\0",
];

fn dockerfile_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..60).prop_map(|t| t.concat())
}

fn exercise(text: &[u8]) {
    if let Ok(df) = Dockerfile::parse("Dockerfile", text) {
        let _ = df.ast.dump();
        let opts = PlanOptions {
            build_args: [("a".to_string(), "1".to_string())].into_iter().collect(),
            ..PlanOptions::default()
        };
        let _ = plan(&df, &opts);
    }
    let s = String::from_utf8_lossy(text);
    for escape in ['\\', '`'] {
        let _ = Lexer::new(escape).process(&s, &NoEnv);
        let env = vec![("x".to_string(), s.to_string())];
        let _ = Lexer::new(escape).process("${x//*/$x}${x%%?}${x#*}", &env);
    }
    if let Ok(m) = Matcher::from_dockerignore(&s) {
        let _ = m.excludes("a/b/c");
        let _ = m.may_include_below("a");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&bytes);
    }

    #[test]
    fn dockerfile_shaped_text_never_panics(text in dockerfile_text()) {
        exercise(text.as_bytes());
    }
}
