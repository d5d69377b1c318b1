#!/usr/bin/env bash
# What one box would carry on a real NIC (issue 18's projection), from what this machine can
# measure without one. A measurement and a calculation, not a test.
#
# Loopback makes every send pay for the receive side too (the kernel delivers the datagram in
# the sender's context). A real NIC's transmit path stops at the driver, which puts the packet
# on a ring that the hardware drains. A TUN interface is that path with a ring that a process
# drains: each packet goes through UDP, IP, routing, the qdisc and tun's transmit (into its
# ring, waking the reader), and the reader's work is not the sender's, as a NIC's DMA is not.
# (A `dummy` interface would stop one step earlier; this machine's kernel has none.) So this
# script measures, in one run:
#   - rtp_floor (benches/rtp_floor.c) on loopback, its receivers bound and never read;
#   - rtp_floor in a network namespace it creates, sending to an address routed to a TUN
#     interface there, drained by a small C reader (nothing leaves the namespace; the
#     namespace is deleted on exit);
#   - with MOHD_NS="1000:3255 2500:3752" (mohd's ns per packet on loopback from benches/load.sh,
#     best taken in the same quiet session), the projection below.
#
# Projection, per N:
#   mohd's own work per packet   = mohd loopback ns − floor loopback sendmmsg ns   (user space,
#                                  the same whatever the interface)
#   mohd on a NIC, ns per packet = that + floor TUN sendmmsg ns
#   calls per core               = BUDGET × 1e9 / (50 packets/s × ns per packet on a NIC)
#   calls per box                = CORES × calls per core, capped by the link:
#   1 GbE: 172 B RTP + 8 UDP + 20 IP + 14 Ethernet + 4 FCS + 8 preamble + 12 gap = 238 B on the
#   wire, 50/s → 95.2 kbit/s per G.711 call → 10,504 calls per 1 Gbit/s.
# A real driver's descriptor write and doorbell (batched by xmit_more when sendmmsg hands the
# stack many packets) stand where tun's ring push is; the two are of one order, so the figure
# is an estimate of CPU, not a bound, while the link cap is exact.
#
# Usage: benches/nic.sh            (as root: it creates a network namespace)
#   COUNTS="1000 2500"  streams    MEASURE=10  seconds each    BUDGET=0.7 ([calls] media_budget)
#   CORES=$(nproc)      MOHD_NS="N:ns …"   mohd's loopback ns/packet per N, for the projection
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS=${COUNTS:-1000 2500}
MEASURE=${MEASURE:-10}
BUDGET=${BUDGET:-0.7}
CORES=${CORES:-$(nproc)}
MOHD_NS=${MOHD_NS:-}

work=$(mktemp -d /tmp/mohd-nic.XXXXXX)
ns=mohd-nic-$$
sinks=
tun_pid=
cleanup() {
  [ -n "$sinks" ] && kill "$sinks" 2>/dev/null
  [ -n "$tun_pid" ] && kill "$tun_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

gcc -O2 -o "$work/rtp_floor" benches/rtp_floor.c
gcc -O2 -o "$work/tun_sink" -x c - <<'C'
// Attaches to TUN interface t0 and reads (drops) every packet, so tun's transmit path runs as a
// NIC driver's would: into a ring that someone drains.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
int main(void) {
  int fd = open("/dev/net/tun", O_RDWR);
  if (fd < 0) { perror("/dev/net/tun"); return 1; }
  struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI; strcpy(ifr.ifr_name, "t0");
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); return 1; }
  puts("ready"); fflush(stdout);
  char buf[2048];
  for (;;) if (read(fd, buf, sizeof buf) < 0) return 0;
}
C

ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" "$work/tun_sink" >"$work/tun_sink.out" &
tun_pid=$!
for ((i = 0; i < 50; i++)); do
  grep -q ready "$work/tun_sink.out" 2>/dev/null && break
  sleep 0.1
done
ip -n "$ns" addr add 10.253.0.1/24 dev t0
ip -n "$ns" link set t0 up txqueuelen 10000

# Ns per packet of rtp_floor in mode $2 for $1 streams; $3 = "loopback" or "tun".
floor() {
  local n=$1 mode=$2 where=$3 out="$work/floor_$1_$2_$3.txt"
  if [ "$where" = tun ]; then
    ip netns exec "$ns" env RTP_FLOOR_DEST=10.253.0.2 \
      "$work/rtp_floor" "$mode" "$n" "$((MEASURE + 2))" 20000 1 >"$out"
  else
    local ready="$work/ready_$n"
    rm -f "$ready"
    python3 benches/floor_sinks.py "$n" "$ready" &
    sinks=$!
    local i
    for ((i = 0; i < 300; i++)); do
      [ -s "$ready" ] && break
      sleep 0.1
    done
    "$work/rtp_floor" "$mode" "$n" "$((MEASURE + 2))" "$(cat "$ready")" 1 >"$out"
    kill "$sinks" 2>/dev/null || true
    wait "$sinks" 2>/dev/null || true
    sinks=
  fi
  sed -n 's/.*, \([0-9]*\) ns\/packet.*/\1/p' "$out"
}

results=()
for n in $COUNTS; do
  for where in loopback tun; do
    for mode in sendto sendmmsg; do
      results+=("$n:$where:$mode:$(floor "$n" "$mode" "$where")")
    done
  done
done

python3 - "$BUDGET" "$CORES" "$MOHD_NS" "${results[@]}" <<'PY'
import sys
budget, cores, mohd_arg = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
floor = {}
for r in sys.argv[4:]:
    n, where, mode, v = r.split(":")
    floor[(int(n), where, mode)] = int(v) if v else None
mohd = {int(a): int(b) for a, b in (x.split(":") for x in mohd_arg.split())} if mohd_arg else {}
link_calls = 1e9 / (238 * 8 * 50)
def fmt(v):
    return "—" if v is None else f"{v:,}"
print(f"rtp_floor ns/packet, loopback vs a TUN interface drained by a reader (a NIC's transmit path); "
      f"1 GbE carries {link_calls:,.0f} G.711 calls")
print()
print("| streams | loopback sendto | loopback sendmmsg | TUN sendto | TUN sendmmsg |")
print("|---|---|---|---|---|")
for n in sorted({k[0] for k in floor}):
    print(f"| {n:,} | " + " | ".join(fmt(floor[(n, w, m)]) for w in ("loopback", "tun") for m in ("sendto", "sendmmsg")) + " |")
if mohd:
    print()
    print(f"Projection (budget {budget}, {cores} cores, 50 packets/s per call):")
    print()
    print("| streams | mohd loopback ns | mohd own work ns | mohd on a NIC ns | calls per core | calls per box | after the 1 GbE cap |")
    print("|---|---|---|---|---|---|---|")
    for n, m in sorted(mohd.items()):
        lo, tun = floor.get((n, "loopback", "sendmmsg")), floor.get((n, "tun", "sendmmsg"))
        if lo is None or tun is None:
            continue
        own = max(m - lo, 0)
        nic = own + tun
        per_core = budget * 1e9 / (50 * nic)
        box = cores * per_core
        print(f"| {n:,} | {m:,} | {own:,} | {nic:,} | {per_core:,.0f} | {box:,.0f} | {min(box, link_calls):,.0f} |")
PY
