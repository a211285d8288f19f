//! Bugs found by the cargo-fuzz target `heap_actions` (`fuzz/`), each as the smallest
//! reproduction in a plain test, kept after the fix so that the bug stays fixed.

use spanheap::platform::HostThreads;
use spanheap::{Config, MemoryRange, SpanHeap};
use std::alloc::Layout;

/// A heap over `size` bytes of fresh host memory, which is never freed (a test's heap
/// lives until the process ends).
fn heap(size: usize) -> SpanHeap<HostThreads> {
    let layout = Layout::from_size_align(size, 1 << 21).unwrap();
    // SAFETY: a non-zero size.
    let base = unsafe { std::alloc::alloc(layout) } as usize;
    assert_ne!(base, 0);
    let heap = SpanHeap::with_config(Config::DEFAULT);
    // SAFETY: fresh memory, the heap's for the rest of the process.
    unsafe { heap.add_memory(MemoryRange::new(base, base + size)) }.unwrap();
    heap
}

/// `reallocate` of a tiny object to 0 bytes returns it in place (the 8-byte class
/// serves both layouts, and a shrink is not a tiny growth), but the object is still
/// a sub-object of a 16-byte tiny block, and a 0-byte layout is not a tiny layout:
/// `deallocate` then takes the 16-byte span for a wrong layout, refuses the free
/// (`FreeError::WrongLayout`) and the object and its block are never freed.
/// The fuzz input: `Alloc { size: 5, align: 1 }`, `Realloc { index: 0, size: 0 }`;
/// the target saw 0 objects of the 8-byte class where the model had one, and the
/// final free refused. Fixed: `reallocate` moves a tiny object whose new layout is
/// not tiny.
#[test]
fn a_tiny_object_reallocated_to_zero_bytes_can_be_freed() {
    let heap = heap(4 << 20);
    let tiny = Layout::from_size_align(5, 1).unwrap();
    let p = heap.allocate(tiny).unwrap();
    // SAFETY: from allocate(tiny); 0 bytes rounded up to align 1 fits isize.
    let q = unsafe { heap.reallocate(p, tiny, 0) }.unwrap();
    // SAFETY: q is live with the 0-byte layout.
    unsafe { heap.deallocate(q, Layout::from_size_align(0, 1).unwrap()) };
    let stats = heap.stats();
    assert_eq!(stats.bad_frees, 0, "the free was refused\n{stats}");
    heap.drain_cpu();
    assert_eq!(heap.stats().in_use_bytes, 0, "{}", heap.stats());
    heap.check_invariants().unwrap();
}

/// `reallocate` of a large object aligned beyond a page (so that a 0-byte layout with
/// that alignment is large too) to 0 bytes resizes it in place to 0 pages: its only
/// page goes back to the page heap while the object is live, and its span keeps 0
/// pages. The next page run lands on the live object (`alloc_pages(1, 4096)` returns
/// its address on the first call at c4f56b5); `stats()` counts the object with 0
/// bytes; and `check_invariants()` never returns (its span walk steps by the span's
/// page count, 0). The fuzz input: `Alloc { size: 3, align: 64 KiB }`,
/// `Realloc { index: 0, size: 0 }`; the target saw `large_bytes` 0 for one live
/// large object. Fixed: a large object keeps at least one page.
#[test]
fn a_large_aligned_object_reallocated_to_zero_bytes_keeps_its_page() {
    let heap = heap(4 << 20);
    let layout = Layout::from_size_align(3, 8192).unwrap();
    let p = heap.allocate(layout).unwrap();
    // SAFETY: from allocate(layout); 0 bytes rounded up to 8192 fits isize.
    let q = unsafe { heap.reallocate(p, layout, 0) }.unwrap();
    assert!(heap.stats().large_bytes >= 4096, "{}", heap.stats());
    let runs: Vec<_> = (0..64).map_while(|_| heap.alloc_pages(1, 4096)).collect();
    assert!(
        !runs.contains(&q),
        "a page run overlaps the live object at {q:?}"
    );
    // SAFETY: q is live with the 0-byte layout; the runs are live runs of one page.
    unsafe {
        heap.deallocate(q, Layout::from_size_align(0, 8192).unwrap());
        for run in runs {
            heap.free_pages(run, 1);
        }
    }
    assert_eq!(heap.stats().in_use_bytes, 0, "{}", heap.stats());
    heap.check_invariants().unwrap();
}
