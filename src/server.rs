//! Wiring only: renders the channels, starts the media thread and the SIP shell, connects SIP
//! call events to the call router (`rtp::router`), and shuts everything down in order.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::channel::cache::RenderCache;
use crate::channel::programme::{self, Programmes, Renders};
use crate::clock::MediaClock;
use crate::config::{Config, LineoutEnabled, Listen};
use crate::control::{CallMetrics, Control, ControlParts, LibraryUnavailable, LiveRenders};
use crate::library::{Library, Settings};
use crate::lineout::{self, LineoutHandle, LineoutOptions};
use crate::rtp::router::CallRouter;
use crate::rtp::shell::{self as media_shell, MediaHandle};
use crate::sip::endpoint::{CallId, EndReason, Endpoint, EndpointConfig};
use crate::sip::shell as sip_shell;
use crate::web::WebHandle;
use crate::web::auth::AuthStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for SIP on {listen}: {source}")]
    Bind {
        listen: Listen,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] sip_shell::TlsSetupError),
    #[error("cannot start the media thread: {0}")]
    Media(std::io::Error),
    #[error("rendering a channel failed: {0}")]
    Render(String),
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
}

impl Running {
    /// Hang up every call (BYE), let the BYEs out, stop the media thread.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.sip_task.await;
        if let Some(web) = self.web {
            web.stopped().await;
        }
        let media = self.media;
        let _ = tokio::task::spawn_blocking(move || media.shutdown()).await;
        let lineout = self.lineout.lock().ok().and_then(|mut l| l.take());
        if let Some(lineout) = lineout {
            let _ = tokio::task::spawn_blocking(move || lineout.stop()).await;
        }
    }
}

/// The state folder's library and render cache. A library that cannot be opened (permissions,
/// a read-only disk) does not stop the music: its channels play the demo melody and
/// `/healthz` says why.
fn open_state(config: &Config) -> (Result<Library, LibraryUnavailable>, Option<RenderCache>) {
    let dir = &config.state.dir;
    if let Err(source) = std::fs::create_dir_all(dir) {
        let e = LibraryUnavailable::StateFolder {
            dir: dir.clone(),
            source,
        };
        tracing::error!("{e}");
        return (Err(e), None);
    }
    let cache_dir = dir.join("cache");
    let cache = match std::fs::create_dir_all(&cache_dir) {
        Ok(()) => Some(RenderCache::new(cache_dir)),
        Err(e) => {
            tracing::warn!(error = %e, "render cache disabled");
            None
        }
    };
    let library = Library::open(dir).map_err(|source| {
        let e = LibraryUnavailable::Open {
            dir: dir.clone(),
            source,
        };
        tracing::error!(error = %e, "music library unavailable");
        e
    });
    (library, cache)
}

/// Render, bind and start serving. Returns once SIP is listening.
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    raise_fd_limit();
    let (library, cache) = open_state(config);
    let programmes = programme::programmes(config, library.as_ref().ok());
    let settings = library
        .as_ref()
        .map(|l| l.settings().clone())
        .unwrap_or_default();
    // The line-out prepares its first track while the channels render (on its own thread, one
    // track only), so it plays within a second of start whatever the playlist's length.
    let lineout = start_lineout(config, &programmes, &settings, cache.clone());
    // Fast start: with every loop in the cache, serve from the first 30 s of each (a 480 kB
    // read) and load the rest behind it, so SIP answers with music within milliseconds of a
    // power-up whatever the playlist's length.
    if let Some(heads) = cache
        .as_ref()
        .and_then(|c| programme::load_heads(&programmes, c))
    {
        let running = start_with(config, heads, lineout, library, cache).await?;
        running.control.complete_startup_renders(programmes);
        return Ok(running);
    }
    let channels = programme::obtain_renders(&programmes, cache.as_ref())
        .await
        .map_err(|e| ServerError::Render(e.to_string()))?;
    let running = start_with(config, channels, lineout, library, cache).await?;
    let control = Arc::clone(&running.control);
    tokio::task::spawn_blocking(move || control.retain_cache());
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

