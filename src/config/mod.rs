//! Configuration: the TOML config file (and an optional separate dialplan file) into typed,
//! validated structs, in the types the server hands on (e.g. `[access]` is the endpoint's
//! [`AccessPolicy`]).
//!
//! Owns parsing, defaults, validation and error messages. Every error names the file, the
//! line and column, and the key, e.g.
//! `/etc/mohd/mohd.toml:12:9: [rtp] ports: "20000-10000": the first port must not exceed the last`,
//! because the person reading it is editing that file. Unknown keys are errors, not warnings:
//! a misspelt key silently ignored is a setting silently not applied.
//!
//! Serde (with `deny_unknown_fields`, `raw`) does the shape; `doc` turns spans into
//! locations and keys and holds the range-checked getters; one module per table turns its raw
//! values into the typed section below:
//!
//! | table                              | module         |
//! |------------------------------------|----------------|
//! | `[sip]`, `[sip.tls]`, `[sip.auth]` | `sip`          |
//! | `[[registration]]`                 | `registration` |
//! | `[rtp]`                            | `rtp`          |
//! | `[calls]`                          | `calls`        |
//! | `[access]`                         | `access`       |
//! | `[channels.NAME]`                  | `channels`     |
//! | `[channels.NAME.multicast]`        | `multicast`    |
//! | `[dialplan]`, dialplan files       | `dialplan`     |
//! | `[lineout]`                        | `lineout`      |
//! | `[state]`                          | `state`        |
//! | `[web]`, `[web.tls]`               | `web`          |
//! | `[library]`                        | `library`      |
//! | paths (music, TLS PEM files)       | `paths`        |
//!
//! What is *not* checked here: that music files exist and decode. That needs the decoder, and
//! a server should start (with silence on that channel) even if a file is missing; `mohd check`
//! decodes every file and reports.

mod access;
mod calls;
mod channels;
mod dialplan;
mod doc;
mod library;
mod lineout;
mod multicast;
mod paths;
mod raw;
mod registration;
mod rtp;
mod schedule;
mod sip;
mod state;
mod web;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::channel::MusicSource;
use crate::channel::spec::{ChannelSpec, Music, Origin};
use crate::codec::Codec;
use crate::dialplan::Dialplan;
use crate::sip::endpoint::{AccessPolicy, Transport};
use crate::sip::register::RegistrationConfig;
use crate::sip::sdp::SrtpPolicy;
use crate::sip::shell::StreamLimits;

use self::doc::Doc;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// SIP listeners and identity.
    pub sip: SipConfig,
    /// RTP address and port range.
    pub rtp: RtpConfig,
    /// Channels by name (at least one).
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Request → channel. Every channel it names exists in `channels`.
    pub dialplan: Dialplan,
    /// Call limits and the watchdogs that end hung calls.
    pub calls: CallsConfig,
    /// `[access]`: who may send requests, and how fast.
    pub access: AccessPolicy,
    /// `[[registration]]`: PBXs to register with as an extension.
    pub registrations: Vec<RegistrationConfig>,
    /// `[lineout]`: the music on the sound card.
    pub lineout: LineoutConfig,
    /// `[state]`: where the library, settings, credentials and renders live.
    pub state: StateConfig,
    /// `[web]`: the admin page, REST API, metrics and health.
    pub web: WebConfig,
    /// `[library]`: follow a library published elsewhere (a fleet's publishing box or bucket).
    pub library: LibraryConfig,
    /// `[channels.NAME.multicast]`: channels streamed to multicast groups.
    pub multicast: Vec<MulticastConfig>,
    /// The file this came from; `None` for [`Config::embedded_default`].
    pub source: Option<PathBuf>,
}

