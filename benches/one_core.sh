#!/usr/bin/env bash
# One-core benchmark (not a test): mohd confined to one core at capacity, and how fast it still
# answers SIP OPTIONS and the web page (issue 18: under `taskset -c 0` at capacity, OPTIONS and
# the web page answer within 100 ms). Everything on 127.0.0.1. For each wrapper in WRAPS, mohd
# runs under it (one core: one media thread), `mohd load` (on another core) offers OFFER held
# calls, more than one core carries, so admission fills the core and refuses the rest; while
# they stream, a prober (on the other core too) sends an OPTIONS, then GETs /healthz and /, in
# turn, one at a time, and times each answer. See benches/README.md ("One core").
#
# Usage: benches/one_core.sh
# Environment:
#   WRAPS="taskset -c 0|taskset -c 0 chrt -f 10"   mohd's command prefixes, one run each
#                  (separated by |; chrt needs root)
#   LOAD_CPU=1     the core `mohd load` and the prober run on (taskset -c)
#   OFFER=8000     calls offered: more than one core carries (~3,900 on a 2-vCPU EPYC), so
#                  admission answers what it can and refuses the rest
#   RATE=400       calls per second while offering
#   MEASURE=30     seconds the streams are measured; the prober runs within them
#   PAUSE=0.05     seconds between probes
#   MOHD=path      use this mohd binary instead of building target/release/mohd
#   LOAD=path      the binary whose `mohd load` places the calls (default: MOHD)
#   KEEP=1         keep the work folder (logs, every run's JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
bench=one_core.sh

WRAPS=${WRAPS:-taskset -c 0|taskset -c 0 chrt -f 10}
LOAD_CPU=${LOAD_CPU:-1}
OFFER=${OFFER:-8000}
RATE=${RATE:-400}
MEASURE=${MEASURE:-30}
SETTLE=3
PAUSE=${PAUSE:-0.05}

# shellcheck source=benches/common.sh
. benches/common.sh
mohd_binary

# OPTIONS, GET /healthz and GET / in turn, each timed from sending to the whole answer, for
# argv[3] seconds; one JSON object of lists of milliseconds (null: no answer within 2 s) and
# the statuses seen.
cat >"$work/probe.py" <<'EOF'
import http.client, json, socket, sys, time, uuid
sip_host, sip_port = sys.argv[1].rsplit(":", 1)
web_host, web_port = sys.argv[2].rsplit(":", 1)
seconds, pause = float(sys.argv[3]), float(sys.argv[4])
sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sip.bind(("127.0.0.1", 0))
sip.settimeout(2.0)
local = sip.getsockname()[1]
times = {"options": [], "healthz": [], "page": []}
statuses = {k: {} for k in times}

def options():
    branch, call_id = "z9hG4bK" + uuid.uuid4().hex, uuid.uuid4().hex
    msg = (f"OPTIONS sip:moh@{sip_host}:{sip_port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}\r\n"
           f"From: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\nTo: <sip:moh@{sip_host}>\r\n"
           f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    start = time.monotonic()
    sip.sendto(msg.encode(), (sip_host, int(sip_port)))
    deadline = start + 2.0
    while True:
        try:
            sip.settimeout(max(0.001, deadline - time.monotonic()))
            data = sip.recv(65536)
        except (socket.timeout, ConnectionRefusedError):
            return None, "timeout"
        if call_id.encode() in data:
            return (time.monotonic() - start) * 1000, data.split(b" ", 2)[1].decode()

def get(path):
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(web_host, int(web_port), timeout=2.0)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return (time.monotonic() - start) * 1000, str(resp.status)
    except OSError:
        return None, "timeout"

end = time.monotonic() + seconds
while time.monotonic() < end:
    for name, probe in (("options", options), ("healthz", lambda: get("/healthz")), ("page", lambda: get("/"))):
        ms, status = probe()
        times[name].append(ms)
        statuses[name][status] = statuses[name].get(status, 0) + 1
        time.sleep(pause)
print(json.dumps({"times_ms": times, "statuses": statuses}))
EOF

results=()
IFS='|' read -r -a wraps <<<"$WRAPS"
for i in "${!wraps[@]}"; do
  MOHD_WRAP=${wraps[$i]}
  write_config </dev/null
  web=127.0.0.1:$(free_port)
  start_mohd --config "$work/mohd.toml"
  taskset -c "$LOAD_CPU" "$LOAD" load "sip:moh@$sip" --calls "$OFFER" --rate "$RATE" --settle "$SETTLE" \
    --duration "$MEASURE" --timeout 10 --server-pid "$mohd_pid" --json \
    >"$work/load_$i.json" 2>"$work/load_$i.err" &
  load_pid=$!
  pids+=("$load_pid")
  # The window opens once every call is answered or refused, and SETTLE s on.
  sleep "$(awk -v n="$OFFER" -v r="$RATE" -v s="$SETTLE" 'BEGIN {print n / r + s + 2}')"
  up=$(metric mohd_calls_active)
  taskset -c "$LOAD_CPU" python3 "$work/probe.py" "$sip" "$web" "$((MEASURE - 4))" "$PAUSE" \
    >"$work/probe_$i.json"
  echo "$up $(metric mohd_calls_active) $(metric mohd_calls_capacity)" >"$work/calls_$i"
  wait "$load_pid" || { echo "one_core.sh: mohd load failed:" >&2; cat "$work/load_$i.err" >&2; }
  kill "$mohd_pid" 2>/dev/null || true
  wait "$mohd_pid" 2>/dev/null || true
  results+=("$MOHD_WRAP")
done

echo
echo "mohd $("$MOHD" --version 2>/dev/null | awk '{print $2}'), $(nproc) cores, load average" \
  "$(cut -d' ' -f1 /proc/loadavg); $OFFER calls offered at $RATE/s, mohd load and the prober on core $LOAD_CPU"
echo "command: WRAPS=\"$WRAPS\" OFFER=$OFFER MEASURE=$MEASURE benches/one_core.sh"
python3 - "$work" "${results[@]}" <<'EOF'
import json, math, os, sys
work, wraps = sys.argv[1], sys.argv[2:]

def pct(values, p):
    # Nearest rank, as mohd load's figures.
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]

print()
print("| mohd under | calls up (start / end of probing) | capacity | streams > 5 ms late (%) | lost / not sent | probe | answers | p50 / p99 / max (ms) | within 100 ms | statuses |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, wrap in enumerate(wraps):
    calls = (open(os.path.join(work, f"calls_{i}")).read().split() + ["-"] * 3)[:3]
    try:
        load = json.load(open(os.path.join(work, f"load_{i}.json")))
        m = load["media"]
        media = (f"{m['late_over_5ms_pct']:.3f}", f"{m['lost']} / {m['frames_not_sent']}")
    except (OSError, ValueError):
        media = ("-", "-")
    probe = json.load(open(os.path.join(work, f"probe_{i}.json")))
    for name, label in (("options", "SIP OPTIONS"), ("healthz", "GET /healthz"), ("page", "GET /")):
        got = sorted(t for t in probe["times_ms"][name] if t is not None)
        n = len(probe["times_ms"][name])
        within = sum(1 for t in got if t <= 100)
        figures = f"{pct(got, 50):.1f} / {pct(got, 99):.1f} / {got[-1]:.1f}" if got else "-"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(probe["statuses"][name].items()))
        print(f"| {wrap} | {calls[0]} / {calls[1]} | {calls[2]} | {media[0]} | {media[1]} | {label} | "
              f"{len(got)} of {n} | {figures} | {within} of {n} | {statuses} |")
EOF
