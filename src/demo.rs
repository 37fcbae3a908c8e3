//! `forewarn demo`: the whole system on one machine with nothing installed.
//!
//! An embedded MQTT broker, the daemon (the same `serve::run` as production) loaded with the
//! committed demo model, a simulated fleet publishing telemetry and device events through the
//! broker in accelerated event time, and a field-service console that subscribes to the ticket
//! topic. Each failure is checked against the tickets that came before it, so a newcomer sees
//! tickets open *before* the simulated failures, with their lead time.

use crate::config::Config;
use crate::domain::EventKind;
use crate::domain::{Status, Ticket, Timestamp};
use crate::fleet::{Channel, Customer, Device};
use crate::sim::{Fleet, SimConfig, SimEvent};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The demo model, trained on simulated history (see README "The demo model").
pub const DEMO_MODEL: &str = include_str!("../models/demo.json");

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub devices: usize,
    /// Simulated hours of event time per wall-clock second.
    pub sim_hours_per_second: f64,
    /// How long the fleet publishes on an idle machine: with `sim_hours_per_second`, the span
    /// of event time the demo shows (a busy machine takes longer, up to `wall_guard`).
    pub duration: Duration,
    /// The longest the fleet publishes on a busy machine before it stops early and says so
    /// (the CLI: ten times `duration`, [`DemoOptions::default_wall_guard`]).
    pub wall_guard: Duration,
    /// Where the API listens (falls back to a free port when taken).
    pub listen: String,
    /// Keep the daemon and API up after the fleet stops, until Ctrl-C.
    pub keep_running: bool,
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    /// A configuration file whose `[notify]` providers (an SMTP server, a Twilio account…)
    /// replace the local sink for the channels it configures.
    pub config: Option<PathBuf>,
    /// Fraction of readings the simulated devices send malformed (the CLI's default: 0.0005).
    pub malformed_fraction: f64,
}

/// How many times its publishing duration the demo waits for a busy machine before it stops
/// the fleet early (and says so), unless told otherwise.
const WALL_GUARD_FACTOR: u32 = 10;

impl DemoOptions {
    /// The CLI's wall-clock guard for a publishing `duration`: ten times it.
    pub fn default_wall_guard(duration: Duration) -> Duration {
        duration.saturating_mul(WALL_GUARD_FACTOR)
    }
}

/// The share of malformed payloads the demo's devices send unless told otherwise.
pub const MALFORMED_FRACTION: f64 = 0.0005;

