//! The fleet-wide registry: devices and customers in the key-value bucket `BUCKETS-registry`,
//! one key per record (`d.ID` / `c.ID`, the id base64url-encoded), its value the record's JSON
//! as the store keeps it. Every instance puts what it accepts and applies what it watches.
//!
//! The fleet file (`[fleet] file`) reaches the bucket at each instance's start
//! ([`super::Cluster::import_fleet_file`]) under single-machine mode's rule (`crate::fleet`),
//! made fleet-wide: beside each record the bucket keeps the version the fleet file last brought
//! (its mark, `f.d.ID` / `f.c.ID`). A record whose mark is the file's version is left as the
//! bucket has it (a change made through any instance's API since then stands); a record new in
//! the file, or changed in it since, is written, and what it replaces is kept as history in the
//! store of the instance that replaced it. Every write names the revision it read
//! (compare-and-set), so instances started at once with the same file write each record once.

use crate::fleet::{Customer, Device, FleetFile};
use async_nats::jetstream::kv;
use base64::Engine as _;
use serde::{de::DeserializeOwned, Serialize};

const DEVICE: &str = "d.";
const CUSTOMER: &str = "c.";
const FILE_MARK: &str = "f.";
/// Compare-and-set rounds for one record before the import gives up: each lost round means
/// another instance wrote the record or its mark in between, and the next round reads it.
const ATTEMPTS: usize = 8;
/// Records imported at once (each is a few key-value round trips).
const CONCURRENT: usize = 16;

/// Ids may hold any Unicode text and dots; a key holds `[-_=./A-Za-z0-9]` only, and its dots
/// separate tokens. base64url without padding keeps one token of key characters.
fn encode(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn device_key(id: &str) -> String {
    format!("{DEVICE}{}", encode(id))
}

pub fn customer_key(id: &str) -> String {
    format!("{CUSTOMER}{}", encode(id))
}

/// The key of the fleet file's mark of the record under `record_key`.
pub fn file_mark_key(record_key: &str) -> String {
    format!("{FILE_MARK}{record_key}")
}

/// Whether `key` is a fleet file's mark rather than a record.
pub fn is_file_mark(key: &str) -> bool {
    key.starts_with(FILE_MARK)
}

/// A record read from the bucket.
#[derive(Debug, PartialEq)]
pub enum Record {
    Device(Device),
    Customer(Customer),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("registry key {0} is neither a device (d.) nor a customer (c.)")]
    UnknownKey(String),
    #[error("registry key {key}: {source}")]
    Value {
        key: String,
        source: serde_json::Error,
    },
    #[error("registry key {key} holds the record of {id}")]
    WrongId { key: String, id: String },
}

/// The record under `key`; its id must be the one the key encodes.
pub fn decode(key: &str, value: &[u8]) -> Result<Record, RecordError> {
    let bad = |source| RecordError::Value {
        key: key.to_string(),
        source,
    };
    let (record, id) = if key.starts_with(DEVICE) {
        let d: Device = serde_json::from_slice(value).map_err(bad)?;
        let id = d.id.to_string();
        (Record::Device(d), id)
    } else if key.starts_with(CUSTOMER) {
        let c: Customer = serde_json::from_slice(value).map_err(bad)?;
        let id = c.id.clone();
        (Record::Customer(c), id)
    } else {
        return Err(RecordError::UnknownKey(key.to_string()));
    };
    let expected = match &record {
        Record::Device(_) => device_key(&id),
        Record::Customer(_) => customer_key(&id),
    };
    if expected != key {
        return Err(RecordError::WrongId {
            key: key.to_string(),
            id,
        });
    }
    Ok(record)
}

/// What the fleet file's version of a record asks of the bucket, given the bucket's record
/// (`current`, `None` when absent; `Some(None)` when present but unreadable) and the version
/// the file last brought (`mark`).
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The file's version was imported before: the bucket's record stands.
    Keep,
    /// The bucket holds the file's version already; only the mark is missing or older.
    MarkOnly,
    /// Write the file's version, then the mark.
    Write,
}

