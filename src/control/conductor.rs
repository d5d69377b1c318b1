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

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use super::{Control, RenderHold, RenderState};
use crate::channel::compose::{AnnouncementPlan, Composition, Join, shuffle_order};
use crate::channel::encoded::CodecPlan;
use crate::channel::programme::{self, Head, Programme, Programmes, Renders};
use crate::channel::spec::{
    ChannelSpec, MAIN_PROGRAMME, Origin, SwitchAt, resolve_clip, resolve_clips, resolve_music,
};
use crate::channel::store::ChannelStore;
use crate::channel::{ChannelRender, MusicSource};
use crate::clock::MediaClock;
use crate::codec::Codec;
use crate::config::Config;
use crate::dialplan::Dialplan;
use crate::library::Library;
use crate::rtp::fanout::Piece;
use crate::rtp::router::CallPlan;
use crate::rtp::shell::MediaCommand;
use crate::web::backend::{
    ChannelDto, ChannelNextDto, ChannelPlayingDto, ChannelStatusDto, ScheduleChangeDto,
};

/// What start-up put live on each channel while its full loop renders: its head (a
/// placeholder or a cached head counts as one, joinable anywhere).
type Heads = std::collections::BTreeMap<String, Head>;

/// How often the conductor takes a turn: promotes queued passes, starts the next pass's
/// render, evaluates schedules against the wall clock.
const TURN: std::time::Duration = std::time::Duration::from_secs(1);

/// A queued piece starts at least this many ticks after the media clock's now: the media
/// thread takes the command within milliseconds, and a piece for a tick already played is
/// moved to the next one (which would shift its channel's boundaries).
const QUEUE_AHEAD_TICKS: u64 = 20;
/// How far ahead a schedule switch is queued: its fade segments are rendered (and, for the
/// wideband codecs, encoded) after its tick is chosen, which takes milliseconds to tens of
/// milliseconds for a long fade.
const SWITCH_AHEAD_TICKS: u64 = 100;
/// A head takes over from a cold start's opening this far ahead of now at the soonest: time
/// to build the blended render and for the media threads to have it before its ramp.
const OPENING_MARGIN_TICKS: u64 = 50;
/// A track-end switch fades the outgoing track over this (its own tail is ending anyway;
/// this takes out the next track's first notes, which the crossfade had begun).
const TRACK_END_FADE_MS: u32 = 60;
/// The new programme fades in over this after a switch (its position 0 is the seam's
/// crossfade at full level: a hard start would click).
const SWITCH_FADE_IN_MS: u32 = 100;
/// Held at full level after the fade-in before the pass's own frames take over, so the
/// wideband decoders hand over on identical audio.
const SWITCH_FLAT_MS: u32 = 40;

/// The conductor's task: a re-plan on every generation bump (changes that arrive while one
/// runs coalesce into one more), and a turn every second, until the control is dropped.
pub(super) fn spawn(control: &Arc<Control>, mut changed: watch::Receiver<u64>) {
    let weak = Arc::downgrade(control);
    tokio::spawn(async move {
        let mut turns = tokio::time::interval(TURN);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = changed.changed() => {
                    if c.is_err() {
                        break;
                    }
                    let Some(control) = weak.upgrade() else { break };
                    changed.borrow_and_update();
                    let (done, planned) = tokio::sync::oneshot::channel();
                    spawn_background("mohd-replan", move || {
                        lower_priority();
                        control.replan();
                        let _ = done.send(());
                    });
                    let _ = planned.await;
                }
                _ = turns.tick() => {
                    let Some(control) = weak.upgrade() else { break };
                    control.turn(Instant::now(), jiff::Timestamp::now());
                }
            }
        }
    });
}

impl Control {
    /// Ask for a re-plan of the channels the library decides (coalesced, asynchronous).
    pub fn library_changed(&self) {
        self.library_dirty.store(true, Ordering::Release);
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
        effective_specs(&self.config, store.as_deref())
    }

    /// How many plans have completed (tests wait on this).
    pub fn renders_done(&self) -> u64 {
        self.renders_done.load(Ordering::Acquire)
    }

    /// After a library, settings or channel change: every channel of the effective set whose
    /// spec or programme changed, or that uses the library when it changed, gets its first
    /// pass rendered and swapped in; channels no longer in the set are dropped (calls on them
    /// play on); new calls' plans (mode) are published; cached loops nothing plays go.
    fn replan(&self) {
        let library_dirty = self.library_dirty.swap(false, Ordering::AcqRel);
        let wall = jiff::Timestamp::now();
        let specs = self.effective_specs();
        let config_programmes = self.config_programmes();
        let plan = self.codec_plan();
        for spec in &specs {
            let programme = programme_at(spec, wall);
            let base = self.base_composition(&config_programmes, spec, &programme);
            let changed = match self.conducted.lock().ok().and_then(|c| {
                c.get(&spec.name)
                    .map(|c| c.spec != *spec || c.programme != programme || c.base != base)
            }) {
                Some(changed) => changed,
                None => !self.is_live(&spec.name),
            };
            let touched = library_dirty && uses_library(&self.config, spec);
            if changed || touched {
                self.start_channel(spec, programme, base, &plan);
            } else {
                self.adopt(spec, wall, &config_programmes);
            }
        }
        self.drop_channels_not_in(&specs);
        self.publish_call_plans(&specs);
        self.render_greetings(&specs);
        self.update_unavailable();
        self.retain_cache();
        self.renders_done.fetch_add(1, Ordering::AcqRel);
    }

