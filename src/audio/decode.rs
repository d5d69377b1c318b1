//! File → mono `f32` at the file's own rate, through symphonia.
//!
//! Symphonia is pure Rust but has a history of panics on crafted files, so the whole decode runs
//! inside `catch_unwind`, the decoded length is capped, and a corrupt packet is skipped rather
//! than ending the track (up to [`MAX_DECODE_ERRORS`]). A panic message still reaches stderr
//! through the default panic hook; we do not replace the process-wide hook from a library.

use super::AudioError;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use symphonia::core::codecs::audio::well_known as codec_ids;
use symphonia::core::codecs::audio::{AudioCodecId, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Longest audio [`decode_file`] accepts: 3 hours. At 48 kHz that is 518 M samples (2 GiB of
/// `f32`), the most we are willing to hold for one track.
pub const DEFAULT_MAX_SECONDS: u64 = 3 * 3600;

/// Packets (or demuxer reads) that may fail before the file counts as corrupt. A few bad frames
/// in a long MP3 are common and inaudible once skipped; hundreds mean a broken file.
const MAX_DECODE_ERRORS: usize = 100;

/// Packets in a row that may decode to zero frames before we give up. Guards against a demuxer
/// that never reaches the end of a crafted file.
const MAX_EMPTY_PACKETS: usize = 100_000;

/// Sample rates outside this range are refused as nonsense (no real music file has them).
const RATE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// A decoded file: mono samples in [-1, 1] at the file's sample rate.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Sample rate of `mono`, as stored in the file.
    pub sample_rate: u32,
    /// Channel count of the file before the downmix.
    pub channels: u16,
    /// The average of all channels, one sample per frame.
    pub mono: Vec<f32>,
}

/// Decodes a WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A, ALAC or AIFF file to mono, capped at
/// [`DEFAULT_MAX_SECONDS`].
pub fn decode_file(path: &Path) -> Result<Decoded, AudioError> {
    decode_file_with_limit(path, DEFAULT_MAX_SECONDS)
}

/// [`decode_file`] with an explicit length cap in seconds; longer files are refused with
/// [`AudioError::TooLong`].
pub fn decode_file_with_limit(path: &Path, max_seconds: u64) -> Result<Decoded, AudioError> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Err(AudioError::EmptyFile);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match catch_unwind(AssertUnwindSafe(|| {
        decode_source(file, ext.as_deref(), max_seconds)
    })) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(AudioError::DecoderPanic(msg))
        }
    }
}

/// The first `seconds` of a file (or all of it, if shorter), decoded as [`decode_file`] does:
/// what a cold start plays while the rest of the file decodes. The decode stops there, so a
/// long file costs no more than a short one.
pub fn decode_file_start(path: &Path, seconds: u64) -> Result<Decoded, AudioError> {
    let file = File::open(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    catch_unwind(AssertUnwindSafe(|| {
        decode_source_until(file, ext.as_deref(), DEFAULT_MAX_SECONDS, Some(seconds))
    }))
    .unwrap_or_else(|_| Err(AudioError::DecoderPanic("decoding the start".to_owned())))
}

fn decode_source(file: File, ext: Option<&str>, max_seconds: u64) -> Result<Decoded, AudioError> {
    decode_source_until(file, ext, max_seconds, None)
}

/// Decodes until the end, or until `stop_after` seconds are decoded.
fn decode_source_until(
    file: File,
    ext: Option<&str>,
    max_seconds: u64,
    stop_after: Option<u64>,
) -> Result<Decoded, AudioError> {
    let mut format = probe(file, ext)?;
    let track = format
        .default_track(TrackType::Audio)
        .or_else(|| format.first_track(TrackType::Audio))
        .ok_or(AudioError::NoAudioTrack)?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(AudioError::NoAudioTrack)?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|_| AudioError::UnsupportedCodec(codec_name(params.codec)))?;

    let mut out = Downmix::new(max_seconds);
    let mut errors = ErrorBudget::default();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // Chained Ogg streams: the first stream is the music; treat the change as the end.
            Err(SymError::ResetRequired) => break,
            // A truncated file: keep what decoded.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                // A demuxer I/O error does not heal by reading on.
                let fatal = matches!(e, SymError::IoError(_));
                if !errors.skip(e.to_string()) || fatal {
                    break;
                }
                continue;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(SymError::DecodeError(msg)) => {
                if !errors.skip(format!("malformed stream: {msg}")) {
                    break;
                }
                continue;
            }
            Err(SymError::IoError(e)) => {
                if !errors.skip(e.to_string()) {
                    break;
                }
                continue;
            }
            Err(e) => {
                errors.skip(e.to_string());
                break;
            }
        };
        match out.push(&buf, &errors)? {
            Pushed::Frames if stop_after.is_some_and(|s| out.seconds() >= s) => break,
            Pushed::Frames | Pushed::Empty => {}
            Pushed::RateChanged(msg) => {
                if !errors.skip(msg) {
                    break;
                }
            }
        }
    }
    out.finish(errors)
}

/// Probes the container, mapping symphonia's "not recognised" shapes to one readable error.
fn probe(
    file: File,
    ext: Option<&str>,
) -> Result<Box<dyn symphonia::core::formats::FormatReader>, AudioError> {
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext {
        hint.with_extension(ext);
    }
    symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                AudioError::UnsupportedFormat("format not recognised".to_owned())
            }
            SymError::IoError(io) => AudioError::Io(io),
            SymError::Unsupported(_) => AudioError::UnsupportedFormat(
                "format not recognised (not an audio file, or an unsupported container)".to_owned(),
            ),
            other => AudioError::UnsupportedFormat(other.to_string()),
        })
}

