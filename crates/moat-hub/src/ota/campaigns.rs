//! Running campaigns on the hub: the task that ticks `moat_ota::campaign`'s state machine,
//! carries out its actions (director targets through [`OtaService::assign`]), stores every
//! change in the registry and audits every transition.
//!
//! All changes to a campaign go through one async mutex over the campaigns in memory
//! ([`Campaigns::live`]): operator operations, device reports and the tick (every [`TICK`]).
//! Reads (API, console) come from the registry, which is written before the lock is released,
//! so they see every completed change. Campaigns in memory are those that may still change
//! on their own (draft, running, paused, rolling back); an operation or a late report on any
//! other campaign loads it from the registry.
//!
//! Audit actions: `ota.campaign.create`, `.start`, `.pause`, `.resume`, `.abort`,
//! `.rollback` (operators); `ota.campaign.transition` (every status change, with its
//! reason), `ota.campaign.wave` (a wave became active), `ota.campaign.gate` (a gate tripped,
//! with its explanation), `ota.campaign.assign` / `.unassign` (director targets set or
//! cleared: one entry per tick listing up to [`AUDIT_DEVICES_LISTED`] devices and the count),
//! `ota.campaign.timeout` (devices that did not report in time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moat_audit::{Entry, Outcome};
use moat_ota::campaign::{
    Action, Campaign, CampaignError, CampaignMeta, CampaignSpec, DeviceEntry, DeviceReport,
    Signals, Status,
};
use moat_store::registry::{CampaignDeviceRow, CampaignRow, DeviceStatus, MAX_PAGE, Registry};
use moat_types::DeviceId;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use super::signals::SignalTracker;
use super::{DirectorTarget, OtaService};
use crate::identity::{AuditSink, IdentityError, now_ms};
use moat_ota::report::StatusReport;

/// How often campaigns advance: 1 second.
pub const TICK: Duration = Duration::from_secs(1);
/// Most campaigns that are draft, running, paused or rolling back at once.
pub const MAX_LIVE_CAMPAIGNS: usize = 32;
/// Devices named in one assignment audit entry (the count is always there).
pub const AUDIT_DEVICES_LISTED: usize = 20;

/// Sets and clears director targets, and looks up image targets: the hub's
/// [`OtaService`] (a fake in unit tests).
pub(crate) trait Director: Send + Sync + std::fmt::Debug {
    /// Sets (`Some`: target, campaign id, consent flag) or clears the device's director
    /// target.
    fn assign(&self, device: &DeviceId, target: Option<DirectorTarget<'_>>) -> Result<(), String>;
    /// Whether `name` is an image target, and whether it was published with
    /// `downgrade: true`.
    fn target_downgrade(&self, name: &str) -> Option<bool>;
}

impl Director for OtaService {
    fn assign(&self, device: &DeviceId, target: Option<DirectorTarget<'_>>) -> Result<(), String> {
        OtaService::assign(self, device, target).map_err(|e| e.to_string())
    }

    fn target_downgrade(&self, name: &str) -> Option<bool> {
        self.target(name).map(|t| t.downgrade)
    }
}

/// An operator's operation on a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Start,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => Self::Start,
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "abort" => Self::Abort,
            "rollback" => Self::Rollback,
            _ => return None,
        })
    }
}

/// The hub's campaigns (see the module docs).
#[derive(Debug)]
pub(crate) struct Campaigns {
    registry: Arc<Registry>,
    audit: AuditSink,
    director: Arc<dyn Director>,
    pub(crate) signals: Arc<SignalTracker>,
    /// Counters of the device report path (`reports.rs`), rendered in `/metrics`.
    pub(crate) report_stats: Arc<super::reports::ReportStats>,
    live: Mutex<BTreeMap<u64, Campaign>>,
}

