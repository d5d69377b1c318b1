#!/usr/bin/env bash
# Stop benchmark (not a test): how long mohd takes to exit after SIGTERM while CALLS calls are
# up whose callers have vanished (issue 18's target: 2,500 such calls, exited within 15 s).
# Everything on 127.0.0.1. Two kinds of vanished caller, each with each drain grace:
#   closed  the caller's sockets are gone (`mohd load` SIGKILLed): every RTP packet and every
#           BYE mohd sends draws an ICMP port unreachable;
#   silent  the sockets stay open but nothing is read or answered (`mohd load --vanish-after`):
#           no ICMP, every BYE retransmitted until its transaction times out.
# With `[calls] drain_grace_s = 0` SIGTERM hangs up at once, so the time is mohd's own stop;
# with the default grace (300 s) the drain waits for the calls to end: closed callers' calls
# end after 5 s of ICMP (mohd's rule), silent callers' never, so the grace is their bound. The
# table splits each time into the drain and what came after it (hang-up and stop), from
# mohd's log. See benches/README.md ("Stop").
#
# Usage: benches/stop.sh
# Environment:
#   CALLS=2500     calls up when SIGTERM is sent
#   RATE=200       calls per second while bringing them up
#   KINDS="closed silent"   which vanishings to time
#   GRACES="0 default"      [calls] drain_grace_s per run (`default`: the key left out, 300 s)
#   UNREACHABLE=   [calls] unreachable_timeout_s (default: mohd's, 5 s of ICMP ends a call);
#                  3600 keeps the closed callers' calls up, so the stop meets every one
#   DEAD=2         seconds between the callers vanishing and SIGTERM
#   LIMIT=360      give up (SIGKILL, reported as such) this many seconds after SIGTERM
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   LOAD=path      the binary whose `mohd load` places the calls (default: MOHD)
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root)
#   KEEP=1         keep the work folder (mohd's log per run) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
bench=stop.sh

CALLS=${CALLS:-2500}
RATE=${RATE:-200}
KINDS=${KINDS:-closed silent}
GRACES=${GRACES:-0 default}
UNREACHABLE=${UNREACHABLE:-}
DEAD=${DEAD:-2}
LIMIT=${LIMIT:-360}

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

results=$work/results.tsv
: >"$results"

# One run: mohd with CALLS calls whose callers vanish the way $1 says, drain grace $2.
run() {
  local kind=$1 grace=$2
  {
    printf '[calls]\n'
    [ "$grace" = default ] || printf 'drain_grace_s = %s\n' "$grace"
    [ -z "$UNREACHABLE" ] || printf 'unreachable_timeout_s = %s\n' "$UNREACHABLE"
  } | write_config
  web=127.0.0.1:$(free_port)
  start_mohd --config "$work/mohd.toml"
  cp /dev/null "$work/load.err"
  local vanish=()
  [ "$kind" = silent ] && vanish=(--vanish-after 1)
  "$LOAD" load "sip:moh@$sip" --calls "$CALLS" --rate "$RATE" --settle 1 --duration 86400 \
    "${vanish[@]}" >/dev/null 2>"$work/load.err" &
  local load_pid=$!
  pids+=("$load_pid")
  local up
  up=$(wait_calls_up "$CALLS" "$((CALLS / RATE + 60))")
  if [ "$kind" = closed ]; then
    sleep 1
    kill -KILL "$load_pid"
  else
    local i
    for ((i = 0; i < 100; i++)); do
      grep -q vanished "$work/load.err" && break
      sleep 0.1
    done
  fi
  sleep "$DEAD"
  up=$(metric mohd_calls_active)
  # Timed from the signal to the process's end (`wait` returns as it exits); a watchdog
  # SIGKILLs it at LIMIT.
  local start end status=0
  start=$(date +%s.%N)
  kill -TERM "$mohd_pid"
  # (Stopped by a TERM, which the trap turns into exiting before the kill, not after.)
  (
    trap 'exit 0' TERM
    sleep "$LIMIT" &
    wait $!
    kill -KILL "$mohd_pid" 2>/dev/null
  ) &
  local watchdog=$!
  wait "$mohd_pid" || status=$?
  end=$(date +%s.%N)
  kill "$watchdog" 2>/dev/null || true
  kill -KILL "$load_pid" 2>/dev/null || true
  wait "$watchdog" "$load_pid" 2>/dev/null || true
  local seconds
  seconds=$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.2f", e - s}')
  local outcome="exit $status"
  [ "$status" = 137 ] && outcome="SIGKILLed at LIMIT"
  printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$grace" "${up:-?}" "$seconds" "$outcome" >>"$results"
  cp "$work/mohd.err" "$work/mohd-$kind-$grace.err"
  echo "stop.sh: $kind, drain_grace_s $grace: ${up:-?} calls up, exited ${seconds} s after SIGTERM ($outcome)" >&2
}

for kind in $KINDS; do
  for grace in $GRACES; do
    run "$kind" "$grace"
  done
done

echo
echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}')${MOHD_WRAP:+ under $MOHD_WRAP}," \
  "$(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg); $CALLS calls brought up at" \
  "$RATE/s, callers vanished $DEAD s before SIGTERM"
echo "command: CALLS=$CALLS RATE=$RATE KINDS=\"$KINDS\" GRACES=\"$GRACES\"${UNREACHABLE:+ UNREACHABLE=$UNREACHABLE}${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"} benches/stop.sh"
echo
python3 - "$work" <<'EOF'
import csv, datetime, os, sys
work = sys.argv[1]

def at(line):
    stamp = line.split()[0].rstrip("Z")
    return datetime.datetime.fromisoformat(stamp[:26])

print("| callers | drain_grace_s | calls up at SIGTERM | SIGTERM to exit (s) | outcome | the drain ended | drain (s) | after the drain (s) |")
print("|---|---|---|---|---|---|---|---|")
for kind, grace, up, seconds, outcome in csv.reader(open(os.path.join(work, "results.tsv")), delimiter="\t"):
    began = ended = None
    how = "-"
    for line in open(os.path.join(work, f"mohd-{kind}-{grace}.err"), errors="replace"):
        if "draining: no new calls" in line and began is None:
            began = at(line)
        elif "drain over: hanging up" in line:
            ended, how = at(line), "grace ran out: calls hung up"
        elif "drained: no calls left" in line:
            ended, how = at(line), "every call had ended"
    drain = (ended - began).total_seconds() if began and ended else None
    after = float(seconds) - drain if drain is not None else None
    print(f"| {kind} | {grace} | {up} | {seconds} | {outcome} | {how} | "
          f"{'-' if drain is None else format(drain, '.2f')} | {'-' if after is None else format(after, '.2f')} |")
EOF
echo
echo "closed: mohd ends a call after ${UNREACHABLE:-5} s of ICMP port unreachable for its RTP, so the drain ends"
echo "by itself; silent: nothing tells mohd the callers are gone, so the drain lasts the grace"
echo "(300 s by default). 'after the drain' is the hang-up and stop: the issue's 15 s bound."
