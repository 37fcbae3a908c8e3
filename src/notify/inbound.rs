//! Inbound: replies on any channel land on the same ticket, provider status callbacks, the
//! self-service page and the customer timeline.
//!
//! | route | what |
//! |---|---|
//! | `POST /notify/v1/twilio/sms` | SMS reply (Twilio form or JSON, `X-Twilio-Signature` in either scheme, see [`super::signature`]) |
//! | `POST /notify/v1/twilio/status` | SMS/call status callback (signed likewise) |
//! | `POST /notify/v1/email/inbound` | e-mail reply as Mailgun's routes forward it (Mailgun's signature, replay window, one use per token); the reply counts for the ticket and customer of the per-message reply address it was sent to, never for `From` |
//! | `GET/POST /notify/v1/s/{token}` | signed self-service page: confirm a visit, another time, not now |
//! | `GET /api/v1/customers/{id}/timeline` | every ticket, message, delivery, reply and decision in time order (`entries`), and one story per ticket (`stories`) |

use super::events::{Delivery, FellBack, Reported, StatusNotRecorded};
use super::intent::{self, Intent};
use super::link::{self, LinkError};
use super::templates::{Facts, PageText};
use super::worker::SentRecord;
use super::{contact_key, Answer, Notifier, TicketDesk, TimelineEntry, NEEDS_HUMAN, QUEUE};
use crate::domain::{Status, Ticket, Timestamp};
use crate::error_body::ErrorBody;
use crate::fleet::Channel;
use crate::store::Store;
use axum::extract::rejection::{BytesRejection, FormRejection};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
struct AppState {
    n: Arc<Notifier>,
    store: Store,
    desk: Arc<dyn TicketDesk>,
}

pub fn router(n: Arc<Notifier>, store: Store, desk: Arc<dyn TicketDesk>) -> Router {
    public_router(n.clone(), store.clone(), desk.clone())
        .merge(timeline_router(n.clone(), store.clone(), desk.clone()))
        .merge(links_router(n, store, desk))
}

/// The `/notify/v1/*` routes, each with its OpenAPI description.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sms_reply))
        .routes(routes!(status_callback))
        .routes(routes!(email_reply))
        .routes(routes!(page, page_answer))
}

fn timeline_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(timeline))
}

fn links_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(revoke_links))
}

/// The descriptions of every route of this module (for `api::openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    public_routes()
        .merge(timeline_routes())
        .merge(links_routes())
        .into_openapi()
}

/// The `/notify/v1/*` routes: what providers and customers reach from the internet.
pub fn public_router(n: Arc<Notifier>, store: Store, desk: Arc<dyn TicketDesk>) -> Router {
    public_routes()
        .split_for_parts()
        .0
        .with_state(AppState { n, store, desk })
}

/// The timeline, an API read (the API puts its token check in front of it).
pub fn timeline_router(n: Arc<Notifier>, store: Store, desk: Arc<dyn TicketDesk>) -> Router {
    timeline_routes()
        .split_for_parts()
        .0
        .with_state(AppState { n, store, desk })
}

/// Revoking a ticket's self-service links, an API write (the API puts its token check in front).
pub fn links_router(n: Arc<Notifier>, store: Store, desk: Arc<dyn TicketDesk>) -> Router {
    links_routes()
        .split_for_parts()
        .0
        .with_state(AppState { n, store, desk })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// A body the route could not read (too large, wrong `Content-Type`): the same JSON error as
/// the rest of the API, with the status axum chose.
fn rejected(r: impl IntoResponse + std::fmt::Display) -> Response {
    let status = r.into_response().status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    error(status, code, "the request body could not be read")
}

/// `X-Twilio-Signature` in the Auth Token scheme: base64 HMAC-SHA1 of the URL followed by
/// every POST parameter (name then value), sorted by name ([`super::signature`] has both
/// schemes).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    super::signature::twilio_signature(
        auth_token,
        url,
        params,
        super::signature::TwilioAlgorithm::HmacSha1,
    )
}

/// A Twilio webhook as it arrived: its parameters read from the raw body (form or JSON) when
/// its signature holds for the URL Twilio requested (the public URL with the path and query
/// string of this request); `None` when it does not ([`bad_signature`] is the answer).
fn twilio_request(
    n: &Notifier,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Vec<(String, String)>> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let params: Vec<(String, String)> = if json {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        form_urlencoded::parse(body).into_owned().collect()
    };
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let url = format!("{}{path}", n.public_url);
    let settings = headers
        .get("x-twilio-webhooks-signature-settings")
        .and_then(|v| v.to_str().ok());
    let configured = [&n.cfg.sms, &n.cfg.voice];
    let tokens: Vec<&str> = configured
        .iter()
        .copied()
        .flatten()
        .map(|t| &*t.auth_token)
        .collect();
    let shared: Vec<&str> = configured
        .iter()
        .copied()
        .flatten()
        .filter_map(|t| t.webhook_shared_key.as_deref())
        .collect();
    let no_shared = [None];
    let shared_keys: Vec<Option<&str>> = if shared.is_empty() {
        no_shared.to_vec()
    } else {
        shared.into_iter().map(Some).collect()
    };
    let empty: [(String, String); 0] = [];
    let req = super::signature::TwilioRequest {
        url: &url,
        params: if json { &empty } else { &params },
        json_body: json.then_some(body),
        signature: sig,
        settings,
    };
    let ok = shared_keys
        .iter()
        .any(|k| super::signature::twilio_valid(&tokens, *k, &req));
    ok.then_some(params)
}

/// The answer to a Twilio webhook whose signature does not hold.
fn bad_signature() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "bad_signature",
        "X-Twilio-Signature does not match",
    )
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a customer's answer asks for (from the page's buttons or a parsed text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// "1", "yes", the page's "book a visit": the ticket becomes scheduled.
    Confirm,
    /// "2", "later": another time please.
    Later,
    /// "3", "not now": seen, no visit for now.
    NotNow,
    /// Not one of the offered answers: recorded for a person to read.
    Unclear,
}

