//! What `/metrics` shows: every family's name, type, labels and HELP text, grouped by the
//! part of the server it describes, and where each value is read from at scrape time.
//! Dashboards and alerts query these names: change one only with a release note.
//!
//! Each group is read from the server handle into plain values first (one lock at a time,
//! none held while encoding), then written as a [`Collector`] of the per-scrape registry.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{HistogramSnapshot, counter, counters, encode, gauge, gauges, histogram};
use crate::control::{Control, RenderState};
use crate::library::follow::{REASONS, SyncStatus};
use crate::lineout::LineoutState;
use crate::rtp::admission::Refusal;

/// The `/metrics` body for this server, read now.
pub fn render(c: &Control) -> String {
    encode([
        Box::new(CallFamilies::read(c)) as Box<dyn Collector>,
        Box::new(SipFamilies::read(c)),
        Box::new(AvailabilityFamilies::read(c)),
        Box::new(RtpFamilies::read(c)),
        Box::new(ChannelFamilies::read(c)),
        Box::new(LineoutFamilies::read(c)),
        Box::new(ProcessFamilies::read(c)),
        Box::new(LibrarySyncFamilies::read(c)),
    ])
}

fn one_if(b: bool) -> u64 {
    u64::from(b)
}

/// Calls: in progress, by result, and their set-up time.
#[derive(Debug)]
struct CallFamilies {
    active: u64,
    answered: u64,
    rejected_no_port: u64,
    ended: u64,
    setup_seconds: HistogramSnapshot,
}

impl CallFamilies {
    fn read(c: &Control) -> Self {
        let calls = &c.call_metrics;
        CallFamilies {
            // The media thread's calls include the multicast streams, which are not callers.
            active: c
                .media_stats
                .active_calls
                .load(Ordering::Relaxed)
                .saturating_sub(c.media_stats.multicast_streams.load(Ordering::Relaxed)),
            answered: calls.answered.load(Ordering::Relaxed),
            rejected_no_port: calls.rejected_no_port.load(Ordering::Relaxed),
            ended: calls.ended.load(Ordering::Relaxed),
            setup_seconds: calls.setup_seconds.snapshot(),
        }
    }
}

impl Collector for CallFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut enc,
            "mohd_calls_active",
            "Calls receiving music now.",
            self.active,
        )?;
        counters(
            &mut enc,
            "mohd_calls_total",
            "Calls by result: answered (media started), rejected_no_port (503), ended.",
            [
                ([("result", "answered")], self.answered),
                ([("result", "rejected_no_port")], self.rejected_no_port),
                ([("result", "ended")], self.ended),
            ],
        )?;
        histogram(
            &mut enc,
            "mohd_call_setup_seconds",
            "INVITE received to ACK received.",
            &self.setup_seconds,
        )
    }
}

/// The SIP endpoint's refusals and absorbed retransmissions, and the registrations.
#[derive(Debug)]
struct SipFamilies {
    stats: crate::sip::endpoint::EndpointStats,
    /// (address of record, registrar, registered).
    registrations: Vec<(String, String, bool)>,
}

impl SipFamilies {
    fn read(c: &Control) -> Self {
        let sip = c.sip_status.lock().map(|s| s.clone()).unwrap_or_default();
        SipFamilies {
            stats: sip.stats,
            registrations: sip
                .registrations
                .into_iter()
                .map(|r| (r.aor, r.registrar, r.state == "registered"))
                .collect(),
        }
    }
}

impl Collector for SipFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        counters(
            &mut enc,
            "mohd_sip_requests_refused_total",
            "SIP requests refused: unauthorised (401), denied by [access], rate limited, \
             banned for guessing passwords, scanners by User-Agent, TLS handshakes refused for \
             the client certificate.",
            [
                ([("reason", "unauthorised")], s.unauthorised),
                ([("reason", "denied")], s.denied),
                ([("reason", "rate_limited")], s.rate_limited),
                ([("reason", "banned")], s.banned),
                ([("reason", "scanner")], s.scanners),
                ([("reason", "client_cert")], s.client_certs_refused),
            ],
        )?;
        counters(
            &mut enc,
            "mohd_sip_dropped_total",
            "SIP messages dropped unanswered: table_full (new requests while every \
             transaction is still at work: a flood), unmatched (ACKs and responses that match \
             no transaction or dialog).",
            [
                ([("reason", "table_full")], s.table_full),
                (
                    [("reason", "unmatched")],
                    s.datagrams_dropped.saturating_sub(s.table_full),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "mohd_sip_bad_requests_total",
            "SIP messages that did not parse or were refused with 400.",
            s.bad_requests,
        )?;
        counter(
            &mut enc,
            "mohd_sip_retransmissions_absorbed_total",
            "Retransmitted requests answered from the transaction.",
            s.retransmissions_absorbed,
        )?;
        gauges(
            &mut enc,
            "mohd_registration_up",
            "1 when the registration is accepted by its registrar.",
            self.registrations.iter().map(|(aor, registrar, up)| {
                (
                    [("aor", aor.as_str()), ("registrar", registrar.as_str())],
                    one_if(*up),
                )
            }),
        )
    }
}

