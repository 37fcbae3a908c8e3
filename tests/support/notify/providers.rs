//! Fake cloud providers as a real HTTP server on loopback, speaking the documented shapes:
//! Twilio Messages and Calls APIs (create: form POST, basic auth, StatusCallback; list: `GET`
//! filtered by `To` and `From`, newest first, `PageSize`, RFC 2822 `date_created`, the JSON
//! list under `messages` / `calls`), ntfy publish, and a customer webhook that checks the HMAC
//! signature. Like the real services, none of them de-duplicates by an idempotency key: every
//! request is a message. Each service can be told to fail, rate-limit, hang or go down.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Ok,
    /// 503 to everything: the provider is down.
    Down,
    /// 429 with Retry-After (seconds).
    RateLimit(u64),
    /// 400: e.g. an invalid number.
    Reject,
    /// Accept and record the message, then answer only after this long (the client times out).
    Hang(u64),
}

#[derive(Debug, Clone)]
pub struct Delivered {
    pub service: &'static str,
    pub to: String,
    /// The sender (Twilio `From`).
    pub from: String,
    /// When the provider created it (its clock).
    pub created_ms: i64,
    pub body: String,
    pub title: String,
    pub idempotency: String,
    pub status_callback: String,
    pub sid: String,
}

/// The provider's clock (epoch ms).
pub type FakeClock = Arc<dyn Fn() -> i64 + Send + Sync>;

#[derive(Default)]
pub struct Inner {
    /// The providers' clock: wall time unless a test sets one.
    pub clock: Option<FakeClock>,
    pub modes: HashMap<&'static str, Mode>,
    pub delivered: Vec<Delivered>,
    /// Every request, including refused ones, per service (`sms_list`, `voice_list`: look-ups).
    pub requests: HashMap<&'static str, usize>,
}

#[derive(Clone)]
pub struct Fakes {
    pub base: String,
    pub inner: Arc<Mutex<Inner>>,
}

pub const SID: &str = "AC0000test";
pub const TOKEN: &str = "twilio-auth-token-for-tests";
pub const HOOK_SECRET: &str = "customer-webhook-secret-0123";

impl Fakes {
    pub async fn start() -> Fakes {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/{resource}",
                post(create).get(listing),
            )
            .route("/hook", post(hook))
            .route("/{topic}", post(push))
            .with_state(inner.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        Fakes { base, inner }
    }
    /// Twilio's settings for the daemon, pointed at these fakes (SMS or voice alike).
    pub fn twilio(&self) -> forewarn::notify::config::TwilioConfig {
        forewarn::notify::config::TwilioConfig {
            api_base: self.base.clone(),
            account_sid: SID.into(),
            auth_token: TOKEN.into(),
            from: "+15550100".into(),
            webhook_shared_key: None,
        }
    }
    /// The providers' clock from now on (message creation times).
    pub fn set_clock(&self, clock: FakeClock) {
        self.inner.lock().unwrap().clock = Some(clock);
    }
    pub fn set(&self, service: &'static str, m: Mode) {
        self.inner.lock().unwrap().modes.insert(service, m);
    }
    pub fn delivered(&self, service: &str) -> Vec<Delivered> {
        self.inner
            .lock()
            .unwrap()
            .delivered
            .iter()
            .filter(|d| d.service == service)
            .cloned()
            .collect()
    }
    pub fn requests(&self, service: &str) -> usize {
        *self
            .inner
            .lock()
            .unwrap()
            .requests
            .get(service)
            .unwrap_or(&0)
    }
}

type St = State<Arc<Mutex<Inner>>>;

