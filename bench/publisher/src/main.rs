//! A publisher faster than forewarn, for `bench/keep_up.sh`.
//!
//! It publishes device traffic at QoS 1 as fast as the broker acknowledges it: every payload is
//! encoded before the clock starts (so CSV parsing and JSON encoding are not in the measured
//! window, unlike `forewarn replay`), and the devices are split over `--connections` MQTT
//! connections (a device always on the same one, so its messages stay in order), each with up to
//! `--inflight` unacknowledged publishes.
//!
//! ```text
//! publisher --broker 127.0.0.1:1883 --telemetry telemetry.csv [--events events.csv]
//! publisher --broker 127.0.0.1:1883 --devices 10000 --readings 1000000     (synthetic readings)
//!     [--connections 2] [--inflight 1000] [--prefix devices]
//! ```
//!
//! From files (the layout of the contract, section 2; `ts` in one RFC 3339 form throughout, as
//! `forewarn simulate` writes it), messages go out in event-time order, events before readings at
//! equal timestamps (contract section 7), with a per-device `seq` on readings counting from 1.
//! Synthetic readings carry epoch-millisecond timestamps an hour apart and 4 metrics.
//!
//! Prints `start_epoch=<s>` when the first message is handed to the client, then one summary line:
//! `published=<n> readings=<n> events=<n> acked=<n> seconds=<s> rate=<msg/s>`.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Msg {
    topic: String,
    payload: Vec<u8>,
}

struct Args {
    broker: String,
    telemetry: Option<String>,
    events: Option<String>,
    devices: usize,
    readings: usize,
    connections: usize,
    inflight: u16,
    prefix: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        broker: "127.0.0.1:1883".into(),
        telemetry: None,
        events: None,
        devices: 10_000,
        readings: 1_000_000,
        connections: 2,
        inflight: 1000,
        prefix: "devices".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--broker" => a.broker = val()?.trim_start_matches("mqtt://").to_string(),
            "--telemetry" => a.telemetry = Some(val()?),
            "--events" => a.events = Some(val()?),
            "--devices" => a.devices = num(val()?)?,
            "--readings" => a.readings = num(val()?)?,
            "--connections" => a.connections = num(val()?)?.max(1),
            "--inflight" => {
                a.inflight = u16::try_from(num(val()?)?).map_err(|e| format!("{flag}: {e}"))?
            }
            "--prefix" => a.prefix = val()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// (timestamp text, 0 = event / 1 = reading, event kind rank, event code, device, payload body).
type Row = (String, u8, u8, String, String, String);

fn kind_rank(kind: &str) -> u8 {
    match kind {
        "failure" => 0,
        "maintenance" => 1,
        "error" => 2,
        _ => 3,
    }
}

/// Reads the history files into messages, in apply order, with per-device seq.
fn from_files(a: &Args) -> Result<Vec<(String, Msg)>, String> {
    let path = a.telemetry.as_deref().unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or(format!("{path}: empty"))?
        .split(',')
        .collect();
    if header.len() < 3 || header[0] != "device_id" || header[1] != "ts" {
        return Err(format!("{path}: header must start device_id,ts,<metric>"));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(format!("{path}:{}: {} cells", n + 2, cells.len()));
        }
        let mut body = String::with_capacity(16 * cells.len());
        for (name, v) in header[2..].iter().zip(&cells[2..]) {
            if v.is_empty() {
                continue;
            }
            if !body.is_empty() {
                body.push(',');
            }
            body.push_str(&format!("\"{name}\":{v}"));
        }
        rows.push((cells[1].into(), 1, 0, String::new(), cells[0].into(), body));
    }
    if let Some(path) = &a.events {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        for (n, line) in text.lines().enumerate().skip(1) {
            let c: Vec<&str> = line.split(',').collect();
            if c.len() < 4 {
                return Err(format!("{path}:{}: want device_id,ts,kind,code", n + 1));
            }
            rows.push((
                c[1].into(),
                0,
                kind_rank(c[2]),
                c[3].into(),
                c[0].into(),
                c[2].into(),
            ));
        }
    }
    // Event-time order; at equal timestamps events first (failure, maintenance, error, by code).
    rows.sort_by(|x, y| (&x.0, x.1, x.2, &x.3).cmp(&(&y.0, y.1, y.2, &y.3)));
    let mut seq = std::collections::HashMap::<String, u64>::new();
    let out = rows
        .into_iter()
        .map(|(ts, is_reading, _, code, device, body)| {
            let msg = if is_reading == 1 {
                let s = seq.entry(device.clone()).or_insert(0);
                *s += 1;
                Msg {
                    topic: format!("{}/{device}/telemetry", a.prefix),
                    payload: format!("{{\"ts\":\"{ts}\",\"seq\":{s},\"metrics\":{{{body}}}}}")
                        .into_bytes(),
                }
            } else {
                Msg {
                    topic: format!("{}/{device}/events", a.prefix),
                    payload: format!("{{\"ts\":\"{ts}\",\"kind\":\"{body}\",\"code\":\"{code}\"}}")
                        .into_bytes(),
                }
            };
            (device, msg)
        })
        .collect();
    Ok(out)
}

