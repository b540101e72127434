//! The console's pages and actions.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use moat_policy::Action;
use moat_store::registry::{DeviceRecord, DeviceStatus};
use moat_types::DeviceId;
use serde::Deserialize;

use super::chart::{self, Series};
use super::html::{
    Esc, Section, UrlPart, csrf_field, error_page, page, respond, see_other, time_el,
};
use super::session::Current;
use super::{Console, guard_post, require, signed_in};
use crate::access::Role;
use crate::identity::{IdentityError, now_ms};

/// Certificates expiring within this window are flagged.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// Rows per page of the device list.
pub const DEVICES_PER_PAGE: usize = 100;
/// Rows per page of the audit trail.
pub const AUDIT_PER_PAGE: usize = 50;
/// Rows of the fleet overview's lists (expiring certificates, approvals).
const OVERVIEW_ROWS: usize = 20;
/// Longest search text or form value the console reads.
const MAX_QUERY_LEN: usize = 256;

macro_rules! or_return {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

/// An identity-service error as a page; internal details go to the log only.
fn failed(who: &Current, e: &IdentityError) -> Response {
    let status = match e {
        IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
        IdentityError::Invalid(_) => StatusCode::BAD_REQUEST,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        IdentityError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        IdentityError::Store(_) | IdentityError::Pki(_) | IdentityError::Internal(_) => {
            tracing::error!(error = %e, "console operation failed");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(who),
                "Internal error; the hub's log has the details.",
            );
        }
    };
    error_page(status, Some(who), &e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
}

fn bounded(s: Option<String>) -> String {
    let mut s = s.unwrap_or_default();
    if s.len() > MAX_QUERY_LEN {
        let mut end = MAX_QUERY_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s.trim().to_owned()
}

fn status_label(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Disabled => "quarantined",
        DeviceStatus::Revoked => "revoked",
        DeviceStatus::Pending => "pending approval",
    }
}

fn online_badge(device: &str, online: bool) -> String {
    let (class, text) = if online {
        ("on", "online")
    } else {
        ("off", "offline")
    };
    format!(
        "<span class=\"badge {class}\" data-device=\"{}\">{text}</span>",
        Esc(device)
    )
}

fn device_link(id: &str) -> String {
    format!(
        "<a href=\"/console/devices/{}\">{}</a>",
        UrlPart(id),
        Esc(id)
    )
}

// ---- fleet overview -----------------------------------------------------------------------

/// What the overview shows, gathered in one pass over the directory snapshot and one query.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    pub total: usize,
    pub active: usize,
    pub quarantined: usize,
    pub revoked: usize,
    pub pending: usize,
    pub online: usize,
    /// Active devices whose newest certificate expires within [`EXPIRY_WARNING`], soonest
    /// first (the first [`OVERVIEW_ROWS`]), and how many there are.
    pub expiring: Vec<(String, u64)>,
    pub expiring_count: usize,
    /// Active devices whose certificates have all expired.
    pub expired_count: usize,
    /// Active devices with no unrevoked certificate (registered, not yet enrolled).
    pub without_certificate: usize,
    pub pending_ids: Vec<String>,
    /// Enrollment tokens that can still enroll a device.
    pub open_tokens: usize,
    /// Statements in policies in use that allow an action on every topic (`#`).
    pub broad_statements: Vec<String>,
    /// Identities seen live from two addresses at once.
    pub suspected_clones: usize,
    /// Alerts in force (open or confirmed), counted by the overview after gathering.
    pub open_alerts: usize,
    /// Security events dropped because the audit queue was full.
    pub audit_dropped: u64,
    /// Devices that reported their software inventory (at most [`INVENTORIES_READ`]).
    pub reporting_software: usize,
    /// Of those, the ones whose installed version is below the newest image published for
    /// their hardware class, the first [`OVERVIEW_ROWS`] named, with (installed, newest).
    pub outdated: Vec<(String, String, String)>,
    pub outdated_count: usize,
}

/// Inventories the overview reads (one query; beyond it the count says "at least").
pub(crate) const INVENTORIES_READ: usize = 100_000;

/// Which reported inventories run a version below the newest image published for their
/// hardware class (or for any hardware): `(device, installed, newest)` each.
fn outdated_software(
    inventories: &[moat_store::registry::DeviceDocument],
    targets: &[moat_ota::image::TargetInfo],
) -> Vec<(String, String, String)> {
    let newest = |hardware: &str| {
        targets
            .iter()
            .filter(|t| !t.downgrade && t.hardware.as_deref().is_none_or(|h| h == hardware))
            .filter_map(|t| moat_ota::Version::parse(&t.version).ok().map(|v| (v, t)))
            .max_by(|a, b| a.0.cmp(&b.0))
    };
    inventories
        .iter()
        .filter_map(|doc| {
            let inv: moat_ota::report::Inventory = serde_json::from_str(&doc.body).ok()?;
            let installed = moat_ota::Version::parse(&inv.installed).ok()?;
            let (latest, target) = newest(&inv.hardware)?;
            (installed < latest).then(|| {
                (
                    doc.device.clone(),
                    inv.installed.clone(),
                    target.version.clone(),
                )
            })
        })
        .collect()
}

fn gather(c: &Console, now: u64) -> Result<Fleet, IdentityError> {
    let identity = &c.app.identity;
    let expiry: HashMap<String, u64> = identity
        .registry
        .certificate_expiry_by_device()?
        .into_iter()
        .collect();
    let soon = now.saturating_add(u64::try_from(EXPIRY_WARNING.as_millis()).unwrap_or(0));
    let mut f = Fleet::default();
    // The registry, not the directory snapshot: `moat device add` writes it from another
    // process, and the snapshot learns of such devices only at the next change.
    let fleet = identity.registry.device_standings()?;
    let mut used_policies: BTreeSet<String> = fleet.policies.into_iter().collect();
    for (id, status) in fleet.standings {
        f.total += 1;
        match status {
            DeviceStatus::Active => {
                f.active += 1;
                match expiry.get(&id) {
                    Some(&t) if t <= now => f.expired_count += 1,
                    Some(&t) if t <= soon => f.expiring.push((id, t)),
                    Some(_) => {}
                    None => f.without_certificate += 1,
                }
            }
            DeviceStatus::Disabled => f.quarantined += 1,
            DeviceStatus::Revoked => f.revoked += 1,
            DeviceStatus::Pending => {
                f.pending += 1;
                f.pending_ids.push(id);
            }
        }
    }
    f.expiring
        .sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    f.expiring_count = f.expiring.len();
    f.expiring.truncate(OVERVIEW_ROWS);
    f.pending_ids.sort();
    f.pending_ids.truncate(OVERVIEW_ROWS);
    f.online = c.activity.online_count();
    f.open_tokens = identity
        .registry
        .enrollment_tokens()?
        .iter()
        .filter(|t| !t.revoked && t.uses_left > 0 && t.expires_at_ms > now)
        .count();
    for g in identity.groups() {
        used_policies.extend(g.policies);
    }
    used_policies.insert(crate::identity::DEFAULT_POLICY.to_owned());
    for (name, doc) in identity.policies() {
        if used_policies.contains(&name) {
            f.broad_statements.extend(broad_statements(&name, &doc));
        }
    }
    f.suspected_clones = c
        .app
        .events
        .conflicts()
        .iter()
        .filter(|x| x.suspected_clones > 0)
        .count();
    f.audit_dropped = identity.audit.dropped();
    let inventories = identity.registry.ota_inventories(INVENTORIES_READ)?;
    f.reporting_software = inventories.len();
    let mut outdated = outdated_software(&inventories, &c.app.ota.targets());
    f.outdated_count = outdated.len();
    outdated.truncate(OVERVIEW_ROWS);
    f.outdated = outdated;
    Ok(f)
}

