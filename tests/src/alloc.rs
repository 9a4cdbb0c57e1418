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
//! Each meter also accumulates the wall-clock time spent inside its
//! [`Meter::run`] calls ([`Meter::cpu`]), so that a benchmark can say how
//! much of the process's work one endpoint did. Parallel tests lease meters
//! ([`Meter::lease`]) so that two of them never share one; a meter can be
//! given a hard cap ([`Meter::set_limit`]) past which allocation fails and
//! the process aborts — a safety net for runs in a child process that might
//! otherwise allocate without bound.
//!
//! A binary opts in with
//! `#[global_allocator] static A: kwik_sim::alloc::CountingAlloc = kwik_sim::alloc::CountingAlloc;`;
//! without it every meter reads zero ([`installed`] says which).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many meters exist.
pub const METERS: usize = 16;

static CURRENT: [AtomicI64; METERS] = [const { AtomicI64::new(0) }; METERS];
static PEAK: [AtomicI64; METERS] = [const { AtomicI64::new(0) }; METERS];
static CPU_NS: [AtomicU64; METERS] = [const { AtomicU64::new(0) }; METERS];
/// Hard caps on `CURRENT` (`i64::MAX`: none).
static LIMIT: [AtomicI64; METERS] = [const { AtomicI64::new(i64::MAX) }; METERS];
/// Bit `i` set: meter `i` is leased.
static LEASED: AtomicU32 = AtomicU32::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// True if allocating `size` more bytes under `meter` would pass its cap.
fn over_limit(meter: usize, size: usize) -> bool {
    let limit = LIMIT[meter].load(Ordering::Relaxed);
    limit != i64::MAX && CURRENT[meter].load(Ordering::Relaxed) + size as i64 > limit
}

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
        if let Some(m) = active()
            && over_limit(m, layout.size())
        {
            return std::ptr::null_mut();
        }
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
        if let Some(m) = active()
            && over_limit(m, layout.size())
        {
            return std::ptr::null_mut();
        }
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
        if let Some(m) = active()
            && new_size > layout.size()
            && over_limit(m, new_size - layout.size())
        {
            return std::ptr::null_mut();
        }
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

    /// Wall-clock time spent inside [`run`](Self::run) calls of this meter
    /// (a nested call's time counts for both meters).
    pub fn cpu(self) -> Duration {
        Duration::from_nanos(CPU_NS[self.0].load(Ordering::Relaxed))
    }

    /// Caps what this meter may hold: an allocation under it that would
    /// take [`current`](Self::current) past `bytes` fails, which aborts the
    /// process (`None` removes the cap). Only for runs in a child process
    /// that must not allocate without bound.
    pub fn set_limit(self, bytes: Option<u64>) {
        let limit = bytes.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        LIMIT[self.0].store(limit, Ordering::Relaxed);
    }

    /// Zeroes the counters (current, peak and time) and removes the cap.
    pub fn reset(self) {
        CURRENT[self.0].store(0, Ordering::Relaxed);
        PEAK[self.0].store(0, Ordering::Relaxed);
        CPU_NS[self.0].store(0, Ordering::Relaxed);
        LIMIT[self.0].store(i64::MAX, Ordering::Relaxed);
    }

    /// Takes a meter no one else holds, zeroed; it is handed back when the
    /// lease is dropped. Waits while all [`METERS`] are leased (tests run
    /// in parallel threads of one process and must not share a meter).
    pub fn lease() -> MeterLease {
        loop {
            let leased = LEASED.load(Ordering::Acquire);
            let free = (!leased).trailing_zeros() as usize;
            if free >= METERS {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let bit = 1u32 << free;
            if LEASED
                .compare_exchange(leased, leased | bit, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let meter = Meter(free);
                meter.reset();
                return MeterLease(meter);
            }
        }
    }

    /// Runs `f` with this meter charged for the current thread's heap use
    /// and the time it takes (nested calls charge the innermost meter's
    /// heap use).
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        assert!(self.0 < METERS, "meter {} out of range", self.0);
        let outer = ACTIVE.with(|a| a.replace(Some(self.0)));
        let _restore = Restore {
            outer,
            meter: self.0,
            started: Instant::now(),
        };
        f()
    }
}

/// A [`Meter`] held exclusively until dropped (see [`Meter::lease`]).
#[derive(Debug)]
pub struct MeterLease(Meter);

impl MeterLease {
    /// The leased meter.
    pub fn meter(&self) -> Meter {
        self.0
    }
}

impl std::ops::Deref for MeterLease {
    type Target = Meter;
    fn deref(&self) -> &Meter {
        &self.0
    }
}

impl Drop for MeterLease {
    fn drop(&mut self) {
        self.0.set_limit(None);
        LEASED.fetch_and(!(1u32 << self.0.0), Ordering::AcqRel);
    }
}

/// Restores the outer meter and books the time, also when `f` panics.
struct Restore {
    outer: Option<usize>,
    meter: usize,
    started: Instant,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        CPU_NS[self.meter].fetch_add(ns, Ordering::Relaxed);
        let _ = ACTIVE.try_with(|a| a.set(self.outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_zeroed_and_time_their_runs() {
        let a = Meter::lease();
        let b = Meter::lease();
        assert_ne!(a.meter(), b.meter());
        assert_eq!((a.current(), a.peak(), a.cpu()), (0, 0, Duration::ZERO));
        a.run(|| std::thread::sleep(Duration::from_millis(5)));
        assert!(a.cpu() >= Duration::from_millis(5), "{:?}", a.cpu());
        assert_eq!(b.cpu(), Duration::ZERO, "only the meter that ran");
        let index = a.meter();
        drop(a);
        // The freed meter is handed out again, zeroed.
        let c = Meter::lease();
        let again = if c.meter() == index {
            c
        } else {
            Meter::lease()
        };
        assert_eq!(again.cpu(), Duration::ZERO);
    }
}
