//! The fleet's library manifest: what a publishing mohd serves on
//! `/api/library/export/manifest.json`, what `mohd library export DIR` writes beside the files
//! for a web server or a bucket, and what a follower (`library::follow`) reads.
//!
//! A manifest is JSON: `format` (this layout's version), `version` (the publisher's library
//! version, increasing with every change), the tracks in playlist order (`name`, `size`,
//! `sha256`, `enabled` and what the page shows of each), the managed channels and routes as
//! `channels.json` holds them, and the library settings a fleet shares (loudness, line-out
//! level; not the line-out device, which is each box's own hardware). Files are addressed by
//! content: `files/<sha256>` beside the manifest, so a name never reaches a URL or a path
//! unchecked and a file that did not change is never fetched again.
//!
//! Everything read is checked before anything is written: names as uploads are
//! ([`super::validate_name`]: no folders, no `../`), sizes capped, hashes well-formed, channels
//! and routes valid, and the manifest itself at most [`MAX_MANIFEST_BYTES`].

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{LibraryError, NameError, Settings, Track, hex, id_of, validate_name};
use crate::channel::spec::ChannelSpec;
use crate::channel::store::{CHANNELS_JSON, ManagedRoute};
use crate::fsutil::{fsync_dir, write_atomic};

/// The manifest layout this mohd writes and reads; a newer one is refused.
pub const FORMAT: u32 = 1;
/// Largest manifest read: 10 000 tracks with long names fit in a quarter of it.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The manifest's file name in an export folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The folder of the files, beside the manifest.
pub const FILES_DIR: &str = "files";
/// Most tracks one manifest may list.
const MAX_TRACKS: usize = 10_000;
/// Where a publishing box keeps its last version and what it described.
const EXPORT_STATE: &str = "export.json";

/// A published library. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: u64,
    /// In playlist order.
    pub tracks: Vec<ManifestTrack>,
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
    #[serde(default)]
    pub routes: Vec<ManagedRoute>,
    #[serde(default)]
    pub settings: SharedSettings,
}

/// One track: the file (`name`, `size`, `sha256`) and what the page shows of it, so a follower
/// need not decode it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTrack {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub enabled: bool,
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub sample_rate: u32,
    #[serde(default)]
    pub channels: u16,
    #[serde(default)]
    pub loudness_lufs: Option<f64>,
    #[serde(default)]
    pub added_unix: u64,
}

/// The settings every box of a fleet shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedSettings {
    pub loudness_lufs: Option<f64>,
    pub lineout_level_db: Option<f64>,
}

impl SharedSettings {
    /// The shared part of a box's settings.
    pub fn of(s: &Settings) -> SharedSettings {
        SharedSettings {
            loudness_lufs: s.loudness_lufs,
            lineout_level_db: s.lineout_level_db,
        }
    }

    /// A follower's settings: these, with its own line-out device.
    pub fn applied_to(&self, own: &Settings) -> Settings {
        Settings {
            loudness_lufs: self.loudness_lufs,
            lineout_level_db: self.lineout_level_db,
            lineout_device: own.lineout_device.clone(),
        }
    }
}

/// Why a manifest was refused; the message names the entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("the manifest is larger than {} bytes", MAX_MANIFEST_BYTES)]
    TooLarge,
    #[error("the manifest is not valid JSON of the expected shape: {0}")]
    Parse(String),
    #[error("manifest format {0} is newer than this mohd understands ({FORMAT}); upgrade mohd")]
    NewerFormat(u32),
    #[error("the manifest lists {0} tracks; at most {MAX_TRACKS} are accepted")]
    TooManyTracks(usize),
    #[error("track {name:?}: {why}")]
    BadName { name: String, why: NameError },
    #[error("track {name:?}: {why}")]
    BadTrack { name: String, why: String },
    #[error("settings: {0}")]
    BadSettings(String),
    #[error("channel {name:?}: {why}")]
    BadChannel { name: String, why: String },
    #[error("route {index}: {why}")]
    BadRoute { index: usize, why: String },
}