impl Reply {
    pub fn as_str(self) -> &'static str {
        match self {
            Reply::Confirm => "visit confirmed",
            Reply::Later => super::moment::ANOTHER_TIME,
            Reply::NotNow => "not now",
            Reply::Unclear => "message",
        }
    }

    /// A text reply, read by the one intent parser ([`intent::parse`]); carrier keywords are
    /// not answers (they are handled before a ticket is looked at).
    pub fn parse(text: &str) -> Reply {
        match intent::parse(text) {
            Intent::Confirm => Reply::Confirm,
            Intent::Later => Reply::Later,
            Intent::NotNow => Reply::NotNow,
            Intent::Stop | Intent::Start | Intent::Help | Intent::Unclear => Reply::Unclear,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("no such ticket")]
    NotFound,
    /// The ticket is closed: the reply is kept for a person, not applied.
    #[error("ticket {0} is already {1}")]
    Closed(String, &'static str),
    /// This provider message was handled before.
    #[error("already handled")]
    Duplicate,
    #[error(transparent)]
    Desk(#[from] super::DeskError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A reply as it arrived.
pub struct Incoming<'a> {
    /// `None` for the self-service page.
    pub channel: Option<Channel>,
    /// The provider's message id (Twilio `MessageSid`, e-mail `Message-ID`), for replays.
    pub provider_id: Option<&'a str>,
    pub reply: Reply,
    pub text: &'a str,
    /// The visit time the customer wrote on the page.
    pub visit: &'a str,
    /// The proposed slot the customer picked on the page: booked with the answer.
    pub booking: Option<crate::domain::Visit>,
}

fn channel_name(c: Option<Channel>) -> &'static str {
    match c {
        Some(Channel::Sms) => "sms",
        Some(Channel::Email) => "email",
        Some(Channel::Voice) => "voice",
        _ => "link",
    }
}

impl Notifier {
    /// Whether this provider message id was handled already.
    pub fn seen_inbound(&self, store: &Store, channel: Channel, provider_id: &str) -> bool {
        store
            .get_kv::<String>(&super::inbound_key(channel, provider_id))
            .ok()
            .flatten()
            .is_some()
    }

    /// Applies a reply to the ticket through the desk, records the answer (so nobody asks
    /// again), the provider message id (so a replay changes nothing) and the timeline entry.
    /// An unclear reply, or one to a closed ticket, is kept on the ticket and the timeline
    /// marked for a person, never dropped.
    pub fn apply_reply(
        &self,
        store: &Store,
        desk: &dyn TicketDesk,
        ticket_id: &str,
        m: &Incoming,
    ) -> Result<Ticket, ReplyError> {
        let _one_at_a_time = self.inbound.lock();
        let provider_key = match (m.channel, m.provider_id) {
            (Some(ch), Some(id)) => Some(super::inbound_key(ch, id)),
            _ => None,
        };
        if provider_key
            .as_ref()
            .is_some_and(|k| store.get_kv::<String>(k).ok().flatten().is_some())
        {
            return Err(ReplyError::Duplicate);
        }
        let channel = channel_name(m.channel);
        let reply = m.reply;
        let t = desk.ticket(ticket_id).ok_or(ReplyError::NotFound)?;
        let cid = t.customer_id.clone().unwrap_or_default();
        let now = self.clock.now_ms();
        let short: String = m.text.chars().take(200).collect();
        let mut tx = store.tx();
        if let Some(k) = &provider_key {
            tx.put_kv(k, &Timestamp::from_millis(now).format());
        }
        if !t.is_live() {
            tx.push_timeline(
                &cid,
                now,
                &TimelineEntry::new(
                    now,
                    "reply",
                    ticket_id,
                    format!(
                        "customer wrote by {channel} after the ticket was {}: {short}",
                        t.status.as_str()
                    ),
                )
                .outcome(NEEDS_HUMAN),
            );
            store.commit(tx)?;
            return Err(ReplyError::Closed(ticket_id.to_string(), t.status.as_str()));
        }
        let prev: Option<Answer> = store
            .get_kv(&format!("notify/answer/{ticket_id}"))
            .ok()
            .flatten();
        if reply != Reply::Unclear && prev.as_ref().is_some_and(|p| p.answer == reply.as_str()) {
            // The same answer again changes nothing, but the message is kept.
            let mut entry = TimelineEntry::new(
                now,
                "reply",
                ticket_id,
                format!("{} by {channel} again: {short}", reply.as_str()),
            )
            .outcome("repeat")
            .said(&short);
            entry.channel = m.channel;
            tx.push_timeline(&cid, now, &entry);
            store.commit(tx)?;
            return Ok(t);
        }
        let wanted = match reply {
            Reply::Confirm => Some(Status::Scheduled),
            Reply::Later | Reply::NotNow => Some(Status::Acknowledged),
            Reply::Unclear => None,
        };
        let to = wanted.filter(|s| t.status.can_become(*s));
        let visit: String = m.visit.trim().chars().take(100).collect();
        let visit_note = if visit.is_empty() {
            String::new()
        } else {
            format!("{}{visit}", super::VISIT_MARK)
        };
        let note = match (reply, short.is_empty()) {
            (Reply::Unclear, _) => {
                format!("customer wrote by {channel} (for a person to read): {short}")
            }
            (_, true) => format!("{} by {channel}{visit_note}", reply.as_str()),
            (_, false) => format!("{} by {channel}: {short}{visit_note}", reply.as_str()),
        };
        let actor = format!("customer:{channel}");
        let (t, booked) = match m.booking.as_ref() {
            Some(v) => desk.customer_booking(ticket_id, to, &actor, &note, v)?,
            None => (desk.customer_reply(ticket_id, to, &actor, &note)?, false),
        };
        self.metrics.replies.with_label_values(&[channel]).inc();
        if reply != Reply::Unclear {
            tx.put_kv(
                &format!("notify/answer/{ticket_id}"),
                &Answer {
                    answer: reply.as_str().into(),
                    channel: channel.into(),
                    at: Timestamp::from_millis(now).format(),
                    // A different answer than before, given on the page, is a change.
                    changes: prev.as_ref().map_or(0, |p| p.changes)
                        + u32::from(m.channel.is_none() && prev.is_some()),
                },
            );
        }
        if let Some(v) = m
            .booking
            .as_ref()
            .filter(|_| !booked && t.status == Status::Scheduled)
        {
            // The customer picked one of the slots the dispatcher proposed: the visit is booked
            // and the proposal is used up.
            tx.put_kv(&crate::domain::visit_key(ticket_id), v);
            tx.remove_kv(&crate::domain::proposal_key(ticket_id));
        }
        let mut entry = TimelineEntry::new(now, "reply", ticket_id, note).said(&short);
        entry.channel = m.channel;
        let entry = if reply == Reply::Unclear {
            entry.outcome(NEEDS_HUMAN)
        } else {
            entry.outcome(t.status.as_str())
        };
        tx.push_timeline(&cid, now, &entry);
        store.commit(tx)?;
        tracing::info!(ticket = %ticket_id, channel, answer = reply.as_str(), "customer replied");
        Ok(t)
    }

    /// A message from a known customer that names no ticket, or an automatic reply: kept on
    /// the timeline (and the provider id remembered), nothing else.
    fn keep(
        &self,
        store: &Store,
        customer: &str,
        ticket: &str,
        (channel, provider_id): (Channel, Option<&str>),
        detail: String,
        outcome: &str,
    ) -> Result<(), crate::store::StoreError> {
        let _one_at_a_time = self.inbound.lock();
        let now = self.clock.now_ms();
        let mut tx = store.tx();
        if let Some(id) = provider_id {
            tx.put_kv(
                &super::inbound_key(channel, id),
                &Timestamp::from_millis(now).format(),
            );
        }
        tx.push_timeline(
            customer,
            now,
            &TimelineEntry::new(now, "reply", ticket, detail)
                .channel(channel)
                .outcome(outcome),
        );
        store.commit(tx)
    }

    /// Carrier STOP / START for one channel and address: recorded, respected by routing.
    fn opt(
        &self,
        store: &Store,
        customer: Option<&str>,
        channel: Channel,
        address: &str,
        keyword: &str,
        stop: bool,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now_ms();
        let mut tx = store.tx();
        let key = super::optout_key(channel, address);
        if stop {
            tx.put_kv(
                &key,
                &super::OptOut {
                    at: Timestamp::from_millis(now).format(),
                    keyword: keyword.chars().take(20).collect(),
                },
            );
        } else {
            tx.remove_kv(&key);
        }
        if let Some(c) = customer {
            tx.push_timeline(
                c,
                now,
                &TimelineEntry::new(
                    now,
                    "opt_out",
                    "",
                    format!(
                        "{} {} by {}",
                        channel.as_str(),
                        if stop { "opted out" } else { "opted back in" },
                        keyword.trim()
                    ),
                )
                .channel(channel)
                .outcome(if stop { "opted_out" } else { "opted_in" }),
            );
        }
        store.commit(tx)
    }
    /// Applies a provider status callback: delivered, or undelivered → next channel.
    pub fn apply_status(&self, store: &Store, provider_id: &str, status: &str) -> bool {
        let key = format!("notify/sid/{provider_id}");
        let Ok(Some(mut rec)) = store.get_kv::<SentRecord>(&key) else {
            return false;
        };
        if rec.settled {
            return true;
        }
        let now = self.clock.now_ms();
        let ch = rec.channel.as_str();
        let Some(delivery) = Delivery::of(status) else {
            return true; // queued, sent, ringing…: wait for the final one
        };
        rec.settled = true;
        let mut tx = store.tx();
        tx.put_kv(&key, &rec);
        let row = &rec.row;
        Reported {
            channel: rec.channel,
            delivery,
            ticket: row.ticket_id.clone(),
        }
        .emit(&self.metrics);
        tx.push_timeline(
            &row.customer_id,
            now,
            &TimelineEntry::new(now, "delivery", &row.ticket_id, format!("{ch} {status}"))
                .channel(rec.channel)
                .outcome(delivery.as_str()),
        );
        if delivery == Delivery::Undelivered {
            let pos = row.plan.iter().position(|c| *c == rec.channel);
            if let Some(next) = pos.map(|p| p + 1).filter(|p| *p < row.plan.len()) {
                FellBack {
                    from: rec.channel,
                    to: row.plan[next],
                    ticket: row.ticket_id.clone(),
                }
                .emit(&self.metrics);
                let mut again = row.clone();
                again.id = format!("{}/after-{ch}", row.id);
                again.step = next;
                again.tries = 0;
                again.attempts.clear();
                again.due_ms = now;
                tx.push_outbox(QUEUE, &again);
                tx.push_timeline(
                    &row.customer_id,
                    now,
                    &TimelineEntry::new(
                        now,
                        "fallback",
                        &row.ticket_id,
                        format!("{ch} {status}; trying {} next", row.plan[next].as_str()),
                    )
                    .channel(row.plan[next]),
                );
            }
        }
        if let Err(error) = store.commit(tx) {
            StatusNotRecorded { error: &error }.emit();
            return false;
        }
        true
    }
}

/// Runs inbound handling off the async workers: it goes through the daemon's single writer and
/// flushes.
/// A failure (a bug) answers 500, so the provider retries and the fuzz tests see it.
async fn blocking<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&AppState) -> T + Send + 'static,
) -> Result<T, Response> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "inbound task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the message could not be handled",
            )
        })
}

