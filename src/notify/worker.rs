//! Delivery of notifications: due outbox rows → route → render → provider, with retries
//! (exponential backoff with jitter, Retry-After), fallback to the next channel, reminders for
//! unacknowledged urgent tickets, and the daily budget. Every step is recorded in the customer's
//! timeline.
//!
//! The decisions are the pure [`step`] (row, facts, now → effects, update); [`Deliver`] reads
//! the facts and executes the effects (provider calls, store writes, counters), and the
//! [`crate::outbox`] worker runs the queue: due times, the commit before each call, gauges.
//!
//! Crash safety: before calling a provider the row records the attempt ("sending", with a
//! fingerprint of the SMS text) durably. After a kill -9 between "sent" and "recorded", the next
//! pass finds that attempt still "sending" and, for SMS and calls, asks the provider what it sent
//! to the customer since then ([`Provider::lookup`]): a message or call it holds that matches
//! (same number, created after the attempt, an SMS with the same text, and a provider id notify
//! has no record of) is taken as the one sent, and nothing is sent again — at most once to a
//! person. A failed look-up sends nothing either (the row retries). Providers with no look-up
//! (push, webhook, e-mail, MQTT) get the request again with the same idempotency key: at least
//! once, never lost.
//! On success the row's removal, the timeline entry, the budget count and any reminder row are
//! one atomic commit.

#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod timer_tests;

use super::channels::{Accepted, Found, Lookup, Outgoing, Provider, SendError};
use super::events::{self, Outcome};
use super::route::{self, Decision, RouteInput};
use super::templates::{Facts as TemplateFacts, MessageKind, Rendered};
use super::{Answer, Notifier, NotifyConfig, TicketDesk, TimelineEntry, QUEUE};
use crate::domain::{Status, Ticket};
use crate::fleet::{Channel, Customer};
use crate::outbox::{Backoff, Delivery, Effect, Facts, Gauges, Update, Worker};
use crate::store::{Store, StoreError, Tx};
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: i64,
    pub channel: Channel,
    /// "sending", "accepted", "retry", "unanswered" (sent, no answer: it may have arrived),
    /// "failed".
    pub outcome: String,
    pub detail: String,
    /// SHA-256 (hex) of the SMS text this attempt sent, to recognise it at the provider after
    /// a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// SHA-256 (hex) of a message text as the provider would keep it.
pub fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.trim().as_bytes()))
}

/// How far a provider's clock may be behind ours when matching an interrupted attempt.
const CLOCK_SLACK_MS: i64 = 10 * 60 * 1000;

/// Which of the provider's messages (newest first) is the one an interrupted attempt sent
/// (pure): created no earlier than the first interrupted attempt (less the clock slack), an
/// SMS with one of the attempts' texts, and a provider id notify has no record of (`known`).
pub fn interrupted_match<'a>(
    found: &'a [Found],
    interrupted: &[&Attempt],
    known: &dyn Fn(&str) -> bool,
) -> Option<&'a Found> {
    let since = interrupted.iter().map(|a| a.at_ms).min()? - CLOCK_SLACK_MS;
    let prints: Vec<&str> = interrupted
        .iter()
        .filter_map(|a| a.fingerprint.as_deref())
        .collect();
    found.iter().find(|f| {
        f.created_ms.is_none_or(|c| c >= since)
            && (prints.is_empty()
                || f.body
                    .as_deref()
                    .is_some_and(|b| prints.contains(&fingerprint(b).as_str())))
            && !known(&f.provider_id)
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Stable identity; the idempotency key is derived from it and the channel.
    pub id: String,
    pub ticket_id: String,
    pub customer_id: String,
    pub kind: MessageKind,
    pub urgent: bool,
    pub urgency_reason: String,
    /// The ticket as it was when the message was queued (the desk's copy is preferred).
    pub ticket: Ticket,
    pub created_ms: i64,
    /// Not before this wall time (retry backoff, quiet hours, budget, reminder timer).
    pub due_ms: i64,
    /// 0 for the first message, n for the n-th reminder.
    pub reminder: u32,
    /// Reminders: the channel that was used before (climb above it).
    pub escalate_from: Option<Channel>,
    /// Channels to try in order, decided when first routed (empty until then).
    pub plan: Vec<Channel>,
    pub step: usize,
    /// Attempts on `plan[step]`.
    pub tries: u32,
    pub attempts: Vec<Attempt>,
}

impl OutboxRow {
    /// The first message of a chain, queued at `now_ms` for `ticket`'s `customer_id`: nothing
    /// routed or tried yet, due at once; its id is `<ticket>/<kind>/<now_ms>`.
    pub fn queued(
        ticket: &Ticket,
        customer_id: &str,
        kind: MessageKind,
        urgent: bool,
        urgency_reason: String,
        now_ms: i64,
    ) -> OutboxRow {
        OutboxRow {
            id: format!("{}/{}/{now_ms}", ticket.id, kind.as_str()),
            ticket_id: ticket.id.clone(),
            customer_id: customer_id.to_string(),
            kind,
            urgent,
            urgency_reason,
            ticket: ticket.clone(),
            created_ms: now_ms,
            due_ms: now_ms,
            reminder: 0,
            escalate_from: None,
            plan: Vec::new(),
            step: 0,
            tries: 0,
            attempts: Vec::new(),
        }
    }

    pub fn idempotency_key(&self, ch: Channel) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{}\x1f{}", self.id, ch.as_str()).as_bytes());
        hex::encode(&d[..16])
    }
}

