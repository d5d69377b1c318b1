//! Is an uploaded file music we can play? Decoded once, in a child process with its own limits.
//!
//! The parent ([`probe_isolated`]) runs `mohd probe FILE`, which calls [`probe_main`]: it caps
//! its own address space and CPU time, decodes the whole file with the crate's decoder
//! ([`crate::audio::decode_file_with_limit`]), measures its loudness and prints one line of
//! JSON. A decoder that crashes, runs out of memory or loops forever on a hostile file then
//! kills only the child; `catch_unwind` alone cannot stop the last two. The parent waits with a
//! timeout and kills the child's whole process group when it expires.
//!
//! The length cap follows from the memory cap: the decoder holds the whole track as mono `f32`
//! at the file's own rate, and a `Vec` growing by doubling can reserve twice what it holds, so
//! [`DECODE_BUDGET_BYTES`] (under half of [`PROBE_ADDRESS_SPACE`]) sets the longest track per
//! sample rate (about 35 min at 48 kHz, 38 min at 44.1 kHz, 3.5 h at 8 kHz). The server decodes
//! the same file again to render it, so this also bounds what one track costs the server.
//!
//! [`read_header`] is the cheap in-process look at a file's container (no decoding), used for
//! format and codec names and for files found in `music/` without an entry.

use crate::audio::{self, AudioError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Address space the probe child allows itself (RLIMIT_AS).
pub const PROBE_ADDRESS_SPACE: u64 = 1 << 30;

/// CPU seconds the probe child allows itself (RLIMIT_CPU, soft; SIGXCPU when reached). A
/// 30-minute MP3 decodes in a few seconds, so this only stops a decoder stuck in a loop.
pub const PROBE_CPU_SECONDS: u64 = 60;

/// Most bytes of decoded mono `f32` a track may take. With `Vec` doubling the reservation can
/// reach twice this, which must stay under [`PROBE_ADDRESS_SPACE`] with room for the program.
pub const DECODE_BUDGET_BYTES: u64 = 384 << 20;

/// Shortest track accepted, seconds. Hold music shorter than this is a mistake, and it is
/// what is left of a file cut off after its first frames (an MP3 without a Xing header gives
/// no length to compare with).
pub const MIN_TRACK_SECONDS: f64 = 0.5;

/// Longest track accepted at any sample rate: 4 hours.
pub const MAX_TRACK_SECONDS: u64 = 4 * 3600;

/// Most bytes of the child's stdout read; the answer is one short line.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How often [`probe_isolated`] checks whether the child has finished.
const POLL: Duration = Duration::from_millis(20);

/// What the probe learned about a playable file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// A short human label for the file type: "MP3", "FLAC", "WAV", "Ogg Vorbis", "AAC"...
    pub format: String,
    /// The decoder's codec name ("mp3", "pcm_s16le", "vorbis"...).
    pub codec: String,
    /// Sample rate of the audio in the file, Hz.
    pub sample_rate: u32,
    /// Channels in the file (before the downmix to mono).
    pub channels: u16,
    /// Length of the decoded audio, seconds.
    pub duration_s: f64,
    /// EBU R128 integrated loudness; `None` only for silence (which the probe refuses).
    pub loudness_lufs: Option<f64>,
}

/// Why a file was refused, or why the probe could not tell.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// The file is not audio we can decode; the reason comes from the decoder.
    #[error("not an audio file we can play: {0}")]
    NotAudio(String),
    /// The file decodes but cannot be used (too long, silent...).
    #[error("{0}")]
    Unusable(String),
    /// The decoder process died on this file (a signal, or no answer).
    #[error("{0}")]
    Crashed(String),
    /// The decoder process did not finish in time and was killed.
    #[error("decoding took longer than {} s; the file was refused", .0.as_secs_f64())]
    Timeout(Duration),
    /// The probe could not be run at all (not the file's fault).
    #[error("could not check the file: {0}")]
    Failed(String),
}

