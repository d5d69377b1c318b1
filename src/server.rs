//! Wiring only: renders the channels, starts the media thread and the SIP shell, connects SIP
//! call events to the call router (`rtp::router`), and shuts everything down in order.
//!
//! The entry point follows mini-redis's `server::run(listener, shutdown)`: the caller binds
//! the sockets first ([`Listeners::bind`], whose addresses are known before anything starts),
//! then [`start`] serves on them and returns a [`Running`] handle, or [`run`] serves until a
//! shutdown future resolves. The binary passes its signals; tests start several servers in
//! one process, each with its own [`Environment`] instead of process-wide variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::channel::cache::RenderCache;
use crate::channel::programme::{self, Programmes, Renders};
use crate::channel::store::ChannelStore;
use crate::clock::MediaClock;
use crate::config::{Config, LineoutEnabled, Listen};
use crate::control::availability::{Availability, GateInputs};
use crate::control::{
    CallMetrics, Control, ControlParts, LibraryUnavailable, LiveRenders, first_passes,
};
use crate::library::{Library, Settings};
use crate::lineout::{self, LineoutHandle, LineoutOptions};
use crate::rtp::router::{CallRouter, LivePlans};
use crate::rtp::shell::{self as media_shell, MediaHandle};
use crate::sip::endpoint::{CallId, EndReason, Endpoint, EndpointConfig};
use crate::sip::shell as sip_shell;
use crate::web::WebHandle;
use crate::web::auth::AuthStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configured SIP listener could not be bound.
    #[error("cannot listen for SIP on {listen}: {source}")]
    Bind {
        listen: Listen,
        source: std::io::Error,
    },
    /// A TLS listener is configured without `[sip.tls]`.
    #[error("cannot listen for SIP on {0}: no [sip.tls] certificate configured")]
    NoTlsCertificate(Listen),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("cannot start the media thread: {0}")]
    Media(std::io::Error),
    #[error("rendering a channel failed: {0}")]
    Render(String),
}

