//! What a customer's written reply means, for SMS and e-mail alike (pure, no I/O).
//!
//! The messages offer exactly these answers, and this module is the one place that reads them:
//!
//! | answer | digit | words (en / th / fa) | effect |
//! |---|---|---|---|
//! | confirm | 1 | yes, ok, book, confirm / ใช่, ตกลง, ยืนยัน, นัดช่าง / بله, باشه, تأیید | visit scheduled |
//! | later | 2 | later, another time / ขอเวลาอื่น, ทีหลัง / بعداً, زمان دیگر | asks for another time |
//! | not now | 3 | no, not now / ไม่, ยังไม่สะดวก / نه, الان نه | acknowledged, no visit |
//!
//! Digits may be written in Latin, Thai (๐–๙), Persian (۰–۹) or Arabic-Indic (٠–٩) script.
//! Carrier keywords are whole-message commands (as carriers match them): STOP, STOPALL,
//! UNSUBSCRIBE, CANCEL, END, QUIT (and "หยุด", "لغو" and "توقف") opt out of the channel; START and
//! UNSTOP opt back in; HELP and INFO ask for help. Anything else is [`Intent::Unclear`] and goes
//! to a person.

/// What a reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// "1", "yes": please come — the ticket becomes scheduled.
    Confirm,
    /// "2", "later": another time please.
    Later,
    /// "3", "not now".
    NotNow,
    /// Carrier opt-out keyword: no more messages on this channel.
    Stop,
    /// Carrier opt-in keyword: messages on this channel again.
    Start,
    /// Carrier help keyword.
    Help,
    /// Not one of the offered answers: a person reads it.
    Unclear,
}

impl Intent {
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Confirm => "confirm",
            Intent::Later => "later",
            Intent::NotNow => "not now",
            Intent::Stop => "stop",
            Intent::Start => "start",
            Intent::Help => "help",
            Intent::Unclear => "unclear",
        }
    }
}

/// A digit in any of the supported scripts as its value.
pub fn digit_value(c: char) -> Option<u32> {
    let base = match c {
        '0'..='9' => '0',
        '๐'..='๙' => '๐',
        '۰'..='۹' => '۰',
        '٠'..='٩' => '٠',
        _ => return None,
    };
    Some(c as u32 - base as u32)
}

/// Lower case, every digit as ASCII, Arabic letter variants folded to the Persian ones, and the
/// invisible joiners people's keyboards insert removed.
pub fn normalize(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| {
            !matches!(
                c,
                '\u{200c}' | '\u{200d}' | '\u{200e}' | '\u{200f}' | '\u{fe0f}'
            )
        })
        .map(|c| match digit_value(c) {
            Some(d) => char::from_digit(d, 10).unwrap_or(c),
            None => match c {
                'ي' | 'ى' => 'ی',
                'ك' => 'ک',
                'أ' | 'إ' => 'ا',
                c => c,
            },
        })
        .collect()
}

/// Whole-message carrier keywords (after trimming and normalising).
const STOP_WORDS: &[&str] = &[
    "stop",
    "stopall",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "หยุด",
    "لغو",
    "توقف",
];
const START_WORDS: &[&str] = &["start", "unstop"];
const HELP_WORDS: &[&str] = &["help", "info", "ช่วยเหลือ", "راهنما"];

