//! Board sign-in (pure apart from the clock): sessions held in memory behind an HttpOnly,
//! SameSite=Strict cookie (Secure behind TLS), a CSRF token per session that every form
//! carries, and roles from the API token's scope: `read` is a viewer, `write` a dispatcher,
//! `admin` an admin.
//!
//! Only a digest of the session id is kept, so the table never holds what the cookie holds.
//! Sessions do not survive a restart: people sign in again.

use crate::api::Scope;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "fw_board";
/// The sign-in form's own CSRF cookie (there is no session yet to hold the token).
pub const LOGIN_COOKIE: &str = "fw_board_login";
/// At most this many sessions are kept; beyond it the one closest to expiring goes.
const MAX_SESSIONS: usize = 10_000;

/// What a signed-in person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page; no actions.
    Viewer,
    /// Works tickets: acknowledge, assign, propose, schedule, resolve, dismiss.
    Dispatcher,
    /// A dispatcher who may also change technicians.
    Admin,
}

impl Role {
    pub fn from_scope(s: Scope) -> Role {
        match s {
            Scope::Read => Role::Viewer,
            Scope::Write => Role::Dispatcher,
            Scope::Admin => Role::Admin,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Dispatcher => "dispatcher",
            Role::Admin => "admin",
        }
    }
    pub fn can_act(self) -> bool {
        self >= Role::Dispatcher
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// The name people gave at sign-in (shown in ticket histories as `board:<name>`).
    pub name: String,
    /// The token every form of this session must carry.
    pub csrf: String,
    /// The API token it signed in with, kept in memory only: in cluster mode the board asks the
    /// other instances for their tickets with it, as the API forwards a caller's token.
    pub bearer: crate::secret::Secret,
    expires: Instant,
}

impl Session {
    /// Whether a form's token is this session's (constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        same(&self.csrf, presented)
    }
}

/// Constant-time equality of two tokens (unequal lengths are unequal).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The sessions of one daemon.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session; returns its id (for the cookie) and the session.
    pub fn create(&self, role: Role, name: &str) -> (String, Session) {
        self.create_at(role, name, Instant::now())
    }

    /// [`Sessions::create`], keeping the API token the person signed in with.
    pub fn create_with_bearer(
        &self,
        role: Role,
        name: &str,
        bearer: crate::secret::Secret,
    ) -> (String, Session) {
        let (id, mut s) = self.create_at(role, name, Instant::now());
        s.bearer = bearer.clone();
        if let Some(kept) = self.map.lock().get_mut(&digest(&id)) {
            kept.bearer = bearer;
        }
        (id, s)
    }

    fn create_at(&self, role: Role, name: &str, now: Instant) -> (String, Session) {
        let id = random_token();
        let s = Session {
            role,
            name: name.chars().take(64).collect(),
            csrf: random_token(),
            bearer: crate::secret::Secret::default(),
            expires: now + self.ttl,
        };
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(k) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&k);
            }
        }
        map.insert(digest(&id), s.clone());
        (id, s)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock();
        let k = digest(id);
        match map.get(&k) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.map.lock().remove(&digest(id));
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/board`, `Secure` when asked.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/board; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
pub fn over_tls(headers: &axum::http::HeaderMap, public_url: &str) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    forwarded || public_url.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn a_session_lives_until_its_ttl_and_can_be_ended() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (id, sess) = s.create_at(Role::Dispatcher, "Ana", t0);
        assert_eq!(sess.role, Role::Dispatcher);
        assert!(s.get_at(&id, t0 + Duration::from_secs(59)).is_some());
        assert!(s.get_at("not-a-session", t0).is_none());
        assert!(s.get_at(&id, t0 + Duration::from_secs(61)).is_none());
        let (id2, _) = s.create_at(Role::Viewer, "Bo", t0);
        s.end(&id2);
        assert!(s.get_at(&id2, t0).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let s = Sessions::new(Duration::from_secs(60));
        let (_, sess) = s.create(Role::Dispatcher, "Ana");
        assert_eq!(sess.csrf.len(), 64);
        assert!(sess.csrf_ok(&sess.csrf.clone()));
        assert!(!sess.csrf_ok(""));
        assert!(!sess.csrf_ok(&sess.csrf[..63]));
        let mut other = sess.csrf.clone();
        other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
        assert!(!sess.csrf_ok(&other));
        // Two sessions never share a token.
        let (_, b) = s.create(Role::Dispatcher, "Bo");
        assert_ne!(sess.csrf, b.csrf);
    }

    #[test]
    fn roles_follow_token_scopes() {
        assert_eq!(Role::from_scope(Scope::Read), Role::Viewer);
        assert!(!Role::Viewer.can_act());
        assert!(Role::from_scope(Scope::Write).can_act());
        assert_eq!(Role::from_scope(Scope::Admin), Role::Admin);
    }

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; fw_board=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(COOKIE, "abc", Duration::from_secs(60), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(COOKIE, "abc", Duration::from_secs(60), false).contains("Secure"));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(over_tls(&h, "http://x"));
        assert!(over_tls(&HeaderMap::new(), "https://x"));
        assert!(!over_tls(&HeaderMap::new(), "http://x"));
    }
}
