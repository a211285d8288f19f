//! The heap front end: [`SpanHeap`], its allocation API and its `GlobalAlloc`.
//!
//! ```text
//! allocate(layout)
//!   class_of(size, align) -> small: pin; pop this CPU's cache (no lock)
//!                                   else refill a batch from Central[class]
//!                                   -> span (bitmap) -> page heap
//!                         -> none:  large object: a page run from the page heap
//! deallocate(ptr, layout)
//!   without `verify-frees`: a small layout gives the class (class_of), and the
//!   object goes onto this CPU's cache unchecked (its span checks it at the flush);
//!   tiny and large layouts, and every free with `verify-frees`:
//!   span_of(ptr) through the arena index and span map (no lock); the span gives the
//!   class, and one compare checks the layout against it (class_of only for
//!   alignments above 8); O(1) checks (foreign, wrong layout, interior, bit already
//!   clear);
//!   small: pin; push onto this CPU's cache, else flush a batch to Central[class],
//!   which clears the objects' bits; an empty span goes back to the page heap;
//!   large: its pages go back.
//! ```
//!
//! Every entry point runs inside the platform's critical section ([`Pinned`]): the
//! per-CPU cache is then the caller's alone, and (with [`X86_64`](crate::platform::X86_64))
//! interrupts are off while any heap lock is held, so the spin locks are IRQ-safe.
//!
//! Nothing here panics or unwinds on a user request: out of memory is `None` (null
//! through `GlobalAlloc`), and a free the heap can prove wrong (foreign pointer,
//! interior pointer, wrong layout, double free) is ignored, counted, and reported to
//! the error hook.
//!
//! # Invariants
//!
//! - lock order: a central, then the page heap; never the other way round, and never
//!   two centrals at once, except in [`SpanHeap::stats`] and
//!   [`SpanHeap::check_invariants`], which take every central in index order first;
//! - an address handed out belongs to exactly one live span, found by `span_of`;
//! - `caches[i + 1]` is `AnyCache::NONE` or CPU `i`'s initialised cache, set once by
//!   CPU `i` itself; `caches[0]`, the entry of a CPU without an index, is always
//!   `AnyCache::NONE` (the table is indexed by `Platform::cpu_slot`).

use crate::arena::Arena;
use crate::cache::{bump, AnyCache, CpuCache};
use crate::central::{Central, CentralLists, Object, Released};
use crate::page_cache;
use crate::page_heap::{ArenaIndex, NewSpan, PageHeap};
use crate::platform::{Pinned, Platform, Uncached, MAX_CPUS};
use crate::range::{AddMemoryError, Config, MemoryRange};
use crate::size_class::{class_of, SizeClass, CLASS_GRANULE, NUM_CLASSES, PAGE_SIZE};
use crate::span::{Span, SpanKind, SpanList};
#[cfg(feature = "debug-fill")]
use crate::span::{FREE_FILL, FRESH_FILL};
use crate::stack::{
    order_of, order_size, stack_size, LargeStacks, PoolLists, Stack, StackPools, ORDERS,
    POOL_SPAN_PAGES, STACK_CACHE,
};
use crate::stats::{ClassStats, CpuStats, Stats};
use crate::tiny::{self, TINY_BLOCK_CLASS, TINY_SOURCE_CLASS};
use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use spin::{Mutex, MutexGuard};

/// A free the heap refused because it can prove it wrong. The memory is left as it
/// was; nothing else is touched. (Unless the feature `verify-frees` or `checked` is
/// on, a wrong free of a small layout is found, if at all, only when its object
/// leaves a CPU cache: the cache may have handed the pointer out again before.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The pointer is not inside any span of this heap (foreign, or already freed
    /// back to the page heap).
    Foreign {
        /// The pointer given.
        ptr: usize,
    },
    /// The pointer is inside a span but not at the start of an object.
    Interior {
        /// The pointer given.
        ptr: usize,
    },
    /// The layout does not match what the allocation was made with.
    WrongLayout {
        /// The pointer given.
        ptr: usize,
        /// The layout given. For a free found wrong only when its object left a cache
        /// (the default free of a small layout): the layout of the class it was freed
        /// to.
        layout: Layout,
        /// The size the allocation's span serves (its class size or page run).
        expected_size: usize,
    },
    /// The object is not allocated: a double free.
    DoubleFree {
        /// The pointer given.
        ptr: usize,
    },
    /// Feature `debug-fill`: a free object no longer held the free pattern when it was
    /// handed out again: something wrote to it after it was freed. The object is
    /// handed out anyway (the write already happened).
    ModifiedAfterFree {
        /// The object.
        ptr: usize,
        /// The first byte found changed, from the object's start.
        offset: usize,
    },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::Foreign { ptr } => write!(f, "free of {ptr:#x}: not memory of this heap"),
            FreeError::Interior { ptr } => write!(f, "free of {ptr:#x}: inside an object"),
            FreeError::WrongLayout { ptr, layout, expected_size } => write!(
                f,
                "free of {ptr:#x} with size {} align {}: the allocation serves {expected_size} bytes",
                layout.size(),
                layout.align()
            ),
            FreeError::DoubleFree { ptr } => write!(f, "free of {ptr:#x}: already free"),
            FreeError::ModifiedAfterFree { ptr, offset } => write!(
                f,
                "object {ptr:#x} written after it was freed (byte {offset} changed)"
            ),
        }
    }
}

/// A function the heap calls with every refused free.
pub type ErrorHook = fn(&FreeError);

/// What an allocation that found no memory needs, for the out-of-memory hook: a run
/// of `bytes` bytes aligned to `align` inside one arena window. A range added in a
/// window that has no arena yet must hold that window's metadata too (see
/// [`AddMemoryError::TooSmall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory {
    /// Bytes of whole pages the heap needs.
    pub bytes: usize,
    /// Their alignment (a power of two, at least a page).
    pub align: usize,
}

/// A function the heap calls when an allocation finds no memory even after giving
/// back what the running CPU and the centrals hold. It may add memory
/// ([`SpanHeap::add_memory`]) and returns `true` to make the heap try again.
pub type OomHook = fn(&OutOfMemory) -> bool;

/// How many times one allocation calls the out-of-memory hook at most.
const OOM_RETRIES: usize = 8;

/// The heap. Build it with [`SpanHeap::new`] in a `static`, give it memory with
/// [`SpanHeap::add_memory`], and use it as the `#[global_allocator]`.
///
/// `P` names the [`Platform`]: [`X86_64`](crate::platform::X86_64) in a kernel (per-CPU
/// caches, interrupts off inside the heap), [`HostThreads`](crate::platform) on a host
/// with `std`, or the default [`Uncached`] (no per-CPU caches: every allocation takes
/// a central's lock).
pub struct SpanHeap<P: Platform = Uncached> {
    config: Config,
    arena_shift: u32,
    index: ArenaIndex,
    pages: Mutex<PageHeap>,
    centrals: [Central; NUM_CLASSES],
    stacks: StackPools,
    bad_frees: AtomicUsize,
    error_hook: AtomicPtr<()>,
    oom_hook: AtomicPtr<()>,
    phys_offset: AtomicUsize,
    /// By [`Platform::cpu_slot`]: first the entry of a CPU without an index, then
    /// per CPU index its cache.
    caches: [AtomicPtr<CpuCache>; MAX_CPUS + 1],
    platform: PhantomData<fn() -> P>,
}

