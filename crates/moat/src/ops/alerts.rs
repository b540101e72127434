//! `moat alerts`: the detection engine's alerts, and the operator's verdicts on them.

use super::*;

#[derive(Subcommand, Debug)]
pub enum AlertCommand {
    /// List alerts, newest first (with --json: one JSON object per line with at least
    /// `time`, `detector`, `severity`, `device`, `address`, `explanation` and `response`).
    List {
        /// Only alerts raised within this long: 90s, 30m, 24h, 7d.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Only alerts in this state: open, confirmed, released, false_positive.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one alert with its explanation.
    Show { id: u64 },
    /// Confirm an alert: its response stays in force until released.
    Confirm { id: u64 },
    /// End an alert's response now (quarantine, throttle, read-only, refusal, ban).
    Release { id: u64 },
    /// Mark an alert a false positive: its response ends.
    FalsePositive { id: u64 },
}

/// `2026-11-22 08:31:11Z` (UTC) for milliseconds since the epoch.
fn when(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".to_owned();
    };
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn describe(a: &Value) -> String {
    let e = &a["explanation"];
    let mut out = format!(
        "alert {}  {}  {} ({})\n  device:    {}\n  address:   {}\n  raised:    {}\n  response:  {} (configured: {})\n  state:     {} by {}\n  why:       {} = {} (threshold {})",
        a["id"],
        s(&a["detector"]),
        s(&a["severity"]),
        s(&a["state"]),
        s(&a["device"]),
        s(&a["address"]),
        when(&a["time"]),
        s(&a["response"]),
        s(&a["intended"]),
        s(&a["state"]),
        s(&a["state_by"]),
        s(&e["feature"]),
        e["observed"],
        e["threshold"],
    );
    if let Some(b) = e["baseline"].as_object() {
        out.push_str(&format!(
            "\n  baseline:  typical {} (spread {}, {} windows of its own, group weight {})",
            b.get("typical").unwrap_or(&Value::Null),
            b.get("spread").unwrap_or(&Value::Null),
            b.get("device_windows").unwrap_or(&Value::Null),
            b.get("group_weight").unwrap_or(&Value::Null),
        ));
    }
    for line in e["evidence"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  evidence:  {}", s(line)));
    }
    out
}

pub fn alerts(t: &Target, cmd: AlertCommand) -> ExitCode {
    match cmd {
        AlertCommand::List {
            since,
            state,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(d) = since {
                query.push(format!("since_secs={}", d.as_secs()));
            }
            if let Some(st) = state {
                query.push(format!("state={st}"));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let path = if query.is_empty() {
                "/api/v1/alerts".to_owned()
            } else {
                format!("/api/v1/alerts?{}", query.join("&"))
            };
            finish(call(t, "GET", &path, None).map(|v| {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                if t.json {
                    return items
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n");
                }
                let rows = items
                    .iter()
                    .map(|a| {
                        vec![
                            a["id"].to_string(),
                            when(&a["time"]),
                            s(&a["detector"]),
                            s(&a["severity"]),
                            s(&a["device"]),
                            s(&a["address"]),
                            s(&a["response"]),
                            s(&a["state"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "RAISED", "DETECTOR", "SEVERITY", "DEVICE", "ADDRESS", "RESPONSE",
                        "STATE",
                    ],
                    rows,
                )
            }))
        }
        AlertCommand::Show { id } => finish(
            call(t, "GET", &format!("/api/v1/alerts/{id}"), None)
                .map(|v| if t.json { v.to_string() } else { describe(&v) }),
        ),
        AlertCommand::Confirm { id } => verdict(t, id, "confirm"),
        AlertCommand::Release { id } => verdict(t, id, "release"),
        AlertCommand::FalsePositive { id } => verdict(t, id, "false-positive"),
    }
}

fn verdict(t: &Target, id: u64, what: &str) -> ExitCode {
    finish(
        call(t, "POST", &format!("/api/v1/alerts/{id}/{what}"), None).map(|v| {
            if t.json {
                v.to_string()
            } else {
                format!("alert {id} is now {}", s(&v["state"]))
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(when(&json!(0)), "1970-01-01 00:00:00Z");
        assert_eq!(when(&json!(1_795_336_271_000u64)), "2026-11-22 08:31:11Z");
        assert_eq!(when(&json!(951_782_400_000u64)), "2000-02-29 00:00:00Z");
        assert_eq!(when(&Value::Null), "-");
    }
}
