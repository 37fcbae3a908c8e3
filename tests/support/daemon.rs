//! The daemon in-process: a real embedded broker, a real sled store in a tempdir, the crate's
//! example model written to a temp models dir, an MQTT publisher and an HTTP client, and the
//! telemetry fixtures the daemon tests feed it.

use super::poll::eventually;
use forewarn::config::Config;
pub use forewarn::predict::example::hot_model;
use forewarn::serve::{self, Handle};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token";
pub const HOUR: i64 = 3_600_000;
/// 2015-01-01T00:00:00Z
pub const T0: i64 = 1_420_070_400_000;

/// A temp dir with `models/hot.json` and room for the database.
pub struct Dirs {
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("models")).unwrap();
        hot_model()
            .save(&root.path().join("models/hot.json"))
            .unwrap();
        Dirs { root }
    }
    pub fn models(&self) -> PathBuf {
        self.root.path().join("models")
    }
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
    pub fn path(&self) -> &Path {
        self.root.path()
    }
    /// Writes `toml` as the fleet registry (`fleet.toml`) and returns its path.
    pub fn fleet_file(&self, toml: &str) -> PathBuf {
        let p = self.root.path().join("fleet.toml");
        std::fs::write(&p, toml).unwrap();
        p
    }
}

/// The fleet the daemon tests run: the customer `acme` (Acme Pumps, reached by e-mail) owning
/// one device, `device`, a model P200 (what the example model selects on).
pub fn acme_fleet(device: &str) -> String {
    format!(
        r#"
[[customers]]
id = "acme"
name = "Acme Pumps"
contacts = {{ email = "ops@acme.example" }}
preferences = ["email"]

[[devices]]
id = "{device}"
customer_id = "acme"
attributes = {{ model = "P200" }}
"#
    )
}

/// The fleet of the notifier's daemon tests: `acme` reached by SMS first, then e-mail, owning
/// `pump-1` (no attributes).
pub const ACME_SMS_FLEET: &str = r#"
[[customers]]
id = "acme"
name = "Acme Pumps"
contacts = { sms = "+66810000001", email = "ops@acme.example" }
preferences = ["sms", "email"]

[[devices]]
id = "pump-1"
customer_id = "acme"
"#;

pub fn broker() -> forewarn::broker::EmbeddedBroker {
    // The test's own HTTP clients need rustls' provider too.
    forewarn::tls::install_crypto();
    forewarn::broker::start(&Default::default()).unwrap()
}

pub fn config(broker_url: &str, dirs: &Dirs, client_id: &str) -> Config {
    let mut cfg = Config::default();
    cfg.broker.url = broker_url.into();
    cfg.broker.client_id = client_id.into();
    cfg.broker.reconnect_min = "50ms".parse().unwrap();
    cfg.broker.reconnect_max = "500ms".parse().unwrap();
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.api.tokens = vec![forewarn::api::TokenConfig::Bare(TOKEN.into())];
    cfg.store.data_dir = dirs.data();
    cfg.store.cache_bytes = 8 << 20;
    cfg.scoring.models_dir = dirs.models();
    cfg.dispatch.retry_min = "50ms".parse().unwrap();
    cfg.dispatch.retry_max = "200ms".parse().unwrap();
    // What a device last sent is held for event-time order until its next message or this long.
    cfg.ingest.reorder_idle = Some("100ms".parse().unwrap());
    cfg
}

pub async fn start(cfg: Config) -> (Handle, CancellationToken) {
    let token = CancellationToken::new();
    let h = serve::run(cfg, token.clone()).await.unwrap();
    (h, token)
}

pub async fn stop(h: Handle, token: CancellationToken) {
    token.cancel();
    h.stopped(Duration::from_secs(10)).await;
}

