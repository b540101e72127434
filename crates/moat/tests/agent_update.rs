//! The agent's update reports against the real hub: status and the retained inventory arrive
//! over MQTT 5 with mutual TLS, published as the device itself, and are received by
//! mosquitto_sub as a second identity whose policy grants `devices/+/ota/#`.
//!
//! The update flow itself (verification, resumed downloads, install, reboot, rollback,
//! attacks) is tested against a local repository server in crates/moat-agent/tests/update.rs.

mod support;

use std::fs;

use moat_agent::update::command::CommandLine;
use moat_agent::update::inventory::InventorySource;
use moat_agent::update::state::{Pending, Phase, UpdateState};
use moat_agent::{
    EnrollOptions, EnrollmentToken, HubUrl, Overrides, Reports, UpdateOptions, UpdateOutcome,
};
use moat_types::DeviceId;
use support::*;

const WATCHER_POLICY: &str = r#"version = 1
[[statement]]
id = "self"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}"]
[[statement]]
id = "ota-reports"
effect = "allow"
actions = ["subscribe", "receive"]
topics = ["devices/+/ota/#"]
"#;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Enrolls `id` with the agent into a fresh directory.
fn enroll(hub: &Hub, rt: &tokio::runtime::Runtime, id: &str) -> std::path::PathBuf {
    let dir = hub.scratch(&format!("agent-{id}"));
    let token = cli_ok(hub, &["token", "create", "--uses", "1", "--ttl", "10m"]);
    let url = HubUrl::parse(&format!("https://localhost:{}", hub.addrs.api.port())).expect("url");
    let opts = EnrollOptions::new(
        url,
        hub.data_dir().join("pki").join("root-ca.crt"),
        EnrollmentToken::new(token).expect("token"),
        DeviceId::parse(id).expect("id"),
        &dir,
    );
    rt.block_on(moat_agent::enroll(&opts))
        .unwrap_or_else(|e| panic!("enroll: {e}"));
    dir
}

fn mqtt(hub: &Hub) -> Reports {
    Reports::To(
        format!("mqtts://localhost:{}", hub.tls_addr().port())
            .parse()
            .expect("mqtt url"),
    )
}

/// A device `id` enrolled and in group `fleet`, the ceremony done, `fw-2.0.0` published; the
/// agent configured to install by copying the image to `work/slot`.
struct Fleet {
    dir: std::path::PathBuf,
    image: Vec<u8>,
    file: std::path::PathBuf,
    work: std::path::PathBuf,
    update: UpdateOptions,
}

fn fleet(hub: &Hub, rt: &tokio::runtime::Runtime, id: &str) -> Fleet {
    let dir = enroll(hub, rt, id);
    cli_ok(hub, &["group", "put", "fleet"]);
    cli_ok(hub, &["device", "set", id, "--group", "fleet"]);

    // The ceremony and a signed image; the device is provisioned with the two roots.
    let keys = hub.scratch("ota-keys");
    let keys_arg = keys.to_str().expect("utf-8");
    cli_ok(hub, &["ota", "init", "--keys", keys_arg]);
    fs::copy(keys.join("image/root.json"), dir.join("image-root.json")).expect("image root");
    fs::copy(
        keys.join("director/root.json"),
        dir.join("director-root.json"),
    )
    .expect("director root");
    let image: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let file = hub.scratch("images").join("fw-2.0.0.img");
    fs::write(&file, &image).expect("image");
    cli_ok(
        hub,
        &[
            "ota",
            "publish",
            file.to_str().expect("utf-8"),
            "--name",
            "fw",
            "--version",
            "2.0.0",
            "--keys",
            keys_arg,
        ],
    );

    let work = hub.scratch(&format!("agent-{id}-slot"));
    let install = work.join("install.sh");
    fs::write(
        &install,
        "#!/bin/sh\ncp \"$1\" \"$(dirname \"$0\")/slot\"\n",
    )
    .expect("script");
    let mut update = UpdateOptions::new(
        &dir,
        "rpi4",
        CommandLine::parse(&format!("sh {}", install.display())).expect("cmd"),
    );
    update.installed_version = "1.0.0".into();
    update.reports = mqtt(hub);
    Fleet {
        dir,
        image,
        file,
        work,
        update,
    }
}

