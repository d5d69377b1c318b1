//! Opus (RFC 6716) through libopus, for music: mono, 48 kHz, 20 ms frames; and the RFC 7587
//! `a=fmtp` parameters.
//!
//! Owns [`OpusEncoder`] (one per channel: frames are encoded once and served to every call),
//! [`OpusDecoder`] (for `mohd call` and the tests, with loss concealment), their typed
//! [`OpusError`], and [`OpusFmtp`]: what a peer's fmtp asks of our stream, read tolerantly, and
//! the fmtp line we answer with.
//!
//! libopus comes from the system (Debian's `libopus-dev`, found by `audiopus_sys` through
//! pkg-config; `scripts/setup-deps` installs it). Only `audiopus` links it: the `opus` crate
//! bundles its own libopus, and two copies in one binary resolve to whichever the linker meets
//! first.
//!
//! The encoder settings are the music ones and never change per call: `Application::Audio`,
//! `Signal::Music`, constrained VBR, complexity 10 (a channel encodes one stream however many
//! calls listen, so the best quality is cheap), in-band FEC off by default, and DTX off always:
//! DTX would stop sending in a quiet passage and the caller would hear the PBX's idea of
//! silence, or think the hold dropped.

use std::fmt;

use audiopus::coder::{Decoder, Encoder, GenericCtl};
use audiopus::packet::Packet;
use audiopus::{Application, Bitrate, Channels, MutSignals, SampleRate, Signal};

/// The RTP clock and the rate of the audio we encode: Opus in RTP is always 48 kHz (RFC 7587 §4.1).
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms frame at 48 kHz, the only frame size mohd sends.
pub const FRAME_SAMPLES: usize = 960;

/// An upper bound for one encoded frame: RFC 6716 §3.2.1 caps an Opus frame at 1,275 bytes
/// (510 kb/s for 20 ms), so with the RTP header a packet still fits a 1,500-byte MTU.
pub const MAX_FRAME_BYTES: usize = 1275;

/// Our default bitrate: transparent enough for hold music in mono, a third of G.711's.
pub const DEFAULT_BITRATE: u32 = 40_000;

/// The bitrates libopus accepts (RFC 7587 §6.1 gives the same range for `maxaveragebitrate`).
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 6_000..=510_000;

/// What can go wrong with libopus. Each variant carries libopus's own reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpusError {
    /// libopus refused to create or configure the encoder or decoder.
    #[error("cannot set up the Opus codec: {0}")]
    Setup(#[source] audiopus::Error),
    /// libopus failed to encode a frame.
    #[error("Opus encoding failed: {0}")]
    Encode(#[source] audiopus::Error),
    /// libopus could not decode a packet (corrupt, or not Opus).
    #[error("Opus decoding failed: {0}")]
    Decode(#[source] audiopus::Error),
    /// `encode_frame` was given other than one 20 ms frame.
    #[error("an Opus frame is {FRAME_SAMPLES} samples, got {0}")]
    FrameLength(usize),
    /// A bitrate outside what Opus can do.
    #[error("Opus bitrate {0} b/s is outside 6000..=510000")]
    Bitrate(u32),
    /// A decoder output rate Opus does not have.
    #[error("Opus decodes at 8, 12, 16, 24 or 48 kHz, not {0} Hz")]
    SampleRate(u32),
}

/// How a channel's Opus stream is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// Target average bitrate in bits per second ([`BITRATE_RANGE`]).
    pub bitrate: u32,
    /// 0–10; 10 is the best quality and, for one stream per channel, affordable.
    pub complexity: u8,
    /// In-band forward error correction (LBRR): costs bitrate; useful only on lossy links.
    pub inband_fec: bool,
    /// Constant bitrate instead of constrained VBR (`cbr=1` asked by a peer).
    pub cbr: bool,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        OpusEncoderConfig {
            bitrate: DEFAULT_BITRATE,
            complexity: 10,
            inband_fec: false,
            cbr: false,
        }
    }
}

/// A mono 48 kHz music encoder producing one packet per 20 ms frame.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: Encoder,
    config: OpusEncoderConfig,
}

