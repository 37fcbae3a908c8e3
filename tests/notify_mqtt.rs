//! The MQTT channel against a real broker (rumqttd in-process): the customer's app subscribes
//! to its topic and receives the notification as JSON.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::domain::Priority;
use forewarn::fleet::Channel;
use forewarn::notify::config::MqttConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use support::notify::Harness;

#[tokio::test]
async fn mqtt_notification_reaches_the_customers_topic() {
    // The crate's embedded broker (rumqttd), as the daemon tests use it.
    let broker = support::daemon::broker();
    let port = broker.addr.port();
    let h = Harness::start(|c| {
        c.mqtt = Some(MqttConfig {
            url: format!("mqtt://127.0.0.1:{port}"),
            ..MqttConfig::default()
        })
    })
    .await;
    let mut c = h.customer("acme", "en", &[Channel::Mqtt]);
    c.contacts
        .insert(Channel::Mqtt, "customers/acme/alerts".into());
    h.add_customer(c.clone());

    let (client, mut ev) = AsyncClient::new(MqttOptions::new("app", "127.0.0.1", port), 10);
    client
        .subscribe("customers/acme/alerts", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some(p.payload.to_vec())).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    assert_eq!(rx.recv().await.unwrap(), None, "subscribed");
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("message on the customer's topic")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["ticket_id"], t.id.as_str());
    assert_eq!(v["kind"], "alert");
    assert!(v["text"].as_str().unwrap().contains("pump-1"));
    assert!(h
        .timeline("acme")
        .iter()
        .any(|e| e.kind == "message" && e.channel == Some(Channel::Mqtt)));
}