/// What a provider id (Twilio SID) refers to, for status callbacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentRecord {
    pub row: OutboxRow,
    pub channel: Channel,
    /// A final status was already applied (callbacks repeat).
    pub settled: bool,
}

pub(crate) fn budget_key(customer: &str, day: &str) -> String {
    format!("notify/budget/{customer}/{day}")
}

/// What the notification step knows about a row besides the reports of its I/O, read once
/// per row by [`Delivery::known`].
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// The policy: routing, budget, attempts, backoff, reminders.
    pub cfg: Arc<NotifyConfig>,
    /// The desk's copy of the ticket (the row's own when the desk has none).
    pub ticket: Ticket,
    /// The customer's answer to this ticket, if any.
    pub answered: Option<Answer>,
    /// The customer already had an urgent alert for this ticket.
    pub had_urgent: bool,
    /// A warning about this ticket reached a provider (follow-ups depend on it).
    pub alerted: bool,
    pub customer: Option<Customer>,
    /// The customer's local day (the budget's) and what was sent on it; `None` when the count
    /// could not be read (counting from 0 would overspend the budget).
    pub day: String,
    pub sent_today: Option<u32>,
    /// Channels with a configured provider.
    pub available: BTreeSet<Channel>,
    /// The customer's channels that answered STOP.
    pub opted_out: BTreeSet<Channel>,
    /// Channels that cannot carry this message to this customer, and why.
    pub unusable: BTreeMap<Channel, String>,
    /// The message in the customer's language (with a customer).
    pub rendered: Option<Rendered>,
    /// This message's own e-mail reply address: (token, address).
    pub reply: Option<(String, String)>,
}

/// A call to a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Sends the message on `channel` to `address` — unless the provider shows that one of the
    /// `interrupted` attempts already sent it.
    Send {
        channel: Channel,
        address: String,
        interrupted: Vec<Attempt>,
    },
}

/// What a provider call reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Sent {
        channel: Channel,
        result: Result<Accepted, SendError>,
        /// An interrupted attempt came before this one.
        resent: bool,
    },
}

/// What a notification step records besides the row.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Timeline {
        customer: String,
        at_ms: i64,
        entry: TimelineEntry,
    },
    /// An attempt that did not reach the provider, or a row held or dropped.
    Attempt(events::Attempt),
    /// A provider took the message.
    Sent(events::Sent),
    Fallback(Channel),
    Latency {
        channel: Channel,
        seconds: f64,
    },
    Escalated,
    /// Messages sent to the customer on their local day.
    Budget {
        customer: String,
        day: String,
        sent: u32,
    },
    /// The customer had the urgent alert of this ticket.
    UrgentSent {
        ticket: String,
    },
    /// A warning reached the customer on `channel` (follow-ups, replies without a number).
    Warned {
        ticket: String,
        customer: String,
        channel: Channel,
    },
    /// What a provider id refers to (status callbacks).
    ProviderId {
        id: String,
        record: SentRecord,
    },
    /// An e-mail's own reply address, recorded before it leaves.
    ReplyTo {
        token: String,
        address: String,
        target: super::ReplyTarget,
    },
    /// The next reminder of an unacknowledged urgent message.
    Reminder(OutboxRow),
    Retrying(events::Retrying),
    Undeliverable(events::Undeliverable),
}

/// Effects and update of a notification step.
pub type NotifyStep = (Vec<Effect<Record, Io>>, Update<OutboxRow>);

fn timeline(customer: &str, now: i64, entry: TimelineEntry) -> Effect<Record, Io> {
    Effect::Record(Record::Timeline {
        customer: customer.to_string(),
        at_ms: now,
        entry,
    })
}

fn counted(channel: Option<Channel>, outcome: Outcome) -> Effect<Record, Io> {
    Effect::Record(Record::Attempt(events::Attempt { channel, outcome }))
}

/// The notification step (pure). On a row's first step: dropped when it is stale (a reminder
/// already answered, a follow-up to a customer never alerted, a closed ticket) or its customer
/// is unknown; routed once (send, hold for quiet hours or budget, drop); a retry held out of
/// quiet hours; the channel skipped when it has no contact or provider; otherwise the attempt is
/// recorded ("sending") and the send asked for. On the provider's report: removed with the
/// budget, timeline and reminder on success; a retry after backoff (or `Retry-After`); the next
/// channel after `max_attempts` or a permanent failure; dropped when none is left.
pub fn step(row: &OutboxRow, facts: &Facts<Known, Seen>, now: i64) -> NotifyStep {
    match facts.seen.first() {
        None => before_send(row, &facts.known, now),
        Some(Seen::Sent {
            channel,
            result,
            resent,
        }) => after_send(row, facts, *channel, result, *resent, now),
    }
}

