//! A channel's music, rendered once per rate into a seamless loop and pre-encoded per codec
//! ("render once, serve many").
//!
//! [`ChannelRender::render`] does all the heavy work once, off any real-time path: for each
//! track, decode → mono → resample to 8 kHz → normalise to the channel's loudness target →
//! trim leading and trailing near-silence; then the tracks are joined with short equal-power
//! crossfades, including one at the loop seam (last track → first), the loop is run through the
//! peak limiter as a loop, converted to i16 and encoded with every G.711 codec. The wideband
//! codecs are rendered the same way from the source files at their own rates and encoded in
//! [`encoded`]; [`ChannelRender::with_wideband`] adds them to an 8 kHz render.
//!
//! # Loop length
//!
//! Every loop served over RTP is a whole number of 20 ms frames at its rate (160 samples at
//! 8 kHz, 320 at 16 kHz, 960 at 48 kHz), so that Opus frames, G.722 packets and G.711 packets
//! all wrap on a frame boundary. The joins decide the length: the playlist's natural length is
//! cut to the frame grid by lengthening the seam crossfade (the last track's tail overlaps the
//! first track's head by up to one frame more than [`CROSSFADE_MS`]); only when the seam cannot
//! take it (its tracks are shorter than two crossfades) is the rest spread over the other
//! joins. Never a gap, never a hard cut. A wideband render is fitted to the 8 kHz render's
//! frame count, which can also shorten the seam crossfade by a few samples (never below half
//! of [`CROSSFADE_MS`]), so every codec of a channel has the same loop duration and a packet
//! for a media-clock tick is the same moment of music whatever the codec. The demo melody is
//! ten seconds, a whole number of frames at every rate. The line-out's reference loop
//! ([`ChannelRender::render_at`]) is not fitted: it is the track-by-track stream, joined as the
//! line-out joins.
//!
//! Serving a caller is then [`ChannelRender::fill_packet`]: a circular copy of ready bytes.
//!
//! A bad file never stops the music: it is skipped, logged and listed in
//! [`ChannelRender::skipped`]. With nothing playable the loop is one second of digital
//! silence, so RTP keeps flowing on its clock, and [`ChannelRender::playable`] is false.

pub mod cache;
pub mod compose;
pub mod encoded;
pub mod programme;
pub mod segment;
pub mod spec;
pub mod status;
pub mod store;

use crate::audio::{self, AudioError};
use crate::codec::{Codec, g711};
use compose::{Composition, PauseAt, PreparedClip, Slot};
use encoded::{CodecPlan, Wideband};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sample rate of the rendered loop (G.711).
pub const RATE: u32 = 8000;

/// Every RTP loop is a whole number of frames of this length (see the module's `# Loop length`).
pub const FRAME_MS: u32 = 20;

/// Samples in one [`FRAME_MS`] frame at `rate` (0 for a rate that has no whole frame).
pub fn frame_len(rate: u32) -> usize {
    (u64::from(rate) * u64::from(FRAME_MS) / 1000) as usize
}

/// How long a render's loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoopLength {
    /// As the joins make it (the line-out's reference loop).
    Natural,
    /// Cut to a whole number of frames (the 8 kHz render, which sets the channel's length).
    WholeFrames,
    /// Exactly this many frames when the joins allow it, else whole frames (a wideband render,
    /// fitted to the 8 kHz render).
    Frames(u64),
}

/// The loudness target used when a channel does not set one, in LUFS.
pub const DEFAULT_TARGET_LUFS: f64 = -18.0;

/// Length of each crossfade between tracks and at the loop seam: long enough that a join
/// never clicks, short enough not to blur the music. The line-out joins tracks the same way.
pub const CROSSFADE_MS: u32 = 15;

/// Below this (-60 dBFS after normalisation) a track's start or end counts as silence and is
/// trimmed, so joins have no gap.
const SILENCE_THRESHOLD: f32 = 0.001;

/// A track with less sound than this after trimming is refused: it would have to be repeated
/// hundreds of times to fill the minimum loop.
const MIN_TRACK_MS: u32 = 50;

/// The loop is at least this long (one second at the render's rate); shorter playlists are
/// repeated.
fn min_loop_samples(rate: u32) -> usize {
    rate as usize
}

/// Most tracks decoded at once. Each holds a decoded track in memory.
const MAX_WORKERS: usize = 4;

/// File extensions [`expand_music_path`] picks up from a folder.
const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "mp3", "ogg", "oga", "m4a", "m4b", "mp4", "aac", "alac", "aif", "aiff",
    "aifc", "mka",
];

/// Where a channel's music comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MusicSource {
    /// The built-in demo melody.
    Demo,
    /// A playlist of files, played in this order.
    Files(Vec<PathBuf>),
}

/// Why one file cannot be played. The message names the problem only; the caller adds the
/// file when it logs or shows it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The file cannot be read or decoded.
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("track is silent")]
    Silent,
    #[error("track is too short ({sound_ms} ms of sound, at least {min} ms needed)", min = MIN_TRACK_MS)]
    TooShort { sound_ms: u64 },
    /// A bug in our own processing, caught so one track cannot take the render down.
    #[error("internal error while rendering")]
    Internal,
}

/// What a [`TrackInfo`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackKind {
    /// A music track (or the demo melody) from its start.
    #[default]
    Music,
    /// The rest of a music track that an announcement interrupted.
    Resumed,
    /// An announcement, with the silence that pads it to whole frames.
    Announcement,
}

/// A track's place in the loop.
///
/// The track occupies samples `start_sample .. start_sample + len_samples` of the loop,
/// modulo the loop length (the last track wraps past the seam into the start). Neighbouring
/// tracks overlap by the crossfade length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// The file name (or "demo melody").
    pub name: String,
    /// First sample of the track in the loop.
    pub start_sample: u64,
    /// Length of the track after trimming, in samples at the render's rate.
    pub len_samples: u64,
    pub kind: TrackKind,
}

/// A file left out of the loop, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTrack {
    /// The file path as configured.
    pub name: String,
    /// What was wrong with it.
    pub error: String,
}

/// A channel's rendered loop, ready to serve.
pub struct ChannelRender {
    /// The channel name.
    pub name: String,
    /// Sample rate of `pcm`: [`RATE`] for the RTP render, the sound card's for the line-out.
    pub rate: u32,
    /// The loop, mono at `rate`, never empty, every sample within the limiter ceiling. Shared
    /// with the render that [`ChannelRender::with_wideband`] makes from this one.
    pub pcm: Arc<[i16]>,
    /// The loop encoded with each codec in `Codec::G711`, same length as `pcm` (8 kHz renders
    /// only; empty otherwise).
    encoded: Arc<[(Codec, Vec<u8>)]>,
    /// The wideband codecs' encodings of the same music (none until added).
    wideband: Wideband,
    /// Tracks in loop order (repeated entries if a short playlist was repeated).
    pub tracks: Vec<TrackInfo>,
    /// Files that could not be used.
    pub skipped: Vec<SkippedTrack>,
    /// False when nothing could be played and the loop is silence.
    pub playable: bool,
    /// Integrated loudness of the final loop.
    lufs: Option<f64>,
    /// Entry segments by their position in ticks, ascending ([`ChannelRender::with_entries`]).
    entries: Arc<[(u64, Arc<ChannelRender>)]>,
}

impl std::fmt::Debug for ChannelRender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRender")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("len_samples", &self.pcm.len())
            .field("tracks", &self.tracks)
            .field("skipped", &self.skipped)
            .field("playable", &self.playable)
            .field("wideband", &self.wideband)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Why [`ChannelRender::from_parts`] refused its parts: they break an invariant the serving
/// code relies on (a non-empty loop, tracks in order inside it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartsError {
    /// The loop has no samples.
    #[error("the loop is empty")]
    EmptyLoop,
    /// The rate is zero.
    #[error("the sample rate is zero")]
    ZeroRate,
    /// A track starts outside the loop, or is empty.
    #[error("track {index} ({start} + {len} samples) does not fit a loop of {loop_len}")]
    TrackOutOfRange {
        index: usize,
        start: u64,
        len: u64,
        loop_len: u64,
    },
    /// Tracks are not in loop order.
    #[error("tracks are not in loop order at track {index}")]
    TracksOutOfOrder { index: usize },
}

/// A track after decode, resample, normalise and trim.
struct Prepared {
    name: String,
    samples: Vec<f32>,
}

impl ChannelRender {
    /// Renders `source` into an 8 kHz loop normalised to `target_lufs`, a whole number of
    /// 20 ms frames long, encoded for G.711. Never fails: bad files are skipped (logged and
    /// listed in `skipped`), and with nothing playable the loop is one second of silence with
    /// `playable == false`.
    ///
    /// This is CPU-heavy (tens of milliseconds per minute of music) and runs tracks in
    /// parallel on scoped threads; call it off any real-time path.
    pub fn render(name: &str, source: &MusicSource, target_lufs: f64) -> ChannelRender {
        ChannelRender::compose(name, &Composition::playlist(source.clone(), target_lufs))
    }