/// Every lock of a heap, for stats and the invariant walker.
struct Locked<'a> {
    centrals: [MutexGuard<'a, CentralLists>; NUM_CLASSES],
    pools: [MutexGuard<'a, PoolLists>; ORDERS],
    large: MutexGuard<'a, LargeStacks>,
    pages: MutexGuard<'a, PageHeap>,
}

// The heap value (a kernel's static) is 46 KiB, 34 KiB of it the centrals' transfer
// caches (README, "Using the library"); checked so that a change shows here.
const _: () = assert!(core::mem::size_of::<SpanHeap<Uncached>>() <= 47 * 1024);

/// The non-null pointer at `addr`.
///
/// # Safety
///
/// `addr` is not 0.
#[inline(always)]
unsafe fn nonnull(addr: usize) -> NonNull<u8> {
    debug_assert!(addr != 0);
    // SAFETY: not null (caller).
    unsafe { NonNull::new_unchecked(addr as *mut u8) }
}

/// Frees refused under a lock, to be reported once it is released (the hook may
/// allocate): every one is counted, the first goes to the hook.
#[derive(Default)]
#[must_use = "report it (`SpanHeap::report_refused`) once no lock is held"]
struct Refused {
    first: Option<FreeError>,
    more: usize,
}

impl Refused {
    fn add(&mut self, result: Result<(), FreeError>) {
        if let Err(error) = result {
            if self.first.is_none() {
                self.first = Some(error);
            } else {
                self.more += 1;
            }
        }
    }
}

/// `phys_offset` value meaning "no physical mapping known".
const NO_PHYS_OFFSET: usize = usize::MAX;

impl<P: Platform> Default for SpanHeap<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> SpanHeap<P> {
    /// A heap with the default configuration ([`Config::DEFAULT`]) and no memory.
    pub const fn new() -> Self {
        Self::with_config(Config::DEFAULT)
    }

    /// A heap with `config` and no memory. An invalid configuration makes every
    /// `add_memory` fail with [`AddMemoryError::BadConfig`].
    pub const fn with_config(config: Config) -> Self {
        Self {
            config,
            arena_shift: config.arena_size.trailing_zeros(),
            index: ArenaIndex::new(),
            pages: Mutex::new(PageHeap::new()),
            centrals: [const { Central::new() }; NUM_CLASSES],
            stacks: StackPools::new(),
            bad_frees: AtomicUsize::new(0),
            error_hook: AtomicPtr::new(ptr::null_mut()),
            oom_hook: AtomicPtr::new(ptr::null_mut()),
            phys_offset: AtomicUsize::new(NO_PHYS_OFFSET),
            caches: [const { AtomicPtr::new(AnyCache::NONE) }; MAX_CPUS + 1],
            platform: PhantomData,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds `range` to the heap: at start-up for each usable range, or later (hot-add).
    /// The range is trimmed to whole pages; arena metadata for windows that had no
    /// memory yet is carved from the range itself.
    ///
    /// # Errors
    ///
    /// An [`AddMemoryError`] when the range holds no whole page, covers the null page,
    /// overlaps memory already added, cannot hold its arena's metadata, needs more
    /// than [`MAX_ARENAS`](crate::MAX_ARENAS) arenas, or the configuration is invalid.
    /// A refused range is not used at all.
    ///
    /// # Safety
    ///
    /// The memory of `range` is mapped writable, used by nothing else, and stays so for
    /// as long as the heap is used.
    pub unsafe fn add_memory(&self, range: MemoryRange) -> Result<(), AddMemoryError> {
        let _pin = Pinned::<P>::enter();
        // SAFETY: forwarded from the caller.
        unsafe {
            self.pages
                .lock()
                .add_memory(&self.index, &self.config, range)
        }
    }

    /// Installs `hook`, called with every refused free (after it is counted), with no
    /// heap lock held; when one flush of a cache finds several of its objects wrong,
    /// all are counted and the hook sees the first. Without a hook a refused free is
    /// only counted, or, in checked mode (feature `checked`), panics with the error's
    /// message.
    pub fn set_error_hook(&self, hook: ErrorHook) {
        self.error_hook.store(hook as *mut (), Ordering::Release);
    }

    /// Installs `hook`, called when an allocation finds no memory (after the running
    /// CPU's caches and the centrals' reserves went back to the page heap), up to 8
    /// times for one allocation while it returns `true`. It is called with no heap
    /// lock held, but inside the platform's critical section (interrupts off with
    /// [`X86_64`](crate::platform::X86_64)): it may call [`SpanHeap::add_memory`] and
    /// allocate from this heap, and must not wait for another CPU's heap call.
    pub fn set_oom_hook(&self, hook: OomHook) {
        self.oom_hook.store(hook as *mut (), Ordering::Release);
    }

    /// Calls the out-of-memory hook, if any; `true` when it asks for a retry.
    fn call_oom_hook(&self, request: &OutOfMemory) -> bool {
        let hook = self.oom_hook.load(Ordering::Acquire);
        if hook.is_null() {
            return false;
        }
        // SAFETY: a non-null value was stored by `set_oom_hook` from an `OomHook`
        // function pointer (pointer-sized, provenance kept).
        let hook: OomHook = unsafe { core::mem::transmute::<*mut (), OomHook>(hook) };
        hook(request)
    }

    #[cold]
    #[inline(never)]
    fn report(&self, error: FreeError) {
        self.bad_frees.fetch_add(1, Ordering::Relaxed);
        let hook = self.error_hook.load(Ordering::Acquire);
        if hook.is_null() {
            // Checked mode's default hook: stop at the first bad free.
            #[cfg(feature = "checked")]
            panic!("spanheap: refused {error}");
        } else {
            // SAFETY: a non-null value was stored by `set_error_hook` from an
            // `ErrorHook` function pointer (pointer-sized, provenance kept).
            let hook: ErrorHook = unsafe { core::mem::transmute::<*mut (), ErrorHook>(hook) };
            hook(&error);
        }
    }

    /// Checked mode: the object (or pooled stack) at `addr`, allocated in its span,
    /// enters a CPU cache; `false` when it sits in one already. Without checked mode:
    /// `true`, and no work.
    #[inline(always)]
    fn enter_cache(&self, addr: NonNull<u8>) -> bool {
        #[cfg(feature = "checked")]
        if let Some((_, span)) = self.span_of(addr.as_ptr() as usize) {
            // SAFETY: a live span (the object in it is allocated).
            let s = unsafe { span.as_ref() };
            if let Some(index) = s.object_index(addr.as_ptr() as usize) {
                return s.enter_cache(index);
            }
        }
        let _ = addr;
        true
    }

    /// Checked mode: the object (or pooled stack) at `addr` leaves the CPU cache it
    /// sat in. Without checked mode: no work.
    #[inline(always)]
    fn leave_cache(&self, addr: NonNull<u8>) {
        #[cfg(feature = "checked")]
        if let Some((_, span)) = self.span_of(addr.as_ptr() as usize) {
            // SAFETY: as in `enter_cache`.
            let s = unsafe { span.as_ref() };
            if let Some(index) = s.object_index(addr.as_ptr() as usize) {
                s.leave_cache(index);
            }
        }
        let _ = addr;
    }

    /// Reports the refused free of `addr`; `error` builds the report (so that callers
    /// pass two words in registers and keep no frame for it).
    #[cold]
    #[inline(never)]
    fn refuse(&self, addr: usize, error: fn(usize) -> FreeError) {
        self.report(error(addr));
    }

    /// As [`Self::span_of`], for arenas in the index's near table only (`None` for
    /// every other address): the free fast path.
    #[inline(always)]
    fn span_of_near(&self, addr: usize) -> Option<(NonNull<Arena>, NonNull<Span>)> {
        Self::span_in(self.index.get_near(addr >> self.arena_shift)?, addr)
    }

    /// The arena and span holding `addr`, found without a lock.
    fn span_of(&self, addr: usize) -> Option<(NonNull<Arena>, NonNull<Span>)> {
        Self::span_in(self.index.get(addr >> self.arena_shift)?, addr)
    }

    /// `arena` (the index's answer for `addr`) and its span at `addr`.
    #[inline(always)]
    fn span_in(arena: NonNull<Arena>, addr: usize) -> Option<(NonNull<Arena>, NonNull<Span>)> {
        // SAFETY: arenas in the index live as long as the heap.
        let a = unsafe { arena.as_ref() };
        Some((arena, a.span_of_page(a.page_of(addr))?))
    }

    fn arena_of(&self, addr: usize) -> NonNull<Arena> {
        self.index
            .get(addr >> self.arena_shift)
            .expect("a live span's arena is indexed")
    }

    /// Allocates memory for `layout`; `None` when the heap has no room.
    ///
    /// Fast path (a small object in this CPU's cache): `class_of`, the CPU's slot, a
    /// stack pop and a counter: about 19 instructions, no lock, no atomic
    /// read-modify-write (measured by `benches/callgrind.sh`).
    #[inline]
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        match class_of(layout.size(), layout.align()) {
            Some(class) => self.alloc_object(class, layout).map(|(ptr, _)| ptr),
            None => self.alloc_large(layout, false),
        }
    }

    /// Allocates zeroed memory for `layout`. Memory never handed out since the heap
    /// received it (with [`InitialContents::Zeroed`](crate::InitialContents)) is not
    /// cleared again.
    pub fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        match class_of(layout.size(), layout.align()) {
            Some(class) => {
                let (ptr, zeroed) = self.alloc_object(class, layout)?;
                if !zeroed {
                    // SAFETY: the object is ours and at least layout.size() bytes.
                    unsafe { ptr::write_bytes(ptr.as_ptr(), 0, layout.size()) };
                }
                Some(ptr)
            }
            None => self.alloc_large(layout, true),
        }
    }

    /// An object of `class` (`class_of(layout)`), or a tiny sub-object for a tiny
    /// layout; and whether it is known to hold zeroes.
    #[inline(always)]
    fn alloc_object(&self, class: SizeClass, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        // Every tiny layout has the 8-byte class: the byte compare keeps the tiny test
        // off every other class's path.
        if class == TINY_SOURCE_CLASS && self.wants_tiny(layout) {
            return self.alloc_tiny(layout);
        }
        let object = self.alloc_small(class)?;
        Some((object.addr(), object.zeroed()))
    }

    /// `true` when `layout` is served from tiny blocks (where the CPU has a cache).
    #[inline(always)]
    fn wants_tiny(&self, layout: Layout) -> bool {
        tiny::is_tiny(layout.size(), layout.align()) && self.config.tiny_blocks
    }

    /// A tiny request: bump inside this CPU's current block, or start a new block
    /// (retiring the old one first). Without a cache: an 8-byte class object.
    #[inline(never)]
    fn alloc_tiny(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        let (size, align) = (layout.size(), layout.align());
        let pin = Pinned::<P>::enter();
        // Without a cache in sight, claim first, then look again: a CPU whose index
        // shows only once claimed may have a cache already (a host thread taking
        // over an exited thread's index).
        let Some(cache) = self.cache(&pin).or_else(|| self.cache_or_create(&pin)) else {
            drop(pin);
            let object = self.alloc_small(TINY_SOURCE_CLASS)?;
            return Some((object.addr(), object.zeroed()));
        };
        let block = cache.tiny_block.load(Ordering::Relaxed);
        let offset = cache.tiny_offset.load(Ordering::Relaxed);
        let (block, start) = match tiny::place(offset, size, align) {
            Some(start) if block != 0 => {
                // SAFETY: `block` is this CPU's current block (pinned), `start` free.
                unsafe { tiny::add(block, start) };
                (block, start)
            }
            _ => {
                // Fits any tiny request (at most 7 bytes at offset 4).
                let start = tiny::place(tiny::FIRST_OFFSET, size, align)?;
                // Retire the old block before taking a new one: taking may run out of
                // memory and drain this cache, which retires the current block too.
                self.retire_tiny(cache);
                let new = self.alloc_small(TINY_BLOCK_CLASS)?.addr().as_ptr() as usize;
                // SAFETY: a 16-byte class object we just allocated.
                unsafe { tiny::start(new, start) };
                cache.tiny_block.store(new, Ordering::Relaxed);
                (new, start)
            }
        };
        cache.tiny_offset.store(start + size, Ordering::Relaxed);
        bump(&cache.counters.tiny);
        Some((NonNull::new((block + start) as *mut u8)?, false))
    }

    /// Drops `cache`'s current tiny block (if any); an empty one goes back to its
    /// class.
    fn retire_tiny(&self, cache: &CpuCache) {
        let block = cache.tiny_block.load(Ordering::Relaxed);
        cache.tiny_block.store(0, Ordering::Relaxed);
        // SAFETY: `block` was the cache's current block, and is no longer.
        if block != 0 && unsafe { tiny::retire(block) } {
            // SAFETY: a live 16-byte class object (not null), now empty and ours.
            let block = unsafe { NonNull::new_unchecked(block as *mut u8) };
            let entered = self.enter_cache(block);
            debug_assert!(entered, "a tiny block in use is in no cache");
            self.poison(block, TINY_BLOCK_CLASS.size());
            self.free_small_slow(TINY_BLOCK_CLASS, block);
        }
    }

    /// This CPU's cache, if the CPU has an index and its cache exists.
    #[inline(always)]
    fn cache<'a>(&'a self, pin: &Pinned<P>) -> Option<&'a CpuCache> {
        self.any_cache(pin).real()
    }

    /// This CPU's cache as the fast paths see it: its entry in the cache table, read
    /// with no test (`NO_CACHE` for a CPU without an index or a cache).
    #[inline(always)]
    fn any_cache(&self, pin: &Pinned<P>) -> AnyCache {
        // SAFETY: `slot() <= MAX_CPUS`, the table's last index (`Pinned::slot`).
        let entry = unsafe { self.caches.get_unchecked(pin.slot()) };
        // SAFETY: every entry is `NONE` or an initialised cache living as long as the
        // heap (invariant); only its CPU writes it, and `pin` says we are that CPU.
        unsafe { AnyCache::new(entry.load(Ordering::Acquire)) }
    }

    /// The cache of CPU `index`, if it exists.
    fn cache_at(&self, index: usize) -> Option<&CpuCache> {
        let entry = self.caches.get(index.checked_add(1)?)?;
        // SAFETY: as in `any_cache`.
        unsafe { AnyCache::new(entry.load(Ordering::Acquire)) }.real()
    }

    #[inline(always)]
    fn alloc_small(&self, class: SizeClass) -> Option<Object> {
        {
            let pin = Pinned::<P>::enter();
            // SAFETY: pinned to the cache's CPU.
            if let Some((cache, object)) = unsafe { self.any_cache(&pin).pop(class) } {
                self.leave_cache(object.addr());
                bump(&cache.counters.allocs);
                self.handed_out(object, class);
                return Some(object);
            }
        }
        // Out of the critical section so that the call is a tail call with nothing
        // to keep: the fast path then needs no stack frame.
        #[cfg(feature = "debug-fill")]
        return self
            .alloc_small_slow(class)
            .inspect(|&object| self.handed_out(object, class));
        #[cfg(not(feature = "debug-fill"))]
        self.alloc_small_slow(class)
    }

    /// Feature `debug-fill`: the free object `object` of `class` is handed out: check
    /// that it still holds [`FREE_FILL`](crate::FREE_FILL), report it if not, and fill
    /// it with [`FRESH_FILL`](crate::FRESH_FILL). Otherwise no work.
    #[inline(always)]
    fn handed_out(&self, object: Object, class: SizeClass) {
        #[cfg(feature = "debug-fill")]
        self.check_free_fill(object.addr(), class.size());
        let _ = (object, class);
    }

    #[cfg(feature = "debug-fill")]
    #[cold]
    fn check_free_fill(&self, addr: NonNull<u8>, size: usize) {
        // SAFETY: a free object of `size` bytes that is ours now.
        let bytes = unsafe { core::slice::from_raw_parts_mut(addr.as_ptr(), size) };
        if let Some(offset) = bytes.iter().position(|&b| b != FREE_FILL) {
            let ptr = addr.as_ptr() as usize;
            self.report(FreeError::ModifiedAfterFree { ptr, offset });
        }
        bytes.fill(FRESH_FILL);
    }

    /// Feature `debug-fill`: `size` bytes at `addr`, given up by their user, get
    /// [`FREE_FILL`](crate::FREE_FILL). Otherwise no work.
    #[inline(always)]
    fn poison(&self, addr: NonNull<u8>, size: usize) {
        #[cfg(feature = "debug-fill")]
        // SAFETY: memory the heap took back (callers), `size` bytes.
        unsafe {
            ptr::write_bytes(addr.as_ptr(), FREE_FILL, size)
        };
        let _ = (addr, size);
    }

    /// The cache is empty, or missing: refill it (creating it first if this CPU has
    /// none yet), or take one object from the central when the CPU has no index.
    #[cold]
    #[inline(never)]
    fn alloc_small_slow(&self, class: SizeClass) -> Option<Object> {
        let pin = Pinned::<P>::enter();
        let Some(cache) = self.cache_or_create(&pin) else {
            return self.take_small(class);
        };
        // Pinned again, the stack need not be empty any more: the fast path may have
        // found no index (a host thread claims one only here, and may get the cache
        // of a thread that exited), or an interrupt handler may have freed into it.
        // SAFETY: pinned to the cache's CPU.
        if let Some(object) = unsafe { cache.pop(class) } {
            self.leave_cache(object.addr());
            bump(&cache.counters.allocs);
            return Some(object);
        }
        let object = self.refill(cache, class).or_else(|| {
            // Out of memory: give back what this CPU holds, then the reserves.
            self.flush_all(cache);
            self.retry_after_trim(class.pages(), 1, || self.refill(cache, class))
        })?;
        bump(&cache.counters.allocs);
        Some(object)
    }

    /// Creates CPU `cpu`'s cache from the page heap; `None` when there is no room.
    #[cold]
    fn create_cache(&self, cpu: usize) -> Option<&CpuCache> {
        let new = self
            .pages
            .lock()
            .new_whole_span(CpuCache::PAGES, 1, SpanKind::Cache)?;
        // SAFETY: a live span we just created.
        let base = unsafe { new.span.as_ref().base } as *mut u8;
        // SAFETY: the span's pages are ours alone, page-aligned, `PAGES` long.
        let cache = unsafe { CpuCache::init(NonNull::new(base)?) };
        self.caches[cpu + 1].store(cache.as_ptr(), Ordering::Release);
        // SAFETY: initialised just now; lives as long as the heap.
        Some(unsafe { cache.as_ref() })
    }

    /// Moves up to a batch of objects from the central into `cache` and returns one
    /// more: from the central's transfer cache when it holds any, else from spans.
    fn refill(&self, cache: &CpuCache, class: SizeClass) -> Option<Object> {
        let mut lists = self.centrals[class.index()].lock();
        // Never take an object the stack has no room for (it would be lost).
        let room = CpuCache::capacity(class) - cache.len(class);
        let transferred = !lists.transferred().is_empty();
        let first = self.take_object(&mut lists, class, transferred)?;
        for _ in 1..class.batch().min(room + 1) {
            let Some(object) = self.take_object(&mut lists, class, transferred) else {
                break;
            };
            if !transferred {
                let entered = self.enter_cache(object.addr());
                debug_assert!(entered, "an object fresh from its span is in no cache");
            }
            // SAFETY: pinned to the cache's CPU (callers hold a `Pinned`); the object
            // is allocated in its span, ours, and in the cache state (checked mode).
            let pushed = unsafe { cache.push(class, object) };
            debug_assert!(pushed, "room was counted");
        }
        drop(lists);
        if transferred {
            // `first` goes to the caller: out of the cache state.
            self.leave_cache(first.addr());
        }
        bump(&cache.counters.refills);
        Some(first)
    }

    /// One object of `class` from its central (locked: `lists`): from the transfer
    /// cache when `transferred` (the object is then in the cache state already, in
    /// checked mode), else from a span.
    fn take_object(
        &self,
        lists: &mut CentralLists,
        class: SizeClass,
        transferred: bool,
    ) -> Option<Object> {
        if transferred {
            lists.transfer_take()
        } else {
            lists.take(class, &self.pages)
        }
    }

    /// Gives the batch of `class`'s oldest objects in `cache` (a full stack) to the
    /// central: whole into its transfer cache when that has room, else back to their
    /// spans. The objects refused there are for the caller to report, once it has
    /// pushed what it flushed for (the hook may free into this stack).
    fn flush_batch(&self, cache: &CpuCache, class: SizeClass) -> Refused {
        let n = class.batch();
        let mut lists = self.centrals[class.index()].lock();
        if lists.transfer_room(class) < n {
            return self.flush_locked(lists, cache, class, n);
        }
        // SAFETY: pinned to the cache's CPU (the caller). The objects stay allocated
        // in their spans and in the cache state: the transfer cache is a cache.
        unsafe { cache.take_oldest(class, n, |object| lists.transfer_put(object)) };
        bump(&cache.counters.flushes);
        Refused::default()
    }

    /// Gives the `n` oldest objects of `class` in `cache` back to their spans.
    fn flush(&self, cache: &CpuCache, class: SizeClass, n: usize) {
        let refused = self.flush_locked(self.centrals[class.index()].lock(), cache, class, n);
        self.report_refused(refused);
    }

    /// As [`Self::flush`], with the central's lock taken (`lists`); releases the lock
    /// and returns the refused objects, for the caller to report.
    fn flush_locked(
        &self,
        mut lists: MutexGuard<'_, CentralLists>,
        cache: &CpuCache,
        class: SizeClass,
        n: usize,
    ) -> Refused {
        let mut refused = Refused::default();
        // SAFETY: pinned to the cache's CPU, or the CPU is offline (callers).
        unsafe {
            cache.take_oldest(class, n, |object| {
                refused.add(self.put_cached(&mut lists, class, object))
            })
        };
        bump(&cache.counters.flushes);
        drop(lists);
        refused
    }

    /// Returns `object`, leaving a cache (a CPU's or the transfer cache), to its span
    /// under the central lock `lists`; an error is for the caller to report once the
    /// lock is released.
    fn put_cached(
        &self,
        lists: &mut CentralLists,
        class: SizeClass,
        object: Object,
    ) -> Result<(), FreeError> {
        self.leave_cache(object.addr());
        self.put_locked(lists, class, object.addr().as_ptr() as usize)
    }

    /// Reports the frees refused under a lock, now released.
    fn report_refused(&self, refused: Refused) {
        if let Some(error) = refused.first {
            self.bad_frees.fetch_add(refused.more, Ordering::Relaxed);
            self.report(error);
        }
    }

    /// Empties every stack of `cache` into the centrals, its kernel stacks into the
    /// stack pools and its page cache into the page heap.
    fn flush_all(&self, cache: &CpuCache) {
        self.retire_tiny(cache);
        for class in SizeClass::all() {
            if cache.len(class) != 0 {
                self.flush(cache, class, usize::MAX);
            }
        }
        for order in 0..ORDERS {
            self.release_stacks(cache, order, STACK_CACHE);
        }
        if !cache.pages.is_empty() {
            // SAFETY: pinned to the cache's CPU, or the CPU is offline (callers); the
            // page heap is locked.
            unsafe { cache.pages.give_all(&mut self.pages.lock()) };
        }
    }

    /// One object of `class` for a caller with no cache: from the transfer cache or
    /// a span.
    fn take_small(&self, class: SizeClass) -> Option<Object> {
        let central = &self.centrals[class.index()];
        let take = || {
            let mut lists = central.lock();
            let transferred = !lists.transferred().is_empty();
            let object = self.take_object(&mut lists, class, transferred)?;
            drop(lists);
            if transferred {
                self.leave_cache(object.addr());
            }
            Some(object)
        };
        // Bind the result so that the lock is released before the out-of-memory path.
        let object = take();
        object.or_else(|| self.retry_after_trim(class.pages(), 1, take))
    }

    /// Out of memory for a run of `pages` pages aligned to `align` pages: give this
    /// CPU's caches and every central's reserve back to the page heap and try once
    /// more, then as long as the out-of-memory hook adds memory. Called with no lock
    /// held.
    #[cold]
    #[inline(never)]
    fn retry_after_trim<T>(
        &self,
        pages: usize,
        align: usize,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        self.trim();
        if let Some(done) = attempt() {
            return Some(done);
        }
        let request = OutOfMemory {
            bytes: pages.saturating_mul(PAGE_SIZE),
            align: align.saturating_mul(PAGE_SIZE),
        };
        for _ in 0..OOM_RETRIES {
            if !self.call_oom_hook(&request) {
                return None;
            }
            if let Some(done) = attempt() {
                return Some(done);
            }
        }
        None
    }

    #[cold]
    fn alloc_large(&self, layout: Layout, zero: bool) -> Option<NonNull<u8>> {
        let pin = Pinned::<P>::enter();
        let pages = layout.size().max(1).div_ceil(PAGE_SIZE);
        let align = (layout.align() / PAGE_SIZE).max(1);
        let arena_pages = self.config.arena_size / PAGE_SIZE;
        if pages > arena_pages || align > arena_pages {
            return None;
        }
        let new = self.new_run(&pin, pages, align, SpanKind::Large)?;
        // SAFETY: a live span we just created.
        let base = unsafe { new.span.as_ref().base };
        if zero && new.dirty {
            // SAFETY: the run is ours, `pages` pages from `base`.
            unsafe { ptr::write_bytes(base as *mut u8, 0, layout.size()) };
        }
        #[cfg(feature = "debug-fill")]
        if !zero {
            // SAFETY: as above.
            unsafe { ptr::write_bytes(base as *mut u8, FRESH_FILL, layout.size()) };
        }
        NonNull::new(base as *mut u8)
    }

    /// A large or pages span of `pages` pages aligned to `align` pages: from this
    /// CPU's page cache when the run is short (refilling the cache with a new group
    /// in one locked step when it has no fit), else from the page heap.
    fn new_run(
        &self,
        pin: &Pinned<P>,
        pages: usize,
        align: usize,
        kind: SpanKind,
    ) -> Option<NewSpan> {
        if page_cache::serves(pages, align) {
            if let Some(cache) = self.cache_or_create(pin) {
                // SAFETY: pinned to the cache's CPU.
                if let Some(new) = unsafe { cache.pages.alloc(pages, align, kind) } {
                    return Some(new);
                }
                let mut heap = self.pages.lock();
                // SAFETY: pinned to the cache's CPU; the page heap is locked.
                if unsafe { cache.pages.refill(&mut heap, pages, align) } {
                    drop(heap);
                    // SAFETY: as above.
                    if let Some(new) = unsafe { cache.pages.alloc(pages, align, kind) } {
                        return Some(new);
                    }
                }
            }
        }
        self.new_whole_span(pages, align, kind)
    }

    /// This CPU's cache, created if the CPU has an index but no cache yet. The index
    /// is claimed before the cache is looked up, so a CPU that had no index on the
    /// fast path finds the cache its claimed index already has (never a second one:
    /// the first, with every object in it, would be lost).
    fn cache_or_create<'a>(&'a self, pin: &Pinned<P>) -> Option<&'a CpuCache> {
        let cpu = pin.claim_cpu()?;
        self.cache(pin).or_else(|| self.create_cache(cpu))
    }

    /// Frees the run of the large or pages span `span` of `arena`, whose user gives
    /// it up: short runs through this CPU's page cache, the others (and those of a
    /// CPU without a cache) to the page heap.
    fn free_run(&self, arena: NonNull<Arena>, span: NonNull<Span>) {
        let pin = Pinned::<P>::enter();
        // SAFETY: a live span (caller).
        let short = (unsafe { span.as_ref() }.pages as usize) < page_cache::RUN_LIMIT;
        if let Some(cache) = self.cache(&pin).filter(|_| short) {
            // SAFETY: pinned to the cache's CPU; a live run nobody uses (caller).
            if unsafe { cache.pages.free(arena, span) } {
                return;
            }
            let mut heap = self.pages.lock();
            // SAFETY: as above; the page heap is locked. Giving the pending runs back
            // makes room for this one.
            unsafe {
                cache.pages.give_pending(&mut heap);
                let taken = cache.pages.free(arena, span);
                debug_assert!(taken, "the pending list has room");
            }
            return;
        }
        // SAFETY: a live large or pages span the caller gives up.
        unsafe { self.pages.lock().free_span(arena, span) };
    }

    fn new_whole_span(&self, pages: usize, align: usize, kind: SpanKind) -> Option<NewSpan> {
        let new = self.pages.lock().new_whole_span(pages, align, kind);
        new.or_else(|| {
            self.retry_after_trim(pages, align, || {
                self.pages.lock().new_whole_span(pages, align, kind)
            })
        })
    }

    /// Frees memory from [`SpanHeap::allocate`]. A free the heap can prove wrong is
    /// refused and reported (see [`FreeError`]); the memory stays as it was.
    ///
    /// Fast path (DESIGN.md's: no lookup): a free of a common layout (at most 1 KiB,
    /// aligned to at most 8, not served from tiny blocks) with room in this CPU's
    /// cache is the layout's class, a stack push and a counter, about 20
    /// instructions, no lock, no stack frame. It trusts the caller's layout and
    /// pointer: a wrong one may be refused only when its object leaves the cache for
    /// its span (a flush), and until then the cache may hand the pointer out again.
    /// Any other small layout (above 1 KiB, or aligned to 16 up to a page) is trusted
    /// the same way after one call more (`class_of` out of line). Tiny and large
    /// frees find their span first and are checked at once.
    ///
    /// With the feature `verify-frees` (or `checked`) every free finds its span first
    /// (arena index, span map), compares the size against the span's class, and
    /// checks the object index and its bit before the push: about 55 instructions,
    /// and a foreign, interior, wrong-layout free, or a second free of an object back
    /// in its span, is refused at the free.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by this heap for `layout` and is not used after this call.
    #[inline]
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract is `free_addr`'s.
        unsafe { self.free_addr(ptr.as_ptr() as usize, layout) };
    }

    /// Frees the block at `addr` (`deallocate`'s contract), or ignores a null `addr`
    /// (`GlobalAlloc::dealloc` of null): the null test is off the fast path, as page
    /// 0 is never managed, so no span holds address 0.
    ///
    /// # Safety
    ///
    /// `addr` is 0, or was returned by this heap for `layout` and is not used after
    /// this call. With the feature `verify-frees` or `checked` a wrong `addr` is
    /// refused at once (or, for a second free of an object in a cache without
    /// `checked`, at its flush); without them, for a small layout, it may be handed
    /// out again first.
    #[inline(always)]
    unsafe fn free_addr(&self, addr: usize, layout: Layout) {
        // Without `verify-frees` and `checked`: a common layout says the class; the
        // object goes onto this CPU's cache without its span being looked at. Only a
        // flush to the span checks it (`put_locked`).
        #[cfg(not(feature = "verify-frees"))]
        if let Some(class) = crate::size_class::class_of_common(layout.size(), layout.align()) {
            // A tiny layout may be a sub-object of a block: its span says which.
            if class != TINY_SOURCE_CLASS || !self.wants_tiny(layout) {
                if let Some(ptr) = NonNull::new(addr as *mut u8) {
                    // SAFETY: an object of `layout` (the caller), so of `class`.
                    unsafe { self.push_free(class, ptr) };
                }
                return;
            }
        }
        #[cfg(not(feature = "verify-frees"))]
        return self.free_uncommon(addr, layout);
        #[cfg(feature = "verify-frees")]
        self.free_by_span(addr, layout)
    }

    /// Without `verify-frees`, a free whose layout is not common, or is tiny: a small
    /// layout (above 1 KiB, or aligned beyond 8) says its class just as a common one
    /// does (`class_of` is a pure function of the layout, and the object was taken
    /// from that class), so its object goes onto this CPU's cache without its span
    /// being looked at; tiny and large layouts (and null) go through the span. Small
    /// and out of line, apart from `free_by_span`, so that neither the common free nor
    /// this one pays for the other's registers.
    #[cfg(not(feature = "verify-frees"))]
    #[cold]
    #[inline(never)]
    fn free_uncommon(&self, addr: usize, layout: Layout) {
        // Not a common layout, so not a tiny one either.
        if !crate::size_class::is_common(layout.size(), layout.align()) {
            if let (Some(class), Some(ptr)) = (
                crate::size_class::class_of_uncommon(layout.size(), layout.align()),
                NonNull::new(addr as *mut u8),
            ) {
                // SAFETY: an object of `layout` (the caller), so of `class`; no
                // layout that is not common is tiny.
                unsafe { self.push_free(class, ptr) };
                return;
            }
        }
        self.free_by_span(addr, layout)
    }

    /// Frees the block at `addr` (or ignores 0) after finding its span: the checked
    /// free. Without `verify-frees` and `checked` only tiny and large layouts come here
    /// (through `free_uncommon`), so it is out of line and the common free falls
    /// through to its push with no jump.
    #[cfg_attr(not(feature = "verify-frees"), cold, inline(never))]
    #[cfg_attr(feature = "verify-frees", inline(always))]
    fn free_by_span(&self, addr: usize, layout: Layout) {
        match self.span_of_near(addr) {
            // SAFETY: `addr` lies in a span, which holds no page 0: not null.
            Some((arena, span)) => self.free_in(arena, span, unsafe { nonnull(addr) }, layout),
            None => self.deallocate_far(addr, layout),
        }
    }

    /// A free outside the near arenas (or of a foreign pointer): the hashed lookup.
    #[cold]
    #[inline(never)]
    fn deallocate_far(&self, addr: usize, layout: Layout) {
        if addr == 0 {
            return;
        }
        match self.span_of(addr) {
            // SAFETY: as in `free_addr`.
            Some((arena, span)) => self.free_in(arena, span, unsafe { nonnull(addr) }, layout),
            None => self.refuse(addr, |ptr| FreeError::Foreign { ptr }),
        }
    }

    /// Frees `ptr` (with `layout`), which lies in `span` of `arena`.
    #[inline(always)]
    fn free_in(
        &self,
        arena: NonNull<Arena>,
        span: NonNull<Span>,
        ptr: NonNull<u8>,
        layout: Layout,
    ) {
        // SAFETY: a span in the map is a live descriptor; its kind, class, base and
        // size do not change while the object the caller frees is live.
        let s = unsafe { span.as_ref() };
        if layout.align() <= CLASS_GRANULE && s.serves(layout.size()) {
            // SAFETY: only small spans serve a size, and a small span has a class.
            let class = unsafe { s.class.unwrap_unchecked() };
            return self.free_small(s, class, ptr);
        }
        self.free_other(arena, span, ptr, layout)
    }

    /// A free that is not a small object aligned to at most 8: a large object, a small
    /// one aligned beyond 8 (checked through `class_of`), or a wrong layout.
    #[cold]
    #[inline(never)]
    fn free_other(
        &self,
        arena: NonNull<Arena>,
        span: NonNull<Span>,
        ptr: NonNull<u8>,
        layout: Layout,
    ) {
        let addr = ptr.as_ptr() as usize;
        // SAFETY: as in `deallocate`.
        let s = unsafe { span.as_ref() };
        if s.class == Some(TINY_BLOCK_CLASS) && tiny::is_tiny(layout.size(), layout.align()) {
            return self.free_tiny(s, addr);
        }
        match class_of(layout.size(), layout.align()) {
            None => self.free_large(arena, span, addr, layout),
            Some(class) if s.class == Some(class) => self.free_small(s, class, ptr),
            Some(_) => self.report_layout(addr, layout, s),
        }
    }

    /// Frees the tiny sub-object at `addr` of a block in the 16-byte class span `s`;
    /// the last one out of a retired block frees the block.
    fn free_tiny(&self, s: &Span, addr: usize) {
        let block = addr - addr % tiny::BLOCK;
        let live_block = s.object_index(block).is_some_and(|i| s.is_allocated(i));
        if !live_block {
            // The whole block went back already: this sub-object was freed before.
            return self.refuse(addr, |ptr| FreeError::DoubleFree { ptr });
        }
        if addr % tiny::BLOCK < tiny::FIRST_OFFSET {
            return self.refuse(addr, |ptr| FreeError::Interior { ptr });
        }
        // SAFETY: the block is a live object of the 16-byte class (checked) and the
        // offset is past its mask.
        match unsafe { tiny::free(addr) } {
            tiny::Freed::Kept => {}
            tiny::Freed::NotLive => self.refuse(addr, |ptr| FreeError::DoubleFree { ptr }),
            // SAFETY: `block` is a non-null object start of `s`, empty and ours now.
            tiny::Freed::Empty => self.free_small(s, TINY_BLOCK_CLASS, unsafe {
                NonNull::new_unchecked(block as *mut u8)
            }),
        }
    }

    /// Frees an object of the small span `s` of `class` (the layout checked): refuses
    /// an interior pointer and a double free whose bit is already clear, then pushes
    /// the object onto this CPU's cache.
    #[inline(always)]
    fn free_small(&self, s: &Span, class: SizeClass, ptr: NonNull<u8>) {
        let addr = ptr.as_ptr() as usize;
        let Some(index) = s.object_index(addr) else {
            return self.refuse(addr, |ptr| FreeError::Interior { ptr });
        };
        // Read without the lock: an object the caller owns has its bit set, and only
        // a free can clear it; a clear bit proves a double free.
        if !s.is_allocated(index) {
            return self.refuse(addr, |ptr| FreeError::DoubleFree { ptr });
        }
        // Checked mode: an object in a CPU cache is free already.
        if !s.enter_cache(index) {
            return self.refuse(addr, |ptr| FreeError::DoubleFree { ptr });
        }
        // SAFETY: checked above: an allocated object of the span's class, outside
        // every cache (checked mode) or not provably inside one; the caller gives it
        // up.
        unsafe { self.push_free(class, ptr) };
    }

    /// Pushes the object `ptr` of `class`, given up by its caller, onto this CPU's
    /// cache: the free fast path once the object is trusted (by default, for a common
    /// layout) or known (after its span was looked up) to be an allocated object of
    /// `class`.
    ///
    /// # Safety
    ///
    /// `ptr` is an allocated object of `class` that its caller gives up.
    #[inline(always)]
    unsafe fn push_free(&self, class: SizeClass, ptr: NonNull<u8>) {
        self.poison(ptr, class.size());
        let pin = Pinned::<P>::enter();
        // SAFETY: pinned to the cache's CPU; the object is allocated, of `class`
        // (checked by the caller, or trusted for a common layout), and the caller
        // gives it up.
        if let Some(cache) = unsafe { self.any_cache(&pin).push(class, Object::new(ptr, false)) } {
            bump(&cache.counters.frees);
            return;
        }
        // A tail call, as in `alloc_small`.
        drop(pin);
        self.free_small_slow(class, ptr);
    }

    /// The cache's stack is full (flush a batch, then push), or the CPU has no cache
    /// yet (create it and push there), or no index (give the object to the central).
    /// Pins again, so it may run on another CPU than the fast path did: it pushes
    /// first and flushes only when that fails. In checked mode the object has entered
    /// the cache state already ([`Span::enter_cache`]).
    #[cold]
    #[inline(never)]
    fn free_small_slow(&self, class: SizeClass, ptr: NonNull<u8>) {
        let pin = Pinned::<P>::enter();
        let Some(cache) = self.cache_or_create(&pin) else {
            self.leave_cache(ptr);
            return self.put_small(class, ptr.as_ptr() as usize);
        };
        let object = Object::new(ptr, false);
        // SAFETY: as in `free_small`; pinned to the cache's CPU.
        let refused = if unsafe { cache.push(class, object) } {
            Refused::default()
        } else {
            let refused = self.flush_batch(cache, class);
            // SAFETY: as above; the flush made room, and nothing ran on this CPU
            // since (the refusals are reported after the push).
            let pushed = unsafe { cache.push(class, object) };
            debug_assert!(pushed, "a flush makes room");
            refused
        };
        bump(&cache.counters.frees);
        self.report_refused(refused);
    }

    #[cold]
    fn report_layout(&self, addr: usize, layout: Layout, span: &Span) {
        self.report(FreeError::WrongLayout {
            ptr: addr,
            layout,
            expected_size: span.object_size as usize,
        });
    }

    #[cold]
    fn free_large(&self, arena: NonNull<Arena>, span: NonNull<Span>, addr: usize, layout: Layout) {
        // SAFETY: as in `deallocate`.
        let s = unsafe { span.as_ref() };
        let pages = layout.size().div_ceil(PAGE_SIZE).max(1);
        let fits = s.pages as usize == pages && addr % layout.align() == 0;
        if s.kind != SpanKind::Large || s.base != addr || !fits {
            return self.report_layout(addr, layout, s);
        }
        // SAFETY: `addr` is the span's non-null base.
        self.poison(
            unsafe { NonNull::new_unchecked(addr as *mut u8) },
            layout.size(),
        );
        self.free_run(arena, span);
    }

    /// Returns an allocated object of `class` to its central directly (no cache).
    #[cold]
    #[inline(never)]
    fn put_small(&self, class: SizeClass, addr: usize) {
        let mut lists = self.centrals[class.index()].lock();
        let result = self.put_locked(&mut lists, class, addr);
        drop(lists);
        if let Err(error) = result {
            self.report(error);
        }
    }

    /// Returns the object at `addr` (checked by `deallocate`: a small object of
    /// `class`) to its span under the central lock; an emptied span goes back to the
    /// page heap. A double free is refused.
    fn put_locked(
        &self,
        lists: &mut CentralLists,
        class: SizeClass,
        addr: usize,
    ) -> Result<(), FreeError> {
        let (arena, span) = self.span_of(addr).ok_or(FreeError::Foreign { ptr: addr })?;
        // SAFETY: a span in the map is a live descriptor. Its class was checked at the
        // free of a tiny layout and with `verify-frees` or `checked`; a trusted free
        // of a small layout may name a span of another class or a large one:
        // refused below, before its bitmap is read. The bitmap of a span of `class`
        // is read under the class's lock.
        let s = unsafe { span.as_ref() };
        if s.class != Some(class) {
            return Err(FreeError::WrongLayout {
                ptr: addr,
                layout: class.layout(),
                expected_size: s.object_size as usize,
            });
        }
        let index = s
            .object_index(addr)
            .ok_or(FreeError::Interior { ptr: addr })?;
        if !s.is_allocated(index) {
            return Err(FreeError::DoubleFree { ptr: addr });
        }
        // SAFETY: a live span of this class with object `index` allocated.
        if let Released::Empty(empty) = unsafe { lists.put(span, index) } {
            // The released span may be the reserve span this one replaced, in another
            // arena.
            let empty_arena = if empty == span {
                arena
            } else {
                // SAFETY: a live empty span on no list, ours under the central lock.
                self.arena_of(unsafe { empty.as_ref() }.base)
            };
            // SAFETY: the span is empty and on no list; `empty_arena` holds it. The
            // central lock is still held: lock order central -> page heap.
            unsafe { self.pages.lock().free_span(empty_arena, empty) };
        }
        Ok(())
    }

    /// Resizes the block at `ptr` to `new_size` bytes (same alignment), in place when
    /// the size class does not change or a large object can shrink or grow into free
    /// neighbouring pages, else by moving it. `None` leaves the old block untouched.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by this heap for `layout`, and `new_size`, rounded up to
    /// `layout.align()`, does not overflow `isize`.
    pub unsafe fn reallocate(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let new_layout = Layout::from_size_align(new_size, layout.align()).ok()?;
        let old_class = class_of(layout.size(), layout.align());
        let new_class = class_of(new_size, layout.align());
        // A tiny sub-object has no room to grow in its block, and a layout that is not
        // tiny (0 bytes, say) could not free it there.
        let tiny_moves = tiny::is_tiny(layout.size(), layout.align())
            && (new_size > layout.size() || !tiny::is_tiny(new_size, layout.align()));
        match (old_class, new_class) {
            (Some(old), Some(new)) if old == new && !tiny_moves => return Some(ptr),
            (None, None) => {
                if let Some(moved) = self.resize_large_in_place(ptr, new_size) {
                    return moved.then_some(ptr);
                }
            }
            _ => {}
        }
        let new = self.allocate(new_layout)?;
        // SAFETY: both blocks are live, distinct, and at least min(old, new) bytes.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), layout.size().min(new_size));
            self.deallocate(ptr, layout);
        }
        Some(new)
    }

    /// `Some(true)`: resized in place; `None`: the caller must move the object.
    fn resize_large_in_place(&self, ptr: NonNull<u8>, new_size: usize) -> Option<bool> {
        let pin = Pinned::<P>::enter();
        let addr = ptr.as_ptr() as usize;
        let (arena, span) = self.span_of(addr)?;
        // SAFETY: the caller's live large object keeps its span live.
        let s = unsafe { span.as_ref() };
        if s.kind != SpanKind::Large || s.base != addr {
            return None;
        }
        // A large object keeps at least a page, even at 0 bytes (aligned beyond a page).
        let new_pages = new_size.div_ceil(PAGE_SIZE).max(1);
        if new_pages == s.pages as usize {
            return Some(true);
        }
        let mut heap = self.pages.lock();
        // SAFETY: a live large span of `arena`.
        let resized = unsafe { heap.resize_large(arena, span, new_pages) };
        if resized.is_some() || new_pages < s.pages as usize {
            return resized.map(|_| true);
        }
        // The pages after the object may be in this CPU's page cache (a short object
        // comes from there): give them back and try once more.
        let cache = self.cache(&pin).filter(|cache| cache.pages.holds(arena))?;
        // SAFETY: pinned to the cache's CPU; the page heap is locked.
        unsafe { cache.pages.give_all(&mut heap) };
        // SAFETY: as above.
        unsafe { heap.resize_large(arena, span, new_pages) }.map(|_| true)
    }

    /// Allocates `count` whole pages aligned to `align` bytes (a power of two; at
    /// least a page is used), for page tables, DMA buffers and the like. `None` when
    /// no such run is free.
    pub fn alloc_pages(&self, count: usize, align: usize) -> Option<NonNull<u8>> {
        let arena_pages = self.config.arena_size / PAGE_SIZE;
        let align = (align / PAGE_SIZE).max(1);
        if count == 0 || count > arena_pages || !align.is_power_of_two() || align > arena_pages {
            return None;
        }
        let pin = Pinned::<P>::enter();
        let new = self.new_run(&pin, count, align, SpanKind::Pages)?;
        // SAFETY: a live span we just created.
        NonNull::new(unsafe { new.span.as_ref().base } as *mut u8)
    }

    /// Frees a run from [`SpanHeap::alloc_pages`]; a wrong pointer or count is refused
    /// and reported.
    ///
    /// # Safety
    ///
    /// `ptr` and `count` are those of a live run from this heap, not used after this.
    pub unsafe fn free_pages(&self, ptr: NonNull<u8>, count: usize) {
        let addr = ptr.as_ptr() as usize;
        let Some((arena, span)) = self.span_of(addr) else {
            return self.report(FreeError::Foreign { ptr: addr });
        };
        // SAFETY: a live descriptor (see `deallocate`).
        let s = unsafe { span.as_ref() };
        if s.kind != SpanKind::Pages || s.base != addr || s.pages as usize != count {
            let layout = Layout::from_size_align(count.saturating_mul(PAGE_SIZE), PAGE_SIZE)
                .unwrap_or(Layout::new::<u8>());
            return self.report(FreeError::WrongLayout {
                ptr: addr,
                layout,
                expected_size: s.bytes(),
            });
        }
        self.free_run(arena, span);
    }

    /// Allocates a kernel stack of at least `size` bytes: the size is rounded up to a
    /// power of two of at least 4 KiB and the stack is aligned to it (so a guard
    /// check or a per-stack lookup can mask the stack pointer). 4 to 32 KiB come
    /// from this CPU's stack cache over the stack pools, larger ones from free lists
    /// by size over the page heap. `None` when there is no room.
    pub fn alloc_stack(&self, size: usize) -> Option<Stack> {
        let size = stack_size(size)?;
        let pin = Pinned::<P>::enter();
        let Some(order) = order_of(size) else {
            return self.alloc_large_stack(size);
        };
        if let Some(cache) = self.cache(&pin) {
            // SAFETY: pinned to the cache's CPU.
            if let Some(base) = unsafe { cache.pop_stack(order) } {
                self.leave_cache(base);
                return Some(Stack::new(base, size));
            }
        }
        let base = self.refill_stacks(order, &pin).or_else(|| {
            self.retry_after_trim(POOL_SPAN_PAGES, POOL_SPAN_PAGES, || {
                self.refill_stacks(order, &pin)
            })
        })?;
        Some(Stack::new(base, size))
    }

    /// Takes a stack of `order` from its pool, and (with a cache) enough more to fill
    /// the CPU's stack cache to half.
    #[cold]
    fn refill_stacks(&self, order: usize, pin: &Pinned<P>) -> Option<NonNull<u8>> {
        let cache = self.cache_or_create(pin);
        let mut pool = self.stacks.pools[order].lock();
        let first = pool.take(order, &self.pages)?;
        if let Some(cache) = cache {
            while cache.stacks(order) < STACK_CACHE / 2 - 1 {
                let Some(more) = pool.take(order, &self.pages) else {
                    break;
                };
                let more = NonNull::new(more as *mut u8)?;
                let entered = self.enter_cache(more);
                debug_assert!(entered, "a stack fresh from its pool is in no cache");
                // SAFETY: pinned to the cache's CPU; a free stack we now hold.
                unsafe { cache.push_stack(order, more) };
            }
        }
        NonNull::new(first as *mut u8)
    }

    #[cold]
    fn alloc_large_stack(&self, size: usize) -> Option<Stack> {
        let pages = size / PAGE_SIZE;
        if pages > self.config.arena_size / PAGE_SIZE {
            return None;
        }
        let kept = self.stacks.large.lock().take(pages);
        let span = match kept {
            Some(span) => span,
            None => self.new_whole_span(pages, pages, SpanKind::Stack)?.span,
        };
        // SAFETY: a live stack span, ours.
        let base = unsafe { span.as_ref() }.base;
        Some(Stack::new(NonNull::new(base as *mut u8)?, size))
    }

    /// Frees a stack from [`SpanHeap::alloc_stack`]. A stack the heap can prove wrong
    /// (not a stack of this heap, wrong size, already free) is refused and reported.
    ///
    /// # Safety
    ///
    /// The stack is not in use (no CPU runs on it) and not used after this call.
    pub unsafe fn free_stack(&self, stack: Stack) {
        let (base, size) = stack.into_raw();
        let addr = base.as_ptr() as usize;
        let Some((_, span)) = self.span_of(addr) else {
            return self.report(FreeError::Foreign { ptr: addr });
        };
        // SAFETY: a live descriptor (see `deallocate`).
        let s = unsafe { span.as_ref() };
        let order = order_of(size);
        let fits = match order {
            Some(_) => s.object_size as usize == size,
            None => s.base == addr && s.bytes() == size,
        };
        if s.kind != SpanKind::Stack || !fits {
            let layout = Layout::from_size_align(size, size).unwrap_or(Layout::new::<u8>());
            return self.report_layout(addr, layout, s);
        }
        let Some(order) = order else {
            let _pin = Pinned::<P>::enter();
            let mut large = self.stacks.large.lock();
            // A large stack on a free list is already free (its `list` is written
            // under this lock).
            if s.list != SpanList::None {
                drop(large);
                return self.report(FreeError::DoubleFree { ptr: addr });
            }
            // SAFETY: a live large stack span the caller gives up, on no list.
            return unsafe { large.put(span, size / PAGE_SIZE) };
        };
        match s.object_index(addr) {
            None => return self.report(FreeError::Interior { ptr: addr }),
            // Checked mode: a stack in a CPU's stack cache is free already.
            Some(index) if !s.is_allocated(index) || !s.enter_cache(index) => {
                return self.report(FreeError::DoubleFree { ptr: addr })
            }
            Some(_) => {}
        }
        let pin = Pinned::<P>::enter();
        if let Some(cache) = self.cache(&pin) {
            // SAFETY: pinned to the cache's CPU; the stack is ours to give.
            if unsafe { cache.push_stack(order, base) } {
                return;
            }
            self.release_stacks(cache, order, STACK_CACHE / 2);
            // SAFETY: as above; the release made room.
            let pushed = unsafe { cache.push_stack(order, base) };
            debug_assert!(pushed);
            return;
        }
        self.leave_cache(base);
        let mut pool = self.stacks.pools[order].lock();
        let result = self.put_stack_locked(&mut pool, addr);
        drop(pool);
        if let Err(error) = result {
            self.report(error);
        }
    }

    /// Gives up to `n` of `cache`'s stacks of `order` back to the pool.
    fn release_stacks(&self, cache: &CpuCache, order: usize, n: usize) {
        if cache.stacks(order) == 0 {
            return;
        }
        let mut pool = self.stacks.pools[order].lock();
        let mut refused = Refused::default();
        for _ in 0..n {
            // SAFETY: pinned to the cache's CPU, or the CPU is offline (callers).
            let Some(base) = (unsafe { cache.pop_stack(order) }) else {
                break;
            };
            self.leave_cache(base);
            refused.add(self.put_stack_locked(&mut pool, base.as_ptr() as usize));
        }
        drop(pool);
        self.report_refused(refused);
    }

    /// Returns the pooled stack at `addr` to its pool span (the pool's lock is held);
    /// an emptied span goes back to the page heap.
    fn put_stack_locked(&self, pool: &mut PoolLists, addr: usize) -> Result<(), FreeError> {
        let (arena, span) = self.span_of(addr).ok_or(FreeError::Foreign { ptr: addr })?;
        // SAFETY: a live pool span (checked at the free); its bitmap is read under the
        // pool lock.
        let s = unsafe { span.as_ref() };
        let index = s
            .object_index(addr)
            .ok_or(FreeError::Interior { ptr: addr })?;
        if !s.is_allocated(index) {
            return Err(FreeError::DoubleFree { ptr: addr });
        }
        // SAFETY: a live pool span of this order with stack `index` in use.
        if let Some(empty) = unsafe { pool.put(span, index) } {
            // SAFETY: an empty pool span on no list; lock order pool -> page heap.
            unsafe { self.pages.lock().free_span(arena, empty) };
        }
        Ok(())
    }

    /// Records that the heap's memory is mapped at `virtual = physical + offset` (the
    /// bootloader's physical-memory offset), for [`SpanHeap::phys_addr`].
    pub fn set_phys_offset(&self, offset: usize) {
        self.phys_offset.store(offset, Ordering::Relaxed);
    }

    /// The physical address of `ptr` (from [`SpanHeap::alloc_pages`], say), when a
    /// physical offset was set.
    pub fn phys_addr(&self, ptr: NonNull<u8>) -> Option<usize> {
        match self.phys_offset.load(Ordering::Relaxed) {
            NO_PHYS_OFFSET => None,
            offset => (ptr.as_ptr() as usize).checked_sub(offset),
        }
    }

    /// Empties the running CPU's cache into the centrals, gives the objects in the
    /// centrals' transfer caches back to their spans, then gives the centrals' reserve
    /// spans back to the page heap. Other CPUs' caches are theirs: see
    /// [`SpanHeap::drain_cpu`] and [`SpanHeap::drain_offline_cpu`].
    pub fn trim(&self) {
        let pin = Pinned::<P>::enter();
        if let Some(cache) = self.cache(&pin) {
            self.flush_all(cache);
        }
        for class in SizeClass::all() {
            self.drain_transfer(class);
            let mut lists = self.centrals[class.index()].lock();
            let mut pages = self.pages.lock();
            lists.trim(&mut pages, |addr| self.arena_of(addr));
        }
        let mut large = self.stacks.large.lock();
        while let Some(span) = large.pop_any() {
            // SAFETY: a free large stack span, on no list now.
            let arena = self.arena_of(unsafe { span.as_ref() }.base);
            // SAFETY: as above; lock order stack pool -> page heap.
            unsafe { self.pages.lock().free_span(arena, span) };
        }
    }

    /// Gives every object in `class`'s transfer cache back to its span.
    fn drain_transfer(&self, class: SizeClass) {
        let mut lists = self.centrals[class.index()].lock();
        let mut refused = Refused::default();
        while let Some(object) = lists.transfer_take() {
            refused.add(self.put_cached(&mut lists, class, object));
        }
        drop(lists);
        self.report_refused(refused);
    }

    /// Empties the running CPU's cache into the centrals (memory pressure, or before
    /// the CPU goes offline).
    pub fn drain_cpu(&self) {
        let pin = Pinned::<P>::enter();
        if let Some(cache) = self.cache(&pin) {
            self.flush_all(cache);
        }
    }

    /// Empties the cache of CPU `index`, which is not running heap code, into the
    /// centrals. Does nothing for an index without a cache.
    ///
    /// # Safety
    ///
    /// CPU `index` (or the thread holding it) makes no heap call until this returns:
    /// it is offline, halted, or known to be elsewhere.
    pub unsafe fn drain_offline_cpu(&self, index: usize) {
        let _pin = Pinned::<P>::enter();
        // Its CPU is not using the cache (caller), so this context has it alone.
        if let Some(cache) = self.cache_at(index) {
            self.flush_all(cache);
        }
    }

    /// Counters of CPU `index`'s cache, `None` when it has none. Read without stopping
    /// the CPU: each counter is exact, the set is not a snapshot.
    pub fn cpu_stats(&self, index: usize) -> Option<CpuStats> {
        // Only relaxed atomic loads are made through the reference.
        let cache = self.cache_at(index)?;
        let c = &cache.counters;
        Some(CpuStats {
            allocs: c.allocs.load(Ordering::Relaxed),
            frees: c.frees.load(Ordering::Relaxed),
            refills: c.refills.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            cached_bytes: SizeClass::all()
                .map(|k| cache.len(k) * k.size())
                .sum::<usize>()
                + cache.pages.pages() * PAGE_SIZE,
            tiny: c.tiny.load(Ordering::Relaxed),
            page_runs: cache.pages.counts.served.load(Ordering::Relaxed),
        })
    }

    /// The caches that exist, with their CPU index.
    fn caches(&self) -> impl Iterator<Item = (usize, &CpuCache)> + '_ {
        (0..MAX_CPUS).filter_map(|i| Some((i, self.cache_at(i)?)))
    }

    /// Every lock, in lock order: centrals, stack pools, page heap.
    fn lock_all(&self) -> Locked<'_> {
        Locked {
            centrals: core::array::from_fn(|i| self.centrals[i].lock()),
            pools: core::array::from_fn(|i| self.stacks.pools[i].lock()),
            large: self.stacks.large.lock(),
            pages: self.pages.lock(),
        }
    }

    /// A consistent snapshot of the heap's counters (every lock held while reading).
    ///
    /// Objects in CPU caches are read without stopping those CPUs: the snapshot is
    /// exact (and balances) when no other CPU is allocating meanwhile.
    pub fn stats(&self) -> Stats {
        let _pin = Pinned::<P>::enter();
        self.snapshot(&self.lock_all())
    }

    fn snapshot(&self, locked: &Locked<'_>) -> Stats {
        let (centrals, pages) = (&locked.centrals, &*locked.pages);
        // The page heap's run counters and the page caches' deltas sum (wrapping) to
        // the live runs.
        let (mut large_pages, mut large_objects, mut run_pages) =
            (pages.large_pages, pages.large_objects, pages.run_pages);
        let mut page_cache_pages = 0;
        for (_, cache) in self.caches() {
            let counts = &cache.pages.counts;
            large_pages = large_pages.wrapping_add(counts.large_pages.load(Ordering::Relaxed));
            large_objects =
                large_objects.wrapping_add(counts.large_objects.load(Ordering::Relaxed));
            run_pages = run_pages.wrapping_add(counts.run_pages.load(Ordering::Relaxed));
            page_cache_pages += cache.pages.pages();
        }
        let mut stats = Stats {
            bad_frees: self.bad_frees.load(Ordering::Relaxed),
            large_objects,
            large_bytes: large_pages * PAGE_SIZE,
            page_run_bytes: run_pages * PAGE_SIZE,
            free_bytes: pages.free_pages() * PAGE_SIZE,
            cached_bytes: page_cache_pages * PAGE_SIZE,
            page_cache_bytes: page_cache_pages * PAGE_SIZE,
            ..Stats::default()
        };
        for arena in pages.arenas() {
            // SAFETY: every lock is held (`locked`).
            let st = unsafe { arena.state() };
            stats.arenas += 1;
            stats.managed_bytes += st.managed_pages * PAGE_SIZE;
            stats.metadata_bytes += st.metadata_pages * PAGE_SIZE;
        }
        stats.metadata_bytes += pages.cache_pages * PAGE_SIZE;
        stats.cpu_caches = self.caches().count();
        for class in SizeClass::all() {
            let lists = &centrals[class.index()];
            let mut cached: usize = self.caches().map(|(_, cache)| cache.len(class)).sum();
            let transferred = lists.transferred().len();
            stats.transfer_bytes += transferred * class.size();
            cached += transferred;
            if class == TINY_BLOCK_CLASS {
                // A CPU's current tiny block is held by its cache (its live
                // sub-objects, at most 14 bytes, count as cached with it).
                cached += self
                    .caches()
                    .filter(|(_, cache)| cache.tiny_block.load(Ordering::Relaxed) != 0)
                    .count();
            }
            // A stack may have grown since the central was read (the snapshot is
            // exact only when other CPUs are idle): never report a negative count.
            let cached = cached.min(lists.allocated);
            let c = ClassStats {
                size: class.size(),
                objects: lists.allocated - cached,
                cached,
                spans: lists.spans,
                span_bytes: lists.spans * class.pages() * PAGE_SIZE,
            };
            stats.small_bytes += c.objects * c.size;
            stats.cached_bytes += c.cached * c.size;
            stats.span_free_bytes += c.span_bytes - (c.objects + c.cached) * c.size;
            stats.classes[class.index()] = c;
        }
        let mut pool_pages = 0;
        for (order, pool) in locked.pools.iter().enumerate() {
            let size = order_size(order);
            let cached: usize = self.caches().map(|(_, cache)| cache.stacks(order)).sum();
            let cached = cached.min(pool.in_use);
            stats.stacks += pool.in_use - cached;
            stats.stack_bytes += (pool.in_use - cached) * size;
            stats.cached_bytes += cached * size;
            stats.span_free_bytes += pool.spans * POOL_SPAN_PAGES * PAGE_SIZE - pool.in_use * size;
            pool_pages += pool.spans * POOL_SPAN_PAGES;
        }
        let large_stack_pages = pages.stack_pages - pool_pages - locked.large.free_pages;
        stats.stack_bytes += large_stack_pages * PAGE_SIZE;
        stats.span_free_bytes += locked.large.free_pages * PAGE_SIZE;
        stats.in_use_bytes =
            stats.small_bytes + stats.large_bytes + stats.page_run_bytes + stats.stack_bytes;
        stats
    }

    /// Walks every arena, span and central list and checks the invariants of each
    /// layer. O(pages); for tests and checked builds.
    ///
    /// # Errors
    ///
    /// A message naming the first invariant found broken.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let _pin = Pinned::<P>::enter();
        let locked = self.lock_all();
        let (centrals, pages) = (&locked.centrals, &*locked.pages);
        let mut pool_stacks = [0usize; ORDERS];
        let mut pool_spans = [0usize; ORDERS];
        let mut allocated = [0usize; NUM_CLASSES];
        let mut spans = [0usize; NUM_CLASSES];
        #[cfg(feature = "checked")]
        let mut marked_cached = 0;
        for arena in pages.arenas() {
            // SAFETY: every lock is held (`locked`).
            let st = unsafe { arena.state() };
            st.bitmap.check_invariants()?;
            let mut span_pages = 0;
            let mut page = 0;
            while page < arena.pages() {
                let span = arena.span_at(page);
                if span.is_null() {
                    page += 1;
                    continue;
                }
                // SAFETY: a span-map entry names a live descriptor (arena invariant).
                let s = unsafe { &*span };
                if s.base != arena.addr_of(page) || s.end() > arena.end() {
                    return Err("span map: entry does not start its span");
                }
                let n = s.pages as usize;
                if (page..page + n).any(|p| st.bitmap.is_free(p)) {
                    return Err("span map: a live span's page is free in the bitmap");
                }
                s.check()?;
                match s.kind {
                    SpanKind::Small => {
                        if (page..page + n).any(|p| arena.span_at(p) != span) {
                            return Err("span map: a small span's page is not mapped to it");
                        }
                        let class = s.class.ok_or("span: a small span without a class")?;
                        allocated[class.index()] += s.allocated as usize;
                        #[cfg(feature = "checked")]
                        {
                            marked_cached += s.cached_objects();
                        }
                        spans[class.index()] += 1;
                    }
                    SpanKind::Stack => {
                        if (page..page + n).any(|p| arena.span_at(p) != span) {
                            return Err("span map: a stack span's page is not mapped to it");
                        }
                        if let Some(order) = order_of(s.object_size as usize) {
                            pool_stacks[order] += s.allocated as usize;
                            #[cfg(feature = "checked")]
                            {
                                marked_cached += s.cached_objects();
                            }
                            pool_spans[order] += 1;
                        }
                    }
                    SpanKind::Large | SpanKind::Pages | SpanKind::Cache => {
                        if (page + 1..page + n).any(|p| !arena.span_at(p).is_null()) {
                            return Err("span map: a large span's inner page is mapped");
                        }
                    }
                }
                span_pages += n;
                page += n;
            }
            let a: *const Arena = arena;
            let cached: usize = self
                .caches()
                // SAFETY: the caller of `check_invariants` keeps other CPUs idle.
                .map(|(_, cache)| unsafe { cache.pages.pages_in(a) })
                .sum();
            if st.bitmap.free_pages() + span_pages + st.metadata_pages + cached != st.managed_pages
            {
                return Err(
                    "arena: free + span + metadata + page-cache pages differ from managed pages",
                );
            }
        }
        for class in SizeClass::all() {
            let i = class.index();
            let lists = &centrals[i];
            lists.check(class)?;
            if lists.allocated != allocated[i] || lists.spans != spans[i] {
                return Err("central: counters differ from the spans in the span map");
            }
            for object in lists.transferred() {
                self.check_cached(object.addr().as_ptr() as usize, class)?;
            }
        }
        self.check_caches()?;
        self.check_page_caches(pages)?;
        #[cfg(feature = "checked")]
        {
            let cached: usize = self
                .caches()
                .map(|(_, cache)| {
                    let objects: usize = SizeClass::all().map(|class| cache.len(class)).sum();
                    objects + (0..ORDERS).map(|order| cache.stacks(order)).sum::<usize>()
                })
                .sum::<usize>()
                + centrals
                    .iter()
                    .map(|lists| lists.transferred().len())
                    .sum::<usize>();
            if cached != marked_cached {
                return Err("checked: objects marked cached differ from the caches' objects");
            }
        }
        for (order, pool) in locked.pools.iter().enumerate() {
            if pool.in_use != pool_stacks[order] || pool.spans != pool_spans[order] {
                return Err("stack pool: counters differ from the spans in the span map");
            }
        }
        if !self.snapshot(&locked).balances() {
            return Err("stats do not balance");
        }
        Ok(())
    }

    /// Every page a page cache holds is in use in its arena's bitmap and belongs to
    /// no span. Call it with other CPUs idle and the page heap locked.
    fn check_page_caches(&self, pages: &PageHeap) -> Result<(), &'static str> {
        for (_, cache) in self.caches() {
            let Some((arena, held)) = cache.pages.held() else {
                continue;
            };
            let arena = pages
                .arenas()
                .find(|a| core::ptr::eq(*a, arena))
                .ok_or("page cache: group in no arena")?;
            // SAFETY: the page heap is locked (`pages`).
            let st = unsafe { arena.state() };
            for page in held {
                if st.bitmap.is_free(page) {
                    return Err("page cache: a held page is free in the page heap");
                }
                let span = arena.span_at(page);
                // SAFETY: a span-map entry names a live descriptor.
                if !span.is_null() && unsafe { (*span).end() } > arena.addr_of(page) {
                    return Err("page cache: a held page belongs to a span");
                }
            }
        }
        Ok(())
    }

    /// Every cached object is an allocated object of its stack's class. Reads other
    /// CPUs' stacks: call it when they are idle.
    fn check_caches(&self) -> Result<(), &'static str> {
        for (_, cache) in self.caches() {
            for class in SizeClass::all() {
                if cache.len(class) > CpuCache::capacity(class) {
                    return Err("cache: stack longer than its capacity");
                }
                // SAFETY: the caller of `check_invariants` keeps other CPUs idle.
                for addr in unsafe { cache.objects(class) } {
                    self.check_cached(addr, class)?;
                }
            }
        }
        Ok(())
    }

    /// The object at `addr`, in a CPU cache or a transfer cache of `class`, is an
    /// allocated object of that class (marked cached in checked mode). Call it with
    /// the central locks held.
    fn check_cached(&self, addr: usize, class: SizeClass) -> Result<(), &'static str> {
        let (_, span) = self
            .span_of(addr)
            .ok_or("cache: object outside every span")?;
        // SAFETY: a span-map entry is a live descriptor; the central locks are held by
        // the caller.
        let s = unsafe { span.as_ref() };
        if s.class != Some(class) {
            return Err("cache: object in the stack of another class");
        }
        match s.object_index(addr) {
            Some(index) if s.is_allocated(index) => {
                #[cfg(feature = "checked")]
                if !s.is_cached(index) {
                    return Err("checked: a cached object is not marked cached");
                }
                Ok(())
            }
            _ => Err("cache: object free in its span, or not an object"),
        }
    }
}

