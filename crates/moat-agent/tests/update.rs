//! `moat-agent update` end to end through the binary, against signed repositories served by a
//! local HTTPS server with mutual TLS (tests/support): resumed and refused downloads, install
//! → reboot → confirm, automatic rollback, downgrades, consent, and attacks on the metadata.
//! Reporting to a real hub over MQTT is in crates/moat/tests/agent_update.rs.

// Setup failures panic with the error: that is the test failing.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use moat_ota::meta;
use support::*;

const DEVICE: &str = "dev1";

/// Random-looking image bytes of `len`.
fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

struct World {
    pki: Pki,
    server: Server,
}

fn world() -> World {
    let pki = Pki::new(DEVICE);
    let server = Server::start(&pki, Repo::new());
    World { pki, server }
}

impl World {
    fn device(&self, label: &str) -> Device {
        Device::new(label, DEVICE, &self.pki, &self.server)
    }

    /// Publishes `bytes` as version `v` and assigns it to the device.
    fn offer(&self, v: &str, bytes: &[u8], downgrade: bool) -> moat_ota::image::TargetInfo {
        self.server.with(|s| {
            let info = s.repo.publish(v, bytes, downgrade);
            s.repo.assign(DEVICE, Some(&info));
            info
        })
    }

    fn target_gets(&self) -> Vec<Seen> {
        self.server
            .seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/tuf/targets/"))
            .collect()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn leftover_images(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("ota/images"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nothing_assigned_is_up_to_date() {
    let w = world();
    let d = w.device("none");
    w.server.with(|s| s.repo.assign(DEVICE, None));
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("up to date: 1.0.0"), "{}", show(&out));
    assert!(w.target_gets().is_empty());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let w = world();
    let d = w.device("resume");
    let bytes = image(300_000, 1);
    w.offer("2.0.0", &bytes, false);
    w.server
        .with(|s| s.faults.cut_next_target_after = Some(100_000));
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("installed"), "{}", show(&out));
    let gets = w.target_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let from: usize = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the second request resumes with a range: {gets:?}\n{}",
                show(&out)
            )
        });
    assert!(from > 0 && from <= 100_000, "resumed at {from}");
    assert_eq!(
        d.slot().as_deref(),
        Some(&bytes[..]),
        "installed bytes differ"
    );
    assert_eq!(d.log(), vec!["install 2.0.0"]);
    assert_eq!(d.state()["installed"], "2.0.0");
    assert!(
        leftover_images(&d.dir).is_empty(),
        "{:?}",
        leftover_images(&d.dir)
    );
}

#[test]
fn a_partial_file_on_disk_is_rehashed_and_resumed_by_the_next_run() {
    let w = world();
    let d = w.device("resume2");
    let bytes = image(200_000, 2);
    let info = w.offer("2.0.0", &bytes, false);
    // A previous run left the first 50 000 bytes.
    let images = d.dir.join("ota/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(
        images.join(format!("{}.part", info.sha256)),
        &bytes[..50_000],
    )
    .unwrap();
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    let gets = w.target_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(d.slot().as_deref(), Some(&bytes[..]));

    // A corrupt partial file of another target is not trusted: wrong bytes are re-fetched.
    let w = world();
    let d = w.device("resume3");
    let info = w.offer("2.0.0", &bytes, false);
    let images = d.dir.join("ota/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(
        images.join(format!("{}.part", info.sha256)),
        image(200_000, 9),
    )
    .unwrap();
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(w.target_gets().len(), 1);
    assert_eq!(w.target_gets()[0].range, None);
    assert_eq!(d.slot().as_deref(), Some(&bytes[..]));
}

#[test]
fn a_body_longer_than_the_signed_length_is_cut_off_and_refused() {
    let w = world();
    let d = w.device("long");
    let bytes = image(100_000, 3);
    let info = w.offer("2.0.0", &bytes, false);
    w.server.with(|s| {
        let mut longer = bytes.clone();
        longer.extend(image(1_000_000, 4));
        s.repo
            .files
            .insert(format!("targets/{}", info.path), longer);
    });
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        stdout(&out).contains("longer than its signed length"),
        "{}",
        show(&out)
    );
    assert!(d.log().is_empty(), "nothing installed: {:?}", d.log());
    assert!(
        leftover_images(&d.dir).is_empty(),
        "{:?}",
        leftover_images(&d.dir)
    );
}

