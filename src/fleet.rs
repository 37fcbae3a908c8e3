//! The fleet registry: devices (attributes, owning customer) and customers (contact channels,
//! preferences, time zone, locale). Loaded from a TOML file at start, upserted through the API,
//! persisted in the store.

use crate::features::Attributes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[fleet]`: the devices and customers loaded at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TOML file of devices and customers loaded at start (optional).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Static attributes (model type, install year, site…) that models may select on or read.
    #[serde(default)]
    pub attributes: Attributes,
}

/// A channel forewarn can reach a customer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Voice,
    Push,
    Webhook,
    Mqtt,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Email,
        Channel::Sms,
        Channel::Voice,
        Channel::Push,
        Channel::Webhook,
        Channel::Mqtt,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Voice => "voice",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
            Channel::Mqtt => "mqtt",
        }
    }
    /// Channels that reach a person right now (urgent); the rest are asynchronous.
    pub fn is_immediate(self) -> bool {
        matches!(self, Channel::Sms | Channel::Voice)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// BCP 47 language tag: "en", "th", "fa"…
    #[serde(default = "default_locale")]
    pub locale: String,
    /// IANA time zone, e.g. "Asia/Bangkok".
    #[serde(default = "default_tz")]
    pub time_zone: String,
    /// Address per channel: e-mail address, E.164 phone number, push topic, webhook URL, MQTT topic.
    #[serde(default)]
    pub contacts: BTreeMap<Channel, String>,
    /// Channels in the customer's order of preference.
    #[serde(default)]
    pub preferences: Vec<Channel>,
    /// Local quiet hours, "22:00-07:00"; none when unset.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Whether an urgent alert may reach them during quiet hours.
    #[serde(default = "yes")]
    pub urgent_in_quiet_hours: bool,
    /// At most this many messages a day (unset: the deployment default).
    #[serde(default)]
    pub daily_budget: Option<u32>,
}

fn default_locale() -> String {
    "en".into()
}
fn default_tz() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}

/// The registry file: `[[devices]]` and `[[customers]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub customers: Vec<Customer>,
    #[serde(default)]
    pub devices: Vec<Device>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{what} {id:?}: {message}")]
    Invalid {
        what: &'static str,
        id: String,
        message: String,
    },
}

impl Device {
    pub fn validate(&self) -> Result<(), FleetError> {
        crate::domain::validate_device_id(&self.id).map_err(|e| FleetError::Invalid {
            what: "device",
            id: self.id.clone(),
            message: e.to_string(),
        })
    }
}

impl Customer {
    pub fn validate(&self) -> Result<(), FleetError> {
        let bad = |message: String| FleetError::Invalid {
            what: "customer",
            id: self.id.clone(),
            message,
        };
        crate::domain::validate_device_id(&self.id)
            .map_err(|e| bad(e.to_string().replace("device", "customer")))?;
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(bad(format!("unknown time zone {:?}", self.time_zone)));
        }
        if let Some(q) = &self.quiet_hours {
            parse_quiet_hours(q).map_err(|e| bad(e.to_string()))?;
        }
        for c in &self.preferences {
            if !self.contacts.contains_key(c) {
                return Err(bad(format!(
                    "prefers {} but has no {} contact",
                    c.as_str(),
                    c.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// A quiet-hours text that is not `HH:MM-HH:MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quiet hours {0:?} must look like 22:00-07:00")]
pub struct QuietHoursError(pub String);

/// Parses "22:00-07:00" into minutes after local midnight (start, end); may wrap midnight.
pub fn parse_quiet_hours(s: &str) -> Result<(u32, u32), QuietHoursError> {
    let parse = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| QuietHoursError(s.to_string()))?;
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(QuietHoursError(s.to_string())),
    }
}

impl FleetFile {
    pub fn load(path: &Path) -> Result<FleetFile, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|e| FleetError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let f: FleetFile = toml::from_str(&text).map_err(|e| FleetError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        f.validate()?;
        Ok(f)
    }

    pub fn validate(&self) -> Result<(), FleetError> {
        for c in &self.customers {
            c.validate()?;
        }
        for d in &self.devices {
            d.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_file_parses_and_checks_preferences() {
        let f: FleetFile = toml::from_str(
            r#"
            [[customers]]
            id = "acme"
            locale = "th"
            time_zone = "Asia/Bangkok"
            contacts = { email = "ops@acme.example", sms = "+66800000000" }
            preferences = ["sms", "email"]
            quiet_hours = "22:00-07:00"

            [[devices]]
            id = "pump-1"
            customer_id = "acme"
            attributes = { model = "P200" }
            "#,
        )
        .unwrap();
        f.validate().unwrap();
        assert_eq!(f.customers[0].preferences[0], Channel::Sms);
        let mut c = f.customers[0].clone();
        c.preferences.push(Channel::Voice);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no voice contact"));
        c.preferences.pop();
        c.time_zone = "Mars/Olympus".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn quiet_hours_parse_and_may_wrap_midnight() {
        assert_eq!(parse_quiet_hours("22:00-07:00").unwrap(), (1320, 420));
        assert!(parse_quiet_hours("25:00-07:00").is_err());
        assert!(parse_quiet_hours("evening").is_err());
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_example_fleet_file_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleet.toml");
        let f = super::FleetFile::load(&path).unwrap();
        assert!(!f.customers.is_empty() && !f.devices.is_empty());
    }
}
