//! A real nats-server with JetStream for the cluster tests: its own process, a temporary store
//! and a free port, and the subject mapping forewarn's cluster mode expects. Without the binary a
//! test skips with a note, and fails under `CI=true` (see `super::ci`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::{free_ports, listening_within};

pub struct NatsServer {
    child: Child,
    pub port: u16,
    /// NATS's MQTT listener (topic `a/b/c` is subject `a.b.c`).
    pub mqtt_port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    test: String,
}

/// `FOREWARN_NATS_SERVER`, else `nats-server` on the PATH or where Debian puts it.
fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FOREWARN_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts nats-server with JetStream and the mapping `devices.*.*` →
    /// `{prefix}.{{partition(partitions,1)}}.devices.*.*`; `None` (after the note) when the
    /// binary is missing outside CI.
    pub fn start(test: &str, partitions: u32, prefix: &str) -> Option<NatsServer> {
        let Some(bin) = binary() else {
            super::ci::cannot_run(
                test,
                "nats-server not found (install Debian's nats-server, or set FOREWARN_NATS_SERVER)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let [port, mqtt_port] = free_ports::<2>();
        let conf = format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: \"fw-test-{port}\"\n\
             mqtt {{ listen: \"127.0.0.1:{mqtt_port}\" }}\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             mappings = {{\n  \"devices.*.*\": \"{prefix}.{{{{partition({partitions},1)}}}}.devices.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\"\n}}\n",
            store = dir.path().join("js").display(),
        );
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = spawn(test, &bin, dir.path(), port);
        Some(NatsServer {
            child,
            port,
            mqtt_port,
            dir,
            bin,
            test: test.to_string(),
        })
    }

    /// Starts `n` servers routed into one NATS cluster with JetStream (each with the same
    /// mapping, its own store, client and MQTT port) and waits until JetStream answers with a
    /// stream of `n` replicas (the cluster has elected its leaders); `None` as [`NatsServer::start`].
    pub async fn start_cluster(
        test: &str,
        n: usize,
        partitions: u32,
        prefix: &str,
    ) -> Option<Vec<NatsServer>> {
        let Some(bin) = binary() else {
            super::ci::cannot_run(
                test,
                "nats-server not found (install Debian's nats-server, or set FOREWARN_NATS_SERVER)",
            );
            return None;
        };
        assert!((1..=3).contains(&n), "{test}: one to three servers");
        let ports = free_ports::<9>();
        let (clients, mqtts, routes) = (&ports[..n], &ports[3..3 + n], &ports[6..6 + n]);
        let route_list = routes
            .iter()
            .map(|r| format!("\"nats-route://127.0.0.1:{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let (port, mqtt_port) = (clients[i], mqtts[i]);
            let conf = format!(
                "listen: \"127.0.0.1:{port}\"\nserver_name: \"fw-test-{port}\"\n\
                 mqtt {{ listen: \"127.0.0.1:{mqtt_port}\" }}\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{ name: \"fw-test-{first}\", listen: \"127.0.0.1:{route}\", routes: [{route_list}] }}\n\
                 mappings = {{\n  \"devices.*.*\": \"{prefix}.{{{{partition({partitions},1)}}}}.devices.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\"\n}}\n",
                store = dir.path().join("js").display(),
                first = clients[0],
                route = routes[i],
            );
            std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
            let child = spawn(test, &bin, dir.path(), port);
            servers.push(NatsServer {
                child,
                port,
                mqtt_port,
                dir,
                bin: bin.clone(),
                test: test.to_string(),
            });
        }
        wait_jetstream(test, &cluster_urls(&servers), n).await;
        Some(servers)
    }

    /// Starts the server again after [`NatsServer::stop`]: the same port, configuration and
    /// JetStream store, as a restarted machine would.
    pub fn restart(&mut self) {
        let _ = self.child.try_wait();
        self.child = spawn(&self.test, &self.bin, self.dir.path(), self.port);
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGKILL), as a crash or a lost network would.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// The servers' client URLs, as `cluster.url` takes several: separated by commas.
pub fn cluster_urls(servers: &[NatsServer]) -> String {
    servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits (at most 60 s) until a stream of `replicas` copies can be made and removed through
/// `urls`: a new cluster elects its JetStream leaders a few seconds after its servers listen.
async fn wait_jetstream(test: &str, urls: &str, replicas: usize) {
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        let list: Vec<&str> = urls.split(',').collect();
        match async_nats::connect(list.as_slice()).await {
            Ok(client) => {
                let js = async_nats::jetstream::new(client);
                let made = js
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: "READY-PROBE".into(),
                        subjects: vec!["ready-probe".into()],
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await;
                match made {
                    Ok(_) => {
                        let _ = js.delete_stream("READY-PROBE").await;
                        return;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{test}: the NATS cluster's JetStream did not answer within 60 s: {last}");
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs nats-server on `dir`'s configuration (its log appended to `dir/nats.log`) and waits
/// until it listens on `port`.
fn spawn(test: &str, bin: &std::path::Path, dir: &std::path::Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats.log"))
        .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", bin.display()));
    assert!(
        listening_within(port, Duration::from_secs(15)),
        "{test}: nats-server did not listen on {port}: {}",
        std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default()
    );
    child
}
