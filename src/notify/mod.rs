//! Customer notifications: routing to the best channel for the moment, the durable outbox,
//! fallback, quiet hours, escalation, replies and the customer timeline.
//!
//! Data flow: the daemon calls [`Notifier::on_ticket_change`] while it builds the atomic commit of
//! a ticket change, which adds an outbox row (queue `notify`) and timeline entries to the same sled
//! batch. The worker ([`Notifier::spawn_worker`], the [`crate::outbox`] worker running the pure
//! [`step`]) routes each due row ([`route`]), renders it ([`templates`]), and hands it to a
//! channel ([`channels`]) with an idempotency key; every decision and attempt lands in the
//! customer's timeline. Replies come back through
//! [`Notifier::routes`] and change the ticket through the daemon's [`TicketDesk`].
//!
//! Store keys used here (all under `k/notify/…` or the `notify` outbox queue):
//! `budget/{customer}/{local day}` messages sent that day, `addr/{hash}` contact → customer,
//! `last/{customer}` last ticket notified, `answer/{ticket}` the customer's answer,
//! `sid/{provider id}` what a status callback refers to.

pub mod calendar;
pub mod channels;
pub mod config;
pub mod events;
pub mod inbound;
pub mod intent;
pub mod link;
pub mod metrics;
pub mod moment;
pub mod route;
pub mod signature;
pub mod sink;
pub mod story;
pub mod templates;
pub mod worker;

pub use config::NotifyConfig;
pub use worker::{fingerprint, interrupted_match, step, Attempt, Deliver, OutboxRow};

use crate::domain::{Priority, Ticket, Timestamp};
use crate::engine::{Change, ChangeKind};
use crate::fleet::{Channel, Customer, Device};
use channels::Provider;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use templates::{MessageKind, Templates};

/// Outbox queue of notifications.
pub const QUEUE: &str = "notify";

/// The timeline that keeps replies from addresses no customer has (for a person to read):
/// `GET /api/v1/customers/unknown-sender/timeline`.
pub const UNKNOWN_SENDER: &str = "unknown-sender";

