//! In process: start-up serves G.711 at once and adds each enabled wideband codec (G.722, then
//! Opus) as its render completes; a codec `[rtp] codecs` does not enable is neither rendered
//! nor kept; a restart on a warm render cache serves every codec without encoding again.

mod common;

use std::time::Duration;

use common::*;
use mohd::codec::Codec;
use mohd::config::Config;
use mohd::server::Environment;

fn serves(server: &Server, codec: Codec) -> bool {
    server
        .control()
        .renders
        .read()
        .expect("renders")
        .values()
        .all(|r| r.serves(codec))
}

fn config(codecs: &[Codec]) -> Config {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().expect("addr")), None);
    config.web.listen = None;
    config.rtp.codecs = codecs.to_vec();
    config
}

fn entries(dir: &std::path::Path, prefix: &str) -> Vec<(String, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| {
                    let modified = e.metadata().and_then(|m| m.modified()).expect("mtime");
                    (e.file_name().to_string_lossy().into_owned(), modified)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_enabled_codec_is_served_and_a_warm_cache_serves_them_without_encoding() {
    let state = tempfile::tempdir().expect("state");
    let mut config = config(&Codec::ALL);
    config.state.dir = state.path().to_owned();
    let env = || Environment::with_probe(mohd_bin());
    {
        let server = Server::in_configured_state(config.clone(), env());
        assert!(serves(&server, Codec::Pcmu) && serves(&server, Codec::Pcma));
        assert!(
            wait_until(Duration::from_secs(180), || serves(&server, Codec::G722)
                && serves(&server, Codec::Opus)),
            "the wideband codecs never came"
        );
    }
    let stored = entries(state.path(), "enc-");
    assert_eq!(stored.len(), 2, "{stored:?}");
    let server = Server::in_configured_state(config, env());
    assert!(
        wait_until(Duration::from_secs(60), || serves(&server, Codec::G722)
            && serves(&server, Codec::Opus)),
        "the cached encodings were not served"
    );
    assert_eq!(entries(state.path(), "enc-"), stored, "encoded again");
}

#[test]
fn a_codec_not_enabled_is_neither_rendered_nor_kept() {
    let server = Server::with_config(config(&[Codec::Pcmu, Codec::G722]));
    assert!(
        wait_until(Duration::from_secs(180), || serves(&server, Codec::G722)),
        "G.722 never came"
    );
    // The G.722 render is swapped in after the G.711 codecs the plan drops are gone.
    assert!(serves(&server, Codec::Pcmu));
    assert!(!serves(&server, Codec::Pcma));
    assert!(!serves(&server, Codec::Opus));
}
