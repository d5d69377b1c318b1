//! The Debian package: built with cargo-deb from the binary under test, its contents checked
//! (files, dependencies, conffiles, maintainer scripts, the systemd unit), then the packaged
//! binary run the way the unit runs it, supervised like systemd would (READY=1 and watchdog
//! pings on `$NOTIFY_SOCKET`), and called: a fresh install must play music.
//!
//! systemd cannot run as PID 1 here, so the unit is not started; the test reproduces what it
//! gives the process (the command line, `$STATE_DIRECTORY`, `$NOTIFY_SOCKET`, `$WATCHDOG_USEC`,
//! a bare environment, SIGTERM to stop).
//!
//! The package is built from the test's own `mohd` binary (copied to where cargo-deb expects
//! a release build, in a private target dir): fast, never stale, and the same metadata as the
//! real `cargo deb`. Without cargo-deb the test is skipped with a notice, except under CI
//! (`CI` set), where it fails: `scripts/setup-deps` installs it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{best_circular_correlation, mohd_bin, mohd_call, read_wav_mono};

/// Long enough for a loaded CI box; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn package_installs_a_supervised_service_that_plays_music() {
    if !tools_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());

    // --- What the package installs.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./"))
        .collect();
    for want in [
        "usr/bin/mohd",
        "etc/mohd/mohd.toml",
        "usr/share/doc/mohd/README.md",
    ] {
        assert!(
            files.contains(&want),
            "{want} not in the package:\n{listing}"
        );
    }
    let unit_path = [
        "usr/lib/systemd/system/mohd.service",
        "lib/systemd/system/mohd.service",
    ]
    .into_iter()
    .find(|p| files.contains(p))
    .unwrap_or_else(|| panic!("no mohd.service in the package:\n{listing}"));

    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    // libasound2, or libasound2t64 where the package is built on a t64 release.
    assert!(depends.contains("libasound2"), "Depends: {depends}");
    assert!(depends.contains("adduser"), "Depends: {depends}");

    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = read(&control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l.trim() == "/etc/mohd/mohd.toml"),
        "an upgrade would overwrite the admin's config: conffiles = {conffiles:?}"
    );
    let postinst = read(&control.join("postinst"));
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper enable mohd.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-invoke $_dh_action mohd.service"),
        "{postinst}"
    );
    let postrm = read(&control.join("postrm"));
    assert!(postrm.contains("rm -rf /var/lib/mohd"), "{postrm}");
    for (name, script) in [("postinst", &postinst), ("postrm", &postrm)] {
        assert!(
            !script.contains("#DEBHELPER#"),
            "{name}: token not replaced"
        );
        let syntax = Command::new("sh")
            .arg("-n")
            .arg(control.join(name))
            .status()
            .unwrap();
        assert!(syntax.success(), "{name} is not valid sh");
    }

    // --- The unit.
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit_file = root.join(unit_path);
    let unit = parse_unit(&read(&unit_file));
    let key = |k: &str| unit.get(k).map(|v| v.join(" ")).unwrap_or_default();
    assert_eq!(key("Type"), "notify", "mohd says when it is ready");
    assert!(
        !key("WatchdogSec").is_empty(),
        "a stuck mohd must be restarted"
    );
    assert_eq!(key("Restart"), "always");
    assert_eq!(
        key("StartLimitIntervalSec"),
        "0",
        "never give up restarting"
    );
    assert_eq!(key("User"), "mohd");
    assert_eq!(key("StateDirectory"), "mohd");
    assert_eq!(key("NoNewPrivileges"), "yes");
    assert_eq!(key("ProtectSystem"), "strict");
    assert!(
        key("SupplementaryGroups").contains("audio"),
        "the line-out needs /dev/snd"
    );
    // src/rtp/shell.rs asks for SCHED_FIFO priority 40; RLIMIT_RTPRIO must allow it.
    let rtprio: u32 = key("LimitRTPRIO").parse().unwrap_or(0);
    assert!(
        rtprio >= 40,
        "LimitRTPRIO={rtprio}: the media thread could not go real-time"
    );
    assert_eq!(
        key("WantedBy"),
        "multi-user.target",
        "enabled means started at boot"
    );
    let exec = key("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        argv,
        ["/usr/bin/mohd", "serve", "--config", "/etc/mohd/mohd.toml"]
    );
    verify_unit(&unit_file, &root);

    // --- Run it as the unit does, on free loopback ports, with a private state folder.
    let etc_config = root.join("etc/mohd/mohd.toml");
    let state = tmp.path().join("state");
    let state_dir = format!("dir = {:?}", state.display().to_string());
    let config = rewrite(
        &read(&etc_config),
        &[
            ("\"udp:0.0.0.0:5060\"", "\"udp:127.0.0.1:0\""),
            ("\"tcp:0.0.0.0:5060\"", "\"tcp:127.0.0.1:0\""),
            ("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\""),
            ("dir = \"/var/lib/mohd\"", &state_dir),
            // "auto" would play the test on a developer's speakers.
            ("enabled = \"auto\"", "enabled = false"),
        ],
    );
    assert!(config.contains("music = \"library\""), "{config}");
    std::fs::write(&etc_config, config).unwrap();

    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut notes = Notes::listen(notify);
    let mut server = PackagedServer::start(&root, &state, &notify_path);

    notes.wait_for("READY=1", &mut server);
    let udp = server.listener("udp");
    let tcp = server.listener("tcp");

    // A fresh install plays the built-in melody (the library is empty), over UDP and TCP.
    let record = tmp.path().join("heard.wav");
    let report = mohd_call(
        &format!("sip:moh@{udp}"),
        &["--seconds", "3", "--record", record.to_str().unwrap()],
    );
    assert!(
        report["stats"]["packets"].as_u64().unwrap() >= 50,
        "{report}"
    );
    assert_hears_demo(&read_wav_mono(&record));
    let report = mohd_call(
        &format!("sip:moh@{tcp}"),
        &["--transport", "tcp", "--seconds", "1"],
    );
    assert!(report["stats"]["packets"].as_u64().unwrap() > 0, "{report}");

    // Alive and saying so: systemd kills a service whose pings stop for WatchdogSec.
    notes.wait_for("WATCHDOG=1", &mut server);

    // `systemctl stop`: SIGTERM, and a clean exit (not logged as a failure).
    let status = server.stop();
    assert!(status.success(), "mohd exited with {status} on SIGTERM");
}

