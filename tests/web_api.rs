//! The REST API against a real `mohd serve` over real sockets: authentication on every
//! endpoint, uploads of every supported format, every kind of bad upload (each with its clear
//! error and the library left exactly as it was), playlist operations, settings, tokens,
//! OpenAPI, health and metrics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::http::{self, Auth};
use common::prom;
use common::web::WebServer;
use common::{mohd_call, write_test_music};
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audio");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

/// The library as a user would see it: the API's list and the files on disk (no temp files).
fn library_snapshot(s: &WebServer) -> (Vec<String>, BTreeSet<String>, usize) {
    let names = s
        .tracks()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    let files = std::fs::read_dir(s.music_dir())
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let tmp = std::fs::read_dir(s.state().join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    (names, files, tmp)
}

#[test]
fn every_endpoint_needs_auth_but_health_and_the_openapi_document() {
    let s = WebServer::start("");
    let none = Auth::none();
    assert_eq!(http::get(s.web, "/healthz", &none).status, 200);
    let openapi = http::get(s.web, "/api/openapi.json", &none);
    assert_eq!(openapi.status, 200);
    let doc = openapi.json();
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/status",
        "/api/tracks",
        "/api/tracks/{id}",
        "/api/playlist",
        "/api/settings",
        "/api/channels",
        "/api/channels/{name}",
        "/api/channels/{name}/rename",
        "/api/channels/{name}/playlist",
        "/api/routes",
        "/api/dialplan",
        "/api/tokens",
        "/api/login",
    ] {
        assert!(
            paths.contains_key(p),
            "openapi lacks {p}: {:?}",
            paths.keys()
        );
    }

    let protected: &[(&str, &str)] = &[
        ("GET", "/api/status"),
        ("GET", "/api/session"),
        ("GET", "/api/tracks"),
        ("POST", "/api/tracks?name=a.wav"),
        ("GET", "/api/tracks/000000000000"),
        ("PATCH", "/api/tracks/000000000000"),
        ("DELETE", "/api/tracks/000000000000"),
        ("GET", "/api/tracks/000000000000/preview"),
        ("PUT", "/api/playlist"),
        ("GET", "/api/channels"),
        ("POST", "/api/channels"),
        ("GET", "/api/channels/default"),
        ("PUT", "/api/channels/x"),
        ("DELETE", "/api/channels/x"),
        ("POST", "/api/channels/x/rename"),
        ("PUT", "/api/channels/x/playlist"),
        ("GET", "/api/routes"),
        ("PUT", "/api/routes"),
        ("GET", "/api/dialplan"),
        ("GET", "/api/settings"),
        ("PUT", "/api/settings"),
        ("GET", "/api/tokens"),
        ("POST", "/api/tokens"),
        ("DELETE", "/api/tokens/x"),
        ("POST", "/api/password"),
        ("GET", "/metrics"),
    ];
    let wrong = Auth::bearer("mohd_not-a-real-token");
    for (method, path) in protected {
        for auth in [&none, &wrong] {
            let r = http::request(s.web, method, path, auth, Some("application/json"), b"{}");
            assert_eq!(
                r.status,
                401,
                "{method} {path} without valid auth: {}",
                r.text()
            );
        }
    }

    // With the token, the read endpoints answer.
    let auth = s.auth();
    for path in [
        "/api/status",
        "/api/session",
        "/api/tracks",
        "/api/channels",
        "/api/channels/default",
        "/api/routes",
        "/api/dialplan",
        "/api/settings",
        "/metrics",
    ] {
        let r = http::get(s.web, path, &auth);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    }
    let st = http::get(s.web, "/api/status", &auth).json();
    assert_eq!(st["health"]["healthy"], true, "{st}");
    assert_eq!(st["channels"][0]["name"], "default");
    assert!(st["uptime_s"].as_u64().is_some());
    assert!(st["disk"]["total_bytes"].as_u64().unwrap() > 0);
    // A token cannot mint tokens or change the password: that takes the admin's session.
    let r = http::send_json(s.web, "POST", "/api/tokens", &auth, &json!({"name": "x"}));
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn session_login_csrf_rate_limit_and_tokens() {
    let s = WebServer::start("");
    let none = Auth::none();
    let wrong = http::send_json(
        s.web,
        "POST",
        "/api/login",
        &none,
        &json!({"password": "nope"}),
    );
    assert_eq!(wrong.status, 401);

    let session = s.login();
    let cookie_line = {
        let r = http::send_json(
            s.web,
            "POST",
            "/api/login",
            &none,
            &json!({"password": common::web::PASSWORD}),
        );
        r.header("set-cookie").unwrap().to_owned()
    };
    assert!(cookie_line.contains("HttpOnly"), "{cookie_line}");
    assert!(cookie_line.contains("SameSite=Strict"), "{cookie_line}");

    assert_eq!(http::get(s.web, "/api/status", &session).status, 200);
    // A state change with the cookie but without the CSRF token is refused.
    let no_csrf = Auth {
        csrf: None,
        ..session.clone()
    };
    let r = http::send_json(
        s.web,
        "POST",
        "/api/tokens",
        &no_csrf,
        &json!({"name": "fleet"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http::send_json(
        s.web,
        "POST",
        "/api/tokens",
        &session,
        &json!({"name": "fleet"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        http::get(s.web, "/api/tracks", &Auth::bearer(&token)).status,
        200
    );
    let list = http::get(s.web, "/api/tokens", &session);
    assert!(list.text().contains("fleet"));
    assert!(!list.text().contains(&token), "token list leaks the secret");
    let r = http::request(s.web, "DELETE", "/api/tokens/fleet", &session, None, b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        http::get(s.web, "/api/tracks", &Auth::bearer(&token)).status,
        401
    );
    // The stored credentials hold no secret in clear.
    let stored = std::fs::read_to_string(s.state().join("auth.json")).unwrap();
    assert!(!stored.contains(&token) && !stored.contains(common::web::PASSWORD));

    // Logout ends the session.
    let r = http::request(s.web, "POST", "/api/logout", &session, None, b"");
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    assert_eq!(http::get(s.web, "/api/status", &session).status, 401);

    // Guessing gets slowed down.
    let mut limited = false;
    for _ in 0..12 {
        let r = http::send_json(
            s.web,
            "POST",
            "/api/login",
            &none,
            &json!({"password": "guess"}),
        );
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            limited = true;
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(limited, "login attempts were never rate-limited");
}

#[test]
fn uploads_of_every_supported_format_play_and_bad_files_change_nothing() {
    let s = WebServer::start("max_upload_mb = 1");
    // Every format the decoder supports.
    let good = [
        "tone440_22k05_mono.ogg",
        "tone440_44k1_stereo.m4a",
        "tone440_44k1_stereo.mp3",
        "tone440_8k_mono.aiff",
        "tone440_8k_mono.flac",
        "tone440_8k_mono_alac.m4a",
    ];
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    write_test_music(&wav, 2.0, 44_100);
    let mut uploads: Vec<(String, Vec<u8>)> =
        good.iter().map(|n| (n.to_string(), fixture(n))).collect();
    uploads.push(("tone.wav".into(), std::fs::read(&wav).unwrap()));
    for (name, body) in &uploads {
        let r = s.upload(name, body);
        assert_eq!(r.status, 201, "upload {name}: {}", r.text());
        let t = r.json();
        assert_eq!(t["name"], name.as_str());
        assert!(t["duration_s"].as_f64().unwrap() > 0.4, "{t}");
        assert!(t["format"].as_str().is_some_and(|f| !f.is_empty()), "{t}");
        assert_eq!(t["id"].as_str().unwrap().len(), 12);
    }
    s.wait_for_channel_tracks(uploads.len() as u64);
    let before = library_snapshot(&s);
    assert_eq!(before.0.len(), uploads.len());

    let mut rng_bytes = vec![0u8; 64 * 1024];
    for (i, b) in rng_bytes.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    let big = vec![0u8; 1024 * 1024 + 4096];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("noise.flac", rng_bytes.clone(), 415, "audio"),
        (
            "readme.mp3",
            b"This is not music, just text renamed to mp3.\n".repeat(50),
            415,
            "audio",
        ),
        (
            "truncated.mp3",
            fixture("tone440_44k1_stereo.mp3")[..300].to_vec(),
            415,
            "",
        ),
        ("voice.ogg", fixture("tone440_opus.ogg"), 415, ""),
        ("huge.wav", big, 413, ""),
        ("../../etc/evil.wav", std::fs::read(&wav).unwrap(), 400, ""),
        ("..", std::fs::read(&wav).unwrap(), 400, ""),
        ("sub/dir.wav", std::fs::read(&wav).unwrap(), 400, ""),
        (".hidden.wav", std::fs::read(&wav).unwrap(), 400, ""),
        ("notes.txt", b"hello".to_vec(), 400, ""),
        ("tone.wav", std::fs::read(&wav).unwrap(), 409, ""),
        ("same-content.wav", std::fs::read(&wav).unwrap(), 409, ""),
    ];
    for (name, body, status, word) in cases {
        let r = s.upload(name, &body);
        assert_eq!(r.status, status, "upload {name:?}: {}", r.text());
        let msg = r.error();
        assert!(!msg.is_empty(), "{name}: error without a message");
        assert!(msg.to_lowercase().contains(word), "{name}: {msg}");
        assert_eq!(library_snapshot(&s), before, "{name} changed the library");
    }
    // Overwrite is allowed when asked, and keeps the track's place.
    let mut other = dir.path().join("other.wav");
    write_test_music(&other, 3.0, 44_100);
    let body = std::fs::read(&other).unwrap();
    other.set_file_name("tone.wav");
    let r = http::request(
        s.web,
        "POST",
        "/api/tracks?name=tone.wav&overwrite=true",
        &s.auth(),
        Some("application/octet-stream"),
        &body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let after = library_snapshot(&s);
    assert_eq!(after.0, before.0, "overwrite keeps order and names");
    assert_eq!(after.2, 0, "no temp file left");
}

#[test]
fn playlist_order_enable_delete_preview_and_settings() {
    let s = WebServer::start("");
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for (i, secs) in [1.0, 1.5, 2.0].iter().enumerate() {
        let p = dir.path().join(format!("t{i}.wav"));
        write_test_music(&p, *secs, 22_050);
        let r = s.upload(&format!("t{i}.wav"), &std::fs::read(&p).unwrap());
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let auth = s.auth();
    // Reorder: reversed.
    let rev: Vec<&String> = ids.iter().rev().collect();
    let r = http::send_json(s.web, "PUT", "/api/playlist", &auth, &json!({"order": rev}));
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<String> = s
        .tracks()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["t2.wav", "t1.wav", "t0.wav"]);
    // Not a permutation: refused, nothing changes.
    let r = http::send_json(
        s.web,
        "PUT",
        "/api/playlist",
        &auth,
        &json!({"order": [ids[0]]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.tracks().len(), 3);
    // Disable one: the loop loses a track.
    let r = http::send_json(
        s.web,
        "PATCH",
        &format!("/api/tracks/{}", ids[1]),
        &auth,
        &json!({"enabled": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["enabled"], false);
    s.wait_for_channel_tracks(2);
    // Preview: a WAV of the track as callers hear it.
    let r = http::get(s.web, &format!("/api/tracks/{}/preview", ids[0]), &auth);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..4], b"RIFF");
    assert!(r.body.len() > 8000, "about a second of 8 kHz audio");
    // Delete.
    let r = http::request(
        s.web,
        "DELETE",
        &format!("/api/tracks/{}", ids[0]),
        &auth,
        None,
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.tracks().len(), 2);
    assert!(!s.music_dir().join("t0.wav").exists());
    assert_eq!(
        http::get(s.web, &format!("/api/tracks/{}", ids[0]), &auth).status,
        404
    );
    s.wait_for_channel_tracks(1);
    // Settings: loudness applies and persists; out of range is refused.
    let r = http::send_json(
        s.web,
        "PUT",
        "/api/settings",
        &auth,
        &json!({"loudness_lufs": -20.0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["loudness_lufs"], -20.0);
    let r = http::send_json(
        s.web,
        "PUT",
        "/api/settings",
        &auth,
        &json!({"loudness_lufs": 3.0}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        http::get(s.web, "/api/settings", &auth).json()["loudness_lufs"],
        -20.0
    );
    // Channels and dialplan.
    let ch = http::get(s.web, "/api/channels", &auth).json();
    assert_eq!(ch[0]["name"], "default");
    assert_eq!(ch[0]["music"], "library");
    let dp = http::get(s.web, "/api/dialplan", &auth).json();
    assert_eq!(dp["default_channel"], "default");
}

#[test]
fn metrics_parse_and_call_counters_move() {
    let s = WebServer::start("");
    let auth = s.auth();
    let read = || {
        let r = http::get(s.web, "/metrics", &auth);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let text = r.text();
        let samples =
            prom::parse_text(&text).unwrap_or_else(|e| panic!("bad metrics: {e}\n{text}"));
        (samples, text)
    };
    let value = |samples: &[prom::Sample], name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|x| x.name == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k).map(String::as_str) == Some(v)))
            .map(|x| x.value)
            .sum()
    };
    let (before, _) = read();
    let report = mohd_call(&format!("sip:moh@{}", s.sip), &["--seconds", "2"]);
    assert!(report["stats"]["packets"].as_u64().unwrap() > 50);
    // The SIP loop publishes its counters once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (after, text) = read();
    // With a call made, every family has samples, the histograms too.
    prom::promtool_accepts(&text);
    let answered = Some(("result", "answered"));
    assert_eq!(
        value(&after, "mohd_calls_total", answered) - value(&before, "mohd_calls_total", answered),
        1.0
    );
    assert!(
        value(&after, "mohd_rtp_packets_sent_total", None)
            >= value(&before, "mohd_rtp_packets_sent_total", None) + 50.0
    );
    assert_eq!(value(&after, "mohd_call_setup_seconds_count", None), 1.0);
    assert_eq!(value(&after, "mohd_healthy", None), 1.0);
    assert!(value(&after, "mohd_uptime_seconds", None) > 0.0);

    // Public metrics when configured.
    let p = WebServer::start("metrics_public = true");
    assert_eq!(http::get(p.web, "/metrics", &Auth::none()).status, 200);
    assert_eq!(http::get(p.web, "/api/status", &Auth::none()).status, 401);
}

#[test]
fn healthz_says_why_when_the_media_clock_stalls() {
    // The media loop's test hook wedges it one second after start: what a hung media thread
    // would look like to a monitoring system.
    let s = WebServer::start_stalling_media("", std::time::Duration::from_secs(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = http::get(s.web, "/healthz", &Auth::none());
        if r.status == 503 {
            let body = r.json();
            assert_eq!(body["healthy"], false);
            let reasons = body["reasons"].to_string();
            assert!(reasons.contains("media clock stalled"), "{body}");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never reported the stall"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let m = http::get(s.web, "/metrics", &s.auth()).text();
    assert!(m.contains("mohd_healthy 0"), "{m}");
}

/// Uploads two distinct tracks; their ids.
fn two_tracks(s: &WebServer) -> (String, String) {
    let a = s.upload("a.flac", &fixture("tone440_8k_mono.flac"));
    assert_eq!(a.status, 201, "{}", a.text());
    let b = s.upload("b.mp3", &fixture("tone440_44k1_stereo.mp3"));
    assert_eq!(b.status, 201, "{}", b.text());
    let id = |r: &http::Response| r.json()["id"].as_str().unwrap().to_owned();
    (id(&a), id(&b))
}

#[test]
fn channels_and_routes_over_the_api_with_every_refusal() {
    let s = WebServer::start("");
    let auth = s.auth();
    let (a, b) = two_tracks(&s);

    // The config file's channel: listed, read-only, with its route and now playing.
    let list = http::get(s.web, "/api/channels", &auth).json();
    let default = &list[0];
    assert_eq!(default["name"], "default", "{list}");
    assert_eq!(default["origin"], "config-file");
    assert_eq!(default["read_only"], true);

    let sales = json!({
        "name": "sales", "mode": "from-start", "shuffle": true, "playlist": [a, b],
        "announcements": {"clips": [b], "every_seconds": 20, "fade_out_ms": 300, "fade_in_ms": 300},
        "greeting": a,
        "programmes": {"closed": {"playlist": [b]}},
        "schedule": {"timezone": "Europe/London", "default": "closed",
            "weekly": [{"days": "mon-fri", "from": "09:00", "to": "17:30", "programme": "main"}],
            "dates": [{"date": "2026-12-25", "programme": "closed"}]},
        "switch": "fade", "switch_fade_ms": 1000,
    });
    let r = http::send_json(s.web, "POST", "/api/channels", &auth, &sales);
    assert_eq!(r.status, 201, "{}", r.text());
    let c = r.json();
    assert_eq!(c["origin"], "managed");
    assert_eq!(c["read_only"], false);
    assert_eq!(c["mode"], "from-start");
    assert_eq!(c["playlist"][0]["name"], "a.flac");
    assert_eq!(c["announcements"]["clips"][0]["id"], b.as_str());
    assert_eq!(c["greeting"]["name"], "a.flac");
    assert_eq!(c["programmes"]["closed"]["playlist"][0]["name"], "b.mp3");
    assert_eq!(c["switch"], "fade");
    assert_eq!(c["schedule"]["weekly"][0]["days"], "mon-fri", "{c}");
    assert_eq!(c["schedule"]["dates"][0]["date"], "2026-12-25", "{c}");
    let got = http::get(s.web, "/api/channels/sales", &auth).json();
    assert_eq!(got["name"], "sales");

    // Each refusal: its status and its reason.
    let with = |patch: serde_json::Value| {
        let mut v = json!({"name": "other", "playlist": [a]});
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let overlap = json!({"timezone": "Europe/London", "default": "main", "weekly": [
        {"days": "mon-fri", "from": "09:00", "to": "17:30", "programme": "main"},
        {"days": "fri", "from": "17:00", "to": "19:00", "programme": "main"}]});
    let cases: Vec<(&str, String, serde_json::Value, u16, &str)> = vec![
        (
            "POST",
            "/api/channels".into(),
            with(json!({"schedule": overlap})),
            422,
            "overlaps",
        ),
        ("POST", "/api/channels".into(), sales.clone(), 409, "sales"),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"name": "default"})),
            409,
            "default",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"playlist": ["000000000000"]})),
            422,
            "000000000000",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"greeting": "000000000000"})),
            422,
            "000000000000",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"name": "a b"})),
            422,
            "name",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"schedule": {"timezone": "Mars/Olympus", "default": "main"}})),
            422,
            "Mars/Olympus",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"schedule": {"timezone": "UTC", "default": "lunch"}})),
            422,
            "lunch",
        ),
        (
            "POST",
            "/api/channels".into(),
            with(json!({"mode": "loud"})),
            422,
            "loud",
        ),
        (
            "PUT",
            "/api/channels/default".into(),
            with(json!({"name": "default"})),
            403,
            "config file",
        ),
        (
            "PUT",
            "/api/channels/nothing".into(),
            with(json!({})),
            404,
            "nothing",
        ),
        (
            "PUT",
            "/api/channels/sales/playlist".into(),
            json!({"tracks": ["000000000000"]}),
            422,
            "000000000000",
        ),
        (
            "PUT",
            "/api/channels/default/playlist".into(),
            json!({"tracks": [a]}),
            403,
            "config file",
        ),
        (
            "POST",
            "/api/channels/sales/rename".into(),
            json!({"name": "default"}),
            409,
            "default",
        ),
        (
            "PUT",
            "/api/routes".into(),
            json!([{"user": "7001", "channel": "nothing"}]),
            422,
            "nothing",
        ),
        (
            "PUT",
            "/api/routes".into(),
            json!([{"channel": "sales"}]),
            422,
            "at least one",
        ),
    ];
    for (method, path, body, status, words) in &cases {
        let r = http::send_json(s.web, method, path, &auth, body);
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.text());
        assert!(r.error().contains(words), "{method} {path}: {}", r.error());
    }
    for (path, status) in [
        ("/api/channels/default", 403),
        ("/api/channels/nothing", 404),
    ] {
        let r = http::request(s.web, "DELETE", path, &auth, None, b"");
        assert_eq!(r.status, status, "DELETE {path}: {}", r.text());
    }
    let r = http::request(
        s.web,
        "POST",
        "/api/channels",
        &auth,
        Some("application/json"),
        b"{",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.error().is_empty());

    // Playlist, route, dialplan, rename (routes follow), delete (refused while routed).
    let r = http::send_json(
        s.web,
        "PUT",
        "/api/channels/sales/playlist",
        &auth,
        &json!({"tracks": [b, a, b]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<String> = r.json()["playlist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["b.mp3", "a.flac", "b.mp3"]);
    let routes = json!([{"user": "7001", "channel": "sales"}]);
    let r = http::send_json(s.web, "PUT", "/api/routes", &auth, &routes);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http::get(s.web, "/api/routes", &auth).json(), routes);
    let dp = http::get(s.web, "/api/dialplan", &auth).json();
    let last = dp["routes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["channel"], "sales", "{dp}");
    let r = http::send_json(
        s.web,
        "POST",
        "/api/channels/sales/rename",
        &auth,
        &json!({"name": "support"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        http::get(s.web, "/api/routes", &auth).json()[0]["channel"],
        "support"
    );
    assert_eq!(http::get(s.web, "/api/channels/sales", &auth).status, 404);
    let r = http::request(s.web, "DELETE", "/api/channels/support", &auth, None, b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["routes"][0].as_str().unwrap().contains("7001"),
        "{}",
        r.text()
    );
    let r = http::request(
        s.web,
        "DELETE",
        "/api/channels/support?remove_routes=true",
        &auth,
        None,
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(http::get(s.web, "/api/routes", &auth).json(), json!([]));
    assert_eq!(
        http::get(s.web, "/api/channels", &auth)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_managed_channel_is_routable_survives_a_restart_and_loses_deleted_tracks() {
    let mut s = WebServer::start_binary("");
    let auth = s.auth();
    let (a, b) = two_tracks(&s);
    let body = json!({"name": "support", "playlist": [a, b]});
    let r = http::send_json(s.web, "POST", "/api/channels", &auth, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = http::send_json(
        s.web,
        "PUT",
        "/api/routes",
        &auth,
        &json!([{"user": "8001", "channel": "support"}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    s.kill_and_restart();
    let auth = s.auth();
    let c = http::get(s.web, "/api/channels/support", &auth).json();
    assert_eq!(c["playlist"].as_array().map(Vec::len), Some(2), "{c}");
    assert_eq!(
        http::get(s.web, "/api/routes", &auth).json()[0]["user"],
        "8001"
    );

    let report = mohd_call(&format!("sip:8001@{}", s.sip), &["--seconds", "2"]);
    assert!(
        report["stats"]["packets"].as_u64().unwrap_or(0) > 50,
        "the routed call heard nothing: {report}"
    );

    // Deleting a library track takes it out of the channel's playlist.
    let r = http::request(
        s.web,
        "DELETE",
        &format!("/api/tracks/{a}"),
        &auth,
        None,
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let c = http::get(s.web, "/api/channels/support", &auth).json();
    let ids: Vec<&serde_json::Value> = c["playlist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, [&json!(b)], "{c}");
}
