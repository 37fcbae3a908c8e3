//! The queue (pure): one row per ticket with what a dispatcher decides on, ordered by the time
//! left before the predicted failure, and the filters.

use crate::domain::{DeviceId, Priority, Slot, Status, Timestamp};

/// One line of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub device_id: DeviceId,
    /// Empty when the device has no known owner.
    pub customer_id: String,
    pub customer_name: String,
    pub mode: String,
    /// The mode as people say it ("worn bearings").
    pub mode_words: String,
    /// The device's `region` attribute (empty when it has none).
    pub region: String,
    pub status: Status,
    pub priority: Priority,
    pub probability: f64,
    pub predicted_ms: Option<Timestamp>,
    pub opened_ms: Timestamp,
    /// When a response is due (from the SLA of the priority).
    pub deadline_ms: Timestamp,
    /// Someone acted on it: it left `open`.
    pub responded: bool,
    /// How the customer was reached ("SMS, delivered"), or that they were not (yet).
    pub reached: String,
    /// What the customer answered, in words; empty when they have not.
    pub answered: String,
    /// The assigned technician's name.
    pub technician: String,
    pub visit: Option<Slot>,
}

impl Row {
    /// Time left before the predicted failure (negative: past it).
    pub fn left_ms(&self, now: Timestamp) -> Option<i64> {
        self.predicted_ms.map(|p| p - now)
    }
    /// How far ahead of the failure the ticket opened.
    pub fn lead_ms(&self) -> Option<i64> {
        self.predicted_ms.map(|p| p - self.opened_ms)
    }
    /// Nobody responded and the deadline has passed.
    pub fn breached(&self, now: Timestamp) -> bool {
        !self.responded && now > self.deadline_ms
    }
}

/// Soonest predicted failure first; tickets without a predicted time after them, the likelier
/// first; then by id, so the order is stable.
pub fn order(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        let key = |r: &Row| {
            (
                r.predicted_ms.is_none(),
                r.predicted_ms.unwrap_or(Timestamp::EPOCH),
            )
        };
        key(a)
            .cmp(&key(b))
            .then(b.probability.total_cmp(&a.probability))
            .then(a.id.cmp(&b.id))
    });
}

/// Which statuses the queue shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Open, acknowledged and scheduled.
    #[default]
    Live,
    All,
    One(Status),
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s {
            "" | "live" => Some(StatusFilter::Live),
            "all" => Some(StatusFilter::All),
            s => Status::parse(s).map(StatusFilter::One),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Live => "live",
            StatusFilter::All => "all",
            StatusFilter::One(s) => s.as_str(),
        }
    }
    pub fn admits(self, s: Status) -> bool {
        match self {
            StatusFilter::Live => s.is_live(),
            StatusFilter::All => true,
            StatusFilter::One(x) => x == s,
        }
    }
}

/// The queue's filters; empty strings match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub status: StatusFilter,
    pub customer: String,
    pub mode: String,
    pub region: String,
    pub breached_only: bool,
}

impl Filter {
    pub fn matches(&self, r: &Row, now: Timestamp) -> bool {
        self.status.admits(r.status)
            && (self.customer.is_empty() || r.customer_id == self.customer)
            && (self.mode.is_empty() || r.mode == self.mode)
            && (self.region.is_empty() || r.region == self.region)
            && (!self.breached_only || r.breached(now))
    }
}

/// A span of time as people read it: "45 min", "3 h 20 min", "2 d 4 h".
pub fn span(ms: i64) -> String {
    let m = ms.unsigned_abs() / 60_000;
    let (d, h, min) = (m / 1440, (m % 1440) / 60, m % 60);
    match (d, h) {
        (0, 0) => format!("{min} min"),
        (0, _) if min == 0 => format!("{h} h"),
        (0, _) => format!("{h} h {min} min"),
        (_, 0) => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn row(id: &str, predicted: Option<Timestamp>, p: f64) -> Row {
        Row {
            id: id.into(),
            device_id: DeviceId::parse(&format!("dev-{id}")).unwrap(),
            customer_id: "c1".into(),
            customer_name: "Acme".into(),
            mode: "bearing_wear".into(),
            mode_words: "worn bearings".into(),
            region: "north".into(),
            status: Status::Open,
            priority: Priority::High,
            probability: p,
            predicted_ms: predicted,
            opened_ms: Timestamp::EPOCH,
            deadline_ms: Timestamp::from_millis(4 * H),
            responded: false,
            reached: String::new(),
            answered: String::new(),
            technician: String::new(),
            visit: None,
        }
    }

    #[test]
    fn the_soonest_failure_comes_first_and_unknown_times_last_by_likelihood() {
        let mut rows = vec![
            row("a", Some(Timestamp::from_millis(50 * H)), 0.9),
            row("b", None, 0.6),
            row("c", Some(Timestamp::from_millis(10 * H)), 0.5),
            row("d", None, 0.95),
            row("e", Some(Timestamp::from_millis(10 * H)), 0.8),
        ];
        order(&mut rows);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["e", "c", "a", "d", "b"]);
        assert_eq!(rows[0].left_ms(Timestamp::from_millis(4 * H)), Some(6 * H));
        assert_eq!(rows[0].lead_ms(), Some(10 * H));
    }

    #[test]
    fn a_deadline_is_breached_only_without_a_response() {
        let mut r = row("a", None, 0.9);
        assert!(!r.breached(Timestamp::from_millis(4 * H)));
        assert!(r.breached(Timestamp::from_millis(4 * H + 1)));
        r.responded = true;
        assert!(!r.breached(Timestamp::from_millis(10 * H)));
    }

    #[test]
    fn filters_combine() {
        let now = 5 * H;
        let mut other = row("b", None, 0.5);
        other.region = "south".into();
        other.status = Status::Scheduled;
        other.responded = true;
        let mut closed = row("c", None, 0.5);
        closed.status = Status::Resolved;
        let rows = [row("a", None, 0.9), other, closed];
        let ids = |f: &Filter| -> Vec<String> {
            rows.iter()
                .filter(|r| f.matches(r, Timestamp::from_millis(now)))
                .map(|r| r.id.clone())
                .collect()
        };
        assert_eq!(ids(&Filter::default()), ["a", "b"]);
        let f = Filter {
            status: StatusFilter::All,
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["a", "b", "c"]);
        let f = Filter {
            region: "south".into(),
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["b"]);
        let f = Filter {
            breached_only: true,
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["a"]);
        let f = Filter {
            status: StatusFilter::parse("scheduled").unwrap(),
            mode: "bearing_wear".into(),
            customer: "c1".into(),
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["b"]);
        assert_eq!(StatusFilter::parse("nonsense"), None);
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(45 * 60_000), "45 min");
        assert_eq!(span(3 * H + 20 * 60_000), "3 h 20 min");
        assert_eq!(span(-2 * H), "2 h");
        assert_eq!(span(52 * H), "2 d 4 h");
        assert_eq!(span(48 * H), "2 d");
    }
}
