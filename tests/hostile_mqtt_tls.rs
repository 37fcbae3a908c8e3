//! MQTT over TLS with username/password against a real broker: Mosquitto started by the test
//! with a TLS listener (a certificate made here with rcgen) and a password file made with
//! `mosquitto_passwd -b`. The daemon trusting that certificate with the right password connects
//! and processes readings; a wrong password or an untrusted certificate keeps it unready (and
//! /readyz says the broker is the reason). Skipped with a note when mosquitto is not installed.
#![cfg(feature = "embedded-broker")]

mod support;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::process::Command;
use std::time::Duration;
use support::daemon;
use support::daemon::{config, reading, start, stop, Dirs};
use support::mosquitto::{mosquitto_bin, Mosquitto};
use support::net::free_port;
use support::poll::wait_until;

const USER: &str = "forewarn";
const PASSWORD: &str = "tls-drill-password-5772";

fn self_signed(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    cert
}

async fn readyz(http: &reqwest::Client, h: &forewarn::serve::Handle) -> (u16, serde_json::Value) {
    support::http::readyz(http, &h.api_addr.to_string())
        .await
        .expect("the daemon answers /readyz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_password_connects_and_a_wrong_password_or_certificate_does_not() {
    let Some(bin) = mosquitto_bin("hostile_mqtt_tls") else {
        return;
    };
    forewarn::tls::install_crypto();
    let dirs = Dirs::new();
    let mdir = dirs.path().join("mosquitto");
    std::fs::create_dir_all(&mdir).unwrap();
    let cert = self_signed(&mdir, "server");
    let other = self_signed(&mdir, "other");
    let passwd = mdir.join("passwd");
    let passwd_bin = bin.with_file_name("mosquitto_passwd");
    let passwd_bin = if passwd_bin.exists() {
        passwd_bin
    } else {
        "mosquitto_passwd".into()
    };
    let st = Command::new(&passwd_bin)
        .args(["-c", "-b"])
        .arg(&passwd)
        .args([USER, PASSWORD])
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_passwd failed");
    let (tls_port, plain_port) = (free_port(), free_port());
    let root = if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
    let _broker = Mosquitto::start(
        &bin,
        &mdir,
        tls_port,
        &format!(
            "{root}allow_anonymous false\npassword_file {}\n\
             listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
             listener {plain_port} 127.0.0.1\n",
            passwd.display(),
            cert.display(),
            mdir.join("server.key").display()
        ),
    );
    let http = reqwest::Client::new();
    let url = format!("mqtts://localhost:{tls_port}");

    // Right certificate, right password: ready, and readings flow.
    let mut cfg = config(&url, &dirs, "fw-tls");
    cfg.broker.ca_file = Some(cert.clone());
    cfg.broker.username = Some(USER.into());
    cfg.broker.password = Some(PASSWORD.into());
    let (h, tok) = start(cfg).await;
    daemon::ready(&h).await;
    let mut o = MqttOptions::new("tls-dev", "127.0.0.1", plain_port);
    o.set_credentials(USER, PASSWORD);
    let (dev, mut el) = AsyncClient::new(o, 100);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    dev.publish(
        "devices/tls-1/telemetry",
        QoS::AtLeastOnce,
        false,
        reading(0, 1, 70.0),
    )
    .await
    .unwrap();
    let store = h.app.store.clone();
    wait_until(
        "the reading arrived over TLS",
        Duration::from_secs(15),
        || async { store.load_state("tls-1").ok().flatten().is_some() },
    )
    .await;
    stop(h, tok).await;

    // The notify MQTT channel over the same TLS listener with the same credentials: the message
    // reaches a subscriber; with an untrusted certificate it is not delivered (a retry, no panic).
    notify_channel_over_tls(&url, &cert, &other, plain_port).await;

    // Wrong password, then an untrusted certificate: never ready, and /readyz says why.
    for (what, ca, password) in [
        ("wrong password", cert.clone(), "not-the-password"),
        ("untrusted certificate", other.clone(), PASSWORD),
    ] {
        let d = Dirs::new();
        let mut cfg = config(&url, &d, &format!("fw-tls-{}", what.len()));
        cfg.broker.ca_file = Some(ca);
        cfg.broker.username = Some(USER.into());
        cfg.broker.password = Some(password.into());
        let (h, tok) = start(cfg).await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (s, body) = readyz(&http, &h).await;
            assert_eq!(s, 503, "{what}: {body}");
            assert_eq!(body["broker"], false, "{what}: {body}");
            assert_eq!(body["store"], true, "{what}: {body}");
        }
        stop(h, tok).await;
    }
}

async fn notify_channel_over_tls(
    url: &str,
    cert: &std::path::Path,
    other: &std::path::Path,
    plain_port: u16,
) {
    use forewarn::fleet::Channel;
    use forewarn::notify::channels::{mqtt::Mqtt, Outgoing, Provider};
    use forewarn::notify::config::MqttConfig;
    use forewarn::notify::templates::Rendered;

    let mut o = MqttOptions::new("tls-app", "127.0.0.1", plain_port);
    o.set_credentials(USER, PASSWORD);
    let (app, mut el) = AsyncClient::new(o, 100);
    app.subscribe("customers/acme/alerts", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                let _ = tx.send(p.payload.to_vec());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rendered = Rendered {
        locale: "fa".into(),
        rtl: true,
        ..Default::default()
    };
    let json = serde_json::json!({"ticket": "T-1", "text": "نیاز به سرویس"});
    let message = |key: &'static str| Outgoing {
        channel: Channel::Mqtt,
        address: "customers/acme/alerts",
        rendered: &rendered,
        json: &json,
        idempotency_key: key,
        status_callback: None,
        reply_to: None,
        now_ms: 1_767_225_600_000,
    };
    let cfg = |ca: &std::path::Path| MqttConfig {
        url: url.to_string(),
        client_id: "fw-notify-tls".into(),
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ca_file: Some(ca.to_path_buf()),
    };
    let trusted = Mqtt::new(&cfg(cert), Duration::from_secs(10));
    trusted
        .send(&message("tls-ok-1"))
        .await
        .expect("published over TLS");
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the app received the notification")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["text"], "نیاز به سرویس");

    let untrusted = Mqtt::new(&cfg(other), Duration::from_secs(5));
    assert!(
        untrusted.send(&message("tls-bad-1")).await.is_err(),
        "an untrusted certificate must not deliver"
    );
}
