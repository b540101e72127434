//! The web console: server-rendered pages at `/console/` on the `--api-listen` listener,
//! over the same HTTPS as the API. Built by `cargo build` alone: the one stylesheet and the
//! one script are files in `assets/`, compiled in with `include_str!` and served from
//! `/console/assets/` with long cache lifetimes.
//!
//! Routes (every page needs a console session; POSTs also the CSRF token):
//!
//! | route | least role |
//! |---|---|
//! | `GET /console/login`, `POST /console/login`, `POST /console/logout` | none |
//! | `GET /console/` (fleet), `/console/devices`, `/console/devices/{id}` | auditor |
//! | `POST /console/devices/{id}/{revoke,quarantine,release,approve}` | operator |
//! | `GET /console/alerts`, `/console/policies` (view, test a decision), `/console/updates` | auditor |
//! | `POST /console/updates/{id}/{start,pause,resume,abort}` (campaigns) | operator |
//! | `GET /console/tokens`; `POST /console/tokens`, `/console/tokens/{id}/revoke` | auditor; operator |
//! | `GET /console/audit` (search, verify) | auditor |
//! | `GET /console/events` (Server-Sent Events: devices online, audit entries) | auditor |
//!
//! Sessions and CSRF are described in `session.rs`; escaping and the security headers in
//! `html.rs`. Every action goes through the same identity-service calls as the REST API, so
//! it is audited the same way, with the operator as actor.

mod activity;
mod chart;
mod html;
mod pages;
mod session;
mod updates;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use moat_audit::{Entry, Outcome};
use serde::Deserialize;
use tokio::sync::{Semaphore, broadcast};

pub(crate) use activity::Activity;
use activity::{RECENT_CONNECTION_EVENTS, SAMPLE_INTERVAL};
pub(crate) use session::Sessions;

use crate::access::Role;
use crate::api::{AppState, Peer};
use crate::identity::{AuditKey, MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE, now_ms};
use html::{Esc, Section, error_page, page, respond, see_other};
use session::{Current, same_origin, tokens_match};

/// The stylesheet.
pub(crate) const CSS: &str = include_str!("assets/console.css");
/// The script: live updates and confirmations, nothing the pages need to work.
pub(crate) const JS: &str = include_str!("assets/console.js");

/// Largest form body the console reads.
pub const MAX_FORM_BODY: usize = 16 * 1024;
/// Most live event streams open at once (each holds a connection).
pub const MAX_EVENT_STREAMS: usize = 64;
/// How often an event stream checks for new audit entries and its session's expiry.
pub const EVENT_POLL: Duration = Duration::from_secs(2);
/// Comment lines keep an idle event stream under the API's 30 s idle limit.
pub const EVENT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Shared by the console's handlers.
#[derive(Clone, Debug)]
pub(crate) struct Console {
    pub(crate) app: AppState,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) activity: Arc<Activity>,
    streams: Arc<Semaphore>,
}

