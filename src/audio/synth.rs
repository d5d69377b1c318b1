//! The built-in demo melody: what a caller hears before anyone uploads music.
//!
//! Ten seconds at 96 bpm: four bars over C – Am – F – G, with a soft pad, a bass line and a
//! bell-like melody, plus a little room reverb. The piece is original (a chord-tone melody over
//! the most common progression there is) and synthesised here, so it carries no copyright.
//!
//! It loops without a seam by construction: every note is rendered into a circular buffer, so a
//! note whose tail runs past the end continues at the start, and the reverb is run round the
//! loop until it reaches its periodic steady state. The last sample leads into the first exactly
//! as any two neighbouring samples do.
//!
//! Voices are additive (sums of sines) rather than FM so that no partial above the Nyquist
//! frequency is ever generated: partials at or above 0.45 × rate are skipped, which keeps the
//! melody alias-free even when synthesised straight at 8 kHz.

use std::f64::consts::PI;

/// Length of the demo loop in seconds: 16 beats at 96 bpm.
pub const DEMO_SECONDS: f64 = 10.0;

const BEAT: f64 = DEMO_SECONDS / 16.0;

/// One chord per bar: (pad notes, bass note), as MIDI note numbers. The pad voicing moves by
/// step between chords so the changes are smooth.
const CHORDS: [([u8; 3], u8); 4] = [
    ([60, 64, 67], 48), // C: C4 E4 G4, bass C3
    ([60, 64, 69], 45), // Am: C4 E4 A4, bass A2
    ([60, 65, 69], 41), // F: C4 F4 A4, bass F2
    ([59, 62, 67], 43), // G: B3 D4 G4, bass G2
];

/// The melody: (start beat, length in beats, MIDI note). Ends on D5 leading back to the E5
/// the loop starts with.
const MELODY: [(f64, f64, u8); 18] = [
    (0.0, 1.0, 76),
    (1.0, 1.0, 79),
    (2.0, 1.5, 84),
    (3.5, 0.5, 83),
    (4.0, 1.5, 81),
    (5.5, 0.5, 79),
    (6.0, 2.0, 76),
    (8.0, 1.0, 77),
    (9.0, 1.0, 81),
    (10.0, 1.0, 84),
    (11.0, 1.0, 81),
    (12.0, 1.5, 79),
    (13.5, 0.5, 77),
    (14.0, 1.0, 74),
    (15.0, 0.5, 71),
    (15.5, 0.5, 74),
    // Two soft grace notes an octave down, answering the melody at the ends of bars 2 and 4.
    (7.5, 0.5, 67),
    (15.75, 0.25, 67),
];

/// Synthesises the demo loop at `rate` Hz: `round(10 s × rate)` samples, peak about 0.5.
pub fn demo_melody(rate: u32) -> Vec<f32> {
    let rate_f = f64::from(rate.max(1));
    let len = ((DEMO_SECONDS * rate_f).round() as usize).max(1);
    let mut buf = Loop {
        x: vec![0f64; len],
        rate: rate_f,
    };

    for (bar, &(pad, bass)) in CHORDS.iter().enumerate() {
        let start = bar as f64 * 4.0 * BEAT;
        for note in pad {
            buf.note(&PAD, start, 4.0 * BEAT, midi_hz(note), 0.055);
        }
        // Bass on beats 1 and 3, the second one softer.
        buf.note(&BASS, start, 1.8 * BEAT, midi_hz(bass), 0.16);
        buf.note(&BASS, start + 2.0 * BEAT, 1.8 * BEAT, midi_hz(bass), 0.11);
    }
    for &(beat, beats, note) in &MELODY {
        let amp = if note < 70 { 0.08 } else { 0.2 };
        buf.note(&BELL, beat * BEAT, beats * BEAT, midi_hz(note), amp);
    }

    let dry = buf.x;
    let wet = reverb(&dry, rate_f);
    let mixed: Vec<f64> = dry.iter().zip(&wet).map(|(d, w)| d + 0.22 * w).collect();
    let peak = mixed.iter().fold(0f64, |m, s| m.max(s.abs())).max(1e-9);
    let scale = 0.5 / peak;
    mixed.iter().map(|s| (s * scale) as f32).collect()
}

