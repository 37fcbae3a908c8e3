//! SMS and voice call-back through a Twilio-shaped API: form POST with basic auth to
//! `/2010-04-01/Accounts/{sid}/Messages.json` (SMS) or `/Calls.json` (voice, with inline TwiML
//! `<Say>`), and a StatusCallback URL for delivery reports.
//!
//! Twilio does not de-duplicate create requests (`I-Twilio-Idempotency-Token` is a header
//! Twilio *sends* on its own webhooks; it is still sent here, for logs on both sides). So after
//! an interrupted attempt the worker first asks the list API — `GET Messages.json` or
//! `Calls.json` filtered by `To` and `From`, both documented list filters — what was sent to
//! the customer ([`Provider::lookup`]), and sends again only when the interrupted message is
//! not there. `DateSent` is not used as a filter: a message still queued at Twilio has no
//! `date_sent` yet and would be missed.

use super::{
    classify, Accepted, Found, Lookup, LookupFuture, Outgoing, Provider, SendError, SendFuture,
};
use crate::notify::config::TwilioConfig;
use crate::notify::templates::html_escape;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sms,
    Voice,
}

pub struct Twilio {
    cfg: TwilioConfig,
    kind: Kind,
    http: reqwest::Client,
}

impl Twilio {
    pub fn new(cfg: &TwilioConfig, kind: Kind, http: reqwest::Client) -> Twilio {
        Twilio {
            cfg: cfg.clone(),
            kind,
            http,
        }
    }
}

/// TwiML for a spoken message, said twice so a half-heard call still carries it. `voice`
/// (e.g. "Google.th-TH-Standard-A") is omitted when empty: the provider's default voice.
pub fn twiml(text: &str, language: &str, voice: &str) -> String {
    let t = html_escape(text);
    let attrs = if voice.is_empty() {
        format!("language=\"{}\"", html_escape(language))
    } else {
        format!(
            "voice=\"{}\" language=\"{}\"",
            html_escape(voice),
            html_escape(language)
        )
    };
    format!(
        "<Response><Say {attrs}>{t}</Say><Pause length=\"1\"/><Say {attrs}>{t}</Say></Response>"
    )
}

impl Provider for Twilio {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let base = self.cfg.api_base.trim_end_matches('/');
            let sid = &self.cfg.account_sid;
            let mut form: Vec<(&str, String)> = vec![
                ("To", m.address.to_string()),
                ("From", self.cfg.from.clone()),
            ];
            let url = match self.kind {
                Kind::Sms => {
                    form.push(("Body", m.rendered.sms.clone()));
                    format!("{base}/2010-04-01/Accounts/{sid}/Messages.json")
                }
                Kind::Voice => {
                    form.push((
                        "Twiml",
                        twiml(
                            &m.rendered.voice,
                            &m.rendered.voice_language,
                            &m.rendered.voice_name,
                        ),
                    ));
                    format!("{base}/2010-04-01/Accounts/{sid}/Calls.json")
                }
            };
            if let Some(cb) = m.status_callback {
                form.push(("StatusCallback", cb.to_string()));
            }
            let r = self
                .http
                .post(url)
                .basic_auth(sid, Some(&self.cfg.auth_token.0))
                .header("I-Twilio-Idempotency-Token", m.idempotency_key)
                .form(&form)
                .send()
                .await;
            let (status, body) = classify(r, m.now_ms).await?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let psid = v.get("sid").and_then(|s| s.as_str()).map(str::to_string);
            if psid.is_none() {
                return Err(SendError::Retry {
                    detail: format!("provider answered {status} without a sid"),
                    after: None,
                });
            }
            Ok(Accepted {
                provider_id: psid,
                detail: format!(
                    "accepted ({})",
                    v.get("status").and_then(|s| s.as_str()).unwrap_or("queued")
                ),
            })
        })
    }

    fn lookup<'a>(&'a self, address: &'a str, now_ms: i64) -> LookupFuture<'a> {
        Box::pin(async move {
            let base = self.cfg.api_base.trim_end_matches('/');
            let sid = &self.cfg.account_sid;
            let (resource, list) = match self.kind {
                Kind::Sms => ("Messages.json", "messages"),
                Kind::Voice => ("Calls.json", "calls"),
            };
            let unreadable = |why: &str| SendError::Retry {
                detail: format!("provider's {list} list {why}"),
                after: None,
            };
            let url = reqwest::Url::parse_with_params(
                &format!("{base}/2010-04-01/Accounts/{sid}/{resource}"),
                [
                    ("To", address),
                    ("From", self.cfg.from.as_str()),
                    ("PageSize", "50"),
                ],
            )
            .map_err(|_| unreadable("URL is not valid"))?;
            let r = self
                .http
                .get(url)
                .basic_auth(sid, Some(&self.cfg.auth_token.0))
                .send()
                .await;
            // A refused or failed look-up is never a reason to send: the row waits and retries.
            let (_, body) = classify(r, now_ms).await.map_err(|e| match e {
                SendError::Permanent { detail } => SendError::Retry {
                    detail: format!("look-up refused: {detail}"),
                    after: None,
                },
                e => e,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|_| unreadable("is not JSON"))?;
            let items = v
                .get(list)
                .and_then(|l| l.as_array())
                .ok_or_else(|| unreadable("is missing"))?;
            let text = |m: &serde_json::Value, k: &str| {
                m.get(k).and_then(|x| x.as_str()).map(str::to_string)
            };
            let found = items
                .iter()
                .filter_map(|m| {
                    Some(Found {
                        provider_id: text(m, "sid")?,
                        body: text(m, "body"),
                        created_ms: text(m, "date_created")
                            .and_then(|d| chrono::DateTime::parse_from_rfc2822(&d).ok())
                            .map(|d| d.timestamp_millis()),
                        status: text(m, "status").unwrap_or_default(),
                    })
                })
                .collect();
            Ok(Lookup::Found(found))
        })
    }
}
