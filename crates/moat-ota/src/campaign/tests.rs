use super::*;
use proptest::prelude::*;

const H: u64 = 3_600_000;
/// 2026-11-23 00:00 UTC, a Monday.
const MONDAY: u64 = 1_795_392_000_000;

fn ids(n: usize) -> Vec<DeviceId> {
    (0..n)
        .map(|i| DeviceId::parse(&format!("dev-{i:04}")).expect("id"))
        .collect()
}

fn spec() -> CampaignSpec {
    CampaignSpec {
        name: "fw-2".into(),
        group: "sensors".into(),
        target: "fw-2.0.0".into(),
        rollback_target: Some("fw-1.0.0-rb".into()),
        waves: vec![10, 50, 100],
        windows: Vec::new(),
        consent: Consent::NotRequired,
        device_timeout_secs: 600,
        gates: Gates::default(),
    }
}

fn report(c: &Campaign, target: &str, state: ReportState) -> DeviceReport {
    DeviceReport {
        campaign: Some(c.id()),
        target: target.into(),
        state,
        progress: 100,
        error: (state == ReportState::Failed).then(|| "disk full".into()),
    }
}

fn assigned(actions: &[Action]) -> Vec<DeviceId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Assign { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect()
}

fn none() -> BTreeMap<DeviceId, Signals> {
    BTreeMap::new()
}

#[test]
fn monday_is_a_monday() {
    assert_eq!(Weekday::of_epoch_day(MONDAY / DAY_MS), Weekday::Mon);
    assert_eq!(Weekday::of_epoch_day(0), Weekday::Thu);
}

#[test]
fn waves_are_sized_by_cumulative_percentages_and_deterministic() {
    let c = Campaign::new(7, spec(), ids(100), 0).expect("campaign");
    let sizes: Vec<u32> = c.wave_counts().iter().map(|w| w.total).collect();
    assert_eq!(sizes, vec![10, 40, 50]);
    let mut reversed = ids(100);
    reversed.reverse();
    let again = Campaign::new(7, spec(), reversed, 0).expect("campaign");
    assert_eq!(c.devices(), again.devices());
    // Another campaign orders the fleet differently (canaries differ between campaigns).
    let other = Campaign::new(8, spec(), ids(100), 0).expect("campaign");
    assert_ne!(c.devices()[..10], other.devices()[..10]);
    // Small groups: the canary has at least one device.
    let small = Campaign::new(1, spec(), ids(3), 0).expect("campaign");
    let sizes: Vec<u32> = small.wave_counts().iter().map(|w| w.total).collect();
    assert_eq!(sizes, vec![1, 1, 1]);
}

#[test]
fn a_good_campaign_runs_wave_by_wave_and_completes() {
    let mut c = Campaign::new(1, spec(), ids(20), 0).expect("campaign");
    let a = c.start(1000).expect("start");
    let first = assigned(&a);
    assert_eq!(first.len(), 2, "the canary: 10% of 20");
    assert!(matches!(
        a[0],
        Action::Transition {
            to: Status::Running,
            ..
        }
    ));
    // Nothing more while the canary is out.
    assert!(assigned(&c.tick(2000, &none())).is_empty());
    for d in &first {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Downloading), 2500);
        assert_eq!(c.device(d).map(|e| e.stage), Some(Stage::Updating));
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 3000);
    }
    let a = c.tick(4000, &none());
    assert!(a.contains(&Action::WaveStarted {
        wave: 1,
        devices: 8
    }));
    let second = assigned(&a);
    assert_eq!(second.len(), 8);
    for d in &second {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 5000);
    }
    let third = assigned(&c.tick(6000, &none()));
    assert_eq!(third.len(), 10);
    for d in &third {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 7000);
    }
    c.tick(8000, &none());
    assert_eq!(c.status(), Status::Completed);
    assert_eq!(c.meta().finished_at_ms, Some(8000));
    let counts = c.wave_counts();
    assert!(counts.iter().all(|w| w.installed == w.total));
    assert_eq!(c.take_changed().len(), 20);
    assert!(c.take_changed().is_empty());
}

