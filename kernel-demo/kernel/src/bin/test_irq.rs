//! Scenario: interrupt safety. On every CPU QEMU provides, the local APIC timer ticks
//! every [`PERIOD_NS`] of guest time and its handler allocates and frees (boxed slices
//! of 8 B to 4 KiB, every 64th tick one over 32 KiB, zeroed ones, a growing `Vec`),
//! checking the contents of everything it made, while the code it interrupts runs an
//! allocation workload of its own with content checks: raw objects of 8 B to 64 KiB
//! (1% over 32 KiB) and a `BTreeMap` of boxed slices.
//!
//! What it shows: the heap's critical section (interrupts off on `X86_64`) keeps the
//! handler out of the per-CPU cache and the central locks while the interrupted code
//! is inside them, so there is no deadlock (the run ends) and no corruption (every
//! pattern reads back, `check_invariants` passes, the stats come back to the baseline).
//!
//! Each CPU runs until its handler made [`TARGET_HANDLER_ALLOCS`] allocations (but at
//! least [`MIN_ROUNDS`] and at most [`MAX_ROUNDS`] workload rounds), then turns
//! interrupts off and stops its timer; every CPU's handler must have made more than
//! [`MIN_HANDLER_ALLOCS`]. The bootstrap CPU prints, per CPU,
//! `irq cpu N: handler allocations H, workload allocations W, timer ticks T`, frees
//! what the handlers kept, drains every cache and checks the heap.
//!
//! # Invariants
//!
//! - `HANDLER[cpu]` is touched only by CPU `cpu`'s timer handler until that CPU has
//!   stopped its timer with interrupts off; then only by the bootstrap CPU. Its lock
//!   is never contended (taken with `try_lock`, a failure is a bug);
//! - every object a context allocates carries a pattern derived from its address and
//!   that context's cookie, checked before every free.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use bootloader_api::{entry_point, BootInfo};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spanheap::platform::{Platform, MAX_CPUS, X86_64};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, interrupts, println, smp, QemuExitCode, BOOTLOADER_CONFIG};
use spin::Mutex;

entry_point!(main, config = &BOOTLOADER_CONFIG);

/// Timer period in nanoseconds of guest time (QEMU's APIC bus is 1 GHz).
const PERIOD_NS: u32 = 50_000;
/// Handler allocations each CPU waits for before it stops.
const TARGET_HANDLER_ALLOCS: u64 = 6_000;
/// The least every CPU's handler must have made (the runner checks the same bound).
const MIN_HANDLER_ALLOCS: u64 = 1_000;
/// Workload rounds each CPU runs at least.
const MIN_ROUNDS: u64 = 2_000;
/// Workload rounds after which a CPU stops waiting for its handler (then the check of
/// [`MIN_HANDLER_ALLOCS`] decides).
const MAX_ROUNDS: u64 = 1_000_000;
/// Objects the handler keeps alive between ticks (freed by later ticks).
const HANDLER_LIVE: usize = 8;
/// Objects the workload keeps alive.
const WORKLOAD_LIVE: usize = 64;
const WORKLOAD_COOKIE: u64 = 0x0123_4567_89ab_cdef;
const HANDLER_COOKIE: u64 = 0xfeed_face_dead_beef;

