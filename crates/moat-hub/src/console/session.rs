//! Console sessions and CSRF protection.
//!
//! - **Session id**: 256 bits from the system RNG, hex, sent once in the cookie
//!   `__Host-moat_session` (`Secure; HttpOnly; SameSite=Strict; Path=/`, no `Domain`). The hub
//!   keeps only its SHA-256, so a memory dump of the map names no usable cookie. Lookups are
//!   by that hash, which reveals nothing about the id through timing.
//! - **Expiry**: a session ends after `session_idle` without a page request (the live event
//!   stream does not count as use) and `session_max` after login, whichever comes first;
//!   logout ends it at once. At most [`MAX_CONSOLE_SESSIONS`], the least recently used is
//!   dropped beyond that. Sessions live in memory: a restart ends them all.
//! - **CSRF**: each session has its own 256-bit token, put in a hidden field of every form.
//!   A POST is refused (403) unless that field equals the session's token (compared in
//!   constant time) and the request is same-origin: an `Origin` header, when sent, must be
//!   this hub's own `https://HOST`, and `Sec-Fetch-Site`, when sent, must be `same-origin`.
//!   The login form, which has no session yet, uses a double-submit token instead: a random
//!   value in the short-lived cookie `__Host-moat_login` and in the form.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::access::{Caller, hex, random_bytes};
use crate::config::ConsoleSettings;
use crate::identity::IdentityError;

/// Name of the session cookie. The `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, has `Path=/` and no `Domain`.
pub(crate) const SESSION_COOKIE: &str = "__Host-moat_session";
/// Name of the login form's double-submit cookie.
pub(crate) const LOGIN_COOKIE: &str = "__Host-moat_login";
/// Most live console sessions; the least recently used is dropped beyond it.
pub const MAX_CONSOLE_SESSIONS: usize = 1024;
/// How long a login form stays valid.
pub(crate) const LOGIN_FORM_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Session {
    caller: Caller,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// A signed-in operator on this request.
#[derive(Clone, Debug)]
pub(crate) struct Current {
    pub caller: Caller,
    /// The session's CSRF token, for the forms on the page.
    pub csrf: String,
}

/// The console's sessions (in memory).
#[derive(Debug)]
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    /// Replaced by a configuration reload; sessions open then are judged by the new ones.
    settings: Mutex<ConsoleSettings>,
}

fn digest(id: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether two tokens are equal, in time independent of where they differ. An empty
/// expected token never matches.
pub(crate) fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

impl Sessions {
    pub(crate) fn new(settings: ConsoleSettings) -> Self {
        Self {
            by_hash: Mutex::new(HashMap::new()),
            settings: Mutex::new(settings),
        }
    }

    /// Puts new session lifetimes in force (configuration reload).
    pub(crate) fn set_settings(&self, settings: ConsoleSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    fn settings(&self) -> ConsoleSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        let settings = self.settings();
        now.duration_since(s.last_used) < settings.session_idle
            && now.duration_since(s.created) < settings.session_max
    }

    /// Opens a session for `caller`: the cookie value to send (never stored) and the session.
    pub(crate) fn open(&self, caller: Caller) -> Result<(String, Current), IdentityError> {
        let id = hex(&random_bytes::<32>()?);
        let csrf = hex(&random_bytes::<32>()?);
        let now = Instant::now();
        let mut map = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, s| self.live(s, now));
        if map.len() >= MAX_CONSOLE_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&id),
            Session {
                caller: caller.clone(),
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        Ok((id, Current { caller, csrf }))
    }

    /// The session the request's cookie names, if it is live. `touch` counts the request
    /// as use (pages do; the event stream does not).
    pub(crate) fn find(&self, headers: &HeaderMap, touch: bool) -> Option<Current> {
        let id = cookie(headers, SESSION_COOKIE)?;
        if id.len() != 64 {
            return None;
        }
        let key = digest(id);
        let now = Instant::now();
        let mut map = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map.get_mut(&key)?;
        if !self.live(s, now) {
            map.remove(&key);
            return None;
        }
        if touch {
            s.last_used = now;
        }
        Some(Current {
            caller: s.caller.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Ends the session the request's cookie names.
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.by_hash
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest(id));
        }
    }

    /// The `Set-Cookie` value for a new session.
    pub(crate) fn cookie_for(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            self.settings().session_max.as_secs()
        )
    }
}

/// The `Set-Cookie` value that deletes cookie `name`.
pub(crate) fn clear_cookie(name: &str) -> String {
    format!("{name}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// A new login-form token and its `Set-Cookie` value.
pub(crate) fn login_token() -> Result<(String, String), IdentityError> {
    let token = hex(&random_bytes::<32>()?);
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LOGIN_FORM_TTL.as_secs()
    );
    Ok((token, cookie))
}

/// The value of cookie `name` in the request, if present once or more (the first wins).
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether the request comes from a page of this hub: `Sec-Fetch-Site`, when present, must
/// say `same-origin`, and `Origin`, when it names an origin, must be `https://` followed by
/// the request's own `Host`. Under `Referrer-Policy: no-referrer` browsers send the opaque
/// `Origin: null` even for same-origin form posts, so `null` is accepted only together
/// with `Sec-Fetch-Site: same-origin` (which every current browser sends).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let site = text(header::HeaderName::from_static("sec-fetch-site"));
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    match text(header::ORIGIN) {
        None => true,
        Some("null") => site == Some("same-origin"),
        Some(origin) => {
            text(header::HOST).is_some_and(|host| origin.strip_prefix("https://") == Some(host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;
    use axum::http::HeaderValue;

    fn caller() -> Caller {
        Caller {
            actor: "operator:alice".into(),
            role: Role::Operator,
        }
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={id}")).expect("header"),
        );
        h
    }

    #[test]
    fn sessions_open_find_and_close() {
        let sessions = Sessions::new(ConsoleSettings::default());
        let (id, current) = sessions.open(caller()).expect("open");
        let found = sessions.find(&with_cookie(&id), true).expect("found");
        assert_eq!(found.caller, current.caller);
        assert_eq!(found.csrf, current.csrf);
        assert!(sessions.find(&with_cookie(&"0".repeat(64)), true).is_none());
        sessions.close(&with_cookie(&id));
        assert!(sessions.find(&with_cookie(&id), true).is_none());
    }

    #[test]
    fn sessions_expire_when_idle() {
        let sessions = Sessions::new(ConsoleSettings {
            session_idle: Duration::ZERO,
            session_max: Duration::from_secs(60),
        });
        let (id, _) = sessions.open(caller()).expect("open");
        assert!(sessions.find(&with_cookie(&id), true).is_none());
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "ab"));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn origin_must_be_this_hub() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("localhost:8443"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://localhost:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:8443"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h), "an opaque origin alone proves nothing");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h), "what a browser sends under no-referrer");
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
