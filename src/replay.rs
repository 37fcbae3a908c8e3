//! History files → device traffic: reads the contract's CSV layout, merges readings and events in
//! event-time order and publishes them to an MQTT broker as the devices would have, with QoS 1,
//! per-device sequence numbers and an optional rate limit. Used by `forewarn replay`, the
//! end-to-end tests and the benchmarks.
//!
//! Reading is streaming and forgiving: a bad row is reported as `file:line: reason`, counted and
//! skipped; only an unreadable file or a header without the required columns stops the replay.
//! History files are often sorted by device rather than by time, so the rows are kept in a compact
//! table (about 48 bytes per 4-metric reading) and sorted by time before publishing.

use crate::domain::{DeviceEvent, DeviceId, EventKind, Timestamp};
use crate::history::{
    self, BadRows, HistoryError, ReadSummary, Refused, RowError, TelemetryReader,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Header { path: PathBuf, detail: String },
    #[error("broker URL {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("broker {url}: cannot connect: {detail}")]
    Connect { url: String, detail: String },
    #[error("broker {url}: {acked} of {published} messages acknowledged; no acknowledgement for {waited_s} s (last error: {last_error})")]
    Unacked {
        url: String,
        published: u64,
        acked: u64,
        waited_s: u64,
        last_error: String,
    },
    #[error("broker {url}: client closed: {detail}")]
    Closed { url: String, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A reading: `at` indexes the value table (row × metric count).
    Reading,
    /// An event: `at` indexes the event table.
    Event,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    ts: Timestamp,
    device: u32,
    kind: Kind,
    at: u32,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// True for a reading (telemetry topic), false for an event.
    pub is_reading: bool,
}

/// History loaded from the CSV layout, sorted by event time (readings before events at the same
/// time; otherwise file order).
#[derive(Debug, Default)]
pub struct History {
    devices: Vec<DeviceId>,
    device_ids: HashMap<DeviceId, u32>,
    metrics: Vec<String>,
    /// Row-major: one row of `metrics.len()` values per reading; NaN is an empty cell.
    values: Vec<f64>,
    events: Vec<(EventKind, String)>,
    items: Vec<Item>,
    pub row_errors: u64,
    /// The first row errors, for the operator (the rest are only counted).
    pub first_errors: Vec<RowError>,
}

/// How many row errors are kept verbatim.
const KEEP_ERRORS: usize = 20;

impl From<HistoryError> for ReplayError {
    fn from(e: HistoryError) -> ReplayError {
        match e {
            HistoryError::Io { path, source } => ReplayError::Io { path, source },
            HistoryError::Header { path, detail } => ReplayError::Header { path, detail },
            // Replay reads with `BadRows::Skip`: a row error never stops it.
            HistoryError::Row(e) => ReplayError::Header {
                path: e.path.clone(),
                detail: e.to_string(),
            },
        }
    }
}

impl History {
    pub fn readings(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.kind == Kind::Reading)
            .count()
    }
    pub fn events(&self) -> usize {
        self.events.len()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn metrics(&self) -> &[String] {
        &self.metrics
    }

    /// Books what a skipping read set aside.
    fn count_skipped(&mut self, summary: ReadSummary) {
        self.row_errors += summary.skipped;
        let room = KEEP_ERRORS.saturating_sub(self.first_errors.len());
        self.first_errors
            .extend(summary.first_errors.into_iter().take(room));
    }

    fn device(&mut self, id: &DeviceId) -> u32 {
        if let Some(&d) = self.device_ids.get(id.as_str()) {
            return d;
        }
        let d = self.devices.len() as u32;
        self.devices.push(id.clone());
        self.device_ids.insert(id.clone(), d);
        d
    }

    /// Reads `telemetry.csv` from a file.
    pub fn read_telemetry_file(&mut self, path: &Path) -> Result<(), ReplayError> {
        self.read_telemetry(history::open(path)?, path)
    }

    /// Reads `events.csv` from a file.
    pub fn read_events_file(&mut self, path: &Path) -> Result<(), ReplayError> {
        self.read_events(history::open(path)?, path)
    }

    /// Reads telemetry rows (`device_id,ts,<metric>…`), skipping and counting bad ones. A row
    /// with no value at all is skipped too: it has no payload form (the daemon would reject it
    /// as `no_metrics`). `path` names the source in messages.
    pub fn read_telemetry(&mut self, r: impl Read, path: &Path) -> Result<(), ReplayError> {
        let mut rows = TelemetryReader::new(r, path, BadRows::Skip)?;
        if !self.metrics.is_empty() && self.metrics != rows.metrics() {
            return Err(ReplayError::Header {
                path: path.to_path_buf(),
                detail: "metric columns differ from the telemetry already read".into(),
            });
        }
        self.metrics = rows.metrics().to_vec();
        while let Some(row) = rows.next_row()? {
            if row.values.iter().all(|v| v.is_nan()) {
                let line = row.line;
                rows.refuse(line, Refused("row has no metric values".into()))?;
                continue;
            }
            let id = match DeviceId::parse(row.device_id) {
                Ok(id) => id,
                Err(e) => {
                    let line = row.line;
                    rows.refuse(line, Refused(e.to_string()))?;
                    continue;
                }
            };
            let device = self.device(&id);
            let at = (self.values.len() / self.metrics.len()) as u32;
            self.values.extend_from_slice(row.values);
            self.items.push(Item {
                ts: row.ts,
                device,
                kind: Kind::Reading,
                at,
            });
        }
        let (_, summary) = rows.finish();
        self.count_skipped(summary);
        self.sort();
        Ok(())
    }

    /// Reads event rows (`device_id,ts,kind[,code]`), skipping and counting bad ones.
    pub fn read_events(&mut self, r: impl Read, path: &Path) -> Result<(), ReplayError> {
        let mut read = Vec::new();
        let summary = history::read_events(r, path, BadRows::Skip, |_, e| {
            read.push(e);
            Ok(())
        })?;
        for e in read {
            let device = self.device(&e.device_id);
            let at = self.events.len() as u32;
            self.events.push((e.kind, e.code));
            self.items.push(Item {
                ts: e.ts,
                device,
                kind: Kind::Event,
                at,
            });
        }
        self.count_skipped(summary);
        self.sort();
        Ok(())
    }

    fn sort(&mut self) {
        // The apply order (events first at equal times, see `domain::apply_order`), so that a
        // daemon without a reorder tolerance applies what it receives as the backtest does.
        // Stable: file order is kept among equal items.
        let events = &self.events;
        let key = |i: &Item| match i.kind {
            Kind::Reading => (None, ""),
            Kind::Event => {
                let (k, c) = &events[i.at as usize];
                (Some(*k), c.as_str())
            }
        };
        self.items.sort_by(|a, b| {
            let (ka, ca) = key(a);
            let (kb, cb) = key(b);
            crate::domain::apply_order((a.ts, ka, ca), (b.ts, kb, cb))
        });
    }

    /// The messages to publish, in event-time order, with per-device sequence numbers (counting
    /// from 1 in this history) on readings.
    pub fn messages<'a>(&'a self, topic_prefix: &'a str) -> impl Iterator<Item = Message> + 'a {
        let mut seq = vec![0u64; self.devices.len()];
        let stride = self.metrics.len();
        self.items.iter().map(move |it| {
            let id = &self.devices[it.device as usize];
            match it.kind {
                Kind::Reading => {
                    let s = &mut seq[it.device as usize];
                    *s += 1;
                    let row = &self.values[it.at as usize * stride..][..stride];
                    let metrics = self
                        .metrics
                        .iter()
                        .zip(row)
                        .filter(|(_, v)| !v.is_nan())
                        .map(|(n, v)| (n.as_str(), *v));
                    Message {
                        topic: format!("{topic_prefix}/{id}/telemetry"),
                        payload: crate::ingest::encode::telemetry_payload(it.ts, Some(*s), metrics),
                        is_reading: true,
                    }
                }
                Kind::Event => {
                    let (kind, code) = &self.events[it.at as usize];
                    Message {
                        topic: format!("{topic_prefix}/{id}/events"),
                        payload: crate::ingest::encode::event_payload(&DeviceEvent {
                            device_id: id.clone(),
                            ts: it.ts,
                            kind: *kind,
                            code: code.clone(),
                        }),
                        is_reading: false,
                    }
                }
            }
        })
    }
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `mqtt://host:port`.
    pub broker: String,
    pub client_id: String,
    pub qos: QoS,
    /// Messages per second; `None` publishes as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Give up when no acknowledgement arrives for this long while some are outstanding.
    pub ack_timeout: Duration,
    /// Give up when the first connection is not accepted within this long.
    pub connect_timeout: Duration,
}

impl PublishOptions {
    pub fn new(broker: impl Into<String>) -> PublishOptions {
        PublishOptions {
            broker: broker.into(),
            client_id: unique_client_id("forewarn-replay"),
            qos: QoS::AtLeastOnce,
            rate: None,
            ack_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// `{prefix}-{pid}-{n}`: two clients with one id take each other's session over, endlessly.
pub fn unique_client_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a publish run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PublishSummary {
    pub published: u64,
    pub readings: u64,
    pub events: u64,
    /// PUBACKs received (QoS 1); equals `published` on success.
    pub acked: u64,
    /// Connection errors met (and recovered from) on the way.
    pub connection_errors: u64,
    pub seconds: f64,
}

impl PublishSummary {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.published as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Splits `mqtt://host:port` into host and port (TLS is not supported by replay).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), ReplayError> {
    let bad = |detail: String| ReplayError::BadUrl {
        url: url.to_string(),
        detail,
    };
    match crate::ingest::mqtt::parse_url(url) {
        Ok((false, host, port)) => Ok((host, port)),
        Ok((true, _, _)) => Err(bad(
            "TLS (mqtts://) is not supported by replay; use mqtt://".into(),
        )),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Shared between the publisher and the task polling the MQTT event loop.
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    connected: AtomicBool,
    errors: AtomicU64,
    last_error: parking_lot::Mutex<String>,
}

/// Publishes `messages` to the broker, then waits until every QoS 1 message is acknowledged.
/// `on_progress(published, acked)` is called now and then (for a progress bar).
pub async fn publish(
    messages: impl Iterator<Item = Message>,
    opts: &PublishOptions,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<PublishSummary, ReplayError> {
    let (host, port) = parse_broker_url(&opts.broker)?;
    let mut mo = MqttOptions::new(&opts.client_id, host, port);
    mo.set_keep_alive(Duration::from_secs(30));
    mo.set_max_packet_size(1 << 20, 1 << 20);
    mo.set_clean_session(true);
    // rumqttc's default of 100 unacknowledged publishes caps a loopback replay near 25k msg/s.
    mo.set_inflight(1000);
    // The request channel bounds what is queued ahead of the socket: when it is full, `publish`
    // waits (back-pressure from the broker reaches the reader of the history).
    let (client, mut eventloop) = AsyncClient::new(mo, 1024);
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    // The event loop is polled in its own task: awaiting publish in the polling task deadlocks
    // once the request channel is full.
    let poller = {
        let progress = progress.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        progress.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        progress.connected.store(true, Ordering::Release);
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        *progress.last_error.lock() = e.to_string();
                        // rumqttc reconnects on the next poll at once: back off, with jitter.
                        let jitter = Duration::from_millis(u64::from(rand::random::<u8>()));
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff + jitter) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    };
    let result = publish_all(messages, opts, &client, &progress, &mut on_progress).await;
    if result.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !poller.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    stop.cancel();
    let _ = poller.await;
    result
}

async fn publish_all(
    messages: impl Iterator<Item = Message>,
    opts: &PublishOptions,
    client: &AsyncClient,
    progress: &Progress,
    on_progress: &mut impl FnMut(u64, u64),
) -> Result<PublishSummary, ReplayError> {
    let started = Instant::now();
    let deadline = started + opts.connect_timeout;
    while !progress.connected.load(Ordering::Acquire) {
        // Refused three times in a row (about a second of backoff): nobody is listening there.
        if Instant::now() > deadline || progress.errors.load(Ordering::Relaxed) >= 3 {
            return Err(ReplayError::Connect {
                url: opts.broker.clone(),
                detail: {
                    let e = progress.last_error.lock().clone();
                    if e.is_empty() {
                        "no CONNACK".into()
                    } else {
                        e
                    }
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut sum = PublishSummary::default();
    for m in messages {
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(sum.published as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        }
        client
            .publish(m.topic, opts.qos, false, m.payload)
            .await
            .map_err(|e| ReplayError::Closed {
                url: opts.broker.clone(),
                detail: e.to_string(),
            })?;
        sum.published += 1;
        if m.is_reading {
            sum.readings += 1;
        } else {
            sum.events += 1;
        }
        if sum.published % 256 == 0 {
            on_progress(sum.published, progress.acked.load(Ordering::Relaxed));
        }
    }
    if opts.qos != QoS::AtMostOnce {
        let mut last = progress.acked.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while last < sum.published {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = progress.acked.load(Ordering::Relaxed);
            if now != last {
                last = now;
                last_change = Instant::now();
                on_progress(sum.published, now);
            } else if last_change.elapsed() > opts.ack_timeout {
                return Err(ReplayError::Unacked {
                    url: opts.broker.clone(),
                    published: sum.published,
                    acked: now,
                    waited_s: opts.ack_timeout.as_secs(),
                    last_error: progress.last_error.lock().clone(),
                });
            }
        }
        // After a reconnect a message may be acknowledged twice: never report more than sent.
        sum.acked = last.min(sum.published);
    }
    sum.seconds = started.elapsed().as_secs_f64();
    sum.connection_errors = progress.errors.load(Ordering::Relaxed);
    on_progress(sum.published, sum.acked);
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(tel: &str, ev: Option<&str>) -> History {
        let mut h = History::default();
        h.read_telemetry(tel.as_bytes(), Path::new("telemetry.csv"))
            .unwrap();
        if let Some(ev) = ev {
            h.read_events(ev.as_bytes(), Path::new("events.csv"))
                .unwrap();
        }
        h
    }

    #[test]
    fn readings_and_events_merge_in_event_time_order_with_per_device_seq() {
        let h = load(
            "device_id,ts,temp,vib\n\
             a,2025-01-01T02:00:00Z,1.5,2\n\
             a,2025-01-01T01:00:00Z,1,\n\
             b,2025-01-01T01:30:00Z,3,4\n",
            Some("device_id,ts,kind,code\na,2025-01-01T01:00:00Z,maintenance,seal\n"),
        );
        assert_eq!(h.row_errors, 0);
        let msgs: Vec<Message> = h.messages("devices").collect();
        let topics: Vec<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
        // At equal times the event goes first (contract, section 7).
        assert_eq!(
            topics,
            [
                "devices/a/events",
                "devices/a/telemetry",
                "devices/b/telemetry",
                "devices/a/telemetry"
            ]
        );
        let p = |i: usize| String::from_utf8(msgs[i].payload.clone()).unwrap();
        assert_eq!(
            p(1),
            r#"{"ts":"2025-01-01T01:00:00Z","seq":1,"metrics":{"temp":1}}"#
        );
        assert_eq!(
            p(0),
            r#"{"ts":"2025-01-01T01:00:00Z","kind":"maintenance","code":"seal"}"#
        );
        assert!(p(3).contains(r#""seq":2"#), "{}", p(3));
    }

    #[test]
    fn bad_rows_are_reported_with_file_and_line_and_skipped() {
        let h = load(
            "device_id,ts,temp\n\
             a,2025-01-01T01:00:00Z,1\n\
             a,yesterday,2\n\
             a/b,2025-01-01T01:00:00Z,3\n\
             a,2025-01-01T03:00:00Z,hot\n\
             a,2025-01-01T04:00:00Z\n\
             a,2025-01-01T05:00:00Z,\n\
             a,2025-01-01T06:00:00Z,6\n",
            Some("device_id,ts,kind,code\na,2025-01-01T01:00:00Z,explode,x\na,2025-01-01T01:00:00Z,failure,\n"),
        );
        assert_eq!(h.readings(), 2);
        assert_eq!(h.events(), 0);
        assert_eq!(h.row_errors, 7);
        let lines: Vec<String> = h.first_errors.iter().map(|e| e.to_string()).collect();
        assert!(
            lines[0].starts_with("telemetry.csv:3: ts \"yesterday\""),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("telemetry.csv:4:"), "{lines:?}");
        assert!(
            lines[2].contains("metric \"temp\" is not a finite number"),
            "{lines:?}"
        );
        assert!(
            lines[3].starts_with("telemetry.csv:6: 2 fields"),
            "{lines:?}"
        );
        assert!(
            lines[4].starts_with("telemetry.csv:7: row has no metric"),
            "{lines:?}"
        );
        assert!(lines[5].starts_with("events.csv:2: kind"), "{lines:?}");
        assert!(
            lines[6].starts_with("events.csv:3: failure and maintenance"),
            "{lines:?}"
        );
    }

    #[test]
    fn header_without_required_columns_is_refused() {
        let mut h = History::default();
        let e = h
            .read_telemetry("id,ts,temp\n".as_bytes(), Path::new("t.csv"))
            .unwrap_err();
        assert_eq!(e.to_string(), "t.csv: header has no \"device_id\" column");
        let e = h
            .read_telemetry("device_id,ts\n".as_bytes(), Path::new("t.csv"))
            .unwrap_err();
        assert!(e.to_string().contains("no metric columns"), "{e}");
    }

    #[test]
    fn broker_urls_parse_or_are_refused_clearly() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_broker_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://x:notaport").is_err());
    }
}
