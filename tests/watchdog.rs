//! "Supervised": mohd tells systemd it is ready and pets the watchdog from the media loop, so a
//! wedged media loop stops the pets (and systemd, with `WatchdogSec=`, restarts it).
//!
//! Each test plays systemd: it binds a Unix datagram socket, starts the mohd binary with
//! `NOTIFY_SOCKET` pointing at it and `WATCHDOG_USEC=200000`, and reads what arrives. Waits are
//! generous; nothing is timed tightly.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pet interval asked for: 200 ms, so mohd pets every 100 ms.
const WATCHDOG_USEC: &str = "200000";

struct Supervised {
    child: Child,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Supervised {
    /// Starts `mohd serve` as systemd would, with extra environment.
    fn start(env: &[(&str, &str)]) -> Supervised {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let state = dir.path().join("state");
        let mut cmd = Command::new(common::mohd_bin());
        cmd.args(["serve", "--sip", "127.0.0.1:0", "--web", "off"])
            .env("STATE_DIRECTORY", &state)
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .env_remove("MOHD_TEST_STALL_MEDIA_AFTER_MS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start mohd");
        Supervised {
            child,
            socket,
            _dir: dir,
        }
    }

    /// The next notification, or `None` when `until` passes first.
    fn next(&self, until: Instant) -> Option<String> {
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Waits (up to a minute: the channels render first) for `READY=1`.
    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while let Some(m) = self.next(until) {
            if m.lines().any(|l| l == "READY=1") {
                return;
            }
        }
        panic!("no READY=1 within 60 s");
    }

    /// Counts `WATCHDOG=1` messages over `d`.
    fn pets_during(&self, d: Duration) -> usize {
        let until = Instant::now() + d;
        let mut pets = 0;
        while let Some(m) = self.next(until) {
            pets += m.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
        pets
    }
}

#[test]
fn ready_then_pets_keep_coming() {
    let mohd = Supervised::start(&[]);
    mohd.wait_ready();
    // Every 100 ms: about 20 in 2 s; 5 is a generous floor for a loaded machine.
    let pets = mohd.pets_during(Duration::from_secs(2));
    assert!(pets >= 5, "only {pets} watchdog pets in 2 s");
    // And still coming later.
    let pets = mohd.pets_during(Duration::from_secs(2));
    assert!(pets >= 5, "only {pets} watchdog pets in the next 2 s");
}

#[test]
fn a_wedged_media_loop_stops_the_pets() {
    let mohd = Supervised::start(&[("MOHD_TEST_STALL_MEDIA_AFTER_MS", "1000")]);
    mohd.wait_ready();
    // Pets arrive until the loop wedges, then stop: wait for a 2.5 s silence (at most 30 s).
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut pets = 0;
    let mut last_pet = Instant::now();
    loop {
        let quiet_until = last_pet + Duration::from_millis(2500);
        match mohd.next(quiet_until.min(give_up)) {
            Some(m) => {
                let n = m.lines().filter(|l| *l == "WATCHDOG=1").count();
                if n > 0 {
                    pets += n;
                    last_pet = Instant::now();
                }
            }
            None if Instant::now() >= give_up => {
                panic!("watchdog pets kept coming for 30 s from a wedged media loop")
            }
            None => break,
        }
    }
    assert!(pets >= 1, "no pet arrived before the wedge");
    // Wedged, not dead: exactly the case only a watchdog catches.
    let mut mohd = mohd;
    assert!(
        mohd.child.try_wait().expect("try_wait").is_none(),
        "mohd exited instead of hanging"
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_petted() {
    // systemd sets WATCHDOG_PID to its main process; a child (or mohd started by a wrapper
    // that is the main process) must not pet on its behalf.
    let mohd = Supervised::start(&[("WATCHDOG_PID", "1")]);
    mohd.wait_ready();
    assert_eq!(mohd.pets_during(Duration::from_secs(2)), 0);
}
