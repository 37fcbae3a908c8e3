//! Drill: the disk under the database fills up. The real `forewarn serve` binary keeps its
//! sled database on a small tmpfs mounted by the test (needs root or CAP_SYS_ADMIN; without
//! them the drill is skipped with a note, and fails under `CI=true`). When the disk is full, commits fail: the daemon stops acknowledging, /readyz
//! turns false with `store: false`, and the log says why. When space comes back it recovers by
//! itself, and nothing is lost: every reading applied once, the ticket opened once.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::daemon::{broker, config, degrading, http_with_token, mqtt, reading, Dirs, TOKEN};
use support::http::{get, metric, readyz};
use support::net::free_addr;
use support::poll::wait_until;
use support::process::{sigterm, spawn_serve, wait_ready, write_config};

/// A tmpfs mounted for the drill, unmounted on drop.
///
/// Not an ext4 image on a loop device: tried, and sled keeps writing into the space its log
/// segment already holds, so the drill's few dozen readings never meet ENOSPC there.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.into()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    let _ = f.sync_all();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_and_readiness_and_recovery_loses_nothing() {
    let b = broker();
    let dirs = Dirs::new();
    let mnt = dirs.path().join("disk");
    let Some(_disk) = Tmpfs::mount(&mnt, "16m") else {
        support::ci::cannot_run(
            "drill_disk_full",
            "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN)",
        );
        return;
    };
    let mut cfg = config(&b.url(), &dirs, "fw-disk");
    cfg.store.data_dir = mnt.join("data");
    cfg.ingest.commit_group = 4;
    let addr = free_addr();
    cfg.api.listen = addr.clone();
    let path = write_config(dirs.path(), &cfg);
    let log = dirs.path().join("serve.log");
    let http = http_with_token(TOKEN);
    let mut child = spawn_serve(&path, &log, "info");
    wait_ready(&http, &addr).await;
    let dev = mqtt(&b, "disk-pub").await;
    let series = degrading(48);
    for (i, (hr, t)) in series.iter().enumerate().take(20) {
        dev.publish("devices/disk-1/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    wait_until(
        "first readings committed",
        Duration::from_secs(15),
        || async { metric(&http, &addr, "forewarn_readings_total").await == Some(20.0) },
    )
    .await;

    let filler = mnt.join("filler");
    let filled = fill(&filler);
    for (i, (hr, t)) in series.iter().enumerate().skip(20) {
        dev.publish("devices/disk-1/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    wait_until(
        "readiness reports the store",
        Duration::from_secs(20),
        || async { matches!(readyz(&http, &addr).await, Some((503, b)) if b["store"] == false) },
    )
    .await;
    wait_until(
        "commit failures counted",
        Duration::from_secs(20),
        || async {
            metric(&http, &addr, "forewarn_commit_failures_total")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("not acknowledged"),
        "the log says why:\n{}",
        text.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "disk full after {filled} bytes of filler; log: {}",
        text.lines()
            .filter(|l| l.contains("not acknowledged"))
            .take(1)
            .collect::<String>()
    );

    std::fs::remove_file(&filler).unwrap();
    wait_until("ready again", Duration::from_secs(30), || async {
        matches!(readyz(&http, &addr).await, Some((200, _)))
    })
    .await;
    let store_dir = cfg.store.data_dir.clone();
    wait_until(
        "the ticket opened after recovery",
        Duration::from_secs(30),
        || async {
            get(
                &http,
                &format!("http://{addr}/api/v1/tickets?device_id=disk-1"),
            )
            .await
            .map(|(_, b)| b.contains("disk-1"))
            .unwrap_or(false)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sigterm(&mut child).success(),
        "clean shutdown after recovery"
    );
    let store = forewarn::store::Store::open(&store_dir, 8 << 20).unwrap();
    let st = DeviceState::decode(&store.load_state("disk-1").unwrap().unwrap()).unwrap();
    assert_eq!(st.readings, 48, "every reading applied exactly once");
    assert_eq!(store.tickets(&Default::default()).unwrap().len(), 1);
}
