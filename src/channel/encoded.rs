//! The wideband codecs' loops: G.722 encoded from a 16 kHz render, Opus from a 48 kHz render,
//! each rendered from the source files (not upsampled from the 8 kHz loop) with the same
//! loudness, trims, crossfades and limiter, fitted to the 8 kHz loop's frame count, encoded
//! once per channel, and cut into packets for every call on it.
//!
//! Owns [`CodecPlan`] (which codecs a channel's renders are made for, and the encoder
//! settings), the encoded loops [`G722Loop`] and [`OpusLoop`] and how a packet is cut from
//! each, [`Wideband`] (what a [`super::ChannelRender`] carries of them) and
//! [`render_encoded`] (render at the codec's rate, encode, drop the PCM).
//!
//! # Pre-roll, and where the one splice goes
//!
//! G.722 (ADPCM with adaptive predictors and a QMF) and Opus (look-ahead, prediction, rate
//! control) are stateful: a decoder's state at a packet is what the packets before it made.
//! A caller's decoder reaches the loop's start from the loop's end, so the encoder must not
//! start cold there: it first encodes the second of music before its starting point (the
//! whole loop, repeated, when it is shorter) and throws that away, then encodes the loop once
//! round, across the seam. The encoder is then warm, but a circular bitstream still has one
//! splice, where the packets encoded last meet those encoded first: ADPCM trajectories from
//! two different states never coincide bit for bit (measured: two passes of the demo differ
//! in 95 % of their G.722 bytes), so the decoder's state there is not quite the one the
//! encoder assumed, and it re-converges over a few tens of milliseconds (as it does when a
//! call joins mid-loop). The encoding therefore starts at the loop's quietest 20 ms frame,
//! where that transient is smallest, not at the seam: at the seam itself the encoding runs
//! straight through, so a caller's decoder sees one continuous signal as the loop wraps.
//!
//! # Memory (30-minute loop)
//!
//! The 16 and 48 kHz PCM is dropped once encoded: G.722 keeps 80 bytes per 10 ms (14.4 MB),
//! Opus its frames (at 40 kb/s, 9 MB) and a 4-byte end offset per frame (360 kB), against
//! 57.6 MB and 172.8 MB of 16-bit PCM.

use std::fmt;
use std::sync::Arc;

use super::compose::Composition;
use super::{LoopLength, Rendered, circular_copy, quantise};
use crate::codec::Codec;
use crate::codec::g722::G722Encoder;
use crate::codec::opus::{self, OpusEncoder, OpusEncoderConfig, OpusError};

/// The default Opus bitrate, in bits per second: music at 48 kHz, mono.
pub const DEFAULT_OPUS_BITRATE: u32 = opus::DEFAULT_BITRATE;

/// G.722 bytes per 10 ms media-clock tick (64 kbit/s).
pub const G722_BYTES_PER_TICK: usize = 80;

/// Samples of 48 kHz audio in one Opus frame (20 ms, the only frame size mohd sends).
pub const OPUS_FRAME_SAMPLES: usize = opus::FRAME_SAMPLES;

/// Largest Opus packet (RFC 6716 §3.4): the encoder's output buffer.
const OPUS_MAX_FRAME_BYTES: usize = opus::MAX_FRAME_BYTES;

/// How much of the loop's tail the encoders run through before its start (see `# Pre-roll`).
const PRE_ROLL_MS: usize = 1000;

/// Which codecs a channel is rendered for, and how they are encoded: the codecs `[rtp]
/// codecs` enables and `[rtp] opus_bitrate`. A codec not in the plan is neither rendered nor
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecPlan {
    codecs: Vec<Codec>,
    opus_bitrate: u32,
}

impl Default for CodecPlan {
    /// Every codec, Opus at [`DEFAULT_OPUS_BITRATE`].
    fn default() -> CodecPlan {
        CodecPlan::new(&Codec::ALL, DEFAULT_OPUS_BITRATE)
    }
}

impl CodecPlan {
    pub fn new(codecs: &[Codec], opus_bitrate: u32) -> CodecPlan {
        let mut unique = Vec::new();
        for &c in codecs {
            if !unique.contains(&c) {
                unique.push(c);
            }
        }
        CodecPlan {
            codecs: unique,
            opus_bitrate,
        }
    }

    /// The plan the config asks for: `[rtp] codecs` and `opus_bitrate`.
    pub fn from_config(config: &crate::config::Config) -> CodecPlan {
        CodecPlan::new(&config.rtp.codecs, config.rtp.opus_bitrate)
    }

    /// Whether `codec` is enabled.
    pub fn enables(&self, codec: Codec) -> bool {
        self.codecs.contains(&codec)
    }

