//! What one pass of a programme is: the single input of a channel render.
//!
//! Owns [`Composition`] (the music files in play order or the demo melody, the music's
//! loudness target, the announcements to interject, and how the pass joins what plays before
//! it), [`shuffle_order`] (the play order of a shuffled pass) and the placement of
//! announcements in a pass. A render, its wideband encodings and their cache
//! entries are all made from, and keyed by, one `Composition`; a plain playlist is a
//! composition without announcements, rendered exactly as before announcements existed.
//!
//! # Announcements in a pass
//!
//! The music is first joined into one loop as without announcements (tracks crossfaded, the
//! seam included), then cut at each *pause point*: the music fades out over `fade_out_ms`
//! ending there, the announcement plays (its clip normalised to its own target, trimmed,
//! padded with silence to whole 20 ms frames), and the music fades back in over `fade_in_ms`
//! from the very sample where it paused. `EverySeconds(n)`: an announcement starts at
//! n, 2n, ... seconds of *pass* time (announcements included); a slot that would leave less
//! music before it than the two fades (a long announcement, a short `n`), or too little music
//! after it before the pass ends, is left out. `EveryTracks(k)`: after every k music tracks
//! of the pass, counted from its start; after the pass's last track too when k divides the
//! track count (the pass then ends with the announcement and starts with the music fading in).
//! Clips rotate in order from `first_clip`: slot s plays clip `first_clip + s` (modulo their
//! number), or the next one that decodes; a clip that fails is logged and skipped. The next
//! pass continues the rotation from [`AnnouncementPlan::next_first_clip`].
//!
//! Every rate's render places the same announcements at the same times: a clip's length in
//! frames is measured at 8 kHz whatever the rate, so the wideband loops stay aligned with
//! the 8 kHz loop frame for frame.

use std::path::PathBuf;

use rand::Rng;

use super::MusicSource;
use super::spec::Interject;

/// One pass of a programme: everything a render depends on besides the rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Composition {
    /// The music, in play order (already shuffled for a shuffled pass).
    pub music: MusicSource,
    /// Integrated loudness target of the music, LUFS.
    pub loudness_lufs: f64,
    /// Announcements interjected into the music, if any.
    pub announcements: Option<AnnouncementPlan>,
    /// How the pass's start joins what played before it.
    pub join: Join,
}

/// How a pass's start joins what played before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Join {
    /// The pass loops on itself (an unshuffled programme): the seam crossfades the last
    /// track's tail into the first track's head, and is lengthened to fit the loop to whole
    /// frames.
    #[default]
    Loop,
    /// The pass is one of a chain (a shuffled programme): the seam is exactly one crossfade
    /// (never fitted), and it crossfades `previous_last`'s tail (the track the previous pass
    /// ended with) into this pass's first track, so the previous pass's end runs into this
    /// pass's start as a loop's seam would. The pass's own last track is not wrapped: its
    /// tail is the next pass's lead-in. `None` (the first pass) wraps its own last track,
    /// so it also loops on itself cleanly. A chained pass that loops on itself after all
    /// (the next pass was late) has a cut at its seam unless `previous_last` is its own last
    /// track.
    Chain { previous_last: Option<PathBuf> },
}

/// Announcements a pass interjects, resolved to files.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnouncementPlan {
    /// The clips, in rotation order.
    pub clips: Vec<PathBuf>,
    pub every: Interject,
    /// Each clip is normalised to this, LUFS.
    pub loudness_lufs: f64,
    /// The music fades out over this before each announcement...
    pub fade_out_ms: u32,
    /// ...and back in over this after it.
    pub fade_in_ms: u32,
    /// The clip the pass's first announcement plays (rotation continues across passes).
    pub first_clip: usize,
}

impl AnnouncementPlan {
    /// The `first_clip` of the pass after one that interjected `announcements` of them.
    pub fn next_first_clip(&self, announcements: usize) -> usize {
        if self.clips.is_empty() {
            return 0;
        }
        (self.first_clip + announcements) % self.clips.len()
    }
}

impl Composition {
    /// `music` in order at `loudness_lufs`, nothing interjected, looping on itself: what a
    /// channel played before programmes had announcements.
    pub fn playlist(music: MusicSource, loudness_lufs: f64) -> Composition {
        Composition {
            music,
            loudness_lufs,
            announcements: None,
            join: Join::Loop,
        }
    }

    /// This composition with every folder in its music replaced by the audio files in it, as
    /// the render does (so a cache key covers the files themselves).
    pub fn expanded(&self) -> Composition {
        let music = match &self.music {
            MusicSource::Demo => MusicSource::Demo,
            MusicSource::Files(paths) => MusicSource::Files(
                paths
                    .iter()
                    .flat_map(|p| super::expand_music_path(p))
                    .collect(),
            ),
        };
        Composition {
            music,
            ..self.clone()
        }
    }

