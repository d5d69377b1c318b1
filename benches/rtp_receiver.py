#!/usr/bin/env python3
"""RTP receiver for benches/load.sh: N UDP sockets on 127.0.0.1, one per call, that answer
nothing and measure how late each packet arrives.

It writes a sipp injection file (-inf) naming its ports, so each call's SDP offer points at one
of them; then it waits until every socket receives RTP (all calls up), lets them settle, and
measures over a fixed window:

  * packets/s received, RTP loss (sequence gaps), non-RTP datagrams;
  * lateness: each stream's packet k is due at anchor + (ts_k - ts_0) / 8000 s, where the anchor
    is the stream's earliest packet relative to that schedule (its minimum one-way delay), so a
    late first packet cannot hide later lateness. Arrival times are the kernel's receive
    timestamps (SO_TIMESTAMPNS), so the receiver's own scheduling delay on a busy 2-core box is
    not counted against the sender;
  * the sender's CPU (utime + stime from /proc/PID/stat over the same window) and RSS (VmRSS).

The result is one JSON object on stdout (and in --out). Standard library only.
"""

import argparse
import array
import errno
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = 35  # Linux asm-generic value (SCM_TIMESTAMPNS too); Python does not export it.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Stream:
    __slots__ = ("ts0", "seq_first", "seq_last", "seq_ext", "seq_max", "packets", "delays", "ssrc", "dts_min", "dts_max")

    def __init__(self):
        self.ts0 = None
        self.seq_first = None
        self.seq_last = None
        self.seq_ext = 0
        self.packets = 0
        # arrival - media time, per packet in the window; the minimum is the anchor.
        self.delays = array.array("d")
        self.seq_max = 0
        self.ssrc = None
        # Media time covered in the window, in RTP timestamp units from ts0.
        self.dts_min = None
        self.dts_max = None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, required=True, help="number of sockets (calls)")
    ap.add_argument("--inf", required=True, help="sipp injection file to write")
    ap.add_argument("--ready", required=True, help="file created once the sockets are bound")
    ap.add_argument("--pid", type=int, help="sender process to measure (CPU, RSS)")
    ap.add_argument("--settle", type=float, default=3.0, help="s after all streams are up")
    ap.add_argument("--measure", type=float, default=25.0, help="measurement window, s")
    ap.add_argument("--up-timeout", type=float, default=120.0, help="s to wait for all streams")
    ap.add_argument("--linger", type=float, default=300.0,
                    help="after measuring, keep receiving until 2 s of silence, at most this long")
    ap.add_argument("--clock-rate", type=int, default=8000)
    ap.add_argument("--frame", type=int, default=160, help="RTP timestamp units per packet")
    ap.add_argument("--late-ms", type=float, nargs="*", default=[5.0, 20.0])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.streams + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    ep = select.epoll()
    socks = {}
    ports = []
    rtcp_socks = {}
    # Each call gets an even RTP port and the RTCP port above it (RFC 3550 6.1), both ours: the
    # sender's RTCP then never lands on another call's RTP socket.
    rng = random.Random(args.streams)
    while len(ports) < args.streams:
        port = rng.randrange(20000, 60000, 2)
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
        rtp_s, rtcp_s = pair
        rtp_s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        for s in pair:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.setblocking(False)
            ep.register(s.fileno(), select.EPOLLIN)
        socks[rtp_s.fileno()] = (rtp_s, Stream())
        rtcp_socks[rtcp_s.fileno()] = rtcp_s
        ports.append(port)

    tmp = args.inf + ".tmp"
    with open(tmp, "w") as f:
        f.write("SEQUENTIAL\n")
        for p in ports:
            f.write(f"127.0.0.1;{p};\n")
    os.replace(tmp, args.inf)
    with open(args.ready, "w") as f:
        f.write("ready\n")

    cmsg_space = socket.CMSG_SPACE(16)
    rate = float(args.clock_rate)
    phase = "wait"  # wait -> settle -> measure -> done
    up = 0
    t_up = None
    win_start = win_end = None
    cpu0 = cpu1 = None
    rss_samples = []
    not_rtp = 0
    rtcp = 0
    foreign = 0
    t_begin = time.monotonic()
    next_rss = 0.0

    while phase != "done":
        now = time.monotonic()
        if phase == "wait" and (up == args.streams or now - t_begin > args.up_timeout):
            phase, t_up = "settle", now
        if phase == "settle" and now - t_up >= args.settle:
            phase = "measure"
            win_start = now
            win_start_rt = time.time()
            if args.pid:
                cpu0 = cpu_seconds(args.pid)
            self0 = own_cpu_seconds()
            next_rss = now
        if phase == "measure":
            if args.pid and now >= next_rss:
                rss_samples.append(rss_mib(args.pid))
                next_rss = now + 1.0
            if now - win_start >= args.measure:
                win_end = now
                win_end_rt = time.time()
                if args.pid:
                    cpu1 = cpu_seconds(args.pid)
                    rss_samples.append(rss_mib(args.pid))
                self1 = own_cpu_seconds()
                phase = "done"
                break
        measuring = phase == "measure"
        for fd, _ in ep.poll(0.1):
            if fd in rtcp_socks:
                while True:
                    try:
                        rtcp_socks[fd].recv(2048)
                    except OSError:
                        break
                    rtcp += 1
                continue
            s, st = socks[fd]
            while True:
                try:
                    data, anc, _flags, _addr = s.recvmsg(2048, cmsg_space)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break
                    raise
                # RTCP sent to the RTP port (packet types 200-204: RFC 5761 4) is not media.
                if len(data) < 12 or data[0] >> 6 != 2 or 200 <= data[1] <= 204:
                    not_rtp += 1
                    continue
                ssrc = struct.unpack_from("!I", data, 8)[0]
                if st.ts0 is None:
                    up += 1
                    st.ts0 = struct.unpack_from("!I", data, 4)[0]
                    st.ssrc = ssrc
                elif ssrc != st.ssrc:
                    # A second stream on one call's port would garble the schedule: count it.
                    foreign += 1
                    continue
                if not measuring:
                    continue
                arrival = None
                for level, typ, cdata in anc:
                    if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", cdata[:16])
                        arrival = sec + nsec * 1e-9
                if arrival is None:
                    arrival = time.time()
                seq, ts = struct.unpack_from("!HI", data, 2)
                # 32-bit timestamp difference, wrap-safe.
                dts = (ts - st.ts0) & 0xFFFFFFFF
                if dts >= 0x80000000:
                    dts -= 0x100000000
                st.delays.append(arrival - dts / rate)
                st.dts_min = dts if st.dts_min is None else min(st.dts_min, dts)
                st.dts_max = dts if st.dts_max is None else max(st.dts_max, dts)
                # Extended sequence number, for loss within the window.
                if st.seq_first is None:
                    st.seq_first = seq
                    st.seq_ext = seq
                    st.seq_max = seq
                else:
                    d = (seq - st.seq_last) & 0xFFFF
                    if d >= 0x8000:
                        d -= 0x10000
                    st.seq_ext += d
                st.seq_last = seq
                st.packets += 1
                st.seq_max = max(st.seq_max, st.seq_ext)

    window = win_end - win_start
    total = 0
    lost = 0
    ts_gaps = 0
    late = {ms: 0 for ms in args.late_ms}
    worst = 0.0
    all_late = array.array("d")
    streams_seen = 0
    for _s, st in socks.values():
        if not st.packets:
            continue
        streams_seen += 1
        total += st.packets
        expected = st.seq_max - st.seq_first + 1
        lost += max(0, expected - st.packets)
        # Frames the media clock covered but no packet carried: lost, or skipped by the sender
        # (a sender that fell behind may drop frames and keep its timestamps on time).
        frames = round((st.dts_max - st.dts_min) / args.frame) + 1
        ts_gaps += max(0, frames - st.packets)
        anchor = min(st.delays)
        all_late.extend(d - anchor for d in st.delays)
    for x in all_late:
        for ms in args.late_ms:
            if x * 1000.0 > ms:
                late[ms] += 1
        if x > worst:
            worst = x
    srt = sorted(all_late)
    p99 = srt[int(0.99 * (len(srt) - 1))] * 1000.0 if srt else 0.0
    p999 = srt[int(0.999 * (len(srt) - 1))] * 1000.0 if srt else 0.0

    result = {
        "streams": args.streams,
        "streams_up": up,
        "streams_in_window": streams_seen,
        "window_s": round(window, 3),
        "window_start_unix": round(win_start_rt, 3),
        "window_end_unix": round(win_end_rt, 3),
        "packets": total,
        "packets_per_s": round(total / window, 1),
        "expected_per_s": args.streams * rate / 160.0,
        "lost": lost,
        "ts_gaps": ts_gaps,
        "not_rtp": not_rtp,
        "other_ssrc": foreign,
        "rtcp_packets": rtcp,
        "late_pct": {f"{ms:g}ms": round(100.0 * n / max(total, 1), 4) for ms, n in late.items()},
        "late_p99_ms": round(p99, 3),
        "late_p999_ms": round(p999, 3),
        "late_max_ms": round(worst * 1000.0, 3),
        "receiver_cpu_pct_one_core": round(100.0 * (self1 - self0) / window, 2),
        "loadavg_1min_at_end": float(open("/proc/loadavg").read().split()[0]),
    }
    if args.pid:
        result["cpu_pct_one_core"] = round(100.0 * (cpu1 - cpu0) / window, 2)
        result["rss_mib"] = round(max(rss_samples), 1) if rss_samples else None
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    sys.stdout.flush()

    # Keep the sockets open until the calls end: a closed port answers ICMP unreachable, and a
    # sender that hangs up on that (as mohd does) would fail the calls still on hold.
    quiet_since = time.monotonic()
    linger_end = quiet_since + args.linger
    while time.monotonic() < linger_end and time.monotonic() - quiet_since < 2.0:
        for fd, _ in ep.poll(0.2):
            sock = rtcp_socks.get(fd) or socks[fd][0]
            while True:
                try:
                    sock.recv(2048)
                except OSError:
                    break
                quiet_since = time.monotonic()


if __name__ == "__main__":
    main()
