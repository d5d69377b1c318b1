//! What SRTP costs per packet sent: protecting a 172-byte PCMU packet (12-byte header, 160
//! bytes of payload) in place, per suite, and for comparison unprotecting it.
//! A measurement, not a test: `cargo run --release --example srtp_cost`.

use std::hint::black_box;
use std::time::Instant;

use mohd::rtp::srtp::{MAX_OVERHEAD, SrtpKeyMaterial, SrtpReceiver, SrtpSender, SrtpSuite};

/// 200,000 packets: 1,000 calls for 4 s at 50 packets/s.
const PACKETS: u32 = 200_000;
const PCMU_PACKET: usize = 12 + 160;
/// Packets kept to time unprotecting.
const UNPROTECTED: u32 = 20_000;

fn main() {
    println!("suite                      protect ns/packet  unprotect ns/packet");
    for suite in SrtpSuite::ALL {
        let key_bytes: Vec<u8> = (0..suite.key_material_len() as u8).collect();
        let key = SrtpKeyMaterial::from_bytes(suite, &key_bytes).expect("suite length");
        let mut sender = SrtpSender::new(suite, &key);
        let mut receiver = SrtpReceiver::new(suite, &key);
        let mut buf = [0u8; PCMU_PACKET + MAX_OVERHEAD];
        // Timed as a whole loop (a clock read per packet would cost a tenth of what is
        // measured); rewriting the packet each time, as the fan-out does, is in the figure.
        let started = Instant::now();
        for n in 0..PACKETS {
            write_pcmu_packet(&mut buf, n);
            black_box(
                sender
                    .protect_rtp(black_box(&mut buf), PCMU_PACKET)
                    .expect("protect"),
            );
        }
        let protect_ns = started.elapsed().as_nanos();
        let mut sender = SrtpSender::new(suite, &key);
        let mut protected: Vec<Vec<u8>> = (0..UNPROTECTED)
            .map(|n| {
                write_pcmu_packet(&mut buf, n);
                let len = sender.protect_rtp(&mut buf, PCMU_PACKET).expect("protect");
                buf[..len].to_vec()
            })
            .collect();
        let started = Instant::now();
        for packet in &mut protected {
            black_box(
                receiver
                    .unprotect_rtp(black_box(packet))
                    .expect("unprotect"),
            );
        }
        let unprotect_ns = started.elapsed().as_nanos();
        println!(
            "{:<26} {:>17.0}  {:>19.0}",
            suite.sdp_name(),
            protect_ns as f64 / f64::from(PACKETS),
            unprotect_ns as f64 / f64::from(UNPROTECTED)
        );
    }
}

/// A PCMU packet with sequence number `n` (wrapping, so the ROC advances too).
fn write_pcmu_packet(buf: &mut [u8], n: u32) {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&n.wrapping_mul(160).to_be_bytes());
    buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    buf[12..PCMU_PACKET].fill(0xFF);
}
