//! The ban list on a running hub: operator bans (`moat ban`, `/api/v1/bans`) and the
//! automatic bans the shield issues, kept in the registry (`bans` table), loaded at start and
//! swapped into moat-net's [`Shield`] as one snapshot.
//!
//! ```text
//! operator: POST /api/v1/bans ─▶ Bans::add (under `changes`)
//!   registry.put_ban ─▶ audit `ban.add` (committed) ─▶ reload snapshot ─▶ Shield::set_bans
//!   device / client-id ban ─▶ Broker::kick_where / kick_client_id: live sessions closed (0x87)
//!   address / CIDR ban ─▶ devices live from those addresses closed too
//!
//! shield: N failures ─▶ ban applied in memory at once ─▶ SecurityEvents::auto_banned
//!   ─▶ NetEvents ─▶ bounded queue ─▶ auto_ban_writer: registry.put_ban(ExtendOnly),
//!      audit `ban.auto` with the evidence, device sessions closed
//! ```
//!
//! Expired bans stop applying by themselves (the snapshot compares expiry with the clock);
//! [`REFRESH_INTERVAL`] later they are deleted from the registry and left out of the snapshot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use moat_audit::{Entry, Outcome};
use moat_broker::{Broker, Principal, ReasonCode};
use moat_net::{AutoBan, BanList, BanTarget, IpNet, Offender, Shield};
use moat_store::registry::{BanKind, BanRecord, BanUpdate, Registry};
use moat_types::{ClientId, DeviceId};
use tokio::sync::{mpsc, watch};

use crate::identity::{Identity, IdentityError, NetEvents, now_ms};

/// How often expired bans are purged from the registry and the snapshot.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Automatic bans waiting to be written; beyond it one is applied in memory only (and
/// logged), never blocking the accept path.
pub const AUTO_BAN_QUEUE: usize = 1024;
/// Longest reason an operator may give, bytes.
pub const MAX_BAN_REASON: usize = 512;

/// An automatic ban on its way to the registry, with the address of its last failure.
pub(crate) type QueuedAutoBan = (std::net::SocketAddr, AutoBan);

/// The ban list service.
#[derive(Debug)]
pub(crate) struct Bans {
    identity: Arc<Identity>,
    shield: Arc<Shield>,
    broker: Broker,
    events: Arc<NetEvents>,
}

fn kind_of(target: &BanTarget) -> (BanKind, String) {
    match target {
        BanTarget::Address(ip) => (BanKind::Address, ip.to_string()),
        BanTarget::Network(net) => (BanKind::Cidr, net.to_string()),
        BanTarget::Device(id) => (BanKind::Device, id.clone()),
        BanTarget::ClientId(id) => (BanKind::ClientId, id.clone()),
    }
}

/// Parses an operator's `value` for `kind` into its target (canonical form).
pub(crate) fn parse_target(kind: BanKind, value: &str) -> Result<BanTarget, IdentityError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        IdentityError::Invalid(format!("{what} {value:?}: {e}"))
    };
    Ok(match kind {
        BanKind::Address => BanTarget::Address(
            value
                .parse::<IpAddr>()
                .map_err(|e| invalid("address", &e))?
                .to_canonical(),
        ),
        BanKind::Cidr => {
            let net: IpNet = value.parse().map_err(|e| invalid("network", &e))?;
            if net.prefix() == 0 {
                return Err(IdentityError::Invalid(format!(
                    "network {value:?} covers every address; refusing to ban the whole internet"
                )));
            }
            BanTarget::Network(net)
        }
        BanKind::Device => BanTarget::Device(
            DeviceId::parse(value)
                .map_err(|e| invalid("device id", &e))?
                .to_string(),
        ),
        BanKind::ClientId => BanTarget::ClientId(
            ClientId::parse(value)
                .map_err(|e| invalid("client id", &e))?
                .as_str()
                .to_owned(),
        ),
    })
}

/// The snapshot of `records` that apply at `now_ms`. A row that no longer parses (edited by
/// hand) is skipped with an error in the log rather than stopping the hub.
fn snapshot(records: &[BanRecord], now_ms: u64) -> BanList {
    let mut list = BanList::default();
    for r in records {
        if r.expires_at_ms.is_some_and(|at| at <= now_ms) {
            continue;
        }
        match parse_target(r.kind, &r.value) {
            Ok(target) => list.insert(target, r.expires_at_ms),
            Err(e) => tracing::error!(id = %r.id, error = %e, "skipping a malformed ban"),
        }
    }
    list
}

fn ban_json(r: &BanRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "kind": r.kind.as_str(),
        "value": r.value,
        "reason": r.reason,
        "created_at_ms": r.created_at_ms,
        "expires_at_ms": r.expires_at_ms,
        "created_by": r.created_by,
    })
}

