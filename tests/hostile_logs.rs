//! Secrets and customer contact details never reach the daemon's log. The real `forewarn serve`
//! binary runs at `debug` with every credential configured (API token, dispatch webhook secret,
//! Twilio auth token, link secret, inbound e-mail key, broker password); a device opens a ticket,
//! its owner gets an SMS, the API is hit with wrong tokens and a customer with new contacts is
//! upserted, a bad payload is rejected. The captured stdout+stderr must not contain any of the
//! secrets, phone numbers or e-mail addresses.
//!
//! It also walks the paths that used to leak: the dispatch webhook fails with a token in its
//! URL's query (reqwest's error names the whole URL), the SMTP server refuses the login (the
//! password and the server's answer), and a payload's type error echoes the value serde saw.
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::json;
use std::time::Duration;
use support::daemon::{broker, config, degrading, mqtt, reading, Api, Dirs, TOKEN};
use support::net::{free_addr, free_port};
use support::notify::providers::{Fakes, HOOK_SECRET, TOKEN as TWILIO_TOKEN};
use support::poll::wait_until;
use support::process::{sigterm, spawn_serve, wait_ready, write_config};

const PHONE: &str = "+66810007777";
const EMAIL: &str = "owner.secret@acme.example";
const NEW_PHONE: &str = "+4915100009999";
const NEW_EMAIL: &str = "night.shift@acme.example";
const LINK_SECRET: &str = "log-test-link-secret-0123456789";
const INBOUND_KEY: &str = "log-test-inbound-key-3141";
const BROKER_PASSWORD: &str = "log-test-broker-password-2718";
const WRONG_TOKEN: &str = "presented-wrong-token-1618";
const DISPATCH_URL_TOKEN: &str = "dispatch-url-token-1123";
const EMAIL_ONLY: &str = "only.by.mail@beta.example";
const SMTP_PASSWORD: &str = "log-test-smtp-password-5813";
const ECHOED_VALUE: &str = "payload-value-never-logged-2134";

