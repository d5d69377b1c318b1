//! What a channel is **(pure)**: the content model every part of mohd shares.
//!
//! Owns the types that say what a channel plays, whichever place defined it (the config file or
//! the admin's changes over the API, persisted in the state folder): its mode, loudness, its
//! main programme (playlist, shuffle, announcements), other named programmes a schedule can
//! choose, a greeting, and a schedule. Rendering, serving, persistence and the web all take a
//! [`ChannelSpec`]; none of them keeps a second description of a channel.
//!
//! A *programme* is what plays between schedule switches: a playlist (in order or shuffled
//! at every pass) with announcements interjected. A *pass* is one play-through of a
//! programme's playlist, rendered once into a loop (render once, serve many).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MusicSource;
use crate::library::Library;
use crate::schedule::Schedule;

/// The name of the programme every channel has: the one its own playlist describes, played
/// when no schedule range applies.
pub const MAIN_PROGRAMME: &str = "main";

/// Where a channel is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `[channels.NAME]` in the config file: read-only over the API and on the page.
    ConfigFile,
    /// Created over the API or the page; persisted in the state folder.
    Managed,
}

/// How callers on one channel share the music.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelMode {
    /// Every caller hears the same position, like a radio.
    #[default]
    Shared,
    /// Each caller hears the programme from its start (a per-call offset into the same
    /// pre-encoded loop, not a render per caller).
    FromStart,
}

impl std::fmt::Display for ChannelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelMode::Shared => "shared",
            ChannelMode::FromStart => "from-start",
        })
    }
}

/// One sound a programme names: a file (config file channels) or a library track (managed
/// channels, by the track's id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clip {
    File(PathBuf),
    Library(String),
}

/// What a programme's playlist is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Music {
    /// As the config file says: files, folders (expanded at render time) or the demo melody.
    Source(MusicSource),
    /// The library's own playlist (enabled tracks in playlist order): `music = "library"`.
    LibraryPlaylist,
    /// A managed channel's playlist: library tracks by id, in order. Empty plays the demo
    /// melody (and the channel reports it has no music of its own).
    Tracks(Vec<String>),
}

/// When announcements are interjected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interject {
    /// Every this many seconds of the programme (announcement starts at N, 2N, ... seconds
    /// of programme time, counted from the pass start, announcements included).
    EverySeconds(u32),
    /// After every this many music tracks.
    EveryTracks(u32),
}

/// Announcements a programme interjects, rotating in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcements {
    pub clips: Vec<Clip>,
    pub every: Interject,
    /// Each announcement is normalised to this (default: the music's target + 3 LU).
    pub loudness_lufs: Option<f64>,
    /// The music fades out over this before an announcement...
    pub fade_out_ms: u32,
    /// ...and back in over this after it.
    pub fade_in_ms: u32,
}

/// Default fade of the music around an announcement.
pub const DEFAULT_ANNOUNCEMENT_FADE_MS: u32 = 800;
/// Longest fade anywhere in a channel (announcements, schedule switches): longer is a typo
/// for seconds, and would leave callers in near-silence.
pub const MAX_FADE_MS: u32 = 10_000;
/// Default fade of a `SwitchAt::Fade` schedule switch.
pub const DEFAULT_SWITCH_FADE_MS: u32 = 2_000;
/// The loudness targets a channel or an announcement may have, LUFS.
pub const LOUDNESS_RANGE: std::ops::RangeInclusive<f64> = -40.0..=-5.0;
/// An announcement is this much louder than the music unless set.
pub const DEFAULT_ANNOUNCEMENT_LIFT_LU: f64 = 3.0;

/// A programme: what plays between schedule switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgrammeSpec {
    pub music: Music,
    /// Re-shuffled at every pass (seeded; never the same track twice across a pass boundary).
    pub shuffle: bool,
    pub announcements: Option<Announcements>,
}

/// How calls in progress move to another programme at a schedule boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchAt {
    /// At the end of the track playing when the boundary passes (default).
    TrackEnd,
    /// At once: the music fades out over this many ms, then the new programme starts.
    Fade { ms: u32 },
}