#[test]
fn reports_for_other_campaigns_targets_or_devices_change_nothing() {
    let mut c = Campaign::new(1, spec(), ids(10), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    let d = &first[0];
    let mut r = report(&c, "fw-2.0.0", ReportState::Installed);
    r.campaign = Some(99);
    c.report(d, &r, 1);
    r.campaign = None;
    c.report(d, &r, 1);
    c.report(d, &report(&c, "fw-9.9.9", ReportState::Installed), 1);
    c.report(
        &DeviceId::parse("stranger").expect("id"),
        &report(&c, "fw-2.0.0", ReportState::Installed),
        1,
    );
    assert_eq!(c.device(d).map(|e| e.stage), Some(Stage::Assigned));
    // A pending device's report (stale, from before) is ignored too.
    let pending = c
        .devices()
        .iter()
        .find(|e| e.stage == Stage::Pending)
        .map(|e| e.device.clone())
        .expect("pending");
    c.report(&pending, &report(&c, "fw-2.0.0", ReportState::Installed), 1);
    assert_eq!(c.device(&pending).map(|e| e.stage), Some(Stage::Pending));
}

#[test]
fn failures_trip_the_gate_which_never_advances_until_resumed() {
    let mut s = spec();
    s.gates.max_failure_percent = 10;
    let mut c = Campaign::new(1, s, ids(20), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    c.report(&first[0], &report(&c, "fw-2.0.0", ReportState::Failed), 10);
    // One of two failed: 50% > 10%, certain before the wave ends.
    let a = c.tick(20, &none());
    let trip = a
        .iter()
        .find_map(|a| match a {
            Action::GateTripped(t) => Some(t.clone()),
            _ => None,
        })
        .expect("tripped");
    assert_eq!(trip.gate, GateKind::InstallFailures);
    assert!(
        trip.explanation.contains("1 of 2 devices failed"),
        "{}",
        trip.explanation
    );
    assert_eq!(c.status(), Status::Paused);
    assert!(
        c.meta()
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("install_failures"))
    );
    c.report(
        &first[1],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        30,
    );
    for t in 40..50 {
        assert!(c.tick(t, &none()).is_empty());
    }
    assert_eq!(c.meta().current_wave, 0);
    // Resuming acknowledges the wave's failures: the next wave starts.
    let a = c.resume(60, &none()).expect("resume");
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::WaveStarted { wave: 1, .. }))
    );
    assert_eq!(assigned(&a).len(), 8);
    assert!(c.pause(61, "operator").is_ok());
    assert!(c.pause(62, "again").is_err());
}

