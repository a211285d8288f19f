//! Throughput with cross-thread frees, one thread against two (issue 4's scaling goal:
//! two threads at least 1.8x one on this 2-core machine, where the global-lock peers
//! slow down).
//!
//! The workload is `common::larson` (the suite runs it too as `larson-local`,
//! `larson-ring` and `larson-batch`): each thread owns 1000 slots and replaces a
//! random one per step (16 to 1024 bytes), and objects reach the other thread in one
//! of three ways: never (`local`), one at a time through a ring (`ring`: every 4th
//! new object, `--handoff N` for every N-th), or a whole slot array per 1000 steps
//! through one atomic pointer (`batch`, larson's hand-off; `--round N` hands over
//! every N steps instead, which sets the share of cross-thread frees: about 45% with
//! 1000, 10% with 10 000, 1% with 100 000). Throughput = all
//! threads' allocator calls / wall time from a common start.
//!
//! Every allocator gets its own fresh 64 MiB region and is used through
//! `GlobalAlloc` (the process allocators take their memory from the OS).
//!
//! The first line of each table, `floor`, is not an allocator but the least one
//! could do: each thread carves power-of-two cells from its own half of the region
//! and keeps a LIFO list per cell size; a thread frees its own cells onto its list
//! with no atomic operation, and another thread's cells onto that thread's remote
//! list (one compare-exchange), which the owner takes whole (one swap) when its own
//! list is empty. Without hand-off its 2-thread / 1-thread ratio is what the harness
//! and the machine allow. With hand-off it is one plain way of giving cells back (a
//! compare-exchange on a shared line per cross-thread free), not a bound: an
//! allocator that moves objects in batches can beat it, as spanheap does.
//!
//! The host's speed drifts (here a core's throughput changed by up to 1.4x from one
//! run to the next), so a ratio is only taken within one sample (one allocator with
//! one thread, then with two), the samples go in rounds over the allocators, and a
//! probe (the floor without hand-off, 1 then 2 threads, then 100 000 round trips of
//! one cache line between the two threads) runs between two samples. A sample whose
//! probes on both sides scaled 1.9x or more ran while the host gave the benchmark two
//! full cores; one whose probes also moved a line in under 40 ns ran on two near
//! cores. The hypervisor places the two virtual CPUs of this machine near or far
//! from one another and changes its mind within minutes (a line move of 21-27 ns in
//! some stretches, 52-64 or about 200 ns in others), and every hand-over costs line
//! moves, so the tables give the median ratio over all samples, over the two-core
//! ones, and over those split into near and far, and the range of the line-move
//! probes.
//!
//! `--align N` asks every object of the workload with alignment N (16, 32, 64 or 128)
//! instead of 8, in every allocator; with 64 no two objects share a cache
//! line (each starts on a line of its own), which is what a kernel can ask for
//! objects it frees on other CPUs (spanheap then picks a class whose size is a
//! multiple of 64). The probe keeps alignment 8.
//!
//! `--lines` replaces the timing with a count that the host's noise does not touch:
//! one 2-thread run per allocator, untimed, where every access of the workload to an
//! object (its first word at alloc and free, its last byte at alloc) records the
//! worker in a table of cache lines (`common::probe::LineWatch`), and a touch of a
//! line another worker touched last counts as a line move. Handing an object over
//! costs about two (the receiver reads the first word, then writes the last byte of
//! the object it reuses it for); more per cross-thread free means the allocator gave
//! the two threads objects that share lines. The allocator's own metadata is not
//! seen.
//!
//! ```text
//! cargo bench --bench threads                     # all, 1 and 2 threads, 9 rounds
//! cargo bench --bench threads -- --steps 200000 --runs 5 --only spanheap --variant batch
//! cargo bench --bench threads -- --only floor
//! cargo bench --bench threads -- --only floor --only spanheap --variant batch --round 100000
//! cargo bench --bench threads -- --variant batch --round 10000   # fewer cross-thread frees
//! cargo bench --bench threads -- --variant batch --lines          # line moves, untimed
//! cargo bench --bench threads -- --variant batch --round 100000 --align 64   # whole lines
//! cargo bench --bench threads -- --ping             # one line move in ns; host scaling
//! ```

mod common;

use common::larson::{self, Exchange, Variant, Watch};
use common::probe::LineOwners;
use common::{
    median, run_team, with_subject, Limit, Padded, Region, Subject, TeamRun, Visitor, Which,
};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

