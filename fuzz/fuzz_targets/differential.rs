#![no_main]
//! egret's HTTP/1 loop against hyper: a request both accept must read the same in both.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = egret::fuzzing::differential(data) {
        panic!("{e}");
    }
});
