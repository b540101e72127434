//! rustls configuration: TLS 1.3 and 1.2, aws-lc-rs, client certificates required.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Most client certificate chains a TLS configuration remembers as verified (about 100 bytes
/// each, so at most about 6.5 MiB). Beyond it the oldest is forgotten, and verified again at
/// its next handshake.
pub const MAX_REMEMBERED_CHAINS: usize = 65_536;

/// The hub's live checks on a client certificate whose chain already verified: revocation
/// and the device's standing. Consulted on every handshake, so a change applies to the next
/// handshake without rebuilding the TLS configuration.
pub trait ClientCertCheck: Send + Sync + fmt::Debug {
    /// Accepts the verified `leaf`, or says why not (`Revoked` for a revoked certificate or a
    /// disabled device).
    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), CertificateError>;
    /// Told about every refused certificate (by the chain verifier or by
    /// [`check`](Self::check)), for the audit trail. Must not block.
    fn rejected(&self, _leaf: &CertificateDer<'_>, _error: &rustls::Error) {}
}

/// Accepts every certificate whose chain verifies.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl ClientCertCheck for AcceptAll {
    fn check(&self, _: &CertificateDer<'_>) -> Result<(), CertificateError> {
        Ok(())
    }
}

/// rustls' WebPKI verifier followed by the hub's [`ClientCertCheck`].
///
/// A chain that verified is remembered ([`VerifiedChains`]), so a device that reconnects
/// with the same certificate skips the chain's signature check. What still runs on every
/// handshake: the check of the validity period, the hub's [`ClientCertCheck`] (revocation and
/// the device's standing), and in rustls the device's proof that it holds the key
/// (CertificateVerify).
#[derive(Debug)]
struct CheckedVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    check: Arc<dyn ClientCertCheck>,
    verified: VerifiedChains,
}

impl CheckedVerifier {
    fn new(
        chain: Arc<dyn ClientCertVerifier>,
        check: Arc<dyn ClientCertCheck>,
        capacity: usize,
    ) -> Self {
        Self {
            chain,
            check,
            verified: VerifiedChains::new(capacity),
        }
    }

    /// The chain verifier's verdict, from memory when this exact chain verified before and
    /// `now` is inside the validity period of every certificate in it.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = VerifiedChains::key(end_entity, intermediates);
        if self.verified.holds(&key, now) {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(window) = Window::of(end_entity, intermediates) {
            self.verified.remember(key, window);
        }
        Ok(verified)
    }
}

/// Client certificate chains that verified against one configuration's trust anchors, by
/// the SHA-256 of the chain as presented, with the period in which all its certificates are
/// valid.
///
/// Sound because nothing else the chain verifier decides changes with time: it has the same
/// trust anchors for its whole life (a change of trust builds a new configuration, and so an
/// empty memory) and no revocation lists (the hub's [`ClientCertCheck`] handles revocation,
/// on every handshake). Only successes are remembered, at most `capacity` of them, oldest
/// forgotten first.
struct VerifiedChains {
    capacity: usize,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    windows: HashMap<[u8; 32], Window>,
    order: VecDeque<[u8; 32]>,
}

impl fmt::Debug for VerifiedChains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedChains")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifiedChains {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            memory: Mutex::new(Memory::default()),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The SHA-256 of the chain: each certificate's length (8 bytes, big-endian), then its
    /// DER, leaf first, so that no two different chains hash the same bytes.
    fn key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for cert in std::iter::once(end_entity).chain(intermediates) {
            digest.update(&(cert.len() as u64).to_be_bytes());
            digest.update(cert.as_ref());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.finish().as_ref());
        key
    }

    fn holds(&self, key: &[u8; 32], now: UnixTime) -> bool {
        self.memory()
            .windows
            .get(key)
            .is_some_and(|window| window.contains(now))
    }

    fn remember(&self, key: [u8; 32], window: Window) {
        if self.capacity == 0 {
            return;
        }
        let mut memory = self.memory();
        if memory.windows.insert(key, window).is_some() {
            return;
        }
        memory.order.push_back(key);
        while memory.order.len() > self.capacity {
            if let Some(oldest) = memory.order.pop_front() {
                memory.windows.remove(&oldest);
            }
        }
    }
}

/// When every certificate of a chain is valid: from the latest `notBefore` to the earliest
/// `notAfter`, in Unix seconds, both included (as WebPKI checks them).
#[derive(Clone, Copy, Debug)]
struct Window {
    from: i64,
    until: i64,
}