#[test]
fn a_wrong_hash_is_refused_and_nothing_installed() {
    let w = world();
    let d = w.device("hash");
    let bytes = image(100_000, 5);
    let info = w.offer("2.0.0", &bytes, false);
    w.server.with(|s| {
        s.repo
            .files
            .insert(format!("targets/{}", info.path), image(100_000, 6));
    });
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(stdout(&out).contains("sha256"), "{}", show(&out));
    assert!(d.log().is_empty(), "nothing installed: {:?}", d.log());
    assert!(d.slot().is_none());
    assert!(
        leftover_images(&d.dir).is_empty(),
        "{:?}",
        leftover_images(&d.dir)
    );
}

fn ab_flags(d: &Device) -> Vec<String> {
    [
        ("--reboot-cmd", "reboot"),
        ("--health-cmd", "health"),
        ("--confirm-cmd", "confirm"),
        ("--rollback-cmd", "rollback"),
    ]
    .iter()
    .flat_map(|(flag, name)| [flag.to_string(), d.cmd(name)])
    .collect()
}

fn update_with(d: &Device, flags: &[String], more: &[&str]) -> std::process::Output {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(more);
    d.update(&args)
}

#[test]
fn install_reboot_then_the_next_start_confirms() {
    let w = world();
    let d = w.device("ab");
    let flags = ab_flags(&d);
    let bytes = image(50_000, 7);
    w.offer("2.0.0", &bytes, false);
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("rebooting"), "{}", show(&out));
    assert_eq!(d.log(), vec!["install 2.0.0", "reboot 2.0.0"]);
    let st = d.state();
    assert_eq!(st["pending"]["phase"], "rebooting", "{st}");
    let status = agent_status(&d);
    assert!(
        status.contains("installed   not recorded yet")
            && status.contains(
                "pending     fw-2.0.0 (version 2.0.0, installed, waiting for the health check, \
                 0 starts so far, previous 1.0.0)"
            )
            && status.contains("last        rebooting fw-2.0.0 (version 2.0.0) at "),
        "{status}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.dir.join("ota/state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The next start: health check, confirm, record the version.
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("installed fw-2.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(
        d.log(),
        vec![
            "install 2.0.0",
            "reboot 2.0.0",
            "health 2.0.0",
            "confirm 2.0.0"
        ]
    );
    let st = d.state();
    assert_eq!(st["installed"], "2.0.0", "{st}");
    assert!(st["pending"].is_null(), "{st}");
    let status = agent_status(&d);
    assert!(
        status.contains("installed   2.0.0")
            && status.contains("pending     none")
            && status.contains("last        installed fw-2.0.0 (version 2.0.0) at "),
        "{status}"
    );

    // Still assigned: nothing more to do.
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("up to date: 2.0.0"), "{}", show(&out));
    assert_eq!(d.log().len(), 4);
    let status = agent_status(&d);
    assert!(
        status.contains("last        up_to_date 2.0.0 since "),
        "{status}"
    );
}

