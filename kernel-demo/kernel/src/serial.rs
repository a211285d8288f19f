//! A polled 16550 UART driver for COM1 and the `print!` / `println!` macros.
//!
//! # Invariants
//!
//! - [`SERIAL`] is initialised on first use; every byte goes out through it, under its
//!   spin lock, so lines from different CPUs do not interleave within one `print!`.

use core::fmt::{self, Write};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// The base I/O port of COM1.
const COM1: u16 = 0x3f8;

/// A 16550 UART driven by polling (no interrupts).
struct SerialPort {
    base: u16,
    initialised: bool,
}

impl SerialPort {
    const fn new(base: u16) -> Self {
        Self {
            base,
            initialised: false,
        }
    }

    fn outb(&self, offset: u16, value: u8) {
        // SAFETY: the ports base..base+7 belong to the UART, which has no effect on
        // memory; only this driver touches them, under the SERIAL lock.
        unsafe { Port::<u8>::new(self.base + offset).write(value) }
    }

    fn inb(&self, offset: u16) -> u8 {
        // SAFETY: as in `outb`: reading UART registers has no effect on memory.
        unsafe { Port::<u8>::new(self.base + offset).read() }
    }

    fn init(&mut self) {
        self.outb(1, 0x00); // interrupts off
        self.outb(3, 0x80); // DLAB on
        self.outb(0, 0x01); // divisor 1: 115200 baud
        self.outb(1, 0x00);
        self.outb(3, 0x03); // 8 bits, no parity, one stop bit
        self.outb(2, 0xc7); // FIFO on, cleared, 14-byte threshold
        self.outb(4, 0x0b); // DTR, RTS, OUT2
        self.initialised = true;
    }

    fn send(&mut self, byte: u8) {
        if !self.initialised {
            self.init();
        }
        // Wait for the transmit holding register to empty (line status bit 5).
        while self.inb(5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        self.outb(0, byte);
    }
}

impl Write for SerialPort {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.send(b'\r');
            }
            self.send(byte);
        }
        Ok(())
    }
}

static SERIAL: Mutex<SerialPort> = Mutex::new(SerialPort::new(COM1));

/// Writes formatted text to COM1; used by [`print!`](crate::print).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // Writing to the UART cannot fail.
        let _ = SERIAL.lock().write_fmt(args);
    });
}

/// Releases the serial lock even if its holder will never return (used by the panic
/// handler, which may run while `print!` holds the lock).
pub fn force_unlock() {
    if SERIAL.is_locked() {
        // SAFETY: called only on the panic path, after which no other code on this
        // CPU resumes; another CPU in the middle of a line may interleave bytes, which
        // is acceptable for a dying kernel's last message.
        unsafe { SERIAL.force_unlock() };
    }
}

/// Prints to the serial console (COM1).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints to the serial console (COM1), with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::print!("{}\n", format_args!($($arg)*)) };
}
