//! Per-CPU page caches (Go's `p.pagecache`): each CPU holds the free pages of one
//! 64-page group as a bitmap and serves page runs of fewer than [`RUN_LIMIT`] pages
//! (large objects of 33 to 60 KiB, small `alloc_pages` runs) from it without a lock.
//!
//! - **Taking a group** ([`PageHeap::take_group`], one locked step): the group of the
//!   first fit for the run asked for; every free page of that group moves into the
//!   cache, with the group's dirty bits. The old group, the spare descriptors and the
//!   pending frees go back in the same locked step.
//! - **Allocating** ([`PageCache::alloc`], no lock): the lowest aligned run of set bits
//!   (`pages - 1` shift-and-ands and a `trailing_zeros`), a descriptor from the
//!   cache's own stack of spare descriptors (from the group's arena, whose span map
//!   names descriptors by their offset in the arena), the span written and recorded on
//!   its first page (a relaxed store: the page is the cache's alone).
//! - **Freeing** ([`PageCache::free`], no lock): a run inside the CPU's current group
//!   goes back into the bitmap, its descriptor onto the spare stack; any other run
//!   joins the CPU's pending frees, which go back to the page heap together, in one
//!   locked step, when the list is full or the cache is drained. Either way the run's
//!   span-map entry is cleared at once, so a second free of it is refused as foreign.
//!
//! Live-run counters (large pages and objects, page-run pages) are kept per CPU as
//! wrapping deltas: the page heap's counters plus every cache's [`RunCounts`] give the
//! real values (a run taken from one CPU's cache may be freed through the page heap or
//! another CPU).
//!
//! May call: `page_heap` (groups, descriptors, releasing spans, under the page lock
//! the caller holds) and `arena` (span-map entries of the cache's own pages). Called
//! by: `heap`, pinned to the cache's CPU (or with the CPU offline, for draining).
//!
//! # Invariants
//!
//! - every page of `group.free` is marked in use in its arena's page bitmap, belongs to
//!   no span, and is the cache's alone; `group.dirty` is exact for those pages, and
//!   the arena marks them dirty while the cache holds them;
//! - `descriptors[..descriptor_count]` are unused descriptor slots of the group's
//!   arena;
//! - `pending[..pending_count]` are spans (with their arenas) whose pages and
//!   descriptors nobody uses any more, with no span-map entry, not yet given back;
//! - so for each arena: `managed == free + pages of live spans + metadata + pages
//!   held by page caches` (checked by `SpanHeap::check_invariants`).

