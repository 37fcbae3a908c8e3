#!/usr/bin/env bash
# Cluster mode's throughput at N = 1, 2, 3 instances against a NATS-only baseline, in one run
# (issue 15, "Drills and figures").
#
#   bench/cluster.sh [DEVICES] [READINGS]        (defaults: 2000 devices, 200000 readings)
#
# Each of the four runs gets a fresh nats-server (JetStream in a new store directory, the subject
# mapping of deploy/nats/nats-server.conf with P = 16 partitions, its MQTT listener for the
# dispatcher's publishes), so every run starts from an empty stream:
#
# 1. baseline: `examples/cluster_bench.rs consume` — one durable pull consumer per partition
#              that acknowledges each message and does nothing else;
# 2. N = 1, 2, 3: that many `forewarn serve --cluster` processes, each with its own data
#              directory and API port, started first and waited for until the partitions are
#              shared (every instance's /api/v1/cluster shows N members and none replaying, and
#              the owned sets cover the 16 partitions).
#
# Then `examples/cluster_bench.rs publish` sends the history (`forewarn simulate`, hourly
# readings), encoded before its clock starts, to JetStream with 2,000 acknowledgements
# outstanding. readings/s = readings published / (last message consumed − first publish); for
# forewarn "consumed" is when the instances' forewarn_readings_total minus duplicates, summed,
# reaches the readings published (polled every 0.1 s). Also: the publisher's own rate, each
# forewarn's CPU seconds, and the load average.
#
# BIN (default target/release/forewarn) and the example are built by the caller or here:
#   cargo build --release && cargo build --release --example cluster_bench
# PROFILE=debug uses target/debug instead. On a 2-core machine every process (nats-server, the
# publisher, N forewarns) shares the same two cores: the ratios show overhead, not scale.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${1:-2000}
READINGS=${2:-200000}
PROFILE=${PROFILE:-release}
BIN=${FOREWARN_BIN:-target/$PROFILE/forewarn}
BENCH=target/$PROFILE/examples/cluster_bench
PARTITIONS=16
NATS=${FOREWARN_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --profile $PROFILE first" >&2; exit 2; }
[ -x "$BENCH" ] || { echo "no $BENCH: cargo build --profile $PROFILE --example cluster_bench first" >&2; exit 2; }
[ -x "$NATS" ] || { echo "no nats-server (set FOREWARN_NATS_SERVER)" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }

. bench/lib.sh
# The metrics polled here are summed: an unreadable one counts as 0 until the next poll.
metric() { metric_num "$1" "$2"; }

echo "== machine ($(date -u '+%Y-%m-%d %H:%M UTC'))"
machine_line
echo "$("$NATS" --version); forewarn $PROFILE build"

echo "== data"
simulated_history "$BIN" "$DEVICES" "$READINGS"

start_nats() { # $1: run label; sets NATS_URL, MQTT_PORT, NATS_PID
    local port; port=$(free_port); MQTT_PORT=$(free_port)
    mkdir -p "$WORK/nats-$1"
    cat >"$WORK/nats-$1/nats.conf" <<CONF
listen: "127.0.0.1:$port"
server_name: "fw-bench-$port"
mqtt { listen: "127.0.0.1:$MQTT_PORT" }
jetstream { store_dir: "$WORK/nats-$1/js" }
mappings = {
  "devices.*.*": "fwp.{{partition($PARTITIONS,1)}}.devices.{{wildcard(1)}}.{{wildcard(2)}}"
}
CONF
    "$NATS" -c "$WORK/nats-$1/nats.conf" >"$WORK/nats-$1/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=($NATS_PID)
    wait_port "$port"
    NATS_URL="nats://127.0.0.1:$port"
}
stop_nats() { kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; }

publish() { # $1: label; sets T0 (first publish, epoch ms), PUB_RATE
    "$BENCH" publish "$NATS_URL" "$WORK/fleet/telemetry.csv" "$WORK/fleet/events.csv" >"$WORK/pub-$1.txt"
    T0=$(field start_ms <"$WORK/pub-$1.txt")
    PUB_RATE=$(field rate <"$WORK/pub-$1.txt")
}

declare -A RATE
echo "== baseline: a JetStream consumer per partition that only acknowledges"
start_nats baseline
L0=$(loadavg)
"$BENCH" consume "$NATS_URL" FOREWARN fwp "$PARTITIONS" "$TOTAL" >"$WORK/consume.txt" &
SUB=$!
PIDS+=($SUB)
for _ in $(seq 1 100); do grep -q ready "$WORK/consume.txt" && break; sleep 0.1; done
publish baseline
wait "$SUB"
T1=$(field last_ms <"$WORK/consume.txt")
RATE[baseline]=$(echo "$N_READINGS * 1000 / ($T1 - $T0)" | bc -l)
printf 'baseline: %.0f readings/s (%.2f s for %s messages); publisher alone %s msg/s; load average before %s, after %s\n' \
    "${RATE[baseline]}" "$(echo "($T1 - $T0) / 1000" | bc -l)" "$TOTAL" "$PUB_RATE" "$L0" "$(loadavg)"
stop_nats

settled() { # $@: API addresses; true when they share every partition and none replays
    local n=$# owned=""
    for api in "$@"; do
        local v; v=$(curl -s -H "Authorization: Bearer bench" "http://$api/api/v1/cluster") || return 1
        [ "$(jq '.members | length' <<<"$v")" = "$n" ] || return 1
        [ "$(jq '.replaying | length' <<<"$v")" = 0 ] || return 1
        owned="$owned $(jq -r '.owned[]' <<<"$v" | paste -sd' ')"
    done
    [ "$(tr ' ' '\n' <<<"$owned" | grep -c .)" = "$PARTITIONS" ]
}

for N in 1 2 3; do
    echo "== forewarn serve --cluster, N = $N"
    start_nats "n$N"
    APIS=(); DAEMONS=()
    for i in $(seq 1 "$N"); do
        api=127.0.0.1:$(free_port)
        FOREWARN_API_TOKEN=bench FOREWARN__CLUSTER__INSTANCE="fw-$i" FOREWARN__BROKER__CLIENT_ID="fw-bench-$N-$i" \
            "$BIN" serve --cluster "$NATS_URL" --broker "mqtt://127.0.0.1:$MQTT_PORT" --listen "$api" \
            --data-dir "$WORK/data-$N-$i" --models models >"$WORK/serve-$N-$i.log" 2>&1 &
        DAEMONS+=($!); PIDS+=($!); APIS+=("$api")
    done
    for _ in $(seq 1 600); do settled "${APIS[@]}" && break; sleep 0.1; done
    settled "${APIS[@]}" || { echo "the partitions were never shared; logs:" >&2; tail -5 "$WORK"/serve-"$N"-*.log >&2; exit 1; }
    L0=$(loadavg)
    CPU0=(); for d in "${DAEMONS[@]}"; do CPU0+=("$(cpu_seconds "$d")"); done
    processed() {
        local sum=0
        for api in "${APIS[@]}"; do
            sum=$(( sum + $(metric "$api" forewarn_readings_total) - $(metric "$api" 'forewarn_readings_dropped_total{reason="duplicate"}') ))
        done
        echo "$sum"
    }
    publish "n$N"
    for _ in $(seq 1 6000); do [ "$(processed)" -ge "$N_READINGS" ] && break; sleep 0.1; done
    T1=$(now_ms)
    PROCESSED=$(processed)
    CPU=""; for k in "${!DAEMONS[@]}"; do CPU="$CPU $(echo "$(cpu_seconds "${DAEMONS[$k]}") - ${CPU0[$k]}" | bc -l | xargs printf '%.1f')"; done
    RATE[$N]=$(echo "$N_READINGS * 1000 / ($T1 - $T0)" | bc -l)
    printf 'N = %s: %.0f readings/s (%.2f s) = %.2fx baseline; processed %s of %s; publisher alone %s msg/s; CPU s per instance:%s; load average before %s, after %s\n' \
        "$N" "${RATE[$N]}" "$(echo "($T1 - $T0) / 1000" | bc -l)" "$(echo "${RATE[$N]} / ${RATE[baseline]}" | bc -l)" \
        "$PROCESSED" "$N_READINGS" "$PUB_RATE" "$CPU" "$L0" "$(loadavg)"
    for d in "${DAEMONS[@]}"; do kill -TERM "$d" 2>/dev/null || true; done
    for d in "${DAEMONS[@]}"; do wait "$d" 2>/dev/null || true; done
    stop_nats
done
echo "== done"
