//! Fixed-ratio resampling of a whole mono clip with rubato's FFT resampler.
//!
//! `Fft` with `FixedSync::Both` is a proper band-limited resampler: measured in the crate survey
//! at more than 140 dB stopband from 44.1 kHz to 8 kHz and flat to 3.4 kHz. rubato's
//! `process_all` trims the resampler delay, so the output is time-aligned with the input.

use super::AudioError;
use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Input frames per FFT chunk. Larger chunks give a steeper anti-aliasing filter (the filter
/// length follows the FFT size); 2048 puts the transition band between about 3.6 and 4 kHz
/// at an 8 kHz output, which keeps the telephone band flat.
const CHUNK_FRAMES: usize = 2048;

/// Highest rate either side may have. Guards against a nonsense rate building a giant FFT.
const MAX_RATE: u32 = 768_000;

/// Resamples `mono` from `from_hz` to `to_hz`.
///
/// The output has exactly `round(len × to / from)` samples, starts at the same instant as the
/// input (the resampler delay is removed) and keeps the tail. Content above the new Nyquist
/// frequency is filtered out, not folded back.
pub fn resample(mono: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    for rate in [from_hz, to_hz] {
        if rate == 0 || rate > MAX_RATE {
            return Err(AudioError::InvalidRate(rate));
        }
    }
    let out_len = expected_len(mono.len(), from_hz, to_hz);
    if from_hz == to_hz {
        return Ok(mono.to_vec());
    }
    if mono.is_empty() {
        return Ok(Vec::new());
    }
    let mut resampler = Fft::<f32>::new(
        from_hz as usize,
        to_hz as usize,
        CHUNK_FRAMES,
        1,
        FixedSync::Both,
    )
    .map_err(|e| AudioError::Resample(e.to_string()))?;
    let input = InterleavedSlice::new(mono, 1, mono.len())
        .map_err(|e| AudioError::Resample(e.to_string()))?;
    let output = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| AudioError::Resample(e.to_string()))?;
    let mut out = output.take_data();
    // process_all yields ceil(len × ratio) frames; the caller is promised round().
    out.resize(out_len, 0.0);
    Ok(out)
}

/// `round(len × to / from)` in integers, so long clips do not drift by float error.
fn expected_len(len: usize, from_hz: u32, to_hz: u32) -> usize {
    let num = len as u128 * u128::from(to_hz) + u128::from(from_hz) / 2;
    usize::try_from(num / u128::from(from_hz)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{goertzel_amp, sine};

    #[test]
    fn length_is_rounded_ratio() {
        for (len, from, to) in [
            (44_100, 44_100, 8_000),
            (1, 44_100, 8_000),
            (3, 48_000, 8_000),
            (12_345, 22_050, 8_000),
            (1000, 8_000, 16_000),
            (999, 11_025, 8_000),
        ] {
            let x = vec![0.1f32; len];
            let y = resample(&x, from, to).unwrap();
            let want = ((len as f64) * f64::from(to) / f64::from(from)).round() as usize;
            assert_eq!(y.len(), want, "{len} samples {from}->{to}");
        }
        assert!(resample(&[], 44_100, 8_000).unwrap().is_empty());
        assert!(matches!(
            resample(&[0.0], 0, 8000),
            Err(AudioError::InvalidRate(0))
        ));
    }

    /// A click in the input must come out at the same time in the output: a resampler whose
    /// delay is not compensated would shift every track start and break crossfade alignment.
    #[test]
    fn output_is_time_aligned() {
        let mut x = vec![0.0f32; 44_100];
        x[22_050] = 1.0; // 0.5 s
        let y = resample(&x, 44_100, 8_000).unwrap();
        let peak = y
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        assert!((3999..=4001).contains(&peak), "impulse moved to {peak}");
    }

    /// The tail must survive: a tone to the very end of the input is still there in the last
    /// 10 ms of the output.
    #[test]
    fn tail_is_kept() {
        let x = sine(1000.0, 48_000, 48_000, 0.5);
        let y = resample(&x, 48_000, 8_000).unwrap();
        let tail = &y[y.len() - 80..];
        let rms = (tail.iter().map(|s| s * s).sum::<f32>() / tail.len() as f32).sqrt();
        assert!(rms > 0.3, "tail rms {rms}");
        // And the tone keeps its level through the passband.
        let mid = &y[2000..6000];
        let amp = goertzel_amp(mid, 8000, 1000.0);
        assert!((amp - 0.5).abs() < 0.01, "1 kHz amplitude {amp}");
    }
}
