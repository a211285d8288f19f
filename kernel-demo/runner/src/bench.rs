//! The in-kernel benchmark from the host side (`spanheap-runner kernel-bench`): boots
//! the `bench` kernel in each mode, parses its result lines and writes a markdown
//! report.
//!
//! Modes:
//!
//! - **icount**: one CPU under `-icount shift=0`, where the guest TSC counts guest
//!   instructions exactly, so `tsc / ops` is instructions per operation. One boot is
//!   enough: the count is the same every run.
//! - **TCG**: multi-threaded TCG (`-accel tcg,thread=multi`) on 1, 2 and 4 CPUs. The
//!   guest TSC is then the host's TSC, so `ops / tsc` is throughput in host ticks;
//!   [`host_tsc_hz`] turns it into operations per second. Boots alternate between the
//!   CPU counts (1, 2, 4, 1, 2, 4, ...) so that a change in the machine's load hits
//!   every count alike, and the report quotes medians over the boots.
//!
//! The kernel takes its parameters from fw_cfg file `opt/spanheap/bench` (see
//! `kernel-demo/kernel/src/bench/mod.rs`).
//!
//! # Invariants
//!
//! - every [`Sample`] comes from a kernel run that exited with the success status: the
//!   kernel checked its objects' contents and that every allocator got everything back.

use crate::{run, Failure, Options};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The benchmark kernel's name.
pub const KERNEL: &str = "bench";
/// Guest memory for the benchmark (four 128 MiB regions plus the kernel's own heap).
pub const MEMORY: &str = "1G";
/// Allocators the kernel runs by default, as it names them.
pub const DEFAULT_ALLOCS: [&str; 4] = ["spanheap", "talc", "lla", "floor"];
/// Every allocator the kernel knows, in report order (`spanheap-tscaux` and
/// `spanheap-percpu` run only when asked for with `allocs=`: spanheap with the CPU
/// index in `IA32_TSC_AUX`, and one private heap per CPU, for diagnosis).
pub const ALLOCS: [&str; 6] = [
    "spanheap",
    "talc",
    "lla",
    "floor",
    "spanheap-tscaux",
    "spanheap-percpu",
];
/// Workloads in report order.
pub const WORKLOADS: [&str; 3] = ["pairs", "larson", "xfree"];

/// How the kernel is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One CPU, `-icount shift=0`: TSC = guest instructions.
    Icount,
    /// Multi-threaded TCG: TSC = host TSC.
    Tcg,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Icount => "icount",
            Mode::Tcg => "tcg",
        }
    }
}

/// One result line of the kernel: one workload against one allocator on all CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// `pairs`, `larson` or `xfree`.
    pub workload: String,
    /// `spanheap`, `talc`, `lla` or `floor`.
    pub alloc: String,
    /// CPUs that ran the case.
    pub cpus: u32,
    /// Round within the boot.
    pub rep: u32,
    /// Measured operations, all CPUs together.
    pub ops: u64,
    /// TSC ticks from the first CPU's start to the last CPU's end.
    pub tsc: u64,
    /// Allocations in the case (set-up included).
    pub allocs: u64,
    /// Frees in the case.
    pub frees: u64,
    /// Each CPU's own ticks from its start to its end.
    pub cpu_tsc: Vec<u64>,
    /// On-CPU time (ns) of all vCPU threads from the `bench: measure` to the
    /// `bench: measured` line of this case, when the runner sampled it.
    pub vcpu_ns: Option<u64>,
}

impl Sample {
    /// Operations per million TSC ticks.
    pub fn ops_per_mtick(&self) -> f64 {
        self.ops as f64 * 1e6 / self.tsc.max(1) as f64
    }

    /// TSC ticks per operation (instructions per operation under icount).
    pub fn ticks_per_op(&self) -> f64 {
        self.tsc as f64 / self.ops.max(1) as f64
    }
}