/// The console's routes, to be merged with the API's router. Starts the sampler of fleet
/// rates, which stops with the hub.
pub(crate) fn router(app: AppState, sessions: Arc<Sessions>) -> Router {
    let activity = app.events.activity.clone();
    tokio::spawn(activity::sample(
        activity.clone(),
        app.broker.clone(),
        app.stopping.clone(),
    ));
    let state = Console {
        app,
        sessions,
        activity,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
    };
    Router::new()
        .route("/", get(|| async { see_other("/console/") }))
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/{id}", get(pages::device))
        .route("/console/devices/{id}/{action}", post(pages::device_action))
        .route("/console/alerts", get(pages::alerts))
        .route("/console/alerts/{id}/{action}", post(pages::alert_action))
        .route("/console/policies", get(pages::policies))
        .route(
            "/console/tokens",
            get(pages::tokens).post(pages::create_token),
        )
        .route("/console/tokens/{id}/revoke", post(pages::revoke_token))
        .route("/console/updates", get(updates::updates))
        .route(
            "/console/updates/{id}/{action}",
            post(updates::update_action),
        )
        .route("/console/audit", get(pages::audit))
        .route("/console/events", get(events))
        .route("/console/assets/{name}", get(asset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM_BODY))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Every console response, assets and redirects included: the CSP and its companions.
/// Pages are `no-store`; the assets set their own long lifetime.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(html::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

async fn not_found(State(c): State<Console>, headers: HeaderMap) -> Response {
    let who = c.sessions.find(&headers, false);
    error_page(
        StatusCode::NOT_FOUND,
        who.as_ref(),
        "There is no such page.",
    )
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let etag = format!("\"{}\"", html::asset_version());
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The pages link the assets with their content hash, so a cached copy never goes stale.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

// ---- access -------------------------------------------------------------------------------

/// A response that ends a request early (a redirect to the login page, a refusal); boxed
/// because a `Response` is large.
pub(crate) type Refused = Box<Response>;

/// The signed-in operator, or a redirect to the login page.
pub(crate) fn signed_in(c: &Console, headers: &HeaderMap) -> Result<Current, Refused> {
    c.sessions.find(headers, true).ok_or_else(|| {
        Box::new(
            if session::cookie(headers, session::SESSION_COOKIE).is_some() {
                see_other("/console/login?ended=1")
            } else {
                see_other("/console/login")
            },
        )
    })
}

/// Refuses (403, audited) a caller below `needed`.
pub(crate) fn require(c: &Console, who: &Current, needed: Role, what: &str) -> Result<(), Refused> {
    if who.caller.role >= needed {
        return Ok(());
    }
    c.app.identity.audit.record_limited(
        AuditKey::Actor(who.caller.actor.clone()),
        MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE,
        Entry::new(
            now_ms(),
            &who.caller.actor,
            "console.forbidden",
            what,
            Outcome::Denied,
        )
        .with("role", who.caller.role.as_str())
        .with("needed", needed.as_str()),
    );
    Err(Box::new(error_page(
        StatusCode::FORBIDDEN,
        Some(who),
        &format!(
            "Your role ({}) may not do this; it needs {}.",
            who.caller.role.as_str(),
            needed.as_str()
        ),
    )))
}

/// The checks of every state-changing request: same origin, a live session, the session's
/// CSRF token, and at least `needed`.
pub(crate) fn guard_post(
    c: &Console,
    headers: &HeaderMap,
    csrf: &str,
    needed: Role,
    what: &str,
) -> Result<Current, Refused> {
    let refuse = |who: Option<&Current>, why: &str| {
        let actor = who.map_or_else(
            || "console:anonymous".to_owned(),
            |w| w.caller.actor.clone(),
        );
        c.app.identity.audit.record_limited(
            AuditKey::Actor(actor.clone()),
            MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE,
            Entry::new(
                now_ms(),
                &actor,
                "console.csrf_refused",
                what,
                Outcome::Denied,
            )
            .with("reason", why),
        );
        Box::new(error_page(
            StatusCode::FORBIDDEN,
            who,
            "Request refused: it did not come from a current page of this console. Reload the page and try again.",
        ))
    };
    if !same_origin(headers) {
        return Err(refuse(None, "cross-origin"));
    }
    let who = signed_in(c, headers)?;
    if !tokens_match(&who.csrf, csrf) {
        return Err(refuse(Some(&who), "csrf token"));
    }
    require(c, &who, needed, what)?;
    Ok(who)
}

// ---- login and logout ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    ended: Option<String>,
}

fn login_page(status: StatusCode, notice: Option<(&str, &str)>) -> Response {
    let (token, cookie) = match session::login_token() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "console login form");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error");
        }
    };
    let notice = notice.map_or_else(String::new, |(class, text)| {
        format!(
            "<p class=\"notice {class}\" role=\"alert\">{}</p>",
            Esc(text)
        )
    });
    let main = format!(
        "{notice}<form class=\"card login\" method=\"post\" action=\"/console/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"user\">User name</label>\
         <input id=\"user\" name=\"user\" autocomplete=\"username\" required maxlength=\"256\" autofocus>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required maxlength=\"256\">\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"hint\">The first start of the hub printed the <code>admin</code> password. \
         More operators: <code>moat operator add NAME --role auditor</code>.</p>",
        Esc(&token)
    );
    let mut r = respond(status, page("Log in", Section::None, None, &main));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(
    State(c): State<Console>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    if c.sessions.find(&headers, false).is_some() {
        return see_other("/console/");
    }
    let notice = q
        .ended
        .map(|_| ("info", "Your session ended. Log in again."));
    login_page(StatusCode::OK, notice)
}

