//! Response deadlines (pure): an SLA per priority, counted in clock time or in business hours,
//! over a business calendar (opening hours, business days, holidays, in one time zone).

use crate::domain::{Dur, Timestamp};
use chrono::{Datelike, Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use std::collections::BTreeSet;

/// Why a calendar or an SLA could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalendarError {
    #[error("{0:?} is not hours like \"08:00-17:00\" (opening before closing)")]
    Hours(String),
    #[error("{0:?} is not a time zone name like \"Europe/Berlin\"")]
    TimeZone(String),
    #[error("{0:?} is not a day of the week (mon … sun)")]
    Weekday(String),
    #[error("{0:?} is not a date like \"2026-12-25\"")]
    Date(String),
    #[error("{0:?} is not an SLA: write \"4h\", \"16h business\" or \"next_business_day\"")]
    Sla(String),
}

/// `"08:00-17:00"` as minutes after midnight (opening, closing).
pub fn parse_hours(s: &str) -> Result<(u32, u32), CalendarError> {
    let bad = || CalendarError::Hours(s.to_string());
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let t = |x: &str| {
        NaiveTime::parse_from_str(x.trim(), "%H:%M")
            .map(|t| t.hour_min())
            .map_err(|_| bad())
    };
    let (open, close) = (t(a)?, t(b)?);
    if open >= close {
        return Err(bad());
    }
    Ok((open, close))
}

trait HourMin {
    fn hour_min(&self) -> u32;
}
impl HourMin for NaiveTime {
    fn hour_min(&self) -> u32 {
        use chrono::Timelike;
        self.hour() * 60 + self.minute()
    }
}

/// How long a priority may wait for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sla {
    /// Within this much clock time.
    Clock(i64),
    /// Within this much business time (only open hours of business days count).
    Business(i64),
    /// By the close of the business day after the one it opened on.
    NextBusinessDay,
}

impl std::str::FromStr for Sla {
    type Err = CalendarError;
    fn from_str(s: &str) -> Result<Sla, CalendarError> {
        let t = s.trim();
        if t == "next_business_day" {
            return Ok(Sla::NextBusinessDay);
        }
        let bad = || CalendarError::Sla(s.to_string());
        let (dur, business) = match t.strip_suffix("business") {
            Some(d) => (d.trim(), true),
            None => (t, false),
        };
        let d: Dur = dur.parse().map_err(|_| bad())?;
        let ms = d.as_millis_i64();
        if ms <= 0 {
            return Err(bad());
        }
        Ok(if business {
            Sla::Business(ms)
        } else {
            Sla::Clock(ms)
        })
    }
}

/// Opening hours, business days and holidays in one time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessCalendar {
    pub tz: Tz,
    /// Minutes after local midnight.
    pub open: u32,
    pub close: u32,
    /// Monday first.
    pub days: [bool; 7],
    pub holidays: BTreeSet<NaiveDate>,
}

/// How many days ahead a deadline or a slot search looks at most (ten years of holidays would
/// still end it).
const MAX_DAYS: i64 = 3660;

