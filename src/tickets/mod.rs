//! The ticket state machine (pure): which status may follow which, and how a transition is
//! recorded. The ticket values themselves live in `domain`; the policy that opens, updates and
//! settles tickets from scores and device events lives in `engine`, shared by `serve` and
//! `evaluate`.

mod config;

pub use config::Config;

use crate::domain::{HistoryEntry, Outcome, Status, Ticket, Timestamp};

impl Status {
    /// Whether a transition from `self` to `to` is allowed.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Open, Acknowledged | Scheduled | Resolved | Dismissed)
                | (Acknowledged, Scheduled | Resolved | Dismissed)
                | (Scheduled, Scheduled | Resolved | Dismissed)
        )
    }
}

/// A ticket id derived from what opened it, so a replay of the same history names tickets the same.
///
/// With a `key` (the daemon's: random, kept in its data directory) the id is an HMAC-SHA-256 of
/// device, mode and opening time under that key: nobody without the key can compute the id of
/// another device's ticket (ids appear in SMS and e-mail replies). Without one (`evaluate`,
/// `train`: no secret involved) it is a plain SHA-256, the same for everyone.
pub fn ticket_id(key: &[u8], device_id: &str, mode: &str, opened_ms: Timestamp) -> String {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let parts: [&[u8]; 5] = [
        device_id.as_bytes(),
        &[0x1f],
        mode.as_bytes(),
        &[0x1f],
        &opened_ms.as_millis().to_be_bytes(),
    ];
    let d: Vec<u8> = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) if !key.is_empty() => {
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut h = Sha256::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
    };
    format!("T-{}", hex::encode(&d[..8]))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransitionError {
    #[error("ticket is {from}, it cannot become {to}", from = .from.as_str(), to = .to.as_str())]
    NotAllowed { from: Status, to: Status },
}

impl Ticket {
    /// Applies a status change, recording it in the history.
    pub fn transition(
        &mut self,
        to: Status,
        actor: &str,
        at: Timestamp,
        note: &str,
    ) -> Result<(), TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to,
            });
        }
        let from = self.status;
        self.status = to;
        if to == Status::Dismissed && self.outcome.is_none() {
            self.outcome = Some(Outcome::FalseAlarm);
        }
        self.updated_at = at.format();
        self.history.push(HistoryEntry {
            at: at.format(),
            actor: actor.to_string(),
            action: to.as_str().to_string(),
            from: Some(from),
            to: Some(to),
            note: note.to_string(),
        });
        Ok(())
    }

    pub fn is_live(&self) -> bool {
        self.status.is_live()
    }
}

/// A ticket with nothing but its identity and status (mode `m`, model `x` 1, high priority,
/// probability 0.9, opened at the epoch): the tests' starting point wherever a ticket is stored,
/// moved or sent.
#[cfg(test)]
pub(crate) fn bare(id: &str, device: &str, status: Status) -> Ticket {
    use crate::domain::{ModelRef, Priority};
    Ticket {
        id: id.into(),
        device_id: crate::domain::DeviceId::parse(device).expect("a valid test device id"),
        customer_id: None,
        failure_mode: "m".into(),
        status,
        priority: Priority::High,
        probability: 0.9,
        predicted_failure_at: None,
        opened_at: Timestamp::EPOCH.format(),
        updated_at: Timestamp::EPOCH.format(),
        model: ModelRef {
            name: "x".into(),
            version: "1".into(),
        },
        evidence: vec![],
        history: vec![],
        outcome: None,
        opened_ms: Timestamp::EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Ticket {
        bare(
            &ticket_id(&[], "d", "m", Timestamp::EPOCH),
            "d",
            Status::Open,
        )
    }

    #[test]
    fn lifecycle_moves_forward_and_keeps_history() {
        let mut tk = t();
        tk.transition(
            Status::Acknowledged,
            "api",
            Timestamp::from_millis(1000),
            "",
        )
        .unwrap();
        tk.transition(
            Status::Scheduled,
            "api",
            Timestamp::from_millis(2000),
            "tue 10:00",
        )
        .unwrap();
        tk.transition(Status::Resolved, "api", Timestamp::from_millis(3000), "")
            .unwrap();
        assert_eq!(tk.history.len(), 3);
        assert_eq!(tk.history[1].note, "tue 10:00");
        let e = tk
            .transition(Status::Open, "api", Timestamp::from_millis(4000), "")
            .unwrap_err();
        assert_eq!(e.to_string(), "ticket is resolved, it cannot become open");
    }

    #[test]
    fn dismissal_records_a_false_alarm() {
        let mut tk = t();
        tk.transition(Status::Dismissed, "api", Timestamp::from_millis(1), "")
            .unwrap();
        assert_eq!(tk.outcome, Some(Outcome::FalseAlarm));
        assert!(!tk.is_live());
    }

    #[test]
    fn ids_are_stable_per_opening() {
        assert_eq!(
            ticket_id(&[], "a", "m", Timestamp::from_millis(5)),
            ticket_id(&[], "a", "m", Timestamp::from_millis(5))
        );
        assert_ne!(
            ticket_id(&[], "a", "m", Timestamp::from_millis(5)),
            ticket_id(&[], "a", "m", Timestamp::from_millis(6))
        );
        // Keyed: stable under one key, unrelated across keys and to the unkeyed id.
        let k1 = [7u8; 32];
        let k2 = [8u8; 32];
        assert_eq!(
            ticket_id(&k1, "a", "m", Timestamp::from_millis(5)),
            ticket_id(&k1, "a", "m", Timestamp::from_millis(5))
        );
        assert_ne!(
            ticket_id(&k1, "a", "m", Timestamp::from_millis(5)),
            ticket_id(&k2, "a", "m", Timestamp::from_millis(5))
        );
        assert_ne!(
            ticket_id(&k1, "a", "m", Timestamp::from_millis(5)),
            ticket_id(&[], "a", "m", Timestamp::from_millis(5))
        );
        assert_eq!(
            ticket_id(&k1, "a", "m", Timestamp::from_millis(5))
                .chars()
                .count(),
            18
        );
        assert_eq!(
            Timestamp::from_millis(1_420_092_000_000).format(),
            "2015-01-01T06:00:00Z"
        );
    }
}
