//! Managed channels and their routes: the channels created over the API or the admin page,
//! persisted in `<state>/channels.json` with the routes that send calls to them.
//!
//! Owns the rules that keep the *effective* channel set (config file channels + managed
//! channels) consistent: names are unique across both (a config file channel's name is
//! taken), config file channels are read-only here, a rename carries the routes along,
//! deleting a channel that routes point to is refused with the routes listed (or removes them
//! when forced), managed channels play library tracks only (never arbitrary server paths), and
//! deleting a library track removes it from every managed playlist, announcement and
//! greeting.
//!
//! Every change is validated, then written with [`write_atomic`] (temp file, fsync, rename,
//! folder fsync) *before* memory changes, so a failed write leaves the store as it was and a
//! crash or power cut at any point leaves the old file or the new one, never a mixture.
//! [`ChannelStore::open`] removes temp files a crash left, refuses a file from a newer mohd
//! (rather than overwrite what it cannot read), and sets a corrupt file aside and starts empty
//! (the config file's channels still play).
//!
//! Blocking `std::fs` only, like the library; the web layer calls it from blocking threads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{ChannelSpec, Clip, Music, Origin, SpecError};
use crate::dialplan::{Cidr, Dialplan, Pattern, Route};
use crate::fsutil::{StateFile, StateFileError, read_state_file, remove_stale_temps, write_atomic};
use crate::library::Library;

/// The file in the state folder.
pub const CHANNELS_JSON: &str = "channels.json";

/// `channels.json`'s format version; a newer one is refused rather than overwritten.
const FORMAT_VERSION: u32 = 1;

/// A managed route: the match keys a `[[dialplan.route]]` has, and the channel. Patterns are
/// kept as written (and parsed when the dialplan is built), so the page shows them as typed.
/// The API reads and shows it as it is (`GET/PUT /api/routes`): every key set must match; at
/// least one is required; an unknown key is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ManagedRouteDto)]
pub struct ManagedRoute {
    /// Request-URI user pattern (`*` globs, `\*` a literal star).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// To user pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user: Option<String>,
    /// From user pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_user: Option<String>,
    /// Source address or CIDR block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The channel calls matching it hear.
    pub channel: String,
}

impl ManagedRoute {
    /// A route sending calls to Request-URI user `user` to `channel`.
    pub fn user(user: &str, channel: &str) -> ManagedRoute {
        ManagedRoute {
            user: Some(user.to_owned()),
            to_user: None,
            from_user: None,
            source: None,
            channel: channel.to_owned(),
        }
    }

    /// The dialplan route, or why the patterns are unusable.
    pub fn to_route(&self) -> Result<Route, String> {
        let pattern =
            |p: &str, key: &str| Pattern::parse(p).map_err(|e| format!("{key} = {p:?}: {e}"));
        let mut route = Route::new(self.channel.clone()).origin(CHANNELS_JSON);
        if let Some(p) = &self.user {
            route = route.user(pattern(p, "user")?);
        }
        if let Some(p) = &self.to_user {
            route = route.to_user(pattern(p, "to_user")?);
        }
        if let Some(p) = &self.from_user {
            route = route.from_user(pattern(p, "from_user")?);
        }
        if let Some(c) = &self.source {
            let cidr = Cidr::parse(c).map_err(|e| format!("source = {c:?}: {e}"))?;
            route = route.source(cidr);
        }
        if route.is_catch_all() {
            return Err(
                "a route needs at least one of user, to_user, from_user, source \
                        (user = \"*\" catches every call)"
                    .to_owned(),
            );
        }
        Ok(route)
    }

    /// What the route matches and where it sends calls, e.g.
    /// `user = "8*", source = "10.0.0.0/8" -> channel "sales"`.
    pub fn describe(&self) -> String {
        let mut keys = Vec::new();
        for (key, value) in [
            ("user", &self.user),
            ("to_user", &self.to_user),
            ("from_user", &self.from_user),
            ("source", &self.source),
        ] {
            if let Some(v) = value {
                keys.push(format!("{key} = {v:?}"));
            }
        }
        format!("{} -> channel {:?}", keys.join(", "), self.channel)
    }
}

