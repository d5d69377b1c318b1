//! Channel timelines and what each call hears of them **(pure)**.
//!
//! Owns, per channel, the sequence of [`Piece`]s the channel plays on the media clock, and,
//! per call, how it listens to that sequence ([`Listening`]): shared (at the clock's tick),
//! from the start (at a fixed delay δ behind it), or a greeting first and then one of those.
//! Every choice is made when a packet is written, from integers: resolving a tick to a
//! source and position is a scan of a few pieces, with no allocation and no DSP.
//!
//! # Rules
//!
//! At tick `t` a channel plays the last piece with `at_tick <= t`, at source position
//! `offset_ticks + (t − at_tick)`: a [`PieceKind::Loop`] wraps at the source's length (the
//! source does the wrapping, so a channel's first render, an implicit `Loop` at tick 0 with
//! offset 0, gives the absolute shared position `t` as before timelines existed); a
//! [`PieceKind::Once`] past its end yields to the last `Loop` piece before it, at that
//! piece's own position (its clock kept running underneath). Before the first piece the
//! channel plays its *base*: the render the first call or the first queued piece brought.
//!
//! A packet that straddles a piece boundary is written in parts (the first part from the
//! piece before, the rest from the one after), so every caller hears the boundary at the same
//! sample whatever its ptime. Opus frames are indivisible: they are 2 ticks at even
//! positions, so pieces start at even ticks and offsets (rounded up when queued) and no
//! boundary falls inside one.

use std::collections::VecDeque;
use std::sync::Arc;

use super::PayloadSource;
use crate::channel::spec::ChannelMode;

/// How a [`Piece`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// Plays its source round and round until a later piece starts.
    Loop,
    /// Plays its source once from `offset_ticks` to its end, then yields to the last `Loop`
    /// piece before it (a fade-out segment, an interjection).
    Once,
}

/// One entry of a channel's timeline: from media-clock tick `at_tick` on, the channel plays
/// `source` from position `offset_ticks` (10 ms ticks; both even, for Opus frames).
#[derive(Debug)]
pub struct Piece<S> {
    pub at_tick: u64,
    pub source: Arc<S>,
    pub offset_ticks: u64,
    pub kind: PieceKind,
}

impl<S> Clone for Piece<S> {
    fn clone(&self) -> Self {
        Piece {
            at_tick: self.at_tick,
            source: Arc::clone(&self.source),
            offset_ticks: self.offset_ticks,
            kind: self.kind,
        }
    }
}

impl<S> Piece<S> {
    /// `source` looping from tick `at_tick`, at position `offset_ticks` then.
    pub fn looping(at_tick: u64, source: Arc<S>, offset_ticks: u64) -> Self {
        Piece {
            at_tick,
            source,
            offset_ticks,
            kind: PieceKind::Loop,
        }
    }

    /// `source` played once from tick `at_tick`, from position `offset_ticks` to its end.
    pub fn once(at_tick: u64, source: Arc<S>, offset_ticks: u64) -> Self {
        Piece {
            at_tick,
            source,
            offset_ticks,
            kind: PieceKind::Once,
        }
    }
}

/// How one call listens to its channel (the fan-out's copy of
/// [`super::CallMedia::playback`]).
#[derive(Debug, Default)]
pub enum Playback<S> {
    /// At the channel's current position, like a radio (the default).
    #[default]
    Shared,
    /// From the start of the channel's programme: the call hears the timeline δ ticks late,
    /// δ fixed at its first packet so that it begins at position 0 of the `Loop` piece
    /// playing then.
    FromStart,
    /// `greeting` from its start, then the programme: at its current position through an
    /// entry mark (`then == Shared`), or from its start right after the greeting.
    Greeting { greeting: Arc<S>, then: ChannelMode },
}