/// `[calls]`: limits, and what ends a call whose peer went away without a BYE. Read in the
/// units the endpoint and the media thread take (`*_s = 0` in the file is `None`: off).
#[derive(Debug, Clone, PartialEq)]
pub struct CallsConfig {
    /// End calls after this long; `None`: no limit. Default 4 h.
    pub max_duration: Option<Duration>,
    /// End calls from which no RTP/RTCP came for this long; `None` (default): off, because
    /// many PBXs send nothing to a hold-music source.
    pub rtp_timeout: Option<Duration>,
    /// End calls whose RTP has been answered by ICMP port unreachable this long.
    pub unreachable_timeout: Duration,
    /// Refuse (503) new calls beyond this many.
    pub max_calls: usize,
    /// Smallest RFC 4028 session interval accepted (422 below it).
    pub min_session_expires: Duration,
    /// The share of each media thread's time calls may use; admission control refuses new
    /// calls beyond what fits (`rtp::admission`). Default 0.7.
    pub media_budget: f64,
    /// `min_idle_cpu` (percent, 0 or left out: off): admission control also keeps this share
    /// of the CPUs mohd may run on idle, counting every process's work (FreeSWITCH's
    /// `min-idle-cpu`); for a box shared with a PBX or other busy work.
    pub min_idle_cpu: Option<f64>,
    /// On SIGTERM or `mohd drain`: how long calls in progress may go on (no new ones are
    /// taken) before the rest are hung up and the process exits. Zero: hang up at once.
    pub drain_grace: Duration,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_duration: Some(Duration::from_secs(4 * 3600)),
            rtp_timeout: None,
            unreachable_timeout: Duration::from_secs(5),
            max_calls: 4096,
            min_session_expires: Duration::from_secs(90),
            media_budget: crate::rtp::admission::DEFAULT_MEDIA_BUDGET,
            min_idle_cpu: None,
            drain_grace: Duration::from_secs(300),
        }
    }
}

/// `[sip]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipConfig {
    /// Listeners (at least one): UDP, TCP and TLS may be mixed.
    pub listen: Vec<Listen>,
    /// Sent as `User-Agent` / `Server`.
    pub user_agent: String,
    /// Ring this long (180 Ringing) before answering; zero answers at once.
    pub answer_delay: Duration,
    /// `[sip.tls]`: the server certificate; present whenever a listener is TLS.
    pub tls: Option<TlsConfig>,
    /// `max_connections`, `max_message_bytes`, `idle_timeout_s`: caps on TCP and TLS
    /// connections.
    pub stream_limits: StreamLimits,
    /// `[sip.auth]`: digest credentials callers must present.
    pub auth: Option<SipAuthConfig>,
    /// `drop_user_agents`: lowercase substrings of scanners' User-Agents, dropped unanswered.
    pub drop_user_agents: Vec<String>,
}

/// `[sip.auth]`
#[derive(Clone, PartialEq, Eq)]
pub struct SipAuthConfig {
    pub realm: String,
    /// User name → password.
    pub users: BTreeMap<String, String>,
    /// Challenge INVITEs (401) until they carry valid credentials. Default true.
    pub invite: bool,
    /// `max_failures`, `window_s`, `ban_s`, `max_ban_s`, `on_ban`: the guessing limits.
    pub guard: crate::sip::guard::GuardConfig,
}

/// Without the passwords, so that a debug print of the config cannot leak them into a log.
impl fmt::Debug for SipAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipAuthConfig")
            .field("realm", &self.realm)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("invite", &self.invite)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec![Listen::udp(DEFAULT_SIP)],
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            answer_delay: Duration::ZERO,
            tls: None,
            stream_limits: StreamLimits::default(),
            auth: None,
            drop_user_agents: crate::sip::endpoint::SCANNER_USER_AGENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// One SIP listener, written `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Listen {
    pub fn udp(addr: SocketAddr) -> Listen {
        Listen {
            transport: Transport::Udp,
            addr,
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.transport.via_name().to_ascii_lowercase();
        write!(f, "{t}:{}", self.addr)
    }
}

/// `[sip.tls]`: PEM files, resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `client_ca`: clients must present a certificate issued by this bundle (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// `client_names`: and, when not empty, carrying one of these names (SAN DNS or CN).
    pub client_names: Vec<String>,
}

