//! The configured device commands (install, reboot, health, confirm, rollback, consent,
//! inventory): how they are parsed and run.
//!
//! A command line is split at whitespace into a program and its arguments and run without a
//! shell (so nothing from update metadata is ever interpreted by one); for quoting or
//! pipelines, point it at a script. Arguments the agent adds (the image path for install)
//! come last. Every command also gets the environment variables `MOAT_OTA_TARGET`,
//! `MOAT_OTA_VERSION`, `MOAT_OTA_PREVIOUS_VERSION` and `MOAT_OTA_IMAGE` when they apply.
//! Exit status 0 is success. Output is bounded ([`MAX_COMMAND_OUTPUT`]) and each command has
//! a deadline, after which it is killed.

use std::ffi::OsString;
use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::AgentError;

/// Longest configured command line, in bytes: 4 KiB.
pub const MAX_COMMAND_LINE_LEN: usize = 4096;
/// Bytes of a command's standard output kept (the inventory command's limit is its own), and
/// of its standard error quoted in reports: 4 KiB. The rest is read and discarded.
pub const MAX_COMMAND_OUTPUT: usize = 4096;

/// A parsed command line.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandLine {
    argv: Vec<String>,
}

impl CommandLine {
    /// Splits `text` at whitespace; refuses an empty or overlong line.
    pub fn parse(text: &str) -> Result<Self, AgentError> {
        if text.len() > MAX_COMMAND_LINE_LEN {
            return Err(AgentError::Misconfigured(format!(
                "a command line is longer than {MAX_COMMAND_LINE_LEN} bytes"
            )));
        }
        let argv: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(AgentError::Misconfigured("an empty command line".into()));
        }
        Ok(CommandLine { argv })
    }

    /// The program.
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.argv.join(" "))
    }
}

impl fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandLine({self})")
    }
}

impl std::str::FromStr for CommandLine {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How a command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) success: bool,
    /// The bounded standard output.
    pub(crate) stdout: Vec<u8>,
    /// Why it failed, for logs and reports: exit status and the last line of stderr.
    pub(crate) failure: String,
    /// Killed at its deadline (then `success` is false).
    pub(crate) timed_out: bool,
}

/// Reads at most `limit` bytes of `from`, then drains the rest.
async fn read_bounded<R: AsyncRead + Unpin>(from: Option<R>, limit: usize) -> Vec<u8> {
    let Some(mut from) = from else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The last non-empty line of `stderr`, printable, bounded.
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(256)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Runs `cmd` with `extra` arguments appended and `env` added, killing it after `deadline`.
/// Fails only when it cannot be started; a non-zero exit is `Finished { success: false }`.
pub(crate) async fn run(
    what: &str,
    cmd: &CommandLine,
    extra: &[OsString],
    env: &[(&str, String)],
    deadline: Duration,
    stdout_limit: usize,
) -> Result<Finished, AgentError> {
    let mut command = tokio::process::Command::new(cmd.program());
    command
        .args(cmd.argv.iter().skip(1))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        AgentError::Misconfigured(format!(
            "cannot start the {what} command {:?}: {e}",
            cmd.program()
        ))
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let outcome = tokio::time::timeout(deadline, async {
        let (out, err, status) = tokio::join!(
            read_bounded(stdout, stdout_limit),
            read_bounded(stderr, MAX_COMMAND_OUTPUT),
            child.wait()
        );
        (out, err, status)
    })
    .await;
    match outcome {
        Err(_) => {
            let _ = child.kill().await;
            Ok(Finished {
                success: false,
                stdout: Vec::new(),
                failure: format!("the {what} command did not finish within {deadline:?}"),
                timed_out: true,
            })
        }
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|e| {
                AgentError::Misconfigured(format!("waiting for the {what} command: {e}"))
            })?;
            let line = last_line(&stderr);
            let failure = if status.success() {
                String::new()
            } else if line.is_empty() {
                format!("the {what} command failed ({status})")
            } else {
                format!("the {what} command failed ({status}): {line}")
            };
            Ok(Finished {
                success: status.success(),
                stdout,
                failure,
                timed_out: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_at_whitespace() -> Result<(), AgentError> {
        let c = CommandLine::parse("  /usr/bin/rauc   install ")?;
        assert_eq!(c.program(), "/usr/bin/rauc");
        assert_eq!(c.to_string(), "/usr/bin/rauc install");
        assert!(CommandLine::parse("   ").is_err());
        assert!(CommandLine::parse(&"x".repeat(MAX_COMMAND_LINE_LEN + 1)).is_err());
        Ok(())
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn commands_run_bounded_with_arguments_and_environment() -> Result<(), AgentError> {
        let sh = CommandLine::parse("sh -c")?;
        let ok = run(
            "test",
            &sh,
            &[
                "printf %s-%s \"$0\" \"$MOAT_OTA_VERSION\"".into(),
                "arg".into(),
            ],
            &[("MOAT_OTA_VERSION", "1.2".into())],
            Duration::from_secs(30),
            5,
        )
        .await?;
        assert!(ok.success);
        assert_eq!(ok.stdout, b"arg-1");
        let failed = run(
            "health",
            &sh,
            &["echo first >&2; echo 'last line' >&2; exit 3".into()],
            &[],
            Duration::from_secs(30),
            10,
        )
        .await?;
        assert!(!failed.success);
        assert!(failed.failure.contains("health") && failed.failure.ends_with("last line"));
        assert!(
            run(
                "x",
                &CommandLine::parse("/nonexistent/cmd")?,
                &[],
                &[],
                Duration::from_secs(5),
                1
            )
            .await
            .is_err()
        );
        Ok(())
    }
}
