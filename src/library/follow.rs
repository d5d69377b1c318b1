//! Following a library published elsewhere (`[library] follow = URL`): another mohd's export
//! endpoint, or a web server or bucket that `mohd library export` filled.
//!
//! Owns the follower's folder and its poll loop. The library a follower plays lives in
//! `<state>/follow/gen-<version>-<random>/` (its `music/`, `library.json`, `settings.json`,
//! `channels.json`), and `<state>/follow/current.json` names the one in use; before the first
//! sync it is `<state>/follow/empty/`. A poll asks for the manifest with `If-None-Match`; a new
//! one is checked ([`super::manifest`]), each new or changed file is downloaded into
//! `<state>/tmp/follow/` and checked (size, sha256) and fsynced, files that did not change are
//! hard-linked from the library in use, and the new generation is written, fsynced and opened
//! before `current.json` is replaced atomically (`fsutil::write_atomic`). A power cut at any
//! point leaves `current.json` naming the old library or the new, each whole; folders nothing
//! names are removed at the next start. Only then is the library in memory swapped (see
//! `Control::swap_library`), and the conductor re-renders as after an upload, without
//! dropping a call. Anything wrong leaves what plays untouched, is counted by reason, and
//! shows on `/healthz` (a warning), the status page and `/metrics`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::manifest::{FILES_DIR, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use super::{Settings, hex, write_library};
use crate::config::FollowConfig;
use crate::control::Control;
use crate::fsutil::{fsync_dir, write_atomic};

/// `<state>/follow`.
pub const FOLLOW_DIR: &str = "follow";
const CURRENT_JSON: &str = "current.json";
const EMPTY: &str = "empty";
const GENERATION_PREFIX: &str = "gen-";
/// CA bundles of the common distributions, tried in order when no `ca_file` is set.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// No byte for this long ends a download (the next poll tries again).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every reason a sync fails, as `/metrics` labels them.
pub const REASONS: &[&str] = &[
    "unreachable",
    "http_status",
    "manifest_too_large",
    "manifest_invalid",
    "stale_version",
    "file_size",
    "file_sha256",
    "transfer",
    "local",
];

/// `current.json`: the library in use and how it was fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Current {
    generation: String,
    version: u64,
    etag: Option<String>,
    /// The generation before it, kept so a line-out still reading a file of it finds it.
    previous: Option<String>,
}

/// Why a sync failed. Nothing of it reached the library in use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncFailure {
    #[error("cannot reach the publisher: {0}")]
    Unreachable(String),
    #[error("the publisher answered HTTP {0}")]
    HttpStatus(u16),
    #[error("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge,
    #[error("the manifest is refused: {0}")]
    ManifestInvalid(ManifestError),
    #[error("the manifest's version {got} is older than the library in use ({have})")]
    StaleVersion { got: u64, have: u64 },
    #[error("{name}: {got} bytes where the manifest says {expected}")]
    FileSize {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("{name}: sha256 {got} where the manifest says {expected}")]
    FileSha256 {
        name: String,
        expected: String,
        got: String,
    },
    #[error("{name}: download cut short: {why}")]
    Transfer { name: String, why: String },
    #[error("on this box: {0}")]
    Local(String),
}

impl SyncFailure {
    /// The `reason` label of `mohd_library_sync_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncFailure::Unreachable(_) => "unreachable",
            SyncFailure::HttpStatus(_) => "http_status",
            SyncFailure::ManifestTooLarge => "manifest_too_large",
            SyncFailure::ManifestInvalid(_) => "manifest_invalid",
            SyncFailure::StaleVersion { .. } => "stale_version",
            SyncFailure::FileSize { .. } => "file_size",
            SyncFailure::FileSha256 { .. } => "file_sha256",
            SyncFailure::Transfer { .. } => "transfer",
            SyncFailure::Local(_) => "local",
        }
    }
}

fn local(e: impl std::fmt::Display) -> SyncFailure {
    SyncFailure::Local(e.to_string())
}

/// The follower's state as the status page, `/healthz` and `/metrics` read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncStatus {
    /// The manifest followed.
    pub url: String,
    /// The version of the library in use (`None`: none synced yet).
    pub manifest_version: Option<u64>,
    /// Unix time of the last poll that found the library up to date or applied a new one.
    pub last_success_unix: Option<f64>,
    /// The last poll's failure, while the polls fail.
    pub failing: Option<SyncFailure>,
    /// Failures by reason since start.
    pub failures: HashMap<&'static str, u64>,
}

