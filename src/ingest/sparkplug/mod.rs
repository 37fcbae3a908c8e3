//! Sparkplug B (Eclipse Sparkplug 3.0, ISO/IEC 20237:2023): the topic namespace, the protobuf
//! payload ([`payload`], generated from `proto/sparkplug_b.proto`) and the host application's
//! view of each edge node — births, aliases, `seq` — as a pure state machine, [`Host`].
//!
//! Nothing here does I/O: [`Host::handle`] takes a topic, the payload bytes, the receipt time and
//! the wall clock, and returns readings, device events, the `seq` gap it saw and the rebirth
//! request (an NCMD) to publish, or the reason the message was rejected.
//!
//! What becomes what:
//! - NBIRTH / DBIRTH: the alias table (alias → name, datatype) of the edge node / device is
//!   replaced; the metric values they carry are readings too.
//! - NDATA / DDATA: numeric metrics (by alias or by name) become readings of the node / device,
//!   one reading per distinct timestamp (the metric's, else the payload's, else the receipt).
//! - NDEATH / DDEATH: an `error` device event, code [`NDEATH_CODE`] / [`DDEATH_CODE`]; an NDEATH
//!   also records one for each device of the node that was online. An NDEATH whose `bdSeq` is not
//!   the one of the node's last NBIRTH is a stale will and is ignored.
//! - `seq` (0–255 per edge node, wrapping): a jump is a gap (messages lost) and triggers a
//!   rebirth request; a `seq` at or just behind the last one is a redelivery, applied again (the
//!   engine drops readings it already has by timestamp).
//! - A rebirth request (NCMD `Node Control/Rebirth` = true) goes out, at most once per
//!   `rebirth_interval` per edge node, for DATA before any BIRTH, DATA naming an alias the BIRTH
//!   did not, and after a `seq` gap.

#[rustfmt::skip]
pub mod payload;

use crate::domain::{
    validate_device_id, DeviceEvent, DeviceId, DeviceIdError, Dur, EventKind, Reading,
    RejectReason, Timestamp,
};
use crate::ingest::decode::{Limits, Reject};
use payload::payload::metric::Value;
use payload::payload::Metric;
use payload::{DataType, Payload};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The metric an NCMD carries to ask an edge node for its births again.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// The event code of an edge node's death (and of its devices', which die with it).
pub const NDEATH_CODE: &str = "sparkplug_ndeath";
/// The event code of a device's death.
pub const DDEATH_CODE: &str = "sparkplug_ddeath";

/// `[ingest.sparkplug]`: Sparkplug B edge nodes and devices as a telemetry source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Subscribe to Sparkplug B topics (`spBv1.0/…`) and ingest them. Off by default.
    pub enabled: bool,
    /// The Sparkplug groups to subscribe to (`spBv1.0/{group}/#` each); empty: every group
    /// (`spBv1.0/+/#`).
    pub groups: Vec<String>,
    /// The forewarn device id of a Sparkplug device (DBIRTH, DDATA, DDEATH): `{group}`, `{edge}`
    /// and `{device}` are replaced by the topic's levels. The result must be a valid device id
    /// (no `/`, `+`, `#`, whitespace or control characters) or the message is rejected
    /// (`bad_device_id`).
    pub device_id_template: String,
    /// The forewarn device id of an edge node's own metrics (NBIRTH, NDATA) and of its NDEATH:
    /// `{group}` and `{edge}` are replaced.
    pub node_id_template: String,
    /// Ask edge nodes to publish their births again (NCMD `Node Control/Rebirth`) when forewarn
    /// cannot read their DATA (no BIRTH seen, an unknown alias) or after a `seq` gap. Off: such
    /// DATA is only rejected / counted (for a broker account that may not publish).
    pub rebirth: bool,
    /// At most one rebirth request per edge node per this much wall time.
    pub rebirth_interval: Dur,
    /// Numeric metrics one reading (one timestamp of one node or device) may carry; a message
    /// with more is rejected (`too_large`; its BIRTH aliases are still recorded). Edge nodes
    /// often have more tags than a JSON payload's limit of 256, hence a limit of its own.
    pub max_metrics: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            groups: Vec::new(),
            device_id_template: "{group}.{edge}.{device}".into(),
            node_id_template: "{group}.{edge}".into(),
            rebirth: true,
            rebirth_interval: Dur::secs(10),
            max_metrics: 1024,
        }
    }
}