fn before_send(row: &OutboxRow, k: &Known, now: i64) -> NotifyStep {
    let ticket = &k.ticket;
    let answered = k.answered.as_ref();
    // Not asked again what they already answered; nothing to say about a closed ticket.
    let stale = match row.kind {
        MessageKind::Reminder => (ticket.status != Status::Open || answered.is_some()).then(|| {
            format!(
                "reminder not needed: ticket {}{}",
                ticket.status.as_str(),
                answered
                    .map(|a| format!(", customer answered {:?} by {}", a.answer, a.channel))
                    .unwrap_or_default()
            )
        }),
        // Follow-ups go only to a customer notify actually alerted about this ticket.
        MessageKind::Resolved
        | MessageKind::VisitConfirmed
        | MessageKind::VisitRescheduled
        | MessageKind::NoActionNeeded => (!k.alerted)
            .then(|| "not sent: the customer was never alerted about this ticket".to_string()),
        // Opened already urgent (e.g. failure predicted soon) and then raised to urgent
        // priority: the customer has had the urgent alert. (A fallback row of that alert has
        // its plan already and goes on.)
        MessageKind::Urgent | MessageKind::Update if row.plan.is_empty() && k.had_urgent => {
            Some("not sent: the customer already had an urgent alert for this ticket".into())
        }
        _ => (!ticket.is_live())
            .then(|| format!("not sent: ticket already {}", ticket.status.as_str())),
    };
    if let Some(why) = stale {
        let e = TimelineEntry::new(now, "dropped", &row.ticket_id, why);
        return (vec![timeline(&row.customer_id, now, e)], Update::Remove);
    }
    let Some(customer) = &k.customer else {
        let e = TimelineEntry::new(now, "dropped", &row.ticket_id, "customer unknown");
        return (
            vec![
                counted(None, Outcome::Dropped),
                timeline(&row.customer_id, now, e),
            ],
            Update::Remove,
        );
    };
    let Some(sent_today) = k.sent_today else {
        // Left for the next round (the budget count was unreadable).
        return (Vec::new(), Update::Keep);
    };
    let mut row = row.clone();
    let mut effects = Vec::new();
    if row.plan.is_empty() {
        let input = RouteInput {
            opted_out: &k.opted_out,
            unusable: &k.unusable,
            cfg: &k.cfg.routing,
            available: &k.available,
            customer,
            urgent: row.urgent,
            urgency_reason: &row.urgency_reason,
            escalate_from: row.escalate_from,
            now_ms: now,
            sent_today,
            budget: customer.daily_budget.unwrap_or(k.cfg.daily_budget),
            urgent_over_budget: k.cfg.urgent_over_budget,
        };
        match route::route(&input) {
            Decision::Send { channels, reason } => {
                let Some(&first) = channels.first() else {
                    return (Vec::new(), Update::Keep);
                };
                row.plan = channels;
                row.step = 0;
                row.tries = 0;
                let e = TimelineEntry::new(
                    now,
                    "decision",
                    &row.ticket_id,
                    format!("{}: {reason}", first.as_str().to_uppercase()),
                )
                .channel(first);
                effects.push(timeline(&customer.id, now, e));
            }
            Decision::Hold { until_ms, reason } => {
                row.due_ms = until_ms;
                let e = TimelineEntry::new(now, "decision", &row.ticket_id, reason).outcome("held");
                return (
                    vec![counted(None, Outcome::Held), timeline(&customer.id, now, e)],
                    Update::Put(row),
                );
            }
            Decision::Drop { reason } => {
                let e =
                    TimelineEntry::new(now, "decision", &row.ticket_id, reason).outcome("dropped");
                return (
                    vec![
                        counted(None, Outcome::Dropped),
                        timeline(&customer.id, now, e),
                    ],
                    Update::Remove,
                );
            }
        }
    } else if !row.urgent {
        // A retry of an advisory message never lands in quiet hours either.
        if let Some((until, hhmm)) = route::quiet_until(customer, now) {
            row.due_ms = until;
            let e = TimelineEntry::new(
                now,
                "decision",
                &row.ticket_id,
                format!("retry held: quiet hours until {hhmm}"),
            )
            .outcome("held");
            return (vec![timeline(&customer.id, now, e)], Update::Put(row));
        }
    }
    let Some(&ch) = row.plan.get(row.step) else {
        // A plan step past its end (a row written by hand): nothing is left to try.
        let e = TimelineEntry::new(now, "dropped", &row.ticket_id, "no channel left");
        effects.push(timeline(&customer.id, now, e));
        return (effects, Update::Remove);
    };
    let Some(address) = customer.contacts.get(&ch).cloned() else {
        return fall_back(row, effects, ch, "no contact on this channel".into(), now);
    };
    if !k.available.contains(&ch) {
        return fall_back(row, effects, ch, "no provider configured".into(), now);
    }
    // Attempts on this channel that never got an answer recorded: a crash interrupted them.
    let interrupted: Vec<Attempt> = row
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome.as_str(), "sending" | "unanswered") && a.channel == ch)
        .cloned()
        .collect();
    // Committed before the provider call: after a crash from here on, the next round knows an
    // attempt may have reached the provider.
    row.attempts.push(Attempt {
        at_ms: now,
        channel: ch,
        outcome: "sending".into(),
        detail: if interrupted.is_empty() {
            String::new()
        } else {
            "after an interrupted attempt".into()
        },
        fingerprint: (ch == Channel::Sms)
            .then(|| k.rendered.as_ref().map(|r| fingerprint(&r.sms)))
            .flatten(),
    });
    // E-mail: this message's own reply address, known before it leaves (a reply can only come
    // back to an address we recorded).
    if ch == Channel::Email {
        if let Some((token, address)) = &k.reply {
            effects.push(Effect::Record(Record::ReplyTo {
                token: token.clone(),
                address: address.clone(),
                target: super::ReplyTarget {
                    ticket_id: row.ticket_id.clone(),
                    customer_id: customer.id.clone(),
                },
            }));
        }
    }
    effects.push(Effect::Io(Io::Send {
        channel: ch,
        address,
        interrupted,
    }));
    (effects, Update::Put(row))
}

