//! Arenas: aligned windows of address space, each with its own metadata carved from
//! the managed memory inside it.
//!
//! An arena covers `pages` pages from `base` (aligned to the arena size). Its metadata
//! sits in one block at the start of the first usable range the heap received inside
//! the window:
//!
//! ```text
//! [ Arena header | span map: u32 per page | usable bits | dirty bits | PageBitmap ]
//! ```
//!
//! - the **span map** gives, for each page, the descriptor of the span the page
//!   belongs to (every page of a small span, the first page of a large or pages span;
//!   0 elsewhere), encoded as `(descriptor offset from base) / 16 + 1`;
//! - **usable bits**: the page was handed to the heap (`add_memory`); used to refuse
//!   overlapping ranges;
//! - **dirty bits**: the page may hold non-zero bytes (handed out at least once, or
//!   its initial contents are unknown); `alloc_zeroed` clears only dirty pages;
//! - the **page bitmap** with free-run summaries (see `page_bitmap`).
//!
//! Span descriptors come from slabs: whole pages of the arena whose first slot is a
//! [`Slab`] header (live count, free list of slots, links of the list of slabs with a
//! free slot). A slab page whose last descriptor is freed goes back to the page heap,
//! so that no metadata page stays behind between spans once they are gone. Slab pages
//! are taken from the top of the arena's usable memory downwards, while spans are
//! placed first fit from the bottom, so that the slabs do not cut the free space into
//! short runs; only when the page below the slab zone is taken does a slab page come
//! from anywhere (first fit).
//!
//! Everything here runs under the page heap's lock, except [`Arena::span_at`], which
//! reads the span map with relaxed atomics.
//!
//! # Invariants
//!
//! - the header (`base`, `pages`, the metadata pointers) is written once by
//!   [`Arena::create`] and never changes; everything that changes is in
//!   [`ArenaState`], reached only through [`Arena::state`] and [`Arena::state_mut`]
//!   under the page heap's lock, so that every CPU may hold a `&Arena` and no
//!   `&mut Arena` exists once the arena is published;
//! - `managed_pages == free pages + pages of live spans + metadata_pages + pages the
//!   per-CPU page caches hold`;
//! - a page's span-map entry is non-zero exactly when it is a page of a live small
//!   span, or the first page of a live large or pages span;
//! - every page outside the usable bits is marked in use in the page bitmap.

use crate::list::{Links, List, Node};
use crate::page_bitmap::PageBitmap;
use crate::size_class::PAGE_SIZE;
use crate::span::Span;
use core::cell::UnsafeCell;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

/// Bytes per span descriptor slot (descriptors are 16-aligned in their slabs).
const DESCRIPTOR_BYTES: usize = size_of::<Span>().next_multiple_of(16);

/// The metadata of one arena. The header fields are written once, before the arena
/// is published, and read without a lock by every CPU (a `&Arena` is shared freely);
/// everything that changes lives in [`ArenaState`], behind the page heap's lock, so
/// that no `&mut Arena` ever exists once other CPUs can see the arena.
pub(crate) struct Arena {
    /// First address of the window.
    pub(crate) base: usize,
    /// Pages in the window.
    pages: usize,
    span_map: NonNull<AtomicU32>,
    usable: NonNull<u64>,
    dirty: NonNull<u64>,
    state: UnsafeCell<ArenaState>,
}

/// The part of an arena that changes: only under the page heap's lock.
pub(crate) struct ArenaState {
    /// Page bitmap with summaries: 1 = in use or unavailable.
    pub(crate) bitmap: PageBitmap,
    /// Slabs with at least one free slot.
    open_slabs: List<Slab>,
    /// The lowest slab page placed in the slab zone (the zone grows down from the
    /// top of the usable memory).
    slab_floor: usize,
    /// One past the highest page handed to the heap: where the slab zone starts.
    usable_top: usize,
    /// Pages handed to the heap inside this window.
    pub(crate) managed_pages: usize,
    /// Pages used by metadata: this block and descriptor slabs.
    pub(crate) metadata_pages: usize,
    /// Descriptors in use.
    pub(crate) descriptors: usize,
}

