//! The sound card side of the line-out: finding an ALSA device by name (through cpal),
//! choosing its format, and the real-time callback that empties the ring buffer into it.
//!
//! The callback is the only code on the audio thread. It copies samples out of a lock-free
//! SPSC ring (ringbuf) that the line-out thread keeps about a second ahead, fills what is
//! missing with silence, and counts that as an underrun: no allocation, no lock, no I/O,
//! nothing that can block.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use ringbuf::traits::{Consumer as _, Observer as _, Producer as _, Split as _};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::LineoutError;

/// Rates a line-out is played at, best first: the two native rates of sound cards, then
/// the common higher ones. Anything else only when a device offers nothing of these.
const PREFERRED_RATES: &[u32] = &[48_000, 44_100, 96_000, 88_200, 192_000, 32_000];

/// How long cpal's audio thread waits in `poll` before checking the device state, so a device
/// that disappears without a hang-up event is noticed.
const POLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sample formats we write, best first. Music is 16-bit at heart; 32-bit and float cards get
/// the same samples scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    I16,
    I32,
    F32,
}

impl SampleKind {
    fn from_cpal(f: cpal::SampleFormat) -> Option<SampleKind> {
        match f {
            cpal::SampleFormat::I16 => Some(SampleKind::I16),
            cpal::SampleFormat::I32 => Some(SampleKind::I32),
            cpal::SampleFormat::F32 => Some(SampleKind::F32),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            SampleKind::I16 => 0,
            SampleKind::I32 => 1,
            SampleKind::F32 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SampleKind::I16 => "S16",
            SampleKind::I32 => "S32",
            SampleKind::F32 => "FLOAT",
        }
    }
}

/// What the device is played with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub rate: u32,
    pub channels: u16,
    pub sample: SampleKind,
}

/// One line of what a device supports (cpal's `SupportedStreamConfigRange`, in our terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub channels: u16,
    pub min_rate: u32,
    pub max_rate: u32,
    pub format: Option<SampleKind>,
}

/// Picks the format to play with: the card's native rate (48 kHz, else 44.1 kHz, else the
/// next best it has), stereo if it can (mono music goes to every channel), 16-bit if it can.
/// `None` when nothing usable is offered.
pub fn choose(supported: &[Supported]) -> Option<Format> {
    let rate_rank = |s: &Supported| -> (usize, u32) {
        if let Some(i) = PREFERRED_RATES
            .iter()
            .position(|r| (s.min_rate..=s.max_rate).contains(r))
        {
            return (i, 0);
        }
        // Nothing common: the highest rate up to 192 kHz, else the lowest it has.
        let r = s.max_rate.min(192_000).max(s.min_rate);
        (PREFERRED_RATES.len(), u32::MAX - r)
    };
    let rate_of = |s: &Supported| match PREFERRED_RATES
        .iter()
        .find(|r| (s.min_rate..=s.max_rate).contains(*r))
    {
        Some(&r) => r,
        None => s.max_rate.min(192_000).max(s.min_rate),
    };
    let channel_rank = |c: u16| match c {
        2 => 0,
        1 => 1,
        n => u32::from(n),
    };
    supported
        .iter()
        .filter(|s| s.channels > 0 && s.min_rate > 0 && s.min_rate <= s.max_rate)
        .filter_map(|s| s.format.map(|f| (s, f)))
        .min_by_key(|(s, f)| (rate_rank(s), channel_rank(s.channels), f.rank()))
        .map(|(s, f)| Format {
            rate: rate_of(s),
            channels: s.channels,
            sample: f,
        })
}

/// Counters shared by the callback and the line-out thread: atomics only.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames handed to the device.
    pub frames: AtomicU64,
    /// Times the callback found the ring short and played silence.
    pub underruns: AtomicU64,
    /// Xruns ALSA reported (the device ran dry below us).
    pub xruns: AtomicU64,
}

