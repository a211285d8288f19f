//! Single-thread alloc+free pairs against the peers (issue 3).
//!
//! Workload: 10 000 live objects. Pre-fill them, then each step frees a uniformly
//! random live slot and allocates a new block into it, so the live set stays at
//! 10 000. Sizes are log-uniform over 16 B ..= 4 KiB (every octave equally likely,
//! log-uniform inside it too), alignment 8; the first and last byte of each new block
//! are written. The sequence of (slot, size) comes from SplitMix64 with a fixed seed, so
//! every allocator sees exactly the same requests.
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
//! - `mimalloc`: the process-level reference (`mimalloc::MiMalloc`, its memory from
//!   the OS, not from the region): for time only;
//! - `floor`: not an allocator: a lock-free LIFO list of fixed 4 KiB cells, the least
//!   work any allocator can do. It measures the harness (PRNG, touches, loop).
//!
//! Usage:
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

use common::{Region, Rng, Subject, Talc, REGION_SIZE};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::ptr;
use std::time::Instant;

const MIN_SIZE: f64 = 16.0;
const MAX_SIZE: usize = 4096;
const OBJECT_ALIGN: usize = 8;
const SIZE_TABLE_BITS: u32 = 12;
const DEFAULT_LIVE: usize = 10_000;
const DEFAULT_PAIRS: u64 = 1_000_000;
/// linked_list_allocator is first fit over a list of thousands of holes (~12 us a pair
/// here): it runs this many times fewer pairs so that its five runs stay under ~10 s.
const LLA_DIVISOR: u64 = 10;
const DEFAULT_RUNS: usize = 5;
const DEFAULT_SEED: u64 = 0x5eed_0003_0000_0001;

// ---------------------------------------------------------------------------------
// Workload

/// Log-uniform sizes over [16, 4096]: entry i is 16 * 256^((i + 0.5) / 4096), rounded.
fn size_table() -> Vec<u32> {
    let n = 1usize << SIZE_TABLE_BITS;
    let octaves = (MAX_SIZE as f64 / MIN_SIZE).log2();
    (0..n)
        .map(|i| {
            let u = (i as f64 + 0.5) / n as f64;
            let s = (MIN_SIZE * (octaves * u).exp2()).round() as usize;
            s.clamp(MIN_SIZE as usize, MAX_SIZE) as u32
        })
        .collect()
}

struct Workload {
    sizes: Vec<u32>,
    live: usize,
    seed: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    ptr: *mut u8,
    size: usize,
}

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: sizes are 16..=4096 and the alignment is a power of two.
    unsafe { Layout::from_size_align_unchecked(size, OBJECT_ALIGN) }
}

/// Writes the first and the last byte of a new block.
#[inline(always)]
fn touch(p: *mut u8, size: usize) {
    // SAFETY: `p` is a fresh block of `size` >= 1 bytes.
    unsafe {
        ptr::write_volatile(p, size as u8);
        ptr::write_volatile(p.add(size - 1), size as u8);
    }
}

#[cold]
#[inline(never)]
fn out_of_memory(name: &str, size: usize) -> ! {
    eprintln!("{name}: allocation of {size} bytes failed (64 MiB region exhausted?)");
    std::process::exit(2)
}

#[inline(always)]
fn next_request(rng: &mut Rng, sizes: &[u32], live: usize) -> (usize, usize) {
    let r = rng.next();
    let slot = (((r as u32) as u64 * live as u64) >> 32) as usize;
    let size = sizes[(r >> (64 - SIZE_TABLE_BITS)) as usize] as usize;
    (slot, size)
}

fn prefill<A: GlobalAlloc>(name: &str, a: &A, w: &Workload, rng: &mut Rng) -> Vec<Slot> {
    (0..w.live)
        .map(|_| {
            let (_, size) = next_request(rng, &w.sizes, w.live);
            // SAFETY: non-zero size.
            let ptr = unsafe { a.alloc(layout(size)) };
            if ptr.is_null() {
                out_of_memory(name, size);
            }
            touch(ptr, size);
            Slot { ptr, size }
        })
        .collect()
}

