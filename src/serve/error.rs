//! Why `serve` (or `--check-config`) did not start: what the operator must fix in the
//! configuration, the fleet file or the models (exit code 2), apart from what went wrong at run
//! time. The messages name the configuration key or file, as the CLI prints them.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration, fleet file or model artifact: exit code 2.
    #[error(transparent)]
    Config(#[from] CheckError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] super::standby::LockError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// Reading or writing the key ticket ids are derived under.
    #[error("ticket id key: {0}")]
    TicketIdKey(#[source] StoreError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the standby thread ended without the lock")]
    StandbyGone,
    #[error(transparent)]
    Writer(#[from] crate::app::CoreError),
    #[error("outcome metrics: {0}")]
    Outcomes(#[source] prometheus::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Cluster mode: the fleet file could not be brought into the fleet-wide registry.
    #[error(transparent)]
    FleetImport(#[from] crate::cluster::registry::ImportError),
    #[error("dispatch HTTP client: {0}")]
    DispatchClient(#[source] reqwest::Error),
}

impl ServeError {
    pub fn is_config(&self) -> bool {
        matches!(self, ServeError::Config(_))
    }

    pub(super) fn data_dir(path: &std::path::Path, source: std::io::Error) -> ServeError {
        ServeError::DataDir {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<crate::api::server::ListenError> for ServeError {
    fn from(e: crate::api::server::ListenError) -> ServeError {
        ServeError::Listen {
            addr: e.addr,
            source: e.source,
        }
    }
}

/// What the checks made before anything starts found wrong, each naming the key or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("config key api.{key}: {message}")]
    Api { key: &'static str, message: String },
    #[error("config key scoring.models_dir: {0}")]
    Artifacts(#[from] crate::predict::ArtifactError),
    #[error("config key scoring.models_dir: {0}")]
    Models(#[from] crate::engine::ModelsError),
    #[error("notify templates: {0}")]
    Templates(#[from] crate::notify::templates::TemplateError),
    #[error("api: {0}")]
    Tokens(#[from] crate::api::auth::TokensFileError),
    #[error("config key notify.webhook.allow: {0}")]
    ContactPolicy(#[from] crate::netguard::GuardError),
    /// The fleet file itself (its error names the path).
    #[error("fleet file {0}")]
    FleetFile(#[source] crate::fleet::FleetError),
    /// A customer's contact in the fleet file the address policy refuses.
    #[error("fleet file: {0}")]
    FleetContact(#[source] crate::fleet::FleetError),
    #[error(transparent)]
    Broker(#[from] crate::ingest::mqtt::MqttError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Notifier(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Board(#[from] crate::board::BoardConfigError),
}
