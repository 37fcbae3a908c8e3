//! `[api]`: where the HTTP API listens and who may use it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    /// Bearer tokens allowed to mutate (also `FOREWARN_API_TOKEN`).
    pub tokens: Vec<String>,
    /// Whether reads need a token too.
    pub protect_reads: bool,
    pub max_body_bytes: usize,
    /// Public base URL for links in customer messages (self-service pages).
    pub public_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            protect_reads: false,
            max_body_bytes: 64 * 1024,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}
