//! The board's pages: askama templates (compiled into the binary from `templates/board/`),
//! plain HTML forms that post and redirect, a session cookie, and a CSRF token on every form.

use super::queue::{self, Filter, StatusFilter};
use super::session::{self, Role, Session};
use super::{Action, Board, BoardError, QueueError, Resolution};
use crate::domain::{DeviceId, Slot, Status, Ticket, Timestamp};
use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::TimeZone;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub fn routes(b: Arc<Board>) -> Router {
    Router::new()
        .route("/board", get(queue_page))
        .route("/board/", get(|| async { Redirect::to("/board") }))
        .route("/board/login", get(login_page).post(login))
        .route("/board/logout", post(logout))
        .route("/board/events", get(events))
        .route("/board/day", get(day_page))
        .route("/board/tickets/{id}", get(ticket_page))
        .route("/board/tickets/{id}/{action}", post(ticket_action))
        .route("/board/devices/{id}", get(device_page))
        .route("/board/customers/{id}", get(customer_page))
        .route("/board/assets/board.css", get(css))
        .route("/board/assets/board.js", get(js))
        .with_state(b)
}

/// The board's own script, style and event stream, nothing from elsewhere; inline script and
/// style stay forbidden (the charts' SVG is markup, not style).
const BOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                         connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                         frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../templates/board/board.css");
const JS: &str = include_str!("../../templates/board/board.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

/// What every page's frame shows.
struct Chrome {
    signed_in: bool,
    user: String,
    role: &'static str,
    csrf: String,
    /// The event stream the page's script listens to (empty: none).
    live: String,
    notice: String,
    error: String,
}

impl Chrome {
    /// The frame of a page nobody is signed in to (sign-in, an error before sign-in).
    fn signed_out(error: &str) -> Chrome {
        Chrome {
            signed_in: false,
            user: String::new(),
            role: "",
            csrf: String::new(),
            live: String::new(),
            notice: String::new(),
            error: error.into(),
        }
    }

    fn of(s: &Session, q: &Flash) -> Chrome {
        Chrome {
            signed_in: true,
            user: s.name.clone(),
            role: s.role.as_str(),
            csrf: s.csrf.clone(),
            live: String::new(),
            notice: q.done.clone().unwrap_or_default(),
            error: q.error.clone().unwrap_or_default(),
        }
    }
    fn live(mut self) -> Chrome {
        self.live = "/board/events".into();
        self
    }
}

/// A message carried over a redirect.
#[derive(Debug, Default, serde::Deserialize)]
struct Flash {
    done: Option<String>,
    error: Option<String>,
}

fn page<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CONTENT_SECURITY_POLICY, BOARD_CSP),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "board page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "board/error.html")]
struct ErrorPage {
    c: Chrome,
    title: String,
    message: String,
}

fn error_page(s: Option<&Session>, status: StatusCode, title: &str, message: &str) -> Response {
    let c = match s {
        Some(s) => Chrome::of(s, &Flash::default()),
        None => Chrome::signed_out(""),
    };
    let mut r = page(&ErrorPage {
        c,
        title: title.into(),
        message: message.into(),
    });
    *r.status_mut() = status;
    r
}

/// The signed-in session, if any.
fn signed(b: &Board, headers: &HeaderMap) -> Option<Session> {
    session::cookie(headers, session::COOKIE).and_then(|id| b.sessions.get(id))
}

/// How a person or a customer is shown: their name, or their id when they have none.
fn shown_name(name: &str, id: &str) -> String {
    if name.is_empty() { id } else { name }.to_string()
}

fn to_login() -> Response {
    Redirect::to("/board/login").into_response()
}

/// The person signed in to a board page; a request without a session is sent to sign in.
struct SignedIn(Session);

impl axum::extract::FromRequestParts<Arc<Board>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        b: &Arc<Board>,
    ) -> Result<SignedIn, Response> {
        signed(b, &parts.headers).map(SignedIn).ok_or_else(to_login)
    }
}

fn param<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

// ------------------------------------------------------------------ formatting

impl Board {
    fn local(&self, ms: Timestamp) -> String {
        self.cal
            .tz
            .timestamp_millis_opt(ms.as_millis())
            .single()
            .map(|t| t.format("%a %d %b %Y %H:%M").to_string())
            .unwrap_or_else(|| ms.format())
    }
    fn local_ts(&self, rfc: &str) -> String {
        Timestamp::parse(rfc)
            .map(|ms| self.local(ms))
            .unwrap_or_else(|| rfc.to_string())
    }
    /// "14:00" in the board's time zone.
    fn hm(&self, ms: Timestamp) -> String {
        self.cal
            .tz
            .timestamp_millis_opt(ms.as_millis())
            .single()
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default()
    }
    fn slot_words(&self, s: &Slot) -> String {
        format!("{}\u{2013}{}", self.local(s.start_ms), self.hm(s.end_ms))
    }
}

fn pct(p: f64) -> String {
    format!("{:.0} %", p * 100.0)
}

fn outcome_words(t: &Ticket) -> String {
    use crate::domain::Outcome;
    match t.outcome {
        Some(Outcome::ConfirmedFault) => "fault confirmed".into(),
        Some(Outcome::FalseAlarm) => "false alarm".into(),
        Some(Outcome::FailedBeforeService) => "failed before service".into(),
        None => String::new(),
    }
}