/// The allow statements of a policy (canonical JSON) that name the whole topic tree.
fn broad_statements(name: &str, json: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let statements = doc
        .get("statements")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    statements
        .iter()
        .filter(|s| s.get("effect").and_then(|e| e.as_str()) == Some("allow"))
        .filter(|s| {
            s.get("topics")
                .and_then(|t| t.as_array())
                .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("#")))
        })
        .map(|s| {
            let actions: Vec<&str> = s
                .get("actions")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            format!(
                "policy {name}, statement {}, allows {} on every topic (#)",
                s.get("id").and_then(|i| i.as_str()).unwrap_or("?"),
                actions.join(", ")
            )
        })
        .collect()
}

/// One thing that lowers the posture score.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reason {
    pub points: u32,
    pub text: String,
    pub link: &'static str,
}

fn capped(per: u32, n: usize, cap: u32) -> u32 {
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .saturating_mul(per)
        .min(cap)
}

/// The posture score (0-100) and every reason that lowered it, largest first. Computed only
/// from what the hub knows now: certificates, standing, approvals, open tokens, broad
/// policies, suspected clones and lost audit events.
pub(crate) fn posture(f: &Fleet) -> (u32, Vec<Reason>) {
    let mut reasons = Vec::new();
    let mut add = |points: u32, text: String, link: &'static str| {
        if points > 0 {
            reasons.push(Reason { points, text, link });
        }
    };
    add(
        capped(10, f.open_alerts, 30),
        format!(
            "{} alerts of the detection engine are in force (open or confirmed).",
            f.open_alerts
        ),
        "/console/alerts",
    );
    add(
        capped(15, f.suspected_clones, 30),
        format!(
            "{} device identities were live from two addresses at once (suspected clones).",
            f.suspected_clones
        ),
        "/console/alerts",
    );
    add(
        capped(10, f.broad_statements.len(), 20),
        format!(
            "{} policy statements in use allow an action on every topic: {}.",
            f.broad_statements.len(),
            f.broad_statements.join("; ")
        ),
        "/console/policies",
    );
    if f.expiring_count > 0 {
        let share = f.expiring_count * 10 / f.active.max(1);
        add(
            (5 + u32::try_from(share).unwrap_or(10)).min(15),
            format!(
                "{} active devices have certificates expiring within {} days.",
                f.expiring_count,
                EXPIRY_WARNING.as_secs() / 86_400
            ),
            "/console/#expiring",
        );
    }
    add(
        capped(5, f.expired_count, 15),
        format!(
            "{} active devices hold only expired certificates and cannot connect.",
            f.expired_count
        ),
        "/console/devices?status=active",
    );
    add(
        capped(2, f.pending, 10),
        format!("{} devices are waiting for approval.", f.pending),
        "/console/devices?status=pending",
    );
    add(
        capped(2, f.open_tokens, 10),
        format!(
            "{} enrollment tokens are open; each lets a new device join.",
            f.open_tokens
        ),
        "/console/tokens",
    );
    add(
        capped(5, f.outdated_count, 15),
        format!(
            "{} devices run software older than the newest image published for their hardware.",
            f.outdated_count
        ),
        "/console/updates",
    );
    add(
        if f.audit_dropped > 0 { 10 } else { 0 },
        format!(
            "{} security events were dropped because the audit queue was full.",
            f.audit_dropped
        ),
        "/console/audit",
    );
    reasons.sort_by_key(|r| std::cmp::Reverse(r.points));
    let lost: u32 = reasons.iter().map(|r| r.points).sum();
    (100u32.saturating_sub(lost), reasons)
}

fn rate_series(
    samples: &[super::activity::Sample],
    pick: fn(&super::activity::Sample) -> u64,
) -> Vec<(u64, f64)> {
    samples
        .windows(2)
        .map(|w| {
            let dt = w[1].at_ms.saturating_sub(w[0].at_ms).max(1) as f64 / 1000.0;
            (
                w[1].at_ms,
                pick(&w[1]).saturating_sub(pick(&w[0])) as f64 / dt,
            )
        })
        .collect()
}

fn traffic_charts(samples: &[super::activity::Sample], now: u64) -> String {
    if samples.len() < 2 {
        return format!(
            "<p class=\"muted\">Collecting: the hub samples its counters every {} s and keeps an hour; the charts appear after two samples.</p>",
            super::SAMPLE_INTERVAL.as_secs()
        );
    }
    let from = samples.first().map_or(now, |s| s.at_ms);
    let mut out = String::new();
    out.push_str("<div class=\"charts\"><figure>");
    out.push_str(&chart::lines(
        "traffic",
        "Messages per second",
        "Messages received from and delivered to clients per second, over the last hour.",
        &[
            Series {
                label: "received",
                class: "s1",
                points: rate_series(samples, |s| s.messages_in),
            },
            Series {
                label: "delivered",
                class: "s2",
                points: rate_series(samples, |s| s.messages_out),
            },
        ],
        from,
        now,
    ));
    out.push_str("<figcaption>Messages per second</figcaption></figure><figure>");
    out.push_str(&chart::lines(
        "online",
        "Devices online",
        "Devices with a live connection, over the last hour.",
        &[Series {
            label: "online",
            class: "s3",
            points: samples.iter().map(|s| (s.at_ms, s.online as f64)).collect(),
        }],
        from,
        now,
    ));
    out.push_str("<figcaption>Devices online</figcaption></figure><figure>");
    out.push_str(&chart::lines(
        "refused",
        "Refusals per second",
        "CONNECTs, publishes and subscriptions refused by policy per second, over the last hour.",
        &[Series {
            label: "refused by policy",
            class: "s4",
            points: rate_series(samples, |s| s.refused),
        }],
        from,
        now,
    ));
    out.push_str("<figcaption>Refusals per second (a rising line is worth a look)</figcaption></figure></div>");
    out
}

/// The device's messages per minute over the last hour, or why there is no chart.
fn device_rates(m: &mut String, series: &[crate::rates::MinuteRate], now: u64) {
    m.push_str("<section><h2>Messages, last hour</h2>");
    let Some(first) = series.first() else {
        m.push_str("<p class=\"muted\">No message counted for this device since the hub started (or in the last hour).</p></section>");
        return;
    };
    let points = |pick: fn(&crate::rates::MinuteRate) -> u32| -> Vec<(u64, f64)> {
        series
            .iter()
            .map(|r| (r.minute_start_ms, f64::from(pick(r))))
            .collect()
    };
    m.push_str("<figure>");
    m.push_str(&chart::lines(
        "device-rates",
        "Messages per minute",
        "Messages this device published and messages delivered to it, per minute, over the last hour.",
        &[
            Series {
                label: "published",
                class: "s1",
                points: points(|r| r.received),
            },
            Series {
                label: "delivered to it",
                class: "s2",
                points: points(|r| r.delivered),
            },
        ],
        first.minute_start_ms,
        now,
    ));
    let total: u64 = series.iter().map(|r| u64::from(r.received)).sum();
    let _ = write!(
        m,
        "<figcaption>Messages per minute: {total} published in the last hour.</figcaption></figure></section>"
    );
}

