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

/// Most chains waiting, between a client's Certificate and its CertificateVerify, to be
/// remembered once the client has proved it holds the key (oldest dropped first: a dropped
/// chain is only not remembered).
const MAX_PENDING_CHAINS: usize = 1024;

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
/// A chain that verified, passed the hub's check and whose client then proved it holds the
/// key is remembered ([`VerifiedChains`]), so a device that reconnects with the same
/// certificate skips the chain's signature check. What still runs on every handshake: the
/// check of the validity period, the hub's [`ClientCertCheck`] (revocation and the device's
/// standing), and the device's proof that it holds the key (CertificateVerify).
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

    /// The chain verifier's verdict, from memory when this exact chain was remembered and
    /// `now` is inside the validity period of every certificate in it. Otherwise a chain that
    /// verifies and passes the hub's check becomes a candidate, remembered only once its
    /// client's signature verifies ([`Self::proved`]): a chain alone is public (TLS 1.2 sends
    /// it in the clear), and anyone could otherwise fill the memory with one chain padded
    /// with ever different extra certificates.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = VerifiedChains::key(end_entity, intermediates);
        let remembered = self.verified.holds(&key, now);
        let verified = if remembered {
            ClientCertVerified::assertion()
        } else {
            self.chain
                .verify_client_cert(end_entity, intermediates, now)?
        };
        self.check
            .check(end_entity)
            .map_err(rustls::Error::InvalidCertificate)?;
        if !remembered && let Some(window) = Window::of(end_entity, intermediates) {
            self.verified.propose(end_entity, key, window);
        }
        Ok(verified)
    }

    /// Passes on the verdict on a client's signature, and on success remembers the chain
    /// that `cert` was presented in, if it is a candidate.
    fn proved(
        &self,
        cert: &CertificateDer<'_>,
        verdict: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if verdict.is_ok() {
            self.verified.confirm(cert);
        }
        verdict
    }
}

/// Client certificate chains that verified against one configuration's trust anchors, by
/// the SHA-256 of the chain as presented, with the period in which all its certificates are
/// valid.
///
/// Sound because nothing else the chain verifier decides changes with time: it has the same
/// trust anchors for its whole life (a change of trust builds a new configuration, and so an
/// empty memory) and no revocation lists (the hub's [`ClientCertCheck`] handles revocation,
/// on every handshake). Only chains whose client proved it holds the leaf's key are
/// remembered, at most `capacity` of them, oldest forgotten first.
struct VerifiedChains {
    /// Remembered chains.
    memory: Mutex<Fifo<Window>>,
    /// Candidates, by the SHA-256 of their leaf: the chain's key and window.
    pending: Mutex<Fifo<([u8; 32], Window)>>,
}

impl fmt::Debug for VerifiedChains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedChains").finish_non_exhaustive()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VerifiedChains {
    fn new(capacity: usize) -> Self {
        Self {
            memory: Mutex::new(Fifo::new(capacity)),
            pending: Mutex::new(Fifo::new(MAX_PENDING_CHAINS.min(capacity))),
        }
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

    /// The SHA-256 of one certificate: how a candidate is found again from the leaf alone.
    fn leaf(end_entity: &CertificateDer<'_>) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    fn holds(&self, key: &[u8; 32], now: UnixTime) -> bool {
        locked(&self.memory)
            .get(key)
            .is_some_and(|window| window.contains(now))
    }

    /// Makes the chain `key` a candidate until its client's signature verifies.
    fn propose(&self, end_entity: &CertificateDer<'_>, key: [u8; 32], window: Window) {
        locked(&self.pending).insert(Self::leaf(end_entity), (key, window));
    }

    /// Remembers the candidate chain whose leaf is `end_entity`, if there is one.
    fn confirm(&self, end_entity: &CertificateDer<'_>) {
        let candidate = locked(&self.pending).take(&Self::leaf(end_entity));
        if let Some((key, window)) = candidate {
            locked(&self.memory).insert(key, window);
        }
    }
}

