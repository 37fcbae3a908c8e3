//! Partition checkpoints: the device states and tickets of one partition together with the
//! stream sequence they cover, kept in the key-value bucket `BUCKETS-state`, so that a
//! partition's next owner starts from them and replays only what came after.
//!
//! Layout: the head `p.N` (JSON [`Head`]) names which of two slots holds the current
//! checkpoint, its sequence, size and checksum; the checkpoint itself (postcard [`Envelope`]) is
//! cut in chunks `p.N.SLOT.I` of at most [`CHUNK`] bytes (a NATS message is at most 1 MiB by
//! default). A writer fills the slot the head does not name, then moves the head with
//! compare-and-set on its revision, so a reader following the head never sees a half-written
//! checkpoint; a torn read (two writers during a hand-off) fails the checksum and is treated as
//! no checkpoint. Encoding and decoding are pure; [`write`] and [`read`] do the I/O.

use crate::app::{DeviceBlob, DeviceStates};
use crate::domain::Ticket;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Chunk size: well under NATS's default 1 MiB message limit.
pub const CHUNK: usize = 512 * 1024;
/// The envelope's format; a reader refuses any but this and [`VERSION_1`].
const VERSION: u32 = 2;
/// The first format, without the board's records: still read (the records then stay as the
/// adopting instance has them).
const VERSION_1: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint bucket: {0}")]
    Bucket(BoxError),
    #[error("checkpoint of partition {partition} unreadable: {reason}")]
    Unreadable { partition: u32, reason: String },
    #[error("checkpoint of partition {partition} not written: {reason}")]
    Encode { partition: u32, reason: String },
}

/// The head key's value: where the current checkpoint of a partition is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// The last stream sequence (of this partition's subjects) the checkpoint includes.
    pub seq: u64,
    /// `a` or `b`: the slot holding its chunks.
    pub slot: String,
    pub chunks: u32,
    pub bytes: u64,
    /// FNV-1a (64 bits) of the encoded checkpoint.
    pub checksum: u64,
    /// The instance that wrote it.
    pub instance: String,
}

/// A checkpoint as decoded: the sequence it covers and the states.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub partition: u32,
    pub seq: u64,
    pub instance: String,
    pub states: DeviceStates,
}

/// What is encoded: tickets as JSON text (their serde form has optional fields postcard
/// cannot skip), device states as the store's bytes, the board's records beside the tickets
/// as store key and JSON.
#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    partition: u32,
    seq: u64,
    instance: String,
    devices: Vec<DeviceBlob>,
    tickets: Vec<String>,
    records: Vec<(String, Vec<u8>)>,
}

/// [`VERSION_1`]'s envelope: [`Envelope`] without the records.
#[derive(Deserialize)]
struct EnvelopeV1 {
    version: u32,
    partition: u32,
    seq: u64,
    instance: String,
    devices: Vec<DeviceBlob>,
    tickets: Vec<String>,
}

/// The leading field every envelope starts with.
#[derive(Deserialize)]
struct Version {
    version: u32,
}

pub fn head_key(partition: u32) -> String {
    format!("p.{partition}")
}

