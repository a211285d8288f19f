//! A loom model of the hand-off between per-CPU caches and a central: every
//! interleaving (preemption bound 3) of two CPUs whose refills and flushes race, with
//! three objects, one of them freed on the other CPU.
//!
//! The model mirrors spanheap's protocol with loom's primitives (the library itself
//! uses `core` atomics and `spin` locks, which loom cannot drive):
//!
//! - a span's object bitmap is an atomic word written only under the central's lock,
//!   with a plain load and store (no read-modify-write), as `Span::bits`;
//! - a refill takes free objects (bit clear) under the lock, sets their bits and puts
//!   them on the CPU's own stack (`CpuCache::push`, no synchronisation);
//! - a free reads the object's bit *without* the lock (relaxed, as
//!   `SpanHeap::free_small` does: a clear bit means double free) and pushes the object
//!   onto the freeing CPU's stack, even when another CPU allocated it;
//! - a flush clears the bits of the stack's oldest objects under the lock; the
//!   flush of a full stack's batch moves the objects into the central's transfer
//!   cache instead when it has room (bits stay set), and a refill takes from the
//!   transfer cache first (`SpanHeap::flush_batch`, `SpanHeap::refill`);
//! - `trim` gives the transfer cache's objects back (bits cleared under the lock).
//!
//! Objects are `loom::cell::UnsafeCell`s: loom reports any two unsynchronised
//! accesses, so an object handed out twice, or used by its new owner while the old one
//! still writes it, fails the model. At the end every object is back (bit clear) and
//! no free was refused.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom` (`./run test` does,
//! in its own target directory).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use loom::sync::{Arc, Mutex};
use loom::thread;

const OBJECTS: usize = 3;
/// Objects a refill takes at most (a batch).
const BATCH: usize = 2;
/// Objects the central's transfer cache holds at most.
const TRANSFER: usize = 2;

struct Span {
    /// Bit i set: object i is allocated (in a cache or in use).
    bits: AtomicU64,
    /// The central's lock, over its transfer cache (the central lists themselves are
    /// the bitmap here).
    central: Mutex<Vec<usize>>,
    objects: [UnsafeCell<u64>; OBJECTS],
    /// Frees refused as double frees.
    refused: AtomicUsize,
}

impl Span {
    fn new() -> Self {
        Span {
            bits: AtomicU64::new(0),
            central: Mutex::new(Vec::new()),
            objects: std::array::from_fn(|_| UnsafeCell::new(0)),
            refused: AtomicUsize::new(0),
        }
    }

    /// Takes up to `BATCH` objects for `cache` (under the lock): from the transfer
    /// cache when it holds any, else free objects from the span.
    fn refill(&self, cache: &mut Vec<usize>) {
        let mut transfer = self.central.lock().unwrap();
        if !transfer.is_empty() {
            while cache.len() < BATCH {
                let Some(i) = transfer.pop() else { break };
                cache.push(i);
            }
            return;
        }
        let mut bits = self.bits.load(Relaxed);
        for i in 0..OBJECTS {
            if cache.len() < BATCH && bits & 1 << i == 0 {
                bits |= 1 << i;
                cache.push(i);
            }
        }
        self.bits.store(bits, Relaxed);
    }

    /// Gives the `n` oldest objects of `cache` back to the span (under the lock).
    fn flush(&self, cache: &mut Vec<usize>, n: usize) {
        let _lock = self.central.lock().unwrap();
        self.put_back(cache.drain(..n.min(cache.len())));
    }

    /// A full stack's flush: the `n` oldest objects into the transfer cache when it
    /// has room for them all, else back to the span.
    fn flush_batch(&self, cache: &mut Vec<usize>, n: usize) {
        let mut transfer = self.central.lock().unwrap();
        if transfer.len() + n <= TRANSFER {
            transfer.extend(cache.drain(..n));
        } else {
            self.put_back(cache.drain(..n));
        }
    }

    /// Gives the transfer cache's objects back to the span.
    fn trim(&self) {
        let mut transfer = self.central.lock().unwrap();
        self.put_back(transfer.drain(..));
    }

    /// Clears the bits of `objects`; the caller holds the lock.
    fn put_back(&self, objects: impl Iterator<Item = usize>) {
        let mut bits = self.bits.load(Relaxed);
        for i in objects {
            if bits & 1 << i == 0 {
                self.refused.fetch_add(1, Relaxed);
                continue;
            }
            bits &= !(1 << i);
        }
        self.bits.store(bits, Relaxed);
    }

