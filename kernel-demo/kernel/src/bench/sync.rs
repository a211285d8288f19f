//! What the benchmark's CPUs share: a reusable barrier that starts every CPU on a
//! case at once, and the per-CPU records the bootstrap CPU reads the results from.
//!
//! # Invariants
//!
//! - every CPU of the run calls [`Barrier::wait`] the same number of times with the
//!   same `cpus`; a generation ends when the last of them arrives;
//! - a [`CpuRecord`] is written only by its own CPU, between two barriers, and read by
//!   the bootstrap CPU after the barrier that follows (Release / Acquire through the
//!   barrier's generation counter).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A sense-counting barrier for a fixed set of CPUs, reusable without reset.
pub struct Barrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    /// A barrier nobody has reached yet.
    pub const fn new() -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until all `cpus` CPUs have arrived, calling `idle` while it waits (a CPU
    /// that must keep serving others, e.g. freeing what they hand it, does so there).
    pub fn wait_with(&self, cpus: usize, mut idle: impl FnMut()) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == cpus {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        while self.generation.load(Ordering::Acquire) == generation {
            idle();
            core::hint::spin_loop();
        }
    }

    /// Waits until all `cpus` CPUs have arrived.
    pub fn wait(&self, cpus: usize) {
        self.wait_with(cpus, || {});
    }
}

impl Default for Barrier {
    fn default() -> Self {
        Self::new()
    }
}

/// One CPU's account of one case, on a cache line of its own.
#[repr(align(64))]
pub struct CpuRecord {
    /// TSC when the CPU started its measured operations.
    pub start: AtomicU64,
    /// TSC when it finished them.
    pub end: AtomicU64,
    /// Measured operations it ran.
    pub ops: AtomicU64,
    /// Allocations it made (set-up and measured).
    pub allocs: AtomicU64,
    /// Frees it made (measured, hand-offs and tear-down).
    pub frees: AtomicU64,
}

impl CpuRecord {
    /// A record of nothing.
    pub const fn new() -> Self {
        Self {
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }
}

impl Default for CpuRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the time-stamp counter (guest instructions under `-icount shift=0`).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
