//! SRTP and SRTCP (RFC 3711, RFC 7714) for calls keyed by SDES (RFC 4568): the three suites
//! mohd negotiates, their key material, and the per-call sender and receiver contexts that
//! protect and unprotect packets in place in the caller's buffer.
//!
//! Owns: session-key derivation (RFC 3711 §4.3, key derivation rate 0, as SDES without `KDR`
//! implies), AES-CM with HMAC-SHA1 (80- or 32-bit RTP tags; SRTCP always 80, RFC 4568 §6.2),
//! AEAD_AES_128_GCM (RFC 7714), the rollover counter across the 65,536 sequence wrap
//! (RFC 3711 §3.3.1 and Appendix A), the SRTCP index, and inbound replay protection
//! (a 128-packet window per SSRC, RFC 3711 §3.3.2).
//!
//! **Written on RustCrypto primitives** (`aes`, `ctr`, `hmac`, `sha1`, `aes-gcm`) rather than
//! taken from an SRTP crate, after reading the candidates:
//! - `webrtc-srtp` (webrtc-rs) has all three suites but returns a fresh `Bytes` for every
//!   packet it protects or unprotects, and brings tokio, `webrtc-util` and its own RTP/RTCP
//!   packet types into what is a pure module here; the media thread sends ~100k packets/s.
//! - `srtp` (safe libsrtp2 binding, over `srtp2-sys`) has had no release since 2020, has no
//!   AES-GCM in its policy enum, grows a `Vec`/`BytesMut` to append the tag, calls the C
//!   library's process-wide `srtp_init` behind a `Once`, and needs a C build.
//! - `srtp2-sys` alone would put `unsafe` in mohd, which forbids it.
//!
//! SRTP's framing on top of the primitives is small (this file), allocates nothing (the
//! expanded AES keys and keyed HMAC state are built once per context; per packet they are
//! cloned on the stack), and is checked against RFC 3711 Appendix B and RFC 7714 §16–17 here
//! and against libsrtp (via PyPI `pylibsrtp`) in `tests/srtp_interop.rs`.
//!
//! Pure: no I/O, no clock; a context is owned by the one thread that uses it.

use std::fmt;

use aes::Aes128;
use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes128Gcm, Nonce, Tag};
use ctr::cipher::{InnerIvInit, KeyInit, StreamCipher};
use ctr::{Ctr128BE, CtrCore};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use thiserror::Error;

/// Bytes protection can add to a packet: the SRTCP index (4) and a GCM tag (16). Buffers
/// handed to [`SrtpSender::protect_rtp`] / [`SrtpSender::protect_rtcp`] need this much room
/// past the plaintext.
pub const MAX_OVERHEAD: usize = SRTCP_INDEX_LEN + GCM_TAG_LEN;

/// Master key length of every suite mohd speaks (AES-128).
pub const MASTER_KEY_LEN: usize = 16;
/// The longest master salt (AES-CM's 112 bits; GCM's is 96).
pub const MAX_MASTER_SALT_LEN: usize = 14;
/// The longest key‖salt, as SDES carries it inline.
pub const MAX_KEY_MATERIAL_LEN: usize = MASTER_KEY_LEN + MAX_MASTER_SALT_LEN;

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_E_FLAG: u32 = 0x8000_0000;
const MAX_SRTCP_INDEX: u32 = 0x7FFF_FFFF;
/// The packet index is 48 bits (ROC ‖ SEQ); past it the master key is spent.
const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;
const HMAC_SHA1_KEY_LEN: usize = 20;
const SRTCP_HMAC_TAG_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;
const GCM_SALT_LEN: usize = 12;
/// How far behind the newest packet an older one is still accepted once.
const REPLAY_WINDOW: u64 = 128;
/// SSRCs tracked per context: a peer normally sends one; a PBX that switches sources
/// mid-call may send a second. The least recently used is forgotten past this.
const MAX_STREAMS: usize = 4;

/// RFC 3711 §4.3.1 key derivation labels.
mod label {
    pub const RTP_ENCRYPTION: u8 = 0x00;
    pub const RTP_AUTH: u8 = 0x01;
    pub const RTP_SALT: u8 = 0x02;
    pub const RTCP_ENCRYPTION: u8 = 0x03;
    pub const RTCP_AUTH: u8 = 0x04;
    pub const RTCP_SALT: u8 = 0x05;
}

/// An SRTP crypto suite, named as in SDP `a=crypto` (RFC 4568 §6.2, RFC 7714 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 with a 32-bit RTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// AES-128 in Galois/Counter Mode, 128-bit tag (RFC 7714).
    AeadAes128Gcm,
}

impl SrtpSuite {
    /// Every suite, strongest first: the order mohd offers them in.
    pub const ALL: [SrtpSuite; 3] = [
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    /// The suite's name in `a=crypto`.
    pub fn sdp_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite an `a=crypto` name denotes (names are case-sensitive, RFC 4568 §9.2).
    pub fn from_sdp_name(name: &str) -> Option<SrtpSuite> {
        SrtpSuite::ALL.into_iter().find(|s| s.sdp_name() == name)
    }

    /// Master salt length: 112 bits for AES-CM, 96 for GCM (RFC 7714 §12).
    pub fn master_salt_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 14,
            SrtpSuite::AeadAes128Gcm => GCM_SALT_LEN,
        }
    }

    /// Length of key‖salt, as carried inline in SDES.
    pub fn key_material_len(self) -> usize {
        MASTER_KEY_LEN + self.master_salt_len()
    }

    /// Bytes protection adds to an RTP packet (the authentication tag).
    pub fn rtp_overhead(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AeadAes128Gcm => GCM_TAG_LEN,
        }
    }

    /// Bytes protection adds to an RTCP compound packet (SRTCP index and tag).
    pub fn rtcp_overhead(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => {
                SRTCP_INDEX_LEN + SRTCP_HMAC_TAG_LEN
            }
            SrtpSuite::AeadAes128Gcm => SRTCP_INDEX_LEN + GCM_TAG_LEN,
        }
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sdp_name())
    }
}

