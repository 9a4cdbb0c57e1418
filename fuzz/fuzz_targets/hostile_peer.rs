//! A hostile client or primary sending arbitrary control messages and data
//! records after a genuine handshake (see `kwik_sim::fuzz::hostile`).
#![no_main]

use kwik_sim::fuzz::hostile::{HostileScript, run};

libfuzzer_sys::fuzz_target!(|script: HostileScript| {
    run(&script);
});
