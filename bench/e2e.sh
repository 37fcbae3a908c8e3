#!/usr/bin/env bash
# End-to-end throughput of forewarn behind Mosquitto, compared with the broker alone.
#
#   bench/e2e.sh [DEVICES] [READINGS]        (defaults: 10000 devices, 1000000 readings)
#
# 1. Starts a dedicated Mosquitto on a free loopback port (installing it if missing) with the
#    settings forewarn's figures need: QoS 1 queues large enough that a subscriber falling behind
#    is not dropped (Mosquitto's default keeps 1000 per client and drops the rest).
# 2. Writes a simulated fleet's history (`forewarn simulate`) and a model trained on a smaller
#    simulated fleet (`forewarn train`).
# 3. Baseline: a trivial QoS 1 subscriber (mosquitto_sub) consumes the stream `forewarn replay
#    --rate max` publishes; readings/s from the first publish to the last message consumed.
# 4. forewarn: `forewarn serve` consumes the same stream; readings/s until /metrics counts every
#    reading processed; CPU seconds and peak RSS of the daemon; published vs processed.
# 5. Latency: a fresh daemon fed at 50% of the rate measured in 4; reading→ticket p50/p99 from
#    the daemon's forewarn_reading_to_ticket_seconds histogram.
#
# Needs a release build (cargo build --release). Everything runs on loopback; the work folder is
# removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${1:-10000}
READINGS=${2:-1000000}
BIN=${FOREWARN_BIN:-target/release/forewarn}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 2; }

. bench/lib.sh
metric() { metric_read "$API" "$1"; }

echo "== machine"
machine_line

echo "== Mosquitto"
start_mosquitto 0 1000
BROKER="mqtt://127.0.0.1:$PORT"
echo "broker $BROKER ($("$MOSQ" -h 2>/dev/null | head -1))"

echo "== data"
simulated_history "$BIN" "$DEVICES" "$READINGS"
"$BIN" simulate --out "$WORK/train" --devices 150 --days 45 --seed 12 >/dev/null
mkdir -p "$WORK/models"
"$BIN" train --telemetry "$WORK/train/telemetry.csv" --events "$WORK/train/events.csv" \
    --devices "$WORK/train/devices.csv" --out "$WORK/models/sim.json" >"$WORK/train.log" 2>&1 \
    || { echo "training failed (see below); continuing without a model"; tail -5 "$WORK/train.log"; rm -f "$WORK/models/sim.json"; }

echo "== baseline: mosquitto_sub (QoS 1) consuming what forewarn replay publishes"
mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -i "bench-sub-$$" -t 'devices/+/telemetry' -t 'devices/+/events' -C "$TOTAL" >/dev/null &
SUB=$!
PIDS+=($SUB)
sleep 0.5
T0=$(now)
"$BIN" replay --telemetry "$WORK/fleet/telemetry.csv" --events "$WORK/fleet/events.csv" --broker "$BROKER" --rate max | tee "$WORK/replay-baseline.txt"
wait "$SUB"
T1=$(now)
BASE_RATE=$(echo "$N_READINGS / ($T1 - $T0)" | bc -l)
printf 'baseline: %.0f readings/s (%.1f s)\n' "$BASE_RATE" "$(echo "$T1 - $T0" | bc -l)"

start_daemon() { # $1: data dir
    API=127.0.0.1:$(free_port)
    # A client id of its own: a daemon resuming another's persistent session would also receive
    # whatever that session still holds.
    FOREWARN__BROKER__CLIENT_ID="forewarn-bench-$RANDOM-$RANDOM" \
        "$BIN" serve --broker "$BROKER" --listen "$API" --data-dir "$1" --models "$WORK/models" >"$1.log" 2>&1 &
    DAEMON=$!
    PIDS+=($DAEMON)
    wait_ready "$API" "$1.log" 200
}
# Until every published reading was processed once (duplicates are counted apart), at most 5 min.
processed() { echo $(( $(metric_num "$API" forewarn_readings_total) - $(metric_num "$API" 'forewarn_readings_dropped_total{reason="duplicate"}') )); }
wait_processed() {
    for _ in $(seq 1 3000); do
        [ "$(processed)" -ge "$N_READINGS" ] && return 0
        sleep 0.1
    done
    echo "not every reading was processed: $(processed) of $N_READINGS" >&2
}
stop_daemon() { kill -TERM "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; }

echo "== forewarn serve consuming the same stream at full speed"
start_daemon "$WORK/data1"
CPU0=$(cpu_seconds "$DAEMON")
T0=$(now)
"$BIN" replay --telemetry "$WORK/fleet/telemetry.csv" --events "$WORK/fleet/events.csv" --broker "$BROKER" --rate max | tee "$WORK/replay-forewarn.txt"
wait_processed
T1=$(now)
PROCESSED=$(processed)
DUPLICATES=$(metric 'forewarn_readings_dropped_total{reason="duplicate"}')
CPU1=$(cpu_seconds "$DAEMON")
RSS=$(peak_rss_mb "$DAEMON")
FW_RATE=$(echo "$N_READINGS / ($T1 - $T0)" | bc -l)
TICKETS=$(metric 'forewarn_ticket_changes_total{kind="opened"}')
stop_daemon
printf 'forewarn: %.0f readings/s (%.1f s), published %s, processed %s, CPU %.1f s (%.2f cores), peak RSS %s MB, tickets opened %s, duplicates %s\n' \
    "$FW_RATE" "$(echo "$T1 - $T0" | bc -l)" "$N_READINGS" "$PROCESSED" "$(echo "$CPU1 - $CPU0" | bc -l)" \
    "$(echo "($CPU1 - $CPU0) / ($T1 - $T0)" | bc -l)" "$RSS" "$TICKETS" "$DUPLICATES"
printf 'ratio forewarn / broker-only baseline: %.2f\n' "$(echo "$FW_RATE / $BASE_RATE" | bc -l)"

echo "== latency at 50% of that rate"
HALF=$(printf '%.0f' "$(echo "$FW_RATE / 2" | bc -l)")
start_daemon "$WORK/data2"
"$BIN" replay --telemetry "$WORK/fleet/telemetry.csv" --events "$WORK/fleet/events.csv" --broker "$BROKER" --rate "$HALF" | tee "$WORK/replay-half.txt"
wait_processed
curl -s "http://$API/metrics" >"$WORK/metrics-half.txt"
stop_daemon
# Quantiles from the cumulative histogram buckets (upper bound of the bucket holding the rank).
awk -v name=forewarn_reading_to_ticket_seconds '
    index($1, name "_bucket{") == 1 { match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cum[n] = $2 }
    $1 == name "_count" { count = $2 }
    END {
        if (count == 0) { print "reading->ticket latency: no ticket changes at this rate"; exit }
        split("0.5 0.99", qs, " ")
        for (i = 1; i <= 2; i++) { r = qs[i] * count; for (j = 1; j <= n; j++) if (cum[j] >= r) { printf "reading->ticket p%s <= %s s (%d ticket changes)\n", qs[i] * 100, les[j], count; break } }
    }' "$WORK/metrics-half.txt"
echo "== done"
