//! Memory workloads: heap efficiency by talc's method, and spanheap's metadata.

use super::report::{bytes_label, Column, Table, Unit};
use super::single::{request, Object, MAX_SIZES};
use super::{Bench, Measured, Scale};
use crate::common::{Instance, Rng, Source, SpanHeap, Subject, Which};
use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Heap efficiency: random alloc/free/realloc until the first failure.
pub(crate) struct Efficiency;

impl Efficiency {
    fn region_size(scale: &Scale) -> usize {
        if scale.quick {
            4 << 20
        } else {
            16 << 20
        }
    }

    /// A run that has not failed by then is given up (linked_list_allocator's first
    /// fit over tens of thousands of holes).
    fn cap(scale: &Scale) -> Duration {
        Duration::from_secs(if scale.quick { 2 } else { 8 })
    }
}

impl Bench for Efficiency {
    fn table(&self, scale: &Scale) -> Table {
        Table::new(
            "efficiency",
            "heap efficiency (talc's method)",
            &format!(
                "Over a {} region, from empty: each step allocates a new object (1 in 2), frees a random live \
                 one (1 in 4) or reallocates one to a new size (1 in 4), with the random-actions distribution \
                 (sizes 1..=max, alignment 8, 16 or 64), until the first request fails. Figure: requested \
                 bytes live at that moment / region bytes. Each run has its own seed (the same for every \
                 allocator); a run not failed within {} s counts as \"-\". Only the allocators that live \
                 in the region.",
                bytes_label(Self::region_size(scale)),
                Self::cap(scale).as_secs()
            ),
            Unit::Percent,
        )
        .columns(MAX_SIZES.iter().map(|&m| Column::new(format!("max {m} B"), m)).collect())
    }

    fn applies(&self, which: Which) -> bool {
        which.source() == Source::Region
    }

    /// No timing, so no noise: three seeds are enough.
    fn runs(&self, scale: &Scale) -> usize {
        scale.runs.min(3)
    }

    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        _which: Which,
        scale: &Scale,
        run: usize,
    ) -> Measured {
        let size = Self::region_size(scale);
        let a = Instance::<A>::new(size);
        let cap = Self::cap(scale);
        let seed = 0x5eed_0005_0000_e000 + run as u64;
        let live = std::thread::scope(|s| {
            s.spawn(|| fill_until_failure(&*a, column.param, seed, cap))
                .join()
                .expect("efficiency worker panicked")
        });
        match live {
            Some(bytes) => Measured {
                value: bytes as f64 / size as f64,
                valid: true,
                ..Measured::default()
            },
            None => Measured::default(),
        }
    }
}

/// Live requested bytes at the first failed request, `None` at the time cap.
fn fill_until_failure<A: GlobalAlloc>(
    a: &A,
    max: usize,
    seed: u64,
    cap: Duration,
) -> Option<usize> {
    let mut rng = Rng(seed);
    let mut live: Vec<Object> = Vec::new();
    let mut bytes = 0usize;
    let start = Instant::now();
    let mut step = 0u64;
    let result = loop {
        step += 1;
        if step % 1024 == 0 && start.elapsed() > cap {
            break None;
        }
        let action = rng.below(4);
        if action < 2 || live.is_empty() {
            let layout = request(&mut rng, max);
            // SAFETY: non-zero size.
            let ptr = unsafe { a.alloc(layout) };
            if ptr.is_null() {
                break Some(bytes);
            }
            let o = Object { ptr, layout };
            o.mark();
            live.push(o);
            bytes += layout.size();
        } else {
            let i = rng.below(live.len());
            let o = live[i];
            o.check(o.tag());
            if action == 2 {
                // SAFETY: a live object of `a`, freed once.
                unsafe { a.dealloc(o.ptr, o.layout) };
                live.swap_remove(i);
                bytes -= o.layout.size();
            } else {
                let new = request(&mut rng, max).size();
                // SAFETY: a live object of `a` with this layout.
                let ptr = unsafe { a.realloc(o.ptr, o.layout, new) };
                if ptr.is_null() {
                    break Some(bytes);
                }
                let moved = Object {
                    ptr,
                    layout: Layout::from_size_align(new, o.layout.align()).unwrap(),
                };
                moved.check(o.tag());
                moved.mark();
                live[i] = moved;
                bytes = bytes - o.layout.size() + new;
            }
        }
    };
    for o in live {
        // SAFETY: live objects of `a`, freed once.
        unsafe { a.dealloc(o.ptr, o.layout) };
    }
    result
}

