//! Bringing up the application processors (APs): count them in the ACPI MADT, copy a
//! real-mode trampoline below 1 MiB, send INIT-SIPI-SIPI through the local APIC, and
//! let each AP switch to long mode on the bootstrap CPU's page tables, register with
//! the heap and run the kernel's [`ApWork`] on a stack from spanheap's stack API, then
//! park (interrupts off, halted), which is what lets the BSP drain its cache.
//!
//! The trampoline goes from real mode straight to long mode (PAE, the BSP's CR3,
//! EFER.LME and NXE, then CR0.PG and PE together), with a GDT of its own, and takes a
//! ticket with `lock xadd` to pick its stack, so that all APs may start at once (the
//! SIPI is broadcast). Its page is identity-mapped so that the jump into long mode
//! lands on mapped code.
//!
//! # Invariants
//!
//! - the trampoline page is a `Usable` page below 1 MiB, which the heap never takes
//!   (the bootinfo adapter leaves memory below 1 MiB to the kernel);
//! - AP `n` (ticket `n`, 0-based) runs on `stacks[n]` and becomes CPU `n + 1`.

use crate::heap::HEAP;
use crate::println;
use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::BootInfo;
use core::arch::global_asm;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
    Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// What an AP runs once in long mode and registered with the heap: `cpu` is its
/// index (1, 2, ...). When it returns, the AP counts itself done and parks.
pub type ApWork = fn(cpu: usize);

/// APs that reached Rust code.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// APs that finished their work and parked.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The kernel's [`ApWork`], set by [`start_aps`] before any AP starts.
static WORK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Where the trampoline lands every AP.
extern "C" fn ap_entry(cpu: usize) -> ! {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    crate::heap::register_cpu(cpu);
    // SAFETY: `start_aps` stored an `ApWork` function pointer before sending SIPI.
    let work: ApWork =
        unsafe { core::mem::transmute::<*mut (), ApWork>(WORK.load(Ordering::Acquire)) };
    work(cpu);
    DONE.fetch_add(1, Ordering::AcqRel);
    park()
}

/// Stops this CPU for good: interrupts off, halted.
pub fn park() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Waits until `aps` APs have finished their [`ApWork`] and parked.
pub fn wait_done(aps: usize) {
    while DONE.load(Ordering::Acquire) < aps {
        core::hint::spin_loop();
    }
}

/// Stack size of each AP.
pub const AP_STACK_SIZE: usize = 64 << 10;

global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tr_gdt_ptr - ap_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (tr_cr3 - ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl *(tr_far - ap_trampoline_start)
    .code64
tr_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, tr_next(%rip)
    movq tr_stacks(%rip), %rbx
    movq (%rbx,%rax,8), %rsp
    leaq 1(%rax), %rdi
    movq tr_entry(%rip), %rax
    callq *%rax
    ud2
    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
tr_gdt_ptr:
    .word 23
    .long 0
tr_far:
    .long 0
    .word 8
    .balign 8
tr_cr3:
    .quad 0
tr_stacks:
    .quad 0
tr_entry:
    .quad 0
tr_next:
    .long 0
ap_trampoline_end:
    .global tr_gdt, tr_gdt_ptr, tr_far, tr_cr3, tr_stacks, tr_entry, tr_next, tr_long
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static tr_gdt: u8;
    static tr_gdt_ptr: u8;
    static tr_far: u8;
    static tr_cr3: u8;
    static tr_stacks: u8;
    static tr_entry: u8;
    static tr_long: u8;
}

/// Offset of a trampoline symbol from the trampoline's start.
fn offset_of(symbol: &u8) -> usize {
    // SAFETY: only the addresses of the linker symbols are taken.
    let start = unsafe { &ap_trampoline_start } as *const u8 as usize;
    symbol as *const u8 as usize - start
}

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

