//! Persisted renders in `<state>/cache/`, so a restart plays at once without decoding the
//! playlist again: channel loops (8 kHz, for RTP), their wideband encodings (G.722 bytes, Opus
//! frames) and prepared tracks (any rate, for the line-out and previews).
//!
//! An entry is found by a key computed from what the render depends on, without reading any
//! audio: [`RENDER_VERSION`] and the crate version (the pipeline), the loudness target, the
//! rate, for an encoding its codec and encoder settings (the Opus bitrate), the rest of the
//! [`Composition`] (announcements: their target, spacing, fades and first clip; the join),
//! and for each input file in order (music, lead-in, clips) its path as given, its canonical
//! path, size and modification time in nanoseconds (a changed file, or a file that appears or disappears, gives another key). The key is computed before rendering, so a file changed while it is
//! being rendered is rendered again next time rather than cached under its new stat.
//!
//! One entry is one file, written once with [`crate::fsutil::write_atomic`] (temp, fsync,
//! rename, folder fsync), so after a power cut an entry is whole or absent. Layout
//! (little-endian):
//!
//! ```text
//! 0   magic "MOHDRNDR"
//! 8   layout version u32      (this module's file layout)
//! 12  kind u32                (1 channel loop, 2 prepared track, 3 G.722 loop, 4 Opus loop)
//! 16  key [32]                (sha256, also in the file name)
//! 48  rate u32
//! 52  metadata length u32
//! 56  item count u64          (i16 samples; bytes for an encoding)
//! 64  head checksum u64       (metadata and the first 240 000 items)
//! 72  rest checksum u64       (the items after those)
//! 80  metadata (JSON)         (loop: tracks, skipped files, playable, loudness;
//!                              encoding: codec, frames)
//! ..  items                   (loop, track: i16 samples; G.722: its bytes; Opus: each
//!                              frame's length as u16, then the frames back to back)
//! ```
//!
//! Layout 1 (before the encodings) and 2 (before a track's kind, music or announcement, in a
//! loop's metadata) are refused like any other mismatch, deleted and rendered again;
//! [`RENDER_VERSION`] 2 (loops cut to whole 20 ms frames) gives every loop a new key anyway,
//! and [`RenderCache::retain`] deletes the old entries.
//!
//! The head has its own checksum so that [`RenderCache::load_head`] can serve the first
//! 30 seconds of a long loop after reading half a megabyte, while the rest loads. A prepared
//! track's head is the same 240 000 samples (5 s at 48 kHz), which the line-out starts
//! playing from ([`RenderCache::load_track_head`]) while it loads the whole track.
//!
//! An entry that is short, mismatched or fails its checksum is never trusted: it is removed
//! and the render is made again. The checksum is a hand-written 4-lane multiply–xor hash
//! (about 20 lines) rather than sha256, which would cost more than the rest of a load; it is
//! there against a flash card's bit rot, not against an attacker (who could write the music
//! itself).
//!
//! Flash wear: a hit never writes (nor touches access times on purpose), a miss writes one
//! file, and [`RenderCache::retain`] (after a playlist change) deletes what the live playlists
//! no longer use. A size cap (prepared tracks evicted first, oldest first) and a free-space
//! reserve are backstops so the cache never fills the card.
//!
//! Why not store the G.711 bytes too: they are half again the size of the PCM (one byte per
//! codec per sample) and encoding is a table lookup per sample, faster than reading them
//! from a card (see `benches/README.md`). The wideband encodings are the opposite: a render at
//! 16 or 48 kHz and a stateful encoder cost far more than reading their bytes, so each enabled
//! wideband codec has its own entry (a changed Opus bitrate re-encodes Opus alone).

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::compose::{Composition, Join};
use super::encoded::{self, CodecPlan, EncodedLoop, G722Loop, OpusLoop};
use super::{ChannelRender, MusicSource, RATE, SkippedTrack, TrackInfo, TrackKind};
use crate::codec::Codec;
use crate::fsutil;

/// Bump whenever a render made from the same inputs would come out different (decode,
/// resample, loudness, trim, crossfade, limiter, demo melody): every entry is then a miss.
/// The crate version is in the key too, so a release never plays an older release's render.
pub const RENDER_VERSION: u32 = 2;

/// The file layout of this module; a change makes every entry invalid (and re-rendered).
const LAYOUT: u32 = 3;

const MAGIC: [u8; 8] = *b"MOHDRNDR";
const HEADER_LEN: usize = 80;

/// The head of a loop entry (30 s at 8 kHz) has a checksum of its own, so that it can be
/// loaded and trusted without reading the rest: see [`RenderCache::load_head`].
const HEAD_SAMPLES: usize = 30 * RATE as usize;

/// The cache never grows past this (2 GiB): about 36 hours of 8 kHz loop, or 6 hours of
/// 48 kHz prepared tracks.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A store that would leave less than this free on the cache's filesystem (512 MiB) is
/// skipped: uploads and logs need the room more than a cache does.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 512 << 20;

/// Metadata larger than this (16 MiB) is corrupt: a loop's track list is kilobytes.
const MAX_META_BYTES: u32 = 16 << 20;

/// Samples are read and checked this many bytes at a time (1 MiB), so a load needs no
/// second copy of the file in memory.
const READ_CHUNK: usize = 1 << 20;

/// i16 full scale, as the channel render converts.
const FULL_SCALE: f32 = 32767.0;

const LOOP_PREFIX: &str = "loop-";
const TRACK_PREFIX: &str = "track-";
const ENCODING_PREFIX: &str = "enc-";
const SUFFIX: &str = ".bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Loop = 1,
    Track = 2,
    G722 = 3,
    Opus = 4,
}

impl Kind {
    /// Bytes per item: an i16 sample, or a byte of an encoding.
    fn item_bytes(self) -> u64 {
        match self {
            Kind::Loop | Kind::Track => 2,
            Kind::G722 | Kind::Opus => 1,
        }
    }

    fn of_codec(codec: Codec) -> Option<Kind> {
        match codec {
            Codec::G722 => Some(Kind::G722),
            Codec::Opus => Some(Kind::Opus),
            Codec::Pcmu | Codec::Pcma => None,
        }
    }
}

/// What an entry holds after its metadata.
#[derive(Clone, Copy)]
enum Items<'a> {
    Samples(&'a [i16]),
    Bytes(&'a [u8]),
}

impl Items<'_> {
    fn count(&self) -> usize {
        match self {
            Items::Samples(s) => s.len(),
            Items::Bytes(b) => b.len(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Items::Samples(pcm) => {
                for &s in *pcm {
                    out.extend_from_slice(&s.to_le_bytes());
                }
            }
            Items::Bytes(b) => out.extend_from_slice(b),
        }
    }
}

/// What an entry was made from, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u8; 32]);

impl Key {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why an entry could not be used.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// No entry: an ordinary miss.
    #[error("no entry")]
    Missing,
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// The entry is there but wrong: short, for other inputs, corrupt.
    #[error("{0}")]
    Invalid(String),
}

/// Why an entry could not be written.
#[derive(Debug, thiserror::Error)]
enum EncodeError {
    #[error("cannot encode the metadata: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("metadata too large")]
    MetaTooLarge,
}

fn invalid(msg: impl Into<String>) -> LoadError {
    LoadError::Invalid(msg.into())
}

/// A loop's metadata as stored (kept apart from the public types so that changing those
/// does not silently change the file format).
#[derive(Serialize, Deserialize)]
struct LoopMeta {
    tracks: Vec<TrackMeta>,
    skipped: Vec<SkippedMeta>,
    playable: bool,
    lufs: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct TrackMeta {
    name: String,
    start: u64,
    len: u64,
    kind: TrackKind,
}

#[derive(Serialize, Deserialize)]
struct SkippedMeta {
    name: String,
    error: String,
}

/// An encoding's metadata: checked against what the load expects.
#[derive(Serialize, Deserialize)]
struct EncodingMeta {
    codec: String,
    /// The 8 kHz loop's frame count the encoding was fitted to.
    frames: u64,
}

/// A prepared track's metadata: only there to make an entry recognisable by eye.
#[derive(Serialize, Deserialize)]
struct TrackFileMeta {
    file: String,
}

/// The first samples of a prepared track, read from its cache entry without the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackHead {
    /// The track's first samples, as [`RenderCache::prepare_track`] returns them: all of
    /// them for a track of 240 000 samples or fewer, else the first 240 000.
    pub samples: Vec<f32>,
    /// The whole track's length in samples.
    pub total: usize,
}

/// Persisted renders in one folder. Cheap to clone (shared); safe to use from several
/// threads at once (two misses for the same entry both render and the last write wins).
#[derive(Debug, Clone)]
pub struct RenderCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    min_free_bytes: u64,
}

