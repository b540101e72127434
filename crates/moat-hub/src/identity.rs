//! The identity service: the device directory the packet path consults, the policy
//! authorizer, the live certificate check, and every operation that changes who may do what
//! (issue, enroll, revoke, disable, attach policies), each recorded in the audit trail.
//!
//! Reads on the packet path go to an immutable [`Directory`] snapshot behind an `ArcSwap`:
//! a handshake or CONNECT never waits on a lock or the disk for a known device. Every change
//! writes the registry first, then swaps in a rebuilt snapshot, then re-authorizes the
//! broker's sessions (so that a revocation or a policy change reaches live connections at
//! once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use moat_audit::{Entry, Outcome};
use moat_broker::{
    Authorizer, Broker, ConnectDenied, Namespace, Permissions, Principal, ReasonCode,
};
use moat_pki::{CertificateAuthority, IssuedCertificate, RevocationReason, RevokedSerial};
use moat_policy::{Action, BoundPolicy, Decision, PolicyDocument, PolicySet, Subject};
use moat_store::registry::{CertificateRecord, DeviceRecord, DeviceStatus, GroupRecord, Registry};
use moat_types::{ClientId, DeviceId, Quota, QuotaLimit, TopicFilter, TopicName};

use crate::defence::{Mitigation, Mitigations};
use crate::quota::ConnectRates;
use rustls::CertificateError;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// The group whose policies apply to anonymous clients of a dangerous plaintext listener.
/// Without it they are unrestricted (the listener itself is the loud opt-in).
pub const ANONYMOUS_GROUP: &str = "anonymous";
/// The policy a device gets when neither it nor its group names any: the foundation's
/// namespace rule, `devices/${device.id}/#`.
pub const DEFAULT_POLICY: &str = "namespace";

/// The policy an automatic quarantine binds, alone.
pub const QUARANTINE_POLICY: &str = "quarantine";
/// How long a published CRL is valid (its nextUpdate); it is re-signed at half that age and
/// at every revocation.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Audit events from the packet path waiting to be written; beyond it they are dropped and
/// counted (`moat_audit_dropped_total`), never blocking a connection.
pub const AUDIT_QUEUE: usize = 4096;

pub(crate) fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn to_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn from_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Why an identity operation failed; the API maps each to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed or not allowed as asked.
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Credentials are missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// An internal task failed (a bug, or the runtime shutting down).
    #[error("internal: {0}")]
    Internal(String),
    /// The registry failed.
    #[error("registry: {0}")]
    Store(#[from] moat_store::StoreError),
    /// The CA failed.
    #[error("certificate authority: {0}")]
    Pki(#[from] moat_pki::PkiError),
}

/// The snapshot the packet path reads.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    devices: HashMap<String, DeviceRecord>,
    groups: HashMap<String, GroupRecord>,
    policies: HashMap<String, Arc<PolicyDocument>>,
    revoked_serials: HashSet<String>,
    /// Manufacturer CAs whose factory certificates may enroll just in time.
    pub(crate) manufacturers: Vec<moat_store::registry::ManufacturerRecord>,
}

impl Directory {
    fn load(registry: &Registry) -> Result<Self, IdentityError> {
        let mut policies: HashMap<String, Arc<PolicyDocument>> = moat_policy::TEMPLATES
            .iter()
            .filter_map(|name| {
                moat_policy::template(name).map(|d| ((*name).to_owned(), Arc::new(d)))
            })
            .collect();
        for (name, text) in registry.policies()? {
            match PolicyDocument::parse(&name, &text) {
                Ok(doc) => {
                    policies.insert(name, Arc::new(doc));
                }
                // Stored documents were validated when put; one that no longer parses (an
                // edit on disk, a newer format) grants nothing rather than stopping the hub.
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, "stored policy is invalid; ignored")
                }
            }
        }
        Ok(Self {
            devices: registry
                .all_devices()?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect(),
            groups: registry
                .groups()?
                .into_iter()
                .map(|g| (g.name.clone(), g))
                .collect(),
            policies,
            revoked_serials: registry
                .revoked_certificates(0)?
                .into_iter()
                .map(|c| c.serial)
                .collect(),
            manufacturers: registry.manufacturers()?,
        })
    }

    /// The documents attached to a device: its own, then its group's; the default policy if
    /// there are none. Names that do not resolve are skipped (they grant nothing).
    fn policy_set(&self, device: &DeviceRecord) -> PolicySet {
        let group = device.group.as_ref().and_then(|g| self.groups.get(g));
        let mut names: Vec<&str> = device.policies.iter().map(String::as_str).collect();
        if let Some(g) = group {
            names.extend(g.policies.iter().map(String::as_str));
        }
        if names.is_empty() {
            names.push(DEFAULT_POLICY);
        }
        PolicySet::new(
            names
                .into_iter()
                .filter_map(|n| self.policies.get(n).cloned()),
        )
    }

    /// The `quarantine` policy alone (stored under that name, or the template), bound to
    /// the device: an automatic response's quarantine.
    fn bind_quarantined(&self, device: &DeviceRecord, client_id: &str) -> BoundPolicy {
        let subject = Subject {
            device_id: Some(&device.id),
            group: device.group.as_deref(),
            attrs: &device.attrs,
            cert_cn: Some(&device.id),
            client_id: Some(client_id),
        };
        PolicySet::new(self.policies.get(QUARANTINE_POLICY).cloned()).bind(&subject)
    }

    fn bind_device(&self, device: &DeviceRecord, client_id: &str) -> BoundPolicy {
        let subject = Subject {
            device_id: Some(&device.id),
            group: device.group.as_deref(),
            attrs: &device.attrs,
            // Moat's certificates carry the device id as their common name.
            cert_cn: Some(&device.id),
            client_id: Some(client_id),
        };
        self.policy_set(device).bind(&subject)
    }
}

/// Policy-bound permissions of one connection.
#[derive(Debug)]
struct PolicyPermissions(BoundPolicy, Option<Denials>, Mitigation);

/// Where a device's refusals are recorded: the audit trail, with the statement that decided,
/// at most [`MAX_DENIAL_AUDIT_PER_MINUTE`] a minute per device (a device hammering a denied
/// topic is counted in `moat_publish_denied_total`, not written a million times).
#[derive(Debug)]
struct Denials {
    device: String,
    audit: AuditSink,
    defence: Arc<OnceLock<crate::defence::Defence>>,
}

/// Policy denials recorded in the audit trail per device per minute.
pub const MAX_DENIAL_AUDIT_PER_MINUTE: u32 = 10;

