//! E-mail over SMTP (lettre): STARTTLS, implicit TLS or plain (local relay), a plain-text and an
//! HTML part; or, with `outbox_dir`, written as `.eml` files into a folder (the demo). The idempotency key becomes the Message-ID, so a resend after a crash carries the
//! same id (SMTP itself has no de-duplication; mail clients thread or collapse it).

use super::{Accepted, Outgoing, Provider, SendError, SendFuture};
use crate::notify::config::{EmailConfig, SmtpTls};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

pub struct Email {
    transport: Transport,
    from: Mailbox,
    reply_to: Option<Mailbox>,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a folder.
    Files(AsyncFileTransport<Tokio1Executor>),
}

/// Why the e-mail channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    #[error("notify.email: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("notify.email.ca_file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("notify.email.ca_file {path}: {source}")]
    CaCert {
        path: std::path::PathBuf,
        source: lettre::transport::smtp::Error,
    },
    #[error("notify.email.{0}: not an e-mail address")]
    Address(&'static str),
    #[error("notify.email.outbox_dir {path}: {source}")]
    OutboxDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Email {
    pub fn build(cfg: &EmailConfig, timeout: Duration) -> Result<Email, EmailSetupError> {
        crate::tls::install_crypto();
        let from = cfg
            .from
            .parse()
            .map_err(|_| EmailSetupError::Address("from"))?;
        let reply_to = match &cfg.reply_to {
            Some(r) => Some(
                r.parse()
                    .map_err(|_| EmailSetupError::Address("reply_to"))?,
            ),
            None => None,
        };
        if let Some(dir) = &cfg.outbox_dir {
            std::fs::create_dir_all(dir).map_err(|source| EmailSetupError::OutboxDir {
                path: dir.clone(),
                source,
            })?;
            return Ok(Email {
                transport: Transport::Files(AsyncFileTransport::new(dir)),
                from,
                reply_to,
            });
        }
        let err = EmailSetupError::Smtp;
        let b = match (cfg.tls, &cfg.ca_file) {
            (SmtpTls::None, _) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
            }
            (SmtpTls::Starttls, None) => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(err)?
            }
            (SmtpTls::Tls, None) => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(err)?
            }
            (mode, Some(ca)) => {
                let pem = std::fs::read(ca).map_err(|source| EmailSetupError::CaFile {
                    path: ca.clone(),
                    source,
                })?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|source| EmailSetupError::CaCert {
                        path: ca.clone(),
                        source,
                    })?;
                let params = TlsParameters::builder(cfg.host.clone())
                    .add_root_certificate(cert)
                    .build_rustls()
                    .map_err(err)?;
                let tls = if mode == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                };
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host).tls(tls)
            }
        };
        let mut b = b.port(cfg.port).timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            b = b.credentials(Credentials::new(u.clone(), p.0.clone()));
        }
        Ok(Email {
            transport: Transport::Smtp(b.build()),
            from,
            reply_to,
        })
    }

    fn message(&self, m: &Outgoing) -> Result<Message, SendError> {
        let to: Mailbox = m.address.parse().map_err(|_| SendError::Permanent {
            detail: "recipient is not an e-mail address".into(),
        })?;
        let r = m.rendered;
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(r.email_subject.clone())
            .message_id(Some(format!("<{}@forewarn>", m.idempotency_key)))
            // The notifier's clock (the demo's simulated day), not the moment lettre builds it.
            .date(
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(m.now_ms).unwrap_or(0)),
            );
        let own = m.reply_to.and_then(|a| a.parse::<Mailbox>().ok());
        if let Some(rt) = own.as_ref().or(self.reply_to.as_ref()) {
            b = b.reply_to(rt.clone());
        }
        b.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(r.email_text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(r.email_html.clone()),
                ),
        )
        .map_err(|e| SendError::Permanent {
            detail: format!("message could not be built: {e}"),
        })
    }
}

impl Provider for Email {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let msg = self.message(m)?;
            let smtp = match &self.transport {
                Transport::Smtp(t) => t,
                Transport::Files(f) => {
                    return match f.send(msg).await {
                        Ok(file) => Ok(Accepted {
                            provider_id: Some(format!("<{}@forewarn>", m.idempotency_key)),
                            detail: format!("written as {file}.eml"),
                        }),
                        Err(e) => Err(SendError::Retry {
                            detail: format!("e-mail file could not be written: {e}"),
                            after: None,
                        }),
                    };
                }
            };
            match smtp.send(msg).await {
                Ok(resp) => Ok(Accepted {
                    provider_id: Some(format!("<{}@forewarn>", m.idempotency_key)),
                    detail: format!("smtp {}", resp.code()),
                }),
                Err(e) if e.is_permanent() => Err(SendError::Permanent {
                    detail: format!(
                        "smtp rejected the message ({})",
                        e.status().map(|c| c.to_string()).unwrap_or_default()
                    ),
                }),
                Err(e) => Err(SendError::Retry {
                    detail: if e.is_transient() {
                        format!(
                            "smtp temporary failure ({})",
                            e.status().map(|c| c.to_string()).unwrap_or_default()
                        )
                    } else {
                        "smtp server unreachable".into()
                    },
                    after: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::Rendered;
    use crate::notify::Channel;

    #[tokio::test]
    async fn an_outbox_dir_gets_each_message_as_an_eml_file_with_its_own_reply_address() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = EmailConfig {
            from: "Service <service@forewarn.example>".into(),
            outbox_dir: Some(dir.path().join("mail")),
            ..Default::default()
        };
        let email = Email::build(&cfg, Duration::from_secs(5)).unwrap();
        let rendered = Rendered {
            locale: "th".into(),
            email_subject: "แจ้งเตือน".into(),
            email_text: "ตกลงไหม".into(),
            email_html: "<p>ตกลงไหม</p>".into(),
            ..Default::default()
        };
        let json = serde_json::json!({});
        let m = Outgoing {
            channel: Channel::Email,
            address: "ops@customer.example",
            rendered: &rendered,
            json: &json,
            idempotency_key: "k-1",
            status_callback: None,
            reply_to: Some("service+tok@forewarn.example"),
            // 2026-01-02T03:04:05Z on the notifier's clock.
            now_ms: 1_767_323_045_000,
        };
        let accepted = email.send(&m).await.unwrap();
        assert_eq!(accepted.provider_id.as_deref(), Some("<k-1@forewarn>"));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("mail"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let eml = std::fs::read_to_string(&files[0]).unwrap();
        assert!(eml.contains("To: ops@customer.example"), "{eml}");
        assert!(
            eml.contains("Reply-To: service+tok@forewarn.example"),
            "{eml}"
        );
        assert!(eml.contains("Message-ID: <k-1@forewarn>"), "{eml}");
        assert!(
            eml.contains("Date: Fri, 02 Jan 2026 03:04:05 +0000"),
            "dated by the notifier's clock: {eml}"
        );
    }
}
