//! Exhaustion tests: the heap runs out of memory cleanly and gets all of it back.
//!
//! - `small_class_refill_after_exhaustion`: for each of a range of small sizes, a
//!   fresh heap is filled with objects of that size until `allocate` returns `None`,
//!   everything is freed (in random order), and a second fill must get at least as
//!   many objects; the objects in use at the full point cover at least 3/4 of the
//!   usable memory (class tail waste is at most 1/8 by design).
//! - `freed_memory_moves_between_classes`: memory freed by one class serves another
//!   class and large objects (empty spans go back to the page heap).
//! - `large_objects_after_small_object_burst`: the smallest case of the above: after a
//!   heap full of 16, 48 or 256-byte objects is freed (in two orders each), as many
//!   1 MiB objects fit as the free pages and the centrals' empty spans can hold.
//! - `reserve_spans_serve_other_requests`: empty spans the centrals keep are given
//!   back when the heap runs short: after objects of 14 classes are freed, as many
//!   one-page runs and 64 KiB objects fit as in a fresh heap.
//! - `page_runs_refill_and_coalesce`: one-page runs from `alloc_pages(1, 4096)` until
//!   `None`, all freed, the same count again, all freed, and then one `alloc_pages`
//!   of every free page (computed from `stats()`) must succeed: the free pages of a
//!   heap inside one arena coalesce into one run.
//! - `coalesces_after_holes_refilled_with_small_objects`: the same after large
//!   objects, every other one freed, small objects in the holes, all freed, and
//!   `trim()`: descriptor slab pages taken meanwhile must not cut the free run.
//! - `mixed_sizes_until_exhaustion`: skewed random sizes and alignments until even
//!   the smallest request fails; then the heap must be full (no free page left), and
//!   after freeing everything `in_use_bytes == 0`, the stats balance and
//!   `check_invariants()` holds.
//! - `impossible_requests_return_none` and `empty_heap_returns_none`: requests the
//!   heap cannot serve (sizes up to `isize::MAX - 4096`, alignments up to 1 GiB,
//!   page counts up to `usize::MAX`, a heap without memory) give `None` (or null
//!   through `GlobalAlloc`) and never panic, and leave the heap as it was.
//!
//! Heaps are 8 to 32 MiB so that the whole file runs in a few seconds in debug.
//!
//! # Environment
//!
//! - `SPANHEAP_EXHAUST_SCALE`: multiplies every heap size, and the arena sizes by the
//!   next power of two (default 1), e.g. `16` for 128-512 MiB heaps in
//!   `cargo test --release -p spanheap --test exhaustion`.
//! - `SPANHEAP_EXHAUST_SEED`: the seed of the random orders and sizes.

mod common;

use common::{env_u64, skewed_align, skewed_size, Backing, Rng, PAGE};
use spanheap::platform::HostThreads;
use spanheap::{Config, MemoryRange, Stats};

/// The heap under test: per-CPU caches on, the way kernels run it.
type SpanHeap = spanheap::SpanHeap<HostThreads>;
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

/// A heap over its own backing memory (the heap is dropped first).
struct TestHeap {
    heap: SpanHeap,
    _backing: Backing,
}

impl std::ops::Deref for TestHeap {
    type Target = SpanHeap;
    fn deref(&self) -> &SpanHeap {
        &self.heap
    }
}

impl TestHeap {
    /// `mib` MiB in one range aligned to `arena_mib` MiB arenas (both scaled by
    /// `SPANHEAP_EXHAUST_SCALE`), so that it fills whole arenas.
    fn new(mib: usize, arena_mib: usize) -> Self {
        let size = (mib * scale()) << 20;
        let arena_size =
            ((arena_mib * scale().next_power_of_two()) << 20).min(Config::MAX_ARENA_SIZE);
        let backing = Backing::new(size, arena_size.min(size));
        let heap = SpanHeap::with_config(Config {
            arena_size,
            ..Config::default()
        });
        let range = MemoryRange::new(backing.start(), backing.end());
        // SAFETY: the backing memory is ours, writable, and outlives the heap.
        unsafe { heap.add_memory(range) }.expect("add_memory");
        let this = Self {
            heap,
            _backing: backing,
        };
        this.assert_healthy("after add_memory");
        this
    }

