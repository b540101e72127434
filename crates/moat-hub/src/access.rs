//! Operator access: the hub's secrets, roles, API tokens (HMAC-SHA256), operators'
//! passwords (argon2id), login sessions, and the failed-login limiter.
//!
//! Token format: `moat_<kind>_<id>_<secret>` where `kind` is `at` (API token), `st` (login
//! session) or `et` (enrollment token), `id` is 16 hex digits (public, the lookup key) and
//! `secret` 64 hex digits (256 bits from the system RNG). Only `HMAC-SHA256(token key,
//! secret)` is stored; comparison is constant-time. The token key lives in
//! `DATA_DIR/secrets/token.key` (0600), so a copy of the registry alone proves nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::{hmac, rand};
use moat_store::registry::{ApiTokenRecord, OperatorRecord, Registry};

use crate::identity::{IdentityError, now_ms};

/// Longest a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most live login sessions; the oldest is dropped beyond it.
pub const MAX_SESSIONS: usize = 1024;
/// Failed logins per source address allowed per [`LOGIN_WINDOW`] before further attempts
/// are refused without checking the password.
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The window failed logins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Most addresses the failed-login limiter tracks (bounded under address churn: the oldest
/// windows are dropped first).
pub const MAX_TRACKED_LOGIN_SOURCES: usize = 10_000;
/// Most password checks running at once (argon2id uses ~19 MiB each).
pub const MAX_CONCURRENT_LOGINS: usize = 4;
/// Longest accepted token or password, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 256;

const SECRET_BYTES: usize = 32;
const ID_BYTES: usize = 8;

/// What a caller may do. Ordered: each role can do what the ones before it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything, verifies and exports the audit trail; changes nothing.
    Auditor,
    /// Runs the fleet: devices, groups, policies, enrollment tokens, revocation.
    Operator,
    /// Everything, including API tokens.
    Admin,
}

impl Role {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auditor => "auditor",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auditor" => Some(Self::Auditor),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// As it appears in the audit trail: `operator:NAME` or `token:ID`.
    pub actor: String,
    /// What it may do.
    pub role: Role,
}

/// Random bytes from the system RNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], IdentityError> {
    let mut out = [0u8; N];
    rand::fill(&mut out)
        .map_err(|_| IdentityError::Invalid("the system random generator failed".into()))?;
    Ok(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    moat_audit::hex(bytes)
}

/// Reads a secret file, or creates it (0600) with `len` random bytes.
pub(crate) fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= SECRET_BYTES => return Ok(bytes),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is shorter than {SECRET_BYTES} bytes", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret =
        random_bytes::<SECRET_BYTES>().map_err(|e| std::io::Error::other(e.to_string()))?;
    moat_pki::write_private_file(path, &secret)?;
    Ok(secret.to_vec())
}

/// The parts of a token string.
pub(crate) struct ParsedToken<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub secret: &'a str,
}

pub(crate) fn parse_token(token: &str) -> Option<ParsedToken<'_>> {
    if token.len() > MAX_CREDENTIAL_LEN {
        return None;
    }
    let rest = token.strip_prefix("moat_")?;
    let (kind, rest) = rest.split_once('_')?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, ID_BYTES * 2) && hexish(secret, SECRET_BYTES * 2)).then_some(ParsedToken {
        kind,
        id,
        secret,
    })
}

/// A new token of `kind`: (id, full token string, MAC of the secret to store).
pub(crate) fn new_token(
    key: &hmac::Key,
    kind: &str,
) -> Result<(String, String, Vec<u8>), IdentityError> {
    let id = hex(&random_bytes::<ID_BYTES>()?);
    let secret = hex(&random_bytes::<SECRET_BYTES>()?);
    let mac = hmac::sign(key, secret.as_bytes()).as_ref().to_vec();
    Ok((id.clone(), format!("moat_{kind}_{id}_{secret}"), mac))
}

/// Whether `secret` matches the stored `mac` (constant time).
pub(crate) fn secret_matches(key: &hmac::Key, secret: &str, mac: &[u8]) -> bool {
    hmac::verify(key, secret.as_bytes(), mac).is_ok()
}

