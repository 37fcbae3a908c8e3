//! Secrets as a type: API tokens, provider credentials, SMTP and broker passwords, webhook keys.
//! A [`Secret`] never prints: `Debug` and `Display` show `***`, so a config dump, a panic
//! message or an error that formats its fields cannot carry one into a log. The text is reached
//! only on purpose, through [`Secret::expose`] (or `Deref`, kept for the code that predates it).

use serde::{Deserialize, Serialize, Serializer};
use std::cell::Cell;

#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

thread_local! {
    /// Set by [`redacted`]: secrets serialise as `***` (for `serve --print-config`).
    static REDACT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`Secret`] it serialises written as `***` (an empty one stays empty, so
/// the output still says which secrets are unset). Outside it, a secret serialises as its text:
/// the drills write configuration files for the daemons they start.
pub fn redacted<T>(f: impl FnOnce() -> T) -> T {
    let before = REDACT.with(|r| r.replace(true));
    let out = f();
    REDACT.with(|r| r.set(before));
    out
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REDACT.with(|r| r.get()) && !self.0.is_empty() {
            s.serialize_str("***")
        } else {
            s.serialize_str(&self.0)
        }
    }
}

/// A secret is a string in the configuration's schema, marked so the generated reference says
/// it is one (`config_reference`).
impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "writeOnly": true, "x-secret": true})
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret's text, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// `url` with what could carry a credential replaced: the user-info part and the query string.
/// For error messages and logs about a URL that came from configuration (a dispatch webhook
/// with `?token=…`, a customer's webhook).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "<url>".into(),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let marker = if url.contains('?') { "?…" } else { "" };
    format!("{scheme}://{host}{path}{marker}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn urls_lose_their_credentials_and_query() {
        assert_eq!(
            redact_url("https://user:pw@dispatch.example/hook?token=abc#x"),
            "https://dispatch.example/hook?…"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/x"), "http://127.0.0.1:9/x");
        assert_eq!(redact_url("not a url"), "<url>");
    }
}
