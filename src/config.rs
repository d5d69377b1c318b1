//! Configuration: the TOML config file (and an optional separate dialplan file) into typed,
//! validated structs.
//!
//! Owns parsing, defaults, validation and error messages. Every error names the file, the
//! line and column, and the key, e.g.
//! `/etc/mohd/mohd.toml:12:9: [rtp] ports: "20000-10000": the first port must not exceed the last`,
//! because the person reading it is editing that file. Unknown keys are errors, not warnings:
//! a misspelt key silently ignored is a setting silently not applied.
//!
//! Serde (with `deny_unknown_fields`) does the shape; `Spanned` keeps where each value was
//! written so the checks after it can point at it. Serde errors carry a byte span but not the
//! key, so `key_at` finds the key by walking the parsed document to that span.
//!
//! What is *not* checked here: that music files exist and decode. That needs the decoder, and
//! a server should start (with silence on that channel) even if a file is missing; `mohd check`
//! decodes every file and reports.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::channel::MusicSource;
use crate::dialplan::{Cidr, Dialplan, Pattern, Route};
use crate::sip::endpoint::Transport;
use crate::sip::register::RegistrationConfig;

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
    /// Who may send requests, and how fast.
    pub access: AccessConfig,
    /// `[[registration]]`: PBXs to register with as an extension.
    pub registrations: Vec<RegistrationConfig>,
    /// `[lineout]`: the music on the sound card.
    pub lineout: LineoutConfig,
    /// `[state]`: where the library, settings, credentials and renders live.
    pub state: StateConfig,
    /// `[web]`: the admin page, REST API, metrics and health.
    pub web: WebConfig,
    /// The file this came from; `None` for [`Config::embedded_default`].
    pub source: Option<PathBuf>,
}

/// `[calls]`: limits, and what ends a call whose peer went away without a BYE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsConfig {
    /// End calls after this many seconds; 0: no limit. Default 4 h.
    pub max_duration_s: u64,
    /// End calls from which no RTP/RTCP came for this many seconds; 0 (default): off, because
    /// many PBXs send nothing to a hold-music source.
    pub rtp_timeout_s: u64,
    /// End calls whose RTP has been answered by ICMP port unreachable this long.
    pub unreachable_timeout_s: u64,
    /// Refuse (503) new calls beyond this many.
    pub max_calls: u64,
    /// Smallest RFC 4028 session interval accepted (422 below it).
    pub min_session_expires_s: u64,
}

/// `[access]`
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    /// Source networks allowed to send SIP; empty: everyone.
    pub allow: Vec<crate::dialplan::Cidr>,
    /// `true` ("reject"): answer others 403; `false` ("drop"): ignore them.
    pub reject_denied: bool,
    /// Datagrams per second per source address (0: unlimited), and the burst above it.
    pub rate_per_source: u32,
    pub burst: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        let p = crate::sip::endpoint::AccessPolicy::default();
        AccessConfig {
            allow: p.allow,
            reject_denied: p.reject_denied,
            rate_per_source: p.rate_per_source,
            burst: p.burst,
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_duration_s: 4 * 3600,
            rtp_timeout_s: 0,
            unreachable_timeout_s: 5,
            max_calls: 4096,
            min_session_expires_s: 90,
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
    /// Ring this long (180 Ringing) before answering; 0 answers at once.
    pub answer_delay_ms: u64,
    /// `[sip.tls]`: the server certificate; present whenever a listener is TLS.
    pub tls: Option<TlsConfig>,
    /// Open TCP and TLS connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest SIP message (headers and body) accepted over TCP or TLS; larger closes the
    /// connection.
    pub max_message_bytes: usize,
    /// TCP and TLS connections that carry no traffic and no call for this long are closed.
    pub idle_timeout_s: u64,
    /// `[sip.auth]`: digest credentials callers must present.
    pub auth: Option<SipAuthConfig>,
}

/// `[sip.auth]`
#[derive(Clone, PartialEq, Eq)]
pub struct SipAuthConfig {
    pub realm: String,
    /// User name → password.
    pub users: BTreeMap<String, String>,
    /// Challenge INVITEs (401) until they carry valid credentials. Default true.
    pub invite: bool,
}

/// Without the passwords, so that a debug print of the config cannot leak them into a log.
impl fmt::Debug for SipAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipAuthConfig")
            .field("realm", &self.realm)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec![Listen::udp(DEFAULT_SIP)],
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            answer_delay_ms: 0,
            tls: None,
            max_connections: 1024,
            max_message_bytes: 65_535,
            idle_timeout_s: 300,
            auth: None,
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
    /// Run the media thread with real-time priority when permitted.
    pub realtime: bool,
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

/// How callers on one channel share the music.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    /// Every caller hears the same position, like a radio.
    Shared,
}

