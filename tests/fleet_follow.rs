//! One library for a fleet: a publisher (`mohd library export DIR` served by an in-test HTTP
//! server, or another mohd's export endpoint) and boxes that follow it. Three followers
//! converge to the same library and the same rendered loop; then each broken publication (a
//! corrupt file, a wrong sha256, a truncated download, the server down, a manifest 100× too
//! large, a manifest naming `../`) leaves every box playing its last good library, with a call
//! in progress hearing it throughout, and is reported on `/metrics` and `/healthz`.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::web::WebServer;
use common::{Server, http, mohd_bin, wait_until, write_tone};
use mohd::config::Config;
use mohd::library::manifest::{MANIFEST_FILE, Manifest, etag_of};
use mohd::library::{Library, probe_file};
use mohd::server::Environment;
use mohd::web::backend::Backend;

/// How a box follows in these tests: a poll a second.
const INTERVAL_S: u64 = 1;
/// Long enough for any poll, download and re-render on a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// Adds a tone to the publisher's library as an upload would (probed in process).
fn add_track(state: &Path, name: &str, hz: f64) {
    let src = state.parent().unwrap().join(format!("src-{name}"));
    write_tone(&src, hz, 2.0);
    let mut lib = Library::open(state).unwrap();
    let mut up = lib.begin_upload(name, false, 1 << 30).unwrap();
    up.write(&std::fs::read(&src).unwrap()).unwrap();
    lib.commit_upload(up, probe_file).unwrap();
}

fn export(state: &Path, dir: &Path) {
    let out = std::process::Command::new(mohd_bin())
        .args(["library", "export"])
        .arg(dir)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mohd library export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the publishing web server does besides serving the folder.
#[derive(Clone, Default)]
enum Fault {
    #[default]
    None,
    /// The manifest is 100 MiB (by its Content-Length).
    HugeManifest,
    /// This file's body stops halfway, the connection dropped.
    Truncate(String),
}

#[derive(Clone)]
struct Site {
    dir: PathBuf,
    fault: Arc<Mutex<Fault>>,
    /// Requests for each file, by sha256.
    fetched: Arc<Mutex<HashMap<String, usize>>>,
}

async fn serve_manifest(State(site): State<Site>, headers: HeaderMap) -> Response {
    if let Fault::HugeManifest = site.fault.lock().unwrap().clone() {
        let huge = tokio::io::AsyncReadExt::take(tokio::io::repeat(b' '), 100 << 20);
        return (
            [(header::CONTENT_LENGTH, (100u64 << 20).to_string())],
            Body::from_stream(tokio_util::io::ReaderStream::new(huge)),
        )
            .into_response();
    }
    let Ok(bytes) = std::fs::read(site.dir.join(MANIFEST_FILE)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = etag_of(&bytes);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::ETAG, etag)], bytes).into_response()
}

/// An `AsyncRead` that fails: the end of a body cut short.
struct Broken;

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::Error::other("connection lost")))
    }
}