#[test]
fn a_gate_configured_to_abort_releases_assigned_devices() {
    let mut s = spec();
    s.gates.on_failure = GateAction::Abort;
    s.waves = vec![50, 100];
    let mut c = Campaign::new(1, s, ids(10), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    assert_eq!(first.len(), 5);
    c.report(&first[0], &report(&c, "fw-2.0.0", ReportState::Refused), 1);
    c.report(
        &first[1],
        &report(&c, "fw-2.0.0", ReportState::Installing),
        1,
    );
    let a = c.tick(2, &none());
    assert_eq!(c.status(), Status::Aborted);
    let unassigned = a
        .iter()
        .filter(|a| matches!(a, Action::Unassign { .. }))
        .count();
    assert_eq!(
        unassigned, 4,
        "three assigned and one updating device released"
    );
    let w = c.wave_counts()[0];
    assert_eq!((w.failed, w.updating, w.cancelled), (1, 1, 3));
    assert!(c.resume(3, &none()).is_err());
    assert!(c.tick(4, &none()).is_empty());
}

#[test]
fn devices_are_assigned_only_inside_maintenance_windows() {
    let mut s = spec();
    s.waves = vec![100];
    // Monday and Tuesday nights, 22:00 to 02:00.
    s.windows = vec![Window {
        days: vec![Weekday::Mon, Weekday::Tue],
        start: TimeOfDay::parse("22:00").expect("t"),
        end: TimeOfDay::parse("02:00").expect("t"),
    }];
    let mut c = Campaign::new(1, s, ids(4), 0).expect("campaign");
    assert!(assigned(&c.start(MONDAY + 12 * H).expect("start")).is_empty());
    assert!(assigned(&c.tick(MONDAY + 21 * H, &none())).is_empty());
    assert_eq!(assigned(&c.tick(MONDAY + 22 * H, &none())).len(), 4);
    // The morning part belongs to the previous day's window.
    let spec = c.spec().clone();
    assert!(spec.in_window(MONDAY + 25 * H)); // Tuesday 01:00
    assert!(!spec.in_window(MONDAY + 26 * H)); // Tuesday 02:00
    assert!(spec.in_window(MONDAY + 2 * 24 * H + H)); // Wednesday 01:00: Tuesday night
    assert!(!spec.in_window(MONDAY + 3 * 24 * H + H)); // Thursday 01:00: Wednesday night is not in
    assert!(!spec.in_window(MONDAY + 2 * 24 * H + 23 * H)); // Wednesday 23:00
    assert!(!spec.in_window(MONDAY + H)); // Monday 01:00: Sunday night is not in
}

#[test]
fn consent_declined_is_not_a_failure() {
    let mut s = spec();
    s.consent = Consent::Required;
    s.waves = vec![100];
    s.gates.max_failure_percent = 0;
    let mut c = Campaign::new(1, s, ids(3), 0).expect("campaign");
    let a = c.start(0).expect("start");
    assert!(
        a.iter()
            .all(|a| !matches!(a, Action::Assign { consent: false, .. }))
    );
    let devices = assigned(&a);
    let declined = c.report(
        &devices[0],
        &report(&c, "fw-2.0.0", ReportState::ConsentDeclined),
        1,
    );
    assert_eq!(
        declined,
        vec![Action::Unassign {
            device: devices[0].clone()
        }]
    );
    for d in &devices[1..] {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 2);
    }
    c.tick(3, &none());
    assert_eq!(c.status(), Status::Completed);
    assert_eq!(c.wave_counts()[0].declined, 1);
}

#[test]
fn silent_devices_time_out_and_count_as_failures() {
    let mut s = spec();
    s.waves = vec![100];
    s.gates.max_failure_percent = 50;
    let mut c = Campaign::new(1, s, ids(4), 0).expect("campaign");
    let devices = assigned(&c.start(0).expect("start"));
    c.report(
        &devices[0],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        1,
    );
    c.report(
        &devices[1],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        1,
    );
    assert!(c.tick(599_999, &none()).is_empty());
    let a = c.tick(600_000, &none());
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::DeviceTimedOut { .. }))
            .count(),
        2
    );
    // Two of four: 50% is not above 50%.
    assert_eq!(c.status(), Status::Completed);
    // A late report still counts.
    c.report(
        &devices[2],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        700_000,
    );
    assert_eq!(c.wave_counts()[0].installed, 3);
    // Installed, then back on the old image by itself: a failure after all; a stale
    // progress report changes nothing.
    c.report(
        &devices[0],
        &report(&c, "fw-2.0.0", ReportState::Downloading),
        700_001,
    );
    assert_eq!(
        c.device(&devices[0]).map(|e| e.stage),
        Some(Stage::Installed)
    );
    c.report(
        &devices[0],
        &report(&c, "fw-2.0.0", ReportState::RolledBack),
        700_002,
    );
    assert_eq!(c.device(&devices[0]).map(|e| e.stage), Some(Stage::Failed));
}

