//! Scoring cost of trained artifacts: for each artifact given, the trees each mode holds and the
//! time to score one feature row with every mode (compiled trees, as the engine scores:
//! classifier, calibration and regressor), which is what the engine spends per scoring on top of
//! feature extraction. Rows are drawn from a fixed pseudo-random sequence (some values missing),
//! so every artifact is timed on the same work.
//!
//! Run: `cargo run --release --example score_cost -- MODEL.json [MODEL.json ...]`

use forewarn::predict::{Artifact, CompiledMode, Estimator};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

fn trees(e: &Estimator) -> usize {
    match e {
        Estimator::Trees { trees, .. } => trees.len(),
        Estimator::Linear { .. } => 0,
    }
}

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: score_cost MODEL.json [MODEL.json ...]");
        std::process::exit(2);
    }
    for p in &paths {
        let a = match Artifact::load(Path::new(p)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{p}: {e}");
                std::process::exit(1);
            }
        };
        let n = a.features.len();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let rows: Vec<Vec<f64>> = (0..4096)
            .map(|_| {
                (0..n)
                    .map(|_| {
                        let u = next();
                        if u < 0.02 {
                            f64::NAN
                        } else {
                            (u - 0.5) * 200.0
                        }
                    })
                    .collect()
            })
            .collect();
        let per_mode: Vec<String> = a
            .modes
            .iter()
            .map(|m| {
                format!(
                    "{} {}+{}",
                    m.mode,
                    trees(&m.classifier),
                    m.regressor.as_ref().map_or(0, trees)
                )
            })
            .collect();
        let total: usize = a
            .modes
            .iter()
            .map(|m| trees(&m.classifier) + m.regressor.as_ref().map_or(0, trees))
            .sum();
        let compiled: Vec<CompiledMode> = a.modes.iter().map(CompiledMode::new).collect();
        let passes = 20;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..passes {
                for r in &rows {
                    for (m, c) in a.modes.iter().zip(&compiled) {
                        black_box(a.score_mode_compiled(m, c, black_box(r)));
                    }
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / (passes * rows.len()) as f64;
            best = best.min(ns);
        }
        println!(
            "{p}: {total} trees (classifier+regressor per mode: {}), {best:.0} ns per scoring (best of 5)",
            per_mode.join(", ")
        );
    }
}
