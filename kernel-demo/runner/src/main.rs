//! `spanheap-runner`: boots one of the demo or test kernels in QEMU.
//!
//! ```text
//! spanheap-runner [KERNEL] [--cpus N] [--memory SIZE] [--icount] [--timeout SECS]
//!                 [--list] [-- QEMU ARGS...]
//! spanheap-runner kernel-bench [--quick] [--out FILE] [--boots N] [--ops N]
//!                 [--cpus 1,2,4] [--no-icount] [--kernel-args WORDS]
//! ```
//!
//! Exits 0 when the kernel exits with the success code, 1 otherwise (the kernel's
//! last lines are printed on stderr), 2 on a usage error. `kernel-bench` boots the
//! benchmark kernel in every mode ([`spanheap_runner::bench`]), writes the markdown
//! report to FILE (default `bench-results/kernel.md` in the workspace) and prints it.

use spanheap_runner::bench::{self, Plan};
use spanheap_runner::{kernels, run, Options};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: spanheap-runner [KERNEL] [--cpus N] [--memory SIZE] [--icount] \
[--timeout SECS] [--list] [-- QEMU ARGS...]
  KERNEL         a kernel of kernel-demo/kernel/src/bin (default: demo)
  --cpus N       CPUs (-smp), default 4
  --memory SIZE  guest memory (-m), default 512M
  --icount       -icount shift=0: the TSC counts guest instructions
  --timeout SECS kill QEMU after SECS seconds, default 300
  --list         list the kernels
usage: spanheap-runner kernel-bench [--quick] [--out FILE] [--boots N] [--ops N] \
[--cpus 1,2,4] [--no-icount] [--kernel-args WORDS]
  --quick        5 000 operations per case, one boot per CPU count (under a minute)
  --out FILE     the markdown report, default bench-results/kernel.md in the workspace
  --boots N      boots per CPU count under TCG (default 5), medians over them
  --ops N        operations per CPU and case (default 200 000)
  --cpus LIST    CPU counts under TCG (default 1,2,4; the first is the ratios' base)
  --no-icount    skip the icount boot (instructions per operation)
  --kernel-args WORDS  more kernel parameters, e.g. \"allocs=spanheap,spanheap-tscaux,floor irq=off\"";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(Command::List) => {
            println!("{}", kernels().join("\n"));
            ExitCode::SUCCESS
        }
        Ok(Command::Bench { plan, out }) => kernel_bench(&plan, &out),
        Ok(Command::Run { kernel, options }) => {
            eprintln!(
                "[runner] booting `{kernel}` in QEMU: {} CPUs, {} memory{}",
                options.cpus,
                options.memory,
                if options.icount {
                    ", -icount shift=0"
                } else {
                    ""
                }
            );
            match run(&kernel, &options) {
                Ok(done) => {
                    eprintln!("[runner] `{kernel}` passed in {:.1?}", done.duration);
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    eprintln!("[runner] {failure}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

enum Command {
    List,
    Run { kernel: String, options: Options },
    Bench { plan: Plan, out: PathBuf },
}

/// Runs the benchmark plan, writes the report to `out` and prints it.
fn kernel_bench(plan: &Plan, out: &PathBuf) -> ExitCode {
    let results = match bench::measure(plan, |step| eprintln!("[kernel-bench] {step}")) {
        Ok(results) => results,
        Err(failure) => {
            eprintln!("[kernel-bench] {failure}");
            return ExitCode::FAILURE;
        }
    };
    let report = bench::markdown(&results);
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(out, &report) {
        eprintln!("[kernel-bench] cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!("{report}");
    eprintln!("[kernel-bench] wrote {}", out.display());
    ExitCode::SUCCESS
}

/// The default report: `bench-results/kernel.md` at the workspace root.
fn default_report() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench-results/kernel.md")
}

fn parse_bench(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut plan = Plan::full();
    let mut out = default_report();
    let mut ops = None;
    let mut boots = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => plan = Plan::quick(),
            "--out" => out = PathBuf::from(value("--out")?),
            "--ops" => ops = Some(value("--ops")?.parse().map_err(|e| format!("--ops: {e}"))?),
            "--boots" => {
                boots = Some(
                    value("--boots")?
                        .parse()
                        .map_err(|e| format!("--boots: {e}"))?,
                )
            }
            "--cpus" => {
                plan.cpus = value("--cpus")?
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--cpus: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-icount" => plan.icount = false,
            "--kernel-args" => plan.kernel_args = value("--kernel-args")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("kernel-bench: unexpected argument {other}")),
        }
    }
    // Explicit counts win over --quick, whatever the order.
    if let Some(ops) = ops {
        plan.icount_ops = ops;
        plan.tcg_ops = ops;
    }
    if let Some(boots) = boots {
        plan.boots = boots;
    }
    if plan.cpus.is_empty() || plan.boots == 0 {
        return Err("kernel-bench: no CPU count or no boot".into());
    }
    Ok(Command::Bench { plan, out })
}

fn parse(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut args = args.peekable();
    if args.peek().is_some_and(|a| a == "kernel-bench") {
        args.next();
        return parse_bench(args);
    }
    parse_run(args)
}

fn parse_run(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        echo: true,
        ..Options::default()
    };
    let mut kernel = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--list" => return Ok(Command::List),
            "-h" | "--help" => return Err(String::new()),
            "--cpus" => {
                options.cpus = value("--cpus")?
                    .parse()
                    .map_err(|e| format!("--cpus: {e}"))?
            }
            "--memory" => options.memory = value("--memory")?,
            "--icount" => options.icount = true,
            "--timeout" => {
                let secs: u64 = value("--timeout")?
                    .parse()
                    .map_err(|e| format!("--timeout: {e}"))?;
                options.timeout = Duration::from_secs(secs);
            }
            "--" => options.extra_args.extend(args.by_ref()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name if kernel.is_none() => kernel = Some(name.to_string()),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    let kernel = kernel.unwrap_or_else(|| "demo".into());
    Ok(Command::Run { kernel, options })
}
