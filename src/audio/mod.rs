//! Audio processing over sample buffers: decode a file to mono (symphonia), resample (rubato),
//! measure and normalise loudness (ebur128) with a peak limiter, and synthesise the built-in
//! demo melody.
//!
//! Everything here is pure apart from [`decode_file`] reading the file it is given: no clock,
//! no randomness, no sockets. Decoding runs untrusted input, so it is wrapped in
//! `catch_unwind`, capped in length and tolerant of corrupt packets; see the `decode` module.
//!
//! Hand-written parts: the peak limiter (offline look-ahead, a few dozen lines; no crate does a
//! look-ahead limiter over a whole buffer with a hard ceiling guarantee) and the demo synth
//! (a few additive voices; pulling a synth crate for ten seconds of music is not worth it).

mod decode;
mod loudness;
mod resample;
mod synth;

pub use decode::{
    DEFAULT_MAX_SECONDS, Decoded, decode_file, decode_file_start, decode_file_with_limit,
};
pub use loudness::{
    CEILING_DBFS, NormaliseReport, ceiling_linear, integrated_lufs, limit, limit_circular,
    normalise,
};
pub use resample::resample;
pub use synth::{DEMO_SECONDS, demo_melody};

/// Why a file could not be turned into audio, or a buffer could not be processed.
///
/// The messages name the problem only; the caller adds the file name when it logs them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The file could not be opened or read.
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    /// The file has no bytes at all.
    #[error("file is empty (0 bytes)")]
    EmptyFile,
    /// No format reader recognised the file (not audio, or a container we do not support).
    #[error("not a supported audio file: {0}")]
    UnsupportedFormat(String),
    /// The container has no audio track we can find.
    #[error("file has no audio track")]
    NoAudioTrack,
    /// The audio track uses a codec we cannot decode (for example Opus).
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    /// The audio track decoded to zero samples.
    #[error("no audio could be decoded (damaged file, or an empty audio stream)")]
    NoAudio,
    /// Too many packets failed to decode: the file is damaged.
    #[error("file is corrupt: {errors} packets failed to decode (last error: {last})")]
    Corrupt {
        /// Number of packets or reads that failed.
        errors: usize,
        /// The last decoder message.
        last: String,
    },
    /// The file is longer than the configured maximum, refused so it cannot exhaust memory.
    #[error("audio is longer than the {max_seconds} s limit")]
    TooLong {
        /// The limit that was exceeded, in seconds.
        max_seconds: u64,
    },
    /// The stream reports a sample rate or channel layout we cannot use.
    #[error("invalid stream parameters: {0}")]
    InvalidStream(String),
    /// The decoder panicked on this file (a decoder bug triggered by the file's content).
    #[error("decoder crashed on this file: {0}")]
    DecoderPanic(String),
    /// A sample rate of zero or beyond what we support was asked for.
    #[error("invalid sample rate {0} Hz")]
    InvalidRate(u32),
    /// The resampler refused the job.
    #[error("resampler error: {0}")]
    Resample(String),
}

#[cfg(test)]
pub(crate) mod test_util;
