//! The page bitmap of one arena, with free-run summaries merged upward in a radix tree:
//! first fit by address for `n` free pages in O(log pages), after Go's `pageAlloc`
//! (`src/runtime/mpagealloc.go`, `mpallocbits.go`).
//!
//! A [`PageBitmap`] owns the page state of one arena: a window of `pages` pages, `pages`
//! a power of two from [`MIN_PAGES`] (1 MiB) to [`MAX_PAGES`] (1 GiB). It does not own
//! the pages themselves, only one bit per page and the summaries, and it calls nothing
//! outside `core`. Its storage is not allocated by Rust: the arena carves
//! [`PageBitmap::metadata_bytes`] bytes from the managed memory at bootstrap and hands
//! them to [`PageBitmap::init`]. The caller (the arena, under the page heap's lock)
//! serialises access through `&mut self`.
//!
//! # Storage layout
//!
//! One block of `u64` words, 8-byte aligned, in this order:
//!
//! ```text
//! [ bitmap: pages / 64 words | level 0: one summary per chunk | level 1 | ... | root ]
//! ```
//!
//! - **Bitmap**: bit `i` of word `w` is page `64 * w + i`; 1 = in use or unavailable,
//!   0 = free.
//! - **Chunk**: [`CHUNK_PAGES`] (512) pages, 8 bitmap words; an arena smaller than a
//!   chunk is one partial chunk of `pages` pages.
//! - **Summaries**: a [`Summary`] packs, for the pages it covers, the free pages at the
//!   start, the longest free run and the free pages at the end (21 bits each in a
//!   `u64`). Level 0 holds one summary per chunk; each summary of level `l + 1` merges
//!   up to 8 consecutive summaries of level `l` (Go's `summaryLevelBits = 3`); the top
//!   level is one summary, the root. A 1 GiB arena has 512 chunks and the levels
//!   512 -> 64 -> 8 -> 1; a 1 MiB arena has a single level (its chunk is the root).
//!
//! # Cost of each operation
//!
//! With `L <= 4` levels:
//! - [`PageBitmap::find`] with `align == 1`: O(8 L + 8) word operations. It walks down
//!   from the root, scanning the (at most 8) children of one node left to right and
//!   carrying the free run that reaches the current child (from the `end` fields of its
//!   left siblings, extended through fully free siblings), so that runs straddling
//!   chunk and subtree boundaries are found where they end; it descends into the first
//!   child whose longest run is `>= n`, which always holds a fit.
//! - [`PageBitmap::find`] with `align > 1`: the same walk, exact (the lowest aligned
//!   fit). A child whose longest run is `>= n + align - 1` surely holds an aligned fit,
//!   so descending into it succeeds as above. A child whose longest run lies in
//!   `[n, n + align - 1)` may or may not: the search descends, and backtracks to the
//!   next sibling when it finds none there. This backtracking is the slow path:
//!   each node and chunk is visited at most once, so the worst case is O(chunks).
//! - [`PageBitmap::find`] of one page without alignment: O(1), the hint (invariant 5).
//! - [`PageBitmap::free_range`], [`PageBitmap::alloc_range`],
//!   [`PageBitmap::mark_range`]: O(n / 64) for the bits, plus 8 words for each chunk
//!   touched, plus 8 children for each summary above them: O(n / 64 + L); the
//!   update stops at the first level where no summary changed. An allocation that
//!   covers the hint adds at most 8 words and one walk to move it.
//! - [`PageBitmap::free_run_from`] and [`PageBitmap::is_range_free`]: O(8 + n / 512);
//!   [`PageBitmap::is_free`], [`PageBitmap::root`], [`PageBitmap::free_pages`]: O(1).
//! - [`PageBitmap::check_invariants`]: O(pages), for tests and checked builds.
//!
//! # Invariants
//!
//! 1. Every level-0 summary equals the summary of its chunk's bits.
//! 2. Every summary above level 0 equals [`Summary::merge`] of its children, each child
//!    covering `CHUNK_PAGES * 8^l` pages at level `l` (hence the root equals the
//!    summary of the whole bitmap).
//! 3. `free_pages() == ` the number of zero bits in the bitmap.
//! 4. Kept by the caller: bits of pages the arena cannot use stay 1. The bitmap starts
//!    all ones, and the arena frees only pages it was given.
//! 5. `hint` is the lowest free page (`pages` when none is free): a free lowers it to
//!    the first page it frees; an allocation that covers it moves it to the next free
//!    page, found in the rest of its chunk or else by the summary walk. A one-page
//!    [`PageBitmap::find`] (the common span) is then O(1).

#![deny(
    missing_docs,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

use core::fmt;
use core::ptr::{self, NonNull};
use core::slice;

/// Pages per chunk: the pages a level-0 summary covers.
pub(crate) const CHUNK_PAGES: usize = 512;
/// Pages in the smallest arena (1 MiB).
pub(crate) const MIN_PAGES: usize = 256;
/// Pages in the largest arena (1 GiB).
pub(crate) const MAX_PAGES: usize = 1 << 18;

/// Pages per bitmap word.
const WORD_PAGES: usize = 64;
/// log2 of the fan-out of the summary tree.
const FANOUT_BITS: u32 = 3;
/// Children per summary above level 0.
const FANOUT: usize = 1 << FANOUT_BITS;
/// Levels of the tree of the largest arena: 512 chunks -> 64 -> 8 -> 1.
const MAX_LEVELS: usize = 4;

/// For `align` = 1, 2, 4, ..., 32 pages: the bits of a word at aligned page indices
/// (every word starts at a multiple of 64 pages).
pub(crate) const ALIGN_MASKS: [u64; 6] = [
    u64::MAX,
    0x5555_5555_5555_5555,
    0x1111_1111_1111_1111,
    0x0101_0101_0101_0101,
    0x0001_0001_0001_0001,
    0x0000_0001_0000_0001,
];

/// Free runs of a range of pages: free pages at its start, longest free run, free pages
/// at its end, packed 21 bits each into a `u64` (the fields hold up to `2^21 - 1`; the
/// largest arena has `2^18` pages).
///
/// A range with no used page has `start == max == end ==` its page count; a range with
/// no free page is [`Summary::USED`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary(u64);

impl Summary {
    /// Bits per field.
    const FIELD_BITS: u32 = 21;
    /// Mask of one field.
    const FIELD_MASK: u64 = (1 << Self::FIELD_BITS) - 1;
    /// The largest value a field holds.
    pub(crate) const MAX_FIELD: usize = Self::FIELD_MASK as usize;
    /// No free page.
    pub(crate) const USED: Summary = Summary(0);

    /// The summary with the given fields.
    pub(crate) const fn new(start: usize, max: usize, end: usize) -> Self {
        debug_assert!(start <= Self::MAX_FIELD && max <= Self::MAX_FIELD);
        debug_assert!(end <= Self::MAX_FIELD);
        debug_assert!(start <= max && end <= max);
        Self(
            start as u64
                | (max as u64) << Self::FIELD_BITS
                | (end as u64) << (2 * Self::FIELD_BITS),
        )
    }

    /// The summary of `pages` free pages.
    #[cfg(test)]
    pub(crate) const fn free(pages: usize) -> Self {
        Self::new(pages, pages, pages)
    }

    /// Free pages at the start.
    pub(crate) const fn start(self) -> usize {
        (self.0 & Self::FIELD_MASK) as usize
    }

    /// Pages in the longest free run.
    pub(crate) const fn max(self) -> usize {
        (self.0 >> Self::FIELD_BITS & Self::FIELD_MASK) as usize
    }