impl Denials {
    fn record(&self, action: Action, what: &str, decision: &Decision) {
        if let Some(defence) = self.defence.get()
            && let Ok(device) = DeviceId::parse(&self.device)
        {
            let action = match action {
                Action::Subscribe => moat_detect::Action::Subscribe,
                Action::Receive => moat_detect::Action::Receive,
                _ => moat_detect::Action::Publish,
            };
            defence.report(crate::defence::Fact {
                at_ms: now_ms(),
                peer: crate::defence::UNKNOWN_PEER,
                connection: 0,
                device: Some(device),
                client: None,
                kind: crate::defence::FactKind::Denied {
                    action,
                    topic: what.to_owned(),
                },
            });
        }
        let entry = Entry::new(
            now_ms(),
            format!("device:{}", self.device),
            "policy.denied",
            format!("device:{}", self.device),
            Outcome::Denied,
        )
        .with("action", action.as_str())
        .with("topic", what.escape_debug())
        .with("decision", decision);
        self.audit.record_limited(
            AuditKey::Device(self.device.clone()),
            MAX_DENIAL_AUDIT_PER_MINUTE,
            entry,
        );
    }
}

impl Permissions for PolicyPermissions {
    fn publish_denied(&self, topic: &TopicName, retain: bool) {
        if let Some(d) = &self.1 {
            let action = if retain && self.0.allows_topic(Action::Publish, topic) {
                Action::Retain
            } else {
                Action::Publish
            };
            d.record(action, topic.as_str(), &self.0.decide_topic(action, topic));
        }
    }

    fn subscribe_denied(&self, filter: &TopicFilter) {
        if let Some(d) = &self.1 {
            d.record(
                Action::Subscribe,
                filter.as_str(),
                &self.0.decide_subscribe(filter),
            );
        }
    }

    fn may_publish(&self, topic: &TopicName) -> bool {
        !self.2.read_only && self.0.allows_topic(Action::Publish, topic)
    }

    fn may_retain(&self, topic: &TopicName) -> bool {
        !self.2.read_only && self.0.allows_topic(Action::Retain, topic)
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.0.decide_subscribe(filter).allowed
    }

    fn checks_receive(&self) -> bool {
        self.0.has_receive_rules()
    }

    fn may_receive(&self, topic: &TopicName) -> bool {
        self.0.allows_topic(Action::Receive, topic)
    }

    fn may_receive_all(&self, filter: &TopicFilter) -> bool {
        !self.0.has_receive_rules() || self.0.allows_filter(Action::Receive, filter)
    }

    fn quota(&self) -> Quota {
        let quota = self.0.quota();
        match self.2.throttle {
            Some(rate) => quota.tighten(Quota {
                messages_per_second: Some(rate),
                ..Quota::UNLIMITED
            }),
            None => quota,
        }
    }

    fn quota_exceeded(&self, limit: QuotaLimit) {
        if let Some(d) = &self.1 {
            let entry = Entry::new(
                now_ms(),
                format!("device:{}", d.device),
                "quota.exceeded",
                format!("device:{}", d.device),
                Outcome::Denied,
            )
            .with("limit", limit.as_str())
            .with("value", self.0.quota().get(limit).unwrap_or(0));
            d.audit.record_limited(
                AuditKey::Device(d.device.clone()),
                MAX_DENIAL_AUDIT_PER_MINUTE,
                entry,
            );
        }
    }
}

/// Looks a device up in the snapshot, then (for one added by `moat device add` while the
/// hub runs) in the registry.
fn find_device(directory: &Directory, registry: &Registry, id: &str) -> Option<DeviceRecord> {
    if let Some(d) = directory.devices.get(id) {
        return Some(d.clone());
    }
    match registry.device(id) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(device = %id, error = %e, "registry lookup failed; refusing");
            None
        }
    }
}

/// The broker's [`Authorizer`]: the registry's standing plus the policy engine.
#[derive(Debug)]
pub(crate) struct PolicyAuthorizer {
    directory: Arc<ArcSwap<Directory>>,
    registry: Arc<Registry>,
    audit: AuditSink,
    connect_rates: Arc<ConnectRates>,
    mitigations: Arc<ArcSwap<Mitigations>>,
    defence: Arc<OnceLock<crate::defence::Defence>>,
}

impl Authorizer for PolicyAuthorizer {
    fn authorize_connect(
        &self,
        principal: &Principal,
        client_id: &ClientId,
    ) -> Result<Arc<dyn Permissions>, ConnectDenied> {
        let directory = self.directory.load();
        match principal {
            Principal::Device(id) => {
                // The client id is bound to the certificate, whatever the policies say (the
                // device id, or its agent's `{id}/agent`).
                if !client_id.belongs_to(id) {
                    return Err(ConnectDenied::ClientIdMismatch);
                }
                let device = find_device(&directory, &self.registry, id.as_str())
                    .ok_or(ConnectDenied::NotAuthorized)?;
                if device.status != DeviceStatus::Active {
                    return Err(ConnectDenied::NotAuthorized);
                }
                let mitigation = self.mitigations.load().of(&device.id).unwrap_or_default();
                if mitigation.blocked {
                    return Err(ConnectDenied::NotAuthorized);
                }
                // Bound as the device's own client id, so that `${client}` in a policy means
                // the same for the agent's session.
                let bound = if mitigation.quarantine {
                    directory.bind_quarantined(&device, id.as_str())
                } else {
                    directory.bind_device(&device, id.as_str())
                };
                // The agent's session is the device's: its policies decide on the device id.
                if !bound.decide_connect(id.as_str()).allowed {
                    return Err(ConnectDenied::NotAuthorized);
                }
                if let Some(per_minute) = bound.quota().connections_per_minute
                    && !self.connect_rates.admit(&device.id, per_minute, now_ms())
                {
                    let permissions = PolicyPermissions(
                        bound,
                        Some(Denials {
                            device: device.id.clone(),
                            audit: self.audit.clone(),
                            defence: self.defence.clone(),
                        }),
                        mitigation,
                    );
                    permissions.quota_exceeded(QuotaLimit::ConnectionsPerMinute);
                    return Err(ConnectDenied::ConnectionRateExceeded);
                }
                Ok(Arc::new(PolicyPermissions(
                    bound,
                    Some(Denials {
                        device: device.id.clone(),
                        audit: self.audit.clone(),
                        defence: self.defence.clone(),
                    }),
                    mitigation,
                )))
            }
            // A registered device's client id (and so its session) belongs to the device:
            // an anonymous client may not claim it, whatever the policies say.
            Principal::Anonymous
                if find_device(
                    &directory,
                    &self.registry,
                    client_id
                        .as_str()
                        .strip_suffix(moat_types::AGENT_CLIENT_SUFFIX)
                        .unwrap_or(client_id.as_str()),
                )
                .is_some() =>
            {
                Err(ConnectDenied::NotAuthorized)
            }
            Principal::Anonymous => match directory.groups.get(ANONYMOUS_GROUP) {
                None => Ok(Arc::new(Namespace::unrestricted())),
                Some(group) => {
                    let set = PolicySet::new(
                        group
                            .policies
                            .iter()
                            .filter_map(|n| directory.policies.get(n).cloned()),
                    );
                    let subject = Subject {
                        client_id: Some(client_id.as_str()),
                        ..Subject::anonymous()
                    };
                    let bound = set.bind(&subject);
                    if !bound.decide_connect(client_id.as_str()).allowed {
                        return Err(ConnectDenied::NotAuthorized);
                    }
                    Ok(Arc::new(PolicyPermissions(
                        bound,
                        None,
                        Mitigation::default(),
                    )))
                }
            },
            Principal::Unauthenticated => Err(ConnectDenied::NotAuthorized),
        }
    }
}