// SAFETY: the header is immutable after publication and the state is only reached
// through `Arena::state` / `Arena::state_mut` under the page heap's lock; the span map
// is atomic. So sharing `&Arena` between CPUs is sound.
unsafe impl Sync for Arena {}
// SAFETY: as above; an arena is plain memory of the heap.
unsafe impl Send for Arena {}

/// The parts of an arena's metadata block, as byte offsets from its start.
struct MetadataLayout {
    span_map: usize,
    usable: usize,
    dirty: usize,
    bitmap: usize,
    total: usize,
}

impl MetadataLayout {
    const fn of(pages: usize) -> Self {
        let span_map = size_of::<Arena>().next_multiple_of(64);
        let usable = span_map + (pages * 4).next_multiple_of(8);
        let dirty = usable + pages.div_ceil(64) * 8;
        let bitmap = dirty + pages.div_ceil(64) * 8;
        let total = bitmap + PageBitmap::metadata_bytes(pages);
        Self {
            span_map,
            usable,
            dirty,
            bitmap,
            total,
        }
    }
}

impl Arena {
    /// Pages of metadata an arena of `pages` pages needs at creation.
    pub(crate) const fn metadata_pages_for(pages: usize) -> usize {
        MetadataLayout::of(pages).total.div_ceil(PAGE_SIZE)
    }

    /// Creates the arena of the window at `base` with its metadata block at `at`.
    /// Every page starts unavailable; [`Arena::add_pages`] makes pages usable, and
    /// the metadata pages are accounted as managed and in use.
    ///
    /// # Safety
    ///
    /// 1. `at` is page-aligned, inside the window, and the `metadata_pages_for(pages)`
    ///    pages from `at` are usable memory owned by the heap and unused;
    /// 2. `base` is aligned to `pages * PAGE_SIZE`.
    pub(crate) unsafe fn create(base: usize, pages: usize, at: usize) -> NonNull<Arena> {
        let layout = MetadataLayout::of(pages);
        let block = at as *mut u8;
        // SAFETY: by (1) the block is writable and exclusively ours; zeroing it
        // initialises the span map (no spans), usable and dirty bits (none).
        unsafe { ptr::write_bytes(block, 0, layout.total) };
        // SAFETY: the bitmap storage lies inside the block, 8-aligned (MetadataLayout offsets
        // are multiples of 8 from a page-aligned start), sized by metadata_bytes, and
        // is owned by this arena from now on.
        let bitmap =
            unsafe { PageBitmap::init(NonNull::new_unchecked(block.add(layout.bitmap)), pages) };
        let offset = |off: usize| {
            // SAFETY: `off` is inside the block, which starts at a non-null address.
            unsafe { NonNull::new_unchecked(block.add(off)) }
        };
        debug_assert_eq!(bitmap.pages(), pages);
        let arena = Arena {
            base,
            pages,
            span_map: offset(layout.span_map).cast(),
            usable: offset(layout.usable).cast(),
            dirty: offset(layout.dirty).cast(),
            state: UnsafeCell::new(ArenaState {
                bitmap,
                open_slabs: List::new(),
                slab_floor: 0,
                usable_top: 0,
                managed_pages: 0,
                metadata_pages: 0,
                descriptors: 0,
            }),
        };
        let header = block.cast::<Arena>();
        // SAFETY: the header is at the page-aligned start of the block, which is large
        // enough (MetadataLayout puts the span map after it).
        unsafe { header.write(arena) };
        // SAFETY: just written; non-null as `at` is a page of the window.
        let arena = unsafe { NonNull::new_unchecked(header) };
        let meta = Self::metadata_pages_for(pages);
        // SAFETY: we hold the only reference to the new header, not yet published.
        let a = unsafe { arena.as_ref() };
        let first = (at - base) / PAGE_SIZE;
        a.set_usable(first, meta);
        // SAFETY: as above: nobody else can reach the state.
        let st = unsafe { a.state_mut() };
        st.managed_pages = meta;
        st.metadata_pages = meta;
        arena
    }

