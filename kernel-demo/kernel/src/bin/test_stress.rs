//! Scenario: cross-CPU stress on every CPU QEMU provides, with content checks.
//!
//! (a) exchange (mimalloc's test-stress pattern): every CPU allocates objects of 8 B
//! to 64 KiB (1% of them 32 KiB or more), fills each with words derived from its
//! address and a cookie, swaps about a quarter into a shared array of atomic slots
//! (taking ownership of what was there), checks every word before each free;
//! (b) producer/consumer (xmalloc-test): CPU 1 allocates batches, CPU 0 frees them.
//! At the end everything is freed, every cache drained and the heap trimmed: no
//! object in use or cached, and every page not held by the APs' stacks or the boot
//! page tables is back in the page heap.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use bootloader_api::{entry_point, BootInfo};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, println, smp, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

static START: AtomicUsize = AtomicUsize::new(0);
static OPS: AtomicUsize = AtomicUsize::new(0);
const SLOTS: usize = 1024;
static SLOT: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// The producer/consumer ring: a batch of objects per entry, 0 when empty.
const RING: usize = 64;
static BATCHES: [AtomicUsize; RING] = [const { AtomicUsize::new(0) }; RING];
const PRODUCED: usize = 200;
const ROUNDS: usize = 6;
const COOKIE: u64 = 0x5eed_cafe_f00d_d00d;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn word(addr: usize, i: usize) -> u64 {
    mix(addr as u64 ^ COOKIE ^ (i as u64).wrapping_mul(0x9E37_79B9))
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        ((mix(self.0) as u128 * n as u128) >> 64) as usize
    }
}

fn size(rng: &mut Rng) -> usize {
    if rng.below(100) == 0 {
        (32 << 10) + rng.below(32 << 10)
    } else {
        let octave = 3 + rng.below(12);
        ((1usize << octave) + rng.below(1 << octave)).min(32 << 10)
    }
}

fn allocate(size: usize) -> usize {
    let size = size.max(8);
    let ptr = HEAP
        .allocate(Layout::from_size_align(size, 8).unwrap())
        .expect("room for the stress");
    let words = ptr.as_ptr() as *mut u64;
    // SAFETY: a fresh block of `size` bytes, 8-aligned.
    unsafe {
        words.write(size as u64);
        for i in 1..size / 8 {
            words.add(i).write(word(ptr.as_ptr() as usize, i));
        }
    }
    ptr.as_ptr() as usize
}

fn free(addr: usize) {
    let words = addr as *const u64;
    // SAFETY: a live object of ours; its first word holds its size.
    let size = unsafe { words.read() } as usize;
    assert!(
        (8..=64 << 10).contains(&size),
        "{addr:#x}: size word overwritten"
    );
    for i in 1..size / 8 {
        // SAFETY: inside the object.
        let got = unsafe { words.add(i).read() };
        assert_eq!(got, word(addr, i), "{addr:#x}: word {i} overwritten");
    }
    // SAFETY: allocated by `allocate` with this layout.
    unsafe {
        HEAP.deallocate(
            NonNull::new(addr as *mut u8).unwrap(),
            Layout::from_size_align(size, 8).unwrap(),
        )
    };
}

fn exchange(cpu: usize) -> usize {
    let mut rng = Rng(0x5e55 + cpu as u64);
    let mut ops = 0;
    for _ in 0..ROUNDS {
        let mut live = Vec::new();
        for _ in 0..1_000 {
            let object = allocate(size(&mut rng));
            ops += 1;
            if rng.below(4) == 0 {
                let old = SLOT[rng.below(SLOTS)].swap(object, Ordering::AcqRel);
                if old != 0 {
                    live.push(old);
                }
            } else {
                live.push(object);
            }
            if live.len() > 200 && rng.below(2) == 0 {
                let victim = live.swap_remove(rng.below(live.len()));
                free(victim);
                ops += 1;
            }
        }
        for object in live.drain(..) {
            free(object);
            ops += 1;
        }
    }
    ops
}

fn produce() -> usize {
    let mut rng = Rng(0x9a0d);
    for n in 0..PRODUCED {
        let batch: Vec<usize> = (0..100).map(|_| allocate(8 + rng.below(1024))).collect();
        let slot = &BATCHES[n % RING];
        let batch = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(batch)) as usize;
        while slot
            .compare_exchange(0, batch, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            core::hint::spin_loop();
        }
    }
    PRODUCED * 100
}

fn consume() -> usize {
    for n in 0..PRODUCED {
        let slot = &BATCHES[n % RING];
        let batch = loop {
            match slot.swap(0, Ordering::AcqRel) {
                0 => core::hint::spin_loop(),
                batch => break batch,
            }
        };
        // SAFETY: made by `produce` with Box::into_raw, taken once.
        let batch = unsafe { alloc::boxed::Box::from_raw(batch as *mut Vec<usize>) };
        for &object in batch.iter() {
            free(object);
        }
    }
    PRODUCED * 100
}

fn work(cpu: usize) {
    while START.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
    let mut ops = exchange(cpu);
    match cpu {
        0 => ops += consume(),
        1 => ops += produce(),
        _ => {}
    }
    OPS.fetch_add(ops, Ordering::Relaxed);
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    let aps = smp::start_aps(boot_info, work);
    assert!(aps >= 1, "the stress needs at least 2 CPUs");
    let before = HEAP.stats();
    let start = rdtsc();
    START.store(1, Ordering::Release);
    work(0);
    smp::wait_done(aps);
    let cycles = rdtsc() - start;
    for slot in &SLOT {
        let object = slot.swap(0, Ordering::AcqRel);
        if object != 0 {
            free(object);
            OPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    println!(
        "stress: {} CPUs, {} operations in {} M TSC cycles",
        aps + 1,
        OPS.load(Ordering::Relaxed),
        cycles / 1_000_000
    );
    for cpu in 0..=aps {
        println!("cpu {cpu} cache: {}", HEAP.cpu_stats(cpu).expect("a cache"));
    }
    for cpu in 1..=aps {
        // SAFETY: every AP has finished and halted with interrupts off.
        unsafe { HEAP.drain_offline_cpu(cpu) };
    }
    HEAP.trim();
    HEAP.check_invariants().expect("heap invariants");
    let s = HEAP.stats();
    println!("{s}");
    assert!(s.balances());
    assert_eq!(
        (s.small_bytes, s.large_bytes, s.cached_bytes),
        (0, 0, 0),
        "objects left"
    );
    assert_eq!(s.span_free_bytes, 0, "spans left after trim");
    assert_eq!(s.stack_bytes, before.stack_bytes, "only the AP stacks");
    assert_eq!(
        s.free_bytes + s.metadata_bytes + s.stack_bytes + s.page_run_bytes,
        s.managed_bytes,
        "every other page is back in the page heap"
    );
    println!("stress ok: zero bytes in use, every page back");
    exit_qemu(QemuExitCode::Success)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