/// Shared between the poll loop and the server handle.
#[derive(Debug, Default)]
pub struct SyncState(Mutex<SyncStatus>);

impl SyncState {
    pub fn snapshot(&self) -> SyncStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    /// The `/healthz` warning, if any: the last poll failed, or none has succeeded yet.
    pub fn warning(&self) -> Option<String> {
        let s = self.snapshot();
        let kept = match s.manifest_version {
            Some(v) => format!("playing library version {v}"),
            None => "no library synced yet".to_owned(),
        };
        match (&s.failing, s.last_success_unix) {
            (Some(f), _) => Some(format!(
                "library sync from {} failing ({}): {f}; {kept}",
                s.url,
                f.reason()
            )),
            (None, None) => Some(format!("library sync from {} pending; {kept}", s.url)),
            (None, Some(_)) => None,
        }
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `<state>/follow` and its pieces.
#[derive(Debug, Clone)]
struct Layout {
    follow: PathBuf,
    staging: PathBuf,
}

impl Layout {
    fn of(state_dir: &Path) -> Layout {
        Layout {
            follow: state_dir.join(FOLLOW_DIR),
            staging: state_dir.join("tmp").join("follow"),
        }
    }

    fn current_path(&self) -> PathBuf {
        self.follow.join(CURRENT_JSON)
    }

    fn read_current(&self) -> Option<Current> {
        let path = self.current_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the followed library's pointer");
                return None;
            }
        };
        match serde_json::from_slice::<Current>(&bytes) {
            Ok(c) if self.follow.join(&c.generation).is_dir() => Some(c),
            Ok(c) => {
                tracing::error!(generation = %c.generation, "the followed library named by current.json is missing; starting empty");
                None
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "current.json is unreadable; starting empty");
                None
            }
        }
    }

    fn library_dir(&self, current: Option<&Current>) -> PathBuf {
        match current {
            Some(c) => self.follow.join(&c.generation),
            None => self.follow.join(EMPTY),
        }
    }

    /// Removes generation folders nothing names (a sync cut short, libraries replaced twice).
    fn remove_unnamed(&self, current: Option<&Current>) {
        let keep: Vec<&str> = current
            .into_iter()
            .flat_map(|c| [Some(c.generation.as_str()), c.previous.as_deref()])
            .flatten()
            .collect();
        let Ok(rd) = fs::read_dir(&self.follow) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(GENERATION_PREFIX) && !keep.contains(&name.as_str()) {
                if let Err(err) = fs::remove_dir_all(e.path()) {
                    tracing::warn!(folder = %e.path().display(), error = %err, "cannot remove an old followed library");
                }
            }
        }
    }
}

/// Prepares `<state>/follow` at start (removing what a crash left) and returns the folder the
/// library and the managed channels open from: the last good library, or an empty one.
pub fn prepare(state_dir: &Path) -> io::Result<PathBuf> {
    let layout = Layout::of(state_dir);
    fs::create_dir_all(&layout.follow)?;
    fs::create_dir_all(layout.follow.join(EMPTY))?;
    fs::create_dir_all(&layout.staging)?;
    crate::fsutil::remove_stale_temps(&layout.follow, &[CURRENT_JSON]);
    remove_partial_downloads(&layout.staging);
    let current = layout.read_current();
    layout.remove_unnamed(current.as_ref());
    Ok(layout.library_dir(current.as_ref()))
}

/// Verified downloads (named by their sha256) stay for the next attempt; partial ones go.
fn remove_partial_downloads(staging: &Path) {
    let Ok(rd) = fs::read_dir(staging) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().ends_with(".part") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Starts the poll loop on the current tokio runtime; it ends when `shutdown` turns true.
pub fn spawn(
    control: Arc<Control>,
    config: FollowConfig,
    state_dir: PathBuf,
    max_track_bytes: u64,
    sync: Arc<SyncState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let layout = Layout::of(&state_dir);
    let current = layout.read_current();
    sync.update(|s| {
        s.url = config.url.clone();
        s.manifest_version = current.as_ref().map(|c| c.version);
    });
    tokio::spawn(async move {
        let mut follower = match Follower::new(control, config, layout, current, max_track_bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow the library");
                record(&sync, Err(e));
                return;
            }
        };
        // A fleet powered up together spreads its first polls over a second.
        let mut wait = Duration::from_millis(rand::random_range(0..1000));
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let outcome = follower.poll().await;
            record(&sync, outcome);
            wait = jittered(follower.config.interval);
        }
    });
}

