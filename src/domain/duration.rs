//! Durations as people write them in configuration and on the command line: `500ms`, `30s`,
//! `5m`, `24h`, `7d`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A duration written as `500ms`, `30s`, `5m`, `24h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub std::time::Duration);

/// In the configuration's schema: a string with a unit.
impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "duration"})
    }
}

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurError {
    #[error("duration {0:?} needs a unit (ms, s, m, h, d)")]
    NoUnit(String),
    #[error("duration {0:?} does not start with a number")]
    NotANumber(String),
    #[error("duration {text:?} has unknown unit {unit:?} (ms, s, m, h, d)")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {0:?} is out of range")]
    OutOfRange(String),
}

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Dur {
        Dur(std::time::Duration::from_millis(ms))
    }
    pub const fn hours(h: u64) -> Dur {
        Dur(std::time::Duration::from_secs(h * 3600))
    }
    pub fn as_millis_i64(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }
    pub fn as_hours_f64(self) -> f64 {
        self.0.as_secs_f64() / 3600.0
    }
    pub fn std(self) -> std::time::Duration {
        self.0
    }
}

impl std::str::FromStr for Dur {
    type Err = DurError;
    fn from_str(s: &str) -> Result<Dur, DurError> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| DurError::NoUnit(s.to_string()))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| DurError::NotANumber(s.to_string()))?;
        let ms = match unit {
            "ms" => n,
            "s" => n * 1e3,
            "m" | "min" => n * 60e3,
            "h" => n * 3600e3,
            "d" => n * 86400e3,
            _ => {
                return Err(DurError::UnknownUnit {
                    text: s.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
            return Err(DurError::OutOfRange(s.to_string()));
        }
        Ok(Dur(std::time::Duration::from_micros((ms * 1e3) as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms % 86_400_000 == 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("30s".parse::<Dur>().unwrap(), Dur::secs(30));
        assert_eq!("24h".parse::<Dur>().unwrap(), Dur::hours(24));
        assert_eq!("7d".parse::<Dur>().unwrap().to_string(), "7d");
        assert_eq!("500ms".parse::<Dur>().unwrap().to_string(), "500ms");
        assert!("30".parse::<Dur>().is_err());
        assert_eq!(
            "3 weeks".parse::<Dur>().unwrap_err().to_string(),
            "duration \"3 weeks\" has unknown unit \" weeks\" (ms, s, m, h, d)"
        );
    }
}