impl ManifestTrack {
    fn of(t: &Track) -> ManifestTrack {
        ManifestTrack {
            name: t.name.clone(),
            size: t.size_bytes,
            sha256: t.sha256.clone(),
            enabled: t.enabled,
            duration_s: t.duration_s,
            format: t.format.clone(),
            sample_rate: t.sample_rate,
            channels: t.channels,
            loudness_lufs: t.loudness_lufs,
            added_unix: t.added_unix,
        }
    }

    /// The library's track for this entry (its id from the content, as an upload's).
    pub fn to_track(&self) -> Track {
        Track {
            id: id_of(&self.sha256),
            name: self.name.clone(),
            enabled: self.enabled,
            duration_s: self.duration_s,
            format: self.format.clone(),
            sample_rate: self.sample_rate,
            channels: self.channels,
            loudness_lufs: self.loudness_lufs,
            size_bytes: self.size,
            added_unix: self.added_unix,
            sha256: self.sha256.clone(),
        }
    }
}

impl Manifest {
    /// The manifest of a library as it is (`version` set by the caller).
    pub fn describe(
        tracks: &[Track],
        settings: &Settings,
        channels: Vec<ChannelSpec>,
        routes: Vec<ManagedRoute>,
        version: u64,
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            version,
            tracks: tracks.iter().map(ManifestTrack::of).collect(),
            channels,
            routes,
            settings: SharedSettings::of(settings),
        }
    }

    /// Reads and checks a manifest; `max_track_bytes` caps each file's size.
    pub fn parse(bytes: &[u8], max_track_bytes: u64) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        // The format first, so a newer layout is never mistaken for a broken one.
        let f: Format =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if f.format > FORMAT {
            return Err(ManifestError::NewerFormat(f.format));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.check(max_track_bytes)?;
        Ok(m)
    }

    fn check(&self, max_track_bytes: u64) -> Result<(), ManifestError> {
        if self.tracks.len() > MAX_TRACKS {
            return Err(ManifestError::TooManyTracks(self.tracks.len()));
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for t in &self.tracks {
            let bad = |why: String| ManifestError::BadTrack {
                name: t.name.clone(),
                why,
            };
            validate_name(&t.name).map_err(|why| ManifestError::BadName {
                name: t.name.clone(),
                why,
            })?;
            if !names.insert(t.name.as_str()) {
                return Err(bad("listed twice".into()));
            }
            if t.sha256.len() != 64
                || !t
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad("sha256 must be 64 lowercase hex digits".into()));
            }
            if !ids.insert(id_of(&t.sha256)) {
                return Err(bad("the same content (or track id) as another track".into()));
            }
            if t.size == 0 || t.size > max_track_bytes {
                return Err(bad(format!(
                    "size {} is outside 1..={max_track_bytes} bytes",
                    t.size
                )));
            }
            if !t.duration_s.is_finite() || t.duration_s < 0.0 {
                return Err(bad("duration_s must be a non-negative number".into()));
            }
        }
        self.settings
            .applied_to(&Settings::default())
            .validate()
            .map_err(|e| ManifestError::BadSettings(e.to_string()))?;
        let mut channel_names = HashSet::new();
        for c in &self.channels {
            let bad = |why: String| ManifestError::BadChannel {
                name: c.name.clone(),
                why,
            };
            c.validate().map_err(|e| bad(e.to_string()))?;
            if !channel_names.insert(c.name.as_str()) {
                return Err(bad("listed twice".into()));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.to_route()
                .map_err(|why| ManifestError::BadRoute { index: i + 1, why })?;
        }
        Ok(())
    }

    /// The manifest as served and written.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    /// What the content is, whatever its version: a publisher bumps the version when this
    /// changes.
    pub fn content_digest(&self) -> String {
        let unversioned = Manifest {
            version: 0,
            ..self.clone()
        };
        hex(&Sha256::digest(unversioned.to_bytes()))
    }

    /// What a follower writes as `channels.json` in the library it builds.
    pub fn channels_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct StoredChannels<'a> {
            version: u32,
            channels: &'a [ChannelSpec],
            routes: &'a [ManagedRoute],
        }
        let doc = StoredChannels {
            version: 1,
            channels: &self.channels,
            routes: &self.routes,
        };
        let mut b = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