/// The live certificate check on every mutual-TLS handshake.
#[derive(Debug)]
pub(crate) struct CertificateCheck {
    directory: Arc<ArcSwap<Directory>>,
    registry: Arc<Registry>,
    audit: AuditSink,
    trusted_issuers: Arc<ArcSwap<Vec<String>>>,
}

impl moat_net::ClientCertCheck for CertificateCheck {
    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), CertificateError> {
        let facts = moat_pki::certificate_facts(leaf)
            .map_err(|_| CertificateError::ApplicationVerificationFailure)?;
        // The root is a trust anchor too (for chains that carry their issuing CA), so an
        // issuing CA the hub stopped trusting (discarded after a rotation) would still
        // verify through it: the leaf's issuer must be a currently trusted issuing CA.
        if !self.trusted_issuers.load().contains(&facts.issuer_dn) {
            return Err(CertificateError::UnknownIssuer);
        }
        let directory = self.directory.load();
        if directory
            .revoked_serials
            .contains(&moat_pki::serial_hex(&facts.serial))
        {
            return Err(CertificateError::Revoked);
        }
        let Some(id) = facts.device_id else {
            return Err(CertificateError::ApplicationVerificationFailure);
        };
        match find_device(&directory, &self.registry, id.as_str()).map(|d| d.status) {
            Some(DeviceStatus::Active) => Ok(()),
            Some(DeviceStatus::Revoked) => Err(CertificateError::Revoked),
            Some(DeviceStatus::Disabled | DeviceStatus::Pending) | None => {
                Err(CertificateError::ApplicationVerificationFailure)
            }
        }
    }

    fn rejected(&self, leaf: &CertificateDer<'_>, error: &rustls::Error) {
        let facts = moat_pki::certificate_facts(leaf).ok();
        let device = facts
            .as_ref()
            .and_then(|f| f.device_id.as_ref())
            .map(|d| d.to_string());
        let reason = match error {
            rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                "certificate revoked".to_owned()
            }
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
                match &device {
                    Some(id) => match self.directory.load().devices.get(id).map(|d| d.status) {
                        Some(s) => format!("device is {}", s.as_str()),
                        None => "unknown device".to_owned(),
                    },
                    None => "certificate names no device".to_owned(),
                }
            }
            other => other.to_string(),
        };
        let code = match error {
            rustls::Error::InvalidCertificate(e) => certificate_reason_code(e, &reason),
            _ => "invalid",
        };
        let mut entry = Entry::new(
            now_ms(),
            device
                .as_ref()
                .map_or_else(|| "peer:unknown".to_owned(), |d| format!("device:{d}")),
            "auth.certificate_rejected",
            device
                .as_ref()
                .map_or_else(|| "certificate".to_owned(), |d| format!("device:{d}")),
            Outcome::Denied,
        )
        .with("reason_code", code)
        .with("reason", reason);
        if let Some(f) = &facts {
            entry = entry
                .with("serial", moat_pki::serial_hex(&f.serial))
                .with("issuer", &f.issuer_dn)
                .with("not_after", f.not_after);
        }
        self.audit.record_unauthenticated(None, entry);
    }
}

/// A stable name for why a certificate was refused (`reason_code` in the audit trail).
fn certificate_reason_code(e: &CertificateError, reason: &str) -> &'static str {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::Revoked => "revoked",
        CertificateError::UnknownIssuer => "unknown_issuer",
        CertificateError::BadSignature => "bad_signature",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "wrong_purpose"
        }
        CertificateError::ApplicationVerificationFailure => match reason {
            "unknown device" => "unknown_device",
            "certificate names no device" => "no_device_identity",
            _ => "device_not_active",
        },
        _ => "invalid",
    }
}

/// Audit records an unauthenticated source (one address) may cause per minute; beyond it
/// they are counted (`moat_audit_suppressed_total`) but not written, so that a stream of
/// bad handshakes neither floods the queue nor grows the trail without bound.
pub const MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE: u32 = 60;
/// The same for events whose source address is unknown (rejected certificates, seen by the
/// TLS verifier), all sources together.
pub const MAX_UNATTRIBUTED_AUDIT_PER_MINUTE: u32 = 600;
/// Most sources the limiter tracks; beyond it the oldest windows are dropped.
pub const MAX_AUDIT_LIMITER_SOURCES: usize = 10_000;

/// What the audit limiter counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AuditKey {
    /// An unauthenticated source address.
    Address(std::net::IpAddr),
    /// Events whose source is unknown, all together.
    Unattributed,
    /// One device.
    Device(String),
    /// One authenticated operator or token.
    Actor(String),
}

#[derive(Debug, Default)]
struct AuditLimiter {
    windows: HashMap<AuditKey, (std::time::Instant, u32)>,
}

impl AuditLimiter {
    fn admit(&mut self, key: AuditKey, limit: u32) -> bool {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(60);
        if self.windows.len() >= MAX_AUDIT_LIMITER_SOURCES && !self.windows.contains_key(&key) {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            if self.windows.len() >= MAX_AUDIT_LIMITER_SOURCES
                && let Some(oldest) = self
                    .windows
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| k.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        let w = self.windows.entry(key).or_insert((now, 0));
        if now.duration_since(w.0) >= window {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= limit
    }
}

/// Audit events from the packet path, queued to a writer task (never blocking).
#[derive(Debug, Clone)]
pub(crate) struct AuditSink {
    tx: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
    suppressed: Arc<AtomicU64>,
    limiter: Arc<Mutex<AuditLimiter>>,
}

impl AuditSink {
    /// The sink and the receiver its writer task drains.
    pub(crate) fn new() -> (Self, mpsc::Receiver<Entry>) {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                suppressed: Arc::new(AtomicU64::new(0)),
                limiter: Arc::new(Mutex::new(AuditLimiter::default())),
            },
            rx,
        )
    }