/// The sockets a server will serve on, bound before it starts so their addresses (port 0
/// resolved) are known to the caller: every configured SIP listener and the web listener.
pub struct Listeners {
    sip: Vec<sip_shell::Listener>,
    /// `None` when `[web] listen` is unset or could not be bound.
    web: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds every `[sip] listen` (the TLS certificate is loaded once, for all) and the web
    /// listener. A SIP listener that cannot be bound is an error; the web listener is not
    /// (see [`bind_web`]).
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        Ok(Listeners {
            sip: bind_sip(config).await?,
            web: bind_web(config),
        })
    }

    /// Every SIP listener, with the port it got, in the configured order.
    pub fn sip(&self) -> Vec<Listen> {
        self.sip
            .iter()
            .map(|l| Listen {
                transport: l.transport(),
                addr: l.bound(),
            })
            .collect()
    }

    /// The web listener's address, if there is one.
    pub fn web(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// What the binary takes from its process and a test sets per server: in one test process
/// several servers run side by side, so none of this may come from process-wide state.
pub struct Environment {
    /// The `mohd` executable, run as `mohd probe` to decode uploads in a child process.
    pub probe_exe: PathBuf,
    /// The systemd watchdog, petted from the media loop.
    pub watchdog: Option<crate::notify::Watchdog>,
    /// Test hook: the media loop wedges itself this long after it starts.
    pub stall_media_after: Option<Duration>,
    /// Seeds every channel's shuffle, so a test knows each pass's order; `None`: random.
    pub shuffle_seed: Option<u64>,
    /// Test hook: a cold start's full renders wait for this after the heads.
    pub hold_full_render: Option<crate::control::RenderHold>,
    /// Test hook: a cold start renders no head until this is released (it plays silence
    /// and OPTIONS says "starting" meanwhile).
    pub hold_heads: Option<crate::control::RenderHold>,
}

impl Environment {
    /// The running executable, `$WATCHDOG_USEC`/`$NOTIFY_SOCKET`, and the stall test hook's
    /// variable (see `notify`).
    pub fn from_process() -> Environment {
        Environment {
            probe_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mohd")),
            watchdog: crate::notify::Watchdog::from_env(),
            stall_media_after: crate::notify::test_stall_media_after(),
            shuffle_seed: None,
            hold_full_render: None,
            hold_heads: None,
        }
    }

    /// No watchdog and no hooks; uploads are probed by `probe_exe`.
    pub fn with_probe(probe_exe: impl Into<PathBuf>) -> Environment {
        Environment {
            probe_exe: probe_exe.into(),
            watchdog: None,
            stall_media_after: None,
            shuffle_seed: None,
            hold_full_render: None,
            hold_heads: None,
        }
    }
}

/// A running server, for tests and the binary.
pub struct Running {
    /// Every SIP listener, with the port it got.
    pub sip_listeners: Vec<Listen>,
    pub media_stats: Arc<media_shell::MediaStats>,
    /// The handle the web page and API use; also what tests drive library changes through.
    pub control: Arc<Control>,
    /// The web listener, when `[web] listen` is set and it could bind.
    pub web: Option<WebHandle>,
    shutdown: watch::Sender<bool>,
    sip_task: tokio::task::JoinHandle<()>,
    media: MediaHandle,
    /// The line-out, when enabled (it may be waiting for its device).
    pub lineout: Arc<Mutex<Option<LineoutHandle>>>,
    /// The SIP and web TLS configurations: what SIGHUP and `POST /api/tls/reload` reload.
    pub tls: Arc<crate::tls::TlsReloader>,
    /// Admission control and the drain: whether new calls are taken.
    pub availability: Arc<Availability>,
    sip_status: Arc<Mutex<sip_shell::SipStatus>>,
}

impl Running {
    /// Whether the SIP task is still running (it ends only at shutdown, or by a panic).
    pub fn is_serving(&self) -> bool {
        !self.sip_task.is_finished()
    }

    /// Calls up or being set up, as the SIP task last published (at once when it changes).
    pub fn calls_in_progress(&self) -> usize {
        self.sip_status.lock().map_or(0, |s| s.active_calls)
    }

    /// Serves until a stop is requested (a message on `stop_requests`: SIGTERM or SIGINT in
    /// the binary) or a drain started over the API has finished, then stops. The first
    /// request starts a drain (no new calls; the calls in progress go on until they end or
    /// `[calls] drain_grace_s` runs out); a second one hangs up at once.
    pub async fn serve_until_stopped(self, mut stop_requests: tokio::sync::mpsc::Receiver<()>) {
        let availability = Arc::clone(&self.availability);
        let status = Arc::clone(&self.sip_status);
        let calls = move || status.lock().map_or(0, |s| s.active_calls);
        let mut requests_open = true;
        loop {
            tokio::select! {
                request = stop_requests.recv(), if requests_open => {
                    if request.is_none() {
                        requests_open = false;
                        continue;
                    }
                    let now = Instant::now();
                    if availability.draining().is_some() {
                        tracing::warn!("stop requested again: hanging up the calls now");
                        availability.start_drain(now, Some(Duration::ZERO));
                    } else {
                        let d = availability.start_drain(now, None);
                        tracing::warn!(
                            calls = calls(),
                            grace_s = d.deadline.saturating_duration_since(now).as_secs(),
                            "draining: no new calls (503); calls in progress go on until they \
                             end or the grace period runs out; signal again to hang up now"
                        );
                    }
                }
                _ = availability.drained(&calls) => break,
            }
        }
        let left = calls();
        if left > 0 {
            tracing::info!(calls = left, "drain over: hanging up the calls still up");
        } else {
            tracing::info!("drained: no calls left");
        }
        crate::notify::stopping();
        self.stop().await;
    }

    /// Hang up every call (BYE), let the BYEs out, stop the media thread. Bounded whatever
    /// the peers do: the BYEs get [`sip_shell::BYE_GRACE`] and nobody waits for their
    /// transactions to time out (32 s), and the media thread gets [`MEDIA_STOP_BOUND`] to
    /// finish; if it has not, the caller goes on (the process exits, ending it).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SIP_STOP_BOUND, self.sip_task)
            .await
            .is_err()
        {
            tracing::warn!("the SIP task did not stop in time; going on");
        }
        if let Some(web) = self.web {
            let _ = tokio::time::timeout(WEB_STOP_BOUND, web.stopped()).await;
        }
        let media = self.media;
        let joined = tokio::task::spawn_blocking(move || media.shutdown());
        if tokio::time::timeout(MEDIA_STOP_BOUND, joined)
            .await
            .is_err()
        {
            tracing::warn!(
                "the media thread did not stop within {MEDIA_STOP_BOUND:?}; going on without it"
            );
        }
        let lineout = self.lineout.lock().ok().and_then(|mut l| l.take());
        if let Some(lineout) = lineout {
            let _ = tokio::time::timeout(
                MEDIA_STOP_BOUND,
                tokio::task::spawn_blocking(move || lineout.stop()),
            )
            .await;
        }
    }
}

