//! Scoring one feature row with every mode of `models/demo.json` (classifier, calibration,
//! regressor), the part of `every_reading_scored` (see `hot_path`) that walks the trees:
//! - `demo_compiled`: the compiled trees, as the engine scores;
//! - `demo_stored`: the stored trees walked one node at a time (the reference the compiled
//!   trees are held to, bit for bit).
//!
//! Rows are a fixed pseudo-random set around the demo fleet's values, one feature in ten
//! missing.
//!
//! Run: `cargo bench --bench predict -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forewarn::predict::{Artifact, CompiledMode};
use std::hint::black_box;
use std::path::Path;

fn rows(n_features: usize, n: usize) -> Vec<Vec<f64>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            (0..n_features)
                .map(|_| {
                    let u = next();
                    if u < 0.1 {
                        f64::NAN
                    } else {
                        (next() - 0.3) * 200.0
                    }
                })
                .collect()
        })
        .collect()
}

fn predict(c: &mut Criterion) {
    let demo = include_str!("../models/demo.json");
    let a = Artifact::from_json(demo, Path::new("demo.json")).expect("the demo model loads");
    let compiled: Vec<CompiledMode> = a.modes.iter().map(CompiledMode::new).collect();
    let xs = rows(a.features.len(), 1024);
    let mut g = c.benchmark_group("predict");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    let mut i = 0;
    g.bench_function("demo_compiled", |b| {
        b.iter(|| {
            i = (i + 1) % xs.len();
            for (m, cm) in a.modes.iter().zip(&compiled) {
                black_box(a.score_mode_compiled(m, cm, black_box(&xs[i])));
            }
        })
    });
    g.bench_function("demo_stored", |b| {
        b.iter(|| {
            i = (i + 1) % xs.len();
            for m in &a.modes {
                black_box(a.score_mode(m, black_box(&xs[i])));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, predict);
criterion_main!(benches);
