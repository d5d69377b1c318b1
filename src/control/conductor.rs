//! The conductor: decides what each channel plays now and next, and keeps the media thread,
//! new calls and the SIP task's dialplan in step with it.
//!
//! Owns the one task that re-plans channels (a library, settings or channel change bumps the
//! control's generation; changes that arrive while a plan runs coalesce into one more), the
//! renders that plan runs off the runtime (own threads at nice 19, SCHED_BATCH), the swap of
//! each render into the live map (new calls) and the media thread (calls in progress, from
//! their next packet: a frame boundary, no call dropped or restarted), the dialplan the SIP
//! task routes with, and what the status page says plays now and next on each channel.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::{Control, RenderState};
use crate::channel::ChannelRender;
use crate::channel::programme::{self, Programmes};
use crate::channel::spec::ChannelSpec;
use crate::clock::MediaClock;
use crate::dialplan::Dialplan;
use crate::rtp::shell::MediaCommand;
use crate::web::backend::{ChannelDto, ChannelNextDto, ChannelPlayingDto, ChannelStatusDto};

/// The conductor's task: re-plans on every generation bump until the control is dropped.
pub(super) fn spawn(control: &Arc<Control>, mut changed: watch::Receiver<u64>) {
    let weak = Arc::downgrade(control);
    tokio::spawn(async move {
        // Changes that arrive while a plan runs coalesce into one more plan.
        while changed.changed().await.is_ok() {
            let Some(control) = weak.upgrade() else { break };
            changed.borrow_and_update();
            let c = Arc::clone(&control);
            let (done, planned) = tokio::sync::oneshot::channel();
            spawn_background("mohd-rerender", move || {
                lower_priority();
                c.replan();
                let _ = done.send(());
            });
            let _ = planned.await;
        }
    });
}

