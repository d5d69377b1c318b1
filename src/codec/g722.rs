//! G.722 at 64 kbit/s (mode 1): 16 kHz, 16-bit PCM in, one byte per two samples out
//! (RFC 3551 §4.5.2: `a=rtpmap:9 G722/8000`, so 20 ms is 320 samples, 160 bytes, and the RTP
//! timestamp advances by 160).
//!
//! Owns the encoder and decoder state ([`G722Encoder`], [`G722Decoder`]) and the per-frame
//! encode/decode into caller-owned buffers (no allocation).
//!
//! # Why hand-written
//!
//! This is the integer algorithm of ITU-T G.722 in the CMU / SpanDSP (`g722.c`) form, about
//! 250 lines, tested bit-exact against SpanDSP 0.0.6 and libg722 (PyPI `g722` 1.2.8) over
//! generated signals (`tests/data/g722/`, which says how the vectors were made). The crates surveyed were not taken: `audio-codec` 0.4 needs Rust 1.89
//! (we support 1.85) and brings `fearless_simd`; `ezk-g722` brings the ezk media framework
//! and tokio; `oxideav-g722` is at 0.0.3. None ships tests against a reference that we could
//! rely on instead of our own.
//!
//! Names of the steps (`INVQAL`, `LOGSCL`, ...) are G.722's block names, so the code can be
//! read against the recommendation.

/// Saturates to the 16-bit range, as G.722's arithmetic does at every step.
fn saturate(x: i32) -> i32 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// Quadrature mirror filter taps (G.722 Table 11), shared by the analysis and synthesis QMF.
const QMF_COEFFS: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Low-band quantiser decision levels (QUANTL), scaled by the step size `det`.
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Low-band 6-bit codes for a negative difference, by decision interval.
const ILN: [i32; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
/// Low-band 6-bit codes for a positive difference, by decision interval.
const ILP: [i32; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Low-band inverse quantiser, 4-bit (INVQAL: what the predictor sees).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Low-band inverse quantiser, 6-bit (INVQBL: what the decoder outputs in mode 1).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Low-band log scale factor multipliers (LOGSCL), by magnitude class.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// 4-bit low-band code to magnitude class.
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table for the step size (SCALEL/SCALEH).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// High-band inverse quantiser (INVQAH).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// High-band log scale factor multipliers (LOGSCH), by magnitude class.
const WH: [i32; 3] = [0, -214, 798];
/// 2-bit high-band code to magnitude class.
const RH2: [usize; 4] = [2, 1, 2, 1];

/// Highest log scale factor of the low band (LOGSCL limit).
const LOW_NB_MAX: i32 = 18432;
/// Highest log scale factor of the high band (LOGSCH limit).
const HIGH_NB_MAX: i32 = 22528;

/// One sub-band's adaptive predictor and step size (G.722 blocks 3 and 4).
#[derive(Clone, Debug)]
struct Band {
    /// Predicted signal (PREDIC).
    s: i32,
    /// Pole-section contribution to the prediction.
    sp: i32,
    /// Zero-section contribution to the prediction.
    sz: i32,
    /// Reconstructed signal, now and the two before.
    r: [i32; 3],
    /// Pole coefficients (index 0 unused).
    a: [i32; 3],
    /// Pole coefficients being updated.
    ap: [i32; 3],
    /// Partially reconstructed signal, now and the two before.
    p: [i32; 3],
    /// Quantised differences, now and the six before.
    d: [i32; 7],
    /// Zero coefficients (index 0 unused).
    b: [i32; 7],
    /// Zero coefficients being updated.
    bp: [i32; 7],
    /// Log scale factor.
    nb: i32,
    /// Quantiser step size.
    det: i32,
}

impl Band {
    fn new(det: i32) -> Band {
        Band {
            s: 0,
            sp: 0,
            sz: 0,
            r: [0; 3],
            a: [0; 3],
            ap: [0; 3],
            p: [0; 3],
            d: [0; 7],
            b: [0; 7],
            bp: [0; 7],
            nb: 0,
            det,
        }
    }

    /// INVQAL, LOGSCL, SCALEL, then the predictor, for the low band's 6-bit code.
    fn update_low(&mut self, code6: i32) {
        let code4 = (code6 >> 2) as usize;
        let dlow = (self.det * QM4[code4]) >> 15;
        let nb = ((self.nb * 127) >> 7) + WL[RL42[code4] as usize];
        self.nb = nb.clamp(0, LOW_NB_MAX);
        self.det = step_size(self.nb, 8);
        self.adapt(dlow);
    }

    /// INVQAH, LOGSCH, SCALEH, then the predictor, for the high band's 2-bit code.
    fn update_high(&mut self, code2: i32) {
        let code2 = code2 as usize;
        let dhigh = (self.det * QM2[code2]) >> 15;
        let nb = ((self.nb * 127) >> 7) + WH[RH2[code2]];
        self.nb = nb.clamp(0, HIGH_NB_MAX);
        self.det = step_size(self.nb, 10);
        self.adapt(dhigh);
    }

    /// Block 4: reconstruct, update pole and zero coefficients, shift the delay lines and
    /// predict the next sample, from the quantised difference `d`.
    fn adapt(&mut self, d: i32) {
        // RECONS, PARREC
        self.d[0] = d;
        self.r[0] = saturate(self.s + d);
        self.p[0] = saturate(self.sz + d);
        self.update_poles();
        self.update_zeros(d);
        // DELAYA
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
            self.b[i] = self.bp[i];
        }
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
            self.a[i] = self.ap[i];
        }
        // FILTEP
        let wd1 = (self.a[1] * saturate(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * saturate(self.r[2] + self.r[2])) >> 15;
        self.sp = saturate(wd1 + wd2);
        // FILTEZ
        let sz: i32 = (1..7)
            .map(|i| (self.b[i] * saturate(self.d[i] + self.d[i])) >> 15)
            .sum();
        self.sz = saturate(sz);
        // PREDIC
        self.s = saturate(self.sp + self.sz);
    }

    /// UPPOL2 and UPPOL1: the second-order pole section, kept stable by its limits.
    fn update_poles(&mut self) {
        let sign = |x: i32| x >> 15;
        let (sg0, sg1, sg2) = (sign(self.p[0]), sign(self.p[1]), sign(self.p[2]));
        let wd1 = saturate(self.a[1] << 2);
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 } + ((self.a[2] * 32512) >> 15);
        self.ap[2] = wd3.clamp(-12288, 12288);

        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = saturate(15360 - self.ap[2]);
        self.ap[1] = saturate(wd1 + wd2).clamp(-limit, limit);
    }

    /// UPZERO: the sixth-order zero section, by sign agreement with past differences.
    fn update_zeros(&mut self, d: i32) {
        let wd1 = if d == 0 { 0 } else { 128 };
        let sg0 = d >> 15;
        for i in 1..7 {
            let wd2 = if self.d[i] >> 15 == sg0 { wd1 } else { -wd1 };
            let wd3 = (self.b[i] * 32640) >> 15;
            self.bp[i] = saturate(wd2 + wd3);
        }
    }
}

