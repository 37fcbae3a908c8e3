//! One story per ticket (pure): the customer's timeline grouped by ticket, keeping what the
//! customer lived through — the ticket's changes of status, each message (which channel),
//! whether it was delivered, each reply and what it changed, a hand-over to a person — and
//! leaving out the worker's bookkeeping (routing decisions, retries, queueing).

use super::templates::StoryWords;
use super::TimelineEntry;
use crate::fleet::Channel;
use serde::Serialize;
use std::collections::BTreeMap;

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

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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

/// One line of a story as the self-service page tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The entry's RFC 3339 time (the page writes it in the customer's calendar).
    pub at: String,
    /// "opened", "status", "message", "delivery", "reply".
    pub kind: &'static str,
    pub text: String,
}

/// A story in the customer's words (pure): the ticket opened, each message by channel, whether
/// it arrived or was read, each answer with what it changed, and each later change of status —
/// never the worker's bookkeeping or a score.
pub fn page_lines(
    story: &Story,
    w: &StoryWords,
    statuses: &BTreeMap<&'static str, String>,
) -> Vec<Line> {
    let channel = |e: &TimelineEntry| {
        let name = e.channel.map(|c| c.as_str()).unwrap_or("page");
        w.channels.get(name).cloned().unwrap_or_else(|| name.into())
    };
    let mut last_status: Option<String> = None;
    let mut out = Vec::new();
    for e in &story.entries {
        let line = match e.kind.as_str() {
            "ticket" => {
                let st = e.outcome.clone();
                if last_status.is_none() {
                    last_status = st;
                    Some(("opened", w.opened.clone()))
                } else if st.is_some() && st != last_status {
                    last_status = st.clone();
                    st.and_then(|s| statuses.get(s.as_str()).cloned())
                        .map(|t| ("status", t))
                } else {
                    None
                }
            }
            "message" => {
                let what = e
                    .message
                    .and_then(|k| w.headlines.get(k.as_str()))
                    .filter(|h| !h.is_empty())
                    .cloned()
                    .unwrap_or_else(|| w.sent.clone());
                Some(("message", format!("{}: {what}", channel(e))))
            }
            "delivery" => {
                let word = match e.outcome.as_deref() {
                    Some("delivered") if e.detail.ends_with(" read") => &w.read,
                    Some("delivered") => &w.delivered,
                    _ => &w.undelivered,
                };
                Some(("delivery", format!("{}: {word}", channel(e))))
            }
            "reply" if e.outcome.as_deref() == Some("auto_reply") => {
                Some(("reply", w.auto_reply.clone()))
            }
            "reply" => {
                let mut text = format!("{} ({})", w.replied, channel(e));
                if let Some(said) = &e.said {
                    text.push_str(&format!(": \u{201c}{said}\u{201d}"));
                }
                let after = match e.outcome.as_deref() {
                    Some("repeat") => Some(w.no_change.clone()),
                    Some(super::NEEDS_HUMAN) => Some(w.for_person.clone()),
                    Some(st) => statuses.get(st).cloned().inspect(|_| {
                        // The ticket entry that follows says the same: told once.
                        last_status = Some(st.to_string());
                    }),
                    None => None,
                };
                if let Some(a) = after.filter(|a| !a.is_empty()) {
                    text.push_str(" \u{2192} ");
                    text.push_str(&a);
                }
                Some(("reply", text))
            }
            _ => None,
        };
        if let Some((kind, text)) = line.filter(|(_, t)| !t.is_empty()) {
            out.push(Line {
                at: e.at.clone(),
                kind,
                text,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_tells_the_story_without_scores_or_bookkeeping() {
        let e = |kind: &str| TimelineEntry::new(0, kind, "T-1", "");
        let entries = vec![
            e("ticket").outcome("open"),
            e("decision").channel(Channel::Sms),
            e("message")
                .channel(Channel::Sms)
                .outcome("sent")
                .message(crate::notify::templates::MessageKind::Urgent),
            e("ticket").outcome("open"),
            TimelineEntry::new(0, "delivery", "T-1", "sms read")
                .channel(Channel::Sms)
                .outcome("delivered"),
            e("reply")
                .channel(Channel::Sms)
                .outcome("scheduled")
                .said("1 yes"),
            e("ticket").outcome("scheduled"),
            e("reply").outcome("repeat"),
        ];
        let w = StoryWords {
            opened: "opened".into(),
            read: "read".into(),
            replied: "You answered".into(),
            no_change: "no change".into(),
            channels: [("sms", "SMS".to_string()), ("page", "page".to_string())]
                .into_iter()
                .collect(),
            headlines: [("urgent", "Urgent".to_string())].into_iter().collect(),
            ..StoryWords::default()
        };
        let statuses: BTreeMap<&'static str, String> = [
            ("open", "Open".to_string()),
            ("scheduled", "Booked".to_string()),
        ]
        .into_iter()
        .collect();
        let lines: Vec<String> = page_lines(&group(&entries)[0], &w, &statuses)
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(
            lines,
            [
                "opened",
                "SMS: Urgent",
                "SMS: read",
                "You answered (SMS): \u{201c}1 yes\u{201d} \u{2192} Booked",
                "You answered (page) \u{2192} no change",
            ]
        );
    }

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
