use super::*;

fn state(name: &str) -> (State, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("switchyard-adopt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "server: {{state_dir: {}, access_log: off}}\nupstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n    rollout: {{canary: v2, steps: [10, 50, 100], hold: 1h, interval: 1h}}\n",
        dir.display()
    );
    let config = crate::config::Valid::load(&text).expect("valid");
    (State::open(config, &text).expect("opens"), dir)
}

fn share(state: &State) -> f64 {
    state.load().config.routes[0]
        .split
        .as_ref()
        .map_or(0.0, |s| s.share("v2"))
}

/// A leader that committed a step and died before saving its record: the next leader, reading
/// the older record, adopts the step instead of taking it again.
#[test]
fn a_new_leader_adopts_a_step_its_predecessor_committed_but_did_not_record() {
    let (state, dir) = state("step");
    let leader = Rollouts::default();
    leader.tick(&state);
    let saved = {
        let inner = leader.inner.lock().expect("lock");
        inner.runs["api"].record.clone()
    };
    assert_eq!((saved.step, saved.phase), (0, Phase::Running));
    assert!(saved.revision > 0);
    assert_eq!(share(&state), 10.0);
    // The old leader's next step, committed; its record is never saved.
    {
        let mut inner = leader.inner.lock().expect("lock");
        let live = state.load();
        let ro = find(&live, "api")
            .and_then(|r| r.rollout.clone())
            .expect("rollout");
        let run = inner.runs.get_mut("api").expect("run");
        leader
            .advance(
                &state,
                &ro,
                run,
                "rollout",
                "rollout.step",
                "held".into(),
                Instant::now(),
            )
            .expect("step");
    }
    assert_eq!(share(&state), 50.0);

    let next = Rollouts::default();
    let live = state.load();
    let r = find(&live, "api").expect("route").clone();
    let ro = r.rollout.clone().expect("rollout");
    let mut run = Run::resumed(saved.clone(), Instant::now());
    next.adopt(&state, &r, &ro, &mut run);
    assert_eq!(
        run.record.step, 1,
        "the committed step is adopted, not repeated"
    );
    assert_eq!(run.record.phase, Phase::Running);
    assert_eq!(run.record.expected, route_digest(&r));
    assert_eq!(run.record.revision, live.revision);
    assert_eq!(
        run.record.history.back().map(|e| e.event.as_str()),
        Some("adopt")
    );

    // A person's change after the record is not adopted: the rollout notices it and pauses.
    let change = Change {
        actor: "ops",
        action: "route.patch",
        route: Some("api"),
        reason: None,
    };
    state
        .change(change, |s| {
            let mut c = s.config.clone();
            if let Some(split) = c.routes[0].split.as_mut() {
                split.targets.insert("v2".to_string(), 30.0);
            }
            Ok(c)
        })
        .expect("patch");
    let live = state.load();
    let r = find(&live, "api").expect("route").clone();
    let mut run = Run::resumed(saved, Instant::now());
    next.adopt(&state, &r, &ro, &mut run);
    assert_eq!(run.record.step, 0);
    assert_ne!(run.record.expected, route_digest(&r));
    let _ = std::fs::remove_dir_all(dir);
}

/// The record is saved every second: only the newest events keep a check's full figures.
#[test]
fn only_the_newest_events_keep_a_checks_figures() {
    let (state, dir) = state("figures");
    let live = state.load();
    let r = find(&live, "api").expect("route").clone();
    let ro = r.rollout.clone().expect("rollout");
    let rollouts = Rollouts::default();
    let mut run = Run::new(&r, &ro, Instant::now());
    for n in 0..30 {
        let check = super::super::judge::Check::plain(
            super::super::judge::Outcome::Inconclusive,
            None,
            format!("check {n}"),
        );
        let e = Event {
            at: String::new(),
            step: 1,
            event: "check".into(),
            verdict: None,
            gate: None,
            reason: format!("check {n}"),
            actor: "rollout".into(),
            check: Some(check),
        };
        rollouts.record_event(&ro, &mut run, e);
    }
    let kept: Vec<bool> = run
        .record
        .history
        .iter()
        .map(|e| e.check.is_some())
        .collect();
    assert_eq!(kept.len(), 30);
    assert!(kept[..10].iter().all(|k| !k), "{kept:?}");
    assert!(kept[10..].iter().all(|k| *k), "{kept:?}");
    let _ = std::fs::remove_dir_all(dir);
}
