//! Passes of a programme as the renderer makes them (issue 13): announcements interjected at
//! their times, faded music around them, each at its loudness target, at every rate; shuffled
//! passes chained without a click; a clip that fails is skipped and the music goes on.

mod common;

use std::path::{Path, PathBuf};

use mohd::audio::integrated_lufs;
use mohd::channel::compose::{AnnouncementPlan, Composition, Join};
use mohd::channel::encoded::{CodecPlan, reference_pcm};
use mohd::channel::spec::Interject;
use mohd::channel::{ChannelRender, MusicSource, RATE, TrackInfo, TrackKind};
use mohd::codec::Codec;

const MUSIC_LUFS: f64 = -18.0;
const ANNOUNCEMENT_LUFS: f64 = -15.0;
const FADE_MS: u32 = 800;

/// A speech-like clip: a `freq` tone in 4 Hz syllables, 5 ms attack, `seconds` long, mono,
/// in the format of the WAV file `like`.
fn write_clip(path: &Path, seconds: f64, freq: f64, like: &Path) {
    let like = hound::WavReader::open(like).expect("wav").spec();
    let (spec, rate) = (
        hound::WavSpec {
            channels: 1,
            ..like
        },
        like.sample_rate,
    );
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    let n = (seconds * f64::from(rate)) as usize;
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        let attack = (t / 0.005).min(1.0);
        let syllables = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 4.0 * t).cos();
        let v = 0.3 * attack * syllables * (2.0 * std::f64::consts::PI * freq * t).sin();
        w.write_sample((v * 32767.0) as i16).expect("sample");
    }
    w.finalize().expect("finalize");
}

struct Rig {
    _dir: tempfile::TempDir,
    music: Vec<PathBuf>,
    clips: Vec<PathBuf>,
}

impl Rig {
    /// `tracks` music files of the given lengths, and two clips (1.2 s and 0.9 s).
    fn new(track_seconds: &[f64]) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let music: Vec<PathBuf> = track_seconds
            .iter()
            .enumerate()
            .map(|(i, &secs)| {
                let p = dir.path().join(format!("track{i}.wav"));
                common::write_test_music(&p, secs, 16_000);
                p
            })
            .collect();
        let clips = [(1.2, 1500.0), (0.9, 1800.0)]
            .iter()
            .enumerate()
            .map(|(i, &(secs, f))| {
                let p = dir.path().join(format!("clip{i}.wav"));
                write_clip(&p, secs, f, &music[0]);
                p
            })
            .collect();
        Rig {
            _dir: dir,
            music,
            clips,
        }
    }

    fn composition(&self, every: Interject, first_clip: usize) -> Composition {
        Composition {
            announcements: Some(AnnouncementPlan {
                clips: self.clips.clone(),
                every,
                loudness_lufs: ANNOUNCEMENT_LUFS,
                fade_out_ms: FADE_MS,
                fade_in_ms: FADE_MS,
                first_clip,
            }),
            ..Composition::playlist(MusicSource::Files(self.music.clone()), MUSIC_LUFS)
        }
    }
}

