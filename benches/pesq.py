#!/usr/bin/env python3
"""PESQ of what a caller hears from mohd, against sox's rendering of the same music.

A measurement, not a test (see benches/README.md). For each generated test track (or the files
given with --music): sox renders the source at the codec's audio rate (the reference), mohd
serves the file as its only channel, `mohd call --codec C --record` captures what a caller
decodes, the recording is aligned on the reference (normalised cross-correlation) and scored
with ITU-T P.862 (the PyPI `pesq` package): narrowband for G.711, wideband for G.722 and Opus.

Printed per track: mohd's PESQ; the codec's own ceiling (sox's reference passed through the
same codec by an independent implementation: sox's G.711, PyPI g722 (libg722), opus-tools);
mohd's level against the reference (dB, RMS over the scored segment); the worst 1 s block's
best normalised correlation with the reference; mohd's peak (dBFS; 0.0 would mean clipping).

Needs python3 with numpy, scipy and pesq (pip install numpy==2.4.6 scipy==1.17.1 pesq==0.0.4),
sox (apt-get install sox), and a mohd binary (cargo build --release --bin mohd). The G.722 and
Opus ceilings need pip install g722==1.2.8 and apt-get install opus-tools (else "n/a").
"""

import argparse
import array
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import wave

import numpy as np
from scipy import signal

# This file is itself called pesq.py: its folder must not shadow the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [d for d in sys.path if os.path.abspath(d or ".") != _HERE]
try:
    from pesq import pesq as pesq_score
except ImportError:
    sys.exit("pesq.py: needs the PyPI pesq package (pip install pesq==0.0.4)")

SOURCE_RATE = 44_100
# Whole seconds of music per generated track. Longer than a call: a call starts a few seconds
# into the loop (shared mode plays the loop from the server's start), and the script scores only
# what lies before the loop's seam, where mohd crossfades the end into the start and sox does not.
TRACK_SECONDS = 40
# PESQ windows: length and step, in seconds (see windowed_pesq).
WINDOW_S = 8
STEP_S = 2

# codec -> (audio rate of the reference and of the scored recording, PESQ mode)
CODECS = {
    "pcmu": (8000, "nb"),
    "pcma": (8000, "nb"),
    "g722": (16000, "wb"),
    # Opus is recorded at 48 kHz; P.862.2 stops at 16 kHz, so both sides are scored at 16 kHz:
    # sox's 16 kHz rendering of the source against sox's 16 kHz rendering of the recording.
    "opus": (16000, "wb"),
}


# ---------------------------------------------------------------------------------------------
# Test music: deterministic, music-like (harmonic chords, a bass line, plucked notes and
# noise-shaped percussion), 44.1 kHz stereo 16-bit WAV, mastered the way real tracks are
# (peaks close to full scale, different loudness and crest factors).


def _note_hz(midi):
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def _pluck(t, hz, decay, harmonics, inharm=0.0):
    """A struck string: partials k·f (slightly stretched), each decaying faster than the last."""
    out = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        f = hz * k * np.sqrt(1.0 + inharm * k * k)
        if f > 18_000:
            break
        out += np.sin(2 * np.pi * f * t) * np.exp(-t * k / decay) / k
    return out


def _pad(t, hz, harmonics, detune):
    """A sustained saw-like pad, two detuned voices."""
    out = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        f = hz * k
        if f > 12_000:
            break
        out += (np.sin(2 * np.pi * f * t) + np.sin(2 * np.pi * f * (1 + detune) * t + k)) / k
    return out


def _kick(n, rate):
    t = np.arange(n) / rate
    sweep = 50 + 90 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(sweep) / rate
    return np.sin(phase) * np.exp(-t / 0.12)


def _snare(n, rate, rng):
    t = np.arange(n) / rate
    b, a = signal.butter(2, [1200, 6000], btype="band", fs=rate)
    noise = signal.lfilter(b, a, rng.standard_normal(n))
    return 0.8 * noise * np.exp(-t / 0.09) + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05)


def _hat(n, rate, rng, decay=0.03):
    t = np.arange(n) / rate
    b, a = signal.butter(4, 7000, btype="high", fs=rate)
    return signal.lfilter(b, a, rng.standard_normal(n)) * np.exp(-t / decay)


def _place(buf, hit, start):
    end = min(len(buf), start + len(hit))
    if start < end:
        buf[start:end] += hit[: end - start]


