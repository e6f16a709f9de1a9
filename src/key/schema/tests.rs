use super::*;

/// Keys written before the schema had names (pinned): the same Dockerfile keys the same.
#[test]
fn definitions_keep_their_keys() {
    let df = crate::frontend::Dockerfile::parse(
        "Dockerfile",
        "FROM scratch AS a\nWORKDIR /w\nUSER 1\nWORKDIR /v\n\
         RUN --network=none --mount=type=cache,target=/c,id=x --mount=type=bind,source=s,target=/b echo hi\n\
         RUN <<EOF\necho there\nEOF\n\
         COPY --chown=1:2 --chmod=0755 --link --parents --exclude=*.md a b /dst/\n\
         ADD --checksum=sha256:abc --unpack=true http://x/y /z\nCOPY <<f1 /f\nhello\nf1\n\
         FROM a\nCOPY --from=a /x /y\n"
            .as_bytes(),
    )
    .unwrap();
    let p = crate::plan::plan(&df, &Default::default()).unwrap();
    let keys: Vec<String> = p
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| step_key(None, &s.definition, &Canon::new()).to_hex()[..16].to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "22b4aacae1a7bfc6",
            "d72421242582216e",
            "739b74c9e87ac170",
            "958bab14861dcb5b",
            "b13687f441201ee3",
            "c8c3e35506f58047",
            "8a922fedf6c8006d",
            "57e11176f3c56c43",
        ]
    );
    assert_eq!(
        &crate::plan::base_key("scratch").to_hex()[..16],
        "8f7cd3450866cb03"
    );
}

/// The inputs as the builder wrote them with numeric tags, before the schema: byte for byte.
#[test]
fn inputs_keep_their_encoding() {
    let mut files = SelectedFiles::new();
    files.root("a", true);
    files.file("x", FileType::File, 0o644, &[1; 32]);
    files.file("l", FileType::Symlink("x"), 0o777, &[2; 32]);
    files.root("b", false);
    files.file("", FileType::Special("fifo:0"), 0o600, &[3; 32]);
    let files = files.finish();
    let mut legacy_files = Canon::new();
    for (name, dir, items) in [
        (
            "a",
            true,
            vec![
                ("x", "f", "", 0o644u32, [1u8; 32]),
                ("l", "l", "x", 0o777, [2; 32]),
            ],
        ),
        ("b", false, vec![("", "s", "fifo:0", 0o600, [3; 32])]),
    ] {
        let mut rc = Canon::new();
        rc.str(0, name).flag(1, dir);
        for (rel, kind, target, mode, hash) in items {
            let mut ic = Canon::new();
            ic.str(0, rel)
                .str(1, kind)
                .str(2, target)
                .bytes(3, &mode.to_le_bytes())
                .bytes(4, &hash);
            rc.nested(2, &ic);
        }
        legacy_files.nested(0, &rc);
    }
    assert_eq!(files.as_bytes(), legacy_files.as_bytes());

    let mut now = Inputs::new();
    now.downloads(&[Download {
        url: "http://x/y",
        sha256: "abc",
        name: "y",
        last_modified: 7,
    }])
    .files(&files)
    .from_source("stage:k")
    .bind_mount(
        1,
        BindSource::From {
            identity: "image:d",
            path: "src",
        },
    )
    .bind_mount(2, BindSource::Context(&files))
    .link_owner(1, 2);
    let mut legacy = Canon::new();
    let mut url = Canon::new();
    url.str(0, "http://x/y")
        .str(1, "abc")
        .str(2, "y")
        .str(3, "7");
    legacy
        .nested(4, &url)
        .nested(0, &legacy_files)
        .str(1, "stage:k");
    let mut b1 = Canon::new();
    b1.str(0, "1").str(1, "image:d").str(2, "src");
    let mut b2 = Canon::new();
    b2.str(0, "2").nested(3, &legacy_files);
    legacy.nested(2, &b1).nested(2, &b2).str(5, "1:2");
    assert_eq!(now.as_canon().as_bytes(), legacy.as_bytes());
}