    pub(crate) fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records an event caused by an unauthenticated party at `source` (or at an unknown
    /// address), within [`MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE`] (or
    /// [`MAX_UNATTRIBUTED_AUDIT_PER_MINUTE`] for all unknown sources together).
    pub(crate) fn record_unauthenticated(&self, source: Option<std::net::IpAddr>, entry: Entry) {
        match source {
            Some(ip) => self.record_limited(
                AuditKey::Address(ip),
                MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE,
                entry,
            ),
            None => self.record_limited(
                AuditKey::Unattributed,
                MAX_UNATTRIBUTED_AUDIT_PER_MINUTE,
                entry,
            ),
        }
    }

    /// Records an event within `limit` a minute for `key`; beyond it only counts it.
    pub(crate) fn record_limited(&self, key: AuditKey, limit: u32, entry: Entry) {
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(key, limit);
        if admitted {
            self.record(entry);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Writes queued audit events in batches until `stop` turns true (then writes what is
/// still queued) or every sink is gone.
pub(crate) async fn audit_writer(
    registry: Arc<Registry>,
    mut rx: mpsc::Receiver<Entry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                false
            }
            _ = stop.wait_for(|s| *s) => {
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                true
            }
        };
        let entries = std::mem::take(&mut batch);
        let registry = registry.clone();
        match tokio::task::spawn_blocking(move || registry.append_audit(entries)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit append failed"),
            Err(e) => tracing::error!(error = %e, "audit writer task failed"),
        }
        if stopping {
            return;
        }
    }
}

/// The network layer's security events, audited, and the identity conflicts they reveal.
#[derive(Debug)]
pub(crate) struct NetEvents {
    pub(crate) audit: AuditSink,
    state: Mutex<ConflictState>,
    /// Who is online and the recent connection events, for the web console.
    pub(crate) activity: Arc<crate::console::Activity>,
    /// Where automatic bans go to be recorded (`bans::maintain`); set once at start.
    pub(crate) auto_bans: OnceLock<mpsc::Sender<crate::bans::QueuedAutoBan>>,
    /// The detection engine's queue; set once at start.
    pub(crate) defence: OnceLock<crate::defence::Defence>,
}

/// Most identities tracked for clone detection and conflict counts; beyond it the oldest
/// records are dropped (bounded memory under identity churn).
pub const MAX_TRACKED_IDENTITIES: usize = 100_000;
/// Addresses remembered per conflicting identity.
pub const MAX_CONFLICT_ADDRESSES: usize = 8;

#[derive(Debug, Default)]
struct ConflictState {
    /// Live connections per device, by address.
    live: HashMap<DeviceId, Vec<std::net::SocketAddr>>,
    /// Connections taken over before their successor was reported connected (the two
    /// connections' tasks race): the successor compares its address with this one.
    taken_over: HashMap<DeviceId, (std::net::SocketAddr, std::time::Instant)>,
    /// Devices seen in a conflict.
    conflicts: HashMap<String, Conflict>,
}

/// One identity's conflicts: the same certificate live from two addresses (a suspected
/// clone), or CONNECTs naming a client id that is not the certificate's.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Conflict {
    pub device: String,
    pub suspected_clones: u64,
    pub client_id_mismatches: u64,
    /// Other client ids the device tried to use (at most [`MAX_CONFLICT_ADDRESSES`]).
    pub claimed_client_ids: Vec<String>,
    /// Addresses involved (at most [`MAX_CONFLICT_ADDRESSES`]).
    pub addresses: Vec<String>,
    pub last_at_ms: u64,
}

impl Conflict {
    fn note_address(&mut self, a: std::net::IpAddr) {
        let a = a.to_string();
        if !self.addresses.contains(&a) && self.addresses.len() < MAX_CONFLICT_ADDRESSES {
            self.addresses.push(a);
        }
    }
}

impl NetEvents {
    pub(crate) fn new(audit: AuditSink) -> Self {
        Self {
            audit,
            state: Mutex::new(ConflictState::default()),
            activity: Arc::default(),
            auto_bans: OnceLock::new(),
            defence: OnceLock::new(),
        }
    }

    /// Audits a refusal of an unauthenticated peer (rate-limited per address).
    fn peer_denied(&self, peer: std::net::SocketAddr, action: &str, key: &str, value: &str) {
        self.audit.record_unauthenticated(
            Some(peer.ip()),
            Entry::new(
                now_ms(),
                format!("peer:{peer}"),
                action,
                format!("peer:{}", peer.ip()),
                Outcome::Denied,
            )
            .with(key, value),
        );
    }

    /// Sends a fact to the detection engine, if it runs.
    fn detect(
        &self,
        peer: std::net::SocketAddr,
        connection: u64,
        principal: Option<&Principal>,
        client: Option<&str>,
        kind: crate::defence::FactKind,
    ) {
        if let Some(defence) = self.defence.get() {
            defence.report(crate::defence::Fact {
                at_ms: now_ms(),
                peer,
                connection,
                device: match principal {
                    Some(Principal::Device(id)) => Some(id.clone()),
                    _ => None,
                },
                client: client.and_then(|c| ClientId::parse(c).ok()),
                kind,
            });
        }
    }

    /// Devices with a live connection from an address `banned` says yes to.
    pub(crate) fn devices_live_from(
        &self,
        banned: impl Fn(std::net::IpAddr) -> bool,
    ) -> HashSet<String> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.live
            .iter()
            .filter(|(_, addrs)| addrs.iter().any(|a| banned(a.ip())))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    fn conflict<R>(&self, device: &str, f: impl FnOnce(&mut Conflict) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.conflicts.len() >= MAX_TRACKED_IDENTITIES
            && !st.conflicts.contains_key(device)
            && let Some(oldest) = st
                .conflicts
                .values()
                .min_by_key(|c| c.last_at_ms)
                .map(|c| c.device.clone())
        {
            st.conflicts.remove(&oldest);
        }
        let c = st
            .conflicts
            .entry(device.to_owned())
            .or_insert_with(|| Conflict {
                device: device.to_owned(),
                ..Conflict::default()
            });
        c.last_at_ms = now_ms();
        f(c)
    }

    /// Identities seen in conflicts, most recent first.
    pub(crate) fn conflicts(&self) -> Vec<Conflict> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Conflict> = st.conflicts.values().cloned().collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.last_at_ms));
        all
    }
}

impl moat_net::SecurityEvents for NetEvents {
    fn auto_banned(&self, peer: std::net::SocketAddr, ban: &moat_net::AutoBan) {
        let queued = self
            .auto_bans
            .get()
            .is_some_and(|tx| tx.try_send((peer, ban.clone())).is_ok());
        if !queued {
            tracing::error!(%peer, offender = ?ban.offender, "automatic ban not recorded (queue full); it applies until restart");
        }
    }

    fn connection_opened(&self, peer: std::net::SocketAddr) {
        self.detect(peer, 0, None, None, crate::defence::FactKind::Opened);
    }

    fn closed_before_connect(&self, peer: std::net::SocketAddr) {
        self.detect(
            peer,
            0,
            None,
            None,
            crate::defence::FactKind::ClosedBeforeConnect,
        );
    }

