//! Event time: epoch milliseconds, with one parser and one formatter for the contract's
//! timestamps (RFC 3339 text, or integer epoch milliseconds where a format allows a number).

use super::Dur;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// A point in event time: milliseconds since the Unix epoch.
///
/// A `Copy` newtype over `i64`: windows, features and backtests do arithmetic on it in their
/// inner loops, and every operation here is the integer one, so it costs nothing. Text comes in
/// through [`Timestamp::parse`] (or [`Timestamp::parse_rfc3339`] where a format allows only RFC
/// 3339) and goes out through [`Timestamp::format`] / `Display`; stored records, JSON bodies and
/// checkpoints hold the plain integer (`serde(transparent)`), as they did before the type existed.
///
/// Arithmetic: `ts + ms` and `ts - ms` move by a signed number of milliseconds (the unit every
/// window, tolerance and interval is kept in), `ts ± Dur` by a configured duration, and
/// `ts - ts` is the signed number of milliseconds between two times.
///
/// `Debug` prints the bare integer, as it did when this was an `i64`, so log lines and
/// assertion messages that show a reading or a state read the same.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Why a text is not a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time or integer epoch milliseconds")]
pub struct TimestampError;

impl Timestamp {
    /// The earliest representable time: the "never" a state starts from.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The latest representable time.
    pub const MAX: Timestamp = Timestamp(i64::MAX);
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp(0);

