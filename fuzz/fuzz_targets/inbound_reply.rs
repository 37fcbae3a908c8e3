//! Whatever a customer, a carrier or a mail server sends: the reply parser, the carrier keyword
//! and auto-reply detection, the ticket reference scan and the inbound e-mail form (sender,
//! subject, first line, headers as JSON) must never panic, on any text.
#![no_main]

use forewarn::notify::inbound::{ticket_ref, EmailForm, Reply};
use forewarn::notify::intent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = intent::parse(&text);
    let _ = intent::normalize(&text);
    let _ = Reply::parse(&text);
    if let Some(t) = ticket_ref(&text) {
        assert!(t.starts_with("T-") && t.len() == 18, "{t}");
    }
    // The input cut into form fields at NUL bytes: sender, subject, text, a header value and
    // the `message-headers` JSON, in that order.
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or("").to_string();
    let (from, subject, body, header, json) = (next(), next(), next(), next(), next());
    let params = vec![
        ("sender".to_string(), from),
        ("subject".to_string(), subject),
        ("stripped-text".to_string(), body),
        ("Auto-Submitted".to_string(), header.clone()),
        ("Precedence".to_string(), header),
        ("message-headers".to_string(), json),
    ];
    let form = EmailForm::parse(&params);
    assert!(form.first_line.lines().count() <= 1);
    let _ = intent::parse(&form.first_line);
});