/// How long stopping may wait for the SIP task (it hangs up, lets the BYEs out for well under
/// a second and ends) before going on anyway.
const SIP_STOP_BOUND: Duration = Duration::from_secs(3);
/// How long stopping waits for the web server's connections to close.
const WEB_STOP_BOUND: Duration = Duration::from_secs(2);
/// How long stopping waits for the media thread (and the line-out) to join.
const MEDIA_STOP_BOUND: Duration = Duration::from_secs(3);

/// The state folder's library, render cache and managed channels. A library that cannot be
/// opened (permissions, a read-only disk) does not stop the music: its channels play the demo
/// melody and `/healthz` says why; managed channels that cannot be read are logged, and the
/// config file's channels play.
fn open_state(config: &Config) -> StateFolder {
    let dir = &config.state.dir;
    if let Err(source) = std::fs::create_dir_all(dir) {
        let e = LibraryUnavailable::StateFolder {
            dir: dir.clone(),
            source,
        };
        tracing::error!("{e}");
        return StateFolder {
            library: Err(e),
            cache: None,
            store: None,
        };
    }
    let cache_dir = dir.join("cache");
    let cache = match std::fs::create_dir_all(&cache_dir) {
        Ok(()) => Some(RenderCache::new(cache_dir)),
        Err(e) => {
            tracing::warn!(error = %e, "render cache disabled");
            None
        }
    };
    // A follower plays the last library it synced (or an empty one), never its own music/.
    let library_dir = match &config.library.follow {
        None => Ok(dir.clone()),
        Some(_) => crate::library::follow::prepare(dir),
    };
    let library_dir = match library_dir {
        Ok(d) => d,
        Err(source) => {
            let e = LibraryUnavailable::StateFolder {
                dir: dir.join(crate::library::follow::FOLLOW_DIR),
                source,
            };
            tracing::error!("{e}");
            return StateFolder {
                library: Err(e),
                cache,
                store: None,
            };
        }
    };
    let library = Library::open(&library_dir).map_err(|source| {
        let e = LibraryUnavailable::Open {
            dir: dir.clone(),
            source,
        };
        tracing::error!(error = %e, "music library unavailable");
        e
    });
    let store = ChannelStore::open(&library_dir, config.channels.keys().cloned())
        .inspect_err(|e| tracing::error!(error = %e, "managed channels unavailable"))
        .ok();
    StateFolder {
        library,
        cache,
        store,
    }
}

