//! Support code shared by the spanheap demo and test kernels: boot configuration, the
//! COM1 serial console, the QEMU exit device and the panic handler; page mappings
//! ([`paging`]), the local APIC ([`apic`]), the IDT and APIC timer ([`interrupts`])
//! and AP start-up ([`smp`]).
//!
//! Every kernel binary in `src/bin/` is one scenario, booted by the host runner
//! (`kernel-demo/runner`) in QEMU. A kernel reports success by [`exit_qemu`] with
//! [`QemuExitCode::Success`] (QEMU exits with status 33) and failure by panicking: the
//! panic handler prints the message and location on serial, then exits with
//! [`QemuExitCode::Failure`] (status 35).
//!
//! # Invariants
//!
//! - Output goes through one spin-locked serial port; a panic while the lock is held
//!   (a panic inside `print!`) forces the lock so that the message still gets out.
#![no_std]
// The IDT's handlers use the `x86-interrupt` calling convention (the kernels build on
// the pinned nightly).
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod heap;

pub mod bench;
pub mod fw_cfg;

pub mod apic;
pub mod interrupts;
pub mod memory_map;
pub mod paging;
pub mod qemu;
pub mod serial;
pub mod smp;

use bootloader_api::config::{BootloaderConfig, Mapping};

/// Boot configuration of every spanheap kernel: all physical memory mapped at an
/// offset the bootloader chooses, and a 128 KiB boot stack.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 128 * 1024;
    config
};

pub use qemu::{exit_qemu, QemuExitCode};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial::force_unlock();
    println!("[panic] {}", info);
    exit_qemu(QemuExitCode::Failure)
}
