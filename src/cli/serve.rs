//! `forewarn serve`: flags override the configuration; `--check-config` validates the
//! configuration, the fleet file and the models without starting.

use super::{CliResult, Failure};
use crate::config::Config;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Broker URL, e.g. mqtt://127.0.0.1:1883 (overrides broker.url).
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// API listen address, e.g. 127.0.0.1:8080 (overrides api.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Database directory (overrides store.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Model artifacts directory (overrides scoring.models_dir).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Cluster mode: read the fleet from NATS JetStream at this URL, e.g. nats://127.0.0.1:4222,
    /// or the servers of a NATS cluster separated by commas (overrides cluster.url; see README,
    /// "Cluster mode").
    #[arg(long, value_name = "URL[,URL…]")]
    pub cluster: Option<String>,
    /// Validate configuration, fleet file and models, then exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Print the effective configuration (file, environment and flags applied) as TOML, secrets
    /// shown as ***, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// Stand by for another `forewarn serve` on the same data directory: answer /healthz,
    /// /readyz (503, role standby) and /metrics, and take over (store, broker session) when that
    /// one stops. Without it, a data directory in use is an error at start.
    #[arg(long)]
    pub standby: bool,
}

/// Loads the configuration and applies the command-line overrides.
pub fn config(args: &Args) -> Result<Config, Failure> {
    let mut cfg = Config::load(args.config.as_deref()).map_err(Failure::usage)?;
    if let Some(b) = &args.broker {
        cfg.broker.url = b.clone();
    }
    if let Some(l) = &args.listen {
        cfg.api.listen = l.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.store.data_dir = d.clone();
    }
    if let Some(m) = &args.models {
        cfg.scoring.models_dir = m.clone();
    }
    if let Some(c) = &args.cluster {
        cfg.cluster.url = Some(c.clone());
    }
    cfg.validate().map_err(Failure::usage)?;
    Ok(cfg)
}

pub fn run(args: Args) -> CliResult {
    let cfg = config(&args)?;
    if args.print_config {
        let text = crate::secret::redacted(|| toml::to_string_pretty(&cfg))
            .map_err(|e| Failure::runtime(format!("cannot print the configuration: {e}")))?;
        print!("{text}");
        return Ok(());
    }
    let failure = |e: crate::serve::ServeError| {
        if e.is_config() {
            Failure::usage(e)
        } else {
            Failure::runtime(e)
        }
    };
    if args.check_config {
        let s = crate::serve::check(&cfg).map_err(failure)?;
        println!(
            "configuration ok: {} model(s) with {} failure mode(s), {} device(s), {} customer(s) in the fleet file",
            s.models, s.modes, s.devices, s.customers
        );
        return Ok(());
    }
    super::init_logging(&cfg.log.filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let grace = cfg.shutdown.grace.std();
        let handle = if args.standby {
            // A standby may wait for days: a signal meanwhile ends the wait.
            let signalled = shutdown.clone();
            let signals = tokio::spawn(async move {
                super::shutdown_signal().await;
                signalled.cancel();
            });
            let Some(takeover) = crate::serve::standby::wait(&cfg, shutdown.clone())
                .await
                .map_err(failure)?
            else {
                tracing::info!("stopped while standing by");
                return Ok(());
            };
            let handle = crate::serve::run_taken_over(cfg, shutdown.clone(), takeover)
                .await
                .map_err(failure)?;
            shutdown.cancelled().await;
            signals.abort();
            handle
        } else {
            let handle = crate::serve::run(cfg, shutdown.clone())
                .await
                .map_err(failure)?;
            super::shutdown_signal().await;
            handle
        };
        tracing::info!("shutting down: stopping intake, draining, flushing");
        shutdown.cancel();
        handle.stopped(grace).await;
        Ok(())
    })
}
