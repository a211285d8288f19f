//! Throughput with cross-thread frees, one thread against two (issue 4's scaling goal:
//! two threads at least 1.8x one on this 2-core machine, where the global-lock peers
//! slow down).
//!
//! The workload is `common::larson` (the suite runs it too as `larson-local`,
//! `larson-ring` and `larson-batch`): each thread owns 1000 slots and replaces a
//! random one per step (16 to 1024 bytes), and objects reach the other thread in one
//! of three ways: never (`local`), one at a time through a ring (`ring`: every 4th
//! new object, `--handoff N` for every N-th), or a whole slot array per 1000 steps
//! through one atomic pointer (`batch`, larson's hand-off). Throughput = all
//! threads' allocator calls / wall time from a common start.
//!
//! Every allocator gets its own fresh 64 MiB region and is used through
//! `GlobalAlloc` (the process allocators take their memory from the OS).
//!
//! ```text
//! cargo bench --bench threads                     # all, 1 and 2 threads, medians of 3
//! cargo bench --bench threads -- --steps 200000 --runs 5 --only spanheap --variant batch
//! ```

mod common;

use common::larson::{self, Exchange, Variant};
use common::{median, run_team, with_subject, Limit, Region, Subject, Visitor, Which};

const DEFAULT_STEPS: u64 = 4_000_000;
/// linked_list_allocator walks its hole list on every call: it runs this many times
/// fewer steps.
const LLA_DIVISOR: u64 = 20;

/// Allocator calls per second of `threads` workers.
struct Run {
    threads: usize,
    steps: u64,
    variant: Variant,
}

impl Visitor for Run {
    type Out = (f64, f64);
    fn visit<A: Subject + Sync>(&mut self, _which: Which) -> (f64, f64) {
        let region = Region::new();
        // SAFETY: `region` is used by nothing else and outlives `a` (dropped first).
        let a = unsafe { A::over(&region) };
        let ex = Exchange::new(self.threads);
        let variant = self.variant;
        let run = run_team(self.threads, Limit::steps(self.steps), |team| {
            larson::worker(&*a, team, &ex, variant, false)
        });
        drop(a);
        drop(region);
        let cross = run.cross_frees as f64 / run.frees.max(1) as f64;
        (run.ops_per_sec(), cross)
    }
}

fn main() {
    let mut steps = DEFAULT_STEPS;
    let mut runs = 3;
    let mut only = None;
    let mut variants = vec![Variant::Local, Variant::Ring(4), Variant::Batch];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--steps" => steps = value().parse().expect("--steps N"),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--only" => only = Some(Which::from_name(&value()).expect("--only NAME")),
            "--handoff" => variants = vec![Variant::Ring(value().parse().expect("--handoff N"))],
            "--variant" => {
                variants = vec![match value().as_str() {
                    "local" => Variant::Local,
                    "ring" => Variant::Ring(4),
                    "batch" => Variant::Batch,
                    v => panic!("--variant local|ring|batch, not {v}"),
                }]
            }
            "--bench" => {}
            _ => panic!(
                "usage: threads [--steps N] [--runs N] [--only NAME] [--variant local|ring|batch] [--handoff N]"
            ),
        }
    }
    println!(
        "threads: {steps} steps per thread, medians of {runs}, {} cores; allocator calls/s in millions",
        common::cores()
    );
    for variant in variants {
        println!();
        match variant {
            Variant::Local => {
                println!("no hand-off (every object freed by the thread that made it):")
            }
            Variant::Ring(n) => {
                println!("every {n}th new object handed to the other thread one by one (ring):")
            }
            Variant::Batch => println!(
                "whole slot arrays handed over every {} steps (one atomic pointer):",
                larson::ROUND
            ),
        }
        println!();
        println!(
            "| allocator | 1 thread | 2 threads | 2 threads / 1 thread | cross-thread frees at 2 |"
        );
        println!("|---|---:|---:|---:|---:|");
        for which in Which::ALL {
            if only.is_some_and(|o| o != which) {
                continue;
            }
            let n = if which == Which::Lla {
                steps / LLA_DIVISOR
            } else {
                steps
            };
            let measure = |threads| {
                let v: Vec<(f64, f64)> = (0..runs)
                    .map(|_| {
                        with_subject(
                            which,
                            &mut Run {
                                threads,
                                steps: n,
                                variant,
                            },
                        )
                    })
                    .collect();
                let cross = v[0].1;
                (
                    median(&mut v.iter().map(|r| r.0).collect::<Vec<_>>()),
                    cross,
                )
            };
            let (one, _) = measure(1);
            let (two, cross) = measure(2);
            println!(
                "| {} | {:.2} | {:.2} | {:.2}x | {:.0}% |",
                which.label(),
                one / 1e6,
                two / 1e6,
                two / one,
                cross * 100.0
            );
        }
    }
}
