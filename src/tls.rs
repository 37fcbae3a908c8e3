//! The TLS crypto provider, installed once per process: rustls panics at run time when it finds
//! none (or two), and MQTT over TLS, the webhook client and the notification providers all use it.

/// Installs rustls' ring provider; later calls (and a provider already installed) are no-ops.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
