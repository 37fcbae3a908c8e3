//! `forewarn simulate`: writes a simulated fleet's history in the contract's CSV layout.

use super::{CliResult, Failure};
use crate::domain::Dur;
use crate::sim::{realistic, write_csv, SimConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder for telemetry.csv, events.csv and devices.csv (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Which fleet: `default` (many devices, wear visible for weeks, the demo's fleet) or
    /// `realistic` (few devices, several components, rare failures, noisy error codes,
    /// maintenance, drift, gaps and irregular sampling).
    #[arg(long, value_enum, default_value = "default")]
    pub profile: Profile,
    /// Number of devices [default: 200, realistic: 20].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Days of history [default: 180, realistic: 365].
    #[arg(long)]
    pub days: Option<u64>,
    /// Event time between two readings of a device.
    #[arg(long, default_value = "1h")]
    pub interval: Dur,
    /// Same seed, same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Default,
    Realistic,
}

pub fn run(args: Args) -> CliResult {
    let interval_ms = args.interval.as_millis_i64();
    if interval_ms <= 0 {
        return Err(Failure::usage("--interval must be positive"));
    }
    let (devices, days) = match args.profile {
        Profile::Default => (args.devices.unwrap_or(200), args.days.unwrap_or(180)),
        Profile::Realistic => (args.devices.unwrap_or(20), args.days.unwrap_or(365)),
    };
    if devices == 0 || days == 0 {
        return Err(Failure::usage("--devices and --days must be at least 1"));
    }
    let cfg = SimConfig {
        devices,
        seed: args.seed,
        interval_ms,
        ticks: (days * 86_400_000).div_ceil(interval_ms as u64),
        ..SimConfig::default()
    };
    let bar = ProgressBar::new(cfg.ticks * cfg.devices as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} readings ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let sum = match args.profile {
        Profile::Default => write_csv(&args.out, &cfg, |n| bar.set_position(n)),
        Profile::Realistic => {
            let rcfg = realistic::RealisticConfig {
                devices,
                days,
                seed: args.seed,
                interval_ms,
                ..realistic::RealisticConfig::default()
            };
            realistic::write_csv(&args.out, &rcfg, |n| bar.set_position(n))
        }
    }
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
