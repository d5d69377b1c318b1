//! Fuzz target `upload_name`: `mohd::library::validate_name` on arbitrary names (an upload's
//! file name, as the client sent it).
//!
//! Never panics; a name it accepts is safe to join to the music folder: one plain path
//! component (no separator, not `.` or `..`, not hidden), no control characters, within the
//! length cap, with an audio extension.

use std::path::{Component, Path};

use mohd::library::{AUDIO_EXTENSIONS, MAX_NAME_BYTES, validate_name};

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name(name).is_err() {
        return;
    }
    let components: Vec<Component> = Path::new(name).components().collect();
    assert!(
        matches!(components.as_slice(), [Component::Normal(_)]),
        "{name:?} is {components:?}"
    );
    assert!(!name.starts_with('.'), "{name:?}");
    assert!(!name.contains(['/', '\\', '\0']), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    assert!(name.len() <= MAX_NAME_BYTES, "{name:?}");
    let extension = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    assert!(
        extension.is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.as_str())),
        "{name:?}"
    );
}
