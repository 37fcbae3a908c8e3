//! Drill: kill -9 at random moments. The real `forewarn serve` binary consumes a replay of six
//! devices (four degrading) from an in-process broker and notifies the owners by SMS through a
//! fake Twilio that records idempotency keys. It is killed with SIGKILL at random moments
//! (`FOREWARN_DRILL_KILLS`, default 20) and restarted on the same database each time. The final
//! tickets must equal those of an uninterrupted run — none missing, none duplicated — every
//! reading must be applied exactly once, and each customer must get exactly the messages of the
//! uninterrupted run, each exactly once: the fake, like Twilio, does not de-duplicate, so after
//! a kill between "sent" and "recorded" the daemon must find the message in the provider's
//! Messages list instead of sending it again.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::daemon::{broker, config, mqtt, reading, temperature, Dirs};
use support::http::{get, metric};
use support::net::free_addr;
use support::notify::providers::{Fakes, Mode};
use support::process::{sigterm, spawn_serve, wait_ready, write_config, Serve};

const DEVICES: usize = 6;
const HOURS: i64 = 60;

fn device(i: usize) -> String {
    format!("k9-{i}")
}

fn phone(i: usize) -> String {
    format!("+6681000010{i}")
}

/// Device i: the first four degrade (at different hours), the last two stay healthy.
fn temp(i: usize, h: i64) -> f64 {
    temperature(h, (i < 4).then(|| 20 + 4 * i as i64))
}

/// Every reading of the replay, interleaved across devices in event-time order.
fn replay() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for h in 0..HOURS {
        for i in 0..DEVICES {
            out.push((
                format!("devices/{}/telemetry", device(i)),
                reading(h, h as u64 + 1, temp(i, h)),
            ));
        }
    }
    out
}

fn fleet() -> String {
    let mut s = String::new();
    for i in 0..DEVICES {
        s.push_str(&format!(
            "[[customers]]\nid = \"c{i}\"\nname = \"Customer {i}\"\ntime_zone = \"UTC\"\n\
             contacts = {{ sms = \"{}\" }}\npreferences = [\"sms\"]\n\n\
             [[devices]]\nid = \"{}\"\ncustomer_id = \"c{i}\"\n\n",
            phone(i),
            device(i)
        ));
    }
    s
}

struct Run {
    broker: forewarn::broker::EmbeddedBroker,
    fakes: Fakes,
    dirs: Dirs,
    addr: String,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

async fn setup(name: &str) -> Run {
    let broker = broker();
    let fakes = Fakes::start().await;
    // The provider takes its time to answer (the message is recorded first), so kills land
    // between "sent" and "recorded as sent" and the restarted daemon repeats the request.
    fakes.set("sms", Mode::Hang(400));
    let dirs = Dirs::new();
    let fleet_path = dirs.fleet_file(&fleet());
    let mut cfg = config(&broker.url(), &dirs, name);
    let addr = free_addr();
    cfg.api.listen = addr.clone();
    cfg.fleet.file = Some(fleet_path);
    // Small commit groups: many commits, so kills land between and inside them.
    cfg.ingest.commit_group = 8;
    cfg.notify.poll_interval = "50ms".parse().unwrap();
    cfg.notify.retry_min = "50ms".parse().unwrap();
    cfg.notify.retry_max = "200ms".parse().unwrap();
    cfg.notify.send_timeout = "2s".parse().unwrap();
    cfg.notify.link_secret = Some("drill-link-secret-0123456789".into());
    cfg.notify.sms = Some(fakes.twilio());
    let config = write_config(dirs.path(), &cfg);
    let log = dirs.path().join("serve.log");
    Run {
        broker,
        fakes,
        dirs,
        addr,
        config,
        log,
        http: reqwest::Client::new(),
    }
}

/// Starts the daemon for the last time (unless it is running), waits until every reading is
/// applied and the provider has been quiet for a while, stops it cleanly and returns the store's
/// view.
/// Lets the daemon settle (no new reading or SMS for 1.5 s, and at least `at_least` readings
/// counted by this process: on a loaded machine the publisher's tail can pause longer than the
/// settle time), stops it and reads what its data directory holds.
async fn finish(run: &Run, running: Option<Serve>, at_least: f64) -> Outcome {
    let mut child = running.unwrap_or_else(|| spawn_serve(&run.config, &run.log, "warn"));
    wait_ready(&run.http, &run.addr).await;
    let mut last = (f64::NAN, usize::MAX);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = metric(&run.http, &run.addr, "forewarn_readings_total")
            .await
            .unwrap_or(-1.0);
        let sent = run.fakes.requests("sms");
        if (n, sent) != last {
            last = (n, sent);
            stable_since = Instant::now();
        } else if n >= at_least && stable_since.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon never settled");
    }
    assert!(sigterm(&mut child).success(), "SIGTERM is a clean shutdown");
    let store = forewarn::store::Store::open(&run.dirs.data(), 8 << 20).unwrap();
    let mut readings = BTreeMap::new();
    for i in 0..DEVICES {
        let st = store
            .load_state(&device(i))
            .unwrap()
            .map(|b| DeviceState::decode(&b).unwrap());
        readings.insert(device(i), st.map(|s| s.readings).unwrap_or(0).into());
    }
    // Not the id: each data directory keys its ticket ids with its own secret.
    let mut tickets = store
        .tickets(&Default::default())
        .unwrap()
        .into_iter()
        .map(|t| {
            format!(
                "{} {} {:?} {:?} p={:.6} opened={} fails={:?}",
                t.device_id,
                t.failure_mode,
                t.status,
                t.priority,
                t.probability,
                t.opened_at,
                t.predicted_failure_at
            )
        })
        .collect::<Vec<_>>();
    tickets.sort();
    let mut messages: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys = std::collections::HashSet::new();
    let mut repeated = 0;
    for d in run.fakes.delivered("sms") {
        assert!(!d.idempotency.is_empty(), "every message has a key");
        // The SMS API does not de-duplicate: a message sent twice (one key, two requests) is a
        // customer texted twice.
        if !keys.insert(d.idempotency.clone()) {
            repeated += 1;
            continue;
        }
        *messages.entry(d.to).or_default() += 1;
    }
    Outcome {
        readings,
        tickets,
        messages,
        requests: run.fakes.requests("sms"),
        repeated,
    }
}

