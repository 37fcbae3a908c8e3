//! Field-service dispatch: every ticket change goes out from the durable outbox (queue
//! `dispatch`, written in the same commit as the ticket) to
//! - MQTT `{dispatch.topic_prefix}/{device_id}/{failure_mode}`, QoS 1, retained: the ticket's
//!   current state as JSON;
//! - the dispatch webhook (when configured): a POST of `{"event": "ticket.<kind>", "ticket": …}`
//!   signed with `X-Forewarn-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//!
//! A row is removed only once both targets took it; failures retry with exponential backoff, and
//! after `dispatch.max_attempts` the row moves to the `dispatch_dead` queue (counted, logged).
//! Rows of one (device, mode) go out in commit order, so the retained message is the latest state.

use crate::domain::{Dur, Ticket};
use crate::engine::Change;
use crate::ingest::mqtt::Backoff;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The outbox queue of field-service dispatch, written in the same commit as the ticket change.
pub const QUEUE: &str = "dispatch";
/// Rows that used up `dispatch.max_attempts`.
pub const DEAD_QUEUE: &str = "dispatch_dead";

/// Why one webhook delivery failed. Neither names the URL: it may carry a token in its query.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Http(String),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
}

impl DeliveryError {
    /// What went wrong, with the URL reduced to scheme, host and path (never reqwest's own
    /// message, which carries the whole URL).
    fn http(url: &str, e: reqwest::Error) -> DeliveryError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_redirect() {
            "redirected (not followed)"
        } else {
            "request failed"
        };
        DeliveryError::Http(format!("{}: {what}", crate::secret::redact_url(url)))
    }
}

/// One pending dispatch of a ticket change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchRow {
    /// `opened`, `updated`, `settled` or `transition`.
    pub event: String,
    pub ticket: Ticket,
    pub mqtt_done: bool,
    pub webhook_done: bool,
    pub attempts: u32,
    /// Wall-clock epoch ms before which no retry is made.
    pub next_attempt_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl DispatchRow {
    pub fn new(c: &Change, has_webhook: bool) -> DispatchRow {
        DispatchRow {
            event: c.kind.as_str().to_string(),
            ticket: c.ticket.clone(),
            mqtt_done: false,
            webhook_done: !has_webhook,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
        }
    }
}

/// The webhook body of a row.
pub fn webhook_body(row: &DispatchRow) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": format!("ticket.{}", row.event),
        "ticket": row.ticket,
    }))
    .unwrap_or_default()
}

/// The delivery worker: reads the `dispatch` outbox and delivers each row to MQTT and the
/// webhook.
pub struct Dispatcher {
    cfg: Config,
    store: Store,
    metrics: Metrics,
    /// Notified by every commit that adds rows, and by a broker (re)connection.
    wake: Arc<Notify>,
    /// Kept by the MQTT driver: retained publishes wait for the broker rather than fail.
    broker_connected: Arc<AtomicBool>,
    client: crate::ingest::mqtt::Client,
    http: reqwest::Client,
}

