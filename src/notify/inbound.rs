//! Inbound: replies on any channel land on the same ticket, provider status callbacks, the
//! self-service page and the customer timeline.
//!
//! | route | what |
//! |---|---|
//! | `POST /notify/v1/twilio/sms` | SMS reply (Twilio form, `X-Twilio-Signature` verified) |
//! | `POST /notify/v1/twilio/status` | SMS/call status callback (signed likewise) |
//! | `POST /notify/v1/email/inbound?key=…` | e-mail reply, inbound-parse form (Mailgun field names; `text`/`from`/`subject` also accepted) |
//! | `GET/POST /notify/v1/s/{token}` | signed self-service page: confirm a visit, another time, not now |
//! | `GET /api/v1/customers/{id}/timeline` | every ticket, message, delivery, reply and decision in time order |

use super::link::{self, LinkError};
use super::worker::SentRecord;
use super::{contact_key, Answer, Notifier, TicketDesk, TimelineEntry, QUEUE};
use crate::domain::{format_ts, Status, Ticket};
use crate::fleet::Channel;
use crate::store::Store;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    n: Arc<Notifier>,
    store: Store,
    desk: Arc<dyn TicketDesk>,
}

pub fn router(n: Arc<Notifier>, store: Store, desk: Arc<dyn TicketDesk>) -> Router {
    Router::new()
        .route("/notify/v1/twilio/sms", post(sms_reply))
        .route("/notify/v1/twilio/status", post(status_callback))
        .route("/notify/v1/email/inbound", post(email_reply))
        .route("/notify/v1/s/{token}", get(page).post(page_answer))
        .route("/api/v1/customers/{id}/timeline", get(timeline))
        .with_state(AppState { n, store, desk })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// `X-Twilio-Signature`: base64 HMAC-SHA1 of the URL followed by every POST parameter
/// (name then value), sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut p: Vec<&(String, String)> = params.iter().collect();
    p.sort();
    let mut s = url.to_string();
    for (k, v) in p {
        s.push_str(k);
        s.push_str(v);
    }
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!());
    mac.update(s.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn twilio_verified(
    n: &Notifier,
    headers: &HeaderMap,
    path: &str,
    params: &[(String, String)],
) -> bool {
    let Some(sig) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let url = format!("{}{path}", n.public_url);
    [&n.cfg.sms, &n.cfg.voice].into_iter().flatten().any(|t| {
        let want = twilio_signature(&t.auth_token, &url, params);
        // Constant-time comparison of equal-length strings.
        want.len() == sig.len()
            && want
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a customer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// "1", "yes", "ok": seen, go ahead.
    Acknowledge,
    /// The self-service page's "confirm a visit".
    Confirm,
    /// "2": another time please.
    Reschedule,
    /// "3": not now.
    NotNow,
    Unknown,
}

impl Reply {
    pub fn as_str(self) -> &'static str {
        match self {
            Reply::Acknowledge => "acknowledged",
            Reply::Confirm => "visit confirmed",
            Reply::Reschedule => "reschedule requested",
            Reply::NotNow => "not now",
            Reply::Unknown => "message",
        }
    }

    /// First word of a text reply, in any of the template languages or as a digit in Latin,
    /// Thai, Persian or Arabic script.
    pub fn parse(text: &str) -> Reply {
        let first = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches(|c: char| c.is_ascii_punctuation())
            .to_lowercase();
        match first.as_str() {
            "1" | "๑" | "۱" | "١" | "yes" | "y" | "ok" | "okay" | "confirm" | "ใช่" | "ตกลง"
            | "بله" | "باشه" => Reply::Acknowledge,
            "2" | "๒" | "۲" | "٢" | "later" | "reschedule" | "another" => Reply::Reschedule,
            "3" | "๓" | "۳" | "٣" | "no" | "not" | "stop" | "ไม่" | "نه" => {
                Reply::NotNow
            }
            _ => Reply::Unknown,
        }
    }
}

#[derive(Debug)]
pub enum ReplyError {
    NotFound,
    Rejected(String),
}

impl Notifier {
    /// Applies a reply to the ticket through the desk, records the answer (so nobody asks
    /// again) and the timeline entry. Idempotent: the same answer twice changes nothing.
    pub fn apply_reply(
        &self,
        store: &Store,
        desk: &dyn TicketDesk,
        ticket_id: &str,
        channel: &str,
        reply: Reply,
        text: &str,
    ) -> Result<Ticket, ReplyError> {
        let t = desk.ticket(ticket_id).ok_or(ReplyError::NotFound)?;
        if !t.is_live() {
            return Err(ReplyError::Rejected(format!(
                "ticket {ticket_id} is already {}",
                t.status.as_str()
            )));
        }
        let cid = t.customer_id.clone().unwrap_or_default();
        let now = self.clock.now_ms();
        let prev: Option<Answer> = store
            .get_kv(&format!("notify/answer/{ticket_id}"))
            .ok()
            .flatten();
        if prev.as_ref().is_some_and(|p| p.answer == reply.as_str()) {
            return Ok(t);
        }
        let wanted = match reply {
            Reply::Confirm => Some(Status::Scheduled),
            Reply::Acknowledge | Reply::Reschedule | Reply::NotNow => Some(Status::Acknowledged),
            Reply::Unknown => None,
        };
        let to = wanted.filter(|s| t.status.can_become(*s));
        let short: String = text.chars().take(200).collect();
        let note = match (reply, short.is_empty()) {
            (Reply::Unknown, _) => format!("customer wrote by {channel}: {short}"),
            (_, true) => format!("{} by {channel}", reply.as_str()),
            (_, false) => format!("{} by {channel}: {short}", reply.as_str()),
        };
        let actor = format!("customer:{channel}");
        let t = desk
            .customer_reply(ticket_id, to, &actor, &note)
            .map_err(|e| ReplyError::Rejected(e.to_string()))?;
        self.metrics
            .replies
            .with_label_values(&[match channel {
                "sms" => "sms",
                "email" => "email",
                "voice" => "voice",
                _ => "link",
            }])
            .inc();
        let mut tx = store.tx();
        if reply != Reply::Unknown {
            tx.put_kv(
                &format!("notify/answer/{ticket_id}"),
                &Answer {
                    answer: reply.as_str().into(),
                    channel: channel.into(),
                    at: format_ts(now),
                },
            );
        }
        tx.push_timeline(
            &cid,
            now,
            &TimelineEntry::new(now, "reply", ticket_id, note).outcome(t.status.as_str()),
        );
        store
            .commit(tx)
            .map_err(|e| ReplyError::Rejected(e.to_string()))?;
        tracing::info!(ticket = %ticket_id, channel, answer = reply.as_str(), "customer replied");
        Ok(t)
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
        let delivered = matches!(status, "delivered" | "completed" | "read");
        let failed = matches!(
            status,
            "undelivered" | "failed" | "busy" | "no-answer" | "canceled"
        );
        if !delivered && !failed {
            return true; // queued, sent, ringing…: wait for the final one
        }
        rec.settled = true;
        let mut tx = store.tx();
        tx.put_kv(&key, &rec);
        let row = &rec.row;
        self.metrics
            .messages
            .with_label_values(&[
                ch,
                if delivered {
                    "delivered"
                } else {
                    "undelivered"
                },
            ])
            .inc();
        tx.push_timeline(
            &row.customer_id,
            now,
            &TimelineEntry::new(now, "delivery", &row.ticket_id, format!("{ch} {status}"))
                .channel(rec.channel)
                .outcome(if delivered {
                    "delivered"
                } else {
                    "undelivered"
                }),
        );
        if failed {
            let pos = row.plan.iter().position(|c| *c == rec.channel);
            if let Some(next) = pos.map(|p| p + 1).filter(|p| *p < row.plan.len()) {
                self.metrics.fallbacks.with_label_values(&[ch]).inc();
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
        if let Err(e) = store.commit(tx) {
            tracing::error!(error = %e, "status callback not recorded");
            return false;
        }
        true
    }
}

/// Applies a reply off the async workers: it goes through the daemon's single writer and flushes.
async fn reply_blocking(
    s: &AppState,
    ticket: &str,
    channel: &'static str,
    reply: Reply,
    text: &str,
) -> Result<Ticket, ReplyError> {
    let (s, ticket, text) = (s.clone(), ticket.to_string(), text.to_string());
    tokio::task::spawn_blocking(move || {
        s.n.apply_reply(&s.store, s.desk.as_ref(), &ticket, channel, reply, &text)
    })
    .await
    .unwrap_or_else(|e| Err(ReplyError::Rejected(format!("reply task failed: {e}"))))
}

async fn sms_reply(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    if s.n.cfg.sms.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "SMS is not configured",
        );
    }
    if !twilio_verified(&s.n, &headers, "/notify/v1/twilio/sms", &params) {
        return error(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "X-Twilio-Signature does not match",
        );
    }
    let from = param(&params, "From").unwrap_or("");
    let body = param(&params, "Body").unwrap_or("");
    let customer: Option<String> = s
        .store
        .get_kv(&contact_key(Channel::Sms, from))
        .ok()
        .flatten();
    let Some(customer) = customer else {
        tracing::info!("SMS reply from an unknown number ignored");
        return twiml_ok();
    };
    let ticket = ticket_ref(body).or_else(|| {
        s.store
            .get_kv::<String>(&format!("notify/last/{customer}"))
            .ok()
            .flatten()
    });
    let Some(ticket) = ticket else {
        return twiml_ok();
    };
    if s.desk
        .ticket(&ticket)
        .is_none_or(|t| t.customer_id.as_deref() != Some(customer.as_str()))
    {
        return twiml_ok();
    }
    let reply = Reply::parse(body);
    // Twilio only needs to know the webhook worked; an answer that cannot apply (ticket
    // closed meanwhile) is logged, not bounced back to the provider.
    if let Err(ReplyError::Rejected(m)) = reply_blocking(&s, &ticket, "sms", reply, body).await {
        tracing::info!(ticket = %ticket, reason = %m, "SMS reply not applied");
    }
    twiml_ok()
}

fn twiml_ok() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/xml")],
        "<Response></Response>",
    )
        .into_response()
}