/// A customer's SMS reply (Twilio webhook).
///
/// Carrier keywords (STOP, START, HELP) are answered in TwiML; a reply is applied to the
/// customer's ticket.
#[utoipa::path(post, path = "/notify/v1/twilio/sms", tag = "notify", operation_id = "twilio_sms",
    params(TwilioHeaders),
    request_body(description = "Twilio's webhook parameters, as a form (or JSON)", content(
        (TwilioSmsForm = "application/x-www-form-urlencoded"), (TwilioSmsForm = "application/json"))),
    responses(
        (status = 200, description = "TwiML: empty, or the answer to a carrier keyword", body = String, content_type = "text/xml"),
        (status = 403, description = "`X-Twilio-Signature` does not match", body = ErrorBody),
        (status = 404, description = "SMS is not configured (`notify.sms`)", body = ErrorBody),
    ))]
async fn sms_reply(
    State(s): State<AppState>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return rejected(r),
    };
    if s.n.cfg.sms.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "SMS is not configured",
        );
    }
    let Some(params) = twilio_request(&s.n, &uri, &headers, &body) else {
        return bad_signature();
    };
    let from = param(&params, "From").unwrap_or("").to_string();
    let body = param(&params, "Body").unwrap_or("").to_string();
    let sid = param(&params, "MessageSid")
        .or_else(|| param(&params, "SmsSid"))
        .map(str::to_string);
    // Twilio only needs to know the webhook worked (and what to answer a keyword with); what
    // could not be applied is logged and kept, not bounced back to the provider.
    match blocking(&s, move |s| handle_sms(s, &from, &body, sid.as_deref())).await {
        Ok(answer) => twiml(answer.as_deref()),
        Err(r) => r,
    }
}

/// One inbound SMS: carrier keywords, then the reply to the customer's ticket. Returns the text
/// to answer with (keywords only).
fn handle_sms(s: &AppState, from: &str, body: &str, sid: Option<&str>) -> Option<String> {
    if sid.is_some_and(|id| s.n.seen_inbound(&s.store, Channel::Sms, id)) {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["replay"])
            .inc();
        tracing::info!("SMS with an already handled MessageSid ignored");
        return None;
    }
    let customer: Option<String> = s
        .store
        .get_kv(&contact_key(Channel::Sms, from))
        .ok()
        .flatten();
    let locale = customer
        .as_deref()
        .and_then(|c| s.desk.customer(c))
        .map(|c| c.locale)
        .unwrap_or_default();
    let say = |key: &str| Some(s.n.templates.phrase(&locale, key, &Facts::default()));
    let intent = intent::parse(body);
    match intent {
        Intent::Stop | Intent::Start => {
            let stop = intent == Intent::Stop;
            if let Err(e) = s.n.opt(
                &s.store,
                customer.as_deref(),
                Channel::Sms,
                from,
                body,
                stop,
            ) {
                tracing::error!(error = %e, "SMS opt-out not recorded");
            }
            return say(if stop { "sms_stopped" } else { "sms_started" });
        }
        Intent::Help => return say("sms_help"),
        _ => {}
    }
    let Some(customer) = customer else {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["unknown_sender"])
            .inc();
        tracing::warn!("SMS reply from an unknown number: kept for a person");
        let short: String = body.chars().take(200).collect();
        let from: String = from.chars().take(40).collect();
        if let Err(e) = s.n.keep(
            &s.store,
            super::UNKNOWN_SENDER,
            "",
            (Channel::Sms, sid),
            format!("sms from {from}, a number no customer has: {short}"),
            NEEDS_HUMAN,
        ) {
            tracing::error!(error = %e, "SMS from an unknown number not recorded");
        }
        return None;
    };
    let ticket = ticket_ref(body)
        .or_else(|| {
            // A bare "yes" answers the last warning this phone received by SMS, else the last
            // warning that reached the customer on any channel.
            [Some(Channel::Sms), None].into_iter().find_map(|ch| {
                s.store
                    .get_kv::<String>(&super::last_warned_key(&customer, ch))
                    .ok()
                    .flatten()
            })
        })
        .filter(|t| {
            s.desk
                .ticket(t)
                .is_some_and(|t| t.customer_id.as_deref() == Some(customer.as_str()))
        });
    let short: String = body.chars().take(200).collect();
    let Some(ticket) = ticket else {
        if let Err(e) = s.n.keep(
            &s.store,
            &customer,
            "",
            (Channel::Sms, sid),
            format!("customer wrote by sms about no known ticket: {short}"),
            NEEDS_HUMAN,
        ) {
            tracing::error!(error = %e, "SMS reply not recorded");
        }
        return None;
    };
    let m = Incoming {
        channel: Some(Channel::Sms),
        provider_id: sid,
        reply: Reply::parse(body),
        text: body,
        visit: "",

        booking: None,
    };
    match s.n.apply_reply(&s.store, s.desk.as_ref(), &ticket, &m) {
        Ok(_) => {}
        Err(ReplyError::Duplicate) => {
            s.n.metrics
                .inbound_ignored
                .with_label_values(&["replay"])
                .inc();
        }
        Err(e) => tracing::info!(ticket = %ticket, reason = %e, "SMS reply not applied"),
    }
    None
}

