//! The one order in which a device's readings and events are applied, in `serve`, `evaluate`,
//! `train` and `replay` alike (contract, section 7): by timestamp; at equal timestamps events
//! before readings (what was logged at 06:00 is known to the 06:00 score), and among events
//! `failure`, then `maintenance`, then `error`, then by code.

use super::{EventKind, Timestamp};
use std::cmp::Ordering;

/// Where an item of this kind sits among items of the same timestamp.
pub fn rank(event: Option<EventKind>) -> u8 {
    match event {
        Some(EventKind::Failure) => 0,
        Some(EventKind::Maintenance) => 1,
        Some(EventKind::Error) => 2,
        None => 3,
    }
}

/// Compares two items by the apply order: `(ts, kind, code)`, where `kind` is `None` for a
/// reading (whose code is empty). Equal items keep their relative order under a stable sort.
pub fn apply_order(
    a: (Timestamp, Option<EventKind>, &str),
    b: (Timestamp, Option<EventKind>, &str),
) -> Ordering {
    a.0.cmp(&b.0)
        .then(rank(a.1).cmp(&rank(b.1)))
        .then_with(|| a.2.cmp(b.2))
}

/// Whether an event stamped `event` has been applied when a reading stamped `reading` is scored:
/// every event up to and including the reading's own time (events first at equal timestamps).
/// Training's labels, its replay of the ticket policy and the matching of tickets to failures ask
/// this, so they see a scoring exactly as the engine makes it.
pub fn event_applies_before(event: Timestamp, reading: Timestamp) -> bool {
    event <= reading
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_applies_before_a_reading_exactly_when_the_apply_order_sorts_it_first() {
        let kinds = [EventKind::Failure, EventKind::Maintenance, EventKind::Error];
        for e in 3..=7 {
            for kind in kinds {
                let (et, rt) = (Timestamp::from_millis(e), Timestamp::from_millis(5));
                let sorted_first =
                    apply_order((et, Some(kind), "zz"), (rt, None, "")) == Ordering::Less;
                assert_eq!(event_applies_before(et, rt), sorted_first, "event at {e}");
            }
        }
    }

    #[test]
    fn equal_timestamps_put_events_first_failure_maintenance_error_then_code() {
        let mut items = vec![
            (5, None, ""),
            (5, Some(EventKind::Error), "e9"),
            (5, Some(EventKind::Error), "e1"),
            (5, Some(EventKind::Maintenance), "comp2"),
            (4, None, ""),
            (5, Some(EventKind::Failure), "comp1"),
        ];
        items.sort_by(|a, b| {
            let at = |x: &(i64, Option<EventKind>, &'static str)| {
                (Timestamp::from_millis(x.0), x.1, x.2)
            };
            apply_order(at(a), at(b))
        });
        assert_eq!(
            items,
            vec![
                (4, None, ""),
                (5, Some(EventKind::Failure), "comp1"),
                (5, Some(EventKind::Maintenance), "comp2"),
                (5, Some(EventKind::Error), "e1"),
                (5, Some(EventKind::Error), "e9"),
                (5, None, ""),
            ]
        );
    }
}