/// A ticket id (`T-` and 16 hex digits) anywhere in the text.
pub fn ticket_ref(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(17)).find_map(|i| {
        let cand = &text.get(i..i + 18)?;
        let (p, h) = cand.split_at(2);
        (p.eq_ignore_ascii_case("t-") && h.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| format!("T-{}", h.to_lowercase()))
    })
}

async fn status_callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    if !twilio_verified(&s.n, &headers, "/notify/v1/twilio/status", &params) {
        return error(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "X-Twilio-Signature does not match",
        );
    }
    let sid = param(&params, "MessageSid").or_else(|| param(&params, "CallSid"));
    let status = param(&params, "MessageStatus").or_else(|| param(&params, "CallStatus"));
    match (sid, status) {
        (Some(sid), Some(st)) => {
            let (s, sid, st) = (s.clone(), sid.to_string(), st.to_string());
            let _ =
                tokio::task::spawn_blocking(move || s.n.apply_status(&s.store, &sid, &st)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_callback",
            "MessageSid/CallSid and MessageStatus/CallStatus are required",
        ),
    }
}

async fn email_reply(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    let Some(want) = &s.n.cfg.inbound_email_key else {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "notify.inbound_email_key is not set",
        );
    };
    let given = q.get("key").map(String::as_str).unwrap_or("");
    if given.len() != want.len()
        || given
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            != 0
    {
        return error(
            StatusCode::FORBIDDEN,
            "bad_key",
            "inbound key does not match",
        );
    }
    let from = param(&params, "sender")
        .or_else(|| param(&params, "from"))
        .unwrap_or("");
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from,
    };
    let subject = param(&params, "subject").unwrap_or("");
    let text = param(&params, "stripped-text")
        .or_else(|| param(&params, "body-plain"))
        .or_else(|| param(&params, "text"))
        .unwrap_or("");
    let Some(ticket_id) = ticket_ref(subject).or_else(|| ticket_ref(text)) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_ticket",
            "no ticket reference in the subject or text",
        );
    };
    let sender: Option<String> = s
        .store
        .get_kv(&contact_key(Channel::Email, addr))
        .ok()
        .flatten();
    let Some(t) = s.desk.ticket(&ticket_id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such ticket");
    };
    if sender.is_none() || sender != t.customer_id {
        return error(
            StatusCode::FORBIDDEN,
            "unknown_sender",
            "the sender is not the ticket's customer",
        );
    }
    let first_line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let reply = match Reply::parse(first_line) {
        // Any written answer means they have seen it.
        Reply::Unknown => Reply::Acknowledge,
        r => r,
    };
    match reply_blocking(&s, &ticket_id, "email", reply, first_line).await {
        Ok(t) => Json(serde_json::json!({"ticket_id": t.id, "status": t.status})).into_response(),
        Err(ReplyError::NotFound) => error(StatusCode::NOT_FOUND, "not_found", "no such ticket"),
        Err(ReplyError::Rejected(m)) => error(StatusCode::CONFLICT, "rejected", &m),
    }
}

