//! Size classes: the pure, table-driven map from a request `(size, align)` to one of a
//! fixed set of object sizes, and the per-class span geometry.
//!
//! This module owns the class table and its lookup tables. It calls nothing and holds no
//! state: every table is computed by `const fn` at compile time from the rule below, so
//! the table cannot drift from the rule. Alloc and dealloc both call [`class_of`] with the
//! caller's `Layout`, so a pointer's class never has to be looked up from the pointer.
//!
//! # The rule
//!
//! Go's `mksizeclasses.go`, re-derived for 4 KiB pages ([`PAGE_SIZE`], one x86_64 frame):
//!
//! 1. **Candidates.** Walk sizes from 8 upward with a step that grows at each power of
//!    two: 8 up to 32, 16 up to 128, then `p / 8` from each power of two `p >= 128`
//!    (16 from 128, 32 from 256, ..., 2048 from 16 KiB). Go caps the step at 256 from
//!    2 KiB, which on 4 KiB pages gives 75 classes and spans of up to 13 pages; the
//!    uncapped `p / 8` step keeps the round-up bound by construction and gives 67
//!    classes with spans of at most 8 pages.
//! 2. **Span length.** A candidate's span is the smallest number of pages whose tail
//!    (the bytes left over after the last whole object) is at most 1/8 of the span.
//! 3. **Merge.** A candidate that gets the same span length and the same object count as
//!    the previous class replaces it (a bigger object for the same memory), unless the
//!    previous class is a power of two or the merge would break the round-up bound.
//! 4. **Grow.** Each class grows to `span_bytes / objects`, rounded down to a multiple of
//!    128 as in Go, when that keeps its span length, its round-up bound and its order.
//!
//! Then per class: `objects = span_bytes / size`, the division magic
//! `magic = ceil(2^32 / size)` and the refill batch `clamp(64 KiB / size, 2, 32)`
//! objects (TCMalloc's `num_objects_to_move`: a batch moves about 64 KiB, at least two
//! objects, at most 32).
//!
//! # Waste bounds
//!
//! - **Round-up waste.** For a class above 128 bytes, a request one byte above the
//!   previous class wastes at most 1/8 of the object:
//!   `(size[k] - size[k-1] - 1) * 8 <= size[k]`. Up to 128 bytes the spacing is 8 (up
//!   to 32) or 16, so the absolute waste is at most 15 bytes.
//! - **Tail waste.** `(span_bytes % size) * 8 <= span_bytes` for every class.
//!
//! # The table
//!
//! ```text
//! class  size pages objs   class  size pages objs   class  size pages objs
//!     1     8    1   512      24   448    1    9      47  4608    5    4
//!     2    16    1   256      25   512    1    8      48  5120    4    3
//!     3    24    1   170      26   576    1    7      49  5632    3    2
//!     4    32    1   128      27   640    1    6      50  6144    3    2
//!     5    48    1    85      28   704    2   11      51  6784    5    3
//!     6    64    1    64      29   768    1    5      52  7168    2    1
//!     7    80    1    51      30   832    2    9      53  8192    2    1
//!     8    96    1    42      31   896    1    4      54  9216    5    2
//!     9   112    1    36      32  1024    1    4      55 10240    5    2
//!    10   128    1    32      33  1152    2    7      56 11264    3    1
//!    11   144    1    28      34  1280    1    3      57 12288    3    1
//!    12   160    1    25      35  1408    3    8      58 13312    7    2
//!    13   176    1    23      36  1536    2    5      59 14336    4    1
//!    14   192    1    21      37  1664    3    7      60 16384    4    1
//!    15   208    1    19      38  1792    1    2      61 18432    5    1
//!    16   224    1    18      39  2048    1    2      62 20480    5    1
//!    17   240    1    17      40  2304    3    5      63 22528    6    1
//!    18   256    1    16      41  2560    2    3      64 24576    6    1
//!    19   288    1    14      42  2816    3    4      65 26624    7    1
//!    20   320    1    12      43  3072    3    4      66 28672    7    1
//!    21   352    1    11      44  3328    5    6      67 32768    8    1
//!    22   384    1    10      45  3584    1    1
//!    23   416    1     9      46  4096    1    1
//! ```
//!
//! (Pinned by the `table_snapshot` test; run `cargo test -p spanheap --lib size_class
//! -- --nocapture print_table` for the waste columns.)
//!
//! # Lookup
//!
//! [`class_of`] is two or three loads and no loop, as in Go's `malloc.go`:
//!
//! - `SIZE_TO_CLASS8[(size + 7) / 8]` for `size <= 1024` (129 bytes);
//! - `SIZE_TO_CLASS128[(size - 1024 + 127) / 128]` for `1024 < size <= 32768`
//!   (249 bytes; exact because every class above 1024 is a multiple of 128);
//! - `ALIGN_UP[class][log2(align)]`: the first class at or after `class` whose size is a
//!   multiple of `align` (13 columns, `align` 1 to 4096);
//! - `SIZE_TO_CLASS8_ALIGNED[k][(size + 7) / 8]` for `size <= 1024` aligned to `16 << k`
//!   (16, 32, 64: a cache line, which kernels ask for objects other CPUs touch): the
//!   first two lookups precomputed (387 bytes).
//!
//! Index 0 means "no class" (large objects, pages spans), as in Go: [`SizeClass`] holds
//! indices `1..NUM_CLASSES`, and an array indexed by [`SizeClass::index`] has
//! [`NUM_CLASSES`] entries with slot 0 unused.
//!
//! # Invariants
//!
//! Checked at compile time (a violation is a build error) and again by the tests:
//!
//! - class sizes are strictly increasing multiples of 8, multiples of 128 above 1024,
//!   and the last one is [`MAX_SMALL_SIZE`];
//! - every power of two from 8 to [`MAX_SMALL_SIZE`] is a class; object `i` of a class
//!   lies at `span_base + i * size` with `span_base` page-aligned, so it is aligned to
//!   the largest power of two dividing `size`, capped at [`PAGE_SIZE`] (power-of-two
//!   classes up to a page are naturally aligned);
//! - `1 <= objects <= 512`, `1 <= pages <= 8`, `objects == pages * PAGE_SIZE / size`;
//! - `(offset * magic) >> 32 == offset / size` for every `offset < pages * PAGE_SIZE`;
//! - `class_of(size, align)` is the smallest class whose size is at least
//!   `max(size, align, 1)` and a multiple of `align`, or `None` when
//!   `size > MAX_SMALL_SIZE` or `align > PAGE_SIZE`.

