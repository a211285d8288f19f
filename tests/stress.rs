//! Cross-thread stress on the host: threads as CPUs ([`HostThreads`]), each with its
//! own cache, objects handed between them, every word checked before every free.
//!
//! Two patterns, after the field's stress tests (own code):
//! - **exchange** (mimalloc's test-stress): every thread allocates objects of 8 B to
//!   64 KiB (1% of them 32 KiB or more), fills each with words derived from its
//!   address and a cookie, swaps about a quarter of them into a shared array of
//!   atomic slots (taking ownership of whatever was there, usually another thread's
//!   object), checks and frees the rest at random, several rounds;
//! - **producer/consumer** (xmalloc-test): one thread allocates batches, another
//!   checks and frees them, so every object is freed on another CPU than its own.
//!
//! At the end everything is freed, every CPU's cache drained and the reserves
//! trimmed: no byte in use, none cached, and every page back in the page heap.
//!
//! Sized to run in seconds; `SPANHEAP_STRESS_ROUNDS` (default 4) scales the exchange
//! rounds and producer batches for a long run, e.g. `SPANHEAP_STRESS_ROUNDS=400
//! cargo test --release --test stress -- --nocapture`.

mod common;

use common::{env_u64, mix64, Backing, Rng};
use spanheap::platform::{HostThreads, MAX_CPUS};
use spanheap::{Config, MemoryRange, SpanHeap};
use std::alloc::Layout;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

type Heap = SpanHeap<HostThreads>;

const COOKIE: u64 = 0x5eed_cafe_f00d_d00d;

/// A heap of `mib` MiB in 16 MiB arenas over its own memory.
fn heap(mib: usize) -> (Heap, Backing) {
    let backing = Backing::new(mib << 20, 1 << 21);
    let heap = Heap::with_config(Config {
        arena_size: 16 << 20,
        ..Config::default()
    });
    // SAFETY: the backing memory is ours, writable, and outlives the heap (the caller
    // keeps both and drops the heap first).
    unsafe { heap.add_memory(MemoryRange::new(backing.start(), backing.end())) }.unwrap();
    (heap, backing)
}

/// Word `i` of the object at `addr` (word 0 holds the size).
fn word(addr: usize, i: usize) -> u64 {
    mix64(addr as u64 ^ COOKIE ^ (i as u64).wrapping_mul(0x9E37_79B9))
}

/// An object of the stress: its address; its size is in its first word.
#[derive(Clone, Copy)]
struct Object(NonNull<u8>);

// SAFETY: an object is plain memory owned by whoever holds the `Object`.
unsafe impl Send for Object {}

fn allocate(heap: &Heap, size: usize) -> Object {
    let size = size.max(8);
    let layout = Layout::from_size_align(size, 8).unwrap();
    let ptr = heap
        .allocate(layout)
        .expect("the stress heap is large enough");
    let words = ptr.as_ptr() as *mut u64;
    // SAFETY: a fresh block of `size >= 8` bytes, 8-byte aligned, ours.
    unsafe {
        words.write(size as u64);
        for i in 1..size / 8 {
            words.add(i).write(word(ptr.as_ptr() as usize, i));
        }
    }
    Object(ptr)
}

/// Checks every word of `object`, then frees it.
fn free(heap: &Heap, object: Object) {
    let addr = object.0.as_ptr() as usize;
    let words = addr as *const u64;
    // SAFETY: the object is live and ours; its first word holds its size.
    let size = unsafe { words.read() } as usize;
    assert!(
        (8..=64 << 10).contains(&size),
        "object {addr:#x}: size word {size:#x} overwritten"
    );
    for i in 1..size / 8 {
        // SAFETY: inside the object.
        let got = unsafe { words.add(i).read() };
        assert_eq!(
            got,
            word(addr, i),
            "object {addr:#x} ({size} B): word {i} overwritten"
        );
    }
    let layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: allocated by `allocate` with this layout, not used after.
    unsafe { heap.deallocate(object.0, layout) };
}

/// 8 B to 64 KiB: 99% log-uniform over 8 B..32 KiB, 1% in 32..64 KiB.
fn stress_size(rng: &mut Rng) -> usize {
    if rng.chance(10) {
        rng.range(32 << 10, 64 << 10)
    } else {
        let octave = rng.range(3, 14);
        rng.range(1 << octave, (2 << octave) - 1).min(32 << 10)
    }
}

