//! Memory intake: the ranges a kernel hands to the heap, the heap's configuration, and
//! the errors of `add_memory`.
//!
//! # Invariants
//!
//! - a `Config` is fixed when the heap is built (`is_valid` holds for any heap that
//!   takes memory); an `AddMemoryError` means nothing of the range was used.

use crate::size_class::PAGE_SIZE;
use core::fmt;

/// A range of virtual addresses `[start, end)` the heap may use as it likes. The
/// heap trims it to whole pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryRange {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
}

impl MemoryRange {
    /// The range `[start, end)`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The whole pages inside the range: `(first page address, page count)`, or `None`
    /// when it holds no whole page (also for `end <= start`).
    pub const fn pages(&self) -> Option<(usize, usize)> {
        let Some(start) = self.start.checked_next_multiple_of(PAGE_SIZE) else {
            return None;
        };
        let end = self.end - self.end % PAGE_SIZE;
        if end <= start {
            return None;
        }
        Some((start, (end - start) / PAGE_SIZE))
    }

    /// Length in bytes (0 when `end <= start`).
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// `true` when the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the heap may assume about the contents of memory it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialContents {
    /// Unknown: `alloc_zeroed` clears memory before its first use (the safe default).
    Unknown,
    /// All zero (for example RAM fresh from a hypervisor, or zeroed by the kernel):
    /// `alloc_zeroed` skips clearing memory that was never handed out.
    Zeroed,
}

/// Heap configuration, fixed when the heap is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Size of an arena window in bytes: a power of two from 1 MiB to 1 GiB. A large
    /// object or page run never crosses an arena, so this is also the largest
    /// allocation. Smaller arenas cost less metadata on small machines (about 0.1% of
    /// the window plus a few pages).
    pub arena_size: usize,
    /// What the memory given to `add_memory` holds.
    pub contents: InitialContents,
    /// Pack requests of 1 to 7 bytes (aligned to at most 4) into 16-byte tiny blocks
    /// on CPUs with a cache (up to 14 objects per block instead of one 8-byte object
    /// each). Off: they take 8-byte class objects.
    pub tiny_blocks: bool,
}

impl Config {
    /// 64 MiB arenas, unknown initial contents, tiny blocks on.
    pub const DEFAULT: Config = Config {
        arena_size: 64 << 20,
        contents: InitialContents::Unknown,
        tiny_blocks: true,
    };

    /// Smallest arena window: 1 MiB.
    pub const MIN_ARENA_SIZE: usize = 1 << 20;
    /// Largest arena window: 1 GiB.
    pub const MAX_ARENA_SIZE: usize = 1 << 30;

    /// `true` when `arena_size` is a power of two within the limits.
    pub const fn is_valid(&self) -> bool {
        self.arena_size.is_power_of_two()
            && self.arena_size >= Self::MIN_ARENA_SIZE
            && self.arena_size <= Self::MAX_ARENA_SIZE
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why `add_memory` refused a range. Nothing of a refused range is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddMemoryError {
    /// The range holds no whole 4 KiB page once trimmed (zero-length, reversed, or
    /// smaller than a page).
    Empty(MemoryRange),
    /// The range covers the null page (addresses below 4096), which must stay
    /// unmapped so that null pointers fault.
    NullPage(MemoryRange),
    /// Part of the range is already managed by the heap.
    Overlap(MemoryRange),
    /// The range is the first in its arena window and cannot hold that arena's
    /// metadata plus one page: `needed` bytes.
    TooSmall {
        /// The range.
        range: MemoryRange,
        /// Bytes of metadata plus one usable page.
        needed: usize,
    },
    /// The range would bring the heap over [`MAX_ARENAS`](crate::MAX_ARENAS) arenas;
    /// use a larger arena size for sparse memory. A range over more arena windows
    /// than `MAX_ARENAS` gets this error before any overlap check.
    TooManyArenas(MemoryRange),
    /// The configuration is invalid (arena size not a power of two in range).
    BadConfig,
}

impl fmt::Display for AddMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |f: &mut fmt::Formatter<'_>, what: &str, range: &MemoryRange| {
            write!(
                f,
                "memory range {:#x}..{:#x} {what}",
                range.start, range.end
            )
        };
        match self {
            AddMemoryError::Empty(range) => r(f, "holds no whole 4 KiB page", range),
            AddMemoryError::NullPage(range) => r(f, "covers the null page", range),
            AddMemoryError::Overlap(range) => r(f, "overlaps memory the heap manages", range),
            AddMemoryError::TooSmall { range, needed } => {
                r(f, "is too small for its arena's metadata", range)?;
                write!(f, " (needs {needed} bytes)")
            }
            AddMemoryError::TooManyArenas(range) => {
                r(f, "would need more arenas than the heap can index", range)
            }
            AddMemoryError::BadConfig => {
                write!(f, "arena size must be a power of two from 1 MiB to 1 GiB")
            }
        }
    }
}