/// A TwiML answer, with a message for keyword replies.
fn twiml(message: Option<&str>) -> Response {
    let body = match message {
        Some(m) if !m.is_empty() => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            super::templates::html_escape(m)
        ),
        _ => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".to_string(),
    };
    ([(axum::http::header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// A ticket id (`T-` and 16 hex digits) anywhere in the text. People's text is Unicode: the
/// scan walks characters, never byte offsets it computed itself.
pub fn ticket_ref(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.windows(18).find_map(|w| {
        let prefix = w[0].eq_ignore_ascii_case(&'t') && w[1] == '-';
        (prefix && w[2..].iter().all(|c| c.is_ascii_hexdigit())).then(|| {
            let hex: String = w[2..].iter().map(|c| c.to_ascii_lowercase()).collect();
            format!("T-{hex}")
        })
    })
}

/// A delivery status callback (Twilio webhook).
///
/// For an SMS or a call: delivered, or undelivered (the next channel is tried).
#[utoipa::path(post, path = "/notify/v1/twilio/status", tag = "notify", operation_id = "twilio_status",
    params(TwilioHeaders),
    request_body(description = "Twilio's status callback parameters, as a form (or JSON)", content(
        (TwilioStatusForm = "application/x-www-form-urlencoded"), (TwilioStatusForm = "application/json"))),
    responses(
        (status = 204, description = "Recorded (or about a message forewarn does not know)"),
        (status = 400, description = "No message id or no status", body = ErrorBody),
        (status = 403, description = "`X-Twilio-Signature` does not match", body = ErrorBody),
    ))]
async fn status_callback(
    State(s): State<AppState>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return rejected(r),
    };
    let Some(params) = twilio_request(&s.n, &uri, &headers, &body) else {
        return bad_signature();
    };
    let sid = param(&params, "MessageSid").or_else(|| param(&params, "CallSid"));
    let status = param(&params, "MessageStatus").or_else(|| param(&params, "CallStatus"));
    match (sid, status) {
        (Some(sid), Some(st)) => {
            let (sid, st) = (sid.to_string(), st.to_string());
            match blocking(&s, move |s| s.n.apply_status(&s.store, &sid, &st)).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(r) => r,
            }
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_callback",
            "MessageSid/CallSid and MessageStatus/CallStatus are required",
        ),
    }
}

/// A customer's e-mail reply (Mailgun inbound route).
///
/// The request must carry Mailgun's signature (`timestamp`, `token`, `signature` keyed with the
/// webhook signing key), within `inbound_email_max_age` of now, and each `token` is accepted
/// once. The reply counts for the ticket and customer of the reply address it was sent to.
#[utoipa::path(post, path = "/notify/v1/email/inbound", tag = "notify", operation_id = "inbound_email",
    request_body(content = MailgunForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Handled: applied, kept for a person, or ignored (replay, automatic reply)", body = EmailOutcome),
        (status = 403, description = "Mailgun's signature does not hold, or is too old", body = ErrorBody),
        (status = 404, description = "Inbound e-mail is not configured, or the reply address names a ticket that no longer exists", body = ErrorBody),
        (status = 409, description = "The ticket is closed, or belongs to another customer now", body = ErrorBody),
    ))]
async fn email_reply(
    State(s): State<AppState>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params = match form {
        Ok(Form(p)) => p,
        Err(r) => return rejected(r),
    };
    let Some(key) = &s.n.cfg.inbound_email_signing_key else {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "notify.inbound_email_signing_key is not set",
        );
    };
    let now = s.n.clock.now_ms();
    let window = s.n.cfg.inbound_email_max_age.as_millis_i64();
    if let Err(e) = super::signature::mailgun_valid(
        key,
        param(&params, "timestamp"),
        param(&params, "token"),
        param(&params, "signature"),
        now,
        window,
    ) {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["bad_signature"])
            .inc();
        return error(StatusCode::FORBIDDEN, "bad_signature", &e.to_string());
    }
    blocking(&s, move |s| handle_email(s, &params))
        .await
        .unwrap_or_else(|r| r)
}

/// The headers of an inbound e-mail: Mailgun's `message-headers` (a JSON list of pairs) and any
/// header sent as its own form field.
fn email_headers(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = param(params, "message-headers")
        .and_then(|j| serde_json::from_str::<Vec<(String, String)>>(j).ok())
        .unwrap_or_default();
    for name in [
        "Auto-Submitted",
        "X-Autoreply",
        "X-Autorespond",
        "Precedence",
        "X-Auto-Response-Suppress",
        "Message-Id",
    ] {
        if let Some(v) = param(params, name) {
            h.push((name.to_string(), v.to_string()));
        }
    }
    h
}

/// An inbound e-mail as the provider's form carries it, read without I/O (and fuzzed: see
/// `fuzz/`): the sender's address, the subject, the reply's first line, the headers, the
/// `Message-ID`, the ticket it names and whether it is an automatic reply.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailForm {
    /// The sender's address as the message claims it (`From`): recorded, never trusted.
    pub address: String,
    /// The address the message was sent to (Mailgun `recipient`).
    pub recipient: String,
    /// The token of our per-message reply address in `recipient`, if it has one.
    pub reply_token: Option<String>,
    /// Mailgun's one-time `token` of this request (replay protection).
    pub provider_token: Option<String>,
    pub subject: String,
    /// The first non-empty line of the reply (quoted history below it is not the answer).
    pub first_line: String,
    pub headers: Vec<(String, String)>,
    pub message_id: Option<String>,
    pub ticket: Option<String>,
    /// Why this is an automatic reply (`Auto-Submitted`, out-of-office subject…), if it is one.
    pub auto_reply: Option<String>,
}