fn audit_rows(out: &mut String, records: &[moat_audit::Record]) {
    for r in records {
        let e = &r.entry;
        let _ = write!(
            out,
            "<li><span class=\"seq\">#{}</span> {} <strong>{}</strong> {} by {} <span class=\"outcome {}\">{}</span></li>",
            r.seq,
            time_el(e.at_ms),
            Esc(&e.action),
            Esc(&e.subject),
            Esc(&e.actor),
            e.outcome.as_str(),
            e.outcome.as_str()
        );
    }
}

/// `GET /console/`: the fleet overview.
pub(crate) async fn overview(State(c): State<Console>, headers: HeaderMap) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    let started = Instant::now();
    let now = now_ms();
    let gather_c = c.clone();
    let fleet = match blocking(move || gather(&gather_c, now)).await {
        Ok(f) => f,
        Err(e) => return failed(&who, &e),
    };
    let registry = c.app.identity.registry.clone();
    let recent = blocking(move || Ok(registry.search_audit(None, "", 10)?))
        .await
        .unwrap_or_default();
    let registry = c.app.identity.registry.clone();
    let open_alerts = blocking(move || {
        Ok(registry.alerts(
            0,
            &[
                moat_store::registry::AlertState::Open,
                moat_store::registry::AlertState::Confirmed,
            ],
            moat_store::registry::MAX_PAGE,
        )?)
    })
    .await
    .unwrap_or_default();
    let mut fleet = fleet;
    fleet.open_alerts = open_alerts.len();
    let (score, reasons) = posture(&fleet);
    let band = match score {
        90.. => "good",
        70..=89 => "fair",
        _ => "poor",
    };
    let mut m = String::with_capacity(16 * 1024);
    let _ = write!(
        m,
        "<section class=\"cards\" aria-label=\"Summary\">\
         <div class=\"card\"><h2>Devices online</h2><p class=\"big\"><span data-live=\"online\">{}</span> <span class=\"of\">of {}</span></p><p><a href=\"/console/devices\">All devices</a></p></div>\
         <div class=\"card\"><h2>Posture</h2><p class=\"big {band}\">{score}<span class=\"of\">/100</span></p><p><a href=\"#posture\">Why</a></p></div>\
         <div class=\"card\"><h2>Open alerts</h2><p class=\"big\">{}</p><p><a href=\"/console/alerts\">Alerts</a></p></div>\
         <div class=\"card\"><h2>Certificates expiring</h2><p class=\"big\">{}</p><p>within {} days{}</p></div>\
         <div class=\"card\"><h2>Outdated software</h2>{}</div>\
         </section>",
        fleet.online,
        fleet.total,
        if fleet.open_alerts >= moat_store::registry::MAX_PAGE {
            format!("{}+", fleet.open_alerts)
        } else {
            fleet.open_alerts.to_string()
        },
        fleet.expiring_count,
        EXPIRY_WARNING.as_secs() / 86_400,
        if fleet.expired_count > 0 {
            format!(", {} already expired", fleet.expired_count)
        } else {
            String::new()
        },
        if fleet.reporting_software == 0 {
            "<p class=\"muted\">No device has reported its software yet (moat-agent does)</p><p><a href=\"/console/updates\">Updates</a></p>".to_owned()
        } else {
            format!(
                "<p class=\"big\">{}</p><p>of {} reporting devices behind the newest image{}</p><p><a href=\"/console/updates\">Updates</a></p>",
                fleet.outdated_count,
                fleet.reporting_software,
                if fleet.outdated.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        fleet
                            .outdated
                            .iter()
                            .take(5)
                            .map(|(d, have, newest)| format!(
                                "<a href=\"/console/devices/{}\">{}</a> {} &lt; {}",
                                Esc(d),
                                Esc(d),
                                Esc(have),
                                Esc(newest)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        }
    );
    let _ = write!(
        m,
        "<section id=\"posture\"><h2>Posture: {score} of 100</h2>"
    );
    if reasons.is_empty() {
        m.push_str("<p>Nothing the hub checks lowers the score: no suspected clones, no policy in use allows every topic, no certificate expires within the window, no device waits for approval, no enrollment token is open, no audit event was lost.</p>");
    } else {
        m.push_str("<ul class=\"reasons\">");
        for r in &reasons {
            let _ = write!(
                m,
                "<li><span class=\"points\">−{}</span> <a href=\"{}\">{}</a></li>",
                r.points,
                r.link,
                Esc(&r.text)
            );
        }
        m.push_str("</ul>");
    }
    m.push_str("</section>");
    let _ = write!(
        m,
        "<section><h2>Devices by standing</h2><table><caption class=\"visually-hidden\">Devices by standing</caption>\
         <thead><tr><th scope=\"col\">Standing</th><th scope=\"col\" class=\"num\">Devices</th></tr></thead><tbody>\
         <tr><td><a href=\"/console/devices?status=active\">Active</a></td><td class=\"num\">{}</td></tr>\
         <tr><td><a href=\"/console/devices?status=disabled\">Quarantined</a></td><td class=\"num\">{}</td></tr>\
         <tr><td><a href=\"/console/devices?status=revoked\">Revoked</a></td><td class=\"num\">{}</td></tr>\
         <tr><td><a href=\"/console/devices?status=pending\">Waiting for approval</a></td><td class=\"num\">{}</td></tr>\
         <tr><td>Active, not enrolled yet (no certificate)</td><td class=\"num\">{}</td></tr>\
         </tbody></table></section>",
        fleet.active, fleet.quarantined, fleet.revoked, fleet.pending, fleet.without_certificate
    );
    m.push_str("<section><h2>Traffic</h2>");
    m.push_str(&traffic_charts(&c.activity.samples(), now));
    m.push_str("</section>");
    let _ = write!(
        m,
        "<section id=\"expiring\"><h2>Certificates expiring within {} days</h2>",
        EXPIRY_WARNING.as_secs() / 86_400
    );
    if fleet.expiring.is_empty() {
        m.push_str("<p>None.</p>");
    } else {
        m.push_str("<table><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">Newest certificate expires</th></tr></thead><tbody>");
        for (id, at) in &fleet.expiring {
            let _ = write!(
                m,
                "<tr><td>{}</td><td>{}</td></tr>",
                device_link(id),
                time_el(*at)
            );
        }
        m.push_str("</tbody></table>");
        if fleet.expiring_count > fleet.expiring.len() {
            let _ = write!(
                m,
                "<p>And {} more.</p>",
                fleet.expiring_count - fleet.expiring.len()
            );
        }
    }
    m.push_str("</section>");
    if !fleet.pending_ids.is_empty() {
        m.push_str("<section><h2>Waiting for approval</h2><ul class=\"plain\">");
        for id in &fleet.pending_ids {
            let _ = write!(m, "<li>{}</li>", device_link(id));
        }
        m.push_str("</ul></section>");
    }
    m.push_str("<section><h2>Latest audit entries</h2><ul id=\"live-audit\" class=\"feed\">");
    audit_rows(&mut m, &recent);
    m.push_str("</ul><p><a href=\"/console/audit\">Audit trail</a></p></section>");
    let mut r = respond(
        StatusCode::OK,
        page("Fleet", Section::Overview, Some(&who), &m),
    );
    // How long the server took, for the page-weight budget (300 ms at 10,000 devices).
    if let Ok(v) = HeaderValue::from_str(&format!(
        "render;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

// ---- devices ------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct DeviceQuery {
    after: Option<String>,
    q: Option<String>,
    status: Option<String>,
}

/// `GET /console/devices`: the device list, filtered and paged in id order.
pub(crate) async fn devices(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(query): Query<DeviceQuery>,
) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    let q = bounded(query.q);
    let after = bounded(query.after);
    let status = query.status.as_deref().and_then(DeviceStatus::parse);
    // The registry, not the directory snapshot: `moat device add` writes it from another
    // process, and the snapshot learns of such devices only at the next change.
    let registry = c.app.identity.registry.clone();
    let needle = q.clone();
    let rows = blocking(move || {
        Ok(registry
            .all_devices()?
            .into_iter()
            .filter(|d| status.is_none_or(|s| d.status == s))
            .filter(|d| needle.is_empty() || d.id.contains(needle.as_str()))
            .filter(|d| d.id > after)
            .take(DEVICES_PER_PAGE + 1)
            .collect::<Vec<DeviceRecord>>())
    })
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return failed(&who, &e),
    };
    let more = rows.len() > DEVICES_PER_PAGE;
    let rows = &rows[..rows.len().min(DEVICES_PER_PAGE)];
    let online = c.activity.online_among(rows.iter().map(|d| d.id.as_str()));
    let mut m = String::with_capacity(16 * 1024);
    let _ = write!(
        m,
        "<form class=\"filters\" method=\"get\" action=\"/console/devices\">\
         <label for=\"q\">Id contains</label><input id=\"q\" name=\"q\" value=\"{}\" maxlength=\"256\">\
         <label for=\"status\">Standing</label><select id=\"status\" name=\"status\">",
        Esc(&q)
    );
    for (value, label) in [
        ("", "any"),
        ("active", "active"),
        ("disabled", "quarantined"),
        ("revoked", "revoked"),
        ("pending", "pending approval"),
    ] {
        let selected = if status.map(|s| s.as_str()).unwrap_or("") == value {
            " selected"
        } else {
            ""
        };
        let _ = write!(m, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    m.push_str("</select><button type=\"submit\">Filter</button></form>");
    if rows.is_empty() {
        m.push_str("<p>No device matches.</p>");
    } else {
        m.push_str("<table><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">Group</th><th scope=\"col\">Standing</th><th scope=\"col\">Connection</th></tr></thead><tbody>");
        for (d, on) in rows.iter().zip(online) {
            let _ = write!(
                m,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                device_link(&d.id),
                Esc(d.group.as_deref().unwrap_or("-")),
                status_label(d.status),
                online_badge(&d.id, on)
            );
        }
        m.push_str("</tbody></table>");
    }
    if more && let Some(last) = rows.last() {
        let _ = write!(
            m,
            "<p><a href=\"/console/devices?after={}&amp;q={}&amp;status={}\">Next page</a></p>",
            UrlPart(&last.id),
            UrlPart(&q),
            UrlPart(status.map(|s| s.as_str()).unwrap_or(""))
        );
    }
    respond(
        StatusCode::OK,
        page("Devices", Section::Devices, Some(&who), &m),
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct DevicePageQuery {
    action: Option<String>,
    topic: Option<String>,
    done: Option<String>,
    closed: Option<usize>,
}

fn decision_html(d: &moat_policy::Decision) -> String {
    let (class, verdict) = if d.allowed {
        ("good", "allowed")
    } else {
        ("bad", "denied")
    };
    format!(
        "<p class=\"notice {class}\" role=\"status\"><strong>{verdict}</strong>: {}</p>",
        Esc(&d.to_string())
    )
}

const ACTIONS: [&str; 5] = ["connect", "publish", "subscribe", "receive", "retain"];

fn decision_form(out: &mut String, action: &str, device: Option<&str>, topic: &str, to: &str) {
    let _ = write!(
        out,
        "<form class=\"filters\" method=\"get\" action=\"{to}\">"
    );
    if let Some(device) = device {
        let _ = write!(
            out,
            "<label for=\"device\">Device</label><input id=\"device\" name=\"device\" value=\"{}\" required maxlength=\"64\">",
            Esc(device)
        );
    }
    out.push_str("<label for=\"action\">Action</label><select id=\"action\" name=\"action\">");
    for a in ACTIONS {
        let selected = if a == action { " selected" } else { "" };
        let _ = write!(out, "<option{selected}>{a}</option>");
    }
    let _ = write!(
        out,
        "</select><label for=\"topic\">Topic, filter or client id</label>\
         <input id=\"topic\" name=\"topic\" value=\"{}\" required maxlength=\"256\">\
         <button type=\"submit\">Test</button></form>",
        Esc(topic)
    );
}

fn test_decision(
    c: &Console,
    device: &str,
    action: &str,
    topic: &str,
) -> Result<moat_policy::Decision, IdentityError> {
    let action: Action = action.parse().map_err(|_| {
        IdentityError::Invalid(format!(
            "action {action:?} is not one of {}",
            ACTIONS.join(", ")
        ))
    })?;
    c.app
        .identity
        .test_policy(device, action, topic)
        .map(|(decision, _)| decision)
}

/// `GET /console/devices/{id}`: identity, certificates, policy decisions, live state, the
/// connection timeline, the event timeline and the actions.
pub(crate) async fn device(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DevicePageQuery>,
) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    let d = match c.app.identity.device(&id) {
        Ok(d) => d,
        Err(e) => return failed(&who, &e),
    };
    let certs = match c.app.identity.certificates_of(id.clone()).await {
        Ok(v) => v,
        Err(e) => return failed(&who, &e),
    };
    let registry = c.app.identity.registry.clone();
    let subject = format!("device:{id}");
    let timeline = {
        let subject = subject.clone();
        blocking(move || {
            Ok(registry
                .search_audit(None, &subject, moat_store::registry::MAX_PAGE)?
                .into_iter()
                .filter(|r| r.entry.subject == subject || r.entry.actor == subject)
                .take(30)
                .collect::<Vec<_>>())
        })
        .await
        .unwrap_or_default()
    };
    let online = c
        .activity
        .online_among(std::iter::once(id.as_str()))
        .first()
        .copied()
        .unwrap_or(false);
    let now = now_ms();
    let mut m = String::with_capacity(16 * 1024);
    if let Some(done) = query.done.as_deref() {
        let text = match done {
            "revoke" => "Revoked",
            "quarantine" => "Quarantined",
            "release" => "Released",
            "approve" => "Approved",
            _ => "Done",
        };
        let _ = write!(
            m,
            "<p class=\"notice good\" role=\"status\">{text}; {} live connection(s) closed.</p>",
            query.closed.unwrap_or(0)
        );
    }
    let group_policies = d.group.as_ref().and_then(|g| {
        c.app
            .identity
            .groups()
            .into_iter()
            .find(|x| &x.name == g)
            .map(|x| x.policies)
    });
    let effective = if !d.policies.is_empty() {
        format!("its own: {}", d.policies.join(", "))
    } else if let Some(p) = group_policies.as_ref().filter(|p| !p.is_empty()) {
        format!("its group's: {}", p.join(", "))
    } else {
        format!("the default: {}", crate::identity::DEFAULT_POLICY)
    };
    let _ = write!(
        m,
        "<section class=\"cards\"><div class=\"card\"><h2>Identity</h2><dl>\
         <dt>Id</dt><dd>{}</dd><dt>Group</dt><dd>{}</dd><dt>Standing</dt><dd>{}</dd>\
         <dt>Connection</dt><dd>{}</dd><dt>Registered</dt><dd>{}</dd><dt>Changed</dt><dd>{}</dd></dl></div>\
         <div class=\"card\"><h2>Policy</h2><p>Policies applied: {}.</p>",
        Esc(&d.id),
        Esc(d.group.as_deref().unwrap_or("-")),
        status_label(d.status),
        online_badge(&d.id, online),
        time_el(d.created_at_ms),
        time_el(d.updated_at_ms),
        Esc(&effective)
    );
    if !d.attrs.is_empty() {
        m.push_str("<h3>Attributes</h3><dl>");
        for (k, v) in &d.attrs {
            let _ = write!(m, "<dt>{}</dt><dd>{}</dd>", Esc(k), Esc(v));
        }
        m.push_str("</dl>");
    }
    m.push_str("</div></section>");

    // Decisions: connecting as itself always, and whatever the operator asks.
    m.push_str("<section><h2>Decisions</h2>");
    if let Ok((dec, _)) = c.app.identity.test_policy(&d.id, Action::Connect, &d.id) {
        let _ = write!(
            m,
            "<h3>Connect as {}</h3>{}",
            Esc(&d.id),
            decision_html(&dec)
        );
    }
    let action = bounded(query.action);
    let topic = bounded(query.topic);
    let to = format!("/console/devices/{}", UrlPart(&d.id));
    decision_form(
        &mut m,
        if action.is_empty() {
            "publish"
        } else {
            &action
        },
        None,
        &topic,
        &to,
    );
    if !action.is_empty() && !topic.is_empty() {
        match test_decision(&c, &d.id, &action, &topic) {
            Ok(dec) => m.push_str(&decision_html(&dec)),
            Err(e) => {
                let _ = write!(
                    m,
                    "<p class=\"notice bad\" role=\"alert\">{}</p>",
                    Esc(&e.to_string())
                );
            }
        }
    }
    m.push_str("</section>");

    // Live state and the connection timeline.
    let changes: Vec<(u64, bool)> = c
        .activity
        .events_of(&d.id)
        .into_iter()
        .map(|e| (e.at_ms, e.online))
        .collect();
    // The last hour when everything remembered fits in it (a recent start, a steady
    // device), else the last day.
    let hour = 3600 * 1000;
    let (span, span_name) = if changes
        .first()
        .is_none_or(|c| now.saturating_sub(c.0) < hour)
    {
        (hour, "hour")
    } else {
        (24 * hour, "24 hours")
    };
    let _ = write!(m, "<section><h2>Connection, last {span_name}</h2><figure>");
    m.push_str(&chart::timeline(
        "conn",
        &format!("Connection state over the last {span_name}"),
        "Filled where the device had a live MQTT connection; marks at each connect and disconnect.",
        &changes,
        online,
        now.saturating_sub(span),
        now,
    ));
    let _ = write!(
        m,
        "<figcaption>From the hub's memory of its last {} connection events since it started.</figcaption></figure></section>",
        super::RECENT_CONNECTION_EVENTS
    );
    device_rates(&mut m, &c.activity.rates.series(&d.id, now), now);

    m.push_str("<section><h2>Certificates</h2>");
    if certs.is_empty() {
        m.push_str("<p>No certificate issued yet.</p>");
    } else {
        m.push_str("<table><thead><tr><th scope=\"col\">Serial</th><th scope=\"col\">Valid from</th><th scope=\"col\">Valid until</th><th scope=\"col\">Source</th><th scope=\"col\">State</th></tr></thead><tbody>");
        for cert in &certs {
            let state = match (&cert.revoked_at_ms, cert.not_after_ms <= now) {
                (Some(_), _) => format!(
                    "revoked ({})",
                    cert.reason.as_deref().unwrap_or("unspecified")
                ),
                (None, true) => "expired".into(),
                (None, false) => "valid".into(),
            };
            let _ = write!(
                m,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                Esc(&cert.serial),
                time_el(cert.not_before_ms),
                time_el(cert.not_after_ms),
                Esc(&cert.source),
                Esc(&state)
            );
        }
        m.push_str("</tbody></table>");
    }
    m.push_str("</section>");

    m.push_str("<section><h2>Actions</h2>");
    if who.caller.role < Role::Operator {
        let _ = write!(
            m,
            "<p>Your role ({}) can read but not change devices.</p>",
            who.caller.role.as_str()
        );
    } else {
        let base = format!("/console/devices/{}", UrlPart(&d.id));
        let csrf = csrf_field(&who);
        if d.status == DeviceStatus::Pending {
            let _ = write!(
                m,
                "<form method=\"post\" action=\"{base}/approve\" class=\"action\">{csrf}<button type=\"submit\">Approve</button></form>"
            );
        }
        if d.status == DeviceStatus::Active {
            let _ = write!(
                m,
                "<form method=\"post\" action=\"{base}/quarantine\" class=\"action\" data-confirm=\"Quarantine {id}? Its connections close and it cannot connect until released.\">{csrf}\
                 <button type=\"submit\">Quarantine</button></form>",
                id = Esc(&d.id)
            );
        }
        if d.status == DeviceStatus::Disabled {
            let _ = write!(
                m,
                "<form method=\"post\" action=\"{base}/release\" class=\"action\">{csrf}<button type=\"submit\">Release</button></form>"
            );
        }
        if d.status != DeviceStatus::Revoked {
            let _ = write!(
                m,
                "<form method=\"post\" action=\"{base}/revoke\" class=\"action danger\" data-confirm=\"Revoke {id}? This is permanent: its certificates are revoked and its connections close.\">{csrf}\
                 <label for=\"reason\">Reason</label><select id=\"reason\" name=\"reason\">",
                id = Esc(&d.id)
            );
            for r in [
                "unspecified",
                "keyCompromise",
                "affiliationChanged",
                "superseded",
                "cessationOfOperation",
                "privilegeWithdrawn",
            ] {
                let _ = write!(m, "<option>{r}</option>");
            }
            m.push_str("</select><button type=\"submit\" class=\"danger\">Revoke</button></form>");
        } else {
            m.push_str("<p>Revoked: revocation is permanent.</p>");
        }
    }
    m.push_str("</section><section><h2>Events</h2>");
    if timeline.is_empty() {
        m.push_str("<p>No audit entries name this device.</p>");
    } else {
        m.push_str("<ul class=\"feed\">");
        audit_rows(&mut m, &timeline);
        m.push_str("</ul>");
    }
    let _ = write!(
        m,
        "<p><a href=\"/console/audit?q={}\">Search the audit trail for this device</a></p></section>",
        UrlPart(&subject)
    );
    respond(
        StatusCode::OK,
        page(
            &format!("Device {}", d.id),
            Section::Devices,
            Some(&who),
            &m,
        ),
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

/// `POST /console/devices/{id}/{revoke,quarantine,release,approve}` (operator).
pub(crate) async fn device_action(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<axum::Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let what = format!("POST /console/devices/{id}/{action}");
    let who = or_return!(guard_post(&c, &headers, &form.csrf, Role::Operator, &what));
    let Ok(device) = DeviceId::parse(&id) else {
        return error_page(StatusCode::BAD_REQUEST, Some(&who), "invalid device id");
    };
    let identity = &c.app.identity;
    let actor = &who.caller.actor;
    let result = match action.as_str() {
        "revoke" => {
            let reason = form.reason.unwrap_or_else(|| "unspecified".into());
            if crate::identity::reason_from_name(&reason).is_none() {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    Some(&who),
                    "unknown revocation reason",
                );
            }
            identity
                .set_status(actor, &device, DeviceStatus::Revoked, &reason)
                .await
        }
        "quarantine" => {
            identity
                .set_status(
                    actor,
                    &device,
                    DeviceStatus::Disabled,
                    "quarantined from the console",
                )
                .await
        }
        "release" => {
            identity
                .set_status(
                    actor,
                    &device,
                    DeviceStatus::Active,
                    "released from the console",
                )
                .await
        }
        "approve" => identity.approve(actor, &device).await.map(|()| 0),
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&who),
                "There is no such action.",
            );
        }
    };
    match result {
        Ok(closed) => see_other(&format!(
            "/console/devices/{}?done={action}&closed={closed}",
            UrlPart(&id)
        )),
        Err(e) => failed(&who, &e),
    }
}

// ---- alerts, updates ----------------------------------------------------------------------

/// Alerts one page of the console shows.
const ALERTS_SHOWN: usize = 100;

/// `GET /console/alerts`: the detection engine's alerts (those still in force first), each
/// with its explanation and the operator's actions; then the identity conflicts the hub
/// counts.
/// Alerts raised per hour over the last 24 hours, one line per severity (from the newest
/// [`ALERTS_SHOWN`] alerts).
fn alert_timeline(m: &mut String, records: &[moat_store::registry::AlertRecord], now: u64) {
    const HOUR: u64 = 3_600_000;
    const HOURS: u64 = 24;
    let from = (now / HOUR).saturating_sub(HOURS - 1) * HOUR;
    let severities = [
        ("critical", "s4"),
        ("high", "s2"),
        ("medium", "s1"),
        ("low", "s3"),
    ];
    let mut counts = [[0u32; HOURS as usize]; 4];
    for a in records
        .iter()
        .filter(|a| a.time_ms >= from && a.time_ms <= now)
    {
        if let Some(s) = severities.iter().position(|(name, _)| *name == a.severity) {
            let hour = ((a.time_ms - from) / HOUR).min(HOURS - 1) as usize;
            counts[s][hour] = counts[s][hour].saturating_add(1);
        }
    }
    m.push_str("<section><h2>Alerts, last 24 hours</h2>");
    if counts.iter().flatten().all(|&n| n == 0) {
        m.push_str("<p class=\"muted\">No alert in the last 24 hours.</p></section>");
        return;
    }
    let series: Vec<Series<'_>> = severities
        .iter()
        .zip(&counts)
        .map(|((name, class), per_hour)| Series {
            label: name,
            class,
            points: per_hour
                .iter()
                .enumerate()
                .map(|(h, &n)| (from + h as u64 * HOUR, f64::from(n)))
                .collect(),
        })
        .collect();
    m.push_str("<figure>");
    m.push_str(&chart::lines(
        "alert-timeline",
        "Alerts per hour by severity",
        "Alerts the detection engine raised per hour over the last 24 hours, one line per severity.",
        &series,
        from,
        now,
    ));
    m.push_str("<figcaption>Alerts per hour by severity</figcaption></figure></section>");
}

pub(crate) async fn alerts(State(c): State<Console>, headers: HeaderMap) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    let registry = c.app.identity.registry.clone();
    let records = match blocking(move || Ok(registry.alerts(0, &[], ALERTS_SHOWN)?)).await {
        Ok(r) => r,
        Err(e) => return failed(&who, &e),
    };
    let mut m = String::new();
    alert_timeline(&mut m, &records, now_ms());
    let (active, past): (Vec<_>, Vec<_>) = records.iter().partition(|a| a.state.is_active());
    let may_act = who.caller.role >= Role::Operator;
    let csrf = csrf_field(&who);
    for (title, list) in [("In force", &active), ("Ended", &past)] {
        let _ = write!(m, "<section><h2>{title} ({})</h2>", list.len());
        if list.is_empty() {
            m.push_str("<p>None.</p></section>");
            continue;
        }
        for a in list.iter() {
            let v = crate::api::alert_json(a);
            let e = &v["explanation"];
            let _ = write!(
                m,
                "<article class=\"alert sev-{sev}\"><h3>#{id} {det} <span class=\"badge\">{sev}</span> <span class=\"badge\">{state}</span></h3>\
                 <dl><dt>Raised</dt><dd>{time}</dd><dt>Device</dt><dd>{dev}</dd><dt>Address</dt><dd>{addr}</dd>\
                 <dt>Response</dt><dd>{resp} (configured: {intended})</dd>\
                 <dt>Why</dt><dd>{feature} = {observed} (threshold {threshold})</dd></dl>",
                id = a.id,
                det = Esc(&a.detector),
                sev = Esc(&a.severity),
                state = Esc(a.state.as_str()),
                time = time_el(a.time_ms),
                dev = a
                    .device
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), device_link),
                addr = Esc(a.address.as_deref().unwrap_or("-")),
                resp = Esc(&a.response),
                intended = Esc(v["intended"].as_str().unwrap_or("-")),
                feature = Esc(e["feature"].as_str().unwrap_or("-")),
                observed = Esc(&e["observed"].to_string()),
                threshold = Esc(&e["threshold"].to_string()),
            );
            if let Some(b) = e["baseline"].as_object() {
                let _ = write!(
                    m,
                    "<p>Baseline: typical {} (spread {}), {} windows of its own, group weight {}.</p>",
                    Esc(&b
                        .get("typical")
                        .map(ToString::to_string)
                        .unwrap_or_default()),
                    Esc(&b.get("spread").map(ToString::to_string).unwrap_or_default()),
                    Esc(&b
                        .get("device_windows")
                        .map(ToString::to_string)
                        .unwrap_or_default()),
                    Esc(&b
                        .get("group_weight")
                        .map(ToString::to_string)
                        .unwrap_or_default()),
                );
            }
            if let Some(evidence) = e["evidence"].as_array().filter(|x| !x.is_empty()) {
                m.push_str("<ul class=\"evidence\">");
                for line in evidence.iter().take(20) {
                    let _ = write!(m, "<li>{}</li>", Esc(line.as_str().unwrap_or("")));
                }
                m.push_str("</ul>");
            }
            if may_act && a.state.is_active() {
                let base = format!("/console/alerts/{}", a.id);
                if a.state != moat_store::registry::AlertState::Confirmed {
                    let _ = write!(
                        m,
                        "<form method=\"post\" action=\"{base}/confirm\" class=\"action\">{csrf}<button type=\"submit\">Confirm</button></form>"
                    );
                }
                let _ = write!(
                    m,
                    "<form method=\"post\" action=\"{base}/release\" class=\"action\">{csrf}<button type=\"submit\">Release</button></form>\
                     <form method=\"post\" action=\"{base}/false-positive\" class=\"action\">{csrf}<button type=\"submit\">False positive</button></form>"
                );
            }
            m.push_str("</article>");
        }
        m.push_str("</section>");
    }
    m.push_str(
        "<section><h2>Identity conflicts</h2><p>One certificate live from two addresses at once \
         (a suspected clone), or a device claiming another client id.</p>",
    );
    let conflicts = c.app.events.conflicts();
    if conflicts.is_empty() {
        m.push_str("<p>None since the hub started.</p>");
    } else {
        m.push_str("<table><thead><tr><th scope=\"col\">Device</th><th scope=\"col\" class=\"num\">Suspected clones</th><th scope=\"col\" class=\"num\">Client id mismatches</th><th scope=\"col\">Addresses</th><th scope=\"col\">Last seen</th></tr></thead><tbody>");
        for x in conflicts.iter().take(200) {
            let _ = write!(
                m,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                device_link(&x.device),
                x.suspected_clones,
                x.client_id_mismatches,
                Esc(&x.addresses.join(", ")),
                time_el(x.last_at_ms)
            );
        }
        m.push_str("</tbody></table>");
    }
    m.push_str("</section>");
    respond(
        StatusCode::OK,
        page("Alerts", Section::Alerts, Some(&who), &m),
    )
}

/// `POST /console/alerts/{id}/{confirm,release,false-positive}` (operator).
pub(crate) async fn alert_action(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    form: Result<axum::Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let what = format!("POST /console/alerts/{id}/{action}");
    let who = or_return!(guard_post(&c, &headers, &form.csrf, Role::Operator, &what));
    let verdict = match action.as_str() {
        "confirm" => crate::defence::Verdict::Confirm,
        "release" => crate::defence::Verdict::Release,
        "false-positive" => crate::defence::Verdict::FalsePositive,
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&who),
                "There is no such action.",
            );
        }
    };
    let Some(defence) = &c.app.defence else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&who),
            "Detection is not running.",
        );
    };
    match defence
        .defence
        .verdict(&defence.actors, &who.caller.actor, id, verdict)
        .await
    {
        Ok(Some(_)) => see_other("/console/alerts"),
        Ok(None) => error_page(StatusCode::NOT_FOUND, Some(&who), "There is no such alert."),
        Err(e) => failed(&who, &e),
    }
}

