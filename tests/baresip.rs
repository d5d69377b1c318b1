//! baresip (Debian `baresip-core`) as a real SIP peer: it dials mohd over TLS and over UDP, with
//! G.711, G.722, Opus, and SRTP (SDES over TLS); the call stays up until baresip hangs up, and
//! what baresip heard matches the channel's render at the codec's rate.
//!
//! baresip runs on loopback with its own config folder, no sound card: the player is an
//! `aubridge` device nothing reads, and the `sndfile` filter records the decoded audio.
//! Its SIP trace (`-s`) on stdout is what the test reads of the signalling.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mohd::channel::ChannelRender;
use mohd::channel::compose::Composition;
use mohd::channel::encoded::reference_pcm;
use mohd::codec::Codec;
use mohd::config::Config;

/// baresip quits after this long (`-t`), hanging up its call: the call lasts a little less.
const CALL_SECONDS: u32 = 4;
/// baresip is killed (and the test fails) if it has not quit by then.
const PATIENCE: Duration = Duration::from_secs(15);

/// What baresip offers: its codec (as its `audio_codecs` account parameter names it) and
/// whether the media is SRTP (SDES, `RTP/SAVP`).
#[derive(Clone, Copy)]
struct Offer {
    codec: Codec,
    srtp: bool,
}

const PCMU: Offer = Offer {
    codec: Codec::Pcmu,
    srtp: false,
};

#[test]
fn baresip_calls_over_tls_hears_the_music_and_hangs_up() {
    if !baresip_ready() {
        return;
    }
    call_and_check("tls", PCMU);
}

#[test]
fn baresip_calls_over_udp_hears_the_music_and_hangs_up() {
    if !baresip_ready() {
        return;
    }
    call_and_check("udp", PCMU);
}

#[test]
fn baresip_with_g722_hears_wideband_music() {
    if !baresip_ready() {
        return;
    }
    call_and_check(
        "udp",
        Offer {
            codec: Codec::G722,
            srtp: false,
        },
    );
}

#[test]
fn baresip_with_opus_hears_fullband_music() {
    if !baresip_ready() {
        return;
    }
    call_and_check(
        "udp",
        Offer {
            codec: Codec::Opus,
            srtp: false,
        },
    );
}

#[test]
fn baresip_with_srtp_over_tls_hears_the_music() {
    if !baresip_ready() {
        return;
    }
    call_and_check(
        "tls",
        Offer {
            codec: Codec::G722,
            srtp: true,
        },
    );
}

/// baresip calls mohd's `transport` listener for [`CALL_SECONDS`] with `offer`; everything a
/// clean call means is checked.
fn call_and_check(transport: &str, offer: Offer) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_mohd_config(dir.path());
    let server = Server::from_config_file(&config_path, &[transport]);
    server.wait_until_serving("default", offer.codec);
    let mohd = server.addr(transport);
    let uri = match transport {
        "udp" => format!("sip:moh@{mohd}"),
        t => format!("sip:moh@{mohd};transport={t}"),
    };

    let baresip = dir.path().join("baresip");
    write_baresip_config(&baresip, &dir.path().join("cert.pem"), offer);
    let output = run_baresip(&baresip, &uri);
    let trace = SipTrace::parse(&output, mohd);
    check_signalling(&trace, &output);
    check_media_line(&trace, offer, &output);

    assert!(
        wait_until(Duration::from_secs(2), || {
            let status = server.control().sip_status.lock().unwrap();
            status.active_calls == 0 && status.stats.calls_ended == 1
        }),
        "mohd still has the call: {:?}",
        server.control().sip_status.lock().unwrap()
    );
    check_recording(&baresip.join("recordings"), &config_path, offer.codec);
}

