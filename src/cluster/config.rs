//! `[cluster]`: several forewarn instances sharing one fleet through NATS JetStream. Off unless
//! `url` is set (or `forewarn serve --cluster nats://HOST:PORT`): the single-machine mode (MQTT
//! and sled, nothing else) stays the default.

use crate::domain::Dur;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The NATS server, `nats://HOST:PORT`, or several servers of one NATS cluster separated by
    /// commas (`nats://a:4222,nats://b:4222,nats://c:4222`): the instance connects to one of
    /// them and moves to another when it loses it. Unset: cluster mode is off and readings come
    /// from the MQTT broker of `[broker]` as usual.
    pub url: Option<String>,
    /// How many servers of the NATS cluster keep a copy of the stream and of every bucket
    /// (1 to 5; 3 survives the loss of any one server). More than the cluster has servers is
    /// refused by the server at start. Used when forewarn makes the stream and buckets, and
    /// applied to existing ones at start.
    pub replicas: usize,
    /// This instance's name in the leases; unset: `fw-` and random hex chosen at each start
    /// (a restarted instance is then a new member, which is what a lease expiry assumes).
    pub instance: Option<String>,
    /// How many partitions device subjects are spread over. Must equal the `partition(P, …)`
    /// count of the server's subject mapping (see README, "Cluster mode"); changing it
    /// re-partitions the fleet and needs an empty stream.
    pub partitions: u32,
    /// The JetStream stream that keeps the partitioned device subjects.
    pub stream: String,
    /// First token of the partitioned subjects: the server maps `devices.ID.KIND` to
    /// `PREFIX.N.devices.ID.KIND`, where N is the device's partition.
    pub subject_prefix: String,
    /// Key-value buckets are named `BUCKETS-leases` (members and partition leases),
    /// `BUCKETS-tickets` (the shared ticket-id secret), `BUCKETS-claims` (fleet-wide ticket
    /// claims, kept `claims_max_age`) and `BUCKETS-state` (partition checkpoints).
    pub buckets: String,
    /// The stream drops messages older than this. A partition's new owner starts from the
    /// partition's checkpoint (`checkpoint_every`) and replays what the stream holds after it;
    /// with no checkpoint readable it rebuilds from the readings the stream still holds.
    /// Default 7 days: several times the longest feature window and a long weekend's outage.
    /// Applied to an existing stream at start.
    pub stream_max_age: Dur,
    /// The stream drops its oldest messages beyond this many bytes; unset: no byte limit (only
    /// `stream_max_age`). Applied to an existing stream at start.
    pub stream_max_bytes: Option<u64>,
    /// Fleet-wide ticket claims expire after this long. At least `stream_max_age`: a claim is
    /// written after the message that made it was stored, so it outlives every message of the
    /// stream that could be redelivered and make the same change again. Applied to an existing
    /// bucket at start.
    pub claims_max_age: Dur,
    /// A partition's lease lasts this long unless renewed (every third of it); an instance that
    /// dies loses its partitions after at most this long.
    pub lease: Dur,
    /// JetStream redelivers a message not acknowledged within this time (to the partition's
    /// next owner, when its owner died holding it).
    pub ack_wait: Dur,
    /// Messages a partition's consumer may have delivered and not yet acknowledged.
    pub max_ack_pending: i64,
    /// A partition's owner writes a checkpoint (its devices' states and tickets, and the stream
    /// sequence they cover) to the bucket `BUCKETS-state` after every this many of the
    /// partition's messages, and whenever it hands the partition on; the next owner resumes
    /// from it and replays only what came after. 0: only at hand-off. Each checkpoint pauses the
    /// partition until what it forwarded is committed, and writes every device of the partition.
    pub checkpoint_every: u64,
    /// Where the other instances reach this instance's API (`http://HOST:PORT` or `https://…`),
    /// advertised in its membership record for the fleet-wide API. Unset: `http://` and the
    /// address `api.listen` bound, with `127.0.0.1` for an unspecified address — right only
    /// when every instance runs on this host.
    pub api_url: Option<String>,
    /// How long an instance waits for another one's API when it answers for the fleet (a list
    /// or a ticket gathered from every instance, a transition forwarded to the owner); one that
    /// does not answer in time makes the request fail with 503 naming it.
    pub peer_timeout: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            replicas: 1,
            instance: None,
            partitions: 16,
            stream: "FOREWARN".into(),
            subject_prefix: "fwp".into(),
            buckets: "forewarn".into(),
            stream_max_age: Dur::hours(7 * 24),
            stream_max_bytes: None,
            claims_max_age: Dur::hours(7 * 24),
            lease: Dur::secs(10),
            ack_wait: Dur::secs(30),
            max_ack_pending: 4096,
            checkpoint_every: 10_000,
            api_url: None,
            peer_timeout: Dur::secs(2),
        }
    }
}

