//! Threaded workloads: larson (three hand-off variants, `common::larson`), xmalloc's
//! producer/consumer, and cache-scratch (passive false sharing). Columns are thread
//! counts; "T / 1" columns give each allocator's scaling.

use super::report::{Column, Table, Unit};
use super::{Bench, Measured, Scale};
use crate::common::larson::{self, Exchange, Variant};
use crate::common::probe::{Call, Probe, Sampler};
use crate::common::{
    backoff, layout, out_of_memory, run_team, Instance, Limit, Ring, Rng, Subject, Which,
    WorkerOut, REGION_SIZE,
};
use std::alloc::GlobalAlloc;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

fn limit(scale: &Scale) -> Limit {
    Limit::timed(u64::MAX, scale.time)
}

/// Larson-like slot replacement with hand-off `0`.
pub(crate) struct Larson(pub(crate) Variant);

impl Bench for Larson {
    fn table(&self, scale: &Scale) -> Table {
        let (id, title, about) = match self.0 {
            Variant::Local => (
                "larson-local",
                "larson, no hand-off",
                "Each thread owns 1000 slots (pre-filled) and replaces a random one per step: free, then \
                 allocate 16..=1024 B (uniform); size and maker in the first word, checked at the free. \
                 Every object is freed by the thread that made it.",
            ),
            Variant::Ring(_) => (
                "larson-ring",
                "larson, objects handed over one by one",
                "As `larson-local`, but every 4th new object goes to the next thread's single-producer \
                 single-consumer ring instead of the slot, and every step frees one object from the \
                 thread's own ring. The ring's head and tail lines move between the cores on nearly \
                 every step: much of what this measures is the harness's own traffic.",
            ),
            Variant::Batch(_) => (
                "larson-batch",
                "larson, whole slot arrays handed over",
                "As `larson-local`, but every 1000 steps a thread swaps its whole slot array with \
                 the one in the team's depot (one atomic pointer) and continues with what it got, \
                 as larson hands a thread's slots to its successor: after a swap that brings the \
                 other thread's array, most frees of the round hit that thread's objects, and the \
                 harness moves one pointer per 1000 steps. Nobody waits: a thread that finds its \
                 own array in the depot (the other did not come by) takes it back, so the share of \
                 cross-thread frees (below the table) depends on how much the threads overlap.",
            ),
        };
        Table::new(id, title, about, Unit::OpsPerSec)
            .columns(scale.thread_columns())
            .with_scaling()
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let a = Instance::<A>::new(REGION_SIZE);
        let ex = Exchange::new(column.threads);
        let variant = self.0;
        let run = run_team(column.threads, limit(scale), |team| {
            larson::worker(
                &*a,
                team,
                &ex,
                variant,
                larson::ALIGN,
                larson::Watch::Latency,
            )
        });
        Measured {
            latency: run.latency,
            cross: Some(run.cross_share()),
            ..Measured::ops(run.ops, run.elapsed)
        }
    }
}

// ---------------------------------------------------------------------------------

/// xmalloc-like producer/consumer.
pub(crate) struct Xmalloc;

const BATCH: usize = 256;
const BATCHES: usize = 8;
const XM_MIN: usize = 8;
const XM_MAX: usize = 512;

/// One producer/consumer pair: batch buffers, the ring of full ones, the ring of
/// empty ones, and the producer's "no more batches" flag.
struct Channel {
    buffers: Vec<std::cell::UnsafeCell<[usize; BATCH]>>,
    full: Ring,
    empty: Ring,
    closed: AtomicBool,
}

// SAFETY: a buffer index is in at most one ring or held by one side at a time, so
// each buffer is accessed by one thread at a time (the rings' release/acquire order
// the accesses).
unsafe impl Sync for Channel {}

impl Channel {
    fn new() -> Self {
        let empty = Ring::new(BATCHES);
        for i in 0..BATCHES {
            empty.push(i);
        }
        Channel {
            buffers: (0..BATCHES)
                .map(|_| std::cell::UnsafeCell::new([0; BATCH]))
                .collect(),
            full: Ring::new(BATCHES),
            empty,
            closed: AtomicBool::new(false),
        }
    }
}