/// A file's container as read from its header, without decoding the audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Short label, as in [`ProbeReport::format`].
    pub format: String,
    /// Codec name, as in [`ProbeReport::codec`].
    pub codec: String,
    /// Sample rate, when the container states it.
    pub sample_rate: Option<u32>,
    /// Channel count, when the container states it.
    pub channels: Option<u16>,
    /// Length in seconds, when the container states it (MP3 without a Xing header may not).
    pub duration_s: Option<f64>,
    /// Whether a decoder for the codec is built in.
    pub decodable: bool,
}

/// Reads the container header of `path` (format, codec, rate, channels, length) in-process.
/// Never panics: a decoder panic becomes [`ProbeError::NotAudio`].
pub fn read_header(path: &Path) -> Result<Header, ProbeError> {
    let file = File::open(path).map_err(|e| ProbeError::NotAudio(format!("cannot read: {e}")))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    catch_unwind(AssertUnwindSafe(|| header_of(file, ext.as_deref())))
        .unwrap_or_else(|_| Err(ProbeError::NotAudio("the decoder crashed on it".to_owned())))
}

fn header_of(file: File, ext: Option<&str>) -> Result<Header, ProbeError> {
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext {
        hint.with_extension(ext);
    }
    let format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| {
            ProbeError::NotAudio(match e {
                SymError::Unsupported(_) => {
                    "format not recognised (not audio, or an unsupported container)".to_owned()
                }
                SymError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                    "format not recognised (the file is too short)".to_owned()
                }
                other => format!("format not recognised ({other})"),
            })
        })?;
    let container = format.format_info().short_name;
    let track = format
        .default_track(TrackType::Audio)
        .or_else(|| format.first_track(TrackType::Audio))
        .ok_or_else(|| ProbeError::NotAudio("no audio track".to_owned()))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| ProbeError::NotAudio("no audio track".to_owned()))?;
    let registered = symphonia::default::get_codecs().get_audio_decoder(params.codec);
    let codec = registered.map_or_else(
        || unsupported_codec_name(params.codec),
        |r| r.codec.info.short_name.to_owned(),
    );
    let sample_rate = params.sample_rate.filter(|&r| r > 0);
    let channels = params
        .channels
        .as_ref()
        .and_then(|c| u16::try_from(c.count()).ok());
    let duration_s = match (track.num_frames, sample_rate) {
        (Some(n), Some(r)) => Some(n as f64 / f64::from(r)),
        _ => track
            .time_base
            .zip(track.duration)
            .and_then(|(tb, d)| tb.calc_duration(d))
            .map(|t| t.as_secs_f64()),
    };
    Ok(Header {
        format: format_label(container, &codec),
        codec,
        sample_rate,
        channels,
        duration_s,
        decodable: registered.is_some(),
    })
}

/// Names for codecs symphonia knows of but has no decoder for here, so the refusal can say
/// "Opus" rather than a number.
fn unsupported_codec_name(id: symphonia::core::codecs::audio::AudioCodecId) -> String {
    use symphonia::core::codecs::audio::well_known as ids;
    let name = match id {
        ids::CODEC_ID_OPUS => "opus",
        ids::CODEC_ID_SPEEX => "speex",
        ids::CODEC_ID_MUSEPACK => "musepack",
        ids::CODEC_ID_MP1 => "mp1",
        ids::CODEC_ID_MP2 => "mp2",
        ids::CODEC_ID_AC3 => "ac3",
        ids::CODEC_ID_EAC3 => "eac3",
        ids::CODEC_ID_DCA => "dts",
        ids::CODEC_ID_WMA => "wma",
        _ => return format!("codec {id}"),
    };
    name.to_owned()
}

/// "MP3", "WAV", "Ogg Vorbis"... from symphonia's container and codec names: what a person
/// calls the file type.
fn format_label(container: &str, codec: &str) -> String {
    let pcm = codec.starts_with("pcm") || codec.starts_with("adpcm");
    match (container, codec) {
        ("wave", _) if pcm => "WAV".to_owned(),
        ("aiff", _) if pcm => "AIFF".to_owned(),
        (_, "mp3") => "MP3".to_owned(),
        (_, "mp2") => "MP2".to_owned(),
        (_, "mp1") => "MP1".to_owned(),
        (_, "flac") => "FLAC".to_owned(),
        ("ogg", "vorbis") => "Ogg Vorbis".to_owned(),
        (_, "vorbis") => "Vorbis".to_owned(),
        (_, "aac") => "AAC".to_owned(),
        (_, "alac") => "ALAC".to_owned(),
        (c, k) => format!("{} ({k})", c.to_ascii_uppercase()),
    }
}

