//! Labels for training rows, respecting maintenance and censoring.
//!
//! For a row at event time `t` and a failure mode, only the NEXT event of that mode counts: a
//! maintenance replaces the part and restarts its clock, so a failure after it is another part's.
//!
//! - next event is a failure at `f`: time to failure `f − t`; positive when within the horizon.
//! - next event is a maintenance at `m`, or nothing was observed until `end`: no failure for at
//!   least `m − t` (or `end − t`) hours. Negative only if that covers the horizon; otherwise the row
//!   is censored (unknown) and is not used by the classifier. The regressor gets the cap when that
//!   span covers the cap, else the row is censored for it too.
//! - a ticket of the mode that a person dismissed as a false alarm, without a visit
//!   ([`Dismissal`], `forewarn export`'s `dismissals.csv`): a row while it was live that the
//!   history leaves censored is a negative (see [`with_dismissals`]).

use crate::domain::{event_applies_before, DeviceEvent, EventKind, Timestamp};
use crate::features::HOUR_MS;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    /// Hours to the next failure of the mode, when one was observed before any maintenance.
    pub ttf_hours: Option<f64>,
    /// Fails within the horizon; `None` when censored.
    pub positive: Option<bool>,
    /// Regression target: time to failure capped at the cap; `None` when censored.
    pub target: Option<f64>,
}

/// A ticket dismissed as a false alarm without a visit: a person's word that the mode's part was
/// sound from the ticket's opening to its dismissal.
#[derive(Debug, Clone, PartialEq)]
pub struct Dismissal {
    pub mode: String,
    pub opened: Timestamp,
    pub dismissed: Timestamp,
}

/// `l`, the label of a row at `t` for `mode`, with the dismissals of the row's device: a row in a
/// dismissed ticket's span (opening to dismissal, both included) whose label the history leaves
/// open — censored, because a maintenance or the end of the data comes within the horizon — is a
/// negative. A failure observed within the horizon still wins (then the dismissal was the
/// mistake), and a row the history already settles is left as it is. The regression target is
/// not touched: a dismissal says nothing about how long the part would have lasted.
pub fn with_dismissals(l: Label, dismissals: &[Dismissal], mode: &str, t: Timestamp) -> Label {
    if l.positive.is_some() {
        return l;
    }
    let vouched = dismissals
        .iter()
        .any(|d| d.mode == mode && d.opened <= t && t <= d.dismissed);
    Label {
        positive: vouched.then_some(false),
        ..l
    }
}

