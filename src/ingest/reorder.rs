//! Event time, really: a per-device reorder buffer, pure. Readings and events that arrive up to
//! the tolerance out of order are held and released in the apply order of
//! [`crate::domain::apply_order`] once the device's watermark passes them, so any arrival order
//! within the tolerance gives the backtest's result.
//!
//! The watermark is the newest event time seen minus the tolerance; it only moves forward. An
//! item older than the watermark is late (dropped and counted, as before). An item is released
//! once it is strictly older than the watermark, so everything released is older than everything
//! still accepted. When the device falls silent, [`Buffer::flush`] (driven by an idle timer)
//! releases the rest and moves the watermark past it. What is offered to the buffer is in
//! the step log, and the buffer itself is stored with the device's state at checkpoints, so an
//! acknowledged message is never only in memory.

use crate::domain::{apply_order, DeviceEvent, DeviceId, EventKind, Reading, Timestamp};
use serde::{Deserialize, Serialize};

/// What the buffer holds of a reading or event (the device id is the buffer's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub ts: Timestamp,
    /// `None` for a reading.
    pub event: Option<EventKind>,
    /// The event's code; empty for a reading.
    pub code: String,
    pub seq: Option<u64>,
    /// Metric values of a reading.
    pub metrics: Vec<(String, f64)>,
    /// Wall-clock receipt (epoch ms), for the reading→ticket latency.
    pub received_ms: i64,
}

/// A released item, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Reading(Reading),
    Event(DeviceEvent),
}

impl Item {
    pub fn ts(&self) -> Timestamp {
        match self {
            Item::Reading(r) => r.ts,
            Item::Event(e) => e.ts,
        }
    }

    pub fn device_id(&self) -> &str {
        match self {
            Item::Reading(r) => &r.device_id,
            Item::Event(e) => &e.device_id,
        }
    }
}

/// What became of an offered item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Held,
    /// Older than the watermark: dropped (`late`).
    Late,
    /// The same item is already held (a redelivery): dropped (`duplicate`).
    Duplicate,
}

/// One device's held items and watermark.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    /// Newest event time accepted.
    pub max_seen: Option<Timestamp>,
    /// Items older than this are released; arrivals older than this are late.
    pub watermark: Option<Timestamp>,
    /// Held items, kept sorted in apply order (stable: arrival order among equals).
    pub pending: Vec<Pending>,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Offers a reading or event; `tolerance_ms` > 0.
    pub fn offer(&mut self, p: Pending, tolerance_ms: i64) -> Offer {
        if self.watermark.is_some_and(|w| p.ts < w) {
            return Offer::Late;
        }
        if self
            .pending
            .iter()
            .any(|q| q.ts == p.ts && q.event == p.event && q.code == p.code && q.seq == p.seq)
        {
            return Offer::Duplicate;
        }
        let max = self.max_seen.map_or(p.ts, |m| m.max(p.ts));
        self.max_seen = Some(max);
        let w = max.saturating_sub(tolerance_ms);
        self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
        let at = self.pending.partition_point(|q| key_le(q, &p));
        self.pending.insert(at, p);
        Offer::Held
    }

    /// Moves the items older than the watermark, in apply order, to `out`.
    pub fn release(&mut self, device: &DeviceId, out: &mut Vec<(Item, i64)>) {
        let Some(w) = self.watermark else { return };
        let n = self.pending.partition_point(|q| q.ts < w);
        out.extend(self.pending.drain(..n).map(|p| p.into_item(device)));
    }

    /// The device is idle: releases everything held and moves the watermark up to the newest
    /// time seen, so what arrives later before it counts as late. An item stamped exactly at
    /// that time is still accepted (a reading that follows its same-time event after a pause of
    /// the publisher), at the price of the equal-time order against what was released.
    pub fn flush(&mut self, device: &DeviceId, out: &mut Vec<(Item, i64)>) {
        if let Some(m) = self.max_seen {
            self.watermark = Some(self.watermark.map_or(m, |old| old.max(m)));
        }
        out.extend(self.pending.drain(..).map(|p| p.into_item(device)));
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Buffer> {
        postcard::from_bytes(bytes).ok()
    }
}

