//! Fuzz target `upload_name`: what it drives and checks is `mohd_fuzz::upload_name` (`fuzz/src/upload_name.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::upload_name::check(data));