/// cargo-deb and dpkg-deb present, or a reason printed (a failure under CI).
fn tools_ready() -> bool {
    let cargo_deb = Command::new(cargo())
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let dpkg_deb = Command::new("dpkg-deb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if cargo_deb && dpkg_deb {
        return true;
    }
    let missing = if cargo_deb {
        "dpkg-deb is not installed (Debian package dpkg)"
    } else {
        "cargo-deb is not installed (cargo install cargo-deb --locked; scripts/setup-deps does it)"
    };
    if std::env::var_os("CI").is_some() {
        panic!("{missing}");
    }
    eprintln!("NOTICE: {missing}: skipping the package test");
    false
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Builds the .deb from the test's binary; returns its path.
fn build_deb(tmp: &Path) -> PathBuf {
    let target = tmp.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(mohd_bin(), target.join("release/mohd")).unwrap();
    let out = tmp.join("deb");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // --fast and no debug-symbol split: a debug binary's symbols would take half a minute to
    // separate and compress, and that step is cargo-deb's, not ours.
    run(Command::new(cargo())
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--no-separate-debug-symbols",
            "--strip",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--output")
        .arg(&out)
        .env("CARGO_TARGET_DIR", &target));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "expected one .deb in {}: {debs:?}",
        out.display()
    );
    debs.into_iter().next().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `Key=value` lines of a unit file, every section together; a repeated key keeps each value.
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    keys
}