// SAFETY: all shared state is behind spin locks or atomics, and per-CPU caches are
// reached only through the platform's critical section; the raw pointers inside
// refer to heap metadata that lives as long as the heap.
unsafe impl<P: Platform> Sync for SpanHeap<P> {}
// SAFETY: as above; nothing is tied to a thread.
unsafe impl<P: Platform> Send for SpanHeap<P> {}

// SAFETY: `allocate` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` that no other live allocation overlaps, or null; `dealloc`,
// `realloc` and `alloc_zeroed` keep GlobalAlloc's contracts (see their docs).
unsafe impl<P: Platform> GlobalAlloc for SpanHeap<P> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate_zeroed(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout` and
        // is given up (null is ignored).
        unsafe { self.free_addr(ptr as usize, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(ptr) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        // SAFETY: GlobalAlloc's contract matches `reallocate`'s.
        unsafe { self.reallocate(ptr, layout, new_size) }.map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_heap::MAX_ARENAS;
    use crate::platform::HostThreads;
    use crate::range::InitialContents;
    use std::alloc::{alloc_zeroed, dealloc};

    /// A heap over a fresh, zeroed, 2 MiB-aligned region of `size` bytes from std.
    pub(crate) struct TestHeap {
        pub(crate) heap: SpanHeap<HostThreads>,
        base: *mut u8,
        layout: Layout,
    }

    impl TestHeap {
        pub(crate) fn new(size: usize, arena_size: usize) -> Self {
            let layout = Layout::from_size_align(size, 2 << 20).unwrap();
            // SAFETY: a non-zero size.
            let base = unsafe { alloc_zeroed(layout) };
            assert!(!base.is_null());
            let config = Config {
                arena_size,
                contents: InitialContents::Zeroed,
                ..Config::DEFAULT
            };
            let heap = SpanHeap::with_config(config);
            // SAFETY: the region is ours for the TestHeap's life.
            unsafe { heap.add_memory(MemoryRange::new(base as usize, base as usize + size)) }
                .unwrap();
            // The tests count refused frees in the stats; checked mode's default hook
            // (a panic) has its own test.
            heap.set_error_hook(|_| {});
            Self { heap, base, layout }
        }
    }

    impl Drop for TestHeap {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.base, self.layout) };
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// `true` when every byte of `bytes` is `value`; under Miri (where a byte at a
    /// time is slow) every 61st byte.
    fn all_bytes_are(bytes: &[u8], value: u8) -> bool {
        let step = if cfg!(miri) { 61 } else { 1 };
        bytes.iter().step_by(step).all(|&b| b == value)
    }

    #[test]
    fn small_objects_are_distinct_aligned_and_balance() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let mut blocks = Vec::new();
        let count = if cfg!(miri) { 300 } else { 2000 };
        for i in 0..count {
            let l = layout(1 + i % 300, 1 << (i % 6));
            let p = t.heap.allocate(l).unwrap();
            assert_eq!(p.as_ptr() as usize % l.align(), 0);
            // SAFETY: the block is ours, l.size() bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), i as u8, l.size()) };
            blocks.push((p, l, i as u8));
        }
        let stats = t.heap.stats();
        assert!(stats.balances(), "{stats}");
        assert!(stats.small_bytes >= blocks.iter().map(|b| b.1.size()).sum::<usize>());
        t.heap.check_invariants().unwrap();
        for (p, l, fill) in blocks {
            // SAFETY: live blocks of ours.
            let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), l.size()) };
            assert!(bytes.iter().all(|b| *b == fill), "block overwritten");
            // SAFETY: allocated above with `l`.
            unsafe { t.heap.deallocate(p, l) };
        }
        let stats = t.heap.stats();
        assert_eq!(stats.in_use_bytes, 0);
        assert!(stats.balances());
        t.heap.check_invariants().unwrap();
    }

    #[test]
    fn large_objects_align_and_come_back() {
        let t = TestHeap::new(16 << 20, 16 << 20);
        let s = t.heap.stats();
        let free_before = s.free_bytes + s.metadata_bytes;
        let l = layout(100_000, 1 << 20);
        let p = t.heap.allocate(l).unwrap();
        assert_eq!(p.as_ptr() as usize % (1 << 20), 0);
        let stats = t.heap.stats();
        assert_eq!(stats.large_bytes, 25 * PAGE_SIZE);
        assert!(stats.balances());
        // SAFETY: allocated above.
        unsafe { t.heap.deallocate(p, l) };
        let s = t.heap.stats();
        assert_eq!(
            s.free_bytes + s.metadata_bytes,
            free_before,
            "only a descriptor slab kept"
        );
        t.heap.check_invariants().unwrap();
    }

    /// Runs `first` and `second` on two threads that each hold a CPU index from
    /// before either starts until both are done, so they are two CPUs (an exited
    /// thread's index, and its cache, would pass to the next thread).
    fn on_two_cpus(first: impl FnOnce() + Send, second: impl FnOnce() + Send) {
        let both = std::sync::Barrier::new(2);
        let both = &both;
        std::thread::scope(|scope| {
            for work in [
                Box::new(first) as Box<dyn FnOnce() + Send>,
                Box::new(second),
            ] {
                scope.spawn(move || {
                    HostThreads::current();
                    both.wait();
                    work();
                    both.wait();
                });
            }
        });
    }

    /// A small xorshift generator for the tests' random choices.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A short run: a large object or a pages run of fewer than 16 pages, filled
    /// with `tag`.
    #[derive(Clone, Copy)]
    enum Run {
        Large(usize, Layout),
        Pages(usize, usize),
    }

    impl Run {
        fn take(heap: &SpanHeap<HostThreads>, rng: &mut u64, tag: u8) -> Run {
            let r = next(rng);
            let run = if r % 3 == 0 {
                let count = 1 + (r >> 8) as usize % 15;
                let align = PAGE_SIZE << ((r >> 16) % 5);
                let p = heap.alloc_pages(count, align).unwrap();
                assert_eq!(p.as_ptr() as usize % align, 0);
                Run::Pages(p.as_ptr() as usize, count)
            } else {
                let size = 32 * 1024 + 1 + (r >> 8) as usize % (28 * 1024);
                let l = layout(size, 8);
                Run::Large(heap.allocate(l).unwrap().as_ptr() as usize, l)
            };
            let (addr, len) = run.range();
            // SAFETY: a fresh block of `len` bytes.
            unsafe { ptr::write_bytes(addr as *mut u8, tag, len) };
            run
        }

        fn range(self) -> (usize, usize) {
            match self {
                Run::Large(addr, l) => (addr, l.size()),
                Run::Pages(addr, count) => (addr, count * PAGE_SIZE),
            }
        }

        /// Checks the fill and frees the run.
        fn give(self, heap: &SpanHeap<HostThreads>, tag: u8) {
            let (addr, len) = self.range();
            // SAFETY: a live block of `len` bytes.
            let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
            assert!(all_bytes_are(bytes, tag), "run at {addr:#x} overwritten");
            let p = NonNull::new(addr as *mut u8).unwrap();
            // SAFETY: live, from this heap, not used after this.
            unsafe {
                match self {
                    Run::Large(_, l) => heap.deallocate(p, l),
                    Run::Pages(_, count) => heap.free_pages(p, count),
                }
            }
        }
    }

    #[test]
    fn short_runs_come_from_the_page_cache_and_go_back() {
        let t = TestHeap::new(16 << 20, 4 << 20);
        let heap = &t.heap;
        let cpu = HostThreads::current().unwrap();
        // Create this CPU's cache first, so that its pages are in `start`.
        let warm = heap.allocate(layout(64, 8)).unwrap();
        // SAFETY: just allocated.
        unsafe { heap.deallocate(warm, layout(64, 8)) };
        heap.trim();
        let start = heap.stats();
        let mut rng = 0x9E37_79B9_7F4A_7C15;
        let mut live: Vec<(Run, u8)> = Vec::new();
        let steps = if cfg!(miri) { 40 } else { 3_000 };
        for step in 0..steps {
            if live.len() > 40 || (!live.is_empty() && next(&mut rng) % 3 == 0) {
                let i = next(&mut rng) as usize % live.len();
                let (run, tag) = live.swap_remove(i);
                run.give(heap, tag);
            } else {
                let tag = step as u8;
                live.push((Run::take(heap, &mut rng, tag), tag));
            }
        }
        let mut ranges: Vec<_> = live.iter().map(|(run, _)| run.range()).collect();
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "runs overlap"
        );
        let stats = heap.stats();
        assert!(stats.balances(), "{stats}");
        assert!(stats.large_objects > 0 || stats.page_run_bytes > 0);
        heap.check_invariants().unwrap();
        let served = heap.cpu_stats(cpu).unwrap().page_runs;
        assert!(served > steps / 3, "only {served} runs from the page cache");
        for (run, tag) in live {
            run.give(heap, tag);
        }
        let stats = heap.stats();
        assert_eq!(
            (stats.large_objects, stats.large_bytes, stats.page_run_bytes),
            (0, 0, 0)
        );
        assert!(stats.balances(), "{stats}");
        heap.check_invariants().unwrap();
        heap.trim();
        let end = heap.stats();
        assert_eq!(end.cached_bytes, 0, "{end}");
        assert_eq!(end.free_bytes, start.free_bytes, "every page back: {end}");
        heap.check_invariants().unwrap();
    }

    #[test]
    fn short_runs_fill_the_whole_heap_again_after_exhaustion() {
        let t = TestHeap::new(4 << 20, 4 << 20);
        let l = layout(40_000, 8);
        let fill = || {
            let mut runs = Vec::new();
            while let Some(p) = t.heap.allocate(l) {
                runs.push(p);
            }
            runs
        };
        let first = fill();
        assert!(
            first.len() > 80,
            "only {} runs of 10 pages in 4 MiB",
            first.len()
        );
        for p in &first {
            // SAFETY: from allocate(l), freed once.
            unsafe { t.heap.deallocate(*p, l) };
        }
        t.heap.check_invariants().unwrap();
        let second = fill();
        assert_eq!(second.len(), first.len(), "the same runs fit again");
        for p in second {
            // SAFETY: as above.
            unsafe { t.heap.deallocate(p, l) };
        }
        t.heap.trim();
        let stats = t.heap.stats();
        assert_eq!((stats.in_use_bytes, stats.cached_bytes), (0, 0), "{stats}");
        t.heap.check_invariants().unwrap();
    }

    #[test]
    fn runs_freed_on_another_cpu_go_back_in_batches() {
        let t = TestHeap::new(16 << 20, 4 << 20);
        let heap = &t.heap;
        let before = heap.stats();
        let rounds = if cfg!(miri) { 1 } else { 40 };
        // Bounded, so that the allocating thread stays at most two rounds ahead.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Run>>(1);
        let produce = move || {
            let mut rng = 77;
            for round in 0..rounds {
                let runs = (0..37)
                    .map(|_| Run::take(heap, &mut rng, round as u8))
                    .collect();
                tx.send(runs).unwrap();
            }
        };
        let consume = move || {
            for (round, runs) in rx.into_iter().enumerate() {
                for run in runs {
                    // Zeroed requests meanwhile: never handed pages with old bytes.
                    let z = layout(40_000, 8);
                    let p = heap.allocate_zeroed(z).unwrap();
                    // SAFETY: a fresh zeroed block of 40_000 bytes.
                    let zero = unsafe { core::slice::from_raw_parts(p.as_ptr(), 40_000) };
                    assert!(all_bytes_are(zero, 0), "allocate_zeroed not zeroed");
                    // SAFETY: p from allocate_zeroed(z).
                    unsafe { heap.deallocate(p, z) };
                    run.give(heap, round as u8);
                }
            }
        };
        on_two_cpus(produce, consume);
        let stats = heap.stats();
        assert_eq!(stats.in_use_bytes, 0, "{stats}");
        assert!(stats.balances(), "{stats}");
        heap.check_invariants().unwrap();
        for cpu in 0..MAX_CPUS {
            // SAFETY: the threads have exited.
            unsafe { heap.drain_offline_cpu(cpu) };
        }
        heap.trim();
        let end = heap.stats();
        assert_eq!(end.cached_bytes, 0, "{end}");
        // The caches' own pages moved from free to metadata; nothing else stayed.
        assert_eq!(
            end.free_bytes + end.metadata_bytes,
            before.free_bytes + before.metadata_bytes,
            "every page back: {end}"
        );
        heap.check_invariants().unwrap();
    }

    #[test]
    fn realloc_grows_large_objects_in_place_and_moves_small_ones() {
        let t = TestHeap::new(16 << 20, 16 << 20);
        let l = layout(40_000, 8);
        let p = t.heap.allocate(l).unwrap();
        // SAFETY: live block of 40_000 bytes.
        unsafe { ptr::write_bytes(p.as_ptr(), 7, 40_000) };
        // SAFETY: p from allocate(l).
        let q = unsafe { t.heap.reallocate(p, l, 400_000) }.unwrap();
        assert_eq!(
            p, q,
            "the pages after a fresh large object are free: grows in place"
        );
        // SAFETY: q is 400_000 bytes now; the first 40_000 kept.
        assert!(unsafe { core::slice::from_raw_parts(q.as_ptr(), 40_000) }
            .iter()
            .all(|b| *b == 7));
        let l2 = layout(400_000, 8);
        // SAFETY: q from reallocate to l2's size.
        let r = unsafe { t.heap.reallocate(q, l2, 24) }.unwrap();
        // SAFETY: r is a 24-byte object.
        assert!(unsafe { core::slice::from_raw_parts(r.as_ptr(), 24) }
            .iter()
            .all(|b| *b == 7));
        // SAFETY: r from reallocate with size 24.
        let s = unsafe { t.heap.reallocate(r, layout(24, 8), 20) }.unwrap();
        assert_eq!(r, s, "same class: in place");
        // SAFETY: s is live with size 20.
        unsafe { t.heap.deallocate(s, layout(20, 8)) };
        assert_eq!(t.heap.stats().in_use_bytes, 0);
        t.heap.check_invariants().unwrap();
    }

    #[test]
    fn alloc_zeroed_clears_reused_memory() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        for size in [64usize, 5000, 100_000] {
            let l = layout(size, 8);
            let p = t.heap.allocate(l).unwrap();
            // SAFETY: ours.
            unsafe { ptr::write_bytes(p.as_ptr(), 0xab, size) };
            // SAFETY: from allocate(l).
            unsafe { t.heap.deallocate(p, l) };
            let q = t.heap.allocate_zeroed(l).unwrap();
            // SAFETY: ours, size bytes.
            let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), size) };
            assert!(bytes.iter().all(|b| *b == 0), "size {size} not zeroed");
            // SAFETY: from allocate_zeroed(l).
            unsafe { t.heap.deallocate(q, l) };
        }
    }

    #[test]
    fn pages_api_and_physical_addresses() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let p = t.heap.alloc_pages(3, 16 * PAGE_SIZE).unwrap();
        assert_eq!(p.as_ptr() as usize % (16 * PAGE_SIZE), 0);
        assert_eq!(t.heap.stats().page_run_bytes, 3 * PAGE_SIZE);
        assert_eq!(t.heap.phys_addr(p), None);
        t.heap.set_phys_offset(0x1000);
        assert_eq!(t.heap.phys_addr(p), Some(p.as_ptr() as usize - 0x1000));
        // SAFETY: a wrong count is refused, the run stays live.
        unsafe { t.heap.free_pages(p, 2) };
        assert_eq!(t.heap.stats().bad_frees, 1);
        // SAFETY: the right count.
        unsafe { t.heap.free_pages(p, 3) };
        assert_eq!(t.heap.stats().page_run_bytes, 0);
        t.heap.check_invariants().unwrap();
    }

    // Without `verify-frees` and `checked` these frees are not looked at until a
    // flush: the next test.
    #[cfg(feature = "verify-frees")]
    #[test]
    fn bad_frees_are_refused_and_counted() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let t = TestHeap::new(8 << 20, 4 << 20);
        t.heap.set_error_hook(|_| {
            SEEN.fetch_add(1, Ordering::Relaxed);
        });
        let l = layout(48, 8);
        let p = t.heap.allocate(l).unwrap();
        let keep = t.heap.allocate(l).unwrap();
        let mut outside = 0u64;
        // SAFETY: each of these is refused before touching memory.
        unsafe {
            t.heap.deallocate(NonNull::from(&mut outside).cast(), l); // foreign
            t.heap
                .deallocate(NonNull::new_unchecked(p.as_ptr().add(8)), l); // interior
            t.heap.deallocate(p, layout(4000, 8)); // wrong layout
            t.heap.deallocate(p, l); // fine: into this CPU's cache
            GlobalAlloc::dealloc(&t.heap, ptr::null_mut(), l); // ignored, not counted
        }
        // Back in its span, the object's bit is clear: the O(1) check sees the double
        // free. (While it sits in a cache only checked mode can tell.)
        t.heap.drain_cpu();
        // SAFETY: refused: already free.
        unsafe { t.heap.deallocate(p, l) };
        let stats = t.heap.stats();
        assert_eq!(stats.bad_frees, 4);
        assert_eq!(SEEN.load(Ordering::Relaxed), 4);
        assert_eq!(stats.classes[class_of(48, 8).unwrap().index()].objects, 1);
        t.heap.check_invariants().unwrap();
        // SAFETY: still live.
        unsafe { t.heap.deallocate(keep, l) };
    }

    /// The default free: a free of a small layout (up to 1 KiB aligned to 8, or above
    /// 1 KiB, or aligned beyond 8) is not checked at the free. Its object is refused
    /// when it leaves the cache for its span, and nothing else is harmed; every
    /// refusal of one flush is counted. Frees of other layouts (large here) still go
    /// through their span at once.
    #[cfg(not(feature = "verify-frees"))]
    #[test]
    fn unverified_frees_are_refused_when_their_objects_leave_the_cache() {
        static SEEN: std::sync::Mutex<Vec<FreeError>> = std::sync::Mutex::new(Vec::new());
        let t = TestHeap::new(8 << 20, 4 << 20);
        t.heap
            .set_error_hook(|error| SEEN.lock().unwrap().push(*error));
        let l = layout(48, 8);
        let p = t.heap.allocate(l).unwrap();
        let q = t.heap.allocate(layout(64, 8)).unwrap();
        let r = t.heap.allocate(layout(64, 8)).unwrap();
        let u = t.heap.allocate(layout(64, 8)).unwrap();
        let mut outside = [0u64; 8];
        let outside_ptr = NonNull::from(&mut outside).cast::<u8>();
        let interior = p.as_ptr() as usize + 8;
        // SAFETY: wrong frees: the first five go into this CPU's cache untouched,
        // and no allocation takes them out before the flush refuses them.
        unsafe {
            t.heap.deallocate(outside_ptr, l); // foreign
            t.heap.deallocate(nonnull(interior), l); // interior
            t.heap.deallocate(q, layout(100, 8)); // a 64-byte object freed as 112
            t.heap.deallocate(r, layout(100, 64)); // freed as 128 (aligned to 64)
            t.heap.deallocate(u, layout(4000, 8)); // freed as 4096
            t.heap.deallocate(p, layout(40000, 8)); // a large layout: refused now
        }
        assert_eq!(t.heap.stats().bad_frees, 1, "only the large layout at once");
        t.heap.drain_cpu();
        let stats = t.heap.stats();
        assert_eq!(stats.bad_frees, 6);
        assert_eq!(stats.cached_bytes, 0);
        // The two 48-byte frees were refused in one flush: the hook saw the first.
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(seen.len(), 5, "{seen:?}");
        let wrong_layout = |e: &FreeError, at: NonNull<u8>, size: usize| {
            matches!(*e, FreeError::WrongLayout { ptr, expected_size, .. }
                if ptr == at.as_ptr() as usize && expected_size == size)
        };
        assert!(wrong_layout(&seen[0], p, 48), "{seen:?}");
        let foreign = FreeError::Foreign {
            ptr: outside_ptr.as_ptr() as usize,
        };
        assert!(seen.contains(&foreign), "{seen:?}");
        assert!(seen.iter().any(|e| wrong_layout(e, q, 64)), "{seen:?}");
        assert!(seen.iter().any(|e| wrong_layout(e, r, 64)), "{seen:?}");
        assert!(seen.iter().any(|e| wrong_layout(e, u, 64)), "{seen:?}");
        if !cfg!(feature = "debug-fill") {
            // (Poisoning writes its fill at the free, wherever the pointer points.)
            assert_eq!(outside, [0; 8], "the foreign memory was not written");
        }
        // The objects are still allocated, and free normally.
        assert_eq!(stats.in_use_bytes, 48 + 3 * 64);
        t.heap.check_invariants().unwrap();
        // SAFETY: all live, with their layouts.
        unsafe {
            t.heap.deallocate(p, l);
            t.heap.deallocate(q, layout(64, 8));
            t.heap.deallocate(r, layout(64, 8));
            t.heap.deallocate(u, layout(64, 8));
        }
        t.heap.drain_cpu();
        let stats = t.heap.stats();
        assert_eq!((stats.in_use_bytes, stats.bad_frees), (0, 6));
        t.heap.check_invariants().unwrap();
    }

    /// A platform whose threads get CPU 0 only on a slow path (`claim_index`), as
    /// host threads do; the test runs its threads one after the other.
    struct ClaimLater;

    std::thread_local! {
        static CLAIMED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    // SAFETY: the test using it runs one thread at a time, so CPU 0 has one user.
    unsafe impl Platform for ClaimLater {
        type Saved = ();
        fn enter() {}
        unsafe fn exit(_: ()) {}
        fn cpu_index() -> Option<usize> {
            CLAIMED.with(|c| c.get()).then_some(0)
        }
        fn claim_index() -> Option<usize> {
            CLAIMED.with(|c| c.set(true));
            Some(0)
        }
    }

    #[test]
    fn a_cpu_that_takes_over_a_full_cache_loses_no_object() {
        let l = Layout::from_size_align(8 << 20, 2 << 20).unwrap();
        // SAFETY: non-zero size.
        let region = unsafe { alloc_zeroed(l) } as usize;
        assert_ne!(region, 0);
        let heap = SpanHeap::<ClaimLater>::new();
        // SAFETY: our region, for the heap's life.
        unsafe { heap.add_memory(MemoryRange::new(region, region + (8 << 20))) }.unwrap();
        let object = layout(64, 8);
        let class = class_of(64, 8).unwrap();
        std::thread::scope(|s| {
            // The first thread leaves CPU 0's stack of the class full.
            s.spawn(|| {
                let n = CpuCache::capacity(class);
                let all: Vec<_> = (0..n).map(|_| heap.allocate(object).unwrap()).collect();
                for p in all {
                    // SAFETY: allocated above with `object`.
                    unsafe { heap.deallocate(p, object) };
                }
            })
            .join()
            .unwrap();
            // The next one finds no index on its fast path, claims CPU 0 on the slow
            // path and must take from the full stack, not refill on top of it.
            s.spawn(|| {
                let p = heap.allocate(object).unwrap();
                // SAFETY: allocated just now with `object`.
                unsafe { heap.deallocate(p, object) };
            })
            .join()
            .unwrap();
        });
        // SAFETY: both threads are done; CPU 0 has no other user.
        unsafe { heap.drain_offline_cpu(0) };
        heap.check_invariants().unwrap();
        assert_eq!(heap.stats().in_use_bytes, 0, "{}", heap.stats());
        // SAFETY: the heap is not used after this and has no destructor.
        unsafe { dealloc(region as *mut u8, l) };
    }

    /// Two threads (two CPUs) allocate, swap their objects and free the other's:
    /// the cache <-> central hand-off under Miri's data-race detector.
    #[test]
    fn objects_freed_on_another_cpu_go_to_that_cpus_cache() {
        let t = TestHeap::new(4 << 20, 4 << 20);
        let heap = &t.heap;
        // Under Miri too, more than the freeing CPU's stack holds plus two flushes.
        let count = if cfg!(miri) { 200 } else { 2_000 };
        let l = layout(48, 8);
        let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
        let produce = move || {
            let objects = (0..count)
                .map(|i| {
                    let p = heap.allocate(l).unwrap();
                    // SAFETY: a fresh block of 48 bytes.
                    unsafe { p.as_ptr().cast::<usize>().write(i) };
                    p.as_ptr() as usize
                })
                .collect();
            tx.send(objects).unwrap();
        };
        let consume = move || {
            let objects = rx.recv().unwrap();
            for (i, addr) in objects.into_iter().enumerate() {
                let p = NonNull::new(addr as *mut u8).unwrap();
                // SAFETY: handed over by the allocating thread, which is done with
                // it; allocated with `l`.
                unsafe {
                    assert_eq!(p.as_ptr().cast::<usize>().read(), i);
                    heap.deallocate(p, l);
                }
            }
        };
        on_two_cpus(produce, consume);
        // Each thread was a CPU with its own cache; the frees landed in the second.
        let cpus: Vec<CpuStats> = (0..MAX_CPUS).filter_map(|c| heap.cpu_stats(c)).collect();
        assert!(
            cpus.iter().any(|c| c.allocs == count && c.frees == 0),
            "{cpus:?}"
        );
        assert!(
            cpus.iter().any(|c| c.frees == count && c.allocs == 0),
            "{cpus:?}"
        );
        let stats = heap.stats();
        assert_eq!(stats.in_use_bytes, 0);
        assert!(stats.balances(), "{stats}");
        heap.check_invariants().unwrap();
        // The freeing CPU's first two flushes filled the transfer cache; the later
        // ones went back to the spans.
        let batches = CentralLists::transfer_capacity(class_of(48, 8).unwrap());
        assert_eq!(stats.transfer_bytes, batches * 48, "{stats}");
        for cpu in 0..MAX_CPUS {
            // SAFETY: the threads have exited.
            unsafe { heap.drain_offline_cpu(cpu) };
        }
        assert_eq!(heap.stats().cached_bytes, stats.transfer_bytes);
        heap.check_invariants().unwrap();
        heap.trim();
        let trimmed = heap.stats();
        assert_eq!((trimmed.cached_bytes, trimmed.transfer_bytes), (0, 0));
        heap.check_invariants().unwrap();
    }

    #[test]
    fn batches_flushed_on_one_cpu_refill_another_through_the_transfer_cache() {
        let t = TestHeap::new(16 << 20, 8 << 20);
        let heap = &t.heap;
        let l = layout(48, 8);
        let class = class_of(48, 8).unwrap();
        let count = 8 * class.batch();
        let (to_consumer, objects) = std::sync::mpsc::channel::<Vec<usize>>();
        let (to_producer, done) = std::sync::mpsc::channel::<()>();
        let produce = move || {
            let made: Vec<usize> = (0..count)
                .map(|_| heap.allocate(l).unwrap().as_ptr() as usize)
                .collect();
            to_consumer.send(made.clone()).unwrap();
            done.recv().unwrap();
            let before = heap.stats();
            let batches = CentralLists::transfer_capacity(class);
            assert_eq!(before.transfer_bytes, batches * 48, "{before}");
            let spans = before.classes[class.index()].spans;
            // The consumer's first flushes took its oldest objects: the first made.
            // This CPU's stack holds what its last refill left; past those, the
            // refills come from the transfer cache, so the next allocations are
            // exactly the first `batches` objects made.
            let left = heap.cache(&Pinned::enter()).unwrap().len(class);
            let again: Vec<usize> = (0..left + batches)
                .map(|_| heap.allocate(l).unwrap().as_ptr() as usize)
                .collect();
            let mut got = again[left..].to_vec();
            got.sort_unstable();
            let mut first = made[..batches].to_vec();
            first.sort_unstable();
            assert_eq!(got, first);
            let after = heap.stats();
            assert_eq!(after.transfer_bytes, 0, "{after}");
            assert_eq!(after.classes[class.index()].spans, spans);
            for addr in again {
                // SAFETY: allocated above with `l`, unused.
                unsafe { heap.deallocate(NonNull::new(addr as *mut u8).unwrap(), l) };
            }
        };
        let consume = move || {
            for addr in objects.recv().unwrap() {
                // SAFETY: handed over by the producer, allocated with `l`, unused.
                unsafe { heap.deallocate(NonNull::new(addr as *mut u8).unwrap(), l) };
            }
            to_producer.send(()).unwrap();
        };
        on_two_cpus(produce, consume);
        heap.check_invariants().unwrap();
        for cpu in 0..MAX_CPUS {
            // SAFETY: the threads have exited.
            unsafe { heap.drain_offline_cpu(cpu) };
        }
        heap.trim();
        let stats = heap.stats();
        assert_eq!((stats.in_use_bytes, stats.cached_bytes), (0, 0), "{stats}");
        heap.check_invariants().unwrap();
    }

    #[test]
    fn stacks_are_aligned_to_their_size_reused_and_balance() {
        let t = TestHeap::new(16 << 20, 8 << 20);
        let sizes = [1, 4096, 5000, 8192, 16 << 10, 32 << 10, 64 << 10, 200 << 10];
        let mut stacks = Vec::new();
        let rounds = if cfg!(miri) { 2 } else { 20 };
        for round in 0..rounds {
            for &size in &sizes {
                let stack = t.heap.alloc_stack(size).unwrap();
                let expect = size.max(4096).next_power_of_two();
                assert_eq!(stack.size(), expect);
                assert_eq!(
                    stack.base().as_ptr() as usize % expect,
                    0,
                    "aligned to its size"
                );
                // SAFETY: the whole stack is ours.
                unsafe { ptr::write_bytes(stack.base().as_ptr(), round as u8, expect) };
                stacks.push((stack, round as u8));
            }
        }
        let stats = t.heap.stats();
        assert!(stats.balances(), "{stats}");
        let sizes_sum: usize = sizes.iter().map(|s| s.max(&4096).next_power_of_two()).sum();
        assert_eq!(stats.stack_bytes, rounds * sizes_sum, "{stats}");
        t.heap.check_invariants().unwrap();
        for (stack, fill) in stacks {
            // SAFETY: a live stack of ours.
            let bytes = unsafe { core::slice::from_raw_parts(stack.base().as_ptr(), stack.size()) };
            assert!(bytes.iter().all(|b| *b == fill), "stacks overlap");
            // SAFETY: not in use.
            unsafe { t.heap.free_stack(stack) };
        }
        let stats = t.heap.stats();
        assert_eq!((stats.stack_bytes, stats.in_use_bytes), (0, 0), "{stats}");
        assert!(stats.balances(), "{stats}");
        t.heap.check_invariants().unwrap();
        // A freed large stack is reused for the next one of its size.
        let big = t.heap.alloc_stack(200 << 10).unwrap();
        let base = big.base();
        // SAFETY: not in use.
        unsafe { t.heap.free_stack(big) };
        let again = t.heap.alloc_stack(256 << 10).unwrap();
        assert_eq!(again.base(), base);
        // SAFETY: not in use.
        unsafe { t.heap.free_stack(again) };
        // Trim gives everything back: caches, pools, large free lists.
        t.heap.trim();
        let stats = t.heap.stats();
        assert_eq!(
            stats.free_bytes + stats.metadata_bytes,
            stats.managed_bytes,
            "{stats}"
        );
        t.heap.check_invariants().unwrap();
    }

    #[cfg(feature = "debug-fill")]
    static WRITTEN_AFTER_FREE: AtomicUsize = AtomicUsize::new(usize::MAX);

    #[cfg(feature = "debug-fill")]
    #[test]
    fn debug_fill_poisons_free_objects_and_reports_writes_after_free() {
        use crate::span::{FREE_FILL, FRESH_FILL};
        let t = TestHeap::new(4 << 20, 4 << 20);
        let heap = &t.heap;
        heap.set_error_hook(|error| {
            if let FreeError::ModifiedAfterFree { offset, .. } = *error {
                WRITTEN_AFTER_FREE.store(offset, Ordering::Relaxed);
            }
        });
        let bytes = |p: NonNull<u8>, n: usize| {
            // SAFETY: the test's own backing memory, `n` bytes from an object start.
            unsafe { core::slice::from_raw_parts(p.as_ptr(), n) }.to_vec()
        };
        let l = layout(100, 8);
        let p = heap.allocate(l).unwrap();
        assert!(bytes(p, 100).iter().all(|&b| b == FRESH_FILL), "fresh fill");
        // SAFETY: live, 100 bytes; then freed.
        unsafe {
            p.as_ptr().write_bytes(1, 100);
            heap.deallocate(p, l);
        }
        assert!(bytes(p, 100).iter().all(|&b| b == FREE_FILL), "free fill");
        // SAFETY: the bug under test: a write to the freed object (memory the test
        // owns, so only the heap's view of it is wrong).
        unsafe { p.as_ptr().add(37).write(0) };
        let q = heap.allocate(l).unwrap();
        assert_eq!(q, p, "the cache hands the newest object out first");
        assert_eq!(WRITTEN_AFTER_FREE.load(Ordering::Relaxed), 37);
        assert_eq!(heap.stats().bad_frees, 1, "counted with the refused frees");
        let z = heap.allocate_zeroed(l).unwrap();
        assert!(bytes(z, 100).iter().all(|&b| b == 0), "zeroed when asked");
        let big = layout(100_000, 8);
        let b = heap.allocate(big).unwrap();
        assert!(bytes(b, 100_000).iter().all(|&x| x == FRESH_FILL));
        // SAFETY: live blocks with these layouts.
        unsafe {
            heap.deallocate(b, big);
            heap.deallocate(q, l);
            heap.deallocate(z, l);
        }
        assert!(bytes(b, 100_000).iter().all(|&x| x == FREE_FILL));
        heap.check_invariants().unwrap();
    }

    #[test]
    fn impossible_stacks_are_none_and_change_nothing() {
        let t = TestHeap::new(4 << 20, 4 << 20);
        let before = t.heap.stats();
        for size in [
            usize::MAX,
            isize::MAX as usize,
            1 << 40,
            8 << 20,
            (4 << 20) + 1,
        ] {
            assert!(t.heap.alloc_stack(size).is_none(), "alloc_stack({size:#x})");
        }
        let after = t.heap.stats();
        assert_eq!(
            (after.free_bytes, after.in_use_bytes),
            (before.free_bytes, 0)
        );
        t.heap.check_invariants().unwrap();
        let stack = t
            .heap
            .alloc_stack(64 << 10)
            .expect("an ordinary stack still");
        // SAFETY: a live stack, unused.
        unsafe { t.heap.free_stack(stack) };
    }

    #[test]
    fn a_large_stack_freed_twice_is_refused_and_kept_once() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let (base, size) = t.heap.alloc_stack(128 << 10).unwrap().into_raw();
        // SAFETY: the first free is fine; the second is refused before it could put
        // the span on its free list twice.
        unsafe {
            t.heap.free_stack(Stack::from_raw(base, size));
            t.heap.free_stack(Stack::from_raw(base, size));
        }
        assert_eq!(t.heap.stats().bad_frees, 1);
        t.heap.check_invariants().unwrap();
        // Kept once: one stack of that size comes from the free list, the next from
        // the page heap.
        let first = t.heap.alloc_stack(size).unwrap();
        let second = t.heap.alloc_stack(size).unwrap();
        assert_eq!(first.base(), base);
        assert_ne!(second.base(), base);
        // SAFETY: not in use.
        unsafe {
            t.heap.free_stack(first);
            t.heap.free_stack(second);
        }
        t.heap.check_invariants().unwrap();
    }

    #[test]
    fn bad_stack_frees_are_refused() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let stack = t.heap.alloc_stack(8192).unwrap();
        let (base, size) = stack.into_raw();
        // SAFETY: each is refused before anything is touched.
        unsafe {
            t.heap.free_stack(Stack::from_raw(base, 4096)); // wrong size
            let inner = NonNull::new_unchecked(base.as_ptr().add(4096));
            t.heap.free_stack(Stack::from_raw(inner, 8192)); // interior
            t.heap.free_stack(Stack::from_raw(base, size)); // fine
        }
        t.heap.drain_cpu();
        // SAFETY: refused: already free (its bit is clear after the drain).
        unsafe { t.heap.free_stack(Stack::from_raw(base, size)) };
        let stats = t.heap.stats();
        assert_eq!(stats.bad_frees, 3, "{stats}");
        assert_eq!(stats.stack_bytes, 0);
        t.heap.check_invariants().unwrap();
        assert_eq!(
            t.heap.alloc_stack(usize::MAX),
            None,
            "no power of two that large"
        );
        assert_eq!(t.heap.alloc_stack(1 << 40), None, "larger than an arena");
    }

    /// The heap of the out-of-memory hook test, the memory its hook adds once, and
    /// what the hook saw.
    static OOM_HEAP: AtomicPtr<SpanHeap<HostThreads>> = AtomicPtr::new(ptr::null_mut());
    static OOM_RESERVE: AtomicUsize = AtomicUsize::new(0);
    static OOM_CALLS: AtomicUsize = AtomicUsize::new(0);
    static OOM_BYTES: AtomicUsize = AtomicUsize::new(0);
    const RESERVE: usize = 8 << 20;

    fn add_reserve(request: &OutOfMemory) -> bool {
        OOM_CALLS.fetch_add(1, Ordering::Relaxed);
        OOM_BYTES.fetch_max(request.bytes, Ordering::Relaxed);
        let base = OOM_RESERVE.swap(0, Ordering::Relaxed);
        // SAFETY: the test stored its live heap before installing the hook.
        let heap = unsafe { &*OOM_HEAP.load(Ordering::Acquire) };
        // SAFETY: the reserve is the test's memory, unused, and outlives the heap.
        base != 0 && unsafe { heap.add_memory(MemoryRange::new(base, base + RESERVE)) }.is_ok()
    }

    #[test]
    fn the_out_of_memory_hook_adds_memory_and_the_heap_retries() {
        let reserve_layout = Layout::from_size_align(RESERVE, RESERVE).unwrap();
        // SAFETY: a non-zero size; freed at the end, after the heap is gone.
        let reserve = unsafe { alloc_zeroed(reserve_layout) };
        assert!(!reserve.is_null());
        {
            let t = TestHeap::new(8 << 20, 8 << 20);
            let heap = &t.heap;
            OOM_HEAP.store(heap as *const _ as *mut _, Ordering::Release);
            OOM_RESERVE.store(reserve as usize, Ordering::Relaxed);
            heap.set_oom_hook(add_reserve);
            let l = layout(1 << 20, 8);
            let mut live = Vec::new();
            while let Some(p) = heap.allocate(l) {
                live.push(p);
            }
            // The first region holds at most 7 such objects (its metadata takes
            // pages); the hook added the reserve once, then said no.
            assert!(live.len() >= 12, "only {} objects", live.len());
            assert_eq!(
                OOM_CALLS.load(Ordering::Relaxed),
                2,
                "added once, then refused"
            );
            assert!(OOM_BYTES.load(Ordering::Relaxed) >= 1 << 20);
            let stats = heap.stats();
            assert_eq!(stats.managed_bytes, 16 << 20);
            for p in live {
                // SAFETY: live, allocated with `l`.
                unsafe { heap.deallocate(p, l) };
            }
            assert_eq!(heap.stats().in_use_bytes, 0);
            heap.check_invariants().unwrap();
        }
        // SAFETY: allocated above with this layout; the heap is gone.
        unsafe { dealloc(reserve, reserve_layout) };
    }

    #[cfg(feature = "checked")]
    #[test]
    #[should_panic(expected = "spanheap: refused free of")]
    fn checked_mode_panics_on_a_bad_free_without_a_hook() {
        let t = TestHeap::new(4 << 20, 4 << 20);
        let heap = SpanHeap::<HostThreads>::new();
        let base = t.heap.alloc_pages(64, PAGE_SIZE).unwrap().as_ptr() as usize;
        // SAFETY: the pages are ours (taken from `t`), mapped, used by nothing else.
        unsafe { heap.add_memory(MemoryRange::new(base, base + 64 * PAGE_SIZE)) }.unwrap();
        let l = layout(32, 8);
        let p = heap.allocate(l).unwrap();
        // SAFETY: the second free is the bug under test; it is refused.
        unsafe {
            heap.deallocate(p, l);
            heap.deallocate(p, l);
        }
    }

    #[cfg(feature = "checked")]
    #[test]
    fn checked_mode_catches_double_frees_in_caches_on_every_cpu() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let heap = &t.heap;
        let l = layout(96, 8);
        let objects: Vec<usize> = (0..200)
            .map(|_| heap.allocate(l).unwrap().as_ptr() as usize)
            .collect();
        let stack = heap.alloc_stack(8192).unwrap().base().as_ptr() as usize;
        let free_stack = || {
            let base = NonNull::new(stack as *mut u8).unwrap();
            // SAFETY: a stack of this heap, freed once on each thread: the second
            // free is the bug under test.
            unsafe { heap.free_stack(Stack::new(base, 8192)) };
        };
        let free_all = |objects: &[usize]| {
            for &addr in objects {
                // SAFETY: each object is freed once here and once more on the other
                // CPU: the second free of each is the bug under test.
                unsafe { heap.deallocate(NonNull::new(addr as *mut u8).unwrap(), l) };
            }
        };
        // The first frees put the objects and the stack in a CPU cache; each second
        // free, from another thread, is refused at the free (the object's bit in its
        // span is still set: only its cached mark tells).
        on_two_cpus(
            || {
                free_all(&objects);
                free_stack();
            },
            || {},
        );
        on_two_cpus(
            || {},
            || {
                free_all(&objects);
                free_stack();
            },
        );
        assert_eq!(heap.stats().bad_frees, objects.len() + 1);
        heap.check_invariants().unwrap();
        for cpu in 0..MAX_CPUS {
            // SAFETY: the threads have exited.
            unsafe { heap.drain_offline_cpu(cpu) };
        }
        let stats = heap.stats();
        assert_eq!(
            (stats.in_use_bytes, stats.bad_frees),
            (0, objects.len() + 1)
        );
        heap.check_invariants().unwrap();
    }

    /// A double free found by the flush that a full stack forces is reported after
    /// the free that forced it has pushed its object: the error hook may free into
    /// the same stack (here: enough to fill it), and that object is not lost.
    #[cfg(not(feature = "checked"))]
    #[test]
    fn a_hook_that_frees_into_the_flushed_stack_loses_no_object() {
        static HEAP: AtomicPtr<SpanHeap<HostThreads>> = AtomicPtr::new(ptr::null_mut());
        static POOL: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
        let l = layout(64, 8);
        let t = TestHeap::new(8 << 20, 4 << 20);
        HEAP.store(ptr::from_ref(&t.heap).cast_mut(), Ordering::Release);
        t.heap.set_error_hook(|_| {
            // SAFETY: the test's heap, alive while the test runs.
            let heap = unsafe { &*HEAP.load(Ordering::Acquire) };
            for p in core::mem::take(&mut *POOL.lock().unwrap()) {
                // SAFETY: live objects of `l`, freed once.
                unsafe { heap.deallocate(nonnull(p), layout(64, 8)) };
            }
        });
        let class = class_of(64, 8).unwrap();
        let (batch, stack) = (class.batch(), CpuCache::capacity(class));
        assert_eq!(
            CentralLists::transfer_capacity(class),
            stack,
            "two batches each"
        );
        let take = |n: usize| -> Vec<NonNull<u8>> {
            (0..n).map(|_| t.heap.allocate(l).unwrap()).collect()
        };
        // Frees 1..=2 batches fill the stack, the next two batches move whole into
        // the transfer cache, so the flush forced by free 4 * batch + 1 goes to the
        // spans: its batch (frees 2 * batch + 1 ..= 3 * batch) holds `x` twice.
        let x = take(1)[0];
        let mut frees = take(2 * batch);
        frees.push(x);
        frees.push(x);
        frees.extend(take(2 * batch - 1));
        let forcing = take(1)[0];
        POOL.lock()
            .unwrap()
            .extend(take(stack).iter().map(|p| p.as_ptr() as usize));
        // SAFETY: every object freed once, but `x` twice (the bug the flush finds).
        unsafe {
            for p in frees {
                t.heap.deallocate(p, l);
            }
            assert_eq!(t.heap.stats().bad_frees, 0, "x sits in the cache twice");
            t.heap.deallocate(forcing, l);
        }
        assert!(POOL.lock().unwrap().is_empty(), "the hook ran");
        t.heap.trim();
        let stats = t.heap.stats();
        assert_eq!(stats.bad_frees, 1);
        assert_eq!(stats.in_use_bytes, 0, "an object was lost\n{stats}");
        t.heap.check_invariants().unwrap();
    }

    /// For a common layout and for small ones aligned beyond 8 (which also skip the
    /// span at the free without `verify-frees`).
    #[test]
    fn a_double_free_inside_a_cache_is_refused_at_the_flush() {
        for (size, align) in [(64, 8), (100, 64), (48, 16), (700, 32)] {
            let t = TestHeap::new(8 << 20, 4 << 20);
            let l = layout(size, align);
            let p = t.heap.allocate(l).unwrap();
            let keep = t.heap.allocate(l).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: the second free is a bug the cache cannot see; the flush refuses
            // the second copy instead of corrupting the span.
            unsafe {
                t.heap.deallocate(p, l);
                t.heap.deallocate(p, l);
            }
            // Checked mode refuses it at the free itself.
            let caught_at_once = usize::from(cfg!(feature = "checked"));
            assert_eq!(t.heap.stats().bad_frees, caught_at_once, "{l:?}");
            t.heap.drain_cpu();
            let stats = t.heap.stats();
            assert_eq!(stats.bad_frees, 1, "{l:?}");
            assert_eq!(stats.cached_bytes, 0, "drained");
            let class = class_of(size, align).unwrap();
            assert_eq!(class.size() % align, 0);
            assert_eq!(stats.classes[class.index()].objects, 1, "{l:?}");
            t.heap.check_invariants().unwrap();
            // SAFETY: still live.
            unsafe { t.heap.deallocate(keep, l) };
        }
    }

    #[test]
    fn add_memory_refuses_bad_ranges_and_hot_adds_good_ones() {
        let t = TestHeap::new(8 << 20, 4 << 20);
        let base = t.base as usize;
        let heap = &t.heap;
        let managed = heap.stats().managed_bytes;
        let add = |start, end| {
            // SAFETY: every call below either is refused or adds memory of `t`'s region
            // that the heap does not own yet (none: the whole region is in already).
            unsafe { heap.add_memory(MemoryRange::new(start, end)) }
        };
        assert!(matches!(
            add(base + 100, base + 200),
            Err(AddMemoryError::Empty(_))
        ));
        assert!(matches!(
            add(base + 10, base),
            Err(AddMemoryError::Empty(_))
        ));
        assert!(matches!(add(0, 1 << 20), Err(AddMemoryError::NullPage(_))));
        assert!(matches!(
            add(base, base + 4096),
            Err(AddMemoryError::Overlap(_))
        ));
        // A fresh window with too little room for its metadata.
        let far = 1usize << 40;
        assert!(matches!(
            add(far, far + 8192),
            Err(AddMemoryError::TooSmall { .. })
        ));
        assert_eq!(
            heap.stats().managed_bytes,
            managed,
            "refused ranges add nothing"
        );
        let bad = SpanHeap::<HostThreads>::with_config(Config {
            arena_size: 3 << 20,
            ..Config::DEFAULT
        });
        // SAFETY: refused before use.
        let r = unsafe { bad.add_memory(MemoryRange::new(base, base + 4096)) };
        assert_eq!(r, Err(AddMemoryError::BadConfig));
    }

    #[test]
    fn ranges_are_trimmed_to_pages_and_arenas_are_bounded() {
        let window = Config::MIN_ARENA_SIZE;
        let size = (MAX_ARENAS + 2) * window;
        let backing = Layout::from_size_align(size, window).unwrap();
        // SAFETY: a non-zero size; freed at the end, after the heap is gone.
        let base = unsafe { alloc_zeroed(backing) } as usize;
        assert_ne!(base, 0);
        {
            let heap = SpanHeap::<HostThreads>::with_config(Config {
                arena_size: window,
                ..Config::DEFAULT
            });
            let add = |start, end| {
                // SAFETY: parts of `backing`, each given at most once (refused ranges
                // are not used).
                unsafe { heap.add_memory(MemoryRange::new(start, end)) }
            };
            // Unaligned ends are trimmed to whole pages: 5 of the 7 pages touched.
            add(base + 1, base + 7 * PAGE_SIZE - 1).unwrap();
            let first = heap.stats().managed_bytes;
            assert_eq!(first, 5 * PAGE_SIZE);
            // A trimmed-off page is still free to add; the kept ones overlap.
            add(base + 6 * PAGE_SIZE, base + 7 * PAGE_SIZE).unwrap();
            assert!(matches!(
                add(base + 3 * PAGE_SIZE, base + 9 * PAGE_SIZE),
                Err(AddMemoryError::Overlap(_))
            ));
            // One arena per window, up to MAX_ARENAS; the next window is refused
            // whole and the heap is unchanged.
            for w in 1..MAX_ARENAS {
                let start = base + w * window;
                add(start, start + 16 * PAGE_SIZE).unwrap();
            }
            let before = heap.stats();
            assert_eq!(before.arenas, MAX_ARENAS);
            let next = base + MAX_ARENAS * window;
            assert!(matches!(
                add(next, next + 16 * PAGE_SIZE),
                Err(AddMemoryError::TooManyArenas(_))
            ));
            assert_eq!(heap.stats(), before, "a refused range adds nothing");
            // A range over most of the address space is refused at once (a walk of
            // its 2^44 windows would not end in this test's lifetime).
            assert!(matches!(
                add(1 << 20, usize::MAX),
                Err(AddMemoryError::TooManyArenas(_))
            ));
            heap.check_invariants().unwrap();
            let p = heap
                .allocate(layout(1000, 8))
                .expect("the heap still serves");
            // SAFETY: just allocated.
            unsafe { heap.deallocate(p, layout(1000, 8)) };
        }
        // SAFETY: allocated above with this layout; the heap is gone.
        unsafe { dealloc(base as *mut u8, backing) };
    }

    #[test]
    fn hot_add_extends_the_heap() {
        let size = 8 << 20;
        let l = Layout::from_size_align(size, 4 << 20).unwrap();
        // SAFETY: non-zero size.
        let region = unsafe { alloc_zeroed(l) } as usize;
        let heap = SpanHeap::<HostThreads>::with_config(Config {
            arena_size: 4 << 20,
            ..Config::DEFAULT
        });
        // SAFETY: our region; the two halves are added separately.
        unsafe {
            heap.add_memory(MemoryRange::new(region, region + size / 2))
                .unwrap();
            let before = heap.stats().managed_bytes;
            heap.add_memory(MemoryRange::new(region + size / 2, region + size))
                .unwrap();
            assert_eq!(heap.stats().arenas, 2);
            assert!(heap.stats().managed_bytes > before);
            // A 3 MiB object fits only in the second arena's window.
            let big = layout(3 << 20, 8);
            let p = heap.allocate(big).unwrap();
            heap.deallocate(p, big);
            heap.check_invariants().unwrap();
            dealloc(region as *mut u8, l);
        }
    }

    #[test]
    fn arenas_far_from_the_first_are_found_through_the_hashed_index() {
        // Windows of 1 MiB; the first arena added (the middle one) sets the near table's
        // base, one arena lies below it and one 70 windows above: both hashed.
        let arena = 1 << 20;
        let windows = 72;
        let l = Layout::from_size_align(windows * arena, arena).unwrap();
        // SAFETY: non-zero size.
        let region = unsafe { std::alloc::alloc(l) } as usize;
        assert_ne!(region, 0);
        let heap = SpanHeap::<HostThreads>::with_config(Config {
            arena_size: arena,
            ..Config::DEFAULT
        });
        for window in [1, 0, 71] {
            let start = region + window * arena;
            // SAFETY: part of our region, each window added once.
            unsafe { heap.add_memory(MemoryRange::new(start, start + arena)) }.unwrap();
        }
        let arena_of = |p: NonNull<u8>| (p.as_ptr() as usize - region) / arena;
        for l in [layout(100, 8), layout(512 << 10, 8)] {
            let mut blocks = Vec::new();
            while let Some(p) = heap.allocate(l) {
                blocks.push(p);
            }
            let mut used: Vec<usize> = blocks.iter().map(|&p| arena_of(p)).collect();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used, [0, 1, 71], "{l:?} filled every arena");
            for p in blocks {
                // SAFETY: from allocate(l).
                unsafe { heap.deallocate(p, l) };
            }
            heap.drain_cpu();
            heap.check_invariants().unwrap();
            assert_eq!(heap.stats().in_use_bytes, 0);
            assert_eq!(heap.stats().bad_frees, 0);
        }
        // SAFETY: the heap is not used after this and has no destructor.
        unsafe { std::alloc::dealloc(region as *mut u8, l) };
    }

    #[test]
    fn metadata_cost_within_targets() {
        // 512 MiB heap, default 64 MiB arenas: at most 1% (Miri: 128 MiB, the same
        // arenas, so the same ratio per arena).
        let size = if cfg!(miri) { 128 << 20 } else { 512 << 20 };
        let t = TestHeap::new(size, Config::DEFAULT.arena_size);
        let s = t.heap.stats();
        assert!(s.metadata_ratio() <= 0.01, "{:.4}", s.metadata_ratio());
        // 4 MiB heap with 4 MiB arenas: at most 3%.
        let t = TestHeap::new(4 << 20, 4 << 20);
        let s = t.heap.stats();
        assert!(s.metadata_ratio() <= 0.03, "{:.4}", s.metadata_ratio());
    }

    #[test]
    fn out_of_memory_is_none_and_the_heap_recovers() {
        let t = TestHeap::new(4 << 20, 4 << 20);
        assert!(t
            .heap
            .allocate(layout(isize::MAX as usize - 4096, 8))
            .is_none());
        assert!(t.heap.allocate(layout(8, 1 << 30)).is_none());
        assert!(t.heap.alloc_pages(1 << 20, PAGE_SIZE).is_none());
        let l = layout(2048, 8);
        let mut blocks = Vec::new();
        while let Some(p) = t.heap.allocate(l) {
            blocks.push(p);
        }
        let first = blocks.len();
        for p in blocks.drain(..) {
            // SAFETY: from allocate(l).
            unsafe { t.heap.deallocate(p, l) };
        }
        t.heap.check_invariants().unwrap();
        while let Some(p) = t.heap.allocate(l) {
            blocks.push(p);
        }
        assert_eq!(blocks.len(), first, "the whole heap is allocatable again");
        for p in blocks {
            // SAFETY: from allocate(l).
            unsafe { t.heap.deallocate(p, l) };
        }
        assert_eq!(t.heap.stats().in_use_bytes, 0);
    }
}
