//! Provisioning through the operator's own tool: the `moat` CLI against the hub's data
//! directory (`--data-dir`, on the hub's machine, with the local admin token the CLI finds
//! there). Devices get certificates (`moat device add`), groups (`moat group put`), and the
//! grants the fleet needs as policies (`moat policy put`, `moat device set`); the alert
//! reader gets `$moat/alerts/#`; alerts are read back with `moat alerts list --json`.
//!
//! Every call has a deadline ([`CLI_DEADLINE`]); a failing call stops the run with the
//! CLI's own message.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest one `moat` call may take.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// CLI calls run at once while provisioning.
pub const PARALLEL_CALLS: usize = 4;

/// The operator CLI of one hub.
#[derive(Debug, Clone)]
pub struct Cli {
    /// The `moat` executable.
    pub moat: PathBuf,
    /// The hub's data directory.
    pub data_dir: PathBuf,
}

impl Cli {
    /// `moat ARGS --data-dir DIR`; its standard output, or the error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let shown = format!("moat {}", args.join(" "));
        let mut child = Command::new(&self.moat)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (pass --moat PATH to the moat binary)",
                    self.moat.display()
                )
            })?;
        let deadline = Instant::now() + CLI_DEADLINE;
        // Read stdout on a thread so that a large answer cannot block the child.
        let mut stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = stdout.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{shown}: no answer within {CLI_DEADLINE:?}"));
                }
                Err(e) => return Err(format!("{shown}: {e}")),
            }
        };
        let out = reader.join().unwrap_or_default();
        if status.success() {
            Ok(out)
        } else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            Err(format!("{shown} failed ({status}): {}", err.trim()))
        }
    }

    /// Stores policy `name` from its TOML text.
    pub fn put_policy(&self, name: &str, text: &str, scratch: &Path) -> Result<(), String> {
        let path = scratch.join(format!("{name}.toml"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let p = path.display().to_string();
        self.run(&["policy", "put", name, &p]).map(|_| ())
    }
}

/// Runs `calls` (each a list of CLI argument lists, run in order) with [`PARALLEL_CALLS`]
/// threads; the first error wins.
pub fn run_parallel(cli: &Cli, calls: Vec<Vec<Vec<String>>>) -> Result<(), String> {
    let chunks: Vec<Vec<Vec<Vec<String>>>> = {
        let mut v: Vec<Vec<Vec<Vec<String>>>> = (0..PARALLEL_CALLS).map(|_| Vec::new()).collect();
        for (i, c) in calls.into_iter().enumerate() {
            v[i % PARALLEL_CALLS].push(c);
        }
        v
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || -> Result<(), String> {
                    for seq in chunk {
                        for args in seq {
                            let a: Vec<&str> = args.iter().map(String::as_str).collect();
                            cli.run(&a)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| "a provisioning thread panicked".to_owned())??;
        }
        Ok(())
    })
}

/// Policy text granting publish, subscribe and receive on `topics`, plus CONNECT as self
/// and the device's own namespace.
pub fn grant_policy(topics: &[String]) -> String {
    let list = topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "version = 1\n\n[[statement]]\nid = \"connect-as-self\"\neffect = \"allow\"\nactions = [\"connect\"]\ntopics = [\"${{device.id}}\"]\n\n[[statement]]\nid = \"own-namespace\"\neffect = \"allow\"\nactions = [\"publish\", \"subscribe\", \"receive\", \"retain\"]\ntopics = [\"devices/${{device.id}}/#\"]\n\n[[statement]]\nid = \"moat-sim-grants\"\neffect = \"allow\"\nactions = [\"publish\", \"subscribe\", \"receive\"]\ntopics = [{list}]\n"
    )
}

/// The alert reader's policy: CONNECT as self, subscribe to and receive `$moat/alerts/#`.
pub const ALERT_READER_POLICY: &str = "version = 1\n\n[[statement]]\nid = \"connect-as-self\"\neffect = \"allow\"\nactions = [\"connect\"]\ntopics = [\"${device.id}\"]\n\n[[statement]]\nid = \"alerts\"\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\ntopics = [\"$moat/alerts/#\"]\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_policy_quotes_topics() {
        let p = grant_policy(&["devices/+/telemetry".to_owned()]);
        assert!(p.contains("topics = [\"devices/+/telemetry\"]"), "{p}");
        assert!(p.contains("${device.id}"), "{p}");
    }
}