/// `systemd-analyze verify` when systemd is installed (it is not in every CI image). The
/// unit's ExecStart must exist, so it is pointed at the extracted binary.
fn verify_unit(unit_file: &Path, root: &Path) {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("NOTICE: systemd-analyze is not installed: the unit is not verified");
        return;
    }
    let dir = root.join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let text = read(unit_file).replace(
        "ExecStart=/usr/bin/mohd",
        &format!("ExecStart={}", root.join("usr/bin/mohd").display()),
    );
    let copy = dir.join("mohd.service");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown or misspelt directives are only warnings to systemd, and silently unapplied.
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Failed to parse"),
        "systemd-analyze verify: {stderr}"
    );
}

/// Replaces each `from` (which must be there: the packaged config is what is being tested).
fn rewrite(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "packaged config lacks {from}:\n{text}");
        text = text.replace(from, to);
    }
    text
}

/// What mohd tells the service manager on `$NOTIFY_SOCKET`, line by line.
struct Notes {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Notes {
    fn listen(sock: UnixDatagram) -> Notes {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if tx.send(line.to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        Notes {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the line `want`; fails at once if mohd exits first.
    fn wait_for(&mut self, want: &str, server: &mut PackagedServer) {
        let end = Instant::now() + PATIENCE;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(note) => {
                    let hit = note == want;
                    self.seen.push(note);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = server.child.try_wait().unwrap() {
                        panic!("mohd exited ({status}) before {want}; got {:?}", self.seen);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no {want} on NOTIFY_SOCKET within {PATIENCE:?}; got {:?}",
            self.seen
        );
    }
}

/// The recording is the demo melody, as an empty library promises: not silence, not noise.
fn assert_hears_demo(heard: &[i16]) {
    let render =
        mohd::channel::ChannelRender::render("default", &mohd::channel::MusicSource::Demo, -18.0);
    // An eighth of a second from the middle, clear of call setup and teardown; long enough to
    // be unambiguous, short enough for the unoptimised correlation.
    let mid = heard.len() / 2;
    let chunk = heard.get(mid..mid + 1000).expect("recording too short");
    let rms = (chunk.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 1000.0).sqrt();
    assert!(rms > 300.0, "the caller hears (near) silence: RMS {rms:.0}");
    let (corr, _) = best_circular_correlation(chunk, &render.pcm);
    assert!(
        corr > 0.9,
        "the caller hears something other than the demo melody: {corr:.3}"
    );
}

/// The packaged binary, started like the unit starts it; killed on drop.
struct PackagedServer {
    child: Child,
    listeners: mpsc::Receiver<(String, SocketAddr)>,
    known: Vec<(String, SocketAddr)>,
}

impl PackagedServer {
    fn start(root: &Path, state: &Path, notify: &Path) -> PackagedServer {
        std::fs::create_dir_all(state).unwrap();
        let mut child = Command::new(root.join("usr/bin/mohd"))
            .arg("serve")
            .arg("--config")
            .arg(root.join("etc/mohd/mohd.toml"))
            // systemd gives a service a bare environment plus these.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", state)
            .env("STATE_DIRECTORY", state)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "10000000")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the packaged mohd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("mohd: {line}");
                if let Some(rest) = line.strip_prefix("mohd: SIP listening on ")
                    && let Some((transport, addr)) = rest.trim().split_once(':')
                    && let Ok(addr) = addr.parse::<SocketAddr>()
                {
                    let _ = tx.send((transport.to_owned(), addr));
                }
            }
        });
        PackagedServer {
            child,
            listeners: rx,
            known: Vec::new(),
        }
    }

    fn listener(&mut self, transport: &str) -> SocketAddr {
        loop {
            if let Some((_, a)) = self.known.iter().find(|(t, _)| t == transport) {
                return *a;
            }
            match self.listeners.recv_timeout(PATIENCE) {
                Ok(l) => self.known.push(l),
                Err(_) => panic!("no {transport} listener announced; got {:?}", self.known),
            }
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let end = Instant::now() + PATIENCE;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mohd did not exit within {PATIENCE:?} of SIGTERM");
    }
}

impl Drop for PackagedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