/// The `ETag` of manifest bytes (quoted, as HTTP wants).
pub fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", &hex(&Sha256::digest(bytes))[..32])
}

/// The version to publish content `digest` under: the last one if it described the same
/// content, else one more than both the last and `floor` (an export folder's current
/// version). Kept in `<state>/export.json`, so versions only grow across restarts and between
/// the API and `mohd library export`.
pub fn publish_version(state_dir: &Path, digest: &str, floor: u64) -> io::Result<u64> {
    #[derive(Serialize, Deserialize, Default)]
    struct ExportState {
        version: u64,
        digest: String,
    }
    let path = state_dir.join(EXPORT_STATE);
    let last: ExportState = match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => ExportState::default(),
        Err(e) => return Err(e),
    };
    if last.digest == digest && last.version >= floor && last.version > 0 {
        return Ok(last.version);
    }
    let next = ExportState {
        version: last.version.max(floor) + 1,
        digest: digest.to_owned(),
    };
    write_atomic(&path, &serde_json::to_vec(&next).map_err(io::Error::other)?)?;
    Ok(next.version)
}

/// What `mohd library export` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub version: u64,
    pub tracks: usize,
    /// Files copied this time (the others were there from an earlier export).
    pub copied: usize,
}

/// Why `mohd library export` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{name}: the file's content is not what library.json records (sha256 {found}); start \
         mohd once so it reads the file again, then export"
    )]
    Changed { name: String, found: String },
    #[error("the state folder's channels.json cannot be read: {0}")]
    Channels(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the library of `state_dir` to `dir` for a web server or a bucket: `files/<sha256>`
/// for each track (those already there are kept), then `manifest.json`, last and atomically,
/// so a web server serving `dir` never lists a file it lacks. Reads the state folder without
/// changing it, so a running mohd is not disturbed.
pub fn export_dir(state_dir: &Path, dir: &Path) -> Result<ExportReport, ExportError> {
    let (tracks, settings) = super::Library::snapshot(state_dir)?;
    let (channels, routes) = read_channels(state_dir)?;
    let files = dir.join(FILES_DIR);
    fs::create_dir_all(&files).map_err(io_at(&files))?;
    let mut copied = 0;
    for t in &tracks {
        let dest = files.join(&t.sha256);
        if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == t.size_bytes) {
            continue;
        }
        copy_checked(&state_dir.join("music").join(&t.name), &dest, t)?;
        copied += 1;
    }
    fsync_dir(&files).map_err(io_at(&files))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let floor = fs::read(&manifest_path)
        .ok()
        .and_then(|b| Manifest::parse(&b, u64::MAX).ok())
        .map_or(0, |m| m.version);
    let mut manifest = Manifest::describe(&tracks, &settings, channels, routes, 0);
    manifest.version =
        publish_version(state_dir, &manifest.content_digest(), floor).map_err(io_at(state_dir))?;
    write_atomic(&manifest_path, &manifest.to_bytes()).map_err(io_at(&manifest_path))?;
    Ok(ExportReport {
        version: manifest.version,
        tracks: tracks.len(),
        copied,
    })
}

/// Copies `src` to `dest` through a temp file, checking the content against the track.
fn copy_checked(src: &Path, dest: &Path, t: &Track) -> Result<(), ExportError> {
    let tmp = crate::fsutil::temp_path_beside(dest);
    let result = (|| {
        let mut from = File::open(src).map_err(io_at(src))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).map_err(io_at(src))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(io_at(&tmp))?;
        }
        let found = hex(&hasher.finalize());
        if found != t.sha256 {
            return Err(ExportError::Changed {
                name: t.name.clone(),
                found,
            });
        }
        to.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, dest).map_err(io_at(dest))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The managed channels and routes in `<state_dir>/channels.json` (none if it is missing).
