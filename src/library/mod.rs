//! The music library on disk: `<state>/music/` (the files), `library.json` (playlist order,
//! enabled flags, per-track metadata), `settings.json` (admin-changed settings) and `tmp/`
//! (uploads in progress).
//!
//! Uploads lose nothing and leave nothing behind: the body streams into `tmp/` with a size cap
//! and a running sha256, the file is probed (see [`probe`]), then fsynced, renamed into
//! `music/`, the folder fsynced, and only then `library.json` is replaced atomically
//! ([`crate::fsutil::write_atomic`]). Every mutation writes `library.json` before it changes
//! memory, so a failed write leaves the library as it was. After a crash, [`Library::open`]
//! makes disk and playlist agree again: `tmp/` is emptied, files in `music/` without an entry
//! are added at the end, entries without a file are dropped, and entries whose file changed
//! (size or mtime) are re-read.
//!
//! Blocking `std::fs` only; the web layer calls it from blocking threads.

pub mod follow;
pub mod manifest;
pub mod probe;

pub use probe::{ProbeError, ProbeReport, probe_file, probe_isolated, probe_main};

use crate::fsutil::{
    StateFile, StateFileError, fsync_dir, is_disk_full, read_state_file, write_atomic,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest file name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// File extensions accepted for uploads: the containers the built-in decoder reads (symphonia
/// with its default features plus mp3, aac, alac, isomp4 and aiff). The same list as the
/// channel's folder scan, minus "alac" (no container of that name exists).
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "mp3", "ogg", "oga", "m4a", "m4b", "mp4", "aac", "aif", "aiff", "aifc",
    "mka",
];

/// Audio types people upload that the decoder cannot read, to answer with advice rather than
/// a list of extensions.
const UNSUPPORTED_AUDIO: &[&str] = &[
    "opus", "wma", "ape", "caf", "webm", "mid", "midi", "amr", "wv", "dsf", "m4p", "ac3",
];

const LIBRARY_JSON: &str = "library.json";
const SETTINGS_JSON: &str = "settings.json";

/// `library.json`'s format version; a newer one is refused rather than overwritten.
const FORMAT_VERSION: u32 = 1;

/// A track in the library, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Track {
    /// The first 12 hex digits of the content's sha256: stable while the content is.
    pub id: String,
    /// File name in `music/`.
    pub name: String,
    /// Whether the track plays.
    pub enabled: bool,
    /// Length in seconds (0 when unknown: a file found in `music/` whose header says nothing).
    pub duration_s: f64,
    /// File type label: "MP3", "FLAC", "WAV", "Ogg Vorbis"... ("unknown" if unreadable).
    pub format: String,
    /// Sample rate of the file, Hz (0 when unknown).
    pub sample_rate: u32,
    /// Channels in the file (0 when unknown).
    pub channels: u16,
    /// Integrated loudness (EBU R128) of the file; `None` when not measured.
    pub loudness_lufs: Option<f64>,
    /// File size in bytes.
    pub size_bytes: u64,
    /// When the track was added, seconds since 1970.
    pub added_unix: u64,
    /// sha256 of the content, full lowercase hex.
    pub sha256: String,
}

/// Settings changed from the web page; `None` means "as the config file says".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Settings {
    /// Loudness target of channels playing the library, LUFS (-40 to -5).
    pub loudness_lufs: Option<f64>,
    /// Line-out level, dB (-60 to +12).
    pub lineout_level_db: Option<f64>,
    /// Line-out device name.
    pub lineout_device: Option<String>,
}

impl Settings {
    /// Checks every value set; the message names the setting and the allowed range.
    pub fn validate(&self) -> Result<(), SettingError> {
        if let Some(l) = self.loudness_lufs
            && !(l.is_finite() && (-40.0..=-5.0).contains(&l))
        {
            return Err(SettingError::Loudness(l));
        }
        if let Some(l) = self.lineout_level_db
            && !(l.is_finite() && (-60.0..=12.0).contains(&l))
        {
            return Err(SettingError::LineoutLevel(l));
        }
        if let Some(d) = &self.lineout_device {
            if d.trim().is_empty() {
                return Err(SettingError::EmptyDevice);
            }
            if d.len() > 256 || d.chars().any(char::is_control) {
                return Err(SettingError::BadDevice);
            }
        }
        Ok(())
    }
}

/// A setting out of its range; the message names the setting and the range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    #[error("loudness_lufs must be between -40 and -5 (got {0})")]
    Loudness(f64),
    #[error("lineout_level_db must be between -60 and 12 (got {0})")]
    LineoutLevel(f64),
    #[error("lineout_device must not be empty")]
    EmptyDevice,
    #[error("lineout_device must be at most 256 bytes without control characters")]
    BadDevice,
}

/// What is wrong with a file name for `music/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {max} bytes ({0} bytes)", max = MAX_NAME_BYTES)]
    TooLong(usize),
    #[error("the name must not contain '/' or '\\' (no folders)")]
    Folder,
    #[error("the name must not contain control characters")]
    ControlCharacter,
    #[error("the name must not start with '.'")]
    Hidden,
    /// Audio in a format the decoder cannot play (Opus, WMA...), by its extension.
    #[error(".{0} files cannot be played; convert the file to MP3, FLAC, Ogg Vorbis or WAV")]
    UnsupportedAudio(String),
    #[error("the name must end in an audio extension: .{}", AUDIO_EXTENSIONS.join(", ."))]
    NotAudio,
}

/// Why opening or changing the library failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibraryError {
    /// A file operation failed, or `library.json` was written by a newer mohd.
    #[error(transparent)]
    File(#[from] StateFileError),
    /// No track has this id.
    #[error("no track with id {0:?}")]
    NotFound(String),
    /// A playlist order that is not a permutation of the tracks.
    #[error("invalid playlist order: {0}")]
    BadOrder(String),
    /// A setting out of range.
    #[error("invalid setting: {0}")]
    InvalidSetting(#[from] SettingError),
}

impl LibraryError {
    /// The HTTP status that fits: 404 unknown id, 400 bad request, 507 disk full, else 500.
    pub fn http_status(&self) -> u16 {
        match self {
            LibraryError::NotFound(_) => 404,
            LibraryError::BadOrder(_) | LibraryError::InvalidSetting(_) => 400,
            LibraryError::File(e) => e.http_status(),
        }
    }

    fn io(action: &'static str, path: &Path, source: io::Error) -> LibraryError {
        LibraryError::File(StateFileError::io(action, path, source))
    }
}

/// Why an upload was refused. The message is meant for the person uploading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The file name is not acceptable (400).
    #[error("bad file name: {0}")]
    BadName(#[from] NameError),
    /// A track with this name exists and overwrite was not asked (409).
    #[error("a track named \"{0}\" already exists; upload with overwrite=true to replace it")]
    NameTaken(String),
    /// The same content is already in the library under another name (409).
    #[error("this audio is already in the library as \"{name}\" (id {id})")]
    Duplicate {
        /// The existing track's name.
        name: String,
        /// The existing track's id.
        id: String,
    },
    /// Different content whose sha256 starts like another track's: ids must be unique (409).
    #[error(
        "this file's id {id} collides with the track \"{name}\"; re-encode the file and try again"
    )]
    IdCollision {
        /// The existing track's name.
        name: String,
        /// The shared id.
        id: String,
    },
    /// More bytes than allowed (413).
    #[error("the file is larger than the upload limit of {}", human_bytes(*.max_bytes))]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// Not audio the decoder can read, with the decoder's reason (415).
    #[error("not an audio file we can play: {0}")]
    NotAudio(String),
    /// Audio that decodes but cannot be used: too long, silent, too slow to decode (422).
    #[error("the audio cannot be used: {0}")]
    Unusable(String),
    /// No space (or quota) left on the state folder's disk (507).
    #[error("the disk is full: no space left to store the upload")]
    DiskFull,
    /// Anything else going wrong on the server's side (500).
    #[error("could not store the upload: {0}")]
    Io(#[from] io::Error),
}

