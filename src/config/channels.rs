//! `[channels.NAME]`: what each channel plays (files, folders, the demo melody or the
//! uploaded library), how callers share it, and its loudness target.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::{OneOrMany, RawChannel, RawChannels};
use super::{ChannelConfig, ChannelMode, ConfigError, DEFAULT_LOUDNESS};
use crate::channel::MusicSource;

const LOUDNESS_RANGE: std::ops::RangeInclusive<f64> = -40.0..=-5.0;
/// `music = "demo"` means the built-in melody; `"./demo"` is a file called demo.
const DEMO: &str = "demo";
/// `music = "library"`: the uploaded library in the state folder.
const LIBRARY: &str = "library";

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
    let key = |leaf: &str| Key::table(&["channels", name.get_ref()]).leaf(leaf);
    if !valid_channel_name(name.get_ref()) {
        return Err(doc.err(
            Some(name.span()),
            Key::table(&["channels", name.get_ref()]),
            "a channel name is 1 to 64 letters, digits, '-' or '_' \
             (it appears in logs and URLs)",
        ));
    }
    let library = matches!(ch.music.get_ref(), OneOrMany::One(s) if s == LIBRARY);
    let music = if library {
        MusicSource::Demo
    } else {
        music_source(doc, base, ch.music, &key("music"))?
    };
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
    Ok(ChannelConfig {
        music,
        library,
        mode,
        loudness_lufs,
    })
}

fn valid_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn channel_mode(mode: &str) -> Result<ChannelMode, String> {
    match mode {
        "shared" => Ok(ChannelMode::Shared),
        "from-start" => Err("not supported yet: only \"shared\" for now".to_owned()),
        _ => Err("unknown mode; expected \"shared\"".to_owned()),
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