    /// [`ChannelRender::render`] of one pass: `composition`'s music in its order, its
    /// announcements interjected (see [`compose`]).
    pub fn compose(name: &str, composition: &Composition) -> ChannelRender {
        let rendered = Rendered::make(name, composition, RATE, LoopLength::WholeFrames);
        ChannelRender::from_rendered(name, rendered)
    }

    /// The same decode, loudness, trims, crossfades and limiter at `rate` Hz, with the loop
    /// as the joins make it (not cut to whole frames): the line-out's reference, which its
    /// track-by-track stream matches sample for sample. Only a render at [`RATE`] is encoded
    /// for G.711.
    pub fn render_at(
        name: &str,
        source: &MusicSource,
        target_lufs: f64,
        rate: u32,
    ) -> ChannelRender {
        let composition = Composition::playlist(source.clone(), target_lufs);
        let rendered = Rendered::make(name, &composition, rate, LoopLength::Natural);
        ChannelRender::from_rendered(name, rendered)
    }

    fn from_rendered(name: &str, r: Rendered) -> ChannelRender {
        let pcm: Vec<i16> = r.samples.iter().map(|&s| quantise(s)).collect();
        let encoded = encode_all(&pcm, r.rate);
        ChannelRender {
            name: name.to_owned(),
            rate: r.rate,
            pcm: pcm.into(),
            encoded: encoded.into(),
            wideband: Wideband::default(),
            tracks: r.tracks,
            skipped: r.skipped,
            playable: r.playable,
            lufs: r.lufs,
            entries: Arc::from(Vec::new()),
        }
    }

    /// This render with `wideband` as its wideband encodings (replacing any it had) and only
    /// the G.711 encodings `plan` enables, sharing the 8 kHz loop and the G.711 bytes it keeps:
    /// what the fan-out is re-pointed to when the wideband codecs are ready.
    pub fn with_wideband(&self, wideband: Wideband, plan: &CodecPlan) -> ChannelRender {
        let encoded = if self.encoded.iter().all(|(c, _)| plan.enables(*c)) {
            Arc::clone(&self.encoded)
        } else {
            let kept: Vec<_> = self
                .encoded
                .iter()
                .filter(|(c, _)| plan.enables(*c))
                .cloned()
                .collect();
            kept.into()
        };
        ChannelRender {
            name: self.name.clone(),
            rate: self.rate,
            pcm: Arc::clone(&self.pcm),
            encoded,
            wideband,
            tracks: self.tracks.clone(),
            skipped: self.skipped.clone(),
            playable: self.playable,
            lufs: self.lufs,
            entries: Arc::clone(&self.entries),
        }
    }

    /// The wideband encodings this render carries.
    pub fn wideband(&self) -> &Wideband {
        &self.wideband
    }

    /// Whether [`ChannelRender::fill_packet`] has audio for `codec` now (a wideband codec is
    /// added when its render completes; one whose encoder failed is left out).
    pub fn serves(&self, codec: Codec) -> bool {
        if codec.is_g711() {
            self.encoded.iter().any(|(c, _)| *c == codec)
        } else {
            self.wideband.has(codec)
        }
    }

    /// The loop's length in 20 ms frames (rounded down; exact for an RTP render).
    pub fn frames(&self) -> u64 {
        (self.pcm.len() / frame_len(self.rate).max(1)) as u64
    }

    /// A render rebuilt from what [`ChannelRender::render_at`] made earlier (the render
    /// cache): the loop, its tracks, skipped files, playable flag and measured loudness. The
    /// per-codec encodings are made again here (for 8 kHz renders), which is cheaper than
    /// storing and reading them.
    ///
    /// The parts are checked against the invariants the serving code relies on (non-empty
    /// loop, tracks sorted and starting inside it); samples are taken as they are (the
    /// limiter ceiling cannot be checked without knowing how they were made).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        name: &str,
        rate: u32,
        pcm: Vec<i16>,
        tracks: Vec<TrackInfo>,
        skipped: Vec<SkippedTrack>,
        playable: bool,
        lufs: Option<f64>,
    ) -> Result<ChannelRender, PartsError> {
        if rate == 0 {
            return Err(PartsError::ZeroRate);
        }
        if pcm.is_empty() {
            return Err(PartsError::EmptyLoop);
        }
        let loop_len = pcm.len() as u64;
        for (index, t) in tracks.iter().enumerate() {
            // A track may wrap past the seam: a lone track is the loop plus the crossfade
            // with itself, which fitting the loop to whole frames lengthens by up to a frame.
            let max_len = loop_len + (crossfade_len(rate) + frame_len(rate)) as u64;
            if t.start_sample >= loop_len || t.len_samples == 0 || t.len_samples > max_len {
                return Err(PartsError::TrackOutOfRange {
                    index,
                    start: t.start_sample,
                    len: t.len_samples,
                    loop_len,
                });
            }
            if index > 0 && tracks[index - 1].start_sample >= t.start_sample {
                return Err(PartsError::TracksOutOfOrder { index });
            }
        }
        let encoded = encode_all(&pcm, rate);
        Ok(ChannelRender {
            name: name.to_owned(),
            rate,
            pcm: pcm.into(),
            encoded: encoded.into(),
            wideband: Wideband::default(),
            tracks,
            skipped,
            playable,
            lufs: lufs.filter(|l| l.is_finite()),
            entries: Arc::from(Vec::new()),
        })
    }

    /// Loop length in samples (at least 8000).
    pub fn len_samples(&self) -> usize {
        self.pcm.len()
    }

    /// Integrated loudness of the final loop in LUFS, `None` when it is silence.
    pub fn loudness_lufs(&self) -> Option<f64> {
        self.lufs
    }

    /// Writes `out.len()` encoded bytes of the loop starting at sample `start_sample` (taken
    /// modulo the loop length), wrapping at the seam. One byte per sample for G.711; nothing
    /// for a codec this render does not carry.
    ///
    /// Runs per packet per call: no allocation, at most two copies for any `out` no longer
    /// than the loop.
    pub fn fill_payload(&self, codec: Codec, start_sample: u64, out: &mut [u8]) {
        // Only G.711 codecs the render carries: `fill_packet` asks `serves` first.
        if let Some((_, bytes)) = self.encoded.iter().find(|(c, _)| *c == codec) {
            circular_copy(bytes, start_sample, out);
        }
    }

    /// Writes the payload of the RTP packet covering media-clock ticks `tick .. tick + ticks`
    /// (10 ms each) into `out` and returns its length: the shared-mode position is absolute,
    /// tick × 10 ms into the loop (modulo its length). G.711 and G.722 take any `ticks`; Opus
    /// is sent as 20 ms frames, so `ticks` must be 2 and the frame is `tick / 2` (modulo the
    /// frame count). A wideband codec whose loop is not ready yet (start-up) or whose encoder
    /// failed is served encoded silence, so RTP keeps flowing. 0 when `codec` is a G.711 codec
    /// the render does not carry, `ticks` does not suit it, or `out` is too short.
    pub fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        if !codec.is_g711() {
            return self.wideband.fill_packet(codec, tick, ticks, out);
        }
        if !self.serves(codec) {
            return 0;
        }
        let samples_per_tick = u64::from(RATE / 100);
        let len = (ticks * samples_per_tick) as usize;
        let Some(out) = out.get_mut(..len) else {
            return 0;
        };
        self.fill_payload(codec, tick * samples_per_tick, out);
        len
    }

    /// Writes `out.len()` PCM samples of the loop starting at `start_sample` (modulo the loop
    /// length), wrapping at the seam.
    #[cfg(test)]
    fn fill_pcm(&self, start_sample: u64, out: &mut [i16]) {
        circular_copy(&self.pcm, start_sample, out);
    }

    /// The track playing at loop position `sample` (modulo the loop length). Inside a
    /// crossfade this is the incoming track.
    pub fn track_at(&self, sample: u64) -> Option<&TrackInfo> {
        let len = self.pcm.len() as u64;
        if len == 0 {
            return None;
        }
        let pos = sample % len;
        let idx = self.tracks.partition_point(|t| t.start_sample <= pos);
        if idx == 0 {
            self.tracks.last()
        } else {
            self.tracks.get(idx - 1)
        }
    }

    /// How many announcements the pass interjects (the next pass's rotation starts that many
    /// clips on: [`compose::AnnouncementPlan::next_first_clip`]).
    pub fn announcements(&self) -> usize {
        self.tracks
            .iter()
            .filter(|t| t.kind == TrackKind::Announcement)
            .count()
    }

    /// A human-readable report for `mohd check`: loop length and loudness, each track with
    /// its position, and each skipped file with the reason.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "channel {}: {} ({} track{}, loop {}, {})",
            self.name,
            if self.playable {
                "ok"
            } else {
                "NOT PLAYABLE (silence)"
            },
            self.tracks.len(),
            if self.tracks.len() == 1 { "" } else { "s" },
            fmt_time(self.pcm.len() as u64, self.rate),
            match self.lufs {
                Some(l) => format!("{l:.1} LUFS"),
                None => "silent".to_owned(),
            },
        );
        for t in &self.tracks {
            let what = match t.kind {
                TrackKind::Music => "",
                TrackKind::Resumed => " (resumed)",
                TrackKind::Announcement => " (announcement)",
            };
            let _ = writeln!(
                s,
                "  {} {}{what} ({})",
                fmt_time(t.start_sample, self.rate),
                t.name,
                fmt_time(t.len_samples, self.rate)
            );
        }
        for k in &self.skipped {
            let _ = writeln!(s, "  skipped {}: {}", k.name, k.error);
        }
        s
    }
}

