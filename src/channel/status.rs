//! What a channel plays now and next **(pure)**: from its schedule and where the channel is in
//! the current pass, the programme and track playing, the next track and when it starts, and
//! the next schedule change with its local time. Used by `mohd check` and the status the
//! conductor publishes; nothing here reads a clock (time comes in as a [`Timestamp`]).

use std::time::Duration;

use jiff::Timestamp;

use super::TrackInfo;
use super::spec::MAIN_PROGRAMME;
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
    /// The track playing; `None` between tracks (an announcement, a gap).
    pub track: Option<String>,
    /// How far into `track` the channel is.
    pub track_elapsed: Duration,
    /// The next track and how long until it starts.
    pub next_track: Option<(String, Duration)>,
    /// The next schedule switch, if the channel has a schedule and it changes within
    /// [`crate::schedule::MAX_LOOKAHEAD_DAYS`].
    pub next_change: Option<ScheduleChange>,
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
    let playing = pass.tracks.iter().find(|t| {
        t.start_sample <= position && position < t.start_sample.saturating_add(t.len_samples)
    });
    let after = pass.tracks.iter().find(|t| t.start_sample > position);
    let next_track = match (after, pass.tracks.first()) {
        (Some(t), _) => Some((t.name.clone(), samples(t.start_sample - position))),
        (None, Some(first)) if pass.repeats => Some((
            first.name.clone(),
            samples(pass.len_samples - position + first.start_sample),
        )),
        _ => None,
    };
    NowNext {
        programme,
        track: playing.map(|t| t.name.clone()),
        track_elapsed: playing.map_or(Duration::ZERO, |t| samples(position - t.start_sample)),
        next_track,
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
        TrackInfo {
            name: name.into(),
            start_sample: start_s * 8000,
            len_samples: len_s * 8000,
        }
    }

    #[test]
    fn now_and_next_track_in_a_pass() {
        // Two tracks with a 5 s announcement between them.
        let tracks = [track("a.flac", 0, 60), track("b.flac", 65, 30)];
        let at: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let pass = |position_s: u64, repeats| PassPosition {
            tracks: &tracks,
            len_samples: 95 * 8000,
            position: position_s * 8000,
            repeats,
        };
        let n = now_next(None, &pass(10, true), at);
        assert_eq!(n.programme, "main");
        assert_eq!(n.track.as_deref(), Some("a.flac"));
        assert_eq!(n.track_elapsed, Duration::from_secs(10));
        assert_eq!(
            n.next_track,
            Some(("b.flac".into(), Duration::from_secs(55)))
        );
        assert_eq!(n.next_change, None);
        // During the announcement no track plays.
        let n = now_next(None, &pass(62, true), at);
        assert_eq!(n.track, None);
        // At the end of a repeating pass the next is its first track; a shuffled one's is
        // not known yet. Positions past the end wrap.
        let n = now_next(None, &pass(90, true), at);
        assert_eq!(
            n.next_track,
            Some(("a.flac".into(), Duration::from_secs(5)))
        );
        assert_eq!(now_next(None, &pass(90, false), at).next_track, None);
        let n = now_next(None, &pass(95 + 10, true), at);
        assert_eq!(n.track_elapsed, Duration::from_secs(10));
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
