//! Hub configuration: an optional TOML file, overridden by command-line flags.
//!
//! Keys are the flag names in kebab-case; unknown keys and out-of-range values are rejected
//! with the file name and line.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_broker::BrokerConfig;
use moat_net::NetLimits;

/// The default MQTT over TLS listener.
pub const DEFAULT_MQTT_TLS_LISTEN: &str = "127.0.0.1:8883";
/// The default HTTPS API listener.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8443";
/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "moat-data";

/// A configuration error, with where it was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A combination of settings is not allowed.
    #[error("{0}")]
    Conflict(String),
}

fn ranged<'de, D, T>(d: D, min: T, max: T, what: &str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display + Copy,
{
    let v = T::deserialize(d)?;
    if v < min || v > max {
        return Err(serde::de::Error::custom(format!(
            "{what} must be between {min} and {max}, got {v}"
        )));
    }
    Ok(Some(v))
}

macro_rules! ranged_fn {
    ($name:ident, $t:ty, $min:expr, $max:expr, $what:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
            ranged(d, $min, $max, $what)
        }
    };
}

ranged_fn!(keepalive, u16, 1, u16::MAX, "max-keepalive");
ranged_fn!(cert_days, u32, 1, 365, "device-cert-validity-days");
ranged_fn!(packet_size, u32, 128, 268_435_460, "max-packet-size");
ranged_fn!(queued, usize, 1, 10_000_000, "max-queued-messages");
ranged_fn!(receive_max, u16, 1, u16::MAX, "receive-maximum");
ranged_fn!(inflight, u16, 1, u16::MAX, "max-inflight-outbound");
ranged_fn!(topic_len, usize, 1, 65_535, "max-topic-length");
ranged_fn!(topic_levels, usize, 1, 1024, "max-topic-levels");
ranged_fn!(subscriptions, usize, 1, 1_000_000, "max-subscriptions");
ranged_fn!(alias_max, u16, 0, u16::MAX, "topic-alias-maximum");
ranged_fn!(timeout_secs, u64, 1, 3600, "timeout");
ranged_fn!(
    expiry_secs,
    u64,
    0,
    u64::from(u32::MAX),
    "max-session-expiry-secs"
);
ranged_fn!(retained, usize, 0, 100_000_000, "max-retained-messages");
ranged_fn!(console_secs, u64, 5, 7 * 86_400, "console session");

/// The `[console]` table: the web console's session lifetimes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsoleFile {
    /// A session unused for this long ends (default 900).
    #[serde(default, deserialize_with = "console_secs")]
    session_idle_secs: Option<u64>,
    /// A session ends this long after login, used or not (default 28800).
    #[serde(default, deserialize_with = "console_secs")]
    session_max_secs: Option<u64>,
}

/// The web console's session lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// A session unused for this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, used or not.
    pub session_max: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(15 * 60),
            session_max: Duration::from_secs(8 * 3600),
        }
    }
}

ranged_fn!(conn_rate, u32, 1, 1_000_000, "connection rate");
ranged_fn!(conn_burst, u32, 1, 10_000_000, "connection burst");
ranged_fn!(ipv4_prefix, u8, 8, 32, "ipv4-network-prefix");
ranged_fn!(ipv6_prefix, u8, 16, 128, "ipv6-network-prefix");
ranged_fn!(concurrent, u32, 1, 10_000_000, "max-concurrent-per-address");
ranged_fn!(tracked, usize, 1_024, 10_000_000, "tracked-entries");
ranged_fn!(ban_failures, u32, 1, 1_000_000, "auto-ban-failures");
ranged_fn!(ban_secs, u64, 1, 365 * 86_400, "auto-ban duration");

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<moat_net::IpNet>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `[shield]` table: the pre-authentication shield of the MQTT listeners (see
/// `moat_net::ShieldLimits` for the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShieldFile {
    #[serde(default, deserialize_with = "conn_rate")]
    max_connection_rate_per_address: Option<u32>,
    #[serde(default, deserialize_with = "conn_burst")]
    connection_burst_per_address: Option<u32>,
    #[serde(default, deserialize_with = "conn_rate")]
    max_connection_rate_per_network: Option<u32>,
    #[serde(default, deserialize_with = "conn_burst")]
    connection_burst_per_network: Option<u32>,
    #[serde(default, deserialize_with = "ipv4_prefix")]
    ipv4_network_prefix: Option<u8>,
    #[serde(default, deserialize_with = "ipv6_prefix")]
    ipv6_network_prefix: Option<u8>,
    #[serde(default, deserialize_with = "concurrent")]
    max_concurrent_per_address: Option<u32>,
    #[serde(default, deserialize_with = "tracked")]
    tracked_entries: Option<usize>,
    /// Networks exempt from rates, concurrent caps and automatic address bans.
    #[serde(default, deserialize_with = "networks")]
    exempt: Option<Vec<moat_net::IpNet>>,
    #[serde(default, deserialize_with = "ban_failures")]
    auto_ban_failures: Option<u32>,
    #[serde(default, deserialize_with = "ban_secs")]
    auto_ban_window_secs: Option<u64>,
    #[serde(default, deserialize_with = "ban_secs")]
    auto_ban_base_secs: Option<u64>,
    #[serde(default, deserialize_with = "ban_secs")]
    auto_ban_max_secs: Option<u64>,
    #[serde(default, deserialize_with = "ban_secs")]
    auto_ban_forget_after_secs: Option<u64>,
}