    /// The enabled codecs that need a render of their own (G.722, Opus), in that order: the
    /// cheaper first, so it is ready sooner.
    pub fn wideband(&self) -> impl Iterator<Item = Codec> + '_ {
        [Codec::G722, Codec::Opus]
            .into_iter()
            .filter(|c| self.enables(*c))
    }

    /// How the channel's Opus frames are encoded: the music settings of
    /// [`OpusEncoderConfig::default`] at the plan's bitrate.
    pub fn opus_config(&self) -> OpusEncoderConfig {
        OpusEncoderConfig {
            bitrate: self.opus_bitrate,
            ..OpusEncoderConfig::default()
        }
    }

    /// The settings an encoding of `codec` depends on besides the music, as bytes for the
    /// render cache's key (a changed Opus bitrate is another entry).
    pub fn settings_key(&self, codec: Codec) -> Vec<u8> {
        match codec {
            Codec::Opus => {
                let c = self.opus_config();
                let mut key = c.bitrate.to_le_bytes().to_vec();
                key.extend([c.complexity, u8::from(c.inband_fec), u8::from(c.cbr)]);
                key
            }
            Codec::Pcmu | Codec::Pcma | Codec::G722 => Vec::new(),
        }
    }
}

/// A loop encoded with G.722: 80 bytes per 10 ms, cut anywhere on a byte (G.722 has no
/// frames; its packets are any number of 10 ms ticks).
#[derive(Clone, PartialEq, Eq)]
pub struct G722Loop {
    bytes: Vec<u8>,
}

impl fmt::Debug for G722Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("G722Loop")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl G722Loop {
    /// Encodes a 16 kHz loop with pre-roll, from its quietest frame round (see the module's
    /// `# Pre-roll`). An odd last sample is dropped (a byte holds two samples; a loop fitted
    /// to whole frames has none).
    pub fn encode(pcm16k: &[i16]) -> G722Loop {
        let pairs = pcm16k.len() / 2;
        let pcm = &pcm16k[..2 * pairs];
        let mut bytes = vec![0u8; pairs];
        if pairs == 0 {
            return G722Loop { bytes };
        }
        let frame = 320;
        let splice = quietest_frame(pcm.len() / frame, |i| {
            energy(
                pcm[i * frame..(i + 1) * frame]
                    .iter()
                    .map(|&s| f32::from(s)),
            )
        }) * frame
            / 2;
        let mut encoder = G722Encoder::new();
        let mut scratch = vec![0u8; pairs];
        for (start, end) in cyclic_before(pairs, splice, PRE_ROLL_MS * 8) {
            encoder.encode(&pcm[2 * start..2 * end], &mut scratch[start..end]);
        }
        encoder.encode(&pcm[2 * splice..], &mut bytes[splice..]);
        encoder.encode(&pcm[..2 * splice], &mut bytes[..splice]);
        G722Loop { bytes }
    }

    /// A loop from stored bytes; `None` when there are none.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<G722Loop> {
        (!bytes.is_empty()).then_some(G722Loop { bytes })
    }

    /// The encoded loop.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The loop's length in 20 ms frames (160 bytes each).
    pub fn frames(&self) -> u64 {
        (self.bytes.len() / (2 * G722_BYTES_PER_TICK)) as u64
    }

    /// The payload for ticks `tick .. tick + ticks`, circular; 0 when `out` is too short.
    fn fill(&self, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        let len = ticks as usize * G722_BYTES_PER_TICK;
        let Some(out) = out.get_mut(..len) else {
            return 0;
        };
        circular_copy(&self.bytes, tick * G722_BYTES_PER_TICK as u64, out);
        len
    }
}

