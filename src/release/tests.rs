//! Unit tests of the pure decision. End-to-end behaviour through the proxy is in `tests/`.

use super::*;
use crate::config::Config;
use crate::config::Valid;
use http::HeaderMap;

const CONFIG: &str = r#"
clients:
  api_key_header: X-Api-Key
  keys:
    acme: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae   # sha256("foo")
    globex: fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9 # sha256("bar")
upstreams:
  v1: {backends: ["127.0.0.1:1"]}
  v2: {backends: ["127.0.0.1:2"]}
  blue: {backends: ["127.0.0.1:3"]}
  green: {backends: ["127.0.0.1:4"]}
routes:
  - name: payments
    match: {host: api.example.com, path_prefix: /api/payments, methods: [GET, POST]}
    rules:
      - when: {header: {X-Version: beta}}
        to: v2
      - when: {header_present: X-Debug}
        to: v2
      - when: {cookie: {canary: "yes"}}
        to: v2
      - when: {query: {version: "2"}}
        to: v2
      - when: {client_in: [globex]}
        to: v2
      - when: {method: [POST], source_ip: ["10.0.0.0/8"]}
        to: v2
    split:
      targets: {v1: 90, v2: 10}
      baseline: v1
      sticky: [header:X-User-Id, cookie:uid, query:user, client, ip]
  - name: locked
    match: {path_prefix: /locked}
    require_client: true
    split: {targets: {v1: 1}}
  - name: web
    match: {path_prefix: /}
    blue_green: {blue: blue, green: green, live: green}
"#;

fn table() -> ReleaseTable {
    ReleaseTable::compile(&Valid::load(CONFIG).unwrap()).unwrap()
}

struct Req {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    ip: Option<IpAddr>,
}

impl Req {
    fn new(path: &'static str) -> Req {
        Req {
            method: "GET",
            host: "api.example.com",
            path,
            query: None,
            headers: HeaderMap::new(),
            ip: None,
        }
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        self.headers.append(k, v.parse().unwrap());
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: self.method,
            host: self.host,
            path: self.path,
            query: self.query,
            headers: (&self.headers).into(),
            client_ip: self.ip,
        }
    }
}

