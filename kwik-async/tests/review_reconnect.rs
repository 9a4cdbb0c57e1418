//! Review: the reconnect backoff at the edges of its configuration.
//!
//! `ReconnectPolicy`'s fields are public and documented with ranges
//! ("0.0 to 1.0" for the jitter, "longest delay" for `max`), so a policy
//! read from a configuration file can hold any f64 or Duration. The delay
//! must stay a delay: never zero because a float was not a number, never a
//! panic because a product overflowed `Duration`.

use std::time::Duration;

use kwik_async::ReconnectPolicy;

/// A jitter that is not a number (a config parser's "nan", or 0.0/0.0)
/// must not turn the backoff into a busy loop: `f64::clamp` passes NaN
/// through, the factor becomes NaN, and `(NaN).max(0.0)` is 0 — every
/// delay is zero, whatever `initial` and the attempt number say.
#[test]
fn a_nan_jitter_does_not_make_the_delay_zero() {
    let mut p = ReconnectPolicy::default();
    p.jitter = f64::NAN;
    for attempt in [1, 2, 5, 40] {
        let d = p.delay(attempt, 0.5);
        assert!(
            d >= p.initial.min(p.max) / 2,
            "attempt {attempt}: delay {d:?} with jitter NaN"
        );
    }
}

/// `max: Duration::MAX` reads as "no cap"; with any jitter the drawn
/// factor can exceed 1 and `Duration::from_secs_f64` panics on a value
/// past `u64::MAX` seconds. Likewise a multiplier of infinity. The delay
/// must saturate, not panic inside the application's reconnect loop.
#[test]
fn an_uncapped_backoff_saturates_instead_of_panicking() {
    let mut p = ReconnectPolicy::default();
    p.max = Duration::MAX;
    p.multiplier = 10.0;
    // Base capped at Duration::MAX, then multiplied by 1.2: overflow.
    let d = std::panic::catch_unwind(|| p.delay(64, 0.9));
    assert!(d.is_ok(), "delay panicked");

    let mut q = ReconnectPolicy::default();
    q.max = Duration::MAX;
    q.multiplier = f64::INFINITY;
    let d = std::panic::catch_unwind(|| q.delay(2, 0.9));
    assert!(d.is_ok(), "delay panicked with an infinite multiplier");
}

/// `initial: 0` means "retry at once"; an infinite multiplier must not
/// turn 0 × ∞ = NaN into `max` (NaN.min(max) is max).
#[test]
fn zero_initial_stays_zero_whatever_the_multiplier() {
    let mut p = ReconnectPolicy::default();
    p.initial = Duration::ZERO;
    p.jitter = 0.0;
    p.multiplier = f64::INFINITY;
    assert_eq!(p.delay(2, 0.5), Duration::ZERO);
}

/// What held: the documented clamps.
#[test]
fn out_of_range_values_are_clamped() {
    let mut p = ReconnectPolicy::default();
    p.jitter = 7.0; // clamped to 1: within [0, 2 × base)
    let d = p.delay(1, 0.999);
    assert!(d < Duration::from_millis(400), "{d:?}");
    p.jitter = -3.0; // clamped to 0
    assert_eq!(p.delay(1, 0.9), Duration::from_millis(200));
    p.jitter = 0.0;
    for m in [0.0, -2.0, f64::NAN] {
        p.multiplier = m; // at least 1: constant delay
        assert_eq!(p.delay(30, 0.5), Duration::from_millis(200), "{m}");
    }
    p.multiplier = 2.0;
    assert_eq!(p.delay(u32::MAX, 0.5), p.max);
    assert_eq!(p.delay(0, 0.5), Duration::from_millis(200));
    // unit outside [0, 1), NaN unit
    p.jitter = 0.5;
    assert_eq!(p.delay(1, 5.0), Duration::from_millis(300));
    assert_eq!(p.delay(1, -5.0), Duration::from_millis(100));
}
