//! The line-out: a channel's music on the sound card, for PBXs with an analog music-on-hold
//! input. Owns the line-out thread, its decoder thread and the ALSA device (through cpal).
//!
//! Three threads, each with one job:
//!
//! - the **decoder thread** prepares the next track at the card's rate, joined to the one
//!   before it ([`player::Decoder`]); it is the only one that reads files;
//! - the **line-out thread** keeps a lock-free ring buffer about a second ahead of the card
//!   ([`player::Feeder`]), opens the device and reopens it when it fails, is missing or
//!   stalls (every [`LineoutOptions::retry`]), and keeps the counters;
//! - cpal's **audio thread** runs the callback, which only copies out of the ring
//!   ([`device`]).
//!
//! A slow disk or a busy CPU stalls the decoder, not the sound: the ring holds a second and the
//! next track is prepared a whole track ahead. A missing or unplugged device stalls nothing
//! else either: SIP keeps serving, the line-out logs it and retries until the device is back.
//!
//! Start-up is what a listener waits for after a power cut, so nothing waits on anything else:
//! the device is opened and set up (format, buffers) while the decoder makes the first unit,
//! which with the track in the render cache is only its first seconds ([`player`]), and the
//! stream starts as soon as both are there: about 10 ms after the threads start, where a
//! whole track to load and a device probed for its formats took 100.
//!
//! Playlist changes ([`LineoutHandle::set_music`]) reach the line-out at a track boundary: the
//! unit after the playing one is rebuilt from the new playlist, joined with the usual
//! crossfade. Because the ring already holds up to a second of the old music, that is the first
//! boundary at least that far ahead.

pub mod device;
pub mod player;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::cache::RenderCache;
use crate::channel::programme::Programme;
use crate::config::LineoutConfig;
use crate::library::Settings;
use device::{Counters, Output, Playing, Prepared, RingProducer};
pub use device::{DeviceInfo, Format, SampleKind, Supported, list_devices};
use player::{Decoder, Feeder, Unit};

/// How far ahead of the card the ring is kept.
const AHEAD: Duration = Duration::from_secs(1);

/// When there is no music to play (not decoded yet, or nothing playable), silence is kept in
/// the ring only this far ahead, so the music starts this soon once it comes.
const SILENCE_AHEAD: Duration = Duration::from_millis(100);

/// With no next unit yet, the end of the unit playing (which is faded out, in case the next
/// comes too late) is held back while the ring still holds this much: a track that takes the
/// decoder longer than the ring's lead costs no dip unless it is later than that. Far above
/// what a busy CPU delays the line-out thread by.
const HOLD_FADE_ABOVE: Duration = Duration::from_millis(500);

/// How often the line-out thread tops the ring up. Far below [`AHEAD`], so a thread delayed
/// by a busy CPU still has most of a second in hand.
const TICK: Duration = Duration::from_millis(20);

/// How long a device that is ready waits for the first track before it starts with silence.
const MUSIC_WAIT: Duration = Duration::from_secs(3);

/// Frames produced per step when topping up.
const CHUNK_FRAMES: usize = 1024;

/// A device that takes no frames for this long while playing is reopened.
const STALL: Duration = Duration::from_secs(5);

/// How often underruns are reported in the log, at most.
const UNDERRUN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Quietest and loudest `level_db`.
pub const LEVEL_RANGE: std::ops::RangeInclusive<f64> = -60.0..=0.0;

/// Why the line-out cannot play right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineoutError {
    /// No ALSA device has this name.
    #[error("no ALSA playback device {device:?} (see `mohd devices`)")]
    NotFound { device: String },
    /// The device exists but could not be opened or started.
    #[error("cannot open ALSA device {device:?}: {message}")]
    Open { device: String, message: String },
    /// The device offers no sample format we can write.
    #[error("ALSA device {device:?} offers no usable format (16/32-bit or float PCM)")]
    NoFormat { device: String },
}

/// What the line-out plays, and where.
#[derive(Debug, Clone)]
pub struct LineoutOptions {
    /// ALSA PCM name: `default`, `hw:1,0`, `plughw:CARD=PCH,DEV=0`, or one from an asoundrc.
    pub device: String,
    /// The channel whose music it plays (for logs).
    pub channel: String,
    /// What that channel plays now ([`crate::channel::programme`]).
    pub programme: Programme,
    /// Output level, in dB (within [`LEVEL_RANGE`]).
    pub level_db: f64,
    /// Pause between attempts to open a missing or failed device.
    pub retry: Duration,
    /// Where prepared tracks are kept between runs, so a restart plays at once without
    /// decoding (`<state>/cache/`); `None` decodes every track every time.
    pub cache: Option<RenderCache>,
}