impl<S> Playback<S> {
    /// For logs: `shared`, `from-start`, `greeting then shared`, `greeting then from-start`.
    pub fn describe(&self) -> &'static str {
        match self {
            Playback::Shared => "shared",
            Playback::FromStart => "from-start",
            Playback::Greeting {
                then: ChannelMode::Shared,
                ..
            } => "greeting then shared",
            Playback::Greeting {
                then: ChannelMode::FromStart,
                ..
            } => "greeting then from-start",
        }
    }
}

impl<S> Clone for Playback<S> {
    fn clone(&self) -> Self {
        match self {
            Playback::Shared => Playback::Shared,
            Playback::FromStart => Playback::FromStart,
            Playback::Greeting { greeting, then } => Playback::Greeting {
                greeting: Arc::clone(greeting),
                then: *then,
            },
        }
    }
}

/// A greeting ends in at least this much encoded silence (1 s): a shared caller waits in it
/// for the programme's next entry mark, looked for from this long before the greeting's end.
pub const GREETING_WAIT_TICKS: u64 = 100;

/// What plays at one tick: a source, the position in it, and for how many ticks from there
/// the answer stays the same (up to the next piece boundary).
#[derive(Debug)]
pub(super) struct Slot<'a, S> {
    pub source: &'a Arc<S>,
    pub position: u64,
    pub run: u64,
}

/// One channel's timeline.
#[derive(Debug)]
pub(super) struct Timeline<S> {
    pub name: String,
    /// What plays before the first piece: an absolute `Loop` from tick 0.
    base: Arc<S>,
    /// In `at_tick` order, no two at the same tick.
    pieces: VecDeque<Piece<S>>,
    /// Calls listening to it.
    pub calls: usize,
}

impl<S: PayloadSource> Timeline<S> {
    pub fn new(name: &str, base: Arc<S>) -> Self {
        Timeline {
            name: name.to_owned(),
            base,
            pieces: VecDeque::new(),
            calls: 0,
        }
    }

    pub fn pieces(&self) -> &VecDeque<Piece<S>> {
        &self.pieces
    }

    /// What plays before the first piece.
    pub fn base(&self) -> &Arc<S> {
        &self.base
    }

    /// Puts back `pieces` (another fan-out's copy of this channel's timeline, in tick order)
    /// that start before this one's first piece: they were pruned here, or queued before this
    /// timeline was made, and a call moving in may still read them. Both fan-outs got the same
    /// queue commands, so from this one's first piece on they agree.
    pub fn restore_history(&mut self, pieces: Vec<Piece<S>>) {
        let first = self.pieces.front().map_or(u64::MAX, |p| p.at_tick);
        for p in pieces.into_iter().rev() {
            if p.at_tick < first && self.pieces.front().is_none_or(|f| p.at_tick < f.at_tick) {
                self.pieces.push_front(p);
            }
        }
    }

    /// Adds `piece`, dropping any piece at or after its tick. Its tick is moved up to
    /// `earliest` when earlier (packets before then may have gone out), then both tick and
    /// offset up to even (Opus frames).
    pub fn queue(&mut self, mut piece: Piece<S>, earliest: u64) {
        piece.at_tick = piece.at_tick.max(earliest).next_multiple_of(2);
        piece.offset_ticks = piece.offset_ticks.next_multiple_of(2);
        while self
            .pieces
            .back()
            .is_some_and(|p| p.at_tick >= piece.at_tick)
        {
            self.pieces.pop_back();
        }
        self.pieces.push_back(piece);
    }

    /// `render` replaces the source of what plays at `tick` (the last `Loop` piece at or
    /// before it, or the base) everywhere it appears, positions unchanged: a library change
    /// or newly added codecs go on at the same position, for shared and delayed calls alike.
    /// Queued pieces of other sources stay.
    pub fn replace_current(&mut self, render: &Arc<S>, tick: u64) {
        let current = self
            .pieces
            .iter()
            .rev()
            .find(|p| p.at_tick <= tick && p.kind == PieceKind::Loop)
            .map_or(&self.base, |p| &p.source);
        let old = Arc::clone(current);
        if Arc::ptr_eq(&self.base, &old) {
            self.base = Arc::clone(render);
        }
        for p in self.pieces.iter_mut() {
            if Arc::ptr_eq(&p.source, &old) {
                p.source = Arc::clone(render);
            }
        }
    }