/// Drains every CPU's cache (all threads but the caller have exited), trims, and
/// checks that the heap is empty with every page back in the page heap.
fn assert_all_returned(heap: &Heap, what: &str) {
    for cpu in 0..MAX_CPUS {
        // SAFETY: the stress threads have exited; the caller is the only thread
        // using this heap.
        unsafe { heap.drain_offline_cpu(cpu) };
    }
    heap.trim();
    heap.check_invariants()
        .unwrap_or_else(|e| panic!("{what}: invariants: {e}"));
    let s = heap.stats();
    assert!(s.balances(), "{what}:\n{s}");
    assert_eq!(s.in_use_bytes, 0, "{what}: bytes in use:\n{s}");
    assert_eq!(s.cached_bytes, 0, "{what}: bytes cached after drain:\n{s}");
    assert_eq!(s.span_free_bytes, 0, "{what}: spans left after trim:\n{s}");
    assert_eq!(
        s.free_bytes + s.metadata_bytes,
        s.managed_bytes,
        "{what}: pages not back in the page heap:\n{s}"
    );
    assert_eq!(s.bad_frees, 0);
}

fn rounds() -> u64 {
    env_u64("SPANHEAP_STRESS_ROUNDS", 4)
}

/// The exchange pattern on `threads` threads.
fn exchange(threads: usize) {
    let (heap, _backing) = heap(512);
    let slots: Vec<AtomicPtr<u8>> = (0..threads * 256)
        .map(|_| AtomicPtr::new(ptr::null_mut()))
        .collect();
    let ops = AtomicU64::new(0);
    let rounds = rounds();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (heap, slots, ops) = (&heap, &slots, &ops);
            scope.spawn(move || {
                let mut rng = Rng::new(0x5e55 + t as u64);
                let mut done = 0u64;
                for _ in 0..rounds {
                    let mut live = Vec::new();
                    for _ in 0..2_000 {
                        let object = allocate(heap, stress_size(&mut rng));
                        done += 1;
                        if rng.chance(250) {
                            // Hand it over; take whatever the slot held.
                            let slot = &slots[rng.below(slots.len())];
                            let old = slot.swap(object.0.as_ptr(), Ordering::AcqRel);
                            if let Some(old) = NonNull::new(old) {
                                live.push(Object(old));
                            }
                        } else {
                            live.push(object);
                        }
                        if live.len() > 500 && rng.chance(500) {
                            let victim = live.swap_remove(rng.below(live.len()));
                            free(heap, victim);
                            done += 1;
                        }
                    }
                    for object in live.drain(..) {
                        free(heap, object);
                        done += 1;
                    }
                }
                ops.fetch_add(done, Ordering::Relaxed);
            });
        }
    });
    let mut left = 0;
    for slot in &slots {
        if let Some(object) = NonNull::new(slot.swap(ptr::null_mut(), Ordering::AcqRel)) {
            free(&heap, Object(object));
            left += 1;
        }
    }
    let ops = ops.load(Ordering::Relaxed) + left;
    println!(
        "exchange, {threads} threads: {ops} operations in {:?}",
        start.elapsed()
    );
    for cpu in 0..MAX_CPUS {
        if let Some(c) = heap.cpu_stats(cpu) {
            println!("  cpu {cpu}: {c}");
        }
    }
    assert_all_returned(&heap, &format!("exchange on {threads} threads"));
}

#[test]
fn exchange_2_threads() {
    exchange(2);
}

#[test]
fn exchange_4_threads() {
    exchange(4);
}

#[test]
fn exchange_8_threads() {
    exchange(8);
}

/// One producer, one consumer: every object freed by the other thread.
#[test]
fn producer_consumer() {
    let (heap, _backing) = heap(256);
    let batches = 25 * rounds();
    let (tx, rx) = mpsc::sync_channel::<Vec<Object>>(4);
    let start = Instant::now();
    let freed = std::thread::scope(|scope| {
        let heap = &heap;
        scope.spawn(move || {
            let mut rng = Rng::new(0x9a0d);
            for _ in 0..batches {
                let batch = (0..1_000)
                    .map(|_| {
                        let top = 1 << (4 + rng.below(8));
                        allocate(heap, rng.range(8, top))
                    })
                    .collect();
                tx.send(batch).unwrap();
            }
        });
        let consumer = scope.spawn(move || {
            let mut freed = 0u64;
            for batch in rx {
                for object in batch {
                    free(heap, object);
                    freed += 1;
                }
            }
            freed
        });
        consumer.join().unwrap()
    });
    assert_eq!(freed, batches * 1_000);
    println!(
        "producer/consumer: {} operations in {:?}",
        2 * freed,
        start.elapsed()
    );
    assert_all_returned(&heap, "producer/consumer");
}