fn to_f32(pcm: &[i16]) -> Vec<f32> {
    pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn announcements(r: &ChannelRender) -> Vec<&TrackInfo> {
    r.tracks
        .iter()
        .filter(|t| t.kind == TrackKind::Announcement)
        .collect()
}

/// The first sample at or after `from` louder than `threshold`.
fn onset(x: &[f32], from: usize, threshold: f32) -> usize {
    from + x[from..]
        .iter()
        .position(|s| s.abs() > threshold)
        .expect("an onset")
}

/// Every 5 s of pass time an announcement starts (± 20 ms, found in the audio), the music
/// faded out before it; each announcement within 1 LU of its own target and the music
/// between them within 1 LU of its target; the wideband renders place them at the same
/// times, frame for frame.
#[test]
fn announcements_every_n_seconds_are_on_time_faded_and_at_their_loudness() {
    let rig = Rig::new(&[14.0, 11.0]);
    let composition = rig.composition(Interject::EverySeconds(5), 0);
    let r = ChannelRender::compose("ann", &composition);
    assert!(r.playable, "{:?}", r.skipped);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.len_samples() % 160, 0, "whole frames");
    let x = to_f32(&r.pcm);
    let rate = RATE as usize;
    let ann = announcements(&r);
    // 25 s of music and about 1 s per announcement: slots at 5, 10, 15, 20, 25 s; the one at
    // 25 s would leave no music to fade back in.
    assert_eq!(ann.len(), 5, "{}", r.summary());
    assert_eq!(r.announcements(), 5);
    let names: Vec<&str> = ann.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "clip0.wav",
            "clip1.wav",
            "clip0.wav",
            "clip1.wav",
            "clip0.wav"
        ]
    );

    let music_rms = rms(&x[rate..3 * rate]);
    let mut music_between = Vec::new();
    let mut resumed_at = 0usize;
    for (k, a) in ann.iter().enumerate() {
        let due = (k + 1) * 5 * rate;
        assert!(
            (a.start_sample as usize).abs_diff(due) <= 160,
            "announcement {k} listed at {} for {due}",
            a.start_sample
        );
        // Found in the audio: the clip's first syllable rises above a tenth of full level
        // within its 5 ms attack.
        let found = onset(&x, due - 160, 0.05);
        assert!(
            found.abs_diff(due) <= 160,
            "announcement {k} heard at {found}, due {due}"
        );
        let before = rms(&x[due - 400..due]);
        assert!(
            before < 0.15 * music_rms,
            "music not faded before announcement {k}: {before:.4} against {music_rms:.4}"
        );
        let clip_secs = if k % 2 == 0 { 1.2 } else { 0.9 };
        let clip_end = due + (clip_secs * RATE as f64) as usize - 80;
        let lufs = integrated_lufs(&x[due..clip_end], RATE).expect("loud");
        assert!(
            (lufs - ANNOUNCEMENT_LUFS).abs() < 1.0,
            "announcement {k} at {lufs:.2} LUFS"
        );
        let fade = FADE_MS as usize * rate / 1000;
        if k > 0 {
            music_between.extend_from_slice(&x[resumed_at + fade..due - fade]);
        }
        resumed_at = (a.start_sample + a.len_samples) as usize;
    }
    let lufs = integrated_lufs(&music_between, RATE).expect("music");
    assert!(
        (lufs - MUSIC_LUFS).abs() < 1.0,
        "music between announcements at {lufs:.2} LUFS"
    );
    // After each announcement the interrupted track goes on ("resumed").
    assert!(r.tracks.iter().any(|t| t.kind == TrackKind::Resumed));

    // The same times at 16 and 48 kHz, and the same length in frames.
    for codec in [Codec::G722, Codec::Opus] {
        let wide = reference_pcm("ann", &composition, codec, r.frames());
        let wrate = codec.audio_rate() as usize;
        assert_eq!(wide.len(), r.frames() as usize * wrate / 50, "{codec:?}");
        let w = to_f32(&wide);
        for k in 0..ann.len() {
            let due = (k + 1) * 5 * wrate;
            let found = onset(&w, due - wrate / 50, 0.05);
            assert!(
                found.abs_diff(due) <= wrate / 50,
                "{codec:?}: announcement {k} at {found}, due {due}"
            );
        }
    }
}

