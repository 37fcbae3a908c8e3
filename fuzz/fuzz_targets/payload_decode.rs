//! Whatever a device publishes: the telemetry and event decoders reject it with a reason or
//! return readings with finite values and usable device ids; they never panic.
#![no_main]

use forewarn::domain::validate_device_id;
use forewarn::ingest::decode::{decode_events, decode_telemetry, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_payload_bytes: 4096,
        max_batch: 8,
        max_metrics: 16,
    };
    // The first byte picks whether the topic names the device (as `devices/+/telemetry` does).
    let (topic, payload) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => (Some("dev-1"), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    if let Ok(readings) = decode_telemetry(payload, topic, 1_700_000_000_000, &limits) {
        assert!(!readings.is_empty() && readings.len() <= limits.max_batch);
        for r in &readings {
            assert!(validate_device_id(&r.device_id).is_ok());
            assert!(r.metrics.iter().all(|(_, v)| v.is_finite()));
        }
    }
    if let Ok(events) = decode_events(payload, topic, 1_700_000_000_000, &limits) {
        assert!(events.len() <= limits.max_batch);
        for e in &events {
            assert!(validate_device_id(&e.device_id).is_ok());
        }
    }
});
