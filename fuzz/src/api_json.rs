//! Fuzz target `api_json`: the REST API's JSON request bodies, as the handlers read them
//! (`serde_json` into `mohd::web::backend`'s request types). The first byte picks the type,
//! the rest is the body.
//!
//! Never panics; a body that is accepted prints (for the types that print) as JSON that reads
//! back to the same value, so what the page sends and gets back agree.

use mohd::web::backend::{ChannelInput, ChannelPlaylist, ChannelRename};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let printed = serde_json::to_vec(&value).expect("a value that was read prints");
    let again: T = serde_json::from_slice(&printed).expect("what we print reads back");
    assert_eq!(again, value, "{}", String::from_utf8_lossy(&printed));
}

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => round_trip::<ChannelInput>(body),
        1 => {
            if let Ok(p) = serde_json::from_slice::<ChannelPlaylist>(body) {
                let _ = p.tracks.len();
            }
        }
        _ => {
            if let Ok(r) = serde_json::from_slice::<ChannelRename>(body) {
                let _ = mohd::library::validate_name(&r.name);
            }
        }
    }
}
