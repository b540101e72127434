//! Update campaigns end to end: a real hub with a real update repository (`moat ota init`,
//! `moat ota publish`), devices with certificates from `moat device add` that report their
//! progress over MQTT with mosquitto_pub over mutual TLS, campaigns driven with the CLI, and
//! the director metadata fetched over HTTPS with each device's client certificate.
//!
//! - a good campaign rolls out wave by wave (a device's director metadata lists the image
//!   only once its wave is active), survives a pause (nothing advances while paused) and
//!   completes;
//! - failures in the canary trip the failure gate: the campaign stops, later waves are never
//!   targeted, and a rollback re-targets the updated device to the downgrade image;
//! - updated devices that start publishing to new topics trip the security gate, with an
//!   explanation of the numbers compared;
//! - reports are taken only from the device named in the topic, and only when well formed;
//! - real `moat-agent`s (enrolled over EST, verifying the whole TUF and director chain)
//!   update wave by wave and their reports complete the campaign;
//! - a campaign with `--consent` puts the consent flag in each device's signed director
//!   target; a real agent whose owner says no reports `consent_declined` (declined, not
//!   failed), one whose owner says yes installs, and the campaign completes.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Upper bound for a campaign to reach an expected state (the hub ticks every second).
const CAMPAIGN_DEADLINE: Duration = Duration::from_secs(30);

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A hub with an initialised update repository, `fw-2.0.0` and the downgrade target
/// `fw-1.0.0`, and `n` devices in group `fleet` that already published their inventory.
struct Fleet {
    hub: Hub,
    devices: Vec<DeviceCreds>,
}

fn fleet(n: usize) -> Fleet {
    let hub = Hub::start(HubOptions::new());
    let keys = hub.scratch("ota-keys");
    let images = hub.scratch("images");
    cli_ok(
        &hub,
        &["ota", "init", "--keys", keys.to_str().expect("utf-8")],
    );
    for (version, downgrade) in [("2.0.0", false), ("1.0.0", true)] {
        let file = images.join(format!("fw-{version}.bin"));
        std::fs::write(&file, format!("firmware {version}\n").repeat(100)).expect("image");
        let mut args = vec![
            "ota",
            "publish",
            file.to_str().expect("utf-8"),
            "--name",
            "fw",
            "--version",
            version,
            "--keys",
            keys.to_str().expect("utf-8"),
        ];
        if downgrade {
            args.push("--allow-downgrade");
        }
        cli_ok(&hub, &args);
    }
    cli_ok(&hub, &["group", "put", "fleet"]);
    let mut devices = Vec::new();
    for i in 0..n {
        let d = hub.add_device(&format!("d{i:02}"));
        cli_ok(&hub, &["device", "set", &d.id, "--group", "fleet"]);
        // What a device's agent does at start: its retained inventory.
        publish(
            &hub,
            &d,
            "inventory",
            &json!({"hardware": "sensor", "installed": "1.0.0",
                    "packages": [{"name": "fw", "version": "1.0.0", "purl": "pkg:generic/fw@1.0.0"}]}),
        );
        devices.push(d);
    }
    Fleet { hub, devices }
}

fn publish(hub: &Hub, d: &DeviceCreds, kind: &str, body: &Value) {
    mosquitto_pub(
        hub,
        &Via::Device(d.clone()),
        Mqtt::V5,
        None,
        &[
            "-q",
            "1",
            "-t",
            &format!("devices/{}/ota/{kind}", d.id),
            "-m",
            &body.to_string(),
        ],
    )
    .assert_ok();
}

/// A device's status report for campaign `id`.
fn report(hub: &Hub, d: &DeviceCreds, id: u64, target: &str, state: &str, error: Option<&str>) {
    let version = target.rsplit('-').next().unwrap_or("");
    publish(
        hub,
        d,
        "status",
        &json!({"campaign": id.to_string(), "target": target, "version": version,
                "state": state, "progress": if state == "installed" { 100 } else { 50 },
                "error": error}),
    );
}

