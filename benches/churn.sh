#!/usr/bin/env bash
# Churn benchmark (not a test): TOTAL calls of HOLD seconds each, started RATE a second by
# `mohd load --hold`, against mohd on 127.0.0.1, sampling mohd's RSS, open descriptors, threads
# and CPU every SAMPLE seconds into a CSV, and on for IDLE seconds after the last call: whether
# memory reaches a plateau (issue 18's target: 1,000,000 calls at 250/s, RSS flat, fds and
# threads constant). See benches/README.md ("Churn").
#
# Usage: benches/churn.sh
# Environment:
#   TOTAL=60000    calls in all
#   RATE=200       calls started per second
#   HOLD=1         seconds each call lasts
#   SAMPLE=5       seconds between samples
#   IDLE=30        seconds sampled after the last call ended
#   CSV=path       write the samples here (default: target/churn-DATE.csv, printed)
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix
#   MOHD_LOG=0     send mohd's log (two lines a call) nowhere instead of the work folder
#   KEEP=1         keep the work folder and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
bench=churn.sh

TOTAL=${TOTAL:-60000}
RATE=${RATE:-200}
HOLD=${HOLD:-1}
SAMPLE=${SAMPLE:-5}
IDLE=${IDLE:-30}

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary
mkdir -p target
csv=${CSV:-target/churn-$(date +%Y%m%dT%H%M%S).csv}

# One CSV row for mohd: seconds since start, phase, calls started so far (from the rate), RSS
# (KiB), open descriptors, threads, CPU seconds (utime + stime).
sample() {
  local t=$1 phase=$2 started=$3
  local rss threads fds cpu
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$mohd_pid/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$mohd_pid/status")
  fds=$(find "/proc/$mohd_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  cpu=$(awk '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100}' "/proc/$mohd_pid/stat")
  echo "$t,$phase,$started,$rss,$fds,$threads,$cpu" >>"$csv"
}

# shellcheck disable=SC2119 # no extra arguments: mohd's defaults.
start_mohd
sleep 1
echo "seconds,phase,calls_started,rss_kib,fds,threads,cpu_s" >"$csv"
start=$(date +%s.%N)
elapsed() { awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN {printf "%.1f", n - s}'; }
sample 0.0 idle-before 0

"$MOHD" load "sip:moh@$sip" --calls "$TOTAL" --rate "$RATE" --hold "$HOLD" \
  --server-pid "$mohd_pid" --json >"$work/load.json" 2>"$work/load.err" &
load_pid=$!
pids+=("$load_pid")
while kill -0 "$load_pid" 2>/dev/null; do
  sleep "$SAMPLE"
  t=$(elapsed)
  started=$(awk -v t="$t" -v r="$RATE" -v n="$TOTAL" 'BEGIN {c = int(t * r); print (c > n ? n : c)}')
  sample "$t" churn "$started"
done
wait "$load_pid" || { echo "churn.sh: mohd load failed:" >&2; cat "$work/load.err" >&2; exit 1; }
for ((i = 0; i < IDLE; i += SAMPLE)); do
  sleep "$SAMPLE"
  sample "$(elapsed)" idle-after "$TOTAL"
done

echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}')${MOHD_WRAP:+ under $MOHD_WRAP}: $TOTAL calls of ${HOLD} s at $RATE/s; samples in $csv"
python3 - "$csv" "$work/load.json" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
r = json.load(open(sys.argv[2]))
c, m = r["calls"], r["media"]
setup = c["setup_ms"] or {}
failures = f" {c['failures']}" if c["failures"] else ""
print(f"calls: {c['placed']} placed, {c['answered']} answered, {c['failed']} failed{failures}; "
      f"setup p50 {setup.get('p50', 0):.1f} ms, p99 {setup.get('p99', 0):.1f} ms; "
      f"{m['streams']} streams, {m['lost']} lost, {m['late_over_5ms_pct']:.3f} % > 5 ms late")
print()
print("| seconds | phase | calls started | RSS (MiB) | fds | threads | CPU (s) |")
print("|---|---|---|---|---|---|---|")
# About twelve rows: the first, evenly spaced ones, the last of the churn, and the idle ones.
churn = [x for x in rows if x["phase"] == "churn"]
step = max(1, len(churn) // 10)
keep = [rows[0]] + churn[::step] + churn[-1:] + [x for x in rows if x["phase"] == "idle-after"][-2:]
seen = set()
for x in keep:
    if id(x) in seen:
        continue
    seen.add(id(x))
    print(f"| {x['seconds']} | {x['phase']} | {x['calls_started']} | {int(x['rss_kib']) / 1024:.1f} | "
          f"{x['fds']} | {x['threads']} | {x['cpu_s']} |")
EOF
