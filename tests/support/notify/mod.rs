//! Test support for the notification tests: a real SMTP server, fake cloud providers over real
//! HTTP, a small TicketDesk over the real sled store, and a harness wiring them to a Notifier
//! with an injected clock.

pub mod peers;
pub mod providers;
pub mod smtp;

use forewarn::domain::{HistoryEntry, ModelRef, Priority, Status, Ticket, Timestamp};
use forewarn::engine::{Change, ChangeKind};
use forewarn::fleet::{Channel, Customer, Device};
use forewarn::notify::config::{EmailConfig, PushConfig, SmtpTls, WebhookConfig};
use forewarn::notify::{DeskError, ManualClock, Notifier, NotifyConfig, TicketDesk, TimelineEntry};
use forewarn::store::Store;
use forewarn::tickets::ticket_id;
use providers::{Fakes, HOOK_SECRET, SID, TOKEN};
use smtp::SmtpServer;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Mailgun's HTTP webhook signing key in the tests.
pub const MAILGUN_KEY: &str = "mailgun-webhook-signing-key-for-tests";

/// The reply address in a raw e-mail's `Reply-To` header.
pub fn reply_to_of(data: &str) -> Option<String> {
    let line = data
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("reply-to:"))?;
    let v = line.split_once(':')?.1.trim();
    let v = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v.get(a + 1..b)?,
        _ => v,
    };
    Some(v.to_string())
}

/// Mailgun's `timestamp`, `token` and `signature` for a request at `now_ms`.
pub fn mailgun_fields(now_ms: i64, token: &str) -> Vec<(String, String)> {
    let ts = (now_ms / 1000).to_string();
    let sig = forewarn::notify::signature::mailgun_signature(MAILGUN_KEY, &ts, token);
    vec![
        ("timestamp".into(), ts),
        ("token".into(), token.into()),
        ("signature".into(), sig),
    ]
}

/// 2026-11-23 12:00 in Bangkok (05:00 UTC).
pub const NOON_BKK: i64 = 1_795_410_000_000;
pub const HOUR: i64 = 3_600_000;

/// The daemon's side of replies, reduced to what a test needs: transition + commit.
pub struct StoreDesk {
    pub store: Store,
    pub customers: Mutex<HashMap<String, Customer>>,
    pub clock: Arc<ManualClock>,
    /// Single writer, like the daemon's core lock.
    write: Mutex<()>,
    /// Like the daemon, a transition is committed with the notifier's rows.
    pub notifier: std::sync::OnceLock<Arc<Notifier>>,
}

impl StoreDesk {
    pub fn new(store: Store, clock: Arc<ManualClock>) -> StoreDesk {
        StoreDesk {
            store,
            customers: Mutex::new(HashMap::new()),
            clock,
            write: Mutex::new(()),
            notifier: std::sync::OnceLock::new(),
        }
    }
}