/// Labels a row at `t` for `mode`. `events` are the device's events sorted by time, `end` the
/// last event time observed for the device.
pub fn label(
    events: &[DeviceEvent],
    mode: &str,
    t: Timestamp,
    end: Timestamp,
    horizon_h: f64,
    cap_h: f64,
) -> Label {
    // An event stamped at the row's own time has been applied before the row is scored (the
    // windows cleared, the mode's clock restarted): the row is the new part's, not the old one's.
    let next = events.iter().find(|e| {
        !event_applies_before(e.ts, t)
            && e.code == mode
            && matches!(e.kind, EventKind::Failure | EventKind::Maintenance)
    });
    match next {
        Some(e) if e.kind == EventKind::Failure => {
            let ttf = (e.ts - t) as f64 / HOUR_MS;
            Label {
                ttf_hours: Some(ttf),
                positive: Some(ttf <= horizon_h),
                target: Some(ttf.min(cap_h)),
            }
        }
        other => {
            let until = other.map_or(end, |e| e.ts);
            let free = (until - t).max(0) as f64 / HOUR_MS;
            Label {
                ttf_hours: None,
                positive: if free > horizon_h { Some(false) } else { None },
                target: if free >= cap_h { Some(cap_h) } else { None },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dismissal_turns_censored_rows_in_its_span_into_negatives_and_no_more() {
        let at = |h: i64| Timestamp::from_millis(h * 3_600_000);
        let d = [Dismissal {
            mode: "pump".into(),
            opened: at(90),
            dismissed: at(96),
        }];
        // The data ends at 100 h; horizon 24 h: rows after 76 h are censored.
        let end = at(100);
        let row = |h: i64, events: &[DeviceEvent]| {
            with_dismissals(
                label(events, "pump", at(h), end, 24.0, 96.0),
                &d,
                "pump",
                at(h),
            )
        };
        assert_eq!(row(80, &[]).positive, None, "before the ticket opened");
        assert_eq!(row(90, &[]).positive, Some(false), "at its opening");
        assert_eq!(row(96, &[]).positive, Some(false), "at its dismissal");
        assert_eq!(row(97, &[]).positive, None, "after it");
        assert_eq!(
            row(93, &[]).target,
            None,
            "the regression target stays unknown"
        );
        // Another mode's rows are not vouched for.
        let other = with_dismissals(
            label(&[], "seal", at(93), end, 24.0, 96.0),
            &d,
            "seal",
            at(93),
        );
        assert_eq!(other.positive, None);
        // A failure within the horizon wins over the dismissal.
        let failed = [ev(99, EventKind::Failure)];
        assert_eq!(row(93, &failed).positive, Some(true));
    }

    fn ev(h: i64, kind: EventKind) -> DeviceEvent {
        DeviceEvent {
            device_id: crate::domain::DeviceId::parse("d").unwrap(),
            ts: Timestamp::from_millis(h * 3_600_000),
            kind,
            code: "pump".into(),
        }
    }

    #[test]
    fn maintenance_resets_the_clock_so_a_later_failure_is_not_a_positive() {
        let evs = vec![ev(10, EventKind::Maintenance), ev(15, EventKind::Failure)];
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        // 8 h before maintenance, 13 h before the failure: censored, not positive.
        let l = label(&evs, "pump", h(2), h(20), 24.0, 100.0);
        assert_eq!(l.positive, None);
        assert_eq!(l.ttf_hours, None);
        // After the maintenance the failure is 4 h away: positive.
        let l = label(&evs, "pump", h(11), h(20), 24.0, 100.0);
        assert_eq!(l.positive, Some(true));
        assert_eq!(l.target, Some(4.0));
        // Another mode has no events: censored unless the observed future covers the horizon.
        assert_eq!(label(&evs, "fan", h(0), h(20), 24.0, 100.0).positive, None);
        assert_eq!(
            label(&evs, "fan", h(0), h(30), 24.0, 10.0).positive,
            Some(false)
        );
        assert_eq!(
            label(&evs, "fan", h(0), h(30), 24.0, 10.0).target,
            Some(10.0)
        );
    }

    #[test]
    fn an_event_stamped_at_the_rows_own_time_applies_before_it_and_is_not_its_next_event() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let evs = vec![ev(10, EventKind::Failure), ev(40, EventKind::Failure)];
        // The row at the failure's own hour is scored after the failure (events first): it is
        // the new part's, 30 h before the next failure, not the old part's with 0 h left.
        let l = label(&evs, "pump", h(10), h(50), 24.0, 100.0);
        assert_eq!(l.ttf_hours, Some(30.0));
        assert_eq!(l.positive, Some(false));
        // An hour earlier it is the old part's.
        let l = label(&evs, "pump", h(9), h(50), 24.0, 100.0);
        assert_eq!((l.ttf_hours, l.positive), (Some(1.0), Some(true)));
        // After the last failure, at its own time: nothing follows within the observed end.
        let l = label(&evs, "pump", h(40), h(40), 24.0, 100.0);
        assert_eq!((l.ttf_hours, l.positive), (None, None));
    }

    #[test]
    fn far_failures_are_negatives_with_capped_targets() {
        let evs = vec![ev(200, EventKind::Failure)];
        let l = label(
            &evs,
            "pump",
            Timestamp::EPOCH,
            Timestamp::from_millis(200 * 3_600_000),
            24.0,
            96.0,
        );
        assert_eq!(l.positive, Some(false));
        assert_eq!(l.target, Some(96.0));
        assert_eq!(l.ttf_hours, Some(200.0));
    }
}
