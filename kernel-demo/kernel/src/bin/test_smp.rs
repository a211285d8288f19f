//! Scenario: every CPU QEMU provides is brought up (INIT-SIPI-SIPI, a real-mode
//! trampoline, a stack from spanheap's stack API), registers with the heap and runs
//! the allocation workload. Per-CPU stats then show that every CPU served its
//! allocations from its own cache.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{entry_point, BootInfo};
use spanheap_kernel::heap::{self, HEAP};
use spanheap_kernel::{exit_qemu, println, QemuExitCode, BOOTLOADER_CONFIG};

entry_point!(main, config = &BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    heap::init(boot_info);
    let aps = heap::workload_on_every_cpu(boot_info);
    let cpus = aps + 1;
    for cpu in 0..cpus {
        let stats = HEAP
            .cpu_stats(cpu)
            .unwrap_or_else(|| panic!("cpu {cpu} has no cache"));
        println!("cpu {cpu} cache: {stats}");
        assert!(
            stats.allocs > 0 && stats.frees > 0,
            "cpu {cpu} did not use its cache"
        );
    }
    let stats = HEAP.stats();
    println!("{stats}");
    assert!(stats.balances());
    assert_eq!(stats.cpu_caches, cpus);
    // The APs are halted: their caches may be drained from here, then the objects in
    // the centrals' transfer caches go back to their spans.
    heap::drain_stopped_aps(aps);
    HEAP.check_invariants().expect("heap invariants");
    let stats = HEAP.stats();
    assert_eq!(stats.cached_bytes, 0);
    // Only the AP stacks (owned by the halted APs) and the page tables stay in use.
    println!("smp test ok: {cpus} CPUs, each served from its own cache");
    exit_qemu(QemuExitCode::Success)
}
