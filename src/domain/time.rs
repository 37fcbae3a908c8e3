//! Event time: epoch milliseconds, with one parser and one formatter for the contract's
//! timestamps (RFC 3339 text, or integer epoch milliseconds where a format allows a number).

/// Epoch milliseconds, in event time.
///
/// A plain integer rather than a newtype: windows, features and backtests do arithmetic on it
/// throughout, and every value that enters the crate comes through [`parse_ts`] (or a payload's
/// integer field), which is where the checking happens.
pub type Millis = i64;

/// Parses a timestamp written as text in a history file, a query or a stored record: RFC 3339
/// (any offset), or integer epoch milliseconds. Surrounding whitespace is ignored.
pub fn parse_ts(s: &str) -> Option<Millis> {
    parse_rfc3339(s).or_else(|| parse_epoch_ms(s.trim()))
}

/// Parses RFC 3339 text only: a JSON payload's string `ts` (epoch milliseconds come as a JSON
/// number there, so a string of digits is not a timestamp). Surrounding whitespace is ignored.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let s = s.trim();
    parse_utc_rfc3339(s).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

/// Integer epoch milliseconds: an optional minus sign and ASCII digits, nothing else.
fn parse_epoch_ms(s: &str) -> Option<Millis> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Formats event time as RFC 3339 (UTC, second precision unless sub-second); a time outside
/// chrono's range is written as its epoch milliseconds, which [`parse_ts`] reads back.
pub fn format_ts(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

/// The common RFC 3339 form, `YYYY-MM-DDTHH:MM:SS(.f{1,9})?Z` (what devices and [`format_ts`]
/// write), without chrono: same result as chrono for every string it accepts (tested against
/// chrono), `None` for anything else — then chrono decides, so leap seconds, offsets, lower-case
/// separators and the like keep chrono's semantics.
fn parse_utc_rfc3339(s: &str) -> Option<Millis> {
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

    fn chrono_ms(s: &str) -> Option<Millis> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn rfc3339_and_epoch_millis_both_parse() {
        assert_eq!(parse_ts("2015-01-01T06:00:00Z"), Some(1_420_092_000_000));
        assert_eq!(parse_ts(" 1420092000000 "), Some(1_420_092_000_000));
        assert_eq!(parse_ts("-5"), Some(-5));
        assert_eq!(parse_rfc3339("1420092000000"), None);
        for bad in ["", "-", "+5", "1.5", "1e3", "yesterday", "٣"] {
            assert_eq!(parse_ts(bad), None, "{bad:?}");
        }
        assert_eq!(format_ts(1_420_092_000_000), "2015-01-01T06:00:00Z");
        assert_eq!(format_ts(1_420_092_000_250), "2015-01-01T06:00:00.250Z");
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
            prop_assert_eq!(parse_rfc3339(&text), chrono_ms(&text), "{}", text);
        }

        #[test]
        fn formatted_times_parse_back(ms in -62_000_000_000_000i64..253_402_300_799_999) {
            prop_assert_eq!(parse_ts(&format_ts(ms)), Some(ms));
        }
    }
}
