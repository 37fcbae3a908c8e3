//! Message templates: one TOML file per locale (`config/templates/<locale>.toml`), embedded as
//! defaults and overridable from a folder. Every template is parsed and checked for unknown
//! placeholders at start, so a typo is a config error, not a failed send at 3 a.m.
//!
//! A template is text with `{{name}}` placeholders. Phrases (headline, reply hint, …) are
//! rendered first and may use the fact placeholders; templates then use both.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub const EMBEDDED: [(&str, &str); 3] = [
    ("en", include_str!("../../config/templates/en.toml")),
    ("th", include_str!("../../config/templates/th.toml")),
    ("fa", include_str!("../../config/templates/fa.toml")),
];

/// Facts every message carries.
pub const FACTS: [&str; 10] = [
    "name",
    "device",
    "failure_mode",
    "probability",
    "when",
    "ticket",
    "link",
    "priority",
    "status",
    "reply_to",
];
/// Phrases each locale must define (rendered from facts, then available to templates).
pub const PHRASES: [&str; 17] = [
    "alert",
    "urgent",
    "reminder",
    "update",
    "resolved",
    "prediction",
    "by_when",
    "by_when_unknown",
    "next",
    "reply_text",
    "reply_voice",
    "page_title",
    "page_confirm",
    "page_reschedule",
    "page_not_now",
    "page_when",
    "page_thanks",
];
/// Templates per channel each locale must define.
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
const DERIVED: [&str; 4] = ["headline", "by", "reply", "dir"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocaleFile {
    /// "rtl" for right-to-left scripts.
    #[serde(default)]
    direction: Option<String>,
    /// Language tag for text-to-speech (e.g. "th-TH").
    #[serde(default)]
    voice_language: Option<String>,
    phrases: BTreeMap<String, String>,
    templates: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(String),
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
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                out.push(Piece::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let j = after
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ near {:?}", trunc(&rest[i..])))?;
            let name = after[..j].trim();
            if !allowed(name) {
                return Err(format!("unknown placeholder {{{{{name}}}}}").into());
            }
            out.push(Piece::Var(name.to_string()));
            rest = &after[j + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("stray }}}} near {:?}", trunc(rest)).into());
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(out))
    }

    fn render(&self, vars: &BTreeMap<&str, String>, html: bool) -> String {
        let mut s = String::new();
        for p in &self.0 {
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
            }
        }
        s
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
struct Locale {
    rtl: bool,
    voice_language: String,
    phrases: BTreeMap<String, Template>,
    templates: BTreeMap<String, Template>,
}

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Alert,
    Urgent,
    Reminder,
    Update,
    Resolved,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Alert => "alert",
            MessageKind::Urgent => "urgent",
            MessageKind::Reminder => "reminder",
            MessageKind::Update => "update",
            MessageKind::Resolved => "resolved",
        }
    }
}

/// One message rendered for every channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub locale: String,
    pub rtl: bool,
    pub voice_language: String,
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

    /// Renders `kind` with `facts` (keys of [`FACTS`]) in the customer's locale.
    pub fn render(
        &self,
        locale: &str,
        kind: MessageKind,
        facts: &BTreeMap<&'static str, String>,
        ask: bool,
    ) -> Rendered {
        let (name, l) = self.pick(locale);
        let mut vars: BTreeMap<&str, String> = facts.iter().map(|(k, v)| (*k, v.clone())).collect();
        let phrase = |k: &str, vars: &BTreeMap<&str, String>| {
            l.phrases
                .get(k)
                .map(|t| t.render(vars, false))
                .unwrap_or_default()
        };
        let mut rendered_phrases = Vec::new();
        for k in PHRASES {
            rendered_phrases.push((k, phrase(k, &vars)));
        }
        for (k, v) in rendered_phrases {
            vars.insert(k, v);
        }
        let headline = vars.get(kind.as_str()).cloned().unwrap_or_default();
        vars.insert("headline", headline);
        let by = if facts.get("when").is_some_and(|w| !w.is_empty()) {
            vars.get("by_when").cloned().unwrap_or_default()
        } else {
            vars.get("by_when_unknown").cloned().unwrap_or_default()
        };
        vars.insert("by", by);
        // Resolved: nothing to ask. Already answered: not asked again (the link stays).
        if kind == MessageKind::Resolved || !ask {
            vars.insert("reply", String::new());
            vars.insert("reply_voice", String::new());
            vars.insert("next", String::new());
            if kind == MessageKind::Resolved {
                vars.insert("link", String::new());
            }
        } else {
            let r = vars.get("reply_text").cloned().unwrap_or_default();
            vars.insert("reply", r);
        }
        vars.insert("dir", if l.rtl { "rtl" } else { "ltr" }.to_string());
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
            voice_language: l.voice_language.clone(),
            sms: t("sms", false),
            voice: t("voice", false),
            push_title: t("push_title", false),
            push: t("push", false),
            email_subject: t("email_subject", false),
            email_text: t("email_text", false),
            email_html: t("email_html", true),
        }
    }
}