#[test]
fn a_security_regression_trips_with_an_explanation_and_a_minimum_sample() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.gates.security = Some(SecurityGate {
        min_sample: 3,
        max_excess_percent: 20,
        action: GateAction::Pause,
    });
    let mut c = Campaign::new(1, s, ids(8), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    assert_eq!(first.len(), 4);
    for d in &first[..2] {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 1);
    }
    let mut signals = BTreeMap::new();
    for d in &first[..2] {
        signals.insert(
            d.clone(),
            Signals {
                alerts: 1,
                authorization_failures: 2,
                new_topics: 0,
            },
        );
    }
    // Two updated devices: below the minimum sample of three.
    c.tick(2, &signals);
    assert_eq!(c.status(), Status::Running);
    let requests = c.signal_requests();
    assert_eq!(requests.len(), 6, "two updated and four not yet assigned");
    assert!(requests.contains(&(first[0].clone(), 1)));
    c.report(
        &first[2],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        3,
    );
    let a = c.tick(4, &signals);
    let trip = a
        .iter()
        .find_map(|a| match a {
            Action::GateTripped(t) => Some(t.clone()),
            _ => None,
        })
        .expect("tripped");
    assert_eq!(trip.gate, GateKind::SecurityRegression);
    assert!(
        trip.explanation
            .starts_with("2 of 3 updated devices (66%) showed new security signals since updating (2 alerts, 4 authorization failures, 0 new topics) against 0 of 4 devices not yet updated (0%)"),
        "{}",
        trip.explanation
    );
    assert_eq!(c.status(), Status::Paused);
    // An operator's pause and resume in between acknowledges nothing.
    assert!(c.meta().paused_by_gate);
    c.resume(5, &signals).expect("resume");
    assert!(!c.meta().paused_by_gate);
    c.pause(5, "look").expect("pause");
    c.resume(5, &signals).expect("resume");
    assert_eq!(c.meta().acknowledged.security_affected, Some(2));
    // Acknowledged on resume; trips again only when more updated devices show signals.
    c.report(
        &first[3],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        6,
    );
    assert!(
        c.tick(7, &signals)
            .iter()
            .all(|a| !matches!(a, Action::GateTripped(_)))
    );
    signals.insert(
        first[3].clone(),
        Signals {
            new_topics: 1,
            ..Signals::default()
        },
    );
    assert!(
        c.tick(8, &signals)
            .iter()
            .any(|a| matches!(a, Action::GateTripped(_)))
    );
}

#[test]
fn the_control_group_cancels_fleet_wide_noise() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.gates.security = Some(SecurityGate {
        min_sample: 2,
        max_excess_percent: 20,
        action: GateAction::Abort,
    });
    let mut c = Campaign::new(1, s, ids(8), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    let mut signals = BTreeMap::new();
    // Every device, updated or not, raises the same kind of alert: not a regression.
    for d in c.devices() {
        signals.insert(
            d.device.clone(),
            Signals {
                alerts: 1,
                ..Signals::default()
            },
        );
    }
    for d in &first {
        c.report(d, &report(&c, "fw-2.0.0", ReportState::Installed), 1);
    }
    let a = c.tick(2, &signals);
    assert!(a.iter().all(|a| !matches!(a, Action::GateTripped(_))));
    assert_eq!(c.meta().current_wave, 1);
}

#[test]
fn rollback_retargets_updated_devices_to_the_rollback_image() {
    let mut s = spec();
    s.waves = vec![50, 100];
    let mut c = Campaign::new(1, s, ids(4), 0).expect("campaign");
    let first = assigned(&c.start(0).expect("start"));
    c.report(
        &first[0],
        &report(&c, "fw-2.0.0", ReportState::Installed),
        1,
    );
    c.report(&first[1], &report(&c, "fw-2.0.0", ReportState::Failed), 1);
    c.tick(2, &none());
    assert_eq!(c.status(), Status::Paused);
    let a = c.rollback(3).expect("rollback");
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Assign { target, .. } if target == "fw-1.0.0-rb"))
            .count(),
        1,
        "only the installed device; the failed one rolled back by itself"
    );
    assert_eq!(c.status(), Status::RollingBack);
    c.report(
        &first[0],
        &report(&c, "fw-1.0.0-rb", ReportState::Installed),
        4,
    );
    c.tick(5, &none());
    assert_eq!(c.status(), Status::RolledBack);
    assert_eq!(c.wave_counts()[0].rolled_back, 1);
    assert!(c.rollback(6).is_err());
    let mut no_rb = spec();
    no_rb.rollback_target = None;
    let mut c = Campaign::new(2, no_rb, ids(4), 0).expect("campaign");
    c.start(0).expect("start");
    assert_eq!(c.rollback(1), Err(CampaignError::NoRollbackTarget));
}

