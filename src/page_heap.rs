//! The page heap: every arena's page bitmap behind one lock, spans created from page
//! runs, and the lock-free index from an address to its arena.
//!
//! `PageHeap` owns the arenas (sorted by address) and hands out runs of pages first
//! fit by address: the lowest arena whose bitmap has a fitting run, and the lowest
//! run inside it (O(log pages) per arena, see `page_bitmap`). Each run becomes a
//! [`Span`] whose descriptor comes from the same arena and whose pages are recorded in
//! the arena's span map, so that `span_of(address)` needs no lock: the arena through
//! [`ArenaIndex`], the page through the map.
//!
//! May call: `arena`, `page_bitmap`, `span`. Called by: the centrals (new and empty
//! spans, with the central's lock held: lock order is central, then page heap) and the
//! heap front end (large objects, page runs, memory intake, stats).
//!
//! # Invariants
//!
//! - `arenas[..count]` are sorted by base, distinct windows, each also in the index;
//! - the index maps a window number to its arena; entries are only ever added, and an
//!   arena is fully initialised before its entry is published (release/acquire);
//! - a live span lies inside one arena; its descriptor belongs to that arena.

use crate::arena::Arena;
use crate::range::{AddMemoryError, Config, InitialContents, MemoryRange};
use crate::size_class::{SizeClass, PAGE_SIZE};
use crate::span::{Span, SpanKind, FREE_FILL};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The most arenas a heap can have. With the default 64 MiB arena size that is 4 GiB
/// of memory in any layout; a sparse memory map with many distant ranges needs one
/// arena per window that holds memory.
pub const MAX_ARENAS: usize = 64;

/// Slots of the open-addressing arena index (twice the arenas: short probes).
const INDEX_SLOTS: usize = 2 * MAX_ARENAS;

/// Windows looked up directly, from the first arena's window on: 4 GiB of memory
/// with the default 64 MiB arenas, the common case of one contiguous RAM range.
const NEAR_WINDOWS: usize = 64;

/// `near_base` before the first arena: no window is "near" (`window - base` wraps to
/// `window + NEAR_WINDOWS + 1`, never below `NEAR_WINDOWS`).
const NO_BASE: usize = usize::MAX - NEAR_WINDOWS;

/// Lock-free map from a window number (`address >> arena_shift`) to its arena.
/// Insert-only, so readers need no lock. Windows `near_base .. near_base +
/// NEAR_WINDOWS` (`near_base`: the first arena's window, set once) sit in a direct
/// table, one load on the free path; the others in an open-addressing hash table that
/// readers probe until the key or an empty slot.
pub(crate) struct ArenaIndex {
    near_base: AtomicUsize,
    near: [AtomicPtr<Arena>; NEAR_WINDOWS],
    keys: [AtomicUsize; INDEX_SLOTS],
    arenas: [AtomicPtr<Arena>; INDEX_SLOTS],
}

impl ArenaIndex {
    /// An empty index.
    pub(crate) const fn new() -> Self {
        Self {
            near_base: AtomicUsize::new(NO_BASE),
            near: [const { AtomicPtr::new(ptr::null_mut()) }; NEAR_WINDOWS],
            keys: [const { AtomicUsize::new(0) }; INDEX_SLOTS],
            arenas: [const { AtomicPtr::new(ptr::null_mut()) }; INDEX_SLOTS],
        }
    }

    fn slot(window: usize) -> usize {
        // Fibonacci hashing of the window number.
        (window.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) % INDEX_SLOTS
    }

    /// The near-table entry of `window`, if it is a near window.
    #[inline(always)]
    fn near_slot(&self, window: usize) -> Option<&AtomicPtr<Arena>> {
        self.near
            .get(window.wrapping_sub(self.near_base.load(Ordering::Relaxed)))
    }