/// The line-out thread's end of the ring, typed by the device's sample format, with a scratch
/// buffer for converting (allocated once per stream).
pub enum RingProducer {
    I16(HeapProd<i16>, Vec<i16>),
    I32(HeapProd<i32>, Vec<i32>),
    F32(HeapProd<f32>, Vec<f32>),
}

/// The callback's end of the ring.
pub enum RingConsumer {
    I16(HeapCons<i16>),
    I32(HeapCons<i32>),
    F32(HeapCons<f32>),
}

/// A ring holding `frames` frames of `format`.
pub fn ring(format: Format, frames: usize) -> (RingProducer, RingConsumer) {
    let len = frames * usize::from(format.channels);
    match format.sample {
        SampleKind::I16 => {
            let (p, c) = HeapRb::<i16>::new(len).split();
            (RingProducer::I16(p, Vec::new()), RingConsumer::I16(c))
        }
        SampleKind::I32 => {
            let (p, c) = HeapRb::<i32>::new(len).split();
            (RingProducer::I32(p, Vec::new()), RingConsumer::I32(c))
        }
        SampleKind::F32 => {
            let (p, c) = HeapRb::<f32>::new(len).split();
            (RingProducer::F32(p, Vec::new()), RingConsumer::F32(c))
        }
    }
}

impl RingProducer {
    fn occupied_samples(&self) -> usize {
        match self {
            RingProducer::I16(p, _) => p.occupied_len(),
            RingProducer::I32(p, _) => p.occupied_len(),
            RingProducer::F32(p, _) => p.occupied_len(),
        }
    }

    fn vacant_samples(&self) -> usize {
        match self {
            RingProducer::I16(p, _) => p.vacant_len(),
            RingProducer::I32(p, _) => p.vacant_len(),
            RingProducer::F32(p, _) => p.vacant_len(),
        }
    }

    pub fn occupied_frames(&self, channels: u16) -> usize {
        self.occupied_samples() / usize::from(channels.max(1))
    }

    pub fn vacant_frames(&self, channels: u16) -> usize {
        self.vacant_samples() / usize::from(channels.max(1))
    }

    /// Pushes mono samples as frames of `channels` identical samples, times `gain`. The
    /// caller checks there is room (`vacant_frames`); what does not fit is dropped.
    pub fn push_mono(&mut self, mono: &[f32], gain: f32, channels: u16) {
        fn interleave<T: Copy>(
            mono: &[f32],
            channels: u16,
            scratch: &mut Vec<T>,
            convert: impl Fn(f32) -> T,
        ) {
            scratch.clear();
            for &s in mono {
                let v = convert(s);
                for _ in 0..channels {
                    scratch.push(v);
                }
            }
        }
        match self {
            RingProducer::I16(p, scratch) => {
                interleave(mono, channels, scratch, |s| {
                    (s * gain * 32767.0).round().clamp(-32768.0, 32767.0) as i16
                });
                p.push_slice(scratch);
            }
            RingProducer::I32(p, scratch) => {
                interleave(mono, channels, scratch, |s| {
                    (f64::from(s * gain) * 2_147_483_647.0)
                        .round()
                        .clamp(-2_147_483_648.0, 2_147_483_647.0) as i32
                });
                p.push_slice(scratch);
            }
            RingProducer::F32(p, scratch) => {
                interleave(mono, channels, scratch, |s| (s * gain).clamp(-1.0, 1.0));
                p.push_slice(scratch);
            }
        }
    }
}

/// The real-time callback: copy from the ring, silence for what is missing. `short` is the
/// callback's own memory of whether the last call was short, so one dry spell counts once.
pub(crate) fn play<T: cpal::Sample>(
    ring: &mut HeapCons<T>,
    out: &mut [T],
    channels: u16,
    counters: &Counters,
    short: &mut bool,
) {
    let n = ring.pop_slice(out);
    if n < out.len() {
        out[n..].fill(T::EQUILIBRIUM);
        if !*short {
            counters.underruns.fetch_add(1, Ordering::Relaxed);
        }
        *short = true;
    } else {
        *short = false;
    }
    counters
        .frames
        .fetch_add((n / usize::from(channels.max(1))) as u64, Ordering::Relaxed);
}