/// A channel: everything that decides what its callers hear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSpec {
    pub name: String,
    pub origin: Origin,
    pub mode: ChannelMode,
    /// Integrated loudness target of the music, LUFS.
    pub loudness_lufs: f64,
    /// The programme its own playlist describes ([`MAIN_PROGRAMME`]).
    pub main: ProgrammeSpec,
    /// Other programmes, by name, that the schedule can choose.
    pub programmes: BTreeMap<String, ProgrammeSpec>,
    /// Played to each caller from its start before the programme (Asterisk's `announcement=`).
    pub greeting: Option<Clip>,
    pub schedule: Option<Schedule>,
    pub switch: SwitchAt,
}

impl ChannelSpec {
    /// A channel playing `music` in order, shared, at `loudness_lufs`, nothing else.
    pub fn simple(name: &str, origin: Origin, music: Music, loudness_lufs: f64) -> ChannelSpec {
        ChannelSpec {
            name: name.to_owned(),
            origin,
            mode: ChannelMode::Shared,
            loudness_lufs,
            main: ProgrammeSpec {
                music,
                shuffle: false,
                announcements: None,
            },
            programmes: BTreeMap::new(),
            greeting: None,
            schedule: None,
            switch: SwitchAt::TrackEnd,
        }
    }

    /// The programme called `name` ([`MAIN_PROGRAMME`] or one of `programmes`).
    pub fn programme(&self, name: &str) -> Option<&ProgrammeSpec> {
        if name == MAIN_PROGRAMME {
            Some(&self.main)
        } else {
            self.programmes.get(name)
        }
    }

    /// Every programme name this channel defines, main first.
    pub fn programme_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(MAIN_PROGRAMME).chain(self.programmes.keys().map(String::as_str))
    }
}

/// Why a channel description cannot be used. The message names the part and the rule, for an
/// API answer (400) or after a config file's location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The channel's name breaks [`valid_name`]'s rule.
    #[error(
        "{0:?}: a channel name is 1 to 64 letters, digits, '-' or '_' (it appears in logs and URLs)"
    )]
    ChannelName(String),
    /// A programme's name breaks [`valid_name`]'s rule.
    #[error("{0:?}: a programme name is 1 to 64 letters, digits, '-' or '_'")]
    ProgrammeName(String),
    /// `programmes` has an entry called [`MAIN_PROGRAMME`].
    #[error("\"main\" is the channel's own playlist; give the other programme another name")]
    MainRedefined,
    /// A loudness target outside [`LOUDNESS_RANGE`] (or not a number).
    #[error("{what}: {value}: must be within -40.0..=-5.0 LUFS")]
    Loudness { what: String, value: f64 },
    /// Announcements every 0 seconds or every 0 tracks.
    #[error("programme {programme:?}: announcements every 0 {unit}: must be at least 1")]
    EveryZero {
        programme: String,
        unit: &'static str,
    },
    /// A fade longer than [`MAX_FADE_MS`].
    #[error("{what}: {ms} ms: must be at most {MAX_FADE_MS} ms")]
    FadeTooLong { what: String, ms: u32 },
    /// Announcements without a single clip.
    #[error("programme {programme:?}: announcements name no file or track")]
    NoClips { programme: String },
    /// A clip with an empty path or track id.
    #[error("{what}: an empty file name or track id")]
    EmptyClip { what: String },
    /// The schedule names a programme the channel does not define, or is itself inconsistent.
    #[error("schedule: {0}")]
    Schedule(String),
}

