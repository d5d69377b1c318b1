//! Audio codecs for RTP payloads: G.711 μ-law (PCMU) and A-law (PCMA), RFC 3551 static
//! payload types 0 and 8; and G.722 ([`g722`], payload type 9, not yet negotiated).
//!
//! Owns the `Codec` enum every other module names a payload format by, and the
//! encode/decode of whole frames into caller-owned buffers (no allocation).
//! G.711 is hand-written in [`g711`] (about 60 lines) rather than taken from a crate so
//! that it is pinned to the ITU-T G.191 reference and tested against the G.711 tables.

pub mod g711;
pub mod g722;

/// A payload format mohd can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 μ-law, RTP payload type 0.
    Pcmu,
    /// G.711 A-law, RTP payload type 8.
    Pcma,
}

impl Codec {
    /// Every codec, in order of preference for an answer.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The RFC 3551 static payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name as written in SDP `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        8000
    }

    /// The codec for a static payload type.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The codec for an SDP encoding name, ignoring case (SDP names are case-insensitive).
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.encoding_name().eq_ignore_ascii_case(name))
    }

    /// Encodes `pcm` into `out`, one byte per sample; converts `min(pcm.len(), out.len())`
    /// samples.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        let f = match self {
            Codec::Pcmu => g711::linear_to_ulaw,
            Codec::Pcma => g711::linear_to_alaw,
        };
        for (o, &s) in out.iter_mut().zip(pcm) {
            *o = f(s);
        }
    }

    /// Decodes `data` into `out`; converts `min(data.len(), out.len())` samples.
    pub fn decode(self, data: &[u8], out: &mut [i16]) {
        let f = match self {
            Codec::Pcmu => g711::ulaw_to_linear,
            Codec::Pcma => g711::alaw_to_linear,
        };
        for (o, &c) in out.iter_mut().zip(data) {
            *o = f(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_payload_types() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_payload_type(c.payload_type()), Some(c));
            assert_eq!(Codec::from_name(c.encoding_name()), Some(c));
            assert_eq!(c.clock_rate(), 8000);
        }
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::from_name("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_name("Pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::from_name("G722"), None);
        assert_eq!(Codec::from_name(""), None);
        assert_eq!(Codec::from_payload_type(9), None);
    }

    #[test]
    fn frame_encode_decode() {
        let pcm = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        let mut enc = [0u8; 5];
        Codec::Pcmu.encode(&pcm, &mut enc);
        assert_eq!(enc[0], 0xFF);
        let mut dec = [0i16; 5];
        Codec::Pcmu.decode(&enc, &mut dec);
        for (a, b) in pcm.iter().zip(dec) {
            assert!((i32::from(*a) - i32::from(b)).abs() <= 1024, "{a} vs {b}");
        }
        Codec::Pcma.encode(&pcm, &mut enc);
        assert_eq!(enc[0], 0xD5);
        // Shorter output: only what fits is written, nothing panics.
        let mut short = [0u8; 2];
        Codec::Pcma.encode(&pcm, &mut short);
        assert_eq!(short, [0xD5, g711::linear_to_alaw(1000)]);
    }
}