impl ShieldFile {
    fn resolve(self) -> Result<moat_net::ShieldLimits, ConfigError> {
        let mut l = moat_net::ShieldLimits::default();
        macro_rules! set {
            ($($src:ident => $dst:expr),* $(,)?) => { $( if let Some(v) = self.$src { $dst = v; } )* };
        }
        set!(
            max_connection_rate_per_address => l.address_rate,
            connection_burst_per_address => l.address_burst,
            max_connection_rate_per_network => l.network_rate,
            connection_burst_per_network => l.network_burst,
            ipv4_network_prefix => l.ipv4_prefix,
            ipv6_network_prefix => l.ipv6_prefix,
            max_concurrent_per_address => l.max_concurrent_per_address,
            tracked_entries => l.tracked,
            exempt => l.exempt,
            auto_ban_failures => l.auto_ban.failures,
        );
        let secs = Duration::from_secs;
        if let Some(s) = self.auto_ban_window_secs {
            l.auto_ban.window = secs(s);
        }
        if let Some(s) = self.auto_ban_base_secs {
            l.auto_ban.base = secs(s);
        }
        if let Some(s) = self.auto_ban_max_secs {
            l.auto_ban.max = secs(s);
        }
        if let Some(s) = self.auto_ban_forget_after_secs {
            l.auto_ban.forget_after = secs(s);
        }
        if l.auto_ban.max < l.auto_ban.base {
            return Err(ConfigError::Conflict(
                "[shield] auto-ban-max-secs must be at least auto-ban-base-secs".into(),
            ));
        }
        Ok(l)
    }
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsFile {
    #[serde(default, deserialize_with = "packet_size")]
    max_packet_size: Option<u32>,
    #[serde(default, deserialize_with = "queued")]
    max_queued_messages: Option<usize>,
    #[serde(default, deserialize_with = "receive_max")]
    receive_maximum: Option<u16>,
    #[serde(default, deserialize_with = "inflight")]
    max_inflight_outbound: Option<u16>,
    #[serde(default, deserialize_with = "topic_len")]
    max_topic_length: Option<usize>,
    #[serde(default, deserialize_with = "topic_levels")]
    max_topic_levels: Option<usize>,
    #[serde(default, deserialize_with = "subscriptions")]
    max_subscriptions: Option<usize>,
    #[serde(default, deserialize_with = "alias_max")]
    topic_alias_maximum: Option<u16>,
    #[serde(default, deserialize_with = "timeout_secs")]
    connect_timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "timeout_secs")]
    tls_handshake_timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "timeout_secs")]
    write_timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "expiry_secs")]
    max_session_expiry_secs: Option<u64>,
    #[serde(default, deserialize_with = "retained")]
    max_retained_messages: Option<usize>,
}

