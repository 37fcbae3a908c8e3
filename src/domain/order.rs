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

/// Whether an event stamped `event` is applied before a reading stamped `reading`: the
/// [`apply_order`] of one event and one reading, for code that walks a device's events beside
/// its scorings instead of merging them (training's labels and its replay of the ticket policy).
/// At equal timestamps it is, as in the engine: a failure or maintenance logged at 06:00 has
/// restarted its mode before the 06:00 reading is scored.
pub fn event_applies_before(event: Timestamp, reading: Timestamp) -> bool {
    event <= reading
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_applies_before_a_reading_of_its_own_time_as_the_apply_order_sorts_them() {
        for kind in [EventKind::Failure, EventKind::Maintenance, EventKind::Error] {
            for (e, r) in [(4, 5), (5, 5), (6, 5)] {
                let (e, r) = (Timestamp::from_millis(e), Timestamp::from_millis(r));
                let sorted = apply_order((e, Some(kind), "m"), (r, None, "")).is_lt();
                assert_eq!(
                    event_applies_before(e, r),
                    sorted,
                    "{kind:?} at {e:?}, reading at {r:?}"
                );
            }
        }
        let t = Timestamp::from_millis(5);
        assert!(event_applies_before(t, t));
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
