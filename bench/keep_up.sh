#!/usr/bin/env bash
# Does forewarn keep up with a tuned Mosquitto? (issue 11, "Keep up")
#
#   bench/keep_up.sh [DEVICES] [READINGS]        (defaults: 10000 devices, 1000000 readings)
#
# All in one run, against one dedicated Mosquitto (free loopback port, its own config:
# max_inflight_messages 1000, max_queued_messages 100000000 — more than any run publishes, so the broker never drops what forewarn has not yet taken, no persistence), with the same stream
# from bench/publisher (a Rust QoS 1 publisher that encodes every payload before the clock starts):
#
# 1. baseline:  `mosquitto_sub -q 1` consumes the stream;
# 2. realistic: `forewarn serve` with models/demo.json (trained on the simulator's fleet; opens
#               tickets at the simulator's rate) consumes it;
# 3. storm:     `forewarn serve` with the same model, every mode's threshold set to 1e-9 and
#               consecutive = 1, so every device opens a ticket for every mode at its first scoring.
#
# readings/s = readings published / (last reading consumed − first publish); for forewarn,
# "consumed" is when /metrics counts every reading decoded once (duplicates apart), polled every
# 0.1 s. Also: published vs processed, forewarn_readings_missing_total, tickets opened, daemon CPU
# seconds (and those of its processing thread), peak RSS (VmHWM), bytes written to its data
# directory and page faults over the pass. Needs
# `cargo build --release`; builds bench/publisher when missing.
# PERF_OUT=DIR also records a CPU profile of the daemon over each pass (`perf record --call-graph dwarf`) into
# DIR/realistic.data and DIR/storm.data.
# The work folder (a few hundred MB for 1M readings) is removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${1:-10000}
READINGS=${2:-1000000}
CONNECTIONS=${CONNECTIONS:-2}
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }

. bench/lib.sh
release_binaries
# What is printed: the value, or `unreadable` (see bench/lib.sh). What is polled: a number.
metric() { metric_read "$API" "$1"; }
# CPU seconds of the daemon's processing thread (the one that reads, commits and applies its own
# share of each group: the critical path when the daemon is CPU-bound).
processor_cpu_seconds() {
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = forewarn-proces ] || continue
        # Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
        sed 's/.*) //' "$t/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }'
        return
    done
    echo 0
}

# Bytes process $1 has had written to storage (`write_bytes` in /proc/PID/io: what it wrote
# to its files, whichever thread wrote them).
written_bytes() { awk '/^write_bytes:/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
# Page faults of process $1 so far (minor + major: fresh or given-back memory touched again).
page_faults() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $8 + $10 }'; }

