//! Shared helpers for the loopback tests: start the real `mohd` binary on 127.0.0.1, make music.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn mohd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mohd"))
}

/// A `mohd serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub sip: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `mohd serve` with the given extra args on 127.0.0.1 port 0 and waits for the
    /// "SIP listening" line to learn the port.
    pub fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(mohd_bin());
        cmd.arg("serve").arg("--sip").arg("127.0.0.1:0");
        cmd.args(extra);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start mohd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("mohd: SIP listening on udp:") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("mohd did not start listening within 60 s");
        Server {
            child,
            sip: addr.parse().expect("listening address"),
        }
    }

    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.sip)
    }
}

/// Runs `mohd call` and returns its JSON report.
pub fn mohd_call(uri: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(mohd_bin())
        .arg("call")
        .arg(uri)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run mohd call");
    assert!(
        out.status.success(),
        "mohd call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// A few seconds of music-like audio with a pattern that never repeats within the loop (so the
/// position of a recording in it is unambiguous): a melody of tones with a slow chirp under it.
pub fn write_test_music(path: &Path, seconds: f64, rate: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    let n = (seconds * rate as f64) as usize;
    let notes = [262.0, 330.0, 392.0, 523.0, 440.0, 349.0, 294.0, 494.0];
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let note = notes[((t * 4.0) as usize) % notes.len()] * (1.0 + 0.1 * (t / seconds));
        let chirp = 200.0 + 600.0 * t / seconds;
        let v = 0.35 * (2.0 * std::f64::consts::PI * note * t).sin()
            + 0.15 * (2.0 * std::f64::consts::PI * chirp * t).sin();
        let s = (v * 20_000.0) as i16;
        w.write_sample(s).expect("sample");
        w.write_sample(s).expect("sample");
    }
    w.finalize().expect("finalize");
}

pub fn read_wav_mono(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).expect("open recording");
    r.samples::<i16>().map(|s| s.expect("sample")).collect()
}

/// The best normalised correlation of `chunk` against every circular position of `reference`.
pub fn best_circular_correlation(chunk: &[i16], reference: &[i16]) -> (f64, usize) {
    let n = reference.len();
    let c: Vec<f64> = chunk.iter().map(|&x| x as f64).collect();
    let r: Vec<f64> = reference.iter().map(|&x| x as f64).collect();
    let c_energy: f64 = c.iter().map(|x| x * x).sum();
    let mut best = (f64::MIN, 0);
    for lag in 0..n {
        let (mut dot, mut r_energy) = (0.0, 0.0);
        for (k, x) in c.iter().enumerate() {
            let y = r[(lag + k) % n];
            dot += x * y;
            r_energy += y * y;
        }
        let corr = dot / (c_energy.sqrt() * r_energy.sqrt()).max(1e-9);
        if corr > best.0 {
            best = (corr, lag);
        }
    }
    best
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
