//! Tiny blocks (Go's tiny allocator, adapted to explicit frees): requests of 1 to 7
//! bytes aligned to at most 4 are packed into 16-byte blocks, each block an object of
//! the 16-byte class, bumped through by the CPU that holds it as its *current* block.
//!
//! Go never frees a tiny object on its own (the garbage collector frees the whole
//! block); here every sub-object can be freed alone, on any CPU, so each block starts
//! with a 16-bit *live mask* (an atomic, the only metadata):
//!
//! ```text
//! byte  0   1 | 2 .................................. 15
//!       live mask | sub-objects (offsets 2..16)
//! mask bit 0: the block is some CPU's current block
//! mask bit i (2 <= i < 16): a live sub-object starts at offset i
//! ```
//!
//! Allocation sets the sub-object's bit (`fetch_or`), a free clears it (`fetch_and`),
//! and whoever clears the last bit (a free of the last sub-object of a block that is
//! no longer current, or the CPU retiring its current block when nothing in it is
//! live) frees the block to the 16-byte class. A free whose bit is already clear is a
//! double free (or not the start of a sub-object) and is refused without touching the
//! mask. These are atomic read-modify-writes: sub-objects of one block may be freed on
//! several CPUs at once. Tiny requests are rare in kernels, so the common paths keep
//! their no-RMW rule and tiny ones pay one `lock or` / `lock and`.
//!
//! Why 1 to 7 bytes aligned to at most 4, and not every request under 16 bytes as in
//! Go: the mask takes 2 of the 16 bytes, so an 8-byte-aligned request gets offset 8
//! only and a request of 8 bytes or more cannot share its block; those would use 16
//! bytes where the 8- and 16-byte classes use 8 or 16. What packs (per block): 14
//! one-byte, 7 two-byte, 4 three-byte, 3 four-byte objects; 5 to 7 bytes: 2 (as the
//! 8-byte class).
//!
//! Whether a freed pointer is a tiny sub-object is decided by its span, not by its
//! layout alone: a tiny-sized request made where there is no CPU cache (or with
//! [`Config::tiny_blocks`](crate::Config) off) gets an 8-byte class object instead,
//! and its free finds an 8-byte class span.
//!
//! May call: nothing (pure helpers over a block's mask). Called by: `heap`.
//!
//! # Invariants
//!
//! - a block with a non-zero mask is an allocated object of [`TINY_BLOCK_CLASS`];
//! - bit 0 is set exactly while the block is in some CPU cache's `tiny` slot;
//! - a set bit `i >= 2` stands for one live sub-object at offset `i`, handed out and
//!   not yet freed; sub-objects of a block never overlap.

use crate::size_class::SizeClass;
use core::sync::atomic::{AtomicU16, Ordering};

/// Bytes of a tiny block.
pub(crate) const BLOCK: usize = 16;

/// The first offset a sub-object may use (the mask takes bytes 0 and 1).
pub(crate) const FIRST_OFFSET: usize = 2;

/// Mask bit: the block is a CPU's current block.
const CURRENT: u16 = 1;

/// The class whose objects are the blocks.
pub(crate) const TINY_BLOCK_CLASS: SizeClass = match SizeClass::from_index(2) {
    Some(class) if class.size() == BLOCK => class,
    _ => panic!("class 2 is the 16-byte class"),
};

/// The class a tiny-sized request maps to (`class_of`): the 8-byte class.
pub(crate) const TINY_SOURCE_CLASS: SizeClass = match SizeClass::from_index(1) {
    Some(class) if class.size() == 8 => class,
    _ => panic!("class 1 is the 8-byte class"),
};

/// `true` for a request that tiny blocks serve: 1 to 7 bytes, aligned to at most 4.
#[inline(always)]
pub(crate) fn is_tiny(size: usize, align: usize) -> bool {
    size.wrapping_sub(1) < 7 && align <= 4
}

/// The live mask of the block at `block`.
///
/// # Safety
///
/// `block` is a 16-byte-aligned object of [`TINY_BLOCK_CLASS`] used as a tiny block
/// (its first two bytes are never handed out), live for `'a`.
unsafe fn mask<'a>(block: usize) -> &'a AtomicU16 {
    // SAFETY: aligned (16-byte block) and inside the block (caller); every access to
    // these two bytes is atomic.
    unsafe { &*(block as *const AtomicU16) }
}

