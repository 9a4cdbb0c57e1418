//! A counting global allocator that attributes heap use to *meters*.
//!
//! Memory bounds are claims about one endpoint (a server under attack, a
//! client fed by a hostile peer), but a simulation runs every node in one
//! process. So the allocator counts only what is allocated and freed while a
//! meter is active on the current thread: the simulator activates a node's
//! meter around every call into that node ([`Sim::meter`](crate::Sim::meter)),
//! and the bytes a node keeps are exactly what it allocated and has not
//! freed. Bytes allocated inside a node and freed outside it (a transmit
//! buffer handed to the simulator) stay counted, so a meter errs on the high
//! side; datagrams handed *into* a metered node are copied inside the meter
//! first so that what the node keeps of them is counted too.
//!
//! A binary opts in with
//! `#[global_allocator] static A: kwik_sim::alloc::CountingAlloc = kwik_sim::alloc::CountingAlloc;`;
//! without it every meter reads zero ([`installed`] says which).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How many meters exist.
pub const METERS: usize = 16;

static CURRENT: [AtomicI64; METERS] = [const { AtomicI64::new(0) }; METERS];
static PEAK: [AtomicI64; METERS] = [const { AtomicI64::new(0) }; METERS];
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The meter charged by allocations on this thread, if any.
    static ACTIVE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn active() -> Option<usize> {
    ACTIVE.try_with(Cell::get).ok().flatten()
}

fn charge(meter: usize, delta: i64) {
    let now = CURRENT[meter].fetch_add(delta, Ordering::Relaxed) + delta;
    if delta > 0 {
        PEAK[meter].fetch_max(now, Ordering::Relaxed);
    }
}

/// Sets [`INSTALLED`] once; later allocations only read it, so threads
/// allocating in parallel do not fight over its cache line.
fn mark_installed() {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// The global allocator: [`System`] plus per-meter counters.
pub struct CountingAlloc;

// SAFETY: every method delegates to `System` with the caller's arguments;
// the counting touches only atomics and a const-initialised thread local.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null()
            && let Some(m) = active()
        {
            charge(m, layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null()
            && let Some(m) = active()
        {
            charge(m, layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(m) = active() {
            charge(m, -(layout.size() as i64));
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null()
            && let Some(m) = active()
        {
            charge(m, new_size as i64 - layout.size() as i64);
        }
        new
    }
}

/// True once the counting allocator served an allocation in this process.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// One meter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter(pub usize);

impl Meter {
    /// Bytes allocated under this meter and not freed under it.
    pub fn current(self) -> i64 {
        CURRENT[self.0].load(Ordering::Relaxed)
    }

    /// The highest [`current`](Self::current) since the last reset.
    pub fn peak(self) -> i64 {
        PEAK[self.0].load(Ordering::Relaxed)
    }

    /// Sets the peak to the current value (to measure from now on).
    pub fn reset_peak(self) {
        PEAK[self.0].store(self.current(), Ordering::Relaxed);
    }

    /// Runs `f` with this meter charged for the current thread's heap use
    /// (nested calls charge the innermost meter).
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        assert!(self.0 < METERS, "meter {} out of range", self.0);
        let outer = ACTIVE.with(|a| a.replace(Some(self.0)));
        let _restore = Restore(outer);
        f()
    }
}

/// Restores the outer meter, also when `f` panics.
struct Restore(Option<usize>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = ACTIVE.try_with(|a| a.set(self.0));
    }
}
