//! The local APIC in xAPIC mode (QEMU's TCG has no x2APIC): its register page at
//! physical `0xFEE0_0000`, mapped uncached at that address plus the physical-memory
//! offset, and the registers the kernels use: the interrupt command register for
//! AP start-up, the spurious-vector register, the timer and EOI.
//!
//! Every CPU sees its own local APIC at the same physical address, so one mapping
//! serves all CPUs and a [`LocalApic`] always talks to the APIC of the CPU running.
//!
//! # Invariants
//!
//! - a [`LocalApic`] exists only once [`LocalApic::map`] has mapped the register page
//!   (its base is the mapped address, published in `BASE`); the mapping is never
//!   removed.

use crate::paging;
use bootloader_api::BootInfo;
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::structures::paging::PageTableFlags;

/// Physical address of the local APIC's register page (the xAPIC default).
const PHYS_BASE: u64 = 0xFEE0_0000;

/// Register offsets in the page.
const ID: usize = 0x20;
const TPR: usize = 0x80;
const EOI: usize = 0xB0;
const SVR: usize = 0xF0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_DIVIDE: usize = 0x3E0;

/// SVR: the APIC is software-enabled.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT: the entry is masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: periodic mode.
const LVT_PERIODIC: u32 = 1 << 17;
/// Timer divide configuration: divide by 1.
const DIVIDE_BY_1: u32 = 0b1011;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR destination shorthand: all CPUs but this one.
const ALL_BUT_SELF: u32 = 0b11 << 18;

/// The virtual address of the register page, 0 until [`LocalApic::map`].
static BASE: AtomicUsize = AtomicUsize::new(0);

/// Access to the running CPU's local APIC through its mapped register page.
#[derive(Debug, Clone, Copy)]
pub struct LocalApic {
    base: usize,
}

impl LocalApic {
    /// Maps the register page (once; later calls find it mapped) and returns access
    /// to the APIC. Call on the bootstrap CPU before other CPUs use [`LocalApic::get`].
    ///
    /// Panics when the bootloader mapped no physical memory.
    pub fn map(boot_info: &BootInfo) -> Self {
        let offset = boot_info
            .physical_memory_offset
            .into_option()
            .expect("physical memory is mapped");
        let base = PHYS_BASE + offset;
        let flags = PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | PageTableFlags::NO_CACHE
            | PageTableFlags::WRITE_THROUGH;
        // SAFETY: 1. the boot config maps physical memory at `offset`, the page tables
        // are the bootloader's; 2. only the bootstrap CPU maps, before the APs start or
        // use the APIC (this function's contract); 3. the frame is the APIC's MMIO
        // page, which no Rust object owns.
        unsafe { paging::map_page(offset, base, PHYS_BASE, flags) };
        BASE.store(base as usize, Ordering::Release);
        Self {
            base: base as usize,
        }
    }

    /// The running CPU's APIC, once [`LocalApic::map`] has run.
    pub fn get() -> Option<Self> {
        match BASE.load(Ordering::Acquire) {
            0 => None,
            base => Some(Self { base }),
        }
    }

    fn write(&self, reg: usize, value: u32) {
        // SAFETY: `base` is the mapped, uncached register page (type invariant) and
        // `reg` one of its register offsets; a register write has no effect on memory.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) }
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: as in `write`; reading a register has no side effect on memory.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    /// The running CPU's APIC ID.
    pub fn id(&self) -> u32 {
        self.read(ID) >> 24
    }

    /// Sends an IPI to all CPUs but this one and waits until it is delivered.
    pub fn broadcast(&self, command: u32) {
        self.write(ICR_HIGH, 0);
        self.write(ICR_LOW, command | ALL_BUT_SELF);
        while self.read(ICR_LOW) & ICR_PENDING != 0 {
            core::hint::spin_loop();
        }
    }

    /// Software-enables the APIC with `spurious_vector` and accepts every priority.
    pub fn enable(&self, spurious_vector: u8) {
        self.write(TPR, 0);
        self.write(SVR, SVR_ENABLE | u32::from(spurious_vector));
    }

    /// Starts the timer in periodic mode: an interrupt on `vector` every
    /// `initial_count` bus cycles (divide by 1; QEMU's APIC bus runs at 1 GHz, so one
    /// cycle is one nanosecond of guest time).
    pub fn start_periodic_timer(&self, vector: u8, initial_count: u32) {
        self.write(TIMER_DIVIDE, DIVIDE_BY_1);
        self.write(LVT_TIMER, LVT_PERIODIC | u32::from(vector));
        self.write(TIMER_INITIAL, initial_count);
    }

    /// Stops the timer: the LVT entry masked, the count zero. An interrupt already
    /// pending may still be delivered once interrupts are on.
    pub fn stop_timer(&self) {
        self.write(LVT_TIMER, LVT_MASKED);
        self.write(TIMER_INITIAL, 0);
    }

    /// Signals the end of the interrupt being handled.
    pub fn end_of_interrupt(&self) {
        self.write(EOI, 0);
    }
}