/// One direction's master key and salt, fixed-size so [`SrtpParams`] (and so `MediaParams`)
/// stays `Copy`. Its `Debug` never prints the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SrtpKeyMaterial {
    /// key ‖ salt; past the suite's salt length (GCM's 12 bytes) it stays zero, which is
    /// also the padding key derivation wants (RFC 7714 §11 uses the 112-bit PRF input).
    bytes: [u8; MAX_KEY_MATERIAL_LEN],
    len: u8,
}

impl SrtpKeyMaterial {
    /// Key material from key‖salt; `None` unless its length is the suite's.
    pub fn from_bytes(suite: SrtpSuite, key_and_salt: &[u8]) -> Option<SrtpKeyMaterial> {
        if key_and_salt.len() != suite.key_material_len() {
            return None;
        }
        let mut bytes = [0; MAX_KEY_MATERIAL_LEN];
        bytes[..key_and_salt.len()].copy_from_slice(key_and_salt);
        Some(SrtpKeyMaterial {
            bytes,
            len: key_and_salt.len() as u8,
        })
    }

    /// key‖salt, as SDES carries it (base64 of this).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn master_key(&self) -> [u8; MASTER_KEY_LEN] {
        let mut key = [0; MASTER_KEY_LEN];
        key.copy_from_slice(&self.bytes[..MASTER_KEY_LEN]);
        key
    }

    /// The salt zero-padded on the right to 112 bits.
    fn master_salt(&self) -> [u8; MAX_MASTER_SALT_LEN] {
        let mut salt = [0; MAX_MASTER_SALT_LEN];
        salt.copy_from_slice(&self.bytes[MASTER_KEY_LEN..]);
        salt
    }
}

impl fmt::Debug for SrtpKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrtpKeyMaterial({} bytes, redacted)", self.len)
    }
}

/// A call's SRTP as the SDES negotiation settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpParams {
    /// The suite both directions use.
    pub suite: SrtpSuite,
    /// What mohd protects with (the key in our answer).
    pub ours: SrtpKeyMaterial,
    /// What the peer protects with (the key in its offer).
    pub theirs: SrtpKeyMaterial,
}

impl SrtpParams {
    /// The context that protects what mohd sends.
    pub fn sender(&self) -> SrtpSender {
        SrtpSender::new(self.suite, &self.ours)
    }

    /// The context that checks and decrypts what the peer sends.
    pub fn receiver(&self) -> SrtpReceiver {
        SrtpReceiver::new(self.suite, &self.theirs)
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrtpError {
    /// Not an RTP/RTCP packet this could process (too short, wrong version, a header longer
    /// than the packet, or an SRTCP packet sent unencrypted).
    #[error("not a well-formed (S)RTP/(S)RTCP packet")]
    Malformed,
    /// The buffer has no room for the tag (a programming error in the caller).
    #[error("buffer of {have} bytes has no room for a {need}-byte protected packet")]
    BufferTooSmall {
        /// Bytes the protected packet needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// The authentication tag does not match: tampered, or keyed differently.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// Already received, or older than the replay window.
    #[error("replayed or too old")]
    Replay,
    /// The master key protected all the packets it may (2^48 RTP or 2^31 RTCP).
    #[error("SRTP master key exhausted")]
    KeyExhausted,
}

/// AES-CM with HMAC-SHA1 session keys (RFC 3711 §4.1.1, §4.2).
#[derive(Clone)]
struct AesCmSession {
    aes: Aes128,
    salt: [u8; MAX_MASTER_SALT_LEN],
    /// Keyed once; cloned per packet so the key schedule is not redone.
    mac: Hmac<Sha1>,
    tag_len: usize,
}

impl AesCmSession {
    /// RFC 3711 §4.1.1: XORs the keystream for IV = (salt × 2^16) XOR (SSRC × 2^64) XOR
    /// (index × 2^16).
    fn apply(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0; 16];
        iv[..MAX_MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (byte, ssrc_byte) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *byte ^= ssrc_byte;
        }
        for (byte, index_byte) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *byte ^= index_byte;
        }
        apply_aes_ctr(&self.aes, iv, data);
    }

    /// HMAC-SHA1 over `authenticated`, then the ROC for SRTP (RFC 3711 §4.2; SRTCP has none).
    fn mac(&self, authenticated: &[u8], roc: Option<u32>) -> Hmac<Sha1> {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        if let Some(roc) = roc {
            mac.update(&roc.to_be_bytes());
        }
        mac
    }

    /// Writes the truncated tag into `out[..tag_len]`.
    fn write_tag(&self, authenticated: &[u8], roc: Option<u32>, out: &mut [u8]) {
        let tag = self.mac(authenticated, roc).finalize().into_bytes();
        out[..self.tag_len].copy_from_slice(&tag[..self.tag_len]);
    }

    /// Constant-time check of the truncated tag.
    fn verify(&self, authenticated: &[u8], roc: Option<u32>, tag: &[u8]) -> Result<(), SrtpError> {
        self.mac(authenticated, roc)
            .verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthenticationFailed)
    }
}

/// AEAD_AES_128_GCM session keys (RFC 7714).
#[derive(Clone)]
struct GcmSession {
    aead: Aes128Gcm,
    salt: [u8; GCM_SALT_LEN],
}

impl GcmSession {
    /// RFC 7714 §8.1 / §9.1: IV = (0x0000 ‖ SSRC ‖ 48 bits) XOR salt, the 48 bits being
    /// ROC ‖ SEQ for SRTP and 0x0000 ‖ 0 ‖ SRTCP index for SRTCP: the index as a 48-bit number.
    fn nonce(&self, ssrc: u32, index: u64) -> Nonce<U12> {
        let mut iv = [0; GCM_SALT_LEN];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
        for (byte, salt_byte) in iv.iter_mut().zip(&self.salt) {
            *byte ^= salt_byte;
        }
        iv.into()
    }

