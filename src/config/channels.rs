//! `[channels.NAME]`: what each channel plays (files, folders, the demo melody or the
//! uploaded library), how callers share it, its loudness target, shuffle, announcements, a
//! greeting, other programmes and the schedule that chooses between them, read into the
//! channel's [`ChannelSpec`].

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::{OneOrMany, RawAnnouncements, RawChannel, RawChannels, RawProgramme};
use super::{ChannelConfig, ChannelMode, ConfigError, DEFAULT_LOUDNESS};
use crate::channel::MusicSource;
use crate::channel::spec::{
    Announcements, ChannelSpec, Clip, DEFAULT_ANNOUNCEMENT_FADE_MS, DEFAULT_SWITCH_FADE_MS,
    Interject, LOUDNESS_RANGE, MAIN_PROGRAMME, MAX_FADE_MS, Music, Origin, ProgrammeSpec, SwitchAt,
    valid_name,
};

/// `music = "demo"` means the built-in melody; `"./demo"` is a file called demo.
const DEMO: &str = "demo";
/// `music = "library"`: the uploaded library in the state folder.
const LIBRARY: &str = "library";
/// Longest `every_seconds`: a day.
const MAX_EVERY_SECONDS: u64 = 86_400;
/// Most `every_tracks`.
const MAX_EVERY_TRACKS: u64 = 1_000;

pub(super) fn channels_config(
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
        let config = channel_config(doc, base, &name, ch.into_inner())?;
        out.insert(name.into_inner(), config);
    }
    Ok(out)
}

/// One `[channels.NAME]` table.
fn channel_config(
    doc: &Doc,
    base: &Path,
    name: &Spanned<String>,
    ch: RawChannel,
) -> Result<ChannelConfig, ConfigError> {
    let table = ["channels", name.get_ref().as_str()];
    let key = |leaf: &str| Key::table(&table).leaf(leaf);
    if !valid_name(name.get_ref()) {
        return Err(doc.err(
            Some(name.span()),
            Key::table(&table),
            "a channel name is 1 to 64 letters, digits, '-' or '_' \
             (it appears in logs and URLs)",
        ));
    }
    let (music, source) = programme_music(doc, base, ch.music, &key("music"))?;
    let library = music == Music::LibraryPlaylist;
    let mode = match &ch.mode {
        None => ChannelMode::Shared,
        Some(m) => doc.checked(m, key("mode"), channel_mode)?,
    };
    let loudness_lufs = doc
        .float_within(
            ch.loudness_lufs,
            key("loudness_lufs"),
            LOUDNESS_RANGE,
            " LUFS",
        )?
        .unwrap_or(DEFAULT_LOUDNESS);
    let announcements = ch
        .announcements
        .map(|a| announcements(doc, base, a, &table))
        .transpose()?;
    let main = ProgrammeSpec {
        music,
        shuffle: ch.shuffle.is_some_and(Spanned::into_inner),
        announcements,
    };
    let programmes = match ch.programmes {
        None => BTreeMap::new(),
        Some(p) => programmes(doc, base, name.get_ref(), p.into_inner())?,
    };
    let greeting = ch
        .greeting
        .map(|g| {
            doc.checked(&g, key("greeting"), |p| super::paths::music_path(base, p))
                .map(Clip::File)
        })
        .transpose()?;
    let switch = switch_at(doc, name.get_ref(), ch.switch, ch.switch_fade_ms)?;
    let mut spec = ChannelSpec {
        name: name.get_ref().clone(),
        origin: Origin::ConfigFile,
        mode,
        loudness_lufs,
        main,
        programmes,
        greeting,
        schedule: None,
        switch,
    };
    let programme_names: Vec<&str> = spec.programme_names().collect();
    spec.schedule = ch
        .schedule
        .map(|s| super::schedule::schedule_config(doc, name.get_ref(), s, &programme_names))
        .transpose()?;
    // Every key was checked where it was written; this is what the API checks too, so a
    // rule added there cannot be missed here.
    spec.validate()
        .map_err(|e| doc.err(Some(name.span()), Key::table(&table), e.to_string()))?;
    Ok(ChannelConfig {
        music: source,
        library,
        mode,
        loudness_lufs,
        spec,
    })
}

