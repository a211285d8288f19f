//! Centrals: one per size class, the spin-locked lists of that class's spans.
//!
//! A central hands out objects from its partial spans, fullest first, so that sparse
//! spans drain and go back to the page heap; it takes a new span from the page heap
//! when it has none, and gives a span back when its last object is freed (keeping a
//! reserve of [`RESERVE_SPANS`] empty span, so that a free/alloc pair at the boundary
//! does not bounce pages through the page heap; the heap trims every reserve before it
//! reports out of memory). Larger reserves were measured on the pairs benchmark: 64
//! KiB per class kept at the highest address in use saved 10% of the instructions
//! but kept a 1 MiB object out of an empty 8 MiB heap; 64 KiB per class kept at the
//! lowest addresses passed the exhaustion tests but saved only 9% (391 to 356
//! instructions a pair) while holding up to 4 MiB. The reserve stays at one span.
//! Full spans are on no list: the span map finds them when an object is freed.
//!
//! A central also keeps a **transfer cache** (TCMalloc's name): up to
//! [`TRANSFER_BATCHES`] batches that CPU caches flushed whole, handed to the next
//! refill as they are. A flush and a refill then copy a batch of words under the lock
//! instead of finding each object's span, so a CPU that frees what another CPU
//! allocates (producer and consumer) moves batches between the two without touching
//! spans or the page heap. Objects in it stay allocated in their spans (as objects in
//! CPU caches do) and count as cached in the stats; `trim` gives them back to their
//! spans.
//!
//! Work under the lock is O(objects moved): choosing a span is a `leading_zeros` over
//! the bucket mask, moving a span between buckets is an unlink and a push.
//!
//! May call: `span`, and `page_heap` under the page lock (lock order: central, then
//! page heap). Called by: the heap front end (and, later, the per-CPU caches, which
//! move objects in batches).
//!
//! # Invariants
//!
//! - a span on `partial[b]` has `0 < allocated < objects` and `b == bucket(span)`;
//!   bit `b` of `nonempty` is set exactly when `partial[b]` is non-empty;
//! - a span on `reserve` has `allocated == 0`; a full span is on no list;
//! - `allocated` equals the sum of `allocated` over all the class's spans, and `spans`
//!   counts them;
//! - `transfer[..transfer_len]` hold distinct objects of the class, each allocated in
//!   its span and held by no CPU cache or caller; `transfer_len` is at most
//!   `transfer_capacity(class)`.

use crate::arena::Arena;
use crate::list::List;
use crate::page_heap::PageHeap;
use crate::size_class::{SizeClass, MAX_BATCH};
use crate::span::{Span, SpanList};
use core::num::NonZeroUsize;
use core::ptr::NonNull;
use spin::Mutex;

/// Fullness buckets of partial spans: bucket `b` holds spans with
/// `b / BUCKETS <= allocated / objects < (b + 1) / BUCKETS`.
const BUCKETS: usize = 4;

/// Empty spans a central keeps instead of returning them to the page heap.
pub(crate) const RESERVE_SPANS: usize = 1;

/// Batches a transfer cache holds at most. Two are enough for a producer and a
/// consumer whose refills and flushes alternate; each holds at most 64 KiB of objects
/// (the batch rule), so a class keeps at most 128 KiB off its spans this way.
const TRANSFER_BATCHES: usize = 2;

/// Slots of a transfer cache: enough for [`TRANSFER_BATCHES`] of the largest batch.
const TRANSFER_SLOTS: usize = TRANSFER_BATCHES * MAX_BATCH;

/// The lists of one size class.
pub(crate) struct CentralLists {
    partial: [List<Span>; BUCKETS],
    nonempty: u8,
    reserve: List<Span>,
    /// The transfer cache: objects flushed by CPU caches, newest last.
    transfer: [Object; TRANSFER_SLOTS],
    transfer_len: usize,
    /// Objects handed out from this class's spans.
    pub(crate) allocated: usize,
    /// Spans of this class (on lists or full).
    pub(crate) spans: usize,
}

/// The central of one size class.
pub(crate) struct Central {
    lists: Mutex<CentralLists>,
}

impl Central {
    /// A central with no spans.
    pub(crate) const fn new() -> Self {
        Self {
            lists: Mutex::new(CentralLists {
                partial: [const { List::new() }; BUCKETS],
                nonempty: 0,
                reserve: List::new(),
                transfer: [PLACEHOLDER; TRANSFER_SLOTS],
                transfer_len: 0,
                allocated: 0,
                spans: 0,
            }),
        }
    }

    /// Locks this central's lists.
    pub(crate) fn lock(&self) -> spin::MutexGuard<'_, CentralLists> {
        self.lists.lock()
    }
}

/// What a transfer cache's slots above its length hold: never read.
const PLACEHOLDER: Object = Object(NonZeroUsize::MIN);

/// Tag bit of an [`Object`]: the object is known to hold zeroes.
const ZEROED: usize = 1;

