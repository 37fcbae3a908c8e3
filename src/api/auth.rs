//! Who may call what. Every protected route takes one extractor, [`Authorized<N>`], where `N`
//! names the scope it needs ([`NeedsRead`], [`NeedsWrite`], [`NeedsAdmin`]); routes served by
//! other modules (the notifier's timeline) get the same extractor as a route layer.
//!
//! Scopes are ordered: `admin` can do what `write` can, `write` what `read` can.
//!
//! Tokens come from `api.tokens` (and `FOREWARN_API_TOKEN`) and from `api.tokens_file`, which is
//! re-read on SIGHUP and when its modification time or size changes, so tokens rotate without
//! a restart. Only each token's SHA-256 is kept; a presented token is hashed and compared with
//! every known digest in constant time (`subtle`), so neither its length nor which token it
//! nearly matched shows in the timing.

use super::error::ApiError;
use crate::secret::Secret;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Tickets, devices, customers (with their contacts), timelines, gaps.
    Read,
    /// Read, plus ticket transitions and device and customer upserts.
    Write,
    /// Write, plus rejected payloads and quarantined records (raw device input).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
    fn code(self) -> u8 {
        self as u8 + 1
    }
    fn from_code(c: u8) -> Option<Scope> {
        match c {
            1 => Some(Scope::Read),
            2 => Some(Scope::Write),
            3 => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Why the tokens file could not be used. Never carries a line's text (it may hold a token).
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path} line {line}: expected `<read|write|admin> <token>`")]
    Line { path: String, line: usize },
}

#[derive(Clone)]
struct Known {
    digest: [u8; 32],
    scope: Scope,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The file's identity for change detection: modification time and size.
type Stamp = Option<(std::time::SystemTime, u64)>;

/// The token table and whether reads need a token. Shared by every listener.
pub struct Auth {
    protect_reads: bool,
    configured: Vec<Known>,
    file: Option<PathBuf>,
    from_file: RwLock<Vec<Known>>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("protect_reads", &self.protect_reads)
            .field(
                "tokens",
                &(self.configured.len() + self.from_file.read().len()),
            )
            .field("file", &self.file)
            .finish()
    }
}

impl Auth {
    /// Builds the table from the config; reads the tokens file once (an error is a config error).
    pub fn new(cfg: &super::Config) -> Result<Auth, TokensFileError> {
        let auth = Auth {
            protect_reads: cfg.protect_reads,
            configured: cfg
                .tokens
                .iter()
                .filter(|t| !t.secret().is_empty())
                .map(|t| Known {
                    digest: digest(t.secret().expose()),
                    scope: t.scope(),
                })
                .collect(),
            file: cfg.tokens_file.clone(),
            from_file: RwLock::new(Vec::new()),
            stamp: Mutex::new(None),
        };
        auth.reload()?;
        Ok(auth)
    }

    /// Whether any token at all is configured (none: every protected call is refused).
    pub fn has_tokens(&self) -> bool {
        !self.configured.is_empty() || !self.from_file.read().is_empty()
    }

    /// Whether tokens come from a file too (`api.tokens_file`).
    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Re-reads the tokens file. On error the tokens read before stay in force.
    pub fn reload(&self) -> Result<usize, TokensFileError> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let stamp = file_stamp(path);
        let list = read_tokens_file(path)?;
        let n = list.len();
        *self.from_file.write() = list;
        *self.stamp.lock() = stamp;
        Ok(n)
    }

    /// Re-reads the tokens file if its modification time or size changed since the last read.
    pub fn reload_if_changed(&self) -> Option<Result<usize, TokensFileError>> {
        let path = self.file.as_ref()?;
        let now = file_stamp(path);
        if now == *self.stamp.lock() {
            return None;
        }
        Some(self.reload())
    }

    /// The scope of the presented token, or `None` when it matches no known token.
    fn scope_of(&self, presented: &str) -> Option<Scope> {
        let d = digest(presented);
        let from_file = self.from_file.read();
        // Every digest is compared; the best matching scope is selected without branching.
        let mut best = 0u8;
        for k in self.configured.iter().chain(from_file.iter()) {
            let hit = d.ct_eq(&k.digest);
            let better = hit & k.scope.code().ct_gt(&best);
            best = u8::conditional_select(&best, &k.scope.code(), better);
        }
        Scope::from_code(best)
    }

    /// Checks the request's bearer token against the scope the route needs.
    pub fn check(&self, headers: &HeaderMap, needs: Scope) -> Result<Caller, ApiError> {
        if needs == Scope::Read && !self.protect_reads {
            return Ok(Caller { scope: None });
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(presented) = presented else {
            return Err(ApiError::unauthorized("a bearer token is required"));
        };
        let Some(scope) = self.scope_of(presented) else {
            return Err(ApiError::unauthorized("the bearer token is not valid"));
        };
        if scope < needs {
            return Err(ApiError::forbidden(format!(
                "this token's scope is {}; the call needs {}",
                scope.as_str(),
                needs.as_str()
            )));
        }
        Ok(Caller { scope: Some(scope) })
    }
}