    /// Renders `programme`'s first pass and puts it live now (at the channel's absolute
    /// position, as a library change always has), with the conductor's state for it.
    fn start_channel(
        &self,
        spec: &ChannelSpec,
        programme: String,
        base: Composition,
        plan: &CodecPlan,
    ) {
        let name = &spec.name;
        if let Ok(mut s) = self.superseded.lock() {
            s.insert(name.clone());
        }
        self.set_render_state(name, RenderState::Rendering);
        let shuffle = is_shuffled(spec, &programme);
        let (composition, last) = self.pass_composition(name, &base, shuffle, 0, None);
        let render = Arc::new(programme::obtain_render(
            name,
            &composition,
            plan,
            self.cache.as_ref(),
            "re-plan",
        ));
        let conducted = Conducted::new(spec.clone(), programme, base, &render, last, self.epoch());
        if let Ok(mut c) = self.conducted.lock() {
            c.insert(name.clone(), conducted);
        }
        self.swap_in(Arc::clone(&render));
        if self.config.lineout.channel == *name
            && let Ok(lineout) = self.lineout.lock()
            && let Some(l) = lineout.as_ref()
        {
            l.set_programme(composition);
        }
    }

    /// Adopts every live channel the conductor does not know yet (start-up's).
    fn adopt_new(&self, wall: jiff::Timestamp) {
        let known = |name: &String| self.conducted.lock().is_ok_and(|c| c.contains_key(name));
        let live: Vec<String> = match self.renders.read() {
            Ok(r) => r.keys().cloned().collect(),
            Err(_) => return,
        };
        if live.iter().all(known) {
            return;
        }
        let config_programmes = self.config_programmes();
        for spec in self.effective_specs() {
            self.adopt(&spec, wall, &config_programmes);
        }
    }

    /// Takes a channel that plays what start-up rendered into the conductor's state, once.
    fn adopt(&self, spec: &ChannelSpec, wall: jiff::Timestamp, config_programmes: &Programmes) {
        let Ok(mut conducted) = self.conducted.lock() else {
            return;
        };
        if conducted.contains_key(&spec.name) {
            return;
        }
        let Some(render) = self.live(&spec.name) else {
            return;
        };
        let programme = programme_at(spec, wall);
        let base = self.base_composition(config_programmes, spec, &programme);
        let shuffle = is_shuffled(spec, &programme);
        let (_, last) = self.pass_composition(&spec.name, &base, shuffle, 0, None);
        let c = Conducted::new(spec.clone(), programme, base, &render, last, self.epoch());
        conducted.insert(spec.name.clone(), c);
    }

    /// Forgets channels deleted (or renamed) since the last plan: no new call can reach them;
    /// calls in progress keep their channel's timeline in the media thread until they end.
    fn drop_channels_not_in(&self, specs: &[ChannelSpec]) {
        let keep = |name: &String| specs.iter().any(|s| s.name == *name);
        if let Ok(mut r) = self.renders.write() {
            r.retain(|name, _| keep(name));
        }
        if let Ok(mut c) = self.conducted.lock() {
            c.retain(|name, _| keep(name));
        }
        if let Ok(mut s) = self.render_state.lock() {
            s.retain(|name, _| keep(name));
        }
    }

    /// How new calls on each channel listen to it, for the call router: its mode, and the
    /// greeting rendered for it so far ([`Control::render_greetings`] adds new ones).
    pub(super) fn publish_call_plans(&self, specs: &[ChannelSpec]) {
        let Ok(mut plans) = self.plans.write() else {
            return;
        };
        let kept = |s: &ChannelSpec| {
            s.greeting.as_ref()?;
            plans.get(&s.name)?.greeting.clone()
        };
        let next = specs
            .iter()
            .map(|s| {
                let plan = CallPlan {
                    mode: s.mode,
                    greeting: kept(s),
                };
                (s.name.clone(), plan)
            })
            .collect();
        *plans = next;
    }

    /// Renders each channel's greeting (the clip at the channel's loudness, faded out, then
    /// silence to wait in) and puts it in the channel's call plan. A greeting that cannot be
    /// decoded is skipped, logged with its name: callers join the programme at once.
    pub(super) fn render_greetings(&self, specs: &[ChannelSpec]) {
        let plan = self.codec_plan();
        for spec in specs {
            let Some(clip) = &spec.greeting else { continue };
            let path = match self.library.as_ref().ok().map(|l| l.lock()) {
                Some(Ok(library)) => resolve_clip(&spec.name, clip, Some(&library)),
                _ => resolve_clip(&spec.name, clip, None),
            };
            let Some(path) = path else { continue };
            let greeting = match ChannelRender::greeting(&path, spec.loudness_lufs, &plan) {
                Ok(g) => Arc::new(g),
                Err(e) => {
                    tracing::error!(channel = %spec.name, greeting = %path.display(), error = %e,
                        "greeting skipped: callers join the programme at once");
                    continue;
                }
            };
            if let Ok(mut plans) = self.plans.write()
                && let Some(p) = plans.get_mut(&spec.name)
            {
                p.greeting = Some(greeting);
            }
        }
    }

