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
    /// E-mail: this message's own reply address (`replies+<token>@…`), instead of the
    /// configured one.
    pub reply_to: Option<&'a str>,
    /// When this attempt is made, by the notifier's clock (epoch ms): the e-mail's `Date`, and
    /// what a `Retry-After` given as a date is measured from.
    pub now_ms: i64,
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

/// A message the provider holds for an address: perhaps the one an interrupted attempt sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub provider_id: String,
    /// The text as the provider keeps it (SMS); `None` where it keeps none (calls).
    pub body: Option<String>,
    /// When the provider created it (epoch ms), if it said.
    pub created_ms: Option<i64>,
    /// The provider's status word ("queued", "delivered", "failed"…).
    pub status: String,
}

/// What a provider can tell about the messages it sent to an address.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The provider has no such API (ntfy, webhooks, SMTP, MQTT): a repeat after a crash can
    /// reach the customer twice (at least once).
    Unsupported,
    /// Its most recent messages to the address, newest first.
    Found(Vec<Found>),
}

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<Lookup, SendError>> + Send + 'a>>;

/// The one interface every channel implements.
pub trait Provider: Send + Sync {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a>;

    /// The provider's recent messages to `address`, asked before repeating an attempt that was
    /// interrupted between the request and its record (at most once where this is supported);
    /// `now_ms` is the notifier's clock, as in [`Outgoing::now_ms`].
    fn lookup<'a>(&'a self, _address: &'a str, _now_ms: i64) -> LookupFuture<'a> {
        Box::pin(async { Ok(Lookup::Unsupported) })
    }
}

/// The request went out but no answer came back: the provider may have the message.
const NO_ANSWER_TIMEOUT: &str = "provider unreachable: timeout";
const NO_ANSWER_ERROR: &str = "provider unreachable: request error";

/// Whether a retry's detail says the request may have reached the provider although it failed
/// here (a timeout, a connection lost after sending): a repeat must first ask the provider.
pub fn no_answer(detail: &str) -> bool {
    detail == NO_ANSWER_TIMEOUT || detail == NO_ANSWER_ERROR
}

/// Maps an HTTP answer to the outcome classes above; a `Retry-After` date is read against
/// `now_ms` (the notifier's clock).
pub(crate) async fn classify(
    r: Result<reqwest::Response, reqwest::Error>,
    now_ms: i64,
) -> Result<(reqwest::StatusCode, String), SendError> {
    let resp = match r {
        Ok(r) => r,
        Err(e) => {
            return Err(SendError::Retry {
                detail: if e.is_timeout() {
                    NO_ANSWER_TIMEOUT
                } else if e.is_connect() {
                    "provider unreachable: connection failed"
                } else {
                    NO_ANSWER_ERROR
                }
                .to_string(),
                after: None,
            })
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, now_ms));
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok((status, body));
    }
    let short = sanitize_provider_text(&body, 200);
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

/// A provider's answer as it may be stored in a timeline: markup and control characters
/// removed, whitespace collapsed, at most `max` characters. Error pages can be HTML or echo
/// what was sent; the timeline is an API read and must stay plain text.
pub fn sanitize_provider_text(body: &str, max: usize) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut space = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                space = true;
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() => space = true,
            c => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(c);
            }
        }
        if out.chars().count() >= max {
            break;
        }
    }
    let cut: String = out.chars().take(max).collect();
    cut.trim_end().to_string()
}

/// `Retry-After`: delta-seconds, or an HTTP-date measured from `now_ms` (the notifier's clock;
/// a date already past waits nothing).
pub fn retry_after(v: &str, now_ms: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis().saturating_sub(now_ms).max(0);
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// HTTP client shared by the HTTP channels.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    crate::tls::install_crypto();
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_text_loses_markup_and_control_characters() {
        let s = super::sanitize_provider_text(
            "<html><body><h1>Bad\u{7}\r\nRequest</h1>\n<script>x()</script>  too   long</body></html>",
            20,
        );
        assert_eq!(s, "Bad Request x() too");
        assert_eq!(super::sanitize_provider_text("ok", 200), "ok");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_measured_from_the_given_clock() {
        use std::time::Duration;
        // 2026-01-01T00:00:00Z: the notifier's clock, not today.
        let now = 1_767_225_600_000;
        assert_eq!(
            super::retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            super::retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            super::retry_after("Thu, 01 Jan 2026 00:05:00 GMT", now),
            Some(Duration::from_secs(300))
        );
        // The same date seen from a clock that is already past it: no wait.
        assert_eq!(
            super::retry_after("Thu, 01 Jan 2026 00:05:00 GMT", now + 600_000),
            Some(Duration::ZERO)
        );
        assert_eq!(super::retry_after("soon", now), None);
    }
}