fn after_send(
    row: &OutboxRow,
    facts: &Facts<Known, Seen>,
    ch: Channel,
    result: &Result<Accepted, SendError>,
    resent: bool,
    now: i64,
) -> NotifyStep {
    let k = &facts.known;
    let Some(customer) = &k.customer else {
        return (Vec::new(), Update::Keep);
    };
    let mut row = row.clone();
    let kind = row.kind;
    match result {
        Ok(acc) => {
            let recovered = resent && acc.detail.starts_with(FOUND);
            if let Some(a) = row.attempts.last_mut() {
                a.outcome = "accepted".into();
                a.detail = acc.detail.clone();
            }
            let mut effects = vec![
                Effect::Record(Record::Sent(events::Sent {
                    channel: ch,
                    kind,
                    ticket: row.ticket_id.clone(),
                })),
                Effect::Record(Record::Latency {
                    channel: ch,
                    seconds: (now - row.created_ms).max(0) as f64 / 1000.0,
                }),
                Effect::Record(Record::Budget {
                    customer: customer.id.clone(),
                    day: k.day.clone(),
                    sent: k.sent_today.unwrap_or(0) + 1,
                }),
            ];
            if matches!(kind, MessageKind::Urgent | MessageKind::Update) {
                effects.push(Effect::Record(Record::UrgentSent {
                    ticket: row.ticket_id.clone(),
                }));
            }
            if kind.is_warning() {
                effects.push(Effect::Record(Record::Warned {
                    ticket: row.ticket_id.clone(),
                    customer: customer.id.clone(),
                    channel: ch,
                }));
            }
            let locale = k.rendered.as_ref().map_or("", |r| r.locale.as_str());
            let e = TimelineEntry::new(
                now,
                "message",
                &row.ticket_id,
                format!(
                    "{} {} message accepted ({}, locale {locale}{})",
                    ch.as_str(),
                    kind.as_str(),
                    acc.detail,
                    match (resent, recovered) {
                        (true, true) => ", not sent again",
                        (true, false) =>
                            ", sent again: the interrupted attempt never reached the customer",
                        _ => "",
                    }
                ),
            )
            .channel(ch)
            .outcome("sent")
            .message(kind);
            effects.push(timeline(&customer.id, now, e));
            if let Some(pid) = &acc.provider_id {
                if matches!(ch, Channel::Sms | Channel::Voice) {
                    effects.push(Effect::Record(Record::ProviderId {
                        id: pid.clone(),
                        record: SentRecord {
                            row: row.clone(),
                            channel: ch,
                            settled: false,
                        },
                    }));
                }
            }
            let wants_ack = matches!(
                kind,
                MessageKind::Urgent | MessageKind::Update | MessageKind::Reminder
            );
            if wants_ack && k.answered.is_none() && row.reminder < k.cfg.max_reminders {
                let due = now + k.cfg.ack_timeout.as_millis_i64();
                let n = row.reminder + 1;
                effects.push(Effect::Record(Record::Reminder(OutboxRow {
                    // Unique per chain, so each reminder has its own idempotency key.
                    id: format!("{}/r{n}", row.id),
                    kind: MessageKind::Reminder,
                    urgent: true,
                    urgency_reason: format!(
                        "urgent: not acknowledged {} after the {} message",
                        k.cfg.ack_timeout,
                        if row.reminder == 0 {
                            "first"
                        } else {
                            "previous"
                        }
                    ),
                    created_ms: due,
                    due_ms: due,
                    reminder: n,
                    escalate_from: Some(ch),
                    plan: Vec::new(),
                    step: 0,
                    tries: 0,
                    attempts: Vec::new(),
                    ..row.clone()
                })));
            }
            if kind == MessageKind::Reminder {
                effects.push(Effect::Record(Record::Escalated));
            }
            (effects, Update::Remove)
        }
        Err(SendError::Retry { detail, after }) => {
            let unanswered = super::channels::no_answer(detail);
            let mut effects = vec![counted(Some(ch), Outcome::Retry)];
            row.tries += 1;
            if let Some(a) = row.attempts.last_mut() {
                // No answer: the provider may have the message; the next attempt asks first.
                a.outcome = if unanswered { "unanswered" } else { "retry" }.into();
                a.detail = detail.clone();
            }
            if row.tries >= k.cfg.max_attempts {
                let why = format!("{detail} (after {} attempts)", k.cfg.max_attempts);
                return fall_back(row, effects, ch, why, now);
            }
            let backoff = Backoff::new(k.cfg.retry_min.std(), k.cfg.retry_max.std())
                .delay_ms(row.tries, facts.jitter);
            let wait = after
                .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
                .max(backoff);
            row.due_ms = now.saturating_add(wait);
            effects.push(Effect::Record(Record::Retrying(events::Retrying {
                channel: ch,
                ticket: row.ticket_id.clone(),
                tries: row.tries,
                wait_ms: wait,
                error: detail.clone(),
            })));
            let e = TimelineEntry::new(
                now,
                "attempt",
                &row.ticket_id,
                format!(
                    "{} attempt {} failed: {detail}; retry in {}s",
                    ch.as_str(),
                    row.tries,
                    (wait + 999) / 1000
                ),
            )
            .channel(ch)
            .outcome("retry");
            effects.push(timeline(&customer.id, now, e));
            (effects, Update::Put(row))
        }
        Err(SendError::Permanent { detail }) => {
            if let Some(a) = row.attempts.last_mut() {
                a.outcome = "failed".into();
                a.detail = detail.clone();
            }
            fall_back(row, Vec::new(), ch, detail.clone(), now)
        }
    }
}