impl OpusEncoder {
    /// An encoder with `config`; DTX is off whatever the config.
    pub fn new(config: OpusEncoderConfig) -> Result<OpusEncoder, OpusError> {
        if !BITRATE_RANGE.contains(&config.bitrate) {
            return Err(OpusError::Bitrate(config.bitrate));
        }
        let mut inner = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Audio)
            .map_err(OpusError::Setup)?;
        Self::configure(&mut inner, &config).map_err(OpusError::Setup)?;
        Ok(OpusEncoder { inner, config })
    }

    fn configure(inner: &mut Encoder, config: &OpusEncoderConfig) -> audiopus::Result<()> {
        let bitrate = i32::try_from(config.bitrate).unwrap_or(i32::MAX);
        inner.set_bitrate(Bitrate::BitsPerSecond(bitrate))?;
        inner.set_complexity(config.complexity.min(10))?;
        inner.set_signal(Signal::Music)?;
        inner.set_vbr(!config.cbr)?;
        inner.set_vbr_constraint(true)?;
        inner.set_inband_fec(config.inband_fec)?;
        inner.set_dtx(false)?;
        inner.set_lsb_depth(16)
    }

    /// The settings this encoder was built with.
    pub fn config(&self) -> OpusEncoderConfig {
        self.config
    }

    /// Encodes one 20 ms frame (`FRAME_SAMPLES` samples) into `out`, returning the packet's
    /// length. `out` of [`MAX_FRAME_BYTES`] always suffices. No allocation.
    pub fn encode_frame(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(OpusError::FrameLength(pcm.len()));
        }
        self.inner.encode(pcm, out).map_err(OpusError::Encode)
    }

    /// Forgets the signal so far, as a new encoder would (the settings stay). A render that
    /// starts over is better served by pre-roll (encoding the loop's tail first), which keeps
    /// the decoder's view continuous; this is for a stream that really restarts.
    pub fn reset(&mut self) -> Result<(), OpusError> {
        self.inner.reset_state().map_err(OpusError::Encode)
    }

    /// The encoder's look-ahead in 48 kHz samples: how far a decoded stream lags its input
    /// (312 for `Application::Audio`: 2.5 ms of look-ahead plus 4 ms of delay compensation).
    pub fn delay_samples(&self) -> Result<usize, OpusError> {
        let samples = self.inner.lookahead().map_err(OpusError::Setup)?;
        Ok(samples as usize)
    }
}

/// A mono Opus decoder at any Opus rate, with packet-loss concealment.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: Decoder,
    rate: u32,
}

impl OpusDecoder {
    /// A decoder whose output is mono at `rate` Hz (8, 12, 16, 24 or 48 kHz); libopus
    /// resamples and mixes a stereo stream down itself.
    pub fn new(rate: u32) -> Result<OpusDecoder, OpusError> {
        let sample_rate = i32::try_from(rate)
            .ok()
            .and_then(|r| SampleRate::try_from(r).ok())
            .ok_or(OpusError::SampleRate(rate))?;
        let inner = Decoder::new(sample_rate, Channels::Mono).map_err(OpusError::Setup)?;
        Ok(OpusDecoder { inner, rate })
    }

    /// The output rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Samples in 20 ms at the output rate.
    pub fn frame_samples(&self) -> usize {
        self.rate as usize / 50
    }

    /// Decodes one packet into `out`, returning the samples written. `out` must hold the
    /// packet's duration (120 ms at most, the longest Opus packet). An empty payload counts as a
    /// lost packet (RFC 7587 §3.2: an empty packet is how libopus is told of a loss).
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return self.conceal(self.frame_samples(), out);
        }
        let packet = Packet::try_from(packet).map_err(OpusError::Decode)?;
        let signals = MutSignals::try_from(&mut *out).map_err(OpusError::Decode)?;
        self.inner
            .decode(Some(packet), signals, false)
            .map_err(OpusError::Decode)
    }

    /// Packet-loss concealment: `samples` of libopus's best guess at what a lost packet held
    /// (a multiple of 2.5 ms, normally one frame), into the start of `out`.
    pub fn conceal(&mut self, samples: usize, out: &mut [i16]) -> Result<usize, OpusError> {
        let end = samples.min(out.len());
        let signals = MutSignals::try_from(&mut out[..end]).map_err(OpusError::Decode)?;
        self.inner
            .decode(None, signals, false)
            .map_err(OpusError::Decode)
    }

    /// Forgets the stream so far (a new SSRC).
    pub fn reset(&mut self) -> Result<(), OpusError> {
        self.inner.reset_state().map_err(OpusError::Decode)
    }
}

