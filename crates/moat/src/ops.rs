//! Operator commands: each is an API call to a running hub (found from `--data-dir`, or
//! `--hub URL --token TOKEN --ca FILE`), printed as a table for people or, with `--json`, as
//! the API's JSON for scripts. `audit verify` and `audit export` read the registry directly
//! when given only a data directory, so the trail can be checked with the hub stopped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use moat_hub::client::HubClient;
use serde_json::{Value, json};

use crate::{EXIT_CONFIG, EXIT_FAILURE};

mod alerts;
pub use alerts::{AlertCommand, alerts};
mod campaigns;
pub use campaigns::{CampaignCommand, campaign, ota_device};
mod ota;
pub use ota::{
    DEFAULT_KEYS_DIR, OtaRootCommand, ota_init, ota_online_keys, ota_publish, ota_root, ota_targets,
};

/// Where the hub is.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Data directory of a hub on this machine [default: ./moat-data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// A hub elsewhere: https://HOST:PORT (needs --token and --ca).
    #[arg(long, global = true)]
    pub hub: Option<String>,
    /// API token for --hub (or the MOAT_TOKEN environment variable).
    #[arg(long, global = true, env = "MOAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate to trust for --hub (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(moat_hub::config::DEFAULT_DATA_DIR))
    }

    fn client(&self) -> Result<HubClient, String> {
        match &self.hub {
            None => HubClient::local(&self.data_dir()).map_err(|e| e.to_string()),
            Some(url) => {
                let token = self
                    .token
                    .clone()
                    .ok_or("--hub needs --token TOKEN (or MOAT_TOKEN)")?;
                let ca = self.ca.clone().ok_or(
                    "--hub needs --ca FILE: the hub's root CA certificate (GET /pki/ca.pem)",
                )?;
                HubClient::remote(url, &ca, token).map_err(|e| e.to_string())
            }
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an enrollment token (printed once; only its hash is kept).
    Create {
        /// Group enrolled devices join (and whose policies they get).
        #[arg(long)]
        group: Option<String>,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// List enrollment tokens (never their secrets).
    List,
    /// Revoke an enrollment token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Store or replace a policy from a TOML or JSON file; applies to live sessions at once.
    Put { name: String, file: PathBuf },
    /// List policies (stored ones and built-in templates).
    List,
    /// Show one policy.
    Show { name: String },
    /// Delete a stored policy.
    Delete { name: String },
    /// What the policies decide for DEVICE doing ACTION (connect, publish, subscribe, receive,
    /// retain) on TOPIC, and which statement decided.
    Test {
        device: String,
        action: String,
        topic: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create or replace a group and its policies.
    Put {
        name: String,
        /// Policy to attach (repeatable, in order).
        #[arg(long = "policy")]
        policies: Vec<String>,
    },
    /// List groups.
    List,
    /// Delete a group.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain and its anchor: finds an edited, inserted or deleted entry.
    Verify,
    /// Print the trail as JSON lines.
    Export,
}

#[derive(Subcommand, Debug)]
pub enum ManufacturerCommand {
    /// Register (or replace) a manufacturer CA: devices with a factory certificate it
    /// issued (CN = device id) may enroll over EST without a token.
    Add {
        name: String,
        /// The manufacturer's CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// Group the devices join.
        #[arg(long)]
        group: Option<String>,
        /// Hold each device for an operator's approval (`moat device approve ID`).
        #[arg(long)]
        approval: bool,
    },
    /// List manufacturers.
    List,
    /// Remove a manufacturer.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ApiTokenCommand {
    /// Create an API token with a role (printed once).
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator or auditor.
        #[arg(long)]
        role: String,
        /// Expiry: 90s, 30m, 24h, 7d (default: none).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List API tokens.
    List,
    /// Revoke an API token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum BanCommand {
    /// List the bans in force (with --json: one JSON object per line).
    List,
    /// Ban an address, a network, a device or a client id. A device or client-id ban closes
    /// its live sessions at once; an address or network ban closes devices connected from it.
    Add {
        #[command(flatten)]
        what: BanWhat,
        /// How long: 90s, 30m, 24h, 7d (default: until removed).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Why (kept with the ban and in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Lift a ban by id (automatic bans too).
    Remove { id: String },
}

/// What a ban applies to: exactly one of these.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct BanWhat {
    /// An IP address (refused before TLS).
    #[arg(long)]
    address: Option<String>,
    /// An IP network such as 192.0.2.0/24 (refused before TLS).
    #[arg(long)]
    cidr: Option<String>,
    /// A device id (refused at CONNECT).
    #[arg(long)]
    device: Option<String>,
    /// An MQTT client id (refused at CONNECT).
    #[arg(long)]
    client_id: Option<String>,
}

/// Parses `90s`, `30m`, `24h`, `7d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes one call and returns the JSON body, or an error message that says what to do.
fn call(target: &Target, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    call_raw(
        target,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
    )
}

fn call_raw(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Value, String> {
    let client = target.client()?;
    let method: hyper::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
    let (status, bytes) = runtime()?
        .block_on(client.call(method, path, body))
        .map_err(|e| e.to_string())?;
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status.is_success() {
        Ok(v)
    } else {
        let msg = v["error"]["message"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned);
        let hint = match status.as_u16() {
            401 => {
                " (is the token valid? on the hub's machine, run as the hub's user with --data-dir)"
            }
            403 => " (your token's role does not allow this)",
            _ => "",
        };
        Err(format!("{msg}{hint}"))
    }
}

/// `method path` without a body; on success prints `done`.
fn act(t: &Target, method: &str, path: &str, done: String) -> ExitCode {
    finish(call(t, method, path, None).map(|_| done))
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            if !out.is_empty() {
                // A closed pipe (`moat device list | head`) is not an error worth a panic.
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{}", out.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// GET `path` and print its `items` as a table of `columns` (header, field), or the JSON.
fn list(t: &Target, path: &str, columns: &[(&str, &str)]) -> ExitCode {
    finish(call(t, "GET", path, None).map(|v| {
        if t.json {
            return pretty(&v);
        }
        let rows = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| columns.iter().map(|(_, field)| s(&item[*field])).collect())
                    .collect()
            })
            .unwrap_or_default();
        let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        table(&headers, rows)
    }))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn device_list(t: &Target) -> ExitCode {
    list(
        t,
        "/api/v1/devices?limit=1000",
        &[
            ("ID", "id"),
            ("STATUS", "status"),
            ("GROUP", "group"),
            ("POLICIES", "policies"),
        ],
    )
}

pub fn ca_show(t: &Target) -> ExitCode {
    finish(call(t, "GET", "/api/v1/ca", None).map(|v| {
        if t.json {
            return pretty(&v);
        }
        format!(
            "issuing CA: {} until {}\nprevious issuing CA (still trusted): {}\nroot key on this hub: {}",
            s(&v["issuing_algorithm"]),
            s(&v["issuing_not_after"]),
            v["previous_issuing_not_after"].as_str().map_or("none".to_owned(), |t| format!("until {t}")),
            s(&v["root_key_on_hub"]),
        )
    }))
}

/// `POST /api/v1/ca/{verb}` (rotate, reload).
pub fn ca_post(t: &Target, verb: &str) -> ExitCode {
    finish(call(t, "POST", &format!("/api/v1/ca/{verb}"), None).map(|v| {
        if t.json {
            pretty(&v)
        } else {
            format!(
                "the hub now issues from a CA valid until {}; the previous one stays trusted until {}",
                s(&v["issuing_not_after"]),
                s(&v["previous_issuing_not_after"])
            )
        }
    }))
}

pub fn device_conflicts(t: &Target) -> ExitCode {
    list(
        t,
        "/api/v1/identity-conflicts",
        &[
            ("DEVICE", "device"),
            ("SUSPECTED CLONES", "suspected_clones"),
            ("CLIENT-ID MISMATCHES", "client_id_mismatches"),
            ("ADDRESSES", "addresses"),
            ("CLAIMED IDS", "claimed_client_ids"),
        ],
    )
}

pub fn revoke_cert(t: &Target, serial: &str, reason: Option<String>) -> ExitCode {
    finish(
        call(
            t,
            "POST",
            &format!("/api/v1/certificates/{}/revoke", encode_path(serial)),
            Some(json!({"reason": reason})),
        )
        .map(|v| {
            if t.json {
                pretty(&v)
            } else {
                format!(
                    "certificate {} of {} revoked",
                    s(&v["serial"]),
                    s(&v["device_id"])
                )
            }
        }),
    )
}

pub fn device_show(t: &Target, id: &str) -> ExitCode {
    finish(
        call(
            t,
            "GET",
            &format!("/api/v1/devices/{}", encode_path(id)),
            None,
        )
        .map(|v| pretty(&v)),
    )
}

pub fn device_status(t: &Target, id: &str, verb: &str, reason: Option<String>) -> ExitCode {
    let body = reason.map(|r| json!({"reason": r}));
    finish(
        call(
            t,
            "POST",
            &format!("/api/v1/devices/{}/{verb}", encode_path(id)),
            body.or(Some(json!({}))),
        )
        .map(|v| {
            if t.json {
                pretty(&v)
            } else {
                match v["sessions_closed"].as_u64() {
                    Some(n) => format!(
                        "{}: {} ({n} live session(s) closed)",
                        s(&v["device"]),
                        s(&v["status"])
                    ),
                    None => format!("{}: {}", s(&v["device"]), s(&v["status"])),
                }
            }
        }),
    )
}

pub fn device_set(
    t: &Target,
    id: &str,
    group: Option<String>,
    attrs: Vec<String>,
    policies: Vec<String>,
    reset: bool,
) -> ExitCode {
    let mut map = serde_json::Map::new();
    for a in attrs {
        let Some((k, v)) = a.split_once('=') else {
            eprintln!("error: --attr {a:?} must be NAME=VALUE");
            return ExitCode::from(EXIT_CONFIG);
        };
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    // Only what is given changes: the rest is read back first.
    let path = format!("/api/v1/devices/{}", encode_path(id));
    let current = match call(t, "GET", &path, None) {
        Ok(v) => v,
        Err(e) => return finish(Err(e)),
    };
    let d = if reset {
        &json!({"group": null, "attrs": {}, "policies": []})
    } else {
        &current["device"]
    };
    let group = group.map_or_else(
        || d["group"].clone(),
        |g| {
            if g.is_empty() {
                Value::Null
            } else {
                Value::String(g)
            }
        },
    );
    let attrs = if map.is_empty() {
        d["attrs"].clone()
    } else {
        Value::Object(map)
    };
    let policies = if policies.is_empty() {
        d["policies"].clone()
    } else {
        json!(policies)
    };
    let body = json!({"group": group, "attrs": attrs, "policies": policies});
    finish(call(t, "PUT", &path, Some(body)).map(|v| pretty(&v)))
}

pub fn token(t: &Target, cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::Create { group, uses, ttl } => finish(
            call(
                t,
                "POST",
                "/api/v1/enrollment-tokens",
                Some(json!({"group": group, "uses": uses, "ttl_secs": ttl.as_secs()})),
            )
            .map(|v| if t.json { pretty(&v) } else { s(&v["token"]) }),
        ),
        TokenCommand::List => finish(call(t, "GET", "/api/v1/enrollment-tokens", None).map(|v| {
            if t.json {
                return pretty(&v);
            }
            let rows = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            vec![
                                s(&x["id"]),
                                s(&x["group"]),
                                format!("{}/{}", s(&x["uses_left"]), s(&x["max_uses"])),
                                s(&x["revoked"]),
                                s(&x["expires_at_ms"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &["ID", "GROUP", "USES LEFT", "REVOKED", "EXPIRES (ms)"],
                rows,
            )
        })),
        TokenCommand::Revoke { id } => act(
            t,
            "POST",
            &format!("/api/v1/enrollment-tokens/{}/revoke", encode_path(&id)),
            format!("enrollment token {id} revoked"),
        ),
    }
}

pub fn policy(t: &Target, cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Put { name, file } => {
            let text = match std::fs::read(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", file.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            finish(
                call_raw(
                    t,
                    "PUT",
                    &format!("/api/v1/policies/{}", encode_path(&name)),
                    Some(text),
                )
                .map(|v| {
                    if t.json {
                        pretty(&v)
                    } else {
                        format!(
                            "policy {name} stored and applied ({} live session(s) closed)",
                            s(&v["sessions_closed"])
                        )
                    }
                }),
            )
        }
        PolicyCommand::List => finish(call(t, "GET", "/api/v1/policies", None).map(|v| {
            if t.json {
                return pretty(&v);
            }
            let rows = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let n = p["document"]["statement"].as_array().map_or(0, Vec::len);
                            vec![s(&p["name"]), n.to_string()]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["NAME", "STATEMENTS"], rows)
        })),
        PolicyCommand::Show { name } => finish(
            call(
                t,
                "GET",
                &format!("/api/v1/policies/{}", encode_path(&name)),
                None,
            )
            .map(|v| pretty(&v)),
        ),
        PolicyCommand::Delete { name } => act(
            t,
            "DELETE",
            &format!("/api/v1/policies/{}", encode_path(&name)),
            format!("policy {name} deleted"),
        ),
        PolicyCommand::Test {
            device,
            action,
            topic,
        } => finish(
            call(
                t,
                "POST",
                "/api/v1/policy-decisions",
                Some(json!({"device": device, "action": action, "topic": topic})),
            )
            .map(|v| {
                if t.json {
                    pretty(&v)
                } else {
                    let verdict = if v["allowed"] == Value::Bool(true) {
                        "ALLOW"
                    } else {
                        "DENY"
                    };
                    let mut text = format!("{verdict}: {}", s(&v["explanation"]));
                    if let Some(quota) = v["quota"].as_object().filter(|q| !q.is_empty()) {
                        let set: Vec<String> =
                            quota.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        text.push_str(&format!("\nquota: {}", set.join(", ")));
                    }
                    text
                }
            }),
        ),
    }
}

pub fn group(t: &Target, cmd: GroupCommand) -> ExitCode {
    match cmd {
        GroupCommand::Put { name, policies } => finish(
            call(
                t,
                "PUT",
                &format!("/api/v1/groups/{}", encode_path(&name)),
                Some(json!({"policies": policies})),
            )
            .map(|v| pretty(&v)),
        ),
        GroupCommand::List => list(
            t,
            "/api/v1/groups",
            &[("NAME", "name"), ("POLICIES", "policies")],
        ),
        GroupCommand::Delete { name } => act(
            t,
            "DELETE",
            &format!("/api/v1/groups/{}", encode_path(&name)),
            format!("group {name} deleted"),
        ),
    }
}

pub fn api_token(t: &Target, cmd: ApiTokenCommand) -> ExitCode {
    match cmd {
        ApiTokenCommand::Create { name, role, ttl } => finish(
            call(
                t,
                "POST",
                "/api/v1/api-tokens",
                Some(json!({"name": name, "role": role, "ttl_secs": ttl.map(|d| d.as_secs())})),
            )
            .map(|v| if t.json { pretty(&v) } else { s(&v["token"]) }),
        ),
        ApiTokenCommand::List => {
            finish(call(t, "GET", "/api/v1/api-tokens", None).map(|v| pretty(&v)))
        }
        ApiTokenCommand::Revoke { id } => act(
            t,
            "POST",
            &format!("/api/v1/api-tokens/{}/revoke", encode_path(&id)),
            format!("API token {id} revoked"),
        ),
    }
}

pub fn manufacturer(t: &Target, cmd: ManufacturerCommand) -> ExitCode {
    match cmd {
        ManufacturerCommand::Add {
            name,
            ca,
            group,
            approval,
        } => {
            let pem = match std::fs::read_to_string(&ca) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", ca.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            finish(
                call(
                    t,
                    "PUT",
                    &format!("/api/v1/manufacturers/{}", encode_path(&name)),
                    Some(json!({"ca_pem": pem, "group": group, "require_approval": approval})),
                )
                .map(|v| {
                    if t.json {
                        pretty(&v)
                    } else {
                        format!("manufacturer {name} registered: {}", s(&v["subject_dn"]))
                    }
                }),
            )
        }
        ManufacturerCommand::List => list(
            t,
            "/api/v1/manufacturers",
            &[
                ("NAME", "name"),
                ("CA SUBJECT", "subject_dn"),
                ("GROUP", "group"),
                ("APPROVAL", "require_approval"),
            ],
        ),
        ManufacturerCommand::Delete { name } => act(
            t,
            "DELETE",
            &format!("/api/v1/manufacturers/{}", encode_path(&name)),
            format!("manufacturer {name} deleted"),
        ),
    }
}

/// `audit verify` / `audit export`: through the API with `--hub`, else straight from the
/// data directory's registry (read-only; works with the hub running or stopped).
pub fn audit(t: &Target, cmd: AuditCommand) -> ExitCode {
    if t.hub.is_some() {
        return match cmd {
            AuditCommand::Verify => {
                finish(call(t, "GET", "/api/v1/audit/verify", None).and_then(|v| {
                    if v["intact"] == Value::Bool(true) {
                        Ok(if t.json {
                            pretty(&v)
                        } else {
                            format!("audit trail intact: {} entries", s(&v["entries"]))
                        })
                    } else {
                        Err(format!("audit trail TAMPERED: {}", s(&v["problem"])))
                    }
                }))
            }
            AuditCommand::Export => {
                let client = match t.client() {
                    Ok(c) => c,
                    Err(e) => return finish(Err(e)),
                };
                finish(
                    runtime()
                        .and_then(|rt| {
                            rt.block_on(client.call(
                                hyper::Method::GET,
                                "/api/v1/audit/export",
                                None,
                            ))
                            .map_err(|e| e.to_string())
                        })
                        .and_then(|(status, body)| {
                            if status.is_success() {
                                Ok(String::from_utf8_lossy(&body).into_owned())
                            } else {
                                Err(String::from_utf8_lossy(&body).into_owned())
                            }
                        }),
                )
            }
        };
    }
    let dir = t.data_dir();
    let key_path = dir.join("secrets").join("audit.key");
    let key = match std::fs::read(&key_path)
        .ok()
        .and_then(|k| moat_audit::AnchorKey::new(&k))
    {
        Some(k) => k,
        None => {
            return finish(Err(format!(
                "cannot read the audit key {} (run as the hub's user; is {} a Moat data directory?)",
                key_path.display(),
                dir.display()
            )));
        }
    };
    let registry =
        match moat_store::registry::Registry::open_read_only(&dir.join("registry.db"), key) {
            Ok(r) => r.with_anchor_copy(dir.join("secrets").join("audit.anchor")),
            Err(e) => return finish(Err(e.to_string())),
        };
    match cmd {
        AuditCommand::Verify => finish(match registry.verify_audit() {
            Err(e) => Err(e.to_string()),
            Ok(Err(t)) => Err(format!("audit trail TAMPERED: {t}")),
            Ok(Ok(v)) => Ok(if t.json {
                pretty(
                    &json!({"intact": true, "entries": v.count, "head": moat_audit::hex(&v.head)}),
                )
            } else {
                format!(
                    "audit trail intact: {} entries, head {}",
                    v.count,
                    moat_audit::hex(&v.head)
                )
            }),
        }),
        AuditCommand::Export => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut after = 0;
            loop {
                let page = match registry.audit_records(after, moat_store::registry::MAX_PAGE) {
                    Ok(p) => p,
                    Err(e) => return finish(Err(e.to_string())),
                };
                let Some(last) = page.last() else { break };
                after = last.seq;
                for r in &page {
                    if writeln!(out, "{}", r.to_json_line()).is_err() {
                        return ExitCode::from(EXIT_FAILURE);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// `5m`, `3h`, `2d`: roughly how long until `at_ms` (milliseconds since the epoch).
fn remaining(at_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let secs = at_ms.saturating_sub(now).div_ceil(1000);
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub fn ban(t: &Target, cmd: BanCommand) -> ExitCode {
    match cmd {
        BanCommand::List => finish(call(t, "GET", "/api/v1/bans", None).map(|v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if t.json {
                // One object per line, for scripts.
                return items
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let rows = items
                .iter()
                .map(|b| {
                    vec![
                        s(&b["id"]),
                        s(&b["kind"]),
                        s(&b["value"]),
                        b["expires_at_ms"]
                            .as_u64()
                            .map_or_else(|| "never".to_owned(), remaining),
                        s(&b["created_by"]),
                        s(&b["reason"]),
                    ]
                })
                .collect();
            table(&["ID", "KIND", "VALUE", "EXPIRES IN", "BY", "REASON"], rows)
        })),
        BanCommand::Add {
            what,
            duration,
            reason,
        } => {
            let (kind, value) = match what {
                BanWhat {
                    address: Some(v), ..
                } => ("address", v),
                BanWhat { cidr: Some(v), .. } => ("cidr", v),
                BanWhat {
                    device: Some(v), ..
                } => ("device", v),
                BanWhat {
                    client_id: Some(v), ..
                } => ("client-id", v),
                _ => {
                    eprintln!("error: give one of --address, --cidr, --device, --client-id");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let body = json!({
                "kind": kind,
                "value": value,
                "duration_secs": duration.map(|d| d.as_secs()),
                "reason": reason,
            });
            finish(call(t, "POST", "/api/v1/bans", Some(body)).map(|v| {
                if t.json {
                    v.to_string()
                } else {
                    format!(
                        "banned {} {} (id {}{}); {} live connection(s) closed",
                        s(&v["kind"]),
                        s(&v["value"]),
                        s(&v["id"]),
                        v["expires_at_ms"]
                            .as_u64()
                            .map_or_else(String::new, |at| format!(
                                ", expires in {}",
                                remaining(at)
                            )),
                        s(&v["closed_connections"]),
                    )
                }
            }))
        }
        BanCommand::Remove { id } => act(
            t,
            "DELETE",
            &format!("/api/v1/bans/{}", encode_path(&id)),
            format!("ban {id} removed"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