use crate::arena::Arena;
use crate::page_bitmap::ALIGN_MASKS;
use crate::page_heap::{Group, NewSpan, PageHeap};
use crate::span::{Span, SpanKind};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Runs of fewer pages than this come from the page caches (Go: a quarter of the
/// 64-page cache).
pub(crate) const RUN_LIMIT: usize = 16;
/// The largest alignment, in pages, a cached run may ask for.
pub(crate) const MAX_ALIGN: usize = 16;
/// Pages of a group.
const GROUP_PAGES: usize = 64;
/// Spare descriptors a cache holds at most; a new group tops the stack up to half.
const DESCRIPTORS: usize = 8;
/// Pending frees a cache holds before it gives them back.
const PENDING: usize = 16;

/// `true` when a run of `pages` pages aligned to `align` pages can come from a page
/// cache.
#[inline]
pub(crate) fn serves(pages: usize, align: usize) -> bool {
    pages < RUN_LIMIT && align <= MAX_ALIGN
}

/// The lowest start `i`, a multiple of `align`, of `pages` consecutive set bits in
/// `free`.
fn fit(free: u64, pages: usize, align: usize) -> Option<usize> {
    debug_assert!((1..RUN_LIMIT).contains(&pages) && align.is_power_of_two());
    let mut starts = free & ALIGN_MASKS[align.trailing_zeros() as usize];
    for k in 1..pages {
        starts &= free >> k;
    }
    (starts != 0).then(|| starts.trailing_zeros() as usize)
}

/// The bits of `pages` pages from bit `start`.
fn run_mask(start: usize, pages: usize) -> u64 {
    ((1u64 << pages) - 1) << start
}

/// Per-CPU deltas of the live-run counters (wrapping; written by the CPU only).
#[derive(Default)]
pub(crate) struct RunCounts {
    /// Pages of large objects handed out minus those taken back.
    pub(crate) large_pages: AtomicUsize,
    /// Large objects handed out minus those taken back.
    pub(crate) large_objects: AtomicUsize,
    /// Pages of `alloc_pages` runs handed out minus those taken back.
    pub(crate) run_pages: AtomicUsize,
    /// Runs served from the cache (allocations, not a delta).
    pub(crate) served: AtomicUsize,
}

impl RunCounts {
    /// Adds `delta` pages (and objects) of `kind` (wrapping).
    fn count(&self, kind: SpanKind, pages: usize, objects: usize) {
        let add = |counter: &AtomicUsize, n: usize| {
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        };
        match kind {
            SpanKind::Large => {
                add(&self.large_pages, pages);
                add(&self.large_objects, objects);
            }
            SpanKind::Pages => add(&self.run_pages, pages),
            _ => debug_assert!(false, "page caches serve large and pages spans only"),
        }
    }
}

/// One CPU's page cache. Lives in its `CpuCache`; only its CPU changes it (relaxed
/// loads and stores: other CPUs read it for stats and the invariant walker).
pub(crate) struct PageCache {
    /// The group's arena; null when the cache holds no group.
    arena: AtomicPtr<Arena>,
    /// The group's first page in its arena.
    first: AtomicUsize,
    /// Free pages of the group held (bit `i`: page `first + i`).
    free: AtomicU64,
    /// Dirty bits of the group (see `Group::dirty`).
    dirty: AtomicU64,
    descriptors: [AtomicPtr<Span>; DESCRIPTORS],
    descriptor_count: AtomicUsize,
    pending: [AtomicPtr<Span>; PENDING],
    pending_arenas: [AtomicPtr<Arena>; PENDING],
    pending_count: AtomicUsize,
    /// Pages of the pending runs.
    pending_pages: AtomicUsize,
    /// Live-run counter deltas.
    pub(crate) counts: RunCounts,
}

impl PageCache {
    /// An empty page cache.
    pub(crate) fn new() -> Self {
        Self {
            arena: AtomicPtr::new(ptr::null_mut()),
            first: AtomicUsize::new(0),
            free: AtomicU64::new(0),
            dirty: AtomicU64::new(0),
            descriptors: [const { AtomicPtr::new(ptr::null_mut()) }; DESCRIPTORS],
            descriptor_count: AtomicUsize::new(0),
            pending: [const { AtomicPtr::new(ptr::null_mut()) }; PENDING],
            pending_arenas: [const { AtomicPtr::new(ptr::null_mut()) }; PENDING],
            pending_count: AtomicUsize::new(0),
            pending_pages: AtomicUsize::new(0),
            counts: RunCounts::default(),
        }
    }

    /// A run of `pages` pages aligned to `align` pages (see [`serves`]) from the
    /// cache's group, as a new span of `kind`; `None` when the group has no such run
    /// or the cache no spare descriptor (the caller then refills).
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU.
    pub(crate) unsafe fn alloc(
        &self,
        pages: usize,
        align: usize,
        kind: SpanKind,
    ) -> Option<NewSpan> {
        let arena = NonNull::new(self.arena.load(Relaxed))?;
        let free = self.free.load(Relaxed);
        let start = fit(free, pages, align)?;
        let count = self.descriptor_count.load(Relaxed).checked_sub(1)?;
        // SAFETY: slots below the count hold unused descriptors (invariant), not null.
        let span = unsafe { NonNull::new_unchecked(self.descriptors[count].load(Relaxed)) };
        self.descriptor_count.store(count, Relaxed);
        let mask = run_mask(start, pages);
        let dirty = self.dirty.load(Relaxed);
        self.free.store(free & !mask, Relaxed);
        self.dirty.store(dirty | mask, Relaxed);
        // SAFETY: the group's arena lives as long as the heap; `set_span` and
        // `addr_of` only read its fixed fields and store to the span map.
        let a = unsafe { arena.as_ref() };
        let first = self.first.load(Relaxed) + start;
        // SAFETY: an unused descriptor slot of this arena, ours (invariant); `write`
        // initialises all of it.
        unsafe {
            span.as_ptr()
                .write(Span::whole(a.addr_of(first), pages, kind))
        };
        // The pages were the cache's alone: nobody reads their entry before the run
        // is handed out.
        a.set_span(first, 1, span.as_ptr());
        self.counts.count(kind, pages, 1);
        let served = &self.counts.served;
        served.store(served.load(Relaxed) + 1, Relaxed);
        Some(NewSpan {
            span,
            dirty: dirty & mask != 0,
        })
    }

    /// Takes back the run of `span` (a live large or pages span of fewer than
    /// [`RUN_LIMIT`] pages in `arena`, given up by its user): into the group when it
    /// lies there, else onto the pending frees. `false` (and nothing done) when it
    /// would go to the pending frees and they are full.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU, `span` is as described and nothing
    /// refers to its memory any more.
    pub(crate) unsafe fn free(&self, arena: NonNull<Arena>, span: NonNull<Span>) -> bool {
        // SAFETY: a live span of a live arena (caller).
        let (a, s) = unsafe { (arena.as_ref(), span.as_ref()) };
        let first = a.page_of(s.base);
        let (pages, kind) = (s.pages as usize, s.kind);
        let group = self.first.load(Relaxed);
        let count = self.descriptor_count.load(Relaxed);
        let local = arena.as_ptr() == self.arena.load(Relaxed)
            && first >= group
            && first + pages <= group + GROUP_PAGES
            && count < DESCRIPTORS;
        if local {
            let mask = run_mask(first - group, pages);
            a.set_span(first, 1, ptr::null_mut());
            self.free.store(self.free.load(Relaxed) | mask, Relaxed);
            // Handed out, so possibly written.
            self.dirty.store(self.dirty.load(Relaxed) | mask, Relaxed);
            self.descriptors[count].store(span.as_ptr(), Relaxed);
            self.descriptor_count.store(count + 1, Relaxed);
        } else {
            let n = self.pending_count.load(Relaxed);
            if n == PENDING {
                return false;
            }
            a.set_span(first, 1, ptr::null_mut());
            self.pending[n].store(span.as_ptr(), Relaxed);
            self.pending_arenas[n].store(arena.as_ptr(), Relaxed);
            self.pending_count.store(n + 1, Relaxed);
            let held = self.pending_pages.load(Relaxed);
            self.pending_pages.store(held + pages, Relaxed);
        }
        self.counts
            .count(kind, pages.wrapping_neg(), 1usize.wrapping_neg());
        true
    }

    /// Replaces the group with the one holding the first fit for `pages` pages
    /// aligned to `align`, and gives back the pending frees; `false` when the page
    /// heap has no such run, or its first fit crosses groups (the cache is then
    /// unchanged but for the pending frees), or no descriptor can be had outside the
    /// new group (the cache then holds no group).
    ///
    /// # Safety
    ///
    /// As for [`PageCache::alloc`]; `heap` is the page heap of this cache's heap,
    /// locked by the caller.
    pub(crate) unsafe fn refill(&self, heap: &mut PageHeap, pages: usize, align: usize) -> bool {
        // SAFETY: forwarded.
        unsafe { self.give_pending(heap) };
        let Some(new) = heap.take_group(pages, align) else {
            return false;
        };
        if let Some(old) = self.group() {
            heap.give_group(old);
        }
        if new.arena.as_ptr() != self.arena.load(Relaxed) {
            // SAFETY: forwarded.
            unsafe { self.give_descriptors(heap) };
        }
        self.arena.store(new.arena.as_ptr(), Relaxed);
        self.first.store(new.first, Relaxed);
        self.free.store(new.free, Relaxed);
        self.dirty.store(new.dirty, Relaxed);
        let mut count = self.descriptor_count.load(Relaxed);
        while count < DESCRIPTORS / 2 {
            let Some(span) = heap.take_descriptor(new.arena) else {
                break;
            };
            self.descriptors[count].store(span.as_ptr(), Relaxed);
            count += 1;
        }
        self.descriptor_count.store(count, Relaxed);
        if count == 0 {
            // No page outside the group for a descriptor slab: a run from the group
            // could not be described. Give the group back so that the page heap can
            // take a slab page and the run from its pages.
            self.drop_group(heap);
            return false;
        }
        true
    }

    /// Gives everything back: the group, the spare descriptors, the pending frees.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU, or the CPU is offline and the caller
    /// has the cache alone; `heap` is the page heap of this cache's heap, locked.
    pub(crate) unsafe fn give_all(&self, heap: &mut PageHeap) {
        // SAFETY: forwarded.
        unsafe {
            self.give_pending(heap);
            self.give_descriptors(heap);
        }
        self.drop_group(heap);
    }

    /// Gives the group (if any) back to `heap`, locked by the caller: the cache then
    /// holds no group.
    fn drop_group(&self, heap: &mut PageHeap) {
        if let Some(group) = self.group() {
            heap.give_group(group);
        }
        self.arena.store(ptr::null_mut(), Relaxed);
        self.free.store(0, Relaxed);
    }

    /// `true` when the cache's group lies in `arena`.
    pub(crate) fn holds(&self, arena: NonNull<Arena>) -> bool {
        self.arena.load(Relaxed) == arena.as_ptr()
    }

    /// `true` when the cache holds nothing the page heap could use.
    pub(crate) fn is_empty(&self) -> bool {
        self.free.load(Relaxed) == 0
            && self.descriptor_count.load(Relaxed) == 0
            && self.pending_count.load(Relaxed) == 0
    }

    /// The group held, if any.
    fn group(&self) -> Option<Group> {
        Some(Group {
            arena: NonNull::new(self.arena.load(Relaxed))?,
            first: self.first.load(Relaxed),
            free: self.free.load(Relaxed),
            dirty: self.dirty.load(Relaxed),
        })
    }

    /// Frees the pending runs to the page heap (locked by the caller).
    ///
    /// # Safety
    ///
    /// As for [`PageCache::give_all`].
    pub(crate) unsafe fn give_pending(&self, heap: &mut PageHeap) {
        for i in 0..self.pending_count.load(Relaxed) {
            let span = self.pending[i].load(Relaxed);
            let arena = self.pending_arenas[i].load(Relaxed);
            // SAFETY: pending entries are non-null spans of their arenas that nobody
            // uses, already counted out (invariant).
            unsafe {
                heap.release_span(NonNull::new_unchecked(arena), NonNull::new_unchecked(span))
            };
        }
        self.pending_count.store(0, Relaxed);
        self.pending_pages.store(0, Relaxed);
    }

    /// Returns the spare descriptors to their arena (the group's).
    ///
    /// # Safety
    ///
    /// As for [`PageCache::give_all`].
    unsafe fn give_descriptors(&self, heap: &mut PageHeap) {
        let Some(arena) = NonNull::new(self.arena.load(Relaxed)) else {
            return;
        };
        let count = self.descriptor_count.load(Relaxed);
        for slot in &self.descriptors[..count] {
            let span = slot.load(Relaxed);
            // SAFETY: spare descriptors are unused, non-null slots of the group's
            // arena (invariant).
            unsafe { heap.give_descriptor(arena, NonNull::new_unchecked(span)) };
        }
        self.descriptor_count.store(0, Relaxed);
    }

    /// Pages the cache holds in `arena`: free pages of its group and pending runs.
    ///
    /// # Safety
    ///
    /// The cache's CPU makes no heap call meanwhile (it reads pending descriptors).
    pub(crate) unsafe fn pages_in(&self, arena: *const Arena) -> usize {
        let mut pages = 0;
        if ptr::eq(self.arena.load(Relaxed), arena) {
            pages += self.free.load(Relaxed).count_ones() as usize;
        }
        for i in 0..self.pending_count.load(Relaxed).min(PENDING) {
            if ptr::eq(self.pending_arenas[i].load(Relaxed), arena) {
                // SAFETY: a pending span's descriptor stays valid until it is given
                // back, which only the cache's CPU does, idle now (caller).
                pages += unsafe { (*self.pending[i].load(Relaxed)).pages } as usize;
            }
        }
        pages
    }

    /// Pages the cache holds in all arenas (each counter exact, the pair not a
    /// snapshot while the CPU runs).
    pub(crate) fn pages(&self) -> usize {
        self.free.load(Relaxed).count_ones() as usize + self.pending_pages.load(Relaxed)
    }

    /// The group's arena and pages held (free bits as page indices), for the
    /// invariant walker.
    pub(crate) fn held(&self) -> Option<(*const Arena, impl Iterator<Item = usize>)> {
        let arena = self.arena.load(Relaxed);
        if arena.is_null() {
            return None;
        }
        let (first, free) = (self.first.load(Relaxed), self.free.load(Relaxed));
        Some((
            arena as *const Arena,
            (0..GROUP_PAGES)
                .filter(move |i| free & (1 << i) != 0)
                .map(move |i| first + i),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive answer: the lowest aligned start of `pages` set bits.
    fn naive_fit(free: u64, pages: usize, align: usize) -> Option<usize> {
        (0..=GROUP_PAGES - pages)
            .step_by(align)
            .find(|&i| (i..i + pages).all(|b| free & (1 << b) != 0))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 256 },
            // Miri's isolation has no file system for the failure file.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn fit_is_the_lowest_aligned_run(free: u64, pages in 1usize..RUN_LIMIT, align_log in 0u32..5) {
            let align = 1usize << align_log;
            prop_assert_eq!(fit(free, pages, align), naive_fit(free, pages, align));
        }
    }

    #[test]
    fn fit_on_edges() {
        assert_eq!(fit(u64::MAX, 15, 16), Some(0));
        assert_eq!(fit(u64::MAX << 49, 15, 1), Some(49));
        assert_eq!(fit(u64::MAX << 50, 15, 1), None);
        assert_eq!(fit(0b1110, 2, 2), Some(2));
        assert_eq!(fit(0b0110, 2, 2), None);
        assert_eq!(run_mask(60, 4), 0xF << 60);
    }
}