    /// The arena of window `window`, if any: one load for a near window, else O(1)
    /// expected, at most INDEX_SLOTS probes.
    #[inline]
    pub(crate) fn get(&self, window: usize) -> Option<NonNull<Arena>> {
        match self.near_slot(window) {
            Some(slot) => NonNull::new(slot.load(Ordering::Acquire)),
            None => self.get_far(window),
        }
    }

    /// The arena of window `window` if it is a near window with an arena; `None`
    /// otherwise (the caller then asks [`ArenaIndex::get`]).
    #[inline(always)]
    pub(crate) fn get_near(&self, window: usize) -> Option<NonNull<Arena>> {
        NonNull::new(self.near_slot(window)?.load(Ordering::Acquire))
    }

    fn get_far(&self, window: usize) -> Option<NonNull<Arena>> {
        let key = window.wrapping_add(1);
        let mut slot = Self::slot(window);
        for _ in 0..INDEX_SLOTS {
            match self.keys[slot].load(Ordering::Acquire) {
                0 => return None,
                k if k == key => return NonNull::new(self.arenas[slot].load(Ordering::Relaxed)),
                _ => slot = (slot + 1) % INDEX_SLOTS,
            }
        }
        None
    }

    /// Publishes `arena` for `window`. Called under the page heap's lock, at most
    /// MAX_ARENAS times, so a free slot always exists. A reader that sees the new
    /// `near_base` before the entry finds no arena: right, since nothing of an arena
    /// not yet published can have been handed out.
    fn insert(&self, window: usize, arena: NonNull<Arena>) {
        if self.near_base.load(Ordering::Relaxed) == NO_BASE {
            self.near_base.store(window, Ordering::Relaxed);
        }
        if let Some(slot) = self.near_slot(window) {
            slot.store(arena.as_ptr(), Ordering::Release);
            return;
        }
        let mut slot = Self::slot(window);
        while self.keys[slot].load(Ordering::Relaxed) != 0 {
            slot = (slot + 1) % INDEX_SLOTS;
        }
        self.arenas[slot].store(arena.as_ptr(), Ordering::Relaxed);
        self.keys[slot].store(window.wrapping_add(1), Ordering::Release);
    }
}

/// A run of pages just taken for a new span.
pub(crate) struct NewSpan {
    /// The descriptor (initialised, recorded in the span map).
    pub(crate) span: NonNull<Span>,
    /// Some page of the run may hold non-zero bytes.
    pub(crate) dirty: bool,
}

/// A 64-page group taken for a CPU's page cache (see `page_cache`).
#[derive(Clone, Copy)]
pub(crate) struct Group {
    /// The arena holding the group.
    pub(crate) arena: NonNull<Arena>,
    /// The group's first page index in the arena (a multiple of 64).
    pub(crate) first: usize,
    /// The pages of the group the cache holds: bit `i` is page `first + i`.
    pub(crate) free: u64,
    /// Which pages may hold non-zero bytes (bit `i` for page `first + i`).
    pub(crate) dirty: u64,
}

/// The page heap. Lives behind the heap's page lock.
pub(crate) struct PageHeap {
    arenas: [*mut Arena; MAX_ARENAS],
    count: usize,
    /// Pages in live large-object spans, counting neither the spans the per-CPU page
    /// caches handed out nor those they took back: wrapping, and only the sum with
    /// every cache's count (`page_cache::RunCounts`) is the real value.
    pub(crate) large_pages: usize,
    /// Live large objects (wrapping, as `large_pages`).
    pub(crate) large_objects: usize,
    /// Pages in live runs of the pages API (wrapping, as `large_pages`).
    pub(crate) run_pages: usize,
    /// Pages holding CPU caches.
    pub(crate) cache_pages: usize,
    /// Pages of stack spans (pools and large stacks).
    pub(crate) stack_pages: usize,
}

// SAFETY: the arena pointers refer to metadata inside memory the heap owns; the page
// heap is only used under its lock, so moving it between CPUs is sound.
unsafe impl Send for PageHeap {}

