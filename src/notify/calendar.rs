//! Dates as the customer writes them (pure): the Gregorian, Thai Buddhist-era and Persian Solar
//! Hijri calendars, digits in Latin, Thai or Persian script. Month and weekday names come from
//! the locale's template file, so an operator can change them.
//!
//! The Solar Hijri conversion uses the 33-year arithmetic cycle (leap years are those whose
//! remainder by 33 is 1, 5, 9, 13, 17, 22, 26 or 30), which agrees with the official calendar
//! throughout 1304–1502 SH (1925–2124); outside that range the Gregorian date is shown.

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

/// Which calendar a locale counts days in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calendar {
    Gregorian,
    /// Thai solar calendar: Gregorian months, Buddhist era (year + 543).
    Buddhist,
    /// Iranian calendar: Farvardin 1 at the March equinox.
    SolarHijri,
}

/// Which digits numbers are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Digits {
    Latin,
    Thai,
    Persian,
}

/// Writes every ASCII digit of `s` in `digits`.
pub fn with_digits(s: &str, digits: Digits) -> String {
    let zero = match digits {
        Digits::Latin => return s.to_string(),
        Digits::Thai => '๐',
        Digits::Persian => '۰',
    };
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) if c.is_ascii_digit() => char::from_u32(zero as u32 + d).unwrap_or(c),
            _ => c,
        })
        .collect()
}

fn is_leap_solar_hijri(y: i32) -> bool {
    matches!(y.rem_euclid(33), 1 | 5 | 9 | 13 | 17 | 22 | 26 | 30)
}

/// Year, month (1–12), day of a Gregorian date in the Solar Hijri calendar, within 1304–1502 SH.
pub fn solar_hijri(date: NaiveDate) -> Option<(i32, u32, u32)> {
    // Anchor: 1 Farvardin 1404 was 21 March 2025.
    let mut year = 1404;
    let mut start = NaiveDate::from_ymd_opt(2025, 3, 21)?;
    let len = |y: i32| if is_leap_solar_hijri(y) { 366 } else { 365 };
    while date < start {
        year -= 1;
        start -= chrono::Duration::days(len(year));
        if year < 1304 {
            return None;
        }
    }
    while (date - start).num_days() >= len(year) {
        start += chrono::Duration::days(len(year));
        year += 1;
        if year > 1502 {
            return None;
        }
    }
    let mut day = u32::try_from((date - start).num_days()).ok()?;
    for month in 1..=12u32 {
        let days = match month {
            1..=6 => 31,
            7..=11 => 30,
            _ => 30,
        };
        if day < days {
            return Some((year, month, day + 1));
        }
        day -= days;
    }
    None
}

/// How a locale writes a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct DateStyle {
    pub calendar: Calendar,
    pub digits: Digits,
    /// Twelve month names, in the locale's calendar's order.
    pub months: Vec<String>,
    /// Seven weekday names, Monday first.
    pub weekdays: Vec<String>,
}

/// The parts of a local moment, ready for a locale's `date_format`.
#[derive(Debug, Clone, PartialEq)]
pub struct DateParts {
    pub weekday: String,
    pub day: String,
    pub month: String,
    pub year: String,
    /// "14:00".
    pub time: String,
}

impl DateStyle {
    pub fn parts(&self, local: NaiveDateTime) -> DateParts {
        let date = local.date();
        let (year, month, day) = match self.calendar {
            Calendar::Gregorian => (date.year(), date.month(), date.day()),
            Calendar::Buddhist => (date.year() + 543, date.month(), date.day()),
            Calendar::SolarHijri => match solar_hijri(date) {
                Some(ymd) => ymd,
                None => (date.year(), date.month(), date.day()),
            },
        };
        let month_name = usize::try_from(month)
            .ok()
            .and_then(|m| self.months.get(m.wrapping_sub(1)))
            .cloned()
            .unwrap_or_else(|| month.to_string());
        let weekday = self
            .weekdays
            .get(date.weekday().num_days_from_monday() as usize)
            .cloned()
            .unwrap_or_default();
        let d = |s: String| with_digits(&s, self.digits);
        DateParts {
            weekday,
            day: d(day.to_string()),
            month: month_name,
            year: d(year.to_string()),
            time: d(format!("{:02}:{:02}", local.hour(), local.minute())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn solar_hijri_matches_known_dates() {
        // Nowruz (1 Farvardin) of several years, and days every Iranian calendar names.
        for (g, sh) in [
            (ymd(2025, 3, 21), (1404, 1, 1)),
            (ymd(2024, 3, 20), (1403, 1, 1)),
            (ymd(2025, 3, 20), (1403, 12, 30)), // 1403 is a leap year
            (ymd(2021, 3, 21), (1400, 1, 1)),
            (ymd(1979, 2, 11), (1357, 11, 22)), // 22 Bahman 1357
            (ymd(2000, 1, 1), (1378, 10, 11)),
            (ymd(2001, 9, 11), (1380, 6, 20)),
            (ymd(1925, 3, 21), (1304, 1, 1)),
            (ymd(2026, 11, 23), (1405, 9, 2)),
        ] {
            assert_eq!(solar_hijri(g), Some(sh), "{g}");
        }
        assert_eq!(solar_hijri(ymd(1800, 1, 1)), None);
    }

    #[test]
    fn every_day_of_a_century_converts_and_days_follow_each_other() {
        let mut d = ymd(1950, 1, 1);
        let mut prev = solar_hijri(d).unwrap();
        while d < ymd(2100, 1, 1) {
            d = d.succ_opt().unwrap();
            let cur = solar_hijri(d).unwrap();
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == next_day || cur == next_month || cur == next_year,
                "{d}: {prev:?} → {cur:?}"
            );
            prev = cur;
        }
    }

    #[test]
    fn digits_in_thai_and_persian_script() {
        assert_eq!(
            with_digits("25 Nov 2569, 14:05", Digits::Thai),
            "๒๕ Nov ๒๕๖๙, ๑๔:๐๕"
        );
        assert_eq!(with_digits("1405/09/02", Digits::Persian), "۱۴۰۵/۰۹/۰۲");
        assert_eq!(with_digits("12", Digits::Latin), "12");
    }

    #[test]
    fn buddhist_era_adds_543_years() {
        let style = DateStyle {
            calendar: Calendar::Buddhist,
            digits: Digits::Latin,
            months: (1..=12).map(|m| format!("m{m}")).collect(),
            weekdays: vec![],
        };
        let p = style.parts(ymd(2026, 11, 23).and_hms_opt(14, 0, 0).unwrap());
        assert_eq!(
            (p.day.as_str(), p.month.as_str(), p.year.as_str()),
            ("23", "m11", "2569")
        );
        assert_eq!(p.time, "14:00");
    }
}
