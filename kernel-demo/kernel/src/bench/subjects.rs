//! The allocators the benchmark measures, each over a region of its own of the same
//! size ([`REGION_SIZE`]), and the checks that each gave everything back after a case.
//!
//! - `spanheap`: a `SpanHeap<X86_64Gs>` of its own ([`SPANHEAP`]), not the kernel's
//!   global heap, with the same platform (the CPU index in a per-CPU word through GS,
//!   interrupts off inside the heap), so the measured heap holds nothing but the
//!   workload;
//! - `talc`: `talc::TalcLock<spinning_top::RawSpinlock, Manual>` over a claimed region
//!   (talc's documented lock);
//! - `lla`: `linked_list_allocator::LockedHeap` (a spinning_top spin lock inside);
//! - `spanheap-tscaux` (on request only): a second `SpanHeap` on the `X86_64` platform,
//!   which reads the CPU index from `IA32_TSC_AUX` with RDPID / RDTSCP instead, with
//!   the same interrupts-off critical section: what that instruction costs (QEMU 7.2's
//!   TCG has no RDPID, and runs RDTSCP as a helper that reads the virtual clock under a
//!   lock all vCPUs share);
//! - `spanheap-percpu` (on request only, at most [`PERCPU_HEAPS`] CPUs): one private
//!   `SpanHeap<X86_64Gs>` per CPU over a quarter of a region each, so that no two CPUs
//!   share a central, a span or a cache line of metadata or objects (except in xfree,
//!   where a CPU frees into the other's heap): spanheap's code without any sharing;
//! - `floor`: not an allocator: per-CPU LIFO lists of power-of-two cells carved from a
//!   per-CPU bump range, no lock, no coalescing, nothing shared. It costs the least any
//!   allocator can and measures the harness (random draws, content stamps and checks,
//!   the loop): subtract it to see an allocator's own cost, and its scaling is what
//!   TCG itself allows.
//!
//! Every subject is called through [`Subject`], monomorphised into the workloads the
//! way a kernel's `#[global_allocator]` calls are inlined into `__rust_alloc`.
//!
//! # Invariants
//!
//! - each region is given to exactly one subject, once, before any CPU uses it;
//! - [`Floor`]: CPU `i` touches only `cpus[i]`; [`Floor::reset`] runs only while no CPU
//!   is inside a case (between the barriers of two cases).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use spanheap::platform::{Platform, X86_64Gs, X86_64};
use spanheap::{MemoryRange, SpanHeap};

/// Bytes of each subject's region.
pub const REGION_SIZE: usize = 128 << 20;
/// Alignment of each region (the spanheap arena window: the region is two arenas).
pub const REGION_ALIGN: usize = 64 << 20;
/// The most CPUs the benchmark runs on.
pub const MAX_BENCH_CPUS: usize = 16;

/// Subjects with a region of their own.
pub const REGIONS: usize = 6;
/// CPUs `spanheap-percpu` serves (one heap each).
pub const PERCPU_HEAPS: usize = 4;

/// The measured spanheap (the kernels' platform, `X86_64Gs`).
pub static SPANHEAP: SpanHeap<X86_64Gs> = SpanHeap::new();
/// `spanheap-tscaux`: the same heap on `X86_64` (the CPU index in `IA32_TSC_AUX`).
pub static SPANHEAP_TSCAUX: SpanHeap<X86_64> = SpanHeap::new();
/// One private spanheap per CPU.
pub static SPANHEAP_PERCPU: PerCpuHeaps = PerCpuHeaps([const { SpanHeap::new() }; PERCPU_HEAPS]);

/// `spanheap-percpu`: CPU `i` allocates from heap `i` and frees to the heap that owns
/// the object (found by address: each heap has a quarter of the region).
pub struct PerCpuHeaps(pub [SpanHeap<X86_64Gs>; PERCPU_HEAPS]);

/// The heaps' part of the region: each gets `share` bytes from `start`.
static PERCPU_SPLIT: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(1)];

impl PerCpuHeaps {
    #[inline(always)]
    fn owner(&self, ptr: *mut u8) -> &SpanHeap<X86_64Gs> {
        let start = PERCPU_SPLIT[0].load(Ordering::Relaxed);
        let share = PERCPU_SPLIT[1].load(Ordering::Relaxed);
        &self.0[(ptr as usize - start) / share]
    }
}

impl Subject for PerCpuHeaps {
    #[inline(always)]
    unsafe fn alloc(&self, cpu: usize, layout: Layout) -> *mut u8 {
        // SAFETY: non-zero size (caller).
        unsafe { GlobalAlloc::alloc(&self.0[cpu], layout) }
    }

    #[inline(always)]
    unsafe fn free(&self, _cpu: usize, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated with `layout` by the heap owning its address (caller).
        unsafe { GlobalAlloc::dealloc(self.owner(ptr), ptr, layout) }
    }
}
/// talc behind its spin lock.
pub static TALC: TalcLocked = TalcLocked::new(talc::source::Manual);
/// linked_list_allocator behind its spin lock.
pub static LLA: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();
/// The harness floor.
pub static FLOOR: Floor = Floor::new();

