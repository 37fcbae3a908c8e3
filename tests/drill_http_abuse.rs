//! Drill: the HTTP listener under a slowloris (many connections sending their headers a byte at
//! a time, reconnecting when cut) and a `/readyz` flood at once. Ingest must keep committing and
//! open its ticket during the attack, every slow connection must be cut by the header-read
//! timeout, and the API must answer normally once the attack stops.
#![cfg(feature = "embedded-broker")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::daemon::*;
use support::poll::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLOW_CLIENTS: usize = 150;
const FLOODERS: usize = 6;
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// One slowloris client: connects, sends a request line and then a header a byte every 100 ms,
/// never finishing it; reconnects whenever the server cuts it. Returns the longest any of its
/// connections stayed open, and how many connections it made.
async fn slowloris(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (Duration, u32) {
    let mut longest = Duration::ZERO;
    let mut conns = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        conns += 1;
        let opened = Instant::now();
        let mut alive = s.write_all(b"GET /readyz HTTP/1.1\r\n").await.is_ok();
        let header =
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut i = 0;
        let mut buf = [0u8; 512];
        while alive && !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = s.read(&mut buf) => {
                    // The server answered or closed: either way this connection is over.
                    alive = false;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    alive = s.write_all(&header[i % header.len()..][..1]).await.is_ok();
                    i += 1;
                }
            }
        }
        if !stop.load(Ordering::Relaxed) {
            longest = longest.max(opened.elapsed());
        }
    }
    (longest, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_a_readyz_flood_leave_ingest_committing_and_the_api_recovers() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-siege");
    cfg.api.header_read_timeout = forewarn::domain::Dur(HEADER_TIMEOUT);
    cfg.api.request_timeout = "2s".parse().unwrap();
    cfg.api.idle_timeout = "3s".parse().unwrap();
    cfg.api.max_connections = 512;
    cfg.api.max_concurrent_requests = 32;
    cfg.ingest.commit_group = 4;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let addr = h.api_addr;
    let readings_before = api.metric("forewarn_readings_total").await;

    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slowloris(addr, stop.clone())))
        .collect();
    let answered = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            let url = format!("http://{addr}/readyz");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await {
                        if r.status() == 200 || r.status() == 503 {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = r.bytes().await;
                    }
                }
            })
        })
        .collect();
    // Let the attack establish itself before the device starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Ingest during the attack: a degrading device must get its readings committed and its
    // ticket opened, read from the store (not through the flooded listener).
    let dev = mqtt(&b, "siege-pub").await;
    let series = degrading(48);
    for (i, (hr, t)) in series.iter().enumerate() {
        dev.publish("devices/siege-1/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    let store = h.app.store.clone();
    let committed = h.app.clone();
    let t0 = Instant::now();
    let mut opened_during_attack = false;
    while t0.elapsed() < Duration::from_secs(20) {
        let has_ticket = store
            .tickets(&forewarn::store::TicketFilter {
                device_id: Some(forewarn::domain::DeviceId::parse("siege-1").expect("an id")),
                ..Default::default()
            })
            .map(|t| !t.is_empty())
            .unwrap_or(false);
        if has_ticket {
            opened_during_attack = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readings_during = committed.metrics.render();
    // Keep the attack going a little longer, past several header timeouts.
    tokio::time::sleep(HEADER_TIMEOUT * 3).await;
    let flood_answers = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    let mut slow_conns = 0;
    for s in slow {
        let (l, n) = s.await.unwrap();
        longest = longest.max(l);
        slow_conns += n;
    }
    for f in flood {
        f.await.unwrap();
    }
    eprintln!(
        "siege: {slow_conns} slowloris connections, longest {longest:?}; {flood_answers} \
         /readyz answers; ticket opened during the attack: {opened_during_attack}"
    );

    assert!(
        opened_during_attack,
        "no ticket for siege-1 within 20 s of the attack"
    );
    let readings_total = readings_during
        .lines()
        .find_map(|l| l.strip_prefix("forewarn_readings_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        readings_total - readings_before >= 40.0,
        "only {} readings committed during the attack",
        readings_total - readings_before
    );
    // Every slow connection was cut by the header-read timeout, whatever it kept sending.
    assert!(
        slow_conns as usize > SLOW_CLIENTS,
        "the slow clients were never cut and never reconnected ({slow_conns} connections)"
    );
    assert!(
        longest < HEADER_TIMEOUT + Duration::from_millis(1500),
        "a slow connection stayed open {longest:?}"
    );
    assert!(
        flood_answers > 100,
        "the flood got only {flood_answers} answers"
    );

    // Recovery: the API answers promptly once the attack is over.
    let started = Instant::now();
    let r = api
        .http
        .get(format!("{}/api/v1/tickets?device_id=siege-1", api.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let r = api.readyz().await;
    assert_eq!(r.status(), 200);
    for (name, want) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(r.headers()[name], want, "{name}");
    }
    stop_daemon(h, tok).await;
}

/// A kept-alive connection that sends nothing more is closed; a request whose body dribbles
/// gets 408; requests over the concurrency limit get 503 at once rather than queueing; a
/// connection over the connection limit is closed on accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_excess_clients_are_cut_and_slots_come_back() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-idle");
    cfg.api.header_read_timeout = "2s".parse().unwrap();
    cfg.api.request_timeout = "1s".parse().unwrap();
    cfg.api.idle_timeout = "2s".parse().unwrap();
    cfg.api.max_connections = 4;
    cfg.api.max_concurrent_requests = 2;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let addr = h.api_addr;
    // A kept-alive connection that sends nothing more is closed after the header-read timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let opened = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("an idle kept-alive connection stayed open 5 s"),
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "{:?}",
        opened.elapsed()
    );
    // Two requests whose bodies never finish hold both request slots; a third request gets 503
    // at once; the two get 408 when the request timeout passes.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!(
                "PUT /api/v1/devices/slow-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"attri"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        slow.push((c, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a request over api.max_concurrent_requests"
    );
    assert_eq!(r.headers()["retry-after"], "1");
    for (mut c, sent) in slow {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("a dribbling request was never answered")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "{:?}",
            sent.elapsed()
        );
    }
    eventually("request slots free again", || async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    // Four connections hold every connection slot; a fifth is closed as soon as it is accepted.
    // The server frees a closed connection's slot when it sees the close, a moment after the
    // client's: until the four earlier ones are gone, one of the four may be refused; try again.
    let held = hold_every_slot(addr, 4).await;
    let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("the fifth connection was neither answered nor closed");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the fifth connection was served beyond api.max_connections"
    );
    drop(held);
    // Slots come back: the API answers again.
    eventually("a slot free again", || async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    stop_daemon(h, tok).await;
}

/// Opens `n` kept-alive connections that are each answered, retrying for up to 10 s while one
/// of them is refused because a connection closed a moment ago still holds its slot.
async fn hold_every_slot(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 4096];
    loop {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let answered = c
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
                    Ok(Ok(k)) if k > 0
                );
            if !answered {
                break;
            }
            held.push(c);
        }
        if held.len() == n {
            return held;
        }
        assert!(
            Instant::now() < until,
            "only {} of {n} connections were answered for 10 s after every earlier one closed",
            held.len()
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_daemon(h: forewarn::serve::Handle, tok: tokio_util::sync::CancellationToken) {
    stop(h, tok).await;
}