    #[inline]
    pub const fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    #[inline]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses a timestamp written as text in a history file, a query or a stored record: RFC 3339
    /// (any offset), or integer epoch milliseconds. Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Option<Timestamp> {
        Timestamp::parse_rfc3339(s).or_else(|| parse_epoch_ms(s.trim()).map(Timestamp))
    }

    /// Parses RFC 3339 text only: a JSON payload's string `ts` (epoch milliseconds come as a JSON
    /// number there, so a string of digits is not a timestamp). Surrounding whitespace is ignored.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let s = s.trim();
        parse_utc_rfc3339(s)
            .or_else(|| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp_millis())
            })
            .map(Timestamp)
    }

    /// Formats event time as RFC 3339 (UTC, second precision unless sub-second); a time outside
    /// chrono's range is written as its epoch milliseconds, which [`Timestamp::parse`] reads back.
    pub fn format(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            None => self.0.to_string(),
        }
    }

    /// `self + ms`, clamped at the ends of the range.
    #[inline]
    pub const fn saturating_add(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - ms`, clamped at the ends of the range.
    #[inline]
    pub const fn saturating_sub(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Timestamp, TimestampError> {
        Timestamp::parse(s).ok_or(TimestampError)
    }
}

impl Add<i64> for Timestamp {
    type Output = Timestamp;
    #[inline]
    fn add(self, ms: i64) -> Timestamp {
        Timestamp(self.0 + ms)
    }
}

impl Sub<i64> for Timestamp {
    type Output = Timestamp;
    #[inline]
    fn sub(self, ms: i64) -> Timestamp {
        Timestamp(self.0 - ms)
    }
}

impl AddAssign<i64> for Timestamp {
    #[inline]
    fn add_assign(&mut self, ms: i64) {
        self.0 += ms;
    }
}

impl SubAssign<i64> for Timestamp {
    #[inline]
    fn sub_assign(&mut self, ms: i64) {
        self.0 -= ms;
    }
}

impl Add<Dur> for Timestamp {
    type Output = Timestamp;
    #[inline]
    fn add(self, d: Dur) -> Timestamp {
        Timestamp(self.0 + d.as_millis_i64())
    }
}

impl Sub<Dur> for Timestamp {
    type Output = Timestamp;
    #[inline]
    fn sub(self, d: Dur) -> Timestamp {
        Timestamp(self.0 - d.as_millis_i64())
    }
}

/// Milliseconds from `other` to `self` (negative when `other` is later).
impl Sub for Timestamp {
    type Output = i64;
    #[inline]
    fn sub(self, other: Timestamp) -> i64 {
        self.0 - other.0
    }
}

/// In the configuration's schema, as in every stored format: integer epoch milliseconds.
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "format": "int64"})
    }
}

/// Integer epoch milliseconds: an optional minus sign and ASCII digits, nothing else.
fn parse_epoch_ms(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The common RFC 3339 form, `YYYY-MM-DDTHH:MM:SS(.f{1,9})?Z` (what devices and
/// [`Timestamp::format`] write), without chrono: same result as chrono for every string it accepts (tested against
/// chrono), `None` for anything else — then chrono decides, so leap seconds, offsets, lower-case
/// separators and the like keep chrono's semantics.
fn parse_utc_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digit = |i: usize| -> Option<i64> {
        let d = b[i].wrapping_sub(b'0');
        (d < 10).then_some(d as i64)
    };
    let two = |i: usize| -> Option<i64> { Some(digit(i)? * 10 + digit(i + 1)?) };
    let year = two(0)? * 100 + two(2)?;
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    if i + 1 != b.len() || b[i] != b'Z' {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(secs * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_ms(s: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    fn ms(ms: i64) -> Option<Timestamp> {
        Some(Timestamp::from_millis(ms))
    }

    #[test]
    fn rfc3339_and_epoch_millis_both_parse() {
        assert_eq!(
            Timestamp::parse("2015-01-01T06:00:00Z"),
            ms(1_420_092_000_000)
        );
        assert_eq!(Timestamp::parse(" 1420092000000 "), ms(1_420_092_000_000));
        assert_eq!(Timestamp::parse("-5"), ms(-5));
        assert_eq!(Timestamp::parse_rfc3339("1420092000000"), None);
        for bad in ["", "-", "+5", "1.5", "1e3", "yesterday", "٣", "２０１５"] {
            assert_eq!(Timestamp::parse(bad), None, "{bad:?}");
            assert_eq!(bad.parse::<Timestamp>(), Err(TimestampError), "{bad:?}");
        }
        let t = Timestamp::from_millis(1_420_092_000_000);
        assert_eq!(t.format(), "2015-01-01T06:00:00Z");
        assert_eq!(t.to_string(), "2015-01-01T06:00:00Z");
        assert_eq!((t + 250).format(), "2015-01-01T06:00:00.250Z");
    }

    #[test]
    fn odd_offsets_parse_to_the_same_instant_and_format_in_utc() {
        let utc = Timestamp::parse("2015-01-01T06:00:00Z");
        for text in [
            "2015-01-01T11:45:00+05:45",
            "2015-01-01T02:30:00-03:30",
            "2015-01-01T19:45:00+13:45",
            "2015-01-01T06:00:00+00:00",
            "2015-01-01T06:00:00.000Z",
        ] {
            assert_eq!(Timestamp::parse(text), utc, "{text}");
            assert_eq!(Timestamp::parse_rfc3339(text), utc, "{text}");
        }
        let t = Timestamp::parse("2015-01-01T11:45:00.5+05:45").expect("parses");
        assert_eq!(t.format(), "2015-01-01T06:00:00.500Z");
        assert_eq!(Timestamp::parse(&t.format()), Some(t));
    }

    #[test]
    fn times_outside_chronos_range_are_written_as_epoch_millis_and_read_back() {
        for t in [Timestamp::MIN, Timestamp::MAX] {
            assert_eq!(t.format(), t.as_millis().to_string());
            assert_eq!(Timestamp::parse(&t.format()), Some(t));
        }
    }

    #[test]
    fn timestamps_order_and_do_arithmetic_in_milliseconds() {
        let a = Timestamp::from_millis(1_000);
        let b = a + 500;
        assert!(Timestamp::MIN < a && a < b && b < Timestamp::MAX);
        assert_eq!(b - a, 500);
        assert_eq!(a - b, -500);
        assert_eq!(b - 500, a);
        assert_eq!(a + Dur::secs(2), Timestamp::from_millis(3_000));
        assert_eq!(a - Dur::millis(1_500), Timestamp::from_millis(-500));
        assert_eq!(Timestamp::MIN.saturating_sub(1), Timestamp::MIN);
        assert_eq!(Timestamp::MAX.saturating_add(1), Timestamp::MAX);
        let mut c = a;
        c += 10;
        c -= 20;
        assert_eq!(c.as_millis(), 990);
        let mut v = vec![b, Timestamp::EPOCH, a];
        v.sort();
        assert_eq!(v, vec![Timestamp::EPOCH, a, b]);
    }

    #[test]
    fn serialised_timestamps_are_the_plain_integer_they_always_were() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Old {
            at: i64,
            maybe: Option<i64>,
            list: Vec<i64>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct New {
            at: Timestamp,
            maybe: Option<Timestamp>,
            list: Vec<Timestamp>,
        }
        let old = Old {
            at: 1_420_092_000_250,
            maybe: Some(-5),
            list: vec![i64::MIN, 0, i64::MAX],
        };
        let new = New {
            at: Timestamp::from_millis(old.at),
            maybe: Some(Timestamp::from_millis(-5)),
            list: vec![Timestamp::MIN, Timestamp::EPOCH, Timestamp::MAX],
        };
        let json = serde_json::to_string(&old).expect("json");
        assert_eq!(serde_json::to_string(&new).expect("json"), json);
        assert_eq!(serde_json::from_str::<New>(&json).expect("json"), new);
        let bytes = postcard::to_allocvec(&old).expect("postcard");
        assert_eq!(postcard::to_allocvec(&new).expect("postcard"), bytes);
        assert_eq!(postcard::from_bytes::<New>(&bytes).expect("postcard"), new);
    }

    #[test]
    fn fast_rfc3339_knows_month_lengths_and_leap_years() {
        for year in [1900, 1970, 1999, 2000, 2023, 2024, 2100] {
            for month in 1..=12 {
                for day in 27..=32 {
                    let s = format!("{year:04}-{month:02}-{day:02}T23:59:59.999Z");
                    assert_eq!(parse_utc_rfc3339(&s), chrono_ms(&s), "{s}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fast_rfc3339_agrees_with_chrono(
            ms in -62_000_000_000_000i64..253_402_300_799_999,
            digits in 0usize..10,
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?Z",
        ) {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                let nanos = format!("{:09}", t.timestamp_subsec_nanos());
                s.push('.');
                s.push_str(&nanos[..digits]);
            }
            s.push('Z');
            prop_assert!(parse_utc_rfc3339(&s).is_some(), "{s}");
            prop_assert_eq!(parse_utc_rfc3339(&s), chrono_ms(&s), "{}", s);
            // Random digits: whatever the fast path accepts, chrono accepts with the same value.
            if let Some(v) = parse_utc_rfc3339(&text) {
                prop_assert_eq!(Some(v), chrono_ms(&text), "{}", text);
            }
            prop_assert_eq!(Timestamp::parse_rfc3339(&text).map(Timestamp::as_millis), chrono_ms(&text), "{}", text);
        }

        #[test]
        fn formatted_times_parse_back(ms in -62_000_000_000_000i64..253_402_300_799_999) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(Timestamp::parse(&t.format()), Some(t));
            prop_assert_eq!(Timestamp::parse(&ms.to_string()), Some(t));
        }
    }
}
