//! The benchmark's workloads, run by every CPU of a case on its own share, each with
//! content checks: every object gets an address- and size-derived stamp in its first
//! and last 8 bytes when allocated, and both are checked before it is freed, so an
//! allocator that hands out overlapping or foreign memory fails the case (panic).
//!
//! - [`pairs`]: 10 000 live objects per CPU; each operation frees a random one and
//!   allocates a new one in its slot (sizes 16 B to 4 KiB, each power-of-two octave
//!   equally likely, uniform inside it);
//! - [`larson`]: larson's per-thread loop (mimalloc-bench runs it with 8..1000 B):
//!   1 000 slots per CPU, each operation replaces a random slot with a new object of
//!   8 to 1000 bytes (uniform); larson's hand-off of a thread's slots to the next
//!   thread is left to [`xfree`];
//! - [`xfree`]: 1 000 live objects per CPU (16 B to 1 KiB); each operation replaces a
//!   random slot, and every fourth displaced object goes into a batch instead of being
//!   freed: every 32 such objects the batch is handed to the next CPU (`cpu + 1` modulo
//!   the CPU count, itself on one CPU) through a ring, and every CPU frees the batches
//!   it receives as they come.
//!
//! One operation is one allocation and one free (in `xfree` one free in four happens
//! on the receiving CPU). All alignments are 8. Each CPU's random sequence depends on
//! the workload and the CPU only, so every allocator sees the same requests.
//!
//! # Invariants
//!
//! - between `Cx::start` and `Cx::stop` a CPU runs exactly `cx.ops` operations;
//! - every object allocated in a case is freed in the same case (after `Cx::stop` each
//!   CPU frees what it still holds; the xfree rings are empty when the case ends);
//! - ring `i` has one producer, CPU `i - 1` (mod CPUs), and one consumer, CPU `i`.

use super::subjects::{Subject, MAX_BENCH_CPUS};
use super::sync::{rdtsc, Barrier, CpuRecord};
use crate::println;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Once;

/// Live objects per CPU in [`pairs`].
pub const PAIRS_LIVE: usize = 10_000;
/// Slots per CPU in [`larson`].
pub const LARSON_SLOTS: usize = 1_000;
/// Live objects per CPU in [`xfree`].
pub const XFREE_LIVE: usize = 1_000;
/// Objects per hand-off batch in [`xfree`].
pub const BATCH: usize = 32;
/// Batches a ring holds.
const RING_BATCHES: usize = 64;

/// One CPU's view of the case it runs.
pub struct Cx<'a> {
    /// This CPU's benchmark index (0 = bootstrap CPU).
    pub cpu: usize,
    /// CPUs in the case.
    pub cpus: usize,
    /// Operations this CPU runs between `start` and `stop`.
    pub ops: u64,
    /// Seed of this CPU's random sequence.
    pub seed: u64,
    /// The subject's name, for failure messages.
    pub name: &'static str,
    /// The barrier every CPU of the case meets at.
    pub barrier: &'a Barrier,
    /// Where this CPU's times go.
    pub record: &'a CpuRecord,
}

impl Cx<'_> {
    /// Meets the other CPUs, then starts this CPU's clock.
    /// The bootstrap CPU first prints `bench: measure` (its set-up is done): the host
    /// samples the vCPU threads' CPU time at the marker lines.
    fn start(&self) {
        if self.cpu == 0 {
            println!("bench: measure");
        }
        self.barrier.wait(self.cpus);
        self.record.start.store(rdtsc(), Ordering::Relaxed);
    }

    /// Stops this CPU's clock, then waits for the other CPUs, running `idle` meanwhile.
    /// The bootstrap CPU then prints `bench: measured`.
    fn stop(&self, idle: impl FnMut()) {
        self.record.end.store(rdtsc(), Ordering::Relaxed);
        self.record.ops.store(self.ops, Ordering::Relaxed);
        self.barrier.wait_with(self.cpus, idle);
        if self.cpu == 0 {
            println!("bench: measured");
        }
    }
}

/// Allocations and frees one CPU made in a case.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Allocations (set-up and measured).
    pub allocs: u64,
    /// Frees (measured, received batches and tear-down).
    pub frees: u64,
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `x * n / 2^32` for the low 32 bits of `x`: a uniform index below `n`.
#[inline(always)]
fn below(x: u64, n: usize) -> usize {
    (((x as u32) as u64 * n as u64) >> 32) as usize
}