#[derive(Debug)]
struct Session {
    caller: Caller,
    mac: Vec<u8>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    by_source: HashMap<IpAddr, (Instant, u32)>,
    in_flight: usize,
}

/// Operator access control.
pub struct Access {
    registry: std::sync::Arc<Registry>,
    pub(crate) token_key: hmac::Key,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<Failures>,
    /// A hash of a random password, checked when the user does not exist.
    decoy_hash: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

/// What the first start created: shown once.
#[derive(Debug)]
pub struct Bootstrap {
    /// The admin's login name.
    pub user: String,
    /// The admin's password, shown once and never stored in clear.
    pub password: String,
}

/// Where the local CLI's admin token lives: `DATA_DIR/secrets/cli.token` (0600). Whoever can
/// read it can read the CA keys beside it, so it grants nothing new.
pub fn cli_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("cli.token")
}

impl Access {
    pub(crate) fn new(registry: std::sync::Arc<Registry>, token_key: &[u8]) -> Self {
        Self {
            registry,
            token_key: hmac::Key::new(hmac::HMAC_SHA256, token_key),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures::default()),
            decoy_hash: random_bytes::<16>()
                .ok()
                .and_then(|b| hash_password(&hex(&b)).ok())
                .unwrap_or_default(),
        }
    }

    /// On first start (no operator yet): creates the `admin` operator with a random
    /// password (returned, to be shown once) and the local CLI token file.
    pub(crate) fn bootstrap(&self, data_dir: &Path) -> Result<Option<Bootstrap>, IdentityError> {
        let cli_path = cli_token_path(data_dir);
        let mut created = None;
        if self.registry.operator_count()? == 0 {
            let password = hex(&random_bytes::<12>()?);
            self.registry.put_operator(&OperatorRecord {
                name: "admin".into(),
                role: Role::Admin.as_str().into(),
                password_hash: hash_password(&password)?,
                created_at_ms: now_ms(),
            })?;
            created = Some(Bootstrap {
                user: "admin".into(),
                password,
            });
        }
        if !cli_path.exists() {
            let (token, _) = self.create_api_token("local-cli", Role::Admin, None)?;
            moat_pki::write_private_file(&cli_path, token.as_bytes()).map_err(|e| {
                IdentityError::Invalid(format!("cannot write {}: {e}", cli_path.display()))
            })?;
        }
        Ok(created)
    }

    /// Creates an API token; returns the token (shown once) and its record.
    pub(crate) fn create_api_token(
        &self,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(String, ApiTokenRecord), IdentityError> {
        let (id, token, mac) = new_token(&self.token_key, "at")?;
        let now = now_ms();
        let record = ApiTokenRecord {
            id,
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            mac,
            created_at_ms: now,
            expires_at_ms: ttl
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            revoked: false,
        };
        self.registry.put_api_token(&record)?;
        Ok((token, record))
    }

    /// The caller a bearer token belongs to, if it is valid now.
    pub(crate) fn authenticate(&self, token: &str) -> Option<Caller> {
        let parsed = parse_token(token)?;
        match parsed.kind {
            "st" => {
                let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
                let s = sessions.get(parsed.id)?;
                (s.expires > Instant::now()
                    && secret_matches(&self.token_key, parsed.secret, &s.mac))
                .then(|| s.caller.clone())
            }
            "at" => {
                let record = self
                    .registry
                    .api_tokens()
                    .ok()?
                    .into_iter()
                    .find(|t| t.id == parsed.id)?;
                let live = !record.revoked && record.expires_at_ms.is_none_or(|e| e > now_ms());
                (live && secret_matches(&self.token_key, parsed.secret, &record.mac)).then(|| {
                    Caller {
                        actor: format!("token:{}", record.id),
                        role: Role::parse(&record.role).unwrap_or(Role::Auditor),
                    }
                })
            }
            _ => None,
        }
    }

    /// Checks an operator's password and opens a session; refuses (without checking) a
    /// source with too many recent failures.
    pub(crate) fn login(
        &self,
        user: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<(String, Caller), IdentityError> {
        let caller = self.check_password(user, password, source)?;
        let now = Instant::now();
        let (id, token, mac) = new_token(&self.token_key, "st")?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id,
            Session {
                caller: caller.clone(),
                mac,
                expires: now + SESSION_TTL,
            },
        );
        Ok((token, caller))
    }

    /// Checks an operator's password, behind the failed-login limiter and the cap on
    /// concurrent checks (shared by the API's login and the web console's); the caller it
    /// names on success. Opens no session.
    pub(crate) fn check_password(
        &self,
        user: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<Caller, IdentityError> {
        let now = Instant::now();
        // Every attempt counts as a failure until it succeeds, so that parallel guesses from
        // one address cannot all pass the check before any is counted; and at most
        // MAX_CONCURRENT_LOGINS argon2 verifications run at once (each takes ~19 MiB).
        {
            let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            f.by_source
                .retain(|_, (start, _)| now.duration_since(*start) < LOGIN_WINDOW);
            if f.by_source
                .get(&source)
                .is_some_and(|(_, n)| *n >= MAX_FAILED_LOGINS)
            {
                return Err(IdentityError::Unauthorized(format!(
                    "too many failed logins from {source}; try again later"
                )));
            }
            if f.in_flight >= MAX_CONCURRENT_LOGINS {
                return Err(IdentityError::Unauthorized(
                    "too many logins in progress; try again in a moment".into(),
                ));
            }
            if f.by_source.len() >= MAX_TRACKED_LOGIN_SOURCES
                && !f.by_source.contains_key(&source)
                && let Some(oldest) = f
                    .by_source
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| *k)
            {
                f.by_source.remove(&oldest);
            }
            f.by_source.entry(source).or_insert((now, 0)).1 += 1;
            f.in_flight += 1;
        }
        let operator = if user.len() <= MAX_CREDENTIAL_LEN && password.len() <= MAX_CREDENTIAL_LEN {
            self.registry.operator(user).ok().flatten()
        } else {
            None
        };
        // An unknown user costs the same argon2 work as a known one, so response time does
        // not tell which user names exist.
        let ok = match &operator {
            Some(o) => verify_password(password, &o.password_hash),
            None => {
                let _ = verify_password(password, &self.decoy_hash);
                false
            }
        };
        {
            let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            f.in_flight = f.in_flight.saturating_sub(1);
            if ok && let Some(entry) = f.by_source.get_mut(&source) {
                entry.1 = entry.1.saturating_sub(1);
            }
        }
        if !ok {
            return Err(IdentityError::Unauthorized(
                "wrong user name or password".into(),
            ));
        }
        let role = operator
            .and_then(|o| Role::parse(&o.role))
            .unwrap_or(Role::Auditor);
        Ok(Caller {
            actor: format!("operator:{user}"),
            role,
        })
    }
}

/// Adds an operator (or replaces its role and password) with a fresh random password,
/// returned to be shown once; only its argon2id hash is stored.
pub(crate) fn put_operator(
    registry: &Registry,
    name: &str,
    role: Role,
) -> Result<String, IdentityError> {
    crate::identity::validate_name(name, "operator")?;
    let password = hex(&random_bytes::<12>()?);
    registry.put_operator(&OperatorRecord {
        name: name.to_owned(),
        role: role.as_str().into(),
        password_hash: hash_password(&password)?,
        created_at_ms: now_ms(),
    })?;
    Ok(password)
}

fn hash_password(password: &str) -> Result<String, IdentityError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| IdentityError::Invalid(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Invalid(format!("password hashing failed: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_verify() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]);
        let (id, token, mac) = new_token(&key, "at").expect("token");
        let p = parse_token(&token).expect("parses");
        assert_eq!((p.kind, p.id), ("at", id.as_str()));
        assert!(secret_matches(&key, p.secret, &mac));
        assert!(!secret_matches(&key, &"0".repeat(64), &mac));
        assert!(parse_token("moat_at_short_x").is_none());
        assert!(parse_token(&format!("{token}0")).is_none());
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a phc string"));
    }
}
