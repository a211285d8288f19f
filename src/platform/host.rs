//! Threads as CPUs, for tests and benchmarks on a host with `std`.
//!
//! A thread claims the lowest free CPU index the first time it allocates and gives it
//! back when it exits; the cache of that index stays with the heap and serves the next
//! thread that claims the index, the way a CPU's cache outlives the threads it runs.
//! Threads beyond [`MAX_CPUS`] live ones get no index and use the centrals.
//!
//! # Invariants
//!
//! `SLOT` is 0 or `index + 1` for the thread's index, below [`MAX_CPUS`]. A set bit of
//! `CLAIMED` is the index of exactly one live thread (or of a thread in
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

/// Gives the thread's index back when the thread exits. Registered (a TLS destructor)
/// only when the thread claims an index.
struct Claim;

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(index) = SLOT.with(|slot| slot.replace(0)).checked_sub(1) {
            CLAIMED.fetch_and(!(1 << index), Ordering::Release);
        }
    }
}

thread_local! {
    /// The thread's index + 1, or 0 while it has none ([`Platform::cpu_slot`]). No
    /// destructor, so reading it is a plain TLS load that stays valid while other TLS
    /// destructors run.
    static SLOT: Cell<usize> = const { Cell::new(0) };
    /// The thread asked for an index (it has one, or none was free, or it is exiting).
    static ASKED: Cell<bool> = const { Cell::new(false) };
    static CLAIM: Claim = const { Claim };
}

/// A free index, now claimed.
fn claim_index() -> Option<usize> {
    let mut claimed = CLAIMED.load(Ordering::Relaxed);
    loop {
        let index = (!claimed).trailing_zeros() as usize;
        if index >= MAX_CPUS {
            return None;
        }
        match CLAIMED.compare_exchange_weak(
            claimed,
            claimed | 1 << index,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(index),
            Err(now) => claimed = now,
        }
    }
}

/// First call on a thread: claim an index and arrange for its release.
#[cold]
#[inline(never)]
fn first_call() -> Option<usize> {
    ASKED.with(|asked| asked.set(true));
    // Touching CLAIM registers its destructor; on a thread already exiting that
    // fails, and the thread gets no index.
    CLAIM.try_with(|_| ()).ok()?;
    let index = claim_index()?;
    SLOT.with(|slot| slot.set(index + 1));
    Some(index)
}

impl HostThreads {
    /// The calling thread's CPU index, claimed now if it had none.
    #[inline]
    pub fn current() -> Option<usize> {
        match Self::cpu_index() {
            None if !ASKED.with(Cell::get) => first_call(),
            index => index,
        }
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
        Self::cpu_slot().checked_sub(1)
    }

    /// The TLS word itself: `index + 1 <= MAX_CPUS`, or 0 (module invariant).
    #[inline(always)]
    fn cpu_slot() -> usize {
        SLOT.with(Cell::get)
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
        assert_eq!(
            HostThreads::cpu_slot(),
            mine + 1,
            "the slot is the index + 1"
        );
        // More threads one after the other than there are indices: each gets one
        // only if the ones before gave theirs back at exit.
        for _ in 0..2 * MAX_CPUS {
            let (before, other, slot) = std::thread::spawn(|| {
                let before = HostThreads::cpu_slot();
                (before, HostThreads::current(), HostThreads::cpu_slot())
            })
            .join()
            .unwrap();
            assert_eq!(before, 0, "no slot before the first claim");
            assert_eq!(other.map(|index| index + 1), Some(slot));
            assert!(other.is_some(), "indices of exited threads are reused");
            assert_ne!(other, Some(mine));
        }
    }
}
