//! The one handle the web layer sees (DESIGN.md: "web sees only the server handle"): the
//! [`Backend`] trait the server implements, and the JSON shapes (DTOs) of the REST API, which
//! double as the OpenAPI schemas.
//!
//! The DTOs are plain data so the web layer never touches the library, channels or SIP state
//! directly; `control.rs` maps its types into them.

use std::any::Any;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the server offers the web page and the REST API. Methods marked BLOCKING do real work
/// (decoding, file I/O); the web layer calls every method from a blocking thread, so a slow
/// backend (a lock held during a decode) never stalls the async runtime.
pub trait Backend: Send + Sync + 'static {
    /// Everything on the status page. Cheap: no I/O beyond `statvfs`.
    fn status(&self) -> StatusDto;
    /// Whether audio is leaving on time, and if not, why.
    fn health(&self) -> HealthDto;
    /// The Prometheus text exposition, complete.
    fn metrics_text(&self) -> String;
    /// The library in playlist order.
    fn tracks(&self) -> Vec<TrackDto>;
    /// One track by id.
    fn track(&self, id: &str) -> Option<TrackDto>;
    /// Starts an upload named `name` (checked here: a bad name or a duplicate fails before any
    /// byte is read). The sink removes its temporary file when dropped unfinished.
    fn begin_upload(&self, name: &str, overwrite: bool) -> Result<Box<dyn UploadSink>, ApiError>;
    /// BLOCKING: checks the uploaded file (decodes it in a child) and adds it to the library.
    fn finish_upload(&self, upload: Box<dyn UploadSink>) -> Result<TrackDto, ApiError>;
    /// Enables or disables a track in the playlist.
    fn set_enabled(&self, id: &str, enabled: bool) -> Result<TrackDto, ApiError>;
    /// Removes a track and its file.
    fn delete_track(&self, id: &str) -> Result<(), ApiError>;
    /// Sets the playlist order; `order` must be a permutation of every track id.
    fn reorder(&self, order: Vec<String>) -> Result<Vec<TrackDto>, ApiError>;
    /// BLOCKING: the track as callers hear it, as a WAV file (8 kHz mono, normalised).
    fn preview_wav(&self, id: &str) -> Result<Vec<u8>, ApiError>;
    /// The configured channels.
    fn channels(&self) -> Vec<ChannelDto>;
    /// The configured dialplan.
    fn dialplan(&self) -> DialplanDto;
    /// The admin-changeable settings (every field set).
    fn settings(&self) -> SettingsDto;
    /// Applies the fields that are set; returns the new settings.
    fn set_settings(&self, patch: SettingsDto) -> Result<SettingsDto, ApiError>;
}

/// Where an upload's bytes go while they arrive: the web layer hands each chunk over as it is
/// read from the socket, so an upload is never held in memory.
pub trait UploadSink: Send {
    /// Writes the next chunk (synchronous file I/O; the web layer calls it off the runtime).
    fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError>;
    /// The concrete sink, so [`Backend::finish_upload`] can take back what `begin_upload` made.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// A refusal with its HTTP status; the web layer answers `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, 4xx or 5xx.
    pub status: u16,
    /// A sentence for the admin.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

/// `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusDto {
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// mohd's version.
    pub version: String,
    pub health: HealthDto,
    /// The filesystem holding the state folder.
    pub disk: DiskDto,
    pub channels: Vec<ChannelStatusDto>,
    /// Calls on hold now.
    pub calls: Vec<CallDto>,
    /// `null` when the line-out is disabled.
    pub lineout: Option<LineoutDto>,
    pub registrations: Vec<RegistrationDto>,
}

/// `GET /healthz`, and the `health` of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthDto {
    /// True when audio with energy leaves on time on every channel.
    pub healthy: bool,
    /// Why not, one sentence each; empty when healthy.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiskDto {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// A channel as it plays now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelStatusDto {
    pub name: String,
    /// What a caller joining now hears; `null` when nothing is playable.
    pub playing: Option<ChannelPlayingDto>,
    /// Length of the whole loop, seconds.
    pub loop_s: f64,
    /// Tracks in the loop.
    pub tracks: usize,
    /// `ready`, `rendering` or `failed`.
    pub render: String,
    /// The programme playing (`main` unless a schedule chose another).
    pub programme: Option<String>,
    /// The track after the one playing, and when it starts; `null` with nothing to follow.
    pub next: Option<ChannelNextDto>,
    /// The schedule's next switch; `null` without a schedule.
    pub next_change: Option<ScheduleChangeDto>,
}

