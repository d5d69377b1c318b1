//! RTP and RTCP packets (RFC 3550), written into caller-owned buffers and parsed by borrowing.
//!
//! Owns the wire format: the 12-byte RTP header (built, and parsed with CSRCs, header
//! extension and padding), the RTCP packets a media sender needs (Sender Report, empty
//! Receiver Report, SDES CNAME, BYE, in compound packets), recognition of received RTCP
//! (SR/RR/SDES/BYE), the RFC 5761 RTP/RTCP demultiplexing test, and 64-bit NTP timestamps.
//!
//! Hand-written rather than taken from `rtp-types`/`rtcp-types`: a sender needs a fixed
//! 12-byte header and three small RTCP packets, about as many lines as the glue to a
//! builder API would take, and owning the parser lets us test the "no panic on any input"
//! rule directly. Nothing here allocates; parsing never panics (all reads go through
//! `get`), and building reports a typed error when the buffer is too small.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::clock::{Seq16, Ts32};

/// Length of an RTP header without CSRCs or extension.
pub const RTP_HEADER_LEN: usize = 12;
/// Length of an RTCP Sender Report without report blocks.
pub const RTCP_SR_LEN: usize = 28;
/// Longest SDES item text (the length field is one byte).
pub const MAX_CNAME_LEN: usize = 255;

/// RTCP packet types (RFC 3550 §12.1).
pub mod rtcp_type {
    /// Sender Report.
    pub const SR: u8 = 200;
    /// Receiver Report.
    pub const RR: u8 = 201;
    /// Source Description.
    pub const SDES: u8 = 202;
    /// Goodbye.
    pub const BYE: u8 = 203;
    /// Application-defined.
    pub const APP: u8 = 204;
}

const SDES_CNAME: u8 = 1;
/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
const NTP_UNIX_OFFSET_SECS: i128 = 2_208_988_800;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Why a packet could not be built.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The output buffer is shorter than the packet.
    #[error("buffer of {have} bytes is too small for a {need}-byte packet")]
    BufferTooSmall {
        /// Bytes the packet needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// RTP payload types are 7 bits.
    #[error("payload type {0} does not fit in 7 bits")]
    PayloadType(u8),
    /// An SDES item holds at most 255 bytes.
    #[error("CNAME of {0} bytes is longer than 255")]
    CnameTooLong(usize),
}

/// Why a received datagram is not a valid RTP or RTCP packet.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The datagram ends before the structure it announces.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version field is not 2.
    #[error("RTP/RTCP version {0}, expected 2")]
    Version(u8),
    /// The padding count is zero or longer than the packet.
    #[error("invalid padding length {0}")]
    Padding(u8),
    /// An RTCP packet's length field is not what its type requires.
    #[error("RTCP packet type {packet_type} has invalid length {len}")]
    RtcpLength {
        /// The RTCP packet type.
        packet_type: u8,
        /// Its length in bytes.
        len: usize,
    },
}

/// The fields of an RTP header that mohd sets or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit: for audio, the first packet of a talkspurt (after a timestamp jump).
    pub marker: bool,
    /// 7-bit payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: Seq16,
    /// Media timestamp.
    pub timestamp: Ts32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Writes a 12-byte RTP header (V=2, no padding, extension or CSRCs) at the start of `buf`
/// and returns its length; the payload goes right after it.
pub fn write_rtp_header(header: &RtpHeader, buf: &mut [u8]) -> Result<usize, BuildError> {
    if header.payload_type > 0x7F {
        return Err(BuildError::PayloadType(header.payload_type));
    }
    let out = out_slice(buf, RTP_HEADER_LEN)?;
    out[0] = 0x80;
    out[1] = (u8::from(header.marker) << 7) | header.payload_type;
    out[2..4].copy_from_slice(&header.seq.get().to_be_bytes());
    out[4..8].copy_from_slice(&header.timestamp.get().to_be_bytes());
    out[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
    Ok(RTP_HEADER_LEN)
}

/// Writes an RTP packet (header then `payload`) into `buf` and returns its length.
pub fn write_rtp(header: &RtpHeader, payload: &[u8], buf: &mut [u8]) -> Result<usize, BuildError> {
    let len = RTP_HEADER_LEN + payload.len();
    let out = out_slice(buf, len)?;
    write_rtp_header(header, out)?;
    out[RTP_HEADER_LEN..].copy_from_slice(payload);
    Ok(len)
}

/// An RTP header extension (RFC 3550 §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The profile-defined 16-bit identifier.
    pub profile: u16,
    /// The extension data (a multiple of 4 bytes).
    pub data: &'a [u8],
}

