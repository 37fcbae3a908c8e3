//! The fleet registry: devices (attributes, owning customer) and customers (contact channels,
//! preferences, time zone, locale). Loaded from a file at start (TOML, or the contract's
//! `devices.csv`), upserted through the API (and `forewarn fleet import`), persisted in the store.
//!
//! **Which wins at start.** The store is the registry; the fleet file only brings *its own
//! changes*. A record whose file version is the one imported at the previous start is left as the
//! store has it (an API change since then stands); a record that is new in the file, or changed
//! in the file since the last import, is written. Whatever is replaced is kept as history
//! (`k/fleet_history/…`), never silently lost.

use crate::domain::DeviceId;
use crate::features::Attributes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[fleet]`: the devices and customers loaded at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Devices and customers loaded at start (optional): a TOML file of `[[devices]]` and
    /// `[[customers]]`, or a `devices.csv` (`device_id,<attribute>…`; a `customer_id` or
    /// `customer` column names the owner).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Optional in a `PUT /api/v1/devices/{id}` body (the path's id is used); always present in
    /// answers and the fleet file.
    // Checked as it is read (JSON, TOML, a stored record): a `Device` always holds a valid id.
    #[schema(required = false, value_type = String)]
    pub id: DeviceId,
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Static attributes (model type, install year, site…) that models may select on or read.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub attributes: Attributes,
}

/// A channel forewarn can reach a customer on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Voice,
    Push,
    Webhook,
    Mqtt,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Email,
        Channel::Sms,
        Channel::Voice,
        Channel::Push,
        Channel::Webhook,
        Channel::Mqtt,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Voice => "voice",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
            Channel::Mqtt => "mqtt",
        }
    }
    /// Channels that reach a person right now (urgent); the rest are asynchronous.
    pub fn is_immediate(self) -> bool {
        matches!(self, Channel::Sms | Channel::Voice)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Optional in a `PUT /api/v1/customers/{id}` body (the path's id is used); always present
    /// in answers and the fleet file.
    #[schema(required = false)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// BCP 47 language tag: "en", "th", "fa"…
    #[serde(default = "default_locale")]
    pub locale: String,
    /// IANA time zone, e.g. "Asia/Bangkok".
    #[serde(default = "default_tz")]
    pub time_zone: String,
    /// Address per channel: e-mail address, E.164 phone number, push topic, webhook URL, MQTT topic.
    #[serde(default)]
    pub contacts: BTreeMap<Channel, String>,
    /// Channels in the customer's order of preference.
    #[serde(default)]
    pub preferences: Vec<Channel>,
    /// Local quiet hours, "22:00-07:00"; none when unset.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Whether an urgent alert may reach them during quiet hours.
    #[serde(default = "yes")]
    pub urgent_in_quiet_hours: bool,
    /// At most this many messages a day (unset: the deployment default).
    #[serde(default)]
    pub daily_budget: Option<u32>,
}

fn default_locale() -> String {
    "en".into()
}
fn default_tz() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}

/// The registry file: `[[devices]]` and `[[customers]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub customers: Vec<Customer>,
    #[serde(default)]
    pub devices: Vec<Device>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{what} {id:?}: {message}")]
    Invalid {
        what: &'static str,
        id: String,
        message: String,
    },
}

impl Customer {
    pub fn validate(&self) -> Result<(), FleetError> {
        let bad = |message: String| FleetError::Invalid {
            what: "customer",
            id: self.id.clone(),
            message,
        };
        crate::domain::validate_device_id(&self.id)
            .map_err(|e| bad(e.to_string().replace("device", "customer")))?;
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(bad(format!("unknown time zone {:?}", self.time_zone)));
        }
        if let Some(q) = &self.quiet_hours {
            parse_quiet_hours(q).map_err(|e| bad(e.to_string()))?;
        }
        for c in &self.preferences {
            if !self.contacts.contains_key(c) {
                return Err(bad(format!(
                    "prefers {} but has no {} contact",
                    c.as_str(),
                    c.as_str()
                )));
            }
        }
        for (ch, addr) in &self.contacts {
            check_contact(*ch, addr).map_err(|m| bad(format!("{} contact: {m}", ch.as_str())))?;
        }
        Ok(())
    }

    /// [`Customer::validate`], and a webhook contact must be somewhere `policy` lets forewarn
    /// send (public `https`, unless allow-listed). For records written through the API or the
    /// fleet file.
    pub fn validate_with(&self, policy: &crate::netguard::AddressPolicy) -> Result<(), FleetError> {
        self.validate()?;
        if let Some(url) = self.contacts.get(&Channel::Webhook) {
            policy.check_url(url).map_err(|e| FleetError::Invalid {
                what: "customer",
                id: self.id.clone(),
                message: format!("webhook contact: {e}"),
            })?;
        }
        Ok(())
    }
}

