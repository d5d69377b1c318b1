//! The server handle the web sees (DESIGN.md: "web sees only the server handle"): status,
//! health, metrics, and the library operations, each followed by a re-plan.
//!
//! Owns the live channel renders (shared with the call router, so new calls get the newest).
//! What each channel plays, and the swaps that put a new render live (at a frame boundary of
//! every call on its channel; no call is dropped or restarted; the line-out at its next track
//! boundary), are the conductor's (`control::conductor`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

mod admin;
pub mod availability;
mod conductor;
pub mod drain;

pub(crate) use conductor::first_passes;

use crate::channel::ChannelRender;
use crate::channel::cache::RenderCache;
use crate::channel::encoded::CodecPlan;
use crate::channel::programme::{self, Programme, Programmes, Renders};
use crate::channel::store::ChannelStore;
use crate::clock::MediaClock;
use crate::config::Config;
use crate::library::follow::SyncState;
use crate::library::manifest::{self, Manifest};
use crate::library::probe::probe_isolated;
use crate::library::{Library, Settings, Track, Upload, UploadError};
use crate::lineout::{LineoutHandle, LineoutState};
use crate::metrics::Histogram;
use crate::rtp::router::LivePlans;
use crate::rtp::shell::{MediaSender, MediaStats};
use crate::sip::endpoint::STARTING;
use crate::sip::shell::SipStatus;
use crate::web::backend::{
    ApiError, Backend, CallDto, DiskDto, HealthDto, LibrarySyncDto, LineoutDto, RegistrationDto,
    SettingsDto, StatusDto, TrackDto, UploadSink,
};

/// The media loop is "stalled" when its last turn is older than this; it turns at least every
/// few hundred milliseconds even with no calls.
const MEDIA_STALL: Duration = Duration::from_secs(2);
/// A decoder that takes longer than this on one upload is treated as hung and killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(90);

/// Call set-up time buckets, seconds (INVITE received → ACK received).
static SETUP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Counters the call router updates (SIP task) and `/metrics` reads.
#[derive(Debug)]
pub struct CallMetrics {
    pub answered: AtomicU64,
    pub rejected_no_port: AtomicU64,
    pub ended: AtomicU64,
    pub setup_seconds: Histogram,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            answered: AtomicU64::new(0),
            rejected_no_port: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            setup_seconds: Histogram::new(SETUP_BUCKETS),
        }
    }
}

/// Where a channel's render is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderState {
    Ready,
    Rendering,
}

/// Why the state folder's library could not be opened (its channels play their configured
/// music, the demo melody, and `/healthz` says why).
#[derive(Debug, thiserror::Error)]
pub enum LibraryUnavailable {
    #[error("cannot create the state folder {}: {source}", dir.display())]
    StateFolder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        source: crate::library::LibraryError,
    },
}

