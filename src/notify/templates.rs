//! Message templates: one TOML file per locale (`config/templates/<locale>.toml`), embedded as
//! defaults and overridable from a folder. Every template is parsed and checked for unknown
//! placeholders at start, so a typo is a config error, not a failed send at 3 a.m.
//!
//! A template is text with `{{name}}` placeholders. Phrases (headline, reply hint, …) are
//! rendered first and may use the fact placeholders; templates then use both.

use super::calendar::{Calendar, DateStyle, Digits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub const EMBEDDED: [(&str, &str); 3] = [
    ("en", include_str!("../../config/templates/en.toml")),
    ("th", include_str!("../../config/templates/th.toml")),
    ("fa", include_str!("../../config/templates/fa.toml")),
];

/// Facts every message carries (placeholders the phrases and templates may use).
pub const FACTS: [&str; 14] = [
    "name",
    "device",
    "mode",
    "advice",
    "failure_mode",
    "likelihood",
    "probability",
    "when",
    "ticket",
    "link",
    "priority",
    "status",
    "reply_to",
    "visit",
];
/// Phrases each locale must define (rendered from facts, then available to templates).
pub const PHRASES: [&str; 69] = [
    // Headlines, one per kind of message.
    "alert",
    "urgent",
    "reminder",
    "update",
    "resolved",
    "visit_confirmed",
    "visit_rescheduled",
    "no_action",
    // A short word that marks an urgent warning, a reminder and an update where space is
    // short ({{tag}}; empty for an advisory).
    "tag_urgent",
    "tag_reminder",
    "tag_update",
    // What the message says, per kind ("warning" for alert, urgent, reminder and update).
    "warning",
    "body_resolved",
    "body_visit_confirmed",
    "body_visit_rescheduled",
    "body_no_action",
    // When: a time, "as soon as possible" when that time is (almost) here, or unknown.
    "by_when",
    "by_soon",
    "by_when_unknown",
    // The optional qualitative word ({{likelihood}}); no number is shown by default.
    "likelihood_high",
    "likelihood_medium",
    "likelihood_low",
    "next",
    "reply_text",
    "reply_email",
    "reply_voice",
    "link_text",
    // Answers to carrier keywords (sent back in the reply to the SMS).
    "sms_help",
    "sms_stopped",
    "sms_started",
    // The self-service page.
    "page_title",
    "page_confirm",
    "page_reschedule",
    "page_not_now",
    "page_when",
    // Above the visit slots a dispatcher proposed (the customer picks one).
    "page_slots",
    "page_thanks",
    "page_answered",
    "page_status_open",
    "page_status_acknowledged",
    "page_status_scheduled",
    "page_status_resolved",
    "page_status_dismissed",
    "page_closed",
    "page_invalid",
    "page_expired",
    "page_gone",
    "page_choose",
    "page_error",
    // Changing an answer on the page: asked to confirm, allowed once.
    "page_change_confirm",
    "page_change_button",
    "page_change_used",
    // The ticket's story on the page: what was sent on which channel, what became of it, the
    // customer's answers and what they changed.
    "story_title",
    "story_opened",
    "story_sent",
    "story_delivered",
    "story_read",
    "story_undelivered",
    "story_replied",
    "story_auto_reply",
    "story_for_person",
    "story_no_change",
    "channel_sms",
    "channel_email",
    "channel_voice",
    "channel_push",
    "channel_webhook",
    "channel_mqtt",
    "channel_page",
];
/// One template per channel.
pub const TEMPLATES: [&str; 7] = [
    "sms",
    "voice",
    "push_title",
    "push",
    "email_subject",
    "email_text",
    "email_html",
];
/// Placeholders the templates may use beyond facts and phrases.
const DERIVED: [&str; 6] = ["headline", "tag", "body", "by", "reply", "dir"];
/// Placeholders of a locale's `date_format`.
const DATE_PARTS: [&str; 5] = ["weekday", "day", "month", "year", "time"];

/// A failure mode in the customer's words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeFile {
    /// What is wrong, as a noun phrase that reads after "What we see:" (no article needed).
    name: String,
    /// What the customer can do meanwhile.
    #[serde(default)]
    advice: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocaleFile {
    /// "rtl" for right-to-left scripts.
    #[serde(default)]
    direction: Option<String>,
    /// Language tag for text-to-speech (e.g. "th-TH"). Absent: the provider cannot speak this
    /// language, so customers with this locale are not called (urgent messages go by text).
    #[serde(default)]
    voice_language: Option<String>,
    /// The provider's text-to-speech voice for that language (Twilio: "Google.th-TH-Standard-A");
    /// absent: the provider's default voice, which must speak `voice_language`.
    #[serde(default)]
    voice: Option<String>,
    calendar: Calendar,
    digits: Digits,
    months: Vec<String>,
    weekdays: Vec<String>,
    /// How a moment is written, from {{weekday}} {{day}} {{month}} {{year}} {{time}}.
    date_format: String,
    phrases: BTreeMap<String, String>,
    templates: BTreeMap<String, String>,
    /// Per failure mode; `default` for the modes not listed (it may use {{failure_mode}}).
    modes: BTreeMap<String, ModeFile>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(String),
    /// `{{#name}}…{{/name}}`: the inside only when `name` is not empty; `{{^name}}…{{/name}}`
    /// (the `bool`): only when it is empty.
    Section(String, Vec<Piece>, bool),
}

/// What is wrong with a template file, naming the file and key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<String> for TemplateError {
    fn from(s: String) -> Self {
        TemplateError(s)
    }
}