/// Why opening or changing the store failed. [`StoreError::http_status`] maps each to the
/// answer the API gives; the message is the reason shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed, or `channels.json` was written by a newer mohd.
    #[error(transparent)]
    File(#[from] StateFileError),
    /// No channel (managed or from the config file) has this name.
    #[error("no channel named {0:?}")]
    NotFound(String),
    /// The channel is defined in the config file: change it there.
    #[error("channel {0:?} is defined in the config file; change it there")]
    ReadOnly(String),
    /// Another channel (managed or from the config file) has this name.
    #[error("a channel named {0:?} already exists")]
    NameTaken(String),
    /// The description breaks a rule (name, loudness, fades, schedule...).
    #[error("{0}")]
    Invalid(#[from] SpecError),
    /// A playlist, announcement or greeting names a track the library does not have.
    #[error("no track with id {0:?} in the library")]
    UnknownTrack(String),
    /// A managed channel names a file on the server rather than a library track.
    #[error(
        "{0}: a channel created over the API plays library tracks only; upload the file to the \
         library (or define the channel in the config file)"
    )]
    FileNotAllowed(String),
    /// Routes send calls to the channel being deleted.
    #[error(
        "channel {channel:?} is the target of {} route(s): {}; remove them first \
         (or delete with remove_routes)",
        routes.len(),
        routes.join("; ")
    )]
    RoutedTo {
        /// The channel.
        channel: String,
        /// Each route, described.
        routes: Vec<String>,
    },
    /// A route whose patterns do not parse, that matches nothing, or whose channel is unknown.
    #[error("route {}: {reason}", index + 1)]
    BadRoute {
        /// Its 0-based position in the list given.
        index: usize,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// 404 unknown channel; 403 config file channel; 409 name taken or routed to; 422 unknown
    /// track; 400 other bad input; 500 file errors and a newer file version (507 disk full).
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::NotFound(_) => 404,
            StoreError::ReadOnly(_) => 403,
            StoreError::NameTaken(_) | StoreError::RoutedTo { .. } => 409,
            StoreError::UnknownTrack(_) => 422,
            StoreError::Invalid(_)
            | StoreError::FileNotAllowed(_)
            | StoreError::BadRoute { .. } => 400,
            StoreError::File(e) => e.http_status(),
        }
    }

    fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::File(StateFileError::io(action, path, source))
    }
}

/// What `channels.json` holds.
#[derive(Serialize, Deserialize)]
struct StoredChannels {
    version: u32,
    channels: Vec<ChannelSpec>,
    #[serde(default)]
    routes: Vec<ManagedRoute>,
}

#[derive(Serialize)]
struct StoredChannelsRef<'a> {
    version: u32,
    channels: Vec<&'a ChannelSpec>,
    routes: &'a [ManagedRoute],
}

/// The managed channels and routes of one state folder. See the module docs.
#[derive(Debug)]
pub struct ChannelStore {
    path: PathBuf,
    /// The config file's channel names: taken, and read-only here.
    config_channels: BTreeSet<String>,
    /// Managed channels that are served, by name.
    channels: BTreeMap<String, ChannelSpec>,
    /// Stored channels that cannot be served (their name is now a config file channel's, or
    /// they break a rule this mohd checks): kept in the file, reported, deletable.
    held: Vec<(ChannelSpec, String)>,
    /// Managed routes, in the order they are tried (after the config file's).
    routes: Vec<ManagedRoute>,
}

