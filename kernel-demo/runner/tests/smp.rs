//! QEMU tests of SMP bring-up: every CPU QEMU provides starts, registers with the heap
//! and serves its allocations from its own cache.

mod common;

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

fn boot(cpus: u32) {
    let options = Options {
        cpus,
        timeout: Duration::from_secs(300),
        ..Options::default()
    };
    let output = must_pass("test_smp", &options);
    assert!(
        output.contains(&format!("smp: {cpus} CPUs in the MADT")),
        "output:\n{output}"
    );
    for cpu in 0..cpus {
        let allocs = common::cache_allocs(&output, cpu);
        assert!(allocs > 1000, "cpu {cpu} served few allocations: {allocs}");
    }
    assert!(
        output.contains(&format!("smp test ok: {cpus} CPUs")),
        "output:\n{output}"
    );
}

#[test]
fn smp_2_cpus() {
    boot(2);
}

#[test]
fn smp_4_cpus() {
    boot(4);
}

#[test]
fn smp_8_cpus() {
    boot(8);
}