impl Window {
    /// `None` if a certificate's validity cannot be read (then the chain is not remembered).
    fn of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Option<Self> {
        let mut window = Self {
            from: i64::MIN,
            until: i64::MAX,
        };
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let (not_before, not_after) = moat_pki::certificate_validity(cert).ok()?;
            window.from = window.from.max(not_before);
            window.until = window.until.min(not_after);
        }
        Some(window)
    }

    fn contains(&self, now: UnixTime) -> bool {
        i64::try_from(now.as_secs()).is_ok_and(|now| self.from <= now && now <= self.until)
    }
}

impl ClientCertVerifier for CheckedVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .verify_chain(end_entity, intermediates, now)
            .and_then(|v| {
                self.check
                    .check(end_entity)
                    .map(|()| v)
                    .map_err(rustls::Error::InvalidCertificate)
            });
        if let Err(e) = &verified {
            self.check.rejected(end_entity, e);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A trust anchor could not be parsed.
    #[error("client CA certificate rejected: {0}")]
    TrustAnchor(rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// The server certificate or key was rejected.
    #[error("server certificate or key rejected: {0}")]
    ServerIdentity(rustls::Error),
}

/// Builds the server configuration: the hub presents `chain` (leaf first) with `key`, and
/// requires a client certificate chaining to one of `client_roots` that `check` accepts.
/// `alpn` lists the protocols offered (empty for raw MQTT, `http/1.1` for WebSocket).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
    check: Arc<dyn ClientCertCheck>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = checked_config(
        Arc::new(provider()),
        chain,
        key,
        client_roots,
        check,
        ClientAuth::Required,
    )?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The hub's suite order, not the client's: AES-128-GCM with SHA-256 first (the same
    // 128-bit security level as the P-256 keys, and a cheaper key schedule than SHA-384).
    config.ignore_client_order = true;
    // No TLS 1.3 tickets: the in-memory session cache holds 256 entries, useless for a fleet,
    // and writing two tickets per handshake cost CPU for nothing. Fleet-scale resumption
    // (stateless tickets) is future work.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Whether a client certificate must be presented.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Required,
    Optional,
}

/// TLS 1.3 and 1.2 with `chain`/`key`, client certificates verified against `client_roots`
/// and then by `check`.
fn checked_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
    check: Arc<dyn ClientCertCheck>,
    auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for root in client_roots {
        roots.add(root.clone()).map_err(TlsError::TrustAnchor)?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(CheckedVerifier::new(verifier, check, MAX_REMEMBERED_CHAINS));
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::ServerIdentity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerIdentity)
}