impl ChannelStore {
    /// Opens `<state_dir>/channels.json` (none yet: an empty store). `config_channels` are the
    /// config file's channel names. Removes temp files a crash left behind; a corrupt file is
    /// renamed to `channels.json.corrupt-<unix time>` and the store starts empty, with an
    /// error logged; a file from a newer mohd is an error (nothing is overwritten).
    pub fn open<I, S>(state_dir: &Path, config_channels: I) -> Result<ChannelStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        fs::create_dir_all(state_dir).map_err(|e| StoreError::io("create", state_dir, e))?;
        remove_stale_temps(state_dir, &[CHANNELS_JSON]);
        let path = state_dir.join(CHANNELS_JSON);
        let stored = load(&path)?;
        let mut store = ChannelStore {
            path,
            config_channels: config_channels.into_iter().map(Into::into).collect(),
            channels: BTreeMap::new(),
            held: Vec::new(),
            routes: stored.routes,
        };
        for spec in stored.channels {
            match store.admit_stored(&spec) {
                Ok(()) => {
                    store.channels.insert(spec.name.clone(), spec);
                }
                Err(why) => {
                    tracing::error!(channel = %spec.name, reason = %why,
                        "a managed channel in channels.json cannot be served; kept in the file");
                    store.held.push((spec, why));
                }
            }
        }
        for (i, r) in store.routes.iter().enumerate() {
            if let Err(why) = store.check_route(r) {
                tracing::error!(route = i + 1, reason = %why,
                    "a managed route in channels.json is not used; kept in the file");
            }
        }
        tracing::info!(
            path = %store.path.display(),
            channels = store.channels.len(),
            routes = store.routes.len(),
            "managed channels loaded"
        );
        Ok(store)
    }

    /// Why a channel read from the file cannot be served, if it cannot.
    fn admit_stored(&self, spec: &ChannelSpec) -> Result<(), String> {
        if self.config_channels.contains(&spec.name) {
            return Err("the config file now defines a channel of this name".to_owned());
        }
        if self.channels.contains_key(&spec.name) {
            return Err("listed twice".to_owned());
        }
        spec.validate().map_err(|e| e.to_string())
    }

    /// The managed channels that are served, by name.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelSpec> {
        self.channels.values()
    }

    /// The managed channel `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelSpec> {
        self.channels.get(name)
    }

    /// Stored channels that are not served, each with the reason.
    pub fn held(&self) -> &[(ChannelSpec, String)] {
        &self.held
    }

    /// The managed routes, in order.
    pub fn routes(&self) -> &[ManagedRoute] {
        &self.routes
    }

    /// The managed routes that can be used (patterns parse, channel exists), as dialplan
    /// routes in order; the others are skipped with a warning.
    pub fn dialplan_routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match self.check_route(r) {
                Ok(route) => Some(route),
                Err(why) => {
                    tracing::warn!(route = i + 1, reason = %why, "managed route skipped");
                    None
                }
            })
            .collect()
    }

    /// The config file's dialplan with the managed routes after its routes.
    pub fn dialplan(&self, config: &Dialplan) -> Dialplan {
        effective_dialplan(config, self.dialplan_routes())
    }

    /// The names of the managed channels that use library track `id` (for the page to list
    /// before a track is deleted).
    pub fn channels_using_track(&self, id: &str) -> Vec<&str> {
        self.channels
            .values()
            .filter(|c| c.library_track_ids().contains(id))
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Whether `name` is a channel of the effective set.
    pub fn exists(&self, name: &str) -> bool {
        self.channels.contains_key(name) || self.config_channels.contains(name)
    }

    /// Whether a new channel may not be called `name`: a channel of the effective set, or a
    /// held one (which would otherwise come back as a duplicate).
    fn taken(&self, name: &str) -> bool {
        self.exists(name) || self.held.iter().any(|(h, _)| h.name == name)
    }

    /// Adds a managed channel (its origin is set to managed). It must be valid, its name
    /// free, and every library track it names in `library`.
    pub fn create(
        &mut self,
        mut spec: ChannelSpec,
        library: Option<&Library>,
    ) -> Result<(), StoreError> {
        spec.origin = Origin::Managed;
        self.check_new(&spec, library)?;
        if self.taken(&spec.name) {
            return Err(StoreError::NameTaken(spec.name));
        }
        let mut channels = self.channels.clone();
        let name = spec.name.clone();
        channels.insert(name.clone(), spec);
        self.commit(channels, self.routes.clone())?;
        tracing::info!(channel = %name, "managed channel created");
        Ok(())
    }

    /// Replaces managed channel `name` with `spec`; a different `spec.name` renames it (and the
    /// routes to it follow).
    pub fn update(
        &mut self,
        name: &str,
        mut spec: ChannelSpec,
        library: Option<&Library>,
    ) -> Result<(), StoreError> {
        self.managed(name)?;
        spec.origin = Origin::Managed;
        self.check_new(&spec, library)?;
        if spec.name != name && self.taken(&spec.name) {
            return Err(StoreError::NameTaken(spec.name));
        }
        let mut channels = self.channels.clone();
        channels.remove(name);
        let new_name = spec.name.clone();
        channels.insert(new_name.clone(), spec);
        let routes = routes_renamed(&self.routes, name, &new_name);
        self.commit(channels, routes)?;
        if new_name != name {
            tracing::info!(from = %name, to = %new_name, "managed channel renamed");
        }
        Ok(())
    }

    /// Renames managed channel `from` to `to`; the routes to it follow.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        let mut spec = self.managed(from)?.clone();
        spec.name = to.to_owned();
        if from == to {
            return Ok(());
        }
        // No library check: the tracks are the ones it already had.
        spec.validate()?;
        if self.taken(to) {
            return Err(StoreError::NameTaken(to.to_owned()));
        }
        let mut channels = self.channels.clone();
        channels.remove(from);
        channels.insert(to.to_owned(), spec);
        let routes = routes_renamed(&self.routes, from, to);
        self.commit(channels, routes)?;
        tracing::info!(%from, %to, "managed channel renamed");
        Ok(())
    }

    /// Deletes managed channel `name` (or a held one of that name). Routes to it refuse the
    /// delete ([`StoreError::RoutedTo`], listing them) unless `remove_routes`, which deletes
    /// them with it. Returns the routes removed.
    pub fn delete(
        &mut self,
        name: &str,
        remove_routes: bool,
    ) -> Result<Vec<ManagedRoute>, StoreError> {
        if let Some(i) = self.held.iter().position(|(h, _)| h.name == name) {
            // A held channel shares its name with a config file channel (or is invalid):
            // routes name the served channel, so they stay.
            let mut held = self.held.clone();
            held.remove(i);
            self.write(&self.channels, &held, &self.routes)?;
            self.held = held;
            return Ok(Vec::new());
        }
        self.managed(name)?;
        let (to_it, others): (Vec<_>, Vec<_>) =
            self.routes.iter().cloned().partition(|r| r.channel == name);
        if !to_it.is_empty() && !remove_routes {
            return Err(StoreError::RoutedTo {
                channel: name.to_owned(),
                routes: to_it.iter().map(ManagedRoute::describe).collect(),
            });
        }
        let mut channels = self.channels.clone();
        channels.remove(name);
        self.commit(channels, others)?;
        tracing::info!(channel = %name, routes_removed = to_it.len(), "managed channel deleted");
        Ok(to_it)
    }

    /// Replaces the managed routes. Each must parse, match on something, and name a channel
    /// of the effective set.
    pub fn set_routes(&mut self, routes: Vec<ManagedRoute>) -> Result<(), StoreError> {
        for (index, r) in routes.iter().enumerate() {
            self.check_route(r)
                .map_err(|reason| StoreError::BadRoute { index, reason })?;
        }
        if routes == self.routes {
            return Ok(());
        }
        self.commit(self.channels.clone(), routes)
    }

    /// Removes library track `id` from every managed playlist, announcement and greeting
    /// (the track was deleted from the library). Returns the channels that changed.
    pub fn remove_track(&mut self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut channels = self.channels.clone();
        let mut changed = Vec::new();
        for spec in channels.values_mut() {
            if spec.remove_track(id) {
                changed.push(spec.name.clone());
            }
        }
        let mut held = self.held.clone();
        let mut held_changed = false;
        for (spec, _) in &mut held {
            held_changed |= spec.remove_track(id);
        }
        if changed.is_empty() && !held_changed {
            return Ok(changed);
        }
        self.write(&channels, &held, &self.routes)?;
        self.channels = channels;
        self.held = held;
        tracing::info!(track = id, channels = ?changed, "deleted track removed from managed channels");
        Ok(changed)
    }

    /// The managed channel `name`, or why it cannot be changed.
    fn managed(&self, name: &str) -> Result<&ChannelSpec, StoreError> {
        if let Some(spec) = self.channels.get(name) {
            return Ok(spec);
        }
        if self.config_channels.contains(name) {
            return Err(StoreError::ReadOnly(name.to_owned()));
        }
        Err(StoreError::NotFound(name.to_owned()))
    }

    /// The rules a new or changed managed channel must meet beyond [`ChannelSpec::validate`].
    fn check_new(&self, spec: &ChannelSpec, library: Option<&Library>) -> Result<(), StoreError> {
        spec.validate()?;
        for (name, programme) in spec.named_programmes() {
            if let Music::Source(crate::channel::MusicSource::Files(_)) = programme.music {
                return Err(StoreError::FileNotAllowed(format!(
                    "programme {name:?} music"
                )));
            }
            let clips = programme.announcements.iter().flat_map(|a| &a.clips);
            if clips.into_iter().any(|c| matches!(c, Clip::File(_))) {
                return Err(StoreError::FileNotAllowed(format!(
                    "programme {name:?} announcements"
                )));
            }
        }
        if let Some(Clip::File(_)) = &spec.greeting {
            return Err(StoreError::FileNotAllowed("greeting".to_owned()));
        }
        for id in spec.library_track_ids() {
            if library.and_then(|l| l.track(id)).is_none() {
                return Err(StoreError::UnknownTrack(id.to_owned()));
            }
        }
        Ok(())
    }

    /// The route as the dialplan takes it, or why it cannot be used.
    fn check_route(&self, r: &ManagedRoute) -> Result<Route, String> {
        let route = r.to_route()?;
        if !self.exists(&r.channel) {
            return Err(format!("channel {:?}: no such channel", r.channel));
        }
        Ok(route)
    }

    /// Writes the new state, then makes it current. On failure nothing changes.
    fn commit(
        &mut self,
        channels: BTreeMap<String, ChannelSpec>,
        routes: Vec<ManagedRoute>,
    ) -> Result<(), StoreError> {
        self.write(&channels, &self.held, &routes)?;
        self.channels = channels;
        self.routes = routes;
        Ok(())
    }

    fn write(
        &self,
        channels: &BTreeMap<String, ChannelSpec>,
        held: &[(ChannelSpec, String)],
        routes: &[ManagedRoute],
    ) -> Result<(), StoreError> {
        let doc = StoredChannelsRef {
            version: FORMAT_VERSION,
            channels: channels
                .values()
                .chain(held.iter().map(|(s, _)| s))
                .collect(),
            routes,
        };
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| StoreError::io("encode", &self.path, io::Error::other(e)))?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(|e| StoreError::io("write", &self.path, e))
    }
}

