//! G.711 μ-law (PCMU) and A-law (PCMA), bit-exact to ITU-T G.711 as implemented by the
//! reference `g711.c` of ITU-T G.191 (the Software Tool Library).
//!
//! # Which quantiser, and why
//!
//! G.711 defines the encoder by decision thresholds on a 13-bit (A-law) or 14-bit (μ-law)
//! signed input. G.191's `alaw_compress` / `ulaw_compress` take 16-bit samples and simply
//! drop the low bits (A-law keeps the 13 most significant bits, μ-law the 14), taking the
//! magnitude of a negative sample as its one's complement (`!x`, i.e. `-x - 1`). That is what
//! this module does. sox, and crates that copy it, round to the nearest level instead, so they
//! disagree with G.191 on about 500 (μ-law) / 1,000 (A-law) of the 65,536 inputs, always by
//! one step at a decision threshold. We follow G.191 because it is the normative reference:
//! encoder conformance test vectors are produced with it, and a truncating encoder is what a
//! G.711 codec in a PBX or a phone implements. The audible difference is nil.
//!
//! The decoder outputs the midpoint of each quantisation interval (G.711 Tables 1a/2a),
//! scaled to 16 bits, as G.191's `alaw_expand` / `ulaw_expand` do.
//!
//! Encoding goes through 64 KiB tables built at compile time (one per law, indexed by the
//! sample's bit pattern), so the per-sample cost is one load; the arithmetic versions below
//! are what fills them.

/// μ-law encoder table, indexed by `sample as u16`.
static ULAW_ENCODE: [u8; 65536] = build_encode_table(Law::Mu);
/// A-law encoder table, indexed by `sample as u16`.
static ALAW_ENCODE: [u8; 65536] = build_encode_table(Law::A);
/// μ-law decoder table, indexed by code.
static ULAW_DECODE: [i16; 256] = build_decode_table(Law::Mu);
/// A-law decoder table, indexed by code.
static ALAW_DECODE: [i16; 256] = build_decode_table(Law::A);

/// Encodes one 16-bit linear sample as μ-law.
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[usize::from(sample as u16)]
}

/// Decodes one μ-law code to a 16-bit linear sample.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Encodes one 16-bit linear sample as A-law.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[usize::from(sample as u16)]
}

/// Decodes one A-law code to a 16-bit linear sample.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

#[derive(Clone, Copy)]
enum Law {
    Mu,
    A,
}

const fn build_encode_table(law: Law) -> [u8; 65536] {
    let mut table = [0u8; 65536];
    let mut i = 0;
    while i < table.len() {
        let sample = i as u16 as i16;
        table[i] = match law {
            Law::Mu => ulaw_compress(sample),
            Law::A => alaw_compress(sample),
        };
        i += 1;
    }
    table
}

const fn build_decode_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < table.len() {
        let code = i as u8;
        table[i] = match law {
            Law::Mu => ulaw_expand(code),
            Law::A => alaw_expand(code),
        };
        i += 1;
    }
    table
}

/// G.191 `ulaw_compress` for one sample.
const fn ulaw_compress(sample: i16) -> u8 {
    // Magnitude of the 14 MSBs; negative samples use the one's complement, as G.191 does.
    // Adding 33 (the offset between the A-law and μ-law thresholds) makes the segment
    // boundaries powers of two.
    let magnitude = if sample < 0 { !sample } else { sample };
    let mut absno = ((magnitude >> 2) as i32) + 33;
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high_nibble = 0x8 - segno;
    let low_nibble = 0xF - ((absno >> segno) & 0xF);
    let code = ((high_nibble << 4) | low_nibble) as u8;
    if sample >= 0 { code | 0x80 } else { code }
}

/// G.191 `ulaw_expand` for one code.
const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x7) as i32;
    let mantissa = (inverted & 0xF) as i32;
    let step = 4 << (exponent + 1);
    let value = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    let value = if code < 0x80 { -value } else { value };
    value as i16
}

