//! What G.722 costs per 20 ms frame (320 samples in, 160 bytes out), encode and decode.
//! A measurement, not a test: `cargo run --release --example g722_cost`.

use std::hint::black_box;
use std::time::Instant;

use mohd::codec::g722::{G722Decoder, G722Encoder};

/// 20 ms at 16 kHz.
const FRAME: usize = 320;
/// Ten seconds of audio.
const FRAMES: usize = 500;

fn main() {
    // 1 kHz and 5.5 kHz, so both sub-bands work.
    let pcm: Vec<i16> = (0..FRAME * FRAMES)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let x = (std::f64::consts::TAU * 1000.0 * t).sin() * 12_000.0
                + (std::f64::consts::TAU * 5500.0 * t).sin() * 6_000.0;
            x as i16
        })
        .collect();
    let mut encoder = G722Encoder::new();
    let mut packet = [0u8; FRAME / 2];
    let started = Instant::now();
    for frame in pcm.chunks_exact(FRAME) {
        encoder.encode(black_box(frame), &mut packet);
        black_box(&packet);
    }
    let encode = started.elapsed();

    let mut decoder = G722Decoder::new();
    let mut out = [0i16; FRAME];
    let started = Instant::now();
    for _ in 0..FRAMES {
        decoder.decode(black_box(&packet), &mut out);
        black_box(&out);
    }
    let decode = started.elapsed();

    let per_frame_us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / FRAMES as f64;
    println!(
        "G.722 per 20 ms frame: encode {:.1} µs, decode {:.1} µs",
        per_frame_us(encode),
        per_frame_us(decode)
    );
}