/// `moat-agent status` for the device; it must succeed.
fn agent_status(d: &Device) -> String {
    let out = run_with_deadline(
        std::process::Command::new(env!("CARGO_BIN_EXE_moat-agent"))
            .args(["status", "--dir"])
            .arg(&d.dir),
        std::time::Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", show(&out));
    stdout(&out)
}

#[test]
fn status_without_updates_says_so() {
    let w = world();
    let d = w.device("status");
    let status = agent_status(&d);
    assert!(
        status.contains(&format!("device      {DEVICE}"))
            && status.contains("updates     none yet"),
        "{status}"
    );
}

#[test]
fn a_second_update_cycle_while_one_runs_says_what_it_waits_for() {
    let w = world();
    let d = w.device("lock");
    // An install that holds the cycle until the test lets it go (bounded: 60 s).
    d.script(
        "install",
        "dir=\"$(dirname \"$0\")\"\n\
         touch \"$dir/installing\"\n\
         i=0; while [ ! -e \"$dir/go\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
         cp \"$1\" \"$dir/slot\"; echo \"install $MOAT_OTA_VERSION\" >> \"$dir/log\"",
    );
    w.offer("2.0.0", &image(10_000, 26), false);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| d.update(&[]));
        let started = d.tmp.0.join("installing");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !started.exists() && !first.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            started.exists(),
            "the first cycle never reached the install"
        );
        let second = d.update(&[]);
        std::fs::write(d.tmp.0.join("go"), b"").unwrap();
        assert_eq!(second.status.code(), Some(2), "{}", show(&second));
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(
            err.contains("another moat-agent is running an update cycle in")
                && !err.contains("identity"),
            "{}",
            show(&second)
        );
        let first = first.join().unwrap();
        assert!(first.status.success(), "{}", show(&first));
    });
    assert_eq!(d.log(), vec!["install 2.0.0"]);
    assert_eq!(d.state()["installed"], "2.0.0");
}

#[test]
fn a_failed_health_check_rolls_back_by_itself_and_is_not_retried() {
    let w = world();
    let d = w.device("rollback");
    let flags = ab_flags(&d);
    w.offer("2.0.0", &image(50_000, 8), false);
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    d.fail("health", true);
    let out = update_with(&d, &flags, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("rolled back"), "{}", show(&out));
    assert!(stdout(&out).contains("health says no"), "{}", show(&out));
    assert_eq!(
        d.log(),
        vec![
            "install 2.0.0",
            "reboot 2.0.0",
            "health 2.0.0",
            "rollback 2.0.0"
        ]
    );
    let st = d.state();
    assert!(st["installed"].is_null() && st["pending"].is_null(), "{st}");
    assert_eq!(st["failed"][0]["version"], "2.0.0", "{st}");

    // The director still assigns it: the agent does not loop install → rollback.
    d.fail("health", false);
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("not retrying"), "{}", show(&out));
    assert_eq!(d.log().len(), 4);
}

#[test]
fn too_many_starts_without_a_health_verdict_roll_back() {
    let w = world();
    let d = w.device("boots");
    // The health check "crashes the device": it kills the agent before answering.
    d.script(
        "health",
        "echo \"health $MOAT_OTA_VERSION\" >> \"$(dirname \"$0\")/log\"; kill -9 $PPID; sleep 5",
    );
    let flags = ab_flags(&d);
    w.offer("2.0.0", &image(10_000, 9), false);
    let out = update_with(&d, &flags, &["--max-boot-attempts", "2"]);
    assert!(out.status.success(), "{}", show(&out));
    for _ in 0..2 {
        let out = update_with(&d, &flags, &["--max-boot-attempts", "2"]);
        assert!(!out.status.success(), "killed: {}", show(&out));
    }
    assert_eq!(d.state()["pending"]["boots"], 2);
    let out = update_with(&d, &flags, &["--max-boot-attempts", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("within 2 starts"), "{}", show(&out));
    assert_eq!(d.log().last().map(String::as_str), Some("rollback 2.0.0"));
}

#[test]
fn a_failed_install_is_reported_and_nothing_is_pending() {
    let w = world();
    let d = w.device("installfail");
    d.script("install", "echo 'disk full' >&2; exit 1");
    w.offer("2.0.0", &image(10_000, 10), false);
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("disk full"), "{}", show(&out));
    assert!(d.state()["pending"].is_null());
}