#[test]
fn invalid_specifications_are_refused_with_the_field_named() {
    let check = |f: &dyn Fn(&mut CampaignSpec), needle: &str| {
        let mut s = spec();
        f(&mut s);
        let e = s.validate().expect_err("invalid").to_string();
        assert!(e.contains(needle), "{e} should mention {needle}");
    };
    check(&|s| s.waves = vec![50, 40, 100], "strictly increasing");
    check(&|s| s.waves = vec![5, 50], "last wave must be 100");
    check(&|s| s.waves = vec![], "at least one wave");
    check(
        &|s| s.waves = (1..=11).map(|i| i * 9 + 1).collect(),
        "waves",
    );
    check(&|s| s.name = "bad name".into(), "name");
    check(&|s| s.target = "../etc".into(), "target");
    check(
        &|s| s.rollback_target = Some("fw-2.0.0".into()),
        "rollback_target",
    );
    check(&|s| s.device_timeout_secs = 1, "device_timeout_secs");
    check(
        &|s| {
            s.windows = vec![Window {
                days: vec![],
                start: TimeOfDay(0),
                end: TimeOfDay(60),
            }]
        },
        "at least one day",
    );
    assert!(TimeOfDay::parse("24:01").is_err());
    assert!(TimeOfDay::parse("7:00").is_err());
    assert_eq!(TimeOfDay::parse("24:00").map(|t| t.minutes()), Ok(1440));
    assert!(Campaign::new(1, spec(), Vec::new(), 0).is_err());
    let parsed: Result<CampaignSpec, _> =
        serde_json::from_str(r#"{"name":"a","group":"g","target":"t-1","waves":[100],"bogus":1}"#);
    assert!(parsed.is_err(), "unknown fields are refused");
    let parsed: CampaignSpec = serde_json::from_str(
        r#"{"name":"a","group":"g","target":"x86/t-1","windows":[{"days":["sat","sun"],"start":"01:00","end":"05:00"}]}"#,
    )
    .expect("defaults");
    assert_eq!(parsed.waves, vec![5, 25, 100]);
    assert!(parsed.gates.security.is_some());
    assert!(parsed.validate().is_ok());
}

#[test]
fn stored_parts_round_trip_and_inconsistent_ones_are_refused() {
    let mut c = Campaign::new(3, spec(), ids(10), 0).expect("campaign");
    c.start(0).expect("start");
    let meta: CampaignMeta =
        serde_json::from_str(&serde_json::to_string(c.meta()).expect("json")).expect("meta");
    let devices: Vec<DeviceEntry> =
        serde_json::from_str(&serde_json::to_string(c.devices()).expect("json")).expect("devices");
    let back = Campaign::from_parts(meta.clone(), devices.clone()).expect("parts");
    assert_eq!(back.meta(), c.meta());
    assert_eq!(back.devices(), c.devices());
    let mut twice = devices.clone();
    twice.push(devices[0].clone());
    assert!(Campaign::from_parts(meta.clone(), twice).is_err());
    let mut bad_wave = devices;
    bad_wave[0].wave = 9;
    assert!(Campaign::from_parts(meta, bad_wave).is_err());
}

// ---- properties -------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Tick(u64),
    Report(usize, ReportState, bool),
    Pause,
    Resume,
    Abort,
    Rollback,
    Signal(usize),
}

fn report_state() -> impl Strategy<Value = ReportState> {
    prop_oneof![
        Just(ReportState::Downloading),
        Just(ReportState::Installed),
        Just(ReportState::Installed),
        Just(ReportState::Installed),
        Just(ReportState::Failed),
        Just(ReportState::Refused),
        Just(ReportState::ConsentDeclined),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..4 * H).prop_map(Op::Tick),
        10 => (0usize..64, report_state(), any::<bool>()).prop_map(|(d, s, r)| Op::Report(d, s, r)),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        1 => Just(Op::Abort),
        1 => Just(Op::Rollback),
        2 => (0usize..64).prop_map(Op::Signal),
    ]
}

