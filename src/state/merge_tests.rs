use super::*;

fn config(v2_weight: u32, prefix: &str, extra_route: bool) -> Config {
    let extra = if extra_route {
        "  - name: web\n    match: {path_prefix: /web}\n    split: {targets: {v1: 100}}\n"
    } else {
        ""
    };
    let text = format!(
        "upstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: {prefix}}}\n    split: {{targets: {{v1: {}, v2: {v2_weight}}}, baseline: v1}}\n{extra}",
        100 - v2_weight
    );
    Config::load_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn share(c: &Config) -> f64 {
    c.routes[0].split.as_ref().map_or(0.0, |s| s.share("v2"))
}

#[test]
fn an_unrelated_edit_keeps_what_changed_live() {
    // Base: v2 at 0%. Live: a rollout took v2 to 100%. File: only the path prefix changed.
    let (base, live, file) = (
        config(0, "/api", false),
        config(100, "/api", false),
        config(0, "/api2", false),
    );
    let m = three_way(&base, &file, &live, false).unwrap();
    assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
    assert_eq!(share(&m.config), 100.0, "the release stays");
    assert_eq!(
        m.config.routes[0].matcher.path_prefix.as_deref(),
        Some("/api2"),
        "the edit is taken"
    );
    assert_eq!(m.taken, vec!["routes[api].match".to_string()]);
}

#[test]
fn a_setting_changed_both_ways_is_a_conflict_unless_forced() {
    let (base, live, file) = (
        config(0, "/api", false),
        config(100, "/api", false),
        config(20, "/api", false),
    );
    let m = three_way(&base, &file, &live, false).unwrap();
    assert_eq!(m.conflicts.len(), 1);
    let c = &m.conflicts[0];
    assert_eq!(c.place(), "routes[api].split.targets");
    assert_eq!(c.file, r#"{"v1":80.0,"v2":20.0}"#);
    assert_eq!(c.live, r#"{"v1":0.0,"v2":100.0}"#);
    let m = three_way(&base, &file, &live, true).unwrap();
    assert_eq!(m.conflicts.len(), 1, "a forced merge names what it undid");
    assert_eq!(share(&m.config), 20.0);
}

#[test]
fn the_live_config_written_to_the_file_changes_nothing() {
    let (base, live) = (config(0, "/api", false), config(100, "/api3", true));
    let m = three_way(&base, &live, &live, false).unwrap();
    assert!(m.conflicts.is_empty());
    assert_eq!(m.config, live);
}

#[test]
fn routes_added_and_removed_by_the_file() {
    let (base, live) = (config(0, "/api", false), config(10, "/api", false));
    let m = three_way(&base, &config(0, "/api", true), &live, false).unwrap();
    assert!(m.conflicts.is_empty());
    assert_eq!(m.config.routes.len(), 2);
    assert_eq!(share(&m.config), 10.0);
    // The file removes `web`, which nobody changed live: it goes.
    let with_web = config(0, "/api", true);
    let m = three_way(
        &with_web,
        &config(0, "/api", false),
        &config(10, "/api", true),
        false,
    )
    .unwrap();
    assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
    assert_eq!(m.config.routes.len(), 1);
    // The file removes `api`, which changed live: a conflict.
    let text_without_api = "upstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\n  v2: {backends: [\"127.0.0.1:2\"]}\nroutes:\n  - name: web\n    match: {path_prefix: /web}\n    split: {targets: {v1: 100}}\n";
    let without_api = Config::load_str(text_without_api).unwrap();
    let m = three_way(&with_web, &without_api, &config(10, "/api", true), false).unwrap();
    assert_eq!(m.conflicts.len(), 1, "{:?}", m.conflicts);
    assert_eq!(m.conflicts[0].place(), "routes[api]");
}
