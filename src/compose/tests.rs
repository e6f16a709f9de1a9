use super::*;

/// The tutorial's part 5 file (image names local).
const STACK: &str = include_str!("../../fixtures/getstartedlab/part5.yml");

fn load_text(
    files: &[(&str, &str)],
    env: &[(&str, &str)],
    o: Options,
) -> Result<Loaded, ComposeError> {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("getstarted");
    std::fs::create_dir(&dir).unwrap();
    let mut paths = Vec::new();
    for (name, text) in files {
        std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        paths.push(dir.join(name));
    }
    let o = Options {
        files: if o.files.is_empty() && !files.iter().any(|(n, _)| NAMES.contains(n)) {
            paths
        } else {
            o.files
        },
        dir: dir.clone(),
        ..o
    };
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = load(&o, env);
    drop(d);
    r
}

/// The error loading one file of `text` named `name`.
fn load_err(name: &str, text: &str) -> String {
    load_text(&[(name, text)], &[], Options::default())
        .err()
        .expect("an error")
        .to_string()
}

#[test]
fn the_tutorials_stack_file_reads_as_written() {
    let l = load_text(&[("compose.yaml", STACK)], &[], Options::default()).unwrap();
    let p = &l.project;
    assert_eq!(p.name, "getstarted");
    assert!(
        l.warnings[0].contains("`version` is obsolete"),
        "{:?}",
        l.warnings
    );
    let web = &p.services["web"];
    assert_eq!(web.image.as_deref(), Some("friendlyhello"));
    assert_eq!(web.deploy.replicas, Some(5));
    assert_eq!(web.deploy.cpus, Some(0.1));
    assert_eq!(web.deploy.memory, Some(50 * 1024 * 1024));
    assert_eq!(web.deploy.restart_condition.as_deref(), Some("on-failure"));
    assert_eq!(web.ports, ["0.0.0.0:4000:80/tcp"]);
    assert_eq!(web.networks.keys().collect::<Vec<_>>(), ["webnet"]);
    let redis = &p.services["redis"];
    assert_eq!(
        redis.command.as_ref().unwrap(),
        &["redis-server", "--appendonly", "yes"]
    );
    assert_eq!(redis.volumes[0].kind, "bind");
    assert_eq!(
        redis.volumes[0].source.as_deref(),
        Some("/home/docker/data")
    );
    assert_eq!(redis.deploy.placement_constraints, ["node.role == manager"]);
    assert_eq!(p.networks["webnet"].name, "getstarted_webnet");
    assert_eq!(start_order(p).unwrap(), ["redis", "visualizer", "web"]);
}

#[test]
fn errors_name_the_file_line_and_key() {
    let bad = "services:\n  web:\n    image: x\n    ports:\n      - \"4000:eighty\"\n";
    let e = load_err("compose.yaml", bad);
    assert!(
        e.ends_with("compose.yaml:5: services.web.ports[0]: \"4000:eighty\" is not a port"),
        "{e}"
    );
    let e = load_err(
        "c.yml",
        "services:\n  web:\n    build: .\n    networks: [nope]\n",
    );
    assert!(
        e.contains(
            "c.yml:4: services.web.networks: service \"web\" refers to undefined network \"nope\""
        ),
        "{e}"
    );
    let e = load_err("c.yml", "services:\n  web:\n    command: x\n");
    assert!(
        e.contains("c.yml:3: services.web: has neither an image nor a build"),
        "{e}"
    );
    let e = load_err("c.yml", "services:\n  web:\n    image: ${TAG:?set TAG}\n");
    assert!(
        e.contains(
            "c.yml:3: services.web.image: required variable TAG is missing a value: set TAG"
        ),
        "{e}"
    );
    let e = load_err(
        "c.yml",
        "services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n",
    );
    assert!(
        e.contains("c.yml:5: services.web.deploy.replicas: \"many\" is not a number"),
        "{e}"
    );
    // Unknown keys warn, naming where.
    let l = load_text(
        &[(
            "c.yml",
            "services:\n  web:\n    image: x\n    imgae: y\n    x-mine: 1\n",
        )],
        &[],
        Options::default(),
    )
    .unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].ends_with("c.yml:4: services.web.imgae: unknown key, ignored"),
        "{:?}",
        l.warnings
    );
}

