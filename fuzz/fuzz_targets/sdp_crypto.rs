//! Fuzz target `sdp_crypto`: what it drives and checks is `mohd_fuzz::sdp_crypto` (`fuzz/src/sdp_crypto.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::sdp_crypto::check(data));
