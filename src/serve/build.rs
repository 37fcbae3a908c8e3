//! What `serve` builds from more than one section of the configuration: the checks made before
//! anything is taken, the store, the single writer, the API's tokens and routes.

use super::{CheckError, ServeError};
use crate::app::{self, App, Settings};
use crate::config::Config;
use crate::fleet::FleetFile;
use crate::ingest::mqtt;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What `--check-config` found.
#[derive(Debug)]
pub struct CheckSummary {
    pub models: usize,
    pub modes: usize,
    pub devices: usize,
    pub customers: usize,
}

const TICKET_ID_KEY: &str = "ticket_id_key";

/// The key this daemon's ticket ids are derived under: 32 random bytes made at the first start
/// and kept in the data directory, so ids stay the same across restarts and cannot be computed
/// by anyone who knows only a device id and a time.
fn ticket_id_key(store: &Store) -> Result<Vec<u8>, ServeError> {
    let stored = store
        .get_kv::<Vec<u8>>(TICKET_ID_KEY)
        .map_err(ServeError::TicketIdKey)?;
    if let Some(k) = stored.filter(|k| k.len() == 32) {
        return Ok(k);
    }
    let mut key = vec![0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key[..]);
    let mut tx = store.tx();
    tx.put_kv(TICKET_ID_KEY, &key);
    store.commit(tx).map_err(ServeError::TicketIdKey)?;
    Ok(key)
}

/// What the checks at start read, for the writer.
pub(super) struct Inputs {
    pub(super) fleet: FleetFile,
    contact_policy: crate::netguard::AddressPolicy,
    artifacts: Vec<crate::predict::Artifact>,
}

/// Everything `serve` loads at start, checked before anything is taken or opened.
pub(super) struct Checked {
    pub(super) inputs: Inputs,
    /// The broker connection's options (URL, TLS, credentials).
    pub(super) mqtt: mqtt::Options,
}

impl Checked {
    pub(super) fn load(cfg: &Config) -> Result<Checked, ServeError> {
        // Checked here too (not only by `Config::load`): open reads on a public address must
        // not start whoever built the configuration.
        cfg.api
            .validate()
            .map_err(|(key, message)| CheckError::Api { key, message })?;
        let fleet = load_fleet(cfg)?;
        let contact_policy = contact_policy(cfg)?;
        let artifacts =
            crate::predict::load_dir(&cfg.scoring.models_dir).map_err(CheckError::from)?;
        Ok(Checked {
            inputs: Inputs {
                fleet,
                contact_policy,
                artifacts,
            },
            mqtt: mqtt::options(&cfg.broker, &cfg.broker.client_id).map_err(CheckError::from)?,
        })
    }
}

/// Validates everything `serve` would load at start — configuration, fleet file (contacts
/// included), model artifacts, broker URL and CA file, the API tokens file, the notification
/// templates — without starting anything.
pub fn check(cfg: &Config) -> Result<CheckSummary, ServeError> {
    let Checked { inputs, .. } = Checked::load(cfg)?;
    let modes = inputs.artifacts.iter().map(|a| a.modes.len()).sum();
    let models = inputs.artifacts.len();
    crate::engine::Models::new(inputs.artifacts, &cfg.features.window())
        .map_err(CheckError::from)?;
    auth(&cfg.api)?;
    crate::notify::templates::Templates::load(
        cfg.notify.templates_dir.as_deref(),
        &cfg.notify.fallback_locale,
    )
    .map_err(CheckError::from)?;
    Ok(CheckSummary {
        models,
        modes,
        devices: inputs.fleet.devices.len(),
        customers: inputs.fleet.customers.len(),
    })
}

