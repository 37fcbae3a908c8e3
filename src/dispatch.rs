//! Field-service dispatch: every ticket change goes out from the durable outbox (queue
//! `dispatch`, written in the same commit as the ticket) to
//! - MQTT `{dispatch.topic_prefix}/{device_id}/{failure_mode}`, QoS 1, retained: the ticket's
//!   current state as JSON;
//! - the dispatch webhook (when configured): a POST of `{"event": "ticket.<kind>", "ticket": …}`
//!   signed with `X-Forewarn-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//!
//! A row is removed only once both targets took it; failures retry with exponential backoff, and
//! after `dispatch.max_attempts` the row moves to the `dispatch_dead` queue (counted, logged).
//! Rows of one (device, mode) go out in commit order, so the retained message is the latest state.
//!
//! The decisions are the pure [`step`]; [`Targets`] executes its effects (the publish, the POST)
//! and the [`crate::outbox`] worker runs the queue.

use crate::clock::{Clock, SystemClock};
use crate::domain::{DeviceId, Dur, Ticket};
use crate::engine::{Change, ChangeKind};
use crate::metrics::Metrics;
use crate::outbox::{Backoff, Delivery, Effect, FactsOf, Gauges, Step, Update, Worker};
use crate::secret::Secret;
use crate::store::{Store, StoreError, Tx};
use events::{Attempt, Target};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The outbox queue of field-service dispatch, written in the same commit as the ticket change.
pub const QUEUE: &str = "dispatch";
/// Rows that used up `dispatch.max_attempts`.
pub const DEAD_QUEUE: &str = "dispatch_dead";

/// Why a call to one of dispatch's targets failed: what [`Seen`] reports and the step turns
/// into a retry or a dead letter. None names the URL: it may carry a token in its query.
///
/// A publish fails only when the MQTT client cannot queue it (its event loop is gone): a broker
/// that is not connected is waited for rather than tried, and the broker's acknowledgement is not
/// awaited (the client's session re-sends the publish after a reconnect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The MQTT client did not take the publish; its own words.
    #[error("{0}")]
    Client(String),
    /// The webhook was not reached, or did not answer. `url` is already reduced to scheme, host
    /// and path.
    #[error("{url}: {what}")]
    Transport { url: String, what: Transport },
    /// The ticket a row names is not in the store, or could not be read there.
    #[error("ticket {0} could not be read from the store")]
    Unreadable(String),
    /// The webhook answered with a status other than 2xx.
    #[error("HTTP {code}{}", .reason.map(|r| format!(" {r}")).unwrap_or_default())]
    Status {
        code: u16,
        reason: Option<&'static str>,
    },
}

/// How a webhook request failed below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    #[error("timed out")]
    TimedOut,
    #[error("connection failed")]
    Connect,
    #[error("redirected (not followed)")]
    Redirected,
    #[error("request failed")]
    Other,
}

impl DeliveryError {
    /// What went wrong, with the URL reduced to scheme, host and path (never reqwest's own
    /// message, which carries the whole URL).
    fn transport(url: &str, e: reqwest::Error) -> DeliveryError {
        let what = if e.is_timeout() {
            Transport::TimedOut
        } else if e.is_connect() {
            Transport::Connect
        } else if e.is_redirect() {
            Transport::Redirected
        } else {
            Transport::Other
        };
        DeliveryError::Transport {
            url: crate::secret::redact_url(url),
            what,
        }
    }

    /// A status the webhook answered with, worded as the HTTP library words it.
    fn status(s: reqwest::StatusCode) -> DeliveryError {
        DeliveryError::Status {
            code: s.as_u16(),
            reason: Some(s.canonical_reason().unwrap_or("<unknown status code>")),
        }
    }
}

