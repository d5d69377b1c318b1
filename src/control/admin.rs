//! The channel admin backend: [`ChannelAdmin`] for [`Control`], the web's view of channels
//! and routes as managed objects.
//!
//! Owns the mapping between the API's shapes (`web::backend`'s channel DTOs) and the content
//! model (`channel::spec::ChannelSpec`): a channel as the page and the REST API show it
//! (library tracks named, routes and now/next attached) and a request turned into a spec,
//! checked against the library (every track id must exist). Persistence and the effective
//! set's rules (names unique across the config file and the managed channels, routes naming
//! existing channels, deleting a routed-to channel) belong to the channel store; re-planning
//! what plays belongs to the conductor. This module only calls them.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::channel::MusicSource;
use crate::channel::spec::{
    Announcements, ChannelMode, ChannelSpec, Clip, DEFAULT_ANNOUNCEMENT_FADE_MS, Interject,
    MAIN_PROGRAMME, Music, Origin, ProgrammeSpec, SwitchAt,
};
use crate::channel::store::{ChannelStore, StoreError};
use crate::library::{Library, Track};
use crate::schedule::{DatedException, Schedule, TimeOfDay, Weekdays, WeeklyRange};
use crate::web::backend::{
    AnnouncementsDto, AnnouncementsInput, ApiError, ChannelAdmin, ChannelDto, ChannelInput,
    ChannelStatusDto, DatedDto, DeleteRefused, DialplanDto, ManagedRouteDto, ProgrammeDto,
    ProgrammeInput, RouteDto, ScheduleDto, TrackRefDto, WeeklyDto,
};
use crate::web::backend::{ChannelMode as ModeDto, SwitchAt as SwitchDto};

use super::Control;

/// Loudness targets an admin may set, LUFS (as the library's setting).
const LOUDNESS_RANGE: std::ops::RangeInclusive<f64> = -40.0..=-5.0;
/// Longest fade around an announcement or at a schedule switch.
const MAX_FADE_MS: u32 = 10_000;
/// A fade switch without its length fades over this.
const DEFAULT_SWITCH_FADE_MS: u32 = 2_000;

/// The library as channels name it: every track by id, and the playlist of
/// `music = "library"` channels (enabled tracks in order).
#[derive(Debug, Default, Clone)]
pub(crate) struct TrackNames {
    names: BTreeMap<String, String>,
    playlist: Vec<String>,
}

impl TrackNames {
    pub(crate) fn of(tracks: &[Track]) -> TrackNames {
        TrackNames {
            names: tracks
                .iter()
                .map(|t| (t.id.clone(), t.name.clone()))
                .collect(),
            playlist: tracks
                .iter()
                .filter(|t| t.enabled)
                .map(|t| t.id.clone())
                .collect(),
        }
    }