#[derive(Deserialize, Default)]
pub(crate) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(c): State<Console>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, None, "The form could not be read.");
    };
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    if !same_origin(&headers) || !tokens_match(expected, &form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "Request refused: the login form was stale or came from another site. Reload the page and try again.",
        );
    }
    let access = c.app.access.clone();
    let user = form.user.clone();
    let ip = peer.addr.ip();
    let checked =
        tokio::task::spawn_blocking(move || access.check_password(&user, &form.password, ip)).await;
    let caller = match checked {
        Ok(Ok(caller)) => caller,
        Ok(Err(e)) => {
            c.app.identity.audit.record_unauthenticated(
                Some(ip),
                Entry::new(
                    now_ms(),
                    format!("peer:{}", peer.addr),
                    "operator.login",
                    format!("operator:{}", form.user.escape_debug()),
                    Outcome::Denied,
                )
                .with("via", "console")
                .with("reason", &e),
            );
            return login_page(StatusCode::UNAUTHORIZED, Some(("bad", &e.to_string())));
        }
        Err(_) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error"),
    };
    let (id, _) = match c.sessions.open(caller.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "console session");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error");
        }
    };
    if let Err(e) = c
        .app
        .identity
        .audit_now(
            Entry::new(
                now_ms(),
                &caller.actor,
                "operator.login",
                &caller.actor,
                Outcome::Success,
            )
            .with("peer", peer.addr)
            .with("via", "console"),
        )
        .await
    {
        tracing::error!(error = %e, "console login audit");
        c.sessions.close(&headers);
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error");
    }
    let mut r = see_other("/console/");
    for cookie in [
        c.sessions.cookie_for(&id),
        session::clear_cookie(session::LOGIN_COOKIE),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Deserialize, Default)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(c): State<Console>,
    headers: HeaderMap,
    form: Result<axum::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    let who = match guard_post(&c, &headers, &csrf, Role::Auditor, "POST /console/logout") {
        Ok(w) => w,
        Err(r) => return *r,
    };
    c.sessions.close(&headers);
    c.app.identity.audit.record(Entry::new(
        now_ms(),
        &who.caller.actor,
        "operator.logout",
        &who.caller.actor,
        Outcome::Success,
    ));
    let mut r = see_other("/console/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(session::SESSION_COOKIE)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// ---- live events --------------------------------------------------------------------------

struct Stream {
    c: Console,
    headers: HeaderMap,
    feed: broadcast::Receiver<activity::DeviceChange>,
    poll: tokio::time::Interval,
    stopping: tokio::sync::watch::Receiver<bool>,
    last_seq: u64,
    last_online: Option<usize>,
    pending: std::collections::VecDeque<Event>,
    ended: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Stream {
    /// New audit entries and a changed online count, and whether the session still lives.
    async fn poll(&mut self) {
        if self.c.sessions.find(&self.headers, false).is_none() {
            self.pending
                .push_back(Event::default().event("ended").data("session ended"));
            self.ended = true;
            return;
        }
        let online = self.c.activity.online_count();
        if self.last_online != Some(online) {
            self.last_online = Some(online);
            self.pending.push_back(
                Event::default()
                    .event("online")
                    .data(serde_json::json!({ "online": online }).to_string()),
            );
        }
        let registry = self.c.app.identity.registry.clone();
        let after = self.last_seq;
        let Ok(Ok(records)) =
            tokio::task::spawn_blocking(move || registry.audit_records(after, 20)).await
        else {
            return;
        };
        for r in records {
            self.last_seq = r.seq;
            let e = &r.entry;
            self.pending.push_back(
                Event::default().event("audit").data(
                    serde_json::json!({
                        "seq": r.seq,
                        "at": html::time(e.at_ms),
                        "actor": e.actor,
                        "action": e.action,
                        "subject": e.subject,
                        "outcome": e.outcome.as_str(),
                    })
                    .to_string(),
                ),
            );
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if self.ended || *self.stopping.borrow() {
                return None;
            }
            tokio::select! {
                change = self.feed.recv() => match change {
                    Ok(ch) => self.pending.push_back(
                        Event::default().event("device").data(
                            serde_json::json!({"id": ch.device, "online": ch.online}).to_string(),
                        ),
                    ),
                    // Skipped changes: the next poll sends the count, pages show the rest
                    // on reload.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.poll.tick() => self.poll().await,
                _ = self.stopping.changed() => {}
            }
        }
    }
}

/// `GET /console/events`: Server-Sent Events for the open console pages.
async fn events(State(c): State<Console>, headers: HeaderMap) -> Response {
    if c.sessions.find(&headers, false).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
    }
    let Ok(slot) = c.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live streams\n").into_response();
    };
    let registry = c.app.identity.registry.clone();
    let last_seq = tokio::task::spawn_blocking(move || registry.search_audit(None, "", 1))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|r| r.first().map(|r| r.seq))
        .unwrap_or(0);
    let stream = Stream {
        feed: c.activity.subscribe(),
        poll: tokio::time::interval(EVENT_POLL),
        stopping: c.app.stopping.clone(),
        c,
        headers,
        last_seq,
        last_online: None,
        pending: std::collections::VecDeque::new(),
        ended: false,
        _slot: slot,
    };
    Sse::new(futures_util::stream::unfold(stream, Stream::next))
        .keep_alive(KeepAlive::new().interval(EVENT_KEEP_ALIVE))
        .into_response()
}
