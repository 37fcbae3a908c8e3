//! Signatures and secret comparisons, written once: the `X-Forewarn-Signature` of every webhook
//! forewarn sends (field-service dispatch and customer webhooks), and the constant-time
//! comparison used wherever a presented secret or signature is checked.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `a` and `b` are equal, in time that depends on their length only (`subtle`). The
/// lengths themselves are not hidden: use it for values of a public length (signatures, digests);
/// API tokens are hashed first (`api::auth`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let s = webhook_signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn equal_secrets_compare_equal_and_any_difference_does_not() {
        assert!(constant_time_eq(b"token-1", b"token-1"));
        assert!(!constant_time_eq(b"token-1", b"token-2"));
        assert!(!constant_time_eq(b"token-1", b"token-10"));
        assert!(constant_time_eq(b"", b""));
    }
}
