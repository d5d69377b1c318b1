//! What a channel plays now and next **(pure)**: from its schedule and where the channel is in
//! the current pass, the programme and track playing, the next track and when it starts, and
//! the next schedule change with its local time. Used by `mohd check` and the status the
//! conductor publishes; nothing here reads a clock (time comes in as a [`Timestamp`]).

use std::time::Duration;

use jiff::Timestamp;

use super::spec::MAIN_PROGRAMME;
use super::{TrackInfo, TrackKind};
use crate::clock::SAMPLE_RATE;
use crate::schedule::{Schedule, ScheduleChange};

/// Where a channel is in the pass it is playing.
#[derive(Debug, Clone, Copy)]
pub struct PassPosition<'a> {
    /// The pass's tracks in play order (a render's `tracks`, samples at 8 kHz).
    pub tracks: &'a [TrackInfo],
    /// The pass's length in samples at 8 kHz.
    pub len_samples: u64,
    /// The position now, in samples from the pass's start (taken modulo its length).
    pub position: u64,
    /// Whether this same pass plays again after its end (false when the next pass is
    /// shuffled afresh, so its first track is not known yet).
    pub repeats: bool,
}

/// A channel's "now playing / next".
#[derive(Debug, Clone, PartialEq)]
pub struct NowNext {
    /// The programme playing ([`MAIN_PROGRAMME`] without a schedule).
    pub programme: String,
    /// What plays at the position; `None` in a gap no track covers.
    pub playing: Option<Playing>,
    /// The next music track or announcement and how long until it starts (the rest of a
    /// track an announcement interrupted is not "next": it is the same track).
    pub next: Option<Upcoming>,
    /// The next schedule switch, if the channel has a schedule and it changes within
    /// [`crate::schedule::MAX_LOOKAHEAD_DAYS`].
    pub next_change: Option<ScheduleChange>,
}

/// The piece of the pass playing now.
#[derive(Debug, Clone, PartialEq)]
pub struct Playing {
    pub name: String,
    pub kind: TrackKind,
    /// How far into this piece (for [`TrackKind::Resumed`], since the music resumed).
    pub elapsed: Duration,
}

/// The piece of the pass that starts next.
#[derive(Debug, Clone, PartialEq)]
pub struct Upcoming {
    pub name: String,
    pub kind: TrackKind,
    pub starts_in: Duration,
}

/// What `pass` plays at its position, and what the schedule says at `at`.
pub fn now_next(schedule: Option<&Schedule>, pass: &PassPosition<'_>, at: Timestamp) -> NowNext {
    let (programme, next_change) = match schedule {
        Some(s) => {
            let status = s.status_at(at);
            (status.programme, status.next)
        }
        None => (MAIN_PROGRAMME.to_owned(), None),
    };
    let position = pass.position.checked_rem(pass.len_samples).unwrap_or(0);
    // Crossfaded tracks overlap: the one that started last is the one coming in.
    let playing = pass.tracks.iter().rfind(|t| {
        t.start_sample <= position && position < t.start_sample.saturating_add(t.len_samples)
    });
    let is_next = |t: &&TrackInfo| t.kind != TrackKind::Resumed;
    let after = pass
        .tracks
        .iter()
        .filter(is_next)
        .find(|t| t.start_sample > position);
    let next = match (after, pass.tracks.iter().find(is_next)) {
        (Some(t), _) => Some((t, t.start_sample - position)),
        (None, Some(first)) if pass.repeats => Some((
            first,
            (pass.len_samples - position).saturating_add(first.start_sample),
        )),
        _ => None,
    };
    NowNext {
        programme,
        playing: playing.map(|t| Playing {
            name: t.name.clone(),
            kind: t.kind,
            elapsed: samples(position - t.start_sample),
        }),
        next: next.map(|(t, wait)| Upcoming {
            name: t.name.clone(),
            kind: t.kind,
            starts_in: samples(wait),
        }),
        next_change,
    }
}

