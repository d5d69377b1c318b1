//! The line-out's music, one track at a time: the [`Decoder`] prepares the next track at the
//! sound card's rate and joins it to the previous one; the [`Feeder`] turns the joined pieces
//! into an endless stream of samples.
//!
//! Why not play a pre-rendered loop, as the RTP side does? At 48 kHz a 30-minute playlist is
//! 170 MB of 16-bit PCM (twice that while it is rendered), and the whole playlist would have to
//! be decoded before the first sound. Track by track, memory is a few tracks, the first sound
//! needs one track, and a playlist change naturally takes effect at a track boundary.
//!
//! The joins are the channel render's ([`crate::channel`]): each track is decoded, resampled,
//! normalised and trimmed by [`channel::prepare_track`], and neighbouring tracks overlap by an
//! equal-power crossfade of [`channel::CROSSFADE_MS`] (less for very short tracks). A [`Unit`]
//! is one track as it is played: the crossfade from the previous track's tail into its head,
//! then its body; its own tail is kept back for the next join. Played one after another, the
//! units are sample for sample the loop [`channel::ChannelRender::render_at`] makes, but for
//! the very first join (there is no previous track to fade from).
//!
//! A first unit can come in two pieces, so that the line-out does not wait for a whole track
//! before its first sound: when the first track is in the render cache, the decoder makes the
//! unit from the entry's first seconds alone ([`RenderCache::load_track_head`], half a
//! megabyte), and the rest of the track, loaded while those play, is the next unit. The two
//! pieces are sample for sample the unit the whole track makes (see [`HEAD_MARGIN_MS`]).
//!
//! Both types are plain state machines: no threads, no clock; the line-out thread and the
//! decoder thread in `mod.rs` drive them, and the tests drive them directly.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audio;
use crate::channel::cache::RenderCache;
use crate::channel::{self, MusicSource, TrackError, programme};

/// How many joined units the decoder remembers (their tails), so that it can still build a
/// replacement for the unit after one the feeder is playing when the playlist changes.
const HISTORY: usize = 4;

/// How much of a cached head is held back from the first piece of a first unit. The unit is
/// limited as a whole ([`audio::limit`]); the limiter's gain at a sample depends only on the
/// samples before it and up to twice its 5 ms look-ahead after it, so the head limited on its
/// own is the whole unit's, sample for sample, except in its last 10 ms. 50 ms keeps well
/// clear of that, and of the 15 ms tail a unit leaves for the next join.
const HEAD_MARGIN_MS: usize = 50;

/// One track, ready to play: the crossfade from the previous track into this one, then the
/// rest of this track up to its own tail (which the next unit starts with).
#[derive(Debug, Clone)]
pub struct Unit {
    /// Unique, increasing.
    pub seq: u64,
    /// The unit this one plays after (whose tail it fades out); `None` for a first unit.
    pub follows: Option<u64>,
    /// Sample rate of `samples`.
    pub rate: u32,
    /// The track's name, for logs and status.
    pub name: String,
    /// Mono samples.
    pub samples: Arc<Vec<f32>>,
}

/// Nothing in the playlist could be played.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMusic(pub String);

/// Why the rest of a first track, started from its cached head, cannot follow it.
#[derive(Debug, thiserror::Error)]
enum RestLost {
    #[error(transparent)]
    Track(#[from] TrackError),
    #[error("{}: shorter than its cached head (changed meanwhile?)", .0.display())]
    ShorterThanHead(PathBuf),
}

/// What the decoder remembers of a unit it made.
struct Made {
    seq: u64,
    generation: u64,
    index: usize,
    tail: Vec<f32>,
    /// This unit was the first piece of a track: the next unit is that track's rest.
    rest: Option<Rest>,
}

/// The rest of a track whose first piece was played from its cached head. It is the rest of
/// the track as it was when the piece was made, whatever changed since (a playlist change
/// waits for the track boundary, as always).
#[derive(Clone)]
struct Rest {
    path: PathBuf,
    name: String,
    lufs: f64,
    /// Samples of the track's unit already played by the first piece.
    skip: usize,
}

/// The playlist as the decoder plays it.
enum Playlist {
    Demo,
    Files(Vec<PathBuf>),
}

/// Prepares tracks in playlist order and joins each to the one before it.
pub struct Decoder {
    rate: u32,
    lufs: f64,
    playlist: Playlist,
    /// Bumped by every playlist or rate change; a unit made under an older generation is
    /// followed by the new playlist's first track.
    generation: u64,
    next_seq: u64,
    made: VecDeque<Made>,
    /// The demo melody at `rate` and `lufs`: synthesised once, it is the same every pass.
    demo: Option<Arc<Vec<f32>>>,
    /// Prepared tracks kept between runs; `None` prepares every track from its file.
    cache: Option<RenderCache>,
}

impl Decoder {
    pub fn new(rate: u32, music: &MusicSource, lufs: f64) -> Decoder {
        let mut d = Decoder {
            rate,
            lufs,
            playlist: Playlist::Demo,
            generation: 0,
            next_seq: 1,
            made: VecDeque::new(),
            demo: None,
            cache: None,
        };
        d.set_music(music, lufs);
        d
    }