const DEFAULT_STEPS: u64 = 4_000_000;
/// linked_list_allocator walks its hole list on every call: it runs this many times
/// fewer steps.
const LLA_DIVISOR: u64 = 20;

// ---------------------------------------------------------------------------------
// The floor

/// Threads the floor serves at once (each gets half of the region).
const FLOOR_THREADS: usize = 2;
/// Cell lists per thread, by log2 of the cell size: up to the workload's largest object.
const FLOOR_LISTS: usize = larson::MAX_SIZE.trailing_zeros() as usize + 1;

/// One thread's part of the floor.
struct FloorLocal {
    /// Free cells of this thread's half; touched by this thread only.
    lists: UnsafeCell<[*mut u8; FLOOR_LISTS]>,
    /// The next cell to carve, up to `end`; touched by this thread only.
    next: Cell<usize>,
    end: usize,
    /// Cells of this thread's half freed by another thread (pushed there, taken all at
    /// once by this thread when its own list is empty).
    remote: [AtomicPtr<u8>; FLOOR_LISTS],
}

/// The floor (see the module doc).
struct Floor {
    /// Tells this floor's thread slots from those of earlier floors in `FLOOR_SLOT`.
    id: usize,
    claimed: AtomicUsize,
    base: usize,
    /// Bytes of each thread's half.
    part: usize,
    locals: [Padded<FloorLocal>; FLOOR_THREADS],
}

static FLOOR_IDS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (floor id, slot) of the floor this thread last used.
    static FLOOR_SLOT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

impl Floor {
    /// This thread's slot, claimed at its first call.
    #[inline(always)]
    fn slot(&self) -> usize {
        let (id, slot) = FLOOR_SLOT.get();
        if id == self.id {
            return slot;
        }
        let slot = self.claimed.fetch_add(1, Ordering::Relaxed);
        assert!(
            slot < FLOOR_THREADS,
            "the floor serves {FLOOR_THREADS} threads"
        );
        FLOOR_SLOT.set((self.id, slot));
        slot
    }
}

impl Subject for Floor {
    unsafe fn over(region: &Region) -> Box<Self> {
        let (base, part) = (region.start(), region.size() / FLOOR_THREADS);
        Box::new(Floor {
            id: FLOOR_IDS.fetch_add(1, Ordering::Relaxed),
            claimed: AtomicUsize::new(0),
            base,
            part,
            locals: std::array::from_fn(|slot| {
                Padded(FloorLocal {
                    lists: UnsafeCell::new([ptr::null_mut(); FLOOR_LISTS]),
                    next: Cell::new(base + slot * part),
                    end: base + (slot + 1) * part,
                    remote: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
                })
            }),
        })
    }
}

// SAFETY: a `FloorLocal`'s `lists` and `next` are used only by the thread that claimed
// its slot; `end` does not change; `remote` is atomic.
unsafe impl Sync for Floor {}