/// Whether new calls are taken: admission control's capacity and budget, the drain, and
/// the INVITEs refused by each.
#[derive(Debug)]
struct AvailabilityFamilies {
    refused: [(Refusal, u64); 3],
    capacity: u64,
    media_capacity: u64,
    budget_use: f64,
    machine_cpu_use: Option<f64>,
    draining: bool,
}

impl AvailabilityFamilies {
    fn read(c: &Control) -> Self {
        let stats = c.sip_status.lock().map(|s| s.stats).unwrap_or_default();
        let a = c.availability.status(std::time::Instant::now());
        AvailabilityFamilies {
            refused: Refusal::ALL.map(|r| (r, stats.refused(r))),
            capacity: a.capacity,
            media_capacity: a.media_capacity,
            budget_use: a.budget_use,
            machine_cpu_use: a.machine_cpu_use,
            draining: a.draining,
        }
    }
}

impl Collector for AvailabilityFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        counters(
            &mut enc,
            "mohd_calls_refused_total",
            "New INVITEs refused with 503: capacity (the media budget is full), max_calls, \
             draining.",
            self.refused.map(|(r, n)| ([("reason", r.label())], n)),
        )?;
        gauge(
            &mut enc,
            "mohd_calls_capacity",
            "New calls are taken while fewer than this many are up: the lesser of the \
             measured media capacity and max_calls.",
            self.capacity,
        )?;
        gauge(
            &mut enc,
            "mohd_media_capacity_calls",
            "Calls the media threads can carry within [calls] media_budget, measured.",
            self.media_capacity,
        )?;
        gauge(
            &mut enc,
            "mohd_media_budget_use_ratio",
            "The media threads' work time in the last second over their budget (1: full).",
            self.budget_use,
        )?;
        if let Some(machine) = self.machine_cpu_use {
            gauge(
                &mut enc,
                "mohd_machine_cpu_use_ratio",
                "Share of the CPUs mohd may run on busy in the last second, every process \
                 counted (niced work left out); [calls] min_idle_cpu keeps 1 minus it.",
                machine,
            )?;
        }
        gauge(
            &mut enc,
            "mohd_draining",
            "1 while draining (SIGTERM, mohd drain): no new calls, calls in progress go on.",
            one_if(self.draining),
        )
    }
}

/// The media threads: packets, send lateness, drift, skipped frames, balancing.
#[derive(Debug)]
struct RtpFamilies {
    packets_sent: u64,
    packets_late: u64,
    send_errors: u64,
    lateness: HistogramSnapshot,
    max_drift_seconds: f64,
    multicast_streams: u64,
    srtp_rejected_authentication: u64,
    srtp_rejected_replay: u64,
    frames_skipped: u64,
    calls_moved: u64,
    forced_rests: u64,
    /// Per media thread (its index): its work over its last second, fraction of a core.
    thread_load: Vec<(String, f64)>,
}