/// One 20 ms frame of 48 kHz mono in, one packet out: the Opus encoder, or a test's.
pub trait FrameEncoder {
    type Error: fmt::Display;
    /// Encodes [`OPUS_FRAME_SAMPLES`] samples into `out`, returning the packet's length.
    fn encode_frame(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, Self::Error>;
}

impl FrameEncoder for OpusEncoder {
    type Error = OpusError;
    fn encode_frame(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        OpusEncoder::encode_frame(self, pcm, out)
    }
}

/// A loop encoded as Opus frames: one buffer of packets and where each ends.
#[derive(Clone, PartialEq, Eq)]
pub struct OpusLoop {
    data: Vec<u8>,
    /// `ends[i]` is the end of frame `i` in `data` (its start is `ends[i - 1]`, or 0).
    ends: Vec<u32>,
}

impl fmt::Debug for OpusLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusLoop")
            .field("frames", &self.ends.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl OpusLoop {
    /// Encodes a 48 kHz loop (limited samples, quantised here frame by frame so no 16-bit copy
    /// of the whole loop is made) with pre-roll, from its quietest frame round (see the
    /// module's `# Pre-roll`). The loop is cut to whole frames (a loop fitted to whole frames
    /// loses nothing).
    pub fn encode<E: FrameEncoder>(samples: &[f32], encoder: &mut E) -> Result<OpusLoop, E::Error> {
        let frames = samples.len() / OPUS_FRAME_SAMPLES;
        let splice = quietest_frame(frames, |i| {
            let at = i * OPUS_FRAME_SAMPLES;
            energy(samples[at..at + OPUS_FRAME_SAMPLES].iter().copied())
        });
        let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
        let mut packet = [0u8; OPUS_MAX_FRAME_BYTES];
        let mut frame = |i: usize, encoder: &mut E, packet: &mut [u8]| {
            let at = i * OPUS_FRAME_SAMPLES;
            for (o, &s) in pcm.iter_mut().zip(&samples[at..at + OPUS_FRAME_SAMPLES]) {
                *o = quantise(s);
            }
            encoder.encode_frame(&pcm, packet)
        };
        for (start, end) in cyclic_before(frames, splice, PRE_ROLL_MS / 20) {
            for i in start..end {
                frame(i, encoder, &mut packet)?;
            }
        }
        // Encoded from the splice round, then turned so that frame 0 comes first.
        let mut data = Vec::new();
        let mut lengths = Vec::with_capacity(frames);
        let mut first_frame_at = 0;
        for i in (splice..frames).chain(0..splice) {
            if i == 0 {
                first_frame_at = data.len();
            }
            let n = frame(i, encoder, &mut packet)?.min(packet.len());
            data.extend_from_slice(&packet[..n]);
            lengths.push(n as u16);
        }
        data.rotate_left(first_frame_at);
        lengths.rotate_left(frames - splice);
        data.shrink_to_fit();
        Ok(OpusLoop::from_parts(&lengths, data).unwrap_or(OpusLoop {
            data: Vec::new(),
            ends: Vec::new(),
        }))
    }

    /// A loop from stored packets and their lengths; `None` when there are none or the
    /// lengths do not add up to `data`.
    pub fn from_parts(lengths: &[u16], data: Vec<u8>) -> Option<OpusLoop> {
        let mut ends = Vec::with_capacity(lengths.len());
        let mut end = 0u32;
        for &n in lengths {
            end = end.checked_add(u32::from(n))?;
            ends.push(end);
        }
        let fits = !ends.is_empty() && u64::from(end) == data.len() as u64;
        fits.then_some(OpusLoop { data, ends })
    }

    /// Frame `i`'s packet (modulo the frame count).
    pub fn frame(&self, i: u64) -> &[u8] {
        let n = self.ends.len() as u64;
        if n == 0 {
            return &[];
        }
        let i = (i % n) as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends[i] as usize;
        self.data.get(start..end).unwrap_or(&[])
    }

    /// Every packet's length, in order (for the render cache).
    pub fn lengths(&self) -> impl Iterator<Item = u16> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let n = end - start;
            start = end;
            u16::try_from(n).unwrap_or(u16::MAX)
        })
    }

    /// All packets back to back.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The loop's length in 20 ms frames.
    pub fn frames(&self) -> u64 {
        self.ends.len() as u64
    }

    /// The packet for ticks `tick, tick + 1` (one 20 ms frame); 0 for other than 2 ticks or
    /// when `out` is too short.
    fn fill(&self, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        if ticks != 2 {
            return 0;
        }
        let packet = self.frame(tick / 2);
        let Some(out) = out.get_mut(..packet.len()) else {
            return 0;
        };
        out.copy_from_slice(packet);
        packet.len()
    }
}

/// One codec's encoded loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedLoop {
    G722(G722Loop),
    Opus(OpusLoop),
}

impl EncodedLoop {
    pub fn codec(&self) -> Codec {
        match self {
            EncodedLoop::G722(_) => Codec::G722,
            EncodedLoop::Opus(_) => Codec::Opus,
        }
    }

    /// The loop's length in 20 ms frames.
    pub fn frames(&self) -> u64 {
        match self {
            EncodedLoop::G722(g) => g.frames(),
            EncodedLoop::Opus(o) => o.frames(),
        }
    }
}

/// The wideband encodings a channel's render carries: those enabled whose render has
/// completed and whose encoder did not fail.
#[derive(Debug, Clone, Default)]
pub struct Wideband {
    g722: Option<Arc<G722Loop>>,
    opus: Option<Arc<OpusLoop>>,
}