/// `readings` synthetic readings round-robin over `devices` devices, an hour apart per device.
fn synthetic(a: &Args) -> Vec<(String, Msg)> {
    let t0: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
    (0..a.readings)
        .map(|i| {
            let d = i % a.devices;
            let tick = (i / a.devices) as u64;
            let device = format!("dev-{d:06}");
            let x = ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
            let payload = format!(
                "{{\"ts\":{},\"seq\":{},\"metrics\":{{\"volt\":{:.3},\"rotate\":{:.3},\"pressure\":{:.3},\"vibration\":{:.3}}}}}",
                t0 + tick * 3_600_000,
                tick + 1,
                170.0 + 10.0 * x,
                440.0 + 30.0 * x,
                100.0 + 5.0 * x,
                40.0 + 3.0 * x
            );
            let topic = format!("{}/{device}/telemetry", a.prefix);
            (
                device,
                Msg {
                    topic,
                    payload: payload.into_bytes(),
                },
            )
        })
        .collect()
}

fn bucket(device: &str, n: usize) -> usize {
    // FNV-1a: stable, so a device always goes through the same connection.
    let h = device.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % n as u64) as usize
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("publisher: {e}");
            return ExitCode::from(2);
        }
    };
    let msgs = if args.telemetry.is_some() {
        match from_files(&args) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("publisher: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        synthetic(&args)
    };
    let readings = msgs
        .iter()
        .filter(|(_, m)| m.topic.ends_with("/telemetry"))
        .count();
    let total = msgs.len();
    let mut parts: Vec<Vec<Msg>> = (0..args.connections).map(|_| Vec::new()).collect();
    for (device, m) in msgs {
        parts[bucket(&device, args.connections)].push(m);
    }
    let (host, port) = match args
        .broker
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse::<u16>()))
    {
        Some((h, Ok(p))) => (h.to_string(), p),
        _ => {
            eprintln!("publisher: --broker wants host:port, got {}", args.broker);
            return ExitCode::from(2);
        }
    };

    // Connect every client first, so the clock measures publishing only.
    let acked = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..parts.len() {
        let mut mo = MqttOptions::new(format!("bench-pub-{}-{i}", std::process::id()), &host, port);
        mo.set_keep_alive(Duration::from_secs(60));
        mo.set_clean_session(true);
        mo.set_max_packet_size(1 << 20, 1 << 20);
        mo.set_inflight(args.inflight);
        let (client, mut eventloop) = AsyncClient::new(mo, 4096);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let acked = acked.clone();
        // The event loop is polled in its own task: awaiting `publish` in the polling task
        // deadlocks once the request channel is full.
        let poller = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher: connection {i}: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        if tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .is_err()
        {
            eprintln!("publisher: no CONNACK from {host}:{port}");
            return ExitCode::from(1);
        }
        clients.push((client, poller));
    }

    let start_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    println!("start_epoch={start_epoch:.6}");
    let started = Instant::now();
    let mut senders = Vec::new();
    for ((client, _), part) in clients.iter().zip(parts) {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            for Msg { topic, payload } in part {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        }));
    }
    for s in senders {
        if !matches!(s.await, Ok(true)) {
            eprintln!("publisher: a client closed before publishing everything");
            return ExitCode::from(1);
        }
    }
    // Done when the broker has acknowledged every message (it has taken responsibility for it).
    let mut last = (acked.load(Ordering::Relaxed), Instant::now());
    while acked.load(Ordering::Relaxed) < total as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = acked.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            eprintln!("publisher: only {now} of {total} acknowledged after 30 s without progress");
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let acked_n = acked.load(Ordering::Relaxed);
    for (client, poller) in clients {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    }
    println!(
        "published={total} readings={readings} events={} acked={acked_n} seconds={secs:.3} rate={:.0}",
        total - readings,
        total as f64 / secs
    );
    if acked_n < total as u64 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
