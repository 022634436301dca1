#![allow(clippy::unwrap_used)]

use super::*;

fn fleet(extra: &str) -> Fleet {
    let c = Config::load_str(&format!(
        "admin: {{listen: \"0.0.0.0:9901\"}}\nstore:\n  etcd: {{endpoints: [\"http://127.0.0.1:2379\"], prefix: /sy/prod{extra}}}\nupstreams:\n  v1: {{backends: [\"127.0.0.1:9001\"]}}\nroutes:\n  - name: r\n    split: {{targets: {{v1: 1}}}}\n"
    ))
    .unwrap();
    Fleet::from_config(&c).unwrap()
}

#[test]
fn an_instance_is_named_by_host_pid_and_a_random_suffix_and_advertises_its_admin() {
    let f = fleet("");
    let host = hostname();
    let id = f.id().to_string();
    let suffix = id.rsplit('-').next().unwrap();
    assert!(
        id.starts_with(&format!("{host}-{}-", std::process::id())),
        "{id}"
    );
    assert_eq!(suffix.len(), 4);
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    // An unspecified listen address is advertised with the host's name.
    assert_eq!(f.admin.as_deref(), Some(format!("{host}:9901").as_str()));
    let f = fleet(", advertise_admin: \"10.0.0.7:9901\"");
    assert_eq!(f.admin.as_deref(), Some("10.0.0.7:9901"));
    assert_eq!(f.prefix(), "/sy/prod");
    assert_eq!(f.key("revision"), "/sy/prod/revision");
    assert_eq!(
        f.numbered("revisions", 7),
        "/sy/prod/revisions/00000000000000000007"
    );
}

#[test]
fn a_read_older_than_what_was_applied_is_stale() {
    let f = fleet("");
    assert!(!f.is_stale(0));
    f.note_applied(42);
    assert!(f.is_stale(41) && !f.is_stale(42) && !f.is_stale(43));
    // Never back: an older read noted later does not lower the mark.
    f.note_applied(10);
    assert!(f.is_stale(41));
}

#[test]
fn without_etcd_changes_are_refused_naming_the_endpoints() {
    let f = fleet("");
    assert!(!f.connected());
    let why = f.unavailable();
    assert!(why.contains("http://127.0.0.1:2379"), "{why}");
    assert!(f.status().leads.is_empty());
}

#[test]
fn leader_values_read_the_id_and_the_admin_address() {
    assert_eq!(
        leader_value(br#"{"id":"a-1-beef","admin":"h:9901"}"#),
        Some(("a-1-beef".into(), Some("h:9901".into())))
    );
    assert_eq!(
        leader_value(br#"{"id":"a-1-beef"}"#),
        Some(("a-1-beef".into(), None))
    );
    assert_eq!(leader_value(b"not json"), None);
    assert_eq!(leader_value(br#"{"admin":"h:9901"}"#), None);
}

#[test]
fn published_counts_read_back_as_they_were() {
    let mut s = Stats {
        status: [1, 90, 3, 4, 2],
        upstream_errors: 5,
        fallbacks: 6,
        mirror_sent: 7,
        mirror_compared: 6,
        mirror_diffs: 1,
        ..Stats::default()
    };
    s.latency.buckets[3] = 11;
    s.latency.sum_us = 12_345;
    let wire = WireStats::from(&s);
    let text = serde_json::to_string(&wire).unwrap();
    let back = Stats::from(&serde_json::from_str::<WireStats>(&text).unwrap());
    assert_eq!(back.status, s.status);
    assert_eq!(
        (
            back.upstream_errors,
            back.fallbacks,
            back.mirror_sent,
            back.mirror_diffs
        ),
        (5, 6, 7, 1)
    );
    assert_eq!(back.latency.buckets, s.latency.buckets);
    assert_eq!(back.latency.sum_us, 12_345);
}