    fn seal(&self, ssrc: u32, index: u64, aad: &[u8], data: &mut [u8]) -> Tag {
        self.aead
            .encrypt_inout_detached(&self.nonce(ssrc, index), aad, data.into())
            .expect("a datagram is far below GCM's length limits")
    }

    fn open(
        &self,
        ssrc: u32,
        index: u64,
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8],
    ) -> Result<(), SrtpError> {
        let tag = Tag::try_from(tag).map_err(|_| SrtpError::Malformed)?;
        self.aead
            .decrypt_inout_detached(&self.nonce(ssrc, index), aad, data.into(), &tag)
            .map_err(|_| SrtpError::AuthenticationFailed)
    }
}

/// SRTCP's GCM associated data (RFC 7714 §9.2): the first 8 bytes, then E‖SRTCP index.
fn srtcp_aad(header: &[u8], e_index: &[u8]) -> [u8; RTCP_HEADER_LEN + SRTCP_INDEX_LEN] {
    let mut aad = [0; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
    aad[..RTCP_HEADER_LEN].copy_from_slice(&header[..RTCP_HEADER_LEN]);
    aad[RTCP_HEADER_LEN..].copy_from_slice(e_index);
    aad
}

/// The session keys for one of RTP or RTCP in one direction.
#[derive(Clone)]
enum SessionCipher {
    AesCm(AesCmSession),
    Gcm(GcmSession),
}

impl SessionCipher {
    /// Derive RTP's (`rtcp` false) or RTCP's session keys from the master key (RFC 3711 §4.3).
    fn derive(suite: SrtpSuite, master: &SrtpKeyMaterial, rtcp: bool) -> SessionCipher {
        let kdf = Aes128::new(&master.master_key().into());
        let salt = master.master_salt();
        let (enc_label, auth_label, salt_label) = if rtcp {
            (label::RTCP_ENCRYPTION, label::RTCP_AUTH, label::RTCP_SALT)
        } else {
            (label::RTP_ENCRYPTION, label::RTP_AUTH, label::RTP_SALT)
        };
        let mut key = [0; MASTER_KEY_LEN];
        derive_key(&kdf, &salt, enc_label, &mut key);
        match suite {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => {
                let mut auth = [0; HMAC_SHA1_KEY_LEN];
                derive_key(&kdf, &salt, auth_label, &mut auth);
                let mut session_salt = [0; MAX_MASTER_SALT_LEN];
                derive_key(&kdf, &salt, salt_label, &mut session_salt);
                let tag_len = if rtcp {
                    SRTCP_HMAC_TAG_LEN
                } else {
                    suite.rtp_overhead()
                };
                SessionCipher::AesCm(AesCmSession {
                    aes: Aes128::new(&key.into()),
                    salt: session_salt,
                    mac: <Hmac<Sha1> as KeyInit>::new_from_slice(&auth)
                        .expect("HMAC takes a key of any length"),
                    tag_len,
                })
            }
            SrtpSuite::AeadAes128Gcm => {
                let mut session_salt = [0; GCM_SALT_LEN];
                derive_key(&kdf, &salt, salt_label, &mut session_salt);
                SessionCipher::gcm(&key, session_salt)
            }
        }
    }

    fn gcm(key: &[u8; MASTER_KEY_LEN], salt: [u8; GCM_SALT_LEN]) -> SessionCipher {
        SessionCipher::Gcm(GcmSession {
            aead: Aes128Gcm::new(key.into()),
            salt,
        })
    }

    fn tag_len(&self) -> usize {
        match self {
            SessionCipher::AesCm(cm) => cm.tag_len,
            SessionCipher::Gcm(_) => GCM_TAG_LEN,
        }
    }

    /// Encrypts `packet[header_len..len]` and appends the tag; `packet` has room for it.
    fn protect_rtp(&self, packet: &mut [u8], len: usize, header_len: usize, ssrc: u32, index: u64) {
        match self {
            SessionCipher::AesCm(cm) => {
                cm.apply(ssrc, index, &mut packet[header_len..len]);
                let (authenticated, tag) = packet.split_at_mut(len);
                cm.write_tag(authenticated, Some(rollover_counter(index)), tag);
            }
            SessionCipher::Gcm(gcm) => {
                let (header, rest) = packet.split_at_mut(header_len);
                let tag = gcm.seal(ssrc, index, header, &mut rest[..len - header_len]);
                packet[len..len + GCM_TAG_LEN].copy_from_slice(&tag);
            }
        }
    }

    /// Checks the tag of `packet` (tag included) and decrypts in place; returns the
    /// plaintext length.
    fn unprotect_rtp(
        &self,
        packet: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let body_end = packet.len() - self.tag_len();
        let (body, tag) = packet.split_at_mut(body_end);
        match self {
            SessionCipher::AesCm(cm) => {
                cm.verify(body, Some(rollover_counter(index)), tag)?;
                cm.apply(ssrc, index, &mut body[header_len..]);
            }
            SessionCipher::Gcm(gcm) => {
                let (header, payload) = body.split_at_mut(header_len);
                gcm.open(ssrc, index, header, payload, tag)?;
            }
        }
        Ok(body_end)
    }

    /// Encrypts `packet[8..len]` and appends E‖index and the tag in the suite's order;
    /// returns the protected length.
    fn protect_rtcp(&self, packet: &mut [u8], len: usize, ssrc: u32, index: u32) -> usize {
        let e_index = (SRTCP_E_FLAG | index).to_be_bytes();
        match self {
            SessionCipher::AesCm(cm) => {
                // RFC 3711 §3.4: … ‖ E‖SRTCP index ‖ tag, the tag over all before it.
                cm.apply(ssrc, u64::from(index), &mut packet[RTCP_HEADER_LEN..len]);
                packet[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                let (authenticated, tag) = packet.split_at_mut(len + SRTCP_INDEX_LEN);
                cm.write_tag(authenticated, None, tag);
                authenticated.len() + cm.tag_len
            }
            SessionCipher::Gcm(gcm) => {
                // RFC 7714 §9.1: … ‖ tag ‖ E‖SRTCP index.
                let aad = srtcp_aad(packet, &e_index);
                let tag = gcm.seal(
                    ssrc,
                    u64::from(index),
                    &aad,
                    &mut packet[RTCP_HEADER_LEN..len],
                );
                packet[len..len + GCM_TAG_LEN].copy_from_slice(&tag);
                let end = len + GCM_TAG_LEN + SRTCP_INDEX_LEN;
                packet[len + GCM_TAG_LEN..end].copy_from_slice(&e_index);
                end
            }
        }
    }

    /// Where a received SRTCP packet keeps E‖index (its offset) for this suite.
    fn srtcp_index_offset(&self, len: usize) -> Option<usize> {
        match self {
            SessionCipher::AesCm(cm) => len.checked_sub(cm.tag_len + SRTCP_INDEX_LEN),
            SessionCipher::Gcm(_) => len.checked_sub(SRTCP_INDEX_LEN),
        }
    }

    /// Checks and decrypts an SRTCP packet whose E‖index word is at `index_at`; returns the
    /// plaintext length.
    fn unprotect_rtcp(
        &self,
        packet: &mut [u8],
        index_at: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, SrtpError> {
        match self {
            SessionCipher::AesCm(cm) => {
                let (authenticated, tag) = packet.split_at_mut(index_at + SRTCP_INDEX_LEN);
                cm.verify(authenticated, None, tag)?;
                cm.apply(
                    ssrc,
                    u64::from(index),
                    &mut authenticated[RTCP_HEADER_LEN..index_at],
                );
                Ok(index_at)
            }
            SessionCipher::Gcm(gcm) => {
                let body_end = index_at - GCM_TAG_LEN;
                let (body, trailer) = packet.split_at_mut(body_end);
                let (tag, e_index) = trailer.split_at(GCM_TAG_LEN);
                let aad = srtcp_aad(body, e_index);
                gcm.open(
                    ssrc,
                    u64::from(index),
                    &aad,
                    &mut body[RTCP_HEADER_LEN..],
                    tag,
                )?;
                Ok(body_end)
            }
        }
    }

    /// The shortest SRTCP packet this suite can carry: header, E‖index, tag.
    fn min_srtcp_len(&self) -> usize {
        RTCP_HEADER_LEN + SRTCP_INDEX_LEN + self.tag_len()
    }
}

/// The ROC part of a 48-bit SRTP index.
fn rollover_counter(index: u64) -> u32 {
    (index >> 16) as u32
}

/// RFC 3711 §4.3.1 with key_derivation_rate 0: AES-CM keystream under the master key with
/// IV = (master_salt XOR label at byte 7) × 2^16.
fn derive_key(kdf: &Aes128, master_salt: &[u8; MAX_MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0; 16];
    iv[..MAX_MASTER_SALT_LEN].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    apply_aes_ctr(kdf, iv, out);
}

/// XORs `data` with the AES-CTR keystream from counter block `iv` (big-endian counter; the
/// low 16 bits start at zero, so a packet never carries into the bits above them).
fn apply_aes_ctr(aes: &Aes128, iv: [u8; 16], data: &mut [u8]) {
    Ctr128BE::<Aes128>::from_core(CtrCore::inner_iv_init(aes.clone(), &iv.into()))
        .apply_keystream(data);
}

/// The RTP header's length (fixed part, CSRCs, extension) and its SSRC and sequence number.
fn rtp_header(packet: &[u8]) -> Result<(usize, u32, u16), SrtpError> {
    let first = *packet.first().ok_or(SrtpError::Malformed)?;
    if packet.len() < RTP_HEADER_LEN || first >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let mut len = RTP_HEADER_LEN + 4 * usize::from(first & 0x0F);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok((len, ssrc, seq))
}

/// The sender SSRC of an RTCP compound packet (its first packet's).
fn rtcp_ssrc(packet: &[u8]) -> Result<u32, SrtpError> {
    match packet.get(..RTCP_HEADER_LEN) {
        Some(h) if h[0] >> 6 == 2 => Ok(u32::from_be_bytes([h[4], h[5], h[6], h[7]])),
        _ => Err(SrtpError::Malformed),
    }
}

/// RFC 3711 Appendix A: the 48-bit index of `seq` given the highest index seen so far, taking
/// whichever ROC (one less, the same, one more) puts it nearest. `None` when that would be
/// before index 0.
fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
    let index = highest as i64 + delta;
    (index >= 0).then_some(index as u64)
}

/// Which of the last [`REPLAY_WINDOW`] indices have been accepted.
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    highest: u64,
    /// Bit k set: index `highest - k` was accepted.
    seen: u128,
}

impl ReplayWindow {
    fn starting_at(index: u64) -> ReplayWindow {
        ReplayWindow {
            highest: index,
            seen: 0,
        }
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let age = self.highest - index;
        if age >= REPLAY_WINDOW || self.seen >> age & 1 == 1 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.highest = index;
            self.seen |= 1;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

/// Per-SSRC state in a fixed table, least recently used replaced: no allocation per packet,
/// bounded memory whatever SSRCs a peer invents.
#[derive(Debug, Clone)]
struct Streams<T: Copy> {
    slots: [Option<(u32, u64, T)>; MAX_STREAMS],
    uses: u64,
}

impl<T: Copy> Streams<T> {
    fn new() -> Self {
        Streams {
            slots: [None; MAX_STREAMS],
            uses: 0,
        }
    }

    fn get(&self, ssrc: u32) -> Option<T> {
        self.slots
            .iter()
            .flatten()
            .find(|(s, _, _)| *s == ssrc)
            .map(|(_, _, state)| *state)
    }

    fn put(&mut self, ssrc: u32, state: T) {
        self.uses += 1;
        let slot = match self
            .slots
            .iter()
            .position(|s| matches!(s, Some((x, _, _)) if *x == ssrc))
        {
            Some(i) => i,
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| self.least_recently_used()),
        };
        self.slots[slot] = Some((ssrc, self.uses, state));
    }

    fn least_recently_used(&self) -> usize {
        (0..MAX_STREAMS)
            .min_by_key(|&i| self.slots[i].map_or(0, |(_, used, _)| used))
            .unwrap_or(0)
    }
}

/// One direction's RTP and RTCP session keys. Its `Debug` names only the suite.
#[derive(Clone)]
struct DirectionKeys {
    suite: SrtpSuite,
    rtp: SessionCipher,
    rtcp: SessionCipher,
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectionKeys({}, redacted)", self.suite)
    }
}

impl DirectionKeys {
    fn derive(suite: SrtpSuite, key: &SrtpKeyMaterial) -> DirectionKeys {
        DirectionKeys {
            suite,
            rtp: SessionCipher::derive(suite, key, false),
            rtcp: SessionCipher::derive(suite, key, true),
        }
    }
}

/// Protects what mohd sends on one call: RTP with the ROC it keeps per SSRC, RTCP with its
/// SRTCP index.
#[derive(Debug, Clone)]
pub struct SrtpSender {
    keys: DirectionKeys,
    /// Highest RTP index sent, per SSRC.
    rtp_streams: Streams<u64>,
    next_srtcp_index: u32,
}

impl SrtpSender {
    /// A sender keyed with our master key (ROC 0, SRTCP index 0).
    pub fn new(suite: SrtpSuite, key: &SrtpKeyMaterial) -> SrtpSender {
        SrtpSender {
            keys: DirectionKeys::derive(suite, key),
            rtp_streams: Streams::new(),
            next_srtcp_index: 0,
        }
    }

    /// The suite this context protects with.
    pub fn suite(&self) -> SrtpSuite {
        self.keys.suite
    }

    /// Protects the RTP packet in `buf[..len]` in place; returns the protected length.
    /// `buf` needs [`SrtpSuite::rtp_overhead`] bytes of room past `len`.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::Malformed)?;
        let (header_len, ssrc, seq) = rtp_header(packet)?;
        let need = len + self.keys.rtp.tag_len();
        if buf.len() < need {
            return Err(SrtpError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let index = match self.rtp_streams.get(ssrc) {
            // Our own packets only go forward, so a sequence number below the last one
            // (nearest-ROC estimate) is a resend; one before index 0 cannot be.
            Some(highest) => estimate_index(highest, seq).ok_or(SrtpError::Malformed)?,
            None => u64::from(seq),
        };
        if index > MAX_SRTP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        let highest = self.rtp_streams.get(ssrc).map_or(index, |h| h.max(index));
        self.rtp_streams.put(ssrc, highest);
        self.keys.rtp.protect_rtp(buf, len, header_len, ssrc, index);
        Ok(need)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place; returns the protected
    /// length. `buf` needs [`SrtpSuite::rtcp_overhead`] bytes of room past `len`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::Malformed)?;
        let ssrc = rtcp_ssrc(packet)?;
        let need = len + self.keys.suite.rtcp_overhead();
        if buf.len() < need {
            return Err(SrtpError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let index = self.next_srtcp_index;
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        self.next_srtcp_index += 1;
        Ok(self.keys.rtcp.protect_rtcp(buf, len, ssrc, index))
    }
}

/// Checks and decrypts what the peer sends on one call. State changes only for packets that
/// authenticate, so forged packets cannot move the ROC or the replay window.
#[derive(Debug, Clone)]
pub struct SrtpReceiver {
    keys: DirectionKeys,
    rtp_streams: Streams<ReplayWindow>,
    rtcp_streams: Streams<ReplayWindow>,
}

impl SrtpReceiver {
    /// A receiver keyed with the peer's master key. The first packet of each SSRC sets its
    /// ROC to 0 (SDES gives no other starting value).
    pub fn new(suite: SrtpSuite, key: &SrtpKeyMaterial) -> SrtpReceiver {
        SrtpReceiver {
            keys: DirectionKeys::derive(suite, key),
            rtp_streams: Streams::new(),
            rtcp_streams: Streams::new(),
        }
    }

    /// The suite this context expects.
    pub fn suite(&self) -> SrtpSuite {
        self.keys.suite
    }

    /// Authenticates and decrypts the SRTP packet `packet` in place; returns the length of
    /// the RTP packet now at its start.
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.keys.rtp.tag_len();
        let body_len = packet
            .len()
            .checked_sub(tag_len)
            .ok_or(SrtpError::Malformed)?;
        let (header_len, ssrc, seq) = rtp_header(&packet[..body_len])?;
        let known = self.rtp_streams.get(ssrc);
        let index = match known {
            Some(window) => estimate_index(window.highest, seq).ok_or(SrtpError::Replay)?,
            None => u64::from(seq),
        };
        if let Some(window) = &known {
            window.check(index)?;
        }
        let len = self
            .keys
            .rtp
            .unprotect_rtp(packet, header_len, ssrc, index)?;
        let mut window = known.unwrap_or(ReplayWindow::starting_at(index));
        window.accept(index);
        self.rtp_streams.put(ssrc, window);
        Ok(len)
    }

    /// Authenticates and decrypts the SRTCP compound packet `packet` in place; returns the
    /// length of the RTCP compound now at its start.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        if packet.len() < self.keys.rtcp.min_srtcp_len() {
            return Err(SrtpError::Malformed);
        }
        let ssrc = rtcp_ssrc(packet)?;
        let index_at = self
            .keys
            .rtcp
            .srtcp_index_offset(packet.len())
            .ok_or(SrtpError::Malformed)?;
        let word = u32::from_be_bytes([
            packet[index_at],
            packet[index_at + 1],
            packet[index_at + 2],
            packet[index_at + 3],
        ]);
        let index = word & MAX_SRTCP_INDEX;
        let known = self.rtcp_streams.get(ssrc);
        if let Some(window) = &known {
            window.check(u64::from(index))?;
        }
        let len = self
            .keys
            .rtcp
            .unprotect_rtcp(packet, index_at, ssrc, index)?;
        // Authenticated but not encrypted: UNENCRYPTED_SRTCP, which mohd never accepts.
        // (Checked after the tag, so a forger cannot tell it apart from a bad tag.)
        if word & SRTCP_E_FLAG == 0 {
            return Err(SrtpError::Malformed);
        }
        let mut window = known.unwrap_or(ReplayWindow::starting_at(u64::from(index)));
        window.accept(u64::from(index));
        self.rtcp_streams.put(ssrc, window);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| (b as char).to_digit(16).expect("hex digit") as u8)
            .collect();
        digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
    }

    fn material(suite: SrtpSuite, fill: u8) -> SrtpKeyMaterial {
        let bytes: Vec<u8> = (0..suite.key_material_len())
            .map(|i| fill.wrapping_add(i as u8).wrapping_mul(31))
            .collect();
        SrtpKeyMaterial::from_bytes(suite, &bytes).expect("right length")
    }

    /// A sender and the receiver for what it sends.
    fn pair(suite: SrtpSuite, fill: u8) -> (SrtpSender, SrtpReceiver) {
        let key = material(suite, fill);
        (SrtpSender::new(suite, &key), SrtpReceiver::new(suite, &key))
    }

    fn rtp_packet(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
        p
    }

    /// An SR with no report blocks followed by an SDES CNAME: a compound as the fan-out sends.
    fn rtcp_compound(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0x11; 20]);
        p.extend_from_slice(&[0x81, 202, 0, 2]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[1, 2, b'm', b'o']);
        p
    }

    fn protect(sender: &mut SrtpSender, plain: &[u8], rtcp: bool) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_OVERHEAD, 0);
        let len = if rtcp {
            sender.protect_rtcp(&mut buf, plain.len())
        } else {
            sender.protect_rtp(&mut buf, plain.len())
        }
        .expect("protect");
        buf.truncate(len);
        buf
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = SrtpKeyMaterial::from_bytes(
            SrtpSuite::AesCm128HmacSha1_80,
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6"),
        )
        .expect("30 bytes");
        let kdf = Aes128::new(&master.master_key().into());
        let salt = master.master_salt();
        let mut key = [0; 16];
        derive_key(&kdf, &salt, label::RTP_ENCRYPTION, &mut key);
        assert_eq!(key[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        let mut session_salt = [0; 14];
        derive_key(&kdf, &salt, label::RTP_SALT, &mut session_salt);
        assert_eq!(session_salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        let mut auth = [0; 20];
        derive_key(&kdf, &salt, label::RTP_AUTH, &mut auth);
        assert_eq!(
            auth[..],
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
        );
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C")[..]
            .try_into()
            .expect("16");
        let session = AesCmSession {
            aes: Aes128::new(&key.into()),
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")[..]
                .try_into()
                .expect("14"),
            mac: <Hmac<Sha1> as KeyInit>::new_from_slice(&[]).expect("any length"),
            tag_len: 10,
        };
        // Blocks 0, 1, 2 and 0xFEFF, 0xFF00, 0xFF01 of the keystream for SSRC 0, index 0.
        let mut zeros = vec![0; 0xFF02 * 16];
        session.apply(0, 0, &mut zeros);
        let block = |n: usize| &zeros[n * 16..n * 16 + 16];
        assert_eq!(block(0), &hex("E03EAD0935C95E80E166B16DD92B4EB4")[..]);
        assert_eq!(block(1), &hex("D23513162B02D0F72A43A2FE4A5F97AB")[..]);
        assert_eq!(block(2), &hex("41E95B3BB0A2E8DD477901E4FCA894C0")[..]);
        assert_eq!(block(0xFEFF), &hex("EC8CDF7398607CB0F2D21675EA9EA1E4")[..]);
        assert_eq!(block(0xFF00), &hex("362B7C3C6773516318A077D7FC5073AE")[..]);
        assert_eq!(block(0xFF01), &hex("6A2CC3787889374FBEB4C81B17BA6C44")[..]);
    }

    fn rfc7714_cipher() -> SessionCipher {
        let key: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f")[..]
            .try_into()
            .expect("16");
        let salt: [u8; 12] = hex("517569642070726f2071756f")[..].try_into().expect("12");
        SessionCipher::gcm(&key, salt)
    }

    fn rfc7714_pair() -> (SrtpSender, SrtpReceiver) {
        let keys = DirectionKeys {
            suite: SrtpSuite::AeadAes128Gcm,
            rtp: rfc7714_cipher(),
            rtcp: rfc7714_cipher(),
        };
        let mut sender = SrtpSender::new(keys.suite, &material(keys.suite, 0));
        let mut receiver = SrtpReceiver::new(keys.suite, &material(keys.suite, 0));
        sender.keys = keys.clone();
        receiver.keys = keys;
        (sender, receiver)
    }

    /// Protects `plain` with the RFC 7714 session key and salt, expects `expected`, and
    /// unprotects it back.
    fn check_rfc7714_vector(plain: &str, expected: &str, srtcp_index: Option<u32>) {
        let (plain, expected) = (hex(plain), hex(expected));
        let (mut sender, mut receiver) = rfc7714_pair();
        if let Some(index) = srtcp_index {
            sender.next_srtcp_index = index;
        }
        let protected = protect(&mut sender, &plain, srtcp_index.is_some());
        assert_eq!(protected, expected);
        let mut buf = protected;
        let len = if srtcp_index.is_some() {
            receiver.unprotect_rtcp(&mut buf)
        } else {
            receiver.unprotect_rtp(&mut buf)
        };
        assert_eq!(buf[..len.expect("unprotect")], plain[..]);
    }

    /// RFC 7714 §16.1.1: AEAD_AES_128_GCM RTP, session key and salt given directly.
    #[test]
    fn rfc7714_gcm_rtp_vector() {
        check_rfc7714_vector(
            "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976 69736120
             696e2070 61727465 73207472 6573",
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5 0d294e6f
             42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
            None,
        );
    }

    /// RFC 7714 §17.1.1: AEAD_AES_128_GCM SRTCP with index 0x5d4.
    #[test]
    fn rfc7714_gcm_rtcp_vector() {
        check_rfc7714_vector(
            "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61 deadbeef
             deadbeef deadbeef deadbeef deadbeef",
            "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d c676a5f1
             730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872 45d9eade 800005d4",
            Some(0x5d4),
        );
    }

    #[test]
    fn names_round_trip_and_lengths_match_the_rfcs() {
        for suite in SrtpSuite::ALL {
            assert_eq!(SrtpSuite::from_sdp_name(suite.sdp_name()), Some(suite));
            assert!(suite.rtp_overhead() <= MAX_OVERHEAD);
            assert!(suite.rtcp_overhead() <= MAX_OVERHEAD);
        }
        assert_eq!(SrtpSuite::from_sdp_name("aes_cm_128_hmac_sha1_80"), None);
        assert_eq!(SrtpSuite::AesCm128HmacSha1_80.key_material_len(), 30);
        assert_eq!(SrtpSuite::AeadAes128Gcm.key_material_len(), 28);
        assert_eq!(SrtpSuite::AesCm128HmacSha1_32.rtcp_overhead(), 14);
        assert!(SrtpKeyMaterial::from_bytes(SrtpSuite::AeadAes128Gcm, &[0; 30]).is_none());
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = SrtpKeyMaterial::from_bytes(SrtpSuite::AesCm128HmacSha1_80, &[0xAB; 30])
            .expect("30 bytes");
        let params = SrtpParams {
            suite: SrtpSuite::AesCm128HmacSha1_80,
            ours: key,
            theirs: key,
        };
        let text = format!("{params:?} {:?} {:?}", params.sender(), params.receiver());
        assert!(
            !text.contains("171") && !text.to_lowercase().contains("ab, "),
            "{text}"
        );
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn rtp_and_rtcp_round_trip_every_suite() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 7);
            let plain = rtp_packet(1000, 0x1234_5678, 160);
            let mut buf = protect(&mut sender, &plain, false);
            assert_eq!(buf.len(), plain.len() + suite.rtp_overhead());
            assert_ne!(
                buf[12..plain.len()],
                plain[12..],
                "{suite}: payload encrypted"
            );
            let len = receiver.unprotect_rtp(&mut buf).expect("unprotect");
            assert_eq!(buf[..len], plain[..], "{suite}");

            let plain = rtcp_compound(0x1234_5678);
            let mut buf = protect(&mut sender, &plain, true);
            assert_eq!(buf.len(), plain.len() + suite.rtcp_overhead());
            let len = receiver.unprotect_rtcp(&mut buf).expect("unprotect rtcp");
            assert_eq!(buf[..len], plain[..], "{suite}");
        }
    }

    #[test]
    fn header_with_csrcs_and_extension_stays_clear_and_authenticated() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 3);
            // CC=1, X=1 with one extension word.
            let mut plain = vec![0x91, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 9];
            plain.extend_from_slice(&[0xC5; 4]);
            plain.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 1, 2, 3, 4]);
            plain.extend_from_slice(&[0x55; 40]);
            let mut buf = protect(&mut sender, &plain, false);
            assert_eq!(buf[..24], plain[..24], "{suite}: header in the clear");
            let mut tampered = buf.clone();
            tampered[20] ^= 1;
            assert_eq!(
                receiver.unprotect_rtp(&mut tampered),
                Err(SrtpError::AuthenticationFailed)
            );
            let len = receiver.unprotect_rtp(&mut buf).expect("unprotect");
            assert_eq!(buf[..len], plain[..]);
        }
    }

    /// ROC across the wrap: start at 65,530, protect 20 packets, the receiver decrypts all
    /// (their plaintexts match only if both sides used ROC 1 after the wrap).
    #[test]
    fn rollover_counter_across_the_sequence_wrap() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 11);
            for i in 0..20u16 {
                let seq = 65_530u16.wrapping_add(i);
                let plain = rtp_packet(seq, 42, 160);
                let mut buf = protect(&mut sender, &plain, false);
                let len = receiver
                    .unprotect_rtp(&mut buf)
                    .unwrap_or_else(|e| panic!("{suite} seq {seq}: {e}"));
                assert_eq!(buf[..len], plain[..]);
            }
            assert_eq!(sender.rtp_streams.get(42), Some((1 << 16) + 13));
        }
    }

    /// The sender really changes ROC at the wrap: the packet after 65,535 is protected with
    /// index 2^16, not 0 (which would reuse keystream).
    #[test]
    fn sender_index_after_the_wrap_is_not_a_reused_one() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let key = material(suite, 5);
        let mut sender = SrtpSender::new(suite, &key);
        let first = protect(&mut sender, &rtp_packet(0, 1, 32), false);
        for seq in (1..=65_535u16).step_by(4096).chain([65_535]) {
            protect(&mut sender, &rtp_packet(seq, 1, 32), false);
        }
        let wrapped = protect(&mut sender, &rtp_packet(0, 1, 32), false);
        assert_ne!(first, wrapped);
        let mut fresh = SrtpReceiver::new(suite, &key);
        let mut buf = wrapped;
        // A receiver that never saw the wrap assumes ROC 0: authentication fails.
        assert_eq!(
            fresh.unprotect_rtp(&mut buf),
            Err(SrtpError::AuthenticationFailed)
        );
    }

    #[test]
    fn reordered_packets_across_the_wrap_are_accepted_once() {
        let suite = SrtpSuite::AesCm128HmacSha1_32;
        let (mut sender, mut receiver) = pair(suite, 9);
        let packets: Vec<Vec<u8>> = (65_533u16..=65_535)
            .chain(0..3)
            .map(|seq| protect(&mut sender, &rtp_packet(seq, 8, 20), false))
            .collect();
        for i in [0, 1, 3, 2, 5, 4] {
            let mut buf = packets[i].clone();
            receiver
                .unprotect_rtp(&mut buf)
                .unwrap_or_else(|e| panic!("packet {i}: {e}"));
        }
        let mut again = packets[2].clone();
        assert_eq!(receiver.unprotect_rtp(&mut again), Err(SrtpError::Replay));
    }

    #[test]
    fn tampered_packets_fail_authentication_without_moving_state() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 1);
            let good = protect(&mut sender, &rtp_packet(10, 5, 160), false);
            for byte in [2, 20, good.len() - 1] {
                let mut bad = good.clone();
                bad[byte] ^= 0x40;
                assert_eq!(
                    receiver.unprotect_rtp(&mut bad),
                    Err(SrtpError::AuthenticationFailed),
                    "{suite} byte {byte}"
                );
            }
            let mut buf = good.clone();
            receiver
                .unprotect_rtp(&mut buf)
                .expect("the genuine one still passes");

            let good = protect(&mut sender, &rtcp_compound(5), true);
            for byte in [1, 12, good.len() - 1, good.len() - 11] {
                let mut bad = good.clone();
                bad[byte] ^= 0x01;
                assert!(
                    matches!(
                        receiver.unprotect_rtcp(&mut bad),
                        Err(SrtpError::AuthenticationFailed)
                    ),
                    "{suite} rtcp byte {byte}"
                );
            }
            let mut buf = good.clone();
            receiver
                .unprotect_rtcp(&mut buf)
                .expect("genuine rtcp passes");
        }
    }

    #[test]
    fn replays_are_refused_distinctly() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 2);
            let first = protect(&mut sender, &rtp_packet(100, 5, 160), false);
            let mut buf = first.clone();
            receiver.unprotect_rtp(&mut buf).expect("first time");
            let mut buf = first.clone();
            assert_eq!(receiver.unprotect_rtp(&mut buf), Err(SrtpError::Replay));

            // Older than the window: refused even though never seen.
            let old = protect(&mut sender, &rtp_packet(101, 5, 160), false);
            let newest = protect(&mut sender, &rtp_packet(101 + 200, 5, 160), false);
            let mut buf = newest;
            receiver.unprotect_rtp(&mut buf).expect("newest");
            let mut buf = old;
            assert_eq!(receiver.unprotect_rtp(&mut buf), Err(SrtpError::Replay));

            let rtcp = protect(&mut sender, &rtcp_compound(5), true);
            let mut buf = rtcp.clone();
            receiver.unprotect_rtcp(&mut buf).expect("first rtcp");
            let mut buf = rtcp;
            assert_eq!(receiver.unprotect_rtcp(&mut buf), Err(SrtpError::Replay));
        }
    }

    #[test]
    fn wrong_key_is_an_authentication_failure() {
        for suite in SrtpSuite::ALL {
            let mut sender = SrtpSender::new(suite, &material(suite, 1));
            let mut receiver = SrtpReceiver::new(suite, &material(suite, 2));
            let mut buf = protect(&mut sender, &rtp_packet(1, 1, 50), false);
            assert_eq!(
                receiver.unprotect_rtp(&mut buf),
                Err(SrtpError::AuthenticationFailed)
            );
        }
    }

    #[test]
    fn short_buffers_and_garbage_are_errors_not_panics() {
        for suite in SrtpSuite::ALL {
            let (mut sender, mut receiver) = pair(suite, 4);
            let plain = rtp_packet(1, 1, 10);
            let mut tight = plain.clone();
            assert!(matches!(
                sender.protect_rtp(&mut tight, plain.len()),
                Err(SrtpError::BufferTooSmall { .. })
            ));
            assert_eq!(
                sender.protect_rtp(&mut tight, 500),
                Err(SrtpError::Malformed)
            );
            for len in 0..64 {
                for fill in [0x00, 0x80, 0x9F, 0xFF] {
                    let mut garbage = vec![fill; len];
                    let _ = receiver.unprotect_rtp(&mut garbage);
                    let mut garbage = vec![fill; len];
                    let _ = receiver.unprotect_rtcp(&mut garbage);
                    let mut garbage = vec![fill; len + MAX_OVERHEAD];
                    let _ = sender.protect_rtp(&mut garbage, len);
                    let mut garbage = vec![fill; len + MAX_OVERHEAD];
                    let _ = sender.protect_rtcp(&mut garbage, len);
                }
            }
        }
    }

    #[test]
    fn unencrypted_srtcp_is_refused() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut sender, mut receiver) = pair(suite, 6);
        // Build an E=0 packet the way a peer with UNENCRYPTED_SRTCP would: plain body,
        // index word without E, tag over both.
        let plain = rtcp_compound(3);
        let mut buf = plain.clone();
        buf.extend_from_slice(&0u32.to_be_bytes());
        let SessionCipher::AesCm(cm) = &sender.keys.rtcp else {
            unreachable!("an AES-CM suite")
        };
        let mut tag = [0; 10];
        cm.write_tag(&buf, None, &mut tag);
        buf.extend_from_slice(&tag);
        assert_eq!(receiver.unprotect_rtcp(&mut buf), Err(SrtpError::Malformed));
        let _ = protect(&mut sender, &plain, true);
    }
}
