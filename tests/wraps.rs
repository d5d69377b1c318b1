//! "Months, not days": every counter that wraps or grows over a long run, driven through the
//! public API on a virtual clock (no sleeping, no sockets).
//!
//! - the RTP timestamp over 7 days of one call (it wraps every 6.2 days at 8 kHz), with the
//!   fan-out's drift accounting saying "no drift" at the end; across the wrap at each codec's
//!   clock (G.722's 8 kHz, Opus's 48 kHz), and an Opus call held over a day (it wraps every
//!   24.9 hours at 48 kHz);
//! - the media clock 500 days after its epoch (tick numbers beyond 2^32, sample positions far
//!   beyond 2^32): exact deadlines, exact loop positions;
//! - RTCP sender reports across the NTP era boundary (2036-02-07 06:28:16 UTC), including the
//!   middle 32 bits used in LSR/DLSR;
//! - 100,000 dialog tags from the SIP endpoint: unique and well-formed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mohd::clock::{MediaClock, Seq16, Ts32};
use mohd::codec::Codec;
use mohd::rtp::fanout::{CallMedia, Fanout, PacketKind, PayloadSource, Playback};
use mohd::rtp::packet::{NtpTime, RtcpPacket, parse_rtcp, parse_rtp};
use mohd::sip::sdp::{Direction, MediaParams};

/// A channel that writes nothing and remembers the last loop position asked for.
struct Probe {
    last_start: AtomicU64,
}

impl PayloadSource for Probe {
    fn name(&self) -> &str {
        "default"
    }
    fn len_ticks(&self) -> u64 {
        u64::MAX
    }
    fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, _out: &mut [u8]) -> usize {
        self.last_start.store(tick * 80, Ordering::Relaxed);
        match codec {
            Codec::Opus => 97,
            _ => (ticks * 80) as usize,
        }
    }
}