/// One pending dispatch of a ticket change, stored with its ticket's id, device and mode
/// (`"head"`, see [`DispatchRow::new_json`]). With a webhook the row carries the ticket's JSON
/// as the change left it, sent byte for byte ([`DispatchRow::read_stored`] reads such a row
/// without scanning the ticket); without one the row names its ticket, and what is published
/// is the ticket as stored when the row goes out — the state the change left, or a later one
/// whose own row follows in the same lane (see [`DispatchRow::new`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "StoredRow")]
pub struct DispatchRow {
    /// `opened`, `updated`, `settled` or `transition`.
    pub event: String,
    /// The ticket the row announces a change of (and, in rows written before the row named
    /// its ticket, the JSON to send).
    pub ticket: TicketJson,
    pub mqtt_done: bool,
    pub webhook_done: bool,
    pub attempts: u32,
    /// Wall-clock epoch ms before which no retry is made.
    pub next_attempt_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Stored as `"ticket_as_sent": true` in a row that carries its ticket's JSON: the JSON to
    /// send, byte for byte. Rows written before it hold a ticket that is decoded and encoded
    /// again on reading, as it was then sent. A row that names its ticket does not write it.
    pub ticket_as_sent: AsSent,
}

/// The `ticket_as_sent` mark of a [`DispatchRow`] (always `true` once read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsSent;

impl Serialize for AsSent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl Serialize for DispatchRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut row = s.serialize_struct("DispatchRow", 9)?;
        row.serialize_field("event", &self.event)?;
        let carried = self.ticket.json.is_some();
        if carried {
            row.serialize_field("ticket", &self.ticket)?;
        } else {
            row.skip_field("ticket")?;
        }
        row.serialize_field("mqtt_done", &self.mqtt_done)?;
        row.serialize_field("webhook_done", &self.webhook_done)?;
        row.serialize_field("attempts", &self.attempts)?;
        row.serialize_field("next_attempt_ms", &self.next_attempt_ms)?;
        match &self.last_error {
            Some(e) => row.serialize_field("last_error", e)?,
            None => row.skip_field("last_error")?,
        }
        if carried {
            row.serialize_field("ticket_as_sent", &self.ticket_as_sent)?;
        } else {
            row.skip_field("ticket_as_sent")?;
        }
        row.serialize_field("head", &self.ticket.head())?;
        row.end()
    }
}

/// A row's `"head"`: the fields of its ticket the worker reads, as written.
#[derive(Serialize)]
struct HeadRef<'a> {
    id: &'a str,
    device_id: &'a str,
    failure_mode: &'a str,
}

/// The fields of a stored dispatch row after its ticket (see [`DispatchRow::read_stored`]).
#[derive(Deserialize)]
struct StoredTail {
    mqtt_done: bool,
    webhook_done: bool,
    attempts: u32,
    next_attempt_ms: i64,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    ticket_as_sent: bool,
    #[serde(default)]
    head: Option<TicketHead>,
}

impl DispatchRow {
    /// Reads a stored row that carries its ticket, laid out as [`DispatchRow::new_json`] and
    /// [`DispatchRow`]'s `Serialize` write it —
    /// `{"event":"<kind>","ticket":<ticket>,"mqtt_done":…,"head":{…}}`,
    /// marked as sent as it is and with its head — without scanning the ticket's JSON: the
    /// ticket ends where the row's own `,"mqtt_done":` begins (the last one in the row: what
    /// follows the ticket is the row's few fields, whose strings cannot hold an unescaped
    /// quote), and only those fields are decoded. The ticket's bytes are the JSON the commit
    /// encoded for the ticket's own record, stored under sled's checksums; they are published
    /// as they are, as before. `None` for any other layout (an older row, a row this does not
    /// recognise): the caller then decodes it as JSON, which quarantines what cannot be read.
    pub fn read_stored(bytes: &[u8]) -> Option<DispatchRow> {
        const MARK: &[u8] = b",\"mqtt_done\":";
        let rest = bytes.strip_prefix(b"{\"event\":\"")?;
        let quote = rest.iter().position(|&b| b == b'"')?;
        let event = match &rest[..quote] {
            b"opened" => ChangeKind::Opened,
            b"updated" => ChangeKind::Updated,
            b"settled" => ChangeKind::Settled,
            b"transition" => ChangeKind::Transition,
            _ => return None,
        };
        let rest = rest[quote..].strip_prefix(b"\",\"ticket\":")?;
        let end = rest.windows(MARK.len()).rposition(|w| w == MARK)?;
        let (ticket, tail) = rest.split_at(end);
        if ticket.first() != Some(&b'{') || ticket.last() != Some(&b'}') {
            return None;
        }
        // `{` and the tail without its leading comma: an object of the row's own fields.
        let mut fields = Vec::with_capacity(tail.len());
        fields.push(b'{');
        fields.extend_from_slice(tail.get(1..)?);
        let t: StoredTail = serde_json::from_slice(&fields).ok()?;
        let head = t.head.filter(|_| t.ticket_as_sent)?;
        let json = std::str::from_utf8(ticket).ok()?;
        Some(DispatchRow {
            event: event.as_str().to_string(),
            ticket: head.with(Some(json.into())),
            mqtt_done: t.mqtt_done,
            webhook_done: t.webhook_done,
            attempts: t.attempts,
            next_attempt_ms: t.next_attempt_ms,
            last_error: t.last_error,
            ticket_as_sent: AsSent,
        })
    }
}