    /// The files the composition reads (music, the previous pass's last track, clips).
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        let music = match &self.music {
            MusicSource::Demo => &[][..],
            MusicSource::Files(f) => &f[..],
        };
        let lead_in = match &self.join {
            Join::Chain {
                previous_last: Some(p),
            } => Some(p),
            _ => None,
        };
        let clips = self.announcements.iter().flat_map(|a| a.clips.iter());
        music.iter().chain(lead_in).chain(clips)
    }
}

/// The play order of a shuffled pass of `n` tracks: a uniformly random permutation of
/// `0..n`, except that it never starts with `previous_last` (the index of the track the
/// previous pass ended with) when `n >= 2`, so no track plays twice in a row across the pass
/// boundary.
///
/// Uniform over the permutations allowed: a permutation drawn by Fisher–Yates that starts
/// with `previous_last` has its first element swapped with a uniformly chosen later one.
/// Every allowed order with `previous_last` at position j ≥ 1 is then reached directly
/// (probability 1/n!) or from exactly one refused order (the one with positions 0 and j
/// swapped, probability 1/n! × 1/(n−1)): each has n/(n−1) × 1/n!, the same.
pub fn shuffle_order(n: usize, previous_last: Option<usize>, rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    if n >= 2 && previous_last.is_some() && order.first().copied() == previous_last {
        let j = rng.random_range(1..n);
        order.swap(0, j);
    }
    order
}

/// A prepared announcement: the clip at the render's rate, padded with silence to whole
/// frames (a frame count measured at 8 kHz, the same at every rate).
pub(super) struct PreparedClip {
    /// Its index in the plan's rotation.
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) samples: Vec<f32>,
}

/// Where the pass pauses its music for an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PauseAt {
    /// At this sample of music time (`EverySeconds`).
    Sample(usize),
    /// At the start of this music track (`EveryTracks`).
    Track(usize),
    /// At the end of the music, so the pass ends with the announcement.
    End,
}

/// One announcement of a pass: where, and which of the prepared clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) at: PauseAt,
    pub(super) clip: usize,
}

/// Fades shorter than this are lengthened to it, so a pause never clicks.
const MIN_FADE_MS: u32 = super::CROSSFADE_MS;

fn ms_to_samples(ms: u32, rate: u32) -> usize {
    (u64::from(ms) * u64::from(rate) / 1000) as usize
}

impl AnnouncementPlan {
    /// The fade-out and fade-in, in samples at `rate`.
    pub(super) fn fades(&self, rate: u32) -> (usize, usize) {
        (
            ms_to_samples(self.fade_out_ms.max(MIN_FADE_MS), rate),
            ms_to_samples(self.fade_in_ms.max(MIN_FADE_MS), rate),
        )
    }

    /// The pass's announcements, in order: `clips` are the clips that decoded, as (index in
    /// the rotation, length in samples), in rotation order; `music_len` and `track_starts` are the
    /// music's before any pause (see the module's `# Announcements in a pass`).
    pub(super) fn slots(
        &self,
        clips: &[(usize, usize)],
        music_len: usize,
        track_starts: &[usize],
        rate: u32,
    ) -> Vec<Slot> {
        let mut slots = Vec::new();
        if clips.is_empty() || self.clips.is_empty() {
            return slots;
        }
        // Slot s plays the clip `first_clip + s` round the rotation, or the next one that
        // decoded.
        let clip_for = |s: usize| -> (usize, usize) {
            let want = (self.first_clip + s) % self.clips.len();
            let i = clips.partition_point(|&(index, _)| index < want);
            let i = if i < clips.len() { i } else { 0 };
            (i, clips[i].1)
        };
        let (fade_out, fade_in) = self.fades(rate);
        let frame = super::frame_len(rate);
        match self.every {
            Interject::EverySeconds(n) => {
                let every = ms_to_samples(n.saturating_mul(1000), rate);
                if every == 0 {
                    return slots;
                }
                // Room the music needs after the last announcement: its fade-in and a frame.
                let tail = fade_in + frame;
                let (mut interjected, mut resumed_at) = (0usize, 0usize);
                for k in 1.. {
                    let Some(pass_time) = every.checked_mul(k) else {
                        break;
                    };
                    let Some(at) = pass_time.checked_sub(interjected) else {
                        continue;
                    };
                    if at + tail > music_len {
                        break;
                    }
                    let before = if slots.is_empty() {
                        fade_out
                    } else {
                        fade_in + fade_out
                    };
                    if at < resumed_at + before {
                        continue;
                    }
                    let (clip, len) = clip_for(slots.len());
                    slots.push(Slot {
                        at: PauseAt::Sample(at),
                        clip,
                    });
                    interjected += len;
                    resumed_at = at;
                }
            }
            Interject::EveryTracks(k) => {
                let k = k.max(1) as usize;
                let tracks = track_starts.len();
                let mut after = k;
                while after <= tracks {
                    let at = if after == tracks {
                        PauseAt::End
                    } else {
                        PauseAt::Track(after)
                    };
                    let (clip, _) = clip_for(slots.len());
                    slots.push(Slot { at, clip });
                    after += k;
                }
            }
        }
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    /// Upper tail of the chi-square distribution with `dof` degrees of freedom at `x`
    /// (Wilson–Hilferty: accurate to a few per cent in the tail for dof ≥ 3, enough to
    /// tell p = 0.001 from p = 0.5).
    fn chi_square_p(x: f64, dof: f64) -> f64 {
        let z =
            ((x / dof).powf(1.0 / 3.0) - (1.0 - 2.0 / (9.0 * dof))) / (2.0 / (9.0 * dof)).sqrt();
        0.5 * erfc(z / std::f64::consts::SQRT_2)
    }

    /// Complementary error function (Numerical Recipes' erfcc, fractional error < 1.2e-7).
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }

