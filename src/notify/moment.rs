//! Which message, if any, a ticket change calls for (pure): a message for every moment of the
//! conversation, and only those.
//!
//! | change | message |
//! |---|---|
//! | opened | alert (urgent when the routing says so) |
//! | priority rose to urgent | update ("needed sooner") |
//! | settled by maintenance (fault confirmed) | resolved, if the customer was alerted |
//! | settled by a failure | none: a person follows up |
//! | a person or the customer booked the visit | visit confirmed, if alerted |
//! | the customer asked for another time | visit rescheduled, if alerted |
//! | dismissed (false alarm) | no action needed, if alerted |
//! | closed by a person after a visit | resolved, if alerted |
//!
//! "If alerted" is checked by the worker when it sends, against what notify itself recorded
//! (a warning accepted by a provider for this ticket): a ticket may exist without the customer
//! ever being told.

use super::templates::MessageKind;
use crate::domain::{Outcome, Priority, Status};
use crate::engine::{Change, ChangeKind};

/// The note a customer's "another time" reply leaves in the ticket history (read back here).
pub const ANOTHER_TIME: &str = "another time requested";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moment {
    /// Queue this message.
    Send(MessageKind),
    /// No automatic message: a person should contact the customer (why).
    FollowUp(String),
    Nothing,
}

/// What the customer should hear about `change`.
pub fn for_change(
    change: &Change,
    urgent: bool,
    urgent_priority: Priority,
    notify_resolved: bool,
) -> Moment {
    let t = &change.ticket;
    // The model's customer-alert level gates messages: a ticket opened below it is dispatch only
    // until it reaches the level (the engine then records `ALERT_RAISED`).
    let withheld = t
        .history
        .iter()
        .any(|h| h.action == crate::engine::ALERT_WITHHELD);
    let alerted = t
        .history
        .iter()
        .any(|h| h.action == crate::engine::ALERT_RAISED);
    let just_alerted = change.kind == ChangeKind::Updated
        && t.history
            .last()
            .is_some_and(|h| h.action == crate::engine::ALERT_RAISED);
    match change.kind {
        ChangeKind::Opened | ChangeKind::Updated if withheld && !alerted => Moment::Nothing,
        ChangeKind::Updated if just_alerted && urgent => Moment::Send(MessageKind::Urgent),
        ChangeKind::Updated if just_alerted => Moment::Send(MessageKind::Alert),
        ChangeKind::Opened if urgent => Moment::Send(MessageKind::Urgent),
        ChangeKind::Opened => Moment::Send(MessageKind::Alert),
        ChangeKind::Updated
            if t.priority >= urgent_priority
                && change
                    .previous_priority
                    .is_some_and(|p| p < urgent_priority) =>
        {
            Moment::Send(MessageKind::Update)
        }
        ChangeKind::Updated => Moment::Nothing,
        ChangeKind::Settled => match t.outcome {
            Some(Outcome::FailedBeforeService) => Moment::FollowUp(
                "the device failed before it was serviced: no automatic message; please contact \
                 the customer"
                    .into(),
            ),
            Some(Outcome::ConfirmedFault) if notify_resolved => Moment::Send(MessageKind::Resolved),
            _ => Moment::Nothing,
        },
        ChangeKind::Transition => {
            let Some(last) = t.history.last() else {
                return Moment::Nothing;
            };
            match last.to {
                Some(Status::Scheduled) => Moment::Send(MessageKind::VisitConfirmed),
                Some(Status::Dismissed) => Moment::Send(MessageKind::NoActionNeeded),
                Some(Status::Resolved)
                    if notify_resolved && t.outcome != Some(Outcome::FailedBeforeService) =>
                {
                    Moment::Send(MessageKind::Resolved)
                }
                _ if last.actor.starts_with("customer:") && last.note.starts_with(ANOTHER_TIME) => {
                    Moment::Send(MessageKind::VisitRescheduled)
                }
                _ => Moment::Nothing,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Ticket, Timestamp};

    fn ticket() -> Ticket {
        Ticket {
            customer_id: Some("c".into()),
            probability: 0.5,
            ..Ticket::example("T-1", "d", Timestamp::EPOCH)
        }
    }

    /// The moment of a `kind` change of `t` (`urgent`: routing says so), resolutions notified.
    fn moment(kind: ChangeKind, t: Ticket, urgent: bool) -> Moment {
        let change = Change {
            kind,
            previous_priority: Some(Priority::High),
            ticket: t,
        };
        for_change(&change, urgent, Priority::Urgent, true)
    }

    /// The moment of moving the example ticket to `to` by `actor` with `note`.
    fn after_transition(to: Status, actor: &str, note: &str) -> Moment {
        let mut t = ticket();
        t.transition(to, actor, Timestamp::from_millis(1), note)
            .unwrap();
        moment(ChangeKind::Transition, t, false)
    }

    fn settled(outcome: Outcome) -> Moment {
        let mut t = ticket();
        t.status = Status::Resolved;
        t.outcome = Some(outcome);
        moment(ChangeKind::Settled, t, false)
    }

    #[test]
    fn a_failure_gets_a_person_not_a_message() {
        let m = settled(Outcome::FailedBeforeService);
        assert!(matches!(m, Moment::FollowUp(_)), "{m:?}");
        assert_eq!(
            settled(Outcome::ConfirmedFault),
            Moment::Send(MessageKind::Resolved)
        );
    }

    #[test]
    fn transitions_say_what_changed() {
        let another_time = format!("{ANOTHER_TIME} by sms: 2");
        let table = [
            (
                Status::Scheduled,
                "api:ops",
                "",
                Moment::Send(MessageKind::VisitConfirmed),
            ),
            (
                Status::Dismissed,
                "api:ops",
                "",
                Moment::Send(MessageKind::NoActionNeeded),
            ),
            (
                Status::Acknowledged,
                "customer:sms",
                another_time.as_str(),
                Moment::Send(MessageKind::VisitRescheduled),
            ),
            (
                Status::Acknowledged,
                "customer:sms",
                "not now by sms: 3",
                Moment::Nothing,
            ),
        ];
        for (to, actor, note, expected) in table {
            assert_eq!(
                after_transition(to, actor, note),
                expected,
                "{to:?} {note:?}"
            );
        }
    }

    #[test]
    fn probability_updates_are_not_messages() {
        assert_eq!(
            moment(ChangeKind::Updated, ticket(), false),
            Moment::Nothing
        );
        let mut t = ticket();
        t.priority = Priority::Urgent;
        assert_eq!(
            moment(ChangeKind::Updated, t, true),
            Moment::Send(MessageKind::Update)
        );
    }
}