fn authorized(h: &HeaderMap, sid: &str) -> bool {
    use base64::Engine;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    sid == SID && h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

async fn gate(st: &Arc<Mutex<Inner>>, service: &'static str) -> Result<Option<u64>, Response> {
    let mode = {
        let mut g = st.lock().unwrap();
        *g.requests.entry(service).or_default() += 1;
        *g.modes.get(service).unwrap_or(&Mode::Ok)
    };
    match mode {
        Mode::Ok => Ok(None),
        Mode::Hang(ms) => Ok(Some(ms)),
        Mode::Down => Err((StatusCode::SERVICE_UNAVAILABLE, "down").into_response()),
        Mode::Reject => Err((
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"code": 21211, "message": "Invalid 'To' Phone Number"})),
        )
            .into_response()),
        Mode::RateLimit(s) => Err((
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", s.to_string())],
            Json(serde_json::json!({"code": 20429, "message": "Too Many Requests"})),
        )
            .into_response()),
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    st: &Arc<Mutex<Inner>>,
    service: &'static str,
    h: &HeaderMap,
    (to, from): (String, String),
    body: String,
    title: String,
    cb: String,
    prefix: &str,
) -> String {
    let idem = h
        .get("i-twilio-idempotency-token")
        .or_else(|| h.get("x-idempotency-key"))
        .or_else(|| h.get("idempotency-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut g = st.lock().unwrap();
    // Twilio's REST API does not de-duplicate by this header (it only signs its own webhooks
    // with it), nor does ntfy, nor a webhook receiver that does not check it: every request is
    // delivered, as the real services do.
    let sid = format!("{prefix}{:032}", g.delivered.len() + 1);
    let created_ms = g
        .clock
        .as_ref()
        .map(|c| c())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    g.delivered.push(Delivered {
        service,
        to,
        from,
        created_ms,
        body,
        title,
        idempotency: idem,
        status_callback: cb,
        sid: sid.clone(),
    });
    sid
}

/// Twilio's list API: `To` and `From` filter exactly, newest first, at most `PageSize`
/// (default 50) in one page.
fn list(
    st: &Arc<Mutex<Inner>>,
    service: &'static str,
    key: &str,
    q: &HashMap<String, String>,
) -> Response {
    let g = st.lock().unwrap();
    let size: usize = q
        .get("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .min(1000);
    let items: Vec<serde_json::Value> = g
        .delivered
        .iter()
        .rev()
        .filter(|d| d.service == service)
        .filter(|d| q.get("To").is_none_or(|t| *t == d.to))
        .filter(|d| q.get("From").is_none_or(|f| *f == d.from))
        .take(size)
        .map(|d| {
            let created = chrono::DateTime::from_timestamp_millis(d.created_ms)
                .unwrap()
                .to_rfc2822();
            let mut v = serde_json::json!({
                "sid": d.sid, "to": d.to, "from": d.from, "status": "queued",
                "date_created": created,
            });
            if service == "sms" {
                v["body"] = d.body.clone().into();
            }
            v
        })
        .collect();
    let mut page = serde_json::json!({"page": 0, "page_size": size});
    page[key] = items.into();
    Json(page).into_response()
}

/// Twilio's two resources the daemon uses, by the last segment of their URL.
struct Resource {
    service: &'static str,
    /// What a list request of it is counted as (and can be told to fail as).
    listed_as: &'static str,
    /// Where a list page holds the items.
    list_key: &'static str,
    /// The form field with the content.
    body_field: &'static str,
    sid_prefix: &'static str,
}

fn resource(name: &str) -> Option<Resource> {
    match name {
        "Messages.json" => Some(Resource {
            service: "sms",
            listed_as: "sms_list",
            list_key: "messages",
            body_field: "Body",
            sid_prefix: "SM",
        }),
        "Calls.json" => Some(Resource {
            service: "voice",
            listed_as: "voice_list",
            list_key: "calls",
            body_field: "Twiml",
            sid_prefix: "CA",
        }),
        _ => None,
    }
}

/// Twilio's list API of a resource: authorized, counted under its own name (`sms_list`).
async fn listing(
    State(st): St,
    Path((sid, name)): Path<(String, String)>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(res) = resource(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !authorized(&h, &sid) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Err(r) = gate(&st, res.listed_as).await {
        return r;
    }
    list(&st, res.service, res.list_key, &q)
}

/// Twilio's create API (a message or a call), in the service's order: authorization, the
/// service's mode, the request's own check (a call needs TwiML), the record; a hanging service
/// answers late.
async fn create(
    State(st): St,
    Path((sid, name)): Path<(String, String)>,
    h: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let Some(res) = resource(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !authorized(&h, &sid) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let hang = match gate(&st, res.service).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let g = |k: &str| f.get(k).cloned().unwrap_or_default();
    if res.service == "voice" && !g("Twiml").starts_with("<Response>") {
        return (StatusCode::BAD_REQUEST, "Twiml required").into_response();
    }
    let created = record(
        &st,
        res.service,
        &h,
        (g("To"), g("From")),
        g(res.body_field),
        String::new(),
        g("StatusCallback"),
        res.sid_prefix,
    );
    if let Some(ms) = hang {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut answer = serde_json::json!({"sid": created, "status": "queued"});
    if res.service == "sms" {
        answer["to"] = g("To").into();
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn push(State(st): St, Path(topic): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = gate(&st, "push").await {
        return r;
    }
    let title = h
        .get("title")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let id = record(
        &st,
        "push",
        &h,
        (topic.clone(), String::new()),
        String::from_utf8_lossy(&body).into_owned(),
        title,
        String::new(),
        "ntfy",
    );
    Json(serde_json::json!({"id": id, "event": "message", "topic": topic})).into_response()
}

async fn hook(State(st): St, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = gate(&st, "webhook").await {
        return r;
    }
    let sig = h
        .get("x-forewarn-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sig != forewarn::sign::webhook_signature(HOOK_SECRET.as_bytes(), &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    record(
        &st,
        "webhook",
        &h,
        ("hook".into(), String::new()),
        String::from_utf8_lossy(&body).into_owned(),
        String::new(),
        String::new(),
        "wh",
    );
    StatusCode::NO_CONTENT.into_response()
}