/// An SMTP server that refuses every login (535), for the SMTP authentication error path.
async fn smtp_refusing_auth() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 refuser ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-refuser\r\n250 AUTH PLAIN LOGIN\r\n",
                        "AUTH" => b"535 5.7.8 Authentication credentials invalid\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"503 5.5.1 Authenticate first\r\n",
                    };
                    if w.write_all(answer).await.is_err() || verb == "QUIT" {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_contact_details_never_appear_in_the_log() {
    let b = broker();
    let fakes = Fakes::start().await;
    let dirs = Dirs::new();
    let fleet = dirs.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "[[customers]]\nid = \"acme\"\nname = \"Acme\"\ntime_zone = \"UTC\"\n\
             contacts = {{ sms = \"{PHONE}\", email = \"{EMAIL}\" }}\npreferences = [\"sms\", \"email\"]\n\n\
             [[customers]]\nid = \"beta\"\ntime_zone = \"UTC\"\ncontacts = {{ email = \"{EMAIL_ONLY}\" }}\n\n\
             [[devices]]\nid = \"pump-2\"\ncustomer_id = \"beta\"\n\n\
             [[devices]]\nid = \"pump-1\"\ncustomer_id = \"acme\"\n"
        ),
    )
    .unwrap();
    let mut cfg = config(&b.url(), &dirs, "fw-logs");
    let addr = free_addr();
    cfg.api.listen = addr.clone();
    cfg.fleet.file = Some(fleet);
    cfg.log.filter = "debug".into();
    cfg.broker.username = Some("forewarn".into());
    cfg.broker.password = Some(BROKER_PASSWORD.into());
    // Nothing listens there: every delivery fails, with the token in the URL's query.
    cfg.dispatch.webhook_url = Some(
        format!(
            "http://127.0.0.1:{}/hook?token={DISPATCH_URL_TOKEN}",
            free_port()
        )
        .into(),
    );
    // Customer beta can only be reached by e-mail, and the SMTP server refuses the login.
    let smtp = smtp_refusing_auth().await;
    cfg.notify.email = Some(forewarn::notify::config::EmailConfig {
        host: smtp.ip().to_string(),
        port: smtp.port(),
        tls: forewarn::notify::config::SmtpTls::None,
        username: Some("forewarn".into()),
        password: Some(SMTP_PASSWORD.into()),
        from: "Service <service@forewarn.example>".into(),
        ..Default::default()
    });
    cfg.dispatch.webhook_secret = Some(HOOK_SECRET.into());
    cfg.notify.poll_interval = "50ms".parse().unwrap();
    cfg.notify.link_secret = Some(LINK_SECRET.into());
    cfg.notify.inbound_email_signing_key = Some(INBOUND_KEY.into());
    cfg.notify.sms = Some(fakes.twilio());
    let path = write_config(dirs.path(), &cfg);
    let log = dirs.path().join("serve.log");
    let http = reqwest::Client::new();
    let mut child = spawn_serve(&path, &log, "debug");
    wait_ready(&http, &addr).await;

    let dev = mqtt(&b, "logs-pub").await;
    for (i, (hr, t)) in degrading(48).iter().enumerate() {
        dev.publish("devices/pump-1/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
        dev.publish("devices/pump-2/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    dev.publish(
        "devices/pump-1/telemetry",
        format!("{{\"phone\": \"{PHONE}\""),
    )
    .await;
    // A type error: serde's message quotes the value it found.
    dev.publish(
        "devices/pump-1/telemetry",
        format!("{{\"seq\": \"{ECHOED_VALUE}\", \"metrics\": {{\"temp\": 1.0}}}}"),
    )
    .await;
    wait_until("the SMS went out", Duration::from_secs(30), || async {
        !fakes.delivered("sms").is_empty()
    })
    .await;
    let base = format!("http://{addr}");
    let r = http
        .put(format!("{base}/api/v1/customers/acme"))
        .bearer_auth(WRONG_TOKEN)
        .json(&json!({"name": "Acme", "contacts": {"sms": NEW_PHONE}, "preferences": ["sms"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .put(format!("{base}/api/v1/customers/acme"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "Acme", "time_zone": "UTC",
            "contacts": {"sms": NEW_PHONE, "email": NEW_EMAIL}, "preferences": ["sms", "email"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // A refused upsert echoes nothing of the body into the log either.
    let r = http
        .put(format!("{base}/api/v1/customers/acme"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "Acme", "time_zone": "Nowhere/City",
            "contacts": {"sms": NEW_PHONE, "email": NEW_EMAIL}, "preferences": ["sms"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{base}/notify/v1/email/inbound"))
        .form(&[
            ("from", NEW_EMAIL),
            ("text", "yes"),
            ("timestamp", "1795410000"),
            ("token", "forged-token"),
            ("signature", "00"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = http
        .post(format!("{base}/notify/v1/twilio/sms"))
        .form(&[("From", PHONE), ("Body", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The paths that used to leak really ran: the dispatch webhook failed and was retried, the
    // SMTP login was refused, the type error was rejected.
    wait_until(
        "a failed dispatch delivery in the log",
        Duration::from_secs(15),
        || async { std::fs::read_to_string(&log).is_ok_and(|t| t.contains("dispatch failed")) },
    )
    .await;
    let api = Api::at(&addr);
    wait_until("beta's e-mail refused", Duration::from_secs(15), || async {
        api.get_json("/api/v1/customers/beta/timeline")
            .await
            .to_string()
            .contains("smtp rejected the message (535")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sigterm(&mut child).success());

    let text = std::fs::read_to_string(&log).unwrap();
    for (what, mark) in [
        (
            "the dispatch failure names the host, not the query",
            "127.0.0.1",
        ),
        ("the rejected type error", "invalid_json"),
    ] {
        assert!(
            text.lines().any(|l| l.contains(mark)
                && (l.contains("dispatch failed") || l.contains("rejected payload"))),
            "{what}: no such line in the log"
        );
    }
    assert!(
        text.lines().count() > 10,
        "the daemon logged at debug:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "a log written to a file carries terminal colour codes:\n{}",
        text.lines()
            .find(|l| l.contains('\u{1b}'))
            .unwrap_or_default()
    );
    eprintln!(
        "{} log lines; sample:\n{}",
        text.lines().count(),
        text.lines()
            .filter(|l| l.contains("forewarn"))
            .take(8)
            .map(|l| l.chars().take(200).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let phone_digits = |p: &str| p.trim_start_matches('+').to_string();
    for (what, needle) in [
        ("API token", TOKEN.to_string()),
        ("presented wrong token", WRONG_TOKEN.to_string()),
        ("dispatch webhook secret", HOOK_SECRET.to_string()),
        ("Twilio auth token", TWILIO_TOKEN.to_string()),
        ("link secret", LINK_SECRET.to_string()),
        ("inbound e-mail signing key", INBOUND_KEY.to_string()),
        ("broker password", BROKER_PASSWORD.to_string()),
        ("token in the dispatch URL", DISPATCH_URL_TOKEN.to_string()),
        ("SMTP password", SMTP_PASSWORD.to_string()),
        ("value echoed by a type error", ECHOED_VALUE.to_string()),
        ("phone number", phone_digits(PHONE)),
        ("new phone number", phone_digits(NEW_PHONE)),
        ("e-mail address", EMAIL.to_string()),
        ("new e-mail address", NEW_EMAIL.to_string()),
        ("e-mail-only address", EMAIL_ONLY.to_string()),
    ] {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
        assert!(
            hits.is_empty(),
            "the {what} appears in the log:\n{}",
            hits.iter()
                .take(3)
                .map(|l| l.chars().take(400).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
