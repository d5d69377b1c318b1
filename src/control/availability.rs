//! Whether this box takes new calls: the running side of admission control and of the
//! graceful drain.
//!
//! Owns the admission model (`rtp::admission::Admission`), fed once a second from
//! `MediaStats`, and the drain state (started by SIGTERM or `POST /api/drain`, cancelled by
//! `POST /api/drain {"cancel": true}`). What the SIP task needs from both (the measured
//! capacity, draining or not) goes to it over a `watch` channel; the endpoint's gate
//! (`sip::endpoint`, `rtp::admission::Gate`) decides each INVITE and OPTIONS with it. What
//! `/healthz`, the status page and `/metrics` show is read from [`Availability::status`].
//!
//! A drain ends when the last call in progress has ended or its grace period has run out;
//! [`Availability::drained`] resolves then, and the server hangs up what is left and exits.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::CallsConfig;
use crate::rtp::admission::{Admission, Gate, Sample};
use crate::rtp::shell::MediaStats;
use crate::web::backend::{AvailabilityDto, DrainRequest};

/// How often the admission model is fed.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);
/// How often a drain looks whether its calls have ended.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What the SIP task's gate takes from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateInputs {
    /// Measured media capacity, calls.
    pub capacity: usize,
    pub draining: bool,
}

/// A drain in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub started: Instant,
    /// When the calls still up are hung up.
    pub deadline: Instant,
}

/// Figures of the last observation, for readers.
#[derive(Debug, Clone, Copy)]
struct Figures {
    media_capacity: usize,
    budget_use: f64,
    cost_per_packet: Option<Duration>,
    calls: u64,
}

/// Shared between the admission task, the SIP task (through its gate channel), the web API
/// and the server's shutdown.
#[derive(Debug)]
pub struct Availability {
    max_calls: usize,
    default_grace: Duration,
    gate: watch::Sender<GateInputs>,
    drain: watch::Sender<Option<Drain>>,
    model: Mutex<(Admission, Figures)>,
}

impl Availability {
    /// Before any measurement: the model's prior capacity for `threads` media threads.
    pub fn new(calls: &CallsConfig, threads: usize) -> Arc<Availability> {
        let admission = Admission::new(calls.media_budget, threads);
        let figures = Figures {
            media_capacity: admission.capacity(),
            budget_use: 0.0,
            cost_per_packet: None,
            calls: 0,
        };
        let (gate, _) = watch::channel(GateInputs {
            capacity: admission.capacity(),
            draining: false,
        });
        let (drain, _) = watch::channel(None);
        Arc::new(Availability {
            max_calls: calls.max_calls,
            default_grace: calls.drain_grace,
            gate,
            drain,
            model: Mutex::new((admission, figures)),
        })
    }

    /// The SIP task's view: capacity and draining, as they change.
    pub fn gate_inputs(&self) -> watch::Receiver<GateInputs> {
        self.gate.subscribe()
    }

    /// Feeds the model one reading and passes the new capacity to the SIP task.
    pub fn observe(&self, sample: Sample) {
        let capacity = {
            let Ok(mut m) = self.model.lock() else { return };
            let (admission, figures) = &mut *m;
            admission.observe(sample);
            *figures = Figures {
                media_capacity: admission.capacity(),
                budget_use: admission.budget_use(),
                cost_per_packet: admission.cost_per_packet(),
                calls: sample.active_calls,
            };
            admission.capacity()
        };
        self.gate.send_if_modified(|g| {
            let changed = g.capacity != capacity;
            g.capacity = capacity;
            changed
        });
    }