    /// Tracks come from `cache` when it has them, and are stored there when it has not.
    pub fn with_cache(mut self, cache: RenderCache) -> Decoder {
        self.cache = Some(cache);
        self
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// A new playlist: the unit after the one playing now starts it from the top.
    pub fn set_music(&mut self, music: &MusicSource, lufs: f64) {
        self.playlist = match music {
            MusicSource::Demo => Playlist::Demo,
            MusicSource::Files(paths) => Playlist::Files(
                paths
                    .iter()
                    .flat_map(|p| channel::expand_music_path(p))
                    .collect(),
            ),
        };
        if lufs != self.lufs {
            self.demo = None;
        }
        self.lufs = lufs;
        self.generation += 1;
    }

    /// The device was reopened at another rate: everything made so far is useless.
    pub fn set_rate(&mut self, rate: u32) {
        if rate != self.rate {
            self.rate = rate;
            self.made.clear();
            self.demo = None;
            self.generation += 1;
        }
    }

    /// The unit to play after unit `after` (`None`: a first unit, faded in from silence by the
    /// feeder). Tracks that fail are logged and skipped; `NoMusic` when none of them plays.
    pub fn next_unit(&mut self, after: Option<u64>) -> Result<Unit, NoMusic> {
        let prev = after.and_then(|s| self.made.iter().find(|m| m.seq == s));
        if let Some(m) = prev
            && let Some(rest) = m.rest.clone()
        {
            let (generation, index) = (m.generation, m.index);
            match self.rest_unit(after, rest, generation, index) {
                Ok(unit) => return Ok(unit),
                Err(e) => {
                    // The entry went bad and the file cannot be read since the head was:
                    // go on with the next track.
                    tracing::warn!(error = %e, "line-out: the rest of the first track is lost");
                }
            }
        }
        let prev = after.and_then(|s| self.made.iter().find(|m| m.seq == s));
        let start = match prev {
            Some(m) if m.generation == self.generation => m.index + 1,
            _ => 0,
        };
        let prev_tail = prev.map(|m| m.tail.clone()).unwrap_or_default();
        let len = match &self.playlist {
            Playlist::Demo => 1,
            Playlist::Files(f) => f.len(),
        };
        if len == 0 {
            return Err(NoMusic("no music files (an empty folder?)".to_owned()));
        }
        let mut last_error = String::new();
        for i in 0..len {
            let index = (start + i) % len;
            if after.is_none()
                && let Some(unit) = self.head_unit(index)
            {
                return Ok(unit);
            }
            let Track {
                name,
                samples: track,
                seamless,
            } = match self.track(index) {
                Ok(t) => t,
                Err((name, e)) => {
                    tracing::warn!(file = %name, error = %e, "line-out: skipping track");
                    last_error = format!("{name}: {e}");
                    continue;
                }
            };
            let (samples, tail) = join(&prev_tail, &track, seamless, self.rate);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.made.push_back(Made {
                seq,
                generation: self.generation,
                index,
                tail,
                rest: None,
            });
            while self.made.len() > HISTORY {
                self.made.pop_front();
            }
            return Ok(Unit {
                seq,
                follows: after,
                rate: self.rate,
                name,
                samples: Arc::new(samples),
            });
        }
        Err(NoMusic(if len == 1 {
            last_error
        } else {
            format!("all {len} tracks failed; last: {last_error}")
        }))
    }

    /// The first piece of a first unit from track `index`'s cached head, when the cache has
    /// the track and it is long enough to be worth two pieces (a short one loads at once).
    fn head_unit(&mut self, index: usize) -> Option<Unit> {
        let Playlist::Files(files) = &self.playlist else {
            return None;
        };
        let path = files.get(index)?;
        let head = self
            .cache
            .as_ref()?
            .load_track_head(path, self.lufs, self.rate)?;
        // The rest at least as long as the piece, so it is no harder to have it in time than
        // any other track.
        let margin = head_margin(self.rate);
        if head.total < 2 * head.samples.len() || head.samples.len() <= 2 * margin {
            return None;
        }
        let samples = first_piece(head.samples, self.rate);
        let name = track_name(path);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.made.push_back(Made {
            seq,
            generation: self.generation,
            index,
            tail: Vec::new(),
            rest: Some(Rest {
                path: path.clone(),
                name: name.clone(),
                lufs: self.lufs,
                skip: samples.len(),
            }),
        });
        while self.made.len() > HISTORY {
            self.made.pop_front();
        }
        tracing::debug!(track = %name, seconds = samples.len() as f64 / f64::from(self.rate), "line-out: first unit from the cached head");
        Some(Unit {
            seq,
            follows: None,
            rate: self.rate,
            name,
            samples: Arc::new(samples),
        })
    }

    /// The unit after a first piece: the whole track joined as a first unit, less the piece.
    fn rest_unit(
        &mut self,
        after: Option<u64>,
        rest: Rest,
        generation: u64,
        index: usize,
    ) -> Result<Unit, RestLost> {
        let track = self.prepare(&rest.path, rest.lufs)?;
        let (mut samples, tail) = join(&[], &track, false, self.rate);
        drop(track);
        if samples.len() <= rest.skip {
            return Err(RestLost::ShorterThanHead(rest.path));
        }
        samples.drain(..rest.skip);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.made.push_back(Made {
            seq,
            generation,
            index,
            tail,
            rest: None,
        });
        while self.made.len() > HISTORY {
            self.made.pop_front();
        }
        Ok(Unit {
            seq,
            follows: after,
            rate: self.rate,
            name: rest.name,
            samples: Arc::new(samples),
        })
    }

    /// One file prepared at the decoder's rate, through the cache if there is one.
    fn prepare(&self, path: &Path, lufs: f64) -> Result<Vec<f32>, TrackError> {
        programme::obtain_track(path, lufs, self.rate, self.cache.as_ref())
    }

    /// Track `index` prepared at the decoder's rate; the error names the file.
    fn track(&mut self, index: usize) -> Result<Track, (String, String)> {
        match &self.playlist {
            Playlist::Demo => {
                let demo = match &self.demo {
                    Some(d) => d.clone(),
                    None => {
                        let d = Arc::new(demo_loop(self.rate, self.lufs));
                        self.demo = Some(d.clone());
                        d
                    }
                };
                Ok(Track {
                    name: "demo melody".to_owned(),
                    samples: demo,
                    seamless: true,
                })
            }
            Playlist::Files(files) => {
                let Some(path) = files.get(index) else {
                    return Err((String::new(), "no such track".to_owned()));
                };
                let name = track_name(path);
                self.prepare(path, self.lufs)
                    .map(|s| Track {
                        name,
                        samples: Arc::new(s),
                        seamless: false,
                    })
                    .map_err(|e| (path.display().to_string(), e.to_string()))
            }
        }
    }
}

fn head_margin(rate: u32) -> usize {
    HEAD_MARGIN_MS * rate as usize / 1000
}

/// The first piece of a first unit from the start of its track (longer than the margin): the
/// unit's first samples, as [`join`] makes them from the whole track.
fn first_piece(mut head: Vec<f32>, rate: u32) -> Vec<f32> {
    audio::limit(&mut head, rate);
    head.truncate(head.len().saturating_sub(head_margin(rate)));
    head
}

fn track_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// One track, decoded and normalised.
struct Track {
    name: String,
    samples: Arc<Vec<f32>>,
    /// The demo melody, periodic by construction, joins itself without a crossfade, as in
    /// the channel render.
    seamless: bool,
}

/// The demo melody as the channel render makes it (normalised, limited as a loop).
fn demo_loop(rate: u32, lufs: f64) -> Vec<f32> {
    let mut m = audio::demo_melody(rate);
    audio::normalise(&mut m, rate, lufs);
    audio::limit_circular(&mut m, rate);
    m
}

/// Joins `track` to the previous track's `prev_tail`: returns the unit's samples and this
/// track's own tail. The arithmetic is `channel::assemble`'s, so the result is the same loop.
fn join(prev_tail: &[f32], track: &[f32], seamless: bool, rate: u32) -> (Vec<f32>, Vec<f32>) {
    let len = track.len();
    let xf = channel::crossfade_len(rate);
    let tail_len = if seamless { 0 } else { xf.min(len / 2) };
    // The previous tail was cut before this track's length was known: a track too short for
    // the whole crossfade takes less, and the rest of the tail plays unfaded before it.
    let overlap = prev_tail.len().min(len / 2);
    let plain = prev_tail.len() - overlap;
    let mut out = Vec::with_capacity(plain + len - tail_len);
    out.extend_from_slice(&prev_tail[..plain]);
    for j in 0..overlap {
        out.push(
            prev_tail[plain + j] * channel::equal_power_in(overlap - 1 - j, overlap)
                + track[j] * channel::equal_power_in(j, overlap),
        );
    }
    out.extend_from_slice(&track[overlap..len - tail_len]);
    // Two loud passages crossfaded can add up past the ceiling, as in the channel render.
    audio::limit(&mut out, rate);
    (out, track[len - tail_len..].to_vec())
}

/// Turns units into a continuous stream of mono samples.
///
/// It plays the current unit, then the next one if the decoder has delivered it in time. If
/// not (decoding slower than playing, or nothing playable), it fades out over the last
/// crossfade length, plays silence, and fades the next unit in when it comes, so starving
/// never clicks.
pub struct Feeder {
    rate: u32,
    xf: usize,
    current: Option<Unit>,
    pos: usize,
    next: Option<Unit>,
    /// The `after` of the last request handed out, so each is asked once.
    requested: Option<Option<u64>>,
    /// Samples into a fade-in (after silence); `None` when not fading in.
    fade_in: Option<usize>,
    /// Playing silence for lack of music.
    silent: bool,
    /// The current unit's end is being faded out (no next unit was there when it began); the
    /// fade goes on to the end even if the next unit comes meanwhile, which is then faded in.
    fading_out: bool,
}

impl Feeder {
    pub fn new(rate: u32) -> Feeder {
        Feeder {
            rate,
            xf: channel::crossfade_len(rate).max(1),
            current: None,
            pos: 0,
            next: None,
            requested: None,
            fade_in: None,
            silent: true,
            fading_out: false,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The request to send to the decoder, once: the unit after the current one.
    pub fn request(&mut self) -> Option<Option<u64>> {
        if self.next.is_some() {
            return None;
        }
        let after = self.current.as_ref().map(|u| u.seq);
        if self.requested == Some(after) {
            return None;
        }
        self.requested = Some(after);
        Some(after)
    }

    /// Takes a unit from the decoder if it still fits: it must follow the unit playing now
    /// (or be a first unit while nothing plays). A later unit for the same place replaces an
    /// earlier one: that is how a playlist change reaches the next track boundary.
    pub fn offer(&mut self, unit: Unit) -> bool {
        if unit.rate != self.rate {
            return false;
        }
        let fits = unit.follows == self.current.as_ref().map(|u| u.seq);
        if fits {
            self.next = Some(unit);
        }
        fits
    }

    /// Samples of music ready to play without the decoder: the rest of the current unit and
    /// the next one.
    pub fn ready(&self) -> usize {
        let cur = self
            .current
            .as_ref()
            .map_or(0, |u| u.samples.len().saturating_sub(self.pos));
        cur + self.next.as_ref().map_or(0, |u| u.samples.len())
    }

    /// Of [`Feeder::ready`], the samples that play as they are: all of them once the next unit
    /// is there, else the current unit but for its last crossfade length, which would be faded
    /// out in case the next unit comes too late.
    pub fn ready_unfaded(&self) -> usize {
        if self.next.is_some() || self.fading_out {
            return self.ready();
        }
        self.current.as_ref().map_or(0, |u| {
            u.samples
                .len()
                .saturating_sub(self.pos)
                .saturating_sub(self.xf)
        })
    }

    /// The track playing now.
    pub fn track(&self) -> Option<&str> {
        self.current.as_ref().map(|u| u.name.as_str())
    }

    /// True while the feeder plays silence for lack of music.
    #[cfg(test)]
    fn is_silent(&self) -> bool {
        self.silent
    }

    /// Fills `out` with the next mono samples. Returns how many of them were music.
    pub fn fill(&mut self, out: &mut [f32]) -> usize {
        let mut music = 0;
        let mut i = 0;
        while i < out.len() {
            let remaining = self
                .current
                .as_ref()
                .map_or(0, |u| u.samples.len().saturating_sub(self.pos));
            if remaining == 0 {
                match self.next.take() {
                    Some(u) => {
                        if self.silent || self.fading_out {
                            self.fade_in = Some(0);
                        }
                        self.silent = false;
                        self.fading_out = false;
                        self.current = Some(u);
                        self.pos = 0;
                        continue;
                    }
                    None => {
                        self.silent = true;
                        self.fade_in = None;
                        out[i..].fill(0.0);
                        return music;
                    }
                }
            }
            let Some(cur) = self.current.as_ref() else {
                break;
            };
            let n = remaining.min(out.len() - i);
            let src = &cur.samples[self.pos..self.pos + n];
            // No next unit yet: fade out over the last crossfade length, in case it does not
            // come in time. If it does, the dip is 15 ms long.
            let fade_out_from = cur.samples.len().saturating_sub(self.xf);
            if self.next.is_none() && self.pos + n > fade_out_from {
                self.fading_out = true;
            }
            let fading_out = self.fading_out;
            for (k, (o, &s)) in out[i..i + n].iter_mut().zip(src).enumerate() {
                let p = self.pos + k;
                let mut v = s;
                if let Some(f) = self.fade_in.as_mut() {
                    v *= channel::equal_power_in(*f, self.xf);
                    *f += 1;
                    if *f >= self.xf {
                        self.fade_in = None;
                    }
                }
                if fading_out && p >= fade_out_from {
                    v *= channel::equal_power_in(cur.samples.len() - 1 - p, self.xf);
                }
                *o = v;
            }
            self.pos += n;
            i += n;
            music += n;
        }
        music
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{goertzel_amp, sine, write_wav};
    use crate::channel::ChannelRender;

    /// Runs decoder and feeder together, synchronously, for `n` samples.
    fn play(dec: &mut Decoder, feeder: &mut Feeder, n: usize, out: &mut Vec<f32>) {
        let mut buf = vec![0f32; 441];
        while out.len() < n {
            if let Some(after) = feeder.request() {
                let unit = dec.next_unit(after).unwrap();
                assert!(feeder.offer(unit));
            }
            let k = buf.len().min(n - out.len());
            feeder.fill(&mut buf[..k]);
            out.extend_from_slice(&buf[..k]);
        }
    }

    fn max_step(x: &[f32]) -> f32 {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    /// Three tracks with silence around them, at a rate that is not 8 kHz: played track by
    /// track they are, sample for sample, the loop the channel render makes at that rate
    /// (from the second pass on; the first track of the first pass is faded in instead of
    /// crossfaded from the last).
    #[test]
    fn units_played_in_turn_are_the_channel_loop() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 16_000;
        let mut files = Vec::new();
        for (i, (f, secs)) in [(330.0, 0.7), (440.0, 0.5), (550.0, 0.9)]
            .into_iter()
            .enumerate()
        {
            let mut x = vec![0.0; 2000];
            x.extend(sine(f, 22_050, (secs * 22_050.0) as usize, 0.3));
            x.extend(vec![0.0; 3000]);
            let p = dir.path().join(format!("{i}.wav"));
            write_wav(&p, 22_050, &x);
            files.push(p);
        }
        let music = MusicSource::Files(files);
        let render = ChannelRender::render_at("t", &music, -18.0, rate);
        assert_eq!(render.rate, rate);
        assert_eq!(render.tracks.len(), 3);
        let lp: Vec<f32> = render.pcm.iter().map(|&s| f32::from(s) / 32767.0).collect();

        let mut dec = Decoder::new(rate, &music, -18.0);
        let mut feeder = Feeder::new(rate);
        let mut out = Vec::new();
        play(&mut dec, &mut feeder, 3 * lp.len(), &mut out);
        // The first unit starts at the first track's head, which is loop sample 0: after one
        // loop length the stream is the loop again, from its start.
        let second = &out[lp.len()..2 * lp.len()];
        let worst = second
            .iter()
            .zip(&lp)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1.0 / 32767.0, "differs by {worst}");
        // And the very start is faded in, not switched on.
        assert!(out[0].abs() < 0.01 && max_step(&out[..400]) <= max_step(second) * 1.01);
    }

    /// A playlist change while a track plays: the rest of that track plays, then the new
    /// playlist starts at the boundary, joined by the usual crossfade (no click, no gap).
    #[test]
    fn playlist_change_takes_effect_at_the_next_track_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 8000;
        let mk = |name: &str, f: f64, secs: f64| {
            let p = dir.path().join(name);
            write_wav(&p, rate, &sine(f, rate, (secs * 8000.0) as usize, 0.3));
            p
        };
        let a1 = mk("a1.wav", 300.0, 1.0);
        let a2 = mk("a2.wav", 500.0, 1.0);
        let b1 = mk("b1.wav", 700.0, 1.0);
        let mut dec = Decoder::new(rate, &MusicSource::Files(vec![a1, a2]), -18.0);
        let mut feeder = Feeder::new(rate);
        let mut out = Vec::new();
        // Into a1, with a2 already prepared as the next unit.
        play(&mut dec, &mut feeder, 3000, &mut out);
        assert_eq!(feeder.track(), Some("a1.wav"));
        let playing = feeder.current.as_ref().unwrap().seq;
        dec.set_music(&MusicSource::Files(vec![b1]), -18.0);
        // The line-out thread rebuilds the unit after the playing one.
        let replacement = dec.next_unit(Some(playing)).unwrap();
        assert_eq!(replacement.name, "b1.wav");
        assert!(feeder.offer(replacement));
        play(&mut dec, &mut feeder, 16_000, &mut out);

        // a1 plays to its end (8000 samples minus its 15 ms tail), then b1.
        let xf = channel::crossfade_len(rate);
        let boundary = 8000 - xf;
        let tone = |x: &[f32], f: f64| goertzel_amp(x, rate, f);
        let before = &out[boundary - 2000..boundary];
        let after = &out[boundary + xf..boundary + xf + 2000];
        assert!(tone(before, 300.0) > 0.1, "a1 cut short");
        assert!(tone(after, 700.0) > 0.1, "b1 does not follow a1");
        assert!(tone(after, 500.0) < 0.01, "a2 still played");
        assert!(out.iter().all(|s| s.is_finite()));
        // No click: the join is about as steep as the tones themselves (the two tones summed
        // mid-fade add a little); a cut between them would step by up to twice the amplitude.
        let join = max_step(&out[boundary - 100..boundary + xf + 100]);
        let music = max_step(&out[boundary + xf..boundary + xf + 2000]);
        assert!(join <= music * 1.3, "join step {join} vs {music}");
        // A stale unit (following a unit no longer playing) is refused.
        let stale = dec.next_unit(Some(playing)).unwrap();
        assert!(!feeder.offer(stale));
    }

    /// The decoder late: the feeder fades out, plays silence, and fades the next unit in.
    #[test]
    fn starving_fades_instead_of_clicking() {
        let rate = 8000;
        let mut feeder = Feeder::new(rate);
        let ones = |seq, follows| Unit {
            seq,
            follows,
            rate,
            name: "x".into(),
            samples: Arc::new(vec![0.5; 1000]),
        };
        assert_eq!(feeder.request(), Some(None));
        assert_eq!(feeder.request(), None, "asked twice");
        let mut out = vec![0f32; 1500];
        assert_eq!(feeder.fill(&mut out), 0);
        assert!(feeder.is_silent());
        assert!(feeder.offer(ones(1, None)));
        assert_eq!(feeder.fill(&mut out), 1000);
        assert!(out[0] < 0.05, "not faded in");
        assert!(out[1000 - 1] < 0.05, "not faded out");
        assert_eq!(out[500], 0.5);
        assert!(out[1000..].iter().all(|&s| s == 0.0));
        assert!(max_step(&out) < 0.1);
        assert!(!feeder.offer(ones(3, Some(2))), "does not follow unit 1");
        // The next unit comes in the middle of a fade-out: the fade goes on, then it fades in.
        assert!(feeder.offer(ones(2, Some(1))));
        let mut out = vec![0f32; 950];
        feeder.fill(&mut out);
        assert!(feeder.offer(ones(3, Some(2))));
        let mut out = vec![0f32; 1000];
        feeder.fill(&mut out[..20]);
        feeder.offer(ones(4, Some(3)));
        feeder.fill(&mut out[20..]);
        assert!(max_step(&out) < 0.1, "{}", max_step(&out));
        assert!(out[49] < 0.05 && out[50] < 0.05, "{} {}", out[49], out[50]);
        assert!(!feeder.offer(Unit {
            rate: 16_000,
            ..ones(2, Some(1))
        }));
    }

    #[test]
    fn bad_tracks_are_skipped_and_nothing_playable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.wav");
        write_wav(&good, 8000, &sine(440.0, 8000, 8000, 0.3));
        let bad = dir.path().join("bad.mp3");
        std::fs::write(&bad, b"not audio at all").unwrap();
        let mut dec = Decoder::new(8000, &MusicSource::Files(vec![bad.clone(), good]), -18.0);
        let u1 = dec.next_unit(None).unwrap();
        assert_eq!(u1.name, "good.wav");
        let u2 = dec.next_unit(Some(u1.seq)).unwrap();
        assert_eq!(u2.name, "good.wav", "the bad file is skipped every pass");
        dec.set_music(&MusicSource::Files(vec![bad]), -18.0);
        let e = dec.next_unit(Some(u2.seq)).unwrap_err();
        assert!(e.0.contains("bad.mp3"), "{e:?}");
        // A folder is expanded into its audio files.
        let mut dec = Decoder::new(8000, &MusicSource::Files(vec![dir.path().into()]), -18.0);
        assert_eq!(dec.next_unit(None).unwrap().name, "good.wav");
    }