impl Config {
    /// The topic filters to subscribe to (none when off).
    pub fn subscriptions(&self) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        if self.groups.is_empty() {
            return vec![format!("{NAMESPACE}/+/#")];
        }
        self.groups
            .iter()
            .map(|g| format!("{NAMESPACE}/{g}/#"))
            .collect()
    }

    /// Checks the templates and groups (no I/O): `(key, message)` of the first fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_template(&self.device_id_template, true)
            .map_err(|e| ("device_id_template", e.to_string()))?;
        check_template(&self.node_id_template, false)
            .map_err(|e| ("node_id_template", e.to_string()))?;
        if self.max_metrics == 0 {
            return Err(("max_metrics", "must be at least 1".into()));
        }
        for g in &self.groups {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(("groups", format!("{g:?} is not a Sparkplug group id")));
            }
        }
        Ok(())
    }
}

/// What is wrong with a device or node id template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0:?}: unclosed {{")]
    Unclosed(String),
    #[error("{template:?}: unknown placeholder {{{placeholder}}}")]
    Unknown {
        template: String,
        placeholder: String,
    },
    #[error("{template:?} must contain {need}")]
    Missing {
        template: String,
        need: &'static str,
    },
}

/// A template may use `{group}`, `{edge}` and (for devices) `{device}`, and must tell the ids
/// it covers apart: a device template needs `{edge}` and `{device}`, a node template `{edge}`.
/// (`{` and `}` are one byte each, so the slices below fall on character boundaries.)
fn check_template(t: &str, device: bool) -> Result<(), TemplateError> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(TemplateError::Unclosed(t.to_string()));
        };
        match &after[..j] {
            "group" | "edge" => {}
            "device" if device => {}
            other => {
                return Err(TemplateError::Unknown {
                    template: t.to_string(),
                    placeholder: other.to_string(),
                })
            }
        }
        rest = &after[j + 1..];
    }
    if !t.contains("{edge}") || (device && !t.contains("{device}")) {
        let need = if device {
            "{edge} and {device}"
        } else {
            "{edge}"
        };
        return Err(TemplateError::Missing {
            template: t.to_string(),
            need,
        });
    }
    Ok(())
}

fn fill(template: &str, group: &str, edge: &str, device: &str) -> String {
    template
        .replace("{group}", group)
        .replace("{edge}", edge)
        .replace("{device}", device)
}

/// The message types of the Sparkplug B topic namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
    NCmd,
    DCmd,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "NBIRTH" => Kind::NBirth,
            "NDATA" => Kind::NData,
            "NDEATH" => Kind::NDeath,
            "DBIRTH" => Kind::DBirth,
            "DDATA" => Kind::DData,
            "DDEATH" => Kind::DDeath,
            "NCMD" => Kind::NCmd,
            "DCMD" => Kind::DCmd,
            _ => return None,
        })
    }

    fn is_device(self) -> bool {
        matches!(self, Kind::DBirth | Kind::DData | Kind::DDeath | Kind::DCmd)
    }

    /// The bounded label of the `forewarn_sparkplug_messages_total` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NBirth => "NBIRTH",
            Kind::NData => "NDATA",
            Kind::NDeath => "NDEATH",
            Kind::DBirth => "DBIRTH",
            Kind::DData => "DDATA",
            Kind::DDeath => "DDEATH",
            Kind::NCmd => "NCMD",
            Kind::DCmd => "DCMD",
        }
    }
}

/// A parsed Sparkplug B topic: `spBv1.0/{group}/{kind}/{edge}[/{device}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    pub group: &'a str,
    pub kind: Kind,
    pub edge: &'a str,
    pub device: Option<&'a str>,
}

/// What a topic under the namespace is.
#[derive(Debug, Clone, PartialEq)]
pub enum TopicKind<'a> {
    /// An edge node or device message.
    Message(Topic<'a>),
    /// A host application's STATE, or a message type this host has no use for.
    Other,
}