    /// Bytes the heap could hand out: managed minus metadata.
    fn usable(&self) -> usize {
        let stats = self.stats();
        stats.managed_bytes - stats.metadata_bytes
    }

    /// `check_invariants()` holds and the stats balance.
    #[track_caller]
    fn assert_healthy(&self, when: &str) -> Stats {
        if let Err(e) = self.check_invariants() {
            panic!("{when}: check_invariants: {e:?}");
        }
        let stats = self.stats();
        assert!(stats.balances(), "{when}: stats do not balance: \n{stats}");
        assert_eq!(stats.bad_frees, 0, "{when}: the heap refused frees");
        stats
    }

    /// `assert_healthy` and nothing in use.
    #[track_caller]
    fn assert_empty(&self, when: &str) -> Stats {
        let stats = self.assert_healthy(when);
        assert_eq!(
            stats.in_use_bytes, 0,
            "{when}: bytes still in use: \n{stats}"
        );
        assert_eq!(stats.large_objects, 0, "{when}: large objects still live");
        stats
    }
}

fn scale() -> usize {
    env_u64("SPANHEAP_EXHAUST_SCALE", 1).max(1) as usize
}

fn rng(salt: u64) -> Rng {
    Rng::new(env_u64("SPANHEAP_EXHAUST_SEED", 0x000e_4a57) ^ salt)
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// A tag written into the first bytes of every object, to catch overlaps.
fn tag(i: usize) -> u64 {
    common::mix64(i as u64 ^ 0x7a67)
}

/// # Safety
/// `ptr` is a live block of `size` bytes.
unsafe fn write_tag(ptr: NonNull<u8>, size: usize, i: usize) {
    let bytes = tag(i).to_le_bytes();
    let n = size.min(8);
    // SAFETY: at least `n` bytes of a live block.
    unsafe { ptr.as_ptr().copy_from_nonoverlapping(bytes.as_ptr(), n) };
}

/// # Safety
/// `ptr` is a live block of `size` bytes.
unsafe fn tag_ok(ptr: NonNull<u8>, size: usize, i: usize) -> bool {
    let n = size.min(8);
    // SAFETY: at least `n` bytes of a live block.
    let got = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), n) };
    got == &tag(i).to_le_bytes()[..n]
}

/// Live blocks with their layouts and tags.
#[derive(Default)]
struct Live(Vec<(NonNull<u8>, Layout, usize)>);

impl Live {
    fn push(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let i = self.0.len();
        assert_eq!(
            ptr.as_ptr() as usize % layout.align(),
            0,
            "misaligned {layout:?}"
        );
        // SAFETY: a fresh block of `layout.size()` bytes.
        unsafe { write_tag(ptr, layout.size(), i) };
        self.0.push((ptr, layout, i));
    }

    /// Frees every block in random order, checking its tag first.
    fn free_all(&mut self, heap: &SpanHeap, rng: &mut Rng) {
        shuffle(&mut self.0, rng);
        for (ptr, layout, i) in self.0.drain(..) {
            // SAFETY: live block of this layout.
            let intact = unsafe { tag_ok(ptr, layout.size(), i) };
            assert!(intact, "block {i} at {ptr:?} overwritten");
            // SAFETY: live block of this heap with this layout, dropped from the list.
            unsafe { heap.deallocate(ptr, layout) };
        }
    }
}

/// Allocates `layout` until `None`; returns the blocks.
fn fill(heap: &SpanHeap, layout: Layout) -> Live {
    let mut live = Live::default();
    while let Some(ptr) = heap.allocate(layout) {
        live.push(ptr, layout);
    }
    live
}