fn midi_hz(note: u8) -> f64 {
    440.0 * 2f64.powf((f64::from(note) - 69.0) / 12.0)
}

/// A circular buffer that notes are added into, wrapping past the end.
struct Loop {
    x: Vec<f64>,
    rate: f64,
}

impl Loop {
    /// Adds `f(t)` for `t` in `[0, dur)` seconds starting at `start` seconds, wrapping.
    fn add(&mut self, start: f64, dur: f64, mut f: impl FnMut(f64) -> f64) {
        let n = self.x.len();
        // A tail longer than the loop would pile onto itself; cap it.
        let samples = ((dur * self.rate) as usize).min(n);
        let s0 = (start * self.rate).round() as usize;
        for k in 0..samples {
            let t = k as f64 / self.rate;
            self.x[(s0 + k) % n] += f(t);
        }
    }

    /// One note of `voice` at `freq` Hz, held for `hold` seconds, then released.
    fn note(&mut self, voice: &Voice, start: f64, hold: f64, freq: f64, amp: f64) {
        let nyquist_guard = 0.45 * self.rate;
        let active: Vec<(f64, f64, f64)> = voice
            .partials
            .iter()
            .copied()
            .filter(|(ratio, _, _)| freq * ratio < nyquist_guard)
            .collect();
        let (attack, release) = (voice.attack, voice.release);
        self.add(start, hold + release, |t| {
            let env = envelope(t, attack, hold, release);
            let s: f64 = active
                .iter()
                .map(|&(ratio, a, decay)| {
                    a * (-t / decay).exp() * (2.0 * PI * freq * ratio * t).sin()
                })
                .sum();
            amp * env * s
        });
    }
}

/// An additive instrument: partials `(frequency ratio, amplitude, decay seconds)` under a
/// raised-cosine attack and release.
struct Voice {
    attack: f64,
    release: f64,
    partials: &'static [(f64, f64, f64)],
}

/// A soft electric-piano / bell tone: strong fundamental, quickly fading upper partials and a
/// slightly inharmonic shimmer.
const BELL: Voice = Voice {
    attack: 0.006,
    release: 0.35,
    partials: &[
        (1.0, 1.0, 1.4),
        (2.0, 0.32, 0.6),
        (3.0, 0.12, 0.3),
        (4.2, 0.05, 0.15),
    ],
};

/// A warm bass: the fundamental is below the telephone band, so harmonics 2–4 carry it (the
/// ear fills in the missing fundamental).
const BASS: Voice = Voice {
    attack: 0.012,
    release: 0.25,
    partials: &[
        (1.0, 1.0, 0.9),
        (2.0, 0.7, 0.6),
        (3.0, 0.35, 0.4),
        (4.0, 0.15, 0.3),
    ],
};

/// Pad detune: two sines 0.15 % apart beat slowly, a gentle chorus.
const DETUNE: f64 = 1.0015;

/// A slow-attack pad that does not decay.
const PAD: Voice = Voice {
    attack: 0.45,
    release: 0.7,
    partials: &[
        (1.0 / DETUNE, 0.5, 1e9),
        (DETUNE, 0.5, 1e9),
        (2.0, 0.12, 1e9),
    ],
};

/// Raised-cosine attack, hold, raised-cosine release: continuous from 0 to 0, so no note
/// starts or ends with a click.
fn envelope(t: f64, attack: f64, hold: f64, release: f64) -> f64 {
    if t < attack {
        0.5 - 0.5 * (PI * t / attack).cos()
    } else if t < hold {
        1.0
    } else if t < hold + release {
        0.5 + 0.5 * (PI * (t - hold) / release).cos()
    } else {
        0.0
    }
}