/// The measured loop. Returns the sum of requested sizes (identical for every
/// allocator: a check that they all ran the same sequence).
#[inline(never)]
fn pairs<A: GlobalAlloc>(
    name: &str,
    a: &A,
    w: &Workload,
    rng: &mut Rng,
    live: &mut [Slot],
    n: u64,
) -> u64 {
    let mut bytes = 0u64;
    for _ in 0..n {
        let (slot, size) = next_request(rng, &w.sizes, live.len());
        let old = live[slot];
        // SAFETY: `old` was allocated by `a` with this layout and is freed once.
        unsafe { a.dealloc(old.ptr, layout(old.size)) };
        // SAFETY: non-zero size.
        let ptr = unsafe { a.alloc(layout(size)) };
        if ptr.is_null() {
            out_of_memory(name, size);
        }
        touch(ptr, size);
        live[slot] = Slot { ptr, size };
        bytes += size as u64;
    }
    bytes
}

fn free_all<A: GlobalAlloc>(a: &A, live: Vec<Slot>) {
    for s in live {
        // SAFETY: allocated by `a` with this layout, freed once.
        unsafe { a.dealloc(s.ptr, layout(s.size)) };
    }
}

// ---------------------------------------------------------------------------------
// References and the floor

/// mimalloc, the process-level reference: it takes its memory from the OS, not from
/// the region (a reference for time, not for memory use).
impl Subject for mimalloc::MiMalloc {
    unsafe fn over(_region: &Region) -> Box<Self> {
        Box::new(mimalloc::MiMalloc)
    }
}

/// The floor: a LIFO list of fixed 4 KiB cells, no lock, no size logic.
struct Floor {
    head: Cell<*mut u8>,
}

