//! Downloading an approved image: streamed through [`TargetCheck`] (length and SHA-256, never
//! more than the signed length), written to `IMAGES/{sha256}.part` (mode 0600) and renamed to
//! `IMAGES/{sha256}.image` once it verified.
//!
//! ```text
//!  .part on disk? --yes--> re-hash it (more than signed: delete) --> GET with Range: bytes=N-
//!        |no                                                            |
//!        +-------------------------> GET (whole) -----------------------+
//!   206 with Content-Range N-.../LENGTH: append  |  200: start over  |  416: delete, fail
//!   body ends early or breaks: keep the .part (the next attempt resumes)
//!   longer than signed, or wrong hash: delete the .part, refuse
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use hyper::header;
use moat_ota::{ApprovedUpdate, TargetCheck, TargetError, VerifiedImage};

use crate::AgentError;
use crate::https::HubClient;

/// Attempts per update cycle for a download that keeps breaking off (each resumes where the
/// last stopped): 4.
pub const MAX_DOWNLOAD_ATTEMPTS: u32 = 4;
/// Pause before the first retry of a broken download, doubled per retry: 2 s.
pub const DOWNLOAD_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Progress is reported at every this many percent: 25.
pub const PROGRESS_STEP: u8 = 25;

/// How a download attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The bytes are not the signed image (longer, or another hash): the partial file is
    /// deleted and the update refused.
    Refused(TargetError),
    /// The connection broke, the hub answered with an error, or the disk failed: the partial
    /// file (if sound) is kept for the next attempt.
    Retry(AgentError),
}

/// A verified image on disk: made only from a passed `TargetCheck`.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub(crate) image: VerifiedImage,
    pub(crate) path: PathBuf,
}

fn part_path(dir: &Path, update: &ApprovedUpdate) -> PathBuf {
    dir.join(format!("{}.part", update.sha256_hex()))
}

/// Where the verified image of `update` is kept.
pub(crate) fn image_path(dir: &Path, update: &ApprovedUpdate) -> PathBuf {
    dir.join(format!("{}.image", update.sha256_hex()))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Retry(AgentError::io(path)(e))
}

/// Feeds the first bytes of `path` (at most the signed length; more is refused) into a check.
fn rehash(path: &Path, check: &mut TargetCheck) -> Result<(), Failure> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(());
        }
        check.update(&buf[..n]).map_err(Failure::Refused)?;
    }
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "cannot delete");
        }
        _ => {}
    }
}

