//! The customer's own webhook: a JSON POST signed with HMAC-SHA256
//! (`X-Forewarn-Signature: sha256=<hex>` over the exact body), with `Idempotency-Key`.

use super::{classify, Accepted, Outgoing, Provider, SendError, SendFuture};
use crate::netguard::{AddressPolicy, GuardedResolver};
use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

/// The customer's URL is someone else's choice: its own HTTP client resolves through the
/// address policy (internal addresses dropped, the connection pinned to what was checked) and
/// never follows a redirect.
pub struct Webhook {
    secret: Secret,
    policy: Arc<AddressPolicy>,
    http: reqwest::Client,
}

/// Why the webhook channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("{0}")]
    Allow(#[from] crate::netguard::GuardError),
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Webhook {
    /// `allow`: `[notify.webhook] allow`. Errors name the bad entry or the client failure.
    pub fn new(
        secret: &Secret,
        allow: &[String],
        timeout: Duration,
    ) -> Result<Webhook, WebhookSetupError> {
        let policy = Arc::new(AddressPolicy::new(allow)?);
        crate::tls::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .build()?;
        Ok(Webhook {
            secret: secret.clone(),
            policy,
            http,
        })
    }
}

impl Provider for Webhook {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            // Checked again at delivery: the contact may predate validation, or the allow-list
            // may have shrunk since.
            if let Err(e) = self.policy.check_url(m.address) {
                return Err(SendError::Permanent {
                    detail: format!("webhook address refused: {e}"),
                });
            }
            let body = serde_json::to_vec(m.json).unwrap_or_default();
            let r = self
                .http
                .post(m.address)
                .header("Content-Type", "application/json")
                .header(
                    "X-Forewarn-Signature",
                    crate::sign::webhook_signature(self.secret.expose().as_bytes(), &body),
                )
                .header("Idempotency-Key", m.idempotency_key)
                .body(body)
                .send()
                .await;
            if let Err(e) = &r {
                if let Some(g) = refused_by_policy(e) {
                    return Err(SendError::Permanent {
                        detail: format!("webhook address refused: {g}"),
                    });
                }
            }
            let (status, _) = classify(r, m.now_ms).await?;
            Ok(Accepted {
                provider_id: None,
                detail: format!("webhook answered {status}"),
            })
        })
    }
}

/// The policy's refusal, when that is why the request failed (the resolver found only internal
/// addresses): permanent, unlike a connection failure.
fn refused_by_policy(e: &reqwest::Error) -> Option<&crate::netguard::GuardError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(g) = err.downcast_ref::<crate::netguard::GuardError>() {
            return Some(g);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Channel;
    use crate::notify::templates::Rendered;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback receiver: `/hook` answers 200, `/moved` redirects to `/hook`, `/busy` answers
    /// 503 with a `Retry-After` date (2026-01-01T00:05:00Z); counts hits.
    async fn receiver() -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                    async { "ok" }
                }),
            )
            .route(
                "/moved",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/hook")],
                    )
                }),
            )
            .route(
                "/busy",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(
                            axum::http::header::RETRY_AFTER,
                            "Thu, 01 Jan 2026 00:05:00 GMT",
                        )],
                    )
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (base, hits)
    }

    /// Sends at 2026-01-01T00:00:00Z by the notifier's clock.
    async fn send(hook: &Webhook, url: &str) -> Result<Accepted, SendError> {
        let rendered = Rendered {
            locale: "en".into(),
            voice_language: "en-US".into(),
            ..Default::default()
        };
        let json = serde_json::json!({"ticket": "T-1"});
        let m = Outgoing {
            channel: Channel::Webhook,
            address: url,
            rendered: &rendered,
            json: &json,
            idempotency_key: "k1",
            status_callback: None,
            reply_to: None,
            now_ms: 1_767_225_600_000,
        };
        hook.send(&m).await
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_unless_allowed_and_redirects_are_not_followed() {
        crate::tls::install_crypto();
        let (base, hits) = receiver().await;
        let secret = Secret::new("a-webhook-secret-of-16+");
        let strict = Webhook::new(&secret, &[], Duration::from_secs(5)).unwrap();
        // Loopback by address, and by a name that resolves to loopback (the resolver's check).
        let e = send(&strict, &format!("{base}/hook")).await.unwrap_err();
        assert!(matches!(e, SendError::Permanent { .. }), "{e:?}");
        let by_name = base
            .replace("127.0.0.1", "localhost")
            .replace("http:", "https:");
        let e = send(&strict, &format!("{by_name}/hook")).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        // Allow-listed: delivered over plain http.
        let allowed = Webhook::new(&secret, &["127.0.0.1".into()], Duration::from_secs(5)).unwrap();
        send(&allowed, &format!("{base}/hook")).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // A redirect is an answer, not an instruction: not followed.
        let e = send(&allowed, &format!("{base}/moved")).await.unwrap_err();
        assert!(e.to_string().contains("302"), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_date_is_waited_for_from_the_notifiers_clock() {
        crate::tls::install_crypto();
        let (base, _) = receiver().await;
        let secret = Secret::new("a-webhook-secret-of-16+");
        let hook = Webhook::new(&secret, &["127.0.0.1".into()], Duration::from_secs(5)).unwrap();
        let e = send(&hook, &format!("{base}/busy")).await.unwrap_err();
        // Five minutes after the send's own time, whatever the system's clock says.
        assert_eq!(
            e,
            SendError::Retry {
                detail: "provider answered 503 Service Unavailable".into(),
                after: Some(Duration::from_secs(300)),
            }
        );
    }
}