/// The number of enabled processors in the ACPI MADT (local APIC and x2APIC entries).
pub fn count_cpus(boot_info: &BootInfo) -> Option<usize> {
    let offset = boot_info.physical_memory_offset.into_option()? as usize;
    let rsdp = boot_info.rsdp_addr.into_option()? as usize + offset;
    // SAFETY: the bootloader reports the RSDP's physical address; all physical
    // memory is mapped at `offset`; ACPI tables are plain bytes.
    unsafe {
        let read32 = |addr: usize| core::ptr::read_unaligned(addr as *const u32);
        let read64 = |addr: usize| core::ptr::read_unaligned(addr as *const u64);
        let revision = *((rsdp + 15) as *const u8);
        let (sdt, wide) = if revision >= 2 && read64(rsdp + 24) != 0 {
            (read64(rsdp + 24) as usize + offset, true)
        } else {
            (read32(rsdp + 16) as usize + offset, false)
        };
        let len = read32(sdt + 4) as usize;
        let entry_size = if wide { 8 } else { 4 };
        for i in 0..(len - 36) / entry_size {
            let at = sdt + 36 + i * entry_size;
            let table = if wide {
                read64(at) as usize
            } else {
                read32(at) as usize
            } + offset;
            if core::slice::from_raw_parts(table as *const u8, 4) != b"APIC" {
                continue;
            }
            let end = table + read32(table + 4) as usize;
            let mut entry = table + 44;
            let mut cpus = 0;
            while entry + 2 <= end {
                let (kind, size) = (*(entry as *const u8), *((entry + 1) as *const u8) as usize);
                let enabled = match kind {
                    0 => read32(entry + 4) & 1 != 0,
                    9 => read32(entry + 8) & 1 != 0,
                    _ => false,
                };
                cpus += enabled as usize;
                if size == 0 {
                    break;
                }
                entry += size;
            }
            return Some(cpus);
        }
    }
    None
}

/// The lowest usable page below 1 MiB (above the real-mode IVT and BDA).
fn trampoline_page(regions: &MemoryRegions) -> Option<u64> {
    regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .filter_map(|r| {
            let start = r.start.max(0x1000).next_multiple_of(0x1000);
            (start + 0x1000 <= r.end.min(0x10_0000)).then_some(start)
        })
        .min()
}

/// Local APIC register access through its MMIO page.
struct LocalApic(usize);

impl LocalApic {
    fn write(&self, reg: usize, value: u32) {
        // SAFETY: a mapped, uncached LAPIC register page; `reg` is a register offset.
        unsafe { core::ptr::write_volatile((self.0 + reg) as *mut u32, value) }
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile((self.0 + reg) as *const u32) }
    }

    /// Sends an IPI to all CPUs but this one and waits until it is delivered.
    fn broadcast(&self, command: u32) {
        const ICR_LOW: usize = 0x300;
        const ICR_HIGH: usize = 0x310;
        const ALL_BUT_SELF: u32 = 0b11 << 18;
        self.write(ICR_HIGH, 0);
        self.write(ICR_LOW, command | ALL_BUT_SELF);
        while self.read(ICR_LOW) & (1 << 12) != 0 {
            core::hint::spin_loop();
        }
    }
}

fn delay(spins: u64) {
    for _ in 0..spins {
        core::hint::spin_loop();
    }
}