// ---- policies -----------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct PolicyQuery {
    device: Option<String>,
    action: Option<String>,
    topic: Option<String>,
}

/// `GET /console/policies`: every policy, and a decision test.
pub(crate) async fn policies(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(query): Query<PolicyQuery>,
) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    let device = bounded(query.device);
    let action = bounded(query.action);
    let topic = bounded(query.topic);
    let mut m = String::from("<section><h2>Test a decision</h2>");
    decision_form(
        &mut m,
        if action.is_empty() {
            "publish"
        } else {
            &action
        },
        Some(&device),
        &topic,
        "/console/policies",
    );
    if !device.is_empty() && !topic.is_empty() {
        match test_decision(&c, &device, &action, &topic) {
            Ok(dec) => m.push_str(&decision_html(&dec)),
            Err(e) => {
                let _ = write!(
                    m,
                    "<p class=\"notice bad\" role=\"alert\">{}</p>",
                    Esc(&e.to_string())
                );
            }
        }
    }
    m.push_str("</section><section><h2>Policies</h2>");
    let stored: BTreeSet<String> = c
        .app
        .identity
        .registry
        .policies()
        .map(|p| p.into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    for (name, doc) in c.app.identity.policies() {
        let pretty = serde_json::from_str::<serde_json::Value>(&doc)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(doc);
        let kind = if stored.contains(&name) {
            "stored"
        } else {
            "built-in template"
        };
        let _ = write!(
            m,
            "<details><summary><strong>{}</strong> <span class=\"muted\">{kind}</span></summary><pre>{}</pre></details>",
            Esc(&name),
            Esc(&pretty)
        );
    }
    m.push_str("<p class=\"hint\">Change policies with <code>moat policy put</code> or the API.</p></section>");
    respond(
        StatusCode::OK,
        page("Policies", Section::Policies, Some(&who), &m),
    )
}