impl Wideband {
    /// Adds (or replaces) one codec's loop.
    pub fn insert(&mut self, encoded: EncodedLoop) {
        match encoded {
            EncodedLoop::G722(g) => self.g722 = Some(Arc::new(g)),
            EncodedLoop::Opus(o) => self.opus = Some(Arc::new(o)),
        }
    }

    /// Whether there is a loop for `codec`.
    pub fn has(&self, codec: Codec) -> bool {
        match codec {
            Codec::G722 => self.g722.is_some(),
            Codec::Opus => self.opus.is_some(),
            Codec::Pcmu | Codec::Pcma => false,
        }
    }

    pub fn g722(&self) -> Option<&G722Loop> {
        self.g722.as_deref()
    }

    pub fn opus(&self) -> Option<&OpusLoop> {
        self.opus.as_deref()
    }

    /// See [`super::ChannelRender::fill_packet`].
    /// A codec without a loop (its render not finished yet, or its encoder failed) gets
    /// encoded silence, so RTP keeps flowing on the call's clock ("never silent on the wire":
    /// a PBX's RTP timeout must not hang up a caller answered during start-up).
    pub(super) fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        match codec {
            Codec::G722 => match &self.g722 {
                Some(g) => g.fill(tick, ticks, out),
                None => g722_silence().fill(tick, ticks, out),
            },
            Codec::Opus => match (&self.opus, opus_silence()) {
                (Some(o), _) => o.fill(tick, ticks, out),
                (None, Some(silence)) => silence.fill(tick, ticks, out),
                (None, None) => 0,
            },
            Codec::Pcmu | Codec::Pcma => 0,
        }
    }
}

/// One second of digital silence, encoded once per process (as a loop, so it wraps without a
/// discontinuity like any channel's).
const SILENCE_FRAMES: usize = 50;

fn g722_silence() -> &'static G722Loop {
    static SILENCE: std::sync::OnceLock<G722Loop> = std::sync::OnceLock::new();
    SILENCE.get_or_init(|| G722Loop::encode(&[0; SILENCE_FRAMES * 320]))
}

/// `None` only if libopus cannot make an encoder at all (then no Opus call can be served).
fn opus_silence() -> Option<&'static OpusLoop> {
    static SILENCE: std::sync::OnceLock<Option<OpusLoop>> = std::sync::OnceLock::new();
    SILENCE
        .get_or_init(|| {
            let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).ok()?;
            OpusLoop::encode(&[0.0; SILENCE_FRAMES * OPUS_FRAME_SAMPLES], &mut encoder).ok()
        })
        .as_ref()
}

/// `composition` rendered at `codec`'s audio rate, fitted to `frames` 20 ms frames (the 8 kHz
/// loop's), and encoded; the PCM is dropped. `None` when `codec` is not a wideband codec or
/// its encoder fails (logged): the channel then plays without it.
///
/// CPU-heavy (the 48 kHz render is about six times the 8 kHz one); call it off any real-time
/// path.
pub fn render_encoded(
    name: &str,
    composition: &Composition,
    codec: Codec,
    frames: u64,
    plan: &CodecPlan,
) -> Option<EncodedLoop> {
    if codec.is_g711() {
        return None;
    }
    let rate = codec.audio_rate();
    let rendered = Rendered::make(name, composition, rate, LoopLength::Frames(frames));
    let encoded = encode_rendered(codec, rendered, plan);
    if let Err(error) = &encoded {
        tracing::error!(channel = name, codec = codec.config_name(), %error, "cannot encode the channel's loop; calls on it cannot use this codec");
    }
    encoded.ok()
}

/// The audio [`render_encoded`] encodes for `codec`: `composition` rendered at the codec's
/// audio rate and fitted to `frames` 20 ms frames, as i16. What a caller on that codec should
/// hear; the tests and the quality benchmark compare what callers decode against it.
pub fn reference_pcm(name: &str, composition: &Composition, codec: Codec, frames: u64) -> Vec<i16> {
    let rate = codec.audio_rate();
    let rendered = Rendered::make(name, composition, rate, LoopLength::Frames(frames));
    rendered.samples.iter().map(|&s| quantise(s)).collect()
}