#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(s: &str, allowed: &dyn Fn(&str) -> bool) -> Result<Template, TemplateError> {
        let mut rest = s;
        let pieces = Self::parse_until(&mut rest, None, allowed)?;
        Ok(Template(pieces))
    }

    fn parse_until(
        rest: &mut &str,
        close: Option<&str>,
        allowed: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Piece>, TemplateError> {
        let mut out = Vec::new();
        while let Some(i) = rest.find("{{") {
            if rest[..i].contains("}}") {
                return Err(format!("stray }}}} near {:?}", trunc(rest)).into());
            }
            if i > 0 {
                out.push(Piece::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let j = after
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ near {:?}", trunc(&rest[i..])))?;
            let tag = after[..j].trim();
            *rest = &after[j + 2..];
            if let Some(name) = tag.strip_prefix('/') {
                let name = name.trim();
                return if close == Some(name) {
                    Ok(out)
                } else {
                    Err(format!("{{{{/{name}}}}} closes nothing").into())
                };
            }
            let (section, inverted, name) = match (tag.strip_prefix('#'), tag.strip_prefix('^')) {
                (Some(n), _) => (true, false, n.trim()),
                (_, Some(n)) => (true, true, n.trim()),
                _ => (false, false, tag),
            };
            if !allowed(name) {
                return Err(format!("unknown placeholder {{{{{name}}}}}").into());
            }
            if section {
                let inner = Self::parse_until(rest, Some(name), allowed)?;
                out.push(Piece::Section(name.to_string(), inner, inverted));
            } else {
                out.push(Piece::Var(name.to_string()));
            }
        }
        if rest.contains("}}") {
            return Err(format!("stray }}}} near {:?}", trunc(rest)).into());
        }
        if let Some(name) = close {
            return Err(format!("{{{{#{name}}}}} is not closed").into());
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.to_string()));
        }
        *rest = "";
        Ok(out)
    }

    fn render(&self, vars: &BTreeMap<&str, String>, html: bool) -> String {
        let mut s = String::new();
        Self::render_into(&self.0, vars, html, &mut s);
        s
    }

    fn render_into(pieces: &[Piece], vars: &BTreeMap<&str, String>, html: bool, s: &mut String) {
        for p in pieces {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Var(v) => {
                    let val = vars.get(v.as_str()).map(String::as_str).unwrap_or("");
                    if html {
                        s.push_str(&html_escape(val));
                    } else {
                        s.push_str(val);
                    }
                }
                Piece::Section(v, inner, inverted) => {
                    let set = vars.get(v.as_str()).is_some_and(|x| !x.trim().is_empty());
                    if set != *inverted {
                        Self::render_into(inner, vars, html, s);
                    }
                }
            }
        }
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(20).collect()
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[derive(Debug, Clone)]
struct Mode {
    name: Template,
    advice: Template,
}

#[derive(Debug, Clone)]
struct Locale {
    rtl: bool,
    /// None: no text-to-speech in this language.
    voice_language: Option<String>,
    voice: Option<String>,
    dates: DateStyle,
    date_format: Template,
    phrases: BTreeMap<String, Template>,
    templates: BTreeMap<String, Template>,
    modes: BTreeMap<String, Mode>,
}

impl Locale {
    /// A local moment in this locale's calendar, digits and date format.
    fn date(&self, t: chrono::NaiveDateTime) -> String {
        let p = self.dates.parts(t);
        let mut d: BTreeMap<&str, String> = BTreeMap::new();
        d.insert("weekday", p.weekday);
        d.insert("day", p.day);
        d.insert("month", p.month);
        d.insert("year", p.year);
        d.insert("time", p.time);
        tidy(&self.date_format.render(&d, false))
    }
}

/// What a message is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A fault is coming (advisory).
    Alert,
    /// A fault is coming soon or is likely: an immediate channel.
    Urgent,
    /// No answer yet to an urgent alert.
    Reminder,
    /// The ticket became urgent after the first alert.
    Update,
    /// A visit or maintenance fixed what the customer was alerted about.
    Resolved,
    /// The visit is booked.
    VisitConfirmed,
    /// The customer asked for another time: we will propose one.
    VisitRescheduled,
    /// The alert was a false alarm: no action needed.
    NoActionNeeded,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Alert => "alert",
            MessageKind::Urgent => "urgent",
            MessageKind::Reminder => "reminder",
            MessageKind::Update => "update",
            MessageKind::Resolved => "resolved",
            MessageKind::VisitConfirmed => "visit_confirmed",
            MessageKind::VisitRescheduled => "visit_rescheduled",
            MessageKind::NoActionNeeded => "no_action",
        }
    }

    /// Messages that warn about a coming fault (and ask for an answer).
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            MessageKind::Alert | MessageKind::Urgent | MessageKind::Reminder | MessageKind::Update
        )
    }

    pub const ALL: [MessageKind; 8] = [
        MessageKind::Alert,
        MessageKind::Urgent,
        MessageKind::Reminder,
        MessageKind::Update,
        MessageKind::Resolved,
        MessageKind::VisitConfirmed,
        MessageKind::VisitRescheduled,
        MessageKind::NoActionNeeded,
    ];
}

