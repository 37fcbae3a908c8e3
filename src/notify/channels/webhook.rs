//! The customer's own webhook: a JSON POST signed with HMAC-SHA256
//! (`X-Forewarn-Signature: sha256=<hex>` over the exact body), with `Idempotency-Key`.

use super::{classify, Accepted, Outgoing, Provider, SendFuture};

pub struct Webhook {
    secret: String,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(secret: &str, http: reqwest::Client) -> Webhook {
        Webhook {
            secret: secret.to_string(),
            http,
        }
    }
}

impl Provider for Webhook {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(m.json).unwrap_or_default();
            let r = self
                .http
                .post(m.address)
                .header("Content-Type", "application/json")
                .header(
                    "X-Forewarn-Signature",
                    crate::sign::webhook_signature(self.secret.as_bytes(), &body),
                )
                .header("Idempotency-Key", m.idempotency_key)
                .body(body)
                .send()
                .await;
            let (status, _) = classify(r).await?;
            Ok(Accepted {
                provider_id: None,
                detail: format!("webhook answered {status}"),
            })
        })
    }
}
