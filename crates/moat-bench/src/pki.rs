//! Certificates for the mutual-TLS scenarios: one CA per broker, one certificate per device.
//!
//! Moat issues its own with `moat device add`; Mosquitto gets an ECDSA P-256 CA, server
//! certificate (for `localhost` and `127.0.0.1`) and device certificates (CN = device id)
//! made with the openssl command line. Either way the client ends up with the same files:
//! a CA to trust, and per device a certificate chain and a key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temporary directory, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

/// The scratch directories to remove that still exist. A signal that ends the harness runs
/// no `Drop`, so [`remove_scratch_dirs`] removes these.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every scratch directory not yet dropped (those not kept); for the harness's
/// signal handler, after the brokers that use them are stopped.
pub fn remove_scratch_dirs() {
    for path in live().drain(..) {
        let _ = std::fs::remove_dir_all(path);
    }
}

impl ScratchDir {
    /// Creates `$TMPDIR/moat-bench-PID-NAME`.
    pub fn new(name: &str, keep: bool) -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("moat-bench-{}-{name}", std::process::id()));
        Self::at(path, keep)
    }

    fn at(path: PathBuf, keep: bool) -> Result<Self, String> {
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !keep {
            live().push(path.clone());
        }
        Ok(Self { path, keep })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            live().retain(|p| *p != self.path);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One device's credentials, as PEM files.
#[derive(Clone, Debug)]
pub struct DeviceCredentials {
    /// Device id, also the MQTT client id.
    pub id: String,
    /// Certificate chain, leaf first.
    pub chain: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// What a client needs to talk mutual TLS to one broker.
#[derive(Clone, Debug, Default)]
pub struct ClientPki {
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// Device credentials, in id order.
    pub devices: Vec<DeviceCredentials>,
}

/// The id of device `index` (the same on both brokers).
pub fn device_id(index: usize) -> String {
    format!("bench-dev-{index:05}")
}

/// Server-side files of the Mosquitto CA.
#[derive(Clone, Debug)]
pub struct MosquittoServerPki {
    /// CA certificate (`cafile`).
    pub ca: PathBuf,
    /// Server certificate (`certfile`).
    pub cert: PathBuf,
    /// Server key (`keyfile`).
    pub key: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

/// Makes a CA, a server certificate and `devices` device certificates in `dir` with the
/// openssl command line (ECDSA P-256, valid for two days).
pub fn mosquitto_pki(
    dir: &Path,
    devices: usize,
) -> Result<(MosquittoServerPki, ClientPki), String> {
    let config = dir.join("openssl.cnf");
    std::fs::write(&config, OPENSSL_CONFIG).map_err(|e| format!("{}: {e}", config.display()))?;
    let ca = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    openssl_cert(&config, "ca_ext", "bench-ca", &ca, &ca_key, None)?;
    let server = MosquittoServerPki {
        ca: ca.clone(),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    openssl_cert(
        &config,
        "server_ext",
        "localhost",
        &server.cert,
        &server.key,
        Some((&ca, &ca_key)),
    )?;
    let credentials: Vec<DeviceCredentials> = (0..devices)
        .map(|i| {
            let id = device_id(i);
            DeviceCredentials {
                chain: dir.join(format!("{id}.crt")),
                key: dir.join(format!("{id}.key")),
                id,
            }
        })
        .collect();
    in_parallel(&credentials, |device| {
        openssl_cert(
            &config,
            "client_ext",
            &device.id,
            &device.chain,
            &device.key,
            Some((&ca, &ca_key)),
        )
    })?;
    Ok((
        server,
        ClientPki {
            ca,
            devices: credentials,
        },
    ))
}

/// Has Moat issue `devices` device certificates from the CA in `data_dir` into `out`.
pub fn moat_pki(
    moat: &Path,
    data_dir: &Path,
    out: &Path,
    devices: usize,
) -> Result<ClientPki, String> {
    let credentials: Vec<DeviceCredentials> = (0..devices)
        .map(|i| {
            let id = device_id(i);
            DeviceCredentials {
                chain: out.join(format!("{id}.crt")),
                key: out.join(format!("{id}.key")),
                id,
            }
        })
        .collect();
    // In parallel: each `device add` only reads the CA from the data directory (the first
    // `serve` created it) and writes its own files, and each costs tens of milliseconds.
    in_parallel(&credentials, |device| {
        run(Command::new(moat)
            .args(["device", "add", &device.id, "--data-dir"])
            .arg(data_dir)
            .arg("--out")
            .arg(out))
    })?;
    Ok(ClientPki {
        ca: out.join("ca.crt"),
        devices: credentials,
    })
}

fn openssl_cert(
    config: &Path,
    extensions: &str,
    common_name: &str,
    cert: &Path,
    key: &Path,
    issuer: Option<(&Path, &Path)>,
) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command
        .args(["req", "-x509", "-config"])
        .arg(config)
        .args(["-extensions", extensions])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj"])
        .arg(format!("/CN={common_name}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert);
    if let Some((ca, ca_key)) = issuer {
        command.arg("-CA").arg(ca).arg("-CAkey").arg(ca_key);
    }
    run(&mut command)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `job` over `items` on as many threads as there are cores.
fn in_parallel<T: Sync>(
    items: &[T],
    job: impl Fn(&T) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = job(item) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a signal handler removes: the scratch directories still in use, not one already
    /// dropped (and removed), not one kept on request.
    #[test]
    fn a_signal_removes_the_scratch_directories_in_use_but_not_the_kept_ones() {
        let base = std::env::temp_dir().join(format!("moat-bench-test-{}", std::process::id()));
        let in_use = ScratchDir::at(base.join("in-use"), false).expect("create");
        let kept = ScratchDir::at(base.join("kept"), true).expect("create");
        let dropped = ScratchDir::at(base.join("dropped"), false).expect("create");
        std::fs::write(in_use.path().join("file"), b"x").expect("write");
        drop(dropped);
        assert!(!base.join("dropped").exists());
        assert!(!live().contains(&base.join("dropped")));

        remove_scratch_dirs();
        assert!(!in_use.path().exists(), "removed while still in use");
        assert!(kept.path().exists(), "kept on request");
        std::mem::forget(in_use);
        std::mem::forget(kept);
        std::fs::remove_dir_all(&base).expect("clean up");
    }
}