    /// With a cache, the first run stores each track and a second decoder (a restart) plays
    /// the same units from it, within 16-bit rounding of a decoder without one.
    #[test]
    fn units_from_the_cache_are_the_decoded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 48_000;
        let mut files = Vec::new();
        for (i, f) in [330.0, 550.0].into_iter().enumerate() {
            let p = dir.path().join(format!("{i}.wav"));
            write_wav(&p, 22_050, &sine(f, 22_050, 15_000, 0.3));
            files.push(p);
        }
        let music = MusicSource::Files(files);
        let cache_dir = dir.path().join("cache");
        let units = |dec: &mut Decoder| {
            let a = dec.next_unit(None).unwrap();
            let b = dec.next_unit(Some(a.seq)).unwrap();
            let c = dec.next_unit(Some(b.seq)).unwrap();
            [a, b, c]
        };
        let plain = units(&mut Decoder::new(rate, &music, -18.0));
        let cache = RenderCache::with_limits(cache_dir.clone(), u64::MAX, 0);
        let first = units(&mut Decoder::new(rate, &music, -18.0).with_cache(cache));
        let stored = std::fs::read_dir(&cache_dir).unwrap().count();
        assert_eq!(stored, 2, "one entry per track");
        let cache = RenderCache::with_limits(cache_dir.clone(), u64::MAX, 0);
        let again = units(&mut Decoder::new(rate, &music, -18.0).with_cache(cache));
        assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), stored);
        for ((p, f), a) in plain.iter().zip(&first).zip(&again) {
            assert_eq!(p.name, a.name);
            assert_eq!(f.samples, a.samples, "a hit differs from the miss");
            assert_eq!(p.samples.len(), a.samples.len());
            let worst = p
                .samples
                .iter()
                .zip(a.samples.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(worst <= 1.0 / 32767.0, "{worst}");
        }
    }

