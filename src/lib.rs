//! mohd: a music-on-hold server.
//!
//! A PBX sends an INVITE when it puts a caller on hold; mohd answers and streams a looping,
//! loudness-normalised playlist as G.711 RTP. Audio is rendered once per channel and codec, and
//! every caller on a channel is served from that one render on one monotonic clock.
//!
//! # Layout
//!
//! Modules marked **(pure)** do no I/O, read no OS clock and use no thread-local RNG: time
//! comes in as `now: Instant`, randomness as a seed, so tests drive them with a virtual clock.
//!
//! - `clock` **(pure)**: the media clock (frame n → epoch + n × 10 ms) and the wrapping RTP
//!   counters `Seq16` / `Ts32`.
//! - `codec` **(pure)**: G.711 μ-law and A-law, exact to ITU-T G.711 / G.191.
//! - `audio` **(pure)**: decode (symphonia), resample (rubato), loudness (ebur128) and limiter,
//!   and the built-in demo melody.
//! - `channel`: renders a playlist once into a seamless loop, encoded per codec (render once,
//!   serve many). `channel::cache`: renders persisted in the state folder, keyed by the inputs'
//!   size and mtime, so a restart serves at once (the first 30 s of each loop are read first).
//! - `rtp::packet` **(pure)**: RTP and RTCP packets written into caller-owned buffers.
//! - `rtp::stats` **(pure)**: RFC 3550 receiver statistics (loss, jitter, reordering).
//! - `rtp::fanout` **(pure)**: per-call RTP header state, pacing deadlines, RTCP sender reports.
//! - `rtp::shell`: the media thread: sleeps until the next deadline, sends what the fan-out says;
//!   pets the systemd watchdog from its own loop; publishes call snapshots, the lateness
//!   histogram and the drift of RTP timestamps from the monotonic clock.
//! - `sip::msg` **(pure)**: SIP message parser and printer.
//! - `sip::sdp` **(pure)**: SDP parse and the music-on-hold offer/answer.
//! - `sip::endpoint` **(pure)**: RFC 3261 UAS transactions and dialogs, sans-IO.
//! - `sip::digest` **(pure)**: digest authentication (RFC 8760/7616/2617): answering
//!   challenges, and stateless nonces and verification for challenging INVITEs.
//! - `sip::register` **(pure)**: the REGISTER client (RFC 3261 §10): challenges, refresh,
//!   retransmission, back-off; the shell resolves the registrar and carries its messages.
//! - `sip::transport` **(pure)**: SIP over streams: framing by Content-Length, CRLF
//!   keep-alives, size caps (RFC 3261 §18.3, RFC 5626).
//! - `sip::shell`: tokio UDP sockets, TCP and TLS (rustls) listeners and connections around the
//!   endpoint, and the registrations driven from the same task and sockets.
//! - `dialplan` **(pure)**: request → channel.
//! - `lineout`: the sound card's line-out: a decoder thread prepares the next track at the
//!   card's rate, a feeder keeps a lock-free ring a second ahead, cpal's callback only copies;
//!   the ALSA device is retried while missing. `mohd devices`.
//! - `config`: TOML config into typed structs; errors name file, line and key.
//! - `library`: the uploaded music in the state folder: crash-safe uploads (temp file, decode in
//!   a child process with limits, fsync, rename), playlist order, enabled flags, settings.
//! - `fsutil`: the one atomic-write routine every persistent file goes through.
//! - `control`: the server handle the web sees: status, health, metrics text, library
//!   operations followed by a re-render swapped in at a frame boundary.
//! - `web`: axum admin page (assets in the binary), REST API with its OpenAPI document,
//!   `/metrics`, `/healthz`; `web::auth`: argon2 password, hashed API tokens, sessions, CSRF,
//!   login rate limit.
//! - `metrics`: Prometheus text exposition and lock-free histograms.
//! - `notify`: systemd READY/STOPPING/WATCHDOG notifications.
//! - `server`: wiring only (state folder, channels, SIP shell, media thread, web, shutdown).
//! - `check`: `mohd check`: validates config and dialplan, decodes every music file.
//! - `call`: the `mohd call` test softphone.
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
//! - **Library and settings are JSON files, not SQLite/redb**: a few hundred tracks fit in one
//!   small file rewritten atomically on change (and never otherwise: flash wear), readable and
//!   repairable by hand; a database would add a dependency and its own write patterns for
//!   nothing a single writer needs.
//! - **Metrics are written by hand (`metrics`), not with the `metrics` crate's recorder**: the
//!   recorder is process-global, while a test process runs several servers; our counters were
//!   already atomics, and the text format is small.
//! - **The media loop is an OS thread** (`rtp::shell`), not a tokio task: its wake-ups are the
//!   futex's (tens of µs), not tokio's 1 ms timer wheel, and no SIP work can delay it.
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
pub mod metrics;
pub mod notify;
pub mod rtp;
pub mod server;
pub mod sip;
pub mod web;
