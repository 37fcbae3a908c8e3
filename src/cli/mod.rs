//! Command-line entry points, one file per command. `main.rs` only parses and dispatches.

use clap::{Parser, Subcommand};

pub mod config;
pub mod demo;
pub mod evaluate;
pub mod export;
pub mod fleet;
pub mod openapi;
pub mod replay;
pub mod serve;
pub mod simulate;
pub mod train;

#[derive(Parser, Debug)]
#[command(
    name = "forewarn",
    version,
    about = "Predictive service for IoT fleets: telemetry in, tickets and customer alerts out, before the fault"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: MQTT telemetry → features → scoring → tickets, with the HTTP API.
    Serve(serve::Args),
    /// Fit failure predictors from history files (telemetry.csv, events.csv, devices.csv).
    Train(train::Args),
    /// Backtest a model over history with the daemon's own feature, scoring and ticket code.
    Evaluate(evaluate::Args),
    /// A stopped daemon's archived history and ticket outcomes as training files.
    Export(export::Args),
    /// The fleet registry of a running daemon: `fleet import --devices devices.csv`.
    Fleet(fleet::Args),
    /// Publish history files as device traffic to a broker.
    Replay(replay::Args),
    /// The whole system on one machine: embedded broker, simulated fleet, daemon, local sinks.
    Demo(demo::Args),
    /// Write a simulated fleet's history (telemetry.csv, events.csv, devices.csv) for training and demos.
    Simulate(simulate::Args),
    /// The configuration's documentation: `config reference` prints every key (Markdown).
    Config(config::Args),
    /// Print the HTTP API's OpenAPI 3.1 document (JSON), as served at /api/v1/openapi.json.
    Openapi(openapi::Args),
}

/// The history files `train` and `evaluate` read, in the contract's CSV layout.
#[derive(clap::Args, Debug)]
pub struct HistoryFiles {
    /// telemetry.csv: device_id,ts,<metric>…
    #[arg(long)]
    pub telemetry: std::path::PathBuf,
    /// events.csv: device_id,ts,kind,code (failure modes are the codes of failure events)
    #[arg(long)]
    pub events: std::path::PathBuf,
    /// devices.csv: device_id,<attribute>… (optional)
    #[arg(long)]
    pub devices: Option<std::path::PathBuf>,
}

impl HistoryFiles {
    /// The files read whole (a bad row fails the command, naming its file and line).
    pub fn load(&self) -> Result<crate::train::csv::History, Failure> {
        crate::train::csv::History::load(&self.telemetry, &self.events, self.devices.as_deref())
            .map_err(Failure::runtime)
    }

    /// The files given, in the order above.
    pub fn paths(&self) -> Vec<&std::path::Path> {
        let mut files = vec![self.telemetry.as_path(), self.events.as_path()];
        files.extend(self.devices.as_deref());
        files
    }
}

/// The configuration `--config` names (the defaults without it); what is wrong with it is a
/// usage error.
pub fn load_config(path: Option<&std::path::Path>) -> Result<crate::config::Config, Failure> {
    crate::config::Config::load(path).map_err(Failure::usage)
}

/// A command's failure: its message (one line, naming the file/line/key at fault) and exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    /// Usage and configuration errors exit with 2.
    pub fn usage(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }
    /// Runtime failures exit with 1.
    pub fn runtime(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

pub type CliResult = Result<(), Failure>;

/// Logs go to stderr, filtered by `RUST_LOG` when it is set and parses, else by `default_filter`.
/// Colour codes only when stderr is a terminal and `NO_COLOR` is unset: under systemd, in a pipe
/// or a file the lines stay plain text.
pub(crate) fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Train(a) => train::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Fleet(a) => fleet::run(a),
        Command::Export(a) => export::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Config(a) => config::run(a),
        Command::Openapi(a) => openapi::run(a),
    }
}

/// Resolves on SIGINT or SIGTERM: `serve` and `demo` stop the same way.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