/// A dispatch row as stored: the ticket left as JSON text, when the row carries it.
#[derive(Deserialize)]
struct StoredRow {
    event: String,
    #[serde(default)]
    ticket: Option<Box<RawValue>>,
    mqtt_done: bool,
    webhook_done: bool,
    attempts: u32,
    next_attempt_ms: i64,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    ticket_as_sent: bool,
    /// Absent from rows written before it: then the ticket's JSON is read for these.
    #[serde(default)]
    head: Option<TicketHead>,
}

impl TryFrom<StoredRow> for DispatchRow {
    type Error = serde_json::Error;

    fn try_from(r: StoredRow) -> Result<DispatchRow, serde_json::Error> {
        let ticket = match (r.ticket, r.ticket_as_sent, r.head) {
            // Names its ticket: sent as stored when the attempt is made.
            (None, _, Some(head)) => head.with(None),
            (None, _, None) => {
                return Err(serde::de::Error::custom(
                    "a dispatch row with neither a ticket nor its head",
                ))
            }
            // Written beside the ticket by the same commit: nothing of the ticket is decoded.
            (Some(json), true, Some(head)) => head.with(Some(json.into())),
            (Some(json), true, None) => TicketJson::from_raw(json)?,
            (Some(json), false, _) => {
                TicketJson::new(&serde_json::from_str::<Ticket>(json.get())?)?
            }
        };
        Ok(DispatchRow {
            event: r.event,
            ticket,
            mqtt_done: r.mqtt_done,
            webhook_done: r.webhook_done,
            attempts: r.attempts,
            next_attempt_ms: r.next_attempt_ms,
            last_error: r.last_error,
            ticket_as_sent: AsSent,
        })
    }
}

/// A ticket as its dispatch row holds it: the fields the worker reads and, in a row that
/// carries it, the JSON that is published (and posted inside the webhook's body). Reading such
/// a row scans the ticket's JSON but builds none of it (evidence, history), and publishing
/// sends it without encoding it.
#[derive(Debug, Clone)]
pub struct TicketJson {
    pub id: String,
    pub device_id: DeviceId,
    pub failure_mode: String,
    /// The ticket's JSON text (valid JSON: encoded by the commit, or checked when read);
    /// `None` in a row that names its ticket: the ticket is read from the store when sent.
    json: Option<Box<str>>,
}

/// The fields of a ticket's JSON that [`TicketJson`] reads.
#[derive(Deserialize)]
struct TicketHead {
    id: String,
    device_id: DeviceId,
    failure_mode: String,
}

impl TicketHead {
    /// The row's ticket: this head, with the JSON the row carries (`None`: it names it).
    fn with(self, json: Option<Box<str>>) -> TicketJson {
        TicketJson {
            id: self.id,
            device_id: self.device_id,
            failure_mode: self.failure_mode,
            json,
        }
    }
}

