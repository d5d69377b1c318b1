//! mohd behind a real Kamailio (Debian's `kamailio`, whose dispatcher module is in the main
//! package) running the example pbx-examples/kamailio/kamailio.cfg unchanged: only its defines
//! are set on the command line (loopback ports, the list file, a 1 s probe interval and a 1 s
//! INVITE timeout so the test is quick). Three boxes in this process: A and B play music, C has
//! nothing playable (it answers OPTIONS 503). Callers are sipp and `mohd call`, always through
//! the proxy; which box took a call is read from the boxes' own call counters, the proxy's view
//! of each box from `kamcmd dispatcher.list`.
//!
//! One Kamailio and one set of boxes serve every case in turn, so the whole runs in about 15 s.
//!
//! Without kamailio or sipp the test prints a notice and passes, except under CI (`CI` set),
//! where that is a failure: `scripts/setup-deps` installs both.

mod common;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mohd::config::Config;

/// How often the proxy probes each box, in the test (the example says 5).
const PROBE_INTERVAL_S: u32 = 1;
/// How long the proxy waits for a box's first answer to an INVITE, in the test (example: 2000).
const INVITE_TIMEOUT_MS: u32 = 1000;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A UDP port on 127.0.0.1 free a moment ago: boxes restart on the same address, so the test
/// chooses it rather than port 0.
fn free_udp_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a free port");
    socket.local_addr().expect("local address")
}

/// A mohd box on `sip`, playing the built-in demo music, or `music` when given.
fn start_box(sip: SocketAddr, music: Option<PathBuf>) -> Server {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some(sip), music);
    config.web.listen = None;
    let server = Server::with_config(config);
    assert_eq!(server.sip, sip);
    server
}

fn answered(server: &Server) -> u64 {
    server
        .control()
        .call_metrics
        .answered
        .load(Ordering::Relaxed)
}

