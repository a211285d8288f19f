//! Pieces shared by the benchmarks: the PRNG, backing regions, the allocators under
//! test built over a region (`Subject`, listed once in `Which`), time limits, latency
//! probes, and the two workload cores the standalone benches share with the suite
//! (`pairs`, `larson`).
#![allow(dead_code)]

pub(crate) mod larson;
pub(crate) mod pairs;
pub(crate) mod probe;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Bytes of every allocator's region unless a workload asks for another size.
pub(crate) const REGION_SIZE: usize = 64 << 20;
const REGION_ALIGN: usize = 2 << 20;
const PAGE: usize = 4096;

/// SplitMix64: one 64-bit draw per step.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    #[inline(always)]
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift on the low 32 bits; `n` < 2^32).
    #[inline(always)]
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next() as u32) as u64 * n as u64) >> 32) as usize
    }

    /// Uniform in `lo..=hi`.
    #[inline(always)]
    pub(crate) fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// A value on its own two cache lines (adjacent-line prefetch), so that the harness's
/// shared counters do not share lines with anything else.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A single-producer single-consumer ring of words (object addresses, batch
/// indices); `usize::MAX` is never stored.
pub(crate) struct Ring {
    slots: Vec<std::sync::atomic::AtomicUsize>,
    head: Padded<std::sync::atomic::AtomicUsize>,
    tail: Padded<std::sync::atomic::AtomicUsize>,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        use std::sync::atomic::AtomicUsize;
        Ring {
            slots: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
        }
    }

    /// `false` when full (the producer keeps the word).
    pub(crate) fn push(&self, word: usize) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail - self.head.load(Ordering::Acquire) == self.slots.len() {
            return false;
        }
        self.slots[tail % self.slots.len()].store(word, Ordering::Relaxed);
        self.tail.store(tail + 1, Ordering::Release);
        true
    }

    pub(crate) fn pop(&self) -> Option<usize> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let word = self.slots[head % self.slots.len()].load(Ordering::Relaxed);
        self.head.store(head + 1, Ordering::Release);
        Some(word)
    }
}

/// Waits a little (spin, then yield: the machine may have fewer cores than threads).
pub(crate) fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------
// Backing memory

/// A fresh region from the host allocator (2 MiB-aligned), every page already
/// written, so that no page fault is timed.
pub(crate) struct Region {
    /// First byte.
    pub(crate) base: *mut u8,
    layout: Layout,
}

