//! Signatures on inbound provider requests (pure, no I/O).
//!
//! **Twilio** signs every webhook in `X-Twilio-Signature`: base64 of an HMAC over the full URL
//! it requested (query string included) followed by each POST parameter, names sorted, each
//! name then its value. Two schemes:
//! - the account Auth Token with HMAC-SHA1 (no further header);
//! - a Webhooks Rule's SharedKey with the algorithm named in
//!   `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=HMAC_SHA256`.
//!
//! A JSON body is not signed as parameters: the URL carries `bodySHA256=<hex SHA-256 of the
//! body>` and the signature covers the URL alone. Like Twilio's own validator, the URL is tried
//! with and without its port (`:443`/`:80` added when absent, any port removed when present),
//! since Twilio's signing side is not consistent about it.
//!
//! **Mailgun** signs each webhook with `timestamp`, `token` and `signature` fields: `signature`
//! is the hex HMAC-SHA256 of `timestamp` followed by `token`, keyed with the HTTP webhook
//! signing key. The caller keeps a replay window on `timestamp` and remembers each `token`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The hash of a Twilio signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioAlgorithm {
    /// The account Auth Token scheme.
    HmacSha1,
    /// A SharedKey (Webhooks Rules) scheme.
    HmacSha256,
}

/// A signature algorithm named in `X-Twilio-Webhooks-Signature-Settings` that this code does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Twilio signature algorithm {0}")]
pub struct UnknownAlgorithm(pub String);

/// What `X-Twilio-Webhooks-Signature-Settings` asks for: `None` when the header is absent
/// (Auth Token, HMAC-SHA1); `Some(Err(_))` for an algorithm this code does not know (the
/// request is refused, as Twilio's validator does).
pub fn twilio_settings(header: Option<&str>) -> Option<Result<TwilioAlgorithm, UnknownAlgorithm>> {
    let h = header?;
    let alg = h
        .split(',')
        .filter_map(|part| part.split_once('='))
        .find(|(k, _)| k.trim() == "algorithm")
        .map(|(_, v)| v.trim().to_ascii_uppercase())
        .filter(|v| !v.is_empty());
    Some(match alg.as_deref() {
        None | Some("HMAC_SHA1") => Ok(TwilioAlgorithm::HmacSha1),
        Some("HMAC_SHA256") => Ok(TwilioAlgorithm::HmacSha256),
        Some(other) => Err(UnknownAlgorithm(other.to_string())),
    })
}

/// The signature Twilio puts on a request to `url` with these POST parameters.
pub fn twilio_signature(
    key: &str,
    url: &str,
    params: &[(String, String)],
    alg: TwilioAlgorithm,
) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Names sorted, and for a repeated name its distinct values sorted (as Twilio's validator).
    pairs.sort_unstable();
    pairs.dedup();
    let mut s = url.to_string();
    for (k, v) in pairs {
        s.push_str(k);
        s.push_str(v);
    }
    // HMAC accepts keys of any length: these constructors cannot fail.
    match alg {
        TwilioAlgorithm::HmacSha1 => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()) else {
                return String::new();
            };
            mac.update(s.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
        TwilioAlgorithm::HmacSha256 => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
                return String::new();
            };
            mac.update(s.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
    }
}

/// `url` as given, with its scheme's default port added (when it has no port) and with its
/// port removed (when it has one) — the forms Twilio's validator accepts. The rest of the URL
/// is kept byte for byte (it is what was signed).
pub fn url_port_forms(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_string()];
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return forms;
    };
    // '/', '?', '#' and ':' are ASCII: the positions found are character boundaries.
    let end = url
        .get(start..)
        .and_then(|r| r.find(['/', '?', '#']))
        .map_or(url.len(), |j| start + j);
    let (Some(before), Some(authority), Some(after)) =
        (url.get(..start), url.get(start..end), url.get(end..))
    else {
        return forms;
    };
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let port_at = authority
        .rfind(':')
        .filter(|i| *i >= host_start)
        .filter(|i| {
            authority
                .get(i + 1..)
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    match port_at {
        Some(i) => {
            if let Some(host) = authority.get(..i) {
                forms.push(format!("{before}{host}{after}"));
            }
        }
        None => {
            let port = if url.starts_with("https://") { 443 } else { 80 };
            forms.push(format!("{before}{authority}:{port}{after}"));
        }
    }
    forms
}

/// One inbound request as Twilio sent it.
pub struct TwilioRequest<'a> {
    /// The full URL Twilio requested (the public URL, path and query string).
    pub url: &'a str,
    /// Form parameters (empty for a JSON body).
    pub params: &'a [(String, String)],
    /// The raw body when it is JSON (checked against `bodySHA256`).
    pub json_body: Option<&'a [u8]>,
    pub signature: &'a str,
    /// `X-Twilio-Webhooks-Signature-Settings`, if sent.
    pub settings: Option<&'a str>,
}