/// A small Schroeder reverb (four combs into two all-passes), run circularly: two trips round
/// the loop put it in its periodic steady state (the combs decay by far more than 100 dB per
/// loop length), so the reverb tail of the last bar rings into the first.
fn reverb(x: &[f64], rate: f64) -> Vec<f64> {
    let n = x.len();
    let d = |ms: f64| ((ms * rate / 1000.0) as usize).clamp(1, n.max(1));
    let mut combs = vec![0f64; n];
    for (ms, g) in [(29.7, 0.78), (37.1, 0.76), (41.1, 0.74), (43.7, 0.72)] {
        let delay = d(ms);
        let mut y = vec![0f64; n];
        for _ in 0..2 {
            for i in 0..n {
                y[i] = x[i] + g * y[(i + n - delay) % n];
            }
        }
        for (c, v) in combs.iter_mut().zip(&y) {
            *c += v / 4.0;
        }
    }
    let mut out = combs;
    for (ms, g) in [(5.0, 0.7), (1.7, 0.7)] {
        let delay = d(ms);
        let input = out.clone();
        let mut y = vec![0f64; n];
        for _ in 0..2 {
            for i in 0..n {
                let j = (i + n - delay) % n;
                y[i] = -g * input[i] + input[j] + g * y[j];
            }
        }
        out = y;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{integrated_lufs, normalise};

    #[test]
    fn is_ten_seconds_and_not_silent() {
        for rate in [8000, 48_000] {
            let m = demo_melody(rate);
            assert_eq!(m.len(), rate as usize * 10);
            let l = integrated_lufs(&m, rate).unwrap();
            assert!(l > -35.0, "{rate} Hz: {l} LUFS");
            // Sound all the way through: no second of the loop is quiet.
            for (i, sec) in m.chunks(rate as usize).enumerate() {
                let rms = (sec.iter().map(|s| s * s).sum::<f32>() / sec.len() as f32).sqrt();
                assert!(rms > 0.02, "second {i} rms {rms}");
            }
        }
    }

    /// The jump from the last sample to the first must look like any other step of the music.
    #[test]
    fn loops_without_click() {
        let m = demo_melody(8000);
        let seam = (m[0] - m[m.len() - 1]).abs();
        let steps: Vec<f32> = m.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
        let max_step = steps.iter().copied().fold(0f32, f32::max);
        let mean_step = steps.iter().sum::<f32>() / steps.len() as f32;
        assert!(seam <= max_step * 0.5, "seam step {seam} vs max {max_step}");
        assert!(
            seam <= mean_step * 4.0,
            "seam step {seam} vs mean {mean_step}"
        );
        // Second difference too: a kink at the seam is a click even without a jump.
        let n = m.len();
        let curv = (m[1] - 2.0 * m[0] + m[n - 1]).abs();
        let max_curv = m
            .windows(3)
            .map(|w| (w[2] - 2.0 * w[1] + w[0]).abs())
            .fold(0f32, f32::max);
        assert!(
            curv <= max_curv * 0.5,
            "seam curvature {curv} vs {max_curv}"
        );
    }

    #[test]
    fn normalises_to_target() {
        let mut m = demo_melody(8000);
        normalise(&mut m, 8000, -18.0);
        let l = integrated_lufs(&m, 8000).unwrap();
        assert!((l + 18.0).abs() < 0.5, "{l}");
    }

    #[test]
    fn nothing_above_nyquist_guard_at_8k() {
        // Alias-free synthesis: the top melody note's 4.2x shimmer (1046 × 4.2 = 4.4 kHz)
        // must have been skipped at 8 kHz, so there is no energy folded to 3.6 kHz.
        let m = demo_melody(8000);
        let amp = crate::audio::test_util::goertzel_amp(&m, 8000, 8000.0 - 1046.5 * 4.2);
        assert!(amp < 1e-3, "aliased shimmer {amp}");
    }
}
