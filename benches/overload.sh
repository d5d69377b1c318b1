#!/usr/bin/env bash
# Overload benchmark (not a test): mohd offered twice what it can carry (issue 18: graceful
# under overload). Everything on 127.0.0.1. For each MAX_CALLS:
#   1. a probe of PROBE held calls for PROBE_SECONDS, while /metrics is read every second:
#      the capacity is mohd's own figure once it has measured its cost per packet
#      (`mohd_calls_capacity`: the lesser of `mohd_media_capacity_calls` and max_calls);
#   2. OFFER calls (default twice that capacity) placed at RATE and held for MEASURE s: how many
#      were answered and how many refused (503, and whether with Retry-After), mohd's refusals
#      by reason (capacity: admission; max_calls: the count cap), and the admitted calls'
#      streams against the bar (99.9 % within 5 ms, none lost, no frame not sent).
# MAX_CALLS above 4,096 (mohd's default) lets admission rather than the count cap decide; the
# RTP port range is widened to PORTS so ports are not the limit either. See benches/README.md
# ("Overload").
#
# Usage: benches/overload.sh
# Environment:
#   MAX_CALLS="4096 20000"  [calls] max_calls, one run each
#   OFFER=         calls offered (default: twice the capacity the probe found)
#   PROBE=1000     calls held while the capacity is read;  PROBE_SECONDS=15
#   RATE=500       calls per second while offering (and hanging up)
#   MEASURE=25     seconds the admitted calls are measured;  SETTLE=3
#   BUDGET=        [calls] media_budget (default: mohd's own, 0.7)
#   MIN_IDLE_CPU=  [calls] min_idle_cpu, percent (default: off). The load tool shares this box's
#                  CPUs with mohd: 30 makes admission count its work too, as it would a PBX's
#   PORTS=10000-32767   [rtp] ports (mohd's default 10000-20000 holds 5,000 calls)
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   LOAD=path      the binary whose `mohd load` places the calls (default: MOHD)
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root)
#   KEEP=1         keep the work folder (logs, every run's JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
bench=overload.sh

MAX_CALLS=${MAX_CALLS:-4096 20000}
OFFER=${OFFER:-}
PROBE=${PROBE:-1000}
PROBE_SECONDS=${PROBE_SECONDS:-15}
RATE=${RATE:-500}
MEASURE=${MEASURE:-25}
SETTLE=${SETTLE:-3}
BUDGET=${BUDGET:-}
MIN_IDLE_CPU=${MIN_IDLE_CPU:-}
PORTS=${PORTS:-10000-32767}

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

# Samples mohd's capacity figures every second while process $1 runs, into file $2 (one line:
# calls up, capacity, media capacity); the last line is printed.
sample_capacity() {
  local pid=$1 out=$2
  : >"$out"
  while kill -0 "$pid" 2>/dev/null; do
    echo "$(metric mohd_calls_active) $(metric mohd_calls_capacity) $(metric mohd_media_capacity_calls)" >>"$out"
    sleep 1
  done
}

