//! Scenario: spanheap as the global allocator over the bootloader's memory. Runs the
//! workload, checks its results against values computed without the heap, checks the
//! heap's invariants, and that after everything is dropped no byte is in use.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

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
    println!("heap test ok");
    exit_qemu(QemuExitCode::Success)
}