/// `[rtp]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpConfig {
    /// Source address for RTP and the address put in SDP; `None`: the local address the
    /// INVITE arrived on.
    pub address: Option<IpAddr>,
    /// First port, even: RTP uses even ports, RTCP the odd port above.
    pub port_min: u16,
    /// Last port; at least `port_min + 1`.
    pub port_max: u16,
    /// Send RTP to where the peer's RTP comes from (NAT), not only to its SDP address.
    pub symmetric: bool,
    /// Run the media threads with real-time priority when permitted.
    pub realtime: bool,
    /// `media_threads`: how many media threads share the calls (1..=64; default one per core
    /// the process may run on).
    pub media_threads: usize,
    /// `port_model`: one RTP/RTCP port pair per media thread that all its calls share
    /// (batched sends), or a pair per call (`rtp::io`, "The socket model").
    pub port_model: crate::rtp::io::PortModel,
    /// `codecs`: the codecs mohd accepts and offers, in its own order of preference (no
    /// duplicates, at least one). Only these are rendered.
    pub codecs: Vec<Codec>,
    /// `prefer_own_order`: an answer picks the first of `codecs` the offer lists, rather than
    /// the offer's first that mohd accepts (the default, RFC 3264 §6.1's custom).
    pub prefer_own_order: bool,
    /// `opus_bitrate`: what the Opus encoder sends, in bit/s.
    pub opus_bitrate: u32,
    /// `srtp`: SDES-keyed SRTP refused, accepted when offered, or demanded.
    pub srtp: SrtpPolicy,
    /// `srtp_over_plain_transports`: accept SDES keys from an INVITE that came over UDP or TCP
    /// (where anyone on the path reads them); by default only over TLS.
    pub srtp_over_plain_transports: bool,
    /// `dscp`: the DiffServ code point of every RTP/RTCP packet (unicast and multicast),
    /// 0..=63; default 46, Expedited Forwarding (`rtp::qos`). 0 leaves them best effort.
    pub dscp: u8,
}

/// `[rtp] codecs` when left out: wideband first, since the answer follows the offer's order
/// unless `prefer_own_order` is set.
pub const DEFAULT_CODECS: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

/// `[rtp] opus_bitrate` when left out: enough for mono music to sound like music.
pub const DEFAULT_OPUS_BITRATE: u32 = crate::codec::opus::DEFAULT_BITRATE;

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            address: None,
            port_min: 10000,
            port_max: 20000,
            symmetric: true,
            realtime: true,
            media_threads: crate::rtp::shell::default_media_threads(),
            port_model: crate::rtp::io::PortModel::default(),
            codecs: DEFAULT_CODECS.to_vec(),
            prefer_own_order: false,
            opus_bitrate: DEFAULT_OPUS_BITRATE,
            srtp: SrtpPolicy::OfferAnswer,
            srtp_over_plain_transports: false,
            dscp: crate::rtp::qos::DSCP_EF,
        }
    }
}

impl RtpConfig {
    /// How many RTP/RTCP port pairs the range holds, i.e. at most how many calls per address.
    pub fn port_pairs(&self) -> u32 {
        (u32::from(self.port_max) + 1).saturating_sub(u32::from(self.port_min)) / 2
    }
}

/// `[lineout]`: a channel's music on the sound card's line-out.
#[derive(Debug, Clone, PartialEq)]
pub struct LineoutConfig {
    pub enabled: LineoutEnabled,
    /// ALSA PCM name: `default`, `hw:1,0`, or one defined in an asoundrc.
    pub device: String,
    /// The channel it plays; exists in `channels`. Default: the dialplan's default channel,
    /// else the first channel.
    pub channel: String,
    /// Output level in dB, within [`crate::lineout::LEVEL_RANGE`]. Default 0.
    pub level_db: f64,
}

/// `[lineout] enabled`: `true`, `false` or `"auto"` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineoutEnabled {
    On,
    Off,
    /// On when the machine has a sound card that can play
    /// ([`crate::lineout::sound_card_present`]).
    Auto,
}

impl LineoutConfig {
    fn default_for(channel: &str) -> LineoutConfig {
        LineoutConfig {
            enabled: LineoutEnabled::Auto,
            device: "default".to_owned(),
            channel: channel.to_owned(),
            level_db: 0.0,
        }
    }
}

pub use crate::channel::spec::ChannelMode;
pub use multicast::{MulticastConfig, MulticastInterface, MulticastStep};

/// `[state]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// The state folder: `dir` in the file; else `$STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`); else `/var/lib/mohd` with a config file, `./mohd-data` without.
    pub dir: PathBuf,
}

/// `[library]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryConfig {
    /// `None`: this box's library is its own (uploads on its page). Set: the box follows the
    /// library published there and its own page shows it read-only.
    pub follow: Option<FollowConfig>,
}