    /// Free pages at the end.
    pub(crate) const fn end(self) -> usize {
        (self.0 >> (2 * Self::FIELD_BITS) & Self::FIELD_MASK) as usize
    }

    /// The summary of consecutive ranges of `child_pages` pages each, from their
    /// summaries in address order (Go's `mergeSummaries`); [`Summary::USED`] for none.
    ///
    /// A fully free child (`start == child_pages`) extends the start run of the result
    /// when every child before it is fully free, and carries the end run across itself.
    pub(crate) fn merge(children: impl IntoIterator<Item = Summary>, child_pages: usize) -> Self {
        let mut children = children.into_iter();
        let Some(first) = children.next() else {
            return Self::USED;
        };
        let (mut start, mut max, mut end) = (first.start(), first.max(), first.end());
        let mut covered = child_pages;
        for child in children {
            if start == covered {
                start += child.start();
            }
            max = max.max(end + child.start()).max(child.max());
            end = if child.end() == child_pages {
                end + child_pages
            } else {
                child.end()
            };
            covered += child_pages;
        }
        Self::new(start, max, end)
    }
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Summary {{ start: {}, max: {}, end: {} }}",
            self.start(),
            self.max(),
            self.end()
        )
    }
}

/// Whether a range update makes pages free or used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Clear the bits.
    Free,
    /// Set the bits.
    Used,
}

/// The shape of the storage for an arena of `pages` pages, in `u64` words.
#[derive(Clone, Copy)]
struct Shape {
    /// Pages per chunk (`pages` when the arena is smaller than one chunk).
    chunk_pages: usize,
    /// Levels of the summary tree (the root is level `levels - 1`).
    levels: usize,
    /// Offset of each level's first summary from the start of the storage.
    level_start: [usize; MAX_LEVELS],
    /// Summaries in each level.
    level_len: [usize; MAX_LEVELS],
    /// Words of the whole storage.
    total_words: usize,
}

impl Shape {
    /// The shape for `pages` pages.
    ///
    /// # Panics
    ///
    /// When `pages` is not a power of two in `MIN_PAGES..=MAX_PAGES`.
    const fn of(pages: usize) -> Self {
        assert!(
            pages.is_power_of_two() && pages >= MIN_PAGES && pages <= MAX_PAGES,
            "page_bitmap: arena pages must be a power of two from 256 to 262144"
        );
        let chunk_pages = if pages < CHUNK_PAGES {
            pages
        } else {
            CHUNK_PAGES
        };
        let mut level_start = [0; MAX_LEVELS];
        let mut level_len = [0; MAX_LEVELS];
        let mut offset = pages / WORD_PAGES;
        let mut len = pages / chunk_pages;
        let mut levels = 0;
        loop {
            level_start[levels] = offset;
            level_len[levels] = len;
            offset += len;
            levels += 1;
            if len == 1 {
                break;
            }
            len = len.div_ceil(FANOUT);
        }
        Self {
            chunk_pages,
            levels,
            level_start,
            level_len,
            total_words: offset,
        }
    }
}

/// The page bitmap and summary tree of one arena (see the module documentation).
pub(crate) struct PageBitmap {
    /// The storage block of `shape.total_words` words (bitmap, then summary levels).
    storage: NonNull<u64>,
    /// Pages in the arena.
    pages: usize,
    /// Where each part lies in `storage`.
    shape: Shape,
    /// Free pages (zero bits).
    free: usize,
    /// The lowest free page, `pages` when none is free (invariant 5): the answer to a
    /// one-page [`PageBitmap::find`], as Go's `pageAlloc.searchAddr`.
    hint: usize,
}

// SAFETY: a `PageBitmap` owns its storage exclusively (contract of `init`), like a
// `Box<[u64]>`, and holds no thread-bound state, so moving it to another thread is sound.
unsafe impl Send for PageBitmap {}
// SAFETY: `&self` methods only read the storage; writing needs `&mut self`. Sharing
// `&PageBitmap` is therefore as sound as sharing `&[u64]`.
unsafe impl Sync for PageBitmap {}

impl PageBitmap {
    /// Bytes of storage [`PageBitmap::init`] needs for an arena of `pages` pages: the
    /// bitmap words and every summary level, 8 bytes each.
    ///
    /// # Panics
    ///
    /// When `pages` is not a power of two in [`MIN_PAGES`]`..=`[`MAX_PAGES`].
    pub(crate) const fn metadata_bytes(pages: usize) -> usize {
        Shape::of(pages).total_words * 8
    }

    /// Lays out the bitmap of an arena of `pages` pages in `storage`, every page in
    /// use (unavailable) and every summary [`Summary::USED`].
    ///
    /// # Safety
    ///
    /// 1. `storage` is 8-byte aligned and valid for reads and writes of
    ///    `metadata_bytes(pages)` bytes (its prior contents do not matter);
    /// 2. nothing else reads or writes those bytes for as long as the returned bitmap
    ///    (or any move of it) lives.
    ///
    /// # Panics
    ///
    /// When `pages` is not a power of two in [`MIN_PAGES`]`..=`[`MAX_PAGES`].
    pub(crate) unsafe fn init(storage: NonNull<u8>, pages: usize) -> Self {
        let shape = Shape::of(pages);
        let storage = storage.cast::<u64>();
        debug_assert!(
            storage.as_ptr().is_aligned(),
            "page_bitmap: storage not 8-aligned"
        );
        let bitmap_words = pages / WORD_PAGES;
        // SAFETY: by (1) the block is aligned and writable for `total_words` words, and
        // `bitmap_words <= total_words`; by (2) nobody else accesses it.
        unsafe {
            ptr::write_bytes(storage.as_ptr(), 0xFF, bitmap_words);
            ptr::write_bytes(
                storage.as_ptr().add(bitmap_words),
                0,
                shape.total_words - bitmap_words,
            );
        }
        Self {
            storage,
            pages,
            shape,
            free: 0,
            hint: pages,
        }
    }

    /// The whole storage block.
    fn storage(&self) -> &[u64] {
        // SAFETY: `init`'s contract (1) makes the block valid and aligned for
        // `total_words` words, all initialised by `init`; by (2) nobody else writes it
        // while `self` lives, and writes through `self` need `&mut self`.
        unsafe { slice::from_raw_parts(self.storage.as_ptr(), self.shape.total_words) }
    }