/// `interval` ± 20 %, so 70 boxes started together do not poll in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.8..=1.2))
}

fn record(sync: &SyncState, outcome: Result<Polled, SyncFailure>) {
    sync.update(|s| match outcome {
        Ok(polled) => {
            s.last_success_unix = Some(now_unix());
            if s.failing.take().is_some() {
                tracing::info!(url = %s.url, "library sync works again");
            }
            if let Polled::Applied(v) = polled {
                s.manifest_version = Some(v);
            }
        }
        Err(f) => {
            tracing::warn!(url = %s.url, reason = f.reason(), error = %f, "library sync failed; the library in use is kept");
            *s.failures.entry(f.reason()).or_default() += 1;
            s.failing = Some(f);
        }
    });
}

/// What a successful poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    Unchanged,
    Applied(u64),
}

struct Follower {
    control: Arc<Control>,
    config: FollowConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    layout: Layout,
    current: Option<Current>,
    max_track_bytes: u64,
}

impl Follower {
    fn new(
        control: Arc<Control>,
        config: FollowConfig,
        layout: Layout,
        current: Option<Current>,
        max_track_bytes: u64,
    ) -> Result<Follower, SyncFailure> {
        let url = reqwest::Url::parse(&config.url).map_err(local)?;
        let client = http_client(&config)?;
        Ok(Follower {
            control,
            config,
            url,
            client,
            layout,
            current,
            max_track_bytes,
        })
    }

    fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        match &self.config.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn poll(&mut self) -> Result<Polled, SyncFailure> {
        let etag = self.current.as_ref().and_then(|c| c.etag.clone());
        let Some((bytes, etag)) = self.fetch_manifest(etag).await? else {
            return Ok(Polled::Unchanged);
        };
        let manifest = Manifest::parse(&bytes, self.max_track_bytes).map_err(|e| match e {
            ManifestError::TooLarge => SyncFailure::ManifestTooLarge,
            e => SyncFailure::ManifestInvalid(e),
        })?;
        let have = self.current.as_ref().map(|c| c.version);
        match have {
            Some(have) if manifest.version < have => {
                return Err(SyncFailure::StaleVersion {
                    got: manifest.version,
                    have,
                });
            }
            Some(have) if manifest.version == have => return Ok(Polled::Unchanged),
            _ => {}
        }
        let in_use = self.files_in_use();
        for t in &manifest.tracks {
            if !in_use.contains_key(&t.sha256) {
                self.download(&t.name, &t.sha256, t.size).await?;
            }
        }
        let layout = self.layout.clone();
        let current = self.current.clone();
        let control = Arc::clone(&self.control);
        let applied = tokio::task::spawn_blocking(move || {
            apply(&control, &layout, current.as_ref(), &manifest, in_use, etag)
        })
        .await
        .map_err(local)??;
        let version = applied.version;
        tracing::info!(version, url = %self.url, "followed library updated");
        self.current = Some(applied);
        Ok(Polled::Applied(version))
    }

