//! The shipped example config and dialplans load, and a config on disk behaves as documented:
//! relative paths follow the config file, and errors in a dialplan file name that file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mohd::channel::MusicSource;
use mohd::config::{Config, Listen};
use mohd::dialplan::RouteRequest;

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn call<'a>(user: Option<&'a str>, source: &str) -> RouteRequest<'a> {
    RouteRequest {
        ruri_user: user,
        to_user: None,
        from_user: None,
        source: source.parse::<IpAddr>().unwrap(),
    }
}

/// Channels named by the example dialplans.
const CHANNELS: &str = "[channels.default]\nmusic = \"demo\"\n[channels.jazz]\nmusic = \"demo\"\n\
                        [channels.classical]\nmusic = \"demo\"\n[channels.sales]\nmusic = \"demo\"\n\
                        [channels.demo]\nmusic = \"demo\"\n";

fn with_dialplan_file(file: &Path) -> Config {
    let text = format!(
        "{CHANNELS}[dialplan]\nfile = {:?}\n",
        file.to_str().unwrap()
    );
    Config::from_str(&text, Path::new("/etc/mohd/mohd.toml")).unwrap()
}

#[test]
fn example_config_loads_with_the_values_its_comments_describe() {
    let path = manifest("examples/mohd.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.sip.listen,
        vec![Listen::udp("0.0.0.0:5060".parse().unwrap())]
    );
    assert_eq!(
        (c.rtp.port_min, c.rtp.port_max, c.rtp.port_pairs()),
        (10000, 20000, 5000)
    );
    assert_eq!(c.rtp.address, None);
    // The example writes out every [rtp] default.
    assert_eq!(c.rtp, mohd::config::RtpConfig::default());
    assert_eq!(
        c.channels.keys().collect::<Vec<_>>(),
        ["default", "demo", "jazz"]
    );
    let jazz = &c.channels["jazz"];
    assert_eq!(jazz.loudness_lufs, -20.0);
    let folder = path.parent().unwrap();
    assert!(
        matches!(&jazz.music, MusicSource::Files(f) if f == &[folder.join("jazz/intro.flac"), folder.join("jazz/")]),
        "{:?}",
        jazz.music
    );
    let lan = "192.0.2.1";
    assert_eq!(c.dialplan.route(&call(Some("moh-jazz"), lan)), Some("jazz"));
    assert_eq!(c.dialplan.route(&call(Some("moh-demo"), lan)), Some("demo"));
    assert_eq!(
        c.dialplan.route(&call(Some("1234"), "198.51.100.7")),
        Some("demo")
    );
    assert_eq!(c.dialplan.route(&call(Some("1234"), lan)), Some("default"));
}

#[test]
fn default_dialplan_example_sends_everything_to_default() {
    let c = with_dialplan_file(&manifest("dialplan/default.toml"));
    assert_eq!(
        c.dialplan.route(&call(Some("anything"), "10.0.0.1")),
        Some("default")
    );
    assert_eq!(c.dialplan.route(&call(None, "::1")), Some("default"));
}

#[test]
fn multi_channel_dialplan_example_routes_as_commented() {
    let file = manifest("dialplan/multi-channel.toml");
    let c = with_dialplan_file(&file);
    let r = |user, src| c.dialplan.route(&call(Some(user), src)).map(str::to_owned);
    let pbx = "192.0.2.1";
    assert_eq!(r("moh-jazz", pbx).as_deref(), Some("jazz"));
    assert_eq!(r("moh-classical", pbx).as_deref(), Some("classical"));
    assert_eq!(r("7101", pbx).as_deref(), Some("sales"));
    assert_eq!(r("*98", pbx).as_deref(), Some("demo"));
    assert_eq!(r("moh-jazz", "10.99.3.4").as_deref(), Some("jazz"));
    assert_eq!(r("1000", "10.99.3.4").as_deref(), Some("demo"));
    assert_eq!(r("moh-rock", pbx).as_deref(), Some("classical"));
    assert_eq!(r("1000", pbx).as_deref(), Some("default"));
    // `mohd check` shows where each route was written.
    let lines = c.dialplan.describe();
    assert_eq!(lines.len(), 7);
    assert!(
        lines[0].contains(&format!("{}:", file.display())),
        "{}",
        lines[0]
    );
}

#[test]
fn embedded_default_routes_every_call_to_a_defined_channel() {
    let c = Config::embedded_default();
    assert_eq!(
        c.sip.listen,
        vec![Listen::udp("0.0.0.0:5060".parse().unwrap())]
    );
    assert!(c.rtp.port_pairs() > 0);
    assert_eq!(c.rtp.codecs, mohd::config::DEFAULT_CODECS);
    let ch = c.dialplan.route(&call(Some("x"), "10.0.0.1")).unwrap();
    assert!(matches!(c.channels[ch].music, MusicSource::Demo));
    assert!(c.dialplan.channels().all(|n| c.channels.contains_key(n)));
}

#[test]
fn relative_paths_follow_the_config_file_not_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    std::fs::write(
        dir.path().join("plans/moh.toml"),
        "[[route]]\nuser = \"moh-*\"\nchannel = \"jazz\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("mohd.toml");
    std::fs::write(
        &cfg,
        "[channels.jazz]\nmusic = \"music/jazz\"\n[dialplan]\nfile = \"plans/moh.toml\"\n",
    )
    .unwrap();
    let c = Config::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&c.channels["jazz"].music, MusicSource::Files(f) if f == &[dir.path().join("music/jazz")])
    );
    assert_eq!(
        c.dialplan.route(&call(Some("moh-x"), "10.0.0.1")),
        Some("jazz")
    );
    // No default in the file: unmatched calls get no channel (404).
    assert_eq!(c.dialplan.route(&call(Some("1000"), "10.0.0.1")), None);
}

#[test]
fn errors_in_a_dialplan_file_name_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "default = \"default\"\n\n[[route]]\nuser = \"x\"\nchannel = \"nope\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("mohd.toml");
    std::fs::write(
        &cfg,
        "[channels.default]\nmusic = \"demo\"\n[dialplan]\nfile = \"plan.toml\"\n",
    )
    .unwrap();
    let e = Config::load(&cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:5:11: [[route]] channel: \"nope\": no such channel; defined: default",
            plan.display()
        )
    );

    std::fs::write(&plan, "defaults = \"default\"\n").unwrap();
    let e = Config::load(&cfg).unwrap_err();
    assert_eq!(
        (e.path(), e.line(), e.key()),
        (plan.as_path(), Some(1), Some("defaults"))
    );

    std::fs::remove_file(&plan).unwrap();
    let e = Config::load(&cfg).unwrap_err();
    assert_eq!(
        (e.path(), e.line(), e.key()),
        (cfg.as_path(), Some(4), Some("[dialplan] file"))
    );
    assert!(e.message().contains("cannot read"), "{e}");
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let e = Config::load(Path::new("/nonexistent/mohd.toml")).unwrap_err();
    assert_eq!(e.path(), Path::new("/nonexistent/mohd.toml"));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/mohd.toml: cannot read the config file"),
        "{e}"
    );
}
