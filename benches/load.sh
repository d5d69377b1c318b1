#!/usr/bin/env bash
# Load benchmark (not a test): for each N, N concurrent calls measured side by side on three
# senders in one run, everything on 127.0.0.1:
#   1. mohd, called by `mohd load` (SIP, and a receiver that reads every stream with recvmmsg
#      and kernel receive timestamps: lateness against each stream's own RTP clock, loss,
#      frames not sent, setup times, and the sender's CPU per packet);
#   2. sipp as the streaming UAS (tests/sipp/uas_stream.xml, rtp_stream of a mu-law file),
#      called and measured the same way (PCMU only);
#   3. rtp_floor (benches/rtp_floor.c, built here): a bare C sender of the same packets,
#      whose CPU per packet is the floor; its receivers are bound and never read.
# Prints markdown tables; see benches/README.md. No packet capture may run meanwhile (a capture
# tap adds ~4 µs per packet to every sender).
#
# Usage: benches/load.sh [N ...]          default: 1000 2500
#        SWEEP="1500 2000 2500 3000 3500 4000" benches/load.sh
#                  the largest N meeting the bar (99.9 % of packets within 5 ms, none lost, no
#                  frame not sent, every call answered): mohd only unless SIPP_UAS/FLOOR say
# Environment:
#   MEASURE=25     seconds measured per N (after all N calls are up and SETTLE)
#   SETTLE=3       seconds between the last answer and the measurement
#   RATE=200       calls per second while bringing the calls up (and hanging up)
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   MOHD_WRAP="chrt -f 10"   run mohd under this command prefix (root; mohd's media thread
#                  asks for SCHED_FIFO itself when allowed)
#   CODEC=pcmu     what the calls offer: pcmu, g722, opus, or pcmu-srtp (PCMU over SRTP with SDES
#                  keys; mohd then gets a config that accepts SDES over UDP)
#   SIPP_UAS=0     skip the sipp UAS reference (default: measured, for CODEC=pcmu)
#   FLOOR=0        skip rtp_floor;  FLOOR_MODES="sendto sendmmsg"  its modes (also: connected)
#   MAX_CALLS=n    [calls] max_calls (mohd's default 4,096; raised to the largest N when that
#                  is above it), with [rtp] ports widened to 10000-32767 past 5,000 calls
#   LOAD=path      the binary whose `mohd load` places the calls (default: MOHD)
#   PORT_MODEL=shared|per-call   mohd's [rtp] port_model (default: mohd's default)
#   MEDIA_THREADS=n  mohd's [rtp] media_threads (default: one per core)
#   KEEP=1         keep the work folder (logs, every run's JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
bench=load.sh

MEASURE=${MEASURE:-25}
SETTLE=${SETTLE:-3}
RATE=${RATE:-200}
COUNTS=("$@")
SWEEP=${SWEEP:-}
if [ -n "$SWEEP" ]; then
  read -r -a COUNTS <<<"$SWEEP"
  SIPP_UAS=${SIPP_UAS:-0}
  FLOOR=${FLOOR:-0}
fi
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 2500)
largest=$(printf '%s\n' "${COUNTS[@]}" | sort -n | tail -n1)
MAX_CALLS=${MAX_CALLS:-$((largest > 4096 ? largest : 0))}
CODEC=${CODEC:-pcmu}
SIPP_UAS=${SIPP_UAS:-1}
FLOOR=${FLOOR:-1}
FLOOR_MODES=${FLOOR_MODES:-sendto sendmmsg}

load_args=(--codec pcmu)
case "$CODEC" in
  pcmu) ;;
  g722 | opus) load_args=(--codec "$CODEC") ;;
  pcmu-srtp) load_args=(--codec pcmu --srtp) ;;
  *)
    echo "load.sh: CODEC must be pcmu, g722, opus or pcmu-srtp, not $CODEC" >&2
    exit 1
    ;;
esac
[ "$CODEC" = pcmu ] || SIPP_UAS=0

for tool in python3 $([ "$SIPP_UAS" = 0 ] || echo sipp) $([ "$FLOOR" = 0 ] || echo gcc); do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "load.sh: needs $tool (sipp: apt-get install sip-tester, or scripts/setup-deps)" >&2
    exit 1
  fi
done

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

floor_bin=$work/rtp_floor
if [ "$FLOOR" != 0 ]; then
  gcc -O2 -o "$floor_bin" benches/rtp_floor.c
fi

