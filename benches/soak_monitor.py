#!/usr/bin/env python3
"""Process sampler and report for benches/soak.sh. Standard library only.

  soak_monitor.py sample --pid PID [--metrics URL] --every 60 --out samples.jsonl --stop FILE
      Appends one JSON line per sample (at once, then every --every seconds, until FILE
      exists): VmRSS, open fds, threads, CPU seconds, /proc/PID/io counters, and mohd's own
      figures from /metrics when URL answers.

  soak_monitor.py once --pid PID [--metrics URL] --label NAME --out samples.jsonl
      One sample, labelled (e.g. "idle after" once every call has ended).

  soak_monitor.py report --samples samples.jsonl [--long long.json] [--sipp stat.csv]
                         [--sink sink.json] [--steady SECONDS]
      Prints markdown: start / steady / end table with growth, and the long call's drift.
"""

import argparse
import csv
import json
import os
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Prometheus series read from /metrics (when the web listener is up); absent ones are skipped.
METRICS = {
    "mohd_rtp_packets_sent_total": "rtp_sent",
    "mohd_rtp_packets_late_total": "rtp_late",
    "mohd_rtp_send_errors_total": "send_errors",
    "mohd_calls_active": "calls_active",
    "mohd_rtp_max_drift_seconds": "max_drift_s",
}