fn file_stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// `<scope> <token>` per line; blank lines and `#` comments are skipped.
fn read_tokens_file(path: &Path) -> Result<Vec<Known>, TokensFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || TokensFileError::Line {
            path: path.display().to_string(),
            line: i + 1,
        };
        let mut parts = line.split_whitespace();
        let scope = parts.next().and_then(Scope::parse).ok_or_else(bad)?;
        let token = Secret::new(parts.next().ok_or_else(bad)?);
        if parts.next().is_some() {
            return Err(bad());
        }
        out.push(Known {
            digest: digest(token.expose()),
            scope,
        });
    }
    Ok(out)
}

/// Who is calling: the scope of their token (`None` on an open read).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub scope: Option<Scope>,
}

/// The scope a route needs, as a type.
pub trait Needs: Send + Sync + 'static {
    const SCOPE: Scope;
}
pub struct NeedsRead;
pub struct NeedsWrite;
pub struct NeedsAdmin;
impl Needs for NeedsRead {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for NeedsWrite {
    const SCOPE: Scope = Scope::Write;
}
impl Needs for NeedsAdmin {
    const SCOPE: Scope = Scope::Admin;
}

/// The one auth extractor: present in a handler's arguments, the request has passed the check
/// for scope `N` (401 without a valid token, 403 with one of a lower scope).
pub struct Authorized<N: Needs> {
    pub caller: Caller,
    _needs: PhantomData<N>,
}

impl<S, N> FromRequestParts<S> for Authorized<N>
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
    N: Needs,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        let caller = auth.check(&parts.headers, N::SCOPE)?;
        Ok(Authorized {
            caller,
            _needs: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::config::{ScopedToken, TokenConfig};

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    fn auth(dir: &Path) -> Auth {
        let cfg = crate::api::Config {
            tokens: vec![
                TokenConfig::Bare("all-of-it".into()),
                TokenConfig::Scoped(ScopedToken {
                    token: "just-looking".into(),
                    scope: Scope::Read,
                }),
            ],
            tokens_file: Some(dir.join("tokens")),
            ..Default::default()
        };
        std::fs::write(dir.join("tokens"), "# rotated weekly\nwrite from-file-1\n").unwrap();
        Auth::new(&cfg).unwrap()
    }

    #[test]
    fn scopes_are_ordered_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        assert_eq!(
            a.check(&headers("just-looking"), Scope::Read)
                .unwrap()
                .scope,
            Some(Scope::Read)
        );
        let e = a.check(&headers("just-looking"), Scope::Write).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(a.check(&headers("from-file-1"), Scope::Write).is_ok());
        assert_eq!(
            a.check(&headers("from-file-1"), Scope::Admin)
                .unwrap_err()
                .status,
            403
        );
        assert!(a.check(&headers("all-of-it"), Scope::Admin).is_ok());
        assert_eq!(
            a.check(&headers("all-of-it-"), Scope::Read)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            a.check(&HeaderMap::new(), Scope::Read).unwrap_err().status,
            401
        );
    }

    #[test]
    fn the_tokens_file_rotates_and_a_bad_file_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        assert!(a.reload_if_changed().is_none());
        std::fs::write(dir.path().join("tokens"), "read from-file-2 \n\n").unwrap();
        assert_eq!(a.reload_if_changed().unwrap().unwrap(), 1);
        assert!(a.check(&headers("from-file-1"), Scope::Read).is_err());
        assert!(a.check(&headers("from-file-2"), Scope::Read).is_ok());
        std::fs::write(dir.path().join("tokens"), "superuser secret-text-here\n").unwrap();
        let e = a.reload().unwrap_err().to_string();
        assert!(
            e.contains("line 1") && !e.contains("secret-text-here"),
            "{e}"
        );
        assert!(a.check(&headers("from-file-2"), Scope::Read).is_ok());
    }
}
