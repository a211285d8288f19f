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

use crate::list::{Links, Node};
use crate::size_class::{SizeClass, PAGE_SIZE};
use bitflags::bitflags;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Feature `debug-fill`: the byte every free small object holds (and a freed large
/// object is filled with), checked when the object is handed out again.
pub const FREE_FILL: u8 = 0xDF;
/// Feature `debug-fill`: the byte fresh objects are filled with when handed out,
/// unless zeroed memory was asked for.
pub const FRESH_FILL: u8 = 0xD0;

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
    /// A CPU's cache (heap metadata).
    Cache,
    /// Kernel stacks: a pool span carved into stacks of one order (every page in the
    /// span map), or one large stack.
    Stack,
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
    /// Small spans: the smallest request size (alignment at most 8) whose class is
    /// this span's; 0 otherwise.
    pub(crate) request_min: u16,
    /// Small spans: how many request sizes from `request_min` on map to this span's
    /// class; 0 otherwise, so that [`Span::serves`] is false for every other kind.
    pub(crate) request_sizes: u16,
    /// Size class (small spans only).
    pub(crate) class: Option<SizeClass>,
    /// What the span is.
    pub(crate) kind: SpanKind,
    /// State flags.
    pub(crate) flags: SpanFlags,
    /// The central list the span is on.
    pub(crate) list: SpanList,
    /// Free bits (1 = free) of `bits[cache_word]` not yet taken.
    pub(crate) alloc_cache: u64,
    /// Links of the central list the span is on; `links.next` also links free
    /// descriptor slots in their slab.
    pub(crate) links: Links<Span>,
    /// Object bitmap: bit `i` set means object `i` is allocated (or padding). Written
    /// only under the central lock (plain load and store, no read-modify-write);
    /// atomic so that a free on a CPU's fast path may read it without the lock.
    pub(crate) bits: [AtomicU64; BITMAP_WORDS],
    /// Checked mode: bit `i` set while object `i` (allocated in `bits`) sits free in
    /// some CPU's cache, so that a second free of it is caught at the free itself.
    /// Objects of one span sit in several CPUs' caches, so these bits change by
    /// atomic read-modify-write (checked mode only).
    #[cfg(feature = "checked")]
    cached: [AtomicU64; BITMAP_WORDS],
}

impl Span {
    /// The descriptor of a large or pages span of `pages` pages at `base`: one
    /// object, allocated.
    pub(crate) fn whole(base: usize, pages: usize, kind: SpanKind) -> Span {
        Span {
            base,
            pages: pages as u32,
            object_size: (pages * PAGE_SIZE).min(u32::MAX as usize) as u32,
            magic: 0,
            objects: 1,
            allocated: 1,
            cache_word: 0,
            fresh_limit: 1,
            request_min: 0,
            request_sizes: 0,
            class: None,
            kind,
            flags: SpanFlags::empty(),
            list: SpanList::None,
            alloc_cache: 0,
            links: Links::new(),
            bits: [const { AtomicU64::new(u64::MAX) }; BITMAP_WORDS],
            #[cfg(feature = "checked")]
            cached: [const { AtomicU64::new(0) }; BITMAP_WORDS],
        }
    }

    /// The descriptor of a small span of `class` at `base`, every object free.
    /// `zeroed`: the span's pages hold zeroes.
    pub(crate) fn small(base: usize, class: SizeClass, zeroed: bool) -> Span {
        let request_min = class.min_request();
        Span {
            class: Some(class),
            request_min: request_min as u16,
            request_sizes: (class.size() + 1 - request_min) as u16,
            flags: if zeroed {
                SpanFlags::ZEROED
            } else {
                SpanFlags::empty()
            },
            ..Span::carved(
                base,
                class.pages(),
                class.size(),
                class.magic(),
                SpanKind::Small,
            )
        }
    }

    /// The descriptor of a stack-pool span at `base`: `pages` pages carved into stacks
    /// of `stack_size` bytes (a power of two), every stack free.
    pub(crate) fn stack_pool(base: usize, pages: usize, stack_size: usize) -> Span {
        let magic = (1u64 << 32).div_ceil(stack_size as u64) as u32;
        Span::carved(base, pages, stack_size, magic, SpanKind::Stack)
    }

