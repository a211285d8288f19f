//! One-thread workloads: pairs per size class, talc's random actions, glibc's simple
//! loop, and cost growth with the live set.
//!
//! Each runs on a fresh worker thread (a team of one, as the threaded workloads do)
//! over a fresh region; set-up (pre-fill) is not timed.

use super::report::{bytes_label, Column, Table, Unit};
use super::{Bench, Measured, Scale};
use crate::common::pairs::{State, Workload};
use crate::common::probe::{Call, Probe, Sampler};
use crate::common::{
    layout, out_of_memory, run_team, Instance, Limit, Rng, Source, Subject, Which, REGION_SIZE,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

const SEED: u64 = 0x5eed_0005_0000_0001;
/// Steps a measurement makes at most (the time limit ends it first).
const MAX_STEPS: u64 = u64::MAX;

fn limit(scale: &Scale) -> Limit {
    Limit::timed(MAX_STEPS, scale.time)
}

/// Pairs over `w` on one thread: ops/s and latency.
fn pairs_run<A: Subject + Sync>(which: Which, w: &Workload, scale: &Scale) -> Measured {
    let a = Instance::<A>::new(REGION_SIZE);
    let run = run_team(1, limit(scale), |team| {
        let mut state = State::prefill(which.name(), &*a, w);
        let mut sampler = Sampler::new();
        team.start();
        let mut steps = 0;
        while !team.should_stop(steps) {
            state.pairs(which.name(), &*a, w, &mut sampler, 64);
            steps += 64;
        }
        team.finish();
        // A region's allocator goes away with its region: freeing 100k objects one by
        // one would only time linked_list_allocator's sorted hole list again.
        if A::SOURCE == Source::Process {
            state.free_all(&*a);
        }
        crate::common::WorkerOut {
            ops: 2 * steps,
            sampler: Some(sampler),
            ..Default::default()
        }
    });
    Measured {
        latency: run.latency,
        ..Measured::ops(run.ops, run.elapsed)
    }
}

// ---------------------------------------------------------------------------------

/// Alloc+free pairs of one size per column.
pub(crate) struct PairsPerClass;

const CLASS_SIZES: [usize; 14] = [
    8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];
const PAIRS_LIVE: usize = 1000;

impl Bench for PairsPerClass {
    fn table(&self, _scale: &Scale) -> Table {
        Table::new(
            "pairs",
            "alloc/free pairs per size class",
            &format!(
                "{PAIRS_LIVE} live objects of one size (fewer where they would take more than 1/8 of the \
                 64 MiB region: 512 of 32 KiB, 256 of 64 KiB), pre-filled; a step frees a random one and \
                 allocates a new one in its place (two calls); first and last byte written. 64 KiB is \
                 above spanheap's largest class (32 KiB): whole pages."
            ),
            Unit::OpsPerSec,
        )
        .columns(CLASS_SIZES.iter().map(|&s| Column::new(bytes_label(s), s)).collect())
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let size = column.param;
        let live = PAIRS_LIVE.min(REGION_SIZE / 8 / size);
        pairs_run::<A>(which, &Workload::fixed(size, live, SEED), scale)
    }
}

// ---------------------------------------------------------------------------------

/// Cost growth with the live set.
pub(crate) struct Growth;

impl Bench for Growth {
    fn table(&self, _scale: &Scale) -> Table {
        Table::new(
            "growth",
            "cost growth with the live set",
            "As `pairs`, with sizes log-uniform over 16..=512 B and 1k, 10k or 100k live objects. \
             \"cost 100k / 1k\" is the time per call at 100k live over the time at 1k (1.00x: flat). \
             Part of any growth is the memory system's (the live set leaves the caches), as the \
             process allocators' figures show.",
            Unit::OpsPerSec,
        )
        .columns(vec![
            Column::new("1k live", 1_000),
            Column::new("10k live", 10_000),
            Column::new("100k live", 100_000),
        ])
        .with_derived("cost 100k / 1k", 0, 2)
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        pairs_run::<A>(
            which,
            &Workload::log_uniform(16, 512, column.param, SEED),
            scale,
        )
    }
}

// ---------------------------------------------------------------------------------

/// talc's random actions.
pub(crate) struct RandomActions;

pub(crate) const ACTION_SLOTS: usize = 300;
pub(crate) const MAX_SIZES: [usize; 4] = [200, 1_000, 5_000, 30_000];

/// One request of the random-actions distribution: size uniform over `1..=max`,
/// alignment 8 (six times in eight), 16 or 64.
#[inline(always)]
pub(crate) fn request(rng: &mut Rng, max: usize) -> Layout {
    let r = rng.next();
    let size = 1 + (((r as u32) as u64 * max as u64) >> 32) as usize;
    let align = [8, 8, 8, 8, 8, 8, 16, 64][(r >> 61) as usize];
    Layout::from_size_align(size, align).unwrap()
}

/// A live object of the random workloads: its layout and a tag in its first and
/// last byte, checked at every free and realloc.
#[derive(Clone, Copy)]
pub(crate) struct Object {
    pub(crate) ptr: *mut u8,
    pub(crate) layout: Layout,
}

impl Object {
    pub(crate) fn tag(&self) -> u8 {
        (self.ptr as usize >> 3) as u8 ^ self.layout.size() as u8
    }

    /// Writes the tag into the first and last byte.
    pub(crate) fn mark(&self) {
        // SAFETY: the object's bytes are ours.
        unsafe {
            ptr::write_volatile(self.ptr, self.tag());
            ptr::write_volatile(self.ptr.add(self.layout.size() - 1), self.tag());
        }
    }

    /// Checks the first byte against the tag written when the object got `ptr` and
    /// `old_size` (a realloc keeps the first byte).
    pub(crate) fn check(&self, tag: u8) {
        // SAFETY: as above.
        let b = unsafe { ptr::read_volatile(self.ptr) };
        assert_eq!(b, tag, "object {:p} corrupted", self.ptr);
    }
}

struct Actions<'a, A> {
    a: &'a A,
    rng: Rng,
    slots: Vec<Option<Object>>,
    max: usize,
}

