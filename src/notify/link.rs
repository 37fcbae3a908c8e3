//! Signed self-service links: `base64url(ticket|customer|expiry ms|issued ms).hex(HMAC-SHA256)`.
//! The page checks the signature and expiry, then the server-side state of the ticket's links:
//! every link issued up to a revocation (`Notifier::revoke_links`) is refused. Links signed
//! before `issued` was added (three fields) count as issued at time 0.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

pub fn sign(key: &[u8], ticket_id: &str, customer_id: &str, exp_ms: i64) -> String {
    sign_issued(key, ticket_id, customer_id, exp_ms, 0)
}

/// A link issued at `iat_ms` (what revocation compares with).
pub fn sign_issued(
    key: &[u8],
    ticket_id: &str,
    customer_id: &str,
    exp_ms: i64,
    iat_ms: i64,
) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!("{ticket_id}|{customer_id}|{exp_ms}|{iat_ms}"));
    let mut m = mac(key);
    m.update(payload.as_bytes());
    format!("{payload}.{}", hex::encode(m.finalize().into_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    pub ticket_id: String,
    pub customer_id: String,
    pub exp_ms: i64,
    /// When it was issued (0 for links from before this field).
    pub iat_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not valid")]
    Invalid,
    #[error("this link has expired")]
    Expired,
}

pub fn verify(key: &[u8], token: &str, now_ms: i64) -> Result<LinkClaims, LinkError> {
    let (payload, sig) = token.split_once('.').ok_or(LinkError::Invalid)?;
    let sig = hex::decode(sig).map_err(|_| LinkError::Invalid)?;
    let mut m = mac(key);
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| LinkError::Invalid)?;
    let raw = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Invalid)?;
    let s = String::from_utf8(raw).map_err(|_| LinkError::Invalid)?;
    let mut it = s.splitn(4, '|');
    let (t, c, e, i) = (it.next(), it.next(), it.next(), it.next());
    let (Some(t), Some(c), Some(e)) = (t, c, e) else {
        return Err(LinkError::Invalid);
    };
    let exp_ms: i64 = e.parse().map_err(|_| LinkError::Invalid)?;
    let iat_ms: i64 = match i {
        Some(i) => i.parse().map_err(|_| LinkError::Invalid)?,
        None => 0,
    };
    if now_ms > exp_ms {
        return Err(LinkError::Expired);
    }
    Ok(LinkClaims {
        ticket_id: t.into(),
        customer_id: c.into(),
        exp_ms,
        iat_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_and_reject_tampering_and_expiry() {
        let tok = sign(b"k1k1k1k1k1k1k1k1", "T-1", "c1", 1000);
        let c = verify(b"k1k1k1k1k1k1k1k1", &tok, 999).unwrap();
        assert_eq!(
            (c.ticket_id.as_str(), c.customer_id.as_str()),
            ("T-1", "c1")
        );
        assert_eq!(
            verify(b"k1k1k1k1k1k1k1k1", &tok, 1001),
            Err(LinkError::Expired)
        );
        assert_eq!(
            verify(b"other-key-000000", &tok, 0),
            Err(LinkError::Invalid)
        );
        let forged = sign(b"other-key-000000", "T-2", "c1", 9999);
        let mixed = format!(
            "{}.{}",
            forged.split('.').next().unwrap(),
            tok.split('.').nth(1).unwrap()
        );
        assert_eq!(
            verify(b"k1k1k1k1k1k1k1k1", &mixed, 0),
            Err(LinkError::Invalid)
        );
        let issued = sign_issued(b"k1k1k1k1k1k1k1k1", "T-1", "c1", 1000, 500);
        assert_eq!(verify(b"k1k1k1k1k1k1k1k1", &issued, 0).unwrap().iat_ms, 500);
        // A link signed before `issued` existed (three fields) still verifies, issued at 0.
        let payload = URL_SAFE_NO_PAD.encode("T-1|c1|1000");
        let mut m = mac(b"k1k1k1k1k1k1k1k1");
        m.update(payload.as_bytes());
        let legacy = format!("{payload}.{}", hex::encode(m.finalize().into_bytes()));
        assert_eq!(verify(b"k1k1k1k1k1k1k1k1", &legacy, 0).unwrap().iat_ms, 0);
    }
}