impl TicketDesk for StoreDesk {
    fn ticket(&self, id: &str) -> Option<Ticket> {
        self.store.ticket(id).ok().flatten()
    }
    fn customer_reply(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, DeskError> {
        use forewarn::notify::Clock;
        let _g = self.write.lock().unwrap();
        let mut t = self
            .ticket(id)
            .ok_or_else(|| DeskError::TicketNotFound(id.into()))?;
        let now = self.clock.now_ms();
        match to {
            Some(s) => t.transition(s, actor, Timestamp::from_millis(now), note)?,
            None => t.history.push(HistoryEntry {
                at: Timestamp::from_millis(now).format(),
                actor: actor.into(),
                action: "note".into(),
                from: None,
                to: None,
                note: note.into(),
            }),
        }
        let mut tx = self.store.tx();
        tx.put_ticket(&t);
        if let Some(n) = self.notifier.get() {
            let change = Change {
                kind: ChangeKind::Transition,
                previous_priority: Some(t.priority),
                ticket: t.clone(),
            };
            let customer = t.customer_id.as_deref().and_then(|c| self.customer(c));
            n.on_ticket_change(&mut tx, &change, customer.as_ref(), None, now);
        }
        self.store.commit(tx)?;
        Ok(t)
    }
    fn customer(&self, id: &str) -> Option<Customer> {
        self.customers.lock().unwrap().get(id).cloned()
    }
    fn device(&self, id: &str) -> Option<Device> {
        Some(Device {
            id: forewarn::domain::DeviceId::parse(id).ok()?,
            customer_id: None,
            attributes: Default::default(),
        })
    }
}

pub fn config(f: &Fakes, smtp_port: u16) -> NotifyConfig {
    let tw = f.twilio();
    NotifyConfig {
        email: Some(EmailConfig {
            host: "127.0.0.1".into(),
            port: smtp_port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "Forewarn Service <service@forewarn.test>".into(),
            reply_to: Some("replies@forewarn.test".into()),
            ca_file: None,
            outbox_dir: None,
        }),
        sms: Some(tw.clone()),
        voice: Some(tw),
        push: Some(PushConfig {
            url: f.base.clone(),
            token: None,
        }),
        webhook: Some(WebhookConfig {
            secret: HOOK_SECRET.into(),
            // The fake providers listen on loopback: allowed here, refused by default.
            allow: vec!["127.0.0.1".into()],
        }),
        link_secret: Some("test-link-secret-0123456789".into()),
        inbound_email_signing_key: Some(MAILGUN_KEY.into()),
        max_attempts: 3,
        retry_min: "1s".parse().unwrap(),
        retry_max: "60s".parse().unwrap(),
        send_timeout: "2s".parse().unwrap(),
        poll_interval: "50ms".parse().unwrap(),
        ..NotifyConfig::default()
    }
}

pub struct Harness {
    pub dir: std::path::PathBuf,
    /// Keeps a temporary data dir alive (None when the dir belongs to someone else).
    pub tmp: Option<tempfile::TempDir>,
    pub store: Store,
    pub notifier: Arc<Notifier>,
    pub desk: Arc<StoreDesk>,
    pub clock: Arc<ManualClock>,
    pub fakes: Fakes,
    pub smtp: SmtpServer,
    pub registry: prometheus::Registry,
    /// Where the inbound routes are served (also the public URL in links and signatures).
    pub url: String,
    pub http: reqwest::Client,
    /// The inbound routes' server (aborted to simulate a restart).
    pub server: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub async fn start(tweak: impl FnOnce(&mut NotifyConfig)) -> Harness {
        let fakes = Fakes::start().await;
        let smtp = SmtpServer::start().await;
        let tmp = tempfile::tempdir().unwrap();
        Self::with(tmp.path().to_path_buf(), Some(tmp), fakes, smtp, tweak).await
    }