impl<A: GlobalAlloc> Actions<'_, A> {
    /// One action on a random slot: fill it if empty, else free or reallocate it.
    #[inline(always)]
    fn act(&mut self, probe: &mut impl Probe, step: u64) {
        let i = self.rng.below(ACTION_SLOTS);
        match self.slots[i] {
            None => {
                let layout = request(&mut self.rng, self.max);
                // SAFETY: non-zero size.
                let ptr = probe.time(Call::Alloc, step, || unsafe { self.a.alloc(layout) });
                if ptr.is_null() {
                    out_of_memory("random-actions", layout.size());
                }
                let o = Object { ptr, layout };
                o.mark();
                self.slots[i] = Some(o);
            }
            Some(o) => {
                o.check(o.tag());
                if self.rng.next() & 1 == 0 {
                    // SAFETY: a live object of `a` with this layout, freed once.
                    probe.time(Call::Free, step, || unsafe {
                        self.a.dealloc(o.ptr, o.layout)
                    });
                    self.slots[i] = None;
                } else {
                    let new = request(&mut self.rng, self.max).size();
                    // SAFETY: a live object of `a` with this layout; non-zero new size.
                    let ptr = unsafe { self.a.realloc(o.ptr, o.layout, new) };
                    if ptr.is_null() {
                        out_of_memory("random-actions", new);
                    }
                    let moved = Object {
                        ptr,
                        layout: Layout::from_size_align(new, o.layout.align()).unwrap(),
                    };
                    moved.check(o.tag());
                    moved.mark();
                    self.slots[i] = Some(moved);
                }
            }
        }
    }

    fn free_all(self) {
        for o in self.slots.into_iter().flatten() {
            // SAFETY: live objects of `a`, freed once.
            unsafe { self.a.dealloc(o.ptr, o.layout) };
        }
    }
}