fn encode_rendered(
    codec: Codec,
    rendered: Rendered,
    plan: &CodecPlan,
) -> Result<EncodedLoop, String> {
    match codec {
        Codec::G722 => {
            let pcm: Vec<i16> = rendered.samples.iter().map(|&s| quantise(s)).collect();
            drop(rendered);
            Ok(EncodedLoop::G722(G722Loop::encode(&pcm)))
        }
        Codec::Opus => {
            let mut encoder = OpusEncoder::new(plan.opus_config()).map_err(|e| e.to_string())?;
            let encoded = OpusLoop::encode(&rendered.samples, &mut encoder);
            encoded.map(EncodedLoop::Opus).map_err(|e| e.to_string())
        }
        Codec::Pcmu | Codec::Pcma => Err("not a wideband codec".to_owned()),
    }
}

/// The ranges of `0..len` that make the `n` items before index `at` of a loop of `len` items,
/// earliest first (whole loops among them when `n` is longer than the loop).
fn cyclic_before(len: usize, at: usize, n: usize) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    if len == 0 {
        return ranges;
    }
    let (mut end, mut need) = (at.min(len), n);
    while need > 0 {
        if end == 0 {
            end = len;
        }
        let take = need.min(end);
        ranges.push((end - take, end));
        end -= take;
        need -= take;
    }
    ranges.reverse();
    ranges
}

/// Frames after a splice that its transient reaches (the decoder re-converges within about
/// 100 ms).
const SPLICE_FRAMES: usize = 5;

/// The frame among `frames` that starts the quietest [`SPLICE_FRAMES`] (circularly; the first
/// of equals), given each frame's energy; 0 when there are none.
fn quietest_frame(frames: usize, energy_of: impl Fn(usize) -> f64) -> usize {
    let energies: Vec<f64> = (0..frames).map(energy_of).collect();
    let span = |i: usize| -> f64 {
        (i..i + SPLICE_FRAMES.min(frames))
            .map(|j| energies[j % frames])
            .sum()
    };
    (0..frames)
        .map(|i| (i, span(i)))
        .fold(
            (0, f64::INFINITY),
            |best, x| if x.1 < best.1 { x } else { best },
        )
        .0
}