# `mohd load` against $2 (host:port) for N=$1 calls, the sender being process $3; JSON to $4.
load() {
  local n=$1 target=$2 pid=$3 out=$4
  "$LOAD" load "sip:moh@$target" --calls "$n" --rate "$RATE" --duration "$MEASURE" \
    --settle "$SETTLE" --server-pid "$pid" "${load_args[@]}" --json >"$out" 2>"$out.err" || {
    echo "load.sh: mohd load failed for N=$n against $target:" >&2
    cat "$out.err" >&2
    return 1
  }
}

# rtp_floor in mode $2 for N=$1 streams over MEASURE s, to receivers bound on 127.0.0.1 that
# never read. Prints its ns per packet.
floor() {
  local n=$1 mode=$2 ready="$work/floor_ready_$1_$2"
  python3 benches/floor_sinks.py "$n" "$ready" &
  local sinks=$!
  pids+=("$sinks")
  local i
  for ((i = 0; i < 300; i++)); do
    [ -s "$ready" ] && break
    sleep 0.1
  done
  local base
  base=$(cat "$ready")
  "$floor_bin" "$mode" "$n" "$((MEASURE + 2))" "$base" 1 >"$work/floor_${n}_$mode.txt"
  kill "$sinks" 2>/dev/null || true
  wait "$sinks" 2>/dev/null || true
  sed -n 's/.*, \([0-9]*\) ns\/packet.*/\1/p' "$work/floor_${n}_$mode.txt"
}

if [ "$CODEC" = pcmu-srtp ] || [ "$MAX_CALLS" != 0 ] || [ -n "${PORT_MODEL:-}" ] ||
  [ -n "${MEDIA_THREADS:-}" ]; then
  {
    [ "$MAX_CALLS" = 0 ] || printf '[calls]\nmax_calls = %s\n\n' "$MAX_CALLS"
    printf '[rtp]\n'
    [ "$CODEC" != pcmu-srtp ] || printf 'srtp_over_plain_transports = true\n'
    [ -z "${PORT_MODEL:-}" ] || printf 'port_model = "%s"\n' "$PORT_MODEL"
    [ -z "${MEDIA_THREADS:-}" ] || printf 'media_threads = %s\n' "$MEDIA_THREADS"
    [ "$MAX_CALLS" -le 5000 ] || printf 'ports = "10000-32767"\n'
  } | write_config
  start_mohd --config "$work/mohd.toml"
else
  start_mohd
fi
sleep 1

if [ "$SIPP_UAS" != 0 ]; then
  # sipp's UAS streams this file: 10 s of a tone melody, 8 kHz mu-law.
  python3 - "$work/moh.ulaw" <<'EOF'
import math, sys
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
  (cd "$work" && exec sipp -sf "$repo/tests/sipp/uas_stream.xml" -i 127.0.0.1 -mi 127.0.0.1 \
    -p "$uas_port" -nostdin -trace_err -error_file "$work/sipp_uas_err.log" \
    >"$work/sipp_uas.screen" 2>&1) &
  uas_pid=$!
  pids+=("$uas_pid")
  sleep 1
fi

echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}')${MOHD_WRAP:+ under $MOHD_WRAP}, $CODEC," \
  "$(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) at start; ${MEASURE} s measured per N;" \
  "mohd load, sipp and rtp_floor on the same machine"
for n in "${COUNTS[@]}"; do
  load "$n" "$sip" "$mohd_pid" "$work/mohd_$n.json"
  if [ "$SIPP_UAS" != 0 ]; then
    load "$n" "127.0.0.1:$uas_port" "$uas_pid" "$work/sipp_$n.json"
  fi
  for mode in $FLOOR_MODES; do
    [ "$FLOOR" = 0 ] && break
    floor "$n" "$mode" >"$work/floor_ns_${n}_$mode"
  done
done

python3 - "$work" "$FLOOR" "$FLOOR_MODES" "$SIPP_UAS" "${COUNTS[@]}" <<'EOF'
import json, os, sys
work, floor_on, modes, sipp_on, counts = sys.argv[1], sys.argv[2] != "0", sys.argv[3].split(), sys.argv[4] != "0", sys.argv[5:]

def report(who, n):
    path = os.path.join(work, f"{who}_{n}.json")
    return json.load(open(path)) if os.path.exists(path) else None

def floor_ns(n, mode):
    path = os.path.join(work, f"floor_ns_{n}_{mode}")
    text = open(path).read().strip() if os.path.exists(path) else ""
    return float(text) if text else None