/// A mohd config in `dir` (certificate included) with UDP and TLS listeners on port 0 and a
/// test music file on the default channel.
fn write_mohd_config(dir: &Path) -> PathBuf {
    write_certificate(dir, false);
    let music = dir.join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let path = dir.join("mohd.toml");
    let text = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n{TLS_KEYS}\n[channels.default]\nmusic = {music:?}\n[dialplan]\ndefault = \"default\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// baresip's config folder: one account that does not register, loopback only, offering only
/// `offer`'s codec (and SRTP if asked), no sound card, the decoded audio recorded to
/// `recordings/`.
fn write_baresip_config(dir: &Path, certificate: &Path, offer: Offer) {
    let recordings = dir.join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    // Only the codec under test is loaded: baresip 1.0.0 offers every loaded codec whatever
    // the account's `audio_codecs` says.
    let codec_module = match offer.codec {
        Codec::Pcmu | Codec::Pcma => "g711.so",
        Codec::G722 => "g722.so",
        Codec::Opus => "opus.so",
    };
    // `auenc_format s24_3le`: sndfile cannot record that format, so it records only the
    // decoded side. baresip 1.0.0 rebuilds its filter chain when the call is established with
    // a one-way stream (ours is sendonly), but only if both sides are empty: with an encode
    // recorder in place the decode recorder would be dropped. Our source sends nothing, so the
    // encoder format is never used.
    let config = format!(
        "poll_method epoll\n\
         sip_listen 127.0.0.1:0\n\
         sip_cafile {certificate}\n\
         net_interface 127.0.0.1\n\
         audio_player aubridge,heard\n\
         audio_source aubridge,silence\n\
         audio_alert aubridge,alert\n\
         auenc_format s24_3le\n\
         rtp_stats no\n\
         module_path {modules}\n\
         module {codec_module}\n\
         {srtp_module}         opus_stereo no\n\
         opus_sprop_stereo no\n\
         module aubridge.so\n\
         module sndfile.so\n\
         module_tmp account.so\n\
         module_app menu.so\n\
         snd_path {recordings}\n",
        certificate = certificate.display(),
        modules = baresip_modules().display(),
        recordings = recordings.display(),
        srtp_module = if offer.srtp { "module srtp.so\n" } else { "" },
    );
    std::fs::write(dir.join("config"), config).unwrap();
    // baresip's names: `opus/48000/2`, `G722`, `PCMU`; `srtp-mand` offers RTP/SAVP with SDES.
    let codec = match offer.codec {
        Codec::Opus => "opus/48000/2".to_string(),
        c => c.encoding_name().to_string(),
    };
    let mediaenc = if offer.srtp {
        ";mediaenc=srtp-mand"
    } else {
        ""
    };
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:tester@127.0.0.1>;regint=0;answermode=manual;audio_codecs={codec}{mediaenc}\n"
        ),
    )
    .unwrap();
}

/// Where the installed baresip keeps its modules (Debian's path, else a source build's).
fn baresip_modules() -> PathBuf {
    ["/usr/lib/baresip/modules", "/usr/local/lib/baresip/modules"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("sndfile.so").exists())
        .expect("baresip's modules, with sndfile.so")
}

/// Runs baresip with the config in `dir`: it dials `uri` at once and quits (hanging up) after
/// [`CALL_SECONDS`]. Returns what it printed, SIP trace included.
fn run_baresip(dir: &Path, uri: &str) -> String {
    let log = dir.join("output.txt");
    let stdout = File::create(&log).unwrap();
    let stderr = stdout.try_clone().unwrap();
    let mut child = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-s", "-t", &CALL_SECONDS.to_string()])
        .args(["-e", &format!("/dial {uri}")])
        .stdin(Stdio::null())
        // A file, not a pipe: nothing has to drain it while baresip runs.
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start baresip");
    let status = wait_for_exit(&mut child, PATIENCE);
    let output = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let status = status.unwrap_or_else(|| panic!("baresip did not quit\n{output}"));
    assert!(status.success(), "baresip: {status}\n{output}");
    output
}

/// One message of baresip's SIP trace.
#[derive(Debug)]
struct Traced {
    /// Sent by mohd (else by baresip).
    from_mohd: bool,
    start_line: String,
    cseq: String,
    contact: Option<String>,
    /// The SDP `m=` line, if the message has a body with one.
    media_line: Option<String>,
    /// The SDP's `a=` lines.
    attributes: Vec<String>,
}

impl Traced {
    fn is_request(&self, method: &str) -> bool {
        self.start_line.starts_with(&format!("{method} "))
    }
    fn is_response(&self, code: u16, cseq_method: &str) -> bool {
        self.start_line.starts_with(&format!("SIP/2.0 {code} "))
            && self.cseq.ends_with(&format!(" {cseq_method}"))
    }
}

struct SipTrace(Vec<Traced>);

impl SipTrace {
    /// baresip's `-s` trace: each message follows a line `UDP|TCP|TLS <source> -> <destination>`.
    fn parse(output: &str, mohd: SocketAddr) -> SipTrace {
        let mut messages: Vec<Traced> = Vec::new();
        let mut lines = output.lines().map(str::trim_end);
        while let Some(line) = lines.next() {
            let mut words = line.split(' ');
            if let (Some("UDP" | "TCP" | "TLS"), Some(source), Some("->"), Some(_), None) = (
                words.next(),
                words.next(),
                words.next(),
                words.next(),
                words.next(),
            ) {
                messages.push(Traced {
                    from_mohd: source == mohd.to_string(),
                    start_line: lines.next().unwrap_or_default().to_string(),
                    cseq: String::new(),
                    contact: None,
                    media_line: None,
                    attributes: Vec::new(),
                });
            } else if let Some(last) = messages.last_mut() {
                let header = |name: &str| {
                    let (n, v) = line.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                };
                if line.starts_with("m=audio ") {
                    last.media_line = Some(line.to_string());
                } else if line.starts_with("a=") {
                    last.attributes.push(line.to_string());
                } else if let Some(cseq) = header("CSeq") {
                    last.cseq = cseq;
                } else if let Some(contact) = header("Contact") {
                    last.contact = Some(contact);
                }
            }
        }
        SipTrace(messages)
    }