    fn track_ref(&self, id: &str) -> TrackRefDto {
        TrackRefDto {
            id: Some(id.to_owned()),
            name: self
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| "(missing)".to_owned()),
        }
    }

    /// `id`, if the library has it; else the 422 the admin sees.
    fn known(&self, id: &str, what: &str) -> Result<String, ApiError> {
        if self.names.contains_key(id) {
            Ok(id.to_owned())
        } else {
            Err(ApiError::new(
                422,
                format!("{what}: no library track has id {id:?}"),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spec -> DTO

fn clip_ref(clip: &Clip, tracks: &TrackNames) -> TrackRefDto {
    match clip {
        Clip::Library(id) => tracks.track_ref(id),
        Clip::File(path) => TrackRefDto {
            id: None,
            name: path.display().to_string(),
        },
    }
}

fn music_value(music: &Music) -> serde_json::Value {
    match music {
        Music::LibraryPlaylist => serde_json::json!("library"),
        Music::Tracks(_) => serde_json::json!("tracks"),
        Music::Source(MusicSource::Demo) => serde_json::json!("demo"),
        Music::Source(MusicSource::Files(f)) => serde_json::json!(
            f.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        ),
    }
}

fn playlist_refs(music: &Music, tracks: &TrackNames) -> Vec<TrackRefDto> {
    match music {
        Music::LibraryPlaylist => tracks
            .playlist
            .iter()
            .map(|id| tracks.track_ref(id))
            .collect(),
        Music::Tracks(ids) => ids.iter().map(|id| tracks.track_ref(id)).collect(),
        Music::Source(MusicSource::Demo) => Vec::new(),
        Music::Source(MusicSource::Files(f)) => f
            .iter()
            .map(|p| clip_ref(&Clip::File(p.clone()), tracks))
            .collect(),
    }
}

fn announcements_dto(a: &Announcements, tracks: &TrackNames) -> AnnouncementsDto {
    let (every_seconds, every_tracks) = match a.every {
        Interject::EverySeconds(n) => (Some(n), None),
        Interject::EveryTracks(k) => (None, Some(k)),
    };
    AnnouncementsDto {
        clips: a.clips.iter().map(|c| clip_ref(c, tracks)).collect(),
        every_seconds,
        every_tracks,
        loudness_lufs: a.loudness_lufs,
        fade_out_ms: a.fade_out_ms,
        fade_in_ms: a.fade_in_ms,
    }
}

fn mode_dto(mode: ChannelMode) -> ModeDto {
    match mode {
        ChannelMode::Shared => ModeDto::Shared,
        ChannelMode::FromStart => ModeDto::FromStart,
    }
}

/// A channel as the API shows it. `routes` are the match descriptions of the routes to it.
pub(crate) fn channel_dto(
    spec: &ChannelSpec,
    tracks: &TrackNames,
    routes: Vec<String>,
    default: bool,
    status: Option<ChannelStatusDto>,
) -> ChannelDto {
    let (switch, switch_fade_ms) = match spec.switch {
        SwitchAt::TrackEnd => (SwitchDto::TrackEnd, None),
        SwitchAt::Fade { ms } => (SwitchDto::Fade, Some(ms)),
    };
    ChannelDto {
        name: spec.name.clone(),
        origin: match spec.origin {
            Origin::ConfigFile => "config-file",
            Origin::Managed => "managed",
        }
        .to_owned(),
        read_only: spec.origin == Origin::ConfigFile,
        music: music_value(&spec.main.music),
        loudness_lufs: spec.loudness_lufs,
        mode: mode_dto(spec.mode),
        shuffle: spec.main.shuffle,
        playlist: playlist_refs(&spec.main.music, tracks),
        announcements: spec
            .main
            .announcements
            .as_ref()
            .map(|a| announcements_dto(a, tracks)),
        greeting: spec.greeting.as_ref().map(|g| clip_ref(g, tracks)),
        schedule: spec.schedule.as_ref().map(schedule_dto),
        programmes: spec
            .programmes
            .iter()
            .map(|(name, p)| {
                let dto = ProgrammeDto {
                    playlist: playlist_refs(&p.music, tracks),
                    shuffle: p.shuffle,
                    announcements: p
                        .announcements
                        .as_ref()
                        .map(|a| announcements_dto(a, tracks)),
                };
                (name.clone(), dto)
            })
            .collect(),
        switch,
        switch_fade_ms,
        routes,
        default,
        status,
    }
}

fn schedule_dto(s: &Schedule) -> ScheduleDto {
    ScheduleDto {
        timezone: s.timezone().to_owned(),
        default: s.default_programme().to_owned(),
        weekly: s
            .weekly()
            .iter()
            .map(|w| WeeklyDto {
                days: w.days.to_string(),
                from: w.from.to_string(),
                to: w.to.to_string(),
                programme: w.programme.clone(),
            })
            .collect(),
        dates: s
            .dated()
            .iter()
            .map(|d| DatedDto {
                date: d.date.to_string(),
                from: d.from.map(|t| t.to_string()),
                to: d.to.map(|t| t.to_string()),
                programme: d.programme.clone(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Input -> spec

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(422, message)
}

/// Channel names: 1-64 of `A-Z a-z 0-9 _ -` (they appear in URLs, routes and file names).
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "bad channel name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

fn fade(ms: Option<u32>, what: &str) -> Result<u32, ApiError> {
    let ms = ms.unwrap_or(DEFAULT_ANNOUNCEMENT_FADE_MS);
    if ms > MAX_FADE_MS {
        return Err(bad(format!("{what} must be at most {MAX_FADE_MS} ms")));
    }
    Ok(ms)
}

fn announcements_spec(
    a: AnnouncementsInput,
    tracks: &TrackNames,
    at: &str,
) -> Result<Announcements, ApiError> {
    let every = match (a.every_seconds, a.every_tracks) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(bad(format!("{at}: announcements every 0 is never")));
        }
        (Some(n), None) => Interject::EverySeconds(n),
        (None, Some(k)) => Interject::EveryTracks(k),
        _ => {
            return Err(bad(format!(
                "{at}: set exactly one of every_seconds and every_tracks"
            )));
        }
    };
    if a.clips.is_empty() {
        return Err(bad(format!("{at}: announcements need at least one clip")));
    }
    if let Some(l) = a.loudness_lufs
        && !LOUDNESS_RANGE.contains(&l)
    {
        return Err(bad(format!(
            "{at}: announcement loudness must be -40 to -5 LUFS"
        )));
    }
    let clips = a
        .clips
        .iter()
        .map(|id| tracks.known(id, &format!("{at} clip")).map(Clip::Library))
        .collect::<Result<_, _>>()?;
    Ok(Announcements {
        clips,
        every,
        loudness_lufs: a.loudness_lufs,
        fade_out_ms: fade(a.fade_out_ms, "fade_out_ms")?,
        fade_in_ms: fade(a.fade_in_ms, "fade_in_ms")?,
    })
}

fn programme_spec(
    playlist: Vec<String>,
    shuffle: bool,
    announcements: Option<AnnouncementsInput>,
    tracks: &TrackNames,
    at: &str,
) -> Result<ProgrammeSpec, ApiError> {
    let ids = playlist
        .iter()
        .map(|id| tracks.known(id, &format!("{at} playlist")))
        .collect::<Result<_, _>>()?;
    Ok(ProgrammeSpec {
        music: Music::Tracks(ids),
        shuffle,
        announcements: announcements
            .map(|a| announcements_spec(a, tracks, at))
            .transpose()?,
    })
}

/// The admin's schedule, checked as the config file's is: a known zone, readable days and
/// times, programmes this channel has, no overlapping ranges (the reason names both).
fn schedule_spec(s: ScheduleDto, programmes: &[&str]) -> Result<Schedule, ApiError> {
    let reason = |m: String| bad(format!("schedule: {m}"));
    let time = |t: &str| TimeOfDay::parse(t).map_err(reason);
    let mut weekly = Vec::with_capacity(s.weekly.len());
    for w in s.weekly {
        weekly.push(WeeklyRange {
            days: Weekdays::parse(&w.days).map_err(reason)?,
            from: time(&w.from)?,
            to: time(&w.to)?,
            programme: w.programme,
        });
    }
    let mut dated = Vec::with_capacity(s.dates.len());
    for d in s.dates {
        dated.push(DatedException {
            date: d
                .date
                .parse()
                .map_err(|_| reason(format!("{:?}: expected a date as YYYY-MM-DD", d.date)))?,
            from: d.from.as_deref().map(time).transpose()?,
            to: d.to.as_deref().map(time).transpose()?,
            programme: d.programme,
        });
    }
    let schedule =
        Schedule::new(&s.timezone, &s.default, weekly, dated).map_err(|e| reason(e.to_string()))?;
    schedule
        .validate(programmes.iter().copied())
        .map_err(|e| reason(e.to_string()))?;
    Ok(schedule)
}

/// A managed channel from the admin's input, every library reference checked.
/// `default_loudness` is used when the input sets none.
pub(crate) fn spec_from_input(
    name: &str,
    input: ChannelInput,
    tracks: &TrackNames,
    default_loudness: f64,
) -> Result<ChannelSpec, ApiError> {
    check_name(name)?;
    let loudness_lufs = input.loudness_lufs.unwrap_or(default_loudness);
    if !LOUDNESS_RANGE.contains(&loudness_lufs) {
        return Err(bad("loudness_lufs must be -40 to -5 LUFS"));
    }
    let main = programme_spec(
        input.playlist,
        input.shuffle,
        input.announcements,
        tracks,
        MAIN_PROGRAMME,
    )?;
    let mut programmes = BTreeMap::new();
    for (pname, p) in input.programmes {
        let ProgrammeInput {
            playlist,
            shuffle,
            announcements,
        } = p;
        if pname == MAIN_PROGRAMME {
            return Err(bad(
                "programme \"main\" is the channel's own playlist: name the others differently",
            ));
        }
        check_name(&pname).map_err(|_| bad(format!("bad programme name {pname:?}")))?;
        let at = format!("programme {pname}");
        let spec = programme_spec(playlist, shuffle, announcements, tracks, &at)?;
        programmes.insert(pname, spec);
    }
    let names: Vec<&str> = std::iter::once(MAIN_PROGRAMME)
        .chain(programmes.keys().map(String::as_str))
        .collect();
    let schedule = input
        .schedule
        .map(|s| schedule_spec(s, &names))
        .transpose()?;
    let switch = match input.switch {
        SwitchDto::TrackEnd => SwitchAt::TrackEnd,
        SwitchDto::Fade => SwitchAt::Fade {
            ms: match input.switch_fade_ms.unwrap_or(DEFAULT_SWITCH_FADE_MS) {
                ms if ms > MAX_FADE_MS => {
                    return Err(bad(format!("switch_fade_ms must be at most {MAX_FADE_MS}")));
                }
                ms => ms,
            },
        },
    };
    Ok(ChannelSpec {
        name: name.to_owned(),
        origin: Origin::Managed,
        mode: match input.mode {
            ModeDto::Shared => ChannelMode::Shared,
            ModeDto::FromStart => ChannelMode::FromStart,
        },
        loudness_lufs,
        main,
        programmes,
        greeting: input
            .greeting
            .map(|g| tracks.known(&g, "greeting").map(Clip::Library))
            .transpose()?,
        schedule,
        switch,
    })
}

// ---------------------------------------------------------------------------------------------
// Control

/// The store's refusals as the API answers them; bad input the store finds (an invalid spec, a
/// route that cannot work, a file path) is 422 like the bad input found here.
fn store_error(e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::Invalid(_) | StoreError::BadRoute { .. } | StoreError::FileNotAllowed(_) => 422,
        _ => e.http_status(),
    };
    ApiError::new(status, e.to_string())
}

impl Control {
    fn track_names(&self) -> TrackNames {
        self.with_library(|l| Ok(TrackNames::of(l.tracks())))
            .unwrap_or_default()
    }

    /// Runs a change on the channel store with the library (locked in that order, as the
    /// conductor does), then has the conductor re-plan and publish the dialplan.
    fn change_channels<T>(
        &self,
        change: impl FnOnce(&mut ChannelStore, Option<&Library>) -> Result<T, StoreError>,
    ) -> Result<T, ApiError> {
        self.refuse_if_following()?;
        let store = self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                503,
                "managed channels are not available: the state folder cannot hold them",
            )
        })?;
        let out = {
            let mut store = store
                .lock()
                .map_err(|_| ApiError::new(500, "the channel store's lock is poisoned"))?;
            let library = self.library.as_ref().ok().and_then(|l| l.lock().ok());
            change(&mut store, library.as_deref()).map_err(store_error)?
        };
        self.channels_changed();
        Ok(out)
    }

    /// A managed channel from `input`, named `name`, checked against the library.
    fn managed_spec(&self, name: &str, input: ChannelInput) -> Result<ChannelSpec, ApiError> {
        spec_from_input(name, input, &self.track_names(), self.library_loudness())
    }
}

impl ChannelAdmin for Control {
    fn channels(&self) -> Vec<ChannelDto> {
        let tracks = self.track_names();
        let programmes = self.programmes_now();
        let mut statuses: BTreeMap<String, ChannelStatusDto> = self
            .channel_statuses(Instant::now())
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let dialplan = self.effective_dialplan();
        self.effective_specs()
            .into_iter()
            .map(|mut spec| {
                // The library's loudness setting applies to the channels that play it.
                if spec.origin == Origin::ConfigFile
                    && let Some(p) = programmes.get(&spec.name)
                {
                    spec.loudness_lufs = p.loudness_lufs;
                }
                let routes = dialplan
                    .routes()
                    .iter()
                    .filter(|r| r.channel() == spec.name)
                    .map(|r| r.describe_match())
                    .collect();
                let default = dialplan.default_channel() == Some(spec.name.as_str());
                let status = statuses.remove(&spec.name);
                channel_dto(&spec, &tracks, routes, default, status)
            })
            .collect()
    }

    fn create_channel(&self, input: ChannelInput) -> Result<ChannelDto, ApiError> {
        let name = input
            .name
            .clone()
            .ok_or_else(|| bad("name the channel: \"name\" is required"))?;
        let spec = self.managed_spec(&name, input)?;
        self.change_channels(|store, library| store.create(spec, library))?;
        self.channel(&name)
    }

    fn replace_channel(&self, name: &str, input: ChannelInput) -> Result<ChannelDto, ApiError> {
        let new_name = input.name.clone().unwrap_or_else(|| name.to_owned());
        let spec = self.managed_spec(&new_name, input)?;
        self.change_channels(|store, library| store.update(name, spec, library))?;
        self.channel(&new_name)
    }

    fn rename_channel(&self, name: &str, new_name: &str) -> Result<ChannelDto, ApiError> {
        check_name(new_name)?;
        self.change_channels(|store, _| store.rename(name, new_name))?;
        self.channel(new_name)
    }

    fn set_channel_playlist(
        &self,
        name: &str,
        tracks: Vec<String>,
    ) -> Result<ChannelDto, ApiError> {
        let names = self.track_names();
        let ids = tracks
            .iter()
            .map(|id| names.known(id, "playlist"))
            .collect::<Result<Vec<_>, _>>()?;
        let config_file = self.config.channels.contains_key(name);
        self.change_channels(|store, library| {
            let mut spec = match store.channel(name) {
                Some(spec) => spec.clone(),
                None if config_file => return Err(StoreError::ReadOnly(name.to_owned())),
                None => return Err(StoreError::NotFound(name.to_owned())),
            };
            spec.main.music = Music::Tracks(ids);
            store.update(name, spec, library)
        })?;
        self.channel(name)
    }

    fn delete_channel(&self, name: &str, remove_routes: bool) -> Result<(), DeleteRefused> {
        match self.change_channels(|store, _| match store.delete(name, remove_routes) {
            Err(StoreError::RoutedTo { routes, .. }) => Ok(Err(routes)),
            other => other.map(|_| Ok(())),
        })? {
            Ok(()) => Ok(()),
            Err(routes) => Err(DeleteRefused::RoutedTo(routes)),
        }
    }

    fn managed_routes(&self) -> Vec<ManagedRouteDto> {
        self.store
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.routes().to_vec()))
            .unwrap_or_default()
    }

    fn set_managed_routes(
        &self,
        routes: Vec<ManagedRouteDto>,
    ) -> Result<Vec<ManagedRouteDto>, ApiError> {
        self.change_channels(|store, _| store.set_routes(routes))?;
        Ok(self.managed_routes())
    }

    fn dialplan(&self) -> DialplanDto {
        let dialplan = self.effective_dialplan();
        DialplanDto {
            routes: dialplan
                .routes()
                .iter()
                .map(|r| RouteDto {
                    r#match: r.describe_match(),
                    channel: r.channel().to_owned(),
                })
                .collect(),
            default_channel: dialplan.default_channel().map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::backend::{DatedDto, WeeklyDto};

    fn library() -> TrackNames {
        TrackNames {
            names: [("aaa", "one.wav"), ("bbb", "two.wav"), ("ccc", "hello.wav")]
                .into_iter()
                .map(|(i, n)| (i.to_owned(), n.to_owned()))
                .collect(),
            playlist: vec!["aaa".into(), "bbb".into()],
        }
    }

    fn full_input() -> ChannelInput {
        ChannelInput {
            name: Some("sales".into()),
            mode: ModeDto::FromStart,
            loudness_lufs: Some(-20.0),
            shuffle: true,
            playlist: vec!["aaa".into(), "bbb".into(), "aaa".into()],
            announcements: Some(AnnouncementsInput {
                clips: vec!["ccc".into()],
                every_seconds: Some(30),
                every_tracks: None,
                loudness_lufs: None,
                fade_out_ms: Some(500),
                fade_in_ms: None,
            }),
            greeting: Some("ccc".into()),
            schedule: Some(ScheduleDto {
                timezone: "Europe/London".into(),
                default: "closed".into(),
                weekly: vec![WeeklyDto {
                    days: "mon-fri".into(),
                    from: "09:00".into(),
                    to: "17:30".into(),
                    programme: "main".into(),
                }],
                dates: vec![DatedDto {
                    date: "2026-12-25".into(),
                    from: None,
                    to: None,
                    programme: "closed".into(),
                }],
            }),
            programmes: [(
                "closed".to_owned(),
                ProgrammeInput {
                    playlist: vec!["bbb".into()],
                    shuffle: false,
                    announcements: None,
                },
            )]
            .into_iter()
            .collect(),
            switch: SwitchDto::Fade,
            switch_fade_ms: Some(1500),
        }
    }

    #[test]
    fn an_input_becomes_a_managed_spec_and_shows_back_with_track_names() {
        let tracks = library();
        let spec = spec_from_input("sales", full_input(), &tracks, -18.0).unwrap();
        assert_eq!(spec.origin, Origin::Managed);
        assert_eq!(spec.mode, ChannelMode::FromStart);
        assert_eq!(
            spec.main.music,
            Music::Tracks(vec!["aaa".into(), "bbb".into(), "aaa".into()])
        );
        assert!(spec.main.shuffle);
        let a = spec.main.announcements.as_ref().unwrap();
        assert_eq!(a.every, Interject::EverySeconds(30));
        assert_eq!(
            (a.fade_out_ms, a.fade_in_ms),
            (500, DEFAULT_ANNOUNCEMENT_FADE_MS)
        );
        assert_eq!(spec.greeting, Some(Clip::Library("ccc".into())));
        assert_eq!(spec.switch, SwitchAt::Fade { ms: 1500 });
        assert!(spec.programmes.contains_key("closed"));

        let dto = channel_dto(&spec, &tracks, vec!["user = \"7*\"".into()], false, None);
        assert_eq!(dto.origin, "managed");
        assert!(!dto.read_only);
        assert_eq!(dto.music, serde_json::json!("tracks"));
        let names: Vec<&str> = dto.playlist.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["one.wav", "two.wav", "one.wav"]);
        assert_eq!(dto.greeting.as_ref().unwrap().name, "hello.wav");
        assert_eq!(dto.announcements.as_ref().unwrap().every_seconds, Some(30));
        assert_eq!(dto.programmes["closed"].playlist[0].name, "two.wav");
        assert_eq!(dto.switch_fade_ms, Some(1500));
        assert_eq!(dto.schedule.as_ref().unwrap().timezone, "Europe/London");
    }

    /// An edit that makes [`full_input`] bad.
    type Change = Box<dyn Fn(&mut ChannelInput)>;

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let tracks = library();
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "bad name",
                Box::new(|i| i.name = Some("a b".into())),
                "bad channel name",
            ),
            (
                "unknown track",
                Box::new(|i| i.playlist.push("zzz".into())),
                "\"zzz\"",
            ),
            (
                "unknown greeting",
                Box::new(|i| i.greeting = Some("zzz".into())),
                "greeting",
            ),
            (
                "loudness",
                Box::new(|i| i.loudness_lufs = Some(-3.0)),
                "-40 to -5",
            ),
            (
                "both intervals",
                Box::new(|i| {
                    if let Some(a) = i.announcements.as_mut() {
                        a.every_tracks = Some(2);
                    }
                }),
                "exactly one",
            ),
            (
                "zero interval",
                Box::new(|i| {
                    if let Some(a) = i.announcements.as_mut() {
                        a.every_seconds = Some(0);
                    }
                }),
                "every 0",
            ),
            (
                "unknown zone",
                Box::new(|i| {
                    if let Some(s) = i.schedule.as_mut() {
                        s.timezone = "Mars/Olympus".into();
                    }
                }),
                "unknown time zone \"Mars/Olympus\"",
            ),
            (
                "unknown programme",
                Box::new(|i| {
                    if let Some(s) = i.schedule.as_mut() {
                        s.default = "lunch".into();
                    }
                }),
                "no programme \"lunch\"",
            ),
            (
                "long fade",
                Box::new(|i| i.switch_fade_ms = Some(60_000)),
                "switch_fade_ms",
            ),
        ];
        for (what, change, words) in cases {
            let mut input = full_input();
            change(&mut input);
            let name = input.name.clone().unwrap();
            let e = spec_from_input(&name, input, &tracks, -18.0).unwrap_err();
            assert_eq!(e.status, 422, "{what}: {e}");
            assert!(e.message.contains(words), "{what}: {e}");
        }
    }

    #[test]
    fn config_file_channels_show_their_files_and_the_library_playlist() {
        let tracks = library();
        let lib = ChannelSpec::simple("default", Origin::ConfigFile, Music::LibraryPlaylist, -18.0);
        let dto = channel_dto(&lib, &tracks, vec![], true, None);
        assert!(dto.read_only);
        assert_eq!(dto.origin, "config-file");
        assert_eq!(dto.music, serde_json::json!("library"));
        assert_eq!(dto.playlist.len(), 2);
        let files = Music::Source(MusicSource::Files(vec!["/m/a.flac".into()]));
        let dto = channel_dto(
            &ChannelSpec::simple("jazz", Origin::ConfigFile, files, -18.0),
            &tracks,
            vec![],
            false,
            None,
        );
        assert_eq!(dto.playlist[0].id, None);
        assert_eq!(dto.playlist[0].name, "/m/a.flac");
    }
}
