//! Throughput with cross-thread frees, one thread against two (issue 4's scaling goal:
//! two threads at least 1.8x one on this 2-core machine, where the global-lock peers
//! slow down).
//!
//! Workload (larson-like, with hand-off): each thread owns 1000 slots. A step picks a
//! random slot, frees the object in it (if any), allocates a new one of 16 to 1024
//! bytes (uniform), writes its size into its first word and touches its last byte,
//! and keeps it in the slot; with hand-off, every fourth new object (`--handoff N`:
//! every N-th) goes instead to the next thread's inbox (a single-producer
//! single-consumer ring), and every step frees one object from the thread's own inbox
//! if there is one. Both variants run by default. With one thread the inbox is
//! its own, so a step does the same work at any thread count. Throughput = all
//! threads' steps / wall time from a common start.
//!
//! Every allocator gets its own fresh 64 MiB region and is used through
//! `GlobalAlloc`: `spanheap` (`SpanHeap<HostThreads>`: each thread is a CPU with its
//! own cache), `spanheap-uncached` (`SpanHeap<Uncached>`: centrals' spin locks only),
//! `talc` (spin lock), `buddy` (`buddy_system_allocator::LockedHeap`, spin::Mutex),
//! `lla` (`linked_list_allocator::LockedHeap`).
//!
//! ```text
//! cargo bench --bench threads                     # all, 1 and 2 threads, medians of 3
//! cargo bench --bench threads -- --steps 200000 --runs 5 --only spanheap
//! ```

mod common;

use common::{Region, Rng, Subject, Talc};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

const SLOTS: usize = 1000;
const RING: usize = 4096;
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 1024;
const DEFAULT_STEPS: u64 = 4_000_000;
/// linked_list_allocator walks its hole list on every call: it runs this many times
/// fewer steps.
const LLA_DIVISOR: u64 = 20;

/// A cache-line-padded value (two lines: adjacent-line prefetch), so that the
/// harness's own counters do not bounce between the cores.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A single-producer single-consumer ring of object addresses.
struct Inbox {
    slots: Vec<AtomicUsize>,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            slots: (0..RING).map(|_| AtomicUsize::new(0)).collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
        }
    }

    /// `false` when full (the producer keeps the object).
    fn push(&self, addr: usize) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail - self.head.load(Ordering::Acquire) == RING {
            return false;
        }
        self.slots[tail % RING].store(addr, Ordering::Relaxed);
        self.tail.store(tail + 1, Ordering::Release);
        true
    }

    fn pop(&self) -> Option<usize> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let addr = self.slots[head % RING].load(Ordering::Relaxed);
        self.head.store(head + 1, Ordering::Release);
        Some(addr)
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Frees an object this workload made (its size is in its first word).
///
/// # Safety
///
/// `addr` is a live object of `a` from `new_object`.
unsafe fn free_object<A: GlobalAlloc>(a: &A, addr: usize) {
    // SAFETY: the first word holds the size (caller).
    let size = unsafe { (addr as *const usize).read() };
    assert!(
        (MIN_SIZE..=MAX_SIZE).contains(&size),
        "object {addr:#x} corrupted"
    );
    // SAFETY: allocated by `a` with this layout (caller).
    unsafe { a.dealloc(addr as *mut u8, layout(size)) };
}

fn new_object<A: GlobalAlloc>(a: &A, rng: &mut Rng) -> usize {
    let size = MIN_SIZE + (rng.next() % (MAX_SIZE - MIN_SIZE + 1) as u64) as usize;
    // SAFETY: non-zero size.
    let p = unsafe { a.alloc(layout(size)) };
    assert!(!p.is_null(), "out of memory");
    // SAFETY: `size` bytes at `p` are ours.
    unsafe {
        (p as *mut usize).write(size);
        p.add(size - 1).write(1);
    }
    p as usize
}

/// One thread's share: `steps` steps, every `handoff`-th new object (0: none) to the
/// next thread.
struct Share<'a> {
    me: usize,
    inboxes: &'a [Inbox],
    steps: u64,
    handoff: u64,
    start: &'a Barrier,
}