/// What the demo saw, for the summary (and the test that runs it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DemoSummary {
    pub readings: u64,
    pub malformed: u64,
    pub tickets_opened: usize,
    pub failures: usize,
    /// Failures that a live ticket for the same device and mode announced beforehand.
    pub failures_forewarned: usize,
    /// Lead times (hours of event time) of the forewarned failures.
    pub lead_hours: Vec<f64>,
    pub api_addr: String,
    /// Customer messages the notification sink received.
    pub messages: usize,
    /// Simulated customer replies that landed on a ticket.
    pub replies: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("demo: {path}: {source}")]
    Models {
        path: String,
        source: std::io::Error,
    },
    #[error("demo: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("demo: notification sink: {0}")]
    Sink(#[source] std::io::Error),
    #[error("demo: {0}")]
    Fleet(#[from] crate::app::CoreError),
    #[error("demo: {0}")]
    BrokerUrl(#[from] crate::replay::ReplayError),
    #[error("demo: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error("demo: simulated device: {0}")]
    DeviceId(#[from] crate::domain::DeviceIdError),
}

const CUSTOMERS: [(&str, &str, &str, &str); 3] = [
    ("acme-water", "Acme Water", "en", "Europe/Berlin"),
    ("siam-cold-chain", "Siam Cold Chain", "th", "Asia/Bangkok"),
    ("pars-energy", "Pars Energy", "fa", "Asia/Tehran"),
];

/// Runs the demo; prints its story to stdout and returns the summary.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<DemoSummary, DemoError> {
    let broker = crate::broker::start(&crate::broker::BrokerOptions::default())?;
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("forewarn-demo-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&data_dir);
    let models_dir = data_dir.join("models");
    std::fs::create_dir_all(&models_dir)
        .and_then(|_| std::fs::write(models_dir.join("demo.json"), DEMO_MODEL))
        .map_err(|source| DemoError::Models {
            path: models_dir.display().to_string(),
            source,
        })?;

    let mut cfg = Config::default();
    if let Some(file) = &opts.config {
        let loaded = Config::load(Some(file))?;
        cfg.notify = loaded.notify;
    }
    cfg.broker.url = broker.url();
    cfg.broker.client_id = "forewarn-demo".into();
    cfg.store.data_dir = data_dir.join("db");
    cfg.store.cache_bytes = 32 * 1024 * 1024;
    cfg.scoring.models_dir = models_dir;
    cfg.api.listen = pick_listen(&opts.listen);
    cfg.api.public_url = format!("http://{}", cfg.api.listen);
    // Reads need the token too (the default); the demo prints it with each example call.
    cfg.api.tokens = vec![crate::api::TokenConfig::Bare("demo-token".into())];
    cfg.log.filter = "warn,rumqttd=off".into();
    // The board's technicians: one per failure mode, and one who does everything.
    cfg.board.technicians = [
        ("t-ana", "Ana Lima", vec!["bearing_wear"]),
        ("t-somchai", "สมชาย ใจดี", vec!["overheating"]),
        ("t-darya", "دریا کریمی", vec!["seal_leak"]),
        ("t-max", "Max Weber", vec![]),
    ]
    .into_iter()
    .map(|(id, name, skills)| crate::board::Technician {
        id: id.into(),
        name: name.into(),
        skills: skills.into_iter().map(String::from).collect(),
        region: String::new(),
        hours: String::new(),
    })
    .collect();

    let sim_cfg = SimConfig {
        devices: opts.devices,
        seed: opts.seed,
        ticks: u64::MAX / 2,
        malformed_fraction: opts.malformed_fraction,
        ..SimConfig::default()
    };
    let fleet = Fleet::new(sim_cfg.clone());

    // Customer notifications go to a local sink speaking the providers' APIs (SMS, voice, push,
    // webhook); every message is also appended to notifications.jsonl in the data folder.
    let sink = crate::notify::sink::LocalSink::start(Some(&data_dir.join("notifications.jsonl")))
        .await
        .map_err(DemoError::Sink)?;
    sink.configure(&mut cfg.notify);
    if cfg.notify.link_secret.is_none() {
        cfg.notify.link_secret = Some(crate::notify::config::Secret(format!(
            "demo-link-secret-{}",
            std::process::id()
        )));
    }
    if cfg.notify.inbound_email_signing_key.is_none() {
        cfg.notify.inbound_email_signing_key = Some(crate::notify::config::Secret(
            "demo-mailgun-signing-key".into(),
        ));
    }
    // Without an SMTP server from --config, e-mail is written as .eml files into the data
    // folder: the English customer still gets (and answers) e-mail.
    if cfg.notify.email.is_none() {
        cfg.notify.email = Some(crate::notify::config::EmailConfig {
            from: "Forewarn Service <service@forewarn.example>".into(),
            outbox_dir: Some(data_dir.join("mail")),
            ..Default::default()
        });
    }
    let (customers, devices) = registry(&fleet, &sink.webhook_url(), cfg.notify.email.is_some())?;

    let clock = Arc::new(SimClock(AtomicI64::new(
        fleet.config().start_ms.as_millis(),
    )));
    let handle = crate::serve::run_with_clock(cfg.clone(), shutdown.clone(), clock.clone()).await?;
    handle.app.fleet().upsert(customers, devices)?;
    let api = handle.api_addr.to_string();
    println!("forewarn demo");
    println!("  broker     {} (embedded)", broker.url());
    println!("  API        http://{api}/api/v1/tickets   (Authorization: Bearer demo-token)");
    println!("  metrics    http://{api}/metrics");
    println!("  board      http://{api}/board   (sign in with the token demo-token)");
    println!(
        "  fleet      {} simulated devices, 4 metrics each, 3 failure modes; {} simulated hours per second",
        opts.devices, opts.sim_hours_per_second
    );
    println!(
        "  customers  {} (en, th, fa); their messages: {}",
        CUSTOMERS.len(),
        data_dir.join("notifications.jsonl").display()
    );
    if let Some(e) = &cfg.notify.email {
        match &e.outbox_dir {
            Some(dir) => println!(
                "  e-mail     to {} written as .eml files into {}",
                CUSTOMERS[0].1,
                dir.display()
            ),
            None => println!(
                "  e-mail     to {} through SMTP {}:{} (from --config)",
                CUSTOMERS[0].1, e.host, e.port
            ),
        }
    }
    println!();

    let console = Console::start(&broker.url()).await?;
    let printer = tokio::spawn(print_messages(sink.clone()));
    let mut summary = DemoSummary {
        api_addr: api.clone(),
        ..DemoSummary::default()
    };
    // The customers answer while the fleet runs (a third and two thirds of the way through,
    // while their tickets are open); whoever had nothing to answer by then answers at the end.
    let mut answered = HashSet::new();
    let daemon = Daemon {
        cfg: &cfg,
        app: &handle.app,
        clock: &clock,
        broker_url: broker.url(),
    };
    publish_fleet(
        fleet,
        &opts,
        &daemon,
        &mut answered,
        &mut summary,
        &shutdown,
    )
    .await?;
    // Let the daemon finish the last group, then count what the ticket topic showed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    summary.tickets_opened = console.opened();
    if !shutdown.is_cancelled() {
        summary.replies += converse(&cfg, &handle.app, &mut answered, true).await;
        // The worker polls the outbox; give it time to send the follow-ups.
        tokio::time::sleep(cfg.notify.poll_interval.std() * 2 + Duration::from_millis(500)).await;
    }
    summary.messages = sink.messages().len();
    printer.abort();
    print_summary(&summary);

    if opts.keep_running && !shutdown.is_cancelled() {
        println!("\nThe daemon keeps running: try");
        println!(
            "  curl -s -H 'Authorization: Bearer demo-token' 'http://{api}/api/v1/tickets?status=open'"
        );
        println!("  curl -s -X POST -H 'Authorization: Bearer demo-token' -H 'Content-Type: application/json' \\");
        println!(
            "       -d '{{\"to\":\"acknowledged\"}}' http://{api}/api/v1/tickets/<id>/transitions"
        );
        println!(
            "Or open the board, http://{api}/board (token demo-token): pick a ticket, assign a \
             technician and propose visit slots; the simulated customer picks one on their page."
        );
        println!("Ctrl-C stops it.");
        let booking = tokio::spawn(customers_pick_slots(
            cfg.clone(),
            handle.app.clone(),
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        let _ = booking.await;
    }
    shutdown.cancel();
    handle.stopped(cfg.shutdown.grace.std()).await;
    if opts.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(summary)
}

/// While the daemon keeps running: each visit a dispatcher proposes on the board is answered a
/// few seconds later by the simulated customer, who picks the first slot on their page (the
/// same self-service page and form a real customer uses).
async fn customers_pick_slots(cfg: Config, app: Arc<crate::app::App>, shutdown: CancellationToken) {
    let http = reqwest::Client::new();
    let public = cfg.api.public_url.clone();
    let mut answered: HashSet<(String, String)> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let proposals: Vec<crate::domain::Proposal> = app
            .store
            .scan_kv(crate::domain::PROPOSAL_PREFIX)
            .unwrap_or_default();
        for p in proposals {
            if !answered.insert((p.ticket_id.clone(), p.proposed_at.clone())) {
                continue;
            }
            let Some(t) = app.tickets().ticket(&p.ticket_id).filter(|t| t.is_live()) else {
                continue;
            };
            let (Some(cid), Some(slot)) = (t.customer_id.clone(), p.slots.first()) else {
                continue;
            };
            let start = slot.start_ms.as_millis().to_string();
            let r = http
                .post(page_url(&cfg, &public, &t.id, &cid, app.now_ms()))
                .form(&[("action", "confirm"), ("slot", start.as_str())])
                .send()
                .await;
            let ok = r.is_ok_and(|r| r.status().is_success());
            println!(
                "  {cid} picked {} for {} on their page{}",
                slot.start_ms.format(),
                t.id,
                if ok { "" } else { " (not recorded)" }
            );
        }
    }
}

/// The customer's self-service page for `ticket` at `public`, as a message's link names it
/// (signed with the demo's link secret, valid for a day from `now_ms`: the daemon's clock, the
/// simulated one the page checks the expiry against).
fn page_url(cfg: &Config, public: &str, ticket: &str, customer: &str, now_ms: i64) -> String {
    let secret = cfg.notify.link_secret.as_ref().map_or("", |s| s.0.as_str());
    let exp = now_ms.saturating_add(86_400_000);
    let token = crate::notify::link::sign(secret.as_bytes(), ticket, customer, exp);
    format!("{public}/notify/v1/s/{token}")
}

/// The address to listen on: `wanted` as it binds (port 0 becomes the port it got, so the
/// links and the replies the demo posts reach the API), or a free loopback port when taken.
fn pick_listen(wanted: &str) -> String {
    match std::net::TcpListener::bind(wanted) {
        Ok(l) => l
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| wanted.to_string()),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|_| wanted.to_string()),
    }
}

/// Customers in three locales, each owning a third of the fleet. The last keeps quiet hours
/// (so, depending on the hour, the demo shows advisories held until morning).
/// The English customer prefers e-mail (written to `mail/` in the data folder, or through the SMTP
/// server of `--config`).
fn registry(
    fleet: &Fleet,
    webhook: &str,
    email: bool,
) -> Result<(Vec<Customer>, Vec<Device>), DemoError> {
    let customers: Vec<Customer> = CUSTOMERS
        .iter()
        .enumerate()
        .map(|(i, (id, name, locale, tz))| Customer {
            id: id.to_string(),
            name: name.to_string(),
            locale: locale.to_string(),
            time_zone: tz.to_string(),
            contacts: [
                (Channel::Push, format!("{id}-alerts")),
                (Channel::Sms, format!("+1555010{i}")),
                (Channel::Voice, format!("+1555010{i}")),
                (Channel::Webhook, webhook.to_string()),
                (Channel::Email, format!("service@{id}.example")),
            ]
            .into_iter()
            .collect(),
            preferences: if email && i == 0 {
                vec![Channel::Email, Channel::Sms, Channel::Voice]
            } else {
                vec![
                    Channel::Push,
                    Channel::Sms,
                    Channel::Voice,
                    Channel::Webhook,
                ]
            },
            quiet_hours: (i == 2).then(|| "22:00-07:00".to_string()),
            urgent_in_quiet_hours: true,
            daily_budget: Some(50),
        })
        .collect();
    let devices = fleet
        .devices()
        .enumerate()
        .map(|(i, d)| {
            Ok(Device {
                id: crate::domain::DeviceId::parse(&d.id)?,
                customer_id: Some(CUSTOMERS[i % CUSTOMERS.len()].0.to_string()),
                attributes: d.attributes(),
            })
        })
        .collect::<Result<_, DemoError>>()?;
    Ok((customers, devices))
}

/// The field-service side: subscribes to the ticket topic and announces each new ticket.
struct Console {
    opened: Arc<std::sync::atomic::AtomicUsize>,
}

impl Console {
    async fn start(url: &str) -> Result<Console, DemoError> {
        let (host, port) = crate::replay::parse_broker_url(url)?;
        let mut o = MqttOptions::new("forewarn-demo-console", host, port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 100);
        client
            .subscribe("forewarn/tickets/#", QoS::AtLeastOnce)
            .await?;
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let o2 = opened.clone();
        // Ticket ids already announced (the topic is retained and re-published on updates).
        let mut seen: HashSet<String> = HashSet::new();
        tokio::spawn(async move {
            let _client = client;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(t) = serde_json::from_slice::<Ticket>(&p.payload) else {
                            continue;
                        };
                        if t.status == Status::Open && seen.insert(t.id.clone()) {
                            o2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            println!(
                                "[{}] TICKET   {:<11} {:<13} p={:.2}  failure predicted {}  ({}, customer {})",
                                short(&t.opened_at),
                                t.device_id,
                                t.failure_mode,
                                t.probability,
                                t.predicted_failure_at.as_deref().map(short).unwrap_or("-"),
                                t.priority.as_str(),
                                t.customer_id.as_deref().unwrap_or("-"),
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Console { opened })
    }

    fn opened(&self) -> usize {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Prints each customer message once, as the sink receives it.
async fn print_messages(sink: crate::notify::sink::LocalSink) {
    let mut shown = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = sink.messages();
        for m in all.iter().skip(shown) {
            let text: String = m.text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(110).collect();
            println!(
                "           → {:<7} {}: {}",
                m.channel,
                m.to,
                crate::notify::sink::redact_links(&text)
            );
        }
        shown = all.len();
    }
}

fn short(rfc: &str) -> &str {
    // "2025-01-14T03:00:00Z" → "2025-01-14T03:00"
    rfc.get(..16).unwrap_or(rfc)
}

/// The demo's "now" for customer messages and API transitions: the event time of the newest
/// message the simulated fleet published (it stands still once the fleet stops), so messages
/// speak of the simulated days — dates in the customer's calendar, quiet hours, reminders — and
/// not of today, which lies after every simulated failure.
struct SimClock(AtomicI64);

impl crate::notify::Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the simulated fleet talks to: the daemon (its configuration and app, the broker) and
/// the demo's clock.
struct Daemon<'a> {
    cfg: &'a Config,
    app: &'a crate::app::App,
    clock: &'a SimClock,
    broker_url: String,
}

async fn publish_fleet(
    fleet: Fleet,
    opts: &DemoOptions,
    daemon: &Daemon<'_>,
    answered: &mut HashSet<String>,
    summary: &mut DemoSummary,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    let Daemon {
        cfg,
        app,
        clock,
        broker_url: url,
    } = daemon;
    let (host, port) = crate::replay::parse_broker_url(url)?;
    let mut o = MqttOptions::new("forewarn-demo-fleet", host, port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(200);
    let (client, mut ev) = AsyncClient::new(o, 1000);
    let poller = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let start_ms = fleet.config().start_ms;
    let started = Instant::now();
    let sim_ms_per_wall_ms = opts.sim_hours_per_second * 3_600_000.0 / 1000.0;
    // The fleet publishes a fixed span of event time (speed × duration), however long that takes:
    // a busy machine takes longer instead of showing less of the story, so the readings, tickets
    // and failures are the same on every run. The wall-clock guard only stops a machine so slow
    // that the demo would not end in a reasonable time, and says so.
    let span_ms = (opts.duration.as_secs_f64() * sim_ms_per_wall_ms * 1000.0) as i64;
    let guard = opts.wall_guard.max(opts.duration);
    // The customers answer at each third of the span (event time, like the rest of the story).
    let mut next_ask_ms = span_ms / 3;
    // After the first third, whoever has not answered yet looks again this often.
    const GLANCE: Duration = Duration::from_secs(2);
    let mut next_glance = started.elapsed();
    for (published, item) in (0_u64..).zip(fleet) {
        if shutdown.is_cancelled() {
            break;
        }
        let ts = match &item {
            SimEvent::Reading(r) => r.ts,
            SimEvent::Event(e) => e.ts,
            SimEvent::Malformed { .. } => start_ms,
        };
        let sim_elapsed_ms = ts - start_ms;
        if sim_elapsed_ms >= span_ms {
            break;
        }
        if started.elapsed() >= guard {
            println!(
                "(the machine is too busy: stopped after {:.1} of {:.1} simulated days in {} s)",
                sim_elapsed_ms as f64 / 86_400_000.0,
                span_ms as f64 / 86_400_000.0,
                guard.as_secs()
            );
            break;
        }
        // Pace event time against the wall clock.
        let due = Duration::from_secs_f64((sim_elapsed_ms as f64 / sim_ms_per_wall_ms) / 1000.0);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        clock.0.fetch_max(ts.as_millis(), Ordering::Relaxed);
        if sim_elapsed_ms >= next_ask_ms {
            next_ask_ms += span_ms / 3;
            next_glance = started.elapsed() + GLANCE;
            summary.replies += converse(cfg, app, answered, true).await;
        } else if started.elapsed() >= next_glance && sim_elapsed_ms >= span_ms / 3 {
            next_glance = started.elapsed() + GLANCE;
            summary.replies += converse(cfg, app, answered, false).await;
        }
        let (topic, payload) = match &item {
            SimEvent::Reading(r) => {
                summary.readings += 1;
                (
                    format!("devices/{}/telemetry", r.device_id),
                    crate::ingest::encode::to_payload(r),
                )
            }
            SimEvent::Event(e) => {
                if e.kind == EventKind::Failure {
                    // Judge the failure only once the daemon has processed everything published
                    // before it, so a slow daemon is not mistaken for a missed prediction.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while app.metrics.messages.get() < published && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    report_failure(app, &e.device_id, &e.code, e.ts, summary);
                }
                (
                    format!("devices/{}/events", e.device_id),
                    crate::ingest::encode::event_payload(e),
                )
            }
            SimEvent::Malformed { device_id, payload } => {
                summary.malformed += 1;
                (format!("devices/{device_id}/telemetry"), payload.clone())
            }
        };
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    poller.abort();
    Ok(())
}

fn report_failure(
    app: &crate::app::App,
    device: &str,
    mode: &str,
    ts: Timestamp,
    s: &mut DemoSummary,
) {
    s.failures += 1;
    let live = app.store.live_tickets(device).unwrap_or_default();
    match live
        .into_iter()
        .find(|t| t.failure_mode == mode && t.opened_ms <= ts)
    {
        Some(t) => {
            let lead = (ts - t.opened_ms) as f64 / 3_600_000.0;
            s.failures_forewarned += 1;
            s.lead_hours.push(lead);
            println!(
                "[{}] FAILURE  {device:<11} {mode:<13} forewarned: ticket {} opened {lead:.0} h before",
                short(&ts.format()),
                t.id
            );
        }
        None => println!(
            "[{}] FAILURE  {device:<11} {mode:<13} no ticket beforehand",
            short(&ts.format())
        ),
    }
}

/// The customer's side: one customer of each language answers a ticket they were alerted
/// about — by SMS in Thai, on the self-service page in Persian, by e-mail in English — through
/// the daemon's own inbound routes, exactly as a provider or a browser would.
/// The simulated customers who have not answered yet answer the alert they heard about last,
/// each on their own channel; returns how many replies landed on a ticket.
/// `loud` also prints who had nothing to answer (at the scheduled moments); between them the
/// customers who have not answered yet look again quietly, as a person glancing at their phone.
async fn converse(
    cfg: &Config,
    app: &crate::app::App,
    answered: &mut HashSet<String>,
    loud: bool,
) -> usize {
    if CUSTOMERS.iter().all(|c| answered.contains(c.0)) {
        return 0;
    }
    let mut header = false;
    let mut say = |line: String| {
        if !header {
            println!();
            println!("The customers answer:");
            header = true;
        }
        println!("{line}");
    };
    let http = reqwest::Client::new();
    let public = cfg.api.public_url.trim_end_matches('/').to_string();
    let mut landed = 0;
    for (cid, _, locale, _) in CUSTOMERS {
        if answered.contains(&cid.to_string()) {
            continue;
        }
        let filter = crate::store::TicketFilter {
            customer_id: Some(cid.to_string()),
            ..Default::default()
        };
        let mut tickets = app.store.tickets(&filter).unwrap_or_default();
        // The ticket the customer heard about last (an SMS reply without a ticket number means
        // that one) first.
        let by_sms = locale == "th";
        let last: Option<String> = app
            .store
            .get_kv(&crate::notify::last_warned_key(
                cid,
                by_sms.then_some(Channel::Sms),
            ))
            .ok()
            .flatten();
        tickets.sort_by_key(|t| Some(&t.id) != last.as_ref());
        // An SMS carries no ticket number: it lands on the ticket whose warning last reached
        // this phone, so that is the one the SMS customer can answer.
        let alerted = tickets.into_iter().find(|t| {
            (!by_sms || Some(&t.id) == last.as_ref())
                && t.is_live()
                && app
                    .store
                    .get_kv::<Channel>(&format!("notify/alerted/{}", t.id))
                    .ok()
                    .flatten()
                    .is_some()
        });
        let Some(t) = alerted else {
            if loud {
                say(format!("  {cid}: no alert to answer yet"));
            }
            continue;
        };
        let (how, said, sent) = match locale {
            "th" => {
                let body = "ตกลงค่ะ";
                let path = "/notify/v1/twilio/sms";
                let params = vec![
                    ("MessageSid".to_string(), format!("SMdemo{}", t.id)),
                    ("From".to_string(), "+15550101".to_string()),
                    ("To".to_string(), "+10000000000".to_string()),
                    ("Body".to_string(), body.to_string()),
                ];
                let token = cfg
                    .notify
                    .sms
                    .as_ref()
                    .map(|s| s.auth_token.0.clone())
                    .unwrap_or_default();
                let sig = crate::notify::inbound::twilio_signature(
                    &token,
                    &format!("{public}{path}"),
                    &params,
                );
                let r = http
                    .post(format!("{public}{path}"))
                    .header("X-Twilio-Signature", sig)
                    .form(&params)
                    .send()
                    .await;
                (
                    "SMS",
                    body.to_string(),
                    r.is_ok_and(|r| r.status().is_success()),
                )
            }
            // The Persian customer uses the page; so does the English one when no e-mail
            // reached them (without an e-mail provider there is no reply address to answer:
            // e-mail replies count only on the address the message was sent with).
            l if l == "fa" || crate::notify::last_reply_address(&app.store, &t.id).is_none() => {
                let (action, when, said) = if l == "fa" {
                    ("reschedule", "فردا صبح", "«درخواست زمان دیگر» (فردا صبح)")
                } else {
                    (
                        "confirm",
                        "Tuesday morning",
                        "“Book a visit” (Tuesday morning)",
                    )
                };
                let r = http
                    .post(page_url(cfg, &public, &t.id, cid, app.now_ms()))
                    .form(&[("action", action), ("when", when)])
                    .send()
                    .await;
                (
                    "page",
                    said.to_string(),
                    r.is_ok_and(|r| r.status().is_success()),
                )
            }
            _ => {
                let key = cfg
                    .notify
                    .inbound_email_signing_key
                    .as_ref()
                    .map(|s| s.0.clone())
                    .unwrap_or_default();
                let text = "Yes please, Tuesday morning suits us.";
                let subject = format!("Re: [{}] Service advisory", t.id);
                let sender = format!("service@{cid}.example");
                let message_id = format!("<demo-{}@{cid}.example>", t.id);
                // The customer answers the address our e-mail asked them to reply to; the
                // provider (Mailgun's shape) signs what it forwards, on the daemon's clock.
                let recipient =
                    crate::notify::last_reply_address(&app.store, &t.id).unwrap_or_default();
                let timestamp = (app.notifier().now_ms() / 1000).to_string();
                let token = format!("demo-{}-{}", t.id, std::process::id());
                let signature =
                    crate::notify::signature::mailgun_signature(&key, &timestamp, &token);
                let r = http
                    .post(format!("{public}/notify/v1/email/inbound"))
                    .form(&[
                        ("sender", sender.as_str()),
                        ("recipient", recipient.as_str()),
                        ("subject", subject.as_str()),
                        ("stripped-text", text),
                        ("Message-Id", message_id.as_str()),
                        ("timestamp", timestamp.as_str()),
                        ("token", token.as_str()),
                        ("signature", signature.as_str()),
                    ])
                    .send()
                    .await;
                (
                    "e-mail",
                    text.to_string(),
                    r.is_ok_and(|r| r.status().is_success()),
                )
            }
        };
        let now = app.store.ticket(&t.id).ok().flatten();
        let status = now.as_ref().map(|t| t.status.as_str()).unwrap_or("?");
        if sent {
            landed += 1;
            answered.insert(cid.to_string());
        }
        say(format!(
            "  ← {how:<6} {cid} ({locale}): {said}  →  ticket {} {}",
            t.id,
            if sent {
                format!("now {status}")
            } else {
                "not reached".into()
            }
        ));
    }
    if header {
        println!("The follow-up messages:");
        println!();
    }
    landed
}

fn print_summary(s: &DemoSummary) {
    let mut lead = s.lead_hours.clone();
    lead.sort_by(f64::total_cmp);
    let median = lead.get(lead.len() / 2).copied().unwrap_or(0.0);
    println!();
    println!(
        "{} readings published ({} malformed, rejected and counted), {} tickets opened, {} failures, {} of them forewarned (median lead {:.0} h), {} customer messages, {} customer replies",
        s.readings, s.malformed, s.tickets_opened, s.failures, s.failures_forewarned, median, s.messages, s.replies
    );
}