    /// What plays at tick `at`.
    pub fn slot_at(&self, at: u64) -> Slot<'_, S> {
        let found = self.pieces.iter().rposition(|p| p.at_tick <= at);
        let next = found.map_or(0, |i| i + 1);
        let run = self
            .pieces
            .get(next)
            .map_or(u64::MAX, |p| p.at_tick.saturating_sub(at));
        let Some(i) = found else {
            return Slot {
                source: &self.base,
                position: at,
                run,
            };
        };
        let p = &self.pieces[i];
        let position = p.offset_ticks + (at - p.at_tick);
        if p.kind == PieceKind::Loop {
            return Slot {
                source: &p.source,
                position,
                run,
            };
        }
        let len = p.source.len_ticks();
        if position < len {
            return Slot {
                source: &p.source,
                position,
                run: run.min(len - position),
            };
        }
        match self.loop_before(i) {
            Some(l) => Slot {
                source: &l.source,
                position: l.offset_ticks + (at - l.at_tick),
                run,
            },
            None => Slot {
                source: &self.base,
                position: at,
                run,
            },
        }
    }

    fn loop_before(&self, i: usize) -> Option<&Piece<S>> {
        self.pieces
            .range(..i)
            .rev()
            .find(|p| p.kind == PieceKind::Loop)
    }

    /// δ for a from-start call whose programme starts at tick `t0`: the call then hears the
    /// timeline at `t − δ`, beginning at position 0 of the `Loop` playing at `t0` (if a
    /// `Once` segment plays then, of the `Loop` before it, which the call then hears through
    /// that segment). Even (Opus), so the start may be one tick in; 0 (a shared start) when
    /// that loop has no position 0 since it began.
    pub fn start_delay(&self, t0: u64) -> u64 {
        let found = self.pieces.iter().rposition(|p| p.at_tick <= t0);
        let (at, offset, source, limit) = match found {
            Some(i) if self.pieces[i].kind == PieceKind::Loop => {
                let p = &self.pieces[i];
                (p.at_tick, p.offset_ticks, &p.source, t0)
            }
            Some(i) => {
                // A Once: the Loop before it, up to the tick before the piece after that.
                let j = self
                    .pieces
                    .range(..i)
                    .rposition(|p| p.kind == PieceKind::Loop);
                match j {
                    Some(j) => {
                        let p = &self.pieces[j];
                        let limit = self.pieces[j + 1].at_tick.saturating_sub(1);
                        (p.at_tick, p.offset_ticks, &p.source, limit)
                    }
                    None => (0, 0, &self.base, self.pieces[0].at_tick.saturating_sub(1)),
                }
            }
            None => (0, 0, &self.base, t0),
        };
        latest_zero(at, offset, source.len_ticks(), limit.min(t0))
            .map_or(0, |start| (t0 - start) & !1)
    }

    /// Where a shared caller whose greeting ends at `greeting_end` joins: at the first entry
    /// mark at or after `from` (an entry segment to play from there), if it comes by
    /// `greeting_end` while the same piece plays; else at `greeting_end` directly.
    pub fn plan_entry(&self, from: u64, greeting_end: u64) -> (u64, Option<Arc<S>>) {
        let slot = self.slot_at(from);
        let len = slot.source.len_ticks();
        if len == 0 {
            return (greeting_end, None);
        }
        let position = slot.position % len;
        let Some((entry, segment)) = slot.source.entry_after(position) else {
            return (greeting_end, None);
        };
        let wait = if entry >= position {
            entry - position
        } else {
            entry + len - position
        };
        let at = from.saturating_add(wait);
        if at <= greeting_end && wait < slot.run {
            (at, Some(segment))
        } else {
            (greeting_end, None)
        }
    }

    /// Drops the pieces no read at or after tick `earliest` can reach: a `Once` over by
    /// then, and all before the piece playing then (or, when that is a `Once`, before the
    /// `Loop` it yields to).
    pub fn prune(&mut self, earliest: u64) {
        let mut found = self.pieces.iter().rposition(|p| p.at_tick <= earliest);
        while let Some(i) = found {
            let p = &self.pieces[i];
            let over = p.kind == PieceKind::Once
                && p.offset_ticks + (earliest - p.at_tick) >= p.source.len_ticks();
            if !over {
                break;
            }
            self.pieces.remove(i);
            found = self.pieces.range(..i).rposition(|p| p.at_tick <= earliest);
        }
        let Some(i) = found else {
            return;
        };
        let keep_from = if self.pieces[i].kind == PieceKind::Loop {
            i
        } else {
            match self
                .pieces
                .range(..i)
                .rposition(|p| p.kind == PieceKind::Loop)
            {
                Some(j) => j,
                None => return,
            }
        };
        self.pieces.drain(..keep_from);
    }
}