/// Starts every AP of the MADT on `work`. Returns the number of APs started (the
/// CPUs are then 0 for the BSP and 1..=n for the APs). Panics with a message when an
/// AP does not arrive.
pub fn start_aps(boot_info: &BootInfo, work: ApWork) -> usize {
    WORK.store(work as *mut (), Ordering::Release);
    let arrived = &ARRIVED;
    let cpus = count_cpus(boot_info).expect("an ACPI MADT");
    let aps = cpus.saturating_sub(1);
    println!("smp: {cpus} CPUs in the MADT");
    if aps == 0 {
        return 0;
    }
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("physical memory is mapped");
    let page = trampoline_page(&boot_info.memory_regions).expect("a usable page below 1 MiB");

    // The BSP's page tables, extended by an identity mapping of the trampoline and a
    // mapping of the local APIC.
    let (l4_frame, _) = Cr3::read();
    // SAFETY: all physical memory is mapped at `offset`; the level-4 table is the
    // active one and nothing else edits page tables while we do.
    let mut mapper = unsafe {
        let l4 = &mut *((l4_frame.start_address().as_u64() + offset) as *mut PageTable);
        OffsetPageTable::new(l4, VirtAddr::new(offset))
    };
    let map = |mapper: &mut OffsetPageTable<'_>, virt: u64, phys: u64, flags: PageTableFlags| {
        if mapper.translate_addr(VirtAddr::new(virt)) == Some(PhysAddr::new(phys)) {
            return;
        }
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
        let frame = PhysFrame::containing_address(PhysAddr::new(phys));
        // SAFETY: the page is unmapped (map_to refuses otherwise) and the frame is the
        // trampoline page or the LAPIC's MMIO page.
        unsafe { mapper.map_to(page, frame, flags, &mut HeapFrames) }
            .expect("mapping for AP start-up")
            .flush();
    };
    let rw = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    map(&mut mapper, page, page, rw);
    let lapic_phys = 0xFEE0_0000u64;
    let lapic_virt = lapic_phys + offset;
    map(
        &mut mapper,
        lapic_virt,
        lapic_phys,
        rw | PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH,
    );
    let lapic = LocalApic(lapic_virt as usize);

    // One stack per AP, from the heap's stack API; the tops go to the trampoline.
    let stacks: Vec<usize> = (0..aps)
        .map(|_| {
            let stack = HEAP.alloc_stack(AP_STACK_SIZE).expect("room for AP stacks");
            let top = stack.top();
            let _ = stack.into_raw(); // The AP owns it from now on.
            top
        })
        .collect();

    // Copy the trampoline and fill in its data.
    // SAFETY: the symbols delimit the trampoline in the kernel image; the page is
    // ours, identity-mapped and also reachable at `page + offset`.
    unsafe {
        let start = &ap_trampoline_start as *const u8;
        let len = &ap_trampoline_end as *const u8 as usize - start as usize;
        assert!(len <= 4096);
        let dst = (page + offset) as *mut u8;
        core::ptr::copy_nonoverlapping(start, dst, len);
        let at = |symbol: &u8| dst.add(offset_of(symbol));
        (at(&tr_gdt_ptr).add(2) as *mut u32)
            .write_unaligned((page as usize + offset_of(&tr_gdt)) as u32);
        (at(&tr_far) as *mut u32).write_unaligned((page as usize + offset_of(&tr_long)) as u32);
        (at(&tr_cr3) as *mut u64).write_unaligned(l4_frame.start_address().as_u64());
        (at(&tr_stacks) as *mut u64).write_unaligned(stacks.as_ptr() as u64);
        let entry: extern "C" fn(usize) -> ! = ap_entry;
        (at(&tr_entry) as *mut u64).write_unaligned(entry as usize as u64);
    }

    // INIT, then SIPI twice (Intel's MP start-up sequence), to every AP at once.
    let vector = (page >> 12) as u32;
    lapic.broadcast(0x0000_4500);
    delay(1_000_000);
    lapic.broadcast(0x0000_4600 | vector);
    delay(100_000);
    if arrived.load(Ordering::Acquire) < aps {
        lapic.broadcast(0x0000_4600 | vector);
    }
    let mut waited = 0u64;
    while arrived.load(Ordering::Acquire) < aps {
        core::hint::spin_loop();
        waited += 1;
        assert!(
            waited < 20_000_000_000,
            "smp: only {} of {aps} APs arrived",
            arrived.load(Ordering::Acquire)
        );
    }
    // The stack tops were read by now; the vector of tops may go.
    drop(stacks);
    aps
}