use core::num::NonZeroU8;

/// Bytes per page: one x86_64 frame, the unit of the page heap and of spans.
pub const PAGE_SIZE: usize = 4096;

/// The largest size served by a size class; larger requests take whole pages.
pub const MAX_SMALL_SIZE: usize = 32 * 1024;

/// Number of class indices, counting the reserved index 0 ("no class"). The classes are
/// [`SizeClass::ALL`], with indices `1..NUM_CLASSES`.
pub const NUM_CLASSES: usize = DRAFT.len;

/// The most objects any class fits in one span (the 8-byte class: one page).
pub(crate) const MAX_OBJECTS_PER_SPAN: usize = span_maxima().0;

/// The longest span of any class, in pages (the 32 KiB class).
pub(crate) const MAX_SPAN_PAGES: usize = span_maxima().1;

/// Smallest object size and spacing of the first classes.
const MIN_SIZE: usize = 8;
/// Every class size is a multiple of this, so an alignment up to it never changes the
/// class of a request (the fast paths of `class_of` and of a free rely on it).
pub(crate) const CLASS_GRANULE: usize = MIN_SIZE;
/// Largest size looked up through [`SIZE_TO_CLASS8`] (Go's `smallSizeMax`).
const SMALL_SIZE_MAX: usize = 1024;
/// Granule of [`SIZE_TO_CLASS8`] (Go's `smallSizeDiv`).
const SMALL_SIZE_DIV: usize = 8;
/// Granule of [`SIZE_TO_CLASS128`] (Go's `largeSizeDiv`); classes above
/// [`SMALL_SIZE_MAX`] are multiples of it.
const LARGE_SIZE_DIV: usize = 128;
/// Waste bounds are `1 / WASTE_DIV` (12.5%).
const WASTE_DIV: usize = 8;
/// Up to this size the round-up bound is a spacing of at most [`TINY_SPACING`] bytes.
const FINE_SIZE_MAX: usize = 128;
/// Largest spacing between classes up to [`FINE_SIZE_MAX`].
const TINY_SPACING: usize = 16;
/// A refill or flush batch moves about this many bytes...
const BATCH_BYTES: usize = 64 * 1024;
/// ...but at least this many objects...
const MIN_BATCH: usize = 2;
/// ...and at most this many.
pub(crate) const MAX_BATCH: usize = 32;
/// Columns of [`ALIGN_UP`]: `log2(align)` for `align` in `1..=PAGE_SIZE`.
const ALIGN_COLUMNS: usize = PAGE_SIZE.trailing_zeros() as usize + 1;
/// Capacity of the generator's scratch table (more than the rule can produce).
const DRAFT_CAPACITY: usize = 128;

// ---------------------------------------------------------------------------------------
// The rule, evaluated at compile time.
// ---------------------------------------------------------------------------------------

/// Class sizes and span lengths as the rule derives them; index 0 is "no class".
struct Draft {
    sizes: [usize; DRAFT_CAPACITY],
    pages: [usize; DRAFT_CAPACITY],
    len: usize,
}

/// `true` when a span of `span_bytes` leaves at most 1/8 of itself after the last
/// whole object of `size` bytes.
const fn tail_ok(span_bytes: usize, size: usize) -> bool {
    (span_bytes % size) * WASTE_DIV <= span_bytes
}

/// `true` when a class of `size` bytes directly after a class of `prev` bytes keeps the
/// round-up bound: at most 1/8 of the object above 128 bytes, a spacing of at most 16
/// bytes up to 128 bytes.
const fn round_up_ok(prev: usize, size: usize) -> bool {
    if size <= FINE_SIZE_MAX {
        size - prev <= TINY_SPACING
    } else {
        (size - prev - 1) * WASTE_DIV <= size
    }
}

/// The smallest span length in pages whose tail waste for `size` is at most 1/8.
/// Terminates: `size` pages hold exactly `PAGE_SIZE` objects.
const fn span_pages(size: usize) -> usize {
    let mut pages = 1;
    while !tail_ok(pages * PAGE_SIZE, size) {
        pages += 1;
    }
    pages
}