    /// The state, to read.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock (or has the arena alone) for as long as
    /// the reference lives, and makes no `state_mut` meanwhile.
    pub(crate) unsafe fn state(&self) -> &ArenaState {
        // SAFETY: the state is only written under the page lock, which the caller
        // holds.
        unsafe { &*self.state.get() }
    }

    /// The state, to change.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock (or has the arena alone) for as long as
    /// the reference lives, and holds no other reference to the state meanwhile.
    #[allow(clippy::mut_from_ref, reason = "the page lock makes the borrow unique")]
    pub(crate) unsafe fn state_mut(&self) -> &mut ArenaState {
        // SAFETY: exclusive by the caller's contract.
        unsafe { &mut *self.state.get() }
    }

    /// Pages in the window.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// One past the last address of the window.
    pub(crate) fn end(&self) -> usize {
        self.base + self.pages() * PAGE_SIZE
    }

    /// The page index of `addr` inside the window.
    #[inline]
    pub(crate) fn page_of(&self, addr: usize) -> usize {
        (addr - self.base) / PAGE_SIZE
    }

    /// The address of page `page`.
    pub(crate) fn addr_of(&self, page: usize) -> usize {
        self.base + page * PAGE_SIZE
    }

    fn set_bits(ptr: NonNull<u64>, first: usize, n: usize) {
        let words = ptr.as_ptr();
        for page in first..first + n {
            // SAFETY: `page` < self.pages() (callers pass ranges inside the window), so
            // the word is inside the bit array the MetadataLayout reserved.
            unsafe { *words.add(page / 64) |= 1 << (page % 64) };
        }
    }

    fn any_bit(ptr: NonNull<u64>, first: usize, n: usize) -> bool {
        // SAFETY: as in `set_bits`: the pages are inside the window.
        (first..first + n)
            .any(|page| unsafe { *ptr.as_ptr().add(page / 64) } & (1 << (page % 64)) != 0)
    }

    fn set_usable(&self, first: usize, n: usize) {
        Self::set_bits(self.usable, first, n);
    }

    /// `true` when any page of `[first, first + n)` was already handed to the heap.
    pub(crate) fn overlaps_usable(&self, first: usize, n: usize) -> bool {
        Self::any_bit(self.usable, first, n)
    }

    /// Adds the pages `[first, first + n)` of the window to the heap, free.
    /// `zeroed`: their contents are known to be zero.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock.
    pub(crate) unsafe fn add_pages(&self, first: usize, n: usize, zeroed: bool) {
        debug_assert!(!self.overlaps_usable(first, n));
        self.set_usable(first, n);
        if !zeroed {
            Self::set_bits(self.dirty, first, n);
        }
        // SAFETY: the page lock is held (caller).
        let st = unsafe { self.state_mut() };
        st.bitmap.free_range(first, n);
        st.managed_pages += n;
        if first + n > st.usable_top {
            st.usable_top = first + n;
            st.slab_floor = st.slab_floor.max(st.usable_top);
        }
    }

    /// Takes `n` pages aligned to `align` pages, first fit by address.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock.
    pub(crate) unsafe fn alloc_pages(&self, n: usize, align: usize) -> Option<usize> {
        // SAFETY: the page lock is held (caller).
        unsafe { self.state_mut() }.bitmap.alloc(n, align)
    }

    /// Returns pages to the free pool.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock.
    pub(crate) unsafe fn free_pages(&self, first: usize, n: usize) {
        // SAFETY: the page lock is held (caller).
        unsafe { self.state_mut() }.bitmap.free_range(first, n);
    }