/// Whether the request carries a valid Twilio signature: by one of the Auth Tokens (no
/// settings header) or by the SharedKey (settings header naming a known algorithm).
pub fn twilio_valid(auth_tokens: &[&str], shared_key: Option<&str>, r: &TwilioRequest) -> bool {
    let (keys, alg): (Vec<&str>, TwilioAlgorithm) = match twilio_settings(r.settings) {
        None => (auth_tokens.to_vec(), TwilioAlgorithm::HmacSha1),
        Some(Ok(alg)) => (shared_key.into_iter().collect(), alg),
        Some(Err(_)) => return false,
    };
    let body_hash = reqwest::Url::parse(r.url).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.into_owned())
    });
    let no_params: [(String, String); 0] = [];
    let params: &[(String, String)] = match (r.json_body, &body_hash) {
        (Some(body), Some(want)) => {
            let got = hex::encode(Sha256::digest(body));
            if !crate::sign::constant_time_eq(got.as_bytes(), want.as_bytes()) {
                return false;
            }
            &no_params
        }
        // A JSON body without its hash in the URL is not covered by any signature.
        (Some(_), None) => return false,
        (None, _) => r.params,
    };
    let forms = url_port_forms(r.url);
    keys.iter().filter(|k| !k.is_empty()).any(|key| {
        forms.iter().any(|url| {
            let want = twilio_signature(key, url, params, alg);
            crate::sign::constant_time_eq(want.as_bytes(), r.signature.as_bytes())
        })
    })
}

