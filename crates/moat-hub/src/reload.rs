//! Configuration reload on SIGHUP, without dropping a session.
//!
//! Put in force at once: the shield's limits (`[shield]`, except `tracked-entries`),
//! detection and responses (`[detect]`, except its table sizes, the model's seed and
//! switching detection on or off), the console's session lifetimes (`[console]`) and the
//! validity of device certificates issued from then on. Everything else (listeners, the data
//! directory, server names, broker and connection limits, the CA's settings, the alert
//! webhook) waits for a restart; a reload names those that differ, in the log and in the
//! audit trail (`config.reload`). A file that does not parse, or values out of range, change
//! nothing (`config.reload` with outcome error and the file and line).

use std::sync::{Arc, Mutex, PoisonError};

use moat_audit::{Entry, Outcome};
use tokio::sync::watch;

use crate::config::{ConfigError, HubConfig};

/// What a reload can change, and the configuration it compares against.
#[derive(Debug)]
pub(crate) struct Live {
    /// The configuration in force (as far as it can change; the rest as started).
    pub(crate) current: Mutex<HubConfig>,
    pub(crate) shield: Arc<moat_net::Shield>,
    /// The defence task's configuration (see `defence::run`).
    pub(crate) detect: watch::Sender<moat_detect::DetectConfig>,
    pub(crate) sessions: Arc<crate::console::Sessions>,
    pub(crate) identity: Arc<crate::identity::Identity>,
}

/// The result of one reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Sections read again and put in force.
    pub(crate) applied: Vec<&'static str>,
    /// Settings that differ from those in force and wait for a restart.
    pub(crate) waiting: Vec<&'static str>,
}

/// The settings of `next` that differ from `current` and cannot change while running.
fn waiting(current: &HubConfig, next: &HubConfig) -> Vec<&'static str> {
    let mut w = Vec::new();
    let mut differs = |name, changed: bool| {
        if changed {
            w.push(name);
        }
    };
    differs("data-dir", current.data_dir != next.data_dir);
    differs(
        "mqtt-tls-listen",
        current.mqtt_tls_listen != next.mqtt_tls_listen,
    );
    differs(
        "mqtt-wss-listen",
        current.mqtt_wss_listen != next.mqtt_wss_listen,
    );
    differs(
        "danger-mqtt-plaintext-listen",
        current.danger_mqtt_plaintext_listen != next.danger_mqtt_plaintext_listen,
    );
    differs(
        "danger-allow-anonymous",
        current.danger_allow_anonymous != next.danger_allow_anonymous,
    );
    differs("api-listen", current.api_listen != next.api_listen);
    differs("server-names", current.server_names != next.server_names);
    differs(
        "max-keepalive and [limits] (broker)",
        current.broker != next.broker,
    );
    differs("[limits] (deadlines)", current.net != next.net);
    differs("ca-algorithm", current.ca.algorithm != next.ca.algorithm);
    differs(
        "ca-passphrase-file",
        current.ca.passphrase.is_some() != next.ca.passphrase.is_some(),
    );
    differs(
        "[alert-webhook]",
        current.alert_webhook != next.alert_webhook,
    );
    differs(
        "[shield] tracked-entries",
        current.shield.tracked != next.shield.tracked,
    );
    let on = |c: &HubConfig| c.detect.mode != moat_detect::Mode::Off;
    differs("[detect] mode on/off", on(current) != on(next));
    differs(
        "[detect.limits]",
        current.detect.limits != next.detect.limits,
    );
    differs(
        "[detect.learning] hst_seed",
        current.detect.learning.hst_seed != next.detect.learning.hst_seed,
    );
    w
}

impl Live {
    /// Puts what can change of `next` in force and says what waits for a restart.
    pub(crate) fn apply(&self, next: HubConfig) -> Report {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = waiting(&current, &next);
        self.shield.set_limits(next.shield.clone());
        let mut detect = next.detect.clone();
        if (detect.mode == moat_detect::Mode::Off)
            != (current.detect.mode == moat_detect::Mode::Off)
        {
            // Switching detection on or off rewires the hub: the mode in force stays.
            detect.mode = current.detect.mode;
        }
        self.detect.send_replace(detect.clone());
        self.sessions.set_settings(next.console);
        self.identity.set_device_validity(next.device_cert_validity);
        current.shield = next.shield;
        current.detect = detect;
        current.console = next.console;
        current.device_cert_validity = next.device_cert_validity;
        Report {
            applied: vec![
                "[shield]",
                "[detect]",
                "[console]",
                "device-cert-validity-days",
            ],
            waiting,
        }
    }

    /// Reads the configuration with `read`, applies it and records the outcome.
    pub(crate) fn reload(
        &self,
        read: impl FnOnce() -> Result<HubConfig, ConfigError>,
    ) -> Result<Report, ConfigError> {
        let now = crate::identity::now_ms();
        match read() {
            Ok(next) => {
                let report = self.apply(next);
                if report.waiting.is_empty() {
                    tracing::info!(applied = ?report.applied, "configuration reloaded");
                } else {
                    tracing::warn!(
                        applied = ?report.applied,
                        waiting = ?report.waiting,
                        "configuration reloaded; these changes take effect after a restart"
                    );
                }
                self.identity.audit.record(
                    Entry::new(now, "hub:sighup", "config.reload", "hub", Outcome::Success)
                        .with("applied", report.applied.join(", "))
                        .with("restart_required", report.waiting.join(", ")),
                );
                Ok(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the hub keeps its configuration");
                self.identity.audit.record(
                    Entry::new(now, "hub:sighup", "config.reload", "hub", Outcome::Error)
                        .with("error", &e),
                );
                Err(e)
            }
        }
    }
}
