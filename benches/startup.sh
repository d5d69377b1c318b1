#!/usr/bin/env bash
# Start-up time with a 30-minute playlist already rendered (issue 6, "fast start"), or with an
# empty render cache (issue 18, "cold boot"): from spawning `mohd serve` to (a) the first SIP
# response, the 200 OK to an INVITE, the first RTP packet and the first RTP packet carrying
# music (not the silence a channel plays until its first seconds are rendered), and (b) the
# first non-zero sample at the line-out. A measurement, not a test.
#
#   benches/startup.sh                 # release build, 5 measured runs
#   RUNS=10 benches/startup.sh
#   COLD=1 benches/startup.sh          # evict the cache files from the page cache before each run
#   BASELINE=2 benches/startup.sh      # also 2 runs with an empty cache (render from the files)
#   BASELINE=5 RUNS=0 benches/startup.sh   # cold boot only: 5 runs with an empty cache
#   MOHD_BIN=/path/to/mohd benches/startup.sh   # skip the build (or MOHD=, as the others)
#   WORK=/tmp/mohd-startup benches/startup.sh   # keep and reuse the generated music
#
# The playlist is 10 generated 3-minute WAV files (44.1 kHz stereo), made once with python3's
# wave module. The line-out plays into ALSA's `file` plugin piped to tests/lineout/paced_sink.py
# (a stand-in sound card at 48 kHz), as in tests/lineout.rs. The cache is the state folder's
# `cache/`, given to mohd through $STATE_DIRECTORY (systemd's StateDirectory=).
#
# The stand-in card is a Python process that ALSA starts when mohd sets the device up, so its
# own start-up (tens of milliseconds) is in the first line-out sample, where a real card has
# none: it runs on this script's interpreter (not a version manager's shim on $PATH) with
# `-S` (no site-packages), the quickest Python start there is, and the table also gives when
# mohd started the stream ("line-out playing" in its log), mohd's own part.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
BASELINE=${BASELINE:-0}
COLD=${COLD:-0}
WORK=${WORK:-$(mktemp -d /tmp/mohd-startup.XXXXXX)}
mkdir -p "$WORK"

