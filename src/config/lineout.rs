//! `[lineout]`: whether a channel plays on the sound card, which device, which channel and at
//! what level.

use std::collections::BTreeMap;

use toml::Spanned;

use super::channels::known_channel;
use super::doc::{Doc, Key, value_msg};
use super::raw::RawLineout;
use super::{ChannelConfig, ConfigError, LineoutConfig};
use crate::dialplan::Dialplan;

pub(super) fn lineout_config(
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
        out.device = device(doc, d)?;
    }
    if let Some(c) = &raw.channel {
        out.channel = doc.checked(c, key("channel"), |c| known_channel(channels, c))?;
    }
    let range = crate::lineout::LEVEL_RANGE;
    let unit = " dB (for a louder line-out raise the channel's loudness_lufs, which goes \
                through the limiter)";
    if let Some(level) = doc.float_within(raw.level_db, key("level_db"), range, unit)? {
        out.level_db = level;
    }
    Ok(out)
}

/// An ALSA PCM name: set, and printable (it is logged and passed to ALSA).
fn device(doc: &Doc, d: Spanned<String>) -> Result<String, ConfigError> {
    let key = Key::table(&["lineout"]).leaf("device");
    if d.get_ref().trim().is_empty() {
        return Err(doc.err(
            Some(d.span()),
            key,
            "must not be empty; \"default\", \"hw:1,0\" or a name from `mohd devices`",
        ));
    }
    if d.get_ref().chars().any(char::is_control) {
        return Err(doc.err(
            Some(d.span()),
            key,
            value_msg(&d, "must not contain control characters"),
        ));
    }
    Ok(d.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use super::super::{LineoutConfig, LineoutEnabled};

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
}
