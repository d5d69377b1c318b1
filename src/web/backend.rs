//! The one handle the web layer sees (DESIGN.md: "web sees only the server handle"): the
//! [`Backend`] trait the server implements, and the JSON shapes (DTOs) of the REST API, which
//! double as the OpenAPI schemas.
//!
//! The DTOs are plain data so the web layer never touches the library, channels or SIP state
//! directly; `control.rs` maps its types into them.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the server offers the web page and the REST API. Methods marked BLOCKING do real work
/// (decoding, file I/O); the web layer calls every method from a blocking thread, so a slow
/// backend (a lock held during a decode) never stalls the async runtime.
pub trait Backend: ChannelAdmin + Send + Sync + 'static {
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
    /// BLOCKING: this box's library as a fleet manifest (`library::manifest`).
    fn export_manifest(&self) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::new(
            404,
            "this server does not export its library",
        ))
    }
    /// The file of the track whose content has this sha256, for followers.
    fn export_file(&self, sha256: &str) -> Result<std::path::PathBuf, ApiError> {
        Err(ApiError::new(
            404,
            format!("no track with sha256 {sha256:?}"),
        ))
    }
    /// The admin-changeable settings (every field set).
    fn settings(&self) -> SettingsDto;
    /// `POST /api/drain`: starts (or cancels) a graceful drain; what is taken now.
    fn drain(&self, request: &DrainRequest) -> Result<AvailabilityDto, ApiError> {
        let _ = request;
        Err(ApiError::new(404, "this server cannot drain"))
    }
    /// Applies the fields that are set; returns the new settings.
    fn set_settings(&self, patch: SettingsDto) -> Result<SettingsDto, ApiError>;
}

/// Channels and routes as managed objects: every effective channel (the config file's, read
/// only, and those made over the API), changes to the managed ones, and the managed routes.
/// Each change is validated against the whole effective set, persisted, and re-planned before
/// it returns (calls in progress keep playing); all methods may do file I/O (BLOCKING).
pub trait ChannelAdmin {
    /// Every effective channel, config file channels first, each with what plays now.
    fn channels(&self) -> Vec<ChannelDto>;
    /// One channel by name (404 when unknown).
    fn channel(&self, name: &str) -> Result<ChannelDto, ApiError> {
        self.channels()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiError::new(404, format!("no channel named {name:?}")))
    }
    /// Creates a managed channel (`input.name` required; 409 when the name is taken, 422 for
    /// an unknown track, zone or programme, or overlapping schedule ranges).
    fn create_channel(&self, input: ChannelInput) -> Result<ChannelDto, ApiError>;
    /// Replaces a managed channel's editable fields; `input.name`, when set and different,
    /// renames it (its routes follow). 403 for a config file channel.
    fn replace_channel(&self, name: &str, input: ChannelInput) -> Result<ChannelDto, ApiError>;
    /// Renames a managed channel; routes to it follow.
    fn rename_channel(&self, name: &str, new_name: &str) -> Result<ChannelDto, ApiError>;
    /// Sets a managed channel's main playlist: library track ids, in order (repeats allowed).
    fn set_channel_playlist(&self, name: &str, tracks: Vec<String>)
    -> Result<ChannelDto, ApiError>;
    /// Deletes a managed channel. Refused while managed routes lead to it, unless
    /// `remove_routes`, which removes those routes too.
    fn delete_channel(&self, name: &str, remove_routes: bool) -> Result<(), DeleteRefused>;
    /// The managed routes, in the order they are tried (after the config file's).
    fn managed_routes(&self) -> Vec<ManagedRouteDto>;
    /// Replaces the managed routes (each must name an effective channel).
    fn set_managed_routes(
        &self,
        routes: Vec<ManagedRouteDto>,
    ) -> Result<Vec<ManagedRouteDto>, ApiError>;
    /// The effective dialplan: the config file's routes, then the managed ones, then the
    /// default channel.
    fn dialplan(&self) -> DialplanDto;
}

/// Why a channel was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRefused {
    /// Routes lead to it (their match descriptions); 409 with them listed.
    RoutedTo(Vec<String>),
    /// Anything else (404 unknown, 403 config file, 5xx).
    Error(ApiError),
}

impl From<ApiError> for DeleteRefused {
    fn from(e: ApiError) -> DeleteRefused {
        DeleteRefused::Error(e)
    }
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
    /// `null` unless this box follows a published library.
    #[serde(default)]
    pub library_sync: Option<LibrarySyncDto>,
}