/// Parses a topic: `None` when it is not under `spBv1.0/`.
pub fn parse_topic(topic: &str) -> Option<Result<TopicKind<'_>, Reject>> {
    let rest = topic.strip_prefix(NAMESPACE)?.strip_prefix('/')?;
    let levels: Vec<&str> = rest.split('/').collect();
    if levels.first() == Some(&"STATE") {
        return Some(Ok(TopicKind::Other));
    }
    let bad = |why: &str| {
        Some(Err(Reject::new(
            RejectReason::BadSparkplug,
            format!("topic: {why}"),
        )))
    };
    let (group, kind, edge, device) = match levels.as_slice() {
        [g, k, e] => (*g, *k, *e, None),
        [g, k, e, d] => (*g, *k, *e, Some(*d)),
        _ => return bad("not spBv1.0/{group}/{type}/{edge}[/{device}]"),
    };
    let Some(kind) = Kind::parse(kind) else {
        return Some(Ok(TopicKind::Other));
    };
    if group.is_empty() || edge.is_empty() || device.is_some_and(str::is_empty) {
        return bad("empty group, edge node or device id");
    }
    if kind.is_device() != device.is_some() {
        return bad(if device.is_some() {
            "a node message with a device level"
        } else {
            "a device message without its device level"
        });
    }
    Some(Ok(TopicKind::Message(Topic {
        group,
        kind,
        edge,
        device,
    })))
}

/// How a metric that did not become a reading value was set aside (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// `bdSeq`, `Node Control/…`, `Device Control/…`: the protocol's own, not telemetry.
    Control,
    /// A string, bytes, DateTime, array, DataSet or Template value.
    NotNumeric,
    /// No value, or `is_null`.
    Null,
    /// NaN or an infinity.
    NotFinite,
    /// DATA named an alias its BIRTH did not define.
    UnknownAlias,
    /// Neither a name nor an alias.
    Unnamed,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::Control,
        Skip::NotNumeric,
        Skip::Null,
        Skip::NotFinite,
        Skip::UnknownAlias,
        Skip::Unnamed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Control => "control",
            Skip::NotNumeric => "not_numeric",
            Skip::Null => "null",
            Skip::NotFinite => "not_finite",
            Skip::UnknownAlias => "unknown_alias",
            Skip::Unnamed => "unnamed",
        }
    }
}

/// Why a rebirth was requested (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebirthReason {
    NoBirth,
    UnknownAlias,
    SeqGap,
}

impl RebirthReason {
    pub const ALL: [RebirthReason; 3] = [
        RebirthReason::NoBirth,
        RebirthReason::UnknownAlias,
        RebirthReason::SeqGap,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RebirthReason::NoBirth => "no_birth",
            RebirthReason::UnknownAlias => "unknown_alias",
            RebirthReason::SeqGap => "seq_gap",
        }
    }
}

/// An NCMD to publish: `Node Control/Rebirth` = true for one edge node.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebirth {
    pub topic: String,
    pub payload: Vec<u8>,
    pub reason: RebirthReason,
}

/// Messages of an edge node that its `seq` says never arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqGap {
    /// The edge node's forewarn id (`node_id_template`).
    pub node_id: String,
    pub prev: u8,
    pub seq: u8,
    pub missing: u64,
}

/// What one message did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Set when the message is rejected; readings and events are then empty.
    pub reject: Option<Reject>,
    pub readings: Vec<Reading>,
    pub events: Vec<DeviceEvent>,
    pub gap: Option<SeqGap>,
    pub rebirth: Option<Rebirth>,
    /// Metrics set aside, by why.
    pub skipped: Vec<(Skip, u64)>,
    /// The message type, when the topic was one (for counting).
    pub kind: Option<Kind>,
}

impl Outcome {
    fn rejected(kind: Option<Kind>, r: Reject) -> Outcome {
        Outcome {
            reject: Some(r),
            kind,
            ..Outcome::default()
        }
    }

    fn skip(&mut self, why: Skip) {
        match self.skipped.iter_mut().find(|(s, _)| *s == why) {
            Some((_, n)) => *n += 1,
            None => self.skipped.push((why, 1)),
        }
    }
}

/// What a BIRTH declared: alias → (name, datatype), and name → datatype.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    aliases: HashMap<u64, (String, u32)>,
    types: HashMap<String, u32>,
}

impl Table {
    fn from_birth(metrics: &[Metric]) -> Table {
        let mut t = Table::default();
        for m in metrics {
            let dt = m.datatype.unwrap_or(0);
            if let Some(name) = &m.name {
                if let Some(a) = m.alias {
                    t.aliases.insert(a, (name.clone(), dt));
                }
                t.types.insert(name.clone(), dt);
            }
        }
        t
    }
}