/// Test hook: holds start-up's full renders (after the heads) until released, so a test
/// sees a cold start serve its heads however quick the full render would be.
#[derive(Debug, Clone, Default)]
pub struct RenderHold(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl RenderHold {
    /// A hold, not yet released.
    pub fn new() -> RenderHold {
        RenderHold::default()
    }

    /// Lets the held renders go (and any later ones).
    pub fn release(&self) {
        let (released, wake) = &*self.0;
        if let Ok(mut r) = released.lock() {
            *r = true;
        }
        wake.notify_all();
    }

    /// Blocks until released.
    fn wait(&self) {
        let (released, wake) = &*self.0;
        let Ok(mut r) = released.lock() else { return };
        while !*r {
            r = match wake.wait(r) {
                Ok(r) => r,
                Err(_) => return,
            };
        }
    }
}

/// The renders the media thread and new calls use, by channel name.
pub type LiveRenders = Arc<RwLock<BTreeMap<String, Arc<ChannelRender>>>>;

pub struct Control {
    config: Config,
    pub(crate) started: Instant,
    clock: MediaClock,
    pub renders: LiveRenders,
    pub(crate) render_state: Mutex<BTreeMap<String, RenderState>>,
    library: Result<Mutex<Library>, LibraryUnavailable>,
    cache: Option<RenderCache>,
    media: Mutex<MediaSender>,
    pub media_stats: Arc<MediaStats>,
    pub lineout: Arc<Mutex<Option<LineoutHandle>>>,
    pub sip_status: Arc<Mutex<SipStatus>>,
    pub call_metrics: Arc<CallMetrics>,
    /// OPTIONS answers 503 with this reason while set (read by the SIP task).
    unavailable: watch::Sender<Option<String>>,
    /// A cold start's silent placeholders ([`programme::placeholders`]): while one is still
    /// its channel's live render the box is "starting".
    placeholders: Mutex<Renders>,
    generation: watch::Sender<u64>,
    /// The effective dialplan; the SIP task routes with its latest value.
    dialplan: watch::Sender<crate::dialplan::Dialplan>,
    /// Managed channels and routes (`None`: the state folder cannot hold them).
    pub store: Option<Mutex<ChannelStore>>,
    /// How new calls on each channel listen to it (the call router reads it).
    plans: LivePlans,
    /// The conductor's state of each channel.
    conducted: Mutex<BTreeMap<String, conductor::Conducted>>,
    /// Set by a library change, taken by the next plan: re-render what uses the library.
    library_dirty: AtomicBool,
    epochs: AtomicU64,
    shuffle_seed: u64,
    /// Tells the conductor's turn when the wall clock stepped.
    wall: Mutex<crate::schedule::WallWatch>,
    renders_done: AtomicU64,
    /// Channels a re-plan has rendered since start-up: start-up's own renders for them (the
    /// full loop behind a head, the wideband codecs) are dropped, not swapped in over the
    /// newer music.
    superseded: Mutex<std::collections::BTreeSet<String>>,
    exe: PathBuf,
    /// Admission control and the drain.
    pub availability: Arc<availability::Availability>,
    /// Set when this box follows a published library (`[library] follow`): its state.
    pub library_sync: Option<Arc<SyncState>>,
    /// One export at a time decides the next published version.
    exporting: Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// What `Control::new` needs from the server wiring.
pub struct ControlParts {
    pub config: Config,
    pub clock: MediaClock,
    pub renders: LiveRenders,
    pub library: Result<Library, LibraryUnavailable>,
    pub cache: Option<RenderCache>,
    pub media: MediaSender,
    pub media_stats: Arc<MediaStats>,
    pub lineout: Arc<Mutex<Option<LineoutHandle>>>,
    pub sip_status: Arc<Mutex<SipStatus>>,
    pub call_metrics: Arc<CallMetrics>,
    pub unavailable: watch::Sender<Option<String>>,
    /// The silent placeholders a cold start went live on (empty otherwise): OPTIONS answers
    /// 503 "starting" while any is still its channel's render.
    pub placeholders: Renders,
    /// The `mohd` executable that probes uploads in a child process.
    pub probe_exe: PathBuf,
    /// Managed channels and routes, opened from the state folder.
    pub store: Option<ChannelStore>,
    /// Each channel's plan for new calls, shared with the call router.
    pub plans: LivePlans,
    /// Seeds every shuffle (tests set it; else random).
    pub shuffle_seed: u64,
    /// Admission control and the drain (`/healthz`, `/api/drain`, `/metrics`).
    pub availability: Arc<availability::Availability>,
    /// The follower's state, when `[library] follow` is set.
    pub library_sync: Option<Arc<SyncState>>,
}

impl Control {
    /// Builds the handle and starts its re-render task (on the current tokio runtime).
    pub fn start(parts: ControlParts) -> Arc<Control> {
        let render_state = parts
            .config
            .channels
            .keys()
            .map(|n| (n.clone(), RenderState::Ready))
            .collect();
        let (generation, changed) = watch::channel(0u64);
        let dialplan = match &parts.store {
            Some(store) => store.dialplan(&parts.config.dialplan),
            None => parts.config.dialplan.clone(),
        };
        let (dialplan, _) = watch::channel(dialplan);
        let control = Arc::new(Control {
            config: parts.config,
            started: Instant::now(),
            clock: parts.clock,
            renders: parts.renders,
            render_state: Mutex::new(render_state),
            library: parts.library.map(Mutex::new),
            cache: parts.cache,
            media: Mutex::new(parts.media),
            media_stats: parts.media_stats,
            lineout: parts.lineout,
            sip_status: parts.sip_status,
            call_metrics: parts.call_metrics,
            unavailable: parts.unavailable,
            placeholders: Mutex::new(parts.placeholders),
            generation,
            dialplan,
            store: parts.store.map(Mutex::new),
            plans: parts.plans,
            conducted: Mutex::new(BTreeMap::new()),
            library_dirty: AtomicBool::new(false),
            epochs: AtomicU64::new(0),
            shuffle_seed: parts.shuffle_seed,
            wall: Mutex::new(crate::schedule::WallWatch::new(Duration::from_secs(1))),
            renders_done: AtomicU64::new(0),
            superseded: Mutex::default(),
            exe: parts.probe_exe,
            availability: parts.availability,
            library_sync: parts.library_sync,
            exporting: Mutex::new(()),
        });
        control.update_unavailable();
        let specs = control.effective_specs();
        control.publish_call_plans(&specs);
        let greeter = Arc::clone(&control);
        conductor::spawn_background("mohd-greetings", move || {
            conductor::lower_priority();
            greeter.render_greetings(&specs);
        });
        conductor::spawn(&control, changed);
        control
    }

    /// Every effective channel's first pass with the library, settings and channels as they
    /// are now.
    fn programmes_now(&self) -> Programmes {
        let store = self.store.as_ref().and_then(|s| s.lock().ok());
        let wall = jiff::Timestamp::now();
        let seed = self.shuffle_seed;
        match self.library.as_ref().ok().map(|l| l.lock()) {
            Some(Ok(library)) => {
                conductor::first_passes(&self.config, Some(&library), store.as_deref(), seed, wall)
            }
            // No library (or a poisoned lock): the config alone decides.
            _ => conductor::first_passes(&self.config, None, store.as_deref(), seed, wall),
        }
    }

    /// The codecs every channel is rendered for, and their encoder settings.
    fn codec_plan(&self) -> CodecPlan {
        CodecPlan::from_config(&self.config)
    }

    fn programme_of(&self, channel: &str) -> Option<Programme> {
        self.programmes_now().remove(channel)
    }

    /// The library's loudness target: that of [`programme::library_channel`].
    fn library_loudness(&self) -> f64 {
        self.programme_of(programme::library_channel(&self.config))
            .map_or(crate::channel::DEFAULT_TARGET_LUFS, |p| p.loudness_lufs)
    }

    fn settings_now(&self) -> Settings {
        self.library
            .as_ref()
            .ok()
            .and_then(|l| l.lock().ok().map(|l| l.settings().clone()))
            .unwrap_or_default()
    }

    /// Deletes cached renders nothing plays any more (a playlist changed while mohd was
    /// stopped, or just now), so a changing library does not fill the card.
    pub fn retain_cache(&self) {
        if let Some(cache) = &self.cache {
            programme::retain_cache(cache, &self.programmes_now(), &self.codec_plan());
        }
    }

    fn set_render_state(&self, channel: &str, state: RenderState) {
        if let Ok(mut s) = self.render_state.lock() {
            s.insert(channel.to_owned(), state);
        }
    }

    /// OPTIONS says 503 while a channel has nothing playable (until someone acts) or while a
    /// cold start's channel still plays its silent placeholder (for a second or so): a proxy
    /// routes elsewhere meanwhile. Called whenever a render goes live in start-up or a re-plan.
    fn update_unavailable(&self) {
        let unplayable: Vec<String> = self
            .renders
            .read()
            .map(|r| {
                r.values()
                    .filter(|c| !c.playable)
                    .map(|c| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let starting = self.starting_channels();
        let reason = if !unplayable.is_empty() {
            Some(format!(
                "no playable music in channel {}",
                unplayable.join(", ")
            ))
        } else if !starting.is_empty() {
            // The SIP task adds a Retry-After to a reason that starts so.
            let starting = starting.join(", ");
            Some(format!(
                "{STARTING}: channel {starting} not playing music yet"
            ))
        } else {
            None
        };
        self.unavailable.send_if_modified(|r| {
            if *r != reason {
                *r = reason;
                true
            } else {
                false
            }
        });
    }

    /// The channels whose live render is still a cold start's silent placeholder (none once
    /// every channel plays music, or has been found to have none).
    pub fn starting_channels(&self) -> Vec<String> {
        let Ok(mut placeholders) = self.placeholders.lock() else {
            return Vec::new();
        };
        if let Ok(live) = self.renders.read() {
            placeholders.retain(|name, p| live.get(name).is_some_and(|l| Arc::ptr_eq(l, p)));
        }
        placeholders.keys().cloned().collect()
    }

    fn with_library<T>(
        &self,
        f: impl FnOnce(&mut Library) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let lib = match &self.library {
            Ok(lib) => lib,
            Err(e) => {
                return Err(ApiError {
                    status: 503,
                    message: format!("the music library is not available: {e}"),
                });
            }
        };
        let mut guard = lib.lock().map_err(|_| ApiError {
            status: 500,
            message: "the library lock is poisoned".into(),
        })?;
        f(&mut guard)
    }

    pub(crate) fn health_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Ok(r) = self.renders.read() {
            for c in r.values().filter(|c| !c.playable) {
                reasons.push(format!("channel {}: no playable music", c.name));
            }
        }
        if let Err(e) = &self.library {
            reasons.push(format!("music library unavailable: {e}"));
        }
        let last_tick = Duration::from_nanos(self.media_stats.last_tick_ns.load(Ordering::Relaxed));
        let since_epoch = Instant::now().saturating_duration_since(self.clock.epoch());
        let stalled_for = since_epoch.saturating_sub(last_tick);
        if stalled_for > MEDIA_STALL {
            reasons.push(format!(
                "media clock stalled: no RTP loop turn for {:.1} s",
                stalled_for.as_secs_f64()
            ));
        }
        if let Ok(lineout) = self.lineout.lock()
            && let Some(l) = lineout.as_ref()
        {
            let stats = l.stats();
            if let LineoutState::Waiting { error } = &stats.state {
                reasons.push(format!("line-out failing on {}: {error}", stats.device));
            }
        }
        if let Ok(sip) = self.sip_status.lock() {
            for r in &sip.registrations {
                if r.state == "failed" {
                    reasons.push(format!(
                        "registration {} at {} down: {}",
                        r.aor,
                        r.registrar,
                        r.last_error.as_deref().unwrap_or("failed")
                    ));
                }
            }
        }
        reasons
    }

    fn state_dir(&self) -> &Path {
        &self.config.state.dir
    }

    /// What `/healthz` reports without failing: a library sync that fails or has not
    /// succeeded yet (the box keeps playing its last good library).
    pub(crate) fn health_warnings(&self) -> Vec<String> {
        self.library_sync
            .as_ref()
            .and_then(|s| s.warning())
            .into_iter()
            .collect()
    }

    /// A follower's library changes only by its publisher: 409 with the reason.
    pub(crate) fn refuse_if_following(&self) -> Result<(), ApiError> {
        match &self.config.library.follow {
            Some(f) => Err(ApiError {
                status: 409,
                message: format!(
                    "this box follows the library published at {}; change the library there",
                    f.url
                ),
            }),
            None => Ok(()),
        }
    }

    /// Opens a followed library's folder (its library and managed channels), ready for
    /// [`Control::swap_library`].
    pub(crate) fn open_followed(&self, dir: &Path) -> Result<FollowedLibrary, String> {
        let library = Library::open(dir).map_err(|e| e.to_string())?;
        let store = ChannelStore::open(dir, self.config.channels.keys().cloned())
            .map_err(|e| e.to_string())?;
        Ok(FollowedLibrary { library, store })
    }

    /// Puts a followed library in place of the one in use, both locks held (store, then
    /// library, as the conductor takes them) so no plan sees half of each; then re-plans as
    /// after an upload: calls keep their music until the new render swaps in.
    pub(crate) fn swap_library(&self, next: FollowedLibrary) {
        {
            let mut store = self.store.as_ref().and_then(|s| s.lock().ok());
            let library = self.library.as_ref().ok().and_then(|l| l.lock().ok());
            match library {
                Some(mut library) => *library = next.library,
                None => tracing::error!("the library is unavailable; the followed one is not used"),
            }
            if let Some(store) = store.as_deref_mut() {
                *store = next.store;
            }
        }
        self.library_changed();
        self.channels_changed();
    }

    /// This box's library as a manifest, under the version it is published as.
    fn export_manifest_now(&self) -> Result<Manifest, ApiError> {
        let mut manifest = {
            let store = self.store.as_ref().and_then(|s| s.lock().ok());
            let (channels, routes) = store
                .as_deref()
                .map(|s| (s.channels().cloned().collect(), s.routes().to_vec()))
                .unwrap_or_default();
            self.with_library(|l| {
                Ok(Manifest::describe(
                    l.tracks(),
                    l.settings(),
                    channels,
                    routes,
                    0,
                ))
            })?
        };
        let _one = self.exporting.lock();
        manifest.version =
            manifest::publish_version(self.state_dir(), &manifest.content_digest(), 0).map_err(
                |e| ApiError {
                    status: 500,
                    message: format!("cannot record the published version: {e}"),
                },
            )?;
        Ok(manifest)
    }
}

/// A followed library opened from its folder, not yet in use.
pub(crate) struct FollowedLibrary {
    library: Library,
    store: ChannelStore,
}

fn track_dto(t: &Track) -> TrackDto {
    TrackDto {
        id: t.id.clone(),
        name: t.name.clone(),
        enabled: t.enabled,
        duration_s: t.duration_s,
        format: t.format.clone(),
        sample_rate: t.sample_rate,
        channels: t.channels,
        // Silent tracks are refused at upload; -70 LUFS is EBU R128's absolute gate.
        loudness_lufs: t.loudness_lufs.unwrap_or(-70.0),
        size_bytes: t.size_bytes,
        added_unix: t.added_unix,
    }
}

fn upload_error(e: UploadError) -> ApiError {
    ApiError {
        status: e.http_status(),
        message: e.to_string(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: 404,
        message: format!("no track with id {id:?}"),
    }
}

/// An upload in progress: the library's temp file, handed back to `finish_upload`.
struct UploadInProgress(Upload);

impl UploadSink for UploadInProgress {
    fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.0.write(chunk).map_err(upload_error)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// The parts of [`Backend::status`], one each.
impl Control {
    fn call_statuses(&self, now: Instant) -> Vec<CallDto> {
        self.media_stats
            .calls_snapshot()
            .iter()
            // Multicast streams (their peer is the group) are no callers on hold.
            .filter(|c| !c.peer.ip().is_multicast())
            .map(|c| CallDto {
                id: c.call,
                peer: c.peer.to_string(),
                channel: c.channel.to_string(),
                codec: c.codec.to_string(),
                duration_s: now.saturating_duration_since(c.started).as_secs_f64(),
                packets_sent: c.packets_sent,
                sending: c.sending,
            })
            .collect()
    }

    /// `None` when the line-out is off.
    fn lineout_status(&self) -> Option<LineoutDto> {
        let lineout = self.lineout.lock().ok()?;
        let s = lineout.as_ref()?.stats();
        Some(LineoutDto {
            enabled: true,
            state: match &s.state {
                LineoutState::Starting => "starting".to_owned(),
                LineoutState::Playing { .. } => "playing".to_owned(),
                LineoutState::Waiting { error } => format!("waiting: {error}"),
                LineoutState::Stopped => "stopped".to_owned(),
            },
            device: s.device.clone(),
            channel: self.config.lineout.channel.clone(),
            track: s.track.clone(),
            underruns: s.underruns,
            level_db: self
                .settings_now()
                .lineout_level_db
                .unwrap_or(self.config.lineout.level_db),
        })
    }

    /// `None` unless this box follows a published library.
    fn library_sync_status(&self) -> Option<LibrarySyncDto> {
        let s = self.library_sync.as_ref()?.snapshot();
        Some(LibrarySyncDto {
            state: match (&s.failing, s.last_success_unix) {
                (Some(_), _) => "failing",
                (None, None) => "pending",
                (None, Some(_)) => "ok",
            }
            .to_owned(),
            url: s.url,
            manifest_version: s.manifest_version,
            last_success_unix: s.last_success_unix,
            last_error: s.failing.map(|f| format!("{}: {f}", f.reason())),
        })
    }

    fn registration_statuses(&self) -> Vec<RegistrationDto> {
        let Ok(sip) = self.sip_status.lock() else {
            return Vec::new();
        };
        sip.registrations
            .iter()
            .map(|r| RegistrationDto {
                aor: r.aor.clone(),
                registrar: r.registrar.clone(),
                state: r.state.to_owned(),
                last_error: r.last_error.clone(),
            })
            .collect()
    }
}

impl Backend for Control {
    fn status(&self) -> StatusDto {
        let now = Instant::now();
        let (free_bytes, total_bytes) = disk_space(self.state_dir()).unwrap_or((0, 0));
        StatusDto {
            uptime_s: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            health: self.health(),
            disk: DiskDto {
                free_bytes,
                total_bytes,
            },
            channels: self.channel_statuses(now),
            calls: self.call_statuses(now),
            lineout: self.lineout_status(),
            registrations: self.registration_statuses(),
            library_sync: self.library_sync_status(),
        }
    }

    fn health(&self) -> HealthDto {
        let reasons = self.health_reasons();
        HealthDto {
            healthy: reasons.is_empty(),
            reasons,
            availability: Some(self.availability.status(Instant::now())),
            warnings: self.health_warnings(),
        }
    }

    fn export_manifest(&self) -> Result<Vec<u8>, ApiError> {
        Ok(self.export_manifest_now()?.to_bytes())
    }

    fn export_file(&self, sha256: &str) -> Result<PathBuf, ApiError> {
        self.with_library(|l| {
            l.tracks()
                .iter()
                .find(|t| t.sha256 == sha256)
                .map(|t| l.music_dir().join(&t.name))
                .ok_or_else(|| ApiError {
                    status: 404,
                    message: format!("no track with sha256 {sha256:?}"),
                })
        })
    }

    fn metrics_text(&self) -> String {
        crate::metrics::families::render(self)
    }

    fn drain(
        &self,
        request: &crate::web::backend::DrainRequest,
    ) -> Result<crate::web::backend::AvailabilityDto, ApiError> {
        Ok(self.availability.request(request))
    }

    fn tracks(&self) -> Vec<TrackDto> {
        self.with_library(|l| Ok(l.tracks().iter().map(track_dto).collect()))
            .unwrap_or_default()
    }

    fn track(&self, id: &str) -> Option<TrackDto> {
        self.with_library(|l| Ok(l.track(id).map(track_dto)))
            .ok()
            .flatten()
    }

    fn begin_upload(&self, name: &str, overwrite: bool) -> Result<Box<dyn UploadSink>, ApiError> {
        self.refuse_if_following()?;
        let max = self.config.web.max_upload_bytes;
        self.with_library(|l| {
            l.begin_upload(name, overwrite, max)
                .map(|u| Box::new(UploadInProgress(u)) as Box<dyn UploadSink>)
                .map_err(upload_error)
        })
    }

    fn finish_upload(&self, upload: Box<dyn UploadSink>) -> Result<TrackDto, ApiError> {
        let upload = upload
            .into_any()
            .downcast::<UploadInProgress>()
            .map_err(|_| ApiError {
                status: 500,
                message: "not an upload of this server".into(),
            })?;
        // Decode in a child process, without holding the library: a hostile file can crash
        // or hang only the child, and the status page keeps answering meanwhile.
        let probed = probe_isolated(&self.exe, upload.0.temp_path(), PROBE_TIMEOUT);
        let track = self.with_library(|l| {
            l.commit_upload(upload.0, |_: &Path| probed)
                .map_err(upload_error)
        })?;
        tracing::info!(name = %track.name, id = %track.id, "track added to the library");
        self.library_changed();
        Ok(track_dto(&track))
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<TrackDto, ApiError> {
        self.refuse_if_following()?;
        let t = self.with_library(|l| {
            l.set_enabled(id, enabled).map_err(library_error)?;
            l.track(id).map(track_dto).ok_or_else(|| not_found(id))
        })?;
        self.library_changed();
        Ok(t)
    }

    fn delete_track(&self, id: &str) -> Result<(), ApiError> {
        self.refuse_if_following()?;
        self.with_library(|l| l.delete(id).map_err(library_error))?;
        // Gone from the library, so from every managed playlist, announcement and greeting.
        if let Some(Ok(mut store)) = self.store.as_ref().map(|s| s.lock())
            && let Err(e) = store.remove_track(id)
        {
            tracing::error!(track = %id, error = %e, "cannot remove the deleted track from the managed channels");
        }
        self.library_changed();
        Ok(())
    }

    fn reorder(&self, order: Vec<String>) -> Result<Vec<TrackDto>, ApiError> {
        self.refuse_if_following()?;
        let tracks = self.with_library(|l| {
            l.reorder(&order).map_err(library_error)?;
            Ok(l.tracks().iter().map(track_dto).collect::<Vec<_>>())
        })?;
        self.library_changed();
        Ok(tracks)
    }

    fn preview_wav(&self, id: &str) -> Result<Vec<u8>, ApiError> {
        let path = self.with_library(|l| l.path_of(id).ok_or_else(|| not_found(id)))?;
        let lufs = self.library_loudness();
        let samples =
            programme::obtain_track(&path, lufs, 8000, self.cache.as_ref()).map_err(|e| {
                ApiError {
                    status: 422,
                    message: format!("cannot render this track: {e}"),
                }
            })?;
        wav_bytes(&samples, 8000).map_err(|e| ApiError {
            status: 500,
            message: format!("cannot write the preview: {e}"),
        })
    }

    fn settings(&self) -> SettingsDto {
        let s = self.settings_now();
        SettingsDto {
            loudness_lufs: Some(self.library_loudness()),
            lineout_level_db: Some(s.lineout_level_db.unwrap_or(self.config.lineout.level_db)),
            lineout_device: Some(
                s.lineout_device
                    .unwrap_or_else(|| self.config.lineout.device.clone()),
            ),
        }
    }

    fn set_settings(&self, patch: SettingsDto) -> Result<SettingsDto, ApiError> {
        self.refuse_if_following()?;
        let before = self.settings_now();
        let mut next = before.clone();
        if let Some(v) = patch.loudness_lufs {
            next.loudness_lufs = Some(v);
        }
        if let Some(v) = patch.lineout_level_db {
            next.lineout_level_db = Some(v);
        }
        if let Some(v) = patch.lineout_device {
            next.lineout_device = Some(v);
        }
        self.with_library(|l| l.set_settings(next.clone()).map_err(library_error))?;
        if next.loudness_lufs != before.loudness_lufs {
            self.library_changed();
        }
        if next.lineout_level_db != before.lineout_level_db
            || next.lineout_device != before.lineout_device
        {
            self.apply_lineout_settings(&next);
        }
        Ok(self.settings())
    }
}

impl Control {
    /// Level and device changes reach the line-out by restarting it (a short gap on the card;
    /// SIP callers are not affected).
    fn apply_lineout_settings(&self, s: &Settings) {
        let Ok(mut guard) = self.lineout.lock() else {
            return;
        };
        let Some(old) = guard.take() else {
            return;
        };
        std::thread::spawn(move || {
            old.stop();
        });
        let Some(programme) = self.programme_of(&self.config.lineout.channel) else {
            return;
        };
        let opts = crate::lineout::LineoutOptions::configured(
            &self.config.lineout,
            s,
            programme,
            self.cache.clone(),
        );
        match crate::lineout::start(opts) {
            Ok(h) => *guard = Some(h),
            Err(e) => tracing::error!(error = %e, "cannot restart the line-out"),
        }
    }
}

/// The library knows which of its errors are the client's (404 unknown id, 400 bad order)
/// and which are the disk's (507 full, 500).
fn library_error(e: crate::library::LibraryError) -> ApiError {
    ApiError {
        status: e.http_status(),
        message: e.to_string(),
    }
}

/// Free and total bytes of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size() as u64;
    Some((
        (s.blocks_available() as u64).saturating_mul(frag),
        (s.blocks() as u64).saturating_mul(frag),
    ))
}

fn wav_bytes(samples: &[f32], rate: u32) -> Result<Vec<u8>, hound::Error> {
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut out, spec)?;
        for &s in samples {
            w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
        }
        w.finalize()?;
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = disk_space(dir.path()).expect("statvfs");
        assert!(total > 0 && free <= total, "{free} / {total}");
    }
}