impl UploadError {
    /// 400 BadName, 409 NameTaken/Duplicate/IdCollision, 413 TooLarge, 415 NotAudio,
    /// 422 Unusable, 507 DiskFull, 500 Io.
    pub fn http_status(&self) -> u16 {
        match self {
            UploadError::BadName(_) => 400,
            UploadError::NameTaken(_)
            | UploadError::Duplicate { .. }
            | UploadError::IdCollision { .. } => 409,
            UploadError::TooLarge { .. } => 413,
            UploadError::NotAudio(_) => 415,
            UploadError::Unusable(_) => 422,
            UploadError::DiskFull => 507,
            UploadError::Io(_) => 500,
        }
    }
}

impl From<ProbeError> for UploadError {
    fn from(e: ProbeError) -> UploadError {
        match e {
            ProbeError::NotAudio(m) | ProbeError::Crashed(m) => UploadError::NotAudio(m),
            ProbeError::Unusable(m) => UploadError::Unusable(m),
            t @ ProbeError::Timeout(_) => UploadError::Unusable(t.to_string()),
            ProbeError::Failed(m) => UploadError::Io(io::Error::other(m)),
        }
    }
}

/// A write error during an upload: a full disk is the uploader's to know about (507).
fn upload_write_error(e: io::Error) -> UploadError {
    if is_disk_full(&e) {
        UploadError::DiskFull
    } else {
        UploadError::Io(e)
    }
}

fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Checks a file name for `music/`: a plain name (no path, no hidden file, no control
/// characters), at most [`MAX_NAME_BYTES`], ending in an extension from [`AUDIO_EXTENSIONS`].
/// The error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Folder);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    if name.starts_with('.') {
        return Err(NameError::Hidden);
    }
    let ext = match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => String::new(),
    };
    if AUDIO_EXTENSIONS.contains(&ext.as_str()) {
        return Ok(());
    }
    if UNSUPPORTED_AUDIO.contains(&ext.as_str()) {
        return Err(NameError::UnsupportedAudio(ext));
    }
    Err(NameError::NotAudio)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The track id of a full sha256 hex string.