pub fn read_channels(
    state_dir: &Path,
) -> Result<(Vec<ChannelSpec>, Vec<ManagedRoute>), ExportError> {
    #[derive(Deserialize)]
    struct StoredChannels {
        #[serde(default)]
        channels: Vec<ChannelSpec>,
        #[serde(default)]
        routes: Vec<ManagedRoute>,
    }
    let path = state_dir.join(CHANNELS_JSON);
    match fs::read(&path) {
        Ok(b) => {
            let s: StoredChannels =
                serde_json::from_slice(&b).map_err(|e| ExportError::Channels(e.to_string()))?;
            Ok((s.channels, s.routes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(ExportError::Io { path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(name: &str, sha: char, size: u64) -> ManifestTrack {
        ManifestTrack {
            name: name.into(),
            size,
            sha256: std::iter::repeat_n(sha, 64).collect(),
            enabled: true,
            duration_s: 1.0,
            format: "WAV".into(),
            sample_rate: 8000,
            channels: 1,
            loudness_lufs: Some(-20.0),
            added_unix: 0,
        }
    }

    fn manifest(tracks: Vec<ManifestTrack>) -> Manifest {
        Manifest {
            format: FORMAT,
            version: 3,
            tracks,
            channels: Vec::new(),
            routes: Vec::new(),
            settings: SharedSettings::default(),
        }
    }

    fn parse(m: &Manifest) -> Result<Manifest, ManifestError> {
        Manifest::parse(&m.to_bytes(), 1000)
    }

    #[test]
    fn a_good_manifest_reads_back_as_written() {
        let m = manifest(vec![track("a.wav", 'a', 10), track("b.flac", 'b', 1000)]);
        assert_eq!(parse(&m).unwrap(), m);
        assert_eq!(m.tracks[0].to_track().id, "aaaaaaaaaaaa");
    }

    #[test]
    fn paths_sizes_hashes_and_duplicates_are_refused() {
        for bad in [
            "../etc/passwd.wav",
            "/abs.wav",
            "a/b.wav",
            ".hidden.wav",
            "x.exe",
        ] {
            let e = parse(&manifest(vec![track(bad, 'a', 10)])).unwrap_err();
            assert!(matches!(e, ManifestError::BadName { .. }), "{bad}: {e}");
        }
        let e = parse(&manifest(vec![track("a.wav", 'a', 1001)])).unwrap_err();
        assert!(e.to_string().contains("size 1001"), "{e}");
        let e = parse(&manifest(vec![track("a.wav", 'A', 10)])).unwrap_err();
        assert!(e.to_string().contains("hex"), "{e}");
        let e = parse(&manifest(vec![
            track("a.wav", 'a', 10),
            track("a.wav", 'b', 10),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = parse(&manifest(vec![
            track("a.wav", 'a', 10),
            track("b.wav", 'a', 10),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("same content"), "{e}");
        let mut m = manifest(vec![]);
        m.settings.loudness_lufs = Some(3.0);
        assert!(matches!(parse(&m), Err(ManifestError::BadSettings(_))));
    }

    #[test]
    fn a_newer_format_and_an_oversized_manifest_are_refused() {
        let mut m = manifest(vec![]);
        m.format = FORMAT + 1;
        assert_eq!(parse(&m), Err(ManifestError::NewerFormat(FORMAT + 1)));
        let huge = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert_eq!(Manifest::parse(&huge, 10), Err(ManifestError::TooLarge));
        assert!(matches!(
            Manifest::parse(b"{\"format\":1}", 10),
            Err(ManifestError::Parse(_))
        ));
    }

    #[test]
    fn versions_grow_only_when_the_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(publish_version(dir.path(), "d1", 0).unwrap(), 1);
        assert_eq!(publish_version(dir.path(), "d1", 0).unwrap(), 1);
        assert_eq!(publish_version(dir.path(), "d2", 0).unwrap(), 2);
        // An export folder already at 7 (written from another state folder): past it.
        assert_eq!(publish_version(dir.path(), "d2", 7).unwrap(), 8);
        let a = manifest(vec![track("a.wav", 'a', 10)]);
        let b = Manifest {
            version: 9,
            ..a.clone()
        };
        assert_eq!(a.content_digest(), b.content_digest());
        assert_ne!(etag_of(&a.to_bytes()), etag_of(&b.to_bytes()));
    }
}