/// `[library] follow = URL` and the keys that go with it.
#[derive(Clone, PartialEq, Eq)]
pub struct FollowConfig {
    /// The manifest's URL (`…/manifest.json`, or another mohd's
    /// `/api/library/export/manifest.json`).
    pub url: String,
    /// Sent as `Authorization: Bearer TOKEN` (another mohd's `mohd token new`).
    pub token: Option<String>,
    /// Mean time between polls; each wait is jittered ±20 %.
    pub interval: Duration,
    /// Trust only this CA (PEM) for HTTPS; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Without the token, so that a debug print of the config cannot leak it into a log.
impl fmt::Debug for FollowConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FollowConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("interval", &self.interval)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `[web]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Where the admin page and API listen; `None`: no web listener.
    pub listen: Option<SocketAddr>,
    /// `[web.tls]`: serve HTTPS with this certificate.
    pub tls: Option<TlsConfig>,
    /// `/metrics` without a token (for a Prometheus on a trusted network).
    pub metrics_public: bool,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
}

/// The default web listener: loopback only, so a fresh box is not administrable from the
/// network until someone chooses to open it.
pub const DEFAULT_WEB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_MAX_UPLOAD_MB: u64 = 200;

impl StateConfig {
    fn default_for(config_file: bool) -> StateConfig {
        let dir = match std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several folders separated by ':'; ours is the first.
            Some(v) if !v.is_empty() => PathBuf::from(
                v.to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ if config_file => PathBuf::from("/var/lib/mohd"),
            _ => PathBuf::from("mohd-data"),
        };
        StateConfig { dir }
    }
}

impl WebConfig {
    fn default_with(listen: Option<SocketAddr>) -> WebConfig {
        WebConfig {
            listen,
            tls: None,
            metrics_public: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_MB * 1024 * 1024,
        }
    }
}

/// `[channels.NAME]`
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// What to play. Paths are resolved against the config file's folder; folders are
    /// expanded by the channel module. For a library channel this is what plays while the
    /// library is empty (the demo melody).
    pub music: MusicSource,
    /// `music = "library"`: plays the library's enabled tracks in playlist order, managed
    /// from the web page and API.
    pub library: bool,
    /// How callers share the music.
    pub mode: ChannelMode,
    /// Integrated loudness target, in LUFS.
    pub loudness_lufs: f64,
    /// Everything the channel plays, as the rest of mohd takes it (`Origin::ConfigFile`):
    /// `music`, `library`, `mode` and `loudness_lufs` above are its main programme's music,
    /// mode and loudness, kept for the callers that read only those.
    pub spec: ChannelSpec,
}

impl ChannelConfig {
    /// A channel playing `music` (or the library's playlist, with `music` while it is
    /// empty), shared, at `loudness_lufs`.
    pub fn simple(name: &str, music: MusicSource, library: bool, loudness_lufs: f64) -> Self {
        let main = if library {
            Music::LibraryPlaylist
        } else {
            Music::Source(music.clone())
        };
        ChannelConfig {
            music,
            library,
            mode: ChannelMode::Shared,
            loudness_lufs,
            spec: ChannelSpec::simple(name, Origin::ConfigFile, main, loudness_lufs),
        }
    }
}

/// A configuration error, displayed as `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: PathBuf,
    location: Option<(usize, usize)>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    /// The file the error is in (the config file, or the dialplan file it names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 1-based line, if the error points into the file.
    pub fn line(&self) -> Option<usize> {
        self.location.map(|(l, _)| l)
    }

    /// 1-based column (in characters), if the error points into the file.
    pub fn column(&self) -> Option<usize> {
        self.location.map(|(_, c)| c)
    }

    /// The key, as written in TOML terms, e.g. `[rtp] ports` or `[[dialplan.route]] channel`.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

const DEFAULT_SIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5060);
const DEFAULT_USER_AGENT: &str = concat!("mohd/", env!("CARGO_PKG_VERSION"));
const DEFAULT_LOUDNESS: f64 = -18.0;

