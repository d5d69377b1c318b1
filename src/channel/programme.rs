//! What each channel plays, and the one way its render is obtained.
//!
//! Owns the rule that turns the config file, the uploaded library and the admin's settings into
//! each channel's [`Programme`] (its music and loudness target), and getting the render of a
//! [`Composition`] (a pass of a programme) or one of its tracks (prepared for the line-out or a
//! preview): from the render cache when an entry for exactly these inputs is there, else
//! rendered (and stored).
//! Start-up, library and settings changes, and the line-out all ask here, so they cannot
//! disagree about what a channel plays.
//!
//! A channel's render has two stages: the 8 kHz loop with G.711 ([`obtain_narrowband`]), then
//! the wideband codecs the [`CodecPlan`] enables ([`obtain_wideband`], about six times the work
//! for Opus). Start-up serves the first stage as soon as it is there and adds the second when
//! it completes; a library change obtains both ([`obtain_render`]) before swapping in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::cache::RenderCache;
use super::compose::Composition;
use super::encoded::{self, CodecPlan, Wideband};
use super::{ChannelRender, MusicSource, RATE, TrackError};
use crate::config::Config;
use crate::library::Library;

/// What one channel plays: the [`Composition`] of its one pass (its music in order, its
/// loudness target).
pub type Programme = Composition;

/// Every configured channel's programme, by channel name.
pub type Programmes = BTreeMap<String, Programme>;

/// Rendered loops, by channel name.
pub type Renders = BTreeMap<String, Arc<ChannelRender>>;

/// Every configured channel's programme now. The config file says what a channel plays; a
/// `music = "library"` channel plays the library's enabled tracks in playlist order instead
/// (or its configured music, the demo melody, while there are none), and the admin's loudness
/// setting (the library's loudness) overrides the target of the channels that
/// [`follows_the_library`]; a channel the config file fully describes keeps the file's target.
/// `library` is `None` when the library could not be opened: then the config alone decides.
pub fn programmes(config: &Config, library: Option<&Library>) -> Programmes {
    let playlist = library
        .map(Library::playlist_paths)
        .filter(|p| !p.is_empty())
        .map(MusicSource::Files);
    let loudness_setting = library.and_then(|l| l.settings().loudness_lufs);
    config
        .channels
        .iter()
        .map(|(name, c)| {
            let music = match &playlist {
                Some(playlist) if c.library => playlist.clone(),
                _ => c.music.clone(),
            };
            let loudness_lufs = match loudness_setting {
                Some(l) if follows_the_library(config, name) => l,
                _ => c.loudness_lufs,
            };
            let programme = Programme::playlist(music, loudness_lufs);
            (name.clone(), programme)
        })
        .collect()
}

/// The channel whose loudness is "the library's" (the settings page shows it, track previews
/// are rendered at it): the first `music = "library"` channel in name order, since that is
/// where uploaded tracks play; with none, the line-out's channel, which is always configured
/// and is the one the settings page's other fields (level, device) already belong to.
pub fn library_channel(config: &Config) -> &str {
    config
        .channels
        .iter()
        .find(|(_, c)| c.library)
        .map_or(config.lineout.channel.as_str(), |(n, _)| n.as_str())
}

/// Whether the library and its settings decide `channel`'s programme, so a library or settings
/// change re-renders it: every `music = "library"` channel, and [`library_channel`] (the
/// line-out's channel when no channel plays the library, so the loudness the settings page
/// shows is the one that channel plays at).
pub fn follows_the_library(config: &Config, channel: &str) -> bool {
    config.channels.get(channel).is_some_and(|c| c.library) || library_channel(config) == channel
}

/// The channel's loop with every codec `plan` enables: [`obtain_narrowband`] then
/// [`obtain_wideband`].
///
/// With a `cache`, every composition obtained is stored: pass `None` for one that will not be
/// asked for again (a shuffled pass after the first), so a card is not written a loop per
/// pass.
pub fn obtain_render(
    name: &str,
    programme: &Composition,
    plan: &CodecPlan,
    cache: Option<&RenderCache>,
    occasion: &'static str,
) -> ChannelRender {
    let render = obtain_narrowband(name, programme, cache, occasion);
    obtain_wideband(&render, programme, plan, cache, |_| {})
}