fn page_html(title: &str, body: &str) -> Html<String> {
    page_html_in("en", false, title, body)
}

fn page_html_in(lang: &str, rtl: bool, title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html lang=\"{lang}\" dir=\"{dir}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>body{{font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em}}\
         button{{display:block;width:100%;margin:.5em 0;padding:.8em;font-size:1em}}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        lang = super::templates::html_escape(lang),
        dir = if rtl { "rtl" } else { "ltr" },
        t = super::templates::html_escape(title)
    ))
}

/// The page's words in the ticket's customer's language.
fn page_text(s: &AppState, t: &Ticket) -> super::templates::PageText {
    let now = s.n.clock.now_ms();
    let customer = t.customer_id.as_deref().and_then(|c| s.desk.customer(c));
    match customer {
        Some(c) => {
            let facts = s.n.facts(t, &c, s.desk.as_ref(), now);
            s.n.templates.page(&c.locale, &facts)
        }
        None => {
            let mut facts = std::collections::BTreeMap::new();
            facts.insert("device", t.device_id.clone());
            facts.insert("failure_mode", t.failure_mode.replace(['_', '-'], " "));
            facts.insert("probability", format!("{:.0}", t.probability * 100.0));
            s.n.templates.page("", &facts)
        }
    }
}

fn claims(s: &AppState, token: &str) -> Result<(link::LinkClaims, Ticket), Box<Response>> {
    let c = link::verify(&s.n.link_key, token, s.n.clock.now_ms()).map_err(|e| {
        let code = match e {
            LinkError::Expired => StatusCode::GONE,
            LinkError::Invalid => StatusCode::NOT_FOUND,
        };
        Box::new((code, page_html("forewarn", &format!("<p>{e}.</p>"))).into_response())
    })?;
    let t = s
        .desk
        .ticket(&c.ticket_id)
        .filter(|t| t.customer_id.as_deref() == Some(c.customer_id.as_str()))
        .ok_or_else(|| {
            Box::new(
                (
                    StatusCode::NOT_FOUND,
                    page_html("forewarn", "<p>This ticket no longer exists.</p>"),
                )
                    .into_response(),
            )
        })?;
    Ok((c, t))
}