/// A channel or programme name: 1 to 64 ASCII letters, digits, `-` or `_`, because it appears in
/// logs, URLs, metrics labels and file names.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ChannelSpec {
    /// Checks everything that can be checked without the library or the files: names,
    /// loudness targets, announcement intervals and fades, clips, and that the schedule names
    /// only programmes this channel defines. Whether tracks exist is the store's to check
    /// (it has the library); whether files decode, the renderer's (it skips and logs).
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.name) {
            return Err(SpecError::ChannelName(self.name.clone()));
        }
        check_loudness("loudness_lufs", self.loudness_lufs)?;
        if self.programmes.contains_key(MAIN_PROGRAMME) {
            return Err(SpecError::MainRedefined);
        }
        for (name, programme) in self.named_programmes() {
            if !valid_name(name) {
                return Err(SpecError::ProgrammeName(name.to_owned()));
            }
            programme.validate(name)?;
        }
        if let Some(greeting) = &self.greeting {
            check_clip("greeting", greeting)?;
        }
        if let SwitchAt::Fade { ms } = self.switch {
            check_fade("switch fade", ms)?;
        }
        if let Some(schedule) = &self.schedule {
            let names: Vec<&str> = self.programme_names().collect();
            validate_schedule(schedule, &names)?;
        }
        Ok(())
    }

    /// Every programme with its name, main first.
    pub fn named_programmes(&self) -> impl Iterator<Item = (&str, &ProgrammeSpec)> {
        std::iter::once((MAIN_PROGRAMME, &self.main))
            .chain(self.programmes.iter().map(|(n, p)| (n.as_str(), p)))
    }

    /// Every programme, mutably, main first.
    fn programmes_mut(&mut self) -> impl Iterator<Item = &mut ProgrammeSpec> {
        std::iter::once(&mut self.main).chain(self.programmes.values_mut())
    }

    /// Every library track id the channel names (playlists, announcements, greeting), each
    /// once: a library change re-renders the channel when it touches one of these.
    pub fn library_track_ids(&self) -> std::collections::BTreeSet<&str> {
        let mut ids = std::collections::BTreeSet::new();
        for (_, p) in self.named_programmes() {
            if let Music::Tracks(t) = &p.music {
                ids.extend(t.iter().map(String::as_str));
            }
            if let Some(a) = &p.announcements {
                ids.extend(a.clips.iter().filter_map(Clip::library_id));
            }
        }
        ids.extend(self.greeting.as_ref().and_then(Clip::library_id));
        ids
    }

    /// Whether a programme plays the library's own playlist (`music = "library"`), so any
    /// change to the library's order or enabled flags changes what it plays.
    pub fn plays_library_playlist(&self) -> bool {
        self.named_programmes()
            .any(|(_, p)| p.music == Music::LibraryPlaylist)
    }

    /// Removes the library track `id` from every playlist, the announcements and the
    /// greeting (the track was deleted from the library). Announcements left without a clip
    /// are removed. Returns whether anything changed.
    pub fn remove_track(&mut self, id: &str) -> bool {
        let is_it = |c: &Clip| c.library_id() == Some(id);
        let mut changed = false;
        for p in self.programmes_mut() {
            if let Music::Tracks(tracks) = &mut p.music {
                let before = tracks.len();
                tracks.retain(|t| t != id);
                changed |= tracks.len() != before;
            }
            if let Some(a) = &mut p.announcements {
                let before = a.clips.len();
                a.clips.retain(|c| !is_it(c));
                changed |= a.clips.len() != before;
                if a.clips.is_empty() {
                    p.announcements = None;
                }
            }
        }
        if self.greeting.as_ref().is_some_and(is_it) {
            self.greeting = None;
            changed = true;
        }
        changed
    }
}

impl ProgrammeSpec {
    fn validate(&self, name: &str) -> Result<(), SpecError> {
        if let Music::Tracks(ids) = &self.music
            && ids.iter().any(String::is_empty)
        {
            return Err(SpecError::EmptyClip {
                what: format!("programme {name:?} playlist"),
            });
        }
        let Some(a) = &self.announcements else {
            return Ok(());
        };
        let what = |part: &str| format!("programme {name:?} announcements {part}");
        if a.clips.is_empty() {
            return Err(SpecError::NoClips {
                programme: name.to_owned(),
            });
        }
        for clip in &a.clips {
            check_clip(&what("clip"), clip)?;
        }
        match a.every {
            Interject::EverySeconds(0) => Err(SpecError::EveryZero {
                programme: name.to_owned(),
                unit: "seconds",
            }),
            Interject::EveryTracks(0) => Err(SpecError::EveryZero {
                programme: name.to_owned(),
                unit: "tracks",
            }),
            _ => Ok(()),
        }?;
        if let Some(l) = a.loudness_lufs {
            check_loudness(&what("loudness_lufs"), l)?;
        }
        check_fade(&what("fade_out_ms"), a.fade_out_ms)?;
        check_fade(&what("fade_in_ms"), a.fade_in_ms)
    }
}