/// Decodes all of `path` with the crate's decoder and measures it. Refuses files that are not
/// audio, truncated, shorter than [`MIN_TRACK_SECONDS`], silent, or longer than the memory budget allows at their sample rate (or
/// 4 hours).
///
/// CPU- and memory-heavy: meant for the `mohd probe` child, not for a server thread.
pub fn probe_file(path: &Path) -> Result<ProbeReport, ProbeError> {
    probe_with_budget(path, DECODE_BUDGET_BYTES)
}

fn probe_with_budget(path: &Path, budget_bytes: u64) -> Result<ProbeReport, ProbeError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(ProbeError::NotAudio("the file is empty".to_owned()));
    }
    let header = read_header(path)?;
    if !header.decodable {
        return Err(ProbeError::NotAudio(format!(
            "unsupported audio codec ({}); convert the file to MP3, FLAC, Ogg Vorbis or WAV",
            header.codec
        )));
    }
    // The header's length is not trusted for the cap (a damaged header may claim hours); the
    // decoder stops at the cap instead. Unknown rate: assume 48 kHz; a higher real rate can
    // then only fail later, by memory.
    let rate = header.sample_rate.unwrap_or(48_000);
    let max_seconds = max_seconds_at(rate, budget_bytes);
    let decoded = audio::decode_file_with_limit(path, max_seconds).map_err(|e| match e {
        AudioError::TooLong { max_seconds } => too_long(None, rate, max_seconds),
        AudioError::InvalidRate(_) | AudioError::Resample(_) => ProbeError::Unusable(e.to_string()),
        other => ProbeError::NotAudio(other.to_string()),
    })?;
    let frames = decoded.mono.len();
    if frames == 0 || decoded.sample_rate == 0 {
        return Err(ProbeError::NotAudio(
            "no audio could be decoded from it".to_owned(),
        ));
    }
    let duration_s = frames as f64 / f64::from(decoded.sample_rate);
    if duration_s < MIN_TRACK_SECONDS {
        return Err(ProbeError::NotAudio(format!(
            "only {duration_s:.2} s of audio decodes: the file is truncated, damaged, or \
             shorter than the {MIN_TRACK_SECONDS} s a track needs"
        )));
    }
    let limit = max_seconds_at(decoded.sample_rate, budget_bytes);
    if duration_s > limit as f64 {
        return Err(too_long(Some(duration_s), decoded.sample_rate, limit));
    }
    // The decoder keeps what it could read of a cut-off file; a track that stops mid-note is
    // not what the uploader meant. Generous bounds, because an MP3 without a Xing header only
    // has an estimate of its length.
    if let Some(promised) = header.duration_s
        && duration_s < promised * 0.5
        && promised - duration_s > 0.5
    {
        return Err(ProbeError::NotAudio(format!(
            "the file is truncated or damaged: its header says {} but only {} of audio decodes",
            minutes(promised),
            minutes(duration_s)
        )));
    }
    let loudness_lufs = audio::integrated_lufs(&decoded.mono, decoded.sample_rate);
    if loudness_lufs.is_none() {
        return Err(ProbeError::Unusable(
            "the track is silent (nothing above -70 LUFS)".to_owned(),
        ));
    }
    Ok(ProbeReport {
        format: header.format,
        codec: header.codec,
        sample_rate: decoded.sample_rate,
        channels: decoded.channels,
        duration_s: round_to(duration_s, 3),
        loudness_lufs: loudness_lufs.map(|l| round_to(l, 2)),
    })
}

