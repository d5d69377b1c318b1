#!/usr/bin/env bash
# Soak of mohd (not a test, not in CI): an hour (DURATION) of call churn plus one call that lasts
# the whole run, watching mohd for anything that grows: memory, open files, threads, I/O, late
# packets, and the long call's timestamp drift. Everything runs on 127.0.0.1. See
# benches/README.md ("Soak").
#
# Usage: benches/soak.sh
# Environment:
#   DURATION=3600   seconds of churn, and the long call's length
#   SAMPLE=60       seconds between samples of mohd's /proc figures (and /metrics)
#   CONCURRENT=100  churn calls up at once (sipp -l)
#   RATE=10         new churn calls per second (one every 100 ms)
#   HOLD=10         seconds each churn call lasts
#   MOHD=path       use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix
#   KEEP=1          keep the work folder (logs, samples, sipp statistics) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3600}
SAMPLE=${SAMPLE:-60}
CONCURRENT=${CONCURRENT:-100}
RATE=${RATE:-10}
HOLD=${HOLD:-10}

for tool in sipp python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "soak.sh: needs $tool (sipp: apt-get install sip-tester, or scripts/setup-deps)" >&2
    exit 1
  fi
done

bench=soak.sh
# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

wait_file() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  echo "soak.sh: $1 did not appear within $2 s" >&2
  return 1
}

# With a web listener ([web] in the config), /metrics adds mohd's own counters (late packets,
# drift); a mohd whose config has no [web] yet is run without a config, and only the /proc
# figures are sampled.
metrics=""
mkdir -p "$work/state"
webport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/mohd.toml" <<EOF
[state]
dir = "$work/state"
[web]
listen = "127.0.0.1:$webport"
metrics_public = true
[channels.default]
music = "demo"
[dialplan]
default = "default"
EOF
if STATE_DIRECTORY="$work/state" "$MOHD" check --config "$work/mohd.toml" >"$work/check.out" 2>&1; then
  args=(serve --config "$work/mohd.toml" --sip 127.0.0.1:0)
  metrics="http://127.0.0.1:$webport/metrics"
else
  echo "soak.sh: this mohd takes no [web] config (/proc figures only): $(tail -n 1 "$work/check.out")" >&2
  args=(serve --sip 127.0.0.1:0)
fi
# shellcheck disable=SC2086 # MOHD_WRAP is a command prefix, split on purpose.
STATE_DIRECTORY="$work/state" ${MOHD_WRAP:-} "$MOHD" "${args[@]}" >"$work/mohd.out" 2>"$work/mohd.err" &
mohd_pid=$!
pids+=("$mohd_pid")
for ((i = 0; i < 600; i++)); do
  grep -q "SIP listening on udp:" "$work/mohd.out" 2>/dev/null && break
  sleep 0.1
done
sip=$(sed -n 's/^mohd: SIP listening on udp://p' "$work/mohd.out" | head -n1)
[ -n "$sip" ] || { echo "soak.sh: mohd did not start:" >&2; cat "$work/mohd.err" >&2; exit 1; }
if [ -n "$metrics" ]; then
  sleep 1
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$metrics" \
    2>/dev/null || { echo "soak.sh: $metrics does not answer: /proc figures only" >&2; metrics=""; }
fi

echo "$("$MOHD" --version 2>/dev/null || echo mohd)${MOHD_WRAP:+ under $MOHD_WRAP} (PID $mohd_pid), $(nproc) cores;" \
  "${DURATION} s: $CONCURRENT concurrent calls, $RATE new per second, ${HOLD} s each, plus one" \
  "${DURATION} s call; samples every ${SAMPLE} s${metrics:+ (with /metrics)}"

samples="$work/samples.jsonl"
monitor=(python3 benches/soak_monitor.py)
"${monitor[@]}" once --pid "$mohd_pid" ${metrics:+--metrics "$metrics"} --label "idle before" --out "$samples"

# Two RTP/RTCP port pairs per concurrent call: a port is reused only after its call has ended.
python3 benches/rtp_sink.py --pairs $((2 * CONCURRENT)) --inf "$work/calls.csv" \
  --ready "$work/sink.ready" --log "$work/sink.jsonl" --out "$work/sink.json" &
sink_pid=$!
pids+=("$sink_pid")
wait_file "$work/sink.ready" 30

"${monitor[@]}" sample --pid "$mohd_pid" ${metrics:+--metrics "$metrics"} --every "$SAMPLE" \
  --out "$samples" --stop "$work/stop" &
monitor_pid=$!
pids+=("$monitor_pid")

# The long call: the receiver-side drift over the whole run.
"$MOHD" call "sip:moh@$sip" --seconds "$DURATION" --timeout 30 --json >"$work/long.json" 2>"$work/long.err" &
long_pid=$!
pids+=("$long_pid")

# The churn: a new call every 1/RATE s, each held HOLD s, at most CONCURRENT at once.
churn_calls=$((RATE * DURATION))
sipp "$sip" -sf tests/sipp/uac_call_inf.xml -inf "$work/calls.csv" -s moh -i 127.0.0.1 \
  -l "$CONCURRENT" -r "$RATE" -m "$churn_calls" -set hold_ms $((HOLD * 1000)) -nostdin \
  -timeout "$((DURATION + HOLD + 300))s" -timeout_error -recv_timeout 30s \
  -trace_stat -stf "$work/sipp.csv" -fd "$SAMPLE" \
  -trace_err -error_file "$work/sipp_err.log" >"$work/sipp.screen" 2>&1 &
sipp_pid=$!
pids+=("$sipp_pid")

long_rc=0
sipp_rc=0
wait "$long_pid" || long_rc=$?
wait "$sipp_pid" || sipp_rc=$?
touch "$work/stop"
wait "$monitor_pid" || true
# Every call has ended: what is left now is what a month would accumulate.
sleep 3
"${monitor[@]}" once --pid "$mohd_pid" ${metrics:+--metrics "$metrics"} --label "idle after" --out "$samples"
kill -TERM "$sink_pid" 2>/dev/null || true
wait "$sink_pid" || true

[ "$long_rc" -eq 0 ] || { echo "soak.sh: the long call failed ($long_rc):" >&2; cat "$work/long.err" >&2; }
[ "$sipp_rc" -eq 0 ] || echo "soak.sh: sipp exited $sipp_rc (see $work/sipp_err.log with KEEP=1)" >&2
if ! kill -0 "$mohd_pid" 2>/dev/null; then
  echo "soak.sh: mohd died during the run:" >&2
  tail -n 20 "$work/mohd.err" >&2
fi
# Growth is measured from a quarter of the run on (at least one hold time and half a sample
# in), so the allocator's warm-up under the first calls is not mistaken for a leak.
steady=$((DURATION / 4))
[ "$steady" -ge $((HOLD + SAMPLE / 2)) ] || steady=$((HOLD + SAMPLE / 2))
echo
"${monitor[@]}" report --samples "$samples" --long "$work/long.json" --sipp "$work/sipp.csv" \
  --sink "$work/sink.json" --sink-log "$work/sink.jsonl" --steady "$steady"