/// Where a sub-object of `size` bytes aligned to `align` goes in a block whose bump
/// offset is `offset` (`FIRST_OFFSET` for a new block); `None` when it does not fit.
#[inline(always)]
pub(crate) fn place(offset: usize, size: usize, align: usize) -> Option<usize> {
    let start = offset.next_multiple_of(align);
    (start + size <= BLOCK).then_some(start)
}

/// Starts a block: it becomes current, with one live sub-object at `start`.
///
/// # Safety
///
/// `block` is an object of [`TINY_BLOCK_CLASS`] the caller just allocated.
pub(crate) unsafe fn start(block: usize, start: usize) {
    // SAFETY: as the caller promises; nobody else knows the block yet.
    unsafe { mask(block) }.store(CURRENT | 1 << start, Ordering::Relaxed);
}

/// Records a live sub-object at `start` of the current block `block`.
///
/// # Safety
///
/// `block` is the caller's CPU's current block and `start` a free offset from
/// [`place`].
#[inline(always)]
pub(crate) unsafe fn add(block: usize, start: usize) {
    // SAFETY: a current block is live (bit 0 keeps it so).
    unsafe { mask(block) }.fetch_or(1 << start, Ordering::Relaxed);
}

/// Gives up the caller's hold on its current block; `true` when the block is now
/// empty and the caller must free it to its class.
///
/// # Safety
///
/// `block` is the caller's current block, and the caller drops it as such.
pub(crate) unsafe fn retire(block: usize) -> bool {
    // SAFETY: live until its mask is zero, which only this call or a free makes.
    unsafe { mask(block) }.fetch_and(!CURRENT, Ordering::AcqRel) == CURRENT
}

/// What freeing a sub-object found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// Freed; the block still holds live sub-objects or is some CPU's current block.
    Kept,
    /// Freed, and the block is empty and not current: free it to its class.
    Empty,
    /// No live sub-object starts there (a double free, or not a sub-object): nothing
    /// changed.
    NotLive,
}

/// Frees the sub-object at `addr` of the block `addr & !15`.
///
/// # Safety
///
/// The block at `addr & !15` is a live object of [`TINY_BLOCK_CLASS`] (its bit is
/// set in its span), and `addr & 15 >= FIRST_OFFSET`.
pub(crate) unsafe fn free(addr: usize) -> Freed {
    let offset = addr % BLOCK;
    debug_assert!(offset >= FIRST_OFFSET);
    let bit = 1 << offset;
    // SAFETY: the caller checked the block is live.
    let before = unsafe { mask(addr - offset) }.fetch_and(!bit, Ordering::AcqRel);
    match before {
        b if b & bit == 0 => Freed::NotLive,
        b if b == bit => Freed::Empty,
        _ => Freed::Kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pack_as_documented() {
        let per_block = |size: usize, align: usize| {
            let (mut offset, mut n) = (FIRST_OFFSET, 0);
            while let Some(start) = place(offset, size, align) {
                offset = start + size;
                n += 1;
            }
            n
        };
        assert_eq!(per_block(1, 1), 14);
        assert_eq!(per_block(2, 2), 7);
        assert_eq!(per_block(3, 1), 4);
        assert_eq!(per_block(4, 4), 3);
        assert_eq!(per_block(7, 1), 2);
        assert!(is_tiny(1, 1) && is_tiny(7, 4) && is_tiny(4, 4));
        assert!(!is_tiny(0, 1) && !is_tiny(8, 1) && !is_tiny(4, 8) && !is_tiny(15, 1));
    }

    #[test]
    fn the_last_of_a_retired_block_frees_it_and_double_frees_are_seen() {
        #[repr(align(16))]
        struct Block(#[allow(dead_code)] [u8; 16]);
        let mut block = Block([0; 16]);
        let at = &mut block as *mut Block as usize;
        // SAFETY: (whole block) `block` stands in for a live 16-byte class object.
        unsafe {
            start(at, 2);
            add(at, 3);
            assert_eq!(free(at + 2), Freed::Kept);
            assert_eq!(free(at + 2), Freed::NotLive, "double free");
            assert_eq!(free(at + 4), Freed::NotLive, "never handed out");
            assert_eq!(free(at + 3), Freed::Kept, "still current");
            assert!(retire(at), "retired empty");
            start(at, 2);
            assert!(!retire(at), "a live sub-object keeps it");
            assert_eq!(free(at + 2), Freed::Empty);
        }
    }
}