/// Timeline outcome of what a person must read and act on (an unclear reply, a failure).
pub const NEEDS_HUMAN: &str = "needs_human";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify templates: {0}")]
    Templates(#[from] templates::TemplateError),
    #[error("notify.http: http client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("notify.email: {0}")]
    Email(#[from] channels::email::EmailSetupError),
    #[error("notify.webhook: {0}")]
    Webhook(#[from] channels::webhook::WebhookSetupError),
    #[error("notify metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why the desk did not apply a customer's reply.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("ticket {0} not found")]
    TicketNotFound(String),
    #[error(transparent)]
    Transition(#[from] crate::tickets::TransitionError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// How notify changes a ticket (acknowledge/schedule/reschedule request) — implemented by the
/// daemon so the single writer keeps its in-memory live tickets, the dispatch outbox and history
/// consistent.
pub trait TicketDesk: Send + Sync {
    fn ticket(&self, id: &str) -> Option<Ticket>;
    /// Applies a transition (or, with `to == None`, just appends a history note) and returns the ticket.
    fn customer_reply(
        &self,
        id: &str,
        to: Option<crate::domain::Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, DeskError>;
    /// [`TicketDesk::customer_reply`] for a reply that books `visit` (a slot the dispatcher
    /// proposed): a desk that can writes the visit (and removes the proposal) in the
    /// transition's own commit when the reply schedules the ticket, so that cluster mode
    /// records them with it. Answers the ticket and whether the desk wrote them; the default
    /// does not, and the caller then does.
    fn customer_booking(
        &self,
        id: &str,
        to: Option<crate::domain::Status>,
        actor: &str,
        note: &str,
        visit: &crate::domain::Visit,
    ) -> Result<(Ticket, bool), DeskError> {
        let _ = visit;
        self.customer_reply(id, to, actor, note).map(|t| (t, false))
    }
    fn customer(&self, id: &str) -> Option<Customer>;
    fn device(&self, id: &str) -> Option<Device>;
}

/// The clock moved to [`crate::outbox`], where the delivery worker's due times read the same one.
pub use crate::clock::{Clock, ManualClock, SystemClock};

/// One line of a customer's timeline (`GET /api/v1/customers/{id}/timeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// RFC 3339 wall time.
    pub at: String,
    /// "ticket", "queued", "decision", "attempt", "message", "fallback", "delivery", "reply",
    /// "escalation", "dropped".
    pub kind: String,
    pub ticket_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub detail: String,
    /// On "message" entries: which message it was (the page names it in the customer's words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageKind>,
    /// On "reply" entries: the customer's own words (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub said: Option<String>,
}

impl TimelineEntry {
    pub fn new(at_ms: i64, kind: &str, ticket_id: &str, detail: impl Into<String>) -> Self {
        TimelineEntry {
            at: Timestamp::from_millis(at_ms).format(),
            kind: kind.into(),
            ticket_id: ticket_id.into(),
            channel: None,
            outcome: None,
            detail: detail.into(),
            message: None,
            said: None,
        }
    }
    pub fn channel(mut self, c: Channel) -> Self {
        self.channel = Some(c);
        self
    }
    pub fn outcome(mut self, o: &str) -> Self {
        self.outcome = Some(o.into());
        self
    }
    pub fn message(mut self, k: MessageKind) -> Self {
        self.message = Some(k);
        self
    }
    /// The customer's words (nothing when they wrote nothing, e.g. a button on the page).
    pub fn said(mut self, text: &str) -> Self {
        let t: String = text.trim().chars().take(200).collect();
        self.said = (!t.is_empty()).then_some(t);
        self
    }
}

/// A customer's carrier opt-out (STOP) on one channel and address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptOut {
    pub at: String,
    /// The keyword they sent.
    pub keyword: String,
}

/// Key of an opt-out: hashed like the contact index.
pub fn optout_key(channel: Channel, address: &str) -> String {
    contact_key(channel, address).replacen("notify/addr/", "notify/optout/", 1)
}

/// Key of an inbound message already handled (provider message id), for replay protection.
pub fn inbound_key(channel: Channel, provider_id: &str) -> String {
    contact_key(channel, provider_id).replacen("notify/addr/", "notify/inbound/", 1)
}

/// What a per-message e-mail reply address (`replies+<token>@…`) stands for: the reply lands on
/// this ticket for this customer, whatever the `From` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyTarget {
    pub ticket_id: String,
    pub customer_id: String,
}

/// Key of a reply address token.
pub fn reply_key(token: &str) -> String {
    format!("notify/replyto/{token}")
}

/// The reply address of the last e-mail sent about a ticket (the demo's customer answers it).
pub fn last_reply_address(store: &crate::store::Store, ticket_id: &str) -> Option<String> {
    store
        .get_kv(&format!("notify/replylast/{ticket_id}"))
        .ok()
        .flatten()
}

/// The token in a reply address: the part after the last `+` of the local part, if it looks
/// like one of ours (24 hex digits). Walks characters: the address is the sender's text.
pub fn reply_token(address: &str) -> Option<String> {
    let addr = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _) = addr.rsplit_once('@')?;
    let (_, token) = local.rsplit_once('+')?;
    let token = token.to_ascii_lowercase();
    (token.chars().count() == 24 && token.chars().all(|c| c.is_ascii_hexdigit())).then_some(token)
}

/// Key of a ticket's link revocation (epoch ms: links issued up to then are refused).
pub fn link_revoked_key(ticket_id: &str) -> String {
    format!("notify/linkrevoked/{ticket_id}")
}

/// Marks the visit time a customer wrote in a reply's history note.
pub const VISIT_MARK: &str = " · preferred time: ";

/// The customer's answer to a ticket, kept so they are not asked again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub answer: String,
    pub channel: String,
    pub at: String,
    /// How often the customer changed their answer on the page (once is allowed, with a
    /// confirmation).
    #[serde(default)]
    pub changes: u32,
}

pub struct Notifier {
    /// Shared with every step of the outbox worker (its policy).
    cfg: Arc<NotifyConfig>,
    public_url: String,
    templates: Templates,
    link_key: Vec<u8>,
    providers: BTreeMap<Channel, Box<dyn Provider>>,
    metrics: metrics::NotifyMetrics,
    clock: Arc<dyn Clock>,
    /// Serialises inbound handling so a provider's retry racing the original is seen as a
    /// replay (a std-like lock: held only around store reads and one commit, never across I/O
    /// to the outside).
    inbound: parking_lot::Mutex<()>,
}