    /// The limiter at the cut: whatever peaks come after a head, limiting the head alone gives
    /// the whole unit's samples up to the margin, while the naive cut (the whole head) differs
    /// near its end, so the margin is needed and is enough.
    #[test]
    fn the_first_piece_is_the_start_of_the_whole_unit_whatever_the_peaks_after_it() {
        let rate = 48_000;
        let head_len = 60_000;
        let margin = head_margin(rate);
        let base: Vec<f32> = sine(440.0, rate, 3 * head_len, 0.8)
            .iter()
            .zip(sine(97.0, rate, 3 * head_len, 0.3))
            .map(|(a, b)| a + b)
            .collect();
        let mut naive_differs = false;
        for peak_at in [
            0,
            1,
            100,
            239,
            240,
            481,
            1000,
            margin - 1,
            margin,
            5 * margin,
        ] {
            let mut x = base.clone();
            // A loud burst right after the cut, and one well before it.
            for (k, s) in x[head_len + peak_at..].iter_mut().take(200).enumerate() {
                *s = if k % 2 == 0 { 1.8 } else { -1.8 };
            }
            x[head_len / 2] = 1.5;
            let piece = first_piece(x[..head_len].to_vec(), rate);
            let mut whole = x.clone();
            audio::limit(&mut whole, rate);
            assert_eq!(piece.len(), head_len - margin);
            assert!(
                piece[..] == whole[..piece.len()],
                "peak {peak_at} after the cut"
            );
            let mut naive = x[..head_len].to_vec();
            audio::limit(&mut naive, rate);
            naive_differs |= naive[..] != whole[..head_len];
        }
        assert!(naive_differs, "the test cannot tell a cut without a margin");
    }