/// An entry file in the folder.
struct Listed {
    path: PathBuf,
    name: String,
    bytes: u64,
    modified: std::time::SystemTime,
    is_track: bool,
}

impl RenderCache {
    /// The cache in `dir` (created on first store if missing), with the default size cap and
    /// free-space reserve. Removes temp files left by a write that a power cut interrupted.
    pub fn new(dir: PathBuf) -> RenderCache {
        RenderCache::with_limits(dir, DEFAULT_MAX_BYTES, DEFAULT_MIN_FREE_BYTES)
    }

    /// [`RenderCache::new`] with another size cap and free-space reserve, in bytes.
    pub fn with_limits(dir: PathBuf, max_bytes: u64, min_free_bytes: u64) -> RenderCache {
        let cache = RenderCache {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                min_free_bytes,
            }),
        };
        cache.remove_temp_files();
        cache
    }

    /// The channel's loop at 8 kHz: loaded from the cache when an entry for exactly these
    /// inputs is there (no decoding), else rendered with [`ChannelRender::render`] and
    /// stored. Never fails, like the render: a cache that cannot be read or written only
    /// costs time (and is logged).
    ///
    /// A render with nothing playable is not stored: it is quick to make again, and the
    /// failure may be passing (a disk not mounted yet).
    pub fn render_channel(&self, name: &str, composition: &Composition) -> ChannelRender {
        let composition = composition.expanded();
        let key = loop_key(&composition);
        let path = self.loop_path(&key);
        let started = std::time::Instant::now();
        match load_loop(&path, name, &key) {
            Ok(render) => {
                tracing::debug!(
                    channel = name,
                    entry = %path.display(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "channel loop loaded from the render cache"
                );
                return render;
            }
            Err(LoadError::Missing) => {}
            Err(e) => self.discard(&path, &e),
        }
        let render = ChannelRender::compose(name, &composition);
        if render.playable {
            let meta = LoopMeta {
                tracks: render
                    .tracks
                    .iter()
                    .map(|t| TrackMeta {
                        name: t.name.clone(),
                        start: t.start_sample,
                        len: t.len_samples,
                        kind: t.kind,
                    })
                    .collect(),
                skipped: render
                    .skipped
                    .iter()
                    .map(|s| SkippedMeta {
                        name: s.name.clone(),
                        error: s.error.clone(),
                    })
                    .collect(),
                playable: render.playable,
                lufs: render.loudness_lufs(),
            };
            let items = Items::Samples(&render.pcm);
            self.store(&path, Kind::Loop, &key, RATE, &meta, items);
        }
        render
    }

    /// The channel's loop encoded with the wideband `codec` as `plan` says, `frames` 20 ms
    /// frames long (the 8 kHz loop's): loaded from the cache when an entry for exactly these
    /// inputs and settings is there, else rendered and encoded with
    /// [`encoded::render_encoded`] and stored. `None` when the encoder fails (logged), as
    /// from `render_encoded`; a cache that cannot be read or written only costs time.
    pub fn encoded_loop(
        &self,
        name: &str,
        composition: &Composition,
        codec: Codec,
        plan: &CodecPlan,
        frames: u64,
    ) -> Option<EncodedLoop> {
        let kind = Kind::of_codec(codec)?;
        let composition = composition.expanded();
        let key = encoding_key(&composition, codec, plan);
        let path = self
            .inner
            .dir
            .join(file_name(kind, &key, codec.audio_rate()));
        let started = std::time::Instant::now();
        match load_encoding(&path, kind, &key, codec, frames) {
            Ok(encoded) => {
                tracing::debug!(
                    channel = name,
                    codec = codec.config_name(),
                    entry = %path.display(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "encoded loop loaded from the render cache"
                );
                return Some(encoded);
            }
            Err(LoadError::Missing) => {}
            Err(e) => self.discard(&path, &e),
        }
        let encoded = encoded::render_encoded(name, &composition, codec, frames, plan)?;
        let meta = EncodingMeta {
            codec: codec.config_name().to_owned(),
            frames,
        };
        let opus_items: Vec<u8>;
        let items = match &encoded {
            EncodedLoop::G722(g) => g.bytes(),
            EncodedLoop::Opus(o) => {
                opus_items = o
                    .lengths()
                    .flat_map(u16::to_le_bytes)
                    .chain(o.data().iter().copied())
                    .collect();
                &opus_items
            }
        };
        let rate = codec.audio_rate();
        self.store(&path, kind, &key, rate, &meta, Items::Bytes(items));
        Some(encoded)
    }

    /// The first 30 seconds of the channel's cached loop, as a loop of its own, after reading
    /// only those (480 kB): `None` when there is no intact entry for these inputs (then
    /// [`RenderCache::render_channel`] renders). The full loop (from `render_channel`) is the
    /// same samples from 0 on, so a server can answer calls with the head at once and swap in
    /// the full loop when it has loaded: callers served from the same media clock epoch hear
    /// no jump if the swap comes within those 30 seconds. (Past them the head wraps to its
    /// start.) For a loop of 30 seconds or less this is the whole loop.
    pub fn load_head(&self, name: &str, composition: &Composition) -> Option<ChannelRender> {
        let key = loop_key(&composition.expanded());
        let path = self.loop_path(&key);
        let (meta, pcm, _) = read_entry_part(&path, Kind::Loop, &key, RATE, true).ok()?;
        // Shorter than a head: that was the whole loop.
        let head_only = pcm.len() >= HEAD_SAMPLES;
        loop_from(name, &meta, pcm, head_only).ok()
    }

    /// One file prepared as [`super::prepare_track`] does (decoded, resampled to `rate`,
    /// normalised, trimmed), from the cache when it is there, else prepared and stored.
    ///
    /// Stored as 16-bit samples, not f32: half the size on the card (a 3-minute track at
    /// 48 kHz is 17 MB instead of 35 MB), and the precision is the output's anyway (the
    /// loop and most sound cards are 16-bit; the quantisation noise is 96 dB down). A miss
    /// returns the same quantised samples a hit does, so a track sounds the same whether it
    /// came from the cache or not. Failures are not stored.
    pub fn prepare_track(
        &self,
        path: &Path,
        target_lufs: f64,
        rate: u32,
    ) -> Result<Vec<f32>, super::TrackError> {
        let key = track_key(path, target_lufs, rate);
        let entry = self.track_path(&key, rate);
        match read_entry(&entry, Kind::Track, &key, rate) {
            Ok((_, pcm)) => {
                return Ok(pcm.iter().map(|&s| f32::from(s) / FULL_SCALE).collect());
            }
            Err(LoadError::Missing) => {}
            Err(e) => self.discard(&entry, &e),
        }
        let samples = super::prepare_track(path, target_lufs, rate)?;
        let pcm: Vec<i16> = samples.iter().map(|&s| to_i16(s)).collect();
        drop(samples);
        let meta = TrackFileMeta {
            file: path.display().to_string(),
        };
        self.store(&entry, Kind::Track, &key, rate, &meta, Items::Samples(&pcm));
        Ok(pcm.iter().map(|&s| f32::from(s) / FULL_SCALE).collect())
    }

    /// The start of a track [`RenderCache::prepare_track`] would load from the cache, after
    /// reading only that (480 kB), checked against the entry's head checksum: `None` when there
    /// is no entry or its head is not intact (then `prepare_track` prepares it again). The
    /// samples are the same as the first ones `prepare_track` returns.
    ///
    /// For the line-out's first sound: a whole 3-minute track at 48 kHz is 17 MB to read and
    /// convert, tens of milliseconds that the line-out need not wait for.
    pub fn load_track_head(&self, path: &Path, target_lufs: f64, rate: u32) -> Option<TrackHead> {
        let key = track_key(path, target_lufs, rate);
        let entry = self.track_path(&key, rate);
        let (_, pcm, total) = read_entry_part(&entry, Kind::Track, &key, rate, true).ok()?;
        Some(TrackHead {
            samples: pcm.iter().map(|&s| f32::from(s) / FULL_SCALE).collect(),
            total,
        })
    }

    /// Deletes every entry the live channels do not use: `live` is what each channel plays
    /// now (every pass still queued, for a shuffled programme), and `plan` the codecs it is
    /// rendered for. Kept: each channel's loop and its encodings for the plan's wideband codecs and
    /// settings, and the prepared tracks of its files at its loudness (at every rate found in
    /// the folder, so the line-out's and the previews' both stay). Then applies the size cap.
    /// Returns how many entries were deleted.
    ///
    /// Call it after a playlist or loudness change, once the new renders are in place.
    pub fn retain(&self, live: &[Composition], plan: &CodecPlan) -> usize {
        let listed = self.list();
        let rates: BTreeSet<u32> = listed.iter().filter_map(|l| track_rate(&l.name)).collect();
        let mut keep: HashSet<String> = HashSet::new();
        for composition in live {
            let composition = composition.expanded();
            keep.insert(file_name(Kind::Loop, &loop_key(&composition), RATE));
            for codec in plan.wideband() {
                if let Some(kind) = Kind::of_codec(codec) {
                    let key = encoding_key(&composition, codec, plan);
                    keep.insert(file_name(kind, &key, codec.audio_rate()));
                }
            }
            if let MusicSource::Files(files) = &composition.music {
                let lufs = composition.loudness_lufs;
                for file in files {
                    for &rate in &rates {
                        let key = track_key(file, lufs, rate);
                        keep.insert(file_name(Kind::Track, &key, rate));
                    }
                }
            }
        }
        let mut removed = 0;
        for l in &listed {
            if !keep.contains(&l.name) {
                match fs::remove_file(&l.path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(entry = %l.path.display(), error = %e, "cannot delete an unused render cache entry");
                    }
                }
            }
        }
        removed += self.enforce_cap(None);
        if removed > 0 {
            tracing::info!(removed, "render cache: unused entries deleted");
        }
        removed
    }

    fn loop_path(&self, key: &Key) -> PathBuf {
        self.inner.dir.join(file_name(Kind::Loop, key, RATE))
    }

    fn track_path(&self, key: &Key, rate: u32) -> PathBuf {
        self.inner.dir.join(file_name(Kind::Track, key, rate))
    }

    /// An entry that cannot be used: log it and remove it, so it is replaced.
    fn discard(&self, path: &Path, error: &LoadError) {
        tracing::warn!(entry = %path.display(), %error, "render cache entry unusable; rendering again");
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(entry = %path.display(), error = %e, "cannot delete the unusable render cache entry");
        }
    }

    /// Writes an entry, unless it is larger than the cap or would eat into the free-space
    /// reserve; then applies the cap. Failures are logged: the cache only saves time.
    fn store<M: Serialize>(
        &self,
        path: &Path,
        kind: Kind,
        key: &Key,
        rate: u32,
        meta: &M,
        items: Items<'_>,
    ) {
        let started = std::time::Instant::now();
        let bytes = match encode_entry(kind, key, rate, meta, items) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "render cache: cannot encode an entry");
                return;
            }
        };
        let size = bytes.len() as u64;
        if size > self.inner.max_bytes {
            tracing::info!(
                entry = %path.display(),
                bytes = size,
                max_bytes = self.inner.max_bytes,
                "render not cached: larger than the cache's cap"
            );
            return;
        }
        if let Err(e) = fs::create_dir_all(&self.inner.dir) {
            tracing::warn!(dir = %self.inner.dir.display(), error = %e, "render not cached: cannot create the cache folder");
            return;
        }
        if let Some(free) = free_bytes(&self.inner.dir)
            && free < size.saturating_add(self.inner.min_free_bytes)
        {
            tracing::warn!(
                entry = %path.display(),
                bytes = size,
                free_bytes = free,
                "render not cached: the disk is nearly full"
            );
            return;
        }
        match fsutil::write_atomic(path, &bytes) {
            Ok(()) => {
                tracing::debug!(
                    entry = %path.display(),
                    bytes = size,
                    write_ms = started.elapsed().as_millis() as u64,
                    "render cached"
                );
                self.enforce_cap(Some(path));
            }
            Err(e) => {
                tracing::warn!(entry = %path.display(), error = %e, "render not cached: cannot write it");
            }
        }
    }

    /// Deletes entries until the folder is within the cap: prepared tracks before loops
    /// (a loop is what lets SIP start at once), oldest first, never `keep`.
    fn enforce_cap(&self, keep: Option<&Path>) -> usize {
        let mut listed = self.list();
        let mut total: u64 = listed.iter().map(|l| l.bytes).sum();
        if total <= self.inner.max_bytes {
            return 0;
        }
        listed.sort_by_key(|l| (!l.is_track, l.modified));
        let mut removed = 0;
        for l in &listed {
            if total <= self.inner.max_bytes {
                break;
            }
            if keep == Some(l.path.as_path()) {
                continue;
            }
            if fs::remove_file(&l.path).is_ok() {
                total = total.saturating_sub(l.bytes);
                removed += 1;
            }
        }
        tracing::info!(
            removed,
            bytes = total,
            max_bytes = self.inner.max_bytes,
            "render cache over its cap: oldest entries deleted"
        );
        removed
    }

    /// The entry files in the folder (not temp files, not anything else).
    fn list(&self) -> Vec<Listed> {
        let Ok(entries) = fs::read_dir(&self.inner.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let is_track = name.starts_with(TRACK_PREFIX);
                let ours = (is_track
                    || name.starts_with(LOOP_PREFIX)
                    || name.starts_with(ENCODING_PREFIX))
                    && name.ends_with(SUFFIX);
                if !ours {
                    return None;
                }
                let md = e.metadata().ok()?;
                md.is_file().then(|| Listed {
                    path: e.path(),
                    name,
                    bytes: md.len(),
                    modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
                    is_track,
                })
            })
            .collect()
    }

    fn remove_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.inner.dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = [LOOP_PREFIX, TRACK_PREFIX, ENCODING_PREFIX]
                .iter()
                .any(|p| name.starts_with(p));
            if ours && name.contains(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// `loop-<key>.bin`, `enc-g722-<key>.bin`, `enc-opus-<key>.bin` or `track-<rate>-<key>.bin`:
/// the rate is in a track's name so that [`RenderCache::retain`] can work out the keys to
/// keep.
fn file_name(kind: Kind, key: &Key, rate: u32) -> String {
    match kind {
        Kind::Loop => format!("{LOOP_PREFIX}{}{SUFFIX}", key.hex()),
        Kind::Track => format!("{TRACK_PREFIX}{rate}-{}{SUFFIX}", key.hex()),
        Kind::G722 => format!("{ENCODING_PREFIX}g722-{}{SUFFIX}", key.hex()),
        Kind::Opus => format!("{ENCODING_PREFIX}opus-{}{SUFFIX}", key.hex()),
    }
}

fn track_rate(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TRACK_PREFIX)?;
    let (rate, _) = rest.split_once('-')?;
    rate.parse().ok()
}