    /// The whole storage block, mutably.
    fn storage_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `storage`; `&mut self` makes this the only live reference.
        unsafe { slice::from_raw_parts_mut(self.storage.as_ptr(), self.shape.total_words) }
    }

    /// The bitmap words.
    fn words(&self) -> &[u64] {
        &self.storage()[..self.pages / WORD_PAGES]
    }

    /// The bitmap words, mutably.
    fn words_mut(&mut self) -> &mut [u64] {
        let words = self.pages / WORD_PAGES;
        &mut self.storage_mut()[..words]
    }

    /// The packed summaries of level `level` (0 = chunks).
    fn level(&self, level: usize) -> &[u64] {
        let start = self.shape.level_start[level];
        &self.storage()[start..start + self.shape.level_len[level]]
    }

    /// The summary `index` of level `level`.
    fn summary(&self, level: usize, index: usize) -> Summary {
        Summary(self.level(level)[index])
    }

    /// Stores the summary `index` of level `level`.
    fn set_summary(&mut self, level: usize, index: usize, summary: Summary) {
        debug_assert!(index < self.shape.level_len[level]);
        let at = self.shape.level_start[level] + index;
        self.storage_mut()[at] = summary.0;
    }

    /// Pages covered by one summary of level `level`.
    const fn level_pages(&self, level: usize) -> usize {
        self.shape.chunk_pages << (FANOUT_BITS as usize * level)
    }

    /// Pages in the arena.
    pub(crate) const fn pages(&self) -> usize {
        self.pages
    }

    /// Pages per chunk (`pages()` for an arena smaller than one chunk).
    #[cfg(test)]
    pub(crate) const fn chunk_pages(&self) -> usize {
        self.shape.chunk_pages
    }

    /// Levels of the summary tree (1 for an arena of at most one chunk).
    #[cfg(test)]
    pub(crate) const fn levels(&self) -> usize {
        self.shape.levels
    }

    /// Free pages in the arena.
    pub(crate) const fn free_pages(&self) -> usize {
        self.free
    }

    /// The summary of the whole arena: its `max` is the longest free run.
    pub(crate) fn root(&self) -> Summary {
        self.summary(self.shape.levels - 1, 0)
    }

    /// `true` when page `page` is free (`false` outside the arena).
    pub(crate) fn is_free(&self, page: usize) -> bool {
        page < self.pages && self.words()[page / WORD_PAGES] & (1 << (page % WORD_PAGES)) == 0
    }

    /// `true` when every page of `[first, first + n)` is free (`false` when the range
    /// leaves the arena; `true` for `n == 0` inside it).
    pub(crate) fn is_range_free(&self, first: usize, n: usize) -> bool {
        first <= self.pages && n <= self.pages - first && self.free_run_from(first, n) == n
    }

    /// How many consecutive free pages start at `first`, counting at most `limit`
    /// (0 when `first` is outside the arena). Used to grow a large object in place.
    ///
    /// Cost: the words up to the end of `first`'s chunk, then one level-0 summary per
    /// chunk: O(8 + limit / 512).
    pub(crate) fn free_run_from(&self, first: usize, limit: usize) -> usize {
        if first >= self.pages {
            return 0;
        }
        let limit = limit.min(self.pages - first);
        let chunk_pages = self.shape.chunk_pages;
        let words = self.words();
        let chunk_end = (first / chunk_pages + 1) * chunk_pages;
        let mut page = first;
        while page < chunk_end && page - first < limit {
            let bit = page % WORD_PAGES;
            let free =
                ((words[page / WORD_PAGES] >> bit).trailing_zeros() as usize).min(WORD_PAGES - bit);
            page += free;
            if free < WORD_PAGES - bit {
                return (page - first).min(limit);
            }
        }
        while page < self.pages && page - first < limit {
            let start = self.summary(0, page / chunk_pages).start();
            page += start;
            if start < chunk_pages {
                break;
            }
        }
        (page - first).min(limit)
    }

    /// The lowest page index `i` with `i % align == 0` such that the pages
    /// `[i, i + n)` are all free, or `None`. `align` is a power of two in pages (1 for
    /// no alignment); `None` as well for `n == 0` or an `align` that is not a power of
    /// two. Does not allocate: see [`PageBitmap::alloc`].
    ///
    /// Cost: O(1) for one page (the hint); O(log pages) for `align == 1` and whenever
    /// the first aligned fit comes before any near miss; see the module documentation
    /// for the slow path.
    #[must_use]
    pub(crate) fn find(&self, n: usize, align: usize) -> Option<usize> {
        if n == 0 || n > self.pages || !align.is_power_of_two() || self.root().max() < n {
            return None;
        }
        if n == 1 && align == 1 {
            return Some(self.hint);
        }
        let found = self.search(self.shape.levels - 1, 0, n, align);
        debug_assert!(
            found.is_some() || align > 1,
            "page_bitmap: summaries promised a run"
        );
        found
    }

    /// Moves the hint to the lowest free page when every page below `from` is in use
    /// (the summaries up to date): the bitmap words from `from` to the end of its
    /// chunk (at most 8), then the summary walk. O(8 + 8 L) word operations.
    fn advance_hint(&mut self, from: usize) {
        if from < self.pages {
            let chunk_words = self.shape.chunk_pages / WORD_PAGES;
            let first_word = from / WORD_PAGES;
            let end_word = (first_word / chunk_words + 1) * chunk_words;
            // Pages below `from` in its word count as used.
            let mut word = self.words()[first_word] | ((1u64 << (from % WORD_PAGES)) - 1);
            for index in first_word..end_word {
                if index > first_word {
                    word = self.words()[index];
                }
                if word != u64::MAX {
                    self.hint = index * WORD_PAGES + word.trailing_ones() as usize;
                    return;
                }
            }
        }
        self.hint = if self.root().max() == 0 {
            self.pages
        } else {
            let lowest = self.search(self.shape.levels - 1, 0, 1, 1);
            lowest.expect("page_bitmap: the root promised a free page")
        };
    }

    /// Finds and takes `n` pages aligned to `align` pages: [`PageBitmap::find`], then
    /// [`PageBitmap::alloc_range`]. Returns the first page.
    #[must_use]
    pub(crate) fn alloc(&mut self, n: usize, align: usize) -> Option<usize> {
        let first = self.find(n, align)?;
        self.alloc_range(first, n);
        Some(first)
    }

    /// Marks the free pages `[first, first + n)` in use.
    ///
    /// # Panics
    ///
    /// When the range leaves the arena; in debug builds also when a page of it is not
    /// free.
    pub(crate) fn alloc_range(&mut self, first: usize, n: usize) {
        debug_assert!(
            self.is_range_free(first, n),
            "page_bitmap: allocating a used page"
        );
        self.fill(first, n, Fill::Used);
    }

    /// Marks the pages `[first, first + n)` in use whatever their state (for pages the
    /// arena cannot use, or metadata).
    ///
    /// # Panics
    ///
    /// When the range leaves the arena.
    #[cfg_attr(not(test), allow(dead_code, reason = "page-heap API not called yet"))]
    pub(crate) fn mark_range(&mut self, first: usize, n: usize) {
        self.fill(first, n, Fill::Used);
    }

    /// Marks the pages `[first, first + n)` free. Pages already free stay free and are
    /// not counted twice: catching double frees is the checked mode's job, above this
    /// layer. Free neighbours coalesce through the summaries.
    ///
    /// # Panics
    ///
    /// When the range leaves the arena.
    pub(crate) fn free_range(&mut self, first: usize, n: usize) {
        self.fill(first, n, Fill::Free);
    }

    /// Takes every free page of the 64-page group starting at page `group` (a
    /// multiple of 64): marks them in use and returns them as a mask (bit `i`: page
    /// `group + i` was free). For the per-CPU page caches.
    ///
    /// # Panics
    ///
    /// When the group leaves the arena or is not aligned.
    pub(crate) fn take_group(&mut self, group: usize) -> u64 {
        assert!(
            group % WORD_PAGES == 0 && group < self.pages,
            "page_bitmap: bad group"
        );
        let word = &mut self.words_mut()[group / WORD_PAGES];
        let free = !*word;
        *word = u64::MAX;
        self.free -= free.count_ones() as usize;
        let chunk = group / self.shape.chunk_pages;
        self.update_summaries(chunk, chunk);
        if (group..group + WORD_PAGES).contains(&self.hint) {
            self.advance_hint(group + WORD_PAGES);
        }
        free
    }

    /// Frees the pages of `mask` in the 64-page group starting at page `group`: the
    /// inverse of [`PageBitmap::take_group`]. Pages of the mask already free stay free.
    ///
    /// # Panics
    ///
    /// When the group leaves the arena or is not aligned.
    pub(crate) fn give_group(&mut self, group: usize, mask: u64) {
        assert!(
            group % WORD_PAGES == 0 && group < self.pages,
            "page_bitmap: bad group"
        );
        let word = &mut self.words_mut()[group / WORD_PAGES];
        let freed = *word & mask;
        *word &= !mask;
        self.free += freed.count_ones() as usize;
        if mask != 0 {
            self.hint = self.hint.min(group + mask.trailing_zeros() as usize);
        }
        let chunk = group / self.shape.chunk_pages;
        self.update_summaries(chunk, chunk);
    }

    /// Sets or clears the bits of `[first, first + n)`, keeps the free count, and
    /// updates the summaries above the chunks touched.
    fn fill(&mut self, first: usize, n: usize, fill: Fill) {
        assert!(
            first <= self.pages && n <= self.pages - first,
            "page_bitmap: page range outside the arena"
        );
        if n == 0 {
            return;
        }
        let last = first + n - 1;
        let mut changed = 0;
        let (first_word, last_word) = (first / WORD_PAGES, last / WORD_PAGES);
        let words = &mut self.words_mut()[first_word..=last_word];
        for (word, index) in words.iter_mut().zip(first_word..) {
            let mask = range_mask(index, first, last);
            let old = *word;
            *word = match fill {
                Fill::Free => old & !mask,
                Fill::Used => old | mask,
            };
            changed += (old ^ *word).count_ones() as usize;
        }
        let chunk_pages = self.shape.chunk_pages;
        self.update_summaries(first / chunk_pages, last / chunk_pages);
        match fill {
            Fill::Free => {
                self.free += changed;
                self.hint = self.hint.min(first);
            }
            Fill::Used => {
                self.free -= changed;
                if (first..=last).contains(&self.hint) {
                    self.advance_hint(last + 1);
                }
            }
        }
    }

    /// Recomputes the summaries of chunks `first..=last` from their bits, then every
    /// summary above them.
    ///
    /// Stops at the first level where no summary changed: every summary above is a
    /// merge of unchanged children (invariant 2), so it is unchanged too. A one-page
    /// change inside a large free run usually stops below the root.
    fn update_summaries(&mut self, first: usize, last: usize) {
        let chunk_words = self.shape.chunk_pages / WORD_PAGES;
        let mut changed = false;
        for chunk in first..=last {
            let words = &self.words()[chunk * chunk_words..(chunk + 1) * chunk_words];
            let summary = summarize_words(words);
            changed |= self.replace_summary(0, chunk, summary);
        }
        let (mut first, mut last) = (first, last);
        for level in 1..self.shape.levels {
            if !changed {
                return;
            }
            changed = false;
            first /= FANOUT;
            last /= FANOUT;
            for index in first..=last {
                let summary = self.merge_children(level, index);
                changed |= self.replace_summary(level, index, summary);
            }
        }
    }

    /// Stores the summary `index` of level `level`; `true` when it changed.
    fn replace_summary(&mut self, level: usize, index: usize, summary: Summary) -> bool {
        let changed = self.summary(level, index) != summary;
        self.set_summary(level, index, summary);
        changed
    }

    /// The merge of the children of summary `index` of level `level >= 1`.
    fn merge_children(&self, level: usize, index: usize) -> Summary {
        let children = self.level(level - 1);
        let end = (index * FANOUT + FANOUT).min(children.len());
        let children = children[index * FANOUT..end]
            .iter()
            .map(|&packed| Summary(packed));
        Summary::merge(children, self.level_pages(level - 1))
    }

    /// The lowest aligned fit of `n` pages inside node `index` of level `level`, whose
    /// longest run is at least `n`. Runs that leave the node are not considered here:
    /// the caller sees them through the node's `start` and `end`.
    ///
    /// Scans the children left to right with the free run that reaches the current
    /// child (`run_start`: where it began; equal to the child's first page when no run
    /// reaches it), checks that run where it ends, and descends into a child whose
    /// longest run is at least `n`. For `align == 1` that descent always succeeds.
    fn search(&self, level: usize, index: usize, n: usize, align: usize) -> Option<usize> {
        if level == 0 {
            return self.search_chunk(index, n, align);
        }
        let child_level = level - 1;
        let child_pages = self.level_pages(child_level);
        let children = self.level(child_level);
        let first = index * FANOUT;
        let end = (first + FANOUT).min(children.len());
        let mut run_start = first * child_pages;
        for (&packed, child) in children[first..end].iter().zip(first..) {
            let summary = Summary(packed);
            let child_start = child * child_pages;
            if let Some(page) = fit(run_start, child_start + summary.start(), n, align) {
                return Some(page);
            }
            if summary.start() == child_pages {
                continue;
            }
            if summary.max() >= n {
                if let Some(page) = self.search(child_level, child, n, align) {
                    return Some(page);
                }
                debug_assert!(align > 1, "page_bitmap: a child's max promised a run");
            }
            run_start = child_start + child_pages - summary.end();
        }
        None
    }

    /// The lowest aligned fit of `n` pages inside chunk `chunk` ([`scan_words`]).
    fn search_chunk(&self, chunk: usize, n: usize, align: usize) -> Option<usize> {
        let chunk_words = self.shape.chunk_pages / WORD_PAGES;
        let words = &self.words()[chunk * chunk_words..(chunk + 1) * chunk_words];
        scan_words(words, chunk * self.shape.chunk_pages, n, align)
    }

    /// Checks the invariants of the module documentation by recomputing every level-0
    /// summary bit by bit, every upper summary from its children, the root from the
    /// whole bitmap, and the free count. O(pages).
    ///
    /// # Errors
    ///
    /// A description of the first broken invariant.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        let words = self.words();
        let zeros: usize = words.iter().map(|word| word.count_zeros() as usize).sum();
        if zeros != self.free {
            return Err("page_bitmap: free_pages differs from the zero bits of the bitmap");
        }
        let chunk_pages = self.shape.chunk_pages;
        for chunk in 0..self.shape.level_len[0] {
            if self.summary(0, chunk) != summarize_bits(words, chunk * chunk_pages, chunk_pages) {
                return Err("page_bitmap: a chunk summary differs from the chunk's bits");
            }
        }
        for level in 1..self.shape.levels {
            for index in 0..self.shape.level_len[level] {
                if self.summary(level, index) != self.merge_children(level, index) {
                    return Err("page_bitmap: a summary differs from the merge of its children");
                }
            }
        }
        if self.root() != summarize_bits(words, 0, self.pages) {
            return Err("page_bitmap: the root differs from the summary of the whole bitmap");
        }
        let lowest_free = (0..self.pages)
            .find(|&page| words[page / WORD_PAGES] & (1 << (page % WORD_PAGES)) == 0);
        if self.hint != lowest_free.unwrap_or(self.pages) {
            return Err("page_bitmap: the hint is not the lowest free page");
        }
        Ok(())
    }
}

