//! Black-box tests of `forewarn train` and `forewarn evaluate` on small generated fleets.

use forewarn::predict::Artifact;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const H: i64 = 3_600_000;

/// Small deterministic generator (xorshift), so the data set is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn noise(&mut self) -> f64 {
        self.next() + self.next() + self.next() - 1.5
    }
}

fn ts(h: i64) -> String {
    forewarn::domain::Timestamp::from_millis(1_600_000_000_000 / H * H + h * H).format()
}

/// A fleet whose `temp` climbs during the last ~60 h before a `bearing` failure. Every fourth
/// device is serviced (maintenance) while degrading, which resets the wear, then runs on; every
/// fifth never fails within the data. `const` never changes and must be dropped.
fn fleet(dir: &Path, devices: usize, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let mut rng = Rng(seed | 1);
    let mut tel = String::from("device_id,ts,temp,vibration,const\n");
    let mut ev = String::from("device_id,ts,kind,code\n");
    let mut dev = String::from("device_id,model,customer_id\n");
    for d in 0..devices {
        let id = format!("pump-{seed}-{d:03}");
        writeln!(
            dev,
            "{id},{},c{}",
            if d % 2 == 0 { "A" } else { "B" },
            d % 3
        )
        .unwrap();
        let life = 150 + (rng.next() * 120.0) as i64;
        let fails = d % 5 != 4;
        let serviced_at = (d % 4 == 3).then_some(life / 2);
        let wear_start = life - 60;
        let end = if fails { life } else { life + 80 };
        for h in 0..=end {
            if serviced_at == Some(h) {
                writeln!(ev, "{id},{},maintenance,bearing", ts(h)).unwrap();
            }
            // Serviced devices degrade before their service, then start fresh.
            let degrading_from = match serviced_at {
                Some(s) if h < s => s - 40,
                _ => wear_start,
            };
            let after_service = serviced_at.is_some_and(|s| h >= s) && h < wear_start;
            let wear = if (fails || h < degrading_from) && !after_service {
                ((h - degrading_from) as f64).max(0.0)
            } else {
                0.0
            };
            let temp = 60.0 + 0.5 * wear + 1.5 * rng.noise();
            let vib = 1.0 + 0.2 * rng.noise();
            writeln!(tel, "{id},{},{temp:.3},{vib:.3},5", ts(h)).unwrap();
            if h % 37 == 5 {
                writeln!(ev, "{id},{},error,E{}", ts(h), h % 3).unwrap();
            }
        }
        if fails {
            writeln!(ev, "{id},{},failure,bearing", ts(life)).unwrap();
        }
    }
    let t = dir.join("telemetry.csv");
    let e = dir.join("events.csv");
    let v = dir.join("devices.csv");
    std::fs::write(&t, tel).unwrap();
    std::fs::write(&e, ev).unwrap();
    std::fs::write(&v, dev).unwrap();
    (t, e, v)
}

fn forewarn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(args)
        .env_remove("FOREWARN__SCORING__INTERVAL")
        .output()
        .expect("run forewarn")
}

/// `forewarn train` on `telemetry` and `events`, with `more` arguments after them.
fn train(telemetry: &Path, events: &Path, more: &[&str]) -> Output {
    let mut args = vec!["train", "--telemetry", s(telemetry), "--events", s(events)];
    args.extend_from_slice(more);
    forewarn(&args)
}