fn key_hasher(kind: Kind, target_lufs: f64, rate: u32) -> Sha256 {
    let mut h = Sha256::new();
    h.update(b"mohd render cache\0");
    h.update(RENDER_VERSION.to_le_bytes());
    hash_bytes(&mut h, env!("CARGO_PKG_VERSION").as_bytes());
    h.update((kind as u32).to_le_bytes());
    h.update(target_lufs.to_bits().to_le_bytes());
    h.update(rate.to_le_bytes());
    h
}

/// A loop's key; `composition` has its folders expanded ([`Composition::expanded`]).
fn loop_key(composition: &Composition) -> Key {
    let h = key_hasher(Kind::Loop, composition.loudness_lufs, RATE);
    composition_key(h, composition)
}

/// An encoding's key: the loop's inputs at the codec's rate, and the encoder's settings.
fn encoding_key(composition: &Composition, codec: Codec, plan: &CodecPlan) -> Key {
    let kind = Kind::of_codec(codec).unwrap_or(Kind::Loop);
    let mut h = key_hasher(kind, composition.loudness_lufs, codec.audio_rate());
    hash_bytes(&mut h, codec.config_name().as_bytes());
    hash_bytes(&mut h, &plan.settings_key(codec));
    composition_key(h, composition)
}

fn composition_key(mut h: Sha256, composition: &Composition) -> Key {
    match &composition.music {
        MusicSource::Demo => h.update(b"demo"),
        MusicSource::Files(files) => {
            h.update(b"files");
            h.update((files.len() as u64).to_le_bytes());
            for f in files {
                hash_file(&mut h, f);
            }
        }
    }
    match &composition.join {
        Join::Loop => h.update(b"loop"),
        Join::Chain { previous_last } => {
            h.update(b"chain");
            match previous_last {
                Some(p) => hash_file(&mut h, p),
                None => h.update(b"own"),
            }
        }
    }
    if let Some(a) = &composition.announcements {
        h.update(b"announcements");
        // The spacing by its Debug text ("EverySeconds(30)"); the clips by their stat, as
        // the music.
        hash_bytes(&mut h, format!("{:?}", a.every).as_bytes());
        h.update(a.loudness_lufs.to_bits().to_le_bytes());
        h.update(a.fade_out_ms.to_le_bytes());
        h.update(a.fade_in_ms.to_le_bytes());
        h.update((a.first_clip as u64).to_le_bytes());
        h.update((a.clips.len() as u64).to_le_bytes());
        for clip in &a.clips {
            hash_file(&mut h, clip);
        }
    }
    Key(h.finalize().into())
}

