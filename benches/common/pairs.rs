//! Alloc+free pairs over a fixed live set: the core of `benches/pairs.rs` and of the
//! suite's `pairs` (per size class) and `growth` (1k / 10k / 100k live) workloads.
//!
//! Pre-fill `live` objects, then each step frees a uniformly random live slot and
//! allocates a new block into it, so the live set stays at `live`. Sizes come from a
//! table of 4096 entries (log-uniform between two bounds, or one fixed size),
//! alignment 8 unless the workload asks more (`pairs --align N`); the first and last
//! byte of each new block are written. The sequence of (slot, size) comes from
//! SplitMix64 with a fixed seed, so every allocator sees exactly the same requests.

use super::probe::{Call, Probe};
use super::{aligned_layout, out_of_memory, with_align, Rng, ALIGNS};
use std::alloc::GlobalAlloc;
use std::ptr;

const SIZE_TABLE_BITS: u32 = 12;

/// The requests of one run.
pub(crate) struct Workload {
    pub(crate) sizes: Vec<u32>,
    pub(crate) live: usize,
    pub(crate) seed: u64,
    /// The alignment of every request (a power of two).
    pub(crate) align: usize,
}

impl Workload {
    /// Log-uniform sizes over `[min, max]`: entry i is `min * (max/min)^((i + 0.5) / 4096)`.
    pub(crate) fn log_uniform(min: usize, max: usize, live: usize, seed: u64) -> Self {
        let n = 1usize << SIZE_TABLE_BITS;
        let octaves = (max as f64 / min as f64).log2();
        let sizes = (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                let s = (min as f64 * (octaves * u).exp2()).round() as usize;
                s.clamp(min, max) as u32
            })
            .collect();
        Workload {
            sizes,
            live,
            seed,
            align: 8,
        }
    }

    /// Every request `size` bytes.
    pub(crate) fn fixed(size: usize, live: usize, seed: u64) -> Self {
        Workload {
            sizes: vec![size as u32; 1 << SIZE_TABLE_BITS],
            live,
            seed,
            align: 8,
        }
    }

    /// The same requests, aligned to `align` (one of [`ALIGNS`]).
    pub(crate) fn aligned(self, align: usize) -> Self {
        assert!(
            ALIGNS.contains(&align),
            "alignment {align}: not one of {ALIGNS:?}"
        );
        Workload { align, ..self }
    }

    pub(crate) fn max_size(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0) as usize
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Slot {
    ptr: *mut u8,
    size: usize,
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

#[inline(always)]
fn next_request(rng: &mut Rng, sizes: &[u32], live: usize) -> (usize, usize) {
    let r = rng.next();
    let slot = (((r as u32) as u64 * live as u64) >> 32) as usize;
    let size = sizes[(r >> (64 - SIZE_TABLE_BITS)) as usize] as usize;
    (slot, size)
}

/// The live set and the PRNG of one run.
pub(crate) struct State {
    rng: Rng,
    live: Vec<Slot>,
    align: usize,
    /// Sum of the requested sizes of the measured steps (the same for every
    /// allocator: a check that they all ran the same sequence).
    pub(crate) bytes: u64,
    steps: u64,
}

impl State {
    /// Allocates the initial live set.
    pub(crate) fn prefill<A: GlobalAlloc>(name: &str, a: &A, w: &Workload) -> Self {
        let mut rng = Rng(w.seed);
        let live = (0..w.live)
            .map(|_| {
                let (_, size) = next_request(&mut rng, &w.sizes, w.live);
                // SAFETY: non-zero size.
                let ptr = unsafe { a.alloc(aligned_layout(size, w.align)) };
                if ptr.is_null() {
                    out_of_memory(name, size);
                }
                touch(ptr, size);
                Slot { ptr, size }
            })
            .collect();
        State {
            rng,
            live,
            align: w.align,
            bytes: 0,
            steps: 0,
        }
    }

    /// The measured loop: `n` steps (one free and one alloc each), with the
    /// workload's alignment a constant in it (`with_align`).
    pub(crate) fn pairs<A: GlobalAlloc, P: Probe>(
        &mut self,
        name: &str,
        a: &A,
        w: &Workload,
        probe: &mut P,
        n: u64,
    ) {
        with_align!(self.align, |N| self
            .pairs_aligned::<A, P, N>(name, a, w, probe, n))
    }

    #[inline(never)]
    fn pairs_aligned<A: GlobalAlloc, P: Probe, const ALIGNMENT: usize>(
        &mut self,
        name: &str,
        a: &A,
        w: &Workload,
        probe: &mut P,
        n: u64,
    ) {
        let live = &mut self.live[..];
        let align = ALIGNMENT;
        let mut bytes = 0u64;
        for i in self.steps..self.steps + n {
            let (slot, size) = next_request(&mut self.rng, &w.sizes, live.len());
            let old = live[slot];
            // SAFETY: `old` was allocated by `a` with this layout and is freed once.
            probe.time(Call::Free, i, || unsafe {
                a.dealloc(old.ptr, aligned_layout(old.size, align))
            });
            // SAFETY: non-zero size.
            let ptr = probe.time(Call::Alloc, i, || unsafe {
                a.alloc(aligned_layout(size, align))
            });
            if ptr.is_null() {
                out_of_memory(name, size);
            }
            touch(ptr, size);
            live[slot] = Slot { ptr, size };
            bytes += size as u64;
        }
        self.steps += n;
        self.bytes += bytes;
    }

    /// Frees the live set.
    pub(crate) fn free_all<A: GlobalAlloc>(self, a: &A) {
        for s in self.live {
            // SAFETY: allocated by `a` with this layout, freed once.
            unsafe { a.dealloc(s.ptr, aligned_layout(s.size, self.align)) };
        }
    }
}