async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
}

impl Bans {
    /// Loads the bans from the registry into `shield`.
    pub(crate) async fn start(
        identity: Arc<Identity>,
        shield: Arc<Shield>,
        broker: Broker,
        events: Arc<NetEvents>,
    ) -> Result<Arc<Self>, IdentityError> {
        let bans = Arc::new(Self {
            identity,
            shield,
            broker,
            events,
        });
        bans.refresh().await?;
        Ok(bans)
    }

    /// Deletes expired bans and swaps the rest in.
    pub(crate) async fn refresh(&self) -> Result<(), IdentityError> {
        let now = now_ms();
        let records = blocking(&self.identity.registry, move |r| {
            r.delete_expired_bans(now)?;
            Ok(r.bans()?)
        })
        .await?;
        self.shield.set_bans(snapshot(&records, now));
        Ok(())
    }

    /// The bans in force, oldest first, as the API shows them.
    pub(crate) async fn list(&self) -> Result<Vec<serde_json::Value>, IdentityError> {
        let now = now_ms();
        let records = blocking(&self.identity.registry, |r| Ok(r.bans()?)).await?;
        Ok(records
            .iter()
            .filter(|r| r.expires_at_ms.is_none_or(|at| at > now))
            .map(ban_json)
            .collect())
    }

    /// Closes the live sessions `target` covers; how many.
    fn kick(&self, target: &BanTarget) -> usize {
        let reason = ReasonCode::NotAuthorized;
        match target {
            BanTarget::Device(id) => self.broker.kick_where(
                reason,
                |p| matches!(p, Principal::Device(d) if d.as_str() == id),
            ),
            BanTarget::ClientId(id) => ClientId::parse(id)
                .map(|c| usize::from(self.broker.kick_client_id(reason, &c)))
                .unwrap_or(0),
            BanTarget::Address(_) | BanTarget::Network(_) => {
                let banned = |ip: IpAddr| match target {
                    BanTarget::Address(a) => ip.to_canonical() == *a,
                    BanTarget::Network(n) => n.contains(ip),
                    _ => false,
                };
                let devices = self.events.devices_live_from(banned);
                if devices.is_empty() {
                    return 0;
                }
                self.broker.kick_where(
                    reason,
                    |p| matches!(p, Principal::Device(d) if devices.contains(d.as_str())),
                )
            }
        }
    }

    /// Adds (or replaces) an operator's ban; returns it and how many live connections it
    /// closed.
    pub(crate) async fn add(
        &self,
        actor: &str,
        kind: BanKind,
        value: &str,
        duration: Option<Duration>,
        reason: &str,
    ) -> Result<(serde_json::Value, usize), IdentityError> {
        let target = parse_target(kind, value)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > MAX_BAN_REASON {
            return Err(IdentityError::Invalid(format!(
                "a ban needs a reason of 1-{MAX_BAN_REASON} bytes"
            )));
        }
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(IdentityError::Invalid(
                "a ban's duration must be at least a second".into(),
            ));
        }
        let (kind, value) = kind_of(&target);
        let now = now_ms();
        let record = BanRecord {
            id: crate::access::hex(&crate::access::random_bytes::<8>()?),
            kind,
            value,
            reason: reason.to_owned(),
            created_at_ms: now,
            expires_at_ms: duration
                .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            created_by: actor.to_owned(),
        };
        let _changes = self.identity.changes.lock().await;
        let stored = blocking(&self.identity.registry, move |r| {
            Ok(r.put_ban(&record, BanUpdate::Replace)?)
        })
        .await?;
        self.refresh().await?;
        let kicked = self.kick(&target);
        let mut entry = Entry::new(
            now,
            actor,
            "ban.add",
            format!("{}:{}", stored.kind.as_str(), stored.value),
            Outcome::Success,
        )
        .with("id", &stored.id)
        .with("reason", &stored.reason)
        .with("closed_connections", kicked);
        if let Some(at) = stored.expires_at_ms {
            entry = entry.with("expires_at_ms", at);
        }
        self.identity.audit_now(entry).await?;
        Ok((ban_json(&stored), kicked))
    }

    /// Removes a ban by id.
    pub(crate) async fn remove(&self, actor: &str, id: &str) -> Result<(), IdentityError> {
        let _changes = self.identity.changes.lock().await;
        let owned = id.to_owned();
        let removed = blocking(&self.identity.registry, move |r| Ok(r.delete_ban(&owned)?))
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("ban {id}")))?;
        self.refresh().await?;
        self.identity
            .audit_now(
                Entry::new(
                    now_ms(),
                    actor,
                    "ban.remove",
                    format!("{}:{}", removed.kind.as_str(), removed.value),
                    Outcome::Success,
                )
                .with("id", &removed.id)
                .with("was_created_by", &removed.created_by),
            )
            .await
    }

    /// Records one automatic ban (already in force in the shield).
    async fn record_auto_ban(&self, peer: std::net::SocketAddr, ban: AutoBan) {
        let target = ban.target();
        let (kind, value) = kind_of(&target);
        let now = now_ms();
        let id = match crate::access::random_bytes::<8>() {
            Ok(b) => crate::access::hex(&b),
            Err(e) => {
                tracing::error!(error = %e, "automatic ban not recorded");
                return;
            }
        };
        let record = BanRecord {
            id,
            kind,
            value,
            reason: ban.reason(),
            created_at_ms: now,
            expires_at_ms: Some(ban.expires_at_ms),
            created_by: "auto".to_owned(),
        };
        let stored = {
            let _changes = self.identity.changes.lock().await;
            match blocking(&self.identity.registry, move |r| {
                Ok(r.put_ban(&record, BanUpdate::ExtendOnly)?)
            })
            .await
            {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "automatic ban not recorded; it applies until restart");
                    return;
                }
            }
        };
        let kicked = match ban.offender {
            Offender::Device(_) => self.kick(&target),
            Offender::Address(_) => 0,
        };
        self.identity.audit.record(
            Entry::new(
                now,
                "auto",
                "ban.auto",
                format!("{}:{}", stored.kind.as_str(), stored.value),
                Outcome::Denied,
            )
            .with("id", &stored.id)
            .with("reason", ban.reason())
            .with("failures", ban.failures)
            .with("offence", ban.offence)
            .with("duration_secs", ban.duration.as_secs())
            .with(
                "expires_at_ms",
                stored.expires_at_ms.unwrap_or(ban.expires_at_ms),
            )
            .with("last_peer", peer)
            .with("closed_connections", kicked),
        );
    }
}