impl TicketJson {
    /// Encodes `t`: the JSON `serde_json::to_vec(t)` gives.
    pub fn new(t: &Ticket) -> Result<TicketJson, serde_json::Error> {
        Ok(TicketJson {
            json: Some(serde_json::to_string(t)?.into()),
            ..TicketJson::named(t)
        })
    }

    /// Names `t`: the row carries no copy of it.
    pub fn named(t: &Ticket) -> TicketJson {
        TicketJson {
            id: t.id.clone(),
            device_id: t.device_id.clone(),
            failure_mode: t.failure_mode.clone(),
            json: None,
        }
    }

    /// A ticket's JSON as written by [`TicketJson::new`] (or `serde_json::to_vec` of a ticket).
    pub fn from_raw(json: Box<RawValue>) -> Result<TicketJson, serde_json::Error> {
        let head: TicketHead = serde_json::from_str(json.get())?;
        Ok(head.with(Some(json.into())))
    }

    fn head(&self) -> HeadRef<'_> {
        HeadRef {
            id: &self.id,
            device_id: &self.device_id,
            failure_mode: &self.failure_mode,
        }
    }

    /// The JSON the row carries, as published; `None` when the row names its ticket.
    pub fn carried(&self) -> Option<&[u8]> {
        self.json.as_deref().map(str::as_bytes)
    }
}

impl PartialEq for TicketJson {
    fn eq(&self, other: &TicketJson) -> bool {
        // The JSON when carried (its head is read from it); the head itself when named.
        self.json == other.json
            && (self.json.is_some()
                || (self.id == other.id
                    && self.device_id == other.device_id
                    && self.failure_mode == other.failure_mode))
    }
}

impl Serialize for TicketJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written as it is (checked, so that a row never carries what cannot be read back).
        let Some(json) = &self.json else {
            return Err(serde::ser::Error::custom("the row names its ticket"));
        };
        let raw: &RawValue = serde_json::from_str(json).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl DispatchRow {
    /// The row of a change. With a webhook it carries the ticket's JSON: the webhook's body is
    /// the change's own state, byte for byte, however late it goes out. Without one it names
    /// the ticket: the retained MQTT message is the ticket's current state, so the ticket as
    /// stored when the row goes out is what it should hold, and the ticket's JSON, the largest
    /// thing a commit writes, is written once instead of twice.
    pub fn new(c: &Change, has_webhook: bool) -> Result<DispatchRow, serde_json::Error> {
        Ok(DispatchRow {
            event: c.kind.as_str().to_string(),
            ticket: if has_webhook {
                TicketJson::new(&c.ticket)?
            } else {
                TicketJson::named(&c.ticket)
            },
            mqtt_done: false,
            webhook_done: !has_webhook,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            ticket_as_sent: AsSent,
        })
    }

    /// The stored JSON of `DispatchRow::new(c, has_webhook)` for `t` = `c.ticket`, written
    /// without building the row: byte for byte what `serde_json::to_vec` of the row gives (a
    /// test holds the two equal for every kind of change). `ticket_json` is the JSON of `t`
    /// the commit already made for the ticket's own record; the row carries it only when there
    /// is a webhook (see [`DispatchRow::new`]).
    pub fn new_json(
        kind: ChangeKind,
        t: &Ticket,
        ticket_json: &[u8],
        has_webhook: bool,
    ) -> Vec<u8> {
        let event = kind.as_str();
        let carried = if has_webhook { ticket_json.len() } else { 0 };
        let mut out = Vec::with_capacity(carried + event.len() + 160);
        // The kinds are plain lower-case words: nothing in them needs escaping.
        out.extend_from_slice(b"{\"event\":\"");
        out.extend_from_slice(event.as_bytes());
        if has_webhook {
            out.extend_from_slice(b"\",\"ticket\":");
            out.extend_from_slice(ticket_json);
            out.extend_from_slice(b",\"mqtt_done\":false,\"webhook_done\":false");
            out.extend_from_slice(
                b",\"attempts\":0,\"next_attempt_ms\":0,\"ticket_as_sent\":true,\"head\":",
            );
        } else {
            out.extend_from_slice(b"\",\"mqtt_done\":false,\"webhook_done\":true");
            out.extend_from_slice(b",\"attempts\":0,\"next_attempt_ms\":0,\"head\":");
        }
        let head = HeadRef {
            id: &t.id,
            device_id: &t.device_id,
            failure_mode: &t.failure_mode,
        };
        // Three strings into a Vec: cannot fail.
        let _ = serde_json::to_writer(&mut out, &head);
        out.push(b'}');
        out
    }
}

