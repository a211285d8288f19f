//! The kernels' global allocator: spanheap over the memory the bootloader reports,
//! and the workload the demo and the SMP kernels run on it.
//!
//! # Invariants
//!
//! - `HEAP` gets the boot memory once, in `init`, before any allocation; each CPU
//!   registers (`register_cpu`, which points its GS at its `X86_64Gs` block) before
//!   its first heap call of any kind;
//! - `drain_stopped_aps` runs only after `workload_on_every_cpu` returned (every AP
//!   halted).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use bootloader_api::BootInfo;
use core::fmt::Write;
use spanheap::platform::{X86_64Gs, X86_64};
use spanheap::{bootinfo, SpanHeap};

/// The heap every spanheap kernel allocates from: per-CPU caches, the CPU index in a
/// per-CPU word through GS (`X86_64Gs`: one load, where RDTSCP takes a lock of QEMU's
/// under TCG), interrupts off inside the heap.
#[global_allocator]
pub static HEAP: SpanHeap<X86_64Gs> = SpanHeap::new();

/// Registers the running CPU with the heap as CPU `index` (its cache is created at its
/// first allocation) and prints the outcome. It also writes the index to `IA32_TSC_AUX`
/// for the `X86_64` platform, which the timer handler and the benchmark's
/// `spanheap-tscaux` read: unlike GS, TSC_AUX reads 0 (no index) on a CPU that has
/// not come here yet.
pub fn register_cpu(index: usize) {
    // SAFETY: ring 0, on the CPU being named, no heap call in progress on it; the
    // kernels give each CPU a distinct index and use TSC_AUX for nothing else.
    if let Err(error) = unsafe { X86_64::init_cpu(index) } {
        crate::println!("cpu {index}: no index in TSC_AUX ({error:?})");
    }
    // SAFETY: as above; the kernels use GS for nothing else, and every CPU comes here
    // before its first heap call (the bootstrap CPU from `init`, an AP first thing in
    // `smp::ap_entry`).
    match unsafe { X86_64Gs::install(index) } {
        Ok(()) => crate::println!("cpu {index}: registered with the heap"),
        Err(error) => crate::println!("cpu {index}: no per-CPU cache ({error:?})"),
    }
}

/// Gives the bootloader's usable memory to [`HEAP`] and prints what it took; the
/// bootstrap CPU becomes CPU 0.
pub fn init(boot_info: &BootInfo) {
    register_cpu(0);
    // SAFETY: the kernel takes no frames from usable regions itself, and the
    // bootloader's physical-memory mapping is never changed.
    let report = unsafe { bootinfo::add_boot_memory(&HEAP, boot_info) }
        .expect("the boot config maps physical memory");
    crate::println!(
        "heap: {} usable ranges added, {} refused{}",
        report.added,
        report.refused,
        match report.first_error {
            Some(_) => " (too small for arena metadata)",
            None => "",
        }
    );
}

/// Rounds of [`workload`] each CPU runs in [`workload_on_every_cpu`].
pub const SMP_ROUNDS: u64 = 300;

fn ap_workload(cpu: usize) {
    let result = workload(SMP_ROUNDS);
    assert!(result.map_len > 0);
    crate::println!("cpu {cpu}: workload done");
}

/// Starts every AP QEMU provides on [`SMP_ROUNDS`] rounds of [`workload`], runs them on
/// this CPU too, and returns once every AP has finished and halted: the number of
/// APs (the CPUs are 0..=aps).
pub fn workload_on_every_cpu(boot_info: &BootInfo) -> usize {
    let aps = crate::smp::start_aps(boot_info, ap_workload);
    crate::println!("smp: {aps} more CPUs started, each runs the workload");
    let result = workload(SMP_ROUNDS);
    assert!(result.map_len > 0);
    crate::smp::wait_done(aps);
    aps
}

/// Empties the caches of the halted APs `1..=aps` into the centrals, then trims
/// (which drains this CPU's cache and the centrals' transfer caches too).
pub fn drain_stopped_aps(aps: usize) {
    for cpu in 1..=aps {
        // SAFETY: every AP has finished its work and halted with interrupts off
        // (`workload_on_every_cpu` returned).
        unsafe { HEAP.drain_offline_cpu(cpu) };
    }
    HEAP.trim();
}

/// Results of [`workload`], checked by the heap test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadResult {
    /// Sum of the vector churn's elements.
    pub vec_sum: u64,
    /// Entries left in the map.
    pub map_len: usize,
    /// Sum of the map's values.
    pub map_sum: u64,
    /// Bytes of the strings built.
    pub string_bytes: usize,
    /// Boxes checked.
    pub boxes: usize,
}

/// Churns `Vec`, `Box`, `BTreeMap` and `String` for `rounds` rounds and checks every
/// value it reads back.
pub fn workload(rounds: u64) -> WorkloadResult {
    let mut vec_sum = 0u64;
    let mut map: BTreeMap<u64, Box<[u64]>> = BTreeMap::new();
    let mut string_bytes = 0usize;
    let mut boxes = 0usize;
    for round in 0..rounds {
        // Vectors that grow through every size class and into large objects.
        let len = 1 + (round * 7919) % 20_000;
        let v: Vec<u64> = (0..len).map(|i| i ^ round).collect();
        assert_eq!(v.len() as u64, len);
        assert!(v.iter().enumerate().all(|(i, x)| *x == i as u64 ^ round));
        vec_sum = vec_sum.wrapping_add(v.iter().sum::<u64>());

        // Boxes of slices keyed in a map; remove older ones so the set churns.
        let key = (round * 2654435761) % 512;
        let slice: Box<[u64]> = (0..(key % 97 + 1)).map(|i| i + key).collect();
        if let Some(old) = map.insert(key, slice) {
            assert!(old.iter().enumerate().all(|(i, x)| *x == i as u64 + key));
            boxes += 1;
        }
        if round % 3 == 0 {
            let remove = (round * 40503) % 512;
            if let Some(old) = map.remove(&remove) {
                assert!(old.iter().enumerate().all(|(i, x)| *x == i as u64 + remove));
                boxes += 1;
            }
        }

        // Strings grown by formatting.
        let mut s = String::new();
        for i in 0..(round % 50) {
            let _ = write!(s, "{i}:{round};");
        }
        string_bytes += s.len();
    }
    let map_sum = map.values().flat_map(|b| b.iter()).sum();
    WorkloadResult {
        vec_sum,
        map_len: map.len(),
        map_sum,
        string_bytes,
        boxes,
    }
}