#[test]
fn a_campaign_reaches_the_agent_which_resumes_verifies_installs_and_reports() {
    let hub = Hub::start(HubOptions::new());
    let rt = runtime();
    let Fleet {
        dir,
        image,
        file,
        work,
        update,
    } = fleet(&hub, &rt, "ota2");

    // Nothing assigned yet.
    let outcome = rt
        .block_on(moat_agent::update_once(
            &dir,
            &Overrides::default(),
            &update,
        ))
        .unwrap_or_else(|e| panic!("update: {e}\n{}", hub.stderr()));
    assert_eq!(
        outcome,
        UpdateOutcome::UpToDate {
            installed: "1.0.0".into()
        }
    );

    cli_ok(
        &hub,
        &[
            "ota", "campaign", "create", "--name", "fw2", "--group", "fleet", "--target",
            "fw-2.0.0", "--waves", "100", "--start",
        ],
    );
    // A download interrupted earlier left the first 100 000 bytes (named by the image's
    // SHA-256): the agent re-hashes them and asks the hub for the rest.
    let sha = {
        let out = std::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_owned()
    };
    assert!(
        cli_ok(&hub, &["ota", "targets"]).contains(&sha[..16]),
        "the hub lists the image"
    );
    let images = dir.join("ota").join("images");
    fs::create_dir_all(&images).expect("images dir");
    fs::write(images.join(format!("{sha}.part")), &image[..100_000]).expect("part");

    // The campaign's wave assigns the target (the hub may take a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let outcome = loop {
        let o = rt
            .block_on(moat_agent::update_once(
                &dir,
                &Overrides::default(),
                &update,
            ))
            .unwrap_or_else(|e| panic!("update: {e}\n{}", hub.stderr()));
        if !matches!(o, UpdateOutcome::UpToDate { .. }) || std::time::Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        outcome,
        UpdateOutcome::Installed {
            target: "fw-2.0.0".into(),
            version: "2.0.0".into()
        },
        "{}",
        hub.stderr()
    );
    assert_eq!(fs::read(work.join("slot")).expect("installed image"), image);

    // The hub saw the report: the device is on 2.0.0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let shown = cli_ok(&hub, &["ota", "device", "ota2"]);
        if shown.contains("installed") && shown.contains("2.0.0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hub has no report:\n{shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn status_and_inventory_reports_reach_a_subscriber_over_mutual_tls() {
    let hub = Hub::start(HubOptions::new());
    let rt = runtime();
    let dir = enroll(&hub, &rt, "ota1");

    // A fleet watcher may read every device's update reports.
    let watcher = hub.add_device("watcher");
    let policy = hub.scratch("policies").join("ota-watcher.toml");
    fs::write(&policy, WATCHER_POLICY).expect("policy file");
    cli_ok(
        &hub,
        &[
            "policy",
            "put",
            "ota-watcher",
            policy.to_str().expect("utf-8"),
        ],
    );
    cli_ok(
        &hub,
        &["device", "set", "watcher", "--policy", "ota-watcher"],
    );
    let mut sub = Sub::start(
        &hub,
        &Via::Device(watcher),
        Mqtt::V5,
        None,
        &["-t", "devices/+/ota/#", "-q", "1"],
    );
    assert_eq!(sub.granted, vec![1], "{}", sub.show());

    // The device restarted after installing 2.0.0: the next cycle checks health, confirms
    // and reports (no repository needed for that step).
    let work = dir.join("ota");
    fs::create_dir_all(&work).expect("ota dir");
    let mut state = UpdateState::default();
    state.pending = Some(Pending {
        target: "fw-2.0.0".into(),
        version: "2.0.0".into(),
        sha256: "ab".repeat(32),
        length: 3,
        campaign: Some("c-1".into()),
        phase: Phase::Rebooting,
        boots: 0,
        previous: Some("1.0.0".into()),
        image: work.join("images").join("x.image"),
    });
    state.save(&work.join("state.json")).expect("state");
    let inventory = dir.join("inventory.json");
    fs::write(
        &inventory,
        r#"[{"name":"openssl","version":"3.0.13","purl":"pkg:deb/debian/openssl@3.0.13"}]"#,
    )
    .expect("inventory");
    let mut update = UpdateOptions::new(&dir, "rpi4", CommandLine::parse("true").expect("cmd"));
    update.commands.health = Some(CommandLine::parse("true").expect("cmd"));
    update.reports = mqtt(&hub);
    update.inventory = Some(InventorySource::File(inventory));
    let outcome = rt
        .block_on(moat_agent::update_once(
            &dir,
            &Overrides::default(),
            &update,
        ))
        .unwrap_or_else(|e| panic!("update: {e}\n{}", hub.stderr()));
    assert_eq!(
        outcome,
        UpdateOutcome::Installed {
            target: "fw-2.0.0".into(),
            version: "2.0.0".into()
        }
    );

    let (topic, payload) = sub.expect_message();
    assert_eq!(topic, "devices/ota1/ota/status", "{}", sub.show());
    let status = json(&payload);
    assert_eq!(status["state"], "installed", "{status}");
    assert_eq!(status["target"], "fw-2.0.0");
    assert_eq!(status["version"], "2.0.0");
    assert_eq!(status["campaign"], "c-1");
    assert_eq!(status["progress"], 100);
    assert!(status["error"].is_null());

    let (topic, payload) = sub.expect_message();
    assert_eq!(topic, "devices/ota1/ota/inventory", "{}", sub.show());
    let inv = json(&payload);
    assert_eq!(inv["hardware"], "rpi4", "{inv}");
    assert_eq!(inv["installed"], "2.0.0");
    assert_eq!(inv["packages"][0]["purl"], "pkg:deb/debian/openssl@3.0.13");
    sub.kill();

    // The inventory is retained: a later subscriber gets it at once.
    let watcher = hub.add_device("watcher2");
    cli_ok(
        &hub,
        &["device", "set", "watcher2", "--policy", "ota-watcher"],
    );
    let mut late = Sub::start(
        &hub,
        &Via::Device(watcher),
        Mqtt::V5,
        None,
        &["-t", "devices/ota1/ota/inventory", "-q", "1"],
    );
    let (topic, payload) = late.expect_message();
    assert_eq!(topic, "devices/ota1/ota/inventory");
    assert_eq!(json(&payload)["installed"], "2.0.0");
    late.kill();
}