fn track_key(path: &Path, target_lufs: f64, rate: u32) -> Key {
    let mut h = key_hasher(Kind::Track, target_lufs, rate);
    hash_file(&mut h, path);
    Key(h.finalize().into())
}

/// A file's identity for the key: stat only, never its content.
fn hash_file(h: &mut Sha256, path: &Path) {
    // The path as given is in the key too: the render reports skipped files by it.
    hash_bytes(h, path.as_os_str().as_bytes());
    let stat = fs::canonicalize(path).and_then(|c| fs::metadata(&c).map(|m| (c, m)));
    match stat {
        Ok((canonical, md)) => {
            h.update([1]);
            hash_bytes(h, canonical.as_os_str().as_bytes());
            h.update(md.size().to_le_bytes());
            h.update(md.mtime().to_le_bytes());
            h.update(md.mtime_nsec().to_le_bytes());
        }
        // Missing or unreadable now: a different key from when it is there.
        Err(_) => h.update([0]),
    }
}

fn hash_bytes(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_le_bytes());
    h.update(b);
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * FULL_SCALE).round() as i16
}

/// Free bytes for an unprivileged writer on `dir`'s filesystem; `None` if unknown.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    // Both are `c_ulong`-sized, 32-bit on a 32-bit Raspberry Pi OS.
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The whole entry file in memory.
fn encode_entry<M: Serialize>(
    kind: Kind,
    key: &Key,
    rate: u32,
    meta: &M,
    items: Items<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let meta = serde_json::to_vec(meta)?;
    let meta_len = u32::try_from(meta.len())
        .ok()
        .filter(|&n| n <= MAX_META_BYTES)
        .ok_or(EncodeError::MetaTooLarge)?;
    let item_bytes = kind.item_bytes() as usize;
    let count = items.count();
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + item_bytes * count);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&LAYOUT.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    out.extend_from_slice(&[0; 16]); // checksums, below
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&meta);
    items.write(&mut out);
    let head_end = HEADER_LEN + meta.len() + item_bytes * count.min(HEAD_SAMPLES);
    let mut head = Checksum::new();
    head.update(&out[HEADER_LEN..head_end]);
    let head = head.finish();
    let mut rest = Checksum::new();
    rest.update(&out[head_end..]);
    let rest = rest.finish();
    out[64..72].copy_from_slice(&head.to_le_bytes());
    out[72..80].copy_from_slice(&rest.to_le_bytes());
    Ok(out)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads and checks an entry: its metadata bytes and samples. Any mismatch is `Invalid`.
fn read_entry(
    path: &Path,
    kind: Kind,
    key: &Key,
    rate: u32,
) -> Result<(Vec<u8>, Vec<i16>), LoadError> {
    read_entry_part(path, kind, key, rate, false).map(|(meta, pcm, _)| (meta, pcm))
}

/// An entry's file, positioned after its header, once the header is checked against what
/// the caller looks for and the file's length: the header, and its metadata bytes.
struct Opened {
    file: File,
    header: [u8; HEADER_LEN],
    meta: Vec<u8>,
    /// Items after the metadata (bounded by the file's length).
    count: usize,
}

fn open_entry(path: &Path, kind: Kind, key: &Key, rate: u32) -> Result<Opened, LoadError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(e.into()),
    };
    let file_len = file.metadata()?.len();
    if file_len < HEADER_LEN as u64 {
        return Err(invalid(format!(
            "{file_len} bytes, shorter than its header"
        )));
    }
    let mut header = [0u8; HEADER_LEN];
    read_all(&mut file, &mut header)?;
    if header[..8] != MAGIC {
        return Err(invalid("not a render cache entry (bad magic)"));
    }
    let layout = le_u32(&header, 8);
    if layout != LAYOUT {
        return Err(invalid(format!("layout {layout}, expected {LAYOUT}")));
    }
    if le_u32(&header, 12) != kind as u32 {
        return Err(invalid("an entry of another kind"));
    }
    if header[16..48] != key.0 {
        return Err(invalid("made from other inputs (key mismatch)"));
    }
    if le_u32(&header, 48) != rate {
        return Err(invalid("made at another rate"));
    }
    let meta_len = le_u32(&header, 52);
    if meta_len > MAX_META_BYTES {
        return Err(invalid(format!("metadata of {meta_len} bytes")));
    }
    let count = le_u64(&header, 56);
    let expected = count
        .checked_mul(kind.item_bytes())
        .and_then(|b| b.checked_add(HEADER_LEN as u64 + u64::from(meta_len)));
    if expected != Some(file_len) {
        return Err(invalid(format!(
            "{file_len} bytes, but its header says {count} items and {meta_len} bytes of metadata"
        )));
    }
    let mut meta = vec![0u8; meta_len as usize];
    read_all(&mut file, &mut meta)?;
    let count = usize::try_from(count).map_err(|_| invalid("too many items"))?;
    Ok(Opened {
        file,
        header,
        meta,
        count,
    })
}

/// [`read_entry`], or with `head_only` only the metadata and the head's samples (checked
/// against the head checksum). Also returns the entry's whole sample count.
fn read_entry_part(
    path: &Path,
    kind: Kind,
    key: &Key,
    rate: u32,
    head_only: bool,
) -> Result<(Vec<u8>, Vec<i16>, usize), LoadError> {
    let Opened {
        mut file,
        header,
        meta,
        count: samples,
    } = open_entry(path, kind, key, rate)?;
    let head = samples.min(HEAD_SAMPLES);
    let wanted = if head_only { head } else { samples };
    let mut pcm: Vec<i16> = Vec::with_capacity(wanted);
    let mut buf = vec![0u8; READ_CHUNK.min(2 * wanted)];
    let mut sum = Checksum::new();
    sum.update(&meta);
    read_samples(&mut file, head, &mut sum, &mut pcm, &mut buf)?;
    if sum.finish() != le_u64(&header, 64) {
        return Err(invalid("checksum mismatch in its head (corrupt)"));
    }
    if !head_only {
        let mut sum = Checksum::new();
        read_samples(&mut file, samples - head, &mut sum, &mut pcm, &mut buf)?;
        if sum.finish() != le_u64(&header, 72) {
            return Err(invalid("checksum mismatch (corrupt)"));
        }
    }
    Ok((meta, pcm, samples))
}

/// An encoding entry's metadata and bytes, both checksums checked.
fn read_bytes_entry(
    path: &Path,
    kind: Kind,
    key: &Key,
    rate: u32,
) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
    let Opened {
        mut file,
        header,
        meta,
        count,
    } = open_entry(path, kind, key, rate)?;
    let mut bytes = vec![0u8; count];
    read_all(&mut file, &mut bytes)?;
    let head = count.min(HEAD_SAMPLES);
    let mut sum = Checksum::new();
    sum.update(&meta);
    sum.update(&bytes[..head]);
    let mut rest = Checksum::new();
    rest.update(&bytes[head..]);
    if sum.finish() != le_u64(&header, 64) || rest.finish() != le_u64(&header, 72) {
        return Err(invalid("checksum mismatch (corrupt)"));
    }
    Ok((meta, bytes))
}

/// An encoded loop from its entry, which must be for `codec`, fitted to `frames` frames.
fn load_encoding(
    path: &Path,
    kind: Kind,
    key: &Key,
    codec: Codec,
    frames: u64,
) -> Result<EncodedLoop, LoadError> {
    let (meta, bytes) = read_bytes_entry(path, kind, key, codec.audio_rate())?;
    let meta: EncodingMeta =
        serde_json::from_slice(&meta).map_err(|e| invalid(format!("metadata: {e}")))?;
    if meta.codec != codec.config_name() {
        return Err(invalid(format!("an encoding for {}", meta.codec)));
    }
    if meta.frames != frames {
        return Err(invalid(format!(
            "{} frames, the loop has {frames}",
            meta.frames
        )));
    }
    let encoded = match kind {
        Kind::Opus => {
            let table = usize::try_from(frames)
                .ok()
                .and_then(|f| f.checked_mul(2))
                .filter(|&t| t <= bytes.len())
                .ok_or_else(|| invalid("shorter than its frame table"))?;
            let lengths: Vec<u16> = bytes[..table]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            OpusLoop::from_parts(&lengths, bytes[table..].to_vec()).map(EncodedLoop::Opus)
        }
        Kind::G722 => G722Loop::from_bytes(bytes).map(EncodedLoop::G722),
        Kind::Loop | Kind::Track => None,
    };
    encoded.ok_or_else(|| invalid("its frames do not add up"))
}