/// RFC 7587 §6.1 `a=fmtp` parameters of `opus/48000/2`: what the side that wrote them can
/// receive (the plain names) and what it sends (the `sprop-` names). Absent parameters take the
/// RFC's defaults ([`OpusFmtp::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusFmtp {
    /// `maxplaybackrate`: the highest audio rate worth sending to this receiver (8000–48000).
    pub max_playback_rate: u32,
    /// `sprop-maxcapturerate`: the highest rate the sender captures at.
    pub sprop_max_capture_rate: u32,
    /// `maxaveragebitrate`: the most this receiver wants on average, in b/s (6000–510000).
    pub max_average_bitrate: Option<u32>,
    /// `stereo`: the receiver prefers stereo. We send mono whatever it says (mono is always
    /// decodable, RFC 7587 §3.4).
    pub stereo: bool,
    /// `sprop-stereo`: the sender will likely send stereo.
    pub sprop_stereo: bool,
    /// `cbr`: the receiver prefers constant bitrate.
    pub cbr: bool,
    /// `useinbandfec`: the receiver can use in-band FEC.
    pub useinbandfec: bool,
    /// `usedtx`: the receiver prefers discontinuous transmission. Never honoured for music.
    pub usedtx: bool,
    /// `maxptime` in ms, if given.
    pub max_ptime: Option<u32>,
    /// `minptime` in ms, if given.
    pub min_ptime: Option<u32>,
    /// `ptime` in ms, if given.
    pub ptime: Option<u32>,
}

impl Default for OpusFmtp {
    /// RFC 7587 §6.1's defaults: 48 kHz both ways, no bitrate cap, mono, VBR, no FEC, no DTX.
    fn default() -> Self {
        OpusFmtp {
            max_playback_rate: SAMPLE_RATE,
            sprop_max_capture_rate: SAMPLE_RATE,
            max_average_bitrate: None,
            stereo: false,
            sprop_stereo: false,
            cbr: false,
            useinbandfec: false,
            usedtx: false,
            max_ptime: None,
            min_ptime: None,
            ptime: None,
        }
    }
}

/// The range RFC 7587 gives the rate parameters.
const RATE_RANGE: std::ops::RangeInclusive<u32> = 8_000..=48_000;
/// Packet times Opus can carry: 2.5 ms (written as 3) to 120 ms.
const PTIME_RANGE: std::ops::RangeInclusive<u32> = 3..=120;

impl OpusFmtp {
    /// Reads an fmtp value (`maxplaybackrate=16000;useinbandfec=1`, the part after the payload
    /// type). Never fails: unknown keys are ignored, a value that is not a number (or not 0/1
    /// for the flags) leaves the default, a number outside the RFC's range is clamped into it;
    /// both are logged at debug level.
    pub fn parse(value: &str) -> OpusFmtp {
        let mut fmtp = OpusFmtp::default();
        for param in value.split(';') {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (key, val) = match param.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (param, ""),
            };
            match key.to_ascii_lowercase().as_str() {
                "maxplaybackrate" => {
                    number(key, val, RATE_RANGE, &mut fmtp.max_playback_rate);
                }
                "sprop-maxcapturerate" => {
                    number(key, val, RATE_RANGE, &mut fmtp.sprop_max_capture_rate);
                }
                "maxaveragebitrate" => {
                    let mut rate = fmtp.max_average_bitrate.unwrap_or(DEFAULT_BITRATE);
                    if number(key, val, BITRATE_RANGE, &mut rate) {
                        fmtp.max_average_bitrate = Some(rate);
                    }
                }
                "stereo" => flag(key, val, &mut fmtp.stereo),
                "sprop-stereo" => flag(key, val, &mut fmtp.sprop_stereo),
                "cbr" => flag(key, val, &mut fmtp.cbr),
                "useinbandfec" => flag(key, val, &mut fmtp.useinbandfec),
                "usedtx" => flag(key, val, &mut fmtp.usedtx),
                "maxptime" => optional_number(key, val, &mut fmtp.max_ptime),
                "minptime" => optional_number(key, val, &mut fmtp.min_ptime),
                "ptime" => optional_number(key, val, &mut fmtp.ptime),
                _ => {}
            }
        }
        fmtp
    }

    /// The fmtp we answer with when we send `bitrate` b/s: 48 kHz mono both ways, no FEC, no
    /// DTX, and `maxaveragebitrate` saying what we send (we ignore what a caller sends us, so
    /// any rate is fine to receive).
    pub fn answer(bitrate: u32) -> OpusFmtp {
        OpusFmtp {
            max_average_bitrate: Some(bitrate),
            ..OpusFmtp::default()
        }
    }

    /// The bitrate to send to this receiver when we would send `ours`: `ours`, capped by its
    /// `maxaveragebitrate`.
    pub fn send_bitrate(&self, ours: u32) -> u32 {
        self.max_average_bitrate.map_or(ours, |cap| ours.min(cap))
    }
}

