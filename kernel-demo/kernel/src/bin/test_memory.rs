//! Scenario: print the memory totals the bootloader reported; the host test compares
//! them with the `-m` QEMU was given.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::{exit_qemu, memory_map, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    let totals = memory_map::print(&boot_info.memory_regions);
    assert!(totals.usable > 0, "no usable memory reported");
    exit_qemu(QemuExitCode::Success)
}