impl fmt::Display for ChannelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelMode::Shared => f.write_str("shared"),
        }
    }
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// The state folder: `dir` in the file; else `$STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`); else `/var/lib/mohd` with a config file, `./mohd-data` without.
    pub dir: PathBuf,
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
/// Longer than the INVITE client transaction's Timer B (64 × T1 = 32 s), the PBX would give
/// up before we answer; 30 s leaves margin.
const MAX_ANSWER_DELAY_MS: u64 = 30_000;
const DEFAULT_PORTS: (u16, u16) = (10000, 20000);
const DEFAULT_LOUDNESS: f64 = -18.0;
const LOUDNESS_RANGE: std::ops::RangeInclusive<f64> = -40.0..=-5.0;
/// Below 1024 needs privileges and collides with well-known services.
const PORT_FLOOR: u16 = 1024;
/// `music = "demo"` means the built-in melody; `"./demo"` is a file called demo.
const DEMO: &str = "demo";
/// `music = "library"`: the uploaded library in the state folder.
const LIBRARY: &str = "library";

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
        let raw: RawConfig = doc.deserialize()?;
        let base = origin.parent().unwrap_or(Path::new(""));

        let sip = sip_config(&doc, base, raw.sip)?;
        let rtp = rtp_config(&doc, raw.rtp)?;
        let calls = calls_config(&doc, raw.calls)?;
        let access = access_config(&doc, raw.access)?;
        let registrations = registrations_config(&doc, raw.registration)?;
        let channels = channels_config(&doc, base, raw.channels)?;
        let dialplan = dialplan_config(&doc, base, raw.dialplan, &channels)?;
        let lineout = lineout_config(&doc, raw.lineout, &channels, &dialplan)?;
        let state = state_config(&doc, base, raw.state)?;
        let web = web_config(&doc, base, raw.web)?;

        for name in channels.keys() {
            if !dialplan.channels().any(|c| c == name) {
                tracing::warn!(
                    path = %origin.display(),
                    channel = %name,
                    "channel is defined but no route or default sends calls to it"
                );
            }
        }
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
            source: Some(origin.to_owned()),
        })
    }

    /// The configuration used without a config file: SIP on udp 0.0.0.0:5060, RTP ports
    /// 10000-20000, and one channel `default` playing the built-in demo melody at -18 LUFS.
    pub fn embedded_default() -> Config {
        let mut channels = BTreeMap::new();
        channels.insert(
            "default".to_owned(),
            ChannelConfig {
                music: MusicSource::Demo,
                library: true,
                mode: ChannelMode::Shared,
                loudness_lufs: DEFAULT_LOUDNESS,
            },
        );
        Config {
            sip: SipConfig::default(),
            rtp: RtpConfig {
                address: None,
                port_min: DEFAULT_PORTS.0,
                port_max: DEFAULT_PORTS.1,
                symmetric: true,
                realtime: true,
            },
            channels,
            dialplan: Dialplan::with_default("default"),
            calls: CallsConfig::default(),
            access: AccessConfig::default(),
            registrations: Vec::new(),
            lineout: LineoutConfig::default_for("default"),
            state: StateConfig::default_for(false),
            web: WebConfig::default_with(Some(DEFAULT_WEB)),
            source: None,
        }
    }

    /// Command-line overrides: `sip` replaces every listen address; `music` (a file or a
    /// folder) replaces the music of every channel, so `--music` alone is enough to try mohd
    /// with one's own files.
    pub fn apply_overrides(&mut self, sip: Option<SocketAddr>, music: Option<PathBuf>) {
        if let Some(addr) = sip {
            self.sip.listen = vec![Listen::udp(addr)];
        }
        if let Some(path) = music {
            for channel in self.channels.values_mut() {
                channel.music = MusicSource::Files(vec![path.clone()]);
                channel.library = false;
            }
        }
    }

    /// `--web IP:PORT|off` and `--state DIR`.
    pub fn apply_web_overrides(
        &mut self,
        web: Option<&str>,
        state: Option<PathBuf>,
    ) -> Result<(), String> {
        match web {
            None => {}
            Some("off") => self.web.listen = None,
            Some(addr) => {
                self.web.listen = Some(addr.parse().map_err(|_| {
                    format!("--web {addr:?}: expected IP:PORT (e.g. 127.0.0.1:8080) or off")
                })?)
            }
        }
        if let Some(dir) = state {
            self.state.dir = dir;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file's shape, as serde sees it. Everything optional has a default applied below, so a
// config can be as short as one channel.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sip: Option<Spanned<RawSip>>,
    rtp: Option<Spanned<RawRtp>>,
    channels: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawChannel>>>>,
    dialplan: Option<Spanned<RawDialplan>>,
    calls: Option<Spanned<RawCalls>>,
    access: Option<Spanned<RawAccess>>,
    #[serde(default)]
    registration: Vec<Spanned<RawRegistration>>,
    lineout: Option<Spanned<RawLineout>>,
    state: Option<Spanned<RawState>>,
    web: Option<Spanned<RawWeb>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    metrics_public: Option<Spanned<bool>>,
    max_upload_mb: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLineout {
    enabled: Option<Spanned<BoolOrAuto>>,
    device: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    level_db: Option<Spanned<f64>>,
}

/// `true`, `false` or `"auto"`.
struct BoolOrAuto(LineoutEnabled);

impl<'de> Deserialize<'de> for BoolOrAuto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrAuto;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolOrAuto, E> {
                Ok(BoolOrAuto(if v {
                    LineoutEnabled::On
                } else {
                    LineoutEnabled::Off
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BoolOrAuto, E> {
                if v == "auto" {
                    Ok(BoolOrAuto(LineoutEnabled::Auto))
                } else {
                    Err(E::custom(format!(
                        "{v:?}: expected true, false or \"auto\" (on when a sound card exists)"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allow: Option<Spanned<OneOrMany>>,
    action: Option<Spanned<String>>,
    rate_per_source: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    max_duration_s: Option<Spanned<i64>>,
    rtp_timeout_s: Option<Spanned<i64>>,
    unreachable_timeout_s: Option<Spanned<i64>>,
    max_calls: Option<Spanned<i64>>,
    min_session_expires_s: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Option<Spanned<OneOrMany>>,
    user_agent: Option<Spanned<String>>,
    answer_delay_ms: Option<Spanned<i64>>,
    tls: Option<Spanned<RawTls>>,
    max_connections: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    idle_timeout_s: Option<Spanned<i64>>,
    auth: Option<Spanned<RawSipAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtp {
    address: Option<Spanned<String>>,
    ports: Option<Spanned<String>>,
    symmetric: Option<Spanned<bool>>,
    realtime: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    music: Spanned<OneOrMany>,
    mode: Option<Spanned<String>>,
    loudness_lufs: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDialplan {
    file: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

/// A separate dialplan file: the same keys as `[dialplan]`, at the top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDialplanFile {
    default: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    user: Option<Spanned<String>>,
    to_user: Option<Spanned<String>>,
    from_user: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    channel: Spanned<String>,
}

/// `key = "x"` or `key = ["a", "b"]` (music, listen). Hand-written because
/// `#[serde(untagged)]` would replace both types' errors with "data did not match any variant".
enum OneOrMany {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Locations and keys.

/// One file being read: its name for messages and its text for line numbers.
struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    fn err(&self, span: Option<Range<usize>>, key: Key, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| self.toml_err(&e))
    }

    fn toml_err(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let mut message = e.message().to_owned();
        let mut key = span.as_ref().and_then(|s| {
            let doc = DeTable::parse(self.text).ok()?;
            key_at(doc.get_ref(), &mut Vec::new(), s.start)
        });
        // Serde speaks of fields; a TOML file has keys.
        for (from, to) in [
            ("unknown field", "unknown key"),
            ("missing field", "missing key"),
        ] {
            if let Some(rest) = message.strip_prefix(from) {
                message = format!("{to}{}", rest.replacen(", expected", "; expected", 1));
            }
        }
        // Syntax errors have no parsed document to find a key in; a duplicate key's span
        // is the key itself.
        if key.is_none()
            && message == "duplicate key"
            && let Some(text) = span.clone().and_then(|s| self.text.get(s))
        {
            key = Some(Key::leaf_only(text));
        }
        ConfigError {
            path: self.path.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            key: key.map(|k| k.to_string()),
            message,
        }
    }

    /// `path:line`, for describing where a route came from.
    fn origin(&self, offset: usize) -> String {
        format!("{}:{}", self.path.display(), line_col(self.text, offset).0)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// A key as a person would find it in the file: `[table.sub] key`, `[[array.of.tables]] key`,
/// `[table]` or a top-level `key`.
#[derive(Debug, Clone, Default)]
struct Key {
    tables: Vec<String>,
    array: bool,
    leaf: Option<String>,
}

impl Key {
    fn table(tables: &[&str]) -> Key {
        Key {
            tables: tables.iter().map(|s| (*s).to_owned()).collect(),
            array: false,
            leaf: None,
        }
    }

    fn array(tables: &[&str]) -> Key {
        Key {
            array: true,
            ..Key::table(tables)
        }
    }

    fn leaf_only(leaf: &str) -> Key {
        Key {
            leaf: Some(leaf.to_owned()),
            ..Key::default()
        }
    }

    fn leaf(mut self, leaf: &str) -> Key {
        self.leaf = Some(leaf.to_owned());
        self
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.tables.is_empty() {
            let path: Vec<String> = self.tables.iter().map(|t| toml_key(t)).collect();
            let path = path.join(".");
            if self.array {
                write!(f, "[[{path}]]")?;
            } else {
                write!(f, "[{path}]")?;
            }
            if self.leaf.is_some() {
                f.write_str(" ")?;
            }
        }
        if let Some(leaf) = &self.leaf {
            f.write_str(&toml_key(leaf))?;
        }
        Ok(())
    }
}

/// A key as TOML would need it written: bare if it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_owned() } else { format!("{k:?}") }
}

enum Seg {
    Table(String),
    ArrayElem(String),
}

fn key_from(path: &[Seg], leaf: Option<&str>) -> Key {
    let tables = path
        .iter()
        .map(|s| match s {
            Seg::Table(t) | Seg::ArrayElem(t) => t.clone(),
        })
        .collect();
    Key {
        tables,
        array: matches!(path.last(), Some(Seg::ArrayElem(_))),
        leaf: leaf.map(str::to_owned),
    }
}

fn covers(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// The key whose name or value covers byte `pos`. A table's span is only its `[header]`
/// (its keys can be anywhere in the file), so every table is searched, deepest match first.
fn key_at(table: &DeTable, path: &mut Vec<Seg>, pos: usize) -> Option<Key> {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let is_table = matches!(v.get_ref(), DeValue::Table(_));
        if covers(&k.span(), pos) {
            return Some(if is_table {
                path.push(Seg::Table(name.to_owned()));
                let key = key_from(path, None);
                path.pop();
                key
            } else {
                key_from(path, Some(name))
            });
        }
        match v.get_ref() {
            DeValue::Table(sub) => {
                path.push(Seg::Table(name.to_owned()));
                let found = key_at(sub, path, pos)
                    .or_else(|| covers(&v.span(), pos).then(|| key_from(path, None)));
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(sub) = item.get_ref() {
                        path.push(Seg::ArrayElem(name.to_owned()));
                        let found = key_at(sub, path, pos)
                            .or_else(|| covers(&item.span(), pos).then(|| key_from(path, None)));
                        path.pop();
                        if found.is_some() {
                            return found;
                        }
                    }
                }
                if covers(&v.span(), pos) {
                    return Some(key_from(path, Some(name)));
                }
            }
            _ => {
                if covers(&v.span(), pos) {
                    return Some(key_from(path, Some(name)));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Raw → typed, one section at a time.

fn sip_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawSip>>,
) -> Result<SipConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(SipConfig::default());
    };
    let defaults = SipConfig::default();
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["sip"]).leaf(leaf);

    let mut tls_listener = None;
    let listen = match raw.listen {
        None => defaults.listen.clone(),
        Some(list) => {
            let span = list.span();
            let items = match list.into_inner() {
                OneOrMany::One(s) => vec![Spanned::new(span.clone(), s)],
                OneOrMany::List(items) => items,
            };
            let mut out: Vec<Listen> = Vec::new();
            for item in items {
                let addr = parse_listen(item.get_ref())
                    .map_err(|m| doc.err(Some(item.span()), key("listen"), value_msg(&item, &m)))?;
                if addr.transport == Transport::Tls {
                    tls_listener.get_or_insert(item.span());
                }
                if out.contains(&addr) {
                    return Err(doc.err(
                        Some(item.span()),
                        key("listen"),
                        value_msg(&item, "listed twice"),
                    ));
                }
                out.push(addr);
            }
            if out.is_empty() {
                return Err(doc.err(
                    Some(span),
                    key("listen"),
                    "at least one address is needed, e.g. [\"udp:0.0.0.0:5060\"]",
                ));
            }
            out
        }
    };
    let user_agent = match raw.user_agent {
        None => DEFAULT_USER_AGENT.to_owned(),
        Some(ua) => {
            if ua.get_ref().trim().is_empty() {
                return Err(doc.err(Some(ua.span()), key("user_agent"), "must not be empty"));
            }
            // It goes into a SIP header verbatim: a CR or LF would start a new header.
            if ua.get_ref().chars().any(char::is_control) {
                return Err(doc.err(
                    Some(ua.span()),
                    key("user_agent"),
                    "must not contain control characters (it is sent as a SIP header)",
                ));
            }
            ua.into_inner()
        }
    };
    let answer_delay_ms = match raw.answer_delay_ms {
        None => 0,
        Some(d) => u64::try_from(*d.get_ref())
            .ok()
            .filter(|ms| *ms <= MAX_ANSWER_DELAY_MS)
            .ok_or_else(|| {
                doc.err(
                    Some(d.span()),
                    key("answer_delay_ms"),
                    format!(
                        "{}: must be within 0..={MAX_ANSWER_DELAY_MS} ms (a PBX gives up \
                         after about 32 s)",
                        d.get_ref()
                    ),
                )
            })?,
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(tls_config(doc, base, t, &["sip", "tls"])?),
    };
    if let (Some(span), None) = (tls_listener, &tls) {
        return Err(doc.err(
            Some(span),
            key("listen"),
            "a tls listener needs [sip.tls] with certificate = \"cert.pem\" and key = \"key.pem\"",
        ));
    }
    let int = |v: Option<Spanned<i64>>,
               name: &'static str,
               default: u64,
               range: std::ops::RangeInclusive<u64>,
               hint: &str|
     -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    doc.err(
                        Some(v.span()),
                        key(name),
                        format!(
                            "{}: must be within {}..={}{hint}",
                            v.get_ref(),
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    };
    let max_connections = int(
        raw.max_connections,
        "max_connections",
        defaults.max_connections as u64,
        1..=1_000_000,
        "",
    )? as usize;
    let max_message_bytes = int(
        raw.max_message_bytes,
        "max_message_bytes",
        defaults.max_message_bytes as u64,
        // Below 1 KiB not even an INVITE with SDP fits; above 65535 the parser refuses anyway.
        1024..=65_535,
        "",
    )? as usize;
    let idle_timeout_s = int(
        raw.idle_timeout_s,
        "idle_timeout_s",
        defaults.idle_timeout_s,
        1..=86_400,
        "",
    )?;
    let auth = match raw.auth {
        None => None,
        Some(a) => Some(sip_auth_config(doc, a)?),
    };
    Ok(SipConfig {
        listen,
        user_agent,
        answer_delay_ms,
        tls,
        max_connections,
        max_message_bytes,
        idle_timeout_s,
        auth,
    })
}

/// `"udp:IP:PORT"`, `"tcp:IP:PORT"` or `"tls:IP:PORT"`; IPv6 in brackets.
fn parse_listen(s: &str) -> Result<Listen, String> {
    const EXPECTED: &str = "expected \"udp:IP:PORT\", \"tcp:IP:PORT\" or \"tls:IP:PORT\", \
                            e.g. \"udp:0.0.0.0:5060\" or \"tls:[::]:5061\"";
    let Some((scheme, rest)) = s.split_once(':') else {
        return Err(EXPECTED.to_owned());
    };
    let transport = match scheme.to_ascii_lowercase().as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        "ws" | "wss" => return Err(format!("{scheme} is not supported: udp, tcp or tls")),
        _ if s.parse::<SocketAddr>().is_ok() => {
            return Err(format!("the transport is missing: write \"udp:{s}\""));
        }
        _ => return Err(EXPECTED.to_owned()),
    };
    match rest.parse() {
        Ok(addr) => Ok(Listen { transport, addr }),
        Err(_) => Err(format!(
            "{rest:?} is not IP:PORT (a numeric address; IPv6 in brackets, \"[::]:5060\")"
        )),
    }
}

fn rtp_config(doc: &Doc, raw: Option<Spanned<RawRtp>>) -> Result<RtpConfig, ConfigError> {
    let raw = match raw {
        Some(r) => r.into_inner(),
        None => RawRtp {
            address: None,
            ports: None,
            symmetric: None,
            realtime: None,
        },
    };
    let key = |leaf| Key::table(&["rtp"]).leaf(leaf);
    let address = match raw.address {
        None => None,
        Some(a) => Some(
            parse_rtp_address(a.get_ref())
                .map_err(|m| doc.err(Some(a.span()), key("address"), value_msg(&a, &m)))?,
        ),
    };
    let (port_min, port_max) = match raw.ports {
        None => DEFAULT_PORTS,
        Some(p) => parse_ports(p.get_ref())
            .map_err(|m| doc.err(Some(p.span()), key("ports"), value_msg(&p, &m)))?,
    };
    Ok(RtpConfig {
        address,
        port_min,
        port_max,
        symmetric: raw.symmetric.map(|b| b.into_inner()).unwrap_or(true),
        realtime: raw.realtime.map(|b| b.into_inner()).unwrap_or(true),
    })
}

fn access_config(doc: &Doc, raw: Option<Spanned<RawAccess>>) -> Result<AccessConfig, ConfigError> {
    let defaults = AccessConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["access"]).leaf(leaf);
    let mut allow = Vec::new();
    if let Some(list) = raw.allow {
        let span = list.span();
        let items = match list.into_inner() {
            OneOrMany::One(s) => vec![Spanned::new(span, s)],
            OneOrMany::List(items) => items,
        };
        for item in items {
            let net = crate::dialplan::Cidr::parse(item.get_ref()).map_err(|e| {
                doc.err(
                    Some(item.span()),
                    key("allow"),
                    value_msg(&item, &e.to_string()),
                )
            })?;
            allow.push(net);
        }
    }
    let reject_denied = match raw.action {
        None => defaults.reject_denied,
        Some(a) => match a.get_ref().as_str() {
            "reject" => true,
            "drop" => false,
            _ => {
                return Err(doc.err(
                    Some(a.span()),
                    key("action"),
                    value_msg(&a, "expected \"reject\" (answer 403) or \"drop\""),
                ));
            }
        },
    };
    let count = |v: Option<Spanned<i64>>, name: &'static str, default: u32| match v {
        None => Ok(default),
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| {
                doc.err(
                    Some(v.span()),
                    key(name),
                    format!("{}: must be within 0..=1000000 (0: unlimited)", v.get_ref()),
                )
            }),
    };
    Ok(AccessConfig {
        allow,
        reject_denied,
        rate_per_source: count(
            raw.rate_per_source,
            "rate_per_source",
            defaults.rate_per_source,
        )?,
        burst: count(raw.burst, "burst", defaults.burst)?,
    })
}

fn calls_config(doc: &Doc, raw: Option<Spanned<RawCalls>>) -> Result<CallsConfig, ConfigError> {
    let defaults = CallsConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["calls"]).leaf(leaf);
    let int = |v: Option<Spanned<i64>>,
               name: &'static str,
               default: u64,
               range: std::ops::RangeInclusive<u64>,
               hint: &str|
     -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    doc.err(
                        Some(v.span()),
                        key(name),
                        format!(
                            "{}: must be within {}..={}{hint}",
                            v.get_ref(),
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    };
    Ok(CallsConfig {
        max_duration_s: int(
            raw.max_duration_s,
            "max_duration_s",
            defaults.max_duration_s,
            0..=30 * 86_400,
            " (0: no limit)",
        )?,
        rtp_timeout_s: int(
            raw.rtp_timeout_s,
            "rtp_timeout_s",
            defaults.rtp_timeout_s,
            0..=86_400,
            " (0: off)",
        )?,
        unreachable_timeout_s: int(
            raw.unreachable_timeout_s,
            "unreachable_timeout_s",
            defaults.unreachable_timeout_s,
            1..=3600,
            "",
        )?,
        max_calls: int(
            raw.max_calls,
            "max_calls",
            defaults.max_calls,
            1..=100_000,
            "",
        )?,
        min_session_expires_s: int(
            raw.min_session_expires_s,
            "min_session_expires_s",
            defaults.min_session_expires_s,
            // RFC 4028 asks for at least 90; smaller values are for tests.
            1..=86_400,
            "",
        )?,
    })
}

fn parse_rtp_address(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    let ip: IpAddr = bare
        .parse()
        .map_err(|_| "not an IP address (host names are not resolved here)".to_owned())?;
    if ip.is_unspecified() {
        return Err(
            "callers cannot send to an unspecified address; leave `address` out to use \
                    the address each INVITE arrived on"
                .to_owned(),
        );
    }
    if ip.is_multicast() {
        return Err("must be a unicast address of this host".to_owned());
    }
    Ok(ip)
}

/// `"FIRST-LAST"`: an even first port (RTP even, RTCP odd above) and room for one pair.
fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    const EXPECTED: &str = "expected \"FIRST-LAST\", e.g. \"10000-20000\"";
    let (a, b) = s.split_once('-').ok_or(EXPECTED)?;
    let num = |t: &str| {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EXPECTED.to_owned());
        }
        // Parsed wide so that 70000 gets the range message, not a number-format one.
        t.parse::<u64>().map_err(|_| EXPECTED.to_owned())
    };
    let (first, last) = (num(a)?, num(b)?);
    let valid = u64::from(PORT_FLOOR)..=u64::from(u16::MAX);
    if !valid.contains(&first) || !valid.contains(&last) {
        return Err(format!("ports must be within {PORT_FLOOR}..=65535"));
    }
    if first > last {
        return Err("the first port must not exceed the last".to_owned());
    }
    if first % 2 != 0 {
        return Err(
            "the first port must be even (RTP uses even ports, RTCP the odd port above)".to_owned(),
        );
    }
    if last < first + 1 {
        return Err("the range must hold at least 2 ports (one RTP/RTCP pair)".to_owned());
    }
    // In range 1024..=65535 by the check above.
    let narrow = |p: u64| u16::try_from(p).map_err(|_| EXPECTED.to_owned());
    Ok((narrow(first)?, narrow(last)?))
}

type RawChannels = Spanned<BTreeMap<Spanned<String>, Spanned<RawChannel>>>;

fn channels_config(
    doc: &Doc,
    base: &Path,
    raw: Option<RawChannels>,
) -> Result<BTreeMap<String, ChannelConfig>, ConfigError> {
    const HINT: &str = "no channel is defined; add one, e.g. [channels.default] with \
                        music = \"/var/lib/mohd/music\" (or \"demo\")";
    let Some(raw) = raw else {
        return Err(doc.err(None, Key::table(&["channels"]), HINT));
    };
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.is_empty() {
        return Err(doc.err(Some(span), Key::table(&["channels"]), HINT));
    }
    let mut out = BTreeMap::new();
    for (name, ch) in raw {
        let name_str = name.get_ref().as_str();
        let key = |leaf: Option<&str>| {
            let k = Key::table(&["channels", name_str]);
            match leaf {
                Some(l) => k.leaf(l),
                None => k,
            }
        };
        if !valid_channel_name(name_str) {
            return Err(doc.err(
                Some(name.span()),
                key(None),
                "a channel name is 1 to 64 letters, digits, '-' or '_' \
                 (it appears in logs and URLs)",
            ));
        }
        let ch = ch.into_inner();
        let library = matches!(ch.music.get_ref(), OneOrMany::One(s) if s == LIBRARY);
        let music = if library {
            MusicSource::Demo
        } else {
            music_source(doc, base, ch.music, &|| key(Some("music")))?
        };
        let mode = match ch.mode {
            None => ChannelMode::Shared,
            Some(m) => match m.get_ref().as_str() {
                "shared" => ChannelMode::Shared,
                "from-start" => {
                    return Err(doc.err(
                        Some(m.span()),
                        key(Some("mode")),
                        value_msg(&m, "not supported yet: only \"shared\" for now"),
                    ));
                }
                _ => {
                    return Err(doc.err(
                        Some(m.span()),
                        key(Some("mode")),
                        value_msg(&m, "unknown mode; expected \"shared\""),
                    ));
                }
            },
        };
        let loudness_lufs = match ch.loudness_lufs {
            None => DEFAULT_LOUDNESS,
            Some(l) => {
                let v = *l.get_ref();
                // `contains` is false for NaN, so `nan` is rejected too.
                if !LOUDNESS_RANGE.contains(&v) {
                    return Err(doc.err(
                        Some(l.span()),
                        key(Some("loudness_lufs")),
                        format!(
                            "{v}: must be within {:.1}..={:.1} LUFS",
                            LOUDNESS_RANGE.start(),
                            LOUDNESS_RANGE.end()
                        ),
                    ));
                }
                v
            }
        };
        out.insert(
            name.into_inner(),
            ChannelConfig {
                music,
                library,
                mode,
                loudness_lufs,
            },
        );
    }
    Ok(out)
}

fn valid_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn music_source(
    doc: &Doc,
    base: &Path,
    raw: Spanned<OneOrMany>,
    key: &dyn Fn() -> Key,
) -> Result<MusicSource, ConfigError> {
    let span = raw.span();
    match raw.into_inner() {
        OneOrMany::One(s) if s == DEMO => Ok(MusicSource::Demo),
        OneOrMany::One(s) => {
            let p = music_path(base, &s)
                .map_err(|m| doc.err(Some(span), key(), format!("{s:?}: {m}")))?;
            Ok(MusicSource::Files(vec![p]))
        }
        OneOrMany::List(items) => {
            if items.is_empty() {
                return Err(doc.err(
                    Some(span),
                    key(),
                    "the list is empty; name at least one file or folder",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if item.get_ref() == DEMO {
                    return Err(doc.err(
                        Some(item.span()),
                        key(),
                        "\"demo\" (the built-in melody) cannot be mixed with files; \
                         write \"./demo\" for a file called demo",
                    ));
                }
                let p = music_path(base, item.get_ref())
                    .map_err(|m| doc.err(Some(item.span()), key(), value_msg(&item, &m)))?;
                out.push(p);
            }
            Ok(MusicSource::Files(out))
        }
    }
}

/// `[sip.tls]` or `[web.tls]`: both PEM paths, resolved against the config's folder.
fn tls_config(
    doc: &Doc,
    base: &Path,
    raw: Spanned<RawTls>,
    table: &[&str],
) -> Result<TlsConfig, ConfigError> {
    let span = raw.span();
    let t = raw.into_inner();
    let tls_key = |leaf| Key::table(table).leaf(leaf);
    let path = |v: Option<Spanned<String>>, leaf: &'static str, what: &str| match v {
        None => Err(doc.err(
            Some(span.clone()),
            tls_key(leaf),
            format!("missing: the PEM file with {what}"),
        )),
        Some(p) if p.get_ref().trim().is_empty() => {
            Err(doc.err(Some(p.span()), tls_key(leaf), "must not be empty"))
        }
        Some(p) => Ok(base.join(p.get_ref())),
    };
    Ok(TlsConfig {
        certificate: path(t.certificate, "certificate", "the certificate chain")?,
        key: path(t.key, "key", "the private key")?,
    })
}

fn state_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawState>>,
) -> Result<StateConfig, ConfigError> {
    let Some(dir) = raw.and_then(|r| r.into_inner().dir) else {
        return Ok(StateConfig::default_for(true));
    };
    let dir = music_path(base, dir.get_ref()).map_err(|m| {
        doc.err(
            Some(dir.span()),
            Key::table(&["state"]).leaf("dir"),
            value_msg(&dir, &m),
        )
    })?;
    Ok(StateConfig { dir })
}

fn web_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawWeb>>,
) -> Result<WebConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(WebConfig::default_with(None));
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["web"]).leaf(leaf);
    let listen = match raw.listen {
        None => Some(DEFAULT_WEB),
        Some(l) if l.get_ref() == "off" || l.get_ref().is_empty() => None,
        Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
            doc.err(
                Some(l.span()),
                key("listen"),
                value_msg(&l, "expected IP:PORT, e.g. \"0.0.0.0:8080\", or \"off\""),
            )
        })?),
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(tls_config(doc, base, t, &["web", "tls"])?),
    };
    let max_upload_bytes = match raw.max_upload_mb {
        None => DEFAULT_MAX_UPLOAD_MB * 1024 * 1024,
        Some(m) => match u64::try_from(*m.get_ref()) {
            Ok(mb @ 1..=4096) => mb * 1024 * 1024,
            _ => {
                return Err(doc.err(
                    Some(m.span()),
                    key("max_upload_mb"),
                    format!("{}: must be within 1..=4096 MiB", m.get_ref()),
                ));
            }
        },
    };
    Ok(WebConfig {
        listen,
        tls,
        metrics_public: raw.metrics_public.map(|b| b.into_inner()).unwrap_or(false),
        max_upload_bytes,
    })
}

