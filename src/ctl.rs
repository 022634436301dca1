//! `switchyard ctl`: a client of the admin API for operators and scripts. Readable tables by default,
//! the API's JSON with `--json`. Reads `SWITCHYARD_ADMIN` (URL, default http://127.0.0.1:9901) and
//! `SWITCHYARD_TOKEN`. Exit codes: 0 done, 1 refused as invalid (4xx), 3 could not reach or act on the
//! instance (connection, auth, 5xx).

use clap::Subcommand;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Routes with their split / live colour / mirror, and the live revision.
    Status,
    /// Set split weights: `set-split payments payments-v1=95 payments-v2=5`.
    SetSplit {
        route: String,
        #[arg(required = true, value_name = "TARGET=WEIGHT")]
        weights: Vec<String>,
    },
    /// Make the idle colour of a blue/green route live.
    Flip { route: String },
    /// All non-rule traffic of a route back to its baseline.
    Rollback { route: String },
    /// Set the mirrored share of a route's traffic.
    Mirror { route: String, percent: f64 },
    /// Revisions kept, newest last.
    Revisions,
    /// Make a new revision equal to revision REV.
    Restore { revision: u64 },
    /// The audit log, newest last.
    Audit,
    /// Per route and target: requests, 5xx rate and p50/p95/p99 over the last 60 s (`--since-start`:
    /// since the instance started).
    Stats {
        /// Only this route.
        route: Option<String>,
        #[arg(long)]
        since_start: bool,
    },
    /// Which target a request gets on ROUTE, and why.
    Explain {
        route: String,
        /// A request header, NAME=VALUE (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// A cookie, NAME=VALUE (repeatable).
        #[arg(long = "cookie", value_name = "NAME=VALUE")]
        cookies: Vec<String>,
        /// A query parameter, NAME=VALUE (repeatable).
        #[arg(long = "query", value_name = "NAME=VALUE")]
        queries: Vec<String>,
        /// The calling client's id.
        #[arg(long)]
        client: Option<String>,
        /// The client's IP address.
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        method: Option<String>,
    },
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

enum Failure {
    /// The instance refused the request as invalid (exit 1).
    Refused(String),
    /// Could not reach or act on the instance (exit 3).
    Unreachable(String),
}

impl Client {
    fn from_env() -> Client {
        let base =
            std::env::var("SWITCHYARD_ADMIN").unwrap_or_else(|_| "http://127.0.0.1:9901".into());
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: std::env::var("SWITCHYARD_TOKEN").unwrap_or_default(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match result {
            Ok(r) => r
                .into_string()
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                .map_err(|e| Failure::Unreachable(format!("{url}: unreadable answer: {e}"))),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r
                    .into_string()
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null);
                let message = match (&body["error"], &body["errors"]) {
                    (Value::String(m), _) => m.clone(),
                    (_, Value::Array(errors)) => errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => body.to_string(),
                };
                if code == 401 {
                    Err(Failure::Unreachable(format!(
                        "{url}: {message} (set SWITCHYARD_TOKEN)"
                    )))
                } else if (400..500).contains(&code) {
                    Err(Failure::Refused(message))
                } else {
                    Err(Failure::Unreachable(format!(
                        "{url}: HTTP {code}: {message}"
                    )))
                }
            }
            Err(e) => Err(Failure::Unreachable(format!("{e} (set SWITCHYARD_ADMIN)"))),
        }
    }
}

pub fn run(command: CtlCommand, as_json: bool) -> ExitCode {
    let client = Client::from_env();
    match execute(&client, command) {
        Ok((value, table)) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{table}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(m)) => {
            eprintln!("refused: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("switchyard ctl: {m}");
            ExitCode::from(3)
        }
    }
}

