//! Span descriptors: a run of pages carved into objects of one size class, or one
//! large object, or a run handed out through the pages API.
//!
//! A [`Span`] lives in its arena's descriptor slabs (see `arena`), never inside the
//! pages it describes. Small-object spans keep an object bitmap (1 = allocated) and a
//! 64-bit alloc cache, the free bits of one bitmap word, so that taking a free object
//! is a `trailing_zeros` and a clear, as in Go's `mspan.allocCache`.
//!
//! What may touch a span: the central of its class, under that central's lock, for
//! small spans; the page heap, under its lock, for everything else and for creating
//! and destroying spans.
//!
//! # Invariants
//!
//! For a small span:
//! - `allocated == popcount(bits[..]) - padding`, where the padding bits (object
//!   indices `objects..64 * BITMAP_WORDS`) are always set, so they are never handed out;
//! - `alloc_cache` is a subset of `!bits[cache_word]`: a set bit in the cache is a free
//!   object; objects may be free without being in the cache (they are found when the
//!   cache moves to their word);
//! - `0 <= allocated <= objects`, and object `i` lies at `base + i * object_size`.

use crate::size_class::{SizeClass, PAGE_SIZE};
use bitflags::bitflags;
use core::ptr;

/// Words of the object bitmap: enough for the class with the most objects per span.
pub(crate) const BITMAP_WORDS: usize = 8;

const _: () = assert!(crate::size_class::MAX_OBJECTS_PER_SPAN <= BITMAP_WORDS * 64);

/// What a span's pages are used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SpanKind {
    /// Objects of one size class, owned by that class's central.
    Small,
    /// One large object (above the largest size class, or aligned beyond a page).
    Large,
    /// A run handed out by `alloc_pages`.
    Pages,
}

bitflags! {
    /// State flags of a span.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct SpanFlags: u8 {
        /// Every page of the span held zeroes when the span was created, and objects
        /// at index `>= fresh_limit` have never been handed out since.
        const ZEROED = 1 << 0;
    }
}

/// Which central list a small span is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SpanList {
    /// On no list: full, or not a small span.
    None,
    /// Partial, in the fullness bucket of this index.
    Partial(u8),
    /// Empty, kept in the central's reserve.
    Reserve,
}

/// A span descriptor.
#[repr(C)]
pub(crate) struct Span {
    /// Address of the first page.
    pub(crate) base: usize,
    /// Length in pages.
    pub(crate) pages: u32,
    /// Object size in bytes (the whole span for large and pages spans).
    pub(crate) object_size: u32,
    /// Division magic of the class: `(offset * magic) >> 32 == offset / object_size`.
    pub(crate) magic: u32,
    /// Number of objects (1 for large and pages spans).
    pub(crate) objects: u16,
    /// Number of objects handed out.
    pub(crate) allocated: u16,
    /// Index of the bitmap word that `alloc_cache` mirrors.
    pub(crate) cache_word: u16,
    /// Objects below this index may have been used since the span was created.
    pub(crate) fresh_limit: u16,
    /// Size class index (small spans only).
    pub(crate) class: u8,
    /// What the span is.
    pub(crate) kind: SpanKind,
    /// State flags.
    pub(crate) flags: SpanFlags,
    /// The central list the span is on.
    pub(crate) list: SpanList,
    /// Free bits (1 = free) of `bits[cache_word]` not yet taken.
    pub(crate) alloc_cache: u64,
    /// Previous span on the same list.
    pub(crate) prev: *mut Span,
    /// Next span on the same list (also the link of the descriptor free list).
    pub(crate) next: *mut Span,
    /// Object bitmap: bit `i` set means object `i` is allocated (or padding).
    pub(crate) bits: [u64; BITMAP_WORDS],
}

impl Span {
    /// Initialises a descriptor for a small span of `class` at `base`.
    pub(crate) fn init_small(&mut self, base: usize, class: SizeClass, zeroed: bool) {
        let objects = class.objects();
        self.base = base;
        self.pages = class.pages() as u32;
        self.object_size = class.size() as u32;
        self.magic = class.magic();
        self.objects = objects as u16;
        self.allocated = 0;
        self.class = class.index() as u8;
        self.kind = SpanKind::Small;
        self.flags = if zeroed {
            SpanFlags::ZEROED
        } else {
            SpanFlags::empty()
        };
        self.fresh_limit = 0;
        self.list = SpanList::None;
        self.prev = ptr::null_mut();
        self.next = ptr::null_mut();
        for (w, word) in self.bits.iter_mut().enumerate() {
            // Padding bits past the last object are permanently "allocated".
            let first = w * 64;
            *word = match objects.saturating_sub(first) {
                0 => u64::MAX,
                n if n >= 64 => 0,
                n => u64::MAX << n,
            };
        }
        self.cache_word = 0;
        self.alloc_cache = !self.bits[0];
    }

    /// Initialises a descriptor for a large or pages span of `pages` pages at `base`.
    pub(crate) fn init_whole(&mut self, base: usize, pages: usize, kind: SpanKind) {
        self.base = base;
        self.pages = pages as u32;
        self.object_size = (pages * PAGE_SIZE).min(u32::MAX as usize) as u32;
        self.magic = 0;
        self.objects = 1;
        self.allocated = 1;
        self.class = 0;
        self.kind = kind;
        self.flags = SpanFlags::empty();
        self.fresh_limit = 1;
        self.list = SpanList::None;
        self.prev = ptr::null_mut();
        self.next = ptr::null_mut();
        self.bits = [u64::MAX; BITMAP_WORDS];
        self.cache_word = 0;
        self.alloc_cache = 0;
    }