/// The latest tick in `at..=limit` where a loop of `len` ticks, at position `offset` at
/// tick `at`, is at position 0.
fn latest_zero(at: u64, offset: u64, len: u64, limit: u64) -> Option<u64> {
    if len == 0 {
        return None;
    }
    let first = at + (len - offset % len) % len;
    (first <= limit).then(|| first + (limit - first) / len * len)
}

/// Per-call listening state: [`Playback`] as the call goes through it.
#[derive(Debug)]
pub(super) enum Listening<S> {
    Shared,
    /// `None` until the first packet fixes δ.
    FromStart {
        delay: Option<u64>,
    },
    /// The greeting plays from the call's first tick; the join is not planned yet.
    Greeting {
        greeting: Arc<S>,
        then: ChannelMode,
    },
    /// The greeting plays until `join_at`; then `after`.
    Joining {
        greeting: Arc<S>,
        join_at: u64,
        after: After<S>,
    },
}

#[derive(Debug)]
pub(super) enum After<S> {
    /// The shared timeline, through `Some` entry segment first.
    Entry(Option<Arc<S>>),
    /// The timeline δ late, from position 0 at `join_at`.
    Delay(u64),
}

impl<S: PayloadSource> Listening<S> {
    pub fn new(playback: Playback<S>) -> Self {
        match playback {
            Playback::Shared => Listening::Shared,
            Playback::FromStart => Listening::FromStart { delay: None },
            Playback::Greeting { greeting, then } => Listening::Greeting { greeting, then },
        }
    }

    /// Fixes what the packet covering `tick .. tick + ticks` needs decided: δ at a from-start
    /// call's first packet, the join once the greeting nears its end, and the plain state
    /// once a join is over. `first` is the call's first tick (the greeting's start).
    pub fn prepare(&mut self, tl: &Timeline<S>, first: u64, tick: u64, ticks: u64) {
        let end = tick + ticks;
        let next = match self {
            Listening::Shared | Listening::FromStart { delay: Some(_) } => return,
            Listening::FromStart { delay } => {
                *delay = Some(tl.start_delay(tick));
                return;
            }
            Listening::Greeting { greeting, then } => {
                let len = greeting.len_ticks();
                let greeting_end = first.saturating_add(len);
                match then {
                    ChannelMode::Shared => {
                        let from = greeting_end - len.min(GREETING_WAIT_TICKS);
                        if end <= from {
                            return;
                        }
                        let (join_at, entry) = tl.plan_entry(from, greeting_end);
                        Listening::Joining {
                            greeting: Arc::clone(greeting),
                            join_at,
                            after: After::Entry(entry),
                        }
                    }
                    ChannelMode::FromStart => {
                        if end <= greeting_end {
                            return;
                        }
                        Listening::Joining {
                            greeting: Arc::clone(greeting),
                            join_at: greeting_end,
                            after: After::Delay(tl.start_delay(greeting_end)),
                        }
                    }
                }
            }
            Listening::Joining { join_at, after, .. } => match after {
                After::Delay(delay) if tick >= *join_at => Listening::FromStart {
                    delay: Some(*delay),
                },
                After::Entry(None) if tick >= *join_at => Listening::Shared,
                After::Entry(Some(s)) if tick >= *join_at + s.len_ticks() => Listening::Shared,
                _ => return,
            },
        };
        *self = next;
    }