/// The channel failed for good: the next channel in the plan, or give up with the reason.
fn fall_back(
    mut row: OutboxRow,
    mut effects: Vec<Effect<Record, Io>>,
    failed: Channel,
    detail: String,
    now: i64,
) -> NotifyStep {
    effects.push(counted(Some(failed), Outcome::Failed));
    if let Some(&next) = row.plan.get(row.step + 1) {
        effects.push(Effect::Record(Record::Fallback(failed)));
        row.step += 1;
        row.tries = 0;
        row.due_ms = now;
        let e = TimelineEntry::new(
            now,
            "fallback",
            &row.ticket_id,
            format!(
                "{} failed ({detail}); trying {} next",
                failed.as_str(),
                next.as_str()
            ),
        )
        .channel(next);
        effects.push(timeline(&row.customer_id, now, e));
        (effects, Update::Put(row))
    } else {
        effects.push(Effect::Record(Record::Undeliverable(
            events::Undeliverable {
                ticket: row.ticket_id.clone(),
            },
        )));
        let e = TimelineEntry::new(
            now,
            "dropped",
            &row.ticket_id,
            format!(
                "{} failed ({detail}); no channel left: message undeliverable",
                failed.as_str()
            ),
        )
        .channel(failed)
        .outcome("failed");
        effects.push(timeline(&row.customer_id, now, e));
        (effects, Update::Remove)
    }
}

/// The notifier as the executor of notification steps, with the desk it reads tickets and
/// customers from.
pub struct Deliver<'a> {
    pub notifier: &'a Notifier,
    pub desk: &'a dyn TicketDesk,
}