// ---- enrollment tokens --------------------------------------------------------------------

fn tokens_page(c: &Console, who: &Current, created: Option<(&str, &str)>) -> Response {
    let now = now_ms();
    let mut m = String::new();
    if let Some((id, token)) = created {
        let _ = write!(
            m,
            "<section class=\"notice good\" role=\"status\"><h2>Token {} created</h2>\
             <p>Copy it now: it is shown only once, and the hub keeps only a keyed hash of it.</p>\
             <p><code class=\"secret\">{}</code></p></section>",
            Esc(id),
            Esc(token)
        );
    }
    let tokens = match c.app.identity.registry.enrollment_tokens() {
        Ok(t) => t,
        Err(e) => return failed(who, &IdentityError::from(e)),
    };
    if who.caller.role >= Role::Operator {
        let _ = write!(
            m,
            "<section><h2>New token</h2><form class=\"filters\" method=\"post\" action=\"/console/tokens\">{}\
             <label for=\"group\">Group (optional)</label><input id=\"group\" name=\"group\" maxlength=\"64\">\
             <label for=\"uses\">Uses</label><input id=\"uses\" name=\"uses\" type=\"number\" min=\"1\" max=\"100000\" value=\"1\" required>\
             <label for=\"hours\">Valid for (hours)</label><input id=\"hours\" name=\"hours\" type=\"number\" min=\"1\" max=\"8760\" value=\"24\" required>\
             <button type=\"submit\">Create</button></form></section>",
            csrf_field(who)
        );
    }
    m.push_str("<section><h2>Tokens</h2>");
    if tokens.is_empty() {
        m.push_str("<p>None.</p>");
    } else {
        m.push_str("<table><thead><tr><th scope=\"col\">Id</th><th scope=\"col\">Group</th><th scope=\"col\" class=\"num\">Uses left</th><th scope=\"col\">Expires</th><th scope=\"col\">State</th><th scope=\"col\">Created by</th><th scope=\"col\"><span class=\"visually-hidden\">Action</span></th></tr></thead><tbody>");
        for t in &tokens {
            let open = !t.revoked && t.uses_left > 0 && t.expires_at_ms > now;
            let state = if t.revoked {
                "revoked"
            } else if t.uses_left == 0 {
                "used up"
            } else if t.expires_at_ms <= now {
                "expired"
            } else {
                "open"
            };
            let action = if open && who.caller.role >= Role::Operator {
                format!(
                    "<form method=\"post\" action=\"/console/tokens/{}/revoke\" data-confirm=\"Revoke token {}?\">{}<button type=\"submit\">Revoke</button></form>",
                    UrlPart(&t.id),
                    Esc(&t.id),
                    csrf_field(who)
                )
            } else {
                String::new()
            };
            let _ = write!(
                m,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{} of {}</td><td>{}</td><td>{state}</td><td>{}</td><td>{action}</td></tr>",
                Esc(&t.id),
                Esc(t.group.as_deref().unwrap_or("-")),
                t.uses_left,
                t.max_uses,
                time_el(t.expires_at_ms),
                Esc(&t.created_by)
            );
        }
        m.push_str("</tbody></table>");
    }
    m.push_str("</section>");
    respond(
        StatusCode::OK,
        page("Enrollment tokens", Section::Tokens, Some(who), &m),
    )
}

