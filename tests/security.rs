//! SIP security as an attacker meets it, against an in-process mohd over loopback UDP: digest
//! guessing limits (`[sip.auth]`), the security log lines and their fail2ban filter
//! (`examples/fail2ban`, checked with Debian's `fail2ban-regex`), and scanners by User-Agent
//! (`svmap` from Debian's `sipvicious`).
//!
//! The log is captured from the process-wide tracing subscriber, so the tests take turns.

mod common;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mohd::config::Config;
use mohd::sip::digest::{self, Challenge, RequestParts};

use common::*;

/// Everything the servers of this test binary log, as they would print it (no colours).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        // Installed before any server starts, so common's own subscriber stays out.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || Tee(sink.clone()))
            .init();
        log
    })
}

/// Writes to the capture and to the test's output (shown when a test fails).
struct Tee(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One test at a time (the capture is shared); returns the lock and where the log is now.
fn serial() -> (MutexGuard<'static, ()>, usize) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let at = captured().lock().unwrap().len();
    (guard, at)
}

/// The log lines written since `from`.
fn log_since(from: usize) -> Vec<String> {
    let log = captured().lock().unwrap();
    String::from_utf8_lossy(&log[from..])
        .lines()
        .map(str::to_string)
        .collect()
}

const PASSWORD: &str = "correct horse";

/// Waits may last this long before a test gives up (a failure, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(10);

fn auth_server(auth_extra: &str, sip_extra: &str) -> Server {
    let text = format!(
        "[sip]\nlisten = \"udp:127.0.0.1:0\"\n{sip_extra}\n\
         [sip.auth]\nrealm = \"moh.test\"\nusers = {{ pbx = \"{PASSWORD}\" }}\n{auth_extra}\n\
         [channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"
    );
    let config =
        Config::from_str(&text, Path::new("security-test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::with_config(config);
    server.wait_until_serving("default", mohd::codec::Codec::Pcmu);
    server
}

/// A UAC on its own loopback address, speaking just enough SIP to authenticate.
struct Peer {
    sip: UdpSocket,
    rtp: UdpSocket,
    server: SocketAddr,
    next: u32,
}

impl Peer {
    fn on(ip: &str, server: SocketAddr) -> Peer {
        let sip = UdpSocket::bind((ip, 0)).expect("a loopback address of 127/8");
        let rtp = UdpSocket::bind((ip, 0)).unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Peer {
            sip,
            rtp,
            server,
            next: rand::random::<u32>() >> 8,
        }
    }

    fn uri(&self) -> String {
        format!("sip:moh@{}", self.server)
    }

    /// An INVITE of a new call (its own Call-ID and branch); returns its Call-ID.
    fn send_invite(&mut self, authorization: Option<&str>, cseq: u32, call: u32) -> String {
        let l = self.sip.local_addr().unwrap();
        let rp = self.rtp.local_addr().unwrap().port();
        let ip = l.ip();
        self.next += 1;
        let branch = self.next;
        let body = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {rp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let msg = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKs{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:pbx@{l}>;tag=f{call}\r\nTo: <{uri}>\r\n\
             Call-ID: {call}@sec\r\nCSeq: {cseq} INVITE\r\nContact: <sip:pbx@{l}>\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            uri = self.uri(),
        );
        self.sip.send_to(msg.as_bytes(), self.server).unwrap();
        format!("{call}@sec")
    }

    /// Final responses received within `patience`, as (Call-ID, status); retransmissions once.
    fn finals(&self, patience: Duration) -> Vec<(String, u16)> {
        let end = Instant::now() + patience;
        let mut out: Vec<(String, u16)> = Vec::new();
        let mut buf = [0u8; 8192];
        while Instant::now() < end {
            let Ok((n, _)) = self.sip.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]);
            let Some(code) = m.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)) else {
                continue;
            };
            let code: u16 = code.parse().unwrap_or(0);
            // Challenges (CSeq 1) are not what is counted.
            if header(&m, "CSeq").is_some_and(|c| c.starts_with("1 ")) {
                continue;
            }
            let call_id = header(&m, "Call-ID").unwrap_or_default();
            if code >= 200 && !out.iter().any(|(c, _)| *c == call_id) {
                out.push((call_id, code));
            }
        }
        out
    }

    /// A challenge from mohd: an INVITE without credentials, answered 401.
    fn challenge(&mut self) -> Challenge {
        let call = self.fresh_call();
        let id = self.send_invite(None, 1, call);
        let resp = wait_response(&self.sip, &id, Duration::from_secs(3)).expect("a 401");
        assert!(resp.starts_with("SIP/2.0 401"), "{resp}");
        let value = header(&resp, "WWW-Authenticate").expect("a challenge");
        Challenge::parse(&value).unwrap()
    }

    fn fresh_call(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    fn authorization(&self, c: &Challenge, password: &str, nc: u32) -> String {
        let uri = self.uri();
        let req = RequestParts {
            method: "INVITE",
            uri: &uri,
            body: b"",
        };
        digest::authorize(c, "pbx", password, req, &format!("cn{nc}"), nc).to_header_value()
    }

    /// A whole call with the right password: 200 with music (RTP arrives), then BYE. The
    /// response to the authenticated INVITE, or `None` if there was none.
    fn call_with_password(&mut self) -> Option<String> {
        let c = self.challenge();
        let auth = self.authorization(&c, PASSWORD, 1);
        let call = self.fresh_call();
        let id = self.send_invite(Some(&auth), 2, call);
        let resp = wait_response(&self.sip, &id, Duration::from_secs(3))?;
        if !resp.starts_with("SIP/2.0 200") {
            return Some(resp);
        }
        let to = header(&resp, "To").unwrap();
        let l = self.sip.local_addr().unwrap();
        let (uri, server) = (self.uri(), self.server);
        let dialog = format!(
            "Max-Forwards: 70\r\nFrom: <sip:pbx@{l}>;tag=f{call}\r\nTo: {to}\r\nCall-ID: {id}\r\n"
        );
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKa{call};rport\r\n{dialog}CSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        self.sip.send_to(ack.as_bytes(), server).unwrap();
        let mut buf = [0u8; 2048];
        let mut packets = 0;
        let end = Instant::now() + Duration::from_secs(3);
        while packets < 25 && Instant::now() < end {
            if self.rtp.recv_from(&mut buf).is_ok_and(|(n, _)| n > 12) {
                packets += 1;
            }
        }
        assert!(packets >= 25, "only {packets} RTP packets after the 200");
        let bye = format!(
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKb{call};rport\r\n{dialog}CSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        self.sip.send_to(bye.as_bytes(), server).unwrap();
        Some(resp)
    }
}

/// The first final response for `call_id` (a 401 is final; 1xx are skipped).
fn wait_response(sock: &UdpSocket, call_id: &str, patience: Duration) -> Option<String> {
    let end = Instant::now() + patience;
    let mut buf = [0u8; 8192];
    while Instant::now() < end {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.starts_with("SIP/2.0 ")
            && !m.starts_with("SIP/2.0 1")
            && header(&m, "Call-ID").as_deref() == Some(call_id)
        {
            return Some(m);
        }
    }
    None
}

fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `attempts` INVITEs with a wrong password from `peer`, as fast as a script sends them (one
/// nonce, the count going up). Returns the final responses per Call-ID.
fn guess(peer: &mut Peer, attempts: u32) -> Vec<(String, u16)> {
    let c = peer.challenge();
    for nc in 1..=attempts {
        let auth = peer.authorization(&c, &format!("guess{nc}"), nc);
        let call = peer.fresh_call();
        peer.send_invite(Some(&auth), 2, call);
    }
    peer.finals(Duration::from_millis(1500))
}

fn security_lines<'a>(lines: &'a [String], ip: &str) -> Vec<&'a String> {
    let needle = format!("source={ip} ");
    lines
        .iter()
        .filter(|l| {
            l.contains("mohd security:")
                && (l.contains(&needle) || l.ends_with(&needle[..needle.len() - 1]))
        })
        .collect()
}

#[test]
fn password_guessing_is_cut_off_while_the_pbx_keeps_calling() {
    let (_serial, log_start) = serial();
    // A 6 s first ban, so that the test sees it end.
    let s = auth_server("ban_s = 6", "");
    let mut attacker = Peer::on("127.0.0.3", s.sip);
    let started = Instant::now();
    let answered = guess(&mut attacker, 300);
    let codes: Vec<u16> = answered.iter().map(|(_, c)| *c).collect();
    // Four 401s, then the fifth failure bans: dropped (the default), and so is the rest.
    assert_eq!(codes, [401; 4], "{answered:?}");
    // Even a request that would start with the right password: nothing.
    assert_eq!(attacker.call_with_password_or_timeout(), None);

    // The PBX, from its own address, during the ban: answered 200, with music.
    let mut pbx = Peer::on("127.0.0.2", s.sip);
    let ok = pbx.call_with_password().expect("the PBX is answered");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the ban was still on"
    );

    // After the back-off, the source gets through again.
    let ban_end = started + Duration::from_secs(6);
    std::thread::sleep(
        ban_end.saturating_duration_since(Instant::now()) + Duration::from_millis(300),
    );
    let ok = attacker
        .call_with_password()
        .expect("answered after the ban");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    // The log: a bounded number of lines for 300 guesses, not 600.
    let lines = log_since(log_start);
    let attacker_lines = security_lines(&lines, "127.0.0.3");
    let failed = attacker_lines
        .iter()
        .filter(|l| l.contains("auth-failed"))
        .count();
    assert_eq!(failed, 5, "{attacker_lines:#?}");
    assert_eq!(
        attacker_lines
            .iter()
            .filter(|l| l.contains("banned source="))
            .count(),
        1
    );
    assert!(attacker_lines.len() <= 8, "{attacker_lines:#?}");
    // Besides those, the call it made after the ban: started, and ended (that line may or
    // may not be written yet).
    let all_mentioning = lines.iter().filter(|l| l.contains("127.0.0.3")).count();
    assert!(all_mentioning <= 8 + 2, "{lines:#?}");
    assert!(lines.len() <= 40, "{} lines: {lines:#?}", lines.len());
    let stats = s.control().sip_status.lock().unwrap().stats;
    assert!(stats.banned >= 1, "{stats:?}");
}