impl fmt::Debug for PageBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageBitmap")
            .field("pages", &self.pages)
            .field("free", &self.free)
            .field("root", &self.root())
            .finish()
    }
}

/// The lowest aligned fit of `n` pages inside the pages of `words`, the first of
/// which is page `base`: the same scan as [`PageBitmap::search`], over words instead of
/// children, with runs inside one word (for `n <= 64`) found by [`fit_mask`]. One word
/// costs a few bit operations, plus O(log n) when it has `n` free bits.
fn scan_words(words: &[u64], base: usize, n: usize, align: usize) -> Option<usize> {
    let mut run_start = base;
    for (index, &word) in words.iter().enumerate() {
        let word_start = base + index * WORD_PAGES;
        let start = word.trailing_zeros() as usize;
        if let Some(page) = fit(run_start, word_start + start, n, align) {
            return Some(page);
        }
        if word == 0 {
            continue;
        }
        if n <= WORD_PAGES && word.count_zeros() as usize >= n {
            let fits = fit_mask(!word, n) & align_mask(word_start, align);
            if fits != 0 {
                return Some(word_start + fits.trailing_zeros() as usize);
            }
        }
        run_start = word_start + WORD_PAGES - word.leading_zeros() as usize;
    }
    None
}

/// The bits of word `index` that hold pages of `[first, last]` (which meets the word).
#[inline]
fn range_mask(index: usize, first: usize, last: usize) -> u64 {
    let word_start = index * WORD_PAGES;
    let lo = first.max(word_start) - word_start;
    let hi = last.min(word_start + WORD_PAGES - 1) - word_start;
    (u64::MAX >> (WORD_PAGES - 1 - (hi - lo))) << lo
}

