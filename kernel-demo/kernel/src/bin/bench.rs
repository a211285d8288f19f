//! Scenario: the in-kernel benchmark ([`spanheap_kernel::bench`]): pairs, larson and
//! cross-CPU batch frees against spanheap, talc, linked_list_allocator and the harness
//! floor on every CPU QEMU provides, one result line per case on serial. Booted by
//! `spanheap-runner kernel-bench` (under `-icount shift=0` on one CPU, and with
//! multi-threaded TCG on 1, 2 and 4 CPUs) and by the runner's `bench` test.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::BOOTLOADER_CONFIG;

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    spanheap_kernel::bench::main(boot_info)
}