impl EmailForm {
    pub fn parse(params: &[(String, String)]) -> EmailForm {
        let from = param(params, "sender")
            .or_else(|| param(params, "from"))
            .unwrap_or("");
        let address = mailbox_address(from).to_string();
        let recipient = param(params, "recipient")
            .or_else(|| param(params, "to"))
            .map(mailbox_address)
            .unwrap_or("")
            .to_string();
        let reply_token = super::reply_token(&recipient);
        let provider_token = param(params, "token")
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        let subject = param(params, "subject").unwrap_or("").to_string();
        let text = param(params, "stripped-text")
            .or_else(|| param(params, "body-plain"))
            .or_else(|| param(params, "text"))
            .unwrap_or("");
        let headers = email_headers(params);
        let message_id = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("message-id"))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let ticket = ticket_ref(&subject).or_else(|| ticket_ref(text));
        let first_line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        let auto_reply = intent::auto_reply(&headers, &subject);
        EmailForm {
            address,
            recipient,
            reply_token,
            provider_token,
            subject,
            first_line,
            headers,
            message_id,
            ticket,
            auto_reply,
        }
    }
}

/// `Name <a@b>` → `a@b`; anything else as it is. Walks characters: the text is the sender's.
fn mailbox_address(from: &str) -> &str {
    let open = from.char_indices().rfind(|(_, c)| *c == '<');
    let close = from.char_indices().rfind(|(_, c)| *c == '>');
    match (open, close) {
        // '<' is one byte, so the index after it is a character boundary.
        (Some((a, _)), Some((b, _))) if a < b => from.get(a + 1..b).unwrap_or(from),
        _ => from,
    }
}

fn handle_email(s: &AppState, params: &[(String, String)]) -> Response {
    let form = EmailForm::parse(params);
    let message_id = form.message_id.as_deref();
    // Each signed request once: Mailgun's token, then the message's own Message-ID.
    if let Some(tok) = &form.provider_token {
        let key = super::inbound_key(Channel::Email, &format!("mailgun-token:{tok}"));
        let seen = {
            let _one_at_a_time = s.n.inbound.lock();
            let seen = s.store.get_kv::<String>(&key).ok().flatten().is_some();
            if !seen {
                let mut tx = s.store.tx();
                tx.put_kv(&key, &Timestamp::from_millis(s.n.clock.now_ms()).format());
                if let Err(e) = s.store.commit(tx) {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string());
                }
            }
            seen
        };
        if seen {
            s.n.metrics
                .inbound_ignored
                .with_label_values(&["replay"])
                .inc();
            return Json(EmailOutcome::ignored("replay")).into_response();
        }
    }
    if message_id.is_some_and(|id| s.n.seen_inbound(&s.store, Channel::Email, id)) {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["replay"])
            .inc();
        return Json(EmailOutcome::ignored("replay")).into_response();
    }
    // Who wrote is decided by the address they wrote to (a per-message reply address we
    // recorded when we sent), never by `From`.
    let target: Option<super::ReplyTarget> = form
        .reply_token
        .as_deref()
        .and_then(|t| s.store.get_kv(&super::reply_key(t)).ok().flatten());
    let Some(target) = target else {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["unknown_sender"])
            .inc();
        let subject: String = form.subject.chars().take(100).collect();
        let line: String = form.first_line.chars().take(200).collect();
        let to: String = form.recipient.chars().take(80).collect();
        if let Err(e) = s.n.keep(
            &s.store,
            super::UNKNOWN_SENDER,
            "",
            (Channel::Email, message_id),
            format!("email to {to}, not one of our reply addresses (subject {subject:?}): {line}"),
            NEEDS_HUMAN,
        ) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string());
        }
        return Json(EmailOutcome {
            kept: Some(NEEDS_HUMAN.into()),
            ..EmailOutcome::default()
        })
        .into_response();
    };
    let ticket_id = target.ticket_id.clone();
    let Some(t) = s.desk.ticket(&ticket_id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such ticket");
    };
    if t.customer_id.as_deref() != Some(target.customer_id.as_str()) {
        return error(
            StatusCode::CONFLICT,
            "reassigned",
            "the ticket belongs to another customer now",
        );
    }
    let customer = target.customer_id.clone();
    // The customer's own address on file (an opt-out applies to it, not to whatever `From`
    // said).
    let contact = s
        .desk
        .customer(&customer)
        .and_then(|c| c.contacts.get(&Channel::Email).cloned())
        .unwrap_or_default();
    let addr = contact.as_str();
    let first_line = form.first_line.as_str();
    // An out-of-office answer is not the customer's answer: recorded, never acted on.
    if let Some(why) = &form.auto_reply {
        s.n.metrics
            .inbound_ignored
            .with_label_values(&["auto_reply"])
            .inc();
        let detail = format!("automatic reply by email ignored ({why})");
        if let Err(e) = s.n.keep(
            &s.store,
            &customer,
            &ticket_id,
            (Channel::Email, message_id),
            detail,
            "auto_reply",
        ) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string());
        }
        return Json(EmailOutcome {
            ignored: Some("auto_reply".into()),
            ..EmailOutcome::ticket(&t)
        })
        .into_response();
    }
    let intent = intent::parse(first_line);
    if matches!(intent, Intent::Stop | Intent::Start) {
        let stop = intent == Intent::Stop;
        if let Err(e) = s.n.opt(
            &s.store,
            Some(&customer),
            Channel::Email,
            addr,
            first_line,
            stop,
        ) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string());
        }
        return Json(EmailOutcome {
            opted_out: Some(stop),
            ..EmailOutcome::ticket(&t)
        })
        .into_response();
    }
    let m = Incoming {
        channel: Some(Channel::Email),
        provider_id: message_id,
        reply: Reply::parse(first_line),
        text: first_line,
        visit: "",

        booking: None,
    };
    match s.n.apply_reply(&s.store, s.desk.as_ref(), &ticket_id, &m) {
        Ok(t) => Json(EmailOutcome {
            needs_human: Some(m.reply == Reply::Unclear),
            ..EmailOutcome::ticket(&t)
        })
        .into_response(),
        Err(ReplyError::Duplicate) => {
            s.n.metrics
                .inbound_ignored
                .with_label_values(&["replay"])
                .inc();
            Json(EmailOutcome::ignored("replay")).into_response()
        }
        Err(ReplyError::NotFound) => error(StatusCode::NOT_FOUND, "not_found", "no such ticket"),
        Err(e @ ReplyError::Closed(..)) => error(StatusCode::CONFLICT, "closed", &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "reply", &e.to_string()),
    }
}

