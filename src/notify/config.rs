//! The `[notify]` section: delivery policy, routing rules and one optional table per provider.
//! A channel whose provider table is absent is simply unavailable; routing records why.

use crate::domain::Dur;
use crate::domain::Priority;
use crate::fleet::Channel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A credential, never printed: moved to `crate::secret` so API tokens and the broker and
/// dispatch secrets share it.
pub use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// On by default: with no provider configured every message is recorded as undeliverable
    /// (with the reason) in the customer's timeline, nothing fails.
    pub enabled: bool,
    /// The longest wait between looks at the outbox (a row falling due wakes it sooner).
    pub poll_interval: Dur,
    /// HMAC key of self-service links (also FOREWARN__NOTIFY__LINK_SECRET); random per start if unset.
    pub link_secret: Option<Secret>,
    /// Self-service links expire after this...
    pub link_ttl: Dur,
    /// ...or after this when the ticket is urgent (a visit within days is no use later).
    pub link_ttl_urgent: Dur,
    /// The link in machine channels' JSON (webhook, MQTT, push) lives only this long: those
    /// payloads are stored and forwarded by systems other than the customer's.
    pub machine_link_ttl: Dur,
    /// Folder of `<locale>.toml` template files overriding/adding to the embedded ones.
    pub templates_dir: Option<PathBuf>,
    /// Locale used when a customer's locale has no templates.
    pub fallback_locale: String,
    /// Messages per customer per local day unless the customer sets their own.
    pub daily_budget: u32,
    /// Urgent messages may exceed the budget by this many.
    pub urgent_over_budget: u32,
    /// Attempts per channel before falling back to the next one.
    pub max_attempts: u32,
    /// Retry backoff between attempts on a channel: exponential with jitter (or the provider's
    /// `Retry-After`), from this...
    pub retry_min: Dur,
    /// ...up to this.
    pub retry_max: Dur,
    /// Timeout of one provider call.
    pub send_timeout: Dur,
    /// An urgent ticket still open this long after its alert gets a reminder...
    pub ack_timeout: Dur,
    /// ...at most this many times, each on a more immediate channel when there is one.
    pub max_reminders: u32,
    /// Send a short "resolved" message when a notified ticket is settled by a maintenance event.
    pub notify_resolved: bool,
    /// No longer accepted (a static key in the URL is forgeable): see
    /// `inbound_email_signing_key`. Kept so an old configuration gets a clear error.
    pub inbound_email_key: Option<Secret>,
    /// Mailgun's HTTP webhook signing key: inbound e-mail must carry Mailgun's `timestamp`,
    /// `token` and `signature`; unset, the e-mail reply route is off.
    pub inbound_email_signing_key: Option<Secret>,
    /// How far an inbound e-mail's signed timestamp may be from now (each token is accepted
    /// once within it).
    pub inbound_email_max_age: Dur,
    pub routing: RoutingConfig,
    pub email: Option<EmailConfig>,
    pub sms: Option<TwilioConfig>,
    pub voice: Option<TwilioConfig>,
    pub push: Option<PushConfig>,
    pub webhook: Option<WebhookConfig>,
    pub mqtt: Option<MqttConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            enabled: true,
            poll_interval: Dur::secs(1),
            link_secret: None,
            link_ttl: Dur::hours(14 * 24),
            link_ttl_urgent: Dur::hours(48),
            machine_link_ttl: Dur::hours(1),
            templates_dir: None,
            fallback_locale: "en".into(),
            daily_budget: 6,
            urgent_over_budget: 2,
            max_attempts: 5,
            retry_min: Dur::secs(2),
            retry_max: Dur::secs(600),
            send_timeout: Dur::secs(15),
            ack_timeout: Dur::hours(2),
            max_reminders: 2,
            notify_resolved: true,
            inbound_email_key: None,
            inbound_email_signing_key: None,
            inbound_email_max_age: Dur::secs(300),
            routing: RoutingConfig::default(),
            email: None,
            sms: None,
            voice: None,
            push: None,
            webhook: None,
            mqtt: None,
        }
    }
}