fn energy(samples: impl Iterator<Item = f32>) -> f64 {
    samples.map(|s| f64::from(s) * f64::from(s)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::RATE;
    use crate::codec::g722::G722Decoder;

    #[test]
    fn a_codec_not_encoded_yet_is_served_silence_on_its_clock() {
        let none = Wideband::default();
        let mut buf = [0u8; 1500];
        let mut g722 = G722Decoder::new();
        let mut pcm = vec![0i16; 640];
        let mut opus = crate::codec::opus::OpusDecoder::new(48_000).expect("decoder");
        let mut pcm48 = vec![0i16; 1920];
        // Three seconds: across the silence loop's own wrap.
        for tick in (0..300).step_by(2) {
            let n = none.fill_packet(Codec::G722, tick, 2, &mut buf);
            assert_eq!(n, 160);
            let samples = g722.decode(&buf[..n], &mut pcm);
            assert!(pcm[..samples].iter().all(|s| s.abs() < 64), "tick {tick}");
            let n = none.fill_packet(Codec::Opus, tick, 2, &mut buf);
            assert!(n > 0 && n < 100, "tick {tick}: {n} bytes");
            let samples = opus.decode(&buf[..n], &mut pcm48).expect("decodes");
            assert_eq!(samples, 960);
            assert!(pcm48[..samples].iter().all(|s| s.abs() < 64), "tick {tick}");
        }
    }

    /// A render's limited samples at `rate`, fitted to `frames` (or whole frames).
    pub(crate) fn demo_at(rate: u32, length: LoopLength) -> Vec<f32> {
        let demo = Composition::playlist(crate::channel::MusicSource::Demo, -18.0);
        Rendered::make("t", &demo, rate, length).samples
    }

    /// Normalised cross-correlation of `b` against `a` with `b` lagging by `lag` samples.
    pub(crate) fn xcorr(a: &[f64], b: &[f64], lag: usize) -> f64 {
        let n = a.len().min(b.len().saturating_sub(lag));
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for i in 0..n {
            let (x, y) = (a[i], b[i + lag]);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa * bb).sqrt().max(1e-12)
    }

    /// The lag (up to `max_lag`) at which `b` best matches `a`, and the correlation there.
    pub(crate) fn best_lag(a: &[f64], b: &[f64], max_lag: usize) -> (usize, f64) {
        (0..=max_lag)
            .map(|lag| (lag, xcorr(a, b, lag)))
            .fold((0, f64::MIN), |best, x| if x.1 > best.1 { x } else { best })
    }

    pub(crate) fn to_f64(x: &[i16]) -> Vec<f64> {
        x.iter().map(|&s| f64::from(s)).collect()
    }

    /// SNR in dB of `played` (lagging by `lag`) against the circular `reference` over `half`
    /// samples either side of `at`.
    pub(crate) fn snr_db(
        played: &[f64],
        reference: &[f64],
        lag: usize,
        at: usize,
        half: usize,
    ) -> f64 {
        let n = reference.len();
        let (mut err, mut sig) = (0.0, 0.0);
        for i in at - half..at + half {
            err += (played[i + lag] - reference[i % n]).powi(2);
            sig += reference[i % n].powi(2);
        }
        10.0 * (sig / f64::max(err, 1e-9)).log10()
    }

    pub(crate) fn max_step(x: &[f64]) -> f64 {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f64::max)
    }

    /// Writes each frame's index into its packet (little-endian u32), so a test can see which
    /// frame a packet is; fails at frame `fail_at` if set.
    pub(crate) struct IndexEncoder {
        next: u32,
        pub(crate) fail_at: Option<u32>,
    }

    impl IndexEncoder {
        pub(crate) fn new() -> IndexEncoder {
            IndexEncoder {
                next: 0,
                fail_at: None,
            }
        }
    }

    impl FrameEncoder for IndexEncoder {
        type Error = String;
        fn encode_frame(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, String> {
            assert_eq!(pcm.len(), OPUS_FRAME_SAMPLES);
            if self.fail_at == Some(self.next) {
                return Err("refused".to_owned());
            }
            out[..4].copy_from_slice(&self.next.to_le_bytes());
            // Packets of varying length, as Opus makes.
            let n = 4 + (self.next % 7) as usize;
            out[4..n].fill(0xAB);
            self.next += 1;
            Ok(n)
        }
    }

    /// The loop decoded twice in a row by one decoder is one continuous signal: the music
    /// (at G.722's delay), no click at the wrap, and after the wrap the decoder is where it
    /// would be had it played the loop forever (the third pass decodes as the second).
    #[test]
    fn g722_loop_decodes_continuously_across_the_wrap() {
        let pcm: Vec<i16> = demo_at(16_000, LoopLength::WholeFrames)
            .iter()
            .map(|&s| quantise(s))
            .collect();
        assert_eq!(pcm.len() % 320, 0);
        let g = G722Loop::encode(&pcm);
        assert_eq!(g.bytes().len(), pcm.len() / 2);
        assert_eq!(g.frames(), pcm.len() as u64 / 320);

        let mut dec = G722Decoder::new();
        let mut passes = vec![vec![0i16; pcm.len()]; 3];
        for pass in &mut passes {
            dec.decode(g.bytes(), pass);
        }
        let played: Vec<f64> = passes.concat().iter().map(|&s| f64::from(s)).collect();
        let reference = to_f64(&pcm);
        // Correlation with the render over the second pass, at the codec's delay.
        let second = &played[pcm.len()..2 * pcm.len()];
        let (delay, corr) = best_lag(&reference, second, 64);
        assert!(corr > 0.98, "G.722 decode correlates at {corr}");
        assert!(delay < 40, "delay {delay}");
        // And in every second of it, one of them straddling the wrap.
        let twice = [&reference[..], &reference[..]].concat();
        for start in (pcm.len() / 2 + 8_000..pcm.len() * 3 / 2 - 16_000).step_by(16_000) {
            let c = xcorr(&twice[start..start + 16_000], &played[start..], delay);
            assert!(c > 0.98, "block at {start}: {c}");
        }
        // Steady state: the decoder enters every pass after the first in the same state.
        assert_eq!(passes[1], passes[2]);
        // Across the wrap the decoded audio follows the render's as closely as it does inside
        // the loop: the codec's error over 20 ms either side of the seam, against the same
        // measure at every other frame boundary.
        let n = pcm.len();
        let snr_at = |at: usize| snr_db(&played, &reference, delay, at, 320);
        let mut inside: Vec<f64> = (1..n / 640).map(|k| snr_at(n + 640 * k)).collect();
        inside.sort_by(f64::total_cmp);
        let median = inside[inside.len() / 2];
        let wrap_snr = snr_at(n);
        // The one splice (where the encoding started, the quietest 100 ms) costs a transient
        // well below the music: its worst 40 ms of error is under -18 dB against an average
        // 40 ms of the loop (measured: -20.2 dB on the demo; -17 dB with the splice at the
        // quietest single frame, and at the seam the window's SNR was 8 dB against 42 dB
        // elsewhere).
        let mean_energy = reference.iter().map(|x| x * x).sum::<f64>() / n as f64 * 640.0;
        let worst_error = (1..n / 320 - 1)
            .map(|k| {
                let at = n + 320 * k;
                (at - 320..at + 320)
                    .map(|i| (played[i + delay] - reference[i % n]).powi(2))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        let worst_db = 10.0 * (worst_error / mean_energy).log10();
        assert!(worst_db < -18.0, "splice error at {worst_db:.1} dB");
        assert!(
            wrap_snr > median - 3.0,
            "SNR {wrap_snr:.1} dB across the wrap, {median:.1} dB inside"
        );
        let wrap = &played[n - 320..n + 320];
        assert!(
            max_step(wrap) <= 1.5 * max_step(&reference),
            "click at the wrap"
        );
    }

    /// Opus frames decoded by libopus twice round the loop: the music at the encoder's delay
    /// (correlating with the 48 kHz render), continuous across the wrap (as close to the
    /// render there as anywhere inside), and no click.
    #[test]
    fn opus_loop_decodes_continuously_across_the_wrap() {
        let samples = demo_at(48_000, LoopLength::WholeFrames);
        let reference: Vec<f64> = samples.iter().map(|&s| f64::from(quantise(s))).collect();
        let n = reference.len();
        let plan = CodecPlan::default();
        let mut encoder = OpusEncoder::new(plan.opus_config()).unwrap();
        let delay = encoder.delay_samples().unwrap();
        let o = OpusLoop::encode(&samples, &mut encoder).unwrap();
        assert_eq!(o.frames() as usize * OPUS_FRAME_SAMPLES, n);
        // 40 kb/s: about 100 bytes a frame.
        let bytes_per_frame = o.data().len() as f64 / o.frames() as f64;
        assert!(
            (60.0..140.0).contains(&bytes_per_frame),
            "{bytes_per_frame}"
        );

        let mut decoder = opus::OpusDecoder::new(48_000).unwrap();
        let mut played = Vec::with_capacity(2 * n);
        let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
        for i in 0..2 * o.frames() {
            let got = decoder.decode(o.frame(i), &mut pcm).unwrap();
            assert_eq!(got, OPUS_FRAME_SAMPLES);
            played.extend(pcm.iter().map(|&s| f64::from(s)));
        }
        // Correlation with the render over the second pass, at the encoder's delay.
        let (lag, corr) = best_lag(&reference, &played[n..], 2 * delay);
        assert!(corr > 0.98, "Opus decode correlates at {corr}");
        assert!(lag.abs_diff(delay) <= 2, "lag {lag}, encoder delay {delay}");
        // And in every second of it, one of them straddling the wrap (the bar for a
        // call).
        let twice = [&reference[..], &reference[..]].concat();
        for start in (n / 2 + 24_000..n + n / 2 - 48_000).step_by(48_000) {
            let c = xcorr(&twice[start..start + 48_000], &played[start..], lag);
            assert!(c > 0.98, "block at {start}: {c}");
        }
        let snr_at = |at: usize| snr_db(&played, &reference, lag, at, 960);
        let mut inside: Vec<f64> = (1..n / 1920 - 1).map(|k| snr_at(n + 1920 * k)).collect();
        inside.sort_by(f64::total_cmp);
        let median = inside[inside.len() / 2];
        let wrap_snr = snr_at(n);
        assert!(
            wrap_snr > median - 3.0,
            "SNR {wrap_snr:.1} dB across the wrap, {median:.1} dB inside"
        );
        let wrap = &played[n - 960 + lag..n + 960 + lag];
        assert!(
            max_step(wrap) <= 1.5 * max_step(&reference),
            "click at the wrap"
        );
    }

    #[test]
    fn g722_packets_are_cut_by_tick_round_the_loop() {
        let bytes: Vec<u8> = (0..1600u32).map(|i| (i % 251) as u8).collect();
        let mut w = Wideband::default();
        // Not encoded yet: silence, on the same clock.
        assert_eq!(w.fill_packet(Codec::G722, 0, 2, &mut [0u8; 160]), 160);
        w.insert(EncodedLoop::G722(
            G722Loop::from_bytes(bytes.clone()).unwrap(),
        ));
        assert!(w.has(Codec::G722) && !w.has(Codec::Opus));
        let mut out = [0u8; 400];
        for (tick, ticks) in [
            (0u64, 2u64),
            (3, 2),
            (19, 2),
            (20, 1),
            (1_000_001, 3),
            (7, 5),
        ] {
            let n = w.fill_packet(Codec::G722, tick, ticks, &mut out);
            assert_eq!(n, 80 * ticks as usize);
            for (i, &b) in out[..n].iter().enumerate() {
                assert_eq!(
                    b,
                    bytes[(tick as usize * 80 + i) % 1600],
                    "tick {tick} byte {i}"
                );
            }
        }
        // Too small a buffer, and a codec this loop is not.
        assert_eq!(w.fill_packet(Codec::G722, 0, 2, &mut [0u8; 100]), 0);
        assert!(
            w.fill_packet(Codec::Opus, 0, 2, &mut out) > 0,
            "Opus silence"
        );
        assert_eq!(w.fill_packet(Codec::Pcmu, 0, 2, &mut out), 0);
    }

    #[test]
    fn opus_frames_are_cut_by_frame_index_with_pre_roll() {
        let frames = 12;
        // Frames 3 to 7 are the quietest: the encoding starts at 3.
        let mut samples = vec![0.1f32; frames * OPUS_FRAME_SAMPLES + 100];
        samples[3 * OPUS_FRAME_SAMPLES..8 * OPUS_FRAME_SAMPLES].fill(0.01);
        let mut enc = IndexEncoder::new();
        let o = OpusLoop::encode(&samples, &mut enc).unwrap();
        assert_eq!(o.frames(), frames as u64);
        // A second of pre-roll (the short loop, round and round), then frames 3, 4, .., 2,
        // stored in loop order.
        let pre = (PRE_ROLL_MS / 20) as u32;
        let index = |p: &[u8]| u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let encoded_as = |f: u64| pre + ((f + 12 - 3) % 12) as u32;
        for f in 0..12 {
            assert_eq!(index(o.frame(f)), encoded_as(f), "frame {f}");
        }
        let mut w = Wideband::default();
        w.insert(EncodedLoop::Opus(o.clone()));
        let mut out = [0u8; 1500];
        for tick in [0u64, 1, 2, 13, 14, 15, 1_000_000, u64::MAX - 1] {
            let n = w.fill_packet(Codec::Opus, tick, 2, &mut out);
            let frame = (tick / 2) % frames as u64;
            assert_eq!(&out[..n], o.frame(frame), "tick {tick}");
            assert_eq!(index(&out[..n]), encoded_as(frame));
        }
        // Opus is sent as 20 ms frames only.
        assert_eq!(w.fill_packet(Codec::Opus, 0, 1, &mut out), 0);
        assert_eq!(w.fill_packet(Codec::Opus, 0, 4, &mut out), 0);
        assert_eq!(w.fill_packet(Codec::Opus, 0, 2, &mut [0u8; 3]), 0);
        // Stored as lengths and data, rebuilt the same.
        let lengths: Vec<u16> = o.lengths().collect();
        assert_eq!(
            OpusLoop::from_parts(&lengths, o.data().to_vec()),
            Some(o.clone())
        );
        assert_eq!(OpusLoop::from_parts(&lengths, o.data()[1..].to_vec()), None);
        assert_eq!(OpusLoop::from_parts(&[], Vec::new()), None);
        // A failing encoder is an error, not a short loop.
        let mut failing = IndexEncoder::new();
        failing.fail_at = Some(9);
        assert!(OpusLoop::encode(&samples, &mut failing).is_err());
    }

    #[test]
    fn pre_roll_covers_what_comes_before_the_start_cyclically() {
        assert_eq!(cyclic_before(10, 0, 4), vec![(6, 10)]);
        assert_eq!(cyclic_before(10, 0, 25), vec![(5, 10), (0, 10), (0, 10)]);
        assert_eq!(cyclic_before(10, 3, 2), vec![(1, 3)]);
        assert_eq!(cyclic_before(10, 3, 5), vec![(8, 10), (0, 3)]);
        assert_eq!(cyclic_before(10, 0, 0), Vec::<(usize, usize)>::new());
        assert_eq!(cyclic_before(0, 0, 5), Vec::<(usize, usize)>::new());
        let quiet = [9.0, 9.0, 9.0, 1.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.5, 9.0];
        assert_eq!(quietest_frame(quiet.len(), |i| quiet[i]), 5);
        assert_eq!(quietest_frame(0, |_| 0.0), 0);
    }

    #[test]
    fn the_plan_names_the_wideband_codecs_it_enables() {
        let all = CodecPlan::default();
        assert_eq!(
            all.wideband().collect::<Vec<_>>(),
            [Codec::G722, Codec::Opus]
        );
        let g711 = CodecPlan::new(&[Codec::Pcma, Codec::Pcmu, Codec::Pcma], 40_000);
        assert_eq!(g711.wideband().count(), 0);
        assert!(g711.enables(Codec::Pcma) && !g711.enables(Codec::G722));
        assert_ne!(
            CodecPlan::new(&[Codec::Opus], 32_000).settings_key(Codec::Opus),
            CodecPlan::new(&[Codec::Opus], 48_000).settings_key(Codec::Opus)
        );
        assert_eq!(RATE, 8000);
    }
}
