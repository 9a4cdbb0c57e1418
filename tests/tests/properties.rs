//! Property tests over the fuzz harnesses (`kwik_sim::fuzz`), on stable.
//!
//! Each test draws a few hundred inputs from a seeded RNG (random bytes
//! through `arbitrary::Unstructured`, so the same structured inputs the
//! fuzzers build) and runs the harness, which panics on any broken
//! invariant. Every crash a fuzzer finds belongs below as a named
//! regression test with its input bytes, so that it keeps being run.
//!
//! `KWIK_PROPERTY_CASES` scales the case counts (e.g. `=10` for ten times
//! more); the seed corpus in `fuzz/corpus/` is regenerated with
//! `cargo test -p kwik-sim --test properties -- --ignored write_seed_corpus`.

use arbitrary::{Arbitrary, Unstructured};
use kwik_sim::fuzz::{self, Seed};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Cases for a test whose default is `n`.
fn cases(n: usize) -> usize {
    let scale = std::env::var("KWIK_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    n * scale
}

/// Random byte strings of up to `max` bytes, from a fixed seed.
fn random_inputs(seed: u64, n: usize, max: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(move |_| {
        let len = rng.random_range(0..=max);
        (0..len).map(|_| rng.random::<u8>()).collect()
    })
}

/// Runs `check` on `T`s built from random bytes.
fn structured<T: for<'a> Arbitrary<'a>>(seed: u64, n: usize, max: usize, check: impl Fn(&T)) {
    for bytes in random_inputs(seed, n, max) {
        let input = T::arbitrary_take_rest(Unstructured::new(&bytes)).expect("parses");
        check(&input);
    }
}

#[test]
fn control_frames_from_random_bytes() {
    for bytes in random_inputs(1, cases(500), 512) {
        fuzz::control::run(&bytes);
    }
}

#[test]
fn control_frames_from_messages() {
    structured(2, cases(400), 2048, |s: &fuzz::control::ControlScript| {
        fuzz::control::run(&s.encode())
    });
}

#[test]
fn data_records_from_random_bytes() {
    for bytes in random_inputs(3, cases(300), 1024) {
        let _ = fuzz::lanes::run(&bytes);
    }
}

#[test]
fn data_records_from_records() {
    let read = std::cell::Cell::new(0);
    structured(4, cases(300), 512, |s: &fuzz::lanes::LaneScript| {
        read.set(read.get() + fuzz::lanes::run(&s.encode()))
    });
    assert!(read.get() > 0, "some generated lanes deliver bytes");
}

#[test]
fn endpoint_datagrams() {
    structured(5, cases(200), 3000, fuzz::datagrams::run);
}

#[test]
fn session_ops() {
    structured(6, cases(200), 400, |s| {
        fuzz::session::run(s);
    });
}

#[test]
fn hostile_peer() {
    structured(7, cases(200), 600, |s| {
        fuzz::hostile::run(s);
    });
}

/// Every committed seed still runs clean.
#[test]
fn seed_corpus_runs_clean() {
    for s in fuzz::control::seeds() {
        fuzz::control::run(&s.data);
    }
    let read: u64 = fuzz::lanes::seeds()
        .iter()
        .map(|s| fuzz::lanes::run(&s.data))
        .sum();
    assert!(
        read > 4000,
        "the genuine lanes deliver their bytes ({read})"
    );
    for s in fuzz::datagrams::seeds() {
        fuzz::datagrams::run(&fuzz::parse(&s.data));
    }
    for s in fuzz::session::seeds() {
        let summary = fuzz::session::run(&fuzz::parse(&s.data));
        eprintln!("session_ops seed {}: {summary:?}", s.name);
    }
    for s in fuzz::hostile::seeds() {
        let read = fuzz::hostile::run(&fuzz::parse(&s.data));
        eprintln!("hostile_peer seed {}: {read} bytes read", s.name);
    }
}

/// Writes the seed corpus of every target under `fuzz/corpus/`.
#[test]
#[ignore = "generator: run by hand to refresh fuzz/corpus"]
fn write_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let targets: [(&str, Vec<Seed>); 5] = [
        ("control_frame", fuzz::control::seeds()),
        ("data_records", fuzz::lanes::seeds()),
        ("endpoint_datagrams", fuzz::datagrams::seeds()),
        ("session_ops", fuzz::session::seeds()),
        ("hostile_peer", fuzz::hostile::seeds()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for s in seeds {
            std::fs::write(dir.join(&s.name), &s.data).unwrap();
        }
    }
}