/// Routing rules as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// A ticket at or above this priority is urgent...
    pub urgent_priority: Priority,
    /// ...so is one whose failure is predicted sooner than this...
    pub urgent_within: Dur,
    /// ...or whose probability is at least this.
    pub urgent_probability: f64,
    /// Channels used for urgent messages (customer's preference order decides among them).
    pub immediate: Vec<Channel>,
    /// Channels used for advisory messages; never during quiet hours.
    pub asynchronous: Vec<Channel>,
    /// Most immediate first: reminders climb this ladder.
    pub immediacy: Vec<Channel>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        use Channel::*;
        RoutingConfig {
            urgent_priority: Priority::Urgent,
            urgent_within: Dur::hours(24),
            urgent_probability: 1.0,
            immediate: vec![Voice, Sms],
            asynchronous: vec![Email, Push, Webhook, Mqtt],
            immediacy: vec![Voice, Sms, Push, Mqtt, Webhook, Email],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on localhost.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// SMTP server.
    pub host: String,
    /// SMTP port (587 for STARTTLS, 465 for implicit TLS).
    pub port: u16,
    /// `starttls`, `tls` (implicit) or `none` (a local relay only).
    pub tls: SmtpTls,
    /// SMTP user name, if the server asks for one.
    pub username: Option<String>,
    /// SMTP password (better set by environment variable).
    pub password: Option<Secret>,
    /// `Forewarn Service <service@example.com>`
    pub from: String,
    /// Where customer replies go (the inbound-parse address), if not `from`.
    pub reply_to: Option<String>,
    /// PEM CA certificate(s) to trust for the SMTP server's TLS (a private relay); default: the
    /// web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Instead of SMTP, write each message as an `.eml` file into this folder (trying templates,
    /// the demo); `host`, `port`, `tls` and credentials are then unused.
    pub outbox_dir: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            host: "localhost".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: "forewarn@localhost".into(),
            reply_to: None,
            ca_file: None,
            outbox_dir: None,
        }
    }
}

/// Twilio-shaped provider (SMS: Messages API, voice: Calls API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    /// Base URL of the provider's API (Twilio's, or anything speaking its shape).
    pub api_base: String,
    /// The account SID.
    pub account_sid: String,
    /// Basic-auth password, and key of X-Twilio-Signature on callbacks.
    pub auth_token: Secret,
    /// Sender number (E.164).
    pub from: String,
    /// The SharedKey secret of a Twilio Webhooks Rule: requests that carry
    /// `X-Twilio-Webhooks-Signature-Settings` are checked with it and the algorithm the header
    /// names (HMAC-SHA256); unset, such requests are refused.
    pub webhook_shared_key: Option<Secret>,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            api_base: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: Secret::default(),
            from: String::new(),
            webhook_shared_key: None,
        }
    }
}

/// ntfy-shaped publish API: `POST {url}/{topic}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Base URL of the publish API; each message is POSTed to `{url}/{customer's push topic}`.
    pub url: String,
    /// Bearer token of the publish API, if it needs one.
    pub token: Option<Secret>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            url: "https://ntfy.sh".into(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// HMAC-SHA256 key of `X-Forewarn-Signature` on customer webhooks.
    pub secret: Secret,
    /// Hosts, addresses and networks (`10.0.0.0/8`) a customer webhook may point at although
    /// they are internal, over plain `http` too (see `netguard`). Empty: public `https` only.
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (rustls).
    pub url: String,
    /// The notifier's own MQTT client id.
    pub client_id: String,
    /// MQTT user name, if the broker asks for one.
    pub username: Option<String>,
    /// MQTT password (better set by environment variable).
    pub password: Option<Secret>,
    /// PEM CA certificate(s) for an `mqtts://` broker; default: the web PKI roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "forewarn-notify".into(),
            username: None,
            password: None,
            ca_file: None,
        }
    }
}

fn http_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