fn probe() -> Arc<Probe> {
    Arc::new(Probe {
        last_start: AtomicU64::new(0),
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

fn media(call: u64, ptime_ms: u32, channel: &Arc<Probe>) -> CallMedia<Probe> {
    codec_media(call, Codec::Pcmu, ptime_ms, channel)
}

fn codec_params(codec: Codec, ptime_ms: u32, direction: Direction) -> MediaParams {
    MediaParams {
        codec,
        payload_type: codec.payload_type(),
        ptime_ms,
        remote_rtp: addr(4000),
        remote_rtcp: Some(addr(4001)),
        direction,
        peer_opus: None,
        srtp: None,
    }
}

fn codec_media(call: u64, codec: Codec, ptime_ms: u32, channel: &Arc<Probe>) -> CallMedia<Probe> {
    CallMedia {
        call,
        params: codec_params(codec, ptime_ms, Direction::SendOnly),
        channel: Arc::clone(channel),
        playback: Playback::Shared,
        cname: "mohd-wraps@test".into(),
        ssrc: None,
    }
}

/// The RTP timestamp an SR due `since` the call's first packet must carry at `rate` Hz.
fn sr_units(since: Duration, rate: u32) -> u64 {
    (since.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

/// A fan-out whose media clock starts now, its wall clock in 2027; returns it with its
/// epoch and wall-clock epoch.
fn fanout(seed: u64) -> (Fanout<Probe>, Instant, SystemTime) {
    let epoch = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    (Fanout::new(MediaClock::new(epoch), seed, wall), epoch, wall)
}

/// Drives `f` on a virtual clock until `end`, waking at every deadline, sending everything at
/// its deadline; calls `on` for each datagram with its bytes.
fn drive(
    f: &mut Fanout<Probe>,
    end: Instant,
    buf: &mut [u8],
    mut on: impl FnMut(mohd::rtp::fanout::Transmit, &[u8]),
) {
    while let Some(next) = f.poll_timeout() {
        if next > end {
            break;
        }
        f.handle_timeout(next);
        while let Some(t) = f.poll_transmit(next, buf) {
            assert_eq!(t.due, next, "a packet left off its deadline");
            on(t, &buf[..t.len]);
        }
    }
}

#[test]
fn rtp_timestamps_stay_continuous_over_seven_days() {
    let (mut f, epoch, wall) = fanout(1);
    let ch = probe();
    // 60 ms packets keep the run short (10 million packets); the timestamp still wraps, and
    // starting 10 s before the wrap makes it wrap early, then again after 6.2 days.
    let ts0 = u32::MAX - 80_000 + 1;
    f.add_call_with_start(epoch, media(1, 60, &ch), 42, 65_000, ts0);
    let week = Duration::from_secs(7 * 86_400);
    let mut buf = vec![0u8; 2048];
    let mut n = 0u64;
    let mut ts_wraps = 0u32;
    let mut seq_wraps = 0u32;
    let mut prev: Option<(Seq16, Ts32)> = None;
    let mut sr_count = 0u64;
    drive(&mut f, epoch + week, &mut buf, |t, bytes| match t.kind {
        PacketKind::Rtp => {
            let h = parse_rtp(bytes).expect("RTP").header;
            // Packet n is for tick 6n: ts = ts0 + 80 × 6n, modulo 2^32, exactly.
            let expected = Ts32(ts0).add_samples(n * 6 * 80);
            assert_eq!(h.timestamp, expected, "packet {n}");
            assert_eq!(h.seq, Seq16(65_000).wrapping_add(n as u16), "packet {n}");
            assert_eq!(t.due, epoch + Duration::from_millis(60 * n), "packet {n}");
            if let Some((s, ts)) = prev {
                assert_eq!(h.timestamp.distance_from(ts), 480);
                assert_eq!(h.seq.distance_from(s), 1);
                ts_wraps += u32::from(h.timestamp.get() < ts.get());
                seq_wraps += u32::from(h.seq.get() < s.get());
            }
            assert_eq!(h.marker, n == 0);
            prev = Some((h.seq, h.timestamp));
            n += 1;
        }
        PacketKind::Rtcp => {
            // Each report's RTP timestamp names the same instant as its NTP time.
            let Some(Ok(RtcpPacket::SenderReport { sr, .. })) = parse_rtcp(bytes).next() else {
                panic!("not an SR");
            };
            let since = t.due - epoch;
            let samples = (since.as_nanos() * 8000 / 1_000_000_000) as u64;
            assert_eq!(sr.rtp_ts, Ts32(ts0).add_samples(samples));
            assert_eq!(sr.ntp, NtpTime::from_system_time(wall + since));
            sr_count += 1;
        }
    });
    assert_eq!(n, 7 * 86_400 * 1000 / 60 + 1);
    assert_eq!(
        ts_wraps, 2,
        "4.84e9 samples from 10 s before a wrap cross it twice"
    );
    assert!(seq_wraps > 150, "{seq_wraps}");
    assert!(sr_count > 7 * 86_400 / 8, "{sr_count}");
    let c = f.counters(1).expect("call");
    assert_eq!(c.packets_sent, n);
    assert_eq!((c.late_packets, c.skipped_packets), (0, 0));
    // The drift accounting followed the timestamps across both wraps: none.
    assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 0));
    assert_eq!(f.max_abs_drift_ns(), 0);
    // The loop position is the tick's sample, far past 2^32.
    assert_eq!(
        ch.last_start.load(Ordering::Relaxed),
        (n - 1) * 6 * 80,
        "loop position of the last packet"
    );
}

#[test]
fn each_codecs_clock_crosses_the_timestamp_wrap() {
    for (codec, units) in [(Codec::G722, 160u64), (Codec::Opus, 960)] {
        let (mut f, epoch, _) = fanout(4);
        let ch = probe();
        // 10 s before the wrap at this codec's clock; 30 s of 20 ms packets.
        let rate = codec.clock_rate();
        let ts0 = u32::MAX - rate * 10 + 1;
        f.add_call_with_start(epoch, codec_media(1, codec, 20, &ch), 42, 65_000, ts0);
        let mut buf = vec![0u8; 2048];
        let (mut n, mut wraps, mut srs) = (0u64, 0, 0);
        let mut prev: Option<Ts32> = None;
        drive(
            &mut f,
            epoch + Duration::from_secs(30),
            &mut buf,
            |t, bytes| match t.kind {
                PacketKind::Rtp => {
                    let h = parse_rtp(bytes).expect("RTP").header;
                    assert_eq!(
                        h.timestamp,
                        Ts32(ts0).add_samples(n * units),
                        "{codec:?} {n}"
                    );
                    assert_eq!(h.seq, Seq16(65_000).wrapping_add(n as u16));
                    assert_eq!(h.payload_type, codec.payload_type());
                    if let Some(p) = prev {
                        assert_eq!(h.timestamp.distance_from(p), units as i32);
                        wraps += u32::from(h.timestamp.get() < p.get());
                    }
                    prev = Some(h.timestamp);
                    n += 1;
                }
                PacketKind::Rtcp => {
                    let Some(Ok(RtcpPacket::SenderReport { sr, .. })) = parse_rtcp(bytes).next()
                    else {
                        panic!("not an SR");
                    };
                    let want = Ts32(ts0).add_samples(sr_units(t.due - epoch, rate));
                    assert_eq!(sr.rtp_ts, want, "{codec:?}");
                    srs += 1;
                }
            },
        );
        assert_eq!((n, wraps), (1501, 1), "{codec:?}");
        assert!(srs >= 3, "{codec:?}: {srs}");
        let c = f.counters(1).expect("call");
        assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 0), "{codec:?}");
    }
}

#[test]
fn an_opus_call_held_for_a_day_wraps_and_keeps_its_clock() {
    let (mut f, epoch, _) = fanout(5);
    let ch = probe();
    let ts0 = 123_456;
    f.add_call_with_start(epoch, codec_media(1, Codec::Opus, 20, &ch), 7, 100, ts0);
    let mut buf = vec![0u8; 2048];
    let mut ts = Vec::new();
    let mut check = |t: mohd::rtp::fanout::Transmit, bytes: &[u8]| {
        if t.kind == PacketKind::Rtp {
            let h = parse_rtp(bytes).expect("RTP").header;
            let tick = (t.due - epoch).as_millis() as u64 / 10;
            assert_eq!(
                h.timestamp,
                Ts32(ts0).add_samples(tick * 480),
                "tick {tick}"
            );
            ts.push((tick, h.seq, h.timestamp, h.marker));
        } else if let Some(Ok(RtcpPacket::SenderReport { sr, .. })) = parse_rtcp(bytes).next() {
            let want = Ts32(ts0).add_samples(sr_units(t.due - epoch, 48_000));
            assert_eq!(sr.rtp_ts, want);
        }
    };
    drive(
        &mut f,
        epoch + Duration::from_secs(10),
        &mut buf,
        &mut check,
    );
    // Hold (inactive) for a day and an hour: 25 h at 48 kHz is 4.32e9 units, past 2^32.
    // The driver jumps over the day (the stall rule skips what an inactive call would not
    // send anyway), then the call resumes on its clock.
    assert!(f.update_call(1, codec_params(Codec::Opus, 20, Direction::Inactive)));
    let day = epoch + Duration::from_secs(25 * 3600);
    f.handle_timeout(day);
    while let Some(t) = f.poll_transmit(day, &mut buf) {
        assert_eq!(t.kind, PacketKind::Rtcp);
    }
    assert!(f.update_call(1, codec_params(Codec::Opus, 20, Direction::SendOnly)));
    drive(&mut f, day + Duration::from_secs(10), &mut buf, &mut check);
    let resumed = ts.iter().position(|p| p.0 > 1000).expect("resumed");
    let (before, after) = (ts[resumed - 1], ts[resumed]);
    assert_eq!(after.1.distance_from(before.1), 1, "sequence continues");
    assert!(after.3, "marker on resuming");
    // The day is more than the 32-bit wheel: a plain distance reads 0.52 s instead of 25 h
    // (each timestamp above was checked against the tick), and the drift meter, which
    // unwraps from the tick, still reads no drift below.
    let units = (after.0 - before.0) * 480;
    assert!(units > 1 << 32);
    assert_eq!(
        i64::from(after.2.distance_from(before.2)),
        units as i64 - (1i64 << 32)
    );
    assert_eq!(ts.len() - resumed, 500);
    let c = f.counters(1).expect("call");
    assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 0), "{c:?}");
}