/// The webhook body of a change: `{"event": "ticket.<kind>", "ticket": …}`, the ticket as a
/// JSON value (as the body has always carried it).
pub fn webhook_body(event: &str, ticket_json: &[u8]) -> Vec<u8> {
    let ticket: serde_json::Value = serde_json::from_slice(ticket_json).unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "event": format!("ticket.{event}"),
        "ticket": ticket,
    }))
    .unwrap_or_default()
}

/// The JSON a row sends: the one it carries, or its ticket's as stored now. A stored ticket
/// that is absent, or whose JSON is not the ticket the row names, is an error of the attempt
/// (retried, then a dead letter); one that cannot be decoded is quarantined by the read.
fn ticket_json<'r>(
    store: &Store,
    row: &'r DispatchRow,
) -> Result<std::borrow::Cow<'r, [u8]>, DeliveryError> {
    if let Some(json) = row.ticket.carried() {
        return Ok(json.into());
    }
    let unreadable = || DeliveryError::Unreadable(row.ticket.id.clone());
    let json = store
        .ticket_json(&row.ticket.id)
        .map_err(|_| unreadable())?
        .ok_or_else(unreadable)?;
    match serde_json::from_slice::<TicketHead>(&json) {
        Ok(head) if head.id == row.ticket.id => Ok(json.into()),
        _ => {
            // Decoding it whole sets it aside when it cannot be read.
            let _ = store.ticket(&row.ticket.id);
            Err(unreadable())
        }
    }
}

/// What the dispatch step knows about a row besides the reports of its I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// The MQTT driver's word: retained publishes wait for the broker rather than fail.
    pub broker_connected: bool,
    /// `dispatch.max_attempts` (at least 1).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// A call to one of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// The ticket's state, retained, QoS 1.
    Publish,
    /// The signed webhook POST.
    Post,
}

/// What a call to a target reported (an error names no URL: it may carry a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Published(Result<(), DeliveryError>),
    Posted(Result<(), DeliveryError>),
}

/// What a dispatch step records besides the row: the happenings of [`events`], each logged and
/// counted by its `emit`.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Attempted(events::Attempted),
    /// A failed attempt, retried at the row's `next_attempt_ms`.
    Retrying(events::Retrying),
    /// The row used up its attempts (it moves to [`DEAD_QUEUE`]).
    GaveUp(events::GaveUp),
}

