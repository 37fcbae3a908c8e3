//! A small slice of C-MAPSS FD001 (from `../shared/data` beside the repository): train on 20
//! engines, backtest 20 test engines whose series stop before failure, scored against truth.csv.

mod support;

use std::path::{Path, PathBuf};
use support::process::{forewarn, succeeds};

fn data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cmapss-fd001");
    p.exists().then_some(p)
}

/// Copies the rows of the first `n` devices (in file order) of a CSV with a header.
fn head_devices(src: &Path, dst: &Path, n: usize) {
    let body = std::fs::read_to_string(src).unwrap();
    let mut lines = body.lines();
    let mut out = String::from(lines.next().unwrap());
    out.push('\n');
    let mut seen: Vec<&str> = Vec::new();
    for l in lines {
        let id = l.split(',').next().unwrap();
        if !seen.contains(&id) {
            if seen.len() == n {
                break;
            }
            seen.push(id);
        }
        out.push_str(l);
        out.push('\n');
    }
    std::fs::write(dst, out).unwrap();
}

#[test]
fn backtest_of_unseen_engines_reports_rmse_and_phm08_against_truth() {
    let Some(d) = data() else {
        support::ci::cannot_run(
            "train_cmapss_subset",
            "../shared/data/cmapss-fd001 is not beside the repository",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (tr, te) = (tmp.path().join("train"), tmp.path().join("test"));
    std::fs::create_dir_all(&tr).unwrap();
    std::fs::create_dir_all(&te).unwrap();
    for f in ["telemetry.csv", "events.csv"] {
        head_devices(&d.join("train").join(f), &tr.join(f), 20);
        head_devices(&d.join("test").join(f), &te.join(f), 20);
    }
    head_devices(&d.join("test/truth.csv"), &te.join("truth.csv"), 20);
    let model = tmp.path().join("m.json");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    succeeds(
        forewarn()
            .args([
                "train",
                "--telemetry",
                &s(&tr.join("telemetry.csv")),
                "--events",
            ])
            .args([
                &s(&tr.join("events.csv")),
                "--horizon",
                "30h",
                "--estimator",
                "linear",
            ])
            .args(["--out", &s(&model)]),
    );
    let out = succeeds(
        forewarn()
            .args(["evaluate", "--model", &s(&model), "--telemetry"])
            .args([
                &s(&te.join("telemetry.csv")),
                "--events",
                &s(&te.join("events.csv")),
            ])
            .args(["--rmse-cap", "125h"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sum: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(sum["truth"]["devices"], 20, "{sum}");
    let rmse = sum["truth"]["rmse_hours"].as_f64().unwrap();
    assert!(rmse > 5.0 && rmse < 40.0, "rmse {rmse}: {sum}");
    assert!(sum["truth"]["phm08_score"].as_f64().unwrap() > 0.0);
    assert_eq!(sum["readings_level"]["rmse_cap_hours"], 125.0);
}
