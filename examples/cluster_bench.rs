//! The two NATS-side programs of `bench/cluster.sh` (issue 15, throughput at N = 1, 2, 3):
//!
//! - `publish URL TELEMETRY_CSV EVENTS_CSV`: reads a history (the CSV layout `forewarn simulate`
//!   writes), encodes every message before the clock starts, then publishes each on
//!   `devices.ID.telemetry|events` to JetStream with up to 2,000 publish acknowledgements
//!   outstanding, and prints `published=N readings=R seconds=S rate=M` once the stream has
//!   acknowledged all of them (`start_ms`: wall-clock epoch ms of the first publish).
//! - `consume URL STREAM PREFIX PARTITIONS COUNT`: the NATS-only baseline — one durable pull
//!   consumer per partition, as forewarn's partitions have (explicit acknowledgement, the same
//!   filter), that acknowledges each message and does nothing else; prints `consumed=N
//!   first_ms=… last_ms=…` (wall-clock epoch ms of the first and last message) once COUNT
//!   messages were acknowledged.
//!
//! Run: `cargo run --example cluster_bench -- publish …` (the script builds it).

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn publish(url: &str, telemetry: &str, events: &str) -> Result<(), Error> {
    let mut history = forewarn::replay::History::default();
    history.read_telemetry_file(std::path::Path::new(telemetry))?;
    history.read_events_file(std::path::Path::new(events))?;
    let messages: Vec<(String, bytes::Bytes, bool)> = history
        .messages("devices")
        .map(|m| (m.topic.replace('/', "."), m.payload.into(), m.is_reading))
        .collect();
    let readings = messages.iter().filter(|m| m.2).count();
    let js = jetstream::new(async_nats::connect(url).await?);
    let start_ms = now_ms();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (subject, payload, _) in messages.iter().cloned() {
        pending.push_back(js.publish(subject, payload).await?);
        if pending.len() >= 2000 {
            if let Some(ack) = pending.pop_front() {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "published={} readings={readings} start_ms={start_ms} seconds={seconds:.3} rate={:.0}",
        messages.len(),
        messages.len() as f64 / seconds
    );
    Ok(())
}

async fn consume(
    url: &str,
    stream: &str,
    prefix: &str,
    partitions: u32,
    count: u64,
) -> Result<(), Error> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    // Made as forewarn makes it when absent, so the baseline can start first.
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![format!("{prefix}.*.>")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let consumer = stream
            .get_or_create_consumer(
                &format!("bench-p{p}"),
                consumer::pull::Config {
                    durable_name: Some(format!("bench-p{p}")),
                    filter_subject: forewarn::cluster::partition::filter(prefix, p),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: 4096,
                    ..Default::default()
                },
            )
            .await?;
        let (done, first, last) = (done.clone(), first.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await?;
            while let Some(m) = messages.next().await {
                let m = m?;
                let t = now_ms() as u64;
                let _ = first.compare_exchange(0, t, Ordering::SeqCst, Ordering::SeqCst);
                m.ack().await?;
                last.fetch_max(now_ms() as u64, Ordering::SeqCst);
                if done.fetch_add(1, Ordering::SeqCst) + 1 >= count {
                    break;
                }
            }
            Ok::<(), Error>(())
        }));
    }
    println!("ready");
    while done.load(Ordering::SeqCst) < count {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    println!(
        "consumed={} first_ms={} last_ms={}",
        done.load(Ordering::SeqCst),
        first.load(Ordering::SeqCst),
        last.load(Ordering::SeqCst)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let result = match arg(0) {
        "publish" => publish(arg(1), arg(2), arg(3)).await,
        "consume" => match (arg(4).parse(), arg(5).parse()) {
            (Ok(partitions), Ok(count)) => consume(arg(1), arg(2), arg(3), partitions, count).await,
            _ => Err("PARTITIONS and COUNT must be numbers".into()),
        },
        _ => Err(
            "usage: cluster_bench publish URL TELEMETRY EVENTS | consume URL STREAM \
                  PREFIX PARTITIONS COUNT"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
