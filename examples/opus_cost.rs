//! What Opus costs per 20 ms frame (960 samples at 48 kHz in, one packet out), encode and
//! decode, with the music settings mohd uses (40 kb/s, complexity 10, no DTX).
//! A measurement, not a test: `cargo run --release --example opus_cost`.

use std::hint::black_box;
use std::time::Instant;

use mohd::codec::opus::{
    FRAME_SAMPLES, MAX_FRAME_BYTES, OpusDecoder, OpusEncoder, OpusEncoderConfig,
};

fn main() -> Result<(), mohd::codec::opus::OpusError> {
    // The demo melody: music, so the encoder works as it will on a playlist (a sine would
    // flatter it). Ten seconds, 500 frames.
    let pcm: Vec<i16> = mohd::audio::demo_melody(48_000)
        .iter()
        .map(|&x| (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let frames = pcm.len() / FRAME_SAMPLES;

    let mut encoder = OpusEncoder::new(OpusEncoderConfig::default())?;
    let mut packets = Vec::with_capacity(frames);
    let mut packet = [0u8; MAX_FRAME_BYTES];
    let started = Instant::now();
    for frame in pcm.chunks_exact(FRAME_SAMPLES) {
        let n = encoder.encode_frame(black_box(frame), &mut packet)?;
        packets.push(packet[..n].to_vec());
    }
    let encode = started.elapsed();

    let mut decoder = OpusDecoder::new(48_000)?;
    let mut out = [0i16; FRAME_SAMPLES];
    let started = Instant::now();
    for p in &packets {
        decoder.decode(black_box(p), &mut out)?;
        black_box(&out);
    }
    let decode = started.elapsed();

    let per_frame_us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / frames as f64;
    let bytes: usize = packets.iter().map(Vec::len).sum();
    println!(
        "Opus per 20 ms frame: encode {:.1} µs, decode {:.1} µs (average {:.0} bytes, {} frames)",
        per_frame_us(encode),
        per_frame_us(decode),
        bytes as f64 / frames as f64,
        frames
    );
    Ok(())
}
