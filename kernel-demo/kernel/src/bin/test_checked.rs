//! Scenario: checked mode (spanheap's `checked` feature, this kernel's `checked`
//! feature). The kernel commits every kind of bad free the heap can see: a double
//! free of an object in this CPU's cache, of one already back in its span, and of
//! one that sits in another CPU's cache; a foreign pointer; interior and misaligned
//! pointers; wrong layouts for small and large objects; a double free of a large
//! object and of a kernel stack. A counting hook must see exactly the expected
//! errors of each kind, after which `check_invariants()` passes, nothing leaked, and
//! the heap still serves allocations.
#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use spanheap::FreeError;
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, println, smp, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

/// Refused frees seen by the hook, by kind: foreign, interior, wrong layout, double.
static SEEN: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
/// Objects the AP frees (first free), which the BSP then frees again.
static SHARED: [AtomicUsize; SHARED_OBJECTS] = [const { AtomicUsize::new(0) }; SHARED_OBJECTS];
const SHARED_OBJECTS: usize = 16;
/// Memory the heap does not manage: the target of the foreign free.
static NOT_HEAP: [u64; 8] = [0; 8];

fn count(error: &FreeError) {
    let kind = match error {
        FreeError::Foreign { .. } => 0,
        FreeError::Interior { .. } => 1,
        FreeError::WrongLayout { .. } => 2,
        FreeError::DoubleFree { .. } => 3,
        FreeError::ModifiedAfterFree { .. } => panic!("unexpected: {error}"),
    };
    SEEN[kind].fetch_add(1, Ordering::Relaxed);
}

fn seen() -> [usize; 4] {
    SEEN.each_ref().map(|n| n.load(Ordering::Relaxed))
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("a valid layout")
}

/// Frees `addr` with `layout` (a bad free when the scenario says so).
fn free(addr: usize, layout: Layout) {
    let ptr = NonNull::new(addr as *mut u8).expect("not null");
    // SAFETY: either a live block of this heap with this layout, or a bad free the
    // checked heap refuses without touching any memory.
    unsafe { HEAP.deallocate(ptr, layout) };
}

fn alloc(layout: Layout) -> usize {
    HEAP.allocate(layout).expect("memory").as_ptr() as usize
}

/// The AP's part: the first free of each shared object, into this CPU's cache.
fn ap_work(cpu: usize) {
    if cpu != 1 {
        return;
    }
    for slot in &SHARED {
        free(slot.load(Ordering::Acquire), layout(48, 8));
    }
    println!("cpu 1: freed {SHARED_OBJECTS} shared objects");
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    HEAP.set_error_hook(count);
    let small = layout(64, 8);
    let large = layout(100_000, 8);
    let baseline = HEAP.stats();
    let mut expected = [0usize; 4];

    // Double free while the object sits in this CPU's cache: only checked mode
    // sees it at the free.
    let a = alloc(small);
    free(a, small);
    free(a, small);
    expected[3] += 1;
    assert_eq!(seen(), expected, "double free of a cached object");

    // Double free after the object went back to its span (the cache drained).
    let b = alloc(small);
    free(b, small);
    HEAP.drain_cpu();
    free(b, small);
    expected[3] += 1;
    assert_eq!(seen(), expected, "double free of a flushed object");

    // A foreign pointer, interior and misaligned pointers, a wrong layout.
    let live = alloc(small);
    free(NOT_HEAP.as_ptr() as usize, small);
    expected[0] += 1;
    free(live + 16, small);
    free(live + 1, small);
    expected[1] += 2;
    free(live, layout(512, 8));
    expected[2] += 1;
    assert_eq!(
        seen(),
        expected,
        "foreign, interior, misaligned, wrong layout"
    );

    // Large objects: a wrong size, a misaligned pointer, then a double free.
    let big = alloc(large);
    free(big, layout(300_000, 8));
    free(big + 8, large);
    expected[2] += 2;
    free(big, large);
    free(big, large);
    expected[0] += 1; // its pages left the span map with the first free
    assert_eq!(seen(), expected, "large objects");

    // A kernel stack freed twice (the first free puts it in this CPU's cache).
    let stack = HEAP.alloc_stack(16 << 10).expect("a stack");
    let stack_base = stack.base();
    // SAFETY: a stack nobody runs on.
    unsafe { HEAP.free_stack(stack) };
    let again = HEAP.alloc_stack(16 << 10).expect("a stack");
    assert_eq!(
        again.base(),
        stack_base,
        "the cache hands the same stack out"
    );
    // SAFETY: as above; then the bad second free of the same stack (refused).
    unsafe {
        HEAP.free_stack(again);
        HEAP.free_stack(spanheap::Stack::from_raw(stack_base, 16 << 10));
    }
    expected[3] += 1;
    assert_eq!(seen(), expected, "stack double free");

    // Across CPUs: the AP frees each shared object once (into its cache), then this
    // CPU frees each again.
    for slot in &SHARED {
        slot.store(alloc(layout(48, 8)), Ordering::Release);
    }
    let aps = smp::start_aps(boot_info, ap_work);
    assert!(aps >= 1, "the scenario needs a second CPU");
    smp::wait_done(aps);
    for slot in &SHARED {
        free(slot.load(Ordering::Acquire), layout(48, 8));
    }
    expected[3] += SHARED_OBJECTS;
    assert_eq!(seen(), expected, "double frees across CPUs");
    println!(
        "checked: refused foreign {} interior {} wrong layout {} double {}",
        expected[0], expected[1], expected[2], expected[3]
    );
    assert_eq!(HEAP.stats().bad_frees, expected.iter().sum::<usize>());

    // Clean up: the live object, then every cache.
    free(live, small);
    for cpu in 1..=aps {
        // SAFETY: every AP has finished and halted with interrupts off.
        unsafe { HEAP.drain_offline_cpu(cpu) };
    }
    HEAP.drain_cpu();
    HEAP.check_invariants()
        .expect("heap invariants after the bad frees");
    let stats = HEAP.stats();
    println!("{stats}");
    // Nothing leaked (the AP stacks and the trampoline's page tables stay in use:
    // the parked APs own them).
    let objects = |s: &spanheap::Stats| (s.small_bytes, s.large_bytes, s.large_objects);
    assert_eq!(objects(&stats), objects(&baseline), "nothing leaked");

    // The heap still serves allocations, with their contents intact.
    let result = heap::workload(50);
    assert!(result.map_len > 0);
    assert_eq!(seen(), expected, "no refused free in an ordinary workload");
    println!("checked test ok: every bad free refused and counted, heap intact");
    exit_qemu(QemuExitCode::Success)
}
