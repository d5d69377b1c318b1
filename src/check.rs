//! `mohd check`: everything `serve` would do before answering a call, without serving.
//!
//! Owns the human report: the SIP listeners, the RTP range, each channel's tracks (decoded and
//! rendered exactly as `serve` would), what was skipped and why, each channel's settings (mode,
//! shuffle, announcements, greeting, programmes) with what its schedule plays now and when it
//! next switches (local time in its zone), and the dialplan. It reads the config, not a
//! running server: "now" is the wall clock and the pass's start.

use jiff::Timestamp;

use crate::channel::TrackKind;
use crate::channel::spec::{ChannelSpec, Clip, Interject, Music, ProgrammeSpec};
use crate::channel::status::{PassPosition, now_next};
use crate::config::Config;

/// Prints the report on stdout; returns false when anything would not play.
pub fn run(config: &Config) -> bool {
    let mut ok = true;
    if let Some(src) = &config.source {
        println!("config: {}", src.display());
    } else {
        println!("config: built-in default");
    }
    for l in &config.sip.listen {
        println!("sip: listen {l}");
    }
    if let Some(tls) = &config.sip.tls {
        println!(
            "sip: tls certificate {}, key {}",
            tls.certificate.display(),
            tls.key.display()
        );
    }
    println!(
        "rtp: ports {}-{}, address {}",
        config.rtp.port_min,
        config.rtp.port_max,
        config
            .rtp
            .address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "the address each INVITE arrives on".into())
    );
    for (name, ch) in &config.channels {
        let render = crate::channel::ChannelRender::render(name, &ch.music, ch.loudness_lufs);
        println!(
            "channel {name}: {} track(s), loop {:.1} s, target {:.1} LUFS",
            render.tracks.len(),
            render.len_samples() as f64 / 8000.0,
            ch.loudness_lufs
        );
        for t in &render.tracks {
            println!(
                "  play  {} ({:.1} s)",
                t.name,
                t.len_samples as f64 / 8000.0
            );
        }
        for s in &render.skipped {
            println!("  SKIP  {}: {}", s.name, s.error);
            ok = false;
        }
        if !render.playable {
            println!("  ERROR channel {name} has nothing playable: callers would hear silence");
            ok = false;
        }
        let spec = &ch.spec;
        for line in describe_settings(spec) {
            println!("  {line}");
        }
        let pass = PassPosition {
            tracks: &render.tracks,
            len_samples: u64::try_from(render.len_samples()).unwrap_or(0),
            position: 0,
            repeats: !spec.main.shuffle,
        };
        let at = Timestamp::now();
        for line in describe_now_next(spec, &pass, at) {
            println!("  {line}");
        }
    }
    println!("dialplan:");
    for line in config.dialplan.describe() {
        println!("  {line}");
    }
    println!("{}", if ok { "OK" } else { "ERRORS found" });
    ok
}

/// Mode, shuffle, announcements, greeting, switching and the other programmes, one line each.
pub fn describe_settings(spec: &ChannelSpec) -> Vec<String> {
    let mut lines = vec![
        format!("mode {}", spec.mode),
        format!("shuffle {}", on_off(spec.main.shuffle)),
        format!("announcements {}", announcements(&spec.main)),
        format!(
            "greeting {}",
            spec.greeting.as_ref().map_or("none".to_owned(), clip)
        ),
    ];
    for (name, p) in &spec.programmes {
        lines.push(format!(
            "programme {name}: {}, shuffle {}, announcements {}",
            music(&p.music),
            on_off(p.shuffle),
            announcements(p)
        ));
    }
    if spec.schedule.is_some() {
        lines.push(format!(
            "switch {}",
            match spec.switch {
                crate::channel::spec::SwitchAt::TrackEnd => "at the end of the track".to_owned(),
                crate::channel::spec::SwitchAt::Fade { ms } => format!("at once, {ms} ms fade"),
            }
        ));
    }
    lines
}