fn samples(n: u64) -> Duration {
    Duration::from_micros(n.saturating_mul(1_000_000) / u64::from(SAMPLE_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{TimeOfDay, Weekdays, WeeklyRange};

    fn track(name: &str, start_s: u64, len_s: u64) -> TrackInfo {
        piece(name, start_s, len_s, TrackKind::Music)
    }

    fn piece(name: &str, start_s: u64, len_s: u64, kind: TrackKind) -> TrackInfo {
        TrackInfo {
            name: name.into(),
            start_sample: start_s * 8000,
            len_samples: len_s * 8000,
            kind,
        }
    }

    #[test]
    fn now_and_next_track_in_a_pass() {
        // a.flac, interrupted at 40 s by a 5 s announcement, resumes for 20 s; then b.flac.
        let tracks = [
            track("a.flac", 0, 40),
            piece("wait.wav", 40, 5, TrackKind::Announcement),
            piece("a.flac", 45, 20, TrackKind::Resumed),
            track("b.flac", 65, 30),
        ];
        let at: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let pass = |position_s: u64, repeats| PassPosition {
            tracks: &tracks,
            len_samples: 95 * 8000,
            position: position_s * 8000,
            repeats,
        };
        let next = |n: &NowNext| {
            n.next
                .as_ref()
                .map(|u| (u.name.clone(), u.kind, u.starts_in))
        };
        let n = now_next(None, &pass(10, true), at);
        assert_eq!(n.programme, "main");
        assert_eq!(
            n.playing,
            Some(Playing {
                name: "a.flac".into(),
                kind: TrackKind::Music,
                elapsed: Duration::from_secs(10)
            })
        );
        assert_eq!(
            next(&n),
            Some((
                "wait.wav".into(),
                TrackKind::Announcement,
                Duration::from_secs(30)
            ))
        );
        assert_eq!(n.next_change, None);
        // During the announcement the next is b.flac, not the rest of a.flac.
        let n = now_next(None, &pass(42, true), at);
        assert_eq!(
            n.playing.as_ref().map(|p| p.kind),
            Some(TrackKind::Announcement)
        );
        assert_eq!(
            next(&n),
            Some(("b.flac".into(), TrackKind::Music, Duration::from_secs(23)))
        );
        // At the end of a repeating pass the next is its first track; a shuffled one's is
        // not known yet. Positions past the end wrap.
        let n = now_next(None, &pass(90, true), at);
        assert_eq!(
            next(&n),
            Some(("a.flac".into(), TrackKind::Music, Duration::from_secs(5)))
        );
        assert_eq!(now_next(None, &pass(90, false), at).next, None);
        let n = now_next(None, &pass(95 + 10, true), at);
        assert_eq!(n.playing.map(|p| p.elapsed), Some(Duration::from_secs(10)));
    }

    #[test]
    fn the_schedule_says_the_programme_and_the_next_switch() {
        let s = Schedule::new(
            "Europe/London",
            "closed",
            vec![WeeklyRange {
                days: Weekdays::parse("mon-fri").unwrap(),
                from: TimeOfDay::new(9, 0).unwrap(),
                to: TimeOfDay::new(17, 30).unwrap(),
                programme: "main".into(),
            }],
            vec![],
        )
        .unwrap();
        let tracks = [track("a.flac", 0, 60)];
        let pass = PassPosition {
            tracks: &tracks,
            len_samples: 60 * 8000,
            position: 0,
            repeats: true,
        };
        // Monday 7 December 2026, noon.
        let n = now_next(Some(&s), &pass, "2026-12-07T12:00:00Z".parse().unwrap());
        assert_eq!(n.programme, "main");
        let change = n.next_change.unwrap();
        assert_eq!(change.programme, "closed");
        assert_eq!(change.local(), "2026-12-07 17:30 GMT (Europe/London)");
    }
}