    fn count(&self, from_mohd: bool, pred: impl Fn(&Traced) -> bool) -> usize {
        let matching = |m: &&Traced| m.from_mohd == from_mohd && pred(m);
        self.0.iter().filter(matching).count()
    }
}

/// The call was set up, stayed up and was hung up by baresip: one INVITE answered 200 (its
/// Contact in the scheme baresip dialled), ACKed, no 200 storm, no BYE from mohd, baresip's
/// BYE answered 200.
fn check_signalling(trace: &SipTrace, output: &str) {
    assert!(output.contains("Call established"), "{output}");
    assert!(!output.contains("session closed"), "{output}");
    assert_eq!(
        trace.count(false, |m| m.is_request("INVITE")),
        1,
        "{output}"
    );
    let ok = trace
        .0
        .iter()
        .find(|m| m.from_mohd && m.is_response(200, "INVITE"))
        .unwrap_or_else(|| panic!("no 200 OK to the INVITE\n{output}"));
    let contact = ok.contact.as_deref().unwrap_or_default();
    assert!(contact.starts_with("<sip:"), "{contact}");
    // One 200, or two if the ACK crossed a retransmission at T1 on a slow machine; without an
    // ACK there would be one more at every doubling (0.5, 1.5, 3.5 s…).
    let oks = trace.count(true, |m| m.is_response(200, "INVITE"));
    assert!(oks <= 2, "{oks} 200 OKs to the INVITE\n{output}");
    assert_eq!(trace.count(false, |m| m.is_request("ACK")), 1, "{output}");
    assert_eq!(
        trace.count(true, |m| !m.start_line.starts_with("SIP/")),
        0,
        "{output}"
    );
    assert_eq!(trace.count(false, |m| m.is_request("BYE")), 1, "{output}");
    assert_eq!(
        trace.count(true, |m| m.is_response(200, "BYE")),
        1,
        "{output}"
    );
}

/// mohd's answer accepted baresip's codec on the profile it offered (`RTP/SAVP` for SRTP).
fn check_media_line(trace: &SipTrace, offer: Offer, output: &str) {
    let ok = trace
        .0
        .iter()
        .find(|m| m.from_mohd && m.is_response(200, "INVITE"))
        .unwrap_or_else(|| panic!("no 200 OK to the INVITE\n{output}"));
    let m = ok.media_line.as_deref().unwrap_or_default();
    let profile = if offer.srtp { "RTP/SAVP" } else { "RTP/AVP" };
    assert!(m.contains(&format!(" {profile} ")), "{m}\n{output}");
    let rtpmap = offer.codec.rtpmap();
    let has = |prefix: &str, needle: &str| {
        ok.attributes
            .iter()
            .any(|a| a.starts_with(prefix) && a.contains(needle))
    };
    assert!(
        has("a=rtpmap:", &rtpmap),
        "answer without {rtpmap}\n{output}"
    );
    assert_eq!(has("a=crypto:", "inline:"), offer.srtp, "{output}");
}

/// baresip's recording of what it decoded is the channel's render at the codec's audio rate
/// (rendering is deterministic, so the test renders it again).
fn check_recording(recordings: &Path, config_path: &Path, codec: Codec) {
    let decoded: Vec<PathBuf> = std::fs::read_dir(recordings)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .collect();
    assert_eq!(decoded.len(), 1, "{decoded:?}");
    let (rate, heard) = read_wav_first_channel(&decoded[0]);
    assert_eq!(
        rate,
        codec.audio_rate(),
        "baresip decoded {codec:?} at {rate} Hz"
    );
    let rate = rate as usize;
    assert!(
        heard.len() >= rate * 5 / 2,
        "recorded {} samples",
        heard.len()
    );
    let config = Config::load(config_path).unwrap();
    let channel = &config.channels["default"];
    let base = ChannelRender::render("default", &channel.music, channel.loudness_lufs);
    let reference = if codec.is_g711() {
        base.pcm.to_vec()
    } else {
        let playlist = Composition::playlist(channel.music.clone(), channel.loudness_lufs);
        reference_pcm("default", &playlist, codec, base.frames())
    };
    // Compared at 8 kHz (box-filtered): the test music is below 1 kHz, and a circular search
    // over a 48 kHz loop would take minutes in a debug build.
    let factor = rate / 8000;
    let heard = decimate(&heard, factor);
    let reference = decimate(&reference, factor);
    let chunk = &heard[8000..8000 + 2000];
    let rms =
        (chunk.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / chunk.len() as f64).sqrt();
    assert!(rms > 300.0, "the recording is (near) silence: rms {rms}");
    let (correlation, _) = best_circular_correlation(chunk, &reference);
    assert!(
        correlation > 0.95,
        "what baresip heard does not match the render: correlation {correlation}"
    );
}
