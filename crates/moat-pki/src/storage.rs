//! Files: the only module of this crate that touches the file system.
//!
//! Secrets are created with mode 0600 by `open(2)` itself, so they are never readable by
//! anyone else, not even between creation and a later `chmod`; every write goes to a temporary
//! file in the same directory that is synced and then renamed (or linked) into place, so a
//! crash leaves either the old file or the new one, never half of one.
//!
//! Unix only: Moat runs on Linux, and the permission checks are the point.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{PkiError, random};

/// Mode of private key files.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public data, inside a 0700 directory anyway).
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of the CA directory when this crate creates it.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Largest CA file (certificate or key, PEM) we read; ours are under 1 KiB.
pub const MAX_CA_FILE_SIZE: u64 = 64 * 1024;

/// Writes `contents` to `path` with mode 0600, atomically replacing any existing file.
///
/// The data goes to a temporary file in the same directory, created with mode 0600 from the
/// start (never readable by others, even briefly), synced to disk and renamed over `path`;
/// the directory is synced afterwards so the rename survives a crash. On error the
/// temporary file is removed and `path` is untouched.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), io::Error> {
    write_atomically(path, contents, PRIVATE_FILE_MODE, Replace::Allow)
}

/// Whether an atomic write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    Allow,
    /// Fail with `AlreadyExists` instead: CA keys are never overwritten.
    Refuse,
}

pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: Replace,
) -> Result<(), io::Error> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let suffix = random::hex(8).map_err(io::Error::other)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{suffix}.tmp"));
    let tmp = dir.join(tmp_name);

    let result = write_new_file(&tmp, contents, mode).and_then(|()| match replace {
        Replace::Allow => fs::rename(&tmp, path),
        // link(2) fails if the target exists: an atomic create-or-fail. The temporary name
        // is removed below either way.
        Replace::Refuse => fs::hard_link(&tmp, path),
    });
    if result.is_err() || replace == Replace::Refuse {
        // Best effort: the temporary file is ours and holds nothing the target does not.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

/// Moves `from` to `to` in the same directory, failing with `AlreadyExists` rather than
/// replacing `to`: link(2), which is atomic create-or-fail, then unlink(2) of `from`. A crash
/// in between leaves the file under both names, never under neither.
pub(crate) fn move_refusing(from: &Path, to: &Path) -> Result<(), io::Error> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)?;
    File::open(parent_dir(to))?.sync_all()
}

/// Removes `path`; `Ok(false)` if it did not exist. Syncs the directory afterwards.
pub(crate) fn remove(path: &Path) -> Result<bool, io::Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(()) => {
            File::open(parent_dir(path))?.sync_all()?;
            Ok(true)
        }
    }
}

/// Whether something exists at `path` (a symbolic link counts, dangling or not).
pub(crate) fn exists(path: &Path) -> Result<bool, io::Error> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), io::Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have removed bits from `mode`; it can never have added any. Set the exact
    // mode so that an unusual umask cannot leave the file unreadable to its owner.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that an existing one cannot
/// be written by group or others (they could swap the CA certificates).
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE)))
            .map_err(|e| PkiError::io(dir, e)),
        Err(e) => Err(PkiError::io(dir, e)),
        Ok(meta) => {
            // A symlinked CA directory is a legitimate deployment choice (e.g. onto an
            // encrypted volume); judge the directory it points to.
            let meta = if meta.file_type().is_symlink() {
                fs::metadata(dir).map_err(|e| PkiError::io(dir, e))?
            } else {
                meta
            };
            if !meta.is_dir() {
                return Err(PkiError::Misconfigured(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(PkiError::InsecurePermissions {
                    path: dir.to_owned(),
                    mode,
                    required: PRIVATE_DIR_MODE,
                });
            }
            Ok(())
        }
    }
}

/// Heap bytes overwritten with zeros on drop: best effort to keep key material from
/// outliving its use (the allocator may still have copied it while growing the buffer).
pub(crate) struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keep the compiler from eliding the zeroing as a dead store before the free.
        std::hint::black_box(&self.0);
    }
}

/// Reads a CA private key file; `Ok(None)` if it does not exist.
///
/// Refuses symbolic links (a key must be the file the operator secured) and files that group
/// or others can access, naming the `chmod` that fixes it.
pub(crate) fn read_private_file(path: &Path) -> Result<Option<SecretBytes>, PkiError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PkiError::io(path, e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(PkiError::Misconfigured(format!(
                "{} is a symbolic link; a CA key must be a regular file",
                path.display()
            )));
        }
        Ok(_) => {}
    }
    let file = File::open(path).map_err(|e| PkiError::io(path, e))?;
    // Judge the file we actually opened, not whatever the path names by now.
    let meta = file.metadata().map_err(|e| PkiError::io(path, e))?;
    if !meta.is_file() {
        return Err(PkiError::Misconfigured(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions {
            path: path.to_owned(),
            mode,
            required: PRIVATE_FILE_MODE,
        });
    }
    let mut bytes = SecretBytes(Vec::with_capacity(4096));
    read_limited(file, &mut bytes.0, path)?;
    Ok(Some(bytes))
}

/// Reads a public CA file (a certificate); `Ok(None)` if it does not exist.
pub(crate) fn read_public_file(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PkiError::io(path, e)),
        Ok(f) => f,
    };
    let mut bytes = Vec::new();
    read_limited(file, &mut bytes, path)?;
    Ok(Some(bytes))
}

fn read_limited(file: File, buf: &mut Vec<u8>, path: &Path) -> Result<(), PkiError> {
    file.take(MAX_CA_FILE_SIZE + 1)
        .read_to_end(buf)
        .map_err(|e| PkiError::io(path, e))?;
    if buf.len() as u64 > MAX_CA_FILE_SIZE {
        return Err(PkiError::corrupt(
            path,
            format!("larger than the limit of {MAX_CA_FILE_SIZE} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusing_to_replace_keeps_the_existing_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!(
            "moat-pki-storage-{}-{}",
            std::process::id(),
            random::hex(8)?
        ));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("ca.key");
        write_atomically(&path, b"first", PRIVATE_FILE_MODE, Replace::Refuse)?;
        let err = write_atomically(&path, b"second", PRIVATE_FILE_MODE, Replace::Refuse)
            .expect_err("an existing file must not be replaced");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path)?, b"first");
        assert_eq!(fs::read_dir(&dir)?.count(), 1, "temporary file removed");
        let read = read_private_file(&path)?.expect("exists");
        assert_eq!(read.as_slice(), b"first");
        assert!(read_private_file(&dir.join("absent"))?.is_none());

        std::os::unix::fs::symlink(&path, dir.join("link.key"))?;
        assert!(matches!(
            read_private_file(&dir.join("link.key")),
            Err(PkiError::Misconfigured(_))
        ));
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