// ---------------------------------------------------------------------------------

/// spanheap's metadata bytes over one region in several states.
pub(crate) struct Metadata {
    pub(crate) managed: usize,
    /// (state, metadata bytes, in-use bytes).
    pub(crate) states: Vec<(String, usize, usize)>,
}

impl Metadata {
    pub(crate) fn worst_bytes(&self) -> usize {
        self.states.iter().map(|s| s.1).max().unwrap_or(0)
    }

    pub(crate) fn worst_fraction(&self) -> f64 {
        self.worst_bytes() as f64 / self.managed as f64
    }

    pub(crate) fn markdown(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### `metadata`: spanheap's metadata over a {} region\n",
            bytes_label(self.managed)
        );
        let _ = writeln!(
            out,
            "`stats().metadata_bytes` (arena metadata, span-descriptor slabs, CPU caches) on a fresh heap \
             per state, as a share of `stats().managed_bytes`.\n"
        );
        let _ = writeln!(
            out,
            "| state | metadata | of managed | in use |\n|---|---:|---:|---:|"
        );
        for (state, meta, in_use) in &self.states {
            let _ = writeln!(
                out,
                "| {state} | {} KiB | {:.3}% | {} MiB |",
                meta >> 10,
                *meta as f64 * 100.0 / self.managed as f64,
                in_use >> 20
            );
        }
        out.push('\n');
    }
}

const METADATA_REGION: usize = 512 << 20;

/// The next request of a fill.
type NextLayout = Box<dyn Fn(&mut Rng) -> Layout + Sync>;

/// Fills a fresh 512 MiB spanheap with `layout()` objects until `target` bytes are
/// in use (never freed: the heap goes away with its region), on a worker thread.
fn metadata_state(
    target: usize,
    next: impl Fn(&mut Rng) -> Layout + Sync,
) -> (usize, usize, usize) {
    let a = Instance::<SpanHeap>::new(METADATA_REGION);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = Rng(0x5eed_0005_0000_3e7a);
            let mut bytes = 0;
            while bytes < target {
                let layout = next(&mut rng);
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "metadata: heap full at {bytes} bytes");
                bytes += layout.size();
            }
        });
    });
    let st = a.stats();
    assert!(st.balances(), "spanheap stats do not balance");
    (st.managed_bytes, st.metadata_bytes, st.in_use_bytes)
}

pub(crate) fn metadata(_scale: &Scale) -> Metadata {
    let started = Instant::now();
    let half = METADATA_REGION / 2;
    let log_uniform = |rng: &mut Rng| {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        Layout::from_size_align((16.0 * 256f64.powf(u)) as usize, 8).unwrap()
    };
    let cases: Vec<(String, usize, NextLayout)> = vec![
        (
            "fresh (after add_memory)".into(),
            0,
            Box::new(|_: &mut Rng| crate::common::layout(8)),
        ),
        (
            "one CPU cache (one 64 B object)".into(),
            1,
            Box::new(|_: &mut Rng| crate::common::layout(64)),
        ),
        (
            "256 MiB of 16..4096 B objects (log-uniform)".into(),
            half,
            Box::new(log_uniform),
        ),
        (
            "256 MiB of 16 B objects".into(),
            half,
            Box::new(|_: &mut Rng| crate::common::layout(16)),
        ),
        (
            "256 MiB of 1 KiB objects".into(),
            half,
            Box::new(|_: &mut Rng| crate::common::layout(1024)),
        ),
        (
            "256 MiB of 64 KiB objects (large)".into(),
            half,
            Box::new(|_: &mut Rng| crate::common::layout(65536)),
        ),
    ];
    let mut managed = 0;
    let mut states = Vec::new();
    for (name, target, next) in cases {
        let (m, meta, in_use) = metadata_state(target, next);
        managed = m;
        states.push((name, meta, in_use));
    }
    eprintln!(". metadata ({:.1} s)", started.elapsed().as_secs_f64());
    Metadata { managed, states }
}
