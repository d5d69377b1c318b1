#!/usr/bin/env bash
# Load benchmark of mohd's call path (not a test): N concurrent calls from sipp, every call's RTP
# going to its own socket of benches/rtp_receiver.py, which measures packets/s, loss and the
# share of packets more than 5 ms (and 20 ms) late, plus mohd's CPU and RSS over the same window.
# Everything runs on 127.0.0.1. Prints a markdown table; see benches/README.md.
#
# Usage: benches/load.sh [N ...]          default: 100 500 1000
# Environment:
#   MEASURE=25   seconds of steady state measured per N (after all N calls are up)
#   SETTLE=3     seconds to wait after all N calls are up before measuring
#   RATE=100     calls per second while bringing the calls up
#   MOHD=path    use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="nice -n -10"   run mohd under this command prefix (or "chrt -f 10"; root)
#   CODEC=pcmu   what the calls offer: pcmu (PCMU/PCMA, the default), g722, opus, or pcmu-srtp
#                (PCMU over SRTP with SDES keys; mohd is then given a config that accepts SDES over
#                UDP). The scenarios are benches/sipp/uac_*.xml; the table adds CPU per packet.
#   SIPP_UAS=1   also measure sipp itself as the streaming UAS (the reference), same N values
#   KEEP=1       keep the work folder (logs, sipp stats, receiver JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

MEASURE=${MEASURE:-25}
SETTLE=${SETTLE:-3}
RATE=${RATE:-100}
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(100 500 1000)
CODEC=${CODEC:-pcmu}

# The sipp scenario for the codec, and the RTP clock the receiver schedules packets by.
rx_clock=(--clock-rate 8000 --frame 160)
case "$CODEC" in
  pcmu) scenario=tests/sipp/uac_call_inf.xml ;;
  g722) scenario=benches/sipp/uac_g722.xml ;;
  opus)
    scenario=benches/sipp/uac_opus.xml
    rx_clock=(--clock-rate 48000 --frame 960)
    ;;
  pcmu-srtp) scenario=benches/sipp/uac_pcmu_srtp.xml ;;
  *)
    echo "load.sh: CODEC must be pcmu, g722, opus or pcmu-srtp, not $CODEC" >&2
    exit 1
    ;;
esac

for tool in sipp python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "load.sh: needs $tool (sipp: apt-get install sip-tester, or scripts/setup-deps)" >&2
    exit 1
  fi
done

if [ -z "${MOHD:-}" ]; then
  cargo build --release --bin mohd >&2
  MOHD=target/release/mohd
fi

# Each call holds an RTP and an RTCP socket in mohd and one socket in the receiver.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /tmp/mohd-load.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "load.sh: logs in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Waits (up to $2 s) for a file to exist.
wait_file() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  echo "load.sh: $1 did not appear within $2 s" >&2
  return 1
}

# Runs the N-call measurement against a UAS at $2 (host:port), streaming process $3, with the
# sipp scenario $5. Prints one table row: N | packets/s | late >5 ms | CPU | RSS | loss | late
# >20 ms | p99 | max | receiver CPU | load | CPU per packet.
measure() {
  local n=$1 target=$2 pid=$3 tag=$4
  local inf="$work/calls_${tag}_$n.csv" ready="$work/ready_${tag}_$n" out="$work/rx_${tag}_$n.json"
  python3 benches/rtp_receiver.py --streams "$n" --inf "$inf" --ready "$ready" --pid "$pid" \
    --settle "$SETTLE" --measure "$MEASURE" --out "$out" "${rx_clock[@]}" >/dev/null &
  local rx=$!
  pids+=("$rx")
  wait_file "$ready" 30
  local ramp=$(((n + RATE - 1) / RATE))
  local hold_ms=$(((ramp + SETTLE + MEASURE + 10) * 1000))
  local limit=$((2 * ramp + SETTLE + MEASURE + 90))
  sipp "$target" -sf "$5" -inf "$inf" -s moh -i 127.0.0.1 \
    -l "$n" -m "$n" -r "$RATE" -set hold_ms "$hold_ms" -nostdin \
    -timeout "${limit}s" -timeout_error -recv_timeout 30s \
    -trace_stat -stf "$work/sipp_${tag}_$n.csv" -fd 5 \
    -trace_err -error_file "$work/sipp_err_${tag}_$n.log" \
    >"$work/sipp_${tag}_$n.screen" 2>&1 &
  local uac=$!
  pids+=("$uac")
  local rx_rc=0 uac_rc=0
  wait "$uac" || uac_rc=$?
  wait "$rx" || rx_rc=$?
  if [ "$rx_rc" -ne 0 ] || [ ! -s "$out" ]; then
    echo "load.sh: receiver failed for N=$n ($tag)" >&2
    return 1
  fi
  python3 - "$out" "$n" "$uac_rc" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n, rc = sys.argv[2], int(sys.argv[3])
note = "" if rc == 0 and r["streams_in_window"] == int(n) else \
    f" (sipp exit {rc}, {r['streams_in_window']}/{n} streams)"
if r["not_rtp"] or r["other_ssrc"]:
    note += f" ({r['not_rtp']} non-RTP, {r['other_ssrc']} foreign-SSRC datagrams)"
print(f"| {n}{note} | {r['packets_per_s']:.0f} | {r['late_pct']['5ms']:.3f} | "
      f"{r['cpu_pct_one_core']:.1f} | {r['rss_mib']:.1f} | {r['lost']} | {r['ts_gaps']} | "
      f"{r['late_pct']['20ms']:.3f} | {r['late_p99_ms']:.2f} | {r['late_max_ms']:.1f} | "
      f"{r['receiver_cpu_pct_one_core']:.0f} | {r['loadavg_1min_at_end']:.1f} | "
      f"{r['cpu_pct_one_core'] * 1e4 / max(r['packets_per_s'], 1):.2f} |")
EOF
}