/// Sets `*slot` from a decimal `val`, clamped into `range`; false (and `*slot` unchanged) if
/// `val` is not a number.
fn number(key: &str, val: &str, range: std::ops::RangeInclusive<u32>, slot: &mut u32) -> bool {
    let Ok(n) = val.parse::<u64>() else {
        tracing::debug!(
            key,
            value = val,
            "Opus fmtp: not a number, using the default"
        );
        return false;
    };
    let clamped = n.clamp(u64::from(*range.start()), u64::from(*range.end()));
    if clamped != n {
        tracing::debug!(key, value = val, "Opus fmtp: out of range, clamped");
    }
    *slot = u32::try_from(clamped).unwrap_or(*range.end());
    true
}

fn optional_number(key: &str, val: &str, slot: &mut Option<u32>) {
    let mut n = slot.unwrap_or(20);
    if number(key, val, PTIME_RANGE, &mut n) {
        *slot = Some(n);
    }
}

/// Sets `*slot` from `0` or `1`; anything else leaves it.
fn flag(key: &str, val: &str, slot: &mut bool) {
    match val {
        "0" => *slot = false,
        "1" => *slot = true,
        _ => tracing::debug!(key, value = val, "Opus fmtp: not 0 or 1, using the default"),
    }
}

impl fmt::Display for OpusFmtp {
    /// The fmtp value, as it goes after `a=fmtp:<pt> `: the rates, channel and FEC/DTX flags
    /// always (explicit beats the reader remembering RFC defaults), the rest when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "maxplaybackrate={};sprop-maxcapturerate={};stereo={};sprop-stereo={};\
             useinbandfec={};usedtx={}",
            self.max_playback_rate,
            self.sprop_max_capture_rate,
            u8::from(self.stereo),
            u8::from(self.sprop_stereo),
            u8::from(self.useinbandfec),
            u8::from(self.usedtx),
        )?;
        if let Some(rate) = self.max_average_bitrate {
            write!(f, ";maxaveragebitrate={rate}")?;
        }
        if self.cbr {
            f.write_str(";cbr=1")?;
        }
        for (name, value) in [
            ("maxptime", self.max_ptime),
            ("minptime", self.min_ptime),
            ("ptime", self.ptime),
        ] {
            if let Some(ms) = value {
                write!(f, ";{name}={ms}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_refuses_what_it_cannot_do() {
        assert!(matches!(
            OpusEncoder::new(OpusEncoderConfig {
                bitrate: 1000,
                ..OpusEncoderConfig::default()
            }),
            Err(OpusError::Bitrate(1000))
        ));
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).expect("encoder");
        let mut out = [0u8; MAX_FRAME_BYTES];
        assert!(matches!(
            enc.encode_frame(&[0; 480], &mut out),
            Err(OpusError::FrameLength(480))
        ));
        assert!(matches!(
            OpusDecoder::new(44_100),
            Err(OpusError::SampleRate(44_100))
        ));
    }

    #[test]
    fn decoder_rejects_garbage_and_conceals_loss() {
        let mut dec = OpusDecoder::new(16_000).expect("decoder");
        let mut out = [0i16; 1920];
        // A code-3 TOC byte with no frame count is not a valid packet.
        assert!(matches!(
            dec.decode(&[0x03], &mut out),
            Err(OpusError::Decode(_))
        ));
        assert_eq!(dec.decode(&[], &mut out).expect("loss"), 320);
        assert_eq!(dec.conceal(320, &mut out).expect("plc"), 320);
    }

    #[test]
    fn answer_round_trips_through_parse() {
        let ours = OpusFmtp::answer(40_000);
        let text = ours.to_string();
        assert_eq!(
            text,
            "maxplaybackrate=48000;sprop-maxcapturerate=48000;stereo=0;sprop-stereo=0;\
             useinbandfec=0;usedtx=0;maxaveragebitrate=40000"
        );
        assert_eq!(OpusFmtp::parse(&text), ours);
    }
}
