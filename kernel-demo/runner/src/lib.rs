//! Host side of the QEMU pipeline: boots the disk images of the demo and test kernels
//! (built by this crate's build script) in `qemu-system-x86_64` and turns the outcome
//! into a [`Result`].
//!
//! A kernel reports through serial (COM1, `-serial stdio`) and ends through the
//! `isa-debug-exit` device: QEMU's exit status 33 means success. Any other status, a
//! timeout, or QEMU failing to start is a [`Failure`] that quotes the kernel's last
//! lines, so a failing test shows the panic message.
//!
//! # Invariants
//!
//! - Every QEMU process started by [`run`] is waited for or killed before `run`
//!   returns: no guest outlives its caller.

pub mod bench;

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// QEMU's exit status when a kernel writes `0x10` to the debug-exit port.
pub const SUCCESS_STATUS: i32 = 33;

/// The QEMU binary the runner starts.
pub const QEMU: &str = "qemu-system-x86_64";

/// How many of the kernel's last lines a [`Failure`] quotes.
const QUOTED_LINES: usize = 30;

/// How to boot a kernel.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of CPUs (`-smp`).
    pub cpus: u32,
    /// Guest memory in QEMU's syntax (`-m`), e.g. `512M`.
    pub memory: String,
    /// Run with `-icount shift=0`: the TSC counts guest instructions exactly.
    pub icount: bool,
    /// Kill QEMU and fail after this long.
    pub timeout: Duration,
    /// Print the kernel's serial output live on stdout as it arrives.
    pub echo: bool,
    /// Extra arguments appended to the QEMU command line.
    pub extra_args: Vec<String>,
    /// Record, with every line the kernel prints, the CPU time QEMU's vCPU threads
    /// have used so far ([`Run::stamps`]); names the threads (`-name ...,debug-threads=on`).
    pub vcpu_times: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cpus: 4,
            memory: "512M".into(),
            icount: false,
            timeout: Duration::from_secs(300),
            echo: false,
            extra_args: Vec::new(),
            vcpu_times: false,
        }
    }
}

/// A kernel run that ended with the success status.
#[derive(Debug, Clone)]
pub struct Run {
    /// Everything the kernel printed on serial.
    pub output: String,
    /// Wall-clock time from QEMU's start to its exit.
    pub duration: Duration,
    /// With [`Options::vcpu_times`]: each line of the serial output and the on-CPU time
    /// (ns, all vCPU threads together, from `/proc/PID/task/*/schedstat`) when it
    /// arrived. Empty otherwise.
    pub stamps: Vec<(String, u64)>,
}

/// Why a kernel run did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// No disk image of that name was built (no `kernel-demo/kernel/src/bin/<name>.rs`).
    UnknownKernel(String),
    /// QEMU could not be started (most often: not installed).
    Spawn(std::io::Error),
    /// The kernel did not exit within the timeout.
    Timeout {
        /// The timeout that ran out.
        after: Duration,
        /// Everything printed before QEMU was killed.
        output: String,
    },
    /// QEMU exited with a status other than [`SUCCESS_STATUS`]: the kernel panicked,
    /// faulted (triple fault with `--no-reboot`) or exited with the failure code.
    Exit {
        /// QEMU's exit status.
        status: ExitStatus,
        /// Everything the kernel printed.
        output: String,
    },
}

impl Failure {
    /// What the kernel printed before the failure (empty if it never started).
    pub fn output(&self) -> &str {
        match self {
            Failure::Timeout { output, .. } | Failure::Exit { output, .. } => output,
            Failure::UnknownKernel(_) | Failure::Spawn(_) => "",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::UnknownKernel(name) => {
                write!(
                    f,
                    "no kernel named `{name}`; kernels: {}",
                    kernels().join(", ")
                )
            }
            Failure::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => write!(
                f,
                "{QEMU} not found: install it with `apt-get install qemu-system-x86` \
                 (or run `./run test`, which installs it)"
            ),
            Failure::Spawn(e) => write!(f, "could not start {QEMU}: {e}"),
            Failure::Timeout { after, output } => {
                write!(
                    f,
                    "kernel timed out after {after:?}; last lines:\n{}",
                    tail(output)
                )
            }
            Failure::Exit { status, output } => {
                write!(
                    f,
                    "kernel failed (QEMU {status}); last lines:\n{}",
                    tail(output)
                )
            }
        }
    }
}

impl std::error::Error for Failure {}

/// The last [`QUOTED_LINES`] lines of `output`, each indented.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(QUOTED_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("  | {line}\n"))
        .collect()
}

