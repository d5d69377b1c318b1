//! Mid-call changes over real loopback sockets, checked where the RTP lands: hold (sendonly,
//! inactive) pauses the stream, unhold resumes it, a new port re-targets it, and the RTP
//! sequence numbers continue across all of it. UPDATE does the same without a re-INVITE. A
//! codec switch (G.722 → Opus → PCMU) keeps one RTP stream and the music (RFC 7160 §4.3).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use mohd::channel::compose::Composition;
use mohd::channel::encoded::{CodecPlan, Wideband, render_encoded};
use mohd::channel::{ChannelRender, MusicSource};
use mohd::codec::Codec;
use mohd::config::Config;
use mohd::rtp::packet::parse_rtp;

/// Packets (seq, payload type) arriving on `sock` during `window`.
fn collect(sock: &UdpSocket, window: Duration) -> Vec<(u16, u8)> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(p) = parse_rtp(&buf[..n])
        {
            out.push((p.header.seq.get(), p.header.payload_type));
        }
    }
    out
}

fn drain(sock: &UdpSocket) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
}

fn assert_contiguous(seqs: &[(u16, u8)]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence gap: {:?}", w);
    }
}

#[test]
fn hold_unhold_and_retarget_with_reinvite() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    let a_port = a.local_addr().unwrap().port();

    let before = collect(&a, Duration::from_millis(500));
    assert!(before.len() >= 20, "music flows: {}", before.len());
    assert_contiguous(&before);

    // Hold: the PBX goes sendonly; we answer inactive and stop sending.
    let r = call
        .request("INVITE", &RawCall::offer(a_port, "sendonly"), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("a=inactive"),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(100));
    drain(&a);
    let held = collect(&a, Duration::from_millis(500));
    assert!(held.is_empty(), "no RTP while held: {} packets", held.len());

    // Unhold: sendrecv again; the stream resumes with the next sequence number.
    let r = call
        .request("INVITE", &RawCall::offer(a_port, "sendrecv"), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("a=sendonly"),
        "{r}"
    );
    let resumed = collect(&a, Duration::from_millis(500));
    assert!(resumed.len() >= 20);
    assert_contiguous(&resumed);
    let last_before = before.last().unwrap().0;
    assert!(
        resumed[0].0.wrapping_sub(last_before) < 100,
        "sequence continues after hold ({last_before} -> {})",
        resumed[0].0
    );

    // Re-target to a new port: RTP moves there, sequence numbers continue without a gap.
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_port = b.local_addr().unwrap().port();
    let r = call
        .request("INVITE", &RawCall::offer(b_port, "sendrecv"), "")
        .unwrap();
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let on_b = collect(&b, Duration::from_millis(500));
    assert!(on_b.len() >= 20, "RTP moved to the new port");
    assert_contiguous(&on_b);
    let tail_a = collect(&a, Duration::from_millis(300));
    assert!(
        tail_a.len() <= 2,
        "RTP left the old port ({} packets)",
        tail_a.len()
    );
}

#[test]
fn update_changes_the_target_too() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    assert!(!collect(&a, Duration::from_millis(300)).is_empty());
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_port = b.local_addr().unwrap().port();
    let r = call
        .request("UPDATE", &RawCall::offer(b_port, "sendrecv"), "")
        .unwrap();
    assert!(r.starts_with("SIP/2.0 200") && r.contains("m=audio"), "{r}");
    let on_b = collect(&b, Duration::from_millis(500));
    assert!(on_b.len() >= 20);
    assert_contiguous(&on_b);
}

#[test]
fn codec_change_switches_at_once() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    let port = a.local_addr().unwrap().port();
    assert!(
        collect(&a, Duration::from_millis(300))
            .iter()
            .all(|p| p.1 == 0)
    );
    let pcma = format!(
        "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    let r = call.request("INVITE", &pcma, "").unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("RTP/AVP 8"),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(60));
    drain(&a);
    let after = collect(&a, Duration::from_millis(300));
    assert!(
        !after.is_empty() && after.iter().all(|p| p.1 == 8),
        "{after:?}"
    );
    assert_contiguous(&after);
}

/// One RTP packet as it arrived.
struct Heard {
    at: Instant,
    header: mohd::rtp::packet::RtpHeader,
    payload: Vec<u8>,
}

/// Captures every RTP packet arriving on `sock` until `stop` is set.
fn capture(
    sock: UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Heard>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(p) = parse_rtp(&buf[..n])
            {
                out.push(Heard {
                    at: Instant::now(),
                    header: p.header,
                    payload: p.payload.to_vec(),
                });
            }
        }
        out
    })
}

/// An offer of one codec on payload type `pt`.
fn offer_of(port: u16, version: u32, pt: u8, rtpmap: &str, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n{extra}a=sendrecv\r\n"
    )
}

