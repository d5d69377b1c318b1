//! Registering with a PBX: `mohd serve` against a real registrar on 127.0.0.1 that challenges
//! with digest: sipp (Debian `sip-tester`) running tests/sipp/registrar.xml as a UAS, which
//! checks mohd's `Authorization` with sipp's own digest code and grants 4 s bindings so that
//! refreshes come quickly. Also the `[[registration]]` and `[sip.auth]` config keys.
//!
//! Without sipp the sipp tests print a notice and pass, except under CI (`CI` set), where a
//! missing sipp is a failure: `scripts/setup-deps` installs it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mohd_bin, sipp_ready, wait_until};
use mohd::config::Config;
use mohd::sip::endpoint::Transport;

/// Generous: the machine is shared and slow at times; only ever waited for, never asserted.
const PATIENCE: Duration = Duration::from_secs(40);

/// A sipp registrar, killed on drop. Its message trace is what it received and sent.
struct Registrar {
    child: Child,
    messages: PathBuf,
}

impl Registrar {
    fn start(dir: &Path, port: u16, nonce: &str) -> Registrar {
        let messages = dir.join(format!("registrar-{nonce}.log"));
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/registrar.xml");
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(scenario)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-key", "nonce", nonce])
            .args(["-nostdin", "-trace_msg", "-message_file"])
            .arg(&messages)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sipp");
        Registrar { child, messages }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.messages).unwrap_or_default()
    }

    /// Messages sent or received whose start line begins with `start`.
    fn count(&self, start: &str) -> usize {
        self.log().lines().filter(|l| l.starts_with(start)).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `mohd serve` with its log (stderr) collected, killed on drop.
struct Mohd {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Mohd {
    fn start(config: &Path) -> Mohd {
        let mut child = Command::new(mohd_bin())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("STATE_DIRECTORY", config.with_extension("state"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mohd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("mohd: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Mohd { child, log }
    }

    fn lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// SIGTERM, as systemd stops it, and wait for the exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let exited = wait_until(PATIENCE, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "mohd did not exit after SIGTERM");
    }
}

impl Drop for Mohd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn write_config(dir: &Path, registrar_port: u16, password: &str) -> PathBuf {
    let path = dir.join("mohd.toml");
    std::fs::write(
        &path,
        format!(
            "[sip]\nlisten = \"udp:127.0.0.1:0\"\n\
             [channels.default]\nmusic = \"demo\"\n\
             [dialplan]\ndefault = \"default\"\n\
             [[registration]]\nregistrar = \"sip:127.0.0.1:{registrar_port}\"\n\
             user = \"moh\"\npassword = \"{password}\"\nexpires = 60\n"
        ),
    )
    .unwrap();
    path
}

/// The log line the registration module writes when a binding is (newly) accepted.
const REGISTERED: &str = "mohd::sip::register: registered aor=sip:moh@127.0.0.1";

#[test]
fn registers_refreshes_and_survives_a_registrar_restart() {
    if !sipp_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = Registrar::start(dir.path(), port, "first-nonce");
    let mut mohd = Mohd::start(&write_config(dir.path(), port, "hold-me"));

    // Registered: mohd says so, and the registrar accepted (200) the challenged REGISTER.
    assert!(
        wait_until(PATIENCE, || mohd.lines_with(REGISTERED) >= 1),
        "mohd never logged the registration\n{}",
        first.log()
    );
    // Refreshed: the 4 s binding is renewed before it runs out, at least twice more.
    assert!(
        wait_until(PATIENCE, || first.count("SIP/2.0 200 OK") >= 3),
        "the registrar did not see two refreshes\n{}",
        first.log()
    );
    let log = first.log();
    assert_eq!(first.count("SIP/2.0 401"), 1, "challenged once\n{log}");
    assert_eq!(first.count("SIP/2.0 403"), 0, "a bad digest\n{log}");
    assert!(log.contains("nonce=\"first-nonce\""), "{log}");
    // One binding: every REGISTER has the same Call-ID (RFC 3261 §10.2.4).
    let mut call_ids: Vec<&str> = log.lines().filter(|l| l.starts_with("Call-ID:")).collect();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 1, "{call_ids:?}");

    // The registrar restarts: it forgets the binding and its nonce. mohd's next refresh is
    // challenged with the new nonce, and it registers again.
    first.stop();
    let mut second = Registrar::start(dir.path(), port, "second-nonce");
    assert!(
        wait_until(PATIENCE, || second.count("SIP/2.0 200 OK") >= 1),
        "no successful REGISTER after the registrar restarted\n{}",
        second.log()
    );
    let log = second.log();
    assert!(second.count("SIP/2.0 401") >= 1, "{log}");
    assert_eq!(second.count("SIP/2.0 403"), 0, "{log}");
    assert!(log.contains("nonce=\"second-nonce\""), "{log}");

    // Stopping mohd removes the binding (Expires: 0), so the PBX stops sending it calls.
    mohd.terminate();
    let log = second.log();
    assert!(
        log.contains("Expires: 0"),
        "no unregister at shutdown\n{log}"
    );
    assert!(
        mohd.lines_with("mohd::sip::register: unregistered") >= 1,
        "the unregister was not logged"
    );
    second.stop();
}

#[test]
fn a_wrong_password_is_refused_and_logged() {
    if !sipp_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let registrar = Registrar::start(dir.path(), port, "n");
    let mohd = Mohd::start(&write_config(dir.path(), port, "not-the-password"));
    assert!(
        wait_until(PATIENCE, || mohd
            .lines_with("registration failed aor=sip:moh@127.0.0.1")
            >= 1),
        "the failure was not logged\n{}",
        registrar.log()
    );
    assert!(registrar.count("SIP/2.0 403") >= 1, "{}", registrar.log());
    assert_eq!(registrar.count("SIP/2.0 200 OK"), 0);
    assert_eq!(mohd.lines_with(REGISTERED), 0);
}

// ---------------------------------------------------------------------------------------------
// Config.

const BASE: &str = "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n";

fn load(extra: &str) -> Result<Config, mohd::config::ConfigError> {
    Config::from_str(&format!("{BASE}{extra}"), Path::new("/etc/mohd/mohd.toml"))
}

fn error(extra: &str) -> String {
    match load(extra) {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn registration_config_defaults_and_every_key() {
    let c = load(
        "[[registration]]\nregistrar = \"sip:pbx.example.com\"\nuser = \"moh\"\n\
         password = \"pw\"\n\
         [[registration]]\nregistrar = \"sip:192.0.2.1:5070\"\nuser = \"7000\"\n\
         auth_user = \"moh-auth\"\npassword = \"pw2\"\ndomain = \"office.example\"\n\
         realm = \"asterisk\"\nexpires = 120\ncontact_user = \"hold\"\ntransport = \"udp\"\n",
    )
    .unwrap();
    assert_eq!(c.registrations.len(), 2);
    let a = &c.registrations[0];
    assert_eq!(a.registrar, "sip:pbx.example.com");
    assert_eq!(a.expires, Duration::from_secs(300));
    assert_eq!((a.auth_user.as_deref(), a.domain.as_deref()), (None, None));
    assert_eq!(a.transport, Transport::Udp);
    let b = &c.registrations[1];
    assert_eq!(b.user, "7000");
    assert_eq!(b.auth_user.as_deref(), Some("moh-auth"));
    assert_eq!(b.domain.as_deref(), Some("office.example"));
    assert_eq!(b.realm.as_deref(), Some("asterisk"));
    assert_eq!(b.expires, Duration::from_secs(120));
    assert_eq!(b.contact_user.as_deref(), Some("hold"));
    // A debug print of the config (as in a bug report) does not show the passwords.
    let printed = format!("{c:?}");
    assert!(
        printed.contains("moh-auth") && !printed.contains("pw2"),
        "{printed}"
    );
    assert!(load("").unwrap().registrations.is_empty());
}

#[test]
fn registration_config_errors_name_line_and_key() {
    let reg = |body: &str| format!("[[registration]]\n{body}");
    let e = error(&reg(
        "registrar = \"sip:moh@pbx\"\nuser = \"moh\"\npassword = \"x\"\n",
    ));
    assert!(
        e.starts_with("/etc/mohd/mohd.toml:6:13: [[registration]] registrar:"),
        "{e}"
    );
    assert!(e.contains("names the server, not a user"), "{e}");
    let e = error(&reg(
        "registrar = \"pbx.example.com\"\nuser = \"moh\"\npassword = \"x\"\n",
    ));
    assert!(e.contains("write e.g. \"sip:pbx.example.com\""), "{e}");
    let e = error(&reg(
        "registrar = \"sip:pbx\"\nuser = \"moh@pbx\"\npassword = \"x\"\n",
    ));
    assert!(
        e.contains("[[registration]] user:") && e.contains("domain"),
        "{e}"
    );
    let e = error(&reg(
        "registrar = \"sip:pbx\"\nuser = \"moh\"\npassword = \"x\"\nexpires = 5\n",
    ));
    assert!(
        e.contains(":9:") && e.contains("expires: 5: must be within 10..=86400"),
        "{e}"
    );
    let e = error(&reg(
        "registrar = \"sip:pbx\"\nuser = \"moh\"\npassword = \"x\"\ntransport = \"sctp\"\n",
    ));
    assert!(e.contains("[[registration]] transport:"), "{e}");
    let e = error(&reg("registrar = \"sip:pbx\"\nuser = \"moh\"\n"));
    assert!(
        e.contains("missing key `password`") || e.contains("password"),
        "{e}"
    );
    let e = error(&reg(
        "registrar = \"sip:pbx\"\nuser = \"moh\"\npassword = \"\"\n",
    ));
    assert!(
        e.contains("[[registration]] password: must not be empty"),
        "{e}"
    );
    let e = error(&reg(
        "registrar = \"sip:pbx\"\nuser = \"moh\"\npassword = \"x\"\nexpire = 60\n",
    ));
    assert!(e.contains("unknown key `expire`"), "{e}");
    let twice = reg("registrar = \"sip:pbx\"\nuser = \"moh\"\npassword = \"x\"\n");
    let e = error(&format!("{twice}{twice}"));
    assert!(e.contains("registered twice"), "{e}");
}

#[test]
fn sip_auth_config_forms_and_errors() {
    let c = load("[sip.auth]\nrealm = \"moh\"\nusers = { pbx = \"s3cret\", sbc = \"other\" }\n")
        .unwrap();
    let auth = c.sip.auth.unwrap();
    assert_eq!(auth.realm, "moh");
    assert!(auth.invite, "INVITEs are challenged by default");
    assert_eq!(auth.users.get("pbx").map(String::as_str), Some("s3cret"));
    assert_eq!(auth.users.len(), 2);
    let printed = format!("{auth:?}");
    assert!(
        printed.contains("sbc") && !printed.contains("s3cret"),
        "{printed}"
    );

    let c = load(
        "[sip.auth]\nrealm = \"moh\"\ninvite = false\n\
         users = [{ name = \"pbx\", password = \"s3cret\" }]\n",
    )
    .unwrap();
    let auth = c.sip.auth.unwrap();
    assert!(!auth.invite);
    assert_eq!(auth.users.get("pbx").map(String::as_str), Some("s3cret"));
    assert!(load("").unwrap().sip.auth.is_none());

    let e = error("[sip.auth]\nrealm = \"moh\"\nusers = {}\n");
    assert!(e.contains("[sip.auth] users: no user"), "{e}");
    let e = error("[sip.auth]\nrealm = \"moh\"\nusers = { pbx = \"\" }\n");
    assert!(e.contains("the password must not be empty"), "{e}");
    let e = error("[sip.auth]\nrealm = \"\"\nusers = { pbx = \"x\" }\n");
    assert!(e.contains("[sip.auth] realm:"), "{e}");
    let e = error("[sip.auth]\nrealm = \"moh\"\nusers = 3\n");
    assert!(e.contains("users"), "{e}");
    let e = error("[sip.auth]\nrealm = \"moh\"\nusers = [{ name = \"a\" }]\n");
    assert!(e.contains("password"), "{e}");
}
