//! Scenario: what the heap's critical section costs, against the alternatives. Times
//! [`ITERATIONS`] iterations of each loop with the TSC and prints
//! `pin cost: (x) what: N.NN TSC ticks per iteration`:
//!
//! - (a) an empty body that the compiler must keep (the loop's own cost);
//! - (b) `X86_64::enter` + `exit` with interrupts on: `pushfq; pop; cli` ... `sti`,
//!   the heap's pin around every cache operation;
//! - (b0) the same with interrupts already off (a nested pin: no `sti`);
//! - (c) a per-CPU busy flag, what a busy-flag design does on its fast path: load
//!   the flag (a set flag would send it to a locked fallback), store 1, compiler
//!   fences around the (empty) critical section, store 0, all relaxed;
//! - (d) one 64-byte `HEAP` allocation and free (two pins and the cache fast paths).
//!
//! Under `-icount shift=0` the TSC counts guest instructions, so the numbers are
//! exact instruction counts; without it they are TCG time, which says little about
//! the cycles `cli`/`sti` and `pushfq` take on hardware.
//!
//! No timer is started: the IDT is loaded and the legacy PICs are masked so that
//! interrupts may be on during (b).
//!
//! # Invariants
//!
//! - one CPU, no timer: nothing but the loop being measured runs between the two TSC
//!   reads of a measurement.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use core::alloc::Layout;
use core::hint::black_box;
use core::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use spanheap::platform::{Platform, MAX_CPUS, X86_64};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, interrupts, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

/// Iterations of each timed loop.
const ITERATIONS: u64 = 1_000_000;

/// The busy flags of the design measured in (c), one per CPU.
static BUSY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// A busy flag's fallback (never taken here: nothing nests).
#[cold]
#[inline(never)]
fn busy_fallback() {
    panic!("the busy flag was set");
}

fn empty_loop(n: u64) {
    for _ in 0..n {
        // SAFETY: an empty asm block: no instruction. It is opaque to the compiler,
        // which therefore keeps the loop (a compiler fence alone lets it go).
        unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
    }
}

fn pin_loop(n: u64) {
    for _ in 0..n {
        let saved = X86_64::enter();
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `saved` comes from the `enter` just above, not yet exited.
        unsafe { X86_64::exit(saved) };
    }
}

fn busy_flag_loop(n: u64) {
    // The index is opaque to the compiler but lives in a register, as a CPU index
    // read by the design would (a reference through `black_box` would be reloaded
    // from the stack at every fence).
    let flag = &BUSY[black_box(0usize)];
    for _ in 0..n {
        if flag.load(Ordering::Relaxed) {
            busy_fallback();
        }
        flag.store(true, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        compiler_fence(Ordering::SeqCst);
        flag.store(false, Ordering::Relaxed);
    }
}

fn alloc_free_loop(n: u64) {
    let layout = Layout::from_size_align(64, 8).expect("a valid layout");
    for _ in 0..n {
        let ptr = HEAP.allocate(layout).expect("room for 64 bytes");
        // SAFETY: just allocated with `layout`.
        unsafe { HEAP.deallocate(black_box(ptr), layout) };
    }
}

/// Runs `body` once untimed (warm-up: the cache exists, TCG has translated the code),
/// then timed; prints and returns TSC ticks per iteration, in hundredths.
fn measure(label: &str, body: fn(u64)) -> u64 {
    body(1_000);
    let n = black_box(ITERATIONS);
    let start = rdtsc();
    body(n);
    let ticks = rdtsc() - start;
    let hundredths = ticks * 100 / n;
    println!(
        "pin cost: {label}: {}.{:02} TSC ticks per iteration",
        hundredths / 100,
        hundredths % 100
    );
    hundredths
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    interrupts::init(boot_info);
    println!("pin cost: {ITERATIONS} iterations each");
    x86_64::instructions::interrupts::enable();
    let empty = measure("(a) empty loop", empty_loop);
    measure("(b) X86_64 enter+exit, interrupts on", pin_loop);
    measure("(c) busy flag set+clear", busy_flag_loop);
    let heap = measure("(d) HEAP alloc+free 64 B", alloc_free_loop);
    x86_64::instructions::interrupts::disable();
    measure("(b0) X86_64 enter+exit, interrupts off", pin_loop);
    // Only what holds in TCG time too; the runner checks the exact instruction counts
    // of an icount run.
    assert!(heap > empty, "an allocation cost less than an empty loop");
    assert_eq!(
        HEAP.stats().small_bytes,
        0,
        "the loops freed what they took"
    );
    println!("pin cost ok");
    exit_qemu(QemuExitCode::Success)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