    fn malformed_before_connect(
        &self,
        peer: std::net::SocketAddr,
        principal: &Principal,
        error: &str,
    ) {
        // Connection 0: no session yet. The engine counts it against the device the TLS
        // handshake proved, or against the address without one (malformed stream).
        self.detect(
            peer,
            0,
            Some(principal),
            None,
            crate::defence::FactKind::ProtocolError(moat_detect::ProtocolFault::BadFirstPacket),
        );
        self.peer_denied(peer, "security.malformed_before_connect", "error", error);
    }

    fn deadline_missed(&self, peer: std::net::SocketAddr, phase: &str) {
        let kind = if phase == "CONNECT" {
            crate::defence::FactKind::ConnectTimeout
        } else {
            crate::defence::FactKind::HandshakeTimeout
        };
        self.detect(peer, 0, None, None, kind);
        self.peer_denied(peer, "security.deadline_missed", "phase", phase);
    }

    fn handshake_failed(&self, peer: std::net::SocketAddr, reason: &str) {
        // A handshake that ran out of time is a slow-loris signal, not a certificate one.
        let kind = if reason.contains("timed out") {
            crate::defence::FactKind::HandshakeTimeout
        } else {
            crate::defence::FactKind::TlsFailed(crate::defence::tls_failure(reason))
        };
        self.detect(peer, 0, None, None, kind);
        self.peer_denied(peer, "auth.handshake_failed", "reason", reason);
    }

    fn connect_refused(
        &self,
        peer: std::net::SocketAddr,
        principal: &Principal,
        client_id: &str,
        reason: ReasonCode,
    ) {
        self.detect(
            peer,
            0,
            Some(principal),
            Some(client_id),
            crate::defence::FactKind::Refused(crate::defence::refused_reason(reason)),
        );
        let why = match (principal, reason) {
            (Principal::Device(id), ReasonCode::NotAuthorized)
                if !ClientId::parse(client_id).is_ok_and(|c| c.belongs_to(id)) =>
            {
                self.conflict(id.as_str(), |c| {
                    c.client_id_mismatches += 1;
                    c.note_address(peer.ip());
                    let claimed = client_id.escape_debug().to_string();
                    if !c.claimed_client_ids.contains(&claimed)
                        && c.claimed_client_ids.len() < MAX_CONFLICT_ADDRESSES
                    {
                        c.claimed_client_ids.push(claimed);
                    }
                });
                "client id does not match the certificate".to_owned()
            }
            (_, r) => format!("{r:?}"),
        };
        self.audit.record_unauthenticated(
            Some(peer.ip()),
            Entry::new(
                now_ms(),
                principal.to_string(),
                "auth.connect_refused",
                principal.to_string(),
                Outcome::Denied,
            )
            .with("peer", peer)
            .with("client_id", client_id.escape_debug())
            .with("reason", why),
        );
    }

    fn connected(
        &self,
        peer: std::net::SocketAddr,
        principal: &Principal,
        client_id: &ClientId,
        connection: u64,
    ) {
        self.detect(
            peer,
            connection,
            Some(principal),
            Some(client_id.as_str()),
            crate::defence::FactKind::Accepted,
        );
        let Principal::Device(id) = principal else {
            return;
        };
        self.activity.connected(id.as_str());
        let others: Vec<std::net::SocketAddr> = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.live.len() >= MAX_TRACKED_IDENTITIES && !st.live.contains_key(id) {
                // Only live connections are tracked, so this bounds a pathological fleet;
                // dropping the map loses clone detection for connections already open.
                st.live.clear();
            }
            // A successor is reported within moments of the takeover, or not at all.
            let predecessor = st
                .taken_over
                .remove(id)
                .filter(|(_, at)| at.elapsed() < Duration::from_secs(10))
                .map(|(addr, _)| addr);
            let live = st.live.entry(id.clone()).or_default();
            let mut others: Vec<std::net::SocketAddr> = live
                .iter()
                .chain(predecessor.iter())
                .filter(|a| a.ip() != peer.ip())
                .copied()
                .collect();
            others.dedup();
            if live.len() < MAX_CONFLICT_ADDRESSES {
                live.push(peer);
            }
            others
        };
        // The same identity live from another host: the takeover happens as MQTT requires,
        // and the security team hears of it.
        if let Some(prev) = others.first() {
            tracing::warn!(device = %id, %prev, %peer, "same identity live from another address: suspected clone");
            self.conflict(id.as_str(), |c| {
                c.suspected_clones += 1;
                c.note_address(prev.ip());
                c.note_address(peer.ip());
            });
            self.audit.record_limited(
                AuditKey::Device(id.to_string()),
                MAX_DENIAL_AUDIT_PER_MINUTE,
                Entry::new(
                    now_ms(),
                    principal.to_string(),
                    "security.suspected_clone",
                    principal.to_string(),
                    Outcome::Denied,
                )
                .with("previous_address", prev)
                .with("address", peer),
            );
        }
    }

    fn disconnected(
        &self,
        peer: std::net::SocketAddr,
        principal: &Principal,
        connection: u64,
        close: &moat_broker::Close,
        lasted: Duration,
    ) {
        use moat_broker::CloseKind;
        use moat_detect::DisconnectCause;
        if close.kind == CloseKind::Violation {
            self.detect(
                peer,
                connection,
                Some(principal),
                None,
                crate::defence::FactKind::ProtocolError(crate::defence::protocol_fault(
                    close.reason,
                )),
            );
        }
        let cause = match close.kind {
            CloseKind::ClientDisconnect { .. } => DisconnectCause::Client,
            CloseKind::Lost if close.reason == ReasonCode::KeepAliveTimeout => {
                DisconnectCause::KeepAliveTimeout
            }
            CloseKind::Lost => DisconnectCause::ConnectionLost,
            CloseKind::TakenOver => DisconnectCause::TakenOver,
            CloseKind::Kicked if close.reason == ReasonCode::ServerShuttingDown => {
                DisconnectCause::Shutdown
            }
            CloseKind::Kicked | CloseKind::Violation => DisconnectCause::Server,
        };
        self.detect(
            peer,
            connection,
            Some(principal),
            None,
            crate::defence::FactKind::Disconnected {
                cause,
                connected_ms: u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
            },
        );
        let Principal::Device(id) = principal else {
            return;
        };
        self.activity.disconnected(id.as_str());
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = st.live.get_mut(id) {
            if let Some(i) = live.iter().position(|a| *a == peer) {
                live.swap_remove(i);
            }
            if live.is_empty() {
                st.live.remove(id);
                // Taken over, and the successor has not been reported yet: leave it this
                // address to compare with.
                if close.kind == CloseKind::TakenOver {
                    if st.taken_over.len() >= MAX_TRACKED_IDENTITIES {
                        st.taken_over.clear();
                    }
                    st.taken_over
                        .insert(id.clone(), (peer, std::time::Instant::now()));
                }
            }
        }
    }
}

