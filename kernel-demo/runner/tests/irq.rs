//! QEMU test of interrupt safety: the local APIC timer ticks at a high rate on every
//! CPU and its handler allocates and frees while the interrupted code allocates too.
//! The kernel must end (no deadlock), every content check and the heap's invariants
//! must pass (no corruption), and every CPU's handler must have allocated often.
//!
//! The boots run one after another, not as parallel tests: the timer's rate is host
//! time under TCG, and a host with more vCPU threads than cores delivers far fewer
//! ticks per workload round.

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

/// The least handler allocations each CPU must report (the kernel checks the same).
const MIN_HANDLER_ALLOCS: u64 = 1_000;

/// The number after `label` in `line` (e.g. "handler allocations 6136,").
fn count_after(line: &str, label: &str) -> u64 {
    line.split_once(label)
        .and_then(|(_, rest)| rest.trim_start().split([',', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label} N` in {line:?}"))
}

fn boot(cpus: u32) {
    let options = Options {
        cpus,
        timeout: Duration::from_secs(180),
        ..Options::default()
    };
    let output = must_pass("test_irq", &options);
    for cpu in 0..cpus {
        let prefix = format!("irq cpu {cpu}: ");
        let line = output
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line for cpu {cpu}:\n{output}"));
        println!("{line}");
        let handler = count_after(line, "handler allocations");
        let workload = count_after(line, "workload allocations");
        assert!(
            handler > MIN_HANDLER_ALLOCS,
            "cpu {cpu}: few handler allocations: {line}"
        );
        assert!(workload > 0, "cpu {cpu}: no workload allocations: {line}");
    }
    let ok = format!("irq test ok: {cpus} CPUs, no deadlock, contents intact");
    assert!(output.contains(&ok), "output:\n{output}");
}

#[test]
fn timer_handler_allocates_on_1_and_2_cpus() {
    boot(1);
    boot(2);
}
