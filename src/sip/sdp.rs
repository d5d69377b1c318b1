//! SDP (RFC 8866) parsing and the music-on-hold side of offer/answer (RFC 3264, RFC 6337).
//!
//! This module owns three things: a tolerant parser for the SDP bodies PBXes, phones and
//! carriers send us; the answer we give to an offer (and the [`MediaParams`] the RTP side
//! needs); and our own offer for an INVITE without SDP, plus reading the answer to it from the
//! ACK. It is pure: no I/O, no clock, no randomness (session id/version and our SRTP key come
//! from the caller).
//!
//! The parser is hand-written rather than taken from the `sdp` crate (webrtc-rs), because:
//! - `sdp` rejects a body with no `t=` line, which some real SIP gear omits; a music-on-hold
//!   server that answers 400 to those calls is worse than one that shrugs;
//! - we only read a dozen line types and attributes, while every unknown line and attribute
//!   (ICE, `a=crypto`, `a=X-cisco-media`, T.38, `b=TIAS`, `a=rtcp-fb`, …) must merely survive
//!   so that the answer can mirror every m-line; that is a few hundred lines, not a dependency
//!   (and `sdp` 0.17.2 would bring `url`, `rand`, `substring` and thiserror 1 along);
//! - the answer must be formatted by hand anyway: the crate's JSEP helpers put
//!   `c=IN IP4 0.0.0.0` inside the m-section, which a PBX reads as hold.
//!
//! Tolerated on input: LF-only or CRLF line ends, blank lines, leading and trailing
//! whitespace, a UTF-8 BOM, missing `o=`/`s=`/`t=` lines, unknown line types and attributes,
//! malformed known attributes (ignored as if unknown), several m-lines of any media type.
//! Rejected: bodies over [`MAX_SDP_BYTES`] or with more than [`MAX_MEDIA`] m-lines, a first line
//! other than `v=0`, lines not shaped `x=…`, unparsable `m=` and `c=` lines (a `c=` address must
//! be an IP literal: we resolve no names in a pure module).
//!
//! Policy on the answer side, as a music source: we answer `sendonly` (we never want the
//! caller's audio), or `inactive` when the offerer will not receive (`sendonly`/`inactive`, or the
//! RFC 2543 hold `c=0.0.0.0`). Only the first usable audio stream is accepted; every other m-line
//! is mirrored with port 0. The codec is the offer's first that `[rtp] codecs` enables (or, with
//! `prefer_own_order`, the first of ours the offer lists); Opus is answered with our fmtp and
//! `a=ptime:20`, since each channel's Opus is encoded once, in 20 ms frames.
//!
//! SRTP is SDES-keyed (RFC 4568, the `a=crypto` lines [`super::sdes`] reads) on `RTP/SAVP` and
//! `RTP/SAVPF` (and "best effort" on `RTP/AVP` with crypto lines), per `[rtp] srtp`
//! ([`SrtpPolicy`]): the answer takes the offer's first usable
//! crypto line and answers it with the same tag and suite and our own key; malformed lines are
//! skipped, and none usable refuses that stream. Keys are taken only from a peer that sent them
//! over TLS, unless configured otherwise ([`AnswerOptions::sdes_allowed`]). Each refusal is a
//! [`NegotiationError`] whose [`NegotiationError::warning`] the 488 carries. DTLS-SRTP
//! (`UDP/TLS/RTP/SAVP*`) is not spoken.

use crate::codec::Codec;
use crate::codec::opus::{self, OpusFmtp};
use crate::rtp::fanout::normalize_ptime;
use crate::rtp::srtp::{MAX_KEY_MATERIAL_LEN, SrtpKeyMaterial, SrtpParams, SrtpSuite};
use crate::sip::sdes::{self, CryptoError, CryptoLine};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Largest SDP body we parse. Real offers are 300 bytes to 3 KiB; ICE-heavy ones stay
/// under 10 KiB. The bound keeps a hostile body from costing more than a copy.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// Most m-lines we accept; an answer mirrors each one, so this also bounds the answer's size.
pub const MAX_MEDIA: usize = 64;

/// RTP clock of the telephone-event we offer for the 8 kHz-clock codecs (G.711, G.722).
const OFFER_TELEPHONE_EVENT_CLOCK: u32 = 8000;

const DEFAULT_PTIME_MS: u32 = 20;

/// Opus goes out as 20 ms frames whatever the offer's ptime (RFC 7587 §4.3 lets the sender
/// choose): each channel's Opus stream is encoded once, in 20 ms frames.
pub const OPUS_PTIME_MS: u32 = 20;

/// Why a body is not SDP we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is not UTF-8 (SDP is UTF-8 text, RFC 8866 §5).
    #[error("SDP body is not UTF-8")]
    NotUtf8,
    /// The body is larger than [`MAX_SDP_BYTES`].
    #[error("SDP body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Size of the body.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body has no lines at all.
    #[error("SDP body is empty")]
    Empty,
    /// The first line is not `v=0`.
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// A line is not `<letter>=<value>`.
    #[error("SDP line {line} is not of the form x=value")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// An `m=` line could not be read.
    #[error("SDP line {line}: malformed m= line")]
    BadMedia {
        /// 1-based line number.
        line: usize,
    },
    /// A `c=` line could not be read, or its address is not an IP literal.
    #[error("SDP line {line}: malformed or non-IP c= line")]
    BadConnection {
        /// 1-based line number.
        line: usize,
    },
    /// More than [`MAX_MEDIA`] m-lines.
    #[error("SDP has more than {max} m-lines")]
    TooManyMedia {
        /// The limit.
        max: usize,
    },
}

/// Why an offer (or the answer to our offer) cannot give us a media stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// No audio m-line with a non-zero port (e.g. a T.38-only or video-only offer).
    #[error("no audio stream offered")]
    NoAudio,
    /// Audio is offered, but in no codec mohd accepts (`[rtp] codecs`), or only on a profile
    /// it does not speak (DTLS-SRTP, say). SIP maps this and the SRTP refusals to 488 Not
    /// Acceptable Here, with a `Warning` from [`NegotiationError::warning`].
    #[error("no common audio codec")]
    NoCommonCodec,
    /// The chosen audio stream has no `c=` line, neither its own nor a session-level one.
    #[error("audio stream has no connection address")]
    NoConnection,
    /// `[rtp] srtp = "required"`, and the offer's stream is plain RTP.
    #[error("plain RTP offered, SRTP required")]
    SrtpRequired,
    /// `[rtp] srtp = "off"`, and the offer's stream is SRTP only.
    #[error("SRTP offered, SRTP off")]
    SrtpOff,
    /// SDES keys offered over a transport anyone on the path can read (UDP, TCP), and
    /// `[rtp] srtp_over_plain_transports` is not set.
    #[error("SRTP keys offered over a plain transport")]
    SdesNeedsTls,
    /// No `a=crypto` line mohd can honour: the first line's reason.
    #[error("no usable a=crypto line: {0}")]
    NoUsableCrypto(CryptoError),
}

impl NegotiationError {
    /// The `Warning` (RFC 3261 §20.43) a 488 carries: its code and text, which names what mohd
    /// accepts so that the PBX's administrator can see what to change. `codecs` are the ones
    /// this call may use.
    pub fn warning(&self, codecs: &[Codec]) -> (u16, String) {
        match self {
            NegotiationError::NoAudio => (304, "Media type not available".to_owned()),
            NegotiationError::NoCommonCodec | NegotiationError::NoConnection => {
                let names: Vec<&str> = effective_codecs(codecs)
                    .iter()
                    .map(|c| c.encoding_name())
                    .collect();
                (
                    305,
                    format!(
                        "Incompatible media format: mohd supports {}",
                        names.join(", ")
                    ),
                )
            }
            NegotiationError::SrtpRequired => (
                302,
                "Incompatible transport protocol: mohd requires SRTP (RTP/SAVP with a=crypto)"
                    .to_owned(),
            ),
            NegotiationError::SrtpOff => (
                302,
                "Incompatible transport protocol: SRTP is off on mohd; offer RTP/AVP".to_owned(),
            ),
            NegotiationError::SdesNeedsTls => (
                399,
                "SRTP keys (a=crypto) are accepted only from SIP over TLS".to_owned(),
            ),
            NegotiationError::NoUsableCrypto(why) => {
                let suites: Vec<&str> = SrtpSuite::ALL.iter().map(|s| s.sdp_name()).collect();
                (
                    306,
                    format!(
                        "Attribute not understood: no usable a=crypto ({why}); mohd supports {} \
                         with an inline key, without MKI",
                        suites.join(", ")
                    ),
                )
            }
        }
    }
}

/// Media direction attribute (RFC 3264 §5.1), from the point of view of the SDP's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv` (also the default when no direction is given).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name, as written in SDP.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        // RFC 8866 names are case-sensitive, but accepting "SendOnly" costs nothing and a
        // missed hold indication is the classic MOH bug (livekit/sip#779).
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(name))
    }

    /// Our direction as a music source, given what the peer declared for the same stream.
    /// The peer receiving (sendrecv/recvonly) lets us send; otherwise we go quiet. Answering
    /// `sendonly` with `inactive` rather than `recvonly` is allowed by RFC 3264 §6.1 and says
    /// truthfully that we will not listen.
    fn ours_given_peer(peer: Direction) -> Direction {
        match peer {
            Direction::SendRecv | Direction::RecvOnly => Direction::SendOnly,
            Direction::SendOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

/// `[rtp] srtp`: what mohd does with SDES-keyed SRTP (RFC 4568 `a=crypto` on `RTP/SAVP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: an `RTP/SAVP` stream is refused unless the offer also has an
    /// `RTP/AVP` one.
    Off,
    /// SRTP when the offer asks for it, plain RTP otherwise.
    #[default]
    OfferAnswer,
    /// SRTP only: a plain offer, or one without a usable crypto line, gets 488.
    Required,
}

impl SrtpPolicy {
    /// Every policy, in the order the config documents them.
    pub const ALL: [SrtpPolicy; 3] = [
        SrtpPolicy::Off,
        SrtpPolicy::OfferAnswer,
        SrtpPolicy::Required,
    ];

    /// The value in the config file.
    pub fn config_name(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::OfferAnswer => "offer-answer",
            SrtpPolicy::Required => "required",
        }
    }

    /// The policy for a config value (exact: config values are lower case).
    pub fn from_config_name(name: &str) -> Option<SrtpPolicy> {
        SrtpPolicy::ALL
            .into_iter()
            .find(|p| p.config_name() == name)
    }
}

/// The `o=` line. Numbers are kept as text: some stacks send ids wider than 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `<username>`, often `-`.
    pub username: String,
    /// `<sess-id>`.
    pub session_id: String,
    /// `<sess-version>`; a re-offer with an unchanged version changes nothing (RFC 3264 §8).
    pub session_version: String,
    /// `<unicast-address>` (IP or name; informational only).
    pub address: String,
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// RTP payload type (0..=127).
    pub payload_type: u8,
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`, …).
    pub encoding: String,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count, when given.
    pub channels: Option<u8>,
}

/// `a=fmtp:<format> <params>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// The format (a payload type for RTP media) as written.
    pub format: String,
    /// Everything after the first space.
    pub params: String,
}

/// Any `a=` line, raw. Known attributes are also parsed into fields of [`Media`] or
/// [`SessionDescription`]; unknown ones are kept only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Text before the first `:` (the whole attribute for flags like `a=rtcp-mux`).
    pub name: String,
    /// Text after the first `:`, if there was one.
    pub value: Option<String>,
}

/// One m-section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `image`, `application`, …
    pub kind: String,
    /// Transport port; 0 means the stream is disabled or rejected.
    pub port: u16,
    /// The `/<number of ports>` suffix, if present.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, `udptl`, …
    pub proto: String,
    /// Formats in the offerer's preference order (payload types for RTP).
    pub formats: Vec<String>,
    /// The m-section's own `c=` address (see [`SessionDescription::connection_for`]).
    pub connection: Option<IpAddr>,
    /// `b=` lines, raw (`TIAS:64000`).
    pub bandwidths: Vec<String>,
    /// `a=rtpmap` lines.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines.
    pub fmtps: Vec<Fmtp>,
    /// The m-section's own direction attribute (see [`SessionDescription::direction_for`]).
    pub direction: Option<Direction>,
    /// `a=ptime`, in ms.
    pub ptime: Option<u32>,
    /// `a=maxptime`, in ms.
    pub maxptime: Option<u32>,
    /// `a=rtcp` (RFC 3605): the RTCP port, and its address when it differs from `c=`.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// Every `a=` line of the m-section, in order.
    pub attributes: Vec<Attribute>,
}