impl Config {
    /// Reads and validates the config file at `path` (and the dialplan file it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            location: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let config = Config::from_str(&text, path)?;
        tracing::debug!(path = %path.display(), channels = config.channels.len(), "config loaded");
        Ok(config)
    }

    /// Validates config text as if read from `origin`: errors name `origin`, and relative
    /// paths (music, dialplan file) resolve against its folder. Reads the dialplan file if
    /// one is named; does not touch music files.
    pub fn from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let doc = Doc { path: origin, text };
        let raw: raw::RawConfig = doc.deserialize()?;
        let base = origin.parent().unwrap_or(Path::new(""));

        // In the file's usual order, so that of two mistakes the first is reported.
        let sip = sip::sip_config(&doc, base, raw.sip)?;
        let rtp = rtp::rtp_config(&doc, raw.rtp)?;
        let calls = calls::calls_config(&doc, raw.calls)?;
        let access = access::access_config(&doc, raw.access)?;
        let registrations = registration::registrations_config(&doc, raw.registration)?;
        let multicast = multicast::multicast_config(&doc, raw.channels.as_ref(), &rtp)?;
        let channels = channels::channels_config(&doc, base, raw.channels)?;
        let dialplan = dialplan::dialplan_config(&doc, base, raw.dialplan, &channels)?;
        let lineout = lineout::lineout_config(&doc, raw.lineout, &channels, &dialplan)?;
        let state = state::state_config(&doc, base, raw.state)?;
        let web = web::web_config(&doc, base, raw.web)?;
        let library = library::library_config(&doc, base, raw.library)?;
        warn_unrouted_channels(origin, &channels, &dialplan);
        warn_srtp_unreachable(origin, &sip, &rtp);
        Ok(Config {
            sip,
            rtp,
            channels,
            dialplan,
            calls,
            access,
            registrations,
            lineout,
            state,
            web,
            library,
            multicast,
            source: Some(origin.to_owned()),
        })
    }

    /// The configuration used without a config file: SIP on udp 0.0.0.0:5060, RTP ports
    /// 10000-20000, and one channel `default` playing the built-in demo melody at -18 LUFS.
    pub fn embedded_default() -> Config {
        let mut channels = BTreeMap::new();
        channels.insert(
            "default".to_owned(),
            ChannelConfig::simple("default", MusicSource::Demo, true, DEFAULT_LOUDNESS),
        );
        Config {
            sip: SipConfig::default(),
            rtp: RtpConfig::default(),
            channels,
            dialplan: Dialplan::with_default("default"),
            calls: CallsConfig::default(),
            access: AccessPolicy::default(),
            registrations: Vec::new(),
            lineout: LineoutConfig::default_for("default"),
            state: StateConfig::default_for(false),
            web: WebConfig::default_with(Some(DEFAULT_WEB)),
            library: LibraryConfig::default(),
            multicast: Vec::new(),
            source: None,
        }
    }

    /// Every config file channel's description, by name.
    pub fn channel_specs(&self) -> impl Iterator<Item = &ChannelSpec> {
        self.channels.values().map(|c| &c.spec)
    }

    /// Command-line overrides: `sip` replaces every listen address; `music` (a file or a
    /// folder) replaces the music of every channel, so `--music` alone is enough to try mohd
    /// with one's own files.
    pub fn apply_overrides(&mut self, sip: Option<SocketAddr>, music: Option<PathBuf>) {
        if let Some(addr) = sip {
            self.sip.listen = vec![Listen::udp(addr)];
        }
        if let Some(path) = music {
            let music = MusicSource::Files(vec![path]);
            for channel in self.channels.values_mut() {
                channel.music = music.clone();
                channel.library = false;
                channel.spec.main.music = Music::Source(music.clone());
                for programme in channel.spec.programmes.values_mut() {
                    programme.music = Music::Source(music.clone());
                }
            }
        }
    }

    /// `--web IP:PORT|off` and `--state DIR`.
    pub fn apply_web_overrides(
        &mut self,
        web: Option<&str>,
        state: Option<PathBuf>,
    ) -> Result<(), OverrideError> {
        match web {
            None => {}
            Some("off") => self.web.listen = None,
            Some(addr) => {
                let parsed = addr.parse().map_err(|_| OverrideError::WebListen {
                    value: addr.to_owned(),
                })?;
                self.web.listen = Some(parsed);
            }
        }
        if let Some(dir) = state {
            self.state.dir = dir;
        }
        Ok(())
    }
}

/// A command-line override that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// `--web` is neither `IP:PORT` nor `off`.
    #[error("--web {value:?}: expected IP:PORT (e.g. 127.0.0.1:8080) or off")]
    WebListen { value: String },
}

/// A channel no route reaches is legal (the line-out or a later dialplan may use it) but
/// usually a mistake, so it is logged rather than refused.
fn warn_unrouted_channels(
    origin: &Path,
    channels: &BTreeMap<String, ChannelConfig>,
    dialplan: &Dialplan,
) {
    for name in channels.keys() {
        if !dialplan.channels().any(|c| c == name) {
            tracing::warn!(
                path = %origin.display(),
                channel = %name,
                "channel is defined but no route or default sends calls to it"
            );
        }
    }
}