/// The music files named by `path`: a folder gives its audio files (by extension), sorted by
/// name, not recursing and skipping hidden files; anything else is returned as it is (a
/// missing file is then reported by the render). An unreadable folder is logged and gives
/// nothing.
pub fn expand_music_path(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(folder = %path.display(), error = %e, "cannot read music folder");
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_none_or(|n| n.to_string_lossy().starts_with('.'));
            let audio = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            !hidden && audio && p.is_file()
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

/// A loop after the limiter, before it is quantised and encoded.
pub(crate) struct Rendered {
    pub(crate) rate: u32,
    /// Mono at `rate`, within the limiter ceiling (see [`quantise`]).
    pub(crate) samples: Vec<f32>,
    tracks: Vec<TrackInfo>,
    skipped: Vec<SkippedTrack>,
    pub(crate) playable: bool,
    lufs: Option<f64>,
}

impl Rendered {
    /// `composition` rendered at `rate` into a loop of `length`.
    pub(crate) fn make(
        name: &str,
        composition: &Composition,
        rate: u32,
        length: LoopLength,
    ) -> Rendered {
        let started = std::time::Instant::now();
        let rendered = render_pass(name, composition, rate, length);
        // The server logs the outcome at info; this adds the cost and the measured loudness.
        tracing::debug!(
            channel = name,
            rate,
            tracks = rendered.tracks.len(),
            skipped = rendered.skipped.len(),
            loop_seconds = rendered.samples.len() as f64 / f64::from(rate),
            lufs = rendered.lufs.unwrap_or(f64::NEG_INFINITY),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "channel rendered"
        );
        rendered
    }
}

/// A limited sample as the loop stores it: i16 within the limiter ceiling.
pub(crate) fn quantise(s: f32) -> i16 {
    let ceiling = audio::ceiling_linear();
    (s.clamp(-ceiling, ceiling) * 32767.0).round() as i16
}

/// What a pass's seam crossfades into its first track (see [`compose::Join`]).
enum Lead {
    /// Its own last track, the seam fitted with the other joins (a pass that loops on itself).
    Loop,
    /// Its own last track, the seam exactly one crossfade (the first pass of a chain).
    OwnTail,
    /// The previous pass's last track (a later pass of a chain); this pass's own last track
    /// stops where its crossfade into the next pass would start.
    Previous(Prepared),
}

/// `composition` at `rate`: the music joined into a loop, the announcements interjected,
/// limited and measured.
fn render_pass(name: &str, composition: &Composition, rate: u32, length: LoopLength) -> Rendered {
    let target_lufs = composition.loudness_lufs;
    let (clips, mut skipped) = match &composition.announcements {
        Some(plan) => prepare_clips(name, plan, rate),
        None => (Vec::new(), Vec::new()),
    };
    let plan = composition
        .announcements
        .as_ref()
        .filter(|_| !clips.is_empty());
    let clip_lens: Vec<(usize, usize)> = clips.iter().map(|c| (c.index, c.samples.len())).collect();
    let slots_for = |music_len: usize, starts: &[usize]| -> (Vec<Slot>, usize) {
        let Some(plan) = plan else {
            return (Vec::new(), 0);
        };
        let slots = plan.slots(&clip_lens, music_len, starts, rate);
        let extra = slots.iter().map(|s| clip_lens[s.clip].1).sum();
        (slots, extra)
    };
    let (music, tracks, slots) = match &composition.music {
        MusicSource::Demo => {
            let (music, tracks) = demo_loop(target_lufs, rate);
            let (slots, _) = slots_for(music.len(), &[0]);
            (music, tracks, slots)
        }
        MusicSource::Files(paths) => {
            // A folder stands for the audio files in it, as for the line-out.
            let expanded: Vec<PathBuf> = paths.iter().flat_map(|p| expand_music_path(p)).collect();
            let (prepared, bad) =
                prepare_named(name, &expanded, target_lufs, rate, "skipping track");
            skipped.extend(bad);
            if prepared.is_empty() {
                return nothing_playable(name, expanded.is_empty(), skipped, rate, length);
            }
            let lead = lead_of(name, &composition.join, target_lufs, rate);
            assemble(name, prepared, lead, rate, length, slots_for)
        }
    };
    let (pcm, tracks) = match plan {
        Some(plan) if !slots.is_empty() => interject(music, &tracks, &slots, &clips, plan, rate),
        _ => (music, tracks),
    };
    finish(pcm, tracks, skipped, true, rate)
}

/// The lead-in `join` asks for, prepared; the pass's own tail when the previous pass's last
/// track cannot be prepared (logged).
fn lead_of(name: &str, join: &compose::Join, target_lufs: f64, rate: u32) -> Lead {
    match join {
        compose::Join::Loop => Lead::Loop,
        compose::Join::Chain {
            previous_last: None,
        } => Lead::OwnTail,
        compose::Join::Chain {
            previous_last: Some(path),
        } => match catch_unwind(AssertUnwindSafe(|| prepare(path, target_lufs, rate))) {
            Ok(Ok(p)) => Lead::Previous(p),
            Ok(Err(error)) => {
                tracing::warn!(channel = name, file = %path.display(), %error, "cannot prepare the previous pass's last track; this pass starts from its own");
                Lead::OwnTail
            }
            Err(_) => Lead::OwnTail,
        },
    }
}

/// Every file of `paths` prepared at `rate`, in order; the ones that fail are logged (with
/// `what`) and listed.
fn prepare_named(
    name: &str,
    paths: &[PathBuf],
    target_lufs: f64,
    rate: u32,
    what: &'static str,
) -> (Vec<Prepared>, Vec<SkippedTrack>) {
    let mut prepared = Vec::new();
    let mut skipped = Vec::new();
    for (path, result) in paths.iter().zip(prepare_all(paths, target_lufs, rate)) {
        match result {
            Ok(p) => prepared.push(p),
            Err(error) => {
                tracing::error!(channel = name, file = %path.display(), %error, "{what}");
                skipped.push(SkippedTrack {
                    name: path.display().to_string(),
                    error: error.to_string(),
                });
            }
        }
    }
    (prepared, skipped)
}

/// The demo melody at `rate`, normalised: a loop of its own. It is periodic by construction
/// and ten seconds long, a whole number of frames at every rate: no trim and no seam
/// crossfade, which would shorten the bar and break the rhythm at the seam.
fn demo_loop(target_lufs: f64, rate: u32) -> (Vec<f32>, Vec<TrackInfo>) {
    let mut loop_ = audio::demo_melody(rate);
    audio::normalise(&mut loop_, rate, target_lufs);
    let tracks = vec![TrackInfo {
        name: "demo melody".to_owned(),
        start_sample: 0,
        len_samples: loop_.len() as u64,
        kind: TrackKind::Music,
    }];
    (loop_, tracks)
}

/// No music file could be used: a loop of silence (a second, or the frames asked for), so RTP
/// keeps flowing; `playable` false.
fn nothing_playable(
    name: &str,
    no_files: bool,
    skipped: Vec<SkippedTrack>,
    rate: u32,
    length: LoopLength,
) -> Rendered {
    let why = if no_files {
        "no music files configured".to_owned()
    } else {
        format!("all {} music file(s) failed", skipped.len())
    };
    tracing::error!(
        channel = name,
        reason = %why,
        "nothing playable; the channel plays silence"
    );
    let len = match length {
        LoopLength::Frames(n) => n as usize * frame_len(rate),
        LoopLength::Natural | LoopLength::WholeFrames => min_loop_samples(rate),
    };
    let silence = vec![0.0f32; len.max(1)];
    finish(silence, Vec::new(), skipped, false, rate)
}

/// The plan's clips that decode, prepared at `rate` at the plan's loudness and padded with
/// silence to whole frames: at least a frame of it, the frame count measured on the clip at
/// 8 kHz whatever `rate` (so every rate's pass places the same announcements at the same
/// times). A clip that fails is logged and listed, and left out of the rotation.
fn prepare_clips(
    name: &str,
    plan: &compose::AnnouncementPlan,
    rate: u32,
) -> (Vec<PreparedClip>, Vec<SkippedTrack>) {
    let lufs = plan.loudness_lufs;
    let at_rate = prepare_all(&plan.clips, lufs, rate);
    let at_8k = if rate == RATE {
        None
    } else {
        Some(prepare_all(&plan.clips, lufs, RATE))
    };
    let mut clips = Vec::new();
    let mut skipped = Vec::new();
    for (index, (path, result)) in plan.clips.iter().zip(at_rate).enumerate() {
        let len_8k = match &at_8k {
            None => result.as_ref().map(|p| p.samples.len()).ok(),
            Some(all) => all
                .get(index)
                .and_then(|r| r.as_ref().ok())
                .map(|p| p.samples.len()),
        };
        match (result, len_8k) {
            (Ok(p), Some(len_8k)) => {
                let frames = len_8k.div_ceil(frame_len(RATE)) + 1;
                let mut samples = p.samples;
                samples.resize(frames * frame_len(rate), 0.0);
                clips.push(PreparedClip {
                    index,
                    name: p.name,
                    samples,
                });
            }
            (Err(error), _) => {
                tracing::error!(channel = name, file = %path.display(), %error, "skipping announcement; the music goes on");
                skipped.push(SkippedTrack {
                    name: path.display().to_string(),
                    error: error.to_string(),
                });
            }
            (Ok(_), None) => {
                tracing::error!(channel = name, file = %path.display(), "skipping announcement: it cannot be prepared at 8 kHz");
                skipped.push(SkippedTrack {
                    name: path.display().to_string(),
                    error: "cannot be prepared at 8 kHz".to_owned(),
                });
            }
        }
    }
    (clips, skipped)
}

/// The pass with its announcements: the music loop `music` (its tracks `tracks`) cut at each
/// slot's pause point, faded out before it and back in after it, the clip in between (see
/// [`compose`]'s `# Announcements in a pass`). Tracks are moved to where they now play; an
/// announcement and the rest of a track it interrupted get entries of their own.
fn interject(
    music: Vec<f32>,
    tracks: &[TrackInfo],
    slots: &[Slot],
    clips: &[PreparedClip],
    plan: &compose::AnnouncementPlan,
    rate: u32,
) -> (Vec<f32>, Vec<TrackInfo>) {
    let len = music.len();
    let pauses: Vec<(usize, &PreparedClip)> = slots
        .iter()
        .filter_map(|s| {
            let at = match s.at {
                PauseAt::Sample(p) => p.min(len),
                PauseAt::Track(i) => tracks.get(i)?.start_sample as usize,
                PauseAt::End => len,
            };
            Some((at, clips.get(s.clip)?))
        })
        .collect();
    let (fade_out, fade_in) = plan.fades(rate);
    let added: usize = pauses.iter().map(|(_, c)| c.samples.len()).sum();
    let mut out = Vec::with_capacity(len + added);
    // A pass that ends with an announcement starts with the music fading in.
    let mut resuming = pauses.last().is_some_and(|(at, _)| *at == len);
    let mut from = 0;
    for &(at, clip) in &pauses {
        let at = at.max(from);
        push_faded(
            &mut out,
            &music[from..at],
            resuming.then_some(fade_in),
            Some(fade_out),
        );
        out.extend_from_slice(&clip.samples);
        from = at;
        resuming = true;
    }
    if from < len {
        push_faded(&mut out, &music[from..], resuming.then_some(fade_in), None);
    }

    // Music time to pass time: a position moves by every announcement at or before it.
    let shift = |x: u64| -> u64 {
        x + pauses
            .iter()
            .filter(|(at, _)| *at as u64 <= x)
            .map(|(_, c)| c.samples.len() as u64)
            .sum::<u64>()
    };
    let mut entries = Vec::with_capacity(tracks.len() + 2 * pauses.len());
    for (i, t) in tracks.iter().enumerate() {
        let next_start = tracks.get(i + 1).map_or(len as u64, |n| n.start_sample);
        let end = t.start_sample + t.len_samples;
        let inside: Vec<u64> = pauses
            .iter()
            .map(|(at, _)| *at as u64)
            .filter(|&at| at > t.start_sample && at < next_start)
            .collect();
        entries.push(TrackInfo {
            name: t.name.clone(),
            start_sample: shift(t.start_sample),
            len_samples: inside
                .first()
                .map_or(t.len_samples, |&at| at - t.start_sample),
            kind: t.kind,
        });
        for (j, &at) in inside.iter().enumerate() {
            let until = inside.get(j + 1).copied().unwrap_or(end);
            entries.push(TrackInfo {
                name: t.name.clone(),
                start_sample: shift(at),
                len_samples: until.saturating_sub(at).max(1),
                kind: TrackKind::Resumed,
            });
        }
    }
    let mut before = 0u64;
    for &(at, clip) in &pauses {
        entries.push(TrackInfo {
            name: clip.name.clone(),
            start_sample: at as u64 + before,
            len_samples: clip.samples.len() as u64,
            kind: TrackKind::Announcement,
        });
        before += clip.samples.len() as u64;
    }
    entries.sort_by_key(|t| t.start_sample);
    (out, entries)
}

/// Appends `music` with a fade-in over its first `fade_in` samples and a fade-out over its
/// last `fade_out` (each at most half of it).
fn push_faded(out: &mut Vec<f32>, music: &[f32], fade_in: Option<usize>, fade_out: Option<usize>) {
    let n = music.len();
    let fade_in = fade_in.unwrap_or(0).min(n / 2);
    let fade_out = fade_out.unwrap_or(0).min(n / 2);
    out.extend(music.iter().enumerate().map(|(j, &s)| {
        let mut w = 1.0f32;
        if j < fade_in {
            w *= equal_power_in(j, fade_in);
        }
        if j >= n - fade_out {
            w *= equal_power_in(n - 1 - j, fade_out);
        }
        s * w
    }));
}

/// Runs [`prepare`] over all paths on a few scoped threads; results come back in path order.
fn prepare_all(
    paths: &[PathBuf],
    target_lufs: f64,
    rate: u32,
) -> Vec<Result<Prepared, TrackError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS)
        .min(paths.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<Prepared, TrackError>>> = paths.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        // decode_file already isolates symphonia; this catches a bug in our own
                        // processing so one track cannot take the whole render down.
                        let r = catch_unwind(AssertUnwindSafe(|| prepare(path, target_lufs, rate)))
                            .unwrap_or(Err(TrackError::Internal));
                        done.push((i, r));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
        }
    });
    slots
        .into_iter()
        .map(|s| s.unwrap_or(Err(TrackError::Internal)))
        .collect()
}

