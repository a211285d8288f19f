//! The host benchmark suite (issue 5): spanheap against the kernel allocators over
//! same-sized regions and the process allocators as references, on the workloads of
//! the field's suites (own code, the patterns only), with a markdown table and SVG
//! charts in `bench-results/`.
//!
//! Subjects (`common::Which`): `spanheap` (`SpanHeap<HostThreads>`, each thread a CPU
//! with its own cache), `spanheap-uncached` (`SpanHeap<Uncached>`), `talc`, `buddy`,
//! `lla` (linked_list_allocator), each over its own fresh region with every page
//! written before the clock starts; `system` (glibc malloc), `mimalloc`, `jemalloc`:
//! process allocators with their memory from the OS, references for time only.
//!
//! Workloads (each module's docs say exactly what a step does):
//!
//! - `pairs`: alloc+free pairs of one size per column (8 B .. 64 KiB), 1000 live
//!   (fewer for the large sizes), random replacement;
//! - `random-actions`: talc's random actions: 300 slots, a random slot is filled,
//!   freed or reallocated, sizes up to 200 B .. 30 KB;
//! - `glibc-simple`: glibc's simple malloc loop: allocate 25, 100, 400, 1600 blocks of
//!   one size, free them in order;
//! - `growth`: alloc+free pairs with 1k, 10k and 100k live objects (16..512 B);
//! - `larson-local`, `larson-ring`, `larson-batch`: larson-like random slot
//!   replacement on 1 and 2 threads, objects crossing threads never / one by one
//!   through a ring / a whole slot array at a time (`common::larson`);
//! - `xmalloc`: producer/consumer: one thread allocates batches, another frees them;
//! - `cache-scratch`: passive false sharing: each worker frees an object the main
//!   thread made next to the others' and then allocates, writes and frees its own;
//! - `efficiency`: talc's heap efficiency: random alloc/free/realloc until the first
//!   failure; live bytes / region bytes;
//! - `metadata`: spanheap's metadata bytes over a 512 MiB region, from `stats()`.
//!
//! Ops = allocator calls (alloc, free, realloc) per second, median of the runs; the
//! runs are interleaved (run r of every cell of a table, then r + 1) so that a burst
//! of noise on a shared machine hits all allocators and columns alike. p50/p99 latency is from
//! every 64th call timed with the TSC (`common::probe`).
//!
//! ```text
//! cargo bench --bench suite                          # everything, writes bench-results/
//!                                                     # (--only/--subjects: bench-results/tmp/partial)
//! cargo bench --bench suite -- --quick               # smoke run (small budgets, 1 run)
//! cargo bench --bench suite -- --only pairs,growth --subjects spanheap,talc --runs 3
//! options: --quick  --out DIR  --runs N  --ms N (time per measurement)
//!          --only WORKLOAD,..  --subjects NAME,..  --threads N,..
//! ```

#[path = "suite/charts.rs"]
mod charts;
mod common;
#[path = "suite/memory.rs"]
mod memory;
#[path = "suite/report.rs"]
mod report;
#[path = "suite/single.rs"]
mod single;
#[path = "suite/threaded.rs"]
mod threaded;

use common::probe::Latency;
use common::{median, with_subject, Subject, Visitor, Which};
use report::{Cell, Column, Table};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How much of everything to run.
pub(crate) struct Scale {
    pub(crate) quick: bool,
    /// Runs per cell (medians).
    pub(crate) runs: usize,
    /// Time of one measurement.
    pub(crate) time: Duration,
    /// Thread counts of the threaded workloads.
    pub(crate) threads: Vec<usize>,
}

impl Scale {
    /// Columns for the thread counts, marked when they exceed the cores.
    pub(crate) fn thread_columns(&self) -> Vec<Column> {
        self.threads
            .iter()
            .map(|&t| Column::threads(t, common::cores()))
            .collect()
    }
}

/// One measurement of one allocator in one cell.
#[derive(Default)]
pub(crate) struct Measured {
    /// Ops per second, or the table's other unit.
    pub(crate) value: f64,
    pub(crate) latency: Option<Latency>,
    /// Fraction of frees that hit another thread's objects.
    pub(crate) cross: Option<f64>,
    /// `false`: the measurement did not finish (time cap); the cell shows "-".
    pub(crate) valid: bool,
}

