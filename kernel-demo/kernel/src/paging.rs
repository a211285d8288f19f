//! Adding 4 KiB mappings to the active page tables (the bootloader's), with
//! page-table frames from the heap's page API: what AP start-up (the trampoline's
//! identity mapping) and the local APIC's register page need.
//!
//! # Invariants
//!
//! - page-table frames come from [`HEAP`]`.alloc_pages` and are never freed: they stay
//!   in use (as page runs) for as long as the kernel runs;
//! - a mapping that is already there with the wanted frame is left as it is, so
//!   mapping the same page twice (from several modules) is harmless.

use crate::heap::HEAP;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
    Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// Takes page-table frames from the heap's page API.
struct HeapFrames;

// SAFETY: frames come from `alloc_pages`, are unused and never freed while mapped.
unsafe impl FrameAllocator<Size4KiB> for HeapFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let page = HEAP.alloc_pages(1, 4096)?;
        // SAFETY: a fresh page of ours.
        unsafe { core::ptr::write_bytes(page.as_ptr(), 0, 4096) };
        let phys = HEAP.phys_addr(page)?;
        Some(PhysFrame::containing_address(PhysAddr::new(phys as u64)))
    }
}

/// Maps the 4 KiB page at `virt` to the frame at `phys` with `flags` in the active
/// page tables, unless `virt` already translates to `phys`. `physical_memory_offset`
/// is where the bootloader mapped all physical memory.
///
/// Panics when `virt` is mapped elsewhere or no frame is left for a page table.
///
/// # Safety
///
/// 1. all physical memory is mapped at `physical_memory_offset` and the active level-4
///    table is the bootloader's;
/// 2. nothing else edits the page tables or uses the TLB entry of `virt` meanwhile (in
///    these kernels: only the bootstrap CPU maps, before other CPUs use the mapping);
/// 3. the frame at `phys` is one that no Rust object owns (an MMIO page, or a page the
///    caller reserved), so the new alias breaks no aliasing rule.
pub unsafe fn map_page(physical_memory_offset: u64, virt: u64, phys: u64, flags: PageTableFlags) {
    let (l4_frame, _) = Cr3::read();
    // SAFETY: the level-4 table is reachable at its physical address plus the offset
    // (caller, 1), and nothing else edits page tables while this reference lives
    // (caller, 2).
    let mut mapper = unsafe {
        let l4 =
            &mut *((l4_frame.start_address().as_u64() + physical_memory_offset) as *mut PageTable);
        OffsetPageTable::new(l4, VirtAddr::new(physical_memory_offset))
    };
    if mapper.translate_addr(VirtAddr::new(virt)) == Some(PhysAddr::new(phys)) {
        return;
    }
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: `map_to` refuses a page that is already mapped; the frame is owned by no
    // Rust object (caller, 3).
    unsafe { mapper.map_to(page, frame, flags, &mut HeapFrames) }
        .expect("a free virtual page and room for page tables")
        .flush();
}