/// The channel's 8 kHz loop, encoded for G.711: from `cache` when it holds these exact inputs
/// (no decoding), else rendered and stored there; rendered without storing when there is no
/// cache. Never fails: unplayable music gives a silent loop with `playable` false. `occasion`
/// says why, in the log.
pub fn obtain_narrowband(
    name: &str,
    programme: &Composition,
    cache: Option<&RenderCache>,
    occasion: &'static str,
) -> ChannelRender {
    let started = Instant::now();
    let render = match cache {
        Some(c) => c.render_channel(name, programme),
        None => ChannelRender::compose(name, programme),
    };
    tracing::info!(
        channel = %name,
        tracks = render.tracks.len(),
        skipped = render.skipped.len(),
        loop_seconds = format!("{:.1}", render.len_samples() as f64 / f64::from(RATE)),
        render_ms = started.elapsed().as_millis() as u64,
        occasion,
        "channel loop ready"
    );
    if !render.playable {
        tracing::error!(channel = %name, "channel has no playable music: callers hear silence, OPTIONS answers 503");
    }
    render
}

/// `render` (the channel's 8 kHz loop) with the codecs `plan` enables (a G.711 codec it does
/// not enable is dropped), the wideband ones each from
/// `cache` when it holds it, else rendered at the codec's rate from `programme`, fitted to
/// the loop's frame count, encoded and stored. A codec whose encoder fails is left out
/// (logged); the others play. An unplayable render's silence is encoded but not stored.
/// `ready` gets the render so far each time a codec is added (G.722 first, the cheaper), so
/// start-up can serve each as soon as it is there.
pub fn obtain_wideband(
    render: &ChannelRender,
    programme: &Composition,
    plan: &CodecPlan,
    cache: Option<&RenderCache>,
    mut ready: impl FnMut(ChannelRender),
) -> ChannelRender {
    let mut wideband = Wideband::default();
    let frames = render.frames();
    for codec in plan.wideband() {
        let started = Instant::now();
        let encoded = match cache {
            Some(c) if render.playable => {
                c.encoded_loop(&render.name, programme, codec, plan, frames)
            }
            _ => encoded::render_encoded(&render.name, programme, codec, frames, plan),
        };
        let Some(encoded) = encoded else { continue };
        tracing::info!(
            channel = %render.name,
            codec = codec.config_name(),
            frames = encoded.frames(),
            encode_ms = started.elapsed().as_millis() as u64,
            "channel encoding ready"
        );
        wideband.insert(encoded);
        ready(render.with_wideband(wideband.clone(), plan));
    }
    render.with_wideband(wideband, plan)
}

/// One file prepared at `rate` (for the line-out and previews): from `cache` when it holds it,
/// else prepared (and stored there). See [`RenderCache::prepare_track`].
pub fn obtain_track(
    path: &Path,
    loudness_lufs: f64,
    rate: u32,
    cache: Option<&RenderCache>,
) -> Result<Vec<f32>, TrackError> {
    match cache {
        Some(c) => c.prepare_track(path, loudness_lufs, rate),
        None => super::prepare_track(path, loudness_lufs, rate),
    }
}

/// The cached head (first 30 s) of every programme's loop, or `None` if any is missing: then
/// every loop is obtained in full before serving, as on a first boot. See
/// [`RenderCache::load_head`] for why serving a head first is seamless.
pub fn load_heads(programmes: &Programmes, cache: &RenderCache) -> Option<Renders> {
    let started = Instant::now();
    let mut heads = BTreeMap::new();
    for (name, programme) in programmes {
        let head = cache.load_head(name, programme)?;
        heads.insert(name.clone(), Arc::new(head));
    }
    tracing::info!(
        channels = heads.len(),
        load_ms = started.elapsed().as_millis() as u64,
        "serving from the cached loops"
    );
    Some(heads)
}

/// A cold start's head is at least this long (when the playlist is): the first tracks whose
/// sum reaches it, whole. A typical first track (three minutes) is the head on its own, far
/// longer than a full render of a long playlist takes, so the head does not loop before the
/// full loop joins.
pub const HEAD_MIN_SECONDS: u32 = 30;

/// Past a crossfade the two renders' limiter gains agree again after this long (twenty
/// time constants of the limiter's release and more: its envelope is back at unity, to the
/// last bit of an `f32`, when no peak is near).
const LIMITER_SETTLE_MS: u64 = 2000;

/// What a channel plays while its full loop renders: the first seconds of the programme,
/// and the part of it where it is the full loop sample for sample (give or take the last
/// bit), at the same positions, so the full loop can take over there with no step.
#[derive(Debug, Clone)]
pub struct Head {
    pub render: Arc<ChannelRender>,
    /// Media-clock ticks (10 ms) of the head, counted from its start, at which the full
    /// loop may take over at the same position. Empty when nowhere is safe (a head of a
    /// first track shorter than the margins): then it takes over at once.
    pub joinable: std::ops::Range<u64>,
    /// What the head was rendered from (its first tracks), for its wideband codecs; `None`
    /// for a head that is not rendered here (a placeholder, a cached head).
    composition: Option<Composition>,
}

