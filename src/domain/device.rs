//! Device ids: one rule for every place an id arrives (topic, payload, API, CSV, fleet file),
//! and a type that can only hold an id that passed it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// Longest device id accepted anywhere (topic, API, CSV).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Why a text is not a usable device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("empty device id")]
    Empty,
    #[error("device id longer than {MAX_DEVICE_ID_LEN} bytes")]
    TooLong,
    #[error("device id contains forbidden character {0:?}")]
    Forbidden(char),
}

/// Checks the device id rule: non-empty, bounded, and free of MQTT wildcards, separators,
/// whitespace and control characters, so it is safe as a topic level, a URL segment and a key.
/// [`DeviceId::parse`] is the way in; this is for boundaries that only need the verdict.
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong);
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control() || c.is_whitespace())
    {
        return Err(DeviceIdError::Forbidden(c));
    }
    Ok(())
}

/// A device id that passed [`validate_device_id`]: made only by [`DeviceId::parse`] or
/// `TryFrom`, so a reading, an event or a ticket that holds one needs no second check.
///
/// A `String` inside: ingest clones the id once per reading, as it cloned the `String` before,
/// so the type costs nothing on the hot path. It reads as text everywhere text is wanted
/// (`Deref<Target = str>`, `Borrow<str>` for maps keyed by id, `Display`), and serialises as the
/// plain string; deserialising checks the rule.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks `id` against the rule and keeps a copy.
    pub fn parse(id: &str) -> Result<DeviceId, DeviceIdError> {
        validate_device_id(id)?;
        Ok(DeviceId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(id: &str) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(id)
    }
}

/// Keeps the text's allocation when the caller already owns it.
impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(id: String) -> Result<DeviceId, DeviceIdError> {
        validate_device_id(&id)?;
        Ok(DeviceId(id))
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(id: &str) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(id)
    }
}

impl Deref for DeviceId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shows the id as a string literal, as `Debug` of the `String` it replaced did.
impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for DeviceId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for DeviceId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for DeviceId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<DeviceId> for str {
    fn eq(&self, other: &DeviceId) -> bool {
        self == other.0
    }
}

impl PartialEq<DeviceId> for String {
    fn eq(&self, other: &DeviceId) -> bool {
        *self == other.0
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeviceId, D::Error> {
        let id = String::deserialize(d)?;
        DeviceId::try_from(id).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_with_wildcards_or_controls_are_refused() {
        for bad in ["", "a/b", "a+b", "a#", "a\u{0}b", "a b"] {
            assert!(validate_device_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_device_id(&"x".repeat(MAX_DEVICE_ID_LEN + 1)),
            Err(DeviceIdError::TooLong)
        );
        assert!(validate_device_id("engine-001").is_ok());
        assert!(validate_device_id("pompe-é").is_ok());
    }

    #[test]
    fn device_id_is_made_only_from_text_that_passes_the_rule() {
        for bad in [
            "",
            "plant/pump",
            "pump+",
            "pump#",
            "a\u{0}b",
            "tab\tbed",
            "new\nline",
            "a b",
            "nbsp\u{a0}",
            "\u{7f}",
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
            assert!(DeviceId::try_from(bad.to_string()).is_err(), "{bad:?}");
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
        }
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::parse("a/b"), Err(DeviceIdError::Forbidden('/')));
        let longest = "é".repeat(MAX_DEVICE_ID_LEN / 2);
        assert!(DeviceId::parse(&longest).is_ok());
        assert_eq!(
            DeviceId::parse(&format!("{longest}x")),
            Err(DeviceIdError::TooLong)
        );
        for good in [
            "engine-001",
            "ปั๊มน้ำ-๐๑",
            "پمپ-۱۲",
            "urn:dev:ow:10e2073a0108006",
        ] {
            let id = DeviceId::parse(good).expect(good);
            assert_eq!(id.as_str(), good);
            assert_eq!(id.to_string(), good);
            assert_eq!(&*id, good);
            assert_eq!(id, good);
            assert_eq!(format!("{id:?}"), format!("{good:?}"));
            assert_eq!(String::from(id.clone()), good);
        }
    }

    #[test]
    fn maps_keyed_by_device_id_are_looked_up_with_text() {
        let mut m = std::collections::HashMap::new();
        m.insert(DeviceId::parse("ปั๊ม-1").expect("id"), 1);
        assert_eq!(m.get("ปั๊ม-1"), Some(&1));
        let mut b = std::collections::BTreeMap::new();
        b.insert(DeviceId::parse("پمپ-۲").expect("id"), 2);
        assert_eq!(b.get("پمپ-۲"), Some(&2));
    }

    #[test]
    fn device_ids_serialise_as_the_plain_string_and_are_checked_when_read() {
        let id = DeviceId::parse("پمپ-۱۲").expect("id");
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, serde_json::to_string("پمپ-۱۲").expect("json"));
        assert_eq!(serde_json::from_str::<DeviceId>(&json).expect("json"), id);
        let bytes = postcard::to_allocvec(&id).expect("postcard");
        assert_eq!(bytes, postcard::to_allocvec("پمپ-۱۲").expect("postcard"));
        assert_eq!(
            postcard::from_bytes::<DeviceId>(&bytes).expect("postcard"),
            id
        );
        for bad in [r#""a/b""#, r#""""#, r#""a+""#, "7"] {
            assert!(serde_json::from_str::<DeviceId>(bad).is_err(), "{bad}");
        }
    }
}
