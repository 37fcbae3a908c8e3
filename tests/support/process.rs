//! The real `forewarn serve` binary as a child process: its config file, its log captured to a
//! file, a SIGTERM, and waiting for its `/readyz` (its metrics: [`super::http`]).

use super::http::get;
use super::poll::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `forewarn` binary under test, ready for its arguments: this build's, or the one
/// `FOREWARN_TEST_BINARY` names (to run a drill against another build, e.g. the previous
/// version's, and see it fail there).
pub fn forewarn() -> Command {
    match std::env::var_os("FOREWARN_TEST_BINARY") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_forewarn")),
    }
}

/// Runs `cmd` to its end; fails the test with its standard error unless it exits 0.
#[track_caller]
pub fn succeeds(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `cfg` as `dir/forewarn.toml`, the file `spawn_serve` is given.
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
    forewarn()
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

/// Polls `/readyz` of the process at `addr` until it answers 200 (at most 30 s).
pub async fn wait_ready(http: &reqwest::Client, addr: &str) {
    let url = format!("http://{addr}/readyz");
    wait_until("serve process ready", Duration::from_secs(30), || async {
        matches!(get(http, &url).await, Some((200, _)))
    })
    .await;
}