impl LineoutOptions {
    pub fn new(device: &str, channel: &str, programme: Programme) -> Self {
        LineoutOptions {
            device: device.to_owned(),
            channel: channel.to_owned(),
            programme,
            level_db: 0.0,
            retry: Duration::from_secs(3),
            cache: None,
        }
    }

    /// The configured line-out, with the admin's device and level where set, playing
    /// `programme` (its channel's), keeping prepared tracks in `cache`.
    pub fn configured(
        config: &LineoutConfig,
        settings: &Settings,
        programme: Programme,
        cache: Option<RenderCache>,
    ) -> Self {
        let device = settings.lineout_device.as_deref().unwrap_or(&config.device);
        let mut opts = LineoutOptions::new(device, &config.channel, programme);
        opts.level_db = settings.lineout_level_db.unwrap_or(config.level_db);
        opts.cache = cache;
        opts
    }
}

/// Where the line-out is.
#[derive(Debug, Clone, PartialEq)]
pub enum LineoutState {
    /// Not opened yet.
    Starting,
    /// The device plays.
    Playing {
        format: Format,
    },
    /// The device is missing or failed; retrying.
    Waiting {
        error: String,
    },
    Stopped,
}

/// A snapshot for logs, status pages and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct LineoutStats {
    pub device: String,
    pub state: LineoutState,
    /// The track playing (as far as the ring has got).
    pub track: Option<String>,
    /// Frames the device has taken, over all opens.
    pub frames_played: u64,
    /// Times the audio callback found the ring short (played silence instead).
    pub underruns: u64,
    /// Xruns ALSA reported.
    pub xruns: u64,
    /// Times the device was opened successfully.
    pub opens: u64,
}

struct Shared {
    counters: Arc<Counters>,
    status: Mutex<(LineoutState, Option<String>, u64)>,
    device: String,
}

impl Shared {
    fn stats(&self) -> LineoutStats {
        let (state, track, opens) = self
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        LineoutStats {
            device: self.device.clone(),
            state,
            track,
            frames_played: self.counters.frames.load(Ordering::Relaxed),
            underruns: self.counters.underruns.load(Ordering::Relaxed),
            xruns: self.counters.xruns.load(Ordering::Relaxed),
            opens,
        }
    }

    fn set(&self, f: impl FnOnce(&mut (LineoutState, Option<String>, u64))) {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(e) => f(&mut e.into_inner()),
        }
    }
}

/// Messages to the line-out thread.
enum Msg {
    Unit(Unit),
    Stop,
}

/// Messages to the decoder thread.
enum DecMsg {
    /// Make the unit that follows this one.
    Need(Option<u64>),
    SetProgramme(Programme),
    SetRate(u32),
    Stop,
}

