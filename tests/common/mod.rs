//! Shared helpers for the loopback tests: a mohd server in process on 127.0.0.1 (the `mohd`
//! binary itself only for `mohd call` and the end-to-end tests), and test music.
#![allow(dead_code)]

pub mod http;
pub mod prom;
pub mod tls;
pub mod tos;
pub mod web;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mohd::config::Config;
use mohd::control::Control;
use mohd::server::{self, Environment, Listeners, Running};

/// Whether sipp (Debian `sip-tester`) can run here. Missing sipp skips the calling test, unless
/// under CI, where it is a failure: `scripts/setup-deps` installs it.
pub fn sipp_ready() -> bool {
    peer_ready("sipp", "-v", "sip-tester")
}

/// Whether kamailio (Debian `kamailio`, dispatcher included) can run here; missing, as
/// [`sipp_ready`].
pub fn kamailio_ready() -> bool {
    peer_ready(&sbin_program("kamailio"), "-v", "kamailio")
}

/// `name` from /usr/sbin when it is there (Kamailio's programs are, and /usr/sbin is not on a
/// Debian user's PATH), else as found on the PATH.
pub fn sbin_program(name: &str) -> String {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin.display().to_string()
    } else {
        name.to_owned()
    }
}

/// Whether baresip (Debian `baresip-core`) can run here; missing, as [`sipp_ready`].
pub fn baresip_ready() -> bool {
    peer_ready("baresip", "-h", "baresip-core")
}

/// Whether `program` starts (run with `arg`, which must make it exit at once).
fn peer_ready(program: &str, arg: &str, debian_package: &str) -> bool {
    let found = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{program} is not installed (Debian package {debian_package}; run scripts/setup-deps)"
        );
    }
    eprintln!(
        "NOTICE: {program} is not installed (apt-get install {debian_package}): skipping this test"
    );
    false
}

pub fn mohd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mohd"))
}

/// A mohd server running in this test process on its own tokio runtime, with its own state
/// folder; stopped (calls hung up, threads joined) on drop. Nothing of it is process-wide, so
/// a test binary runs many side by side.
pub struct Server {
    /// The first UDP SIP listener.
    pub sip: SocketAddr,
    /// Every SIP listener, e.g. `("tcp", 127.0.0.1:40123)`.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The web listener, when the config has one.
    pub web: Option<SocketAddr>,
    /// Its state folder (library, credentials, renders) when the server made it: removed on
    /// drop, after the server stopped.
    state: Option<tempfile::TempDir>,
    running: Option<Running>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The media loop's stall hook is set: its thread never returns, so it is not joined.
    media_wedges: bool,
}

/// A server serving until stopped (see [`Server::serve_until_stopped`]).
pub struct Serving {
    /// Stop requests, as signals would send them.
    pub stop: tokio::sync::mpsc::Sender<()>,
    /// Told when the server has stopped (calls hung up, threads joined or given up on).
    pub stopped: std::sync::mpsc::Receiver<Instant>,
    pub control: std::sync::Arc<Control>,
}

impl Serving {
    /// Sends one stop request (SIGTERM).
    pub fn request_stop(&self) {
        self.stop.try_send(()).expect("stop request");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if self.media_wedges {
            // The wedged thread sleeps until the test process exits.
            runtime.shutdown_background();
            return;
        }
        if let Some(running) = self.running.take() {
            runtime.block_on(running.stop());
        }
        // Before the state folder goes: a re-render may still be writing to it.
        runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

impl Server {
    /// Starts a server on 127.0.0.1 port 0 (UDP), as `mohd serve --sip 127.0.0.1:0 EXTRA`
    /// would: `extra` may hold `--config FILE` and `--music PATH`.
    pub fn start(extra: &[&str]) -> Server {
        let (mut config_file, mut music) = (None, None);
        let mut args = extra.iter();
        while let Some(arg) = args.next() {
            let value = args.next().map(PathBuf::from);
            match *arg {
                "--config" => config_file = value,
                "--music" => music = value,
                other => panic!("Server::start does not take {other}"),
            }
        }
        let mut config = match config_file {
            Some(path) => Config::load(&path).unwrap_or_else(|e| panic!("{e}")),
            None => Config::embedded_default(),
        };
        config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), music);
        config.web.listen = None;
        Server::with_config(config)
    }

    /// Starts a server with the listeners a config file names (use port 0 in it) and waits
    /// until one of each of `transports` ("udp", "tcp", "tls") is up.
    pub fn from_config_file(path: &Path, transports: &[&str]) -> Server {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::with_config(config);
        for t in transports {
            server.addr(t);
        }
        server
    }

