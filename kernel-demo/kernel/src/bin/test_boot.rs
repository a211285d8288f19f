//! Scenario: the kernel boots, has all physical memory mapped, and can read and write
//! usable RAM through that mapping.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, info::MemoryRegionKind, BootInfo};
use spanheap_kernel::{exit_qemu, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("the bootloader did not map physical memory");
    let region = boot_info
        .memory_regions
        .iter()
        .rev()
        .find(|r| r.kind == MemoryRegionKind::Usable && r.end - r.start >= 4096)
        .expect("no usable region of at least one page");
    let word = (offset + region.start) as *mut u64;
    // SAFETY: the region is Usable (nobody else owns it) and mapped at `offset`; the
    // address is page-aligned, so the u64 access is aligned.
    let read_back = unsafe {
        word.write_volatile(0x5ba7_4ea9_0123_4567);
        word.read_volatile()
    };
    assert_eq!(
        read_back, 0x5ba7_4ea9_0123_4567,
        "usable RAM did not keep a word"
    );
    println!("boot ok: physical memory at {:#x}", offset);
    exit_qemu(QemuExitCode::Success)
}