/// The self-service page's words in the customer's language.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    pub lang: String,
    pub rtl: bool,
    pub title: String,
    /// "{prediction}, {by}".
    pub summary: String,
    pub confirm: String,
    pub reschedule: String,
    pub not_now: String,
    pub when: String,
    pub thanks: String,
}

impl Templates {
    pub fn page(&self, locale: &str, facts: &BTreeMap<&'static str, String>) -> PageText {
        let (name, l) = self.pick(locale);
        let vars: BTreeMap<&str, String> = facts.iter().map(|(k, v)| (*k, v.clone())).collect();
        let p = |k: &str| {
            l.phrases
                .get(k)
                .map(|t| t.render(&vars, false))
                .unwrap_or_default()
        };
        let by = if facts.get("when").is_some_and(|w| !w.is_empty()) {
            p("by_when")
        } else {
            p("by_when_unknown")
        };
        PageText {
            lang: name.to_string(),
            rtl: l.rtl,
            title: p("page_title"),
            summary: format!("{}, {by}", p("prediction")),
            confirm: p("page_confirm"),
            reschedule: p("page_reschedule"),
            not_now: p("page_not_now"),
            when: p("page_when"),
            thanks: p("page_thanks"),
        }
    }
}

/// Collapses runs of spaces left by empty placeholders, keeps line breaks.
fn tidy(s: &str) -> String {
    let lines: Vec<String> = s
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.join("\n").trim().to_string()
}

fn parse_locale(text: &str) -> Result<Locale, TemplateError> {
    let f: LocaleFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let facts = |n: &str| FACTS.contains(&n);
    let mut phrases = BTreeMap::new();
    for k in PHRASES {
        let src = f
            .phrases
            .get(k)
            .ok_or_else(|| format!("phrases.{k} is missing"))?;
        phrases.insert(
            k.to_string(),
            Template::parse(src, &facts).map_err(|e| format!("phrases.{k}: {e}"))?,
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
    let rtl = match f.direction.as_deref() {
        None | Some("ltr") => false,
        Some("rtl") => true,
        Some(o) => return Err(format!("direction {o:?} must be \"ltr\" or \"rtl\"").into()),
    };
    Ok(Locale {
        rtl,
        voice_language: f.voice_language.unwrap_or_else(|| "en-US".into()),
        phrases,
        templates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> BTreeMap<&'static str, String> {
        let mut f = BTreeMap::new();
        f.insert("name", "Acme <Ops>".to_string());
        f.insert("device", "pump-7".to_string());
        f.insert("failure_mode", "bearing".to_string());
        f.insert("probability", "92".to_string());
        f.insert("when", "2026-11-23 14:00 Asia/Bangkok".to_string());
        f.insert("ticket", "T-1".to_string());
        f.insert("link", "https://x/n/abc".to_string());
        f
    }

    #[test]
    fn embedded_locales_load_and_render_every_channel() {
        let t = Templates::load(None, "en").unwrap();
        for loc in ["en", "th", "fa"] {
            let r = t.render(loc, MessageKind::Urgent, &facts(), true);
            assert_eq!(r.locale, loc);
            for s in [&r.sms, &r.voice, &r.push, &r.email_subject, &r.email_text] {
                assert!(!s.is_empty() && !s.contains("{{"), "{loc}: {s}");
            }
            assert!(r.sms.contains("pump-7"), "{loc}: {}", r.sms);
            assert!(r.email_html.contains("https://x/n/abc"));
        }
        let fa = t.render("fa-IR", MessageKind::Alert, &facts(), true);
        assert!(fa.rtl && fa.email_html.contains("dir=\"rtl\""));
        assert!(t.render("de", MessageKind::Alert, &facts(), true).locale == "en");
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
        let bad = good.replace("prediction = \"{{device}}", "prediction = \"{{devise}}");
        assert_ne!(bad, good);
        std::fs::write(dir.path().join("en.toml"), bad).unwrap();
        let e = Templates::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(e.contains("en.toml") && e.contains("{{devise}}"), "{e}");
        assert!(Templates::load(None, "xx").is_err());
    }
}
