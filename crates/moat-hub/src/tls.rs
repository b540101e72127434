//! The hub's TLS configurations (MQTT, WebSocket, API) and their rebuilding, without a
//! restart, when what they trust changes: an issuing-CA rotation or import (new trust
//! anchors, a server certificate from the new CA) or a manufacturer CA (API only).
//!
//! Every listener holds a [`TlsSlot`]; a handshake uses the configuration current when it
//! starts, so live connections are untouched and new ones see the change at once.

use std::sync::{Arc, Mutex, PoisonError};

use moat_net::{ClientCertCheck, TlsError, TlsSlot};
use moat_pki::CertificateAuthority;
use moat_store::registry::ManufacturerRecord;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The hub's identity towards clients and what it trusts from them.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Moat's trust anchors: the issuing CAs (current, then previous) and the root.
    roots: Vec<CertificateDer<'static>>,
    manufacturers: Vec<CertificateDer<'static>>,
}

/// MQTT, WebSocket and API configurations, in that order.
type Configs = (
    Arc<rustls::ServerConfig>,
    Arc<rustls::ServerConfig>,
    Arc<rustls::ServerConfig>,
);

/// The three configurations and how to rebuild them.
pub(crate) struct TlsSet {
    server_names: Vec<String>,
    check: Arc<dyn ClientCertCheck>,
    api_check: Arc<dyn ClientCertCheck>,
    pub mqtt: TlsSlot,
    pub wss: TlsSlot,
    pub api: TlsSlot,
    material: Mutex<Material>,
}

impl std::fmt::Debug for TlsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSet")
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// Why a configuration could not be (re)built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetError {
    /// rustls refused it.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server certificate could not be issued.
    #[error(transparent)]
    Pki(#[from] moat_pki::PkiError),
}

/// Moat's trust anchors for client certificates: every trusted issuing CA, then the root.
/// Path building stops at an issuing CA, so a handshake verifies one signature (the
/// device's); the root stays an anchor for chains that include the issuing CA.
pub(crate) fn anchors(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    let mut roots = ca.trusted_issuing_certs();
    roots.push(ca.root_cert_der());
    roots
}

pub(crate) fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            moat_pki::decode_est_base64(body.as_bytes()).ok()
        })
        .map(CertificateDer::from)
        .collect()
}

fn manufacturer_anchors(m: &[ManufacturerRecord]) -> Vec<CertificateDer<'static>> {
    m.iter().flat_map(|m| pem_certs(&m.ca_pem)).collect()
}

impl TlsSet {
    /// Issues the server certificate from `ca` and builds every configuration.
    pub(crate) fn new(
        ca: &CertificateAuthority,
        server_names: Vec<String>,
        check: Arc<dyn ClientCertCheck>,
        api_check: Arc<dyn ClientCertCheck>,
        manufacturers: &[ManufacturerRecord],
    ) -> Result<Self, TlsSetError> {
        let server = ca.issue_server_certificate(&server_names, OffsetDateTime::now_utc())?;
        let material = Material {
            chain: server.certificate.chain.clone(),
            key: server.key.der().clone_key(),
            roots: anchors(ca),
            manufacturers: manufacturer_anchors(manufacturers),
        };
        let (mqtt, wss, api) = Self::build(&material, &check, &api_check)?;
        Ok(Self {
            server_names,
            check,
            api_check,
            mqtt: moat_net::tls_slot(mqtt),
            wss: moat_net::tls_slot(wss),
            api: moat_net::tls_slot(api),
            material: Mutex::new(material),
        })
    }

    fn build(
        m: &Material,
        check: &Arc<dyn ClientCertCheck>,
        api_check: &Arc<dyn ClientCertCheck>,
    ) -> Result<Configs, TlsError> {
        let mqtt = moat_net::server_config(
            m.chain.clone(),
            m.key.clone_key(),
            &m.roots,
            check.clone(),
            &[],
        )?;
        let wss = moat_net::server_config(
            m.chain.clone(),
            m.key.clone_key(),
            &m.roots,
            check.clone(),
            &[b"http/1.1"],
        )?;
        let mut api_roots = m.roots.clone();
        api_roots.extend(m.manufacturers.iter().cloned());
        let api = moat_net::server_config_optional_client_auth(
            m.chain.clone(),
            m.key.clone_key(),
            &api_roots,
            api_check.clone(),
        )?;
        Ok((mqtt, wss, api))
    }

    fn apply(&self, m: &Material) -> Result<(), TlsError> {
        let (mqtt, wss, api) = Self::build(m, &self.check, &self.api_check)?;
        self.mqtt.store(mqtt);
        self.wss.store(wss);
        self.api.store(api);
        Ok(())
    }

    /// After a CA change: a server certificate from the new issuing CA, and its trust anchors.
    pub(crate) fn ca_changed(&self, ca: &CertificateAuthority) -> Result<(), TlsSetError> {
        let server = ca.issue_server_certificate(&self.server_names, OffsetDateTime::now_utc())?;
        let mut m = self.material.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Material {
            chain: server.certificate.chain.clone(),
            key: server.key.der().clone_key(),
            roots: anchors(ca),
            manufacturers: m.manufacturers.clone(),
        };
        self.apply(&next)?;
        *m = next;
        Ok(())
    }

    /// After the manufacturer CAs changed (API listener only).
    pub(crate) fn manufacturers_changed(&self, manufacturers: &[ManufacturerRecord]) {
        let mut m = self.material.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Material {
            chain: m.chain.clone(),
            key: m.key.clone_key(),
            roots: m.roots.clone(),
            manufacturers: manufacturer_anchors(manufacturers),
        };
        match self.apply(&next) {
            Ok(()) => *m = next,
            Err(e) => {
                tracing::error!(error = %e, "cannot trust the manufacturer CAs; TLS unchanged");
            }
        }
    }
}
