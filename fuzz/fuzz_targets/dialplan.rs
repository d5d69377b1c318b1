//! Fuzz target `dialplan`: what it drives and checks is `mohd_fuzz::dialplan` (`fuzz/src/dialplan.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::dialplan::check(data));
