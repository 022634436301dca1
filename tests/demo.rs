//! `switchyard demo` as a new user meets it: every command it prints runs as printed (grpcurl aside,
//! which tests/grpc.rs covers with a real gRPC client), the status page it names answers, its mirror
//! really differs, its 404 is a 404, and the rollout it runs can be made to fail with the printed
//! knob and retried.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs one printed command in bash with the printed `export`; returns its exit code and output.
fn run(export: &str, command: &str) -> (i32, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{export}\n{command}"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn rollout_state() -> String {
    let reply = get(
        &client(),
        "http://127.0.0.1:9901/v1/routes/orders/rollout",
        &[("Authorization", "Bearer demo-token")],
    );
    reply.json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_command_the_demo_prints_runs_as_printed() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(demo.stdout.take().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        lines.push(line.trim_end().to_string());
        if line.starts_with("Stop with Ctrl-C.") {
            break;
        }
        line.clear();
    }
    let result = std::panic::catch_unwind(|| {
        assert!(eventually(Duration::from_secs(15), || {
            std::net::TcpStream::connect("127.0.0.1:8080").is_ok()
        }));
        let exe = env!("CARGO_BIN_EXE_switchyard");
        let commands: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("  "))
            .filter(|c| {
                c.starts_with("curl ")
                    || c.starts_with("for ")
                    || c.starts_with("export ")
                    || c.starts_with(&format!("{exe} ctl "))
            })
            .collect();
        assert!(
            commands.iter().filter(|c| c.contains(" ctl ")).count() >= 8,
            "ctl lines name this binary by its path: {lines:#?}"
        );
        let export = commands
            .iter()
            .find(|c| c.starts_with("export "))
            .copied()
            .unwrap();
        // The status page it names.
        let ui = lines.iter().find(|l| l.contains("/ui")).unwrap();
        assert!(ui.contains("http://127.0.0.1:9901/ui") && ui.contains("demo-token"));
        assert_eq!(get(&client(), "http://127.0.0.1:9901/ui", &[]).status, 200);
        for command in commands {
            if command.starts_with("export ") {
                continue;
            }
            if command.contains("_demo/errors?share=0'") {
                // Healed once the failing canary has been rolled back on its own.
                assert!(
                    eventually(Duration::from_secs(60), || rollout_state() == "failed"),
                    "the rollout did not fail after its knob: {}",
                    rollout_state()
                );
            }
            if command.ends_with("ctl diffs payments --fields") {
                assert!(eventually(Duration::from_secs(20), || run(export, command)
                    .1
                    .contains("changes /order/total from number to string")));
            }
            if command.ends_with("ctl diffs payments") {
                assert!(eventually(Duration::from_secs(10), || run(export, command)
                    .1
                    .contains("body at /order/total")));
            }
            let (code, out) = run(export, command);
            assert_eq!(code, 0, "{command}\n{out}");
            assert!(!out.trim().is_empty(), "{command} printed nothing");
            if command.contains("nothing-here") {
                assert!(
                    out.contains("404") && out.to_lowercase().contains("x-request-id"),
                    "{out}"
                );
            }
            if command.contains("ctl rollout orders retry") {
                assert!(out.contains("RUNNING"), "{out}");
            }
        }
    });
    let _ = demo.kill();
    let _ = demo.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
