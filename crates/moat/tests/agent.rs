//! The device agent (`moat-agent`, as a library) against the real hub: enrollment with a
//! token over EST, the files it writes used by mosquitto, renewal over mutual TLS while the
//! device stays connected, and the refusals (used-up token, wrong CA, identity present,
//! revoked device).

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use moat_agent::{
    AgentError, Blame, EnrollOptions, EnrollmentToken, HubUrl, Identity, IdentityFiles, Overrides,
    RenewMode, RenewOutcome, RenewalThreshold,
};
use moat_types::DeviceId;
use support::*;

/// A single-use enrollment token.
fn token(hub: &Hub) -> EnrollmentToken {
    let t = cli_ok(hub, &["token", "create", "--uses", "1", "--ttl", "10m"]);
    EnrollmentToken::new(t).expect("moat token create prints a token")
}

/// The hub's root CA, which its API certificate chains to.
fn root_ca(hub: &Hub) -> PathBuf {
    hub.data_dir().join("pki").join("root-ca.crt")
}

fn enroll_options(
    hub: &Hub,
    ca: &Path,
    token: EnrollmentToken,
    id: &str,
    dir: &Path,
) -> EnrollOptions {
    let url =
        HubUrl::parse(&format!("https://localhost:{}", hub.addrs.api.port())).expect("hub URL");
    EnrollOptions::new(url, ca, token, DeviceId::parse(id).expect("device id"), dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn via(identity: &Identity) -> Via {
    Via::Files {
        cert: identity.files.cert.clone(),
        key: identity.files.key.clone(),
        ca: identity.files.ca.clone(),
    }
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn agent_enrolls_and_renews_while_the_device_stays_connected() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let rt = runtime();
    let dir = hub.scratch("agent1");
    let opts = enroll_options(&hub, &root_ca(&hub), token(&hub), "agent1", &dir);
    let enrolled = rt
        .block_on(moat_agent::enroll(&opts))
        .unwrap_or_else(|e| panic!("enroll: {e}"));
    assert_eq!(enrolled.device_id.as_str(), "agent1");
    let files = IdentityFiles::in_dir(&dir);
    assert_eq!(enrolled.files, files);
    #[cfg(unix)]
    assert_eq!(mode(&files.key), 0o600, "device.key is not 0600");
    let chain = fs::read_to_string(&files.cert).expect("device.crt");
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "device.crt holds the leaf and the issuing CA\n{chain}"
    );
    assert_eq!(
        fs::read(&files.ca).expect("ca.crt"),
        fs::read(root_ca(&hub)).expect("root-ca.crt"),
        "ca.crt is the CA file given"
    );
    let st = moat_agent::status(&dir, &Overrides::default()).expect("status");
    assert_eq!(st.identity.serial, enrolled.serial);
    assert!(
        !st.due && !st.expired,
        "a fresh certificate is not due: {st:?}"
    );

    // The agent's files work with a third-party client.
    let device = via(&enrolled);
    mosquitto_pub(
        &hub,
        &device,
        Mqtt::V5,
        Some("agent1"),
        &["-t", "devices/agent1/x", "-m", "hello", "-q", "1"],
    )
    .assert_ok();

    // Not due: nothing changes.
    match rt.block_on(moat_agent::renew(&dir, RenewMode::WhenDue)) {
        Ok(RenewOutcome::NotDue { identity, .. }) => assert_eq!(identity.serial, enrolled.serial),
        other => panic!("renew when not due: {other:?}"),
    }

    // Forced renewal while a session with the old certificate is open.
    let mut sub = Sub::start(
        &hub,
        &device,
        Mqtt::V5,
        Some("agent1"),
        &["-t", "devices/agent1/#", "-q", "1"],
    );
    let old_key = fs::read(&files.key).expect("device.key");
    let renewed = match rt.block_on(moat_agent::renew(&dir, RenewMode::Now)) {
        Ok(RenewOutcome::Renewed {
            previous_serial,
            identity,
        }) => {
            assert_eq!(previous_serial, enrolled.serial);
            identity
        }
        other => panic!("forced renewal: {other:?}"),
    };
    assert_ne!(
        renewed.serial, enrolled.serial,
        "renewal issued no new serial"
    );
    assert_ne!(
        fs::read(&files.key).expect("device.key"),
        old_key,
        "renewal kept the old key"
    );
    #[cfg(unix)]
    assert_eq!(mode(&files.key), 0o600, "renewed device.key is not 0600");
    let pem = chain_pem(&files);
    let due_at = |when| {
        moat_agent::renewal_due(pem.as_bytes(), when, RenewalThreshold::DEFAULT)
            .expect("renewal_due")
    };
    assert!(!due_at(renewed.not_before), "due when just issued");
    assert!(due_at(renewed.not_after), "not due at expiry");
    let st = moat_agent::status(&dir, &Overrides::default()).expect("status");
    assert!(!st.due, "the renewed certificate is due at once: {st:?}");

    // The open session survived the renewal.
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &[
            "-t",
            "devices/agent1/after-renewal",
            "-m",
            "still-here",
            "-q",
            "1",
        ],
    )
    .assert_ok();
    sub.expect("devices/agent1/after-renewal", "still-here");
    sub.kill();

    // The renewed files connect.
    mosquitto_pub(
        &hub,
        &via(&renewed),
        Mqtt::V5,
        Some("agent1"),
        &["-t", "devices/agent1/renewed", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    assert_eq!(st.identity.serial, renewed.serial);

    // A second enrollment into the same directory is refused before anything is sent.
    let again = enroll_options(&hub, &root_ca(&hub), token(&hub), "agent1", &dir);
    match rt.block_on(moat_agent::enroll(&again)) {
        Err(AgentError::IdentityExists { .. }) => {}
        other => panic!("enrolling over an identity: {other:?}"),
    }
    assert_eq!(
        moat_agent::status(&dir, &Overrides::default())
            .expect("status")
            .identity
            .serial,
        renewed.serial,
        "the refused enrollment changed the identity"
    );
}

fn chain_pem(files: &IdentityFiles) -> String {
    fs::read_to_string(&files.cert).expect("device.crt")
}

#[test]
fn used_up_token_wrong_ca_and_revoked_device_are_refused_with_clear_errors() {
    let hub = Hub::start(HubOptions::new());
    let rt = runtime();
    let once = token(&hub);

    let first = hub.scratch("agent2");
    rt.block_on(moat_agent::enroll(&enroll_options(
        &hub,
        &root_ca(&hub),
        once.clone(),
        "agent2",
        &first,
    )))
    .unwrap_or_else(|e| panic!("first enrollment: {e}"));

    // The same single-use token again: the hub refuses with its reason.
    let second = hub.scratch("agent3");
    let err = rt
        .block_on(moat_agent::enroll(&enroll_options(
            &hub,
            &root_ca(&hub),
            once,
            "agent3",
            &second,
        )))
        .expect_err("a used-up token enrolled a second device");
    match &err {
        AgentError::Refused {
            operation: "simpleenroll",
            status: 401,
            message,
        } => assert!(message.contains("token"), "unclear reason: {err}"),
        other => panic!("expected a 401 refusal, got {other:?}"),
    }
    assert_eq!(err.blame(), Blame::Refused);
    assert!(
        !IdentityFiles::in_dir(&second).key.exists(),
        "a refused enrollment wrote a key"
    );

    // A CA file the hub does not chain to: nothing is sent, so the token stays usable.
    let foreign = hub.scratch("foreign");
    foreign_ca_device(&foreign, "agent4");
    let fresh = token(&hub);
    let third = hub.scratch("agent4");
    let err = rt
        .block_on(moat_agent::enroll(&enroll_options(
            &hub,
            &foreign.join("foreign-ca.crt"),
            fresh.clone(),
            "agent4",
            &third,
        )))
        .expect_err("enrolled with a CA the hub does not chain to");
    assert!(
        matches!(err, AgentError::HubNotTrusted(_)),
        "expected a verification failure, got {err:?}"
    );
    assert_eq!(err.blame(), Blame::Untrusted);
    assert!(
        !IdentityFiles::in_dir(&third).key.exists(),
        "an unverified enrollment wrote a key"
    );
    rt.block_on(moat_agent::enroll(&enroll_options(
        &hub,
        &root_ca(&hub),
        fresh,
        "agent4",
        &third,
    )))
    .unwrap_or_else(|e| panic!("the token was consumed by the failed attempt: {e}"));

    // A revoked device cannot renew, and its files are left as they were.
    cli_ok(
        &hub,
        &["device", "revoke", "agent2", "--reason", "keyCompromise"],
    );
    let files = IdentityFiles::in_dir(&first);
    let key_before = fs::read(&files.key).expect("device.key");
    let err = rt
        .block_on(moat_agent::renew(&first, RenewMode::Now))
        .expect_err("a revoked device renewed");
    assert!(
        matches!(err.blame(), Blame::Unreachable | Blame::Refused),
        "unexpected error for a revoked device: {err:?}"
    );
    assert_eq!(fs::read(&files.key).expect("device.key"), key_before);
}