    /// Bytes covered by the span.
    pub(crate) fn bytes(&self) -> usize {
        self.pages as usize * PAGE_SIZE
    }

    /// One past the last byte of the span.
    pub(crate) fn end(&self) -> usize {
        self.base + self.bytes()
    }

    /// `true` when every object is allocated.
    pub(crate) fn is_full(&self) -> bool {
        self.allocated == self.objects
    }

    /// Takes a free object: its index and whether it is known to hold zeroes.
    /// `None` when the span is full. Cost: a `trailing_zeros` when the alloc cache
    /// has a free bit, else a scan of at most [`BITMAP_WORDS`] words.
    pub(crate) fn take_object(&mut self) -> Option<(usize, bool)> {
        if self.is_full() {
            return None;
        }
        if self.alloc_cache == 0 {
            self.refill_cache();
        }
        let bit = self.alloc_cache.trailing_zeros() as usize;
        debug_assert!(bit < 64, "a span that is not full has a free bit");
        self.alloc_cache &= self.alloc_cache - 1;
        let word = self.cache_word as usize;
        self.bits[word] |= 1 << bit;
        self.allocated += 1;
        let index = word * 64 + bit;
        let fresh = self.flags.contains(SpanFlags::ZEROED) && index >= self.fresh_limit as usize;
        if index >= self.fresh_limit as usize {
            self.fresh_limit = index as u16 + 1;
        }
        Some((index, fresh))
    }

    /// Moves the alloc cache to the next word (from the current one, wrapping) that
    /// has a free object.
    #[cold]
    fn refill_cache(&mut self) {
        let start = self.cache_word as usize;
        for step in 0..BITMAP_WORDS {
            let word = (start + step) % BITMAP_WORDS;
            if self.bits[word] != u64::MAX {
                self.cache_word = word as u16;
                self.alloc_cache = !self.bits[word];
                return;
            }
        }
    }

    /// The address of object `index`.
    pub(crate) fn object_addr(&self, index: usize) -> usize {
        self.base + index * self.object_size as usize
    }

    /// The index of the object at `addr` if `addr` is the start of one of this span's
    /// objects.
    pub(crate) fn object_index(&self, addr: usize) -> Option<usize> {
        let offset = addr.checked_sub(self.base)?;
        let index = ((offset as u64 * self.magic as u64) >> 32) as usize;
        (index < self.objects as usize && index * self.object_size as usize == offset)
            .then_some(index)
    }

    /// `true` when object `index` is allocated.
    pub(crate) fn is_allocated(&self, index: usize) -> bool {
        self.bits[index / 64] & (1 << (index % 64)) != 0
    }

    /// Returns object `index` to the span. The caller has checked that it is
    /// allocated.
    pub(crate) fn put_object(&mut self, index: usize) {
        debug_assert!(self.is_allocated(index));
        let (word, bit) = (index / 64, index % 64);
        self.bits[word] &= !(1 << bit);
        if word == self.cache_word as usize {
            self.alloc_cache |= 1 << bit;
        }
        self.allocated -= 1;
    }

    /// Recomputes the allocated count from the bitmap and checks the invariants.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.kind != SpanKind::Small {
            return Ok(());
        }
        let padding = BITMAP_WORDS * 64 - self.objects as usize;
        let set: usize = self.bits.iter().map(|w| w.count_ones() as usize).sum();
        if set - padding != self.allocated as usize {
            return Err("span: allocated count differs from the object bitmap");
        }
        if self.alloc_cache & self.bits[self.cache_word as usize] != 0 {
            return Err("span: alloc cache offers an allocated object");
        }
        if self.objects as usize * self.object_size as usize > self.bytes() {
            return Err("span: objects overrun the span");
        }
        Ok(())
    }
}

/// An intrusive doubly-linked list of spans (links in the descriptors).
pub(crate) struct SpanQueue {
    head: *mut Span,
    len: usize,
}

// SAFETY: a SpanQueue is only reached through the lock of the central that owns it;
// the descriptors it points to are owned by that central while they are on the list.
unsafe impl Send for SpanQueue {}

impl SpanQueue {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// Number of spans on the list.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first span, if any.
    pub(crate) fn head(&self) -> *mut Span {
        self.head
    }

    /// Pushes `span` at the front.
    ///
    /// # Safety
    ///
    /// `span` is a valid descriptor on no list, exclusively reachable by the caller.
    pub(crate) unsafe fn push(&mut self, span: *mut Span) {
        // SAFETY: the caller guarantees `span` is valid and on no list; the head, if
        // any, is a valid descriptor on this list (list invariant).
        unsafe {
            (*span).prev = ptr::null_mut();
            (*span).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = span;
            }
        }
        self.head = span;
        self.len += 1;
    }

    /// Unlinks `span` from this list.
    ///
    /// # Safety
    ///
    /// `span` is a valid descriptor on this list.
    pub(crate) unsafe fn remove(&mut self, span: *mut Span) {
        // SAFETY: `span` is on this list (caller), so its neighbours are valid
        // descriptors on this list too.
        unsafe {
            let (prev, next) = ((*span).prev, (*span).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*span).prev = ptr::null_mut();
            (*span).next = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Iterates over the spans of the list.
    pub(crate) fn iter(&self) -> impl Iterator<Item = *mut Span> + '_ {
        let mut cursor = self.head;
        core::iter::from_fn(move || {
            if cursor.is_null() {
                return None;
            }
            let span = cursor;
            // SAFETY: every span on the list is a valid descriptor (list invariant)
            // and the list is borrowed, so it does not change during the walk.
            cursor = unsafe { (*span).next };
            Some(span)
        })
    }
}