/// A parsed RTP packet, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The fixed header fields.
    pub header: RtpHeader,
    /// The CSRC list, 4 bytes per entry (see [`RtpPacket::csrcs`]).
    pub csrc_bytes: &'a [u8],
    /// The header extension, if the X bit is set.
    pub extension: Option<RtpExtension<'a>>,
    /// The payload, without padding.
    pub payload: &'a [u8],
    /// Padding bytes removed from the end (0 when the P bit is clear).
    pub padding: u8,
}

impl RtpPacket<'_> {
    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.csrc_bytes.chunks_exact(4).map(be_u32_chunk)
    }
}

/// True when a datagram on a shared (rtcp-mux) port is RTCP rather than RTP: RFC 5761 §4,
/// the second byte is an RTCP packet type in 192..=223.
pub fn is_rtcp(data: &[u8]) -> bool {
    matches!(data.get(1), Some(192..=223))
}

/// Parses an RTP packet. Never panics, whatever the input.
pub fn parse_rtp(data: &[u8]) -> Result<RtpPacket<'_>, ParseError> {
    let fixed = slice(data, 0, RTP_HEADER_LEN)?;
    let version = fixed[0] >> 6;
    if version != 2 {
        return Err(ParseError::Version(version));
    }
    let has_padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = usize::from(fixed[0] & 0x0F);
    let header = RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7F,
        seq: Seq16(be_u16(data, 2)?),
        timestamp: Ts32(be_u32(data, 4)?),
        ssrc: be_u32(data, 8)?,
    };
    let mut pos = RTP_HEADER_LEN;
    let csrc_bytes = slice(data, pos, csrc_count * 4)?;
    pos += csrc_count * 4;
    let extension = if has_extension {
        let profile = be_u16(data, pos)?;
        let words = usize::from(be_u16(data, pos + 2)?);
        let ext = slice(data, pos + 4, words * 4)?;
        pos += 4 + words * 4;
        Some(RtpExtension { profile, data: ext })
    } else {
        None
    };
    let mut end = data.len();
    let mut padding = 0;
    if has_padding {
        padding = *data
            .last()
            .ok_or(ParseError::Truncated { need: 1, have: 0 })?;
        let pad = usize::from(padding);
        if pad == 0 || pad > end - pos {
            return Err(ParseError::Padding(padding));
        }
        end -= pad;
    }
    let payload = data.get(pos..end).ok_or(ParseError::Truncated {
        need: pos,
        have: data.len(),
    })?;
    Ok(RtpPacket {
        header,
        csrc_bytes,
        extension,
        payload,
        padding,
    })
}