/// Steps 1 to 4 of the rule (see the module documentation).
const fn draft() -> Draft {
    let mut d = Draft {
        sizes: [0; DRAFT_CAPACITY],
        pages: [0; DRAFT_CAPACITY],
        len: 1,
    };
    // Steps 1 to 3: candidates, span lengths, merges.
    let mut step = MIN_SIZE;
    let mut size = MIN_SIZE;
    while size <= MAX_SMALL_SIZE {
        if size.is_power_of_two() {
            if size >= FINE_SIZE_MAX {
                step = size / WASTE_DIV;
            } else if size >= 32 {
                step = TINY_SPACING;
            }
        }
        let pages = span_pages(size);
        let span_bytes = pages * PAGE_SIZE;
        let last = d.len - 1;
        let merge = last > 0
            && d.pages[last] == pages
            && span_bytes / d.sizes[last] == span_bytes / size
            && !d.sizes[last].is_power_of_two()
            && round_up_ok(d.sizes[last - 1], size);
        if merge {
            d.sizes[last] = size;
        } else {
            assert!(d.len < DRAFT_CAPACITY, "size class draft overflow");
            d.sizes[d.len] = size;
            d.pages[d.len] = pages;
            d.len += 1;
        }
        size += step;
    }
    // Step 4: grow each class into its span's slack.
    let mut c = 1;
    while c < d.len {
        let span_bytes = d.pages[c] * PAGE_SIZE;
        let grown = (span_bytes / (span_bytes / d.sizes[c])) & !(LARGE_SIZE_DIV - 1);
        let next = if c + 1 < d.len {
            d.sizes[c + 1]
        } else {
            usize::MAX
        };
        if grown > d.sizes[c]
            && grown < next
            && span_pages(grown) == d.pages[c]
            && round_up_ok(d.sizes[c - 1], grown)
        {
            d.sizes[c] = grown;
        }
        c += 1;
    }
    check_draft(&d);
    d
}

/// Compile-time checks of the invariants the lookup and the callers rely on.
const fn check_draft(d: &Draft) {
    assert!(d.sizes[0] == 0 && d.pages[0] == 0, "index 0 is no class");
    assert!(
        d.len >= 2 && d.len <= u8::MAX as usize,
        "class index fits a u8"
    );
    assert!(
        d.sizes[d.len - 1] == MAX_SMALL_SIZE,
        "last class is MAX_SMALL_SIZE"
    );
    let mut c = 1;
    while c < d.len {
        let size = d.sizes[c];
        let span_bytes = d.pages[c] * PAGE_SIZE;
        assert!(size > d.sizes[c - 1], "class sizes increase");
        assert!(size % MIN_SIZE == 0, "class sizes are multiples of 8");
        assert!(
            size <= SMALL_SIZE_MAX || size % LARGE_SIZE_DIV == 0,
            "classes above 1024 are multiples of 128 (SIZE_TO_CLASS128 is exact)"
        );
        assert!(round_up_ok(d.sizes[c - 1], size), "round-up waste bound");
        assert!(tail_ok(span_bytes, size), "tail waste bound");
        assert!(d.pages[c] <= u8::MAX as usize, "pages fit a u8");
        assert!(span_bytes / size <= u16::MAX as usize, "objects fit a u16");
        // Premise of the division-magic proof (see `magic_for`).
        assert!(
            span_bytes * size < 1 << 32,
            "offset * rounding error < 2^32"
        );
        c += 1;
    }
}

/// The rule's output.
const DRAFT: Draft = draft();

/// `ceil(2^32 / size)` (Go's `divMagic`).
///
/// Exact for every `offset < span_bytes`: write `magic * size = 2^32 + e` with
/// `0 <= e < size` and `offset = q * size + r` with `r < size`. Then
/// `offset * magic / 2^32 = q + (r + offset * e / 2^32) / size`, whose floor is `q`
/// because `offset * e < span_bytes * size < 2^32` (checked in `check_draft`), so
/// `r + offset * e / 2^32 < r + 1 <= size`.
const fn magic_for(size: usize) -> u32 {
    (1u64 << 32).div_ceil(size as u64) as u32
}

/// Objects moved per refill or flush between a CPU cache and a central.
const fn batch_for(size: usize) -> usize {
    let batch = BATCH_BYTES / size;
    if batch < MIN_BATCH {
        MIN_BATCH
    } else if batch > MAX_BATCH {
        MAX_BATCH
    } else {
        batch
    }
}

/// One row of the class table.
#[derive(Clone, Copy)]
struct ClassInfo {
    size: u32,
    magic: u32,
    objects: u16,
    pages: u8,
    batch: u8,
}

const fn build_classes() -> [ClassInfo; NUM_CLASSES] {
    let none = ClassInfo {
        size: 0,
        magic: 0,
        objects: 0,
        pages: 0,
        batch: 0,
    };
    let mut table = [none; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let size = DRAFT.sizes[c];
        let pages = DRAFT.pages[c];
        table[c] = ClassInfo {
            size: size as u32,
            magic: magic_for(size),
            objects: (pages * PAGE_SIZE / size) as u16,
            pages: pages as u8,
            batch: batch_for(size) as u8,
        };
        c += 1;
    }
    table
}