/// Fails the test with the command's stderr unless it succeeded.
fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "last stdout line is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn trained_model_warns_before_unseen_failures_and_evaluate_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let train_dir = tmp.path().join("train");
    let test_dir = tmp.path().join("test");
    std::fs::create_dir_all(&train_dir).unwrap();
    std::fs::create_dir_all(&test_dir).unwrap();
    let (t, e, d) = fleet(&train_dir, 24, 11);
    let model = tmp.path().join("pump.json");
    let out = train(
        &t,
        &e,
        &["--devices", s(&d), "--horizon", "24h", "--out", s(&model)],
    );
    assert_succeeded(&out);
    let summary = last_json(&out);
    assert_eq!(summary["modes"][0]["mode"], "bearing");

    // The artifact is self-describing and loads as the daemon loads it.
    let a = Artifact::load(&model).unwrap();
    assert_eq!(a.horizon_hours, 24.0);
    assert!(a.features.metrics.contains(&"temp".to_string()));
    assert!(
        !a.features.metrics.contains(&"const".to_string()),
        "constant metric kept"
    );
    assert_eq!(a.training.fingerprint.len(), 64);
    assert!(a.modes[0].ttf_cap_hours.is_some() && a.modes[0].regressor.is_some());
    assert!(a.modes[0].validation.roc_auc.is_some());
    assert!(!a.modes[0].threshold_rule.is_empty());
    assert!(a.features.names().iter().any(|n| n == "attr.model=A"));
    assert!(!a.features.names().iter().any(|n| n.contains("customer")));

    // Backtest on a fleet never seen in training.
    let (t2, e2, d2) = fleet(&test_dir, 20, 99);
    let tickets = tmp.path().join("tickets.jsonl");
    let preds = tmp.path().join("predictions.csv");
    let report = tmp.path().join("report");
    let out = forewarn(&[
        "evaluate",
        "--model",
        s(&model),
        "--telemetry",
        s(&t2),
        "--events",
        s(&e2),
        "--devices",
        s(&d2),
        "--tickets-out",
        s(&tickets),
        "--predictions-out",
        s(&preds),
        "--report-dir",
        s(&report),
    ]);
    assert_succeeded(&out);
    let sum = last_json(&out);
    eprintln!("{sum}");
    let recall = sum["tickets"]["recall"].as_f64().unwrap();
    let precision = sum["tickets"]["precision"].as_f64().unwrap();
    assert!(recall >= 0.8, "recall {recall}: {sum}");
    assert!(precision >= 0.8, "precision {precision}: {sum}");
    assert!(
        sum["tickets"]["lead_time_hours"]["median"]
            .as_f64()
            .unwrap()
            > 6.0,
        "{sum}"
    );
    assert!(
        sum["readings_level"]["roc_auc"].as_f64().unwrap() > 0.9,
        "{sum}"
    );

    // One ticket JSON per line, each for a real device, customer from devices.csv.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&tickets)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len() as u64,
        sum["tickets"]["opened"].as_u64().unwrap()
    );
    for t in &lines {
        assert_eq!(t["failure_mode"], "bearing");
        assert!(t["customer_id"].as_str().unwrap().starts_with('c'));
        assert!(t["predicted_failure_at"].is_string());
    }
    let p = std::fs::read_to_string(&preds).unwrap();
    let mut rows = p.lines();
    assert_eq!(
        rows.next(),
        Some("device_id,ts,failure_mode,probability,time_to_failure_hours")
    );
    assert_eq!(
        rows.count() as u64,
        sum["readings_level"]["scorings"].as_u64().unwrap()
    );
    for f in [
        "summary.json",
        "lead_time.svg",
        "precision_recall.svg",
        "ttf_predicted_vs_true.svg",
    ] {
        let body = std::fs::read_to_string(report.join(f)).unwrap();
        assert!(body.len() > 100, "{f} is empty");
    }
}

#[test]
fn linear_baseline_trains_and_is_servable() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, e, _) = fleet(tmp.path(), 15, 5);
    let model = tmp.path().join("base.json");
    let out = train(
        &t,
        &e,
        &[
            "--horizon",
            "24h",
            "--estimator",
            "linear",
            "--out",
            s(&model),
        ],
    );
    assert_succeeded(&out);
    let a = Artifact::load(&model).unwrap();
    assert!(matches!(
        a.modes[0].classifier,
        forewarn::predict::Estimator::Linear { .. }
    ));
}

#[test]
fn a_bad_row_is_reported_with_its_file_and_line_and_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, e, _) = fleet(tmp.path(), 3, 3);
    let mut body = std::fs::read_to_string(&t).unwrap();
    body.push_str("pump-x,2020-01-01T00:00:00Z,NaN,1,5\n");
    let lines = body.lines().count();
    std::fs::write(&t, body).unwrap();
    let out = train(&t, &e, &["--out", s(&tmp.path().join("m.json"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("telemetry.csv:{lines}")) && err.contains("temp"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn usage_and_unsupported_artifacts_exit_with_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, e, _) = fleet(tmp.path(), 3, 3);
    let out = train(&t, &e, &["--horizon", "soon", "--out", "m.json"]);
    assert_eq!(out.status.code(), Some(2));
    let model = tmp.path().join("future.json");
    std::fs::write(&model, r#"{"format":"forewarn-model","format_version":99}"#).unwrap();
    let out = forewarn(&[
        "evaluate",
        "--model",
        s(&model),
        "--telemetry",
        s(&t),
        "--events",
        s(&e),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 99"));
}