/// Render and start serving on `listeners`. Returns once SIP is being served.
pub async fn start(
    config: &Config,
    listeners: Listeners,
    env: Environment,
) -> Result<Running, ServerError> {
    raise_fd_limit();
    let state = open_state(config);
    let shuffle_seed = env.shuffle_seed.unwrap_or_else(rand::random);
    let programmes = first_passes(
        config,
        state.library.as_ref().ok(),
        state.store.as_ref(),
        shuffle_seed,
        jiff::Timestamp::now(),
    );
    let settings = state
        .library
        .as_ref()
        .map(|l| l.settings().clone())
        .unwrap_or_default();
    // The line-out prepares its first track while the channels render (on its own thread, one
    // track only), so it plays within a second of start whatever the playlist's length.
    let lineout = start_lineout(config, &programmes, &settings, state.cache.clone());
    // Fast start: with every loop in the cache, serve from the first 30 s of each (a 480 kB
    // read) and load the rest behind it, so SIP answers with music within milliseconds of a
    // power-up whatever the playlist's length.
    if let Some(heads) = state
        .cache
        .as_ref()
        .and_then(|c| programme::load_heads(&programmes, c))
    {
        let running = start_with(
            config,
            listeners,
            env,
            FirstRenders {
                live: heads.clone(),
                placeholders: Renders::new(),
            },
            lineout,
            state,
            shuffle_seed,
        )
        .await?;
        running.control.complete_startup_renders(heads, programmes);
        return Ok(running);
    }
    // Cold start: SIP waits for no render. Silence until each channel's head (its first
    // tracks) is rendered, a fraction of a second, then the head while the rest renders.
    let holds = (env.hold_heads.clone(), env.hold_full_render.clone());
    let placeholders = programme::placeholders(&programmes);
    let running = start_with(
        config,
        listeners,
        env,
        FirstRenders {
            live: placeholders.clone(),
            placeholders,
        },
        lineout,
        state,
        shuffle_seed,
    )
    .await?;
    running.control.complete_cold_start(programmes, holds);
    Ok(running)
}

/// Starts the line-out if `[lineout]` enables it. A device that is missing is not an error
/// here: the line-out logs it and keeps retrying while SIP serves.
fn start_lineout(
    config: &Config,
    programmes: &Programmes,
    settings: &Settings,
    cache: Option<RenderCache>,
) -> Option<LineoutHandle> {
    let lo = &config.lineout;
    match lo.enabled {
        LineoutEnabled::Off => return None,
        LineoutEnabled::Auto if !lineout::sound_card_present() => {
            tracing::info!("line-out off: no sound card ([lineout] enabled = true to force it)");
            return None;
        }
        LineoutEnabled::Auto | LineoutEnabled::On => {}
    }
    let programme = programmes.get(&lo.channel)?.clone();
    match lineout::start(LineoutOptions::configured(lo, settings, programme, cache)) {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the line-out thread; SIP is not affected");
            None
        }
    }
}

/// The state folder's contents as `open_state` found them.
struct StateFolder {
    library: Result<Library, LibraryUnavailable>,
    cache: Option<RenderCache>,
    store: Option<ChannelStore>,
}

/// What each channel plays when SIP starts: `live`, of which `placeholders` are a cold
/// start's silent stand-ins (OPTIONS says "starting" while one plays).
struct FirstRenders {
    live: Renders,
    placeholders: Renders,
}

