//! The spanheap demo kernel: prints the memory map it was given, makes spanheap its
//! global allocator over that memory, runs a `Vec` / `Box` / `BTreeMap` / `String`
//! workload and prints the heap's statistics. Then it brings up every other CPU QEMU
//! provides (each registers with the heap and runs the workload too), prints what
//! each CPU's cache served, drains the stopped CPUs' caches and prints the heap again.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, memory_map, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

/// Rounds of the workload on the bootstrap CPU before the others start.
const ROUNDS: u64 = 2_000;

fn main(boot_info: &'static mut BootInfo) -> ! {
    println!("spanheap demo kernel");
    memory_map::print(&boot_info.memory_regions);
    heap::init(boot_info);
    println!("before the workload:\n{}", HEAP.stats());
    let result = heap::workload(ROUNDS);
    println!("workload: {result:?}");
    println!("after the workload (everything dropped):\n{}", HEAP.stats());

    let aps = heap::workload_on_every_cpu(boot_info);
    for cpu in 0..=aps {
        match HEAP.cpu_stats(cpu) {
            Some(stats) => println!("cpu {cpu} cache: {stats}"),
            None => println!("cpu {cpu}: no cache"),
        }
    }
    heap::drain_stopped_aps(aps);
    println!(
        "after every CPU's workload, caches drained and trimmed (the stopped CPUs' \
         stacks stay in use):\n{}",
        HEAP.stats()
    );
    exit_qemu(QemuExitCode::Success)
}