/// Counts skipped packets against [`MAX_DECODE_ERRORS`], keeping the last reason for the report.
#[derive(Default)]
struct ErrorBudget {
    count: usize,
    last: String,
}

impl ErrorBudget {
    /// Records one skipped packet; false once the file has failed too often to go on.
    fn skip(&mut self, reason: String) -> bool {
        self.count += 1;
        self.last = reason;
        self.count <= MAX_DECODE_ERRORS
    }

    fn exhausted(&self) -> bool {
        self.count > MAX_DECODE_ERRORS
    }
}

/// What one decoded buffer did to the output.
enum Pushed {
    Frames,
    Empty,
    /// A mid-stream rate change (rare, broken MP3 concatenations): the packet would play at the
    /// wrong speed, so it is dropped like a corrupt one.
    RateChanged(String),
}

/// The mono output under construction: fixes the rate and channel count from the first buffer,
/// enforces the length cap, averages the channels.
struct Downmix {
    mono: Vec<f32>,
    interleaved: Vec<f32>,
    sample_rate: Option<u32>,
    channels: u16,
    max_seconds: u64,
    max_frames: usize,
    empty_run: usize,
}

impl Downmix {
    fn new(max_seconds: u64) -> Downmix {
        Downmix {
            mono: Vec::new(),
            interleaved: Vec::new(),
            sample_rate: None,
            channels: 0,
            max_seconds,
            max_frames: usize::MAX,
            empty_run: 0,
        }
    }

    fn push(
        &mut self,
        buf: &symphonia::core::audio::GenericAudioBufferRef<'_>,
        errors: &ErrorBudget,
    ) -> Result<Pushed, AudioError> {
        let frames = buf.frames();
        let planes = buf.num_planes();
        if frames == 0 || planes == 0 {
            self.empty_run += 1;
            if self.empty_run > MAX_EMPTY_PACKETS {
                return Err(AudioError::Corrupt {
                    errors: errors.count,
                    last: "too many empty packets".to_owned(),
                });
            }
            return Ok(Pushed::Empty);
        }
        self.empty_run = 0;
        let rate = buf.spec().rate();
        match self.sample_rate {
            None => {
                if !RATE_RANGE.contains(&rate) {
                    return Err(AudioError::InvalidStream(format!("sample rate {rate} Hz")));
                }
                self.sample_rate = Some(rate);
                self.channels = u16::try_from(planes).unwrap_or(u16::MAX);
                self.max_frames = usize::try_from(self.max_seconds.saturating_mul(u64::from(rate)))
                    .unwrap_or(usize::MAX);
            }
            Some(r) if r != rate => {
                return Ok(Pushed::RateChanged(format!(
                    "sample rate changed from {r} to {rate} Hz"
                )));
            }
            Some(_) => {}
        }
        if self.mono.len().saturating_add(frames) > self.max_frames {
            return Err(AudioError::TooLong {
                max_seconds: self.max_seconds,
            });
        }
        buf.copy_to_vec_interleaved(&mut self.interleaved);
        let scale = 1.0 / planes as f32;
        self.mono.extend(
            self.interleaved
                .chunks_exact(planes)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
        Ok(Pushed::Frames)
    }

    /// Whole seconds decoded so far.
    fn seconds(&self) -> u64 {
        self.sample_rate
            .map_or(0, |r| self.mono.len() as u64 / u64::from(r))
    }

    fn finish(mut self, errors: ErrorBudget) -> Result<Decoded, AudioError> {
        if errors.exhausted() || (self.mono.is_empty() && errors.count > 0) {
            return Err(AudioError::Corrupt {
                errors: errors.count,
                last: errors.last,
            });
        }
        let Some(sample_rate) = self.sample_rate else {
            return Err(AudioError::NoAudio);
        };
        if self.mono.is_empty() {
            return Err(AudioError::NoAudio);
        }
        if errors.count > 0 {
            tracing::warn!(
                errors = errors.count,
                last = %errors.last,
                "skipped undecodable packets; the rest of the file plays"
            );
        }
        // Decoders may emit NaN/inf on garbage that still parses; they would poison loudness and
        // the limiter, so flush them to silence.
        for s in &mut self.mono {
            if !s.is_finite() {
                *s = 0.0;
            }
        }
        Ok(Decoded {
            sample_rate,
            channels: self.channels,
            mono: self.mono,
        })
    }
}

/// A readable name for codecs symphonia can identify but not decode, with what to do instead.
fn codec_name(id: AudioCodecId) -> String {
    let name = match id {
        codec_ids::CODEC_ID_OPUS => "Opus",
        codec_ids::CODEC_ID_SPEEX => "Speex",
        codec_ids::CODEC_ID_MUSEPACK => "Musepack",
        codec_ids::CODEC_ID_AC3 => "AC-3",
        codec_ids::CODEC_ID_MP1 => "MPEG Layer 1",
        codec_ids::CODEC_ID_MP2 => "MPEG Layer 2",
        _ => return format!("codec id {id}; convert the file to MP3, FLAC, Ogg Vorbis or WAV"),
    };
    format!("{name}; convert the file to MP3, FLAC, Ogg Vorbis or WAV")
}
