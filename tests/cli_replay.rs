//! `forewarn replay` and `forewarn simulate` from the outside: exit codes and messages that need
//! no broker.

mod support;

use support::process::forewarn;

#[test]
fn usage_errors_exit_2_naming_the_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let tel = dir.path().join("t.csv");
    std::fs::write(&tel, "id,ts,temp\nx,2025-01-01T00:00:00Z,1\n").unwrap();
    let out = forewarn()
        .args(["replay", "--rate", "fast", "--telemetry"])
        .arg(&tel)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    let out = forewarn()
        .args(["replay", "--telemetry"])
        .arg(&tel)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t.csv: header has no \"device_id\" column"),
        "{err}"
    );
}

#[test]
fn unreachable_broker_is_a_runtime_failure_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let tel = dir.path().join("t.csv");
    std::fs::write(&tel, "device_id,ts,temp\nx,2025-01-01T00:00:00Z,1\n").unwrap();
    // A port nobody listens on: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = forewarn()
        .args([
            "replay",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--telemetry",
        ])
        .arg(&tel)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn simulate_writes_the_csv_layout_that_replay_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = forewarn()
        .args([
            "simulate",
            "--devices",
            "5",
            "--days",
            "3",
            "--seed",
            "4",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 devices, 360 readings"), "{stdout}");
    let mut h = forewarn::replay::History::default();
    h.read_telemetry_file(&dir.path().join("telemetry.csv"))
        .unwrap();
    h.read_events_file(&dir.path().join("events.csv")).unwrap();
    assert_eq!(h.readings(), 360);
    assert_eq!(h.row_errors, 0);
}
