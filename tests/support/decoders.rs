//! What the payload decoders' property tests share: the small limits they decode under (so
//! generated payloads reach them) and what every reading a decoder accepts must satisfy.

use forewarn::domain::{validate_device_id, Reading};
use forewarn::ingest::decode::Limits;

pub fn limits() -> Limits {
    Limits {
        max_payload_bytes: 4096,
        max_batch: 8,
        max_metrics: 16,
    }
}

/// Every accepted reading has a usable device id, 1 to `max_metrics` metrics, finite values.
pub fn check_accepted(rs: &[Reading], l: &Limits) {
    for r in rs {
        assert!(
            validate_device_id(&r.device_id).is_ok(),
            "{:?}",
            r.device_id
        );
        assert!(!r.metrics.is_empty() && r.metrics.len() <= l.max_metrics);
        for (_, v) in &r.metrics {
            assert!(v.is_finite(), "{v}");
        }
    }
}