/// What plays next on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelNextDto {
    /// Track name, or `announcement`.
    pub track: String,
    /// Seconds from now.
    pub in_s: f64,
}

/// A channel's next schedule switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleChangeDto {
    /// The programme it switches to.
    pub programme: String,
    /// When, local time in the schedule's zone (RFC 3339 with offset and zone name).
    pub at: String,
    /// Seconds from now.
    pub in_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelPlayingDto {
    /// Track name.
    pub track: String,
    /// Seconds into the track.
    pub position_s: f64,
    /// The track's length in the loop, seconds.
    pub track_len_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallDto {
    pub id: u64,
    /// The caller's RTP address.
    pub peer: String,
    pub channel: String,
    /// `PCMU`, `PCMA`, ...
    pub codec: String,
    pub duration_s: f64,
    pub packets_sent: u64,
    /// False while the caller holds us (sendonly/inactive).
    pub sending: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineoutDto {
    pub enabled: bool,
    /// `starting`, `playing`, `waiting: <error>` or `stopped`.
    pub state: String,
    pub device: String,
    pub channel: String,
    /// The track on the card now, when known.
    pub track: Option<String>,
    pub underruns: u64,
    pub level_db: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationDto {
    pub aor: String,
    pub registrar: String,
    /// `registering`, `registered`, `failed`, ...
    pub state: String,
    pub last_error: Option<String>,
}

/// A library track (`GET /api/tracks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrackDto {
    /// 12 hex characters: a SHA-256 prefix of the file's content.
    pub id: String,
    /// File name in the library.
    pub name: String,
    /// Whether it plays in the loop.
    pub enabled: bool,
    pub duration_s: f64,
    /// Container/codec, e.g. `MP3`, `FLAC`.
    pub format: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// Integrated loudness of the file as uploaded (before normalisation).
    pub loudness_lufs: f64,
    pub size_bytes: u64,
    /// When it was added, seconds since the Unix epoch.
    pub added_unix: u64,
}

/// A configured channel (`GET /api/channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelDto {
    pub name: String,
    /// `"library"`, `"demo"`, or the list of configured files.
    #[schema(schema_with = music_schema)]
    pub music: serde_json::Value,
    /// Loudness target, LUFS.
    pub loudness_lufs: f64,
    /// `shared` or `from-start`.
    pub mode: String,
    /// The dialplan routes leading here, as match descriptions.
    pub routes: Vec<String>,
    /// Whether this is the dialplan's default channel.
    pub default: bool,
}

impl ChannelDto {
    /// A channel's entry in the status (a [`ChannelStatusDto`]).
    pub fn status(
        name: &str,
        playing: Option<ChannelPlayingDto>,
        loop_s: f64,
        tracks: usize,
        render: &str,
    ) -> ChannelStatusDto {
        ChannelStatusDto {
            name: name.to_owned(),
            playing,
            loop_s,
            tracks,
            render: render.to_owned(),
            programme: None,
            next: None,
            next_change: None,
        }
    }

    /// A channel's configuration.
    pub fn config(
        name: &str,
        music: serde_json::Value,
        loudness_lufs: f64,
        mode: String,
        routes: Vec<String>,
        default: bool,
    ) -> ChannelDto {
        ChannelDto {
            name: name.to_owned(),
            music,
            loudness_lufs,
            mode,
            routes,
            default,
        }
    }
}

fn music_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["library", "demo"])),
        )
        .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "\"library\", \"demo\", or the configured files and folders",
        ))
        .build()
        .into()
}

/// `GET /api/dialplan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DialplanDto {
    /// In the order they are tried.
    pub routes: Vec<RouteDto>,
    /// Where unmatched requests go; `null`: they get 404.
    pub default_channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteDto {
    /// What the route matches, e.g. `user=moh*`.
    #[serde(rename = "match")]
    #[schema(rename = "match")]
    pub r#match: String,
    pub channel: String,
}

/// `GET/PUT /api/settings`. GET sets every field; a PUT sets only the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsDto {
    /// Loudness target of the library channels, LUFS.
    #[serde(default)]
    pub loudness_lufs: Option<f64>,
    /// Line-out level, dB (0 = full scale).
    #[serde(default)]
    pub lineout_level_db: Option<f64>,
    /// ALSA device of the line-out.
    #[serde(default)]
    pub lineout_device: Option<String>,
}

