//! Loudness measurement (EBU R128 integrated, via ebur128), gain to a target, and the peak
//! limiter that keeps every sample under [`CEILING_DBFS`].
//!
//! # The limiter
//!
//! G.711 has no headroom above full scale, and a loudness gain of +10 dB on a dynamic track
//! would push its peaks far past it; hard clipping those peaks sounds harsh. Since a render
//! sees the whole track at once, the limiter is an offline look-ahead limiter that never
//! overshoots:
//!
//! 1. Required gain per sample: `req[n] = min(1, ceiling / |x[n]|)`.
//! 2. Sliding minimum of `req` over `n ± r` (`r` = [`ATTACK_MS`]): the gain is already down
//!    when a peak arrives (the look-ahead).
//! 3. Release: the gain may fall at once but rises back toward 1 with a one-pole time
//!    constant of [`RELEASE_MS`], so it does not pump between close peaks.
//! 4. A moving average over `n ± r` turns the steps into ramps of `2r + 1` samples, which
//!    removes the clicks a stepped gain would make.
//!
//! Every value averaged in step 4 for sample `n` is at most `req[n]` (each is a minimum over a
//! window that contains `n`), so `|x[n] × gain[n]| <= ceiling` holds exactly; the final clamp
//! only catches float rounding. The limiter works in place with one extra `f32` per sample.

use ebur128::{EbuR128, Mode};
use std::collections::VecDeque;

/// The sample-peak ceiling after limiting, in dBFS. One dB below full scale leaves room for
/// the G.711 quantiser and for i16 rounding.
pub const CEILING_DBFS: f64 = -1.0;

/// Look-ahead and gain ramp half-length of the limiter.
const ATTACK_MS: f64 = 5.0;

/// Release time constant of the limiter.
const RELEASE_MS: f64 = 80.0;

/// Largest gain [`normalise`] applies. A track measured at -60 LUFS is mostly noise or a
/// near-silent intro; lifting it by more than this would mostly amplify hiss.
const MAX_GAIN_DB: f64 = 30.0;

/// Rounds of "measure again, add make-up gain, limit again" when limiting lost loudness.
const MAX_MAKEUP_ROUNDS: usize = 3;

/// How far below the target a limited track may stay before another make-up round.
const MAKEUP_TOLERANCE_LU: f64 = 0.3;

/// The ceiling as a linear sample value (about 0.891).
pub fn ceiling_linear() -> f32 {
    10f64.powf(CEILING_DBFS / 20.0) as f32
}

/// What [`normalise`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormaliseReport {
    /// Integrated loudness before any gain, `None` for silence.
    pub measured_lufs: Option<f64>,
    /// Total gain applied before the limiter, in dB.
    pub gain_db: f64,
    /// Integrated loudness after gain and limiter, `None` for silence.
    pub final_lufs: Option<f64>,
    /// Samples whose gain the limiter reduced in the last pass.
    pub limited_samples: usize,
}

/// EBU R128 integrated loudness of a mono buffer, in LUFS. `None` for silence (everything
/// below the -70 LUFS absolute gate), for an empty buffer, or a rate ebur128 does not accept.
///
/// R128 gates in 400 ms blocks, so a shorter clip would measure as silence; it is measured as
/// if played in a loop (repeated up to 400 ms), which is how a channel plays it.
pub fn integrated_lufs(mono: &[f32], rate: u32) -> Option<f64> {
    if mono.is_empty() {
        return None;
    }
    let mut meter = EbuR128::new(1, rate, Mode::I).ok()?;
    let block = (rate as usize * 2).div_ceil(5);
    if mono.len() < block {
        let tiled: Vec<f32> = mono.iter().copied().cycle().take(block).collect();
        meter.add_frames_f32(&tiled).ok()?;
    } else {
        meter.add_frames_f32(mono).ok()?;
    }
    let lufs = meter.loudness_global().ok()?;
    (lufs.is_finite() && lufs > -70.0).then_some(lufs)
}

/// Brings `mono` to `target_lufs` integrated loudness, then limits peaks to [`CEILING_DBFS`].
///
/// When the limiter takes enough loudness away that the result is more than 0.3 LU under the
/// target, make-up gain is added and the limiter runs again (a few rounds at most). Silence is
/// left as it is. Gain is capped at +30 dB.
pub fn normalise(mono: &mut [f32], rate: u32, target_lufs: f64) -> NormaliseReport {
    let measured = integrated_lufs(mono, rate);
    let Some(measured_lufs) = measured else {
        let limited_samples = limit(mono, rate);
        return NormaliseReport {
            measured_lufs: None,
            gain_db: 0.0,
            final_lufs: None,
            limited_samples,
        };
    };
    let mut gain_db = (target_lufs - measured_lufs).min(MAX_GAIN_DB);
    apply_gain_db(mono, gain_db);
    let mut limited_samples = limit(mono, rate);
    let mut final_lufs = integrated_lufs(mono, rate);
    for _ in 0..MAX_MAKEUP_ROUNDS {
        let Some(now) = final_lufs else { break };
        let missing = target_lufs - now;
        if limited_samples == 0 || missing <= MAKEUP_TOLERANCE_LU || gain_db >= MAX_GAIN_DB {
            break;
        }
        let extra = missing.min(MAX_GAIN_DB - gain_db);
        gain_db += extra;
        apply_gain_db(mono, extra);
        limited_samples = limit(mono, rate);
        final_lufs = integrated_lufs(mono, rate);
    }
    NormaliseReport {
        measured_lufs: Some(measured_lufs),
        gain_db,
        final_lufs,
        limited_samples,
    }
}