/// A device of an edge node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// DBIRTH seen, and no DDEATH or NDEATH since.
    pub online: bool,
    pub table: Table,
}

/// What the host knows of one edge node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// NBIRTH seen, and no NDEATH since.
    pub online: bool,
    /// The `bdSeq` of the last NBIRTH: an NDEATH with another one is a stale will.
    pub bd_seq: Option<u64>,
    /// The `seq` of the last message applied.
    pub last_seq: Option<u8>,
    pub table: Table,
    pub devices: HashMap<String, DeviceState>,
    /// Wall time (epoch ms) of the last rebirth request.
    #[serde(skip)]
    pub last_rebirth_ms: Option<i64>,
    /// The newest time (epoch ms; the payload's, else its receipt) of a message of the node or
    /// one of its devices: what `ingest.forget_after` compares. `None` in a state stored before it
    /// was kept (such a node is kept until its next message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
}

/// An edge node's state as the store keeps it, so births (aliases, datatypes, `bdSeq`) and the
/// `seq` outlive a restart: the BIRTH that was acknowledged is not needed again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNode {
    pub group: String,
    pub edge: String,
    pub node: Node,
}

impl StoredNode {
    /// The store key (`group` and `edge` cannot contain `/`).
    pub fn key(&self) -> String {
        node_key(&self.group, &self.edge)
    }
}

/// The store key of an edge node's state.
fn node_key(group: &str, edge: &str) -> String {
    format!("{STATE_PREFIX}{group}/{edge}")
}

/// Where edge node states are kept in the store's key-value space.
pub const STATE_PREFIX: &str = "sparkplug/";

/// The host application's state: every edge node seen, by (group, edge node).
#[derive(Debug, Clone)]
pub struct Host {
    cfg: Config,
    limits: Limits,
    nodes: HashMap<(String, String), Node>,
    /// Nodes changed since [`Host::take_changed`].
    changed: HashSet<(String, String)>,
}

impl Host {
    pub fn new(cfg: Config, limits: Limits) -> Host {
        Host {
            cfg,
            limits,
            nodes: HashMap::new(),
            changed: HashSet::new(),
        }
    }

    /// Puts back what the store kept.
    pub fn restore(&mut self, stored: Vec<StoredNode>) {
        for s in stored {
            self.nodes.insert((s.group, s.edge), s.node);
        }
    }