def ns(r):
    s = r and r.get("server")
    return s and s.get("cpu_ns_per_packet")

def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)

cols = ["N", "mohd > 5 ms late (%)", "mohd p99.9 / max (ms)", "mohd lost / not sent", "mohd CPU (% core)", "mohd ns/packet"]
if sipp_on:
    cols += ["sipp > 5 ms late (%)", "sipp p99.9 / max (ms)", "sipp CPU (% core)", "sipp ns/packet"]
if floor_on:
    cols += [f"floor {m} ns/packet" for m in modes]
    if "sendmmsg" in modes:
        cols += ["mohd / floor sendmmsg"]
print()
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for n in counts:
    row = [n]
    for who in ["mohd"] + (["sipp"] if sipp_on else []):
        r = report(who, n)
        if r is None:
            row += ["failed"] * (5 if who == "mohd" else 4)
            continue
        m, s = r["media"], r.get("server") or {}
        row += [f"{m['late_over_5ms_pct']:.3f}",
                f"{m['lateness_ms']['p99_9']:.1f} / {m['lateness_ms']['max']:.1f}"]
        if who == "mohd":
            row += [f"{m['lost']} / {m['frames_not_sent']}"]
        row += [fmt(s.get("cpu_pct_of_core"), ".1f"), fmt(ns(r))]
    if floor_on:
        row += [fmt(floor_ns(n, mode)) for mode in modes]
        if "sendmmsg" in modes:
            f, mo = floor_ns(n, "sendmmsg"), ns(report("mohd", n))
            row += [fmt(mo / f if f and mo else None, ".2f")]
    print("| " + " | ".join(row) + " |")

print()
print("| sender | N | calls answered / failed | streams | packets/s | setup p50 / p99 (ms) | lost | frames not sent | > 20 ms late (%) | RSS (MiB) | receiver kernel drops | mohd load CPU (% core) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in counts:
    for who in ["mohd"] + (["sipp"] if sipp_on else []):
        r = report(who, n)
        if r is None:
            continue
        c, m, s = r["calls"], r["media"], r.get("server") or {}
        setup = c["setup_ms"] or {}
        print(f"| {who} | {n} | {c['answered']} / {c['failed']} | {m['streams']} | {r['packets_per_s']:.0f} | "
              f"{fmt(setup.get('p50'), '.1f')} / {fmt(setup.get('p99'), '.1f')} | {m['lost']} | {m['frames_not_sent']} | "
              f"{m['late_over_20ms_pct']:.3f} | {fmt(s.get('rss_mib'), '.1f')} | {r['receiver']['kernel_drops']} | "
              f"{fmt(r['receiver']['cpu_pct_of_core'], '.1f')} |")
EOF

[ -n "$SWEEP" ] || exit 0
echo
echo "command: SWEEP=\"$SWEEP\" MEASURE=$MEASURE${MOHD_WRAP:+ MOHD_WRAP=\"$MOHD_WRAP\"} benches/load.sh"
python3 - "$work" "${COUNTS[@]}" <<'EOF'
import json, os, sys
work, counts = sys.argv[1], sys.argv[2:]
print()
print("| N | answered / failed | > 5 ms late (%) | p99.9 / max (ms) | lost | frames not sent | mohd CPU (% core) | meets the bar |")
print("|---|---|---|---|---|---|---|---|")
best = None
for n in counts:
    try:
        r = json.load(open(os.path.join(work, f"mohd_{n}.json")))
    except (OSError, ValueError):
        print(f"| {n} | failed | | | | | | no |")
        continue
    c, m, s = r["calls"], r["media"], r.get("server") or {}
    ok = (m["late_over_5ms_pct"] <= 0.1 and m["lost"] == 0 and m["frames_not_sent"] == 0
          and c["failed"] == 0 and c["answered"] == int(n))
    if ok:
        best = max(best or 0, int(n))
    cpu = s.get("cpu_pct_of_core")
    print(f"| {n} | {c['answered']} / {c['failed']} | {m['late_over_5ms_pct']:.3f} | "
          f"{m['lateness_ms']['p99_9']:.1f} / {m['lateness_ms']['max']:.1f} | {m['lost']} | "
          f"{m['frames_not_sent']} | {'-' if cpu is None else format(cpu, '.1f')} | {'yes' if ok else 'no'} |")
print()
print(f"Largest N meeting the bar: {best if best else 'none of these'}")
EOF
