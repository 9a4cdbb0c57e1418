//! kwik's benchmarks (work in progress).
fn main() {}