for max in $MAX_CALLS; do
  {
    printf '[calls]\nmax_calls = %s\n' "$max"
    [ -z "$BUDGET" ] || printf 'media_budget = %s\n' "$BUDGET"
    [ -z "$MIN_IDLE_CPU" ] || printf 'min_idle_cpu = %s\n' "$MIN_IDLE_CPU"
    printf '\n[rtp]\nports = "%s"\n' "$PORTS"
  } | write_config
  web=127.0.0.1:$(free_port)
  start_mohd --config "$work/mohd.toml"

  "$LOAD" load "sip:moh@$sip" --calls "$PROBE" --rate "$RATE" --settle 1 --duration "$PROBE_SECONDS" \
    --json >"$work/probe_$max.json" 2>"$work/probe_$max.err" &
  probe_pid=$!
  pids+=("$probe_pid")
  sample_capacity "$probe_pid" "$work/probe_$max.samples"
  wait "$probe_pid" || true
  # The last sample taken while every probe call was up: mohd's figure with them measured.
  read -r capacity media <<<"$(awk -v n="$PROBE" '$1 >= n {c = $2; m = $3} END {print c, m}' \
    "$work/probe_$max.samples")"
  capacity=${capacity:-$(metric mohd_calls_capacity)}
  offer=${OFFER:-$((2 * ${capacity:-0}))}
  echo "overload.sh: max_calls $max: capacity $capacity (media $media) with $PROBE calls up; offering $offer" >&2
  echo "$max $capacity $media $offer" >"$work/capacity_$max"
  [ "$offer" -gt 0 ] || { echo "overload.sh: no capacity read from /metrics" >&2; exit 1; }

  "$LOAD" load "sip:moh@$sip" --calls "$offer" --rate "$RATE" --settle "$SETTLE" --duration "$MEASURE" \
    --timeout 10 --server-pid "$mohd_pid" --json >"$work/offer_$max.json" 2>"$work/offer_$max.err" &
  offer_pid=$!
  pids+=("$offer_pid")
  sample_capacity "$offer_pid" "$work/offer_$max.samples"
  wait "$offer_pid" || { echo "overload.sh: mohd load failed:" >&2; cat "$work/offer_$max.err" >&2; }
  for reason in capacity max_calls; do
    echo "$reason $(metric "mohd_calls_refused_total{reason=\"$reason\"}")"
  done >"$work/refused_$max"
  kill "$mohd_pid" 2>/dev/null || true
  wait "$mohd_pid" 2>/dev/null || true
done

echo
echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}')${MOHD_WRAP:+ under $MOHD_WRAP}," \
  "$(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg); offered at $RATE/s, $MEASURE s measured"
echo "command: MAX_CALLS=\"$MAX_CALLS\" PROBE=$PROBE RATE=$RATE MEASURE=$MEASURE${OFFER:+ OFFER=$OFFER}${BUDGET:+ BUDGET=$BUDGET}${MIN_IDLE_CPU:+ MIN_IDLE_CPU=$MIN_IDLE_CPU}${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"} benches/overload.sh"
python3 - "$work" "$MAX_CALLS" <<'EOF'
import json, os, sys
work, maxes = sys.argv[1], sys.argv[2].split()

def text(name):
    try:
        return open(os.path.join(work, name)).read().split()
    except OSError:
        return []

print()
print("| max_calls | capacity (media) | offered | answered | refused 503 (with Retry-After) | other failures | refused by mohd: capacity / max_calls | capacity at the end | > 5 ms late (%) | p99.9 / max (ms) | lost / not sent | meets the bar |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for mx in maxes:
    cap = text(f"capacity_{mx}") + ["-"] * 4
    refused = dict(zip(*[iter(text(f"refused_{mx}") + ["-"] * 4)] * 2))
    samples = [line.split() for line in open(os.path.join(work, f"offer_{mx}.samples"))] if os.path.exists(os.path.join(work, f"offer_{mx}.samples")) else []
    last = next((s for s in reversed(samples) if len(s) == 3), ["-", "-", "-"])
    try:
        j = json.load(open(os.path.join(work, f"offer_{mx}.json")))
    except (OSError, ValueError):
        print(f"| {mx} | {cap[1]} ({cap[2]}) | {cap[3]} | failed | | | | | | | | |")
        continue
    c, m = j["calls"], j["media"]
    r503 = sum(n for why, n in c["failures"].items() if why.startswith("503"))
    other = ", ".join(f"{n} × {why}" for why, n in c["failures"].items() if not why.startswith("503")) or "0"
    bar = m["late_over_5ms_pct"] <= 0.1 and m["lost"] == 0 and m["frames_not_sent"] == 0
    print(f"| {mx} | {cap[1]} ({cap[2]}) | {cap[3]} | {c['answered']} | {r503} ({c.get('refused_with_retry_after', '-')}) | {other} | "
          f"{refused.get('capacity', '-')} / {refused.get('max_calls', '-')} | {last[1]} ({last[2]}) | "
          f"{m['late_over_5ms_pct']:.3f} | {m['lateness_ms']['p99_9']:.1f} / {m['lateness_ms']['max']:.1f} | "
          f"{m['lost']} / {m['frames_not_sent']} | {'yes' if bar else 'no'} |")
EOF
