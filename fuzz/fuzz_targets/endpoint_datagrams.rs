//! A server endpoint fed arbitrary datagrams around a genuine handshake,
//! which must still complete (see `kwik_sim::fuzz::datagrams`).
#![no_main]

use kwik_sim::fuzz::datagrams::{DatagramScript, run};

libfuzzer_sys::fuzz_target!(|script: DatagramScript| run(&script));
