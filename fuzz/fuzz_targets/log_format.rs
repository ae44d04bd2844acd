#![no_main]
//! egret::fuzzing::log_format on arbitrary bytes: must not panic, hang or grow without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| egret::fuzzing::log_format(data));