#[test]
fn attack_metadata_edited_in_the_hubs_storage_is_refused() {
    let hub = Hub::start(HubOptions::new());
    let rt = runtime();
    let f = fleet(&hub, &rt, "ota3");
    cli_ok(
        &hub,
        &[
            "ota", "campaign", "create", "--name", "fw2", "--group", "fleet", "--target",
            "fw-2.0.0", "--waves", "100", "--start",
        ],
    );
    // Someone with the hub's disk (but not the offline targets key) points the published
    // target at other bytes, in every stored targets metadata file.
    let evil = vec![0x66u8; f.image.len()];
    let digest = |path: &std::path::Path| {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_owned()
    };
    let evil_file = hub.scratch("images").join("evil");
    fs::write(&evil_file, &evil).expect("evil image");
    let (good, bad) = (digest(&f.file), digest(&evil_file));
    let metadata = hub.data_dir().join("ota").join("image").join("metadata");
    let mut edited = 0;
    for entry in fs::read_dir(&metadata).expect("metadata dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with("targets.json") {
            let text = fs::read_to_string(entry.path()).expect("targets");
            if text.contains(&good) {
                fs::write(entry.path(), text.replace(&good, &bad)).expect("edit");
                edited += 1;
            }
        }
    }
    assert!(
        edited > 0,
        "no targets metadata under {}",
        metadata.display()
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let outcome = loop {
        let o = rt
            .block_on(moat_agent::update_once(
                &f.dir,
                &Overrides::default(),
                &f.update,
            ))
            .unwrap_or_else(|e| panic!("update: {e}\n{}", hub.stderr()));
        if !matches!(o, UpdateOutcome::UpToDate { .. }) || std::time::Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        matches!(&outcome, UpdateOutcome::Refused { reason, .. } if reason.contains("targets")),
        "{outcome:?}"
    );
    assert!(!f.work.join("slot").exists(), "nothing installed");
}
