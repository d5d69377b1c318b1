//! What a 30-minute playlist costs to render per codec: the render at the codec's rate (decode,
//! resample, loudness, trims, crossfades, limiter) and the encoding of the whole loop.
//! A measurement, not a test: `cargo run --release --example render_cost [MINUTES]`.
//!
//! The playlist is ten WAV files (44.1 kHz stereo, 16-bit) of generated music, written once to
//! `$TMPDIR/mohd-render-cost/` and reused by later runs (delete the folder to make them again).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mohd::channel::{ChannelRender, DEFAULT_TARGET_LUFS, MusicSource};
use mohd::codec::g722::G722Encoder;
use mohd::codec::opus::{FRAME_SAMPLES, MAX_FRAME_BYTES, OpusEncoder, OpusEncoderConfig};
use mohd::codec::{Codec, g711};

const TRACKS: usize = 10;
const SOURCE_RATE: u32 = 44_100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minutes: u32 = match std::env::args().nth(1) {
        Some(m) => m.parse()?,
        None => 30,
    };
    let playlist = MusicSource::Files(make_playlist(minutes)?);
    println!(
        "render cost of a {minutes}-minute playlist ({TRACKS} WAV files, 44.1 kHz stereo), \
         {} threads available",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("| codec | render at | render (s) | encode (s) | total (s) | encoded size (MB) |");
    println!("|---|---|---|---|---|---|");
    for codec in [Codec::Pcmu, Codec::G722, Codec::Opus] {
        let rate = codec.audio_rate();
        let started = Instant::now();
        let render = ChannelRender::render_at("cost", &playlist, DEFAULT_TARGET_LUFS, rate);
        let rendered = started.elapsed();
        let started = Instant::now();
        let bytes = encode_loop(codec, &render.pcm)?;
        let encoded = started.elapsed();
        let name = if codec == Codec::Pcmu {
            "PCMU + PCMA"
        } else {
            codec.config_name()
        };
        println!(
            "| {name} | {} kHz | {:.2} | {:.2} | {:.2} | {:.1} |",
            rate / 1000,
            secs(rendered),
            secs(encoded),
            secs(rendered + encoded),
            bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// Encodes the whole loop with `codec` (G.711: both laws) and returns the encoded bytes.
fn encode_loop(codec: Codec, pcm: &[i16]) -> Result<usize, Box<dyn std::error::Error>> {
    Ok(match codec {
        Codec::Pcmu | Codec::Pcma => {
            let mu: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
            let a: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_alaw(s)).collect();
            mu.len() + a.len()
        }
        Codec::G722 => {
            let mut encoder = G722Encoder::new();
            let mut out = vec![0u8; pcm.len() / 2 + 1];
            encoder.encode(pcm, &mut out)
        }
        Codec::Opus => {
            let mut encoder = OpusEncoder::new(OpusEncoderConfig::default())?;
            let mut packet = [0u8; MAX_FRAME_BYTES];
            let mut total = 0;
            for frame in pcm.chunks_exact(FRAME_SAMPLES) {
                total += encoder.encode_frame(frame, &mut packet)?;
            }
            total
        }
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Ten files that together last `minutes`, made once: the demo melody at 44.1 kHz, each file
/// transposed and at its own level so the loudness stage has work to do, in stereo.
fn make_playlist(minutes: u32) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let folder = std::env::temp_dir().join("mohd-render-cost");
    std::fs::create_dir_all(&folder)?;
    let seconds_each = (minutes as usize * 60).div_ceil(TRACKS);
    let melody = mohd::audio::demo_melody(SOURCE_RATE);
    (0..TRACKS)
        .map(|i| {
            let path = folder.join(format!("{minutes}min-{i:02}.wav"));
            if !path.exists() {
                write_track(&path, &melody, i, seconds_each)?;
            }
            Ok(path)
        })
        .collect()
}

fn write_track(
    path: &Path,
    melody: &[f32],
    index: usize,
    seconds: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: SOURCE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    // Written under a temporary name so an interrupted run leaves no short file behind.
    let partial = path.with_extension("partial");
    let mut writer = hound::WavWriter::create(&partial, spec)?;
    // Read the melody faster or slower (a crude transposition) and at another level.
    let speed = 1.0 + 0.06 * index as f64;
    let level = 0.3 + 0.06 * index as f32;
    for n in 0..seconds * SOURCE_RATE as usize {
        let pos = (n as f64 * speed) as usize % melody.len();
        let s = (melody[pos] * level * 32767.0).clamp(-32768.0, 32767.0) as i16;
        writer.write_sample(s)?;
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    std::fs::rename(partial, path)?;
    Ok(())
}
