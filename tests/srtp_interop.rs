//! SRTP interop against an independent implementation: libsrtp, through PyPI `pylibsrtp`
//! (`scripts/setup-deps` installs it), driven by `tests/srtp/pylibsrtp_peer.py` over
//! stdin/stdout. mohd's side is `mohd::rtp::srtp`, called directly.
//!
//! For each suite both sides speak: libsrtp decrypts what mohd protects, mohd decrypts what
//! libsrtp protects, RTP across the sequence wrap (from 65,530, so both ROCs must go to 1
//! together) and RTCP compounds (SR + SDES, and a BYE). SRTP is deterministic, so the two
//! implementations' protected RTP must also be byte-identical.

use std::io::Write;
use std::process::{Command, Stdio};

use mohd::rtp::srtp::{
    MAX_OVERHEAD, SrtpError, SrtpKeyMaterial, SrtpReceiver, SrtpSender, SrtpSuite,
};
use serde_json::{Value, json};

const SSRC: u32 = 0x4D4F_4844;
const FIRST_SEQ: u16 = 65_530;
const PACKETS: u16 = 20;

type Unprotect = fn(&mut SrtpReceiver, &mut [u8]) -> Result<usize, SrtpError>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the helper"))
        .collect()
}

fn key(suite: SrtpSuite) -> SrtpKeyMaterial {
    let bytes: Vec<u8> = (0..suite.key_material_len() as u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    SrtpKeyMaterial::from_bytes(suite, &bytes).expect("suite length")
}

/// A PCMU-sized RTP packet: 12-byte header and 160 bytes of payload.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, if seq == FIRST_SEQ { 0x80 } else { 0x00 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..160u32).map(|i| (i * 7 + u32::from(seq)) as u8));
    p
}

fn rtp_run() -> Vec<Vec<u8>> {
    (0..PACKETS)
        .map(|i| rtp(FIRST_SEQ.wrapping_add(i)))
        .collect()
}

/// SR (no report blocks) + SDES CNAME, and SR + SDES + BYE: what the fan-out sends.
fn rtcp_run() -> Vec<Vec<u8>> {
    let sr = |n: u8| {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend_from_slice(&[n; 20]);
        p
    };
    let sdes = {
        let mut p = vec![0x81, 202, 0, 4];
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend_from_slice(&[1, 6]);
        p.extend_from_slice(b"mohd-1");
        p.extend_from_slice(&[0, 0, 0, 0]);
        p
    };
    let bye = {
        let mut p = vec![0x81, 203, 0, 1];
        p.extend_from_slice(&SSRC.to_be_bytes());
        p
    };
    vec![
        [sr(1), sdes.clone()].concat(),
        [sr(2), sdes.clone()].concat(),
        [sr(3), sdes, bye].concat(),
    ]
}

/// Runs one job through libsrtp; the reply's (rtp, rtcp) packets.
fn libsrtp(
    op: &str,
    suite: SrtpSuite,
    rtp: &[Vec<u8>],
    rtcp: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/srtp/pylibsrtp_peer.py");
    let job = json!({
        "op": op,
        "suite": suite.sdp_name(),
        "key": hex(key(suite).as_bytes()),
        "rtp": rtp.iter().map(|p| hex(p)).collect::<Vec<_>>(),
        "rtcp": rtcp.iter().map(|p| hex(p)).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .arg(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(job.to_string().as_bytes())
        .expect("job written");
    let out = child.wait_with_output().expect("helper finishes");
    assert!(
        out.status.success(),
        "the libsrtp helper failed (is pylibsrtp installed? scripts/setup-deps installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("helper replies JSON");
    if let Some(error) = reply.get("error") {
        panic!("{suite} {op}: libsrtp refused {error}");
    }
    let packets = |kind: &str| -> Vec<Vec<u8>> {
        reply[kind]
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| unhex(p.as_str().expect("hex string")))
            .collect()
    };
    (packets("rtp"), packets("rtcp"))
}

/// Protects each packet in one reused buffer, as the fan-out does.
fn protect_all(sender: &mut SrtpSender, packets: &[Vec<u8>], rtcp: bool) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 1500];
    let mut protected = Vec::new();
    for plain in packets {
        buf[..plain.len()].copy_from_slice(plain);
        let protect = if rtcp {
            SrtpSender::protect_rtcp
        } else {
            SrtpSender::protect_rtp
        };
        let len = protect(sender, &mut buf[..plain.len() + MAX_OVERHEAD], plain.len());
        protected.push(buf[..len.expect("protect")].to_vec());
    }
    protected
}

#[test]
fn libsrtp_decrypts_what_mohd_protects_across_the_wrap() {
    for suite in SrtpSuite::ALL {
        let mut sender = SrtpSender::new(suite, &key(suite));
        let rtp = protect_all(&mut sender, &rtp_run(), false);
        let rtcp = protect_all(&mut sender, &rtcp_run(), true);
        let (rtp_plain, rtcp_plain) = libsrtp("unprotect", suite, &rtp, &rtcp);
        assert_eq!(rtp_plain, rtp_run(), "{suite}: RTP as libsrtp decrypts it");
        assert_eq!(
            rtcp_plain,
            rtcp_run(),
            "{suite}: RTCP as libsrtp decrypts it"
        );
    }
}

#[test]
fn mohd_decrypts_what_libsrtp_protects_across_the_wrap() {
    for suite in SrtpSuite::ALL {
        let (rtp, rtcp) = libsrtp("protect", suite, &rtp_run(), &rtcp_run());
        let mut receiver = SrtpReceiver::new(suite, &key(suite));
        let runs = [
            (
                "RTP",
                &rtp,
                rtp_run(),
                SrtpReceiver::unprotect_rtp as Unprotect,
            ),
            ("RTCP", &rtcp, rtcp_run(), SrtpReceiver::unprotect_rtcp),
        ];
        for (kind, protected, plain, unprotect) in runs {
            for (i, (packet, plain)) in protected.iter().zip(plain).enumerate() {
                let mut buf = packet.clone();
                let len = unprotect(&mut receiver, &mut buf)
                    .unwrap_or_else(|e| panic!("{suite} {kind} packet {i}: {e}"));
                assert_eq!(buf[..len], plain[..], "{suite} {kind} packet {i}");
            }
        }

        // What libsrtp protected, replayed or tampered with, is refused, each distinctly.
        let mut again = rtp[PACKETS as usize - 1].clone();
        assert_eq!(receiver.unprotect_rtp(&mut again), Err(SrtpError::Replay));
        let mut again = rtcp[0].clone();
        assert_eq!(receiver.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
        let mut fresh = SrtpReceiver::new(suite, &key(suite));
        let mut tampered = rtcp[1].clone();
        tampered[12] ^= 0x20;
        assert_eq!(
            fresh.unprotect_rtcp(&mut tampered),
            Err(SrtpError::AuthenticationFailed)
        );

        // SRTP has no randomness: both implementations give the same bytes.
        let mut sender = SrtpSender::new(suite, &key(suite));
        assert_eq!(protect_all(&mut sender, &rtp_run(), false), rtp, "{suite}");
    }
}
