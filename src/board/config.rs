//! `[board]`: the dispatch board — the response deadline per priority (the SLA) over business
//! hours and holidays, the technicians, how visit slots are cut, and how long a sign-in lasts.

use super::sla::{BusinessCalendar, Sla};
use crate::domain::Dur;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Serve the board (`/board`) on the API listener.
    pub enabled: bool,
    /// The time zone business hours, holidays, the day view and visit slots are read in.
    pub time_zone: String,
    /// Opening hours of a business day, `"08:00-17:00"`.
    pub business_hours: String,
    /// Business days: `mon` … `sun`.
    pub business_days: Vec<String>,
    /// Days without business, `"2026-12-25"`.
    pub holidays: Vec<String>,
    /// The response deadline per priority, from when the ticket opened.
    pub sla: SlaConfig,
    /// Length of one visit slot.
    pub slot_length: Dur,
    /// How many free slots the ticket page offers to propose.
    pub slots_offered: usize,
    /// A board sign-in lasts this long.
    pub session_ttl: Dur,
    /// Send the session cookie with `Secure` even when the request did not come over TLS (a
    /// proxy in front that terminates TLS without saying so in `X-Forwarded-Proto`).
    pub secure_cookies: bool,
    /// Technicians known from the configuration (the API adds and replaces others).
    pub technicians: Vec<Technician>,
}

/// `[board.sla]`: `"4h"` (clock time), `"16h business"` (business hours only), or
/// `"next_business_day"` (by the close of the next business day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    /// Response deadline of urgent tickets.
    pub urgent: String,
    /// Response deadline of high-priority tickets.
    pub high: String,
    /// Response deadline of advisory tickets.
    pub advisory: String,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            urgent: "4h".into(),
            high: "next_business_day".into(),
            advisory: "24h business".into(),
        }
    }
}

/// A field technician: what they can repair (failure modes) and where they go.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Technician {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Failure modes they can service; empty: any.
    #[serde(default)]
    pub skills: Vec<String>,
    /// The region they cover (a device's `region` attribute); empty: any.
    #[serde(default)]
    pub region: String,
    /// Their working hours, `"08:00-17:00"`; empty: the business hours.
    #[serde(default)]
    pub hours: String,
}

impl Technician {
    /// Whether they can service `mode` in `region`.
    pub fn fits(&self, mode: &str, region: &str) -> bool {
        (self.skills.is_empty() || self.skills.iter().any(|s| s == mode))
            && (self.region.is_empty() || region.is_empty() || self.region == region)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            time_zone: "UTC".into(),
            business_hours: "08:00-17:00".into(),
            business_days: ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec(),
            holidays: Vec::new(),
            sla: SlaConfig::default(),
            slot_length: Dur::hours(2),
            slots_offered: 8,
            session_ttl: Dur::hours(12),
            secure_cookies: false,
            technicians: Vec::new(),
        }
    }
}

impl Config {
    /// The business calendar the configuration describes.
    pub fn calendar(&self) -> Result<BusinessCalendar, (&'static str, String)> {
        BusinessCalendar::new(
            &self.time_zone,
            &self.business_hours,
            &self.business_days,
            &self.holidays,
        )
    }

    /// The SLA of each priority: (urgent, high, advisory).
    pub fn slas(&self) -> Result<[Sla; 3], (&'static str, String)> {
        let p = |key: &'static str, s: &str| s.parse::<Sla>().map_err(|e| (key, e.to_string()));
        Ok([
            p("sla.urgent", &self.sla.urgent)?,
            p("sla.high", &self.sla.high)?,
            p("sla.advisory", &self.sla.advisory)?,
        ])
    }

    /// Checks that the values fit together; `(key, message)` on error. No I/O.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.calendar()?;
        self.slas()?;
        if self.slot_length.std().as_secs() < 15 * 60 {
            return Err(("slot_length", "must be at least 15m".into()));
        }
        if self.slots_offered == 0 || self.slots_offered > 50 {
            return Err(("slots_offered", "must be between 1 and 50".into()));
        }
        if self.session_ttl.std().as_secs() < 60 {
            return Err(("session_ttl", "must be at least 1m".into()));
        }
        let mut ids = std::collections::HashSet::new();
        for t in &self.technicians {
            if crate::domain::validate_device_id(&t.id).is_err() {
                return Err((
                    "technicians",
                    format!("technician id {:?} is not a valid id", t.id),
                ));
            }
            if !ids.insert(t.id.as_str()) {
                return Err(("technicians", format!("technician {:?} twice", t.id)));
            }
            if !t.hours.is_empty() {
                super::sla::parse_hours(&t.hours)
                    .map_err(|e| ("technicians", format!("technician {:?} hours: {e}", t.id)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let c = Config {
            business_hours: "17:00-08:00".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "business_hours");
        let c = Config {
            holidays: vec!["25 Dec".into()],
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "holidays");
        let mut c = Config::default();
        c.sla.high = "soonish".into();
        assert_eq!(c.validate().unwrap_err().0, "sla.high");
    }

    #[test]
    fn a_technician_fits_by_skill_and_region() {
        let t = Technician {
            id: "t1".into(),
            name: "Ana".into(),
            skills: vec!["bearing".into()],
            region: "north".into(),
            hours: String::new(),
        };
        assert!(t.fits("bearing", "north"));
        assert!(t.fits("bearing", ""));
        assert!(!t.fits("seal", "north"));
        assert!(!t.fits("bearing", "south"));
    }
}