header() {
  echo
  echo "$1"
  echo
  echo "| N | packets/s | late >5 ms (%) | $2 CPU (% of one core) | $2 RSS (MiB) | lost (seq gaps) | frames not sent (ts gaps) | late >20 ms (%) | p99 lateness (ms) | max lateness (ms) | receiver CPU (%) | load avg | $2 CPU per packet (µs) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
}

# mohd, on loopback, with the built-in demo music and the default dialplan (every codec
# enabled). SDES keys are refused over plain UDP unless the config allows them.
mohd_args=(serve --sip 127.0.0.1:0)
if [ "$CODEC" = pcmu-srtp ]; then
  cat >"$work/mohd.toml" <<'EOF'
[rtp]
srtp_over_plain_transports = true

[channels.default]
music = "demo"

[dialplan]
default = "default"
EOF
  mohd_args+=(--config "$work/mohd.toml")
fi
# shellcheck disable=SC2086 # MOHD_WRAP is a command prefix, split on purpose.
${MOHD_WRAP:-} "$MOHD" "${mohd_args[@]}" >"$work/mohd.out" 2>"$work/mohd.err" &
mohd_pid=$!
pids+=("$mohd_pid")
for ((i = 0; i < 600; i++)); do
  grep -q "SIP listening on udp:" "$work/mohd.out" 2>/dev/null && break
  sleep 0.1
done
sip=$(sed -n 's/^mohd: SIP listening on udp://p' "$work/mohd.out" | head -n1)
[ -n "$sip" ] || { echo "load.sh: mohd did not start:" >&2; cat "$work/mohd.err" >&2; exit 1; }

echo "mohd $("$MOHD" --version 2>/dev/null || true)${MOHD_WRAP:+ under $MOHD_WRAP}, $(nproc) cores, ${MEASURE} s measured per N; receiver and sipp on the same machine"
header "mohd (PID $mohd_pid, $MOHD), calls offering $CODEC ($scenario)" mohd
for n in "${COUNTS[@]}"; do
  measure "$n" "$sip" "$mohd_pid" mohd "$scenario"
done

if [ -n "${SIPP_UAS:-}" ] && [ "$CODEC" != pcmu ]; then
  echo "load.sh: SIPP_UAS streams PCMU only; measure the reference with CODEC=pcmu" >&2
elif [ -n "${SIPP_UAS:-}" ]; then
  # The reference: sipp as the UAS, streaming a G.711 file to each caller (rtp_stream).
  python3 - "$work/moh.ulaw" <<'EOF'
import math, sys
# 10 s of a tone melody, 8 kHz mu-law: what sipp's rtp_stream sends as payload 0.
def ulaw(x):
    s = max(-32635, min(32635, int(x)))
    sign = 0x80 if s < 0 else 0
    s = abs(s) + 0x84
    exp = 7
    while exp > 0 and not (s & (0x4000 >> (7 - exp))):
        exp -= 1
    return ~(sign | (exp << 4) | ((s >> (exp + 3)) & 0x0F)) & 0xFF
notes = [262, 330, 392, 523]
data = bytes(ulaw(8000 * math.sin(2 * math.pi * notes[(i // 4000) % 4] * i / 8000))
             for i in range(80000))
open(sys.argv[1], "wb").write(data)
EOF
  uas_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$work" && exec sipp -sf "$repo/tests/sipp/uas_stream.xml" -i 127.0.0.1 -mi 127.0.0.1 -p "$uas_port" \
    -nostdin -trace_err -error_file "$work/sipp_uas_err.log" >"$work/sipp_uas.screen" 2>&1) &
  uas_pid=$!
  pids+=("$uas_pid")
  sleep 1
  header "sipp as the streaming UAS (PID $uas_pid, rtp_stream of a mu-law file)" "sipp UAS"
  for n in "${COUNTS[@]}"; do
    measure "$n" "127.0.0.1:$uas_port" "$uas_pid" sipp tests/sipp/uac_call_inf.xml
  done
fi