/// Deletes partial and verified images other than `keep` in `dir`.
pub(crate) fn remove_other_images(dir: &Path, keep: Option<&str>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_image = name.ends_with(".part") || name.ends_with(".image");
        if is_image && keep.is_none_or(|k| !name.starts_with(k)) {
            remove(&entry.path());
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` of a 206 answer, as (START, TOTAL).
fn content_range(headers: &hyper::HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.parse().ok()?, total))
}

/// One download attempt; `progress` gets the percentage at each [`PROGRESS_STEP`].
pub(crate) async fn attempt(
    client: &HubClient,
    update: &ApprovedUpdate,
    dir: &Path,
    progress: &mut dyn FnMut(u8),
) -> Result<Downloaded, Failure> {
    let done = image_path(dir, update);
    let part = part_path(dir, update);
    // A verified image from an earlier cycle is checked again (the disk is not trusted more
    // than the network), then used.
    if done.exists() {
        let mut check = TargetCheck::new(update);
        let verified = rehash(&done, &mut check).and_then(|()| {
            check
                .finish()
                .map_err(|e| Failure::Retry(AgentError::Misconfigured(e.to_string())))
        });
        match verified {
            Ok(image) => return Ok(Downloaded { image, path: done }),
            Err(_) => remove(&done),
        }
    }

    let mut check = TargetCheck::new(update);
    // More on disk than the signed length, or unreadable: start over.
    if part.exists()
        && let Err(e) = rehash(&part, &mut check)
    {
        remove(&part);
        check = TargetCheck::new(update);
        if let Failure::Retry(e) = e {
            tracing::warn!(error = %e, "discarding the partial download");
        }
    }
    if check.remaining() == 0 {
        // Complete on disk: use it if it is the image, otherwise start over.
        match finish(check.clone(), &part, &done) {
            Ok(downloaded) => return Ok(downloaded),
            Err(_) => check = TargetCheck::new(update),
        }
    }

    let from = check.received();
    let url = update.url();
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut response = client
        .get(
            &path,
            (from > 0).then_some(from),
            check.remaining().saturating_add(1),
        )
        .await
        .map_err(Failure::Retry)?;
    let append = match response.status {
        StatusCode::PARTIAL_CONTENT if from > 0 => match content_range(&response.headers) {
            Some((start, total)) if start == from && total.is_none_or(|t| t == update.length()) => {
                true
            }
            other => {
                remove(&part);
                return Err(Failure::Retry(AgentError::Malformed {
                    operation: "image download",
                    reason: format!("Content-Range {other:?} does not continue at byte {from}"),
                }));
            }
        },
        StatusCode::OK => false,
        StatusCode::RANGE_NOT_SATISFIABLE => {
            remove(&part);
            return Err(Failure::Retry(AgentError::Malformed {
                operation: "image download",
                reason: format!("the hub cannot resume at byte {from}; starting over"),
            }));
        }
        status => {
            return Err(Failure::Retry(AgentError::Refused {
                operation: "image download",
                status: status.as_u16(),
                message: format!("GET {path}"),
            }));
        }
    };
    if !append {
        check = TargetCheck::new(update);
    }
    let mut options = OpenOptions::new();
    options.create(true).write(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&part).map_err(io(&part))?;

    let length = update.length().max(1);
    let percent =
        |received: u64| u8::try_from(received.saturating_mul(100) / length).unwrap_or(100);
    let mut reported = percent(check.received()) / PROGRESS_STEP * PROGRESS_STEP;
    let ended = loop {
        let chunk = match response.chunk().await {
            None => break Ok(()),
            Some(Ok(chunk)) => chunk,
            Some(Err(AgentError::LimitExceeded { .. })) => {
                break Err(Failure::Refused(TargetError::TooLong {
                    length: update.length(),
                }));
            }
            Some(Err(e)) => break Err(Failure::Retry(e)),
        };
        if let Err(e) = check.update(&chunk) {
            break Err(Failure::Refused(e));
        }
        if let Err(e) = file.write_all(&chunk) {
            break Err(io(&part)(e));
        }
        let now = percent(check.received()) / PROGRESS_STEP * PROGRESS_STEP;
        if now > reported && now < 100 {
            reported = now;
            progress(now);
        }
    };
    // Keep what arrived for the next attempt (or delete it below, if refused).
    let synced = file.sync_data().map_err(io(&part));
    drop(file);
    match ended {
        Err(Failure::Refused(e)) => {
            remove(&part);
            Err(Failure::Refused(e))
        }
        Err(e) => Err(e),
        Ok(()) => {
            synced?;
            if check.remaining() > 0 {
                return Err(Failure::Retry(AgentError::Unreachable {
                    url: client.url().to_string(),
                    reason: format!(
                        "the image download ended after {} of {} bytes",
                        check.received(),
                        update.length()
                    ),
                }));
            }
            finish(check, &part, &done)
        }
    }
}

fn finish(check: TargetCheck, part: &Path, done: &Path) -> Result<Downloaded, Failure> {
    match check.finish() {
        Ok(image) => {
            fs::rename(part, done).map_err(io(done))?;
            Ok(Downloaded {
                image,
                path: done.to_owned(),
            })
        }
        Err(e) => {
            remove(part);
            Err(Failure::Refused(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(content_range(&h), None);
        h.insert(
            header::CONTENT_RANGE,
            "bytes 100-199/200".parse().expect("header"),
        );
        assert_eq!(content_range(&h), Some((100, Some(200))));
        h.insert(
            header::CONTENT_RANGE,
            "bytes 5-9/*".parse().expect("header"),
        );
        assert_eq!(content_range(&h), Some((5, None)));
        h.insert(
            header::CONTENT_RANGE,
            "items 5-9/10".parse().expect("header"),
        );
        assert_eq!(content_range(&h), None);
    }
}