/// Answer words, longest first where one begins another ("ไม่มีปัญหา" is yes, "ไม่" is no).
/// Thai is written without spaces between words, so these match as prefixes of the reply.
const WORDS: &[(&str, Intent)] = &[
    ("not now", Intent::NotNow),
    ("no thanks", Intent::NotNow),
    ("another time", Intent::Later),
    ("ไม่มีปัญหา", Intent::Confirm),
    ("นัดช่าง", Intent::Confirm),
    ("ยังไม่สะดวก", Intent::NotNow),
    ("ไม่สะดวก", Intent::NotNow),
    ("ขอเวลาอื่น", Intent::Later),
    ("เวลาอื่น", Intent::Later),
    ("ทีหลัง", Intent::Later),
    ("ยืนยัน", Intent::Confirm),
    ("ตกลง", Intent::Confirm),
    ("ใช่", Intent::Confirm),
    ("ไม่", Intent::NotNow),
    ("الان نه", Intent::NotNow),
    ("فعلا نه", Intent::NotNow),
    ("فعلاً نه", Intent::NotNow),
    ("زمان دیگر", Intent::Later),
    ("وقت دیگر", Intent::Later),
    ("بعدا", Intent::Later),
    ("بعداً", Intent::Later),
    ("تأیید", Intent::Confirm),
    ("تایید", Intent::Confirm),
    ("بله", Intent::Confirm),
    ("باشه", Intent::Confirm),
    ("آره", Intent::Confirm),
    ("نه", Intent::NotNow),
    ("خیر", Intent::NotNow),
    ("later", Intent::Later),
    ("reschedule", Intent::Later),
    ("confirm", Intent::Confirm),
];
/// English single words (whole words only: "yesterday" is not "yes").
const EN_WORDS: &[(&str, Intent)] = &[
    ("yes", Intent::Confirm),
    ("y", Intent::Confirm),
    ("ok", Intent::Confirm),
    ("okay", Intent::Confirm),
    ("sure", Intent::Confirm),
    ("book", Intent::Confirm),
    ("no", Intent::NotNow),
    ("n", Intent::NotNow),
    ("nope", Intent::NotNow),
];

fn is_separator(c: char) -> bool {
    c.is_whitespace() || c.is_ascii_punctuation() || "،؛؟«»“”‘’…–—・。、".contains(c)
}

/// Reads a reply: a carrier keyword (the whole message), else the first answer digit or word.
pub fn parse(text: &str) -> Intent {
    let norm = normalize(text);
    let whole = norm.trim_matches(is_separator);
    if STOP_WORDS.contains(&whole) {
        return Intent::Stop;
    }
    if START_WORDS.contains(&whole) {
        return Intent::Start;
    }
    if HELP_WORDS.contains(&whole) {
        return Intent::Help;
    }
    // The answer leads the reply: "1", "۱ باشه، لطفاً فردا صبح", "ตกลงค่ะ", "Yes please".
    let lead = whole.trim_start_matches(is_separator);
    let mut chars = lead.chars();
    if let Some(first) = chars.next() {
        let next = chars.next();
        if first.is_ascii_digit() && next.is_none_or(|c| !c.is_ascii_digit()) {
            return match first {
                '1' => Intent::Confirm,
                '2' => Intent::Later,
                '3' => Intent::NotNow,
                _ => Intent::Unclear,
            };
        }
    }
    for &(w, i) in WORDS {
        if let Some(rest) = lead.strip_prefix(w) {
            // Latin words must end at a word boundary; Thai needs no spaces.
            let latin = w.is_ascii() || w.chars().any(|c| ('\u{0600}'..='\u{06ff}').contains(&c));
            if !latin || rest.chars().next().is_none_or(is_separator) {
                return i;
            }
        }
    }
    let first_word = lead.split(is_separator).next().unwrap_or("");
    EN_WORDS
        .iter()
        .find(|(w, _)| *w == first_word)
        .map(|(_, i)| *i)
        .unwrap_or(Intent::Unclear)
}