/// A feature's name in words: `temp.slope30` → "temp: trend over the window".
fn feature_words(name: &str) -> String {
    let (metric, stat) = name.split_once('.').unwrap_or((name, ""));
    let stat_l = stat.to_ascii_lowercase();
    let what = match () {
        _ if stat.is_empty() => return metric.replace('_', " "),
        _ if stat_l == "last" => "latest value".to_string(),
        _ if stat_l.starts_with("mean") => "average over the window".into(),
        _ if stat_l.starts_with("slope") => "trend over the window (per hour)".into(),
        _ if stat_l.starts_with("min") => "lowest in the window".into(),
        _ if stat_l.starts_with("max") => "highest in the window".into(),
        _ if stat_l.starts_with("std") => "spread in the window".into(),
        _ if stat_l.starts_with("ewm") || stat_l.starts_with("ew") => {
            "recent weighted average".into()
        }
        _ => stat.replace('_', " "),
    };
    format!("{metric}: {what}")
}

// ------------------------------------------------------------------ sign-in

#[derive(Template)]
#[template(path = "board/login.html")]
struct LoginPage {
    c: Chrome,
    login_csrf: String,
}

async fn login_page(State(b): State<Arc<Board>>, headers: HeaderMap) -> Response {
    if signed(&b, &headers).is_some() {
        return Redirect::to("/board").into_response();
    }
    login_form(&b, &headers, "")
}

fn login_form(b: &Board, headers: &HeaderMap, error: &str) -> Response {
    let token = session::random_token();
    let secure = b.cfg.secure_cookies || session::over_tls(headers, &b.public_url);
    let mut r = page(&LoginPage {
        c: Chrome::signed_out(error),
        login_csrf: token.clone(),
    });
    if let Ok(v) = session::set_cookie(
        session::LOGIN_COOKIE,
        &token,
        Duration::from_secs(3600),
        secure,
    )
    .parse()
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    if !error.is_empty() {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
    }
    r
}