/// A Kamailio running the example config in the foreground (`-DD -E`), with its own runtime
/// folder (its control socket for kamcmd) and its log in a file; stopped with its process
/// group on drop.
struct Kamailio {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(boxes: &[SocketAddr]) -> Kamailio {
        let dir = tempfile::tempdir().expect("kamailio folder");
        let list = dir.path().join("dispatcher.list");
        let lines: String = boxes.iter().map(|b| format!("1 sip:{b}\n")).collect();
        std::fs::write(&list, lines).expect("write dispatcher.list");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).expect("runtime folder");
        let addr = free_udp_addr();
        let log = File::create(dir.path().join("kamailio.log")).expect("log file");
        let child = Command::new(sbin_program("kamailio"))
            .arg("-f")
            .arg(repo_path("pbx-examples/kamailio/kamailio.cfg"))
            .args(["-DD", "-E", "-m", "32", "-M", "4", "-Y"])
            .arg(&runtime)
            .args(["-A", &format!("LISTEN=udp:{addr}")])
            .args(["-A", &format!("DS_LIST_FILE=\"{}\"", list.display())])
            .args(["-A", &format!("DS_PING_INTERVAL={PROBE_INTERVAL_S}")])
            .args(["-A", &format!("FR_TIMER_MS={INVITE_TIMEOUT_MS}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start kamailio");
        let kamailio = Kamailio { child, addr, dir };
        assert!(
            wait_until(Duration::from_secs(15), || kamailio
                .destinations()
                .is_some()),
            "kamailio did not come up\n{}",
            kamailio.log()
        );
        kamailio
    }

    fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    fn log(&self) -> String {
        let text = self.full_log();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- kamailio log (tail) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Each box's dispatcher flags as `kamcmd dispatcher.list` prints them: "AP" active and
    /// probed, "IP" inactive (probes failing or answered other than 200), "TP" trying.
    fn destinations(&self) -> Option<Vec<(String, String)>> {
        let out = Command::new(sbin_program("kamcmd"))
            .args(["-s", &self.control_socket(), "dispatcher.list"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut found = Vec::new();
        let mut uri = None;
        for line in text.lines().map(str::trim) {
            if let Some(u) = line.strip_prefix("URI:") {
                uri = Some(u.trim().to_owned());
            } else if let (Some(flags), Some(u)) = (line.strip_prefix("FLAGS:"), uri.take()) {
                found.push((u, flags.trim().to_owned()));
            }
        }
        (!found.is_empty()).then_some(found)
    }

    /// Sets a box's dispatcher state as an operator would (`ap`: active and probed).
    fn set_state(&self, server: SocketAddr, state: &str) {
        let status = Command::new(sbin_program("kamcmd"))
            .args([
                "-s",
                &self.control_socket(),
                "dispatcher.set_state",
                state,
                "1",
            ])
            .arg(format!("sip:{server}"))
            .stdout(Stdio::null())
            .status()
            .expect("run kamcmd");
        assert!(
            status.success(),
            "kamcmd dispatcher.set_state {state} {server}"
        );
    }

    fn control_socket(&self) -> String {
        format!(
            "unix:{}",
            self.dir.path().join("run/kamailio_ctl").display()
        )
    }

    fn state_of(&self, server: SocketAddr) -> Option<char> {
        let uri = format!("sip:{server}");
        self.destinations()?
            .into_iter()
            .find(|(u, _)| *u == uri)
            .and_then(|(_, flags)| flags.chars().next())
    }

    /// Waits until the proxy holds `server` in `state` ('A' active, 'I' inactive).
    fn wait_for_state(&self, server: SocketAddr, state: char, why: &str) {
        let patience = Duration::from_secs(u64::from(PROBE_INTERVAL_S) * 3 + 5);
        assert!(
            wait_until(patience, || self.state_of(server) == Some(state)),
            "{why}: the proxy never marked {server} {state}: {:?}\n{}",
            self.destinations(),
            self.log()
        );
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if wait_for_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// Places `calls` sipp calls through `kamailio` (10 per second, each held `hold_ms`, ACK and
/// BYE along the Record-Route) and asserts that every one was answered and hung up cleanly.
fn sipp_calls(kamailio: &Kamailio, calls: u32, hold_ms: u32) {
    let dir = tempfile::tempdir().expect("sipp folder");
    // The music goes here, unread: these calls are about where they land.
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
    let rtp_port = rtp.local_addr().expect("rtp port").port().to_string();
    let errors = dir.path().join("errors.log");
    let screen = dir.path().join("screen.log");
    let calls_text = calls.to_string();
    let status = Command::new("sipp")
        .arg(kamailio.addr.to_string())
        .arg("-sf")
        .arg(repo_path("tests/sipp/uac_via_proxy.xml"))
        .args(["-s", "moh", "-i", "127.0.0.1", "-nostdin"])
        .args(["-m", &calls_text, "-l", &calls_text, "-r", "10"])
        .args(["-set", "hold_ms", &hold_ms.to_string()])
        .args([
            "-key",
            "rtp_addr",
            "127.0.0.1",
            "-key",
            "rtp_port",
            &rtp_port,
        ])
        .args(["-timeout", "30s", "-timeout_error", "-recv_timeout", "10s"])
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&errors)
        .stdin(Stdio::null())
        .stdout(File::create(&screen).expect("screen log"))
        .stderr(Stdio::inherit())
        .status()
        .expect("run sipp");
    assert!(
        status.success(),
        "sipp: not every call through the proxy succeeded ({status})\n--- sipp screen ---\n{}\n--- sipp errors ---\n{}\n{}",
        std::fs::read_to_string(&screen).unwrap_or_default(),
        std::fs::read_to_string(&errors).unwrap_or_default(),
        kamailio.log()
    );
}

/// `mohd call`s placed at the same moment through the proxy, each `seconds` long; their
/// reports in order.
fn concurrent_calls(kamailio: &Kamailio, count: usize, seconds: f64) -> Vec<serde_json::Value> {
    let uri = format!("sip:moh@{}", kamailio.addr);
    let seconds = seconds.to_string();
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let (uri, seconds) = (uri.clone(), seconds.clone());
            std::thread::spawn(move || mohd_call(&uri, &["--seconds", &seconds]))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a call thread"))
        .collect()
}

/// The caller heard the music from answer to hang-up: every packet of `seconds`, none lost,
/// no gap, and its own BYE answered 200 (the box did not hang up on it).
fn assert_heard_to_the_end(report: &serde_json::Value, seconds: f64) {
    let packets = report["stats"]["packets"].as_u64().unwrap_or(0);
    let expected = (seconds * 50.0) as u64;
    assert!(
        packets + 5 >= expected,
        "{packets} of {expected} packets: {report}"
    );
    assert_eq!(report["stats"]["lost"], 0, "{report}");
    let gap = report["stats"]["max_gap_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(gap < 200.0, "a {gap} ms gap in the music: {report}");
    assert_eq!(report["ended_by_remote"], false, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
}

fn active_calls(server: &Server) -> u64 {
    server
        .control()
        .media_stats
        .active_calls
        .load(Ordering::Relaxed)
}

/// Short `mohd call`s through the proxy one after another, from a thread, until stopped: the
/// callers who must not notice a box being drained and upgraded.
struct SteadyCallers {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<serde_json::Value>>,
}

impl SteadyCallers {
    const SECONDS: f64 = 0.5;

    fn start(kamailio: &Kamailio) -> SteadyCallers {
        let uri = format!("sip:moh@{}", kamailio.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut reports = Vec::new();
            while !stop_seen.load(Ordering::Relaxed) {
                reports.push(mohd_call(&uri, &["--seconds", &Self::SECONDS.to_string()]));
            }
            reports
        });
        SteadyCallers { stop, thread }
    }

    /// Stops them; every call must have been answered and heard to its end.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let reports = self.thread.join().expect("the steady callers' thread");
        for report in &reports {
            assert_heard_to_the_end(report, Self::SECONDS);
        }
        reports.len()
    }
}

/// "An upgrade of a box behind a proxy drops no caller": box A drains while it holds calls;
/// new calls go to B, A's callers hear their music to the end, A exits, the same program
/// starts again on A's address (as after an upgrade), probing puts it back and it takes calls;
/// callers through the proxy all along never notice.
fn drain_and_upgrade_drops_no_caller(kamailio: &Kamailio, a: Server, b: &Server) {
    const LONG_CALL_S: f64 = 5.0;
    let a_addr = a.sip;
    // Four calls at once: round-robin over A, B and C's slot (C is out, its turn goes on)
    // puts at least one on A.
    let proxy_uri = format!("sip:moh@{}", kamailio.addr);
    let long_calls: Vec<_> = (0..4)
        .map(|_| {
            let uri = proxy_uri.clone();
            std::thread::spawn(move || mohd_call(&uri, &["--seconds", &LONG_CALL_S.to_string()]))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || active_calls(&a)
            + active_calls(b)
            == 4),
        "the four long calls did not all start: A {} B {}",
        active_calls(&a),
        active_calls(b)
    );
    let on_a = active_calls(&a);
    assert!(on_a >= 1, "a long call on A");

    let steady = SteadyCallers::start(kamailio);
    std::thread::sleep(Duration::from_millis(500));
    a.control()
        .availability
        .start_drain(Instant::now(), Some(Duration::from_secs(30)));
    // A call A admitted just before is counted when its media starts, a moment later.
    std::thread::sleep(Duration::from_millis(300));
    let a_answered_at_drain = answered(&a);

    // New calls: none reaches A (an INVITE sent before the next probe gets 503 and moves on).
    sipp_calls(kamailio, 6, 300);
    kamailio.wait_for_state(a_addr, 'I', "a draining box");
    assert_eq!(
        answered(&a),
        a_answered_at_drain,
        "A took no new call while draining"
    );

    // A's callers kept their music to the end, and hung up themselves.
    for call in long_calls {
        assert_heard_to_the_end(&call.join().expect("a long call"), LONG_CALL_S);
    }
    // Its last call over, the drain is done: the process would exit here (SIGTERM's path);
    // in this test the box is stopped.
    assert!(
        wait_until(Duration::from_secs(5), || active_calls(&a) == 0),
        "A still has {} calls after its callers hung up",
        active_calls(&a)
    );
    drop(a);

    // The same program on the same address, as after an upgrade: back in rotation.
    let a = start_box(a_addr, None);
    kamailio.wait_for_state(a_addr, 'A', "an upgraded box");
    sipp_calls(kamailio, 6, 300);
    assert!(
        answered(&a) >= 2,
        "the upgraded box takes calls: {}",
        answered(&a)
    );

    let steady_calls = steady.finish();
    assert!(steady_calls >= 5, "steady callers: {steady_calls} calls");
    eprintln!(
        "drain and upgrade: {on_a} calls on A heard to the end, {steady_calls} calls through \
         the proxy meanwhile, none dropped"
    );
}

fn peers_ready() -> bool {
    kamailio_ready() && sipp_ready()
}

#[test]
fn a_fleet_behind_kamailio_spreads_calls_routes_around_stopped_and_unplayable_boxes() {
    if !peers_ready() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.flac");
    std::fs::write(&broken, "fLaC but not really").unwrap();

    let (a_addr, b_addr, c_addr) = (free_udp_addr(), free_udp_addr(), free_udp_addr());
    let a = start_box(a_addr, None);
    let mut b = Some(start_box(b_addr, None));
    let c = start_box(c_addr, Some(broken));
    let kamailio = Kamailio::start(&[a_addr, b_addr, c_addr]);

    // C has nothing playable: it answers OPTIONS 503, so probing takes it out before any call.
    kamailio.wait_for_state(c_addr, 'I', "a box with nothing playable");
    kamailio.wait_for_state(a_addr, 'A', "a healthy box");
    kamailio.wait_for_state(b_addr, 'A', "a healthy box");

    // Spread: every call answered, both healthy boxes take some, C none.
    sipp_calls(&kamailio, 12, 300);
    let b_answered = b.as_ref().map(answered).unwrap_or(0);
    assert_eq!(answered(&a) + b_answered, 12, "every call landed on A or B");
    assert!(
        answered(&a) >= 3 && b_answered >= 3,
        "calls spread: A {} B {b_answered}",
        answered(&a)
    );

    // B stops, and its address goes silent (a hung or unplugged box: nothing answers). Three
    // calls at once: round-robin offers one of them to B before any probe noticed; that caller
    // waits out the INVITE timeout and is answered by A.
    drop(b.take());
    let silent_b = UdpSocket::bind(b_addr).expect("hold B's address silent");
    let a_before = answered(&a);
    let mut placed = 0;
    let mut setups = Vec::new();
    let failed_over = (0..3).any(|_| {
        // A probe can notice B first (one sent while B was stopping times out a second
        // later, before these callers' processes are up): then an operator's "B is back"
        // (`kamcmd dispatcher.set_state ap 1 sip:B`) makes the next callers meet it again.
        if kamailio.state_of(b_addr) != Some('A') {
            kamailio.set_state(b_addr, "ap");
        }
        let reports = concurrent_calls(&kamailio, 3, 1.0);
        placed += reports.len() as u64;
        for report in &reports {
            assert_heard_to_the_end(report, 1.0);
        }
        let round: Vec<f64> = reports
            .iter()
            .filter_map(|r| r["setup_ms"].as_f64())
            .collect();
        let slowest = round.iter().copied().fold(0.0, f64::max);
        setups.push(round);
        slowest >= f64::from(INVITE_TIMEOUT_MS) * 0.9
    });
    assert!(
        failed_over,
        "a call should have failed over from B after the INVITE timeout: setups (ms) {setups:?}\n{}",
        kamailio.log()
    );
    assert_eq!(
        answered(&a) - a_before,
        placed,
        "A took every call while B was down"
    );
    // The example's failure route logs the box it took out.
    assert!(
        kamailio
            .full_log()
            .contains(&format!("mohd box sip:{b_addr} timed out: marked inactive")),
        "the INVITE timeout should have marked B inactive\n{}",
        kamailio.log()
    );
    kamailio.wait_for_state(b_addr, 'I', "a stopped box");

    // B comes back on the same address: probing marks it active and it takes calls again.
    drop(silent_b);
    let b = start_box(b_addr, None);
    kamailio.wait_for_state(b_addr, 'A', "a box that came back");
    sipp_calls(&kamailio, 6, 300);
    assert!(
        answered(&b) >= 2,
        "the returned box takes calls: B {}",
        answered(&b)
    );

    drain_and_upgrade_drops_no_caller(&kamailio, a, &b);

    assert_eq!(
        answered(&c),
        0,
        "the box with nothing playable never got a call"
    );
    eprintln!(
        "kamailio fleet test: {:.1} s wall time",
        started.elapsed().as_secs_f64()
    );
}

/// Every mohd configuration in pbx-examples/ is one mohd accepts, as written.
#[test]
fn pbx_examples_mohd_configs_load() {
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(repo_path("pbx-examples")).expect("pbx-examples/") {
        let config = entry.expect("a folder").path().join("mohd.toml");
        if config.exists() {
            if let Err(e) = Config::load(&config) {
                panic!("{e}");
            }
            loaded.push(config);
        }
    }
    assert!(
        loaded.len() >= 2,
        "the examples' mohd.toml files: {loaded:?}"
    );
    let registering = Config::load(&repo_path("pbx-examples/freepbx-3cx/mohd.toml")).unwrap();
    assert_eq!(registering.registrations.len(), 1);
}