fn from_campaign_error(e: CampaignError) -> IdentityError {
    match e {
        CampaignError::NotAllowed { .. } => IdentityError::Conflict(e.to_string()),
        CampaignError::Corrupt(_) => IdentityError::Internal(e.to_string()),
        _ => IdentityError::Invalid(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
}

/// Rebuilds a campaign from its rows.
fn load(registry: &Registry, row: &CampaignRow) -> Result<Campaign, IdentityError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        IdentityError::Internal(format!("campaign {} {what}: {e}", row.id))
    };
    let meta: CampaignMeta = serde_json::from_str(&row.meta).map_err(|e| corrupt("meta", &e))?;
    let mut devices: Vec<DeviceEntry> = Vec::new();
    for d in registry.campaign_devices(row.id)? {
        devices.push(serde_json::from_str(&d.entry).map_err(|e| corrupt(&d.device, &e))?);
    }
    // Wave order (rows come back in id order; the order within a wave does not matter).
    devices.sort_by_key(|d| d.wave);
    Campaign::from_parts(meta, devices).map_err(from_campaign_error)
}

fn rows(c: &Campaign, devices: &[DeviceEntry]) -> (CampaignRow, Vec<CampaignDeviceRow>) {
    let meta = c.meta();
    (
        CampaignRow {
            id: meta.id,
            name: meta.spec.name.clone(),
            status: meta.status.as_str().to_owned(),
            meta: serde_json::to_string(meta).unwrap_or_default(),
            created_at_ms: meta.created_at_ms,
            updated_at_ms: now_ms(),
        },
        devices
            .iter()
            .map(|d| CampaignDeviceRow {
                device: d.device.as_str().to_owned(),
                stage: d.stage.as_str().to_owned(),
                entry: serde_json::to_string(d).unwrap_or_default(),
            })
            .collect(),
    )
}

/// The JSON the API and CLI show for a campaign; `devices` adds each device's state.
pub(crate) fn view(c: &Campaign, devices: bool) -> Value {
    let m = c.meta();
    let waves = c.wave_counts();
    let mut v = json!({
        "id": m.id,
        "name": m.spec.name,
        "group": m.spec.group,
        "target": m.spec.target,
        "rollback_target": m.spec.rollback_target,
        "status": m.status.as_str(),
        "reason": m.reason,
        "current_wave": m.current_wave,
        "devices_total": c.devices().len(),
        "waves": waves,
        "spec": m.spec,
        "created_at_ms": m.created_at_ms,
        "started_at_ms": m.started_at_ms,
        "wave_started_at_ms": m.wave_started_at_ms,
        "finished_at_ms": m.finished_at_ms,
        "last_trip": m.last_trip,
        "in_window": m.spec.in_window(now_ms()),
    });
    if devices {
        v["devices"] = json!(c.devices());
    }
    v
}

impl Campaigns {
    /// Loads the campaigns that may still change.
    pub(crate) fn load(
        registry: Arc<Registry>,
        audit: AuditSink,
        director: Arc<dyn Director>,
    ) -> Result<Arc<Self>, IdentityError> {
        let mut live = BTreeMap::new();
        for row in
            registry.campaigns_with_status(&["draft", "running", "paused", "rolling_back"])?
        {
            match load(&registry, &row) {
                Ok(c) => {
                    live.insert(row.id, c);
                }
                Err(e) => {
                    tracing::error!(campaign = row.id, error = %e, "cannot load a campaign; it stays as stored");
                }
            }
        }
        if !live.is_empty() {
            tracing::info!(campaigns = live.len(), "update campaigns resumed");
        }
        Ok(Arc::new(Self {
            registry,
            audit,
            director,
            signals: Arc::default(),
            report_stats: Arc::default(),
            live: Mutex::new(live),
        }))
    }