    /// A restart with the first track in the cache: the first unit is the start of the
    /// track's cached head and the next is the rest of the track; played in turn they are,
    /// sample for sample, what the whole track as one unit plays (no gap, no fade, no click at
    /// the cut), and the track after follows with the same crossfade. The track is loud, so
    /// that the limiter works on the unit, up to and across the cut.
    #[test]
    fn a_first_unit_from_the_cached_head_and_the_rest_are_the_whole_track() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 8000;
        // 64 s, long enough to start from its head (30 s at 8 kHz), then a short one.
        let a = dir.path().join("a.wav");
        let mut x = Vec::new();
        for (i, f) in [300.0, 450.0, 375.0, 600.0]
            .iter()
            .cycle()
            .take(32)
            .enumerate()
        {
            let amp = if i % 3 == 0 { 0.9 } else { 0.5 };
            x.extend(sine(*f, rate, 2 * rate as usize, amp));
        }
        write_wav(&a, rate, &x);
        let b = dir.path().join("b.wav");
        write_wav(&b, rate, &sine(800.0, rate, 2 * rate as usize, 0.3));
        let music = MusicSource::Files(vec![a.clone(), b]);
        let lufs = -4.0;
        let cache = || RenderCache::with_limits(dir.path().join("cache"), u64::MAX, 0);