/// (a) Per size: fill until `None`, free all, fill again: at least as many.
#[test]
fn small_class_refill_after_exhaustion() {
    let sizes = [
        1,
        8,
        16,
        24,
        48,
        100,
        256,
        1000,
        2048,
        4000,
        9000,
        16 << 10,
        32 << 10,
    ];
    for (k, &size) in sizes.iter().enumerate() {
        let heap = TestHeap::new(8, 8);
        let usable = heap.usable();
        let layout = Layout::from_size_align(size, 1).unwrap();
        let mut rng = rng(k as u64);

        let mut first = fill(&heap, layout);
        let full = heap.assert_healthy(&format!("size {size}: full"));
        let n1 = first.0.len();
        assert!(
            full.in_use_bytes >= usable / 4 * 3,
            "size {size}: full at {n1} objects, {} of {usable} usable bytes in use: \n{full}",
            full.in_use_bytes
        );
        first.free_all(&heap, &mut rng);
        heap.assert_empty(&format!("size {size}: after the first free"));

        let mut second = fill(&heap, layout);
        let n2 = second.0.len();
        assert!(
            n2 >= n1,
            "size {size}: the second fill got {n2} objects, the first {n1}"
        );
        second.free_all(&heap, &mut rng);
        heap.assert_empty(&format!("size {size}: after the second free"));
    }
}

/// Memory freed by one class serves another class and large objects.
#[test]
fn freed_memory_moves_between_classes() {
    let heap = TestHeap::new(8, 8);
    let usable = heap.usable();
    let mut rng = rng(100);
    let mut before = heap.stats();
    for (size, align) in [
        (48, 16),
        (2000, 8),
        (40 << 10, 4096),
        (16, 16),
        (1 << 20, 8),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        let mut live = fill(&heap, layout);
        let full = heap.assert_healthy(&format!("{layout:?}: full"));
        let n = live.0.len();
        // 1 MiB objects leave up to 1 MiB (and the descriptor slabs) unused.
        let now_usable = full.managed_bytes - full.metadata_bytes;
        let bound = if size >= 1 << 20 {
            now_usable - (1 << 20)
        } else {
            usable / 4 * 3
        };
        if full.in_use_bytes < bound {
            let longest = longest_run(&heap, full.free_bytes / PAGE);
            panic!(
                "{layout:?}: full at {n} objects, {} of {usable} usable bytes in use, \
                 {} bytes in free pages, the longest free run {longest} pages: \n{full}\n\
                 before this fill: {before}",
                full.in_use_bytes, full.free_bytes
            );
        }
        live.free_all(&heap, &mut rng);
        before = heap.assert_empty(&format!("{layout:?}: after free"));
    }
}

/// The smallest case of the above: small objects fill the heap and are all freed;
/// then as many 1 MiB objects fit as the empty heap holds (free pages and empty
/// spans kept by the centrals, one arena): neither descriptor slabs nor reserve
/// spans may cut the free pages into pieces.
#[test]
fn large_objects_after_small_object_burst() {
    // Each size with two orders of freeing (the last span emptied differs).
    for (k, size) in [16, 16, 48, 48, 256, 256].into_iter().enumerate() {
        let heap = TestHeap::new(8, 8);
        let small = Layout::from_size_align(size, 8).unwrap();
        let mut live = fill(&heap, small);
        let n = live.0.len();
        live.free_all(&heap, &mut rng(150 + k as u64));
        let empty = heap.assert_empty("after freeing the small objects");
        let large = Layout::from_size_align(1 << 20, 8).unwrap();
        let expected = (empty.free_bytes + empty.span_free_bytes) >> 20;
        let mut larges = fill(&heap, large);
        let full = heap.assert_healthy("full of 1 MiB objects");
        if larges.0.len() < expected {
            panic!(
                "after {n} objects of {size} B were allocated and freed (order {k}), {} objects \
                 of 1 MiB fit, {expected} expected: the longest free run is {} pages\n\
                 empty: {empty}\nfull: {full}",
                larges.0.len(),
                longest_run(&heap, full.free_bytes / PAGE)
            );
        }
        larges.free_all(&heap, &mut rng(151));
        heap.assert_empty("at the end");
    }
}

