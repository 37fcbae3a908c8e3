//! `[api]`: where the HTTP API listens, who may use it, and how much a client may hold.

use super::auth::Scope;
use crate::domain::Dur;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API proper (`/api/v1/*`, `/metrics`, health); keep it on a private address.
    pub listen: String,
    /// Where the public routes (`/notify/v1/*`: provider callbacks, the self-service page) are
    /// served on their own. Unset: on `listen`, beside the API.
    pub public_listen: Option<String>,
    /// Bearer tokens: a bare string has every scope; `{ token = "…", scope = "read" }` one
    /// scope (also `FOREWARN_API_TOKEN`, with every scope).
    pub tokens: Vec<TokenConfig>,
    /// A file of `<scope> <token>` lines, re-read on SIGHUP and when it changes: tokens rotate
    /// without a restart.
    pub tokens_file: Option<PathBuf>,
    /// Reads need a token (scope `read`). `false` is accepted only with a loopback `listen`.
    pub protect_reads: bool,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// Public base URL for links in customer messages (self-service pages).
    pub public_url: String,
    /// A client must send a request's whole header within this; it also bounds how long a
    /// kept-alive connection may wait for its next request.
    pub header_read_timeout: Dur,
    /// A request (body included) must be answered within this, or gets 408.
    pub request_timeout: Dur,
    /// A connection on which no byte moves either way for this long is closed (slow readers).
    pub idle_timeout: Dur,
    /// Open connections per listener; more are closed as they are accepted.
    pub max_connections: usize,
    /// Requests handled at once per listener; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
}

/// One entry of `api.tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum TokenConfig {
    /// Every scope: what a token could do before scopes existed.
    Bare(Secret),
    Scoped(ScopedToken),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    pub token: Secret,
    pub scope: Scope,
}

impl From<&str> for TokenConfig {
    /// A bare token, with every scope.
    fn from(s: &str) -> TokenConfig {
        TokenConfig::Bare(s.into())
    }
}

impl TokenConfig {
    pub fn secret(&self) -> &Secret {
        match self {
            TokenConfig::Bare(s) => s,
            TokenConfig::Scoped(t) => &t.token,
        }
    }
    pub fn scope(&self) -> Scope {
        match self {
            TokenConfig::Bare(_) => Scope::Admin,
            TokenConfig::Scoped(t) => t.scope,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            public_listen: None,
            tokens: Vec::new(),
            tokens_file: None,
            protect_reads: true,
            max_body_bytes: 64 * 1024,
            public_url: "http://127.0.0.1:8080".into(),
            header_read_timeout: Dur::secs(10),
            request_timeout: Dur::secs(30),
            idle_timeout: Dur::secs(60),
            max_connections: 1024,
            max_concurrent_requests: 128,
        }
    }
}

impl Config {
    /// Checks that the values fit together; `(key, message)` on error. No I/O.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let listen: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            (
                "listen",
                "must be an address like 127.0.0.1:8080".to_string(),
            )
        })?;
        if let Some(p) = &self.public_listen {
            let public: std::net::SocketAddr = p.parse().map_err(|_| {
                (
                    "public_listen",
                    "must be an address like 0.0.0.0:8443".to_string(),
                )
            })?;
            if public == listen && listen.port() != 0 {
                return Err((
                    "public_listen",
                    "must differ from api.listen (unset it to serve both on one listener)".into(),
                ));
            }
        }
        if !self.protect_reads && !listen.ip().is_loopback() {
            return Err((
                "protect_reads",
                format!(
                    "false is allowed only when api.listen is a loopback address, not {}: \
                     anyone who reaches {} could read customers' contacts and tickets",
                    listen.ip(),
                    self.listen
                ),
            ));
        }
        for t in &self.tokens {
            if t.secret().trim().is_empty() {
                return Err(("tokens", "an empty token is not allowed".into()));
            }
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if self.max_concurrent_requests == 0 {
            return Err(("max_concurrent_requests", "must be at least 1".into()));
        }
        if self.header_read_timeout.std().is_zero() || self.request_timeout.std().is_zero() {
            return Err((
                "request_timeout",
                "header_read_timeout and request_timeout must be above 0s".into(),
            ));
        }
        if self.idle_timeout < self.request_timeout {
            return Err((
                "idle_timeout",
                "must be at least api.request_timeout (a slow answer is not idleness)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_reads_are_refused_off_loopback() {
        let mut c = Config {
            protect_reads: false,
            ..Config::default()
        };
        c.validate().unwrap();
        c.listen = "[::1]:8080".into();
        c.validate().unwrap();
        c.listen = "0.0.0.0:8080".into();
        let (key, msg) = c.validate().unwrap_err();
        assert_eq!(key, "protect_reads");
        assert!(msg.contains("loopback"), "{msg}");
        c.protect_reads = true;
        c.validate().unwrap();
    }

    #[test]
    fn tokens_are_bare_or_scoped() {
        let c: Config = toml::from_str(
            r#"tokens = ["everything-token", { token = "reader-token", scope = "read" }]"#,
        )
        .unwrap();
        assert_eq!(c.tokens[0].scope(), Scope::Admin);
        assert_eq!(c.tokens[1].scope(), Scope::Read);
        assert_eq!(c.tokens[1].secret().expose(), "reader-token");
        assert!(!format!("{c:?}").contains("reader-token"));
        assert!(toml::from_str::<Config>(r#"tokens = [{ token = "x", scope = "root" }]"#).is_err());
    }
}
