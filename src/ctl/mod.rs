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
    /// `diffs ROUTE --fields`: the route's differences field by field, against the noise of the
    /// primary's upstream, with the schema drift in words.
    Diffs {
        /// Only this route.
        route: Option<String>,
        /// Per field (needs ROUTE).
        #[arg(long, requires = "route")]
        fields: bool,
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
        CtlCommand::Flip { route } => flip(c, &route),
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
            let table = revisions_table(&v);
            Ok((v, table))
        }
        CtlCommand::Restore { revision } => restore(c, revision),
        explain @ CtlCommand::Explain { .. } => explain_call(c, explain),
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
        CtlCommand::Diffs {
            route: Some(route),
            fields: true,
        } => {
            let v = c.get(&format!("/v1/routes/{}/mirror/fields", encode(&route)))?;
            let table = fields_table(&v);
            Ok((v, table))
        }
        CtlCommand::Diffs { route, .. } => {
            let v = c.get("/v1/mirror/diffs")?;
            let table = diffs_table(&v, route.as_deref());
            Ok((v, table))
        }
        CtlCommand::Export => {
            let (yaml, etag) = c.call_text("GET", "/v1/config", None, None)?;
            let revision = etag.unwrap_or_default().trim_matches('"').to_string();
            Ok((json!({"revision": revision, "config": yaml}), yaml))
        }
        CtlCommand::Audit => {
            let v = c.get("/v1/audit")?;
            let table = audit_table(&v);
            Ok((v, table))
        }
    }
}

/// `restore N`: a new revision equal to revision N.
fn restore(c: &Client, revision: u64) -> Result<(Value, String), Failure> {
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

/// `flip ROUTE`: the other colour of a blue/green route goes live.
fn flip(c: &Client, route: &str) -> Result<(Value, String), Failure> {
    let (current, etag) = read_route(c, route)?;
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
        &format!("/v1/routes/{}", encode(route)),
        json!({ "live": next }),
        etag.as_deref(),
    )?;
    let table = change_table(&v);
    Ok((v, table))
}

/// `explain ROUTE --header ... --client ...`: which target such a request gets, and why.
fn explain_call(c: &Client, command: CtlCommand) -> Result<(Value, String), Failure> {
    let CtlCommand::Explain {
        route,
        headers,
        cookies,
        queries,
        client,
        ip,
        method,
    } = command
    else {
        return Err(Failure::Usage("not an explain command".into()));
    };
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

mod tables;
use tables::*;
