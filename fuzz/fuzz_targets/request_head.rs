#![no_main]
//! egret::fuzzing::request_head on arbitrary bytes: must not panic, hang or grow without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| egret::fuzzing::request_head(data));