# CPU seconds per thread name of process $1 (threads of one name summed), largest first:
# where the daemon's CPU goes, beside the whole process's figure.
threads_cpu() {
    for t in /proc/"$1"/task/*; do
        printf '%s\t' "$(cat "$t/comm" 2>/dev/null)"
        sed 's/.*) //' "$t/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($12 + $13) / hz }'
    done | awk -F'\t' '{ s[$1] += $2 } END { for (k in s) printf "%.1f %s\n", s[k], k }' |
        sort -rn | awk '{ printf "%s%s=%s", (NR > 1 ? ", " : ""), $2, $1 }'
}

echo "== machine ($(date -u '+%Y-%m-%d %H:%M UTC'))"
machine_line

echo "== Mosquitto"
start_mosquitto 100000000 "${MAX_INFLIGHT:-1000}"
BROKER_PID=${PIDS[-1]}
BROKER="127.0.0.1:$PORT"
echo "broker mqtt://$BROKER ($("$MOSQ" -h 2>/dev/null | head -1)), config: $(grep -v '^#' "$WORK/mosquitto.conf" | tail -n +2 | paste -sd ';')"

echo "== data"
simulated_history "$BIN" "$DEVICES" "$READINGS"
mkdir -p "$WORK/realistic" "$WORK/storm"
cp models/demo.json "$WORK/realistic/demo.json"
jq '.name = "storm" | .consecutive = 1 | .modes[] |= (.threshold = 1e-9 | .levels = null)' \
    models/demo.json >"$WORK/storm/storm.json"

publish() { # $1: label; prints the publisher's output, sets T0 (first publish, epoch s)
    "$PUB" --broker "$BROKER" --telemetry "$WORK/fleet/telemetry.csv" --events "$WORK/fleet/events.csv" \
        --connections "$CONNECTIONS" >"$WORK/pub-$1.txt"
    T0=$(field start_epoch <"$WORK/pub-$1.txt")
    PUB_RATE=$(field rate <"$WORK/pub-$1.txt")
    PUB_N=$(field published <"$WORK/pub-$1.txt")
    PUB_READINGS=$(field readings <"$WORK/pub-$1.txt")
}

declare -A RATE
echo "== baseline: mosquitto_sub -q 1"
L0=$(loadavg)
BROKER_CPU0=$(cpu_seconds "$BROKER_PID")
mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -i "bench-sub-$$" -t 'devices/+/telemetry' -t 'devices/+/events' -C "$TOTAL" >/dev/null &
SUB=$!
PIDS+=($SUB)
sleep 0.5
publish baseline
wait "$SUB"
T1=$(now)
BROKER_CPU=$(echo "$(cpu_seconds "$BROKER_PID") - $BROKER_CPU0" | bc -l)
RATE[baseline]=$(echo "$PUB_READINGS / ($T1 - $T0)" | bc -l)
printf 'baseline: %.0f readings/s (%.1f s); publisher alone %s msg/s, %s messages acked; the broker (mosquitto) %.1f s over the pass; load average before %s, after %s\n' \
    "${RATE[baseline]}" "$(echo "$T1 - $T0" | bc -l)" "$PUB_RATE" "$PUB_N" "$BROKER_CPU" "$L0" "$(loadavg)"

start_daemon() { # $1: data dir, $2: models dir
    API=127.0.0.1:$(free_port)
    # A client id of its own: a daemon resuming another's persistent session would also receive
    # whatever that session still holds.
    FOREWARN__BROKER__CLIENT_ID="forewarn-bench-$RANDOM-$RANDOM" \
        FOREWARN__INGEST__BROKER_DROPS_TOPIC='$SYS/broker/publish/messages/dropped' \
        "$BIN" serve --broker "mqtt://$BROKER" --listen "$API" --data-dir "$1" --models "$2" >"$1.log" 2>&1 &
    DAEMON=$!
    PIDS+=($DAEMON)
    wait_ready "$API" "$1.log" 300
}
duplicates() { metric 'forewarn_readings_dropped_total{reason="duplicate"}'; }
processed() { echo $(( $(metric_num "$API" forewarn_readings_total) - $(metric_num "$API" 'forewarn_readings_dropped_total{reason="duplicate"}') )); }
# The broker's own drop count as the daemon last heard it, said plainly: a count the broker
# reported; none reported (-1: Mosquitto publishes $SYS/broker/publish/messages/dropped, every
# sys_interval, only once it differs from 0, i.e. after a first drop); or not read at all.
broker_dropped() {
    local v
    v=$(metric forewarn_broker_dropped_messages)
    case "$v" in
        unreadable) echo "unreadable (the scrape of /metrics failed or had no forewarn_broker_dropped_messages line)" ;;
        -1) echo "none reported (Mosquitto publishes its count only after a first drop)" ;;
        *) echo "$v (reported by the broker)" ;;
    esac
}
wait_processed() { # every published reading decoded once, at most 10 min
    for _ in $(seq 1 6000); do
        [ "$(processed)" -ge "$N_READINGS" ] && return 0
        sleep 0.1
    done
    echo "not every reading was processed: $(processed) of $N_READINGS" >&2
}

for run in realistic storm; do
    echo "== forewarn serve, $run model"
    start_daemon "$WORK/data-$run" "$WORK/$run"
    L0=$(loadavg)
    BROKER_CPU0=$(cpu_seconds "$BROKER_PID")
    CPU0=$(cpu_seconds "$DAEMON")
    PCPU0=$(processor_cpu_seconds "$DAEMON")
    W0=$(written_bytes "$DAEMON")
    F0=$(page_faults "$DAEMON")
    if [ -n "${PERF_OUT:-}" ]; then # a CPU profile of the daemon over the pass
        mkdir -p "$PERF_OUT"
        perf record -q --call-graph dwarf,32768 -F 199 -p "$DAEMON" -o "$PERF_OUT/$run.data" 2>/dev/null &
        PERF_PID=$!
    fi
    publish "$run"
    wait_processed
    T1=$(now)
    [ -n "${PERF_OUT:-}" ] && { kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; }
    PROCESSED=$(processed)
    CPU1=$(cpu_seconds "$DAEMON")
    PCPU1=$(processor_cpu_seconds "$DAEMON")
    RSS=$(peak_rss_mb "$DAEMON")
    WRITTEN=$(( $(written_bytes "$DAEMON") - W0 ))
    FAULTS=$(( $(page_faults "$DAEMON") - F0 ))
    THREADS=$(threads_cpu "$DAEMON")
    BROKER_CPU=$(echo "$(cpu_seconds "$BROKER_PID") - $BROKER_CPU0" | bc -l)
    MISSING=$(metric forewarn_readings_missing_total)
    BROKER_DROPPED=$(broker_dropped)
    LATE=$(metric 'forewarn_readings_dropped_total{reason="late"}')
    SCORINGS=$(metric forewarn_scorings_total)
    TICKETS=$(metric 'forewarn_ticket_changes_total{kind="opened"}')
    UPDATES=$(metric 'forewarn_ticket_changes_total{kind="updated"}')
    SETTLED=$(metric 'forewarn_ticket_changes_total{kind="settled"}')
    COMMITS=$(metric forewarn_commit_seconds_count)
    COMMIT_S=$(metric_num "$API" forewarn_commit_seconds_sum)
    RATE[$run]=$(echo "$PUB_READINGS / ($T1 - $T0)" | bc -l)
    printf '%s: %.0f readings/s (%.1f s) = %.2fx baseline; published %s readings (%s messages, publisher alone %s msg/s), processed %s, missing %s, broker-reported drops %s, duplicates %s, late %s; scorings %s, tickets opened %s (updated %s, settled %s); CPU %.1f s (%.2f cores; processing thread %.1f s), peak RSS %s MB; %s commits, %.1f s in commits; load average before %s, after %s\n' \
        "$run" "${RATE[$run]}" "$(echo "$T1 - $T0" | bc -l)" "$(echo "${RATE[$run]} / ${RATE[baseline]}" | bc -l)" \
        "$PUB_READINGS" "$PUB_N" "$PUB_RATE" "$PROCESSED" "$MISSING" "$BROKER_DROPPED" "$(duplicates)" "$LATE" "$SCORINGS" "$TICKETS" "$UPDATES" "$SETTLED" \
        "$(echo "$CPU1 - $CPU0" | bc -l)" "$(echo "($CPU1 - $CPU0) / ($T1 - $T0)" | bc -l)" "$(echo "$PCPU1 - $PCPU0" | bc -l)" "$RSS" "$COMMITS" "$COMMIT_S" "$L0" "$(loadavg)"
    printf '%s: daemon CPU by thread since start (s): %s; the broker (mosquitto) %.1f s over the pass; the daemon wrote %.0f MB to its data directory over the pass (%.0f bytes per reading), %s page faults\n' \
        "$run" "$THREADS" "$BROKER_CPU" "$(echo "$WRITTEN / 1000000" | bc -l)" "$(echo "$WRITTEN / $PUB_READINGS" | bc -l)" "$FAULTS"
    kill -TERM "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
    rm -rf "$WORK/data-$run"
done
echo "== targets (issue 11): realistic >= 1.0x baseline, storm >= 0.8x"
printf 'realistic %.2fx, storm %.2fx\n' "$(echo "${RATE[realistic]} / ${RATE[baseline]}" | bc -l)" "$(echo "${RATE[storm]} / ${RATE[baseline]}" | bc -l)"
echo "== done"
