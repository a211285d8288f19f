//! Pieces shared by the benchmarks: the PRNG, backing regions, and the allocators
//! under test built over a region (`Subject`).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Bytes of every allocator's region.
pub(crate) const REGION_SIZE: usize = 64 << 20;
const REGION_ALIGN: usize = 2 << 20;
const PAGE: usize = 4096;

/// SplitMix64: one 64-bit draw per step.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    #[inline(always)]
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

// ---------------------------------------------------------------------------------
// Backing memory

/// A fresh 64 MiB region from the host allocator, every page already written.
pub(crate) struct Region {
    /// First byte.
    pub(crate) base: *mut u8,
    layout: Layout,
}

impl Region {
    pub(crate) fn new() -> Self {
        let layout = Layout::from_size_align(REGION_SIZE, REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { std::alloc::alloc(layout) };
        assert!(!base.is_null(), "cannot allocate the backing region");
        for off in (0..REGION_SIZE).step_by(PAGE) {
            // SAFETY: inside the region.
            unsafe { ptr::write_volatile(base.add(off), 0) };
        }
        Region { base, layout }
    }

    pub(crate) fn start(&self) -> usize {
        self.base as usize
    }

    pub(crate) fn end(&self) -> usize {
        self.base as usize + REGION_SIZE
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base, self.layout) };
    }
}

// ---------------------------------------------------------------------------------
// The allocators

/// An allocator under test, built over a region it owns for the duration of one run.
pub(crate) trait Subject: GlobalAlloc + Sized {
    /// Builds the allocator over all of `region`.
    ///
    /// # Safety
    ///
    /// `region` outlives the allocator and nothing else uses it.
    unsafe fn over(region: &Region) -> Box<Self>;
}

pub(crate) type Talc = talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual>;

impl Subject for Talc {
    unsafe fn over(region: &Region) -> Box<Self> {
        let t = Box::new(Talc::new(talc::source::Manual));
        // SAFETY: the region is ours, writable, and outlives the allocator.
        unsafe { t.lock().claim(region.base, REGION_SIZE) }.expect("talc claim");
        t
    }
}

impl Subject for linked_list_allocator::LockedHeap {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(linked_list_allocator::LockedHeap::empty());
        // SAFETY: as above.
        unsafe { h.lock().init(region.base, REGION_SIZE) };
        h
    }
}

impl Subject for buddy_system_allocator::LockedHeap<32> {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(buddy_system_allocator::LockedHeap::<32>::new());
        // SAFETY: as above.
        unsafe { h.lock().init(region.start(), REGION_SIZE) };
        h
    }
}

impl<P: spanheap::platform::Platform> Subject for spanheap::SpanHeap<P> {
    unsafe fn over(region: &Region) -> Box<Self> {
        let h = Box::new(spanheap::SpanHeap::<P>::new());
        let range = spanheap::MemoryRange::new(region.start(), region.end());
        // SAFETY: as above.
        unsafe { h.add_memory(range) }.expect("spanheap add_memory");
        h
    }
}
