//! Shared parts of the drills: the real `forewarn serve` binary as a child process (config file,
//! log captured to a file), its HTTP API, and a Mosquitto broker started by the test.
#![allow(dead_code)]

#[path = "../ci_support/mod.rs"]
pub mod ci;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

pub fn write_config(dir: &Path, cfg: &forewarn::config::Config) -> PathBuf {
    let p = dir.join("forewarn.toml");
    std::fs::write(&p, toml::to_string(cfg).unwrap()).unwrap();
    p
}

/// A `forewarn serve` child process, killed if the test ends (or panics) with it still running.
pub struct Serve(pub Child);

impl std::ops::Deref for Serve {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `forewarn serve --config <config>` with its stdout and stderr appended to `log`.
pub fn spawn_serve(config: &Path, log: &Path, rust_log: &str) -> Serve {
    spawn_serve_with(config, log, rust_log, &[])
}

/// [`spawn_serve`] with more arguments after `--config <config>` (e.g. `--standby`).
pub fn spawn_serve_with(config: &Path, log: &Path, rust_log: &str, more: &[&str]) -> Serve {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = out.try_clone().unwrap();
    Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["serve", "--config"])
        .arg(config)
        .args(more)
        .env_remove("FOREWARN_API_TOKEN")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map(Serve)
        .unwrap()
}

pub fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap()
}

/// GET a URL; `None` when the daemon is not answering.
pub async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let s = r.status().as_u16();
    Some((s, r.text().await.ok()?))
}

/// One sample of a Prometheus text exposition (`name` includes any labels).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

pub async fn metric(http: &reqwest::Client, addr: &str, name: &str) -> Option<f64> {
    let (_, text) = get(http, &format!("http://{addr}/metrics")).await?;
    sample(&text, name)
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub async fn wait_ready(http: &reqwest::Client, addr: &str) {
    let url = format!("http://{addr}/readyz");
    wait_until("serve process ready", Duration::from_secs(30), || async {
        matches!(get(http, &url).await, Some((200, _)))
    })
    .await;
}

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
    ci::cannot_run(test, "the mosquitto binary is not installed");
    None
}

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
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: see {log:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
