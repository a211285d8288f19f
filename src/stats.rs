//! Heap statistics: a snapshot whose counters balance like an equation.
//!
//! # Invariants
//!
//! ```text
//! managed = in_use + span_free + free + cached + metadata
//! in_use  = small + large + page_run + stack
//! ```
//!
//! - `managed`: bytes of whole pages handed to the heap;
//! - `in_use`: bytes handed out (small objects counted at their class size);
//! - `span_free`: bytes of small-object and stack spans not handed out (free slots,
//!   span tails, reserve spans, free large stacks kept for reuse);
//! - `free`: bytes of free pages in the page heap;
//! - `cached`: bytes held in per-CPU caches (0 until the caches exist): objects,
//!   tiny blocks, kernel stacks, and the pages of the page caches (free pages of each
//!   CPU's group and page runs freed but not yet given back); and objects in the
//!   centrals' transfer caches (batches flushed by one CPU for the next refill);
//! - `metadata`: arena metadata, span-descriptor slabs and the CPU caches' own pages.

use crate::size_class::NUM_CLASSES;
use core::fmt;

/// Counters of one size class.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    /// Object size of the class.
    pub size: usize,
    /// Objects in use (handed out, not in a CPU cache).
    pub objects: usize,
    /// Objects held in CPU caches and in the central's transfer cache.
    pub cached: usize,
    /// Spans of the class.
    pub spans: usize,
    /// Bytes of the class's spans.
    pub span_bytes: usize,
}

/// Counters of one CPU's cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuStats {
    /// Small allocations the CPU served from its cache.
    pub allocs: usize,
    /// Small frees the CPU took into its cache.
    pub frees: usize,
    /// Batches taken from the centrals.
    pub refills: usize,
    /// Batches given back to the centrals.
    pub flushes: usize,
    /// Bytes of objects in the cache now.
    pub cached_bytes: usize,
    /// Tiny sub-objects (1 to 7 bytes) the CPU packed into 16-byte blocks.
    pub tiny: usize,
    /// Page runs (large objects and `alloc_pages` runs under 16 pages) served from
    /// the CPU's page cache.
    pub page_runs: usize,
}

impl fmt::Display for CpuStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocs {} frees {} refills {} flushes {} cached {} KiB tiny {} page runs {}",
            self.allocs,
            self.frees,
            self.refills,
            self.flushes,
            kib(self.cached_bytes),
            self.tiny,
            self.page_runs
        )
    }
}

/// A consistent snapshot of the heap (see the module docs for the equation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of whole pages handed to the heap.
    pub managed_bytes: usize,
    /// Bytes of arena metadata and descriptor slabs.
    pub metadata_bytes: usize,
    /// Bytes handed out: small + large + page runs.
    pub in_use_bytes: usize,
    /// Bytes of small objects in use, at their class size.
    pub small_bytes: usize,
    /// Bytes of large objects in use (whole pages).
    pub large_bytes: usize,
    /// Live large objects.
    pub large_objects: usize,
    /// Bytes of page runs from `alloc_pages` in use.
    pub page_run_bytes: usize,
    /// Bytes of kernel stacks in use.
    pub stack_bytes: usize,
    /// Kernel stacks of the pools (4 to 32 KiB) in use.
    pub stacks: usize,
    /// Bytes inside small-object spans not handed out.
    pub span_free_bytes: usize,
    /// Bytes of free pages in the page heap.
    pub free_bytes: usize,
    /// Bytes held by per-CPU caches, including each CPU's current 16-byte tiny block
    /// (with the tiny objects still live in it) and the page caches' pages; and by the
    /// centrals' transfer caches.
    pub cached_bytes: usize,
    /// Of `cached_bytes`: pages the per-CPU page caches hold (free pages of each CPU's
    /// group, and runs freed but not yet given back to the page heap).
    pub page_cache_bytes: usize,
    /// Of `cached_bytes`: objects in the centrals' transfer caches (batches one CPU
    /// flushed, kept for the next refill; `trim` gives them back to their spans).
    pub transfer_bytes: usize,
    /// Arenas.
    pub arenas: usize,
    /// CPUs with a cache.
    pub cpu_caches: usize,
    /// Frees refused as wrong (foreign, interior, wrong layout, double).
    pub bad_frees: usize,
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            managed_bytes: 0,
            metadata_bytes: 0,
            in_use_bytes: 0,
            small_bytes: 0,
            large_bytes: 0,
            large_objects: 0,
            page_run_bytes: 0,
            stack_bytes: 0,
            stacks: 0,
            span_free_bytes: 0,
            free_bytes: 0,
            cached_bytes: 0,
            page_cache_bytes: 0,
            transfer_bytes: 0,
            arenas: 0,
            cpu_caches: 0,
            bad_frees: 0,
            classes: [ClassStats::default(); NUM_CLASSES],
        }
    }
}

impl Stats {
    /// `true` when the counters balance:
    /// `managed == in_use + span_free + free + cached + metadata`.
    pub fn balances(&self) -> bool {
        self.in_use_bytes
            == self.small_bytes + self.large_bytes + self.page_run_bytes + self.stack_bytes
            && self.managed_bytes
                == self.in_use_bytes
                    + self.span_free_bytes
                    + self.free_bytes
                    + self.cached_bytes
                    + self.metadata_bytes
    }

    /// Metadata as a fraction of managed memory.
    pub fn metadata_ratio(&self) -> f64 {
        if self.managed_bytes == 0 {
            return 0.0;
        }
        self.metadata_bytes as f64 / self.managed_bytes as f64
    }
}

fn kib(bytes: usize) -> usize {
    bytes / 1024
}

impl fmt::Display for Stats {
    /// A table: the equation's terms, then every size class with objects or spans.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "heap: {} arenas, {} KiB managed, {} CPU caches",
            self.arenas,
            kib(self.managed_bytes),
            self.cpu_caches
        )?;
        writeln!(
            f,
            "  in use {} KiB (small {} KiB, large {} KiB in {} objects, page runs {} KiB, stacks {} KiB)",
            kib(self.in_use_bytes),
            kib(self.small_bytes),
            kib(self.large_bytes),
            self.large_objects,
            kib(self.page_run_bytes),
            kib(self.stack_bytes)
        )?;
        writeln!(
            f,
            "  span free {} KiB, page heap free {} KiB, cached {} KiB ({} KiB of pages, \
             {} KiB in transfer caches), metadata {} KiB ({:.3}%)",
            kib(self.span_free_bytes),
            kib(self.free_bytes),
            kib(self.cached_bytes),
            kib(self.page_cache_bytes),
            kib(self.transfer_bytes),
            kib(self.metadata_bytes),
            self.metadata_ratio() * 100.0
        )?;
        writeln!(
            f,
            "  balance: managed {} = in use + span free + free + cached + metadata: {}",
            self.managed_bytes,
            if self.balances() { "ok" } else { "BROKEN" }
        )?;
        writeln!(f, "  bad frees: {}", self.bad_frees)?;
        writeln!(
            f,
            "  {:>6} {:>9} {:>7} {:>6} {:>10}",
            "class", "objects", "cached", "spans", "span KiB"
        )?;
        for c in self.classes.iter().filter(|c| c.spans > 0 || c.objects > 0) {
            writeln!(
                f,
                "  {:>6} {:>9} {:>7} {:>6} {:>10}",
                c.size,
                c.objects,
                c.cached,
                c.spans,
                kib(c.span_bytes)
            )?;
        }
        Ok(())
    }
}
