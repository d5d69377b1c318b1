//! Segments: short renders a call plays once, on its way into or out of a pass (the greeting,
//! the fade-in entries a greeted caller joins a shared pass at, the fade-out before a
//! schedule switch and the fade-in into the new programme after it), each a [`ChannelRender`] with every codec of the [`CodecPlan`], a whole
//! number of 20 ms frames. Made off the packet path; serving one is the same circular copy
//! as serving a pass.
//!
//! The greeting is rendered from its file at every codec's rate. Entries and fade-outs are
//! cut from a pass's 8 kHz PCM; their G.722 and Opus audio is that PCM resampled (rubato) and
//! encoded by an encoder first run over the audio just before the cut ([`PRE_ROLL_MS`]), so
//! its state is the music's, not a cold start's. An entry's flat part is the pass's own
//! 8 kHz samples, so a G.711 caller moves from the entry to the pass without a step.

use std::path::Path;
use std::sync::Arc;

use super::encoded::{CodecPlan, EncodedLoop, G722Loop, OPUS_FRAME_SAMPLES, OpusLoop, Wideband};
use super::{
    ChannelRender, RATE, TrackError, TrackInfo, TrackKind, encode_all, equal_power_in, frame_len,
    quantise,
};
use crate::audio;
use crate::codec::Codec;
use crate::codec::g722::G722Encoder;
use crate::codec::opus::OpusEncoder;

/// The greeting's last this-many ms fade out, so its end never clicks.
pub const GREETING_FADE_OUT_MS: u32 = 50;

/// Silence after the greeting (whole frames): what a shared caller waits in for the next
/// entry (entries are [`ENTRY_EVERY_MS`] apart).
pub const GREETING_SILENCE_MS: u32 = 1000;

/// A pass offers an entry every this many ms of it.
pub const ENTRY_EVERY_MS: u32 = 1000;

/// An entry fades the pass in over this...
pub const ENTRY_FADE_IN_MS: u32 = 100;

/// ...then plays it flat for this, before the caller moves on to the pass itself.
pub const ENTRY_FLAT_MS: u32 = 40;

/// Audio before a cut that the wideband encoders run over first (whole frames).
pub const PRE_ROLL_MS: u32 = 200;

/// Media-clock ticks (10 ms) per 20 ms frame.
const TICKS_PER_FRAME: u64 = 2;

/// 8 kHz samples per 10 ms tick.
const SAMPLES_PER_TICK: u64 = RATE as u64 / 100;

fn ms_frames(ms: u32) -> usize {
    ms.div_ceil(super::FRAME_MS) as usize
}

/// A segment at one rate: the audio before it (whole frames, for the encoders' warm-up) and
/// the segment itself (whole frames).
struct AtRate {
    pre: Vec<f32>,
    body: Vec<f32>,
}