struct Side<'a, A> {
    a: &'a A,
    rng: Rng,
    sampler: Sampler,
    calls: u64,
}

impl<A: GlobalAlloc> Side<'_, A> {
    fn fill(&mut self, batch: &mut [usize; BATCH]) {
        for b in batch.iter_mut() {
            let size = self.rng.between(XM_MIN, XM_MAX);
            // SAFETY: non-zero size.
            let p = self.sampler.time(Call::Alloc, self.calls, || unsafe {
                self.a.alloc(layout(size))
            });
            if p.is_null() {
                out_of_memory("xmalloc", size);
            }
            // SAFETY: `size` >= 8 bytes at `p` are ours.
            unsafe { (p as *mut usize).write(size) };
            *b = p as usize;
            self.calls += 1;
        }
    }

    fn drain(&mut self, batch: &[usize; BATCH]) {
        for &p in batch {
            // SAFETY: an object of `fill`, its size in the first word.
            let size = unsafe { (p as *const usize).read() };
            assert!((XM_MIN..=XM_MAX).contains(&size), "object {p:#x} corrupted");
            // SAFETY: allocated with this layout, freed once.
            self.sampler.time(Call::Free, self.calls, || unsafe {
                self.a.dealloc(p as *mut u8, layout(size))
            });
            self.calls += 1;
        }
    }
}

impl Bench for Xmalloc {
    fn table(&self, scale: &Scale) -> Table {
        let columns = scale.thread_columns();
        Table::new(
            "xmalloc",
            "producer/consumer (xmalloc-like)",
            &format!(
                "Threads work in pairs: the producer allocates batches of {BATCH} objects ({XM_MIN}..={XM_MAX} B \
                 uniform, size in the first word) and passes each through a ring of {BATCHES} batch buffers \
                 to the consumer, which frees the whole batch: every free is cross-thread, and all of the \
                 producer's memory comes back through the consumer. One thread allocates a batch and frees it itself. \
                 Throughput = both sides' calls / wall time (a pair is as fast as its slower side)."
            ),
            Unit::OpsPerSec,
        )
        .columns(columns)
        .with_scaling()
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let a = Instance::<A>::new(REGION_SIZE);
        let threads = column.threads;
        let channels: Vec<Channel> = (0..threads.div_ceil(2)).map(|_| Channel::new()).collect();
        let run = run_team(threads, limit(scale), |team| {
            let mut side = Side {
                a: &*a,
                rng: Rng(0x5eed_0005_0000_0100 + team.me as u64),
                sampler: Sampler::new(),
                calls: 0,
            };
            let ch = &channels[team.me / 2];
            let mut batch = [0usize; BATCH];
            team.start();
            if threads == 1 {
                let mut step = 0;
                while !team.should_stop(step) {
                    side.fill(&mut batch);
                    side.drain(&batch);
                    step += 1;
                }
            } else if team.me % 2 == 0 {
                produce(&mut side, ch, team);
            } else {
                consume(&mut side, ch);
            }
            team.finish();
            WorkerOut {
                ops: side.calls,
                frees: side.calls / 2,
                sampler: Some(side.sampler),
                ..Default::default()
            }
        });
        Measured {
            latency: run.latency,
            ..Measured::ops(run.ops, run.elapsed)
        }
    }
}

fn produce<A: GlobalAlloc>(side: &mut Side<'_, A>, ch: &Channel, team: &crate::common::Team<'_>) {
    let mut step = 0;
    'outer: while !team.should_stop(step) {
        let mut spins = 0;
        let i = loop {
            if let Some(i) = ch.empty.pop() {
                break i;
            }
            if team.should_stop(0) {
                break 'outer;
            }
            backoff(&mut spins);
        };
        // SAFETY: buffer `i` came out of the empty ring: ours alone until pushed.
        side.fill(unsafe { &mut *ch.buffers[i].get() });
        assert!(ch.full.push(i), "full ring overflow");
        step += 1;
    }
    ch.closed.store(true, Ordering::Release);
}

