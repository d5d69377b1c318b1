//! Fuzz target `x509_names`: what it drives and checks is `mohd_fuzz::x509_names` (`fuzz/src/x509_names.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::x509_names::check(data));