impl NotifyConfig {
    /// Checks the section; on error returns (key below `notify.`, message). No I/O.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.retry_min > self.retry_max {
            return bad("retry_min", "must not exceed notify.retry_max");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.poll_interval.0.is_zero() {
            return bad("poll_interval", "must be above 0s");
        }
        if self.fallback_locale.trim().is_empty() {
            return bad("fallback_locale", "must name a locale, e.g. \"en\"");
        }
        if self.inbound_email_key.is_some() {
            return bad(
                "inbound_email_key",
                "a static key in the URL is forgeable and is no longer accepted: set \
                 notify.inbound_email_signing_key (Mailgun's HTTP webhook signing key) instead",
            );
        }
        if self
            .inbound_email_signing_key
            .as_ref()
            .is_some_and(|s| s.len() < 16)
        {
            return bad(
                "inbound_email_signing_key",
                "must be at least 16 characters",
            );
        }
        if self.link_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return bad("link_secret", "must be at least 16 characters");
        }
        let r = &self.routing;
        if !(0.0..=1.0).contains(&r.urgent_probability) {
            return bad("routing.urgent_probability", "must be within 0..1");
        }
        if r.immediate.is_empty() || r.asynchronous.is_empty() {
            return bad(
                "routing.immediate",
                "routing.immediate and routing.asynchronous each need a channel",
            );
        }
        if let Some(e) = &self.email {
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                return bad("email.from", "is not an e-mail address");
            }
            if let Some(rt) = &e.reply_to {
                if rt.parse::<lettre::message::Mailbox>().is_err() {
                    return bad("email.reply_to", "is not an e-mail address");
                }
            }
            if e.host.is_empty() {
                return bad("email.host", "must not be empty");
            }
        }
        for (k, t) in [("sms", &self.sms), ("voice", &self.voice)] {
            if let Some(t) = t {
                if !http_url(&t.api_base) {
                    return bad(&format!("{k}.api_base"), "must be an http(s) URL");
                }
                if t.account_sid.is_empty() || t.auth_token.is_empty() || t.from.is_empty() {
                    return bad(
                        &format!("{k}.account_sid"),
                        "account_sid, auth_token and from are all required",
                    );
                }
            }
        }
        if let Some(p) = &self.push {
            if !http_url(&p.url) {
                return bad("push.url", "must be an http(s) URL");
            }
        }
        if let Some(w) = &self.webhook {
            if w.secret.len() < 16 {
                return bad("webhook.secret", "must be at least 16 characters");
            }
            if let Err(e) = crate::netguard::AddressPolicy::new(&w.allow) {
                return bad("webhook.allow", &e.to_string());
            }
        }
        if let Some(m) = &self.mqtt {
            if crate::ingest::mqtt::parse_url(&m.url).is_err() {
                return bad("mqtt.url", "must be mqtt://host:port or mqtts://host:port");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_tables_parse_and_secrets_never_print() {
        let c: NotifyConfig = toml::from_str(
            r#"
            link_secret = "0123456789abcdef-secret"
            [sms]
            account_sid = "AC1"
            auth_token = "tok-very-secret"
            from = "+15550100"
            [email]
            host = "smtp.example.com"
            tls = "tls"
            port = 465
            password = "pw-very-secret"
            from = "Service <s@example.com>"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(&*c.sms.as_ref().unwrap().auth_token, "tok-very-secret");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("very-secret") && !dbg.contains("0123456789abcdef"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |c: NotifyConfig| c.validate().unwrap_err().0;
        let d = NotifyConfig::default;
        assert_eq!(
            key(NotifyConfig {
                retry_min: Dur::secs(900),
                ..d()
            }),
            "retry_min"
        );
        assert_eq!(
            key(NotifyConfig {
                email: Some(EmailConfig {
                    from: "not an address".into(),
                    ..EmailConfig::default()
                }),
                ..d()
            }),
            "email.from"
        );
        assert_eq!(
            key(NotifyConfig {
                webhook: Some(WebhookConfig {
                    secret: "short".into(),
                    allow: vec![],
                }),
                ..d()
            }),
            "webhook.secret"
        );
        assert_eq!(
            key(NotifyConfig {
                sms: Some(TwilioConfig::default()),
                ..d()
            }),
            "sms.account_sid"
        );
        assert_eq!(
            key(NotifyConfig {
                inbound_email_key: Some("static-key-in-the-url".into()),
                ..d()
            }),
            "inbound_email_key",
            "a forgeable static key is refused"
        );
        assert!(toml::from_str::<NotifyConfig>("smss = 1").is_err());
        assert!(toml::from_str::<NotifyConfig>("[email]\ntls = \"ssl\"").is_err());
    }
}
