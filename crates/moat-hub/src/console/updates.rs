//! The "Updates" page: every campaign with its progress wave by wave (`<progress>`
//! elements, no script or inline style under the strict CSP), why it paused or stopped, and
//! pause, resume and abort buttons for operators (POST forms with the CSRF token, through
//! the same campaign service as the REST API, so audited the same way).

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::html::{Esc, Section, csrf_field, error_page, page, respond, see_other, time_el};
use super::{Console, guard_post, signed_in};
use crate::access::Role;
use crate::identity::IdentityError;
use crate::ota::campaigns::Operation;

/// Campaigns the page shows (newest first).
pub const CAMPAIGNS_SHOWN: usize = 50;
/// Longest reason the console passes on.
const MAX_REASON_LEN: usize = 256;

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// `GET /console/updates`.
pub(crate) async fn updates(State(c): State<Console>, headers: HeaderMap) -> Response {
    let who = match signed_in(&c, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let campaigns = match c.app.campaigns.list(CAMPAIGNS_SHOWN).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "console: cannot list campaigns");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(&who),
                "Internal error; the hub's log has the details.",
            );
        }
    };
    let may_act = who.caller.role >= Role::Operator;
    let csrf = csrf_field(&who);
    let mut m = String::new();
    if campaigns.is_empty() {
        m.push_str(
            "<p class=\"notice info\">No update campaigns yet. Publish an image with \
             <code>moat ota publish</code>, then create one with <code>moat ota campaign create</code>.</p>",
        );
    }
    for cam in &campaigns {
        let id = n(cam, "id");
        let status = cam["status"].as_str().unwrap_or("-");
        let _ = write!(
            m,
            "<section class=\"campaign\"><h2>#{id} {name} <span class=\"badge\">{status}</span></h2>\
             <dl><dt>Group</dt><dd>{group}</dd><dt>Image</dt><dd>{target}</dd>\
             <dt>Rollback image</dt><dd>{rollback}</dd><dt>Created</dt><dd>{created}</dd><dt>Devices</dt><dd>{devices}</dd></dl>",
            name = Esc(cam["name"].as_str().unwrap_or("")),
            status = Esc(status),
            group = Esc(cam["group"].as_str().unwrap_or("-")),
            target = Esc(cam["target"].as_str().unwrap_or("-")),
            rollback = Esc(cam["rollback_target"].as_str().unwrap_or("-")),
            created = time_el(n(cam, "created_at_ms")),
            devices = n(cam, "devices_total"),
        );
        if let Some(reason) = cam["reason"].as_str() {
            let _ = write!(
                m,
                "<p class=\"notice bad\" role=\"status\">{}</p>",
                Esc(reason)
            );
        }
        m.push_str(
            "<table><thead><tr><th scope=\"col\">Wave</th><th scope=\"col\">Progress</th>\
             <th scope=\"col\" class=\"num\">Devices</th><th scope=\"col\" class=\"num\">Installed</th>\
             <th scope=\"col\" class=\"num\">Updating</th><th scope=\"col\" class=\"num\">Failed</th>\
             <th scope=\"col\" class=\"num\">Timed out</th><th scope=\"col\" class=\"num\">Declined</th>\
             <th scope=\"col\" class=\"num\">Rolled back</th></tr></thead><tbody>",
        );
        let current = n(cam, "current_wave");
        for w in cam["waves"].as_array().into_iter().flatten() {
            let wave = n(w, "wave");
            let total = n(w, "total");
            let done = total - n(w, "pending") - n(w, "assigned") - n(w, "updating");
            let marker = if wave == current && matches!(status, "running" | "paused") {
                " (active)"
            } else {
                ""
            };
            let _ = write!(
                m,
                "<tr><td>{wn} — up to {pct}%{marker}</td>\
                 <td><progress value=\"{done}\" max=\"{max}\">{done} of {total}</progress></td>\
                 <td class=\"num\">{total}</td><td class=\"num\">{inst}</td><td class=\"num\">{upd}</td>\
                 <td class=\"num\">{fail}</td><td class=\"num\">{tout}</td><td class=\"num\">{decl}</td>\
                 <td class=\"num\">{rb}</td></tr>",
                wn = wave + 1,
                pct = n(w, "percent"),
                max = total.max(1),
                inst = n(w, "installed"),
                upd = n(w, "assigned") + n(w, "updating"),
                fail = n(w, "failed"),
                tout = n(w, "timed_out"),
                decl = n(w, "declined"),
                rb = n(w, "rolled_back"),
            );
        }
        m.push_str("</tbody></table>");
        if may_act {
            let base = format!("/console/updates/{id}");
            let mut buttons = Vec::new();
            match status {
                "running" => buttons.push(("pause", "Pause")),
                "paused" => buttons.push(("resume", "Resume")),
                "draft" => buttons.push(("start", "Start")),
                _ => {}
            }
            if matches!(status, "running" | "paused" | "draft") {
                buttons.push(("abort", "Abort"));
            }
            for (action, label) in buttons {
                let _ = write!(
                    m,
                    "<form method=\"post\" action=\"{base}/{action}\" class=\"action\">{csrf}<button type=\"submit\">{label}</button></form>"
                );
            }
        }
        m.push_str("</section>");
    }
    respond(
        StatusCode::OK,
        page("Updates", Section::Updates, Some(&who), &m),
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct UpdateForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

/// `POST /console/updates/{id}/{start,pause,resume,abort}` (operator).
pub(crate) async fn update_action(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    form: Result<axum::Form<UpdateForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    let what = format!("POST /console/updates/{id}/{action}");
    let who = match guard_post(&c, &headers, &form.csrf, Role::Operator, &what) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let op = match Operation::parse(&action) {
        Some(op @ (Operation::Start | Operation::Pause | Operation::Resume | Operation::Abort)) => {
            op
        }
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&who),
                "There is no such action.",
            );
        }
    };
    let reason = form
        .reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.chars().take(MAX_REASON_LEN).collect::<String>())
        .unwrap_or_else(|| "from the console".to_owned());
    match c
        .app
        .campaigns
        .operate(id, op, &who.caller.actor, Some(&reason))
        .await
    {
        Ok(_) => see_other("/console/updates"),
        Err(e) => {
            let status = match &e {
                IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
                IdentityError::Invalid(_) => StatusCode::BAD_REQUEST,
                IdentityError::Conflict(_) => StatusCode::CONFLICT,
                _ => {
                    tracing::error!(error = %e, "console: campaign operation failed");
                    return error_page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Some(&who),
                        "Internal error; the hub's log has the details.",
                    );
                }
            };
            error_page(status, Some(&who), &e.to_string())
        }
    }
}