/// A signed CRL and when it was made.
#[derive(Debug, Clone)]
struct CachedCrl {
    der: Arc<Vec<u8>>,
    made_ms: u64,
}

/// The identity service.
#[derive(Debug)]
pub struct Identity {
    pub(crate) registry: Arc<Registry>,
    /// Swapped when the issuing CA is rotated or imported.
    pub(crate) ca: ArcSwap<CertificateAuthority>,
    pub(crate) directory: Arc<ArcSwap<Directory>>,
    broker: OnceLock<Broker>,
    /// Subjects of the issuing CAs whose certificates are accepted now (current, and
    /// previous during a rotation overlap).
    pub(crate) trusted_issuers: Arc<ArcSwap<Vec<String>>>,
    /// The listeners' TLS, rebuilt when the CA or the manufacturer CAs change.
    pub(crate) tls: OnceLock<Arc<crate::tls::TlsSet>>,
    /// Where the CA lives and its key source, for rotation and reload.
    pub(crate) ca_home: OnceLock<crate::ca::CaHome>,
    pub(crate) audit: AuditSink,
    /// Current and previous issuing CA's CRLs.
    crl: Mutex<[Option<CachedCrl>; 2]>,
    /// Serialises changes: registry write, snapshot rebuild, re-authorization.
    pub(crate) changes: tokio::sync::Mutex<()>,
    /// Validity of device certificates issued from now on, in seconds (reloadable).
    device_validity_secs: std::sync::atomic::AtomicU64,
    /// Automatic responses in force (quarantine, read-only, throttle), per device.
    pub(crate) mitigations: Arc<ArcSwap<Mitigations>>,
    /// Where policy denials go for detection, once the defence runs.
    defence: Arc<OnceLock<crate::defence::Defence>>,
}

impl Identity {
    pub(crate) fn new(
        registry: Arc<Registry>,
        ca: Arc<CertificateAuthority>,
        audit: AuditSink,
        device_validity: Duration,
    ) -> Result<Self, IdentityError> {
        let directory = Directory::load(&registry)?;
        let issuers = issuing_subjects(&ca);
        Ok(Self {
            registry,
            ca: ArcSwap::new(ca),
            directory: Arc::new(ArcSwap::from_pointee(directory)),
            broker: OnceLock::new(),
            trusted_issuers: Arc::new(ArcSwap::from_pointee(issuers)),
            tls: OnceLock::new(),
            ca_home: OnceLock::new(),
            audit,
            crl: Mutex::new([None, None]),
            changes: tokio::sync::Mutex::new(()),
            device_validity_secs: std::sync::atomic::AtomicU64::new(device_validity.as_secs()),
            mitigations: Arc::default(),
            defence: Arc::default(),
        })
    }

