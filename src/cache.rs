//! Per-CPU caches (Go's mcache, held by the CPU as Go's is held by a P): per size
//! class a bounded stack of free objects that the CPU allocates from and frees to
//! without a lock or an atomic read-modify-write.
//!
//! A stack of class `c` holds at most `2 * c.batch()` objects. An empty stack is
//! refilled with `batch` objects from the class's central under its lock; a full one
//! flushes its `batch` oldest objects back (the newest stay: they are the warmest in
//! the CPU's data cache). An object freed on another CPU than the one that allocated
//! it simply joins the freeing CPU's stack.
//!
//! The stacks are arrays of addresses in the cache's own pages, never links inside
//! the free objects, so a use after free cannot corrupt the cache. A slot holds the
//! central's [`Object`] word, whose low bit records that the object is known to hold
//! zeroes, so `alloc_zeroed` skips the memset for memory never used (Go's `needzero`).
//!
//! A cache is created from the page heap the first time its CPU allocates, and its
//! pages count as metadata. It is touched only by its CPU inside the platform's
//! critical section; other CPUs read its lengths and counters (relaxed loads) for
//! stats, and draining empties it through [`CpuCache::take_oldest`].
//!
//! It also holds the CPU's current tiny block (see `tiny`): its address and bump
//! offset, written by the CPU only; and the CPU's page cache (see `page_cache`).
//!
//! May call: nothing but itself (and `central::Object`, the word it stores); the
//! refill and flush that talk to the centrals are in `heap`. Called by: `heap`.
//!
//! # Invariants
//!
//! - `bounds == OFFSETS` (never written after `init`);
//! - `OFFSETS[c] <= top[c] <= OFFSETS[c + 1]`; slots `OFFSETS[c] .. top[c]` hold
//!   addresses of distinct objects of class `c`, each allocated in its span's bitmap
//!   and held by no one else (`| 1` when known zeroed);
//! - so for a class: `central.allocated == in use by callers + sum over CPUs of len`.