/// The configuration file, and the same settings given as flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// MQTT over mutual TLS listener.
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over mutual TLS listener (path `/mqtt`).
    pub mqtt_wss_listen: Option<SocketAddr>,
    /// Plaintext MQTT listener: dangerous.
    pub danger_mqtt_plaintext_listen: Option<SocketAddr>,
    /// Accept anonymous clients on the plaintext listener: dangerous.
    pub danger_allow_anonymous: Option<bool>,
    /// Largest keep alive granted, seconds.
    #[serde(default, deserialize_with = "keepalive")]
    pub max_keepalive: Option<u16>,
    /// HTTPS listener for `/metrics`, `/healthz` and later the API.
    pub api_listen: Option<SocketAddr>,
    /// Extra DNS names or IP addresses for the server certificate.
    pub server_names: Option<Vec<String>>,
    /// Key algorithm of the CA created at first start: `p256` (default) or `ed25519`.
    pub ca_algorithm: Option<CaAlgorithm>,
    /// File holding the passphrase the CA key files are encrypted with (0600).
    pub ca_passphrase_file: Option<PathBuf>,
    /// Lifetime of device certificates the hub issues (enrollment, renewal, API), days.
    #[serde(default, deserialize_with = "cert_days")]
    pub device_cert_validity_days: Option<u32>,
    /// Limits.
    pub limits: Option<LimitsFile>,
    /// The web console.
    pub console: Option<ConsoleFile>,
    /// The pre-authentication shield.
    pub shield: Option<ShieldFile>,
    /// Behaviour monitoring, detection and the response ladder (moat-detect's schema).
    pub detect: Option<moat_detect::DetectConfig>,
    /// Where alerts are POSTed, signed.
    pub alert_webhook: Option<WebhookFile>,
}

/// The `[alert-webhook]` table (see `moat_hub::webhook`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebhookFile {
    url: String,
    secret_file: PathBuf,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    danger_plaintext: bool,
}