impl Media {
    fn new(
        kind: String,
        port: u16,
        port_count: Option<u16>,
        proto: String,
        formats: Vec<String>,
    ) -> Self {
        Media {
            kind,
            port,
            port_count,
            proto,
            formats,
            connection: None,
            bandwidths: Vec::new(),
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            direction: None,
            ptime: None,
            maxptime: None,
            rtcp: None,
            rtcp_mux: false,
            attributes: Vec::new(),
        }
    }

    /// The rtpmap for payload type `pt`, if the m-section has one.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == pt)
    }

    /// The fmtp parameters for `format`, if any.
    pub fn fmtp(&self, format: &str) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|f| f.format == format)
            .map(|f| f.params.as_str())
    }

    /// Whether the m-section has an attribute named `name` (case-insensitive).
    pub fn has_attribute(&self, name: &str) -> bool {
        self.attributes
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// The RTP profile, as far as we speak it. AVPF only adds feedback rules a sender without
    /// feedback already satisfies (RFC 4585 §5), so we accept it, and SAVPF likewise.
    fn profile(&self) -> Profile {
        let is = |p: &str| self.proto.eq_ignore_ascii_case(p);
        if is("RTP/AVP") || is("RTP/AVPF") {
            Profile::Plain
        } else if is("RTP/SAVP") || is("RTP/SAVPF") {
            Profile::Sdes
        } else {
            // DTLS-SRTP (UDP/TLS/RTP/SAVP*), udptl, …
            Profile::Other
        }
    }

    /// The values of the m-section's `a=crypto` lines, in order.
    fn crypto_values(&self) -> impl Iterator<Item = &str> {
        self.attributes
            .iter()
            .filter(|a| a.name.eq_ignore_ascii_case("crypto"))
            .filter_map(|a| a.value.as_deref())
    }
}

/// What an m-line's transport protocol asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// `RTP/AVP`, `RTP/AVPF`.
    Plain,
    /// `RTP/SAVP`, `RTP/SAVPF`: SRTP keyed by `a=crypto` (RFC 4568).
    Sdes,
    /// Anything else: not ours.
    Other,
}

/// A parsed SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` line, if present and well-formed.
    pub origin: Option<Origin>,
    /// The `s=` line (may be empty or `-`).
    pub session_name: String,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// Session-level `a=ptime` (not in the RFC, but sent by some gear; m-level wins).
    pub ptime: Option<u32>,
    /// Session-level `a=` lines, in order.
    pub attributes: Vec<Attribute>,
    /// m-sections, in order.
    pub media: Vec<Media>,
}

impl SessionDescription {
    /// The effective connection address of `media` (its own `c=`, else the session's).
    pub fn connection_for(&self, media: &Media) -> Option<IpAddr> {
        media.connection.or(self.connection)
    }

    /// The effective direction of `media` (its own, else the session's, else sendrecv).
    pub fn direction_for(&self, media: &Media) -> Direction {
        media
            .direction
            .or(self.direction)
            .unwrap_or(Direction::SendRecv)
    }
}

/// What we offer or answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Address we send RTP from and receive RTCP on (goes into `o=` and `c=`).
    pub ip: IpAddr,
    /// Our RTP port.
    pub rtp_port: u16,
    /// `o=` session id (stays for the dialog).
    pub session_id: u64,
    /// `o=` session version (the caller bumps it for every new offer/answer).
    pub session_version: u64,
    /// Codecs we can send, in our preference order (our offers list them so; an answer
    /// picks among them per [`AnswerOptions::prefer_own_order`]). Empty means the G.711 pair
    /// ([`Codec::G711`]).
    pub codecs: Vec<Codec>,
    /// `o=` username; whitespace would break the line, so such a name becomes `-`.
    pub username: String,
    /// How an answer chooses among the offer's codecs, and what it says about Opus.
    pub answer: AnswerOptions,
}

/// The `[rtp]` settings an answer follows, beyond the codec list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Pick the first of [`LocalMedia::codecs`] the offer lists, rather than the offer's first
    /// that mohd accepts (RFC 3264 §6.1's custom, the default).
    pub prefer_own_order: bool,
    /// The bitrate mohd's Opus encoder sends, stated in the answer's fmtp.
    pub opus_bitrate: u32,
    /// `[rtp] srtp`.
    pub srtp: SrtpPolicy,
    /// SDES keys may be taken from, and given to, this peer: its INVITE came over TLS, or
    /// `[rtp] srtp_over_plain_transports` is set.
    pub sdes_allowed: bool,
    /// The key we send SRTP with, should the call be SRTP: fresh per call from a CSPRNG.
    pub srtp_key: SrtpKeySeed,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        AnswerOptions {
            prefer_own_order: false,
            opus_bitrate: opus::DEFAULT_BITRATE,
            srtp: SrtpPolicy::default(),
            sdes_allowed: false,
            srtp_key: SrtpKeySeed::default(),
        }
    }
}

/// Our SRTP master key and salt, as many bytes as the longest suite needs; a suite takes its
/// length from the front. Its `Debug` prints no key bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpKeySeed(pub [u8; MAX_KEY_MATERIAL_LEN]);

impl std::fmt::Debug for SrtpKeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpKeySeed(..)")
    }
}

impl SrtpKeySeed {
    /// The key material for `suite`.
    pub fn for_suite(&self, suite: SrtpSuite) -> Option<SrtpKeyMaterial> {
        let bytes = self.0.get(..suite.key_material_len())?;
        SrtpKeyMaterial::from_bytes(suite, bytes)
    }
}

impl AnswerOptions {
    /// Whether `m` can carry the call under our SRTP policy, and with which of its crypto
    /// lines (`None`: plain RTP). Crypto lines on `RTP/AVP` are "best effort" SRTP (baresip's
    /// `mediaenc=srtp`, Asterisk's `media_encryption_optimistic`): taken when usable, the
    /// stream plain otherwise.
    fn srtp_for(&self, m: &Media) -> Result<Option<CryptoLine>, NegotiationError> {
        let may_key = self.srtp != SrtpPolicy::Off && self.sdes_allowed;
        match m.profile() {
            Profile::Plain if may_key && m.crypto_values().next().is_some() => {
                match sdes::choose(m.crypto_values()) {
                    Ok(line) => Ok(Some(line)),
                    Err(_) if self.srtp == SrtpPolicy::Required => {
                        Err(NegotiationError::SrtpRequired)
                    }
                    Err(_) => Ok(None),
                }
            }
            Profile::Plain if self.srtp == SrtpPolicy::Required => {
                Err(NegotiationError::SrtpRequired)
            }
            Profile::Plain => Ok(None),
            Profile::Sdes if self.srtp == SrtpPolicy::Off => Err(NegotiationError::SrtpOff),
            Profile::Sdes if !self.sdes_allowed => Err(NegotiationError::SdesNeedsTls),
            Profile::Sdes => sdes::choose(m.crypto_values())
                .map(Some)
                .map_err(NegotiationError::NoUsableCrypto),
            Profile::Other => Err(NegotiationError::NoCommonCodec),
        }
    }

    /// SRTP for a call whose offer's chosen line is `theirs`: the same tag and suite with
    /// our key (RFC 4568 §7.1.2), and the line that says so.
    fn srtp_answer(
        &self,
        theirs: &CryptoLine,
    ) -> Result<(SrtpParams, CryptoLine), NegotiationError> {
        let ours = self
            .srtp_key
            .for_suite(theirs.suite)
            .ok_or(NegotiationError::NoUsableCrypto(CryptoError::UnknownSuite))?;
        let line = CryptoLine {
            tag: theirs.tag,
            suite: theirs.suite,
            key: ours,
        };
        let params = SrtpParams {
            suite: theirs.suite,
            ours,
            theirs: theirs.key,
        };
        Ok((params, line))
    }

    /// The crypto lines of our own offers: every suite, our key, when SRTP is required and
    /// keys may be exchanged with this peer; none otherwise (plain RTP is offered).
    fn offered_crypto(&self) -> Vec<CryptoLine> {
        if self.srtp != SrtpPolicy::Required || !self.sdes_allowed {
            return Vec::new();
        }
        SrtpSuite::ALL
            .into_iter()
            .zip(1..)
            .filter_map(|(suite, tag)| {
                Some(CryptoLine {
                    tag,
                    suite,
                    key: self.srtp_key.for_suite(suite)?,
                })
            })
            .collect()
    }
}

/// RTP's discard port (RFC 3551 uses it for "no destination"): where an RFC 2543 hold, which
/// gives no address, points the call, so that its timing and RTCP carry on.
const DISCARD_PORT: u16 = 9;

/// A call's media as offer/answer settled it: everything the RTP sender needs. Built once here
/// (by [`answer`] or [`negotiate_answer`]) and carried unchanged through the endpoint's events
/// and the media thread to the fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaParams {
    /// The codec to send.
    pub codec: Codec,
    /// The payload type in RTP headers: the offerer's number for the codec, which may be
    /// dynamic (RFC 3264 §6.1: the answer, and so the stream, uses the offer's numbers).
    pub payload_type: u8,
    /// Packet duration, 10..=60 ms in steps of 10.
    pub ptime_ms: u32,
    /// Where RTP goes. An RFC 2543 hold (`c=0.0.0.0` or `::`) gives no address: then the
    /// discard port of the peer's signalling address, and `direction` is `Inactive`.
    pub remote_rtp: SocketAddr,
    /// Where RTCP goes: `a=rtcp` (RFC 3605) or the RTP port + 1; `None` with rtcp-mux
    /// (RFC 5761): RTCP shares the RTP port in both directions.
    pub remote_rtcp: Option<SocketAddr>,
    /// Our direction: `SendOnly` (play music) or `Inactive` (timing and RTCP go on, no RTP).
    pub direction: Direction,
    /// For Opus, what the peer's `a=fmtp` asks of what it receives (RFC 7587 §6.1; the
    /// defaults when it gave none). Every caller on a channel gets the channel's one encoding,
    /// which our fmtp describes, so this is logged rather than obeyed per call.
    pub peer_opus: Option<OpusRequest>,
    /// SDES-keyed SRTP (`RTP/SAVP` with `a=crypto`), or `None` for plain RTP.
    pub srtp: Option<SrtpParams>,
}

/// The part of an Opus receiver's fmtp ([`OpusFmtp`]) that concerns what we send: small, so
/// that [`MediaParams`] stays cheap to copy through the media thread's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusRequest {
    /// `maxaveragebitrate`, in b/s.
    pub max_average_bitrate: Option<u32>,
    /// `maxplaybackrate`, in Hz.
    pub max_playback_rate: u32,
    /// `stereo`: we send mono whatever it says (always decodable, RFC 7587 §3.4).
    pub stereo: bool,
    /// `useinbandfec`: we send no FEC (the frames are encoded once, for every caller).
    pub useinbandfec: bool,
    /// `usedtx`: never honoured; hold music must not be cut as silence.
    pub usedtx: bool,
}

impl From<OpusFmtp> for OpusRequest {
    fn from(f: OpusFmtp) -> Self {
        OpusRequest {
            max_average_bitrate: f.max_average_bitrate,
            max_playback_rate: f.max_playback_rate,
            stereo: f.stereo,
            useinbandfec: f.useinbandfec,
            usedtx: f.usedtx,
        }
    }
}

impl Default for OpusRequest {
    /// RFC 7587's defaults: what a peer that gives no fmtp asks for.
    fn default() -> Self {
        OpusFmtp::default().into()
    }
}

impl OpusRequest {
    /// What we would send this receiver when we send `ours` b/s: `ours` capped by its
    /// `maxaveragebitrate`.
    pub fn send_bitrate(&self, ours: u32) -> u32 {
        self.max_average_bitrate.map_or(ours, |cap| ours.min(cap))
    }
}

impl MediaParams {
    /// Whether RTP flows to the peer (our direction sends).
    pub fn sending(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::SendRecv)
    }

    /// RTCP is multiplexed on the RTP port.
    pub fn rtcp_mux(&self) -> bool {
        self.remote_rtcp.is_none()
    }

    /// Where RTCP goes: its own address, or the RTP one when multiplexed.
    pub fn rtcp_destination(&self) -> SocketAddr {
        self.remote_rtcp.unwrap_or(self.remote_rtp)
    }
}

/// Parse an SDP body from raw bytes (a SIP message body), rejecting non-UTF-8 cleanly.
pub fn parse_bytes(body: &[u8]) -> Result<SessionDescription, SdpError> {
    if body.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            len: body.len(),
            max: MAX_SDP_BYTES,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    parse(text)
}