impl Control {
    /// Ask for a re-plan of the channels the library decides (coalesced, asynchronous).
    pub fn library_changed(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The channel set or the routes changed (the API): publish the dialplan at once, so a
    /// new channel's routes answer from the next INVITE, and re-plan the channels.
    pub fn channels_changed(&self) {
        self.dialplan.send_replace(self.effective_dialplan());
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The dialplan the SIP task routes with, as it changes.
    pub fn dialplan_updates(&self) -> watch::Receiver<Dialplan> {
        self.dialplan.subscribe()
    }

    /// Config routes, then the managed ones, then the config default.
    pub(super) fn effective_dialplan(&self) -> Dialplan {
        match self.store.as_ref().map(|s| s.lock()) {
            Some(Ok(store)) => store.dialplan(&self.config.dialplan),
            _ => self.config.dialplan.clone(),
        }
    }

    /// Every channel of the effective set: the config file's, then the managed ones.
    pub(crate) fn effective_specs(&self) -> Vec<ChannelSpec> {
        let store = self.store.as_ref().and_then(|s| s.lock().ok());
        let managed = store
            .iter()
            .flat_map(|s| s.channels().cloned())
            .collect::<Vec<_>>();
        self.config
            .channel_specs()
            .cloned()
            .chain(managed)
            .collect()
    }

    /// How many plans have completed (tests wait on this).
    pub fn renders_done(&self) -> u64 {
        self.renders_done.load(Ordering::Acquire)
    }

    /// After a library, settings or channel change: re-render the channels the library
    /// decides ([`programme::follows_the_library`]), swap each in, drop cached loops nothing
    /// plays.
    fn replan(&self) {
        let programmes = self.programmes_now();
        let following = programmes
            .iter()
            .filter(|(name, _)| programme::follows_the_library(&self.config, name));
        for (name, programme) in following {
            self.set_render_state(name, RenderState::Rendering);
            let render = programme::obtain_render(
                name,
                programme,
                &self.codec_plan(),
                self.cache.as_ref(),
                "library change",
            );
            self.swap_in(Arc::new(render));
            if self.config.lineout.channel == *name
                && let Ok(lineout) = self.lineout.lock()
                && let Some(l) = lineout.as_ref()
            {
                l.set_programme(programme.clone());
            }
        }
        self.update_unavailable();
        if let Some(cache) = &self.cache {
            programme::retain_cache(cache, &programmes, &self.codec_plan());
        }
        self.renders_done.fetch_add(1, Ordering::AcqRel);
    }

    /// Fast start: the server started on the cached first 30 s of each loop ("heads"); load
    /// the full loops off the runtime and swap each in as it is ready, then add the wideband
    /// codecs. The swap is seamless while the clock is still inside the head (the first 30 s
    /// after start), which is why every full 8 kHz loop goes in before any wideband work.
    pub fn complete_startup_renders(self: &Arc<Self>, programmes: Programmes) {
        for name in programmes.keys() {
            self.set_render_state(name, RenderState::Rendering);
        }
        let control = Arc::clone(self);
        spawn_background("mohd-startup-render", move || {
            for (name, programme) in &programmes {
                let render = programme::obtain_narrowband(
                    name,
                    programme,
                    control.cache.as_ref(),
                    "full loop behind the cached head",
                );
                control.swap_in(Arc::new(render));
            }
            control.update_unavailable();
            lower_priority();
            control.add_wideband(&programmes);
        });
    }

    /// Start-up served every channel's 8 kHz loop (G.711); render the wideband codecs off the
    /// runtime and swap each channel's in as it completes, so start-up is not delayed by them.
    pub fn complete_wideband_renders(self: &Arc<Self>, programmes: Programmes) {
        let control = Arc::clone(self);
        spawn_background("mohd-wideband", move || {
            lower_priority();
            control.add_wideband(&programmes);
        });
    }

    /// Adds the enabled wideband codecs to each channel's live render, each as soon as it is
    /// ready, one channel at a time (a 48 kHz render of a long playlist is hundreds of
    /// megabytes while it lasts), and drops the G.711 encodings the config does not enable;
    /// then drops cached renders nothing plays. A channel whose render a library change
    /// replaced meanwhile is left alone: that render has its own.
    fn add_wideband(&self, programmes: &Programmes) {
        let plan = self.codec_plan();
        for (name, programme) in programmes {
            let live = self.renders.read().ok().and_then(|r| r.get(name).cloned());
            let Some(mut live) = live else { continue };
            let base = Arc::clone(&live);
            let cache = self.cache.as_ref();
            let all = programme::obtain_wideband(&base, programme, &plan, cache, |render| {
                let render = Arc::new(render);
                if self.swap_in_if_live(&live, Arc::clone(&render)) {
                    live = render;
                }
            });
            self.swap_in_if_live(&live, Arc::new(all));
        }
        self.retain_cache();
    }

    /// Puts a new render live: for new calls, for every call on its channel from its next
    /// packet on (the media thread), and marks it ready.
    fn swap_in(&self, render: Arc<ChannelRender>) {
        if let Ok(mut r) = self.renders.write() {
            r.insert(render.name.clone(), Arc::clone(&render));
            // Sent under the lock, so the media thread gets swaps in the order the map does.
            self.send_to_media(&render);
        }
        self.set_render_state(&render.name, RenderState::Ready);
    }

    /// [`Control::swap_in`] only while `live` is still the channel's render; whether it did.
    fn swap_in_if_live(&self, live: &Arc<ChannelRender>, render: Arc<ChannelRender>) -> bool {
        if let Ok(mut r) = self.renders.write()
            && r.get(&render.name)
                .is_some_and(|now| Arc::ptr_eq(now, live))
        {
            r.insert(render.name.clone(), Arc::clone(&render));
            self.send_to_media(&render);
            return true;
        }
        false
    }

    fn send_to_media(&self, render: &Arc<ChannelRender>) {
        if let Ok(tx) = self.media.lock() {
            let _ = tx.send(MediaCommand::SetChannel(Arc::clone(render)));
        }
    }

    /// Each live channel with what it plays at `now` on the media clock, and what next.
    pub(super) fn channel_statuses(&self, now: Instant) -> Vec<ChannelStatusDto> {
        let sample = MediaClock::tick_sample(self.clock.tick_at(now));
        let render_state = self
            .render_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let Ok(renders) = self.renders.read() else {
            return Vec::new();
        };
        renders
            .values()
            .map(|r| {
                let state = match render_state.get(&r.name) {
                    Some(RenderState::Rendering) => "rendering",
                    _ => "ready",
                };
                let mut status = ChannelDto::status(
                    &r.name,
                    playing_at(r, sample),
                    r.len_samples() as f64 / 8000.0,
                    r.tracks.len(),
                    state,
                );
                status.programme = Some(crate::channel::spec::MAIN_PROGRAMME.to_owned());
                status.next = next_at(r, sample);
                status
            })
            .collect()
    }
}

/// Runs `work` on a thread of its own (not the runtime's blocking pool: [`lower_priority`]
/// would outlast it there).
pub(super) fn spawn_background(name: &str, work: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
    {
        tracing::error!(thread = name, error = %e, "cannot start a render thread");
    }
}

/// Puts the calling thread (and the threads it starts) below everything else at normal
/// priority: SCHED_BATCH, nice 19. Renders are long and CPU-bound; the media thread, when it
/// is not real-time, and the callers on the same machine must still wake on time while they
/// run. Measured with `cargo test --test loopback_call` (debug build, two cores at load 11,
/// the 16/48 kHz renders running beside the call): worst jitter over 5 ms in 2 of 4 runs at
/// nice 10, 1 of 5 at nice 19, 0 of 6 with no wideband render. Lowering
/// needs no privilege, and cannot be undone without one, so only on threads of our own.
pub(super) fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    ) {
        tracing::debug!(error = ?e, "render thread stays at normal priority");
    }
}