#[derive(Debug)]
struct Outcome {
    readings: BTreeMap<String, u64>,
    tickets: Vec<String>,
    messages: BTreeMap<String, usize>,
    requests: usize,
    /// Messages delivered a second time (same key) after a kill between send and record.
    repeated: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_leaves_the_tickets_and_messages_of_an_uninterrupted_run() {
    let kills: usize = std::env::var("FOREWARN_DRILL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FOREWARN_DRILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("drill_kill9: {kills} kills, FOREWARN_DRILL_SEED={seed}");
    let started = Instant::now();
    let traffic = replay();

    // The uninterrupted run.
    let reference = setup("fw-k9-ref").await;
    let child = spawn_serve(&reference.config, &reference.log, "warn");
    wait_ready(&reference.http, &reference.addr).await;
    let dev = mqtt(&reference.broker, "k9-ref-pub").await;
    for (topic, payload) in &traffic {
        dev.publish(topic, payload.clone()).await;
    }
    // Every reading reaches the uninterrupted run's one process.
    let want = finish(&reference, Some(child), traffic.len() as f64).await;
    eprintln!("reference: {want:?} ({:?})", started.elapsed());
    for i in 0..DEVICES {
        assert_eq!(want.readings[&device(i)], HOURS as u64);
    }
    assert_eq!(want.tickets.len(), 4, "one ticket per degrading device");
    assert_eq!(want.messages.len(), 4, "each of their owners notified");

    // The same replay, killed at random moments.
    let run = setup("fw-k9-drill").await;
    // The daemon's persistent session must exist before the devices publish.
    let mut first = spawn_serve(&run.config, &run.log, "warn");
    wait_ready(&run.http, &run.addr).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let dev = mqtt(&run.broker, "k9-drill-pub").await;
    // The devices publish at a steady pace across the whole drill, daemon up or not.
    let pace = Duration::from_millis(550 * kills as u64 / traffic.len() as u64 + 1);
    let publisher = tokio::spawn(async move {
        for (topic, payload) in &traffic {
            dev.publish(topic, payload.clone()).await;
            tokio::time::sleep(pace).await;
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed_ready = 0;
    for k in 0..kills {
        let mut child = spawn_serve(&run.config, &run.log, "warn");
        // Anywhere from start-up (store open, broker connect) to deep in the backlog.
        let after = Duration::from_millis(rng.random_range(5..900));
        tokio::time::sleep(after).await;
        if matches!(
            get(&run.http, &format!("http://{}/readyz", run.addr)).await,
            Some((200, _))
        ) {
            killed_ready += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("kill {k}: {after:?} after start");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
    }
    publisher.await.unwrap();
    // The last process counts only what it took after its start.
    let got = finish(&run, None, 0.0).await;
    eprintln!(
        "drill: {got:?}; {killed_ready}/{kills} kills landed after ready; {:?} in all",
        started.elapsed()
    );
    assert_eq!(
        got.readings, want.readings,
        "every reading applied exactly once"
    );
    assert_eq!(
        got.tickets, want.tickets,
        "the tickets of the uninterrupted run"
    );
    assert_eq!(
        got.messages, want.messages,
        "each customer got the messages of the uninterrupted run"
    );
    assert_eq!(
        got.repeated, 0,
        "exactly one SMS per notification: {} sent twice after {kills} kills",
        got.repeated
    );
    assert_eq!(
        got.requests, want.requests,
        "no second request for any message"
    );
    eprintln!(
        "{} provider requests for {} messages; {} look-ups of the Messages list after kills",
        got.requests,
        got.messages.values().sum::<usize>(),
        run.fakes.requests("sms_list")
    );
}