#[test]
fn the_media_clock_is_exact_five_hundred_days_on() {
    let epoch = Instant::now();
    let clock = MediaClock::new(epoch);
    let days = 500u64;
    let ticks = days * 86_400 * 100;
    assert!(ticks > u64::from(u32::MAX), "beyond 32-bit tick numbers");
    let now = epoch + Duration::from_secs(days * 86_400);
    assert_eq!(clock.tick_at(now), ticks);
    assert_eq!(clock.tick_deadline(ticks), now);
    assert_eq!(clock.tick_at(now - Duration::from_nanos(1)), ticks - 1);
    assert_eq!(
        clock.tick_at_or_after(now + Duration::from_nanos(1)),
        ticks + 1
    );
    assert_eq!(
        clock.tick_deadline(ticks + 1) - clock.tick_deadline(ticks),
        Duration::from_millis(10)
    );
    // A call joining 500 days after the epoch: exact 20 ms deadlines, the loop position of its
    // tick (3.5e11 samples), timestamps 160 apart, no drift.
    let mut f = Fanout::new(clock, 2, SystemTime::now());
    let ch = probe();
    f.add_call(now + Duration::from_millis(3), media(1, 20, &ch));
    let mut buf = vec![0u8; 2048];
    let mut k = 0u64;
    let mut prev: Option<Ts32> = None;
    drive(
        &mut f,
        now + Duration::from_secs(10),
        &mut buf,
        |t, bytes| {
            if t.kind != PacketKind::Rtp {
                return;
            }
            let first_tick = ticks + 2;
            assert_eq!(t.due, clock.tick_deadline(first_tick + 2 * k));
            assert_eq!(
                ch.last_start.load(Ordering::Relaxed),
                (first_tick + 2 * k) * 80
            );
            let ts = parse_rtp(bytes).expect("RTP").header.timestamp;
            if let Some(p) = prev {
                assert_eq!(ts.distance_from(p), 160);
            }
            prev = Some(ts);
            k += 1;
        },
    );
    assert_eq!(k, 500);
    assert_eq!(f.counters(1).expect("call").max_abs_drift_ns, 0);
}

