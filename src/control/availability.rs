//! Whether this box takes new calls: the running side of admission control and of the
//! graceful drain.
//!
//! Owns the admission model (`rtp::admission::Admission`), fed once a second from
//! `MediaStats` and the busy time of the CPUs mohd may run on (`/proc/stat`), and the drain state (started by SIGTERM or `POST /api/drain`, cancelled by
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
use crate::rtp::admission::{Admission, Gate, MachineCpu, Sample};
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
    machine_cpu_use: Option<f64>,
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
        let admission =
            Admission::new(calls.media_budget, threads).with_min_idle_cpu(calls.min_idle_cpu);
        let figures = Figures {
            media_capacity: admission.capacity(),
            budget_use: 0.0,
            machine_cpu_use: None,
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
                machine_cpu_use: admission.machine_use(),
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
        let mut machine = MachineReader::new();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(OBSERVE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        this.observe(read_sample(&stats, threads, machine.read()));
                    }
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
            machine_cpu_use: figures.machine_cpu_use,
            cost_per_packet_us: figures
                .cost_per_packet
                .map(|c| c.as_nanos() as f64 / 1_000.0),
        }
    }
}

/// One reading of the media side's counters.
fn read_sample(stats: &MediaStats, threads: usize, machine: Option<MachineCpu>) -> Sample {
    Sample {
        machine,
        at: Instant::now(),
        busy_ns: stats.busy_ns.load(Ordering::Relaxed),
        packets_sent: stats.packets_sent.load(Ordering::Relaxed),
        packets_late: stats.packets_late.load(Ordering::Relaxed),
        active_calls: stats.active_calls.load(Ordering::Relaxed),
        threads,
    }
}

/// Reads the busy time of the CPUs this process may run on from `/proc/stat`.
struct MachineReader {
    /// The CPUs of the affinity mask; empty: every CPU `/proc/stat` lists.
    cpus: Vec<usize>,
}

impl MachineReader {
    fn new() -> MachineReader {
        use nix::sched::{CpuSet, sched_getaffinity};
        use nix::unistd::Pid;
        let cpus = sched_getaffinity(Pid::from_raw(0))
            .map(|set| {
                (0..CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        MachineReader { cpus }
    }

    /// `None` where `/proc/stat` cannot be read (not Linux, a sandbox): admission then goes
    /// by the media threads alone.
    fn read(&mut self) -> Option<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        busy_of(&text, &self.cpus)
    }
}

/// `/proc/stat` counts in USER_HZ ticks, 100 a second on every architecture Linux reports
/// them for (the kernel converts; it is part of the ABI).
const NS_PER_TICK: u64 = 10_000_000;

/// The busy time of `cpus` (all listed when empty) from `/proc/stat`'s `cpuN` lines: user,
/// system, irq, softirq and steal. Not idle or iowait, and not nice: niced work (a render,
/// a fuzzer) yields to everything else and never delays a call.
fn busy_of(proc_stat: &str, cpus: &[usize]) -> Option<MachineCpu> {
    let mut busy_ticks = 0u64;
    let mut cores = 0;
    for line in proc_stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.is_empty() && !cpus.contains(&cpu) {
            continue;
        }
        let ticks: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal …
        let [user, _nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
            return None;
        };
        busy_ticks += user + system + irq + softirq + steal;
        cores += 1;
    }
    (cores > 0).then(|| MachineCpu {
        busy_ns: busy_ticks.saturating_mul(NS_PER_TICK),
        cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_the_busy_time_of_the_cpus_we_may_use() {
        let stat = "cpu  300 50 100 9000 20 5 5 0 0 0\n\
                    cpu0 100 40 50 4500 10 2 3 0 0 0\n\
                    cpu1 200 10 50 4500 10 3 2 0 0 0\n\
                    intr 12345 0 0\nctxt 999\n";
        // All: (100+50+2+3) + (200+50+3+2) ticks, nice and idle left out.
        assert_eq!(
            busy_of(stat, &[]),
            Some(MachineCpu {
                busy_ns: 410 * NS_PER_TICK,
                cores: 2
            })
        );
        // `taskset -c 1`: CPU 1 only.
        assert_eq!(
            busy_of(stat, &[1]),
            Some(MachineCpu {
                busy_ns: 255 * NS_PER_TICK,
                cores: 1
            })
        );
        assert_eq!(busy_of("cpu0 1 2\n", &[]), None, "too few fields");
        assert_eq!(busy_of("", &[]), None);
        // This machine's own file reads.
        let mine = MachineReader::new().read().expect("/proc/stat");
        assert!(mine.cores >= 1 && mine.busy_ns > 0, "{mine:?}");
    }

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