impl Settings {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: e.message().to_owned(),
            }
        })
    }

    /// Applies `overrides` (from flags) on top of `self`.
    pub fn merge(mut self, overrides: Settings) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if overrides.$f.is_some() { self.$f = overrides.$f; } )* };
        }
        take!(
            data_dir,
            mqtt_tls_listen,
            mqtt_wss_listen,
            danger_mqtt_plaintext_listen,
            danger_allow_anonymous,
            max_keepalive,
            api_listen,
            server_names,
            device_cert_validity_days,
            ca_algorithm,
            ca_passphrase_file,
            limits,
            console,
            shield,
            detect,
            alert_webhook
        );
        self
    }

    /// Resolves defaults and checks combinations.
    pub fn resolve(self) -> Result<HubConfig, ConfigError> {
        let allow_anonymous = self.danger_allow_anonymous.unwrap_or(false);
        if allow_anonymous && self.danger_mqtt_plaintext_listen.is_none() {
            return Err(ConfigError::Conflict(
                "danger-allow-anonymous needs danger-mqtt-plaintext-listen: anonymous clients \
                 are only ever accepted on the plaintext listener"
                    .into(),
            ));
        }
        let mut broker = BrokerConfig::default();
        let mut net = NetLimits::default();
        if let Some(ka) = self.max_keepalive {
            broker.max_keep_alive = Duration::from_secs(u64::from(ka));
        }
        if let Some(l) = self.limits {
            macro_rules! set {
                ($($src:ident => $dst:expr),* $(,)?) => { $( if let Some(v) = l.$src { $dst = v; } )* };
            }
            set!(
                max_packet_size => broker.max_packet_size,
                max_queued_messages => broker.max_queued_messages,
                receive_maximum => broker.receive_maximum,
                max_inflight_outbound => broker.max_inflight_outbound,
                max_topic_length => broker.max_topic_length,
                max_topic_levels => broker.max_topic_levels,
                max_subscriptions => broker.max_subscriptions,
                topic_alias_maximum => broker.topic_alias_maximum,
                max_retained_messages => broker.max_retained_messages,
            );
            if let Some(s) = l.connect_timeout_secs {
                net.connect_timeout = Duration::from_secs(s);
            }
            if let Some(s) = l.tls_handshake_timeout_secs {
                net.tls_handshake_timeout = Duration::from_secs(s);
            }
            if let Some(s) = l.write_timeout_secs {
                net.write_timeout = Duration::from_secs(s);
            }
            if let Some(s) = l.max_session_expiry_secs {
                broker.max_session_expiry = Duration::from_secs(s);
            }
        }
        let parse = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|e| ConfigError::Conflict(e.to_string()))
        };
        Ok(HubConfig {
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            mqtt_tls_listen: match self.mqtt_tls_listen {
                Some(a) => a,
                None => parse(DEFAULT_MQTT_TLS_LISTEN)?,
            },
            mqtt_wss_listen: self.mqtt_wss_listen,
            danger_mqtt_plaintext_listen: self.danger_mqtt_plaintext_listen,
            danger_allow_anonymous: allow_anonymous,
            api_listen: match self.api_listen {
                Some(a) => a,
                None => parse(DEFAULT_API_LISTEN)?,
            },
            server_names: self.server_names.unwrap_or_default(),
            device_cert_validity: self
                .device_cert_validity_days
                .map_or(moat_pki::DEFAULT_DEVICE_CERT_VALIDITY, |d| {
                    Duration::from_secs(u64::from(d) * 86_400)
                }),
            ca: crate::CaSettings {
                algorithm: match self.ca_algorithm {
                    Some(CaAlgorithm::Ed25519) => moat_pki::KeyAlgorithm::Ed25519,
                    Some(CaAlgorithm::P256) | None => moat_pki::KeyAlgorithm::EcdsaP256Sha256,
                },
                passphrase: match &self.ca_passphrase_file {
                    Some(f) => {
                        Some(moat_pki::Passphrase::read_file(f).map_err(|e| {
                            ConfigError::Conflict(format!("ca-passphrase-file: {e}"))
                        })?)
                    }
                    None => None,
                },
            },
            broker,
            net,
            shield: self.shield.map_or_else(
                || Ok(moat_net::ShieldLimits::default()),
                ShieldFile::resolve,
            )?,
            detect: {
                let detect = self.detect.unwrap_or_default();
                detect.validate().map_err(|errors| {
                    ConfigError::Conflict(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
                detect
            },
            alert_webhook: match self.alert_webhook {
                None => None,
                Some(w) => {
                    let settings = crate::webhook::WebhookSettings {
                        url: w.url,
                        secret_file: w.secret_file,
                        ca_file: w.ca_file,
                        danger_plaintext: w.danger_plaintext,
                    };
                    settings.check().map_err(ConfigError::Conflict)?;
                    Some(settings)
                }
            },
            reload: None,
            console: self.console.map_or_else(ConsoleSettings::default, |c| {
                let d = ConsoleSettings::default();
                ConsoleSettings {
                    session_idle: c
                        .session_idle_secs
                        .map_or(d.session_idle, Duration::from_secs),
                    session_max: c
                        .session_max_secs
                        .map_or(d.session_max, Duration::from_secs),
                }
            }),
        })
    }
}

/// CA key algorithms a hub can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaAlgorithm {
    /// ECDSA P-256 with SHA-256 (default): every device TLS stack accepts it.
    P256,
    /// Ed25519: smaller and faster; mbedTLS devices cannot verify it.
    Ed25519,
}

/// Reads the configuration again, from the same file and flags the hub started with
/// (SIGHUP). `moat serve` installs one; a hub started otherwise reloads certificates only.
#[derive(Clone)]
pub struct Reloader(std::sync::Arc<dyn Fn() -> Result<HubConfig, ConfigError> + Send + Sync>);