/// Unix seconds of the NTP era-0 → era-1 wrap: 2036-02-07 06:28:16 UTC.
const NTP_ERA_WRAP_UNIX: u64 = (1u64 << 32) - 2_208_988_800;

#[test]
fn sender_reports_cross_the_ntp_era_boundary() {
    let epoch = Instant::now();
    let era_wrap = UNIX_EPOCH + Duration::from_secs(NTP_ERA_WRAP_UNIX);
    // The media clock's epoch is 60 s before the NTP wrap; run 120 s.
    let wall = era_wrap - Duration::from_secs(60);
    let mut f = Fanout::new(MediaClock::new(epoch), 3, wall);
    let ch = probe();
    f.add_call(epoch, media(1, 20, &ch));
    let mut buf = vec![0u8; 2048];
    let mut reports: Vec<(Instant, NtpTime, Ts32)> = Vec::new();
    drive(
        &mut f,
        epoch + Duration::from_secs(120),
        &mut buf,
        |t, bytes| {
            if t.kind == PacketKind::Rtcp
                && let Some(Ok(RtcpPacket::SenderReport { sr, .. })) = parse_rtcp(bytes).next()
            {
                reports.push((t.due, sr.ntp, sr.rtp_ts));
            }
        },
    );
    assert!(reports.len() >= 15, "{}", reports.len());
    let before = reports
        .iter()
        .filter(|r| r.1.seconds() > u32::MAX - 100)
        .count();
    let after = reports.iter().filter(|r| r.1.seconds() < 100).count();
    assert!(before > 0 && after > 0, "reports on both sides of the wrap");
    assert_eq!(before + after, reports.len());
    for w in reports.windows(2) {
        let (a, b) = (w[0], w[1]);
        let gap = b.0 - a.0;
        // The middle 32 bits (LSR/DLSR units of 2^-16 s) advance by the gap, across the wrap.
        let compact = b.1.compact().wrapping_sub(a.1.compact());
        let want = (gap.as_nanos() * 65_536 / 1_000_000_000) as u32;
        assert!(compact.abs_diff(want) <= 1, "{compact} vs {want}");
        // The full 64-bit value too, modulo 2^64.
        let full = b.1.0.wrapping_sub(a.1.0);
        let want = (gap.as_nanos() * (1u128 << 32) / 1_000_000_000) as u64;
        assert!(full.abs_diff(want) <= 2, "{full} vs {want}");
        // And the RTP timestamps advance with the same instants.
        let samples = (gap.as_nanos() * 8000 / 1_000_000_000) as i32;
        assert!((b.2.distance_from(a.2) - samples).abs() <= 1);
    }
    // A receiver near the wrap recovers the right wall-clock time from either era.
    for (due, ntp, _) in &reports {
        let wall_at = wall + (*due - epoch);
        let back = ntp.to_system_time_near(era_wrap);
        let err = back
            .duration_since(wall_at)
            .unwrap_or_else(|e| e.duration());
        assert!(err <= Duration::from_nanos(1), "{err:?}");
    }
}