    /// Creates a draft campaign over the group's devices (not revoked) as they are now.
    pub(crate) async fn create(
        &self,
        spec: CampaignSpec,
        actor: &str,
    ) -> Result<Value, IdentityError> {
        spec.validate().map_err(from_campaign_error)?;
        match self.director.target_downgrade(&spec.target) {
            None => {
                return Err(IdentityError::Invalid(format!(
                    "target {} is not in the image repository; publish it first with `moat ota publish`",
                    spec.target
                )));
            }
            Some(true) => {
                return Err(IdentityError::Invalid(format!(
                    "target {} was published with --allow-downgrade; a campaign's image must be a normal (upgrade) target",
                    spec.target
                )));
            }
            Some(false) => {}
        }
        if let Some(rb) = &spec.rollback_target
            && self.director.target_downgrade(rb) != Some(true)
        {
            return Err(IdentityError::Invalid(format!(
                "rollback target {rb} must be in the image repository and published with --allow-downgrade (devices refuse a lower version otherwise)"
            )));
        }
        let mut live = self.live.lock().await;
        if live.len() >= MAX_LIVE_CAMPAIGNS {
            return Err(IdentityError::Conflict(format!(
                "{MAX_LIVE_CAMPAIGNS} campaigns are already draft, running, paused or rolling back; finish or abort one first"
            )));
        }
        let registry = self.registry.clone();
        let group = spec.group.clone();
        let (id, devices) = blocking(move || {
            if !registry.groups()?.iter().any(|g| g.name == group) {
                return Err(IdentityError::NotFound(format!("group {group}")));
            }
            let devices: Vec<DeviceId> = registry
                .all_devices()?
                .into_iter()
                .filter(|d| d.group.as_deref() == Some(group.as_str()))
                .filter(|d| d.status != DeviceStatus::Revoked)
                .filter_map(|d| DeviceId::parse(&d.id).ok())
                .collect();
            Ok((registry.next_campaign_id()?, devices))
        })
        .await?;
        let mut campaign =
            Campaign::new(id, spec, devices, now_ms()).map_err(from_campaign_error)?;
        self.save(&mut campaign, true).await?;
        let v = view(&campaign, false);
        let m = campaign.meta();
        self.audit.record(
            Entry::new(
                now_ms(),
                actor,
                "ota.campaign.create",
                format!("campaign:{id}"),
                Outcome::Success,
            )
            .with("name", &m.spec.name)
            .with("group", &m.spec.group)
            .with("target", &m.spec.target)
            .with("devices", campaign.devices().len()),
        );
        live.insert(id, campaign);
        Ok(v)
    }

    /// Stores the campaign's meta row and its changed devices (all of them with `all`).
    async fn save(&self, c: &mut Campaign, all: bool) -> Result<(), IdentityError> {
        let changed = if all {
            let _ = c.take_changed();
            c.devices().to_vec()
        } else {
            c.take_changed()
        };
        let (row, devices) = rows(c, &changed);
        let registry = self.registry.clone();
        blocking(move || Ok(registry.save_campaign(&row, &devices)?)).await
    }

    /// One campaign as the API shows it.
    pub(crate) async fn get(&self, id: u64, devices: bool) -> Result<Value, IdentityError> {
        if let Some(c) = self.live.lock().await.get(&id) {
            return Ok(view(c, devices));
        }
        let registry = self.registry.clone();
        let c = blocking(move || {
            let row = registry
                .campaign(id)?
                .ok_or_else(|| IdentityError::NotFound(format!("campaign {id}")))?;
            load(&registry, &row)
        })
        .await?;
        Ok(view(&c, devices))
    }

    /// Campaigns, newest first.
    pub(crate) async fn list(&self, limit: usize) -> Result<Vec<Value>, IdentityError> {
        let registry = self.registry.clone();
        let stored = blocking(move || {
            let mut out = Vec::new();
            for row in registry.campaigns(limit.min(MAX_PAGE))? {
                match load(&registry, &row) {
                    Ok(c) => out.push(c),
                    Err(e) => tracing::warn!(campaign = row.id, error = %e, "unreadable campaign"),
                }
            }
            Ok(out)
        })
        .await?;
        let live = self.live.lock().await;
        Ok(stored
            .iter()
            .map(|c| view(live.get(&c.id()).unwrap_or(c), false))
            .collect())
    }

