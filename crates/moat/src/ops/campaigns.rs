//! `moat ota campaign`: create, start, pause, resume, abort, roll back and watch update
//! campaigns (`/api/v1/ota/campaigns`), and `moat ota device` (a device's update state).

use super::*;
use crate::progress::{Progress, Row};

/// How often `show --watch` polls the hub.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Subcommand, Debug)]
pub enum CampaignCommand {
    /// Create a campaign (a draft; `start` it, or pass --start).
    Create {
        /// A name for people: 1-64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// The group whose devices are updated (as they are now).
        #[arg(long)]
        group: String,
        /// The image target to install (`NAME-VERSION` or `CLASS/NAME-VERSION`).
        #[arg(long)]
        target: String,
        /// The image to roll back to: a target published with --allow-downgrade.
        #[arg(long)]
        rollback_target: Option<String>,
        /// Cumulative percentages per wave, the first is the canary: 5,25,100.
        #[arg(long, default_value = "5,25,100")]
        waves: String,
        /// A maintenance window (UTC), repeatable: "mon,tue 22:00-04:00", "daily 01:00-05:00",
        /// "weekdays ...", "weekends ...". Without one, devices are updated at any time.
        #[arg(long = "window")]
        windows: Vec<String>,
        /// Ask each device for consent (a device may decline; that is not a failure).
        #[arg(long)]
        consent: bool,
        /// Time a device has to report a result: 90s, 30m, 1h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        device_timeout: Duration,
        /// Largest share of a wave that may fail or time out, in percent.
        #[arg(long, default_value_t = 10)]
        max_failure_percent: u8,
        /// What the failure gate does: pause or abort.
        #[arg(long, default_value = "pause")]
        on_failure: String,
        /// Turn the security-regression gate off.
        #[arg(long)]
        no_security_gate: bool,
        /// Updated devices the security gate needs before it judges.
        #[arg(long, default_value_t = 5)]
        security_min_sample: u32,
        /// Largest excess (percentage points) of updated devices with new security signals
        /// over the devices not yet updated.
        #[arg(long, default_value_t = 20)]
        security_max_excess: u8,
        /// What the security gate does: pause or abort.
        #[arg(long, default_value = "pause")]
        security_action: String,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// List campaigns, newest first.
    List,
    /// Show a campaign's progress per wave.
    Show {
        id: u64,
        /// Every device's state too.
        #[arg(long)]
        devices: bool,
        /// Follow progress until the campaign completes, aborts or rolls back (bars on a
        /// terminal; Ctrl-C to stop watching).
        #[arg(long)]
        watch: bool,
    },
    /// Start a draft campaign.
    Start { id: u64 },
    /// Pause: no new devices are updated; devices updating finish.
    Pause {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused campaign (acknowledges the gate that paused it).
    Resume { id: u64 },
    /// Abort for good: devices not yet updating are released.
    Abort {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Re-target updated devices to the campaign's rollback image.
    Rollback { id: u64 },
}

fn parse_window(s: &str) -> Result<Value, String> {
    let bad = || {
        format!(
            "window {s:?}: expected DAYS HH:MM-HH:MM, e.g. \"mon,tue 22:00-04:00\" (days: mon..sun, daily, weekdays, weekends)"
        )
    };
    let (days, range) = s.trim().split_once(' ').ok_or_else(bad)?;
    let (start, end) = range.trim().split_once('-').ok_or_else(bad)?;
    let mut list = Vec::new();
    for d in days.split(',') {
        match d.trim().to_ascii_lowercase().as_str() {
            "daily" => list.extend(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
            "weekdays" => list.extend(["mon", "tue", "wed", "thu", "fri"]),
            "weekends" => list.extend(["sat", "sun"]),
            d @ ("mon" | "tue" | "wed" | "thu" | "fri" | "sat" | "sun") => list.push(match d {
                "mon" => "mon",
                "tue" => "tue",
                "wed" => "wed",
                "thu" => "thu",
                "fri" => "fri",
                "sat" => "sat",
                _ => "sun",
            }),
            _ => return Err(bad()),
        }
    }
    list.sort_unstable();
    list.dedup();
    Ok(json!({"days": list, "start": start.trim(), "end": end.trim()}))
}

fn parse_waves(s: &str) -> Result<Vec<u8>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .trim_end_matches('%')
                .parse::<u8>()
                .map_err(|_| format!("waves {s:?}: expected percentages like 5,25,100"))
        })
        .collect()
}

fn gate_action(s: &str) -> Result<&'static str, String> {
    match s {
        "pause" => Ok("pause"),
        "abort" => Ok("abort"),
        _ => Err(format!("{s:?}: pause or abort")),
    }
}