impl BusinessCalendar {
    pub fn new(
        tz: &str,
        hours: &str,
        days: &[String],
        holidays: &[String],
    ) -> Result<BusinessCalendar, (&'static str, String)> {
        let tz: Tz = tz
            .parse()
            .map_err(|_| ("time_zone", CalendarError::TimeZone(tz.into()).to_string()))?;
        let (open, close) = parse_hours(hours).map_err(|e| ("business_hours", e.to_string()))?;
        let mut set = [false; 7];
        for d in days {
            let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .position(|w| w.eq_ignore_ascii_case(d.trim()))
                .ok_or_else(|| {
                    (
                        "business_days",
                        CalendarError::Weekday(d.clone()).to_string(),
                    )
                })?;
            set[i] = true;
        }
        if !set.contains(&true) {
            return Err(("business_days", "needs at least one day".into()));
        }
        let holidays = holidays
            .iter()
            .map(|h| {
                NaiveDate::parse_from_str(h.trim(), "%Y-%m-%d")
                    .map_err(|_| ("holidays", CalendarError::Date(h.clone()).to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(BusinessCalendar {
            tz,
            open,
            close,
            days: set,
            holidays,
        })
    }

    pub fn is_business_day(&self, d: NaiveDate) -> bool {
        self.days[d.weekday().num_days_from_monday() as usize] && !self.holidays.contains(&d)
    }

    /// The local date of a moment.
    pub fn date_of(&self, ms: Timestamp) -> Option<NaiveDate> {
        self.tz
            .timestamp_millis_opt(ms.as_millis())
            .single()
            .map(|t| t.date_naive())
    }

    /// The local day `now` falls on; the UTC day of `now` for a moment outside what the time
    /// zone can place (never the system's today: `now` is the caller's clock).
    pub fn day_of(&self, now: Timestamp) -> NaiveDate {
        self.date_of(now)
            .or_else(|| {
                chrono::DateTime::from_timestamp_millis(now.as_millis()).map(|t| t.date_naive())
            })
            .unwrap_or_default()
    }

    /// A local wall-clock time on `d` as epoch ms (the earlier one when a clock change repeats
    /// it, the next valid minute when one skips it).
    pub fn at(&self, d: NaiveDate, minutes: u32) -> Option<Timestamp> {
        let mut naive = d.and_hms_opt(minutes / 60, minutes % 60, 0)?;
        for _ in 0..180 {
            if let Some(t) = self.tz.from_local_datetime(&naive).earliest() {
                return Some(Timestamp::from_millis(t.timestamp_millis()));
            }
            naive += Duration::minutes(1);
        }
        None
    }

    /// The window `[from, to)` of `d` between local minutes `open` and `close`.
    pub fn window(&self, d: NaiveDate, open: u32, close: u32) -> Option<(Timestamp, Timestamp)> {
        Some((self.at(d, open)?, self.at(d, close)?))
    }

    /// When a ticket opened at `start` must have had a response.
    pub fn deadline(&self, start: Timestamp, sla: Sla) -> Timestamp {
        match sla {
            Sla::Clock(ms) => start.saturating_add(ms),
            Sla::Business(ms) => self.add_business(start, ms),
            Sla::NextBusinessDay => {
                let Some(mut d) = self.date_of(start) else {
                    return start;
                };
                for _ in 0..MAX_DAYS {
                    d = match d.succ_opt() {
                        Some(n) => n,
                        None => return start,
                    };
                    if self.is_business_day(d) {
                        return self.at(d, self.close).unwrap_or(start);
                    }
                }
                start
            }
        }
    }

    /// `start` plus `ms` of business time.
    pub fn add_business(&self, start: Timestamp, ms: i64) -> Timestamp {
        let Some(mut d) = self.date_of(start) else {
            return start;
        };
        let mut left = ms.max(0);
        for _ in 0..MAX_DAYS {
            if self.is_business_day(d) {
                if let Some((open, close)) = self.window(d, self.open, self.close) {
                    let from = open.max(start);
                    if from < close {
                        let room = close - from;
                        if left <= room {
                            return from + left;
                        }
                        left -= room;
                    }
                }
            }
            d = match d.succ_opt() {
                Some(n) => n,
                None => break,
            };
        }
        start.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;

    fn cal(tz: &str, holidays: &[&str]) -> BusinessCalendar {
        BusinessCalendar::new(
            tz,
            "08:00-17:00",
            &["mon", "tue", "wed", "thu", "fri"].map(String::from),
            &holidays.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn slas_are_read_from_words() {
        assert_eq!("4h".parse::<Sla>(), Ok(Sla::Clock(4 * 3_600_000)));
        assert_eq!(
            "16h business".parse::<Sla>(),
            Ok(Sla::Business(16 * 3_600_000))
        );
        assert_eq!("next_business_day".parse::<Sla>(), Ok(Sla::NextBusinessDay));
        assert!("soon".parse::<Sla>().is_err());
        assert!("0h".parse::<Sla>().is_err());
    }

    #[test]
    fn urgent_counts_clock_hours_even_at_night() {
        let c = cal("UTC", &[]);
        // Friday 22:00 + 4 h = Saturday 02:00.
        let d = c.deadline(ts("2026-11-27T22:00:00Z"), Sla::Clock(4 * 3_600_000));
        assert_eq!(d.format(), "2026-11-28T02:00:00Z");
    }

    #[test]
    fn next_business_day_skips_weekends_and_holidays() {
        let c = cal("UTC", &["2026-11-30"]);
        // Friday afternoon: Monday is a holiday, so Tuesday's close.
        let d = c.deadline(ts("2026-11-27T15:00:00Z"), Sla::NextBusinessDay);
        assert_eq!(d.format(), "2026-12-01T17:00:00Z");
        // Tuesday morning: Wednesday's close.
        let d = c.deadline(ts("2026-12-01T09:00:00Z"), Sla::NextBusinessDay);
        assert_eq!(d.format(), "2026-12-02T17:00:00Z");
    }

    #[test]
    fn business_hours_stop_the_clock_overnight_and_on_holidays() {
        let c = cal("UTC", &["2026-12-25"]);
        // Thursday 15:00 + 4 business hours: 2 h on Thursday, 2 h from Friday… a holiday, so
        // Monday 10:00.
        let d = c.add_business(ts("2026-12-24T15:00:00Z"), 4 * 3_600_000);
        assert_eq!(d.format(), "2026-12-28T10:00:00Z");
        // Opened before opening: the count starts at 08:00.
        let d = c.add_business(ts("2026-12-22T03:00:00Z"), 3_600_000);
        assert_eq!(d.format(), "2026-12-22T09:00:00Z");
        // Saturday night: Monday 08:00 + 1 h.
        let d = c.add_business(ts("2026-12-26T23:00:00Z"), 3_600_000);
        assert_eq!(d.format(), "2026-12-28T09:00:00Z");
    }

    #[test]
    fn business_hours_are_local_hours() {
        let c = cal("Asia/Bangkok", &[]);
        // 01:00 UTC is 08:00 in Bangkok: one business hour later is 02:00 UTC.
        let d = c.add_business(ts("2026-12-22T01:00:00Z"), 3_600_000);
        assert_eq!(d.format(), "2026-12-22T02:00:00Z");
        let c = cal("Europe/Berlin", &[]);
        // Across the spring clock change the close is still 17:00 local (15:00 UTC in summer).
        let d = c.deadline(ts("2026-03-27T12:00:00Z"), Sla::NextBusinessDay);
        assert_eq!(d.format(), "2026-03-30T15:00:00Z");
    }

    #[test]
    fn bad_calendars_are_refused_with_the_key() {
        let e = BusinessCalendar::new("Mars/Olympus", "08:00-17:00", &[], &[]).unwrap_err();
        assert_eq!(e.0, "time_zone");
        let e = BusinessCalendar::new("UTC", "8-5", &["mon".into()], &[]).unwrap_err();
        assert_eq!(e.0, "business_hours");
        let e = BusinessCalendar::new("UTC", "08:00-17:00", &["lundi".into()], &[]).unwrap_err();
        assert_eq!(e.0, "business_days");
    }
}
