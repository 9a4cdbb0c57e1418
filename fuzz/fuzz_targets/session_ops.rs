//! Arbitrary application and network operations on a client, a primary and
//! two secondaries in the simulator (see `kwik_sim::fuzz::session`).
#![no_main]

use kwik_sim::fuzz::session::{SessionScript, run};

libfuzzer_sys::fuzz_target!(|script: SessionScript| {
    run(&script);
});