impl Delivery for Deliver<'_> {
    type Row = OutboxRow;
    type Known = Known;
    type Record = Record;
    type Io = Io;
    type Seen = Seen;
    const QUEUE: &'static str = QUEUE;
    // A message that failed on every channel is dropped with a timeline entry a person reads.
    const DEAD_QUEUE: Option<&'static str> = None;

    fn due_ms(row: &OutboxRow) -> i64 {
        row.due_ms
    }

    fn created_ms(row: &OutboxRow) -> Option<i64> {
        Some(row.created_ms)
    }

    fn step(row: &OutboxRow, facts: &Facts<Known, Seen>, now_ms: i64) -> NotifyStep {
        step(row, facts, now_ms)
    }

    fn known(&self, store: &Store, row: &OutboxRow, now: i64) -> Result<Known, StoreError> {
        let n = self.notifier;
        let ticket = self
            .desk
            .ticket(&row.ticket_id)
            .unwrap_or_else(|| row.ticket.clone());
        let answered: Option<Answer> = store
            .get_kv(&format!("notify/answer/{}", row.ticket_id))
            .ok()
            .flatten();
        let had_urgent = store
            .get_kv::<bool>(&format!("notify/urgent/{}", row.ticket_id))
            .ok()
            .flatten()
            .is_some();
        let customer = self.desk.customer(&row.customer_id);
        let (day, sent_today, opted_out, unusable, rendered) = match &customer {
            None => Default::default(),
            Some(c) => {
                let day = route::local_day(c, now);
                let sent = store.get_kv::<u32>(&budget_key(&c.id, &day));
                if let Err(e) = &sent {
                    tracing::error!(error = %e, "notify budget unreadable: the row waits");
                }
                let mut unusable = BTreeMap::new();
                if !n.templates.speaks(&c.locale) {
                    unusable.insert(
                        Channel::Voice,
                        format!(
                            "no text-to-speech voice for {} (notify templates: voice_language)",
                            if c.locale.is_empty() {
                                "this customer's language"
                            } else {
                                c.locale.as_str()
                            }
                        ),
                    );
                }
                let facts = n.facts(&ticket, c, self.desk, now);
                let rendered = n
                    .templates
                    .render(&c.locale, row.kind, &facts, answered.is_none());
                (
                    day,
                    sent.ok().map(|s| s.unwrap_or(0)),
                    n.opted_out(store, c),
                    unusable,
                    Some(rendered),
                )
            }
        };
        Ok(Known {
            cfg: n.cfg.clone(),
            alerted: n.was_alerted(store, &row.ticket_id),
            ticket,
            answered,
            had_urgent,
            customer,
            day,
            sent_today,
            available: n.available(),
            opted_out,
            unusable,
            rendered,
            reply: n.reply_address(&row.id),
        })
    }

    fn record(&self, tx: &mut Tx, record: Record) {
        let m = &self.notifier.metrics;
        match record {
            Record::Timeline {
                customer,
                at_ms,
                entry,
            } => tx.push_timeline(&customer, at_ms, &entry),
            Record::Attempt(e) => e.emit(m),
            Record::Sent(e) => e.emit(m),
            Record::Fallback(ch) => m.fallbacks.with_label_values(&[ch.as_str()]).inc(),
            Record::Latency { channel, seconds } => m
                .latency
                .with_label_values(&[channel.as_str()])
                .observe(seconds),
            Record::Escalated => m.escalations.inc(),
            Record::Budget {
                customer,
                day,
                sent,
            } => tx.put_kv(&budget_key(&customer, &day), &sent),
            Record::UrgentSent { ticket } => tx.put_kv(&format!("notify/urgent/{ticket}"), &true),
            Record::Warned {
                ticket,
                customer,
                channel,
            } => {
                tx.put_kv(&alerted_key(&ticket), &channel);
                tx.put_kv(&super::last_warned_key(&customer, None), &ticket);
                tx.put_kv(&super::last_warned_key(&customer, Some(channel)), &ticket);
            }
            Record::ProviderId { id, record } => tx.put_kv(&format!("notify/sid/{id}"), &record),
            Record::ReplyTo {
                token,
                address,
                target,
            } => {
                tx.put_kv(&format!("notify/replylast/{}", target.ticket_id), &address);
                tx.put_kv(&super::reply_key(&token), &target);
            }
            Record::Reminder(row) => {
                tx.push_outbox(QUEUE, &row);
            }
            Record::Retrying(e) => e.emit(),
            Record::Undeliverable(e) => e.emit(),
        }
    }

    async fn perform(&self, store: &Store, _: &[u8], row: &OutboxRow, k: &Known, io: Io) -> Seen {
        let Io::Send {
            channel: ch,
            address,
            interrupted,
        } = io;
        let resent = !interrupted.is_empty();
        let result = self.send(store, row, k, ch, &address, &interrupted).await;
        Seen::Sent {
            channel: ch,
            result,
            resent,
        }
    }
}