mod tags {
    use super::*;
    use mohd::config::Config;
    use mohd::sip::endpoint::{AccessPolicy, Endpoint, EndpointConfig, Event, Output};

    const PEER: &str = "192.0.2.50:5070";
    const LOCAL: &str = "192.0.2.10:5060";

    fn request(method: &str, i: u32, cseq: u32, to_tag: Option<&str>, body: &str) -> String {
        let to = match to_tag {
            Some(t) => format!("<sip:moh@192.0.2.10>;tag={t}"),
            None => "<sip:moh@192.0.2.10>".to_string(),
        };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bK{method}{i}x{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=f{i}\r\nTo: {to}\r\nCall-ID: wrap-{i}@192.0.2.50\r\nCSeq: {cseq} {method}\r\nContact: <sip:pbx@{PEER}>\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_hundred_thousand_dialog_tags_are_unique_and_well_formed() {
        let config = EndpointConfig {
            access: AccessPolicy {
                rate_per_source: 0,
                ..AccessPolicy::default()
            },
            max_transactions: 1_000_000,
            ..EndpointConfig::default()
        };
        let mut ep = Endpoint::new(config, Config::embedded_default().dialplan, 11);
        let (peer, local): (SocketAddr, SocketAddr) =
            (PEER.parse().expect("peer"), LOCAL.parse().expect("local"));
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let mut now = Instant::now();
        let mut tags = HashSet::new();
        const CALLS: u32 = 100_000;
        for i in 0..CALLS {
            now += Duration::from_millis(100);
            ep.handle_timeout(now);
            ep.handle_receive(
                now,
                peer,
                local,
                request("INVITE", i, 1, None, sdp).as_bytes(),
            );
            let mut tag = None;
            while let Some(o) = ep.poll_output() {
                match o {
                    Output::Event(Event::IncomingCall { call, .. }) => {
                        ep.accept(now, call, "192.0.2.10:40000".parse().expect("rtp"));
                    }
                    Output::Transmit(t) if t.data.starts_with(b"SIP/2.0 200") => {
                        // The To header's tag (the parser is tested elsewhere; this is
                        // 100,000 times in a debug build).
                        let text = String::from_utf8_lossy(&t.data);
                        let to = text
                            .lines()
                            .find(|l| l.starts_with("To:") || l.starts_with("t:"))
                            .expect("To");
                        let t = to.split(";tag=").nth(1).expect("a To tag");
                        tag = Some(t.split([';', ' ']).next().unwrap_or(t).to_string());
                    }
                    Output::Transmit(_) => {}
                    Output::Event(_) => {}
                }
            }
            let tag = tag.unwrap_or_else(|| panic!("call {i}: no 200 OK"));
            assert!(
                tag.len() >= 8
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "malformed tag {tag:?}"
            );
            assert!(tags.insert(tag.clone()), "tag {tag} repeated at call {i}");
            // ACK, then BYE: the call ends, so calls do not pile up.
            for (method, cseq, body) in [("ACK", 1, ""), ("BYE", 2, "")] {
                ep.handle_receive(
                    now,
                    peer,
                    local,
                    request(method, i, cseq, Some(&tag), body).as_bytes(),
                );
            }
            while ep.poll_output().is_some() {}
        }
        assert_eq!(tags.len(), CALLS as usize);
        assert_eq!(ep.active_calls(), 0);
    }
}