/// What a message is built from, before it is put in the customer's words.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// The customer's name.
    pub name: String,
    /// The device's display name.
    pub device: String,
    /// The failure mode's code ("bearing_wear").
    pub failure_mode: String,
    pub probability: f64,
    /// When the failure is expected, in the customer's local time, if it is still ahead.
    pub when: Option<chrono::NaiveDateTime>,
    /// The expected time has come or passed (or is too close to plan for): "as soon as possible".
    pub soon: bool,
    pub ticket: String,
    /// The self-service page (empty: none).
    pub link: String,
    pub priority: String,
    pub status: String,
    pub reply_to: String,
    /// The visit time the customer asked for, as they wrote it.
    pub visit: String,
}

/// One message rendered for every channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rendered {
    pub locale: String,
    pub rtl: bool,
    /// Empty when the locale has no text-to-speech (see [`Templates::speaks`]).
    pub voice_language: String,
    /// The text-to-speech voice; empty: the provider's default.
    pub voice_name: String,
    pub sms: String,
    pub voice: String,
    pub push_title: String,
    pub push: String,
    pub email_subject: String,
    pub email_text: String,
    pub email_html: String,
}

#[derive(Debug, Clone)]
pub struct Templates {
    locales: BTreeMap<String, Locale>,
    fallback: String,
}

impl Templates {
    /// Embedded locales, then `<dir>/*.toml` over them. Errors name the file and key.
    pub fn load(dir: Option<&Path>, fallback: &str) -> Result<Templates, TemplateError> {
        let mut locales = BTreeMap::new();
        for (name, text) in EMBEDDED {
            locales.insert(
                name.to_string(),
                parse_locale(text).map_err(|e| format!("templates/{name}.toml (embedded): {e}"))?,
            );
        }
        if let Some(dir) = dir {
            let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for ent in rd {
                let p = ent.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                if p.extension().and_then(|e| e.to_str()) != Some("toml") {
                    continue;
                }
                let name = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let text =
                    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                locales.insert(
                    name,
                    parse_locale(&text).map_err(|e| format!("{}: {e}", p.display()))?,
                );
            }
        }
        if !locales.contains_key(fallback) {
            return Err(format!("fallback locale {fallback:?} has no templates").into());
        }
        Ok(Templates {
            locales,
            fallback: fallback.to_string(),
        })
    }

    pub fn locales(&self) -> Vec<String> {
        self.locales.keys().cloned().collect()
    }

    /// Picks "th" for "th-TH", the fallback for unknown languages.
    fn pick(&self, locale: &str) -> (&str, &Locale) {
        let lang = locale.split(['-', '_']).next().unwrap_or("").to_lowercase();
        for k in [locale.to_lowercase(), lang] {
            if let Some((name, l)) = self.locales.get_key_value(&k) {
                return (name.as_str(), l);
            }
        }
        let (name, l) = self
            .locales
            .get_key_value(&self.fallback)
            .or_else(|| self.locales.iter().next())
            .expect("load() guarantees the fallback locale");
        (name.as_str(), l)
    }

    /// The facts as placeholder values in the locale's words: mode name and advice, the date in
    /// the locale's calendar and digits, the qualitative likelihood, and the phrases.
    fn vars(&self, l: &Locale, f: &Facts) -> BTreeMap<&'static str, String> {
        let mut v: BTreeMap<&'static str, String> = BTreeMap::new();
        v.insert("name", f.name.clone());
        v.insert("device", f.device.clone());
        v.insert("failure_mode", f.failure_mode.replace(['_', '-'], " "));
        v.insert("probability", format!("{:.0}", f.probability * 100.0));
        v.insert("ticket", f.ticket.clone());
        v.insert("link", f.link.clone());
        v.insert("priority", f.priority.clone());
        v.insert("status", f.status.clone());
        v.insert("reply_to", f.reply_to.clone());
        // As the customer wrote it (up to 100 characters on the page), but short enough that a
        // confirmation stays within two SMS segments in every locale.
        v.insert("visit", short_visit(&f.visit));
        let when = match (f.soon, f.when) {
            (false, Some(t)) => l.date(t),
            _ => String::new(),
        };
        v.insert("when", when);
        let mode = l
            .modes
            .get(&f.failure_mode)
            .or_else(|| l.modes.get("default"));
        let (mode_name, advice) = match mode {
            Some(m) => (m.name.render(&v, false), m.advice.render(&v, false)),
            None => (v["failure_mode"].clone(), String::new()),
        };
        v.insert("mode", mode_name);
        v.insert("advice", advice);
        let phrase = |k: &str, vars: &BTreeMap<&str, String>| {
            l.phrases
                .get(k)
                .map(|t| tidy(&t.render(vars, false)))
                .unwrap_or_default()
        };
        let likelihood = match f.probability {
            p if p >= 0.7 => phrase("likelihood_high", &v),
            p if p >= 0.4 => phrase("likelihood_medium", &v),
            _ => phrase("likelihood_low", &v),
        };
        v.insert("likelihood", likelihood);
        let by = if f.soon {
            phrase("by_soon", &v)
        } else if f.when.is_some() {
            phrase("by_when", &v)
        } else {
            phrase("by_when_unknown", &v)
        };
        v.insert("by", by);
        let rendered: Vec<(&'static str, String)> =
            PHRASES.iter().map(|k| (*k, phrase(k, &v))).collect();
        v.extend(rendered);
        v.insert("dir", if l.rtl { "rtl" } else { "ltr" }.to_string());
        v
    }