/// Characters NATS accepts in stream, bucket and subject-token names without quoting.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Config {
    /// Checks without I/O; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(u) = &self.url {
            for server in u.split(',').map(str::trim) {
                if !server.starts_with("nats://") || server.len() == "nats://".len() {
                    return Err((
                        "cluster.url",
                        format!(
                            "each server must be a nats://HOST:PORT URL (several separated by \
                             commas); found {server:?}"
                        ),
                    ));
                }
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster.replicas", "must be between 1 and 5".into()));
        }
        if let Some(i) = &self.instance {
            if !is_name(i) {
                return Err((
                    "cluster.instance",
                    "letters, digits, '-' and '_' only".into(),
                ));
            }
        }
        if !(1..=4096).contains(&self.partitions) {
            return Err(("cluster.partitions", "must be between 1 and 4096".into()));
        }
        for (key, v) in [
            ("cluster.stream", &self.stream),
            ("cluster.subject_prefix", &self.subject_prefix),
            ("cluster.buckets", &self.buckets),
        ] {
            if !is_name(v) {
                return Err((key, "letters, digits, '-' and '_' only".into()));
            }
        }
        if self.lease.std() < std::time::Duration::from_secs(1) {
            return Err(("cluster.lease", "must be at least 1s".into()));
        }
        if self.ack_wait.std() < std::time::Duration::from_secs(1) {
            return Err(("cluster.ack_wait", "must be at least 1s".into()));
        }
        if let Some(u) = &self.api_url {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.contains(char::is_whitespace)
            {
                return Err((
                    "cluster.api_url",
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.peer_timeout.std() < std::time::Duration::from_millis(100) {
            return Err(("cluster.peer_timeout", "must be at least 100ms".into()));
        }
        if self.stream_max_age.std() < std::time::Duration::from_secs(60) {
            return Err(("cluster.stream_max_age", "must be at least 1m".into()));
        }
        if self.claims_max_age.std() < self.stream_max_age.std() {
            return Err((
                "cluster.claims_max_age",
                "must be at least cluster.stream_max_age (a claim must outlive the messages \
                 that could make its change again)"
                    .into(),
            ));
        }
        if self
            .stream_max_bytes
            .is_some_and(|b| b < 1024 * 1024 || b > i64::MAX as u64)
        {
            return Err((
                "cluster.stream_max_bytes",
                "must be at least 1 MiB (or unset)".into(),
            ));
        }
        if self.max_ack_pending < 1 {
            return Err(("cluster.max_ack_pending", "must be at least 1".into()));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// The servers `url` names, in its order (empty when cluster mode is off).
    pub fn servers(&self) -> Vec<String> {
        self.url
            .iter()
            .flat_map(|u| u.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> Config {
        Config {
            url: Some(url.into()),
            ..Config::default()
        }
    }

    #[test]
    fn several_servers_are_a_comma_separated_list() {
        let c = with_url("nats://a:4222, nats://b:4222,nats://c:4222");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.servers(),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(with_url("nats://a:4222").servers(), ["nats://a:4222"]);
        assert!(Config::default().servers().is_empty());
    }

    #[test]
    fn a_server_that_is_not_a_nats_url_is_named() {
        let (key, why) = with_url("nats://a:4222,b:4222").validate().unwrap_err();
        assert_eq!(key, "cluster.url");
        assert!(why.contains("\"b:4222\""), "{why}");
        assert!(with_url("nats://a:4222,").validate().is_err());
        assert!(with_url("nats://").validate().is_err());
    }

    #[test]
    fn replicas_are_one_to_five() {
        for (n, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
            let c = Config {
                replicas: n,
                ..Config::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "replicas {n}");
        }
    }
}