impl RtpFamilies {
    fn read(c: &Control) -> Self {
        let media = &c.media_stats;
        let late = media.lateness.snapshot();
        RtpFamilies {
            packets_sent: media.packets_sent.load(Ordering::Relaxed),
            packets_late: media.packets_late.load(Ordering::Relaxed),
            send_errors: media.send_errors.load(Ordering::Relaxed),
            lateness: HistogramSnapshot {
                bounds: late.bounds_s.to_vec(),
                cumulative: late.cumulative.to_vec(),
                sum: late.sum_s,
            },
            max_drift_seconds: media.max_abs_drift_ns.load(Ordering::Relaxed) as f64 / 1e9,
            multicast_streams: media.multicast_streams.load(Ordering::Relaxed),
            srtp_rejected_authentication: media
                .srtp_rejected_authentication
                .load(Ordering::Relaxed),
            srtp_rejected_replay: media.srtp_rejected_replay.load(Ordering::Relaxed),
            frames_skipped: media.frames_skipped.load(Ordering::Relaxed),
            calls_moved: media.calls_moved.load(Ordering::Relaxed),
            forced_rests: media.forced_rests.load(Ordering::Relaxed),
            thread_load: media
                .threads()
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let ns = t.load_ns_per_s.load(Ordering::Relaxed);
                    (i.to_string(), ns as f64 / 1e9)
                })
                .collect(),
        }
    }
}

impl Collector for RtpFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        counter(
            &mut enc,
            "mohd_rtp_packets_sent_total",
            "RTP packets sent.",
            self.packets_sent,
        )?;
        counter(
            &mut enc,
            "mohd_rtp_packets_late_total",
            "RTP packets sent more than 5 ms after their deadline.",
            self.packets_late,
        )?;
        counter(
            &mut enc,
            "mohd_rtp_send_errors_total",
            "RTP/RTCP sends that failed.",
            self.send_errors,
        )?;
        histogram(
            &mut enc,
            "mohd_rtp_send_lateness_seconds",
            "How long after its deadline each RTP packet left.",
            &self.lateness,
        )?;
        gauge(
            &mut enc,
            "mohd_rtp_max_drift_seconds",
            "Largest drift of any call's RTP timestamps from the monotonic clock since start.",
            self.max_drift_seconds,
        )?;
        gauge(
            &mut enc,
            "mohd_rtp_multicast_streams",
            "Streams sent to multicast groups (one per channel and codec); not counted as calls.",
            self.multicast_streams,
        )?;
        counters(
            &mut enc,
            "mohd_srtp_rejected_packets_total",
            "SRTP/SRTCP packets from peers dropped, by reason: authentication (failed or not SRTP), replay.",
            [
                (
                    [("reason", "authentication")],
                    self.srtp_rejected_authentication,
                ),
                ([("reason", "replay")], self.srtp_rejected_replay),
            ],
        )?;
        counter(
            &mut enc,
            "mohd_rtp_frames_skipped_total",
            "RTP frames not sent because their call skipped ahead after its media thread fell behind.",
            self.frames_skipped,
        )?;
        counter(
            &mut enc,
            "mohd_media_calls_moved_total",
            "Calls moved between media threads to balance their work.",
            self.calls_moved,
        )?;
        counter(
            &mut enc,
            "mohd_media_forced_rests_total",
            "Rests forced on a media thread that worked 50 ms without blocking (out of time).",
            self.forced_rests,
        )?;
        gauges(
            &mut enc,
            "mohd_media_thread_load_ratio",
            "Each media thread's work over its last second, as a fraction of one core.",
            self.thread_load
                .iter()
                .map(|(thread, load)| ([("thread", thread.as_str())], *load)),
        )
    }
}

/// One channel's loop as `/metrics` shows it.
#[derive(Debug)]
struct ChannelLoop {
    name: String,
    tracks: u64,
    skipped: u64,
    loop_seconds: f64,
    playable: bool,
}

/// The channels' loops, their renders, and re-renders done.
#[derive(Debug)]
struct ChannelFamilies {
    loops: Vec<ChannelLoop>,
    /// (channel, its full loop rendered and live), by channel name.
    render_ready: Vec<(String, bool)>,
    renders_done: u64,
}

