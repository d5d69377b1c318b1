#!/usr/bin/env python3
"""A stand-in for a sound card's DAC, for the line-out tests (machines here have no sound card).

ALSA's `file` plugin with `file "|paced_sink.py ..."` pipes every frame mohd writes into this
script's stdin. The script takes them at the nominal rate, like a DAC clock: it reads only as
fast as it "plays", so the pipe back-pressures the writer exactly as a real device would.

Usage: paced_sink.py OUT.raw EVENTS.jsonl RATE CHANNELS BYTES_PER_SAMPLE [TICK_MS] [BUFFER_MS]

- OUT.raw gets what was "played", in order, with zeros where the writer was late (an underrun:
  a real card would play silence there too). Appended to, so several opens add up.
- EVENTS.jsonl gets one JSON object per line: "start", "first_byte" and "first_sound" (wall
  clock time when the first byte / first non-zero frame arrived), "underrun" / "recovered",
  and "end" (frames played, underrun count, milliseconds of silence filled in).

The stdin pipe is shrunk to one page and the internal buffer holds BUFFER_MS (200 ms), which
is also the start threshold: playing starts once that much has arrived (or at EOF).
"""

import fcntl
import json
import os
import select
import sys
import time

F_SETPIPE_SZ = 1031


def main():
    out_path, events_path = sys.argv[1], sys.argv[2]
    rate, channels, width = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    tick_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    buffer_ms = int(sys.argv[7]) if len(sys.argv) > 7 else 200
    frame = channels * width
    tick_bytes = rate * tick_ms // 1000 * frame
    cap = rate * buffer_ms // 1000 * frame

    fd = sys.stdin.fileno()
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
    except OSError:
        pass
    os.set_blocking(fd, False)

    events = open(events_path, "a", buffering=1)
    out = open(out_path, "ab")

    def log(kind, **kw):
        kw["event"] = kind
        kw["t"] = time.time()
        events.write(json.dumps(kw) + "\n")

    log("start", pid=os.getpid(), rate=rate, channels=channels)
    buf = bytearray()
    eof = False
    got_first_byte = False
    got_first_sound = False
    bytes_in = 0

    def top_up():
        nonlocal eof, got_first_byte, got_first_sound, bytes_in
        while not eof and len(buf) < cap:
            try:
                data = os.read(fd, min(65536, cap - len(buf)))
            except BlockingIOError:
                return
            if not data:
                eof = True
                return
            if not got_first_byte:
                got_first_byte = True
                log("first_byte")
            if not got_first_sound and any(data):
                got_first_sound = True
                # Frames before the first non-zero byte, to date the sound exactly.
                first = next(i for i, b in enumerate(data) if b)
                log("first_sound", frame=(bytes_in + first) // frame)
            bytes_in += len(data)
            buf.extend(data)

    # Start threshold: wait for a full buffer (or the end).
    while not eof and len(buf) < cap:
        select.select([fd], [], [], 0.05)
        top_up()
    if not buf and eof:
        log("end", frames=0, underruns=0, missing_ms=0.0, elapsed=0.0)
        return

    started = time.monotonic()
    ticks = 0
    played = 0
    underruns = 0
    missing = 0
    short = False
    while True:
        top_up()
        if eof and not buf:
            break
        if len(buf) >= tick_bytes or eof:
            n = min(len(buf), tick_bytes)
            n -= n % frame
            out.write(buf[:n])
            del buf[:n]
            played += n
            if short:
                short = False
                log("recovered")
        else:
            # The writer is late: play what there is, then silence, as a DAC would.
            n = len(buf) - len(buf) % frame
            out.write(buf[:n])
            del buf[:n]
            out.write(bytes(tick_bytes - n))
            played += tick_bytes
            missing += tick_bytes - n
            if not short:
                short = True
                underruns += 1
                log("underrun", missing_bytes=tick_bytes - n)
        ticks += 1
        # Sleep to the next tick on an absolute schedule, so a late wake-up is caught up.
        deadline = started + ticks * tick_ms / 1000.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            select.select([], [], [], deadline - now)
    out.flush()
    log(
        "end",
        frames=played // frame,
        underruns=underruns,
        missing_ms=missing / frame * 1000.0 / rate,
        elapsed=time.monotonic() - started,
    )


if __name__ == "__main__":
    main()