/// `GET /healthz`, and the `health` of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthDto {
    /// True when audio with energy leaves on time on every channel.
    pub healthy: bool,
    /// Why not, one sentence each; empty when healthy.
    pub reasons: Vec<String>,
    /// Whether new calls are taken (admission control, drain); a draining box stays
    /// healthy. Absent when the server does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<AvailabilityDto>,
    /// What needs a look without failing health, one sentence each (a library sync that
    /// fails while the last good library plays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The drain request of `POST /api/drain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Stop draining: take new calls again (an admin's mistake undone). Default false.
    #[serde(default)]
    pub cancel: bool,
    /// Grace period for the calls in progress, seconds; default `[calls] drain_grace_s`.
    /// A drain already running keeps the sooner of its deadline and this one.
    #[serde(default)]
    pub grace_s: Option<u64>,
}

/// `/healthz`'s and the status page's view of whether new calls are taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityDto {
    /// False while new INVITEs get 503 (draining, at capacity or at `max_calls`).
    pub accepting_calls: bool,
    /// Why new calls are refused: `draining`, `max_calls` or `capacity`; `null` when accepted.
    pub refusing: Option<String>,
    /// True while the box drains (SIGTERM, `mohd drain`): a deliberate state, not a fault,
    /// so `healthy` is not affected.
    pub draining: bool,
    /// While draining: seconds until the calls still up are hung up.
    pub drain_seconds_left: Option<f64>,
    /// Calls the media threads serve now.
    pub calls: u64,
    /// New calls are admitted while fewer than this many are up: the lesser of the measured
    /// media capacity and `max_calls`.
    pub capacity: u64,
    /// What the media threads can carry within `[calls] media_budget`, measured.
    pub media_capacity: u64,
    pub max_calls: u64,
    /// The media threads' work time in the last second over their budget (1.0: full).
    pub budget_use: f64,
    /// Share of the CPUs mohd may run on that was busy in the last second (every process;
    /// niced work left out); `null` where it cannot be read. `[calls] min_idle_cpu` acts on it.
    pub machine_cpu_use: Option<f64>,
    /// Measured work time per RTP packet, µs; `null` until enough packets were sent.
    pub cost_per_packet_us: Option<f64>,
}

/// A follower's library sync (`[library] follow`), on the status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LibrarySyncDto {
    /// The manifest followed.
    pub url: String,
    /// "ok", "failing" (the last good library plays) or "pending" (no poll succeeded yet).
    pub state: String,
    /// The version of the library in use; `null` before the first sync.
    pub manifest_version: Option<u64>,
    /// Unix time of the last successful poll.
    pub last_success_unix: Option<f64>,
    /// The last failure's reason and message, while failing.
    pub last_error: Option<String>,
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

/// A channel (`GET /api/channels`): what it plays and how, where it is defined, the routes
/// leading to it, and what it plays now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelDto {
    pub name: String,
    /// `config-file` (read-only here: change the file) or `managed` (made over the API).
    pub origin: String,
    /// True for config file channels.
    pub read_only: bool,
    /// `"library"`, `"demo"`, `"tracks"` (its own playlist), or the list of configured files.
    #[schema(schema_with = music_schema)]
    pub music: serde_json::Value,
    /// Loudness target of the music, LUFS.
    pub loudness_lufs: f64,
    /// `shared` (every caller hears the same position) or `from-start` (each caller from the
    /// programme's start).
    pub mode: ChannelMode,
    /// Re-shuffled at every pass.
    pub shuffle: bool,
    /// The main programme's tracks, in order (library tracks by id; a config file's files have
    /// no id).
    pub playlist: Vec<TrackRefDto>,
    pub announcements: Option<AnnouncementsDto>,
    /// Played to each caller from its start before the programme.
    pub greeting: Option<TrackRefDto>,
    pub schedule: Option<ScheduleDto>,
    /// The other programmes a schedule can choose, by name.
    pub programmes: BTreeMap<String, ProgrammeDto>,
    /// How calls move to another programme at a schedule switch.
    pub switch: SwitchAt,
    /// The fade of `switch = "fade"`, ms.
    pub switch_fade_ms: Option<u32>,
    /// The dialplan routes leading here (config file's and managed), as match descriptions.
    pub routes: Vec<String>,
    /// Whether this is the dialplan's default channel.
    pub default: bool,
    /// What it plays now and next; `null` before its first render.
    pub status: Option<ChannelStatusDto>,
}

