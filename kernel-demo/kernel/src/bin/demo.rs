//! The spanheap demo kernel: prints the memory map it was given, makes spanheap its
//! global allocator over that memory, runs a `Vec` / `Box` / `BTreeMap` / `String`
//! workload and prints the heap's statistics.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, memory_map, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    println!("spanheap demo kernel");
    memory_map::print(&boot_info.memory_regions);
    heap::init(boot_info);
    println!("before the workload:\n{}", HEAP.stats());
    let result = heap::workload(2_000);
    println!("workload: {result:?}");
    println!("after the workload (everything dropped):\n{}", HEAP.stats());
    exit_qemu(QemuExitCode::Success)
}