    /// `true` when any page of the run may hold non-zero bytes.
    pub(crate) fn is_dirty(&self, first: usize, n: usize) -> bool {
        Self::any_bit(self.dirty, first, n)
    }

    /// Marks the pages dirty: they are about to be handed out.
    pub(crate) fn mark_dirty(&self, first: usize, n: usize) {
        Self::set_bits(self.dirty, first, n);
    }

    /// The dirty bits of the 64-page group starting at page `group` (a multiple of 64).
    pub(crate) fn dirty_group(&self, group: usize) -> u64 {
        debug_assert!(group % 64 == 0 && group < self.pages());
        // SAFETY: the dirty bits hold one word per 64 pages of the window.
        unsafe { *self.dirty.as_ptr().add(group / 64) }
    }

    /// Replaces the dirty bits of the 64-page group starting at page `group`.
    pub(crate) fn set_dirty_group(&self, group: usize, bits: u64) {
        debug_assert!(group % 64 == 0 && group < self.pages());
        // SAFETY: as in `dirty_group`; written under the page heap's lock only.
        unsafe { *self.dirty.as_ptr().add(group / 64) = bits };
    }

    #[inline]
    fn map_entry(&self, page: usize) -> &AtomicU32 {
        debug_assert!(page < self.pages());
        // SAFETY: the span map holds one AtomicU32 per page of the window and lives as
        // long as the arena.
        unsafe { &*self.span_map.as_ptr().add(page) }
    }