impl ChannelFamilies {
    fn read(c: &Control) -> Self {
        let loops = c
            .renders
            .read()
            .map(|renders| {
                renders
                    .values()
                    .map(|r| ChannelLoop {
                        name: r.name.clone(),
                        tracks: r.tracks.len() as u64,
                        skipped: r.skipped.len() as u64,
                        loop_seconds: r.len_samples() as f64 / 8000.0,
                        playable: r.playable,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let render_ready = c
            .render_state
            .lock()
            .map(|states| {
                states
                    .iter()
                    .map(|(name, s)| (name.clone(), *s == RenderState::Ready))
                    .collect()
            })
            .unwrap_or_default();
        ChannelFamilies {
            loops,
            render_ready,
            renders_done: c.renders_done(),
        }
    }

    fn per_loop<'a, V>(
        &'a self,
        value: impl Fn(&ChannelLoop) -> V + 'a,
    ) -> impl Iterator<Item = ([(&'static str, &'a str); 1], V)> + 'a {
        self.loops
            .iter()
            .map(move |l| ([("channel", l.name.as_str())], value(l)))
    }
}

impl Collector for ChannelFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        gauges(
            &mut enc,
            "mohd_channel_tracks",
            "Tracks in the channel's loop.",
            self.per_loop(|l| l.tracks),
        )?;
        gauges(
            &mut enc,
            "mohd_channel_skipped_tracks",
            "Files of the channel that could not be played.",
            self.per_loop(|l| l.skipped),
        )?;
        gauges(
            &mut enc,
            "mohd_channel_loop_seconds",
            "Length of the channel's loop.",
            self.per_loop(|l| l.loop_seconds),
        )?;
        gauges(
            &mut enc,
            "mohd_channel_playable",
            "1 when the channel has playable music.",
            self.per_loop(|l| one_if(l.playable)),
        )?;
        gauges(
            &mut enc,
            "mohd_channel_render_ready",
            "1 when the channel's full loop is rendered and live; 0 while it renders (the \
             previous loop keeps playing) or after a failure.",
            self.render_ready
                .iter()
                .map(|(name, ready)| ([("channel", name.as_str())], one_if(*ready))),
        )?;
        counter(
            &mut enc,
            "mohd_renders_total",
            "Re-renders completed after library or settings changes.",
            self.renders_done,
        )
    }
}

/// The sound card's line-out, when one is configured.
#[derive(Debug)]
struct LineoutFamilies {
    /// (underruns, frames played, playing); None without a line-out.
    card: Option<(u64, u64, bool)>,
}

impl LineoutFamilies {
    fn read(c: &Control) -> Self {
        let card = c.lineout.lock().ok().and_then(|l| {
            l.as_ref().map(|l| {
                let s = l.stats();
                let playing = matches!(s.state, LineoutState::Playing { .. });
                (s.underruns, s.frames_played, playing)
            })
        });
        LineoutFamilies { card }
    }
}

impl Collector for LineoutFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some((underruns, frames, playing)) = self.card else {
            return Ok(());
        };
        counter(
            &mut enc,
            "mohd_lineout_underruns_total",
            "Times the sound card found the ring short.",
            underruns,
        )?;
        counter(
            &mut enc,
            "mohd_lineout_frames_total",
            "Frames the sound card has played.",
            frames,
        )?;
        gauge(
            &mut enc,
            "mohd_lineout_playing",
            "1 when the line-out is playing.",
            one_if(playing),
        )
    }
}

/// The process: health, uptime, start time, version.
#[derive(Debug)]
struct ProcessFamilies {
    healthy: bool,
    uptime_seconds: f64,
    start_time_seconds: f64,
}

impl ProcessFamilies {
    fn read(c: &Control) -> Self {
        let uptime_seconds = c.started.elapsed().as_secs_f64();
        ProcessFamilies {
            healthy: c.health_reasons().is_empty(),
            uptime_seconds,
            start_time_seconds: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64() - uptime_seconds)
                .unwrap_or(0.0),
        }
    }
}

