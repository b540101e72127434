//! rustls configuration: TLS 1.3 and 1.2, aws-lc-rs, client certificates required.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::fmt;
use std::sync::Arc;

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
#[derive(Debug)]
struct CheckedVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    check: Arc<dyn ClientCertCheck>,
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
            .chain
            .verify_client_cert(end_entity, intermediates, now)
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
    let verifier = Arc::new(CheckedVerifier {
        chain: verifier,
        check,
    });
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