/// Parse an SDP body. See the module docs for what is tolerated.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            len: text.len(),
            max: MAX_SDP_BYTES,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());

    match lines.next() {
        None => return Err(SdpError::Empty),
        Some((_, "v=0")) => {}
        Some(_) => return Err(SdpError::NoVersion),
    }

    let mut sdp = SessionDescription {
        origin: None,
        session_name: String::new(),
        connection: None,
        direction: None,
        ptime: None,
        attributes: Vec::new(),
        media: Vec::new(),
    };

    for (line_no, line) in lines {
        let (kind, value) = split_line(line).ok_or(SdpError::MalformedLine { line: line_no })?;
        match kind {
            b'm' => {
                if sdp.media.len() >= MAX_MEDIA {
                    return Err(SdpError::TooManyMedia { max: MAX_MEDIA });
                }
                let media = parse_media_line(value).ok_or(SdpError::BadMedia { line: line_no })?;
                sdp.media.push(media);
            }
            b'c' => {
                let addr =
                    parse_connection(value).ok_or(SdpError::BadConnection { line: line_no })?;
                match sdp.media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => sdp.connection = Some(addr),
                }
            }
            b'a' => {
                let attr = split_attribute(value);
                match sdp.media.last_mut() {
                    Some(m) => apply_media_attribute(m, &attr),
                    None => {
                        if let Some(d) = attr_direction(&attr) {
                            sdp.direction = Some(d);
                        } else if attr.name.eq_ignore_ascii_case("ptime") {
                            sdp.ptime = attr.value.as_deref().and_then(parse_ms);
                        }
                        sdp.attributes.push(attr);
                    }
                }
            }
            b'b' => {
                if let Some(m) = sdp.media.last_mut() {
                    m.bandwidths.push(value.to_string());
                }
            }
            b'o' if sdp.media.is_empty() => sdp.origin = parse_origin(value),
            b's' if sdp.media.is_empty() => sdp.session_name = value.to_string(),
            // v= again, t=, r=, z=, k=, i=, u=, e=, p=, and anything unknown: nothing we act on.
            _ => {}
        }
    }
    Ok(sdp)
}

/// `x=value` → (`x`, `value`), or None when the line is not of that shape.
fn split_line(line: &str) -> Option<(u8, &str)> {
    let bytes = line.as_bytes();
    let kind = *bytes.first()?;
    if !kind.is_ascii_alphabetic() || bytes.get(1) != Some(&b'=') {
        return None;
    }
    // Index 2 is a char boundary: bytes 0 and 1 are ASCII. Types are case-sensitive, so an
    // upper-case type is just an unknown line.
    Some((kind, line.get(2..)?.trim()))
}

/// A token we may copy into our answer: printable ASCII without spaces, so it can never
/// break a line or smuggle an extra one.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_media_line(value: &str) -> Option<Media> {
    let mut parts = value.split_whitespace();
    let kind = parts.next().filter(|s| is_token(s))?;
    let port_field = parts.next()?;
    let proto = parts.next().filter(|s| is_token(s))?;
    let formats: Vec<String> = parts.map(str::to_string).collect();
    if formats.is_empty() || !formats.iter().all(|f| is_token(f)) {
        return None;
    }
    let (port, count) = match port_field.split_once('/') {
        Some((p, n)) => (p, Some(n.parse::<u16>().ok()?)),
        None => (port_field, None),
    };
    let port = port.parse::<u16>().ok()?;
    Some(Media::new(
        kind.to_string(),
        port,
        count,
        proto.to_string(),
        formats,
    ))
}

/// `IN IP4 192.0.2.1`, `IN IP6 2001:db8::1`, `IN IP4 224.2.1.1/127` (multicast TTL dropped).
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_whitespace();
    let net = parts.next()?;
    let _addr_type = parts.next()?;
    let addr = parts.next()?;
    if !net.eq_ignore_ascii_case("IN") {
        return None;
    }
    parse_ip(addr)
}

fn parse_ip(addr: &str) -> Option<IpAddr> {
    let addr = addr.split('/').next()?;
    // Some stacks bracket IPv6 literals although SDP does not.
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    addr.parse().ok()
}

fn parse_origin(value: &str) -> Option<Origin> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [user, id, version, _net, _addr_type, address, ..] => Some(Origin {
            username: (*user).to_string(),
            session_id: (*id).to_string(),
            session_version: (*version).to_string(),
            address: (*address).to_string(),
        }),
        _ => None,
    }
}

fn split_attribute(value: &str) -> Attribute {
    match value.split_once(':') {
        Some((name, v)) => Attribute {
            name: name.trim().to_string(),
            value: Some(v.trim().to_string()),
        },
        None => Attribute {
            name: value.to_string(),
            value: None,
        },
    }
}

fn attr_direction(attr: &Attribute) -> Option<Direction> {
    if attr.value.is_some() {
        return None;
    }
    Direction::from_attribute(&attr.name)
}

/// Milliseconds from `a=ptime`/`a=maxptime`; tolerates "20.0" and "20 ".
fn parse_ms(value: &str) -> Option<u32> {
    let int = value.split(['.', ' ']).next()?;
    int.parse().ok()
}

fn apply_media_attribute(m: &mut Media, attr: &Attribute) {
    let name = attr.name.to_ascii_lowercase();
    let value = attr.value.as_deref();
    match (name.as_str(), value) {
        ("rtpmap", Some(v)) => {
            if let Some(map) = parse_rtpmap(v) {
                m.rtpmaps.push(map);
            }
        }
        ("fmtp", Some(v)) => {
            if let Some((format, params)) = v.split_once(char::is_whitespace) {
                m.fmtps.push(Fmtp {
                    format: format.to_string(),
                    params: params.trim().to_string(),
                });
            }
        }
        ("ptime", Some(v)) => m.ptime = parse_ms(v).or(m.ptime),
        ("maxptime", Some(v)) => m.maxptime = parse_ms(v).or(m.maxptime),
        ("rtcp", Some(v)) => m.rtcp = parse_rtcp(v).or(m.rtcp),
        ("rtcp-mux", None) => m.rtcp_mux = true,
        _ => {
            if let Some(d) = attr_direction(attr) {
                m.direction = Some(d);
            }
        }
    }
    m.attributes.push(attr.clone());
}

/// `96 opus/48000/2`.
fn parse_rtpmap(value: &str) -> Option<RtpMap> {
    let (pt, rest) = value.split_once(char::is_whitespace)?;
    let payload_type = pt.parse::<u8>().ok().filter(|pt| *pt <= 127)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty())?.to_string();
    let clock_rate = parts.next()?.trim().parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.trim().parse().ok()?),
        None => None,
    };
    Some(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        channels,
    })
}

/// `53020` or `53020 IN IP4 126.16.64.4` (RFC 3605). A bad address keeps the port.
fn parse_rtcp(value: &str) -> Option<(u16, Option<IpAddr>)> {
    let mut parts = value.split_whitespace();
    let port = parts.next()?.parse().ok()?;
    let rest: Vec<&str> = parts.collect();
    let addr = match rest.as_slice() {
        [net, _addr_type, addr, ..] if net.eq_ignore_ascii_case("IN") => parse_ip(addr),
        _ => None,
    };
    Some((port, addr))
}

/// Round to a multiple of 10 ms, clamp to 10..=60, and respect the receiver's `maxptime`.
fn normalise_ptime(ptime: Option<u32>, maxptime: Option<u32>) -> u32 {
    let rounded = normalize_ptime(ptime.unwrap_or(DEFAULT_PTIME_MS));
    // A maximum rounds down: 25 ms allows 20, not 30.
    match maxptime {
        Some(max) => rounded.min(normalize_ptime(max / 10 * 10)),
        None => rounded,
    }
}

/// The codec format `f` of `m` names, with its payload type. An rtpmap names the codec when
/// present (so PCMU or G.722 on a dynamic PT works); otherwise only the static payload types
/// of RFC 3551 count (Opus has none).
fn offered_codec(m: &Media, f: &str) -> Option<(Codec, u8)> {
    let pt = f.parse::<u8>().ok().filter(|pt| *pt <= 127)?;
    let codec = match m.rtpmap(pt) {
        Some(map) => {
            let codec = Codec::from_name(&map.encoding)?;
            // Opus is always `opus/48000/2` (RFC 7587 §7), whatever is sent; the others
            // are mono.
            let channels_ok = match codec.rtpmap_channels() {
                Some(_) => map.channels.is_none_or(|c| c == 1 || c == 2),
                None => map.channels.is_none_or(|c| c == 1),
            };
            if map.clock_rate != codec.clock_rate() || !channels_ok {
                return None;
            }
            codec
        }
        None if pt < 96 => Codec::from_payload_type(pt)?,
        None => return None,
    };
    Some((codec, pt))
}

/// The format of `m` to send, as (codec, payload type), among those in `codecs`: the first in
/// `m`'s order, or with `prefer_own_order` the one earliest in `codecs` (on a tie, the
/// first payload type).
fn pick_codec(m: &Media, codecs: &[Codec], prefer_own_order: bool) -> Option<(Codec, u8)> {
    let mut offered = m
        .formats
        .iter()
        .filter_map(|f| offered_codec(m, f))
        .filter(|(c, _)| codecs.contains(c));
    if prefer_own_order {
        offered.min_by_key(|(c, _)| codecs.iter().position(|o| o == c))
    } else {
        offered.next()
    }
}

/// The telephone-event payload type listed on the m-line at `clock` Hz (that of the chosen
/// codec, RFC 4733 §2.1), with its fmtp.
fn telephone_event(m: &Media, clock: u32) -> Option<(u8, Option<&str>)> {
    m.formats.iter().find_map(|f| {
        let pt = f.parse::<u8>().ok()?;
        let map = m.rtpmap(pt)?;
        let is_te = map.encoding.eq_ignore_ascii_case("telephone-event") && map.clock_rate == clock;
        // The fmtp is copied into our answer: only if it cannot break the line.
        let fmtp = m
            .fmtp(f)
            .filter(|p| p.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        is_te.then_some((pt, fmtp))
    })
}

/// The media parameters for the accepted stream `m` of `sdp` (an offer or an answer), sent by
/// the peer whose signalling address is `peer`.
fn media_params(
    sdp: &SessionDescription,
    m: &Media,
    (codec, payload_type): (Codec, u8),
    rtcp_mux: bool,
    peer: SocketAddr,
) -> Result<MediaParams, NegotiationError> {
    let conn = sdp
        .connection_for(m)
        .ok_or(NegotiationError::NoConnection)?;
    // RFC 2543 hold: an unspecified address means "do not send to me" (RFC 3264 §8.4).
    let held = conn.is_unspecified();
    let direction = if held {
        Direction::Inactive
    } else {
        Direction::ours_given_peer(sdp.direction_for(m))
    };
    let remote_rtp = if held {
        SocketAddr::new(peer.ip(), DISCARD_PORT)
    } else {
        SocketAddr::new(conn, m.port)
    };
    let remote_rtcp = match m.rtcp {
        _ if rtcp_mux => None,
        Some((port, addr)) if !held => Some(SocketAddr::new(addr.unwrap_or(conn), port)),
        _ => Some(SocketAddr::new(
            remote_rtp.ip(),
            remote_rtp.port().wrapping_add(1),
        )),
    };
    let ptime_ms = match codec {
        Codec::Opus => OPUS_PTIME_MS,
        _ => normalise_ptime(m.ptime.or(sdp.ptime), m.maxptime),
    };
    let peer_opus = (codec == Codec::Opus).then(|| {
        m.fmtp(&payload_type.to_string())
            .map(|f| OpusFmtp::parse(f).into())
            .unwrap_or_default()
    });
    Ok(MediaParams {
        codec,
        payload_type,
        ptime_ms,
        remote_rtp,
        remote_rtcp,
        direction,
        peer_opus,
        srtp: None,
    })
}

fn effective_codecs(codecs: &[Codec]) -> Vec<Codec> {
    let mut out: Vec<Codec> = Vec::new();
    let source: &[Codec] = if codecs.is_empty() {
        &Codec::G711
    } else {
        codecs
    };
    for c in source {
        if !out.contains(c) {
            out.push(*c);
        }
    }
    out
}

fn write_session_header(out: &mut String, local: &LocalMedia) {
    let username = if is_token(&local.username) {
        local.username.as_str()
    } else {
        "-"
    };
    let ip_type = match local.ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "v=0\r\no={username} {} {} IN {ip_type} {ip}\r\ns=mohd\r\nc=IN {ip_type} {ip}\r\nt=0 0\r\n",
        local.session_id,
        local.session_version,
        ip = local.ip,
    );
}