impl Head {
    /// What plays before a head, a second of silence ([`placeholders`]): nothing to keep
    /// continuous, so the full loop takes over at once, at its absolute position.
    pub fn placeholder(render: Arc<ChannelRender>) -> Head {
        Head {
            render,
            joinable: 0..0,
            composition: None,
        }
    }

    /// A head that is already the full loop's first samples (a cached loop's first 30 s):
    /// joinable anywhere in it.
    pub fn exact(render: Arc<ChannelRender>) -> Head {
        let ticks = render.frames() * 2;
        Head {
            render,
            joinable: 0..ticks,
            composition: None,
        }
    }
}

/// The head of `programme`, rendered from its first files only (see [`HEAD_MIN_SECONDS`]),
/// or `None` when a head would not be the start of the full loop or would not be quicker to
/// make: announcements (their places depend on the whole pass), the demo melody (ten
/// seconds: the full loop is as quick), a playlist that fits in a head, or first files that
/// cannot be played (the full render finds what can).
///
/// Why the head is the full loop's start: the first track is prepared exactly as the full
/// render prepares it (its whole-track loudness measured first, so no provisional gain and
/// no fade are needed at the join) and sits at position 0 of both; the tracks after it in
/// the head are joined as the full loop joins them (a looping pass fits its length at the
/// seam, which is not in the joinable part). What differs is the seam (the head loops on its
/// own tracks, the full loop crossfades from its last track) and, for a shuffled pass, the
/// join after the first track (fitted to whole frames there): [`Head::joinable`] leaves
/// those out, with a margin for the loop-wide limiter. The head loops on itself if the full
/// loop is late, its seam crossfaded like any loop's.
pub fn render_head(name: &str, programme: &Composition) -> Option<Head> {
    let programme = programme.expanded();
    let MusicSource::Files(files) = &programme.music else {
        return None;
    };
    if programme.announcements.is_some() {
        return None;
    }
    let started = Instant::now();
    let min_len = u64::from(HEAD_MIN_SECONDS) * u64::from(RATE);
    // One track at a time: tracks are minutes long, so this is one render almost always,
    // and a short first track is quick to prepare again.
    for count in 1..files.len() {
        let head = Composition::playlist(
            MusicSource::Files(files[..count].to_vec()),
            programme.loudness_lufs,
        );
        let render = ChannelRender::compose(name, &head);
        if !render.playable || !render.skipped.is_empty() {
            return None;
        }
        let music: u64 = render.tracks.iter().map(|t| t.len_samples).sum();
        if music < min_len {
            continue;
        }
        let joinable = joinable_ticks(&render, &programme.join);
        tracing::info!(
            channel = %name,
            tracks = count,
            head_seconds = format!("{:.1}", render.len_samples() as f64 / f64::from(RATE)),
            render_ms = started.elapsed().as_millis() as u64,
            "channel head ready: serving it while the full loop renders"
        );
        return Some(Head {
            render: Arc::new(render),
            joinable,
            composition: Some(head),
        });
    }
    None
}

impl Head {
    /// Whether this head was rendered from the programme's first tracks ([`render_head`]),
    /// so the full loop must be complete (every codec) before it takes over: wideband
    /// callers hear the head's wideband codecs meanwhile ([`Head::with_wideband`]).
    pub fn is_rendered(&self) -> bool {
        self.composition.is_some()
    }

    /// This head with the wideband codecs `plan` enables, rendered from the same first
    /// tracks at each codec's rate and fitted to the head's frames, so a G.722 or Opus caller
    /// hears the head too; `None` for a head not rendered here, or with no wideband codec
    /// enabled. The encoders run over the head as a loop (pre-roll from its quietest frame,
    /// as every loop's); at the join the full loop's encoder has run over the same samples
    /// for seconds, so its state is the head's as near as makes no difference (measured in
    /// this module's tests).
    pub fn with_wideband(&self, plan: &CodecPlan) -> Option<Head> {
        let composition = self.composition.as_ref()?;
        plan.wideband().next()?;
        let render = obtain_wideband(&self.render, composition, plan, None, |_| {});
        Some(Head {
            render: Arc::new(render),
            joinable: self.joinable.clone(),
            composition: self.composition.clone(),
        })
    }
}

/// How much of the first track a cold start's opening ([`render_opening`]) plays: far longer
/// than the head takes to render, so the head takes over on the opening's first lap.
pub const OPENING_SECONDS: u32 = 10;

/// How long the gain ramp lasts from the opening to the head ([`Head::behind_opening`]): the
/// same music at two loudness estimates, so a slow ramp is a level change no one hears as a
/// step.
const OPENING_RAMP_MS: u64 = 500;