async fn login(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let presented = param(&f, "csrf").unwrap_or("");
    if expected.is_empty() || !session::same(expected, presented) {
        return login_form(
            &b,
            &headers,
            "The sign-in form expired or came from elsewhere: please sign in again.",
        );
    }
    let token = param(&f, "token").unwrap_or("").trim();
    let mut h = HeaderMap::new();
    let scope = format!("Bearer {token}").parse().ok().and_then(|v| {
        h.insert(header::AUTHORIZATION, v);
        [
            crate::api::Scope::Admin,
            crate::api::Scope::Write,
            crate::api::Scope::Read,
        ]
        .into_iter()
        .find(|s| {
            b.auth
                .check(&h, *s)
                .is_ok_and(|c| c.scope.is_some_and(|got| got >= *s))
        })
    });
    let Some(scope) = scope.filter(|_| !token.is_empty()) else {
        tracing::info!("board sign-in refused: unknown token");
        return login_form(&b, &headers, "That token is not valid.");
    };
    let role = Role::from_scope(scope);
    let name = param(&f, "name").unwrap_or("").trim();
    let name = if name.is_empty() { role.as_str() } else { name };
    let (id, _) =
        b.sessions
            .create_with_bearer(role, name, crate::secret::Secret(token.to_string()));
    let secure = b.cfg.secure_cookies || session::over_tls(&headers, &b.public_url);
    let mut r = Redirect::to("/board").into_response();
    let h = r.headers_mut();
    for c in [
        session::set_cookie(session::COOKIE, &id, b.sessions.ttl(), secure),
        session::set_cookie(session::LOGIN_COOKIE, "", Duration::ZERO, secure),
    ] {
        if let Ok(v) = c.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    tracing::info!(role = role.as_str(), "board sign-in");
    r
}

async fn logout(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let Some(id) = session::cookie(&headers, session::COOKIE) else {
        return Redirect::to("/board/login").into_response();
    };
    if let Some(s) = b.sessions.get(id) {
        if !s.csrf_ok(param(&f, "csrf").unwrap_or("")) {
            return error_page(
                Some(&s),
                StatusCode::FORBIDDEN,
                "Not signed out",
                "The form did not carry this session's token.",
            );
        }
        b.sessions.end(id);
    }
    let secure = b.cfg.secure_cookies || session::over_tls(&headers, &b.public_url);
    let mut r = Redirect::to("/board/login").into_response();
    if let Ok(v) = session::set_cookie(session::COOKIE, "", Duration::ZERO, secure).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ------------------------------------------------------------------ live updates

async fn events(State(b): State<Arc<Board>>, headers: HeaderMap) -> Response {
    if signed(&b, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let first = b.version();
    let stream = futures_util::stream::unfold((b, first), |(b, last)| async move {
        loop {
            tokio::select! {
                _ = b.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(400)) => {}
            }
            let v = b.version();
            if v != last {
                let ev = Event::default().event("change").data(v.to_string());
                return Some((Ok::<_, std::convert::Infallible>(ev), (b, v)));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ------------------------------------------------------------------ the queue

struct Opt {
    value: String,
    label: String,
    selected: bool,
}

fn opts(all: &str, items: impl IntoIterator<Item = (String, String)>, chosen: &str) -> Vec<Opt> {
    let mut v = vec![Opt {
        value: String::new(),
        label: all.into(),
        selected: chosen.is_empty(),
    }];
    v.extend(items.into_iter().map(|(value, label)| Opt {
        selected: value == chosen,
        value,
        label,
    }));
    v
}

struct RowView {
    id: String,
    priority: &'static str,
    device_id: DeviceId,
    customer_id: String,
    customer_name: String,
    region: String,
    mode_words: String,
    probability: String,
    predicted: String,
    left: String,
    lead: String,
    deadline: String,
    breached: bool,
    reached: String,
    answered: String,
    status: &'static str,
    technician: String,
    visit: String,
}

#[derive(Template)]
#[template(path = "board/queue_rows.html")]
struct QueueRows {
    rows: Vec<RowView>,
    breached: usize,
    updated: String,
}

#[derive(Template)]
#[template(path = "board/queue.html")]
struct QueuePage {
    c: Chrome,
    statuses: Vec<Opt>,
    customers: Vec<Opt>,
    modes: Vec<Opt>,
    regions: Vec<Opt>,
    breached_only: bool,
    fragment_url: String,
    rows_html: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct QueueQuery {
    status: Option<String>,
    customer: Option<String>,
    mode: Option<String>,
    region: Option<String>,
    breached: Option<String>,
    done: Option<String>,
    error: Option<String>,
}

fn row_view(b: &Board, r: &queue::Row, now: Timestamp) -> RowView {
    RowView {
        id: r.id.clone(),
        priority: r.priority.as_str(),
        device_id: r.device_id.clone(),
        customer_id: r.customer_id.clone(),
        customer_name: shown_name(&r.customer_name, &r.customer_id),
        region: r.region.clone(),
        mode_words: r.mode_words.clone(),
        probability: pct(r.probability),
        predicted: r
            .predicted_ms
            .map(|p| b.local(p))
            .unwrap_or_else(|| "no time predicted".into()),
        left: r
            .left_ms(now)
            .map(|l| {
                if l >= 0 {
                    format!("in {}", queue::span(l))
                } else {
                    format!("{} ago", queue::span(l))
                }
            })
            .unwrap_or_default(),
        lead: r.lead_ms().map(queue::span).unwrap_or_default(),
        deadline: b.local(r.deadline_ms),
        breached: r.breached(now),
        reached: r.reached.clone(),
        answered: r.answered.clone(),
        status: r.status.as_str(),
        technician: r.technician.clone(),
        visit: r.visit.map(|s| b.slot_words(&s)).unwrap_or_default(),
    }
}

async fn queue_page(
    State(b): State<Arc<Board>>,
    q: Result<Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
    SignedIn(s): SignedIn,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let Some(status) = StatusFilter::parse(q.status.as_deref().unwrap_or("")) else {
        return error_page(
            Some(&s),
            StatusCode::BAD_REQUEST,
            "Unknown status",
            "Choose a status from the list.",
        );
    };
    let filter = Filter {
        status,
        customer: q.customer.clone().unwrap_or_default(),
        mode: q.mode.clone().unwrap_or_default(),
        region: q.region.clone().unwrap_or_default(),
        breached_only: q.breached.as_deref() == Some("1"),
    };
    let tickets = match b.queue_tickets(status, &s.bearer).await {
        Ok(t) => t,
        Err(e @ (QueueError::Store(_) | QueueError::Cancelled)) => {
            tracing::warn!("board queue: {e}");
            return error_page(
                Some(&s),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store could not be read",
                "Try again in a moment.",
            );
        }
        Err(QueueError::Fleet(e)) => {
            return error_page(
                Some(&s),
                e.status,
                "An instance of the cluster did not answer",
                &e.message,
            )
        }
    };
    let records = match b.records(&tickets, &s.bearer).await {
        Ok(r) => r,
        Err(e) => return fleet_error(&s, e),
    };
    let b2 = b.clone();
    let all = blocking(move || b2.rows(&tickets, &records))
        .await
        .unwrap_or_default();
    let now = b.now();
    // The choices come from every row, so a filter never hides its own options.
    let mut customers = BTreeMap::new();
    let mut modes = BTreeMap::new();
    let mut regions = BTreeSet::new();
    for r in all.iter().filter(|r| status.admits(r.status)) {
        if !r.customer_id.is_empty() {
            let name = shown_name(&r.customer_name, &r.customer_id);
            customers.insert(r.customer_id.clone(), name);
        }
        modes.insert(r.mode.clone(), r.mode_words.clone());
        if !r.region.is_empty() {
            regions.insert(r.region.clone());
        }
    }
    let shown: Vec<&queue::Row> = all.iter().filter(|r| filter.matches(r, now)).collect();
    let breached = all
        .iter()
        .filter(|r| status.admits(r.status) && r.breached(now))
        .count();
    let rows_html = QueueRows {
        rows: shown.iter().map(|r| row_view(&b, r, now)).collect(),
        breached,
        updated: b.local(now),
    }
    .render()
    .unwrap_or_default();
    let statuses = [
        ("live", "Open, acknowledged or scheduled"),
        ("open", "Open"),
        ("acknowledged", "Acknowledged"),
        ("scheduled", "Scheduled"),
        ("resolved", "Resolved"),
        ("dismissed", "Dismissed"),
        ("all", "All"),
    ]
    .into_iter()
    .map(|(v, l)| Opt {
        value: v.into(),
        label: l.into(),
        selected: status.as_str() == v,
    })
    .collect();
    let flash = Flash {
        done: q.done.clone(),
        error: q.error.clone(),
    };
    page(&QueuePage {
        c: Chrome::of(&s, &flash).live(),
        statuses,
        customers: opts("All customers", customers, &filter.customer),
        modes: opts("All failure modes", modes, &filter.mode),
        regions: opts(
            "All regions",
            regions.into_iter().map(|r| (r.clone(), r)),
            &filter.region,
        ),
        breached_only: filter.breached_only,
        fragment_url: String::new(),
        rows_html,
    })
}

// ------------------------------------------------------------------ a ticket

struct TicketView {
    id: String,
    status: &'static str,
    outcome: String,
    priority: &'static str,
    device_id: DeviceId,
    region: String,
    customer_id: String,
    customer_name: String,
    mode_words: String,
    probability: String,
    predicted: String,
    left: String,
    lead: String,
    opened: String,
    model: String,
    deadline: String,
    breached: bool,
    reached: String,
    answered: String,
    technician: String,
    visit: String,
    live: bool,
    open: bool,
}

struct HistoryLine {
    at: String,
    side: &'static str,
    actor: String,
    what: String,
}

struct SlotOpt {
    value: String,
    label: String,
}

#[derive(Template)]
#[template(path = "board/ticket.html")]
struct TicketPage {
    c: Chrome,
    t: TicketView,
    evidence: Vec<String>,
    chart_html: String,
    history: Vec<HistoryLine>,
    can_act: bool,
    techs: Vec<Opt>,
    free_slots: Vec<SlotOpt>,
    slot_tech: String,
    slot_tech_id: String,
    proposal: Vec<String>,
    resolutions: Vec<Opt>,
    customer_link: String,
}

/// The device's window of each metric the evidence names.
fn driving_series(b: &Board, t: &Ticket) -> Vec<super::svg::Series> {
    let index = crate::app::load_metric_index(b.tickets.store());
    // From the app, not the store: the stored state is a checkpoint that lags what was applied.
    let state = b.tickets.device_state(&t.device_id).ok().flatten();
    let Some(state) = state else {
        return Vec::new();
    };
    let mut metrics: Vec<&str> = Vec::new();
    for e in &t.evidence {
        let m = e.feature.split('.').next().unwrap_or("");
        if index.get(m).is_some() && !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    metrics
        .into_iter()
        .take(4)
        .filter_map(|m| {
            Some(super::svg::Series {
                name: m.to_string(),
                points: state.series(index.get(m)?),
            })
        })
        .collect()
}

fn ticket_view(b: &Board, t: &Ticket, records: &super::TicketRecords) -> TicketView {
    let now = b.now();
    let one = HashMap::from([(t.id.clone(), records.clone())]);
    let row = b.rows(std::slice::from_ref(t), &one).into_iter().next();
    let rv = row.as_ref().map(|r| row_view(b, r, now));
    let rv = rv.as_ref();
    let get = |f: fn(&RowView) -> String| rv.map(f).unwrap_or_default();
    TicketView {
        id: t.id.clone(),
        status: t.status.as_str(),
        outcome: outcome_words(t),
        priority: t.priority.as_str(),
        device_id: t.device_id.clone(),
        region: get(|r| r.region.clone()),
        customer_id: get(|r| r.customer_id.clone()),
        customer_name: get(|r| r.customer_name.clone()),
        mode_words: b.mode_words(&t.failure_mode),
        probability: pct(t.probability),
        predicted: get(|r| r.predicted.clone()),
        left: get(|r| r.left.clone()),
        lead: get(|r| r.lead.clone()),
        opened: b.local(t.opened_ms),
        model: format!("model {} {}", t.model.name, t.model.version),
        deadline: get(|r| r.deadline.clone()),
        breached: rv.is_some_and(|r| r.breached),
        reached: get(|r| r.reached.clone()),
        answered: get(|r| r.answered.clone()),
        technician: get(|r| r.technician.clone()),
        visit: get(|r| r.visit.clone()),
        live: t.is_live(),
        open: t.status == Status::Open,
    }
}

/// The ticket's history (dispatch side) and the customer's timeline for it, in time order.
fn history(b: &Board, t: &Ticket, customer_id: &str) -> Vec<HistoryLine> {
    let mut lines: Vec<(Timestamp, HistoryLine)> = t
        .history
        .iter()
        .map(|h| {
            let what = match (&h.to, h.note.is_empty()) {
                (Some(to), true) => to.as_str().to_string(),
                (Some(to), false) => format!("{} \u{2014} {}", to.as_str(), h.note),
                (None, false) if h.action == "note" => h.note.clone(),
                (None, false) => format!("{} \u{2014} {}", h.action, h.note),
                (None, true) => h.action.clone(),
            };
            (
                Timestamp::parse(&h.at).unwrap_or(Timestamp::EPOCH),
                HistoryLine {
                    at: b.local_ts(&h.at),
                    side: if h.actor.starts_with("customer:") {
                        "customer"
                    } else {
                        "dispatch"
                    },
                    actor: h.actor.clone(),
                    what,
                },
            )
        })
        .collect();
    if !customer_id.is_empty() {
        let entries = b
            .tickets
            .store()
            .timeline::<crate::notify::TimelineEntry>(customer_id)
            .unwrap_or_default();
        for e in entries.iter().filter(|e| {
            e.ticket_id == t.id && ["message", "delivery", "fallback"].contains(&e.kind.as_str())
        }) {
            let channel = e.channel.map(|c| c.as_str()).unwrap_or("page");
            let what = match e.kind.as_str() {
                "message" => format!(
                    "message by {channel}: {}",
                    e.outcome.clone().unwrap_or_default()
                ),
                "delivery" => format!(
                    "{channel}: {}",
                    e.outcome.clone().unwrap_or_else(|| e.detail.clone())
                ),
                _ => format!("{channel}: {}", e.detail),
            };
            lines.push((
                Timestamp::parse(&e.at).unwrap_or(Timestamp::EPOCH),
                HistoryLine {
                    at: b.local_ts(&e.at),
                    side: "customer",
                    actor: format!("notify:{channel}"),
                    what,
                },
            ));
        }
    }
    lines.sort_by_key(|(ms, _)| *ms);
    lines.into_iter().map(|(_, l)| l).collect()
}

async fn ticket_page(
    State(b): State<Arc<Board>>,
    Path(id): Path<String>,
    q: Result<Query<Flash>, axum::extract::rejection::QueryRejection>,
    SignedIn(s): SignedIn,
) -> Response {
    let flash = q.map(|Query(q)| q).unwrap_or_default();
    if crate::api::check_id("ticket", &id).is_err() {
        return error_page(
            Some(&s),
            StatusCode::NOT_FOUND,
            "No such ticket",
            &format!("There is no ticket {id}."),
        );
    }
    let t = match fleet_ticket(&b, &s, &id).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    // The board's records beside it: the owner's, in cluster mode.
    let records = match b.records(std::slice::from_ref(&t), &s.bearer).await {
        Ok(mut r) => r.remove(&t.id).unwrap_or_default(),
        Err(e) => return fleet_error(&s, e),
    };
    let b2 = b.clone();
    let s2 = s.clone();
    blocking(move || render_ticket(&b2, &s2, &t, &flash, &records))
        .await
        .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The page for a ticket (or a device's tickets) that could not be read.
/// Ticket `id` as the queue lists it (in cluster mode the fleet's copy, wherever it is owned),
/// or the page saying there is none or that the fleet did not answer.
async fn fleet_ticket(b: &Arc<Board>, s: &Session, id: &str) -> Result<Ticket, Response> {
    match b.ticket(id, &s.bearer).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(error_page(
            Some(s),
            StatusCode::NOT_FOUND,
            "No such ticket",
            &format!("There is no ticket {id}."),
        )),
        Err(e) => Err(fleet_error(s, e)),
    }
}

fn fleet_error(s: &Session, e: QueueError) -> Response {
    match e {
        QueueError::Fleet(e) => error_page(
            Some(s),
            e.status,
            "An instance of the cluster did not answer",
            &e.message,
        ),
        e => {
            tracing::warn!("board: {e}");
            error_page(
                Some(s),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store could not be read",
                "Try again in a moment.",
            )
        }
    }
}

fn render_ticket(
    b: &Board,
    s: &Session,
    t: &Ticket,
    flash: &Flash,
    records: &super::TicketRecords,
) -> Response {
    let t = t.clone();
    let view = ticket_view(b, &t, records);
    let region = view.region.clone();
    let assigned = records.assignment.as_ref().map(|a| a.technician_id.clone());
    let mut techs: Vec<super::Technician> = b.technicians();
    // Those who fit (skill and region) first.
    techs.sort_by_key(|x| !x.fits(&t.failure_mode, &region));
    let tech_opts = techs
        .iter()
        .map(|x| Opt {
            value: x.id.clone(),
            label: format!(
                "{}{}{}",
                shown_name(&x.name, &x.id),
                if x.region.is_empty() {
                    String::new()
                } else {
                    format!(", {}", x.region)
                },
                if x.fits(&t.failure_mode, &region) {
                    ""
                } else {
                    " (other skills or region)"
                }
            ),
            selected: assigned.as_deref() == Some(x.id.as_str()),
        })
        .collect();
    let slot_tech = assigned.as_deref().and_then(|a| b.technician(a));
    let free = slot_tech
        .as_ref()
        .map(|x| b.free_slots(x, &t.id))
        .unwrap_or_default();
    let proposal = records
        .proposal
        .as_ref()
        .map(|p| p.slots.iter().map(|s| b.slot_words(s)).collect())
        .unwrap_or_default();
    let customer_link = if t.is_live() && !view.customer_id.is_empty() && s.role.can_act() {
        b.tickets
            .notifier()
            .link_for(&t, &view.customer_id, b.now().as_millis())
    } else {
        String::new()
    };
    let evidence = t
        .evidence
        .iter()
        .map(|e| {
            let v = e
                .value
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "no value".into());
            let dir = if e.weight >= 0.0 {
                "pushes toward failure"
            } else {
                "speaks against failure"
            };
            format!(
                "{} is {v} \u{2014} {dir} ({:+.2})",
                feature_words(&e.feature),
                e.weight
            )
        })
        .collect();
    let series = driving_series(b, &t);
    let chart_html = if series.is_empty() {
        "<p>The device's window is empty (no readings kept yet).</p>".to_string()
    } else {
        super::svg::metric_panels(&series, 600)
    };
    let hist = history(b, &t, &view.customer_id);
    page(&TicketPage {
        c: Chrome::of(s, flash).live(),
        history: hist,
        evidence,
        chart_html,
        can_act: s.role.can_act(),
        techs: tech_opts,
        free_slots: free
            .iter()
            .map(|x| SlotOpt {
                value: x.start_ms.as_millis().to_string(),
                label: b.slot_words(x),
            })
            .collect(),
        slot_tech: slot_tech
            .as_ref()
            .map(|x| x.name.clone())
            .unwrap_or_default(),
        slot_tech_id: slot_tech.as_ref().map(|x| x.id.clone()).unwrap_or_default(),
        proposal,
        resolutions: Resolution::ALL
            .iter()
            .enumerate()
            .map(|(i, r)| Opt {
                value: r.as_str().into(),
                label: r.words().into(),
                selected: i == 0,
            })
            .collect(),
        customer_link,
        t: view,
    })
}

fn back(id: &str, key: &str, msg: &str) -> Response {
    let enc: String = form_urlencoded::byte_serialize(msg.as_bytes()).collect();
    Redirect::to(&format!("/board/tickets/{id}?{key}={enc}")).into_response()
}

async fn ticket_action(
    State(b): State<Arc<Board>>,
    Path((id, action)): Path<(String, String)>,
    SignedIn(s): SignedIn,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    if !s.csrf_ok(param(&f, "csrf").unwrap_or("")) {
        return error_page(
            Some(&s),
            StatusCode::FORBIDDEN,
            "Not done",
            "The form did not carry this session's token (it may be from an old page): reload and try again.",
        );
    }
    if !s.role.can_act() {
        return error_page(
            Some(&s),
            StatusCode::FORBIDDEN,
            "Not allowed",
            "A viewer cannot change tickets: sign in with a write token.",
        );
    }
    if crate::api::check_id("ticket", &id).is_err() {
        return error_page(Some(&s), StatusCode::BAD_REQUEST, "No such ticket", "");
    }
    let actor = format!("board:{}", s.name);
    let action = match parse_action(&b, &action, &f) {
        Ok(a) => a,
        Err(BoardError::NotFound(m)) => {
            return error_page(Some(&s), StatusCode::NOT_FOUND, "Not found", &m)
        }
        Err(e) => return back(&id, "error", &e.to_string()),
    };
    // Cluster mode: a ticket of a partition another instance owns is changed there, through
    // its API with the person's token, as the API's transitions are.
    if b.tickets.fleetwide().is_some() {
        let t = match fleet_ticket(&b, &s, &id).await {
            Ok(t) => t,
            Err(page) => return page,
        };
        match b.action_owner(&t) {
            Ok(None) => {}
            Ok(Some((owner, api))) => {
                return match b
                    .forward_action(&id, &action, &owner, &api, &s.bearer, &s.name)
                    .await
                {
                    Ok((status, body)) => forwarded(&s, &id, &action, &owner, status, &body),
                    Err(e) => fleet_error(&s, e),
                }
            }
            Err(e) => return fleet_error(&s, e),
        }
    }
    let b2 = b.clone();
    let id2 = id.clone();
    let action2 = action.clone();
    let result = blocking(move || b2.act(&id2, &action2, &actor)).await;
    match result {
        Some(Ok(_)) => back(&id, "done", &action.done()),
        Some(Err(BoardError::NotFound(m))) => {
            error_page(Some(&s), StatusCode::NOT_FOUND, "Not found", &m)
        }
        Some(Err(e @ BoardError::Store(_))) => {
            tracing::error!(error = %e, "board action not recorded");
            error_page(
                Some(&s),
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not recorded",
                "The store refused the change; nothing was changed. Try again.",
            )
        }
        Some(Err(e)) => back(&id, "error", &e.to_string()),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The action a ticket form asks for, checked as far as it can be without the ticket.
fn parse_action(b: &Board, action: &str, f: &[(String, String)]) -> Result<Action, BoardError> {
    let note = param(f, "note").unwrap_or("").trim().to_string();
    let technician = param(f, "technician").unwrap_or("").to_string();
    let slot_of = |v: &str| -> Option<Slot> {
        let start = Timestamp::from_millis(v.parse().ok()?);
        Some(Slot {
            start_ms: start,
            end_ms: start + b.cfg.slot_length.as_millis_i64(),
        })
    };
    let slots: Vec<Option<Slot>> = f
        .iter()
        .filter(|(k, _)| k == "slot")
        .map(|(_, v)| slot_of(v))
        .collect();
    if note.len() > 4096 {
        return Err(BoardError::Invalid("note is longer than 4096 bytes".into()));
    }
    Ok(match action {
        "acknowledge" => Action::Acknowledge { note },
        "assign" => Action::Assign { technician },
        "propose" => {
            let slots: Option<Vec<Slot>> = slots.into_iter().collect();
            let slots = slots.ok_or_else(|| BoardError::Invalid("a slot is not a time".into()))?;
            if slots.is_empty() {
                return Err(BoardError::Invalid(
                    "tick at least one slot to propose".into(),
                ));
            }
            Action::Propose { technician, slots }
        }
        "schedule" => {
            let slot = slots
                .into_iter()
                .next()
                .flatten()
                .ok_or_else(|| BoardError::Invalid("choose a slot".into()))?;
            Action::Schedule { technician, slot }
        }
        "resolve" => {
            let how = param(f, "outcome")
                .and_then(Resolution::parse)
                .ok_or_else(|| BoardError::Invalid("choose how it ended".into()))?;
            Action::Resolve { how, note }
        }
        "dismiss" => Action::Dismiss { note },
        other => return Err(BoardError::NotFound(format!("no action {other}"))),
    })
}

/// The page after an action the owner `owner` made (or refused): as if made here.
fn forwarded(
    s: &Session,
    id: &str,
    action: &Action,
    owner: &str,
    status: StatusCode,
    body: &[u8],
) -> Response {
    if status.is_success() {
        return back(id, "done", &action.done());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("cluster instance {owner} answered {status}"));
    match status {
        StatusCode::NOT_FOUND => error_page(Some(s), status, "Not found", &message),
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT => back(id, "error", &message),
        _ => error_page(
            Some(s),
            status,
            "Not recorded",
            &format!("cluster instance {owner}, which owns the ticket, did not make the change: {message}"),
        ),
    }
}

// ------------------------------------------------------------------ day view

struct Cell {
    /// Columns it spans (0: covered by the cell before).
    span: usize,
    ticket: String,
    label: String,
    off: bool,
}

struct TechRow {
    name: String,
    detail: String,
    cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "board/day.html")]
struct DayPage {
    c: Chrome,
    date: String,
    date_words: String,
    prev: String,
    next: String,
    tz: String,
    business_day: bool,
    hours: Vec<String>,
    techs: Vec<TechRow>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct DayQuery {
    date: Option<String>,
}

async fn day_page(
    State(b): State<Arc<Board>>,
    q: Result<Query<DayQuery>, axum::extract::rejection::QueryRejection>,
    SignedIn(s): SignedIn,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    // The board's clock (the daemon's), so a simulated or test clock opens its own day.
    let today = b.cal.day_of(b.now());
    let date = match q.date.as_deref().filter(|d| !d.is_empty()) {
        Some(d) => match chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(x) => x,
            Err(_) => {
                return error_page(
                    Some(&s),
                    StatusCode::BAD_REQUEST,
                    "Not a date",
                    "Write the day as 2026-11-27.",
                )
            }
        },
        None => today,
    };
    // The hours shown: the earliest start to the latest end of anyone's working day.
    let techs = b.technicians();
    let spans: Vec<(u32, u32)> = techs.iter().map(|t| b.hours_of(t)).collect();
    let first = spans.iter().map(|h| h.0).min().unwrap_or(b.cal.open) / 60;
    let last = spans
        .iter()
        .map(|h| h.1)
        .max()
        .unwrap_or(b.cal.close)
        .div_ceil(60);
    let hours: Vec<u32> = (first..last.max(first + 1)).collect();
    let visits = match b.fleet_visits_for(&s.bearer).await {
        Ok(v) => v,
        Err(e) => return fleet_error(&s, e),
    };
    let rows = techs
        .iter()
        .zip(&spans)
        .map(|(t, &(open, close))| {
            let mut cells: Vec<Cell> = Vec::new();
            let mut skip = 0usize;
            for (i, h) in hours.iter().enumerate() {
                if skip > 0 {
                    skip -= 1;
                    cells.push(Cell {
                        span: 0,
                        ticket: String::new(),
                        label: String::new(),
                        off: false,
                    });
                    continue;
                }
                let hour = b.cal.window(date, h * 60, (h + 1) * 60);
                let v = hour.and_then(|(from, to)| {
                    visits.iter().find(|v| {
                        v.technician_id == t.id
                            && v.slot.overlaps(&Slot {
                                start_ms: from,
                                end_ms: to,
                            })
                    })
                });
                match v {
                    Some(v) => {
                        let hours_long = ((v.slot.end_ms - v.slot.start_ms) as f64 / 3_600_000.0)
                            .ceil() as usize;
                        let span = hours_long.clamp(1, hours.len() - i);
                        skip = span - 1;
                        cells.push(Cell {
                            span,
                            ticket: v.ticket_id.clone(),
                            label: format!(
                                "{}\u{2013}{} {}",
                                b.hm(v.slot.start_ms),
                                b.hm(v.slot.end_ms),
                                v.ticket_id
                            ),
                            off: false,
                        });
                    }
                    None => cells.push(Cell {
                        span: 1,
                        ticket: String::new(),
                        label: String::new(),
                        off: h * 60 < open || h * 60 >= close || !b.cal.is_business_day(date),
                    }),
                }
            }
            TechRow {
                name: shown_name(&t.name, &t.id),
                detail: format!(
                    "{}{}",
                    if t.skills.is_empty() {
                        "any failure mode".to_string()
                    } else {
                        t.skills.join(", ")
                    },
                    if t.region.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", t.region)
                    }
                ),
                cells,
            }
        })
        .collect();
    let fmt = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    page(&DayPage {
        c: Chrome::of(&s, &Flash::default()).live(),
        date: fmt(date),
        date_words: date.format("%A %d %B %Y").to_string(),
        prev: date.pred_opt().map(fmt).unwrap_or_default(),
        next: date.succ_opt().map(fmt).unwrap_or_default(),
        tz: b.cfg.time_zone.clone(),
        business_day: b.cal.is_business_day(date),
        hours: hours.iter().map(|h| format!("{h:02}:00")).collect(),
        techs: rows,
    })
}

// ------------------------------------------------------------------ device and customer

struct Spark {
    name: String,
    svg: String,
    latest: String,
}

struct TicketLine {
    id: String,
    mode: String,
    opened: String,
    status: &'static str,
    outcome: String,
}

#[derive(Template)]
#[template(path = "board/device.html")]
struct DevicePage {
    c: Chrome,
    id: String,
    customer_id: String,
    customer_name: String,
    attributes: Vec<(String, String)>,
    last_reading: String,
    sparks: Vec<Spark>,
    tickets: Vec<TicketLine>,
}

fn ticket_lines(b: &Board, list: &[Ticket]) -> Vec<TicketLine> {
    list.iter()
        .map(|t| TicketLine {
            id: t.id.clone(),
            mode: b.mode_words(&t.failure_mode),
            opened: b.local(t.opened_ms),
            status: t.status.as_str(),
            outcome: outcome_words(t),
        })
        .collect()
}

/// The frame of a page about one device or customer (`what`) for the signed-in `s`: a valid id,
/// the page built by `build` on a blocking thread (it reads through the store and the writer's
/// handles).
async fn record_page(
    b: Arc<Board>,
    s: Session,
    what: &'static str,
    id: String,
    build: impl FnOnce(&Board, &Session, String) -> Response + Send + 'static,
) -> Response {
    if crate::api::check_id(what, &id).is_err() {
        let title = format!("Not a {what} id");
        return error_page(Some(&s), StatusCode::BAD_REQUEST, &title, "");
    }
    blocking(move || build(b.as_ref(), &s, id))
        .await
        .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn device_page(
    State(b): State<Arc<Board>>,
    Path(id): Path<String>,
    SignedIn(s): SignedIn,
) -> Response {
    let Ok(device_id) = DeviceId::parse(&id) else {
        return error_page(Some(&s), StatusCode::BAD_REQUEST, "Not a device id", "");
    };
    // In cluster mode the fleet's tickets of the device, wherever its partition is owned.
    let tickets = match b.device_tickets(&device_id, &s.bearer).await {
        Ok(t) => t,
        Err(e) => return fleet_error(&s, e),
    };
    blocking(move || {
        let (b, s2) = (b.as_ref(), &s);
        let device = b.fleet.device(&id);
        let state = b.tickets.device_state(&id).ok().flatten();
        if device.is_none() && state.is_none() && tickets.is_empty() {
            return error_page(
                Some(s2),
                StatusCode::NOT_FOUND,
                "No such device",
                &format!("forewarn knows nothing of device {id}."),
            );
        }
        let index = crate::app::load_metric_index(b.tickets.store());
        let sparks = state
            .as_ref()
            .map(|st| {
                index
                    .names()
                    .iter()
                    .filter_map(|name| {
                        let series = super::svg::Series {
                            name: name.clone(),
                            points: st.series(index.get(name)?),
                        };
                        let latest = series.points.last().map(|p| format!("{:.2}", p.1))?;
                        Some(Spark {
                            name: name.clone(),
                            svg: super::svg::sparkline(&series),
                            latest,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let customer_id = device
            .as_ref()
            .and_then(|d| d.customer_id.clone())
            .unwrap_or_default();
        let customer_name = b
            .fleet
            .customer(&customer_id)
            .map(|c| c.name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| customer_id.clone());
        page(&DevicePage {
            c: Chrome::of(s2, &Flash::default()),
            attributes: device
                .as_ref()
                .map(|d| {
                    d.attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            last_reading: state
                .as_ref()
                .filter(|st| st.readings > 0)
                .map(|st| b.local(st.last_ts))
                .unwrap_or_else(|| "none".into()),
            customer_id,
            customer_name,
            sparks,
            tickets: ticket_lines(b, &tickets),
            id,
        })
    })
    .await
    .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Template)]
#[template(path = "board/customer.html")]
struct CustomerPage {
    c: Chrome,
    id: String,
    name: String,
    locale: String,
    tz: String,
    channels: String,
    tickets: Vec<TicketLine>,
    timeline: Vec<HistoryLine>,
}

async fn customer_page(
    State(b): State<Arc<Board>>,
    Path(id): Path<String>,
    SignedIn(s): SignedIn,
) -> Response {
    if crate::api::check_id("customer", &id).is_err() {
        return error_page(Some(&s), StatusCode::BAD_REQUEST, "Not a customer id", "");
    }
    // In cluster mode the fleet's tickets of the customer and every instance's timeline.
    let (tickets, entries) = match b.customer_view(&id, &s.bearer).await {
        Ok(v) => v,
        Err(e) => return fleet_error(&s, e),
    };
    record_page(b, s, "customer", id, move |b, s2, id| {
        let Some(c) = b.fleet.customer(&id) else {
            return error_page(
                Some(s2),
                StatusCode::NOT_FOUND,
                "No such customer",
                &format!("There is no customer {id}."),
            );
        };
        let stories = crate::notify::story::group(&entries);
        let mut timeline: Vec<(String, HistoryLine)> = stories
            .iter()
            .flat_map(|st| st.entries.iter())
            .map(|e| {
                let channel = e.channel.map(|c| c.as_str()).unwrap_or("");
                let mut what = e.kind.replace('_', " ");
                if !channel.is_empty() {
                    what.push_str(&format!(" by {channel}"));
                }
                if let Some(o) = &e.outcome {
                    what.push_str(&format!(": {o}"));
                }
                if let Some(said) = &e.said {
                    what.push_str(&format!(" \u{2014} \u{201c}{said}\u{201d}"));
                }
                (
                    e.at.clone(),
                    HistoryLine {
                        at: b.local_ts(&e.at),
                        side: if e.kind == "reply" {
                            "customer"
                        } else {
                            "forewarn"
                        },
                        actor: e.ticket_id.clone(),
                        what,
                    },
                )
            })
            .collect();
        timeline.sort_by(|a, b| a.0.cmp(&b.0));
        page(&CustomerPage {
            c: Chrome::of(s2, &Flash::default()).live(),
            name: shown_name(&c.name, &c.id),
            locale: c.locale.clone(),
            tz: c.time_zone.clone(),
            channels: if c.preferences.is_empty() {
                c.contacts
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                c.preferences
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            tickets: ticket_lines(b, &tickets),
            timeline: timeline.into_iter().map(|(_, l)| l).collect(),
            id,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_as_words() {
        assert_eq!(
            feature_words("temp.slope30"),
            "temp: trend over the window (per hour)"
        );
        assert_eq!(feature_words("vibration.last"), "vibration: latest value");
        assert_eq!(feature_words("hours_since_reset"), "hours since reset");
    }
}
