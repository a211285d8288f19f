//! QEMU cross-CPU stress: exchange and producer/consumer patterns with content checks
//! on every CPU, then everything freed, drained and trimmed.

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

fn stress(cpus: u32) {
    let options = Options {
        cpus,
        timeout: Duration::from_secs(600),
        ..Options::default()
    };
    let output = must_pass("test_stress", &options);
    assert!(
        output.contains(&format!("stress: {cpus} CPUs, ")),
        "output:\n{output}"
    );
    for cpu in 0..cpus {
        assert!(
            output.contains(&format!("cpu {cpu} cache: allocs ")),
            "cpu {cpu} has no cache:\n{output}"
        );
    }
    assert!(
        output.contains("stress ok: zero bytes in use, every page back"),
        "output:\n{output}"
    );
}

#[test]
fn stress_2_cpus() {
    stress(2);
}

#[test]
fn stress_4_cpus() {
    stress(4);
}
