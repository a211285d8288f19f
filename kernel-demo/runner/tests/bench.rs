//! The in-kernel benchmark in quick mode: the `bench` kernel completes under icount on
//! one CPU and under multi-threaded TCG on two, and every allocator produces sane
//! results. The kernel itself checks every object's contents before freeing it and
//! that each allocator got its region back after each case (a failed check panics, so
//! the boot fails); this test checks the result lines. No timing is asserted.

use spanheap_runner::bench::{self, Mode, Sample, DEFAULT_ALLOCS, WORKLOADS};
use spanheap_runner::{run, Options};
use std::time::Duration;

const OPS: u64 = 5_000;

/// Boots the benchmark kernel and returns its output and samples.
fn boot(mode: Mode, cpus: u32) -> (String, Vec<Sample>) {
    let params = bench::params(mode, OPS, 1, "");
    let options: Options = bench::options(mode, cpus, &params, Duration::from_secs(300));
    let done = match run(bench::KERNEL, &options) {
        Ok(done) => done,
        Err(failure) => panic!("the bench kernel failed: {failure}"),
    };
    let samples = match mode {
        Mode::Icount => bench::parse_output(&done.output),
        Mode::Tcg => bench::parse_stamped(&done.stamps),
    };
    (done.output, samples)
}

/// Every workload x allocator ran once on `cpus` CPUs, counted its operations and
/// freed every allocation.
fn check(output: &str, samples: &[Sample], cpus: u32) {
    assert!(
        output.contains(&format!(
            "bench: done cases={}",
            WORKLOADS.len() * DEFAULT_ALLOCS.len()
        )),
        "output:\n{output}"
    );
    for workload in WORKLOADS {
        for alloc in DEFAULT_ALLOCS {
            let mut found = samples
                .iter()
                .filter(|s| s.workload == workload && s.alloc == alloc);
            let s = found
                .next()
                .unwrap_or_else(|| panic!("no result for {workload} x {alloc}:\n{output}"));
            assert!(
                found.next().is_none(),
                "two results for {workload} x {alloc}"
            );
            assert_eq!(s.cpus, cpus, "{s:?}");
            assert_eq!(s.cpu_tsc.len(), cpus as usize, "{s:?}");
            // linked_list_allocator runs fewer operations (its hole list is long).
            let per_cpu = s.ops / u64::from(cpus);
            assert_eq!(per_cpu * u64::from(cpus), s.ops, "{s:?}");
            if alloc == "lla" {
                assert!((1..=OPS / 20).contains(&per_cpu), "{s:?}");
            } else {
                assert_eq!(per_cpu, OPS, "{s:?}");
            }
            assert!(s.allocs > s.ops / 2 && s.allocs == s.frees, "{s:?}");
            assert!(
                s.tsc > 0 && s.cpu_tsc.iter().all(|&t| t > 0 && t <= s.tsc),
                "{s:?}"
            );
        }
    }
}

#[test]
fn bench_quick_icount_1_cpu() {
    let (output, samples) = boot(Mode::Icount, 1);
    check(&output, &samples, 1);
    for s in &samples {
        // Guest instructions per operation: a few dozen at the least (the harness),
        // far below a million for any allocator.
        let per_op = s.ticks_per_op();
        assert!(
            (20.0..1e6).contains(&per_op),
            "{s:?}: {per_op} instructions per op"
        );
        println!(
            "{} {}: {per_op:.1} instructions per op",
            s.workload, s.alloc
        );
    }
    let report = bench::markdown(&bench::Results {
        icount: samples,
        ..bench::Results::default()
    });
    assert!(report.contains("| pairs |"), "{report}");
    assert!(report.contains(" spanheap - floor |"), "{report}");
}

#[test]
fn bench_quick_tcg_2_cpus() {
    let (output, samples) = boot(Mode::Tcg, 2);
    check(&output, &samples, 2);
    assert!(
        output.contains("bench: spanheap-cache alloc=spanheap workload=xfree cpus=2 refills="),
        "output:\n{output}"
    );
    // The runner sampled the vCPU threads' CPU time around the measured phases (the
    // kernel's clock ticks every few ms, so the shortest phases may show none).
    assert!(samples.iter().any(|s| s.vcpu_ns.is_some()), "{samples:?}");
}