/// Why a contact address does not have its channel's shape (the address itself is never in the
/// message: it is a customer's contact detail and errors end up in logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum ContactError {
    #[error("contains control characters")]
    ControlCharacters,
    #[error("must be an E.164 number: + and 8 to 15 digits, e.g. +66812345678")]
    NotE164,
    #[error("must be an e-mail address like name@example.com")]
    NotEmail,
    #[error("must be a push topic of letters, digits, - and _ (at most 64)")]
    NotPushTopic,
    #[error("is longer than 2048 characters")]
    TooLong,
    #[error("must be an https URL")]
    NotUrl,
    #[error("must be an MQTT topic without wildcards, not starting with $ (at most 256 bytes)")]
    NotMqttTopic,
}

/// The shape each channel's address must have.
fn check_contact(ch: Channel, addr: &str) -> Result<(), ContactError> {
    if addr.chars().any(char::is_control) {
        return Err(ContactError::ControlCharacters);
    }
    match ch {
        Channel::Sms | Channel::Voice => {
            let digits = addr.strip_prefix('+').unwrap_or("");
            let ok = (8..=15).contains(&digits.len())
                && digits.chars().all(|c| c.is_ascii_digit())
                && !digits.starts_with('0');
            if !ok {
                return Err(ContactError::NotE164);
            }
        }
        Channel::Email => {
            let ok = addr.len() <= 254
                && !addr
                    .chars()
                    .any(|c| c.is_whitespace() || "<>()[],;:\\\"".contains(c))
                && addr.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && domain.split('.').all(|l| {
                            !l.is_empty()
                                && !l.starts_with('-')
                                && !l.ends_with('-')
                                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
                        })
                });
            if !ok {
                return Err(ContactError::NotEmail);
            }
        }
        Channel::Push => {
            let ok = !addr.is_empty()
                && addr.len() <= 64
                && addr
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(ContactError::NotPushTopic);
            }
        }
        Channel::Webhook => {
            if addr.len() > 2048 {
                return Err(ContactError::TooLong);
            }
            // The address policy (public https) is applied by `validate_with`; here the shape.
            let ok = reqwest::Url::parse(addr)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(ContactError::NotUrl);
            }
        }
        Channel::Mqtt => {
            let ok = !addr.is_empty()
                && addr.len() <= 256
                && !addr.contains(['+', '#', '\0'])
                && !addr.starts_with('$');
            if !ok {
                return Err(ContactError::NotMqttTopic);
            }
        }
    }
    Ok(())
}

/// Key of the contact index (address → customer id, written when a message is queued, read
/// when a reply arrives): a hash, so contact details never appear in keys.
pub fn contact_index_key(channel: Channel, address: &str) -> String {
    use sha2::{Digest, Sha256};
    let norm: String = address
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let d = Sha256::digest(format!("{}:{norm}", channel.as_str()).as_bytes());
    format!("notify/addr/{}", hex::encode(&d[..12]))
}

/// Removes, in `tx`, the contact-index entries `old` leaves behind when replaced by `new`: every
/// address `old` had that `new` no longer has, where the index still names this customer (a
/// reply from a number the customer gave up must not land on their tickets).
pub fn prune_contact_index(
    store: &crate::store::Store,
    tx: &mut crate::store::Tx,
    old: &Customer,
    new: &Customer,
) -> Result<usize, crate::store::StoreError> {
    let mut pruned = 0;
    for (ch, addr) in &old.contacts {
        let key = contact_index_key(*ch, addr);
        if new
            .contacts
            .get(ch)
            .is_some_and(|a| contact_index_key(*ch, a) == key)
        {
            continue;
        }
        if store.get_kv::<String>(&key)?.as_deref() == Some(old.id.as_str()) {
            tx.remove_kv(&key);
            pruned += 1;
        }
    }
    Ok(pruned)
}