    /// Feeds the model from `stats` once a second until `stop` turns true.
    pub fn spawn_admission(
        self: &Arc<Self>,
        stats: Arc<MediaStats>,
        threads: usize,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(OBSERVE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => this.observe(read_sample(&stats, threads)),
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Starts draining (no new calls; the calls in progress go on for `grace`, by default
    /// `[calls] drain_grace_s`). A drain already running keeps the sooner deadline, so a
    /// second request with `grace` zero means "hang up now".
    pub fn start_drain(&self, now: Instant, grace: Option<Duration>) -> Drain {
        let deadline = now + grace.unwrap_or(self.default_grace);
        let mut result = Drain {
            started: now,
            deadline,
        };
        self.drain.send_modify(|d| {
            let next = match *d {
                Some(running) => Drain {
                    started: running.started,
                    deadline: running.deadline.min(deadline),
                },
                None => result,
            };
            *d = Some(next);
            result = next;
        });
        self.gate
            .send_if_modified(|g| !std::mem::replace(&mut g.draining, true));
        result
    }

    /// Stops a drain: new calls are taken again. False when none was running.
    pub fn cancel_drain(&self) -> bool {
        let was = self.drain.send_replace(None).is_some();
        self.gate
            .send_if_modified(|g| std::mem::replace(&mut g.draining, false));
        was
    }

    /// The drain running now, if any.
    pub fn draining(&self) -> Option<Drain> {
        *self.drain.borrow()
    }

    /// Resolves once a drain is running and either `calls_in_progress()` is zero or its
    /// deadline has passed. A cancelled drain goes back to waiting for the next one.
    pub async fn drained(&self, calls_in_progress: impl Fn() -> usize) {
        let mut drain = self.drain.subscribe();
        loop {
            let Some(d) = *drain.borrow_and_update() else {
                if drain.changed().await.is_err() {
                    // The sender lives in `self`, which outlives this future.
                    std::future::pending::<()>().await;
                }
                continue;
            };
            if calls_in_progress() == 0 || Instant::now() >= d.deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = drain.changed() => {}
            }
        }
    }

    /// Applies a `POST /api/drain` request.
    pub fn request(&self, req: &DrainRequest) -> AvailabilityDto {
        let now = Instant::now();
        if req.cancel {
            if self.cancel_drain() {
                tracing::warn!("drain cancelled over the API: taking new calls again");
            }
        } else {
            let grace = req.grace_s.map(Duration::from_secs);
            let d = self.start_drain(now, grace);
            tracing::warn!(
                seconds_left = d.deadline.saturating_duration_since(now).as_secs(),
                "draining (requested over the API): no new calls"
            );
        }
        self.status(now)
    }

    /// What `/healthz` and the status page show.
    pub fn status(&self, now: Instant) -> AvailabilityDto {
        let figures = match self.model.lock() {
            Ok(m) => m.1,
            Err(poisoned) => poisoned.into_inner().1,
        };
        let drain = self.draining();
        let gate = Gate {
            max_calls: self.max_calls,
            capacity: figures.media_capacity,
            draining: drain.is_some(),
        };
        let refusing = gate.refusal(figures.calls as usize);
        AvailabilityDto {
            accepting_calls: refusing.is_none(),
            refusing: refusing.map(|r| r.label().to_owned()),
            draining: drain.is_some(),
            drain_seconds_left: drain
                .map(|d| d.deadline.saturating_duration_since(now).as_secs_f64()),
            calls: figures.calls,
            capacity: figures.media_capacity.min(self.max_calls) as u64,
            media_capacity: figures.media_capacity as u64,
            max_calls: self.max_calls as u64,
            budget_use: figures.budget_use,
            cost_per_packet_us: figures
                .cost_per_packet
                .map(|c| c.as_nanos() as f64 / 1_000.0),
        }
    }
}

/// One reading of the media side's counters.
fn read_sample(stats: &MediaStats, threads: usize) -> Sample {
    Sample {
        at: Instant::now(),
        busy_ns: stats.busy_ns.load(Ordering::Relaxed),
        packets_sent: stats.packets_sent.load(Ordering::Relaxed),
        packets_late: stats.packets_late.load(Ordering::Relaxed),
        active_calls: stats.active_calls.load(Ordering::Relaxed),
        threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn availability(grace_s: u64) -> Arc<Availability> {
        let calls = CallsConfig {
            drain_grace: Duration::from_secs(grace_s),
            max_calls: 10,
            ..CallsConfig::default()
        };
        Availability::new(&calls, 1)
    }

    #[test]
    fn a_drain_closes_the_gate_keeps_the_sooner_deadline_and_can_be_cancelled() {
        let a = availability(300);
        let gate = a.gate_inputs();
        let t0 = Instant::now();
        let d = a.start_drain(t0, None);
        assert_eq!(d.deadline, t0 + Duration::from_secs(300));
        assert!(gate.borrow().draining);
        assert_eq!(a.status(t0).refusing.as_deref(), Some("draining"));
        // A longer grace does not extend it; "now" shortens it.
        let d = a.start_drain(t0, Some(Duration::from_secs(900)));
        assert_eq!(d.deadline, t0 + Duration::from_secs(300));
        let d = a.start_drain(t0 + Duration::from_secs(1), Some(Duration::ZERO));
        assert_eq!((d.started, d.deadline), (t0, t0 + Duration::from_secs(1)));
        assert!(a.cancel_drain());
        assert!(!gate.borrow().draining);
        assert!(a.status(t0).accepting_calls);
        assert!(!a.cancel_drain());
    }

    #[tokio::test]
    async fn drained_waits_for_the_calls_or_the_deadline() {
        let a = availability(300);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        let waiter = {
            let (a, calls) = (Arc::clone(&a), Arc::clone(&calls));
            tokio::spawn(async move { a.drained(|| calls.load(Ordering::Relaxed)).await })
        };
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!waiter.is_finished(), "no drain yet");
        a.start_drain(Instant::now(), None);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!waiter.is_finished(), "calls still up");
        calls.store(0, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("drained once the calls ended")
            .unwrap();
        // With calls that never end, the deadline does it.
        let a = availability(0);
        a.start_drain(Instant::now(), None);
        tokio::time::timeout(Duration::from_secs(2), a.drained(|| 5))
            .await
            .expect("drained at the deadline");
    }
}
