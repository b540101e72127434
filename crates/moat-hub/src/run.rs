//! Start-up, the running hub, and shutdown.

use hyper_util::rt::{TokioExecutor, TokioIo};
use moat_audit::AnchorKey;
use moat_broker::{Broker, ReasonCode};
use moat_net::{Listener, ListenerKind, NetStats};
use moat_pki::CertificateAuthority;
use moat_store::SqliteStore;
use moat_store::registry::Registry;
use moat_types::{DeviceId, Timestamp};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::HubConfig;
use crate::access::Access;
use crate::api::{AppState, Peer};
use crate::identity::{AuditSink, Identity, NetEvents};

/// Why the hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate authority failed.
    #[error("certificate authority: {0}")]
    Pki(#[from] moat_pki::PkiError),
    /// The store failed to open.
    #[error("store: {0}")]
    Store(#[from] moat_store::StoreError),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] moat_net::TlsError),
    /// The listeners' TLS could not be set up.
    #[error("TLS: {0}")]
    TlsSet(#[from] crate::tls::TlsSetError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The arguments were invalid.
    #[error("{0}")]
    Invalid(String),
    /// The identity service failed to start.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// The durable store failed while running; the hub stopped (fail-stop).
    #[error("the durable store failed at commit {seq}; the hub stopped")]
    StoreFailed {
        /// First commit sequence that failed.
        seq: u64,
    },
}

/// Most API connections open at once; further ones are closed at accept.
pub const MAX_API_CONNECTIONS: usize = 512;
/// Longest an API client may take for its TLS handshake.
pub const API_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an API client may take to send a request's header, or stay idle between requests.
pub const API_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Written to the data directory while the hub runs: where its API listens (JSON).
pub const HUB_FILE: &str = "hub.json";

/// The bound addresses, reported once every listener is up.
#[derive(Debug, Clone)]
pub struct Ready {
    /// MQTT over mutual TLS.
    pub mqtt_tls: SocketAddr,
    /// MQTT over secure WebSocket.
    pub mqtt_wss: Option<SocketAddr>,
    /// Plaintext MQTT.
    pub mqtt_plaintext: Option<SocketAddr>,
    /// HTTPS API.
    pub api: SocketAddr,
}

fn prepare_dir(path: &Path) -> Result<(), HubError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| HubError::DataDir {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(err)?;
    }
    Ok(())
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// How the CA is kept: created with which algorithm, keys encrypted with which passphrase.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Key algorithm of a CA created at first start.
    pub algorithm: moat_pki::KeyAlgorithm,
    /// Passphrase the CA key files are (or will be) encrypted with.
    pub passphrase: Option<moat_pki::Passphrase>,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            algorithm: moat_pki::KeyAlgorithm::EcdsaP256Sha256,
            passphrase: None,
        }
    }
}

fn load_ca(
    data_dir: &Path,
    settings: &CaSettings,
) -> Result<(CertificateAuthority, Arc<dyn moat_pki::KeySource>), HubError> {
    prepare_dir(data_dir)?;
    let dir = data_dir.join("pki");
    let keys = crate::ca::key_source(&dir, settings.passphrase.clone());
    let options = moat_pki::CaOptions::with_algorithm(settings.algorithm);
    let (ca, created) =
        CertificateAuthority::load_or_create_with(&dir, keys.as_ref(), &options, now())?;
    if created {
        tracing::info!(dir = %dir.display(), algorithm = %settings.algorithm, "created a new root and issuing CA");
    }
    Ok((ca, keys))
}

/// Opens the registry (`registry.db`) with the audit anchor key from `secrets/`.
pub fn open_registry(data_dir: &Path) -> Result<Registry, HubError> {
    let secrets = data_dir.join("secrets");
    prepare_dir(&secrets)?;
    let io = |source| HubError::DataDir {
        path: secrets.clone(),
        source,
    };
    let key = crate::access::load_or_create_secret(&secrets.join("audit.key")).map_err(io)?;
    let key =
        AnchorKey::new(&key).ok_or_else(|| HubError::Invalid("audit.key is too short".into()))?;
    Ok(Registry::open(&data_dir.join("registry.db"), key)?
        .with_anchor_copy(secrets.join("audit.anchor")))
}