/// Where the line-out plays: the real sound card, or a test stand-in.
pub trait Output: Send + 'static {
    /// Opens the device, chooses its format and sets it up to play from a new ring holding
    /// `ahead` of audio, without starting it: the slow part of opening a device (for ALSA:
    /// opening the PCM, its hardware and software parameters, starting a plugin's helper
    /// process) is done here, while the first track loads, so that [`Playing::play`] starts
    /// the sound at once. Dropping the result closes the device.
    fn prepare(
        &mut self,
        device: &str,
        ahead: Duration,
        counters: Arc<Counters>,
    ) -> Result<Prepared, LineoutError>;
}

/// A device set up to play, not started yet.
pub struct Prepared {
    pub format: Format,
    /// The line-out thread's end of the ring the stream plays from.
    pub ring: RingProducer,
    pub playing: Box<dyn Playing>,
}

/// A stream, prepared and then playing.
pub trait Playing: Send {
    /// Starts the sound; the callback takes from the ring from now on.
    fn play(&mut self) -> Result<(), LineoutError>;
    /// The error that stopped the stream, once it has failed.
    fn failed(&self) -> Option<String>;
}

/// ALSA through cpal.
#[derive(Default)]
pub struct AlsaOutput;

/// cpal names ALSA devices `alsa:<pcm name>`; the config takes the PCM name alone.
fn find_device(host: &cpal::Host, name: &str) -> Result<cpal::Device, LineoutError> {
    let found = if name == "default" {
        host.default_output_device()
    } else {
        host.device_by_id(&cpal::DeviceId::new(host.id(), name))
    };
    found.ok_or_else(|| LineoutError::NotFound {
        device: name.to_owned(),
    })
}

fn supported(device: &cpal::Device) -> Result<Vec<Supported>, cpal::Error> {
    Ok(device
        .supported_output_configs()?
        .map(|c| Supported {
            channels: c.channels(),
            min_rate: c.min_sample_rate(),
            max_rate: c.max_sample_rate(),
            format: SampleKind::from_cpal(c.sample_format()),
        })
        .collect())
}

/// The format [`choose`] ranks first, when a device has it.
const BEST: Format = Format {
    rate: PREFERRED_RATES[0],
    channels: 2,
    sample: SampleKind::I16,
};

impl Output for AlsaOutput {
    fn prepare(
        &mut self,
        name: &str,
        ahead: Duration,
        counters: Arc<Counters>,
    ) -> Result<Prepared, LineoutError> {
        let host = cpal::default_host();
        let device = find_device(&host, name)?;
        // Most devices take 48 kHz stereo 16-bit, which `choose` would pick above anything
        // else they offer: try it before listing what they offer, which takes 15-20 ms (cpal
        // tries hundreds of configurations on a `plug` device) before the first sound.
        if let Ok(p) = build(&device, name, BEST, ahead, counters.clone()) {
            return Ok(p);
        }
        let supported = supported(&device).map_err(|e| LineoutError::Open {
            device: name.to_owned(),
            message: e.to_string(),
        })?;
        let format = choose(&supported).ok_or_else(|| LineoutError::NoFormat {
            device: name.to_owned(),
        })?;
        build(&device, name, format, ahead, counters)
    }
}

