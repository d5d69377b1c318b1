//! The line-out against a stand-in sound card: machines here have none, so each test gives
//! `mohd serve` (a child process) an ALSA configuration through `ALSA_CONFIG_PATH` in which
//! the device `lineout` is ALSA's `file` plugin piping into `tests/lineout/paced_sink.py`,
//! which takes the frames at 48 kHz like a DAC clock and records what it "played" (with
//! zeros and an `underrun` event wherever mohd was late).
//!
//! The tests that spawn mohd run one at a time (the CPU-load test would disturb the others).
//! The content, seam and start-up tests share one 5-second run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{mohd_bin, mohd_call};
use mohd::channel::{ChannelRender, MusicSource};

const RATE: u32 = 48_000;
const LEVEL_DB: f64 = -6.0;

/// One mohd at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temp folder with music, an ALSA configuration and the sink's output files.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
        };
        // Two tracks with silence around them (trimmed by mohd), frequency sweeps so that
        // no stretch of the loop looks like another.
        write_sweep(&rig.path("a.wav"), 1.6, 200.0, 800.0, 440.0);
        write_sweep(&rig.path("b.wav"), 1.1, 1000.0, 300.0, 660.0);
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn music(&self) -> MusicSource {
        MusicSource::Files(vec![self.path("a.wav"), self.path("b.wav")])
    }

    /// The ALSA configuration: `lineout` is the paced sink, when `with_device`.
    fn write_asound(&self, with_device: bool) {
        let mut text = String::from("# mohd line-out test\n");
        if with_device {
            let sink = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lineout/paced_sink.py");
            text.push_str(&format!(
                "pcm.lineout_cap {{\n  type file\n  slave.pcm {{ type null }}\n  \
                 file \"|python3 '{}' '{}' '{}' {RATE} 2 2 10 200\"\n  format \"raw\"\n}}\n\
                 pcm.lineout {{ type plug slave {{ pcm \"lineout_cap\" format S16_LE \
                 rate {RATE} channels 2 }} }}\n",
                sink.display(),
                self.path("out.raw").display(),
                self.path("events.jsonl").display(),
            ));
        }
        // Written aside and renamed over: ALSA re-reads its config only when a file's inode or
        // mtime (whole seconds) changed, so a retry that read the file between an in-place
        // truncate and the write (a busy machine) would keep the empty config for good.
        let fresh = self.path("asound.conf.new");
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, self.path("asound.conf")).unwrap();
    }

    fn write_config(&self) -> PathBuf {
        let p = self.path("mohd.toml");
        std::fs::write(
            &p,
            format!(
                "[channels.default]\nmusic = [\"a.wav\", \"b.wav\"]\n\
                 [dialplan]\ndefault = \"default\"\n\
                 [lineout]\nenabled = true\ndevice = \"lineout\"\nlevel_db = {LEVEL_DB:.1}\n"
            ),
        )
        .unwrap();
        p
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn event(&self, kind: &str) -> Option<serde_json::Value> {
        self.events().into_iter().find(|e| e["event"] == kind)
    }

    /// What the sink played: interleaved stereo i16.
    fn captured(&self) -> Vec<[i16; 2]> {
        let bytes = std::fs::read(self.path("out.raw")).unwrap_or_default();
        bytes
            .chunks_exact(4)
            .map(|b| {
                [
                    i16::from_le_bytes([b[0], b[1]]),
                    i16::from_le_bytes([b[2], b[3]]),
                ]
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("mohd.log")).unwrap_or_default()
    }
}

/// Mono 44.1 kHz stereo WAV: a sweep from `f0` to `f1` plus a steady tone, with 0.3 s of
/// silence before and after.
fn write_sweep(path: &Path, seconds: f64, f0: f64, f1: f64, tone: f64) {
    let rate = 44_100u32;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let pad = (0.3 * f64::from(rate)) as usize;
    let n = (seconds * f64::from(rate)) as usize;
    for _ in 0..pad {
        w.write_sample(0i16).unwrap();
        w.write_sample(0i16).unwrap();
    }
    let mut phase = 0.0f64;
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        phase += 2.0 * std::f64::consts::PI * (f0 + (f1 - f0) * t / seconds) / f64::from(rate);
        let v = 0.3 * phase.sin() + 0.2 * (2.0 * std::f64::consts::PI * tone * t).sin();
        let s = (v * 32767.0).round() as i16;
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    for _ in 0..pad {
        w.write_sample(0i16).unwrap();
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

/// `mohd serve` with the rig's ALSA configuration, its log in `mohd.log`.
struct Mohd {
    child: Child,
    sip: std::net::SocketAddr,
    spawned: SystemTime,
}

impl Mohd {
    fn start(rig: &Rig) -> Mohd {
        let config = rig.write_config();
        let log = std::fs::File::create(rig.path("mohd.log")).unwrap();
        let alsa = format!(
            "/usr/share/alsa/alsa.conf:{}",
            rig.path("asound.conf").display()
        );
        let spawned = SystemTime::now();
        let mut child = Command::new(mohd_bin())
            .args(["serve", "--sip", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("ALSA_CONFIG_PATH", alsa)
            .env("STATE_DIRECTORY", rig.path("state"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start mohd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("mohd: SIP listening on udp:") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("mohd did not start listening");
        Mohd {
            child,
            sip: addr.parse().unwrap(),
            spawned,
        }
    }

    /// SIGTERM, as systemd stops it, and wait: closing the device lets the sink finish.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mohd did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Mohd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One 5-second run shared by the content, seam and start-up tests.
struct Capture {
    frames: Vec<[i16; 2]>,
    /// The loop the channel render makes at 48 kHz (what the line-out must play).
    expected: ChannelRender,
    /// Where loop sample 0 is in `frames`.
    start: usize,
    startup_s: f64,
    events: Vec<serde_json::Value>,
    log: String,
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let _serial = serial();
        let rig = Rig::new();
        rig.write_asound(true);
        let mohd = Mohd::start(&rig);
        assert!(
            wait_until(Duration::from_secs(30), || rig.captured().len()
                > 5 * RATE as usize),
            "the sink got {} frames; mohd log:\n{}",
            rig.captured().len(),
            rig.log()
        );
        let spawned = mohd.spawned;
        mohd.stop();
        let frames = rig.captured();
        let events = rig.events();
        let first = rig.event("first_sound").expect("no sound reached the sink");
        let startup_s = first["t"].as_f64().unwrap() - unix_seconds(spawned);
        let expected = ChannelRender::render_at("default", &rig.music(), -18.0, RATE);
        let first_frame = first["frame"].as_u64().unwrap() as usize;
        let start = align(&frames, &expected.pcm, first_frame);
        Capture {
            frames,
            expected,
            start,
            startup_s,
            events,
            log: rig.log(),
        }
    })
}

fn gain() -> f64 {
    10f64.powf(LEVEL_DB / 20.0)
}

/// Where loop sample 0 is, near the first non-zero frame (the start is faded in, so the
/// first few samples round to zero): the best correlation over a few hundred frames.
fn align(frames: &[[i16; 2]], pcm: &[i16], first: usize) -> usize {
    let (from, to) = (1000, 5800);
    let reference: Vec<f64> = pcm[from..to].iter().map(|&s| f64::from(s)).collect();
    let mut best = (f64::MIN, first);
    for start in first.saturating_sub(300)..first + 300 {
        let dot: f64 = reference
            .iter()
            .enumerate()
            .map(|(k, r)| r * f64::from(frames[start + from + k][0]))
            .sum();
        if dot > best.0 {
            best = (dot, start);
        }
    }
    best.1
}

/// Longest run of frames with |left| <= `thr`.
fn longest_quiet_run(x: &[[i16; 2]], thr: i16) -> usize {
    let (mut best, mut cur) = (0, 0);
    for f in x {
        if f[0].abs() <= thr {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

/// The captured samples are the channel's loop rendered at 48 kHz, at the configured level,
/// on both channels: sample for sample (within rounding), so also at the right rate (a wrong
/// rate would have been converted by ALSA and could not match), correlation above 0.999.
#[test]
fn plays_the_full_quality_render_at_the_card_rate_and_level_on_both_channels() {
    let c = capture();
    let music = &c.frames[c.start..];
    assert!(music.len() > 4 * RATE as usize, "{} frames", music.len());
    assert!(
        c.log.contains("line-out playing") && c.log.contains("rate=48000"),
        "{}",
        c.log
    );
    assert!(
        c.frames.iter().all(|f| f[0] == f[1]),
        "left and right differ"
    );
    let len = c.expected.pcm.len();
    let g = gain();
    let (mut dot, mut e_cap, mut e_exp, mut worst) = (0.0, 0.0, 0.0, 0i32);
    // The first crossfade length is a fade-in (nothing to cross from yet); from there on the
    // line-out is the loop, round and round.
    let skip = mohd::channel::crossfade_len(RATE);
    for (k, f) in music.iter().enumerate().skip(skip) {
        let want = (f64::from(c.expected.pcm[k % len]) * g).round();
        let got = f64::from(f[0]);
        dot += want * got;
        e_cap += got * got;
        e_exp += want * want;
        worst = worst.max((got - want).abs() as i32);
    }
    let corr = dot / (e_cap.sqrt() * e_exp.sqrt());
    eprintln!("line-out vs 48 kHz render: correlation {corr:.6}, worst difference {worst} LSB");
    assert!(corr > 0.999, "correlation {corr}");
    assert!(
        worst <= 2,
        "differs by {worst} LSB from the render at the level"
    );
    // The level, measured: the captured RMS is the render's times -6 dB.
    let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let cap: Vec<f64> = music[skip..].iter().map(|f| f64::from(f[0])).collect();
    let exp: Vec<f64> = (skip..music.len())
        .map(|k| f64::from(c.expected.pcm[k % len]))
        .collect();
    let level = 20.0 * (rms(&cap) / rms(&exp)).log10();
    assert!((level - LEVEL_DB).abs() < 0.1, "level {level:.2} dB");
    assert!(
        c.events.iter().all(|e| e["event"] != "underrun"),
        "{:?}",
        c.events
    );
}

/// The loop goes round: from the last track back to the first there is no gap (no silence
/// longer than 1 ms) and no click (no step steeper than the music's own), as at the join
/// between the two tracks.
#[test]
fn seam_between_last_and_first_track_has_no_gap() {
    let c = capture();
    let len = c.expected.pcm.len();
    let join = c.expected.tracks[1].start_sample as usize;
    let music = &c.frames[c.start..];
    assert!(
        music.len() > len + RATE as usize / 10,
        "the capture does not reach the seam"
    );
    let steepest = |x: &[[i16; 2]]| {
        x.windows(2)
            .map(|w| (i32::from(w[1][0]) - i32::from(w[0][0])).abs())
            .max()
            .unwrap()
    };
    let music_step =
        steepest(&music[join + 4800..join + 24_000]).max(steepest(&music[4800..24_000]));
    let window = RATE as usize / 20;
    let mut seams = 0;
    for point in (1..)
        .map(|m| m * len)
        .take_while(|p| p + window < music.len())
    {
        for at in [point, point - len + join] {
            if at < window || at + window > music.len() {
                continue;
            }
            let around = &music[at - window..at + window];
            let quiet = longest_quiet_run(around, 16);
            assert!(quiet <= 48, "{quiet} quiet frames at {at}");
            let step = steepest(around);
            assert!(
                step <= music_step * 13 / 10,
                "step {step} at {at}, the music's own at most {music_step}"
            );
        }
        seams += 1;
    }
    assert!(seams >= 1);
}

/// From `mohd serve` starting to the first sound reaching the sound card (the sink records
/// when the first non-zero frame arrives). The figure is printed; the bound only catches
/// "never" (timings on shared machines are noisy).
#[test]
fn starts_playing_soon_after_start() {
    let c = capture();
    eprintln!(
        "line-out start-up: {:.0} ms from spawning `mohd serve` to the first sound at the sink",
        c.startup_s * 1000.0
    );
    assert!(c.startup_s > 0.0 && c.startup_s < 10.0, "{} s", c.startup_s);
}

/// The device does not exist when mohd starts: mohd serves SIP calls anyway and reports the
/// error; once the device is defined, the line-out finds it and plays.
#[test]
fn missing_device_is_not_fatal_and_is_picked_up_when_it_appears() {
    let _serial = serial();
    let rig = Rig::new();
    rig.write_asound(false);
    let mohd = Mohd::start(&rig);
    let report = mohd_call(&format!("sip:moh@{}", mohd.sip), &["--seconds", "2"]);
    assert!(
        report["stats"]["packets"].as_u64().unwrap() >= 80,
        "{report}"
    );
    assert_eq!(report["bye_status"], 200, "{report}");
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .log()
            .contains("line-out cannot play")),
        "{}",
        rig.log()
    );
    let log = rig.log();
    assert!(
        log.contains(r#"no ALSA playback device "lineout""#),
        "{log}"
    );
    assert!(rig.event("first_sound").is_none());

    // Plugged in: the next retry (every 3 s) opens it.
    rig.write_asound(true);
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .event("first_sound")
            .is_some()),
        "the line-out never played; log:\n{}",
        rig.log()
    );
    // The device's first samples can come before mohd's log line about them is written.
    assert!(
        wait_until(Duration::from_secs(5), || rig
            .log()
            .contains("line-out playing")),
        "{}",
        rig.log()
    );
    let report = mohd_call(&format!("sip:moh@{}", mohd.sip), &["--seconds", "1"]);
    assert_eq!(report["bye_status"], 200, "{report}");
    mohd.stop();
}

/// Both cores busy (a spinning thread each, for 10 s) while the line-out plays: the sink
/// never runs dry and mohd's callback never finds its ring short.
#[test]
fn no_underrun_under_cpu_load() {
    let _serial = serial();
    let rig = Rig::new();
    rig.write_asound(true);
    let mohd = Mohd::start(&rig);
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .event("first_sound")
            .is_some()),
        "{}",
        rig.log()
    );
    let before = rig.captured().len();
    let until = Instant::now() + Duration::from_secs(10);
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let spinners: Vec<_> = (0..cores.max(2))
        .map(|i| {
            std::thread::spawn(move || {
                let mut x = i as u64 + 1;
                while Instant::now() < until {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                }
                x
            })
        })
        .collect();
    for s in spinners {
        let _ = s.join();
    }
    let during = rig.captured().len() - before;
    mohd.stop();

    assert!(
        during > 9 * RATE as usize,
        "only {during} frames played in 10 s"
    );
    let events = rig.events();
    assert!(
        events.iter().all(|e| e["event"] != "underrun"),
        "the sink ran dry: {events:?}"
    );
    let log = rig.log();
    let stopped = log
        .lines()
        .find(|l| l.contains("line-out stopped"))
        .unwrap_or_else(|| panic!("no stop line in\n{log}"));
    assert!(
        stopped.contains("underruns=0") && stopped.contains("xruns=0"),
        "{stopped}"
    );
    // And it was music all along: no silence longer than 1 ms once it started.
    let frames = rig.captured();
    let first = rig.event("first_sound").unwrap()["frame"].as_u64().unwrap() as usize;
    let quiet = longest_quiet_run(&frames[first + 1000..], 16);
    assert!(quiet <= 48, "{quiet} quiet frames");
}