/// `GET /console/tokens`.
pub(crate) async fn tokens(State(c): State<Console>, headers: HeaderMap) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    tokens_page(&c, &who, None)
}

#[derive(Deserialize, Default)]
pub(crate) struct TokenForm {
    #[serde(default)]
    csrf: String,
    group: Option<String>,
    uses: Option<String>,
    hours: Option<String>,
}

/// `POST /console/tokens` (operator): creates a token and shows it once.
pub(crate) async fn create_token(
    State(c): State<Console>,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let who = or_return!(guard_post(
        &c,
        &headers,
        &form.csrf,
        Role::Operator,
        "POST /console/tokens"
    ));
    let group = bounded(form.group);
    let (Ok(uses), Ok(hours)) = (
        bounded(form.uses).parse::<u32>(),
        bounded(form.hours).parse::<u64>(),
    ) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "uses and hours must be whole numbers",
        );
    };
    if !(1..=8760).contains(&hours) {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "hours must be between 1 and 8760",
        );
    }
    let created = c
        .app
        .identity
        .create_enrollment_token(
            &c.app.access,
            &who.caller.actor,
            (!group.is_empty()).then_some(group),
            uses,
            Duration::from_secs(hours * 3600),
        )
        .await;
    match created {
        Ok((token, record)) => tokens_page(&c, &who, Some((&record.id, &token))),
        Err(e) => failed(&who, &e),
    }
}