    /// The span that page `page` belongs to (null if none is recorded there).
    #[inline]
    pub(crate) fn span_at(&self, page: usize) -> *mut Span {
        self.span_of_page(page)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    /// The span that page `page` belongs to, if one is recorded there.
    #[inline(always)]
    pub(crate) fn span_of_page(&self, page: usize) -> Option<NonNull<Span>> {
        let code = self.map_entry(page).load(Ordering::Relaxed);
        if code == 0 {
            return None;
        }
        let span = (self.base + (code as usize - 1) * 16) as *mut Span;
        // SAFETY: a non-zero code names a descriptor slot inside the arena's metadata
        // (`set_span`), at or above `base`, which is not null.
        Some(unsafe { NonNull::new_unchecked(span) })
    }

    /// Records `span` (or null) for the pages `[first, first + n)`.
    pub(crate) fn set_span(&self, first: usize, n: usize, span: *mut Span) {
        let code = if span.is_null() {
            0
        } else {
            ((span as usize - self.base) / 16 + 1) as u32
        };
        for page in first..first + n {
            self.map_entry(page).store(code, Ordering::Relaxed);
        }
    }

    /// A descriptor slot from the first slab with a free slot; takes a new slab page
    /// from this arena when none has one. `None` when the arena has no free page.
    ///
    /// # Safety
    ///
    /// The caller holds the page heap's lock.
    pub(crate) unsafe fn alloc_descriptor(&self) -> Option<NonNull<Span>> {
        // SAFETY: the page lock is held (caller).
        let st = unsafe { self.state_mut() };
        if st.open_slabs.len() == 0 {
            let page = self.take_slab_page(st)?;
            st.metadata_pages += 1;
            // SAFETY: the page was just taken from the bitmap: ours, unused, in the
            // window; the new slab is on no list.
            unsafe { st.open_slabs.push(Slab::init(self.addr_of(page))) };
        }
        let slab = st.open_slabs.head();
        // SAFETY: slabs on the open list are initialised slab pages of this arena with
        // a non-empty free list.
        let slot = unsafe {
            let slot = (*slab).free;
            (*slab).free = (*slot).links.next;
            (*slab).live += 1;
            if (*slab).free.is_null() {
                st.open_slabs.remove(slab);
            }
            slot
        };
        st.descriptors += 1;
        NonNull::new(slot)
    }

    /// A page for a descriptor slab: the highest free page of the slab zone (from
    /// the top of the usable memory down to one word below the lowest slab page taken
    /// this way), else the first free page. The scan is bounded by the zone, which
    /// holds one page per 31 descriptors.
    fn take_slab_page(&self, st: &mut ArenaState) -> Option<usize> {
        let bottom = st.slab_floor.saturating_sub(64);
        let page = (bottom..st.usable_top)
            .rev()
            .find(|&p| st.bitmap.is_free(p));
        match page {
            Some(page) => {
                st.bitmap.alloc_range(page, 1);
                st.slab_floor = st.slab_floor.min(page);
                Some(page)
            }
            None => st.bitmap.alloc(1, 1),
        }
    }

    /// Returns a descriptor slot to its slab; frees the slab page when it was the
    /// slab's last live descriptor.
    ///
    /// # Safety
    ///
    /// `span` came from this arena's [`Arena::alloc_descriptor`], is not on any list
    /// and is not recorded in the span map; the caller holds the page heap's lock.
    pub(crate) unsafe fn free_descriptor(&self, span: NonNull<Span>) {
        let slab = (span.as_ptr() as usize & !(PAGE_SIZE - 1)) as *mut Slab;
        // SAFETY: the page lock is held (caller).
        let st = unsafe { self.state_mut() };
        st.descriptors -= 1;
        // SAFETY: descriptors live in slab pages whose first slot is the header; the
        // slot is ours to link (caller).
        let (was_full, live) = unsafe {
            let was_full = (*slab).free.is_null();
            (*span.as_ptr()).links.next = (*slab).free;
            (*slab).free = span.as_ptr();
            (*slab).live -= 1;
            (was_full, (*slab).live)
        };
        if was_full {
            // SAFETY: a full slab is on no list.
            unsafe { st.open_slabs.push(slab) };
        }
        if live == 0 {
            // SAFETY: a slab with a free slot is on the open list.
            unsafe { st.open_slabs.remove(slab) };
            let page = self.page_of(slab as usize);
            st.bitmap.free_range(page, 1);
            st.metadata_pages -= 1;
            if page == st.slab_floor {
                // Raise the floor over the free pages the zone's slabs left.
                while st.slab_floor < st.usable_top && st.bitmap.is_free(st.slab_floor) {
                    st.slab_floor += 1;
                }
            }
        }
    }
}

/// The header of a descriptor slab page, in its first descriptor slot.
struct Slab {
    /// Free slots of this page, linked through `Span::links.next`.
    free: *mut Span,
    /// Slots in use.
    live: usize,
    /// Links of the arena's list of slabs with a free slot.
    links: Links<Slab>,
}

// SAFETY: `links` projects to the slab's own `links` field without reading it.
unsafe impl Node for Slab {
    fn links(node: *mut Self) -> *mut Links<Self> {
        // SAFETY: a field projection of the caller's pointer; nothing is read.
        unsafe { ptr::addr_of_mut!((*node).links) }
    }
}

const _: () = assert!(size_of::<Slab>() <= DESCRIPTOR_BYTES);

impl Slab {
    /// Makes the page at `page` a slab: the header in slot 0, slots 1.. free.
    ///
    /// # Safety
    ///
    /// The page is memory the arena owns and nothing else uses.
    unsafe fn init(page: usize) -> *mut Slab {
        let slab = page as *mut Slab;
        let mut free = ptr::null_mut();
        for slot in (1..PAGE_SIZE / DESCRIPTOR_BYTES).rev() {
            let span = (page + slot * DESCRIPTOR_BYTES) as *mut Span;
            // SAFETY: the slot is inside the page (caller: ours); only the link of the
            // free list is written, the rest is written by the span's init.
            unsafe { ptr::addr_of_mut!((*span).links.next).write(free) };
            free = span;
        }
        let header = Slab {
            free,
            live: 0,
            links: Links::new(),
        };
        // SAFETY: slot 0 of the page, large enough (const assert above).
        unsafe { slab.write(header) };
        slab
    }
}