impl ChannelRender {
    /// The greeting from `path`: the clip normalised to `lufs`, trimmed, its last
    /// [`GREETING_FADE_OUT_MS`] faded out, then at least [`GREETING_SILENCE_MS`] of silence,
    /// whole frames, encoded with every codec `plan` enables (each rendered from the file at
    /// its own rate). An error names what is wrong with the file (the caller logs it and
    /// plays no greeting).
    pub fn greeting(path: &Path, lufs: f64, plan: &CodecPlan) -> Result<ChannelRender, TrackError> {
        let clip_8k = super::prepare_track(path, lufs, RATE)?;
        let frames = clip_8k.len().div_ceil(frame_len(RATE)) + ms_frames(GREETING_SILENCE_MS);
        let shape = |mut clip: Vec<f32>, rate: u32| -> AtRate {
            let fade = (u64::from(GREETING_FADE_OUT_MS) * u64::from(rate) / 1000) as usize;
            let n = clip.len();
            let fade = fade.min(n);
            for (j, s) in clip[n - fade..].iter_mut().enumerate() {
                *s *= equal_power_in(fade - 1 - j, fade);
            }
            clip.resize(frames * frame_len(rate), 0.0);
            AtRate {
                pre: Vec::new(),
                body: clip,
            }
        };
        let lufs_measured = audio::integrated_lufs(&clip_8k, RATE);
        let body_8k = shape(clip_8k, RATE).body;
        let mut wideband = Wideband::default();
        for codec in plan.wideband() {
            let rate = codec.audio_rate();
            let clip = super::prepare_track(path, lufs, rate)?;
            if let Some(encoded) = encode_segment(codec, &shape(clip, rate), plan) {
                wideband.insert(encoded);
            }
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let track = TrackInfo {
            name: name.clone(),
            start_sample: 0,
            len_samples: body_8k.len() as u64,
            kind: TrackKind::Announcement,
        };
        let mut greeting = segment_render(&name, &body_8k, wideband, track, plan);
        greeting.lufs = lufs_measured;
        Ok(greeting)
    }

    /// This pass faded out from `position_ticks` (a media-clock tick into the pass, taken
    /// modulo its length) over `fade_ms`, then a frame of silence: what a call plays when a
    /// schedule switches at once, before the new programme starts. Whole frames; every codec
    /// `plan` enables, the wideband ones from this pass's 8 kHz PCM resampled and encoded
    /// with pre-roll from the audio before `position_ticks`.
    pub fn fade_out_segment(
        &self,
        position_ticks: u64,
        fade_ms: u32,
        plan: &CodecPlan,
    ) -> ChannelRender {
        let fade = (u64::from(fade_ms.max(super::CROSSFADE_MS)) * u64::from(RATE) / 1000) as usize;
        let frames = fade.div_ceil(frame_len(RATE)) + 1;
        let gain = move |j: usize| {
            if j < fade {
                equal_power_in(fade - 1 - j, fade)
            } else {
                0.0
            }
        };
        self.cut_segment(position_ticks, frames, gain, plan)
    }

    /// This pass from `position_ticks` (modulo its length) faded in from silence over
    /// `fade_ms`, then played flat for `flat_ms` (both rounded up to whole frames together):
    /// how a call enters a pass without a click, after silence (a greeting's end, a schedule
    /// switch's fade-out), before it goes on with the pass itself at `position_ticks` plus
    /// the segment's [`ChannelRender::len_ticks`]. The flat part is the pass's own 8 kHz
    /// samples; every codec `plan` enables, as [`ChannelRender::fade_out_segment`].
    pub fn fade_in_segment(
        &self,
        position_ticks: u64,
        fade_ms: u32,
        flat_ms: u32,
        plan: &CodecPlan,
    ) -> ChannelRender {
        let fade = (u64::from(fade_ms.max(super::CROSSFADE_MS)) * u64::from(RATE) / 1000) as usize;
        let frames = (fade + (flat_ms * RATE / 1000) as usize)
            .div_ceil(frame_len(RATE))
            .max(1);
        let gain = move |j: usize| {
            if j < fade {
                equal_power_in(j, fade)
            } else {
                1.0
            }
        };
        self.cut_segment(position_ticks, frames, gain, plan)
    }

    /// This pass with its entries: at every [`ENTRY_EVERY_MS`] of it, a
    /// [`ChannelRender::fade_in_segment`] of [`ENTRY_FADE_IN_MS`] and [`ENTRY_FLAT_MS`], for
    /// a greeted caller to join a shared channel at ([`ChannelRender::entry_after`]). Only
    /// shared channels with a greeting need them (they cost about 7 % of the loop's memory).
    pub fn with_entries(&self, plan: &CodecPlan) -> ChannelRender {
        let every = u64::from(ENTRY_EVERY_MS / 10);
        let entries: Vec<(u64, Arc<ChannelRender>)> = (0..self.len_ticks())
            .step_by(every as usize)
            .map(|at| {
                let segment = self.fade_in_segment(at, ENTRY_FADE_IN_MS, ENTRY_FLAT_MS, plan);
                (at, Arc::new(segment))
            })
            .collect();
        let mut with = self.with_wideband(self.wideband.clone(), plan);
        with.entries = entries.into();
        with
    }

    /// The first entry at or after `position_ticks` (a position in the pass in media-clock
    /// ticks, taken modulo its length; past the last entry, the first one round the loop),
    /// as its position in the pass and its segment; `None` when the pass has no entries
    /// ([`ChannelRender::with_entries`]).
    pub fn entry_after(&self, position_ticks: u64) -> Option<(u64, Arc<ChannelRender>)> {
        let len = self.len_ticks();
        let first = self.entries.first()?;
        if len == 0 {
            return None;
        }
        let within = position_ticks % len;
        let i = self.entries.partition_point(|(at, _)| *at < within);
        let (at, segment) = self.entries.get(i).unwrap_or(first);
        Some((*at, Arc::clone(segment)))
    }

    /// The loop's length in 10 ms media-clock ticks (an 8 kHz render; two per frame).
    pub fn len_ticks(&self) -> u64 {
        self.frames() * TICKS_PER_FRAME
    }

    /// `frames` frames of this pass from `position_ticks` on (circularly), each sample `j`
    /// scaled by `gain(j)` (at 8 kHz; the same instants at the other rates).
    fn cut_segment(
        &self,
        position_ticks: u64,
        frames: usize,
        gain: impl Fn(usize) -> f32,
        plan: &CodecPlan,
    ) -> ChannelRender {
        let frame = frame_len(RATE);
        let pre_len = ms_frames(PRE_ROLL_MS) * frame;
        let body_len = frames * frame;
        let start = position_ticks % self.len_ticks().max(1) * SAMPLES_PER_TICK;
        let loop_len = self.pcm.len() as u64;
        // Pre-roll, the segment and a frame after it (so the resampler sees past its end).
        let window: Vec<f32> = (0..pre_len + body_len + frame)
            .map(|i| {
                let at = (start + loop_len * 2 + i as u64 - pre_len as u64) % loop_len;
                f32::from(self.pcm[at as usize]) / 32767.0
            })
            .collect();
        let at_rate = |rate: u32| -> Option<AtRate> {
            let scaled = if rate == RATE {
                window.clone()
            } else {
                audio::resample(&window, RATE, rate).ok()?
            };
            let per = frame_len(rate) / frame;
            let (pre, rest) = scaled.split_at((pre_len * per).min(scaled.len()));
            let mut body: Vec<f32> = rest.iter().take(body_len * per).copied().collect();
            body.resize(body_len * per, 0.0);
            let step = rate / RATE;
            for (j, s) in body.iter_mut().enumerate() {
                *s *= gain(j / step.max(1) as usize);
            }
            Some(AtRate {
                pre: pre.to_vec(),
                body,
            })
        };
        let body_8k = at_rate(RATE).map(|a| a.body).unwrap_or_default();
        let mut wideband = Wideband::default();
        for codec in plan.wideband() {
            if let Some(encoded) =
                at_rate(codec.audio_rate()).and_then(|a| encode_segment(codec, &a, plan))
            {
                wideband.insert(encoded);
            }
        }
        let track = self.track_at(start).map_or_else(
            || TrackInfo {
                name: self.name.clone(),
                start_sample: 0,
                len_samples: body_len as u64,
                kind: TrackKind::Music,
            },
            |t| TrackInfo {
                start_sample: 0,
                len_samples: body_len as u64,
                ..t.clone()
            },
        );
        segment_render(&self.name, &body_8k, wideband, track, plan)
    }
}

/// A segment's render from its 8 kHz audio and its wideband encodings: the G.711 codecs
/// `plan` enables, one track.
fn segment_render(
    name: &str,
    body_8k: &[f32],
    wideband: Wideband,
    track: TrackInfo,
    plan: &CodecPlan,
) -> ChannelRender {
    let pcm: Vec<i16> = body_8k.iter().map(|&s| quantise(s)).collect();
    let mut encoded = encode_all(&pcm, RATE);
    encoded.retain(|(c, _)| plan.enables(*c));
    ChannelRender {
        name: name.to_owned(),
        rate: RATE,
        pcm: pcm.into(),
        encoded: encoded.into(),
        wideband,
        tracks: vec![track],
        skipped: Vec::new(),
        playable: true,
        lufs: None,
        entries: Arc::from(Vec::new()),
    }
}

/// `a` encoded with `codec` after a warm-up over `a.pre`; `None` for a G.711 codec or an Opus
/// encoder that fails (the segment then serves that codec silence, as a pass would).
fn encode_segment(codec: Codec, a: &AtRate, plan: &CodecPlan) -> Option<EncodedLoop> {
    let pre: Vec<i16> = a.pre.iter().map(|&s| quantise(s)).collect();
    let body: Vec<i16> = a.body.iter().map(|&s| quantise(s)).collect();
    match codec {
        Codec::G722 => {
            let mut encoder = G722Encoder::new();
            let mut scratch = vec![0u8; pre.len() / 2];
            encoder.encode(&pre[..scratch.len() * 2], &mut scratch);
            let mut bytes = vec![0u8; body.len() / 2];
            encoder.encode(&body[..bytes.len() * 2], &mut bytes);
            G722Loop::from_bytes(bytes).map(EncodedLoop::G722)
        }
        Codec::Opus => {
            let mut encoder = OpusEncoder::new(plan.opus_config()).ok()?;
            let mut packet = [0u8; 1500];
            for frame in pre.chunks_exact(OPUS_FRAME_SAMPLES) {
                encoder.encode_frame(frame, &mut packet).ok()?;
            }
            let mut lengths = Vec::new();
            let mut data = Vec::new();
            for frame in body.chunks_exact(OPUS_FRAME_SAMPLES) {
                let n = encoder
                    .encode_frame(frame, &mut packet)
                    .ok()?
                    .min(packet.len());
                lengths.push(u16::try_from(n).ok()?);
                data.extend_from_slice(&packet[..n]);
            }
            OpusLoop::from_parts(&lengths, data).map(EncodedLoop::Opus)
        }
        Codec::Pcmu | Codec::Pcma => None,
    }
}