/// What a channel plays while its head renders, when it will have one ([`render_head`]): the
/// first [`OPENING_SECONDS`] of its first track, decoded from the start of the file only, so
/// it is there in milliseconds however long the file (see [`super::prepare_opening`]). Its
/// loudness is measured on those seconds, not the whole track: the head, when ready, takes
/// over with a gain ramp ([`Head::behind_opening`]).
pub fn render_opening(name: &str, programme: &Composition) -> Option<Arc<ChannelRender>> {
    let programme = programme.expanded();
    let MusicSource::Files(files) = &programme.music else {
        return None;
    };
    if programme.announcements.is_some() || files.len() < 2 {
        return None;
    }
    let started = Instant::now();
    let samples =
        super::prepare_opening(&files[0], programme.loudness_lufs, RATE, OPENING_SECONDS).ok()?;
    let frame = super::frame_len(RATE);
    let whole_frames = samples.len() / frame * frame;
    if whole_frames == 0 {
        return None;
    }
    let pcm: Vec<i16> = samples[..whole_frames]
        .iter()
        .map(|&s| super::quantise(s))
        .collect();
    let track = super::TrackInfo {
        name: file_name(&files[0]),
        start_sample: 0,
        len_samples: whole_frames as u64,
        kind: super::TrackKind::Music,
    };
    let render =
        ChannelRender::from_parts(name, RATE, pcm, vec![track], Vec::new(), true, None).ok()?;
    tracing::info!(
        channel = %name,
        opening_seconds = format!("{:.1}", render.len_samples() as f64 / f64::from(RATE)),
        render_ms = started.elapsed().as_millis() as u64,
        "channel opening ready: its first seconds play while the head renders"
    );
    Some(Arc::new(render))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl Head {
    /// This head as it takes over from `opening` (live since tick 0 of the media clock, on
    /// its first lap) with no step: the opening's samples until a point at least `margin`
    /// ticks after `now_tick` and past the head's seam, a linear ramp to the head's samples
    /// over [`OPENING_RAMP_MS`] (the same music at the same positions, at two gains), then
    /// the head's. Joinable where the head is and the ramp is over. `None` when the opening
    /// has no room left for the ramp (it was on its last seconds): then the head goes live
    /// as it is.
    pub fn behind_opening(
        &self,
        opening: &ChannelRender,
        now_tick: u64,
        margin: u64,
        plan: &CodecPlan,
    ) -> Option<Head> {
        let samples_per_tick = u64::from(RATE / 100);
        let ramp = OPENING_RAMP_MS * u64::from(RATE) / 1000;
        let seam = (super::crossfade_len(RATE) + super::frame_len(RATE)) as u64;
        let from = ((now_tick + margin) * samples_per_tick).max(seam);
        let to = from + ramp;
        let head = &self.render;
        if to > opening.len_samples() as u64 || to > head.len_samples() as u64 {
            return None;
        }
        let (from, to) = (from as usize, to as usize);
        let mut pcm = head.pcm.to_vec();
        pcm[..from].copy_from_slice(&opening.pcm[..from]);
        for (i, s) in pcm[from..to].iter_mut().enumerate() {
            let w = (i as f32 + 0.5) / (to - from) as f32;
            let mixed = f32::from(opening.pcm[from + i]) * (1.0 - w) + f32::from(*s) * w;
            *s = mixed.round() as i16;
        }
        let blended = ChannelRender::from_parts(
            &head.name,
            RATE,
            pcm,
            head.tracks.clone(),
            Vec::new(),
            true,
            head.loudness_lufs(),
        )
        .ok()?
        .with_wideband(head.wideband().clone(), plan);
        let after_ramp = (to as u64).div_ceil(samples_per_tick);
        Some(Head {
            render: Arc::new(blended),
            joinable: self.joinable.start.max(after_ramp)..self.joinable.end,
            composition: self.composition.clone(),
        })
    }
}

/// The ticks of `head` (rendered from the first tracks of a pass joined by `join`) that are
/// the full pass's: from the end of the seam's crossfade to the start of the last head
/// track's fade-out (a looping pass), or of the first track's (a chained pass, whose first
/// join is fitted), each with [`LIMITER_SETTLE_MS`] of margin.
fn joinable_ticks(head: &ChannelRender, join: &super::compose::Join) -> std::ops::Range<u64> {
    let samples_per_tick = u64::from(RATE / 100);
    // The seam's crossfade at most: one crossfade, fitted by up to a frame.
    let seam = (super::crossfade_len(RATE) + super::frame_len(RATE)) as u64;
    let settle = LIMITER_SETTLE_MS * u64::from(RATE) / 1000;
    let end = match join {
        super::compose::Join::Loop => head.len_samples() as u64,
        super::compose::Join::Chain { .. } => head.tracks.first().map_or(0, |t| t.len_samples),
    };
    let first = (seam + settle).div_ceil(samples_per_tick);
    let last = end.saturating_sub(seam + settle) / samples_per_tick;
    first..last.max(first)
}

/// What each channel plays until its head is rendered: a second of digital silence, marked
/// playable (nothing is known to be wrong yet), so SIP answers from the first moment and RTP
/// flows on the call's clock; the head takes over at the same position.
pub fn placeholders(programmes: &Programmes) -> Renders {
    programmes
        .keys()
        .filter_map(|name| {
            let silence = vec![0i16; RATE as usize];
            let render =
                ChannelRender::from_parts(name, RATE, silence, Vec::new(), Vec::new(), true, None);
            Some((name.clone(), Arc::new(render.ok()?)))
        })
        .collect()
}

/// Deletes the cache entries no programme uses any more, with `plan`'s codecs and settings
/// (see [`RenderCache::retain`]).
pub fn retain_cache(cache: &RenderCache, programmes: &Programmes, plan: &CodecPlan) {
    let live: Vec<Composition> = programmes.values().cloned().collect();
    cache.retain(&live, plan);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `lib` plays the library, `files` a configured file; `files` is listed first so that
    /// "first" means name order, not file order.
    const TWO_CHANNELS: &str = "[channels.lib]\nmusic = \"library\"\nloudness_lufs = -20.0\n\
        [channels.files]\nmusic = \"/srv/a.wav\"\nloudness_lufs = -16.0\n\
        [[dialplan.route]]\nuser = \"1\"\nchannel = \"files\"\n\
        [[dialplan.route]]\nuser = \"2\"\nchannel = \"lib\"\n";

    fn demo() -> Programme {
        Programme::playlist(MusicSource::Demo, -18.0)
    }

    fn g711_only() -> CodecPlan {
        CodecPlan::new(&crate::codec::Codec::G711, encoded::DEFAULT_OPUS_BITRATE)
    }

    fn config(toml: &str) -> Config {
        Config::from_str(toml, Path::new("/etc/mohd/mohd.toml")).expect("config")
    }

    fn files(p: &Programme) -> Vec<PathBuf> {
        match &p.music {
            MusicSource::Files(f) => f.clone(),
            MusicSource::Demo => Vec::new(),
        }
    }

    fn library_with_one_track(dir: &Path) -> Library {
        let mut lib = Library::open(dir).expect("library");
        let wav = dir.join("tone.wav");
        crate::audio::test_util::write_wav(
            &wav,
            8000,
            &crate::audio::test_util::sine(440.0, 8000, 16_000, 0.5),
        );
        let bytes = std::fs::read(&wav).expect("wav");
        let mut up = lib
            .begin_upload("tone.wav", false, 1 << 30)
            .expect("upload");
        up.write(&bytes).expect("write");
        lib.commit_upload(up, crate::library::probe_file)
            .expect("commit");
        lib
    }

    #[test]
    fn without_a_library_the_config_decides() {
        let c = config(TWO_CHANNELS);
        let p = programmes(&c, None);
        assert!(matches!(p["lib"].music, MusicSource::Demo));
        assert_eq!(p["lib"].loudness_lufs, -20.0);
        assert_eq!(files(&p["files"]), vec![PathBuf::from("/srv/a.wav")]);
        assert_eq!(p["files"].loudness_lufs, -16.0);
    }

    #[test]
    fn an_empty_library_plays_the_demo_and_its_loudness_setting_applies_to_library_channels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lib = Library::open(dir.path()).expect("library");
        let c = config(TWO_CHANNELS);
        assert!(matches!(
            programmes(&c, Some(&lib))["lib"].music,
            MusicSource::Demo
        ));
        lib.set_settings(crate::library::Settings {
            loudness_lufs: Some(-23.0),
            ..Default::default()
        })
        .expect("settings");
        let p = programmes(&c, Some(&lib));
        assert_eq!(p["lib"].loudness_lufs, -23.0);
        // A channel the config file describes keeps the file's target: a settings change
        // re-renders only the library's channels, so applying it here too would leave this
        // channel's live loop and its cache entry at odds with its programme.
        assert_eq!(p["files"].loudness_lufs, c.channels["files"].loudness_lufs);
    }

    #[test]
    fn a_library_channel_plays_the_enabled_tracks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = library_with_one_track(dir.path());
        let c = config(TWO_CHANNELS);
        let p = programmes(&c, Some(&lib));
        assert_eq!(files(&p["lib"]), vec![lib.music_dir().join("tone.wav")]);
        assert_eq!(files(&p["files"]), vec![PathBuf::from("/srv/a.wav")]);
    }

    #[test]
    fn the_library_channel_is_the_first_library_channel_else_the_lineouts() {
        assert_eq!(library_channel(&config(TWO_CHANNELS)), "lib");
        let no_library = config(
            "[channels.a]\nmusic = \"demo\"\n[channels.b]\nmusic = \"demo\"\n\
             [lineout]\nchannel = \"b\"\n\
             [[dialplan.route]]\nuser = \"1\"\nchannel = \"a\"\n\
             [[dialplan.route]]\nuser = \"2\"\nchannel = \"b\"\n",
        );
        assert_eq!(library_channel(&no_library), "b");
    }

    #[test]
    fn the_loudness_setting_reaches_exactly_the_channels_a_library_change_re_renders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lib = Library::open(dir.path()).expect("library");
        lib.set_settings(crate::library::Settings {
            loudness_lufs: Some(-30.0),
            ..Default::default()
        })
        .expect("settings");
        let no_library = config(
            "[channels.a]\nmusic = \"demo\"\nloudness_lufs = -14.0\n\
             [channels.b]\nmusic = \"demo\"\nloudness_lufs = -14.0\n\
             [lineout]\nchannel = \"b\"\n\
             [[dialplan.route]]\nuser = \"1\"\nchannel = \"a\"\n\
             [[dialplan.route]]\nuser = \"2\"\nchannel = \"b\"\n",
        );
        for (c, channel) in [(&config(TWO_CHANNELS), "lib"), (&no_library, "b")] {
            let p = programmes(c, Some(&lib));
            for (name, programme) in &p {
                let follows = follows_the_library(c, name);
                assert_eq!(follows, name == channel, "{name}");
                let expected = if follows {
                    -30.0
                } else {
                    c.channels[name].loudness_lufs
                };
                assert_eq!(programme.loudness_lufs, expected, "{name}");
            }
        }
    }

    #[test]
    fn a_render_obtained_twice_comes_from_the_cache_the_second_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = RenderCache::new(dir.path().join("cache"));
        let programme = demo();
        let programmes = BTreeMap::from([("default".to_owned(), programme.clone())]);
        assert!(load_heads(&programmes, &cache).is_none());
        let fresh = obtain_render("default", &programme, &g711_only(), Some(&cache), "test");
        let heads = load_heads(&programmes, &cache).expect("cached");
        assert_eq!(
            heads["default"].len_samples(),
            fresh.len_samples().min(30 * 8000)
        );
        let again = obtain_render("default", &programme, &g711_only(), Some(&cache), "test");
        assert_eq!(again.pcm, fresh.pcm);
    }

    /// Tones of `seconds` each at 8 kHz in `dir`, a different pitch each, with a slow
    /// tremolo so no second repeats.
    fn tones(dir: &Path, seconds: &[usize]) -> Vec<PathBuf> {
        seconds
            .iter()
            .enumerate()
            .map(|(i, &secs)| {
                let path = dir.join(format!("t{i}.wav"));
                let pitch = 220.0 * (1.0 + i as f64 * 0.37);
                let x: Vec<f32> = crate::audio::test_util::sine(pitch, 8000, secs * 8000, 0.8)
                    .iter()
                    .enumerate()
                    .map(|(n, s)| s * (0.6 + 0.4 * (n as f32 / 5000.0).sin()))
                    .collect();
                crate::audio::test_util::write_wav(&path, 8000, &x);
                path
            })
            .collect()
    }

    /// The most two renders' samples differ over `ticks`.
    fn largest_difference(
        a: &ChannelRender,
        b: &ChannelRender,
        ticks: &std::ops::Range<u64>,
    ) -> i32 {
        (ticks.start * 80..ticks.end * 80)
            .map(|i| (i32::from(a.pcm[i as usize]) - i32::from(b.pcm[i as usize])).abs())
            .max()
            .unwrap_or(0)
    }

    /// The head is the full loop's start in its joinable part (give or take the last bit
    /// the loop-wide limiter leaves: loud tones, so it acts at every crossfade), for a
    /// looping pass and for a shuffled pass's first (whose first join is fitted).
    #[test]
    fn a_head_is_the_full_loops_start_where_it_may_join() {
        use crate::channel::compose::Join;
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tones(dir.path(), &[34, 5, 6, 7]);
        for join in [
            Join::Loop,
            Join::Chain {
                previous_last: None,
            },
        ] {
            let programme = Composition {
                join: join.clone(),
                ..Programme::playlist(MusicSource::Files(files.clone()), -7.0)
            };
            let head = render_head("c", &programme).expect("a head");
            assert_eq!(head.render.tracks.len(), 1, "{join:?}");
            let full = ChannelRender::compose("c", &programme);
            assert!(full.len_samples() > head.render.len_samples());
            // From the seam's crossfade and the limiter's settling to the first track's end.
            assert!(head.joinable.start <= 250, "{:?}", head.joinable);
            assert!(head.joinable.end >= 3100, "{:?}", head.joinable);
            assert!(
                largest_difference(&head.render, &full, &head.joinable) <= 1,
                "{join:?}"
            );
            // Outside it they differ: the seam is the head's own.
            assert!(
                largest_difference(&head.render, &full, &(0..2)) > 100,
                "{join:?}"
            );
        }
    }

    /// What a caller on `codec` decodes of ticks `from .. to` (2-tick packets), from
    /// `before` until tick `join` and from `after` from then on, with one decoder.
    fn decoded(
        codec: crate::codec::Codec,
        before: &ChannelRender,
        after: &ChannelRender,
        ticks: std::ops::Range<u64>,
        join: u64,
    ) -> Vec<f64> {
        use crate::codec::Codec;
        use crate::codec::g722::G722Decoder;
        use crate::codec::opus::OpusDecoder;
        let mut g722 = G722Decoder::new();
        let mut opus = OpusDecoder::new(48_000).expect("decoder");
        let (mut packet, mut pcm) = ([0u8; 1500], [0i16; 960]);
        let mut out = Vec::new();
        for tick in ticks.step_by(2) {
            let source = if tick < join { before } else { after };
            let n = source.fill_packet(codec, tick, 2, &mut packet);
            let got = match codec {
                Codec::G722 => g722.decode(&packet[..n], &mut pcm),
                _ => opus.decode(&packet[..n], &mut pcm).expect("decode"),
            };
            out.extend(pcm[..got].iter().map(|&s| f64::from(s)));
        }
        out
    }

    /// A G.722 or Opus caller crosses the join from the head's encoding to the full loop's
    /// with no audible step: the decoder, primed on the head's packets, decodes the full
    /// loop's next second as one primed on the full loop's own packets does (their encoders
    /// ran over the same samples for seconds before the join).
    #[test]
    fn wideband_callers_cross_the_join_with_no_step() {
        use crate::codec::Codec;
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tones(dir.path(), &[31, 5, 6]);
        let programme = Programme::playlist(MusicSource::Files(files), -7.0);
        let plan = CodecPlan::default();
        let head = render_head("c", &programme).expect("a head");
        let head = head.with_wideband(&plan).expect("wideband");
        let full = obtain_render("c", &programme, &plan, None, "test");
        for codec in [Codec::G722, Codec::Opus] {
            assert!(head.render.serves(codec), "{codec:?}");
            for join in [head.joinable.start.next_multiple_of(2), 1500] {
                let ticks = join - 200..join + 100;
                let crossing = decoded(codec, &head.render, &full, ticks.clone(), join);
                let staying = decoded(codec, &full, &full, ticks, join);
                let after = crossing.len() * 2 / 3;
                let (mut err, mut sig) = (0.0, 0.0);
                for (a, b) in crossing[after..].iter().zip(&staying[after..]) {
                    err += (a - b).powi(2);
                    sig += b.powi(2);
                }
                let snr = 10.0 * (sig / f64::max(err, 1e-9)).log10();
                eprintln!("{codec:?} join at {join}: {snr:.1} dB");
                assert!(snr > 30.0, "{codec:?} at {join}: {snr:.1} dB");
            }
        }
    }

    /// The largest sample-to-sample step in `x`.
    fn largest_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    /// The opening is the first track's first seconds: the head's music at the head's
    /// positions, a gain apart, so the head takes over with a ramp: before it the blend is
    /// the opening exactly, after it the head exactly (joinable from there on), and across
    /// it no sample steps further than the music does on either side. Too late for the ramp
    /// (the opening nearly over), no blend.
    #[test]
    fn an_opening_hands_over_to_the_head_with_a_ramp_and_no_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tones(dir.path(), &[34, 5, 6, 7]);
        let programme = Programme::playlist(MusicSource::Files(files), -7.0);
        let opening = render_opening("c", &programme).expect("an opening");
        assert_eq!(opening.len_samples(), OPENING_SECONDS as usize * 8000);
        let head = render_head("c", &programme).expect("a head");
        let past_seam = 800..opening.len_samples();
        let (a, b) = (&opening.pcm[past_seam.clone()], &head.render.pcm[past_seam]);
        let dot = |x: &[i16], y: &[i16]| -> f64 {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum()
        };
        let correlation = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
        assert!(correlation > 0.99, "{correlation}");

        let plan = g711_only();
        let behind = head
            .behind_opening(&opening, 100, 50, &plan)
            .expect("room for the ramp");
        let (from, to) = (150 * 80, 150 * 80 + 4000);
        let blend = &behind.render.pcm;
        assert_eq!(blend[..from], opening.pcm[..from]);
        assert_eq!(blend[to..], head.render.pcm[to..]);
        assert_eq!(blend.len(), head.render.len_samples());
        let after_ramp = (to as u64 / 80).max(head.joinable.start);
        assert_eq!(behind.joinable, after_ramp..head.joinable.end);
        let around = from - 80..to + 80;
        let music = largest_step(&opening.pcm[around.clone()])
            .max(largest_step(&head.render.pcm[around.clone()]));
        assert!(largest_step(&blend[around]) <= music + 8);
        assert!(head.behind_opening(&opening, 960, 50, &plan).is_none());
    }

    /// A short first track: the head takes tracks until it lasts [`HEAD_MIN_SECONDS`], each
    /// joined as in the full loop; no head when the playlist is no longer than that, nor
    /// for the demo or a pass with announcements.
    #[test]
    fn a_head_takes_tracks_until_it_is_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tones(dir.path(), &[12, 13, 9, 8]);
        let programme = Programme::playlist(MusicSource::Files(files.clone()), -7.0);
        let head = render_head("c", &programme).expect("a head");
        assert_eq!(head.render.tracks.len(), 3);
        let full = ChannelRender::compose("c", &programme);
        assert!(head.joinable.end * 80 > head.render.tracks[2].start_sample);
        assert!(largest_difference(&head.render, &full, &head.joinable) <= 1);
        let short = Programme::playlist(MusicSource::Files(files[..2].to_vec()), -7.0);
        assert!(render_head("c", &short).is_none());
        assert!(render_head("c", &demo()).is_none());
    }

    /// A restart with a warm cache serves every enabled codec without rendering or encoding:
    /// the second obtain reads what the first stored and writes nothing.
    #[test]
    fn a_warm_cache_serves_every_codec_without_encoding_again() {
        use crate::codec::Codec;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = RenderCache::new(dir.path().join("cache"));
        let programme = demo();
        let plan = CodecPlan::default();
        let first = obtain_render("default", &programme, &plan, Some(&cache), "test");
        let listing = || {
            let mut v: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
                .expect("cache")
                .map(|e| {
                    let e = e.expect("entry");
                    let m = e.metadata().expect("metadata");
                    (e.file_name(), m.len(), m.modified().expect("mtime"))
                })
                .collect();
            v.sort();
            v
        };
        let stored = listing();
        assert_eq!(stored.len(), 3, "the loop, G.722 and Opus: {stored:?}");
        let again = obtain_render("default", &programme, &plan, Some(&cache), "test");
        assert_eq!(listing(), stored);
        let (mut a, mut b) = ([0u8; 1500], [0u8; 1500]);
        for codec in Codec::ALL {
            assert!(again.serves(codec), "{codec:?}");
            for tick in [0u64, 2, 998, 1000, 123_456] {
                let n = first.fill_packet(codec, tick, 2, &mut a);
                assert!(n > 0, "{codec:?}");
                assert_eq!(again.fill_packet(codec, tick, 2, &mut b), n);
                assert_eq!(a[..n], b[..n], "{codec:?} at {tick}");
            }
        }
    }

    /// An Opus encoder that refuses (here: a bitrate libopus cannot do) leaves Opus out; G.711
    /// and G.722 play.
    #[test]
    fn an_opus_encoder_failure_leaves_g711_and_g722_playing() {
        use crate::codec::Codec;
        let programme = demo();
        let plan = CodecPlan::new(&Codec::ALL, 1);
        let render = obtain_render("default", &programme, &plan, None, "test");
        let mut out = [0u8; 1500];
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722] {
            assert!(render.serves(codec));
            assert_eq!(render.fill_packet(codec, 7, 2, &mut out), 160, "{codec:?}");
        }
        assert!(!render.serves(Codec::Opus));
        // Its calls get encoded silence: RTP keeps flowing.
        let n = render.fill_packet(Codec::Opus, 8, 2, &mut out);
        assert!(n > 0 && n < 100, "{n} bytes");
        // A codec the plan does not enable is neither rendered nor kept.
        let g722_only = CodecPlan::new(&[Codec::Pcmu, Codec::G722], 40_000);
        let render = obtain_render("default", &programme, &g722_only, None, "test");
        assert!(render.serves(Codec::G722) && !render.serves(Codec::Opus));
        assert!(render.wideband().opus().is_none());
        assert!(render.serves(Codec::Pcmu) && !render.serves(Codec::Pcma));
        assert_eq!(render.fill_packet(Codec::Pcma, 8, 2, &mut out), 0);
    }
}