/// Key of the contact index: a hash, so contact details never appear in keys. Defined beside
/// the registry, which prunes it when contacts change.
pub fn contact_key(channel: Channel, address: &str) -> String {
    crate::fleet::contact_index_key(channel, address)
}

/// Key of "the ticket whose warning last reached this customer" — on `channel`, or on any
/// channel when `None`. Written when a provider accepts the warning (not when it is queued), so
/// a reply without a ticket number lands on the warning the customer actually received.
pub fn last_warned_key(customer_id: &str, channel: Option<Channel>) -> String {
    match channel {
        Some(ch) => format!("notify/last/{customer_id}/{}", ch.as_str()),
        None => format!("notify/last/{customer_id}"),
    }
}

impl Notifier {
    /// Templates loaded and checked here (config error at start).
    pub fn build(
        cfg: &NotifyConfig,
        public_url: &str,
        registry: &prometheus::Registry,
    ) -> Result<Notifier, NotifyError> {
        let templates = Templates::load(cfg.templates_dir.as_deref(), &cfg.fallback_locale)
            .map_err(NotifyError::Templates)?;
        let link_key = match &cfg.link_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "notify.link_secret is not set: self-service links are signed with a random key \
                     and stop working at the next restart (set FOREWARN__NOTIFY__LINK_SECRET)"
                );
                let k: [u8; 32] = rand::random();
                k.to_vec()
            }
        };
        let timeout = cfg.send_timeout.std();
        let http = channels::http_client(timeout).map_err(NotifyError::HttpClient)?;
        let mut providers: BTreeMap<Channel, Box<dyn Provider>> = BTreeMap::new();
        if let Some(e) = &cfg.email {
            let p = channels::email::Email::build(e, timeout)?;
            providers.insert(Channel::Email, Box::new(p));
        }
        if let Some(t) = &cfg.sms {
            providers.insert(
                Channel::Sms,
                Box::new(channels::twilio::Twilio::new(
                    t,
                    channels::twilio::Kind::Sms,
                    http.clone(),
                )),
            );
        }
        if let Some(t) = &cfg.voice {
            providers.insert(
                Channel::Voice,
                Box::new(channels::twilio::Twilio::new(
                    t,
                    channels::twilio::Kind::Voice,
                    http.clone(),
                )),
            );
        }
        if let Some(p) = &cfg.push {
            providers.insert(
                Channel::Push,
                Box::new(channels::push::Push::new(p, http.clone())),
            );
        }
        if let Some(w) = &cfg.webhook {
            let hook = channels::webhook::Webhook::new(&w.secret, &w.allow, timeout)?;
            providers.insert(Channel::Webhook, Box::new(hook));
        }
        if let Some(m) = &cfg.mqtt {
            providers.insert(
                Channel::Mqtt,
                Box::new(channels::mqtt::Mqtt::new(m, timeout)),
            );
        }
        let names: Vec<&str> = providers.keys().map(|c| c.as_str()).collect();
        tracing::info!(
            channels = %names.join(","),
            locales = %templates.locales().join(","),
            "notifications ready"
        );
        Ok(Notifier {
            cfg: Arc::new(cfg.clone()),
            public_url: public_url.trim_end_matches('/').to_string(),
            templates,
            link_key,
            providers,
            metrics: metrics::NotifyMetrics::register(registry)?,
            clock: Arc::new(SystemClock),
            inbound: parking_lot::Mutex::new(()),
        })
    }

    /// Replaces the wall clock (tests, simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Notifier {
        self.clock = clock;
        self
    }

    /// The clock messages are stamped and scheduled by (the dispatcher's due times read it too).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn config(&self) -> &NotifyConfig {
        &self.cfg
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Channels with a configured provider.
    pub fn available(&self) -> BTreeSet<Channel> {
        self.providers.keys().copied().collect()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// This e-mail's own reply address and its token: the configured reply address (or the
    /// sender) with `+<token>` in its local part. The token is an HMAC of the outbox row, so it
    /// cannot be guessed and a resend of the same message carries the same address.
    pub fn reply_address(&self, row_id: &str) -> Option<(String, String)> {
        use hmac::{Hmac, Mac};
        let e = self.cfg.email.as_ref()?;
        let base = e.reply_to.clone().unwrap_or_else(|| e.from.clone());
        let mb: lettre::message::Mailbox = base.parse().ok()?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.link_key).ok()?;
        mac.update(b"reply-address\x1f");
        mac.update(row_id.as_bytes());
        let token = hex::encode(&mac.finalize().into_bytes()[..12]);
        let addr = format!("{}+{token}@{}", mb.email.user(), mb.email.domain());
        let full = match &mb.name {
            Some(n) => format!("{n} <{addr}>"),
            None => addr,
        };
        Some((token, full))
    }

    /// The signed self-service link of a ticket (the advisory lifetime, `link_ttl`).
    pub fn link(&self, ticket_id: &str, customer_id: &str, now_ms: i64) -> String {
        self.link_until(
            ticket_id,
            customer_id,
            now_ms + self.cfg.link_ttl.as_millis_i64(),
        )
    }

    /// The customer's link for this ticket: `link_ttl_urgent` for an urgent ticket, `link_ttl`
    /// otherwise.
    pub fn link_for(&self, t: &Ticket, customer_id: &str, now_ms: i64) -> String {
        let ttl = if t.priority >= self.cfg.routing.urgent_priority {
            self.cfg.link_ttl_urgent.min(self.cfg.link_ttl)
        } else {
            self.cfg.link_ttl
        };
        self.link_until(&t.id, customer_id, now_ms + ttl.as_millis_i64())
    }

    /// The short-lived link machine channels carry (`machine_link_ttl`).
    pub fn machine_link(&self, t: &Ticket, customer_id: &str, now_ms: i64) -> String {
        let ttl = self.cfg.machine_link_ttl.as_millis_i64();
        self.link_until(&t.id, customer_id, now_ms + ttl)
    }

    fn link_until(&self, ticket_id: &str, customer_id: &str, exp_ms: i64) -> String {
        // Issued "now" on the notifier's clock, never after the expiry it is given.
        let iat = self.clock.now_ms().min(exp_ms);
        format!(
            "{}/notify/v1/s/{}",
            self.public_url,
            link::sign_issued(&self.link_key, ticket_id, customer_id, exp_ms, iat)
        )
    }

    /// Revokes every self-service link of a ticket issued until now (server-side state: the
    /// page refuses them as expired; links issued later work).
    pub fn revoke_links(
        &self,
        store: &crate::store::Store,
        ticket_id: &str,
    ) -> Result<(), crate::store::StoreError> {
        let mut tx = store.tx();
        tx.put_kv(&link_revoked_key(ticket_id), &self.clock.now_ms());
        store.commit(tx)
    }

    /// Called by the daemon while building the atomic commit of a ticket change: adds the outbox
    /// rows (queue "notify") and timeline entries for it to `tx`. Pure apart from the Tx (no I/O).
    ///
    /// Opened → an alert (urgent or advisory); Updated → an urgent alert only when the priority
    /// rises to urgent; Settled → a short "resolved" message if `notify_resolved`; Transition
    /// (people acting through the API or a reply) → a timeline entry only.
    pub fn on_ticket_change(
        &self,
        tx: &mut crate::store::Tx,
        change: &Change,
        customer: Option<&Customer>,
        device: Option<&Device>,
        now_wall_ms: i64,
    ) {
        let t = &change.ticket;
        let Some(cid) = customer
            .map(|c| c.id.clone())
            .or_else(|| t.customer_id.clone())
            .or_else(|| device.and_then(|d| d.customer_id.clone()))
        else {
            return;
        };
        // The customer's story: what happened to the ticket, not every new score. A probability
        // update is only an entry when it changes the priority.
        let what = match change.kind {
            ChangeKind::Opened => Some(format!(
                "ticket opened: {} on {} ({})",
                t.failure_mode,
                t.device_id,
                t.priority.as_str(),
            )),
            ChangeKind::Updated => change
                .previous_priority
                .filter(|p| *p != t.priority)
                .map(|p| format!("priority {} → {}", p.as_str(), t.priority.as_str())),
            ChangeKind::Settled => Some(format!(
                "ticket settled: {}{}",
                t.status.as_str(),
                t.outcome
                    .map(|o| match o {
                        crate::domain::Outcome::ConfirmedFault => " (serviced)",
                        crate::domain::Outcome::FalseAlarm => " (false alarm)",
                        crate::domain::Outcome::FailedBeforeService => " (failed before service)",
                    })
                    .unwrap_or("")
            )),
            ChangeKind::Transition => Some(format!("ticket {}", t.status.as_str())),
        };
        if let Some(what) = what {
            tx.push_timeline(
                &cid,
                now_wall_ms,
                &TimelineEntry::new(now_wall_ms, "ticket", &t.id, what).outcome(t.status.as_str()),
            );
        }
        let (urgent, why) = route::urgency(&self.cfg.routing, t, now_wall_ms);
        let kind = match moment::for_change(
            change,
            urgent,
            self.cfg.routing.urgent_priority,
            self.cfg.notify_resolved,
        ) {
            moment::Moment::Send(kind) => kind,
            moment::Moment::FollowUp(why) => {
                tx.push_timeline(
                    &cid,
                    now_wall_ms,
                    &TimelineEntry::new(now_wall_ms, "follow_up", &t.id, why).outcome(NEEDS_HUMAN),
                );
                return;
            }
            moment::Moment::Nothing => return,
        };
        if !self.cfg.enabled {
            tx.push_timeline(
                &cid,
                now_wall_ms,
                &TimelineEntry::new(
                    now_wall_ms,
                    "dropped",
                    &t.id,
                    "notifications are disabled (notify.enabled = false)",
                ),
            );
            return;
        }
        let urgent = matches!(kind, MessageKind::Urgent | MessageKind::Update);
        let reason = if !kind.is_warning() {
            format!("advisory: {}", kind.as_str().replace('_', " "))
        } else if urgent && !why.starts_with("urgent") {
            format!("urgent: priority rose to {}", Priority::Urgent.as_str())
        } else {
            why
        };
        let row = OutboxRow::queued(t, &cid, kind, urgent, reason, now_wall_ms);
        tx.push_outbox(QUEUE, &row);
        // Replies arrive by address: index the contacts we are about to write to (a hash, so
        // no contact detail appears in a key).
        if let Some(c) = customer {
            for (ch, addr) in &c.contacts {
                tx.put_kv(&contact_key(*ch, addr), &c.id);
            }
        }
        tx.push_timeline(
            &cid,
            now_wall_ms,
            &TimelineEntry::new(
                now_wall_ms,
                "queued",
                &t.id,
                format!("{} message queued", kind.as_str()),
            ),
        );
    }

    /// Delivery worker (outbox → providers, retries, fallback, escalation timers) until
    /// `shutdown`, sending only while `gate` is open (`None`: always).
    pub fn spawn_worker(
        self: Arc<Self>,
        store: crate::store::Store,
        desk: Arc<dyn TicketDesk>,
        gate: Option<Arc<dyn crate::outbox::Gate>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.run_worker(&store, desk.as_ref(), gate, shutdown).await;
            tracing::info!("notification worker stopped");
        })
    }

    /// Inbound routes: SMS reply webhook, e-mail inbound-parse webhook, provider status callbacks,
    /// the signed self-service page (GET + POST), and GET /api/v1/customers/{id}/timeline.
    pub fn routes(
        self: Arc<Self>,
        store: crate::store::Store,
        desk: Arc<dyn TicketDesk>,
    ) -> axum::Router {
        inbound::router(self, store, desk)
    }

    /// The `/notify/v1/*` part of [`Notifier::routes`] (`api.public_listen` serves it alone).
    pub fn public_routes(
        self: Arc<Self>,
        store: crate::store::Store,
        desk: Arc<dyn TicketDesk>,
    ) -> axum::Router {
        inbound::public_router(self, store, desk)
    }

    /// The timeline part of [`Notifier::routes`], an API read.
    pub fn timeline_routes(
        self: Arc<Self>,
        store: crate::store::Store,
        desk: Arc<dyn TicketDesk>,
    ) -> axum::Router {
        inbound::timeline_router(self, store, desk)
    }

    /// The link-revoking part of [`Notifier::routes`], an API write.
    pub fn links_routes(
        self: Arc<Self>,
        store: crate::store::Store,
        desk: Arc<dyn TicketDesk>,
    ) -> axum::Router {
        inbound::links_router(self, store, desk)
    }
}