    /// The nodes changed since the last call, to be written with the messages' commit.
    pub fn take_changed(&mut self) -> Vec<StoredNode> {
        let mut out: Vec<StoredNode> = self
            .changed
            .drain()
            .filter_map(|(group, edge)| {
                let node = self.nodes.get(&(group.clone(), edge.clone()))?.clone();
                Some(StoredNode { group, edge, node })
            })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.edge).cmp(&(&b.group, &b.edge)));
        out
    }

    /// Forgets the edge nodes (and the tables of their devices) last seen before `cutoff_ms`;
    /// returns the store keys of their states, to be removed with the sweep's commit.
    pub fn forget_unseen(&mut self, cutoff_ms: i64) -> Vec<String> {
        let mut gone = Vec::new();
        self.nodes.retain(|(group, edge), node| {
            let keep = node.last_seen_ms.is_none_or(|t| t >= cutoff_ms);
            if !keep {
                gone.push((group.clone(), edge.clone()));
            }
            keep
        });
        gone.sort();
        gone.into_iter()
            .map(|key| {
                self.changed.remove(&key);
                node_key(&key.0, &key.1)
            })
            .collect()
    }

    /// The state of an edge node, if it has been seen.
    pub fn node(&self, group: &str, edge: &str) -> Option<&Node> {
        self.nodes.get(&(group.to_string(), edge.to_string()))
    }

    /// Handles one message on a topic under `spBv1.0/` (`None` for any other topic).
    /// `received_at` stamps what carries no timestamp; `now_ms` is the wall clock of the rebirth
    /// rate limit.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_at: i64,
        now_ms: i64,
    ) -> Option<Outcome> {
        let received_at = Timestamp::from_millis(received_at);
        let t = match parse_topic(topic)? {
            Ok(TopicKind::Message(t)) => t,
            Ok(TopicKind::Other) => return Some(Outcome::default()),
            Err(r) => return Some(Outcome::rejected(None, r)),
        };
        let kind = t.kind;
        if matches!(kind, Kind::NCmd | Kind::DCmd) {
            // Commands to edge nodes (this host's rebirth requests among them).
            return Some(Outcome {
                kind: Some(kind),
                ..Outcome::default()
            });
        }
        if payload.len() > self.limits.max_payload_bytes {
            return Some(Outcome::rejected(
                Some(kind),
                Reject::new(
                    RejectReason::TooLarge,
                    format!(
                        "payload of {} bytes exceeds the limit of {}",
                        payload.len(),
                        self.limits.max_payload_bytes
                    ),
                ),
            ));
        }
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                return Some(Outcome::rejected(
                    Some(kind),
                    Reject::new(
                        RejectReason::InvalidProtobuf,
                        format!("not a Sparkplug B payload: {e}"),
                    ),
                ))
            }
        };
        let mut out = Outcome {
            kind: Some(kind),
            ..Outcome::default()
        };
        if let Err(r) = self.apply(&t, p, received_at, now_ms, &mut out) {
            return Some(Outcome::rejected(Some(kind), r));
        }
        Some(out)
    }

    fn apply(
        &mut self,
        t: &Topic,
        p: Payload,
        received_at: Timestamp,
        now_ms: i64,
        out: &mut Outcome,
    ) -> Result<(), Reject> {
        let node_id = fill(&self.cfg.node_id_template, t.group, t.edge, "");
        let device_id = match t.device {
            Some(d) => fill(&self.cfg.device_id_template, t.group, t.edge, d),
            None => node_id.clone(),
        };
        let node_id = topic_id(node_id, "edge node id")?;
        let device_id = topic_id(device_id, "device id")?;
        let seq = match p.seq {
            None => None,
            Some(s) => Some(u8::try_from(s).map_err(|_| {
                Reject::new(RejectReason::BadSparkplug, format!("seq {s} is over 255"))
            })?),
        };
        let payload_ts = p.timestamp.map(to_millis).transpose()?;
        let key = (t.group.to_string(), t.edge.to_string());
        let rebirth_ms = self.cfg.rebirth_interval.as_millis_i64();
        self.changed.insert(key.clone());
        let node = self.nodes.entry(key).or_default();
        let seen = payload_ts.unwrap_or(received_at).as_millis();
        node.last_seen_ms = Some(node.last_seen_ms.map_or(seen, |t| t.max(seen)));
        let mut want_rebirth = None;
        match t.kind {
            Kind::NBirth => {
                node.online = true;
                node.last_seq = seq;
                node.bd_seq = bd_seq(&p.metrics);
                node.table = Table::from_birth(&p.metrics);
                // A new session of the node: its devices must be born again.
                for d in node.devices.values_mut() {
                    d.online = false;
                }
                readings(
                    &device_id,
                    &p.metrics,
                    &node.table,
                    payload_ts,
                    received_at,
                    out,
                );
            }
            Kind::NDeath => {
                let stale =
                    matches!((bd_seq(&p.metrics), node.bd_seq), (Some(a), Some(b)) if a != b);
                if stale {
                    return Ok(());
                }
                node.online = false;
                let mut devices: Vec<&String> = node
                    .devices
                    .iter()
                    .filter(|(_, d)| d.online)
                    .map(|(id, _)| id)
                    .collect();
                devices.sort();
                // A will carries the time the node connected: the death is now.
                out.events.push(death(&node_id, received_at, NDEATH_CODE));
                for d in devices {
                    let id = fill(&self.cfg.device_id_template, t.group, t.edge, d);
                    if let Ok(id) = DeviceId::try_from(id) {
                        out.events.push(death(&id, received_at, NDEATH_CODE));
                    }
                }
                for d in node.devices.values_mut() {
                    d.online = false;
                }
            }
            Kind::DBirth | Kind::DData | Kind::DDeath | Kind::NData => {
                if let Some(g) = step_seq(node, seq, &node_id) {
                    out.gap = Some(g);
                    want_rebirth = Some(RebirthReason::SeqGap);
                }
                let device = t.device.unwrap_or("");
                match t.kind {
                    Kind::DBirth => {
                        let d = node.devices.entry(device.to_string()).or_default();
                        d.online = true;
                        d.table = Table::from_birth(&p.metrics);
                        readings(
                            &device_id,
                            &p.metrics,
                            &d.table,
                            payload_ts,
                            received_at,
                            out,
                        );
                    }
                    Kind::DDeath => {
                        if let Some(d) = node.devices.get_mut(device) {
                            d.online = false;
                        }
                        out.events.push(death(
                            &device_id,
                            payload_ts.unwrap_or(received_at),
                            DDEATH_CODE,
                        ));
                    }
                    _ => {
                        let table = if t.kind == Kind::NData {
                            node.online.then_some(&node.table)
                        } else {
                            node.devices
                                .get(device)
                                .filter(|d| d.online && node.online)
                                .map(|d| &d.table)
                        };
                        match table {
                            Some(table) => {
                                readings(
                                    &device_id,
                                    &p.metrics,
                                    table,
                                    payload_ts,
                                    received_at,
                                    out,
                                );
                                if out.skipped.iter().any(|(k, _)| *k == Skip::UnknownAlias) {
                                    want_rebirth.get_or_insert(RebirthReason::UnknownAlias);
                                }
                            }
                            None => {
                                let what = if node.online {
                                    format!("device {device:?}")
                                } else {
                                    format!("edge node {:?}", t.edge)
                                };
                                out.reject = Some(Reject::new(
                                    RejectReason::NoBirth,
                                    format!(
                                        "{} from {what} before its BIRTH: its aliases \
                                         and datatypes are unknown until it is born again",
                                        t.kind.as_str()
                                    ),
                                ));
                                want_rebirth = Some(RebirthReason::NoBirth);
                            }
                        }
                    }
                }
            }
            Kind::NCmd | Kind::DCmd => {}
        }
        if let Some(reason) = want_rebirth {
            let due = node
                .last_rebirth_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= rebirth_ms);
            if self.cfg.rebirth && due {
                node.last_rebirth_ms = Some(now_ms);
                out.rebirth = Some(Rebirth {
                    topic: format!("{NAMESPACE}/{}/NCMD/{}", t.group, t.edge),
                    payload: rebirth_payload(now_ms),
                    reason,
                });
            }
        }
        if out
            .readings
            .iter()
            .any(|r| r.metrics.len() > self.cfg.max_metrics)
        {
            // Rejected, but what the message did to the node (birth, seq) stands, and so do
            // the gap and the rebirth request it caused.
            out.readings.clear();
            out.events.clear();
            out.reject = Some(Reject::new(
                RejectReason::TooLarge,
                format!(
                    "more than {} numeric metrics with one timestamp \
                     (ingest.sparkplug.max_metrics)",
                    self.cfg.max_metrics
                ),
            ));
        }
        Ok(())
    }
}