    /// Applies an operator's operation.
    pub(crate) async fn operate(
        &self,
        id: u64,
        op: Operation,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Value, IdentityError> {
        let mut live = self.live.lock().await;
        if let std::collections::btree_map::Entry::Vacant(slot) = live.entry(id) {
            let registry = self.registry.clone();
            let c = blocking(move || {
                let row = registry
                    .campaign(id)?
                    .ok_or_else(|| IdentityError::NotFound(format!("campaign {id}")))?;
                load(&registry, &row)
            })
            .await?;
            slot.insert(c);
        }
        if op == Operation::Start {
            self.check_overlap(&live, id)?;
        }
        let now = now_ms();
        let result = {
            let signals = if op == Operation::Resume {
                self.signals_of(live.get(&id)).await
            } else {
                BTreeMap::new()
            };
            let Some(c) = live.get_mut(&id) else {
                return Err(IdentityError::NotFound(format!("campaign {id}")));
            };
            let reason = reason.unwrap_or("operator");
            match op {
                Operation::Start => c.start(now),
                Operation::Pause => c.pause(now, &format!("paused by {actor}: {reason}")),
                Operation::Resume => c.resume(now, &signals),
                Operation::Abort => c.abort(now, &format!("aborted by {actor}: {reason}")),
                Operation::Rollback => c.rollback(now),
            }
        };
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Error,
        };
        let mut entry = Entry::new(
            now,
            actor,
            format!("ota.campaign.{}", op.as_str()),
            format!("campaign:{id}"),
            outcome,
        );
        if let Some(r) = reason {
            entry = entry.with("reason", r);
        }
        if let Err(e) = &result {
            entry = entry.with("error", e);
        }
        self.audit.record(entry);
        let actions = result.map_err(from_campaign_error)?;
        let Some(c) = live.get_mut(&id) else {
            return Err(IdentityError::NotFound(format!("campaign {id}")));
        };
        self.apply(c, &actions).await;
        self.save(c, false).await?;
        let v = view(c, false);
        if !matches!(
            c.status(),
            Status::Draft | Status::Running | Status::Paused | Status::RollingBack
        ) {
            live.remove(&id);
        }
        Ok(v)
    }

    /// Refuses to start a campaign sharing a device with another active campaign: the
    /// director holds one target per device.
    fn check_overlap(&self, live: &BTreeMap<u64, Campaign>, id: u64) -> Result<(), IdentityError> {
        let Some(c) = live.get(&id) else {
            return Ok(());
        };
        for (other_id, other) in live {
            if *other_id == id || !other.status().is_live() {
                continue;
            }
            if let Some(d) = c
                .devices()
                .iter()
                .find(|d| other.device(&d.device).is_some())
            {
                return Err(IdentityError::Conflict(format!(
                    "device {} is also in campaign {other_id} ({}); finish or abort that campaign first",
                    d.device,
                    other.status()
                )));
            }
        }
        Ok(())
    }

    /// Applies a device's status report to the campaign it names.
    pub(crate) async fn report(&self, device: &DeviceId, r: &StatusReport, at_ms: u64) {
        let Some(id) = r.campaign else { return };
        let report = DeviceReport {
            campaign: Some(id),
            target: r.target.clone().unwrap_or_default(),
            state: r.state,
            progress: r.progress,
            error: r.error.clone(),
        };
        let mut live = self.live.lock().await;
        let mut loaded = None;
        let c = match live.get_mut(&id) {
            Some(c) => c,
            None => {
                // A late report for a finished campaign (a device that was updating when it
                // was aborted, or had timed out).
                // Loaded only when the report can change the device's entry, so that a
                // device repeating a stale report cannot make the hub reload campaigns.
                let registry = self.registry.clone();
                let d = device.as_str().to_owned();
                let Ok(Some(c)) = blocking(move || {
                    let waiting = registry.campaigns_of_device(&d)?.iter().any(|(c, row)| {
                        *c == id
                            && matches!(
                                row.stage.as_str(),
                                "assigned"
                                    | "updating"
                                    | "timed_out"
                                    | "cancelled"
                                    | "rolling_back"
                                    | "rollback_failed"
                            )
                    });
                    match registry.campaign(id)? {
                        Some(row) if waiting => load(&registry, &row).map(Some),
                        _ => Ok(None),
                    }
                })
                .await
                else {
                    return;
                };
                loaded.insert(c)
            }
        };
        if c.device(device).is_none() {
            return;
        }
        let actions = c.report(device, &report, at_ms);
        self.apply(c, &actions).await;
        if let Err(e) = self.save(c, false).await {
            tracing::error!(campaign = id, error = %e, "cannot store a campaign");
        }
    }