/// An object handed out by a central (and kept in CPU caches): its address, with the
/// low bit set when it is known to hold zeroes (objects are at least 8-byte aligned).
/// Never 0, so that an `Option<Object>` is one word (0 for `None`).
#[derive(Clone, Copy)]
pub(crate) struct Object(NonZeroUsize);

impl Object {
    /// The object at `addr` (8-byte aligned at least).
    pub(crate) fn new(addr: NonNull<u8>, zeroed: bool) -> Self {
        debug_assert!(addr.as_ptr() as usize % 8 == 0);
        Self(addr.addr() | zeroed as usize)
    }

    /// The object's address.
    #[inline(always)]
    pub(crate) fn addr(self) -> NonNull<u8> {
        // SAFETY: made from a non-null, 8-byte aligned address; clearing the tag keeps
        // it non-null.
        unsafe { NonNull::new_unchecked((self.0.get() & !ZEROED) as *mut u8) }
    }

    /// `true` when the object holds zeroes.
    #[inline(always)]
    pub(crate) fn zeroed(self) -> bool {
        self.0.get() & ZEROED != 0
    }
}

/// What became of a span after an object went back to it.
pub(crate) enum Released {
    /// The span still holds objects (or went to the reserve).
    Kept,
    /// The span is empty and off every list: give it back to the page heap.
    Empty(NonNull<Span>),
}

fn bucket(span: &Span) -> usize {
    span.allocated as usize * BUCKETS / span.objects as usize
}

impl CentralLists {
    /// Takes one object of `class`, from the fullest partial span, the reserve, or a
    /// new span from `pages` (locked only when a span is needed).
    pub(crate) fn take(&mut self, class: SizeClass, pages: &Mutex<PageHeap>) -> Option<Object> {
        let span = match self.nonempty {
            0 => self.refill_span(class, pages)?,
            mask => {
                let b = 7 - mask.leading_zeros() as usize;
                // SAFETY: a non-empty list's head is non-null.
                unsafe { NonNull::new_unchecked(self.partial[b].head()) }
            }
        };
        // The reference ends before the list moves below re-borrow the span.
        let (addr, zeroed, list, stays) = {
            // SAFETY: the span is a live small span of this class, on one of our lists
            // or on none, and so exclusively ours under the central lock.
            let s = unsafe { &mut *span.as_ptr() };
            let (index, zeroed) = s.take_object()?;
            let stays =
                matches!(s.list, SpanList::Partial(b) if !s.is_full() && bucket(s) == b as usize);
            (s.object_addr(index), zeroed, s.list, stays)
        };
        self.allocated += 1;
        match list {
            // The common case: the span stays where it is.
            _ if stays => {}
            SpanList::Partial(b) => {
                self.unlink_at(span, b as usize);
                self.file(span);
            }
            _ => self.file(span),
        }
        // SAFETY: an object address of a span is inside the heap, so non-null.
        let addr = unsafe { NonNull::new_unchecked(addr as *mut u8) };
        Some(Object::new(addr, zeroed))
    }

    /// Objects of `class` a transfer cache holds at most.
    pub(crate) fn transfer_capacity(class: SizeClass) -> usize {
        TRANSFER_BATCHES * class.batch()
    }

    /// Objects of `class` the transfer cache can take now.
    pub(crate) fn transfer_room(&self, class: SizeClass) -> usize {
        Self::transfer_capacity(class) - self.transfer_len
    }

    /// Keeps `object` (allocated in its span, given up by its CPU cache) in the
    /// transfer cache. The caller checked [`Self::transfer_room`].
    pub(crate) fn transfer_put(&mut self, object: Object) {
        self.transfer[self.transfer_len] = object;
        self.transfer_len += 1;
    }

    /// The transfer cache's newest object.
    pub(crate) fn transfer_take(&mut self) -> Option<Object> {
        self.transfer_len = self.transfer_len.checked_sub(1)?;
        Some(self.transfer[self.transfer_len])
    }

    /// Objects in the transfer cache.
    pub(crate) fn transferred(&self) -> &[Object] {
        &self.transfer[..self.transfer_len]
    }

    /// A span with a free object that is on no list: from the reserve or new.
    #[cold]
    fn refill_span(&mut self, class: SizeClass, pages: &Mutex<PageHeap>) -> Option<NonNull<Span>> {
        let head = self.reserve.head();
        if let Some(span) = NonNull::new(head) {
            // SAFETY: `span` is on the reserve list.
            unsafe { self.reserve.remove(span.as_ptr()) };
            // SAFETY: a live descriptor, ours under the lock.
            unsafe { (*span.as_ptr()).list = SpanList::None };
            return Some(span);
        }
        let span = pages.lock().new_small_span(class)?;
        self.spans += 1;
        Some(span)
    }

