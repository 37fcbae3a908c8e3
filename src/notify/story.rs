//! One story per ticket (pure): the customer's timeline grouped by ticket, keeping what the
//! customer lived through — the ticket's changes of status, each message (which channel),
//! whether it was delivered, each reply and what it changed, a hand-over to a person — and
//! leaving out the worker's bookkeeping (routing decisions, retries, queueing).

use super::TimelineEntry;
use crate::fleet::Channel;
use serde::Serialize;

/// Timeline kinds a customer-facing story shows.
const VISIBLE: [&str; 8] = [
    "ticket",
    "message",
    "delivery",
    "fallback",
    "reply",
    "follow_up",
    "opt_out",
    "escalation",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Story {
    /// Empty for what concerns no ticket (an opt-out, a message about no known ticket).
    pub ticket_id: String,
    /// The first warning's channel, if one was sent.
    pub alerted_on: Option<Channel>,
    /// A provider reported a message of this ticket delivered (or read).
    pub delivered: bool,
    /// Replies received (including automatic ones, which changed nothing).
    pub replies: usize,
    /// The last status the ticket had in this story.
    pub status: Option<String>,
    /// Something waits for a person (an unclear reply, a failure).
    pub needs_human: bool,
    pub entries: Vec<TimelineEntry>,
}

/// Groups entries (in time order) into stories, ordered by each story's first entry.
pub fn group(entries: &[TimelineEntry]) -> Vec<Story> {
    let mut stories: Vec<Story> = Vec::new();
    for e in entries
        .iter()
        .filter(|e| VISIBLE.contains(&e.kind.as_str()))
    {
        let i = match stories.iter().position(|s| s.ticket_id == e.ticket_id) {
            Some(i) => i,
            None => {
                stories.push(Story {
                    ticket_id: e.ticket_id.clone(),
                    alerted_on: None,
                    delivered: false,
                    replies: 0,
                    status: None,
                    needs_human: false,
                    entries: Vec::new(),
                });
                stories.len() - 1
            }
        };
        let s = &mut stories[i];
        match e.kind.as_str() {
            "message" if s.alerted_on.is_none() => s.alerted_on = e.channel,
            "delivery" if e.outcome.as_deref() == Some("delivered") => s.delivered = true,
            "reply" => s.replies += 1,
            "ticket" => s.status = e.outcome.clone(),
            _ => {}
        }
        if e.outcome.as_deref() == Some(super::NEEDS_HUMAN) {
            s.needs_human = true;
        }
        s.entries.push(e.clone());
    }
    stories
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_grouped_by_ticket_without_the_bookkeeping() {
        let e = |kind: &str, t: &str| TimelineEntry::new(0, kind, t, "");
        let entries = vec![
            e("ticket", "T-1").outcome("open"),
            e("queued", "T-1"),
            e("decision", "T-1"),
            e("ticket", "T-2").outcome("open"),
            e("message", "T-1").channel(Channel::Sms),
            e("delivery", "T-1").outcome("delivered"),
            e("reply", "T-1").outcome("scheduled"),
            e("ticket", "T-1").outcome("scheduled"),
            e("reply", "T-2").outcome(super::super::NEEDS_HUMAN),
            e("attempt", "T-2"),
        ];
        let s = group(&entries);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ticket_id, "T-1");
        assert_eq!(s[0].alerted_on, Some(Channel::Sms));
        assert!(s[0].delivered && !s[0].needs_human);
        assert_eq!(s[0].replies, 1);
        assert_eq!(s[0].status.as_deref(), Some("scheduled"));
        assert_eq!(s[0].entries.len(), 5);
        assert!(s[1].needs_human && s[1].alerted_on.is_none());
        assert!(s
            .iter()
            .flat_map(|s| &s.entries)
            .all(|e| !["queued", "decision", "attempt"].contains(&e.kind.as_str())));
    }
}
