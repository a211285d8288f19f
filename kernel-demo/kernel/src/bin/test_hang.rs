//! Scenario: a kernel that never exits. The runner must kill it at its timeout and
//! report what it printed.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::{println, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(_boot_info: &'static mut BootInfo) -> ! {
    println!("hanging on purpose");
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