    /// Starts `config` with a fresh state folder.
    pub fn with_config(config: Config) -> Server {
        Server::with_environment(config, Environment::with_probe(mohd_bin()))
    }

    /// Starts `config` with a fresh state folder and `env` (e.g. a test hook set).
    pub fn with_environment(mut config: Config, env: Environment) -> Server {
        let state = tempfile::tempdir().expect("state folder");
        config.state.dir = state.path().to_owned();
        Server::launch(config, env, Some(state))
    }

    /// Starts `config` as it is, its `[state] dir` included.
    pub fn in_configured_state(config: Config, env: Environment) -> Server {
        Server::launch(config, env, None)
    }

    /// Starts the server and, unless a test holds its heads, waits until its start-up is
    /// over (no channel on a silent placeholder: OPTIONS says 200 from then on if all is
    /// well), so a test meets a box that is up.
    fn launch(config: Config, env: Environment, state: Option<tempfile::TempDir>) -> Server {
        init_logging();
        let media_wedges = env.stall_media_after.is_some();
        let heads_held = env.hold_heads.is_some();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let running = runtime.block_on(async {
            let listeners = Listeners::bind(&config).await.expect("bind");
            server::start(&config, listeners, env).await.expect("start")
        });
        let listeners: Vec<(String, SocketAddr)> = running
            .sip_listeners
            .iter()
            .map(|l| (l.transport.via_name().to_ascii_lowercase(), l.addr))
            .collect();
        let sip = listeners
            .iter()
            .find(|(t, _)| t == "udp")
            .or(listeners.first())
            .map(|(_, a)| *a)
            .expect("a SIP listener");
        let started = || running.control.starting_channels().is_empty();
        assert!(
            heads_held || wait_until(Duration::from_secs(60), started),
            "still starting after a minute: {:?}",
            running.control.starting_channels()
        );
        Server {
            sip,
            listeners,
            web: running.web.as_ref().map(|w| w.addr),
            state,
            running: Some(running),
            runtime: Some(runtime),
            media_wedges,
        }
    }

    /// Serves as `mohd serve` does, until stopped ([`Running::serve_until_stopped`]): a stop
    /// request is what SIGTERM or SIGINT sends the binary (the first drains, a second hangs
    /// up at once); a drain over the API also ends it. Drop no longer stops the server.
    pub fn serve_until_stopped(&mut self) -> Serving {
        let running = self.running.take().expect("running");
        let control = std::sync::Arc::clone(&running.control);
        let (stop, requests) = tokio::sync::mpsc::channel(4);
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let runtime = self.runtime.as_ref().expect("runtime");
        runtime.spawn(async move {
            running.serve_until_stopped(requests).await;
            let _ = stopped_tx.send(Instant::now());
        });
        Serving {
            stop,
            stopped,
            control,
        }
    }

    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.sip)
    }

    /// The address of the first listener on `transport`.
    pub fn addr(&self, transport: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(t, _)| t == transport)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {transport} listener in {:?}", self.listeners))
    }

    /// Whether the server still serves SIP (its task has not ended, by panic or otherwise).
    /// Waits until `channel` has audio for `codec`: the wideband encodings are added after
    /// start-up (G.711 serves at once), and a call placed before would get nothing to hear
    /// until they land.
    pub fn wait_until_serving(&self, channel: &str, codec: mohd::codec::Codec) {
        let ready = || {
            let renders = self.control().renders.read().unwrap();
            renders.get(channel).is_some_and(|r| r.serves(codec))
        };
        assert!(
            wait_until(Duration::from_secs(60), ready),
            "channel {channel} never served {codec:?}"
        );
    }

    pub fn is_serving(&self) -> bool {
        self.running.as_ref().is_some_and(Running::is_serving)
    }

    /// The handle the web API uses, for tests that look inside.
    pub fn control(&self) -> &Control {
        &self.running.as_ref().expect("running").control
    }
}

/// Logs of every server in this test binary to the test's captured output (`RUST_LOG`, else
/// info), shown when a test fails. The subscriber is process-wide, so it is set once.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Writes `cert.pem` and `key.pem` for 127.0.0.1 into `dir`: self-signed, or signed by a new
/// CA whose certificate goes to `ca.pem`.
pub fn write_certificate(dir: &Path, with_ca: bool) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names).unwrap();
    let cert = if with_ca {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mohd test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        params.signed_by(&key, &ca).unwrap()
    } else {
        params.self_signed(&key).unwrap()
    };
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// The `[sip.tls]` table for the files [`write_certificate`] writes.
pub const TLS_KEYS: &str = "[sip.tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n";

