#!/usr/bin/env bash
# Train on one realistic simulated fleet, evaluate on another, one table row per split.
#
#   bench/fleet_splits.sh [-b BINARY] [-d FLEETS] [-o OUT] [-j JOBS] [-t] [SPLIT...]
#
# SPLIT is TRAIN:TEST (seeds), default 1:2 3:4 5:6 7:8 9:10 11:12. Fleets are read from
# FLEETS/sN (default reports/fleets), simulated with `simulate --profile realistic --seed N`
# when missing. Models, evaluation summaries, tickets, predictions and training times go to
# OUT/<train>_<test>/ (default reports/fleet-runs). At most JOBS splits (default 2) run at
# once: one training is about 90 s of CPU. -t prints the table of runs already in OUT, running
# nothing.
set -euo pipefail

bin=target/release/forewarn
fleets=reports/fleets
out=reports/fleet-runs
jobs=2
table_only=
while getopts "b:d:o:j:t" opt; do
    case $opt in
        b) bin=$OPTARG ;;
        d) fleets=$OPTARG ;;
        o) out=$OPTARG ;;
        j) jobs=$OPTARG ;;
        t) table_only=1 ;;
        *) echo "usage: $0 [-b BINARY] [-d FLEETS] [-o OUT] [-j JOBS] [-t] [TRAIN:TEST...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
splits=("$@")
[ ${#splits[@]} -gt 0 ] || splits=(1:2 3:4 5:6 7:8 9:10 11:12)
mkdir -p "$fleets" "$out"

fleet() {
    local s=$fleets/s$1
    [ -s "$s/events.csv" ] || "$bin" simulate --profile realistic --seed "$1" --out "$s" >/dev/null
}

run_split() {
    local a=${1%%:*} b=${1##*:}
    local d=$out/${a}_$b
    mkdir -p "$d"
    fleet "$a"
    fleet "$b"
    local sa=$fleets/s$a sb=$fleets/s$b
    /usr/bin/time -f '%U %S %e' -o "$d/train.time" \
        "$bin" train --telemetry "$sa/telemetry.csv" --events "$sa/events.csv" \
        --devices "$sa/devices.csv" --out "$d/model.json" >"$d/train.json" 2>"$d/train.err"
    "$bin" evaluate --model "$d/model.json" --telemetry "$sb/telemetry.csv" \
        --events "$sb/events.csv" --devices "$sb/devices.csv" \
        --tickets-out "$d/tickets.jsonl" --predictions-out "$d/predictions.csv" \
        >"$d/eval.json" 2>"$d/eval.err"
}

running=0
[ -n "$table_only" ] || for s in "${splits[@]}"; do
    run_split "$s" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

printf '| split | tickets | precision | recall | median lead (h) | false tickets / device-month | customer alerts (false) | false alerts / device-month | train CPU (s) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for s in "${splits[@]}"; do
    a=${s%%:*} b=${s##*:}
    d=$out/${a}_$b
    python3 - "$d" "$a → $b" <<'PY'
import json, sys
d, name = sys.argv[1], sys.argv[2]
e = json.load(open(f"{d}/eval.json"))
t, c = e["tickets"], e["customer_alerts"]
f = lambda v, n=2: "–" if v is None else f"{v:.{n}f}"
try:
    user, sys_, wall = open(f"{d}/train.time").read().split()[-3:]
    cpu = f"{float(user):.1f} (wall {float(wall):.0f})"
except (OSError, ValueError):
    cpu = "–"
print(f"| {name} | {t['opened']} | {f(t['precision'])} ({t['correct']}/{t['opened']}) "
      f"| {f(t['recall'])} ({t['detected']}/{t['due_failures']}) | {f(t['lead_time_hours']['median'], 1)} "
      f"| {f(t['false_alarms_per_device_month'], 3)} | {c['alerts']} ({c['false_alerts']}) "
      f"| {f(c['false_per_device_month'], 3)} | {cpu} |")
PY
done