/// "now" and "next": the schedule's programme and its next switch, and the pass's tracks.
pub fn describe_now_next(
    spec: &ChannelSpec,
    pass: &PassPosition<'_>,
    at: Timestamp,
) -> Vec<String> {
    let n = now_next(spec.schedule.as_ref(), pass, at);
    let mut lines = Vec::new();
    if let Some(s) = &spec.schedule {
        let next = match &n.next_change {
            Some(c) => format!("next {:?} from {}", c.programme, c.local()),
            None => format!(
                "no change within {} days",
                crate::schedule::MAX_LOOKAHEAD_DAYS
            ),
        };
        lines.push(format!(
            "schedule ({}): now {:?}, {next}",
            s.timezone(),
            n.programme
        ));
    }
    let now = n
        .playing
        .as_ref()
        .map_or("(between tracks)".to_owned(), |p| piece(&p.name, p.kind));
    let next = match &n.next {
        Some(u) => format!(
            "next {} after {:.1} s",
            piece(&u.name, u.kind),
            u.starts_in.as_secs_f64()
        ),
        None => "next: the next shuffled pass".to_owned(),
    };
    lines.push(format!("now {now} (at the pass's start), {next}"));
    lines
}

fn piece(name: &str, kind: TrackKind) -> String {
    match kind {
        TrackKind::Announcement => format!("announcement {name}"),
        TrackKind::Music | TrackKind::Resumed => name.to_owned(),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn clip(c: &Clip) -> String {
    match c {
        Clip::File(p) => p.display().to_string(),
        Clip::Library(id) => format!("library track {id}"),
    }
}

fn music(m: &Music) -> String {
    match m {
        Music::Source(crate::channel::MusicSource::Demo) => "the demo melody".to_owned(),
        Music::Source(crate::channel::MusicSource::Files(f)) => format!("{} file(s)", f.len()),
        Music::LibraryPlaylist => "the library's playlist".to_owned(),
        Music::Tracks(ids) => format!("{} library track(s)", ids.len()),
    }
}

fn announcements(p: &ProgrammeSpec) -> String {
    let Some(a) = &p.announcements else {
        return "none".to_owned();
    };
    let every = match a.every {
        Interject::EverySeconds(n) => format!("every {n} s"),
        Interject::EveryTracks(n) => format!("after every {n} track(s)"),
    };
    let clips: Vec<String> = a.clips.iter().map(clip).collect();
    let loudness = a
        .loudness_lufs
        .map_or("music + 3 LU".to_owned(), |l| format!("{l:.1} LUFS"));
    format!(
        "{every}: {} (fade out {} ms, in {} ms, {loudness})",
        clips.join(", "),
        a.fade_out_ms,
        a.fade_in_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::TrackInfo;
    use crate::channel::spec::{Announcements, Origin, SwitchAt};
    use crate::schedule::Schedule;

    #[test]
    fn settings_and_now_next_lines() {
        let mut spec =
            ChannelSpec::simple("sales", Origin::ConfigFile, Music::LibraryPlaylist, -18.0);
        spec.main.shuffle = true;
        spec.main.announcements = Some(Announcements {
            clips: vec![Clip::File("/etc/mohd/wait.wav".into())],
            every: Interject::EverySeconds(30),
            loudness_lufs: None,
            fade_out_ms: 800,
            fade_in_ms: 800,
        });
        spec.greeting = Some(Clip::Library("t7".into()));
        spec.programmes.insert(
            "closed".into(),
            ProgrammeSpec {
                music: Music::Tracks(vec!["t1".into(), "t2".into()]),
                shuffle: false,
                announcements: None,
            },
        );
        spec.schedule = Some(Schedule::new("Europe/London", "closed", vec![], vec![]).unwrap());
        spec.switch = SwitchAt::Fade { ms: 2000 };
        assert_eq!(
            describe_settings(&spec),
            [
                "mode shared",
                "shuffle on",
                "announcements every 30 s: /etc/mohd/wait.wav (fade out 800 ms, in 800 ms, music + 3 LU)",
                "greeting library track t7",
                "programme closed: 2 library track(s), shuffle off, announcements none",
                "switch at once, 2000 ms fade",
            ]
        );
        let tracks = [TrackInfo {
            name: "a.flac".into(),
            start_sample: 0,
            len_samples: 80_000,
            kind: TrackKind::Music,
        }];
        let pass = PassPosition {
            tracks: &tracks,
            len_samples: 80_000,
            position: 0,
            repeats: false,
        };
        let at: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        assert_eq!(
            describe_now_next(&spec, &pass, at),
            [
                "schedule (Europe/London): now \"closed\", no change within 400 days",
                "now a.flac (at the pass's start), next: the next shuffled pass",
            ]
        );
    }
}
