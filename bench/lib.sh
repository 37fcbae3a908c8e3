# The set-up the scripts in bench/ share; sourced (`. bench/lib.sh`) after `set -euo pipefail`
# and a `cd` to the repository, never run on its own.
#
# Gives: WORK (a fresh work folder, removed at exit unless KEEP=1) and PIDS (processes killed at
# exit), loopback ports, clocks, /proc readings, /metrics scrapes that say when they could not
# read, and the simulated history every benchmark publishes.

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { while :; do p=$((20000 + RANDOM % 40000)); accepts "$p" || { echo "$p"; return; }; done; }
wait_port() { for _ in $(seq 1 100); do accepts "$1" && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }
# wait_ready API LOG TENTHS: until http://API/readyz answers 200, at most TENTHS × 0.1 s; else
# the daemon's log tail on stderr and failure.
wait_ready() {
    for _ in $(seq 1 "$3"); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    echo "daemon not ready; its log:" >&2; tail -20 "$2" >&2; return 1
}
# release_binaries: sets BIN (FOREWARN_BIN, else the release build; stops without it) and PUB
# (bench/publisher's binary, built when missing).
release_binaries() {
    BIN=${FOREWARN_BIN:-target/release/forewarn}
    PUB=bench/publisher/target/release/forewarn-bench-publisher
    [ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 2; }
    [ -x "$PUB" ] || cargo build --release --manifest-path bench/publisher/Cargo.toml
}
now() { date +%s.%N; }
now_ms() { date +%s%3N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# The value of `key=value` in the last line of stdin that has it (the publishers' summaries).
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" | tail -1; }

# metric_read HOST NAME: the value of metric NAME (with its labels, as /metrics prints it) on
# HOST's /metrics, or `unreadable` when the scrape failed (no answer within 5 s, an HTTP error) or
# had no such line. Never a made-up 0: a count that was not read must not look like a count.
metric_read() {
    local body
    body=$(curl -sf --max-time 5 "http://$1/metrics") || { echo unreadable; return 0; }
    awk -v m="$2" '$1 == m { print $2; found = 1 } END { if (!found) print "unreadable" }' <<<"$body"
}
# metric_num HOST NAME: the same as a number for arithmetic and polling, 0 when unreadable.
metric_num() {
    local v
    v=$(metric_read "$1" "$2")
    if [ "$v" = unreadable ]; then echo 0; else echo "$v"; fi
}

machine_line() {
    echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(uname -m), $(free -g | awk '/^Mem:/ { print $2 " GiB RAM" }'), load average $(loadavg)"
}

# simulated_history BIN DEVICES READINGS: writes $WORK/fleet/telemetry.csv (the first READINGS
# readings of `forewarn simulate --seed 11`, hourly, in time order) and $WORK/fleet/events.csv
# (the events up to the last of them); sets N_READINGS, N_EVENTS, TOTAL and LAST_TS.
simulated_history() {
    local bin=$1 devices=$2 readings=$3
    local ticks=$(( (readings + devices - 1) / devices ))
    local days=$(( (ticks + 23) / 24 ))
    "$bin" simulate --out "$WORK/full" --devices "$devices" --days "$days" --interval 3600000ms --seed 11 >/dev/null
    mkdir -p "$WORK/fleet"
    head -n $(( readings + 1 )) "$WORK/full/telemetry.csv" >"$WORK/fleet/telemetry.csv"
    LAST_TS=$(tail -n 1 "$WORK/fleet/telemetry.csv" | cut -d, -f2)
    awk -F, -v last="$LAST_TS" 'NR == 1 || $2 <= last' "$WORK/full/events.csv" >"$WORK/fleet/events.csv"
    rm -rf "$WORK/full"
    N_READINGS=$(( $(wc -l <"$WORK/fleet/telemetry.csv") - 1 ))
    N_EVENTS=$(( $(wc -l <"$WORK/fleet/events.csv") - 1 ))
    TOTAL=$(( N_READINGS + N_EVENTS ))
    echo "$N_READINGS readings and $N_EVENTS events from $devices devices (hourly, up to $LAST_TS)"
}

# start_mosquitto QUEUED INFLIGHT: a Mosquitto of the run's own on a free loopback port
# (installed with apt-get when missing), no persistence, `max_queued_messages QUEUED` (0: no
# limit) and `max_inflight_messages INFLIGHT`; sets MOSQ (its binary) and PORT.
start_mosquitto() {
    MOSQ=$(command -v mosquitto || true)
    [ -z "$MOSQ" ] && [ -x /usr/sbin/mosquitto ] && MOSQ=/usr/sbin/mosquitto
    if [ -z "$MOSQ" ] || ! command -v mosquitto_sub >/dev/null; then
        if [ "$(id -u)" -eq 0 ]; then sudo_=(); else sudo_=(sudo); fi
        "${sudo_[@]}" apt-get update
        "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients
        MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    fi
    PORT=$(free_port)
    cat >"$WORK/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
# Queue, do not drop, QoS 1 messages for a subscriber that falls behind.
max_queued_messages $1
max_inflight_messages $2
CONF
    "$MOSQ" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PIDS+=($!)
    wait_port "$PORT"
}