/// One file to a trimmed, normalised mono track at `rate` Hz, exactly as a channel render
/// prepares it: decode, downmix, resample, normalise to `target_lufs`, trim leading and
/// trailing near-silence. The error says what is wrong with the file (without its name).
///
/// CPU-heavy (the whole file is decoded); the line-out calls it one track ahead.
pub fn prepare_track(path: &Path, target_lufs: f64, rate: u32) -> Result<Vec<f32>, TrackError> {
    catch_unwind(AssertUnwindSafe(|| prepare(path, target_lufs, rate)))
        .unwrap_or(Err(TrackError::Internal))
        .map(|p| p.samples)
}

/// The first `seconds` of a file at `rate` Hz, prepared as [`prepare_track`] prepares the
/// whole file (downmix, resample, leading near-silence trimmed) except its loudness: measured
/// over these seconds only, as the rest is not decoded yet. What a cold start plays for the
/// first moments; the whole track's render takes over with a short gain ramp.
pub fn prepare_opening(
    path: &Path,
    target_lufs: f64,
    rate: u32,
    seconds: u32,
) -> Result<Vec<f32>, TrackError> {
    catch_unwind(AssertUnwindSafe(|| {
        // A little more than asked: the leading silence is trimmed off.
        let decoded = audio::decode_file_start(path, u64::from(seconds) + 2)?;
        let mut samples = audio::resample(&decoded.mono, decoded.sample_rate, rate)?;
        let report = audio::normalise(&mut samples, rate, target_lufs);
        if report.measured_lufs.is_none() {
            return Err(TrackError::Silent);
        }
        let start = samples.iter().position(|s| s.abs() > SILENCE_THRESHOLD);
        let start = start.ok_or(TrackError::Silent)?;
        samples.drain(..start);
        samples.truncate((u64::from(seconds) * u64::from(rate)) as usize);
        Ok(samples)
    }))
    .unwrap_or(Err(TrackError::Internal))
}

/// One file to a trimmed, normalised track at `rate` Hz.
fn prepare(path: &Path, target_lufs: f64, rate: u32) -> Result<Prepared, TrackError> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let decoded = audio::decode_file(path)?;
    let mut samples = audio::resample(&decoded.mono, decoded.sample_rate, rate)?;
    drop(decoded);
    let report = audio::normalise(&mut samples, rate, target_lufs);
    if report.measured_lufs.is_none() {
        return Err(TrackError::Silent);
    }
    tracing::debug!(
        file = %path.display(),
        measured_lufs = report.measured_lufs.unwrap_or(f64::NEG_INFINITY),
        gain_db = report.gain_db,
        limited = report.limited_samples,
        "track normalised"
    );
    let start = samples.iter().position(|s| s.abs() > SILENCE_THRESHOLD);
    let end = samples.iter().rposition(|s| s.abs() > SILENCE_THRESHOLD);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(TrackError::Silent);
    };
    let sound = end + 1 - start;
    if sound < (u64::from(MIN_TRACK_MS) * u64::from(rate) / 1000) as usize {
        return Err(TrackError::TooShort {
            sound_ms: sound as u64 * 1000 / u64::from(rate),
        });
    }
    samples.truncate(end + 1);
    samples.drain(..start);
    Ok(Prepared { name, samples })
}

