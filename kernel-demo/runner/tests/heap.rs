//! QEMU tests of spanheap as a kernel's global allocator.

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

#[test]
fn heap_workload_runs_and_stats_balance() {
    let options = Options {
        cpus: 1,
        timeout: Duration::from_secs(240),
        ..Options::default()
    };
    let output = must_pass("test_heap", &options);
    assert!(output.contains("heap test ok"), "output:\n{output}");
    assert!(
        output.contains("stats balance: ok; in use after drop: 0 bytes"),
        "output:\n{output}"
    );
    assert!(
        output.contains("balance: managed "),
        "the stats table is printed:\n{output}"
    );
    let added = output
        .lines()
        .find_map(|l| {
            l.strip_prefix("heap: ")?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .expect("the heap reports the ranges it took");
    assert!(added >= 1, "output:\n{output}");
    assert!(
        output.contains("cpu 0: registered with the heap"),
        "the BSP registers (GS block; TSC_AUX read with RDPID or RDTSCP):\n{output}"
    );
    assert!(output.contains("cpu 0 cache: allocs "), "output:\n{output}");
    assert!(
        output.contains("kernel gs block: ok"),
        "X86_64Gs at two offsets of a kernel's own GS block:\n{output}"
    );
}
