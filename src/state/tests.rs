//! The single writer: revisions, audit lines, persistence and the start-up rule.

use super::*;
use crate::config::Config;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn file_text(state_dir: &Path, canary: u32) -> String {
    format!(
        "server: {{state_dir: {}, access_log: off}}\nupstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: {}, v2: {canary}}}, baseline: v1}}\n",
        state_dir.display(),
        100 - canary
    )
}

fn open(state_dir: &Path, canary: u32) -> State {
    let text = file_text(state_dir, canary);
    State::open(Valid::load(&text).unwrap(), &text).unwrap()
}

fn canary_weight(state: &State) -> f64 {
    *state.load().config.routes[0]
        .split
        .as_ref()
        .unwrap()
        .targets
        .get("v2")
        .unwrap()
}

fn set_canary(state: &State, actor: &str, w: f64) -> Result<Arc<Snapshot>, ChangeError> {
    let change = Change {
        actor,
        action: "route.patch",
        route: Some("api"),
        reason: None,
    };
    state.change(change, |live| {
        let mut c = live.config.clone();
        let split = c.routes[0]
            .split
            .as_mut()
            .ok_or_else(|| ChangeError::Refused("no split".into()))?;
        split.targets.insert("v1", 100.0 - w);
        split.targets.insert("v2", w);
        Ok(c)
    })
}

