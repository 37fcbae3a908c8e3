#!/usr/bin/env bash
# What a crash costs at start-up: the step log replayed after `kill -9` (`store.snapshot_every`).
#
#   bench/replay.sh [DEVICES] [READINGS]        (defaults: 10000 devices, 1000000 readings)
#
# One dedicated Mosquitto (as bench/keep_up.sh's), `forewarn serve` with the demo model and no
# checkpoint while the stream flows (`store.snapshot_every` above READINGS), the simulated
# history published by bench/publisher; once every reading is processed the daemon is killed
# (SIGKILL: no checkpoint at shutdown) and started again on the same data directory with the
# same settings. Prints how long the restart took until /readyz answered 200 (the step log of
# every device replayed first), the steps in the log, and the same for a clean restart (SIGTERM:
# a checkpoint at shutdown, nothing to replay) as the baseline.
# Needs `cargo build --release`; builds bench/publisher when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${1:-10000}
READINGS=${2:-1000000}

. bench/lib.sh
release_binaries

echo "== machine ($(date -u '+%Y-%m-%d %H:%M UTC'))"
machine_line
start_mosquitto 100000000 1000
BROKER="127.0.0.1:$PORT"
simulated_history "$BIN" "$DEVICES" "$READINGS"
mkdir -p "$WORK/models"
cp models/demo.json "$WORK/models/demo.json"
CLIENT="forewarn-replay-$RANDOM-$RANDOM"

start() { # starts the daemon on $WORK/data; sets DAEMON and API
    API=127.0.0.1:$(free_port)
    FOREWARN__BROKER__CLIENT_ID="$CLIENT" FOREWARN__STORE__SNAPSHOT_EVERY=$((READINGS * 2)) \
        "$BIN" serve --broker "mqtt://$BROKER" --listen "$API" --data-dir "$WORK/data" \
        --models "$WORK/models" >>"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    PIDS+=($DAEMON)
}
restart() { # $1: signal; stops the daemon with it, starts it again; sets READY_S (seconds to ready)
    kill "-$1" "$DAEMON"
    wait "$DAEMON" 2>/dev/null || true
    local t0
    t0=$(now)
    start
    wait_ready "$API" "$WORK/daemon.log" 6000
    READY_S=$(echo "$(now) - $t0" | bc -l)
}

start
wait_ready "$API" "$WORK/daemon.log" 300
"$PUB" --broker "$BROKER" --telemetry "$WORK/fleet/telemetry.csv" --events "$WORK/fleet/events.csv" \
    --connections 2 >"$WORK/pub.txt"
for _ in $(seq 1 6000); do
    [ "$(metric_num "$API" forewarn_readings_total)" -ge "$N_READINGS" ] && break
    sleep 0.1
done
echo "processed $(metric_read "$API" forewarn_readings_total) readings; the data directory holds $(du -sm "$WORK/data" | cut -f1) MB"
restart KILL
crash=$READY_S
replayed=$(grep -o 'replayed the step log of [0-9]* device' "$WORK/daemon.log" | tail -1 | grep -o '[0-9]*' || echo 0)
printf 'after kill -9: ready in %.1f s (%s readings and %s events logged since the last checkpoint, the step log of %s devices replayed)\n' \
    "$crash" "$N_READINGS" "$N_EVENTS" "$replayed"
restart TERM
printf 'after a clean stop (checkpoint at shutdown): ready in %.1f s\n' "$READY_S"
echo "== done"