/// Parses one `bench: workload=...` line; `None` for any other line.
pub fn parse_line(line: &str) -> Option<Sample> {
    let rest = line.trim().strip_prefix("bench: workload=")?;
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    fields.insert("workload", rest.split_whitespace().next()?);
    for word in rest.split_whitespace().skip(1) {
        let (key, value) = word.split_once('=')?;
        fields.insert(key, value);
    }
    let number = |key: &str| fields.get(key)?.parse::<u64>().ok();
    Some(Sample {
        workload: fields.get("workload")?.to_string(),
        alloc: fields.get("alloc")?.to_string(),
        cpus: u32::try_from(number("cpus")?).ok()?,
        rep: u32::try_from(number("rep")?).ok()?,
        ops: number("ops")?,
        tsc: number("tsc")?,
        allocs: number("allocs")?,
        frees: number("frees")?,
        cpu_tsc: fields
            .get("cpu_tsc")?
            .split(',')
            .map(|t| t.parse().ok())
            .collect::<Option<Vec<u64>>>()?,
        vcpu_ns: None,
    })
}

/// Every result line of a kernel's output.
pub fn parse_output(output: &str) -> Vec<Sample> {
    output.lines().filter_map(parse_line).collect()
}

/// Every result line of stamped output (see [`crate::Run::stamps`]), each with the
/// vCPU threads' CPU time between its case's `bench: measure` and `bench: measured`.
pub fn parse_stamped(stamps: &[(String, u64)]) -> Vec<Sample> {
    let (mut start, mut measured) = (None, None);
    let mut samples = Vec::new();
    for (line, ns) in stamps {
        match line.trim() {
            "bench: measure" => start = Some(*ns),
            "bench: measured" => measured = start.take().map(|s| ns.saturating_sub(s)),
            text => {
                if let Some(mut sample) = parse_line(text) {
                    // A zero means the threads were not found (no /proc, other names).
                    sample.vcpu_ns = measured.take().filter(|&ns| ns > 0);
                    samples.push(sample);
                }
            }
        }
    }
    samples
}

/// The kernel parameters for `mode` with `ops` operations per CPU and `reps` rounds,
/// then `extra` (more `key=value` words, e.g. `allocs=spanheap,floor irq=off`).
pub fn params(mode: Mode, ops: u64, reps: u32, extra: &str) -> String {
    format!("mode={} ops={ops} reps={reps} {extra}", mode.name())
        .trim_end()
        .to_string()
}

/// QEMU options that boot the benchmark kernel with `cpus` CPUs in `mode` and hand it
/// `params`.
pub fn options(mode: Mode, cpus: u32, params: &str, timeout: Duration) -> Options {
    // fw_cfg strings are QEMU option values: a comma is written twice.
    let mut extra_args = vec![
        "-fw_cfg".to_string(),
        format!(
            "name=opt/spanheap/bench,string={}",
            params.replace(',', ",,")
        ),
    ];
    if mode == Mode::Tcg && cpus == 1 {
        // The runner asks for multi-threaded TCG only with several CPUs; one CPU gets
        // it too, so that every count runs the same TCG.
        extra_args.extend(["-accel".to_string(), "tcg,thread=multi".to_string()]);
    }
    Options {
        cpus,
        memory: MEMORY.into(),
        icount: mode == Mode::Icount,
        timeout,
        echo: false,
        extra_args,
        // Under icount the TSC already counts instructions; under TCG the vCPU threads'
        // CPU time tells what the host's other work did to the wall-clock figures.
        vcpu_times: mode == Mode::Tcg,
    }
}

/// Boots the benchmark kernel once and returns its samples.
///
/// # Errors
///
/// The [`Failure`] of the run (a failed check in the kernel is a panic: exit status 35).
pub fn boot(
    mode: Mode,
    cpus: u32,
    params: &str,
    timeout: Duration,
) -> Result<Vec<Sample>, Failure> {
    let done = run(KERNEL, &options(mode, cpus, params, timeout))?;
    if done.stamps.is_empty() {
        Ok(parse_output(&done.output))
    } else {
        Ok(parse_stamped(&done.stamps))
    }
}