/// A stream on `device` in `format`, prepared, with a ring of `ahead`.
fn build(
    device: &cpal::Device,
    name: &str,
    format: Format,
    ahead: Duration,
    counters: Arc<Counters>,
) -> Result<Prepared, LineoutError> {
    let frames = (u64::from(format.rate) * ahead.as_millis() as u64 / 1000) as usize;
    let (producer, consumer) = ring(format, frames);
    let config = cpal::StreamConfig {
        channels: format.channels,
        sample_rate: format.rate,
        buffer_size: cpal::BufferSize::Default,
    };
    let failure = Arc::new(Failure::default());
    let on_error = {
        let failure = failure.clone();
        let counters = counters.clone();
        // Runs on the audio thread too, but only when something went wrong: an xrun is
        // counted (an atomic add); anything else ends the stream, so a string is kept.
        move |e: cpal::Error| {
            if e.kind() == cpal::ErrorKind::Xrun {
                counters.xruns.fetch_add(1, Ordering::Relaxed);
            } else {
                failure.set(e.to_string());
            }
        }
    };
    let channels = format.channels;
    let stream = match consumer {
        RingConsumer::I16(mut c) => {
            let mut short = false;
            device.build_output_stream(
                config,
                move |out: &mut [i16], _: &cpal::OutputCallbackInfo| {
                    play(&mut c, out, channels, &counters, &mut short);
                },
                on_error,
                Some(POLL_TIMEOUT),
            )
        }
        RingConsumer::I32(mut c) => {
            let mut short = false;
            device.build_output_stream(
                config,
                move |out: &mut [i32], _: &cpal::OutputCallbackInfo| {
                    play(&mut c, out, channels, &counters, &mut short);
                },
                on_error,
                Some(POLL_TIMEOUT),
            )
        }
        RingConsumer::F32(mut c) => {
            let mut short = false;
            device.build_output_stream(
                config,
                move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                    play(&mut c, out, channels, &counters, &mut short);
                },
                on_error,
                Some(POLL_TIMEOUT),
            )
        }
    }
    .map_err(|e| LineoutError::Open {
        device: name.to_owned(),
        message: e.to_string(),
    })?;
    // cpal leaves the PCM prepared, its audio thread waiting, until `play`.
    Ok(Prepared {
        format,
        ring: producer,
        playing: Box::new(AlsaPlaying {
            stream,
            name: name.to_owned(),
            failure,
        }),
    })
}

/// The first fatal error of a stream.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    message: std::sync::OnceLock<String>,
}

impl Failure {
    fn set(&self, message: String) {
        let _ = self.message.set(message);
        self.failed.store(true, Ordering::Release);
    }

    fn get(&self) -> Option<String> {
        self.failed
            .load(Ordering::Acquire)
            .then(|| self.message.get().cloned().unwrap_or_default())
    }
}

struct AlsaPlaying {
    stream: cpal::Stream,
    name: String,
    failure: Arc<Failure>,
}

impl Playing for AlsaPlaying {
    fn play(&mut self) -> Result<(), LineoutError> {
        self.stream.play().map_err(|e| LineoutError::Open {
            device: self.name.clone(),
            message: e.to_string(),
        })
    }

    fn failed(&self) -> Option<String> {
        self.failure.get()
    }
}

/// A playback device, for `mohd devices`.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The ALSA PCM name to put in `[lineout] device`.
    pub name: String,
    /// ALSA's description (card and device names), one line.
    pub description: String,
    /// What it supports, or why that could not be read (busy, no permission...).
    pub supported: Result<Vec<Supported>, String>,
    /// The format the line-out would use.
    pub chosen: Option<Format>,
}

