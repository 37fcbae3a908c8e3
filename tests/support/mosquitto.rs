//! A Mosquitto broker process started by a test with its own configuration (the drills stop,
//! restart and reconfigure it), and where to find the binary.

use super::net::{free_port, listening_within};
use super::process::sigterm;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Mosquitto binary, or None (with a note on stderr) when it is not installed; under
/// `CI=true` a missing binary fails the test (a broker already listening is not enough: the
/// drills start, stop and reconfigure their own).
pub fn mosquitto_bin(test: &str) -> Option<PathBuf> {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return Some(p.into());
        }
    }
    if let Ok(o) = Command::new("which").arg("mosquitto").output() {
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !s.is_empty() {
            return Some(s.into());
        }
    }
    super::ci::cannot_run(test, "the mosquitto binary is not installed");
    None
}

/// Room for a whole replayed history in the session of an absent client (nothing dropped),
/// and an in-flight window above `ingest.commit_group`.
pub const ROOMY: &str =
    "allow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 100000\npersistence false\n";

/// A Mosquitto process started by a test with its own configuration file.
pub struct Mosquitto {
    pub bin: PathBuf,
    pub conf: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes `conf_body` (the listener line is the caller's) to `dir/mosquitto.conf` and starts it.
    pub fn start(bin: &Path, dir: &Path, port: u16, conf_body: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, conf_body).unwrap();
        let mut m = Mosquitto {
            bin: bin.into(),
            conf,
            port,
            child: None,
        };
        m.restart();
        m
    }
    /// [`Mosquitto::start`] listening on a free loopback port, `conf_rest` after the listener.
    pub fn on_free_port(bin: &Path, dir: &Path, conf_rest: &str) -> Mosquitto {
        let port = free_port();
        let conf = format!("listener {port} 127.0.0.1\n{conf_rest}");
        Mosquitto::start(bin, dir, port, &conf)
    }
    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = self.conf.with_file_name("mosquitto.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(
            listening_within(self.port, Duration::from_secs(10)),
            "mosquitto did not start: see {log:?}"
        );
    }
    /// Stops the broker (SIGTERM: Mosquitto writes its persistence file on the way out).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&mut c);
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The long-running broker the `e2e_mosquitto*` tests share (`.ci/run` starts it):
/// `FOREWARN_MOSQUITTO` as `host:port`, else Mosquitto's default port on loopback.
pub fn shared_addr() -> String {
    std::env::var("FOREWARN_MOSQUITTO").unwrap_or_else(|_| "127.0.0.1:1883".into())
}

/// A simulated fleet's item as the device would publish it under `prefix/<device>/…`
/// (a malformed payload goes where the device's telemetry goes).
pub fn sim_message(prefix: &str, e: &forewarn::sim::SimEvent) -> forewarn::replay::Message {
    use forewarn::ingest::encode::{event_payload, to_payload};
    use forewarn::replay::Message;
    use forewarn::sim::SimEvent;
    match e {
        SimEvent::Reading(r) => Message {
            topic: format!("{prefix}/{}/telemetry", r.device_id),
            payload: to_payload(r),
            is_reading: true,
        },
        SimEvent::Event(ev) => Message {
            topic: format!("{prefix}/{}/events", ev.device_id),
            payload: event_payload(ev),
            is_reading: false,
        },
        SimEvent::Malformed { device_id, payload } => Message {
            topic: format!("{prefix}/{device_id}/telemetry"),
            payload: payload.clone(),
            is_reading: true,
        },
    }
}