/// Every field the schema names appears in the key table of `key/mod.rs`: the table is the
/// schema's documentation and cannot fall behind it.
#[test]
fn the_key_table_names_every_field() {
    let table = include_str!("../mod.rs");
    let row = |kind: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(&format!("//! | {kind} |")))
            .unwrap_or_else(|| panic!("no table row for {kind}"))
            .split('|')
            .nth(2)
            .unwrap_or_default()
            .to_lowercase()
    };
    // How the table says each named field (module, constant) -> (row, words).
    let words: &[(&str, &str, &str, &str)] = &[
        ("from", "KIND", "FROM", "base"),
        ("from", "IDENTITY", "FROM", "manifest digest"),
        ("from", "PLATFORM", "FROM", "platform"),
        ("workdir", "KIND", "WORKDIR", "parent key"),
        ("workdir", "PATH", "WORKDIR", "absolute path"),
        ("workdir", "OWNER", "WORKDIR", "user"),
        ("run", "KIND", "RUN", "parent key"),
        ("run", "ARGV", "RUN", "argv"),
        ("run", "SCRIPT", "RUN", "heredoc"),
        ("run", "ENV", "RUN", "env"),
        ("run", "WORKDIR", "RUN", "workdir"),
        ("run", "USER", "RUN", "user"),
        ("run", "NETWORK", "RUN", "network"),
        ("run", "INSECURE", "RUN", "security"),
        ("run", "MOUNTS", "RUN", "--mount"),
        ("mount", "TYPE", "RUN", "--mount"),
        ("mount", "FIELDS", "RUN", "fields sorted"),
        ("copy", "KIND", "COPY/ADD", "parent key"),
        ("copy", "SOURCES", "COPY/ADD", "sources"),
        ("copy", "DEST", "COPY/ADD", "destination"),
        ("copy", "CHOWN", "COPY/ADD", "--chown"),
        ("copy", "CHMOD", "COPY/ADD", "--chmod"),
        ("copy", "LINK", "COPY/ADD", "--link"),
        ("copy", "PARENTS", "COPY/ADD", "--parents"),
        ("copy", "EXCLUDE", "COPY/ADD", "--exclude"),
        ("copy", "CHECKSUM", "COPY/ADD", "--checksum"),
        ("copy", "KEEP_GIT_DIR", "COPY/ADD", "--keep-git-dir"),
        ("copy", "UNPACK", "COPY/ADD", "--unpack"),
        ("copy", "HEREDOCS", "COPY/ADD", "heredoc"),
        ("heredoc", "PATH", "COPY/ADD", "name"),
        ("heredoc", "DATA", "COPY/ADD", "bytes after expansion"),
        ("input", "FILES", "COPY/ADD", "selected files"),
        ("input", "FROM", "COPY/ADD", "--from"),
        ("input", "BIND_MOUNT", "RUN", "bind mount"),
        ("input", "URLS", "COPY/ADD", "url"),
        ("input", "LINK_OWNER", "COPY/ADD", "--chown"),
        ("bind", "INDEX", "RUN", "bind mount"),
        ("bind", "FROM", "RUN", "stage key or image digest"),
        ("bind", "SOURCE", "RUN", "source path"),
        ("bind", "FILES", "RUN", "selected files"),
        ("url", "URL", "COPY/ADD", "url"),
        ("url", "SHA256", "COPY/ADD", "sha256"),
        ("url", "NAME", "COPY/ADD", "file name"),
        ("url", "LAST_MODIFIED", "COPY/ADD", "last-modified"),
        ("files", "ROOT", "COPY/ADD", "selected files"),
        ("files", "ROOT_NAME", "COPY/ADD", "relative path"),
        ("files", "ROOT_IS_DIR", "COPY/ADD", "type"),
        ("files", "ROOT_FILE", "COPY/ADD", "selected files"),
        ("files", "PATH", "COPY/ADD", "relative path"),
        ("files", "TYPE", "COPY/ADD", "type"),
        ("files", "TARGET", "COPY/ADD", "symlink target"),
        ("files", "MODE", "COPY/ADD", "mode bits"),
        ("files", "CONTENT", "COPY/ADD", "blake3 of the bytes"),
    ];
    // Every `pub const` of the schema, with the innermost `pub mod` it is in.
    let src = include_str!("mod.rs");
    let mut stack: Vec<&str> = Vec::new();
    let mut consts = Vec::new();
    for line in src.lines() {
        let t = line.trim();
        if let Some(m) = t
            .strip_prefix("pub mod ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            stack.push(m);
        } else if t == "}" && line.len() - t.len() < 8 && !stack.is_empty() {
            // A closing brace at a module's indentation (consts are indented deeper).
            if line.starts_with('}') || line.starts_with("    }") {
                stack.pop();
            }
        } else if let Some(r) = t.strip_prefix("pub const ") {
            let name = r.split(':').next().unwrap_or_default();
            consts.push((*stack.last().expect("a const in a module"), name));
        }
    }
    assert!(consts.len() >= 50, "parsed {} consts", consts.len());
    for (m, c) in &consts {
        let Some((_, _, kind, word)) = words.iter().find(|(wm, wc, _, _)| wm == m && wc == c)
        else {
            panic!("schema field {m}::{c} is not described here: add it to the key table and this list");
        };
        assert!(
            row(kind).contains(&word.to_lowercase()),
            "the key table's {kind} row does not mention {word:?} ({m}::{c})"
        );
    }
}