/// Answer `offer` (RFC 3264 §6): accept the first audio stream that has a codec in
/// `local.codecs` (choosing the first such codec in the offerer's order, or in ours with
/// [`AnswerOptions::prefer_own_order`]) and reject every other m-line with port 0. Returns the answer body (CRLF line ends) and the media to send
/// to `peer` (the offerer's signalling address).
pub fn answer(
    offer: &SessionDescription,
    local: &LocalMedia,
    peer: SocketAddr,
) -> Result<(String, MediaParams), NegotiationError> {
    let codecs = effective_codecs(&local.codecs);
    let accepted = accepted_stream(offer, &codecs, &local.answer)?;
    let Some(m) = offer.media.get(accepted.index) else {
        return Err(NegotiationError::NoAudio);
    };
    let mut params = media_params(offer, m, accepted.format, m.rtcp_mux, peer)?;
    let crypto = match &accepted.crypto {
        Some(theirs) => {
            let (srtp, line) = local.answer.srtp_answer(theirs)?;
            params.srtp = Some(srtp);
            Some(line)
        }
        None => None,
    };
    let mut out = String::with_capacity(512);
    write_session_header(&mut out, local);
    for (i, media) in offer.media.iter().enumerate() {
        if i == accepted.index {
            write_accepted_audio(&mut out, local, m, &params, crypto.as_ref());
        } else {
            // Rejected: same type and proto, port 0, one of the offered formats (RFC 3264 §6).
            // The fields were checked to be tokens by the parser.
            let format = media.formats.first().map_or("0", String::as_str);
            let _ = write!(out, "m={} 0 {} {format}\r\n", media.kind, media.proto);
        }
    }
    Ok((out, params))
}

/// The audio stream an answer accepts.
struct Accepted {
    /// Its m-line.
    index: usize,
    /// The format to send: codec and payload type.
    format: (Codec, u8),
    /// The offer's crypto line we accept, for SRTP.
    crypto: Option<CryptoLine>,
}

/// The first usable audio stream of `offer`: a codec we accept (as [`pick_codec`] chooses) on
/// a profile our SRTP policy allows, with a usable crypto line if SRTP. When none is, the
/// reason that says most: an SRTP one (the codec would have done) before a codec mismatch.
fn accepted_stream(
    offer: &SessionDescription,
    codecs: &[Codec],
    options: &AnswerOptions,
) -> Result<Accepted, NegotiationError> {
    let mut saw_audio = false;
    let mut srtp_refusal = None;
    for (index, m) in offer.media.iter().enumerate() {
        if !m.is_audio() || m.port == 0 {
            continue;
        }
        saw_audio = true;
        if m.profile() == Profile::Other {
            continue;
        }
        let Some(format) = pick_codec(m, codecs, options.prefer_own_order) else {
            continue;
        };
        match options.srtp_for(m) {
            Ok(crypto) => {
                return Ok(Accepted {
                    index,
                    format,
                    crypto,
                });
            }
            Err(e) => {
                srtp_refusal.get_or_insert(e);
            }
        }
    }
    Err(match srtp_refusal {
        Some(e) => e,
        None if saw_audio => NegotiationError::NoCommonCodec,
        None => NegotiationError::NoAudio,
    })
}

/// Our m-section for the accepted audio stream `m`: the chosen codec on the offer's payload
/// type (with our fmtp for Opus), the offer's telephone-event at the same clock, our crypto
/// line for SRTP, ptime, rtcp-mux and our direction.
fn write_accepted_audio(
    out: &mut String,
    local: &LocalMedia,
    m: &Media,
    params: &MediaParams,
    crypto: Option<&CryptoLine>,
) {
    let (codec, pt) = (params.codec, params.payload_type);
    let clock = codec.clock_rate();
    let te = telephone_event(m, clock);
    let _ = write!(out, "m=audio {} {} {pt}", local.rtp_port, m.proto);
    if let Some((te_pt, _)) = te {
        let _ = write!(out, " {te_pt}");
    }
    let _ = write!(out, "\r\na=rtpmap:{pt} {}\r\n", codec.rtpmap());
    if codec == Codec::Opus {
        let _ = write!(
            out,
            "a=fmtp:{pt} {}\r\n",
            opus_fmtp(local.answer.opus_bitrate)
        );
    }
    if let Some((te_pt, fmtp)) = te {
        let _ = write!(out, "a=rtpmap:{te_pt} telephone-event/{clock}\r\n");
        if let Some(fmtp) = fmtp {
            let _ = write!(out, "a=fmtp:{te_pt} {fmtp}\r\n");
        }
    }
    if let Some(line) = crypto {
        let _ = write!(out, "a=crypto:{line}\r\n");
    }
    let _ = write!(out, "a=ptime:{}\r\n", params.ptime_ms);
    if params.rtcp_mux() {
        out.push_str("a=rtcp-mux\r\n");
    }
    let _ = write!(out, "a={}\r\n", params.direction.as_str());
}

/// The fmtp we give Opus (RFC 7587 §6.1): mono 48 kHz, no FEC, no DTX (hold music must not
/// be cut as silence), and the bitrate we send.
fn opus_fmtp(bitrate: u32) -> OpusFmtp {
    OpusFmtp::answer(bitrate)
}

/// Telephone-event payload type in our offers (the common choice of Asterisk and FreeSWITCH).
const OFFER_TELEPHONE_EVENT_PT: u8 = 101;

/// Telephone-event at Opus's 48 kHz clock in our offers (RFC 4733 §2.1: the event's clock is
/// the audio codec's), when Opus is offered.
const OFFER_TELEPHONE_EVENT_48K_PT: u8 = 110;

/// Our offer, for an INVITE (or re-INVITE) that came without SDP: one sendonly audio
/// stream with `local.codecs` (the G.711 pair if empty) and telephone-event.
pub fn offer(local: &LocalMedia) -> String {
    let mut out = String::with_capacity(320);
    write_session_header(&mut out, local);
    let opus = opus_fmtp(local.answer.opus_bitrate);
    let crypto = local.answer.offered_crypto();
    write_offered_audio(&mut out, local, Some(DEFAULT_PTIME_MS), opus, &crypto);
    out.push_str("a=sendonly\r\n");
    out
}

/// The m-line and attributes of our offers (without the direction): `local.codecs` in that
/// order on their usual payload types, Opus with `opus` as its fmtp, telephone-event at each
/// clock offered, `a=crypto` for each of `crypto` (then on `RTP/SAVP`, RFC 4568 §9.1), and
/// `a=ptime` when given.
fn write_offered_audio(
    out: &mut String,
    local: &LocalMedia,
    ptime_ms: Option<u32>,
    opus: OpusFmtp,
    crypto: &[CryptoLine],
) {
    let codecs = effective_codecs(&local.codecs);
    let te = OFFER_TELEPHONE_EVENT_PT;
    let te48 = codecs
        .contains(&Codec::Opus)
        .then_some(OFFER_TELEPHONE_EVENT_48K_PT);
    let proto = if crypto.is_empty() {
        "RTP/AVP"
    } else {
        "RTP/SAVP"
    };
    let _ = write!(out, "m=audio {} {proto}", local.rtp_port);
    for c in &codecs {
        let _ = write!(out, " {}", c.payload_type());
    }
    let _ = write!(out, " {te}");
    if let Some(te48) = te48 {
        let _ = write!(out, " {te48}");
    }
    out.push_str("\r\n");
    for c in &codecs {
        let pt = c.payload_type();
        let _ = write!(out, "a=rtpmap:{pt} {}\r\n", c.rtpmap());
        if *c == Codec::Opus {
            let _ = write!(out, "a=fmtp:{pt} {opus}\r\n");
        }
    }
    let _ = write!(
        out,
        "a=rtpmap:{te} telephone-event/{OFFER_TELEPHONE_EVENT_CLOCK}\r\na=fmtp:{te} 0-16\r\n"
    );
    if let Some(te48) = te48 {
        let _ = write!(
            out,
            "a=rtpmap:{te48} telephone-event/48000\r\na=fmtp:{te48} 0-16\r\n"
        );
    }
    for line in crypto {
        let _ = write!(out, "a=crypto:{line}\r\n");
    }
    if let Some(p) = ptime_ms {
        let _ = write!(out, "a=ptime:{p}\r\n");
    }
}

/// Read the answer to a plain-RTP offer of ours (carried by the ACK, or the 200 to
/// `mohd call`'s INVITE). The first audio m-line is ours; its first format among
/// `our_offer_codecs` is the codec to send, with the answerer's payload type. We did not offer
/// rtcp-mux, so an `a=rtcp-mux` in the answer is ignored (RFC 5761 §5.1.1). `peer` is the
/// answerer's signalling address.
pub fn negotiate_answer(
    our_offer_codecs: &[Codec],
    answer: &SessionDescription,
    peer: SocketAddr,
) -> Result<MediaParams, NegotiationError> {
    negotiate(our_offer_codecs, &[], answer, peer)
}

/// Read the answer to our [`offer`] made with `local`: as [`negotiate_answer`], and when that
/// offer was SRTP, the answer's crypto line must accept one of ours (its tag and suite).
pub fn negotiate_answer_to(
    local: &LocalMedia,
    answer: &SessionDescription,
    peer: SocketAddr,
) -> Result<MediaParams, NegotiationError> {
    negotiate(&local.codecs, &local.answer.offered_crypto(), answer, peer)
}

fn negotiate(
    our_offer_codecs: &[Codec],
    offered_crypto: &[CryptoLine],
    answer: &SessionDescription,
    peer: SocketAddr,
) -> Result<MediaParams, NegotiationError> {
    let codecs = effective_codecs(our_offer_codecs);
    let m = answer
        .media
        .iter()
        .find(|m| m.is_audio())
        .ok_or(NegotiationError::NoAudio)?;
    let srtp = match m.profile() {
        _ if m.port == 0 => return Err(NegotiationError::NoCommonCodec),
        Profile::Plain if offered_crypto.is_empty() => None,
        Profile::Sdes if !offered_crypto.is_empty() => {
            // The answer has one line (RFC 4568 §7.1.2); a second is not looked at.
            let value = m
                .crypto_values()
                .next()
                .ok_or(NegotiationError::NoUsableCrypto(CryptoError::Missing))?;
            Some(
                sdes::from_answer(offered_crypto, value)
                    .map_err(NegotiationError::NoUsableCrypto)?,
            )
        }
        Profile::Plain => return Err(NegotiationError::SrtpRequired),
        _ => return Err(NegotiationError::NoCommonCodec),
    };
    // The answerer's order: it put its preference first (RFC 3264 §6.1).
    let choice = pick_codec(m, &codecs, false).ok_or(NegotiationError::NoCommonCodec)?;
    let mut params = media_params(answer, m, choice, false, peer)?;
    params.srtp = srtp;
    Ok(params)
}