/// `x` rounded to `decimals` places. Beyond being all the precision that means anything, a
/// short decimal survives a JSON round trip exactly (serde_json's default parser can be one
/// ulp off on 17-digit numbers), so a track reads back from library.json equal to itself.
pub(crate) fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// The longest track, in whole seconds, whose decoded mono `f32` fits `budget_bytes` at
/// `rate`, and never more than [`MAX_TRACK_SECONDS`].
fn max_seconds_at(rate: u32, budget_bytes: u64) -> u64 {
    let by_memory = budget_bytes / 4 / u64::from(rate.max(1));
    by_memory.clamp(1, MAX_TRACK_SECONDS)
}

/// The longest track the probe accepts at `rate` Hz, in seconds.
pub fn max_track_seconds(rate: u32) -> u64 {
    max_seconds_at(rate, DECODE_BUDGET_BYTES)
}

fn too_long(seconds: Option<f64>, rate: u32, max_seconds: u64) -> ProbeError {
    let length = seconds.map_or_else(String::new, |s| format!(" ({})", minutes(s)));
    ProbeError::Unusable(format!(
        "the track is too long{length}: at {rate} Hz the limit is {} (a lower sample rate \
         allows more); split or shorten it",
        minutes(max_seconds as f64)
    ))
}

fn minutes(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{} min {:02} s", s / 60, s % 60)
}

/// One line on the child's stdout. `kind` says which error, so the parent can tell "not
/// audio" from "audio but unusable".
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<ProbeReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

const KIND_NOT_AUDIO: &str = "not_audio";
const KIND_UNUSABLE: &str = "unusable";

/// `mohd probe FILE`: limits this process, probes the file, prints `{"ok": ProbeReport}` or
/// `{"error": "...", "kind": "not_audio"|"unusable"}` as one line, returns the exit code
/// (0 ok, 1 refused).
///
/// Call it first thing in `main`, before any runtime or thread starts: thread stacks and
/// per-thread malloc arenas count against the address-space cap and would shrink the room
/// left for decoding.
pub fn probe_main(path: &Path) -> i32 {
    let out = match limit_self() {
        Err(e) => ProbeOutput {
            error: Some(format!("cannot limit the decoder's resources: {e}")),
            kind: Some("failed".to_owned()),
            ..ProbeOutput::default()
        },
        Ok(()) => match probe_file(path) {
            Ok(report) => ProbeOutput {
                ok: Some(report),
                ..ProbeOutput::default()
            },
            Err(e) => {
                let (kind, msg) = match e {
                    ProbeError::Unusable(m) => (KIND_UNUSABLE, m),
                    ProbeError::NotAudio(m) => (KIND_NOT_AUDIO, m),
                    other => (KIND_NOT_AUDIO, other.to_string()),
                };
                ProbeOutput {
                    error: Some(msg),
                    kind: Some(kind.to_owned()),
                    ..ProbeOutput::default()
                }
            }
        },
    };
    let code = if out.ok.is_some() { 0 } else { 1 };
    let line = serde_json::to_string(&out).unwrap_or_else(|_| {
        r#"{"error":"cannot encode the probe result","kind":"failed"}"#.to_owned()
    });
    // A closed stdout means nobody is listening; nothing useful to do about it.
    let _ = writeln!(io::stdout().lock(), "{line}");
    code
}

/// Caps this process's address space and CPU time, and turns off core dumps (a crash on a
/// hostile file would otherwise leave a 1 GiB core behind). Never raises a limit that is
/// already lower.
fn limit_self() -> io::Result<()> {
    use rlimit::Resource;
    let lower = |res: Resource, soft: u64, hard: u64| -> io::Result<()> {
        let (cur_soft, cur_hard) = rlimit::getrlimit(res)?;
        let hard = hard.min(cur_hard);
        rlimit::setrlimit(res, soft.min(cur_soft).min(hard), hard)
    };
    lower(Resource::CORE, 0, 0)?;
    lower(Resource::AS, PROBE_ADDRESS_SPACE, PROBE_ADDRESS_SPACE)?;
    // The hard limit a little above the soft one: SIGXCPU first (reported as a CPU overrun),
    // SIGKILL only if that is ignored.
    lower(Resource::CPU, PROBE_CPU_SECONDS, PROBE_CPU_SECONDS + 5)
}