fn worker<A: GlobalAlloc>(a: &A, share: Share<'_>) {
    let Share {
        me,
        inboxes,
        steps,
        handoff,
        start,
    } = share;
    let threads = inboxes.len();
    let mut rng = Rng(0x5eed_0004_0000_0000 + me as u64);
    let mut slots = vec![0usize; SLOTS];
    let next = &inboxes[(me + 1) % threads];
    let mine = &inboxes[me];
    start.wait();
    for step in 0..steps {
        let slot = (rng.next() % SLOTS as u64) as usize;
        if slots[slot] != 0 {
            // SAFETY: a live object we made.
            unsafe { free_object(a, slots[slot]) };
            slots[slot] = 0;
        }
        let object = new_object(a, &mut rng);
        if handoff == 0 || step % handoff != 0 || !next.push(object) {
            slots[slot] = object;
        }
        if let Some(received) = mine.pop() {
            // SAFETY: a live object another worker made and gave up.
            unsafe { free_object(a, received) };
        }
    }
    start.wait();
    // Every worker has stopped pushing: drain our inbox and slots.
    while let Some(received) = mine.pop() {
        // SAFETY: as above.
        unsafe { free_object(a, received) };
    }
    for object in slots.into_iter().filter(|&o| o != 0) {
        // SAFETY: as above.
        unsafe { free_object(a, object) };
    }
}

/// Steps per second of `threads` workers.
fn run<A: Subject + Sync>(threads: usize, steps: u64, handoff: u64) -> f64 {
    let region = Region::new();
    // SAFETY: `region` is used by nothing else and outlives `a` (dropped first).
    let a = unsafe { A::over(&region) };
    let inboxes: Vec<Inbox> = (0..threads).map(|_| Inbox::new()).collect();
    let start = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| {
        for me in 0..threads {
            let (a, inboxes, start) = (&*a, &inboxes, &start);
            let share = Share {
                me,
                inboxes,
                steps,
                handoff,
                start,
            };
            s.spawn(move || worker(a, share));
        }
        start.wait();
        let t = Instant::now();
        start.wait();
        t.elapsed()
    });
    drop(a);
    drop(region);
    (threads as u64 * steps) as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

type Runner = fn(usize, u64, u64) -> f64;

const ALL: [(&str, &str, Runner, u64); 5] = [
    (
        "spanheap",
        "spanheap::SpanHeap<HostThreads> (per-CPU caches)",
        run::<spanheap::SpanHeap<spanheap::platform::HostThreads>>,
        1,
    ),
    (
        "spanheap-uncached",
        "spanheap::SpanHeap<Uncached> (centrals only)",
        run::<spanheap::SpanHeap>,
        1,
    ),
    ("talc", "talc 5.1 (spin lock)", run::<Talc>, 1),
    (
        "buddy",
        "buddy_system_allocator 0.13 LockedHeap<32>",
        run::<buddy_system_allocator::LockedHeap<32>>,
        1,
    ),
    (
        "lla",
        "linked_list_allocator 0.10 LockedHeap",
        run::<linked_list_allocator::LockedHeap>,
        LLA_DIVISOR,
    ),
];

fn main() {
    let mut steps = DEFAULT_STEPS;
    let mut runs = 3;
    let mut only = None;
    let mut handoffs = vec![0, 4];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--steps" => steps = value().parse().expect("--steps N"),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--only" => only = Some(value()),
            "--handoff" => handoffs = vec![value().parse().expect("--handoff N")],
            "--bench" => {}
            _ => panic!("usage: threads [--steps N] [--runs N] [--only NAME] [--handoff N]"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "threads: {steps} steps per thread, medians of {runs}, {cores} cores; steps/s in millions"
    );
    for handoff in handoffs {
        println!();
        match handoff {
            0 => println!("no hand-off (every object freed by the thread that made it):"),
            n => println!("every {n}th new object handed to the other thread (freed there):"),
        }
        println!();
        println!("| allocator | 1 thread | 2 threads | 2 threads / 1 thread |");
        println!("|---|---:|---:|---:|");
        for (name, label, runner, divisor) in ALL {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let n = steps / divisor;
            let one = median((0..runs).map(|_| runner(1, n, handoff)).collect());
            let two = median((0..runs).map(|_| runner(2, n, handoff)).collect());
            println!(
                "| {label} | {:.2} | {:.2} | {:.2}x |",
                one / 1e6,
                two / 1e6,
                two / one
            );
        }
    }
}
