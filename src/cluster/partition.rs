//! Which partition a device is in, which instance should own a partition, and how a partitioned
//! NATS subject reads as the MQTT topic the decoders know. Pure.

/// The partition nats-server's `{{partition(P, 1)}}` mapping gives a subject whose first
/// wildcard token is `device`: FNV-1a (32 bits) of the token's bytes, modulo P. forewarn computes
/// it to know which partition a device's state belongs to; the `cluster_nats` test checks it
/// against the server's own mapping.
pub fn of_device(device: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in device.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// The instance that should own `partition` among the live `members`: the highest
/// rendezvous weight (highest random weight hashing). When a member joins or leaves only the
/// partitions it gains or held move; everyone computes the same answer from the same list.
pub fn owner(partition: u32, members: &[String]) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| (weight(partition, m), m.as_str()))
        .map(String::as_str)
}

/// The partitions `me` should own among `members` (which include `me`).
pub fn share(me: &str, members: &[String], partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner(*p, members) == Some(me))
        .collect()
}

fn weight(partition: u32, member: &str) -> u64 {
    // FNV-1a (64 bits) over the member name and the partition number, then a finaliser
    // (splitmix64's) so that neighbouring partitions do not get correlated weights.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.as_bytes().iter().chain(&partition.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The subjects of partition `n`: `PREFIX.N.>`.
pub fn filter(prefix: &str, n: u32) -> String {
    format!("{prefix}.{n}.>")
}

/// Where ticket transitions accepted for devices of partition `n` are recorded:
/// `PREFIX.N.forewarn.transition`, among the partition's device subjects, so a replay meets them
/// in order with the readings.
pub fn transitions(prefix: &str, n: u32) -> String {
    format!("{prefix}.{n}.forewarn.transition")
}

/// Whether a partitioned subject is a partition's transitions subject.
pub fn is_transition(prefix: &str, subject: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(n, rest)| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest == "forewarn.transition"
        })
}

/// The MQTT topic a partitioned subject stands for: `PREFIX.N.devices.d1.telemetry` →
/// `devices/d1/telemetry` (NATS's MQTT listener maps topic levels to subject tokens the same
/// way). `None` when the subject is not under `PREFIX.N.`.
pub fn topic(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (n, rest) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    Some(rest.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("fw-{i}")).collect()
    }

    #[test]
    fn fnv1a_matches_known_values() {
        // FNV-1a 32-bit test vectors: "" → 0x811c9dc5, "a" → 0xe40c292c.
        assert_eq!(of_device("", u32::MAX), 0x811c_9dc5);
        assert_eq!(of_device("a", u32::MAX), 0xe40c_292c);
        assert!(of_device("pump-ü-7", 16) < 16);
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_are_balanced() {
        let members = names(3);
        let shares: Vec<Vec<u32>> = members.iter().map(|m| share(m, &members, 64)).collect();
        let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
        for s in &shares {
            assert!((10..=34).contains(&s.len()), "unbalanced: {shares:?}");
        }
    }

    #[test]
    fn only_the_leavers_partitions_move_when_a_member_leaves() {
        let three = names(3);
        let two: Vec<String> = three[..2].to_vec();
        for p in 0..64 {
            let before = owner(p, &three).unwrap();
            let after = owner(p, &two).unwrap();
            if before != "fw-2" {
                assert_eq!(before, after, "partition {p} moved without need");
            }
        }
        assert_eq!(owner(0, &[]), None);
    }

    #[test]
    fn partitioned_subjects_read_as_topics() {
        assert_eq!(
            topic("fwp", "fwp.12.devices.d1.telemetry").as_deref(),
            Some("devices/d1/telemetry")
        );
        assert_eq!(topic("fwp", "fwpx.1.devices.d1.telemetry"), None);
        assert_eq!(topic("fwp", "fwp.x.devices"), None);
        assert_eq!(topic("fwp", "fwp.3"), None);
        assert_eq!(filter("fwp", 3), "fwp.3.>");
        assert!(is_transition("fwp", &transitions("fwp", 12)));
        assert!(!is_transition("fwp", "fwp.12.devices.forewarn.transition"));
        assert!(!is_transition("fwp", "fwp.x.forewarn.transition"));
    }
}
