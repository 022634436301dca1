//! Reload: `switchyard reload` (SIGHUP) re-reads the file. A good file becomes a new revision by actor
//! `file`; a broken one is refused and the running config keeps serving.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::Duration;

fn body(v1: &RunningBackend, v2: &RunningBackend, canary: u32) -> String {
    format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\n  v2: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: {}, v2: {canary}}}, baseline: v1}}\n",
        v1.addr,
        v2.addr,
        100 - canary
    )
}

fn audit_lines(proxy: &ProxyProcess) -> Vec<serde_json::Value> {
    std::fs::read_to_string(proxy.dir.join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reload_applies_a_good_file_and_refuses_a_broken_one() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start(&body(&v1, &v2, 0));
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/x"), &[]).version(), "v1");
    let conf = proxy.config_path();
    let conf = conf.to_str().unwrap();

    proxy.rewrite_config(&body(&v1, &v2, 100));
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    // `reload` waits for the outcome: the new revision serves when it returns.
    assert!(out.contains("now serving revision 2"), "{out}");
    assert_eq!(get(&agent, &proxy.url("/x"), &[]).version(), "v2");
    let audit = audit_lines(&proxy);
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(
        (audit[1]["revision"].as_u64(), audit[1]["actor"].as_str()),
        (Some(2), Some("file"))
    );
    assert_eq!(audit[1]["action"], "config.reload");

    // A broken file: `switchyard reload` reports every error and signals nothing (exit 1)...
    let broken = "routes:\n  - {name: api, split: {targets: {nope: 1}}}\nbogus: 1\n";
    std::fs::write(proxy.config_path(), broken).unwrap();
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bogus"), "{out}");
    assert!(!out.contains("asked switchyard"), "signalled anyway: {out}");
    // ...and a raw SIGHUP with that file is refused by the instance, which keeps serving.
    signal(proxy.child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let r = get(&agent, &proxy.url("/x"), &[]);
        assert_eq!((r.status, r.version()), (200, "v2".to_string()));
    }
    assert_eq!(audit_lines(&proxy).len(), 2);

    // A plain SIGHUP does the same as `switchyard reload`.
    proxy.rewrite_config(&body(&v1, &v2, 0));
    signal(proxy.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || get(
        &agent,
        &proxy.url("/x"),
        &[]
    )
    .version()
        == "v1"));
    assert_eq!(audit_lines(&proxy).len(), 3);
}

#[test]
fn reload_without_a_running_instance_exits_3() {
    let dir = std::env::temp_dir().join(format!("switchyard-noreload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("none.pid");
    let (code, out) = switchyard(&["reload", "--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("none.pid"), "{out}");
}

/// An emergency rollback through the API survives logrotate's nightly SIGHUP: a file equal to the one
/// last applied changes nothing. A file that changes the same setting conflicts and is refused;
/// `--force` applies it, and its audit entry names what it undid.
#[test]
fn a_sighup_with_the_same_file_never_undoes_an_api_rollback() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let admin = free_addr();
    let token = "ops-token";
    let with_admin = |canary: u32| {
        format!(
            "admin: {{listen: \"{admin}\", tokens: {{ops: {}}}}}\n{}",
            sha256_hex(token),
            body(&v1, &v2, canary)
        )
    };
    let proxy = ProxyProcess::start(&with_admin(50));
    let conf = proxy.config_path();
    let conf = conf.to_str().unwrap();
    let agent = client();
    let versions = || -> Vec<String> {
        (0..100)
            .map(|u| {
                let user = format!("u{u}");
                get(&agent, &proxy.url("/x"), &[("X-User-Id", &user)]).version()
            })
            .collect()
    };
    assert!(versions().iter().any(|v| v == "v2"));
    let rollback = send_body(
        &client(),
        "POST",
        &format!("http://{admin}/v1/routes/api/rollback"),
        &[("Authorization", &format!("Bearer {token}"))],
        Some(r#"{"reason":"v2 returns 500s"}"#),
    );
    assert_eq!(rollback.status, 200, "{}", rollback.body);
    assert!(versions().iter().all(|v| v == "v1"));
    let lines = audit_lines(&proxy).len();

    // The same file, by `switchyard reload` and by a raw SIGHUP: unchanged, no revision, still v1.
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("unchanged") && out.contains("revision 2"),
        "{out}"
    );
    signal(proxy.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || {
        let outcome: serde_json::Value = std::fs::read(proxy.dir.join("state/reload.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        outcome["seq"] == 2 && outcome["result"] == "unchanged"
    }));
    assert!(versions().iter().all(|v| v == "v1"));
    assert_eq!(audit_lines(&proxy).len(), lines);

    // An edit of the same setting conflicts with the live rollback: refused, naming the route, the
    // setting, both values, and who changed it live; nothing changes.
    proxy.rewrite_config(&with_admin(100));
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[api].split.targets: file {\"v1\":0.0,\"v2\":100.0}, live {\"v1\":100.0,\"v2\":0.0} (changed live by ops (route.rollback at revision 2")
            && out.contains("--force"),
        "{out}"
    );
    assert!(versions().iter().all(|v| v == "v1"));
    assert_eq!(audit_lines(&proxy).len(), lines);

    // `-c` naming a file this instance does not run is refused, saying which one it runs.
    let other = proxy.dir.join("other.yaml");
    std::fs::copy(conf, &other).unwrap();
    let (code, out) = switchyard(&["reload", "-c", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("this instance runs {conf}, not ")),
        "{out}"
    );

    // --force takes the file's value, and its audit entry names what it undid.
    let (code, out) = switchyard(&["reload", "-c", conf, "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("now serving revision 3")
            && out.contains("undid (forced): routes[api].split.targets"),
        "{out}"
    );
    assert!(versions().iter().all(|v| v == "v2"));
    let audit = audit_lines(&proxy);
    let last = audit.last().unwrap();
    assert_eq!(
        (last["actor"].as_str(), last["revision"].as_u64()),
        (Some("file"), Some(3))
    );
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("forced, undoing: routes[api].split.targets")
            && reason.contains("changed live by ops (route.rollback at revision 2"),
        "{reason}"
    );
}
