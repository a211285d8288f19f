//! Scenario: spanheap as the global allocator over the bootloader's memory. Runs the
//! workload, checks its results against values computed without the heap, checks the
//! heap's invariants, and that after everything is dropped no byte is in use. Then
//! moves GS to a per-CPU block of the kernel's own, with the global heap's word at
//! offset 0 and a second heap's (`X86_64Gs<16>`) at offset 16, and checks that both
//! heaps serve CPU 0 from their caches.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{entry_point, BootInfo};
use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};
use spanheap::platform::{CpuInitError, Platform, X86_64Gs, MAX_CPUS};
use spanheap::{MemoryRange, SpanHeap};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, println, QemuExitCode, BOOTLOADER_CONFIG};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

entry_point!(main, config = &BOOTLOADER_CONFIG);

/// A per-CPU block as a kernel keeps one behind GS: the global heap's word
/// (`X86_64Gs<0>`), a word of the kernel's own, and a second heap's word.
#[repr(C, align(64))]
struct KernelBlock {
    heap_word: AtomicUsize,
    kernel_word: AtomicUsize,
    second_word: AtomicUsize,
}

/// CPU 0's block (this test runs on one CPU).
static BLOCK: KernelBlock = KernelBlock {
    heap_word: AtomicUsize::new(0),
    kernel_word: AtomicUsize::new(0),
    second_word: AtomicUsize::new(0),
};

/// A heap whose CPU index is the word at offset 16 of the GS block.
static SECOND: SpanHeap<X86_64Gs<16>> = SpanHeap::new();

/// Pages of the global heap that `SECOND` manages.
const SECOND_PAGES: usize = 1024;

/// The vector sum the workload must produce, computed without allocating.
fn expected_vec_sum(rounds: u64) -> u64 {
    let mut sum = 0u64;
    for round in 0..rounds {
        let len = 1 + (round * 7919) % 20_000;
        for i in 0..len {
            sum = sum.wrapping_add(i ^ round);
        }
    }
    sum
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    let before = HEAP.stats();
    assert!(before.managed_bytes > 0, "the heap took no memory");
    assert_eq!(before.in_use_bytes, 0);

    let rounds = 1_500;
    let result = heap::workload(rounds);
    println!("workload: {result:?}");
    assert_eq!(result.vec_sum, expected_vec_sum(rounds), "vector contents");
    assert!(result.map_len > 0 && result.boxes > 0);

    let after = HEAP.stats();
    println!("{after}");
    assert!(after.balances(), "stats do not balance");
    assert_eq!(
        after.in_use_bytes, 0,
        "bytes still in use after the workload"
    );
    assert_eq!(after.bad_frees, 0);
    HEAP.check_invariants().expect("heap invariants");
    let cpu = HEAP.cpu_stats(0).expect("CPU 0 has a cache");
    println!("cpu 0 cache: {cpu}");
    assert!(
        cpu.allocs > 0 && cpu.frees > 0,
        "CPU 0 served allocations from its cache"
    );
    assert!(cpu.refills > 0, "the cache was refilled from the centrals");
    HEAP.drain_cpu();
    let cpu = HEAP.cpu_stats(0).expect("CPU 0 has a cache");
    assert_eq!(cpu.cached_bytes, 0, "drain_cpu empties the cache");
    // What the cache flushed whole may still sit in the centrals' transfer caches:
    // `trim` gives it back to the spans.
    HEAP.trim();
    let drained = HEAP.stats();
    assert_eq!(drained.cached_bytes, 0, "trim empties the transfer caches");
    assert!(drained.balances());
    HEAP.check_invariants()
        .expect("heap invariants after drain and trim");
    println!(
        "after drain and trim: {} KiB in spans, {} KiB free",
        drained.span_free_bytes / 1024,
        HEAP.stats().free_bytes / 1024
    );
    println!(
        "stats balance: ok; in use after drop: {} bytes",
        after.in_use_bytes
    );
    println!(
        "metadata: {} KiB of {} KiB managed ({:.3}%)",
        after.metadata_bytes / 1024,
        after.managed_bytes / 1024,
        after.metadata_ratio() * 100.0
    );
    kernel_gs_block();
    println!("heap test ok");
    exit_qemu(QemuExitCode::Success)
}