/// The best normalised correlation of `chunk` with `reference` at any circular lag: a coarse
/// search on every `step`-th sample (the test music is below 1 kHz, so picking samples
/// aliases nothing that matters), refined at full rate around the coarse best. Returns the
/// correlation and the lag in samples.
fn best_correlation(chunk: &[i16], reference: &[i16], step: usize) -> (f64, usize) {
    let n = reference.len();
    let corr_at = |lag: usize, step: usize| {
        let (mut dot, mut c_energy, mut r_energy) = (0.0f64, 0.0f64, 0.0f64);
        for k in (0..chunk.len()).step_by(step) {
            let (x, y) = (f64::from(chunk[k]), f64::from(reference[(lag + k) % n]));
            dot += x * y;
            c_energy += x * x;
            r_energy += y * y;
        }
        dot / (c_energy.sqrt() * r_energy.sqrt()).max(1e-9)
    };
    let coarse = (0..n)
        .step_by(step)
        .map(|lag| (corr_at(lag, step), lag))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best });
    (0..4 * step)
        .map(|d| (coarse.1 + n + d - 2 * step) % n)
        .map(|lag| (corr_at(lag, 1), lag))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

/// Decodes payloads of one codec, in order, with a fresh decoder (as a phone's decoder
/// starts again at a payload type change).
fn decode<'a>(codec: Codec, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<i16> {
    let mut pcm = Vec::new();
    let mut frame = vec![0i16; 5760];
    let mut g722 = mohd::codec::g722::G722Decoder::new();
    let mut opus = mohd::codec::opus::OpusDecoder::new(48_000).unwrap();
    for payload in payloads {
        let n = match codec {
            Codec::G722 => g722.decode(payload, &mut frame),
            Codec::Opus => opus.decode(payload, &mut frame).unwrap(),
            _ => {
                codec.decode(payload, &mut frame[..payload.len()]);
                payload.len()
            }
        };
        pcm.extend_from_slice(&frame[..n]);
    }
    pcm
}

/// The channel's loop as the server serves it to `codec`, decoded: the same render, the same
/// encodings (rendering and encoding are deterministic), 20 ms packets from tick 0.
fn served_loop(render: &ChannelRender, codec: Codec) -> Vec<i16> {
    let mut buf = vec![0u8; 2048];
    let packets: Vec<Vec<u8>> = (0..render.frames())
        .map(|frame| {
            let n = render.fill_packet(codec, frame * 2, 2, &mut buf);
            assert!(n > 0, "{codec:?} frame {frame}");
            buf[..n].to_vec()
        })
        .collect();
    decode(codec, packets.iter().map(Vec::as_slice))
}

/// The 10 ms ticks from `a` to `b` across a switch from `old` to `new`: the timestamp went on
/// at the old clock, then the new one (RFC 7160 §4.3), for a whole number of ticks in all.
fn ticks_across(a: &Heard, b: &Heard, old: Codec, new: Codec) -> Option<u64> {
    let d = u64::from(
        b.header
            .timestamp
            .get()
            .wrapping_sub(a.header.timestamp.get()),
    );
    let (u_old, u_new) = (
        u64::from(old.clock_rate() / 100),
        u64::from(new.clock_rate() / 100),
    );
    (1..=3u64)
        .find(|&ticks| (0..=ticks).any(|on_old| on_old * u_old + (ticks - on_old) * u_new == d))
}