fn consume<A: GlobalAlloc>(side: &mut Side<'_, A>, ch: &Channel) {
    let mut spins = 0;
    loop {
        // Read before the pop: the producer closes after its last push, so a ring
        // found empty after a close was seen stays empty.
        let closed = ch.closed.load(Ordering::Acquire);
        match ch.full.pop() {
            Some(i) => {
                // SAFETY: buffer `i` came out of the full ring: ours alone until pushed.
                side.drain(unsafe { &*ch.buffers[i].get() });
                assert!(ch.empty.push(i), "empty ring overflow");
                spins = 0;
            }
            None if closed => return,
            None => backoff(&mut spins),
        }
    }
}

// ---------------------------------------------------------------------------------

/// cache-scratch: passive false sharing.
pub(crate) struct CacheScratch;

const SCRATCH_SIZE: usize = 8;
const SCRATCH_WRITES: usize = 100;

impl Bench for CacheScratch {
    fn table(&self, scale: &Scale) -> Table {
        Table::new(
            "cache-scratch",
            "passive false sharing (cache-scratch)",
            &format!(
                "The main thread allocates one {SCRATCH_SIZE}-byte object per worker, one after the other (so \
                 they likely share a cache line) and gives one to each worker. A worker frees it, then per \
                 step allocates a {SCRATCH_SIZE}-byte object, writes it {SCRATCH_WRITES} times and frees it. \
                 An allocator that hands the freed neighbour object back to the worker makes the workers \
                 write the same cache line: 2 threads then run slower than 1 would predict."
            ),
            Unit::OpsPerSec,
        )
        .columns(scale.thread_columns())
        .with_scaling()
        .with_cross_label("Workers whose first object shared a 64-byte line with another worker's")
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let a = Instance::<A>::new(REGION_SIZE);
        let gifts: Vec<usize> = (0..column.threads)
            .map(|_| {
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(layout(SCRATCH_SIZE)) };
                if p.is_null() {
                    out_of_memory("cache-scratch", SCRATCH_SIZE);
                }
                p as usize
            })
            .collect();
        let run = run_team(column.threads, limit(scale), |team| {
            let mut sampler = Sampler::new();
            // SAFETY: the main thread's object for this worker, freed once.
            unsafe { a.dealloc(gifts[team.me] as *mut u8, layout(SCRATCH_SIZE)) };
            team.start();
            let (mut step, mut first) = (0, 0);
            while !team.should_stop(step) {
                // SAFETY: non-zero size.
                let p = sampler.time(Call::Alloc, step, || unsafe {
                    a.alloc(layout(SCRATCH_SIZE))
                });
                if p.is_null() {
                    out_of_memory("cache-scratch", SCRATCH_SIZE);
                }
                if step == 0 {
                    first = p as usize;
                }
                for k in 0..SCRATCH_WRITES {
                    // SAFETY: our object.
                    unsafe { ptr::write_volatile(p as *mut usize, k) };
                }
                // SAFETY: allocated above, freed once.
                sampler.time(Call::Free, step, || unsafe {
                    a.dealloc(p, layout(SCRATCH_SIZE))
                });
                step += 1;
            }
            team.finish();
            WorkerOut {
                ops: 2 * step,
                addr: first,
                sampler: Some(sampler),
                ..Default::default()
            }
        });
        // Share of workers whose object shares a 64-byte line with another's.
        let lines: Vec<usize> = run.addrs.iter().map(|a| a / 64).collect();
        let shared = lines
            .iter()
            .filter(|l| lines.iter().filter(|m| m == l).count() > 1)
            .count();
        Measured {
            latency: run.latency,
            cross: (column.threads > 1).then(|| shared as f64 / column.threads as f64),
            ..Measured::ops(run.ops, run.elapsed)
        }
    }
}