/// `[channels.NAME.programmes.PNAME]` tables.
fn programmes(
    doc: &Doc,
    base: &Path,
    channel: &str,
    raw: BTreeMap<Spanned<String>, Spanned<RawProgramme>>,
) -> Result<BTreeMap<String, ProgrammeSpec>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, programme) in raw {
        let table = ["channels", channel, "programmes", name.get_ref().as_str()];
        if name.get_ref() == MAIN_PROGRAMME {
            return Err(doc.err(
                Some(name.span()),
                Key::table(&table),
                "\"main\" is the channel's own music (its `music`, `shuffle` and \
                 [announcements]); give this programme another name",
            ));
        }
        if !valid_name(name.get_ref()) {
            return Err(doc.err(
                Some(name.span()),
                Key::table(&table),
                "a programme name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        let p = programme.into_inner();
        let (music, _) = programme_music(doc, base, p.music, &Key::table(&table).leaf("music"))?;
        let announcements = p
            .announcements
            .map(|a| announcements(doc, base, a, &table))
            .transpose()?;
        let spec = ProgrammeSpec {
            music,
            shuffle: p.shuffle.is_some_and(Spanned::into_inner),
            announcements,
        };
        out.insert(name.into_inner(), spec);
    }
    Ok(out)
}

/// A `music` key: `"library"`, or what [`music_source`] reads (also returned, as the
/// channel's music while the library is empty: the demo melody).
fn programme_music(
    doc: &Doc,
    base: &Path,
    raw: Spanned<OneOrMany>,
    key: &Key,
) -> Result<(Music, MusicSource), ConfigError> {
    if matches!(raw.get_ref(), OneOrMany::One(s) if s == LIBRARY) {
        return Ok((Music::LibraryPlaylist, MusicSource::Demo));
    }
    let source = music_source(doc, base, raw, key)?;
    Ok((Music::Source(source.clone()), source))
}

/// An `[announcements]` table under `table` (a channel's or a programme's).
fn announcements(
    doc: &Doc,
    base: &Path,
    raw: Spanned<RawAnnouncements>,
    table: &[&str],
) -> Result<Announcements, ConfigError> {
    let header = raw.span();
    let raw = raw.into_inner();
    let mut tables = table.to_vec();
    tables.push("announcements");
    let key = |leaf: &str| Key::table(&tables).leaf(leaf);
    let files_span = raw.files.span();
    let files = OneOrMany::into_items(raw.files);
    if files.is_empty() {
        return Err(doc.err(
            Some(files_span),
            key("files"),
            "the list is empty; name at least one announcement file",
        ));
    }
    let clips = files
        .iter()
        .map(|f| doc.checked(f, key("files"), |p| super::paths::music_path(base, p)))
        .map(|p| p.map(Clip::File))
        .collect::<Result<Vec<_>, _>>()?;
    let every = match (raw.every_seconds, raw.every_tracks) {
        (Some(_), Some(tracks)) => {
            return Err(doc.err(
                Some(tracks.span()),
                key("every_tracks"),
                "set either every_seconds or every_tracks, not both",
            ));
        }
        (None, None) => {
            return Err(doc.err(
                Some(header),
                Key::table(&tables),
                "missing: every_seconds (announce every N seconds) or every_tracks \
                 (after every K music tracks)",
            ));
        }
        (Some(s), None) => {
            let n = doc.int_within(
                Some(s),
                key("every_seconds"),
                1..=MAX_EVERY_SECONDS,
                " seconds",
            )?;
            Interject::EverySeconds(n.unwrap_or(1))
        }
        (None, Some(t)) => {
            let n = doc.int_within(
                Some(t),
                key("every_tracks"),
                1..=MAX_EVERY_TRACKS,
                " tracks",
            )?;
            Interject::EveryTracks(n.unwrap_or(1))
        }
    };
    let loudness_lufs = doc.float_within(
        raw.loudness_lufs,
        key("loudness_lufs"),
        LOUDNESS_RANGE,
        " LUFS",
    )?;
    let fade = |v, leaf: &str| {
        doc.int_within(v, key(leaf), 0..=u64::from(MAX_FADE_MS), " ms")
            .map(|ms| ms.unwrap_or(DEFAULT_ANNOUNCEMENT_FADE_MS))
    };
    Ok(Announcements {
        clips,
        every,
        loudness_lufs,
        fade_out_ms: fade(raw.fade_out_ms, "fade_out_ms")?,
        fade_in_ms: fade(raw.fade_in_ms, "fade_in_ms")?,
    })
}

/// `switch` and `switch_fade_ms`: how calls move to another programme at a schedule change.
fn switch_at(
    doc: &Doc,
    channel: &str,
    switch: Option<Spanned<String>>,
    fade_ms: Option<Spanned<i64>>,
) -> Result<SwitchAt, ConfigError> {
    let key = |leaf: &str| Key::table(&["channels", channel]).leaf(leaf);
    let fade = match &switch {
        None => false,
        Some(s) => doc.checked(s, key("switch"), |s| match s {
            "track-end" => Ok(false),
            "fade" => Ok(true),
            _ => Err(
                "expected \"track-end\" (at the end of the track playing) or \
                      \"fade\" (at once, fading out over switch_fade_ms)"
                    .to_owned(),
            ),
        })?,
    };
    if !fade {
        if let Some(ms) = fade_ms {
            return Err(doc.err(
                Some(ms.span()),
                key("switch_fade_ms"),
                "applies only with switch = \"fade\"",
            ));
        }
        return Ok(SwitchAt::TrackEnd);
    }
    let ms = doc.int_within(
        fade_ms,
        key("switch_fade_ms"),
        0..=u64::from(MAX_FADE_MS),
        " ms",
    )?;
    Ok(SwitchAt::Fade {
        ms: ms.unwrap_or(DEFAULT_SWITCH_FADE_MS),
    })
}

fn channel_mode(mode: &str) -> Result<ChannelMode, String> {
    match mode {
        "shared" => Ok(ChannelMode::Shared),
        "from-start" => Ok(ChannelMode::FromStart),
        _ => Err(
            "unknown mode; expected \"shared\" (every caller hears the same position) \
                  or \"from-start\" (each caller from the start)"
                .to_owned(),
        ),
    }
}

/// `music`: `"demo"`, one file or folder, or a list of them (never mixing in `"demo"`).
fn music_source(
    doc: &Doc,
    base: &Path,
    raw: Spanned<OneOrMany>,
    key: &Key,
) -> Result<MusicSource, ConfigError> {
    let span = raw.span();
    match raw.into_inner() {
        OneOrMany::One(s) if s == DEMO => Ok(MusicSource::Demo),
        OneOrMany::One(s) => {
            let p = super::paths::music_path(base, &s)
                .map_err(|m| doc.err(Some(span), key.clone(), format!("{s:?}: {m}")))?;
            Ok(MusicSource::Files(vec![p]))
        }
        OneOrMany::List(items) => {
            if items.is_empty() {
                return Err(doc.err(
                    Some(span),
                    key.clone(),
                    "the list is empty; name at least one file or folder",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if item.get_ref() == DEMO {
                    return Err(doc.err(
                        Some(item.span()),
                        key.clone(),
                        "\"demo\" (the built-in melody) cannot be mixed with files; \
                         write \"./demo\" for a file called demo",
                    ));
                }
                out.push(doc.checked(&item, key.clone(), |p| super::paths::music_path(base, p))?);
            }
            Ok(MusicSource::Files(out))
        }
    }
}

/// `name` if it is a defined channel; else the reason, listing the ones that are.
pub(super) fn known_channel(
    channels: &BTreeMap<String, ChannelConfig>,
    name: &str,
) -> Result<String, String> {
    if channels.contains_key(name) {
        return Ok(name.to_owned());
    }
    let defined: Vec<&str> = channels.keys().map(String::as_str).collect();
    Err(format!("no such channel; defined: {}", defined.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, load};
    use crate::channel::MusicSource;
    use crate::channel::spec::ChannelMode;
    use std::path::PathBuf;

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
    fn modes() {
        let c = load(
            "[channels.default]\nmusic = \"demo\"\nmode = \"from-start\"\n[dialplan]\ndefault = \"default\"\n",
        )
        .unwrap();
        assert_eq!(c.channels["default"].mode, ChannelMode::FromStart);
        assert_eq!(c.channels["default"].spec.mode, ChannelMode::FromStart);
        let e = err(
            "[channels.default]\nmusic = \"demo\"\nmode = \"radio\"\n[dialplan]\ndefault = \"default\"\n",
        );
        assert_eq!(
            (e.key(), e.line()),
            (Some("[channels.default] mode"), Some(3))
        );
        assert!(e.message().contains("expected \"shared\""), "{e}");
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
}

/// The issue-13 keys: shuffle, announcements, greeting, switch, programmes.
#[cfg(test)]
mod programme_tests {
    use super::super::test_util::{err, load};
    use crate::channel::MusicSource;
    use crate::channel::spec::{
        Announcements, ChannelMode, Clip, Interject, Music, Origin, ProgrammeSpec, SwitchAt,
    };
    use std::path::PathBuf;

    const TAIL: &str = "[dialplan]\ndefault = \"sales\"\n";

    fn channel(body: &str) -> String {
        format!("[channels.sales]\nmusic = \"music\"\n{body}{TAIL}")
    }

    /// The error for `body` under `[channels.sales]`, as `(key, line, message)`.
    fn bad(body: &str) -> (String, usize, String) {
        let e = err(&channel(body));
        assert!(e.to_string().starts_with("/etc/mohd/mohd.toml:"), "{e}");
        (
            e.key().unwrap_or_default().to_owned(),
            e.line().unwrap_or_default(),
            e.message().to_owned(),
        )
    }

    #[test]
    fn every_key_reads_into_the_spec() {
        let c = load(&channel(
            "mode = \"from-start\"\nshuffle = true\ngreeting = \"welcome.wav\"\n\
             switch = \"fade\"\nswitch_fade_ms = 1500\nloudness_lufs = -20\n\
             [channels.sales.announcements]\nfiles = [\"a1.wav\", \"/abs/a2.wav\"]\n\
             every_seconds = 30\nloudness_lufs = -16\nfade_out_ms = 500\nfade_in_ms = 700\n\
             [channels.sales.programmes.closed]\nmusic = \"library\"\n\
             [channels.sales.programmes.night]\nmusic = [\"night/\"]\nshuffle = true\n\
             [channels.sales.programmes.night.announcements]\nfiles = \"closed.wav\"\n\
             every_tracks = 2\n",
        ))
        .unwrap();
        let ch = &c.channels["sales"];
        let spec = &ch.spec;
        let etc = |p: &str| PathBuf::from("/etc/mohd").join(p);
        assert_eq!(spec.name, "sales");
        assert_eq!(spec.origin, Origin::ConfigFile);
        assert_eq!(spec.mode, ChannelMode::FromStart);
        assert_eq!(spec.loudness_lufs, -20.0);
        assert_eq!(
            spec.main,
            ProgrammeSpec {
                music: Music::Source(MusicSource::Files(vec![etc("music")])),
                shuffle: true,
                announcements: Some(Announcements {
                    clips: vec![Clip::File(etc("a1.wav")), Clip::File("/abs/a2.wav".into())],
                    every: Interject::EverySeconds(30),
                    loudness_lufs: Some(-16.0),
                    fade_out_ms: 500,
                    fade_in_ms: 700,
                }),
            }
        );
        assert_eq!(spec.greeting, Some(Clip::File(etc("welcome.wav"))));
        assert_eq!(spec.switch, SwitchAt::Fade { ms: 1500 });
        assert_eq!(
            spec.programmes.keys().collect::<Vec<_>>(),
            ["closed", "night"]
        );
        assert_eq!(spec.programmes["closed"].music, Music::LibraryPlaylist);
        assert!(!spec.programmes["closed"].shuffle);
        let night = &spec.programmes["night"];
        assert!(night.shuffle);
        let a = night.announcements.as_ref().unwrap();
        assert_eq!(a.clips, [Clip::File(etc("closed.wav"))]);
        assert_eq!(a.every, Interject::EveryTracks(2));
        assert_eq!(
            (a.loudness_lufs, a.fade_out_ms, a.fade_in_ms),
            (None, 800, 800)
        );
        assert_eq!(spec.schedule, None);
        // The flat fields agree with the spec.
        assert_eq!(
            (ch.mode, ch.loudness_lufs, ch.library),
            (ChannelMode::FromStart, -20.0, false)
        );
    }

    #[test]
    fn defaults() {
        let c = load(&channel("")).unwrap();
        let spec = &c.channels["sales"].spec;
        assert_eq!(spec.mode, ChannelMode::Shared);
        assert!(!spec.main.shuffle);
        assert_eq!(spec.main.announcements, None);
        assert_eq!((&spec.greeting, spec.switch), (&None, SwitchAt::TrackEnd));
        assert!(spec.programmes.is_empty());
        let c = load(&channel("switch = \"fade\"\n")).unwrap();
        assert_eq!(c.channels["sales"].spec.switch, SwitchAt::Fade { ms: 2000 });
        let c = load(&format!("[channels.sales]\nmusic = \"library\"\n{TAIL}")).unwrap();
        assert_eq!(c.channels["sales"].spec.main.music, Music::LibraryPlaylist);
        assert!(c.channels["sales"].library);
    }

    #[test]
    fn bad_channel_keys() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "shuffle = \"yes\"\n",
                "[channels.sales] shuffle",
                3,
                "invalid type",
            ),
            (
                "greeting = \"\"\n",
                "[channels.sales] greeting",
                3,
                "the path is empty",
            ),
            (
                "greeting = \"~/hi.wav\"\n",
                "[channels.sales] greeting",
                3,
                "'~' is not expanded",
            ),
            (
                "switch = \"now\"\n",
                "[channels.sales] switch",
                3,
                "expected \"track-end\"",
            ),
            (
                "switch_fade_ms = 100\n",
                "[channels.sales] switch_fade_ms",
                3,
                "applies only with switch = \"fade\"",
            ),
            (
                "switch = \"fade\"\nswitch_fade_ms = 10001\n",
                "[channels.sales] switch_fade_ms",
                4,
                "10001: must be within 0..=10000 ms",
            ),
            (
                "switch = \"fade\"\nswitch_fade_ms = -1\n",
                "[channels.sales] switch_fade_ms",
                4,
                "must be within",
            ),
            (
                "programmes = 3\n",
                "[channels.sales] programmes",
                3,
                "invalid type",
            ),
        ];
        for (body, key, line, msg) in cases {
            let (k, l, m) = bad(body);
            assert_eq!((k.as_str(), l), (*key, *line), "{body}: {m}");
            assert!(m.contains(msg), "{body}: {m}");
        }
    }

    #[test]
    fn bad_announcements() {
        const T: &str = "[channels.sales.announcements]\n";
        const K: &str = "[channels.sales.announcements]";
        let cases: &[(&str, &str, usize, &str)] = &[
            ("every_seconds = 30\n", K, 3, "missing key `files`"),
            (
                "files = []\nevery_seconds = 30\n",
                "files",
                4,
                "the list is empty",
            ),
            (
                "files = [\"\"]\nevery_seconds = 30\n",
                "files",
                4,
                "the path is empty",
            ),
            ("files = \"a.wav\"\n", K, 3, "missing: every_seconds"),
            (
                "files = \"a.wav\"\nevery_seconds = 30\nevery_tracks = 2\n",
                "every_tracks",
                6,
                "either every_seconds or every_tracks, not both",
            ),
            (
                "files = \"a.wav\"\nevery_seconds = 0\n",
                "every_seconds",
                5,
                "0: must be within 1..=86400 seconds",
            ),
            (
                "files = \"a.wav\"\nevery_tracks = 0\n",
                "every_tracks",
                5,
                "0: must be within 1..=1000 tracks",
            ),
            (
                "files = \"a.wav\"\nevery_tracks = 1\nloudness_lufs = -3\n",
                "loudness_lufs",
                6,
                "-3: must be within -40.0..=-5.0 LUFS",
            ),
            (
                "files = \"a.wav\"\nevery_tracks = 1\nfade_out_ms = 10001\n",
                "fade_out_ms",
                6,
                "10001: must be within 0..=10000 ms",
            ),
            (
                "files = \"a.wav\"\nevery_tracks = 1\nfade_in_ms = -5\n",
                "fade_in_ms",
                6,
                "must be within 0..=10000 ms",
            ),
            (
                "files = \"a.wav\"\nevery_tracks = 1\nevery = 3\n",
                "every",
                6,
                "unknown key `every`",
            ),
        ];
        for (body, key, line, msg) in cases {
            let (k, l, m) = bad(&format!("{T}{body}"));
            let want = if key.starts_with('[') {
                (*key).to_owned()
            } else {
                format!("{K} {key}")
            };
            assert_eq!((k, l), (want, *line), "{body}: {m}");
            assert!(m.contains(msg), "{body}: {m}");
        }
    }

    #[test]
    fn bad_programmes() {
        let (k, l, m) = bad("[channels.sales.programmes.main]\nmusic = \"demo\"\n");
        assert_eq!((k.as_str(), l), ("[channels.sales.programmes.main]", 3));
        assert!(m.contains("the channel's own music"), "{m}");
        let (k, l, m) = bad("[channels.sales.programmes.\"after hours\"]\nmusic = \"demo\"\n");
        assert_eq!(
            (k.as_str(), l),
            ("[channels.sales.programmes.\"after hours\"]", 3)
        );
        assert!(m.contains("1 to 64"), "{m}");
        let (k, l, m) = bad("[channels.sales.programmes.night]\nshuffle = true\n");
        assert_eq!(
            (k.as_str(), l, m.as_str()),
            (
                "[channels.sales.programmes.night]",
                3,
                "missing key `music`"
            )
        );
        let (k, l, m) = bad("[channels.sales.programmes.night]\nmusic = []\n");
        assert_eq!(
            (k.as_str(), l),
            ("[channels.sales.programmes.night] music", 4)
        );
        assert!(m.contains("the list is empty"), "{m}");
        let (k, l, m) = bad("[channels.sales.programmes.night]\nmusic = \"demo\"\n\
             [channels.sales.programmes.night.announcements]\nfiles = \"x.wav\"\nevery_seconds = 0\n");
        assert_eq!(
            (k.as_str(), l),
            (
                "[channels.sales.programmes.night.announcements] every_seconds",
                7
            )
        );
        assert!(m.contains("1..=86400"), "{m}");
    }
}