    async fn signals_of(&self, c: Option<&Campaign>) -> BTreeMap<DeviceId, Signals> {
        let Some(c) = c else {
            return BTreeMap::new();
        };
        let requests = c.signal_requests();
        let Some(since) = requests.iter().map(|(_, t)| *t).min() else {
            return BTreeMap::new();
        };
        let registry = self.registry.clone();
        let alerts = blocking(move || Ok(registry.alerts(since, &[], MAX_PAGE)?))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read alerts for the campaign gates");
                Vec::new()
            });
        self.signals.signals(&requests, &alerts)
    }

    /// Advances every campaign in memory.
    pub(crate) async fn tick(&self) {
        let mut live = self.live.lock().await;
        let ids: Vec<u64> = live.keys().copied().collect();
        for id in ids {
            let signals = self.signals_of(live.get(&id)).await;
            let Some(c) = live.get_mut(&id) else { continue };
            let before = c.meta().clone();
            let actions = c.tick(now_ms(), &signals);
            if actions.is_empty() && before == *c.meta() {
                continue;
            }
            self.apply(c, &actions).await;
            if let Err(e) = self.save(c, false).await {
                tracing::error!(campaign = id, error = %e, "cannot store a campaign");
            }
            if !matches!(
                c.status(),
                Status::Draft | Status::Running | Status::Paused | Status::RollingBack
            ) {
                live.remove(&id);
            }
        }
    }

    /// Carries out the engine's actions and audits them.
    async fn apply(&self, c: &Campaign, actions: &[Action]) {
        let id = c.id();
        let campaign = id.to_string();
        let subject = format!("campaign:{id}");
        let mut assigned: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut unassigned = Vec::new();
        let mut failed = Vec::new();
        let mut timed_out = Vec::new();
        // (device, Some((target, consent)) to set, None to clear)
        let mut calls: Vec<(DeviceId, Option<(String, bool)>)> = Vec::new();
        for a in actions {
            match a {
                Action::Assign {
                    device,
                    target,
                    consent,
                } => {
                    calls.push((device.clone(), Some((target.clone(), *consent))));
                }
                Action::Unassign { device } => calls.push((device.clone(), None)),
                Action::Transition { from, to, reason } => {
                    tracing::info!(campaign = id, %from, %to, reason, "campaign status changed");
                    self.audit.record(
                        Entry::new(
                            now_ms(),
                            "hub",
                            "ota.campaign.transition",
                            &subject,
                            Outcome::Success,
                        )
                        .with("from", from)
                        .with("to", to)
                        .with("reason", reason),
                    );
                }
                Action::WaveStarted { wave, devices } => {
                    self.audit.record(
                        Entry::new(
                            now_ms(),
                            "hub",
                            "ota.campaign.wave",
                            &subject,
                            Outcome::Success,
                        )
                        .with("wave", u32::from(*wave) + 1)
                        .with("devices", devices),
                    );
                }
                Action::GateTripped(trip) => {
                    tracing::warn!(campaign = id, gate = trip.gate.as_str(), explanation = %trip.explanation, "campaign gate tripped");
                    self.audit.record(
                        Entry::new(
                            now_ms(),
                            "hub",
                            "ota.campaign.gate",
                            &subject,
                            Outcome::Denied,
                        )
                        .with("gate", trip.gate.as_str())
                        .with("wave", u32::from(trip.wave) + 1)
                        .with(
                            "action",
                            match trip.action {
                                moat_ota::campaign::GateAction::Pause => "pause",
                                moat_ota::campaign::GateAction::Abort => "abort",
                            },
                        )
                        .with("explanation", &trip.explanation),
                    );
                }
                Action::DeviceTimedOut { device } => timed_out.push(device.to_string()),
            }
        }
        for (device, target) in calls {
            let director = self.director.clone();
            let campaign = campaign.clone();
            let t = target.clone();
            let d = device.clone();
            let result = tokio::task::spawn_blocking(move || {
                director.assign(
                    &d,
                    t.as_ref().map(|(target, consent)| DirectorTarget {
                        target,
                        campaign: &campaign,
                        consent: *consent,
                    }),
                )
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match (result, target.map(|(t, _)| t)) {
                (Ok(()), Some(t)) => assigned.entry(t).or_default().push(device.to_string()),
                (Ok(()), None) => unassigned.push(device.to_string()),
                (Err(e), _) => {
                    tracing::error!(campaign = id, %device, error = %e, "cannot set the device's director target");
                    failed.push(format!("{device}: {e}"));
                }
            }
        }
        let listed = |v: &[String]| {
            let mut s = v
                .iter()
                .take(AUDIT_DEVICES_LISTED)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if v.len() > AUDIT_DEVICES_LISTED {
                s.push_str(",...");
            }
            s
        };
        for (target, devices) in &assigned {
            self.audit.record(
                Entry::new(
                    now_ms(),
                    "hub",
                    "ota.campaign.assign",
                    &subject,
                    Outcome::Success,
                )
                .with("target", target)
                .with("count", devices.len())
                .with("devices", listed(devices)),
            );
        }
        for (action, list, outcome) in [
            ("ota.campaign.unassign", &unassigned, Outcome::Success),
            ("ota.campaign.assign", &failed, Outcome::Error),
            ("ota.campaign.timeout", &timed_out, Outcome::Error),
        ] {
            if !list.is_empty() {
                self.audit.record(
                    Entry::new(now_ms(), "hub", action, &subject, outcome)
                        .with("count", list.len())
                        .with("devices", listed(list)),
                );
            }
        }
    }
}

/// Ticks the campaigns every [`TICK`] until `stop` turns true.
pub(crate) async fn run(campaigns: Arc<Campaigns>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        campaigns.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_ota::campaign::ReportState;
    use moat_store::registry::{DeviceRecord, GroupRecord};
    use std::sync::Mutex as StdMutex;

    /// Records director calls; knows `fw-2` (upgrade) and `fw-1` (downgrade).
    /// (device, (target, campaign, consent)) as the director was asked.
    type Call = (String, Option<(String, String, bool)>);

    #[derive(Debug, Default)]
    struct FakeDirector {
        calls: StdMutex<Vec<Call>>,
    }

    impl Director for FakeDirector {
        fn assign(
            &self,
            device: &DeviceId,
            target: Option<DirectorTarget<'_>>,
        ) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((
                    device.to_string(),
                    target.map(|t| (t.target.to_owned(), t.campaign.to_owned(), t.consent)),
                ));
            Ok(())
        }

        fn target_downgrade(&self, name: &str) -> Option<bool> {
            match name {
                "fw-2" => Some(false),
                "fw-1" => Some(true),
                _ => None,
            }
        }
    }

    fn registry(dir: &std::path::Path) -> Arc<Registry> {
        let key = moat_audit::AnchorKey::new(&[9u8; 32]).expect("key");
        Arc::new(Registry::open(&dir.join("registry.db"), key).expect("open"))
    }

    fn status(campaign: u64, target: &str, state: ReportState) -> StatusReport {
        StatusReport {
            campaign: Some(campaign),
            target: Some(target.into()),
            version: Some("2".into()),
            state,
            progress: 100,
            error: None,
        }
    }

    #[tokio::test]
    async fn campaigns_assign_through_the_director_persist_and_resume_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("moat-hub-campaigns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let reg = registry(&dir);
        reg.put_group(&GroupRecord {
            name: "fleet".into(),
            policies: Vec::new(),
            created_at_ms: 0,
        })
        .expect("group");
        for i in 0..4 {
            reg.put_device(&DeviceRecord {
                id: format!("d{i}"),
                group: Some("fleet".into()),
                status: if i == 3 {
                    DeviceStatus::Revoked
                } else {
                    DeviceStatus::Active
                },
                attrs: Default::default(),
                policies: Vec::new(),
                created_at_ms: 0,
                updated_at_ms: 0,
            })
            .expect("device");
        }
        let (audit, mut audit_rx) = AuditSink::new();
        let director = Arc::new(FakeDirector::default());
        let campaigns =
            Campaigns::load(reg.clone(), audit.clone(), director.clone()).expect("load");
        let spec = |target: &str, rollback: Option<&str>| CampaignSpec {
            name: "c".into(),
            group: "fleet".into(),
            target: target.into(),
            rollback_target: rollback.map(str::to_owned),
            waves: vec![50, 100],
            windows: Vec::new(),
            consent: moat_ota::campaign::Consent::Required,
            device_timeout_secs: 600,
            gates: Default::default(),
        };
        // Unknown targets, downgrade images and upgrade rollback images are refused.
        for (t, rb) in [("nope", None), ("fw-1", None), ("fw-2", Some("fw-2x"))] {
            assert!(matches!(
                campaigns.create(spec(t, rb), "op").await,
                Err(IdentityError::Invalid(_))
            ));
        }
        let created = campaigns
            .create(spec("fw-2", Some("fw-1")), "op")
            .await
            .expect("create");
        assert_eq!(
            created["devices_total"], 3,
            "the revoked device is left out"
        );
        let id = created["id"].as_u64().expect("id");
        campaigns
            .operate(id, Operation::Start, "op", None)
            .await
            .expect("start");
        let first: Vec<String> = director
            .calls
            .lock()
            .expect("calls")
            .iter()
            .map(|(d, t)| {
                // The campaign requires consent: the director target says so.
                assert_eq!(
                    t.as_ref()
                        .map(|(t, c, consent)| (t.as_str(), c.clone(), *consent)),
                    Some(("fw-2", id.to_string(), true))
                );
                d.clone()
            })
            .collect();
        assert_eq!(first.len(), 2, "50% of 3");
        let device = DeviceId::parse(&first[0]).expect("id");
        campaigns
            .report(
                &device,
                &status(id, "fw-2", ReportState::Installed),
                now_ms(),
            )
            .await;

        // A restart: the running campaign comes back from the registry as it was.
        let again = Campaigns::load(reg.clone(), audit.clone(), director.clone()).expect("load");
        let v = again.get(id, true).await.expect("get");
        assert_eq!(v["status"], "running");
        assert_eq!(v["waves"][0]["installed"], 1);
        assert_eq!(v["waves"][0]["assigned"], 1);
        let other = DeviceId::parse(&first[1]).expect("id");
        again
            .report(
                &other,
                &status(id, "fw-2", ReportState::Installed),
                now_ms(),
            )
            .await;
        again.tick().await;
        let v = again.get(id, false).await.expect("get");
        assert_eq!(v["current_wave"], 1);
        assert_eq!(director.calls.lock().expect("calls").len(), 3);
        // Operations: conflicts and unknown campaigns are errors, not panics.
        assert!(matches!(
            again.operate(id, Operation::Resume, "op", None).await,
            Err(IdentityError::Conflict(_))
        ));
        assert!(matches!(
            again.operate(999, Operation::Pause, "op", None).await,
            Err(IdentityError::NotFound(_))
        ));
        let v = again
            .operate(id, Operation::Abort, "op", Some("enough"))
            .await
            .expect("abort");
        assert_eq!(v["status"], "aborted");
        assert!(v["reason"].as_str().is_some_and(|r| r.contains("enough")));
        // Aborted campaigns leave memory but stay readable, and can still roll back.
        let v = again
            .operate(id, Operation::Rollback, "op", None)
            .await
            .expect("rollback");
        assert_eq!(v["status"], "rolling_back");
        assert_eq!(
            director
                .calls
                .lock()
                .expect("calls")
                .iter()
                .filter(|(_, t)| t.as_ref().is_some_and(|(t, _, _)| t == "fw-1"))
                .count(),
            2
        );
        // A rollback does not wait for consent.
        assert!(
            director
                .calls
                .lock()
                .expect("calls")
                .iter()
                .filter_map(|(_, t)| t.as_ref())
                .filter(|(t, _, _)| t == "fw-1")
                .all(|(_, _, consent)| !consent)
        );
        assert_eq!(again.list(10).await.expect("list").len(), 1);
        let mut actions = Vec::new();
        while let Ok(e) = audit_rx.try_recv() {
            actions.push(format!("{e:?}"));
        }
        let all = actions.join("\n");
        for a in [
            "ota.campaign.create",
            "ota.campaign.start",
            "ota.campaign.assign",
            "ota.campaign.wave",
            "ota.campaign.abort",
            "ota.campaign.rollback",
            "ota.campaign.transition",
        ] {
            assert!(all.contains(a), "{a} not audited:\n{all}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