# MOHD (as the other benches take it) names the binary too.
MOHD_BIN=${MOHD_BIN:-${MOHD:-}}
if [ -z "${MOHD_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --bin mohd >&2)
    MOHD_BIN="$ROOT/target/release/mohd"
fi

cat > "$WORK/startup_probe.py" <<'PY'
import json, math, os, random, re, signal, socket, struct, subprocess, sys, time, wave, array
from datetime import datetime

root, work, mohd = sys.argv[1], sys.argv[2], sys.argv[3]
runs, baseline, cold = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
music = os.path.join(work, "music")
state = os.path.join(work, "state")
cache = os.path.join(state, "cache")
TRACKS, SECONDS, RATE = 10, 180, 44100


def make_music():
    os.makedirs(music, exist_ok=True)
    for i in range(TRACKS):
        path = os.path.join(music, f"t{i:02}.wav")
        if os.path.exists(path):
            continue
        # One second per note of a slow arpeggio, so no second repeats the one before.
        frames = array.array("h")
        base = 196.0 * 2 ** (i / 12)
        for sec in range(SECONDS):
            f = base * (1.0, 1.25, 1.5, 2.0)[sec % 4]
            w = 2 * math.pi * f / RATE
            amp = 9000 + 3000 * math.sin(sec / 7)
            one = [int(amp * math.sin(w * n)) for n in range(RATE)]
            for s in one:
                frames.append(s)
                frames.append(s)
        tmp = path + ".tmp"
        with wave.open(tmp, "wb") as wf:
            wf.setnchannels(2)
            wf.setsampwidth(2)
            wf.setframerate(RATE)
            wf.writeframes(frames.tobytes())
        os.rename(tmp, path)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_config(port):
    sink = os.path.join(root, "tests/lineout/paced_sink.py")
    out, events = os.path.join(work, "out.raw"), os.path.join(work, "events.jsonl")
    with open(os.path.join(work, "asound.conf"), "w") as f:
        f.write(
            "pcm.lineout_cap {\n type file\n slave.pcm { type null }\n"
            f" file \"|'{sys.executable}' -S '{sink}' '{out}' '{events}' 48000 2 2 10 200\"\n"
            " format \"raw\"\n}\n"
            "pcm.lineout { type plug slave { pcm \"lineout_cap\" format S16_LE rate 48000 channels 2 } }\n"
        )
    files = ", ".join(f'"{os.path.join(music, f"t{i:02}.wav")}"' for i in range(TRACKS))
    with open(os.path.join(work, "mohd.toml"), "w") as f:
        f.write(
            f"[channels.default]\nmusic = [{files}]\n[dialplan]\ndefault = \"default\"\n"
            "[lineout]\nenabled = true\ndevice = \"lineout\"\n"
        )


def invite(port, lport, rtp_port, call_id, branch):
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    )
    return (
        f"INVITE sip:moh@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@127.0.0.1>;tag=b{call_id}\r\n"
        f"To: <sip:moh@127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}@bench\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:bench@127.0.0.1:{lport}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def in_dialog(method, port, lport, call_id, branch, to, cseq):
    return (
        f"{method} sip:moh@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@127.0.0.1>;tag=b{call_id}\r\n{to}\r\n"
        f"Call-ID: {call_id}@bench\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ulaw_to_linear(b):
    b = ~b & 0xFF
    magnitude = (((b & 0x0F) << 3) + 0x84) << ((b >> 4) & 0x07)
    return 0x84 - magnitude if b & 0x80 else magnitude - 0x84


def is_music(packet):
    """A PCMU packet (12-byte header, no CSRC or extension from mohd) louder than -50 dBFS."""
    payload = packet[12:]
    if not payload:
        return False
    rms = math.sqrt(sum(ulaw_to_linear(b) ** 2 for b in payload) / len(payload))
    return rms > 32768 * 10 ** (-50 / 20)


def header(msg, name):
    for line in msg.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line
    return None


def probe_sip(port, t0, deadline, child):
    """INVITE every 5 ms until mohd answers 200; then ACK, first RTP, BYE. Times from t0."""
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    lport = sip.getsockname()[1]
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp_port = rtp.getsockname()[1]
    sip.setblocking(False)
    res = {"first_response": None, "ok": None, "rtp": None, "music": None, "non_2xx": 0}
    call_id = "%016x" % random.getrandbits(64)
    branch = "z9hG4bK" + call_id
    to = None
    while time.time() < deadline and res["ok"] is None and child.poll() is None:
        try:
            sip.sendto(invite(port, lport, rtp_port, call_id, branch), ("127.0.0.1", port))
        except OSError:
            pass
        end = time.time() + 0.005
        while time.time() < end:
            try:
                data = sip.recv(65535).decode(errors="replace")
            except (BlockingIOError, ConnectionRefusedError):
                time.sleep(0.0005)
                continue
            now = time.time()
            status = int(data.split(" ", 2)[1]) if data.startswith("SIP/2.0") else 0
            if status and res["first_response"] is None:
                res["first_response"] = now - t0
            if 200 <= status < 300:
                res["ok"] = now - t0
                to = header(data, "To")
                break
            if status >= 300:
                # e.g. 503 while loading: ACK it and try a new INVITE.
                res["non_2xx"] += 1
                sip.sendto(
                    in_dialog("ACK", port, lport, call_id, branch, header(data, "To"), 1),
                    ("127.0.0.1", port),
                )
                call_id = "%016x" % random.getrandbits(64)
                branch = "z9hG4bK" + call_id
                break
    if res["ok"] is None:
        return res
    sip.sendto(in_dialog("ACK", port, lport, call_id, "z9hG4bKa" + call_id, to, 1), ("127.0.0.1", port))
    # The first packet, then the first whose payload is music: a channel answers on a second
    # of digital silence until its first seconds are rendered.
    while res["music"] is None and time.time() < deadline:
        rtp.settimeout(max(0.1, deadline - time.time()))
        try:
            packet = rtp.recv(2048)
        except socket.timeout:
            break
        now = time.time()
        if res["rtp"] is None:
            res["rtp"] = now - t0
        if is_music(packet):
            res["music"] = now - t0
    sip.sendto(in_dialog("BYE", port, lport, call_id, "z9hG4bKb" + call_id, to, 2), ("127.0.0.1", port))
    time.sleep(0.05)
    return res


def first_sound(t0, deadline, child):
    path = os.path.join(work, "events.jsonl")
    while time.time() < deadline and child.poll() is None:
        try:
            with open(path) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("event") == "first_sound":
                        return e["t"] - t0
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.01)
    return None


def stream_started(t0):
    """When mohd started the line-out stream, from its log ("line-out playing"), from t0."""
    try:
        with open(os.path.join(work, "mohd.log")) as f:
            for line in f:
                m = re.match(r"(\S+Z)\s+INFO mohd::lineout: line-out playing", line)
                if m:
                    return datetime.fromisoformat(m.group(1)).timestamp() - t0
    except (OSError, ValueError):
        pass
    return None


def evict_cache():
    for name in os.listdir(cache):
        fd = os.open(os.path.join(cache, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_once(timeout=120.0):
    for f in ("out.raw", "events.jsonl"):
        try:
            os.remove(os.path.join(work, f))
        except FileNotFoundError:
            pass
    port = free_port()
    write_config(port)
    env = dict(os.environ)
    env["STATE_DIRECTORY"] = state
    env["ALSA_CONFIG_PATH"] = "/usr/share/alsa/alsa.conf:" + os.path.join(work, "asound.conf")
    env.setdefault("RUST_LOG", "info")
    log = open(os.path.join(work, "mohd.log"), "w")
    t0 = time.time()
    child = subprocess.Popen(
        [mohd, "serve", "--sip", f"127.0.0.1:{port}", "--config", os.path.join(work, "mohd.toml")],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    try:
        deadline = t0 + timeout
        res = probe_sip(port, t0, deadline, child)
        res["lineout"] = first_sound(t0, deadline, child)
        if child.poll() is not None:
            sys.exit(f"mohd exited with {child.returncode}; see {work}/mohd.log")
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
    res["stream"] = stream_started(t0)
    return res


def wait_cache_filled():
    """The fill run's mohd wrote the loop and the line-out's first track."""
    names = os.listdir(cache) if os.path.isdir(cache) else []
    return any(n.startswith("loop-") for n in names), any(n.startswith("track-") for n in names)


def ms(v):
    return "-" if v is None else f"{v * 1000:.0f}"


def table(title, results):
    print(f"\n{title} ({len(results)} runs)\n")
    print("| from spawning `mohd serve` to | median (ms) | max (ms) |")
    print("|---|---|---|")
    for key, label in (
        ("first_response", "first SIP response"),
        ("ok", "200 OK to the INVITE"),
        ("rtp", "first RTP packet"),
        ("music", "first RTP packet carrying music"),
        ("stream", "line-out stream started (mohd's log)"),
        ("lineout", "first line-out sample"),
    ):
        vals = sorted(r[key] for r in results if r.get(key) is not None)
        missing = len(results) - len(vals)
        if not vals:
            print(f"| {label} | - | - |")
            continue
        med = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
        extra = f" ({missing} runs: never)" if missing else ""
        print(f"| {label} | {ms(med)} | {ms(vals[-1])}{extra} |")
    non2xx = sum(r["non_2xx"] for r in results)
    if non2xx:
        print(f"\n({non2xx} INVITEs answered with an error before the 200 OK: mohd was loading)")


print(f"work folder: {work}", file=sys.stderr)
make_music()
print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
      f"{os.cpu_count()} CPUs")
results_baseline = []
for i in range(baseline):
    subprocess.run(["rm", "-rf", state])
    r = run_once()
    print(f"baseline run {i + 1}: {r}", file=sys.stderr)
    results_baseline.append(r)
if runs == 0:
    table("Empty cache (renders from the files)", results_baseline)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(0)
# Fill the cache: one run, long enough for the loop and the line-out's first track.
r = run_once()
print(f"fill run: {r}", file=sys.stderr)
loop_ok, track_ok = wait_cache_filled()
if not loop_ok:
    sys.exit(f"no loop in {cache} after the fill run: is the render cache wired? see {work}/mohd.log")
results = []
for i in range(runs):
    if cold:
        evict_cache()
    r = run_once()
    print(f"run {i + 1}: {r}", file=sys.stderr)
    results.append(r)
size = sum(os.path.getsize(os.path.join(cache, n)) for n in os.listdir(cache))
print(f"\ncache: {len(os.listdir(cache))} entries, {size / 1e6:.1f} MB; "
      f"playlist {TRACKS} x {SECONDS} s; {'cold' if cold else 'warm'} page cache")
if results_baseline:
    table("Empty cache (renders from the files)", results_baseline)
table("Cache filled", results)
PY

python3 "$WORK/startup_probe.py" "$ROOT" "$WORK" "$MOHD_BIN" "$RUNS" "$BASELINE" "$COLD"