impl Deliver<'_> {
    /// The provider call (after asking the provider about interrupted attempts).
    async fn send(
        &self,
        store: &Store,
        row: &OutboxRow,
        k: &Known,
        ch: Channel,
        address: &str,
        interrupted: &[Attempt],
    ) -> Result<Accepted, SendError> {
        let n = self.notifier;
        let (Some(customer), Some(rendered), Some(provider)) =
            (&k.customer, &k.rendered, n.providers.get(&ch))
        else {
            return Err(SendError::Permanent {
                detail: "no provider configured".into(),
            });
        };
        let ticket = &k.ticket;
        let now = n.clock.now_ms();
        // Machine channels' payloads are stored and forwarded by other systems: they carry a
        // short-lived link, never the customer's.
        let link = row.kind.is_warning().then(|| {
            if matches!(ch, Channel::Webhook | Channel::Mqtt | Channel::Push) {
                n.machine_link(ticket, &customer.id, now)
            } else {
                n.link_for(ticket, &customer.id, now)
            }
        });
        let idem = row.idempotency_key(ch);
        let json = serde_json::json!({
            "schema": "forewarn.notification/v1",
            "kind": row.kind.as_str(),
            "urgent": row.urgent,
            "ticket_id": ticket.id,
            "device_id": ticket.device_id,
            "failure_mode": ticket.failure_mode,
            "priority": ticket.priority,
            "probability": ticket.probability,
            "predicted_failure_at": ticket.predicted_failure_at,
            "status": ticket.status,
            "text": rendered.push,
            "link": link,
            "locale": rendered.locale,
            "idempotency_key": idem,
        });
        let reply = (ch == Channel::Email).then_some(k.reply.as_ref()).flatten();
        let callback = format!("{}/notify/v1/twilio/status", n.public_url);
        let out = Outgoing {
            channel: ch,
            address,
            rendered,
            json: &json,
            idempotency_key: &idem,
            status_callback: matches!(ch, Channel::Sms | Channel::Voice)
                .then_some(callback.as_str()),
            reply_to: reply.map(|(_, a)| a.as_str()),
            now_ms: now,
        };
        match recover(store, provider.as_ref(), address, now, interrupted).await {
            Recovery::Send => provider.send(&out).await,
            Recovery::Done(r) => r,
        }
    }
}

/// Before repeating an interrupted attempt: was it sent after all? Asks the provider (where it
/// can tell) and answers what to do.
async fn recover(
    store: &Store,
    provider: &dyn Provider,
    address: &str,
    now_ms: i64,
    interrupted: &[Attempt],
) -> Recovery {
    if interrupted.is_empty() {
        return Recovery::Send;
    }
    let found = match provider.lookup(address, now_ms).await {
        Ok(Lookup::Unsupported) => return Recovery::Send,
        Ok(Lookup::Found(f)) => f,
        Err(e) => {
            return Recovery::Done(Err(SendError::Retry {
                detail: format!("not sent: an earlier attempt may have been; {e}"),
                after: None,
            }))
        }
    };
    let known = |sid: &str| {
        // An unreadable record counts as known: better one message too few than two.
        !matches!(
            store.get_kv::<SentRecord>(&format!("notify/sid/{sid}")),
            Ok(None)
        )
    };
    let attempts: Vec<&Attempt> = interrupted.iter().collect();
    match interrupted_match(&found, &attempts, &known) {
        None => Recovery::Send,
        Some(f) if matches!(f.status.as_str(), "failed" | "undelivered" | "canceled") => {
            Recovery::Done(Err(SendError::Permanent {
                detail: format!("{FOUND} ({}): {}", f.status, f.provider_id),
            }))
        }
        Some(f) => Recovery::Done(Ok(Accepted {
            provider_id: Some(f.provider_id.clone()),
            detail: format!("{FOUND} ({})", f.status),
        })),
    }
}

impl Notifier {
    /// The outbox worker of notifications over `store` and `desk`.
    fn worker<'a>(
        &'a self,
        store: &Store,
        desk: &'a dyn TicketDesk,
        gate: Option<Arc<dyn crate::outbox::Gate>>,
    ) -> Worker<Deliver<'a>> {
        Worker {
            delivery: Deliver {
                notifier: self,
                desk,
            },
            store: store.clone(),
            clock: self.clock.clone(),
            gauges: Gauges {
                depth: self.metrics.depth.clone(),
                oldest_age: Some(self.metrics.oldest_age.clone()),
            },
            // Nothing wakes notification rounds but their due times and the poll: rows are
            // committed by the daemon's single writer, which does not know this worker.
            wake: Arc::new(tokio::sync::Notify::new()),
            poll: self.cfg.poll_interval.std(),
            gate,
        }
    }

    /// One pass over the outbox: every due row is handled once. Public so tests and `demo` can
    /// drive delivery step by step.
    pub async fn run_once(&self, store: &Store, desk: &dyn TicketDesk) {
        self.worker(store, desk, None).round().await;
    }

    /// Delivers until `shutdown` (see [`Notifier::spawn_worker`]).
    pub(crate) async fn run_worker(
        &self,
        store: &Store,
        desk: &dyn TicketDesk,
        gate: Option<Arc<dyn crate::outbox::Gate>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        self.worker(store, desk, gate).run(shutdown).await;
    }

    /// Whether a warning about this ticket reached a provider (what follow-ups depend on).
    pub(crate) fn was_alerted(&self, store: &Store, ticket_id: &str) -> bool {
        store
            .get_kv::<Channel>(&alerted_key(ticket_id))
            .ok()
            .flatten()
            .is_some()
    }

    /// The customer's channels that answered STOP.
    pub(crate) fn opted_out(&self, store: &Store, c: &Customer) -> BTreeSet<Channel> {
        c.contacts
            .iter()
            .filter(|(ch, addr)| {
                store
                    .get_kv::<super::OptOut>(&super::optout_key(**ch, addr))
                    .ok()
                    .flatten()
                    .is_some()
            })
            .map(|(ch, _)| *ch)
            .collect()
    }

    /// The facts every template gets.
    pub(crate) fn facts(
        &self,
        t: &Ticket,
        c: &Customer,
        desk: &dyn TicketDesk,
        now: i64,
    ) -> TemplateFacts {
        let device = desk
            .device(&t.device_id)
            .and_then(|d| d.attributes.get("name").cloned())
            .unwrap_or_else(|| t.device_id.to_string());
        let at = t
            .predicted_failure_at
            .as_deref()
            .and_then(crate::domain::Timestamp::parse)
            .map(crate::domain::Timestamp::as_millis);
        // Never a time in the past: within the next hour (or gone) it is "as soon as possible".
        let soon = at.is_some_and(|ms| ms <= now + 3_600_000);
        let when = at
            .filter(|_| !soon)
            .and_then(|ms| route::tz_of(c).timestamp_millis_opt(ms).single())
            .map(|lt| lt.naive_local());
        let visit = store_visit(t);
        TemplateFacts {
            name: if c.name.is_empty() {
                c.id.clone()
            } else {
                c.name.clone()
            },
            device,
            failure_mode: t.failure_mode.clone(),
            probability: t.probability,
            when,
            soon,
            ticket: t.id.clone(),
            link: self.link_for(t, &c.id, now),
            priority: t.priority.as_str().to_string(),
            status: t.status.as_str().to_string(),
            reply_to: self
                .cfg
                .email
                .as_ref()
                .map(|e| e.reply_to.clone().unwrap_or_else(|| e.from.clone()))
                .unwrap_or_default(),
            visit,
        }
    }
}