/// A size from 32 random bits: one of `octaves` power-of-two octaves from 16 B
/// (`16 << k`, equally likely, from the low 16 bits), uniform inside it (the high 16
/// bits). With 8 octaves: 16 B to 4 KiB - 1.
#[inline(always)]
fn octave_size(bits: u64, octaves: u64) -> usize {
    let k = ((bits & 0xFFFF) * octaves) >> 16;
    let base = 16u64 << k;
    (base + ((((bits >> 16) & 0xFFFF) * base) >> 16)) as usize
}

/// A live object: where, and the size it was allocated with.
#[derive(Clone, Copy)]
struct Obj {
    addr: usize,
    size: usize,
}

impl Obj {
    const NONE: Obj = Obj { addr: 0, size: 0 };
}

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: sizes are at least 8 and far below isize::MAX; 8 is a power of two.
    unsafe { Layout::from_size_align_unchecked(size, 8) }
}

/// The stamp of an object at `addr` of `size` bytes.
#[inline(always)]
fn stamp(addr: usize, size: usize) -> u64 {
    (addr as u64 ^ (size as u64).rotate_left(40)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cold]
#[inline(never)]
fn out_of_memory(name: &str, size: usize) -> ! {
    panic!("{name}: allocation of {size} bytes failed (region exhausted)");
}

#[cold]
#[inline(never)]
fn corrupted(name: &str, obj: Obj, head: u64, tail: u64) -> ! {
    panic!(
        "{name}: object {:#x} ({} bytes) overwritten: head {head:#x} tail {tail:#x}, expected {:#x}",
        obj.addr,
        obj.size,
        stamp(obj.addr, obj.size)
    );
}

/// Allocates `size` bytes from `s` and stamps them.
#[inline(always)]
fn take<S: Subject>(s: &S, cx: &Cx<'_>, size: usize) -> Obj {
    // SAFETY: non-zero size; `cx.cpu` is the running CPU.
    let ptr = unsafe { s.alloc(cx.cpu, layout(size)) };
    if ptr.is_null() {
        out_of_memory(cx.name, size);
    }
    let addr = ptr as usize;
    let tag = stamp(addr, size);
    // SAFETY: a fresh block of `size` >= 8 bytes, 8-aligned; the tail word is inside
    // it (written unaligned) when the block has 16 bytes or more.
    unsafe {
        (addr as *mut u64).write(tag);
        if size >= 16 {
            ((addr + size - 8) as *mut u64).write_unaligned(!tag);
        }
    }
    Obj { addr, size }
}

/// Checks `obj`'s stamps and frees it to `s`.
#[inline(always)]
fn give<S: Subject>(s: &S, cx: &Cx<'_>, obj: Obj) {
    let tag = stamp(obj.addr, obj.size);
    // SAFETY: a live object of ours, stamped by `take`.
    let (head, tail) = unsafe {
        let head = (obj.addr as *const u64).read();
        let tail = if obj.size >= 16 {
            ((obj.addr + obj.size - 8) as *const u64).read_unaligned()
        } else {
            !tag
        };
        (head, tail)
    };
    if head != tag || tail != !tag {
        corrupted(cx.name, obj, head, tail);
    }
    // SAFETY: allocated by `take` from `s` with this layout, never used again.
    unsafe { s.free(cx.cpu, obj.addr as *mut u8, layout(obj.size)) };
}

/// See the module docs.
pub fn pairs<S: Subject>(s: &S, cx: &Cx<'_>) -> Tally {
    let mut rng = Rng(cx.seed);
    let mut live: Vec<Obj> = (0..PAIRS_LIVE)
        .map(|_| take(s, cx, octave_size(rng.next() >> 32, 8)))
        .collect();
    cx.start();
    for _ in 0..cx.ops {
        let r = rng.next();
        let slot = &mut live[below(r, PAIRS_LIVE)];
        give(s, cx, *slot);
        *slot = take(s, cx, octave_size(r >> 32, 8));
    }
    cx.stop(|| {});
    let tally = Tally {
        allocs: PAIRS_LIVE as u64 + cx.ops,
        frees: PAIRS_LIVE as u64 + cx.ops,
    };
    for obj in live {
        give(s, cx, obj);
    }
    tally
}

/// See the module docs.
pub fn larson<S: Subject>(s: &S, cx: &Cx<'_>) -> Tally {
    let mut rng = Rng(cx.seed);
    let size = |r: u64| 8 + below(r >> 32, 993);
    let mut slots: Vec<Obj> = (0..LARSON_SLOTS)
        .map(|_| take(s, cx, size(rng.next())))
        .collect();
    cx.start();
    for _ in 0..cx.ops {
        let r = rng.next();
        let slot = &mut slots[below(r, LARSON_SLOTS)];
        give(s, cx, *slot);
        *slot = take(s, cx, size(r));
    }
    cx.stop(|| {});
    for obj in slots {
        give(s, cx, obj);
    }
    Tally {
        allocs: LARSON_SLOTS as u64 + cx.ops,
        frees: LARSON_SLOTS as u64 + cx.ops,
    }
}

/// A batch of objects handed from one CPU to the next.
type Batch = [Obj; BATCH];

/// A single-producer single-consumer ring of batches (see the module invariants).
pub struct Ring {
    /// Batches taken by the consumer (on a cache line of its own).
    head: Padded,
    /// Batches published by the producer.
    tail: Padded,
    batches: Box<[UnsafeCell<Batch>]>,
}

#[repr(align(64))]
struct Padded(AtomicUsize);

// SAFETY: a batch slot is written by the one producer only while `tail - head` says
// it is free, and read by the one consumer only after `tail` published it (Release /
// Acquire on the counters); the producer and consumer are fixed (module invariant).
unsafe impl Sync for Ring {}

impl Ring {
    fn new() -> Self {
        Self {
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            batches: alloc::vec![[Obj::NONE; BATCH]; RING_BATCHES]
                .into_iter()
                .map(UnsafeCell::new)
                .collect(),
        }
    }

    /// Publishes `batch`; `false` when the ring is full. Producer only.
    fn push(&self, batch: &Batch) -> bool {
        let tail = self.tail.0.load(Ordering::Relaxed);
        if tail - self.head.0.load(Ordering::Acquire) == RING_BATCHES {
            return false;
        }
        // SAFETY: the slot is free (the consumer is done with it: Acquire on `head`)
        // and only this producer writes slots.
        unsafe { *self.batches[tail % RING_BATCHES].get() = *batch };
        self.tail.0.store(tail + 1, Ordering::Release);
        true
    }

    /// Takes the oldest batch, if any, and passes it to `f`. Consumer only.
    fn pop(&self, f: impl FnOnce(&Batch)) -> bool {
        let head = self.head.0.load(Ordering::Relaxed);
        if head == self.tail.0.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: the producer published this slot (Acquire on `tail`) and does not
        // touch it until `head` moves past it.
        f(unsafe { &*self.batches[head % RING_BATCHES].get() });
        self.head.0.store(head + 1, Ordering::Release);
        true
    }
}

/// The xfree rings, one per CPU (ring `i` is what CPU `i` receives).
static RINGS: Once<Vec<Ring>> = Once::new();

/// Makes the xfree rings; the bootstrap CPU calls it once before any case.
pub fn init_rings() {
    RINGS.call_once(|| (0..MAX_BENCH_CPUS).map(|_| Ring::new()).collect());
}

/// See the module docs.
pub fn xfree<S: Subject>(s: &S, cx: &Cx<'_>) -> Tally {
    let rings = RINGS.get().expect("init_rings ran");
    let inbox = &rings[cx.cpu];
    let outbox = &rings[(cx.cpu + 1) % cx.cpus];
    let mut rng = Rng(cx.seed);
    let mut frees = 0u64;
    let receive = |frees: &mut u64| {
        inbox.pop(|batch| {
            for &obj in batch {
                give(s, cx, obj);
            }
            *frees += BATCH as u64;
        })
    };
    let mut live: Vec<Obj> = (0..XFREE_LIVE)
        .map(|_| take(s, cx, octave_size(rng.next() >> 32, 6)))
        .collect();
    let mut batch = [Obj::NONE; BATCH];
    let mut batched = 0;
    cx.start();
    for op in 0..cx.ops {
        let r = rng.next();
        let slot = &mut live[below(r, XFREE_LIVE)];
        if op % 4 == 0 {
            batch[batched] = *slot;
            batched += 1;
            if batched == BATCH {
                // A full ring drains as its consumer frees; free what we receive
                // meanwhile, so that a cycle of full rings cannot stall.
                while !outbox.push(&batch) {
                    receive(&mut frees);
                    core::hint::spin_loop();
                }
                batched = 0;
            }
        } else {
            give(s, cx, *slot);
            frees += 1;
        }
        *slot = take(s, cx, octave_size(r >> 32, 6));
        receive(&mut frees);
    }
    // Keep freeing what the others hand over until they are all done.
    cx.stop(|| {
        receive(&mut frees);
    });
    // Nobody sends any more: what is left is freed here.
    while receive(&mut frees) {}
    for &obj in batch[..batched].iter().chain(live.iter()) {
        give(s, cx, obj);
        frees += 1;
    }
    Tally {
        allocs: XFREE_LIVE as u64 + cx.ops,
        frees,
    }
}