/// The dispatch step (pure): on a row's first step, the calls its undone targets need; on the
/// reports, done (removed), progress kept, a retry after backoff, or the dead-letter queue
/// after `max_attempts`.
pub fn step(row: &DispatchRow, facts: &FactsOf<Targets>, now_ms: i64) -> Step<Targets> {
    let known = &facts.known;
    if row.mqtt_done && row.webhook_done {
        return (Vec::new(), Update::Remove);
    }
    if facts.seen.is_empty() {
        let mut io = Vec::new();
        // Not connected is not a failed attempt: the row waits for the connection (the
        // connect wakes the worker).
        if !row.mqtt_done && known.broker_connected {
            io.push(Effect::Io(Io::Publish));
        }
        if !row.webhook_done {
            io.push(Effect::Io(Io::Post));
        }
        return (io, Update::Keep);
    }
    let mut row = row.clone();
    let mut effects = Vec::new();
    let mut error: Option<String> = None;
    for seen in &facts.seen {
        let (target, result) = match seen {
            Seen::Published(r) => (Target::Mqtt, r),
            Seen::Posted(r) => (Target::Webhook, r),
        };
        match result {
            Ok(()) => {
                match seen {
                    Seen::Published(_) => row.mqtt_done = true,
                    Seen::Posted(_) => row.webhook_done = true,
                }
                effects.push(Effect::Record(Record::Attempted(events::Attempted {
                    target,
                    result: Attempt::Ok,
                })));
            }
            Err(e) => {
                effects.push(Effect::Record(Record::Attempted(events::Attempted {
                    target,
                    result: Attempt::Error,
                })));
                error = Some(format!("{}: {e}", target.as_str()));
            }
        }
    }
    if row.mqtt_done && row.webhook_done {
        return (effects, Update::Remove);
    }
    let Some(error) = error else {
        // Some progress, the rest waits for the broker: keep what went out.
        return (effects, Update::Put(row));
    };
    row.attempts += 1;
    row.last_error = Some(error.clone());
    if row.attempts >= known.max_attempts.max(1) {
        effects.push(Effect::Record(Record::GaveUp(events::GaveUp {
            ticket: row.ticket.id.clone(),
            attempts: row.attempts,
            error,
        })));
        return (effects, Update::Dead(row));
    }
    let wait_ms = known.backoff.delay_ms(row.attempts, facts.jitter);
    row.next_attempt_ms = now_ms + wait_ms;
    effects.push(Effect::Record(Record::Retrying(events::Retrying {
        ticket: row.ticket.id.clone(),
        attempt: row.attempts,
        wait_ms,
        error,
    })));
    (effects, Update::Put(row))
}

/// The targets of field-service dispatch (the executors of the dispatch step's effects).
pub struct Targets {
    cfg: Config,
    metrics: Metrics,
    /// Kept by the MQTT driver: retained publishes wait for the broker rather than fail.
    broker_connected: Arc<AtomicBool>,
    client: crate::ingest::mqtt::Client,
    http: reqwest::Client,
}

impl Delivery for Targets {
    type Row = DispatchRow;
    type Known = Known;
    type Record = Record;
    type Io = Io;
    type Seen = Seen;
    const QUEUE: &'static str = QUEUE;
    const DEAD_QUEUE: Option<&'static str> = Some(DEAD_QUEUE);

    fn due_ms(row: &DispatchRow) -> i64 {
        row.next_attempt_ms
    }

    fn read_row(bytes: &[u8]) -> Option<DispatchRow> {
        DispatchRow::read_stored(bytes)
    }

    fn created_ms(_row: &DispatchRow) -> Option<i64> {
        None
    }

    /// Rows of one (device, mode) go out in commit order: the retained message is the latest
    /// state.
    fn lane(row: &DispatchRow) -> Option<String> {
        Some(format!(
            "{}\u{1f}{}",
            row.ticket.device_id, row.ticket.failure_mode
        ))
    }

    fn step(row: &DispatchRow, facts: &FactsOf<Self>, now_ms: i64) -> Step<Self> {
        step(row, facts, now_ms)
    }

    fn known(&self, _: &Store, _: &DispatchRow, _: i64) -> Result<Known, StoreError> {
        Ok(Known {
            broker_connected: self.broker_connected.load(Ordering::Relaxed),
            max_attempts: self.cfg.max_attempts,
            backoff: Backoff::new(self.cfg.retry_min.std(), self.cfg.retry_max.std()),
        })
    }

    fn record(&self, _: &mut Tx, record: Record) {
        match record {
            Record::Attempted(e) => e.emit(&self.metrics),
            Record::Retrying(e) => e.emit(),
            Record::GaveUp(e) => e.emit(&self.metrics),
        }
    }

    async fn perform(
        &self,
        store: &Store,
        key: &[u8],
        row: &DispatchRow,
        _: &Known,
        io: Io,
    ) -> Seen {
        // The ticket's JSON as a commit encoded it (see `TicketJson`).
        let json = match ticket_json(store, row) {
            Ok(json) => json,
            Err(e) => {
                return match io {
                    Io::Publish => Seen::Published(Err(e)),
                    Io::Post => Seen::Posted(Err(e)),
                }
            }
        };
        match io {
            Io::Publish => {
                let topic = format!(
                    "{}/{}/{}",
                    self.cfg.topic_prefix, row.ticket.device_id, row.ticket.failure_mode
                );
                let payload = json.into_owned();
                // Queued into the client's session: with clean_session = false rumqttc re-sends
                // it after a reconnect until the broker acknowledges it.
                let r = self
                    .client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
                    .await;
                Seen::Published(r.map_err(|e| DeliveryError::Client(e.to_string())))
            }
            Io::Post => Seen::Posted(self.post(row, &json, key).await),
        }
    }
}