/// How a recovered attempt is described (timeline, attempt detail).
const FOUND: &str = "found at the provider after an interrupted attempt";

/// What to do about an attempt that may have been interrupted.
enum Recovery {
    /// Nothing reached the provider (or it cannot tell): send.
    Send,
    /// The provider has it (or could not be asked): this is the outcome, nothing is sent.
    Done(Result<Accepted, SendError>),
}

/// Key of "this ticket's customer was alerted" (the channel that carried the warning).
pub(crate) fn alerted_key(ticket_id: &str) -> String {
    format!("notify/alerted/{ticket_id}")
}

/// The visit time the customer asked for, from the last reply that named one.
fn store_visit(t: &Ticket) -> String {
    t.history
        .iter()
        .rev()
        .filter(|h| h.actor.starts_with("customer:"))
        .find_map(|h| {
            h.note
                .split_once(super::VISIT_MARK)
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at_ms: i64, text: Option<&str>) -> Attempt {
        Attempt {
            at_ms,
            channel: Channel::Sms,
            outcome: "sending".into(),
            detail: String::new(),
            fingerprint: text.map(fingerprint),
        }
    }

    fn found(sid: &str, body: Option<&str>, created_ms: i64) -> Found {
        Found {
            provider_id: sid.into(),
            body: body.map(str::to_string),
            created_ms: Some(created_ms),
            status: "queued".into(),
        }
    }

    #[test]
    fn only_the_interrupted_text_is_taken_for_sent() {
        let t0 = 1_000_000_000;
        let a = attempt(t0, Some("forewarn: pump needs a visit"));
        let none = |_: &str| false;
        let list = [
            found("SM3", Some("forewarn: another ticket"), t0 + 5),
            found("SM2", Some("forewarn: pump needs a visit "), t0 + 2),
            found("SM1", Some("forewarn: pump needs a visit"), t0 - 3_600_000),
        ];
        // The same text, after the attempt (trailing space as the provider may keep it).
        assert_eq!(
            interrupted_match(&list, &[&a], &none).map(|f| f.provider_id.as_str()),
            Some("SM2")
        );
        // A message notify already recorded is not the interrupted one.
        let known = |sid: &str| sid == "SM2";
        assert_eq!(interrupted_match(&list, &[&a], &known), None);
        // An hour older than the attempt: an earlier message with the same words.
        assert_eq!(interrupted_match(&list[2..], &[&a], &none), None);
        // Calls have no text: the number, the time and an unknown id decide.
        let call = attempt(t0, None);
        assert_eq!(
            interrupted_match(&list, &[&call], &none).map(|f| f.provider_id.as_str()),
            Some("SM3")
        );
        // Several interrupted attempts: the earliest bounds the window, any text matches.
        let later = attempt(t0 + 10, Some("forewarn: re-rendered text"));
        assert_eq!(
            interrupted_match(&list, &[&later, &a], &none).map(|f| f.provider_id.as_str()),
            Some("SM2")
        );
        assert_eq!(interrupted_match(&list, &[], &none), None);
    }
}