/// Joins tracks into one loop with equal-power crossfades at every join and at the seam.
///
/// Track `i` starts where track `i - 1` ends minus their overlap; at the seam, the lead's
/// tail (the last track's, or the previous pass's last track's) overlaps the first track's
/// head by wrapping round the loop buffer. Each overlap is the crossfade length, or half the
/// shorter track if that is less, so a track's fade-in and fade-out never meet; then the
/// overlaps are fitted so the loop, with what `slots_for` adds for the announcements it
/// places in this music (given the music's natural length and track starts), has the
/// `length` asked for ([`fit_overlaps`]). A chained pass's seam is never fitted: the previous
/// pass cut its last track at exactly one crossfade from its end.
fn assemble(
    name: &str,
    prepared: Vec<Prepared>,
    lead: Lead,
    rate: u32,
    length: LoopLength,
    slots_for: impl FnOnce(usize, &[usize]) -> (Vec<Slot>, usize),
) -> (Vec<f32>, Vec<TrackInfo>, Vec<Slot>) {
    let xf = crossfade_len(rate);
    let mut segs = prepared;
    // Repeat a short playlist until the loop reaches the minimum length.
    let base = segs.len();
    while loop_len(&segs, xf) < min_loop_samples(rate) {
        for i in 0..base {
            let again = Prepared {
                name: segs[i].name.clone(),
                samples: segs[i].samples.clone(),
            };
            segs.push(again);
        }
    }
    let k = segs.len();
    // One track has no other join to fit the loop with: it loops on itself.
    let lead = if k == 1 { Lead::Loop } else { lead };
    let mut overlaps = overlaps(&segs, xf);
    if let Lead::Previous(p) = &lead {
        overlaps[0] = xf.min(p.samples.len() / 2).min(segs[0].samples.len() / 2);
    }
    let lens: Vec<usize> = segs.iter().map(|s| s.samples.len()).collect();
    let mut starts = Vec::with_capacity(k);
    let mut pos = 0usize;
    for i in 0..k {
        starts.push(pos);
        pos += lens[i] - overlaps[(i + 1) % k];
    }
    let (slots, extra) = slots_for(pos, &starts);
    let fixed_seam = !matches!(lead, Lead::Loop);
    fit_overlaps(name, &lens, &mut overlaps, rate, length, fixed_seam, extra);
    let total = lens.iter().sum::<usize>() - overlaps.iter().sum::<usize>();
    let mut out = vec![0f32; total];
    let mut tracks = Vec::with_capacity(k);
    let mut pos = 0usize;
    for (i, seg) in segs.iter().enumerate() {
        let fade_in = overlaps[i];
        let fade_out = overlaps[(i + 1) % k];
        let len = seg.samples.len();
        // A chained pass's last track stops where its crossfade into the next pass starts.
        let wraps = i + 1 < k || !matches!(lead, Lead::Previous(_));
        let written = if wraps { len } else { len - fade_out };
        for (j, &s) in seg.samples[..written].iter().enumerate() {
            let mut w = 1.0f32;
            if j < fade_in {
                w *= equal_power_in(j, fade_in);
            }
            if wraps && j >= len - fade_out {
                w *= equal_power_in(len - 1 - j, fade_out);
            }
            out[(pos + j) % total] += s * w;
        }
        tracks.push(TrackInfo {
            name: seg.name.clone(),
            start_sample: pos as u64,
            len_samples: len as u64,
            kind: TrackKind::Music,
        });
        pos += len - fade_out;
    }
    if let Lead::Previous(p) = &lead {
        let ov = overlaps[0];
        let tail = &p.samples[p.samples.len() - ov..];
        for (j, &s) in tail.iter().enumerate() {
            out[j % total] += s * equal_power_in(ov - 1 - j, ov);
        }
    }
    (out, tracks, slots)
}

/// Changes the overlaps (index 0 is the seam) so that the loop of tracks `lens` has `length`:
/// the seam's first, then the other joins' in order. An overlap grows up to half the shorter
/// of its two tracks (so fades never meet) and shrinks down to half the crossfade (so a join
/// never turns into a cut). A frame count the joins cannot reach falls back to whole frames
/// (logged); whole frames are always reachable for a loop of at least a second of tracks of
/// at least [`MIN_TRACK_MS`], but a loop that could not be fitted is left as it is (logged).
/// `extra` samples (the announcements, whole frames) are part of the loop's length; with
/// `fixed_seam` the seam's overlap is left as it is.
fn fit_overlaps(
    name: &str,
    lens: &[usize],
    overlaps: &mut [usize],
    rate: u32,
    length: LoopLength,
    fixed_seam: bool,
    extra: usize,
) {
    let frame = frame_len(rate);
    if frame == 0 || length == LoopLength::Natural {
        return;
    }
    let k = lens.len();
    let natural = (lens.iter().sum::<usize>() + extra - overlaps.iter().sum::<usize>()) as i64;
    let whole = natural - natural % frame as i64;
    let most = |i: usize| lens[(i + k - 1) % k].min(lens[i]) / 2;
    let floor = crossfade_len(rate) / 2;
    let fits = |target: i64, overlaps: &mut [usize]| -> bool {
        // Positive: the overlaps must grow by this much in total; negative: shrink.
        let mut left = natural - target;
        let mut fitted = overlaps.to_vec();
        for (i, o) in fitted.iter_mut().enumerate().skip(usize::from(fixed_seam)) {
            let step = if left >= 0 {
                (most(i).saturating_sub(*o) as i64).min(left)
            } else {
                -((*o - (*o).min(floor)) as i64).min(-left)
            };
            *o = (*o as i64 + step) as usize;
            left -= step;
        }
        if left != 0 {
            return false;
        }
        overlaps.copy_from_slice(&fitted);
        true
    };
    if let LoopLength::Frames(frames) = length {
        let target = i64::try_from(frames)
            .unwrap_or(i64::MAX)
            .saturating_mul(frame as i64);
        if fits(target, overlaps) {
            return;
        }
        tracing::warn!(
            channel = name,
            rate,
            frames,
            natural_samples = natural,
            "cannot fit this render to the 8 kHz loop's length; its loop is a little longer or shorter"
        );
    }
    if whole == 0 || !fits(whole, overlaps) {
        tracing::warn!(
            channel = name,
            rate,
            natural_samples = natural,
            "cannot cut the loop to whole 20 ms frames; Opus and G.722 may wrap mid-frame"
        );
    }
}

/// Overlap before each track (index 0: the seam between the last track and the first).
fn overlaps(segs: &[Prepared], xf: usize) -> Vec<usize> {
    let k = segs.len();
    (0..k)
        .map(|i| {
            let prev = segs[(i + k - 1) % k].samples.len();
            let cur = segs[i].samples.len();
            xf.min(prev / 2).min(cur / 2)
        })
        .collect()
}

fn loop_len(segs: &[Prepared], xf: usize) -> usize {
    let total: usize = segs.iter().map(|s| s.samples.len()).sum();
    total - overlaps(segs, xf).iter().sum::<usize>()
}

/// Gain of sample `j` of an `n`-sample fade-in; the fade-out is the same curve read from the
/// end. `sin² + cos² = 1` keeps the power constant through the join when the two sides are
/// uncorrelated, as two different pieces of music are.
pub fn equal_power_in(j: usize, n: usize) -> f32 {
    let t = (j as f64 + 0.5) / n as f64;
    (t * std::f64::consts::FRAC_PI_2).sin() as f32
}

/// [`CROSSFADE_MS`] in samples at `rate`.
pub fn crossfade_len(rate: u32) -> usize {
    (u64::from(CROSSFADE_MS) * u64::from(rate) / 1000) as usize
}

/// Limits the loop as a loop and measures its loudness.
fn finish(
    mut loop_: Vec<f32>,
    tracks: Vec<TrackInfo>,
    skipped: Vec<SkippedTrack>,
    playable: bool,
    rate: u32,
) -> Rendered {
    // Crossfades can add two peaks together; the loop-wide limiter brings them back under the
    // ceiling, seeing across the seam.
    audio::limit_circular(&mut loop_, rate);
    let lufs = audio::integrated_lufs(&loop_, rate);
    Rendered {
        rate,
        samples: loop_,
        tracks,
        skipped,
        playable,
        lufs,
    }
}

/// Below this many samples (a minute at 8 kHz) the codecs are encoded one after the other:
/// a thread costs more than it saves.
const PARALLEL_ENCODE_SAMPLES: usize = 480_000;

