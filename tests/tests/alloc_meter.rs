//! The counting allocator charges exactly what a metered call keeps.

use kwik_sim::alloc::{CountingAlloc, Meter, installed};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn a_meter_counts_what_its_calls_keep_and_its_peak() {
    let m = Meter(3);
    let before = m.current();
    let kept: Vec<u8> = m.run(|| {
        let scratch = vec![0u8; 1 << 20];
        drop(scratch);
        vec![1u8; 4096]
    });
    assert!(installed());
    assert_eq!(m.current() - before, 4096, "only what the call kept");
    assert!(
        m.peak() - before >= (1 << 20),
        "the scratch shows in the peak"
    );
    // Freed outside the meter: still counted (the meter errs high).
    drop(kept);
    assert_eq!(m.current() - before, 4096);
    // Other meters and unmetered code are not charged.
    let other = Meter(4);
    let o = other.current();
    let _unmetered = vec![0u8; 1000];
    assert_eq!(other.current(), o);
}