/// Reads `count` little-endian samples onto `pcm`, `buf` bytes at a time, into `sum`.
fn read_samples(
    file: &mut File,
    count: usize,
    sum: &mut Checksum,
    pcm: &mut Vec<i16>,
    buf: &mut [u8],
) -> Result<(), LoadError> {
    let mut left = count;
    while left > 0 {
        let n = (2 * left).min(buf.len());
        let chunk = &mut buf[..n];
        read_all(file, chunk)?;
        sum.update(chunk);
        pcm.extend(
            chunk
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        left -= n / 2;
    }
    Ok(())
}

/// `read_exact`, with a file that ends early (truncated under us) reported as invalid.
fn read_all(file: &mut File, buf: &mut [u8]) -> Result<(), LoadError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid("ends early")
        } else {
            LoadError::Io(e)
        }
    })
}

fn load_loop(path: &Path, name: &str, key: &Key) -> Result<ChannelRender, LoadError> {
    let (meta, pcm) = read_entry(path, Kind::Loop, key, RATE)?;
    loop_from(name, &meta, pcm, false)
}

/// A render from a loop entry's metadata and samples; with `head_only`, `pcm` is only the
/// head and the tracks are cut to it.
fn loop_from(
    name: &str,
    meta: &[u8],
    pcm: Vec<i16>,
    head_only: bool,
) -> Result<ChannelRender, LoadError> {
    let meta: LoopMeta =
        serde_json::from_slice(meta).map_err(|e| invalid(format!("metadata: {e}")))?;
    if !meta.playable {
        return Err(invalid("a render with nothing playable (never stored)"));
    }
    let head = pcm.len() as u64;
    let tracks = meta
        .tracks
        .into_iter()
        .filter(|t| !head_only || t.start < head)
        .map(|t| TrackInfo {
            name: t.name,
            start_sample: t.start,
            len_samples: if head_only {
                t.len.min(head - t.start)
            } else {
                t.len
            },
            kind: t.kind,
        })
        .collect();
    let skipped = meta
        .skipped
        .into_iter()
        .map(|s| SkippedTrack {
            name: s.name,
            error: s.error,
        })
        .collect();
    ChannelRender::from_parts(name, RATE, pcm, tracks, skipped, meta.playable, meta.lufs)
        .map_err(|e| invalid(e.to_string()))
}

/// A fast 64-bit checksum: four independent multiply–xor lanes over 8-byte words (so the
/// CPU can run them in parallel), folded at the end with the length. Streaming: `update`
/// may be called with pieces of any size.
struct Checksum {
    lanes: [u64; 4],
    pending: [u8; 32],
    npending: usize,
    len: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Checksum {
    fn new() -> Checksum {
        Checksum {
            lanes: [1, 2, 3, 4],
            pending: [0; 32],
            npending: 0,
            len: 0,
        }
    }

    fn block(lanes: &mut [u64; 4], block: &[u8]) {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut a = [0; 8];
            a.copy_from_slice(w);
            *lane = (*lane ^ u64::from_le_bytes(a))
                .wrapping_mul(K)
                .rotate_left(29);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let n = (32 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + n].copy_from_slice(&data[..n]);
            self.npending += n;
            data = &data[n..];
            if self.npending < 32 {
                return;
            }
            let p = self.pending;
            Checksum::block(&mut self.lanes, &p);
            self.npending = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            Checksum::block(&mut self.lanes, b);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.npending > 0 {
            self.pending[self.npending..].fill(0);
            let p = self.pending;
            Checksum::block(&mut self.lanes, &p);
        }
        let mut h = self.len.wrapping_mul(K);
        for lane in self.lanes {
            h = (h ^ lane).wrapping_mul(K).rotate_left(31);
        }
        h ^ (h >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{sine, write_wav};
    use crate::codec::Codec;
    use std::time::{Duration, SystemTime};

    /// `music` in order at `lufs`, nothing else: a plain channel's composition.
    fn playlist(music: &MusicSource, lufs: f64) -> Composition {
        Composition::playlist(music.clone(), lufs)
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn mtime(path: &Path) -> SystemTime {
        fs::metadata(path).unwrap().modified().unwrap()
    }

    /// A music folder with two tones and a cache folder beside it.
    struct Rig {
        dir: tempfile::TempDir,
    }

    impl Rig {
        fn new() -> Rig {
            let rig = Rig {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir(rig.dir.path().join("music")).unwrap();
            rig.tone("a.wav", 440.0, 1.2);
            rig.tone("b.wav", 660.0, 0.9);
            rig
        }

        fn tone(&self, name: &str, f: f64, secs: f64) -> PathBuf {
            let p = self.music(name);
            write_wav(
                &p,
                16_000,
                &sine(f, 16_000, (secs * 16_000.0) as usize, 0.3),
            );
            p
        }

        fn music(&self, name: &str) -> PathBuf {
            self.dir.path().join("music").join(name)
        }

        fn cache_dir(&self) -> PathBuf {
            self.dir.path().join("cache")
        }

        fn cache(&self) -> RenderCache {
            RenderCache::with_limits(self.cache_dir(), DEFAULT_MAX_BYTES, 0)
        }

        /// a.wav, b.wav and a missing file (so there is a skipped entry).
        fn source(&self) -> MusicSource {
            MusicSource::Files(vec![
                self.music("a.wav"),
                self.music("missing.mp3"),
                self.music("b.wav"),
            ])
        }

        /// The cache folder's entries: name, size, mtime.
        fn snapshot(&self) -> Vec<(String, u64, SystemTime)> {
            let mut v: Vec<_> = fs::read_dir(self.cache_dir())
                .map(|d| {
                    d.map(|e| {
                        let e = e.unwrap();
                        let md = e.metadata().unwrap();
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            md.len(),
                            md.modified().unwrap(),
                        )
                    })
                    .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }

        fn entries(&self, prefix: &str) -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = fs::read_dir(self.cache_dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                .collect();
            v.sort();
            v
        }
    }

    /// Everything a caller or the status page can see of a render.
    fn assert_same_render(a: &ChannelRender, b: &ChannelRender) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.rate, b.rate);
        assert!(a.pcm == b.pcm, "samples differ");
        assert_eq!(a.tracks, b.tracks);
        assert_eq!(a.skipped, b.skipped);
        assert_eq!(a.playable, b.playable);
        assert_eq!(a.loudness_lufs(), b.loudness_lufs());
        let len = a.len_samples() as u64;
        for codec in Codec::G711 {
            for start in [0, 1234, len - 80, len + 7] {
                let (mut x, mut y) = ([0u8; 160], [0u8; 160]);
                a.fill_payload(codec, start, &mut x);
                b.fill_payload(codec, start, &mut y);
                assert_eq!(x, y, "{codec:?} at {start}");
            }
        }
    }

    /// The encoding of `codec` through the cache, fitted to the 8 kHz loop.
    fn encoding(rig: &Rig, cache: &RenderCache, codec: Codec, plan: &CodecPlan) -> EncodedLoop {
        let frames = cache
            .render_channel("ch", &playlist(&rig.source(), -18.0))
            .frames();
        cache
            .encoded_loop("ch", &playlist(&rig.source(), -18.0), codec, plan, frames)
            .expect("encoded")
    }

    /// A G.722 loop is stored on a miss and loaded (not re-encoded, nothing written) on a hit,
    /// the same bytes a fresh encoding makes; an entry that is bad, of the old layout or for
    /// another frame count is refused and encoded again; `retain` keeps it while the plan
    /// enables G.722.
    #[test]
    fn g722_loops_round_trip_through_the_cache() {
        let rig = Rig::new();
        let cache = rig.cache();
        let plan = CodecPlan::default();
        let first = encoding(&rig, &cache, Codec::G722, &plan);
        let frames = cache
            .render_channel("ch", &playlist(&rig.source(), -18.0))
            .frames();
        let fresh = encoded::render_encoded(
            "ch",
            &playlist(&rig.source(), -18.0),
            Codec::G722,
            frames,
            &plan,
        )
        .expect("fresh");
        assert_eq!(first, fresh);
        assert_eq!(first.frames(), frames);
        let entry = rig.entries("enc-g722-").pop().expect("stored");
        let before = rig.snapshot();
        assert_eq!(encoding(&rig, &cache, Codec::G722, &plan), fresh);
        assert_eq!(rig.snapshot(), before, "a hit wrote something");

        let good = fs::read(&entry).unwrap();
        let mut old_layout = good.clone();
        old_layout[8..12].copy_from_slice(&1u32.to_le_bytes());
        let mut flipped = good.clone();
        let at = good.len() - 5;
        flipped[at] ^= 0x10;
        for (what, bytes) in [("old layout", old_layout), ("bit flipped", flipped)] {
            fs::write(&entry, &bytes).unwrap();
            assert_eq!(encoding(&rig, &cache, Codec::G722, &plan), fresh, "{what}");
            assert_eq!(fs::read(&entry).unwrap(), good, "{what}: not replaced");
        }
        // Fitted to another loop length: refused.
        let key = encoding_key(
            &playlist(&rig.source(), -18.0).expanded(),
            Codec::G722,
            &plan,
        );
        assert!(load_encoding(&entry, Kind::G722, &key, Codec::G722, frames + 1).is_err());
        assert!(load_encoding(&entry, Kind::G722, &key, Codec::G722, frames).is_ok());

        let live = [playlist(&rig.source(), -18.0)];
        assert_eq!(cache.retain(&live, &plan), 0);
        let g711 = CodecPlan::new(&Codec::G711, encoded::DEFAULT_OPUS_BITRATE);
        assert_eq!(cache.retain(&live, &g711), 1);
        assert!(rig.entries("enc-").is_empty());
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 1);
    }

    /// Opus frames are stored on a miss and loaded on a hit (the same frames, nothing
    /// written); another bitrate is another entry, and `retain` drops the one the plan no
    /// longer asks for.
    #[test]
    fn opus_loops_round_trip_through_the_cache_per_bitrate() {
        let rig = Rig::new();
        let cache = rig.cache();
        let plan = CodecPlan::default();
        let first = encoding(&rig, &cache, Codec::Opus, &plan);
        let EncodedLoop::Opus(frames) = &first else {
            panic!("{first:?}")
        };
        assert!(frames.frames() > 50);
        assert_eq!(rig.entries("enc-opus-").len(), 1);
        let before = rig.snapshot();
        assert_eq!(encoding(&rig, &cache, Codec::Opus, &plan), first);
        assert_eq!(rig.snapshot(), before, "a hit wrote something");

        let lower = CodecPlan::new(&Codec::ALL, 24_000);
        let other = encoding(&rig, &cache, Codec::Opus, &lower);
        assert_ne!(other, first);
        assert!(other.frames() == first.frames());
        assert_eq!(rig.entries("enc-opus-").len(), 2);
        let live = [playlist(&rig.source(), -18.0)];
        assert_eq!(cache.retain(&live, &lower), 1);
        assert_eq!(rig.entries("enc-opus-").len(), 1);
        assert_eq!(encoding(&rig, &cache, Codec::Opus, &lower), other);
    }

    /// The key of an encoding follows its codec settings: another Opus bitrate is another
    /// entry; G.722 has no settings, so the bitrate does not touch its key.
    #[test]
    fn encoding_keys_follow_the_codec_settings() {
        let source = MusicSource::Demo;
        let a = CodecPlan::new(&Codec::ALL, 40_000);
        let b = CodecPlan::new(&Codec::ALL, 32_000);
        assert_ne!(
            encoding_key(&playlist(&source, -18.0), Codec::Opus, &a),
            encoding_key(&playlist(&source, -18.0), Codec::Opus, &b)
        );
        assert_eq!(
            encoding_key(&playlist(&source, -18.0), Codec::G722, &a),
            encoding_key(&playlist(&source, -18.0), Codec::G722, &b)
        );
        assert_ne!(
            encoding_key(&playlist(&source, -18.0), Codec::G722, &a),
            encoding_key(&playlist(&source, -20.0), Codec::G722, &a)
        );
        assert_ne!(
            encoding_key(&playlist(&source, -18.0), Codec::G722, &a).0,
            loop_key(&playlist(&source, -18.0)).0
        );
    }

    #[test]
    fn a_hit_is_the_render_a_fresh_render_makes() {
        let rig = Rig::new();
        let cache = rig.cache();
        let fresh = ChannelRender::render("ch", &rig.source(), -18.0);
        assert!(fresh.playable && fresh.tracks.len() == 2 && fresh.skipped.len() == 1);
        let miss = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        assert_same_render(&miss, &fresh);
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 1, "stored once");
        assert!(
            cache
                .load_head("x", &playlist(&rig.source(), -18.0))
                .is_some()
        );
        let hit = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        assert_same_render(&hit, &fresh);
        // Another channel with the same music shares the entry, under its own name.
        let other = cache.render_channel("other", &playlist(&rig.source(), -18.0));
        assert_eq!(other.name, "other");
        assert!(other.pcm == fresh.pcm);
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 1);
        // The demo too.
        let demo = cache.render_channel("d", &playlist(&MusicSource::Demo, -18.0));
        let demo_hit = cache.render_channel("d", &playlist(&MusicSource::Demo, -18.0));
        assert_same_render(
            &demo_hit,
            &ChannelRender::render("d", &MusicSource::Demo, -18.0),
        );
        assert_same_render(&demo, &demo_hit);
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 2);
    }