async fn start_with(
    config: &Config,
    listeners: Listeners,
    mut env: Environment,
    first: FirstRenders,
    lineout: Option<LineoutHandle>,
    state: StateFolder,
    shuffle_seed: u64,
) -> Result<Running, ServerError> {
    let clock = MediaClock::new(Instant::now());
    let (media, hangup_rx) = start_media(media_options(config, &mut env), clock)?;
    let sip_listeners = listeners.sip();
    let renders: LiveRenders = Arc::new(RwLock::new(first.live));
    let call_metrics = Arc::new(CallMetrics::default());
    let sip_status = Arc::new(Mutex::new(sip_shell::SipStatus::default()));
    let (unavailable_tx, unavailable_rx) = watch::channel(None);
    let lineout = Arc::new(Mutex::new(lineout));
    let plans: LivePlans = Arc::default();
    let availability = Availability::new(&config.calls, media_thread_count(config));
    let control = Control::start(ControlParts {
        config: config.clone(),
        clock,
        renders: Arc::clone(&renders),
        library: state.library,
        cache: state.cache,
        media: media.sender(),
        media_stats: media.stats.clone(),
        lineout: Arc::clone(&lineout),
        sip_status: Arc::clone(&sip_status),
        call_metrics: Arc::clone(&call_metrics),
        unavailable: unavailable_tx,
        placeholders: first.placeholders,
        probe_exe: env.probe_exe.clone(),
        store: state.store,
        plans: Arc::clone(&plans),
        shuffle_seed,
        availability: Arc::clone(&availability),
        library_sync: config
            .library
            .follow
            .as_ref()
            .map(|_| Arc::new(crate::library::follow::SyncState::default())),
    });

    if let Ok(renders) = renders.read() {
        crate::rtp::multicast::start(
            &config.multicast,
            &renders,
            config.rtp.dscp,
            &media.sender(),
            &media.stats,
        );
    }
    let router = CallRouter::new(
        renders,
        plans,
        call_metrics,
        config.rtp.address,
        (config.rtp.port_min, config.rtp.port_max),
        config.rtp.dscp,
        config.rtp.port_model,
        media.sender(),
    );
    let tls = Arc::new(crate::tls::TlsReloader::default());
    // Every TLS listener shares one configuration (bind_sip), so the first one is all of them.
    if let Some(sip_tls) = listeners.sip.iter().find_map(|l| match l {
        sip_shell::Listener::Stream(s) => s.tls().cloned(),
        sip_shell::Listener::Udp(_) => None,
    }) {
        tls.add("sip", sip_tls);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    availability.spawn_admission(
        media.stats.clone(),
        media_thread_count(config),
        shutdown_rx.clone(),
    );
    let web = match listeners.web {
        Some(listener) => start_web(config, listener, &control, &tls, shutdown_rx.clone()).await,
        None => None,
    };
    if let (Some(follow), Some(sync)) = (&config.library.follow, &control.library_sync) {
        crate::library::follow::spawn(
            Arc::clone(&control),
            follow.clone(),
            config.state.dir.clone(),
            config.web.max_upload_bytes,
            Arc::clone(sync),
            shutdown_rx.clone(),
        );
    }
    let sip_task = spawn_sip(
        config,
        listeners.sip,
        router,
        shutdown_rx,
        hangup_rx,
        Arc::clone(&sip_status),
        unavailable_rx,
        control.dialplan_updates(),
        availability.gate_inputs(),
    );
    Ok(Running {
        sip_listeners,
        media_stats: media.stats.clone(),
        control,
        web,
        shutdown: shutdown_tx,
        sip_task,
        media,
        lineout,
        tls,
        availability,
        sip_status,
    })
}

/// Media threads admission control gives a budget each (`[rtp] media_threads`).
fn media_thread_count(config: &Config) -> usize {
    config.rtp.media_threads.max(1)
}

/// The SIP task: the endpoint on every listener, with the registrations, until shutdown
/// (which hangs up every call first).
// Each argument is a separate input of the SIP loop, passed through to `sip_shell::run`.
#[allow(clippy::too_many_arguments)]
fn spawn_sip(
    config: &Config,
    listeners: Vec<sip_shell::Listener>,
    mut router: CallRouter,
    shutdown: watch::Receiver<bool>,
    hangups: tokio::sync::mpsc::UnboundedReceiver<(CallId, EndReason)>,
    status: Arc<Mutex<sip_shell::SipStatus>>,
    unavailable: watch::Receiver<Option<String>>,
    dialplan: watch::Receiver<crate::dialplan::Dialplan>,
    gate: watch::Receiver<GateInputs>,
) -> tokio::task::JoinHandle<()> {
    // SRTP keys come from this RNG: seeded with 256 bits from the OS (via rand's
    // thread-local CSPRNG), not the 64 a test seed has.
    let endpoint = Endpoint::with_seed(
        endpoint_config(config),
        config.dialplan.clone(),
        rand::random(),
    );
    let limits = config.sip.stream_limits;
    let registrations = sip_shell::Registrations::new(registrations(config));
    tokio::spawn(async move {
        sip_shell::run(
            endpoint,
            listeners,
            limits,
            move |now, ev, ep| router.on_event(now, ev, ep),
            |now, ep| {
                for call in ep.call_ids() {
                    ep.hangup(now, call);
                }
            },
            shutdown,
            hangups,
            registrations,
            status,
            unavailable,
            dialplan,
            gate,
        )
        .await;
    })
}

/// The media thread, and the channel on which it reports peers that vanished (forwarded as
/// hang-ups for the SIP side).
fn start_media(
    options: media_shell::MediaOptions,
    clock: MediaClock,
) -> Result<
    (
        MediaHandle,
        tokio::sync::mpsc::UnboundedReceiver<(CallId, EndReason)>,
    ),
    ServerError,
> {
    let (media_events_tx, mut media_events) = tokio::sync::mpsc::unbounded_channel();
    let media = media_shell::spawn(clock, rand::random(), options, Some(media_events_tx))
        .map_err(ServerError::Media)?;
    let (hangup_tx, hangup_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(media_shell::MediaEvent::PeerGone { call, reason }) =
            media_events.recv().await
        {
            if hangup_tx
                .send((CallId(call), EndReason::PeerGone(reason)))
                .is_err()
            {
                break;
            }
        }
    });
    Ok((media, hangup_rx))
}

