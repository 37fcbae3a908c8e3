//! The fleet-wide registry: devices and customers in the key-value bucket `BUCKETS-registry`,
//! one key per record (`d.ID` / `c.ID`, the id base64url-encoded), its value the record's JSON
//! as the store keeps it. Every instance puts what it accepts and applies what it watches.

use crate::fleet::{Customer, Device};
use base64::Engine as _;

const DEVICE: &str = "d.";
const CUSTOMER: &str = "c.";

/// Ids may hold any Unicode text and dots; a key holds `[-_=./A-Za-z0-9]` only, and its dots
/// separate tokens. base64url without padding keeps one token of key characters.
fn encode(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn device_key(id: &str) -> String {
    format!("{DEVICE}{}", encode(id))
}

pub fn customer_key(id: &str) -> String {
    format!("{CUSTOMER}{}", encode(id))
}

/// A record read from the bucket.
#[derive(Debug, PartialEq)]
pub enum Record {
    Device(Device),
    Customer(Customer),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("registry key {0} is neither a device (d.) nor a customer (c.)")]
    UnknownKey(String),
    #[error("registry key {key}: {source}")]
    Value {
        key: String,
        source: serde_json::Error,
    },
    #[error("registry key {key} holds the record of {id}")]
    WrongId { key: String, id: String },
}

/// The record under `key`; its id must be the one the key encodes.
pub fn decode(key: &str, value: &[u8]) -> Result<Record, RecordError> {
    let bad = |source| RecordError::Value {
        key: key.to_string(),
        source,
    };
    let (record, id) = if key.starts_with(DEVICE) {
        let d: Device = serde_json::from_slice(value).map_err(bad)?;
        let id = d.id.to_string();
        (Record::Device(d), id)
    } else if key.starts_with(CUSTOMER) {
        let c: Customer = serde_json::from_slice(value).map_err(bad)?;
        let id = c.id.clone();
        (Record::Customer(c), id)
    } else {
        return Err(RecordError::UnknownKey(key.to_string()));
    };
    let expected = match &record {
        Record::Device(_) => device_key(&id),
        Record::Customer(_) => customer_key(&id),
    };
    if expected != key {
        return Err(RecordError::WrongId {
            key: key.to_string(),
            id,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_key(k: &str) -> bool {
        !k.is_empty()
            && !k.starts_with('.')
            && !k.ends_with('.')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c))
    }

    #[test]
    fn keys_of_non_ascii_and_dotted_ids_are_valid_single_token_keys() {
        for id in ["press-7", "เครื่อง-๑", "دستگاه.۲", "a.b.c"] {
            let k = device_key(id);
            assert!(valid_key(&k), "{k}");
            assert_eq!(k.matches('.').count(), 1, "{k}");
            assert!(valid_key(&customer_key(id)));
        }
        assert_ne!(device_key("x"), customer_key("x"));
    }

    #[test]
    fn a_device_record_reads_back_and_must_match_its_key() {
        let d = Device {
            id: crate::domain::DeviceId::parse("เครื่อง-๑").expect("id"),
            customer_id: Some("ร้าน".into()),
            attributes: Default::default(),
        };
        let json = serde_json::to_vec(&d).expect("json");
        assert_eq!(
            decode(&device_key("เครื่อง-๑"), &json).expect("decode"),
            Record::Device(d)
        );
        assert!(matches!(
            decode(&device_key("other"), &json),
            Err(RecordError::WrongId { .. })
        ));
        assert!(matches!(
            decode("x.abc", &json),
            Err(RecordError::UnknownKey(_))
        ));
    }
}