impl Targets {
    async fn post(&self, row: &DispatchRow, json: &[u8], key: &[u8]) -> Result<(), DeliveryError> {
        let cfg = &self.cfg;
        let Some(url) = &cfg.webhook_url else {
            return Ok(());
        };
        let body = webhook_body(&row.event, json);
        let mut req = self
            .http
            .post(url.expose())
            .header("content-type", "application/json")
            // Stable per row: receivers can drop repeats of a delivery retried after a timeout.
            .header("x-forewarn-delivery", hex::encode(key));
        if let Some(secret) = &cfg.webhook_secret {
            req = req.header(
                "x-forewarn-signature",
                crate::sign::webhook_signature(secret.expose().as_bytes(), &body),
            );
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::transport(url.expose(), e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::status(resp.status()))
        }
    }
}

/// The delivery worker of the `dispatch` outbox: each row to MQTT and the webhook.
pub struct Dispatcher {
    worker: Worker<Targets>,
}

/// Longest wait between rounds: a retry is never later than this after its due time even if
/// the wake-up was missed.
const POLL: Duration = Duration::from_millis(500);

impl Dispatcher {
    pub fn new(
        cfg: Config,
        store: Store,
        metrics: Metrics,
        wake: Arc<Notify>,
        broker_connected: Arc<AtomicBool>,
        client: crate::ingest::mqtt::Client,
    ) -> Result<Dispatcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the signed body somewhere the configuration did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let gauges = Gauges {
            depth: metrics.outbox_depth.with_label_values(&[QUEUE]),
            oldest_age: None,
        };
        Ok(Dispatcher {
            worker: Worker {
                delivery: Targets {
                    cfg,
                    metrics,
                    broker_connected,
                    client,
                    http,
                },
                store,
                clock: Arc::new(SystemClock),
                gauges,
                wake,
                poll: POLL,
                gate: None,
            },
        })
    }

    /// Sends only while `gate` is open (cluster mode: while the instance is in good standing).
    pub fn with_gate(mut self, gate: Option<Arc<dyn crate::outbox::Gate>>) -> Dispatcher {
        self.worker.gate = gate;
        self
    }

    /// Replaces the wall clock that due times are read from (the daemon's, shared with notify).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Dispatcher {
        self.worker.clock = clock;
        self
    }

    /// Delivers outbox rows until shutdown. Woken by commits and broker connections; also
    /// wakes at the next retry's due time.
    pub async fn run(self, shutdown: CancellationToken) {
        self.worker.run(shutdown).await
    }
}

/// `[dispatch]`: where ticket changes go for field service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ticket changes are published here, retained, QoS 1: `{prefix}/{device_id}/{failure_mode}`.
    pub topic_prefix: String,
    /// Field-service webhook (unset: MQTT only). A secret: a token may ride in its query.
    pub webhook_url: Option<Secret>,
    /// HMAC-SHA256 secret for `X-Forewarn-Signature` (also `FOREWARN_DISPATCH_SECRET`).
    pub webhook_secret: Option<Secret>,
    /// Delivery attempts of a ticket change to the webhook; then it moves to the dead queue
    /// (counted, logged).
    pub max_attempts: u32,
    /// Retry backoff between webhook attempts: exponential with jitter, from this...
    pub retry_min: Dur,
    /// ...up to this.
    pub retry_max: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topic_prefix: "forewarn/tickets".into(),
            webhook_url: None,
            webhook_secret: None,
            max_attempts: 20,
            retry_min: Dur::secs(1),
            retry_max: Dur::secs(300),
        }
    }
}

pub mod events;
#[cfg(test)]
mod tests;