#[test]
fn interpolation_dotenv_overrides_anchors_extends_and_profiles() {
    let main = r#"
x-base: &base
  image: app:${TAG:-latest}
  environment:
    - MODE=prod
    - DEBUG
services:
  web:
    <<: *base
    ports: ["${PORT}:80"]
  worker:
    extends: web
    command: ["work", "$$HOME"]
  debug:
    image: busybox
    profiles: [debug]
"#;
    let over = "services:\n  web:\n    environment:\n      MODE: dev\n    ports: [\"9000:90\"]\n";
    let l = load_text(
        &[
            ("compose.yaml", main),
            ("compose.override.yaml", over),
            (".env", "PORT=4000\nTAG=fromfile\n"),
        ],
        &[("TAG", "1.2")],
        Options::default(),
    )
    .unwrap();
    let p = &l.project;
    let web = &p.services["web"];
    assert_eq!(
        web.image.as_deref(),
        Some("app:1.2"),
        "the environment wins over .env"
    );
    assert_eq!(web.ports, ["0.0.0.0:4000:80/tcp", "0.0.0.0:9000:90/tcp"]);
    assert_eq!(web.environment["MODE"].as_deref(), Some("dev"));
    assert_eq!(web.environment["DEBUG"], None);
    let worker = &p.services["worker"];
    assert_eq!(worker.image.as_deref(), Some("app:1.2"));
    assert_eq!(worker.command.as_ref().unwrap(), &["work", "$HOME"]);
    assert!(!p.services.contains_key("debug"), "a profile not enabled");
    let l = load_text(
        &[("compose.yaml", main), (".env", "PORT=4000\n")],
        &[("COMPOSE_PROFILES", "debug")],
        Options::default(),
    )
    .unwrap();
    assert!(l.project.services.contains_key("debug"));
}

#[test]
fn dependencies_start_first_and_cycles_are_refused() {
    let text = "services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_healthy\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n";
    let l = load_text(&[("c.yml", text)], &[], Options::default()).unwrap();
    assert_eq!(start_order(&l.project).unwrap(), ["c", "b", "a"]);
    assert_eq!(l.project.services["a"].depends_on["b"], "service_healthy");
    let cyc = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n";
    let l = load_text(&[("c.yml", cyc)], &[], Options::default()).unwrap();
    assert!(start_order(&l.project)
        .unwrap_err()
        .to_string()
        .contains("dependency cycle"));
    let e = load_text(
        &[("c.yml", "services:\n  a:\n    extends: a\n    image: x\n")],
        &[],
        Options::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn a_file_too_large_is_refused_before_it_is_parsed() {
    let big = format!(
        "services:\n  web:\n    image: x\n#{}\n",
        "x".repeat(17 << 20)
    );
    let e = load_err("c.yml", &big);
    assert!(e.contains("c.yml: larger than 16 MiB"), "{e}");
}

#[test]
fn no_file_is_an_error_naming_what_was_looked_for() {
    let d = tempfile::tempdir().unwrap();
    let e = load(
        &Options {
            dir: d.path().to_path_buf(),
            ..Default::default()
        },
        Vec::new(),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().starts_with("no configuration file provided"),
        "{e}"
    );
}

#[test]
fn extends_from_another_file_rebases_its_relative_paths() {
    let main = "services:\n  web:\n    extends:\n      file: common/base.yml\n      service: worker\n    ports: [\"80\"]\n";
    let base = r#"services:
  app:
    image: app:${TAG:-1}
    build: ./ctx
    volumes: ["./data:/data", "/abs:/abs:ro"]
    environment: {A: "1"}
  worker:
    extends: app
    command: ["work"]
"#;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir_all(dir.join("common")).unwrap();
    std::fs::write(dir.join("compose.yaml"), main).unwrap();
    std::fs::write(dir.join("common/base.yml"), base).unwrap();
    let o = Options {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let l = load(&o, Vec::new()).unwrap();
    let web = &l.project.services["web"];
    let root = std::fs::canonicalize(dir).unwrap();
    assert_eq!(web.image.as_deref(), Some("app:1"));
    assert_eq!(web.command.as_deref(), Some(&["work".to_string()][..]));
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.build.as_ref().unwrap().context, root.join("common/ctx"));
    assert_eq!(
        web.volumes[0].source.as_deref(),
        Some(root.join("common/data").to_str().unwrap())
    );
    assert_eq!(web.volumes[1].source.as_deref(), Some("/abs"));
    assert_eq!(web.ports, ["0.0.0.0::80/tcp"]);

    std::fs::write(
        dir.join("compose.yaml"),
        main.replace("service: worker", "service: nope"),
    )
    .unwrap();
    let e = load(&o, Vec::new()).err().unwrap().to_string();
    assert!(
        e.contains("compose.yaml:4: services.web.extends: service \"nope\" not found in")
            && e.contains("common/base.yml"),
        "{e}"
    );

    // A cycle through two files is refused, not followed until the stack runs out.
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    extends:\n      file: common/base.yml\n      service: back\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("common/base.yml"),
        "services:\n  back:\n    extends:\n      file: ../compose.yaml\n      service: web\n",
    )
    .unwrap();
    let e = load(&o, Vec::new()).err().unwrap().to_string();
    assert!(e.contains("extends makes a cycle"), "{e}");
}