def _song(style, seconds, rate, seed):
    """One track (stereo float, peak 1.0 before mastering). Played by a "band" with human
    timing and dynamics: chords, melody notes and drum hits vary in time (a few ms), velocity
    and choice, so no two bars are the same. An exactly repeating bar would let PESQ's own
    time alignment lock onto the wrong bar and score nonsense."""
    rng = np.random.default_rng(seed)
    # "live" is the pop song recorded with loud, unprocessed drums: peaks far above its loudness.
    drums = 2.5 if style == "live" else 1.0
    style = "pop" if style == "live" else style
    n = seconds * rate
    left = np.zeros(n)
    right = np.zeros(n)
    bpm = {"pop": 100, "ballad": 72, "dense": 128}[style]
    beat = int(round(rate * 60 / bpm))
    bar = 4 * beat
    jitter = int(0.006 * rate)

    def hit(sound, at, gain, pan=0.5):
        at = max(0, at + int(rng.integers(-jitter, jitter + 1)))
        _place(left, sound * gain * (1.2 - pan), at)
        _place(right, sound * gain * (0.2 + pan), at)

    # Root MIDI note and the chord's other notes; a bar mostly follows the progression.
    progressions = {
        "pop": [(48, [60, 64, 67]), (43, [59, 62, 67]), (45, [60, 64, 69]), (41, [60, 65, 69])],
        "ballad": [(50, [62, 65, 69, 72]), (43, [59, 62, 65, 67]),
                   (48, [60, 64, 67, 71]), (45, [60, 64, 69, 72])],
        "dense": [(45, [57, 60, 64]), (41, [57, 60, 65]), (48, [55, 60, 64]), (43, [55, 59, 62])],
    }[style]
    scale = [0, 2, 4, 5, 7, 9, 11]
    for b0 in range(0, n, bar):
        k = (b0 // bar) % len(progressions)
        if rng.random() < 0.25:
            k = int(rng.integers(len(progressions)))
        root, chord = progressions[k]
        seg = min(bar, n - b0)
        t = np.arange(seg) / rate
        # A pad holding the chord, swelling in over the bar's first beat.
        swell = np.minimum(1.0, t / (0.25 * bar / rate))
        pad_level = {"pop": 0.05, "ballad": 0.03, "dense": 0.07}[style] * rng.uniform(0.8, 1.2)
        for i, note in enumerate(chord):
            v = _pad(t, _note_hz(note), 10, 0.003 + 0.001 * i) * swell * pad_level
            left[b0 : b0 + seg] += v * (0.6 + 0.1 * i)
            right[b0 : b0 + seg] += v * (1.0 - 0.1 * i)
        # Bass: the root on every beat (ballad: every half bar), sometimes the fifth.
        step = beat if style != "ballad" else 2 * beat
        for s0 in range(0, seg, step):
            note = root + (7 if rng.random() < 0.2 else 0)
            tt = np.arange(min(step, seg - s0)) / rate
            hit(_pluck(tt, _note_hz(note), 0.35, 6), b0 + s0, 0.35 * rng.uniform(0.8, 1.1))
        # Melody (piano-ish plucks): eighth notes from the chord and the scale, some rests.
        eighth = beat // 2
        for s0 in range(0, seg, eighth):
            if rng.random() < 0.2:
                continue
            if rng.random() < 0.6:
                note = int(rng.choice(chord))
            else:
                note = 60 + scale[int(rng.integers(len(scale)))]
            note += 12 * int(rng.integers(0, 2))
            accent = 1.3 if style == "ballad" else 1.0
            tt = np.arange(min(3 * eighth, n - b0 - s0)) / rate
            sound = _pluck(tt, _note_hz(note), 0.5, 12, inharm=0.0002)
            hit(sound, b0 + s0, 0.22 * accent * rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.7))
        # Drums.
        for q in range(4):
            at = b0 + q * beat
            vel = rng.uniform(0.75, 1.1)
            if style == "ballad":
                if q in (0, 2):
                    hit(_kick(beat, rate), at, 0.5 * vel * drums)
                if q == 3 or rng.random() < 0.1:
                    hit(_snare(beat, rate, rng), at, 0.25 * vel * drums)
                continue
            if q in ((0, 2) if style == "pop" else (0, 1, 2, 3)) or rng.random() < 0.1:
                hit(_kick(beat, rate), at, 0.9 * vel * drums)
            if q in (1, 3) or rng.random() < 0.08:
                hit(_snare(beat, rate, rng), at + (beat // 2 if q in (0, 2) else 0),
                    0.6 * vel * drums, 0.55)
            hats = 2 if style == "pop" else 4
            for e in range(hats):
                sound = _hat(beat // 2, rate, rng)
                hit(sound, at + e * (beat // hats), (0.25 if e % 2 == 0 else 0.15) * vel, 0.65)
    # A room: a short diffuse reverb, so the mix is dense like a recording.
    ir_len = int(0.5 * rate)
    tail = rng.standard_normal((ir_len, 2)) * np.exp(-np.arange(ir_len) / (0.12 * rate))[:, None]
    dry = np.stack([left, right], axis=1)
    wet = np.stack([signal.fftconvolve(dry[:, c], tail[:, c])[:n] for c in range(2)], axis=1)
    stereo = dry + 0.15 * wet / np.sqrt(np.sum(tail[:, 0] ** 2))
    return stereo / np.max(np.abs(stereo))


# How each style is mastered: peak (dBFS) and a soft-knee drive (0: none). "pop" is the
# reference case: a dynamic mix peaking just under full scale, a little quieter than -18 LUFS,
# so mohd raises it and its drum hits have to be limited.
STYLES = {
    "pop": (-0.3, 0.0),
    "ballad": (-1.0, 0.0),
    "dense": (-0.1, 2.5),
    "live": (-0.3, 0.0),
}


def make_music(folder):
    paths = []
    for seed, (style, (peak_db, drive)) in enumerate(STYLES.items()):
        x = _song(style, TRACK_SECONDS, SOURCE_RATE, seed + 1)
        if drive > 0:
            x = np.tanh(drive * x) / np.tanh(drive)
        x *= 10 ** (peak_db / 20) / np.max(np.abs(x))
        path = os.path.join(folder, f"{style}.wav")
        write_wav(path, x, SOURCE_RATE)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Files and tools.


def write_wav(path, x, rate):
    """float in [-1, 1] (mono or stereo columns) to 16-bit PCM WAV."""
    pcm = np.clip(np.round(np.asarray(x) * 32767), -32768, 32767).astype("<i2")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_wav(path):
    """A mono 16-bit WAV as float64 in int16 units, and its rate."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            sys.exit(f"pesq.py: {path}: expected 16-bit samples")
        rate = w.getframerate()
        ch = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1)
    return data, rate


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def sox_render(src, dst, rate):
    """sox's rendering: mono downmix, resampled with its default (high quality) rate effect."""
    run(["sox", "-q", src, "-c", "1", "-r", str(rate), "-b", "16", dst])


def codec_ceiling(codec, src, ref_path, rate, folder):
    """sox's reference through the codec by an independent implementation, decoded: the best
    PESQ any sender could reach with that codec on this music. None when no tool is there."""
    out = os.path.join(folder, f"ceiling-{codec}.wav")
    if codec in ("pcmu", "pcma"):
        enc = "u-law" if codec == "pcmu" else "a-law"
        raw = os.path.join(folder, f"ceiling-{codec}.raw")
        run(["sox", "-q", ref_path, "-t", "raw", "-e", enc, "-b", "8", raw])
        run(["sox", "-q", "-t", "raw", "-e", enc, "-b", "8", "-r", str(rate), "-c", "1", raw,
             "-b", "16", "-e", "signed-integer", out])
        return out
    if codec == "g722":
        try:
            import G722  # PyPI g722: sippy's libg722, the SpanDSP-derived reference
        except ImportError:
            return None
        pcm, _ = read_wav(ref_path)
        samples = array.array("h", pcm.astype(np.int16).tobytes())
        coded = G722.G722(16000, 64000).encode(samples)
        decoded = np.array(G722.G722(16000, 64000).decode(coded), dtype=np.float64)
        write_wav(out, decoded / 32767, 16000)
        return out
    if shutil.which("opusenc") is None or shutil.which("opusdec") is None:
        return None
    # opus-tools: libopus at mohd's settings (40 kb/s constrained VBR, 20 ms frames, music) on
    # sox's 48 kHz
    # rendering, as mohd encodes the full band (its bits are shared with what PESQ-WB does not
    # hear, above 8 kHz), decoded at 48 kHz and brought to the scoring rate like mohd's stream.
    full = os.path.join(folder, "sox-48000.wav")
    sox_render(src, full, 48000)
    mid = os.path.join(folder, "ceiling.opus")
    dec = os.path.join(folder, "ceiling-opus48.wav")
    run(["opusenc", "--quiet", "--music", "--bitrate", "40", "--cvbr", "--framesize", "20",
         full, mid])
    run(["opusdec", "--quiet", "--rate", "48000", mid, dec])
    sox_render(dec, out, rate)
    return out


def wideband_codecs(config):
    """The wideband codecs the server renders: every one, or those its config's [rtp] codecs
    names."""
    codecs = ["g722", "opus"]
    if config:
        with open(config, "rb") as f:
            named = tomllib.load(f).get("rtp", {}).get("codecs")
        if named is not None:
            codecs = [c for c in codecs if c in named]
    return codecs


class Server:
    """`mohd serve` on 127.0.0.1 playing one file on every channel, state in a temp folder."""

    def __init__(self, mohd, music, folder, codec, config=None):
        self.state = tempfile.mkdtemp(prefix="state-", dir=folder)
        cmd = [mohd, "serve", "--sip", "127.0.0.1:0", "--music", music, "--web", "off",
               "--state", self.state]
        if config:
            cmd += ["--config", config]
        self.log = open(os.path.join(folder, "serve.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.port = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            m = re.search(r"SIP listening on \S*:(\d+)\s*$", line)
            if m:
                self.port = int(m.group(1))
                break
        # SIP may answer while the channel still renders (silence first): wait for the loop,
        # and for a wideband codec the encodings, which start-up adds after it (all of a
        # channel's together, so every enabled one, not only the codec measured).
        waiting = ["channel loop ready"]
        if codec in ("g722", "opus"):
            waiting += [f'channel encoding ready.*codec="?{c}\\b' for c in wideband_codecs(config)]
        while self.port is not None and time.monotonic() < deadline:
            with open(self.log.name, "rb") as f:
                log = f.read().decode(errors="replace")
            if all(re.search(w, log) for w in waiting):
                time.sleep(0.5)  # the swap follows the last encoding
                break
            if self.proc.poll() is not None:
                self.port = None
            time.sleep(0.2)
        else:
            self.port = None
        if self.port is None:
            self.stop()
            sys.exit(f"pesq.py: mohd did not start (log: {self.log.name})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def record_call(mohd, port, codec, seconds, out):
    run([mohd, "call", f"sip:moh@127.0.0.1:{port}", "--codec", codec, "--seconds",
         str(seconds), "--record", out], stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# Alignment and scores.


def circular_xcorr(chunk, ref):
    """Normalised correlation of `chunk` against every circular position of `ref`."""
    n = len(ref)
    m = len(chunk)
    size = 1 << int(np.ceil(np.log2(n + m)))
    ext = np.concatenate([ref, ref[:m]])
    dot = np.fft.irfft(np.fft.rfft(ext, size) * np.conj(np.fft.rfft(chunk, size)), size)[:n]
    c2 = np.concatenate([[0.0], np.cumsum(ext * ext)])
    energy = c2[m : m + n] - c2[:n]
    denom = np.sqrt(np.maximum(energy, 1e-9) * max(np.dot(chunk, chunk), 1e-9))
    return dot / denom


def block_offsets(rec, ref, rate):
    """Per whole 1 s block of `rec`: (best correlation, ref position it matches best)."""
    out = []
    for start in range(0, len(rec) - rate + 1, rate):
        c = circular_xcorr(rec[start : start + rate], ref)
        lag = int(np.argmax(c))
        out.append((float(c[lag]), lag))
    return out


def aligned_segment(blocks, rate, ref_len):
    """The longest run of blocks that play the reference in one piece (one offset, no seam):
    (first block, block count, reference start of the first block)."""
    best = (0, 0, 0)
    i = 0
    while i < len(blocks):
        offset = (blocks[i][1] - i * rate) % ref_len
        j = i + 1
        while j < len(blocks):
            d = (blocks[j][1] - j * rate - offset) % ref_len
            if min(d, ref_len - d) > 1:
                break
            j += 1
        # The reference is not looped: stop where it ends.
        ref_start = blocks[i][1]
        count = min(j - i, (ref_len - ref_start) // rate)
        if count > best[1]:
            best = (i, count, ref_start)
        i = j
    return best


def level_db(a, b):
    return 20 * np.log10(np.sqrt(np.mean(a * a)) / max(np.sqrt(np.mean(b * b)), 1e-9))


def windowed_pesq(rate, mode, clean, deg):
    """PESQ over WINDOW_S windows every STEP_S seconds: (median, lowest, windows scored).

    P.862 was built for speech with pauses. On continuous music its own time alignment now and
    then locks onto the wrong beat and one window scores 1.5 where its neighbours score 4.4, or
    it finds no "utterance" at all; the median over overlapping windows is the stable figure,
    the lowest is printed so a real local fault still shows."""
    scores = []
    for start in range(0, len(clean) - WINDOW_S * rate + 1, STEP_S * rate):
        end = start + WINDOW_S * rate
        try:
            scores.append(pesq_score(rate, clean[start:end], deg[start:end], mode))
        except Exception:  # the pesq package raises its own types for "no utterances" etc.
            continue
    if not scores:
        return float("nan"), float("nan"), 0
    return float(np.median(scores)), float(np.min(scores)), len(scores)


def score(codec, rec_path, ref_path, ceiling_path, folder):
    rate, mode = CODECS[codec]
    rec, rec_rate = read_wav(rec_path)
    peak_dbfs = 20 * np.log10(max(np.max(np.abs(rec)), 1) / 32768)
    if rec_rate != rate:
        scored = os.path.join(folder, f"rec-{rate}.wav")
        sox_render(rec_path, scored, rate)
        rec, _ = read_wav(scored)
    ref, _ = read_wav(ref_path)
    # The first second is left out: a caller's decoder starts mid-stream (G.722's and Opus's
    # predictors converge over the first frames), which is not the stream's quality.
    blocks = block_offsets(rec[rate:], ref, rate)
    rec = rec[rate:]
    first, count, ref_start = aligned_segment(blocks, rate, len(ref))
    if count < WINDOW_S:
        sys.exit(f"pesq.py: only {count} s of the recording align with the reference "
                 f"({WINDOW_S} s needed; see {folder})")
    rec_start, n = first * rate, count * rate
    deg = rec[rec_start : rec_start + n]
    clean = ref[ref_start : ref_start + n]
    median, lowest, windows = windowed_pesq(rate, mode, clean, deg)
    result = {
        "pesq": median,
        "pesq_min": lowest,
        "windows": windows,
        "level_db": level_db(deg, clean),
        "worst_block": min(c for c, _ in blocks[first : first + count]),
        "peak_dbfs": peak_dbfs,
        "scored_s": n / rate,
        "ceiling": None,
    }
    if ceiling_path:
        ceil, _ = read_wav(ceiling_path)
        result["ceiling"] = windowed_pesq(rate, mode, clean, ceil[ref_start : ref_start + n])[0]
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", choices=sorted(CODECS), default="pcmu")
    p.add_argument("--mohd", default=os.environ.get("MOHD", "target/release/mohd"))
    p.add_argument("--music", nargs="*", help="source files (default: the generated tracks)")
    p.add_argument("--config", help="a mohd config for the server (e.g. its [rtp] codecs)")
    p.add_argument("--seconds", type=float, default=25.0, help="length of each recorded call")
    p.add_argument("--work", help="keep the music, renders and recordings in this folder")
    args = p.parse_args()
    for tool in ("sox",):
        if shutil.which(tool) is None:
            sys.exit(f"pesq.py: needs {tool} (apt-get install {tool})")
    if not os.access(args.mohd, os.X_OK):
        sys.exit(f"pesq.py: no mohd binary at {args.mohd} (cargo build --release --bin mohd)")
    work = args.work or tempfile.mkdtemp(prefix="mohd-pesq.")
    os.makedirs(work, exist_ok=True)
    music = args.music or make_music(work)
    rate, mode = CODECS[args.codec]
    print(f"codec {args.codec}, PESQ-{mode.upper()} at {rate} Hz; work folder {work}")
    print(f"| track | mohd PESQ (median of {WINDOW_S} s windows) | lowest window "
          "| codec ceiling (sox + codec) | level vs sox (dB) | worst 1 s block corr "
          "| mohd peak (dBFS) | scored (s) | windows scored |")
    print("|---|---|---|---|---|---|---|---|---|")
    for src in music:
        name = os.path.splitext(os.path.basename(src))[0]
        folder = os.path.join(work, name)
        os.makedirs(folder, exist_ok=True)
        ref_path = os.path.join(folder, f"sox-{rate}.wav")
        sox_render(src, ref_path, rate)
        ceiling = codec_ceiling(args.codec, src, ref_path, rate, folder)
        rec_path = os.path.join(folder, f"mohd-{args.codec}.wav")
        server = Server(os.path.abspath(args.mohd), os.path.abspath(src), folder, args.codec,
                        args.config)
        try:
            record_call(args.mohd, server.port, args.codec, args.seconds, rec_path)
        finally:
            server.stop()
        r = score(args.codec, rec_path, ref_path, ceiling, folder)
        ceil = "n/a" if r["ceiling"] is None else f"{r['ceiling']:.2f}"
        print(f"| {name} | {r['pesq']:.2f} | {r['pesq_min']:.2f} | {ceil} | {r['level_db']:+.1f} "
              f"| {r['worst_block']:.3f} | {r['peak_dbfs']:.1f} | {r['scored_s']:.0f} "
              f"| {r['windows']} |")
        sys.stdout.flush()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