impl Peer {
    /// [`Peer::call_with_password`] for a source that may be dropped: `None` when nothing
    /// answers the challenge-less INVITE.
    fn call_with_password_or_timeout(&mut self) -> Option<String> {
        let call = self.fresh_call();
        let id = self.send_invite(None, 1, call);
        wait_response(&self.sip, &id, Duration::from_millis(700))
    }
}

#[test]
fn a_banned_source_gets_403_when_configured() {
    let (_serial, _) = serial();
    let s = auth_server("on_ban = \"403\"\nmax_failures = 3", "");
    let mut attacker = Peer::on("127.0.0.6", s.sip);
    let answered = guess(&mut attacker, 20);
    let codes: Vec<u16> = answered.iter().map(|(_, c)| *c).collect();
    let mut expected = vec![401, 401];
    expected.resize(20, 403);
    assert_eq!(codes, expected, "{answered:?}");
}

/// Whether `program` is installed; under CI its absence fails the test (scripts/setup-deps
/// installs `package`).
fn tool_ready(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed (Debian package {package}; run scripts/setup-deps)"
        );
        eprintln!("NOTICE: {program} is not installed (apt-get install {package}): skipping");
    }
    found
}

/// [`serial`], for a test that needs `program`: `None` (skip) when it is missing.
fn serial_with(program: &str, package: &str) -> Option<(MutexGuard<'static, ()>, usize)> {
    tool_ready(program, package).then(serial)
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_fail2ban_filter_matches_the_lines_of_a_real_attack() {
    let Some((_serial, log_start)) = serial_with("fail2ban-regex", "fail2ban") else {
        return;
    };
    let s = auth_server("", "");
    let mut attacker = Peer::on("127.0.0.4", s.sip);
    guess(&mut attacker, 30);
    // A scanner from another address, refused by its User-Agent.
    let scanner = UdpSocket::bind("127.0.0.5:0").unwrap();
    let l = scanner.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:100@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-sc1;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"sipvicious\"<sip:100@1.1.1.1>;tag=6\r\nTo: <sip:100@1.1.1.1>\r\n\
         Call-ID: scan1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
        sip = s.sip
    );
    scanner.send_to(options.as_bytes(), s.sip).unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        !security_lines(&log_since(log_start), "127.0.0.5").is_empty()
    }));
    let lines = log_since(log_start);
    let attack: Vec<&String> = security_lines(&lines, "127.0.0.4");
    assert!(attack.len() >= 6, "{lines:#?}");
    let dir = tempfile::tempdir().unwrap();
    let ips = fail2ban_hits(dir.path(), &lines);
    let hits = |ip: &str| ips.iter().filter(|x| *x == ip).count();
    // Every security line of the attack is a hit, and nothing else is.
    assert_eq!(hits("127.0.0.4"), attack.len(), "{ips:?}");
    assert_eq!(hits("127.0.0.5"), 1, "{ips:?}");
    let filter = repo_path("examples/fail2ban/filter.d/mohd.conf");

    // The jail loads beside Debian's own configuration (its sshd jail left out).
    let etc = Path::new("/etc/fail2ban");
    if etc.join("jail.conf").exists() && tool_ready("fail2ban-client", "fail2ban") {
        let conf = dir.path().join("fail2ban");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(etc)
            .arg(&conf)
            .status()
            .unwrap();
        assert!(copied.success());
        let _ = std::fs::remove_file(conf.join("jail.d/defaults-debian.conf"));
        std::fs::copy(&filter, conf.join("filter.d/mohd.conf")).unwrap();
        std::fs::copy(
            repo_path("examples/fail2ban/jail.d/mohd.conf"),
            conf.join("jail.d/mohd.conf"),
        )
        .unwrap();
        let out = Command::new("fail2ban-client")
            .arg("-c")
            .arg(&conf)
            .arg("-t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The source addresses `fail2ban-regex` finds in `lines` with the shipped filter, one per
/// hit; every hit is an IP address and every `mohd security:` line is a hit.
fn fail2ban_hits(dir: &Path, lines: &[String]) -> Vec<String> {
    let log_file = dir.join("mohd.log");
    let mut f = std::fs::File::create(&log_file).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let out = Command::new("fail2ban-regex")
        .args(["-o", "ip"])
        .arg(&log_file)
        .arg(repo_path("examples/fail2ban/filter.d/mohd.conf"))
        .output()
        .expect("run fail2ban-regex");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ips: Vec<String> = (stdout.lines().map(str::trim))
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let security = (lines.iter())
        .filter(|l| l.contains("mohd security:"))
        .count();
    assert_eq!(ips.len(), security, "{stdout}\n{lines:#?}");
    assert!(
        ips.iter().all(|ip| ip.parse::<IpAddr>().is_ok()),
        "{stdout}"
    );
    ips
}

/// A flood of TLS handshakes without a client certificate, against `[sip.tls] client_ca`:
/// every one is refused, the log holds one line when the flood starts and one summary per
/// interval with the count (together, every refusal), not a line per handshake; and the
/// fail2ban filter matches each of those lines.
#[test]
fn client_certificate_refusals_are_summarised_per_source() {
    let (_serial, log_start) = serial();
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), true);
    std::fs::write(
        dir.path().join("client-ca.pem"),
        common::tls::new_ca("PBX CA").pem(),
    )
    .unwrap();
    let text = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n\
         {TLS_KEYS}client_ca = \"client-ca.pem\"\n\
         [sip.auth]\nrealm = \"moh.test\"\nusers = {{ pbx = \"{PASSWORD}\" }}\n\
         [channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"
    );
    let mut config =
        Config::from_str(&text, &dir.path().join("mohd.toml")).unwrap_or_else(|e| panic!("{e}"));
    // Summaries every second rather than every minute, so the test sees several.
    let interval = Duration::from_secs(1);
    if let Some(auth) = config.sip.auth.as_mut() {
        auth.guard.log_interval = interval;
    }
    let s = Server::with_config(config);
    let tls = s.addr("tls");
    let no_certificate = common::tls::client_config(&dir.path().join("ca.pem"), None);
    let source = "127.0.0.8";
    const HANDSHAKES: u64 = 60;
    let flood = Instant::now();
    for _ in 0..HANDSHAKES {
        let answer = common::tls::options_over_tls_from(
            source.parse().unwrap(),
            tls,
            no_certificate.clone(),
        );
        assert_eq!(answer, None, "a client without a certificate is refused");
    }
    let flood = flood.elapsed();
    // Each line's count: 1 for the line that opens an interval, `count=N` for a summary.
    let counted = |lines: &[&String]| -> u64 {
        (lines.iter())
            .map(|l| match l.split_once(" count=") {
                Some((_, rest)) => rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                None => 1,
            })
            .sum()
    };
    let all_counted = || counted(&security_lines(&log_since(log_start), source)) >= HANDSHAKES;
    assert!(
        wait_until(PATIENCE, all_counted),
        "{:#?}",
        log_since(log_start)
    );
    let lines = log_since(log_start);
    let ours = security_lines(&lines, source);
    assert_eq!(counted(&ours), HANDSHAKES, "{ours:#?}");
    assert!(
        ours.iter().all(|l| l.contains(&format!(
            "mohd security: refused source={source} reason=client-cert"
        ))),
        "{ours:#?}"
    );
    // One line opens the flood, then at most one per interval it lasted, and the last one.
    let bound = 2 + flood.as_secs() / interval.as_secs();
    assert!(
        ours.len() as u64 <= bound,
        "{} lines: {ours:#?}",
        ours.len()
    );
    assert!(ours.iter().any(|l| l.contains(" count=")), "{ours:#?}");
    // Every one counted for the metrics (mohd_sip_requests_refused_total{reason="client_cert"}).
    let metric = || {
        s.control()
            .sip_status
            .lock()
            .unwrap()
            .stats
            .client_certs_refused
    };
    assert!(
        wait_until(PATIENCE, || metric() == HANDSHAKES),
        "{}",
        metric()
    );

    if tool_ready("fail2ban-regex", "fail2ban") {
        let ours: Vec<String> = ours.into_iter().cloned().collect();
        let ips = fail2ban_hits(dir.path(), &ours);
        assert_eq!(ips, vec![source.to_owned(); ours.len()]);
    }
}

