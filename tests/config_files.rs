//! Every file in `conf/invalid/` is refused by `switchyard check` with exit code 1 and the message its
//! first line promises; every other file in `conf/` passes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_file_is_refused_with_its_message() {
    let files = yaml_files("conf/invalid");
    assert!(
        files.len() >= 25,
        "expected one file per validation rule, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with '# expect: <message>'", file.display()));
        let (code, output) = check(&file);
        assert_eq!(code, 1, "{} should be refused:\n{output}", file.display());
        assert!(
            output.contains(expect),
            "{}: expected {expect:?} in:\n{output}",
            file.display()
        );
    }
}

#[test]
fn every_shipped_config_is_valid() {
    let mut files = yaml_files("conf");
    files.extend(yaml_files("conf/examples"));
    assert!(files.len() >= 4);
    for file in files {
        let (code, output) = check(&file);
        assert_eq!(code, 0, "{}:\n{output}", file.display());
        assert!(output.contains(": ok: "), "{output}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let dir = std::env::temp_dir().join(format!("switchyard-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("multi.yaml");
    std::fs::write(
        &file,
        r#"
upstreams:
  v1: {backends: ["10.0.0.1"]}
routes:
  - name: api
    split: {targets: {v1: 0, v9: 0}, baseline: v1, sticky: [nope]}
  - name: api
    blue_green: {blue: v1, green: v1, live: red}
"#,
    )
    .unwrap();
    let (code, output) = check(&file);
    assert_eq!(code, 1);
    for expect in [
        "upstreams.v1.backends[0]: invalid address",
        "routes[0].split.targets.v9: no such upstream",
        "routes[0].split.targets: weights sum to 0",
        "routes[0].split.sticky[0]: invalid sticky key",
        "routes[1].name: duplicate route name",
        "routes[1].blue_green.live: must be blue or green",
    ] {
        assert!(output.contains(expect), "expected {expect:?} in:\n{output}");
    }
}

/// A typo and three semantic errors: `check` prints all four, not just the typo, and durations take what
/// Kubernetes and Prometheus users type.
#[test]
fn a_typo_does_not_hide_the_semantic_errors() {
    let dir = std::env::temp_dir().join(format!("switchyard-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("typo.yaml");
    std::fs::write(
        &file,
        r#"
server: {grace_period: 1m30s, shutdown_timeout: 1.5s}
upstreams:
  v1: {backends: ["127.0.0.1:9001"], timeouts: {connect: 500ms, read: 100us}}
  v2: {backends: ["127.0.0.1:9002"]}
routes:
  - name: api
    match: {hots: api.example.com, path_prefix: /api}
    split: {targets: {v1: 99, v2: 1}}
  - name: web
    blue_green: {blue: v1, green: v3, live: red}
"#,
    )
    .unwrap();
    let (code, output) = check(&file);
    assert_eq!(code, 1, "{output}");
    let problems: Vec<&str> = output.lines().skip(1).map(str::trim).collect();
    assert_eq!(
        problems,
        [
            "routes[0].match.hots: unknown key \"hots\"; did you mean \"host\"?",
            "routes[0].split.baseline: missing: a split with two or more targets needs `baseline: NAME`, the target that rollback and fallback send traffic to (one of v1, v2)",
            "routes[1].blue_green.green: no such upstream \"v3\"; did you mean \"v1\"? (upstreams: v1, v2)",
            "routes[1].blue_green.live: must be blue or green, got \"red\"",
        ],
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let (code, output) = check(Path::new("/nonexistent/switchyard.yaml"));
    assert_eq!(code, 1);
    assert!(output.contains("/nonexistent/switchyard.yaml"), "{output}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `conf/switchyard.schema.json` is what `switchyard schema` prints, and every file in `conf/` (and the
/// load test's config) fits it; files with a wrong type or an unknown key do not.
#[test]
fn the_published_schema_is_the_generated_one_and_every_example_fits_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let published = std::fs::read_to_string(root.join("conf/switchyard.schema.json")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        published.trim(),
        String::from_utf8_lossy(&out.stdout).trim(),
        "conf/switchyard.schema.json is stale: switchyard schema > conf/switchyard.schema.json"
    );
    let schema: serde_json::Value = serde_json::from_str(&published).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let as_json = |file: &Path| -> serde_json::Value {
        serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    };
    let mut files = yaml_files("conf");
    files.extend(yaml_files("conf/examples"));
    files.extend(yaml_files("conf/deploy"));
    files.push(root.join("perf/peers/switchyard.yaml"));
    assert!(files.len() >= 6);
    for file in &files {
        let errors: Vec<String> = validator
            .iter_errors(&as_json(file))
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
    for bad in [
        "wrong-type.yaml",
        "unknown-key.yaml",
        "rollout-bad-step.yaml",
    ] {
        let file = root.join("conf/invalid").join(bad);
        assert!(
            !validator.is_valid(&as_json(&file)),
            "{bad} fits the schema"
        );
    }
}

/// The systemd unit as shipped works with the config it ships: under `ProtectSystem=strict` only the
/// directories the unit creates are writable, and `conf/deploy/systemd.yaml` writes nowhere else.
#[test]
fn the_systemd_unit_leaves_writable_every_path_its_config_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("conf/deploy/switchyard.service")).unwrap();
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    assert_eq!(setting("ProtectSystem").as_deref(), Some("strict"));
    let mut writable: Vec<String> = Vec::new();
    for (key, parent) in [
        ("RuntimeDirectory", "/run"),
        ("StateDirectory", "/var/lib"),
        ("LogsDirectory", "/var/log"),
    ] {
        let name = setting(key).unwrap_or_else(|| panic!("the unit has no {key}="));
        writable.push(format!("{parent}/{name}"));
    }
    let rw = setting("ReadWritePaths").unwrap_or_default();
    writable.extend(rw.split_whitespace().map(str::to_string));
    let text = std::fs::read_to_string(root.join("conf/deploy/systemd.yaml")).unwrap();
    let config = switchyard::config::Config::load_str(&text).unwrap();
    let s = &config.server;
    let mut written = vec![
        s.pid_file.clone(),
        s.upgrade_sock.clone(),
        format!("{}/", s.state_dir),
    ];
    if !matches!(s.access_log.as_str(), "stdout" | "off") {
        written.push(s.access_log.clone());
    }
    for path in written {
        assert!(
            writable.iter().any(|w| path.starts_with(&format!("{w}/"))),
            "{path} is not writable under the unit (writable: {writable:?})"
        );
    }
    // The unit's ExecStart and the README's paths name that config's place.
    assert!(unit.contains("-c /etc/switchyard/switchyard.yaml"));
    assert!(unit.contains("conf/deploy/systemd.yaml /etc/switchyard/switchyard.yaml"));
}