// SAFETY: a `Region` only names its memory; the bytes are used by the one allocator
// built over it (which has its own synchronisation), never through the `Region`.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A region of [`REGION_SIZE`] bytes.
    pub(crate) fn new() -> Self {
        Self::with_size(REGION_SIZE)
    }

    /// A region of `size` bytes (a multiple of the page size).
    pub(crate) fn with_size(size: usize) -> Self {
        let layout = Layout::from_size_align(size, REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { System.alloc(layout) };
        assert!(!base.is_null(), "cannot allocate the backing region");
        for off in (0..size).step_by(PAGE) {
            // SAFETY: inside the region.
            unsafe { ptr::write_volatile(base.add(off), 0) };
        }
        Region { base, layout }
    }

    pub(crate) fn size(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn start(&self) -> usize {
        self.base as usize
    }

    pub(crate) fn end(&self) -> usize {
        self.base as usize + self.size()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_size` with this layout.
        unsafe { System.dealloc(self.base, self.layout) };
    }
}

// ---------------------------------------------------------------------------------
// The allocators

/// Where an allocator's memory comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Source {
    /// The region it is built over (the kernel allocators: same-sized regions).
    Region,
    /// The operating system (process allocators: references for time, not memory).
    Process,
}

/// An allocator under test, built over a region it owns for the duration of one run.
pub(crate) trait Subject: GlobalAlloc + Sized {
    /// Where its memory comes from.
    const SOURCE: Source = Source::Region;

    /// Builds the allocator over all of `region`.
    ///
    /// # Safety
    ///
    /// `region` outlives the allocator and nothing else uses it.
    unsafe fn over(region: &Region) -> Box<Self>;
}

pub(crate) type Talc = talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual>;
pub(crate) type Lla = linked_list_allocator::LockedHeap;
pub(crate) type Buddy = buddy_system_allocator::LockedHeap<32>;
pub(crate) type SpanHeap = spanheap::SpanHeap<spanheap::platform::HostThreads>;
pub(crate) type Uncached = spanheap::SpanHeap<spanheap::platform::Uncached>;

impl Subject for Talc {
    unsafe fn over(region: &Region) -> Box<Self> {
        let t = Box::new(Talc::new(talc::source::Manual));
        // SAFETY: the region is ours, writable, and outlives the allocator.
        unsafe { t.lock().claim(region.base, region.size()) }.expect("talc claim");
        t
    }
}

impl Subject for Lla {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(Lla::empty());
        // SAFETY: as above.
        unsafe { h.lock().init(region.base, region.size()) };
        h
    }
}

impl Subject for Buddy {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(Buddy::new());
        // SAFETY: as above.
        unsafe { h.lock().init(region.start(), region.size()) };
        h
    }
}

impl<P: spanheap::platform::Platform> Subject for spanheap::SpanHeap<P> {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(spanheap::SpanHeap::<P>::new());
        let range = spanheap::MemoryRange::new(region.start(), region.end());
        // SAFETY: as above.
        unsafe { h.add_memory(range) }.expect("spanheap add_memory");
        h
    }
}

impl Subject for System {
    const SOURCE: Source = Source::Process;
    unsafe fn over(_region: &Region) -> Box<Self> {
        Box::new(System)
    }
}

impl Subject for mimalloc::MiMalloc {
    const SOURCE: Source = Source::Process;
    unsafe fn over(_region: &Region) -> Box<Self> {
        Box::new(mimalloc::MiMalloc)
    }
}

impl Subject for tikv_jemallocator::Jemalloc {
    const SOURCE: Source = Source::Process;
    unsafe fn over(_region: &Region) -> Box<Self> {
        Box::new(tikv_jemallocator::Jemalloc)
    }
}

/// An allocator built over its own region; derefs to the allocator. The allocator
/// is dropped before its region.
pub(crate) struct Instance<A> {
    a: Box<A>,
    _region: Region,
}

impl<A: Subject> Instance<A> {
    /// `A` over a fresh region of `size` bytes (a process allocator gets no region
    /// worth the name: one page, unused).
    pub(crate) fn new(size: usize) -> Self {
        let region = Region::with_size(if A::SOURCE == Source::Process {
            PAGE
        } else {
            size
        });
        // SAFETY: the region is used by nothing else and outlives the allocator
        // (field order: `a` drops first).
        let a = unsafe { A::over(&region) };
        Instance { a, _region: region }
    }
}

impl<A> std::ops::Deref for Instance<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.a
    }
}

/// Every allocator the benchmarks compare, in table order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    SpanHeap,
    Uncached,
    Talc,
    Buddy,
    Lla,
    System,
    Mimalloc,
    Jemalloc,
}

impl Which {
    pub(crate) const ALL: [Which; 8] = [
        Which::SpanHeap,
        Which::Uncached,
        Which::Talc,
        Which::Buddy,
        Which::Lla,
        Which::System,
        Which::Mimalloc,
        Which::Jemalloc,
    ];

    /// Short name (command lines, chart legends).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::SpanHeap => "spanheap",
            Which::Uncached => "spanheap-uncached",
            Which::Talc => "talc",
            Which::Buddy => "buddy",
            Which::Lla => "lla",
            Which::System => "system",
            Which::Mimalloc => "mimalloc",
            Which::Jemalloc => "jemalloc",
        }
    }

    /// What exactly runs.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Which::SpanHeap => "spanheap::SpanHeap<HostThreads> (per-CPU caches)",
            Which::Uncached => "spanheap::SpanHeap<Uncached> (centrals only)",
            Which::Talc => "talc 5.1 TalcLock<spinning_top::RawSpinlock, Manual>",
            Which::Buddy => "buddy_system_allocator 0.13 LockedHeap<32>",
            Which::Lla => "linked_list_allocator 0.10 LockedHeap",
            Which::System => "std::alloc::System (glibc malloc; process, reference)",
            Which::Mimalloc => "mimalloc 0.1 (process, reference)",
            Which::Jemalloc => "tikv-jemallocator 0.6 (process, reference)",
        }
    }

    pub(crate) fn source(self) -> Source {
        match self {
            Which::System | Which::Mimalloc | Which::Jemalloc => Source::Process,
            _ => Source::Region,
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Which> {
        Which::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Something to do with one allocator type: `with_subject` picks the type.
pub(crate) trait Visitor {
    type Out;
    fn visit<A: Subject + Sync>(&mut self, which: Which) -> Self::Out;
}

/// Calls `v.visit::<A>()` with the allocator type of `which`.
pub(crate) fn with_subject<V: Visitor>(which: Which, v: &mut V) -> V::Out {
    match which {
        Which::SpanHeap => v.visit::<SpanHeap>(which),
        Which::Uncached => v.visit::<Uncached>(which),
        Which::Talc => v.visit::<Talc>(which),
        Which::Buddy => v.visit::<Buddy>(which),
        Which::Lla => v.visit::<Lla>(which),
        Which::System => v.visit::<System>(which),
        Which::Mimalloc => v.visit::<mimalloc::MiMalloc>(which),
        Which::Jemalloc => v.visit::<tikv_jemallocator::Jemalloc>(which),
    }
}

// ---------------------------------------------------------------------------------
// How long a measurement runs

/// A measurement runs until `max_steps` steps or `time`, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limit {
    pub(crate) max_steps: u64,
    pub(crate) time: Option<Duration>,
}

impl Limit {
    /// Exactly `n` steps.
    pub(crate) fn steps(n: u64) -> Self {
        Limit {
            max_steps: n,
            time: None,
        }
    }

    /// Up to `n` steps or `time`.
    pub(crate) fn timed(n: u64, time: Duration) -> Self {
        Limit {
            max_steps: n,
            time: Some(time),
        }
    }
}

/// A stop flag that worker threads poll every few hundred steps.
pub(crate) struct Stop(Padded<AtomicBool>);

impl Stop {
    pub(crate) fn new() -> Self {
        Stop(Padded(AtomicBool::new(false)))
    }

    #[inline(always)]
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Object layout with alignment 8.
#[inline(always)]
pub(crate) fn layout(size: usize) -> Layout {
    aligned_layout(size, 8)
}

/// The alignments a workload can ask with (`threads --align`, `pairs --align`).
pub(crate) const ALIGNS: [usize; 5] = [8, 16, 32, 64, 128];

/// Evaluates `$body` with the constant `$n` equal to `$align` (one of [`ALIGNS`]), so
/// that a measured loop gets one copy per alignment with the alignment a constant in
/// it, as 8 was before alignments could be chosen: the default's calls stay the same.
macro_rules! with_align {
    ($align:expr, |$n:ident| $body:expr) => {
        match $align {
            8 => {
                const $n: usize = 8;
                $body
            }
            16 => {
                const $n: usize = 16;
                $body
            }
            32 => {
                const $n: usize = 32;
                $body
            }
            64 => {
                const $n: usize = 64;
                $body
            }
            128 => {
                const $n: usize = 128;
                $body
            }
            align => panic!("alignment {align}: not one of {:?}", $crate::common::ALIGNS),
        }
    };
}
pub(crate) use with_align;

/// `size` bytes aligned to `align`, which the caller checked to be a power of two.
#[inline(always)]
pub(crate) fn aligned_layout(size: usize, align: usize) -> Layout {
    debug_assert!(align.is_power_of_two());
    // SAFETY: the alignment is a power of two (caller); sizes here are far below
    // isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, align) }
}

#[cold]
#[inline(never)]
pub(crate) fn out_of_memory(name: &str, size: usize) -> ! {
    eprintln!("{name}: allocation of {size} bytes failed (region exhausted?)");
    std::process::exit(2)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU model from /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line naming the machine: CPU model, cores, load.
pub(crate) fn machine() -> String {
    format!("{}, {} CPUs, loadavg {}", cpu_model(), cores(), loadavg())
}

// ---------------------------------------------------------------------------------
// Teams of worker threads

/// What a worker thread sees of its team.
pub(crate) struct Team<'a> {
    /// This worker's index, `0..threads`.
    pub(crate) me: usize,
    pub(crate) threads: usize,
    /// Steps a worker makes at most.
    pub(crate) max_steps: u64,
    stop: &'a Stop,
    start: &'a std::sync::Barrier,
    finish: &'a std::sync::Barrier,
    done: &'a std::sync::atomic::AtomicUsize,
    began: std::cell::Cell<Option<Instant>>,
    ended: std::cell::Cell<Option<Instant>>,
}

impl Team<'_> {
    /// Waits for the whole team, then starts the clock: call after set-up.
    pub(crate) fn start(&self) {
        self.start.wait();
        self.began.set(Some(Instant::now()));
    }

    /// `true` when the worker should stop after `step` steps (polls the stop flag
    /// every 64 steps).
    #[inline(always)]
    pub(crate) fn should_stop(&self, step: u64) -> bool {
        step >= self.max_steps || (step & 63 == 0 && self.stop.is_set())
    }

    /// Stops the clock and waits until every worker has stopped its measured loop:
    /// after this nothing else touches the objects handed around, so each worker
    /// can free what it holds.
    pub(crate) fn finish(&self) {
        self.ended.set(Some(Instant::now()));
        self.done.fetch_add(1, Ordering::Relaxed);
        self.finish.wait();
    }
}

/// What one worker reports.
#[derive(Default)]
pub(crate) struct WorkerOut {
    /// Allocator calls made in the measured loop.
    pub(crate) ops: u64,
    /// Frees of objects another worker allocated (where the workload knows).
    pub(crate) cross_frees: u64,
    pub(crate) frees: u64,
    /// An address the workload wants to report (cache-scratch: the worker's object).
    pub(crate) addr: usize,
    pub(crate) sampler: Option<probe::Sampler>,
    /// With a `LineWatch`: the worker's touches of a line another worker touched
    /// last.
    pub(crate) line_moves: u64,
}

/// What a team run measured.
pub(crate) struct TeamRun {
    pub(crate) ops: u64,
    /// From the first worker's start to the last worker's stop.
    pub(crate) elapsed: Duration,
    pub(crate) cross_frees: u64,
    pub(crate) frees: u64,
    /// Summed `WorkerOut::line_moves`.
    pub(crate) line_moves: u64,
    /// Each worker's `addr`, in worker order.
    pub(crate) addrs: Vec<usize>,
    pub(crate) latency: Option<probe::Latency>,
}

impl TeamRun {
    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The share of the run's frees that crossed threads.
    pub(crate) fn cross_share(&self) -> f64 {
        self.cross_frees as f64 / self.frees.max(1) as f64
    }
}

/// Runs `work` on `threads` new threads until `limit` (steps per worker, or time).
/// Each worker sets up, calls `team.start()`, runs its loop while
/// `!team.should_stop(step)`, calls `team.finish()`, tears down, and reports.
pub(crate) fn run_team<F>(threads: usize, limit: Limit, work: F) -> TeamRun
where
    F: Fn(&Team<'_>) -> WorkerOut + Sync,
{
    let stop = Stop::new();
    let start = std::sync::Barrier::new(threads + 1);
    let finish = std::sync::Barrier::new(threads);
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|me| {
                let (stop, start, finish, done, work) = (&stop, &start, &finish, &done, &work);
                s.spawn(move || {
                    let team = Team {
                        me,
                        threads,
                        max_steps: limit.max_steps,
                        stop,
                        start,
                        finish,
                        done,
                        began: std::cell::Cell::new(None),
                        ended: std::cell::Cell::new(None),
                    };
                    let out = work(&team);
                    (out, team.began.get(), team.ended.get())
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        if let Some(time) = limit.time {
            while t.elapsed() < time && done.load(Ordering::Relaxed) < threads {
                std::thread::sleep(Duration::from_micros(500));
            }
            stop.set();
        }
        let mut run = TeamRun {
            ops: 0,
            elapsed: Duration::ZERO,
            cross_frees: 0,
            frees: 0,
            line_moves: 0,
            addrs: Vec::new(),
            latency: None,
        };
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        let mut sampler: Option<probe::Sampler> = None;
        for h in handles {
            let (out, began, ended) = h.join().expect("worker panicked");
            run.ops += out.ops;
            run.cross_frees += out.cross_frees;
            run.frees += out.frees;
            run.line_moves += out.line_moves;
            run.addrs.push(out.addr);
            let (began, ended) = (
                began.expect("worker never started"),
                ended.expect("worker never finished"),
            );
            first = Some(first.map_or(began, |f| f.min(began)));
            last = Some(last.map_or(ended, |l| l.max(ended)));
            if let Some(s) = out.sampler {
                match &mut sampler {
                    Some(all) => all.absorb(s),
                    None => sampler = Some(s),
                }
            }
        }
        run.elapsed = last.unwrap() - first.unwrap();
        run.latency = sampler.and_then(|s| s.latency());
        run
    })
}