/// What `kernel-bench` runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Operations per CPU per case under icount.
    pub icount_ops: u64,
    /// Operations per CPU per case under TCG.
    pub tcg_ops: u64,
    /// Boots of each CPU count under TCG.
    pub boots: u32,
    /// Rounds of every case within a boot.
    pub reps: u32,
    /// CPU counts under TCG (the first is the base of the ratios).
    pub cpus: Vec<u32>,
    /// Run the icount mode.
    pub icount: bool,
    /// Kill a boot after this long.
    pub timeout: Duration,
    /// More kernel parameters for every boot (`key=value` words).
    pub kernel_args: String,
}

impl Plan {
    /// The full measurement: 200 000 operations per CPU and case, 5 boots of each CPU
    /// count.
    pub fn full() -> Self {
        Plan {
            icount_ops: 200_000,
            tcg_ops: 200_000,
            boots: 5,
            reps: 1,
            cpus: vec![1, 2, 4],
            icount: true,
            timeout: Duration::from_secs(900),
            kernel_args: String::new(),
        }
    }

    /// A smoke run: 5 000 operations, one boot of each count (well under a minute).
    pub fn quick() -> Self {
        Plan {
            icount_ops: 5_000,
            tcg_ops: 5_000,
            boots: 1,
            reps: 1,
            cpus: vec![1, 2, 4],
            icount: true,
            timeout: Duration::from_secs(300),
            kernel_args: String::new(),
        }
    }
}

/// Everything a `kernel-bench` run measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Samples of the icount boot.
    pub icount: Vec<Sample>,
    /// Samples of every TCG boot.
    pub tcg: Vec<Sample>,
    /// Host TSC frequency in Hz (guest TSC under TCG = host TSC).
    pub tsc_hz: f64,
    /// `/proc/loadavg` before and after the boots.
    pub load: (String, String),
    /// The plan that ran.
    pub boots: u32,
    /// Wall time of all boots.
    pub wall: Duration,
}

/// Runs `plan`, calling `progress` with a line before each boot.
///
/// # Errors
///
/// The first boot's [`Failure`].
pub fn measure(plan: &Plan, mut progress: impl FnMut(&str)) -> Result<Results, Failure> {
    let started = Instant::now();
    let mut results = Results {
        tsc_hz: host_tsc_hz(),
        load: (load_average(), String::new()),
        boots: plan.boots,
        ..Results::default()
    };
    if plan.icount {
        progress(&format!("icount, 1 CPU, {} ops per case", plan.icount_ops));
        let params = params(Mode::Icount, plan.icount_ops, 1, &plan.kernel_args);
        results.icount = boot(Mode::Icount, 1, &params, plan.timeout)?;
    }
    let params = params(Mode::Tcg, plan.tcg_ops, plan.reps, &plan.kernel_args);
    for round in 0..plan.boots {
        for &cpus in &plan.cpus {
            progress(&format!(
                "TCG, {cpus} CPUs, {} ops per CPU and case, boot {} of {}",
                plan.tcg_ops,
                round + 1,
                plan.boots
            ));
            results
                .tcg
                .extend(boot(Mode::Tcg, cpus, &params, plan.timeout)?);
        }
    }
    results.load.1 = load_average();
    results.wall = started.elapsed();
    Ok(results)
}