/// `POST /console/tokens/{id}/revoke` (operator).
pub(crate) async fn revoke_token(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<axum::Form<super::CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    let what = format!("POST /console/tokens/{id}/revoke");
    let who = or_return!(guard_post(&c, &headers, &csrf, Role::Operator, &what));
    match c
        .app
        .identity
        .revoke_enrollment_token(&who.caller.actor, &id)
        .await
    {
        Ok(()) => see_other("/console/tokens"),
        Err(e) => failed(&who, &e),
    }
}

// ---- audit --------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    q: Option<String>,
    before: Option<u64>,
    verify: Option<String>,
}

/// `GET /console/audit`: search (newest first) and verification.
pub(crate) async fn audit(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Response {
    let who = or_return!(signed_in(&c, &headers));
    or_return!(require(&c, &who, Role::Auditor, "GET /console/audit"));
    let q = bounded(query.q);
    let mut m = String::new();
    if query.verify.is_some() {
        let registry = c.app.identity.registry.clone();
        match blocking(move || Ok(registry.verify_audit()?)).await {
            Ok(Ok(v)) => {
                let _ = write!(
                    m,
                    "<p class=\"notice good\" role=\"status\">Intact: {} entries, every hash and the keyed anchor check out (head <code>{}</code>).</p>",
                    v.count,
                    moat_audit::hex(&v.head)
                );
            }
            Ok(Err(t)) => {
                let _ = write!(
                    m,
                    "<p class=\"notice bad\" role=\"alert\">Tampered: {}</p>",
                    Esc(&t.to_string())
                );
            }
            Err(e) => return failed(&who, &e),
        }
    }
    let _ = write!(
        m,
        "<form class=\"filters\" method=\"get\" action=\"/console/audit\" role=\"search\">\
         <label for=\"q\">Contains</label><input id=\"q\" name=\"q\" value=\"{}\" maxlength=\"256\">\
         <button type=\"submit\">Search</button></form>\
         <form class=\"filters\" method=\"get\" action=\"/console/audit\"><input type=\"hidden\" name=\"verify\" value=\"1\">\
         <button type=\"submit\">Verify the whole trail</button></form>",
        Esc(&q)
    );
    let registry = c.app.identity.registry.clone();
    let needle = q.clone();
    let before = query.before;
    let records =
        match blocking(move || Ok(registry.search_audit(before, &needle, AUDIT_PER_PAGE)?)).await {
            Ok(r) => r,
            Err(e) => return failed(&who, &e),
        };
    if records.is_empty() {
        m.push_str("<p>No entry matches.</p>");
    } else {
        m.push_str("<div class=\"scroll\"><table><thead><tr><th scope=\"col\" class=\"num\">#</th><th scope=\"col\">Time</th><th scope=\"col\">Actor</th><th scope=\"col\">Action</th><th scope=\"col\">Subject</th><th scope=\"col\">Outcome</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
        for r in &records {
            let e = &r.entry;
            let detail: Vec<String> = e.detail.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(
                m,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"outcome {}\">{}</span></td><td>{}</td></tr>",
                r.seq,
                time_el(e.at_ms),
                Esc(&e.actor),
                Esc(&e.action),
                Esc(&e.subject),
                e.outcome.as_str(),
                e.outcome.as_str(),
                Esc(&detail.join(" "))
            );
        }
        m.push_str("</tbody></table></div>");
        if records.len() == AUDIT_PER_PAGE
            && let Some(last) = records.last()
        {
            let _ = write!(
                m,
                "<p><a href=\"/console/audit?q={}&amp;before={}\">Older entries</a></p>",
                UrlPart(&q),
                last.seq
            );
        }
    }
    respond(
        StatusCode::OK,
        page("Audit trail", Section::Audit, Some(&who), &m),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_fleet_scores_full_marks() {
        let (score, reasons) = posture(&Fleet::default());
        assert_eq!(score, 100);
        assert!(reasons.is_empty());
    }

    #[test]
    fn every_lost_point_has_a_reason() {
        let f = Fleet {
            active: 10,
            expiring_count: 5,
            pending: 2,
            open_tokens: 1,
            suspected_clones: 1,
            broad_statements: vec![
                "policy p, statement s, allows publish on every topic (#)".into(),
            ],
            ..Fleet::default()
        };
        let (score, reasons) = posture(&f);
        let lost: u32 = reasons.iter().map(|r| r.points).sum();
        assert_eq!(score, 100 - lost);
        assert_eq!(reasons.len(), 5);
        assert!(reasons.windows(2).all(|w| w[0].points >= w[1].points));
    }

    #[test]
    fn broad_statements_are_found() {
        let doc = r##"{"statements":[{"actions":["publish","subscribe"],"effect":"allow","id":"all","topics":["#"]},
                      {"actions":["publish"],"effect":"allow","id":"own","topics":["d/${client.id}/#"]}]}"##;
        let found = broad_statements("p", doc);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("statement all"), "{found:?}");
    }
}