fn spec_strategy() -> impl Strategy<Value = CampaignSpec> {
    (
        prop::collection::btree_set(1u8..100, 0..4),
        any::<bool>(),
        0u8..60,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(waves, windowed, max_failure, abort, security)| {
            let mut s = spec();
            s.waves = waves.into_iter().chain([100]).collect();
            if windowed {
                s.windows = vec![Window {
                    days: vec![Weekday::Mon, Weekday::Wed, Weekday::Sat],
                    start: TimeOfDay(20 * 60),
                    end: TimeOfDay(3 * 60),
                }];
            }
            s.gates.max_failure_percent = max_failure;
            s.gates.on_failure = if abort {
                GateAction::Abort
            } else {
                GateAction::Pause
            };
            s.gates.security = security.then_some(SecurityGate {
                min_sample: 2,
                max_excess_percent: 30,
                action: GateAction::Pause,
            });
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_under_any_sequence(
        spec in spec_strategy(),
        n in 1usize..64,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut c = Campaign::new(5, spec, ids(n), MONDAY).expect("campaign");
        let mut now = MONDAY;
        let mut signals = BTreeMap::new();
        let first = c.start(now).expect("start");
        let mut steps = vec![(now, Status::Draft, 0u8, first)];
        for op in ops {
            let status = c.status();
            let wave = c.meta().current_wave;
            let actions = match op {
                Op::Tick(dt) => {
                    now += dt;
                    c.tick(now, &signals)
                }
                Op::Report(i, state, rollback_target) => {
                    let d = c.devices()[i % n].device.clone();
                    let target = if rollback_target { "fw-1.0.0-rb" } else { "fw-2.0.0" };
                    let r = report(&c, target, state);
                    c.report(&d, &r, now)
                }
                Op::Pause => c.pause(now, "op").unwrap_or_default(),
                Op::Resume => c.resume(now, &signals).unwrap_or_default(),
                Op::Abort => c.abort(now, "op").unwrap_or_default(),
                Op::Rollback => c.rollback(now).unwrap_or_default(),
                Op::Signal(i) => {
                    let d = c.devices()[i % n].device.clone();
                    signals.insert(d, Signals { alerts: 1, ..Signals::default() });
                    Vec::new()
                }
            };
            steps.push((now, status, wave, actions));

            // Counts add up, per wave and in all.
            let counts = c.wave_counts();
            let total: u32 = counts.iter().map(|w| w.total).sum();
            prop_assert_eq!(total as usize, n);
            for w in &counts {
                prop_assert_eq!(w.sum(), w.total);
            }
            // Devices of waves after the current one were never touched, unless the
            // campaign is rolling back (which only touches devices that were assigned).
            for d in c.devices() {
                if d.wave > c.meta().current_wave {
                    prop_assert_eq!(d.stage, Stage::Pending);
                }
            }
        }
        for (at, status_before, wave_before, actions) in &steps {
            let tripped = actions.iter().any(|a| matches!(a, Action::GateTripped(_)));
            let rolling_back = actions.iter().any(|a| matches!(a, Action::Transition { to: Status::RollingBack, .. }));
            for a in actions {
                match a {
                    // A tripped gate never advances.
                    Action::WaveStarted { wave, .. } => {
                        prop_assert!(!tripped);
                        prop_assert!(*wave == 0 || *wave > *wave_before);
                    }
                    // No device is assigned the image outside its wave or a window.
                    Action::Assign { device, target, .. } if target == "fw-2.0.0" => {
                        prop_assert!(c.spec().in_window(*at), "assigned outside a window");
                        prop_assert!(!rolling_back);
                        let entry = c.device(device).expect("device of the campaign");
                        let waves_started = actions.iter().filter_map(|a| match a {
                            Action::WaveStarted { wave, .. } => Some(*wave),
                            _ => None,
                        }).max().unwrap_or(*wave_before);
                        prop_assert!(entry.wave <= waves_started);
                        prop_assert!(matches!(status_before, Status::Draft | Status::Running | Status::Paused));
                    }
                    _ => {}
                }
            }
        }
    }
}
