//! Leaving QEMU with a status through the `isa-debug-exit` device at port 0xf4.
//!
//! QEMU exits with `(value << 1) | 1`: [`QemuExitCode::Success`] (0x10) gives 33,
//! [`QemuExitCode::Failure`] (0x11) gives 35. The runner maps 33 to success.
//!
//! # Invariants
//!
//! - `exit_qemu` never returns: after the port write it halts forever.

use x86_64::instructions::{hlt, interrupts, port::Port};

/// The I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What the kernel tells the runner when it leaves QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum QemuExitCode {
    /// The scenario passed (QEMU exit status 33).
    Success = 0x10,
    /// The scenario failed (QEMU exit status 35).
    Failure = 0x11,
}

/// Ends the QEMU session with `code`. Never returns: if no debug-exit device is
/// present, the CPU halts with interrupts off.
pub fn exit_qemu(code: QemuExitCode) -> ! {
    let mut port = Port::<u32>::new(DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device in every configuration the
    // runner boots; writing to it has no effect on memory.
    unsafe { port.write(code as u32) };
    interrupts::disable();
    loop {
        hlt();
    }
}