/// The dialplan calls are routed by: the config file's routes, then `managed` (in order),
/// then the config file's default channel.
pub fn effective_dialplan(config: &Dialplan, managed: Vec<Route>) -> Dialplan {
    let mut routes = config.routes().to_vec();
    routes.extend(managed);
    Dialplan::new(routes, config.default_channel().map(str::to_owned))
}

fn routes_renamed(routes: &[ManagedRoute], from: &str, to: &str) -> Vec<ManagedRoute> {
    routes
        .iter()
        .cloned()
        .map(|mut r| {
            if r.channel == from {
                r.channel = to.to_owned();
            }
            r
        })
        .collect()
}

/// Reads channels.json. Missing: empty. Unparseable: set aside, empty (logged).
fn load(path: &Path) -> Result<StoredChannels, StoreError> {
    let read = read_state_file(path, FORMAT_VERSION, "starting without managed channels")?;
    Ok(match read {
        StateFile::Read(doc) => doc,
        StateFile::Missing | StateFile::SetAside => StoredChannels {
            version: FORMAT_VERSION,
            channels: Vec::new(),
            routes: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::spec::{Announcements, Interject, ProgrammeSpec};
    use crate::dialplan::RouteRequest;

    /// A state folder whose library holds `names` (short WAV files), and the library.
    fn library(names: &[&str]) -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let music = dir.path().join("music");
        fs::create_dir_all(&music).unwrap();
        for (i, name) in names.iter().enumerate() {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(music.join(name), spec).unwrap();
            for n in 0..800 {
                // Different content per file, so different ids.
                w.write_sample(((n * (i + 1)) % 3000) as i16).unwrap();
            }
            w.finalize().unwrap();
        }
        let lib = Library::open(dir.path()).unwrap();
        (dir, lib)
    }

    fn id(lib: &Library, name: &str) -> String {
        lib.tracks()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.id.clone())
            .unwrap()
    }

    fn spec(name: &str, tracks: Vec<String>) -> ChannelSpec {
        ChannelSpec::simple(name, Origin::Managed, Music::Tracks(tracks), -18.0)
    }

    fn open(dir: &Path) -> ChannelStore {
        ChannelStore::open(dir, ["default", "jazz"]).unwrap()
    }

    fn names(store: &ChannelStore) -> Vec<&str> {
        store.channels().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn create_persists_and_reopens() {
        let (dir, lib) = library(&["a.wav", "b.wav"]);
        let mut store = open(dir.path());
        assert_eq!(names(&store), Vec::<&str>::new());
        let mut s = spec("sales", vec![id(&lib, "b.wav"), id(&lib, "a.wav")]);
        s.origin = Origin::ConfigFile;
        s.main.shuffle = true;
        s.greeting = Some(Clip::Library(id(&lib, "a.wav")));
        store.create(s.clone(), Some(&lib)).unwrap();
        store
            .set_routes(vec![ManagedRoute::user("600", "sales")])
            .unwrap();
        let again = open(dir.path());
        let got = again.channel("sales").unwrap();
        assert_eq!(got.origin, Origin::Managed, "the store makes it managed");
        s.origin = Origin::Managed;
        assert_eq!(got, &s);
        assert_eq!(again.routes(), [ManagedRoute::user("600", "sales")]);
        let text = fs::read_to_string(dir.path().join(CHANNELS_JSON)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn names_are_unique_across_config_and_managed() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        for taken in ["sales", "jazz"] {
            let e = store.create(spec(taken, vec![]), Some(&lib)).unwrap_err();
            assert!(matches!(&e, StoreError::NameTaken(n) if n == taken), "{e}");
            assert_eq!(e.http_status(), 409);
        }
        let e = store
            .create(spec("bad name", vec![]), Some(&lib))
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Invalid(SpecError::ChannelName(_))),
            "{e}"
        );
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn only_library_tracks_that_exist() {
        let (dir, lib) = library(&["a.wav"]);
        let mut store = open(dir.path());
        let e = store
            .create(spec("sales", vec!["000000000000".into()]), Some(&lib))
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::UnknownTrack(t) if t == "000000000000"),
            "{e}"
        );
        assert_eq!(e.http_status(), 422);
        let e = store
            .create(spec("sales", vec![id(&lib, "a.wav")]), None)
            .unwrap_err();
        assert!(
            matches!(e, StoreError::UnknownTrack(_)),
            "no library: nothing is known"
        );
        let mut s = spec("sales", vec![]);
        s.main.music = Music::Source(crate::channel::MusicSource::Files(vec![
            "/etc/passwd".into(),
        ]));
        let e = store.create(s, Some(&lib)).unwrap_err();
        assert!(matches!(e, StoreError::FileNotAllowed(_)), "{e}");
        let mut s = spec("sales", vec![]);
        s.main.announcements = Some(Announcements {
            clips: vec![Clip::File("/etc/shadow".into())],
            every: Interject::EveryTracks(1),
            loudness_lufs: None,
            fade_out_ms: 0,
            fade_in_ms: 0,
        });
        assert!(matches!(
            store.create(s, Some(&lib)),
            Err(StoreError::FileNotAllowed(_))
        ));
        let mut s = spec("sales", vec![]);
        s.greeting = Some(Clip::File("/x.wav".into()));
        assert!(matches!(
            store.create(s, Some(&lib)),
            Err(StoreError::FileNotAllowed(_))
        ));
        // The demo melody and the library's own playlist are fine.
        let mut s = spec("demo", vec![]);
        s.main.music = Music::Source(crate::channel::MusicSource::Demo);
        s.programmes.insert(
            "all".into(),
            ProgrammeSpec {
                music: Music::LibraryPlaylist,
                shuffle: true,
                announcements: None,
            },
        );
        store.create(s, Some(&lib)).unwrap();
        assert_eq!(names(&store), ["demo"]);
    }

    #[test]
    fn config_channels_are_read_only_and_unknown_ones_not_found() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        let e = store
            .update("jazz", spec("jazz", vec![]), Some(&lib))
            .unwrap_err();
        assert!(matches!(e, StoreError::ReadOnly(_)));
        assert_eq!(e.http_status(), 403);
        assert_eq!(store.delete("jazz", true).unwrap_err().http_status(), 403);
        assert_eq!(store.rename("jazz", "x").unwrap_err().http_status(), 403);
        let e = store.delete("nope", false).unwrap_err();
        assert_eq!(e.http_status(), 404);
        assert_eq!(e.to_string(), "no channel named \"nope\"");
    }

    #[test]
    fn rename_carries_the_routes() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        store
            .set_routes(vec![
                ManagedRoute::user("600", "sales"),
                ManagedRoute::user("601", "jazz"),
            ])
            .unwrap();
        assert!(matches!(
            store.rename("sales", "jazz"),
            Err(StoreError::NameTaken(_))
        ));
        store.rename("sales", "support").unwrap();
        assert_eq!(names(&store), ["support"]);
        assert_eq!(store.routes()[0].channel, "support");
        assert_eq!(store.routes()[1].channel, "jazz");
        // Through update too, with a change.
        let mut s = store.channel("support").unwrap().clone();
        s.name = "help".into();
        s.mode = crate::channel::spec::ChannelMode::FromStart;
        store.update("support", s, Some(&lib)).unwrap();
        let again = open(dir.path());
        assert_eq!(names(&again), ["help"]);
        assert_eq!(again.routes()[0].channel, "help");
        assert_eq!(
            again.channel("help").unwrap().mode,
            crate::channel::spec::ChannelMode::FromStart
        );
    }

    #[test]
    fn deleting_a_routed_channel_is_refused_unless_the_routes_go_too() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        store.create(spec("night", vec![]), Some(&lib)).unwrap();
        let routes = vec![
            ManagedRoute::user("600", "sales"),
            ManagedRoute {
                source: Some("10.0.0.0/8".into()),
                ..ManagedRoute::user("6*", "sales")
            },
            ManagedRoute::user("700", "night"),
        ];
        store.set_routes(routes.clone()).unwrap();
        let e = store.delete("sales", false).unwrap_err();
        assert_eq!(e.http_status(), 409);
        let StoreError::RoutedTo {
            channel,
            routes: listed,
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(channel, "sales");
        assert_eq!(
            listed,
            &[
                "user = \"600\" -> channel \"sales\"",
                "user = \"6*\", source = \"10.0.0.0/8\" -> channel \"sales\""
            ]
        );
        assert!(e.to_string().contains("2 route(s)"), "{e}");
        assert_eq!(names(&store), ["night", "sales"], "nothing changed");
        let removed = store.delete("sales", true).unwrap();
        assert_eq!(removed, routes[..2]);
        assert_eq!(store.routes(), &routes[2..]);
        // An unrouted channel goes at once.
        store.set_routes(Vec::new()).unwrap();
        assert_eq!(store.delete("night", false).unwrap(), []);
        assert!(names(&open(dir.path())).is_empty());
    }

    #[test]
    fn routes_are_checked() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        let cases = [
            (ManagedRoute::user("600", "nope"), "no such channel"),
            (ManagedRoute::user("", "sales"), "user = \"\""),
            (ManagedRoute::user("a\\b", "sales"), "user = \"a\\\\b\""),
            (
                ManagedRoute {
                    user: None,
                    source: Some("10.0.0.1/8".into()),
                    ..ManagedRoute::user("", "sales")
                },
                "did you mean \"10.0.0.0/8\"",
            ),
            (
                ManagedRoute {
                    user: None,
                    ..ManagedRoute::user("", "sales")
                },
                "at least one of",
            ),
        ];
        for (route, says) in cases {
            let e = store
                .set_routes(vec![ManagedRoute::user("1", "jazz"), route.clone()])
                .unwrap_err();
            assert!(matches!(e, StoreError::BadRoute { index: 1, .. }), "{e}");
            assert!(e.to_string().starts_with("route 2: "), "{e}");
            assert!(e.to_string().contains(says), "{route:?}: {e}");
            assert_eq!(e.http_status(), 400);
        }
        assert!(store.routes().is_empty());
    }

    #[test]
    fn the_effective_dialplan_puts_managed_routes_between_config_routes_and_default() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        store
            .set_routes(vec![
                ManagedRoute::user("6*", "sales"),
                ManagedRoute::user("1*", "sales"),
            ])
            .unwrap();
        let config = Dialplan::new(
            vec![Route::new("jazz").user(Pattern::parse("1*").unwrap())],
            Some("default".into()),
        );
        let plan = store.dialplan(&config);
        let route = |user| {
            plan.route(&RouteRequest {
                ruri_user: Some(user),
                to_user: None,
                from_user: None,
                source: "192.0.2.1".parse().unwrap(),
            })
            .map(str::to_owned)
        };
        assert_eq!(route("100").as_deref(), Some("jazz"), "config routes first");
        assert_eq!(route("600").as_deref(), Some("sales"));
        assert_eq!(route("900").as_deref(), Some("default"));
        assert_eq!(plan.routes().len(), 3);
        assert!(
            plan.describe()[1].contains("channels.json"),
            "{:?}",
            plan.describe()
        );
    }

    #[test]
    fn a_deleted_track_leaves_every_channel() {
        let (dir, lib) = library(&["a.wav", "b.wav"]);
        let (a, b) = (id(&lib, "a.wav"), id(&lib, "b.wav"));
        let mut store = open(dir.path());
        let mut s = spec("sales", vec![a.clone(), b.clone()]);
        s.greeting = Some(Clip::Library(a.clone()));
        store.create(s, Some(&lib)).unwrap();
        store
            .create(spec("night", vec![a.clone()]), Some(&lib))
            .unwrap();
        store
            .create(spec("other", vec![b.clone()]), Some(&lib))
            .unwrap();
        assert_eq!(store.channels_using_track(&a), ["night", "sales"]);
        assert_eq!(store.remove_track(&a).unwrap(), ["night", "sales"]);
        assert!(store.channels_using_track(&a).is_empty());
        let again = open(dir.path());
        assert_eq!(
            again.channel("sales").unwrap().main.music,
            Music::Tracks(vec![b.clone()])
        );
        assert_eq!(again.channel("sales").unwrap().greeting, None);
        assert_eq!(
            again.channel("night").unwrap().main.music,
            Music::Tracks(vec![])
        );
        assert_eq!(store.remove_track(&a).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_newer_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHANNELS_JSON);
        let newer = br#"{"version": 2, "channels": "a shape we do not know"}"#;
        fs::write(&path, newer).unwrap();
        let e = ChannelStore::open(dir.path(), ["default"]).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::File(StateFileError::UnsupportedVersion { version: 2, .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade mohd"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), newer);
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHANNELS_JSON);
        fs::write(&path, b"{\"version\": 1, \"channels\": [tru").unwrap();
        let store = ChannelStore::open(dir.path(), ["default"]).unwrap();
        assert!(names(&store).is_empty());
        assert!(!path.exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("channels.json.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn a_stored_channel_whose_name_the_config_now_takes_is_held_not_lost() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        store.create(spec("night", vec![]), Some(&lib)).unwrap();
        drop(store);
        let mut store = ChannelStore::open(dir.path(), ["default", "sales"]).unwrap();
        assert_eq!(names(&store), ["night"]);
        assert_eq!(store.held().len(), 1);
        assert!(
            store.held()[0].1.contains("config file"),
            "{:?}",
            store.held()
        );
        // Another change keeps it in the file; deleting it removes it.
        store.create(spec("other", vec![]), Some(&lib)).unwrap();
        assert_eq!(
            ChannelStore::open(dir.path(), ["default", "sales"])
                .unwrap()
                .held()
                .len(),
            1
        );
        assert!(matches!(
            store.create(spec("sales", vec![]), Some(&lib)),
            Err(StoreError::NameTaken(_))
        ));
        store.delete("sales", false).unwrap();
        let again = ChannelStore::open(dir.path(), ["default"]).unwrap();
        assert_eq!(names(&again), ["night", "other"]);
        assert!(again.held().is_empty());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let (dir, lib) = library(&[]);
        let mut store = open(dir.path());
        store.create(spec("sales", vec![]), Some(&lib)).unwrap();
        // A non-empty folder where channels.json should be: the rename cannot replace it.
        let path = dir.path().join(CHANNELS_JSON);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"").unwrap();
        let e = store.create(spec("night", vec![]), Some(&lib)).unwrap_err();
        assert!(e.to_string().contains("channels.json"), "{e}");
        assert_eq!(e.http_status(), 500);
        assert!(matches!(
            store.delete("sales", false),
            Err(StoreError::File(_))
        ));
        assert_eq!(names(&store), ["sales"]);
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("channels.json.tmp-00000000000000ab");
        fs::write(&stale, b"{").unwrap();
        let other = dir.path().join("library.json.tmp-00000000000000ab");
        fs::write(&other, b"{").unwrap();
        ChannelStore::open(dir.path(), ["default"]).unwrap();
        assert!(!stale.exists());
        assert!(other.exists(), "not ours to clean");
    }
}