/// The host's TSC frequency, measured against the monotonic clock over 200 ms.
pub fn host_tsc_hz() -> f64 {
    let tsc = || {
        // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let (t1, c1) = (Instant::now(), tsc());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// The workspace's git commit (with a note when `src/` or `kernel-demo/` have
/// uncommitted changes), or "unknown" outside a git checkout.
fn source_revision() -> String {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--", "src", "kernel-demo"])
                .is_some_and(|s| !s.is_empty());
            let note = if dirty {
                " with uncommitted changes"
            } else {
                ""
            };
            format!("commit {commit}{note}")
        }
        None => "unknown commit".into(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The median of `values` (mean of the middle two for an even count); `None` if empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Samples of `workload` x `alloc` (and `cpus`, when given).
fn select<'a>(
    samples: &'a [Sample],
    workload: &'a str,
    alloc: &'a str,
    cpus: Option<u32>,
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| s.workload == workload && s.alloc == alloc)
        .filter(move |s| cpus.is_none_or(|c| s.cpus == c))
}

/// Median throughput (operations per million ticks) of `workload` x `alloc` on `cpus`.
fn median_throughput(samples: &[Sample], workload: &str, alloc: &str, cpus: u32) -> Option<f64> {
    let mut values: Vec<f64> = select(samples, workload, alloc, Some(cpus))
        .map(Sample::ops_per_mtick)
        .collect();
    median(&mut values)
}

/// Best throughput (operations per million ticks) of `workload` x `alloc` on `cpus`:
/// the sample least slowed by whatever else the host ran.
fn best_throughput(samples: &[Sample], workload: &str, alloc: &str, cpus: u32) -> Option<f64> {
    select(samples, workload, alloc, Some(cpus))
        .map(Sample::ops_per_mtick)
        .max_by(f64::total_cmp)
}

/// The markdown report of `results`.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# In-kernel benchmark (QEMU)\n");
    let _ = writeln!(
        md,
        "Kernel `bench` (kernel-demo/kernel/src/bench), booted by `spanheap-runner kernel-bench`. \
         Every allocator gets its own 128 MiB region; talc and linked_list_allocator (lla) sit \
         behind spin locks, spanheap is a `SpanHeap<X86_64Gs>` of its own (not the kernel's global \
         heap), interrupts enabled. `floor` is no allocator but per-CPU free lists of \
         power-of-two cells: the harness's own cost (random draws, content stamps and checks, \
         the loop). One operation = one allocation + one free. Workloads: `pairs` 10 000 live \
         objects per CPU, 16 B..4 KiB (octaves equally likely), random slot replaced; \
         `larson` 1 000 slots per CPU, 8..1000 B uniform; `xfree` 1 000 live per CPU, \
         16 B..1 KiB, every 4th displaced object goes into a batch of 32 handed to the next \
         CPU, which frees it.\n"
    );
    let _ = writeln!(
        md,
        "Source: {}. Host: {} CPUs, TSC {:.2} GHz; load average before {}, after {}; \
         {:.0} s of boots.\n",
        source_revision(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        results.tsc_hz / 1e9,
        results.load.0,
        results.load.1,
        results.wall.as_secs_f64()
    );
    let features = env!("KERNEL_FEATURES");
    if !features.is_empty() {
        let _ = writeln!(
            md,
            "Kernels built with the kernel crate's features: `{features}`.\n"
        );
    }
    if !results.icount.is_empty() {
        write_icount(&mut md, &results.icount);
    }
    if !results.tcg.is_empty() {
        write_tcg(&mut md, results);
    }
    md
}

fn write_icount(md: &mut String, samples: &[Sample]) {
    let _ = writeln!(
        md,
        "## Guest instructions per operation (`-icount shift=0`, 1 CPU)\n\n\
         Exact: the TSC counts guest instructions. `- floor` subtracts the harness.\n"
    );
    let present: Vec<&str> = ALLOCS
        .into_iter()
        .filter(|a| samples.iter().any(|s| s.alloc == *a))
        .collect();
    let has_floor = present.contains(&"floor");
    let net: Vec<&str> = present
        .iter()
        .copied()
        .filter(|a| has_floor && *a != "floor")
        .collect();
    let mut header = "| workload |".to_string();
    let mut rule = "|---|".to_string();
    for alloc in &present {
        let _ = write!(header, " {alloc} |");
        rule.push_str("---:|");
    }
    for alloc in &net {
        let _ = write!(header, " {alloc} - floor |");
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for workload in WORKLOADS {
        let per_op = |alloc: &str| {
            let mut v: Vec<f64> = select(samples, workload, alloc, None)
                .map(Sample::ticks_per_op)
                .collect();
            median(&mut v)
        };
        let floor = per_op("floor");
        let mut row = format!("| {workload} |");
        for alloc in &present {
            let _ = write!(row, " {} |", fmt_opt(per_op(alloc), 1));
        }
        for alloc in &net {
            let value = per_op(alloc).zip(floor).map(|(c, f)| c - f);
            let _ = write!(row, " {} |", fmt_opt(value, 1));
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);
}

fn write_tcg(md: &mut String, results: &Results) {
    let samples = &results.tcg;
    let mut counts: Vec<u32> = samples.iter().map(|s| s.cpus).collect();
    counts.sort_unstable();
    counts.dedup();
    let base = counts.first().copied().unwrap_or(1);
    let host_cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let most = counts.last().copied().unwrap_or(1);
    let oversubscribed = if most as usize > host_cores {
        format!(" {most} CPUs on {host_cores} host cores are oversubscribed.")
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "## Aggregate throughput, multi-threaded TCG\n\n\
         M operations per second of all CPUs together (every CPU runs the same operation \
         count from a common start; elapsed = first start to last end), median of {} \
         boot(s) per CPU count, boots alternating between the counts. `N / {base}` is the \
         ratio of the medians to {base} CPU; `best N / {base}`, of the best samples (the \
         boots least slowed by other work on the host). The guest TSC is the host TSC \
         under TCG.{oversubscribed}\n",
        results.boots,
    );
    let mut header = "| workload | allocator |".to_string();
    let mut rule = "|---|---|".to_string();
    for &c in &counts {
        let _ = write!(header, " {c} CPU{} |", if c == 1 { "" } else { "s" });
        rule.push_str("---:|");
        if c != base {
            let _ = write!(header, " {c} / {base} | best {c} / {base} |");
            rule.push_str("---:|---:|");
        }
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let mops = |t: f64| t * results.tsc_hz / 1e12;
    for workload in WORKLOADS {
        for alloc in ALLOCS {
            let base_t = median_throughput(samples, workload, alloc, base);
            if base_t.is_none() {
                continue;
            }
            let mut row = format!("| {workload} | {alloc} |");
            for &c in &counts {
                let t = median_throughput(samples, workload, alloc, c);
                let _ = write!(row, " {} |", fmt_opt(t.map(mops), 3));
                if c != base {
                    let ratio = t.zip(base_t).map(|(t, b)| t / b);
                    let best = best_throughput(samples, workload, alloc, c)
                        .zip(best_throughput(samples, workload, alloc, base))
                        .map(|(t, b)| t / b);
                    let _ = write!(row, " {} | {} |", fmt_ratio(ratio), fmt_ratio(best));
                }
            }
            let _ = writeln!(md, "{row}");
        }
    }
    let _ = writeln!(md);
    write_cpu_time(md, results, &counts, base);
    write_spread(md, results, &counts);
}

/// On-CPU time per operation of the vCPU threads, and the scaling it implies for a
/// host with a free core per vCPU.
fn write_cpu_time(md: &mut String, results: &Results, counts: &[u32], base: u32) {
    let samples = &results.tcg;
    if samples.iter().all(|s| s.vcpu_ns.is_none()) {
        return;
    }
    let _ = writeln!(
        md,
        "### On-CPU time of the vCPU threads\n\n\
         ns of host CPU time (all vCPU threads, from `/proc/PID/task/*/schedstat`, between \
         the case's `bench: measure` and `bench: measured` lines) per operation, median over \
         the boots, and the scaling it implies when every vCPU has a host core of its own: \
         `N x t({base}) / t(N)`. Time a vCPU spends spinning (a lock, a full hand-off ring, \
         the end barrier) counts; time it waits for a host core does not, so this column \
         is much less sensitive to the host's other work than the wall-clock one.\n"
    );
    let mut header = "| workload | allocator |".to_string();
    let mut rule = "|---|---|".to_string();
    for &c in counts {
        let _ = write!(header, " ns/op {c} CPU{} |", if c == 1 { "" } else { "s" });
        rule.push_str("---:|");
        if c != base {
            let _ = write!(header, " implied {c} / {base} |");
            rule.push_str("---:|");
        }
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let per_op = |workload: &str, alloc: &str, cpus: u32| {
        let mut v: Vec<f64> = select(samples, workload, alloc, Some(cpus))
            .filter_map(|s| Some(s.vcpu_ns? as f64 / s.ops.max(1) as f64))
            .collect();
        median(&mut v)
    };
    for workload in WORKLOADS {
        for alloc in ALLOCS {
            let Some(t1) = per_op(workload, alloc, base) else {
                continue;
            };
            let mut row = format!("| {workload} | {alloc} |");
            for &c in counts {
                let t = per_op(workload, alloc, c);
                let _ = write!(row, " {} |", fmt_opt(t, 0));
                if c != base {
                    let implied = t.map(|t| f64::from(c) * t1 / t / f64::from(base));
                    let _ = write!(row, " {} |", fmt_ratio(implied));
                }
            }
            let _ = writeln!(md, "{row}");
        }
    }
    let _ = writeln!(md);
}

/// The spread of the samples behind each median, and each case's CPU imbalance.
fn write_spread(md: &mut String, results: &Results, counts: &[u32]) {
    let _ = writeln!(
        md,
        "Spread: min..max of the throughput samples (M ops/s) and the slowest CPU's time \
         over the fastest's (median), per CPU count.\n"
    );
    let _ = writeln!(
        md,
        "| workload | allocator | CPUs | samples | min..max | slowest / fastest CPU |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|---:|");
    let mops = |t: f64| t * results.tsc_hz / 1e12;
    for workload in WORKLOADS {
        for alloc in ALLOCS {
            for &c in counts {
                let picked: Vec<&Sample> = select(&results.tcg, workload, alloc, Some(c)).collect();
                if picked.is_empty() {
                    continue;
                }
                let t: Vec<f64> = picked.iter().map(|s| mops(s.ops_per_mtick())).collect();
                let (lo, hi) = t
                    .iter()
                    .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let mut imbalance: Vec<f64> = picked
                    .iter()
                    .map(|s| {
                        let max = s.cpu_tsc.iter().copied().max().unwrap_or(0) as f64;
                        let min = s.cpu_tsc.iter().copied().min().unwrap_or(0).max(1) as f64;
                        max / min
                    })
                    .collect();
                let _ = writeln!(
                    md,
                    "| {workload} | {alloc} | {c} | {} | {lo:.3}..{hi:.3} | {} |",
                    picked.len(),
                    fmt_opt(median(&mut imbalance), 2)
                );
            }
        }
    }
    let _ = writeln!(md);
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_result_line() {
        let line = "bench: workload=xfree alloc=talc cpus=2 rep=1 ops=400 tsc=8000 \
                    allocs=2400 frees=2400 cpu_tsc=7000,8000";
        let s = parse_line(line).expect("a sample");
        assert_eq!((s.workload.as_str(), s.alloc.as_str()), ("xfree", "talc"));
        assert_eq!((s.cpus, s.rep, s.ops, s.tsc), (2, 1, 400, 8000));
        assert_eq!((s.allocs, s.frees), (2400, 2400));
        assert_eq!(s.cpu_tsc, vec![7000, 8000]);
        assert_eq!(s.ops_per_mtick(), 50_000.0);
        assert!(parse_line("bench: spanheap-cache workload=pairs cpus=1").is_none());
        assert!(parse_line("bench: start cpus=1").is_none());
    }

    #[test]
    fn stamps_give_each_case_its_cpu_time() {
        let line = "bench: workload=larson alloc=floor cpus=1 rep=0 ops=10 tsc=5 \
                    allocs=20 frees=20 cpu_tsc=5";
        let stamps: Vec<(String, u64)> = [
            ("bench: start cpus=1", 5),
            ("bench: measure", 100),
            ("bench: measured", 350),
            (line, 400),
            ("bench: measure", 500),
            ("bench: measured", 900),
        ]
        .into_iter()
        .map(|(l, ns)| (l.to_string(), ns))
        .chain([(line.to_string(), 1000)])
        .collect();
        let samples = parse_stamped(&stamps);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].vcpu_ns, Some(250));
        assert_eq!(samples[1].vcpu_ns, Some(400));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn params_escape_commas_for_qemu() {
        let o = options(Mode::Tcg, 1, "allocs=talc,lla", Duration::from_secs(1));
        assert_eq!(
            o.extra_args[1],
            "name=opt/spanheap/bench,string=allocs=talc,,lla"
        );
        assert_eq!(o.extra_args[2..], ["-accel", "tcg,thread=multi"]);
        assert!(options(Mode::Icount, 1, "", Duration::from_secs(1)).icount);
    }
}
