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
