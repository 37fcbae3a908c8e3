//! Shared parts of the backtest-equals-live tests: a simulated history on disk, the tickets
//! `forewarn evaluate` would open for it, the same history replayed through a broker into the real
//! daemon, and a readable comparison of the two ticket sets.

use forewarn::config::Config;
use forewarn::domain::Ticket;
use forewarn::fleet::{Device, FleetFile};
use forewarn::predict::Artifact;
use forewarn::sim::{CsvSummary, SimConfig};
use forewarn::store::TicketFilter;
use forewarn::train::csv::History;
use forewarn::train::evaluate::{evaluate, EvalOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::daemon::stop;
use super::poll::wait_until;

/// The committed demo model: trained on simulated history of the same shape (training a model
/// of that quality takes minutes in a debug build, too long for a test).
pub fn demo_model() -> Artifact {
    Artifact::from_json(forewarn::demo::DEMO_MODEL, Path::new("models/demo.json"))
        .expect("committed demo model parses")
}

/// A simulated history in the contract's CSV layout, written to `dir`.
pub struct SimHistory {
    pub dir: PathBuf,
    pub summary: CsvSummary,
}

impl SimHistory {
    pub fn write(dir: &Path, devices: usize, days: u64, seed: u64) -> SimHistory {
        let cfg = SimConfig::hourly(devices, days, seed);
        let summary = forewarn::sim::write_csv(dir, &cfg, |_| {}).expect("write simulated CSV");
        SimHistory {
            dir: dir.to_path_buf(),
            summary,
        }
    }
    pub fn telemetry(&self) -> PathBuf {
        self.dir.join("telemetry.csv")
    }
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.csv")
    }
    pub fn devices(&self) -> PathBuf {
        self.dir.join("devices.csv")
    }

    /// The history as replay's publisher reads it; every row must read.
    pub fn replay(&self) -> forewarn::replay::History {
        let mut replay = forewarn::replay::History::default();
        replay
            .read_telemetry_file(&self.telemetry())
            .expect("replay telemetry");
        replay
            .read_events_file(&self.events())
            .expect("replay events");
        assert_eq!(replay.row_errors, 0, "{:?}", replay.first_errors);
        replay
    }

    /// Failure modes that failed at least once, with their counts.
    pub fn failures_by_mode(&self) -> BTreeMap<String, usize> {
        let h = History::load(&self.telemetry(), &self.events(), None).expect("history loads");
        let mut out = BTreeMap::new();
        for d in &h.devices {
            for e in &d.events {
                if e.kind == forewarn::domain::EventKind::Failure {
                    *out.entry(e.code.clone()).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// The fleet registry the daemon needs to see what evaluate reads from devices.csv: the
    /// same attributes per device (models read `model` and `install_year`).
    pub fn write_fleet_file(&self, path: &Path) {
        let attrs = forewarn::train::csv::read_devices(&self.devices()).expect("devices.csv");
        let fleet = FleetFile {
            customers: vec![],
            devices: attrs
                .into_iter()
                .map(|(id, attributes)| Device {
                    id: forewarn::domain::DeviceId::try_from(id).expect("device id"),
                    customer_id: None,
                    attributes,
                })
                .collect(),
        };
        std::fs::write(path, toml::to_string(&fleet).expect("fleet TOML")).expect("fleet file");
    }
}

/// The tickets `forewarn evaluate` opens for the history (its `--tickets-out`), final states.
pub fn evaluate_tickets(cfg: &Config, model: Artifact, hist: &SimHistory) -> Vec<Ticket> {
    let h = History::load(&hist.telemetry(), &hist.events(), Some(&hist.devices()))
        .expect("history loads");
    let ev = evaluate(
        model,
        &h,
        None,
        &EvalOptions {
            engine: cfg.engine_config(),
            match_window_h: None,
            rmse_cap_h: None,
        },
    )
    .expect("evaluate");
    ev.tickets
}

/// Where the daemon under test listens and stores.
pub struct DaemonSetup {
    pub broker_url: String,
    /// Device topics are `{topic_prefix}/{device}/telemetry|events`; one level.
    pub topic_prefix: String,
    pub client_id: String,
    pub root: PathBuf,
    /// Publish at most this many messages before waiting for the daemon to receive them: a real
    /// broker drops QoS 1 messages beyond its per-client queue (Mosquitto: 1000) for a
    /// subscriber that falls behind. `None` publishes everything at once.
    pub replay_chunk: Option<usize>,
}

/// The daemon's configuration for a parity run: the defaults (so the engine configuration is the
/// one `evaluate` uses) with the broker, topics, store, models and fleet pointed at the test's.
pub fn daemon_config(s: &DaemonSetup, model: &Artifact, hist: &SimHistory) -> Config {
    let models = s.root.join("models");
    std::fs::create_dir_all(&models).expect("models dir");
    model.save(&models.join("model.json")).expect("save model");
    let fleet = s.root.join("fleet.toml");
    hist.write_fleet_file(&fleet);
    let mut cfg = Config::default();
    cfg.broker.url = s.broker_url.clone();
    cfg.broker.client_id = s.client_id.clone();
    cfg.broker.reconnect_min = "50ms".parse().expect("dur");
    cfg.broker.reconnect_max = "500ms".parse().expect("dur");
    cfg.ingest.telemetry_topics = vec![format!("{}/+/telemetry", s.topic_prefix)];
    cfg.ingest.event_topics = vec![format!("{}/+/events", s.topic_prefix)];
    cfg.ingest.device_id_level = Some(s.topic_prefix.split('/').count());
    cfg.dispatch.topic_prefix = format!("{}/tickets", s.topic_prefix);
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.api.tokens = vec!["parity-token".into()];
    cfg.store.data_dir = s.root.join("data");
    cfg.store.cache_bytes = 16 << 20;
    cfg.scoring.models_dir = models;
    cfg.fleet.file = Some(fleet);
    // Each device's last message is held for event-time order until this idle timer; longer
    // than any pause of the publisher on a loaded machine, so that only the end of the history
    // is released by it.
    cfg.ingest.reorder_idle = Some("1s".parse().expect("dur"));
    cfg
}

/// A device outside the history whose `error` events mark progress: the daemon only records
/// errors for it (no tickets), and its stored state shows the newest marker the daemon committed.
pub const PROBE: &str = "zz-parity-probe";
/// Event time of the first marker (2000-01-01T00:00:00Z); markers count up from it.
pub const MARKER_T0: i64 = 946_684_800_000;

pub fn probe_message(prefix: &str, ts: i64) -> forewarn::replay::Message {
    use forewarn::domain::{DeviceEvent, EventKind};
    forewarn::replay::Message {
        topic: format!("{prefix}/{PROBE}/events"),
        payload: forewarn::ingest::encode::event_payload(&DeviceEvent {
            device_id: forewarn::domain::DeviceId::parse(PROBE).unwrap(),
            ts: forewarn::domain::Timestamp::from_millis(ts),
            kind: EventKind::Error,
            code: "probe".into(),
        }),
        is_reading: false,
    }
}

/// Event time of the newest probe marker the daemon has committed.
fn committed_probe(app: &forewarn::app::App) -> Option<i64> {
    // Committed: the processor holds the core lock from a group's first message to its commit.
    let state = app.device_state(PROBE).ok()??;
    Some(state.last_error_ts.as_millis())
}

/// Starts the real daemon, replays the history through the broker (QoS 1, every PUBACK awaited),
/// waits until the daemon has committed every message and returns its tickets from the store.
pub async fn daemon_tickets(cfg: Config, s: &DaemonSetup, hist: &SimHistory) -> Vec<Ticket> {
    daemon_tickets_arriving(cfg, s, hist, |m| m).await
}

/// Like [`daemon_tickets`], publishing the history's messages in the order `arrival` gives them.
pub async fn daemon_tickets_arriving(
    cfg: Config,
    s: &DaemonSetup,
    hist: &SimHistory,
    arrival: impl FnOnce(Vec<forewarn::replay::Message>) -> Vec<forewarn::replay::Message>,
) -> Vec<Ticket> {
    forewarn::tls::install_crypto();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = forewarn::serve::run(cfg, shutdown.clone())
        .await
        .expect("daemon starts");
    let app = handle.app.clone();
    let mut opts = forewarn::replay::PublishOptions::new(s.broker_url.clone());
    opts.client_id = format!("{}-replay", s.client_id);

    // Connected is not subscribed: a broker drops what is published before the subscription
    // exists. Publish markers until the daemon has committed one.
    let subscribed_deadline = Instant::now() + Duration::from_secs(20);
    let mut marker = MARKER_T0;
    while committed_probe(&app).is_none() {
        assert!(
            Instant::now() < subscribed_deadline,
            "the daemon never received a message through {}",
            s.broker_url
        );
        marker += 1_000;
        forewarn::replay::publish(
            std::iter::once(probe_message(&s.topic_prefix, marker)),
            &opts,
            |_, _| {},
        )
        .await
        .expect("probe publishes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let replay = hist.replay();
    let messages: Vec<forewarn::replay::Message> =
        arrival(replay.messages(&s.topic_prefix).collect());
    assert_eq!(messages.len(), replay.len());
    let base = app.metrics.messages.get();
    let (mut published, mut acked) = (0u64, 0u64);
    for chunk in messages.chunks(s.replay_chunk.unwrap_or(usize::MAX).max(1)) {
        let sum = forewarn::replay::publish(chunk.iter().cloned(), &opts, |_, _| {})
            .await
            .expect("replay publishes");
        published += sum.published;
        acked += sum.acked;
        // Pacing only (a late probe may be counted too): exact completion is the final marker.
        wait_until(
            "the daemon has received the replayed messages",
            Duration::from_secs(60),
            || async { app.metrics.messages.get() >= base + published },
        )
        .await;
    }
    assert_eq!(acked, published, "every publish acknowledged by the broker");
    assert_eq!(published, messages.len() as u64);

    // One subscription keeps the publisher's order: once the daemon has committed a marker
    // published after the history, it has committed the whole history.
    let done = MARKER_T0 + 365 * 86_400_000;
    forewarn::replay::publish(
        std::iter::once(probe_message(&s.topic_prefix, done)),
        &opts,
        |_, _| {},
    )
    .await
    .expect("final marker publishes");
    wait_until(
        "the daemon has committed every replayed message",
        Duration::from_secs(60),
        || async { committed_probe(&app) == Some(done) },
    )
    .await;
    assert_eq!(
        app.metrics.readings.get(),
        replay.readings() as u64,
        "every reading decoded once"
    );
    let tickets = app
        .store
        .tickets(&TicketFilter::default())
        .expect("read tickets");
    drop(app);
    stop(handle, shutdown).await;
    tickets
}

/// What must agree between backtest and live, one line per ticket. Not the id: the daemon's
/// ids are keyed with its own secret (see `tickets::ticket_id`), `evaluate`'s are not.
fn line(t: &Ticket) -> String {
    format!(
        "device={} mode={} opened_at={} status={:?} outcome={:?} priority={:?} updated_at={} probability={:.9} predicted_failure_at={}",
        t.device_id,
        t.failure_mode,
        t.opened_at,
        t.status,
        t.outcome,
        t.priority,
        t.updated_at,
        t.probability,
        t.predicted_failure_at.as_deref().unwrap_or("-"),
    )
}

/// Panics with a line-by-line diff unless both sides hold the same tickets.
pub fn assert_same_tickets(backtest: &[Ticket], live: &[Ticket]) {
    let key = |t: &Ticket| format!("{} {} {}", t.device_id, t.failure_mode, t.opened_at);
    let a: BTreeMap<String, String> = backtest.iter().map(|t| (key(t), line(t))).collect();
    let b: BTreeMap<String, String> = live.iter().map(|t| (key(t), line(t))).collect();
    assert_eq!(a.len(), backtest.len(), "evaluate opened a ticket twice");
    assert_eq!(b.len(), live.len(), "the daemon stored a ticket twice");
    let mut diff = String::new();
    for (id, la) in &a {
        match b.get(id) {
            None => diff.push_str(&format!("- evaluate only: {la}\n")),
            Some(lb) if lb != la => {
                diff.push_str(&format!("~ evaluate: {la}\n  daemon:   {lb}\n"));
            }
            Some(_) => {}
        }
    }
    for (id, lb) in &b {
        if !a.contains_key(id) {
            diff.push_str(&format!("+ daemon only:   {lb}\n"));
        }
    }
    assert!(
        diff.is_empty(),
        "backtest and live tickets differ ({} from evaluate, {} from the daemon):\n{diff}",
        backtest.len(),
        live.len()
    );
}

/// The history's messages in publishing order as the MQTT driver hands them to the processing
/// thread (all received now): for tests that feed a daemon's commit path themselves.
pub fn inbound(hist: &SimHistory) -> Vec<forewarn::ingest::mqtt::Inbound> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    hist.replay()
        .messages("devices")
        .map(|m| forewarn::ingest::mqtt::Inbound {
            publish: forewarn::ingest::mqtt::Publish::new(m.topic, m.payload),
            received: Instant::now(),
            received_ms: now_ms,
        })
        .collect()
}

/// An in-process broker and the parity configuration of a daemon under `root` whose commit path
/// the test feeds itself ([`inbound`]): the broker only carries what the daemon publishes. Keep
/// the broker for as long as the daemon runs.
#[cfg(feature = "embedded-broker")]
pub fn fed_daemon_config(
    hist: &SimHistory,
    root: &Path,
    client_id: &str,
) -> (forewarn::broker::EmbeddedBroker, Config) {
    let broker = forewarn::broker::start(&Default::default()).expect("in-process broker");
    let setup = DaemonSetup {
        broker_url: broker.url(),
        topic_prefix: "devices".into(),
        client_id: client_id.into(),
        root: root.to_path_buf(),
        replay_chunk: None,
    };
    let cfg = daemon_config(&setup, &demo_model(), hist);
    (broker, cfg)
}