/// Every ALSA playback device cpal can list: the `default` device, the PCMs in the ALSA
/// configuration (asoundrc included) and the cards' `hw:`/`plughw:` devices.
pub fn list_devices() -> Result<Vec<DeviceInfo>, LineoutError> {
    let host = cpal::default_host();
    let mut out = Vec::new();
    let mut push = |device: &cpal::Device, name: String| {
        let description = device
            .description()
            .map(|d| d.name().to_owned())
            .unwrap_or_default();
        let supported = supported(device).map_err(|e| e.to_string());
        let chosen = supported.as_ref().ok().and_then(|s| choose(s));
        out.push(DeviceInfo {
            name,
            description,
            supported,
            chosen,
        });
    };
    if let Some(d) = host.default_output_device() {
        push(&d, "default".to_owned());
    }
    let devices = host.output_devices().map_err(|e| LineoutError::Open {
        device: "(listing)".to_owned(),
        message: e.to_string(),
    })?;
    for d in devices {
        let Ok(id) = d.id() else { continue };
        let name = id.id().to_owned();
        if name == "default" || name == "null" {
            continue;
        }
        push(&d, name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(channels: u16, min: u32, max: u32, f: SampleKind) -> Supported {
        Supported {
            channels,
            min_rate: min,
            max_rate: max,
            format: Some(f),
        }
    }

    #[test]
    fn native_rate_stereo_and_16_bit_are_preferred() {
        use SampleKind::*;
        // A plug device takes anything: 48 kHz stereo 16-bit.
        let any = [s(1, 4000, u32::MAX, F32), s(2, 4000, u32::MAX, I16)];
        let f = choose(&any).unwrap();
        assert_eq!((f.rate, f.channels, f.sample), (48_000, 2, I16));
        // A 44.1 kHz-only card plays at 44.1 kHz, even if 32-bit only.
        let cd = [s(2, 44_100, 44_100, I32), s(2, 8_000, 8_000, I16)];
        assert_eq!(choose(&cd).unwrap().rate, 44_100);
        assert_eq!(choose(&cd).unwrap().sample, I32);
        // Both: 48 kHz.
        let both = [s(2, 44_100, 44_100, I16), s(2, 48_000, 48_000, I16)];
        assert_eq!(choose(&both).unwrap().rate, 48_000);
        // A mono card, a 6-channel card.
        assert_eq!(choose(&[s(1, 48_000, 48_000, I16)]).unwrap().channels, 1);
        let six = [s(6, 48_000, 48_000, I16), s(8, 48_000, 48_000, I16)];
        assert_eq!(choose(&six).unwrap().channels, 6);
        // Odd rates: the highest up to 192 kHz.
        assert_eq!(choose(&[s(2, 22_050, 24_000, I16)]).unwrap().rate, 24_000);
        assert_eq!(
            choose(&[s(2, 384_000, 384_000, I16)]).unwrap().rate,
            384_000
        );
        // Nothing we can write.
        let dsd = Supported {
            format: None,
            ..s(2, 48_000, 48_000, I16)
        };
        assert_eq!(choose(&[dsd]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn ring_interleaves_mono_to_every_channel_at_the_level() {
        let format = Format {
            rate: 8000,
            channels: 2,
            sample: SampleKind::I16,
        };
        let (mut p, c) = ring(format, 100);
        assert_eq!(p.vacant_frames(2), 100);
        p.push_mono(&[0.5, -0.25, 1.0], 0.5, 2);
        assert_eq!(p.occupied_frames(2), 3);
        let RingConsumer::I16(mut c) = c else {
            panic!()
        };
        let counters = Counters::default();
        let mut short = false;
        let mut out = [7i16; 8];
        play(&mut c, &mut out, 2, &counters, &mut short);
        assert_eq!(out, [8192, 8192, -4096, -4096, 16384, 16384, 0, 0]);
        assert_eq!(counters.frames.load(Ordering::Relaxed), 3);
        assert_eq!(counters.underruns.load(Ordering::Relaxed), 1);
        // Still dry: the same underrun.
        play(&mut c, &mut out, 2, &counters, &mut short);
        assert_eq!(counters.underruns.load(Ordering::Relaxed), 1);
        p.push_mono(&[0.1; 4], 1.0, 2);
        play(&mut c, &mut out, 2, &counters, &mut short);
        assert!(!short);
        p.push_mono(&[0.1; 1], 1.0, 2);
        play(&mut c, &mut out, 2, &counters, &mut short);
        assert_eq!(counters.underruns.load(Ordering::Relaxed), 2);
    }
}
