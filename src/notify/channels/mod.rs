//! One module per channel, all behind [`Provider`]. A provider gets one fully rendered message
//! with its idempotency key and answers: accepted (with the provider's id), retry later (with
//! the provider's Retry-After when it gave one), or failed for good (bounce, invalid number…).

pub mod email;
pub mod mqtt;
pub mod push;
pub mod twilio;
pub mod webhook;

use super::templates::Rendered;
use crate::fleet::Channel;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One message to one address.
pub struct Outgoing<'a> {
    pub channel: Channel,
    /// Contact address (never logged).
    pub address: &'a str,
    pub rendered: &'a Rendered,
    /// Facts as JSON for machine channels (webhook, MQTT).
    pub json: &'a serde_json::Value,
    /// Sent to the provider so a retry after a crash does not message the customer twice.
    pub idempotency_key: &'a str,
    /// Where the provider reports delivery (Twilio StatusCallback).
    pub status_callback: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The provider's id (Twilio SID, SMTP Message-ID…), for status callbacks.
    pub provider_id: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying on the same channel (timeout, 5xx, 429).
    #[error("{detail}")]
    Retry {
        detail: String,
        after: Option<Duration>,
    },
    /// This channel will not deliver this message (4xx, bounce): fall back.
    #[error("{detail}")]
    Permanent { detail: String },
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Accepted, SendError>> + Send + 'a>>;

/// The one interface every channel implements.
pub trait Provider: Send + Sync {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a>;
}

/// Maps an HTTP answer to the outcome classes above.
pub(crate) async fn classify(
    r: Result<reqwest::Response, reqwest::Error>,
) -> Result<(reqwest::StatusCode, String), SendError> {
    let resp = match r {
        Ok(r) => r,
        Err(e) => {
            return Err(SendError::Retry {
                detail: format!(
                    "provider unreachable: {}",
                    if e.is_timeout() {
                        "timeout".to_string()
                    } else if e.is_connect() {
                        "connection failed".to_string()
                    } else {
                        "request error".to_string()
                    }
                ),
                after: None,
            })
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok((status, body));
    }
    let short: String = body.chars().take(200).collect();
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        Err(SendError::Retry {
            detail: format!("provider answered {status}"),
            after: retry_after,
        })
    } else {
        Err(SendError::Permanent {
            detail: format!("provider answered {status}: {short}"),
        })
    }
}

/// HTTP client shared by the HTTP channels.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("http client: {e}"))
}