/// Issues a device key and certificate into `out`: `ID.crt` (leaf and issuing CA), `ID.key`
/// (0600) and `ca.crt` (the root to trust). Registers the device and the certificate and
/// records it in the audit trail (this works beside a running hub, which finds the new
/// device in the registry at its first handshake).
pub fn add_device(
    data_dir: &Path,
    ca_settings: &CaSettings,
    id: &DeviceId,
    out: &Path,
    validity: Duration,
) -> Result<(), HubError> {
    let (ca, _) = load_ca(data_dir, ca_settings)?;
    let registry = open_registry(data_dir)?;
    if let Some(d) = registry.device(id.as_str())?
        && d.status == moat_store::registry::DeviceStatus::Revoked
    {
        return Err(HubError::Invalid(format!(
            "device {id} is revoked; a revoked identity is never reissued"
        )));
    }
    let issued = ca.issue_device_certificate(id, validity, now())?;
    prepare_dir(out)?;
    let io = |source| HubError::DataDir {
        path: out.to_owned(),
        source,
    };
    moat_pki::write_private_file(&out.join(format!("{id}.key")), issued.key.pem().as_bytes())
        .map_err(io)?;
    std::fs::write(
        out.join(format!("{id}.crt")),
        issued.certificate.cert_pem.as_bytes(),
    )
    .map_err(io)?;
    std::fs::write(out.join("ca.crt"), ca.root_cert_pem().as_bytes()).map_err(io)?;
    crate::identity::register_issued(&registry, id, &issued.certificate, "cli", None)?;
    registry.append_audit(vec![crate::identity::issued_entry(
        "cli:local",
        id,
        &issued.certificate,
        "cli",
    )])?;
    Ok(())
}

/// Adds an operator (or gives an existing one `role` and a new password) in the registry
/// and records it in the audit trail; returns the random password, to be shown once. Works
/// beside a running hub, which reads operators from the registry at each login.
pub fn add_operator(
    data_dir: &Path,
    name: &str,
    role: crate::access::Role,
) -> Result<String, HubError> {
    let registry = open_registry(data_dir)?;
    let password = crate::access::put_operator(&registry, name, role)?;
    registry.append_audit(vec![
        moat_audit::Entry::new(
            crate::identity::now_ms(),
            "cli:local",
            "operator.put",
            format!("operator:{name}"),
            moat_audit::Outcome::Success,
        )
        .with("role", role.as_str()),
    ])?;
    Ok(password)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, HubError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HubError::Bind { addr, source })
}