// SAFETY: cells are carved from the two disjoint halves of the region, aligned to 16
// bytes; a freed cell goes back to the list of its size in its own half (through the
// half's remote list when another thread frees it) and is reused only for that size.
unsafe impl GlobalAlloc for Floor {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let list = cell_list(layout);
        let local = &self.locals[self.slot()].0;
        // SAFETY: this thread's own lists (`slot`).
        let lists = unsafe { &mut *local.lists.get() };
        let mut p = lists[list];
        if p.is_null() {
            p = local.remote[list].swap(ptr::null_mut(), Ordering::Acquire);
        }
        if !p.is_null() {
            // SAFETY: a free cell holds the next pointer of its list.
            lists[list] = unsafe { p.cast::<*mut u8>().read() };
            return p;
        }
        let cell = 1 << list;
        let next = local.next.get();
        if local.end - next < cell {
            return ptr::null_mut();
        }
        assert!(
            next % layout.align() == 0,
            "the floor serves one alignment per run"
        );
        local.next.set(next + cell);
        next as *mut u8
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let list = cell_list(layout);
        let me = self.slot();
        let owner = (p as usize - self.base) / self.part;
        let local = &self.locals[owner].0;
        if owner == me {
            // SAFETY: this thread's own lists; `p` is a cell of this size, now free.
            unsafe {
                let lists = &mut *local.lists.get();
                p.cast::<*mut u8>().write(lists[list]);
                lists[list] = p;
            }
            return;
        }
        let remote = &local.remote[list];
        let mut head = remote.load(Ordering::Relaxed);
        loop {
            // SAFETY: a cell of this size, now free and ours until pushed.
            unsafe { p.cast::<*mut u8>().write(head) };
            match remote.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

/// The floor's list for `layout`: log2 of its cell size (at least 16 bytes and at
/// least the alignment). A run asks every object with one alignment (`--align`), so
/// every cell carved in it is a multiple of that alignment and the carving point
/// stays aligned.
#[inline(always)]
fn cell_list(layout: Layout) -> usize {
    let cell = layout
        .size()
        .max(layout.align())
        .max(16)
        .next_power_of_two();
    let list = cell.trailing_zeros() as usize;
    assert!(list < FLOOR_LISTS, "the floor serves the larson sizes");
    list
}

// ---------------------------------------------------------------------------------
// Driver

/// The probe's 2-thread / 1-thread ratio (the floor without hand-off) from which the
/// host is taken to give the benchmark two full cores.
const GOOD_FLOOR: f64 = 1.9;

/// A line move (`move_ns`) under this many nanoseconds on both sides of a sample: the
/// host ran the two threads on near cores (a move this cheap suggests a shared
/// last-level cache; the guest cannot see the topology; the module doc gives what
/// this machine reads).
const NEAR_MOVE_NS: f64 = 40.0;

/// Round trips of the line-move probe between two samples (a few milliseconds).
const PROBE_TURNS: u64 = 100_000;

/// What the probe between two samples read.
struct Probed {
    /// The floor without hand-off: 2 threads / 1 thread.
    scaling: f64,
    /// One cache line moved between the two threads, in ns.
    move_ns: f64,
}

/// What the host gave a sample, by the probes on both sides of it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Host {
    /// Less than two full cores on one side at least.
    Shared,
    /// Two full cores (the probes scaled [`GOOD_FLOOR`] or more), a line move
    /// [`NEAR_MOVE_NS`] or more on one side at least.
    FarCores,
    /// Two full cores, and a line move under [`NEAR_MOVE_NS`] on both sides.
    NearCores,
}

impl Host {
    fn between(before: &Probed, after: &Probed) -> Host {
        if before.scaling.min(after.scaling) < GOOD_FLOOR {
            Host::Shared
        } else if before.move_ns.max(after.move_ns) < NEAR_MOVE_NS {
            Host::NearCores
        } else {
            Host::FarCores
        }
    }
}

/// One allocator in one round: allocator calls per second with 1 and 2 threads, and
/// the share of frees that crossed threads with 2.
#[derive(Clone, Copy)]
struct Sample {
    one: f64,
    two: f64,
    cross: f64,
}

impl Sample {
    fn ratio(&self) -> f64 {
        self.two / self.one
    }
}

/// One run of `threads` workers on one allocator.
struct Run<'a> {
    threads: usize,
    steps: u64,
    variant: Variant,
    /// The objects' alignment (`--align`).
    align: usize,
    /// `Some`: watch the cache lines the workers take from each other (`--lines`).
    lines: Option<&'a LineOwners>,
}

impl Visitor for Run<'_> {
    type Out = TeamRun;
    fn visit<A: Subject + Sync>(&mut self, _which: Which) -> TeamRun {
        self.run::<A>()
    }
}

impl Run<'_> {
    fn run<A: Subject + Sync>(&self) -> TeamRun {
        let region = Region::new();
        // SAFETY: `region` is used by nothing else and outlives `a` (dropped first).
        let a = unsafe { A::over(&region) };
        let ex = Exchange::new(self.threads);
        let (variant, align) = (self.variant, self.align);
        let watch = self.lines.map_or(Watch::Calls, Watch::Lines);
        let run = run_team(self.threads, Limit::steps(self.steps), |team| {
            larson::worker(&*a, team, &ex, variant, align, watch)
        });
        drop(a);
        drop(region);
        run
    }

    /// `which` (`None`: the floor) on this run's team (once: linked_list_allocator
    /// gets `steps / LLA_DIVISOR`).
    fn of(mut self, which: Option<Which>) -> TeamRun {
        if which == Some(Which::Lla) {
            self.steps /= LLA_DIVISOR;
        }
        match which {
            Some(which) => with_subject(which, &mut self),
            None => self.run::<Floor>(),
        }
    }
}

/// One allocator (`None`: the floor) with one thread, then with two.
fn sample(which: Option<Which>, variant: Variant, align: usize, steps: u64) -> Sample {
    let run = |threads| {
        Run {
            threads,
            steps,
            variant,
            align,
            lines: None,
        }
        .of(which)
    };
    let one = run(1).ops_per_sec();
    let two = run(2);
    Sample {
        one,
        two: two.ops_per_sec(),
        cross: two.cross_share(),
    }
}

