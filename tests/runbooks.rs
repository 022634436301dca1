//! The README's runbooks, run verbatim against a live instance, each followed by a check of its effect.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "runbook-token";

/// The lines of the README block fenced as ```sh runbook:NAME.
fn runbook(name: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = format!("```sh runbook:{name}");
    let start = readme
        .find(&fence)
        .unwrap_or_else(|| panic!("README has no {fence} block"));
    let body = &readme[start + fence.len()..];
    let end = body.find("```").unwrap();
    body[..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn run_lines(name: &str, admin: std::net::SocketAddr) {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in runbook(name) {
        let out = Command::new("sh")
            .args(["-c", &line])
            .env("PATH", &path)
            .env("SWITCHYARD_ADMIN", format!("http://{admin}"))
            .env("SWITCHYARD_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runbook {name}: `{line}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_readme_runbooks_work() {
    let (v1, v2) = (backend("payments-v1"), backend("payments-v2"));
    let admin = free_addr();
    let proxy = ProxyProcess::start(&payments(admin, &v1, &v2, ""));
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let agent = client();
    let serve =
        |user: &str| get(&agent, &proxy.url("/api/payments"), &[("X-User-Id", user)]).version();

    run_lines("canary", admin);
    assert_eq!(serve("alice"), "payments-v2", "the canary ends at 100% v2");

    run_lines("rollback", admin);
    assert_eq!(
        serve("alice"),
        "payments-v1",
        "roll back sends everyone to the baseline"
    );

    run_lines("restore", admin);
    // Revision 1 is the file's config: everyone on v1, and the restores are audited revisions.
    assert_eq!(serve("bob"), "payments-v1");
    let audit = std::fs::read_to_string(proxy.dir.join("state/audit.jsonl")).unwrap();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"revision.restore\""))
            .count(),
        2
    );
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"route.rollback\""))
            .count(),
        2
    );
}

/// The README's rollout plan (the YAML block fenced as ```yaml rollout:plan), as a route's settings.
fn rollout_plan() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = "```yaml rollout:plan";
    let start = readme.find(fence).unwrap();
    let body = &readme[start + fence.len()..];
    let end = body.find("```").unwrap();
    body[..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// An admin listener and the `payments` route, v1 taking all of it, with `extra` settings.
fn payments(
    admin: std::net::SocketAddr,
    v1: &RunningBackend,
    v2: &RunningBackend,
    extra: &str,
) -> String {
    Fixture::new()
        .admin(admin, &[("ops", TOKEN)])
        .upstream("payments-v1", v1.addr)
        .upstream("payments-v2", v2.addr)
        .route(&format!(
            "name: payments\nmatch: {{path_prefix: /api/payments}}\nsplit: {{targets: {{payments-v1: 100, payments-v2: 0}}, baseline: payments-v1, sticky: [header:X-User-Id]}}\n{extra}"
        ))
        .yaml()
}

#[test]
fn the_readme_rollout_plan_runs_and_its_runbook_steers_it() {
    let (v1, v2) = (backend("payments-v1"), backend("payments-v2"));
    let admin = free_addr();
    let proxy = ProxyProcess::start(&payments(admin, &v1, &v2, &rollout_plan()));
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let agent = client();
    let url = proxy.url("/api/payments");
    assert!(eventually(Duration::from_secs(5), || {
        get(&agent, &url, &[("X-Version", "beta")]).version() == "payments-v2"
    }));
    assert_eq!(get(&agent, &url, &[]).version(), "payments-v1");

    run_lines("rollout", admin);
    // pause, resume, promote (to the mirror step), abort, retry: the mirror step runs again.
    let state: serde_json::Value = serde_json::from_str(
        &get(
            &agent,
            &format!("http://{admin}/v1/routes/payments/rollout"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        )
        .body,
    )
    .unwrap();
    assert_eq!(state["state"], "running", "{state:#}");
    assert_eq!(state["step"], 2);
    assert_eq!(state["phase"], "mirror 10%");
    let audit = std::fs::read_to_string(proxy.dir.join("state/audit.jsonl")).unwrap();
    for action in [
        "rollout.pause",
        "rollout.resume",
        "rollout.promote",
        "rollout.abort",
    ] {
        assert!(audit.contains(action), "{action} not audited");
    }
}
