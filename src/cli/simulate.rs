//! `forewarn simulate`: writes a simulated fleet's history in the contract's CSV layout.

use super::{CliResult, Failure};
use crate::domain::Dur;
use crate::sim::{write_csv, SimConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder for telemetry.csv, events.csv and devices.csv (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Days of history.
    #[arg(long, default_value_t = 180)]
    pub days: u64,
    /// Event time between two readings of a device.
    #[arg(long, default_value = "1h")]
    pub interval: Dur,
    /// Same seed, same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> CliResult {
    let interval_ms = args.interval.as_millis_i64();
    if interval_ms <= 0 {
        return Err(Failure::usage("--interval must be positive"));
    }
    if args.devices == 0 || args.days == 0 {
        return Err(Failure::usage("--devices and --days must be at least 1"));
    }
    let cfg = SimConfig {
        devices: args.devices,
        seed: args.seed,
        interval_ms,
        ticks: (args.days * 86_400_000).div_ceil(interval_ms as u64),
        ..SimConfig::default()
    };
    let bar = ProgressBar::new(cfg.ticks * cfg.devices as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} readings ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let sum = write_csv(&args.out, &cfg, |n| bar.set_position(n))
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.out.display())))?;
    bar.finish_and_clear();
    println!(
        "simulate: {} devices, {} readings, {} failures, {} maintenance, {} errors → {}",
        sum.devices,
        sum.readings,
        sum.failures,
        sum.maintenance,
        sum.errors,
        args.out.display()
    );
    Ok(())
}