    /// A hit is a hit: with a file's content swapped but its size and modification time put
    /// back, the old render is served (from the cache, no decoding); touching the file (a
    /// new mtime) makes it render the new content.
    #[test]
    fn hit_is_served_from_the_cache_and_a_touched_file_renders_again() {
        let rig = Rig::new();
        let cache = rig.cache();
        let first = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        let a = rig.music("a.wav");
        let t = mtime(&a);
        let len = fs::metadata(&a).unwrap().len();
        rig.tone("a.wav", 300.0, 1.2);
        assert_eq!(fs::metadata(&a).unwrap().len(), len);
        set_mtime(&a, t);
        let hit = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        assert!(hit.pcm == first.pcm, "not served from the cache");
        set_mtime(&a, t + Duration::from_nanos(1));
        let again = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        let fresh = ChannelRender::render("ch", &rig.source(), -18.0);
        assert!(again.pcm != first.pcm);
        assert_same_render(&again, &fresh);
    }

    #[test]
    fn key_follows_every_input() {
        let rig = Rig::new();
        let (a, b) = (rig.music("a.wav"), rig.music("b.wav"));
        let files = |v: &[&PathBuf]| MusicSource::Files(v.iter().map(|p| (*p).clone()).collect());
        let base = loop_key(&playlist(&files(&[&a, &b]), -18.0));
        assert_eq!(
            base,
            loop_key(&playlist(&files(&[&a, &b]), -18.0)),
            "stable"
        );
        assert_ne!(base, loop_key(&playlist(&files(&[&b, &a]), -18.0)), "order");
        assert_ne!(base, loop_key(&playlist(&files(&[&a]), -18.0)), "files");
        assert_ne!(
            base,
            loop_key(&playlist(&files(&[&a, &b]), -23.0)),
            "loudness"
        );
        assert_ne!(base, loop_key(&playlist(&MusicSource::Demo, -18.0)));
        let track = track_key(&a, -18.0, 48_000);
        assert_ne!(track, track_key(&a, -18.0, 44_100), "rate");
        assert_ne!(track, track_key(&a, -23.0, 48_000), "loudness");
        assert_ne!(track, track_key(&b, -18.0, 48_000), "file");

        let t = mtime(&a);
        set_mtime(&a, t + Duration::from_nanos(1));
        assert_ne!(
            base,
            loop_key(&playlist(&files(&[&a, &b]), -18.0)),
            "mtime (1 ns)"
        );
        assert_ne!(track, track_key(&a, -18.0, 48_000), "mtime");
        set_mtime(&a, t);
        assert_eq!(
            base,
            loop_key(&playlist(&files(&[&a, &b]), -18.0)),
            "mtime back"
        );
        // Size: one more byte, same mtime.
        let mut f = File::options().append(true).open(&a).unwrap();
        std::io::Write::write_all(&mut f, &[0]).unwrap();
        drop(f);
        set_mtime(&a, t);
        assert_ne!(base, loop_key(&playlist(&files(&[&a, &b]), -18.0)), "size");
        // A missing file that appears.
        let c = rig.music("c.wav");
        let before = loop_key(&playlist(&files(&[&a, &c]), -18.0));
        rig.tone("c.wav", 500.0, 1.0);
        assert_ne!(
            before,
            loop_key(&playlist(&files(&[&a, &c]), -18.0)),
            "appeared"
        );
        // A folder stands for its files: adding one changes the key.
        let folder = MusicSource::Files(vec![rig.dir.path().join("music")]);
        let k1 = loop_key(&playlist(&folder, -18.0).expanded());
        rig.tone("d.wav", 500.0, 1.0);
        assert_ne!(
            k1,
            loop_key(&playlist(&folder, -18.0).expanded()),
            "file added to the folder"
        );
    }