/// A 64-bit NTP timestamp: 32 bits of seconds since 1900 (modulo 2^32, so it wraps on
/// 2036-02-07 06:28:16 UTC into era 1, as RFC 5905 defines) and 32 bits of fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The NTP timestamp of a wall-clock time, in whichever era it falls.
    pub fn from_system_time(t: SystemTime) -> NtpTime {
        let unix_nanos: i128 = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let total = unix_nanos + NTP_UNIX_OFFSET_SECS * NANOS_PER_SEC;
        let secs = total.div_euclid(NANOS_PER_SEC).rem_euclid(1 << 32) as u64;
        let frac_nanos = total.rem_euclid(NANOS_PER_SEC);
        let frac = ((frac_nanos << 32) / NANOS_PER_SEC) as u64;
        NtpTime((secs << 32) | frac)
    }

    /// Seconds field (modulo 2^32).
    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fraction field, in units of 2^-32 s.
    pub fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// The middle 32 bits, as used in RTCP "last SR" (LSR) fields.
    pub fn compact(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// The wall-clock time this timestamp denotes, taking the NTP era closest to `pivot`
    /// (a 32-bit seconds field alone cannot say which 136-year era it is in).
    pub fn to_system_time_near(self, pivot: SystemTime) -> SystemTime {
        let pivot_secs = NtpTime::from_system_time(pivot).seconds();
        let delta = i64::from(self.seconds().wrapping_sub(pivot_secs) as i32);
        let pivot_floor = match pivot.duration_since(UNIX_EPOCH) {
            Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
            Err(e) => {
                let d = e.duration();
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                UNIX_EPOCH - Duration::from_secs(secs)
            }
        };
        let frac = Duration::from_nanos((u64::from(self.fraction()) * 1_000_000_000) >> 32);
        let whole = Duration::from_secs(delta.unsigned_abs());
        let t = if delta >= 0 {
            pivot_floor + whole
        } else {
            pivot_floor - whole
        };
        t + frac
    }
}

/// The sender information of an RTCP Sender Report (no report blocks: mohd only sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// SSRC of the sender.
    pub ssrc: u32,
    /// Wall-clock time of this report.
    pub ntp: NtpTime,
    /// The RTP timestamp corresponding to `ntp`.
    pub rtp_ts: Ts32,
    /// Packets sent since the start (wraps).
    pub packet_count: u32,
    /// Payload octets sent since the start (wraps).
    pub octet_count: u32,
}

/// The report that opens a compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A sender report, for a source that has sent RTP.
    Sender(SenderReport),
    /// An empty receiver report, for a source that has sent nothing yet (RFC 3550 §6.4.2).
    EmptyReceiver {
        /// SSRC of the reporter.
        ssrc: u32,
    },
}

impl Report {
    fn ssrc(&self) -> u32 {
        match self {
            Report::Sender(sr) => sr.ssrc,
            Report::EmptyReceiver { ssrc } => *ssrc,
        }
    }
}

/// Writes a compound RTCP packet: the report, an SDES chunk with the CNAME, and, when
/// `bye` is set, a BYE for the same SSRC last. Returns its length.
pub fn write_rtcp_compound(
    report: &Report,
    cname: &str,
    bye: bool,
    buf: &mut [u8],
) -> Result<usize, BuildError> {
    if cname.len() > MAX_CNAME_LEN {
        return Err(BuildError::CnameTooLong(cname.len()));
    }
    let report_len = match report {
        Report::Sender(_) => RTCP_SR_LEN,
        Report::EmptyReceiver { .. } => 8,
    };
    let sdes_len = sdes_len(cname.len());
    let bye_len = if bye { 8 } else { 0 };
    let total = report_len + sdes_len + bye_len;
    let out = out_slice(buf, total)?;
    out.fill(0);
    let ssrc = report.ssrc();
    match report {
        Report::Sender(sr) => {
            write_rtcp_common(out, 0, rtcp_type::SR, RTCP_SR_LEN);
            out[4..8].copy_from_slice(&sr.ssrc.to_be_bytes());
            out[8..16].copy_from_slice(&sr.ntp.0.to_be_bytes());
            out[16..20].copy_from_slice(&sr.rtp_ts.get().to_be_bytes());
            out[20..24].copy_from_slice(&sr.packet_count.to_be_bytes());
            out[24..28].copy_from_slice(&sr.octet_count.to_be_bytes());
        }
        Report::EmptyReceiver { ssrc } => {
            write_rtcp_common(out, 0, rtcp_type::RR, 8);
            out[4..8].copy_from_slice(&ssrc.to_be_bytes());
        }
    }
    let sdes = &mut out[report_len..report_len + sdes_len];
    write_rtcp_common(sdes, 1, rtcp_type::SDES, sdes_len);
    sdes[4..8].copy_from_slice(&ssrc.to_be_bytes());
    sdes[8] = SDES_CNAME;
    sdes[9] = cname.len() as u8;
    sdes[10..10 + cname.len()].copy_from_slice(cname.as_bytes());
    // The rest is already zero: the END item and the padding to a 32-bit boundary.
    if bye {
        let b = &mut out[report_len + sdes_len..];
        write_rtcp_common(b, 1, rtcp_type::BYE, 8);
        b[4..8].copy_from_slice(&ssrc.to_be_bytes());
    }
    Ok(total)
}

