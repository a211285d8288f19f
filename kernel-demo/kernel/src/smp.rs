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

use crate::apic::LocalApic;
use crate::heap::HEAP;
use crate::paging;
use crate::println;
use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::BootInfo;
use core::arch::global_asm;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::PageTableFlags;

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

    // The BSP's page tables, extended by an identity mapping of the trampoline (so
    // that the jump into long mode lands on mapped code) and a mapping of the local
    // APIC.
    let (l4_frame, _) = Cr3::read();
    // SAFETY: 1. the boot config maps physical memory at `offset`, the page tables are
    // the bootloader's; 2. the APs have not started, and only this CPU maps; 3. the
    // trampoline page is a usable page below 1 MiB, which neither the heap nor any
    // Rust object owns (module invariant).
    unsafe {
        paging::map_page(
            offset,
            page,
            page,
            PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
        )
    };
    let lapic = LocalApic::map(boot_info);

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