    /// Whatever is wrong with an entry, the render is made again, served, and the entry is
    /// replaced by a good one.
    #[test]
    fn a_bad_entry_is_rendered_again_and_replaced() {
        let rig = Rig::new();
        let cache = rig.cache();
        let fresh = ChannelRender::render("ch", &rig.source(), -18.0);
        cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        let entry = rig.entries(LOOP_PREFIX).pop().unwrap();
        let good = fs::read(&entry).unwrap();
        // An entry of other inputs, renamed to this one's name.
        cache.render_channel("x", &playlist(&MusicSource::Demo, -18.0));
        let demo_entry = rig
            .entries(LOOP_PREFIX)
            .into_iter()
            .find(|p| *p != entry)
            .unwrap();
        let other = fs::read(&demo_entry).unwrap();

        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x40;
            b
        };
        let mut huge = good.clone();
        huge[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut bad_meta = good.clone();
        bad_meta[HEADER_LEN] = b'!';
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("short header", good[..40].to_vec()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("longer", [good.clone(), vec![0]].concat()),
            ("garbage", vec![7u8; good.len()]),
            ("sample bit flipped", flip(good.len() - 1001)),
            ("metadata bit flipped", flip(HEADER_LEN + 3)),
            ("key bit flipped", flip(20)),
            ("layout", flip(8)),
            ("huge sample count", huge),
            ("bad metadata", bad_meta),
            ("another entry", other),
        ];
        for (what, bytes) in cases {
            fs::write(&entry, &bytes).unwrap();
            let r = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
            assert_same_render(&r, &fresh);
            assert_eq!(fs::read(&entry).unwrap(), good, "{what}: not replaced");
        }
        // A folder where the entry should be: rendered anyway (it cannot be replaced).
        fs::remove_file(&entry).unwrap();
        fs::create_dir(&entry).unwrap();
        let r = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        assert_same_render(&r, &fresh);
    }

    #[test]
    fn a_hit_writes_nothing() {
        let rig = Rig::new();
        let cache = rig.cache();
        cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        cache
            .prepare_track(&rig.music("a.wav"), -18.0, 48_000)
            .unwrap();
        let before = rig.snapshot();
        let dir_mtime = mtime(&rig.cache_dir());
        assert_eq!(before.len(), 2, "{before:?}");
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..2 {
            cache.render_channel("ch", &playlist(&rig.source(), -18.0));
            cache
                .prepare_track(&rig.music("a.wav"), -18.0, 48_000)
                .unwrap();
            // A new cache over the same folder (a restart) too.
            rig.cache()
                .render_channel("ch", &playlist(&rig.source(), -18.0));
        }
        assert_eq!(rig.snapshot(), before);
        assert_eq!(mtime(&rig.cache_dir()), dir_mtime, "the folder changed");
    }