async fn serve_file(State(site): State<Site>, UrlPath(sha): UrlPath<String>) -> Response {
    *site.fetched.lock().unwrap().entry(sha.clone()).or_default() += 1;
    let Ok(bytes) = std::fs::read(site.dir.join("files").join(&sha)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = bytes.len();
    if let Fault::Truncate(t) = site.fault.lock().unwrap().clone()
        && t == sha
    {
        let half = std::io::Cursor::new(bytes[..len / 2].to_vec());
        let body = tokio::io::AsyncReadExt::chain(half, Broken);
        return (
            [(header::CONTENT_LENGTH, len.to_string())],
            Body::from_stream(tokio_util::io::ReaderStream::new(body)),
        )
            .into_response();
    }
    bytes.into_response()
}

/// The publishing web server on a fixed port, which it can leave and come back to.
struct Publisher {
    site: Site,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    fn start(dir: &Path) -> Publisher {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let site = Site {
            dir: dir.to_owned(),
            fault: Arc::default(),
            fetched: Arc::default(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut p = Publisher {
            site,
            addr,
            runtime,
            task: None,
        };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/fleet/manifest.json", get(serve_manifest))
            .route("/fleet/files/{sha}", get(serve_file))
            .with_state(self.site.clone());
        self.task = Some(self.runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/fleet/manifest.json", self.addr)
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.runtime.block_on(t);
        }
    }

    fn restart(&mut self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        self.serve(listener);
    }

    fn set_fault(&self, f: Fault) {
        *self.site.fault.lock().unwrap() = f;
    }

    fn fetches(&self, sha: &str) -> usize {
        self.site
            .fetched
            .lock()
            .unwrap()
            .get(sha)
            .copied()
            .unwrap_or(0)
    }

    fn manifest(&self) -> Manifest {
        let bytes = std::fs::read(self.site.dir.join(MANIFEST_FILE)).unwrap();
        Manifest::parse(&bytes, u64::MAX).unwrap()
    }

    /// Publishes `m` as the next version, as an admin editing the bucket by hand would.
    fn publish(&self, mut m: Manifest) -> u64 {
        // Read loosely: the manifest published last may be one the boxes refuse.
        let last: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.site.dir.join(MANIFEST_FILE)).unwrap())
                .unwrap();
        m.version = last["version"].as_u64().unwrap() + 1;
        std::fs::write(self.site.dir.join(MANIFEST_FILE), m.to_bytes()).unwrap();
        m.version
    }
}

fn follower_config(state: &Path, url: &str, token: Option<&str>) -> Config {
    let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
    let text = format!(
        "[sip]\nlisten = \"udp:127.0.0.1:0\"\n\n[state]\ndir = \"{}\"\n\n[web]\nlisten = \"off\"\n\n\
         [lineout]\nenabled = false\n\n[channels.default]\nmusic = \"library\"\n\n\
         [library]\nfollow = \"{url}\"\ninterval_s = {INTERVAL_S}\n{token}",
        state.display()
    );
    let path = state.parent().unwrap().join("mohd.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A following box with its own state folder (kept across restarts by `state`).
struct Follower {
    state: tempfile::TempDir,
    server: Option<Server>,
}

impl Follower {
    fn start(url: &str, token: Option<&str>) -> Follower {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("state")).unwrap();
        let mut f = Follower {
            state,
            server: None,
        };
        f.launch(url, token);
        f
    }

    fn launch(&mut self, url: &str, token: Option<&str>) {
        let config = follower_config(&self.state.path().join("state"), url, token);
        self.server = Some(Server::in_configured_state(
            config,
            Environment::with_probe(mohd_bin()),
        ));
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn backend(&self) -> &dyn Backend {
        self.server().control()
    }

    fn track_names(&self) -> Vec<String> {
        self.backend()
            .tracks()
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    fn version(&self) -> Option<u64> {
        self.server()
            .control()
            .library_sync
            .as_ref()?
            .snapshot()
            .manifest_version
    }

    fn failures(&self, reason: &str) -> u64 {
        let sync = self
            .server()
            .control()
            .library_sync
            .as_ref()
            .unwrap()
            .snapshot();
        sync.failures.get(reason).copied().unwrap_or(0)
    }

    /// What a caller on the default channel hears: (tracks in the loop, loop length), once
    /// the render is ready.
    fn rendered_loop(&self) -> Option<(usize, String)> {
        let status = self.backend().status();
        let ch = status.channels.iter().find(|c| c.name == "default")?;
        (ch.render == "ready").then(|| (ch.tracks, format!("{:.3}", ch.loop_s)))
    }
}

fn converged(boxes: &[Follower], names: &[String], version: u64) -> bool {
    boxes.iter().all(|f| {
        f.version() == Some(version) && f.track_names() == names && f.rendered_loop().is_some()
    }) && boxes
        .iter()
        .all(|f| f.rendered_loop() == boxes[0].rendered_loop())
}

/// Checks that a broken publication was counted under `reason` on every box, is a `/healthz`
/// warning (health still good), and left the library as it was.
fn assert_refused(
    boxes: &[Follower],
    reason: &str,
    before: &[u64],
    names: &[String],
    version: u64,
) {
    for (i, f) in boxes.iter().enumerate() {
        assert!(
            wait_until(PATIENCE, || f.failures(reason) > before[i]),
            "box {i} never reported {reason}: {:?}",
            f.server()
                .control()
                .library_sync
                .as_ref()
                .unwrap()
                .snapshot()
        );
        let health = f.backend().health();
        assert!(health.healthy, "box {i}: {health:?}");
        assert!(
            health.warnings.iter().any(|w| w.contains(reason)),
            "box {i}: no {reason} warning in {health:?}"
        );
        let metrics = f.backend().metrics_text();
        assert!(
            metrics.contains(&format!(
                "mohd_library_sync_failures_total{{reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("mohd_library_manifest_version {version}")),
            "{metrics}"
        );
        assert_eq!(
            f.track_names(),
            names,
            "box {i} lost its library on {reason}"
        );
        assert_eq!(f.version(), Some(version));
    }
}

#[test]
fn three_boxes_follow_one_library_and_keep_it_through_every_broken_publication() {
    let work = tempfile::tempdir().unwrap();
    let pub_state = work.path().join("publisher");
    let site = work.path().join("site");
    std::fs::create_dir_all(&pub_state).unwrap();
    add_track(&pub_state, "a440.wav", 440.0);
    add_track(&pub_state, "b660.wav", 660.0);
    export(&pub_state, &site);
    let mut publisher = Publisher::start(&site);
    let v1 = publisher.manifest().version;

    let mut boxes: Vec<Follower> = (0..3)
        .map(|_| Follower::start(&publisher.url(), None))
        .collect();
    let names = vec!["a440.wav".to_owned(), "b660.wav".to_owned()];
    assert!(
        wait_until(PATIENCE, || converged(&boxes, &names, v1)),
        "the boxes did not converge on version {v1}: {:?}",
        boxes
            .iter()
            .map(|f| (f.version(), f.track_names(), f.rendered_loop()))
            .collect::<Vec<_>>()
    );
    assert_eq!(boxes[0].rendered_loop().unwrap().0, 2);
    for f in &boxes {
        assert_eq!(
            f.failures("unreachable") + f.failures("file_size"),
            0,
            "applied in one poll"
        );
        let up = f.backend().begin_upload("mine.wav", false);
        let e = up.err().expect("a follower refuses uploads");
        assert_eq!(e.status, 409);
        assert!(e.message.contains("follows"), "{}", e.message);
    }

    // A new track: only it is downloaded, once per box.
    add_track(&pub_state, "c880.wav", 880.0);
    export(&pub_state, &site);
    let v2 = publisher.manifest().version;
    assert!(v2 > v1);
    let names: Vec<String> = ["a440.wav", "b660.wav", "c880.wav"]
        .map(String::from)
        .to_vec();
    assert!(
        wait_until(PATIENCE, || converged(&boxes, &names, v2)),
        "the boxes did not converge on version {v2}"
    );
    let good = publisher.manifest();
    let sha = |name: &str| {
        good.tracks
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .sha256
            .clone()
    };
    assert_eq!(
        publisher.fetches(&sha("a440.wav")),
        3,
        "unchanged files are not fetched again"
    );
    assert_eq!(publisher.fetches(&sha("c880.wav")), 3);

    // A call on box 0 hears the library through every broken publication below.
    let uri = boxes[0].server().uri("moh");
    let call = std::thread::spawn(move || common::mohd_call(&uri, &["--seconds", "40"]));
    std::thread::sleep(Duration::from_secs(2));

    let before = |reason: &str| boxes.iter().map(|f| f.failures(reason)).collect::<Vec<_>>();
    let new_file = |name: &str, hz: f64| {
        let p = work.path().join(name);
        write_tone(&p, hz, 1.5);
        let bytes = std::fs::read(&p).unwrap();
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (bytes, sha)
    };
    use sha2::Digest;
    let with_track = |name: &str, size: u64, sha256: &str| {
        let mut m = good.clone();
        let mut t = m.tracks[0].clone();
        t.name = name.to_owned();
        t.size = size;
        t.sha256 = sha256.to_owned();
        m.tracks.push(t);
        m
    };

    // A corrupt file: the bytes served are not those the manifest hashed.
    let (bytes, sha_d) = new_file("d.wav", 990.0);
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    std::fs::write(site.join("files").join(&sha_d), &corrupt).unwrap();
    let b = before("file_sha256");
    publisher.publish(with_track("d.wav", bytes.len() as u64, &sha_d));
    assert_refused(&boxes, "file_sha256", &b, &names, v2);

    // A wrong sha256 in the manifest for a file served intact.
    let (bytes, sha_e) = new_file("e.wav", 1100.0);
    let wrong = format!("{}0", &sha_e[..63]);
    std::fs::write(site.join("files").join(&wrong), &bytes).unwrap();
    let b = before("file_sha256");
    publisher.publish(with_track("e.wav", bytes.len() as u64, &wrong));
    assert_refused(&boxes, "file_sha256", &b, &names, v2);

    // A download cut short halfway.
    let (bytes, sha_f) = new_file("f.wav", 1200.0);
    std::fs::write(site.join("files").join(&sha_f), &bytes).unwrap();
    publisher.set_fault(Fault::Truncate(sha_f.clone()));
    let b = before("transfer");
    publisher.publish(with_track("f.wav", bytes.len() as u64, &sha_f));
    assert_refused(&boxes, "transfer", &b, &names, v2);
    publisher.set_fault(Fault::None);

    // A manifest naming ../ paths.
    let b = before("manifest_invalid");
    publisher.publish(with_track("../../escape.wav", bytes.len() as u64, &sha_f));
    assert_refused(&boxes, "manifest_invalid", &b, &names, v2);
    assert!(!work.path().join("escape.wav").exists());

    // A manifest 100 times the size allowed.
    publisher.set_fault(Fault::HugeManifest);
    let b = before("manifest_too_large");
    assert_refused(&boxes, "manifest_too_large", &b, &names, v2);
    publisher.set_fault(Fault::None);

    // The server down; a box restarted meanwhile still plays its last good library.
    publisher.stop();
    let b = before("unreachable");
    assert_refused(&boxes, "unreachable", &b, &names, v2);
    boxes[2].server = None;
    boxes[2].launch(&publisher.url(), None);
    assert!(
        wait_until(PATIENCE, || boxes[2].rendered_loop().is_some()),
        "the restarted box plays nothing"
    );
    assert_eq!(
        boxes[2].track_names(),
        names,
        "the last good library survives a restart"
    );
    assert_eq!(boxes[2].version(), Some(v2));
    assert_eq!(boxes[2].rendered_loop(), boxes[0].rendered_loop());
    let b2 = boxes[2].failures("unreachable");
    assert!(wait_until(PATIENCE, || boxes[2].failures("unreachable") > b2));
    assert!(boxes[2].backend().health().warnings[0].contains("unreachable"));

    let report = call.join().unwrap();
    let stats = &report["stats"];
    assert!(
        stats["packets"].as_u64().unwrap() > 1500,
        "the call stopped hearing music: {report}"
    );
    assert_eq!(stats["lost"], 0, "{report}");
    assert!(report["ended_by_remote"] == false, "{report}");

    // Back up with a good manifest: the boxes sync again and the warning clears.
    publisher.publish(good.clone());
    publisher.restart();
    for f in &boxes {
        assert!(
            wait_until(PATIENCE, || f.backend().health().warnings.is_empty()),
            "the warning stays after the publisher came back: {:?}",
            f.backend().health()
        );
        assert_eq!(f.track_names(), names);
    }
}

#[test]
fn a_box_follows_another_mohd_through_its_export_endpoint() {
    let publisher = WebServer::start("");
    let dir = tempfile::tempdir().unwrap();
    for (name, hz) in [("low.wav", 330.0), ("high.wav", 990.0)] {
        let p = dir.path().join(name);
        write_tone(&p, hz, 2.0);
        let r = publisher.upload(name, &std::fs::read(&p).unwrap());
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let path = "/api/library/export/manifest.json";
    let r = http::get(publisher.web, path, &http::Auth::none());
    assert_eq!(r.status, 401, "the export needs a token");
    let r = http::get(publisher.web, path, &publisher.auth());
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = r.header("etag").expect("an ETag").to_owned();
    let m: serde_json::Value = r.json();
    assert_eq!(m["tracks"].as_array().unwrap().len(), 2);
    let mut s = std::net::TcpStream::connect(publisher.web).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         If-None-Match: {etag}\r\n\r\n",
        publisher.token
    )
    .unwrap();
    let again = http::read_response(&mut s);
    assert_eq!(again.status, 304, "an unchanged manifest is not sent again");

    let url = format!("http://{}{path}", publisher.web);
    let follower = Follower::start(&url, Some(&publisher.token));
    let names = vec!["low.wav".to_owned(), "high.wav".to_owned()];
    assert!(
        wait_until(PATIENCE, || follower.track_names() == names
            && follower.rendered_loop().is_some_and(|l| l.0 == 2)),
        "the follower never got the publisher's library: {:?}",
        follower
            .server()
            .control()
            .library_sync
            .as_ref()
            .unwrap()
            .snapshot()
    );
    let ours: Vec<_> = follower
        .backend()
        .tracks()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let theirs: Vec<_> = publisher
        .tracks()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ours, theirs, "same content, same ids");
    let status = serde_json::to_value(follower.backend().status()).unwrap();
    assert_eq!(status["library_sync"]["state"], "ok", "{status}");
}
