//! Push through an ntfy-shaped publish API: `POST {url}/{topic}` with the text as body and
//! Title/Priority/Click/Tags headers; optional bearer token. The idempotency key travels as
//! `X-Idempotency-Key` (ntfy ignores it; a gateway in front may de-duplicate on it).

use super::{classify, Accepted, Outgoing, Provider, SendFuture};
use crate::notify::config::PushConfig;

pub struct Push {
    cfg: PushConfig,
    http: reqwest::Client,
}

impl Push {
    pub fn new(cfg: &PushConfig, http: reqwest::Client) -> Push {
        Push {
            cfg: cfg.clone(),
            http,
        }
    }
}

impl Provider for Push {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let url = format!(
                "{}/{}",
                self.cfg.url.trim_end_matches('/'),
                m.address.trim_start_matches('/')
            );
            let urgent = m.json.get("urgent").and_then(|u| u.as_bool()) == Some(true);
            let mut req = self
                .http
                .post(url)
                .header("Title", header_safe(&m.rendered.push_title))
                .header("Priority", if urgent { "5" } else { "3" })
                .header("Tags", if urgent { "warning" } else { "wrench" })
                .header("X-Idempotency-Key", m.idempotency_key)
                .body(m.rendered.push.clone());
            if let Some(link) = m.json.get("link").and_then(|l| l.as_str()) {
                req = req.header("Click", link);
            }
            if let Some(t) = &self.cfg.token {
                req = req.bearer_auth(&t.0);
            }
            let (_status, body) = classify(req.send().await, m.now_ms).await?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            Ok(Accepted {
                provider_id: v.get("id").and_then(|s| s.as_str()).map(str::to_string),
                detail: "published".into(),
            })
        })
    }
}

/// HTTP header values must be visible ASCII; ntfy accepts RFC 2047 for the rest.
fn header_safe(s: &str) -> String {
    if s.chars().all(|c| (' '..='~').contains(&c)) {
        s.to_string()
    } else {
        use base64::Engine;
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}