    #[test]
    fn prepared_tracks_round_trip() {
        let rig = Rig::new();
        let cache = rig.cache();
        let a = rig.music("a.wav");
        let direct = crate::channel::prepare_track(&a, -18.0, 48_000).unwrap();
        let miss = cache.prepare_track(&a, -18.0, 48_000).unwrap();
        let hit = cache.prepare_track(&a, -18.0, 48_000).unwrap();
        assert_eq!(miss, hit, "a hit and a miss differ");
        assert_eq!(hit.len(), direct.len());
        let worst = hit
            .iter()
            .zip(&direct)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 0.5 / 32767.0 + f32::EPSILON, "{worst}");
        let entries = rig.entries(TRACK_PREFIX);
        assert_eq!(entries.len(), 1);
        assert!(entries[0].to_string_lossy().contains("track-48000-"));
        // Another rate is another entry; a bad file is an error, and not stored.
        let at8k = cache.prepare_track(&a, -18.0, 8000).unwrap();
        assert!(at8k.len() * 5 < hit.len());
        let bad = rig.music("bad.mp3");
        fs::write(&bad, b"not audio").unwrap();
        assert!(cache.prepare_track(&bad, -18.0, 8000).is_err());
        assert_eq!(rig.entries(TRACK_PREFIX).len(), 2);
        // A corrupt track entry is prepared again.
        fs::write(&entries[0], b"MOHDRNDR").unwrap();
        assert_eq!(cache.prepare_track(&a, -18.0, 48_000).unwrap(), miss);
        assert_eq!(
            read_entry(
                &entries[0],
                Kind::Track,
                &track_key(&a, -18.0, 48_000),
                48_000
            )
            .unwrap()
            .1
            .len(),
            miss.len()
        );
    }

    /// A prepared track's head is the start of what a full load returns, read alone; a short
    /// track's head is the whole track; a corrupt head is refused, while a corruption past it
    /// is left to the full load (which prepares the track again, the same).
    #[test]
    fn the_head_of_a_prepared_track_loads_alone() {
        let rig = Rig::new();
        let cache = rig.cache();
        let long = rig.music("long.wav");
        write_wav(&long, 16_000, &sine(440.0, 16_000, 8 * 16_000, 0.3));
        assert!(
            cache.load_track_head(&long, -18.0, 48_000).is_none(),
            "a miss"
        );
        let full = cache.prepare_track(&long, -18.0, 48_000).unwrap();
        assert!(full.len() > HEAD_SAMPLES + 48_000);
        let head = cache.load_track_head(&long, -18.0, 48_000).unwrap();
        assert_eq!(head.total, full.len());
        assert_eq!(head.samples[..], full[..HEAD_SAMPLES]);

        let a = rig.music("a.wav");
        let whole = cache.prepare_track(&a, -18.0, 48_000).unwrap();
        assert!(whole.len() < HEAD_SAMPLES);
        let short = cache.load_track_head(&a, -18.0, 48_000).unwrap();
        assert_eq!(short.samples, whole);
        assert_eq!(short.total, whole.len());

        let entry = rig
            .entries(TRACK_PREFIX)
            .into_iter()
            .max_by_key(|p| fs::metadata(p).unwrap().len())
            .unwrap();
        let good = fs::read(&entry).unwrap();
        let mut late = good.clone();
        let n = late.len();
        late[n - 10] ^= 0x10;
        fs::write(&entry, &late).unwrap();
        assert_eq!(
            cache.load_track_head(&long, -18.0, 48_000).unwrap(),
            head,
            "the head is intact"
        );
        assert_eq!(cache.prepare_track(&long, -18.0, 48_000).unwrap(), full);
        let mut early = good;
        early[HEADER_LEN + 1000] ^= 0x10;
        fs::write(&entry, &early).unwrap();
        assert!(cache.load_track_head(&long, -18.0, 48_000).is_none());
    }

    /// The head of a long loop is the loop's first 30 s, served the same way; a head that is
    /// corrupt is refused, a corruption past the head is found by the full load.
    #[test]
    fn the_head_of_a_long_loop_loads_alone() {
        let rig = Rig::new();
        let cache = rig.cache();
        let mut files = Vec::new();
        for (i, f) in [300.0, 450.0].into_iter().enumerate() {
            let p = rig.music(&format!("long{i}.wav"));
            write_wav(&p, 8000, &sine(f, 8000, 20 * 8000, 0.3));
            files.push(p);
        }
        let long = MusicSource::Files(files);
        assert!(
            cache.load_head("ch", &playlist(&long, -18.0)).is_none(),
            "a miss"
        );
        let full = cache.render_channel("ch", &playlist(&long, -18.0));
        assert!(full.len_samples() > HEAD_SAMPLES + 8000);
        let head = cache.load_head("ch", &playlist(&long, -18.0)).unwrap();
        assert_eq!(head.len_samples(), HEAD_SAMPLES);
        assert!(head.pcm[..] == full.pcm[..HEAD_SAMPLES]);
        assert_eq!(head.tracks.len(), 2);
        assert_eq!(head.tracks[1].start_sample, full.tracks[1].start_sample);
        assert_eq!(
            head.tracks[1].start_sample + head.tracks[1].len_samples,
            HEAD_SAMPLES as u64
        );
        assert_eq!(head.loudness_lufs(), full.loudness_lufs());
        for codec in Codec::G711 {
            for start in [0, 4321, HEAD_SAMPLES as u64 - 160] {
                let (mut x, mut y) = ([0u8; 160], [0u8; 160]);
                head.fill_payload(codec, start, &mut x);
                full.fill_payload(codec, start, &mut y);
                assert_eq!(x, y, "{codec:?} at {start}");
            }
        }

        let entry = rig.entries(LOOP_PREFIX).pop().unwrap();
        let good = fs::read(&entry).unwrap();
        let mut late = good.clone();
        let n = late.len();
        late[n - 10] ^= 0x10;
        fs::write(&entry, &late).unwrap();
        assert!(
            cache.load_head("ch", &playlist(&long, -18.0)).is_some(),
            "the head is intact"
        );
        assert!(load_loop(&entry, "ch", &loop_key(&playlist(&long, -18.0).expanded())).is_err());
        let mut early = good.clone();
        early[HEADER_LEN + 1000] ^= 0x10;
        fs::write(&entry, &early).unwrap();
        assert!(cache.load_head("ch", &playlist(&long, -18.0)).is_none());

        // A short loop's head is the whole loop.
        cache.render_channel("s", &playlist(&rig.source(), -18.0));
        let short = cache
            .load_head("s", &playlist(&rig.source(), -18.0))
            .unwrap();
        assert_same_render(&short, &ChannelRender::render("s", &rig.source(), -18.0));
    }

    #[test]
    fn nothing_playable_is_not_stored() {
        let rig = Rig::new();
        let cache = rig.cache();
        let dead = MusicSource::Files(vec![rig.music("missing.mp3")]);
        let r = cache.render_channel("ch", &playlist(&dead, -18.0));
        assert!(!r.playable);
        assert!(rig.snapshot().is_empty());
        assert!(cache.load_head("x", &playlist(&dead, -18.0)).is_none());
    }

    /// After a playlist change only what the live channels use stays: their loops, and
    /// their files' prepared tracks at every rate; other files in the folder are left alone.
    #[test]
    fn retain_deletes_what_no_live_channel_uses() {
        let rig = Rig::new();
        let cache = rig.cache();
        let c = rig.tone("c.wav", 550.0, 1.0);
        let (a, b) = (rig.music("a.wav"), rig.music("b.wav"));
        let old = MusicSource::Files(vec![a.clone(), c.clone()]);
        let new = MusicSource::Files(vec![a.clone(), b.clone()]);
        cache.render_channel("lib", &playlist(&old, -18.0));
        cache.render_channel("lib", &playlist(&new, -18.0));
        cache.render_channel("lib", &playlist(&new, -23.0));
        cache.render_channel("demo", &playlist(&MusicSource::Demo, -18.0));
        for p in [&a, &b, &c] {
            cache.prepare_track(p, -18.0, 48_000).unwrap();
        }
        cache.prepare_track(&a, -18.0, 8000).unwrap();
        cache.prepare_track(&a, -23.0, 48_000).unwrap();
        fs::write(rig.cache_dir().join("README"), b"mine").unwrap();
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 4);
        assert_eq!(rig.entries(TRACK_PREFIX).len(), 5);

        let live = vec![playlist(&new, -18.0), playlist(&MusicSource::Demo, -18.0)];
        let removed = cache.retain(&live, &CodecPlan::default());
        assert_eq!(removed, 4, "old loop, -23 loop, c's track, a's -23 track");
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 2);
        assert_eq!(rig.entries(TRACK_PREFIX).len(), 3);
        assert!(rig.cache_dir().join("README").exists());
        // What is left is what they use: all hits, nothing written.
        let before = rig.snapshot();
        cache.render_channel("lib", &playlist(&new, -18.0));
        cache.render_channel("demo", &playlist(&MusicSource::Demo, -18.0));
        cache.prepare_track(&a, -18.0, 48_000).unwrap();
        cache.prepare_track(&b, -18.0, 48_000).unwrap();
        cache.prepare_track(&a, -18.0, 8000).unwrap();
        assert_eq!(rig.snapshot(), before);
        assert_eq!(cache.retain(&live, &CodecPlan::default()), 0);
    }

    /// Over the cap, prepared tracks go first, oldest first; an entry bigger than the cap is
    /// not written at all.
    #[test]
    fn size_cap_evicts_tracks_first_then_oldest() {
        let rig = Rig::new();
        let (a, b) = (rig.music("a.wav"), rig.music("b.wav"));
        let unlimited = rig.cache();
        unlimited.render_channel("ch", &playlist(&rig.source(), -18.0));
        let loop_bytes = rig.snapshot()[0].1;
        unlimited.prepare_track(&a, -18.0, 8000).unwrap();
        let track_bytes = rig.snapshot().iter().map(|e| e.1).sum::<u64>() - loop_bytes;
        fs::remove_dir_all(rig.cache_dir()).unwrap();

        // Room for the loop and one track.
        let cap = loop_bytes + track_bytes + track_bytes / 2;
        let cache = RenderCache::with_limits(rig.cache_dir(), cap, 0);
        cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        cache.prepare_track(&a, -18.0, 8000).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        cache.prepare_track(&b, -18.0, 8000).unwrap();
        let left = rig.snapshot();
        assert!(left.iter().map(|e| e.1).sum::<u64>() <= cap);
        assert_eq!(rig.entries(LOOP_PREFIX).len(), 1, "the loop stays");
        let tracks = rig.entries(TRACK_PREFIX);
        assert_eq!(tracks.len(), 1);
        assert_eq!(
            tracks[0].file_name().unwrap().to_string_lossy(),
            file_name(Kind::Track, &track_key(&b, -18.0, 8000), 8000),
            "the newest track stays"
        );

        let tiny = RenderCache::with_limits(rig.cache_dir(), loop_bytes / 2, 0);
        let r = tiny.render_channel("ch", &playlist(&rig.source(), -23.0));
        assert!(r.playable);
        assert_eq!(rig.snapshot(), left, "too big to store: nothing written");
    }

    #[test]
    fn a_nearly_full_disk_is_left_alone() {
        let rig = Rig::new();
        let cache = RenderCache::with_limits(rig.cache_dir(), DEFAULT_MAX_BYTES, u64::MAX / 4);
        let r = cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        assert!(r.playable);
        cache
            .prepare_track(&rig.music("a.wav"), -18.0, 8000)
            .unwrap();
        assert!(rig.snapshot().is_empty());
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let rig = Rig::new();
        let cache = rig.cache();
        cache.render_channel("ch", &playlist(&rig.source(), -18.0));
        let entry = rig.entries(LOOP_PREFIX).pop().unwrap();
        let tmp = fsutil::temp_path_beside(&entry);
        fs::write(&tmp, b"half").unwrap();
        fs::write(rig.cache_dir().join("other.tmp-1"), b"not ours").unwrap();
        let _ = rig.cache();
        assert!(!tmp.exists());
        assert!(entry.exists());
        assert!(rig.cache_dir().join("other.tmp-1").exists());
    }

    #[test]
    fn checksum_is_the_same_in_any_pieces_and_sees_one_bit() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let whole = {
            let mut c = Checksum::new();
            c.update(&data);
            c.finish()
        };
        for split in [1, 3, 31, 32, 33, 500, 999] {
            let mut c = Checksum::new();
            for piece in data.chunks(split) {
                c.update(piece);
            }
            assert_eq!(c.finish(), whole, "pieces of {split}");
        }
        for at in [0, 31, 32, 999] {
            let mut d = data.clone();
            d[at] ^= 1;
            let mut c = Checksum::new();
            c.update(&d);
            assert_ne!(c.finish(), whole, "bit at {at}");
        }
        // Trailing zeros are not padding.
        let mut c = Checksum::new();
        c.update(&[data.as_slice(), &[0]].concat());
        assert_ne!(c.finish(), whole);
    }

    #[test]
    fn from_parts_refuses_broken_invariants() {
        let t = |start, len| TrackInfo {
            name: "t".into(),
            start_sample: start,
            len_samples: len,
            kind: TrackKind::Music,
        };
        let mk = |pcm: Vec<i16>, tracks| {
            ChannelRender::from_parts("x", RATE, pcm, tracks, Vec::new(), true, None)
        };
        assert!(matches!(
            mk(Vec::new(), vec![]),
            Err(crate::channel::PartsError::EmptyLoop)
        ));
        assert!(mk(vec![0; 8000], vec![t(8000, 10)]).is_err());
        assert!(mk(vec![0; 8000], vec![t(0, 0)]).is_err());
        assert!(mk(vec![0; 8000], vec![t(10, 100), t(5, 100)]).is_err());
        // A lone track is the loop plus its seam crossfade, which fitting the loop to whole
        // frames lengthens by up to a frame (120 + 160 samples).
        assert!(mk(vec![0; 8000], vec![t(0, 8000 + 281)]).is_err());
        let ok = mk(vec![3; 8000], vec![t(0, 8280)]).unwrap();
        let mut out = [0u8; 4];
        ok.fill_payload(Codec::Pcmu, 0, &mut out);
        let mut want = [0u8; 4];
        Codec::Pcmu.encode(&[3; 4], &mut want);
        assert_eq!(out, want);
    }
}
