//! Property tests of the history reader under `BadRows::Fail`, as `forewarn train`/`evaluate`
//! use it (`fuzz_csv` holds its `BadRows::Skip` side): arbitrary
//! bytes never panic; a refused file names the file and the line at fault; what is accepted holds
//! usable device ids and finite (or missing) values.

use forewarn::domain::validate_device_id;
use forewarn::train::csv::{read_devices, read_events, read_telemetry};
use forewarn::train::TrainError;
use proptest::prelude::*;

/// Near-valid telemetry: a good header and rows mixing good and bad cells.
fn telemetry_text() -> impl Strategy<Value = String> {
    let cell = prop_oneof![
        6 => (-1.0e6f64..1.0e6).prop_map(|v| v.to_string()),
        1 => Just(String::new()),
        1 => Just("NaN".to_string()),
        1 => "[a-z,\"\n]{1,3}",
    ];
    let row = (
        prop_oneof![5 => "[a-z0-9-]{1,6}", 1 => Just("a b".to_string())],
        prop_oneof![5 => (0i64..4_000_000_000).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339()), 1 => "[0-9a-z:-]{0,8}"],
        proptest::collection::vec(cell, 2..3),
    )
        .prop_map(|(id, ts, cells)| format!("{id},{ts},{}\n", cells.join(",")));
    proptest::collection::vec(row, 0..20)
        .prop_map(|rows| format!("device_id,ts,a,b\n{}", rows.concat()))
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn check_error(e: &TrainError, name: &str) {
    let msg = e.to_string();
    assert!(msg.contains(name), "error does not name the file: {msg}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_training_readers(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "t.csv", &bytes);
        match read_telemetry(&p) {
            Ok(h) => {
                for d in &h.devices {
                    prop_assert!(validate_device_id(&d.id).is_ok());
                    prop_assert!(d.values.iter().all(|v| v.is_finite() || v.is_nan()));
                }
            }
            Err(e) => check_error(&e, "t.csv"),
        }
        match read_events(&p) {
            Ok(evs) => prop_assert!(evs.iter().all(|e| validate_device_id(&e.device_id).is_ok())),
            Err(e) => check_error(&e, "t.csv"),
        }
        if let Err(e) = read_devices(&p) {
            check_error(&e, "t.csv");
        }
    }

    #[test]
    fn near_valid_telemetry_is_read_or_refused_at_a_named_line(text in telemetry_text()) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "telemetry.csv", text.as_bytes());
        match read_telemetry(&p) {
            Ok(h) => {
                prop_assert_eq!(h.metrics.len(), 2);
                let n: usize = h.devices.iter().map(|d| d.ts.len()).sum();
                prop_assert_eq!(n, h.rows);
                for d in &h.devices {
                    prop_assert_eq!(d.values.len(), d.ts.len() * 2);
                    prop_assert!(d.ts.windows(2).all(|w| w[0] <= w[1]), "sorted by time");
                }
            }
            Err(TrainError::Csv { line, .. }) => {
                prop_assert!(line >= 1 && line as usize <= text.lines().count() + 1);
            }
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
    }
}