/// The smallest class whose size is at least `size` (at most [`MAX_SMALL_SIZE`]).
const fn first_class_at_least(size: usize) -> u8 {
    let mut c = 1;
    while DRAFT.sizes[c] < size {
        c += 1;
    }
    c as u8
}

const fn build_size_to_class8() -> [u8; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1] {
    let mut table = [0; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1];
    let mut i = 0;
    while i < table.len() {
        table[i] = first_class_at_least(i * SMALL_SIZE_DIV);
        i += 1;
    }
    table
}

const fn build_size_to_class128() -> [u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1] {
    let mut table = [0; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1];
    let mut i = 0;
    while i < table.len() {
        table[i] = first_class_at_least(SMALL_SIZE_MAX + i * LARGE_SIZE_DIV);
        i += 1;
    }
    table
}

const fn build_align_up() -> [[u8; ALIGN_COLUMNS]; NUM_CLASSES] {
    let mut table = [[0; ALIGN_COLUMNS]; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let mut shift = 0;
        while shift < ALIGN_COLUMNS {
            let mut up = c;
            while DRAFT.sizes[up] % (1 << shift) != 0 {
                // MAX_SMALL_SIZE is a multiple of PAGE_SIZE, so this stops in bounds.
                up += 1;
            }
            table[c][shift] = up as u8;
            shift += 1;
        }
        c += 1;
    }
    table
}

/// The most objects per span and the most pages per span over all classes.
const fn span_maxima() -> (usize, usize) {
    let (mut objects, mut pages) = (0, 0);
    let mut c = 1;
    while c < NUM_CLASSES {
        if CLASSES[c].objects as usize > objects {
            objects = CLASSES[c].objects as usize;
        }
        if CLASSES[c].pages as usize > pages {
            pages = CLASSES[c].pages as usize;
        }
        c += 1;
    }
    (objects, pages)
}

const _: () = assert!(MAX_SMALL_SIZE % PAGE_SIZE == 0);
const _: () = assert!(MAX_OBJECTS_PER_SPAN <= u16::MAX as usize);
const _: () = assert!(MAX_SPAN_PAGES * PAGE_SIZE >= MAX_SMALL_SIZE);

/// The class table, indexed by class index (row 0 is "no class").
static CLASSES: [ClassInfo; NUM_CLASSES] = build_classes();

/// `SIZE_TO_CLASS8[(size + 7) / 8]`: the smallest class of at least `size`, for
/// `size <= 1024`.
static SIZE_TO_CLASS8: [SizeClass; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1] = {
    let indices = build_size_to_class8();
    let mut classes = [SizeClass(NonZeroU8::MIN); SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1];
    let mut i = 0;
    while i < classes.len() {
        classes[i] = match NonZeroU8::new(indices[i]) {
            Some(class) => SizeClass(class),
            None => panic!("every size up to SMALL_SIZE_MAX has a class"),
        };
        i += 1;
    }
    classes
};

/// The largest alignment [`class_of_uncommon`] answers from a table of its own: a cache
/// line, what a kernel asks for objects that other CPUs touch.
const LINE_ALIGN_MAX: usize = 64;
/// Rows of [`SIZE_TO_CLASS8_ALIGNED`]: one per alignment 16, 32 and 64.
const ALIGNED_ROWS: usize = (LINE_ALIGN_MAX / (2 * CLASS_GRANULE)).trailing_zeros() as usize + 1;
const _: () = assert!(ALIGNED_ROWS == 3 && 2 * CLASS_GRANULE == 16);

/// `SIZE_TO_CLASS8_ALIGNED[k][(size + 7) / 8]`: the smallest class of at least `size`
/// whose size is a multiple of `16 << k`, for `size <= 1024` (`SIZE_TO_CLASS8` through
/// `ALIGN_UP`, precomputed: 387 bytes).
static SIZE_TO_CLASS8_ALIGNED: [[SizeClass; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1]; ALIGNED_ROWS] = {
    let by_size = build_size_to_class8();
    let align_up = build_align_up();
    let mut rows = [[SizeClass(NonZeroU8::MIN); SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1]; ALIGNED_ROWS];
    let mut k = 0;
    while k < ALIGNED_ROWS {
        let shift = (2 * CLASS_GRANULE).trailing_zeros() as usize + k;
        let mut i = 0;
        while i < by_size.len() {
            rows[k][i] = match NonZeroU8::new(align_up[by_size[i] as usize][shift]) {
                Some(class) => SizeClass(class),
                None => panic!("every aligned size up to SMALL_SIZE_MAX has a class"),
            };
            i += 1;
        }
        k += 1;
    }
    rows
};

/// `SIZE_TO_CLASS128[(size - 1024 + 127) / 128]`: the smallest class of at least `size`,
/// for `1024 < size <= MAX_SMALL_SIZE`.
static SIZE_TO_CLASS128: [u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1] =
    build_size_to_class128();

/// `ALIGN_UP[class][k]`: the first class at or after `class` whose size is a multiple
/// of `1 << k`.
static ALIGN_UP: [[u8; ALIGN_COLUMNS]; NUM_CLASSES] = build_align_up();

// ---------------------------------------------------------------------------------------
// Public API.
// ---------------------------------------------------------------------------------------

/// A size class: one of the object sizes served from spans, with index
/// `1..NUM_CLASSES` (index 0, "no class", is never a `SizeClass`; `Option<SizeClass>`
/// is one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct SizeClass(NonZeroU8);

