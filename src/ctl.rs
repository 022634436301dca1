//! `switchyard ctl`: a client of the admin API for operators and scripts. Readable tables by default,
//! the API's JSON with `--json`. `--admin URL` and `--token T` (or `SWITCHYARD_ADMIN`, default
//! http://127.0.0.1:9901, and `SWITCHYARD_TOKEN`); http or https (`--cacert FILE` trusts a private CA).
//! Every change reads the route first and sends `If-Match` with the revision it read, so two operators
//! never overwrite each other silently; it prints the change as before → after.
//! Exit codes: 0 done, 1 refused (4xx: invalid, or changed by someone else meanwhile), 2 usage error,
//! 3 could not reach or act on the instance (connection, auth, 5xx).

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Options of every `ctl` command.
#[derive(Debug, Args)]
pub struct CtlOptions {
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The admin API's URL (http or https); default $SWITCHYARD_ADMIN, else http://127.0.0.1:9901.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// The admin token; default $SWITCHYARD_TOKEN.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Why: recorded in the audit log with the change.
    #[arg(long, global = true, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Trust this CA (PEM) for an https admin URL, instead of the system's roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Routes with their split / live colour / mirror, and the live revision (`--fleet`: every
    /// instance of the fleet, the revision it serves and the rollouts it leads).
    Status {
        #[arg(long)]
        fleet: bool,
    },
    /// Set split weights: `set-split payments payments-v1=95 payments-v2=5` (weights, shares are weight
    /// / total), or `set-split payments payments-v2=5%` (exactly 5%; the baseline takes the difference).
    SetSplit {
        route: String,
        #[arg(required = true, value_name = "TARGET=WEIGHT|TARGET=N%")]
        weights: Vec<String>,
    },
    /// Make the idle colour of a blue/green route live.
    Flip { route: String },
    /// All non-rule traffic of a route back to its baseline.
    Rollback { route: String },
    /// Set the mirrored share of a route's traffic.
    Mirror { route: String, percent: f64 },
    /// The latest mirror differences (newest last): when, route, request, and what differed.
    Diffs {
        /// Only this route.
        route: Option<String>,
    },
    /// The live config in the file's format (YAML), to commit: written to the config file and
    /// reloaded, it changes no traffic.
    Export,
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
    /// A route's rollout: phase, step, time left and the last verdicts with their figures; or control
    /// it: start, pause, resume, abort, promote (go on to the next step now), retry (a failed or
    /// aborted step).
    Rollout {
        route: String,
        #[arg(value_parser = ["start", "pause", "resume", "abort", "promote", "retry"])]
        action: Option<String>,
        /// Follow the rollout live until it ends (exit 0 when it succeeded, 1 when it failed or was
        /// aborted).
        #[arg(long)]
        watch: bool,
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
    reason: Option<String>,
    agent: ureq::Agent,
}

enum Failure {
    /// The command line itself is wrong (exit 2).
    Usage(String),
    /// The instance refused the request (exit 1).
    Refused(String),
    /// Could not reach or act on the instance (exit 3).
    Unreachable(String),
}

/// How often a change refused with 503 (an instance handing over to its successor) is tried again.
const RETRIES_ON_503: u32 = 10;

impl Client {
    fn new(opts: &CtlOptions) -> Result<Client, Failure> {
        let base = opts
            .admin
            .clone()
            .or_else(|| std::env::var("SWITCHYARD_ADMIN").ok())
            .unwrap_or_else(|| "http://127.0.0.1:9901".into());
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Failure::Usage(format!(
                "admin URL {base:?} must start with http:// or https://"
            )));
        }
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10));
        if let Some(ca) = &opts.cacert {
            agent = agent.tls_config(tls_trusting(ca)?);
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: opts
                .token
                .clone()
                .or_else(|| std::env::var("SWITCHYARD_TOKEN").ok())
                .unwrap_or_default(),
            reason: opts.reason.clone(),
            agent: agent.build(),
        })
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, None, None).map(|(v, _)| v)
    }

    /// A change: sends the reason, and `If-Match` with the revision the change was based on.
    fn change(
        &self,
        method: &str,
        path: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut body = body;
        if let (Some(reason), Some(o)) = (&self.reason, body.as_object_mut()) {
            o.insert("reason".into(), json!(reason));
        }
        self.call(method, path, Some(body), if_match)
            .map(|(v, _)| v)
    }

    /// One call; returns the JSON answer and its ETag.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), Failure> {
        let (text, etag) = self.call_text(method, path, body, if_match)?;
        serde_json::from_str(&text).map(|v| (v, etag)).map_err(|e| {
            Failure::Unreachable(format!("{}{path}: unreadable answer: {e}", self.base))
        })
    }

    /// One call; returns the answer's text and its ETag.
    fn call_text(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<(String, Option<String>), Failure> {
        let url = format!("{}{path}", self.base);
        let mut tries = 0;
        loop {
            let mut req = self
                .agent
                .request(method, &url)
                .set("Authorization", &format!("Bearer {}", self.token));
            if let Some(tag) = if_match {
                req = req.set("If-Match", tag);
            }
            let result = match &body {
                Some(b) => req
                    .set("Content-Type", "application/json")
                    .send_string(&b.to_string()),
                None => req.call(),
            };
            match result {
                Ok(r) => {
                    let etag = r.header("etag").map(str::to_string);
                    return r.into_string().map(|t| (t, etag)).map_err(|e| {
                        Failure::Unreachable(format!("{url}: unreadable answer: {e}"))
                    });
                }
                Err(ureq::Error::Status(503, r)) if tries < RETRIES_ON_503 => {
                    tries += 1;
                    let wait = r
                        .header("retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(1)
                        .clamp(1, 5);
                    std::thread::sleep(Duration::from_secs(wait));
                }
                Err(ureq::Error::Status(code, r)) => return Err(status_failure(&url, code, r)),
                Err(e) => {
                    return Err(Failure::Unreachable(format!(
                        "{e} (set --admin or SWITCHYARD_ADMIN)"
                    )))
                }
            }
        }
    }
}

/// A TLS setup that trusts only the CA certificates in `path` (PEM).
fn tls_trusting(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let bad = |e: String| Failure::Usage(format!("--cacert {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A non-2xx answer: 401 and 5xx mean the instance could not be acted on; other 4xx are refusals.
fn status_failure(url: &str, code: u16, r: ureq::Response) -> Failure {
    let body: Value = r
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    // Problem details (RFC 9457): every problem of an invalid config, else the detail.
    let message = match (&body["errors"], &body["detail"]) {
        (Value::Array(errors), _) => errors
            .iter()
            .filter_map(|e| e["text"].as_str().or(e.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        (_, Value::String(m)) => m.clone(),
        _ => body.to_string(),
    };
    if code == 401 {
        Failure::Unreachable(format!(
            "{url}: {message} (set --token or SWITCHYARD_TOKEN)"
        ))
    } else if (400..500).contains(&code) {
        Failure::Refused(message)
    } else {
        Failure::Unreachable(format!("{url}: HTTP {code}: {message}"))
    }
}

pub fn run(opts: CtlOptions, command: CtlCommand) -> ExitCode {
    if let CtlCommand::Rollout {
        route,
        action: None,
        watch: true,
    } = &command
    {
        return match Client::new(&opts) {
            Ok(client) => watch_rollout(&client, route, opts.json),
            Err(e) => finish(&opts, Err(e)),
        };
    }
    let result = Client::new(&opts).and_then(|client| execute(&client, command));
    finish(&opts, result)
}

/// Prints the rollout every second until it ends: on a terminal redrawn in place, elsewhere (a pipe,
/// a log, `--json`) appended each time it changes.
fn watch_rollout(c: &Client, route: &str, as_json: bool) -> ExitCode {
    use std::io::IsTerminal;
    let path = format!("/v1/routes/{}/rollout", encode(route));
    let redraw = !as_json && std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let v = match c.get(&path) {
            Ok(v) => v,
            Err(e) => return finish_failure(e),
        };
        let shown = if as_json {
            v.to_string() + "\n"
        } else {
            rollout_table(&v)
        };
        if shown != last {
            let mut out = std::io::stdout().lock();
            // Home and clear the screen, then the whole view again.
            let frame = if redraw {
                format!("\x1b[H\x1b[2J{shown}")
            } else {
                format!("{shown}\n")
            };
            if out
                .write_all(frame.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
            last = shown;
        }
        match v["state"].as_str() {
            Some("succeeded") => return ExitCode::SUCCESS,
            Some("failed" | "aborted") => return ExitCode::from(1),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn finish(opts: &CtlOptions, result: Result<(Value, String), Failure>) -> ExitCode {
    match result {
        Ok((value, table)) => {
            let text = if opts.json {
                serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
            } else {
                table
            };
            // A reader that went away (`ctl ... | head`) is not an error of ours.
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("switchyard ctl: cannot write the answer: {e}");
                    ExitCode::from(3)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => finish_failure(e),
    }
}

fn finish_failure(e: Failure) -> ExitCode {
    match e {
        Failure::Usage(m) => {
            eprintln!("switchyard ctl: {m}");
            ExitCode::from(2)
        }
        Failure::Refused(m) => {
            eprintln!("refused: {m}");
            ExitCode::from(1)
        }
        Failure::Unreachable(m) => {
            eprintln!("switchyard ctl: {m}");
            ExitCode::from(3)
        }
    }
}

/// A route as the API shows it, with the ETag of the revision it was read at.
fn read_route(c: &Client, route: &str) -> Result<(Value, Option<String>), Failure> {
    c.call("GET", &format!("/v1/routes/{}", encode(route)), None, None)
}

/// `TARGET=WEIGHT` or `TARGET=N%`, as the PATCH body's split object.
fn split_patch(weights: &[String]) -> Result<serde_json::Map<String, Value>, Failure> {
    let mut split = serde_json::Map::new();
    for w in weights {
        let usage = || {
            Failure::Usage(format!(
                "{w:?}: expected TARGET=WEIGHT or TARGET=N%, e.g. payments-v2=5 or payments-v2=5%"
            ))
        };
        let (target, value) = w.split_once('=').ok_or_else(usage)?;
        let value = value.trim();
        let parsed = match value.strip_suffix('%') {
            Some(p) => {
                p.trim().parse::<f64>().map_err(|_| usage())?;
                json!(value)
            }
            None => json!(value.parse::<f64>().map_err(|_| usage())?),
        };
        if target.is_empty() {
            return Err(usage());
        }
        split.insert(target.to_string(), parsed);
    }
    Ok(split)
}

/// Runs one command; returns the API's JSON and its table rendering.
fn execute(c: &Client, command: CtlCommand) -> Result<(Value, String), Failure> {
    let route_change = |route: &str, body: Value| -> Result<(Value, String), Failure> {
        let (_, etag) = read_route(c, route)?;
        let v = c.change(
            "PATCH",
            &format!("/v1/routes/{}", encode(route)),
            body,
            etag.as_deref(),
        )?;
        let table = change_table(&v);
        Ok((v, table))
    };
    match command {
        CtlCommand::Status { fleet: false } => {
            let v = c.get("/v1/status")?;
            let table = status_table(&v);
            Ok((v, table))
        }
        CtlCommand::Status { fleet: true } => {
            let v = c.get("/v1/fleet")?;
            let table = fleet_table(&v);
            Ok((v, table))
        }
        CtlCommand::SetSplit { route, weights } => {
            let split = split_patch(&weights)?;
            route_change(&route, json!({ "split": split }))
        }
        CtlCommand::Flip { route } => {
            let (current, etag) = read_route(c, &route)?;
            let next = match current["blue_green"]["live"].as_str() {
                Some("blue") => "green",
                Some("green") => "blue",
                _ => {
                    return Err(Failure::Refused(format!(
                        "route {route:?} is not a blue/green route"
                    )))
                }
            };
            let v = c.change(
                "PATCH",
                &format!("/v1/routes/{}", encode(&route)),
                json!({ "live": next }),
                etag.as_deref(),
            )?;
            let table = change_table(&v);
            Ok((v, table))
        }
        CtlCommand::Rollback { route } => {
            let (_, etag) = read_route(c, &route)?;
            let v = c.change(
                "POST",
                &format!("/v1/routes/{}/rollback", encode(&route)),
                json!({}),
                etag.as_deref(),
            )?;
            let table = change_table(&v);
            Ok((v, table))
        }
        CtlCommand::Mirror { route, percent } => {
            route_change(&route, json!({ "mirror": { "percent": percent } }))
        }
        CtlCommand::Revisions => {
            let v = c.get("/v1/revisions")?;
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
        CtlCommand::Restore { revision } => {
            let (_, etag) = c.call("GET", "/v1/status", None, None)?;
            let v = c.change(
                "POST",
                &format!("/v1/revisions/{revision}/restore"),
                json!({}),
                etag.as_deref(),
            )?;
            let table = format!(
                "revision {revision} restored: now serving revision {}\n",
                v["revision"]
            );
            Ok((v, table))
        }
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
                        return Err(Failure::Usage(format!("{kv:?}: expected NAME=VALUE")));
                    };
                    params.push(format!("{}={}", encode(&format!("{prefix}{k}")), encode(v)));
                }
            }
            for (key, value) in [("client", client), ("ip", ip), ("method", method)] {
                if let Some(v) = value {
                    params.push(format!("{key}={}", encode(&v)));
                }
            }
            let v = c.get(&format!(
                "/v1/routes/{}/explain?{}",
                encode(&route),
                params.join("&")
            ))?;
            let baseline = if v["target"] == v["baseline"] {
                " (baseline)"
            } else {
                ""
            };
            let table = format!(
                "{} -> {}{baseline} ({})\n",
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
            let v = c.get(&path)?;
            let table = stats_table(&v, since_start);
            Ok((v, table))
        }
        CtlCommand::Rollout { route, action, .. } => {
            let path = format!("/v1/routes/{}/rollout", encode(&route));
            let v = match action {
                None => c.get(&path)?,
                Some(action) => {
                    let (_, etag) = read_route(c, &route)?;
                    c.change(
                        "POST",
                        &format!("{path}/{action}"),
                        json!({}),
                        etag.as_deref(),
                    )?
                }
            };
            let table = rollout_table(&v);
            Ok((v, table))
        }
        CtlCommand::Diffs { route } => {
            let v = c.get("/v1/mirror/diffs")?;
            let mut t = format!(
                "{:<24}  {:<12}  {:<12}  {:<24}  {}\n",
                "AT", "ROUTE", "SHADOW", "REQUEST", "WHAT DIFFERED"
            );
            let shown = v["diffs"].as_array().into_iter().flatten().filter(|d| {
                route
                    .as_deref()
                    .is_none_or(|r| d["route"].as_str() == Some(r))
            });
            for d in shown {
                t += &format!(
                    "{:<24}  {:<12}  {:<12}  {:<24}  {}\n",
                    text(&d["at"]),
                    text(&d["route"]),
                    text(&d["target"]),
                    format!("{} {}", text(&d["method"]), text(&d["path"])),
                    text(&d["diff"])
                );
            }
            Ok((v, t))
        }
        CtlCommand::Export => {
            let (yaml, etag) = c.call_text("GET", "/v1/config", None, None)?;
            let revision = etag.unwrap_or_default().trim_matches('"').to_string();
            Ok((json!({"revision": revision, "config": yaml}), yaml))
        }
        CtlCommand::Audit => {
            let v = c.get("/v1/audit")?;
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

/// A rollout in words: where it is, how long it still holds, and its last verdicts.
fn rollout_table(v: &Value) -> String {
    let mut t = format!(
        "{}: rollout of {} — {}",
        text(&v["route"]),
        text(&v["canary"]),
        text(&v["state"]).to_uppercase()
    );
    if let Some(step) = v["step"].as_u64() {
        t += &format!(
            ", step {step}/{} ({}), canary at {}%",
            text(&v["steps"]),
            text(&v["phase"]),
            v["canary_share"].as_f64().unwrap_or(0.0)
        );
    }
    t += "\n";
    if let Some(reason) = v["reason"].as_str() {
        t += &format!("  {reason}\n");
    }
    if let Some(plan) = v["plan"].as_array() {
        let at = v["step"].as_u64().unwrap_or(0) as usize;
        let steps: Vec<String> = plan
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == at {
                    format!("[{}]", text(s))
                } else {
                    text(s)
                }
            })
            .collect();
        t += &format!("  plan: {}\n", steps.join(" → "));
    }
    if v["held_seconds"].is_number() {
        let left = match v["left_seconds"].as_f64() {
            Some(l) => format!(", {} left", human(l)),
            None => String::new(),
        };
        t += &format!(
            "  held {} of {}{left}; checks every {}: {} passed, {} failed in a row (limit {})\n",
            human(v["held_seconds"].as_f64().unwrap_or(0.0)),
            human(v["hold_seconds"].as_f64().unwrap_or(0.0)),
            human(v["interval_seconds"].as_f64().unwrap_or(0.0)),
            text(&v["passes"]),
            text(&v["failures"]),
            text(&v["failure_limit"])
        );
    }
    if let Some(check) = v["last_check"].as_object() {
        t += &format!(
            "  check {} {}: {}\n",
            text(&check["number"].clone()),
            text(&check["verdict"]).to_uppercase(),
            text(&check["summary"])
        );
        for test in check
            .get("tests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t += &format!(
                "    {:<13} {:<24} {:<4}  {}\n",
                text(&test["test"]),
                text(&test["gate"]),
                text(&test["outcome"]).to_uppercase(),
                text(&test["words"])
            );
        }
    }
    let history = v["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        t += "  last events:\n";
        for e in history.iter().rev().take(8).rev() {
            let verdict = e["verdict"]
                .as_str()
                .map(|x| format!(" {}", x.to_uppercase()))
                .unwrap_or_default();
            let gate = e["gate"]
                .as_str()
                .map(|g| format!(" [{g}]"))
                .unwrap_or_default();
            t += &format!(
                "    {}  step {:<2} {}{verdict}{gate}: {}\n",
                text(&e["at"]),
                text(&e["step"]),
                text(&e["event"]),
                text(&e["reason"])
            );
        }
    }
    t
}

/// Seconds as `1h 2m 3s` (milliseconds below 10 s).
fn human(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let d = if ms < 10_000 {
        Duration::from_millis(ms)
    } else {
        Duration::from_secs(ms / 1000)
    };
    humantime::format_duration(d).to_string()
}

/// A change as before → after, e.g. `payments: split payments-v1 99.0% (baseline), payments-v2 1.0%
/// → payments-v1 95.0% (baseline), payments-v2 5.0%`.
fn change_table(v: &Value) -> String {
    let (before, after) = (&v["before"], &v["after"]);
    let mut lines = Vec::new();
    let (b, a) = (traffic(before), traffic(after));
    if b != a {
        lines.push(format!("{}: {} → {}", text(&v["route"]), b, a));
    }
    let (bm, am) = (mirror_text(before), mirror_text(after));
    if bm != am {
        lines.push(format!(
            "{}: {} → {}",
            text(&v["route"]),
            or_none(&bm),
            or_none(&am)
        ));
    }
    if lines.is_empty() {
        lines.push(format!("{}: no change to its traffic", text(&v["route"])));
    }
    lines.push(format!("now serving revision {}", v["revision"]));
    lines.join("\n") + "\n"
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "no mirror"
    } else {
        s
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

/// Where a route's traffic goes, as status shows it: `split v1 95.0% (baseline), v2 5.0%` or
/// `blue/green live blue: web-blue`.
fn traffic(r: &Value) -> String {
    if let Some(targets) = r["split"]["targets"].as_array() {
        let parts: Vec<String> = targets
            .iter()
            .map(|t| {
                let mark = if t["baseline"] == true {
                    " (baseline)"
                } else {
                    ""
                };
                let share = t["share"].as_f64().unwrap_or(0.0);
                format!("{} {share:.1}%{mark}", text(&t["target"]))
            })
            .collect();
        format!("split {}", parts.join(", "))
    } else if r["blue_green"].is_object() {
        let bg = &r["blue_green"];
        let live = text(&bg["live"]);
        format!("blue/green live {live}: {}", text(&bg[live.as_str()]))
    } else {
        "-".into()
    }
}

fn mirror_text(r: &Value) -> String {
    match &r["mirror"] {
        Value::Null => String::new(),
        m => format!("mirror {}% to {}", text(&m["percent"]), text(&m["to"])),
    }
}

fn fleet_table(v: &Value) -> String {
    let connected = if v["connected"].as_bool() == Some(true) {
        "connected".to_string()
    } else {
        format!(
            "NOT connected since {} ({})",
            text(&v["since"]),
            text(&v["last_error"])
        )
    };
    let mut t = format!(
        "fleet {} at revision {}; this instance {} serves revision {}, {connected}\n{:<28}  {:<22}  {:>8}  {:<24}  {}\n",
        text(&v["prefix"]),
        v["fleet_revision"],
        text(&v["instance"]),
        v["revision"],
        "INSTANCE",
        "ADMIN",
        "REVISION",
        "STARTED",
        "LEADS ROLLOUTS OF"
    );
    for i in v["instances"].as_array().into_iter().flatten() {
        let leads: Vec<&str> = i["leads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        t += &format!(
            "{:<28}  {:<22}  {:>8}  {:<24}  {}\n",
            text(&i["id"]),
            text(&i["admin"]),
            i["revision"],
            text(&i["started_at"]),
            if leads.is_empty() {
                "-".to_string()
            } else {
                leads.join(", ")
            }
        );
    }
    t
}

fn status_table(v: &Value) -> String {
    let mut t = format!(
        "revision {}\n{:<20}  {:<32}  {}\n",
        v["revision"], "ROUTE", "ROLLOUT", "TRAFFIC"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        let mirror = mirror_text(r);
        let mirror = if mirror.is_empty() {
            mirror
        } else {
            format!("; {mirror}")
        };
        let ro = &r["rollout_state"];
        let rollout = match (ro["state"].as_str(), ro["step"].as_u64()) {
            (Some(state), Some(step)) => format!(
                "{state} {step}/{} ({})",
                text(&ro["steps"]),
                text(&ro["phase"])
            ),
            (Some(state), None) => state.to_string(),
            _ => "-".into(),
        };
        t += &format!(
            "{:<20}  {rollout:<32}  {}{mirror}\n",
            text(&r["name"]),
            traffic(r)
        );
    }
    t += &format!(
        "\n{:<20}  {:<22}  {:<5}  {:<24}  {}\n",
        "UPSTREAM", "BACKEND", "STATE", "SINCE", "LAST ERROR"
    );
    for u in v["upstreams"].as_array().into_iter().flatten() {
        for b in u["backends"].as_array().into_iter().flatten() {
            let state = match (b["up"] == true, b["checked"] == true) {
                (true, true) => "up",
                (true, false) => "up*",
                (false, _) => "DOWN",
            };
            t += &format!(
                "{:<20}  {:<22}  {:<5}  {:<24}  {}\n",
                text(&u["name"]),
                text(&b["backend"]),
                state,
                text(&b["since"]),
                text(&b["last_error"])
            );
        }
    }
    t += "(up*: no health check; counted up)\n";
    t
}