/// The progress of one wave, as a short text: `3/10 installed, 1 failed`.
fn wave_note(w: &Value) -> String {
    let n = |k: &str| w[k].as_u64().unwrap_or(0);
    let mut parts = vec![format!("{}/{} installed", n("installed"), n("total"))];
    for (k, label) in [
        ("assigned", "assigned"),
        ("updating", "updating"),
        ("failed", "failed"),
        ("timed_out", "timed out"),
        ("declined", "declined"),
        ("cancelled", "cancelled"),
        ("rolling_back", "rolling back"),
        ("rolled_back", "rolled back"),
        ("rollback_failed", "rollback failed"),
    ] {
        if n(k) > 0 {
            parts.push(format!("{} {label}", n(k)));
        }
    }
    parts.join(", ")
}

fn finished(w: &Value) -> u64 {
    let n = |k: &str| w[k].as_u64().unwrap_or(0);
    n("total") - n("pending") - n("assigned") - n("updating")
}

fn describe(c: &Value) -> String {
    let mut out = format!(
        "campaign {}  {}  ({})\n  group:     {}\n  target:    {}\n  rollback:  {}\n  wave:      {} of {}\n  devices:   {}\n",
        c["id"],
        s(&c["name"]),
        s(&c["status"]),
        s(&c["group"]),
        s(&c["target"]),
        s(&c["rollback_target"]),
        c["current_wave"].as_u64().unwrap_or(0) + 1,
        c["waves"].as_array().map_or(0, Vec::len),
        c["devices_total"],
    );
    if let Some(r) = c["reason"].as_str() {
        out.push_str(&format!("  reason:    {r}\n"));
    }
    if !c["spec"]["windows"].as_array().is_none_or(Vec::is_empty) {
        out.push_str(&format!(
            "  windows:   {} (now {})\n",
            c["spec"]["windows"],
            if c["in_window"].as_bool() == Some(true) {
                "inside"
            } else {
                "outside"
            }
        ));
    }
    out.push('\n');
    let rows = c["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let n = |k: &str| w[k].as_u64().unwrap_or(0).to_string();
            vec![
                (w["wave"].as_u64().unwrap_or(0) + 1).to_string(),
                format!("{}%", w["percent"]),
                n("total"),
                n("pending"),
                (w["assigned"].as_u64().unwrap_or(0) + w["updating"].as_u64().unwrap_or(0))
                    .to_string(),
                n("installed"),
                n("failed"),
                n("timed_out"),
                n("declined"),
                (w["rolled_back"].as_u64().unwrap_or(0)).to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "WAVE",
            "UP TO",
            "DEVICES",
            "PENDING",
            "UPDATING",
            "INSTALLED",
            "FAILED",
            "TIMED OUT",
            "DECLINED",
            "ROLLED BACK",
        ],
        rows,
    ));
    if let Some(devices) = c["devices"].as_array() {
        out.push('\n');
        out.push_str(&table(
            &["DEVICE", "WAVE", "STAGE", "REPORTED", "PROGRESS", "ERROR"],
            devices
                .iter()
                .map(|d| {
                    vec![
                        s(&d["device"]),
                        (d["wave"].as_u64().unwrap_or(0) + 1).to_string(),
                        s(&d["stage"]),
                        s(&d["reported"]),
                        format!("{}%", d["progress"]),
                        s(&d["error"]),
                    ]
                })
                .collect(),
        ));
    }
    out
}

