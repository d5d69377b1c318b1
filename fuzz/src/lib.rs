//! The fuzz targets' bodies, one module per target, each a `check(data: &[u8])` that drives
//! mohd's public API with the input and panics when a property fails. The cargo-fuzz
//! binaries (`fuzz_targets/*.rs`) are one line each around them, and `tests/fuzz_regressions.rs`
//! (the main crate's tests, through a `#[path]` module) replays the kept inputs (seeds,
//! regressions, the minimised corpus) through the same code, so `cargo test` checks exactly
//! what the fuzzer checked.

pub mod api_json;
pub mod config;
pub mod dialplan;
pub mod endpoint;
pub mod sdp;
pub mod sdp_crypto;
pub mod sip_msg;
pub mod upload_name;
pub mod x509_names;
