//! The synthetic model artifact (`sim::synthetic_model`, gradient-boosted in shape) scored three
//! ways — stored trees, compiled trees, and through the engine — must agree to the bit. These
//! live here rather than beside `predict` and `engine` because the model comes from the
//! simulator, which builds on both.

use forewarn::domain::{DeviceEvent, EventKind, Ticket};
use forewarn::engine::{DeviceCtx, Engine, EngineConfig, Models};
use forewarn::features::DeviceState;
use forewarn::predict::CompiledMode;
use forewarn::sim::{synthetic_model, Fleet, SimConfig, SimEvent, MODES};
use std::sync::Arc;

#[test]
fn compiled_trees_score_the_same_bits_as_the_stored_trees() {
    use rand::{Rng, SeedableRng};
    let a = synthetic_model(3, 40, 6, 11);
    let n = a.features.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut compiled_any = false;
    for mm in &a.modes {
        let c = CompiledMode::new(mm);
        compiled_any |= c.has_compiled_classifier();
        for _ in 0..2_000 {
            let x: Vec<f64> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0 => f64::NAN,
                    _ => rng.random_range(-500.0..500.0),
                })
                .collect();
            let plain = a.score_mode(mm, &x);
            let fast = a.score_mode_compiled(mm, &c, &x);
            assert_eq!(plain.probability.to_bits(), fast.probability.to_bits());
            assert_eq!(
                plain.ttf_hours.map(f64::to_bits),
                fast.ttf_hours.map(f64::to_bits)
            );
        }
    }
    assert!(compiled_any);
}

#[test]
fn each_mode_scores_what_its_own_extraction_and_stored_trees_give() {
    let cfg = EngineConfig {
        scoring_interval_ms: 0,
        ..EngineConfig::default()
    };
    let a = synthetic_model(3, 30, 5, 3);
    let models = Models::new(vec![a.clone()], &cfg.window).unwrap();
    let ids = a.features.resolve(&models.index);
    // Every scoring with its estimate, as `evaluate` asks (a daemon runs the regressor only
    // where its estimate is read).
    let e = Engine::new(cfg, Arc::new(models)).estimating_every_scoring();
    let fleet = Fleet::new(SimConfig {
        devices: 3,
        ticks: 400,
        interval_ms: 60_000,
        seed: 9,
        ..SimConfig::default()
    });
    let mut states: std::collections::HashMap<String, (DeviceState, Vec<Ticket>)> =
        Default::default();
    let (mut ch, mut sc, mut x) = (vec![], vec![], vec![]);
    let mut checked = 0;
    for (i, ev) in fleet.enumerate() {
        let r = match ev {
            SimEvent::Reading(r) => r,
            _ => continue,
        };
        let (st, live) = states
            .entry(r.device_id.to_string())
            .or_insert_with(|| (e.new_state(r.ts), vec![]));
        if i == 600 {
            // One mode's clock restarts: its rows now differ from the other modes'.
            let ev = DeviceEvent {
                device_id: r.device_id.clone(),
                ts: r.ts - 1,
                kind: EventKind::Maintenance,
                code: MODES[1].into(),
            };
            e.event(st, live, &ev, &mut ch);
        }
        sc.clear();
        e.reading(st, live, DeviceCtx::default(), &r, &mut ch, Some(&mut sc));
        for (s, mm) in sc.iter().zip(&a.modes) {
            x.clear();
            a.features.extract(st, &ids, &mm.mode, None, r.ts, &mut x);
            let want = a.score_mode(mm, &x);
            assert_eq!(&*s.mode, mm.mode.as_str());
            assert_eq!(s.probability.to_bits(), want.probability.to_bits());
            assert_eq!(
                s.ttf_hours.map(f64::to_bits),
                want.ttf_hours.map(f64::to_bits)
            );
            checked += 1;
        }
    }
    assert!(checked > 1_000, "{checked}");
}