/// Writes SR + SDES CNAME.
pub fn write_sr_sdes(sr: &SenderReport, cname: &str, buf: &mut [u8]) -> Result<usize, BuildError> {
    write_rtcp_compound(&Report::Sender(*sr), cname, false, buf)
}

/// Writes SR + SDES CNAME + BYE, the packet a sender leaves a session with.
pub fn write_sr_sdes_bye(
    sr: &SenderReport,
    cname: &str,
    buf: &mut [u8],
) -> Result<usize, BuildError> {
    write_rtcp_compound(&Report::Sender(*sr), cname, true, buf)
}

/// The longest compound packet [`write_rtcp_compound`] can produce.
pub const MAX_RTCP_COMPOUND_LEN: usize = RTCP_SR_LEN + sdes_len(MAX_CNAME_LEN) + 8;

/// SDES with one chunk holding one CNAME item and the END item, padded to 32 bits.
const fn sdes_len(cname_len: usize) -> usize {
    // header 4 + SSRC 4 + type 1 + length 1 + text + at least one zero octet (END).
    (4 + 4 + 2 + cname_len + 1).div_ceil(4) * 4
}

fn write_rtcp_common(out: &mut [u8], count: u8, packet_type: u8, len: usize) {
    out[0] = 0x80 | count;
    out[1] = packet_type;
    let words = (len / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
}

/// One packet of a received compound RTCP packet, as far as mohd needs to understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// A Sender Report; `report_count` report blocks follow the sender info.
    SenderReport {
        /// The sender info.
        sr: SenderReport,
        /// Number of reception report blocks.
        report_count: u8,
    },
    /// A Receiver Report.
    ReceiverReport {
        /// SSRC of the reporter.
        ssrc: u32,
        /// Number of reception report blocks.
        report_count: u8,
    },
    /// Source description; the CNAME of the first chunk if it has one.
    SourceDescription {
        /// SSRC of the first chunk.
        ssrc: Option<u32>,
        /// CNAME of the first chunk.
        cname: Option<&'a [u8]>,
    },
    /// Goodbye from `source_count` sources.
    Bye {
        /// Number of sources leaving.
        source_count: u8,
        /// The first of them.
        first_ssrc: Option<u32>,
    },
    /// Any other packet type (APP, feedback, XR…).
    Other {
        /// The RTCP packet type.
        packet_type: u8,
    },
}

/// Iterates over the packets of a compound RTCP datagram; stops after the first error.
pub fn parse_rtcp(data: &[u8]) -> RtcpIter<'_> {
    RtcpIter {
        rest: data,
        failed: false,
    }
}