    /// The manifest's bytes and ETag, or `None` when it did not change (304).
    async fn fetch_manifest(
        &self,
        etag: Option<String>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, SyncFailure> {
        let mut req = self.get(self.url.clone());
        if let Some(e) = &etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let mut resp = req.send().await.map_err(unreachable)?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(SyncFailure::HttpStatus(resp.status().as_u16()));
        }
        // Refused on the header when it says so, without reading the body.
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(SyncFailure::ManifestTooLarge);
        }
        let new_etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| SyncFailure::Transfer {
            name: "manifest".into(),
            why: e.to_string(),
        })? {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(SyncFailure::ManifestTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((body, new_etag)))
    }

    /// sha256 → path of each file of the library in use.
    fn files_in_use(&self) -> HashMap<String, PathBuf> {
        let Some(c) = &self.current else {
            return HashMap::new();
        };
        let dir = self.layout.follow.join(&c.generation);
        let Ok(bytes) = fs::read(dir.join(super::manifest::MANIFEST_FILE)) else {
            return HashMap::new();
        };
        let Ok(m) = Manifest::parse(&bytes, u64::MAX) else {
            return HashMap::new();
        };
        m.tracks
            .into_iter()
            .map(|t| (t.sha256, dir.join("music").join(t.name)))
            .collect()
    }

    /// Downloads `files/<sha256>` into the staging folder, checked and fsynced; a file an
    /// earlier attempt verified is not fetched again.
    async fn download(&self, name: &str, sha256: &str, size: u64) -> Result<(), SyncFailure> {
        let dest = self.layout.staging.join(sha256);
        if fs::metadata(&dest).is_ok_and(|m| m.len() == size) {
            return Ok(());
        }
        let url = self
            .url
            .join(&format!("{FILES_DIR}/{sha256}"))
            .map_err(local)?;
        // Connected, then cut off before the answer: the transfer failed, not the publisher.
        let mut resp = self.get(url).send().await.map_err(|e| {
            if e.is_connect() {
                unreachable(e)
            } else {
                SyncFailure::Transfer {
                    name: name.to_owned(),
                    why: error_chain(&e),
                }
            }
        })?;
        if !resp.status().is_success() {
            return Err(SyncFailure::HttpStatus(resp.status().as_u16()));
        }
        let wrong_size = |got: u64| SyncFailure::FileSize {
            name: name.to_owned(),
            expected: size,
            got,
        };
        if let Some(n) = resp.content_length()
            && n != size
        {
            return Err(wrong_size(n));
        }
        let part = self.layout.staging.join(format!("{sha256}.part"));
        let result = async {
            let mut file = tokio::fs::File::create(&part).await.map_err(local)?;
            let mut hasher = Sha256::new();
            let mut got = 0u64;
            loop {
                let chunk = resp.chunk().await.map_err(|e| SyncFailure::Transfer {
                    name: name.to_owned(),
                    why: e.to_string(),
                });
                let Some(chunk) = chunk? else { break };
                got += chunk.len() as u64;
                if got > size {
                    return Err(wrong_size(got));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(local)?;
            }
            if got != size {
                return Err(wrong_size(got));
            }
            let found = hex(&hasher.finalize());
            if found != sha256 {
                return Err(SyncFailure::FileSha256 {
                    name: name.to_owned(),
                    expected: sha256.to_owned(),
                    got: found,
                });
            }
            file.sync_all().await.map_err(local)?;
            drop(file);
            tokio::fs::rename(&part, &dest).await.map_err(local)?;
            fsync_dir(&self.layout.staging).map_err(local)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }
}

fn unreachable(e: reqwest::Error) -> SyncFailure {
    SyncFailure::Unreachable(error_chain(&e))
}

/// reqwest's message with its causes ("error sending request: … connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Builds the new generation, opens it, points `current.json` at it, swaps it in memory and
/// removes the generation before the previous one. Blocking.
fn apply(
    control: &Control,
    layout: &Layout,
    current: Option<&Current>,
    manifest: &Manifest,
    in_use: HashMap<String, PathBuf>,
    etag: Option<String>,
) -> Result<Current, SyncFailure> {
    let generation = format!(
        "{GENERATION_PREFIX}{:012}-{:08x}",
        manifest.version,
        rand::random::<u32>()
    );
    let dir = layout.follow.join(&generation);
    let built = build_generation(layout, &dir, manifest, &in_use);
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&dir);
        return Err(local(format!("cannot write {}: {e}", dir.display())));
    }
    let opened = match control.open_followed(&dir) {
        Ok(o) => o,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(local(e));
        }
    };
    let next = Current {
        generation,
        version: manifest.version,
        etag,
        previous: current.map(|c| c.generation.clone()),
    };
    let bytes = serde_json::to_vec_pretty(&next).map_err(local)?;
    if let Err(e) = write_atomic(&layout.current_path(), &bytes) {
        let _ = fs::remove_dir_all(&dir);
        return Err(local(format!("cannot write current.json: {e}")));
    }
    control.swap_library(opened);
    layout.remove_unnamed(Some(&next));
    Ok(next)
}