const PAGE_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32em;margin:1em auto;padding:0 1em;line-height:1.5}\
    h1{font-size:1.4em}button{display:block;width:100%;box-sizing:border-box;margin:.5em 0;padding:.9em;font-size:1em}\
    input{width:100%;box-sizing:border-box;padding:.6em;font-size:1em}label{display:block;margin:.5em 0}\
    .status{color:#444}.done{padding:.8em;background:#eef6ee;border-radius:.3em}\
    h2{font-size:1.1em;margin-top:1.5em}#story ol{padding-inline-start:1.2em}#story li{margin:.3em 0}#story time{color:#555}\
    :lang(fa) #story ol{list-style-type:persian}:lang(th) #story ol{list-style-type:thai}\
    fieldset{border:1px solid #bbb;border-radius:.3em;margin:.5em 0}.slot{display:flex;gap:.6em;align-items:center}.slot input{width:auto}";

fn page_html_in(lang: &str, rtl: bool, title: &str, body: &str) -> Html<String> {
    let e = super::templates::html_escape;
    Html(format!(
        "<!DOCTYPE html><html lang=\"{lang}\" dir=\"{dir}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{PAGE_STYLE}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        lang = e(lang),
        dir = if rtl { "rtl" } else { "ltr" },
        t = e(title)
    ))
}

/// The language of a visitor we know nothing about yet (a bad or expired link).
fn visitor_locale(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// An error page in the visitor's language.
fn page_error(
    s: &AppState,
    locale: &str,
    status: StatusCode,
    pick: fn(&PageText) -> &str,
) -> Response {
    let p = s.n.templates.page(locale, &Facts::default());
    let body = format!("<p>{}</p>", super::templates::html_escape(pick(&p)));
    (status, page_html_in(&p.lang, p.rtl, &p.title, &body)).into_response()
}

/// The page's words in the ticket's customer's language.
fn page_text(s: &AppState, t: &Ticket) -> (PageText, String) {
    let now = s.n.clock.now_ms();
    let customer = t.customer_id.as_deref().and_then(|c| s.desk.customer(c));
    match customer {
        Some(c) => {
            let facts = s.n.facts(t, &c, s.desk.as_ref(), now);
            (s.n.templates.page(&c.locale, &facts), c.locale)
        }
        None => {
            let facts = Facts {
                device: t.device_id.to_string(),
                failure_mode: t.failure_mode.clone(),
                ticket: t.id.clone(),
                ..Facts::default()
            };
            (s.n.templates.page("", &facts), String::new())
        }
    }
}

fn claims(
    s: &AppState,
    headers: &HeaderMap,
    token: &str,
) -> Result<(link::LinkClaims, Ticket), Box<Response>> {
    let locale = visitor_locale(headers);
    let c = link::verify(&s.n.link_key, token, s.n.clock.now_ms()).map_err(|e| {
        Box::new(match e {
            LinkError::Expired => page_error(s, &locale, StatusCode::GONE, |p| &p.expired),
            LinkError::Invalid => page_error(s, &locale, StatusCode::NOT_FOUND, |p| &p.invalid),
        })
    })?;
    let revoked: Option<i64> = s
        .store
        .get_kv(&super::link_revoked_key(&c.ticket_id))
        .ok()
        .flatten();
    if revoked.is_some_and(|r| c.iat_ms <= r) {
        return Err(Box::new(page_error(s, &locale, StatusCode::GONE, |p| {
            &p.expired
        })));
    }
    let t = s
        .desk
        .ticket(&c.ticket_id)
        .filter(|t| t.customer_id.as_deref() == Some(c.customer_id.as_str()))
        .ok_or_else(|| {
            let locale = s
                .desk
                .customer(&c.customer_id)
                .map(|c| c.locale)
                .unwrap_or(locale.clone());
            Box::new(page_error(s, &locale, StatusCode::NOT_FOUND, |p| &p.gone))
        })?;
    Ok((c, t))
}

/// The page body: what is wrong and when, the status, and the three buttons while the ticket is
/// open — or, once it is closed, what happened.
fn page_body(s: &AppState, t: &Ticket, p: &PageText, note: &str) -> String {
    let e = super::templates::html_escape;
    let answered: Option<Answer> = s
        .store
        .get_kv(&format!("notify/answer/{}", t.id))
        .ok()
        .flatten();
    let status = p
        .statuses
        .get(t.status.as_str())
        .cloned()
        .unwrap_or_default();
    let mut body = String::new();
    if !note.is_empty() {
        body.push_str(&format!("<p class=\"done\" id=\"thanks\">{}</p>", e(note)));
    }
    let story = story_html(s, t, p);
    if !t.is_live() {
        let what = match (t.status, t.outcome) {
            (Status::Dismissed, _) | (_, Some(crate::domain::Outcome::FalseAlarm)) => &p.no_action,
            (_, Some(crate::domain::Outcome::ConfirmedFault)) => &p.resolved,
            _ => &p.closed,
        };
        body.push_str(&format!(
            "<p class=\"status\" id=\"status\" data-status=\"{}\">{}</p><p id=\"closed\">{}</p>",
            t.status.as_str(),
            e(&status),
            e(what)
        ));
        body.push_str(&story);
        return body;
    }
    body.push_str(&format!(
        "<p><strong>{summary}</strong></p>{advice}<p class=\"status\" id=\"status\" data-status=\"{code}\">{st}</p>",
        summary = e(&p.summary),
        advice = if p.advice.is_empty() {
            String::new()
        } else {
            format!("<p>{}</p>", e(&p.advice))
        },
        code = t.status.as_str(),
        st = e(&status),
    ));
    if let Some(a) = answered {
        let said = match a.answer.as_str() {
            x if x == Reply::Confirm.as_str() => &p.confirm,
            x if x == Reply::Later.as_str() => &p.reschedule,
            _ => &p.not_now,
        };
        body.push_str(&format!(
            "<p id=\"answered\"><em>{}: {}</em></p>",
            e(&p.answered),
            e(said)
        ));
    }
    let slots = proposed_slots_html(s, t, p);
    body.push_str(&format!(
        "<form method=\"post\">{slots}<label>{when} <input name=\"when\" maxlength=\"100\"></label>\
         <button name=\"action\" value=\"confirm\" id=\"confirm\">{confirm}</button>\
         <button name=\"action\" value=\"reschedule\" id=\"reschedule\">{reschedule}</button>\
         <button name=\"action\" value=\"not_now\" id=\"not_now\">{not_now}</button></form>",
        when = e(&p.when),
        confirm = e(&p.confirm),
        reschedule = e(&p.reschedule),
        not_now = e(&p.not_now),
    ));
    body.push_str(&story);
    body
}

/// The visit slots a dispatcher proposed for the ticket, if any.
fn proposal(s: &AppState, t: &Ticket) -> Option<crate::domain::Proposal> {
    s.store
        .get_kv::<crate::domain::Proposal>(&crate::domain::proposal_key(&t.id))
        .ok()
        .flatten()
        .filter(|p| !p.slots.is_empty())
}

/// A moment in the ticket's customer's time zone, calendar and digits.
fn customer_moment(s: &AppState, t: &Ticket, ms: Timestamp) -> String {
    use chrono::TimeZone;
    let customer = t.customer_id.as_deref().and_then(|c| s.desk.customer(c));
    let tz = customer
        .as_ref()
        .map(super::route::tz_of)
        .unwrap_or(chrono_tz::Tz::UTC);
    let locale = customer.map(|c| c.locale).unwrap_or_default();
    tz.timestamp_millis_opt(ms.as_millis())
        .single()
        .map(|lt| s.n.templates.date(&locale, lt.naive_local()))
        .unwrap_or_default()
}

/// The proposed slots as radio buttons (the customer picks one, then books the visit): exactly
/// the slots the dispatcher offered, in the customer's calendar.
fn proposed_slots_html(s: &AppState, t: &Ticket, p: &PageText) -> String {
    let e = super::templates::html_escape;
    let Some(prop) = proposal(s, t) else {
        return String::new();
    };
    let mut html = format!("<fieldset id=\"slots\"><legend>{}</legend>", e(&p.slots));
    for (i, slot) in prop.slots.iter().enumerate() {
        html.push_str(&format!(
            "<label class=\"slot\"><input type=\"radio\" name=\"slot\" value=\"{v}\" id=\"slot-{i}\"{c}> \
             <span dir=\"auto\">{w}</span></label>",
            v = slot.start_ms.as_millis(),
            c = if i == 0 { " checked" } else { "" },
            w = e(&customer_moment(s, t, slot.start_ms)),
        ));
    }
    html.push_str("</fieldset>");
    html
}

/// The ticket's story in the customer's words and calendar, from the same stories the
/// timeline API serves (`story::group`), told by [`super::story::page_lines`].
fn story_html(s: &AppState, t: &Ticket, p: &PageText) -> String {
    use chrono::TimeZone;
    let e = super::templates::html_escape;
    let Some(cid) = t.customer_id.as_deref() else {
        return String::new();
    };
    let customer = s.desk.customer(cid);
    let locale = customer
        .as_ref()
        .map(|c| c.locale.clone())
        .unwrap_or_default();
    let tz = customer
        .as_ref()
        .map(super::route::tz_of)
        .unwrap_or(chrono_tz::Tz::UTC);
    let entries = match s.store.timeline::<TimelineEntry>(cid) {
        Ok(x) => x,
        Err(err) => {
            tracing::warn!(error = %err, "timeline unreadable: the page shows no story");
            return String::new();
        }
    };
    let stories = super::story::group(&entries);
    let Some(story) = stories.iter().find(|st| st.ticket_id == t.id) else {
        return String::new();
    };
    let lines = super::story::page_lines(story, &p.story, &p.statuses);
    if lines.is_empty() {
        return String::new();
    }
    let mut html = format!("<section id=\"story\"><h2>{}</h2><ol>", e(&p.story.title));
    for l in lines {
        let when = Timestamp::parse(&l.at)
            .and_then(|ms| tz.timestamp_millis_opt(ms.as_millis()).single())
            .map(|lt| s.n.templates.date(&locale, lt.naive_local()))
            .unwrap_or_default();
        html.push_str(&format!(
            "<li data-kind=\"{}\"><time>{}</time> \u{2014} {}</li>",
            l.kind,
            e(&when),
            e(&l.text)
        ));
    }
    html.push_str("</ol></section>");
    html
}

/// The self-service page of a signed link.
///
/// What is wrong, the ticket's status and story, and the customer's three answers.
#[utoipa::path(get, path = "/notify/v1/s/{token}", tag = "notify", operation_id = "self_service_page",
    params(("token" = String, Path, description = "The signed token of the link sent to the customer"), PageHeaders),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 404, description = "Not a valid link, or its ticket is gone", body = String, content_type = "text/html"),
        (status = 410, description = "The link expired or was revoked", body = String, content_type = "text/html"),
    ))]