    /// A span of `pages` pages carved into objects of `size` bytes, every one free.
    fn carved(base: usize, pages: usize, size: usize, magic: u32, kind: SpanKind) -> Span {
        let objects = pages * PAGE_SIZE / size;
        debug_assert!(objects <= BITMAP_WORDS * 64);
        // Padding bits past the last object are permanently "allocated".
        let bits: [u64; BITMAP_WORDS] =
            core::array::from_fn(|w| match objects.saturating_sub(w * 64) {
                0 => u64::MAX,
                n if n >= 64 => 0,
                n => u64::MAX << n,
            });
        Span {
            object_size: size as u32,
            magic,
            objects: objects as u16,
            allocated: 0,
            fresh_limit: 0,
            alloc_cache: !bits[0],
            bits: bits.map(AtomicU64::new),
            ..Span::whole(base, pages, kind)
        }
    }

    /// `true` when a request of `size` bytes, aligned to at most 8, has this small
    /// span's class: what `class_of(size, align) == class` says, in one compare (false
    /// for every other kind of span).
    #[inline(always)]
    pub(crate) fn serves(&self, size: usize) -> bool {
        size.wrapping_sub(self.request_min as usize) < self.request_sizes as usize
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
        self.set_word(word, self.word(word) | 1 << bit);
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
            if self.word(word) != u64::MAX {
                self.cache_word = word as u16;
                self.alloc_cache = !self.word(word);
                return;
            }
        }
    }

    /// The address of object `index`.
    pub(crate) fn object_addr(&self, index: usize) -> usize {
        self.base + index * self.object_size as usize
    }

    /// The index of the object at `addr` if `addr` is the start of one of this span's
    /// objects. `addr` lies inside the span (the span map said so).
    ///
    /// With `magic = ceil(2^32 / size)`, `offset * magic = index * 2^32 + low` where
    /// `low < magic` exactly when `offset` is a multiple of `size`: for an offset
    /// `q * size + r`, `low = q * e + r * magic` with `e = size * magic - 2^32 < size`,
    /// which stays below 2^32 because `(q + 1) * e < span bytes <= 2^15 < magic`
    /// (test `object_index_is_exact`). One compare instead of a multiply back.
    #[inline(always)]
    pub(crate) fn object_index(&self, addr: usize) -> Option<usize> {
        debug_assert!((self.base..self.end()).contains(&addr));
        let product = (addr - self.base) as u64 * self.magic as u64;
        let index = (product >> 32) as usize;
        ((product as u32) < self.magic && index < self.objects as usize).then_some(index)
    }

    /// Word `w` of the object bitmap.
    #[inline]
    pub(crate) fn word(&self, w: usize) -> u64 {
        self.bits[w].load(Relaxed)
    }

    fn set_word(&self, w: usize, value: u64) {
        self.bits[w].store(value, Relaxed);
    }

    /// `true` when object `index` is allocated. Without the central lock the answer
    /// is only stable for an object the caller owns (then it is `true`).
    #[inline]
    pub(crate) fn is_allocated(&self, index: usize) -> bool {
        // `% BITMAP_WORDS` (a mask) instead of a bounds check: callers pass an index
        // from `object_index`, below `objects`.
        self.word((index / 64) % BITMAP_WORDS) & (1 << (index % 64)) != 0
    }

    /// Returns object `index` to the span. The caller has checked that it is
    /// allocated.
    /// Checked mode: records that the allocated object `index` enters a CPU cache;
    /// `false` (and nothing changed) when it sits in one already: a double free.
    /// Without checked mode: always `true`, and no work.
    #[inline(always)]
    pub(crate) fn enter_cache(&self, index: usize) -> bool {
        #[cfg(feature = "checked")]
        {
            let bit = 1 << (index % 64);
            let word = &self.cached[(index / 64) % BITMAP_WORDS];
            word.fetch_or(bit, core::sync::atomic::Ordering::AcqRel) & bit == 0
        }
        #[cfg(not(feature = "checked"))]
        {
            let _ = index;
            true
        }
    }

    /// Checked mode: records that object `index` leaves the CPU cache it sat in (it
    /// is handed out, or flushed).
    #[cfg(feature = "checked")]
    pub(crate) fn leave_cache(&self, index: usize) {
        let bit = 1 << (index % 64);
        let word = &self.cached[(index / 64) % BITMAP_WORDS];
        let old = word.fetch_and(!bit, core::sync::atomic::Ordering::AcqRel);
        debug_assert!(old & bit != 0, "an object left a cache it was not in");
    }

    /// Checked mode: `true` while object `index` sits in a CPU cache.
    #[cfg(feature = "checked")]
    pub(crate) fn is_cached(&self, index: usize) -> bool {
        let word = self.cached[(index / 64) % BITMAP_WORDS].load(Relaxed);
        word & (1 << (index % 64)) != 0
    }

    /// Checked mode: how many objects of the span sit in CPU caches.
    #[cfg(feature = "checked")]
    pub(crate) fn cached_objects(&self) -> usize {
        self.cached
            .iter()
            .map(|word| word.load(Relaxed).count_ones() as usize)
            .sum()
    }

    pub(crate) fn put_object(&mut self, index: usize) {
        debug_assert!(self.is_allocated(index));
        let (word, bit) = (index / 64, index % 64);
        self.set_word(word, self.word(word) & !(1 << bit));
        if word == self.cache_word as usize {
            self.alloc_cache |= 1 << bit;
        }
        self.allocated -= 1;
    }

    /// Recomputes the allocated count from the bitmap and checks the invariants.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !matches!(self.kind, SpanKind::Small | SpanKind::Stack) {
            return Ok(());
        }
        let padding = BITMAP_WORDS * 64 - self.objects as usize;
        let set: usize = (0..BITMAP_WORDS)
            .map(|w| self.word(w).count_ones() as usize)
            .sum();
        if set - padding != self.allocated as usize {
            return Err("span: allocated count differs from the object bitmap");
        }
        if self.alloc_cache & self.word(self.cache_word as usize) != 0 {
            return Err("span: alloc cache offers an allocated object");
        }
        if self.objects as usize * self.object_size as usize > self.bytes() {
            return Err("span: objects overrun the span");
        }
        Ok(())
    }
}