/// `--lines`: one watched 2-thread run per allocator (untimed), and the cache lines
/// its workers took from each other per allocator call and per cross-thread free.
fn line_table(entries: &[Option<Which>], variant: Variant, align: usize, steps: u64) {
    println!();
    println!("| allocator | line moves per call | per cross-thread free | cross-thread frees |");
    println!("|---|---:|---:|---:|");
    for &which in entries {
        // A fresh table per run: another allocator's marks would count as moves.
        let owners = LineOwners::new();
        let run = Run {
            threads: 2,
            steps,
            variant,
            align,
            lines: Some(&owners),
        }
        .of(which);
        println!(
            "| {} | {:.4} | {} | {:.1}% |",
            label(which),
            run.line_moves as f64 / run.ops.max(1) as f64,
            match run.cross_frees {
                0 => "-".to_string(),
                n => format!("{:.2}", run.line_moves as f64 / n as f64),
            },
            run.cross_share() * 100.0
        );
    }
}

/// `--ping`: what one cache line costs to move between the two cores (`move_ns`; in a
/// workload misses overlap and cost less each), and how far the host lets two
/// threads scale at all.
fn line_ping() {
    const TURNS: u64 = 2_000_000;
    let ns = move_ns(TURNS);
    println!("one cache line moved between two threads: {ns:.1} ns per move ({TURNS} round trips)");
    // What the host gives two threads that share nothing: a compute loop in
    // registers, on one thread and then on two at once.
    let spin = || {
        let mut x = 1u64;
        for i in 0..400_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    };
    let time = |threads: usize| {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(spin);
            }
        });
        start.elapsed().as_secs_f64()
    };
    let (one, two) = (time(1), time(2));
    println!(
        "a compute loop sharing nothing: 2 threads do {:.2}x the work of 1 in the same time",
        2.0 * one / two
    );
}

/// Nanoseconds per move of one cache line between two threads that take `turns`
/// turns each writing one counter, each waiting for the other's value (a chain of
/// dependent moves, so no overlap). The clock starts after a warm-up of 20 000 turns:
/// until the scheduler has put the new thread on the other core, a move can cost a
/// context switch (without it, 100 000 turns read 47-117 ns where 2 000 000 read 23).
fn move_ns(turns: u64) -> f64 {
    const WARM_TURNS: u64 = 20_000;
    let turn = Padded(AtomicU64::new(0));
    let play = |first: u64, end: u64| {
        for t in (first..end).step_by(2) {
            while turn.load(Ordering::Acquire) != t {
                std::hint::spin_loop();
            }
            turn.store(t + 1, Ordering::Release);
        }
    };
    let (warm, end) = (2 * WARM_TURNS, 2 * (WARM_TURNS + turns));
    std::thread::scope(|s| {
        s.spawn(|| play(1, end));
        play(0, warm);
        let start = std::time::Instant::now();
        play(warm, end);
        start.elapsed().as_nanos() as f64 / (2 * turns) as f64
    })
}

/// The table name of `which` (`None`: the floor).
fn label(which: Option<Which>) -> &'static str {
    which.map_or(
        "floor: LIFO lists of cells per thread, no lock",
        Which::label,
    )
}

