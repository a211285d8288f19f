//! QEMU tests of the boot pipeline: one scenario per kernel binary.

mod common;

use spanheap_runner::{must_pass, run, Failure, Options};
use std::time::Duration;

fn options(cpus: u32, memory: &str) -> Options {
    Options {
        cpus,
        memory: memory.into(),
        timeout: Duration::from_secs(120),
        ..Options::default()
    }
}

#[test]
fn boots_and_uses_physical_memory_mapping() {
    let output = must_pass("test_boot", &options(1, "128M"));
    assert!(
        output.contains("boot ok: physical memory at 0x"),
        "output:\n{output}"
    );
}

#[test]
fn demo_prints_memory_map_and_runs_on_every_cpu() {
    let output = must_pass("demo", &Options::default());
    assert!(output.contains("memory map: "), "output:\n{output}");
    assert!(output.contains("Usable"), "output:\n{output}");
    assert!(output.contains("total usable: "), "output:\n{output}");
    // `./run demo` boots 4 CPUs: each runs the workload from its own cache.
    assert!(
        output.contains("smp: 3 more CPUs started"),
        "output:\n{output}"
    );
    for cpu in 0..4 {
        let allocs = common::cache_allocs(&output, cpu);
        assert!(allocs > 0, "cpu {cpu} served nothing from its cache");
    }
    assert!(
        output.contains("caches drained and trimmed"),
        "output:\n{output}"
    );
    // Three stats tables (before, after, after every CPU), each balanced.
    assert_eq!(
        output.matches("+ metadata: ok").count(),
        3,
        "output:\n{output}"
    );
    assert!(!output.contains("BROKEN"), "output:\n{output}");
}

#[test]
fn panic_fails_the_run_and_shows_the_message() {
    let failure = run("test_panic", &options(1, "128M")).expect_err("a panicking kernel passed");
    let Failure::Exit { status, .. } = &failure else {
        panic!("expected a failed exit, got: {failure}");
    };
    assert_eq!(
        status.code(),
        Some(35),
        "the panic handler exits with code 0x11"
    );
    let report = failure.to_string();
    assert!(
        report.contains("deliberate panic from test_panic (code 42)"),
        "report:\n{report}"
    );
    assert!(
        report.contains("test_panic.rs:"),
        "the location is shown; report:\n{report}"
    );
}

#[test]
fn timeout_kills_a_kernel_that_never_exits() {
    let mut options = options(1, "128M");
    // Long enough for the boot to print its line on a loaded host (TCG boots took
    // over 15 s with the other QEMU tests, a fuzzer and a build on 2 cores); the
    // kernel halts after it, so the wait costs no CPU.
    options.timeout = Duration::from_secs(40);
    match run("test_hang", &options) {
        Err(failure @ Failure::Timeout { .. }) => {
            assert!(failure.output().contains("hanging on purpose"), "{failure}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// Parses `memory: usable_kib=U bootloader_kib=B ram_kib=R` from the kernel output.
fn memory_line(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .find(|line| line.starts_with("memory: usable_kib="))
        .unwrap_or_else(|| panic!("no memory line in:\n{output}"));
    let field = |name: &str| -> u64 {
        let start = line.find(name).expect("field present") + name.len();
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("usable_kib="), field("ram_kib="))
}

#[test]
fn usable_memory_matches_qemu_memory_size() {
    for mib in [128u64, 384] {
        let output = must_pass("test_memory", &options(1, &format!("{mib}M")));
        let (usable_kib, ram_kib) = memory_line(&output);
        let given_kib = mib * 1024;
        // The BIOS keeps the legacy hole (640 KiB to 1 MiB) and a little at the top
        // of RAM for ACPI tables: at most 2 MiB in all.
        assert!(
            ram_kib <= given_kib && ram_kib >= given_kib - 2048,
            "-m {mib}M but the kernel sees {ram_kib} KiB of RAM"
        );
        // The bootloader's own use (kernel image, page tables, boot info) is small.
        assert!(
            usable_kib >= ram_kib - 16 * 1024,
            "usable {usable_kib} of {ram_kib} KiB"
        );
    }
}
