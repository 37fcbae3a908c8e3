//! Property tests of the history reader under `BadRows::Skip`, as `forewarn replay` uses it:
//! arbitrary bytes never panic, and every data row of a file with a usable header is either
//! accepted or reported with its line number — never silently lost. (`fuzz_train_csv` holds the
//! same reader to its `BadRows::Fail` side.)

use forewarn::replay::History;
use proptest::prelude::*;
use std::path::Path;

fn cell() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        6 => (-1.0e6f64..1.0e6).prop_map(|v| (format!("{v}"), true)),
        1 => Just((String::new(), true)),
        1 => Just(("NaN".to_string(), false)),
        1 => Just(("inf".to_string(), false)),
        1 => "[a-z\"]{1,4}".prop_map(|s| (s, false)),
    ]
}

fn row() -> impl Strategy<Value = (String, bool)> {
    (
        prop_oneof![5 => "[a-z0-9-]{1,8}", 1 => Just("a/b".to_string()), 1 => Just(String::new())],
        prop_oneof![5 => (0i64..4_000_000_000).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339()), 1 => "[a-z]{0,5}"],
        proptest::collection::vec(cell(), 1..5),
    )
        .prop_map(|(id, ts, cells)| {
            let id_ok = !id.is_empty() && !id.contains('/');
            let ts_ok = chrono::DateTime::parse_from_rfc3339(&ts).is_ok();
            // The header has three metrics: a row with another field count is an error.
            let shape_ok = cells.len() == 3;
            let cells_ok = cells.iter().all(|(_, ok)| *ok) && cells.iter().any(|(c, _)| !c.is_empty());
            let quoted = cells.iter().any(|(c, _)| c.contains('"'));
            let text = format!(
                "{id},{ts},{}",
                cells.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(",")
            );
            (text, id_ok && ts_ok && shape_ok && cells_ok && !quoted)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut h = History::default();
        let _ = h.read_telemetry(&bytes[..], Path::new("t.csv"));
        let _ = h.read_events(&bytes[..], Path::new("e.csv"));
        // Whatever was accepted can be published.
        for m in h.messages("devices") {
            prop_assert!(m.topic.starts_with("devices/"));
        }
    }

    #[test]
    fn every_row_is_accepted_or_reported_with_its_line(rows in proptest::collection::vec(row(), 0..30)) {
        let text = format!(
            "device_id,ts,a,b,c\n{}",
            rows.iter().map(|(r, _)| format!("{r}\n")).collect::<String>()
        );
        let mut h = History::default();
        h.read_telemetry(text.as_bytes(), Path::new("t.csv")).unwrap();
        let good = rows.iter().filter(|(_, ok)| *ok).count();
        let quoted = rows.iter().any(|(r, _)| r.contains('"'));
        if !quoted {
            prop_assert_eq!(h.readings(), good);
            prop_assert_eq!(h.readings() as u64 + h.row_errors, rows.len() as u64);
            for e in &h.first_errors {
                prop_assert!(e.line >= 2 && e.line <= rows.len() as u64 + 1, "{}", e);
            }
        }
        let mut last = i64::MIN;
        for m in h.messages("devices") {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap().timestamp_millis();
            prop_assert!(ts >= last);
            last = ts;
        }
    }
}
