//! Visit slots (pure): a technician's free slots within their working hours on business days,
//! after a moment, clear of the visits they already have.

use super::sla::BusinessCalendar;
use crate::domain::{Slot, Timestamp};

/// How many days ahead free slots are looked for.
const HORIZON_DAYS: usize = 60;

/// Up to `n` free slots of `slot_ms`, cut from the start of each working day (`hours`: local
/// minutes after midnight), starting at or after `after`, overlapping none of `busy`.
pub fn free_slots(
    cal: &BusinessCalendar,
    hours: (u32, u32),
    slot_ms: i64,
    after: Timestamp,
    busy: &[Slot],
    n: usize,
) -> Vec<Slot> {
    let mut out = Vec::new();
    let Some(mut d) = cal.date_of(after) else {
        return out;
    };
    if slot_ms <= 0 {
        return out;
    }
    for _ in 0..HORIZON_DAYS {
        if out.len() >= n {
            break;
        }
        if cal.is_business_day(d) {
            if let Some((open, close)) = cal.window(d, hours.0, hours.1) {
                let mut start = open;
                while start + slot_ms <= close && out.len() < n {
                    let s = Slot {
                        start_ms: start,
                        end_ms: start + slot_ms,
                    };
                    if start >= after && !busy.iter().any(|b| b.overlaps(&s)) {
                        out.push(s);
                    }
                    start += slot_ms;
                }
            }
        }
        d = match d.succ_opt() {
            Some(x) => x,
            None => break,
        };
    }
    out
}

/// Whether `slot` lies within the working hours of a business day.
pub fn within_hours(cal: &BusinessCalendar, hours: (u32, u32), slot: &Slot) -> bool {
    let Some(d) = cal.date_of(slot.start_ms) else {
        return false;
    };
    if !cal.is_business_day(d) || slot.end_ms <= slot.start_ms {
        return false;
    }
    cal.window(d, hours.0, hours.1)
        .is_some_and(|(open, close)| slot.start_ms >= open && slot.end_ms <= close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;

    fn cal() -> BusinessCalendar {
        BusinessCalendar::new(
            "UTC",
            "08:00-17:00",
            &["mon", "tue", "wed", "thu", "fri"].map(String::from),
            &["2026-11-30".to_string()],
        )
        .unwrap()
    }

    const H: i64 = 3_600_000;

    #[test]
    fn slots_fill_working_hours_and_skip_weekends_holidays_and_busy_time() {
        let c = cal();
        let after = Timestamp::parse("2026-11-27T13:30:00Z").unwrap(); // a Friday
        let busy = [Slot {
            start_ms: Timestamp::parse("2026-12-01T10:00:00Z").unwrap(),
            end_ms: Timestamp::parse("2026-12-01T12:00:00Z").unwrap(),
        }];
        let s = free_slots(&c, (8 * 60, 17 * 60), 2 * H, after, &busy, 5);
        let starts: Vec<String> = s.iter().map(|s| s.start_ms.format()).collect();
        assert_eq!(
            starts,
            [
                // Friday: 14:00–16:00 (16:00–18:00 would end after closing).
                "2026-11-27T14:00:00Z",
                // Monday is a holiday; Tuesday without the busy 10:00–12:00.
                "2026-12-01T08:00:00Z",
                "2026-12-01T12:00:00Z",
                "2026-12-01T14:00:00Z",
                "2026-12-02T08:00:00Z",
            ]
        );
        assert!(s.iter().all(|x| within_hours(&c, (8 * 60, 17 * 60), x)));
    }

    #[test]
    fn a_slot_outside_hours_or_on_a_holiday_is_not_within_hours() {
        let c = cal();
        let slot = |a: &str, b: &str| Slot {
            start_ms: Timestamp::parse(a).unwrap(),
            end_ms: Timestamp::parse(b).unwrap(),
        };
        let h = (8 * 60, 17 * 60);
        assert!(within_hours(
            &c,
            h,
            &slot("2026-12-01T15:00:00Z", "2026-12-01T17:00:00Z")
        ));
        assert!(!within_hours(
            &c,
            h,
            &slot("2026-12-01T16:00:00Z", "2026-12-01T18:00:00Z")
        ));
        assert!(!within_hours(
            &c,
            h,
            &slot("2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z")
        ));
        assert!(!within_hours(
            &c,
            h,
            &slot("2026-11-28T09:00:00Z", "2026-11-28T10:00:00Z")
        ));
    }
}
