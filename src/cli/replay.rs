//! `forewarn replay`: publishes history files (the contract's CSV layout) as device traffic.

use super::{CliResult, Failure};
use crate::replay::{History, PublishOptions, ReplayError};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// telemetry.csv: `device_id,ts,<metric>…`.
    #[arg(long)]
    pub telemetry: PathBuf,
    /// events.csv: `device_id,ts,kind,code`, merged with the readings in event-time order.
    #[arg(long)]
    pub events: Option<PathBuf>,
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// Messages per second, or `max` for as fast as the broker acknowledges.
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// MQTT QoS: 1 (every message acknowledged; the default) or 0.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Topics are `{prefix}/{device_id}/telemetry` and `{prefix}/{device_id}/events`.
    #[arg(long, default_value = "devices")]
    pub topic_prefix: String,
    /// MQTT client id (default: forewarn-replay-<pid>).
    #[arg(long)]
    pub client_id: Option<String>,
}

/// A `--rate` that is neither a positive number nor `max`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--rate {0:?}: expected messages per second (> 0) or \"max\"")]
pub struct RateError(pub String);

pub fn parse_rate(s: &str) -> Result<Option<f64>, RateError> {
    if s == "max" {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Some(r)),
        _ => Err(RateError(s.to_string())),
    }
}

pub fn run(args: Args) -> CliResult {
    let rate = parse_rate(&args.rate).map_err(Failure::usage)?;
    let qos = match args.qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        q => return Err(Failure::usage(format!("--qos {q}: use 0 or 1"))),
    };
    crate::replay::parse_broker_url(&args.broker).map_err(Failure::usage)?;
    let mut opts = PublishOptions::new(args.broker.clone());
    opts.rate = rate;
    opts.qos = qos;
    if let Some(id) = args.client_id {
        opts.client_id = id;
    }

    let load = |e: ReplayError| match e {
        ReplayError::Header { .. } => Failure::usage(e),
        _ => Failure::runtime(e),
    };
    let spinner = ProgressBar::new_spinner().with_message("reading history");
    spinner.enable_steady_tick(Duration::from_millis(200));
    let mut history = History::default();
    history.read_telemetry_file(&args.telemetry).map_err(load)?;
    if let Some(ev) = &args.events {
        history.read_events_file(ev).map_err(load)?;
    }
    spinner.finish_and_clear();
    for e in &history.first_errors {
        eprintln!("forewarn: skipped {e}");
    }
    if history.row_errors > history.first_errors.len() as u64 {
        eprintln!(
            "forewarn: ... and {} more bad rows",
            history.row_errors - history.first_errors.len() as u64
        );
    }

    let bar = ProgressBar::new(history.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} published, {msg} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(crate::replay::publish(
        history.messages(&args.topic_prefix),
        &opts,
        |published, acked| {
            bar.set_position(published);
            bar.set_message(format!("{acked} acked"));
        },
    ));
    bar.finish_and_clear();
    match result {
        Ok(s) => {
            println!(
                "replay: published {} ({} readings, {} events), acked {}, row errors {}, connection errors {}, {:.1} s, {:.0} msg/s",
                s.published,
                s.readings,
                s.events,
                s.acked,
                history.row_errors,
                s.connection_errors,
                s.seconds,
                s.rate()
            );
            Ok(())
        }
        Err(e) => Err(Failure::runtime(e)),
    }
}
