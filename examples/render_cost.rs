//! What a 30-minute playlist costs to render per codec: the render at the codec's rate (decode,
//! resample, loudness, trims, crossfades, limiter) and the encoding of the whole loop.
//! A measurement, not a test: `cargo run --release --example render_cost [MINUTES]`.
//!
//! The playlist is ten WAV files (44.1 kHz stereo, 16-bit) of generated music, written once to
//! `$TMPDIR/mohd-render-cost/` and reused by later runs (delete the folder to make them again).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mohd::channel::compose::Composition;
use mohd::channel::encoded::{CodecPlan, EncodedLoop, render_encoded};
use mohd::channel::{ChannelRender, DEFAULT_TARGET_LUFS, MusicSource};
use mohd::codec::Codec;

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
    println!("| codec | render at | render + encode (s) | encoded size (MB) |");
    println!("|---|---|---|---|");
    // What the server does: the 8 kHz render (G.711 encoded with it) fixes the loop's length
    // in 20 ms frames, and each wideband codec is rendered at its own rate to that length and
    // encoded (with its pre-roll), the PCM dropped.
    let started = Instant::now();
    let render = ChannelRender::render("cost", &playlist, DEFAULT_TARGET_LUFS);
    row(
        "PCMU + PCMA",
        8,
        started.elapsed(),
        2 * render.len_samples(),
    );
    let plan = CodecPlan::default();
    for codec in [Codec::G722, Codec::Opus] {
        let started = Instant::now();
        let composition = Composition::playlist(playlist.clone(), DEFAULT_TARGET_LUFS);
        let encoded = render_encoded("cost", &composition, codec, render.frames(), &plan);
        let elapsed = started.elapsed();
        let bytes = match &encoded {
            Some(EncodedLoop::G722(g)) => g.bytes().len(),
            Some(EncodedLoop::Opus(o)) => o.data().len(),
            None => return Err(format!("{} did not encode", codec.config_name()).into()),
        };
        row(
            codec.config_name(),
            codec.audio_rate() / 1000,
            elapsed,
            bytes,
        );
    }
    Ok(())
}

fn row(name: &str, khz: u32, elapsed: Duration, bytes: usize) {
    println!(
        "| {name} | {khz} kHz | {:.2} | {:.1} |",
        secs(elapsed),
        bytes as f64 / 1e6
    );
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
