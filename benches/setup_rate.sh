#!/usr/bin/env bash
# Call setup rate benchmark (not a test): new calls at RATES a second while HELD calls stream
# (issue 18's target: >= 500 calls/s with INVITE->200 OK p99 < 10 ms while 1,000 calls
# stream). Everything on 127.0.0.1. One `mohd load` holds HELD calls and measures their
# streams over the whole time; meanwhile, for each rate, a second `mohd load --hold HOLD`
# places CALLS short calls and reports their setup times (INVITE sent to 200 OK received, at
# the caller) and failures. See benches/README.md ("Setup rate").
#
# Usage: benches/setup_rate.sh
# Environment:
#   HELD=1000      calls streaming throughout
#   CALLS=10000    short calls placed at each rate
#   RATES="500 750 1000"   calls per second, one run each
#   HOLD=1         seconds each short call lasts
#   GAP=5          seconds between runs
#   RATE_PER_SOURCE=0   [access] rate_per_source (0: unlimited; `default`: mohd's own, 1,000
#                  datagrams/s, which every caller here shares: they all come from 127.0.0.1)
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   LOAD=path      the binary whose `mohd load` places the calls (default: MOHD)
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root)
#   LOAD_WRAP="chrt -f 5"    run both `mohd load`s under this prefix: on a busy box their own
#                  scheduling delays are in the setup times they measure
#   KEEP=1         keep the work folder (logs, every run's JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
bench=setup_rate.sh

HELD=${HELD:-1000}
CALLS=${CALLS:-10000}
RATES=${RATES:-500 750 1000}
HOLD=${HOLD:-1}
GAP=${GAP:-5}
RATE_PER_SOURCE=${RATE_PER_SOURCE:-0}
HELD_RATE=200

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

if [ "$RATE_PER_SOURCE" = default ]; then
  write_config </dev/null
else
  printf '[access]\nrate_per_source = %s\n' "$RATE_PER_SOURCE" | write_config
fi
web=127.0.0.1:$(free_port)
start_mohd --config "$work/mohd.toml"

# The held calls' window must cover every run: each lasts CALLS/rate + HOLD s, plus the time
# for its last answers and hang-ups.
window=0
for r in $RATES; do
  window=$(awk -v w="$window" -v n="$CALLS" -v r="$r" -v h="$HOLD" -v g="$GAP" \
    'BEGIN {printf "%d", w + n / r + h + g + 5}')
done
# shellcheck disable=SC2086 # LOAD_WRAP is a command prefix, split on purpose.
${LOAD_WRAP:-} "$LOAD" load "sip:moh@$sip" --calls "$HELD" --rate "$HELD_RATE" --settle 2 --duration "$window" \
  --server-pid "$mohd_pid" --json >"$work/held.json" 2>"$work/held.err" &
held_pid=$!
pids+=("$held_pid")
up=$(wait_calls_up "$HELD" "$((HELD / HELD_RATE + 60))")
sleep 3
echo "setup_rate.sh: $up calls streaming; the held window is $window s" >&2

for r in $RATES; do
  # One RTP socket (and thread) per 1,000 calls up at once.
  sockets=$(awk -v r="$r" -v h="$HOLD" 'BEGIN {n = int(r * (h + 1) / 1000 + 0.999); print (n < 1 ? 1 : n)}')
  begin=$(date +%s)
  # shellcheck disable=SC2086 # LOAD_WRAP is a command prefix, split on purpose.
  ${LOAD_WRAP:-} "$LOAD" load "sip:moh@$sip" --calls "$CALLS" --rate "$r" --hold "$HOLD" --rtp-sockets "$sockets" \
    --json >"$work/rate_$r.json" 2>"$work/rate_$r.err" || {
    echo "setup_rate.sh: mohd load failed at $r/s:" >&2
    cat "$work/rate_$r.err" >&2
  }
  echo "setup_rate.sh: $CALLS calls at $r/s took $(($(date +%s) - begin)) s" >&2
  sleep "$GAP"
done
limited=$(metric 'mohd_sip_requests_refused_total{reason="rate_limited"}')
refused=$(metric 'mohd_calls_refused_total{reason="capacity"}')
wait "$held_pid" || { echo "setup_rate.sh: the held load failed:" >&2; cat "$work/held.err" >&2; }

echo
echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}')${MOHD_WRAP:+ under $MOHD_WRAP}," \
  "$(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg); $HELD calls streaming," \
  "[access] rate_per_source $RATE_PER_SOURCE; datagrams mohd dropped for the rate limit:" \
  "${limited:-?}; INVITEs refused for capacity: ${refused:-?}"
echo "command: HELD=$HELD CALLS=$CALLS RATES=\"$RATES\" HOLD=$HOLD RATE_PER_SOURCE=$RATE_PER_SOURCE${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"}${LOAD_WRAP:+ LOAD_WRAP=\"$LOAD_WRAP\"} benches/setup_rate.sh"
python3 - "$work" "$HELD" "$RATES" <<'EOF'
import json, os, sys
work, held, rates = sys.argv[1], sys.argv[2], sys.argv[3].split()

def load(name):
    path = os.path.join(work, name)
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)

print()
print("| calls/s | placed / answered / failed | failures | setup p50 / p99 / p99.9 / max (ms) | p99 < 10 ms | short calls > 5 ms late (%) |")
print("|---|---|---|---|---|---|")
for r in rates:
    j = load(f"rate_{r}.json")
    if j is None:
        print(f"| {r} | failed | | | | |")
        continue
    c, s = j["calls"], j["calls"]["setup_ms"] or {}
    failures = ", ".join(f"{n} × {why}" for why, n in c["failures"].items()) or "-"
    ok = "yes" if s and s["p99"] < 10 and c["failed"] == 0 else "no"
    print(f"| {r} | {c['placed']} / {c['answered']} / {c['failed']} | {failures} | "
          f"{fmt(s.get('p50'))} / {fmt(s.get('p99'))} / {fmt(s.get('p99_9'))} / {fmt(s.get('max'))} | {ok} | "
          f"{j['media']['late_over_5ms_pct']:.3f} |")

h = load("held.json")
print()
print("| held calls | answered | window (s) | > 5 ms late (%) | p99.9 / max (ms) | lost | frames not sent | mohd CPU (% core) |")
print("|---|---|---|---|---|---|---|---|")
if h is None:
    print(f"| {held} | failed | | | | | | |")
else:
    m, srv = h["media"], h.get("server") or {}
    print(f"| {held} | {h['calls']['answered']} | {h['window_s']:.0f} | {m['late_over_5ms_pct']:.3f} | "
          f"{m['lateness_ms']['p99_9']:.1f} / {m['lateness_ms']['max']:.1f} | {m['lost']} | "
          f"{m['frames_not_sent']} | {fmt(srv.get('cpu_pct_of_core'))} |")
EOF