/// A sound a channel names: a library track (with its id) or a config file's file (no id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrackRefDto {
    /// The library track's id; `null` for a file named by the config file.
    pub id: Option<String>,
    /// The track's name (`(missing)` for an id no longer in the library), or the file's path.
    pub name: String,
}

/// `shared` or `from-start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelMode {
    #[default]
    Shared,
    FromStart,
}

/// `track-end` (at the end of the track playing) or `fade` (at once, fading out over
/// `switch_fade_ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchAt {
    #[default]
    TrackEnd,
    Fade,
}

/// Announcements interjected into a programme, rotating in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnnouncementsDto {
    pub clips: Vec<TrackRefDto>,
    /// Every this many seconds of programme (or `every_tracks`; exactly one is set).
    pub every_seconds: Option<u32>,
    /// After every this many music tracks.
    pub every_tracks: Option<u32>,
    /// Their loudness target; `null`: the music's + 3 LU.
    pub loudness_lufs: Option<f64>,
    /// The music fades out over this before each...
    pub fade_out_ms: u32,
    /// ...and back in over this after it.
    pub fade_in_ms: u32,
}

/// Another programme of a channel (a schedule chooses it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgrammeDto {
    pub playlist: Vec<TrackRefDto>,
    pub shuffle: bool,
    pub announcements: Option<AnnouncementsDto>,
}

/// A schedule: which programme plays when, in an IANA time zone. Dated entries win over
/// weekly ones, weekly ones over `default`. Programme `main` is the channel's own playlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDto {
    /// IANA zone, e.g. `Europe/London`.
    pub timezone: String,
    /// The programme when no entry applies.
    pub default: String,
    #[serde(default)]
    pub weekly: Vec<WeeklyDto>,
    #[serde(default)]
    pub dates: Vec<DatedDto>,
}

/// A weekly range: on `days`, from `from` to `to` local time (`to` before `from` crosses
/// midnight; `24:00` is the day's end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeeklyDto {
    /// `mon-fri`, `sat-sun`, `daily`, or days separated by commas (`mon,wed`).
    pub days: String,
    /// `HH:MM`.
    pub from: String,
    /// `HH:MM`.
    pub to: String,
    pub programme: String,
}

/// A dated exception (a holiday, a closing day): the whole day, or `from`-`to` on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatedDto {
    /// `YYYY-MM-DD`.
    pub date: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    pub programme: String,
}

/// `POST /api/channels` and `PUT /api/channels/{name}`: a managed channel's editable fields.
/// Fields left out take their defaults (a PUT replaces them all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    /// Required to create; on a PUT, a different name renames the channel. 1-64 characters
    /// from `A-Z a-z 0-9 _ -`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: ChannelMode,
    /// LUFS, -40 to -5; `null`: the library's loudness setting.
    #[serde(default)]
    pub loudness_lufs: Option<f64>,
    #[serde(default)]
    pub shuffle: bool,
    /// Library track ids, in order.
    #[serde(default)]
    pub playlist: Vec<String>,
    #[serde(default)]
    pub announcements: Option<AnnouncementsInput>,
    /// A library track id.
    #[serde(default)]
    pub greeting: Option<String>,
    #[serde(default)]
    pub schedule: Option<ScheduleDto>,
    #[serde(default)]
    pub programmes: BTreeMap<String, ProgrammeInput>,
    #[serde(default)]
    pub switch: SwitchAt,
    #[serde(default)]
    pub switch_fade_ms: Option<u32>,
}

/// Announcements, as set: clips by library track id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnouncementsInput {
    /// Library track ids, played in turn.
    pub clips: Vec<String>,
    /// Every this many seconds of programme; set this or `every_tracks`.
    #[serde(default)]
    pub every_seconds: Option<u32>,
    /// After every this many music tracks.
    #[serde(default)]
    pub every_tracks: Option<u32>,
    #[serde(default)]
    pub loudness_lufs: Option<f64>,
    /// Default 800.
    #[serde(default)]
    pub fade_out_ms: Option<u32>,
    /// Default 800.
    #[serde(default)]
    pub fade_in_ms: Option<u32>,
}

/// Another programme, as set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeInput {
    #[serde(default)]
    pub playlist: Vec<String>,
    #[serde(default)]
    pub shuffle: bool,
    #[serde(default)]
    pub announcements: Option<AnnouncementsInput>,
}

/// A managed route (`GET/PUT /api/routes`): the channel store's own type, named
/// `ManagedRouteDto` in the OpenAPI document.
pub use crate::channel::store::ManagedRoute as ManagedRouteDto;

