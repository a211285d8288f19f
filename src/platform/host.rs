//! Threads as CPUs, for tests and benchmarks on a host with `std`.
//!
//! A thread claims the lowest free CPU index the first time it allocates and gives it
//! back when it exits; the cache of that index stays with the heap and serves the next
//! thread that claims the index, the way a CPU's cache outlives the threads it runs.
//! Threads beyond [`MAX_CPUS`] live ones get no index and use the centrals.
//!
//! # Invariants
//!
//! A set bit of `CLAIMED` is the index of exactly one live thread (or of a thread in
//! its exit, after its last heap call); a thread's index never changes while it holds
//! it. So no two threads ever share a cache, and a thread cannot be "interrupted" into
//! the heap by itself (signal handlers must not allocate, as with any allocator).

use super::{Platform, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};
use std::cell::Cell;

/// Each thread is a CPU. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostThreads;

const _: () = assert!(MAX_CPUS <= 64);

/// Bit `i` set: index `i` belongs to a live thread.
static CLAIMED: AtomicU64 = AtomicU64::new(0);

/// `UNCLAIMED`: this thread has not asked yet; `NONE`: it asked and none was free, or
/// it is exiting.
const UNCLAIMED: usize = usize::MAX;
const NONE: usize = usize::MAX - 1;

/// Gives the thread's index back when the thread exits. Registered (a TLS destructor)
/// only when the thread claims an index.
struct Claim;

impl Drop for Claim {
    fn drop(&mut self) {
        let index = INDEX.with(|index| index.replace(NONE));
        if index < MAX_CPUS {
            CLAIMED.fetch_and(!(1 << index), Ordering::Release);
        }
    }
}

thread_local! {
    /// The thread's index. No destructor, so reading it is a plain TLS load that
    /// stays valid while other TLS destructors run.
    static INDEX: Cell<usize> = const { Cell::new(UNCLAIMED) };
    static CLAIM: Claim = const { Claim };
}

fn claim_index() -> usize {
    let mut claimed = CLAIMED.load(Ordering::Relaxed);
    loop {
        let index = (!claimed).trailing_zeros() as usize;
        if index >= MAX_CPUS {
            return NONE;
        }
        match CLAIMED.compare_exchange_weak(
            claimed,
            claimed | 1 << index,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return index,
            Err(now) => claimed = now,
        }
    }
}

/// First call on a thread: claim an index and arrange for its release.
#[cold]
#[inline(never)]
fn first_call() -> usize {
    // Touching CLAIM registers its destructor; on a thread already exiting that
    // fails, and the thread gets no index.
    if CLAIM.try_with(|_| ()).is_err() {
        return NONE;
    }
    let index = claim_index();
    INDEX.with(|cell| cell.set(index));
    index
}

impl HostThreads {
    /// The calling thread's CPU index, claimed now if it had none.
    #[inline]
    pub fn current() -> Option<usize> {
        let index = match INDEX.with(Cell::get) {
            UNCLAIMED => first_call(),
            index => index,
        };
        (index < MAX_CPUS).then_some(index)
    }
}

// SAFETY: an index is held by one thread at a time (module invariant), a thread does
// not change its index, and threads cannot be interrupted into heap code; so the
// critical section needs no state.
unsafe impl Platform for HostThreads {
    type Saved = ();

    #[inline(always)]
    fn enter() {}

    #[inline(always)]
    unsafe fn exit(_: ()) {}

    #[inline(always)]
    fn cpu_index() -> Option<usize> {
        let index = INDEX.with(Cell::get);
        (index < MAX_CPUS).then_some(index)
    }

    fn claim_index() -> Option<usize> {
        Self::current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_hold_distinct_indices_and_give_them_back() {
        let mine = HostThreads::current().expect("the test thread gets an index");
        assert_eq!(HostThreads::current(), Some(mine), "an index is stable");
        // More threads one after the other than there are indices: each gets one
        // only if the ones before gave theirs back at exit.
        for _ in 0..2 * MAX_CPUS {
            let other = std::thread::spawn(HostThreads::current).join().unwrap();
            assert!(other.is_some(), "indices of exited threads are reused");
            assert_ne!(other, Some(mine));
        }
    }
}
