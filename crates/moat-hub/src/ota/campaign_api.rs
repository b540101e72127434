//! REST operations on campaigns and devices' update state.
//!
//! | operation | role | audited as |
//! |---|---|---|
//! | `GET /api/v1/ota/campaigns` | auditor | - |
//! | `POST /api/v1/ota/campaigns` (a [`CampaignSpec`]) | operator | `ota.campaign.create` |
//! | `GET /api/v1/ota/campaigns/{id}` (progress per wave, `?devices=true` for each device) | auditor | - |
//! | `POST /api/v1/ota/campaigns/{id}/{start,pause,resume,abort,rollback}` (`{"reason": ...}`) | operator | `ota.campaign.{op}` |
//! | `GET /api/v1/ota/devices/{id}` (campaigns, last report, inventory, director target) | auditor | - |

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use moat_ota::campaign::CampaignSpec;
use serde::Deserialize;
use serde_json::{Value, json};

use super::campaigns::Operation;
use crate::api::{AUDITOR, ApiError, ApiResult, AppState, Authed, Json, OPERATOR, Query};
use crate::identity::IdentityError;

/// Longest reason an operator may give, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// The campaign routes (merged into the API router).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/ota/campaigns",
            get(list_campaigns).post(create_campaign),
        )
        .route("/api/v1/ota/campaigns/{id}", get(get_campaign))
        .route("/api/v1/ota/campaigns/{id}/{operation}", post(operate))
        .route("/api/v1/ota/devices/{id}", get(device_state))
}

fn campaign_id(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("campaign id {s:?}: expected a number")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_campaigns(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    let limit = q.limit.unwrap_or(crate::api::DEFAULT_PAGE).min(1000);
    let items = s.campaigns.list(limit).await?;
    Ok(axum::Json(json!({ "items": items })))
}

async fn create_campaign(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Json(spec): Json<CampaignSpec>,
) -> ApiResult<(axum::http::StatusCode, axum::Json<Value>)> {
    let v = s.campaigns.create(spec, &caller.actor).await?;
    Ok((axum::http::StatusCode::CREATED, axum::Json(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    devices: Option<bool>,
}

async fn get_campaign(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> ApiResult<axum::Json<Value>> {
    let id = campaign_id(&id)?;
    Ok(axum::Json(
        s.campaigns.get(id, q.devices.unwrap_or(false)).await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OperationBody {
    reason: Option<String>,
}

async fn operate(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path((id, operation)): Path<(String, String)>,
    Json(body): Json<OperationBody>,
) -> ApiResult<axum::Json<Value>> {
    let id = campaign_id(&id)?;
    let op = Operation::parse(&operation).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no operation {operation:?}; one of start, pause, resume, abort, rollback"),
        )
    })?;
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_LEN)
    {
        return Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON_LEN} bytes"
        )));
    }
    Ok(axum::Json(
        s.campaigns
            .operate(id, op, &caller.actor, body.reason.as_deref())
            .await?,
    ))
}

async fn device_state(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let device = moat_types::DeviceId::parse(&id)
        .map_err(|e| ApiError::bad_request(format!("device id {id:?}: {e}")))?;
    let registry = s.identity.registry.clone();
    let d = device.clone();
    let (known, campaigns, report, inventory) = tokio::task::spawn_blocking(move || {
        Ok::<_, IdentityError>((
            registry.device(d.as_str())?.is_some(),
            registry.campaigns_of_device(d.as_str())?,
            registry.ota_report(d.as_str())?,
            registry.ota_inventory(d.as_str())?,
        ))
    })
    .await
    .map_err(|e| IdentityError::Internal(e.to_string()))??;
    if !known {
        return Err(IdentityError::NotFound(format!("device {id}")).into());
    }
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let assignment = s.ota.assignment(&device);
    Ok(axum::Json(json!({
        "device": id,
        "director_target": assignment.map(|a| json!({
            "target": a.target, "campaign": a.campaign, "hardware": a.hardware,
            "consent": a.consent,
        })),
        "campaigns": campaigns.iter().map(|(cid, row)| {
            let mut e = parse(&row.entry);
            e["campaign"] = json!(cid);
            e
        }).collect::<Vec<_>>(),
        "report": report.map(|r| json!({"at_ms": r.at_ms, "status": parse(&r.body)})),
        "inventory": inventory.map(|r| json!({"at_ms": r.at_ms, "inventory": parse(&r.body)})),
    })))
}