/// aws-lc-rs with the hub's cipher suite preference. Key exchange groups keep the
/// provider's default order (post-quantum hybrid first when the client offers it).
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Server configuration for the HTTPS API: operators authenticate with tokens, so a client
/// certificate is optional; one that is presented must chain to `client_roots` and pass
/// `check` (EST renewal relies on it).
pub fn server_config_optional_client_auth(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
    check: Arc<dyn ClientCertCheck>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = checked_config(
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        chain,
        key,
        client_roots,
        check,
        ClientAuth::Optional,
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Server configuration without client authentication.
pub fn server_config_no_client_auth(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::ServerIdentity)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerIdentity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_pki::{CertificateAuthority, DeviceId};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    use time::OffsetDateTime;

    /// The chain verifier, counting how often it is asked.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// The hub's check stand-in: counts its calls, and refuses every certificate once
    /// `revoked` is set.
    #[derive(Debug, Default)]
    struct Revocable {
        calls: AtomicUsize,
        revoked: AtomicBool,
    }

    impl ClientCertCheck for Revocable {
        fn check(&self, _: &CertificateDer<'_>) -> Result<(), CertificateError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.revoked.load(Ordering::Relaxed) {
                Err(CertificateError::Revoked)
            } else {
                Ok(())
            }
        }
    }

    struct Fixture {
        ca: CertificateAuthority,
        chain: Arc<Counting>,
        check: Arc<Revocable>,
        verifier: CheckedVerifier,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fixture(name: &str, capacity: usize) -> Fixture {
        let dir = std::env::temp_dir().join(format!("moat-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, _) =
            CertificateAuthority::load_or_create(&dir, OffsetDateTime::now_utc()).expect("a CA");
        let provider = Arc::new(provider());
        let mut roots = RootCertStore::empty();
        for anchor in ca.trusted_issuing_certs() {
            roots.add(anchor).expect("anchor");
        }
        roots.add(ca.root_cert_der()).expect("anchor");
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let chain = Arc::new(Counting {
            inner,
            calls: AtomicUsize::new(0),
        });
        let check = Arc::new(Revocable::default());
        let verifier = CheckedVerifier::new(chain.clone(), check.clone(), capacity);
        Fixture {
            ca,
            chain,
            check,
            verifier,
            _dir: TempDir(dir),
        }
    }

    /// A device certificate chain as a device presents it: leaf, then the issuing CA.
    fn device_chain(ca: &CertificateAuthority, id: &str) -> Vec<CertificateDer<'static>> {
        let id = DeviceId::parse(id).expect("device id");
        ca.issue_device_certificate(&id, Duration::from_secs(3600), OffsetDateTime::now_utc())
            .expect("issued")
            .certificate
            .chain
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(t.unix_timestamp()).expect("after 1970"),
        ))
    }

    fn verify(f: &Fixture, chain: &[CertificateDer<'static>], now: UnixTime) -> bool {
        f.verifier
            .verify_client_cert(&chain[0], &chain[1..], now)
            .is_ok()
    }

    fn calls(f: &Fixture) -> (usize, usize) {
        (
            f.chain.calls.load(Ordering::Relaxed),
            f.check.calls.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_chain_that_verified_is_not_verified_again_but_still_checked() {
        let f = fixture("memo-hit", 16);
        let chain = device_chain(&f.ca, "d1");
        let now = UnixTime::now();
        assert!(verify(&f, &chain, now));
        assert!(verify(&f, &chain, now));
        assert!(verify(&f, &chain, now));
        assert_eq!(calls(&f), (1, 3), "(chain verifications, hub checks)");

        // Revocation applies at the next handshake, remembered chain or not.
        f.check.revoked.store(true, Ordering::Relaxed);
        let refused = f.verifier.verify_client_cert(&chain[0], &chain[1..], now);
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{refused:?}"
        );

        // Another chain, even of the same device, is verified on its own.
        f.check.revoked.store(false, Ordering::Relaxed);
        let renewed = device_chain(&f.ca, "d1");
        assert!(verify(&f, &renewed, now));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 2);
        // The same leaf presented without its issuing CA is a different chain.
        assert!(verify(&f, &chain[..1], now));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_remembered_chain_outside_its_validity_is_verified_again_and_refused() {
        let f = fixture("memo-expiry", 16);
        let issued_at = OffsetDateTime::now_utc();
        let chain = device_chain(&f.ca, "d1");
        assert!(verify(&f, &chain, at(issued_at)));
        let expired = at(issued_at + Duration::from_secs(2 * 3600));
        let refused = f
            .verifier
            .verify_client_cert(&chain[0], &chain[1..], expired);
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                ))
            ),
            "{refused:?}"
        );
        let early = at(issued_at - Duration::from_secs(2 * 3600));
        assert!(!verify(&f, &chain, early), "not valid yet");
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 3);
        // Still remembered for the period in which it is valid.
        assert!(verify(&f, &chain, at(issued_at)));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_refused_chain_is_not_remembered() {
        let f = fixture("memo-refused", 16);
        let other = fixture("memo-refused-other", 16);
        // Issued by a CA this verifier does not trust.
        let foreign = device_chain(&other.ca, "d1");
        let now = UnixTime::now();
        assert!(!verify(&f, &foreign, now));
        assert!(!verify(&f, &foreign, now));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 2);
        assert_eq!(
            f.check.calls.load(Ordering::Relaxed),
            0,
            "the hub's check runs only after the chain verified"
        );
    }

    #[test]
    fn the_memory_holds_at_most_its_capacity_and_forgets_the_oldest() {
        let f = fixture("memo-capacity", 2);
        let now = UnixTime::now();
        let chains: Vec<_> = ["d1", "d2", "d3"]
            .iter()
            .map(|id| device_chain(&f.ca, id))
            .collect();
        for chain in &chains {
            assert!(verify(&f, chain, now));
        }
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 3);
        assert_eq!(f.verifier.verified.memory().windows.len(), 2);
        assert_eq!(f.verifier.verified.memory().order.len(), 2);
        // d2 and d3 are remembered; d1, the oldest, was forgotten.
        assert!(verify(&f, &chains[2], now));
        assert!(verify(&f, &chains[1], now));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 3);
        assert!(verify(&f, &chains[0], now));
        assert_eq!(f.chain.calls.load(Ordering::Relaxed), 4);
        assert_eq!(f.verifier.verified.memory().windows.len(), 2);
    }

    #[test]
    fn chain_keys_separate_the_certificates() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![4u8]);
        let ab = CertificateDer::from(vec![1u8, 2, 3, 4]);
        assert_ne!(
            VerifiedChains::key(&a, std::slice::from_ref(&b)),
            VerifiedChains::key(&ab, &[])
        );
        assert_ne!(
            VerifiedChains::key(&a, std::slice::from_ref(&b)),
            VerifiedChains::key(&b, std::slice::from_ref(&a))
        );
        assert_eq!(
            VerifiedChains::key(&a, std::slice::from_ref(&b)),
            VerifiedChains::key(
                &CertificateDer::from(vec![1u8, 2, 3]),
                &[CertificateDer::from(vec![4u8])]
            )
        );
    }
}