impl PageHeap {
    /// A page heap with no memory.
    pub(crate) const fn new() -> Self {
        Self {
            arenas: [ptr::null_mut(); MAX_ARENAS],
            count: 0,
            large_pages: 0,
            large_objects: 0,
            run_pages: 0,
            cache_pages: 0,
            stack_pages: 0,
        }
    }

    /// The arenas, in address order.
    pub(crate) fn arenas(&self) -> impl Iterator<Item = &Arena> + '_ {
        // SAFETY: the first `count` entries are live arenas (invariant), borrowed as
        // long as the page heap is.
        self.arenas[..self.count].iter().map(|a| unsafe { &**a })
    }

    /// Adds `range` to the heap, creating arenas for windows that have none. Checks
    /// the whole range before using any of it.
    ///
    /// # Safety
    ///
    /// The range is memory nobody else uses, mapped writable, for as long as the heap
    /// lives.
    pub(crate) unsafe fn add_memory(
        &mut self,
        index: &ArenaIndex,
        config: &Config,
        range: MemoryRange,
    ) -> Result<(), AddMemoryError> {
        if !config.is_valid() {
            return Err(AddMemoryError::BadConfig);
        }
        if range.start < PAGE_SIZE && range.end > range.start {
            return Err(AddMemoryError::NullPage(range));
        }
        let (start, pages) = range.pages().ok_or(AddMemoryError::Empty(range))?;
        let end = start + pages * PAGE_SIZE;
        let size = config.arena_size;
        let window_pages = size / PAGE_SIZE;
        let meta_pages = Arena::metadata_pages_for(window_pages);

        // A range over more windows than there can be arenas needs too many, however
        // many it shares with arenas that exist: refused before the walk, which
        // would take minutes for a range over most of the address space.
        let windows = (end - 1) / size - start / size + 1;
        if windows > MAX_ARENAS {
            return Err(AddMemoryError::TooManyArenas(range));
        }
        // Pass 1: check every window part.
        let mut new_arenas = 0;
        for (part_start, part_end) in window_parts(start, end, size) {
            let n = (part_end - part_start) / PAGE_SIZE;
            match index.get(part_start / size) {
                // SAFETY: arenas in the index are live; we hold the page lock.
                Some(arena) => unsafe {
                    let arena = arena.as_ref();
                    if arena.overlaps_usable(arena.page_of(part_start), n) {
                        return Err(AddMemoryError::Overlap(range));
                    }
                },
                None if n <= meta_pages => {
                    let needed = (meta_pages + 1) * PAGE_SIZE;
                    return Err(AddMemoryError::TooSmall { range, needed });
                }
                None => new_arenas += 1,
            }
        }
        if self.count + new_arenas > MAX_ARENAS {
            return Err(AddMemoryError::TooManyArenas(range));
        }

        // Pass 2: commit.
        let zeroed = config.contents == InitialContents::Zeroed;
        for (part_start, part_end) in window_parts(start, end, size) {
            let window = part_start / size;
            let mut first = part_start;
            let arena = match index.get(window) {
                Some(arena) => arena,
                None => {
                    // SAFETY: pass 1 checked the part holds the metadata plus a page,
                    // and the caller gave us the memory; the window base is aligned.
                    let arena = unsafe { Arena::create(window * size, window_pages, first) };
                    first += meta_pages * PAGE_SIZE;
                    self.insert_sorted(arena);
                    index.insert(window, arena);
                    arena
                }
            };
            // SAFETY: a live arena, and we hold the page lock.
            unsafe {
                let arena = arena.as_ref();
                arena.add_pages(arena.page_of(first), (part_end - first) / PAGE_SIZE, zeroed);
            }
        }
        Ok(())
    }

    fn insert_sorted(&mut self, arena: NonNull<Arena>) {
        // SAFETY: entries are live arenas; `arena` is live.
        let base = unsafe { arena.as_ref().base };
        let at = self.arenas[..self.count]
            .iter()
            // SAFETY: as above.
            .position(|a| unsafe { (**a).base } > base)
            .unwrap_or(self.count);
        self.arenas.copy_within(at..self.count, at + 1);
        self.arenas[at] = arena.as_ptr();
        self.count += 1;
    }

    /// Takes a run of `pages` pages aligned to `align` pages (first fit by address)
    /// and a descriptor for it from the same arena. The descriptor is uninitialised
    /// beyond what the caller sets; the caller records it in the span map.
    fn take_run(&mut self, pages: usize, align: usize) -> Option<(&Arena, NonNull<Span>, usize)> {
        for &arena in &self.arenas[..self.count] {
            // SAFETY: live arena; the page lock is held (we have &mut self).
            let arena = unsafe { &*arena };
            if pages > arena.pages() {
                continue;
            }
            // SAFETY: the page lock is held (we have &mut self).
            if unsafe { arena.state() }.bitmap.root().max() < pages {
                continue;
            }
            // The descriptor first: a new slab page then sits below the run instead of
            // right after it, where it would stop the run from growing in place.
            // SAFETY: as above.
            let Some(span) = (unsafe { arena.alloc_descriptor() }) else {
                continue;
            };
            // SAFETY: as above.
            match unsafe { arena.alloc_pages(pages, align) } {
                Some(first) => return Some((arena, span, first)),
                // SAFETY: the slot was just taken and is used by nothing.
                None => unsafe { arena.free_descriptor(span) },
            }
        }
        None
    }

    /// A new small span of `class`, recorded in the span map on every page.
    pub(crate) fn new_small_span(&mut self, class: SizeClass) -> Option<NonNull<Span>> {
        let pages = class.pages();
        let (arena, span, first) = self.take_run(pages, 1)?;
        let mut zeroed = !arena.is_dirty(first, pages);
        arena.mark_dirty(first, pages);
        if cfg!(feature = "debug-fill") {
            // Every free object holds the free pattern, checked when handed out.
            // SAFETY: the run is ours (just taken), `pages` pages from its start.
            unsafe {
                ptr::write_bytes(
                    arena.addr_of(first) as *mut u8,
                    FREE_FILL,
                    pages * PAGE_SIZE,
                )
            };
            zeroed = false;
        }
        // SAFETY: a fresh descriptor slot owned by us; `write` initialises all of it.
        unsafe {
            span.as_ptr()
                .write(Span::small(arena.addr_of(first), class, zeroed))
        };
        arena.set_span(first, pages, span.as_ptr());
        Some(span)
    }

    /// A new stack span of `pages` pages (a power of two) aligned to its size, carved
    /// into stacks of `stack_size` bytes, recorded in the span map on every page.
    pub(crate) fn new_stack_span(
        &mut self,
        pages: usize,
        stack_size: usize,
    ) -> Option<NonNull<Span>> {
        let (arena, span, first) = self.take_run(pages, pages)?;
        arena.mark_dirty(first, pages);
        let base = arena.addr_of(first);
        // SAFETY: a fresh descriptor slot owned by us; `write` initialises all of it.
        unsafe {
            span.as_ptr()
                .write(Span::stack_pool(base, pages, stack_size))
        };
        arena.set_span(first, pages, span.as_ptr());
        self.stack_pages += pages;
        Some(span)
    }

    /// A new large or pages span of `pages` pages aligned to `align` pages, recorded
    /// in the span map on its first page.
    pub(crate) fn new_whole_span(
        &mut self,
        pages: usize,
        align: usize,
        kind: SpanKind,
    ) -> Option<NewSpan> {
        let (arena, span, first) = self.take_run(pages, align)?;
        let dirty = arena.is_dirty(first, pages);
        arena.mark_dirty(first, pages);
        // SAFETY: a fresh descriptor slot owned by us; `write` initialises all of it.
        unsafe {
            span.as_ptr()
                .write(Span::whole(arena.addr_of(first), pages, kind))
        };
        // Stacks are found from any page (a stack pointer inside them); the others
        // only from their first page.
        let mapped = if kind == SpanKind::Stack { pages } else { 1 };
        arena.set_span(first, mapped, span.as_ptr());
        match kind {
            SpanKind::Large => {
                self.large_pages = self.large_pages.wrapping_add(pages);
                self.large_objects = self.large_objects.wrapping_add(1);
            }
            SpanKind::Pages => self.run_pages = self.run_pages.wrapping_add(pages),
            SpanKind::Cache => self.cache_pages += pages,
            SpanKind::Stack => self.stack_pages += pages,
            SpanKind::Small => unreachable!("small spans come from new_small_span"),
        }
        Some(NewSpan { span, dirty })
    }

    /// Frees a span's pages and descriptor.
    ///
    /// # Safety
    ///
    /// `span` is a live span of this heap, found through `arena`, on no central list,
    /// and nothing refers to its memory any more.
    pub(crate) unsafe fn free_span(&mut self, arena: NonNull<Arena>, span: NonNull<Span>) {
        // SAFETY: live span (caller).
        let s = unsafe { span.as_ref() };
        let pages = s.pages as usize;
        match s.kind {
            SpanKind::Small => {}
            SpanKind::Stack => self.stack_pages -= pages,
            SpanKind::Large => {
                self.large_pages = self.large_pages.wrapping_sub(pages);
                self.large_objects = self.large_objects.wrapping_sub(1);
            }
            SpanKind::Pages => self.run_pages = self.run_pages.wrapping_sub(pages),
            SpanKind::Cache => self.cache_pages -= pages,
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.release_span(arena, span) };
    }

    /// Frees a span's pages and descriptor without counting it out: for spans whose
    /// free a CPU's page cache has counted already.
    ///
    /// # Safety
    ///
    /// As for [`PageHeap::free_span`].
    pub(crate) unsafe fn release_span(&mut self, arena: NonNull<Arena>, span: NonNull<Span>) {
        // SAFETY: live arena and span (caller); the page lock is held.
        let (arena, s) = unsafe { (arena.as_ref(), span.as_ref()) };
        let first = arena.page_of(s.base);
        let pages = s.pages as usize;
        let mapped = match s.kind {
            SpanKind::Small | SpanKind::Stack => pages,
            SpanKind::Large | SpanKind::Pages | SpanKind::Cache => 1,
        };
        arena.set_span(first, mapped, ptr::null_mut());
        // SAFETY: the page lock is held (we have &mut self).
        unsafe { arena.free_pages(first, pages) };
        // SAFETY: the descriptor came from this arena, is on no list (caller) and no
        // longer in the span map (cleared above).
        unsafe { arena.free_descriptor(span) };
    }

    /// The 64-page group holding the first fit of `pages` pages aligned to `align`
    /// pages, with every free page of it taken for a CPU's page cache. `None` when no
    /// run fits, or when the first fit crosses a group boundary (the caller then
    /// takes that run from the page heap directly).
    ///
    /// The group's pages are marked dirty in the arena while the cache holds them
    /// (the cache keeps the exact bits in [`Group::dirty`]), so that a page the cache
    /// hands out and another CPU frees to the page heap is never taken for zeroed.
    pub(crate) fn take_group(&mut self, pages: usize, align: usize) -> Option<Group> {
        for &arena in &self.arenas[..self.count] {
            // SAFETY: live arena; the page lock is held (we have &mut self).
            let a = unsafe { &*arena };
            // SAFETY: the page lock is held (we have &mut self).
            let st = unsafe { a.state_mut() };
            let Some(first) = st.bitmap.find(pages, align) else {
                continue;
            };
            let group = first - first % 64;
            if first + pages > group + 64 {
                return None;
            }
            let free = st.bitmap.take_group(group);
            let dirty = a.dirty_group(group);
            a.set_dirty_group(group, dirty | free);
            return Some(Group {
                // SAFETY: arena pointers in the table are not null.
                arena: unsafe { NonNull::new_unchecked(arena) },
                first: group,
                free,
                dirty,
            });
        }
        None
    }

    /// Gives back the pages a page cache holds of `group`, with their exact dirty
    /// bits.
    pub(crate) fn give_group(&mut self, group: Group) {
        // SAFETY: a group's arena is a live arena of this heap; the page lock is held.
        let a = unsafe { group.arena.as_ref() };
        let dirty = a.dirty_group(group.first);
        a.set_dirty_group(
            group.first,
            (dirty & !group.free) | (group.dirty & group.free),
        );
        // SAFETY: as above.
        unsafe { a.state_mut() }
            .bitmap
            .give_group(group.first, group.free);
    }

    /// A descriptor slot of `arena` for a page cache; `None` when the arena has no
    /// page for a new slab.
    pub(crate) fn take_descriptor(&mut self, arena: NonNull<Arena>) -> Option<NonNull<Span>> {
        // SAFETY: a live arena of this heap (caller's group); the page lock is held.
        unsafe { arena.as_ref().alloc_descriptor() }
    }

    /// Returns a descriptor slot a page cache held.
    ///
    /// # Safety
    ///
    /// `span` came from [`PageHeap::take_descriptor`] for `arena` and is not in use.
    pub(crate) unsafe fn give_descriptor(&mut self, arena: NonNull<Arena>, span: NonNull<Span>) {
        // SAFETY: live arena (caller), the page lock is held; the slot is unused.
        unsafe { arena.as_ref().free_descriptor(span) };
    }

    /// Resizes a large span in place to `new_pages` pages: shrinking frees the tail;
    /// growing takes the free pages right after it if there are enough (inside the
    /// arena). Returns `true` on success and whether the added pages may be dirty.
    ///
    /// # Safety
    ///
    /// `span` is a live large span of `arena`.
    pub(crate) unsafe fn resize_large(
        &mut self,
        arena: NonNull<Arena>,
        mut span: NonNull<Span>,
        new_pages: usize,
    ) -> Option<bool> {
        // SAFETY: live arena and span (caller), under the page lock.
        let (arena, s) = unsafe { (arena.as_ref(), span.as_mut()) };
        // SAFETY: the page lock is held (we have &mut self).
        let st = unsafe { arena.state_mut() };
        let first = arena.page_of(s.base);
        let old = s.pages as usize;
        let dirty = if new_pages <= old {
            st.bitmap.free_range(first + new_pages, old - new_pages);
            false
        } else {
            let extra = new_pages - old;
            let tail = first + old;
            if tail + extra > arena.pages() || st.bitmap.free_run_from(tail, extra) < extra {
                return None;
            }
            st.bitmap.alloc_range(tail, extra);
            let dirty = arena.is_dirty(tail, extra);
            arena.mark_dirty(tail, extra);
            dirty
        };
        self.large_pages = self.large_pages.wrapping_add(new_pages).wrapping_sub(old);
        s.pages = new_pages as u32;
        s.object_size = (new_pages * PAGE_SIZE).min(u32::MAX as usize) as u32;
        Some(dirty)
    }

    /// Free pages in all arenas.
    pub(crate) fn free_pages(&self) -> usize {
        // SAFETY: the page lock is held (we have &self of the locked page heap).
        self.arenas()
            .map(|a| unsafe { a.state() }.bitmap.free_pages())
            .sum()
    }
}

/// Splits `[start, end)` at multiples of `size`.
fn window_parts(start: usize, end: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = start;
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let part_end = (at / size + 1).saturating_mul(size).min(end);
        let part = (at, part_end);
        at = part_end;
        Some(part)
    })
}