    fn chi_square(counts: &[u64], expected: f64) -> f64 {
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn chi_square_tail_is_right() {
        // Tabulated: chi2(0.001; 23) = 49.73, chi2(0.5; 23) = 22.34, chi2(0.001; 3) = 16.27.
        assert!((chi_square_p(49.73, 23.0) - 0.001).abs() < 0.0003);
        assert!((chi_square_p(22.34, 23.0) - 0.5).abs() < 0.02);
        assert!((chi_square_p(16.27, 3.0) - 0.001).abs() < 0.0004);
    }

    /// 1,000 passes chained as a channel plays them: each pass plays every track exactly
    /// once, no track twice in a row across a pass boundary.
    #[test]
    fn every_pass_plays_each_track_once_and_never_repeats_across_the_boundary() {
        let mut rng = StdRng::seed_from_u64(13);
        for n in [2usize, 3, 5, 12] {
            let mut last = None;
            for pass in 0..1_000 {
                let order = shuffle_order(n, last, &mut rng);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n {n} pass {pass}");
                assert_ne!(
                    Some(order[0]),
                    last,
                    "n {n} pass {pass}: repeat at the boundary"
                );
                last = order.last().copied();
            }
        }
        // Degenerate sizes.
        assert_eq!(shuffle_order(0, None, &mut rng), Vec::<usize>::new());
        assert_eq!(shuffle_order(1, Some(0), &mut rng), vec![0]);
    }

    /// For n = 4 over chained passes: the first track is uniform over the 3 allowed, and the
    /// whole order is uniform over the 18 allowed (chi-square, p > 0.001 with a fixed seed);
    /// unchained, uniform over all 24.
    #[test]
    fn shuffled_orders_are_uniform() {
        let mut rng = StdRng::seed_from_u64(2026);
        let passes = 60_000u64;
        let mut whole: HashMap<Vec<usize>, u64> = HashMap::new();
        let mut first = [0u64; 4];
        for _ in 0..passes {
            // A previous pass ending with track 2, every time: the allowed orders are fixed.
            let order = shuffle_order(4, Some(2), &mut rng);
            first[order[0]] += 1;
            *whole.entry(order).or_default() += 1;
        }
        assert_eq!(first[2], 0);
        let allowed: Vec<u64> = [0, 1, 3].iter().map(|&i| first[i]).collect();
        let x = chi_square(&allowed, passes as f64 / 3.0);
        // Two degrees of freedom: the tail is exactly e^(-x/2).
        let p = (-x / 2.0).exp();
        assert!(p > 0.001, "first track: chi2 {x:.1}, p {p}");
        assert_eq!(whole.len(), 18, "every allowed order occurs");
        let counts: Vec<u64> = whole.values().copied().collect();
        let x = chi_square(&counts, passes as f64 / 18.0);
        let p = chi_square_p(x, 17.0);
        assert!(p > 0.001, "whole orders: chi2 {x:.1}, p {p}");

        let mut free: HashMap<Vec<usize>, u64> = HashMap::new();
        for _ in 0..passes {
            *free.entry(shuffle_order(4, None, &mut rng)).or_default() += 1;
        }
        assert_eq!(free.len(), 24);
        let counts: Vec<u64> = free.values().copied().collect();
        let x = chi_square(&counts, passes as f64 / 24.0);
        let p = chi_square_p(x, 23.0);
        assert!(p > 0.001, "unchained: chi2 {x:.1}, p {p}");
    }

    /// The same seed gives the same passes (tests and reproducible bug reports).
    #[test]
    fn a_seed_fixes_the_orders() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| shuffle_order(6, Some(1), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_rotation_continues_into_the_next_pass() {
        let plan = AnnouncementPlan {
            clips: vec!["a".into(), "b".into(), "c".into()],
            every: Interject::EveryTracks(2),
            loudness_lufs: -15.0,
            fade_out_ms: 500,
            fade_in_ms: 500,
            first_clip: 2,
        };
        assert_eq!(plan.next_first_clip(0), 2);
        assert_eq!(plan.next_first_clip(2), 1);
        assert_eq!(plan.next_first_clip(7), 0);
    }
}
