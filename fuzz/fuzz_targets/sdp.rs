//! Fuzz target `sdp`: what it drives and checks is `mohd_fuzz::sdp` (`fuzz/src/sdp.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::sdp::check(data));