    /// Builds a harness over an existing data dir and fakes (a restart).
    pub async fn with(
        dir: std::path::PathBuf,
        tmp: Option<tempfile::TempDir>,
        fakes: Fakes,
        smtp: SmtpServer,
        tweak: impl FnOnce(&mut NotifyConfig),
    ) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A restarted harness may have to wait for the previous one's handles to drop.
        let mut tries = 0;
        let store = loop {
            match Store::open(&dir, 8 << 20) {
                Ok(s) => break s,
                Err(e) if tries > 100 => panic!("{e}"),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let mut cfg = config(&fakes, smtp.port);
        tweak(&mut cfg);
        cfg.validate().unwrap();
        let clock = ManualClock::new(NOON_BKK);
        // The providers see the same time as the notifier (message creation times).
        let provider_clock = clock.clone();
        fakes.set_clock(Arc::new(move || {
            use forewarn::notify::Clock;
            provider_clock.now_ms()
        }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let registry = prometheus::Registry::new();
        let notifier = Arc::new(
            Notifier::build(&cfg, &url, &registry)
                .unwrap()
                .with_clock(clock.clone()),
        );
        let desk = Arc::new(StoreDesk::new(store.clone(), clock.clone()));
        let _ = desk.notifier.set(notifier.clone());
        let app = notifier.clone().routes(store.clone(), desk.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Harness {
            dir,
            tmp,
            store,
            notifier,
            desk,
            clock,
            fakes,
            smtp,
            registry,
            url,
            http: reqwest::Client::new(),
            server,
        }
    }

    pub fn add_customer(&self, c: Customer) {
        self.desk.customers.lock().unwrap().insert(c.id.clone(), c);
    }

    pub fn customer(&self, id: &str, locale: &str, prefs: &[Channel]) -> Customer {
        let n = self.desk.customers.lock().unwrap().len();
        let mut contacts = BTreeMap::new();
        contacts.insert(Channel::Email, format!("{id}@customer.test"));
        contacts.insert(Channel::Sms, format!("+668100000{n:02}"));
        contacts.insert(Channel::Voice, format!("+668100000{n:02}"));
        contacts.insert(Channel::Push, format!("topic-{id}"));
        contacts.insert(Channel::Webhook, format!("{}/hook", self.fakes.base));
        let c = Customer {
            id: id.into(),
            name: format!("Customer {id}"),
            locale: locale.into(),
            time_zone: "Asia/Bangkok".into(),
            contacts,
            preferences: prefs.to_vec(),
            quiet_hours: Some("22:00-07:00".into()),
            urgent_in_quiet_hours: true,
            daily_budget: None,
        };
        self.add_customer(c.clone());
        c
    }

    /// Opens a ticket the way the daemon does: ticket + outbox row + timeline in one commit.
    pub fn open(
        &self,
        customer: &Customer,
        device: &str,
        priority: Priority,
        probability: f64,
        fails_in_hours: Option<i64>,
    ) -> Ticket {
        use forewarn::notify::Clock;
        let now = self.clock.now_ms();
        let t = Ticket {
            id: ticket_id(&[], device, "bearing_wear", Timestamp::from_millis(now)),
            device_id: forewarn::domain::DeviceId::parse(device).unwrap(),
            customer_id: Some(customer.id.clone()),
            failure_mode: "bearing_wear".into(),
            status: Status::Open,
            priority,
            probability,
            predicted_failure_at: fails_in_hours
                .map(|h| Timestamp::from_millis(now + h * HOUR).format()),
            opened_at: Timestamp::from_millis(now).format(),
            updated_at: Timestamp::from_millis(now).format(),
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            evidence: vec![],
            history: vec![],
            outcome: None,
            opened_ms: Timestamp::from_millis(now),
        };
        let change = Change {
            kind: ChangeKind::Opened,
            previous_priority: None,
            ticket: t.clone(),
        };
        let mut tx = self.store.tx();
        tx.put_ticket(&t);
        self.notifier
            .on_ticket_change(&mut tx, &change, Some(customer), None, now);
        self.store.commit(tx).unwrap();
        t
    }

    /// Commits a later change of a ticket (update, settlement) the way the daemon does.
    pub fn change(
        &self,
        customer: &Customer,
        kind: ChangeKind,
        previous: Option<Priority>,
        t: &Ticket,
    ) {
        use forewarn::notify::Clock;
        let change = Change {
            kind,
            previous_priority: previous,
            ticket: t.clone(),
        };
        let mut tx = self.store.tx();
        tx.put_ticket(t);
        self.notifier
            .on_ticket_change(&mut tx, &change, Some(customer), None, self.clock.now_ms());
        self.store.commit(tx).unwrap();
    }

    pub async fn run(&self) {
        self.notifier
            .run_once(&self.store, self.desk.as_ref())
            .await;
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub fn timeline(&self, customer: &str) -> Vec<TimelineEntry> {
        self.store.timeline(customer).unwrap()
    }

    pub fn outbox_len(&self) -> usize {
        self.store.outbox_len(forewarn::notify::QUEUE)
    }

    /// Value of a counter/gauge sample with these labels (from the text exposition).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return rest.rsplit(' ').next().unwrap().parse().unwrap();
            }
        }
        0.0
    }

    /// The reply address of the newest e-mail sent to `to` (its own `Reply-To`), or an
    /// address that is none of ours.
    pub fn reply_address(&self, to: &str) -> String {
        self.smtp
            .mails()
            .iter()
            .rev()
            .find(|m| m.to.iter().any(|t| t.contains(to)))
            .and_then(|m| reply_to_of(&m.data))
            .unwrap_or_else(|| "replies@forewarn.test".into())
    }

    /// POSTs an inbound e-mail as Mailgun forwards it: the form plus a fresh signed token on
    /// the notifier's clock.
    pub async fn mailgun_post(&self, form: &[(&str, &str)]) -> reqwest::Response {
        use forewarn::notify::Clock;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.extend(mailgun_fields(
            self.clock.now_ms(),
            &format!("tok-{}-{n}", std::process::id()),
        ));
        self.http
            .post(format!("{}/notify/v1/email/inbound", self.url))
            .form(&all)
            .send()
            .await
            .unwrap()
    }

    /// GETs `path` of the inbound routes' server (the notifier's API and pages).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// An SMS from `from` as Twilio forwards it (signed, with its `MessageSid`).
    pub async fn sms_in(&self, from: &str, sid: &str, body: &str) -> reqwest::Response {
        self.twilio_post(
            "/notify/v1/twilio/sms",
            &[
                ("MessageSid", sid),
                ("AccountSid", SID),
                ("From", from),
                ("To", "+15550100"),
                ("Body", body),
            ],
        )
        .await
    }

    /// Twilio's status callback for the message `sid` (signed).
    pub async fn message_status(&self, sid: &str, status: &str) -> reqwest::Response {
        self.twilio_post(
            "/notify/v1/twilio/status",
            &[("MessageSid", sid), ("MessageStatus", status)],
        )
        .await
    }

    /// POSTs a Twilio-signed form to one of forewarn's inbound routes.
    pub async fn twilio_post(&self, path: &str, params: &[(&str, &str)]) -> reqwest::Response {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sig = forewarn::notify::inbound::twilio_signature(
            TOKEN,
            &format!("{}{path}", self.url),
            &owned,
        );
        self.http
            .post(format!("{}{path}", self.url))
            .header("X-Twilio-Signature", sig)
            .form(&owned)
            .send()
            .await
            .unwrap()
    }
}
