#!/usr/bin/env bash
# mohd's CPU per RTP packet against the kernel's floor (rtp_floor sendmmsg), in alternating
# 10 s turns within one run (not a test). This box's speed drifts by a factor of two within
# minutes (the floor alone measured 1,421 and 3,892 ns/packet one minute apart on a quiet box),
# so a floor taken once per N, before or after mohd's turn, says little about mohd; pairs of
# turns taken seconds apart do, and their median ratio is the figure.
#
# Each round, with N calls up from `mohd load`:
#   1. `mohd load` stopped (SIGSTOP: its sockets fill and the kernel drops, the same path as
#      rtp_floor's sinks, which never read), mohd measured for 10 s;
#   2. mohd stopped as well, `rtp_floor sendmmsg` to N fresh sinks for 10 s (fresh each turn,
#      so the queued packets of earlier turns never put UDP memory under pressure);
#   3. both resumed for a few seconds (mohd skips the missed ticks; nothing times out).
# Only one sender runs at a time, so neither pays for the other's packets.
#
# Usage: benches/cpu_ratio.sh [N ...]          default: 1000 2500
# Environment:
#   ROUNDS=5       turns per N
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root); rtp_floor runs
#                  under the same prefix, so both senders have the same scheduling
#   MEDIA_THREADS=n   mohd's [rtp] media_threads (default: its own, one per core)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=cpu_ratio.sh
ROUNDS=${ROUNDS:-5}
[ $# -gt 0 ] || set -- 1000 2500

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary
floor_bin=$work/rtp_floor
gcc -O2 -o "$floor_bin" benches/rtp_floor.c
{
  printf '[calls]\nmax_calls = 20000\n'
  [ -z "${MEDIA_THREADS:-}" ] || printf '\n[rtp]\nmedia_threads = %s\n' "$MEDIA_THREADS"
} | write_config

# mohd's CPU per packet over 10 s, per RTP packet it counted as sent (not N × 50 a second:
# a call that did not come up or ended would make mohd look cheaper). Prints "ns calls".
per_packet() {
  local pid=$1 a b sent_a sent_b
  sent_a=$(metric mohd_rtp_packets_sent_total)
  a=$(cpu_ticks "$pid")
  sleep 10
  b=$(cpu_ticks "$pid")
  sent_b=$(metric mohd_rtp_packets_sent_total)
  awk -v t=$((b - a)) -v hz="$ticks_per_s" -v s="${sent_b%.*}" -v s0="${sent_a%.*}" \
    'BEGIN {printf "%d %d\n", t * 1e9 / hz / (s - s0), (s - s0) / 500}'
}
# rtp_floor sendmmsg to N fresh sinks for 10 s: its ns/packet.
floor_turn() {
  local n=$1 ready="$work/floor_ready" sinks line
  rm -f "$ready"
  python3 benches/floor_sinks.py "$n" "$ready" &
  sinks=$!
  while [ ! -s "$ready" ]; do sleep 0.1; done
  # shellcheck disable=SC2086 # MOHD_WRAP is a command prefix, split on purpose.
  line=$(${MOHD_WRAP:-} "$floor_bin" sendmmsg "$n" 10 "$(cat "$ready")" 1 | tail -1)
  kill "$sinks" 2>/dev/null || true
  wait "$sinks" 2>/dev/null || true
  sed -n 's/.* \([0-9]*\) ns\/packet.*/\1/p' <<<"$line"
}
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "| N | round | calls sending | mohd ns/packet | rtp_floor sendmmsg ns/packet | mohd ÷ floor |"
echo "|---|---|---|---|---|---|"
summary=()
for n in "$@"; do
  web=127.0.0.1:$(free_port)
  start_mohd --config "$work/mohd.toml"
  "$LOAD" load "sip:moh@$sip" --calls "$n" --rate 250 --duration $((ROUNDS * 40 + 60)) \
    >/dev/null 2>&1 &
  load_pid=$!
  pids+=("$load_pid")
  sleep $((n / 250 + 8))
  ratios=()
  for round in $(seq "$ROUNDS"); do
    kill -STOP "$load_pid"
    sleep 3
    read -r ours sending < <(per_packet "$mohd_pid")
    kill -STOP "$mohd_pid"
    floor=$(floor_turn "$n")
    kill -CONT "$mohd_pid"
    kill -CONT "$load_pid"
    sleep 3
    ratio=$(awk -v a="$ours" -v b="$floor" 'BEGIN {printf "%.2f", a / b}')
    ratios+=("$ratio")
    echo "| $n | $round | $sending | $ours | $floor | $ratio |"
  done
  summary+=("N=$n: median mohd ÷ floor $(printf '%s\n' "${ratios[@]}" | median) over $ROUNDS rounds")
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  kill "$mohd_pid" 2>/dev/null || true
  wait "$mohd_pid" 2>/dev/null || true
done
echo
printf '%s\n' "${summary[@]}"
echo "command: ROUNDS=$ROUNDS${MEDIA_THREADS:+ MEDIA_THREADS=$MEDIA_THREADS}${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"} benches/cpu_ratio.sh $*"
