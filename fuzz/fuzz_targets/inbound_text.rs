//! Whatever a customer, a carrier or a mail server sends: the reply parser, the auto-reply
//! detector and the ticket reference scan must never panic, on any text.
#![no_main]

use forewarn::notify::{inbound, intent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = intent::parse(&text);
    let _ = inbound::Reply::parse(&text);
    let _ = inbound::ticket_ref(&text);
    let (subject, rest) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    let headers = vec![
        ("Auto-Submitted".to_string(), rest.to_string()),
        ("Precedence".to_string(), subject.to_string()),
    ];
    let _ = intent::auto_reply(&headers, subject);
});