    /// What the call hears at tick `at` (after [`Listening::prepare`] for its packet).
    pub fn slot<'a>(&'a self, tl: &'a Timeline<S>, first: u64, at: u64) -> Slot<'a, S> {
        match self {
            Listening::Shared | Listening::FromStart { delay: None } => tl.slot_at(at),
            Listening::FromStart { delay: Some(d) } => tl.slot_at(at.saturating_sub(*d)),
            Listening::Greeting { greeting, .. } => Slot {
                source: greeting,
                position: at.saturating_sub(first),
                run: u64::MAX,
            },
            Listening::Joining {
                greeting,
                join_at,
                after,
            } => {
                if at < *join_at {
                    return Slot {
                        source: greeting,
                        position: at.saturating_sub(first),
                        run: join_at - at,
                    };
                }
                match after {
                    After::Entry(Some(s)) if at - join_at < s.len_ticks() => Slot {
                        source: s,
                        position: at - join_at,
                        run: s.len_ticks() - (at - join_at),
                    },
                    After::Entry(_) => tl.slot_at(at),
                    After::Delay(d) => tl.slot_at(at.saturating_sub(*d)),
                }
            }
        }
    }

    /// The earliest timeline tick this call may still read from `next_tick` on (pieces
    /// before what plays then can go).
    pub fn earliest_read(&self, first: u64, next_tick: u64) -> u64 {
        match self {
            Listening::Shared | Listening::FromStart { delay: None } => next_tick,
            Listening::FromStart { delay: Some(d) } => next_tick.saturating_sub(*d),
            Listening::Greeting { greeting, then } => {
                let len = greeting.len_ticks();
                let from = match then {
                    ChannelMode::Shared => first.saturating_add(len) - len.min(GREETING_WAIT_TICKS),
                    ChannelMode::FromStart => first.saturating_add(len),
                };
                next_tick.min(from)
            }
            Listening::Joining { join_at, after, .. } => {
                let from = next_tick.min(*join_at);
                match after {
                    After::Entry(_) => from,
                    After::Delay(d) => from.saturating_sub(*d),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    #[derive(Debug)]
    struct Fake(u64);

    impl PayloadSource for Fake {
        fn name(&self) -> &str {
            "c"
        }
        fn len_ticks(&self) -> u64 {
            self.0
        }
        fn fill_packet(&self, _: Codec, _: u64, _: u64, _: &mut [u8]) -> usize {
            0
        }
    }

    #[test]
    fn latest_zero_finds_the_last_loop_start_within_the_limit() {
        assert_eq!(latest_zero(0, 0, 100, 0), Some(0));
        assert_eq!(latest_zero(0, 0, 100, 250), Some(200));
        assert_eq!(latest_zero(10, 30, 100, 79), None);
        assert_eq!(latest_zero(10, 30, 100, 80), Some(80));
        assert_eq!(latest_zero(10, 130, 100, 500), Some(480));
        assert_eq!(latest_zero(0, 0, 0, 500), None);
    }

    #[test]
    fn a_once_yields_to_the_loop_before_it_at_that_loops_own_position() {
        let base = Arc::new(Fake(1000));
        let pass = Arc::new(Fake(600));
        let jingle = Arc::new(Fake(50));
        let mut tl = Timeline::new("c", Arc::clone(&base));
        tl.queue(Piece::looping(100, Arc::clone(&pass), 0), 0);
        tl.queue(Piece::once(300, Arc::clone(&jingle), 0), 0);
        let s = tl.slot_at(99);
        assert!(Arc::ptr_eq(s.source, &base));
        assert_eq!((s.position, s.run), (99, 1));
        let s = tl.slot_at(320);
        assert!(Arc::ptr_eq(s.source, &jingle));
        assert_eq!((s.position, s.run), (20, 30));
        let s = tl.slot_at(350);
        assert!(Arc::ptr_eq(s.source, &pass));
        assert_eq!((s.position, s.run), (250, u64::MAX));
        // A later queue replaces what is queued at or after it; odd ticks go up to even.
        tl.queue(Piece::looping(299, Arc::clone(&base), 1), 0);
        assert_eq!(tl.pieces().len(), 2);
        assert_eq!(
            (tl.pieces()[1].at_tick, tl.pieces()[1].offset_ticks),
            (300, 2)
        );
        // Too late: moved to the earliest tick still to come.
        tl.queue(Piece::looping(10, Arc::clone(&pass), 0), 400);
        assert_eq!(tl.pieces().len(), 3);
        assert_eq!(tl.pieces()[2].at_tick, 400);
        tl.prune(450);
        assert_eq!(tl.pieces().len(), 1);
        // A Once over by then goes; the Loop it yielded to stays.
        let mut tl = Timeline::new("c", Arc::new(Fake(1000)));
        tl.queue(Piece::looping(100, Arc::clone(&pass), 0), 0);
        tl.queue(Piece::once(300, Arc::clone(&jingle), 0), 0);
        tl.prune(349);
        assert_eq!(tl.pieces().len(), 2);
        tl.prune(350);
        assert_eq!(tl.pieces().len(), 1);
        assert_eq!(tl.pieces()[0].at_tick, 100);
    }

    #[test]
    fn prune_keeps_the_loop_a_once_yields_to() {
        let base = Arc::new(Fake(1000));
        let pass = Arc::new(Fake(600));
        let jingle = Arc::new(Fake(50));
        let mut tl = Timeline::new("c", base);
        tl.queue(Piece::looping(100, Arc::clone(&pass), 0), 0);
        tl.queue(Piece::once(300, Arc::clone(&jingle), 0), 0);
        tl.prune(320);
        assert_eq!(tl.pieces().len(), 2);
        tl.prune(100);
        assert_eq!(tl.pieces().len(), 2);
    }

    #[test]
    fn from_start_delay_lands_on_position_zero() {
        let base = Arc::new(Fake(1000));
        let pass = Arc::new(Fake(600));
        let fade = Arc::new(Fake(40));
        let mut tl = Timeline::new("c", base);
        assert_eq!(tl.start_delay(0), 0);
        assert_eq!(tl.start_delay(700), 700);
        assert_eq!(tl.start_delay(2_400), 400);
        // Odd: one tick in, δ even.
        assert_eq!(tl.start_delay(701), 700);
        tl.queue(Piece::looping(3_000, Arc::clone(&pass), 0), 0);
        assert_eq!(tl.start_delay(3_000), 0);
        assert_eq!(tl.start_delay(3_700), 100);
        // During a fade-out: the pass before it, from its last start before the fade.
        tl.queue(Piece::once(4_000, fade, 0), 0);
        assert_eq!(tl.start_delay(4_020), 420);
        // An offset loop that has not reached its position 0 yet: a shared start.
        tl.queue(Piece::looping(5_000, pass, 300), 0);
        assert_eq!(tl.start_delay(5_100), 0);
        assert_eq!(tl.start_delay(5_400), 100);
    }
}