// SAFETY: `links` projects to the span's own `links` field without reading it.
unsafe impl Node for Span {
    fn links(node: *mut Self) -> *mut Links<Self> {
        // SAFETY: a field projection of the caller's pointer; nothing is read.
        unsafe { ptr::addr_of_mut!((*node).links) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::{class_of, MAX_SMALL_SIZE};

    #[test]
    fn object_index_is_exact() {
        let step = if cfg!(miri) { 61 } else { 1 };
        let base = 0x40_0000;
        let spans = SizeClass::all()
            .map(|class| Span::small(base, class, false))
            .chain((0..4).map(|order| Span::stack_pool(base, 8, 4096 << order)));
        for span in spans {
            let size = span.object_size as usize;
            for offset in (0..span.bytes()).step_by(step) {
                let expected = (offset % size == 0 && offset / size < span.objects as usize)
                    .then_some(offset / size);
                assert_eq!(
                    span.object_index(base + offset),
                    expected,
                    "size {size} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn serves_agrees_with_class_of_for_small_alignments() {
        // Every size natively; under Miri (slow) the sizes at each class boundary.
        let sizes: Vec<usize> = if cfg!(miri) {
            let edges = SizeClass::all().flat_map(|c| [c.size() - 1, c.size(), c.size() + 1]);
            [0].into_iter().chain(edges).collect()
        } else {
            (0..=MAX_SMALL_SIZE + 1).collect()
        };
        for class in SizeClass::all() {
            let span = Span::small(0x10_0000, class, false);
            for &size in &sizes {
                for align in [1, 2, 4, 8] {
                    assert_eq!(
                        span.serves(size),
                        class_of(size, align) == Some(class),
                        "class {} size {size} align {align}",
                        class.size()
                    );
                }
            }
        }
        for kind in [SpanKind::Large, SpanKind::Pages, SpanKind::Stack] {
            let span = Span::whole(0x10_0000, 1, kind);
            assert!((0..=MAX_SMALL_SIZE).all(|size| !span.serves(size)));
        }
    }
}