/// Writes generation `dir`: `music/` (unchanged files hard-linked from the library in use,
/// new ones moved from the staging folder), `library.json`, `settings.json`, `channels.json`
/// and the manifest, each fsynced, then the folders.
fn build_generation(
    layout: &Layout,
    dir: &Path,
    manifest: &Manifest,
    in_use: &HashMap<String, PathBuf>,
) -> io::Result<()> {
    let music = dir.join("music");
    fs::create_dir_all(&music)?;
    for t in &manifest.tracks {
        let dest = music.join(&t.name);
        match in_use.get(&t.sha256) {
            Some(old) => {
                if fs::hard_link(old, &dest).is_err() {
                    fs::copy(old, &dest)?;
                    fs::File::open(&dest)?.sync_all()?;
                }
            }
            None => fs::rename(layout.staging.join(&t.sha256), &dest)?,
        }
    }
    fsync_dir(&music)?;
    fsync_dir(&layout.staging)?;
    let tracks: Vec<_> = manifest.tracks.iter().map(|t| t.to_track()).collect();
    write_library(&dir.join(super::LIBRARY_JSON), &tracks, &HashMap::new())?;
    let settings = manifest.settings.applied_to(&Settings::default());
    write_atomic(
        &dir.join(super::SETTINGS_JSON),
        &serde_json::to_vec_pretty(&settings).map_err(io::Error::other)?,
    )?;
    write_atomic(
        &dir.join(crate::channel::store::CHANNELS_JSON),
        &manifest.channels_json(),
    )?;
    write_atomic(
        &dir.join(super::manifest::MANIFEST_FILE),
        &manifest.to_bytes(),
    )?;
    fsync_dir(dir)?;
    fsync_dir(&layout.follow)
}

/// The HTTP client: rustls with ring (as the rest of mohd), trusting `ca_file` or the
/// system's CA bundle.
fn http_client(config: &FollowConfig) -> Result<reqwest::Client, SyncFailure> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle = match &config.ca_file {
        Some(f) => Some(f.clone()),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find(|p| p.is_file()),
    };
    match &bundle {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| local(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| local(format!("{}: {e}", path.display())))?;
                // One unusable certificate in a system bundle must not stop the others.
                let _ = roots.add(cert);
            }
            if roots.is_empty() && config.ca_file.is_some() {
                return Err(local(format!(
                    "{}: no CA certificate in it",
                    path.display()
                )));
            }
        }
        None if config.url.starts_with("https:") => {
            tracing::warn!("no CA bundle found; set [library] ca_file to follow over HTTPS");
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(local)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("mohd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| local(error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        let i = Duration::from_secs(60);
        for _ in 0..1000 {
            let j = jittered(i);
            assert!(
                j >= Duration::from_secs(48) && j <= Duration::from_secs(72),
                "{j:?}"
            );
        }
    }

    #[test]
    fn prepare_starts_empty_and_removes_what_a_crash_left() {
        let state = tempfile::tempdir().unwrap();
        let dir = prepare(state.path()).unwrap();
        assert!(dir.ends_with("follow/empty"));
        let layout = Layout::of(state.path());
        fs::create_dir_all(layout.follow.join("gen-000000000001-aa/music")).unwrap();
        fs::create_dir_all(layout.follow.join("gen-000000000002-bb/music")).unwrap();
        fs::create_dir_all(layout.follow.join("gen-000000000003-cc/music")).unwrap();
        fs::write(layout.staging.join("abc.part"), b"half").unwrap();
        fs::write(layout.staging.join("abc"), b"whole").unwrap();
        let current = Current {
            generation: "gen-000000000002-bb".into(),
            version: 2,
            etag: None,
            previous: Some("gen-000000000001-aa".into()),
        };
        write_atomic(
            &layout.current_path(),
            &serde_json::to_vec(&current).unwrap(),
        )
        .unwrap();
        let dir = prepare(state.path()).unwrap();
        assert!(dir.ends_with("gen-000000000002-bb"));
        assert!(layout.follow.join("gen-000000000001-aa").is_dir());
        assert!(
            !layout.follow.join("gen-000000000003-cc").exists(),
            "a build cut short goes"
        );
        assert!(!layout.staging.join("abc.part").exists());
        assert!(
            layout.staging.join("abc").exists(),
            "verified downloads are kept"
        );
    }

    #[test]
    fn a_warning_says_what_fails_and_what_plays() {
        let s = SyncState::default();
        s.update(|s| s.url = "https://pub/m.json".into());
        assert!(s.warning().unwrap().contains("pending"));
        record(&s, Ok(Polled::Applied(4)));
        assert_eq!(s.warning(), None);
        record(&s, Err(SyncFailure::HttpStatus(500)));
        let w = s.warning().unwrap();
        assert!(w.contains("http_status") && w.contains("version 4"), "{w}");
        assert_eq!(s.snapshot().failures["http_status"], 1);
        record(&s, Ok(Polled::Unchanged));
        assert_eq!(s.warning(), None);
    }
}