fn music_path(base: &Path, s: &str) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("the path is empty".to_owned());
    }
    if s == "~" || s.starts_with("~/") {
        return Err("'~' is not expanded; write the full path".to_owned());
    }
    Ok(base.join(s))
}

fn dialplan_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawDialplan>>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Dialplan, ConfigError> {
    let header = raw.as_ref().map(Spanned::span);
    // One channel and no [dialplan] at all: every call goes to it (what anyone would mean).
    if raw.is_none()
        && channels.len() == 1
        && let Some(only) = channels.keys().next()
    {
        return Ok(Dialplan::with_default(only.clone()));
    }
    let raw = match raw {
        Some(r) => r.into_inner(),
        None => RawDialplan {
            file: None,
            default: None,
            route: Vec::new(),
        },
    };
    let dialplan = match raw.file {
        Some(file) => {
            if raw.default.is_some() || !raw.route.is_empty() {
                return Err(doc.err(
                    Some(file.span()),
                    Key::table(&["dialplan"]).leaf("file"),
                    "set either `file` or inline `default` and [[dialplan.route]], not both",
                ));
            }
            let path = base.join(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                doc.err(
                    Some(file.span()),
                    Key::table(&["dialplan"]).leaf("file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let fdoc = Doc {
                path: &path,
                text: &text,
            };
            let raw: RawDialplanFile = fdoc.deserialize()?;
            build_dialplan(&fdoc, &[], raw.default, raw.route, channels)?
        }
        None => build_dialplan(doc, &["dialplan"], raw.default, raw.route, channels)?,
    };
    if dialplan.routes().is_empty() && dialplan.default_channel().is_none() {
        let first = channels.keys().next().map_or("default", String::as_str);
        return Err(doc.err(
            header,
            Key::table(&["dialplan"]),
            format!(
                "no route and no default channel: every call would get 404; \
                 add e.g. default = {first:?}"
            ),
        ));
    }
    Ok(dialplan)
}

/// `prefix` is where the dialplan keys live: `["dialplan"]` inline, `[]` in a dialplan file.
fn build_dialplan(
    doc: &Doc,
    prefix: &[&str],
    default: Option<Spanned<String>>,
    routes: Vec<Spanned<RawRoute>>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Dialplan, ConfigError> {
    let mut route_tables = prefix.to_vec();
    route_tables.push("route");
    let route_key = |leaf: Option<&str>| {
        let k = Key::array(&route_tables);
        match leaf {
            Some(l) => k.leaf(l),
            None => k,
        }
    };
    let check_channel = |name: &Spanned<String>, key: Key| {
        if channels.contains_key(name.get_ref()) {
            return Ok(());
        }
        let defined: Vec<&str> = channels.keys().map(String::as_str).collect();
        Err(doc.err(
            Some(name.span()),
            key,
            value_msg(
                name,
                &format!("no such channel; defined: {}", defined.join(", ")),
            ),
        ))
    };

    let mut out = Vec::with_capacity(routes.len());
    let mut catch_all_at: Option<String> = None;
    for raw in routes {
        let header = raw.span();
        let raw = raw.into_inner();
        check_channel(&raw.channel, route_key(Some("channel")))?;
        let origin = doc.origin(header.start);
        let mut route = Route::new(raw.channel.get_ref().as_str()).origin(origin.clone());
        let pattern = |p: &Spanned<String>, leaf: &str| {
            Pattern::parse(p.get_ref()).map_err(|e| {
                doc.err(
                    Some(p.span()),
                    route_key(Some(leaf)),
                    value_msg(p, &e.to_string()),
                )
            })
        };
        if let Some(p) = &raw.user {
            route = route.user(pattern(p, "user")?);
        }
        if let Some(p) = &raw.to_user {
            route = route.to_user(pattern(p, "to_user")?);
        }
        if let Some(p) = &raw.from_user {
            route = route.from_user(pattern(p, "from_user")?);
        }
        if let Some(c) = &raw.source {
            let cidr = Cidr::parse(c.get_ref()).map_err(|e| {
                doc.err(
                    Some(c.span()),
                    route_key(Some("source")),
                    value_msg(c, &e.to_string()),
                )
            })?;
            route = route.source(cidr);
        }
        if route.is_catch_all() {
            return Err(doc.err(
                Some(header),
                route_key(None),
                "a route needs at least one of user, to_user, from_user, source \
                 (user = \"*\" catches every call)",
            ));
        }
        if let Some(at) = &catch_all_at {
            tracing::warn!(route = %origin, earlier = %at,
                "route is never used: an earlier route matches every user");
        }
        let only_star_user = raw
            .user
            .as_ref()
            .is_some_and(|u| u.get_ref().chars().all(|c| c == '*'))
            && raw.to_user.is_none()
            && raw.from_user.is_none()
            && raw.source.is_none();
        if only_star_user && catch_all_at.is_none() {
            catch_all_at = Some(origin);
        }
        out.push(route);
    }
    if let Some(d) = &default {
        check_channel(d, Key::table(prefix).leaf("default"))?;
    }
    Ok(Dialplan::new(out, default.map(Spanned::into_inner)))
}

// ---------------------------------------------------------------------------------------------
// Registration and digest authentication: `[[registration]]` and `[sip.auth]`.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    registrar: Spanned<String>,
    user: Spanned<String>,
    auth_user: Option<Spanned<String>>,
    password: Spanned<String>,
    domain: Option<Spanned<String>>,
    realm: Option<Spanned<String>>,
    expires: Option<Spanned<i64>>,
    contact_user: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSipAuth {
    realm: Spanned<String>,
    users: Spanned<RawUsers>,
    invite: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password: Spanned<String>,
}

/// `users = { name = "password" }` or `users = [{ name = "…", password = "…" }]`. Hand-written
/// for the same reason as `OneOrMany`.
enum RawUsers {
    Table(Vec<(Spanned<String>, Spanned<String>)>),
    List(Vec<Spanned<RawUser>>),
}

impl<'de> Deserialize<'de> for RawUsers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUsers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of name = \"password\", or a list of { name, password }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawUsers, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(RawUsers::Table(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawUsers, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(RawUsers::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

const DEFAULT_REGISTER_EXPIRES: u64 = 300;
/// Below this a registrar refuses (423) or the refreshes flood it; above a day a dead mohd
/// stays bound for too long.
const REGISTER_EXPIRES_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

/// A value that goes into a SIP header or URI: not empty, no control characters.
fn header_safe(v: &Spanned<String>, what: &str) -> Result<(), String> {
    if v.get_ref().trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if v.get_ref().chars().any(char::is_control) {
        return Err(format!(
            "{what} must not contain control characters (it is sent in a SIP header)"
        ));
    }
    Ok(())
}

/// A user part of a SIP URI as we write it unescaped.
fn uri_user(v: &Spanned<String>) -> Result<(), String> {
    header_safe(v, "a user name")?;
    let s = v.get_ref();
    if s.contains('@') {
        return Err("write the user without \"@domain\" (set `domain` for the domain)".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b))
    {
        return Err("a SIP user part is letters, digits and -_.!~*'()&=+$,;?/%".into());
    }
    Ok(())
}

fn registrations_config(
    doc: &Doc,
    raw: Vec<Spanned<RawRegistration>>,
) -> Result<Vec<RegistrationConfig>, ConfigError> {
    let key = |leaf: &str| Key::array(&["registration"]).leaf(leaf);
    let check = |v: &Spanned<String>, leaf: &str, r: Result<(), String>| {
        r.map_err(|m| doc.err(Some(v.span()), key(leaf), value_msg(v, &m)))
    };
    let mut out: Vec<RegistrationConfig> = Vec::new();
    for entry in raw {
        let r = entry.into_inner();
        let uri = crate::sip::msg::SipUri::parse(r.registrar.get_ref());
        let registrar_err = match &uri {
            None => Some(format!(
                "not a SIP URI; write e.g. \"sip:{}\"",
                r.registrar.get_ref().trim()
            )),
            Some(u) if u.user.is_some() => Some(
                "the registrar URI names the server, not a user: write \"sip:HOST[:PORT]\" \
                 and set `user`"
                    .into(),
            ),
            Some(_) => None,
        };
        if let Some(m) = registrar_err {
            return Err(doc.err(
                Some(r.registrar.span()),
                key("registrar"),
                value_msg(&r.registrar, &m),
            ));
        }
        let sips = uri.as_ref().is_some_and(|u| u.scheme == "sips");
        check(&r.user, "user", uri_user(&r.user))?;
        if let Some(u) = &r.auth_user {
            check(u, "auth_user", header_safe(u, "auth_user"))?;
        }
        if let Some(u) = &r.contact_user {
            check(u, "contact_user", uri_user(u))?;
        }
        if r.password.get_ref().is_empty() {
            return Err(doc.err(
                Some(r.password.span()),
                key("password"),
                "must not be empty",
            ));
        }
        if let Some(d) = &r.domain {
            let ok = crate::sip::msg::SipUri::parse(&format!("sip:{}", d.get_ref()))
                .is_some_and(|u| u.port.is_none() && u.params.is_empty());
            if !ok {
                return Err(doc.err(
                    Some(d.span()),
                    key("domain"),
                    value_msg(d, "not a domain or IP address"),
                ));
            }
        }
        if let Some(realm) = &r.realm {
            check(realm, "realm", header_safe(realm, "realm"))?;
        }
        let expires = match &r.expires {
            None => DEFAULT_REGISTER_EXPIRES,
            Some(e) => u64::try_from(*e.get_ref())
                .ok()
                .filter(|s| REGISTER_EXPIRES_RANGE.contains(s))
                .ok_or_else(|| {
                    doc.err(
                        Some(e.span()),
                        key("expires"),
                        format!(
                            "{}: must be within {}..={} seconds",
                            e.get_ref(),
                            REGISTER_EXPIRES_RANGE.start(),
                            REGISTER_EXPIRES_RANGE.end()
                        ),
                    )
                })?,
        };
        // TCP and TLS need the shell's connections; until registration is wired to them,
        // refuse rather than silently send over UDP.
        let transport = match &r.transport {
            None => Transport::Udp,
            Some(t) => match t.get_ref().to_ascii_lowercase().as_str() {
                "udp" => Transport::Udp,
                "tcp" | "tls" => {
                    return Err(doc.err(
                        Some(t.span()),
                        key("transport"),
                        value_msg(t, "not supported for registration yet: only \"udp\""),
                    ));
                }
                _ => {
                    return Err(doc.err(
                        Some(t.span()),
                        key("transport"),
                        value_msg(t, "expected \"udp\""),
                    ));
                }
            },
        };
        if sips {
            return Err(doc.err(
                Some(r.registrar.span()),
                key("registrar"),
                value_msg(
                    &r.registrar,
                    "sips: (TLS) is not supported for registration yet",
                ),
            ));
        }
        let config = RegistrationConfig {
            registrar: r.registrar.get_ref().trim().to_owned(),
            user: r.user.get_ref().clone(),
            auth_user: r.auth_user.map(Spanned::into_inner),
            password: r.password.get_ref().clone(),
            domain: r.domain.map(Spanned::into_inner),
            realm: r.realm.map(Spanned::into_inner),
            expires: std::time::Duration::from_secs(expires),
            contact_user: r.contact_user.map(Spanned::into_inner),
            transport,
        };
        if out
            .iter()
            .any(|o| o.registrar == config.registrar && o.user == config.user)
        {
            return Err(doc.err(
                Some(r.user.span()),
                key("user"),
                value_msg(&r.user, "registered twice with the same registrar"),
            ));
        }
        out.push(config);
    }
    Ok(out)
}

fn sip_auth_config(doc: &Doc, raw: Spanned<RawSipAuth>) -> Result<SipAuthConfig, ConfigError> {
    let raw = raw.into_inner();
    let key = |leaf: &str| Key::table(&["sip", "auth"]).leaf(leaf);
    header_safe(&raw.realm, "realm").map_err(|m| {
        doc.err(
            Some(raw.realm.span()),
            key("realm"),
            value_msg(&raw.realm, &m),
        )
    })?;
    let users_span = raw.users.span();
    let pairs: Vec<(Spanned<String>, Spanned<String>)> = match raw.users.into_inner() {
        RawUsers::Table(pairs) => pairs,
        RawUsers::List(items) => items
            .into_iter()
            .map(|u| {
                let u = u.into_inner();
                (u.name, u.password)
            })
            .collect(),
    };
    let mut users = BTreeMap::new();
    for (name, password) in pairs {
        header_safe(&name, "a user name")
            .map_err(|m| doc.err(Some(name.span()), key("users"), value_msg(&name, &m)))?;
        if password.get_ref().is_empty() {
            return Err(doc.err(
                Some(password.span()),
                key("users"),
                format!("{:?}: the password must not be empty", name.get_ref()),
            ));
        }
        if users
            .insert(name.get_ref().clone(), password.into_inner())
            .is_some()
        {
            return Err(doc.err(
                Some(name.span()),
                key("users"),
                value_msg(&name, "listed twice"),
            ));
        }
    }
    if users.is_empty() {
        return Err(doc.err(
            Some(users_span),
            key("users"),
            "no user: add e.g. users = { pbx = \"a long secret\" }",
        ));
    }
    Ok(SipAuthConfig {
        realm: raw.realm.into_inner(),
        users,
        invite: raw.invite.map(Spanned::into_inner).unwrap_or(true),
    })
}

fn lineout_config(
    doc: &Doc,
    raw: Option<Spanned<RawLineout>>,
    channels: &BTreeMap<String, ChannelConfig>,
    dialplan: &Dialplan,
) -> Result<LineoutConfig, ConfigError> {
    let default_channel = dialplan
        .default_channel()
        .filter(|c| channels.contains_key(*c))
        .or_else(|| channels.keys().next().map(String::as_str))
        .unwrap_or("default");
    let mut out = LineoutConfig::default_for(default_channel);
    let Some(raw) = raw else {
        return Ok(out);
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["lineout"]).leaf(leaf);
    if let Some(e) = raw.enabled {
        out.enabled = e.into_inner().0;
    }
    if let Some(d) = raw.device {
        if d.get_ref().trim().is_empty() {
            return Err(doc.err(
                Some(d.span()),
                key("device"),
                "must not be empty; \"default\", \"hw:1,0\" or a name from `mohd devices`",
            ));
        }
        if d.get_ref().chars().any(char::is_control) {
            return Err(doc.err(
                Some(d.span()),
                key("device"),
                value_msg(&d, "must not contain control characters"),
            ));
        }
        out.device = d.into_inner();
    }
    if let Some(c) = raw.channel {
        if !channels.contains_key(c.get_ref()) {
            let defined: Vec<&str> = channels.keys().map(String::as_str).collect();
            return Err(doc.err(
                Some(c.span()),
                key("channel"),
                value_msg(
                    &c,
                    &format!("no such channel; defined: {}", defined.join(", ")),
                ),
            ));
        }
        out.channel = c.into_inner();
    }
    if let Some(l) = raw.level_db {
        let v = *l.get_ref();
        let range = crate::lineout::LEVEL_RANGE;
        // `contains` is false for NaN, so `nan` is rejected too.
        if !range.contains(&v) {
            return Err(doc.err(
                Some(l.span()),
                key("level_db"),
                format!(
                    "{v}: must be within {:.1}..={:.1} dB (for a louder line-out raise the \
                     channel's loudness_lufs, which goes through the limiter)",
                    range.start(),
                    range.end()
                ),
            ));
        }
        out.level_db = v;
    }
    Ok(out)
}

/// `"value": reason`, the shape of every bad-value message.
fn value_msg(v: &Spanned<String>, reason: &str) -> String {
    format!("{:?}: {reason}", v.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("/etc/mohd/mohd.toml")
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, origin())
    }

    fn err(text: &str) -> ConfigError {
        match load(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    const MINIMAL: &str =
        "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n";

    #[test]
    fn state_web_and_library_channels() {
        let c = load(
            "[state]\ndir = \"state\"\n[web]\nlisten = \"0.0.0.0:8443\"\nmetrics_public = true\nmax_upload_mb = 50\n[web.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n[channels.default]\nmusic = \"library\"\n[dialplan]\ndefault = \"default\"\n",
        )
        .unwrap();
        assert!(c.state.dir.ends_with("state") && c.state.dir.is_absolute());
        assert_eq!(c.web.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert!(c.web.metrics_public);
        assert_eq!(c.web.max_upload_bytes, 50 * 1024 * 1024);
        assert!(c.web.tls.is_some());
        assert!(c.channels["default"].library);
        // No [web]: no web listener; "off" too.
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.web.listen, None);
        assert!(!c.channels["default"].library);
        let c = load(&format!("[web]\nlisten = \"off\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.web.listen, None);
        let e = err(&format!("[web]\nlisten = \"8080\"\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[web] listen"));
        assert_eq!(e.line(), Some(2));
        let e = err(&format!("[web]\nmax_upload_mb = 0\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[web] max_upload_mb"));
        let e = err(&format!("[state]\ndirr = \"x\"\n{MINIMAL}"));
        assert!(e.message().contains("dirr"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.sip.listen, vec![Listen::udp(DEFAULT_SIP)]);
        assert_eq!(c.sip.tls, None);
        assert_eq!(
            (
                c.sip.max_connections,
                c.sip.max_message_bytes,
                c.sip.idle_timeout_s
            ),
            (1024, 65_535, 300)
        );
        assert_eq!(
            c.sip.user_agent,
            format!("mohd/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(c.sip.answer_delay_ms, 0);
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
    fn lineout_section() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.lineout.enabled, LineoutEnabled::Auto);
        assert_eq!(c.lineout.device, "default");
        assert_eq!(c.lineout.channel, "default");
        assert_eq!(c.lineout.level_db, 0.0);
        let text = "[channels.a]\nmusic = \"demo\"\n[channels.b]\nmusic = \"demo\"\n\
                    [dialplan]\ndefault = \"b\"\n";
        assert_eq!(load(text).unwrap().lineout.channel, "b");
        let c = load(&format!(
            "{text}[lineout]\nenabled = true\ndevice = \"hw:1,0\"\nchannel = \"a\"\n\
             level_db = -6.5\n"
        ))
        .unwrap();
        assert_eq!(
            c.lineout,
            LineoutConfig {
                enabled: LineoutEnabled::On,
                device: "hw:1,0".into(),
                channel: "a".into(),
                level_db: -6.5,
            }
        );
        for (v, want) in [
            ("false", LineoutEnabled::Off),
            ("\"auto\"", LineoutEnabled::Auto),
        ] {
            let c = load(&format!("{MINIMAL}[lineout]\nenabled = {v}\n")).unwrap();
            assert_eq!(c.lineout.enabled, want);
        }
        // Errors name the line and key.
        let e = err(&format!("{MINIMAL}[lineout]\nchannel = \"nope\"\n"));
        assert_eq!((e.line(), e.key()), (Some(6), Some("[lineout] channel")));
        assert!(e.message().contains("no such channel"), "{e}");
        let e = err(&format!("{MINIMAL}[lineout]\n\nlevel_db = 3.0\n"));
        assert_eq!((e.line(), e.key()), (Some(7), Some("[lineout] level_db")));
        assert!(e.message().contains("loudness_lufs"), "{e}");
        let e = err(&format!("{MINIMAL}[lineout]\nlevel_db = nan\n"));
        assert_eq!(e.key(), Some("[lineout] level_db"));
        let e = err(&format!("{MINIMAL}[lineout]\nenabled = \"yes\"\n"));
        assert_eq!((e.line(), e.key()), (Some(6), Some("[lineout] enabled")));
        assert!(e.message().contains("\"auto\""), "{e}");
        let e = err(&format!("{MINIMAL}[lineout]\ndevice = \" \"\n"));
        assert_eq!(e.key(), Some("[lineout] device"));
        let e = err(&format!("{MINIMAL}[lineout]\nvolume = 1\n"));
        assert_eq!(e.key(), Some("[lineout] volume"));
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let e = err(&format!("# comment\nlisten = 1\n{MINIMAL}"));
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.key(), Some("listen"));
        assert!(e.message().starts_with("unknown key `listen`"), "{e}");
        // The same line after [dialplan] belongs to that table.
        let e = err(&format!("{MINIMAL}listen = 1\n"));
        assert_eq!((e.key(), e.line()), (Some("[dialplan] listen"), Some(5)));
    }

    #[test]
    fn unknown_table_is_named_as_a_table() {
        let e = err(&format!("{MINIMAL}[webby]\nport = 1\n"));
        assert_eq!(e.line(), Some(5));
        assert_eq!(e.key(), Some("[webby]"));
    }

    #[test]
    fn unknown_nested_key_names_its_table() {
        let e = err(
            "[channels.jazz]\nmusic = \"demo\"\nloudness = -20\n[dialplan]\ndefault = \"jazz\"\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:3:1: [channels.jazz] loudness: unknown key `loudness`; expected one of `music`, `mode`, `loudness_lufs`"
        );
    }

    #[test]
    fn type_error_names_key() {
        let e = err("[rtp]\nports = 10000\n");
        assert_eq!(e.key(), Some("[rtp] ports"));
        assert_eq!((e.line(), e.column()), (Some(2), Some(9)));
        assert!(e.message().contains("expected a string"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_location() {
        let e = err("[sip\n");
        assert_eq!(e.line(), Some(1));
        let e = err(&format!("{MINIMAL}[dialplan]\n"));
        assert_eq!(e.line(), Some(5));
        assert_eq!(e.key(), Some("dialplan"));
        assert_eq!(e.message(), "duplicate key");
    }

    #[test]
    fn ports_errors() {
        let cases = [
            ("abc", "expected \"FIRST-LAST\""),
            ("10000", "expected \"FIRST-LAST\""),
            ("20000-10000", "the first port must not exceed the last"),
            ("10001-20000", "the first port must be even"),
            ("10000-10000", "at least 2 ports"),
            ("80-1000", "within 1024..=65535"),
            ("10000-70000", "within 1024..=65535"),
            ("-5-10", "expected \"FIRST-LAST\""),
        ];
        for (ports, want) in cases {
            let e = err(&format!("{MINIMAL}[rtp]\nports = \"{ports}\"\n"));
            assert_eq!(e.key(), Some("[rtp] ports"), "{ports}");
            assert_eq!((e.line(), e.column()), (Some(6), Some(9)), "{ports}");
            assert!(e.message().starts_with(&format!("{ports:?}: ")), "{e}");
            assert!(e.message().contains(want), "{ports}: {e}");
        }
        let c = load(&format!("{MINIMAL}[rtp]\nports = \"10000-10001\"\n")).unwrap();
        assert_eq!(c.rtp.port_pairs(), 1);
        let c = load(&format!("{MINIMAL}[rtp]\nports = \" 1024 - 65535 \"\n")).unwrap();
        assert_eq!(
            (c.rtp.port_min, c.rtp.port_max, c.rtp.port_pairs()),
            (1024, 65535, 32256)
        );
    }

    #[test]
    fn reversed_range_message_matches_the_documented_form() {
        let e = err(&format!("{MINIMAL}[rtp]\nports = \"20000-10000\"\n"));
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:6:9: [rtp] ports: \"20000-10000\": the first port must not exceed the last"
        );
    }

    #[test]
    fn rtp_address() {
        let c = load(&format!("{MINIMAL}[rtp]\naddress = \"192.0.2.10\"\n")).unwrap();
        assert_eq!(c.rtp.address, Some("192.0.2.10".parse().unwrap()));
        let c = load(&format!("{MINIMAL}[rtp]\naddress = \"[2001:db8::1]\"\n")).unwrap();
        assert_eq!(c.rtp.address, Some("2001:db8::1".parse().unwrap()));
        for bad in ["pbx.local", "0.0.0.0", "::", "239.1.1.1"] {
            let e = err(&format!("{MINIMAL}[rtp]\naddress = \"{bad}\"\n"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[rtp] address"), Some(6)),
                "{bad}"
            );
        }
    }

    #[test]
    fn loudness_out_of_range() {
        for bad in ["-41.0", "-4", "0", "nan", "inf"] {
            let e = err(&format!(
                "[channels.default]\nmusic = \"demo\"\nloudness_lufs = {bad}\n[dialplan]\ndefault = \"default\"\n"
            ));
            assert_eq!(e.key(), Some("[channels.default] loudness_lufs"), "{bad}");
            assert_eq!((e.line(), e.column()), (Some(3), Some(17)), "{bad}");
            assert!(e.message().contains("-40.0..=-5.0"), "{e}");
        }
        // An integer is a fine number of LUFS; the ends are inclusive.
        for ok in ["-23", "-40.0", "-5"] {
            let c = load(&format!(
                "[channels.default]\nmusic = \"demo\"\nloudness_lufs = {ok}\n[dialplan]\ndefault = \"default\"\n"
            ))
            .unwrap();
            assert_eq!(
                c.channels["default"].loudness_lufs,
                ok.parse::<f64>().unwrap()
            );
        }
    }

    #[test]
    fn listen_addresses() {
        let c = load(&format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:5070\", \"udp:[::]:5060\"]\nuser_agent = \"moh/1\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            c.sip.listen,
            vec![
                Listen::udp("127.0.0.1:5070".parse().unwrap()),
                Listen::udp("[::]:5060".parse().unwrap())
            ]
        );
        assert_eq!(c.sip.user_agent, "moh/1");
        let cases = [
            ("\"0.0.0.0:5060\"", "write \"udp:0.0.0.0:5060\""),
            ("\"udp:0.0.0.0\"", "is not IP:PORT"),
            ("\"udp:::5060\"", "is not IP:PORT"),
            ("\"udp:pbx:5060\"", "is not IP:PORT"),
            ("\"ws:0.0.0.0:5060\"", "not supported"),
            ("\"tcp:0.0.0.0\"", "is not IP:PORT"),
            ("\"bogus\"", "expected \"udp:IP:PORT\""),
            ("\"tls:0.0.0.0:5061\"", "needs [sip.tls]"),
            ("\"udp:1.2.3.4:5060\", \"udp:1.2.3.4:5060\"", "listed twice"),
        ];
        for (list, want) in cases {
            let e = err(&format!("[sip]\nlisten = [{list}]\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[sip] listen"), Some(2)),
                "{list}"
            );
            assert!(e.message().contains(want), "{list}: {e}");
        }
        let c = load(&format!(
            "[sip]\nlisten = \"udp:127.0.0.1:5070\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            c.sip.listen,
            vec![Listen::udp("127.0.0.1:5070".parse().unwrap())]
        );
        let e = err(&format!(
            "[sip]\nlisten = \"tls:127.0.0.1:5070\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.column()), (Some("[sip] listen"), Some(10)));
        let e = err(&format!("[sip]\nlisten = []\n{MINIMAL}"));
        assert!(e.message().contains("at least one address"), "{e}");
        let c = load(&format!("[sip]\nanswer_delay_ms = 2500\n{MINIMAL}")).unwrap();
        assert_eq!(c.sip.answer_delay_ms, 2500);
        for bad in ["-1", "30001", "1.5"] {
            let e = err(&format!("[sip]\nanswer_delay_ms = {bad}\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[sip] answer_delay_ms"), Some(2)),
                "{bad}"
            );
        }
        let e = err(&format!(
            "[sip]\nuser_agent = \"a\\r\\nX-Evil: 1\"\n{MINIMAL}"
        ));
        assert_eq!(e.key(), Some("[sip] user_agent"));
    }

    #[test]
    fn mode_from_start_is_not_supported_yet() {
        let e = err(
            "[channels.default]\nmusic = \"demo\"\nmode = \"from-start\"\n[dialplan]\ndefault = \"default\"\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:3:8: [channels.default] mode: \"from-start\": not supported yet: only \"shared\" for now"
        );
        let e = err(
            "[channels.default]\nmusic = \"demo\"\nmode = \"radio\"\n[dialplan]\ndefault = \"default\"\n",
        );
        assert!(e.message().contains("expected \"shared\""), "{e}");
    }

    #[test]
    fn route_to_undefined_channel_names_the_route_line() {
        let e = err(
            "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n\
             [[dialplan.route]]\nuser = \"a\"\nchannel = \"default\"\n\
             [[dialplan.route]]\nuser = \"b\"\nchannel = \"jazz\"\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:10:11: [[dialplan.route]] channel: \"jazz\": no such channel; defined: default"
        );
    }

    #[test]
    fn default_to_undefined_channel() {
        let e = err("[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"jazz\"\n");
        assert_eq!((e.key(), e.line()), (Some("[dialplan] default"), Some(4)));
    }

    #[test]
    fn route_errors_name_the_key() {
        let base = "[channels.default]\nmusic = \"demo\"\n[[dialplan.route]]\n";
        let e = err(&format!("{base}user = \"\"\nchannel = \"default\"\n"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] user"), Some(4))
        );
        let e = err(&format!(
            "{base}source = \"10.0.0.1/8\"\nchannel = \"default\"\n"
        ));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] source"), Some(4))
        );
        assert!(e.message().contains("did you mean \"10.0.0.0/8\""), "{e}");
        let e = err(&format!("{base}channel = \"default\"\n"));
        assert_eq!((e.key(), e.line()), (Some("[[dialplan.route]]"), Some(3)));
        assert!(e.message().contains("at least one of"), "{e}");
        let e = err(&format!("{base}user = \"a\"\n"));
        assert_eq!((e.key(), e.line()), (Some("[[dialplan.route]]"), Some(3)));
        assert_eq!(e.message(), "missing key `channel`");
        let e = err(&format!("{base}user = \"a\"\nchanel = \"default\"\n"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] chanel"), Some(5))
        );
    }

    #[test]
    fn a_dialplan_that_routes_nothing_is_an_error() {
        // One channel and no [dialplan]: it is the default.
        let c = load("[channels.only]\nmusic = \"demo\"\n").unwrap();
        assert_eq!(c.dialplan.default_channel(), Some("only"));
        let e = err("[channels.default]\nmusic = \"demo\"\n[channels.b]\nmusic = \"demo\"\n");
        assert_eq!(e.key(), Some("[dialplan]"));
        let e = err("[channels.default]\nmusic = \"demo\"\n[dialplan]\n");
        assert_eq!(e.key(), Some("[dialplan]"));
        assert!(e.message().contains("default = \"default\""), "{e}");
    }

    #[test]
    fn channels_are_required_and_well_named() {
        let e = err("[dialplan]\ndefault = \"x\"\n");
        assert_eq!(e.key(), Some("[channels]"));
        let e = err("[channels.\"my jazz\"]\nmusic = \"demo\"\n");
        assert_eq!(
            (e.key(), e.line()),
            (Some("[channels.\"my jazz\"]"), Some(1))
        );
        let e = err("[channels.x]\nmode = \"shared\"\n");
        assert_eq!(
            (e.key(), e.message()),
            (Some("[channels.x]"), "missing key `music`")
        );
    }

    #[test]
    fn music_paths_resolve_against_the_config_folder() {
        let c = load(
            "[channels.a]\nmusic = \"music\"\n[channels.b]\nmusic = [\"x/a.flac\", \"/abs/b.mp3\"]\n\
             [channels.c]\nmusic = \"./demo\"\n[dialplan]\ndefault = \"a\"\n",
        )
        .unwrap();
        let files = |n: &str| match &c.channels[n].music {
            MusicSource::Files(f) => f.clone(),
            MusicSource::Demo => panic!("{n} is demo"),
        };
        assert_eq!(files("a"), [PathBuf::from("/etc/mohd/music")]);
        assert_eq!(
            files("b"),
            [
                PathBuf::from("/etc/mohd/x/a.flac"),
                PathBuf::from("/abs/b.mp3")
            ]
        );
        assert_eq!(files("c"), [PathBuf::from("/etc/mohd/./demo")]);
    }

    #[test]
    fn music_errors() {
        let cases = [
            ("[]", "the list is empty"),
            ("[\"a.flac\", \"demo\"]", "cannot be mixed"),
            ("\"\"", "the path is empty"),
            ("\"~/music\"", "'~' is not expanded"),
            ("[\"a\", 3]", "invalid type"),
            ("3", "invalid type"),
        ];
        for (music, want) in cases {
            let e = err(&format!(
                "[channels.default]\nmusic = {music}\n[dialplan]\ndefault = \"default\"\n"
            ));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[channels.default] music"), Some(2)),
                "{music}"
            );
            assert!(e.message().contains(want), "{music}: {e}");
        }
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
        let before = format!("{c:?}");
        c.apply_overrides(None, None);
        assert_eq!(format!("{c:?}"), before);
    }

    #[test]
    fn tcp_and_tls_listeners_with_certificate_and_caps() {
        let c = load(&format!(
            "[sip]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:0.0.0.0:5060\", \"tls:[::]:5061\"]\n\
             max_connections = 10\nmax_message_bytes = 4096\nidle_timeout_s = 2\n\
             [sip.tls]\ncertificate = \"tls/cert.pem\"\nkey = \"/abs/key.pem\"\n{MINIMAL}"
        ))
        .unwrap();
        let l = |t, a: &str| Listen {
            transport: t,
            addr: a.parse().unwrap(),
        };
        assert_eq!(
            c.sip.listen,
            vec![
                l(Transport::Udp, "0.0.0.0:5060"),
                l(Transport::Tcp, "0.0.0.0:5060"),
                l(Transport::Tls, "[::]:5061"),
            ]
        );
        assert_eq!(c.sip.listen[2].to_string(), "tls:[::]:5061");
        // Relative paths are relative to the config file, as music is.
        assert_eq!(
            c.sip.tls,
            Some(TlsConfig {
                certificate: PathBuf::from("/etc/mohd/tls/cert.pem"),
                key: PathBuf::from("/abs/key.pem"),
            })
        );
        assert_eq!(
            (
                c.sip.max_connections,
                c.sip.max_message_bytes,
                c.sip.idle_timeout_s
            ),
            (10, 4096, 2)
        );
    }

    #[test]
    fn tls_without_certificate_or_key_names_what_is_missing() {
        let e = err(&format!(
            "[sip]\nlisten = \"tls:0.0.0.0:5061\"\n[sip.tls]\ncertificate = \"c.pem\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] key"), Some(3)));
        assert!(e.message().contains("private key"), "{e}");
        let e = err(&format!(
            "[sip]\nlisten = \"tls:0.0.0.0:5061\"\n[sip.tls]\nkey = \"k.pem\"\n{MINIMAL}"
        ));
        assert_eq!(e.key(), Some("[sip.tls] certificate"));
        let e = err(&format!(
            "[sip]\n[sip.tls]\ncertificate = \"c.pem\"\nkey = \"\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] key"), Some(4)));
        let e = err(&format!(
            "[sip.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\npassword = \"x\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] password"), Some(4)));
    }

    #[test]
    fn connection_caps_are_range_checked() {
        for (k, bad) in [
            ("max_connections", "0"),
            ("max_message_bytes", "100"),
            ("max_message_bytes", "70000"),
            ("idle_timeout_s", "0"),
            ("idle_timeout_s", "-5"),
        ] {
            let e = err(&format!("[sip]\n{k} = {bad}\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some(format!("[sip] {k}").as_str()), Some(2))
            );
            assert!(e.message().contains("must be within"), "{e}");
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncüd", 6), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }
}