    /// A failure mode in a locale's words ("worn bearings"), as the messages name it.
    pub fn mode_name(&self, locale: &str, mode: &str) -> String {
        let (_, l) = self.pick(locale);
        let f = Facts {
            failure_mode: mode.to_string(),
            ..Facts::default()
        };
        self.vars(l, &f).remove("mode").unwrap_or_default()
    }

    /// Renders `kind` in the customer's locale. `ask`: the customer has not answered yet, so
    /// the message says how to (a warning only; the other kinds never ask).
    pub fn render(&self, locale: &str, kind: MessageKind, facts: &Facts, ask: bool) -> Rendered {
        let (name, l) = self.pick(locale);
        let mut vars = self.vars(l, facts);
        let headline = vars.get(kind.as_str()).cloned().unwrap_or_default();
        vars.insert("headline", headline);
        let tag = match kind {
            MessageKind::Urgent | MessageKind::Reminder | MessageKind::Update => vars
                .get(format!("tag_{}", kind.as_str()).as_str())
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        vars.insert("tag", tag);
        let body = if kind.is_warning() {
            vars.get("warning").cloned()
        } else {
            vars.get(format!("body_{}", kind.as_str()).as_str())
                .cloned()
        };
        vars.insert("body", body.unwrap_or_default());
        if !kind.is_warning() {
            // Nothing to do, nothing to answer, no page to open.
            for k in ["next", "advice", "link", "link_text", "reply_voice"] {
                vars.insert(k, String::new());
            }
        }
        if kind.is_warning() && ask {
            let r = vars.get("reply_text").cloned().unwrap_or_default();
            vars.insert("reply", r);
        } else {
            vars.insert("reply", String::new());
            vars.insert("reply_email", String::new());
            vars.insert("reply_voice", String::new());
        }
        if facts.link.is_empty() {
            vars.insert("link_text", String::new());
        }
        let t = |k: &str, html: bool| {
            let s = l
                .templates
                .get(k)
                .map(|t| t.render(&vars, html))
                .unwrap_or_default();
            if html {
                s
            } else {
                tidy(&s)
            }
        };
        Rendered {
            locale: name.to_string(),
            rtl: l.rtl,
            voice_language: l.voice_language.clone().unwrap_or_default(),
            voice_name: l.voice.clone().unwrap_or_default(),
            sms: t("sms", false),
            voice: t("voice", false),
            push_title: t("push_title", false),
            push: t("push", false),
            email_subject: t("email_subject", false),
            email_text: t("email_text", false),
            email_html: t("email_html", true),
        }
    }

    /// Whether calls can be made in this locale (it names a text-to-speech language).
    pub fn speaks(&self, locale: &str) -> bool {
        self.pick(locale).1.voice_language.is_some()
    }

    /// A local moment written in the locale's calendar and digits (the page's story).
    pub fn date(&self, locale: &str, t: chrono::NaiveDateTime) -> String {
        self.pick(locale).1.date(t)
    }

    /// One phrase in the customer's locale (SMS keyword answers, page words).
    pub fn phrase(&self, locale: &str, key: &str, facts: &Facts) -> String {
        let (_, l) = self.pick(locale);
        self.vars(l, facts).remove(key).unwrap_or_default()
    }
}

/// The self-service page's words in the customer's language.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    pub lang: String,
    pub rtl: bool,
    pub title: String,
    /// What is wrong and when.
    pub summary: String,
    pub advice: String,
    pub confirm: String,
    pub reschedule: String,
    pub not_now: String,
    pub when: String,
    /// Above the proposed visit slots.
    pub slots: String,
    pub thanks: String,
    /// "You answered: …".
    pub answered: String,
    /// Status words by status name.
    pub statuses: BTreeMap<&'static str, String>,
    /// What a closed ticket shows instead of the buttons.
    pub closed: String,
    pub resolved: String,
    pub no_action: String,
    pub invalid: String,
    pub expired: String,
    pub gone: String,
    pub choose: String,
    pub error: String,
    /// "Change your answer?" (then the old and the new answer), its button, and what a
    /// second change is told.
    pub change_confirm: String,
    pub change_button: String,
    pub change_used: String,
    /// The words of the ticket's story.
    pub story: StoryWords,
}