/// Waits until the daemon is ready (broker connected, store writable, models loaded).
pub async fn ready(h: &Handle) {
    let url = format!("http://{}/readyz", h.api_addr);
    let http = reqwest::Client::new();
    eventually("daemon ready", || async {
        http.get(&url)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await;
}

/// How many readings of `device` the daemon has applied: its committed state (the daemon's
/// memory, else the stored snapshot).
pub fn stored_readings(h: &Handle, device: &str) -> u32 {
    h.app
        .device_state(device)
        .unwrap()
        .map_or(0, |s| s.readings)
}

/// Waits (as [`eventually`], `what` naming the wait) until the daemon has applied `n` readings
/// of `device`.
pub async fn readings_applied(h: &Handle, device: &str, n: u32, what: &str) {
    eventually(what, || async { stored_readings(h, device) == n }).await;
}

/// An MQTT client for the test side, with its event loop polled in the background.
pub struct Mqtt {
    pub client: AsyncClient,
    pub incoming: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
}

pub async fn mqtt(broker: &forewarn::broker::EmbeddedBroker, id: &str) -> Mqtt {
    let mut o = MqttOptions::new(id, "127.0.0.1", broker.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    connect(o).await
}

/// A test-side client connected with `o` (its event loop polled in the background, retrying
/// every 50 ms), once the broker has acknowledged the connection (at most 10 s).
pub async fn connect(o: MqttOptions) -> Mqtt {
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut up = Some(up_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(u) = up.take() {
                        let _ = u.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), up_rx)
        .await
        .unwrap()
        .unwrap();
    Mqtt {
        client,
        incoming: rx,
    }
}

impl Mqtt {
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes [`degrading`]`(hours)` as `device`'s telemetry, one reading an hour.
    pub async fn publish_degrading(&self, device: &str, hours: i64) {
        for (i, (hr, t)) in degrading(hours).iter().enumerate() {
            let topic = format!("devices/{device}/telemetry");
            self.publish(&topic, reading(*hr, i as u64 + 1, *t)).await;
        }
    }
}

/// A telemetry payload for hour `h` after T0.
pub fn reading(h: i64, seq: u64, temp: f64) -> String {
    serde_json::json!({"ts": T0 + h * HOUR, "seq": seq, "metrics": {"temp": temp, "volt": 170.0}})
        .to_string()
}

/// A degrading device: 30 hours of normal temperature, then rising above 80.
pub fn degrading(hours: i64) -> Vec<(i64, f64)> {
    (0..hours).map(|h| (h, temperature(h, Some(30)))).collect()
}

/// The temperature of the test fleet's curve at hour `h`: a healthy ripple around 70, and from
/// the hour `degrades_from` (if any) a steady rise from 74 that the example model flags.
pub fn temperature(h: i64, degrades_from: Option<i64>) -> f64 {
    match degrades_from {
        Some(start) if h >= start => 74.0 + (h - start) as f64 * 1.5,
        _ => 70.0 + (h % 3) as f64 * 0.5,
    }
}

/// An HTTP client for the daemon's API that sends [`TOKEN`] (reads need one by default).
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A reqwest client whose every request carries `Authorization: Bearer <token>`.
pub fn http_with_token(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

impl Api {
    pub fn new(h: &Handle) -> Api {
        Api::at(&h.api_addr.to_string())
    }
    /// The API at `addr` (`host:port`), with [`TOKEN`].
    pub fn at(addr: &str) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: http_with_token(TOKEN),
        }
    }
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }
    /// PUTs `body` as JSON to `path`; the answer, whatever its status.
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let url = format!("{}{}", self.base, path);
        self.http.put(url).json(body).send().await.unwrap()
    }
    /// POSTs `body` as JSON to `path`; the answer, whatever its status.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let url = format!("{}{}", self.base, path);
        self.http.post(url).json(body).send().await.unwrap()
    }
    pub async fn tickets(&self, query: &str) -> Vec<serde_json::Value> {
        self.get_json(&format!("/api/v1/tickets{query}"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
    /// Waits for the first ticket of `device` and returns it.
    pub async fn first_ticket(&self, device: &str) -> serde_json::Value {
        let query = format!("?device_id={device}");
        eventually(&format!("a ticket for {device}"), || async {
            !self.tickets(&query).await.is_empty()
        })
        .await;
        self.tickets(&query).await[0].clone()
    }
    /// `GET /readyz`; the answer, whatever its status.
    pub async fn readyz(&self) -> reqwest::Response {
        let url = format!("{}/readyz", self.base);
        self.http.get(url).send().await.unwrap()
    }
    pub async fn metrics(&self) -> String {
        super::http::get_text(&self.http, format!("{}/metrics", self.base)).await
    }
    /// The value of one sample line of /metrics, e.g. `forewarn_rejected_total{reason="invalid_json"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        super::http::sample(&self.metrics().await, sample).unwrap_or(0.0)
    }
}

/// A TCP proxy in front of the broker whose connections can be cut, to simulate broker loss.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, r) = (conns.clone(), refuse.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = l.accept().await else {
                    return;
                };
                if r.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(t.abort_handle());
            }
        });
        Proxy {
            addr,
            conns,
            refuse,
        }
    }
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
    pub fn restore(&self) {
        self.refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