/// Mailgun's webhook signature: hex HMAC-SHA256 of `timestamp` + `token`.
pub fn mailgun_signature(signing_key: &str, timestamp: &str, token: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a Mailgun-signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailgunError {
    #[error("timestamp, token and signature are required")]
    Missing,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is outside the replay window")]
    Stale,
}

/// Checks a Mailgun signature and its timestamp against `now_ms` ± `window_ms`. The caller
/// must also refuse a `token` it has seen before (within the window).
pub fn mailgun_valid(
    signing_key: &str,
    timestamp: Option<&str>,
    token: Option<&str>,
    signature: Option<&str>,
    now_ms: i64,
    window_ms: i64,
) -> Result<(), MailgunError> {
    let (Some(ts), Some(token), Some(sig)) = (timestamp, token, signature) else {
        return Err(MailgunError::Missing);
    };
    if token.is_empty() || ts.is_empty() {
        return Err(MailgunError::Missing);
    }
    let want = mailgun_signature(signing_key, ts, token);
    if !crate::sign::constant_time_eq(want.as_bytes(), sig.trim().as_bytes()) {
        return Err(MailgunError::BadSignature);
    }
    let secs: i64 = ts.trim().parse().map_err(|_| MailgunError::BadSignature)?;
    if (secs.saturating_mul(1000) - now_ms).abs() > window_ms {
        return Err(MailgunError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The example of Twilio's request-validation documentation (the twilio-php usage guide,
    /// "Validate Incoming Requests"): Auth Token `12345`.
    fn documented() -> (String, Vec<(String, String)>) {
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2".into(),
            p(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", "+14158675309"),
                ("Digits", "1234"),
                ("From", "+14158675309"),
                ("To", "+18005551212"),
            ]),
        )
    }

    #[test]
    fn twilio_documentation_vector_and_port_forms() {
        let (url, params) = documented();
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(
            twilio_signature("12345", &url, &params, TwilioAlgorithm::HmacSha1),
            sig
        );
        for seen in [
            url.clone(),
            "https://mycompany.com:443/myapp.php?foo=1&bar=2".to_string(),
        ] {
            let r = TwilioRequest {
                url: &seen,
                params: &params,
                json_body: None,
                signature: sig,
                settings: None,
            };
            assert!(twilio_valid(&["wrong", "12345"], None, &r), "{seen}");
            assert!(!twilio_valid(&["wrong"], None, &r));
        }
        // The query string is part of what is signed.
        let r = TwilioRequest {
            url: "https://mycompany.com/myapp.php?foo=1&bar=3",
            params: &params,
            json_body: None,
            signature: sig,
            settings: None,
        };
        assert!(!twilio_valid(&["12345"], None, &r));
    }

    #[test]
    fn port_forms_follow_twilios_validator() {
        assert_eq!(
            url_port_forms("https://a.example/p?x=1"),
            ["https://a.example/p?x=1", "https://a.example:443/p?x=1"]
        );
        assert_eq!(
            url_port_forms("http://u:pw@a.example:8080/p"),
            ["http://u:pw@a.example:8080/p", "http://u:pw@a.example/p"]
        );
        assert_eq!(
            url_port_forms("http://a.example"),
            ["http://a.example", "http://a.example:80"]
        );
        assert_eq!(url_port_forms("not a url"), ["not a url"]);
    }

    #[test]
    fn a_json_body_is_signed_through_its_hash_in_the_url() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(hex::encode(Sha256::digest(body)), hash);
        let url = format!("https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256={hash}");
        let sig = twilio_signature("12345", &url, &[], TwilioAlgorithm::HmacSha1);
        // The value Twilio's own library gives for this request.
        assert_eq!(sig, "a9nBmqA0ju/hNViExpshrM61xv4=");
        let ok = TwilioRequest {
            url: &url,
            params: &[],
            json_body: Some(body),
            signature: &sig,
            settings: None,
        };
        assert!(twilio_valid(&["12345"], None, &ok));
        let tampered = TwilioRequest {
            json_body: Some(br#"{"property": "other"}"#),
            ..ok
        };
        assert!(!twilio_valid(&["12345"], None, &tampered));
    }

    #[test]
    fn the_shared_key_scheme_uses_the_algorithm_the_header_names() {
        let (url, params) = documented();
        let sig = twilio_signature("shared-secret", &url, &params, TwilioAlgorithm::HmacSha256);
        let r = TwilioRequest {
            url: &url,
            params: &params,
            json_body: None,
            signature: &sig,
            settings: Some("key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"),
        };
        assert!(twilio_valid(&["12345"], Some("shared-secret"), &r));
        assert!(
            !twilio_valid(&["shared-secret"], None, &r),
            "no shared key set"
        );
        let unknown = TwilioRequest {
            settings: Some("key=k,algorithm=HMAC_MD5"),
            ..r
        };
        assert!(!twilio_valid(&["12345"], Some("shared-secret"), &unknown));
        assert_eq!(
            twilio_signature("12345", &url, &params, TwilioAlgorithm::HmacSha256),
            // Twilio's library: compute_signature(url, params, "HMAC_SHA256") with "12345".
            "033hgUJA9M/hXIZsYjwkerEP/DBm35nEri5FhCYjA5s="
        );
    }

    #[test]
    fn mailgun_signatures_have_a_replay_window() {
        let key = "key-mailgun-signing";
        let sig = mailgun_signature(key, "1795410000", "tok-1");
        let now = 1_795_410_000_000;
        let w = 300_000;
        let check = |ts: &str, tok: &str, s: &str, now: i64| {
            mailgun_valid(key, Some(ts), Some(tok), Some(s), now, w)
        };
        assert_eq!(check("1795410000", "tok-1", &sig, now), Ok(()));
        assert_eq!(check("1795410000", "tok-1", &sig, now + 299_000), Ok(()));
        assert_eq!(
            check("1795410000", "tok-1", &sig, now + 301_000),
            Err(MailgunError::Stale)
        );
        assert_eq!(
            check("1795410000", "tok-2", &sig, now),
            Err(MailgunError::BadSignature)
        );
        assert_eq!(
            mailgun_valid(key, None, Some("t"), Some(&sig), now, w),
            Err(MailgunError::Missing)
        );
    }
}
