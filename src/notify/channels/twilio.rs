//! SMS and voice call-back through a Twilio-shaped API: form POST with basic auth to
//! `/2010-04-01/Accounts/{sid}/Messages.json` (SMS) or `/Calls.json` (voice, with inline TwiML
//! `<Say>`), a StatusCallback URL for delivery reports, and the idempotency key in
//! `I-Twilio-Idempotency-Token` so a retried request is not sent twice.

use super::{classify, Accepted, Outgoing, Provider, SendError, SendFuture};
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
            let (status, body) = classify(r).await?;
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
}