fn routed(t: &ReleaseTable, r: &Req) -> (String, String, Reason) {
    match decide(t, &r.view(), &mut || 0) {
        Outcome::Routed(d) => (
            t.route(d.route).unwrap().name.to_string(),
            t.upstream_name(d.target).to_string(),
            d.reason,
        ),
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn every_rule_kind_routes_to_its_target() {
    let t = table();
    let cases = [
        (Req::new("/api/payments").header("x-version", "beta"), 0),
        (Req::new("/api/payments").header("X-VERSION", "beta"), 0),
        (Req::new("/api/payments").header("X-Debug", ""), 1),
        (
            Req::new("/api/payments").header("Cookie", "a=b; canary=yes"),
            2,
        ),
        (
            Req {
                query: Some("x=1&version=2"),
                ..Req::new("/api/payments")
            },
            3,
        ),
        (Req::new("/api/payments").header("X-Api-Key", "bar"), 4),
        (
            Req {
                method: "POST",
                ip: Some("10.1.2.3".parse().unwrap()),
                ..Req::new("/api/payments")
            },
            5,
        ),
    ];
    for (req, rule) in cases {
        let (route, target, reason) = routed(&t, &req);
        assert_eq!(
            (route.as_str(), target.as_str(), reason),
            ("payments", "v2", Reason::Rule(rule))
        );
    }
}

#[test]
fn near_misses_fall_through_to_the_split() {
    let t = table();
    let misses = [
        Req::new("/api/payments").header("X-Version", "Beta"),
        Req::new("/api/payments").header("Cookie", "canary=no"),
        Req {
            query: Some("version=3"),
            ..Req::new("/api/payments")
        },
        Req::new("/api/payments").header("X-Api-Key", "foo"), // acme, not in client_in
        Req::new("/api/payments").header("X-Api-Key", "wrong"),
        Req {
            method: "POST",
            ip: Some("11.1.2.3".parse().unwrap()),
            ..Req::new("/api/payments")
        },
    ];
    for req in misses {
        let (_, _, reason) = routed(&t, &req);
        assert!(matches!(reason, Reason::Split { .. }), "{reason:?}");
    }
}

#[test]
fn route_methods_restrict_the_match() {
    let t = table();
    // PUT is not among the payments route's methods, so it falls through to the catch-all web route.
    let req = Req {
        method: "PUT",
        ..Req::new("/api/payments")
    };
    assert_eq!(routed(&t, &req).0, "web");
}

#[test]
fn sticky_keys_are_tried_in_order() {
    let t = table();
    let salt = "payments";
    let by_header = Req::new("/api/payments")
        .header("X-User-Id", "u1")
        .header("Cookie", "uid=u2");
    assert_eq!(
        routed(&t, &by_header).2,
        Reason::Split {
            bucket: split::bucket(salt, b"u1"),
            sticky: Some(0)
        }
    );
    let by_cookie = Req::new("/api/payments").header("Cookie", "uid=u2");
    assert_eq!(
        routed(&t, &by_cookie).2,
        Reason::Split {
            bucket: split::bucket(salt, b"u2"),
            sticky: Some(1)
        }
    );
    let by_query = Req {
        query: Some("user=u3"),
        ..Req::new("/api/payments")
    };
    assert_eq!(
        routed(&t, &by_query).2,
        Reason::Split {
            bucket: split::bucket(salt, b"u3"),
            sticky: Some(2)
        }
    );
    let by_client = Req::new("/api/payments").header("X-Api-Key", "foo");
    assert_eq!(
        routed(&t, &by_client).2,
        Reason::Split {
            bucket: split::bucket(salt, b"acme"),
            sticky: Some(3)
        }
    );
    let by_ip = Req {
        ip: Some("192.0.2.7".parse().unwrap()),
        ..Req::new("/api/payments")
    };
    assert_eq!(
        routed(&t, &by_ip).2,
        Reason::Split {
            bucket: split::bucket(salt, b"192.0.2.7"),
            sticky: Some(4)
        }
    );
    let random = Req::new("/api/payments");
    let d = decide(&t, &random.view(), &mut || 1_234_567);
    assert!(matches!(
        d,
        Outcome::Routed(Decision {
            reason: Reason::Split {
                bucket: 234_567,
                sticky: None
            },
            ..
        })
    ));
}

#[test]
fn split_shares_and_monotone_ramp() {
    let weights = [1, 5, 10, 25, 50, 99, 100];
    let tables: Vec<ReleaseTable> = weights
        .iter()
        .map(|w| {
            let yaml = CONFIG.replace(
                "targets: {v1: 90, v2: 10}",
                &format!("targets: {{v1: {}, v2: {w}}}", 100 - w),
            );
            ReleaseTable::compile(&Valid::load(&yaml).unwrap()).unwrap()
        })
        .collect();
    let users = 10_000;
    let mut prev_on_v2: Option<Vec<bool>> = None;
    for (w, t) in weights.iter().zip(&tables) {
        let on_v2: Vec<bool> = (0..users)
            .map(|u| {
                let req = Req::new("/api/payments").header("X-User-Id", &format!("user-{u}"));
                routed(t, &req).1 == "v2"
            })
            .collect();
        let share = on_v2.iter().filter(|x| **x).count() as f64 / users as f64 * 100.0;
        assert!(
            (share - *w as f64).abs() <= 1.0,
            "weight {w}: share {share}"
        );
        if let Some(prev) = &prev_on_v2 {
            for (u, (was, is)) in prev.iter().zip(&on_v2).enumerate() {
                assert!(
                    !was || *is,
                    "user-{u} moved from v2 back to v1 when v2 went up to {w}%"
                );
            }
        }
        prev_on_v2 = Some(on_v2);
    }
}

#[test]
fn blue_green_serves_the_live_colour() {
    let t = table();
    let (route, target, reason) = routed(&t, &Req::new("/anything"));
    assert_eq!(
        (route.as_str(), target.as_str(), reason),
        ("web", "green", Reason::Live(Colour::Green))
    );
    assert_eq!(
        t.upstream_name(t.route(t.route_id("web").unwrap()).unwrap().baseline()),
        "green"
    );
}

#[test]
fn require_client_refuses_unknown_callers() {
    let t = table();
    let locked = t.route_id("locked").unwrap();
    for req in [
        Req::new("/locked"),
        Req::new("/locked").header("X-Api-Key", "nope"),
    ] {
        assert_eq!(
            decide(&t, &req.view(), &mut || 0),
            Outcome::ClientRequired { route: locked }
        );
    }
    let ok = Req::new("/locked/x").header("x-api-key", "foo");
    let Outcome::Routed(d) = decide(&t, &ok.view(), &mut || 0) else {
        panic!()
    };
    assert_eq!(t.client_name(d.client.unwrap()), "acme");
}

#[test]
fn no_route_when_nothing_matches() {
    let yaml = "upstreams: {v1: {backends: [\"127.0.0.1:1\"]}}\nroutes:\n  - name: a\n    match: {path_prefix: /a}\n    split: {targets: {v1: 1}}\n";
    let t = ReleaseTable::compile(&Valid::load(yaml).unwrap()).unwrap();
    assert_eq!(
        decide(&t, &Req::new("/b").view(), &mut || 0),
        Outcome::NoRoute
    );
}

/// The same split written with its targets in another order (as a tool that sorts keys renders it).
fn canary_table(targets: &str) -> ReleaseTable {
    let yaml = format!(
        "upstreams:\n  stable: {{backends: [\"127.0.0.1:1\"]}}\n  canary: {{backends: [\"127.0.0.1:2\"]}}\n  extra: {{backends: [\"127.0.0.1:3\"]}}\nroutes:\n  - name: r\n    split: {{targets: {targets}, baseline: stable, sticky: [header:X-User-Id]}}\n"
    );
    ReleaseTable::compile(&Valid::load(&yaml).unwrap()).unwrap()
}

#[test]
fn the_declared_baseline_wins_over_the_order_written() {
    let written = canary_table("{stable: 90, canary: 5, extra: 5}");
    let sorted = canary_table("{canary: 5, extra: 5, stable: 90}");
    let shuffled = canary_table("{extra: 5, stable: 90, canary: 5}");
    for t in [&written, &sorted, &shuffled] {
        let route = t.route(t.route_id("r").unwrap()).unwrap();
        assert_eq!(t.upstream_name(route.baseline()), "stable");
    }
    // Every user gets the same version from every rendering of the file.
    for u in 0..20_000 {
        let req = Req::new("/").header("X-User-Id", &format!("user-{u}"));
        let want = routed(&written, &req).1;
        assert_eq!(routed(&sorted, &req).1, want, "user-{u}");
        assert_eq!(routed(&shuffled, &req).1, want, "user-{u}");
    }
    // The baseline's range comes first, then the others by name: bucket 0 is stable's, the last
    // bucket belongs to "extra" (after "canary").
    let s = match &written.route(0).unwrap().strategy {
        table::Strategy::Split(s) => s.clone(),
        _ => unreachable!(),
    };
    let names: Vec<&str> = s.targets().map(|t| written.upstream_name(t)).collect();
    assert_eq!(names, ["stable", "canary", "extra"]);
    assert_eq!(written.upstream_name(s.target(0)), "stable");
    assert_eq!(written.upstream_name(s.target(split::BUCKETS - 1)), "extra");
}

#[test]
fn a_split_of_two_or_more_targets_must_declare_its_baseline() {
    let yaml = "upstreams:\n  a: {backends: [\"127.0.0.1:1\"]}\n  b: {backends: [\"127.0.0.1:2\"]}\nroutes:\n  - name: r\n    split: {targets: {a: 1, b: 1}}\n  - name: s\n    match: {path_prefix: /s}\n    split: {targets: {a: 1, b: 1}, baseline: c}\n  - name: one\n    match: {path_prefix: /one}\n    split: {targets: {b: 1}}\n";
    let errors: Vec<String> = Config::load_str(yaml)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("routes[0].split.baseline: missing")
            && errors[0].contains("one of a, b"),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        "routes[1].split.baseline: \"c\" is not one of the split's targets (a, b)"
    );
}