/// G.191 `alaw_compress` for one sample.
const fn alaw_compress(sample: i16) -> u8 {
    // The 13 MSBs are sign + 12 bits, but every A-law decision threshold is even, so only
    // the top 11 magnitude bits decide: shift by 4.
    let magnitude = if sample < 0 { !sample } else { sample };
    let mut ix = (magnitude >> 4) as i32;
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// G.191 `alaw_expand` for one code.
const fn alaw_expand(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0xF;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x8;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    let value = if code > 127 { mantissa } else { -mantissa };
    value as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of a G.711 quantisation table: `count` intervals of width `step`, the first
    /// starting at decision value `first_decision` and decoding to `first_output`. The
    /// numbers are copied from ITU-T G.711 (11/88), Table 1a (A-law, 4096 full scale) and
    /// Table 2a (μ-law, 8159 full scale), not derived from the code under test.
    struct Row {
        count: u32,
        first_decision: i32,
        step: i32,
        first_output: i32,
    }

    const fn row(count: u32, first_decision: i32, step: i32, first_output: i32) -> Row {
        Row {
            count,
            first_decision,
            step,
            first_output,
        }
    }

    /// G.711 Table 1a, segments 1..8 (the first two share a step of 2).
    const ALAW_TABLE: [Row; 8] = [
        row(16, 0, 2, 1),
        row(16, 32, 2, 33),
        row(16, 64, 4, 66),
        row(16, 128, 8, 132),
        row(16, 256, 16, 264),
        row(16, 512, 32, 528),
        row(16, 1024, 64, 1056),
        row(16, 2048, 128, 2112),
    ];

    /// G.711 Table 2a, segments 1..8; segment 1 starts with the one-wide interval 0..1 that
    /// decodes to 0.
    const ULAW_TABLE: [Row; 9] = [
        row(1, 0, 1, 0),
        row(15, 1, 2, 2),
        row(16, 31, 4, 33),
        row(16, 95, 8, 99),
        row(16, 223, 16, 231),
        row(16, 479, 32, 495),
        row(16, 991, 64, 1023),
        row(16, 2015, 128, 2079),
        row(16, 4063, 256, 4191),
    ];

    /// (lower decision value, decoder output) for intervals 0..=127, in table units.
    fn intervals(table: &[Row]) -> Vec<(i32, i32)> {
        let mut v = Vec::new();
        for r in table {
            for i in 0..r.count as i32 {
                v.push((r.first_decision + i * r.step, r.first_output + i * r.step));
            }
        }
        assert_eq!(v.len(), 128);
        v
    }

    /// Character signal of interval `n` with the given polarity: A-law sets bit 1 for
    /// positive and inverts the even bits (XOR 0x55); μ-law inverts all bits of the
    /// sign-magnitude code except that positive has bit 1 set.
    fn alaw_code(n: usize, positive: bool) -> u8 {
        (n as u8 | if positive { 0x80 } else { 0 }) ^ 0x55
    }
    fn ulaw_code(n: usize, positive: bool) -> u8 {
        if positive {
            0xFF - n as u8
        } else {
            0x7F - n as u8
        }
    }

    /// The reference encoder: keep the `bits` most significant bits (one's complement
    /// magnitude for negatives, as G.191 does), then pick the interval whose lower
    /// decision value is the largest one not above the magnitude.
    fn reference_encoder(table: &[Row], shift: u32, code: fn(usize, bool) -> u8) -> Vec<u8> {
        let iv = intervals(table);
        (0..=u16::MAX)
            .map(|bits| {
                let x = bits as i16;
                let magnitude = i32::from(if x < 0 { !x } else { x }) >> shift;
                let n = iv.iter().rposition(|&(d, _)| d <= magnitude).unwrap();
                code(n, x >= 0)
            })
            .collect()
    }

    /// The reference decoder: the table output of the code's interval, scaled to 16 bits.
    fn reference_decoder(table: &[Row], scale: i32, code: fn(usize, bool) -> u8) -> Vec<i16> {
        let iv = intervals(table);
        let mut out = vec![None; 256];
        for (n, &(_, y)) in iv.iter().enumerate() {
            out[usize::from(code(n, true))] = Some((y * scale) as i16);
            out[usize::from(code(n, false))] = Some((-y * scale) as i16);
        }
        out.into_iter().map(|v| v.unwrap()).collect()
    }

    fn ulaw_encode_reference() -> Vec<u8> {
        reference_encoder(&ULAW_TABLE, 2, ulaw_code)
    }
    fn alaw_encode_reference() -> Vec<u8> {
        // 13 MSBs: sign + 12-bit magnitude on the 4096 scale of Table 1a.
        reference_encoder(&ALAW_TABLE, 3, alaw_code)
    }

    /// The first 16-bit input where `enc` disagrees with `reference`, if any.
    fn first_encoder_mismatch(enc: impl Fn(i16) -> u8, reference: &[u8]) -> Option<(i16, u8, u8)> {
        (0..=u16::MAX).find_map(|bits| {
            let x = bits as i16;
            let want = reference[usize::from(bits)];
            let got = enc(x);
            (got != want).then_some((x, got, want))
        })
    }

    fn first_decoder_mismatch(
        dec: impl Fn(u8) -> i16,
        reference: &[i16],
    ) -> Option<(u8, i16, i16)> {
        (0..=u8::MAX).find_map(|c| {
            let (got, want) = (dec(c), reference[usize::from(c)]);
            (got != want).then_some((c, got, want))
        })
    }

    #[test]
    fn ulaw_encoder_matches_g711_table_for_all_inputs() {
        assert_eq!(
            first_encoder_mismatch(linear_to_ulaw, &ulaw_encode_reference()),
            None
        );
    }

    #[test]
    fn alaw_encoder_matches_g711_table_for_all_inputs() {
        assert_eq!(
            first_encoder_mismatch(linear_to_alaw, &alaw_encode_reference()),
            None
        );
    }

    #[test]
    fn ulaw_decoder_matches_g711_table_for_all_codes() {
        let reference = reference_decoder(&ULAW_TABLE, 4, ulaw_code);
        assert_eq!(first_decoder_mismatch(ulaw_to_linear, &reference), None);
    }

    #[test]
    fn alaw_decoder_matches_g711_table_for_all_codes() {
        let reference = reference_decoder(&ALAW_TABLE, 8, alaw_code);
        assert_eq!(first_decoder_mismatch(alaw_to_linear, &reference), None);
    }

    #[test]
    fn tables_equal_the_arithmetic_reference_code() {
        // The compile-time tables hold exactly what the G.191 arithmetic computes.
        for bits in 0..=u16::MAX {
            let x = bits as i16;
            assert_eq!(linear_to_ulaw(x), ulaw_compress(x));
            assert_eq!(linear_to_alaw(x), alaw_compress(x));
        }
        for c in 0..=u8::MAX {
            assert_eq!(ulaw_to_linear(c), ulaw_expand(c));
            assert_eq!(alaw_to_linear(c), alaw_expand(c));
        }
    }

    #[test]
    fn the_comparison_catches_off_by_one_and_rounding() {
        let ulaw = ulaw_encode_reference();
        let alaw = alaw_encode_reference();
        // An encoder that rounds (as sox does) instead of truncating is caught...
        let rounding_ulaw = |x: i16| {
            linear_to_ulaw(if x >= 0 {
                x.saturating_add(2)
            } else {
                x.saturating_sub(2)
            })
        };
        assert!(first_encoder_mismatch(rounding_ulaw, &ulaw).is_some());
        let rounding_alaw = |x: i16| {
            linear_to_alaw(if x >= 0 {
                x.saturating_add(8)
            } else {
                x.saturating_sub(8)
            })
        };
        assert!(first_encoder_mismatch(rounding_alaw, &alaw).is_some());
        // ...and so is a two's-complement magnitude (|x| instead of !x) for negatives.
        let twos = |x: i16| {
            let c = linear_to_ulaw(x.saturating_abs());
            if x < 0 { c & 0x7F } else { c }
        };
        assert!(first_encoder_mismatch(twos, &ulaw).is_some_and(|m| m.0 < 0));
        // An off-by-one code, or a decoder off by one LSB, is caught too.
        assert!(first_encoder_mismatch(|x| linear_to_ulaw(x).wrapping_add(1), &ulaw).is_some());
        let reference = reference_decoder(&ALAW_TABLE, 8, alaw_code);
        let off = |c: u8| {
            if c == 0x2A {
                alaw_to_linear(c) + 1
            } else {
                alaw_to_linear(c)
            }
        };
        assert_eq!(
            first_decoder_mismatch(off, &reference).map(|m| m.0),
            Some(0x2A)
        );
    }

    #[test]
    fn silence_encodes_to_the_idle_codes() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
    }

    #[test]
    fn extremes_and_round_trip_stay_within_one_step() {
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        // Re-encoding a decoded value gives the same code (the output is inside its interval).
        for c in 0..=u8::MAX {
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "A-law {c:#04x}");
            if c != 0x7F {
                // 0x7F is "-0": it decodes to 0, which encodes as +0 (0xFF).
                assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), c, "μ-law {c:#04x}");
            }
        }
    }
}