fn main() {
    let mut steps = DEFAULT_STEPS;
    let mut runs = 9;
    let mut only = Vec::new();
    let mut variants = vec![
        Variant::Local,
        Variant::Ring(4),
        Variant::Batch(larson::ROUND),
    ];
    let mut round = larson::ROUND;
    let mut lines = false;
    let mut align = larson::ALIGN;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--steps" => steps = value().parse().expect("--steps N"),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--only" => {
                let name = value();
                only.push(match name.as_str() {
                    "floor" => None,
                    _ => Some(Which::from_name(&name).expect("--only NAME|floor")),
                })
            }
            "--round" => {
                round = value().parse().expect("--round N");
                assert!(round > 0, "--round N: at least 1");
            }
            "--handoff" => variants = vec![Variant::Ring(value().parse().expect("--handoff N"))],
            "--variant" => {
                variants = vec![match value().as_str() {
                    "local" => Variant::Local,
                    "ring" => Variant::Ring(4),
                    "batch" => Variant::Batch(larson::ROUND),
                    v => panic!("--variant local|ring|batch, not {v}"),
                }]
            }
            "--align" => {
                align = value().parse().expect("--align N");
                assert!(
                    common::ALIGNS.contains(&align),
                    "--align N: one of {:?}",
                    common::ALIGNS
                );
            }
            "--lines" => lines = true,
            "--ping" => return line_ping(),
            "--bench" => {}
            _ => panic!(
                "usage: threads [--steps N] [--runs N] [--only NAME]... [--variant local|ring|batch] [--handoff N] [--round N] [--align N] [--lines] [--ping]"
            ),
        }
    }
    if lines {
        println!(
            "threads --lines: {steps} steps per thread, one untimed 2-thread run per allocator; line moves = touches of an object's line that the other thread touched last"
        );
    } else {
        println!(
            "threads: {steps} steps per thread, medians of {runs} rounds, {} cores; allocator calls/s in millions",
            common::cores()
        );
    }
    println!("every object asked with alignment {align} (--align; the probe keeps 8)");
    // --round N sets the batch hand-off's period, wherever it came on the line.
    for variant in &mut variants {
        if let Variant::Batch(period) = variant {
            *period = round;
        }
    }
    let entries: Vec<Option<Which>> = std::iter::once(None)
        .chain(Which::ALL.map(Some))
        .filter(|w| only.is_empty() || only.contains(w))
        .collect();
    for variant in variants {
        println!();
        match variant {
            Variant::Local => {
                println!("no hand-off (every object freed by the thread that made it):")
            }
            Variant::Ring(n) => {
                println!("every {n}th new object handed to the other thread one by one (ring):")
            }
            Variant::Batch(round) => {
                println!("whole slot arrays handed over every {round} steps (one atomic pointer):")
            }
        }
        if lines {
            line_table(&entries, variant, align, steps);
            continue;
        }
        // Rounds of samples with a probe between two samples (see the module doc); the
        // probes on both sides of a sample say what the host gave it (`Host::between`).
        let probe = || Probed {
            scaling: sample(None, Variant::Local, larson::ALIGN, steps).ratio(),
            move_ns: move_ns(PROBE_TURNS),
        };
        let mut samples: Vec<Vec<(Sample, Host)>> = vec![Vec::new(); entries.len()];
        let mut moves = Vec::new();
        let mut before = probe();
        moves.push(before.move_ns);
        for _ in 0..runs {
            for (which, samples) in entries.iter().zip(&mut samples) {
                let s = sample(*which, variant, align, steps);
                let after = probe();
                moves.push(after.move_ns);
                samples.push((s, Host::between(&before, &after)));
                before = after;
            }
        }
        println!();
        println!(
            "| allocator | 1 thread | 2 threads | 2 threads / 1 thread | the same where the probes scaled {GOOD_FLOOR}x or more | of those, where a line move took under {NEAR_MOVE_NS} ns | where it took {NEAR_MOVE_NS} ns or more | cross-thread frees at 2 |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (which, samples) in entries.iter().zip(&samples) {
            let pick = |f: &dyn Fn(&Sample) -> f64| {
                median(&mut samples.iter().map(|(s, _)| f(s)).collect::<Vec<_>>())
            };
            let ratio_where = |keep: &dyn Fn(Host) -> bool| {
                let mut ratios: Vec<f64> = samples
                    .iter()
                    .filter(|(_, h)| keep(*h))
                    .map(|(s, _)| s.ratio())
                    .collect();
                match ratios.len() {
                    0 => "- (0 samples)".to_string(),
                    n => format!("{:.2}x ({n} samples)", median(&mut ratios)),
                }
            };
            println!(
                "| {} | {:.2} | {:.2} | {:.2}x | {} | {} | {} | {:.1}% |",
                label(*which),
                pick(&|s| s.one) / 1e6,
                pick(&|s| s.two) / 1e6,
                pick(&Sample::ratio),
                ratio_where(&|h| h != Host::Shared),
                ratio_where(&|h| h == Host::NearCores),
                ratio_where(&|h| h == Host::FarCores),
                pick(&|s| s.cross) * 100.0
            );
        }
        // `median` sorts: the ends are the least and the most.
        let middle = median(&mut moves);
        println!();
        println!(
            "a line move between the samples ({} probes of {PROBE_TURNS} round trips): {:.1} ns at least, {middle:.1} median, {:.1} at most",
            moves.len(),
            moves[0],
            moves[moves.len() - 1]
        );
    }
}