fn endpoint_config(config: &Config) -> EndpointConfig {
    EndpointConfig {
        user_agent: config.sip.user_agent.clone(),
        answer_delay: config.sip.answer_delay,
        codecs: config.rtp.codecs.clone(),
        answer: crate::sip::sdp::AnswerOptions {
            prefer_own_order: config.rtp.prefer_own_order,
            opus_bitrate: config.rtp.opus_bitrate,
            srtp: config.rtp.srtp,
            ..Default::default()
        },
        srtp_over_plain_transports: config.rtp.srtp_over_plain_transports,
        max_call_duration: config.calls.max_duration,
        min_session_expires: config.calls.min_session_expires,
        max_calls: config.calls.max_calls,
        access: config.access.clone(),
        auth: config
            .sip
            .auth
            .as_ref()
            .filter(|a| a.invite)
            .map(|a| crate::sip::digest::VerifierConfig::new(a.realm.clone(), a.users.clone())),
        guard: (config.sip.auth.as_ref()).map_or_else(Default::default, |a| a.guard),
        drop_user_agents: config.sip.drop_user_agents.clone(),
        ..EndpointConfig::default()
    }
}

/// The web listener, if `[web] listen` is set. Failing to bind it is logged, not fatal: the
/// music matters more than the admin page, and a box that plays can be fixed remotely later.
fn bind_web(config: &Config) -> Option<std::net::TcpListener> {
    let listen = config.web.listen?;
    match crate::web::bind(listen) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, %listen, "web admin not started");
            None
        }
    }
}

/// Serves the admin page and API on `listener`. Like its bind, a failure here (credentials
/// unreadable, a bad certificate) leaves the music playing.
async fn start_web(
    config: &Config,
    listener: std::net::TcpListener,
    control: &Arc<Control>,
    tls: &Arc<crate::tls::TlsReloader>,
    shutdown: watch::Receiver<bool>,
) -> Option<WebHandle> {
    let auth = match AuthStore::open(&config.state.dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "web admin disabled: cannot read the credentials");
            return None;
        }
    };
    if let Some(hint) = crate::web::auth::first_run_hint(&config.state.dir) {
        tracing::warn!("{hint}");
    }
    let listen = listener.local_addr().ok()?;
    let web_config = crate::web::WebConfig {
        listen,
        tls: config
            .web
            .tls
            .as_ref()
            .map(|t| (t.certificate.clone(), t.key.clone())),
        metrics_public: config.web.metrics_public,
        max_upload_bytes: config.web.max_upload_bytes,
        tls_reloader: Some(Arc::clone(tls)),
    };
    let backend: Arc<dyn crate::web::backend::Backend> = control.clone();
    match crate::web::serve_on(listener, web_config, backend, auth, shutdown).await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, %listen, "web admin not started");
            None
        }
    }
}