fn id_of(sha256: &str) -> String {
    sha256.get(..12).unwrap_or(sha256).to_owned()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u64> {
    let d = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

/// One `library.json` entry: the track plus the file's mtime when it was last read, so
/// [`Library::open`] can tell a file replaced behind its back (or by an upload cut short
/// between the rename and the json write) from one that is as recorded.
#[derive(Serialize, Deserialize)]
struct StoredTrack {
    #[serde(flatten)]
    track: Track,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime_ns: Option<u64>,
}

#[derive(Serialize)]
struct StoredTrackRef<'a> {
    #[serde(flatten)]
    track: &'a Track,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime_ns: Option<u64>,
}

/// Entries are parsed one by one (see [`Library::open`]): one damaged entry costs that entry,
/// not the playlist. (`version` is checked by [`read_state_file`].)
#[derive(Deserialize)]
struct StoredLibrary {
    tracks: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct StoredLibraryRef<'a> {
    version: u32,
    tracks: Vec<StoredTrackRef<'a>>,
}

/// What became of a recorded track when its file was looked at again.
enum Checked {
    /// The file is as recorded (or cannot be looked at just now), with its recorded mtime.
    AsRecorded(Track, Option<u64>),
    /// The file changed and was read again.
    ReadAgain(Track, Option<u64>),
    /// The file is gone, not a file, or unreadable since it changed.
    Dropped,
}

/// The music library of one state folder. See the module docs.
#[derive(Debug)]
pub struct Library {
    state_dir: PathBuf,
    music_dir: PathBuf,
    tmp_dir: PathBuf,
    tracks: Vec<Track>,
    /// Track id → file mtime when last read.
    mtimes: HashMap<String, u64>,
    settings: Settings,
}

impl Library {
    /// Opens (creating if needed) the library in `state_dir`, and makes disk and playlist agree
    /// (see the module docs). A corrupt `library.json` or `settings.json` is renamed to
    /// `NAME.corrupt-<unix time>` and rebuilt, with an error logged; the music is never lost.
    pub fn open(state_dir: &Path) -> Result<Library, LibraryError> {
        let music_dir = state_dir.join("music");
        let tmp_dir = state_dir.join("tmp");
        for d in [state_dir, &music_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(|e| LibraryError::io("create", d, e))?;
        }
        empty_tmp(&tmp_dir)?;
        remove_stale_json_temps(state_dir);
        warn_if_different_filesystems(&music_dir, &tmp_dir);

        let settings = load_settings(&state_dir.join(SETTINGS_JSON))?;
        let json_path = state_dir.join(LIBRARY_JSON);
        let (stored, mut changed) = load_library(&json_path)?;
        let mut lib = Library {
            state_dir: state_dir.to_owned(),
            music_dir,
            tmp_dir,
            tracks: Vec::new(),
            mtimes: HashMap::new(),
            settings,
        };
        changed |= lib.reconcile(stored);
        if changed && let Err(e) = write_library(&json_path, &lib.tracks, &lib.mtimes) {
            // Memory is right; the next change writes the file again.
            tracing::error!(path = %json_path.display(), error = %e, "cannot update library.json");
        }
        tracing::info!(
            dir = %lib.music_dir.display(),
            tracks = lib.tracks.len(),
            enabled = lib.tracks.iter().filter(|t| t.enabled).count(),
            "library opened"
        );
        Ok(lib)
    }

    /// Takes the stored entries that still match a file, then adds files nobody listed.
    /// Returns whether anything differs from what was stored.
    fn reconcile(&mut self, stored: Vec<StoredTrack>) -> bool {
        let mut changed = false;
        for entry in stored {
            changed |= !self.restore_recorded(entry);
        }
        for name in self.unlisted_files() {
            changed |= self.add_found(name);
        }
        changed
    }

    /// Takes one `library.json` entry into the playlist if its file is still there (read again
    /// if it changed). Returns whether it was taken as recorded.
    fn restore_recorded(&mut self, entry: StoredTrack) -> bool {
        let StoredTrack {
            track,
            mtime_ns: recorded,
        } = entry;
        if let Err(why) = validate_name(&track.name) {
            tracing::warn!(name = %track.name, %why, "library.json entry with a bad name dropped");
            return false;
        }
        if self.tracks.iter().any(|t| t.name == track.name) {
            tracing::warn!(name = %track.name, "library.json lists a file twice; later entry dropped");
            return false;
        }
        let (track, mtime, as_recorded) = match self.check_recorded(track, recorded) {
            Checked::AsRecorded(t, m) => (t, m, true),
            Checked::ReadAgain(t, m) => (t, m, false),
            Checked::Dropped => return false,
        };
        if self.tracks.iter().any(|t| t.id == track.id) {
            tracing::warn!(name = %track.name, id = %track.id, "same content as another track; entry dropped");
            return false;
        }
        if let Some(t) = mtime {
            self.mtimes.insert(track.id.clone(), t);
        }
        self.tracks.push(track);
        as_recorded
    }

    /// Compares a recorded track with its file (size and modification time).
    fn check_recorded(&self, track: Track, recorded: Option<u64>) -> Checked {
        let path = self.music_dir.join(&track.name);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(name = %track.name, "file gone from music/; track dropped");
                Checked::Dropped
            }
            Err(e) => {
                // Unreadable now (permissions?) but maybe not for long: keep the entry.
                tracing::warn!(name = %track.name, error = %e, "cannot stat a library file");
                Checked::AsRecorded(track, recorded)
            }
            Ok(m) if !m.is_file() => {
                tracing::warn!(name = %track.name, "not a regular file; track dropped");
                Checked::Dropped
            }
            Ok(m)
                if m.len() != track.size_bytes
                    || recorded.is_some_and(|t| mtime_ns(&m) != Some(t)) =>
            {
                tracing::warn!(name = %track.name, "file changed since it was recorded; reading it again");
                match describe_file(&path, &track.name, track.enabled, track.added_unix) {
                    Ok((fresh, mtime)) => Checked::ReadAgain(fresh, mtime),
                    Err(e) => {
                        tracing::warn!(name = %track.name, error = %e, "cannot read a changed file; track dropped");
                        Checked::Dropped
                    }
                }
            }
            Ok(_) => Checked::AsRecorded(track, recorded),
        }
    }

    /// Names of the files in `music/` that no track lists, sorted.
    fn unlisted_files(&self) -> Vec<String> {
        let listed: HashSet<&str> = self.tracks.iter().map(|t| t.name.as_str()).collect();
        let mut found: Vec<String> = match fs::read_dir(&self.music_dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter_map(|e| match e.file_name().into_string() {
                    Ok(n) => Some(n),
                    Err(n) => {
                        tracing::warn!(name = ?n, "file name in music/ is not UTF-8; ignored");
                        None
                    }
                })
                .filter(|n| !listed.contains(n.as_str()))
                .collect(),
            Err(e) => {
                tracing::error!(dir = %self.music_dir.display(), error = %e, "cannot list music/");
                Vec::new()
            }
        };
        found.sort();
        found
    }

    /// Adds a file found in `music/` at the end of the playlist, enabled. Returns whether it
    /// was added.
    fn add_found(&mut self, name: String) -> bool {
        if let Err(why) = validate_name(&name) {
            tracing::warn!(%name, %why, "file in music/ ignored");
            return false;
        }
        let path = self.music_dir.join(&name);
        if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            return false;
        }
        match describe_file(&path, &name, true, now_unix()) {
            Ok((track, mtime)) => {
                if let Some(other) = self.tracks.iter().find(|t| t.id == track.id) {
                    tracing::warn!(%name, same_as = %other.name, "file in music/ has the same content as a track; not added");
                    return false;
                }
                tracing::info!(%name, format = %track.format, "file found in music/ added to the playlist");
                if let Some(t) = mtime {
                    self.mtimes.insert(track.id.clone(), t);
                }
                self.tracks.push(track);
                true
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot read a file in music/; ignored");
                false
            }
        }
    }

    /// The tracks and settings recorded in `state_dir`, read without changing anything (no
    /// repair, no temp files removed), so `mohd library export` may run beside a server.
    pub fn snapshot(state_dir: &Path) -> Result<(Vec<Track>, Settings), LibraryError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
            tracks: Vec<serde_json::Value>,
        }
        let path = state_dir.join(LIBRARY_JSON);
        let tracks = match fs::read(&path) {
            Ok(b) => {
                let doc: Versioned = serde_json::from_slice(&b)
                    .map_err(|e| LibraryError::io("parse", &path, io::Error::other(e)))?;
                if doc.version > FORMAT_VERSION {
                    return Err(LibraryError::File(StateFileError::UnsupportedVersion {
                        path,
                        version: doc.version,
                        understood: FORMAT_VERSION,
                    }));
                }
                doc.tracks
                    .into_iter()
                    .filter_map(|v| serde_json::from_value::<StoredTrack>(v).ok())
                    .map(|s| s.track)
                    .collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(LibraryError::io("read", &path, e)),
        };
        let path = state_dir.join(SETTINGS_JSON);
        let settings = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| LibraryError::io("parse", &path, io::Error::other(e)))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(LibraryError::io("read", &path, e)),
        };
        Ok((tracks, settings))
    }

    /// Tracks in playlist order.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The track with this id.
    pub fn track(&self, id: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Paths of the enabled tracks, in playlist order (what a `music = "library"` channel
    /// plays).
    pub fn playlist_paths(&self) -> Vec<PathBuf> {
        self.tracks
            .iter()
            .filter(|t| t.enabled)
            .map(|t| self.music_dir.join(&t.name))
            .collect()
    }

    /// `<state>/music`.
    pub fn music_dir(&self) -> &Path {
        &self.music_dir
    }

    /// `<state>/tmp`.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The file of the track with this id.
    pub fn path_of(&self, id: &str) -> Option<PathBuf> {
        self.track(id).map(|t| self.music_dir.join(&t.name))
    }

    /// The settings changed from the web page.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Validates and stores `settings` (replacing all of them) in `settings.json`.
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), LibraryError> {
        settings.validate()?;
        if settings == self.settings {
            return Ok(());
        }
        let path = self.state_dir.join(SETTINGS_JSON);
        let mut bytes = serde_json::to_vec_pretty(&settings)
            .map_err(|e| LibraryError::io("encode", &path, io::Error::other(e)))?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes).map_err(|e| LibraryError::io("write", &path, e))?;
        self.settings = settings;
        Ok(())
    }

    /// Removes a track and its file.
    ///
    /// The file goes first: if `library.json` cannot be written afterwards, the error is
    /// returned and memory still lists the track (its file is gone, so the next open drops
    /// it, and a retry succeeds).
    pub fn delete(&mut self, id: &str) -> Result<(), LibraryError> {
        let idx = self.index_of(id)?;
        let path = self.music_dir.join(&self.tracks[idx].name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LibraryError::io("remove", &path, e)),
        }
        fsync_dir(&self.music_dir).map_err(|e| LibraryError::io("sync", &self.music_dir, e))?;
        let mut tracks = self.tracks.clone();
        let removed = tracks.remove(idx);
        let mut mtimes = self.mtimes.clone();
        mtimes.remove(&removed.id);
        self.commit(tracks, mtimes)?;
        tracing::info!(name = %removed.name, id = %removed.id, "track deleted");
        Ok(())
    }

    /// Sets the playlist order. `order` must list every track id exactly once.
    pub fn reorder(&mut self, order: &[String]) -> Result<(), LibraryError> {
        if order.len() != self.tracks.len() {
            return Err(LibraryError::BadOrder(format!(
                "it must list every track exactly once: {} ids given for {} tracks",
                order.len(),
                self.tracks.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut tracks = Vec::with_capacity(order.len());
        for id in order {
            if !seen.insert(id.as_str()) {
                return Err(LibraryError::BadOrder(format!(
                    "track id {id:?} is listed twice"
                )));
            }
            let t = self
                .track(id)
                .ok_or_else(|| LibraryError::BadOrder(format!("unknown track id {id:?}")))?;
            tracks.push(t.clone());
        }
        if tracks == self.tracks {
            return Ok(());
        }
        self.commit(tracks, self.mtimes.clone())
    }

    /// Enables or disables a track; returns it as it now is.
    pub fn set_enabled(&mut self, id: &str, enabled: bool) -> Result<Track, LibraryError> {
        let idx = self.index_of(id)?;
        if self.tracks[idx].enabled != enabled {
            let mut tracks = self.tracks.clone();
            tracks[idx].enabled = enabled;
            self.commit(tracks, self.mtimes.clone())?;
        }
        Ok(self.tracks[idx].clone())
    }

    /// Starts an upload named `name`: checks the name (and that it is free, unless
    /// `overwrite`), and creates its temp file in `tmp/`. At most `max_bytes` may be written.
    ///
    /// Takes `&self` so the body can stream without holding the library; the name is checked
    /// again at [`Library::commit_upload`].
    pub fn begin_upload(
        &self,
        name: &str,
        overwrite: bool,
        max_bytes: u64,
    ) -> Result<Upload, UploadError> {
        validate_name(name)?;
        if !overwrite && self.name_taken(name) {
            return Err(UploadError::NameTaken(name.to_owned()));
        }
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        // The decoder takes a hint from the extension, so the temp file keeps it.
        let tmp_path = self
            .tmp_dir
            .join(format!("upload-{:016x}.{ext}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(upload_write_error)?;
        Ok(Upload {
            name: name.to_owned(),
            overwrite,
            tmp_path,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            max_bytes,
            state: UploadState::Open,
        })
    }

    /// Finishes an upload: refuses duplicate content, runs `probe` on the temp file, then
    /// fsyncs it, renames it into `music/`, fsyncs the folder and writes `library.json`. A new
    /// track goes at the end, enabled; an overwritten one keeps its place and enabled flag.
    ///
    /// On any error the temp file is removed and the library (disk and memory) is as before:
    /// if `library.json` cannot be written after the rename, the new file is removed again, or
    /// the file it replaced put back.
    ///
    /// `probe` normally is `|p| probe_isolated(exe, p, timeout)`; it runs while `&mut self` is
    /// held.
    pub fn commit_upload(
        &mut self,
        mut upload: Upload,
        probe: impl FnOnce(&Path) -> Result<ProbeReport, ProbeError>,
    ) -> Result<Track, UploadError> {
        let existing = self.tracks.iter().position(|t| t.name == upload.name);
        let sha256 = self.check_upload(&upload, existing)?;
        let report = probe(&upload.tmp_path)?;
        if let Some(f) = upload.file.take() {
            f.sync_all().map_err(upload_write_error)?;
        }

        let dest = self.music_dir.join(&upload.name);
        let undo = self.undo_for(&dest, &upload.name);
        if let Err(e) = fs::rename(&upload.tmp_path, &dest) {
            undo.discard();
            return Err(upload_write_error(e));
        }
        upload.state = UploadState::Committed;

        match self.record_upload(&dest, &upload.name, sha256, &report, existing) {
            Ok((track, tracks, mtimes)) => {
                undo.discard();
                self.tracks = tracks;
                self.mtimes = mtimes;
                tracing::info!(
                    name = %track.name,
                    id = %track.id,
                    format = %track.format,
                    duration_s = track.duration_s,
                    replaced = existing.is_some(),
                    "track uploaded"
                );
                Ok(track)
            }
            Err(e) => {
                undo.apply(&dest, &self.music_dir);
                tracing::error!(name = %upload.name, error = %e, "upload not stored");
                Err(upload_write_error(e))
            }
        }
    }

    /// Refuses an upload that was aborted, whose name is taken (unless it overwrites), or
    /// whose content is already another track's (`existing`, the track it replaces, aside).
    /// Returns the content's sha256.
    fn check_upload(
        &self,
        upload: &Upload,
        existing: Option<usize>,
    ) -> Result<String, UploadError> {
        if upload.state != UploadState::Open || upload.file.is_none() {
            return Err(UploadError::Io(io::Error::other(
                "the upload was already aborted",
            )));
        }
        if !upload.overwrite && self.name_taken(&upload.name) {
            return Err(UploadError::NameTaken(upload.name.clone()));
        }
        let sha256 = hex(&upload.hasher.clone().finalize());
        let id = id_of(&sha256);
        for (i, t) in self.tracks.iter().enumerate() {
            if Some(i) == existing {
                continue;
            }
            if t.sha256 == sha256 {
                return Err(UploadError::Duplicate {
                    name: t.name.clone(),
                    id: t.id.clone(),
                });
            }
            if t.id == id {
                return Err(UploadError::IdCollision {
                    name: t.name.clone(),
                    id,
                });
            }
        }
        Ok(sha256)
    }

    /// How to undo putting a file at `dest` if recording it fails.
    fn undo_for(&self, dest: &Path, name: &str) -> Undo {
        if fs::symlink_metadata(dest).is_err() {
            return Undo::Remove;
        }
        // Keep the file being replaced (a hard link, so nothing is copied) until
        // library.json is written, to put it back if that fails.
        let backup = self
            .tmp_dir
            .join(format!("replaced-{:016x}", rand::random::<u64>()));
        match fs::hard_link(dest, &backup) {
            Ok(()) => Undo::Restore(backup),
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot keep the replaced file for a rollback");
                Undo::Keep
            }
        }
    }

    /// Writes `library.json` with the uploaded file (now at `dest`) in the playlist, in the
    /// replaced track's place or at the end. Returns the track and the new playlist, for the
    /// caller to take once that write has succeeded.
    fn record_upload(
        &self,
        dest: &Path,
        name: &str,
        sha256: String,
        report: &ProbeReport,
        existing: Option<usize>,
    ) -> io::Result<(Track, Vec<Track>, HashMap<String, u64>)> {
        fsync_dir(&self.music_dir)?;
        let meta = fs::metadata(dest)?;
        let id = id_of(&sha256);
        let track = Track {
            id: id.clone(),
            name: name.to_owned(),
            enabled: existing.is_none_or(|i| self.tracks[i].enabled),
            duration_s: probe::round_to(report.duration_s, 3),
            format: report.format.clone(),
            sample_rate: report.sample_rate,
            channels: report.channels,
            loudness_lufs: report.loudness_lufs.map(|l| probe::round_to(l, 2)),
            size_bytes: meta.len(),
            added_unix: now_unix(),
            sha256,
        };
        let mut tracks = self.tracks.clone();
        let mut mtimes = self.mtimes.clone();
        match existing {
            Some(i) => {
                mtimes.remove(&tracks[i].id);
                tracks[i] = track.clone();
            }
            None => tracks.push(track.clone()),
        }
        if let Some(t) = mtime_ns(&meta) {
            mtimes.insert(id, t);
        }
        write_library(&self.state_dir.join(LIBRARY_JSON), &tracks, &mtimes)?;
        Ok((track, tracks, mtimes))
    }

    fn name_taken(&self, name: &str) -> bool {
        self.tracks.iter().any(|t| t.name == name)
            || fs::symlink_metadata(self.music_dir.join(name)).is_ok()
    }

    fn index_of(&self, id: &str) -> Result<usize, LibraryError> {
        self.tracks
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| LibraryError::NotFound(id.to_owned()))
    }

    /// Writes `tracks` to library.json, then makes them current. On failure nothing changes.
    fn commit(
        &mut self,
        tracks: Vec<Track>,
        mtimes: HashMap<String, u64>,
    ) -> Result<(), LibraryError> {
        let path = self.state_dir.join(LIBRARY_JSON);
        write_library(&path, &tracks, &mtimes).map_err(|e| LibraryError::io("write", &path, e))?;
        self.tracks = tracks;
        self.mtimes = mtimes;
        Ok(())
    }
}

/// What to do with `music/NAME` if library.json cannot be written after the rename.
enum Undo {
    /// It was a new name: remove the file.
    Remove,
    /// It replaced a file, kept here: put it back.
    Restore(PathBuf),
    /// It replaced a file we could not keep: leave the new one (the next open re-reads it).
    Keep,
}

impl Undo {
    fn apply(self, dest: &Path, music_dir: &Path) {
        let r = match &self {
            Undo::Remove => fs::remove_file(dest),
            Undo::Restore(backup) => fs::rename(backup, dest),
            Undo::Keep => Ok(()),
        };
        if let Err(e) = r.and_then(|()| fsync_dir(music_dir)) {
            tracing::error!(file = %dest.display(), error = %e, "cannot undo an upload; the next start reconciles");
        }
    }

    fn discard(self) {
        if let Undo::Restore(backup) = self
            && let Err(e) = fs::remove_file(&backup)
        {
            tracing::warn!(file = %backup.display(), error = %e, "cannot remove a replaced file; the next start does");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    Open,
    Failed,
    Committed,
}

/// An upload in progress: a temp file in `tmp/` and the sha256 of what was written so far.
/// Dropping it before [`Library::commit_upload`] succeeds removes the temp file.
#[derive(Debug)]
pub struct Upload {
    name: String,
    overwrite: bool,
    tmp_path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    max_bytes: u64,
    state: UploadState,
}

impl Upload {
    /// Appends a chunk. Past `max_bytes` ([`UploadError::TooLarge`]), on a full disk
    /// ([`UploadError::DiskFull`]) or any other write error the temp file is removed and the
    /// upload is dead: later writes fail too.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        if self.state != UploadState::Open {
            return Err(UploadError::Io(io::Error::other(
                "the upload was already aborted",
            )));
        }
        let Some(file) = self.file.as_mut() else {
            return Err(UploadError::Io(io::Error::other(
                "the upload is already finished",
            )));
        };
        let total = self.written.saturating_add(chunk.len() as u64);
        if total > self.max_bytes {
            self.abort();
            return Err(UploadError::TooLarge {
                max_bytes: self.max_bytes,
            });
        }
        if let Err(e) = file.write_all(chunk) {
            self.abort();
            return Err(upload_write_error(e));
        }
        self.hasher.update(chunk);
        self.written = total;
        Ok(())
    }

    /// The file name asked for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temp file being written, so the caller can probe it without holding the library
    /// (a decode takes seconds; the status page must not wait for it).
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Whether this upload may replace a track of the same name.
    pub fn overwrite(&self) -> bool {
        self.overwrite
    }

    fn abort(&mut self) {
        self.file = None;
        self.state = UploadState::Failed;
        match fs::remove_file(&self.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %self.tmp_path.display(), error = %e, "cannot remove an upload's temp file")
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.state == UploadState::Open {
            self.abort();
        }
    }
}

/// Hashes a file in `music/` and reads its header: a [`Track`] for a file nobody uploaded
/// through us. Loudness is left unmeasured; a header that cannot be read gives zeros and
/// format "unknown" (the channel render says what is wrong with it).
fn describe_file(
    path: &Path,
    name: &str,
    enabled: bool,
    added_unix: u64,
) -> io::Result<(Track, Option<u64>)> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = hex(&hasher.finalize());
    let header = probe::read_header(path);
    if let Err(e) = &header {
        tracing::warn!(%name, error = %e, "cannot read the header of a file in music/");
    }
    let header = header.ok();
    let track = Track {
        id: id_of(&sha256),
        name: name.to_owned(),
        enabled,
        duration_s: header
            .as_ref()
            .and_then(|h| h.duration_s)
            .map_or(0.0, |d| probe::round_to(d, 3)),
        format: header
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |h| h.format.clone()),
        sample_rate: header.as_ref().and_then(|h| h.sample_rate).unwrap_or(0),
        channels: header.as_ref().and_then(|h| h.channels).unwrap_or(0),
        loudness_lufs: None,
        size_bytes: meta.len(),
        added_unix,
        sha256,
    };
    Ok((track, mtime_ns(&meta)))
}

fn write_library(path: &Path, tracks: &[Track], mtimes: &HashMap<String, u64>) -> io::Result<()> {
    let doc = StoredLibraryRef {
        version: FORMAT_VERSION,
        tracks: tracks
            .iter()
            .map(|t| StoredTrackRef {
                track: t,
                mtime_ns: mtimes.get(&t.id).copied(),
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads library.json into entries. Missing: none. Unparseable: renamed aside, none (the
/// caller then adopts everything in `music/`). Returns whether the caller must rewrite it.
fn load_library(path: &Path) -> Result<(Vec<StoredTrack>, bool), LibraryError> {
    let doc: StoredLibrary = match read_state_file(
        path,
        FORMAT_VERSION,
        "rebuilding the playlist from music/ (order and enabled flags are lost)",
    )? {
        StateFile::Missing => return Ok((Vec::new(), false)),
        StateFile::SetAside => return Ok((Vec::new(), true)),
        StateFile::Read(doc) => doc,
    };
    let mut changed = false;
    let mut out = Vec::with_capacity(doc.tracks.len());
    for (i, v) in doc.tracks.into_iter().enumerate() {
        match serde_json::from_value::<StoredTrack>(v) {
            Ok(t) => out.push(t),
            Err(e) => {
                tracing::error!(entry = i, error = %e, "damaged library.json entry dropped (its file is added back at the end)");
                changed = true;
            }
        }
    }
    Ok((out, changed))
}

/// Settings from settings.json; missing → defaults; unparseable or invalid → renamed aside,
/// defaults, an error logged.
fn load_settings(path: &Path) -> Result<Settings, LibraryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => return Err(LibraryError::io("read", path, e)),
    };
    let why = match serde_json::from_slice::<Settings>(&bytes) {
        Ok(s) => match s.validate() {
            Ok(()) => return Ok(s),
            Err(why) => why.to_string(),
        },
        Err(e) => e.to_string(),
    };
    let aside = set_aside(path)?;
    tracing::error!(
        path = %path.display(),
        moved_to = %aside.display(),
        error = %why,
        "settings.json is unusable; using the config file's settings"
    );
    Ok(Settings::default())
}

/// Renames a corrupt file aside (see [`crate::fsutil::set_aside`]).
fn set_aside(path: &Path) -> Result<PathBuf, LibraryError> {
    crate::fsutil::set_aside(path).map_err(|e| LibraryError::io("rename", path, e))
}

/// Removes everything in `tmp/`: uploads cut short by a crash, and replaced files kept for a
/// rollback that never came.
fn empty_tmp(tmp_dir: &Path) -> Result<(), LibraryError> {
    let rd = fs::read_dir(tmp_dir).map_err(|e| LibraryError::io("list", tmp_dir, e))?;
    let mut removed = 0usize;
    for entry in rd {
        let entry = entry.map_err(|e| LibraryError::io("list", tmp_dir, e))?;
        let p = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot remove a temp file"),
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed leftover upload temp files");
    }
    Ok(())
}

/// Removes `library.json.tmp-*` and `settings.json.tmp-*` left by a crash inside
/// `write_atomic`.
fn remove_stale_json_temps(state_dir: &Path) {
    crate::fsutil::remove_stale_temps(state_dir, &[LIBRARY_JSON, SETTINGS_JSON]);
}

/// Uploads rename from `tmp/` into `music/`, which only works within one filesystem.
fn warn_if_different_filesystems(music_dir: &Path, tmp_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(a), Ok(b)) = (fs::metadata(music_dir), fs::metadata(tmp_dir))
        && a.dev() != b.dev()
    {
        tracing::warn!(
            music = %music_dir.display(),
            tmp = %tmp_dir.display(),
            "music/ and tmp/ are on different filesystems: uploads will fail"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A short WAV whose content differs with `freq`.
    fn wav(freq: f64, seconds: f64) -> Vec<u8> {
        let rate = 8000;
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cur = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
        for s in crate::audio::test_util::sine(freq, rate, (seconds * 8000.0) as usize, 0.5) {
            w.write_sample((s * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
        cur.into_inner()
    }

    fn upload_with(
        lib: &mut Library,
        name: &str,
        overwrite: bool,
        bytes: &[u8],
    ) -> Result<Track, UploadError> {
        let mut up = lib.begin_upload(name, overwrite, 1 << 30)?;
        for chunk in bytes.chunks(3000) {
            up.write(chunk)?;
        }
        lib.commit_upload(up, probe_file)
    }

    fn upload(lib: &mut Library, name: &str, bytes: &[u8]) -> Result<Track, UploadError> {
        upload_with(lib, name, false, bytes)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn names(lib: &Library) -> Vec<&str> {
        lib.tracks().iter().map(|t| t.name.as_str()).collect()
    }

    fn ids(lib: &Library) -> Vec<String> {
        lib.tracks().iter().map(|t| t.id.clone()).collect()
    }

    /// A library with a.wav, b.wav, c.wav.
    fn abc() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let mut lib = Library::open(dir.path()).unwrap();
        for (n, f) in [("a.wav", 300.0), ("b.wav", 400.0), ("c.wav", 500.0)] {
            upload(&mut lib, n, &wav(f, 1.0)).unwrap();
        }
        (dir, lib)
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let long = format!("{}.mp3", "x".repeat(MAX_NAME_BYTES));
        for (name, says) in [
            ("", "empty"),
            (long.as_str(), "longer than 200"),
            ("a/b.mp3", "'/'"),
            ("../../etc/evil.wav", "'/'"),
            ("a\\b.mp3", "'\\'"),
            ("a\0b.mp3", "control"),
            ("a\nb.mp3", "control"),
            ("a\u{7f}b.mp3", "control"),
            (".", "start with '.'"),
            ("..", "start with '.'"),
            (".hidden.mp3", "start with '.'"),
            ("song", "audio extension"),
            ("notes.txt", "audio extension"),
            ("voice.opus", "convert"),
        ] {
            let e = validate_name(name).unwrap_err().to_string();
            assert!(e.contains(says), "{name:?}: {e}");
        }
        let ok_long = format!("{}.mp3", "x".repeat(MAX_NAME_BYTES - 4));
        for name in [
            "Song 1.MP3",
            "été à Paris.flac",
            "a.b.ogg",
            "x.m4a",
            "x.aiff",
            ok_long.as_str(),
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path()).unwrap();
        let e = lib.begin_upload("../x.wav", false, 100).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().starts_with("bad file name: "), "{e}");
        assert!(entries(lib.tmp_dir()).is_empty());
    }

    #[test]
    fn uploads_survive_a_reopen_in_order() {
        let (dir, lib) = abc();
        assert_eq!(names(&lib), ["a.wav", "b.wav", "c.wav"]);
        assert_eq!(entries(lib.music_dir()), ["a.wav", "b.wav", "c.wav"]);
        assert!(entries(lib.tmp_dir()).is_empty());
        let a = &lib.tracks()[0];
        let sha = hex(&Sha256::digest(wav(300.0, 1.0)));
        assert_eq!(a.sha256, sha);
        assert_eq!(a.id, sha[..12]);
        assert!(a.enabled);
        assert_eq!(a.format, "WAV");
        assert_eq!((a.sample_rate, a.channels), (8000, 1));
        assert!((a.duration_s - 1.0).abs() < 0.01);
        assert!(a.loudness_lufs.is_some());
        assert_eq!(a.size_bytes, wav(300.0, 1.0).len() as u64);
        assert_eq!(lib.path_of(&a.id), Some(dir.path().join("music/a.wav")));
        assert_eq!(lib.track(&a.id), Some(a));

        let again = Library::open(dir.path()).unwrap();
        assert_eq!(again.tracks(), lib.tracks());
        assert_eq!(again.playlist_paths(), lib.playlist_paths());
        assert_eq!(lib.playlist_paths().len(), 3);
    }

    #[test]
    fn taken_names_and_duplicate_content_are_refused() {
        let (_dir, mut lib) = abc();
        let before = lib.tracks().to_vec();
        let e = lib.begin_upload("a.wav", false, 1 << 20).unwrap_err();
        assert!(
            matches!(&e, UploadError::NameTaken(n) if n == "a.wav"),
            "{e:?}"
        );
        assert_eq!(e.http_status(), 409);
        assert!(e.to_string().contains("overwrite=true"), "{e}");

        let e = upload(&mut lib, "copy.wav", &wav(300.0, 1.0)).unwrap_err();
        assert!(
            matches!(&e, UploadError::Duplicate { name, .. } if name == "a.wav"),
            "{e:?}"
        );
        assert_eq!(e.http_status(), 409);
        assert!(e.to_string().contains("\"a.wav\""), "{e}");

        // A file put in music/ behind our back still owns its name.
        fs::write(lib.music_dir().join("stray.wav"), b"x").unwrap();
        assert!(matches!(
            lib.begin_upload("stray.wav", false, 1 << 20),
            Err(UploadError::NameTaken(_))
        ));
        fs::remove_file(lib.music_dir().join("stray.wav")).unwrap();

        // Two uploads of one name at once: the second to finish loses.
        let mut u1 = lib.begin_upload("d.wav", false, 1 << 20).unwrap();
        let mut u2 = lib.begin_upload("d.wav", false, 1 << 20).unwrap();
        u1.write(&wav(600.0, 1.0)).unwrap();
        u2.write(&wav(700.0, 1.0)).unwrap();
        lib.commit_upload(u1, probe_file).unwrap();
        assert!(matches!(
            lib.commit_upload(u2, probe_file),
            Err(UploadError::NameTaken(_))
        ));
        assert_eq!(lib.tracks().len(), before.len() + 1);
        assert_eq!(lib.tracks()[..3], before[..]);
        assert!(entries(lib.tmp_dir()).is_empty());
    }

    #[test]
    fn overwrite_keeps_the_place_and_the_enabled_flag() {
        let (dir, mut lib) = abc();
        let old = lib.tracks()[1].clone();
        lib.set_enabled(&old.id, false).unwrap();
        let new = upload_with(&mut lib, "b.wav", true, &wav(450.0, 2.0)).unwrap();
        assert_eq!(names(&lib), ["a.wav", "b.wav", "c.wav"]);
        assert_ne!(new.id, old.id);
        assert!(!new.enabled, "the enabled flag is kept");
        assert!((new.duration_s - 2.0).abs() < 0.01);
        assert_eq!(lib.tracks()[1], new);
        assert_eq!(lib.track(&old.id), None);
        assert_eq!(
            fs::read(lib.music_dir().join("b.wav")).unwrap(),
            wav(450.0, 2.0)
        );
        assert!(entries(lib.tmp_dir()).is_empty(), "no backup left behind");
        assert_eq!(Library::open(dir.path()).unwrap().tracks(), lib.tracks());

        // The same content again over itself is fine; over another track's content is not.
        upload_with(&mut lib, "b.wav", true, &wav(450.0, 2.0)).unwrap();
        let e = upload_with(&mut lib, "b.wav", true, &wav(300.0, 1.0)).unwrap_err();
        assert!(matches!(&e, UploadError::Duplicate { name, .. } if name == "a.wav"));
        // Overwrite of a name that does not exist is a plain upload, at the end.
        upload_with(&mut lib, "z.wav", true, &wav(900.0, 1.0)).unwrap();
        assert_eq!(names(&lib), ["a.wav", "b.wav", "c.wav", "z.wav"]);
    }

    #[test]
    fn too_large_stops_the_upload_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut lib = Library::open(dir.path()).unwrap();
        let mut up = lib.begin_upload("big.wav", false, 10_000).unwrap();
        up.write(&[0u8; 8000]).unwrap();
        assert_eq!(entries(lib.tmp_dir()).len(), 1);
        let e = up.write(&[0u8; 8000]).unwrap_err();
        assert!(matches!(e, UploadError::TooLarge { max_bytes: 10_000 }));
        assert_eq!(e.http_status(), 413);
        assert!(entries(lib.tmp_dir()).is_empty());
        assert!(up.write(&[0u8; 10]).is_err(), "a dead upload stays dead");
        assert!(lib.commit_upload(up, probe_file).is_err());
        assert!(lib.tracks().is_empty());
        assert!(entries(lib.music_dir()).is_empty());
        let mib = UploadError::TooLarge {
            max_bytes: 200 << 20,
        };
        assert!(mib.to_string().contains("200 MiB"), "{mib}");
    }

    #[test]
    fn a_full_disk_is_507_and_changes_nothing() {
        let (_dir, lib) = abc();
        let before = lib.tracks().to_vec();
        let mut up = lib.begin_upload("d.wav", false, 1 << 20).unwrap();
        up.write(b"RIFF").unwrap();
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        up.file = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let e = up.write(&[0u8; 4096]).unwrap_err();
        assert!(matches!(e, UploadError::DiskFull), "{e:?}");
        assert_eq!(e.http_status(), 507);
        assert!(e.to_string().contains("disk is full"), "{e}");
        assert!(entries(lib.tmp_dir()).is_empty(), "temp file removed");
        drop(up);
        assert_eq!(lib.tracks(), before);
        assert_eq!(entries(lib.music_dir()), ["a.wav", "b.wav", "c.wav"]);

        let code = |c: nix::errno::Errno| io::Error::from_raw_os_error(c as i32);
        assert!(matches!(
            upload_write_error(code(nix::errno::Errno::EDQUOT)),
            UploadError::DiskFull
        ));
        assert!(matches!(
            upload_write_error(code(nix::errno::Errno::EIO)),
            UploadError::Io(_)
        ));
        let json_full = LibraryError::io("write", Path::new("x"), code(nix::errno::Errno::ENOSPC));
        assert_eq!(json_full.http_status(), 507);
    }

    #[test]
    fn an_abandoned_or_refused_upload_leaves_nothing() {
        let (_dir, mut lib) = abc();
        let before = lib.tracks().to_vec();
        let body = wav(800.0, 1.0);
        let mut up = lib.begin_upload("half.wav", false, 1 << 20).unwrap();
        up.write(&body[..body.len() / 2]).unwrap();
        assert_eq!(entries(lib.tmp_dir()).len(), 1);
        drop(up); // the client went away
        assert!(entries(lib.tmp_dir()).is_empty());

        let e = upload(&mut lib, "readme.mp3", &b"just text\n".repeat(100)).unwrap_err();
        assert_eq!(e.http_status(), 415);
        assert!(e.to_string().starts_with("not an audio file"), "{e}");
        let e = upload(&mut lib, "silence.wav", &wav(0.0, 1.0)).unwrap_err();
        assert_eq!(e.http_status(), 422, "{e}");
        // A probe that crashed or timed out.
        for err in [
            ProbeError::Crashed("the decoder crashed on this file (signal 11 SIGSEGV)".into()),
            ProbeError::Timeout(std::time::Duration::from_secs(30)),
        ] {
            let mut up = lib.begin_upload("x.wav", false, 1 << 20).unwrap();
            up.write(&body).unwrap();
            let e = lib.commit_upload(up, |_| Err(err.clone())).unwrap_err();
            assert!(matches!(e.http_status(), 415 | 422), "{e}");
        }
        assert!(entries(lib.tmp_dir()).is_empty());
        assert_eq!(entries(lib.music_dir()), ["a.wav", "b.wav", "c.wav"]);
        assert_eq!(lib.tracks(), before);
    }

    /// After a kill -9: temp files (even folders) in tmp/ and json temp files go, a file
    /// renamed into music/ but never recorded is adopted at the end, an entry whose file is gone
    /// is dropped, and a file that is not audio by name is left alone.
    #[test]
    fn open_repairs_what_a_crash_left() {
        let (dir, lib) = abc();
        let state = dir.path();
        fs::write(
            lib.tmp_dir().join("upload-0123456789abcdef.wav"),
            b"partial",
        )
        .unwrap();
        fs::create_dir(lib.tmp_dir().join("sub")).unwrap();
        fs::write(lib.tmp_dir().join("sub/f"), b"x").unwrap();
        fs::write(state.join("library.json.tmp-00000000000000ab"), b"{").unwrap();
        fs::write(lib.music_dir().join("new.wav"), wav(650.0, 1.5)).unwrap();
        fs::write(lib.music_dir().join("notes.txt"), b"hello").unwrap();
        fs::remove_file(lib.music_dir().join("b.wav")).unwrap();
        let a_and_c: Vec<Track> = vec![lib.tracks()[0].clone(), lib.tracks()[2].clone()];
        drop(lib);

        let lib = Library::open(state).unwrap();
        assert!(entries(lib.tmp_dir()).is_empty());
        assert!(!state.join("library.json.tmp-00000000000000ab").exists());
        assert_eq!(names(&lib), ["a.wav", "c.wav", "new.wav"]);
        assert_eq!(lib.tracks()[..2], a_and_c[..], "kept entries are untouched");
        let n = &lib.tracks()[2];
        assert!(n.enabled);
        assert_eq!(n.format, "WAV");
        assert_eq!((n.sample_rate, n.channels), (8000, 1));
        assert!((n.duration_s - 1.5).abs() < 0.01, "{n:?}");
        assert_eq!(n.id, hex(&Sha256::digest(wav(650.0, 1.5)))[..12]);
        assert!(
            lib.music_dir().join("notes.txt").exists(),
            "not ours to delete"
        );
        // The repair was written down: opening again changes nothing.
        assert_eq!(Library::open(state).unwrap().tracks(), lib.tracks());
    }

    /// A file replaced behind our back (or by an overwrite cut short between the rename and
    /// the json write) is read again, keeping its place and flag.
    #[test]
    fn a_changed_file_is_read_again_at_open() {
        let (dir, mut lib) = abc();
        let b = lib.tracks()[1].clone();
        lib.set_enabled(&b.id, false).unwrap();
        fs::write(lib.music_dir().join("b.wav"), wav(410.0, 1.25)).unwrap();
        let lib = Library::open(dir.path()).unwrap();
        assert_eq!(names(&lib), ["a.wav", "b.wav", "c.wav"]);
        let nb = &lib.tracks()[1];
        assert_ne!(nb.id, b.id);
        assert!(!nb.enabled);
        assert!((nb.duration_s - 1.25).abs() < 0.01);
        assert_eq!(nb.added_unix, b.added_unix);
    }

    #[test]
    fn a_corrupt_library_json_is_set_aside_and_rebuilt_from_music() {
        let (dir, lib) = abc();
        let json = dir.path().join("library.json");
        drop(lib);
        fs::write(&json, b"{\"version\": 1, \"tracks\": [tru").unwrap();
        let lib = Library::open(dir.path()).unwrap();
        assert_eq!(names(&lib), ["a.wav", "b.wav", "c.wav"]);
        let aside: Vec<String> = entries(dir.path())
            .into_iter()
            .filter(|n| n.starts_with("library.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{:?}", entries(dir.path()));
        assert_eq!(
            fs::read(dir.path().join(&aside[0])).unwrap(),
            b"{\"version\": 1, \"tracks\": [tru"
        );

        // One damaged entry costs only that entry's place: it comes back at the end.
        let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        doc["tracks"][0].as_object_mut().unwrap().remove("sha256");
        fs::write(&json, serde_json::to_vec(&doc).unwrap()).unwrap();
        let lib = Library::open(dir.path()).unwrap();
        assert_eq!(names(&lib), ["b.wav", "c.wav", "a.wav"]);

        // A newer format is refused, not overwritten.
        fs::write(&json, br#"{"version": 99, "tracks": []}"#).unwrap();
        let e = Library::open(dir.path()).unwrap_err();
        assert!(matches!(
            e,
            LibraryError::File(StateFileError::UnsupportedVersion { version: 99, .. })
        ));
        assert_eq!(
            fs::read(&json).unwrap(),
            br#"{"version": 99, "tracks": []}"#
        );
    }

    #[test]
    fn reorder_needs_every_id_once() {
        let (dir, mut lib) = abc();
        let [a, b, c]: [String; 3] = ids(&lib).try_into().unwrap();
        let before = lib.tracks().to_vec();
        for bad in [
            vec![c.clone(), a.clone()],
            vec![a.clone(), a.clone(), b.clone()],
            vec![a.clone(), b.clone(), "000000000000".to_owned()],
            vec![],
        ] {
            let e = lib.reorder(&bad).unwrap_err();
            assert!(matches!(e, LibraryError::BadOrder(_)), "{bad:?}: {e:?}");
            assert_eq!(e.http_status(), 400);
            assert_eq!(lib.tracks(), before);
        }
        lib.reorder(&[c.clone(), a.clone(), b.clone()]).unwrap();
        assert_eq!(names(&lib), ["c.wav", "a.wav", "b.wav"]);
        assert_eq!(
            names(&Library::open(dir.path()).unwrap()),
            ["c.wav", "a.wav", "b.wav"]
        );
    }

    #[test]
    fn delete_removes_the_file_and_the_entry() {
        let (dir, mut lib) = abc();
        let a = lib.tracks()[0].id.clone();
        lib.delete(&a).unwrap();
        assert_eq!(names(&lib), ["b.wav", "c.wav"]);
        assert_eq!(entries(lib.music_dir()), ["b.wav", "c.wav"]);
        assert_eq!(
            names(&Library::open(dir.path()).unwrap()),
            ["b.wav", "c.wav"]
        );
        let e = lib.delete(&a).unwrap_err();
        assert!(matches!(e, LibraryError::NotFound(_)));
        assert_eq!(e.http_status(), 404);
    }

    #[test]
    fn disabled_tracks_leave_the_playlist() {
        let (dir, mut lib) = abc();
        let b = lib.tracks()[1].id.clone();
        let t = lib.set_enabled(&b, false).unwrap();
        assert!(!t.enabled);
        let music = dir.path().join("music");
        assert_eq!(
            lib.playlist_paths(),
            [music.join("a.wav"), music.join("c.wav")]
        );
        let again = Library::open(dir.path()).unwrap();
        assert!(!again.track(&b).unwrap().enabled);
        assert!(matches!(
            lib.set_enabled("nope", true),
            Err(LibraryError::NotFound(_))
        ));
    }

    /// library.json cannot be written (here: a folder is in its way). Every change must fail
    /// cleanly: memory unchanged, and an upload's file removed again or the replaced file put
    /// back.
    #[test]
    fn when_library_json_cannot_be_written_nothing_changes() {
        let (dir, mut lib) = abc();
        let before = lib.tracks().to_vec();
        let json = dir.path().join("library.json");
        let saved = fs::read(&json).unwrap();
        fs::remove_file(&json).unwrap();
        fs::create_dir(&json).unwrap();
        fs::write(json.join("blocker"), b"").unwrap();

        let b = before[1].id.clone();
        let e = lib.set_enabled(&b, false).unwrap_err();
        assert_eq!(e.http_status(), 500);
        assert!(e.to_string().contains("library.json"), "{e}");
        assert!(
            lib.reorder(&ids(&lib).into_iter().rev().collect::<Vec<_>>())
                .is_err()
        );
        assert!(
            lib.set_settings(Settings::default()).is_ok(),
            "settings.json is separate"
        );

        let e = upload(&mut lib, "d.wav", &wav(600.0, 1.0)).unwrap_err();
        assert_eq!(e.http_status(), 500, "{e}");
        assert_eq!(entries(lib.music_dir()), ["a.wav", "b.wav", "c.wav"]);
        assert!(entries(lib.tmp_dir()).is_empty());

        let old_b = fs::read(lib.music_dir().join("b.wav")).unwrap();
        assert!(upload_with(&mut lib, "b.wav", true, &wav(610.0, 1.0)).is_err());
        assert_eq!(
            fs::read(lib.music_dir().join("b.wav")).unwrap(),
            old_b,
            "old file back"
        );
        assert!(entries(lib.tmp_dir()).is_empty());
        assert_eq!(lib.tracks(), before);

        fs::remove_dir_all(&json).unwrap();
        fs::write(&json, saved).unwrap();
        assert_eq!(Library::open(dir.path()).unwrap().tracks(), before);
    }

    #[test]
    fn settings_are_checked_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut lib = Library::open(dir.path()).unwrap();
        assert_eq!(lib.settings(), &Settings::default());
        let good = Settings {
            loudness_lufs: Some(-20.0),
            lineout_level_db: Some(-6.0),
            lineout_device: Some("hw:CARD=PCH,DEV=0".into()),
        };
        lib.set_settings(good.clone()).unwrap();
        assert_eq!(Library::open(dir.path()).unwrap().settings(), &good);
        for bad in [
            Settings {
                loudness_lufs: Some(3.0),
                ..Settings::default()
            },
            Settings {
                loudness_lufs: Some(f64::NAN),
                ..Settings::default()
            },
            Settings {
                lineout_level_db: Some(12.5),
                ..Settings::default()
            },
            Settings {
                lineout_device: Some(" ".into()),
                ..Settings::default()
            },
            Settings {
                lineout_device: Some("a\nb".into()),
                ..Settings::default()
            },
        ] {
            let e = lib.set_settings(bad.clone()).unwrap_err();
            assert_eq!(e.http_status(), 400, "{bad:?}");
            assert_eq!(lib.settings(), &good);
        }
        // Out of range or unparseable on disk: set aside, defaults.
        fs::write(dir.path().join("settings.json"), br#"{"loudness_lufs": 7}"#).unwrap();
        let lib = Library::open(dir.path()).unwrap();
        assert_eq!(lib.settings(), &Settings::default());
        assert!(
            entries(dir.path())
                .iter()
                .any(|n| n.starts_with("settings.json.corrupt-"))
        );
    }

    #[test]
    fn statuses_and_messages() {
        let cases: Vec<(UploadError, u16)> = vec![
            (UploadError::BadName(NameError::Empty), 400),
            (UploadError::NameTaken("x".into()), 409),
            (
                UploadError::Duplicate {
                    name: "x".into(),
                    id: "y".into(),
                },
                409,
            ),
            (
                UploadError::IdCollision {
                    name: "x".into(),
                    id: "y".into(),
                },
                409,
            ),
            (UploadError::TooLarge { max_bytes: 1 }, 413),
            (UploadError::NotAudio("x".into()), 415),
            (UploadError::Unusable("x".into()), 422),
            (UploadError::DiskFull, 507),
            (UploadError::Io(io::Error::other("x")), 500),
            (ProbeError::NotAudio("x".into()).into(), 415),
            (ProbeError::Crashed("x".into()).into(), 415),
            (ProbeError::Unusable("x".into()).into(), 422),
            (
                ProbeError::Timeout(std::time::Duration::from_secs(1)).into(),
                422,
            ),
            (ProbeError::Failed("x".into()).into(), 500),
        ];
        for (e, status) in cases {
            assert_eq!(e.http_status(), status, "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    /// The API's Track JSON: the contract's fields plus sha256, nothing internal.
    #[test]
    fn track_json_has_the_contract_fields() {
        let (_dir, lib) = abc();
        let v = serde_json::to_value(&lib.tracks()[0]).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "added_unix",
                "channels",
                "duration_s",
                "enabled",
                "format",
                "id",
                "loudness_lufs",
                "name",
                "sample_rate",
                "sha256",
                "size_bytes"
            ]
        );
    }
}