impl Collector for ProcessFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut enc,
            "mohd_healthy",
            "1 when audio is leaving on time with music (see /healthz for reasons).",
            one_if(self.healthy),
        )?;
        gauge(
            &mut enc,
            "mohd_uptime_seconds",
            "Seconds since mohd started.",
            self.uptime_seconds,
        )?;
        gauge(
            &mut enc,
            "mohd_start_time_seconds",
            "Unix time mohd started.",
            self.start_time_seconds,
        )?;
        gauges(
            &mut enc,
            "mohd_build_info",
            "Build information (always 1).",
            [([("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )
    }
}

/// A follower's library sync (`[library] follow`); nothing on a box with its own library.
#[derive(Debug)]
struct LibrarySyncFamilies {
    sync: Option<SyncStatus>,
}

impl LibrarySyncFamilies {
    fn read(c: &Control) -> Self {
        LibrarySyncFamilies {
            sync: c.library_sync.as_ref().map(|s| s.snapshot()),
        }
    }
}

impl Collector for LibrarySyncFamilies {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(s) = &self.sync else {
            return Ok(());
        };
        gauge(
            &mut enc,
            "mohd_library_sync_last_success_timestamp_seconds",
            "Unix time of the last poll that found the followed library current or applied a new one (0: none yet).",
            s.last_success_unix.unwrap_or(0.0),
        )?;
        // Every reason from the start, at 0, so rate() and alerts see the first failure.
        counters(
            &mut enc,
            "mohd_library_sync_failures_total",
            "Library syncs that failed, by reason; the library in use was kept.",
            REASONS
                .iter()
                .map(|r| ([("reason", *r)], s.failures.get(r).copied().unwrap_or(0))),
        )?;
        gauge(
            &mut enc,
            "mohd_library_manifest_version",
            "Version of the followed library in use (0: none synced yet).",
            s.manifest_version.unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::endpoint::EndpointStats;

    fn histogram_of(bounds: &[f64], cumulative: &[u64], sum: f64) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: bounds.to_vec(),
            cumulative: cumulative.to_vec(),
            sum,
        }
    }

    fn every_group() -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(CallFamilies {
                active: 2,
                answered: 3,
                rejected_no_port: 1,
                ended: 1,
                setup_seconds: histogram_of(&[0.005, 1.0], &[1, 2, 3], 7.5),
            }),
            Box::new(SipFamilies {
                stats: EndpointStats {
                    unauthorised: 4,
                    datagrams_dropped: 9,
                    table_full: 2,
                    bad_requests: 5,
                    retransmissions_absorbed: 6,
                    ..EndpointStats::default()
                },
                registrations: vec![("sip:moh@pbx".into(), "pbx:5060".into(), true)],
            }),
            Box::new(AvailabilityFamilies {
                refused: [
                    (Refusal::Capacity, 3),
                    (Refusal::MaxCalls, 2),
                    (Refusal::Draining, 1),
                ],
                capacity: 1_400,
                media_capacity: 1_400,
                budget_use: 0.25,
                machine_cpu_use: Some(0.5),
                draining: false,
            }),
            Box::new(RtpFamilies {
                packets_sent: 100,
                packets_late: 1,
                send_errors: 0,
                lateness: histogram_of(&[0.0005, 0.1], &[90, 100, 100], 0.25),
                max_drift_seconds: 0.5,
                multicast_streams: 2,
                srtp_rejected_authentication: 2,
                srtp_rejected_replay: 1,
                frames_skipped: 9,
                calls_moved: 4,
                forced_rests: 0,
                thread_load: vec![("0".into(), 0.25), ("1".into(), 0.125)],
            }),
            Box::new(ChannelFamilies {
                loops: vec![ChannelLoop {
                    name: "default".into(),
                    tracks: 2,
                    skipped: 1,
                    loop_seconds: 10.5,
                    playable: true,
                }],
                render_ready: vec![("default".into(), false)],
                renders_done: 7,
            }),
            Box::new(LineoutFamilies {
                card: Some((1, 48_000, true)),
            }),
            Box::new(ProcessFamilies {
                healthy: true,
                uptime_seconds: 1.5,
                start_time_seconds: 1_700_000_000.25,
            }),
            Box::new(LibrarySyncFamilies {
                sync: Some(SyncStatus {
                    url: "https://pub/manifest.json".into(),
                    manifest_version: Some(12),
                    last_success_unix: Some(1_700_000_100.5),
                    failing: None,
                    failures: [("file_sha256", 2)].into_iter().collect(),
                }),
            }),
        ]
    }

    /// The contract with dashboards: every family's name, type, labels and HELP, as mohd has
    /// exposed them since the metrics were written by hand (`families.golden.txt`).
    #[test]
    fn the_document_keeps_every_name_type_label_and_help() {
        let want =
            include_str!("families.golden.txt").replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(encode(every_group()), want);
    }

    #[test]
    fn families_without_series_are_left_out() {
        let text = encode([
            Box::new(SipFamilies {
                stats: EndpointStats::default(),
                registrations: vec![],
            }) as Box<dyn Collector>,
            Box::new(ChannelFamilies {
                loops: vec![],
                render_ready: vec![],
                renders_done: 0,
            }),
            Box::new(LineoutFamilies { card: None }),
        ]);
        assert!(!text.contains("mohd_registration_up"), "{text}");
        assert!(!text.contains("mohd_channel_"), "{text}");
        assert!(!text.contains("mohd_lineout_"), "{text}");
        assert!(text.contains("mohd_renders_total 0\n"), "{text}");
    }
}
