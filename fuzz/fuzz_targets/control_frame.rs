//! Control-stream bytes through the record reader and decoder; every decoded
//! message must survive a re-encode (see `kwik_sim::fuzz::control`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kwik_sim::fuzz::control::run(data));