#[cfg(test)]
mod outdated_tests {
    use super::*;

    fn target(
        version: &str,
        hardware: Option<&str>,
        downgrade: bool,
    ) -> moat_ota::image::TargetInfo {
        moat_ota::image::TargetInfo {
            name: format!("fw-{version}"),
            image: "fw".into(),
            version: version.into(),
            hardware: hardware.map(str::to_owned),
            downgrade,
            length: 1,
            sha256: String::new(),
            path: String::new(),
            role: "targets".into(),
        }
    }

    fn inventory(
        device: &str,
        hardware: &str,
        installed: &str,
    ) -> moat_store::registry::DeviceDocument {
        moat_store::registry::DeviceDocument {
            device: device.into(),
            body: format!(r#"{{"hardware":"{hardware}","installed":"{installed}","packages":[]}}"#),
            at_ms: 0,
        }
    }

    #[test]
    fn outdated_means_below_the_newest_image_for_the_hardware() {
        let targets = [
            target("1.2.0", None, false),
            target("2.0.0", Some("cam"), false),
            // A rollback image is not "the newest".
            target("9.0.0", Some("lock"), true),
        ];
        let inventories = [
            inventory("cam-old", "cam", "1.9.9"),
            inventory("cam-new", "cam", "2.0.0"),
            inventory("lock-old", "lock", "1.0.0"),
            inventory("lock-ok", "lock", "1.2.0"),
            inventory("bad", "lock", "not a version"),
        ];
        assert_eq!(
            outdated_software(&inventories, &targets),
            vec![
                ("cam-old".into(), "1.9.9".into(), "2.0.0".into()),
                ("lock-old".into(), "1.0.0".into(), "1.2.0".into()),
            ]
        );
        assert!(outdated_software(&inventories, &[]).is_empty());
    }
}