/// After every 2 music tracks, rotating from the second clip: after tracks 2 and 4 (the end
/// of the pass, which then starts with the music fading in); the next pass continues the
/// rotation.
#[test]
fn announcements_after_every_k_tracks_rotate_and_fade() {
    let rig = Rig::new(&[3.0, 2.5, 3.5, 2.0]);
    let composition = rig.composition(Interject::EveryTracks(2), 1);
    let r = ChannelRender::compose("tracks", &composition);
    let kinds: Vec<(TrackKind, &str)> =
        r.tracks.iter().map(|t| (t.kind, t.name.as_str())).collect();
    use TrackKind::{Announcement, Music};
    assert_eq!(
        kinds,
        [
            (Music, "track0.wav"),
            (Music, "track1.wav"),
            (Announcement, "clip1.wav"),
            (Music, "track2.wav"),
            (Music, "track3.wav"),
            (Announcement, "clip0.wav"),
        ],
        "{}",
        r.summary()
    );
    let plan = composition.announcements.as_ref().expect("plan");
    assert_eq!(plan.next_first_clip(r.announcements()), 1);
    let x = to_f32(&r.pcm);
    let music_rms = rms(&x[RATE as usize..2 * RATE as usize]);
    // The pass starts with the music fading in, and each announcement follows a fade-out.
    assert!(rms(&x[..400]) < 0.15 * music_rms);
    for a in announcements(&r) {
        let at = a.start_sample as usize;
        assert!(rms(&x[at - 400..at]) < 0.15 * music_rms, "{}", a.name);
    }
    // The end of the pass (announcement padding) runs into its start without a click.
    let seam: Vec<f32> = x[x.len() - 80..].iter().chain(&x[..80]).copied().collect();
    let steps = seam
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max);
    assert!(steps < 0.01, "step {steps} at the seam");
}

/// A clip that cannot be decoded is skipped, named, and the rotation uses the next one; the
/// music goes on.
#[test]
fn a_clip_that_fails_is_skipped_and_the_music_goes_on() {
    let rig = Rig::new(&[12.0]);
    let broken = rig.music[0].with_file_name("broken.wav");
    std::fs::write(&broken, b"RIFF not really").expect("write");
    let mut composition = rig.composition(Interject::EverySeconds(4), 0);
    if let Some(plan) = composition.announcements.as_mut() {
        plan.clips = vec![broken.clone(), rig.clips[1].clone()];
    }
    let r = ChannelRender::compose("bad", &composition);
    assert!(r.playable);
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert!(r.skipped[0].name.ends_with("broken.wav"));
    let ann = announcements(&r);
    assert!(!ann.is_empty());
    assert!(ann.iter().all(|t| t.name == "clip1.wav"));
    // Every clip broken: the music alone, as without announcements.
    if let Some(plan) = composition.announcements.as_mut() {
        plan.clips = vec![broken];
    }
    let r = ChannelRender::compose("bad", &composition);
    let plain = ChannelRender::render("bad", &MusicSource::Files(rig.music.clone()), MUSIC_LUFS);
    assert_eq!(r.announcements(), 0);
    assert_eq!(r.pcm, plain.pcm);
}

/// Shuffled passes are chained: the previous pass's last track crossfades into the next
/// pass's first, so playing one pass after the other has no click where they meet, and each
/// pass is whole frames.
#[test]
fn chained_passes_join_without_a_click() {
    let rig = Rig::new(&[2.3, 3.1, 2.7]);
    let order = |o: &[usize]| MusicSource::Files(o.iter().map(|&i| rig.music[i].clone()).collect());
    let first = Composition {
        join: Join::Chain {
            previous_last: None,
        },
        ..Composition::playlist(order(&[0, 1, 2]), MUSIC_LUFS)
    };
    let second = Composition {
        join: Join::Chain {
            previous_last: Some(rig.music[2].clone()),
        },
        ..Composition::playlist(order(&[1, 2, 0]), MUSIC_LUFS)
    };
    let a = ChannelRender::compose("chain", &first);
    let b = ChannelRender::compose("chain", &second);
    for r in [&a, &b] {
        assert_eq!(r.len_samples() % 160, 0);
    }
    let join: Vec<f32> = to_f32(&a.pcm[a.pcm.len() - 400..])
        .into_iter()
        .chain(to_f32(&b.pcm[..400]))
        .collect();
    let max_step = |x: &[f32]| {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    };
    let inside = max_step(&to_f32(&a.pcm[8000..16000]));
    let at_join = max_step(&join);
    assert!(
        at_join <= 1.5 * inside,
        "step {at_join} where the passes meet, {inside} inside"
    );
    // The first pass also loops on itself cleanly (its own last track is its lead-in).
    let seam: Vec<f32> = to_f32(&a.pcm[a.pcm.len() - 400..])
        .into_iter()
        .chain(to_f32(&a.pcm[..400]))
        .collect();
    assert!(max_step(&seam) <= 1.5 * inside);
    // The wideband passes are fitted to the same frames.
    let wide = reference_pcm("chain", &second, Codec::Opus, b.frames());
    assert_eq!(wide.len(), b.frames() as usize * 960);
}