impl Measured {
    pub(crate) fn ops(ops: u64, elapsed: Duration) -> Self {
        Measured {
            value: ops as f64 / elapsed.as_secs_f64(),
            valid: true,
            ..Measured::default()
        }
    }
}

/// A workload: a table of allocators x columns.
pub(crate) trait Bench {
    /// The table, with no rows yet.
    fn table(&self, scale: &Scale) -> Table;

    /// Runs per cell.
    fn runs(&self, scale: &Scale) -> usize {
        scale.runs
    }

    /// Whether `which` takes part (process allocators have no region to measure).
    fn applies(&self, _which: Which) -> bool {
        true
    }

    /// Run number `run` of column `column` on allocator `A`.
    fn measure<A: Subject + Sync>(
        &self,
        column: &Column,
        which: Which,
        scale: &Scale,
        run: usize,
    ) -> Measured;
}

struct Call<'a, B> {
    bench: &'a B,
    column: &'a Column,
    scale: &'a Scale,
    run: usize,
}

impl<B: Bench> Visitor for Call<'_, B> {
    type Out = Measured;
    fn visit<A: Subject + Sync>(&mut self, which: Which) -> Measured {
        self.bench
            .measure::<A>(self.column, which, self.scale, self.run)
    }
}

/// Runs every cell of `bench` for `subjects`; medians per cell.
fn run_bench<B: Bench>(bench: &B, subjects: &[Which], scale: &Scale) -> Table {
    let mut table = bench.table(scale);
    let run_count = bench.runs(scale);
    table.runs = run_count;
    let started = Instant::now();
    let subjects: Vec<Which> = subjects
        .iter()
        .copied()
        .filter(|&w| bench.applies(w))
        .collect();
    // Round r measures every column of every allocator once, then round r + 1: a
    // burst of noise on a shared machine hits all cells of the table alike (in
    // particular the 1-thread and 2-thread columns that a scaling ratio divides).
    let mut runs: Vec<Vec<Vec<Measured>>> = (0..subjects.len())
        .map(|_| (0..table.columns.len()).map(|_| Vec::new()).collect())
        .collect();
    for run in 0..run_count {
        for (c, column) in table.columns.iter().enumerate() {
            for (i, &which) in subjects.iter().enumerate() {
                let mut call = Call {
                    bench,
                    column,
                    scale,
                    run,
                };
                runs[i][c].push(with_subject(which, &mut call));
            }
        }
        eprint!(".");
    }
    let cells: Vec<Vec<Option<Cell>>> = runs
        .into_iter()
        .map(|per_column| per_column.into_iter().map(Cell::of_runs).collect())
        .collect();
    table.rows = subjects.into_iter().zip(cells).collect();
    eprintln!(" {} ({:.1} s)", table.id, started.elapsed().as_secs_f64());
    table
}

impl Cell {
    /// The median of the valid runs (latency and cross fraction: medians too).
    fn of_runs(runs: Vec<Measured>) -> Option<Cell> {
        let valid: Vec<Measured> = runs.into_iter().filter(|m| m.valid).collect();
        if valid.is_empty() {
            return None;
        }
        let mut values: Vec<f64> = valid.iter().map(|m| m.value).collect();
        let med = |f: &dyn Fn(&Latency) -> f64| {
            let mut v: Vec<f64> = valid
                .iter()
                .filter_map(|m| m.latency.as_ref().map(f))
                .collect();
            (!v.is_empty()).then(|| median(&mut v))
        };
        let latency = med(&|l| l.alloc_p50).map(|alloc_p50| Latency {
            alloc_p50,
            alloc_p99: med(&|l| l.alloc_p99).unwrap(),
            free_p50: med(&|l| l.free_p50).unwrap(),
            free_p99: med(&|l| l.free_p99).unwrap(),
        });
        let mut cross: Vec<f64> = valid.iter().filter_map(|m| m.cross).collect();
        Some(Cell {
            value: median(&mut values),
            spread: (
                values.iter().cloned().fold(f64::MAX, f64::min),
                values.iter().cloned().fold(0.0, f64::max),
            ),
            latency,
            cross: (!cross.is_empty()).then(|| median(&mut cross)),
        })
    }
}

struct Options {
    scale: Scale,
    out: PathBuf,
    only: Option<Vec<String>>,
    subjects: Vec<Which>,
}