impl SizeClass {
    /// Every class, smallest first; `ALL[i].index() == i + 1`.
    pub const ALL: [SizeClass; NUM_CLASSES - 1] = {
        let mut all = [SizeClass(NonZeroU8::MIN); NUM_CLASSES - 1];
        let mut i = 0;
        while i < all.len() {
            all[i] = match SizeClass::from_index(i + 1) {
                Some(class) => class,
                None => panic!("every index in 1..NUM_CLASSES is a class"),
            };
            i += 1;
        }
        all
    };

    /// Iterates over every class, smallest first (the same order as [`ALL`](Self::ALL)).
    /// Note that the first item has index 1: zip it with `table[1..]`, not `table`,
    /// for a table indexed by [`index`](Self::index).
    #[inline]
    pub fn all() -> impl DoubleEndedIterator<Item = SizeClass> + ExactSizeIterator + Clone {
        Self::ALL.into_iter()
    }

    /// The class with this index, or `None` for 0 ("no class") and `NUM_CLASSES` or
    /// more.
    #[inline]
    pub const fn from_index(index: usize) -> Option<SizeClass> {
        if index >= NUM_CLASSES {
            return None;
        }
        match NonZeroU8::new(index as u8) {
            Some(index) => Some(SizeClass(index)),
            None => None,
        }
    }

    /// The class index, in `1..NUM_CLASSES`.
    #[inline]
    pub const fn index(self) -> usize {
        let index = self.0.get() as usize;
        // SAFETY: a `SizeClass` is only made by `from_index`, which refuses indices
        // of `NUM_CLASSES` and more. Stating it lets tables indexed by class skip
        // their bounds checks.
        unsafe { core::hint::assert_unchecked(index < NUM_CLASSES) };
        index
    }

    #[inline]
    const fn info(self) -> &'static ClassInfo {
        &CLASSES[self.index()]
    }

    /// Object size in bytes: a multiple of 8, at most [`MAX_SMALL_SIZE`].
    #[inline]
    pub const fn size(self) -> usize {
        self.info().size as usize
    }

    /// The layout of one object: the class's size, aligned to [`CLASS_GRANULE`] (what
    /// every layout of the class is rounded up to).
    pub(crate) fn layout(self) -> core::alloc::Layout {
        // SAFETY: the alignment is a power of two, and the size (a multiple of it, at
        // most MAX_SMALL_SIZE) does not overflow isize when rounded up to it.
        unsafe { core::alloc::Layout::from_size_align_unchecked(self.size(), CLASS_GRANULE) }
    }

    /// The smallest request size whose class (for an alignment of at most 8) is this
    /// one: one more than the previous class's size, or 0 for the first class.
    pub(crate) const fn min_request(self) -> usize {
        match self.index() {
            1 => 0,
            i => CLASSES[i - 1].size as usize + 1,
        }
    }

    /// Span length in pages (1 to 8).
    #[inline]
    pub const fn pages(self) -> usize {
        self.info().pages as usize
    }

    /// Span length in bytes: `pages() * PAGE_SIZE`.
    #[inline]
    pub const fn span_bytes(self) -> usize {
        self.pages() * PAGE_SIZE
    }

    /// Objects per span: `span_bytes() / size()`, 1 to 512.
    #[inline]
    pub const fn objects(self) -> usize {
        self.info().objects as usize
    }

    /// Objects moved per refill of a CPU cache from the central, and per flush back:
    /// `clamp(64 KiB / size, 2, 32)`.
    #[inline]
    pub const fn batch(self) -> usize {
        self.info().batch as usize
    }

    /// Division magic `ceil(2^32 / size)`: `(offset * magic) >> 32 == offset / size`
    /// for every `offset < span_bytes()`.
    #[inline]
    pub const fn magic(self) -> u32 {
        self.info().magic
    }

    /// Index of the object that contains byte `offset_in_span` of a span of this class:
    /// one multiply and one shift, no division. Offsets in the tail (past the last
    /// object) give `objects()`.
    ///
    /// `offset_in_span` must be below [`span_bytes`](Self::span_bytes) (checked in debug
    /// builds); beyond it the result is unspecified.
    #[inline]
    pub const fn object_index(self, offset_in_span: usize) -> usize {
        debug_assert!(offset_in_span < self.span_bytes());
        ((offset_in_span as u64 * self.magic() as u64) >> 32) as usize
    }
}

/// The class that serves a request of `size` bytes aligned to `align`: the smallest
/// class whose size is at least `max(size, align, 1)` and a multiple of `align`. Objects
/// of that class are aligned to `align` because spans start on a page boundary.
///
/// `None` when `size > MAX_SMALL_SIZE` or `align > PAGE_SIZE` (or `align == 0`): the
/// caller takes the large-object path. `align` must be a power of two, as
/// `Layout::align()` is (checked in debug builds).
///
/// Cost, for the common request (`size <= 1024`, `align <= 8`): two compares and one
/// table load; out of line, one table load for `size <= 1024` aligned to 16, 32 or
/// 64 (`SIZE_TO_CLASS8_ALIGNED`), two or three otherwise. No loop. Alloc and dealloc
/// both call it, so it must stay a pure function of its arguments.
#[inline(always)]
pub fn class_of(size: usize, align: usize) -> Option<SizeClass> {
    debug_assert!(align.is_power_of_two(), "align is a power of two");
    if let Some(class) = class_of_common(size, align) {
        return Some(class);
    }
    class_of_rest(size, align)
}