/// Empty spans the centrals keep in reserve are memory like any other when the heap
/// runs short (the centrals' docs: the heap trims every reserve before it reports
/// out of memory): after objects of many classes are allocated and freed, as many
/// one-page runs, and as many 64 KiB objects, fit as in a fresh heap.
#[test]
fn reserve_spans_serve_other_requests() {
    let sizes = [
        16,
        32,
        48,
        64,
        96,
        128,
        256,
        512,
        1024,
        2048,
        3072,
        4096,
        8192,
        16 << 10,
    ];
    let used_heap = |salt| {
        let heap = TestHeap::new(8, 8);
        let mut rng = rng(salt);
        for size in sizes {
            let layout = Layout::from_size_align(size, 8).unwrap();
            let mut live = Live::default();
            for _ in 0..(256 << 10) / size {
                live.push(heap.allocate(layout).expect("room for 256 KiB"), layout);
            }
            live.free_all(&heap, &mut rng);
        }
        heap
    };
    type Fill = fn(&SpanHeap) -> usize;
    let fills: [(&str, Fill); 2] = [
        ("one-page runs", |heap| fill_pages(heap).len()),
        ("64 KiB objects", |heap| {
            fill(heap, Layout::from_size_align(64 << 10, 8).unwrap())
                .0
                .len()
        }),
    ];
    let mut failures = Vec::new();
    for (k, (what, fill)) in fills.into_iter().enumerate() {
        // The fresh heap gets its CPU cache too (metadata pages), so that only the
        // spans the used heap holds can make a difference.
        let fresh = TestHeap::new(8, 8);
        let one = Layout::new::<u64>();
        // SAFETY: allocated just now with `one`.
        unsafe { fresh.deallocate(fresh.allocate(one).unwrap(), one) };
        let n0 = fill(&fresh);
        let heap = used_heap(175 + k as u64);
        let freed = heap.assert_empty("after the small objects");
        let n1 = fill(&heap);
        let full = heap.assert_healthy("full");
        if n1 + 2 < n0 {
            failures.push(format!(
                "{n1} {what} fit after objects of {} classes were freed, {n0} in a fresh heap; \
                 {} bytes of empty spans were held:\n{freed}\nfull: {full}",
                sizes.len(),
                freed.span_free_bytes
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Allocates one-page runs until `None`; returns their addresses.
fn fill_pages(heap: &SpanHeap) -> Vec<NonNull<u8>> {
    let mut runs = Vec::new();
    while let Some(ptr) = heap.alloc_pages(1, PAGE) {
        assert_eq!(ptr.as_ptr() as usize % PAGE, 0, "page run not page-aligned");
        // SAFETY: a fresh page of ours.
        unsafe { ptr.as_ptr().cast::<usize>().write(runs.len()) };
        runs.push(ptr);
    }
    runs
}

fn free_pages_all(heap: &SpanHeap, runs: Vec<NonNull<u8>>, rng: &mut Rng) {
    let mut runs: Vec<_> = runs.into_iter().enumerate().collect();
    shuffle(&mut runs, rng);
    for (i, ptr) in runs {
        // SAFETY: the page is live.
        let found = unsafe { ptr.as_ptr().cast::<usize>().read() };
        assert_eq!(found, i, "page {i} overwritten");
        // SAFETY: a live one-page run of this heap.
        unsafe { heap.free_pages(ptr, 1) };
    }
}

/// The largest `n` for which `alloc_pages(n, PAGE)` succeeds (freed again), by
/// bisection: for the failure message.
fn longest_run(heap: &SpanHeap, upper: usize) -> usize {
    let (mut lo, mut hi) = (0, upper + 1);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        match heap.alloc_pages(mid, PAGE) {
            Some(ptr) => {
                // SAFETY: the run we just got.
                unsafe { heap.free_pages(ptr, mid) };
                lo = mid;
            }
            None => hi = mid,
        }
    }
    lo
}

/// (b) One-page runs until `None`, twice the same count, then one run of every
/// free page.
#[test]
fn page_runs_refill_and_coalesce() {
    // One arena exactly: the free pages can form one run.
    let heap = TestHeap::new(16, 16);
    let mut rng = rng(200);
    let start = heap.assert_empty("start");

    let runs = fill_pages(&heap);
    let n1 = runs.len();
    let full = heap.assert_healthy("full of pages");
    assert_eq!(full.page_run_bytes, n1 * PAGE);
    assert!(
        full.free_bytes <= PAGE,
        "pages still free when alloc_pages failed: \n{full}"
    );
    assert!(
        n1 * PAGE >= start.free_bytes / 8 * 7,
        "only {n1} one-page runs: \n{full}"
    );
    free_pages_all(&heap, runs, &mut rng);
    heap.assert_empty("after the first free");

    let runs = fill_pages(&heap);
    let n2 = runs.len();
    assert!(n2 >= n1, "the second fill got {n2} pages, the first {n1}");
    free_pages_all(&heap, runs, &mut rng);
    let empty = heap.assert_empty("after the second free");

    // An empty heap keeps no descriptor slab: one free page becomes the slab that
    // holds this run's own descriptor.
    let all = empty.free_bytes / PAGE - 1;
    match heap.alloc_pages(all, PAGE) {
        Some(ptr) => {
            // SAFETY: the run we just got.
            unsafe { heap.free_pages(ptr, all) };
        }
        None => panic!(
            "after freeing {n1} one-page runs, alloc_pages({all}) of all free pages fails: \
             the longest run is {} pages; stats before the fills: \n{start}, now: \n{empty}",
            longest_run(&heap, all)
        ),
    }
    heap.assert_empty("at the end");
}

/// The free pages coalesce into one run after any history, not only after a fill
/// from an empty heap: large objects fill one arena, every other one is freed, the
/// holes are filled with small objects (whose span descriptors need new slab pages
/// while the top of the arena is taken), and everything is freed. Then one
/// `alloc_pages` of every free page must succeed.
#[test]
fn coalesces_after_holes_refilled_with_small_objects() {
    let heap = TestHeap::new(16, 16);
    let mut rng = rng(250);
    let large = Layout::from_size_align(256 << 10, PAGE).unwrap();
    let small = Layout::from_size_align(48, 16).unwrap();
    // The CPU cache lives as long as the heap, and so does its descriptor: make it
    // first, so that its slab page sits at the top of the arena and not in a hole
    // (where it would split the free pages at the end whatever the heap does).
    let warm = heap.allocate(small).unwrap();
    // SAFETY: just allocated with `small`.
    unsafe { heap.deallocate(warm, small) };
    heap.trim();

    let mut larges = fill(&heap, large);
    let n = larges.0.len();
    let mut kept = Live::default();
    for (k, (ptr, layout, _)) in larges.0.drain(..).enumerate() {
        if k % 2 == 0 {
            // SAFETY: live, with this layout, dropped from the list.
            unsafe { heap.deallocate(ptr, layout) };
        } else {
            kept.push(ptr, layout);
        }
    }
    let mut smalls = fill(&heap, small);
    let full = heap.assert_healthy("holes refilled");
    let m = smalls.0.len();
    smalls.free_all(&heap, &mut rng);
    kept.free_all(&heap, &mut rng);
    // The centrals' reserve spans go back too: only metadata may stay.
    heap.trim();
    let empty = heap.assert_empty("after freeing everything and trim");
    assert_eq!(empty.span_free_bytes, 0, "trim left spans:\n{empty}");

    // An empty heap keeps no descriptor slab: one free page becomes the slab that
    // holds this run's own descriptor.
    let all = empty.free_bytes / PAGE - 1;
    match heap.alloc_pages(all, PAGE) {
        // SAFETY: the run we just got.
        Some(ptr) => unsafe { heap.free_pages(ptr, all) },
        None => panic!(
            "after {n} objects of 256 KiB, every other one freed, {m} objects of 48 B in the \
             holes, and all freed: alloc_pages({all}) of all free pages fails, the longest \
             run is {} pages\nfull: {full}\nempty: {empty}",
            longest_run(&heap, all)
        ),
    }
    heap.assert_empty("at the end");
}

/// (c) Mixed sizes until even one byte fails; then free all.
#[test]
fn mixed_sizes_until_exhaustion() {
    let heap = TestHeap::new(32, 8);
    let usable = heap.usable();
    let mut rng = rng(300);
    let mut live = Live::default();
    let mut failures = 0;
    let mut cap = usize::MAX;
    loop {
        let size = skewed_size(&mut rng).min(cap);
        let align = skewed_align(&mut rng);
        let layout = Layout::from_size_align(size, align).unwrap();
        let zeroed = rng.chance(100);
        let ptr = if zeroed {
            heap.allocate_zeroed(layout)
        } else {
            heap.allocate(layout)
        };
        match ptr {
            Some(ptr) => live.push(ptr, layout),
            None if size == 1 && align == 1 => break,
            None => {
                failures += 1;
                // Shrink the requests until even the smallest one fails.
                cap = (size / 2).max(1);
            }
        }
    }
    let full = heap.assert_healthy("full");
    eprintln!(
        "mixed: {} blocks, {failures} failed requests, {} of {usable} bytes in use",
        live.0.len(),
        full.in_use_bytes
    );
    assert!(
        full.free_bytes <= PAGE,
        "a one-byte request failed with pages free: \n{full}"
    );
    assert!(
        full.in_use_bytes >= usable / 4 * 3,
        "full with {} of {usable} usable bytes in use: \n{full}",
        full.in_use_bytes
    );
    live.free_all(&heap, &mut rng);
    heap.assert_empty("after freeing everything");
    heap.trim();
    heap.assert_empty("after trim");
}

/// Sizes no heap of this test can serve, up to `isize::MAX - 4096`.
const HUGE_SIZES: [usize; 8] = [
    (64 << 20) + 1,
    1 << 30,
    (1 << 30) + 1,
    1 << 40,
    usize::MAX / 4,
    isize::MAX as usize / 2 + 1,
    isize::MAX as usize - (1 << 30) - 4096,
    isize::MAX as usize - 4096,
];

const ALIGNS: [usize; 8] = [1, 8, 16, 4096, 1 << 16, 1 << 21, 1 << 28, 1 << 30];

/// (d) Requests the heap cannot serve give `None`, never a panic, and change nothing.
#[test]
fn impossible_requests_return_none() {
    for arena_mib in [8, 64] {
        let arena_mib = arena_mib * scale().next_power_of_two();
        let heap = TestHeap::new(8, arena_mib);
        let before = heap.assert_empty("start");
        // A live block that must survive every failed request, resize included.
        let keep = Layout::from_size_align(100, 8).unwrap();
        let kept = heap.allocate(keep).expect("a 100-byte block");
        // SAFETY: a live block of 100 bytes.
        unsafe { kept.as_ptr().write_bytes(0x5a, 100) };
        let with_block = heap.assert_healthy("with one block");

        for size in HUGE_SIZES {
            if size <= before.managed_bytes {
                continue; // with SPANHEAP_EXHAUST_SCALE
            }
            for align in ALIGNS {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let what = format!("arena {arena_mib} MiB, {layout:?}");
                assert_eq!(heap.allocate(layout), None, "{what}: allocate");
                assert_eq!(
                    heap.allocate_zeroed(layout),
                    None,
                    "{what}: allocate_zeroed"
                );
                // SAFETY: a valid layout with a non-zero size.
                let ptr = unsafe { heap.alloc(layout) };
                assert!(ptr.is_null(), "{what}: GlobalAlloc::alloc");
                // SAFETY: as above.
                let zeroed = unsafe { heap.alloc_zeroed(layout) };
                assert!(zeroed.is_null(), "{what}: GlobalAlloc::alloc_zeroed");
            }
            if size <= isize::MAX as usize - 7 {
                // SAFETY: `kept` is live with `keep`; `size` rounded up to 8 fits isize.
                let moved = unsafe { heap.reallocate(kept, keep, size) };
                assert_eq!(moved, None, "arena {arena_mib} MiB: reallocate to {size}");
                // SAFETY: as above.
                let moved = unsafe { heap.realloc(kept.as_ptr(), keep, size) };
                assert!(
                    moved.is_null(),
                    "arena {arena_mib} MiB: GlobalAlloc::realloc to {size}"
                );
            }
        }
        // Small sizes with alignments beyond the arena size.
        for align in [1 << 27, 1 << 28, 1 << 29, 1 << 30] {
            if align <= heap.config().arena_size {
                continue;
            }
            for size in [1, 64, 4096, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                assert_eq!(heap.allocate(layout), None, "{layout:?}");
                assert_eq!(heap.allocate_zeroed(layout), None, "{layout:?}");
            }
        }
        // Free pages, and those the CPU's page cache holds (given back on demand).
        let stats = heap.stats();
        let pages = (stats.free_bytes + stats.cached_bytes) / PAGE;
        let counts = [
            pages + 1,
            1 << 20,
            usize::MAX / PAGE,
            usize::MAX / PAGE + 1,
            usize::MAX,
        ];
        for count in counts {
            for align in [PAGE, 1 << 21, 1 << 30, 1 << 40, 1 << 62] {
                let run = heap.alloc_pages(count, align);
                assert_eq!(
                    run, None,
                    "arena {arena_mib} MiB: alloc_pages({count}, {align:#x})"
                );
            }
        }
        for align in [1 << 30, 1 << 40, 1 << 62] {
            if align > heap.config().arena_size {
                let run = heap.alloc_pages(1, align);
                assert_eq!(
                    run, None,
                    "arena {arena_mib} MiB: alloc_pages(1, {align:#x})"
                );
            }
        }

        // SAFETY: still live, 100 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(kept.as_ptr(), 100) };
        assert!(
            bytes.iter().all(|&b| b == 0x5a),
            "a failed request changed the live block"
        );
        let after = heap.assert_healthy("after the impossible requests");
        assert_eq!(after.in_use_bytes, with_block.in_use_bytes);
        // A failed request loses no page; the trim before it may have given the
        // caches' pages back.
        assert!(
            after.free_bytes >= with_block.free_bytes,
            "after: {after}\nbefore: {with_block}"
        );
        // SAFETY: live, with this layout.
        unsafe { heap.deallocate(kept, keep) };
        let end = heap.assert_empty("at the end");
        assert_eq!(end.managed_bytes, before.managed_bytes);

        // The heap still serves ordinary requests.
        let layout = Layout::from_size_align(1 << 20, 4096).unwrap();
        let ptr = heap
            .allocate(layout)
            .expect("1 MiB after the impossible requests");
        // SAFETY: live, with this layout.
        unsafe { heap.deallocate(ptr, layout) };
        heap.assert_empty("after a last 1 MiB block");
    }
}

/// A heap without memory, and one whose configuration refused all memory, serve
/// nothing and report nothing.
#[test]
fn empty_heap_returns_none() {
    let backing = Backing::new(4 << 20, 1 << 21);
    let bad = SpanHeap::with_config(Config {
        arena_size: 3 << 20,
        ..Config::default()
    });
    let range = MemoryRange::new(backing.start(), backing.end());
    // SAFETY: our memory, outliving the heap (it is refused anyway).
    let added = unsafe { bad.add_memory(range) };
    assert!(added.is_err(), "arena size 3 MiB accepted");
    for heap in [&SpanHeap::new(), &bad] {
        for (size, align) in [
            (1, 1),
            (64, 8),
            (4096, 4096),
            (1 << 20, 8),
            (usize::MAX / 4, 1),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            assert_eq!(heap.allocate(layout), None);
            assert_eq!(heap.allocate_zeroed(layout), None);
            // SAFETY: a valid layout with a non-zero size.
            assert!(unsafe { heap.alloc(layout) }.is_null());
        }
        assert_eq!(heap.alloc_pages(1, PAGE), None);
        assert_eq!(heap.alloc_pages(usize::MAX, PAGE), None);
        heap.check_invariants().expect("empty heap invariants");
        let stats = heap.stats();
        assert!(stats.balances());
        assert_eq!(
            (stats.managed_bytes, stats.in_use_bytes, stats.arenas),
            (0, 0, 0)
        );
    }
}