/// The single writer on the opened store: models indexed against the store's metric index,
/// the fleet file applied, the device states recovered; the archive and cluster mode attached.
pub(super) fn writer(
    cfg: &Config,
    inputs: Inputs,
    store: Store,
    notifier: &Arc<crate::notify::Notifier>,
    cluster: &Option<Arc<crate::cluster::Cluster>>,
    clock: Arc<dyn crate::clock::Clock>,
    registry: &prometheus::Registry,
) -> Result<Arc<App>, ServeError> {
    let window = cfg.features.window();
    let base = app::load_metric_index(&store);
    let models = crate::engine::Models::with_index(inputs.artifacts, &window, base)
        .map_err(CheckError::from)?;
    app::save_metric_index(&store, &models.index)?;
    // Cluster mode: the fleet file went to the fleet-wide registry instead
    // ([`crate::cluster::Cluster::import_fleet_file`]), which this store gets through its watch.
    let has_file = !inputs.fleet.customers.is_empty() || !inputs.fleet.devices.is_empty();
    if has_file && cluster.is_none() {
        let applied = crate::fleet::apply_file(&store, &inputs.fleet, clock.now_ms())?;
        tracing::info!(
            "fleet file: {} record(s) written, {} left as the registry has them",
            applied.written,
            applied.kept
        );
    }
    let mut engine = cfg.engine_config();
    // Cluster mode: every instance derives ticket ids under the cluster's shared secret.
    engine.ticket_id_key = match cluster {
        Some(c) => c.ticket_id_key(),
        None => ticket_id_key(&store)?,
    };
    let settings = Settings {
        contact_policy: inputs.contact_policy,
        ingest: cfg.ingest.clone(),
        engine,
        window: window.clone(),
        models_dir: cfg.scoring.models_dir.clone(),
        rejects_per_minute: cfg.log.rejects_per_minute,
        has_webhook: cfg.dispatch.webhook_url.is_some(),
        reorder_idle: cfg.ingest.reorder_idle.map_or(
            Duration::from_millis(window.late_tolerance_ms.max(0) as u64),
            |d| d.std(),
        ),
        snapshot_every: cfg.store.snapshot_every,
    };
    let archive =
        crate::archive::Archive::build(&cfg.archive, &cfg.store.data_dir, registry, clock.clone())
            .map_err(CheckError::from)?;
    crate::outcomes::register(registry, store.clone()).map_err(ServeError::Outcomes)?;
    let metrics = crate::metrics::Metrics::new(registry);
    let mut app = App::new(settings, store, metrics, models, notifier.clone(), clock)?;
    app.archive = archive;
    if let Some(c) = cluster {
        app.fleetwide = Some(c.clone());
    }
    Ok(Arc::new(app))
}

/// The notifier, built (templates checked, providers set up) before anything starts, so a bad
/// template or provider table is a configuration error at start.
pub(super) fn notifier(
    cfg: &Config,
    clock: Arc<dyn crate::notify::Clock>,
    registry: &prometheus::Registry,
) -> Result<Arc<crate::notify::Notifier>, ServeError> {
    let notifier = crate::notify::Notifier::build(&cfg.notify, &cfg.api.public_url, registry)
        .map_err(CheckError::from)?;
    Ok(Arc::new(notifier.with_clock(clock)))
}

/// Cluster mode, connected, when `[cluster]` is on.
pub(super) async fn cluster(
    cfg: &crate::cluster::Config,
    registry: &prometheus::Registry,
) -> Result<Option<Arc<crate::cluster::Cluster>>, ServeError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let cluster = crate::cluster::Cluster::connect(cfg, registry).await?;
    Ok(Some(cluster))
}

/// The dispatch worker, publishing through the ingest stage's MQTT `client` (retained ticket
/// publishes wait while the broker is away) and woken by the writer's commits; its due times
/// read the writer's clock, the daemon's one clock.
pub(super) fn dispatcher(
    cfg: &crate::dispatch::Config,
    app: &App,
    client: mqtt::Client,
) -> Result<crate::dispatch::Dispatcher, ServeError> {
    crate::dispatch::Dispatcher::new(
        cfg.clone(),
        app.store.clone(),
        app.metrics.clone(),
        app.dispatch_wake.clone(),
        app.broker_flag().clone(),
        client,
    )
    .map(|d| d.with_clock(app.clock()))
    .map_err(ServeError::DispatchClient)
}