/// `srtp = "required"` with keys taken only over TLS and no TLS listener refuses every call:
/// legal (a listener may be added later), but worth saying at start.
fn warn_srtp_unreachable(origin: &Path, sip: &SipConfig, rtp: &RtpConfig) {
    let tls = sip.listen.iter().any(|l| l.transport == Transport::Tls);
    if rtp.srtp == SrtpPolicy::Required && !rtp.srtp_over_plain_transports && !tls {
        tracing::warn!(
            path = %origin.display(),
            "[rtp] srtp = \"required\" takes SRTP keys only over TLS, and [sip] has no tls: \
             listener: every call will be refused (488)"
        );
    }
}

/// What every section's tests need: a file to load from, and its errors.
#[cfg(test)]
mod test_util {
    use std::path::Path;

    use super::{Config, ConfigError};

    pub(super) const MINIMAL: &str =
        "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n";

    pub(super) fn origin() -> &'static Path {
        Path::new("/etc/mohd/mohd.toml")
    }

    pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, origin())
    }

    pub(super) fn err(text: &str) -> ConfigError {
        match load(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{MINIMAL, load, origin};
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.sip.listen, vec![Listen::udp(DEFAULT_SIP)]);
        assert_eq!(c.sip.tls, None);
        assert_eq!(
            (
                c.sip.stream_limits.max_connections,
                c.sip.stream_limits.max_message_bytes,
                c.sip.stream_limits.idle_timeout
            ),
            (1024, 65_535, Duration::from_secs(300))
        );
        assert_eq!(
            c.sip.user_agent,
            format!("mohd/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(c.sip.answer_delay, Duration::ZERO);
        assert_eq!((c.rtp.port_min, c.rtp.port_max), (10000, 20000));
        assert_eq!(c.rtp.address, None);
        let ch = &c.channels["default"];
        assert!(matches!(ch.music, MusicSource::Demo));
        assert_eq!(ch.mode, ChannelMode::Shared);
        assert_eq!(ch.loudness_lufs, -18.0);
        assert_eq!(c.source.as_deref(), Some(origin()));
    }

    #[test]
    fn embedded_default_equals_the_minimal_file() {
        let mut parsed = load(
            "[web]\n[channels.default]\nmusic = \"library\"\n[dialplan]\ndefault = \"default\"\n",
        )
        .unwrap();
        parsed.source = None;
        // Without a config file the state folder is ./mohd-data, not beside a config.
        parsed.state = Config::embedded_default().state;
        assert_eq!(
            format!("{:?}", Config::embedded_default()),
            format!("{parsed:?}")
        );
    }

    #[test]
    fn overrides() {
        let mut c = load("[channels.a]\nmusic = \"demo\"\n[channels.b]\nmusic = \"x\"\n[dialplan]\ndefault = \"a\"\n").unwrap();
        let sip: SocketAddr = "127.0.0.1:5099".parse().unwrap();
        c.apply_overrides(Some(sip), Some(PathBuf::from("/tmp/song.flac")));
        assert_eq!(c.sip.listen, vec![Listen::udp(sip)]);
        for ch in c.channels.values() {
            assert!(
                matches!(&ch.music, MusicSource::Files(f) if f == &[PathBuf::from("/tmp/song.flac")])
            );
        }
        let song = Music::Source(MusicSource::Files(vec![PathBuf::from("/tmp/song.flac")]));
        assert!(c.channel_specs().all(|s| s.main.music == song));
        let before = format!("{c:?}");
        c.apply_overrides(None, None);
        assert_eq!(format!("{c:?}"), before);
    }

    #[test]
    fn web_and_state_overrides() {
        let mut c = Config::embedded_default();
        let e = c.apply_web_overrides(Some("8080"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--web \"8080\": expected IP:PORT (e.g. 127.0.0.1:8080) or off"
        );
        assert_eq!(c.web.listen, Some(DEFAULT_WEB));
        c.apply_web_overrides(Some("127.0.0.1:9"), Some(PathBuf::from("/tmp/s")))
            .unwrap();
        assert_eq!(c.web.listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(c.state.dir, PathBuf::from("/tmp/s"));
        c.apply_web_overrides(Some("off"), None).unwrap();
        assert_eq!(c.web.listen, None);
    }
}