impl Bench for RandomActions {
    fn table(&self, _scale: &Scale) -> Table {
        Table::new(
            "random-actions",
            "talc's random actions",
            &format!(
                "{ACTION_SLOTS} slots, about 200 objects live. A step picks a random slot: empty, it gets a \
                 new object; full, the object is freed or reallocated to a new size (even odds). Sizes uniform \
                 over 1..=max, alignment 8 (6 in 8), 16 or 64; first and last byte tagged and checked. One call \
                 per step."
            ),
            Unit::OpsPerSec,
        )
        .columns(MAX_SIZES.iter().map(|&m| Column::new(format!("max {m} B"), m)).collect())
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let a = Instance::<A>::new(REGION_SIZE);
        let run = run_team(1, limit(scale), |team| {
            let mut w = Actions {
                a: &*a,
                rng: Rng(SEED),
                slots: vec![None; ACTION_SLOTS],
                max: column.param,
            };
            let mut probe = crate::common::probe::NoProbe;
            // Warm up to the steady state (about 2/3 of the slots full).
            for step in 0..4 * ACTION_SLOTS as u64 {
                w.act(&mut probe, step);
            }
            let mut sampler = Sampler::new();
            team.start();
            let mut step = 0;
            while !team.should_stop(step) {
                w.act(&mut sampler, step);
                step += 1;
            }
            team.finish();
            w.free_all();
            crate::common::WorkerOut {
                ops: step,
                sampler: Some(sampler),
                ..Default::default()
            }
        });
        Measured {
            latency: run.latency,
            ..Measured::ops(run.ops, run.elapsed)
        }
    }
}

// ---------------------------------------------------------------------------------

/// glibc's simple malloc benchmark loop.
pub(crate) struct GlibcSimple;

const GLIBC_SIZES: [usize; 4] = [16, 256, 1024, 4096];
const GLIBC_COUNTS: [usize; 4] = [25, 100, 400, 1600];

impl Bench for GlibcSimple {
    fn table(&self, scale: &Scale) -> Table {
        let mut columns: Vec<Column> = GLIBC_SIZES
            .iter()
            .map(|&s| Column::new(bytes_label(s), s))
            .collect();
        // The same loop on two threads at once (each its own blocks), 256 B.
        if scale.threads.contains(&2) {
            columns.push(Column {
                label: "256 B, 2 threads".into(),
                threads: 2,
                param: 256,
            });
        }
        Table::new(
            "glibc-simple",
            "glibc's simple malloc loop",
            "A step allocates 25 blocks of one size and frees them in allocation order, then 100, 400 and \
             1600 (4250 calls). No live set between steps: this is the allocator's best case, a cache \
             that empties and refills. The 2-thread column runs the loop on two threads at once, each on \
             its own blocks (aggregate calls/s).",
            Unit::OpsPerSec,
        )
        .columns(columns)
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        _run: usize,
    ) -> Measured {
        let a = Instance::<A>::new(REGION_SIZE);
        let size = column.param;
        let run = run_team(column.threads, limit(scale), |team| {
            let mut blocks = vec![ptr::null_mut::<u8>(); GLIBC_COUNTS[3]];
            let mut sampler = Sampler::new();
            team.start();
            let (mut step, mut ops, mut call) = (0, 0, 0u64);
            while !team.should_stop(step) {
                for n in GLIBC_COUNTS {
                    for b in &mut blocks[..n] {
                        // SAFETY: non-zero size.
                        let p =
                            sampler.time(Call::Alloc, call, || unsafe { a.alloc(layout(size)) });
                        if p.is_null() {
                            out_of_memory("glibc-simple", size);
                        }
                        // SAFETY: a fresh block of `size` bytes.
                        unsafe { ptr::write_volatile(p, 1) };
                        *b = p;
                        call += 1;
                    }
                    for &b in &blocks[..n] {
                        // SAFETY: allocated above with this layout, freed once.
                        sampler.time(Call::Free, call, || unsafe { a.dealloc(b, layout(size)) });
                        call += 1;
                    }
                    ops += 2 * n as u64;
                }
                step += 1;
            }
            team.finish();
            crate::common::WorkerOut {
                ops,
                sampler: Some(sampler),
                ..Default::default()
            }
        });
        Measured {
            latency: run.latency,
            ..Measured::ops(run.ops, run.elapsed)
        }
    }
}