/// The loop encoded with every codec (8 kHz renders only: G.711 is 8 kHz, other rates are for
/// the line-out, which plays the PCM). Long loops encode each codec on its own thread: this
/// is on the start-up path when a render comes from the cache.
fn encode_all(pcm: &[i16], rate: u32) -> Vec<(Codec, Vec<u8>)> {
    if rate != RATE {
        return Vec::new();
    }
    // Per-sample calls to the table lookups, not `Codec::encode`: its function pointer keeps
    // the compiler from inlining, which makes it four times slower over a long loop (40 ms
    // against 10 ms per codec for 30 minutes), and this is on the start-up path.
    let encode = |c: Codec| {
        let bytes: Vec<u8> = match c {
            Codec::Pcmu => pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            Codec::Pcma => pcm.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
            // Not called: only the G.711 pair is encoded from an 8 kHz render.
            Codec::G722 | Codec::Opus => Vec::new(),
        };
        (c, bytes)
    };
    if pcm.len() < PARALLEL_ENCODE_SAMPLES {
        return Codec::G711.iter().copied().map(encode).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = Codec::G711
            .iter()
            .copied()
            .map(|c| {
                let h = std::thread::Builder::new()
                    .name("mohd-encode".to_owned())
                    .spawn_scoped(scope, move || encode(c));
                (c, h)
            })
            .collect();
        handles
            .into_iter()
            // No thread (out of threads), or one that panicked (it cannot: it only indexes a
            // table): encode here rather than leave the codec out.
            .map(|(c, h)| match h {
                Ok(h) => h.join().unwrap_or_else(|_| encode(c)),
                Err(_) => encode(c),
            })
            .collect()
    })
}

/// Copies `out.len()` items of `src`, seen as an endless loop, from `start` on. At most two
/// `copy_from_slice` calls when `out` is no longer than `src`.
fn circular_copy<T: Copy>(src: &[T], start: u64, out: &mut [T]) {
    let len = src.len();
    if len == 0 {
        return;
    }
    let mut pos = (start % len as u64) as usize;
    let mut done = 0;
    while done < out.len() {
        let n = (out.len() - done).min(len - pos);
        out[done..done + n].copy_from_slice(&src[pos..pos + n]);
        done += n;
        pos = 0;
    }
}

