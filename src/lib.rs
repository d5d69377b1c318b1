//! mohd: a music-on-hold server.
//!
//! A PBX sends an INVITE when it puts a caller on hold; mohd answers and streams a looping,
//! loudness-normalised playlist as RTP (G.711, G.722 or Opus; SRTP when asked). Audio is
//! rendered once per channel at each codec's rate and encoded once per codec, and
//! every caller on a channel is served from that one render on one monotonic clock.
//!
//! # Layout
//!
//! Modules marked **(pure)** do no I/O, read no OS clock and use no thread-local RNG: time
//! comes in as `now: Instant`, randomness as a seed, so tests drive them with a virtual clock.
//!
//! - `server`: the entry point, in mini-redis's shape: `Listeners::bind` binds every SIP socket
//!   and the web listener first (their addresses readable), `start`/`run(config, listeners, env,
//!   shutdown)` serve on them; `Environment` carries what the process supplies (the probe
//!   executable, the systemd watchdog, the media-stall test hook). Tests run it in process.
//!   Otherwise wiring only: state folder, channels, media threads, call router, SIP task, web,
//!   ordered shutdown.
//! - `config`: TOML config into the types the server uses (no copy-back); errors name file, line
//!   and key. `config::doc`: spans, key paths and the one range-checked getter for integers and
//!   for floats; `config::raw`: the serde shape; one module per table (`sip`, `registration`,
//!   `rtp`, `calls`, `access`, `channels`, `dialplan`, `lineout`, `state`, `web`) and `paths`.
//! - `clock` **(pure)**: the media clock (frame n → epoch + n × 10 ms) and the wrapping RTP
//!   counters `Seq16` / `Ts32`.
//! - `codec` **(pure)**: G.711 μ-law and A-law, exact to ITU-T G.711 / G.191; `codec::g722`:
//!   G.722 at 64 kbit/s (encoder and decoder state), bit-exact to SpanDSP (`tests/data/g722`).
//!   `codec::opus`: Opus through Debian's libopus (audiopus): the music encoder (20 ms, no DTX),
//!   a decoder with loss concealment, and the RFC 7587 fmtp read tolerantly and answered.
//! - `audio` **(pure)**: decode (symphonia), resample (rubato), loudness (ebur128) and limiter,
//!   and the built-in demo melody.
//! - `channel`: renders a playlist once into a seamless loop, encoded per codec (render once,
//!   serve many). `channel::programme`: what each channel plays (config music, the library's
//!   playlist for library channels, the admin's loudness) and the one way to obtain a render or
//!   a prepared track, from the cache or fresh; used by start-up, library changes and the
//!   line-out. On a cold start each channel's head (its first tracks, `render_head`) plays
//!   until the full loop joins where they are the same samples (`Head::joinable`).
//!   `channel::cache`: renders persisted in the state folder, keyed by the inputs'
//!   size and mtime, so a restart serves at once (the first 30 s of each loop are read first).
//!   `channel::encoded`: G.722 and Opus loops rendered at 16/48 kHz, encoded once with
//!   pre-roll, cut into packets by tick; `CodecPlan` (the enabled codecs and Opus bitrate).
//!   `channel::compose`: a pass's `Composition` (the one render input: music in play order,
//!   announcements, join to the previous pass) and the shuffle; `channel::segment`: greeting,
//!   entry, fade-out and fade-in segments, short renders a call plays once.
//! - `channel::spec` **(pure)**: the content model every part shares: `ChannelSpec` (origin,
//!   mode shared/from-start, loudness, main and named programmes with playlist, shuffle and
//!   announcements, greeting, schedule, switch rule), its validation and its resolution against
//!   the library. `channel::status` **(pure)**: what plays now and next on a channel (track or
//!   announcement, next track and when, next schedule change).
//! - `channel::store`: managed channels and their routes in `channels.json` (atomic writes,
//!   names unique across config and managed, routed-to deletes refused, deleted tracks removed).
//! - `sip::msg` **(pure)**: SIP message parser and printer.
//! - `sip::sdp` **(pure)**: SDP parse, the music-on-hold offer/answer (codec choice by the
//!   offer's order or `[rtp] codecs`', Opus fmtp, SDES-keyed SRTP per `[rtp] srtp`, 488 with a
//!   Warning), and `MediaParams` (codec, payload type, ptime, remote RTP/RTCP, direction, the
//!   peer's Opus request, SRTP keys): a call's media, built once from the negotiation and
//!   carried unchanged to the fan-out.
//! - `sip::timer` **(pure)**: RFC 3261 T1/T2/T4, the one retransmission schedule (`Retransmit`:
//!   Timers A/B, E/F, G/H, the 2xx) and `TimerTable` for a call's one-shot timers.
//! - `sip::client_txn` **(pure)**: the one client transaction (§17.1), used by the endpoint's
//!   BYE and session refresh, by REGISTER and by `mohd call`.
//! - `sip::sdes` **(pure)**: RFC 4568 `a=crypto` lines: strict parse, the offer's first usable
//!   line, our answer line, keys from a caller-given RNG.
//! - `sip::endpoint` **(pure)**: RFC 3261 UAS transactions and dialogs, sans-IO.
//! - `sip::digest` **(pure)**: digest authentication (RFC 8760/7616/2617): answering
//!   challenges, and HMAC-stamped nonces, replay (`nc`) checks and verification for challenging
//!   INVITEs.
//! - `sip::guard` **(pure)**: digest guessing limits (failures per source and per user name,
//!   bans that double up to a cap, bounded tables), the `mohd security:` log lines and the gate
//!   that summarises repeated refusals per source.
//! - `sip::register` **(pure)**: the REGISTER client (RFC 3261 §10): challenges, refresh,
//!   back-off; the shell resolves the registrar and carries its messages.
//! - `sip::transport` **(pure)**: SIP over streams: framing by Content-Length, CRLF
//!   keep-alives, size caps (RFC 3261 §18.3, RFC 5626).
//! - `sip::shell`: tokio UDP sockets, TCP and TLS (rustls) listeners and connections around the
//!   endpoint, and the registrations driven from the same task and sockets.
//! - `tls`: TLS server configurations from PEM files (SIP and web), mutual TLS for the PBX
//!   (client CA, pinned names), and reloading them for new connections (SIGHUP, the API).
//! - `dialplan` **(pure)**: request → channel.
//! - `schedule` **(pure)**: a channel's schedule in an IANA zone (jiff): weekly ranges, dated
//!   exceptions, a default; the programme at an instant and when it next changes (DST gaps and
//!   folds defined); `WallWatch` (wall-clock steps) and `tick_for` (wall instant → media tick).
//! - `rtp::router`: SIP call events → the call's RTP address (`[rtp] port_model`: a port pair
//!   of its own, or its media thread's shared pair, the thread placed at once), or 503, and the
//!   call's `MediaParams` and `Playback` (from the channel's `CallPlan` in `LivePlans`) to the
//!   media thread; frees what the call held at the end.
//! - `rtp::packet` **(pure)**: RTP and RTCP packets written into caller-owned buffers.
//! - `rtp::io`: batched UDP I/O for the media threads (`sendmmsg`/`recvmmsg` into
//!   preallocated slots, ICMP errors by destination from the error queue) and `Demux`, inbound
//!   packet on a shared port → call (source address, learned SSRC, latching); the socket model.
//! - `rtp::qos`: the DSCP (EF by default) of the sockets media leaves from.
//! - `rtp::admission` **(pure)**: admission control: the media threads' measured cost per
//!   packet and packets per call → a capacity within `[calls] media_budget` (a prior before
//!   measuring, held while packets are late), bounded with `[calls] min_idle_cpu` by the
//!   machine's own busy time per call, and the one `Gate` (draining, `max_calls`, capacity)
//!   every INVITE and OPTIONS goes through.
//! - `rtp::srtp` **(pure)**: SRTP/SRTCP (RFC 3711; RFC 7714 GCM) on RustCrypto: suites, key
//!   material, per-call sender and receiver contexts that protect in place (ROC, replay window).
//! - `rtp::stats` **(pure)**: RFC 3550 receiver statistics (loss, jitter, reordering).
//! - `rtp::fanout` **(pure)**: per-call RTP header state at each codec's clock (Opus 20 ms
//!   frames on even ticks), pacing deadlines, RTCP sender reports, codec switches that keep SSRC
//!   and sequence and rebase the timestamp (RFC 7160 §4.3), exact drift accounting, and each
//!   SRTP call's protection on top of the shared payload. `rtp::fanout::timeline` **(pure)**:
//!   each channel's pieces on the media clock (its render from tick 0, queued passes,
//!   fade-outs, segments) and how each call hears them (`Playback`: shared, from-start at a
//!   fixed delay, greeting then a join), chosen per packet from integers.
//!   `rtp::fanout::calendar` **(pure)**: the RTP deadlines as per-tick runs of calls (no heap
//!   per packet); `rtp::fanout::table` **(pure)**: calls in reusable slots, the id index.
//!   Each call carries the shell's route (`Fanout::set_route`), given back on its packets.
//! - `rtp::shell`: the media threads (`[rtp] media_threads`, one per core by default), each
//!   with its own fan-out and share of the calls on the one clock: sleeps until the next
//!   deadline, sends what its fan-out says, skips ahead when behind and rests by rule under
//!   SCHED_FIFO; `MediaSender` routes commands (new calls to the least-loaded thread,
//!   `Update`/`Remove` to the owner, channel changes to all); calls move between threads to
//!   rebalance, between packets, with their whole RTP state (shared-port calls stay: their
//!   port is their thread's). A thread's shared ports send a turn's packets in `sendmmsg`
//!   batches and read theirs with `recvmmsg` through `Demux`. Counters are per thread, flushed
//!   once per turn into `MediaStats`; the watchdog is petted only while every thread is alive;
//!   call snapshots, the lateness histogram and the drift are published there.
//! - `rtp::balance` **(pure)**: which media thread takes a new call (measured work, then call
//!   count) and when the heaviest moves calls to the lightest (a margin held for a while).
//! - `lineout`: the sound card's line-out: a decoder thread prepares the next track at the
//!   card's rate, a feeder keeps a lock-free ring a second ahead, cpal's callback only copies;
//!   the ALSA device is retried while missing. `mohd devices`.
//! - `library`: the uploaded music in the state folder: crash-safe uploads (temp file, decode in
//!   a child process with limits, fsync, rename), playlist order, enabled flags, settings.
//!   `library::manifest`: the fleet manifest (tracks by name, size and sha256, managed
//!   channels and routes, shared settings, a version), checked on read; `mohd library export`.
//!   `library::follow`: `[library] follow`: jittered `If-None-Match` polls (reqwest, rustls),
//!   verified downloads, the new library built beside the old and switched by one atomic
//!   write; sync state for `/healthz`, the status page and `/metrics`.
//! - `fsutil`: the one atomic-write routine every persistent file goes through.
//! - `table` **(pure)**: `give_back_room`: a hash table (or, `give_back_queue_room`, a queue)
//!   that grew for a burst of calls gives the room back once a quarter full (the endpoint's
//!   transactions, answered-transaction queue, calls, dialogs and per-source buckets; the
//!   fan-out's calls), so memory after churn does not keep its peak.
//! - `control::availability`: the running side of admission control (fed once a second from
//!   `MediaStats` and `/proc/stat`) and of the graceful drain (SIGTERM, `POST /api/drain`); what `/healthz` and
//!   `/metrics` show. `control::drain`: `mohd drain`, the API's client.
//! - `control`: the server handle the web sees: status, health, library operations followed by
//!   a re-plan. `control::conductor`: what every effective channel (config file + managed)
//!   plays now and next: first passes, re-plans on library/channel changes, shuffled passes
//!   rendered ahead at nice 19 and queued at the pass boundary, schedule switches, call plans
//!   (mode, greeting) for the router, the dialplan pushed to the SIP task, now/next status;
//!   `complete_cold_start`/`join_behind`: silent placeholders, heads, then full loops joined at
//!   the same position (queued at the head's position if the head has looped).
//!   `control::admin`: the web's channel admin (`ChannelAdmin` for `Control`): the API's
//!   channel shapes to and from `ChannelSpec`, library ids checked, changes through
//!   `channel::store`, then a re-plan.
//! - `web`: axum admin page (assets in the binary), REST API with its OpenAPI document,
//!   `/metrics`, `/healthz`; `web::auth`: argon2 password, hashed API tokens, sessions, CSRF,
//!   login rate limit.
//! - `metrics`: the lock-free `Histogram` and the writers that encode our counters, gauges and
//!   histograms with prometheus-client, one registry per scrape. `metrics::families`: every
//!   `/metrics` family (name, type, labels, HELP) in six groups read at scrape time, pinned by
//!   `families.golden.txt`.
//! - `notify`: systemd READY/STOPPING/WATCHDOG notifications.
//! - `check`: `mohd check`: validates config and dialplan, decodes every music file.
//! - `call`: the `mohd call` test softphone: a `Call` (UAC requests and what answers mean, on
//!   `sip::msg`, `sip::sdp` and `sip::client_txn`, no socket, no clock) driven step by step;
//!   decodes every codec, records at the codec's rate, `--srtp` offers SDES keys and decrypts.
//! - `load`: `mohd load`, the softphone as a load generator: N calls' SIP over one UDP socket
//!   at a rate (`load::calls`, driving `call::Call`), a receiver that keeps up with thousands of
//!   streams (`load::receiver`: a few sockets demultiplexed by source and SSRC, `recvmmsg`,
//!   kernel receive timestamps), and `load::stats` **(pure)**: lateness per stream against
//!   its own RTP clock, loss, reordering, duplicates, timestamp gaps, setup times. Refusals
//!   are counted with whether they carried Retry-After; `--vanish-after` plays callers that go
//!   silent with their sockets open (what `benches/stop.sh` stops the server against).
//!
//! Tests: unit tests sit beside their code; `tests/` holds the integration tests, which start
//! the server in process through `server::run` (`tests/common`); only the CLI, packaging,
//! signal/watchdog, crash (SIGKILL) and line-out (process-wide ALSA config) tests spawn the
//! binary.
//!
//! ## Where this departs from `DESIGN.md`
//!
//! - **SIP parsing is ours** (`sip::msg`), not rsip's: rsip is unmaintained since 2022 and its
//!   successor (rsipstack's `sip` module) does not build without rsipstack's tokio platform
//!   and transport layer, which would pull I/O into the pure core. The parser is small, strict
//!   where RFC 4475 wants it, and fuzzed.
//! - **Transactions and dialogs live in one `sip::endpoint`** rather than `txn.rs` +
//!   `dialog.rs`: for a UAS they share one piece of state (the call: its INVITE transaction,
//!   2xx retransmission, dialog, session timer), and one owner avoids cross-module mutation.
//!   What every transaction kind shares (the retransmission schedule, the timer table, the
//!   client transaction) has its own modules, `sip::timer` and `sip::client_txn`.
//! - **Library and settings are JSON files, not SQLite/redb**: a few hundred tracks fit in one
//!   small file rewritten atomically on change (and never otherwise: flash wear), readable and
//!   repairable by hand; a database would add a dependency and its own write patterns for
//!   nothing a single writer needs.
//! - **Metrics through prometheus-client, with our own lock-free cells**: its registry is a
//!   value, not a global (a test process runs several servers), but its `Histogram` takes a
//!   lock on every observation, which the media thread must not; so the media thread writes our
//!   atomics and the crate encodes what a scrape reads.
//! - **The media loops are OS threads** (`rtp::shell`), not tokio tasks: their wake-ups are the
//!   futex's (tens of µs), not tokio's 1 ms timer wheel, and no SIP work can delay them.
#![forbid(unsafe_code)]

pub mod audio;
pub mod call;
pub mod channel;
pub mod check;
pub mod clock;
pub mod codec;
pub mod config;
pub mod control;
pub mod dialplan;
pub mod fsutil;
pub mod library;
pub mod lineout;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod rtp;
pub mod schedule;
pub mod server;
pub mod sip;
pub mod table;
pub mod tls;
pub mod web;
