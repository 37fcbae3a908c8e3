//! A local notification sink for `forewarn demo`: one loopback HTTP server that accepts what the
//! SMS, voice and push channels send (the Twilio Messages/Calls and ntfy publish shapes) and the
//! customer webhook, and keeps every message (de-duplicated by idempotency key) for display,
//! optionally appending each as a JSON line to a file. Nothing leaves the machine.

use super::config::{PushConfig, Secret, TwilioConfig, WebhookConfig};
use super::NotifyConfig;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// One message as the customer would have received it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkMessage {
    /// "sms", "voice", "push", "webhook".
    pub channel: &'static str,
    pub to: String,
    pub text: String,
}

#[derive(Default)]
struct Inner {
    messages: Vec<SinkMessage>,
    seen: HashMap<String, String>,
    file: Option<std::fs::File>,
}

/// The running sink.
#[derive(Clone)]
pub struct LocalSink {
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

const SID: &str = "ACdemo";
const TOKEN: &str = "demo-local-sink-token";
const HOOK_SECRET: &str = "demo-local-sink-webhook-secret";

impl LocalSink {
    /// Binds 127.0.0.1 on a free port and serves until the runtime ends.
    pub async fn start(jsonl: Option<&std::path::Path>) -> std::io::Result<LocalSink> {
        let file = match jsonl {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        let inner = Arc::new(Mutex::new(Inner {
            file,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(sms))
            .route("/2010-04-01/Accounts/{sid}/Calls.json", post(call))
            .route("/webhook", post(webhook))
            .route("/{topic}", post(push))
            .with_state(inner.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", l.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok(LocalSink { base_url, inner })
    }

    /// Points the SMS, voice, push and webhook channels of `cfg` at this sink.
    /// Points every channel the configuration leaves unset at the sink (a configured provider,
    /// e.g. a real SMTP server or Twilio account given to `forewarn demo --config`, is kept).
    pub fn configure(&self, cfg: &mut NotifyConfig) {
        let tw = TwilioConfig {
            api_base: self.base_url.clone(),
            account_sid: SID.into(),
            auth_token: Secret(TOKEN.into()),
            from: "+10000000000".into(),
            webhook_shared_key: None,
        };
        cfg.sms.get_or_insert_with(|| tw.clone());
        cfg.voice.get_or_insert(tw);
        cfg.push.get_or_insert_with(|| PushConfig {
            url: self.base_url.clone(),
            token: None,
        });
        let hook = cfg.webhook.get_or_insert_with(|| WebhookConfig {
            secret: Secret(HOOK_SECRET.into()),
            allow: vec![],
        });
        // The sink listens on loopback, which customer webhooks may not reach by default.
        if let Some(host) = self
            .base_url
            .strip_prefix("http://")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(h, _)| h.to_string())
        {
            if !hook.allow.contains(&host) {
                hook.allow.push(host);
            }
        }
    }

    /// The customer webhook address of the sink (for demo customers' `webhook` contact).
    pub fn webhook_url(&self) -> String {
        format!("{}/webhook", self.base_url)
    }

    pub fn messages(&self) -> Vec<SinkMessage> {
        self.inner
            .lock()
            .map(|g| g.messages.clone())
            .unwrap_or_default()
    }
}

type St = State<Arc<Mutex<Inner>>>;

/// Self-service link tokens are credentials: the log shows where a link went, not its token.
pub fn redact_links(text: &str) -> String {
    const MARK: &str = "/notify/v1/s/";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i + MARK.len()]);
        out.push('…');
        let after = &rest[i + MARK.len()..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '\'' | ')'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Records a message once per idempotency key; returns the provider id.
fn record(st: &Arc<Mutex<Inner>>, h: &HeaderMap, m: SinkMessage) -> String {
    let key = [
        "i-twilio-idempotency-token",
        "x-idempotency-key",
        "idempotency-key",
    ]
    .iter()
    .find_map(|k| h.get(*k).and_then(|v| v.to_str().ok()))
    .unwrap_or("")
    .to_string();
    let Ok(mut g) = st.lock() else {
        return String::new();
    };
    if let Some(id) = g.seen.get(&key).filter(|_| !key.is_empty()) {
        return id.clone();
    }
    let id = format!("SM{:032}", g.messages.len() + 1);
    tracing::info!(
        channel = m.channel,
        "demo sink received: {}",
        redact_links(&m.text)
    );
    if let Some(f) = g.file.as_mut() {
        if let Ok(line) = serde_json::to_string(&m) {
            let _ = writeln!(f, "{line}");
        }
    }
    g.messages.push(m);
    if !key.is_empty() {
        g.seen.insert(key, id.clone());
    }
    id
}

async fn sms(
    State(st): St,
    Path(_sid): Path<String>,
    h: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    twilio_created(&st, &h, &f, "sms", "Body", "SM")
}

async fn call(
    State(st): St,
    Path(_sid): Path<String>,
    h: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    twilio_created(&st, &h, &f, "voice", "Twiml", "CA")
}

/// Twilio's answer to a create: the message (`text` from the form's `text_key`) recorded, and
/// the sid of what was made — `SM…` a message, `CA…` a call.
fn twilio_created(
    st: &Arc<Mutex<Inner>>,
    h: &HeaderMap,
    f: &HashMap<String, String>,
    channel: &'static str,
    text_key: &str,
    sid_prefix: &str,
) -> Response {
    let g = |k: &str| f.get(k).cloned().unwrap_or_default();
    let m = SinkMessage {
        channel,
        to: g("To"),
        text: g(text_key),
    };
    let id = record(st, h, m);
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"sid": id.replacen("SM", sid_prefix, 1), "status": "queued"})),
    )
        .into_response()
}

async fn push(State(st): St, Path(topic): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    let m = SinkMessage {
        channel: "push",
        to: topic,
        text: String::from_utf8_lossy(&body).into_owned(),
    };
    let id = record(&st, &h, m);
    Json(serde_json::json!({"id": id, "event": "message"})).into_response()
}

async fn webhook(State(st): St, h: HeaderMap, body: Bytes) -> Response {
    let m = SinkMessage {
        channel: "webhook",
        to: "webhook".into(),
        text: String::from_utf8_lossy(&body).into_owned(),
    };
    record(&st, &h, m);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_are_redacted() {
        assert_eq!(
            redact_links("open http://h/notify/v1/s/abc.def now"),
            "open http://h/notify/v1/s/… now"
        );
    }

    #[tokio::test]
    async fn the_sink_takes_what_the_channels_send_once_per_key() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sink = LocalSink::start(None).await.unwrap();
        let mut cfg = NotifyConfig::default();
        sink.configure(&mut cfg);
        cfg.validate().unwrap();
        let http = reqwest::Client::new();
        for _ in 0..2 {
            let r = http
                .post(format!("{}/topic-a", sink.base_url))
                .header("X-Idempotency-Key", "k1")
                .body("hello")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        assert_eq!(
            sink.messages(),
            vec![SinkMessage {
                channel: "push",
                to: "topic-a".into(),
                text: "hello".into()
            }]
        );
    }
}