/// `m:ss.s` from a sample count at `rate`.
fn fmt_time(samples: u64, rate: u32) -> String {
    let tenths = samples * 10 / u64::from(rate.max(1));
    format!("{}:{:02}.{}", tenths / 600, tenths / 10 % 60, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{goertzel_amp, sine, zero_crossing_hz};
    use std::path::Path;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/audio")
            .join(name)
    }

    /// Writes 16-bit WAV; `frames` holds one Vec per channel.
    fn write_wav(path: &Path, rate: u32, frames: &[Vec<f32>]) {
        let spec = hound::WavSpec {
            channels: frames.len() as u16,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..frames[0].len() {
            for ch in frames {
                w.write_sample((ch[i] * 32767.0).round() as i16).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    fn to_f32(pcm: &[i16]) -> Vec<f32> {
        pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// decode → resample, the path every file takes to 8 kHz.
    fn to_8k(path: &Path) -> Vec<f32> {
        let d = audio::decode_file(path).unwrap();
        audio::resample(&d.mono, d.sample_rate, RATE).unwrap()
    }

    /// A 5 kHz tone cannot be carried at 8 kHz; without an anti-aliasing filter it would fold
    /// to 3 kHz, right in the telephone band. It must come out at least 60 dB below a 1 kHz
    /// tone of the same input level, and the 1 kHz tone must keep its pitch.
    #[test]
    fn resampler_rejects_aliases_and_keeps_pitch() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p5) = (dir.path().join("1k.wav"), dir.path().join("5k.wav"));
        write_wav(&p1, 44_100, &[sine(1000.0, 44_100, 88_200, 0.5)]);
        write_wav(&p5, 44_100, &[sine(5000.0, 44_100, 88_200, 0.5)]);
        let (y1, y5) = (to_8k(&p1), to_8k(&p5));
        assert_eq!(y1.len(), 16_000);
        // Steady part only: skip 100 ms at each end.
        let (s1, s5) = (&y1[800..15_200], &y5[800..15_200]);
        let ratio_db = 20.0 * (rms(s5) / rms(s1)).log10();
        assert!(
            ratio_db < -60.0,
            "5 kHz alias only {ratio_db:.1} dB below 1 kHz"
        );
        let f = zero_crossing_hz(s1, RATE);
        assert!((f - 1000.0).abs() < 10.0, "1 kHz came out at {f:.1} Hz");
        assert!(
            (rms(s1) - 0.5 / 2f64.sqrt()).abs() < 0.01,
            "1 kHz level changed"
        );

        // Same through the whole render: one file with both tones at equal level.
        let both = dir.path().join("both.wav");
        let mix: Vec<f32> = sine(1000.0, 44_100, 88_200, 0.3)
            .iter()
            .zip(sine(5000.0, 44_100, 88_200, 0.3))
            .map(|(a, b)| a + b)
            .collect();
        write_wav(&both, 44_100, &[mix]);
        let r = ChannelRender::render("t", &MusicSource::Files(vec![both]), -18.0);
        let x = to_f32(&r.pcm);
        let steady = &x[800..x.len() - 800];
        let a1 = goertzel_amp(steady, RATE, 1000.0);
        let a3 = goertzel_amp(steady, RATE, 3000.0);
        let db = 20.0 * (a3 / a1).log10();
        assert!(db < -60.0, "alias at 3 kHz only {db:.1} dB below 1 kHz");
    }

    /// Longest run of consecutive samples with |x| <= `thr`.
    fn longest_quiet_run(x: &[i16], thr: i16) -> usize {
        let (mut best, mut cur) = (0, 0);
        for &s in x {
            if s.abs() <= thr {
                cur += 1;
                best = best.max(cur);
            } else {
                cur = 0;
            }
        }
        best
    }

    /// Two tracks with silence around them in the files, played twice round the loop the way a
    /// call reads it (160-sample packets from an arbitrary offset): no gap and no click at the
    /// join or at the seam.
    #[test]
    fn loop_has_no_gap_or_click_at_joins_and_seam() {
        let dir = tempfile::tempdir().unwrap();
        let pad = |x: Vec<f32>, rate: usize, lead: f64, tail: f64| -> Vec<f32> {
            let mut v = vec![0.0; (lead * rate as f64) as usize];
            v.extend(x);
            v.extend(vec![0.0; (tail * rate as f64) as usize]);
            v
        };
        let a = dir.path().join("a.wav");
        let b = dir.path().join("b.wav");
        // Track A: 220 Hz at 44.1 kHz stereo; track B: 330 Hz at 22.05 kHz mono. Each with
        // 300 ms / 500 ms of digital silence around it and a hard stop mid-cycle.
        let ta = pad(sine(220.0, 44_100, 66_000, 0.3), 44_100, 0.3, 0.5);
        write_wav(&a, 44_100, &[ta.clone(), ta]);
        let tb = pad(sine(330.0, 22_050, 26_500, 0.2), 22_050, 0.5, 0.3);
        write_wav(&b, 22_050, &[tb]);

        let r = ChannelRender::render("seam", &MusicSource::Files(vec![a, b]), -18.0);
        assert!(r.playable);
        assert_eq!(r.tracks.len(), 2);
        assert!(r.skipped.is_empty());
        // The silence was trimmed: 1.5 s + 1.2 s of tone, minus two 15 ms overlaps, then cut
        // to whole 20 ms frames by a longer seam crossfade.
        let expected = 12_000 + 9_600 - 2 * 120;
        let frame = frame_len(RATE);
        assert_eq!(r.len_samples() % frame, 0, "{} samples", r.len_samples());
        assert!(
            r.len_samples() < expected + 40 && r.len_samples() + frame + 40 > expected,
            "loop is {} samples, expected about {expected} rounded down to a frame",
            r.len_samples()
        );

        let len = r.len_samples();
        let offset = 777u64;
        let mut played = Vec::with_capacity(2 * len + 160);
        let mut buf = [0i16; 160];
        let mut pos = offset;
        while played.len() < 2 * len {
            r.fill_pcm(pos, &mut buf);
            played.extend_from_slice(&buf);
            pos += 160;
        }
        // Digital silence: nothing over 8 samples (1 ms) at or below -60 dBFS. A 220 Hz sine
        // only spends a sample or two near zero per crossing.
        let quiet = longest_quiet_run(&played, 32);
        assert!(quiet <= 8, "{quiet} quiet samples in a row");

        // Clicks: no step bigger than twice the largest step inside either tone.
        let steady_step = |t: &TrackInfo| -> i32 {
            let s = (t.start_sample + 400) as usize;
            let e = (t.start_sample + t.len_samples - 400) as usize;
            r.pcm[s..e]
                .windows(2)
                .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
                .max()
                .unwrap()
        };
        let music_step = steady_step(&r.tracks[0]).max(steady_step(&r.tracks[1]));
        let worst = played
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap();
        assert!(
            worst <= 2 * music_step,
            "step of {worst} vs music's own {music_step}"
        );
        // The seam itself, explicitly.
        let seam = (i32::from(r.pcm[0]) - i32::from(r.pcm[len - 1])).abs();
        assert!(seam <= 2 * music_step, "seam step {seam}");
    }

    /// Every RTP render is a whole number of 20 ms frames, and a wideband render has the 8 kHz
    /// render's frame count, for playlists whose natural length is off the frame grid: two
    /// tones, one long track, one short track repeated. The seam (now a longer crossfade) does
    /// not click at any rate: no step across the wrap bigger than twice the music's own.
    #[test]
    fn rtp_loops_are_whole_frames_of_one_length_at_every_rate() {
        let dir = tempfile::tempdir().unwrap();
        let tone = |name: &str, f: f64, samples: usize| {
            let p = dir.path().join(name);
            write_wav(&p, 44_100, &[sine(f, 44_100, samples, 0.3)]);
            p
        };
        let a = tone("a.wav", 220.0, 66_013);
        let b = tone("b.wav", 330.0, 52_919);
        let long = tone("long.wav", 261.0, 97_777);
        let short = tone("short.wav", 440.0, 13_001);
        let playlists = [vec![a, b], vec![long], vec![short]];
        for files in playlists {
            let source = MusicSource::Files(files.clone());
            let narrow = ChannelRender::render("t", &source, -18.0);
            let frames = narrow.frames();
            assert_eq!(narrow.len_samples() % frame_len(RATE), 0, "{files:?}");
            for rate in [RATE, 16_000, 48_000] {
                let playlist = Composition::playlist(source.clone(), -18.0);
                let r = Rendered::make("t", &playlist, rate, LoopLength::Frames(frames));
                assert_eq!(
                    r.samples.len(),
                    frames as usize * frame_len(rate),
                    "{rate} Hz {files:?}"
                );
                let x = &r.samples;
                let steps = |w: &[f32]| {
                    w.windows(2)
                        .map(|p| (p[1] - p[0]).abs())
                        .fold(0.0, f32::max)
                };
                let music = steps(&x[x.len() / 4..x.len() / 2]);
                let n = x.len();
                let seam: Vec<f32> = x[n - 200..].iter().chain(&x[..200]).copied().collect();
                assert!(
                    steps(&seam) <= 2.0 * music,
                    "{rate} Hz {files:?}: click at the seam"
                );
            }
        }
        // The demo melody is ten seconds at every rate.
        for rate in [RATE, 16_000, 48_000] {
            let demo = Composition::playlist(MusicSource::Demo, -18.0);
            let r = Rendered::make("d", &demo, rate, LoopLength::Frames(500));
            assert_eq!(r.samples.len(), 500 * frame_len(rate));
        }
    }

    /// The fit grows the seam first, spills to the other joins when the seam cannot take it,
    /// shrinks overlaps no further than half a crossfade, and falls back to whole frames.
    #[test]
    fn overlaps_are_fitted_seam_first() {
        let xf = crossfade_len(RATE); // 120
        // Natural length 3000 + 2000 - 240 = 4760, 120 past 29 frames (4640).
        let mut o = vec![xf, xf];
        fit_overlaps(
            "t",
            &[3000, 2000],
            &mut o,
            RATE,
            LoopLength::WholeFrames,
            false,
            0,
        );
        assert_eq!(o, [xf + 120, xf]);
        // Natural 4800 - 360 = 4440. 29 frames (4640) would need the overlaps to shrink by 200,
        // more than the 3 × 60 down to half a crossfade: whole frames instead (4320, grow by
        // 120). The seam grows only to half its shorter track (150), then the next join (to
        // half of 300), then the last.
        let mut o = vec![xf, xf, xf];
        fit_overlaps(
            "t",
            &[300, 3000, 1500],
            &mut o,
            RATE,
            LoopLength::Frames(29),
            false,
            0,
        );
        assert_eq!(o, [150, 150, 180]);
        // Shrinking the seam to reach a frame count above the natural length: 30 frames is
        // 4800, 40 more than 4760.
        let mut o = vec![xf, xf];
        fit_overlaps(
            "t",
            &[3000, 2000],
            &mut o,
            RATE,
            LoopLength::Frames(30),
            false,
            0,
        );
        assert_eq!(o, [xf - 40, xf]);
        // The line-out's loop is left alone.
        let mut o = vec![xf, xf];
        fit_overlaps(
            "t",
            &[3000, 2000],
            &mut o,
            RATE,
            LoopLength::Natural,
            false,
            0,
        );
        assert_eq!(o, [xf, xf]);
    }

    /// G.711 packets by tick: 80 bytes a tick from tick × 80 round the loop.
    #[test]
    fn g711_packets_are_cut_by_tick() {
        let r = ChannelRender::render("demo", &MusicSource::Demo, -18.0);
        let len = r.len_samples() as u64;
        let mut out = [0u8; 480];
        for (tick, ticks) in [(0u64, 2u64), (999, 2), (1_000, 3), (123_456_789, 6)] {
            let n = r.fill_packet(Codec::Pcma, tick, ticks, &mut out);
            assert_eq!(n, 80 * ticks as usize);
            let mut want = vec![0u8; n];
            let pcm: Vec<i16> = (0..n as u64)
                .map(|i| r.pcm[((tick * 80 + i) % len) as usize])
                .collect();
            Codec::Pcma.encode(&pcm, &mut want);
            assert_eq!(&out[..n], &want[..], "tick {tick}");
        }
        assert_eq!(r.fill_packet(Codec::Pcmu, 0, 2, &mut [0u8; 100]), 0);
        // No wideband encodings yet: encoded silence for those codecs, on their clock.
        assert!(r.serves(Codec::Pcmu) && !r.serves(Codec::G722) && !r.serves(Codec::Opus));
        assert_eq!(r.fill_packet(Codec::G722, 0, 2, &mut out), 160);
        assert!(r.fill_packet(Codec::Opus, 0, 2, &mut out) > 0);
    }

    /// Every format we claim decodes to the right rate, length and pitch.
    #[test]
    fn every_supported_format_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("tone.wav");
        // Left tone, right silent: the downmix must halve it.
        write_wav(
            &wav,
            48_000,
            &[sine(440.0, 48_000, 48_000, 0.5), vec![0.0; 48_000]],
        );
        let cases: Vec<(PathBuf, u32, u16, f64)> = vec![
            (wav, 48_000, 2, 0.25),
            (fixture("tone440_44k1_stereo.mp3"), 44_100, 2, 0.25),
            (fixture("tone440_22k05_mono.ogg"), 22_050, 1, 0.25),
            (fixture("tone440_44k1_stereo.m4a"), 44_100, 2, 0.25),
            (fixture("tone440_8k_mono.flac"), 8_000, 1, 0.25),
            (fixture("tone440_8k_mono.aiff"), 8_000, 1, 0.25),
            (fixture("tone440_8k_mono_alac.m4a"), 8_000, 1, 0.25),
        ];
        for (path, rate, channels, amp) in cases {
            let d = audio::decode_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(d.sample_rate, rate, "{}", path.display());
            assert_eq!(d.channels, channels, "{}", path.display());
            let secs = d.mono.len() as f64 / f64::from(rate);
            assert!((secs - 1.0).abs() < 0.06, "{}: {secs} s", path.display());
            let mid = &d.mono[d.mono.len() / 4..d.mono.len() * 3 / 4];
            let a = goertzel_amp(mid, rate, 440.0);
            assert!((a - amp).abs() < 0.03, "{}: 440 Hz at {a}", path.display());
            let f = zero_crossing_hz(mid, rate);
            assert!((f - 440.0).abs() < 4.4, "{}: {f} Hz", path.display());
        }
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.wav");
        std::fs::write(&empty, b"").unwrap();
        let text = dir.path().join("notes.mp3");
        std::fs::write(
            &text,
            "these are not the droids you are looking for\n".repeat(50),
        )
        .unwrap();
        let corrupt = dir.path().join("corrupt.flac");
        let mut bytes = std::fs::read(fixture("tone440_8k_mono.flac")).unwrap();
        // Keep the header, garble everything after it.
        for (i, b) in bytes.iter_mut().enumerate().skip(200) {
            *b = (i * 31 % 251) as u8;
        }
        std::fs::write(&corrupt, bytes).unwrap();
        let truncated_header = dir.path().join("short.wav");
        std::fs::write(&truncated_header, b"RIFF\x24\x00\x00\x00WAVEfmt ").unwrap();
        let silent = dir.path().join("silent.wav");
        write_wav(&silent, 8000, &[vec![0.0; 8000]]);
        let missing = dir.path().join("missing.mp3");

        let e = audio::decode_file(&empty).unwrap_err();
        assert!(matches!(e, AudioError::EmptyFile), "{e}");
        assert!(e.to_string().contains("empty"));
        let e = audio::decode_file(&text).unwrap_err();
        assert!(
            matches!(
                e,
                AudioError::UnsupportedFormat(_) | AudioError::Corrupt { .. }
            ),
            "{e}"
        );
        let e = audio::decode_file(&corrupt).unwrap_err();
        assert!(
            matches!(e, AudioError::Corrupt { .. } | AudioError::NoAudio),
            "{e}"
        );
        let e = audio::decode_file(&truncated_header).unwrap_err();
        assert!(!e.to_string().is_empty());
        let e = audio::decode_file(&fixture("tone440_opus.ogg")).unwrap_err();
        assert!(matches!(e, AudioError::UnsupportedCodec(_)), "{e}");
        let e = audio::decode_file(&missing).unwrap_err();
        assert!(matches!(e, AudioError::Io(_)), "{e}");
        let e = audio::decode_file_with_limit(&fixture("tone440_8k_mono.flac"), 0).unwrap_err();
        assert!(matches!(e, AudioError::TooLong { max_seconds: 0 }), "{e}");

        // In a playlist: the bad ones are skipped and named, the good one plays.
        let good = fixture("tone440_44k1_stereo.mp3");
        let list = vec![
            empty.clone(),
            text.clone(),
            good,
            corrupt.clone(),
            silent.clone(),
            missing,
            fixture("tone440_opus.ogg"),
        ];
        let r = ChannelRender::render("mixed", &MusicSource::Files(list), -18.0);
        assert!(r.playable);
        assert_eq!(r.tracks.len().min(1), 1);
        assert!(r.tracks.iter().all(|t| t.name == "tone440_44k1_stereo.mp3"));
        let names: Vec<&str> = r.skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 6, "{:?}", r.skipped);
        for p in [&empty, &text, &corrupt, &silent] {
            assert!(names.contains(&p.display().to_string().as_str()));
        }
        let silent_err = &r
            .skipped
            .iter()
            .find(|s| s.name.ends_with("silent.wav"))
            .unwrap();
        assert!(silent_err.error.contains("silent"), "{}", silent_err.error);
        assert!(r.summary().contains("skipped"), "{}", r.summary());
        assert!(longest_quiet_run(&r.pcm, 32) <= 8);
    }

    /// Nothing playable: one second of silence that still encodes, so RTP keeps flowing.
    #[test]
    fn nothing_playable_is_one_second_of_silence() {
        for source in [
            MusicSource::Files(vec![]),
            MusicSource::Files(vec![PathBuf::from("/nonexistent/x.mp3")]),
        ] {
            let r = ChannelRender::render("dead", &source, -18.0);
            assert!(!r.playable);
            assert_eq!(r.len_samples(), 8000);
            assert!(r.pcm.iter().all(|&s| s == 0));
            assert!(r.tracks.is_empty());
            for codec in Codec::G711.iter().copied() {
                let mut want = [0u8; 160];
                codec.encode(&[0i16; 160], &mut want);
                let mut got = [0u8; 160];
                r.fill_payload(codec, 7_999, &mut got);
                assert_eq!(got, want);
            }
            assert!(r.summary().contains("NOT PLAYABLE"));
        }
    }

    #[test]
    fn fill_matches_modulo_reference_across_the_seam() {
        let r = ChannelRender::render("demo", &MusicSource::Demo, -18.0);
        let len = r.len_samples() as u64;
        for start in [0, 1, len - 1, len - 80, len, 3 * len + 5, u64::MAX - 100] {
            let mut pcm = [0i16; 160];
            r.fill_pcm(start, &mut pcm);
            for (i, &s) in pcm.iter().enumerate() {
                let want = r.pcm[((start % len + i as u64) % len) as usize];
                assert_eq!(s, want, "start {start} i {i}");
            }
            for codec in Codec::G711.iter().copied() {
                let mut got = [0u8; 160];
                r.fill_payload(codec, start, &mut got);
                let mut want = [0u8; 160];
                codec.encode(&pcm, &mut want);
                assert_eq!(got, want, "{codec:?} at {start}");
            }
        }
        // Longer than the loop still works (wraps more than once).
        let mut long = vec![0i16; 3 * len as usize];
        r.fill_pcm(10, &mut long);
        assert_eq!(long[len as usize - 10], r.pcm[0]);
        assert_eq!(long[2 * len as usize], r.pcm[10]);
    }

    #[test]
    fn demo_render_is_loud_enough_and_seamless() {
        let r = ChannelRender::render("demo", &MusicSource::Demo, -18.0);
        assert!(r.playable);
        assert_eq!(r.len_samples(), 80_000);
        let l = audio::integrated_lufs(&to_f32(&r.pcm), RATE).unwrap();
        assert!((l + 18.0).abs() < 1.0, "{l} LUFS");
        let steps: Vec<i32> = r
            .pcm
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .collect();
        let max_step = *steps.iter().max().unwrap();
        let seam = (i32::from(r.pcm[0]) - i32::from(r.pcm[r.pcm.len() - 1])).abs();
        assert!(seam * 2 <= max_step, "seam step {seam} vs max {max_step}");
        assert!(longest_quiet_run(&r.pcm, 32) <= 8);
        let ceiling = (audio::ceiling_linear() * 32767.0).round() as i16;
        assert!(r.pcm.iter().all(|s| s.abs() <= ceiling));
    }

    /// The whole pipeline (44.1 kHz stereo → 8 kHz, normalise, crossfade, limiter) lands within
    /// 1 LU of the target, measured on what is served, for a quiet and a hot input.
    #[test]
    fn pipeline_hits_loudness_target() {
        let dir = tempfile::tempdir().unwrap();
        let music = audio::demo_melody(44_100);
        let mut files = Vec::new();
        for (i, gain) in [0.05f32, 1.9].into_iter().enumerate() {
            let ch: Vec<f32> = music.iter().map(|s| (s * gain).clamp(-1.0, 1.0)).collect();
            let p = dir.path().join(format!("{i}.wav"));
            write_wav(&p, 44_100, &[ch.clone(), ch]);
            files.push(p);
        }
        for target in [-18.0, -23.0] {
            let r = ChannelRender::render("loud", &MusicSource::Files(files.clone()), target);
            let l = audio::integrated_lufs(&to_f32(&r.pcm), RATE).unwrap();
            assert!((l - target).abs() < 1.0, "target {target}: {l}");
            let ceiling = (audio::ceiling_linear() * 32767.0).round() as i16;
            assert!(r.pcm.iter().all(|s| s.abs() <= ceiling));
        }
    }

    /// A track shorter than a second is repeated so the loop is at least one second.
    #[test]
    fn short_track_is_repeated_to_one_second() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blip.wav");
        write_wav(&p, 16_000, &[sine(600.0, 16_000, 3_200, 0.3)]); // 200 ms
        let r = ChannelRender::render("short", &MusicSource::Files(vec![p]), -18.0);
        assert!(r.playable, "{:?}", r.skipped);
        assert!(r.len_samples() >= 8000, "{}", r.len_samples());
        assert!(r.tracks.len() >= 5);
        assert!(
            r.tracks
                .windows(2)
                .all(|w| w[0].start_sample < w[1].start_sample)
        );
        assert!(longest_quiet_run(&r.pcm, 32) <= 8);
        assert_eq!(r.track_at(0).unwrap().start_sample, 0);
        let last = r.tracks.last().unwrap();
        assert_eq!(
            r.track_at(last.start_sample + 1).unwrap().start_sample,
            last.start_sample
        );
    }

    #[test]
    fn tracks_keep_playlist_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, f) in [300.0, 400.0, 500.0, 600.0, 700.0].into_iter().enumerate() {
            let p = dir.path().join(format!("t{i}.wav"));
            write_wav(&p, 8000, &[sine(f, 8000, 8000 + i * 800, 0.3)]);
            files.push(p);
        }
        let r = ChannelRender::render("order", &MusicSource::Files(files), -18.0);
        let names: Vec<&str> = r.tracks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t0.wav", "t1.wav", "t2.wav", "t3.wav", "t4.wav"]);
        // And each sits where its tone is.
        for (t, f) in r.tracks.iter().zip([300.0, 400.0, 500.0, 600.0, 700.0]) {
            let s = (t.start_sample + 800) as usize;
            let x = to_f32(&r.pcm[s..s + 4000]);
            assert!((zero_crossing_hz(&x, RATE) - f).abs() < 3.0, "{}", t.name);
        }
    }

    #[test]
    fn expand_folder_lists_audio_sorted_non_recursive() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b.mp3",
            "a.WAV",
            ".hidden.mp3",
            "notes.txt",
            "c.flac",
            "cover.jpg",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.mp3")).unwrap();
        std::fs::write(dir.path().join("sub.mp3/d.mp3"), b"x").unwrap();
        let got: Vec<String> = expand_music_path(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["a.WAV", "b.mp3", "c.flac"]);
        let one = dir.path().join("b.mp3");
        assert_eq!(expand_music_path(&one), vec![one.clone()]);
    }
}
