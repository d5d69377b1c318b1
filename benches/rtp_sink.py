#!/usr/bin/env python3
"""RTP sink for benches/soak.sh: N pairs of UDP sockets on 127.0.0.1 (an even RTP port and the
RTCP port above it) that receive and count whatever arrives, for as long as it runs.

Unlike `mohd load` (benches/load.sh: one measurement window over N calls that are all up at
once), this serves a churn of sipp's calls: sipp takes the ports from the injection file in turn, so with
more pairs than concurrent calls a port is reused only after its previous call has ended. The
sockets stay open the whole run, so mohd never sees ICMP port unreachable.

Every --every seconds it appends one JSON line to --log (packets/s, RTP streams seen, non-RTP
datagrams); on SIGTERM or SIGINT it writes the totals to --out and exits. Standard library only.
"""

import argparse
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, required=True, help="RTP/RTCP port pairs")
    ap.add_argument("--inf", required=True, help="sipp injection file to write")
    ap.add_argument("--ready", required=True, help="file created once the sockets are bound")
    ap.add_argument("--log", help="append a JSON line every --every seconds")
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--out", help="write the totals here on exit")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.pairs + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    ep = select.epoll()
    socks = {}
    ports = []
    rng = random.Random(os.getpid())
    while len(ports) < args.pairs:
        port = rng.randrange(40000, 60000, 2)
        pair = []
        try:
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                pair.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            for s in pair:
                s.close()
            continue
        for kind, s in zip(("rtp", "rtcp"), pair):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.setblocking(False)
            ep.register(s.fileno(), select.EPOLLIN)
            socks[s.fileno()] = (s, kind)
        ports.append(port)

    tmp = args.inf + ".tmp"
    with open(tmp, "w") as f:
        f.write("SEQUENTIAL\n")
        for p in ports:
            f.write(f"127.0.0.1;{p};\n")
    os.replace(tmp, args.inf)
    with open(args.ready, "w") as f:
        f.write("ready\n")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    totals = {"rtp": 0, "rtcp": 0, "not_rtp": 0, "bytes": 0}
    ssrcs = set()
    window = {"rtp": 0, "ssrcs": set()}
    t0 = time.monotonic()
    next_log = t0 + args.every
    log = open(args.log, "a") if args.log else None
    while not stop:
        for fd, _ in ep.poll(0.5):
            s, kind = socks[fd]
            while True:
                try:
                    data = s.recv(2048)
                except OSError:
                    break
                totals["bytes"] += len(data)
                if kind == "rtcp" or (len(data) >= 2 and 200 <= data[1] <= 204):
                    totals["rtcp"] += 1
                elif len(data) >= 12 and data[0] >> 6 == 2:
                    totals["rtp"] += 1
                    window["rtp"] += 1
                    ssrc = struct.unpack_from("!I", data, 8)[0]
                    ssrcs.add(ssrc)
                    window["ssrcs"].add(ssrc)
                else:
                    totals["not_rtp"] += 1
        now = time.monotonic()
        if now >= next_log:
            if log:
                log.write(json.dumps({
                    "t": round(now - t0, 1),
                    "rtp_per_s": round(window["rtp"] / args.every, 1),
                    "streams": len(window["ssrcs"]),
                }) + "\n")
                log.flush()
            window = {"rtp": 0, "ssrcs": set()}
            next_log += args.every
    result = dict(totals, streams_total=len(ssrcs), seconds=round(time.monotonic() - t0, 1))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