/// Moves the node's `seq` on; a jump forward is a gap. A `seq` at or up to half the ring behind
/// the last one is a redelivery (applied again; the engine drops what it already has) and leaves
/// the counter where it was.
fn step_seq(node: &mut Node, seq: Option<u8>, node_id: &str) -> Option<SeqGap> {
    let (Some(seq), Some(last)) = (seq, node.last_seq) else {
        if seq.is_some() {
            node.last_seq = seq;
        }
        return None;
    };
    let expected = last.wrapping_add(1);
    let ahead = seq.wrapping_sub(expected);
    if ahead == 0 {
        node.last_seq = Some(seq);
        None
    } else if ahead < 128 {
        node.last_seq = Some(seq);
        Some(SeqGap {
            node_id: node_id.to_string(),
            prev: last,
            seq,
            missing: u64::from(ahead),
        })
    } else {
        None
    }
}

fn to_millis(ts: u64) -> Result<Timestamp, Reject> {
    i64::try_from(ts).map(Timestamp::from_millis).map_err(|_| {
        Reject::new(
            RejectReason::BadTimestamp,
            format!("timestamp {ts} is not epoch milliseconds"),
        )
    })
}

/// A device id filled in from the topic: `what` names it in the rejection.
fn topic_id(text: String, what: &str) -> Result<DeviceId, Reject> {
    let bad = |e: DeviceIdError, text: &str| {
        Reject::new(
            RejectReason::BadDeviceId,
            format!("{what} {text:?} from the topic: {e}"),
        )
    };
    if let Err(e) = validate_device_id(&text) {
        return Err(bad(e, &text));
    }
    DeviceId::try_from(text).map_err(|e| bad(e, ""))
}

