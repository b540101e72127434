//! rustls configuration: TLS 1.3 and 1.2, aws-lc-rs, client certificates required.

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

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
/// requires a client certificate chaining to one of `client_roots`. `alpn` lists the
/// protocols offered (empty for raw MQTT, `http/1.1` for WebSocket).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider());
    let mut roots = RootCertStore::empty();
    for root in client_roots {
        roots.add(root.clone()).map_err(TlsError::TrustAnchor)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::ServerIdentity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerIdentity)?;
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

/// Server configuration without client authentication, for the HTTPS API (which
/// authenticates operators with tokens, not certificates).
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
