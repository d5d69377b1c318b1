//! A `mohd serve` with its web listener, a state folder, an admin password and an API token:
//! the harness of the web, crash-safety and playlist-change tests.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{self, Auth};
use super::mohd_bin;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct WebServer {
    pub child: Child,
    pub sip: SocketAddr,
    pub web: SocketAddr,
    pub token: String,
    pub dir: tempfile::TempDir,
    extra_config: String,
    env: Vec<(String, String)>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WebServer {
    /// A fresh state folder; `extra_config` is appended to the config's `[web]` table.
    pub fn start(extra_web_config: &str) -> WebServer {
        WebServer::start_with_env(extra_web_config, &[])
    }

    /// As `start`, with extra environment for the server (e.g. its test hooks).
    pub fn start_with_env(extra_web_config: &str, env: &[(&str, &str)]) -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        set_password(&dir.path().join("state"), PASSWORD);
        let token = new_token(&dir.path().join("state"), "tests");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, sip, web) = spawn(dir.path(), extra_web_config, &env);
        WebServer {
            child,
            sip,
            web,
            token,
            dir,
            extra_config: extra_web_config.to_owned(),
            env,
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

    /// SIGKILL, as a power cut would, then start again on the same state folder.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, sip, web) = spawn(self.dir.path(), &self.extra_config, &self.env);
        self.child = child;
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

fn spawn(
    dir: &Path,
    extra_web_config: &str,
    env: &[(String, String)],
) -> (Child, SocketAddr, SocketAddr) {
    let state = dir.join("state");
    let config = dir.join("mohd.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = \"udp:127.0.0.1:0\"\n\n[state]\ndir = \"{}\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n{extra_web_config}\n\n[lineout]\nenabled = false\n\n[channels.default]\nmusic = \"library\"\n",
            state.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(mohd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