fn death(device_id: &DeviceId, ts: Timestamp, code: &str) -> DeviceEvent {
    DeviceEvent {
        device_id: device_id.clone(),
        ts,
        kind: EventKind::Error,
        code: code.to_string(),
    }
}

/// The `bdSeq` metric of an NBIRTH or NDEATH.
fn bd_seq(metrics: &[Metric]) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(Value::LongValue(v)) => Some(v),
            Some(Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// The numeric value of a metric, by its datatype (from the metric or the BIRTH's table).
fn numeric(m: &Metric, datatype: u32) -> Result<f64, Skip> {
    if m.is_null == Some(true) {
        return Err(Skip::Null);
    }
    let dt = DataType::try_from(datatype as i32).unwrap_or(DataType::Unknown);
    let v = match (&m.value, dt) {
        (None, _) => return Err(Skip::Null),
        // Signed types: two's complement in the low bits (some encoders sign-extend to 32 bits,
        // some do not; the low bits are the same).
        (Some(Value::IntValue(v)), DataType::Int8) => f64::from(*v as u8 as i8),
        (Some(Value::IntValue(v)), DataType::Int16) => f64::from(*v as u16 as i16),
        (Some(Value::IntValue(v)), DataType::Int32) => f64::from(*v as i32),
        (Some(Value::LongValue(v)), DataType::Int64) => *v as i64 as f64,
        (Some(Value::LongValue(_)), DataType::DateTime) => return Err(Skip::NotNumeric),
        (Some(Value::IntValue(v)), _) => f64::from(*v),
        (Some(Value::LongValue(v)), _) => *v as f64,
        (Some(Value::FloatValue(v)), _) => f64::from(*v),
        (Some(Value::DoubleValue(v)), _) => *v,
        (Some(Value::BooleanValue(b)), _) => f64::from(u8::from(*b)),
        (Some(_), _) => return Err(Skip::NotNumeric),
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Skip::NotFinite)
    }
}

/// The numeric metrics of a message as readings of `device_id`, one per distinct timestamp (in
/// the order first seen); what is not numeric or cannot be named is counted in `out.skipped`.
fn readings(
    device_id: &DeviceId,
    metrics: &[Metric],
    table: &Table,
    payload_ts: Option<Timestamp>,
    received_at: Timestamp,
    out: &mut Outcome,
) {
    let mut by_ts: Vec<(Timestamp, Vec<(String, f64)>)> = Vec::new();
    for m in metrics {
        let (name, birth_type) = match (&m.name, m.alias) {
            (Some(n), _) => (n.as_str(), table.types.get(n).copied()),
            (None, Some(a)) => match table.aliases.get(&a) {
                Some((n, dt)) => (n.as_str(), Some(*dt)),
                None => {
                    out.skip(Skip::UnknownAlias);
                    continue;
                }
            },
            (None, None) => {
                out.skip(Skip::Unnamed);
                continue;
            }
        };
        if name == "bdSeq"
            || name.starts_with("Node Control/")
            || name.starts_with("Device Control/")
        {
            out.skip(Skip::Control);
            continue;
        }
        let datatype = m.datatype.or(birth_type).unwrap_or(0);
        let v = match numeric(m, datatype) {
            Ok(v) => v,
            Err(why) => {
                out.skip(why);
                continue;
            }
        };
        // A metric timestamp beyond i64 is as unusable as a payload one; it falls back.
        let ts = m
            .timestamp
            .and_then(|t| i64::try_from(t).ok())
            .map(Timestamp::from_millis)
            .or(payload_ts)
            .unwrap_or(received_at);
        match by_ts.iter_mut().find(|(t, _)| *t == ts) {
            Some((_, ms)) => match ms.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = v,
                None => ms.push((name.to_string(), v)),
            },
            None => by_ts.push((ts, vec![(name.to_string(), v)])),
        }
    }
    out.readings
        .extend(by_ts.into_iter().map(|(ts, metrics)| Reading {
            device_id: device_id.clone(),
            ts,
            seq: None,
            metrics,
        }));
}

/// The NCMD payload asking an edge node for its births again.
pub fn rebirth_payload(now_ms: i64) -> Vec<u8> {
    let now = u64::try_from(now_ms).unwrap_or(0);
    Payload {
        timestamp: Some(now),
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.to_string()),
            timestamp: Some(now),
            datatype: Some(DataType::Boolean as u32),
            value: Some(Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests;
