//! Lane bytes in arbitrary chunks through the record reader and the stream
//! table: bounded by the window, reads consistent (see
//! `kwik_sim::fuzz::lanes`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kwik_sim::fuzz::lanes::run(data);
});