fn chunk_key(partition: u32, slot: &str, i: u32) -> String {
    format!("p.{partition}.{slot}.{i}")
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Encodes a checkpoint. Pure.
pub fn encode(c: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    let fail = |reason: String| CheckpointError::Encode {
        partition: c.partition,
        reason,
    };
    let tickets = c
        .states
        .tickets
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let env = Envelope {
        version: VERSION,
        partition: c.partition,
        seq: c.seq,
        instance: c.instance.clone(),
        devices: c.states.devices.clone(),
        tickets,
        records: c.states.records.clone().unwrap_or_default(),
    };
    postcard::to_allocvec(&env).map_err(|e| fail(e.to_string()))
}

/// Decodes what [`encode`] made, checking it is the partition's. Pure.
pub fn decode(partition: u32, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let bad = |reason: String| CheckpointError::Unreadable { partition, reason };
    let version: Version = postcard::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    let env = match version.version {
        VERSION => postcard::from_bytes::<Envelope>(bytes).map_err(|e| bad(e.to_string()))?,
        VERSION_1 => {
            let v1: EnvelopeV1 = postcard::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
            Envelope {
                version: v1.version,
                partition: v1.partition,
                seq: v1.seq,
                instance: v1.instance,
                devices: v1.devices,
                tickets: v1.tickets,
                records: Vec::new(),
            }
        }
        other => {
            return Err(bad(format!(
                "format {other} (this version reads {VERSION_1} and {VERSION})"
            )))
        }
    };
    if env.partition != partition {
        return Err(bad(format!("it is partition {}'s", env.partition)));
    }
    let tickets = env
        .tickets
        .iter()
        .map(|t| serde_json::from_str::<Ticket>(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("a ticket: {e}")))?;
    Ok(Checkpoint {
        partition,
        seq: env.seq,
        instance: env.instance,
        states: DeviceStates {
            devices: env.devices,
            tickets,
            records: (env.version != VERSION_1).then_some(env.records),
        },
    })
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Stored: its size in bytes.
    Stored(u64),
    /// The bucket already holds a checkpoint at or after this sequence (another owner's):
    /// left as it is.
    Superseded,
}

/// Stores a checkpoint unless the bucket holds one at least as recent.
pub async fn write(bucket: &kv::Store, c: &Checkpoint) -> Result<Written, CheckpointError> {
    let bytes = encode(c)?;
    let key = head_key(c.partition);
    let current = bucket
        .entry(&key)
        .await
        .map_err(|e| CheckpointError::Bucket(Box::new(e)))?
        .filter(|e| e.operation == kv::Operation::Put);
    let (revision, old) = match &current {
        Some(e) => (
            Some(e.revision),
            serde_json::from_slice::<Head>(&e.value).ok(),
        ),
        None => (None, None),
    };
    if old.as_ref().is_some_and(|h| h.seq >= c.seq) {
        return Ok(Written::Superseded);
    }
    let slot = match old.as_ref().map(|h| h.slot.as_str()) {
        Some("a") => "b",
        _ => "a",
    };
    let mut chunks = 0u32;
    for (i, part) in bytes.chunks(CHUNK).enumerate() {
        bucket
            .put(chunk_key(c.partition, slot, i as u32), part.to_vec().into())
            .await
            .map_err(|e| CheckpointError::Bucket(Box::new(e)))?;
        chunks += 1;
    }
    let head = Head {
        seq: c.seq,
        slot: slot.to_string(),
        chunks,
        bytes: bytes.len() as u64,
        checksum: fnv64(&bytes),
        instance: c.instance.clone(),
    };
    let value = serde_json::to_vec(&head).map_err(|e| CheckpointError::Encode {
        partition: c.partition,
        reason: e.to_string(),
    })?;
    let moved = match revision {
        Some(r) => bucket
            .update(&key, value.into(), r)
            .await
            .map(|_| ())
            .map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    Box::new(e) as BoxError,
                )
            }),
        None => bucket
            .create(&key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    Box::new(e) as BoxError,
                )
            }),
    };
    match moved {
        Ok(()) => Ok(Written::Stored(bytes.len() as u64)),
        // Another writer moved the head meanwhile: its checkpoint stands.
        Err((true, _)) => Ok(Written::Superseded),
        Err((false, e)) => Err(CheckpointError::Bucket(e)),
    }
}

/// The partition's current checkpoint, `None` when there is none.
pub async fn read(
    bucket: &kv::Store,
    partition: u32,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let bad = |reason: String| CheckpointError::Unreadable { partition, reason };
    let Some(value) = bucket
        .get(head_key(partition))
        .await
        .map_err(|e| CheckpointError::Bucket(Box::new(e)))?
    else {
        return Ok(None);
    };
    let head: Head = serde_json::from_slice(&value).map_err(|e| bad(format!("head: {e}")))?;
    let mut bytes: Vec<u8> = Vec::with_capacity(head.bytes.min(1 << 30) as usize);
    for i in 0..head.chunks {
        let part = bucket
            .get(chunk_key(partition, &head.slot, i))
            .await
            .map_err(|e| CheckpointError::Bucket(Box::new(e)))?
            .ok_or_else(|| bad(format!("chunk {i} of {} missing", head.chunks)))?;
        bytes.extend_from_slice(&part);
    }
    if bytes.len() as u64 != head.bytes || fnv64(&bytes) != head.checksum {
        return Err(bad(
            "size or checksum differs from its head (written over meanwhile)".into(),
        ));
    }
    let c = decode(partition, &bytes)?;
    if c.seq != head.seq {
        return Err(bad(format!(
            "sequence {} where its head says {}",
            c.seq, head.seq
        )));
    }
    Ok(Some(c))
}