/// Runs `exe probe FILE` and turns its answer into a report. The child gets no stdin, its
/// stderr is discarded, and it runs in its own process group, killed as a whole (SIGKILL) if
/// it is not done within `timeout`.
///
/// Blocks the calling thread for up to `timeout`: call it from a blocking-capable thread.
pub fn probe_isolated(
    exe: &Path,
    file: &Path,
    timeout: Duration,
) -> Result<ProbeReport, ProbeError> {
    let mut child = Command::new(exe)
        .arg("probe")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| ProbeError::Failed(format!("cannot run {}: {e}", exe.display())))?;
    // Read stdout on a thread so a chatty child can never block on a full pipe while we wait.
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut out).take(MAX_OUTPUT).read_to_end(&mut buf);
            let _ = tx.send(buf);
            let _ = io::copy(&mut out, &mut io::sink());
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                tracing::warn!(file = %file.display(), ?timeout, "probe timed out; killed");
                return Err(ProbeError::Timeout(timeout));
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                kill_group(&mut child);
                return Err(ProbeError::Failed(format!("waiting for the decoder: {e}")));
            }
        }
    };
    // The pipe closes when the child exits; the grace period only covers a straggler that
    // inherited it.
    let output = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let answer = String::from_utf8_lossy(&output)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ProbeOutput>(l.trim()).ok())
        .filter(|o| o.ok.is_some() || o.error.is_some());
    match answer {
        Some(ProbeOutput { ok: Some(r), .. }) if status.success() => Ok(r),
        Some(ProbeOutput {
            error: Some(msg),
            kind,
            ..
        }) => Err(match kind.as_deref() {
            Some(KIND_UNUSABLE) => ProbeError::Unusable(msg),
            Some(KIND_NOT_AUDIO) | None => ProbeError::NotAudio(msg),
            Some(_) => ProbeError::Failed(msg),
        }),
        _ => Err(ProbeError::Crashed(match status.signal() {
            Some(sig) => crash_message(sig),
            None => {
                format!("the decoder exited ({status}) without an answer; the file was refused")
            }
        })),
    }
}

