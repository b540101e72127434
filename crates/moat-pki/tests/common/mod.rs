//! Helpers shared by the API tests that drive the OpenSSL command line.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use moat_pki::{CertificateAuthority, DeviceId};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use time::OffsetDateTime;

pub type TestResult = Result<(), Box<dyn Error>>;

/// A unique directory under the system temp dir, created with mode 0700 and removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self, Box<dyn Error>> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let path = std::env::temp_dir().join(format!(
            "moat-pki-{name}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).expect("valid device id")
}

/// A fresh CA in its own directory (kept alive by the returned guard).
pub fn new_ca(name: &str) -> Result<(CertificateAuthority, TempDir), Box<dyn Error>> {
    let dir = TempDir::new(name)?;
    let (ca, _) = CertificateAuthority::load_or_create(&dir.join("pki"), now())?;
    Ok((ca, dir))
}

/// Whether the `openssl` command runs; prints why a test is skipped if not.
pub fn openssl_available(test: &str) -> bool {
    let available = Command::new("openssl").arg("version").output().is_ok();
    if !available {
        println!("{test} skipped: the openssl command is not installed");
    }
    available
}

/// Runs `openssl args` in `dir`; its stdout and stderr, or an error with both.
pub fn openssl(args: &[&str], dir: &Path) -> Result<String, Box<dyn Error>> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("openssl {args:?} failed: {output}").into());
    }
    Ok(output)
}

/// A PKCS#10 request in DER made by `openssl req` with a new key (`-newkey` and its
/// options in `key`) written to `{name}.key`, subject `/CN={cn}` and `extensions` as
/// `-addext` values.
pub fn openssl_csr(
    dir: &Path,
    name: &str,
    key: &[&str],
    cn: &str,
    extensions: &[&str],
) -> Result<Vec<u8>, Box<dyn Error>> {
    let key_file = format!("{name}.key");
    let csr_file = format!("{name}.csr.der");
    let subject = format!("/CN={cn}");
    let mut args = vec![
        "req", "-new", "-nodes", "-keyout", &key_file, "-subj", &subject,
    ];
    args.extend(key);
    for ext in extensions {
        args.extend(["-addext", ext]);
    }
    args.extend(["-outform", "DER", "-out", &csr_file]);
    openssl(&args, dir)?;
    Ok(fs::read(dir.join(csr_file))?)
}

/// `-newkey` options for the key types the tests use.
pub const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
pub const P384: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];
pub const ED25519: &[&str] = &["-newkey", "ed25519"];
pub const RSA2048: &[&str] = &["-newkey", "rsa:2048"];
pub const RSA1024: &[&str] = &["-newkey", "rsa:1024"];

/// `t` as rustls' clock reading.
pub fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).expect("after 1970"),
    ))
}

/// The crypto provider the hub uses (crates/moat-net/src/tls.rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The hub's client certificate verifier: WebPKI over aws-lc-rs with `anchors` as trust
/// anchors and, if any are given, `crls` checked for end-entity certificates.
pub fn client_verifier(
    anchors: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, Box<dyn Error>> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor.clone())?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if crls.is_empty() {
        builder
    } else {
        builder.with_crls(crls).only_check_end_entity_revocation()
    };
    Ok(builder.build()?)
}

/// `openssl verify` of the leaf in `leaf` against the root in `root`, with the intermediates
/// in `untrusted` and the CRLs in `crls` (then with `-crl_check`), for `purpose`.
pub fn openssl_verify(
    dir: &Path,
    root: &str,
    untrusted: &str,
    crls: &[&str],
    purpose: &str,
    leaf: &str,
) -> Result<String, Box<dyn Error>> {
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-CAfile",
        root,
        "-untrusted",
        untrusted,
        "-purpose",
        purpose,
    ];
    if !crls.is_empty() {
        args.push("-crl_check");
    }
    for crl in crls {
        args.extend(["-CRLfile", crl]);
    }
    args.push(leaf);
    let out = openssl(&args, dir)?;
    if !out.contains(&format!("{leaf}: OK")) {
        return Err(format!("openssl verify {leaf}: {out}").into());
    }
    Ok(out)
}

/// The file mode bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
}