/// SCALEL/SCALEH: the step size from the log scale factor; `shift` is 8 for the low band and
/// 10 for the high band.
fn step_size(nb: i32, shift: i32) -> i32 {
    let mantissa = ILB[((nb >> 6) & 31) as usize];
    let exponent = shift - (nb >> 11);
    let det = if exponent < 0 {
        mantissa << -exponent
    } else {
        mantissa >> exponent
    };
    det << 2
}

/// The QMF delay line, 24 taps, two new samples per step.
#[derive(Clone, Debug)]
struct Qmf {
    x: [i32; 24],
}

impl Qmf {
    fn new() -> Qmf {
        Qmf { x: [0; 24] }
    }

    /// Shifts in two samples and returns the filter's (odd-tap, even-tap) sums.
    fn push(&mut self, first: i32, second: i32) -> (i32, i32) {
        self.x.copy_within(2.., 0);
        self.x[22] = first;
        self.x[23] = second;
        let mut odd = 0;
        let mut even = 0;
        for (i, c) in QMF_COEFFS.iter().enumerate() {
            odd += self.x[2 * i] * c;
            even += self.x[2 * i + 1] * QMF_COEFFS[11 - i];
        }
        (odd, even)
    }
}

/// G.722 64 kbit/s encoder state; one per outgoing stream, kept across frames.
#[derive(Clone, Debug)]
pub struct G722Encoder {
    qmf: Qmf,
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        G722Encoder::new()
    }
}