impl Dispatcher {
    pub fn new(
        cfg: Config,
        store: Store,
        metrics: Metrics,
        wake: Arc<Notify>,
        broker_connected: Arc<AtomicBool>,
        client: crate::ingest::mqtt::Client,
    ) -> Result<Dispatcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the signed body somewhere the configuration did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Dispatcher {
            cfg,
            store,
            metrics,
            wake,
            broker_connected,
            client,
            http,
        })
    }

    /// Delivers outbox rows until shutdown. Woken by commits; also retries on a timer.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.round().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn round(&self) {
        let store = &self.store;
        let rows = match store.outbox::<DispatchRow>(QUEUE) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("dispatch outbox unreadable: {e}");
                return;
            }
        };
        let depth = &self.metrics.outbox_depth;
        depth.with_label_values(&[QUEUE]).set(rows.len() as i64);
        let cfg = &self.cfg;
        let m = &self.metrics.dispatch;
        // (device, mode) pairs with an undelivered earlier row: later rows wait (ordering).
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut delivered: Vec<Vec<u8>> = Vec::new();
        for (key, mut row) in rows {
            let pair = (
                row.ticket.device_id.clone(),
                row.ticket.failure_mode.clone(),
            );
            if blocked.contains(&pair) {
                continue;
            }
            let now = chrono::Utc::now().timestamp_millis();
            if row.next_attempt_ms > now {
                blocked.insert(pair);
                continue;
            }
            let mut error: Option<String> = None;
            let mut waiting_for_broker = false;
            let mut progressed = false;
            if !row.mqtt_done {
                if self.broker_connected.load(Ordering::Relaxed) {
                    let topic = format!(
                        "{}/{}/{}",
                        cfg.topic_prefix, row.ticket.device_id, row.ticket.failure_mode
                    );
                    let payload = serde_json::to_vec(&row.ticket).unwrap_or_default();
                    // Queued into the client's session: with clean_session = false rumqttc
                    // re-sends it after a reconnect until the broker acknowledges it.
                    match self
                        .client
                        .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
                        .await
                    {
                        Ok(()) => {
                            row.mqtt_done = true;
                            m.with_label_values(&["mqtt", "ok"]).inc();
                        }
                        Err(e) => {
                            m.with_label_values(&["mqtt", "error"]).inc();
                            error = Some(format!("mqtt: {e}"));
                        }
                    }
                } else {
                    // Not a failed attempt: the row simply waits for the connection (the
                    // connect wakes this worker).
                    waiting_for_broker = true;
                }
            }
            if !row.webhook_done {
                match self.post(&row, &key).await {
                    Ok(()) => {
                        row.webhook_done = true;
                        progressed = true;
                        m.with_label_values(&["webhook", "ok"]).inc();
                    }
                    Err(e) => {
                        m.with_label_values(&["webhook", "error"]).inc();
                        error = Some(format!("webhook: {e}"));
                    }
                }
            }
            let res = if row.mqtt_done && row.webhook_done {
                // Removed with the round's other deliveries in one flushed batch below: a
                // crash before it only repeats these deliveries (at least once, as ever).
                delivered.push(key);
                Ok(())
            } else if error.is_none() {
                // Only waiting for the broker; keep any webhook progress.
                debug_assert!(waiting_for_broker);
                blocked.insert(pair);
                if progressed {
                    store.outbox_put(&key, &row)
                } else {
                    Ok(())
                }
            } else {
                row.attempts += 1;
                row.last_error = error.clone();
                if row.attempts >= cfg.max_attempts.max(1) {
                    tracing::error!(
                        ticket = %row.ticket.id,
                        "dispatch gave up after {} attempts: {}",
                        row.attempts,
                        error.as_deref().unwrap_or("")
                    );
                    m.with_label_values(&["any", "dead"]).inc();
                    let mut tx = store.tx();
                    tx.push_outbox(DEAD_QUEUE, &row);
                    tx.remove_raw(&key);
                    store.commit(tx)
                } else {
                    let mut b = Backoff::new(cfg.retry_min.std(), cfg.retry_max.std());
                    let mut wait = Duration::ZERO;
                    for _ in 0..row.attempts {
                        wait = b.next_delay();
                    }
                    row.next_attempt_ms = now + wait.as_millis() as i64;
                    tracing::warn!(
                        ticket = %row.ticket.id,
                        attempt = row.attempts,
                        "dispatch failed, retrying in {wait:?}: {}",
                        error.as_deref().unwrap_or("")
                    );
                    blocked.insert(pair);
                    store.outbox_put(&key, &row)
                }
            };
            if let Err(e) = res {
                tracing::error!("dispatch outbox update failed: {e}");
            }
        }
        if !delivered.is_empty() {
            let mut tx = store.tx();
            for key in &delivered {
                tx.remove_raw(key);
            }
            if let Err(e) = store.commit(tx) {
                tracing::error!("dispatch outbox update failed: {e}");
            }
        }
        depth
            .with_label_values(&[QUEUE])
            .set(store.outbox_len(QUEUE) as i64);
    }

    async fn post(&self, row: &DispatchRow, key: &[u8]) -> Result<(), DeliveryError> {
        let cfg = &self.cfg;
        let Some(url) = &cfg.webhook_url else {
            return Ok(());
        };
        let body = webhook_body(row);
        let mut req = self
            .http
            .post(url.expose())
            .header("content-type", "application/json")
            // Stable per row: receivers can drop repeats of a delivery retried after a timeout.
            .header("x-forewarn-delivery", hex::encode(key));
        if let Some(secret) = &cfg.webhook_secret {
            req = req.header(
                "x-forewarn-signature",
                crate::sign::webhook_signature(secret.expose().as_bytes(), &body),
            );
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::http(url.expose(), e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(resp.status()))
        }
    }
}

/// `[dispatch]`: where ticket changes go for field service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ticket changes are published here, retained, QoS 1: `{prefix}/{device_id}/{failure_mode}`.
    pub topic_prefix: String,
    /// Field-service webhook (unset: MQTT only). A secret: a token may ride in its query.
    pub webhook_url: Option<Secret>,
    /// HMAC-SHA256 secret for `X-Forewarn-Signature` (also `FOREWARN_DISPATCH_SECRET`).
    pub webhook_secret: Option<Secret>,
    /// Delivery attempts of a ticket change to the webhook; then it moves to the dead queue
    /// (counted, logged).
    pub max_attempts: u32,
    /// Retry backoff between webhook attempts: exponential with jitter, from this...
    pub retry_min: Dur,
    /// ...up to this.
    pub retry_max: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topic_prefix: "forewarn/tickets".into(),
            webhook_url: None,
            webhook_secret: None,
            max_attempts: 20,
            retry_min: Dur::secs(1),
            retry_max: Dur::secs(300),
        }
    }
}
