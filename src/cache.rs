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
//! A CPU without a cache sees [`NO_CACHE`]: stack heads only, every stack empty and
//! full at once, so its pop and push fail and take the slow path. The fast paths thus
//! load a cache pointer that is never null and test nothing else ([`AnyCache`]).
//!
//! # Invariants
//!
//! - `bounds == OFFSETS` (never written after `init`);
//! - `NO_CACHE`'s `top` and `bounds` are all 0 and never written;
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

/// The heads of a cache's stacks: all that a pop or push reads before it knows the
/// cache is real. The first field of [`CpuCache`].
#[repr(C)]
pub(crate) struct StackHeads {
    /// Per class: the slot above the stack's newest object, as an index into `slots`
    /// (`OFFSETS[c] + len`).
    top: [AtomicU32; NUM_CLASSES],
    /// A copy of `OFFSETS`, next to `top`: a pop compares `top[c]` with `bounds[c]`,
    /// a push with `bounds[c + 1]`, at offsets from the cache's own address (no
    /// table address to form first).
    bounds: [u32; NUM_CLASSES + 1],
}

/// What a CPU without a cache sees: `top[c] == bounds[c] == bounds[c + 1] == 0` for
/// every class, so every pop finds its stack empty and every push finds it full.
pub(crate) static NO_CACHE: StackHeads = StackHeads {
    top: [const { AtomicU32::new(0) }; NUM_CLASSES],
    bounds: [0; NUM_CLASSES + 1],
};

/// The running CPU's cache as the fast paths see it: a real [`CpuCache`], or
/// [`NO_CACHE`]. Only the stack heads are read until a pop or push succeeds, which
/// proves the cache real.
#[derive(Clone, Copy)]
pub(crate) struct AnyCache(NonNull<CpuCache>);

impl AnyCache {
    /// `NO_CACHE`, as the pointer a cache table holds for a CPU without a cache.
    pub(crate) const NONE: *mut CpuCache = ptr::addr_of!(NO_CACHE) as *mut CpuCache;

    /// The cache at `cache`, a pointer from a cache table.
    ///
    /// # Safety
    ///
    /// `cache` is [`Self::NONE`] or an initialised cache that outlives every use of
    /// the references that [`Self::real`], [`Self::pop`] and [`Self::push`] return.
    #[inline(always)]
    pub(crate) unsafe fn new(cache: *mut CpuCache) -> Self {
        // SAFETY: neither kind of pointer is null (caller).
        Self(unsafe { NonNull::new_unchecked(cache) })
    }

    /// The real cache, `None` for `NO_CACHE`.
    #[inline(always)]
    pub(crate) fn real<'a>(self) -> Option<&'a CpuCache> {
        if self.0.as_ptr() == Self::NONE {
            // Never a reference: `NO_CACHE` is only the heads.
            return None;
        }
        // SAFETY: not `NO_CACHE`: an initialised cache, living as long as the heap
        // that handed out the pointer (`new`'s contract).
        Some(unsafe { self.0.as_ref() })
    }

    #[inline(always)]
    fn heads(&self) -> &StackHeads {
        // SAFETY: both kinds of cache start with their `StackHeads` (`repr(C)`).
        unsafe { self.0.cast::<StackHeads>().as_ref() }
    }

    /// Takes the newest object of `class`'s stack, with the (real) cache it came from.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU.
    #[inline(always)]
    pub(crate) unsafe fn pop<'a>(self, class: SizeClass) -> Option<(&'a CpuCache, Object)> {
        let heads = self.heads();
        let top = heads.top[class.index()].load(Relaxed);
        if top == heads.bounds[class.index()] {
            return None;
        }
        // SAFETY: a non-empty stack: the cache is real (`NO_CACHE`'s are all empty).
        // `top - 1` is a slot of this stack below its top, so initialised (invariant);
        // only this CPU touches it (caller). The slot's address comes from the raw
        // cache pointer, which covers the whole cache.
        let object = unsafe { Self::slots(self.0).add(top as usize - 1).read() };
        heads.top[class.index()].store(top - 1, Relaxed);
        // SAFETY: real (above); `new`'s contract.
        Some((unsafe { self.0.as_ref() }, object))
    }

    /// Pushes an object of `class`; the (real) cache, or `None` (and nothing done)
    /// when the stack is full or the cache is `NO_CACHE`.
    ///
    /// # Safety
    ///
    /// The caller is pinned to this cache's CPU and gives up `object`, an allocated
    /// object of `class` not in any cache.
    #[inline(always)]
    pub(crate) unsafe fn push<'a>(self, class: SizeClass, object: Object) -> Option<&'a CpuCache> {
        let heads = self.heads();
        let top = heads.top[class.index()].load(Relaxed);
        if top == heads.bounds[class.index() + 1] {
            return None;
        }
        // SAFETY: a stack with room: the cache is real (`NO_CACHE`'s are all full).
        // `top` is below the next class's first slot: a slot of this stack; ours
        // (caller).
        unsafe { Self::slots(self.0).add(top as usize).write(object) };
        heads.top[class.index()].store(top + 1, Relaxed);
        // SAFETY: real (above); `new`'s contract.
        Some(unsafe { self.0.as_ref() })
    }

    /// The first slot of the real cache `cache`, with the raw pointer's provenance.
    #[inline(always)]
    fn slots(cache: NonNull<CpuCache>) -> *mut Object {
        // SAFETY: in bounds of a real cache (callers); `UnsafeCell` has its value's
        // layout.
        unsafe { ptr::addr_of_mut!((*cache.as_ptr()).slots) }.cast::<Object>()
    }
}

