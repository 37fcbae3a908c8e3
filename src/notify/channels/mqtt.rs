//! MQTT: the message as JSON, QoS 1, to the topic the customer's app subscribes to (the
//! customer's `mqtt` contact). One short connection per message: notifications are rare and this
//! keeps the channel independent of the ingest connection. Delivery counts once the broker
//! acknowledges (PUBACK); the JSON carries the idempotency key for the app to de-duplicate.

use super::{Accepted, Outgoing, Provider, SendError, SendFuture};
use crate::notify::config::MqttConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing as MqttOut, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;

pub struct Mqtt {
    cfg: MqttConfig,
    timeout: Duration,
    /// For `mqtts://`: the TLS configuration, or why it could not be built (the CA file).
    tls: Option<Result<Arc<rustls::ClientConfig>, crate::ingest::mqtt::MqttError>>,
}

impl Mqtt {
    pub fn new(cfg: &MqttConfig, timeout: Duration) -> Mqtt {
        let tls = match crate::ingest::mqtt::parse_url(&cfg.url) {
            Ok((true, _, _)) => Some({
                crate::tls::install_crypto();
                crate::ingest::mqtt::tls_client_config(cfg.ca_file.as_deref()).map(Arc::new)
            }),
            _ => None,
        };
        Mqtt {
            cfg: cfg.clone(),
            timeout,
            tls,
        }
    }
}

/// `mqtt://host:port` or `mqtts://host:port` (checked by the configuration).
fn host_port(url: &str) -> Option<(String, u16)> {
    crate::ingest::mqtt::parse_url(url)
        .ok()
        .map(|(_, host, port)| (host, port))
}

impl Provider for Mqtt {
    fn send<'a>(&'a self, m: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let (host, port) = host_port(&self.cfg.url).ok_or_else(|| SendError::Permanent {
                detail: "notify.mqtt.url must be mqtt://host:port".into(),
            })?;
            let id: String = m.idempotency_key.chars().take(12).collect();
            let mut o = MqttOptions::new(format!("{}-{id}", self.cfg.client_id), host, port);
            o.set_keep_alive(Duration::from_secs(10));
            if let (Some(u), Some(p)) = (&self.cfg.username, &self.cfg.password) {
                o.set_credentials(u.clone(), p.0.clone());
            }
            match &self.tls {
                None => {}
                Some(Ok(tls)) => {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                Some(Err(e)) => {
                    return Err(SendError::Permanent {
                        detail: format!("notify.mqtt.ca_file: {e}"),
                    })
                }
            }
            let (client, mut ev) = AsyncClient::new(o, 4);
            let body = serde_json::to_vec(m.json).unwrap_or_default();
            if client
                .try_publish(m.address, QoS::AtLeastOnce, false, body)
                .is_err()
            {
                return Err(SendError::Permanent {
                    detail: "invalid MQTT topic".into(),
                });
            }
            let wait = async {
                loop {
                    match ev.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                        Ok(Event::Outgoing(MqttOut::Disconnect)) => {}
                        Ok(_) => {}
                        Err(_) => {
                            return Err(SendError::Retry {
                                detail: "MQTT broker unreachable".into(),
                                after: None,
                            })
                        }
                    }
                }
            };
            let r = match tokio::time::timeout(self.timeout, wait).await {
                Ok(r) => r,
                Err(_) => Err(SendError::Retry {
                    detail: "MQTT publish timed out".into(),
                    after: None,
                }),
            };
            let _ = client.try_disconnect();
            r.map(|_| Accepted {
                provider_id: None,
                detail: "broker acknowledged".into(),
            })
        })
    }
}