#[test]
fn codec_switches_g722_to_opus_to_pcmu_keep_the_stream_and_the_music() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let server = Server::start(&["--music", music.to_str().unwrap()]);
    // Both wideband loops rendered: a cold start serves silence until then.
    server.wait_until_serving("default", Codec::G722);
    server.wait_until_serving("default", Codec::Opus);
    let mut call =
        RawCall::start_with_offer(server.sip, "", |port| offer_of(port, 1, 9, "G722/8000", ""));
    assert!(call.ok.contains("RTP/AVP 9"), "{}", call.ok);
    let sock = call.rtp.take().unwrap();
    let port = sock.local_addr().unwrap().port();
    // Start-up adds the wideband encodings (both at once) after G.711; until then a G.722
    // call gets nothing. Wait until they are served.
    let ready = wait_until(Duration::from_secs(60), || {
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf)
            .ok()
            .and_then(|(n, _)| parse_rtp(&buf[..n]).ok().map(|p| p.header.payload_type))
            == Some(9)
    });
    assert!(ready, "no G.722 RTP");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heard = capture(sock, std::sync::Arc::clone(&stop));
    let segment = Duration::from_millis(1500);
    std::thread::sleep(segment);
    // To Opus on a dynamic payload type the offer picks; then to PCMU.
    let r = call
        .request(
            "INVITE",
            &offer_of(
                port,
                2,
                107,
                "opus/48000/2",
                "a=fmtp:107 useinbandfec=0\r\n",
            ),
            "",
        )
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("a=rtpmap:107 opus/48000/2"),
        "{r}"
    );
    std::thread::sleep(segment);
    let r = call
        .request("INVITE", &offer_of(port, 3, 0, "PCMU/8000", ""), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("RTP/AVP 0"),
        "{r}"
    );
    std::thread::sleep(segment);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let heard = heard.join().unwrap();

    // One stream: one SSRC, contiguous sequence numbers, three runs of payload types in the
    // order of the answers.
    assert!(heard.len() >= 200, "{} packets", heard.len());
    let ssrc = heard[0].header.ssrc;
    let mut runs: Vec<(u8, Vec<usize>)> = Vec::new();
    for (k, h) in heard.iter().enumerate() {
        assert_eq!(h.header.ssrc, ssrc);
        if k > 0 {
            let prev = &heard[k - 1];
            assert_eq!(h.header.seq.distance_from(prev.header.seq), 1, "packet {k}");
        }
        match runs.last_mut() {
            Some((pt, run)) if *pt == h.header.payload_type => run.push(k),
            _ => runs.push((h.header.payload_type, vec![k])),
        }
    }
    let pts: Vec<u8> = runs.iter().map(|r| r.0).collect();
    assert_eq!(pts, [9, 107, 0]);
    let codecs = [Codec::G722, Codec::Opus, Codec::Pcmu];
    // Every packet's media-clock tick, counted from the first: 20 ms packets at the codec's
    // clock within a run, the marker only on the first packet after a switch.
    let mut tick = vec![0u64; heard.len()];
    for (r, ((_, run), codec)) in runs.iter().zip(codecs).enumerate() {
        assert_eq!(heard[run[0]].header.marker, r > 0, "{codec:?}");
        for &k in run.iter().skip(1) {
            let d = heard[k]
                .header
                .timestamp
                .distance_from(heard[k - 1].header.timestamp);
            assert_eq!(d, codec.clock_rate() as i32 / 50, "{codec:?}");
            assert!(!heard[k].header.marker);
            tick[k] = tick[k - 1] + 2;
        }
        if r + 1 < runs.len() {
            // Across the switch: the timestamp goes on, and the music has no gap.
            let next = runs[r + 1].1[0];
            let (a, b) = (&heard[next - 1], &heard[next]);
            let new = codecs[r + 1];
            let ticks = ticks_across(a, b, codec, new).unwrap_or_else(|| {
                panic!(
                    "{codec:?} -> {new:?}: timestamp step {:?}",
                    b.header.timestamp.distance_from(a.header.timestamp)
                )
            });
            tick[next] = tick[next - 1] + ticks;
            let gap = b.at - a.at;
            assert!(
                gap <= Duration::from_millis(40),
                "{codec:?} -> {new:?}: {gap:?} without RTP"
            );
        }
    }
    let worst = heard.windows(2).map(|w| w[1].at - w[0].at).max().unwrap();
    assert!(
        worst <= Duration::from_millis(60),
        "longest silence {worst:?}"
    );

    // After each switch the audio is the channel's music, decoded as that codec, and at the
    // position the clock says: the loop goes on across the switches, it does not restart.
    let source = MusicSource::Files(vec![music.clone()]);
    let base = ChannelRender::render("default", &source, -18.0);
    let plan = CodecPlan::from_config(&Config::embedded_default());
    let mut wideband = Wideband::default();
    let playlist = Composition::playlist(source.clone(), -18.0);
    for codec in [Codec::G722, Codec::Opus] {
        wideband.insert(render_encoded("default", &playlist, codec, base.frames(), &plan).unwrap());
    }
    let render = base.with_wideband(wideband, &plan);
    let loop_ticks = render.frames() * 2;
    let mut first: Option<(u64, u64)> = None;
    for ((_, run), codec) in runs.iter().zip(codecs) {
        let reference = served_loop(&render, codec);
        let pcm = decode(codec, run.iter().map(|&k| heard[k].payload.as_slice()));
        // 300 ms into the run (past the decoder's start), 200 ms long.
        let per_tick = codec.audio_rate() as usize / 100;
        let chunk = &pcm[30 * per_tick..50 * per_tick];
        let (corr, lag) = best_correlation(chunk, &reference, codec.audio_rate() as usize / 8000);
        assert!(corr >= 0.98, "{codec:?}: correlation {corr}");
        let at_tick = tick[run[15]];
        let loop_tick = (lag as f64 / per_tick as f64).round() as u64 % loop_ticks;
        match first {
            None => first = Some((at_tick, loop_tick)),
            Some((tick0, loop_tick0)) => {
                let want = (loop_tick0 + at_tick - tick0) % loop_ticks;
                let off = (loop_tick + loop_ticks - want) % loop_ticks;
                assert!(
                    off.min(loop_ticks - off) <= 1,
                    "{codec:?}: loop tick {loop_tick}, {want} expected"
                );
            }
        }
    }
}
