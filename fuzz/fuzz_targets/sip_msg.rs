//! Fuzz target `sip_msg`: what it drives and checks is `mohd_fuzz::sip_msg` (`fuzz/src/sip_msg.rs`),
//! which `tests/fuzz_regressions.rs` runs on the kept corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mohd_fuzz::sip_msg::check(data));