/// A standby that took the data directory over counts it, before the API serves (so a
/// `/readyz` that says ready already shows the takeover).
pub(super) fn count_takeover(
    app: &App,
    cfg: &Config,
    waited: Option<(std::time::Instant, Duration)>,
) {
    let Some((locked_at, waited)) = waited else {
        return;
    };
    let took = locked_at.elapsed();
    app.metrics.role.takeovers.inc();
    app.metrics.role.takeover_seconds.set(took.as_secs_f64());
    tracing::warn!(
        "standby: took over the data directory {} (stood by {waited:?}; store opened and \
         recovered in {took:?}); resuming the broker session as {}",
        cfg.store.data_dir.display(),
        cfg.broker.client_id
    );
}

/// The API's tokens (`api.tokens`, `api.tokens_file`, `FOREWARN_API_TOKEN`).
pub(super) fn auth(cfg: &crate::api::Config) -> Result<Arc<crate::api::Auth>, ServeError> {
    let auth = crate::api::Auth::new(cfg).map_err(CheckError::from)?;
    Ok(Arc::new(auth))
}

/// The routes: the private listener's (the API and, when it is on, the dispatch board, beside
/// the API it shares tokens with) and the notifier's.
pub(super) fn routes(
    cfg: &Config,
    app: &Arc<App>,
    notifier: &Arc<crate::notify::Notifier>,
    desk: &Arc<dyn crate::notify::TicketDesk>,
    auth: &Arc<crate::api::Auth>,
    shutdown: &CancellationToken,
) -> Result<(axum::Router, crate::api::NotifyRoutes), ServeError> {
    if !auth.has_tokens() {
        tracing::warn!(
            "no API tokens configured (api.tokens, api.tokens_file, FOREWARN_API_TOKEN): \
             every call but /metrics and the health checks is refused"
        );
    }
    if !cfg.api.protect_reads {
        tracing::warn!(
            "api.protect_reads = false: reads are open to anyone who can reach {}",
            cfg.api.listen
        );
    }
    let notify = crate::api::notify_routes(
        notifier.clone(),
        app.store.clone(),
        desk.clone(),
        auth.clone(),
        &cfg.api,
    );
    let router = crate::api::router(
        app.handles(),
        auth.clone(),
        &cfg.api,
        crate::openapi::json(),
    );
    if !cfg.board.enabled {
        return Ok((router, notify));
    }
    let board = crate::board::Board::build(
        &cfg.board,
        app.tickets(),
        app.fleet(),
        app.metrics.clone(),
        auth.clone(),
        &cfg.api.public_url,
        shutdown.clone(),
    )
    .map_err(CheckError::from)?;
    Ok((router.merge(board.router(cfg.api.max_body_bytes)), notify))
}

/// Where customers' webhook contacts may point: `[notify.webhook] allow`.
fn contact_policy(cfg: &Config) -> Result<crate::netguard::AddressPolicy, ServeError> {
    let allow = cfg
        .notify
        .webhook
        .as_ref()
        .map(|w| w.allow.clone())
        .unwrap_or_default();
    Ok(crate::netguard::AddressPolicy::new(&allow).map_err(CheckError::from)?)
}

/// The fleet file, with every customer's contacts checked against the address policy.
fn load_fleet(cfg: &Config) -> Result<FleetFile, ServeError> {
    let f = match &cfg.fleet.file {
        Some(p) => FleetFile::load(p).map_err(CheckError::FleetFile)?,
        None => FleetFile::default(),
    };
    let policy = contact_policy(cfg)?;
    for c in &f.customers {
        c.validate_with(&policy).map_err(CheckError::FleetContact)?;
    }
    Ok(f)
}

/// How long a process that has the data directory's lock waits for sled's own lock on the
/// store: the previous holder's sled files close a moment after its lock file does.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

pub(super) fn open_store(cfg: &crate::store::Config) -> Result<Store, ServeError> {
    Ok(Store::open_waiting(
        &cfg.data_dir,
        cfg.cache_bytes,
        STORE_LOCK_WAIT,
    )?)
}