/// `mohd serve`: serve on `listeners` until stopped (see [`Running::serve_until_stopped`]:
/// the first message on `stop_requests` drains, a second hangs up at once; a drain started
/// over the API ends it too), then hang up and stop.
/// Prints one line per listener on stdout once serving, for scripts that start mohd on port 0.
pub async fn run(
    config: Config,
    listeners: Listeners,
    env: Environment,
    stop_requests: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), ServerError> {
    let running = start(&config, listeners, env).await?;
    for listen in &running.sip_listeners {
        println!("mohd: SIP listening on {listen}");
    }
    crate::notify::ready();
    if let Some(web) = &running.web {
        let scheme = if web.https { "https" } else { "http" };
        println!("mohd: web listening on {scheme}://{}", web.addr);
    }
    let reload = reload_tls_on_sighup(Arc::clone(&running.tls));
    running.serve_until_stopped(stop_requests).await;
    reload.abort();
    Ok(())
}

/// SIGHUP re-reads the TLS certificates, keys and client CA (it had no meaning before: the
/// default action, exit, is what it replaces). Only the binary installs it, not tests that
/// start servers in process.
fn reload_tls_on_sighup(tls: Arc<crate::tls::TlsReloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP not handled: TLS reload only over the API");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading TLS certificates");
            tls.reload_all();
        }
    })
}

/// Binds every configured SIP listener (the TLS certificate is loaded once, for all).
async fn bind_sip(config: &Config) -> Result<Vec<sip_shell::Listener>, ServerError> {
    use crate::sip::endpoint::Transport;
    let needs_tls = config
        .sip
        .listen
        .iter()
        .any(|l| l.transport == Transport::Tls);
    let tls = match &config.sip.tls {
        Some(t) if needs_tls => Some(crate::tls::ReloadableTls::load(t, &[])?),
        _ => None,
    };
    let mut listeners = Vec::new();
    for listen in &config.sip.listen {
        let err = |source| ServerError::Bind {
            listen: *listen,
            source,
        };
        let l = match listen.transport {
            Transport::Udp => {
                sip_shell::Listener::Udp(sip_shell::bind(listen.addr).await.map_err(err)?)
            }
            Transport::Tcp => sip_shell::Listener::Stream(
                sip_shell::bind_stream(listen.addr, None)
                    .await
                    .map_err(err)?,
            ),
            Transport::Tls => {
                let acceptor = tls.clone().ok_or(ServerError::NoTlsCertificate(*listen))?;
                // One configuration for every TLS listener: one reload reaches them all.
                sip_shell::Listener::Stream(
                    sip_shell::bind_stream(listen.addr, Some(acceptor))
                        .await
                        .map_err(err)?,
                )
            }
        };
        tracing::info!(listen = %Listen { transport: listen.transport, addr: l.bound() }, "SIP listening");
        listeners.push(l);
    }
    Ok(listeners)
}

/// One REGISTER client per `[[registration]]` (the config has checked their registrar URIs).
fn registrations(config: &Config) -> Vec<crate::sip::register::Registration> {
    let mut out = Vec::new();
    for rc in &config.registrations {
        match crate::sip::register::Registration::new(rc.clone(), rand::random()) {
            Ok(mut r) => {
                r.set_user_agent(config.sip.user_agent.clone());
                tracing::info!(aor = %r.aor(), registrar = %r.registrar(), "registering");
                out.push(r);
            }
            Err(e) => tracing::error!(error = %e, "registration not started"),
        }
    }
    out
}

/// A thousand calls hold two sockets each: lift the soft open-files limit to the hard one.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-files limit");
    }
}

/// The media thread's options; it takes the watchdog over from `env`.
fn media_options(config: &Config, env: &mut Environment) -> media_shell::MediaOptions {
    media_shell::MediaOptions {
        symmetric_rtp: config.rtp.symmetric,
        rtp_timeout: config.calls.rtp_timeout,
        unreachable_timeout: config.calls.unreachable_timeout,
        realtime: config.rtp.realtime,
        threads: config.rtp.media_threads,
        rebalance: crate::rtp::balance::Rebalance::default(),
        watchdog: env.watchdog.take(),
        stall_after: env.stall_media_after,
    }
}
