//! The human-readable tables `ctl` prints (`--json` prints the API's JSON instead).

use serde_json::Value;
use std::time::Duration;

/// The latest mirror differences, `route` only if given.
pub(super) fn diffs_table(v: &Value, route: Option<&str>) -> String {
    let mut t = format!(
        "{:<24}  {:<12}  {:<12}  {:<24}  {}\n",
        "AT", "ROUTE", "SHADOW", "REQUEST", "WHAT DIFFERED"
    );
    let shown = v["diffs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| route.is_none_or(|r| d["route"].as_str() == Some(r)));
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
    t
}

/// A route's differences field by field (`diffs ROUTE --fields`), significant fields first, then
/// the schema drift in words.
pub(super) fn fields_table(v: &Value) -> String {
    let pairs = v["pairs"].as_u64().unwrap_or(0);
    let noise_pairs = v["noise_pairs"].as_u64().unwrap_or(0);
    let mut t = format!(
        "{} → {}: {pairs} pairs compared, {noise_pairs} noise pairs{}\n",
        text(&v["route"]),
        text(&v["target"]),
        if v["noise_learned"].as_bool() == Some(false) {
            " (noise not learned yet: no field is judged)"
        } else {
            ""
        }
    );
    t += &format!(
        "{:<32}  {:<8}  {:>8}  {:>8}  {:<11}  {}\n",
        "FIELD", "KIND", "SHADOW", "NOISE", "SIGNIFICANT", "EXAMPLE (primary → shadow)"
    );
    let percent =
        |f: &Value, rate: &str| format!("{:.1}%", f[rate].as_f64().unwrap_or(0.0) * 100.0);
    for f in v["fields"].as_array().into_iter().flatten() {
        let example = &f["example"];
        let side = |s: &Value| s.as_str().unwrap_or("absent").to_string();
        t += &format!(
            "{:<32}  {:<8}  {:>8}  {:>8}  {:<11}  {} → {}\n",
            text(&f["path"]),
            text(&f["kind"]),
            percent(f, "shadow_rate"),
            percent(f, "noise_rate"),
            match (f["significant"].as_bool(), f["noisy"].as_bool()) {
                (Some(true), _) => "yes",
                (_, Some(true)) => "no (noise)",
                _ => "no",
            },
            side(&example["primary"]),
            side(&example["shadow"])
        );
    }
    let drift: Vec<&str> = v["drift"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !drift.is_empty() {
        t += "\nschema drift:\n";
        for d in drift {
            t += &format!("  {d}\n");
        }
    }
    t
}

/// The audit log, newest last.
pub(super) fn audit_table(v: &Value) -> String {
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
    t
}

/// A rollout in words: where it is, how long it still holds, and its last verdicts.
pub(super) fn rollout_table(v: &Value) -> String {
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
            text(&check["number"]),
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
pub(super) fn human(seconds: f64) -> String {
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
pub(super) fn change_table(v: &Value) -> String {
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

pub(super) fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "no mirror"
    } else {
        s
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn stats_table(v: &Value, since_start: bool) -> String {
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
pub(super) fn traffic(r: &Value) -> String {
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

pub(super) fn mirror_text(r: &Value) -> String {
    match &r["mirror"] {
        Value::Null => String::new(),
        m => format!("mirror {}% to {}", text(&m["percent"]), text(&m["to"])),
    }
}

pub(super) fn fleet_table(v: &Value) -> String {
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

pub(super) fn status_table(v: &Value) -> String {
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

/// The revisions kept, oldest first, the live one marked.
pub(super) fn revisions_table(v: &Value) -> String {
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
    t
}