        // The first run fills the cache and plays the first track as one unit.
        let mut cold = Decoder::new(rate, &music, lufs).with_cache(cache());
        let whole = cold.next_unit(None).unwrap();
        let whole_next = cold.next_unit(Some(whole.seq)).unwrap();
        let track = cache().prepare_track(&a, lufs, rate).unwrap();
        assert!(
            whole.samples.iter().zip(&track).any(|(u, t)| u != t),
            "the limiter did nothing: the test proves less than it says"
        );

        let mut warm = Decoder::new(rate, &music, lufs).with_cache(cache());
        let head = warm.next_unit(None).unwrap();
        assert_eq!((head.follows, head.name.as_str()), (None, "a.wav"));
        assert!(head.samples.len() * 2 < whole.samples.len(), "not a piece");
        let rest = warm.next_unit(Some(head.seq)).unwrap();
        assert_eq!(
            (rest.follows, rest.name.as_str()),
            (Some(head.seq), "a.wav")
        );
        let cut = head.samples.len();
        let limited_near_cut = (cut - 400..cut + 400).any(|i| whole.samples[i] != track[i]);
        assert!(limited_near_cut, "the limiter did nothing at the cut");
        assert!(head.samples[..] == whole.samples[..cut], "the head differs");
        assert!(rest.samples[..] == whole.samples[cut..], "the rest differs");
        let next = warm.next_unit(Some(rest.seq)).unwrap();
        assert_eq!(next.name, "b.wav");
        assert!(
            next.samples == whole_next.samples,
            "the join into b differs"
        );