/// Runs `mohd call` and returns its JSON report.
pub fn mohd_call(uri: &str, extra: &[&str]) -> serde_json::Value {
    mohd_json("call", uri, extra)
}

/// Runs `mohd SUBCOMMAND URI --json EXTRA` (`call`, `load`) and returns its JSON report.
pub fn mohd_json(subcommand: &str, uri: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(mohd_bin())
        .arg(subcommand)
        .arg(uri)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run mohd {subcommand}: {e}"));
    assert!(
        out.status.success(),
        "mohd {subcommand} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// A pure tone, 16 kHz mono WAV: music whose pitch tells which track a caller hears.
pub fn write_tone(path: &Path, hz: f64, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * 16_000.0) as usize {
        let t = i as f64 / 16_000.0;
        w.write_sample((12_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// A few seconds of music-like audio with a pattern that never repeats within the loop (so the
/// position of a recording in it is unambiguous): a melody of tones with a slow chirp under it.
pub fn write_test_music(path: &Path, seconds: f64, rate: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    let n = (seconds * rate as f64) as usize;
    let notes = [262.0, 330.0, 392.0, 523.0, 440.0, 349.0, 294.0, 494.0];
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let note = notes[((t * 4.0) as usize) % notes.len()] * (1.0 + 0.1 * (t / seconds));
        let chirp = 200.0 + 600.0 * t / seconds;
        let v = 0.35 * (2.0 * std::f64::consts::PI * note * t).sin()
            + 0.15 * (2.0 * std::f64::consts::PI * chirp * t).sin();
        let s = (v * 20_000.0) as i16;
        w.write_sample(s).expect("sample");
        w.write_sample(s).expect("sample");
    }
    w.finalize().expect("finalize");
}

pub fn read_wav_mono(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).expect("open recording");
    r.samples::<i16>().map(|s| s.expect("sample")).collect()
}

/// A WAV file's sample rate and its first channel.
pub fn read_wav_first_channel(path: &Path) -> (u32, Vec<i16>) {
    let mut r = hound::WavReader::open(path).expect("open recording");
    let spec = r.spec();
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let first = samples.iter().step_by(channels).copied().collect();
    (spec.sample_rate, first)
}

/// Every `factor` samples averaged into one (a box low-pass, then decimation): wideband
/// recordings compared at 8 kHz, where a circular search is affordable in a debug build.
pub fn decimate(samples: &[i16], factor: usize) -> Vec<i16> {
    if factor <= 1 {
        return samples.to_vec();
    }
    samples
        .chunks_exact(factor)
        .map(|c| (c.iter().map(|&x| i32::from(x)).sum::<i32>() / factor as i32) as i16)
        .collect()
}

/// The normalised correlation of `chunk` with the circular `reference` read from `offset`.
pub fn correlation_at(chunk: &[i16], reference: &[i16], offset: usize) -> f64 {
    let n = reference.len();
    let (mut dot, mut c_energy, mut r_energy) = (0.0, 0.0, 0.0);
    for (k, &x) in chunk.iter().enumerate() {
        let (x, y) = (f64::from(x), f64::from(reference[(offset + k) % n]));
        dot += x * y;
        c_energy += x * x;
        r_energy += y * y;
    }
    dot / (c_energy.sqrt() * r_energy.sqrt()).max(1e-9)
}

/// The best normalised correlation of `chunk` against every circular position of `reference`.
pub fn best_circular_correlation(chunk: &[i16], reference: &[i16]) -> (f64, usize) {
    (0..reference.len())
        .map(|lag| (correlation_at(chunk, reference, lag), lag))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

/// Waits for `child` to exit; past `patience` it is killed and `None` returned.
pub fn wait_for_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// An OPTIONS request over UDP: the response as text.
pub fn options(sip: SocketAddr) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = sock.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:moh@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{r};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p1\r\nTo: <sip:moh@{sip}>\r\nCall-ID: {r}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        r = rand::random::<u32>()
    );
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        sock.send_to(msg.as_bytes(), sip).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer to OPTIONS");
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A bare-bones UAC: INVITE, ACK, then whatever the test does with its sockets.
pub struct RawCall {
    pub sip: UdpSocket,
    pub rtp: Option<UdpSocket>,
    /// mohd's 200 OK to the INVITE.
    pub ok: String,
    pub server: SocketAddr,
    pub id: u32,
    pub to: String,
    pub cseq: u32,
}

impl RawCall {
    pub fn start(server: SocketAddr, extra_headers: &str) -> RawCall {
        Self::start_with_offer(server, extra_headers, |rp| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            )
        })
    }

    /// [`RawCall::start`] with the SDP offer `offer(rtp_port)`.
    pub fn start_with_offer(
        server: SocketAddr,
        extra_headers: &str,
        offer: impl Fn(u16) -> String,
    ) -> RawCall {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (l, rp) = (sip.local_addr().unwrap(), rtp.local_addr().unwrap().port());
        let body = offer(rp);
        let id = rand::random::<u32>();
        let invite = format!(
            "INVITE sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKi{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: <sip:moh@{server}>\r\nCall-ID: {id}@t\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{l}>\r\n{extra_headers}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sip.send_to(invite.as_bytes(), server).unwrap();
        let ok = Self::wait_for(
            &sip,
            |m| m.starts_with("SIP/2.0 200"),
            Duration::from_secs(5),
        )
        .expect("200 OK");
        let to = ok
            .lines()
            .find(|h| h.starts_with("To:"))
            .unwrap()
            .trim_start_matches("To:")
            .trim()
            .to_string();
        let ack = format!(
            "ACK sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKa{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: {to}\r\nCall-ID: {id}@t\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        sip.send_to(ack.as_bytes(), server).unwrap();
        RawCall {
            sip,
            rtp: Some(rtp),
            ok,
            server,
            id,
            to,
            cseq: 1,
        }
    }

    pub fn wait_for(
        sock: &UdpSocket,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while Instant::now() < end {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return Some(m);
                }
            }
        }
        None
    }

    /// Waits for mohd's BYE, answers it, returns how long it took.
    pub fn wait_bye(&self, timeout: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let bye = Self::wait_for(&self.sip, |m| m.starts_with("BYE "), timeout)?;
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for h in bye.lines() {
            for name in ["Via:", "From:", "To:", "Call-ID:", "CSeq:"] {
                if h.starts_with(name) {
                    resp.push_str(h);
                    resp.push_str("\r\n");
                }
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        let _ = self.sip.send_to(resp.as_bytes(), self.server);
        Some(t0.elapsed())
    }

    pub fn rtp_flows(&self) -> bool {
        let mut buf = [0u8; 2048];
        let rtp = self.rtp.as_ref().unwrap();
        // Let what the server does next take effect (a BYE and the media thread's removal of
        // the call are two steps; packets sent in between are not "still flowing"), drain what
        // is queued, then see whether more comes.
        std::thread::sleep(Duration::from_millis(300));
        rtp.set_nonblocking(true).unwrap();
        while rtp.recv_from(&mut buf).is_ok() {}
        rtp.set_nonblocking(false).unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        rtp.recv_from(&mut buf).is_ok()
    }
}

impl RawCall {
    /// An SDP offer for an RTP port, with a direction attribute.
    pub fn offer(port: u16, direction: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
        )
    }

    /// Sends an in-dialog request (re-INVITE, UPDATE, …); returns the final response.
    pub fn request(&mut self, method: &str, body: &str, extra: &str) -> Option<String> {
        self.cseq += 1;
        let (l, server, id, cseq) = (
            self.sip.local_addr().unwrap(),
            self.server,
            self.id,
            self.cseq,
        );
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let msg = format!(
            "{method} sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKr{id}x{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: {to}\r\nCall-ID: {id}@t\r\nCSeq: {cseq} {method}\r\nContact: <sip:t@{l}>\r\n{extra}{ctype}Content-Length: {len}\r\n\r\n{body}",
            to = self.to,
            len = body.len()
        );
        self.sip.send_to(msg.as_bytes(), server).unwrap();
        let tag = format!("CSeq: {cseq} {method}");
        let resp = Self::wait_for(
            &self.sip,
            |m| m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1") && m.contains(&tag),
            Duration::from_secs(5),
        )?;
        if method == "INVITE" {
            let ack = format!(
                "ACK sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKk{id}x{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: {to}\r\nCall-ID: {id}@t\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
                to = self.to
            );
            self.sip.send_to(ack.as_bytes(), server).unwrap();
        }
        Some(resp)
    }
}

/// Runs `mohd call` expecting it to fail; returns its stderr.
pub fn mohd_call_fails(uri: &str, extra: &[&str]) -> String {
    let out = Command::new(mohd_bin())
        .arg("call")
        .arg(uri)
        .args(extra)
        .output()
        .expect("run mohd call");
    assert!(
        !out.status.success(),
        "mohd call succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