    /// Validity of the device certificates the hub issues from now on.
    pub(crate) fn device_validity(&self) -> Duration {
        Duration::from_secs(
            self.device_validity_secs
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets the validity of device certificates issued from now on (configuration reload).
    pub(crate) fn set_device_validity(&self, validity: Duration) {
        self.device_validity_secs
            .store(validity.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The group of `device` in the directory snapshot, for the detection engine's priors.
    pub(crate) fn group_of(&self, device: &str) -> Option<String> {
        self.directory
            .load()
            .devices
            .get(device)
            .and_then(|d| d.group.clone())
    }

    /// Sends policy denials to the detection engine from now on.
    pub(crate) fn attach_defence(&self, defence: crate::defence::Defence) {
        let _ = self.defence.set(defence);
    }

    pub(crate) fn authorizer(&self) -> PolicyAuthorizer {
        PolicyAuthorizer {
            directory: self.directory.clone(),
            registry: self.registry.clone(),
            audit: self.audit.clone(),
            connect_rates: Arc::default(),
            mitigations: self.mitigations.clone(),
            defence: self.defence.clone(),
        }
    }

    pub(crate) fn certificate_check(&self) -> CertificateCheck {
        CertificateCheck {
            directory: self.directory.clone(),
            registry: self.registry.clone(),
            audit: self.audit.clone(),
            trusted_issuers: self.trusted_issuers.clone(),
        }
    }

    pub(crate) fn attach_broker(&self, broker: Broker) {
        let _ = self.broker.set(broker);
    }

    /// Runs a registry operation on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, IdentityError> + Send + 'static,
    ) -> Result<T, IdentityError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || f(&registry))
            .await
            .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
    }

    /// Writes `entry` to the audit trail before returning (operator actions are not
    /// acknowledged until they are on the record).
    pub(crate) async fn audit_now(&self, entry: Entry) -> Result<(), IdentityError> {
        self.blocking(move |r| Ok(r.append_audit(vec![entry]).map(|_| ())?))
            .await
    }

    /// Reloads the snapshot from the registry and applies it to live sessions; returns how
    /// many connections were closed.
    pub(crate) async fn refresh_directory(&self) -> Result<usize, IdentityError> {
        let directory = self.blocking(Directory::load).await?;
        let manufacturers_changed = directory.manufacturers != self.directory.load().manufacturers;
        self.directory.store(Arc::new(directory));
        if manufacturers_changed && let Some(tls) = self.tls.get() {
            tls.manufacturers_changed(&self.directory.load().manufacturers);
        }
        *self.crl.lock().unwrap_or_else(PoisonError::into_inner) = [None, None];
        Ok(self
            .broker
            .get()
            .map_or(0, |b| b.reauthorize(ReasonCode::NotAuthorized)))
    }

    // ---- devices -------------------------------------------------------------------------

    pub(crate) fn device(&self, id: &str) -> Result<DeviceRecord, IdentityError> {
        find_device(&self.directory.load(), &self.registry, id)
            .ok_or_else(|| IdentityError::NotFound(format!("device {id}")))
    }

    pub(crate) async fn devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, IdentityError> {
        self.blocking(move |r| Ok(r.devices(after.as_deref(), limit)?))
            .await
    }

    pub(crate) async fn certificates_of(
        &self,
        id: String,
    ) -> Result<Vec<CertificateRecord>, IdentityError> {
        self.blocking(move |r| Ok(r.certificates_of(&id)?)).await
    }

    /// Creates or updates a device's group, attributes and policies.
    pub(crate) async fn put_device(
        &self,
        actor: &str,
        id: &DeviceId,
        group: Option<String>,
        attrs: BTreeMap<String, String>,
        policies: Vec<String>,
    ) -> Result<DeviceRecord, IdentityError> {
        let _guard = self.changes.lock().await;
        let now = now_ms();
        let existing = self.registry.device(id.as_str())?;
        let record = DeviceRecord {
            id: id.to_string(),
            group,
            status: existing.as_ref().map_or(DeviceStatus::Active, |d| d.status),
            attrs,
            policies,
            created_at_ms: existing.as_ref().map_or(now, |d| d.created_at_ms),
            updated_at_ms: now,
        };
        let stored = record.clone();
        self.blocking(move |r| Ok(r.put_device(&stored)?)).await?;
        self.audit_now(
            Entry::new(
                now,
                actor,
                "device.put",
                format!("device:{id}"),
                Outcome::Success,
            )
            .with("group", record.group.as_deref().unwrap_or("-"))
            .with("policies", record.policies.join(",")),
        )
        .await?;
        self.refresh_directory().await?;
        Ok(record)
    }

    /// Issues a key and certificate for `id` (registering it if new): `moat device add`.
    pub(crate) async fn issue_device(
        &self,
        actor: &str,
        id: &DeviceId,
        validity: Duration,
    ) -> Result<moat_pki::CertifiedKey, IdentityError> {
        let _guard = self.changes.lock().await;
        if let Some(d) = self.registry.device(id.as_str())?
            && d.status == DeviceStatus::Revoked
        {
            return Err(IdentityError::Conflict(format!(
                "device {id} is revoked; a revoked identity is never reissued"
            )));
        }
        if validity.is_zero() || validity > moat_pki::MAX_DEVICE_CERT_VALIDITY {
            return Err(IdentityError::Invalid(format!(
                "certificate validity must be between 1 s and {} days",
                moat_pki::MAX_DEVICE_CERT_VALIDITY.as_secs() / 86_400
            )));
        }
        let issued =
            self.ca
                .load()
                .issue_device_certificate(id, validity, OffsetDateTime::now_utc())?;
        register_issued(&self.registry, id, &issued.certificate, "api", None)?;
        self.audit_now(issued_entry(actor, id, &issued.certificate, "api"))
            .await?;
        self.refresh_directory().await?;
        Ok(issued)
    }

    /// Sets a device's standing; for `Revoked` also revokes its certificates. Returns how many
    /// live connections were closed.
    pub(crate) async fn set_status(
        &self,
        actor: &str,
        id: &DeviceId,
        status: DeviceStatus,
        reason: &str,
    ) -> Result<usize, IdentityError> {
        let _guard = self.changes.lock().await;
        let mut device = self
            .registry
            .device(id.as_str())?
            .ok_or_else(|| IdentityError::NotFound(format!("device {id}")))?;
        if device.status == DeviceStatus::Revoked && status != DeviceStatus::Revoked {
            return Err(IdentityError::Conflict(format!(
                "device {id} is revoked; revocation is permanent"
            )));
        }
        let now = now_ms();
        device.status = status;
        device.updated_at_ms = now;
        let reason_owned = reason.to_owned();
        let serials = self
            .blocking(move |r| {
                r.put_device(&device)?;
                if status == DeviceStatus::Revoked {
                    Ok(r.revoke_certificates_of(&device.id, now, &reason_owned)?)
                } else {
                    Ok(Vec::new())
                }
            })
            .await?;
        let kicked = self.refresh_directory().await?;
        let action = match status {
            DeviceStatus::Revoked => "device.revoke",
            DeviceStatus::Disabled => "device.disable",
            DeviceStatus::Active => "device.enable",
            DeviceStatus::Pending => "device.hold",
        };
        self.audit_now(
            Entry::new(now, actor, action, format!("device:{id}"), Outcome::Success)
                .with("reason", reason)
                .with("certificates_revoked", serials.join(","))
                .with("sessions_closed", kicked),
        )
        .await?;
        Ok(kicked)
    }

    /// Revokes one certificate (a compromised key the device has already replaced): its
    /// next handshake fails and the CRL lists it; the device and its other certificates are
    /// untouched. Connections already open with it are closed only by revoking or disabling
    /// the device.
    pub(crate) async fn revoke_certificate(
        &self,
        actor: &str,
        serial: &str,
        reason: &str,
    ) -> Result<CertificateRecord, IdentityError> {
        let _guard = self.changes.lock().await;
        let serial = serial.to_ascii_lowercase().replace(':', "");
        let record = self
            .registry
            .certificate(&serial)?
            .ok_or_else(|| IdentityError::NotFound(format!("certificate {serial}")))?;
        if record.revoked_at_ms.is_some() {
            return Err(IdentityError::Conflict(format!(
                "certificate {serial} is already revoked"
            )));
        }
        let now = now_ms();
        let (s, r) = (serial.clone(), reason.to_owned());
        self.blocking(move |reg| Ok(reg.revoke_certificate(&s, now, &r)?))
            .await?;
        self.refresh_directory().await?;
        self.audit_now(
            Entry::new(
                now,
                actor,
                "certificate.revoke",
                format!("device:{}", record.device_id),
                Outcome::Success,
            )
            .with("serial", &serial)
            .with("reason", reason),
        )
        .await?;
        Ok(CertificateRecord {
            revoked_at_ms: Some(now),
            reason: Some(reason.to_owned()),
            ..record
        })
    }

    // ---- groups and policies -------------------------------------------------------------

    pub(crate) fn groups(&self) -> Vec<GroupRecord> {
        let mut groups: Vec<_> = self.directory.load().groups.values().cloned().collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }

    pub(crate) async fn put_group(
        &self,
        actor: &str,
        name: String,
        policies: Vec<String>,
    ) -> Result<GroupRecord, IdentityError> {
        validate_name(&name, "group")?;
        let _guard = self.changes.lock().await;
        let created_at_ms = self
            .directory
            .load()
            .groups
            .get(&name)
            .map_or_else(now_ms, |g| g.created_at_ms);
        let record = GroupRecord {
            name: name.clone(),
            policies,
            created_at_ms,
        };
        let stored = record.clone();
        self.blocking(move |r| Ok(r.put_group(&stored)?)).await?;
        self.audit_now(
            Entry::new(
                now_ms(),
                actor,
                "group.put",
                format!("group:{name}"),
                Outcome::Success,
            )
            .with("policies", record.policies.join(",")),
        )
        .await?;
        self.refresh_directory().await?;
        Ok(record)
    }

    pub(crate) async fn delete_group(
        &self,
        actor: &str,
        name: String,
    ) -> Result<(), IdentityError> {
        let _guard = self.changes.lock().await;
        let members = self
            .registry
            .all_devices()?
            .into_iter()
            .filter(|d| d.group.as_deref() == Some(name.as_str()))
            .count();
        if members > 0 {
            return Err(IdentityError::Conflict(format!(
                "group {name} has {members} device(s); move them to another group first"
            )));
        }
        let n = name.clone();
        if !self.blocking(move |r| Ok(r.delete_group(&n)?)).await? {
            return Err(IdentityError::NotFound(format!("group {name}")));
        }
        self.audit_now(Entry::new(
            now_ms(),
            actor,
            "group.delete",
            format!("group:{name}"),
            Outcome::Success,
        ))
        .await?;
        self.refresh_directory().await?;
        Ok(())
    }

    /// Every policy (built-in templates included), as canonical JSON.
    pub(crate) fn policies(&self) -> Vec<(String, String)> {
        let directory = self.directory.load();
        let mut all: Vec<_> = directory
            .policies
            .iter()
            .map(|(n, d)| (n.clone(), d.to_json()))
            .collect();
        all.sort();
        all
    }

    /// Validates, stores and applies a policy document (TOML or JSON). Returns how many live
    /// connections it closed.
    pub(crate) async fn put_policy(
        &self,
        actor: &str,
        name: String,
        text: &str,
    ) -> Result<usize, IdentityError> {
        validate_name(&name, "policy")?;
        let doc = PolicyDocument::parse(&name, text)
            .map_err(|e| IdentityError::Invalid(format!("policy {name}: {e}")))?;
        let _guard = self.changes.lock().await;
        let json = doc.to_json();
        let n = name.clone();
        self.blocking(move |r| Ok(r.put_policy(&n, &json, now_ms())?))
            .await?;
        self.audit_now(Entry::new(
            now_ms(),
            actor,
            "policy.put",
            format!("policy:{name}"),
            Outcome::Success,
        ))
        .await?;
        self.refresh_directory().await
    }

    pub(crate) async fn delete_policy(
        &self,
        actor: &str,
        name: String,
    ) -> Result<usize, IdentityError> {
        let _guard = self.changes.lock().await;
        let n = name.clone();
        if !self.blocking(move |r| Ok(r.delete_policy(&n)?)).await? {
            return Err(IdentityError::NotFound(format!(
                "stored policy {name} (built-in templates cannot be deleted)"
            )));
        }
        self.audit_now(Entry::new(
            now_ms(),
            actor,
            "policy.delete",
            format!("policy:{name}"),
            Outcome::Success,
        ))
        .await?;
        self.refresh_directory().await
    }

    /// What the policies decide for `device` doing `action` on `topic` (a topic name, or a
    /// filter for `subscribe`, or a client id for `connect`), and which statement decided.
    /// What the device's policies decide for `action` on `topic`, and the quota they set.
    pub(crate) fn test_policy(
        &self,
        device: &str,
        action: Action,
        topic: &str,
    ) -> Result<(Decision, Quota), IdentityError> {
        let directory = self.directory.load();
        let record = find_device(&directory, &self.registry, device)
            .ok_or_else(|| IdentityError::NotFound(format!("device {device}")))?;
        let bound = directory.bind_device(&record, device);
        let decision = match action {
            Action::Connect => bound.decide_connect(topic),
            Action::Subscribe => {
                let filter = TopicFilter::parse(topic)
                    .map_err(|e| IdentityError::Invalid(format!("topic filter {topic:?}: {e}")))?;
                bound.decide_subscribe(&filter)
            }
            _ => {
                let name = TopicName::parse(topic)
                    .map_err(|e| IdentityError::Invalid(format!("topic {topic:?}: {e}")))?;
                bound.decide_topic(action, &name)
            }
        };
        Ok((decision, bound.quota()))
    }

    // ---- CRL -----------------------------------------------------------------------------

    /// The CRL (DER) of the current issuing CA, or of the previous one during a rotation
    /// overlap (`None` if there is none); re-signed when older than half its validity or
    /// after a change. Each lists every revoked, unexpired serial: serials are random 127-bit
    /// numbers, so a serial the other CA issued names no certificate of this one.
    pub(crate) async fn crl(
        &self,
        slot: moat_pki::IssuerSlot,
    ) -> Result<Option<Arc<Vec<u8>>>, IdentityError> {
        let index = usize::from(slot == moat_pki::IssuerSlot::Previous);
        let ca = self.ca.load_full();
        if index == 1 && ca.previous_issuing_cert_pem().is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let half = u64::try_from(CRL_VALIDITY.as_millis() / 2).unwrap_or(u64::MAX);
        if let Some(c) = &self.crl.lock().unwrap_or_else(PoisonError::into_inner)[index]
            && now.saturating_sub(c.made_ms) < half
        {
            return Ok(Some(c.der.clone()));
        }
        let der = self
            .blocking(move |r| {
                let revoked = r
                    .revoked_certificates(now)?
                    .into_iter()
                    .filter_map(|c| {
                        Some(RevokedSerial {
                            serial: parse_hex(&c.serial)?,
                            revoked_at: from_ms(c.revoked_at_ms?),
                            reason: c.reason.as_deref().and_then(reason_from_name),
                        })
                    })
                    .collect::<Vec<_>>();
                let number = r.next_counter("crl_number")?;
                let this_update = from_ms(now);
                let crl = ca.issue_crl_for(
                    slot,
                    &revoked,
                    number,
                    this_update,
                    this_update + CRL_VALIDITY,
                )?;
                Ok(crl.as_ref().to_vec())
            })
            .await?;
        let der = Arc::new(der);
        self.crl.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(CachedCrl {
            der: der.clone(),
            made_ms: now,
        });
        Ok(Some(der))
    }
}

/// Subjects (RFC 4514) of the issuing CAs `ca` trusts now.
pub(crate) fn issuing_subjects(ca: &CertificateAuthority) -> Vec<String> {
    ca.trusted_issuing_certs()
        .iter()
        .filter_map(|c| moat_pki::ca_certificate_subject(c).ok())
        .collect()
}

/// Records an issued certificate (and the device, if new) in the registry.
pub(crate) fn register_issued(
    registry: &Registry,
    id: &DeviceId,
    cert: &IssuedCertificate,
    source: &str,
    group: Option<String>,
) -> Result<(), IdentityError> {
    let now = now_ms();
    if registry.device(id.as_str())?.is_none() {
        registry.put_device(&DeviceRecord {
            id: id.to_string(),
            group,
            status: DeviceStatus::Active,
            attrs: BTreeMap::new(),
            policies: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
        })?;
    }
    registry.add_certificate(&CertificateRecord {
        serial: moat_pki::serial_hex(&cert.serial),
        device_id: id.to_string(),
        not_before_ms: to_ms(cert.not_before),
        not_after_ms: to_ms(cert.not_after),
        issued_at_ms: now,
        source: source.to_owned(),
        revoked_at_ms: None,
        reason: None,
    })?;
    Ok(())
}

pub(crate) fn issued_entry(
    actor: &str,
    id: &DeviceId,
    cert: &IssuedCertificate,
    source: &str,
) -> Entry {
    Entry::new(
        now_ms(),
        actor,
        "certificate.issue",
        format!("device:{id}"),
        Outcome::Success,
    )
    .with("serial", moat_pki::serial_hex(&cert.serial))
    .with("not_after", cert.not_after)
    .with("source", source)
}

pub(crate) fn validate_name(name: &str, what: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Invalid(format!(
            "{what} name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// RFC 5280 reason names as the API accepts them.
pub(crate) fn reason_from_name(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        "privilegeWithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}
