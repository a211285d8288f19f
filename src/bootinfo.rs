//! Adapter from `bootloader_api`'s [`BootInfo`] to heap memory (feature `bootloader`).
//!
//! The bootloader reports physical memory regions and maps all physical memory at
//! `physical_memory_offset` (when the kernel's boot config asks for it). Each region of
//! kind `Usable` becomes a [`MemoryRange`] of virtual addresses `offset + physical`.
//! Physical memory below [`LOW_MEMORY_LIMIT`] (1 MiB) is left to the kernel: it holds
//! the real-mode IVT and BIOS data and is where AP trampolines must live.
//!
//! # Invariants
//!
//! - every range handed to the heap is `offset + physical` of a `Usable` region, at or
//!   above [`LOW_MEMORY_LIMIT`]; nothing else of the memory map is touched.

use crate::platform::Platform;
use crate::range::MemoryRange;
use crate::SpanHeap;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::BootInfo;

/// Physical memory below this address is not given to the heap.
pub const LOW_MEMORY_LIMIT: u64 = 1 << 20;

/// Why the boot information cannot feed the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// The boot config did not ask for a physical-memory mapping
    /// (`config.mappings.physical_memory = Some(Mapping::Dynamic)`).
    NoPhysicalMemoryMapping,
}

/// The physical-memory offset of `boot_info`.
///
/// # Errors
///
/// [`BootInfoError::NoPhysicalMemoryMapping`] when physical memory is not mapped.
pub fn physical_memory_offset(boot_info: &BootInfo) -> Result<usize, BootInfoError> {
    boot_info
        .physical_memory_offset
        .as_ref()
        .map(|offset| *offset as usize)
        .ok_or(BootInfoError::NoPhysicalMemoryMapping)
}

/// The usable regions at or above [`LOW_MEMORY_LIMIT`], as virtual ranges at `offset`.
pub fn usable_ranges(
    regions: &MemoryRegions,
    offset: usize,
) -> impl Iterator<Item = MemoryRange> + '_ {
    regions
        .iter()
        .filter(|region| region.kind == MemoryRegionKind::Usable)
        .filter_map(move |region| {
            let start = region.start.max(LOW_MEMORY_LIMIT);
            (start < region.end)
                .then(|| MemoryRange::new(offset + start as usize, offset + region.end as usize))
        })
}

/// What [`add_boot_memory`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootMemory {
    /// Ranges the heap took.
    pub added: usize,
    /// Ranges the heap refused (too small for arena metadata, typically); the first
    /// refusal is in `first_error`.
    pub refused: usize,
    /// The first refusal.
    pub first_error: Option<crate::AddMemoryError>,
}

/// Gives every usable region of `boot_info` (above [`LOW_MEMORY_LIMIT`]) to `heap`
/// and records the physical-memory offset for [`SpanHeap::phys_addr`].
///
/// # Errors
///
/// [`BootInfoError::NoPhysicalMemoryMapping`] when physical memory is not mapped.
///
/// # Safety
///
/// The usable regions are not used by anything else (the bootloader's guarantee, as
/// long as the kernel has not taken frames from them itself), and the physical-memory
/// mapping stays in place while the heap lives.
pub unsafe fn add_boot_memory<P: Platform>(
    heap: &SpanHeap<P>,
    boot_info: &BootInfo,
) -> Result<BootMemory, BootInfoError> {
    let offset = physical_memory_offset(boot_info)?;
    heap.set_phys_offset(offset);
    let mut report = BootMemory::default();
    for range in usable_ranges(&boot_info.memory_regions, offset) {
        // SAFETY: forwarded from the caller: usable, mapped, unused memory.
        match unsafe { heap.add_memory(range) } {
            Ok(()) => report.added += 1,
            Err(error) => {
                report.refused += 1;
                report.first_error.get_or_insert(error);
            }
        }
    }
    Ok(report)
}