    /// One turn (every second, on the runtime; renders go to threads of their own): moves
    /// each channel on to a queued pass whose start has come, switches programme where its
    /// schedule says so, and starts rendering the next pass of a shuffled programme.
    fn turn(self: &Arc<Self>, now: Instant, wall: jiff::Timestamp) {
        if let Ok(mut w) = self.wall.lock()
            && w.observe(now, std::time::SystemTime::now()).is_some()
        {
            tracing::info!(
                "the wall clock stepped: schedules re-evaluated (the media clock is not)"
            );
        }
        self.adopt_new(wall);
        let tick = self.clock.tick_at(now);
        let rendering = self
            .render_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let mut jobs = Vec::new();
        if let Ok(mut conducted) = self.conducted.lock() {
            for (name, c) in conducted.iter_mut() {
                if let Some(render) = c.promote(tick)
                    && let Ok(mut r) = self.renders.write()
                {
                    // For the status and as the base of a channel's first call; the media
                    // thread has the piece already.
                    r.insert(name.clone(), render);
                }
                // Start-up swaps (the full loop behind a cached head, the wideband codecs)
                // replace a first pass in place, at the absolute position.
                // (A full loop joined behind a head that had looped starts its pass later:
                // only its codecs change then, the same music.)
                if matches!(c.next, Next::Nothing)
                    && let Some(live) = self.live(name)
                    && !Arc::ptr_eq(&live, &c.render)
                    && (c.span.at_tick == 0 || Arc::ptr_eq(&live.pcm, &c.render.pcm))
                {
                    c.span.len_ticks = live.frames() * 2;
                    c.render = live;
                }
                // Start-up's wideband swaps go to the media thread as they complete: a pass
                // queued before them would be replaced.
                if rendering.get(name) == Some(&RenderState::Rendering)
                    || !matches!(c.next, Next::Nothing)
                {
                    continue;
                }
                let wanted = programme_at(&c.spec, wall);
                if wanted != c.programme {
                    c.next = Next::Rendering;
                    jobs.push(NextPass::switch(name, c, wanted));
                } else if is_shuffled(&c.spec, &c.programme) {
                    c.next = Next::Rendering;
                    jobs.push(NextPass::shuffled(name, c));
                }
            }
        }
        for job in jobs {
            let control = Arc::clone(self);
            spawn_background("mohd-next-pass", move || {
                lower_priority();
                control.render_next(job);
            });
        }
    }

    /// Renders a channel's next pass and queues it in the media thread: a shuffled pass at
    /// the current pass's next boundary (if the render was late, the current pass loops again
    /// meanwhile); a schedule switch at the start of the next track, or at once.
    fn render_next(&self, job: NextPass) {
        let config_programmes = self.config_programmes();
        let base = match &job.switch_to {
            Some(p) => self.base_composition(&config_programmes, &job.spec, p),
            None => job.base.clone(),
        };
        let programme = job.switch_to.clone().unwrap_or(job.programme.clone());
        let pass = if job.switch_to.is_some() {
            0
        } else {
            job.pass + 1
        };
        let shuffle = is_shuffled(&job.spec, &programme);
        let previous = job.last.filter(|_| job.switch_to.is_none());
        let (composition, last) = self.pass_composition(&job.name, &base, shuffle, pass, previous);
        // Only a programme's first pass is cached: a shuffled pass is not asked for again.
        let cache = self.cache.as_ref().filter(|_| pass == 0);
        let render = Arc::new(programme::obtain_render(
            &job.name,
            &composition,
            &self.codec_plan(),
            cache,
            "next pass",
        ));
        // A switch also renders its fade segments after choosing the tick: more lead.
        let ahead = if job.switch_to.is_some() {
            SWITCH_AHEAD_TICKS
        } else {
            QUEUE_AHEAD_TICKS
        };
        let earliest = self.clock.tick_at(Instant::now()) + ahead;
        let Ok(mut conducted) = self.conducted.lock() else {
            return;
        };
        let Some(c) = conducted
            .get_mut(&job.name)
            .filter(|c| c.epoch == job.epoch)
        else {
            // Re-planned meanwhile: that plan's render plays.
            return;
        };
        let at_tick = match (&job.switch_to, job.spec.switch) {
            (None, _) => c.span.boundary_at_or_after(earliest),
            (Some(_), SwitchAt::TrackEnd) => c.next_track_start(earliest),
            (Some(_), SwitchAt::Fade { .. }) => earliest,
        };
        // Pieces start on even ticks (Opus frames are two).
        let at_tick = at_tick.next_multiple_of(2);
        let (pieces, at_tick) = match job.switch_to {
            None => (
                vec![Piece::looping(at_tick, Arc::clone(&render), 0)],
                at_tick,
            ),
            Some(_) => switch_pieces(c, &render, at_tick, job.spec.switch, &self.codec_plan()),
        };
        if let Ok(tx) = self.media.lock() {
            for piece in pieces {
                let _ = tx.send(MediaCommand::Queue {
                    channel: job.name.clone(),
                    piece,
                });
            }
        }
        tracing::info!(
            channel = %job.name,
            programme = %programme,
            pass,
            in_s = format!("{:.1}", at_tick.saturating_sub(earliest) as f64 / 100.0),
            "next pass queued"
        );
        c.next = Next::Queued(Box::new(QueuedPass {
            at_tick,
            render,
            programme,
            base,
            pass,
            last,
        }));
    }

    /// The config file's channels' main programmes, as the library and settings make them.
    fn config_programmes(&self) -> Programmes {
        match self.library.as_ref().ok().map(|l| l.lock()) {
            Some(Ok(library)) => programme::programmes(&self.config, Some(&library)),
            _ => programme::programmes(&self.config, None),
        }
    }

    /// What `spec`'s programme `name` plays, before any shuffle.
    fn base_composition(
        &self,
        config_programmes: &Programmes,
        spec: &ChannelSpec,
        name: &str,
    ) -> Composition {
        match self.library.as_ref().ok().map(|l| l.lock()) {
            Some(Ok(library)) => base_composition(config_programmes, Some(&library), spec, name),
            _ => base_composition(config_programmes, None, spec, name),
        }
    }