/// Runs one command; returns the API's JSON and its table rendering.
fn execute(c: &Client, command: CtlCommand) -> Result<(Value, String), Failure> {
    let changed = |v: Value| {
        let table = format!("ok: now serving revision {}\n", v["revision"]);
        (v, table)
    };
    match command {
        CtlCommand::Status => {
            let v = c.call("GET", "/v1/status", None)?;
            let table = status_table(&v);
            Ok((v, table))
        }
        CtlCommand::SetSplit { route, weights } => {
            let mut split = serde_json::Map::new();
            for w in &weights {
                let parsed = w
                    .split_once('=')
                    .and_then(|(t, n)| Some((t, n.trim().parse::<f64>().ok()?)));
                let Some((target, weight)) = parsed else {
                    return Err(Failure::Refused(format!(
                        "{w:?}: expected TARGET=WEIGHT, e.g. payments-v2=5"
                    )));
                };
                split.insert(target.to_string(), json!(weight));
            }
            c.call(
                "PATCH",
                &format!("/v1/routes/{route}"),
                Some(json!({ "split": split })),
            )
            .map(changed)
        }
        CtlCommand::Flip { route } => {
            let status = c.call("GET", "/v1/status", None)?;
            let live = status["routes"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["name"] == route.as_str()))
                .map(|r| r["blue_green"]["live"].clone());
            let next = match live.as_ref().and_then(Value::as_str) {
                Some("blue") => "green",
                Some("green") => "blue",
                _ => {
                    return Err(Failure::Refused(format!(
                        "route {route:?} is not a blue/green route"
                    )))
                }
            };
            c.call(
                "PATCH",
                &format!("/v1/routes/{route}"),
                Some(json!({ "live": next })),
            )
            .map(changed)
        }
        CtlCommand::Rollback { route } => c
            .call("POST", &format!("/v1/routes/{route}/rollback"), None)
            .map(changed),
        CtlCommand::Mirror { route, percent } => c
            .call(
                "PATCH",
                &format!("/v1/routes/{route}"),
                Some(json!({ "mirror": { "percent": percent } })),
            )
            .map(changed),
        CtlCommand::Revisions => {
            let v = c.call("GET", "/v1/revisions", None)?;
            let mut t = format!(
                "{:>8}  {:<24}  {:<10}  {:<18}  {}\n",
                "REVISION", "AT", "ACTOR", "ACTION", "ROUTE"
            );
            for r in v["revisions"].as_array().into_iter().flatten() {
                let live = if r["live"] == true { " (live)" } else { "" };
                t += &format!(
                    "{:>8}  {:<24}  {:<10}  {:<18}  {}{live}\n",
                    text(&r["revision"]),
                    text(&r["at"]),
                    text(&r["actor"]),
                    text(&r["action"]),
                    text(&r["route"])
                );
            }
            Ok((v, t))
        }
        CtlCommand::Restore { revision } => c
            .call("POST", &format!("/v1/revisions/{revision}/restore"), None)
            .map(changed),
        CtlCommand::Explain {
            route,
            headers,
            cookies,
            queries,
            client,
            ip,
            method,
        } => {
            let mut params = Vec::new();
            for (prefix, list) in [
                ("header.", &headers),
                ("cookie.", &cookies),
                ("query.", &queries),
            ] {
                for kv in list {
                    let Some((k, v)) = kv.split_once('=') else {
                        return Err(Failure::Refused(format!("{kv:?}: expected NAME=VALUE")));
                    };
                    params.push(format!("{}={}", encode(&format!("{prefix}{k}")), encode(v)));
                }
            }
            for (key, value) in [("client", client), ("ip", ip), ("method", method)] {
                if let Some(v) = value {
                    params.push(format!("{key}={}", encode(&v)));
                }
            }
            let v = c.call(
                "GET",
                &format!("/v1/routes/{route}/explain?{}", params.join("&")),
                None,
            )?;
            let table = format!(
                "{} -> {} ({})\n",
                text(&v["route"]),
                text(&v["target"]),
                text(&v["explanation"])
            );
            Ok((v, table))
        }
        CtlCommand::Stats { route, since_start } => {
            let path = match &route {
                Some(r) => format!("/v1/stats?route={}", encode(r)),
                None => "/v1/stats".to_string(),
            };
            let v = c.call("GET", &path, None)?;
            let table = stats_table(&v, since_start);
            Ok((v, table))
        }
        CtlCommand::Audit => {
            let v = c.call("GET", "/v1/audit", None)?;
            let mut t = format!(
                "{:>8}  {:<24}  {:<10}  {:<18}  {:<12}  {}\n",
                "REVISION", "AT", "ACTOR", "ACTION", "ROUTE", "REASON"
            );
            for e in v["entries"].as_array().into_iter().flatten() {
                t += &format!(
                    "{:>8}  {:<24}  {:<10}  {:<18}  {:<12}  {}\n",
                    text(&e["revision"]),
                    text(&e["at"]),
                    text(&e["actor"]),
                    text(&e["action"]),
                    text(&e["route"]),
                    text(&e["reason"])
                );
            }
            Ok((v, t))
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn stats_table(v: &Value, since_start: bool) -> String {
    let window = if since_start {
        "since_start"
    } else {
        "last_60s"
    };
    let mut t = format!(
        "{:<20}  {:<20}  {:>9}  {:>8}  {:>6}  {:>8}  {:>8}  {:>8}  {:>6}  {:>9}\n",
        "ROUTE",
        "TARGET",
        "REQUESTS",
        "RPS",
        "5XX%",
        "P50_MS",
        "P95_MS",
        "P99_MS",
        "ERRORS",
        "FALLBACKS"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        for target in r["targets"].as_array().into_iter().flatten() {
            let w = &target[window];
            let requests = w["requests"].as_u64().unwrap_or(0);
            let seconds = w["seconds"].as_f64().unwrap_or(0.0);
            let rps = if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            };
            let ms = |k: &str| match w[k].as_f64() {
                Some(x) => format!("{x:.1}"),
                None => "-".into(),
            };
            t += &format!(
                "{:<20}  {:<20}  {:>9}  {:>8.1}  {:>6.2}  {:>8}  {:>8}  {:>8}  {:>6}  {:>9}\n",
                text(&r["route"]),
                text(&target["target"]),
                requests,
                rps,
                w["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                ms("p50_ms"),
                ms("p95_ms"),
                ms("p99_ms"),
                text(&w["upstream_errors"]),
                text(&w["fallbacks"]),
            );
        }
    }
    t
}

fn status_table(v: &Value) -> String {
    let mut t = format!(
        "revision {}\n{:<20}  {:<11}  {}\n",
        v["revision"], "ROUTE", "STRATEGY", "TRAFFIC"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        let (strategy, traffic) = if let Some(targets) = r["split"].as_object() {
            let total: f64 = targets.values().filter_map(Value::as_f64).sum();
            let parts: Vec<String> = targets
                .iter()
                .map(|(k, w)| {
                    let share = if total > 0.0 {
                        w.as_f64().unwrap_or(0.0) / total * 100.0
                    } else {
                        0.0
                    };
                    format!("{k} {share:.1}%")
                })
                .collect();
            ("split", parts.join(", "))
        } else {
            let bg = &r["blue_green"];
            let live = text(&bg["live"]);
            (
                "blue/green",
                format!("live {live}: {}", text(&bg[live.as_str()])),
            )
        };
        let mirror = match &r["mirror"] {
            Value::Null => String::new(),
            m => format!("; mirror {}% to {}", text(&m["percent"]), text(&m["to"])),
        };
        t += &format!(
            "{:<20}  {:<11}  {traffic}{mirror}\n",
            text(&r["name"]),
            strategy
        );
    }
    t
}
