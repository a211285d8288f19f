//! The spanheap demo kernel: prints the memory map it was given and exits.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::{exit_qemu, memory_map, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    println!("spanheap demo kernel");
    memory_map::print(&boot_info.memory_regions);
    exit_qemu(QemuExitCode::Success)
}