/// A caller's offer (`mohd call`): one receive-only audio stream with `local.codecs` in that
/// order and telephone-event, asking for `ptime_ms` when given; on `RTP/SAVP` with these
/// `a=crypto` lines when `crypto` is not empty.
pub fn caller_offer(
    local: &LocalMedia,
    ptime_ms: Option<u32>,
    crypto: &[crate::sip::sdes::CryptoLine],
) -> String {
    let mut out = String::with_capacity(320);
    write_session_header(&mut out, local);
    // As a receiver: mono at 48 kHz, no FEC or DTX (RFC 7587 §7 defaults, said aloud).
    write_offered_audio(&mut out, local, ptime_ms, OpusFmtp::default(), crypto);
    out.push_str("a=recvonly\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/data/sdp/", $name))
        };
    }

    fn local() -> LocalMedia {
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
            rtp_port: 40000,
            session_id: 1111,
            session_version: 2222,
            codecs: Codec::G711.to_vec(),
            username: "mohd".to_string(),
            answer: AnswerOptions::default(),
        }
    }

    /// Every codec, in `[rtp] codecs`' default order.
    fn local_all() -> LocalMedia {
        LocalMedia {
            codecs: vec![Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma],
            ..local()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(addr(s))
    }

    /// The offerer's signalling address.
    fn peer() -> SocketAddr {
        addr("203.0.113.99:5060")
    }

    /// The telephone-event payload type of the accepted stream of an answer.
    fn te_of(answer_text: &str) -> Option<u8> {
        let back = parse(answer_text).unwrap();
        let audio = back.media.iter().find(|m| m.port != 0)?;
        audio
            .rtpmaps
            .iter()
            .find(|r| r.encoding == "telephone-event")
            .map(|r| r.payload_type)
    }

    fn assert_crlf(text: &str) {
        assert!(text.ends_with("\r\n"), "not CRLF-terminated: {text:?}");
        assert_eq!(
            text.matches('\n').count(),
            text.matches("\r\n").count(),
            "bare LF in {text:?}"
        );
    }

    /// Answer `offer_text` and check what every answer must satisfy: CRLF, parses back with
    /// our own parser, mirrors every m-line (same type and proto, port 0 for all but the
    /// accepted one, which carries our port), and the session lines we promise.
    fn answered(offer_text: &str) -> (String, MediaParams, SessionDescription) {
        let offer = parse(offer_text).unwrap();
        let local = local();
        let (text, neg) = answer(&offer, &local, peer()).unwrap();
        assert_crlf(&text);
        let back = parse(&text).unwrap();
        assert_eq!(back.session_name, "mohd");
        let origin = back.origin.as_ref().unwrap();
        assert_eq!(origin.username, "mohd");
        assert_eq!(origin.session_id, "1111");
        assert_eq!(origin.session_version, "2222");
        assert_eq!(back.connection, Some(local.ip));
        assert!(text.contains("\r\nt=0 0\r\n"));
        assert_eq!(back.media.len(), offer.media.len(), "{text}");
        let accepted: Vec<_> = back.media.iter().filter(|m| m.port != 0).collect();
        assert_eq!(accepted.len(), 1, "{text}");
        assert_eq!(accepted[0].port, local.rtp_port);
        for (o, a) in offer.media.iter().zip(&back.media) {
            assert_eq!(o.kind, a.kind);
            assert_eq!(o.proto, a.proto);
            assert!(!a.formats.is_empty());
        }
        let audio = accepted[0];
        assert_eq!(audio.kind, "audio");
        assert_eq!(audio.formats[0], neg.payload_type.to_string());
        assert_eq!(audio.direction, Some(neg.direction));
        assert_eq!(audio.ptime, Some(neg.ptime_ms));
        assert_eq!(audio.rtcp_mux, neg.rtcp_mux());
        assert_eq!(
            audio.rtpmap(neg.payload_type).map(|r| r.encoding.as_str()),
            Some(neg.codec.encoding_name())
        );
        (text, neg, back)
    }

    fn rejected_lines(back: &SessionDescription) -> Vec<String> {
        back.media
            .iter()
            .filter(|m| m.port == 0)
            .map(|m| format!("{} {} {}", m.kind, m.proto, m.formats.join(" ")))
            .collect()
    }

    // ---- real-world offers -------------------------------------------------------------

    #[test]
    fn asterisk_pjsip_gets_pcmu_and_the_exact_answer() {
        let (text, neg, _) = answered(fixture!("asterisk_pjsip.sdp"));
        assert_eq!(
            neg,
            MediaParams {
                codec: Codec::Pcmu,
                payload_type: 0,
                ptime_ms: 20,
                remote_rtp: addr("192.0.2.10:10028"),
                remote_rtcp: sa("192.0.2.10:10029"),
                direction: Direction::SendOnly,
                peer_opus: None,
                srtp: None,
            }
        );
        assert_eq!(
            text,
            "v=0\r\n\
             o=mohd 1111 2222 IN IP4 192.0.2.200\r\n\
             s=mohd\r\n\
             c=IN IP4 192.0.2.200\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendonly\r\n"
        );
    }

    #[test]
    fn freeswitch_picks_8k_telephone_event_and_honours_a_rtcp() {
        let (text, neg, _) = answered(fixture!("freeswitch.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(te_of(&text), Some(101), "not the 48 kHz PT 104");
        assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));
        assert!(!text.contains("opus") && !text.contains("CN/8000"));
        assert_eq!(Some(neg.remote_rtp), sa("198.51.100.20:24590"));
        assert_eq!(neg.remote_rtcp, sa("198.51.100.20:24591"));
        assert_eq!(neg.direction, Direction::SendOnly);
        assert_eq!(neg.ptime_ms, 20);
    }

    #[test]
    fn cisco_cucm_uses_session_connection_not_origin() {
        let offer = parse(fixture!("cisco_cucm.sdp")).unwrap();
        assert!(offer.media[0].has_attribute("X-cisco-media"));
        assert_eq!(offer.media[0].bandwidths, ["TIAS:64000"]);
        let (text, neg, _) = answered(fixture!("cisco_cucm.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(Some(neg.remote_rtp), sa("10.20.1.30:24580"));
        assert_eq!(neg.remote_rtcp, sa("10.20.1.30:24581"));
        assert_eq!(te_of(&text), Some(101));
        assert!(text.contains("a=fmtp:101 0-15\r\n"));
        assert!(!text.contains("cisco") && !text.contains("b="));
        assert_eq!(neg.direction, Direction::SendOnly);
    }

    #[test]
    fn linphone_with_ice_sends_rtcp_to_the_advertised_nat_port() {
        let (text, neg, _) = answered(fixture!("linphone_ice.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(te_of(&text), Some(100), "the 8 kHz one");
        assert!(text.contains("m=audio 40000 RTP/AVP 0 100\r\n"));
        assert!(!text.contains("a=fmtp:100"), "none offered, none invented");
        assert_eq!(Some(neg.remote_rtp), sa("203.0.113.5:40212"));
        assert_eq!(neg.remote_rtcp, sa("203.0.113.5:40687"));
        assert!(!text.contains("candidate") && !text.contains("ice-") && !text.contains("rtcp-fb"));
    }

    #[test]
    fn baresip_echoes_its_telephone_event_fmtp() {
        let (text, neg, _) = answered(fixture!("baresip.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(te_of(&text), Some(101));
        assert!(text.contains("a=fmtp:101 0-15\r\n"));
        assert_eq!(Some(neg.remote_rtp), sa("10.0.0.7:10366"));
        assert_eq!(neg.direction, Direction::SendOnly);
    }

    #[test]
    fn sendonly_hold_is_answered_inactive_never_sendrecv() {
        let (text, neg, _) = answered(fixture!("hold_sendonly_yealink.sdp"));
        assert_eq!(neg.direction, Direction::Inactive);
        assert!(text.contains("a=inactive\r\n"));
        assert!(!text.contains("sendrecv") && !text.contains("sendonly"));
        assert_eq!(Some(neg.remote_rtp), sa("192.168.10.55:11792"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
    }

    #[test]
    fn inactive_offer_is_answered_inactive() {
        let (text, neg, _) = answered(fixture!("hold_inactive_polycom.sdp"));
        assert_eq!(neg.direction, Direction::Inactive);
        assert!(text.ends_with("a=inactive\r\n"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(te_of(&text), Some(127));
        assert!(text.contains("m=audio 40000 RTP/AVP 0 127\r\n"));
    }

    #[test]
    fn old_style_hold_c_zero_means_inactive_and_no_destination() {
        let (text, neg, _) = answered(fixture!("hold_c0000_sipura.sdp"));
        assert_eq!(neg.direction, Direction::Inactive);
        assert!(text.contains("a=inactive\r\n"));
        // No address to send to: RTP would go to the discard port of the offerer's signalling
        // address (inactive, so none does), and RTCP to the port above it.
        assert_eq!(neg.remote_rtp, addr("203.0.113.99:9"));
        assert_eq!(neg.remote_rtcp, sa("203.0.113.99:10"));
        assert!(!neg.sending());
        assert_eq!(neg.ptime_ms, 30);
        assert!(text.contains("a=ptime:30\r\n"));
        assert!(
            text.contains("c=IN IP4 192.0.2.200\r\n"),
            "our own address, not 0.0.0.0"
        );
        assert_eq!(neg.codec, Codec::Pcmu);
    }

    #[test]
    fn g729_only_is_no_common_codec() {
        let offer = parse(fixture!("g729_only_sbc.sdp")).unwrap();
        assert_eq!(
            answer(&offer, &local(), peer()),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn rtcp_mux_is_echoed_and_rtcp_goes_to_the_rtp_port() {
        let (text, neg, _) = answered(fixture!("rtcp_mux_rtpengine.sdp"));
        assert!(neg.rtcp_mux());
        assert!(text.contains("a=rtcp-mux\r\n"));
        assert_eq!(Some(neg.remote_rtp), sa("203.0.113.40:30000"));
        assert_eq!(neg.remote_rtcp, None, "mux wins over a=rtcp:30001");
    }

    #[test]
    fn ipv6_offer_gets_an_ipv6_answer() {
        let offer = parse(fixture!("ipv6_snom.sdp")).unwrap();
        assert!(offer.media[0].has_attribute("x-snom-unknown"));
        let mut local = local();
        local.ip = IpAddr::V6("2001:db8::200".parse::<Ipv6Addr>().unwrap());
        let (text, neg) = answer(&offer, &local, peer()).unwrap();
        assert_crlf(&text);
        assert!(text.contains("o=mohd 1111 2222 IN IP6 2001:db8::200\r\n"));
        assert!(text.contains("c=IN IP6 2001:db8::200\r\n"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcma, 8));
        assert_eq!(Some(neg.remote_rtp), sa("[2001:db8:10::55]:62100"));
        assert_eq!(neg.remote_rtcp, sa("[2001:db8:10::55]:62101"));
        let back = parse(&text).unwrap();
        assert_eq!(back.connection, Some(local.ip));
        assert_eq!(back.media[0].port, 40000);
    }

    #[test]
    fn video_is_rejected_with_port_zero_and_audio_accepted() {
        let (text, neg, back) = answered(fixture!("video_audio_grandstream.sdp"));
        assert_eq!(rejected_lines(&back), ["video RTP/AVP 99"]);
        assert!(text.contains("m=video 0 RTP/AVP 99\r\n"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(Some(neg.remote_rtp), sa("192.168.5.40:5004"));
        assert!(!text.contains("H264"));
    }

    #[test]
    fn t38_image_line_is_mirrored_with_port_zero() {
        let offer = parse(fixture!("t38_audiocodes.sdp")).unwrap();
        assert_eq!(offer.media[1].kind, "image");
        assert!(offer.media[1].has_attribute("T38FaxUdpEC"));
        let (text, neg, back) = answered(fixture!("t38_audiocodes.sdp"));
        assert_eq!(rejected_lines(&back), ["image udptl t38"]);
        assert!(text.ends_with("m=image 0 udptl t38\r\n"));
        assert_eq!(
            (neg.codec, neg.payload_type),
            (Codec::Pcmu, 0),
            "G729 skipped"
        );
    }

    #[test]
    fn t38_only_reinvite_is_no_audio() {
        let offer = parse(
            "v=0\r\no=- 1 3 IN IP4 192.0.2.10\r\ns=Asterisk\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
             m=image 4000 udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\n",
        )
        .unwrap();
        assert_eq!(
            answer(&offer, &local(), peer()),
            Err(NegotiationError::NoAudio)
        );
    }

    #[test]
    fn pcma_first_is_honoured() {
        let (text, neg, _) = answered(fixture!("pcma_first_carrier.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcma, 8));
        assert!(text.contains("m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"));
        assert_eq!(Some(neg.remote_rtp), sa("217.0.16.121:30102"));
        assert_eq!(neg.ptime_ms, 20);
    }

    #[test]
    fn lf_only_with_trailing_spaces_parses() {
        let raw = fixture!("lf_only_sipp.sdp");
        assert!(
            !raw.contains('\r') && raw.contains(" \n"),
            "fixture lost its quirks"
        );
        let (text, neg, _) = answered(raw);
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        assert_eq!(te_of(&text), None);
        assert!(text.contains("m=audio 40000 RTP/AVP 0\r\n"));
        assert_eq!(Some(neg.remote_rtp), sa("127.0.0.1:6000"));
        assert_eq!(neg.direction, Direction::SendOnly);
    }

    #[test]
    fn pcmu_on_a_dynamic_payload_type_keeps_that_type() {
        let (text, neg, _) = answered(fixture!("pcmu_dynamic_pt.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 98));
        assert!(text.contains("m=audio 40000 RTP/AVP 98 101\r\na=rtpmap:98 PCMU/8000\r\n"));
        assert!(text.contains("a=fmtp:101 0-16,32,36\r\n"));
        assert_eq!(neg.ptime_ms, 30);
    }

    #[test]
    fn missing_t_line_is_tolerated() {
        let (_, neg, _) = answered(fixture!("no_t_line.sdp"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcma, 8));
        assert_eq!(Some(neg.remote_rtp), sa("192.0.2.77:8000"));
    }

    #[test]
    fn savp_only_over_a_plain_transport_or_with_mki_is_refused() {
        let offer = parse(fixture!("savp_only.sdp")).unwrap();
        assert_eq!(
            answer(&offer, &local(), peer()),
            Err(NegotiationError::SdesNeedsTls)
        );
        // Over TLS: both its lines carry an MKI, which we do not do.
        assert_eq!(
            answer(&offer, &local_srtp(SrtpPolicy::OfferAnswer), peer()),
            Err(NegotiationError::NoUsableCrypto(CryptoError::Mki))
        );
    }

    #[test]
    fn savp_with_avp_fallback_accepts_the_avp_stream() {
        let (text, neg, back) = answered(fixture!("savp_then_avp.sdp"));
        assert_eq!(
            rejected_lines(&back),
            ["audio RTP/SAVP 8", "video RTP/SAVPF 96"]
        );
        assert!(text.contains("m=audio 0 RTP/SAVP 8\r\nm=audio 40000 RTP/AVP 8 101\r\n"));
        assert!(!text.contains("crypto"));
        assert_eq!(Some(neg.remote_rtp), sa("192.168.7.13:10012"));
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcma, 8));
    }

    #[test]
    fn fixtures_keep_their_line_ends() {
        for (name, text) in [
            ("asterisk", fixture!("asterisk_pjsip.sdp")),
            ("cucm", fixture!("cisco_cucm.sdp")),
            ("linphone", fixture!("linphone_ice.sdp")),
        ] {
            assert_eq!(
                text.matches('\n').count(),
                text.matches("\r\n").count(),
                "{name} lost its CRLF (git normalisation?)"
            );
        }
    }

    // ---- offer/answer rules --------------------------------------------------------------

    fn offer_with(media: &str) -> SessionDescription {
        parse(&format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n{media}"
        ))
        .unwrap()
    }

    fn neg_of(media: &str) -> Result<MediaParams, NegotiationError> {
        neg_of_with(media, &local())
    }

    fn neg_of_with(media: &str, local: &LocalMedia) -> Result<MediaParams, NegotiationError> {
        answer(&offer_with(media), local, peer()).map(|(_, n)| n)
    }

    #[test]
    fn direction_mapping() {
        for (offered, ours) in [
            ("", Direction::SendOnly),
            ("a=sendrecv\r\n", Direction::SendOnly),
            ("a=recvonly\r\n", Direction::SendOnly),
            ("a=sendonly\r\n", Direction::Inactive),
            ("a=inactive\r\n", Direction::Inactive),
            ("a=SendOnly\r\n", Direction::Inactive),
        ] {
            let n = neg_of(&format!("m=audio 5000 RTP/AVP 0\r\n{offered}")).unwrap();
            assert_eq!(n.direction, ours, "offer {offered:?}");
        }
    }

    #[test]
    fn session_level_direction_applies_unless_the_media_overrides_it() {
        let text =
            "v=0\r\nc=IN IP4 198.51.100.1\r\na=sendonly\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let (_, n) = answer(&parse(text).unwrap(), &local(), peer()).unwrap();
        assert_eq!(n.direction, Direction::Inactive);
        let (_, n) = answer(
            &parse(&format!("{text}a=sendrecv\r\n")).unwrap(),
            &local(),
            peer(),
        )
        .unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
    }

    #[test]
    fn ptime_is_rounded_clamped_and_capped_by_maxptime() {
        for (attrs, want) in [
            ("", 20),
            ("a=ptime:5\r\n", 10),
            ("a=ptime:10\r\n", 10),
            ("a=ptime:14\r\n", 10),
            ("a=ptime:15\r\n", 20),
            ("a=ptime:25\r\n", 30),
            ("a=ptime:60\r\n", 60),
            ("a=ptime:90\r\n", 60),
            ("a=ptime:4294967295\r\n", 60),
            ("a=ptime:20.0\r\n", 20),
            ("a=ptime:banana\r\n", 20),
            ("a=ptime:30\r\na=maxptime:20\r\n", 20),
            ("a=maxptime:5\r\n", 10),
            ("a=maxptime:150\r\n", 20),
        ] {
            let n = neg_of(&format!("m=audio 5000 RTP/AVP 0\r\n{attrs}")).unwrap();
            assert_eq!(n.ptime_ms, want, "{attrs:?}");
        }
    }

    #[test]
    fn rtcp_attribute_with_address_and_port_edge() {
        let n = neg_of("m=audio 5000 RTP/AVP 0\r\na=rtcp:6001 IN IP4 10.9.9.9\r\n").unwrap();
        assert_eq!(n.remote_rtcp, sa("10.9.9.9:6001"));
        let n = neg_of("m=audio 65535 RTP/AVP 0\r\n").unwrap();
        assert_eq!(Some(n.remote_rtp), sa("198.51.100.1:65535"));
        // No port 65536: the RTCP port wraps to 0, which the kernel refuses to send to.
        assert_eq!(n.remote_rtcp, sa("198.51.100.1:0"));
    }

    #[test]
    fn our_codec_list_limits_the_choice() {
        let offer = parse(fixture!("asterisk_pjsip.sdp")).unwrap();
        let mut l = local();
        l.codecs = vec![Codec::Pcma];
        assert_eq!(answer(&offer, &l, peer()).unwrap().1.codec, Codec::Pcma);
        l.codecs = vec![];
        assert_eq!(
            answer(&offer, &l, peer()).unwrap().1.codec,
            Codec::Pcmu,
            "empty = all"
        );
        let only_pcma = parse(fixture!("pcma_first_carrier.sdp")).unwrap();
        l.codecs = vec![Codec::Pcmu];
        assert_eq!(answer(&only_pcma, &l, peer()).unwrap().1.payload_type, 0);
    }

    #[test]
    fn rtpmap_decides_what_a_payload_type_is() {
        // Wrong clock or stereo is not G.711; an unmapped dynamic type is nothing.
        assert_eq!(
            neg_of(
                "m=audio 5000 RTP/AVP 96 97 98\r\na=rtpmap:96 PCMU/16000\r\na=rtpmap:97 PCMA/8000/2\r\n"
            ),
            Err(NegotiationError::NoCommonCodec)
        );
        let n = neg_of("m=audio 5000 RTP/AVP 96 8\r\na=rtpmap:96 pcmu/8000/1\r\n").unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 96));
        // A static type remapped by rtpmap follows the rtpmap.
        let n = neg_of("m=audio 5000 RTP/AVP 0\r\na=rtpmap:0 PCMA/8000\r\n").unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 0));
        // An rtpmap for a PT not on the m-line does not count.
        assert_eq!(
            neg_of("m=audio 5000 RTP/AVP 18\r\na=rtpmap:0 PCMU/8000\r\n"),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn avpf_is_accepted_and_mirrored() {
        let (text, n) = answer(
            &offer_with("m=audio 5000 RTP/AVPF 0\r\na=rtcp-fb:* nack\r\n"),
            &local(),
            peer(),
        )
        .unwrap();
        assert!(text.contains("m=audio 40000 RTP/AVPF 0\r\n"));
        assert_eq!(n.codec, Codec::Pcmu);
    }

    #[test]
    fn no_usable_audio() {
        assert_eq!(
            neg_of("m=audio 0 RTP/AVP 0\r\n"),
            Err(NegotiationError::NoAudio)
        );
        assert_eq!(
            neg_of("m=video 5000 RTP/AVP 96\r\n"),
            Err(NegotiationError::NoAudio)
        );
        assert_eq!(
            neg_of("m=audio 5000 UDP/TLS/RTP/SAVPF 0\r\n"),
            Err(NegotiationError::NoCommonCodec)
        );
        let no_c = parse("v=0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n").unwrap();
        assert_eq!(
            answer(&no_c, &local(), peer()),
            Err(NegotiationError::NoConnection)
        );
    }

    #[test]
    fn second_audio_stream_and_disabled_lines_get_port_zero() {
        let (text, n) = answer(
            &offer_with(
                "m=audio 0 RTP/AVP 0\r\nm=audio 5000 RTP/AVP 8\r\nm=audio 5002 RTP/AVP 0\r\n",
            ),
            &local(),
            peer(),
        )
        .unwrap();
        assert_eq!(Some(n.remote_rtp), sa("198.51.100.1:5000"));
        let back = parse(&text).unwrap();
        let ports: Vec<u16> = back.media.iter().map(|m| m.port).collect();
        assert_eq!(ports, [0, 40000, 0]);
    }

    #[test]
    fn media_level_connection_wins() {
        let n = neg_of("m=audio 5000 RTP/AVP 0\r\nc=IN IP4 10.1.2.3\r\n").unwrap();
        assert_eq!(Some(n.remote_rtp), sa("10.1.2.3:5000"));
        let n = neg_of("m=audio 5000 RTP/AVP 0\r\nc=IN IP6 ::\r\n").unwrap();
        assert_eq!(
            (n.remote_rtp, n.direction),
            (addr("203.0.113.99:9"), Direction::Inactive)
        );
    }

    #[test]
    fn nothing_from_the_offer_can_break_our_lines() {
        let (text, _) = answer(
            &offer_with("m=audio 5000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\x0bx\r\n"),
            &local(), peer(),
        )
        .unwrap();
        assert!(!text.contains('\x0b') && !text.contains("a=fmtp"));
        assert!(matches!(
            parse("v=0\r\nm=audio 5000 RTP/AVP 0\x01\r\n"),
            Err(SdpError::BadMedia { line: 2 })
        ));
        let mut l = local();
        l.username = "bad name".into();
        let (text, _) = answer(&offer_with("m=audio 5000 RTP/AVP 0\r\n"), &l, peer()).unwrap();
        assert!(text.contains("\r\no=- 1111 2222 IN IP4"));
    }

    // ---- codec choice: G.722, Opus, whose order -------------------------------------------

    fn choice(media: &str, local: &LocalMedia) -> Result<(Codec, u8), NegotiationError> {
        answer(&offer_with(media), local, peer()).map(|(_, n)| (n.codec, n.payload_type))
    }

    #[test]
    fn the_offers_order_decides_unless_we_prefer_our_own() {
        let media = "m=audio 5000 RTP/AVP 0 9 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let mut l = local_all();
        assert_eq!(choice(media, &l), Ok((Codec::Pcmu, 0)));
        l.answer.prefer_own_order = true;
        assert_eq!(choice(media, &l), Ok((Codec::Opus, 111)));
        l.codecs = vec![Codec::G722, Codec::Pcmu];
        assert_eq!(choice(media, &l), Ok((Codec::G722, 9)));
        // What we do not accept is never chosen, whatever the order.
        l.answer.prefer_own_order = false;
        l.codecs = vec![Codec::Opus];
        assert_eq!(choice(media, &l), Ok((Codec::Opus, 111)));
        l.codecs = vec![Codec::Pcma];
        assert_eq!(choice(media, &l), Err(NegotiationError::NoCommonCodec));
        // Our order, with the same codec twice in the offer: its first payload type.
        let mut l = local_all();
        l.answer.prefer_own_order = true;
        let twice =
            "m=audio 5000 RTP/AVP 8 97 96\r\na=rtpmap:97 G722/8000\r\na=rtpmap:96 G722/8000\r\n";
        assert_eq!(choice(twice, &l), Ok((Codec::G722, 97)));
    }

    /// Each `(formats and attributes after "m=audio 5000 RTP/AVP ", choice)`.
    fn assert_choices(l: &LocalMedia, cases: &[(&str, (Codec, u8))]) {
        for (media, want) in cases {
            let media = format!("m=audio 5000 RTP/AVP {media}");
            assert_eq!(choice(&media, l), Ok(*want), "{media:?}");
        }
    }

    #[test]
    fn g722_on_its_static_or_a_dynamic_payload_type() {
        let l = local_all();
        assert_choices(
            &l,
            &[
                ("9 0\r\n", (Codec::G722, 9)),
                ("102 0\r\na=rtpmap:102 g722/8000\r\n", (Codec::G722, 102)),
                // G.722's RTP clock is 8000 (RFC 3551 §4.5.2): a 16000 rtpmap is something else.
                ("102 0\r\na=rtpmap:102 G722/16000\r\n", (Codec::Pcmu, 0)),
            ],
        );
        let (text, n) = answer(
            &offer_with("m=audio 5000 RTP/AVP 102 101\r\na=rtpmap:102 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n"),
            &l,
            peer(),
        )
        .unwrap();
        assert!(
            text.contains("m=audio 40000 RTP/AVP 102 101\r\na=rtpmap:102 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n"),
            "{text}"
        );
        assert_eq!(
            (n.codec, n.payload_type, n.ptime_ms),
            (Codec::G722, 102, 30)
        );
    }

    #[test]
    fn opus_is_answered_on_its_dynamic_type_with_our_fmtp_and_20_ms() {
        let mut l = local_all();
        l.answer.opus_bitrate = 48_000;
        let (text, n) = answer(
            &offer_with(
                "m=audio 5000 RTP/AVP 96 0 101 102\r\na=rtpmap:96 opus/48000/2\r\n\
                 a=fmtp:96 maxplaybackrate=16000;useinbandfec=1;maxaveragebitrate=24000\r\n\
                 a=rtpmap:101 telephone-event/8000\r\na=rtpmap:102 telephone-event/48000\r\n\
                 a=fmtp:102 0-15\r\na=ptime:40\r\na=maxptime:10\r\n",
            ),
            &l,
            peer(),
        )
        .unwrap();
        assert_crlf(&text);
        assert_eq!((n.codec, n.payload_type, n.ptime_ms), (Codec::Opus, 96, 20));
        assert!(
            text.contains(
                "m=audio 40000 RTP/AVP 96 102\r\n\
                 a=rtpmap:96 opus/48000/2\r\n\
                 a=fmtp:96 maxplaybackrate=48000;sprop-maxcapturerate=48000;stereo=0;sprop-stereo=0;useinbandfec=0;usedtx=0;maxaveragebitrate=48000\r\n\
                 a=rtpmap:102 telephone-event/48000\r\n\
                 a=fmtp:102 0-15\r\n\
                 a=ptime:20\r\n"
            ),
            "the 48 kHz telephone-event, ptime 20 whatever was asked: {text}"
        );
        assert_eq!(
            n.peer_opus,
            Some(OpusRequest {
                max_playback_rate: 16000,
                useinbandfec: true,
                max_average_bitrate: Some(24000),
                ..OpusRequest::default()
            })
        );
        assert_eq!(n.peer_opus.unwrap().send_bitrate(48_000), 24_000);
        // Garbage fmtp values, or none: the RFC's defaults, and the call goes ahead.
        for fmtp in [
            "a=fmtp:96 maxplaybackrate=banana;stereo=7;;=;useinbandfec\r\n",
            "a=fmtp:97 maxplaybackrate=8000\r\n",
            "",
        ] {
            let n = neg_of_with(
                &format!("m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n{fmtp}"),
                &l,
            )
            .unwrap();
            assert_eq!(n.peer_opus, Some(OpusRequest::default()), "{fmtp:?}");
        }
        assert_eq!(
            neg_of("m=audio 5000 RTP/AVP 0\r\n").unwrap().peer_opus,
            None
        );
        assert_choices(
            &l,
            &[
                // Opus has no static type: an unmapped dynamic number is not Opus, nor is 8 kHz.
                ("111 0\r\n", (Codec::Pcmu, 0)),
                ("111 0\r\na=rtpmap:111 opus/8000\r\n", (Codec::Pcmu, 0)),
                ("111\r\na=rtpmap:111 OPUS/48000\r\n", (Codec::Opus, 111)),
            ],
        );
    }

    #[test]
    fn no_common_codec_warning_names_what_we_support() {
        let e = neg_of("m=audio 5000 RTP/AVP 18\r\n").unwrap_err();
        assert_eq!(
            e.warning(&[Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma]),
            (
                305,
                "Incompatible media format: mohd supports opus, G722, PCMU, PCMA".to_owned()
            )
        );
        assert_eq!(
            e.warning(&[Codec::Pcma]).1,
            "Incompatible media format: mohd supports PCMA"
        );
        assert_eq!(NegotiationError::NoAudio.warning(&[]).0, 304);
    }

    #[test]
    fn our_offer_lists_every_enabled_codec_in_our_order() {
        let mut l = local_all();
        l.codecs = vec![Codec::Opus, Codec::G722, Codec::Pcma];
        let text = offer(&l);
        assert!(
            text.contains(
                "m=audio 40000 RTP/AVP 111 9 8 101 110\r\n\
                 a=rtpmap:111 opus/48000/2\r\n\
                 a=fmtp:111 maxplaybackrate=48000;sprop-maxcapturerate=48000;stereo=0;sprop-stereo=0;useinbandfec=0;usedtx=0;maxaveragebitrate=40000\r\n\
                 a=rtpmap:9 G722/8000\r\n\
                 a=rtpmap:8 PCMA/8000\r\n\
                 a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
                 a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-16\r\n\
                 a=ptime:20\r\na=sendonly\r\n"
            ),
            "{text}"
        );
        // A PBX answering Opus on its own number: that number is what RTP carries.
        let n = negotiate_answer(
            &l.codecs,
            &pbx_answer(
                "m=audio 12000 RTP/AVP 107 101\r\na=rtpmap:107 opus/48000/2\r\na=ptime:60\r\n",
            ),
            peer(),
        )
        .unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.ptime_ms),
            (Codec::Opus, 107, 20)
        );
        // Our own answer to our own offer picks the offer's first: Opus.
        let (_, n) = answer(&parse(&text).unwrap(), &local_all(), peer()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Opus, 111));
    }

    // ---- SRTP (SDES) -------------------------------------------------------------------

    /// 30 bytes of key and salt, base64 (RFC 4568 §10's example key).
    const KEY30: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    /// 28 bytes, for AEAD_AES_128_GCM.
    const KEY28: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==";

    /// The call's INVITE came over TLS; our key is 0x00, 0x01, 0x02, …
    fn local_srtp(policy: SrtpPolicy) -> LocalMedia {
        let mut l = local();
        l.answer.srtp = policy;
        l.answer.sdes_allowed = true;
        l.answer.srtp_key = SrtpKeySeed(std::array::from_fn(|i| i as u8));
        l
    }

    fn b64(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn crypto_offer_gets_one_crypto_line_with_its_tag_and_suite_and_our_key() {
        let l = local_srtp(SrtpPolicy::OfferAnswer);
        let offer = offer_with(&format!(
            "m=audio 5000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY30}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}|2^31\r\n\
             a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
        ));
        let (text, n) = answer(&offer, &l, peer()).unwrap();
        assert_crlf(&text);
        let ours = l
            .answer
            .srtp_key
            .for_suite(SrtpSuite::AesCm128HmacSha1_32)
            .unwrap();
        let ours_b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(ours.as_bytes())
        };
        assert!(
            text.contains(&format!(
                "m=audio 40000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
                 a=rtpmap:101 telephone-event/8000\r\n\
                 a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{ours_b64}\r\na=ptime:20\r\n"
            )),
            "{text}"
        );
        assert_eq!(text.matches("a=crypto").count(), 1);
        let srtp = n.srtp.unwrap();
        assert_eq!(srtp.suite, SrtpSuite::AesCm128HmacSha1_32);
        assert_eq!(srtp.theirs.as_bytes(), b64(KEY30));
        assert_eq!(srtp.ours.as_bytes(), &l.answer.srtp_key.0[..30]);
        // The Debug of what the media thread receives shows no key.
        let debug = format!("{n:?}{:?}", l.answer);
        assert!(
            !debug.contains(&format!("{:?}", &ours.as_bytes()[..4])),
            "{debug}"
        );
        // GCM: 28 bytes of ours.
        let gcm = offer_with(&format!(
            "m=audio 5000 RTP/SAVPF 8\r\na=crypto:7 AEAD_AES_128_GCM inline:{KEY28}\r\n"
        ));
        let (text, n) = answer(&gcm, &l, peer()).unwrap();
        let srtp = n.srtp.unwrap();
        assert_eq!(srtp.suite, SrtpSuite::AeadAes128Gcm);
        assert_eq!(srtp.ours.as_bytes(), &l.answer.srtp_key.0[..28]);
        assert!(text.contains("m=audio 40000 RTP/SAVPF 8\r\n"), "{text}");
        assert!(
            text.contains("a=crypto:7 AEAD_AES_128_GCM inline:"),
            "{text}"
        );
    }

    #[test]
    fn malformed_crypto_lines_are_skipped_and_none_usable_is_refused() {
        let l = local_srtp(SrtpPolicy::OfferAnswer);
        let short = &KEY30[..32];
        for (lines, want) in [
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"),
                Ok(1),
            ),
            (
                format!(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!\r\n\
                     a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{short}\r\n\
                     a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4\r\n\
                     a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^60\r\n\
                     a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} UNENCRYPTED_SRTP\r\n\
                     a=crypto:6 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
                ),
                Ok(6),
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!\r\n".to_owned(),
                Err(NegotiationError::NoUsableCrypto(CryptoError::BadBase64)),
            ),
            (
                format!("a=crypto:1 NULL_HMAC_SHA1_80 inline:{KEY30}\r\n"),
                Err(NegotiationError::NoUsableCrypto(CryptoError::UnknownSuite)),
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4\r\n"),
                Err(NegotiationError::NoUsableCrypto(CryptoError::Mki)),
            ),
            (
                "a=crypto:\r\na=crypto:x\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80\r\n".to_owned(),
                Err(NegotiationError::NoUsableCrypto(CryptoError::Syntax)),
            ),
            (
                String::new(),
                Err(NegotiationError::NoUsableCrypto(CryptoError::Missing)),
            ),
        ] {
            let offer = offer_with(&format!("m=audio 5000 RTP/SAVP 0\r\n{lines}"));
            let got = answer(&offer, &l, peer()).map(|(_, n)| n.srtp.map(|_| ()));
            match want {
                Ok(tag) => {
                    let (text, _) = answer(&offer, &l, peer()).unwrap();
                    assert!(
                        text.contains(&format!("a=crypto:{tag} ")),
                        "{lines}: {text}"
                    );
                }
                Err(e) => assert_eq!(got, Err(e), "{lines}"),
            }
        }
        let e = NegotiationError::NoUsableCrypto(CryptoError::Mki);
        let (code, text) = e.warning(&[]);
        assert_eq!(code, 306);
        assert!(
            text.contains("AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32"),
            "{text}"
        );
    }

    #[test]
    fn srtp_policy_decides_between_savp_and_avp_streams() {
        use SrtpPolicy::{Off, OfferAnswer, Required};
        let savp = format!(
            "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
        );
        let avp = "m=audio 6000 RTP/AVP 0\r\n";
        let both = format!("{savp}{avp}");
        let port = |r: Result<MediaParams, NegotiationError>| {
            r.map(|n| (n.remote_rtp.port(), n.srtp.is_some()))
        };
        for (policy, media, tls, want) in [
            (OfferAnswer, both.as_str(), true, Ok((5000, true))),
            (OfferAnswer, both.as_str(), false, Ok((6000, false))),
            (OfferAnswer, avp, true, Ok((6000, false))),
            (
                OfferAnswer,
                savp.as_str(),
                false,
                Err(NegotiationError::SdesNeedsTls),
            ),
            (Required, both.as_str(), true, Ok((5000, true))),
            (Required, avp, true, Err(NegotiationError::SrtpRequired)),
            // Over a plain transport nothing is acceptable; the first reason is the SAVP one.
            (
                Required,
                both.as_str(),
                false,
                Err(NegotiationError::SdesNeedsTls),
            ),
            (Off, both.as_str(), true, Ok((6000, false))),
            (Off, savp.as_str(), true, Err(NegotiationError::SrtpOff)),
        ] {
            let mut l = local_srtp(policy);
            l.answer.sdes_allowed = tls;
            let got = port(neg_of_with(media, &l));
            assert_eq!(got, want, "{policy:?} tls={tls} {media:?}");
        }
        // A codec mismatch on the SAVP line is a codec problem, not an SRTP one.
        let l = local_srtp(Required);
        assert_eq!(
            neg_of_with(
                &format!(
                    "m=audio 5000 RTP/SAVP 18\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
                ),
                &l
            ),
            Err(NegotiationError::NoCommonCodec)
        );
        // The fixture with an SAVP line first: over TLS that line is taken.
        let (text, n) = answer(
            &parse(fixture!("savp_then_avp.sdp")).unwrap(),
            &local_srtp(OfferAnswer),
            peer(),
        )
        .unwrap();
        assert!(n.srtp.is_some());
        assert!(text.contains("m=audio 40000 RTP/SAVP 8 101\r\n"), "{text}");
        assert!(text.contains("m=audio 0 RTP/AVP 8\r\n"), "{text}");
        for (e, code) in [
            (NegotiationError::SrtpRequired, 302),
            (NegotiationError::SrtpOff, 302),
            (NegotiationError::SdesNeedsTls, 399),
        ] {
            assert_eq!(e.warning(&[]).0, code, "{e:?}");
        }
    }

    #[test]
    fn our_offer_under_required_srtp_is_savp_and_its_answer_must_accept_our_line() {
        let mut l = local_srtp(SrtpPolicy::Required);
        let text = offer(&l);
        assert!(
            text.contains("m=audio 40000 RTP/SAVP 0 8 101\r\n"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        let lines: Vec<CryptoLine> = back.media[0]
            .crypto_values()
            .map(|v| CryptoLine::parse(v).unwrap())
            .collect();
        let suites: Vec<SrtpSuite> = lines.iter().map(|c| c.suite).collect();
        assert_eq!(suites, SrtpSuite::ALL);
        let gcm = lines[0];
        let answer_text =
            |proto: &str, crypto: &str| pbx_answer(&format!("m=audio 12000 {proto} 0\r\n{crypto}"));
        let n = negotiate_answer_to(
            &l,
            &answer_text(
                "RTP/SAVP",
                &format!("a=crypto:{} AEAD_AES_128_GCM inline:{KEY28}\r\n", gcm.tag),
            ),
            peer(),
        )
        .unwrap();
        let srtp = n.srtp.unwrap();
        assert_eq!(srtp.suite, SrtpSuite::AeadAes128Gcm);
        assert_eq!(srtp.ours, gcm.key);
        assert_eq!(srtp.theirs.as_bytes(), b64(KEY28));
        for (proto, crypto, want) in [
            (
                "RTP/SAVP",
                format!("a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"),
                NegotiationError::NoUsableCrypto(CryptoError::NotOffered),
            ),
            (
                "RTP/SAVP",
                String::new(),
                NegotiationError::NoUsableCrypto(CryptoError::Missing),
            ),
            ("RTP/AVP", String::new(), NegotiationError::SrtpRequired),
        ] {
            assert_eq!(
                negotiate_answer_to(&l, &answer_text(proto, &crypto), peer()),
                Err(want),
                "{proto} {crypto:?}"
            );
        }
        // Without TLS (or without `required`) our offers are plain RTP.
        l.answer.sdes_allowed = false;
        assert!(offer(&l).contains(" RTP/AVP ") && !offer(&l).contains("crypto"));
        let plain = negotiate_answer_to(&l, &answer_text("RTP/AVP", ""), peer()).unwrap();
        assert_eq!(plain.srtp, None);
    }

    #[test]
    fn best_effort_crypto_on_rtp_avp_is_taken_when_keys_may_be() {
        use SrtpPolicy::{Off, OfferAnswer, Required};
        let media = format!(
            "m=audio 5000 RTP/AVP 0\r\na=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
        );
        let bad = "m=audio 5000 RTP/AVP 0\r\na=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:@@\r\n";
        for (policy, tls, media, want) in [
            (OfferAnswer, true, media.as_str(), Ok(true)),
            (Required, true, media.as_str(), Ok(true)),
            (OfferAnswer, false, media.as_str(), Ok(false)),
            (Off, true, media.as_str(), Ok(false)),
            (OfferAnswer, true, bad, Ok(false)),
            (Required, true, bad, Err(NegotiationError::SrtpRequired)),
        ] {
            let mut l = local_srtp(policy);
            l.answer.sdes_allowed = tls;
            let got = answer(&offer_with(media), &l, peer());
            let srtp = got
                .as_ref()
                .map(|(_, n)| n.srtp.is_some())
                .map_err(Clone::clone);
            assert_eq!(srtp, want, "{policy:?} tls={tls} {media:?}");
            if let Ok((text, n)) = got {
                assert!(text.contains("m=audio 40000 RTP/AVP 0\r\n"), "{text}");
                assert_eq!(text.contains("a=crypto:3 "), n.srtp.is_some(), "{text}");
            }
        }
    }

    #[test]
    fn asterisk_sdes_over_tls_gets_opus_and_its_first_crypto_line() {
        let offer = parse(fixture!("sdes_asterisk_tls.sdp")).unwrap();
        let mut l = local_srtp(SrtpPolicy::OfferAnswer);
        l.codecs = vec![Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];
        let (text, n) = answer(&offer, &l, peer()).unwrap();
        assert_crlf(&text);
        assert_eq!(
            (n.codec, n.payload_type, n.ptime_ms),
            (Codec::Opus, 107, 20)
        );
        assert_eq!(
            n.peer_opus.and_then(|o| o.max_average_bitrate),
            Some(32_000)
        );
        assert_eq!(
            n.srtp.map(|s| s.suite),
            Some(SrtpSuite::AesCm128HmacSha1_80)
        );
        assert!(text.contains("m=audio 40000 RTP/SAVP 107\r\n"), "{text}");
        assert!(
            text.contains("\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{text}"
        );
        // Over UDP the same offer is refused: its keys would have crossed the network in clear.
        l.answer.sdes_allowed = false;
        assert_eq!(
            answer(&offer, &l, peer()),
            Err(NegotiationError::SdesNeedsTls)
        );
    }

    // ---- our late offer and its answer ---------------------------------------------------

    #[test]
    fn offer_text_is_exact_and_parses_back() {
        let text = offer(&local());
        assert_eq!(
            text,
            "v=0\r\n\
             o=mohd 1111 2222 IN IP4 192.0.2.200\r\n\
             s=mohd\r\n\
             c=IN IP4 192.0.2.200\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 8 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendonly\r\n"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back.media[0].formats, ["0", "8", "101"]);
        assert_eq!(back.media[0].direction, Some(Direction::SendOnly));
        let mut l = local();
        l.codecs = vec![Codec::Pcma, Codec::Pcma];
        l.ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let text = offer(&l);
        assert!(text.contains("c=IN IP6 ::1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\n"));
        assert_eq!(parse(&text).unwrap().media[0].rtpmaps.len(), 2);
    }

    fn pbx_answer(media: &str) -> SessionDescription {
        parse(&format!(
            "v=0\r\no=- 77 77 IN IP4 192.0.2.10\r\ns=Asterisk\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n{media}"
        ))
        .unwrap()
    }

    #[test]
    fn negotiate_answer_to_our_offer() {
        let ours = Codec::G711;
        let n = negotiate_answer(
            &ours,
            &pbx_answer("m=audio 12000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"), peer(),
        )
        .unwrap();
        assert_eq!(
            n,
            MediaParams {
                codec: Codec::Pcma,
                payload_type: 8,
                ptime_ms: 20,
                remote_rtp: addr("192.0.2.10:12000"),
                remote_rtcp: sa("192.0.2.10:12001"),
                direction: Direction::SendOnly,
                peer_opus: None,
                srtp: None,
            }
        );
        let n = negotiate_answer(
            &ours,
            &pbx_answer("m=audio 12000 RTP/AVP 0\r\na=recvonly\r\na=rtcp-mux\r\n"),
            peer(),
        )
        .unwrap();
        assert_eq!((n.codec, n.direction), (Codec::Pcmu, Direction::SendOnly));
        assert!(!n.rtcp_mux(), "we did not offer mux");
        assert_eq!(n.remote_rtcp, sa("192.0.2.10:12001"));
        let n = negotiate_answer(
            &ours,
            &pbx_answer("m=audio 12000 RTP/AVP 0\r\na=inactive\r\n"),
            peer(),
        )
        .unwrap();
        assert_eq!(n.direction, Direction::Inactive);
    }

    #[test]
    fn negotiate_answer_failures() {
        let ours = [Codec::Pcmu];
        assert_eq!(
            negotiate_answer(&ours, &pbx_answer("m=audio 0 RTP/AVP 0\r\n"), peer()),
            Err(NegotiationError::NoCommonCodec)
        );
        assert_eq!(
            negotiate_answer(&ours, &pbx_answer("m=audio 12000 RTP/AVP 8\r\n"), peer()),
            Err(NegotiationError::NoCommonCodec),
            "PCMA was not in our offer"
        );
        assert_eq!(
            negotiate_answer(&ours, &pbx_answer("m=video 12000 RTP/AVP 96\r\n"), peer()),
            Err(NegotiationError::NoAudio)
        );
    }

    #[test]
    fn offer_and_negotiate_answer_round_trip_through_our_own_answer() {
        // We answer our own offer: the answer must be something negotiate_answer accepts.
        let our_offer = parse(&offer(&local())).unwrap();
        let mut answerer = local();
        answerer.ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
        answerer.rtp_port = 7000;
        let (text, _) = answer(&our_offer, &answerer, addr("192.0.2.200:5060")).unwrap();
        let n = negotiate_answer(&Codec::G711, &parse(&text).unwrap(), peer()).unwrap();
        assert_eq!(Some(n.remote_rtp), sa("192.0.2.99:7000"));
        assert_eq!(te_of(&text), Some(101));
    }

    // ---- malformed and hostile input -----------------------------------------------------

    #[test]
    fn parse_errors() {
        assert_eq!(parse(""), Err(SdpError::Empty));
        assert_eq!(parse("\r\n\r\n"), Err(SdpError::Empty));
        assert_eq!(parse("hello"), Err(SdpError::NoVersion));
        assert_eq!(
            parse("o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"),
            Err(SdpError::NoVersion)
        );
        assert_eq!(parse("v=1\r\n"), Err(SdpError::NoVersion));
        assert_eq!(
            parse("v=0\r\nno equals\r\n"),
            Err(SdpError::MalformedLine { line: 2 })
        );
        assert_eq!(parse("v=0\nm=audio\n"), Err(SdpError::BadMedia { line: 2 }));
        assert_eq!(
            parse("v=0\nm=audio 70000 RTP/AVP 0\n"),
            Err(SdpError::BadMedia { line: 2 })
        );
        assert_eq!(
            parse("v=0\nm=audio 5000 RTP/AVP\n"),
            Err(SdpError::BadMedia { line: 2 })
        );
        assert_eq!(
            parse("v=0\nc=IN IP4 pbx.example.com\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
        assert_eq!(
            parse_bytes(b"v=0\r\ns=\xff\xfe\r\n"),
            Err(SdpError::NotUtf8)
        );
        let huge = vec![b'a'; MAX_SDP_BYTES + 1];
        assert!(matches!(parse_bytes(&huge), Err(SdpError::TooLarge { .. })));
        let many = format!("v=0\r\n{}", "m=audio 0 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert_eq!(parse(&many), Err(SdpError::TooManyMedia { max: MAX_MEDIA }));
    }

    #[test]
    fn tolerated_oddities() {
        let s = parse(
            "\u{feff}v=0\r\n\r\n  o=- 1 1 IN IP4 1.2.3.4  \r\nc=IN IP4 224.2.1.1/127\r\nx=unknown type\r\n\
             m=audio 5000/2 RTP/AVP 0\r\nc=IN IP6 [2001:db8::1]\r\na=rtpmap:bad\r\na=rtcp:notaport\r\na=\r\n",
        )
        .unwrap();
        assert_eq!(s.origin.unwrap().address, "1.2.3.4");
        assert_eq!(s.connection, Some("224.2.1.1".parse().unwrap()));
        let m = &s.media[0];
        assert_eq!((m.port, m.port_count), (5000, Some(2)));
        assert_eq!(m.connection, Some("2001:db8::1".parse().unwrap()));
        assert!(m.rtpmaps.is_empty() && m.rtcp.is_none());
        assert_eq!(
            m.attributes.len(),
            3,
            "unknown and malformed attributes are kept raw"
        );
    }

    /// Deterministic xorshift64*: tests may not use a thread-local RNG.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Whatever the bytes, parse/answer must return, never panic, and any answer we produce
    /// must parse back with the same number of m-lines.
    /// Returns (parsed, answered).
    fn survive(bytes: &[u8]) -> (bool, bool) {
        let Ok(offer) = parse_bytes(bytes) else {
            return (false, false);
        };
        let _ = negotiate_answer(&Codec::G711, &offer, peer());
        let required = local_srtp(SrtpPolicy::Required);
        let _ = negotiate_answer_to(&required, &offer, peer());
        let mut sdes = local_srtp(SrtpPolicy::OfferAnswer);
        sdes.codecs = Codec::ALL.to_vec();
        let mut answered = false;
        for l in [local(), sdes, required] {
            let Ok((text, n)) = answer(&offer, &l, peer()) else {
                continue;
            };
            answered = true;
            assert_crlf(&text);
            let back = parse(&text).unwrap();
            assert_eq!(back.media.len(), offer.media.len());
            // SRTP: one crypto line, which reads back as what the media thread gets.
            let lines: Vec<&str> = back.media.iter().flat_map(|m| m.crypto_values()).collect();
            match n.srtp {
                None => assert!(lines.is_empty(), "{text}"),
                Some(srtp) => {
                    assert_eq!(lines.len(), 1, "{text}");
                    let line = CryptoLine::parse(lines[0]).unwrap();
                    assert_eq!((line.suite, line.key), (srtp.suite, srtp.ours));
                }
            }
        }
        (true, answered)
    }

    #[test]
    fn random_bytes_and_mutated_offers_never_panic() {
        let mut rng = Rng(0x6d6f_6864_5eed);
        for _ in 0..2000 {
            let len = rng.below(600);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = survive(&bytes);
        }
        let seeds: [&str; 7] = [
            fixture!("asterisk_pjsip.sdp"),
            fixture!("sdes_asterisk_tls.sdp"),
            fixture!("linphone_ice.sdp"),
            fixture!("t38_audiocodes.sdp"),
            fixture!("savp_then_avp.sdp"),
            fixture!("ipv6_snom.sdp"),
            fixture!("lf_only_sipp.sdp"),
        ];
        let alphabet = b"0123456789 :/=\r\n.amcvIP46-";
        let (mut parsed, mut answered) = (0, 0);
        for i in 0..6000 {
            let mut bytes = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(4) {
                    0 if at < bytes.len() => bytes[at] = alphabet[rng.below(alphabet.len())],
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => bytes.insert(at, rng.next() as u8),
                }
            }
            let (p, a) = survive(&bytes);
            parsed += usize::from(p);
            answered += usize::from(a);
        }
        // Enough mutants must get past the parser into answer(), or this explores nothing.
        assert!(
            parsed > 1500 && answered > 1000,
            "{parsed} parsed, {answered} answered"
        );
        // Large but legal input: many attribute lines, under the size cap.
        let big = format!(
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP 0\r\n{}",
            "a=x\r\n".repeat(12_000)
        );
        assert_eq!(survive(big.as_bytes()), (true, true));
    }
}
