//! An in-process MQTT broker (rumqttd) for tests and `forewarn demo`.
//!
//! rumqttd's `Broker::start()` blocks its thread and has no shutdown, and it cannot bind port 0:
//! we pick a free port, start it on a background thread and poll until it accepts connections.
//! The thread lives until the process exits. rumqttd keeps persistent sessions (clean_session =
//! false) in memory, which is what the daemon's redelivery guarantees need.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: no free port: {0}")]
    Port(std::io::Error),
    #[error("embedded broker: thread: {0}")]
    Thread(std::io::Error),
    #[error("embedded broker did not accept connections on {0} within 10s")]
    NotUp(SocketAddr),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

impl EmbeddedBroker {
    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Unacknowledged QoS 1 messages per client. forewarn acknowledges a group after its
    /// commit, so this window divided by the commit time bounds its intake of small messages.
    pub max_inflight: usize,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            max_payload_bytes: 1024 * 1024,
            max_inflight: 1000,
        }
    }
}

fn free_port() -> Result<u16, BrokerError> {
    // Bind port 0, read the port the kernel chose, release it. Racy in principle (another
    // process could take it before rumqttd binds), which the accept poll below detects.
    let l = TcpListener::bind("127.0.0.1:0").map_err(BrokerError::Port)?;
    let port = l.local_addr().map_err(BrokerError::Port)?.port();
    Ok(port)
}

/// Starts rumqttd on a free loopback port and waits until it accepts connections.
pub fn start(opts: &BrokerOptions) -> Result<EmbeddedBroker, BrokerError> {
    let port = free_port()?;
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([(
            "v4".to_string(),
            rumqttd::ServerSettings {
                name: "v4".into(),
                listen: addr,
                tls: None,
                next_connection_delay_ms: 1,
                connections: rumqttd::ConnectionSettings {
                    connection_timeout_ms: 60_000,
                    max_payload_size: opts.max_payload_bytes,
                    max_inflight_count: opts.max_inflight,
                    auth: None,
                    external_auth: None,
                    dynamic_filters: true,
                },
            },
        )])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker { addr });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotUp(addr))
}