        // Through the feeder too: the same stream, faded in the same, nothing at the cut.
        let stream = |units: Vec<Unit>| {
            let mut feeder = Feeder::new(rate);
            let mut units = units.into_iter();
            let mut out = Vec::new();
            let mut buf = vec![0f32; 441];
            while out.len() < whole.samples.len() + rate as usize {
                if feeder.request().is_some()
                    && let Some(u) = units.next()
                {
                    assert!(feeder.offer(u));
                }
                feeder.fill(&mut buf);
                out.extend_from_slice(&buf);
            }
            out
        };
        let one = stream(vec![whole.clone(), whole_next]);
        let two = stream(vec![head, rest, next]);
        assert!(one == two, "the feeder plays them differently");
    }

    /// The demo melody loops on itself without a crossfade, like the channel render's.
    #[test]
    fn demo_loops_seamlessly_at_any_rate() {
        let rate = 44_100;
        let mut dec = Decoder::new(rate, &MusicSource::Demo, -18.0);
        let a = dec.next_unit(None).unwrap();
        let b = dec.next_unit(Some(a.seq)).unwrap();
        assert_eq!(
            a.samples.len(),
            audio::DEMO_SECONDS as usize * rate as usize
        );
        assert_eq!(a.samples, b.samples);
        let render = ChannelRender::render_at("demo", &MusicSource::Demo, -18.0, rate);
        assert_eq!(render.pcm.len(), a.samples.len());
        let worst = render
            .pcm
            .iter()
            .zip(a.samples.iter())
            .map(|(&p, &s)| (f32::from(p) / 32767.0 - s).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1.0 / 32767.0, "{worst}");
    }
}