/// talc as a kernel would lock it.
pub type TalcLocked = talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual>;

/// What the workloads need from an allocator. `cpu` is the caller's benchmark CPU
/// index (only the floor uses it; the allocators find their CPU themselves).
pub trait Subject: Sync {
    /// Allocates `layout`, or returns null.
    ///
    /// # Safety
    ///
    /// `layout` has a non-zero size; `cpu` is the running CPU's index.
    unsafe fn alloc(&self, cpu: usize, layout: Layout) -> *mut u8;

    /// Frees `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` came from `alloc` of this subject with `layout` and is not used again;
    /// `cpu` is the running CPU's index.
    unsafe fn free(&self, cpu: usize, ptr: *mut u8, layout: Layout);
}

impl<P: Platform> Subject for SpanHeap<P> {
    #[inline(always)]
    unsafe fn alloc(&self, _cpu: usize, layout: Layout) -> *mut u8 {
        // SAFETY: non-zero size (caller).
        unsafe { GlobalAlloc::alloc(self, layout) }
    }

    #[inline(always)]
    unsafe fn free(&self, _cpu: usize, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated here with `layout` (caller).
        unsafe { GlobalAlloc::dealloc(self, ptr, layout) }
    }
}

impl Subject for TalcLocked {
    #[inline(always)]
    unsafe fn alloc(&self, _cpu: usize, layout: Layout) -> *mut u8 {
        // SAFETY: non-zero size (caller).
        unsafe { GlobalAlloc::alloc(self, layout) }
    }

    #[inline(always)]
    unsafe fn free(&self, _cpu: usize, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated here with `layout` (caller).
        unsafe { GlobalAlloc::dealloc(self, ptr, layout) }
    }
}

impl Subject for linked_list_allocator::LockedHeap {
    #[inline(always)]
    unsafe fn alloc(&self, _cpu: usize, layout: Layout) -> *mut u8 {
        // SAFETY: non-zero size (caller).
        unsafe { GlobalAlloc::alloc(self, layout) }
    }

    #[inline(always)]
    unsafe fn free(&self, _cpu: usize, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated here with `layout` (caller).
        unsafe { GlobalAlloc::dealloc(self, ptr, layout) }
    }
}

/// Power-of-two cell sizes of the floor: 16 B (bucket 0) to 4 KiB (bucket 8).
const FLOOR_BUCKETS: usize = 9;

/// One CPU's floor state, on cache lines of its own.
#[repr(align(64))]
struct FloorCpu {
    /// Free cells per bucket, linked through their first word.
    lists: [*mut u8; FLOOR_BUCKETS],
    /// Next address to carve a cell from.
    bump: usize,
    /// End of this CPU's part of the region.
    end: usize,
}

/// The harness floor (see the module docs).
pub struct Floor {
    cpus: [UnsafeCell<FloorCpu>; MAX_BENCH_CPUS],
    region: UnsafeCell<MemoryRange>,
}

// SAFETY: CPU `i` touches only `cpus[i]` (callers pass their own distinct index), and
// `reset`/`init`, which touch everything, run only while no CPU is inside a case
// (module invariant).
unsafe impl Sync for Floor {}

impl Floor {
    const fn new() -> Self {
        Self {
            cpus: [const {
                UnsafeCell::new(FloorCpu {
                    lists: [ptr::null_mut(); FLOOR_BUCKETS],
                    bump: 0,
                    end: 0,
                })
            }; MAX_BENCH_CPUS],
            region: UnsafeCell::new(MemoryRange::new(0, 0)),
        }
    }

    /// Gives the floor `region` and splits it among `cpus` CPUs.
    ///
    /// # Safety
    ///
    /// `region` is writable memory used by nothing else; no CPU is inside a case.
    pub unsafe fn init(&self, region: MemoryRange, cpus: usize) {
        // SAFETY: no CPU uses the floor now (caller).
        unsafe { *self.region.get() = region };
        // SAFETY: as above.
        unsafe { self.reset(cpus) };
    }

    /// Forgets every cell: each of `cpus` CPUs starts again from an empty share of the
    /// region.
    ///
    /// # Safety
    ///
    /// No CPU is inside a case, and no cell handed out is used again.
    pub unsafe fn reset(&self, cpus: usize) {
        // SAFETY: nobody else touches the floor now (caller).
        let region = unsafe { *self.region.get() };
        let share = (region.len() / cpus.max(1)) & !4095;
        for (i, cell) in self.cpus.iter().enumerate() {
            // SAFETY: as above.
            let cpu = unsafe { &mut *cell.get() };
            cpu.lists = [ptr::null_mut(); FLOOR_BUCKETS];
            cpu.bump = region.start + i.min(cpus) * share;
            cpu.end = if i < cpus { cpu.bump + share } else { cpu.bump };
        }
    }