/// A quiet-hours text that is not `HH:MM-HH:MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quiet hours {0:?} must look like 22:00-07:00")]
pub struct QuietHoursError(pub String);

/// Parses "22:00-07:00" into minutes after local midnight (start, end); may wrap midnight.
pub fn parse_quiet_hours(s: &str) -> Result<(u32, u32), QuietHoursError> {
    let parse = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| QuietHoursError(s.to_string()))?;
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(QuietHoursError(s.to_string())),
    }
}

impl FleetFile {
    /// Reads a fleet file: `*.csv` as a `devices.csv`, anything else as TOML.
    pub fn load(path: &Path) -> Result<FleetFile, FleetError> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            let f = FleetFile {
                customers: vec![],
                devices: devices_from_csv(path)?,
            };
            f.validate()?;
            return Ok(f);
        }
        let text = std::fs::read_to_string(path).map_err(|e| FleetError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let f: FleetFile = toml::from_str(&text).map_err(|e| FleetError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        f.validate()?;
        Ok(f)
    }

    pub fn validate(&self) -> Result<(), FleetError> {
        // A device's only rule is its id's, which `DeviceId` checked as the file was read.
        for c in &self.customers {
            c.validate()?;
        }
        Ok(())
    }
}

/// Reads the contract's `devices.csv`: every column is an attribute (models may read them); a
/// `customer_id` (or `customer`) column also names the owning customer.
pub fn devices_from_csv(path: &Path) -> Result<Vec<Device>, FleetError> {
    let file_error = |e: crate::history::HistoryError| FleetError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let (rows, _) = crate::history::read_devices(
        crate::history::open(path).map_err(file_error)?,
        path,
        crate::history::BadRows::Fail,
    )
    .map_err(file_error)?;
    rows.into_iter()
        .map(|(id, attributes)| {
            let id = DeviceId::try_from(id).map_err(|e| FleetError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            Ok(Device {
                customer_id: attributes
                    .get("customer_id")
                    .or_else(|| attributes.get("customer"))
                    .cloned(),
                id,
                attributes,
            })
        })
        .collect()
}

/// Columns of a `customers.csv` besides `customer_id`.
const CUSTOMER_COLUMNS: [&str; 11] = [
    "name",
    "locale",
    "time_zone",
    "email",
    "sms",
    "voice",
    "push",
    "webhook",
    "mqtt",
    "preferences",
    "quiet_hours",
];

/// Reads a `customers.csv`: `customer_id` and any of `name, locale, time_zone, email, sms, voice,
/// push, webhook, mqtt, preferences, quiet_hours`; `preferences` lists channels separated by `;`
/// (`sms;email`). Unknown columns are an error, naming the column.
pub fn customers_from_csv(path: &Path) -> Result<Vec<Customer>, FleetError> {
    let err = |line: u64, message: String| FleetError::File {
        path: format!("{}:{line}", path.display()),
        message,
    };
    let mut rdr = csv::Reader::from_path(path).map_err(|e| err(0, e.to_string()))?;
    let cols: Vec<String> = rdr
        .headers()
        .map_err(|e| err(1, e.to_string()))?
        .iter()
        .map(|c| c.trim().to_string())
        .collect();
    if cols.first().map(String::as_str) != Some("customer_id") {
        return Err(err(1, "the first column must be customer_id".into()));
    }
    if let Some(c) = cols[1..]
        .iter()
        .find(|c| !CUSTOMER_COLUMNS.contains(&c.as_str()))
    {
        return Err(err(1, format!("unknown column {c:?}")));
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| err(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = rec.position().map_or(0, |p| p.line());
        let mut c = Customer {
            id: rec.get(0).unwrap_or_default().trim().to_string(),
            name: String::new(),
            locale: default_locale(),
            time_zone: default_tz(),
            contacts: BTreeMap::new(),
            preferences: vec![],
            quiet_hours: None,
            urgent_in_quiet_hours: true,
            daily_budget: None,
        };
        for (col, v) in cols.iter().zip(rec.iter()).skip(1) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match col.as_str() {
                "name" => c.name = v.to_string(),
                "locale" => c.locale = v.to_string(),
                "time_zone" => c.time_zone = v.to_string(),
                "quiet_hours" => c.quiet_hours = Some(v.to_string()),
                "preferences" => {
                    for p in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                        let ch = Channel::ALL
                            .into_iter()
                            .find(|x| x.as_str() == p)
                            .ok_or_else(|| err(line, format!("unknown channel {p:?}")))?;
                        c.preferences.push(ch);
                    }
                }
                channel => {
                    if let Some(ch) = Channel::ALL.into_iter().find(|x| x.as_str() == channel) {
                        c.contacts.insert(ch, v.to_string());
                    }
                }
            }
        }
        c.validate().map_err(|e| err(line, e.to_string()))?;
        out.push(c);
    }
    Ok(out)
}

