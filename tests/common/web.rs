//! A mohd server with its web listener, a state folder, an admin password and an API token:
//! the harness of the web, crash-safety and playlist-change tests. It runs in process, except
//! for the crash-safety tests, which kill it and so need a `mohd serve` child.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mohd::config::Config;
use mohd::server::Environment;
use mohd::web::auth::AuthStore;

use super::http::{self, Auth};
use super::{Server, mohd_bin};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct WebServer {
    pub sip: SocketAddr,
    pub web: SocketAddr,
    pub token: String,
    /// Where it runs; dropped (stopped) before `dir`.
    process: Process,
    pub dir: tempfile::TempDir,
    extra_config: String,
}

enum Process {
    InProcess(Box<Server>),
    Child(Child),
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Process::Child(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl WebServer {
    /// A fresh state folder; `extra_config` is appended to the config's `[web]` table.
    pub fn start(extra_web_config: &str) -> WebServer {
        WebServer::start_in_process(extra_web_config, Environment::with_probe(mohd_bin()))
    }

    /// As `start`, with the media loop's test hook: it wedges itself after `stall_after`.
    pub fn start_stalling_media(extra_web_config: &str, stall_after: Duration) -> WebServer {
        let mut env = Environment::with_probe(mohd_bin());
        env.stall_media_after = Some(stall_after);
        WebServer::start_in_process(extra_web_config, env)
    }

    fn start_in_process(extra_web_config: &str, env: Environment) -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut auth = AuthStore::open(&state).unwrap();
        auth.set_password(PASSWORD).unwrap();
        let token = auth.new_token("tests").unwrap();
        let config = write_config(dir.path(), extra_web_config);
        let config = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::in_configured_state(config, env);
        WebServer {
            sip: server.sip,
            web: server.web.expect("web listener"),
            token,
            process: Process::InProcess(Box::new(server)),
            dir,
            extra_config: extra_web_config.to_owned(),
        }
    }

    /// A `mohd serve` child, for tests that kill it (`kill_and_restart`). Its password and
    /// token are set with `mohd passwd` and `mohd token`, as an admin would.
    pub fn start_binary(extra_web_config: &str) -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        set_password(&dir.path().join("state"), PASSWORD);
        let token = new_token(&dir.path().join("state"), "tests");
        let (child, sip, web) = spawn(dir.path(), extra_web_config);
        WebServer {
            sip,
            web,
            token,
            process: Process::Child(child),
            dir,
            extra_config: extra_web_config.to_owned(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn music_dir(&self) -> PathBuf {
        self.state().join("music")
    }

    pub fn auth(&self) -> Auth {
        Auth::bearer(&self.token)
    }

    /// SIGKILL, as a power cut would, then start again on the same state folder. Only for a
    /// server from `start_binary`.
    pub fn kill_and_restart(&mut self) {
        let Process::Child(child) = &mut self.process else {
            panic!("kill_and_restart needs WebServer::start_binary");
        };
        let _ = child.kill();
        let _ = child.wait();
        let (child, sip, web) = spawn(self.dir.path(), &self.extra_config);
        self.process = Process::Child(child);
        self.sip = sip;
        self.web = web;
    }

    /// Logs in with the admin password; returns cookie + CSRF auth.
    pub fn login(&self) -> Auth {
        let r = http::send_json(
            self.web,
            "POST",
            "/api/login",
            &Auth::none(),
            &serde_json::json!({ "password": PASSWORD }),
        );
        assert_eq!(r.status, 200, "login: {}", r.text());
        let cookie = r
            .header("set-cookie")
            .expect("login sets a cookie")
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let csrf = r.json()["csrf_token"].as_str().unwrap().to_owned();
        Auth {
            bearer: None,
            cookie: Some(cookie),
            csrf: Some(csrf),
        }
    }

    pub fn tracks(&self) -> Vec<serde_json::Value> {
        let r = http::get(self.web, "/api/tracks", &self.auth());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().unwrap().clone()
    }

    pub fn upload(&self, name: &str, body: &[u8]) -> http::Response {
        http::request(
            self.web,
            "POST",
            &format!("/api/tracks?name={}", urlencode(name)),
            &self.auth(),
            Some("application/octet-stream"),
            body,
        )
    }

    /// Waits until the default channel's loop has `tracks` tracks (a re-render finished).
    pub fn wait_for_channel_tracks(&self, tracks: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = http::get(self.web, "/api/status", &self.auth()).json();
            let ch = &s["channels"][0];
            if ch["tracks"].as_u64() == Some(tracks) && ch["render"] == "ready" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "channel never reached {tracks} tracks: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn set_password(state: &Path, password: &str) {
    let mut child = Command::new(mohd_bin())
        .args(["passwd", "--stdin", "--state"])
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mohd passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn new_token(state: &Path, name: &str) -> String {
    let out = Command::new(mohd_bin())
        .args(["token", "new", name, "--state"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mohd token new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("mohd_"))
        .unwrap_or_else(|| panic!("no token in {stdout:?}"))
        .to_owned()
}

/// The config of a web test server, written to `dir/mohd.toml`, with its state in `dir/state`.
fn write_config(dir: &Path, extra_web_config: &str) -> PathBuf {
    let config = dir.join("mohd.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = \"udp:127.0.0.1:0\"\n\n[state]\ndir = \"{}\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n{extra_web_config}\n\n[lineout]\nenabled = false\n\n[channels.default]\nmusic = \"library\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config
}

fn spawn(dir: &Path, extra_web_config: &str) -> (Child, SocketAddr, SocketAddr) {
    let config = write_config(dir, extra_web_config);
    let mut child = Command::new(mohd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mohd");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("mohd: SIP listening on udp:") {
                let _ = tx.send(("sip", a.trim().to_owned()));
            } else if let Some(a) = line.strip_prefix("mohd: web listening on http://") {
                let _ = tx.send(("web", a.trim().to_owned()));
            }
        }
    });
    let (mut sip, mut web) = (None, None);
    while sip.is_none() || web.is_none() {
        let (what, addr) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("mohd did not print its SIP and web listeners within 60 s");
        let addr: SocketAddr = addr.parse().unwrap();
        if what == "sip" {
            sip = Some(addr);
        } else {
            web = Some(addr);
        }
    }
    (child, sip.unwrap(), web.unwrap())
}
