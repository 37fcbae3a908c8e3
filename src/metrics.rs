//! The daemon's metrics, typed and registered once on a `prometheus::Registry`.
//!
//! Counters end in `_total`, durations in `_seconds`; gauges are plain counts of things that exist
//! now (rows, devices, a 0/1 state). Labels are bounded sets (`reason`, `kind`, `target`,
//! `result`) — never a device or ticket id.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// MQTT messages taken from the broker (telemetry and events).
    pub messages: IntCounter,
    /// Readings decoded from telemetry payloads.
    pub readings: IntCounter,
    /// Payloads rejected, by `RejectReason`.
    pub rejected: IntCounterVec,
    /// Readings not applied: `duplicate` (redelivery) or `late` (beyond the tolerance).
    pub dropped: IntCounterVec,
    pub events: IntCounter,
    /// Readings a per-device `seq` gap says never arrived (lost upstream, at the broker).
    pub readings_missing: IntCounter,
    /// Devices whose `seq` restarted (reboot, firmware update).
    pub seq_resets: IntCounter,
    /// Devices scored (each scoring covers every mode of every applicable model).
    pub scorings: IntCounter,
    /// Ticket changes by kind: opened, updated, settled, transition.
    pub ticket_changes: IntCounterVec,
    /// Wall time from MQTT receipt of the reading to the commit of the ticket change it caused.
    pub reading_to_ticket: Histogram,
    pub commits: IntCounter,
    /// Steps (readings and events) logged since the last checkpoint: what a restart after a
    /// crash replays now (at most `store.snapshot_every`).
    pub step_log_steps: IntGauge,
    /// Checkpoints written: every device with logged steps saved whole, the step log emptied.
    pub checkpoints: IntCounter,
    pub commit_failures: IntCounter,
    pub commit_seconds: Histogram,
    /// Rows waiting in a durable outbox, by queue.
    pub outbox_depth: IntGaugeVec,
    /// Dispatch deliveries by target (mqtt, webhook) and result (ok, error, dead).
    pub dispatch: IntCounterVec,
    /// 1 while connected to the broker.
    pub broker_connected: IntGauge,
    /// The broker's own count of publishes it dropped (Mosquitto's
    /// `$SYS/broker/publish/messages/dropped`, broker-wide); -1 until the broker reports one.
    pub broker_dropped: IntGauge,
    pub broker_connects: IntCounter,
    pub broker_disconnects: IntCounter,
    /// Device states held in memory.
    pub devices_in_memory: IntGauge,
    /// Device states dropped from memory (least recently seen) — reloaded from the store on demand.
    pub evictions: IntCounter,
    /// Device states dropped after `ingest.forget_after` without a reading.
    pub devices_forgotten: IntCounter,
    /// Devices seen on the stream since start that the fleet registry does not know.
    pub unregistered_devices: IntGauge,
    /// Model artifacts in use.
    pub models_loaded: IntGauge,
    /// Devices at or above a mode's watch level at their latest scoring, by mode (internal: a
    /// watch opens no ticket and sends no message).
    pub watched_devices: IntGaugeVec,
    /// Model reloads by result (ok, error).
    pub model_reloads: IntCounterVec,
    /// Active or standby (`serve --standby`), and the takeover that made this process active.
    pub role: RoleMetrics,
}

/// The part this process plays in an active/standby pair (`serve --standby`). A standby
/// exports only these (it holds no store, so it has no other numbers to give).
#[derive(Clone)]
pub struct RoleMetrics {
    /// 1 on the role this process has now: `active` (holds the data directory) or `standby`.
    pub role: IntGaugeVec,
    /// Times this process took over the data directory from another (0 or 1: a process becomes
    /// active once).
    pub takeovers: IntCounter,
    /// From getting the data directory's lock to the store opened and device state recovered
    /// (models and fleet loaded too), at this process's takeover; 0 when it did not take over.
    pub takeover_seconds: Gauge,
}

impl RoleMetrics {
    pub fn new(r: &Registry) -> RoleMetrics {
        let role = IntGaugeVec::new(
            Opts::new(
                "forewarn_role",
                "1 on this process's role in an active/standby pair: active (holds the data directory) or standby",
            ),
            &["role"],
        )
        .unwrap_or_else(|_| unreachable_metric("forewarn_role"));
        let _ = r.register(Box::new(role.clone()));
        let takeover_seconds = Gauge::new(
            "forewarn_takeover_seconds",
            "Seconds from getting the data directory's lock to its store opened and recovered, at this process's takeover (0: none)",
        )
        .unwrap_or_else(|_| unreachable_metric("forewarn_takeover_seconds"));
        let _ = r.register(Box::new(takeover_seconds.clone()));
        let m = RoleMetrics {
            role,
            takeovers: counter(
                r,
                "forewarn_takeovers_total",
                "Times this process took over the data directory after standing by",
            ),
            takeover_seconds,
        };
        m.set_active(true);
        m
    }

    /// Marks this process active (`true`) or standing by (`false`).
    pub fn set_active(&self, active: bool) {
        self.role
            .with_label_values(&["active"])
            .set(i64::from(active));
        self.role
            .with_label_values(&["standby"])
            .set(i64::from(!active));
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(h.clone()));
    h
}