/// The directory holding `<kernel>.img` for every kernel binary.
pub fn image_dir() -> PathBuf {
    PathBuf::from(env!("KERNEL_IMAGE_DIR"))
}

/// The names of all kernels that have a disk image.
pub fn kernels() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(image_dir())
        .map(|dir| {
            dir.filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".img").map(String::from)
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The QEMU command line for `image` under `options`.
fn qemu_command(image: &std::path::Path, options: &Options) -> Command {
    let mut cmd = Command::new(QEMU);
    // `snapshot=on`: writes go to a temporary overlay, so the image takes no write
    // lock and several QEMUs may boot the same kernel at once (parallel tests).
    cmd.arg("-drive")
        .arg(format!("format=raw,snapshot=on,file={}", image.display()))
        .args(["-smp", &options.cpus.to_string(), "-m", &options.memory])
        .args(["-serial", "stdio", "-display", "none", "--no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-cpu", "max"]);
    if options.vcpu_times {
        cmd.args(["-name", "spanheap,debug-threads=on"]);
    }
    if options.icount {
        cmd.args(["-icount", "shift=0"]);
    } else if options.cpus > 1 {
        cmd.args(["-accel", "tcg,thread=multi"]);
    }
    cmd.args(&options.extra_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Boots kernel `name` and waits for it to exit.
///
/// # Errors
///
/// A [`Failure`] when there is no such kernel, QEMU cannot start, the kernel runs past
/// `options.timeout`, or QEMU exits with any status other than [`SUCCESS_STATUS`].
pub fn run(name: &str, options: &Options) -> Result<Run, Failure> {
    let image = image_dir().join(format!("{name}.img"));
    if !image.exists() {
        return Err(Failure::UnknownKernel(name.into()));
    }
    let start = Instant::now();
    let mut child = qemu_command(&image, options)
        .spawn()
        .map_err(Failure::Spawn)?;
    let lines = stream_lines(&mut child, options.echo, options.vcpu_times);
    let status = wait_with_timeout(&mut child, options.timeout);
    // The reader threads end when QEMU's pipes close, which has happened now.
    let stamps = lines.stamps.clone();
    let output: String = lines.into_iter().map(|line| line + "\n").collect();
    let stamps = stamps.lock().map(|s| s.clone()).unwrap_or_default();
    let duration = start.elapsed();
    match status {
        None => Err(Failure::Timeout {
            after: options.timeout,
            output,
        }),
        Some(status) if status.code() == Some(SUCCESS_STATUS) => Ok(Run {
            output,
            duration,
            stamps,
        }),
        Some(status) => Err(Failure::Exit { status, output }),
    }
}

/// Boots kernel `name` and returns its serial output; panics with the failure (and
/// the kernel's last lines) unless the kernel reports success. For tests.
pub fn must_pass(name: &str, options: &Options) -> String {
    match run(name, options) {
        Ok(done) => done.output,
        Err(failure) => panic!("kernel `{name}` failed: {failure}"),
    }
}

/// The on-CPU time (ns) of process `pid`'s vCPU threads (named `CPU n/TCG` or
/// `CPU n/KVM` with `debug-threads=on`), summed.
fn vcpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !comm.starts_with("CPU ") {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Collects the child's stdout (the serial console) and stderr line by line, echoing
/// stdout live when asked, and stamping each stdout line with the vCPU threads' CPU
/// time when asked. Returns a handle that yields all lines once both close.
fn stream_lines(child: &mut Child, echo: bool, stamp: bool) -> Lines {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_tx = tx.clone();
    let pid = child.id();
    let stamps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out_stamps = stamps.clone();
    let readers = vec![
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if stamp {
                    if let Ok(mut stamps) = out_stamps.lock() {
                        stamps.push((line.clone(), vcpu_ns(pid)));
                    }
                }
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                let _ = out_tx.send(line);
            }
        }),
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("qemu: {line}");
                }
                let _ = tx.send(format!("qemu: {line}"));
            }
        }),
    ];
    Lines {
        rx,
        readers,
        stamps,
    }
}

/// The lines read from a QEMU process, available once its output has closed.
struct Lines {
    rx: mpsc::Receiver<String>,
    readers: Vec<thread::JoinHandle<()>>,
    /// Stdout lines with the vCPU threads' CPU time at their arrival (when asked).
    stamps: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl IntoIterator for Lines {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        for reader in self.readers {
            let _ = reader.join();
        }
        self.rx.try_iter().collect::<Vec<_>>().into_iter()
    }
}

/// Waits for `child`, killing it after `timeout`. `None` means it was killed.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