    #[inline(always)]
    fn bucket(size: usize) -> usize {
        (size.max(16).next_power_of_two().trailing_zeros() - 4) as usize
    }
}

impl Subject for Floor {
    #[inline(always)]
    unsafe fn alloc(&self, cpu: usize, layout: Layout) -> *mut u8 {
        // SAFETY: only this CPU touches its entry (caller passes its own index).
        let state = unsafe { &mut *self.cpus[cpu].get() };
        let bucket = Self::bucket(layout.size().max(layout.align()));
        let head = state.lists[bucket];
        if !head.is_null() {
            // SAFETY: a free cell of ours; its first word links the next one.
            state.lists[bucket] = unsafe { (head as *mut *mut u8).read() };
            return head;
        }
        let cell = 16usize << bucket;
        let at = state.bump.next_multiple_of(cell);
        if at + cell > state.end {
            return ptr::null_mut();
        }
        state.bump = at + cell;
        at as *mut u8
    }

    #[inline(always)]
    unsafe fn free(&self, cpu: usize, ptr: *mut u8, layout: Layout) {
        // SAFETY: only this CPU touches its entry (caller passes its own index).
        let state = unsafe { &mut *self.cpus[cpu].get() };
        let bucket = Self::bucket(layout.size().max(layout.align()));
        // SAFETY: a cell of at least 16 bytes that the caller gives up.
        unsafe { (ptr as *mut *mut u8).write(state.lists[bucket]) };
        state.lists[bucket] = ptr;
    }
}

/// Gives each subject its region: `regions` are spanheap's, talc's, lla's, the
/// floor's, spanheap-tscaux's and spanheap-percpu's, each [`REGION_SIZE`] bytes.
///
/// # Safety
///
/// The regions are mapped writable, disjoint, used by nothing else, and stay so; this
/// runs once, before any CPU runs a case.
pub unsafe fn init(regions: [MemoryRange; REGIONS], cpus: usize) {
    let [span, talc, lla, floor, span_tscaux, percpu] = regions;
    let share = percpu.len() / PERCPU_HEAPS;
    PERCPU_SPLIT[0].store(percpu.start, Ordering::Relaxed);
    PERCPU_SPLIT[1].store(share, Ordering::Relaxed);
    for (i, heap) in SPANHEAP_PERCPU.0.iter().enumerate() {
        let part = MemoryRange::new(percpu.start + i * share, percpu.start + (i + 1) * share);
        // SAFETY: a quarter of the region that is SPANHEAP_PERCPU's alone (caller).
        unsafe { heap.add_memory(part) }.expect("spanheap-percpu takes its quarter");
    }
    // SAFETY: the region is SPANHEAP's alone (caller).
    unsafe { SPANHEAP.add_memory(span) }.expect("spanheap takes its region");
    // SAFETY: as above, SPANHEAP_TSCAUX's alone.
    unsafe { SPANHEAP_TSCAUX.add_memory(span_tscaux) }.expect("spanheap-tscaux takes its region");
    // SAFETY: as above, talc's alone.
    unsafe { TALC.lock().claim(talc.start as *mut u8, talc.len()) }
        .expect("talc claims its region");
    // SAFETY: as above, lla's alone.
    unsafe { LLA.lock().init(lla.start as *mut u8, lla.len()) };
    // SAFETY: as above, the floor's alone; no CPU runs a case yet.
    unsafe { FLOOR.init(floor, cpus) };
}

/// Why a subject did not give everything back.
pub type Leak = &'static str;

/// Checks that `heap` holds no object any more (after every CPU drained its cache):
/// trims it, walks its invariants and reads its stats.
pub fn spanheap_is_empty<P: Platform>(heap: &SpanHeap<P>) -> Result<(), Leak> {
    heap.trim();
    heap.check_invariants()?;
    let s = heap.stats();
    if !s.balances() {
        return Err("spanheap: stats do not balance");
    }
    if (s.small_bytes, s.large_bytes, s.cached_bytes) != (0, 0, 0) {
        return Err("spanheap: objects left after the case");
    }
    Ok(())
}

/// Checks that talc has its region back in one piece: one allocation of all but
/// 1 MiB of it succeeds.
pub fn talc_is_empty() -> Result<(), Leak> {
    let layout = Layout::from_size_align(REGION_SIZE - (1 << 20), 8).expect("a valid layout");
    // SAFETY: non-zero size.
    let whole = unsafe { GlobalAlloc::alloc(&TALC, layout) };
    if whole.is_null() {
        return Err("talc: the region is not whole after the case");
    }
    // SAFETY: just allocated with `layout`.
    unsafe { GlobalAlloc::dealloc(&TALC, whole, layout) };
    Ok(())
}

/// Checks that linked_list_allocator counts no byte in use.
pub fn lla_is_empty() -> Result<(), Leak> {
    match LLA.lock().used() {
        0 => Ok(()),
        _ => Err("lla: bytes in use after the case"),
    }
}