/// [`class_of_uncommon`] out of line, for [`class_of`].
#[cold]
#[inline(never)]
fn class_of_rest(size: usize, align: usize) -> Option<SizeClass> {
    class_of_uncommon(size, align)
}

/// [`class_of`] for the common request (`size <= 1024`, `align <= 8`): two compares
/// and one table load, inlined; `None` for every other request (which `class_of`
/// answers out of line).
#[inline(always)]
pub(crate) fn class_of_common(size: usize, align: usize) -> Option<SizeClass> {
    // Every class is a multiple of CLASS_GRANULE (checked below), so such an alignment
    // never moves the class up.
    is_common(size, align).then(|| SIZE_TO_CLASS8[size.div_ceil(SMALL_SIZE_DIV)])
}

/// [`class_of`] for a request that is not common, for callers already out of line:
/// a small request aligned to 16, 32 or 64 from [`SIZE_TO_CLASS8_ALIGNED`] inline (no
/// bounds check: the row is a constant per arm, the column at most 128), the rest
/// through `class_of_aligned`.
#[inline(always)]
pub(crate) fn class_of_uncommon(size: usize, align: usize) -> Option<SizeClass> {
    if size <= SMALL_SIZE_MAX {
        let row = match align {
            16 => Some(&SIZE_TO_CLASS8_ALIGNED[0]),
            32 => Some(&SIZE_TO_CLASS8_ALIGNED[1]),
            LINE_ALIGN_MAX => Some(&SIZE_TO_CLASS8_ALIGNED[2]),
            _ => None,
        };
        if let Some(row) = row {
            return Some(row[size.div_ceil(SMALL_SIZE_DIV)]);
        }
    }
    class_of_aligned(size, align)
}

/// `true` for the requests [`class_of_common`] answers.
#[inline(always)]
pub(crate) fn is_common(size: usize, align: usize) -> bool {
    size <= SMALL_SIZE_MAX && align <= CLASS_GRANULE
}

/// The general lookup: the class by size, then `ALIGN_UP` (inlined into its callers,
/// which are out of line).
#[inline(always)]
fn class_of_aligned(size: usize, align: usize) -> Option<SizeClass> {
    let by_size = if size <= SMALL_SIZE_MAX {
        SIZE_TO_CLASS8[size.div_ceil(SMALL_SIZE_DIV)].0.get()
    } else {
        // Out of bounds exactly when size > MAX_SMALL_SIZE.
        *SIZE_TO_CLASS128.get((size - SMALL_SIZE_MAX).div_ceil(LARGE_SIZE_DIV))?
    };
    // Out of bounds exactly when align > PAGE_SIZE (or align == 0).
    let class = *ALIGN_UP[by_size as usize].get(align.trailing_zeros() as usize)?;
    NonZeroU8::new(class).map(SizeClass)
}

