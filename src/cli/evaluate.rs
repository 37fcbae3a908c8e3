//! `forewarn evaluate`: backtest a model over history with the daemon's own engine.

use super::{load_config, CliResult, Failure, HistoryFiles};
use crate::domain::Dur;
use crate::predict::Artifact;
use crate::train::evaluate::{self, EvalOptions};
use crate::train::report;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model artifact written by `forewarn train`.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub history: HistoryFiles,
    /// Every ticket the daemon would have opened, one JSON object per line (final state).
    #[arg(long)]
    pub tickets_out: Option<PathBuf>,
    /// Every scoring: device_id,ts,failure_mode,probability,time_to_failure_hours
    #[arg(long)]
    pub predictions_out: Option<PathBuf>,
    /// Folder for summary.json and the plots.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A ticket is correct when the failure follows within this [default: 2 × the model's horizon].
    #[arg(long)]
    pub match_window: Option<Dur>,
    /// Cap on true time to failure for RMSE and PHM08 [default: the model's training cap].
    #[arg(long)]
    pub rmse_cap: Option<Dur>,
    /// Remaining life at each device's last reading [default: truth.csv beside the telemetry, if any].
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, Failure> {
    std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}

pub fn run(args: Args) -> CliResult {
    let started = std::time::Instant::now();
    let cfg = load_config(args.config.as_deref())?;
    let artifact = Artifact::load(&args.model).map_err(Failure::usage)?;
    if !cfg.features.window().serves(&artifact.features.window) {
        return Err(Failure::usage(format!(
            "{}: model was trained with windows {:?} but the configuration keeps {:?} ([features])",
            args.model.display(),
            artifact.features.window,
            cfg.features.window()
        )));
    }
    let history = args.history.load()?;
    let truth_path = args.truth.clone().or_else(|| {
        let p = args.history.telemetry.parent()?.join("truth.csv");
        p.exists().then_some(p)
    });
    let truth = truth_path
        .as_deref()
        .map(evaluate::read_truth)
        .transpose()
        .map_err(Failure::runtime)?;
    let opts = EvalOptions {
        engine: cfg.engine_config(),
        match_window_h: args.match_window.map(Dur::as_hours_f64),
        rmse_cap_h: args.rmse_cap.map(Dur::as_hours_f64),
    };
    let ev =
        evaluate::evaluate(artifact, &history, truth.as_ref(), &opts).map_err(Failure::runtime)?;
    if let Some(p) = &args.tickets_out {
        let mut w = create(p)?;
        for t in &ev.tickets {
            let line = serde_json::to_string(t).map_err(Failure::runtime)?;
            writeln!(w, "{line}").map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?;
        }
        w.flush()
            .map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?;
    }
    if let Some(p) = &args.predictions_out {
        let mut w = create(p)?;
        let io = |e: std::io::Error| Failure::runtime(format!("{}: {e}", p.display()));
        writeln!(
            w,
            "device_id,ts,failure_mode,probability,time_to_failure_hours"
        )
        .map_err(io)?;
        for s in &ev.scorings {
            let ttf = s.ttf_hours.map_or(String::new(), |h| format!("{h:.3}"));
            writeln!(
                w,
                "{},{},{},{:.6},{}",
                s.device_id,
                s.ts.format(),
                s.mode,
                s.probability,
                ttf
            )
            .map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    if let Some(d) = &args.report_dir {
        report::write_report(d, &ev).map_err(Failure::runtime)?;
    }
    let mut summary = serde_json::to_value(&ev.summary).map_err(Failure::runtime)?;
    summary["seconds"] = ((started.elapsed().as_secs_f64() * 100.0).round() / 100.0).into();
    println!("{summary}");
    Ok(())
}