    /// Allocates from `cache`, refilling it when empty, and writes the object.
    fn alloc(&self, cache: &mut Vec<usize>, cpu: u64) -> Option<usize> {
        if cache.is_empty() {
            self.refill(cache);
        }
        let i = cache.pop()?;
        // SAFETY: the object is ours alone now (loom checks that): a plain write.
        self.objects[i].with_mut(|v| unsafe { *v = cpu });
        Some(i)
    }

    /// Frees object `i` into `cache`: the lock-free bit check, then the push.
    fn free(&self, cache: &mut Vec<usize>, i: usize, cpu: u64) {
        // SAFETY: the caller owns object `i` until it is pushed (loom checks that).
        self.objects[i].with_mut(|v| unsafe { *v = cpu + 100 });
        if self.bits.load(Relaxed) & 1 << i == 0 {
            self.refused.fetch_add(1, Relaxed);
            return;
        }
        cache.push(i);
        if cache.len() > BATCH {
            self.flush_batch(cache, 1);
        }
    }
}

/// CPU 0 flushes its cache and waits for CPU 1; then the transfer cache is trimmed
/// and every object must be back, no good free refused.
fn finish(span: &Span, cache: &mut Vec<usize>, cpu1: thread::JoinHandle<()>) {
    span.flush(cache, usize::MAX);
    cpu1.join().unwrap();
    span.trim();
    assert_eq!(span.refused.load(Relaxed), 0, "a good free was refused");
    assert_eq!(span.bits.load(Relaxed), 0, "every object is back");
}

#[test]
fn refills_and_flushes_race_with_a_cross_cpu_free() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let span = Arc::new(Span::new());
        // CPU 0 hands one object to CPU 1 through this slot (release/acquire, as a
        // kernel would through its own synchronisation).
        let handed = Arc::new(AtomicUsize::new(usize::MAX));
        let cpu1 = {
            let (span, handed) = (span.clone(), handed.clone());
            thread::spawn(move || {
                let mut cache = Vec::new();
                // CPU 1 allocates and frees on its own while CPU 0 works.
                let mine = span.alloc(&mut cache, 1);
                let received = loop {
                    match handed.load(Acquire) {
                        usize::MAX => thread::yield_now(),
                        i => break i,
                    }
                };
                span.free(&mut cache, received, 1);
                if let Some(i) = mine {
                    span.free(&mut cache, i, 1);
                }
                span.flush(&mut cache, usize::MAX);
            })
        };
        let mut cache = Vec::new();
        let a = span
            .alloc(&mut cache, 0)
            .expect("three objects for two CPUs");
        handed.store(a, Release);
        if let Some(b) = span.alloc(&mut cache, 0) {
            span.free(&mut cache, b, 0);
        }
        finish(&span, &mut cache, cpu1);
    });
}

#[test]
fn a_double_free_after_the_flush_is_refused() {
    loom::model(|| {
        let span = Arc::new(Span::new());
        let mut cache = Vec::new();
        let a = span.alloc(&mut cache, 0).unwrap();
        span.free(&mut cache, a, 0);
        span.flush(&mut cache, usize::MAX);
        let other = {
            let span = span.clone();
            thread::spawn(move || {
                let mut cache = Vec::new();
                // The second free of `a`, on another CPU: its bit is clear.
                span.free(&mut cache, a, 1);
                assert!(cache.is_empty(), "refused, not cached");
            })
        };
        other.join().unwrap();
        assert_eq!(span.refused.load(Relaxed), 1);
        assert_eq!(span.bits.load(Relaxed), 0);
    });
}

#[test]
fn a_batch_flushed_on_one_cpu_refills_the_other_through_the_transfer_cache() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let span = Arc::new(Span::new());
        let mut cache = Vec::new();
        // CPU 0 takes every object and hands them all to CPU 1, whose third free
        // overflows its stack: that batch goes to the transfer cache.
        let objects: Vec<usize> = (0..OBJECTS)
            .map(|_| span.alloc(&mut cache, 0).expect("three objects"))
            .collect();
        let cpu1 = {
            let span = span.clone();
            thread::spawn(move || {
                let mut cache = Vec::new();
                for i in objects {
                    span.free(&mut cache, i, 1);
                }
                span.flush(&mut cache, usize::MAX);
            })
        };
        // Meanwhile CPU 0 allocates again: from the transfer cache, or nothing yet.
        // Whatever it gets is its own (loom checks every access to the object).
        if let Some(i) = span.alloc(&mut cache, 0) {
            span.free(&mut cache, i, 0);
        }
        finish(&span, &mut cache, cpu1);
    });
}
