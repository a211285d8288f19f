//! Single-thread alloc+free pairs against the peers (issue 3).
//!
//! Workload: 10 000 live objects. Pre-fill them, then each step frees a uniformly
//! random live slot and allocates a new block into it, so the live set stays at
//! 10 000. Sizes are log-uniform over 16 B ..= 4 KiB (every octave equally likely,
//! log-uniform inside it too), alignment 8 (`--align N`: 16, 32, 64 or 128); the first
//! and last byte of each new block are written. The sequence of (slot, size) comes
//! from SplitMix64 with a fixed seed, so every allocator sees exactly the same
//! requests.
//!
//! Every allocator gets its own freshly allocated 64 MiB region (aligned to 2 MiB,
//! every page written once before the allocator sees it, so no page fault is timed),
//! and is driven through `GlobalAlloc`, the way a kernel's `#[global_allocator]` is:
//!
//! - `spanheap`: `SpanHeap<HostThreads>::new()` + `add_memory` (per-CPU caches, the
//!   benchmark thread is CPU 0);
//! - `spanheap-uncached`: `SpanHeap<Uncached>`: no caches, every operation through a
//!   central's spin lock;
//! - `talc`: `talc::TalcLock<spinning_top::RawSpinlock, Manual>` over a claimed heap
//!   (the lock its documentation recommends);
//! - `lla`: `linked_list_allocator::LockedHeap` (spinning_top spinlock);
//! - `buddy`: `buddy_system_allocator::LockedHeap<32>` (spin::Mutex);
//! - `mimalloc`, `jemalloc`, `system`: the process-level references (their memory
//!   from the OS, not from the region): for time only;
//! - `floor`: not an allocator: a lock-free LIFO list of fixed 4 KiB cells, the least
//!   work any allocator can do. It measures the harness (PRNG, touches, loop).
//!
//! Usage:
//!
//! The workload itself is `common::pairs` (the suite's `pairs` and `growth` run it
//! too); this binary is its command line, for quick comparisons and for callgrind.
//!
//! ```text
//! cargo bench --bench pairs                                   # all, 5 runs each, table
//! cargo bench --bench pairs -- --only talc --pairs 200000     # one allocator, one run
//! options: --only NAME  --pairs N  --runs N  --live N  --seed N  --size N
//!
//! `--size N` makes every request N bytes; `--live 1 --size 64` is the hot 64-byte
//! alloc+free pair of issue 4 (the object goes back to the cache and comes out
//! again).
//! ```
//!
//! With `--only`, the process does setup + pre-fill + N pairs + teardown and nothing
//! else, so two runs with different N under `valgrind --tool=callgrind` differ only in
//! the pairs: `benches/callgrind.sh` uses that.

mod common;

use common::pairs::{State, Workload};
use common::probe::NoProbe;
use common::{median, with_subject, Region, Subject, Visitor, Which, REGION_SIZE};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::ptr;
use std::time::Instant;

const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 4096;
const DEFAULT_LIVE: usize = 10_000;
const DEFAULT_PAIRS: u64 = 1_000_000;
/// linked_list_allocator is first fit over a list of thousands of holes (~12 us a pair
/// here): it runs this many times fewer pairs so that its five runs stay under ~10 s.
const LLA_DIVISOR: u64 = 10;
const DEFAULT_RUNS: usize = 5;
const DEFAULT_SEED: u64 = 0x5eed_0003_0000_0001;

// ---------------------------------------------------------------------------------
// The floor

/// The floor: a LIFO list of fixed 4 KiB cells, no lock, no size logic.
struct Floor {
    head: Cell<*mut u8>,
}

impl Subject for Floor {
    unsafe fn over(region: &Region) -> Box<Self> {
        let mut head = ptr::null_mut::<u8>();
        for off in (0..region.size()).step_by(MAX_SIZE).rev() {
            // SAFETY: a cell inside the region, aligned to 4 KiB.
            let cell = unsafe { region.base.add(off) };
            // SAFETY: as above.
            unsafe { cell.cast::<*mut u8>().write(head) };
            head = cell;
        }
        Box::new(Floor {
            head: Cell::new(head),
        })
    }
}