impl Reloader {
    /// A reloader calling `read`.
    pub fn new(read: impl Fn() -> Result<HubConfig, ConfigError> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(read))
    }

    /// Reads the configuration now.
    pub fn read(&self) -> Result<HubConfig, ConfigError> {
        (self.0)()
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// The resolved configuration the hub runs with.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Data directory (CA, certificates, database).
    pub data_dir: PathBuf,
    /// MQTT over mutual TLS.
    pub mqtt_tls_listen: SocketAddr,
    /// MQTT over secure WebSocket, if enabled.
    pub mqtt_wss_listen: Option<SocketAddr>,
    /// Plaintext MQTT, if dangerously enabled.
    pub danger_mqtt_plaintext_listen: Option<SocketAddr>,
    /// Anonymous clients on the plaintext listener.
    pub danger_allow_anonymous: bool,
    /// HTTPS API.
    pub api_listen: SocketAddr,
    /// Extra server certificate names.
    pub server_names: Vec<String>,
    /// Broker limits.
    pub broker: BrokerConfig,
    /// Pre-MQTT deadlines.
    pub net: NetLimits,
    /// Lifetime of device certificates the hub issues.
    pub device_cert_validity: Duration,
    /// How the CA is created and its keys protected.
    pub ca: crate::CaSettings,
    /// The web console's session lifetimes.
    pub console: ConsoleSettings,
    /// The pre-authentication shield's limits.
    pub shield: moat_net::ShieldLimits,
    /// Detection and responses.
    pub detect: moat_detect::DetectConfig,
    /// The signed webhook alerts are POSTed to, if any.
    pub alert_webhook: Option<crate::webhook::WebhookSettings>,
    /// How to read this configuration again on SIGHUP (`None`: certificates only).
    pub reload: Option<Reloader>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("moat-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| ConfigError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Settings::from_file(&path)
    }

    #[test]
    fn unknown_keys_are_rejected_with_line() {
        let err = parse("max-keepalive = 60\n\nbogus = 1\n").expect_err("unknown key");
        match err {
            ConfigError::Invalid { line, message, .. } => {
                assert_eq!(line, 3, "{message}");
                assert!(message.contains("bogus"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_rejected_with_line() {
        let err = parse("[limits]\nreceive-maximum = 0\n").expect_err("zero");
        match err {
            ConfigError::Invalid { line, message, .. } => {
                assert_eq!(line, 2, "{message}");
                assert!(message.contains("receive-maximum"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse("mqtt-tls-listen = \"not an address\"\n"),
            Err(ConfigError::Invalid { line: 1, .. })
        ));
    }

    #[test]
    fn values_apply() {
        let s = parse(
            "max-keepalive = 30\n[limits]\nmax-packet-size = 4096\nconnect-timeout-secs = 3\n",
        )
        .expect("valid");
        let c = s.resolve().expect("resolves");
        assert_eq!(c.broker.max_keep_alive, Duration::from_secs(30));
        assert_eq!(c.broker.max_packet_size, 4096);
        assert_eq!(c.net.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn shield_settings_apply_and_are_checked() {
        let c = parse(
            "[shield]\nmax-connection-rate-per-address = 5\nexempt = [\"127.0.0.0/8\", \"::1\"]\nauto-ban-failures = 3\nauto-ban-base-secs = 2\n",
        )
        .expect("valid")
        .resolve()
        .expect("resolves");
        assert_eq!(c.shield.address_rate, 5);
        assert_eq!(c.shield.exempt.len(), 2);
        assert_eq!(c.shield.auto_ban.failures, 3);
        assert_eq!(c.shield.auto_ban.base, Duration::from_secs(2));
        assert_eq!(
            c.shield.address_burst,
            moat_net::ShieldLimits::default().address_burst
        );
        assert!(matches!(
            parse("[shield]\n\nexempt = [\"10.0.0.1/8\"]\n"),
            Err(ConfigError::Invalid { line: 3, .. })
        ));
        assert!(matches!(
            parse("[shield]\nmax-concurrent-per-address = 0\n"),
            Err(ConfigError::Invalid { line: 2, .. })
        ));
        assert!(matches!(
            parse("[shield]\nbogus = 1\n"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            parse("[shield]\nauto-ban-base-secs = 100\nauto-ban-max-secs = 10\n")
                .expect("parses")
                .resolve(),
            Err(ConfigError::Conflict(_))
        ));
    }

    #[test]
    fn console_session_lifetimes() {
        let c = parse("[console]\nsession-idle-secs = 60\nsession-max-secs = 120\n")
            .expect("valid")
            .resolve()
            .expect("resolves");
        assert_eq!(c.console.session_idle, Duration::from_secs(60));
        assert_eq!(c.console.session_max, Duration::from_secs(120));
        let d = parse("max-keepalive = 30\n")
            .expect("valid")
            .resolve()
            .expect("resolves");
        assert_eq!(d.console, ConsoleSettings::default());
        assert!(matches!(
            parse("[console]\nsession-idle-secs = 1\n"),
            Err(ConfigError::Invalid { line: 2, .. })
        ));
    }

    #[test]
    fn anonymous_needs_plaintext() {
        let s = Settings {
            danger_allow_anonymous: Some(true),
            ..Settings::default()
        };
        assert!(matches!(s.resolve(), Err(ConfigError::Conflict(_))));
    }
}