#[test]
fn downgrades_are_refused_unless_signed_offline_as_allowed() {
    let w = world();
    let d = w.device("downgrade");
    w.offer("0.9.0", &image(10_000, 11), false);
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(stdout(&out).contains("downgrade refused"), "{}", show(&out));
    assert!(d.log().is_empty());

    // The agent's own record wins over the configured version.
    w.offer("2.0.0", &image(10_000, 12), false);
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    w.offer("1.5.0", &image(10_000, 13), false);
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        stdout(&out).contains("installed is 2.0.0"),
        "{}",
        show(&out)
    );

    // The offline targets role may allow it.
    w.offer("1.6.0", &image(10_000, 14), true);
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(d.state()["installed"], "1.6.0");
}

#[test]
fn consent_is_asked_only_when_the_campaign_requires_it() {
    let w = world();
    let d = w.device("consent");
    let consent = d.cmd("consent");
    // Not required: the consent command is not run, even though it would say no.
    d.fail("consent", true);
    w.offer("2.0.0", &image(10_000, 15), false);
    let out = d.update(&["--consent-cmd", &consent]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("installed fw-2.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(d.log(), vec!["install 2.0.0"]);

    // Required: the command is asked and says no; nothing is downloaded or installed.
    let gets = w.target_gets().len();
    w.server.with(|s| {
        let info = s.repo.publish("3.0.0", &image(10_000, 16), false);
        s.repo.assign_asking(DEVICE, Some(&info), true);
    });
    let out = d.update(&["--consent-cmd", &consent]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("consent declined for fw-3.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(w.target_gets().len(), gets, "nothing downloaded");
    assert_eq!(d.log(), vec!["install 2.0.0", "consent 3.0.0"]);
    let st = d.state();
    assert_eq!(st["installed"], "2.0.0", "{st}");
    assert_eq!(st["last"]["result"], "consent_declined", "{st}");

    // Asked again next cycle; a yes installs.
    d.fail("consent", false);
    let out = d.update(&["--consent-cmd", &consent]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        d.log(),
        vec![
            "install 2.0.0",
            "consent 3.0.0",
            "consent 3.0.0",
            "install 3.0.0"
        ]
    );
    assert_eq!(d.state()["installed"], "3.0.0");
}

#[test]
fn required_consent_that_nobody_can_give_is_declined() {
    let w = world();
    let d = w.device("noconsent");
    w.server.with(|s| {
        let info = s.repo.publish("2.0.0", &image(10_000, 17), false);
        s.repo.assign_asking(DEVICE, Some(&info), true);
    });
    // No consent command configured: declined, and the report says why.
    let out = d.update(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("consent declined for fw-2.0.0")
            && stdout(&out).contains("no consent command is configured"),
        "{}",
        show(&out)
    );
    // A consent command that cannot start: declined too, not installed.
    let missing = d.tmp.0.join("no-such-consent-program");
    let out = d.update(&["--consent-cmd", missing.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("consent declined") && stdout(&out).contains("cannot start"),
        "{}",
        show(&out)
    );
    assert!(w.target_gets().is_empty());
    assert!(d.log().is_empty(), "{:?}", d.log());
    let st = d.state();
    assert!(st["installed"].is_null(), "{st}");
    assert_eq!(st["last"]["result"], "consent_declined", "{st}");
}

#[test]
fn attack_tampered_targets_metadata_is_refused() {
    let w = world();
    let d = w.device("tamper");
    let bytes = image(10_000, 16);
    w.offer("2.0.0", &bytes, false);
    // An attacker on the hub's storage changes the signed length and hash of the image in
    // the newest targets.json (without the offline key).
    let evil = image(10_000, 17);
    w.server.with(|s| {
        let name = s
            .repo
            .files
            .keys()
            .filter(|k| k.starts_with("metadata/") && k.ends_with(".targets.json"))
            .max_by_key(|k| {
                k.trim_start_matches("metadata/")
                    .split('.')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .cloned()
            .unwrap();
        let text = String::from_utf8(s.repo.files[&name].clone()).unwrap();
        let good = moat_ota::keys::hex(&sha256(&bytes));
        assert!(text.contains(&good));
        let tampered = text.replace(&good, &moat_ota::keys::hex(&sha256(&evil)));
        s.repo.files.insert(name, tampered.into_bytes());
    });
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(stdout(&out).contains("refused"), "{}", show(&out));
    assert!(w.target_gets().is_empty(), "nothing downloaded");
    assert!(d.log().is_empty());
}

#[test]
fn attack_freeze_with_an_expired_timestamp_is_refused() {
    let pki = Pki::new(DEVICE);
    // The image repository was last re-signed two days ago: its timestamp (1 day) expired.
    let then = jiff::Timestamp::from_second(meta::now().as_second() - 2 * 86_400).unwrap();
    let mut repo = Repo::new_at(then);
    let info = repo.publish("2.0.0", &image(10_000, 18), false);
    repo.now = meta::now();
    repo.assign(DEVICE, Some(&info));
    let server = Server::start(&pki, repo);
    let d = Device::new("freeze", DEVICE, &pki, &server);
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        stdout(&out).contains("image repository: timestamp metadata has expired"),
        "{}",
        show(&out)
    );
    assert!(d.log().is_empty());
}

#[test]
fn attack_compromised_director_alone_cannot_install_an_unsigned_image() {
    let w = world();
    let d = w.device("director");
    let real = w.offer("2.0.0", &image(10_000, 19), false);
    // The director (online keys) names an image the offline targets role never signed.
    let evil = image(10_000, 20);
    w.server.with(|s| {
        let mut fake = real.clone();
        fake.name = "fw-6.6.6".into();
        fake.version = "6.6.6".into();
        fake.sha256 = moat_ota::keys::hex(&sha256(&evil));
        s.repo.assign(DEVICE, Some(&fake));
    });
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(stdout(&out).contains("do not list"), "{}", show(&out));
    assert!(d.log().is_empty());
}

#[test]
fn missing_roots_and_flags_are_clear_misconfigurations() {
    let w = world();
    let d = w.device("config");
    std::fs::remove_file(d.dir.join("director-root.json")).unwrap();
    let out = d.update(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pinned director root"),
        "{}",
        show(&out)
    );
    let out = run_with_deadline(
        std::process::Command::new(env!("CARGO_BIN_EXE_moat-agent"))
            .args(["update", "--once", "--dir"])
            .arg(&d.dir)
            .args(["--hardware", "x"]),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--install-cmd"));
}

#[test]
fn every_step_is_reported_over_mqtt_with_mutual_tls() {
    let w = world();
    let broker = Broker::start(&w.pki);
    let d = w.device("reports");
    let mut flags = ab_flags(&d);
    flags.extend(["--mqtt".to_owned(), broker.url()]);
    let inventory = d.tmp.0.join("inventory.json");
    std::fs::write(
        &inventory,
        concat!(
            r#"{"packages":[{"name":"busybox","version":"1.36.1","#,
            r#""purl":"pkg:generic/busybox@1.36.1"}]}"#
        ),
    )
    .unwrap();
    flags.extend(["--inventory".to_owned(), inventory.display().to_string()]);
    w.offer("2.0.0", &image(400_000, 21), false);
    // A real reboot ends the agent at once: the reports must already be out.
    d.script(
        "reboot",
        "echo \"reboot $MOAT_OTA_VERSION\" >> \"$(dirname \"$0\")/log\"; kill -9 $PPID; sleep 5",
    );

    let out = update_with(&d, &flags, &[]);
    assert!(
        !out.status.success(),
        "the reboot ends the agent: {}",
        show(&out)
    );
    assert_eq!(d.state()["pending"]["phase"], "rebooting");
    let got = broker.messages_until(|_, v| v["state"] == "rebooting");
    let inv: Vec<_> = got
        .iter()
        .filter(|(t, _)| t == "devices/dev1/ota/inventory")
        .collect();
    assert_eq!(inv.len(), 1, "{got:?}");
    assert_eq!(inv[0].1["hardware"], "testhw");
    assert_eq!(inv[0].1["installed"], "1.0.0");
    assert_eq!(inv[0].1["packages"][0]["name"], "busybox");
    let steps: Vec<(String, u64)> = got
        .iter()
        .filter(|(t, _)| t == "devices/dev1/ota/status")
        .map(|(_, v)| {
            assert_eq!(v["target"], "fw-2.0.0", "{v}");
            assert_eq!(v["version"], "2.0.0", "{v}");
            assert_eq!(v["campaign"], "campaign-1", "{v}");
            assert!(v["error"].is_null(), "{v}");
            (
                v["state"].as_str().unwrap_or_default().to_owned(),
                v["progress"].as_u64().unwrap_or(999),
            )
        })
        .collect();
    // Download progress at coarse steps (how many depends on the chunk sizes), then the
    // install steps.
    let (download, rest) = steps.split_at(steps.len() - 3);
    assert_eq!(
        download.first(),
        Some(&("downloading".to_owned(), 0)),
        "{steps:?}"
    );
    assert!(
        download
            .windows(2)
            .all(|w| w[0].0 == "downloading" && w[1].0 == "downloading" && w[0].1 < w[1].1),
        "{steps:?}"
    );
    assert!(
        download.iter().all(|(_, p)| [0, 25, 50, 75].contains(p)),
        "{steps:?}"
    );
    assert!(
        download.len() >= 2,
        "progress during a 400 kB download: {steps:?}"
    );
    let rest: Vec<(&str, u64)> = rest.iter().map(|(s, p)| (s.as_str(), *p)).collect();
    assert_eq!(
        rest,
        vec![("downloaded", 100), ("installing", 100), ("rebooting", 100)],
        "{steps:?}"
    );

    // After the restart: installed, and the inventory names the new version.
    let out = update_with(&d, &flags, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let got = broker.messages_until(|t, _| t == "devices/dev1/ota/inventory");
    assert_eq!(got[0].1["state"], "installed", "{got:?}");
    assert_eq!(got[0].1["progress"], 100);
    assert_eq!(got[1].1["installed"], "2.0.0", "{got:?}");

    // A refused update is reported with its reason.
    w.offer("1.5.0", &image(1_000, 22), false);
    let out = update_with(&d, &flags, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let got = broker.messages_until(|t, _| t == "devices/dev1/ota/status");
    let refused = &got.last().unwrap().1;
    assert_eq!(refused["state"], "refused", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("downgrade"),
        "{refused}"
    );

    // A failed health check: rolled_back, with the health command's complaint.
    w.offer("3.0.0", &image(1_000, 23), false);
    let out = update_with(&d, &flags, &[]);
    assert!(
        !out.status.success(),
        "the reboot ends the agent: {}",
        show(&out)
    );
    d.fail("health", true);
    let out = update_with(&d, &flags, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let got = broker.messages_until(|_, v| v["state"] == "rolled_back");
    let rolled = &got.last().unwrap().1;
    assert_eq!(rolled["version"], "3.0.0");
    assert!(
        rolled["error"]
            .as_str()
            .unwrap_or_default()
            .contains("health says no"),
        "{rolled}"
    );
}

#[test]
fn an_unreachable_broker_does_not_block_or_fail_an_update() {
    let w = world();
    let d = w.device("nobroker");
    w.offer("2.0.0", &image(10_000, 24), false);
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mqtts://localhost:{port}");
    let out = d.update(&["--mqtt", &url]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(d.state()["installed"], "2.0.0");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("update report not delivered"),
        "{}",
        show(&out)
    );
}

#[test]
fn run_checks_for_updates_next_to_renewal() {
    let w = world();
    let d = w.device("run");
    w.offer("2.0.0", &image(10_000, 25), false);
    let install = d.cmd("install");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moat-agent"))
        .args(["run", "--dir"])
        .arg(&d.dir)
        .args(["--hardware", "testhw", "--installed-version", "1.0.0"])
        .args([
            "--install-cmd",
            &install,
            "--mqtt",
            "off",
            "--update-every",
            "5s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let installed = loop {
        let state = std::fs::read(d.dir.join("ota/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if state.as_ref().is_some_and(|s| s["installed"] == "2.0.0") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(installed, "run did not install the update");
    assert_eq!(d.log(), vec!["install 2.0.0"]);
}