/// The words the page tells a ticket's story with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoryWords {
    pub title: String,
    pub opened: String,
    pub sent: String,
    pub delivered: String,
    pub read: String,
    pub undelivered: String,
    pub replied: String,
    pub auto_reply: String,
    pub for_person: String,
    pub no_change: String,
    /// Channel names by channel ("page" for the page itself).
    pub channels: BTreeMap<&'static str, String>,
    /// Each kind of message's headline, by kind.
    pub headlines: BTreeMap<&'static str, String>,
}

impl Templates {
    pub fn page(&self, locale: &str, facts: &Facts) -> PageText {
        let (name, l) = self.pick(locale);
        let mut v = self.vars(l, facts);
        let mut p = |k: &str| v.remove(k).unwrap_or_default();
        let statuses = [
            ("open", p("page_status_open")),
            ("acknowledged", p("page_status_acknowledged")),
            ("scheduled", p("page_status_scheduled")),
            ("resolved", p("page_status_resolved")),
            ("dismissed", p("page_status_dismissed")),
        ]
        .into_iter()
        .collect();
        PageText {
            lang: name.to_string(),
            rtl: l.rtl,
            title: p("page_title"),
            summary: p("warning"),
            advice: p("advice"),
            confirm: p("page_confirm"),
            reschedule: p("page_reschedule"),
            not_now: p("page_not_now"),
            when: p("page_when"),
            slots: p("page_slots"),
            thanks: p("page_thanks"),
            answered: p("page_answered"),
            statuses,
            closed: p("page_closed"),
            resolved: p("body_resolved"),
            no_action: p("body_no_action"),
            invalid: p("page_invalid"),
            expired: p("page_expired"),
            gone: p("page_gone"),
            choose: p("page_choose"),
            error: p("page_error"),
            change_confirm: p("page_change_confirm"),
            change_button: p("page_change_button"),
            change_used: p("page_change_used"),
            story: StoryWords {
                title: p("story_title"),
                opened: p("story_opened"),
                sent: p("story_sent"),
                delivered: p("story_delivered"),
                read: p("story_read"),
                undelivered: p("story_undelivered"),
                replied: p("story_replied"),
                auto_reply: p("story_auto_reply"),
                for_person: p("story_for_person"),
                no_change: p("story_no_change"),
                channels: ["sms", "email", "voice", "push", "webhook", "mqtt", "page"]
                    .into_iter()
                    .map(|c| (c, p(&format!("channel_{c}"))))
                    .collect(),
                headlines: MessageKind::ALL
                    .into_iter()
                    .map(|k| (k.as_str(), p(k.as_str())))
                    .collect(),
            },
        }
    }
}

/// Collapses runs of spaces left by empty placeholders, keeps line breaks, drops a space left
/// before punctuation and runs of empty lines.
fn tidy(s: &str) -> String {
    let lines: Vec<String> = s
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" .", ".")
                .replace(" ,", ",")
                .replace(" ،", "،")
        })
        .collect();
    let mut out: Vec<&str> = Vec::new();
    for l in &lines {
        if l.is_empty() && out.last().is_some_and(|p| p.is_empty()) {
            continue;
        }
        out.push(l);
    }
    out.join("\n").trim().to_string()
}

