//! Routing, pure: which channels, in which order, now or later, and why.

use super::config::RoutingConfig;
use crate::domain::Ticket;
use crate::fleet::{parse_quiet_hours, Channel, Customer};
use chrono::{NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use std::collections::BTreeSet;

/// Whether a ticket needs an immediate channel, and why. "How soon" is measured from the
/// ticket's own event time (its latest update), so a replay of history routes like the live
/// stream did; `now_ms` is the fallback when that time is unreadable.
pub fn urgency(cfg: &RoutingConfig, t: &Ticket, now_ms: i64) -> (bool, String) {
    let now_ms = crate::domain::Timestamp::parse(&t.updated_at).map_or(now_ms, |t| t.as_millis());
    if t.priority >= cfg.urgent_priority {
        return (true, format!("urgent: priority {}", t.priority.as_str()));
    }
    if let Some(at) = t
        .predicted_failure_at
        .as_deref()
        .and_then(crate::domain::Timestamp::parse)
        .map(crate::domain::Timestamp::as_millis)
    {
        if at - now_ms < cfg.urgent_within.as_millis_i64() {
            return (
                true,
                format!("urgent: failure predicted within {}", cfg.urgent_within),
            );
        }
    }
    if t.probability >= cfg.urgent_probability {
        return (
            true,
            format!("urgent: probability {:.0}%", t.probability * 100.0),
        );
    }
    (false, format!("advisory: priority {}", t.priority.as_str()))
}

pub fn tz_of(c: &Customer) -> Tz {
    c.time_zone.parse().unwrap_or(Tz::UTC)
}

/// The customer's local calendar day (budget key).
pub fn local_day(c: &Customer, now_ms: i64) -> String {
    let tz = tz_of(c);
    match tz.timestamp_millis_opt(now_ms).single() {
        Some(t) => t.date_naive().to_string(),
        None => "unknown".into(),
    }
}

fn at_local(tz: Tz, d: NaiveDate, minute: u32) -> Option<i64> {
    let ndt = d.and_hms_opt(minute / 60, minute % 60, 0)?;
    tz.from_local_datetime(&ndt)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(ndt + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.timestamp_millis())
}

/// If `now` is inside the customer's quiet hours: when they end (epoch ms) and as "07:00".
pub fn quiet_until(c: &Customer, now_ms: i64) -> Option<(i64, String)> {
    let (start, end) = parse_quiet_hours(c.quiet_hours.as_deref()?).ok()?;
    if start == end {
        return None;
    }
    let tz = tz_of(c);
    let local = tz.timestamp_millis_opt(now_ms).single()?;
    let m = local.hour() * 60 + local.minute();
    let quiet = if start < end {
        m >= start && m < end
    } else {
        m >= start || m < end
    };
    if !quiet {
        return None;
    }
    let day = if m < end {
        local.date_naive()
    } else {
        local.date_naive().succ_opt()?
    };
    let until = at_local(tz, day, end)?;
    Some((until, format!("{:02}:{:02}", end / 60, end % 60)))
}

/// Next local midnight (when a day's budget refills).
pub fn next_local_midnight(c: &Customer, now_ms: i64) -> i64 {
    let tz = tz_of(c);
    tz.timestamp_millis_opt(now_ms)
        .single()
        .and_then(|t| t.date_naive().succ_opt())
        .and_then(|d| at_local(tz, d, 0))
        .unwrap_or(now_ms + 86_400_000)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Send {
        channels: Vec<Channel>,
        reason: String,
    },
    Hold {
        until_ms: i64,
        reason: String,
    },
    Drop {
        reason: String,
    },
}

pub struct RouteInput<'a> {
    pub cfg: &'a RoutingConfig,
    /// Channels with a configured provider.
    pub available: &'a BTreeSet<Channel>,
    /// Channels on which the customer opted out (carrier STOP): never used.
    pub opted_out: &'a BTreeSet<Channel>,
    /// Channels that cannot carry a message to this customer, and why (a call in a language
    /// the voice provider cannot speak).
    pub unusable: &'a std::collections::BTreeMap<Channel, String>,
    pub customer: &'a Customer,
    pub urgent: bool,
    pub urgency_reason: &'a str,
    /// For reminders: the channel used last; more immediate ones go first.
    pub escalate_from: Option<Channel>,
    pub now_ms: i64,
    pub sent_today: u32,
    pub budget: u32,
    pub urgent_over_budget: u32,
}

