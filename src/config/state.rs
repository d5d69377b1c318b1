//! `[state]`: the folder for the library, settings, credentials and cached renders.

use std::path::Path;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::RawState;
use super::{ConfigError, StateConfig};

pub(super) fn state_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawState>>,
) -> Result<StateConfig, ConfigError> {
    let Some(dir) = raw.and_then(|r| r.into_inner().dir) else {
        return Ok(StateConfig::default_for(true));
    };
    let dir = doc.checked(&dir, Key::table(&["state"]).leaf("dir"), |d| {
        super::paths::music_path(base, d)
    })?;
    Ok(StateConfig { dir })
}