fn parse_locale(text: &str) -> Result<Locale, TemplateError> {
    let f: LocaleFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let facts = |n: &str| FACTS.contains(&n);
    let mut phrases = BTreeMap::new();
    let phrase_vars = |n: &str| FACTS.contains(&n) || n == "by";
    for k in PHRASES {
        let src = f
            .phrases
            .get(k)
            .ok_or_else(|| format!("phrases.{k} is missing"))?;
        phrases.insert(
            k.to_string(),
            Template::parse(src, &phrase_vars).map_err(|e| format!("phrases.{k}: {e}"))?,
        );
    }
    if let Some(extra) = f.phrases.keys().find(|k| !PHRASES.contains(&k.as_str())) {
        return Err(format!("phrases.{extra} is not a known phrase").into());
    }
    let all = |n: &str| FACTS.contains(&n) || PHRASES.contains(&n) || DERIVED.contains(&n);
    let mut templates = BTreeMap::new();
    for k in TEMPLATES {
        let src = f
            .templates
            .get(k)
            .ok_or_else(|| format!("templates.{k} is missing"))?;
        templates.insert(
            k.to_string(),
            Template::parse(src, &all).map_err(|e| format!("templates.{k}: {e}"))?,
        );
    }
    if let Some(extra) = f
        .templates
        .keys()
        .find(|k| !TEMPLATES.contains(&k.as_str()))
    {
        return Err(format!("templates.{extra} is not a known template").into());
    }
    if !f.modes.contains_key("default") {
        return Err(TemplateError(
            "modes.default is missing (the words for a mode not listed)".into(),
        ));
    }
    let mut modes = BTreeMap::new();
    for (k, m) in &f.modes {
        let name = Template::parse(&m.name, &facts).map_err(|e| format!("modes.{k}.name: {e}"))?;
        let advice =
            Template::parse(&m.advice, &facts).map_err(|e| format!("modes.{k}.advice: {e}"))?;
        modes.insert(k.clone(), Mode { name, advice });
    }
    if f.months.len() != 12 {
        return Err(format!("months: 12 names needed, found {}", f.months.len()).into());
    }
    if f.weekdays.len() != 7 {
        return Err(format!(
            "weekdays: 7 names needed (Monday first), found {}",
            f.weekdays.len()
        )
        .into());
    }
    let date_format = Template::parse(&f.date_format, &|n| DATE_PARTS.contains(&n))
        .map_err(|e| format!("date_format: {e}"))?;
    let rtl = match f.direction.as_deref() {
        None | Some("ltr") => false,
        Some("rtl") => true,
        Some(o) => return Err(format!("direction {o:?} must be \"ltr\" or \"rtl\"").into()),
    };
    Ok(Locale {
        rtl,
        voice_language: f.voice_language.filter(|v| !v.trim().is_empty()),
        voice: f.voice.filter(|v| !v.trim().is_empty()),
        dates: DateStyle {
            calendar: f.calendar,
            digits: f.digits,
            months: f.months,
            weekdays: f.weekdays,
        },
        date_format,
        phrases,
        templates,
        modes,
    })
}

/// How many SMS segments a text takes: GSM-7 when every character is in the GSM 03.38 basic set
/// or its extension (which counts twice), otherwise UCS-2 (UTF-16 units).
pub fn sms_segments(text: &str) -> usize {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENDED: &str = "^{}\\[~]|€\u{000c}";
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        if BASIC.contains(c) {
            septets += 1;
        } else if EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    if gsm {
        if septets <= 160 {
            1
        } else {
            septets.div_ceil(153)
        }
    } else {
        let units = text.encode_utf16().count();
        if units <= 70 {
            1
        } else {
            units.div_ceil(67)
        }
    }
}

/// At most [`VISIT_CHARS`] characters of a customer's visit time, cut at a character boundary,
/// with "..." when cut (three dots: "…" is not in the GSM 7-bit alphabet and would turn an
/// English SMS into UCS-2, halving its segment).
fn short_visit(visit: &str) -> String {
    let visit = visit.trim();
    match visit.char_indices().nth(VISIT_CHARS) {
        Some((i, _)) => format!("{}...", visit[..i].trim_end()),
        None => visit.to_string(),
    }
}