fn usage() -> ! {
    eprintln!(
        "usage: suite [--quick] [--out DIR] [--runs N] [--ms N] [--only WORKLOAD,..] [--subjects NAME,..] [--threads N,..]"
    );
    std::process::exit(1)
}

fn parse_args() -> Options {
    let mut quick = false;
    let (mut runs, mut ms, mut threads, mut out, mut only, mut subjects) =
        (None, None, None, None, None, Which::ALL.to_vec());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--quick" => quick = true,
            "--runs" => runs = Some(value().parse().unwrap_or_else(|_| usage())),
            "--ms" => ms = Some(value().parse().unwrap_or_else(|_| usage())),
            "--out" => out = Some(PathBuf::from(value())),
            "--only" => only = Some(value().split(',').map(str::to_string).collect()),
            "--subjects" => {
                subjects = value()
                    .split(',')
                    .map(|n| Which::from_name(n).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--threads" => {
                threads = Some(
                    value()
                        .split(',')
                        .map(|n| n.parse().unwrap_or_else(|_| usage()))
                        .collect(),
                )
            }
            "--bench" => {}
            _ => usage(),
        }
    }
    let cores = common::cores();
    let scale = Scale {
        quick,
        runs: runs.unwrap_or(if quick { 1 } else { 5 }),
        time: Duration::from_millis(ms.unwrap_or(if quick { 15 } else { 200 })),
        threads: threads.unwrap_or_else(|| {
            if quick {
                vec![1, 2]
            } else {
                // 1 and 2, and twice the cores (oversubscribed) when that is more.
                let mut t = vec![1, 2];
                if cores * 2 > 2 {
                    t.push(cores * 2);
                }
                t
            }
        }),
    };
    // Only a full run replaces the committed results; a quick or partial one (some
    // workloads or allocators) writes under bench-results/tmp/ (gitignored).
    let partial = only.is_some() || subjects.len() != Which::ALL.len();
    let out = out.unwrap_or_else(|| {
        PathBuf::from(if quick {
            "bench-results/tmp/quick"
        } else if partial {
            "bench-results/tmp/partial"
        } else {
            "bench-results"
        })
    });
    Options {
        scale,
        out,
        only,
        subjects,
    }
}

fn main() {
    let o = parse_args();
    let scale = &o.scale;
    let wanted = |id: &str| o.only.as_ref().is_none_or(|l| l.iter().any(|w| w == id));
    let started = Instant::now();
    let header = report::Header::now(scale);
    eprintln!("suite: {}", header.machine_line());

    let mut tables = Vec::new();
    macro_rules! bench {
        ($id:expr, $b:expr) => {
            if wanted($id) {
                tables.push(run_bench(&$b, &o.subjects, scale));
            }
        };
    }
    bench!("pairs", single::PairsPerClass);
    bench!("random-actions", single::RandomActions);
    bench!("glibc-simple", single::GlibcSimple);
    bench!("growth", single::Growth);
    bench!(
        "larson-local",
        threaded::Larson(common::larson::Variant::Local)
    );
    bench!(
        "larson-ring",
        threaded::Larson(common::larson::Variant::Ring(4))
    );
    bench!(
        "larson-batch",
        threaded::Larson(common::larson::Variant::Batch(common::larson::ROUND))
    );
    bench!("xmalloc", threaded::Xmalloc);
    bench!("cache-scratch", threaded::CacheScratch);
    bench!("efficiency", memory::Efficiency);
    let metadata = wanted("metadata").then(|| memory::metadata(scale));

    let header = header.finish(started.elapsed());
    let results = report::Results {
        header,
        tables,
        metadata,
    };
    std::fs::create_dir_all(&o.out).expect("cannot create the output directory");
    let charts = charts::write_all(&results, &o.out);
    let md = results.markdown(&charts);
    let path = o.out.join("results.md");
    std::fs::write(&path, &md).expect("cannot write results.md");
    std::fs::write(o.out.join("summary.md"), results.summary_markdown())
        .expect("cannot write summary.md");
    std::fs::write(o.out.join("results.csv"), results.csv()).expect("cannot write results.csv");
    println!("{}", results.summary_markdown());
    eprintln!(
        "suite: wrote {} and {} charts in {:.0} s",
        path.display(),
        charts.len(),
        started.elapsed().as_secs_f64()
    );
}