/// The lowest page `p >= run_start` aligned to `align` with `[p, p + n)` inside the
/// free run `[run_start, run_end)`.
#[inline]
fn fit(run_start: usize, run_end: usize, n: usize, align: usize) -> Option<usize> {
    let page = if align == 1 {
        run_start
    } else {
        run_start.checked_next_multiple_of(align)?
    };
    (page.checked_add(n)? <= run_end).then_some(page)
}

/// The bits of a word at page indices aligned to `align` pages, for the word starting
/// at page `word_start`.
#[inline]
fn align_mask(word_start: usize, align: usize) -> u64 {
    if align < WORD_PAGES {
        ALIGN_MASKS[align.trailing_zeros() as usize]
    } else if word_start % align == 0 {
        1
    } else {
        0
    }
}

/// For `free` (1 = free page) and `1 <= n <= 64`: bit `i` set when bits `i..i + n` of
/// `free` are all set, i.e. `n` free pages start at `i` inside the word (Go's
/// `findBitRange64`, keeping every position). Shrinks every run of ones by `n - 1`
/// from the top, doubling the shift as the gaps grow: O(log n) steps.
#[inline]
fn fit_mask(free: u64, n: usize) -> u64 {
    debug_assert!((1..=WORD_PAGES).contains(&n));
    let mut fits = free;
    let mut remaining = n - 1;
    let mut covered = 1;
    while remaining > 0 && fits != 0 {
        let shift = remaining.min(covered);
        fits &= fits >> shift;
        remaining -= shift;
        covered += shift;
    }
    fits
}

/// The summary of a chunk's words (at most one chunk: fields fit).
fn summarize_words(words: &[u64]) -> Summary {
    let (mut start, mut max, mut end) = (0, 0, 0);
    let mut leading = true;
    for &word in words {
        if word == 0 {
            if leading {
                start += WORD_PAGES;
            }
            end += WORD_PAGES;
            continue;
        }
        let low = word.trailing_zeros() as usize;
        let high = word.leading_zeros() as usize;
        if leading {
            start += low;
            leading = false;
        }
        max = max.max(end + low);
        let inner = word.count_zeros() as usize - low - high;
        if inner > max {
            max = max.max(longest_free_run(word));
        }
        end = high;
    }
    Summary::new(start, max.max(end), end)
}

/// The longest run of zero bits in `word`: one step per run of zeros.
fn longest_free_run(word: u64) -> usize {
    let mut free = !word;
    let mut best = 0;
    while free != 0 {
        free >>= free.trailing_zeros();
        let run = (!free).trailing_zeros();
        best = best.max(run);
        if run == u64::BITS {
            break;
        }
        free >>= run;
    }
    best as usize
}