/// What [`apply_file`] did at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Records written from the file (new, or changed in the file since the last import).
    pub written: usize,
    /// Records left as the store has them: unchanged in the file, changed through the API.
    pub kept: usize,
}

/// Brings the fleet file's own changes into the store's registry (see the module comment for the
/// rule), in one commit; `now_ms` (the daemon's clock) stamps the history of what it replaced.
pub fn apply_file(
    store: &crate::store::Store,
    file: &FleetFile,
    now_ms: i64,
) -> Result<Applied, crate::store::StoreError> {
    let stored_devices: BTreeMap<DeviceId, Device> = store
        .fleet_devices::<Device>()?
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let stored_customers: BTreeMap<String, Customer> = store
        .fleet_customers::<Customer>()?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let mut import = Import {
        store,
        tx: store.tx(),
        now: now_ms,
        applied: Applied::default(),
    };
    for c in &file.customers {
        let stored = stored_customers.get(&c.id);
        let put = crate::store::Tx::put_fleet_customer::<Customer>;
        if let Some(old) = import.record("customer", &c.id, c, stored, put)? {
            prune_contact_index(store, &mut import.tx, old, c)?;
        }
    }
    for d in &file.devices {
        let stored = stored_devices.get(&d.id);
        import.record(
            "device",
            &d.id,
            d,
            stored,
            crate::store::Tx::put_fleet_device::<Device>,
        )?;
    }
    store.commit(import.tx)?;
    Ok(import.applied)
}

/// [`apply_file`]'s commit in the making.
struct Import<'a> {
    store: &'a crate::store::Store,
    tx: crate::store::Tx,
    now: i64,
    applied: Applied,
}