fn apply_gain_db(mono: &mut [f32], gain_db: f64) {
    let g = 10f64.powf(gain_db / 20.0) as f32;
    for s in mono {
        *s *= g;
    }
}

/// The look-ahead peak limiter described in the module docs, treating the buffer as a one-off
/// clip (nothing before its start or after its end). Returns how many samples it turned down.
pub fn limit(x: &mut [f32], rate: u32) -> usize {
    let ceiling = ceiling_linear();
    if x.iter().all(|s| s.abs() <= ceiling) {
        return 0;
    }
    let r = ((ATTACK_MS * f64::from(rate) / 1000.0).round() as usize).max(1);
    let release = 1.0 - (-1000.0 / (RELEASE_MS * f64::from(rate.max(1)))).exp() as f32;
    let mut gain: Vec<f32> = x
        .iter()
        .map(|s| {
            let a = s.abs();
            if a > ceiling { ceiling / a } else { 1.0 }
        })
        .collect();
    sliding_min_in_place(&mut gain, r);
    let mut env = 1.0f32;
    for g in gain.iter_mut() {
        env = (env + (1.0 - env) * release).min(*g);
        *g = env;
    }
    box_mean_in_place(&mut gain, r);
    let mut limited = 0;
    for (s, g) in x.iter_mut().zip(&gain) {
        if *g < 1.0 {
            limited += 1;
        }
        *s = (*s * g).clamp(-ceiling, ceiling);
    }
    limited
}

/// [`limit`] for a buffer that plays as a loop: the gain around the seam sees the samples on
/// the other side of it, so a peak just after the seam is anticipated before it.
pub fn limit_circular(x: &mut [f32], rate: u32) -> usize {
    if x.is_empty() || x.iter().all(|s| s.abs() <= ceiling_linear()) {
        return 0;
    }
    // Enough context for the release to settle (about 6 time constants) plus the look-ahead.
    let pad = (6.0 * RELEASE_MS * f64::from(rate) / 1000.0) as usize
        + (2.0 * ATTACK_MS * f64::from(rate) / 1000.0) as usize
        + 1;
    let n = x.len();
    let mut ext: Vec<f32> = (0..n + 2 * pad)
        .map(|i| x[(i + n * (pad / n + 1) - pad) % n])
        .collect();
    limit(&mut ext, rate);
    let middle = &ext[pad..pad + n];
    let limited = middle.iter().zip(x.iter()).filter(|(a, b)| a != b).count();
    x.copy_from_slice(middle);
    limited
}

/// `v[n] = min(v[n - r ..= n + r])`, clipped at the ends, in one pass with a monotonic deque.
fn sliding_min_in_place(v: &mut [f32], r: usize) {
    let n = v.len();
    let mut dq: VecDeque<(usize, f32)> = VecDeque::with_capacity(2 * r + 2);
    // Read index i runs r ahead of write index w = i - r.
    for i in 0..n + r {
        if i < n {
            let val = v[i];
            while dq.back().is_some_and(|&(_, b)| b >= val) {
                dq.pop_back();
            }
            dq.push_back((i, val));
        }
        if i >= r {
            let w = i - r;
            while dq.front().is_some_and(|&(j, _)| j + r < w) {
                dq.pop_front();
            }
            if let Some(&(_, m)) = dq.front() {
                v[w] = m;
            }
        }
    }
}

