//! `spanheap-runner`: boots one of the demo or test kernels in QEMU.
//!
//! ```text
//! spanheap-runner [KERNEL] [--cpus N] [--memory SIZE] [--icount] [--timeout SECS]
//!                 [--list] [-- QEMU ARGS...]
//! ```
//!
//! Exits 0 when the kernel exits with the success code, 1 otherwise (the kernel's
//! last lines are printed on stderr), 2 on a usage error.

use spanheap_runner::{kernels, run, Options};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: spanheap-runner [KERNEL] [--cpus N] [--memory SIZE] [--icount] \
[--timeout SECS] [--list] [-- QEMU ARGS...]
  KERNEL         a kernel of kernel-demo/kernel/src/bin (default: demo)
  --cpus N       CPUs (-smp), default 4
  --memory SIZE  guest memory (-m), default 512M
  --icount       -icount shift=0: the TSC counts guest instructions
  --timeout SECS kill QEMU after SECS seconds, default 300
  --list         list the kernels";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(Command::List) => {
            println!("{}", kernels().join("\n"));
            ExitCode::SUCCESS
        }
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
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
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
