//! Signal helpers shared by the audio and channel tests.

use std::f64::consts::PI;

/// `len` samples of a sine at `freq` Hz and peak `amp`.
pub fn sine(freq: f64, rate: u32, len: usize, amp: f32) -> Vec<f32> {
    (0..len)
        .map(|i| amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32)
        .collect()
}

/// Amplitude of the `freq` component of `x` (Goertzel, Hann-windowed so a strong tone nearby
/// does not leak into a weak bin). A full-scale sine at `freq` gives about its peak amplitude.
pub fn goertzel_amp(x: &[f32], rate: u32, freq: f64) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let w = 2.0 * PI * freq / f64::from(rate);
    let (mut re, mut im, mut wsum) = (0.0, 0.0, 0.0);
    for (i, &s) in x.iter().enumerate() {
        let win = 0.5 - 0.5 * (2.0 * PI * i as f64 / (n - 1) as f64).cos();
        re += f64::from(s) * win * (w * i as f64).cos();
        im += f64::from(s) * win * (w * i as f64).sin();
        wsum += win;
    }
    2.0 * (re * re + im * im).sqrt() / wsum
}

/// Frequency estimated from rising zero crossings, interpolated between samples.
pub fn zero_crossing_hz(x: &[f32], rate: u32) -> f64 {
    let mut crossings = Vec::new();
    for (i, w) in x.windows(2).enumerate() {
        if w[0] < 0.0 && w[1] >= 0.0 {
            let frac = f64::from(-w[0]) / f64::from(w[1] - w[0]);
            crossings.push(i as f64 + frac);
        }
    }
    if crossings.len() < 2 {
        return 0.0;
    }
    let span = crossings[crossings.len() - 1] - crossings[0];
    (crossings.len() - 1) as f64 * f64::from(rate) / span
}

/// Writes `x` (mono, -1..1) as a 16-bit WAV file: the input the decode and cache tests need.
pub fn write_wav(path: &std::path::Path, rate: u32, x: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in x {
        w.write_sample((s * 32767.0).round() as i16).unwrap();
    }
    w.finalize().unwrap();
}