// SAFETY: hands out disjoint 4 KiB cells; single-threaded use only (not Sync).
unsafe impl GlobalAlloc for Floor {
    #[inline]
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        let p = self.head.get();
        if !p.is_null() {
            // SAFETY: a free cell holds the next pointer.
            self.head.set(unsafe { p.cast::<*mut u8>().read() });
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: a cell we handed out, now free.
        unsafe { p.cast::<*mut u8>().write(self.head.get()) };
        self.head.set(p);
    }
}

// ---------------------------------------------------------------------------------
// Driver

struct Run {
    ns_per_pair: f64,
    bytes: u64,
}

fn run_once<A: Subject>(name: &str, w: &Workload, n: u64) -> Run {
    let region = Region::new();
    // SAFETY: `region` is used by nothing else and is dropped after `a` (below).
    let a = unsafe { A::over(&region) };
    let mut state = State::prefill(name, &*a, w);
    let t = Instant::now();
    state.pairs(name, &*a, w, &mut NoProbe, black_box(n));
    let elapsed = t.elapsed();
    let bytes = state.bytes;
    state.free_all(&*a);
    drop(a);
    drop(region);
    Run {
        ns_per_pair: elapsed.as_nanos() as f64 / n as f64,
        bytes,
    }
}

/// An allocator of the common list, or the floor.
#[derive(Clone, Copy, PartialEq)]
enum Entry {
    Subject(Which),
    Floor,
}

impl Entry {
    fn all() -> impl Iterator<Item = Entry> {
        Which::ALL
            .into_iter()
            .map(Entry::Subject)
            .chain([Entry::Floor])
    }

    fn name(self) -> &'static str {
        match self {
            Entry::Subject(w) => w.name(),
            Entry::Floor => "floor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Entry::Subject(w) => w.label(),
            Entry::Floor => "floor: LIFO list of 4 KiB cells (harness cost)",
        }
    }
}

struct Once<'a> {
    w: &'a Workload,
    n: u64,
}

impl Visitor for Once<'_> {
    type Out = Run;
    fn visit<A: Subject + Sync>(&mut self, which: Which) -> Run {
        run_once::<A>(which.name(), self.w, self.n)
    }
}

fn run_entry(entry: Entry, w: &Workload, n: u64) -> Run {
    match entry {
        Entry::Subject(which) => with_subject(which, &mut Once { w, n }),
        Entry::Floor => run_once::<Floor>("floor", w, n),
    }
}

struct Options {
    only: Option<Entry>,
    pairs: Option<u64>,
    runs: Option<usize>,
    live: usize,
    seed: u64,
    size: Option<usize>,
    align: usize,
}

fn usage() -> ! {
    let names: Vec<_> = Entry::all().map(Entry::name).collect();
    eprintln!(
        "usage: pairs [--only {}] [--pairs N] [--runs N] [--live N] [--seed N] [--size N] [--align N]",
        names.join("|")
    );
    std::process::exit(1)
}

fn parse_args() -> Options {
    let mut o = Options {
        only: None,
        pairs: None,
        runs: None,
        live: DEFAULT_LIVE,
        seed: DEFAULT_SEED,
        size: None,
        align: 8,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--only" => {
                let v = value();
                o.only = Some(
                    Entry::all()
                        .find(|e| e.name() == v)
                        .unwrap_or_else(|| usage()),
                );
            }
            "--pairs" => o.pairs = Some(value().parse().unwrap_or_else(|_| usage())),
            "--runs" => o.runs = Some(value().parse().unwrap_or_else(|_| usage())),
            "--live" => o.live = value().parse().unwrap_or_else(|_| usage()),
            "--seed" => o.seed = value().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = Some(value().parse().unwrap_or_else(|_| usage())),
            "--align" => o.align = value().parse().unwrap_or_else(|_| usage()),
            // `cargo bench` passes `--bench`; a libtest-style filter is ignored.
            "--bench" => {}
            s if s.starts_with('-') => usage(),
            _ => {}
        }
    }
    if o.live == 0 || o.live > REGION_SIZE / MAX_SIZE || !common::ALIGNS.contains(&o.align) {
        usage();
    }
    o
}