/// A map of at most `capacity` entries that forgets the oldest first.
struct Fifo<V> {
    capacity: usize,
    entries: HashMap<[u8; 32], V>,
    order: VecDeque<[u8; 32]>,
}

impl<V> Fifo<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<&V> {
        self.entries.get(key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts or replaces; a new key counts as the newest.
    fn insert(&mut self, key: [u8; 32], value: V) {
        if self.capacity == 0 || self.entries.insert(key, value).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Removes and returns. (Its place in the order stays until it comes first; a key taken
    /// and inserted again may so be forgotten early, never late.)
    fn take(&mut self, key: &[u8; 32]) -> Option<V> {
        self.entries.remove(key)
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
        let verified = self.verify_chain(end_entity, intermediates, now);
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
        self.proved(cert, self.chain.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(cert, self.chain.verify_tls13_signature(message, cert, dss))
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
    use moat_pki::{CertificateAuthority, CertifiedKey, DeviceId};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
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

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Fixture {
        ca: CertificateAuthority,
        chain: Arc<Counting>,
        check: Arc<Revocable>,
        verifier: Arc<CheckedVerifier>,
        server: Arc<ServerConfig>,
        _dir: TempDir,
    }

    fn fixture(name: &str, capacity: usize) -> Fixture {
        let dir = std::env::temp_dir().join(format!("moat-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = OffsetDateTime::now_utc();
        let (ca, _) = CertificateAuthority::load_or_create(&dir, now).expect("a CA");
        let provider = Arc::new(provider());
        let mut roots = RootCertStore::empty();
        for anchor in ca.trusted_issuing_certs() {
            roots.add(anchor).expect("anchor");
        }
        roots.add(ca.root_cert_der()).expect("anchor");
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
        let chain = Arc::new(Counting {
            inner,
            calls: AtomicUsize::new(0),
        });
        let check = Arc::new(Revocable::default());
        let verifier = Arc::new(CheckedVerifier::new(chain.clone(), check.clone(), capacity));
        let server_cert = ca.issue_server_certificate(&[], now).expect("server");
        let server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(
                server_cert.certificate.chain.clone(),
                server_cert.key.der().clone_key(),
            )
            .expect("server config");
        Fixture {
            ca,
            chain,
            check,
            verifier,
            server: Arc::new(server),
            _dir: TempDir(dir),
        }
    }

    fn device(ca: &CertificateAuthority, id: &str, validity: Duration) -> CertifiedKey {
        let id = DeviceId::parse(id).expect("device id");
        ca.issue_device_certificate(&id, validity, OffsetDateTime::now_utc())
            .expect("issued")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A whole handshake in memory, with `chain` and the private key of `key_of`, in TLS
    /// `version`.
    fn handshake(
        f: &Fixture,
        chain: &[CertificateDer<'static>],
        key_of: &CertifiedKey,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(f.ca.root_cert_der()).expect("root");
        let provider = Arc::new(provider());
        // Unchecked pairing, so a client can present one device's chain with another's key.
        let key = provider
            .key_provider
            .load_private_key(key_of.key.der().clone_key())?;
        let presented = Presents(Arc::new(rustls::sign::CertifiedKey::new(
            chain.to_vec(),
            key,
        )));
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(presented));
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(Arc::new(client), name)?;
        let mut server = ServerConnection::new(f.server.clone())?;
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).expect("in memory");
            }
            server.read_tls(&mut bytes.as_slice()).expect("in memory");
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).expect("in memory");
            }
            client.read_tls(&mut bytes.as_slice()).expect("in memory");
            client.process_new_packets()?;
        }
        Err(rustls::Error::General(
            "the handshake did not finish".into(),
        ))
    }

    /// A client that always presents one certificate chain and signs with one key.
    #[derive(Debug)]
    struct Presents(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Presents {
        fn resolve(
            &self,
            _root_hint_subjects: &[&[u8]],
            _sigschemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    fn chain_calls(f: &Fixture) -> usize {
        f.chain.calls.load(Ordering::Relaxed)
    }

    /// The verifier's part of a handshake at `now`: the chain, then (when it passed) the
    /// client's signature, taken as valid.
    fn verify_at(f: &Fixture, chain: &[CertificateDer<'static>], now: UnixTime) -> bool {
        let verified = f
            .verifier
            .verify_client_cert(&chain[0], &chain[1..], now)
            .is_ok();
        if verified {
            let proof = f
                .verifier
                .proved(&chain[0], Ok(HandshakeSignatureValid::assertion()));
            assert!(proof.is_ok());
        }
        verified
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(t.unix_timestamp()).expect("after 1970"),
        ))
    }

    #[test]
    fn a_device_that_reconnects_skips_the_chain_check_but_not_the_hub_check() {
        let f = fixture("memo-reconnect", 16);
        let d1 = device(&f.ca, "d1", HOUR);
        let chain = &d1.certificate.chain;
        for version in [
            &rustls::version::TLS13,
            &rustls::version::TLS12,
            &rustls::version::TLS13,
        ] {
            handshake(&f, chain, &d1, version).expect("handshake");
        }
        assert_eq!(chain_calls(&f), 1, "the chain is verified once");
        assert_eq!(
            f.check.calls.load(Ordering::Relaxed),
            3,
            "the hub checks every time"
        );

        // Revocation applies at the next handshake, remembered chain or not.
        f.check.revoked.store(true, Ordering::Relaxed);
        let refused = handshake(&f, chain, &d1, &rustls::version::TLS13);
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{refused:?}"
        );
        f.check.revoked.store(false, Ordering::Relaxed);

        // Another chain, even of the same device, is verified on its own; so is the same
        // leaf presented without its issuing CA.
        let renewed = device(&f.ca, "d1", HOUR);
        handshake(
            &f,
            &renewed.certificate.chain,
            &renewed,
            &rustls::version::TLS13,
        )
        .expect("handshake");
        assert_eq!(chain_calls(&f), 2);
        handshake(&f, &chain[..1], &d1, &rustls::version::TLS13).expect("handshake");
        assert_eq!(chain_calls(&f), 3);
    }

    #[test]
    fn a_chain_is_remembered_only_once_its_client_proved_the_key() {
        let f = fixture("memo-proof", 16);
        let d1 = device(&f.ca, "d1", HOUR);
        let d2 = device(&f.ca, "d2", HOUR);
        let chain = &d1.certificate.chain;
        // d1's public chain with another key: the chain verifies, the signature does not.
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let refused = handshake(&f, chain, &d2, version);
            assert!(refused.is_err(), "{refused:?}");
        }
        assert_eq!(chain_calls(&f), 2);
        assert_eq!(locked(&f.verifier.verified.memory).len(), 0);
        handshake(&f, chain, &d1, &rustls::version::TLS13).expect("handshake");
        assert_eq!(chain_calls(&f), 3);
        handshake(&f, chain, &d1, &rustls::version::TLS13).expect("handshake");
        assert_eq!(chain_calls(&f), 3, "remembered after the proof");
    }

    #[test]
    fn a_refused_chain_is_neither_remembered_nor_checked() {
        let f = fixture("memo-refused", 16);
        let other = fixture("memo-refused-other", 16);
        // Issued by a CA this verifier does not trust.
        let foreign = device(&other.ca, "d1", HOUR);
        for _ in 0..2 {
            let refused = handshake(
                &f,
                &foreign.certificate.chain,
                &foreign,
                &rustls::version::TLS13,
            );
            assert!(refused.is_err(), "{refused:?}");
        }
        assert_eq!(chain_calls(&f), 2);
        assert_eq!(
            f.check.calls.load(Ordering::Relaxed),
            0,
            "the hub's check runs only after the chain verified"
        );
        assert_eq!(locked(&f.verifier.verified.pending).len(), 0);
    }

    #[test]
    fn a_remembered_chain_outside_its_validity_is_verified_again_and_refused() {
        let f = fixture("memo-expiry", 16);
        let issued_at = OffsetDateTime::now_utc();
        let chain = device(&f.ca, "d1", HOUR).certificate.chain;
        assert!(verify_at(&f, &chain, at(issued_at)));
        assert!(verify_at(&f, &chain, at(issued_at)));
        assert_eq!(chain_calls(&f), 1);
        let expired = at(issued_at + 2 * HOUR);
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
        assert!(
            !verify_at(&f, &chain, at(issued_at - 2 * HOUR)),
            "not valid yet"
        );
        assert_eq!(chain_calls(&f), 3);
        assert!(verify_at(&f, &chain, at(issued_at)));
        assert_eq!(chain_calls(&f), 3, "still remembered while valid");
    }

    /// The window is that of every certificate presented, not only the leaf's: here an
    /// extra certificate (not on the path) that expires after a minute.
    #[test]
    fn the_window_is_that_of_every_certificate_presented() {
        let f = fixture("memo-window", 16);
        let issued_at = OffsetDateTime::now_utc();
        let leaf = device(&f.ca, "d1", HOUR).certificate.chain;
        let short = device(&f.ca, "d9", Duration::from_secs(60))
            .certificate
            .cert_der;
        let chain = vec![leaf[0].clone(), short, leaf[1].clone()];
        assert!(verify_at(&f, &chain, at(issued_at)));
        assert!(verify_at(&f, &chain, at(issued_at)));
        assert_eq!(chain_calls(&f), 1);
        assert!(verify_at(
            &f,
            &chain,
            at(issued_at + Duration::from_secs(120))
        ));
        assert_eq!(
            chain_calls(&f),
            2,
            "outside the extra certificate's validity"
        );
    }

    #[test]
    fn windows_include_both_ends_and_need_every_certificate_readable() {
        let window = Window {
            from: 100,
            until: 200,
        };
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        assert!(!window.contains(at(99)));
        assert!(window.contains(at(100)));
        assert!(window.contains(at(200)));
        assert!(!window.contains(at(201)));
        let junk = CertificateDer::from(vec![0x30u8, 0x03, 0x02, 0x01, 0x00]);
        assert!(Window::of(&junk, &[]).is_none());
    }

    #[test]
    fn memory_and_candidates_hold_at_most_their_capacity_oldest_out_first() {
        let f = fixture("memo-capacity", 2);
        let now = UnixTime::now();
        let chains: Vec<_> = ["d1", "d2", "d3"]
            .iter()
            .map(|id| device(&f.ca, id, HOUR).certificate.chain)
            .collect();
        for chain in &chains {
            assert!(verify_at(&f, chain, now));
        }
        assert_eq!(chain_calls(&f), 3);
        assert_eq!(locked(&f.verifier.verified.memory).len(), 2);
        // d2 and d3 are remembered; d1, the oldest, was forgotten.
        assert!(verify_at(&f, &chains[2], now));
        assert!(verify_at(&f, &chains[1], now));
        assert_eq!(chain_calls(&f), 3);
        assert!(verify_at(&f, &chains[0], now));
        assert_eq!(chain_calls(&f), 4);

        // Candidates that never prove their key are bounded the same way.
        let g = fixture("memo-pending", 2);
        let chains: Vec<_> = ["d1", "d2", "d3"]
            .iter()
            .map(|id| device(&g.ca, id, HOUR).certificate.chain)
            .collect();
        for chain in &chains {
            assert!(
                g.verifier
                    .verify_client_cert(&chain[0], &chain[1..], now)
                    .is_ok()
            );
        }
        assert_eq!(locked(&g.verifier.verified.pending).len(), 2);
        let valid = || Ok(HandshakeSignatureValid::assertion());
        assert!(g.verifier.proved(&chains[0][0], valid()).is_ok());
        assert!(g.verifier.proved(&chains[2][0], valid()).is_ok());
        assert_eq!(locked(&g.verifier.verified.memory).len(), 1);
        assert!(
            !g.verifier
                .verified
                .holds(&VerifiedChains::key(&chains[0][0], &chains[0][1..]), now)
        );
        assert!(
            g.verifier
                .verified
                .holds(&VerifiedChains::key(&chains[2][0], &chains[2][1..]), now)
        );
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