/// `v[n] = mean(v[n - r ..= n + r])`, over the part of the window inside the buffer.
fn box_mean_in_place(v: &mut [f32], r: usize) {
    let n = v.len();
    // Original values still needed after being overwritten: the last 2r + 1 of them.
    let ring_len = 2 * r + 2;
    let mut ring = vec![0f32; ring_len];
    let mut sum = 0f64;
    let mut count = 0usize;
    for i in 0..n + r {
        if i < n {
            ring[i % ring_len] = v[i];
            sum += f64::from(v[i]);
            count += 1;
        }
        if i >= r {
            let w = i - r;
            // Window for w is [w - r, w + r]; drop w - r - 1 if it was added.
            if w > r {
                let old = w - r - 1;
                sum -= f64::from(ring[old % ring_len]);
                count -= 1;
            }
            v[w] = (sum / count.max(1) as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::sine;

    #[test]
    fn silence_has_no_loudness() {
        assert_eq!(integrated_lufs(&[0.0; 8000], 8000), None);
        assert_eq!(integrated_lufs(&[], 8000), None);
        assert_eq!(integrated_lufs(&[0.0; 100], 8000), None);
        // 100 ms of a sine is short of one R128 block but is not silence.
        let short = integrated_lufs(&sine(1000.0, 8000, 800, 1.0), 8000).unwrap();
        assert!((short + 3.0).abs() < 0.5, "{short}");
        let mut s = vec![0.0f32; 8000];
        let rep = normalise(&mut s, 8000, -18.0);
        assert_eq!(rep.measured_lufs, None);
        assert!(s.iter().all(|&v| v == 0.0));
    }

    /// A full-scale 1 kHz sine is about -3 LUFS (R128's reference point); checks the meter is
    /// wired the right way round at 8 kHz too.
    #[test]
    fn sine_reference_level() {
        for rate in [8000, 48_000] {
            let x = sine(1000.0, rate, rate as usize * 5, 1.0);
            let l = integrated_lufs(&x, rate).unwrap();
            assert!((l + 3.0).abs() < 0.5, "{rate} Hz: {l}");
        }
    }

    #[test]
    fn normalise_reaches_target_quiet_and_loud() {
        for amp in [0.01f32, 0.9] {
            let mut x = sine(440.0, 8000, 8000 * 5, amp);
            let rep = normalise(&mut x, 8000, -18.0);
            let l = integrated_lufs(&x, 8000).unwrap();
            assert!((l + 18.0).abs() < 0.5, "amp {amp}: {l} ({rep:?})");
        }
    }

    /// A loud square-ish wave pushed to -3 LUFS needs peaks above full scale; after the limiter
    /// no sample may exceed the ceiling, and it must still be about as loud as asked.
    #[test]
    fn loud_square_is_limited_under_ceiling() {
        let rate = 8000;
        let mut x: Vec<f32> = sine(200.0, rate, rate as usize * 4, 1.0)
            .into_iter()
            .map(|s| (s * 4.0).tanh())
            .collect();
        // Level steps that make the limiter attack and release too.
        for (i, s) in x.iter_mut().enumerate() {
            if (i / 1000) % 3 == 0 {
                *s *= 0.5;
            }
        }
        let rep = normalise(&mut x, rate, -3.0);
        let ceiling = ceiling_linear();
        let peak = x.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak <= ceiling, "peak {peak} > {ceiling}");
        assert!(peak > ceiling * 0.95, "limiter squashed too much: {peak}");
        assert!(rep.limited_samples > 0);
        let l = integrated_lufs(&x, rate).unwrap();
        assert!(l > -4.5, "lost too much loudness: {l}");
    }

    /// The gain must ramp, not step: a single peak far above the ceiling gets its neighbours
    /// turned down gradually, so there is no jump in the gain curve.
    #[test]
    fn limiter_gain_is_smooth() {
        let rate = 8000;
        let mut x = vec![0.5f32; 8000];
        x[2000] = 4.0;
        limit(&mut x, rate);
        assert!(x[2000] <= ceiling_linear());
        // Outside the peak sample itself, the 0.5 plateau must move in small steps.
        let plateau_step = x[..1990]
            .windows(2)
            .chain(x[2010..].windows(2))
            .map(|w| (w[1] - w[0]).abs())
            .fold(0f32, f32::max);
        assert!(plateau_step < 0.02, "gain stepped by {plateau_step}");
        // The plateau right at the peak is pulled down (look-ahead), and recovers later.
        assert!(x[1999] < 0.2, "no look-ahead: {}", x[1999]);
        assert!((x[7999] - 0.5).abs() < 0.001, "no release: {}", x[7999]);
    }

    #[test]
    fn sliding_helpers() {
        let mut v = vec![5.0, 4.0, 3.0, 9.0, 9.0, 9.0, 1.0];
        sliding_min_in_place(&mut v, 1);
        assert_eq!(v, vec![4.0, 3.0, 3.0, 3.0, 9.0, 1.0, 1.0]);
        let mut m = vec![3.0, 0.0, 3.0, 6.0];
        box_mean_in_place(&mut m, 1);
        assert_eq!(m, vec![1.5, 2.0, 3.0, 4.5]);
    }

    #[test]
    fn circular_limit_sees_across_the_seam() {
        let rate = 8000;
        let mut x = vec![0.5f32; 8000];
        x[0] = 3.0;
        limit_circular(&mut x, rate);
        assert!(x.iter().all(|s| s.abs() <= ceiling_linear()));
        // The end of the loop leads into the peak, so it must already be turned down.
        assert!(x[7999] < 0.2, "seam not anticipated: {}", x[7999]);
    }
}
