//! Scenario: a panicking kernel. The runner must report failure and show the message.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::{println, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(_boot_info: &'static mut BootInfo) -> ! {
    println!("about to panic");
    panic!("deliberate panic from test_panic (code {})", 42);
}
