//! Printing and summing the memory map the bootloader reports.
//!
//! # Invariants
//!
//! - read-only: nothing here changes the memory map or allocates.

use crate::println;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// Byte totals of a memory map, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTotals {
    /// Bytes of kind `Usable`: free RAM the kernel may use.
    pub usable: u64,
    /// Bytes of kind `Bootloader`: RAM holding the kernel, its page tables and boot info.
    pub bootloader: u64,
    /// Bytes of every other kind (BIOS- or firmware-reserved).
    pub reserved: u64,
}

impl MemoryTotals {
    /// Sums the regions of `regions` by kind.
    pub fn of(regions: &[MemoryRegion]) -> Self {
        let mut totals = Self::default();
        for region in regions {
            let len = region.end - region.start;
            match region.kind {
                MemoryRegionKind::Usable => totals.usable += len,
                MemoryRegionKind::Bootloader => totals.bootloader += len,
                _ => totals.reserved += len,
            }
        }
        totals
    }

    /// RAM the machine gave the kernel: usable plus what the bootloader occupies.
    pub fn ram(&self) -> u64 {
        self.usable + self.bootloader
    }
}

/// Prints every region (start, end, size, kind) and the totals, in the line format
/// the runner's tests parse: `memory: usable_kib=U bootloader_kib=B ram_kib=R`.
pub fn print(regions: &[MemoryRegion]) -> MemoryTotals {
    println!("memory map: {} regions", regions.len());
    for region in regions {
        println!(
            "  {:#012x}..{:#012x} {:>9} KiB  {:?}",
            region.start,
            region.end,
            (region.end - region.start) / 1024,
            region.kind
        );
    }
    let totals = MemoryTotals::of(regions);
    println!(
        "memory: usable_kib={} bootloader_kib={} ram_kib={}",
        totals.usable / 1024,
        totals.bootloader / 1024,
        totals.ram() / 1024
    );
    println!("total usable: {} MiB", totals.usable / (1024 * 1024));
    totals
}
