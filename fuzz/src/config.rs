//! Fuzz target `config`: `mohd::config::Config::from_str` on arbitrary text (as if read from
//! `/nonexistent/mohd.toml`, so no relative file exists).
//!
//! Never panics; an error names the config file and, when it names a line, one that exists
//! (line numbers are 1-based, past the last line only for an unterminated value at the end).

use std::path::Path;

use mohd::config::Config;

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text, Path::new("/nonexistent/mohd.toml")) {
        Ok(config) => {
            // Whatever parsed routes to channels that exist.
            for channel in config.dialplan.channels() {
                assert!(config.channels.contains_key(channel), "{channel}");
            }
        }
        Err(e) => {
            assert!(e.to_string().contains("mohd.toml"), "{e}");
            if let Some(line) = e.line() {
                assert!(
                    line >= 1 && line <= text.lines().count() + 1,
                    "line {line}: {e}"
                );
            }
        }
    }
}