/// See [`short_visit`].
const VISIT_CHARS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            name: "Acme <Ops>".into(),
            device: "pump-7".into(),
            failure_mode: "bearing_wear".into(),
            probability: 0.92,
            when: chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
                .and_then(|d| d.and_hms_opt(14, 0, 0)),
            soon: false,
            ticket: "T-0123456789abcdef".into(),
            link: "https://x/n/abc".into(),
            ..Facts::default()
        }
    }

    #[test]
    fn embedded_locales_load_and_render_every_channel() {
        let t = Templates::load(None, "en").unwrap();
        for loc in ["en", "th", "fa"] {
            for kind in MessageKind::ALL {
                let r = t.render(loc, kind, &facts(), true);
                assert_eq!(r.locale, loc);
                for s in [&r.sms, &r.push, &r.email_subject, &r.email_text] {
                    assert!(!s.is_empty() && !s.contains("{{"), "{loc} {kind:?}: {s}");
                }
                assert!(r.sms.contains("pump-7"), "{loc}: {}", r.sms);
                assert_eq!(
                    r.email_html.contains("https://x/n/abc"),
                    kind.is_warning(),
                    "{loc} {kind:?}: only a warning links to the page"
                );
            }
        }
        let fa = t.render("fa-IR", MessageKind::Alert, &facts(), true);
        assert!(fa.rtl && fa.email_html.contains("dir=\"rtl\""));
        assert!(t.render("de", MessageKind::Alert, &facts(), true).locale == "en");
    }

    #[test]
    fn dates_are_written_in_the_customers_calendar_and_digits() {
        let t = Templates::load(None, "en").unwrap();
        let en = t.render("en", MessageKind::Alert, &facts(), true);
        assert!(en.sms.contains("Wed 25 Nov 2026, 14:00"), "{}", en.sms);
        let th = t.render("th", MessageKind::Alert, &facts(), true);
        assert!(th.sms.contains("25 พ.ย. 2569"), "{}", th.sms);
        let fa = t.render("fa", MessageKind::Alert, &facts(), true);
        assert!(fa.sms.contains("۴ آذر ۱۴۰۵"), "{}", fa.sms);
        assert!(fa.sms.contains("۱۴:۰۰"), "{}", fa.sms);
    }

    #[test]
    fn a_time_already_here_reads_as_soon_as_possible() {
        let t = Templates::load(None, "en").unwrap();
        let f = Facts {
            soon: true,
            ..facts()
        };
        let en = t.render("en", MessageKind::Urgent, &f, true);
        assert!(en.sms.contains("as soon as possible"), "{}", en.sms);
        assert!(!en.sms.contains("2026"), "{}", en.sms);
    }

    #[test]
    fn modes_have_names_in_every_language_and_unknown_modes_read_well() {
        let t = Templates::load(None, "en").unwrap();
        let mut f = facts();
        for mode in ["bearing_wear", "overheating", "seal_leak", "comp3"] {
            f.failure_mode = mode.into();
            for loc in ["en", "th", "fa"] {
                let r = t.render(loc, MessageKind::Alert, &f, true);
                assert!(!r.sms.contains('_'), "{loc}: {}", r.sms);
                assert!(!r.sms.contains(" a overheating"), "{}", r.sms);
                if loc != "en" {
                    assert!(!r.email_text.contains("bearing"), "{loc}: {}", r.email_text);
                }
            }
        }
        assert!(t
            .render("en", MessageKind::Alert, &f, true)
            .sms
            .contains("comp3"));
    }

    #[test]
    fn no_probability_is_shown_to_customers_by_default() {
        let t = Templates::load(None, "en").unwrap();
        for loc in ["en", "th", "fa"] {
            for kind in MessageKind::ALL {
                let r = t.render(loc, kind, &facts(), true);
                for s in [&r.sms, &r.email_text, &r.push, &r.voice] {
                    assert!(
                        !s.contains('%') && !s.contains('٪') && !s.contains("92"),
                        "{s}"
                    );
                }
            }
        }
    }

    #[test]
    fn sms_fit_in_two_segments_in_every_locale() {
        let t = Templates::load(None, "en").unwrap();
        let f = Facts {
            device: "Pump 7 (basement)".into(),
            ..facts()
        };
        let mut over = Vec::new();
        for loc in ["en", "th", "fa"] {
            for kind in MessageKind::ALL {
                let r = t.render(loc, kind, &f, true);
                let n = sms_segments(&r.sms);
                if n > 2 {
                    over.push(format!(
                        "{loc} {kind:?}: {n} segments, {} units: {}",
                        r.sms.encode_utf16().count(),
                        r.sms
                    ));
                }
            }
        }
        assert!(over.is_empty(), "{}", over.join("\n"));
        assert_eq!(sms_segments(&"a".repeat(160)), 1);
        assert_eq!(sms_segments(&"a".repeat(161)), 2);
        assert_eq!(sms_segments(&"ก".repeat(70)), 1);
        assert_eq!(sms_segments(&"ก".repeat(71)), 2);
        assert_eq!(sms_segments(&"{".repeat(80)), 1);
    }

    /// The segment count of every SMS, stated: (locale, [alert, urgent, reminder, update,
    /// resolved, visit confirmed, visit rescheduled, no action]) for a device called
    /// "Pump 7 (basement)", a date ahead, the customer not yet answered (warnings ask for an
    /// answer) and a visit time written ("Tuesday morning"). A template edit that changes one
    /// of these numbers must change this table.
    #[test]
    fn a_long_visit_time_is_cut_at_a_character_boundary() {
        assert_eq!(short_visit(" Tuesday morning "), "Tuesday morning");
        let thai = "วันอังคารช่วงเช้าหลังเก้าโมงถ้าเป็นไปได้นะคะ";
        let cut = short_visit(thai);
        assert_eq!(cut.chars().count(), VISIT_CHARS + 3);
        assert!(cut.ends_with("..."));
        assert!(thai.starts_with(cut.trim_end_matches('.')));
    }

    #[test]
    fn sms_segment_counts_per_locale_and_message() {
        let t = Templates::load(None, "en").unwrap();
        let f = Facts {
            device: "Pump 7 (basement)".into(),
            visit: "Tuesday morning".into(),
            ..facts()
        };
        let stated: [(&str, [usize; 8]); 3] = [
            ("en", [2, 2, 2, 2, 1, 1, 1, 1]),
            ("th", [2, 2, 2, 2, 2, 2, 2, 2]),
            ("fa", [2, 2, 2, 2, 2, 2, 2, 2]),
        ];
        let mut got = Vec::new();
        for (loc, _) in stated {
            let counts: Vec<usize> = MessageKind::ALL
                .into_iter()
                .map(|k| sms_segments(&t.render(loc, k, &f, true).sms))
                .collect();
            got.push((loc, counts));
        }
        for ((loc, want), (_, counts)) in stated.iter().zip(&got) {
            assert_eq!(counts.as_slice(), want.as_slice(), "{loc}: {got:?}");
            assert!(
                counts.iter().all(|n| (1..=2).contains(n)),
                "{loc}: {counts:?}"
            );
        }
        // The longest visit time the page accepts (100 characters, in the customer's language)
        // keeps every message within two segments too.
        for (loc, words) in [
            ("en", "Tuesday morning after nine "),
            ("th", "พรุ่งนี้เช้าหลังเก้าโมง "),
            ("fa", "فردا صبح بعد از ساعت نه "),
        ] {
            let long = Facts {
                visit: words.repeat(10).chars().take(100).collect(),
                ..f.clone()
            };
            for k in MessageKind::ALL {
                let n = sms_segments(&t.render(loc, k, &long, true).sms);
                assert!(
                    (1..=2).contains(&n),
                    "{loc} {k:?} with a long visit: {n}: {}",
                    t.render(loc, k, &long, true).sms
                );
            }
        }
    }

    #[test]
    fn an_answered_ticket_is_not_asked_again_and_the_page_speaks_persian() {
        let t = Templates::load(None, "en").unwrap();
        let asked = t.render("en", MessageKind::Urgent, &facts(), true);
        let told = t.render("en", MessageKind::Urgent, &facts(), false);
        assert!(asked.sms.contains("Reply 1"));
        assert!(
            !told.sms.contains("Reply 1") && told.sms.contains("pump-7"),
            "{}",
            told.sms
        );
        let page = t.page("fa", &facts());
        assert!(page.rtl && page.lang == "fa");
        assert!(page.confirm.contains("تأیید"), "{}", page.confirm);
    }

    #[test]
    fn calls_are_made_only_in_a_language_the_voice_provider_speaks() {
        let t = Templates::load(None, "en").unwrap();
        assert!(t.speaks("en") && t.speaks("th-TH"));
        assert!(
            !t.speaks("fa"),
            "no Persian text-to-speech: fa customers get texts"
        );
        let th = t.render("th", MessageKind::Urgent, &facts(), true);
        assert_eq!(
            (th.voice_language.as_str(), th.voice_name.as_str()),
            ("th-TH", "Google.th-TH-Standard-A")
        );
        assert!(th.voice.contains("ลูกปืนสึกหรอ"), "{}", th.voice);
        let fa = t.render("fa", MessageKind::Urgent, &facts(), true);
        assert!(fa.voice.contains("فرسودگی بلبرینگ"), "{}", fa.voice);
        assert!(!fa.voice.contains("Hello"), "{}", fa.voice);
    }

    #[test]
    fn an_operator_can_show_a_qualitative_likelihood_but_never_a_number_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let en = EMBEDDED[0].1.replacen(
            "warning = \"{{device}} needs",
            "warning = \"{{device}} ({{likelihood}} to fail) needs",
            1,
        );
        std::fs::write(dir.path().join("en.toml"), en).unwrap();
        let t = Templates::load(Some(dir.path()), "en").unwrap();
        let r = t.render("en", MessageKind::Alert, &facts(), true);
        assert!(
            r.sms.contains("pump-7 (very likely to fail) needs"),
            "{}",
            r.sms
        );
        assert!(!r.sms.contains("92"), "{}", r.sms);
    }

    #[test]
    fn the_answers_a_message_offers_are_the_ones_the_parser_reads() {
        use crate::notify::intent::{self, Intent};
        let t = Templates::load(None, "en").unwrap();
        for loc in ["en", "th", "fa"] {
            for key in ["reply_text", "reply_email", "sms_help"] {
                let offer = t.phrase(loc, key, &facts());
                let digits: Vec<char> = offer
                    .chars()
                    .filter(|c| intent::digit_value(*c).is_some())
                    .collect();
                assert_eq!(digits.len(), 3, "{loc} {key}: {offer}");
                let meant: Vec<Intent> = digits
                    .iter()
                    .map(|d| intent::parse(&d.to_string()))
                    .collect();
                assert_eq!(
                    meant,
                    [Intent::Confirm, Intent::Later, Intent::NotNow],
                    "{loc} {key}: {offer}"
                );
            }
            let help = t.phrase(loc, "sms_help", &facts());
            assert!(help.contains("STOP"), "{loc}: {help}");
            assert_eq!(intent::parse("STOP"), Intent::Stop);
        }
    }

    #[test]
    fn html_part_escapes_customer_data() {
        let t = Templates::load(None, "en").unwrap();
        let r = t.render("en", MessageKind::Alert, &facts(), true);
        assert!(r.email_html.contains("Acme &lt;Ops&gt;"));
        assert!(r.email_text.contains("Acme <Ops>"));
    }

    #[test]
    fn a_bad_template_is_an_error_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = EMBEDDED[0].1;
        let bad = good.replace("{{device}}", "{{devise}}");
        assert_ne!(bad, good);
        std::fs::write(dir.path().join("en.toml"), bad).unwrap();
        let e = Templates::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(e.contains("en.toml") && e.contains("{{devise}}"), "{e}");
        assert!(Templates::load(None, "xx").is_err());
        let unclosed = good.replace("{{/link}}", "");
        std::fs::write(dir.path().join("en.toml"), unclosed).unwrap();
        assert!(Templates::load(Some(dir.path()), "en").is_err());
    }
}