fn step<T: PartialEq>(file: &T, current: Option<Option<&T>>, mark: Option<&T>) -> Step {
    match current {
        Some(_) if mark == Some(file) => Step::Keep,
        Some(Some(c)) if c == file => Step::MarkOnly,
        _ => Step::Write,
    }
}

/// A fleet file that could not be brought into the fleet-wide registry at start.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("fleet file record {key}: the registry bucket refused it: {source}")]
    Bucket {
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "fleet file record {key}: not written after {ATTEMPTS} compare-and-set rounds \
         (the last write: {last})"
    )]
    Contended { key: String, last: String },
    #[error("fleet file record {key} cannot be encoded: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
    #[error("keeping the replaced fleet records as history: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What importing one record did: left it, or wrote it (replacing `replaced`, kept as history).
enum Imported<T> {
    Kept,
    Written { replaced: Option<T> },
}

/// Brings the file's version `file` of the record under `key` into `bucket`, by [`step`], each
/// write naming the revision it read.
async fn import_one<T>(bucket: &kv::Store, key: &str, file: &T) -> Result<Imported<T>, ImportError>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let bytes = serde_json::to_vec(file).map_err(|source| ImportError::Encode {
        key: key.to_string(),
        source,
    })?;
    let refused = |e: Box<dyn std::error::Error + Send + Sync>| ImportError::Bucket {
        key: key.to_string(),
        source: e,
    };
    let mark_key = file_mark_key(key);
    let read = |k: String| async move {
        let e = bucket
            .entry(k)
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            e.filter(|e| e.operation == kv::Operation::Put),
        )
    };
    let (mut wrote, mut replaced, mut last) = (false, None, String::new());
    for _ in 0..ATTEMPTS {
        let current = read(key.to_string()).await.map_err(refused)?;
        let mark = read(mark_key.clone()).await.map_err(refused)?;
        let current_record: Option<Option<T>> = current
            .as_ref()
            .map(|e| serde_json::from_slice(&e.value).ok());
        let mark_record: Option<T> = mark
            .as_ref()
            .and_then(|e| serde_json::from_slice(&e.value).ok());
        let next = step(
            file,
            current_record.as_ref().map(Option::as_ref),
            mark_record.as_ref(),
        );
        if next == Step::Keep {
            return Ok(match wrote {
                true => Imported::Written { replaced },
                false => Imported::Kept,
            });
        }
        if next == Step::Write {
            let put = match &current {
                Some(e) => bucket
                    .update(key, bytes.clone().into(), e.revision)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => bucket
                    .create(key, bytes.clone().into())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            // Lost to another writer (or NATS refused): read again and decide again.
            if let Err(e) = put {
                last = e;
                continue;
            }
            wrote = true;
            if replaced.is_none() {
                replaced = current_record.flatten().filter(|c| c != file);
            }
        }
        let marked = match &mark {
            Some(e) => bucket
                .update(&mark_key, bytes.clone().into(), e.revision)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => bucket
                .create(&mark_key, bytes.clone().into())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        match marked {
            Ok(()) => {
                return Ok(match wrote {
                    true => Imported::Written { replaced },
                    false => Imported::Kept,
                })
            }
            Err(e) => last = e,
        }
    }
    Err(ImportError::Contended {
        key: key.to_string(),
        last,
    })
}

impl super::Cluster {
    /// Brings the fleet file into the fleet-wide registry bucket (see the module comment for
    /// the rule). Records it replaces are kept as history in `store`
    /// (`fleet_history/<customer|device>/<id>/<now_ms>`, as single-machine mode keeps them);
    /// the instance's own registry gets the bucket's records through its watch
    /// ([`super::Cluster::spawn_intake`]). Called once at start, before the watch.
    pub async fn import_fleet_file(
        &self,
        store: &crate::store::Store,
        file: &FleetFile,
        now_ms: i64,
    ) -> Result<crate::fleet::Applied, ImportError> {
        use futures_util::StreamExt as _;
        let bucket = &self.fleet_registry;
        let customers: Vec<Result<(String, Imported<Customer>), ImportError>> =
            futures_util::stream::iter(&file.customers)
                .map(|c| async move {
                    let r = import_one(bucket, &customer_key(&c.id), c).await?;
                    Ok((c.id.clone(), r))
                })
                .buffer_unordered(CONCURRENT)
                .collect()
                .await;
        let devices: Vec<Result<(String, Imported<Device>), ImportError>> =
            futures_util::stream::iter(&file.devices)
                .map(|d| async move {
                    let r = import_one(bucket, &device_key(&d.id), d).await?;
                    Ok((d.id.to_string(), r))
                })
                .buffer_unordered(CONCURRENT)
                .collect()
                .await;
        let mut applied = crate::fleet::Applied::default();
        let mut tx = store.tx();
        let mut history = 0;
        for r in customers {
            keep_history(&mut tx, &mut applied, &mut history, "customer", now_ms, r?);
        }
        for r in devices {
            keep_history(&mut tx, &mut applied, &mut history, "device", now_ms, r?);
        }
        if history > 0 {
            store.commit(tx)?;
        }
        self.metrics
            .registry
            .with_label_values(&["imported"])
            .inc_by(applied.written as u64);
        Ok(applied)
    }
}

/// Counts one record's import, and puts in `tx` the record it replaced.
fn keep_history<T: Serialize>(
    tx: &mut crate::store::Tx,
    applied: &mut crate::fleet::Applied,
    history: &mut usize,
    what: &str,
    now_ms: i64,
    (id, imported): (String, Imported<T>),
) {
    match imported {
        Imported::Kept => applied.kept += 1,
        Imported::Written { replaced } => {
            applied.written += 1;
            if let Some(old) = replaced {
                tx.put_kv(&format!("fleet_history/{what}/{id}/{now_ms}"), &old);
                *history += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_key(k: &str) -> bool {
        !k.is_empty()
            && !k.starts_with('.')
            && !k.ends_with('.')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c))
    }

    #[test]
    fn keys_of_non_ascii_and_dotted_ids_are_valid_single_token_keys() {
        for id in ["press-7", "เครื่อง-๑", "دستگاه.۲", "a.b.c"] {
            let k = device_key(id);
            assert!(valid_key(&k), "{k}");
            assert_eq!(k.matches('.').count(), 1, "{k}");
            assert!(valid_key(&customer_key(id)));
        }
        assert_ne!(device_key("x"), customer_key("x"));
    }

    #[test]
    fn the_fleet_files_rule_keeps_an_api_change_and_writes_a_file_change() {
        let (p200, p300, p400) = ("P200", "P300", "P400");
        // Never imported: written.
        assert_eq!(step(&p200, None, None), Step::Write);
        // Imported, then changed through the API: the same file leaves it.
        assert_eq!(step(&p200, Some(Some(&p300)), Some(&p200)), Step::Keep);
        // The file edited since: its version wins.
        assert_eq!(step(&p400, Some(Some(&p300)), Some(&p200)), Step::Write);
        // Another instance wrote the record and not yet its mark: only the mark.
        assert_eq!(step(&p200, Some(Some(&p200)), None), Step::MarkOnly);
        // Marked, but the record is gone from the bucket: written again.
        assert_eq!(step(&p200, None, Some(&p200)), Step::Write);
        // Unreadable in the bucket: replaced by the file's.
        assert_eq!(step(&p200, Some(None), None), Step::Write);
        assert!(is_file_mark(&file_mark_key(&device_key("x"))));
        assert!(!is_file_mark(&device_key("x")));
        assert!(!is_file_mark(&customer_key("x")));
    }

    #[test]
    fn a_device_record_reads_back_and_must_match_its_key() {
        let d = Device {
            id: crate::domain::DeviceId::parse("เครื่อง-๑").expect("id"),
            customer_id: Some("ร้าน".into()),
            attributes: Default::default(),
        };
        let json = serde_json::to_vec(&d).expect("json");
        assert_eq!(
            decode(&device_key("เครื่อง-๑"), &json).expect("decode"),
            Record::Device(d)
        );
        assert!(matches!(
            decode(&device_key("other"), &json),
            Err(RecordError::WrongId { .. })
        ));
        assert!(matches!(
            decode("x.abc", &json),
            Err(RecordError::UnknownKey(_))
        ));
    }
}
