//! Telling systemd how mohd is doing: `READY=1` once SIP listens, `STOPPING=1` at shutdown,
//! `STATUS=` lines, and the watchdog (`WatchdogSec=` in the unit).
//!
//! Readiness and status go through the sd-notify crate (a no-op without `NOTIFY_SOCKET`). The
//! watchdog pet is hand-written on top of it: the crate opens, connects and closes a blocking
//! socket for every message, and the pet is sent from the media thread, which must never
//! block. [`Watchdog`] keeps one non-blocking datagram socket connected to `NOTIFY_SOCKET`
//! (also in the abstract namespace, `@name`, which the crate does not handle), so a full
//! notification queue costs one skipped pet, not a stalled loop.
//!
//! The pet comes only from the media loop's own iteration (see `rtp::shell`): a wedged media
//! thread stops the pets and systemd restarts mohd, while a live one keeps petting whatever
//! the SIP side or the web page are doing.
//!
//! Test hook: `MOHD_TEST_STALL_MEDIA_AFTER_MS=N` makes the media loop wedge itself N ms after
//! it starts (it sleeps forever inside its loop, sending nothing, petting nothing). It exists
//! only so `tests/watchdog.rs` can show that a wedged loop stops the pets; never set it in
//! production.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Environment variable of the test hook (see the module documentation).
pub const TEST_STALL_ENV: &str = "MOHD_TEST_STALL_MEDIA_AFTER_MS";

/// Tells systemd that mohd is up (SIP listening). Without `NOTIFY_SOCKET` it does nothing.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd that mohd is shutting down (hanging up calls).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A one-line status for `systemctl status`.
pub fn status(text: &str) {
    // A newline would end the STATUS= field and start a bogus one.
    let line = text.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// The test hook's delay, if set (see the module documentation).
pub fn test_stall_media_after() -> Option<Duration> {
    let ms = std::env::var(TEST_STALL_ENV)
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    tracing::warn!(
        "{TEST_STALL_ENV} is set: the media thread will wedge itself after {ms} ms (test hook)"
    );
    Some(Duration::from_millis(ms))
}

/// The systemd watchdog: sends `WATCHDOG=1` at most every half interval.
#[derive(Debug)]
pub struct Watchdog {
    interval: Duration,
    socket: UnixDatagram,
    /// When the next pet is due; `None` before the first.
    next_due: Option<Instant>,
    failures: u64,
}

impl Watchdog {
    /// The watchdog systemd asked for, if any: `WATCHDOG_USEC` set (and `WATCHDOG_PID` unset
    /// or ours, as sd-notify checks) and `NOTIFY_SOCKET` reachable.
    pub fn from_env() -> Option<Watchdog> {
        let interval = sd_notify::watchdog_enabled()?;
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Watchdog::connect(interval, &path) {
            Ok(w) => {
                tracing::info!(
                    interval_ms = interval.as_millis() as u64,
                    "systemd watchdog enabled: the media loop pets it"
                );
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "systemd watchdog requested but NOTIFY_SOCKET is unusable");
                None
            }
        }
    }

    /// A watchdog of `interval` sending to the datagram socket at `path` (`@name`: abstract).
    pub fn connect(interval: Duration, path: &std::ffi::OsStr) -> std::io::Result<Watchdog> {
        let socket = UnixDatagram::unbound()?;
        match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.connect_addr(&addr)?;
            }
            None => socket.connect(path)?,
        }
        socket.set_nonblocking(true)?;
        Ok(Watchdog {
            interval,
            socket,
            next_due: None,
            failures: 0,
        })
    }

    /// The interval systemd restarts mohd after without a pet.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When [`Watchdog::pet`] will next send (the loop must wake by then); `None` before the
    /// first pet.
    pub fn next_pet(&self) -> Option<Instant> {
        self.next_due
    }

    /// Pets the watchdog if half an interval has passed since the last pet. Never blocks.
    pub fn pet(&mut self, now: Instant) {
        if self.next_due.is_some_and(|t| now < t) {
            return;
        }
        let half = self.interval / 2;
        match self.socket.send(b"WATCHDOG=1\n") {
            Ok(_) => self.next_due = Some(now + half),
            // Queue full: try again soon, well within the interval.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.next_due = Some(now + (self.interval / 8).min(Duration::from_millis(50)));
            }
            Err(e) => {
                // Log the first failure and then rarely: the pet is due every half interval.
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = self.failures, "cannot pet the systemd watchdog");
                }
                self.next_due = Some(now + half);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(interval: Duration) -> (tempfile::TempDir, UnixDatagram, Watchdog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let w = Watchdog::connect(interval, path.as_os_str()).unwrap();
        (dir, rx, w)
    }

    fn received(rx: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn pets_at_most_every_half_interval() {
        let (_dir, rx, mut w) = pair(Duration::from_secs(10));
        let t0 = Instant::now();
        // A media loop turning every 10 ms for 20 s of virtual time.
        for k in 0..2000u32 {
            w.pet(t0 + Duration::from_millis(10) * k);
        }
        let got = received(&rx);
        // At 0, 5, 10 and 15 s.
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got.iter().all(|m| m == "WATCHDOG=1\n"));
        assert_eq!(w.interval(), Duration::from_secs(10));
    }

    #[test]
    fn a_full_queue_does_not_block_and_retries() {
        let (_dir, rx, mut w) = pair(Duration::from_millis(2));
        let t0 = Instant::now();
        // Nobody reads: the queue fills, and pet keeps returning at once.
        for k in 0..100_000u32 {
            w.pet(t0 + Duration::from_millis(1) * k);
        }
        let queued = received(&rx).len();
        assert!(queued > 0 && queued < 100_000, "{queued}");
        // Once drained, the next due pet goes out.
        w.pet(t0 + Duration::from_secs(1000));
        assert_eq!(received(&rx).len(), 1);
    }

    #[test]
    fn abstract_socket_names_work() {
        let name = format!("mohd-test-{}-{}", std::process::id(), rand::random::<u32>());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut w = Watchdog::connect(
            Duration::from_secs(1),
            std::ffi::OsStr::new(&format!("@{name}")),
        )
        .unwrap();
        w.pet(Instant::now());
        assert_eq!(received(&rx), vec!["WATCHDOG=1\n".to_string()]);
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Watchdog::connect(Duration::from_secs(1), dir.path().join("none").as_os_str()).is_err()
        );
    }
}
