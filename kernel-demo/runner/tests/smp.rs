//! QEMU tests of SMP bring-up: every CPU QEMU provides starts, registers with the heap
//! and serves its allocations from its own cache.

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
        let line = output
            .lines()
            .find(|l| l.starts_with(&format!("cpu {cpu} cache: allocs ")))
            .unwrap_or_else(|| panic!("no stats of cpu {cpu}:\n{output}"));
        let allocs: usize = line
            .split_whitespace()
            .nth(4)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable line {line:?}"));
        assert!(allocs > 1000, "cpu {cpu} served few allocations: {line}");
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