async fn page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let (_, t) = match claims(&s, &headers, &token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (p, _) = page_text(&s, &t);
    page_html_in(&p.lang, p.rtl, &p.title, &page_body(&s, &t, &p, "")).into_response()
}

/// The customer's answer on the self-service page (a visit, another time, not now).
#[utoipa::path(post, path = "/notify/v1/s/{token}", tag = "notify", operation_id = "self_service_answer",
    params(("token" = String, Path, description = "The signed token of the link sent to the customer"), PageHeaders),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Thanks (or: confirm the change of answer)", body = String, content_type = "text/html"),
        (status = 400, description = "`action` is not one of the answers", body = String, content_type = "text/html"),
        (status = 404, description = "Not a valid link, or its ticket is gone", body = String, content_type = "text/html"),
        (status = 409, description = "The answer was changed once already, or the ticket closed meanwhile", body = String, content_type = "text/html"),
        (status = 410, description = "The link expired or was revoked", body = String, content_type = "text/html"),
    ))]
async fn page_answer(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params = match form {
        Ok(Form(p)) => p,
        Err(r) => return rejected(r),
    };
    let (_, t) = match claims(&s, &headers, &token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (p, locale) = page_text(&s, &t);
    let reply = match param(&params, "action") {
        Some("confirm") => Reply::Confirm,
        Some("reschedule") => Reply::Later,
        Some("not_now") => Reply::NotNow,
        _ => return page_error(&s, &locale, StatusCode::BAD_REQUEST, |p| &p.choose),
    };
    let mut when = param(&params, "when").unwrap_or("").trim().to_string();
    // A proposed slot picked with "book a visit" books exactly that slot; a slot that was not
    // proposed is refused.
    let mut booking = None;
    if let (Reply::Confirm, Some(v)) = (reply, param(&params, "slot")) {
        let prop = proposal(&s, &t);
        let chosen = v
            .parse::<i64>()
            .ok()
            .map(Timestamp::from_millis)
            .and_then(|start| {
                prop.as_ref()
                    .and_then(|p| p.slots.iter().find(|x| x.start_ms == start).copied())
            });
        let (Some(prop), Some(slot)) = (prop, chosen) else {
            return page_error(&s, &locale, StatusCode::BAD_REQUEST, |p| &p.choose);
        };
        when = customer_moment(&s, &t, slot.start_ms);
        booking = Some(crate::domain::Visit {
            ticket_id: t.id.clone(),
            technician_id: prop.technician_id.clone(),
            slot,
            booked_at: Timestamp::from_millis(s.n.clock.now_ms()).format(),
            booked_by: "customer:link".into(),
        });
    }
    // An answer can be changed once on the page, after a confirmation.
    let prev: Option<Answer> = s
        .store
        .get_kv(&format!("notify/answer/{}", t.id))
        .ok()
        .flatten();
    if let Some(prev) = prev.filter(|p| p.answer != reply.as_str() && t.is_live()) {
        if prev.changes >= 1 {
            return page_error(&s, &locale, StatusCode::CONFLICT, |p| &p.change_used);
        }
        if param(&params, "confirm") != Some("yes") {
            let e = super::templates::html_escape;
            let word = |a: &str| match a {
                x if x == Reply::Confirm.as_str() => p.confirm.clone(),
                x if x == Reply::Later.as_str() => p.reschedule.clone(),
                _ => p.not_now.clone(),
            };
            let action = param(&params, "action").unwrap_or("");
            let body = format!(
                "<p id=\"change\">{q}</p><p>{old} \u{2192} <strong>{new}</strong></p>\
                 <form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"{a}\">\
                 <input type=\"hidden\" name=\"when\" value=\"{w}\">\
                 <button name=\"confirm\" value=\"yes\" id=\"confirm_change\">{b}</button></form>",
                q = e(&p.change_confirm),
                old = e(&word(&prev.answer)),
                new = e(&word(reply.as_str())),
                a = e(action),
                w = e(&when),
                b = e(&p.change_button),
            );
            return page_html_in(&p.lang, p.rtl, &p.title, &body).into_response();
        }
    }
    let id = t.id.clone();
    let result = blocking(&s, move |s| {
        let m = Incoming {
            channel: None,
            provider_id: None,
            reply,
            text: "",
            visit: &when,
            booking,
        };
        s.n.apply_reply(&s.store, s.desk.as_ref(), &id, &m)
    })
    .await;
    let result = match result {
        Ok(r) => r,
        Err(r) => return r,
    };
    match result {
        Ok(t) => {
            let (p, _) = page_text(&s, &t);
            page_html_in(&p.lang, p.rtl, &p.title, &page_body(&s, &t, &p, &p.thanks))
                .into_response()
        }
        Err(ReplyError::NotFound) => page_error(&s, &locale, StatusCode::NOT_FOUND, |p| &p.gone),
        Err(ReplyError::Closed(..)) => {
            // Closed meanwhile: show what happened instead of an error.
            let t = s.desk.ticket(&t.id).unwrap_or(t);
            (
                StatusCode::CONFLICT,
                page_html_in(&p.lang, p.rtl, &p.title, &page_body(&s, &t, &p, "")),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "page answer not recorded");
            page_error(&s, &locale, StatusCode::INTERNAL_SERVER_ERROR, |p| &p.error)
        }
    }
}

/// Revoke a ticket's self-service links.
///
/// Every link of the ticket issued so far stops working (a write: needs scope `write`).
#[utoipa::path(post, path = "/api/v1/tickets/{id}/links/revoke", tag = "notify",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id")),
    responses(
        (status = 204, description = "Every link of the ticket issued so far stops working"),
        (status = 404, description = "No such ticket", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn revoke_links(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if s.desk.ticket(&id).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such ticket");
    }
    match blocking(&s, move |s| s.n.revoke_links(&s.store, &id)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(r) => r,
    }
}

/// A customer's timeline.
///
/// Every ticket, message, delivery, reply and decision of the customer in time order
/// (`entries`), and one story per ticket (`stories`). `unknown-sender` holds replies from
/// addresses no customer has.
#[utoipa::path(get, path = "/api/v1/customers/{id}/timeline", tag = "notify",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Customer id")),
    responses(
        (status = 200, description = "The timeline", body = Timeline),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn timeline(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = crate::domain::validate_device_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("customer id: {}", e.to_string().replace("device id", "id")),
        );
    }
    match s.store.timeline::<TimelineEntry>(&id) {
        Ok(entries) if entries.is_empty() && s.desk.customer(&id).is_none() => {
            error(StatusCode::NOT_FOUND, "not_found", "no such customer")
        }
        Ok(entries) => {
            // `entries` is the full record (unchanged shape); `stories` is the customer's view,
            // one per ticket.
            let stories = super::story::group(&entries);
            Json(Timeline {
                customer_id: id,
                entries,
                stories,
            })
            .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
    }
}

/// `GET /api/v1/customers/{id}/timeline`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    pub customer_id: String,
    /// The full record, oldest first.
    pub entries: Vec<TimelineEntry>,
    /// The customer's view: one story per ticket, by each story's first entry.
    pub stories: Vec<super::story::Story>,
}

/// What became of an inbound e-mail (the fields that apply are present).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    /// The ticket's status after the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Why nothing was done: `replay` (handled before) or `auto_reply` (an out-of-office).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// `needs_human`: from an address that is not one of forewarn's reply addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// The reply was a STOP (`true`) or START (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opted_out: Option<bool>,
    /// The reply was not one of the offered answers: kept for a person to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_human: Option<bool>,
}