    /// Pass `pass` of a programme whose unshuffled composition is `base`, and the index (in
    /// `base`'s files) of its last track. Unshuffled: `base` itself, looping. Shuffled: the
    /// files in an order drawn from the channel's seed and the pass number (so a restart
    /// or a test replays it), never starting with `previous_last`, chained to it.
    fn pass_composition(
        &self,
        channel: &str,
        base: &Composition,
        shuffle: bool,
        pass: u64,
        previous_last: Option<usize>,
    ) -> (Composition, Option<usize>) {
        if !shuffle {
            return (base.clone(), None);
        }
        shuffled_pass(self.shuffle_seed, channel, base, pass, previous_last)
    }

    fn epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::AcqRel)
    }

    fn live(&self, channel: &str) -> Option<Arc<ChannelRender>> {
        self.renders.read().ok()?.get(channel).cloned()
    }

    /// Whether a re-plan has rendered `channel` since start-up (see `Control::superseded`).
    fn is_superseded(&self, channel: &str) -> bool {
        self.superseded.lock().is_ok_and(|s| s.contains(channel))
    }

    fn is_live(&self, channel: &str) -> bool {
        self.live(channel).is_some()
    }

    /// Fast start: the server started on the cached first 30 s of each loop ("heads"); load
    /// the full loops off the runtime and join each behind its head ([`Control::join_behind`]),
    /// then add the wideband codecs. Every full 8 kHz loop goes in before any wideband work,
    /// so each joins while its head still plays its first lap.
    pub fn complete_startup_renders(self: &Arc<Self>, heads: Renders, programmes: Programmes) {
        for name in programmes.keys() {
            self.set_render_state(name, RenderState::Rendering);
        }
        let heads: Heads = heads
            .into_iter()
            .map(|(name, render)| (name, Head::exact(render)))
            .collect();
        let control = Arc::clone(self);
        spawn_background("mohd-startup-render", move || {
            control.join_full_loops(&programmes, &heads, "full loop behind the cached head");
            lower_priority();
            control.add_wideband(&programmes);
        });
    }

    /// Cold start (no cached loop): the server went live on silent placeholders
    /// ([`programme::placeholders`]), so SIP answers at once. Render each channel's head
    /// ([`programme::render_head`]: its first tracks, every channel on a thread of its own)
    /// and put it live as soon as it is there; then, at nice 19 (calls are being served),
    /// each full loop, joined behind its head, then the wideband codecs. A channel without a
    /// head (announcements, the demo, a short playlist) goes live with its full loop.
    /// OPTIONS answers 503 "starting" until no channel plays its placeholder any more.
    /// `holds` (test hooks) keep the heads, and the full renders, from starting until each is
    /// released.
    pub fn complete_cold_start(
        self: &Arc<Self>,
        programmes: Programmes,
        holds: (Option<RenderHold>, Option<RenderHold>),
    ) {
        for name in programmes.keys() {
            self.set_render_state(name, RenderState::Rendering);
        }
        let (hold_heads, hold_full) = holds;
        let control = Arc::clone(self);
        spawn_background("mohd-cold-start", move || {
            if let Some(hold) = hold_heads {
                hold.wait();
            }
            let heads: Heads = std::thread::scope(|scope| {
                let tasks: Vec<_> = programmes
                    .iter()
                    .filter_map(|(name, programme)| {
                        let control = &control;
                        let placeholder = control.live(name)?;
                        let task = scope
                            .spawn(move || control.open_and_head(name, programme, placeholder));
                        Some((name.clone(), task))
                    })
                    .collect();
                tasks
                    .into_iter()
                    .filter_map(|(name, task)| Some((name, task.join().ok()?)))
                    .collect()
            });
            lower_priority();
            let heads = control.add_wideband_to_heads(heads);
            if let Some(hold) = hold_full {
                hold.wait();
            }
            control.join_full_loops(&programmes, &heads, "full loop behind the head");
            control.add_wideband(&programmes);
        });
    }

    /// One channel's cold start up to its head: its opening (the first seconds of its first
    /// track) live behind `placeholder` within milliseconds, then its head behind the
    /// opening ([`Head::behind_opening`]). What is live at the end, as the head the full loop
    /// joins behind: a placeholder or an opening that no head follows is replaced at once.
    fn open_and_head(
        &self,
        name: &str,
        programme: &Programme,
        placeholder: Arc<ChannelRender>,
    ) -> Head {
        let mut live = Arc::clone(&placeholder);
        // Unless a library change put its own render live meanwhile (each swap checks).
        if let Some(opening) = programme::render_opening(name, programme)
            && self.swap_in_behind(&live, Arc::clone(&opening), RenderState::Rendering)
        {
            self.update_unavailable();
            live = opening;
        }
        let Some(mut head) = programme::render_head(name, programme) else {
            return Head::placeholder(live);
        };
        if !Arc::ptr_eq(&live, &placeholder) {
            let now = self.clock.tick_at(Instant::now());
            let plan = self.codec_plan();
            match head.behind_opening(&live, now, OPENING_MARGIN_TICKS, &plan) {
                Some(behind) => head = behind,
                None => {
                    tracing::warn!(channel = %name, "the head came after its opening ended: a step in level")
                }
            }
        }
        if !self.swap_in_behind(&live, Arc::clone(&head.render), RenderState::Rendering) {
            return Head::placeholder(live);
        }
        self.update_unavailable();
        head
    }

    /// Each rendered head with the enabled wideband codecs, put live as it is ready (G.722
    /// and Opus callers hear music a moment after G.711 ones, not only once the full loop has
    /// its wideband codecs).
    fn add_wideband_to_heads(&self, heads: Heads) -> Heads {
        let plan = self.codec_plan();
        heads
            .into_iter()
            .map(|(name, head)| {
                let wider = head.with_wideband(&plan).filter(|wider| {
                    let render = Arc::clone(&wider.render);
                    self.swap_in_behind(&head.render, render, RenderState::Rendering)
                });
                (name, wider.unwrap_or(head))
            })
            .collect()
    }

    /// Every channel's full loop, obtained in turn and joined behind what start-up put live
    /// (its head, or its placeholder: a channel without a head), unless a library change
    /// replaced that meanwhile; then OPTIONS says whether each channel is playable. Behind a
    /// rendered head the full loop joins with every codec (the head serves them all until
    /// then); elsewhere with G.711, the wideband codecs added after ([`Control::add_wideband`]).
    fn join_full_loops(&self, programmes: &Programmes, heads: &Heads, occasion: &'static str) {
        let plan = self.codec_plan();
        for (name, programme) in programmes {
            let Some(head) = heads.get(name).filter(|_| !self.is_superseded(name)) else {
                continue;
            };
            let cache = self.cache.as_ref();
            let mut full = programme::obtain_narrowband(name, programme, cache, occasion);
            if head.is_rendered() {
                full = programme::obtain_wideband(&full, programme, &plan, cache, |_| {});
            }
            self.join_behind(head, Arc::new(full));
        }
        self.update_unavailable();
    }

    /// Puts `full` live in place of `head` at a tick where the head is the full loop
    /// ([`Head::joinable`]) and at the same position, so no caller hears a step: at once
    /// while the head is on its first lap inside that part (the head plays at the absolute
    /// position, as the full loop will); a moment later when before it; and when the head
    /// has looped (the full render took longer than the head), through the timeline: the
    /// full loop queued at the next joinable tick, at the head's position then, and the
    /// conductor's pass moved to match. A head with no joinable part is replaced at once.
    fn join_behind(&self, head: &Head, full: Arc<ChannelRender>) {
        let name = full.name.clone();
        let head_ticks = head.render.frames() * 2;
        let joinable = &head.joinable;
        loop {
            let earliest = self.clock.tick_at(Instant::now()) + QUEUE_AHEAD_TICKS;
            if joinable.is_empty() || (earliest >= joinable.start && earliest < joinable.end) {
                // Unless a library change replaced the head meanwhile: its render plays.
                self.swap_in_behind(&head.render, full, RenderState::Ready);
                return;
            }
            if self
                .live(&name)
                .is_none_or(|l| !Arc::ptr_eq(&l, &head.render))
            {
                return;
            }
            if earliest >= head_ticks {
                break;
            }
            // Before the joinable part of the first lap: wait for it.
            let wait = joinable.start - earliest;
            std::thread::sleep(std::time::Duration::from_millis(wait * 10));
        }
        let earliest = self.clock.tick_at(Instant::now()) + QUEUE_AHEAD_TICKS;
        let (lap, position) = (earliest / head_ticks, earliest % head_ticks);
        let at_tick = if position < joinable.start {
            lap * head_ticks + joinable.start
        } else if position + 2 < joinable.end {
            earliest
        } else {
            (lap + 1) * head_ticks + joinable.start
        }
        .next_multiple_of(2);
        let offset = at_tick % head_ticks;
        let Ok(mut conducted) = self.conducted.lock() else {
            return;
        };
        let Ok(mut renders) = self.renders.write() else {
            return;
        };
        if self.is_superseded(&name)
            || !renders
                .get(&name)
                .is_some_and(|l| Arc::ptr_eq(l, &head.render))
        {
            return;
        }
        if let Some(c) = conducted.get_mut(&name) {
            c.render = Arc::clone(&full);
            c.span = PassSpan {
                at_tick: at_tick - offset,
                len_ticks: full.frames() * 2,
            };
        }
        renders.insert(name.clone(), Arc::clone(&full));
        if let Ok(tx) = self.media.lock() {
            // The head first, where it plays now: a channel without calls has no timeline
            // yet, and one made by the full loop's piece would play the full loop before it.
            let now = earliest.next_multiple_of(2);
            let head_now = Piece::looping(now, Arc::clone(&head.render), now % head_ticks);
            let full_then = Piece::looping(at_tick, Arc::clone(&full), offset);
            let pieces = if now < at_tick {
                vec![head_now, full_then]
            } else {
                vec![full_then]
            };
            for piece in pieces {
                let _ = tx.send(MediaCommand::Queue {
                    channel: name.clone(),
                    piece,
                });
            }
        }
        drop(renders);
        drop(conducted);
        self.set_render_state(&name, RenderState::Ready);
        tracing::info!(
            channel = %name,
            in_s = format!("{:.1}", (at_tick - earliest.min(at_tick)) as f64 / 100.0),
            "full loop queued behind the head, which had looped"
        );
    }

    /// Adds the enabled wideband codecs to each channel's live render, each as soon as it is
    /// ready, one channel at a time (a 48 kHz render of a long playlist is hundreds of
    /// megabytes while it lasts), and drops the G.711 encodings the config does not enable;
    /// then drops cached renders nothing plays. A channel whose render a library change
    /// replaced meanwhile is left alone: that render has its own.
    fn add_wideband(&self, programmes: &Programmes) {
        let plan = self.codec_plan();
        for (name, programme) in programmes {
            if self.is_superseded(name) {
                continue;
            }
            let live = self.renders.read().ok().and_then(|r| r.get(name).cloned());
            let Some(mut live) = live else { continue };
            // No codec to add or drop: swapping in the same music would only start a new
            // piece mid-loop (a from-start caller before its position 0 would start shared).
            let unchanged = plan.wideband().all(|c| live.serves(c))
                && Codec::G711
                    .iter()
                    .all(|&c| live.serves(c) == plan.enables(c));
            if unchanged {
                continue;
            }
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

    /// [`Control::swap_in_if_live`] for start-up's renders (not for a channel a re-plan has
    /// rendered since), the channel's render state then `state` (a head is live while the
    /// channel is still rendering); whether it did.
    fn swap_in_behind(
        &self,
        live: &Arc<ChannelRender>,
        render: Arc<ChannelRender>,
        state: RenderState,
    ) -> bool {
        let name = render.name.clone();
        if self.is_superseded(&name) {
            return false;
        }
        let swapped = self.swap_in_if_live(live, render);
        if swapped {
            self.set_render_state(&name, state);
        }
        swapped
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
        let tick = self.clock.tick_at(now);
        let wall = jiff::Timestamp::now();
        let render_state = self
            .render_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let conducted = self.conducted.lock().ok();
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
                let c = conducted.as_ref().and_then(|c| c.get(&r.name));
                // Where the channel is in its pass: a conducted channel's pass started at its
                // span; a render nobody conducts yet plays at the absolute position.
                let sample = match c {
                    Some(c) => MediaClock::tick_sample(c.span.position(tick)),
                    None => MediaClock::tick_sample(tick),
                };
                let mut status = ChannelDto::status(
                    &r.name,
                    playing_at(r, sample),
                    r.len_samples() as f64 / 8000.0,
                    r.tracks.len(),
                    state,
                );
                status.programme =
                    Some(c.map_or(MAIN_PROGRAMME.to_owned(), |c| c.programme.clone()));
                status.next = next_at(r, sample);
                status.next_change = c.and_then(|c| next_change(&c.spec, wall));
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

/// What the conductor keeps for one channel between turns.
pub(super) struct Conducted {
    spec: ChannelSpec,
    /// The programme playing.
    programme: String,
    /// That programme's composition before any shuffle: a change to it re-plans the channel.
    base: Composition,
    /// The pass playing, and where on the media clock.
    render: Arc<ChannelRender>,
    span: PassSpan,
    /// Which pass of the programme it is (the shuffle's seed).
    pass: u64,
    /// The index (in `base`'s files) of the pass's last track, for a shuffled programme.
    last: Option<usize>,
    next: Next,
    /// Set at each plan: work started for an older plan is dropped when it completes.
    epoch: u64,
}

/// What follows a channel's current pass.
enum Next {
    /// Nothing planned: the pass loops.
    Nothing,
    /// Being rendered on a thread of its own.
    Rendering,
    /// In the media thread's timeline from its tick on.
    Queued(Box<QueuedPass>),
}

struct QueuedPass {
    at_tick: u64,
    render: Arc<ChannelRender>,
    programme: String,
    base: Composition,
    pass: u64,
    last: Option<usize>,
}

impl Conducted {
    /// A channel whose `render` went live with [`Control::swap_in`]: the media thread plays
    /// it at the absolute position, so its passes start at multiples of its length.
    fn new(
        spec: ChannelSpec,
        programme: String,
        base: Composition,
        render: &Arc<ChannelRender>,
        last: Option<usize>,
        epoch: u64,
    ) -> Conducted {
        Conducted {
            spec,
            programme,
            base,
            render: Arc::clone(render),
            span: PassSpan {
                at_tick: 0,
                len_ticks: render.frames() * 2,
            },
            pass: 0,
            last,
            next: Next::Nothing,
            epoch,
        }
    }

    /// Moves on to the queued pass if its start has come; its render if so.
    fn promote(&mut self, tick: u64) -> Option<Arc<ChannelRender>> {
        let Next::Queued(q) = &self.next else {
            return None;
        };
        if q.at_tick > tick {
            return None;
        }
        let Next::Queued(q) = std::mem::replace(&mut self.next, Next::Nothing) else {
            return None;
        };
        self.span = PassSpan {
            at_tick: q.at_tick,
            len_ticks: q.render.frames() * 2,
        };
        self.render = Arc::clone(&q.render);
        self.programme = q.programme;
        self.base = q.base;
        self.pass = q.pass;
        self.last = q.last;
        Some(q.render)
    }

    /// The tick the next track of the pass starts at, at or after `earliest` (the pass's
    /// next start if no track starts before its end).
    fn next_track_start(&self, earliest: u64) -> u64 {
        let boundary = self.span.boundary_at_or_after(earliest);
        let pass_start = boundary
            .saturating_sub(self.span.len_ticks)
            .max(self.span.at_tick);
        let position = earliest.saturating_sub(pass_start);
        self.render
            .tracks
            .iter()
            .map(|t| {
                t.start_sample
                    .div_ceil(u64::from(crate::channel::RATE) / 100)
            })
            .find(|&start| start >= position && start > 0)
            .map_or(boundary, |start| pass_start + start)
    }
}

/// The work of one next-pass render, taken from a channel's state under the lock.
struct NextPass {
    name: String,
    spec: ChannelSpec,
    programme: String,
    base: Composition,
    pass: u64,
    last: Option<usize>,
    /// A schedule switch to this programme; `None`: the programme's next pass.
    switch_to: Option<String>,
    epoch: u64,
}

impl NextPass {
    fn shuffled(name: &str, c: &Conducted) -> NextPass {
        NextPass {
            name: name.to_owned(),
            spec: c.spec.clone(),
            programme: c.programme.clone(),
            base: c.base.clone(),
            pass: c.pass,
            last: c.last,
            switch_to: None,
            epoch: c.epoch,
        }
    }

    fn switch(name: &str, c: &Conducted, to: String) -> NextPass {
        NextPass {
            switch_to: Some(to),
            ..NextPass::shuffled(name, c)
        }
    }
}

/// The pieces of a schedule switch at `at` (even): the current pass faded out from its position
/// then (over [`TRACK_END_FADE_MS`] at a track start, or the configured fade), the next
/// programme's pass faded in from its start, then that pass as a loop from where the fade-in
/// ends. Returns them with the tick the new pass's position 0 falls on (its span's start).
/// RTP sequence and timestamps are per call and untouched: only the payload changes.
fn switch_pieces(
    c: &Conducted,
    next: &Arc<ChannelRender>,
    at: u64,
    switch: SwitchAt,
    plan: &CodecPlan,
) -> (Vec<Piece<ChannelRender>>, u64) {
    let fade_ms = match switch {
        SwitchAt::TrackEnd => TRACK_END_FADE_MS,
        SwitchAt::Fade { ms } => ms,
    };
    let fade_out = Arc::new(
        c.render
            .fade_out_segment(c.span.position(at), fade_ms, plan),
    );
    let fade_in_at = (at + fade_out.len_ticks()).next_multiple_of(2);
    let fade_in = Arc::new(next.fade_in_segment(0, SWITCH_FADE_IN_MS, SWITCH_FLAT_MS, plan));
    let pass_at = fade_in_at + fade_in.len_ticks();
    let pieces = vec![
        Piece::once(at, fade_out, 0),
        Piece::once(fade_in_at, Arc::clone(&fade_in), 0),
        Piece::looping(pass_at, Arc::clone(next), fade_in.len_ticks()),
    ];
    (pieces, fade_in_at)
}

/// Every channel of the effective set: the config file's (in name order), then the managed
/// ones (the store keeps names unique across both).
pub(crate) fn effective_specs(config: &Config, store: Option<&ChannelStore>) -> Vec<ChannelSpec> {
    let managed = store.into_iter().flat_map(ChannelStore::channels);
    config
        .channels
        .values()
        .map(|c| &c.spec)
        .chain(managed)
        .cloned()
        .collect()
}

/// Every effective channel's first pass, by name, at wall-clock `wall`: what start-up
/// renders (and the cache keeps).
pub(crate) fn first_passes(
    config: &Config,
    library: Option<&Library>,
    store: Option<&ChannelStore>,
    shuffle_seed: u64,
    wall: jiff::Timestamp,
) -> Programmes {
    let config_programmes = programme::programmes(config, library);
    effective_specs(config, store)
        .into_iter()
        .map(|spec| {
            let name = programme_at(&spec, wall);
            let base = base_composition(&config_programmes, library, &spec, &name);
            let first = if is_shuffled(&spec, &name) {
                shuffled_pass(shuffle_seed, &spec.name, &base, 0, None).0
            } else {
                base
            };
            (spec.name, first)
        })
        .collect()
}

/// See [`Control::pass_composition`].
fn shuffled_pass(
    seed: u64,
    channel: &str,
    base: &Composition,
    pass: u64,
    previous_last: Option<usize>,
) -> (Composition, Option<usize>) {
    let expanded = base.expanded();
    let MusicSource::Files(files) = &expanded.music else {
        return (base.clone(), None);
    };
    let mut rng = StdRng::seed_from_u64(pass_seed(seed, channel, pass));
    let order = shuffle_order(files.len(), previous_last, &mut rng);
    let music = MusicSource::Files(order.iter().map(|&i| files[i].clone()).collect());
    let join = Join::Chain {
        previous_last: previous_last.and_then(|i| files.get(i).cloned()),
    };
    let composition = Composition {
        music,
        join,
        ..expanded.clone()
    };
    (composition, order.last().copied())
}

/// The programme `spec`'s schedule chooses at `wall` ([`MAIN_PROGRAMME`] without one).
fn programme_at(spec: &ChannelSpec, wall: jiff::Timestamp) -> String {
    spec.schedule
        .as_ref()
        .map_or(MAIN_PROGRAMME, |s| s.programme_at(wall).0)
        .to_owned()
}

/// The schedule's next switch after `wall`, for the status.
fn next_change(spec: &ChannelSpec, wall: jiff::Timestamp) -> Option<ScheduleChangeDto> {
    let next = spec.schedule.as_ref()?.status_at(wall).next?;
    Some(ScheduleChangeDto {
        in_s: next.at.timestamp().duration_since(wall).as_secs_f64(),
        at: next.at.to_string(),
        programme: next.programme,
    })
}

/// What `spec`'s programme `name` plays before any shuffle: a config file channel's main
/// programme as the library and settings make it (`config_programmes`), the others from the
/// spec, with the programme's announcements.
fn base_composition(
    config_programmes: &Programmes,
    library: Option<&Library>,
    spec: &ChannelSpec,
    name: &str,
) -> Composition {
    let p = spec.programme(name).unwrap_or(&spec.main);
    let mut composition = match config_programmes.get(&spec.name) {
        Some(c) if name == MAIN_PROGRAMME && spec.origin == Origin::ConfigFile => c.clone(),
        _ => Composition::playlist(
            resolve_music(&spec.name, &p.music, library),
            spec.loudness_lufs,
        ),
    };
    composition.announcements = p.announcements.as_ref().map(|a| AnnouncementPlan {
        clips: resolve_clips(&spec.name, &a.clips, library),
        every: a.every,
        loudness_lufs: a.target_lufs(composition.loudness_lufs),
        fade_out_ms: a.fade_out_ms,
        fade_in_ms: a.fade_in_ms,
        first_clip: 0,
    });
    composition
}

fn is_shuffled(spec: &ChannelSpec, programme: &str) -> bool {
    spec.programme(programme).is_some_and(|p| p.shuffle)
}

/// Whether a library change can change what `spec` plays.
fn uses_library(config: &Config, spec: &ChannelSpec) -> bool {
    programme::follows_the_library(config, &spec.name)
        || spec.plays_library_playlist()
        || !spec.library_track_ids().is_empty()
}

/// The seed of pass `pass` of `channel`'s shuffle: the server's seed, the channel's name
/// (FNV-1a) and the pass number mixed, so channels differ and a pass is reproducible.
fn pass_seed(seed: u64, channel: &str, pass: u64) -> u64 {
    let name = channel.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    seed ^ name ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Where a pass plays on the media clock: from `at_tick` on, round and round every
/// `len_ticks`, until the next pass's piece starts at one of its boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassSpan {
    at_tick: u64,
    len_ticks: u64,
}

impl PassSpan {
    /// The first boundary (the pass starting again) at or after `tick`.
    fn boundary_at_or_after(&self, tick: u64) -> u64 {
        if tick <= self.at_tick || self.len_ticks == 0 {
            return self.at_tick.max(tick);
        }
        let passes = (tick - self.at_tick).div_ceil(self.len_ticks);
        self.at_tick + passes * self.len_ticks
    }

    /// Ticks into the pass at `tick`.
    fn position(&self, tick: u64) -> u64 {
        tick.saturating_sub(self.at_tick) % self.len_ticks.max(1)
    }
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

    /// The PCMU payload a shared caller hears at each tick of `range` when `pieces` follow
    /// `old` (a loop from tick 0), decoded.
    fn heard(
        old: &ChannelRender,
        pieces: &[Piece<ChannelRender>],
        range: std::ops::Range<u64>,
    ) -> Vec<i16> {
        let mut out = Vec::new();
        let mut buf = [0u8; 80];
        for t in range {
            let piece = pieces.iter().rev().find(|p| p.at_tick <= t);
            let n = match piece {
                None => old.fill_packet(Codec::Pcmu, t, 1, &mut buf),
                Some(p) => {
                    let pos = p.offset_ticks + (t - p.at_tick);
                    assert!(
                        pos < p.source.len_ticks(),
                        "a segment is played past its end at tick {t}"
                    );
                    p.source.fill_packet(Codec::Pcmu, pos, 1, &mut buf)
                }
            };
            assert_eq!(n, 80, "tick {t} has no payload");
            out.extend(buf.iter().map(|&b| crate::codec::g711::ulaw_to_linear(b)));
        }
        out
    }

    fn largest_step(samples: &[i16]) -> i32 {
        samples
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_schedule_switch_fades_out_then_in_without_a_click() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Arc::new(two_tracks(dir.path()));
        let path = dir.path().join("next.wav");
        crate::audio::test_util::write_wav(
            &path,
            8000,
            &crate::audio::test_util::sine(550.0, 8000, 4 * 8000, 0.5),
        );
        let next = Arc::new(ChannelRender::render(
            "c",
            &MusicSource::Files(vec![path]),
            -18.0,
        ));
        let plan = CodecPlan::new(&[Codec::Pcmu], 40_000);
        let spec = ChannelSpec::simple(
            "c",
            Origin::ConfigFile,
            crate::channel::spec::Music::Source(MusicSource::Demo),
            -18.0,
        );
        let base = Composition::playlist(MusicSource::Demo, -18.0);
        let c = Conducted::new(spec, MAIN_PROGRAMME.to_owned(), base, &old, None, 0);
        let own = largest_step(&heard(&old, &[], 0..old.len_ticks())).max(largest_step(&heard(
            &next,
            &[],
            0..next.len_ticks(),
        )));
        for (switch, at) in [
            (SwitchAt::Fade { ms: 300 }, 1_234),
            (
                SwitchAt::TrackEnd,
                c.next_track_start(10).next_multiple_of(2),
            ),
        ] {
            let (pieces, pass_at) = switch_pieces(&c, &next, at, switch, &plan);
            assert_eq!(pieces.len(), 3);
            assert_eq!(
                pieces[0].at_tick, at,
                "{switch:?}: the fade-out starts at the switch"
            );
            assert_eq!(pieces[1].at_tick, pass_at);
            let end = pieces[2].at_tick + 100;
            let audio = heard(&old, &pieces, at - 100..end);
            let step = largest_step(&audio);
            assert!(
                step <= own + own / 5,
                "{switch:?}: a step of {step} across the switch, the music's own largest is {own}"
            );
            // Silence between the two programmes: the fade-out ends at zero.
            let fade_out_end = ((pieces[1].at_tick - (at - 100)) * 80) as usize;
            let quiet = audio[fade_out_end - 8..fade_out_end]
                .iter()
                .all(|s| s.unsigned_abs() < 200);
            assert!(quiet, "{switch:?}: the old programme has faded out");
        }
    }

    #[test]
    fn pass_boundaries_repeat_from_where_the_pass_started() {
        let span = PassSpan {
            at_tick: 1000,
            len_ticks: 300,
        };
        assert_eq!(span.boundary_at_or_after(0), 1000);
        assert_eq!(span.boundary_at_or_after(1000), 1000);
        assert_eq!(span.boundary_at_or_after(1001), 1300);
        assert_eq!(span.boundary_at_or_after(1600), 1600);
        assert_eq!(span.position(1000), 0);
        assert_eq!(span.position(1450), 150);
        assert_eq!(span.position(999), 0);
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