fn max_step(x: &[i16]) -> i32 {
    x.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// Every codec of the plan is served, and the segment is whole frames.
fn assert_whole_segment(segment: &ChannelRender, what: &str) {
    assert_eq!(segment.len_samples() % 160, 0, "{what}: whole frames");
    assert_eq!(segment.len_ticks(), 2 * segment.frames(), "{what}");
    for codec in Codec::ALL {
        assert!(segment.serves(codec), "{what}: {codec:?}");
    }
    let g722 = segment.wideband().g722().expect("G.722");
    assert_eq!(g722.frames(), segment.frames(), "{what}: G.722 frames");
    let opus = segment.wideband().opus().expect("Opus");
    assert_eq!(opus.frames(), segment.frames(), "{what}: Opus frames");
}

/// The greeting starts with the clip at its target loudness, fades out, then a second or
/// more of silence; whole frames, every codec.
#[test]
fn the_greeting_starts_with_the_clip_and_ends_in_silence() {
    let rig = Rig::new(&[3.0]);
    let plan = CodecPlan::default();
    let greeting = ChannelRender::greeting(&rig.clips[0], MUSIC_LUFS, &plan).expect("greeting");
    assert_whole_segment(&greeting, "greeting");
    let x = to_f32(&greeting.pcm);
    // The clip (1.2 s) from the first samples: its 5 ms attack is already well above the
    // silence threshold in the first 10 ms.
    assert!(rms(&x[40..80]) > 0.01, "starts with the clip");
    let clip = &x[..(1.2 * f64::from(RATE)) as usize - 80];
    let lufs = integrated_lufs(clip, RATE).expect("loud");
    assert!(
        (lufs - MUSIC_LUFS).abs() < 1.0,
        "greeting at {lufs:.2} LUFS"
    );
    let silent_tail = x.iter().rev().take_while(|s| **s == 0.0).count();
    assert!(
        silent_tail >= RATE as usize,
        "{silent_tail} samples of silence at the end"
    );
    // No click where the clip ends: the fade-out brings it down smoothly.
    let end = x.len() - silent_tail;
    assert!(max_step(&greeting.pcm[end - 400..end + 10]) < max_step(&greeting.pcm[..end]));
    assert_eq!(greeting.tracks[0].kind, TrackKind::Announcement);
    // A file that is not audio is an error, not a silent greeting.
    let broken = rig.clips[0].with_file_name("not-audio.wav");
    std::fs::write(&broken, b"RIFF?").expect("write");
    assert!(ChannelRender::greeting(&broken, MUSIC_LUFS, &plan).is_err());
}

/// A fade-out segment continues the pass where it is cut (no step above the music's own),
/// fades to silence and ends in it.
#[test]
fn a_fade_out_segment_continues_the_pass_and_ends_in_silence() {
    let rig = Rig::new(&[4.0, 3.0]);
    let plan = CodecPlan::default();
    let pass = ChannelRender::render("fade", &MusicSource::Files(rig.music.clone()), MUSIC_LUFS);
    let music_step = max_step(&pass.pcm);
    for at_ticks in [0u64, 150, 333, pass.len_ticks() - 2] {
        let segment = pass.fade_out_segment(at_ticks, 500, &plan);
        assert_whole_segment(&segment, "fade-out");
        assert!(
            segment.len_samples() >= 4000,
            "{} samples",
            segment.len_samples()
        );
        let cut = (at_ticks * 80) as usize;
        let before = pass.pcm[(cut + pass.len_samples() - 1) % pass.len_samples()];
        let join = [before, segment.pcm[0], segment.pcm[1]];
        assert!(
            max_step(&join) <= music_step,
            "at tick {at_ticks}: step {} into the segment, music's largest {music_step}",
            max_step(&join)
        );
        // At first it is the pass itself.
        assert_eq!(segment.pcm[0], pass.pcm[cut % pass.len_samples()]);
        // Then silence: the last frame is all zeros.
        let n = segment.len_samples();
        assert!(
            segment.pcm[n - 160..].iter().all(|&s| s == 0),
            "ends in silence"
        );
    }
}

/// Entries every second: a greeted caller's next entry after any position, its segment
/// fading the pass in from silence and ending on the pass's own samples, so moving on to
/// the pass has no step; the greeting's silence into an entry has none either.
#[test]
fn entries_fade_the_pass_in_and_hand_over_to_it_without_a_step() {
    let rig = Rig::new(&[3.0, 2.2]);
    let plan = CodecPlan::default();
    let pass = ChannelRender::render(
        "entries",
        &MusicSource::Files(rig.music.clone()),
        MUSIC_LUFS,
    );
    assert!(pass.entry_after(0).is_none(), "no entries until asked");
    let pass = pass.with_entries(&plan);
    let len = pass.len_ticks();
    let (at, _) = pass.entry_after(0).expect("entry");
    assert_eq!(at, 0);
    let (at, segment) = pass.entry_after(150).expect("entry");
    assert_eq!(at, 200);
    assert_whole_segment(&segment, "entry");
    assert_eq!(segment.len_ticks(), 14, "100 ms fade-in and 40 ms flat");
    // Past the last entry: the first, round the loop.
    let last = (len - 1) / 100 * 100;
    assert_eq!(pass.entry_after(last + 1).map(|e| e.0), Some(0));
    assert_eq!(pass.entry_after(len + 150).map(|e| e.0), Some(200));

    let start = (at * 80) as usize;
    let n = segment.len_samples();
    // Fades in from silence...
    assert!(
        segment.pcm[0].unsigned_abs() < 200,
        "first sample {}",
        segment.pcm[0]
    );
    // ...and its flat part is the pass's own samples, so the hand-over has no step.
    assert_eq!(&segment.pcm[800..], &pass.pcm[start + 800..start + n]);
    let music_step = max_step(&pass.pcm);
    let handover = [segment.pcm[n - 1], pass.pcm[start + n]];
    assert!(max_step(&handover) <= music_step);
    // From a greeting's silence into the entry: no click either.
    let silence_into_entry = [0i16, segment.pcm[0], segment.pcm[1]];
    assert!(max_step(&silence_into_entry) <= music_step / 4);

    // The same from the pass's start (a schedule switch into it): 300 ms in, 40 ms flat,
    // through the seam's crossfade.
    let into = pass.fade_in_segment(0, 300, 40, &plan);
    assert_whole_segment(&into, "fade-in");
    assert_eq!(into.len_ticks(), 34);
    let n = into.len_samples();
    assert!(
        into.pcm[0].unsigned_abs() < 200,
        "first sample {}",
        into.pcm[0]
    );
    assert_eq!(&into.pcm[2400..], &pass.pcm[2400..n]);
}

/// A pass with announcements round-trips through the render cache: the second obtain reads
/// the entry (writing nothing) and gives the same audio and the same tracks, kinds included;
/// another first clip is another entry.
#[test]
fn a_pass_with_announcements_is_cached_with_its_track_kinds() {
    let rig = Rig::new(&[9.0]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = mohd::channel::cache::RenderCache::new(dir.path().to_path_buf());
    let composition = rig.composition(Interject::EverySeconds(3), 0);
    let fresh = cache.render_channel("c", &composition);
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .expect("cache")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name(),
                    e.metadata().expect("meta").modified().expect("mtime"),
                )
            })
            .collect();
        v.sort();
        v
    };
    let stored = listing();
    assert_eq!(stored.len(), 1);
    let hit = cache.render_channel("c", &composition);
    assert_eq!(listing(), stored, "a hit writes nothing");
    assert_eq!(hit.pcm, fresh.pcm);
    assert_eq!(hit.tracks, fresh.tracks);
    assert!(hit.announcements() >= 2);
    let rotated = rig.composition(Interject::EverySeconds(3), 1);
    cache.render_channel("c", &rotated);
    assert_eq!(listing().len(), 2);
}
