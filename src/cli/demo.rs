//! `forewarn demo`: embedded broker, simulated fleet, the daemon with the demo model, and the
//! field-service console, on one machine with nothing installed.

use super::{CliResult, Failure};
use crate::domain::Dur;
use std::path::PathBuf;
#[cfg(feature = "embedded-broker")]
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 90)]
    pub devices: usize,
    /// Simulated hours of event time per second of wall time.
    #[arg(long, default_value_t = 24.0)]
    pub speed: f64,
    /// How long the fleet publishes on an idle machine; with --speed, the span of simulated
    /// time shown (a busy machine takes longer to publish it, at most ten times this).
    #[arg(long, default_value = "60s")]
    pub duration: Dur,
    /// API listen address (a free port is used when it is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Stop when the fleet stops instead of keeping the API up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the demo database here (default: a temporary folder, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use the `[notify]` providers of this configuration file (an SMTP server, a Twilio
    /// account…) instead of the local sink for the channels it configures.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(not(feature = "embedded-broker"))]
pub fn run(_args: Args) -> CliResult {
    Err(Failure::usage(
        "this build has no embedded broker: rebuild with the `embedded-broker` feature",
    ))
}

#[cfg(feature = "embedded-broker")]
pub fn run(args: Args) -> CliResult {
    use crate::demo::DemoOptions;
    if args.devices == 0 || args.speed.is_nan() || args.speed <= 0.0 {
        return Err(Failure::usage("--devices and --speed must be positive"));
    }
    super::init_logging("warn,rumqttd=off");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let s2 = shutdown.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            s2.cancel();
        });
        let opts = DemoOptions {
            devices: args.devices,
            sim_hours_per_second: args.speed,
            duration: args.duration.std(),
            wall_guard: crate::demo::DemoOptions::default_wall_guard(args.duration.std()),
            listen: args.listen,
            keep_running: !args.exit,
            seed: args.seed,
            data_dir: args.data_dir,
            config: args.config,
            malformed_fraction: crate::demo::MALFORMED_FRACTION,
        };
        crate::demo::run(opts, shutdown)
            .await
            .map(|_| ())
            .map_err(Failure::runtime)
    })
}