fn main() {
    let o = parse_args();
    let w = match o.size {
        Some(size) if (1..=MAX_SIZE).contains(&size) => Workload::fixed(size, o.live, o.seed),
        Some(_) => usage(),
        None => Workload::log_uniform(MIN_SIZE, MAX_SIZE, o.live, o.seed),
    }
    .aligned(o.align);

    if let Some(entry) = o.only {
        let n = o.pairs.unwrap_or(DEFAULT_PAIRS);
        let runs = o.runs.unwrap_or(1);
        println!("=== pairs: {} ({})", entry.name(), entry.label());
        println!(
            "=== {n} pairs x {runs} run(s), {} live, log-uniform 16..=4096 B, align {}, seed {:#x}",
            w.live, w.align, w.seed
        );
        println!("=== per run: 64 MiB region + pre-fill {} objects (setup), {n} pairs (measured), free all (teardown)", w.live);
        for r in 0..runs {
            let run = run_entry(entry, &w, n);
            println!(
                "run {r}: {:.1} ns/pair (requested bytes {})",
                run.ns_per_pair, run.bytes
            );
        }
        println!("=== end pairs: {}", entry.name());
        return;
    }

    let runs = o.runs.unwrap_or(DEFAULT_RUNS);
    let base_pairs = o.pairs.unwrap_or(DEFAULT_PAIRS);
    println!("machine: {}", common::machine());
    println!(
        "workload: {} live objects, log-uniform sizes 16..=4096 B, align {}, first+last byte written, seed {:#x}; \
         median of {runs} runs, each over a fresh 64 MiB region",
        w.live, w.align, w.seed
    );
    println!();

    // Runs are interleaved (round r of every allocator, then round r + 1) so that a
    // burst of noise on a shared machine hits all allocators alike.
    let entries: Vec<Entry> = Entry::all().collect();
    let pairs_of = |entry: Entry| {
        if entry == Entry::Subject(Which::Lla) {
            (base_pairs / LLA_DIVISOR).max(1)
        } else {
            base_pairs
        }
    };
    let mut ns = vec![Vec::new(); entries.len()];
    let mut bytes = vec![0u64; entries.len()];
    for r in 0..runs {
        for (i, &entry) in entries.iter().enumerate() {
            let run = run_entry(entry, &w, pairs_of(entry));
            eprintln!(
                "round {r}: {}: {:.1} ns/pair",
                entry.name(),
                run.ns_per_pair
            );
            ns[i].push(run.ns_per_pair);
            bytes[i] = run.bytes;
        }
    }
    let mut rows = Vec::new();
    for (i, &entry) in entries.iter().enumerate() {
        let ns = &mut ns[i];
        let (lo, hi) = (
            ns.iter().cloned().fold(f64::MAX, f64::min),
            ns.iter().cloned().fold(0.0, f64::max),
        );
        let med = median(ns);
        rows.push((entry, pairs_of(entry), med, lo, hi, bytes[i]));
    }
    // Same requests for everyone (lla runs a prefix of the sequence).
    let full = rows.iter().filter(|r| r.1 == base_pairs).map(|r| r.5);
    assert!(
        full.clone().all(|b| Some(b) == full.clone().next()),
        "workloads differ"
    );

    let span = rows
        .iter()
        .find(|r| r.0 == Entry::Subject(Which::SpanHeap))
        .map(|r| r.2);
    println!("| allocator | pairs/run | ns/pair (median) | min..max | vs spanheap |");
    println!("|---|---:|---:|---:|---:|");
    for (entry, n, med, lo, hi, _) in &rows {
        let ratio = span.map_or("-".to_string(), |s| format!("{:.2}x", med / s));
        println!(
            "| {} | {n} | {med:.1} | {lo:.1}..{hi:.1} | {ratio} |",
            entry.label()
        );
    }
    println!();
    println!("(ratio = allocator ns/pair / spanheap ns/pair; > 1 means slower than spanheap. linked_list_allocator runs 1/{LLA_DIVISOR} of the pairs.)");
}