/// Metric names and help texts are constants of this file; prometheus only refuses invalid names.
fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name} has an invalid name or labels (a bug in metrics.rs)")
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let r = registry;
        let lat = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Metrics {
            registry: registry.clone(),
            messages: counter(r, "forewarn_mqtt_messages_total", "MQTT messages received"),
            readings: counter(r, "forewarn_readings_total", "Telemetry readings decoded"),
            rejected: counter_vec(
                r,
                "forewarn_rejected_total",
                "Payloads rejected, by reason",
                &["reason"],
            ),
            dropped: counter_vec(
                r,
                "forewarn_readings_dropped_total",
                "Readings not applied: duplicate (redelivered) or late",
                &["reason"],
            ),
            events: counter(r, "forewarn_device_events_total", "Device events applied"),
            readings_missing: counter(
                r,
                "forewarn_readings_missing_total",
                "Readings never received: gaps in a device's seq (lost upstream, e.g. by the broker)",
            ),
            seq_resets: counter(
                r,
                "forewarn_seq_resets_total",
                "Devices whose seq restarted below the last one on a newer reading (reboot)",
            ),
            scorings: counter(r, "forewarn_scorings_total", "Device scorings made"),
            ticket_changes: counter_vec(
                r,
                "forewarn_ticket_changes_total",
                "Ticket changes, by kind",
                &["kind"],
            ),
            reading_to_ticket: histogram(
                r,
                "forewarn_reading_to_ticket_seconds",
                "Wall time from MQTT receipt of a reading to the commit of the ticket change it caused",
                lat.clone(),
            ),
            commits: counter(r, "forewarn_commits_total", "Store commits of message groups"),
            step_log_steps: gauge(
                r,
                "forewarn_step_log_steps",
                "Readings and events logged since the last checkpoint: what a restart after a crash replays (at most store.snapshot_every)",
            ),
            checkpoints: counter(
                r,
                "forewarn_checkpoints_total",
                "Checkpoints written (every device with logged steps saved whole, the step log emptied)",
            ),
            commit_failures: counter(
                r,
                "forewarn_commit_failures_total",
                "Store commits that failed (the group is not acknowledged)",
            ),
            commit_seconds: histogram(
                r,
                "forewarn_commit_seconds",
                "Time to apply and flush one group's commit",
                lat,
            ),
            outbox_depth: {
                let g = IntGaugeVec::new(
                    Opts::new("forewarn_outbox_depth", "Rows waiting in a durable outbox"),
                    &["queue"],
                )
                .unwrap_or_else(|_| unreachable_metric("forewarn_outbox_depth"));
                let _ = r.register(Box::new(g.clone()));
                g
            },
            dispatch: counter_vec(
                r,
                "forewarn_dispatch_deliveries_total",
                "Dispatch deliveries, by target and result",
                &["target", "result"],
            ),
            broker_connected: gauge(r, "forewarn_broker_connected", "1 while connected to the broker"),
            broker_dropped: gauge(
                r,
                "forewarn_broker_dropped_messages",
                "Publishes the broker says it dropped for queue or in-flight limits (all its clients; from ingest.broker_drops_topic; -1 until reported)",
            ),
            broker_connects: counter(r, "forewarn_broker_connects_total", "Broker connections made"),
            broker_disconnects: counter(
                r,
                "forewarn_broker_disconnects_total",
                "Broker connections lost or refused",
            ),
            devices_in_memory: gauge(r, "forewarn_devices_in_memory", "Device states held in memory"),
            evictions: counter(
                r,
                "forewarn_device_evictions_total",
                "Device states evicted from memory (least recently seen)",
            ),
            devices_forgotten: counter(
                r,
                "forewarn_devices_forgotten_total",
                "Device states dropped from memory and disk after ingest.forget_after unseen",
            ),
            unregistered_devices: gauge(
                r,
                "forewarn_unregistered_devices",
                "Devices seen since start that are not in the fleet registry (scored without attributes)",
            ),
            models_loaded: gauge(r, "forewarn_models_loaded", "Model artifacts in use"),
            watched_devices: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "forewarn_watched_devices",
                        "Devices whose latest score of a mode is at or above the mode's watch level (internal: no ticket, no message), by mode",
                    ),
                    &["mode"],
                )
                .unwrap_or_else(|_| unreachable_metric("forewarn_watched_devices"));
                let _ = r.register(Box::new(g.clone()));
                g
            },
            model_reloads: counter_vec(
                r,
                "forewarn_model_reloads_total",
                "Model reloads, by result",
                &["result"],
            ),
            role: RoleMetrics::new(r),
        };
        // Pre-create bounded label values so dashboards see zeros rather than gaps.
        for reason in crate::domain::RejectReason::ALL {
            m.rejected.with_label_values(&[reason.as_str()]);
        }
        for reason in ["duplicate", "late"] {
            m.dropped.with_label_values(&[reason]);
        }
        for kind in ["opened", "updated", "settled", "transition"] {
            m.ticket_changes.with_label_values(&[kind]);
        }
        m.outbox_depth.with_label_values(&["dispatch"]);
        m
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The Prometheus text exposition of every metric registered on `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