/// GS on a block of the kernel's own: `X86_64Gs::init_cpu` at two offsets.
fn kernel_gs_block() {
    // The global heap's word keeps CPU 0's value across the move.
    BLOCK.heap_word.store(1, Ordering::Relaxed);
    BLOCK.kernel_word.store(0x5eed, Ordering::Relaxed);
    // No heap call is in progress; the block is CPU 0's alone and its word at offset 0
    // holds what spanheap's block held (CPU 0), so HEAP's index does not change;
    // nothing else uses GS in this kernel.
    GsBase::write(VirtAddr::from_ptr(&BLOCK));
    let pages = HEAP
        .alloc_pages(SECOND_PAGES, 4096)
        .expect("pages for the second heap");
    let start = pages.as_ptr() as usize;
    // SAFETY: pages of the global heap that nothing else uses until the test ends.
    unsafe { SECOND.add_memory(MemoryRange::new(start, start + SECOND_PAGES * 4096)) }
        .expect("the second heap takes the pages");

    // Before `init_cpu` the word at offset 16 is 0: no index, no cache.
    assert_eq!(X86_64Gs::<16>::cpu_index(), None);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let p = SECOND
        .allocate(layout)
        .expect("an allocation without a cache");
    // SAFETY: allocated just above with `layout`.
    unsafe { SECOND.deallocate(p, layout) };
    assert!(SECOND.cpu_stats(0).is_none(), "no cache without an index");

    assert_eq!(
        // SAFETY: as above; the index is refused before anything is written.
        unsafe { X86_64Gs::<16>::init_cpu(MAX_CPUS) },
        Err(CpuInitError::IndexTooLarge)
    );
    assert_eq!(BLOCK.second_word.load(Ordering::Relaxed), 0);
    // SAFETY: ring 0, CPU 0, no heap call in progress; the word at offset 16 of CPU
    // 0's block is the second heap's alone.
    unsafe { X86_64Gs::<16>::init_cpu(0) }.expect("index 0");
    assert_eq!(BLOCK.second_word.load(Ordering::Relaxed), 1);
    assert_eq!(X86_64Gs::<16>::cpu_index(), Some(0));
    assert_eq!(
        BLOCK.kernel_word.load(Ordering::Relaxed),
        0x5eed,
        "the kernel's word"
    );

    let before = HEAP.cpu_stats(0).expect("CPU 0 has a cache").allocs;
    for _ in 0..100 {
        let p = SECOND
            .allocate(layout)
            .expect("an allocation from the cache");
        // 32 bytes: a small class (under 16 it would be a tiny block's sub-object).
        let boxed = core::hint::black_box(alloc::boxed::Box::new([7u64; 4]));
        // SAFETY: allocated just above with `layout`.
        unsafe { SECOND.deallocate(p, layout) };
        drop(boxed);
    }
    let second = SECOND
        .cpu_stats(0)
        .expect("CPU 0 has a cache in the second heap");
    println!("second heap, cpu 0 cache: {second}");
    assert!(
        second.allocs >= 100 && second.frees >= 100,
        "served from the cache"
    );
    let after = HEAP.cpu_stats(0).expect("CPU 0 has a cache").allocs;
    assert!(
        after >= before + 100,
        "the global heap still serves CPU 0 from its cache"
    );
    SECOND.drain_cpu();
    SECOND.trim();
    assert_eq!(SECOND.stats().in_use_bytes, 0);
    SECOND.check_invariants().expect("second heap invariants");
    println!("kernel gs block: ok");
}