impl G722Encoder {
    /// An encoder in G.722's reset state.
    pub fn new() -> G722Encoder {
        G722Encoder {
            qmf: Qmf::new(),
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Encodes 16 kHz `pcm16k` into `out`, one byte per two samples; returns the bytes written,
    /// `min(pcm16k.len() / 2, out.len())`. An odd last sample is not encoded, so callers pass
    /// whole frames (an even number of samples).
    pub fn encode(&mut self, pcm16k: &[i16], out: &mut [u8]) -> usize {
        let mut written = 0;
        for (pair, byte) in pcm16k.chunks_exact(2).zip(out.iter_mut()) {
            *byte = self.encode_pair(i32::from(pair[0]), i32::from(pair[1]));
            written += 1;
        }
        written
    }

    fn encode_pair(&mut self, first: i32, second: i32) -> u8 {
        let (odd, even) = self.qmf.push(first, second);
        let xlow = (even + odd) >> 14;
        let xhigh = (even - odd) >> 14;

        let ilow = quantize_low(saturate(xlow - self.low.s), self.low.det);
        self.low.update_low(ilow);
        let ihigh = quantize_high(saturate(xhigh - self.high.s), self.high.det);
        self.high.update_high(ihigh);
        ((ihigh << 6) | ilow) as u8
    }
}

/// QUANTL: the 6-bit low-band code for the difference `el` at step size `det`.
fn quantize_low(el: i32, det: i32) -> i32 {
    // The magnitude of a negative difference is its one's complement, as in the recommendation.
    let magnitude = if el >= 0 { el } else { -(el + 1) };
    let interval = (1..30)
        .find(|&i| magnitude < (Q6[i] * det) >> 12)
        .unwrap_or(30);
    if el < 0 { ILN[interval] } else { ILP[interval] }
}

/// QUANTH: the 2-bit high-band code for the difference `eh` at step size `det`.
fn quantize_high(eh: i32, det: i32) -> i32 {
    let magnitude = if eh >= 0 { eh } else { -(eh + 1) };
    let outer = magnitude >= (564 * det) >> 12;
    match (eh < 0, outer) {
        (true, false) => 1,
        (true, true) => 0,
        (false, false) => 3,
        (false, true) => 2,
    }
}

/// G.722 64 kbit/s decoder state; one per incoming stream, kept across frames.
#[derive(Clone, Debug)]
pub struct G722Decoder {
    qmf: Qmf,
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        G722Decoder::new()
    }
}

impl G722Decoder {
    /// A decoder in G.722's reset state.
    pub fn new() -> G722Decoder {
        G722Decoder {
            qmf: Qmf::new(),
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Decodes `data` into 16 kHz `pcm16k`, two samples per byte; returns the samples written,
    /// `2 * min(data.len(), pcm16k.len() / 2)`.
    pub fn decode(&mut self, data: &[u8], pcm16k: &mut [i16]) -> usize {
        let mut written = 0;
        for (&code, pair) in data.iter().zip(pcm16k.chunks_exact_mut(2)) {
            let (first, second) = self.decode_byte(code);
            pair[0] = first;
            pair[1] = second;
            written += 2;
        }
        written
    }

    fn decode_byte(&mut self, code: u8) -> (i16, i16) {
        let ilow = i32::from(code & 0x3F);
        let ihigh = i32::from(code >> 6);
        // INVQBL, RECONS and LIMIT use the step sizes before this code's update.
        let rlow = (self.low.s + ((self.low.det * QM6[ilow as usize]) >> 15)).clamp(-16384, 16383);
        let rhigh =
            (self.high.s + ((self.high.det * QM2[ihigh as usize]) >> 15)).clamp(-16384, 16383);
        self.low.update_low(ilow);
        self.high.update_high(ihigh);

        let (second, first) = self.qmf.push(rlow + rhigh, rlow - rhigh);
        (output_sample(first), output_sample(second))
    }
}

/// The synthesis QMF's sum scaled back to 16 bits. Saturated, as libg722 and WebRTC's copy of
/// this decoder do: SpanDSP 0.0.6 casts instead, so an overload (a full-scale square causes
/// many) wraps to a full-scale click of the other sign. Nothing else in the decoder differs.
fn output_sample(sum: i32) -> i16 {
    saturate(sum >> 11) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_bound_the_work() {
        let mut enc = G722Encoder::new();
        let mut out = [0u8; 2];
        assert_eq!(enc.encode(&[100; 10], &mut out), 2);
        let mut dec = G722Decoder::new();
        let mut pcm = [0i16; 5];
        assert_eq!(dec.decode(&[0x7F; 10], &mut pcm), 4);
    }
}