/// Why an e-mail is an automatic reply (RFC 3834 and the common vendor headers and subjects),
/// or `None` for a person's answer. `headers` are (name, value) pairs, names in any case.
pub fn auto_reply(headers: &[(String, String)], subject: &str) -> Option<String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if let Some(v) = header("auto-submitted") {
        if v != "no" && !v.is_empty() {
            return Some(format!("Auto-Submitted: {v}"));
        }
    }
    for h in [
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "x-autogenerated",
    ] {
        if let Some(v) = header(h) {
            if h != "x-auto-response-suppress" || v.contains("all") || v.contains("oof") {
                return Some(format!("{h}: {v}"));
            }
        }
    }
    if let Some(v) = header("precedence") {
        if matches!(v.as_str(), "bulk" | "auto_reply" | "junk" | "list") {
            return Some(format!("Precedence: {v}"));
        }
    }
    let s = normalize(subject);
    const SUBJECTS: [&str; 12] = [
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "autoreply",
        "auto-reply",
        "ตอบกลับอัตโนมัติ",
        "ไม่อยู่ที่สำนักงาน",
        "ไม่อยู่ในสำนักงาน",
        "پاسخ خودکار",
        "خارج از دفتر",
        "خارج از محل کار",
    ];
    SUBJECTS
        .iter()
        .find(|p| s.contains(&normalize(p)))
        .map(|p| format!("subject says {p:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_in_every_script_pick_the_offered_answer() {
        for (text, want) in [
            ("1", Intent::Confirm),
            ("๑", Intent::Confirm),
            ("۱", Intent::Confirm),
            ("١", Intent::Confirm),
            (" 2.", Intent::Later),
            ("๒ ค่ะ", Intent::Later),
            ("۲", Intent::Later),
            ("٣", Intent::NotNow),
            ("3 - not this week", Intent::NotNow),
            ("12", Intent::Unclear),
            ("4", Intent::Unclear),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn words_in_three_languages_mean_what_they_say() {
        for (text, want) in [
            ("Yes please", Intent::Confirm),
            ("OK!", Intent::Confirm),
            ("confirm", Intent::Confirm),
            ("Later, I am away", Intent::Later),
            ("not now thanks", Intent::NotNow),
            ("No", Intent::NotNow),
            ("ตกลงค่ะ", Intent::Confirm),
            ("ใช่ครับ", Intent::Confirm),
            ("ไม่มีปัญหาค่ะ", Intent::Confirm),
            ("ยังไม่สะดวกค่ะ", Intent::NotNow),
            ("ขอเวลาอื่นได้ไหม", Intent::Later),
            // The words the messages themselves offer.
            ("นัดช่างค่ะ", Intent::Confirm),
            ("Book a visit", Intent::Confirm),
            ("another time please", Intent::Later),
            ("زمان دیگر", Intent::Later),
            ("تأیید", Intent::Confirm),
            ("۱ باشه، لطفاً فردا صبح", Intent::Confirm),
            ("باشه", Intent::Confirm),
            ("بله، ممنون", Intent::Confirm),
            ("بعداً لطفاً", Intent::Later),
            ("الان نه", Intent::NotNow),
            ("نه", Intent::NotNow),
            ("yesterday it was fine", Intent::Unclear),
            ("Who is this?", Intent::Unclear),
            ("", Intent::Unclear),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn carrier_keywords_are_whole_message_commands() {
        for w in [
            "STOP",
            "Stop.",
            "stopall",
            "UNSUBSCRIBE",
            "cancel",
            "END",
            "quit",
            "หยุด",
            "لغو",
        ] {
            assert_eq!(parse(w), Intent::Stop, "{w}");
        }
        assert_eq!(parse("START"), Intent::Start);
        assert_eq!(parse("unstop"), Intent::Start);
        assert_eq!(parse("HELP"), Intent::Help);
        assert_eq!(parse("please stop by on monday"), Intent::Unclear);
        assert_eq!(parse("stop the pump now"), Intent::Unclear);
    }

    proptest::proptest! {
        // The same inputs as the cargo-fuzz target (fuzz/fuzz_targets/inbound_text.rs).
        #[test]
        fn no_text_makes_the_readers_panic(text in "(\\PC|[๐-๙۰-۹٠-٩ก-ฮا-ی\u{200c}\u{064b}]|T-[0-9a-fA-F]{0,18}){0,60}") {
            let _ = parse(&text);
            let _ = crate::notify::inbound::Reply::parse(&text);
            let _ = crate::notify::inbound::ticket_ref(&text);
            let headers = vec![("Auto-Submitted".to_string(), text.clone())];
            let _ = auto_reply(&headers, &text);
        }
    }

    #[test]
    fn auto_replies_are_recognised_by_headers_and_subjects() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(auto_reply(&h("Auto-Submitted", "auto-replied"), "Re: x").is_some());
        assert!(auto_reply(&h("auto-submitted", "no"), "Re: x").is_none());
        assert!(auto_reply(&h("X-Autoreply", "yes"), "Re: x").is_some());
        assert!(auto_reply(&h("Precedence", "bulk"), "Re: x").is_some());
        assert!(auto_reply(&h("Precedence", "auto_reply"), "Re: x").is_some());
        assert!(auto_reply(&[], "Out of Office: back Monday").is_some());
        assert!(auto_reply(&[], "ตอบกลับอัตโนมัติ: ไม่อยู่").is_some());
        assert!(auto_reply(&[], "پاسخ خودکار").is_some());
        assert!(auto_reply(&[], "Re: [T-1] Service advisory").is_none());
    }
}
