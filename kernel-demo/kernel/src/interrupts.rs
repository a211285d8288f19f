//! Interrupts for the test kernels: one IDT shared by every CPU, the local APIC timer
//! on [`TIMER_VECTOR`] calling the kernel's [`TimerHook`], a spurious vector, the
//! legacy 8259 PICs remapped and masked, and CPU exceptions turned into panics (so a
//! fault prints its frame instead of ending in a silent triple fault).
//!
//! Scenario: the bootstrap CPU calls [`init`] once (maps the APIC, builds the IDT,
//! silences the PICs); every CPU then calls [`init_cpu`] (loads the IDT, enables its
//! APIC), [`start_timer`], and `sti`; [`stop_timer`] ends the ticks.
//!
//! # Invariants
//!
//! - the IDT is built once, before any CPU loads it, and never changes afterwards;
//! - every handler runs through an interrupt gate, so with IF clear: handlers never
//!   nest, and a timer handler that allocates never runs inside the heap's critical
//!   section on its CPU (which also keeps IF clear);
//! - the timer handler sends EOI after the hook returns, so a hook slower than the
//!   timer period delays the next tick instead of nesting into it;
//! - `HOOK` is null or a [`TimerHook`] function pointer.

use crate::apic::LocalApic;
use bootloader_api::BootInfo;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use spanheap::platform::{Platform, MAX_CPUS, X86_64};
use spin::Once;
use x86_64::instructions::port::Port;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

/// The local APIC timer's vector.
pub const TIMER_VECTOR: u8 = 0x40;
/// The local APIC's spurious-interrupt vector (its low four bits must be set).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Where the remapped legacy PICs would deliver IRQ 0..15 (all masked).
const PIC_VECTORS: u8 = 0x20;

/// What the timer handler calls on every tick, with IF clear, on the ticking CPU. It
/// may use the heap but must not print: the serial lock does not turn interrupts off,
/// so the interrupted code may hold it.
pub type TimerHook = fn();

static IDT: Once<InterruptDescriptorTable> = Once::new();
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Timer ticks per heap CPU index (ticks on a CPU without an index are not counted).
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Spurious interrupts (APIC spurious vector, or a masked PIC's IRQ 7 / 15).
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Sets up interrupts for the whole machine; call once, on the bootstrap CPU, after
/// the heap (the APIC mapping takes page-table frames from it) and before the APs
/// start. Also runs [`init_cpu`] for the bootstrap CPU.
pub fn init(boot_info: &BootInfo) {
    LocalApic::map(boot_info);
    IDT.call_once(build_idt);
    silence_legacy_pics();
    init_cpu();
}

/// Loads the IDT on the running CPU and software-enables its local APIC. Interrupts
/// stay off until the caller executes `sti`.
///
/// Panics when [`init`] has not run.
pub fn init_cpu() {
    IDT.get().expect("interrupts::init ran").load();
    apic().enable(SPURIOUS_VECTOR);
}

/// Makes `hook` the timer handler's work (on every CPU).
pub fn set_timer_hook(hook: TimerHook) {
    HOOK.store(hook as *mut (), Ordering::Release);
}

/// Starts the running CPU's APIC timer in periodic mode: a tick every
/// `period_ns` nanoseconds of guest time (QEMU's APIC bus runs at 1 GHz).
pub fn start_timer(period_ns: u32) {
    apic().start_periodic_timer(TIMER_VECTOR, period_ns);
}

/// Stops the running CPU's APIC timer. A tick already pending is delivered at the
/// next `sti`; disable interrupts first to keep it from running the hook.
pub fn stop_timer() {
    apic().stop_timer();
}

/// Timer ticks handled so far on the CPU with heap index `cpu`.
pub fn ticks(cpu: usize) -> u64 {
    TICKS[cpu].load(Ordering::Relaxed)
}

/// Spurious interrupts seen so far, on all CPUs.
pub fn spurious_count() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

fn apic() -> LocalApic {
    LocalApic::get().expect("interrupts::init mapped the local APIC")
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.double_fault.set_handler_fn(double_fault);
    idt.general_protection_fault
        .set_handler_fn(general_protection_fault);
    idt.page_fault.set_handler_fn(page_fault);
    for vector in PIC_VECTORS..PIC_VECTORS + 16 {
        idt[vector].set_handler_fn(spurious);
    }
    idt[TIMER_VECTOR].set_handler_fn(timer);
    idt[SPURIOUS_VECTOR].set_handler_fn(spurious);
    idt
}

/// Remaps the two 8259 PICs to [`PIC_VECTORS`] (away from the exception vectors the
/// BIOS left them on) and masks every IRQ: the APIC timer is the only source.
fn silence_legacy_pics() {
    const MASTER: u16 = 0x20;
    const SLAVE: u16 = 0xA0;
    let writes: [(u16, u8); 10] = [
        (MASTER, 0x11), // ICW1: initialise, ICW4 follows
        (SLAVE, 0x11),
        (MASTER + 1, PIC_VECTORS), // ICW2: vector bases
        (SLAVE + 1, PIC_VECTORS + 8),
        (MASTER + 1, 4), // ICW3: slave on IRQ 2
        (SLAVE + 1, 2),
        (MASTER + 1, 0x01), // ICW4: 8086 mode
        (SLAVE + 1, 0x01),
        (MASTER + 1, 0xFF), // mask every IRQ
        (SLAVE + 1, 0xFF),
    ];
    for (port, value) in writes {
        // SAFETY: the PICs' command and data ports; programming them affects only
        // which vectors legacy IRQs use (all masked here), not memory.
        unsafe { Port::<u8>::new(port).write(value) };
    }
}

extern "x86-interrupt" fn timer(_frame: InterruptStackFrame) {
    if let Some(cpu) = X86_64::cpu_index() {
        TICKS[cpu].fetch_add(1, Ordering::Relaxed);
    }
    let hook = HOOK.load(Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: a non-null `HOOK` was stored from a `TimerHook` (module invariant).
        let hook = unsafe { core::mem::transmute::<*mut (), TimerHook>(hook) };
        hook();
    }
    apic().end_of_interrupt();
}

/// Spurious interrupts need no EOI.
extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {
    SPURIOUS.fetch_add(1, Ordering::Relaxed);
}

extern "x86-interrupt" fn divide_error(frame: InterruptStackFrame) {
    panic!("divide error: {frame:?}");
}

extern "x86-interrupt" fn invalid_opcode(frame: InterruptStackFrame) {
    panic!("invalid opcode: {frame:?}");
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    panic!("double fault ({code:#x}): {frame:?}");
}

extern "x86-interrupt" fn general_protection_fault(frame: InterruptStackFrame, code: u64) {
    panic!("general protection fault ({code:#x}): {frame:?}");
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let address = x86_64::registers::control::Cr2::read_raw();
    panic!("page fault at {address:#x} ({code:?}): {frame:?}");
}