/// One CPU's cache. Lives in pages of its own (see [`CpuCache::PAGES`]).
#[repr(C)]
pub(crate) struct CpuCache {
    /// First, so that [`NO_CACHE`] can stand for a cache ([`AnyCache`]).
    heads: StackHeads,
    pub(crate) counters: Counters,
    /// The current tiny block (0: none) and the bump offset inside it (see `tiny`).
    pub(crate) tiny_block: AtomicUsize,
    pub(crate) tiny_offset: AtomicUsize,
    /// The CPU's page cache (see `page_cache`).
    pub(crate) pages: PageCache,
    stack_len: [AtomicU32; ORDERS],
    stack_slots: UnsafeCell<[[MaybeUninit<usize>; STACK_CACHE]; ORDERS]>,
    slots: UnsafeCell<[MaybeUninit<Object>; SLOTS]>,
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
            addr_of_mut!((*c).heads).write(StackHeads {
                top: core::array::from_fn(|c| AtomicU32::new(OFFSETS[c])),
                bounds: OFFSETS,
            });
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
        (self.heads.top[class.index()].load(Relaxed) - OFFSETS[class.index()]) as usize
    }

    /// Capacity of the stack of `class`.
    #[inline(always)]
    pub(crate) fn capacity(class: SizeClass) -> usize {
        (OFFSETS[class.index() + 1] - OFFSETS[class.index()]) as usize
    }

    #[inline(always)]
    fn slot(&self, class: SizeClass, i: usize) -> *mut Object {
        debug_assert!(i < Self::capacity(class));
        // SAFETY: `OFFSETS[c] + i` is inside the slots array (i < capacity).
        unsafe { AnyCache::slots(self.into()).add(OFFSETS[class.index()] as usize + i) }
    }

    /// This cache as the fast paths see a cache.
    #[inline(always)]
    pub(crate) fn any(&self) -> AnyCache {
        AnyCache(NonNull::from(self))
    }

    /// Takes the newest object of `class`'s stack.
    ///
    /// # Safety
    ///
    /// As [`AnyCache::pop`].
    #[inline(always)]
    pub(crate) unsafe fn pop(&self, class: SizeClass) -> Option<Object> {
        // SAFETY: forwarded from the caller.
        unsafe { self.any().pop(class) }.map(|(_, object)| object)
    }

    /// Pushes an object of `class`; `false` (and nothing done) when the stack is full.
    ///
    /// # Safety
    ///
    /// As [`AnyCache::push`].
    #[inline(always)]
    pub(crate) unsafe fn push(&self, class: SizeClass, object: Object) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { self.any().push(class, object) }.is_some()
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
            each(unsafe { self.slot(class, i).read() });
        }
        if n < len {
            // SAFETY: slots `n..len` move to `0..len - n`, inside the stack (copy
            // handles the overlap).
            unsafe { ptr::copy(self.slot(class, n), self.slot(class, 0), len - n) };
        }
        self.heads.top[class.index()].store(OFFSETS[class.index()] + (len - n) as u32, Relaxed);
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
            unsafe { self.slot(class, i).read() }.addr().as_ptr() as usize
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

    #[test]
    fn no_cache_is_empty_and_full_for_every_class() {
        // SAFETY: `NONE` is a valid table pointer.
        let none = unsafe { AnyCache::new(AnyCache::NONE) };
        assert!(none.real().is_none());
        let object = Object::new(NonNull::new(0x1000 as *mut u8).unwrap(), false);
        for class in SizeClass::all() {
            // SAFETY: no real cache is touched (the test checks that nothing is).
            let popped = unsafe { none.pop(class) };
            assert!(popped.is_none(), "{class:?} pops nothing");
            // SAFETY: as above.
            let pushed = unsafe { none.push(class, object) };
            assert!(pushed.is_none(), "{class:?} takes nothing");
        }
        assert!(
            NO_CACHE.top.iter().all(|top| top.load(Relaxed) == 0),
            "never written"
        );
    }

    #[test]
    fn a_real_cache_seen_as_any_cache_is_itself() {
        let pages = vec![0u8; (CpuCache::PAGES + 1) * PAGE_SIZE];
        let at = (pages.as_ptr() as usize).next_multiple_of(PAGE_SIZE);
        // SAFETY: page-aligned, inside `pages`, used by nothing else.
        let cache = unsafe { CpuCache::init(NonNull::new(at as *mut u8).unwrap()) };
        // SAFETY: initialised above, outlives the test's uses.
        let any = unsafe { AnyCache::new(cache.as_ptr()) };
        let real = any.real().expect("a real cache");
        assert!(ptr::eq(real, cache.as_ptr()));
        let class = SizeClass::from_index(1).unwrap();
        let object = Object::new(NonNull::new(0x2000 as *mut u8).unwrap(), true);
        // SAFETY: the test is the only user of this cache.
        let pushed = unsafe { any.push(class, object) }.expect("room");
        assert!(ptr::eq(pushed, real));
        // SAFETY: as above.
        let (popped_from, popped) = unsafe { any.pop(class) }.expect("the object");
        assert!(ptr::eq(popped_from, real));
        assert_eq!(
            (popped.addr().as_ptr() as usize, popped.zeroed()),
            (0x2000, true)
        );
    }
}