/// Runs the hub until `shutdown` resolves. `on_ready` is called once all listeners are bound.
pub async fn run(
    config: HubConfig,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HubError> {
    let (ca, ca_keys) = load_ca(&config.data_dir, &config.ca)?;
    let ca = Arc::new(ca);

    let registry = Arc::new(open_registry(&config.data_dir)?);
    let token_key =
        crate::access::load_or_create_secret(&config.data_dir.join("secrets").join("token.key"))
            .map_err(|source| HubError::DataDir {
                path: config.data_dir.join("secrets"),
                source,
            })?;
    let (audit, audit_rx) = AuditSink::new();
    let identity = Arc::new(Identity::new(
        registry.clone(),
        ca.clone(),
        audit.clone(),
        config.device_cert_validity,
    )?);
    // Every start is on the record (so a trail of a hub that ever ran is never empty).
    registry.append_audit(vec![
        moat_audit::Entry::new(
            crate::identity::now_ms(),
            "hub",
            "hub.start",
            "hub",
            moat_audit::Outcome::Success,
        )
        .with("version", env!("CARGO_PKG_VERSION")),
    ])?;
    // The whole trail is checked once at start, in the background: tampering while the hub
    // was down is reported loudly (and `moat audit verify` says where).
    let check_registry = registry.clone();
    tokio::task::spawn_blocking(move || match check_registry.verify_audit() {
        Ok(Ok(v)) => tracing::info!(entries = v.count, "audit trail verified"),
        Ok(Err(t)) => {
            tracing::error!(problem = %t, "AUDIT TRAIL TAMPERED; run `moat audit verify`")
        }
        Err(e) => tracing::error!(error = %e, "cannot read the audit trail"),
    });
    let access = Arc::new(Access::new(registry.clone(), &token_key));
    if let Some(first) = access.bootstrap(&config.data_dir)? {
        // Shown once: only its argon2id hash is kept.
        eprintln!(
            "\n=== Moat first start: operator account created (shown only this once) ===\n  user:     {}\n  password: {}\n  The local CLI uses {} (0600).\n===========================================================================\n",
            first.user,
            first.password,
            crate::access::cli_token_path(&config.data_dir).display()
        );
    }
    let check: Arc<dyn moat_net::ClientCertCheck> = Arc::new(identity.certificate_check());
    let api_check: Arc<dyn moat_net::ClientCertCheck> = Arc::new(crate::jit::ApiCertificateCheck {
        inner: identity.certificate_check(),
        identity_directory: identity.directory.clone(),
    });
    let net_events = Arc::new(NetEvents::new(audit.clone()));
    let events: Arc<dyn moat_net::SecurityEvents> = net_events.clone();
    let tls = Arc::new(crate::tls::TlsSet::new(
        &ca,
        config.server_names.clone(),
        check,
        api_check,
        &identity.manufacturers(),
    )?);
    let _ = identity.tls.set(tls.clone());
    let _ = identity.ca_home.set(crate::ca::CaHome {
        dir: config.data_dir.join("pki"),
        keys: ca_keys,
    });

    let (store, snapshot) = SqliteStore::open(&config.data_dir.join("moat.db"))?;
    let store = Arc::new(store);
    let broker = Broker::new(
        config.broker.clone(),
        Arc::new(identity.authorizer()),
        store.clone(),
    );
    identity.attach_broker(broker.clone());
    let skipped = broker.restore(snapshot, Timestamp::now());
    if skipped > 0 {
        tracing::warn!(skipped, "skipped damaged entries while restoring state");
    }
    tracing::info!(
        sessions = broker.session_count(),
        retained = broker.retained_count(),
        "state restored"
    );

    // Forward commit progress to the connection drivers; a failed commit stops the hub
    // accepting work (fail-stop: nothing unacknowledged is ever claimed durable).
    let (committed_tx, committed_rx) = watch::channel(0u64);
    let (failed_tx, failed_rx) = watch::channel(None::<u64>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut progress = store.committed();
    let forward_broker = broker.clone();
    let forward_stop = stop_tx.clone();
    tokio::spawn(async move {
        loop {
            let p = *progress.borrow_and_update();
            committed_tx.send_replace(p.committed);
            if let Some(seq) = p.failed {
                tracing::error!(seq, "durable store failed; refusing further work");
                failed_tx.send_replace(Some(seq));
                forward_broker.kick_all(ReasonCode::ServerUnavailable);
                let _ = forward_stop.send(true);
                return;
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    });

    let net = Arc::new(NetStats::default());
    let mut listeners = Vec::new();
    let tls_listener = bind(config.mqtt_tls_listen).await?;
    let tls_addr = tls_listener.local_addr().map_err(|source| HubError::Bind {
        addr: config.mqtt_tls_listen,
        source,
    })?;
    listeners.push(Listener {
        tcp: tls_listener,
        kind: ListenerKind::MqttTls(tls.mqtt.clone()),
    });
    let mut wss_addr = None;
    if let Some(addr) = config.mqtt_wss_listen {
        let l = bind(addr).await?;
        wss_addr = l.local_addr().ok();
        listeners.push(Listener {
            tcp: l,
            kind: ListenerKind::MqttWss(tls.wss.clone()),
        });
    }
    let mut plain_addr = None;
    if let Some(addr) = config.danger_mqtt_plaintext_listen {
        let l = bind(addr).await?;
        plain_addr = l.local_addr().ok();
        tracing::warn!(
            %addr,
            anonymous = config.danger_allow_anonymous,
            "DANGER: plaintext MQTT listener enabled: traffic on it is neither encrypted nor authenticated"
        );
        listeners.push(Listener {
            tcp: l,
            kind: ListenerKind::DangerPlaintext {
                allow_anonymous: config.danger_allow_anonymous,
            },
        });
    }
    let api = bind(config.api_listen).await?;
    let api_addr = api.local_addr().map_err(|source| HubError::Bind {
        addr: config.api_listen,
        source,
    })?;
    let mut tasks = Vec::new();
    // The pre-authentication shield, shared by every MQTT listener, with the stored bans
    // loaded before the first accept.
    let shield = moat_net::Shield::new(config.shield.clone());
    if !config.shield.exempt.is_empty() {
        let exempt: Vec<String> = config
            .shield
            .exempt
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::warn!(
            ?exempt,
            "shield: these networks are exempt from connection rates, concurrent caps and automatic address bans"
        );
    }
    let bans = crate::bans::Bans::start(
        identity.clone(),
        shield.clone(),
        broker.clone(),
        net_events.clone(),
    )
    .await?;
    let (auto_ban_tx, auto_ban_rx) = crate::bans::auto_ban_queue();
    let _ = net_events.auto_bans.set(auto_ban_tx);
    tasks.push(tokio::spawn(crate::bans::maintain(
        bans.clone(),
        auto_ban_rx,
        stop_rx.clone(),
    )));
    for l in listeners {
        tasks.push(tokio::spawn(moat_net::serve(
            l,
            broker.clone(),
            config.net,
            net.clone(),
            committed_rx.clone(),
            events.clone(),
            shield.clone(),
            stop_rx.clone(),
        )));
    }
    // Behaviour monitoring, detection and automatic responses (issue 4): the engine's task
    // is fed by the broker's observer, the network events and the traffic counts.
    let (defence, facts) = crate::defence::Defence::new();
    let detecting = config.detect.mode != moat_detect::Mode::Off;
    if detecting {
        let _ = broker.set_observer(Arc::new(crate::defence::BrokerFacts(defence.clone())));
        identity.attach_defence(defence.clone());
        let _ = net_events.defence.set(defence.clone());
    } else {
        tracing::warn!(
            "detection is off ([detect] mode = \"off\"): no alerts, no automatic responses"
        );
    }
    let rates = net_events.activity.rates.clone();
    if !detecting {
        // The defence task takes the traffic counts when it runs; without it, this does.
        tasks.push(tokio::spawn(crate::rates::collect(
            broker.clone(),
            rates.clone(),
            stop_rx.clone(),
        )));
    }
    let actors = crate::defence::Actors {
        rates,
        broker: broker.clone(),
        identity: identity.clone(),
        registry: identity.registry.clone(),
        audit: audit.clone(),
        bans: bans.clone(),
        webhook: match &config.alert_webhook {
            None => None,
            Some(settings) => {
                let (webhook, task) =
                    crate::webhook::start(settings, stop_rx.clone()).map_err(HubError::Invalid)?;
                tasks.push(task);
                tracing::info!(url = %settings.url, "alerts are sent to the webhook");
                Some(webhook)
            }
        },
    };
    let (detect_config, detect_config_rx) = watch::channel(config.detect.clone());
    if detecting {
        tasks.push(tokio::spawn(crate::defence::run(
            defence.clone(),
            detect_config_rx,
            facts,
            actors.clone(),
            stop_rx.clone(),
        )));
    }
    let ota =
        crate::ota::OtaService::open(&config.data_dir).map_err(|source| HubError::DataDir {
            path: config.data_dir.join("ota"),
            source,
        })?;
    tasks.push(tokio::spawn(crate::ota::run_refresh(
        ota.clone(),
        identity.clone(),
        stop_rx.clone(),
    )));
    // Update campaigns: the task that advances them, the security signals their gates
    // compare (fed by the defence task), and device reports from the broker's tap on
    // `devices/{id}/ota/{status,inventory}`.
    let campaigns = crate::ota::campaigns::Campaigns::load(
        identity.registry.clone(),
        audit.clone(),
        ota.clone(),
    )?;
    defence.set_signal_tracker(campaigns.signals.clone());
    let (report_tap, reports_rx) =
        crate::ota::reports::ReportTap::new(campaigns.report_stats.clone());
    let _ = broker.set_tap(report_tap);
    tasks.push(tokio::spawn(crate::ota::reports::run(
        reports_rx,
        campaigns.report_stats.clone(),
        identity.registry.clone(),
        campaigns.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::ota::campaigns::run(
        campaigns.clone(),
        stop_rx.clone(),
    )));
    let app_state = AppState {
        ota,
        campaigns,
        identity: identity.clone(),
        access: access.clone(),
        broker: broker.clone(),
        net: net.clone(),
        events: net_events,
        bans,
        defence: Some(Arc::new(crate::defence::DefenceHandle { defence, actors })),
        stopping: stop_rx.clone(),
    };
    // The web console shares the API's listener, TLS and state.
    let console_sessions = Arc::new(crate::console::Sessions::new(config.console));
    let app = crate::api::router(app_state.clone())
        .merge(crate::console::router(app_state, console_sessions.clone()));
    tasks.push(tokio::spawn(serve_api(
        api,
        tls.api.clone(),
        identity.clone(),
        app,
        stop_rx.clone(),
    )));
    let audit_task = tokio::spawn(crate::identity::audit_writer(
        registry.clone(),
        audit_rx,
        stop_rx.clone(),
    ));
    // SIGHUP reloads the CA and the listeners' certificates from disk (after an offline
    // `moat ca import-issuing`, for example), then the configuration (`reload.rs`), without
    // dropping a session.
    let reloader = config.reload.clone();
    let hub_file = config.data_dir.join(HUB_FILE);
    let live = crate::reload::Live {
        shield: shield.clone(),
        detect: detect_config,
        sessions: console_sessions,
        identity: identity.clone(),
        current: std::sync::Mutex::new(config),
    };
    let hup_identity = identity.clone();
    tasks.push(tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with `moat ca` commands instead");
            return;
        };
        while hup.recv().await.is_some() {
            match hup_identity.reload_ca("hub:sighup").await {
                Ok(_) => tracing::info!("SIGHUP: CA and certificates reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the hub keeps its current CA"),
            }
            if let Some(reloader) = &reloader {
                let _ = live.reload(|| reloader.read());
            }
        }
    }));
    let tick_broker = broker.clone();
    let mut tick_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = interval.tick() => tick_broker.tick(Timestamp::now()),
                _ = tick_stop.wait_for(|s| *s) => return,
            }
        }
    }));

    // Lets the CLI on this machine find the API from the data directory alone.
    if let Err(e) = std::fs::write(
        &hub_file,
        format!(
            "{{\"api\":\"{api_addr}\",\"pid\":{}}}\n",
            std::process::id()
        ),
    ) {
        tracing::warn!(path = %hub_file.display(), error = %e, "cannot write the hub file; the CLI will need --hub");
    }
    on_ready(&Ready {
        mqtt_tls: tls_addr,
        mqtt_wss: wss_addr,
        mqtt_plaintext: plain_addr,
        api: api_addr,
    });

    let mut stopped = stop_rx.clone();
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        _ = stopped.wait_for(|s| *s) => {}
    }
    let _ = stop_tx.send(true);
    broker.kick_all(ReasonCode::ServerShuttingDown);
    // Give connections a moment to send DISCONNECT and flush; bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while net.open.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // Queued security events are written before exit.
    drop((events, tls, identity, audit));
    if tokio::time::timeout(Duration::from_secs(5), audit_task)
        .await
        .is_err()
    {
        tracing::warn!("audit writer did not finish within 5 s");
    }
    drop(broker);
    // Connection tasks still finishing hold the broker (and so the store); the store then
    // flushes and stops its writer when the last of them is dropped with the runtime.
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close()?;
    }
    let _ = std::fs::remove_file(&hub_file);
    if let Some(seq) = *failed_rx.borrow() {
        return Err(HubError::StoreFailed { seq });
    }
    Ok(())
}

async fn serve_api(
    listener: TcpListener,
    tls: moat_net::TlsSlot,
    identity: Arc<Identity>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_API_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, limit = MAX_API_CONNECTIONS, "API connection refused: too many open");
            continue;
        };
        // The current configuration: manufacturer CAs registered since start are trusted.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        let app = app.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) =
                tokio::time::timeout(API_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            // A client certificate, if one was presented, has passed the same chain and
            // live checks as on the MQTT listeners, or is a registered manufacturer's.
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let factory = leaf.and_then(|l| crate::jit::factory_of(&identity.directory.load(), l));
            let device = leaf
                .filter(|_| factory.is_none())
                .and_then(|l| moat_pki::device_id_from_certificate(l).ok());
            let app = app.layer(axum::Extension(Peer {
                addr,
                device,
                factory,
            }));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A request header must arrive within the limit once one has started; a
            // connection that moves no byte either way for that long (one that completes TLS
            // and then says nothing, or an idle keep-alive) is closed.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(API_HEADER_TIMEOUT);
            let io = crate::idle::IdleTimeout::new(tls, API_HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(io), service).await;
        });
    }
}