static START: AtomicBool = AtomicBool::new(false);
static HANDLER_ALLOCS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WORKLOAD_ALLOCS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static HANDLER: [Mutex<HandlerState>; MAX_CPUS] =
    [const { Mutex::new(HandlerState::new()) }; MAX_CPUS];

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` of the pattern of the object at `addr` made by the context of `cookie`.
fn word(addr: usize, i: usize, cookie: u64) -> u64 {
    mix(addr as u64 ^ cookie ^ (i as u64).wrapping_mul(0x9E37_79B9))
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        ((u128::from(mix(self.0)) * u128::from(n)) >> 64) as u64
    }
}

/// What one CPU's timer handler keeps between ticks.
struct HandlerState {
    ticks: u64,
    live: VecDeque<Box<[u64]>>,
    log: Vec<u64>,
}

impl HandlerState {
    const fn new() -> Self {
        Self {
            ticks: 0,
            live: VecDeque::new(),
            log: Vec::new(),
        }
    }
}

/// Fills `words` (but word 0, its length) with its pattern.
fn fill(words: &mut [u64], cookie: u64) {
    let addr = words.as_ptr() as usize;
    words[0] = words.len() as u64;
    for (i, w) in words.iter_mut().enumerate().skip(1) {
        *w = word(addr, i, cookie);
    }
}

/// Panics unless `words` holds its pattern.
fn check(words: &[u64], cookie: u64, owner: &str) {
    let addr = words.as_ptr() as usize;
    assert_eq!(
        words[0],
        words.len() as u64,
        "{owner}: {addr:#x}: length word overwritten"
    );
    for (i, w) in words.iter().enumerate().skip(1) {
        assert_eq!(
            *w,
            word(addr, i, cookie),
            "{owner}: {addr:#x}: word {i} overwritten"
        );
    }
}

/// The timer hook: runs with interrupts off on the ticking CPU.
fn on_tick() {
    let cpu = X86_64::cpu_index().expect("every CPU registered with the heap");
    let mut state = HANDLER[cpu]
        .try_lock()
        .expect("the handler state is its CPU's alone");
    let tick = state.ticks;
    state.ticks += 1;
    let mut allocs = 0;

    // A zeroed slice of 1 to 512 words; every 64th tick one of 4097 to 5120 words
    // (over 32 KiB: a large object).
    let len = if tick % 64 == 63 {
        4097 + (mix(tick) % 1024) as usize
    } else {
        1 + (mix(tick) % 512) as usize
    };
    let mut fresh = vec![0u64; len].into_boxed_slice();
    allocs += 1;
    assert!(
        fresh.iter().all(|w| *w == 0),
        "cpu {cpu}: zeroed slice not zero"
    );
    fill(&mut fresh, HANDLER_COOKIE);
    check(&fresh, HANDLER_COOKIE, "handler");
    let capacity = state.live.capacity();
    state.live.push_back(fresh);
    allocs += u64::from(state.live.capacity() != capacity);
    if state.live.len() > HANDLER_LIVE {
        let old = state.live.pop_front().expect("not empty");
        check(&old, HANDLER_COOKIE, "handler");
    }

    // A vector grown one word per tick through several classes, then dropped.
    let capacity = state.log.capacity();
    state.log.push(mix(tick));
    allocs += u64::from(state.log.capacity() != capacity);
    if state.log.len() == 300 {
        let first = tick - 299;
        assert!(
            state.log.iter().zip(first..).all(|(w, t)| *w == mix(t)),
            "cpu {cpu}: handler vector overwritten"
        );
        state.log = Vec::new();
    }
    HANDLER_ALLOCS[cpu].fetch_add(allocs, Ordering::Relaxed);
}

/// A raw object of the workload: the heap's own API, not through `GlobalAlloc`.
fn alloc_object(size: usize) -> NonNull<[u64]> {
    let words = size.div_ceil(8).max(1);
    let ptr = HEAP
        .allocate(Layout::array::<u64>(words).expect("a small layout"))
        .expect("room for the workload");
    let object = NonNull::slice_from_raw_parts(ptr.cast::<u64>(), words);
    // SAFETY: a fresh block of `words` words, 8-aligned, ours alone.
    fill(unsafe { &mut *object.as_ptr() }, WORKLOAD_COOKIE);
    object
}

fn free_object(object: NonNull<[u64]>) {
    // SAFETY: a live object of `alloc_object`, ours alone.
    check(unsafe { object.as_ref() }, WORKLOAD_COOKIE, "workload");
    // SAFETY: allocated by `alloc_object` with this layout.
    unsafe {
        HEAP.deallocate(
            object.cast::<u8>(),
            Layout::array::<u64>(object.len()).expect("a small layout"),
        )
    };
}

fn object_size(rng: &mut Rng) -> usize {
    if rng.below(100) == 0 {
        (32 << 10) + rng.below(32 << 10) as usize
    } else {
        let octave = 3 + rng.below(12);
        ((1usize << octave) + rng.below(1 << octave) as usize).min(32 << 10)
    }
}

/// The interrupted code's allocations, until the handler has made its share.
fn workload(cpu: usize) {
    let mut rng = Rng(0x1e9 + cpu as u64);
    let mut live: Vec<NonNull<[u64]>> = Vec::with_capacity(WORKLOAD_LIVE + 1);
    let mut map: BTreeMap<u64, Box<[u64]>> = BTreeMap::new();
    let mut allocs = 0u64;
    let mut round = 0u64;
    while round < MIN_ROUNDS
        || (HANDLER_ALLOCS[cpu].load(Ordering::Relaxed) < TARGET_HANDLER_ALLOCS
            && round < MAX_ROUNDS)
    {
        live.push(alloc_object(object_size(&mut rng)));
        allocs += 1;
        if live.len() > WORKLOAD_LIVE {
            let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
            free_object(victim);
        }
        if round % 4 == 0 {
            let key = rng.below(256);
            let mut slice = vec![0u64; 1 + rng.below(200) as usize].into_boxed_slice();
            fill(&mut slice, WORKLOAD_COOKIE);
            allocs += 1;
            if let Some(old) = map.insert(key, slice) {
                check(&old, WORKLOAD_COOKIE, "workload map");
            }
            if let Some(old) = map.remove(&rng.below(256)) {
                check(&old, WORKLOAD_COOKIE, "workload map");
            }
        }
        round += 1;
    }
    for object in live {
        free_object(object);
    }
    for slice in map.values() {
        check(slice, WORKLOAD_COOKIE, "workload map");
    }
    WORKLOAD_ALLOCS[cpu].store(allocs, Ordering::Relaxed);
}

/// Every CPU: timer and interrupts on, the workload, timer and interrupts off.
fn work(cpu: usize) {
    if cpu != 0 {
        interrupts::init_cpu();
    }
    while !START.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    interrupts::start_timer(PERIOD_NS);
    x86_64::instructions::interrupts::enable();
    workload(cpu);
    // Interrupts off first: a tick pending at `stop_timer` then never runs the hook.
    x86_64::instructions::interrupts::disable();
    interrupts::stop_timer();
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    interrupts::init(boot_info);
    interrupts::set_timer_hook(on_tick);
    let aps = smp::start_aps(boot_info, work);
    let cpus = aps + 1;
    println!("irq: {cpus} CPUs, timer period {PERIOD_NS} ns");
    let before = HEAP.stats();
    let start = rdtsc();
    START.store(true, Ordering::Release);
    work(0);
    smp::wait_done(aps);
    let cycles = rdtsc() - start;
    println!("irq: all CPUs done in {} M TSC cycles", cycles / 1_000_000);

    for (cpu, state) in HANDLER.iter().enumerate().take(cpus) {
        let handler = HANDLER_ALLOCS[cpu].load(Ordering::Relaxed);
        let workload = WORKLOAD_ALLOCS[cpu].load(Ordering::Relaxed);
        let ticks = interrupts::ticks(cpu);
        println!(
            "irq cpu {cpu}: handler allocations {handler}, workload allocations {workload}, \
             timer ticks {ticks}"
        );
        assert!(
            handler > MIN_HANDLER_ALLOCS,
            "cpu {cpu}: only {handler} handler allocations"
        );
        // The CPU's timer is stopped and its interrupts are off: its state is ours.
        let state = core::mem::replace(
            &mut *state.try_lock().expect("no handler runs"),
            HandlerState::new(),
        );
        for slice in &state.live {
            check(slice, HANDLER_COOKIE, "handler (at the end)");
        }
    }
    println!("irq: spurious interrupts {}", interrupts::spurious_count());

    for cpu in 1..cpus {
        // SAFETY: every AP has finished its work and halted with interrupts off.
        unsafe { HEAP.drain_offline_cpu(cpu) };
    }
    // Then the objects in the centrals' transfer caches go back to their spans.
    HEAP.trim();
    HEAP.check_invariants().expect("heap invariants");
    let after = HEAP.stats();
    println!("{after}");
    assert!(after.balances(), "stats do not balance");
    assert_eq!(after.bad_frees, 0, "refused frees");
    assert_eq!(after.cached_bytes, 0, "caches drained");
    assert_eq!(
        after.in_use_bytes, before.in_use_bytes,
        "bytes in use differ from the baseline"
    );
    println!(
        "irq test ok: {cpus} CPUs, no deadlock, contents intact, in use back to {} bytes",
        before.in_use_bytes
    );
    exit_qemu(QemuExitCode::Success)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