use crate::central::Object;
use crate::page_cache::PageCache;
use crate::size_class::{SizeClass, NUM_CLASSES, PAGE_SIZE};
use crate::stack::{ORDERS, STACK_CACHE};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr::{self, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Stack capacity of each class: two batches.
const fn capacity_of(index: usize) -> usize {
    match SizeClass::from_index(index) {
        Some(class) => 2 * class.batch(),
        None => 0,
    }
}

/// Per class: first slot of its stack (`OFFSETS[c]`) and capacity; `OFFSETS[NUM_CLASSES]`
/// is the total.
const OFFSETS: [u32; NUM_CLASSES + 1] = {
    let mut offsets = [0u32; NUM_CLASSES + 1];
    let mut i = 1;
    while i <= NUM_CLASSES {
        offsets[i] = offsets[i - 1] + capacity_of(i - 1) as u32;
        i += 1;
    }
    offsets
};

/// Slots of all stacks together.
const SLOTS: usize = OFFSETS[NUM_CLASSES] as usize;

// One CPU's cache takes 7 pages (28 KiB); checked so that a change shows here.
const _: () = assert!(CpuCache::PAGES <= 7);

/// Per-CPU event counters: written by their CPU only (load and store, no RMW), summed
/// by readers.
#[derive(Default)]
pub(crate) struct Counters {
    /// Small allocations served by this CPU's cache (including after a refill).
    pub(crate) allocs: AtomicUsize,
    /// Small frees taken by this CPU's cache.
    pub(crate) frees: AtomicUsize,
    /// Refills from the centrals.
    pub(crate) refills: AtomicUsize,
    /// Flushes to the centrals.
    pub(crate) flushes: AtomicUsize,
    /// Tiny sub-objects handed out (see `tiny`).
    pub(crate) tiny: AtomicUsize,
}

/// Increments a counter owned by the running CPU.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicUsize) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// One CPU's cache. Lives in pages of its own (see [`CpuCache::PAGES`]).
#[repr(C)]
pub(crate) struct CpuCache {
    /// Per class: the slot above the stack's newest object, as an index into `slots`
    /// (`OFFSETS[c] + len`).
    top: [AtomicU32; NUM_CLASSES],
    /// A copy of `OFFSETS`, next to `top`: a pop compares `top[c]` with `bounds[c]`,
    /// a push with `bounds[c + 1]`, at offsets from the cache's own address (no
    /// table address to form first).
    bounds: [u32; NUM_CLASSES + 1],
    pub(crate) counters: Counters,
    /// The current tiny block (0: none) and the bump offset inside it (see `tiny`).
    pub(crate) tiny_block: AtomicUsize,
    pub(crate) tiny_offset: AtomicUsize,
    /// The CPU's page cache (see `page_cache`).
    pub(crate) pages: PageCache,
    stack_len: [AtomicU32; ORDERS],
    stack_slots: UnsafeCell<[[MaybeUninit<usize>; STACK_CACHE]; ORDERS]>,
    slots: UnsafeCell<[MaybeUninit<usize>; SLOTS]>,
}

impl CpuCache {
    /// Pages a cache occupies.
    pub(crate) const PAGES: usize = core::mem::size_of::<CpuCache>().div_ceil(PAGE_SIZE);

    /// Initialises a cache with empty stacks at `at`.
    ///
    /// # Safety
    ///
    /// `at` is page-aligned, writable for [`Self::PAGES`] pages and used by nothing
    /// else.
    pub(crate) unsafe fn init(at: NonNull<u8>) -> NonNull<CpuCache> {
        let cache = at.cast::<CpuCache>();
        // SAFETY: in bounds of the caller's pages, aligned (page-aligned); the slots
        // may stay uninitialised (MaybeUninit), lengths and counters are written whole.
        unsafe {
            let c = cache.as_ptr();
            addr_of_mut!((*c).top).write(core::array::from_fn(|c| AtomicU32::new(OFFSETS[c])));
            addr_of_mut!((*c).bounds).write(OFFSETS);
            addr_of_mut!((*c).counters).write(Counters::default());
            addr_of_mut!((*c).tiny_block).write(AtomicUsize::new(0));
            addr_of_mut!((*c).tiny_offset).write(AtomicUsize::new(0));
            addr_of_mut!((*c).pages).write(PageCache::new());
            addr_of_mut!((*c).stack_len).write([const { AtomicU32::new(0) }; ORDERS]);
        }
        cache
    }

    /// Objects in the stack of `class`.
    #[inline(always)]
    pub(crate) fn len(&self, class: SizeClass) -> usize {
        (self.top[class.index()].load(Relaxed) - OFFSETS[class.index()]) as usize
    }

    /// Capacity of the stack of `class`.
    #[inline(always)]
    pub(crate) fn capacity(class: SizeClass) -> usize {
        (OFFSETS[class.index() + 1] - OFFSETS[class.index()]) as usize
    }

    #[inline(always)]
    fn slots_ptr(&self) -> *mut usize {
        self.slots.get() as *mut usize
    }

    #[inline(always)]
    fn slot(&self, class: SizeClass, i: usize) -> *mut usize {
        debug_assert!(i < Self::capacity(class));
        // SAFETY: `OFFSETS[c] + i` is inside the slots array (i < capacity).
        unsafe { self.slots_ptr().add(OFFSETS[class.index()] as usize + i) }
    }

    /// Takes the newest object of `class`'s stack.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU.
    #[inline(always)]
    pub(crate) unsafe fn pop(&self, class: SizeClass) -> Option<Object> {
        let top = self.top[class.index()].load(Relaxed);
        if top == self.bounds[class.index()] {
            return None;
        }
        // SAFETY: `top - 1` is a slot of this stack below its top, so initialised
        // (invariant); only this CPU touches it (caller).
        let object = unsafe { self.slots_ptr().add(top as usize - 1).read() };
        self.top[class.index()].store(top - 1, Relaxed);
        Some(Object(object))
    }

    /// Pushes an object of `class`; `false` (and nothing done) when the stack is full.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU and gives up `object`, an allocated
    /// object of `class` not in any cache.
    #[inline(always)]
    pub(crate) unsafe fn push(&self, class: SizeClass, object: Object) -> bool {
        let top = self.top[class.index()].load(Relaxed);
        if top == self.bounds[class.index() + 1] {
            return false;
        }
        // SAFETY: `top` is below the next class's first slot: a slot of this stack;
        // ours (caller).
        unsafe { self.slots_ptr().add(top as usize).write(object.0) };
        self.top[class.index()].store(top + 1, Relaxed);
        true
    }

    /// Removes the `n` oldest objects of `class` (at most the stack's length), moving
    /// the rest down, and calls `each` with every one removed.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU, or the CPU is offline and the caller
    /// has the cache alone.
    pub(crate) unsafe fn take_oldest(
        &self,
        class: SizeClass,
        n: usize,
        mut each: impl FnMut(Object),
    ) {
        let len = self.len(class);
        let n = n.min(len);
        for i in 0..n {
            // SAFETY: `i < len`: an initialised slot, ours (caller).
            each(Object(unsafe { self.slot(class, i).read() }));
        }
        if n < len {
            // SAFETY: slots `n..len` move to `0..len - n`, inside the stack (copy
            // handles the overlap).
            unsafe { ptr::copy(self.slot(class, n), self.slot(class, 0), len - n) };
        }
        self.top[class.index()].store(OFFSETS[class.index()] + (len - n) as u32, Relaxed);
    }

    /// Free kernel stacks of pool order `order` held.
    pub(crate) fn stacks(&self, order: usize) -> usize {
        self.stack_len[order].load(Relaxed) as usize
    }

    /// Takes a cached kernel stack of `order`.
    ///
    /// # Safety
    ///
    /// As for [`Self::pop`].
    pub(crate) unsafe fn pop_stack(&self, order: usize) -> Option<NonNull<u8>> {
        let len = self.stacks(order).checked_sub(1)?;
        // SAFETY: slot `len` is initialised (below the old length); ours (caller).
        let addr = unsafe { (*self.stack_slots.get())[order][len].assume_init() };
        self.stack_len[order].store(len as u32, Relaxed);
        NonNull::new(addr as *mut u8)
    }

    /// Keeps a free kernel stack of `order`; `false` when the cache holds
    /// [`STACK_CACHE`] already.
    ///
    /// # Safety
    ///
    /// As for [`Self::push`].
    pub(crate) unsafe fn push_stack(&self, order: usize, base: NonNull<u8>) -> bool {
        let len = self.stacks(order);
        if len == STACK_CACHE {
            return false;
        }
        // SAFETY: `len < STACK_CACHE`; ours (caller).
        unsafe { (*self.stack_slots.get())[order][len] = MaybeUninit::new(base.as_ptr() as usize) };
        self.stack_len[order].store(len as u32 + 1, Relaxed);
        true
    }

    /// Objects of `class` in the stack, for the invariant walker.
    ///
    /// # Safety
    ///
    /// No CPU changes the stack meanwhile.
    pub(crate) unsafe fn objects(&self, class: SizeClass) -> impl Iterator<Item = usize> + '_ {
        (0..self.len(class)).map(move |i| {
            // SAFETY: slots below the length are initialised; unchanged meanwhile
            // (caller).
            let slot = unsafe { self.slot(class, i).read() };
            Object(slot).addr().as_ptr() as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_small_and_capacities_follow_batches() {
        for class in SizeClass::all() {
            assert_eq!(CpuCache::capacity(class), 2 * class.batch());
        }
    }

    #[test]
    fn stacks_are_lifo_bounded_and_keep_the_zeroed_tag() {
        let pages = vec![0u8; (CpuCache::PAGES + 1) * PAGE_SIZE];
        let at = (pages.as_ptr() as usize).next_multiple_of(PAGE_SIZE);
        // SAFETY: page-aligned, inside `pages`, used by nothing else.
        let cache = unsafe { CpuCache::init(NonNull::new(at as *mut u8).unwrap()).as_ref() };
        let class = SizeClass::from_index(3).unwrap();
        let other = SizeClass::from_index(4).unwrap();
        let cap = CpuCache::capacity(class);
        let object = |i: usize| NonNull::new((0x1000 + 16 * i) as *mut u8).unwrap();
        for i in 0..cap {
            // SAFETY: the test is the only user of this cache.
            assert!(unsafe { cache.push(class, Object::new(object(i), i % 2 == 0)) });
        }
        // SAFETY: as above.
        let pushed = unsafe { cache.push(class, Object::new(object(cap), false)) };
        assert!(!pushed, "bounded");
        assert_eq!(cache.len(other), 0, "classes do not share slots");
        // SAFETY: as above.
        let top = unsafe { cache.pop(class) }.unwrap();
        assert_eq!(
            (top.addr(), top.zeroed()),
            (object(cap - 1), (cap - 1) % 2 == 0)
        );
        let mut flushed = Vec::new();
        // SAFETY: as above.
        unsafe { cache.take_oldest(class, 3, |o| flushed.push(o.addr())) };
        assert_eq!(flushed, [object(0), object(1), object(2)]);
        // SAFETY: as above.
        let next = unsafe { cache.pop(class) }.unwrap();
        assert_eq!(
            next.addr(),
            object(cap - 2),
            "the newest stay after a flush"
        );
        assert_eq!(cache.len(class), cap - 5);
        // SAFETY: as above.
        let rest: Vec<_> = unsafe { cache.objects(class) }.collect();
        assert_eq!(rest.first(), Some(&(object(3).as_ptr() as usize)));
    }
}
