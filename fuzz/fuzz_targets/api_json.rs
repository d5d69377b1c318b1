//! Fuzz target `api_json`: what it drives and checks is `mohd_fuzz::api_json` (`fuzz/src/api_json.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::api_json::check(data));