fn show(hub: &Hub, id: u64) -> Value {
    parse(&cli_ok(
        hub,
        &[
            "ota",
            "campaign",
            "show",
            &id.to_string(),
            "--devices",
            "--json",
        ],
    ))
}

/// Polls the campaign until `ok` holds (the hub ticks every second), or fails showing it.
fn wait_for(hub: &Hub, id: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CAMPAIGN_DEADLINE;
    loop {
        let c = show(hub, id);
        if ok(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "campaign {id}: {what} not reached within {CAMPAIGN_DEADLINE:?}\n{c:#}\n--- hub stderr\n{}",
            hub.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stage<'a>(c: &'a Value, device: &str) -> &'a str {
    c["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["device"] == device)
        .and_then(|d| d["stage"].as_str())
        .unwrap_or_else(|| panic!("{device} not in the campaign: {c:#}"))
}

fn devices_in(c: &Value, stage_name: &str) -> Vec<String> {
    c["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["stage"] == stage_name)
        .filter_map(|d| d["device"].as_str().map(str::to_owned))
        .collect()
}

fn creds<'a>(f: &'a Fleet, id: &str) -> &'a DeviceCreds {
    f.devices
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no device {id}"))
}

/// The device's director `targets.json`, fetched with its own client certificate.
fn director_targets(hub: &Hub, d: &DeviceCreds) -> Value {
    let url = format!(
        "https://localhost:{}/tuf/director/metadata/targets.json",
        hub.addrs.api.port()
    );
    let out = run_with_deadline(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&d.ca)
            .arg("--cert")
            .arg(&d.cert)
            .arg("--key")
            .arg(&d.key)
            .arg(&url),
        EVENT_DEADLINE,
    );
    assert!(out.status.success(), "GET {url}\n{}", show_output(&out));
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn director_lists(hub: &Hub, d: &DeviceCreds) -> Vec<String> {
    director_targets(hub, d)["signed"]["targets"]
        .as_object()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn create(hub: &Hub, extra: &[&str]) -> u64 {
    let mut args = vec![
        "ota",
        "campaign",
        "create",
        "--group",
        "fleet",
        "--target",
        "fw-2.0.0",
        "--rollback-target",
        "fw-1.0.0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let v = parse(&cli_ok(hub, &args));
    v["id"].as_u64().unwrap_or_else(|| panic!("no id: {v}"))
}

fn audit_actions(hub: &Hub) -> String {
    let out = cli_ok(hub, &["audit", "export"]);
    out.lines()
        .filter(|l| l.contains("ota.campaign"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_good_campaign_rolls_out_wave_by_wave_pauses_and_completes() {
    let f = fleet(10);
    let hub = &f.hub;
    // Nothing is targeted before a campaign.
    assert!(director_lists(hub, &f.devices[0]).is_empty());

    let id = create(
        hub,
        &[
            "--name",
            "good",
            "--waves",
            "10,50,100",
            "--security-min-sample",
            "2",
            "--start",
        ],
    );
    let c = wait_for(hub, id, "the canary assigned", |c| {
        devices_in(c, "assigned").len() == 1
    });
    assert_eq!(c["status"], "running");
    let canary = devices_in(&c, "assigned").remove(0);
    let later = devices_in(&c, "pending");
    assert_eq!(later.len(), 9);
    // The director lists the image for the canary only, with this campaign.
    let t = director_targets(hub, creds(&f, &canary));
    let listed = &t["signed"]["targets"]["fw-2.0.0"];
    assert!(listed.is_object(), "canary's director targets: {t:#}");
    assert_eq!(listed["custom"]["moat"]["campaign"], id.to_string());
    for d in &later {
        assert!(
            director_lists(hub, creds(&f, d)).is_empty(),
            "{d} is targeted before its wave"
        );
    }

    // Paused: the canary finishes, but nothing advances.
    let paused = cli_ok(
        hub,
        &[
            "ota",
            "campaign",
            "pause",
            &id.to_string(),
            "--reason",
            "lunch",
        ],
    );
    assert!(paused.contains("paused"), "{paused}");
    report(hub, creds(&f, &canary), id, "fw-2.0.0", "downloading", None);
    report(hub, creds(&f, &canary), id, "fw-2.0.0", "installed", None);
    let c = wait_for(hub, id, "the canary installed", |c| {
        stage(c, &canary) == "installed"
    });
    assert_eq!(c["status"], "paused");
    assert!(c["reason"].as_str().is_some_and(|r| r.contains("lunch")));
    // A few ticks later, still wave 1 and nothing else assigned.
    let tick_later = Instant::now() + Duration::from_secs(2);
    let c = wait_for(hub, id, "two more ticks", |_| Instant::now() >= tick_later);
    assert_eq!(c["current_wave"], 0);
    assert_eq!(devices_in(&c, "assigned").len(), 0);
    assert!(director_lists(hub, creds(&f, &later[0])).is_empty());

    cli_ok(hub, &["ota", "campaign", "resume", &id.to_string()]);
    // Wave by wave until every device installed.
    for wave in 1..3u64 {
        let c = wait_for(hub, id, &format!("wave {} assigned", wave + 1), |c| {
            c["current_wave"] == wave && !devices_in(c, "assigned").is_empty()
        });
        let assigned = devices_in(&c, "assigned");
        assert_eq!(assigned.len(), [1, 4, 5][wave as usize], "{c:#}");
        for d in &assigned {
            assert_eq!(
                director_lists(hub, creds(&f, d)),
                vec!["fw-2.0.0".to_owned()]
            );
            report(hub, creds(&f, d), id, "fw-2.0.0", "installed", None);
        }
    }
    let c = wait_for(hub, id, "completed", |c| c["status"] == "completed");
    assert!(
        c["waves"]
            .as_array()
            .expect("waves")
            .iter()
            .all(|w| w["installed"] == w["total"]),
        "{c:#}"
    );

    // People see it too.
    let table = cli_ok(hub, &["ota", "campaign", "show", &id.to_string()]);
    assert!(
        table.contains("completed") && table.contains("INSTALLED"),
        "{table}"
    );
    // Watching a finished campaign prints where it ended (no bars without a terminal).
    let watched = cli_ok(
        hub,
        &["ota", "campaign", "show", &id.to_string(), "--watch"],
    );
    assert!(watched.contains("(completed)"), "{watched}");
    let list = cli_ok(hub, &["ota", "campaign", "list"]);
    assert!(list.contains("good") && list.contains("10/10"), "{list}");
    let device = parse(&cli_ok(hub, &["ota", "device", &canary, "--json"]));
    assert_eq!(device["report"]["status"]["state"], "installed");
    assert_eq!(device["inventory"]["inventory"]["hardware"], "sensor");
    let audit = audit_actions(hub);
    for action in [
        "ota.campaign.create",
        "ota.campaign.start",
        "ota.campaign.pause",
        "ota.campaign.resume",
        "ota.campaign.wave",
        "ota.campaign.assign",
        "ota.campaign.transition",
    ] {
        assert!(
            audit.contains(action),
            "no {action} in the audit trail\n{audit}"
        );
    }
}

#[test]
fn failures_in_a_wave_trip_the_gate_stop_the_campaign_and_it_rolls_back() {
    let f = fleet(10);
    let hub = &f.hub;
    let id = create(
        hub,
        &[
            "--name",
            "bad",
            "--waves",
            "20,100",
            "--max-failure-percent",
            "20",
            "--on-failure",
            "abort",
            "--no-security-gate",
            "--start",
        ],
    );
    let c = wait_for(hub, id, "the canaries assigned", |c| {
        devices_in(c, "assigned").len() == 2
    });
    let canaries = devices_in(&c, "assigned");
    let later = devices_in(&c, "pending");
    report(
        hub,
        creds(&f, &canaries[0]),
        id,
        "fw-2.0.0",
        "installed",
        None,
    );
    report(
        hub,
        creds(&f, &canaries[1]),
        id,
        "fw-2.0.0",
        "failed",
        Some("install script exited with 3"),
    );
    let c = wait_for(hub, id, "aborted by the gate", |c| c["status"] == "aborted");
    let why = c["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("install_failures") && why.contains("1 of 2 devices failed"),
        "{why}"
    );
    assert_eq!(c["last_trip"]["gate"], "install_failures");
    assert_eq!(c["current_wave"], 0, "a tripped gate never advances");
    for d in &later {
        assert_eq!(stage(&c, d), "pending");
        assert!(director_lists(hub, creds(&f, d)).is_empty());
    }
    assert!(audit_actions(hub).contains("ota.campaign.gate"));
    // An aborted campaign cannot resume.
    let out = cli(hub, &["ota", "campaign", "resume", &id.to_string()]);
    assert!(!out.status.success());

    // Roll back: the updated device is told to install the downgrade image.
    cli_ok(hub, &["ota", "campaign", "rollback", &id.to_string()]);
    let c = wait_for(hub, id, "rolling back", |c| c["status"] == "rolling_back");
    assert_eq!(stage(&c, &canaries[0]), "rolling_back");
    assert_eq!(stage(&c, &canaries[1]), "failed");
    assert_eq!(
        director_lists(hub, creds(&f, &canaries[0])),
        vec!["fw-1.0.0".to_owned()]
    );
    report(
        hub,
        creds(&f, &canaries[0]),
        id,
        "fw-1.0.0",
        "installed",
        None,
    );
    let c = wait_for(hub, id, "rolled back", |c| c["status"] == "rolled_back");
    assert_eq!(c["waves"][0]["rolled_back"], 1);
}

#[test]
fn updated_devices_publishing_to_new_topics_trip_the_security_gate() {
    let f = fleet(6);
    let hub = &f.hub;
    let id = create(
        hub,
        &[
            "--name",
            "sneaky",
            "--waves",
            "50,100",
            "--security-min-sample",
            "2",
            "--security-max-excess",
            "20",
            "--start",
        ],
    );
    let c = wait_for(hub, id, "the first wave assigned", |c| {
        devices_in(c, "assigned").len() == 3
    });
    let first = devices_in(&c, "assigned");
    // Two of three install.
    for d in &first[..2] {
        report(hub, creds(&f, d), id, "fw-2.0.0", "installed", None);
    }
    wait_for(hub, id, "two installed", |c| {
        devices_in(c, "installed").len() == 2
    });
    // One of them publishes where it never did before.
    let d = &first[0];
    mosquitto_pub(
        hub,
        &Via::Device(creds(&f, d).clone()),
        Mqtt::V5,
        None,
        &[
            "-q",
            "1",
            "-t",
            &format!("devices/{d}/debug/shell"),
            "-m",
            "hello",
        ],
    )
    .assert_ok();
    let c = wait_for(hub, id, "paused by the security gate", |c| {
        c["status"] == "paused"
    });
    assert_eq!(c["last_trip"]["gate"], "security_regression");
    let why = c["last_trip"]["explanation"].as_str().unwrap_or_default();
    assert!(
        why.starts_with(
            "1 of 2 updated devices (50%) showed new security signals since updating \
             (0 alerts, 0 authorization failures, 1 new topics) against 0 of 3 devices not yet updated (0%)"
        ) && why.ends_with("allowed excess 20 points"),
        "{why}"
    );
    // The last wave is still untouched.
    assert_eq!(c["current_wave"], 0);
    assert_eq!(devices_in(&c, "pending").len(), 3);
}

const CROSS_REPORT_POLICY: &str = r#"version = 1
[[statement]]
id = "self"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}"]
[[statement]]
id = "others-reports"
effect = "allow"
actions = ["publish"]
topics = ["devices/+/ota/status"]
"#;

#[test]
fn reports_are_taken_only_from_the_device_itself_and_only_when_well_formed() {
    let hub = Hub::start(HubOptions::new());
    let victim = hub.add_device("victim");
    let other = hub.add_device("other");
    // A policy (a mistake, say) lets `other` publish into every device's report topic.
    let policy = hub.scratch("policies").join("cross.toml");
    std::fs::write(&policy, CROSS_REPORT_POLICY).expect("policy file");
    cli_ok(
        &hub,
        &["policy", "put", "cross", policy.to_str().expect("utf-8")],
    );
    cli_ok(&hub, &["device", "set", "other", "--policy", "cross"]);
    let forged = json!({"campaign": "1", "target": "fw-2.0.0", "version": "2.0.0",
                        "state": "installed", "progress": 100, "error": null});
    mosquitto_pub(
        &hub,
        &Via::Device(other),
        Mqtt::V5,
        None,
        &[
            "-q",
            "1",
            "-t",
            "devices/victim/ota/status",
            "-m",
            &forged.to_string(),
        ],
    )
    .assert_ok();
    // The victim itself sends something malformed, then something valid.
    publish(&hub, &victim, "status", &json!({"state": "installed"}));
    let good = json!({"campaign": null, "target": "fw-2.0.0", "version": "2.0.0",
                      "state": "downloading", "progress": 10, "error": null});
    publish(&hub, &victim, "status", &good);
    let deadline = Instant::now() + CAMPAIGN_DEADLINE;
    let state = loop {
        let v = parse(&cli_ok(&hub, &["ota", "device", "victim", "--json"]));
        if !v["report"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no report stored: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Only the victim's own, valid report was kept.
    assert_eq!(state["report"]["status"]["state"], "downloading");
    assert_eq!(
        hub.metric("moat_ota_reports_total{result=\"wrong_device\"}"),
        Some(1.0)
    );
    assert_eq!(
        hub.metric("moat_ota_reports_total{result=\"invalid\"}"),
        Some(1.0)
    );
    assert_eq!(
        hub.metric("moat_ota_reports_total{result=\"accepted\"}"),
        Some(1.0)
    );
}

/// Enrolls `id` with the real agent (EST with a token) into its own directory, provisioned
/// with the two roots of the ceremony in `keys`.
fn agent(hub: &Hub, rt: &tokio::runtime::Runtime, keys: &std::path::Path, id: &str) -> AgentDevice {
    use moat_agent::update::command::CommandLine;
    use moat_agent::{EnrollOptions, EnrollmentToken, HubUrl, Reports, UpdateOptions};
    let dir = hub.scratch(&format!("agent-{id}"));
    let token = cli_ok(hub, &["token", "create", "--uses", "1", "--ttl", "10m"]);
    let url = HubUrl::parse(&format!("https://localhost:{}", hub.addrs.api.port())).expect("url");
    let opts = EnrollOptions::new(
        url,
        hub.data_dir().join("pki").join("root-ca.crt"),
        EnrollmentToken::new(token).expect("token"),
        moat_types::DeviceId::parse(id).expect("id"),
        &dir,
    );
    rt.block_on(moat_agent::enroll(&opts))
        .unwrap_or_else(|e| panic!("enroll {id}: {e}"));
    std::fs::copy(keys.join("image/root.json"), dir.join("image-root.json")).expect("root");
    std::fs::copy(
        keys.join("director/root.json"),
        dir.join("director-root.json"),
    )
    .expect("director root");
    cli_ok(hub, &["device", "set", id, "--group", "fleet"]);
    let install = dir.join("install.sh");
    std::fs::write(
        &install,
        "#!/bin/sh\ncp \"$1\" \"$(dirname \"$0\")/slot\"\n",
    )
    .expect("script");
    let mut update = UpdateOptions::new(
        &dir,
        "sensor",
        CommandLine::parse(&format!("sh {}", install.display())).expect("command"),
    );
    update.installed_version = "1.0.0".into();
    update.reports = Reports::To(
        format!("mqtts://localhost:{}", hub.tls_addr().port())
            .parse()
            .expect("mqtt url"),
    );
    AgentDevice {
        id: id.to_owned(),
        dir,
        update,
    }
}

struct AgentDevice {
    id: String,
    dir: std::path::PathBuf,
    update: moat_agent::UpdateOptions,
}

impl AgentDevice {
    /// One update cycle; whether it installed something.
    fn update_once(&self, hub: &Hub, rt: &tokio::runtime::Runtime) -> bool {
        let outcome = rt
            .block_on(moat_agent::update_once(
                &self.dir,
                &moat_agent::Overrides::default(),
                &self.update,
            ))
            .unwrap_or_else(|e| panic!("{}: update: {e}\n{}", self.id, hub.stderr()));
        matches!(outcome, moat_agent::UpdateOutcome::Installed { .. })
    }
}

#[test]
fn real_agents_update_wave_by_wave_and_the_campaign_completes() {
    let hub = Hub::start(HubOptions::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = hub.scratch("ota-keys");
    let keys_arg = keys.to_str().expect("utf-8");
    cli_ok(&hub, &["ota", "init", "--keys", keys_arg]);
    let image = hub.scratch("images").join("fw-2.0.0.bin");
    std::fs::write(&image, b"firmware 2.0.0\n".repeat(1000)).expect("image");
    cli_ok(
        &hub,
        &[
            "ota",
            "publish",
            image.to_str().expect("utf-8"),
            "--name",
            "fw",
            "--version",
            "2.0.0",
            "--keys",
            keys_arg,
        ],
    );
    cli_ok(&hub, &["group", "put", "fleet"]);
    let agents: Vec<AgentDevice> = ["a0", "a1", "a2"]
        .iter()
        .map(|id| agent(&hub, &rt, &keys, id))
        .collect();
    let id = parse(&cli_ok(
        &hub,
        &[
            "ota", "campaign", "create", "--name", "agents", "--group", "fleet", "--target",
            "fw-2.0.0", "--waves", "33,100", "--start", "--json",
        ],
    ))["id"]
        .as_u64()
        .expect("id");
    let c = wait_for(&hub, id, "the canary assigned", |c| {
        devices_in(c, "assigned").len() == 1
    });
    let canary = devices_in(&c, "assigned").remove(0);
    // Every agent checks: only the canary's director metadata names the image.
    for a in &agents {
        assert_eq!(a.update_once(&hub, &rt), a.id == canary, "{}", a.id);
    }
    wait_for(&hub, id, "the second wave assigned", |c| {
        c["current_wave"] == 1 && devices_in(c, "assigned").len() == 2
    });
    for a in agents.iter().filter(|a| a.id != canary) {
        assert!(a.update_once(&hub, &rt), "{} installed nothing", a.id);
        assert_eq!(
            std::fs::read(a.dir.join("slot")).expect("installed image"),
            std::fs::read(&image).expect("image")
        );
    }
    let c = wait_for(&hub, id, "completed", |c| c["status"] == "completed");
    assert_eq!(c["waves"][1]["installed"], 2, "{c:#}");
}

#[test]
fn a_running_campaign_survives_a_hub_restart() {
    let mut f = fleet(3);
    let id = create(
        &f.hub,
        &["--name", "durable", "--waves", "33,100", "--start"],
    );
    let c = wait_for(&f.hub, id, "the canary assigned", |c| {
        devices_in(c, "assigned").len() == 1
    });
    let canary = devices_in(&c, "assigned").remove(0);
    report(
        &f.hub,
        creds(&f, &canary),
        id,
        "fw-2.0.0",
        "installed",
        None,
    );
    let c = wait_for(&f.hub, id, "the last wave assigned", |c| {
        c["current_wave"] == 1 && devices_in(c, "assigned").len() == 2
    });
    let rest = devices_in(&c, "assigned");

    f.hub.restart();
    let hub = &f.hub;
    let c = show(hub, id);
    assert_eq!(c["status"], "running", "{c:#}");
    assert_eq!(stage(&c, &canary), "installed");
    for d in &rest {
        assert_eq!(stage(&c, d), "assigned");
        assert_eq!(
            director_lists(hub, creds(&f, d)),
            vec!["fw-2.0.0".to_owned()]
        );
        report(hub, creds(&f, d), id, "fw-2.0.0", "installed", None);
    }
    wait_for(hub, id, "completed", |c| c["status"] == "completed");
}

#[test]
fn a_consent_campaign_makes_agents_ask_and_a_no_is_declined_not_failed() {
    let hub = Hub::start(HubOptions::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = hub.scratch("ota-keys");
    let keys_arg = keys.to_str().expect("utf-8");
    cli_ok(&hub, &["ota", "init", "--keys", keys_arg]);
    let image = hub.scratch("images").join("fw-2.0.0.bin");
    std::fs::write(&image, b"firmware 2.0.0 asks first\n".repeat(500)).expect("image");
    cli_ok(
        &hub,
        &[
            "ota",
            "publish",
            image.to_str().expect("utf-8"),
            "--name",
            "fw",
            "--version",
            "2.0.0",
            "--keys",
            keys_arg,
        ],
    );
    cli_ok(&hub, &["group", "put", "fleet"]);
    let mut yes = agent(&hub, &rt, &keys, "yes");
    let mut no = agent(&hub, &rt, &keys, "no");
    for (a, answer) in [(&mut yes, "true"), (&mut no, "false")] {
        let script = a.dir.join("consent.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho asked >> \"$(dirname \"$0\")/asked\"\n{answer}\n"),
        )
        .expect("script");
        a.update.commands.consent = Some(
            moat_agent::update::command::CommandLine::parse(&format!("sh {}", script.display()))
                .expect("command"),
        );
    }
    let id = parse(&cli_ok(
        &hub,
        &[
            "ota",
            "campaign",
            "create",
            "--name",
            "ask",
            "--group",
            "fleet",
            "--target",
            "fw-2.0.0",
            "--waves",
            "100",
            "--consent",
            "--start",
            "--json",
        ],
    ))["id"]
        .as_u64()
        .expect("id");
    wait_for(&hub, id, "both devices assigned", |c| {
        devices_in(c, "assigned").len() == 2
    });
    // The flag is in the signed director target each device fetches with its certificate.
    let creds = DeviceCreds {
        id: "yes".into(),
        cert: yes.dir.join("device.crt"),
        key: yes.dir.join("device.key"),
        ca: yes.dir.join("ca.crt"),
    };
    let targets = director_targets(&hub, &creds);
    assert_eq!(
        targets["signed"]["targets"]["fw-2.0.0"]["custom"]["moat"]["consent"], true,
        "{targets:#}"
    );
    let device = parse(&cli_ok(&hub, &["ota", "device", "yes", "--json"]));
    assert_eq!(device["director_target"]["consent"], true, "{device:#}");

    assert!(
        yes.update_once(&hub, &rt),
        "the device whose owner said yes installs"
    );
    assert!(
        !no.update_once(&hub, &rt),
        "the device whose owner said no installs nothing"
    );
    for a in [&yes, &no] {
        assert!(a.dir.join("asked").exists(), "{} was not asked", a.id);
    }
    assert!(!no.dir.join("slot").exists());
    let c = wait_for(&hub, id, "completed", |c| c["status"] == "completed");
    assert_eq!(stage(&c, "yes"), "installed", "{c:#}");
    assert_eq!(stage(&c, "no"), "declined", "{c:#}");
    assert_eq!(c["waves"][0]["installed"], 1, "{c:#}");
}
