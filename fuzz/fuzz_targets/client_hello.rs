#![no_main]
//! egret::fuzzing::client_hello on arbitrary bytes: must not panic, hang or grow without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| egret::fuzzing::client_hello(data));