/// The sequences the bucket's checkpoints cover, by partition (for a look from outside).
pub async fn heads(bucket: &kv::Store) -> Result<Vec<(u32, Head)>, CheckpointError> {
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| CheckpointError::Bucket(Box::new(e)))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| CheckpointError::Bucket(Box::new(e)))?;
        let Some(p) = k.strip_prefix("p.").and_then(|r| r.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(Some(v)) = bucket.get(&k).await {
            if let Ok(h) = serde_json::from_slice::<Head>(&v) {
                out.push((p, h));
            }
        }
    }
    out.sort_by_key(|(p, _)| *p);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let ticket: Ticket = serde_json::from_value(serde_json::json!({
            "id": "T-00112233aabbccdd", "device_id": "d-ü", "customer_id": null,
            "failure_mode": "comp2", "status": "open", "priority": "high", "probability": 0.8,
            "predicted_failure_at": null, "opened_at": "2015-01-03T06:00:00Z",
            "updated_at": "2015-01-03T06:00:00Z", "model": {"name": "m", "version": "1"},
            "evidence": [], "history": [], "opened_ms": 1_420_264_800_000i64
        }))
        .expect("ticket");
        Checkpoint {
            partition: 3,
            seq: 4711,
            instance: "fw-a".into(),
            states: DeviceStates {
                devices: vec![
                    DeviceBlob {
                        device: "d-ü".into(),
                        state: vec![1, 2, 3],
                        reorder: Some(vec![9]),
                    },
                    DeviceBlob {
                        device: "d2".into(),
                        state: vec![0; 10],
                        reorder: None,
                    },
                ],
                tickets: vec![ticket],
                records: Some(vec![(
                    "visits/visit/T-00112233aabbccdd".into(),
                    br#"{"ticket_id":"T-00112233aabbccdd","technician_id":"t1"}"#.to_vec(),
                )]),
            },
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let c = sample();
        let bytes = encode(&c).expect("encodes");
        assert_eq!(decode(3, &bytes).expect("decodes"), c);
    }

    #[test]
    fn a_first_format_checkpoint_still_reads_and_carries_no_board_records() {
        #[derive(Serialize)]
        struct V1 {
            version: u32,
            partition: u32,
            seq: u64,
            instance: String,
            devices: Vec<DeviceBlob>,
            tickets: Vec<String>,
        }
        let c = sample();
        let old = V1 {
            version: VERSION_1,
            partition: 3,
            seq: c.seq,
            instance: c.instance.clone(),
            devices: c.states.devices.clone(),
            tickets: c
                .states
                .tickets
                .iter()
                .map(|t| serde_json::to_string(t).expect("json"))
                .collect(),
        };
        let bytes = postcard::to_allocvec(&old).expect("encodes");
        let back = decode(3, &bytes).expect("decodes");
        assert_eq!(back.states.tickets, c.states.tickets);
        assert_eq!(back.states.devices, c.states.devices);
        assert_eq!(back.states.records, None, "none carried: kept as they are");
    }

    #[test]
    fn another_partitions_or_a_damaged_checkpoint_is_refused() {
        let bytes = encode(&sample()).expect("encodes");
        assert!(matches!(
            decode(4, &bytes),
            Err(CheckpointError::Unreadable { partition: 4, .. })
        ));
        assert!(decode(3, &bytes[..bytes.len() / 2]).is_err());
        assert_ne!(fnv64(&bytes), fnv64(&bytes[1..]));
    }
}