/// Kills the child's process group (it is the group leader, and not yet reaped, so the group
/// id cannot have been reused), then reaps the child.
fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn crash_message(sig: i32) -> String {
    use nix::sys::signal::Signal;
    let name = Signal::try_from(sig).map_or("", |s| s.as_str());
    match Signal::try_from(sig) {
        Ok(Signal::SIGXCPU) => format!(
            "the decoder used more than {PROBE_CPU_SECONDS} s of CPU time on this file \
             (signal {sig} {name}); the file was refused"
        ),
        Ok(Signal::SIGABRT) => format!(
            "the decoder aborted on this file (signal {sig} {name}), usually because it ran \
             out of memory; the file was refused"
        ),
        _ => {
            format!("the decoder crashed on this file (signal {sig} {name}); the file was refused")
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audio::test_util::sine;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audio");

    pub(crate) fn write_wav(path: &Path, rate: u32, channels: u16, seconds: f64, amp: f32) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in sine(440.0, rate, (seconds * f64::from(rate)) as usize, amp) {
            for _ in 0..channels {
                w.write_sample((s * 32767.0) as i16).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_wav_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.wav");
        write_wav(&p, 22_050, 2, 2.0, 0.5);
        let r = probe_file(&p).unwrap();
        assert_eq!(r.format, "WAV");
        assert_eq!(r.sample_rate, 22_050);
        assert_eq!(r.channels, 2);
        assert!((r.duration_s - 2.0).abs() < 0.01, "{r:?}");
        // A 0.5 peak sine is -3 - 6 = about -9 LUFS.
        let l = r.loudness_lufs.unwrap();
        assert!((l + 9.0).abs() < 0.7, "{l}");
    }

    #[test]
    fn every_fixture_format_is_accepted_with_its_label() {
        for (name, label) in [
            ("tone440_8k_mono.flac", "FLAC"),
            ("tone440_44k1_stereo.mp3", "MP3"),
            ("tone440_22k05_mono.ogg", "Ogg Vorbis"),
            ("tone440_44k1_stereo.m4a", "AAC"),
            ("tone440_8k_mono.aiff", "AIFF"),
            ("tone440_8k_mono_alac.m4a", "ALAC"),
        ] {
            let r = probe_file(&Path::new(FIXTURES).join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.format, label, "{name}");
            assert!(r.duration_s > 0.4 && r.duration_s < 1.5, "{name}: {r:?}");
            // -12 dBFS sine: about -15 LUFS.
            let l = r.loudness_lufs.unwrap();
            assert!((l + 15.0).abs() < 1.5, "{name}: {l}");
        }
    }

    #[test]
    fn text_renamed_mp3_empty_opus_and_silence_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("readme.mp3");
        std::fs::write(&text, "This is not music, just text.\n".repeat(50)).unwrap();
        let e = probe_file(&text).unwrap_err();
        assert!(matches!(e, ProbeError::NotAudio(_)), "{e:?}");
        assert!(e.to_string().contains("not an audio file"), "{e}");

        let empty = dir.path().join("empty.wav");
        std::fs::write(&empty, b"").unwrap();
        let e = probe_file(&empty).unwrap_err();
        assert_eq!(e, ProbeError::NotAudio("the file is empty".into()));

        let opus = Path::new(FIXTURES).join("tone440_opus.ogg");
        let e = probe_file(&opus).unwrap_err();
        assert!(matches!(e, ProbeError::NotAudio(_)), "{e:?}");
        assert!(e.to_string().contains("(opus)"), "names the codec: {e}");
        assert!(e.to_string().contains("MP3, FLAC"), "says what to do: {e}");

        let truncated = dir.path().join("truncated.mp3");
        let mp3 = std::fs::read(Path::new(FIXTURES).join("tone440_44k1_stereo.mp3")).unwrap();
        std::fs::write(&truncated, &mp3[..300]).unwrap();
        let r = probe_file(&truncated);
        assert!(matches!(r, Err(ProbeError::NotAudio(_))), "{r:?}");

        let silent = dir.path().join("silent.wav");
        write_wav(&silent, 8000, 1, 1.0, 0.0);
        let e = probe_file(&silent).unwrap_err();
        assert!(
            matches!(&e, ProbeError::Unusable(m) if m.contains("silent")),
            "{e:?}"
        );
    }

    /// The length cap follows the sample rate and the memory budget, and the message says
    /// the limit.
    #[test]
    fn too_long_is_unusable_and_says_the_limit() {
        assert_eq!(max_track_seconds(8000), 12_582);
        assert!(
            max_track_seconds(48_000) >= 30 * 60,
            "at least half an hour at 48 kHz"
        );
        assert!(max_track_seconds(48_000) < 40 * 60);
        assert_eq!(max_track_seconds(1), MAX_TRACK_SECONDS);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("long.wav");
        write_wav(&p, 8000, 1, 3.0, 0.5);
        // A budget of 2 s at 8 kHz.
        let budget = 2 * 8000 * 4;
        let e = probe_with_budget(&p, budget).unwrap_err();
        assert!(
            matches!(&e, ProbeError::Unusable(m) if m.contains("too long") && m.contains("0 min 02 s")),
            "{e:?}"
        );
        assert!(probe_with_budget(&p, 2 * budget).is_ok());
    }

    /// A cut-off file (here a WAV whose data chunk promises 3 s but holds 1 s) is refused,
    /// like the first 300 bytes of an MP3.
    #[test]
    fn truncated_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.wav");
        write_wav(&p, 8000, 1, 3.0, 0.5);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..44 + 16_000]).unwrap();
        let e = probe_file(&p).unwrap_err();
        assert!(
            matches!(&e, ProbeError::NotAudio(m) if m.contains("truncated")),
            "{e:?}"
        );
    }

    #[test]
    fn labels() {
        assert_eq!(format_label("wave", "pcm_s16le"), "WAV");
        assert_eq!(format_label("wave", "adpcm_ms"), "WAV");
        assert_eq!(format_label("matroska", "flac"), "FLAC");
        assert_eq!(
            format_label("matroska", "codec-4097"),
            "MATROSKA (codec-4097)"
        );
    }

    #[test]
    fn isolated_ok_json_is_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let report = ProbeReport {
            format: "MP3".into(),
            codec: "mp3".into(),
            sample_rate: 44_100,
            channels: 2,
            duration_s: 1.5,
            loudness_lufs: Some(-14.0),
        };
        let line = serde_json::to_string(&ProbeOutput {
            ok: Some(report.clone()),
            ..Default::default()
        })
        .unwrap();
        // Noise before the answer (a log line) must not confuse the parent.
        let exe = script(
            dir.path(),
            "ok.sh",
            &format!("[ \"$1\" = probe ] || exit 9\necho 'some log line'\necho '{line}'"),
        );
        let r = probe_isolated(&exe, Path::new("/x.mp3"), Duration::from_secs(30)).unwrap();
        assert_eq!(r, report);
    }

    #[test]
    fn isolated_error_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let exe = script(
            dir.path(),
            "na.sh",
            r#"echo '{"error":"format not recognised","kind":"not_audio"}'; exit 1"#,
        );
        assert_eq!(
            probe_isolated(&exe, Path::new("/x"), Duration::from_secs(30)),
            Err(ProbeError::NotAudio("format not recognised".into()))
        );
        let exe = script(
            dir.path(),
            "un.sh",
            r#"echo '{"error":"too long","kind":"unusable"}'; exit 1"#,
        );
        assert_eq!(
            probe_isolated(&exe, Path::new("/x"), Duration::from_secs(30)),
            Err(ProbeError::Unusable("too long".into()))
        );
        // Exit 0 but no answer: not trusted.
        let exe = script(dir.path(), "silent.sh", "exit 0");
        assert!(matches!(
            probe_isolated(&exe, Path::new("/x"), Duration::from_secs(30)),
            Err(ProbeError::Crashed(_))
        ));
        let missing = dir.path().join("no-such-exe");
        assert!(matches!(
            probe_isolated(&missing, Path::new("/x"), Duration::from_secs(30)),
            Err(ProbeError::Failed(_))
        ));
    }

    #[test]
    fn isolated_crash_is_reported_with_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let exe = script(dir.path(), "segv.sh", "kill -SEGV $$\nsleep 5");
        let e = probe_isolated(&exe, Path::new("/x"), Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(&e, ProbeError::Crashed(m) if m.contains("signal 11")),
            "{e:?}"
        );
    }

    /// A child that never finishes is killed with its whole process group: the `sleep` it
    /// started must not survive holding the pipe (the call would then hang on it).
    #[test]
    fn isolated_hang_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let exe = script(
            dir.path(),
            "hang.sh",
            &format!("sleep 1000 &\necho $! > {}\nwait", pidfile.display()),
        );
        let e = probe_isolated(&exe, Path::new("/x"), Duration::from_millis(300)).unwrap_err();
        assert_eq!(e, ProbeError::Timeout(Duration::from_millis(300)));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was SIGKILLed with the group; it may linger as a zombie of init for
        // a moment, so wait for it to be gone or dead.
        let gone = (0..200).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = stat.is_empty() || stat.contains(") Z ") || stat.contains(") X ");
            if !dead {
                std::thread::sleep(Duration::from_millis(10));
            }
            dead
        });
        assert!(gone, "the probe's own child survived the timeout");
    }

    #[test]
    fn limit_self_lowers_only() {
        // Checked in a child process so the test runner keeps its own limits.
        if std::env::var_os("MOHD_TEST_LIMIT_CHILD").is_some() {
            limit_self().unwrap();
            let (s, h) = rlimit::getrlimit(rlimit::Resource::AS).unwrap();
            assert!(s <= PROBE_ADDRESS_SPACE && h <= PROBE_ADDRESS_SPACE);
            let (s, _) = rlimit::getrlimit(rlimit::Resource::CPU).unwrap();
            assert!(s <= PROBE_CPU_SECONDS);
            // More than the cap cannot be allocated any more.
            let big: Result<Vec<u8>, _> = {
                let mut v = Vec::new();
                v.try_reserve_exact(2 << 30).map(|_| v)
            };
            assert!(big.is_err(), "2 GiB allocated under a 1 GiB limit");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "library::probe::tests::limit_self_lowers_only",
                "--test-threads=1",
            ])
            .env("MOHD_TEST_LIMIT_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