/// svmap's report of `target`: the lines of its table that name a device.
fn svmap(target: SocketAddr) -> String {
    let out = Command::new("svmap")
        .arg(target.ip().to_string())
        .arg(format!("-p{}", target.port()))
        .output()
        .expect("run svmap");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn svmap_finds_nothing_while_scanners_are_dropped() {
    let Some((_serial, log_start)) = serial_with("svmap", "sipvicious") else {
        return;
    };
    let dropping = auth_server("", "");
    let report = svmap(dropping.sip);
    assert!(!report.contains("mohd"), "{report}");
    assert!(!report.contains(&dropping.sip.to_string()), "{report}");
    assert!(wait_until(Duration::from_secs(3), || {
        dropping.control().sip_status.lock().unwrap().stats.scanners >= 1
    }));
    let lines = log_since(log_start);
    let refused = lines
        .iter()
        .filter(|l| l.contains("reason=scanner"))
        .count();
    assert_eq!(refused, 1, "one line however many probes: {lines:#?}");
    drop(dropping);

    // With dropping off, the same scan finds mohd and what its Server header says.
    let open = auth_server("", "drop_user_agents = []");
    let report = svmap(open.sip);
    assert!(report.contains(&open.sip.to_string()), "{report}");
    assert!(
        report.contains("mohd/"),
        "the Server header, version and all: {report}"
    );
}

/// The same attack on the sans-IO endpoint and a virtual clock: 300 guesses a millisecond
/// apart, the PBX from another address in the middle of them, the attacker's own right
/// password refused during the ban and admitted after it, the doubled second ban.
#[test]
fn guessing_limits_on_a_virtual_clock() {
    use mohd::sip::endpoint::{Endpoint, EndpointConfig, Event, Output};
    use mohd::sip::msg::{self as sipmsg, Message};

    let (_serial, _) = serial();
    let mut users = std::collections::BTreeMap::new();
    users.insert("pbx".to_string(), PASSWORD.to_string());
    let config = EndpointConfig {
        auth: Some(digest::VerifierConfig::new("moh.test", users)),
        ..EndpointConfig::default()
    };
    let dialplan = Config::embedded_default().dialplan;
    let mut ep = Endpoint::new(config, dialplan, 11);
    let local: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let attacker: SocketAddr = "203.0.113.9:5060".parse().unwrap();
    let pbx: SocketAddr = "192.0.2.50:5060".parse().unwrap();
    let t0 = Instant::now();
    let mut n = 0u32;
    // Sends an INVITE (with `auth` when given); returns the final response code, if any, and
    // whether a call came out of it.
    let mut invite = |ep: &mut Endpoint, now: Instant, from: SocketAddr, auth: Option<&str>| {
        n += 1;
        let uri = "sip:moh@192.0.2.10";
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let text = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKv{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:pbx@{from}>;tag=t{n}\r\nTo: <{uri}>\r\n\
             Call-ID: v{n}\r\nCSeq: 1 INVITE\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        ep.handle_receive(now, from, local, text.as_bytes());
        let (mut code, mut call, mut challenge) = (None, false, None);
        while let Some(o) = ep.poll_output() {
            match o {
                Output::Transmit(t) => {
                    if let Ok(Message::Response(r)) = sipmsg::parse(&t.data)
                        && r.code >= 200
                    {
                        code = Some(r.code);
                        challenge = r.headers.get("WWW-Authenticate").map(str::to_string);
                    }
                }
                Output::Event(Event::IncomingCall { .. }) => call = true,
                Output::Event(_) => {}
            }
        }
        (code, call, challenge)
    };
    let answer = |challenge: &str, password: &str, nc: u32| {
        let c = Challenge::parse(challenge).unwrap();
        let req = RequestParts {
            method: "INVITE",
            uri: "sip:moh@192.0.2.10",
            body: b"",
        };
        digest::authorize(&c, "pbx", password, req, "cn", nc).to_header_value()
    };
    let (_, _, challenge) = invite(&mut ep, t0, attacker, None);
    let challenge = challenge.expect("a 401 with a challenge");
    let mut codes = Vec::new();
    for i in 0..300u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        let auth = answer(&challenge, &format!("guess{i}"), i + 1);
        codes.push(invite(&mut ep, now, attacker, Some(&auth)).0);
        if i == 150 {
            // The PBX, mid-attack, from its own address.
            let (_, _, c) = invite(&mut ep, now, pbx, None);
            let auth = answer(&c.unwrap(), PASSWORD, 1);
            let (code, call, _) = invite(&mut ep, now, pbx, Some(&auth));
            assert!(
                call && code.is_none(),
                "the PBX's call goes on to be answered"
            );
        }
    }
    assert_eq!(codes[..4], [Some(401); 4]);
    assert!(codes[4..].iter().all(Option::is_none), "{codes:?}");
    assert!(ep.stats().banned >= 296, "{:?}", ep.stats());
    // The attacker's right password during the ban: nothing.
    let late = t0 + Duration::from_secs(30);
    assert_eq!(invite(&mut ep, late, attacker, None).0, None);
    // After the 60 s ban: admitted.
    let after = t0 + Duration::from_secs(61);
    let (_, _, c) = invite(&mut ep, after, attacker, None);
    let challenge = c.expect("challenged again after the ban");
    let (_, call, _) = invite(
        &mut ep,
        after,
        attacker,
        Some(&answer(&challenge, PASSWORD, 1)),
    );
    assert!(call, "admitted after the back-off");
    // The success cleared the source: five more guesses to the next ban, which is 60 s again.
    for i in 0..5u32 {
        let auth = answer(&challenge, "nope", 10 + i);
        invite(&mut ep, after, attacker, Some(&auth));
    }
    assert_eq!(
        invite(&mut ep, after + Duration::from_secs(59), attacker, None).0,
        None
    );
    assert!(invite(&mut ep, after + Duration::from_secs(61), attacker, None).0 == Some(401));
}