/// `a` sorts at or before `b` (readings of equal time by `seq`).
fn key_le(a: &Pending, b: &Pending) -> bool {
    match apply_order((a.ts, a.event, &a.code), (b.ts, b.event, &b.code)) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => match (a.seq, b.seq) {
            (Some(x), Some(y)) => x <= y,
            _ => true,
        },
    }
}

impl Pending {
    pub fn reading(r: &Reading, received_ms: i64) -> Pending {
        Pending {
            ts: r.ts,
            event: None,
            code: String::new(),
            seq: r.seq,
            metrics: r.metrics.clone(),
            received_ms,
        }
    }

    pub fn event(e: &DeviceEvent, received_ms: i64) -> Pending {
        Pending {
            ts: e.ts,
            event: Some(e.kind),
            code: e.code.clone(),
            seq: None,
            metrics: Vec::new(),
            received_ms,
        }
    }
}

impl Pending {
    /// What the buffer holds of an item, taking its metrics rather than copying them, and the
    /// item's device id (the buffer is per device and does not keep it).
    pub fn from_item(item: Item, received_ms: i64) -> (Pending, DeviceId) {
        match item {
            Item::Reading(r) => (
                Pending {
                    ts: r.ts,
                    event: None,
                    code: String::new(),
                    seq: r.seq,
                    metrics: r.metrics,
                    received_ms,
                },
                r.device_id,
            ),
            Item::Event(e) => (
                Pending {
                    ts: e.ts,
                    event: Some(e.kind),
                    code: e.code,
                    seq: None,
                    metrics: Vec::new(),
                    received_ms,
                },
                e.device_id,
            ),
        }
    }

    /// The reading or event again, with its receipt time.
    pub fn into_item(self, device: &DeviceId) -> (Item, i64) {
        let p = self;
        let item = match p.event {
            None => Item::Reading(Reading {
                device_id: device.clone(),
                ts: p.ts,
                seq: p.seq,
                metrics: p.metrics,
            }),
            Some(kind) => Item::Event(DeviceEvent {
                device_id: device.clone(),
                ts: p.ts,
                kind,
                code: p.code,
            }),
        };
        (item, p.received_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ts: i64, seq: u64) -> Pending {
        Pending {
            ts: Timestamp::from_millis(ts),
            event: None,
            code: String::new(),
            seq: Some(seq),
            metrics: vec![("t".into(), ts as f64)],
            received_ms: 0,
        }
    }

    fn e(ts: i64, kind: EventKind, code: &str) -> Pending {
        Pending {
            ts: Timestamp::from_millis(ts),
            event: Some(kind),
            code: code.into(),
            seq: None,
            metrics: vec![],
            received_ms: 0,
        }
    }

    fn order(out: &[(Item, i64)]) -> Vec<(i64, &'static str)> {
        out.iter()
            .map(|(i, _)| match i {
                Item::Reading(r) => (r.ts.as_millis(), "r"),
                Item::Event(e) => (e.ts.as_millis(), e.kind.as_str()),
            })
            .collect()
    }

    #[test]
    fn out_of_order_arrivals_within_the_tolerance_are_released_in_event_time_order() {
        let mut b = Buffer::default();
        let d = crate::domain::DeviceId::parse("d").unwrap();
        let mut out = vec![];
        for p in [
            r(10, 2),
            r(5, 1),
            e(10, EventKind::Error, "x"),
            e(10, EventKind::Maintenance, "m"),
            r(21, 3),
        ] {
            assert_eq!(b.offer(p, 10), Offer::Held);
            b.release(&d, &mut out);
        }
        assert_eq!(
            order(&out),
            vec![(5, "r"), (10, "maintenance"), (10, "error"), (10, "r")]
        );
        assert_eq!(b.offer(r(9, 9), 10), Offer::Late);
        assert_eq!(b.offer(r(21, 3), 10), Offer::Duplicate);
        out.clear();
        b.flush(&d, &mut out);
        assert_eq!(order(&out), vec![(21, "r")]);
        assert_eq!(b.offer(r(20, 4), 10), Offer::Late, "flushed past");
        assert_eq!(
            b.offer(r(21, 5), 10),
            Offer::Held,
            "the newest time itself is not late"
        );
        assert_eq!(Buffer::decode(&b.encode()), Some(b));
    }
}