/// Iterator returned by [`parse_rtcp`].
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = parse_one_rtcp(self.rest);
        match r {
            Ok((packet, len)) => {
                self.rest = self.rest.get(len..).unwrap_or(&[]);
                Some(Ok(packet))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_one_rtcp(data: &[u8]) -> Result<(RtcpPacket<'_>, usize), ParseError> {
    let first = slice(data, 0, 4)?;
    let version = first[0] >> 6;
    if version != 2 {
        return Err(ParseError::Version(version));
    }
    let has_padding = first[0] & 0x20 != 0;
    let count = first[0] & 0x1F;
    let packet_type = first[1];
    let len = (usize::from(be_u16(data, 2)?) + 1) * 4;
    let packet = slice(data, 0, len)?;
    let mut body_end = len;
    if has_padding {
        let pad = packet[len - 1];
        if pad == 0 || usize::from(pad) > len - 4 {
            return Err(ParseError::Padding(pad));
        }
        body_end -= usize::from(pad);
    }
    let body = &packet[..body_end];
    let bad_len = || ParseError::RtcpLength { packet_type, len };
    let parsed = match packet_type {
        rtcp_type::SR => {
            if body.len() < RTCP_SR_LEN + usize::from(count) * 24 {
                return Err(bad_len());
            }
            RtcpPacket::SenderReport {
                sr: SenderReport {
                    ssrc: be_u32(body, 4)?,
                    ntp: NtpTime(be_u64(body, 8)?),
                    rtp_ts: Ts32(be_u32(body, 16)?),
                    packet_count: be_u32(body, 20)?,
                    octet_count: be_u32(body, 24)?,
                },
                report_count: count,
            }
        }
        rtcp_type::RR => {
            if body.len() < 8 + usize::from(count) * 24 {
                return Err(bad_len());
            }
            RtcpPacket::ReceiverReport {
                ssrc: be_u32(body, 4)?,
                report_count: count,
            }
        }
        rtcp_type::SDES => parse_sdes_first_chunk(body, count),
        rtcp_type::BYE => {
            if body.len() < 4 + usize::from(count) * 4 {
                return Err(bad_len());
            }
            RtcpPacket::Bye {
                source_count: count,
                first_ssrc: if count > 0 {
                    Some(be_u32(body, 4)?)
                } else {
                    None
                },
            }
        }
        _ => RtcpPacket::Other { packet_type },
    };
    Ok((parsed, len))
}

/// Best effort: a malformed item list yields `cname: None` rather than an error, since a
/// CNAME is informational for us.
fn parse_sdes_first_chunk(body: &[u8], count: u8) -> RtcpPacket<'_> {
    if count == 0 {
        return RtcpPacket::SourceDescription {
            ssrc: None,
            cname: None,
        };
    }
    let ssrc = be_u32(body, 4).ok();
    let mut pos = 8;
    let mut cname = None;
    while let Some(&item_type) = body.get(pos) {
        if item_type == 0 {
            break;
        }
        let Some(&item_len) = body.get(pos + 1) else {
            break;
        };
        let Some(text) = body.get(pos + 2..pos + 2 + usize::from(item_len)) else {
            break;
        };
        if item_type == SDES_CNAME {
            cname = Some(text);
            break;
        }
        pos += 2 + usize::from(item_len);
    }
    RtcpPacket::SourceDescription { ssrc, cname }
}

fn out_slice(buf: &mut [u8], need: usize) -> Result<&mut [u8], BuildError> {
    let have = buf.len();
    buf.get_mut(..need)
        .ok_or(BuildError::BufferTooSmall { need, have })
}

fn slice(data: &[u8], start: usize, len: usize) -> Result<&[u8], ParseError> {
    let end = start.saturating_add(len);
    data.get(start..end).ok_or(ParseError::Truncated {
        need: end,
        have: data.len(),
    })
}

fn be_u16(data: &[u8], at: usize) -> Result<u16, ParseError> {
    let s = slice(data, at, 2)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn be_u32(data: &[u8], at: usize) -> Result<u32, ParseError> {
    let s = slice(data, at, 4)?;
    Ok(be_u32_chunk(s))
}

fn be_u64(data: &[u8], at: usize) -> Result<u64, ParseError> {
    Ok((u64::from(be_u32(data, at)?) << 32) | u64::from(be_u32(data, at + 4)?))
}

/// `chunk` is exactly 4 bytes at every call site (`slice(.., 4)` or `chunks_exact(4)`).
fn be_u32_chunk(chunk: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(chunk);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 8,
            seq: Seq16(0xFFFE),
            timestamp: Ts32(0xFFFF_FF00),
            ssrc: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn rtp_round_trip_and_exact_bytes() {
        let mut buf = [0u8; 64];
        let n = write_rtp(&header(), &[1, 2, 3], &mut buf).unwrap();
        assert_eq!(n, 15);
        assert_eq!(
            &buf[..n],
            &[
                0x80, 0x88, 0xFF, 0xFE, 0xFF, 0xFF, 0xFF, 0x00, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3
            ]
        );
        let p = parse_rtp(&buf[..n]).unwrap();
        assert_eq!(p.header, header());
        assert_eq!(p.payload, &[1, 2, 3]);
        assert_eq!(p.padding, 0);
        assert!(p.extension.is_none());
        assert!(!is_rtcp(&buf[..n]));
    }

    #[test]
    fn rtp_build_errors() {
        let mut small = [0u8; 14];
        assert_eq!(
            write_rtp(&header(), &[1, 2, 3], &mut small),
            Err(BuildError::BufferTooSmall { need: 15, have: 14 })
        );
        let bad = RtpHeader {
            payload_type: 128,
            ..header()
        };
        assert_eq!(
            write_rtp_header(&bad, &mut [0; 12]),
            Err(BuildError::PayloadType(128))
        );
    }

    #[test]
    fn rtp_parse_csrc_extension_padding() {
        // V=2, P=1, X=1, CC=2; PT 0; two CSRCs; extension 0xBEDE with 1 word; payload 2
        // bytes; 3 bytes of padding.
        let mut d = vec![0xB2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        d.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]);
        d.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]);
        d.extend_from_slice(&[0xAA, 0xBB, 0, 0, 3]);
        let p = parse_rtp(&d).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(
            p.extension,
            Some(RtpExtension {
                profile: 0xBEDE,
                data: &[9, 9, 9, 9]
            })
        );
        assert_eq!(p.payload, &[0xAA, 0xBB]);
        assert_eq!(p.padding, 3);
        // Padding longer than what follows the header, or zero, is rejected.
        let mut bad = d.clone();
        *bad.last_mut().unwrap() = 6;
        assert_eq!(parse_rtp(&bad), Err(ParseError::Padding(6)));
        *bad.last_mut().unwrap() = 0;
        assert_eq!(parse_rtp(&bad), Err(ParseError::Padding(0)));
        // Padding that eats exactly the payload is fine.
        *bad.last_mut().unwrap() = 5;
        assert_eq!(parse_rtp(&bad).unwrap().payload, &[] as &[u8]);
        // Truncated CSRC list and extension.
        assert!(matches!(
            parse_rtp(&d[..15]),
            Err(ParseError::Truncated { .. })
        ));
        assert!(matches!(
            parse_rtp(&d[..25]),
            Err(ParseError::Truncated { .. })
        ));
        // Wrong version.
        let mut v1 = d.clone();
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), Err(ParseError::Version(1)));
        assert!(matches!(
            parse_rtp(&[]),
            Err(ParseError::Truncated { need: 12, have: 0 })
        ));
    }

    fn sr() -> SenderReport {
        SenderReport {
            ssrc: 0x0102_0304,
            ntp: NtpTime(0x1122_3344_5566_7788),
            rtp_ts: Ts32(0x99AA_BBCC),
            packet_count: 50,
            octet_count: 8000,
        }
    }

    #[test]
    fn sr_sdes_compound_round_trip() {
        let mut buf = [0u8; 256];
        let n = write_sr_sdes(&sr(), "moh@example", &mut buf).unwrap();
        // SR 28 + SDES (4 + 4 + 2 + 11 + END 1 = 22 -> 24).
        assert_eq!(n, 52);
        assert_eq!(n % 4, 0);
        assert_eq!(&buf[..4], &[0x80, 200, 0, 6]);
        assert!(is_rtcp(&buf[..n]));
        let packets: Vec<_> = parse_rtcp(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::SenderReport {
                    sr: sr(),
                    report_count: 0
                },
                RtcpPacket::SourceDescription {
                    ssrc: Some(0x0102_0304),
                    cname: Some(b"moh@example".as_slice())
                },
            ]
        );
    }

    #[test]
    fn bye_compound_and_cname_edges() {
        let mut buf = [0u8; MAX_RTCP_COMPOUND_LEN];
        // A CNAME whose length leaves no room for END inside the 4-byte boundary gets a
        // full extra word: 4 + 4 + 2 + 12 = 22, +END = 23 -> 24.
        for cname_len in [0, 1, 2, 12, 13, 14, 255] {
            let cname = "x".repeat(cname_len);
            let n = write_sr_sdes_bye(&sr(), &cname, &mut buf).unwrap();
            assert_eq!(n % 4, 0);
            let packets: Vec<_> = parse_rtcp(&buf[..n]).collect::<Result<_, _>>().unwrap();
            assert_eq!(packets.len(), 3);
            assert_eq!(
                packets[1],
                RtcpPacket::SourceDescription {
                    ssrc: Some(sr().ssrc),
                    cname: Some(cname.as_bytes())
                }
            );
            assert_eq!(
                packets[2],
                RtcpPacket::Bye {
                    source_count: 1,
                    first_ssrc: Some(sr().ssrc)
                }
            );
        }
        let long = "x".repeat(256);
        assert_eq!(
            write_sr_sdes(&sr(), &long, &mut buf),
            Err(BuildError::CnameTooLong(256))
        );
        let n =
            write_rtcp_compound(&Report::EmptyReceiver { ssrc: 7 }, "a", true, &mut buf).unwrap();
        let first = parse_rtcp(&buf[..n]).next().unwrap().unwrap();
        assert_eq!(
            first,
            RtcpPacket::ReceiverReport {
                ssrc: 7,
                report_count: 0
            }
        );
        assert!(matches!(
            write_sr_sdes(&sr(), "abc", &mut [0u8; 40]),
            Err(BuildError::BufferTooSmall { need: 44, .. })
        ));
    }

    #[test]
    fn rtcp_parse_rejects_bad_lengths_and_stops() {
        // An SR claiming one report block but carrying none.
        let mut buf = [0u8; 64];
        let n = write_sr_sdes(&sr(), "a", &mut buf).unwrap();
        let mut bad = buf[..n].to_vec();
        bad[0] |= 1;
        let mut it = parse_rtcp(&bad);
        assert_eq!(
            it.next(),
            Some(Err(ParseError::RtcpLength {
                packet_type: 200,
                len: 28
            }))
        );
        assert_eq!(it.next(), None);
        // A length field pointing past the datagram.
        let mut bad = buf[..n].to_vec();
        bad[3] = 40;
        assert!(matches!(
            parse_rtcp(&bad).next(),
            Some(Err(ParseError::Truncated { .. }))
        ));
        // Unknown packet types are skipped over, not errors.
        let app = [0x80, 204, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            parse_rtcp(&app).next(),
            Some(Ok(RtcpPacket::Other { packet_type: 204 }))
        );
    }

    /// Unix seconds of the NTP era-0 → era-1 wrap: 2036-02-07 06:28:16 UTC.
    const ERA_WRAP_UNIX: u64 = (1u64 << 32) - 2_208_988_800;

    #[test]
    fn ntp_known_values() {
        assert_eq!(
            NtpTime::from_system_time(UNIX_EPOCH).0,
            2_208_988_800u64 << 32
        );
        let half = UNIX_EPOCH + Duration::from_millis(500);
        assert_eq!(NtpTime::from_system_time(half).fraction(), 1 << 31);
        // 2024-01-01T00:00:00Z = 1704067200 unix.
        let t = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        assert_eq!(NtpTime::from_system_time(t).seconds(), 3_913_056_000);
    }

    #[test]
    fn ntp_wraps_into_era_1_in_2036() {
        let wrap = UNIX_EPOCH + Duration::from_secs(ERA_WRAP_UNIX);
        let before = NtpTime::from_system_time(wrap - Duration::from_millis(250));
        let at = NtpTime::from_system_time(wrap);
        let after = NtpTime::from_system_time(wrap + Duration::from_millis(1250));
        assert_eq!(before.seconds(), u32::MAX);
        assert_eq!(before.fraction(), 3 << 30);
        assert_eq!(at.0, 0);
        assert_eq!(after.seconds(), 1);
        assert_eq!(after.fraction(), 1 << 30);
        // Compact (LSR) form and differences stay continuous across the wrap.
        assert_eq!(after.compact().wrapping_sub(before.compact()), 0x1_8000);
        // Converting back picks the era nearest the pivot.
        for (t, ntp) in [
            (wrap - Duration::from_millis(250), before),
            (wrap + Duration::from_millis(1250), after),
        ] {
            let back = ntp.to_system_time_near(wrap);
            let err = back
                .duration_since(t)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap();
            assert!(err <= Duration::from_nanos(1), "{err:?}");
            // A pivot decades away in the same era still works.
            let back = ntp.to_system_time_near(wrap + Duration::from_secs(40 * 365 * 86400));
            let err = back
                .duration_since(t)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap();
            assert!(err <= Duration::from_nanos(1), "{err:?}");
        }
    }

    #[test]
    fn ntp_before_1970_and_1900() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        let n = NtpTime::from_system_time(t);
        assert_eq!(n.seconds(), 2_208_988_798);
        assert_eq!(n.fraction(), 1 << 31);
        let back = n.to_system_time_near(UNIX_EPOCH);
        assert_eq!(back, t);
    }

    /// Valid packets of each kind, for mutation.
    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 400];
        let n = write_rtp(&header(), &[7; 160], &mut buf).unwrap();
        out.push(buf[..n].to_vec());
        let n = write_sr_sdes_bye(&sr(), "caller@host", &mut buf).unwrap();
        out.push(buf[..n].to_vec());
        let mut ext = vec![
            0xB2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 10, 0, 0, 0, 11,
        ];
        ext.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9, 0xAA, 0xBB, 0, 0, 3]);
        out.push(ext);
        out
    }

    fn check_rtp_invariants(data: &[u8]) {
        if let Ok(p) = parse_rtp(data) {
            let used = RTP_HEADER_LEN
                + p.csrc_bytes.len()
                + p.extension.map_or(0, |e| 4 + e.data.len())
                + p.payload.len()
                + usize::from(p.padding);
            assert_eq!(used, data.len());
        }
    }

    fn check_rtcp(data: &[u8]) {
        for r in parse_rtcp(data).take(10_000) {
            let _ = r;
        }
    }

    #[test]
    fn parsers_never_panic_on_random_or_mutated_input() {
        let mut rng = StdRng::seed_from_u64(3550);
        let mut data = vec![0u8; 65_535];
        for i in 0..20_000 {
            let len = if i % 100 == 0 {
                rng.random_range(0..=65_535)
            } else {
                rng.random_range(0..200)
            };
            let d = &mut data[..len];
            rng.fill(d);
            // Half of them get a version-2 first byte so they go deeper than the check.
            if i % 2 == 0 && len > 0 {
                d[0] = (d[0] & 0x3F) | 0x80;
            }
            check_rtp_invariants(d);
            check_rtcp(d);
        }
        for seed in seeds() {
            for _ in 0..5_000 {
                let mut d = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..d.len());
                    d[at] = rng.random();
                }
                let cut = rng.random_range(0..=d.len());
                check_rtp_invariants(&d[..cut]);
                check_rtp_invariants(&d);
                check_rtcp(&d[..cut]);
                check_rtcp(&d);
            }
        }
        // Every possible first two bytes on a minimal packet.
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                let mut d = [0u8; 16];
                d[0] = b0;
                d[1] = b1;
                d[15] = 4;
                check_rtp_invariants(&d);
                check_rtcp(&d);
            }
        }
    }
}