/// Writes automatic bans as they come, and purges expired bans every [`REFRESH_INTERVAL`],
/// until `stop` turns true.
pub(crate) async fn maintain(
    bans: Arc<Bans>,
    mut auto: mpsc::Receiver<QueuedAutoBan>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The select only decides; the work happens after it, outside its borrows.
        let queued = tokio::select! {
            queued = auto.recv() => match queued {
                Some(q) => Some(q),
                None => return,
            },
            _ = interval.tick() => None,
            _ = stop.wait_for(|s| *s) => return,
        };
        match queued {
            Some((peer, ban)) => bans.record_auto_ban(peer, ban).await,
            None => {
                if let Err(e) = bans.refresh().await {
                    tracing::error!(error = %e, "cannot refresh the ban list");
                }
            }
        }
    }
}

/// The queue from the network events to [`maintain`].
pub(crate) fn auto_ban_queue() -> (mpsc::Sender<QueuedAutoBan>, mpsc::Receiver<QueuedAutoBan>) {
    mpsc::channel(AUTO_BAN_QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_and_canonical() {
        assert_eq!(
            parse_target(BanKind::Address, "::ffff:10.0.0.1").expect("mapped"),
            BanTarget::Address("10.0.0.1".parse().expect("ip"))
        );
        assert!(parse_target(BanKind::Address, "10.0.0.0/8").is_err());
        assert!(
            parse_target(BanKind::Cidr, "10.0.0.1/8").is_err(),
            "host bits"
        );
        assert!(
            parse_target(BanKind::Cidr, "0.0.0.0/0").is_err(),
            "everything"
        );
        assert!(parse_target(BanKind::Cidr, "10.0.0.0/8").is_ok());
        assert!(parse_target(BanKind::Device, "dev/1").is_err());
        assert!(parse_target(BanKind::ClientId, "").is_err());
    }

    #[test]
    fn expired_and_malformed_rows_are_left_out_of_the_snapshot() {
        let row = |kind, value: &str, expires| BanRecord {
            id: value.into(),
            kind,
            value: value.into(),
            reason: "r".into(),
            created_at_ms: 0,
            expires_at_ms: expires,
            created_by: "op".into(),
        };
        let list = snapshot(
            &[
                row(BanKind::Address, "10.0.0.1", Some(100)),
                row(BanKind::Address, "10.0.0.2", Some(10)),
                row(BanKind::Cidr, "not a network", None),
                row(BanKind::Device, "dev1", None),
            ],
            50,
        );
        assert_eq!(list.len(), 2);
        assert!(list.address_banned("10.0.0.1".parse().expect("ip"), 50));
        assert!(list.identity_banned(Some("dev1"), "dev1", 50));
    }
}