/// An in-memory [`Backend`] for the web tests: tracks are byte counts and hashes, no decoding.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use sha2::{Digest, Sha256};

    use super::*;

    /// An upload whose content starts with this is "not audio" (415).
    pub const NOT_AUDIO: &[u8] = b"NOTAUDIO";
    /// Uploads with this name fail with a full disk on the first write (507).
    pub const DISK_FULL_NAME: &str = "full.wav";

    #[derive(Debug, Default)]
    pub struct FakeBackend {
        pub tracks: Mutex<Vec<TrackDto>>,
        pub settings: Mutex<SettingsDto>,
        /// `write` calls seen by upload sinks (to check that uploads are streamed).
        pub writes: Arc<AtomicUsize>,
    }

    struct FakeSink {
        name: String,
        overwrite: bool,
        bytes: Vec<u8>,
        writes: Arc<AtomicUsize>,
    }

    impl UploadSink for FakeSink {
        fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
            if self.name == DISK_FULL_NAME {
                return Err(ApiError::new(507, "the disk is full"));
            }
            self.bytes.extend_from_slice(chunk);
            self.writes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
            self
        }
    }

    impl FakeBackend {
        pub fn new() -> FakeBackend {
            FakeBackend {
                settings: Mutex::new(SettingsDto {
                    loudness_lufs: Some(-18.0),
                    lineout_level_db: Some(-6.0),
                    lineout_device: Some("default".into()),
                }),
                ..FakeBackend::default()
            }
        }

        /// Adds a track directly, as if uploaded.
        pub fn add(&self, name: &str, seconds: f64) -> TrackDto {
            let t = TrackDto {
                id: hex12(name.as_bytes()),
                name: name.to_owned(),
                enabled: true,
                duration_s: seconds,
                format: "WAV".into(),
                sample_rate: 8000,
                channels: 1,
                loudness_lufs: -20.0,
                size_bytes: 1000,
                added_unix: 1_790_000_000,
            };
            self.tracks.lock().unwrap().push(t.clone());
            t
        }
    }

    fn hex12(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(404, format!("no track with id {id:?}"))
    }

    impl Backend for FakeBackend {
        fn status(&self) -> StatusDto {
            let health = self.health();
            let tracks = self.tracks.lock().unwrap();
            StatusDto {
                uptime_s: 42,
                version: "0.1.0".into(),
                health,
                disk: DiskDto {
                    free_bytes: 1 << 30,
                    total_bytes: 1 << 32,
                },
                channels: vec![ChannelDto::status(
                    "default",
                    tracks.first().map(|t| ChannelPlayingDto {
                        track: t.name.clone(),
                        position_s: 1.5,
                        track_len_s: t.duration_s,
                    }),
                    tracks.iter().map(|t| t.duration_s).sum(),
                    tracks.len(),
                    "ready",
                )],
                calls: vec![CallDto {
                    id: 7,
                    peer: "192.0.2.10:4000".into(),
                    channel: "default".into(),
                    codec: "PCMU".into(),
                    duration_s: 12.5,
                    packets_sent: 625,
                    sending: true,
                }],
                lineout: None,
                registrations: vec![],
            }
        }

        fn health(&self) -> HealthDto {
            if self.tracks.lock().unwrap().iter().any(|t| t.enabled) {
                HealthDto {
                    healthy: true,
                    reasons: vec![],
                }
            } else {
                HealthDto {
                    healthy: false,
                    reasons: vec!["channel default: no playable music".into()],
                }
            }
        }

        fn metrics_text(&self) -> String {
            "# TYPE mohd_up gauge\nmohd_up 1\n".into()
        }

        fn tracks(&self) -> Vec<TrackDto> {
            self.tracks.lock().unwrap().clone()
        }

        fn track(&self, id: &str) -> Option<TrackDto> {
            self.tracks
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.id == id)
                .cloned()
        }

        fn begin_upload(
            &self,
            name: &str,
            overwrite: bool,
        ) -> Result<Box<dyn UploadSink>, ApiError> {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(ApiError::new(400, format!("bad file name {name:?}")));
            }
            if !overwrite && self.tracks.lock().unwrap().iter().any(|t| t.name == name) {
                return Err(ApiError::new(409, format!("{name} exists already")));
            }
            Ok(Box::new(FakeSink {
                name: name.to_owned(),
                overwrite,
                bytes: Vec::new(),
                writes: self.writes.clone(),
            }))
        }

        fn finish_upload(&self, upload: Box<dyn UploadSink>) -> Result<TrackDto, ApiError> {
            let sink = upload
                .into_any()
                .downcast::<FakeSink>()
                .map_err(|_| ApiError::new(500, "foreign upload"))?;
            if sink.bytes.starts_with(NOT_AUDIO) {
                return Err(ApiError::new(415, "not an audio file: no decoder"));
            }
            let t = TrackDto {
                id: hex12(&sink.bytes),
                name: sink.name.clone(),
                enabled: true,
                duration_s: sink.bytes.len() as f64 / 8000.0,
                format: "WAV".into(),
                sample_rate: 8000,
                channels: 1,
                loudness_lufs: -20.0,
                size_bytes: sink.bytes.len() as u64,
                added_unix: 1_790_000_000,
            };
            let mut tracks = self.tracks.lock().unwrap();
            match tracks.iter_mut().find(|x| x.name == sink.name) {
                Some(x) if sink.overwrite => *x = t.clone(),
                Some(_) => return Err(ApiError::new(409, "exists already")),
                None => tracks.push(t.clone()),
            }
            Ok(t)
        }

        fn set_enabled(&self, id: &str, enabled: bool) -> Result<TrackDto, ApiError> {
            let mut tracks = self.tracks.lock().unwrap();
            let t = tracks
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or_else(|| not_found(id))?;
            t.enabled = enabled;
            Ok(t.clone())
        }

        fn delete_track(&self, id: &str) -> Result<(), ApiError> {
            let mut tracks = self.tracks.lock().unwrap();
            let before = tracks.len();
            tracks.retain(|t| t.id != id);
            if tracks.len() == before {
                return Err(not_found(id));
            }
            Ok(())
        }

        fn reorder(&self, order: Vec<String>) -> Result<Vec<TrackDto>, ApiError> {
            let mut tracks = self.tracks.lock().unwrap();
            let mut sorted: Vec<&str> = order.iter().map(String::as_str).collect();
            sorted.sort_unstable();
            let mut ids: Vec<&str> = tracks.iter().map(|t| t.id.as_str()).collect();
            ids.sort_unstable();
            if sorted != ids {
                return Err(ApiError::new(
                    400,
                    "order is not a permutation of the tracks",
                ));
            }
            let mut next = Vec::with_capacity(tracks.len());
            for id in &order {
                if let Some(t) = tracks.iter().find(|t| &t.id == id) {
                    next.push(t.clone());
                }
            }
            *tracks = next;
            Ok(tracks.clone())
        }

        fn preview_wav(&self, id: &str) -> Result<Vec<u8>, ApiError> {
            self.track(id).ok_or_else(|| not_found(id))?;
            let mut wav = b"RIFF".to_vec();
            wav.extend_from_slice(&[0; 40]);
            Ok(wav)
        }

        fn channels(&self) -> Vec<ChannelDto> {
            vec![ChannelDto::config(
                "default",
                serde_json::json!("library"),
                -18.0,
                "shared".into(),
                vec!["user=moh".into()],
                true,
            )]
        }

        fn dialplan(&self) -> DialplanDto {
            DialplanDto {
                routes: vec![RouteDto {
                    r#match: "user=moh".into(),
                    channel: "default".into(),
                }],
                default_channel: Some("default".into()),
            }
        }

        fn settings(&self) -> SettingsDto {
            self.settings.lock().unwrap().clone()
        }

        fn set_settings(&self, patch: SettingsDto) -> Result<SettingsDto, ApiError> {
            if patch
                .loudness_lufs
                .is_some_and(|l| !(-40.0..=-5.0).contains(&l))
            {
                return Err(ApiError::new(400, "loudness must be -40 to -5 LUFS"));
            }
            let mut s = self.settings.lock().unwrap();
            if patch.loudness_lufs.is_some() {
                s.loudness_lufs = patch.loudness_lufs;
            }
            if patch.lineout_level_db.is_some() {
                s.lineout_level_db = patch.lineout_level_db;
            }
            if patch.lineout_device.is_some() {
                s.lineout_device = patch.lineout_device;
            }
            Ok(s.clone())
        }
    }
}