fn operate(t: &Target, id: u64, op: &str, reason: Option<String>) -> ExitCode {
    let body = json!({ "reason": reason });
    finish(
        call(
            t,
            "POST",
            &format!("/api/v1/ota/campaigns/{id}/{op}"),
            Some(body),
        )
        .map(|v| {
            if t.json {
                v.to_string()
            } else {
                format!("campaign {id}: {}", s(&v["status"]))
            }
        }),
    )
}

fn watch(t: &Target, id: u64, devices: bool) -> ExitCode {
    let path = format!("/api/v1/ota/campaigns/{id}");
    let mut bars = Progress::stderr();
    let mut last_status = String::new();
    loop {
        let c = match call(t, "GET", &path, None) {
            Ok(c) => c,
            Err(e) => return finish(Err(e)),
        };
        let status = s(&c["status"]);
        let rows: Vec<Row> = c["waves"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| Row {
                label: format!(
                    "wave {} ({}%)",
                    w["wave"].as_u64().unwrap_or(0) + 1,
                    w["percent"]
                ),
                done: finished(w),
                total: w["total"].as_u64().unwrap_or(0),
                note: wave_note(w),
            })
            .collect();
        if bars.enabled() {
            let mut all = vec![Row {
                label: format!("campaign {id} {}", s(&c["name"])),
                done: rows.iter().map(|r| r.done).sum(),
                total: rows.iter().map(|r| r.total).sum(),
                note: match c["reason"].as_str() {
                    Some(r) => format!("{status}: {r}"),
                    None => status.clone(),
                },
            }];
            all.extend(rows);
            bars.draw(&all);
        } else if status != last_status && !t.json {
            // Not a terminal: one line per status change.
            eprintln!("campaign {id}: {status}");
        }
        last_status = status.clone();
        if matches!(
            status.as_str(),
            "completed" | "aborted" | "rolled_back" | "draft"
        ) {
            bars.finish();
            let final_view = if devices {
                call(t, "GET", &format!("{path}?devices=true"), None)
            } else {
                Ok(c)
            };
            return finish(final_view.map(|v| if t.json { v.to_string() } else { describe(&v) }));
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

pub fn campaign(t: &Target, cmd: CampaignCommand) -> ExitCode {
    match cmd {
        CampaignCommand::Create {
            name,
            group,
            target,
            rollback_target,
            waves,
            windows,
            consent,
            device_timeout,
            max_failure_percent,
            on_failure,
            no_security_gate,
            security_min_sample,
            security_max_excess,
            security_action,
            start,
        } => {
            let spec = (|| -> Result<Value, String> {
                let windows = windows
                    .iter()
                    .map(|w| parse_window(w))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({
                    "name": name,
                    "group": group,
                    "target": target,
                    "rollback_target": rollback_target,
                    "waves": parse_waves(&waves)?,
                    "windows": windows,
                    "consent": if consent { "required" } else { "not_required" },
                    "device_timeout_secs": device_timeout.as_secs(),
                    "gates": {
                        "max_failure_percent": max_failure_percent,
                        "on_failure": gate_action(&on_failure)?,
                        "security": if no_security_gate { Value::Null } else { json!({
                            "min_sample": security_min_sample,
                            "max_excess_percent": security_max_excess,
                            "action": gate_action(&security_action)?,
                        })},
                    },
                }))
            })();
            let spec = match spec {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let created = match call(t, "POST", "/api/v1/ota/campaigns", Some(spec)) {
                Ok(v) => v,
                Err(e) => return finish(Err(e)),
            };
            let id = created["id"].as_u64().unwrap_or(0);
            if start {
                return operate(t, id, "start", None);
            }
            finish(Ok(if t.json {
                created.to_string()
            } else {
                format!(
                    "campaign {id} created (draft, {} devices); start it with `moat ota campaign start {id}`",
                    created["devices_total"]
                )
            }))
        }
        CampaignCommand::List => finish(call(t, "GET", "/api/v1/ota/campaigns", None).map(|v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if t.json {
                return pretty(&v);
            }
            let rows = items
                .iter()
                .map(|c| {
                    let waves = c["waves"].as_array().cloned().unwrap_or_default();
                    let installed: u64 = waves
                        .iter()
                        .map(|w| w["installed"].as_u64().unwrap_or(0))
                        .sum();
                    let failed: u64 = waves
                        .iter()
                        .map(|w| {
                            w["failed"].as_u64().unwrap_or(0) + w["timed_out"].as_u64().unwrap_or(0)
                        })
                        .sum();
                    vec![
                        c["id"].to_string(),
                        s(&c["name"]),
                        s(&c["group"]),
                        s(&c["target"]),
                        s(&c["status"]),
                        format!(
                            "{}/{}",
                            c["current_wave"].as_u64().unwrap_or(0) + 1,
                            waves.len()
                        ),
                        format!("{installed}/{}", c["devices_total"]),
                        failed.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "GROUP",
                    "TARGET",
                    "STATUS",
                    "WAVE",
                    "INSTALLED",
                    "FAILED",
                ],
                rows,
            )
        })),
        CampaignCommand::Show {
            id,
            devices,
            watch: true,
        } => watch(t, id, devices),
        CampaignCommand::Show { id, devices, .. } => {
            let path = if devices {
                format!("/api/v1/ota/campaigns/{id}?devices=true")
            } else {
                format!("/api/v1/ota/campaigns/{id}")
            };
            finish(
                call(t, "GET", &path, None).map(|v| if t.json { pretty(&v) } else { describe(&v) }),
            )
        }
        CampaignCommand::Start { id } => operate(t, id, "start", None),
        CampaignCommand::Pause { id, reason } => operate(t, id, "pause", reason),
        CampaignCommand::Resume { id } => operate(t, id, "resume", None),
        CampaignCommand::Abort { id, reason } => operate(t, id, "abort", reason),
        CampaignCommand::Rollback { id } => operate(t, id, "rollback", None),
    }
}

/// `moat ota device ID`: campaigns, last report, inventory and director target.
pub fn ota_device(t: &Target, id: &str) -> ExitCode {
    finish(
        call(t, "GET", &format!("/api/v1/ota/devices/{}", encode_path(id)), None).map(|v| {
            if t.json {
                return pretty(&v);
            }
            let mut out = format!(
                "device {id}\n  director target: {}\n  last report:     {}\n  inventory:       {}\n",
                match v["director_target"].as_object() {
                    Some(a) => format!(
                        "{} (campaign {}{})",
                        s(&a["target"]),
                        s(a.get("campaign").unwrap_or(&Value::Null)),
                        if a.get("consent") == Some(&Value::Bool(true)) {
                            ", asks for consent"
                        } else {
                            ""
                        }
                    ),
                    None => "-".into(),
                },
                match v["report"]["status"].as_object() {
                    Some(r) => format!(
                        "{} {} {}%{}",
                        s(&r["target"]),
                        s(&r["state"]),
                        r["progress"],
                        r.get("error")
                            .and_then(Value::as_str)
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                    None => "-".into(),
                },
                match v["inventory"]["inventory"].as_object() {
                    Some(i) => format!(
                        "{} {} ({} packages)",
                        s(&i["hardware"]),
                        s(&i["installed"]),
                        i["packages"].as_array().map_or(0, Vec::len)
                    ),
                    None => "-".into(),
                },
            );
            let rows: Vec<Vec<String>> = v["campaigns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        c["campaign"].to_string(),
                        (c["wave"].as_u64().unwrap_or(0) + 1).to_string(),
                        s(&c["stage"]),
                        s(&c["reported"]),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                out.push('\n');
                out.push_str(&table(&["CAMPAIGN", "WAVE", "STAGE", "REPORTED"], rows));
            }
            out
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_waves_parse() {
        assert_eq!(
            parse_window("mon,tue 22:00-04:00").expect("window"),
            json!({"days": ["mon", "tue"], "start": "22:00", "end": "04:00"})
        );
        assert_eq!(
            parse_window("weekends 01:00-05:00").expect("window")["days"],
            json!(["sat", "sun"])
        );
        assert!(parse_window("someday 01:00-02:00").is_err());
        assert!(parse_window("mon 01:00").is_err());
        assert_eq!(parse_waves("5, 25%,100").expect("waves"), vec![5, 25, 100]);
        assert!(parse_waves("5,x").is_err());
    }
}
