#!/usr/bin/env bash
# What a reading receiver costs the sender (not a test): mohd's CPU per RTP packet with N calls
# while `mohd load` reads every stream, then with `mohd load` stopped (SIGSTOP: its sockets
# fill and the kernel drops, as it does for rtp_floor's sinks, which never read), in turns in
# one mohd process; then `rtp_floor sendmmsg` to such sinks, N streams, in the same session.
# On loopback the receive path runs in the sender's context, and a receiver that drains its
# sockets makes that path dearer (wake-ups, its queue's cache lines on the other core): this
# is how much of mohd's cost above the floor in benches/load.sh is that, not mohd.
#
# Usage: benches/reader_cost.sh [N ...]          default: 1000 2500
# Environment:
#   ROUNDS=2       reading/stopped turns per N (10 s each)
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=reader_cost.sh
ROUNDS=${ROUNDS:-2}
[ $# -gt 0 ] || set -- 1000 2500

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary
floor_bin=$work/rtp_floor
gcc -O2 -o "$floor_bin" benches/rtp_floor.c
printf '[calls]\nmax_calls = 20000\n' | write_config

# mohd's CPU per packet over 10 s: ns for N calls' 50 packets a second.
per_packet() {
  local pid=$1 n=$2 a b
  a=$(cpu_ticks "$pid")
  sleep 10
  b=$(cpu_ticks "$pid")
  echo $(((b - a) * 1000000000 / ticks_per_s / (n * 50 * 10)))
}

echo "| N | turn | mohd ns/packet, receiver reading | mohd ns/packet, receiver stopped |"
echo "|---|---|---|---|"
floors=()
for n in "$@"; do
  start_mohd --config "$work/mohd.toml"
  "$LOAD" load "sip:moh@$sip" --calls "$n" --rate 250 --duration $((ROUNDS * 30 + 30)) \
    >/dev/null 2>&1 &
  load_pid=$!
  pids+=("$load_pid")
  sleep $((n / 250 + 8))
  for round in $(seq "$ROUNDS"); do
    reading=$(per_packet "$mohd_pid" "$n")
    kill -STOP "$load_pid"
    sleep 3
    stopped=$(per_packet "$mohd_pid" "$n")
    kill -CONT "$load_pid"
    sleep 3
    echo "| $n | $round | $reading | $stopped |"
  done
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  kill "$mohd_pid" 2>/dev/null || true
  wait "$mohd_pid" 2>/dev/null || true
  ready="$work/floor_ready_$n"
  python3 benches/floor_sinks.py "$n" "$ready" &
  sinks=$!
  pids+=("$sinks")
  while [ ! -s "$ready" ]; do sleep 0.1; done
  floors+=("$n: $("$floor_bin" sendmmsg "$n" 12 "$(cat "$ready")" 1 | tail -1)")
  kill "$sinks" 2>/dev/null || true
  wait "$sinks" 2>/dev/null || true
done
echo
for f in "${floors[@]}"; do echo "rtp_floor, N=$f"; done
echo "command: ROUNDS=$ROUNDS${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"} benches/reader_cost.sh $*"