async fn page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let (_, t) = match claims(&s, &token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let e = super::templates::html_escape;
    let p = page_text(&s, &t);
    let answered: Option<Answer> = s
        .store
        .get_kv(&format!("notify/answer/{}", t.id))
        .ok()
        .flatten();
    let already = answered
        .map(|a| format!("<p><em>✓ {} ({})</em></p>", e(&a.answer), e(&a.at)))
        .unwrap_or_default();
    let body = format!(
        "<p><strong>{summary}</strong></p><p>{id} · {st}</p>{already}\
         <form method=\"post\"><label>{when} <input name=\"when\"></label>\
         <button name=\"action\" value=\"confirm\">{confirm}</button>\
         <button name=\"action\" value=\"reschedule\">{reschedule}</button>\
         <button name=\"action\" value=\"not_now\">{not_now}</button></form>",
        summary = e(&p.summary),
        id = e(&t.id),
        st = t.status.as_str(),
        when = e(&p.when),
        confirm = e(&p.confirm),
        reschedule = e(&p.reschedule),
        not_now = e(&p.not_now),
    );
    page_html_in(&p.lang, p.rtl, &p.title, &body).into_response()
}

async fn page_answer(
    State(s): State<AppState>,
    Path(token): Path<String>,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    let (_, t) = match claims(&s, &token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let reply = match param(&params, "action") {
        Some("confirm") => Reply::Confirm,
        Some("reschedule") => Reply::Reschedule,
        Some("not_now") => Reply::NotNow,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                page_html("forewarn", "<p>Please choose one of the buttons.</p>"),
            )
                .into_response()
        }
    };
    let when = param(&params, "when").unwrap_or("").trim();
    match reply_blocking(&s, &t.id, "link", reply, when).await {
        Ok(t) => {
            let p = page_text(&s, &t);
            page_html_in(
                &p.lang,
                p.rtl,
                &p.title,
                &format!(
                    "<p>{}</p><p>{} · {} · {}</p>",
                    super::templates::html_escape(&p.thanks),
                    super::templates::html_escape(&t.id),
                    reply.as_str(),
                    t.status.as_str()
                ),
            )
            .into_response()
        }
        Err(ReplyError::NotFound) => (
            StatusCode::NOT_FOUND,
            page_html("forewarn", "<p>No such ticket.</p>"),
        )
            .into_response(),
        Err(ReplyError::Rejected(m)) => (
            StatusCode::CONFLICT,
            page_html(
                "forewarn",
                &format!("<p>{}</p>", super::templates::html_escape(&m)),
            ),
        )
            .into_response(),
    }
}

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
            Json(serde_json::json!({"customer_id": id, "entries": entries})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
    }
}