const _: () = {
    let mut c = 1;
    while c < NUM_CLASSES {
        assert!(
            CLASSES[c].size as usize % CLASS_GRANULE == 0,
            "classes are multiples of CLASS_GRANULE"
        );
        c += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Stride for exhaustive loops: 1 natively, sparse under Miri.
    const STRIDE: usize = if cfg!(miri) { 997 } else { 1 };

    fn sizes() -> impl Iterator<Item = usize> {
        SizeClass::ALL.iter().map(|c| c.size())
    }

    /// The naive model of `class_of`: a linear scan over the class sizes.
    fn model(size: usize, align: usize) -> Option<SizeClass> {
        if align > PAGE_SIZE {
            return None;
        }
        let need = size.max(align).max(1);
        SizeClass::ALL
            .iter()
            .copied()
            .find(|c| c.size() >= need && c.size() % align == 0)
    }

    /// A straightforward (allocating) re-implementation of the rule, independent of the
    /// const generator: `(size, pages)` per class, without class 0.
    fn reference_rule() -> Vec<(usize, usize)> {
        let pages_for = |size: usize| {
            (1..)
                .find(|&p| (p * PAGE_SIZE % size) * 8 <= p * PAGE_SIZE)
                .unwrap()
        };
        let bound_ok = |prev: usize, size: usize| {
            if size <= 128 {
                size - prev <= 16
            } else {
                (size - prev - 1) * 8 <= size
            }
        };
        let mut classes: Vec<(usize, usize)> = vec![(0, 0)];
        let (mut size, mut step) = (8, 8);
        while size <= MAX_SMALL_SIZE {
            if size.is_power_of_two() && size >= 128 {
                step = size / 8;
            } else if size.is_power_of_two() && size >= 32 {
                step = 16;
            }
            let pages = pages_for(size);
            let span = pages * PAGE_SIZE;
            let n = classes.len();
            let (last, last_pages) = classes[n - 1];
            if n > 1
                && last_pages == pages
                && span / last == span / size
                && !last.is_power_of_two()
                && bound_ok(classes[n - 2].0, size)
            {
                classes[n - 1].0 = size;
            } else {
                classes.push((size, pages));
            }
            size += step;
        }
        for i in 1..classes.len() {
            let (size, pages) = classes[i];
            let span = pages * PAGE_SIZE;
            let grown = (span / (span / size)) / 128 * 128;
            let next = classes.get(i + 1).map_or(usize::MAX, |c| c.0);
            if grown > size
                && grown < next
                && pages_for(grown) == pages
                && bound_ok(classes[i - 1].0, grown)
            {
                classes[i].0 = grown;
            }
        }
        classes.remove(0);
        classes
    }

    #[test]
    fn table_matches_rule() {
        let table: Vec<_> = SizeClass::ALL
            .iter()
            .map(|c| (c.size(), c.pages()))
            .collect();
        assert_eq!(table, reference_rule());
        for c in SizeClass::ALL {
            assert_eq!(c.objects(), c.span_bytes() / c.size(), "{c:?}");
            assert_eq!(c.magic() as u64, (1u64 << 32).div_ceil(c.size() as u64));
        }
    }

    #[test]
    fn table_snapshot() {
        // Update the table in the module documentation together with this one.
        #[rustfmt::skip]
        let expected: [(usize, usize); 67] = [
            (8, 1), (16, 1), (24, 1), (32, 1), (48, 1), (64, 1), (80, 1), (96, 1),
            (112, 1), (128, 1), (144, 1), (160, 1), (176, 1), (192, 1), (208, 1),
            (224, 1), (240, 1), (256, 1), (288, 1), (320, 1), (352, 1), (384, 1),
            (416, 1), (448, 1), (512, 1), (576, 1), (640, 1), (704, 2), (768, 1),
            (832, 2), (896, 1), (1024, 1), (1152, 2), (1280, 1), (1408, 3), (1536, 2),
            (1664, 3), (1792, 1), (2048, 1), (2304, 3), (2560, 2), (2816, 3), (3072, 3),
            (3328, 5), (3584, 1), (4096, 1), (4608, 5), (5120, 4), (5632, 3), (6144, 3),
            (6784, 5), (7168, 2), (8192, 2), (9216, 5), (10240, 5), (11264, 3),
            (12288, 3), (13312, 7), (14336, 4), (16384, 4), (18432, 5), (20480, 5),
            (22528, 6), (24576, 6), (26624, 7), (28672, 7), (32768, 8),
        ];
        let table: Vec<_> = SizeClass::ALL
            .iter()
            .map(|c| (c.size(), c.pages()))
            .collect();
        assert_eq!(table, expected);
        assert_eq!(NUM_CLASSES, 68);
    }

    #[test]
    fn indices_round_trip() {
        assert_eq!(SizeClass::ALL.len(), NUM_CLASSES - 1);
        assert_eq!(SizeClass::from_index(0), None);
        assert_eq!(SizeClass::from_index(NUM_CLASSES), None);
        assert_eq!(SizeClass::from_index(usize::MAX), None);
        for (i, c) in SizeClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i + 1);
            assert_eq!(SizeClass::from_index(i + 1), Some(*c));
        }
        assert_eq!(core::mem::size_of::<Option<SizeClass>>(), 1);
    }

    /// Rule 1: multiples of 8, powers of two present and naturally aligned.
    #[test]
    fn sizes_and_alignment() {
        let all: Vec<_> = sizes().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "increasing");
        assert_eq!(all.first(), Some(&8));
        assert_eq!(all.last(), Some(&MAX_SMALL_SIZE));
        for &size in &all {
            assert_eq!(size % 8, 0, "{size}");
            if size > SMALL_SIZE_MAX {
                assert_eq!(size % LARGE_SIZE_DIV, 0, "{size}");
            }
        }
        let mut p = 8;
        while p <= MAX_SMALL_SIZE {
            assert!(all.contains(&p), "power of two {p} is a class");
            assert!(PAGE_SIZE % p == 0 || p % PAGE_SIZE == 0, "{p}");
            p *= 2;
        }
        // Every object of every class, at a page-aligned span base, is aligned to the
        // largest power of two dividing its size, up to a page; naturally for the
        // power-of-two classes up to a page.
        let span_base = 7 * PAGE_SIZE;
        for c in SizeClass::ALL {
            let guaranteed = (1 << c.size().trailing_zeros()).min(PAGE_SIZE);
            if c.size().is_power_of_two() && c.size() <= PAGE_SIZE {
                assert_eq!(guaranteed, c.size());
            }
            for i in 0..c.objects() {
                assert_eq!((span_base + i * c.size()) % guaranteed, 0, "{c:?}");
            }
        }
    }

    /// Rule 2: round-up waste. Above 128 bytes a request one byte above the previous
    /// class wastes at most 12.5%; up to 128 bytes classes are 8 apart up to 32 and at
    /// most 16 apart above.
    #[test]
    fn round_up_waste_is_bounded() {
        let mut prev = 0;
        for size in sizes() {
            if size <= 32 {
                assert_eq!(size - prev, 8, "{size}");
            } else if size <= 128 {
                assert!(size - prev <= 16, "{size}");
            } else {
                assert!((size - prev - 1) * 8 <= size, "{size} after {prev}");
            }
            prev = size;
        }
    }

    /// Rule 3: tail waste at most 12.5%, with the smallest page count that achieves it.
    #[test]
    fn tail_waste_is_bounded_and_span_is_shortest() {
        for c in SizeClass::ALL {
            let tail = c.span_bytes() % c.size();
            assert!(tail * 8 <= c.span_bytes(), "{c:?}");
            for pages in 1..c.pages() {
                let span = pages * PAGE_SIZE;
                assert!((span % c.size()) * 8 > span, "{c:?} fits in {pages} pages");
            }
            assert!((1..=8).contains(&c.pages()), "{c:?}");
        }
        assert_eq!(MAX_SPAN_PAGES, 8);
    }

    /// Rule 4: objects per span.
    #[test]
    fn objects_per_span_fit() {
        for c in SizeClass::ALL {
            assert!(c.objects() >= 1, "{c:?}");
            assert!(c.objects() <= u16::MAX as usize, "{c:?}");
            assert!(c.objects() <= MAX_OBJECTS_PER_SPAN, "{c:?}");
            assert_eq!(c.objects(), c.span_bytes() / c.size());
        }
        assert_eq!(MAX_OBJECTS_PER_SPAN, 512);
    }

    /// Rule 5: the largest class.
    #[test]
    fn largest_class_is_32k_over_8_pages() {
        let last = SizeClass::ALL[NUM_CLASSES - 2];
        assert_eq!(last.size(), MAX_SMALL_SIZE);
        assert_eq!(last.pages(), 8);
        assert_eq!(last.objects(), 1);
        assert_eq!(class_of(MAX_SMALL_SIZE, 1), Some(last));
        assert_eq!(class_of(MAX_SMALL_SIZE + 1, 1), None);
    }

    #[test]
    fn batch_rule() {
        for c in SizeClass::ALL {
            assert_eq!(c.batch(), (64 * 1024 / c.size()).clamp(2, 32), "{c:?}");
        }
        assert_eq!(class_of(8, 1).unwrap().batch(), 32);
        assert_eq!(class_of(2048, 1).unwrap().batch(), 32);
        assert_eq!(class_of(4096, 1).unwrap().batch(), 16);
        assert_eq!(class_of(MAX_SMALL_SIZE, 1).unwrap().batch(), 2);
    }

    #[test]
    fn magic_division_is_exact() {
        for c in SizeClass::ALL {
            for offset in (0..c.span_bytes()).step_by(STRIDE) {
                assert_eq!(c.object_index(offset), offset / c.size(), "{c:?} {offset}");
            }
            let last = c.span_bytes() - 1;
            assert_eq!(c.object_index(last), last / c.size(), "{c:?}");
        }
    }

    #[test]
    fn class_of_matches_model_exhaustively() {
        for shift in 0..=13 {
            let align = 1 << shift;
            for size in (0..=MAX_SMALL_SIZE + 1).step_by(STRIDE) {
                assert_eq!(class_of(size, align), model(size, align), "{size} {align}");
            }
        }
    }

    #[test]
    fn class_of_edges() {
        assert_eq!(class_of(0, 1).map(SizeClass::size), Some(8));
        assert_eq!(class_of(1, 1).map(SizeClass::size), Some(8));
        assert_eq!(class_of(0, 64).map(SizeClass::size), Some(64));
        assert_eq!(class_of(1, PAGE_SIZE).map(SizeClass::size), Some(PAGE_SIZE));
        assert_eq!(class_of(4097, PAGE_SIZE).map(SizeClass::size), Some(8192));
        assert_eq!(class_of(576, 64).map(SizeClass::size), Some(576));
        assert_eq!(class_of(577, 64).map(SizeClass::size), Some(640));
        assert_eq!(class_of(8, 2 * PAGE_SIZE), None);
        assert_eq!(class_of(usize::MAX, 1), None);
        assert_eq!(class_of(usize::MAX - 1000, 8), None);
        assert_eq!(class_of(8, 1 << 63), None);
    }

    #[test]
    fn print_table() {
        println!("class  size pages objs batch  tail%  round-up%  max-waste%");
        let mut prev = 0;
        for c in SizeClass::ALL {
            let span = c.span_bytes();
            let tail = span % c.size();
            // Go's "max waste": the worst request for every object plus the tail.
            let worst = (c.size() - prev - 1) * c.objects() + tail;
            println!(
                "{:5} {:5} {:5} {:4} {:5} {:6.2} {:10.2} {:11.2}",
                c.index(),
                c.size(),
                c.pages(),
                c.objects(),
                c.batch(),
                100.0 * tail as f64 / span as f64,
                100.0 * (c.size() - prev - 1) as f64 / c.size() as f64,
                100.0 * worst as f64 / span as f64,
            );
            prev = c.size();
        }
    }

    fn size_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![
            0..=MAX_SMALL_SIZE + 64,
            (0..16usize).prop_map(|k| (1 << (k + 3)) - 1),
            any::<usize>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 16 } else { 2048 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn class_of_is_smallest_aligned_fit(size in size_strategy(), shift in 0u32..64) {
            let align = 1usize << shift;
            let class = class_of(size, align);
            prop_assert_eq!(class, model(size, align));
            if let Some(c) = class {
                prop_assert!(c.size() >= size.max(align).max(1));
                prop_assert_eq!(c.size() % align, 0);
                // Stable under its own size: dealloc with the same layout agrees.
                prop_assert_eq!(class_of(c.size(), align), Some(c));
                // Monotone in the size.
                if size > 0 {
                    prop_assert!(class_of(size - 1, align).unwrap() <= c);
                }
            } else {
                prop_assert!(size > MAX_SMALL_SIZE || align > PAGE_SIZE);
            }
        }
    }
}
