//! The delivery worker: due outbox rows → route → render → provider, with retries (exponential
//! backoff with jitter, Retry-After), fallback to the next channel, reminders for unacknowledged
//! urgent tickets, and the daily budget. Every step is recorded in the customer's timeline.
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

use super::channels::{Accepted, Found, Lookup, Outgoing, Provider, SendError};
use super::route::{self, Decision, RouteInput};
use super::templates::Facts;
use super::templates::MessageKind;
use super::{Answer, Notifier, TicketDesk, TimelineEntry, QUEUE};
use crate::domain::{Status, Ticket};
use crate::fleet::{Channel, Customer};
use crate::store::Store;
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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
    pub fn idempotency_key(&self, ch: Channel) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{}\x1f{}", self.id, ch.as_str()).as_bytes());
        hex::encode(&d[..16])
    }
}

/// What a provider id (Twilio SID) refers to, for status callbacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentRecord {
    pub row: OutboxRow,
    pub channel: Channel,
    /// A final status was already applied (callbacks repeat).
    pub settled: bool,
}

pub(crate) fn budget_key(customer: &str, day: &str) -> String {
    format!("notify/budget/{customer}/{day}")
}

impl Notifier {
    /// One pass over the outbox: every due row is handled once. Public so tests and `demo` can
    /// drive delivery step by step.
    pub async fn run_once(&self, store: &Store, desk: &dyn TicketDesk) {
        let rows = match store.outbox::<OutboxRow>(QUEUE) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "notify outbox unreadable");
                return;
            }
        };
        self.gauges(&rows);
        let handled = rows.iter().any(|(_, r)| r.due_ms <= self.clock.now_ms());
        for (key, row) in rows {
            if row.due_ms > self.clock.now_ms() {
                continue;
            }
            if let Err(e) = self.handle(store, desk, &key, row).await {
                tracing::error!(error = %e, "notify outbox row could not be updated");
            }
        }
        if handled {
            if let Ok(rows) = store.outbox::<OutboxRow>(QUEUE) {
                self.gauges(&rows);
            }
        }
    }

    fn gauges(&self, rows: &[(Vec<u8>, OutboxRow)]) {
        let now = self.clock.now_ms();
        self.metrics.depth.set(rows.len() as i64);
        let oldest = rows.iter().map(|(_, r)| r.created_ms).min();
        self.metrics.oldest_age.set(
            oldest
                .map(|o| (now - o).max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
        );
    }

    fn timeline(&self, store: &Store, customer: &str, e: TimelineEntry) {
        let mut tx = store.tx();
        tx.push_timeline(customer, self.clock.now_ms(), &e);
        if let Err(err) = store.commit(tx) {
            tracing::error!(error = %err, "notify timeline write failed");
        }
    }

    async fn handle(
        &self,
        store: &Store,
        desk: &dyn TicketDesk,
        key: &[u8],
        mut row: OutboxRow,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now_ms();
        let ticket = desk
            .ticket(&row.ticket_id)
            .unwrap_or_else(|| row.ticket.clone());
        let answered: Option<Answer> = store
            .get_kv(&format!("notify/answer/{}", row.ticket_id))
            .ok()
            .flatten();
        // Not asked again what they already answered; nothing to say about a closed ticket.
        let stale = match row.kind {
            MessageKind::Reminder => {
                (ticket.status != Status::Open || answered.is_some()).then(|| {
                    format!(
                        "reminder not needed: ticket {}{}",
                        ticket.status.as_str(),
                        answered
                            .as_ref()
                            .map(|a| format!(", customer answered {:?} by {}", a.answer, a.channel))
                            .unwrap_or_default()
                    )
                })
            }
            // Follow-ups go only to a customer notify actually alerted about this ticket.
            MessageKind::Resolved
            | MessageKind::VisitConfirmed
            | MessageKind::VisitRescheduled
            | MessageKind::NoActionNeeded => (!self.was_alerted(store, &row.ticket_id))
                .then(|| "not sent: the customer was never alerted about this ticket".to_string()),
            // Opened already urgent (e.g. failure predicted soon) and then raised to urgent
            // priority: the customer has had the urgent alert. (A fallback row of that alert
            // has its plan already and goes on.)
            MessageKind::Urgent | MessageKind::Update
                if row.plan.is_empty()
                    && store
                        .get_kv::<bool>(&format!("notify/urgent/{}", row.ticket_id))
                        .ok()
                        .flatten()
                        .is_some() =>
            {
                Some("not sent: the customer already had an urgent alert for this ticket".into())
            }
            _ => (!ticket.is_live())
                .then(|| format!("not sent: ticket already {}", ticket.status.as_str())),
        };
        if let Some(why) = stale {
            let mut tx = store.tx();
            tx.remove_raw(key);
            tx.push_timeline(
                &row.customer_id,
                now,
                &TimelineEntry::new(now, "dropped", &row.ticket_id, why),
            );
            return store.commit(tx);
        }
        let Some(customer) = desk.customer(&row.customer_id) else {
            self.metrics
                .messages
                .with_label_values(&["none", "dropped"])
                .inc();
            let mut tx = store.tx();
            tx.remove_raw(key);
            tx.push_timeline(
                &row.customer_id,
                now,
                &TimelineEntry::new(now, "dropped", &row.ticket_id, "customer unknown"),
            );
            return store.commit(tx);
        };
        let day = route::local_day(&customer, now);
        // A read error leaves the row for the next round: counting from 0 would overspend the
        // customer's budget.
        let sent_today: u32 = store.get_kv(&budget_key(&customer.id, &day))?.unwrap_or(0);
        if row.plan.is_empty() {
            let available = self.available();
            let opted_out = self.opted_out(store, &customer);
            let mut unusable = std::collections::BTreeMap::new();
            if !self.templates.speaks(&customer.locale) {
                unusable.insert(
                    Channel::Voice,
                    format!(
                        "no text-to-speech voice for {} (notify templates: voice_language)",
                        if customer.locale.is_empty() {
                            "this customer's language"
                        } else {
                            customer.locale.as_str()
                        }
                    ),
                );
            }
            let input = RouteInput {
                opted_out: &opted_out,
                unusable: &unusable,
                cfg: &self.cfg.routing,
                available: &available,
                customer: &customer,
                urgent: row.urgent,
                urgency_reason: &row.urgency_reason,
                escalate_from: row.escalate_from,
                now_ms: now,
                sent_today,
                budget: customer.daily_budget.unwrap_or(self.cfg.daily_budget),
                urgent_over_budget: self.cfg.urgent_over_budget,
            };
            match route::route(&input) {
                Decision::Send { channels, reason } => {
                    row.plan = channels;
                    row.step = 0;
                    row.tries = 0;
                    let first = row.plan[0];
                    self.timeline(
                        store,
                        &customer.id,
                        TimelineEntry::new(
                            now,
                            "decision",
                            &row.ticket_id,
                            format!("{}: {reason}", first.as_str().to_uppercase()),
                        )
                        .channel(first),
                    );
                }
                Decision::Hold { until_ms, reason } => {
                    self.metrics
                        .messages
                        .with_label_values(&["none", "held"])
                        .inc();
                    row.due_ms = until_ms;
                    let mut tx = store.tx();
                    tx.put_outbox_row(key, &row);
                    tx.push_timeline(
                        &customer.id,
                        now,
                        &TimelineEntry::new(now, "decision", &row.ticket_id, reason)
                            .outcome("held"),
                    );
                    return store.commit(tx);
                }
                Decision::Drop { reason } => {
                    self.metrics
                        .messages
                        .with_label_values(&["none", "dropped"])
                        .inc();
                    let mut tx = store.tx();
                    tx.remove_raw(key);
                    tx.push_timeline(
                        &customer.id,
                        now,
                        &TimelineEntry::new(now, "decision", &row.ticket_id, reason)
                            .outcome("dropped"),
                    );
                    return store.commit(tx);
                }
            }
        } else if !row.urgent {
            // A retry of an advisory message never lands in quiet hours either.
            if let Some((until, hhmm)) = route::quiet_until(&customer, now) {
                row.due_ms = until;
                let mut tx = store.tx();
                tx.put_outbox_row(key, &row);
                tx.push_timeline(
                    &customer.id,
                    now,
                    &TimelineEntry::new(
                        now,
                        "decision",
                        &row.ticket_id,
                        format!("retry held: quiet hours until {hhmm}"),
                    )
                    .outcome("held"),
                );
                return store.commit(tx);
            }
        }
        let ch = row.plan[row.step];
        let Some(address) = customer.contacts.get(&ch).cloned() else {
            return self
                .fall_back(store, key, row, ch, "no contact on this channel".into())
                .map(|_| ());
        };
        let Some(provider) = self.providers.get(&ch) else {
            return self
                .fall_back(store, key, row, ch, "no provider configured".into())
                .map(|_| ());
        };
        let kind = row.kind;
        let facts = self.facts(&ticket, &customer, desk, now);
        let rendered = self
            .templates
            .render(&customer.locale, kind, &facts, answered.is_none());
        // Machine channels' payloads are stored and forwarded by other systems: they carry a
        // short-lived link, never the customer's.
        let machine_link = matches!(ch, Channel::Webhook | Channel::Mqtt | Channel::Push)
            .then(|| self.machine_link(&ticket, &customer.id, now));
        let link = kind
            .is_warning()
            .then(|| machine_link.as_deref().unwrap_or(facts.link.as_str()));
        let json = serde_json::json!({
            "schema": "forewarn.notification/v1",
            "kind": kind.as_str(),
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
            "idempotency_key": row.idempotency_key(ch),
        });
        let idem = row.idempotency_key(ch);
        // Attempts on this channel that never got an answer recorded: a crash interrupted them.
        let interrupted: Vec<Attempt> = row
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome.as_str(), "sending" | "unanswered") && a.channel == ch)
            .cloned()
            .collect();
        let resent = !interrupted.is_empty();
        // Durable before the provider call: after a crash from here on, the next pass knows an
        // attempt may have reached the provider.
        row.attempts.push(Attempt {
            at_ms: now,
            channel: ch,
            outcome: "sending".into(),
            detail: if resent {
                "after an interrupted attempt".into()
            } else {
                String::new()
            },
            fingerprint: (ch == Channel::Sms).then(|| fingerprint(&rendered.sms)),
        });
        store.outbox_put(key, &row)?;
        // E-mail: this message's own reply address, known before it leaves (a reply can only
        // come back to an address we recorded).
        let reply = (ch == Channel::Email)
            .then(|| self.reply_address(&row.id))
            .flatten();
        if let Some((token, addr)) = &reply {
            let mut tx = store.tx();
            tx.put_kv(
                &super::reply_key(token),
                &super::ReplyTarget {
                    ticket_id: row.ticket_id.clone(),
                    customer_id: customer.id.clone(),
                },
            );
            tx.put_kv(&format!("notify/replylast/{}", row.ticket_id), addr);
            store.commit(tx)?;
        }
        let callback = format!("{}/notify/v1/twilio/status", self.public_url);
        let out = Outgoing {
            channel: ch,
            address: &address,
            rendered: &rendered,
            json: &json,
            idempotency_key: &idem,
            status_callback: matches!(ch, Channel::Sms | Channel::Voice)
                .then_some(callback.as_str()),
            reply_to: reply.as_ref().map(|(_, a)| a.as_str()),
        };
        let result = match self
            .recover(store, provider.as_ref(), &address, &interrupted)
            .await
        {
            Recovery::Send => provider.send(&out).await,
            Recovery::Done(r) => r,
        };
        let recovered = resent && result.as_ref().is_ok_and(|a| a.detail.starts_with(FOUND));
        let now = self.clock.now_ms();
        match result {
            Ok(acc) => {
                self.metrics
                    .messages
                    .with_label_values(&[ch.as_str(), "sent"])
                    .inc();
                self.metrics
                    .latency
                    .with_label_values(&[ch.as_str()])
                    .observe((now - row.created_ms).max(0) as f64 / 1000.0);
                if let Some(a) = row.attempts.last_mut() {
                    a.outcome = "accepted".into();
                    a.detail = acc.detail.clone();
                }
                let mut tx = store.tx();
                tx.remove_raw(key);
                tx.put_kv(&budget_key(&customer.id, &day), &(sent_today + 1));
                if matches!(kind, MessageKind::Urgent | MessageKind::Update) {
                    tx.put_kv(&format!("notify/urgent/{}", row.ticket_id), &true);
                }
                if kind.is_warning() {
                    tx.put_kv(&alerted_key(&row.ticket_id), &ch);
                    tx.put_kv(&super::last_warned_key(&customer.id, None), &row.ticket_id);
                    tx.put_kv(
                        &super::last_warned_key(&customer.id, Some(ch)),
                        &row.ticket_id,
                    );
                }
                tx.push_timeline(
                    &customer.id,
                    now,
                    &TimelineEntry::new(
                        now,
                        "message",
                        &row.ticket_id,
                        format!(
                            "{} {} message accepted ({}, locale {}{})",
                            ch.as_str(),
                            kind.as_str(),
                            acc.detail,
                            rendered.locale,
                            match (resent, recovered) {
                                (true, true) => ", not sent again",
                                (true, false) =>
                                    ", sent again: the interrupted attempt never \
                                                 reached the customer",
                                _ => "",
                            }
                        ),
                    )
                    .channel(ch)
                    .outcome("sent")
                    .message(kind),
                );
                if let Some(pid) = &acc.provider_id {
                    if matches!(ch, Channel::Sms | Channel::Voice) {
                        tx.put_kv(
                            &format!("notify/sid/{pid}"),
                            &SentRecord {
                                row: row.clone(),
                                channel: ch,
                                settled: false,
                            },
                        );
                    }
                }
                let wants_ack = matches!(
                    kind,
                    MessageKind::Urgent | MessageKind::Update | MessageKind::Reminder
                );
                if wants_ack && answered.is_none() && row.reminder < self.cfg.max_reminders {
                    let due = now + self.cfg.ack_timeout.as_millis_i64();
                    let n = row.reminder + 1;
                    let rem = OutboxRow {
                        // Unique per chain, so each reminder has its own idempotency key.
                        id: format!("{}/r{n}", row.id),
                        kind: MessageKind::Reminder,
                        urgent: true,
                        urgency_reason: format!(
                            "urgent: not acknowledged {} after the {} message",
                            self.cfg.ack_timeout,
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
                    };
                    tx.push_outbox(QUEUE, &rem);
                }
                store.commit(tx)?;
                if row.kind == MessageKind::Reminder {
                    self.metrics.escalations.inc();
                }
                tracing::info!(channel = ch.as_str(), kind = kind.as_str(), ticket = %row.ticket_id, "customer notified");
                Ok(())
            }
            Err(SendError::Retry { detail, after }) => {
                let unanswered = super::channels::no_answer(&detail);
                self.metrics
                    .messages
                    .with_label_values(&[ch.as_str(), "retry"])
                    .inc();
                row.tries += 1;
                if let Some(a) = row.attempts.last_mut() {
                    // No answer: the provider may have the message; the next attempt asks first.
                    a.outcome = if unanswered { "unanswered" } else { "retry" }.into();
                    a.detail = detail.clone();
                }
                if row.tries >= self.cfg.max_attempts {
                    return self
                        .fall_back(
                            store,
                            key,
                            row,
                            ch,
                            format!("{detail} (after {} attempts)", self.cfg.max_attempts),
                        )
                        .map(|_| ());
                }
                let backoff = self.backoff(row.tries);
                let wait = after
                    .map(|a| a.as_millis() as i64)
                    .unwrap_or(0)
                    .max(backoff);
                row.due_ms = now + wait;
                tracing::warn!(channel = ch.as_str(), ticket = %row.ticket_id, tries = row.tries, wait_ms = wait, error = %detail, "notification will be retried");
                let mut tx = store.tx();
                tx.put_outbox_row(key, &row);
                tx.push_timeline(
                    &customer.id,
                    now,
                    &TimelineEntry::new(
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
                    .outcome("retry"),
                );
                store.commit(tx)
            }
            Err(SendError::Permanent { detail }) => {
                if let Some(a) = row.attempts.last_mut() {
                    a.outcome = "failed".into();
                    a.detail = detail.clone();
                }
                self.fall_back(store, key, row, ch, detail).map(|_| ())
            }
        }
    }

    /// Before repeating an interrupted attempt: was it sent after all? Asks the provider
    /// (where it can tell) and answers what to do.
    async fn recover(
        &self,
        store: &Store,
        provider: &dyn Provider,
        address: &str,
        interrupted: &[Attempt],
    ) -> Recovery {
        if interrupted.is_empty() {
            return Recovery::Send;
        }
        let found = match provider.lookup(address).await {
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

    /// Exponential backoff with jitter: between half and all of min·2^(n-1), capped.
    fn backoff(&self, tries: u32) -> i64 {
        let min = self.cfg.retry_min.as_millis_i64().max(1);
        let max = self.cfg.retry_max.as_millis_i64().max(min);
        let exp = min
            .saturating_mul(1i64 << tries.saturating_sub(1).min(30))
            .min(max);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        ((exp as f64) * jitter) as i64
    }

    /// The channel failed for good: next channel in the plan, or give up with the reason.
    pub(crate) fn fall_back(
        &self,
        store: &Store,
        key: &[u8],
        mut row: OutboxRow,
        failed: Channel,
        detail: String,
    ) -> Result<bool, crate::store::StoreError> {
        let now = self.clock.now_ms();
        self.metrics
            .messages
            .with_label_values(&[failed.as_str(), "failed"])
            .inc();
        let mut tx = store.tx();
        if row.step + 1 < row.plan.len() {
            self.metrics
                .fallbacks
                .with_label_values(&[failed.as_str()])
                .inc();
            row.step += 1;
            row.tries = 0;
            row.due_ms = now;
            let next = row.plan[row.step];
            tx.put_outbox_row(key, &row);
            tx.push_timeline(
                &row.customer_id,
                now,
                &TimelineEntry::new(
                    now,
                    "fallback",
                    &row.ticket_id,
                    format!(
                        "{} failed ({detail}); trying {} next",
                        failed.as_str(),
                        next.as_str()
                    ),
                )
                .channel(next),
            );
            store.commit(tx)?;
            Ok(true)
        } else {
            tracing::warn!(ticket = %row.ticket_id, "notification undeliverable on every channel");
            tx.remove_raw(key);
            tx.push_timeline(
                &row.customer_id,
                now,
                &TimelineEntry::new(
                    now,
                    "dropped",
                    &row.ticket_id,
                    format!(
                        "{} failed ({detail}); no channel left: message undeliverable",
                        failed.as_str()
                    ),
                )
                .channel(failed)
                .outcome("failed"),
            );
            store.commit(tx)?;
            Ok(false)
        }
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
    pub(crate) fn facts(&self, t: &Ticket, c: &Customer, desk: &dyn TicketDesk, now: i64) -> Facts {
        let device = desk
            .device(&t.device_id)
            .and_then(|d| d.attributes.get("name").cloned())
            .unwrap_or_else(|| t.device_id.clone());
        let at = t
            .predicted_failure_at
            .as_deref()
            .and_then(crate::domain::parse_ts);
        // Never a time in the past: within the next hour (or gone) it is "as soon as possible".
        let soon = at.is_some_and(|ms| ms <= now + 3_600_000);
        let when = at
            .filter(|_| !soon)
            .and_then(|ms| route::tz_of(c).timestamp_millis_opt(ms).single())
            .map(|lt| lt.naive_local());
        let visit = store_visit(t);
        Facts {
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