/// `PUT /api/channels/{name}/playlist`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPlaylist {
    /// Library track ids, in order.
    pub tracks: Vec<String>,
}

/// `POST /api/channels/{name}/rename`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRename {
    pub name: String,
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
}

fn music_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["library", "demo", "tracks"])),
        )
        .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "\"library\", \"demo\", \"tracks\" (its own playlist), or the configured files and folders",
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
        pub channels: Mutex<FakeChannels>,
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

    /// A config file channel `default` (routed by `user=moh`) plus whatever the tests create;
    /// validation enough to exercise every refusal the web layer maps.
    #[derive(Debug, Default)]
    pub struct FakeChannels {
        pub managed: Vec<ChannelDto>,
        pub routes: Vec<ManagedRouteDto>,
    }

    const CONFIG_ROUTE: &str = "user=moh";

    fn config_channel() -> ChannelDto {
        ChannelDto {
            name: "default".into(),
            origin: "config-file".into(),
            read_only: true,
            music: serde_json::json!("library"),
            loudness_lufs: -18.0,
            mode: ChannelMode::Shared,
            shuffle: false,
            playlist: vec![],
            announcements: None,
            greeting: None,
            schedule: None,
            programmes: BTreeMap::new(),
            switch: SwitchAt::TrackEnd,
            switch_fade_ms: None,
            routes: vec![CONFIG_ROUTE.into()],
            default: true,
            status: None,
        }
    }

    fn describe(r: &ManagedRouteDto) -> String {
        r.user
            .as_ref()
            .map_or_else(|| "every call".into(), |u| format!("user = {u:?}"))
    }

    impl FakeBackend {
        fn track_ref(&self, id: &str) -> Result<TrackRefDto, ApiError> {
            let name = self
                .track(id)
                .ok_or_else(|| ApiError::new(422, format!("unknown track id {id:?}")))?
                .name;
            Ok(TrackRefDto {
                id: Some(id.to_owned()),
                name,
            })
        }

        fn refs(&self, ids: &[String]) -> Result<Vec<TrackRefDto>, ApiError> {
            ids.iter().map(|id| self.track_ref(id)).collect()
        }

        fn build(&self, name: &str, input: ChannelInput) -> Result<ChannelDto, ApiError> {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::new(422, format!("bad channel name {name:?}")));
            }
            if let Some(s) = &input.schedule
                && !s.timezone.contains('/')
            {
                return Err(ApiError::new(
                    422,
                    format!("unknown time zone {:?}", s.timezone),
                ));
            }
            let announcements = match input.announcements {
                Some(a) => Some(AnnouncementsDto {
                    clips: self.refs(&a.clips)?,
                    every_seconds: a.every_seconds,
                    every_tracks: a.every_tracks,
                    loudness_lufs: a.loudness_lufs,
                    fade_out_ms: a.fade_out_ms.unwrap_or(800),
                    fade_in_ms: a.fade_in_ms.unwrap_or(800),
                }),
                None => None,
            };
            Ok(ChannelDto {
                name: name.to_owned(),
                origin: "managed".into(),
                read_only: false,
                music: serde_json::json!("tracks"),
                loudness_lufs: input.loudness_lufs.unwrap_or(-18.0),
                mode: input.mode,
                shuffle: input.shuffle,
                playlist: self.refs(&input.playlist)?,
                announcements,
                greeting: input.greeting.map(|g| self.track_ref(&g)).transpose()?,
                schedule: input.schedule,
                programmes: BTreeMap::new(),
                switch: input.switch,
                switch_fade_ms: input.switch_fade_ms,
                routes: vec![],
                default: false,
                status: None,
            })
        }

        /// The managed channel `name`: 403 for the config file's, 404 for none.
        fn managed_index(c: &FakeChannels, name: &str) -> Result<usize, ApiError> {
            if name == "default" {
                return Err(ApiError::new(
                    403,
                    "channel default is defined in the config file: change it there",
                ));
            }
            c.managed
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| ApiError::new(404, format!("no channel named {name:?}")))
        }

        fn with_routes(c: &FakeChannels, mut ch: ChannelDto) -> ChannelDto {
            if !ch.read_only {
                ch.routes = c
                    .routes
                    .iter()
                    .filter(|r| r.channel == ch.name)
                    .map(describe)
                    .collect();
            }
            ch
        }
    }

    impl ChannelAdmin for FakeBackend {
        fn channels(&self) -> Vec<ChannelDto> {
            let c = self.channels.lock().unwrap();
            std::iter::once(config_channel())
                .chain(c.managed.iter().cloned())
                .map(|ch| Self::with_routes(&c, ch))
                .collect()
        }

        fn create_channel(&self, input: ChannelInput) -> Result<ChannelDto, ApiError> {
            let name = input
                .name
                .clone()
                .ok_or_else(|| ApiError::new(422, "name the channel"))?;
            let ch = self.build(&name, input)?;
            let mut c = self.channels.lock().unwrap();
            if name == "default" || c.managed.iter().any(|m| m.name == name) {
                return Err(ApiError::new(409, format!("channel {name} exists already")));
            }
            c.managed.push(ch.clone());
            Ok(ch)
        }

        fn replace_channel(&self, name: &str, input: ChannelInput) -> Result<ChannelDto, ApiError> {
            let new_name = input.name.clone().unwrap_or_else(|| name.to_owned());
            let ch = self.build(&new_name, input)?;
            let mut c = self.channels.lock().unwrap();
            let i = Self::managed_index(&c, name)?;
            if new_name != name
                && (new_name == "default" || c.managed.iter().any(|m| m.name == new_name))
            {
                return Err(ApiError::new(
                    409,
                    format!("channel {new_name} exists already"),
                ));
            }
            for r in c.routes.iter_mut().filter(|r| r.channel == name) {
                r.channel = new_name.clone();
            }
            c.managed[i] = ch;
            Ok(Self::with_routes(&c, c.managed[i].clone()))
        }

        fn rename_channel(&self, name: &str, new_name: &str) -> Result<ChannelDto, ApiError> {
            let mut input = {
                let c = self.channels.lock().unwrap();
                let m = &c.managed[Self::managed_index(&c, name)?];
                ChannelInput {
                    playlist: m.playlist.iter().filter_map(|t| t.id.clone()).collect(),
                    ..ChannelInput::default()
                }
            };
            input.name = Some(new_name.to_owned());
            self.replace_channel(name, input)
        }

        fn set_channel_playlist(
            &self,
            name: &str,
            tracks: Vec<String>,
        ) -> Result<ChannelDto, ApiError> {
            let playlist = self.refs(&tracks)?;
            let mut c = self.channels.lock().unwrap();
            let i = Self::managed_index(&c, name)?;
            c.managed[i].playlist = playlist;
            Ok(Self::with_routes(&c, c.managed[i].clone()))
        }

        fn delete_channel(&self, name: &str, remove_routes: bool) -> Result<(), DeleteRefused> {
            let mut c = self.channels.lock().unwrap();
            let i = Self::managed_index(&c, name)?;
            let routed: Vec<String> = c
                .routes
                .iter()
                .filter(|r| r.channel == name)
                .map(describe)
                .collect();
            if !routed.is_empty() && !remove_routes {
                return Err(DeleteRefused::RoutedTo(routed));
            }
            c.routes.retain(|r| r.channel != name);
            c.managed.remove(i);
            Ok(())
        }

        fn managed_routes(&self) -> Vec<ManagedRouteDto> {
            self.channels.lock().unwrap().routes.clone()
        }

        fn set_managed_routes(
            &self,
            routes: Vec<ManagedRouteDto>,
        ) -> Result<Vec<ManagedRouteDto>, ApiError> {
            let mut c = self.channels.lock().unwrap();
            for r in &routes {
                if r.channel != "default" && !c.managed.iter().any(|m| m.name == r.channel) {
                    return Err(ApiError::new(
                        422,
                        format!(
                            "a route names channel {:?}, which does not exist",
                            r.channel
                        ),
                    ));
                }
            }
            c.routes = routes.clone();
            Ok(routes)
        }

        fn dialplan(&self) -> DialplanDto {
            let c = self.channels.lock().unwrap();
            let routes = std::iter::once(RouteDto {
                r#match: CONFIG_ROUTE.into(),
                channel: "default".into(),
            })
            .chain(c.routes.iter().map(|r| RouteDto {
                r#match: describe(r),
                channel: r.channel.clone(),
            }))
            .collect();
            DialplanDto {
                routes,
                default_channel: Some("default".into()),
            }
        }
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
                library_sync: None,
            }
        }

        fn health(&self) -> HealthDto {
            if self.tracks.lock().unwrap().iter().any(|t| t.enabled) {
                HealthDto {
                    healthy: true,
                    reasons: vec![],
                    availability: None,
                    warnings: vec![],
                }
            } else {
                HealthDto {
                    healthy: false,
                    reasons: vec!["channel default: no playable music".into()],
                    availability: None,
                    warnings: vec![],
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
