//! Audio codecs for RTP payloads: G.711 μ-law (PCMU) and A-law (PCMA), RFC 3551 static
//! payload types 0 and 8; G.722 ([`g722`], payload type 9, 16 kHz audio on an 8 kHz RTP
//! clock); Opus (RFC 7587, dynamic payload type, 48 kHz clock).
//!
//! Owns the `Codec` enum every other module names a payload format by (its SDP name, RTP
//! clock, audio rate and config name), and the stateless G.711 encode/decode of whole frames
//! into caller-owned buffers (no allocation). The stateful codecs have their own state types.
//! G.711 is hand-written in [`g711`] (about 60 lines) rather than taken from a crate so
//! that it is pinned to the ITU-T G.191 reference and tested against the G.711 tables.

pub mod g711;
pub mod g722;
pub mod opus;

/// A payload format mohd can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 μ-law, RTP payload type 0.
    Pcmu,
    /// G.711 A-law, RTP payload type 8.
    Pcma,
    /// G.722 at 64 kbit/s, RTP payload type 9: 16 kHz audio, RTP clock 8 kHz (RFC 3551 §4.5.2).
    G722,
    /// Opus (RFC 7587): dynamic payload type, RTP clock 48 kHz, `opus/48000/2` in SDP.
    Opus,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

    /// The stateless narrowband codecs (one byte per 8 kHz sample).
    pub const G711: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The payload type we put in our own offers: the RFC 3551 static number, or for Opus the
    /// dynamic number most PBXs and WebRTC use (111). In an answer the offer's number wins.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus => 111,
        }
    }

    /// The encoding name as written in SDP `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The name in the config file and on the command line (`[rtp] codecs`, `--codec`).
    pub fn config_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "pcmu",
            Codec::Pcma => "pcma",
            Codec::G722 => "g722",
            Codec::Opus => "opus",
        }
    }

    /// The codec for a config name, ignoring case.
    pub fn from_config_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.config_name().eq_ignore_ascii_case(name))
    }

    /// RTP clock rate in Hz: 8,000 for G.711 and G.722 (RFC 3551's historical quirk: G.722
    /// samples at 16 kHz but its timestamp advances by 8,000 a second), 48,000 for Opus.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The sample rate of the audio the codec carries, and so of the render it is encoded
    /// from: 8 kHz, 16 kHz for G.722, 48 kHz for Opus.
    pub fn audio_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// The channel count `a=rtpmap` carries: `Some(2)` for Opus (RFC 7587 §7 fixes
    /// `opus/48000/2` whatever is sent), `None` (mono, omitted) for the others.
    pub fn rtpmap_channels(self) -> Option<u8> {
        match self {
            Codec::Opus => Some(2),
            _ => None,
        }
    }

    /// The value of `a=rtpmap:PT …`: `PCMU/8000`, `G722/8000`, `opus/48000/2`.
    pub fn rtpmap(self) -> String {
        match self.rtpmap_channels() {
            Some(n) => format!("{}/{}/{n}", self.encoding_name(), self.clock_rate()),
            None => format!("{}/{}", self.encoding_name(), self.clock_rate()),
        }
    }

    /// Stateless: one byte per sample, so a packet can be cut from the encoded loop anywhere.
    pub fn is_g711(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma)
    }

    /// The codec for a static payload type (RFC 3551).
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
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
    /// samples. G.711 only: the stateful codecs write nothing here (they have their own
    /// encoder types, [`g722::G722Encoder`] and the Opus encoder).
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        let f = match self {
            Codec::Pcmu => g711::linear_to_ulaw,
            Codec::Pcma => g711::linear_to_alaw,
            Codec::G722 | Codec::Opus => return,
        };
        for (o, &s) in out.iter_mut().zip(pcm) {
            *o = f(s);
        }
    }

    /// Decodes `data` into `out`; converts `min(data.len(), out.len())` samples. G.711 only,
    /// as [`Codec::encode`].
    pub fn decode(self, data: &[u8], out: &mut [i16]) {
        let f = match self {
            Codec::Pcmu => g711::ulaw_to_linear,
            Codec::Pcma => g711::alaw_to_linear,
            Codec::G722 | Codec::Opus => return,
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
            assert_eq!(Codec::from_name(c.encoding_name()), Some(c));
            assert_eq!(Codec::from_config_name(c.config_name()), Some(c));
        }
        for c in Codec::G711 {
            assert_eq!(Codec::from_payload_type(c.payload_type()), Some(c));
            assert_eq!((c.clock_rate(), c.audio_rate()), (8000, 8000));
        }
        assert_eq!(Codec::from_payload_type(9), Some(Codec::G722));
        assert_eq!(
            (Codec::G722.clock_rate(), Codec::G722.audio_rate()),
            (8000, 16000)
        );
        assert_eq!(Codec::Opus.rtpmap(), "opus/48000/2");
        assert_eq!(Codec::G722.rtpmap(), "G722/8000");
        assert_eq!(Codec::from_name("OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::from_name("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_name("Pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::from_name("G729"), None);
        assert_eq!(Codec::from_name(""), None);
        assert_eq!(Codec::from_payload_type(18), None);
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