async fn start_with(
    config: &Config,
    channels: Renders,
    lineout: Option<LineoutHandle>,
    library: Result<Library, LibraryUnavailable>,
    cache: Option<RenderCache>,
) -> Result<Running, ServerError> {
    let clock = MediaClock::new(Instant::now());
    let (media_events_tx, mut media_events) = tokio::sync::mpsc::unbounded_channel();
    let media = media_shell::spawn(
        clock,
        rand::random(),
        media_options(config),
        Some(media_events_tx),
    )
    .map_err(ServerError::Media)?;
    // The media thread reports peers that vanished; the SIP side hangs them up.
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

    let (listeners, sip_listeners) = bind_sip(config).await?;
    let limits = config.sip.stream_limits;

    let endpoint =
        Endpoint::new(
            EndpointConfig {
                user_agent: config.sip.user_agent.clone(),
                answer_delay: config.sip.answer_delay,
                max_call_duration: config.calls.max_duration,
                min_session_expires: config.calls.min_session_expires,
                max_calls: config.calls.max_calls,
                access: config.access.clone(),
                auth: config.sip.auth.as_ref().filter(|a| a.invite).map(|a| {
                    crate::sip::digest::VerifierConfig::new(a.realm.clone(), a.users.clone())
                }),
                ..EndpointConfig::default()
            },
            config.dialplan.clone(),
            rand::random(),
        );

    let renders: LiveRenders = Arc::new(RwLock::new(channels));
    let call_metrics = Arc::new(CallMetrics::default());
    let sip_status = Arc::new(Mutex::new(sip_shell::SipStatus::default()));
    let (unavailable_tx, unavailable_rx) = watch::channel(None);
    let lineout = Arc::new(Mutex::new(lineout));
    let control = Control::start(ControlParts {
        config: config.clone(),
        clock,
        renders: Arc::clone(&renders),
        library,
        cache,
        media: media.sender(),
        media_stats: media.stats.clone(),
        lineout: Arc::clone(&lineout),
        sip_status: Arc::clone(&sip_status),
        call_metrics: Arc::clone(&call_metrics),
        unavailable: unavailable_tx,
    });

    let mut router = CallRouter::new(
        renders,
        call_metrics,
        config.rtp.address,
        (config.rtp.port_min, config.rtp.port_max),
        media.sender(),
    );
    let registrations = sip_shell::Registrations::new(registrations(config));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let web = start_web(config, &control, shutdown_rx.clone()).await;
    let sip_task = tokio::spawn(async move {
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
            shutdown_rx,
            hangup_rx,
            registrations,
            sip_status,
            unavailable_rx,
        )
        .await;
    });
    Ok(Running {
        sip_listeners,
        media_stats: media.stats.clone(),
        control,
        web,
        shutdown: shutdown_tx,
        sip_task,
        media,
        lineout,
    })
}

/// The web listener. Failing to bind it is logged, not fatal: the music matters more than
/// the admin page, and a box that plays can be fixed remotely later.
async fn start_web(
    config: &Config,
    control: &Arc<Control>,
    shutdown: watch::Receiver<bool>,
) -> Option<WebHandle> {
    let listen = config.web.listen?;
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
    let web_config = crate::web::WebConfig {
        listen,
        tls: config
            .web
            .tls
            .as_ref()
            .map(|t| (t.certificate.clone(), t.key.clone())),
        metrics_public: config.web.metrics_public,
        max_upload_bytes: config.web.max_upload_bytes,
    };
    let backend: Arc<dyn crate::web::backend::Backend> = control.clone();
    match crate::web::serve(web_config, backend, auth, shutdown).await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, %listen, "web admin not started");
            None
        }
    }
}

/// `mohd serve`: run until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let running = start(&config).await?;
    for listen in &running.sip_listeners {
        // A stable line on stdout for scripts and tests that start mohd on port 0.
        println!("mohd: SIP listening on {listen}");
    }
    crate::notify::ready();
    if let Some(web) = &running.web {
        let scheme = if web.https { "https" } else { "http" };
        println!("mohd: web listening on {scheme}://{}", web.addr);
    }
    shutdown.await;
    tracing::info!("shutting down: hanging up calls");
    crate::notify::stopping();
    running.stop().await;
    Ok(())
}

/// Binds every configured SIP listener (the TLS certificate is loaded once, for all).
async fn bind_sip(config: &Config) -> Result<(Vec<sip_shell::Listener>, Vec<Listen>), ServerError> {
    use crate::sip::endpoint::Transport;
    let tls = match &config.sip.tls {
        Some(t)
            if config
                .sip
                .listen
                .iter()
                .any(|l| l.transport == Transport::Tls) =>
        {
            Some(sip_shell::tls_acceptor(&t.certificate, &t.key)?)
        }
        _ => None,
    };
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
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
                let acceptor = tls.clone().ok_or_else(|| {
                    err(std::io::Error::other("no [sip.tls] certificate configured"))
                })?;
                sip_shell::Listener::Stream(
                    sip_shell::bind_stream(listen.addr, Some(acceptor))
                        .await
                        .map_err(err)?,
                )
            }
        };
        let listen = Listen {
            transport: listen.transport,
            addr: l.bound(),
        };
        tracing::info!(listen = %listen, "SIP listening");
        bound.push(listen);
        listeners.push(l);
    }
    Ok((listeners, bound))
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

fn media_options(config: &Config) -> media_shell::MediaOptions {
    media_shell::MediaOptions {
        symmetric_rtp: config.rtp.symmetric,
        rtp_timeout: config.calls.rtp_timeout,
        unreachable_timeout: config.calls.unreachable_timeout,
        realtime: config.rtp.realtime,
        watchdog: crate::notify::Watchdog::from_env(),
        stall_after: crate::notify::test_stall_media_after(),
    }
}