impl Subject for Floor {
    unsafe fn over(region: &Region) -> Box<Self> {
        let mut head = ptr::null_mut::<u8>();
        for off in (0..REGION_SIZE).step_by(MAX_SIZE).rev() {
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
    let mut rng = Rng(w.seed);
    let mut live = prefill(name, &*a, w, &mut rng);
    let t = Instant::now();
    let bytes = pairs(name, &*a, w, &mut rng, &mut live, black_box(n));
    let elapsed = t.elapsed();
    free_all(&*a, live);
    drop(a);
    drop(region);
    Run {
        ns_per_pair: elapsed.as_nanos() as f64 / n as f64,
        bytes,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    SpanHeap,
    Uncached,
    Talc,
    Lla,
    Buddy,
    Mimalloc,
    Floor,
}

const ALL: [(Which, &str, &str); 7] = [
    (
        Which::SpanHeap,
        "spanheap",
        "spanheap::SpanHeap<HostThreads> (per-CPU caches)",
    ),
    (
        Which::Uncached,
        "spanheap-uncached",
        "spanheap::SpanHeap<Uncached> (centrals only)",
    ),
    (
        Which::Talc,
        "talc",
        "talc 5.1 TalcLock<spinning_top::RawSpinlock, Manual>",
    ),
    (
        Which::Buddy,
        "buddy",
        "buddy_system_allocator 0.13 LockedHeap<32>",
    ),
    (Which::Lla, "lla", "linked_list_allocator 0.10 LockedHeap"),
    (
        Which::Mimalloc,
        "mimalloc",
        "mimalloc 0.1 (process allocator, reference; not over the region)",
    ),
    (
        Which::Floor,
        "floor",
        "floor: LIFO list of 4 KiB cells (harness cost)",
    ),
];

fn run_which(which: Which, name: &str, w: &Workload, n: u64) -> Run {
    match which {
        Which::SpanHeap => {
            run_once::<spanheap::SpanHeap<spanheap::platform::HostThreads>>(name, w, n)
        }
        Which::Uncached => run_once::<spanheap::SpanHeap>(name, w, n),
        Which::Talc => run_once::<Talc>(name, w, n),
        Which::Lla => run_once::<linked_list_allocator::LockedHeap>(name, w, n),
        Which::Buddy => run_once::<buddy_system_allocator::LockedHeap<32>>(name, w, n),
        Which::Mimalloc => run_once::<mimalloc::MiMalloc>(name, w, n),
        Which::Floor => run_once::<Floor>(name, w, n),
    }
}

struct Options {
    only: Option<Which>,
    pairs: Option<u64>,
    runs: Option<usize>,
    live: usize,
    seed: u64,
    size: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: pairs [--only spanheap|spanheap-uncached|talc|buddy|lla|mimalloc|floor] [--pairs N] [--runs N] [--live N] [--seed N] [--size N]"
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
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--only" => {
                let v = value();
                let w = ALL
                    .iter()
                    .find(|(_, n, _)| *n == v)
                    .unwrap_or_else(|| usage());
                o.only = Some(w.0);
            }
            "--pairs" => o.pairs = Some(value().parse().unwrap_or_else(|_| usage())),
            "--runs" => o.runs = Some(value().parse().unwrap_or_else(|_| usage())),
            "--live" => o.live = value().parse().unwrap_or_else(|_| usage()),
            "--seed" => o.seed = value().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = Some(value().parse().unwrap_or_else(|_| usage())),
            // `cargo bench` passes `--bench`; a libtest-style filter is ignored.
            "--bench" => {}
            s if s.starts_with('-') => usage(),
            _ => {}
        }
    }
    if o.live == 0 || o.live > REGION_SIZE / MAX_SIZE {
        usage();
    }
    o
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cpu}, {cpus} CPUs, loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() {
    let o = parse_args();
    let w = Workload {
        sizes: match o.size {
            Some(size) if (1..=MAX_SIZE).contains(&size) => vec![size as u32; 1 << SIZE_TABLE_BITS],
            Some(_) => usage(),
            None => size_table(),
        },
        live: o.live,
        seed: o.seed,
    };

    if let Some(which) = o.only {
        let (_, name, desc) = *ALL.iter().find(|(x, _, _)| *x == which).unwrap();
        let n = o.pairs.unwrap_or(DEFAULT_PAIRS);
        let runs = o.runs.unwrap_or(1);
        println!("=== pairs: {name} ({desc})");
        println!("=== {n} pairs x {runs} run(s), {} live, log-uniform 16..=4096 B, align {OBJECT_ALIGN}, seed {:#x}", w.live, w.seed);
        println!("=== per run: 64 MiB region + pre-fill {} objects (setup), {n} pairs (measured), free all (teardown)", w.live);
        for r in 0..runs {
            let run = run_which(which, name, &w, n);
            println!(
                "run {r}: {:.1} ns/pair (requested bytes {})",
                run.ns_per_pair, run.bytes
            );
        }
        println!("=== end pairs: {name}");
        return;
    }

    let runs = o.runs.unwrap_or(DEFAULT_RUNS);
    let base_pairs = o.pairs.unwrap_or(DEFAULT_PAIRS);
    println!("machine: {}", machine());
    println!(
        "workload: {} live objects, log-uniform sizes 16..=4096 B, align {OBJECT_ALIGN}, first+last byte written, seed {:#x}; \
         median of {runs} runs, each over a fresh 64 MiB region",
        w.live, w.seed
    );
    println!();

    // Runs are interleaved (round r of every allocator, then round r + 1) so that a
    // burst of noise on a shared machine hits all allocators alike.
    let pairs_of = |which: Which| {
        if which == Which::Lla {
            (base_pairs / LLA_DIVISOR).max(1)
        } else {
            base_pairs
        }
    };
    let mut ns = vec![Vec::new(); ALL.len()];
    let mut bytes = vec![0u64; ALL.len()];
    for r in 0..runs {
        for (i, &(which, name, _)) in ALL.iter().enumerate() {
            let run = run_which(which, name, &w, pairs_of(which));
            eprintln!("round {r}: {name}: {:.1} ns/pair", run.ns_per_pair);
            ns[i].push(run.ns_per_pair);
            bytes[i] = run.bytes;
        }
    }
    let mut rows = Vec::new();
    for (i, &(which, name, desc)) in ALL.iter().enumerate() {
        let ns = &mut ns[i];
        let (lo, hi) = (
            ns.iter().cloned().fold(f64::MAX, f64::min),
            ns.iter().cloned().fold(0.0, f64::max),
        );
        let med = median(ns);
        rows.push((name, desc, pairs_of(which), med, lo, hi, bytes[i]));
    }
    // Same requests for everyone (lla runs a prefix of the sequence).
    let full = rows.iter().filter(|r| r.2 == base_pairs).map(|r| r.6);
    assert!(
        full.clone().all(|b| Some(b) == full.clone().next()),
        "workloads differ"
    );

    let span = rows.iter().find(|r| r.0 == "spanheap").map(|r| r.3);
    println!("| allocator | pairs/run | ns/pair (median) | min..max | vs spanheap |");
    println!("|---|---:|---:|---:|---:|");
    for (_, desc, n, med, lo, hi, _) in &rows {
        let ratio = span.map_or("-".to_string(), |s| format!("{:.2}x", med / s));
        println!("| {desc} | {n} | {med:.1} | {lo:.1}..{hi:.1} | {ratio} |");
    }
    println!();
    println!("(ratio = allocator ns/pair / spanheap ns/pair; > 1 means slower than spanheap. linked_list_allocator runs 1/{LLA_DIVISOR} of the pairs.)");
}