pub fn route(i: &RouteInput) -> Decision {
    let c = i.customer;
    let mut notes: Vec<String> = vec![i.urgency_reason.to_string()];
    // Budget first: nothing else matters if we may not write today.
    if i.sent_today >= i.budget {
        let cap = i.budget + if i.urgent { i.urgent_over_budget } else { 0 };
        if i.sent_today >= cap {
            let until = next_local_midnight(c, i.now_ms);
            notes.push(format!(
                "held: daily budget used ({}/{}), until local midnight",
                i.sent_today, i.budget
            ));
            return Decision::Hold {
                until_ms: until,
                reason: notes.join("; "),
            };
        }
        notes.push(format!(
            "over daily budget ({}/{}) as allowed for urgent messages",
            i.sent_today, i.budget
        ));
    }
    let quiet = quiet_until(c, i.now_ms);
    if let Some((until, hhmm)) = &quiet {
        if !i.urgent || !c.urgent_in_quiet_hours {
            let why = if i.urgent {
                "customer does not allow urgent messages in quiet hours"
            } else {
                "advisory"
            };
            notes.push(format!("held: quiet hours until {hhmm} ({why})"));
            return Decision::Hold {
                until_ms: *until,
                reason: notes.join("; "),
            };
        }
    }
    let class: &[Channel] = if i.urgent {
        &i.cfg.immediate
    } else {
        &i.cfg.asynchronous
    };
    // Preference order, then any other channel with a contact, as fallbacks.
    let mut order: Vec<(Channel, Option<usize>)> = c
        .preferences
        .iter()
        .enumerate()
        .map(|(n, ch)| (*ch, Some(n + 1)))
        .collect();
    for ch in c.contacts.keys() {
        if !c.preferences.contains(ch) {
            order.push((*ch, None));
        }
    }
    let mut primary = Vec::new();
    let mut fallback = Vec::new();
    let mut extra_primary = Vec::new();
    for (ch, rank) in order {
        let name = ch.as_str();
        let rank_s = rank
            .map(|r| format!("preferred #{r}"))
            .unwrap_or_else(|| "not in preferences".into());
        if !c.contacts.contains_key(&ch) {
            notes.push(format!("{name} skipped: no contact"));
            continue;
        }
        if i.opted_out.contains(&ch) {
            notes.push(format!("{name} skipped: customer opted out"));
            continue;
        }
        if let Some(why) = i.unusable.get(&ch) {
            notes.push(format!("{name} skipped: {why}"));
            continue;
        }
        if !i.available.contains(&ch) {
            notes.push(format!("{name} skipped: no provider configured"));
            continue;
        }
        if quiet.is_some() && !i.cfg.immediate.contains(&ch) {
            notes.push(format!(
                "{name} skipped: quiet hours until {}",
                quiet.as_ref().map(|q| q.1.as_str()).unwrap_or("")
            ));
            continue;
        }
        if class.contains(&ch) && rank.is_some() {
            primary.push(ch);
            notes.push(format!("{name}: {rank_s}"));
        } else if class.contains(&ch) {
            extra_primary.push(ch);
            notes.push(format!("{name}: last resort ({rank_s})"));
        } else {
            fallback.push(ch);
            notes.push(format!(
                "{name}: fallback only ({rank_s}, not {})",
                if i.urgent {
                    "immediate"
                } else {
                    "asynchronous"
                }
            ));
        }
    }
    // Channels the customer did not list come last, as a final resort.
    let (listed, unlisted): (Vec<Channel>, Vec<Channel>) = fallback
        .into_iter()
        .chain(extra_primary)
        .partition(|ch| c.preferences.contains(ch));
    let mut channels: Vec<Channel> = primary.into_iter().chain(listed).chain(unlisted).collect();
    if let Some(last) = i.escalate_from {
        let rank = |ch: &Channel| {
            i.cfg
                .immediacy
                .iter()
                .position(|x| x == ch)
                .unwrap_or(usize::MAX)
        };
        let last_rank = rank(&last);
        // More immediate than the last channel first (in preference order), then the rest.
        channels.sort_by_key(|ch| if rank(ch) < last_rank { 0 } else { 1 });
        notes.push(format!("reminder: escalating beyond {}", last.as_str()));
    }
    if channels.is_empty() {
        notes.push("no usable channel".into());
        return Decision::Drop {
            reason: notes.join("; "),
        };
    }
    Decision::Send {
        channels,
        reason: notes.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn customer() -> Customer {
        let mut contacts = BTreeMap::new();
        contacts.insert(Channel::Email, "a@b.example".to_string());
        contacts.insert(Channel::Sms, "+6680".to_string());
        Customer {
            id: "c1".into(),
            name: "C".into(),
            locale: "en".into(),
            time_zone: "Asia/Bangkok".into(),
            contacts,
            preferences: vec![Channel::Email, Channel::Sms],
            quiet_hours: Some("22:00-07:00".into()),
            urgent_in_quiet_hours: true,
            daily_budget: None,
        }
    }

    // 2026-11-23 05:00 UTC = 12:00 in Bangkok; 16:00 UTC = 23:00 Bangkok.
    const NOON: i64 = 1_795_410_000_000;
    const NIGHT: i64 = NOON + 11 * 3_600_000;

    fn input<'a>(
        c: &'a Customer,
        cfg: &'a RoutingConfig,
        av: &'a BTreeSet<Channel>,
        urgent: bool,
        now: i64,
    ) -> RouteInput<'a> {
        RouteInput {
            cfg,
            available: av,
            opted_out: empty(),
            unusable: none(),
            customer: c,
            urgent,
            urgency_reason: if urgent { "urgent" } else { "advisory" },
            escalate_from: None,
            now_ms: now,
            sent_today: 0,
            budget: 5,
            urgent_over_budget: 1,
        }
    }

    fn empty() -> &'static BTreeSet<Channel> {
        static E: BTreeSet<Channel> = BTreeSet::new();
        &E
    }

    fn none() -> &'static BTreeMap<Channel, String> {
        static N: BTreeMap<Channel, String> = BTreeMap::new();
        &N
    }

    #[test]
    fn a_customer_whose_language_cannot_be_spoken_gets_a_text_instead_of_a_call() {
        let mut c = customer();
        c.contacts.insert(Channel::Voice, "+6680".into());
        c.preferences = vec![Channel::Voice, Channel::Sms];
        let cfg = RoutingConfig::default();
        let av: BTreeSet<_> = Channel::ALL.into_iter().collect();
        let unusable: BTreeMap<_, _> =
            [(Channel::Voice, "no text-to-speech voice for fa".to_string())]
                .into_iter()
                .collect();
        let mut i = input(&c, &cfg, &av, true, NOON);
        i.unusable = &unusable;
        match route(&i) {
            Decision::Send { channels, reason } => {
                assert!(!channels.contains(&Channel::Voice), "{channels:?}");
                assert_eq!(channels[0], Channel::Sms);
                assert!(
                    reason.contains("voice skipped: no text-to-speech voice for fa"),
                    "{reason}"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_opted_out_channel_is_never_used() {
        let c = customer();
        let cfg = RoutingConfig::default();
        let av: BTreeSet<_> = Channel::ALL.into_iter().collect();
        let out: BTreeSet<_> = [Channel::Sms].into_iter().collect();
        let mut i = input(&c, &cfg, &av, true, NIGHT);
        i.opted_out = &out;
        match route(&i) {
            Decision::Drop { reason } => {
                assert!(
                    reason.contains("sms skipped: customer opted out"),
                    "{reason}"
                )
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn noon_constant_is_noon_in_bangkok() {
        let c = customer();
        assert!(quiet_until(&c, NOON).is_none());
        let (until, hhmm) = quiet_until(&c, NIGHT).unwrap();
        assert_eq!(hhmm, "07:00");
        assert_eq!(until, NOON + 19 * 3_600_000);
    }

    #[test]
    fn urgent_goes_to_immediate_channel_even_if_email_is_preferred() {
        let c = customer();
        let cfg = RoutingConfig::default();
        let av: BTreeSet<_> = Channel::ALL.into_iter().collect();
        match route(&input(&c, &cfg, &av, true, NIGHT)) {
            Decision::Send { channels, reason } => {
                assert_eq!(channels, vec![Channel::Sms]);
                assert!(reason.contains("sms: preferred #2"), "{reason}");
                assert!(
                    reason.contains("email skipped: quiet hours until 07:00"),
                    "{reason}"
                );
            }
            d => panic!("{d:?}"),
        }
        match route(&input(&c, &cfg, &av, false, NOON)) {
            Decision::Send { channels, .. } => {
                assert_eq!(channels, vec![Channel::Email, Channel::Sms])
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn advisory_is_held_until_quiet_hours_end_and_budget_holds_until_midnight() {
        let c = customer();
        let cfg = RoutingConfig::default();
        let av: BTreeSet<_> = Channel::ALL.into_iter().collect();
        match route(&input(&c, &cfg, &av, false, NIGHT)) {
            Decision::Hold { until_ms, reason } => {
                assert_eq!(until_ms, NOON + 19 * 3_600_000);
                assert!(reason.contains("quiet hours until 07:00"));
            }
            d => panic!("{d:?}"),
        }
        let mut i = input(&c, &cfg, &av, false, NOON);
        i.sent_today = 5;
        assert!(matches!(route(&i), Decision::Hold { .. }));
        i.urgent = true;
        assert!(matches!(route(&i), Decision::Send { .. }));
        i.sent_today = 6;
        assert!(matches!(route(&i), Decision::Hold { .. }));
    }

    #[test]
    fn channels_without_provider_are_skipped_with_the_reason() {
        let c = customer();
        let cfg = RoutingConfig::default();
        let av = BTreeSet::new();
        match route(&input(&c, &cfg, &av, false, NOON)) {
            Decision::Drop { reason } => {
                assert!(reason.contains("email skipped: no provider configured"))
            }
            d => panic!("{d:?}"),
        }
    }
}
