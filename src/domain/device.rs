//! Device ids: one rule for every place an id arrives (topic, payload, API, CSV, fleet file).

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

/// Validates a device id: non-empty, bounded, and free of MQTT wildcards, separators and control
/// characters, so it is safe as a topic level, a URL segment and a key.
///
/// Ids stay `String` in the types that carry them (readings, tickets, fleet records): every stage
/// passes them on as text, and a newtype would change every signature for no new guarantee once
/// this check has run at the boundary.
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
}
