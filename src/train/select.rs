//! Honest model selection: validation devices, ranking metrics, the ticket-level match rule and
//! the choice of threshold and consecutive scorings on validation.

use crate::domain::{event_applies_before, DeviceEvent, EventKind, Timestamp};
use crate::features::HOUR_MS;
use crate::predict::{within_hold_back, OpenRule};

/// Splits devices into (training, validation) by a seeded hash of their ids, so a device's rows
/// never sit on both sides. Devices that fail and devices that do not are split separately, so the
/// validation side sees failures. At least one device of each non-empty group stays in training.
pub fn split_devices(ids: &[(String, bool)], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut valid = Vec::new();
    for failing in [true, false] {
        let mut group: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .filter(|(_, (_, f))| *f == failing)
            .map(|(i, (id, _))| (fnv(id, seed), i))
            .collect();
        group.sort_unstable();
        let n_valid =
            ((group.len() as f64 * fraction).round() as usize).min(group.len().saturating_sub(1));
        for (k, (_, i)) in group.into_iter().enumerate() {
            if k < n_valid {
                valid.push(i);
            } else {
                train.push(i);
            }
        }
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

/// Assigns every device to one of `k` folds for cross-validation grouped by device: a device's
/// rows are all in one fold. `failures[i]` lists the modes device `i` failed of. Devices failing
/// the rarest mode are dealt first, then those of the next rarest, then devices that never failed,
/// each group in seeded hash order and dealt round robin: every mode's failing devices spread over
/// as many folds as they can.
pub fn device_folds(ids: &[String], failures: &[Vec<String>], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut per_mode: std::collections::HashMap<&str, usize> = Default::default();
    for f in failures {
        for m in f {
            *per_mode.entry(m.as_str()).or_default() += 1;
        }
    }
    let mut order: Vec<(usize, &str, u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let rarest = failures
                .get(i)
                .into_iter()
                .flatten()
                .map(|m| (per_mode.get(m.as_str()).copied().unwrap_or(0), m.as_str()))
                .min()
                .unwrap_or((usize::MAX, ""));
            (rarest.0, rarest.1, fnv(id, seed), i)
        })
        .collect();
    order.sort_unstable();
    let mut folds = vec![0; ids.len()];
    for (n, (_, _, _, i)) in order.into_iter().enumerate() {
        folds[i] = n % k;
    }
    folds
}

fn fnv(s: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Area under the ROC curve (ties count half); `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        for &k in &idx[i..j] {
            if labels[k] {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = scores.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    Some((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64))
}

/// Precision–recall curve points (recall, precision), from the highest score down.
pub fn pr_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let total_pos = labels.iter().filter(|l| **l).count();
    if total_pos == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        out.push((tp as f64 / total_pos as f64, tp as f64 / (tp + fp) as f64));
        i = j;
    }
    out
}

/// Average precision (area under the PR curve, step-wise); `None` without positives.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let curve = pr_curve(scores, labels);
    if curve.is_empty() {
        return None;
    }
    let mut prev_r = 0.0;
    let mut ap = 0.0;
    for (r, p) in curve {
        ap += (r - prev_r) * p;
        prev_r = r;
    }
    Some(ap)
}

/// Ticket-level outcome over some devices and modes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TicketTally {
    pub tickets: usize,
    /// Tickets followed by a failure of their mode within the match window.
    pub correct: usize,
    /// Failures the device was observed (scored) within the horizon before: a warning was possible.
    pub due: usize,
    /// Due failures with a ticket opened within the match window before them.
    pub detected: usize,
    /// Per detected failure: hours from the earliest matching ticket to the failure.
    pub lead_hours: Vec<f64>,
}

impl TicketTally {
    pub fn precision(&self) -> Option<f64> {
        (self.tickets > 0).then(|| self.correct as f64 / self.tickets as f64)
    }
    pub fn recall(&self) -> Option<f64> {
        (self.due > 0).then(|| self.detected as f64 / self.due as f64)
    }
    pub fn f1(&self) -> f64 {
        match (self.precision(), self.recall()) {
            (Some(p), Some(r)) if p + r > 0.0 => 2.0 * p * r / (p + r),
            _ => 0.0,
        }
    }
    /// Recall where each detection counts by its lead time, in proportion up to `full_lead_h` and
    /// fully from there: a warning one hour ahead is worth little, one that leaves the lead the
    /// policy aims for ([`FULL_CREDIT_LEAD`] of the horizon) is worth as much as an earlier one.
    pub fn lead_weighted_recall(&self, full_lead_h: f64) -> Option<f64> {
        (self.due > 0).then(|| {
            self.lead_hours
                .iter()
                .map(|l| (l / full_lead_h).clamp(0.0, 1.0))
                .sum::<f64>()
                / self.due as f64
        })
    }

    /// F1 of precision and [`TicketTally::lead_weighted_recall`].
    pub fn lead_weighted_f1(&self, full_lead_h: f64) -> f64 {
        match (self.precision(), self.lead_weighted_recall(full_lead_h)) {
            (Some(p), Some(r)) if p + r > 0.0 => 2.0 * p * r / (p + r),
            _ => 0.0,
        }
    }

    pub fn add(&mut self, o: TicketTally) {
        self.tickets += o.tickets;
        self.correct += o.correct;
        self.due += o.due;
        self.detected += o.detected;
        self.lead_hours.extend(o.lead_hours);
    }
}

/// Matches one device's tickets for one mode against its failures of that mode.
///
/// A ticket opened at `o` is correct when a failure follows in `(o, o + window]`. A failure at `f`
/// is due when the device was scored in `[f − horizon, f)`, and detected when a ticket opened in
/// `[f − window, f)` after the previous failure. The open ends are the apply order's: a failure
/// stamped at a scoring's time is applied before it. All slices sorted.
pub fn match_tickets(
    opened: &[Timestamp],
    failures: &[Timestamp],
    scored: &[Timestamp],
    horizon_h: f64,
    window_h: f64,
) -> TicketTally {
    let w = (window_h * HOUR_MS) as i64;
    let hz = (horizon_h * HOUR_MS) as i64;
    let mut t = TicketTally {
        tickets: opened.len(),
        ..Default::default()
    };
    // A failure stamped at a scoring's own time was applied before that scoring (events first):
    // the scoring, and a ticket it opens, belong to the part after the failure.
    let before = |o: Timestamp, f: Timestamp| !event_applies_before(f, o);
    for &o in opened {
        if failures
            .iter()
            .any(|&f| before(o, f) && f <= o.saturating_add(w))
        {
            t.correct += 1;
        }
    }
    let mut prev = Timestamp::MIN;
    for &f in failures {
        let lo = f.saturating_sub(hz);
        // `scored` is sorted: the first scoring at or after `lo` decides (this runs for every
        // candidate policy, so a scan of the device's scorings per failure would dominate).
        let first = scored.partition_point(|&s| s < lo);
        let due = scored.get(first).is_some_and(|&s| before(s, f));
        if due {
            t.due += 1;
            let first = opened
                .iter()
                .copied()
                .filter(|&o| {
                    (prev == Timestamp::MIN || !before(o, prev))
                        && before(o, f)
                        && o >= f.saturating_sub(w)
                })
                .min();
            if let Some(o) = first {
                t.detected += 1;
                t.lead_hours.push((f - o) as f64 / HOUR_MS);
            }
        }
        prev = f;
    }
    t
}

/// Replays the ticket policy of the engine on scored rows of one device: a ticket opens when
/// `rule` is met by the scorings at or above `threshold` whose predicted time to failure
/// (`ttf[i]` for `rows[i]`, NaN or missing: none) is within `hold_back` (the hold-back counts in
/// the rule, as the artifacts training writes ask: `levels.hold_back_in_rule`), and stays live
/// until a failure or maintenance of the mode settles it (which also clears the memory of recent
/// scorings). Returns the opening times.
pub fn simulate_openings(
    rows: &[(Timestamp, f64)],
    ttf: &[f64],
    events: &[DeviceEvent],
    mode: &str,
    threshold: f64,
    rule: OpenRule,
    hold_back: Option<f64>,
) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut evs = events
        .iter()
        .filter(|e| e.code == mode && matches!(e.kind, EventKind::Failure | EventKind::Maintenance))
        .peekable();
    let (mut recent, mut live) = (0u16, false);
    for (i, &(ts, p)) in rows.iter().enumerate() {
        while evs.peek().is_some_and(|e| event_applies_before(e.ts, ts)) {
            evs.next();
            recent = 0;
            live = false;
        }
        let predicted = ttf.get(i).copied().filter(|h| h.is_finite());
        let within = within_hold_back(hold_back, predicted);
        recent = OpenRule::remember(recent, p >= threshold && within);
        if !live && rule.met(recent) && within {
            out.push(ts);
            live = true;
        }
    }
    out
}

/// The lead time, as a fraction of the horizon, from which a detection counts fully when the
/// policy is chosen. Half the horizon is the lead a ticket needs to be worth dispatching; crediting
/// more (up to the whole horizon) pushed thresholds down to catch the first faint signs of a fault,
/// trading many false tickets for hours of lead nobody needed.
pub const FULL_CREDIT_LEAD: f64 = 0.5;

/// What the ticket policy should aim for on validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    BestF1,
    /// Highest recall with precision at least this (best F1 when none reaches it).
    MinPrecision(f64),
}

impl Target {
    pub fn describe(&self, window_h: f64) -> String {
        let rule = format!(
            "on validation devices (a ticket is correct when the failure follows within {window_h}h; \
             a detection counts by its lead time up to half the horizon)"
        );
        match self {
            Target::BestF1 => format!("best ticket F1 {rule}"),
            Target::MinPrecision(p) => {
                format!("highest ticket recall with precision >= {p} {rule}, else best F1")
            }
        }
    }
}

/// One validation device for threshold selection.
pub struct ValidDevice<'a> {
    pub rows: Vec<(Timestamp, f64)>,
    /// Predicted hours to failure at each of `rows` (out of fold), NaN where none; empty when the
    /// mode has no regressor.
    pub ttf: Vec<f64>,
    pub events: &'a [DeviceEvent],
}

/// The chosen policy and its validation tally.
#[derive(Debug, Clone)]
pub struct Choice {
    pub threshold: f64,
    pub rule: OpenRule,
    /// Tickets open only while the predicted time to failure is at most this; `None`: always.
    pub hold_back: Option<f64>,
    pub tally: TicketTally,
}

/// The hold-backs a mode chooses among, as multiples of the horizon, after "none" (which wins
/// ties: a bound must earn its place out of fold). From the horizon to the default match window:
/// a ticket whose failure is predicted further out than the window would be counted early.
pub const HOLD_BACK_HORIZONS: [f64; 3] = [2.0, 1.5, 1.0];

/// The hold-back candidates for `horizon_h`: none, then each of [`HOLD_BACK_HORIZONS`].
pub fn hold_back_candidates(horizon_h: f64) -> Vec<Option<f64>> {
    std::iter::once(None)
        .chain(HOLD_BACK_HORIZONS.iter().map(|m| Some(m * horizon_h)))
        .collect()
}

/// The ticket rules a mode chooses among with its threshold: one to three scorings in a row, or
/// two or three of a few more, simplest first (ties go to the earliest). Six scorings at most:
/// a rule remembering longer would open on signs scattered over a quarter of the horizon.
pub const OPEN_RULES: [(u16, u16); 8] = [
    (1, 1),
    (2, 2),
    (2, 3),
    (3, 3),
    (2, 4),
    (3, 4),
    (3, 5),
    (3, 6),
];

/// Evenly spaced quantiles in [`candidates`], and as many again ever closer to the top.
pub const CANDIDATE_QUANTILES: usize = 200;

/// Candidate thresholds: the distinct positive scores of `devices` — all of them when there are
/// few, else [`CANDIDATE_QUANTILES`] quantiles spread evenly over the range and as many more whose
/// distance to the top shrinks geometrically down to the single highest score. Failures are rare,
/// so the ticket and alert levels sit in the top percent or less of the scores: evenly spaced
/// quantiles alone (every half percent) left a couple of candidates there, and none above the
/// 99.5th percentile, so a level could be neither fine-tuned nor high.
pub fn candidates(devices: &[ValidDevice<'_>]) -> Vec<f64> {
    let mut probs: Vec<f64> = devices
        .iter()
        .flat_map(|d| d.rows.iter().map(|r| r.1))
        .filter(|p| p.is_finite() && *p > 0.0)
        .collect();
    probs.sort_by(f64::total_cmp);
    probs.dedup();
    let n = probs.len();
    if n <= 2 * CANDIDATE_QUANTILES {
        return probs;
    }
    let q = CANDIDATE_QUANTILES;
    let even = (0..q).map(|i| i * n / q);
    // Tail shares from one half down to 1/n: the last index is the highest score.
    let ratio = (2.0 / n as f64).ln() / (q - 1) as f64;
    let top = (0..q).map(|i| {
        let tail = 0.5 * (ratio * i as f64).exp();
        (((1.0 - tail) * n as f64).floor() as usize).min(n - 1)
    });
    let mut idx: Vec<usize> = even.chain(top).collect();
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter().map(|i| probs[i]).collect()
}

/// The ticket tally of the policy (threshold, rule, hold-back) replayed on `devices`.
#[allow(clippy::too_many_arguments)]
pub fn tally_at(
    devices: &[ValidDevice<'_>],
    mode: &str,
    threshold: f64,
    rule: OpenRule,
    hold_back: Option<f64>,
    horizon_h: f64,
    window_h: f64,
) -> TicketTally {
    tally_openings(devices, mode, horizon_h, window_h, |d| {
        simulate_openings(&d.rows, &d.ttf, d.events, mode, threshold, rule, hold_back)
    })
}

/// The tally over `devices` of the openings `open` finds on each, matched against the device's
/// failures of `mode`.
fn tally_openings(
    devices: &[ValidDevice<'_>],
    mode: &str,
    horizon_h: f64,
    window_h: f64,
    open: impl Fn(&ValidDevice<'_>) -> Vec<Timestamp>,
) -> TicketTally {
    let mut t = TicketTally::default();
    for d in devices {
        let opened = open(d);
        let fails: Vec<Timestamp> = d
            .events
            .iter()
            .filter(|e| e.code == mode && e.kind == EventKind::Failure)
            .map(|e| e.ts)
            .collect();
        let scored: Vec<Timestamp> = d.rows.iter().map(|r| r.0).collect();
        t.add(match_tickets(&opened, &fails, &scored, horizon_h, window_h));
    }
    t
}

/// Watch episodes of one device: the times its score rises to `threshold` or above after being
/// below it (a watch is not held like a ticket: it ends when the score falls back).
pub fn watch_episodes(rows: &[(Timestamp, f64)], threshold: f64) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut on = false;
    for &(ts, p) in rows {
        let above = p >= threshold;
        if above && !on {
            out.push(ts);
        }
        on = above;
    }
    out
}

/// The tally of watch episodes at `threshold` on `devices`: each episode counts as an opening.
pub fn watch_tally(
    devices: &[ValidDevice<'_>],
    mode: &str,
    threshold: f64,
    horizon_h: f64,
    window_h: f64,
) -> TicketTally {
    tally_openings(devices, mode, horizon_h, window_h, |d| {
        watch_episodes(&d.rows, threshold)
    })
}

/// The lowest candidate threshold whose watch episodes not followed by a failure of the mode
/// within the match window stay at or under `cap` per device-month with a margin
/// ([`false_rate_bound`]); `None` when none does. Without the margin the level sat where the
/// out-of-fold count just met the cap, the one threshold chosen because its count came out low,
/// and new fleets saw about twice the cap.
pub fn watch_level(
    devices: &[ValidDevice<'_>],
    mode: &str,
    cap_per_device_month: f64,
    device_months: f64,
    horizon_h: f64,
    window_h: f64,
) -> Option<(f64, TicketTally)> {
    if device_months <= 0.0 {
        return None;
    }
    // False episodes fall as the threshold rises: bisect over the sorted candidates.
    let cands = candidates(devices);
    let ok = |th: f64| {
        let t = watch_tally(devices, mode, th, horizon_h, window_h);
        (false_rate_bound(t.tickets - t.correct, device_months) <= cap_per_device_month)
            .then_some(t)
    };
    let (mut lo, mut hi) = (0usize, cands.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ok(cands[mid]).is_some() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let th = *cands.get(lo)?;
    ok(th).map(|t| (th, t))
}

/// Standard deviations of margin in [`false_rate_bound`]: about a one-sided 95 % bound.
pub const FALSE_RATE_MARGIN_SD: f64 = 1.645;

/// A cautious estimate of a false-opening rate per device-month from `false_count` out-of-fold
/// false openings: the count plus [`FALSE_RATE_MARGIN_SD`] of its Poisson deviation (√count). A
/// rate that met its cap only by luck on these devices would exceed it on the next fleet; the
/// margin is large for few device-months and shrinks as they grow.
pub fn false_rate_bound(false_count: usize, device_months: f64) -> f64 {
    let f = false_count as f64;
    (f + FALSE_RATE_MARGIN_SD * f.sqrt()) / device_months
}

/// The lowest candidate threshold at or above `floor` whose false openings per device-month stay
/// at or under `cap` with a margin ([`false_rate_bound`]) (and, when `need_detection`, that detects at least one failure), with its
/// tally. Lower thresholds warn earlier and more often, so this is the level's best recall under
/// its false-alarm budget.
#[allow(clippy::too_many_arguments)]
pub fn lowest_under_cap(
    devices: &[ValidDevice<'_>],
    mode: &str,
    floor: f64,
    rule: OpenRule,
    hold_back: Option<f64>,
    cap_per_device_month: f64,
    device_months: f64,
    need_detection: bool,
    horizon_h: f64,
    window_h: f64,
) -> Option<(f64, TicketTally)> {
    if device_months <= 0.0 {
        return None;
    }
    candidates(devices)
        .into_iter()
        .filter(|c| *c >= floor)
        .find_map(|th| {
            let t = tally_at(devices, mode, th, rule, hold_back, horizon_h, window_h);
            let false_rate = false_rate_bound(t.tickets - t.correct, device_months);
            (false_rate <= cap_per_device_month && (!need_detection || t.detected > 0))
                .then_some((th, t))
        })
}

/// Chooses threshold, ticket rule (among [`OPEN_RULES`]) and hold-back (among
/// [`hold_back_candidates`], when the devices carry predicted times to failure) on validation
/// devices for `target`. A hold-back is chosen only when its best policy scores strictly higher
/// than every looser one's: where the predicted time does not tell early signs from late ones,
/// a bound only loses detections, and "none" stays.
pub fn choose_policy(
    devices: &[ValidDevice<'_>],
    mode: &str,
    horizon_h: f64,
    window_h: f64,
    target: Target,
) -> Choice {
    let cands = candidates(devices);
    let predicted = devices.iter().any(|d| d.ttf.iter().any(|h| h.is_finite()));
    let bounds = if predicted {
        hold_back_candidates(horizon_h)
    } else {
        vec![None]
    };
    let rules = OPEN_RULES.map(|(k, n)| OpenRule::new(k, n));
    // Every policy's tally, `tallies[bound][rule][candidate]`: the scorings at or above a
    // candidate are found once and replayed under every rule and bound.
    let prepared: Vec<Replay> = devices.iter().map(|d| Replay::new(d, mode)).collect();
    let mut tallies = vec![vec![Vec::with_capacity(cands.len()); rules.len()]; bounds.len()];
    let mut above: Vec<Vec<u32>> = vec![Vec::new(); devices.len()];
    for &th in &cands {
        for (a, d) in above.iter_mut().zip(devices) {
            a.clear();
            a.extend(
                d.rows
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.1 >= th)
                    .map(|(i, _)| i as u32),
            );
        }
        for (b, &bound) in bounds.iter().enumerate() {
            // A scoring beyond the bound does not count toward the rule.
            let counted: Vec<Vec<u32>> = devices
                .iter()
                .zip(&above)
                .map(|(d, a)| Replay::within(d, a, bound))
                .collect();
            for (r, &rule) in rules.iter().enumerate() {
                let mut t = TicketTally::default();
                for (rp, a) in prepared.iter().zip(&counted) {
                    let opened = rp.openings(a, rule);
                    t.add(match_tickets(
                        &opened, &rp.fails, &rp.scored, horizon_h, window_h,
                    ));
                }
                tallies[b][r].push(t);
            }
        }
    }
    let mut best: Option<(f64, Choice)> = None;
    for (bound, per_rule) in bounds.into_iter().zip(&tallies) {
        let Some((score, c)) =
            choose_for_hold_back(&cands, &rules, per_rule, horizon_h, target, bound)
        else {
            continue;
        };
        if best.as_ref().is_none_or(|b| score > b.0 + 1e-9) {
            best = Some((score, c));
        }
    }
    best.map_or(
        Choice {
            threshold: 0.5,
            rule: OpenRule::in_a_row(2),
            hold_back: None,
            tally: TicketTally::default(),
        },
        |b| b.1,
    )
}

/// One device's scorings prepared for replaying many ticket policies of one mode: what
/// [`simulate_openings`] and [`tally_at`] compute, found for every policy at once.
struct Replay {
    /// The scorings' times.
    scored: Vec<Timestamp>,
    /// The mode's failures.
    fails: Vec<Timestamp>,
    /// Per scoring, how many of the mode's failures and maintenances the replay has passed
    /// before it: each ends a live ticket and clears the memory of recent scorings.
    segment: Vec<u32>,
}

impl Replay {
    fn new(d: &ValidDevice<'_>, mode: &str) -> Replay {
        let mut evs = d
            .events
            .iter()
            .filter(|e| {
                e.code == mode && matches!(e.kind, EventKind::Failure | EventKind::Maintenance)
            })
            .peekable();
        let mut seg = 0u32;
        let segment = d
            .rows
            .iter()
            .map(|&(ts, _)| {
                while evs.peek().is_some_and(|e| event_applies_before(e.ts, ts)) {
                    evs.next();
                    seg += 1;
                }
                seg
            })
            .collect();
        Replay {
            scored: d.rows.iter().map(|r| r.0).collect(),
            fails: d
                .events
                .iter()
                .filter(|e| e.code == mode && e.kind == EventKind::Failure)
                .map(|e| e.ts)
                .collect(),
            segment,
        }
    }

    /// The scorings among `above` (indices, ascending) whose predicted time to failure is within
    /// `hold_back`: the ones that count toward the rule.
    fn within(d: &ValidDevice<'_>, above: &[u32], hold_back: Option<f64>) -> Vec<u32> {
        above
            .iter()
            .copied()
            .filter(|&i| {
                let predicted = d.ttf.get(i as usize).copied().filter(|h| h.is_finite());
                within_hold_back(hold_back, predicted)
            })
            .collect()
    }

    /// The openings [`simulate_openings`] finds for `rule` at the threshold and hold-back whose
    /// counted scorings (at or above the level and within the bound: [`Replay::within`]) are
    /// `above` (indices, ascending). A ticket opens only at a counted scoring, so only those are
    /// visited: each counts the others among the last `n` scorings of its segment, and after an
    /// opening the rest of the segment is skipped.
    fn openings(&self, above: &[u32], rule: OpenRule) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let n = u32::from(rule.n.clamp(1, OpenRule::MAX_N));
        let k = usize::from(rule.k.max(1));
        let mut a = 0;
        while let Some(&i) = above.get(a) {
            let seg = self.segment[i as usize];
            let recent = 1 + above[..a]
                .iter()
                .rev()
                .take_while(|&&j| i - j < n && self.segment[j as usize] == seg)
                .count();
            if recent >= k {
                out.push(self.scored[i as usize]);
                // Live until the segment ends.
                a += above[a..].partition_point(|&j| self.segment[j as usize] <= seg);
            } else {
                a += 1;
            }
        }
        out
    }
}

/// The best (threshold, rule) under one hold-back, with its score; `None` without candidates.
/// `tallies[rule][candidate]` is each policy's tally under that hold-back.
fn choose_for_hold_back(
    cands: &[f64],
    rules: &[OpenRule],
    tallies: &[Vec<TicketTally>],
    horizon_h: f64,
    target: Target,
    hold_back: Option<f64>,
) -> Option<(f64, Choice)> {
    let mut scored: Vec<(f64, Choice)> = Vec::new();
    for (&rule, per_th) in rules.iter().zip(tallies) {
        for (&th, tally) in cands.iter().zip(per_th) {
            let full = FULL_CREDIT_LEAD * horizon_h;
            let f1 = tally.lead_weighted_f1(full);
            let score = match target {
                Target::BestF1 => f1,
                Target::MinPrecision(p) => {
                    if tally.precision().unwrap_or(0.0) >= p {
                        1.0 + tally.lead_weighted_recall(full).unwrap_or(0.0) + 1e-3 * f1
                    } else {
                        f1
                    }
                }
            };
            scored.push((
                score,
                Choice {
                    threshold: th,
                    rule,
                    hold_back,
                    tally: tally.clone(),
                },
            ));
        }
    }
    let top = scored.iter().map(|s| s.0).max_by(f64::total_cmp)?;
    // Several policies often tie on a small validation set (or on an easy one, where nearly every
    // policy is perfect). Of those, keep the earliest warners (next), then take the rule with the
    // most of them (the simplest on equal counts), and the median of its thresholds: the middle of
    // the good range is the choice least sensitive to the shift from validation devices to unseen
    // ones.
    let mut tied: Vec<&Choice> = scored
        .iter()
        .filter(|s| s.0 >= top - 1e-9)
        .map(|s| &s.1)
        .collect();
    // Where every tied policy's warnings leave the lead the score asks for (half the horizon),
    // the score cannot tell them apart, though some warn hours earlier than others. Keep those
    // that would still have warned if each device's history had stopped at a random point within
    // the horizon before its failure (a device that goes quiet, a series cut short): the
    // detections counted in proportion to their lead up to the whole horizon.
    let earliest = |c: &Choice| c.tally.lead_weighted_recall(horizon_h).unwrap_or(0.0);
    let best = tied
        .iter()
        .map(|c| earliest(c))
        .fold(f64::NEG_INFINITY, f64::max);
    tied.retain(|c| earliest(c) >= best - 1e-9);
    let rule = rules
        .iter()
        .enumerate()
        .max_by_key(|(i, r)| {
            (
                tied.iter().filter(|c| c.rule == **r).count(),
                std::cmp::Reverse(*i),
            )
        })
        .map_or(OpenRule::in_a_row(2), |(_, r)| *r);
    let mut of_k: Vec<&Choice> = tied.into_iter().filter(|c| c.rule == rule).collect();
    of_k.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
    Some((top, of_k.get(of_k.len() / 2).copied()?.clone()))
}

/// The q-quantile (0..=1) of a sample, by linear interpolation; `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_false_rate_bound_keeps_a_margin_that_shrinks_with_evidence() {
        assert_eq!(false_rate_bound(0, 10.0), 0.0);
        // 3 false openings in 100 device-months: 0.03 measured, above 0.05 with the margin.
        assert!(false_rate_bound(3, 100.0) > 0.05);
        // 30 in 1000: the same rate, now within the cap, and still above the measured rate.
        assert!(false_rate_bound(30, 1000.0) < 0.05);
        assert!(false_rate_bound(30, 1000.0) > 0.03);
    }

    #[test]
    fn candidates_reach_the_top_score_and_crowd_where_the_rare_failures_are() {
        let rows: Vec<(Timestamp, f64)> = (0..100_000)
            .map(|i| (Timestamp::from_millis(i), (i + 1) as f64 / 100_000.0))
            .collect();
        let devices = [ValidDevice {
            rows,
            ttf: vec![],
            events: &[],
        }];
        let c = candidates(&devices);
        assert!(c.len() <= 2 * CANDIDATE_QUANTILES, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert_eq!(
            c.last().copied(),
            Some(1.0),
            "the highest score is a candidate"
        );
        // The top percent of the scores holds dozens of candidates, not two.
        let top = c.iter().filter(|p| **p > 0.99).count();
        assert!(top >= 50, "{top} candidates in the top percent");
        // The whole range is still covered for modes whose levels sit low.
        assert!(c.first().is_some_and(|p| *p < 0.01));
        assert!(c.iter().filter(|p| **p > 0.4 && **p < 0.6).count() >= 20);
    }

    #[test]
    fn auc_of_a_perfect_and_a_useless_ranking() {
        let l = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &l), Some(1.0));
        assert_eq!(roc_auc(&[0.5; 4], &l), Some(0.5));
        assert!((pr_auc(&[0.1, 0.2, 0.8, 0.9], &l).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1], &[true]), None);
    }

    #[test]
    fn tickets_match_failures_within_the_window_and_count_lead_time() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let t = match_tickets(
            &[h(10), h(100)],
            &[h(40), h(300)],
            &[h(35), h(290)],
            24.0,
            48.0,
        );
        assert_eq!((t.tickets, t.correct), (2, 1));
        assert_eq!((t.due, t.detected), (2, 1));
        assert_eq!(t.lead_hours, vec![30.0]);
    }

    #[test]
    fn a_failure_at_a_scorings_own_time_is_applied_before_that_scoring() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        // A ticket opened at the failure's own time was opened after it (events first): not a
        // detection of it, not correct for it; a scoring at that time alone does not make the
        // failure due.
        let t = match_tickets(&[h(40)], &[h(40)], &[h(40)], 24.0, 48.0);
        assert_eq!((t.tickets, t.correct, t.due, t.detected), (1, 0, 0, 0));
        // An hour earlier it is.
        let t = match_tickets(&[h(39)], &[h(40)], &[h(39), h(40)], 24.0, 48.0);
        assert_eq!((t.tickets, t.correct, t.due, t.detected), (1, 1, 1, 1));
        // A ticket opened at the previous failure's time warns of the next one.
        let t = match_tickets(&[h(10)], &[h(10), h(40)], &[h(10), h(39)], 24.0, 48.0);
        assert_eq!((t.correct, t.due, t.detected), (1, 1, 1));
        assert_eq!(t.lead_hours, vec![30.0]);
    }

    #[test]
    fn an_event_at_a_scorings_own_time_settles_the_ticket_and_clears_the_memory_before_it() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let id = crate::domain::DeviceId::parse("d").expect("valid id");
        let fail = |t: i64| DeviceEvent {
            device_id: id.clone(),
            ts: h(t),
            kind: EventKind::Failure,
            code: "m".into(),
        };
        let rows: Vec<(Timestamp, f64)> = (0..20).map(|t| (h(t), 0.9)).collect();
        let ttf = vec![10.0; rows.len()];
        let events = vec![fail(5)];
        let two = OpenRule::in_a_row(2);
        // Hours 0 and 1 open; the failure at hour 5 settles it before hour 5's scoring, which
        // starts the memory again: hours 5 and 6 open the next ticket.
        let opened = simulate_openings(&rows, &ttf, &events, "m", 0.5, two, None);
        assert_eq!(opened, vec![h(1), h(6)]);
        let d = ValidDevice {
            rows: rows.clone(),
            ttf: ttf.clone(),
            events: &events,
        };
        let all: Vec<u32> = (0..rows.len() as u32).collect();
        assert_eq!(Replay::new(&d, "m").openings(&all, two), opened);
    }

    #[test]
    fn folds_group_devices_and_spread_each_modes_failing_devices() {
        let ids: Vec<String> = (0..23).map(|i| format!("dev{i}")).collect();
        // Three devices fail the rare mode, eight the common one, the rest never fail.
        let failures: Vec<Vec<String>> = (0..23)
            .map(|i| match i {
                0..=2 => vec!["rare".to_string()],
                3..=10 => vec!["common".to_string()],
                _ => vec![],
            })
            .collect();
        let folds = device_folds(&ids, &failures, 5, 7);
        assert_eq!(folds.len(), 23);
        assert!(folds.iter().all(|f| *f < 5));
        let spread = |range: std::ops::RangeInclusive<usize>| {
            let mut fs: Vec<usize> = range.map(|i| folds[i]).collect();
            fs.sort_unstable();
            fs.dedup();
            fs.len()
        };
        assert_eq!(
            spread(0..=2),
            3,
            "rare failures in three different folds: {folds:?}"
        );
        assert_eq!(
            spread(3..=10),
            5,
            "common failures in every fold: {folds:?}"
        );
        // Every fold gets devices, and the same seed gives the same folds.
        for f in 0..5 {
            assert!(folds.iter().filter(|x| **x == f).count() >= 4, "{folds:?}");
        }
        assert_eq!(device_folds(&ids, &failures, 5, 7), folds);
    }

    #[test]
    fn device_split_keeps_failing_devices_on_both_sides() {
        let ids: Vec<(String, bool)> = (0..20).map(|i| (format!("d{i}"), i % 2 == 0)).collect();
        let (tr, va) = split_devices(&ids, 0.2, 1);
        assert_eq!(tr.len() + va.len(), 20);
        assert!(va.iter().any(|&i| ids[i].1) && va.iter().any(|&i| !ids[i].1));
        assert!(tr.iter().all(|i| !va.contains(i)));
        assert_eq!(split_devices(&ids, 0.2, 1), (tr, va));
    }

    #[test]
    fn a_fault_that_flickers_is_caught_by_k_of_the_last_n_and_lone_spikes_are_not() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let failure = |d: &str, at: i64| DeviceEvent {
            device_id: crate::domain::DeviceId::parse(d).unwrap(),
            ts: h(at),
            kind: EventKind::Failure,
            code: "m".into(),
        };
        let fails: Vec<Vec<DeviceEvent>> = (0..4).map(|i| vec![failure("f", 300 + i)]).collect();
        // Failing devices: in the 30 h before the failure the score is high every other scoring,
        // never twice in a row.
        let failing = |end: i64| -> Vec<(Timestamp, f64)> {
            (0..end)
                .map(|t| {
                    let p = if end - t <= 30 && t % 2 == 0 {
                        0.7
                    } else {
                        0.05
                    };
                    (h(t), p)
                })
                .collect()
        };
        // Healthy devices: a lone spike as high every fifty scorings.
        let healthy: Vec<(Timestamp, f64)> = (0..400)
            .map(|t| (h(t), if t % 50 == 25 { 0.7 } else { 0.05 }))
            .collect();
        let mut devices: Vec<ValidDevice> = fails
            .iter()
            .enumerate()
            .map(|(i, f)| ValidDevice {
                rows: failing(300 + i as i64),
                ttf: vec![],
                events: f,
            })
            .collect();
        for _ in 0..4 {
            devices.push(ValidDevice {
                rows: healthy.clone(),
                ttf: vec![],
                events: &[],
            });
        }
        let c = choose_policy(&devices, "m", 24.0, 48.0, Target::BestF1);
        assert!(c.rule.n > c.rule.k && c.rule.k >= 2, "{c:?}");
        assert_eq!(
            (c.tally.precision(), c.tally.recall()),
            (Some(1.0), Some(1.0))
        );
        // No rule of scorings in a row gets there: one opens on every spike, more never opens.
        for k in 1..=3 {
            let t = tally_at(&devices, "m", 0.7, OpenRule::in_a_row(k), None, 24.0, 48.0);
            assert!(t.f1() < c.tally.f1(), "{k} in a row: {t:?}");
        }
    }

    /// A device failing at hour 200, scored hourly from hour 0: `steps` (hours before the
    /// failure, score) ascending by hours, `base` before the first sign.
    fn failing_at_200(
        steps: &[(i64, f64)],
        base: f64,
    ) -> (Vec<DeviceEvent>, Vec<(Timestamp, f64)>) {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let fail = vec![DeviceEvent {
            device_id: crate::domain::DeviceId::parse("a").expect("valid id"),
            ts: h(200),
            kind: EventKind::Failure,
            code: "m".into(),
        }];
        let rows = (0..200)
            .map(|t| {
                let p = steps
                    .iter()
                    .find(|(d, _)| 200 - t <= *d)
                    .map_or(base, |s| s.1);
                (h(t), p)
            })
            .collect();
        (fail, rows)
    }

    /// The validation devices of a one-failure test: the failing device and a healthy one,
    /// without predicted times.
    fn failing_and_healthy<'a>(
        failing: &[(Timestamp, f64)],
        fail: &'a [DeviceEvent],
        healthy: &[(Timestamp, f64)],
    ) -> [ValidDevice<'a>; 2] {
        [
            ValidDevice {
                rows: failing.to_vec(),
                ttf: vec![],
                events: fail,
            },
            ValidDevice {
                rows: healthy.to_vec(),
                ttf: vec![],
                events: &[],
            },
        ]
    }

    #[test]
    fn policy_prefers_early_warnings_and_ignores_a_lone_spike() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let (fail, failing) = failing_at_200(&[(20, 0.95), (40, 0.6)], 0.1);
        let healthy: Vec<(Timestamp, f64)> = (0..200)
            .map(|t| (h(t), if t == 77 { 0.58 } else { 0.1 }))
            .collect();
        let devices = failing_and_healthy(&failing, &fail, &healthy);
        let c = choose_policy(&devices, "m", 24.0, 48.0, Target::BestF1);
        assert!(c.threshold <= 0.6, "{c:?}");
        assert!(simulate_openings(&healthy, &[], &[], "m", c.threshold, c.rule, None).is_empty());
        let opened = simulate_openings(&failing, &[], &fail, "m", c.threshold, c.rule, None);
        assert!(h(200) - opened[0] >= 12 * 3_600_000, "{c:?}");
        assert_eq!(c.tally.precision(), Some(1.0));
    }

    #[test]
    fn of_policies_that_tie_the_one_that_warns_earliest_within_the_horizon_is_chosen() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        // A faint sign 30 h ahead and a strong one 15 h ahead: both leave at least half the
        // 24 h horizon, so every level from 0.3 to 0.9 scores a perfect ticket F1, and so does
        // every rule. Only the faint sign's level still warns if the history stops 15–24 h
        // before the failure.
        let (fail, failing) = failing_at_200(&[(15, 0.9), (30, 0.3)], 0.05);
        let healthy: Vec<(Timestamp, f64)> = (0..200).map(|t| (h(t), 0.05)).collect();
        let devices = failing_and_healthy(&failing, &fail, &healthy);
        let c = choose_policy(&devices, "m", 24.0, 48.0, Target::BestF1);
        assert_eq!(c.tally.precision(), Some(1.0), "{c:?}");
        assert!(c.threshold <= 0.3, "{c:?}");
        assert!(c.tally.lead_hours.iter().all(|&l| l >= 24.0), "{c:?}");
    }

    #[test]
    fn a_hold_back_is_chosen_only_where_the_predicted_time_tells_early_signs_from_late_ones() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let fails: Vec<Vec<DeviceEvent>> = (0..4)
            .map(|i| {
                vec![DeviceEvent {
                    device_id: crate::domain::DeviceId::parse("f").unwrap(),
                    ts: h(300 + i),
                    kind: EventKind::Failure,
                    code: "m".into(),
                }]
            })
            .collect();
        // Each failing device scores as high in a burst 200 h before its failure as in its
        // last 20 h: the score alone cannot tell them apart, and a ticket opened on the burst
        // stays live (and wrong) until the failure.
        let rows = |end: i64| -> Vec<(Timestamp, f64)> {
            (0..end)
                .map(|t| {
                    let late = end - t <= 20;
                    let burst = (end - 210..end - 200).contains(&t);
                    (h(t), if late || burst { 0.7 } else { 0.05 })
                })
                .collect()
        };
        // Out-of-fold predicted hours to failure at each row: without `flat`, the true hours
        // capped at 96 (the burst far out, the last day close); with it, `flat` everywhere.
        let ttf = |end: i64, flat: Option<f64>| -> Vec<f64> {
            (0..end)
                .map(|t| match flat {
                    None => ((end - t) as f64).min(96.0),
                    Some(v) => v,
                })
                .collect()
        };
        let devices = |pred: Option<f64>| -> Vec<ValidDevice<'_>> {
            fails
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let end = 300 + i as i64;
                    ValidDevice {
                        rows: rows(end),
                        ttf: ttf(end, pred),
                        events: f,
                    }
                })
                .collect()
        };

        let c = choose_policy(&devices(None), "m", 24.0, 48.0, Target::BestF1);
        assert_eq!(c.hold_back, Some(48.0), "{c:?}");
        assert_eq!(
            (c.tally.precision(), c.tally.recall()),
            (Some(1.0), Some(1.0))
        );
        let unbounded = tally_at(&devices(None), "m", c.threshold, c.rule, None, 24.0, 48.0);
        assert!(unbounded.f1() < c.tally.f1(), "{unbounded:?}");

        // A regressor stuck near its cap, or one that predicts the same everywhere: a bound
        // either holds back every ticket or none, so none is chosen.
        for flat in [90.0, 30.0] {
            let c = choose_policy(&devices(Some(flat)), "m", 24.0, 48.0, Target::BestF1);
            assert_eq!(c.hold_back, None, "predicted {flat} h everywhere: {c:?}");
        }
        // Without predictions there is nothing to bound.
        let mut none = devices(None);
        for d in &mut none {
            d.ttf.clear();
        }
        assert_eq!(
            choose_policy(&none, "m", 24.0, 48.0, Target::BestF1).hold_back,
            None
        );
    }

    #[test]
    fn a_lone_dip_of_the_predicted_time_under_the_bound_does_not_count_toward_the_rule() {
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        // The score is above the level throughout; the predicted time dips under the 48 h bound
        // for one scoring at hour 10, and stays under it from hour 50.
        let rows: Vec<(Timestamp, f64)> = (0..60).map(|t| (h(t), 0.9)).collect();
        let ttf: Vec<f64> = (0..60)
            .map(|t| if t == 10 || t >= 50 { 40.0 } else { 70.0 })
            .collect();
        let two = OpenRule::in_a_row(2);
        let opened = simulate_openings(&rows, &ttf, &[], "m", 0.5, two, Some(48.0));
        assert_eq!(opened, vec![h(51)], "two scorings within the bound");
        // One scoring is all a rule of one asks for: the dip opens it.
        let one = OpenRule::in_a_row(1);
        let opened = simulate_openings(&rows, &ttf, &[], "m", 0.5, one, Some(48.0));
        assert_eq!(opened, vec![h(10)]);
    }

    #[test]
    fn the_prepared_replay_opens_exactly_where_the_engine_policy_does() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let h = |x: i64| Timestamp::from_millis(x * 3_600_000);
        let id = crate::domain::DeviceId::parse("d").expect("valid id");
        let mut rng = StdRng::seed_from_u64(11);
        let mut events_of = Vec::new();
        for _ in 0..12 {
            // Failures and maintenances of the mode (some at a scoring's very time), and other
            // modes' events, which neither end a ticket nor clear the memory.
            let mut evs = Vec::new();
            let mut t = 0i64;
            while t < 600 {
                t += rng.random_range(20..150);
                let kind = match rng.random_range(0..3) {
                    0 => EventKind::Maintenance,
                    _ => EventKind::Failure,
                };
                let code = if rng.random_bool(0.8) { "m" } else { "other" };
                evs.push(DeviceEvent {
                    device_id: id.clone(),
                    ts: h(t),
                    kind,
                    code: code.into(),
                });
            }
            events_of.push(evs);
        }
        let devices: Vec<ValidDevice<'_>> = events_of
            .iter()
            .map(|evs| {
                let n = rng.random_range(0..600);
                let mut t = 0i64;
                let mut rows = Vec::new();
                let mut ttf = Vec::new();
                for _ in 0..n {
                    t += rng.random_range(1..3);
                    rows.push((h(t), rng.random::<f64>().powi(3)));
                    ttf.push(if rng.random_bool(0.1) {
                        f64::NAN
                    } else {
                        rng.random_range(0.0..96.0)
                    });
                }
                ValidDevice {
                    rows,
                    ttf,
                    events: evs,
                }
            })
            .collect();
        let mut checked = 0;
        for d in &devices {
            let replay = Replay::new(d, "m");
            for th in [0.0, 0.01, 0.1, 0.3, 0.5, 0.8, 0.95, 1.1] {
                let above: Vec<u32> = d
                    .rows
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.1 >= th)
                    .map(|(i, _)| i as u32)
                    .collect();
                for (k, n) in OPEN_RULES.into_iter().chain([(1, 16), (5, 16)]) {
                    let rule = OpenRule::new(k, n);
                    for bound in hold_back_candidates(24.0) {
                        let want =
                            simulate_openings(&d.rows, &d.ttf, d.events, "m", th, rule, bound);
                        let counted = Replay::within(d, &above, bound);
                        assert_eq!(replay.openings(&counted, rule), want);
                        checked += want.len();
                    }
                }
            }
        }
        assert!(checked > 1000, "the cases open tickets: {checked}");
        // And the policy chosen from the prepared replays is the one the reference tallies give.
        let c = choose_policy(&devices, "m", 24.0, 48.0, Target::BestF1);
        let t = tally_at(&devices, "m", c.threshold, c.rule, c.hold_back, 24.0, 48.0);
        assert_eq!(c.tally, t);
    }
}