/// The track a render plays at loop sample `sample`, and how far into it.
fn playing_at(r: &ChannelRender, sample: u64) -> Option<ChannelPlayingDto> {
    let len = r.len_samples() as u64;
    r.track_at(sample).map(|t| {
        let pos = if len == 0 { 0 } else { sample % len };
        let into = (pos + len - t.start_sample % len.max(1)) % len.max(1);
        ChannelPlayingDto {
            track: t.name.clone(),
            position_s: into as f64 / 8000.0,
            track_len_s: t.len_samples as f64 / 8000.0,
        }
    })
}

/// The track after the one playing at loop sample `sample` (the loop's first after its
/// last), and in how many seconds it starts. `None` for a loop of one track or none.
fn next_at(r: &ChannelRender, sample: u64) -> Option<ChannelNextDto> {
    let len = r.len_samples() as u64;
    if len == 0 || r.tracks.len() < 2 {
        return None;
    }
    let pos = sample % len;
    let idx = r.tracks.partition_point(|t| t.start_sample <= pos);
    let next = r.tracks.get(idx).unwrap_or(&r.tracks[0]);
    let until = (next.start_sample % len + len - pos) % len;
    Some(ChannelNextDto {
        track: next.name.clone(),
        in_s: until as f64 / 8000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MusicSource;

    fn two_tracks(dir: &std::path::Path) -> ChannelRender {
        let mut files = Vec::new();
        for (name, freq) in [("a.wav", 440.0), ("b.wav", 660.0)] {
            let path = dir.join(name);
            crate::audio::test_util::write_wav(
                &path,
                8000,
                &crate::audio::test_util::sine(freq, 8000, 3 * 8000, 0.5),
            );
            files.push(path);
        }
        ChannelRender::render("c", &MusicSource::Files(files), -18.0)
    }

    #[test]
    fn next_is_the_following_track_and_wraps_to_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = two_tracks(dir.path());
        assert_eq!(r.tracks.len(), 2, "{:?}", r.tracks);
        let second = r.tracks[1].start_sample;
        let early = next_at(&r, 0).expect("next");
        assert_eq!(early.track, r.tracks[1].name);
        assert!(
            (early.in_s - second as f64 / 8000.0).abs() < 1e-9,
            "{early:?}"
        );
        let late = next_at(&r, second + 8).expect("next");
        assert_eq!(late.track, r.tracks[0].name);
        let to_wrap = r.len_samples() as u64 - (second + 8);
        assert!(
            (late.in_s - to_wrap as f64 / 8000.0).abs() < 1e-9,
            "{late:?}"
        );
        // A whole loop later it says the same.
        let again = next_at(&r, second + 8 + r.len_samples() as u64).expect("next");
        assert_eq!(again, late);
    }
}