/// The running line-out. Dropping it stops it too (without waiting).
pub struct LineoutHandle {
    to_lineout: Sender<Msg>,
    to_decoder: Sender<DecMsg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LineoutHandle {
    /// A new playlist (or loudness): it reaches the line-out at the next track boundary.
    pub fn set_programme(&self, programme: Programme) {
        let _ = self.to_decoder.send(DecMsg::SetProgramme(programme));
    }

    pub fn stats(&self) -> LineoutStats {
        self.shared.stats()
    }

    /// Stops playing, closes the device and waits for the line-out thread.
    pub fn stop(mut self) -> LineoutStats {
        self.shutdown();
        self.shared.stats()
    }

    fn shutdown(&mut self) {
        let _ = self.to_decoder.send(DecMsg::Stop);
        let _ = self.to_lineout.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LineoutHandle {
    fn drop(&mut self) {
        let _ = self.to_decoder.send(DecMsg::Stop);
        let _ = self.to_lineout.send(Msg::Stop);
    }
}

/// Starts the line-out on the ALSA device named in `opts`. Returns at once: the device is
/// opened, and the first track decoded, on the line-out's own threads.
pub fn start(opts: LineoutOptions) -> std::io::Result<LineoutHandle> {
    start_with_output(opts, device::AlsaOutput)
}

/// [`start`] with another output (tests).
pub fn start_with_output(
    opts: LineoutOptions,
    output: impl Output,
) -> std::io::Result<LineoutHandle> {
    let (to_lineout, from_all) = mpsc::channel();
    let (to_decoder, decoder_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        status: Mutex::new((LineoutState::Starting, None, 0)),
        device: opts.device.clone(),
    });
    // The decoder starts on the likeliest rate, so the first track is being prepared while
    // the device opens; a device at another rate restarts it.
    let mut decoder = Decoder::new(48_000, &opts.programme.music, opts.programme.loudness_lufs);
    if let Some(cache) = &opts.cache {
        decoder = decoder.with_cache(cache.clone());
    }
    {
        let units = to_lineout.clone();
        std::thread::Builder::new()
            .name("mohd-lineout-dec".to_owned())
            .spawn(move || decoder_thread(decoder, decoder_rx, units))?;
    }
    let thread = {
        let shared = shared.clone();
        let to_decoder = to_decoder.clone();
        std::thread::Builder::new()
            .name("mohd-lineout".to_owned())
            .spawn(move || {
                LineoutThread {
                    opts,
                    output,
                    shared,
                    to_decoder,
                    rx: from_all,
                }
                .run()
            })?
    };
    tracing::debug!("line-out threads started");
    Ok(LineoutHandle {
        to_lineout,
        to_decoder,
        shared,
        thread: Some(thread),
    })
}

fn decoder_thread(decoder: Decoder, rx: Receiver<DecMsg>, units: Sender<Msg>) {
    let mut d = DecoderLoop {
        decoder,
        rx,
        units,
        pending: None,
        last: None,
        retry_at: None,
        no_music_logged: false,
    };
    loop {
        // Take every message before working, so a change that came with a request counts.
        match d.receive() {
            Err(Disconnected) | Ok(Some(DecMsg::Stop)) => return,
            Ok(Some(msg)) => {
                d.apply(msg);
                continue;
            }
            Ok(None) => {}
        }
        if !d.work() {
            return;
        }
    }
}

/// The line-out thread is gone.
struct Disconnected;

/// The decoder thread's state between messages.
struct DecoderLoop {
    decoder: Decoder,
    rx: Receiver<DecMsg>,
    units: Sender<Msg>,
    /// The request being worked on, and the last one served: a playlist change rebuilds the
    /// unit after the one the line-out plays.
    pending: Option<Option<u64>>,
    last: Option<Option<u64>>,
    /// With nothing playable, when to try again.
    retry_at: Option<Instant>,
    no_music_logged: bool,
}

impl DecoderLoop {
    /// The next message: without waiting while there is work, until the retry time while
    /// nothing is playable, else as long as it takes. `None`: time to work.
    fn receive(&mut self) -> Result<Option<DecMsg>, Disconnected> {
        if self.pending.is_some() && self.retry_at.is_none() {
            return match self.rx.try_recv() {
                Ok(m) => Ok(Some(m)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(Disconnected),
            };
        }
        if let Some(at) = self.retry_at {
            return match self
                .rx
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Ok(m) => Ok(Some(m)),
                Err(RecvTimeoutError::Timeout) => {
                    self.retry_at = None;
                    Ok(None)
                }
                Err(RecvTimeoutError::Disconnected) => Err(Disconnected),
            };
        }
        self.rx.recv().map(Some).map_err(|_| Disconnected)
    }

    fn apply(&mut self, msg: DecMsg) {
        match msg {
            DecMsg::Stop => {}
            DecMsg::Need(after) => self.pending = Some(after),
            DecMsg::SetProgramme(p) => {
                self.decoder.set_music(&p.music, p.loudness_lufs);
                self.no_music_logged = false;
                self.pending = self.pending.or(self.last);
            }
            DecMsg::SetRate(rate) => {
                self.decoder.set_rate(rate);
                // The line-out asks afresh at the new rate.
                self.pending = None;
                self.last = None;
            }
        }
        self.retry_at = None;
    }

    /// Makes the unit asked for, if any, and sends it. Returns false when the line-out
    /// thread is gone.
    fn work(&mut self) -> bool {
        let Some(after) = self.pending else {
            return true;
        };
        let asked = Instant::now();
        match self.decoder.next_unit(after) {
            Ok(unit) => {
                tracing::debug!(
                    track = %unit.name,
                    seconds = unit.samples.len() as f64 / f64::from(unit.rate.max(1)),
                    took_ms = asked.elapsed().as_millis() as u64,
                    "line-out: unit ready"
                );
                if self.no_music_logged {
                    tracing::info!(track = %unit.name, "line-out: music is playable again");
                    self.no_music_logged = false;
                }
                self.pending = None;
                self.last = Some(after);
                self.units.send(Msg::Unit(unit)).is_ok()
            }
            Err(e) => {
                if !self.no_music_logged {
                    tracing::error!(reason = %e.0, "line-out: nothing playable; silence until the music can be read");
                    self.no_music_logged = true;
                }
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                true
            }
        }
    }
}

/// The device currently open, with its end of the ring.
struct Open {
    format: Format,
    ring: RingProducer,
    playing: Box<dyn Playing>,
    last_frames: u64,
    last_progress: Instant,
}

struct LineoutThread<O: Output> {
    opts: LineoutOptions,
    output: O,
    shared: Arc<Shared>,
    to_decoder: Sender<DecMsg>,
    rx: Receiver<Msg>,
}

/// The device side of the line-out thread, from one tick to the next.
struct DeviceSlot {
    open: Option<Open>,
    /// The device is set up, waiting since this instant; it starts once there is music for
    /// it (or after [`MUSIC_WAIT`], with silence).
    prepared: Option<(Prepared, Instant)>,
    next_attempt: Instant,
    last_error: Option<String>,
    ever_played: bool,
}

/// Underruns already reported, and when the next report may come.
struct UnderrunLog {
    logged: u64,
    next_at: Instant,
}

impl<O: Output> LineoutThread<O> {
    fn run(mut self) {
        let started = Instant::now();
        let gain = 10f64.powf(self.opts.level_db.clamp(-120.0, 0.0) / 20.0) as f32;
        let mut feeder = Feeder::new(48_000);
        let mut slot = DeviceSlot {
            open: None,
            prepared: None,
            next_attempt: started,
            last_error: None,
            ever_played: false,
        };
        let mut mono = vec![0f32; CHUNK_FRAMES];
        let mut underruns = UnderrunLog {
            logged: 0,
            next_at: started,
        };
        tracing::info!(device = %self.opts.device, channel = %self.opts.channel, level_db = self.opts.level_db, "line-out starting");

        loop {
            let now = Instant::now();
            // The decoder works even without a device, so the music is ready when it opens.
            if let Some(after) = feeder.request() {
                let _ = self.to_decoder.send(DecMsg::Need(after));
            }
            self.set_up_device(&mut slot, &mut feeder, now, started);
            self.start_when_ready(&mut slot, &mut feeder, gain, now, started);
            if let Some(o) = slot.open.as_mut() {
                top_up(&mut feeder, &mut o.ring, o.format, gain, &mut mono, false);
            }
            self.watch_device(&mut slot, now);
            self.log_underruns(&mut underruns, now);
            let track = feeder.track();
            self.shared.set(|s| {
                if s.1.as_deref() != track {
                    s.1 = track.map(str::to_owned);
                }
            });
            if !self.take_units(&mut feeder) {
                return self.finish(slot.open, started);
            }
        }
    }

    /// With no device open or set up, sets one up when the retry pause is over.
    fn set_up_device(
        &mut self,
        slot: &mut DeviceSlot,
        feeder: &mut Feeder,
        now: Instant,
        started: Instant,
    ) {
        if slot.open.is_some() || slot.prepared.is_some() || now < slot.next_attempt {
            return;
        }
        match self.prepare(feeder) {
            Ok(p) => {
                tracing::debug!(
                    device = %self.opts.device,
                    after_ms = started.elapsed().as_millis() as u64,
                    "line-out device set up"
                );
                slot.prepared = Some((p, now));
            }
            Err(e) => {
                self.failed(e.to_string(), &mut slot.last_error);
                slot.next_attempt = now + self.opts.retry;
            }
        }
    }

    /// Starts the device set up once music is ready for it, or it has waited long enough.
    fn start_when_ready(
        &mut self,
        slot: &mut DeviceSlot,
        feeder: &mut Feeder,
        gain: f32,
        now: Instant,
        started: Instant,
    ) {
        let ready = slot.prepared.as_ref().is_some_and(|(_, since)| {
            feeder.ready() > 0 || now.duration_since(*since) >= MUSIC_WAIT
        });
        if !ready {
            return;
        }
        let Some((p, _)) = slot.prepared.take() else {
            return;
        };
        let format = p.format;
        match self.start_stream(feeder, p, gain) {
            Ok(o) => {
                if slot.ever_played {
                    tracing::info!(device = %self.opts.device, rate = format.rate, "line-out device is back; playing again");
                } else {
                    tracing::info!(
                        device = %self.opts.device,
                        rate = format.rate,
                        channels = format.channels,
                        format = format.sample.name(),
                        track = feeder.track().unwrap_or("(silence)"),
                        after_ms = started.elapsed().as_millis() as u64,
                        "line-out playing"
                    );
                }
                slot.ever_played = true;
                slot.last_error = None;
                self.shared.set(|s| {
                    s.0 = LineoutState::Playing { format };
                    s.2 += 1;
                });
                slot.open = Some(o);
            }
            Err(e) => {
                self.failed(e.to_string(), &mut slot.last_error);
                slot.next_attempt = now + self.opts.retry;
            }
        }
    }

    /// Closes the open device when it failed or stopped taking audio, to reopen it soon.
    fn watch_device(&self, slot: &mut DeviceSlot, now: Instant) {
        let Some(o) = slot.open.as_mut() else {
            return;
        };
        let frames = self.shared.counters.frames.load(Ordering::Relaxed);
        if frames != o.last_frames {
            o.last_frames = frames;
            o.last_progress = now;
        }
        let failure = o.playing.failed().or_else(|| {
            (now.duration_since(o.last_progress) > STALL)
                .then(|| format!("the device took no audio for {} s", STALL.as_secs()))
        });
        if let Some(error) = failure {
            tracing::error!(device = %self.opts.device, %error, "line-out device failed; reopening");
            self.shared.set(|s| s.0 = LineoutState::Waiting { error });
            slot.open = None;
            slot.next_attempt = now + self.opts.retry.min(Duration::from_millis(500));
        }
    }

    /// Reports new underruns, at most every [`UNDERRUN_LOG_EVERY`].
    fn log_underruns(&self, log: &mut UnderrunLog, now: Instant) {
        let underruns = self.shared.counters.underruns.load(Ordering::Relaxed);
        if underruns > log.logged && now >= log.next_at {
            tracing::warn!(
                underruns,
                new = underruns - log.logged,
                "line-out underrun: the card played silence"
            );
            log.logged = underruns;
            log.next_at = now + UNDERRUN_LOG_EVERY;
        }
    }

    /// Waits up to a [`TICK`] for units from the decoder and hands them to the feeder.
    /// Returns false when the line-out is to stop.
    fn take_units(&self, feeder: &mut Feeder) -> bool {
        match self.rx.recv_timeout(TICK) {
            Ok(Msg::Unit(unit)) => {
                feeder.offer(unit);
                // More may be waiting; take them before the next tick.
                while let Ok(m) = self.rx.try_recv() {
                    match m {
                        Msg::Unit(u) => {
                            feeder.offer(u);
                        }
                        Msg::Stop => return false,
                    }
                }
                true
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => false,
            Err(RecvTimeoutError::Timeout) => true,
        }
    }

    /// Logs a failure to open once (again only when the reason changes) and records it.
    fn failed(&self, msg: String, last_error: &mut Option<String>) {
        if last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(error = %msg, retry_s = self.opts.retry.as_secs_f64(), "line-out cannot play; SIP is not affected; retrying");
        } else {
            tracing::debug!(error = %msg, "line-out still cannot play");
        }
        self.shared.set(|s| {
            s.0 = LineoutState::Waiting { error: msg.clone() };
        });
        *last_error = Some(msg);
    }

    /// Opens the device and sets it up to play, at once (before the first track is ready):
    /// that takes tens of milliseconds, which then overlap the track's loading.
    fn prepare(&mut self, feeder: &mut Feeder) -> Result<Prepared, LineoutError> {
        let p = self
            .output
            .prepare(&self.opts.device, AHEAD, self.shared.counters.clone())?;
        let rate = p.format.rate;
        if rate != feeder.rate() {
            *feeder = Feeder::new(rate);
            let _ = self.to_decoder.send(DecMsg::SetRate(rate));
            if let Some(after) = feeder.request() {
                let _ = self.to_decoder.send(DecMsg::Need(after));
            }
        }
        Ok(p)
    }

    /// Starts the stream with a ring already full of what is ready: music as far as there is,
    /// or a whole ring of silence, since the device takes a buffer's worth at once at start.
    fn start_stream(
        &mut self,
        feeder: &mut Feeder,
        prepared: Prepared,
        gain: f32,
    ) -> Result<Open, LineoutError> {
        let Prepared {
            format,
            mut ring,
            mut playing,
        } = prepared;
        let mut mono = vec![0f32; CHUNK_FRAMES];
        top_up(feeder, &mut ring, format, gain, &mut mono, true);
        playing.play()?;
        Ok(Open {
            format,
            ring,
            playing,
            last_frames: self.shared.counters.frames.load(Ordering::Relaxed),
            last_progress: Instant::now(),
        })
    }

    fn finish(self, open: Option<Open>, started: Instant) {
        drop(open);
        let stats = self.shared.stats();
        self.shared.set(|s| s.0 = LineoutState::Stopped);
        tracing::info!(
            device = %self.opts.device,
            seconds = started.elapsed().as_secs(),
            frames = stats.frames_played,
            underruns = stats.underruns,
            xruns = stats.xruns,
            opens = stats.opens,
            "line-out stopped"
        );
    }
}

/// Fills the ring: music as far as [`AHEAD`] (the ring's size), but for the end of a unit with
/// no next one yet while the ring holds [`HOLD_FADE_ABOVE`]; silence, when no music is ready,
/// only up to [`SILENCE_AHEAD`] so the music is not queued behind it, or the whole ring when
/// `starting` (the device takes a whole buffer at once when it starts).
fn top_up(
    feeder: &mut Feeder,
    ring: &mut RingProducer,
    format: Format,
    gain: f32,
    mono: &mut [f32],
    starting: bool,
) {
    let channels = format.channels;
    let frames_of = |d: Duration| (u64::from(format.rate) * d.as_millis() as u64 / 1000) as usize;
    let silence_frames = frames_of(SILENCE_AHEAD);
    let hold_frames = frames_of(HOLD_FADE_ABOVE);
    let music_at_start = feeder.ready() > 0;
    loop {
        let vacant = ring.vacant_frames(channels);
        let buffered = ring.occupied_frames(channels);
        let ready = feeder.ready();
        let mut n = vacant.min(mono.len());
        if ready > 0 {
            let unfaded = feeder.ready_unfaded();
            if unfaded > 0 {
                n = n.min(unfaded);
            } else if buffered >= hold_frames {
                return;
            } else {
                n = n.min(ready);
            }
        } else if !starting || music_at_start {
            n = n.min(silence_frames.saturating_sub(buffered));
        }
        if n == 0 {
            return;
        }
        let chunk = &mut mono[..n];
        feeder.fill(chunk);
        ring.push_mono(chunk, gain, channels);
    }
}

/// `mohd devices`: every playback device with its description, the rates it takes and the
/// format the line-out would use, or why it cannot be opened.
pub fn devices_report(devices: &[DeviceInfo]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for d in devices {
        let _ = writeln!(s, "{}", d.name);
        if !d.description.is_empty() && d.description != d.name {
            let _ = writeln!(s, "    {}", d.description);
        }
        match (&d.supported, d.chosen) {
            (Err(e), _) => {
                let _ = writeln!(s, "    cannot open: {e}");
            }
            (Ok(sup), chosen) => {
                let _ = writeln!(s, "    rates: {}", rates_summary(sup));
                match chosen {
                    Some(f) => {
                        let _ = writeln!(
                            s,
                            "    line-out would play: {} Hz, {} channel{}, {}",
                            f.rate,
                            f.channels,
                            if f.channels == 1 { "" } else { "s" },
                            f.sample.name()
                        );
                    }
                    None => {
                        let _ = writeln!(s, "    no usable format (16/32-bit or float PCM)");
                    }
                }
            }
        }
    }
    if !sound_card_present() {
        let _ = writeln!(
            s,
            "(no sound card: /proc/asound/pcm lists no playback device; \
             [lineout] enabled = \"auto\" leaves the line-out off)"
        );
    }
    s
}

/// "44100, 48000 Hz", "8000-192000 Hz" or "any".
fn rates_summary(supported: &[Supported]) -> String {
    let mut ranges: Vec<(u32, u32)> = supported.iter().map(|s| (s.min_rate, s.max_rate)).collect();
    ranges.sort_unstable();
    ranges.dedup();
    if ranges.is_empty() {
        return "none".to_owned();
    }
    if ranges.iter().any(|&(lo, hi)| lo <= 8000 && hi >= 768_000) {
        return "any (converted by ALSA)".to_owned();
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    format!("{} Hz", parts.join(", "))
}

/// Whether this machine has a sound card that can play: `/proc/asound/pcm` lists a playback
/// device. This is what `enabled = "auto"` (the default) goes by.
pub fn sound_card_present() -> bool {
    std::fs::read_to_string("/proc/asound/pcm").is_ok_and(|s| has_playback(&s))
}

fn has_playback(proc_asound_pcm: &str) -> bool {
    proc_asound_pcm
        .lines()
        .any(|l| l.split(':').any(|f| f.trim().starts_with("playback")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{goertzel_amp, sine, write_wav};
    use crate::channel::MusicSource;
    use device::{Format, RingConsumer, SampleKind};
    use ringbuf::traits::Consumer as _;
    use std::sync::atomic::AtomicBool;

    /// A stand-in sound card: a thread takes frames from the ring at twice real time (to keep
    /// tests short) and records them. It can be made to fail opening.
    struct TestOutput {
        rate: u32,
        fail_opens: Arc<std::sync::atomic::AtomicU32>,
        recorded: Arc<Mutex<Vec<f32>>>,
    }

    struct Card {
        ring: RingConsumer,
        counters: Arc<Counters>,
        recorded: Arc<Mutex<Vec<f32>>>,
        rate: u32,
    }

    struct TestPlaying {
        stop: Arc<AtomicBool>,
        /// What the card thread needs, until `play` starts it.
        waiting: Option<Card>,
        thread: Option<JoinHandle<()>>,
    }

    impl Drop for TestPlaying {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Playing for TestPlaying {
        fn play(&mut self) -> Result<(), LineoutError> {
            let Some(Card {
                ring,
                counters,
                recorded,
                rate,
            }) = self.waiting.take()
            else {
                return Ok(());
            };
            let RingConsumer::F32(mut ring) = ring else {
                panic!("asked for f32");
            };
            let period = (rate / 100) as usize; // 10 ms of frames every 5 ms: 2x
            let stop = self.stop.clone();
            self.thread = Some(std::thread::spawn(move || {
                let mut buf = vec![0f32; period * 2];
                let mut short = false;
                while !stop.load(Ordering::Relaxed) {
                    device::play(&mut ring, &mut buf, 2, &counters, &mut short);
                    recorded.lock().unwrap().extend(buf.chunks(2).map(|f| f[0]));
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = ring.try_pop();
            }));
            Ok(())
        }

        fn failed(&self) -> Option<String> {
            None
        }
    }

    impl Output for TestOutput {
        fn prepare(
            &mut self,
            device: &str,
            ahead: Duration,
            counters: Arc<Counters>,
        ) -> Result<Prepared, LineoutError> {
            if self.fail_opens.load(Ordering::Relaxed) > 0 {
                self.fail_opens.fetch_sub(1, Ordering::Relaxed);
                return Err(LineoutError::NotFound {
                    device: device.to_owned(),
                });
            }
            let format = Format {
                rate: self.rate,
                channels: 2,
                sample: SampleKind::F32,
            };
            let frames = self.rate as usize * ahead.as_millis() as usize / 1000;
            let (ring, consumer) = device::ring(format, frames);
            Ok(Prepared {
                format,
                ring,
                playing: Box::new(TestPlaying {
                    stop: Arc::new(AtomicBool::new(false)),
                    waiting: Some(Card {
                        ring: consumer,
                        counters,
                        recorded: self.recorded.clone(),
                        rate: self.rate,
                    }),
                    thread: None,
                }),
            })
        }
    }

    fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f()
    }

    /// Through the threads: a missing device is retried until it appears, the music then
    /// plays at the level, and a playlist change through the handle reaches the output.
    #[test]
    fn retries_plays_and_follows_playlist_changes() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 8000;
        let a = dir.path().join("a.wav");
        write_wav(&a, rate, &sine(400.0, rate, 8000, 0.3));
        let b = dir.path().join("b.wav");
        write_wav(&b, rate, &sine(1000.0, rate, 8000, 0.3));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let fail_opens = Arc::new(std::sync::atomic::AtomicU32::new(2));
        let output = TestOutput {
            rate,
            fail_opens: fail_opens.clone(),
            recorded: recorded.clone(),
        };
        let files = |f| Programme::playlist(MusicSource::Files(vec![f]), -18.0);
        let mut opts = LineoutOptions::new("test", "t", files(a));
        opts.retry = Duration::from_millis(50);
        opts.level_db = -6.0;
        let lineout = start_with_output(opts, output).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || matches!(
                lineout.stats().state,
                LineoutState::Playing { .. }
            )),
            "{:?}",
            lineout.stats()
        );
        assert_eq!(fail_opens.load(Ordering::Relaxed), 0, "retried");
        assert!(wait_for(Duration::from_secs(10), || {
            recorded.lock().unwrap().len() > 12_000
        }));
        let tail: Vec<f32> = {
            let r = recorded.lock().unwrap();
            r[r.len() - 4000..].to_vec()
        };
        // -18 LUFS is a 0.178 peak sine; -6 dB halves it.
        let amp = goertzel_amp(&tail, rate, 400.0);
        assert!((amp - 0.178 / 2.0).abs() < 0.01, "400 Hz at {amp}");

        lineout.set_programme(files(b));
        assert!(
            wait_for(Duration::from_secs(15), || {
                let r = recorded.lock().unwrap();
                goertzel_amp(&r[r.len() - 2000..], rate, 1000.0) > 0.05
            }),
            "the new playlist never played"
        );
        let stats = lineout.stop();
        assert_eq!(stats.state, LineoutState::Stopped);
        assert_eq!(stats.opens, 1);
        assert_eq!(stats.underruns, 0, "{stats:?}");
        assert_eq!(stats.track.as_deref(), Some("b.wav"));
    }

    /// A next unit that comes after the ring has been filled up to the end of the one playing,
    /// but while the ring still holds plenty, joins as if it had come in time: that end is held
    /// back, not faded out. Without a next unit, once the ring runs low, it is faded out.
    #[test]
    fn a_late_next_unit_joins_without_a_dip_while_the_ring_holds_plenty() {
        let rate = 8000;
        let format = Format {
            rate,
            channels: 2,
            sample: SampleKind::F32,
        };
        let unit = |seq, follows, len| Unit {
            seq,
            follows,
            rate,
            name: "x".into(),
            samples: Arc::new(vec![0.5; len]),
        };
        let mut mono = vec![0f32; CHUNK_FRAMES];
        let (mut ring, consumer) = device::ring(format, rate as usize);
        let RingConsumer::F32(mut card) = consumer else {
            panic!("f32");
        };
        let mut played = Vec::new();
        let play = |card: &mut ringbuf::HeapCons<f32>, played: &mut Vec<f32>, frames: usize| {
            let mut buf = vec![0f32; 2 * frames];
            let n = card.pop_slice(&mut buf);
            played.extend(buf[..n].chunks(2).map(|f| f[0]));
        };
        let mut feeder = Feeder::new(rate);
        assert_eq!(feeder.request(), Some(None));
        assert!(feeder.offer(unit(1, None, 12_000)));
        top_up(&mut feeder, &mut ring, format, 1.0, &mut mono, true);
        for _ in 0..2 {
            play(&mut card, &mut played, 3200);
            top_up(&mut feeder, &mut ring, format, 1.0, &mut mono, false);
        }
        // Unit 1 is in the ring but for its last crossfade length, held back.
        let xf = crate::channel::crossfade_len(rate);
        assert_eq!(feeder.ready(), xf);
        assert_eq!(ring.occupied_frames(2), 12_000 - xf - 6400);
        assert_eq!(feeder.request(), Some(Some(1)));
        assert!(feeder.offer(unit(2, Some(1), 8000)));
        top_up(&mut feeder, &mut ring, format, 1.0, &mut mono, false);
        play(&mut card, &mut played, 8000);
        // The fade-in, then 0.5 throughout: no dip at the join (sample 12 000).
        assert!(played[xf..].iter().all(|&s| s == 0.5), "a dip");
        assert_eq!(played.len(), 14_400);

        // No unit 3: as the ring runs low, unit 2's end is faded out, then silence.
        for _ in 0..10 {
            play(&mut card, &mut played, 1000);
            top_up(&mut feeder, &mut ring, format, 1.0, &mut mono, false);
        }
        let end = 12_000 + 8000 - 1;
        assert!(played.len() > end + 100);
        assert!(played[end] < 0.05, "not faded out: {}", played[end]);
        assert!(played[end - xf + 1..=end].windows(2).all(|w| w[1] <= w[0]));
        assert!(played[end + 1..].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn devices_report_names_rates_and_choice() {
        let sup = |lo, hi| Supported {
            channels: 2,
            min_rate: lo,
            max_rate: hi,
            format: Some(SampleKind::I16),
        };
        let devices = [
            DeviceInfo {
                name: "hw:CARD=PCH,DEV=0".into(),
                description: "HDA Intel PCH, ALC887-VD Analog".into(),
                supported: Ok(vec![sup(44_100, 44_100), sup(48_000, 48_000)]),
                chosen: Some(Format {
                    rate: 48_000,
                    channels: 2,
                    sample: SampleKind::I16,
                }),
            },
            DeviceInfo {
                name: "default".into(),
                description: "Default Audio Device".into(),
                supported: Ok(vec![sup(4000, u32::MAX)]),
                chosen: None,
            },
            DeviceInfo {
                name: "dmix".into(),
                description: String::new(),
                supported: Err("Device busy".into()),
                chosen: None,
            },
        ];
        let r = devices_report(&devices);
        assert!(r.contains("hw:CARD=PCH,DEV=0\n    HDA Intel PCH"), "{r}");
        assert!(r.contains("rates: 44100, 48000 Hz"), "{r}");
        assert!(r.contains("would play: 48000 Hz, 2 channels, S16"), "{r}");
        assert!(r.contains("rates: any"), "{r}");
        assert!(r.contains("dmix\n    cannot open: Device busy"), "{r}");
    }

    #[test]
    fn proc_asound_pcm_playback_is_detected() {
        assert!(has_playback(
            "00-00: ALC887-VD Analog : ALC887-VD Analog : playback 1 : capture 1\n"
        ));
        assert!(has_playback("01-03: HDMI 0 : HDMI 0 : playback 1\n"));
        assert!(!has_playback("00-00: USB Audio : USB Audio : capture 1\n"));
        assert!(!has_playback(""));
    }
}