impl Announcements {
    /// The loudness each announcement is normalised to, for music at `music_lufs`.
    pub fn target_lufs(&self, music_lufs: f64) -> f64 {
        self.loudness_lufs
            .unwrap_or((music_lufs + DEFAULT_ANNOUNCEMENT_LIFT_LU).min(*LOUDNESS_RANGE.end()))
    }
}

impl Clip {
    /// The library track id, for a library clip.
    pub fn library_id(&self) -> Option<&str> {
        match self {
            Clip::Library(id) => Some(id),
            Clip::File(_) => None,
        }
    }
}

fn check_loudness(what: &str, value: f64) -> Result<(), SpecError> {
    // `contains` is false for NaN.
    if LOUDNESS_RANGE.contains(&value) {
        Ok(())
    } else {
        Err(SpecError::Loudness {
            what: what.to_owned(),
            value,
        })
    }
}

fn check_fade(what: &str, ms: u32) -> Result<(), SpecError> {
    if ms <= MAX_FADE_MS {
        Ok(())
    } else {
        Err(SpecError::FadeTooLong {
            what: what.to_owned(),
            ms,
        })
    }
}

fn check_clip(what: &str, clip: &Clip) -> Result<(), SpecError> {
    let empty = match clip {
        Clip::File(p) => p.as_os_str().is_empty(),
        Clip::Library(id) => id.is_empty(),
    };
    if empty {
        Err(SpecError::EmptyClip {
            what: what.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// The schedule's own consistency and that every programme it names is in `programmes`.
fn validate_schedule(schedule: &Schedule, programmes: &[&str]) -> Result<(), SpecError> {
    schedule
        .validate(programmes.iter().copied())
        .map_err(|e| SpecError::Schedule(e.to_string()))
}

/// What `music` plays now, as files (or the demo melody): the library's playlist or a
/// managed playlist's tracks looked up in `library`. A track no longer in the library is
/// skipped with a warning; a playlist with nothing left plays the demo melody, so a channel
/// never goes silent. `library` is `None` when it could not be opened.
pub fn resolve_music(channel: &str, music: &Music, library: Option<&Library>) -> MusicSource {
    let paths = match music {
        Music::Source(source) => return source.clone(),
        Music::LibraryPlaylist => library.map(Library::playlist_paths).unwrap_or_default(),
        Music::Tracks(ids) => ids
            .iter()
            .filter_map(|id| library_path(channel, "playlist", id, library))
            .collect(),
    };
    if paths.is_empty() {
        MusicSource::Demo
    } else {
        MusicSource::Files(paths)
    }
}

/// The file a clip (announcement or greeting) plays, or `None` (logged) if it is a library
/// track that is gone.
pub fn resolve_clip(channel: &str, clip: &Clip, library: Option<&Library>) -> Option<PathBuf> {
    match clip {
        Clip::File(path) => Some(path.clone()),
        Clip::Library(id) => library_path(channel, "clip", id, library),
    }
}

/// The files of the clips that can be found, in order (see [`resolve_clip`]).
pub fn resolve_clips(channel: &str, clips: &[Clip], library: Option<&Library>) -> Vec<PathBuf> {
    clips
        .iter()
        .filter_map(|c| resolve_clip(channel, c, library))
        .collect()
}

fn library_path(
    channel: &str,
    role: &'static str,
    id: &str,
    library: Option<&Library>,
) -> Option<PathBuf> {
    let path = library.and_then(|l| l.path_of(id));
    if path.is_none() {
        tracing::warn!(
            channel,
            track = id,
            role,
            "a library track the channel names is not in the library; skipped"
        );
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(tracks: &[&str]) -> ChannelSpec {
        ChannelSpec::simple(
            "sales",
            Origin::Managed,
            Music::Tracks(tracks.iter().map(|t| (*t).to_owned()).collect()),
            -18.0,
        )
    }

    fn announcements(clips: Vec<Clip>, every: Interject) -> Announcements {
        Announcements {
            clips,
            every,
            loudness_lufs: None,
            fade_out_ms: DEFAULT_ANNOUNCEMENT_FADE_MS,
            fade_in_ms: DEFAULT_ANNOUNCEMENT_FADE_MS,
        }
    }

    fn lib(id: &str) -> Clip {
        Clip::Library(id.to_owned())
    }

    #[test]
    fn a_simple_channel_is_valid() {
        managed(&["a1", "b2"]).validate().unwrap();
        managed(&[]).validate().unwrap();
    }

    #[test]
    fn names() {
        for bad in ["", "my jazz", "ü", &"x".repeat(65), "a/b"] {
            let mut c = managed(&[]);
            c.name = bad.to_owned();
            assert_eq!(c.validate(), Err(SpecError::ChannelName(bad.to_owned())));
        }
        let mut c = managed(&[]);
        c.name = "A-z_09".repeat(10) + "abcd";
        assert_eq!(c.name.len(), 64);
        c.validate().unwrap();
        c.programmes.insert("after hours".into(), c.main.clone());
        assert_eq!(
            c.validate(),
            Err(SpecError::ProgrammeName("after hours".into()))
        );
        let mut c = managed(&[]);
        c.programmes.insert(MAIN_PROGRAMME.into(), c.main.clone());
        assert_eq!(c.validate(), Err(SpecError::MainRedefined));
    }

    #[test]
    fn loudness_targets() {
        for bad in [-40.5, -4.9, 0.0, f64::NAN, f64::INFINITY] {
            let mut c = managed(&[]);
            c.loudness_lufs = bad;
            let e = c.validate().unwrap_err();
            assert!(
                matches!(&e, SpecError::Loudness { what, .. } if what == "loudness_lufs"),
                "{e}"
            );
        }
        let mut c = managed(&[]);
        let mut a = announcements(vec![lib("x")], Interject::EverySeconds(30));
        a.loudness_lufs = Some(-2.0);
        c.main.announcements = Some(a);
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "programme \"main\" announcements loudness_lufs: -2: must be within -40.0..=-5.0 LUFS"
        );
    }

    #[test]
    fn announcements_rules() {
        let with = |a: Announcements| {
            let mut c = managed(&["t"]);
            c.programmes.insert(
                "night".into(),
                ProgrammeSpec {
                    music: Music::Tracks(vec!["t".into()]),
                    shuffle: true,
                    announcements: Some(a),
                },
            );
            c.validate()
        };
        with(announcements(vec![lib("x")], Interject::EveryTracks(2))).unwrap();
        assert_eq!(
            with(announcements(vec![lib("x")], Interject::EverySeconds(0))),
            Err(SpecError::EveryZero {
                programme: "night".into(),
                unit: "seconds"
            })
        );
        assert_eq!(
            with(announcements(vec![lib("x")], Interject::EveryTracks(0)))
                .unwrap_err()
                .to_string(),
            "programme \"night\": announcements every 0 tracks: must be at least 1"
        );
        assert_eq!(
            with(announcements(vec![], Interject::EveryTracks(1))),
            Err(SpecError::NoClips {
                programme: "night".into()
            })
        );
        assert!(matches!(
            with(announcements(vec![lib("")], Interject::EveryTracks(1))),
            Err(SpecError::EmptyClip { .. })
        ));
        let mut long = announcements(vec![lib("x")], Interject::EveryTracks(1));
        long.fade_in_ms = MAX_FADE_MS + 1;
        assert_eq!(
            with(long).unwrap_err().to_string(),
            "programme \"night\" announcements fade_in_ms: 10001 ms: must be at most 10000 ms"
        );
        let mut edge = announcements(vec![lib("x")], Interject::EveryTracks(1));
        edge.fade_out_ms = MAX_FADE_MS;
        with(edge).unwrap();
    }

    #[test]
    fn switch_fade_and_greeting() {
        let mut c = managed(&[]);
        c.switch = SwitchAt::Fade { ms: 10_001 };
        assert!(matches!(
            c.validate(),
            Err(SpecError::FadeTooLong { ms: 10_001, .. })
        ));
        c.switch = SwitchAt::Fade { ms: 0 };
        c.greeting = Some(Clip::File(PathBuf::new()));
        assert_eq!(
            c.validate(),
            Err(SpecError::EmptyClip {
                what: "greeting".into()
            })
        );
    }

    #[test]
    fn the_schedule_names_only_defined_programmes() {
        let mut c = managed(&[]);
        c.schedule = Some(Schedule::new("Europe/London", "closed", vec![], vec![]).unwrap());
        let e = c.validate().unwrap_err();
        assert!(
            matches!(&e, SpecError::Schedule(m) if m.contains("\"closed\"") && m.contains("defined: main")),
            "{e}"
        );
        c.programmes.insert("closed".into(), c.main.clone());
        c.validate().unwrap();
    }

    #[test]
    fn removing_a_track_removes_it_everywhere() {
        let mut c = managed(&["a", "b", "a"]);
        c.main.announcements = Some(announcements(
            vec![lib("a"), Clip::File("/x.wav".into())],
            Interject::EverySeconds(30),
        ));
        c.programmes.insert(
            "night".into(),
            ProgrammeSpec {
                music: Music::Tracks(vec!["c".into()]),
                shuffle: false,
                announcements: Some(announcements(vec![lib("a")], Interject::EveryTracks(1))),
            },
        );
        c.greeting = Some(lib("a"));
        assert_eq!(
            c.library_track_ids().into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(c.remove_track("a"));
        assert_eq!(c.main.music, Music::Tracks(vec!["b".into()]));
        assert_eq!(
            c.main.announcements.as_ref().map(|a| a.clips.clone()),
            Some(vec![Clip::File("/x.wav".into())])
        );
        // Announcements with no clip left are gone, not an invalid empty rotation.
        assert_eq!(c.programmes["night"].announcements, None);
        assert_eq!(c.greeting, None);
        c.validate().unwrap();
        assert!(!c.remove_track("a"), "nothing left to remove");
        assert_eq!(
            c.library_track_ids().into_iter().collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn announcement_target_defaults_above_the_music() {
        let mut a = announcements(vec![lib("x")], Interject::EveryTracks(1));
        assert_eq!(a.target_lufs(-18.0), -15.0);
        assert_eq!(a.target_lufs(-6.0), -5.0, "capped at the loudest target");
        a.loudness_lufs = Some(-20.0);
        assert_eq!(a.target_lufs(-18.0), -20.0);
    }

    #[test]
    fn resolution_without_a_library_falls_back_to_the_demo() {
        let files = MusicSource::Files(vec!["/m/a.flac".into()]);
        assert_eq!(
            resolve_music("c", &Music::Source(files.clone()), None),
            files
        );
        assert_eq!(
            resolve_music("c", &Music::LibraryPlaylist, None),
            MusicSource::Demo
        );
        assert_eq!(
            resolve_music("c", &Music::Tracks(vec!["gone".into()]), None),
            MusicSource::Demo
        );
        assert_eq!(resolve_clip("c", &lib("gone"), None), None);
        assert_eq!(
            resolve_clips("c", &[lib("gone"), Clip::File("/a.wav".into())], None),
            [PathBuf::from("/a.wav")]
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut c = managed(&["a"]);
        c.mode = ChannelMode::FromStart;
        c.greeting = Some(lib("g"));
        c.switch = SwitchAt::Fade { ms: 1500 };
        c.main.announcements = Some(announcements(vec![lib("x")], Interject::EverySeconds(30)));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ChannelSpec>(&json).unwrap(), c);
    }
}