def proc_sample(pid):
    s = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "VmRSS":
                s["rss_kib"] = int(v.split()[0])
            elif k == "Threads":
                s["threads"] = int(v)
    s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    s["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("rchar", "wchar", "write_bytes", "read_bytes"):
                    s[k] = int(v)
    except OSError:
        pass
    return s


def metrics_sample(url):
    out = {}
    if not url:
        return out
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        key = METRICS.get(name.split("{", 1)[0]) if "{" not in name else None
        if key:
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def sample(pid, url, t0, label=None):
    s = {"t": round(time.monotonic() - t0, 1), "unix": round(time.time(), 1)}
    if label:
        s["label"] = label
    s.update(proc_sample(pid))
    s.update(metrics_sample(url))
    return s


def cmd_sample(a):
    t0 = time.monotonic()
    with open(a.out, "a") as out:
        nxt = t0
        while True:
            s = sample(a.pid, a.metrics, t0)
            out.write(json.dumps(s) + "\n")
            out.flush()
            print(
                f"soak: t={s['t']:.0f}s rss={s['rss_kib'] / 1024:.1f}MiB fds={s['fds']} "
                f"threads={s['threads']} cpu={s['cpu_s']:.1f}s"
                + (f" calls={s['calls_active']:.0f}" if "calls_active" in s else "")
                + (f" late={s['rtp_late']:.0f}/{s['rtp_sent']:.0f}" if "rtp_late" in s else ""),
                file=sys.stderr,
                flush=True,
            )
            nxt += a.every
            while time.monotonic() < nxt:
                if os.path.exists(a.stop):
                    return
                time.sleep(0.5)


def cmd_once(a):
    with open(a.out, "a") as out:
        out.write(json.dumps(sample(a.pid, a.metrics, time.monotonic(), a.label)) + "\n")


PER_CALL = ("fds", "threads", "calls_active", "max_drift_s")


def fmt(key, v):
    if v is None:
        return "-"
    if key == "rss_kib":
        return f"{v / 1024:.1f} MiB"
    if key in ("rchar", "wchar", "write_bytes", "read_bytes"):
        return f"{v / 1048576:.1f} MiB"
    if key == "max_drift_s":
        return f"{v * 1000:.3f} ms"
    if key == "cpu_s":
        return f"{v:.1f} s"
    return f"{v:.0f}"


def cmd_report(a):
    rows = [json.loads(l) for l in open(a.samples) if l.strip()]
    periodic = [r for r in rows if "label" not in r]
    idle_before = next((r for r in rows if r.get("label") == "idle before"), None)
    idle_after = next((r for r in rows if r.get("label") == "idle after"), None)
    # Growth is measured from the first sample at or after --steady seconds (all concurrent
    # calls up, allocator warmed), so the ramp-up is not mistaken for a leak.
    steady = next((r for r in periodic if r["t"] >= a.steady), periodic[0] if periodic else None)
    end = periodic[-1] if periodic else None
    hours = max((end["t"] - steady["t"]) / 3600.0, 1e-9) if steady and end else None
    keys = ["rss_kib", "fds", "threads", "cpu_s", "rchar", "wchar", "write_bytes", "read_bytes",
            "calls_active", "rtp_sent", "rtp_late", "send_errors", "max_drift_s"]
    print(f"| figure | idle before | steady (t={steady['t']:.0f} s) | end (t={end['t']:.0f} s) "
          "| growth steady→end | per hour | idle after |")
    print("|---|---|---|---|---|---|---|")
    for k in keys:
        vals = [r.get(k) if r else None for r in (idle_before, steady, end, idle_after)]
        if all(v is None for v in vals):
            continue
        growth = per_h = "-"
        if vals[1] is not None and vals[2] is not None:
            d = vals[2] - vals[1]
            growth = ("+" if d >= 0 else "") + fmt(k, d) if k != "max_drift_s" else fmt(k, d)
            # Counts that come and go with the calls in flight are compared idle before vs
            # idle after instead; extrapolating them per hour would only scale noise.
            per_h = fmt(k, d / hours) if hours and k not in PER_CALL else "-"
        print(f"| {k} | {fmt(k, vals[0])} | {fmt(k, vals[1])} | {fmt(k, vals[2])} | {growth} "
              f"| {per_h} | {fmt(k, vals[3])} |")
    print()
    print("RSS (MiB) per sample: " + " ".join(f"{r['rss_kib'] / 1024:.1f}" for r in periodic))
    if a.long and os.path.exists(a.long) and os.path.getsize(a.long) > 0:
        r = json.load(open(a.long))
        st = r["stats"]
        print()
        d = r.get("drift_ms")
        drift = "-" if d is None else f"{d:+.3f}"
        print(f"Long call ({r['seconds']:.0f} s, {r['codec']}): drift {drift} ms over "
              f"{r.get('arrival_elapsed_s', 0):.1f} s of arrivals / {r.get('ts_elapsed_s', 0):.1f} s "
              f"of timestamps; {st['packets']} packets, {st['lost']} lost, jitter mean "
              f"{st['jitter_mean_ms']:.3f} ms max {st['jitter_max_ms']:.3f} ms, largest gap "
              f"{st['max_gap_ms']:.1f} ms, BYE {r.get('bye_status')}")
    if a.sipp and os.path.exists(a.sipp):
        with open(a.sipp) as f:
            rows = list(csv.reader(f, delimiter=";"))
        if len(rows) >= 2:
            head, last = rows[0], rows[-1]
            col = {h: i for i, h in enumerate(head)}

            def get(name):
                i = col.get(name)
                return last[i] if i is not None and i < len(last) else "?"

            print(f"Churn (sipp): {get('TotalCallCreated')} calls created, "
                  f"{get('SuccessfulCall(C)')} successful, {get('FailedCall(C)')} failed")
    if a.sink and os.path.exists(a.sink) and os.path.getsize(a.sink) > 0:
        s = json.load(open(a.sink))
        rates = ""
        if a.sink_log and os.path.exists(a.sink_log):
            w = [json.loads(l) for l in open(a.sink_log) if l.strip()]
            # The windows while the churn ran at full strength (not the ramp, not the tail).
            w = [x for x in w if a.steady <= x["t"] <= (end["t"] if end else x["t"])]
            if w:
                r = [x["rtp_per_s"] for x in w]
                rates = (f"; in steady state {min(r):.0f}-{max(r):.0f} RTP packets/s per "
                         f"window ({sum(r) / len(r):.0f} mean)")
        print(f"RTP sink: {s['rtp']} RTP packets from {s['streams_total']} streams, "
              f"{s['rtcp']} RTCP, {s['not_rtp']} other, over {s['seconds']:.0f} s{rates}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sample")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--metrics")
    p.add_argument("--every", type=float, default=60.0)
    p.add_argument("--out", required=True)
    p.add_argument("--stop", required=True)
    p = sub.add_parser("once")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--metrics")
    p.add_argument("--label", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--samples", required=True)
    p.add_argument("--long")
    p.add_argument("--sipp")
    p.add_argument("--sink")
    p.add_argument("--sink-log")
    p.add_argument("--steady", type=float, default=60.0)
    a = ap.parse_args()
    {"sample": cmd_sample, "once": cmd_once, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