#[test]
fn changes_make_monotone_revisions_with_one_audit_line_each() {
    let d = dir("monotone");
    let state = open(&d, 1);
    assert_eq!(state.load().revision, 1);
    for (i, w) in [5.0, 10.0, 0.0].iter().enumerate() {
        let snap = set_canary(&state, "ops", *w).unwrap();
        assert_eq!(snap.revision, 2 + i as u64);
    }
    let audit = state.audit();
    assert_eq!(audit.len(), 4);
    assert_eq!(
        (audit[0].actor.as_str(), audit[0].action.as_str()),
        ("file", "config.reload")
    );
    assert_eq!(
        audit.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let e = &audit[2];
    assert_eq!(
        (e.actor.as_str(), e.action.as_str(), e.route.as_deref()),
        ("ops", "route.patch", Some("api"))
    );
    let v2 = |side: &Option<store::AuditSide>| match side {
        Some(store::AuditSide::Route(r)) => r.split.as_ref().unwrap().targets.get("v2").copied(),
        other => panic!("not a route: {other:?}"),
    };
    assert_eq!((v2(&e.before), v2(&e.after)), (Some(5.0), Some(10.0)));
    assert!(e.at.ends_with('Z') && e.at.len() == 24, "{}", e.at);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn concurrent_changes_are_all_applied_once_in_order() {
    let d = dir("concurrent");
    let state = Arc::new(open(&d, 0));
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let state = state.clone();
            std::thread::spawn(move || {
                set_canary(&state, &format!("t{i}"), f64::from(i))
                    .unwrap()
                    .revision
            })
        })
        .collect();
    let mut revisions: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (2..42).collect::<Vec<_>>());
    let audit = state.audit();
    assert_eq!(audit.len(), 41);
    assert!(audit.windows(2).all(|w| w[0].revision + 1 == w[1].revision));
    let mut actors: Vec<_> = audit[1..].iter().map(|e| e.actor.clone()).collect();
    actors.sort();
    actors.dedup();
    assert_eq!(actors.len(), 40);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_invalid_change_changes_nothing() {
    let d = dir("invalid");
    let state = open(&d, 1);
    let before = std::fs::read_to_string(d.join("effective.yaml")).unwrap();
    let change = Change {
        actor: "ops",
        action: "route.patch",
        route: Some("api"),
        reason: None,
    };
    let err = state
        .change(change, |live| {
            let mut c = live.config.clone();
            c.routes[0]
                .split
                .as_mut()
                .unwrap()
                .targets
                .insert("v9", 5.0);
            Ok(c)
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("routes[0].split.targets.v9: no such upstream"),
        "{err}"
    );
    assert!(set_canary(&state, "ops", -1.0).is_err());
    assert_eq!(state.load().revision, 1);
    assert_eq!(canary_weight(&state), 1.0);
    assert_eq!(state.audit().len(), 1);
    assert_eq!(
        std::fs::read_to_string(d.join("effective.yaml")).unwrap(),
        before
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_restart_resumes_api_changes_when_the_file_is_unchanged() {
    let d = dir("restart");
    let state = open(&d, 1);
    set_canary(&state, "ops", 25.0).unwrap();
    drop(state);
    let again = open(&d, 1);
    assert_eq!((again.load().revision, canary_weight(&again)), (2, 25.0));
    assert_eq!(again.audit().len(), 2, "resuming is not a change");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_edited_file_is_merged_at_start_and_wins_where_it_changed_the_same_setting() {
    let d = dir("edited");
    let state = open(&d, 1);
    set_canary(&state, "ops", 25.0).unwrap();
    drop(state);
    let again = open(&d, 50);
    assert_eq!((again.load().revision, canary_weight(&again)), (3, 50.0));
    let last = again.audit().pop().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str(), last.revision),
        ("file", "config.reload", 3)
    );
    assert_eq!(
        last.reason.as_deref(),
        Some("config file changed while stopped: nothing to take; the file's values replace live ones at routes[api].split.targets (file {\"v1\":50.0,\"v2\":50.0}, was {\"v1\":75.0,\"v2\":25.0})")
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_unrelated_edit_while_stopped_keeps_what_changed_live() {
    let d = dir("unrelated");
    let state = open(&d, 0);
    set_canary(&state, "rollout", 100.0).unwrap();
    drop(state);
    let text = file_text(&d, 0)
        + "  - name: web\n    match: {path_prefix: /web}\n    split: {targets: {v1: 100}}\n";
    let again = State::open(Valid::load(&text).unwrap(), &text).unwrap();
    assert_eq!(canary_weight(&again), 100.0, "the release stays");
    assert_eq!(
        again.load().config.routes.len(),
        2,
        "the new route is taken"
    );
    let last = again.audit().pop().unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some("config file changed while stopped: routes (their list and order), routes[web]")
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn open_successor(state_dir: &Path, canary: u32) -> State {
    let text = file_text(state_dir, canary);
    State::open_successor(Valid::load(&text).unwrap(), &text).unwrap()
}

/// A process started to take the sockets over (`run -u`) reads `state_dir` while the running one may
/// be in the middle of a commit: it must leave that commit alone (a repair there would cut the audit
/// line of a change the running process then acknowledges), and serve it once it takes over.
#[test]
fn a_successor_leaves_a_commit_in_progress_alone_and_serves_it_after_taking_over() {
    let d = dir("successor");
    let old = open(&d, 1);
    set_canary(&old, "ops", 5.0).unwrap();
    // The running process is committing revision 3: its revision file and audit line are written,
    // state.json does not name it yet.
    let store = Store::open(&d).unwrap();
    let mut config = old.load().config.clone();
    config.routes[0]
        .split
        .as_mut()
        .unwrap()
        .targets
        .insert("v2", 7.0);
    store::write_atomic(&store.revision_path(3), config.to_yaml().as_bytes()).unwrap();
    let mut line = old.audit().pop().unwrap();
    line.revision = 3;
    store.append_audit(&line).unwrap();

    let new = open_successor(&d, 1);
    assert_eq!((new.load().revision, canary_weight(&new)), (2, 5.0));
    assert_eq!(
        store.audit().unwrap().len(),
        3,
        "the commit in progress was cut"
    );
    assert!(store.revision_path(3).exists());

    // The commit completes, then the running process hands over.
    let text = file_text(&d, 1);
    let persisted = Persisted {
        revision: 3,
        file_sha256: sha256_hex(text.as_bytes()),
    };
    store::write_atomic(
        &d.join("state.json"),
        &serde_json::to_vec(&persisted).unwrap(),
    )
    .unwrap();
    old.hand_over();
    assert!(matches!(
        set_canary(&old, "ops", 9.0),
        Err(ChangeError::HandingOver)
    ));
    new.take_over();
    assert_eq!((new.load().revision, canary_weight(&new)), (3, 7.0));
    set_canary(&new, "ops", 11.0).unwrap();
    let revisions: Vec<u64> = new.audit().iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A successor whose config file changed writes nothing until it takes over; then the file becomes
/// the revision after the last one the previous process committed.
#[test]
fn a_successor_with_an_edited_file_makes_it_a_revision_only_on_taking_over() {
    let d = dir("successor-edited");
    let old = open(&d, 1);
    set_canary(&old, "ops", 5.0).unwrap();
    let new = open_successor(&d, 50);
    assert_eq!(canary_weight(&new), 50.0);
    assert_eq!(
        old.audit().len(),
        2,
        "the successor wrote before taking over"
    );
    set_canary(&old, "ops", 10.0).unwrap();
    old.hand_over();
    new.take_over();
    assert_eq!((new.load().revision, canary_weight(&new)), (4, 50.0));
    let audit = new.audit();
    let revisions: Vec<u64> = audit.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4]);
    let last = audit.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("file", "config.reload")
    );
    // A restart with the same file resumes revision 4: it is the file last applied.
    drop(new);
    let again = open(&d, 50);
    assert_eq!((again.load().revision, canary_weight(&again)), (4, 50.0));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A fleet's instance whose etcd is unreachable (nothing listens on port 1), fed catch-up reads by
/// hand: what it applies, and what it refuses to go back to.
fn fleet_member(state_dir: &Path) -> State {
    let text = format!(
        "{}store:\n  etcd: {{endpoints: [\"http://127.0.0.1:1\"], prefix: /test, timeout: 200ms}}\n",
        file_text(state_dir, 0)
    );
    let config = Valid::load(&text).unwrap();
    let fleet = std::sync::Arc::new(crate::fleet::Fleet::from_config(&config).unwrap());
    State::open_shared(config, &text, false, fleet).unwrap()
}

fn fleet_revision(n: u64, canary: u32) -> crate::fleet::Entry {
    let config = Config::load_str(&file_text(Path::new("/unused"), canary)).unwrap();
    crate::fleet::Entry {
        revision: n,
        shared: Some(crate::fleet::shared_yaml(&config)),
        audit: Some(store::AuditEntry {
            revision: n,
            at: crate::time::now_rfc3339(),
            actor: "ops".into(),
            action: "route.patch".into(),
            route: Some("api".into()),
            before: None,
            after: None,
            reason: None,
        }),
    }
}

fn catch_up(etcd_revision: i64, entries: Vec<crate::fleet::Entry>) -> crate::fleet::CatchUp {
    crate::fleet::CatchUp {
        head: entries.last().map(|e| e.revision),
        entries,
        etcd_revision,
        rollouts: Vec::new(),
    }
}

#[test]
fn a_fleet_member_applies_what_it_missed_and_never_goes_back_to_an_older_read() {
    let d = dir("fleet-stale");
    let state = fleet_member(&d);
    // etcd unreachable at start, nothing copied yet: the file, as revision 0, and changes refused.
    assert_eq!(state.load().revision, 0);
    assert!(matches!(
        set_canary(&state, "ops", 5.0),
        Err(ChangeError::Unavailable(_))
    ));
    state
        .apply_fleet(catch_up(
            10,
            vec![fleet_revision(1, 0), fleet_revision(2, 5)],
        ))
        .unwrap();
    assert_eq!((state.load().revision, canary_weight(&state)), (2, 5.0));
    // A read made before revision 2 (etcd revision 7), applied late: it is stale, not a reset.
    state
        .apply_fleet(catch_up(7, vec![fleet_revision(1, 0)]))
        .unwrap();
    assert_eq!((state.load().revision, canary_weight(&state)), (2, 5.0));
    assert_eq!(state.audit().len(), 2, "the copy in state_dir is kept");
    state
        .apply_fleet(catch_up(12, vec![fleet_revision(3, 20)]))
        .unwrap();
    assert_eq!((state.load().revision, canary_weight(&state)), (3, 20.0));
    let revisions: Vec<u64> = state.audit().iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3]);
    // Started again with etcd still away: the revision copied last.
    drop(state);
    let again = fleet_member(&d);
    assert_eq!((again.load().revision, canary_weight(&again)), (3, 20.0));
    std::fs::remove_dir_all(&d).unwrap();
}