    /// Puts a span that is on no list where its fill level says: a partial bucket,
    /// or nowhere when full. An empty span is not filed (see [`Self::put`]).
    fn file(&mut self, span: NonNull<Span>) {
        // SAFETY: a live small span of this class, on no list, ours under the lock.
        let s = unsafe { &mut *span.as_ptr() };
        if s.is_full() || s.allocated == 0 {
            return;
        }
        let b = bucket(s);
        s.list = SpanList::Partial(b as u8);
        // SAFETY: the span is on no list.
        unsafe { self.partial[b].push(span.as_ptr()) };
        self.nonempty |= 1 << b;
    }

    /// Returns object `index` to `span` (a span of this class). Moves the span
    /// between buckets as needed; an empty span goes to the reserve or is handed back
    /// for the caller to free (outside this central's list, with the lock still held).
    ///
    /// # Safety
    ///
    /// `span` is a live small span of this class and object `index` of it is
    /// allocated.
    pub(crate) unsafe fn put(&mut self, span: NonNull<Span>, index: usize) -> Released {
        // The reference ends before the list moves below re-borrow the span.
        let (before, allocated, now, base) = {
            // SAFETY: live span of this class (caller), ours under the central lock.
            let s = unsafe { &mut *span.as_ptr() };
            let before = s.list;
            s.put_object(index);
            (before, s.allocated, bucket(s), s.base)
        };
        self.allocated -= 1;
        if let SpanList::Partial(b) = before {
            if now == b as usize && allocated != 0 {
                return Released::Kept;
            }
            self.unlink_at(span, b as usize);
        }
        if allocated != 0 {
            self.file(span);
            return Released::Kept;
        }
        // Keep the lowest-addressed empty span: a reserve span high up would split
        // the free pages that first fit leaves above the live spans.
        let kept = self.reserve.head();
        // SAFETY: a reserve head is a live descriptor of this class.
        let release = if self.reserve.len() < RESERVE_SPANS {
            None
        } else if unsafe { (*kept).base } > base {
            // SAFETY: `kept` is on the reserve list.
            unsafe {
                self.reserve.remove(kept);
                (*kept).list = SpanList::None;
            }
            NonNull::new(kept)
        } else {
            Some(span)
        };
        if release != Some(span) {
            // SAFETY: the span is ours and on no list now.
            unsafe {
                (*span.as_ptr()).list = SpanList::Reserve;
                self.reserve.push(span.as_ptr());
            }
        }
        match release {
            Some(empty) => {
                self.spans -= 1;
                Released::Empty(empty)
            }
            None => Released::Kept,
        }
    }

    fn unlink_at(&mut self, span: NonNull<Span>, b: usize) {
        // SAFETY: the span is on partial[b] (its `list` says so).
        unsafe {
            self.partial[b].remove(span.as_ptr());
            (*span.as_ptr()).list = SpanList::None;
        }
        if self.partial[b].len() == 0 {
            self.nonempty &= !(1 << b);
        }
    }

    /// Gives every reserve span back to the page heap (memory pressure).
    pub(crate) fn trim(
        &mut self,
        pages: &mut PageHeap,
        arena_of: impl Fn(usize) -> NonNull<Arena>,
    ) {
        while let Some(span) = NonNull::new(self.reserve.head()) {
            // SAFETY: the head of the reserve list; empty, so nothing refers to its
            // objects; its arena is live.
            unsafe {
                self.reserve.remove(span.as_ptr());
                (*span.as_ptr()).list = SpanList::None;
                pages.free_span(arena_of(span.as_ref().base), span);
            }
            self.spans -= 1;
        }
    }

    /// Spans on the lists (partial and reserve), for the invariant walker.
    pub(crate) fn listed(&self) -> impl Iterator<Item = (*mut Span, SpanList)> + '_ {
        let partial = self.partial.iter().enumerate().flat_map(|(b, list)| {
            list.iter()
                .map(move |span| (span, SpanList::Partial(b as u8)))
        });
        partial.chain(self.reserve.iter().map(|span| (span, SpanList::Reserve)))
    }

    /// Checks the list invariants of `class`'s central that need no span walk.
    pub(crate) fn check(&self, class: SizeClass) -> Result<(), &'static str> {
        if self.transfer_len > Self::transfer_capacity(class) {
            return Err("central: transfer cache holds more than its batches");
        }
        for (b, list) in self.partial.iter().enumerate() {
            if (list.len() != 0) != (self.nonempty & (1 << b) != 0) {
                return Err("central: bucket mask disagrees with the lists");
            }
        }
        for (span, list) in self.listed() {
            // SAFETY: listed spans are live descriptors, the lock is held (&self of a
            // locked CentralLists).
            let s = unsafe { &*span };
            if s.list != list {
                return Err("central: span's list tag disagrees with its list");
            }
            match list {
                SpanList::Partial(b)
                    if s.allocated == 0 || s.is_full() || bucket(s) != b as usize =>
                {
                    return Err("central: partial span in the wrong bucket")
                }
                SpanList::Reserve if s.allocated != 0 => {
                    return Err("central: reserve span is not empty")
                }
                _ => {}
            }
        }
        Ok(())
    }
}