impl Import<'_> {
    /// One record of the file, a `what` ("customer", "device") with `id`: kept when the store
    /// has a version and the file's is the one imported last; otherwise written with `put` and
    /// marked as imported. Returns the stored version it replaces when that one differs (kept as
    /// history).
    fn record<'s, T>(
        &mut self,
        what: &str,
        id: &str,
        record: &T,
        stored: Option<&'s T>,
        put: fn(&mut crate::store::Tx, &str, &T),
    ) -> Result<Option<&'s T>, crate::store::StoreError>
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq,
    {
        let mark = format!("fleet_file/{what}/{id}");
        let last: Option<T> = self.store.get_kv(&mark)?;
        if last.as_ref() == Some(record) && stored.is_some() {
            self.applied.kept += 1;
            return Ok(None);
        }
        let replaced = stored.filter(|s| *s != record);
        if let Some(old) = replaced {
            let history = format!("fleet_history/{what}/{id}/{}", self.now);
            self.tx.put_kv(&history, old);
        }
        put(&mut self.tx, id, record);
        self.tx.put_kv(&mark, record);
        self.applied.written += 1;
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_change_survives_a_restart_with_the_same_file_and_a_file_edit_wins_with_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1 << 20).unwrap();
        let dev = |model: &str| Device {
            id: DeviceId::parse("pump-1").unwrap(),
            customer_id: None,
            attributes: [("model".to_string(), model.to_string())].into(),
        };
        let file = FleetFile {
            customers: vec![],
            devices: vec![dev("P200")],
        };
        // Each start's import, at a time of the daemon's clock.
        const START: i64 = 1_767_225_600_000;
        assert_eq!(apply_file(&store, &file, START).unwrap().written, 1);
        // Changed through the API, then the daemon restarts with the same file.
        let mut tx = store.tx();
        tx.put_fleet_device("pump-1", &dev("P300"));
        store.commit(tx).unwrap();
        assert_eq!(apply_file(&store, &file, START + 1).unwrap().kept, 1);
        assert_eq!(store.fleet_devices::<Device>().unwrap(), vec![dev("P300")]);
        // The file is edited: its change wins, the API's version is kept as history.
        let edited = FleetFile {
            customers: vec![],
            devices: vec![dev("P400")],
        };
        assert_eq!(apply_file(&store, &edited, START + 2).unwrap().written, 1);
        assert_eq!(store.fleet_devices::<Device>().unwrap(), vec![dev("P400")]);
        let hist: Vec<Device> = store.scan_kv("fleet_history/device/pump-1/").unwrap();
        assert_eq!(hist, vec![dev("P300")]);
        // Kept under the time of the import that replaced it, by the clock it was given.
        let at = format!("fleet_history/device/pump-1/{}", START + 2);
        assert_eq!(store.get_kv::<Device>(&at).unwrap(), Some(dev("P300")));
    }

    #[test]
    fn devices_and_customers_csv_read_into_registry_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("devices.csv");
        std::fs::write(
            &d,
            "device_id,model,age,customer_id\npump-1,P200,7,acme\npump-2,P300,,\n",
        )
        .unwrap();
        let f = FleetFile::load(&d).unwrap();
        assert_eq!(f.devices.len(), 2);
        assert_eq!(f.devices[0].customer_id.as_deref(), Some("acme"));
        assert_eq!(f.devices[0].attributes["age"], "7");
        assert!(!f.devices[1].attributes.contains_key("age"));
        let c = dir.path().join("customers.csv");
        std::fs::write(
            &c,
            "customer_id,name,locale,time_zone,email,sms,preferences\nacme,ACME สยาม,th,Asia/Bangkok,ops@acme.example,+66800000000,sms;email\n",
        )
        .unwrap();
        let cs = customers_from_csv(&c).unwrap();
        assert_eq!(cs[0].preferences, vec![Channel::Sms, Channel::Email]);
        assert_eq!(cs[0].contacts[&Channel::Email], "ops@acme.example");
        std::fs::write(&c, "customer_id,fax\nacme,1\n").unwrap();
        assert!(customers_from_csv(&c)
            .unwrap_err()
            .to_string()
            .contains("fax"));
    }

    #[test]
    fn fleet_file_parses_and_checks_preferences() {
        let f: FleetFile = toml::from_str(
            r#"
            [[customers]]
            id = "acme"
            locale = "th"
            time_zone = "Asia/Bangkok"
            contacts = { email = "ops@acme.example", sms = "+66800000000" }
            preferences = ["sms", "email"]
            quiet_hours = "22:00-07:00"

            [[devices]]
            id = "pump-1"
            customer_id = "acme"
            attributes = { model = "P200" }
            "#,
        )
        .unwrap();
        f.validate().unwrap();
        assert_eq!(f.customers[0].preferences[0], Channel::Sms);
        let mut c = f.customers[0].clone();
        c.preferences.push(Channel::Voice);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no voice contact"));
        c.preferences.pop();
        c.time_zone = "Mars/Olympus".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn contacts_are_checked_per_channel() {
        let with = |ch: Channel, addr: &str| Customer {
            contacts: [(ch, addr.to_string())].into(),
            ..toml::from_str::<Customer>("id = \"acme\"").unwrap()
        };
        for (ch, good) in [
            (Channel::Sms, "+66812345678"),
            (Channel::Voice, "+15550100"),
            (Channel::Email, "ops@acme.example"),
            (Channel::Email, "ฝ่ายบริการ@บริษัท.ไทย"),
            (Channel::Push, "acme-alerts_1"),
            (Channel::Webhook, "https://hooks.acme.example/forewarn?k=1"),
            (Channel::Mqtt, "customers/acme/alerts"),
        ] {
            with(ch, good)
                .validate()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (ch, bad) in [
            (Channel::Sms, "0812345678"),
            (Channel::Sms, "+66 81 234 5678"),
            (Channel::Voice, "+0123456789"),
            (Channel::Sms, "+1234567890123456"),
            (Channel::Email, "ops.acme.example"),
            (Channel::Email, "Ops <ops@acme.example>"),
            (Channel::Email, "ops@localhost"),
            (Channel::Email, "a@b@c.example"),
            (Channel::Push, "../admin"),
            (Channel::Webhook, "ftp://hooks.acme.example/x"),
            (Channel::Webhook, "hooks.acme.example/x"),
            (Channel::Mqtt, "customers/+/alerts"),
            (Channel::Mqtt, "$SYS/broker"),
        ] {
            let e = with(ch, bad).validate().unwrap_err().to_string();
            assert!(!e.contains(bad), "the error repeats the contact: {e}");
        }
        let open = crate::netguard::AddressPolicy::default();
        let hook = |u: &str| with(Channel::Webhook, u);
        assert!(hook("https://hooks.acme.example/x")
            .validate_with(&open)
            .is_ok());
        for internal in [
            "http://hooks.acme.example/x",
            "https://127.0.0.1:9/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
        ] {
            assert!(hook(internal).validate_with(&open).is_err(), "{internal}");
        }
        let lab = crate::netguard::AddressPolicy::new(&["127.0.0.1".into()]).unwrap();
        assert!(hook("http://127.0.0.1:9/x").validate_with(&lab).is_ok());
    }

    #[test]
    fn a_changed_contact_leaves_no_index_entry_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1 << 20).unwrap();
        let cust = |sms: &str, email: &str| Customer {
            contacts: [
                (Channel::Sms, sms.to_string()),
                (Channel::Email, email.to_string()),
            ]
            .into(),
            ..toml::from_str::<Customer>("id = \"acme\"").unwrap()
        };
        let old = cust("+66810000001", "ops@acme.example");
        let new = cust("+66810000002", "OPS@acme.example");
        let mut tx = store.tx();
        tx.put_kv(&contact_index_key(Channel::Sms, "+66810000001"), &"acme");
        tx.put_kv(
            &contact_index_key(Channel::Email, "ops@acme.example"),
            &"acme",
        );
        // An address now indexed to someone else is theirs: not pruned.
        tx.put_kv(&contact_index_key(Channel::Sms, "+66810000009"), &"other");
        store.commit(tx).unwrap();
        let mut tx = store.tx();
        let n = prune_contact_index(&store, &mut tx, &old, &new).unwrap();
        store.commit(tx).unwrap();
        assert_eq!(
            n, 1,
            "only the number changed (the e-mail differs in case only)"
        );
        let get = |k: String| store.get_kv::<String>(&k).unwrap();
        assert_eq!(get(contact_index_key(Channel::Sms, "+66810000001")), None);
        assert_eq!(
            get(contact_index_key(Channel::Email, "ops@acme.example")).as_deref(),
            Some("acme")
        );
        let mut tx = store.tx();
        let gone = cust("+66810000009", "x@acme.example");
        prune_contact_index(&store, &mut tx, &gone, &new).unwrap();
        store.commit(tx).unwrap();
        assert_eq!(
            get(contact_index_key(Channel::Sms, "+66810000009")).as_deref(),
            Some("other")
        );
    }

    /// A device record written when `Device::id` was a `String` reads back as the same device,
    /// and a device writes the same bytes it did then: `DeviceId` is the plain string on the wire.
    #[test]
    fn a_device_stored_before_ids_were_typed_still_decodes() {
        #[derive(Serialize)]
        struct StringIdDevice {
            id: String,
            customer_id: Option<String>,
            attributes: BTreeMap<String, String>,
        }
        let old = StringIdDevice {
            id: "pompe-é-7".into(),
            customer_id: Some("acme".into()),
            attributes: [("model".to_string(), "P200".to_string())].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1 << 20).unwrap();
        let mut tx = store.tx();
        tx.put_fleet_device(&old.id, &old);
        store.commit(tx).unwrap();
        let devices = store.fleet_devices::<Device>().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].id, "pompe-é-7");
        assert_eq!(devices[0].customer_id.as_deref(), Some("acme"));
        assert_eq!(devices[0].attributes["model"], "P200");
        assert_eq!(
            serde_json::to_vec(&devices[0]).unwrap(),
            serde_json::to_vec(&old).unwrap()
        );
        // A file naming a device by an id the rule refuses is refused as it is read.
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, "[[devices]]\nid = \"plant/pump\"\n").unwrap();
        let e = FleetFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("forbidden character '/'"), "{e}");
    }

    #[test]
    fn quiet_hours_parse_and_may_wrap_midnight() {
        assert_eq!(parse_quiet_hours("22:00-07:00").unwrap(), (1320, 420));
        assert!(parse_quiet_hours("25:00-07:00").is_err());
        assert!(parse_quiet_hours("evening").is_err());
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_example_fleet_file_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleet.toml");
        let f = super::FleetFile::load(&path).unwrap();
        assert!(!f.customers.is_empty() && !f.devices.is_empty());
    }
}