/// The summary of pages `[first, first + pages)`, bit by bit: the reference that
/// [`PageBitmap::check_invariants`] compares against.
fn summarize_bits(words: &[u64], first: usize, pages: usize) -> Summary {
    let is_free = |page: usize| words[page / WORD_PAGES] & (1 << (page % WORD_PAGES)) == 0;
    let start = (first..first + pages)
        .take_while(|&page| is_free(page))
        .count();
    let end = (first..first + pages)
        .rev()
        .take_while(|&page| is_free(page))
        .count();
    let (mut max, mut run) = (0, 0);
    for page in first..first + pages {
        run = if is_free(page) { run + 1 } else { 0 };
        max = max.max(run);
    }
    Summary::new(start, max, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A bitmap over storage from a `Vec<u64>` sized by `metadata_bytes`.
    struct Owned {
        bitmap: PageBitmap,
        /// Never touched while `bitmap` lives; dropped after it (field order).
        _storage: Vec<u64>,
    }

    impl Owned {
        fn new(pages: usize) -> Self {
            let bytes = PageBitmap::metadata_bytes(pages);
            assert_eq!(bytes % 8, 0);
            let mut storage = vec![0x5A5A_5A5A_5A5A_5A5A_u64; bytes / 8];
            let ptr = NonNull::new(storage.as_mut_ptr()).unwrap().cast::<u8>();
            // SAFETY: the vector's buffer is 8-aligned and `bytes` long, and this struct
            // never touches it again while `bitmap` lives (moving the Vec does not move
            // its buffer).
            let bitmap = unsafe { PageBitmap::init(ptr, pages) };
            Self {
                bitmap,
                _storage: storage,
            }
        }

        /// An arena with every page free.
        fn free(pages: usize) -> Self {
            let mut owned = Self::new(pages);
            owned.free_range(0, pages);
            owned
        }
    }

    impl core::ops::Deref for Owned {
        type Target = PageBitmap;
        fn deref(&self) -> &PageBitmap {
            &self.bitmap
        }
    }

    impl core::ops::DerefMut for Owned {
        fn deref_mut(&mut self) -> &mut PageBitmap {
            &mut self.bitmap
        }
    }

    /// The shadow model: one bool per page, `true` = used.
    struct Model {
        used: Vec<bool>,
    }

    impl Model {
        fn new(pages: usize) -> Self {
            Self {
                used: vec![true; pages],
            }
        }

        fn set(&mut self, first: usize, n: usize, used: bool) {
            self.used[first..first + n]
                .iter_mut()
                .for_each(|page| *page = used);
        }

        fn free_pages(&self) -> usize {
            self.used.iter().filter(|&&used| !used).count()
        }

        /// Naive first fit: free run lengths from the right, lowest aligned start.
        fn find(&self, n: usize, align: usize) -> Option<usize> {
            if n == 0 || n > self.used.len() {
                return None;
            }
            let (mut run, mut found) = (0, None);
            for page in (0..self.used.len()).rev() {
                run = if self.used[page] { 0 } else { run + 1 };
                if run >= n && page % align == 0 {
                    found = Some(page);
                }
            }
            found
        }

        fn longest_run(&self) -> usize {
            self.used
                .split(|&used| used)
                .map(<[bool]>::len)
                .max()
                .unwrap_or(0)
        }

        fn free_run_from(&self, first: usize, limit: usize) -> usize {
            self.used.get(first..).map_or(0, |rest| {
                rest.iter().take(limit).take_while(|&&used| !used).count()
            })
        }
    }

    fn assert_ok(bitmap: &PageBitmap) {
        assert_eq!(bitmap.check_invariants(), Ok(()));
    }

    /// Arena sizes covering one partial chunk, several chunks, and 2 and 3 levels.
    #[cfg(not(miri))]
    const SIZES: [usize; 5] = [256, 512, 1024, 16384, 262144];
    #[cfg(miri)]
    const SIZES: [usize; 3] = [256, 512, 8192];

    #[test]
    fn metadata_bytes_per_arena_size() {
        // bitmap words + summaries: 1 MiB: 4 + 1; 4 MiB: 16 + 2 + 1;
        // 64 MiB: 256 + 32 + 4 + 1; 1 GiB: 4096 + 512 + 64 + 8 + 1.
        assert_eq!(PageBitmap::metadata_bytes(256), 5 * 8);
        assert_eq!(PageBitmap::metadata_bytes(1024), 19 * 8);
        assert_eq!(PageBitmap::metadata_bytes(16384), 293 * 8);
        assert_eq!(PageBitmap::metadata_bytes(262144), 4681 * 8);
        const AT_COMPILE_TIME: usize = PageBitmap::metadata_bytes(512);
        assert_eq!(AT_COMPILE_TIME, 9 * 8);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn metadata_bytes_refuses_bad_sizes() {
        let _ = PageBitmap::metadata_bytes(3000);
    }

    #[test]
    fn shape_of_the_tree() {
        for (pages, chunk_pages, levels) in [
            (256, 256, 1),
            (512, 512, 1),
            (1024, 512, 2),
            (16384, 512, 3),
            (262144, 512, 4),
        ] {
            let bitmap = Owned::new(pages);
            assert_eq!(
                (bitmap.chunk_pages(), bitmap.levels()),
                (chunk_pages, levels)
            );
        }
    }

    #[test]
    fn take_and_give_a_group_keep_counts_and_summaries() {
        for pages in SIZES {
            let mut bitmap = Owned::free(pages);
            bitmap.alloc_range(3, 5);
            bitmap.alloc_range(pages - 64 + 60, 4);
            let taken = bitmap.take_group(0);
            assert_eq!(taken, !(0b1_1111 << 3));
            assert_eq!(bitmap.free_pages(), pages - 64 - 4);
            assert_eq!(bitmap.find(1, 1), Some(64.min(pages)));
            assert_ok(&bitmap);
            // Give back part of it: the pages coalesce with their free neighbours.
            bitmap.give_group(0, taken & !0b111);
            assert_eq!(bitmap.free_pages(), pages - 64 - 4 + 64 - 5 - 3);
            assert_eq!(bitmap.find(1, 1), Some(8));
            let last = pages - 64;
            let tail = bitmap.take_group(last);
            assert_eq!(tail, u64::MAX >> 4);
            bitmap.give_group(last, tail);
            let free = bitmap.free_pages();
            bitmap.give_group(last, 0b1);
            assert_eq!(
                bitmap.free_pages(),
                free,
                "a free page is not counted twice"
            );
            assert_ok(&bitmap);
            bitmap.give_group(0, 0b111);
            assert_eq!(bitmap.free_pages(), pages - 9);
            assert_ok(&bitmap);
        }
    }

    #[test]
    fn starts_all_used() {
        for pages in SIZES {
            let bitmap = Owned::new(pages);
            assert_eq!(bitmap.free_pages(), 0);
            assert_eq!(bitmap.root(), Summary::USED);
            assert_eq!(bitmap.find(1, 1), None);
            assert!(!bitmap.is_free(0));
            assert_eq!(bitmap.free_run_from(0, pages), 0);
            assert_ok(&bitmap);
        }
    }

    #[test]
    fn whole_arena_free() {
        for pages in SIZES {
            let mut bitmap = Owned::free(pages);
            assert_eq!(bitmap.free_pages(), pages);
            assert_eq!(bitmap.root(), Summary::free(pages));
            assert_eq!(bitmap.find(pages, 1), Some(0));
            assert_eq!(bitmap.find(pages, pages), Some(0));
            assert_eq!(bitmap.find(1, pages), Some(0));
            assert_eq!(bitmap.find(pages + 1, 1), None);
            assert_eq!(bitmap.find(0, 1), None);
            assert_eq!(bitmap.find(1, 3), None, "align not a power of two");
            assert_eq!(bitmap.free_run_from(0, usize::MAX), pages);
            assert_eq!(bitmap.alloc(pages, pages), Some(0));
            assert_eq!(bitmap.free_pages(), 0);
            assert_eq!(bitmap.find(1, 1), None);
            assert_ok(&bitmap);
        }
    }

    #[test]
    fn align_equal_to_arena_needs_page_zero() {
        let mut bitmap = Owned::free(1024);
        bitmap.mark_range(0, 1);
        assert_eq!(bitmap.find(1, 1024), None);
        assert_eq!(bitmap.find(1, 512), Some(512));
        assert_eq!(
            bitmap.find(1, 2048),
            None,
            "only page 0 is aligned beyond the arena"
        );
        bitmap.free_range(0, 1);
        assert_eq!(bitmap.find(1, 1 << 40), Some(0));
    }

    #[test]
    fn summary_packs_and_merges() {
        let summary = Summary::new(5, 1 << 18, 7);
        assert_eq!(
            (summary.start(), summary.max(), summary.end()),
            (5, 1 << 18, 7)
        );
        let full = Summary::free(Summary::MAX_FIELD);
        assert_eq!(full.end(), Summary::MAX_FIELD);
        let free = Summary::free(512);
        // used | free | free: the end run crosses two children.
        let merged = Summary::merge([Summary::new(0, 3, 2), free, free], 512);
        assert_eq!(merged, Summary::new(0, 1026, 1026));
        // free | start 10 ...: the start run extends.
        let merged = Summary::merge([free, Summary::new(10, 40, 0)], 512);
        assert_eq!(merged, Summary::new(522, 522, 0));
        // end 30 | start 20: a straddling run becomes the max.
        let merged = Summary::merge([Summary::new(1, 30, 30), Summary::new(20, 24, 3)], 512);
        assert_eq!(merged, Summary::new(1, 50, 3));
        assert_eq!(Summary::merge([], 512), Summary::USED);
    }

    #[test]
    fn fragmented_arena_finds_the_late_run() {
        let pages = if cfg!(miri) { 2048 } else { 16384 };
        let mut bitmap = Owned::new(pages);
        for page in (0..pages).step_by(2) {
            bitmap.free_range(page, 1);
        }
        assert_eq!(bitmap.root().max(), 1);
        assert_eq!(bitmap.find(2, 1), None);
        let first = pages - 700;
        bitmap.free_range(first, 600);
        assert_ok(&bitmap);
        // `first` is even: page first - 1 is used, and the run absorbs the free page
        // first + 600, so it holds 601 pages.
        assert_eq!(bitmap.find(600, 1), Some(first));
        assert_eq!(bitmap.find(2, 1), Some(first));
        assert_eq!(bitmap.find(1, 1), Some(0));
        assert_eq!(bitmap.find(1, 2), Some(0));
        assert_eq!(bitmap.find(599, 64), None);
        assert_eq!(bitmap.find(500, 64), Some(first.next_multiple_of(64)));
        assert_eq!(bitmap.alloc(600, 1), Some(first));
        assert_eq!(bitmap.find(2, 1), None);
        assert_ok(&bitmap);
    }

    #[test]
    fn runs_straddling_chunk_boundaries() {
        let mut bitmap = Owned::new(1024);
        bitmap.free_range(500, 30);
        assert_eq!(bitmap.find(30, 1), Some(500));
        assert_eq!(bitmap.find(31, 1), None);
        assert_eq!(bitmap.find(12, 4), Some(500));
        assert_eq!(bitmap.find(18, 512), Some(512));
        assert_eq!(bitmap.find(19, 512), None);
        assert_eq!(bitmap.find(4, 256), Some(512));
        assert_eq!(bitmap.find(1, 1024), None);
        // A shorter run earlier inside a chunk comes first.
        bitmap.free_range(10, 30);
        assert_eq!(bitmap.find(30, 1), Some(10));
        assert_eq!(bitmap.free_run_from(500, 1000), 30);
        assert_eq!(bitmap.free_run_from(505, 10), 10);
        assert_ok(&bitmap);
    }

    #[test]
    fn runs_straddling_word_boundaries_inside_a_chunk() {
        let mut bitmap = Owned::new(512);
        bitmap.free_range(60, 8);
        bitmap.free_range(120, 200);
        assert_eq!(bitmap.find(8, 1), Some(60));
        assert_eq!(bitmap.find(9, 1), Some(120));
        assert_eq!(bitmap.find(8, 8), Some(120));
        assert_eq!(bitmap.find(5, 4), Some(60));
        assert_eq!(bitmap.find(4, 8), Some(64));
        assert_eq!(bitmap.find(5, 8), Some(120));
        assert_eq!(bitmap.find(200, 1), Some(120));
        assert_eq!(bitmap.find(192, 64), Some(128));
        assert_eq!(bitmap.find(193, 64), None);
        assert_ok(&bitmap);
    }

    #[test]
    fn runs_straddling_level_boundaries() {
        // 16384 pages: level 1 nodes cover 4096 pages. 262144 pages: level 2 nodes
        // cover 32768 pages, level 1 nodes 4096.
        #[cfg(not(miri))]
        let cases = [
            (16384, 4096),
            (262144, 4096),
            (262144, 32768),
            (262144, 131072),
        ];
        #[cfg(miri)]
        let cases = [(16384, 4096)];
        for (pages, boundary) in cases {
            let mut bitmap = Owned::new(pages);
            // A run ending just after the boundary, and a long run crossing it later.
            bitmap.free_range(boundary - 100, 150);
            assert_eq!(bitmap.find(150, 1), Some(boundary - 100));
            assert_eq!(bitmap.find(151, 1), None);
            bitmap.free_range(boundary + 1000, 5000);
            assert_eq!(bitmap.find(150, 1), Some(boundary - 100));
            assert_eq!(bitmap.find(151, 1), Some(boundary + 1000));
            assert_eq!(bitmap.find(5000, 1), Some(boundary + 1000));
            assert_eq!(bitmap.find(4096, 4096), None);
            assert_eq!(bitmap.find(2048, 2048), Some(boundary + 2048));
            // Several fully free chunks between partial ones.
            bitmap.mark_range(0, pages);
            bitmap.free_range(boundary - 1, 2 * CHUNK_PAGES + 2);
            assert_eq!(bitmap.find(2 * CHUNK_PAGES + 2, 1), Some(boundary - 1));
            assert_eq!(bitmap.find(2 * CHUNK_PAGES, CHUNK_PAGES), Some(boundary));
            assert_eq!(bitmap.find(2 * CHUNK_PAGES + 1, 2), Some(boundary));
            assert_eq!(bitmap.find(2 * CHUNK_PAGES + 2, 2), None);
            assert_ok(&bitmap);
        }
    }

    #[test]
    fn aligned_find_is_exact_first_fit() {
        // An exact aligned fit at 64 comes before a long run: a search for
        // n + align - 1 pages would miss it.
        let mut bitmap = Owned::new(1024);
        bitmap.free_range(64, 64);
        bitmap.free_range(600, 300);
        assert_eq!(bitmap.find(64, 64), Some(64));
        // Near misses (runs of >= n pages with no aligned fit) before the fit.
        bitmap.mark_range(0, 1024);
        bitmap.free_range(1, 100);
        bitmap.free_range(513, 100);
        bitmap.free_range(700, 200);
        assert_eq!(bitmap.find(64, 64), Some(704));
        assert_eq!(bitmap.find(64, 32), Some(32));
        assert_ok(&bitmap);
    }

    #[test]
    fn alloc_and_free_round_trip() {
        let mut bitmap = Owned::free(1024);
        assert_eq!(bitmap.alloc(3, 1), Some(0));
        assert_eq!(bitmap.alloc(3, 4), Some(4));
        assert_eq!(bitmap.alloc(1, 1), Some(3));
        assert_eq!(bitmap.alloc(600, 1), Some(7));
        assert_eq!(bitmap.free_pages(), 1024 - 607);
        bitmap.free_range(4, 3);
        assert_eq!(bitmap.free_pages(), 1024 - 604);
        bitmap.free_range(4, 3);
        assert_eq!(
            bitmap.free_pages(),
            1024 - 604,
            "freeing free pages counts nothing"
        );
        assert!(bitmap.is_range_free(4, 3));
        assert!(!bitmap.is_range_free(4, 4));
        assert!(bitmap.is_range_free(1024, 0));
        assert!(!bitmap.is_range_free(1000, 25));
        assert!(!bitmap.is_free(1024));
        assert_eq!(bitmap.free_run_from(4, 100), 3);
        assert_eq!(bitmap.free_run_from(607, usize::MAX), 1024 - 607);
        assert_eq!(bitmap.free_run_from(2000, 1), 0);
        assert_ok(&bitmap);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn free_range_outside_the_arena_panics() {
        Owned::new(256).free_range(200, 57);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "allocating a used page")]
    fn alloc_range_of_used_pages_panics_in_debug() {
        let mut bitmap = Owned::free(256);
        bitmap.alloc_range(10, 5);
        bitmap.alloc_range(14, 1);
    }

    #[test]
    fn check_invariants_catches_corruption() {
        let mut bitmap = Owned::free(1024);
        bitmap.free -= 1;
        assert!(bitmap.check_invariants().is_err());
        bitmap.free += 1;
        bitmap.set_summary(1, 0, Summary::USED);
        assert!(bitmap.check_invariants().is_err());
        bitmap.set_summary(1, 0, Summary::free(1024));
        bitmap.words_mut()[3] = 1;
        assert!(bitmap.check_invariants().is_err());
    }

    /// `fit_mask` against checking every window.
    fn naive_fit_mask(free: u64, n: usize) -> u64 {
        (0..=64 - n)
            .filter(|&i| (i..i + n).all(|bit| free & (1 << bit) != 0))
            .fold(0, |mask, i| mask | 1 << i)
    }

    /// A word with runs: random words are mostly short runs.
    fn runny_word() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| a | b),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| a & b),
            (0..64u32, 0..64u32).prop_map(|(lo, len)| (u64::MAX >> len) << lo),
            Just(0),
            Just(u64::MAX),
        ]
    }

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases: if cfg!(miri) { cases.min(4) } else { cases },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn fit_mask_matches_naive(word in runny_word(), n in 1usize..=64) {
            prop_assert_eq!(fit_mask(word, n), naive_fit_mask(word, n));
        }

        #[test]
        fn summarize_words_matches_bits(words in proptest::collection::vec(runny_word(), 1..=8)) {
            let pages = words.len() * 64;
            prop_assert_eq!(summarize_words(&words), summarize_bits(&words, 0, pages));
        }

        #[test]
        fn merge_matches_bits(words in proptest::collection::vec(runny_word(), 8)) {
            // 8 words as 4 children of 128 pages.
            let children = (0..4).map(|child| summarize_bits(&words, child * 128, 128));
            prop_assert_eq!(Summary::merge(children, 128), summarize_bits(&words, 0, 512));
        }
    }

    /// One step of the differential test.
    #[derive(Debug, Clone)]
    enum Op {
        /// `find(n, align)` then `alloc_range` of the result.
        Alloc { n: usize, align: usize },
        /// Free a run taken by an earlier `Alloc` (index modulo the live runs).
        FreeRun(usize),
        /// `free_range` of an arbitrary range (clamped into the arena).
        FreeRange { first: usize, n: usize },
        /// `mark_range` of an arbitrary range (clamped into the arena).
        MarkRange { first: usize, n: usize },
        /// Compare `free_run_from` and `is_range_free`.
        Query { first: usize, n: usize },
    }

    fn op(pages: usize) -> impl Strategy<Value = Op> {
        let log = pages.trailing_zeros();
        let n = prop_oneof![4 => 1..=8usize, 3 => 1..=80usize, 2 => 1..=700usize, 1 => 1..=pages];
        let align = prop_oneof![4 => Just(1usize), 3 => (1..=log).prop_map(|k| 1usize << k)];
        let range = (0..pages, prop_oneof![1..=64usize, 0..=pages]);
        prop_oneof![
            5 => (n, align).prop_map(|(n, align)| Op::Alloc { n, align }),
            3 => any::<usize>().prop_map(Op::FreeRun),
            3 => range.clone().prop_map(move |(first, n)| Op::FreeRange { first, n: n.min(pages - first) }),
            1 => range.clone().prop_map(move |(first, n)| Op::MarkRange { first, n: n.min(pages - first) }),
            1 => range.prop_map(|(first, n)| Op::Query { first, n }),
        ]
    }

    fn differential(pages: usize, start_free: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut bitmap = Owned::new(pages);
        let mut model = Model::new(pages);
        if start_free {
            bitmap.free_range(0, pages);
            model.set(0, pages, false);
        }
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { n, align } => {
                    let want = model.find(n, align);
                    prop_assert_eq!(bitmap.find(n, align), want, "find({}, {})", n, align);
                    prop_assert_eq!(bitmap.alloc(n, align), want);
                    if let Some(first) = want {
                        model.set(first, n, true);
                        runs.push((first, n));
                    }
                }
                Op::FreeRun(index) => {
                    if !runs.is_empty() {
                        let (first, n) = runs.swap_remove(index % runs.len());
                        bitmap.free_range(first, n);
                        model.set(first, n, false);
                    }
                }
                Op::FreeRange { first, n } => {
                    bitmap.free_range(first, n);
                    model.set(first, n, false);
                }
                Op::MarkRange { first, n } => {
                    bitmap.mark_range(first, n);
                    model.set(first, n, true);
                }
                Op::Query { first, n } => {
                    prop_assert_eq!(
                        bitmap.free_run_from(first, n),
                        model.free_run_from(first, n)
                    );
                    let free = first + n <= pages && model.free_run_from(first, n) == n;
                    prop_assert_eq!(bitmap.is_range_free(first, n), free);
                    prop_assert_eq!(bitmap.is_free(first), model.free_run_from(first, 1) == 1);
                }
            }
            prop_assert_eq!(bitmap.check_invariants(), Ok(()));
            prop_assert_eq!(bitmap.free_pages(), model.free_pages());
            prop_assert_eq!(bitmap.root().max(), model.longest_run());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn differential_256(start_free: bool, ops in proptest::collection::vec(op(256), 1..80)) {
            differential(256, start_free, ops)?;
        }

        #[test]
        fn differential_1024(start_free: bool, ops in proptest::collection::vec(op(1024), 1..80)) {
            differential(1024, start_free, ops)?;
        }
    }

    proptest! {
        #![proptest_config(config(if cfg!(miri) { 1 } else { 128 }))]

        #[test]
        fn differential_16384(
            start_free: bool,
            ops in proptest::collection::vec(op(16384), 1..if cfg!(miri) { 4 } else { 60 }),
        ) {
            differential(16384, start_free, ops)?;
        }
    }

    /// Times `find(n, 1)` on a maximally fragmented 262144-page arena (every other page
    /// free) whose only run of `n` free pages is at its end, against linear scans of the
    /// bitmap: word by word ([`scan_words`] over the whole bitmap) and page by page. Run
    /// with
    /// `cargo test --release -p spanheap --lib page_bitmap -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: run with --release --ignored --nocapture"]
    fn bench_find_fragmented() {
        use std::time::Instant;
        let pages = MAX_PAGES;
        let mut bitmap = Owned::new(pages);
        for page in (0..pages).step_by(2) {
            bitmap.free_range(page, 1);
        }
        let linear = |bitmap: &PageBitmap, n: usize| -> Option<usize> {
            let mut run = 0;
            for page in 0..bitmap.pages() {
                run = if bitmap.is_free(page) { run + 1 } else { 0 };
                if run == n {
                    return Some(page + 1 - n);
                }
            }
            None
        };
        for n in [2, 16, 64, 600, 4096] {
            let first = pages - n - 8;
            bitmap.free_range(first, n);
            let rounds = 10_000;
            let start = Instant::now();
            for _ in 0..rounds {
                assert_eq!(core::hint::black_box(&*bitmap).find(n, 1), Some(first));
            }
            let tree = start.elapsed().as_nanos() as f64 / rounds as f64;
            let rounds = 20;
            let start = Instant::now();
            for _ in 0..rounds {
                assert_eq!(linear(core::hint::black_box(&*bitmap), n), Some(first));
            }
            let scan = start.elapsed().as_nanos() as f64 / rounds as f64;
            let rounds = 200;
            let start = Instant::now();
            for _ in 0..rounds {
                let words = core::hint::black_box(&*bitmap).words();
                assert_eq!(scan_words(words, 0, n, 1), Some(first));
            }
            let words = start.elapsed().as_nanos() as f64 / rounds as f64;
            std::println!(
                "find({n:4}, 1): tree {tree:6.1} ns, word scan {words:9.1} ns, \
                 page scan {scan:10.1} ns"
            );
            bitmap.mark_range(first, n);
            for page in (first..first + n).step_by(2) {
                bitmap.free_range(page, 1);
            }
        }
        assert_ok(&bitmap);

        // The aligned slow path: every chunk holds a 64-page run one page off alignment
        // (a near miss for find(64, 64)), and the only fit is in the last chunk.
        bitmap.mark_range(0, pages);
        for chunk in 0..pages / CHUNK_PAGES {
            bitmap.free_range(chunk * CHUNK_PAGES + 1, 64);
        }
        let last = pages - CHUNK_PAGES + 128;
        bitmap.free_range(last, 64);
        let rounds = 1000;
        let start = Instant::now();
        for _ in 0..rounds {
            assert_eq!(core::hint::black_box(&*bitmap).find(64, 64), Some(last));
        }
        let slow = start.elapsed().as_nanos() as f64 / rounds as f64;
        let start = Instant::now();
        for _ in 0..rounds {
            assert_eq!(core::hint::black_box(&*bitmap).find(64, 1), Some(1));
        }
        let fast = start.elapsed().as_nanos() as f64 / rounds as f64;
        std::println!("512 near misses: find(64, 64) {slow:.1} ns; find(64, 1) {fast:.1} ns");
    }
}