impl EmailOutcome {
    fn ignored(why: &str) -> EmailOutcome {
        EmailOutcome {
            ignored: Some(why.into()),
            ..EmailOutcome::default()
        }
    }
    fn ticket(t: &Ticket) -> EmailOutcome {
        EmailOutcome {
            ticket_id: Some(t.id.clone()),
            status: Some(t.status),
            ..EmailOutcome::default()
        }
    }
}

// The request shapes below only describe the webhooks in the OpenAPI document: the handlers
// read the raw parameters (a signature covers exactly what was sent).

/// The headers of a Twilio webhook.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct TwilioHeaders {
    /// Base64 HMAC of the URL and parameters with the account's auth token (or the webhook's
    /// shared key, per `X-Twilio-Webhooks-Signature-Settings`).
    #[serde(rename = "X-Twilio-Signature")]
    signature: String,
}

/// The headers the self-service page reads.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct PageHeaders {
    /// The language of error pages when the link names no customer.
    #[serde(rename = "Accept-Language")]
    accept_language: Option<String>,
}

/// Twilio's SMS webhook parameters (more are sent; they count for the signature).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct TwilioSmsForm {
    #[serde(rename = "MessageSid")]
    message_sid: Option<String>,
    /// The customer's number (E.164).
    #[serde(rename = "From")]
    from: Option<String>,
    /// The message text.
    #[serde(rename = "Body")]
    body: Option<String>,
}

/// Twilio's status callback parameters (`MessageSid`/`MessageStatus` for an SMS,
/// `CallSid`/`CallStatus` for a call).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct TwilioStatusForm {
    #[serde(rename = "MessageSid")]
    message_sid: Option<String>,
    #[serde(rename = "MessageStatus")]
    message_status: Option<String>,
    #[serde(rename = "CallSid")]
    call_sid: Option<String>,
    #[serde(rename = "CallStatus")]
    call_status: Option<String>,
}

/// The fields of Mailgun's forwarded message that forewarn reads.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct MailgunForm {
    /// Mailgun's signature: Unix seconds, a one-time token, and the HMAC of both.
    timestamp: String,
    token: String,
    signature: String,
    /// The address the customer wrote to: one of forewarn's per-message reply addresses.
    recipient: Option<String>,
    sender: Option<String>,
    subject: Option<String>,
    #[serde(rename = "stripped-text")]
    stripped_text: Option<String>,
    #[serde(rename = "body-plain")]
    body_plain: Option<String>,
    /// A JSON list of `[name, value]` pairs.
    #[serde(rename = "message-headers")]
    message_headers: Option<String>,
}

/// The self-service page's form.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct PageForm {
    /// `confirm` (book a visit), `reschedule` (another time) or `not_now`.
    action: String,
    /// The visit time the customer proposes (free text, at most 100 characters kept).
    when: Option<String>,
    /// `yes` to confirm a change of answer.
    confirm: Option<String>,
}
