//! The in-kernel benchmark (issue 5, item 2): the core workloads ([`workloads`]) run
//! on every CPU QEMU provides, against spanheap, talc and linked_list_allocator, each
//! over a region of its own of the same size ([`subjects`]), plus the harness floor.
//!
//! Set-up: the bootstrap CPU carves one aligned region of
//! [`REGION_SIZE`] per subject ([`REGIONS`]) from the highest
//! usable memory (so the machine needs 1 GiB), gives the rest of the boot memory to the kernel's
//! global heap, writes every page of the regions once (no first-touch cost is
//! measured), hands the regions to the subjects and starts the APs. Every CPU loads
//! the IDT, lets TCG grow its software TLB ([`grow_soft_tlb`]: without it the APs
//! measured with TCG's initial 256 entries) and, unless `irq=off`, runs with
//! interrupts enabled as a kernel does (no interrupt source is on), so spanheap pays
//! its real critical section.
//!
//! A case is one workload against one subject on all CPUs: the CPUs meet at a
//! barrier, each sets up its share, meets the others again, runs the same number of
//! operations with its own TSC start and end, then frees what it holds (and spanheap's
//! CPUs drain their caches). The bootstrap CPU then checks that every allocation was
//! freed and that the subject has its region back (spanheap: invariants and zero bytes
//! in use after trim; talc: one allocation of nearly the whole region; lla: zero bytes
//! used), and prints one line per case:
//!
//! ```text
//! bench: workload=pairs alloc=spanheap cpus=2 rep=0 ops=400000 tsc=123456789 allocs=420000 frees=420000 cpu_tsc=123000000,123456000
//! ```
//!
//! `tsc` runs from the first CPU's start to the last CPU's end, so the aggregate
//! throughput is `ops / tsc`. Under `-icount shift=0` the TSC counts guest
//! instructions: on one CPU `tsc / ops` is instructions per operation. Without icount
//! the guest TSC under TCG is the host's TSC. The bootstrap CPU also prints
//! `bench: measure` when its set-up is done and `bench: measured` when every CPU has
//! stopped its clock, so that the host can sample its vCPU threads' CPU time there.
//!
//! Parameters come from the host through fw_cfg file `opt/spanheap/bench`, words of
//! `key=value` (the runner's `kernel-bench` command sets them):
//!
//! - `ops=N` measured operations per CPU per case (default 20000); linked_list_allocator
//!   runs `N / lla_div` (default 20; in pairs 5 times fewer again): it walks a list of
//!   thousands of holes per call;
//! - `reps=N` rounds of every case (default 1), interleaving the subjects;
//! - `workloads=pairs,larson,xfree` (default all) and `allocs=spanheap,talc,lla,floor`
//!   (the default; the diagnostic subjects `spanheap-tscaux` and `spanheap-percpu` run
//!   only when named, see [`subjects`]);
//! - `irq=off` runs with interrupts disabled (for comparisons).
//!
//! The kernel ends with `bench: done cases=N` and the success exit code; a failed check
//! panics (failure exit code).
//!
//! # Invariants
//!
//! - the case descriptor (`CASE`, `CASE_OPS`) is written by the bootstrap CPU only
//!   before the barrier that starts a case and read by the others after it;
//! - every CPU takes part in every case (the barriers count all CPUs);
//! - `REGION_START` is written once by the bootstrap CPU before the APs start.

pub mod subjects;
pub mod sync;
pub mod workloads;

use crate::heap::{self, HEAP};
use crate::{fw_cfg, interrupts, print, println, smp};
use bootloader_api::BootInfo;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spanheap::platform::Platform;
use spanheap::SpanHeap;
use spanheap::{bootinfo, MemoryRange};
use spin::Once;
use subjects::{
    Subject, FLOOR, LLA, MAX_BENCH_CPUS, PERCPU_HEAPS, REGIONS, REGION_ALIGN, REGION_SIZE,
    SPANHEAP, SPANHEAP_PERCPU, SPANHEAP_TSCAUX, TALC,
};
use sync::{Barrier, CpuRecord};
use workloads::{Cx, Tally};
use x86_64::registers::control::Cr3;

/// The fw_cfg file holding the parameters.
const PARAMS_FILE: &str = "opt/spanheap/bench";

/// A workload of [`workloads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// [`workloads::pairs`].
    Pairs,
    /// [`workloads::larson`].
    Larson,
    /// [`workloads::xfree`].
    Xfree,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::Pairs, Workload::Larson, Workload::Xfree];

    /// How many times fewer operations linked_list_allocator runs here than the
    /// `lla_div` parameter says: pairs' 10 000 live objects make its hole list about
    /// three times longer than the other workloads' (8 600 instructions an operation
    /// against 2 000 to 3 000).
    fn lla_extra_div(self) -> u64 {
        match self {
            Workload::Pairs => 5,
            Workload::Larson | Workload::Xfree => 1,
        }
    }

    /// The name in result lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pairs => "pairs",
            Workload::Larson => "larson",
            Workload::Xfree => "xfree",
        }
    }
}

/// A subject of [`subjects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    /// [`SPANHEAP`].
    Spanheap,
    /// [`TALC`].
    Talc,
    /// [`LLA`].
    Lla,
    /// [`FLOOR`].
    Floor,
    /// [`SPANHEAP_TSCAUX`] (run only when asked for).
    SpanheapTscAux,
    /// [`SPANHEAP_PERCPU`] (run only when asked for).
    SpanheapPercpu,
}

impl Alloc {
    /// Every subject, in report order.
    pub const ALL: [Alloc; 6] = [
        Alloc::Spanheap,
        Alloc::Talc,
        Alloc::Lla,
        Alloc::Floor,
        Alloc::SpanheapTscAux,
        Alloc::SpanheapPercpu,
    ];

    /// The name in result lines.
    pub fn name(self) -> &'static str {
        match self {
            Alloc::Spanheap => "spanheap",
            Alloc::Talc => "talc",
            Alloc::Lla => "lla",
            Alloc::Floor => "floor",
            Alloc::SpanheapTscAux => "spanheap-tscaux",
            Alloc::SpanheapPercpu => "spanheap-percpu",
        }
    }
}

/// The run's parameters (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Measured operations per CPU per case.
    pub ops: u64,
    /// linked_list_allocator runs `ops / lla_div`.
    pub lla_div: u64,
    /// Rounds of every case.
    pub reps: usize,
    /// Bit `i`: run `Workload::ALL[i]`.
    pub workloads: u32,
    /// Bit `i`: run `Alloc::ALL[i]`.
    pub allocs: u32,
    /// Run with interrupts enabled.
    pub irq: bool,
}

impl Params {
    const DEFAULT: Params = Params {
        ops: 20_000,
        lla_div: 20,
        reps: 1,
        workloads: 0b111,
        // Not the diagnostic subjects.
        allocs: 0b1111,
        irq: true,
    };

    /// Parses `key=value` words; panics on an unknown key or a bad value.
    pub fn parse(text: &str) -> Params {
        let mut params = Params::DEFAULT;
        for word in text.split_ascii_whitespace() {
            let (key, value) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("bench parameter {word:?} is not key=value"));
            let number = || -> u64 {
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bench parameter {key}: {value:?} is not a number"))
            };
            match key {
                "ops" => params.ops = number().max(1),
                "lla_div" => params.lla_div = number().max(1),
                "reps" => params.reps = number().max(1) as usize,
                "irq" => params.irq = value != "off",
                "workloads" => {
                    params.workloads = mask(value, &Workload::ALL.map(Workload::name), key)
                }
                "allocs" => params.allocs = mask(value, &Alloc::ALL.map(Alloc::name), key),
                // The runner names the mode for the reader of the output.
                "mode" => {}
                _ => panic!("unknown bench parameter {key}"),
            }
        }
        params
    }

    /// The parameters the host passed, or the defaults.
    fn read() -> Params {
        let mut buf = [0u8; 512];
        match fw_cfg::read_file(PARAMS_FILE, &mut buf) {
            Some(len) => {
                Params::parse(core::str::from_utf8(&buf[..len]).expect("UTF-8 parameters"))
            }
            None => Params::DEFAULT,
        }
    }

    fn runs_workload(&self, w: Workload) -> bool {
        let i = Workload::ALL.iter().position(|&x| x == w).expect("listed");
        self.workloads & (1 << i) != 0
    }

    fn runs_alloc(&self, a: Alloc) -> bool {
        let i = Alloc::ALL.iter().position(|&x| x == a).expect("listed");
        self.allocs & (1 << i) != 0
    }

    /// Measured operations per CPU of `alloc` in `workload`.
    fn ops_for(&self, workload: Workload, alloc: Alloc) -> u64 {
        match alloc {
            Alloc::Lla => (self.ops / self.lla_div / workload.lla_extra_div()).max(1),
            _ => self.ops,
        }
    }
}

/// The bit mask of the comma-separated `names` in `list`.
fn mask(list: &str, names: &[&str], key: &str) -> u32 {
    list.split(',').fold(0, |mask, name| {
        let i = names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("bench parameter {key}: unknown name {name:?}"));
        mask | 1 << i
    })
}

static PARAMS: Once<Params> = Once::new();
/// CPUs taking part (the MADT's count).
static CPUS: AtomicUsize = AtomicUsize::new(1);
/// The current case: `workload index | alloc index << 8`, or [`QUIT`].
static CASE: AtomicUsize = AtomicUsize::new(0);
/// Measured operations per CPU of the current case.
static CASE_OPS: AtomicU64 = AtomicU64::new(0);
/// [`CASE`] value telling the APs to stop.
const QUIT: usize = usize::MAX;
static BARRIER: Barrier = Barrier::new();
static RECORDS: [CpuRecord; MAX_BENCH_CPUS] = [const { CpuRecord::new() }; MAX_BENCH_CPUS];
/// Start of the first benchmark region, for [`grow_soft_tlb`]; set before the APs
/// start.
static REGION_START: AtomicUsize = AtomicUsize::new(0);

/// Runs the whole benchmark on the bootstrap CPU and leaves QEMU.
pub fn main(boot_info: &'static BootInfo) -> ! {
    let regions = init_memory(boot_info);
    interrupts::init(boot_info);
    let params = *PARAMS.call_once(Params::read);
    let cpus = smp::count_cpus(boot_info).unwrap_or(1).max(1);
    assert!(
        cpus <= MAX_BENCH_CPUS,
        "the benchmark runs on at most {MAX_BENCH_CPUS} CPUs"
    );
    CPUS.store(cpus, Ordering::Relaxed);
    workloads::init_rings();
    REGION_START.store(regions[0].start, Ordering::Relaxed);
    for region in regions {
        touch(region);
    }
    // SAFETY: the regions were carved out of usable memory that the global heap did
    // not get, are mapped (physical-memory mapping), and no CPU runs a case yet.
    unsafe { subjects::init(regions, cpus) };
    println!(
        "bench: start cpus={cpus} ops={} lla_div={} reps={} irq={} region_mib={} cpu_index_by={}",
        params.ops,
        params.lla_div,
        params.reps,
        if params.irq { "on" } else { "off" },
        REGION_SIZE >> 20,
        cpu_index_instruction()
    );
    let aps = smp::start_aps(boot_info, ap_work);
    assert_eq!(aps + 1, cpus, "every CPU of the MADT started");
    enter_cases(0, &params);
    let mut cases = 0;
    for rep in 0..params.reps {
        for workload in Workload::ALL {
            for alloc in Alloc::ALL {
                if params.runs_workload(workload) && params.runs_alloc(alloc) {
                    run_case_on_bsp(rep, workload, alloc, &params, cpus);
                    cases += 1;
                }
            }
        }
    }
    CASE.store(QUIT, Ordering::Relaxed);
    BARRIER.wait(cpus);
    x86_64::instructions::interrupts::disable();
    smp::wait_done(aps);
    println!("bench: done cases={cases}");
    crate::exit_qemu(crate::QemuExitCode::Success)
}

/// How the `X86_64` platform (`spanheap-tscaux`) reads the CPU index here: RDPID when
/// CPUID says the CPU has it (leaf 7, ECX bit 22), else RDTSCP (which TCG runs as a
/// read of its clock).
fn cpu_index_instruction() -> &'static str {
    // Leaf 7 is read only when the maximum leaf (leaf 0's EAX) reaches it.
    let rdpid = core::arch::x86_64::__cpuid(0).eax >= 7
        && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 22) != 0;
    if rdpid {
        "rdpid"
    } else {
        "rdtscp"
    }
}

/// Gives the boot memory to the global heap except the aligned benchmark regions
/// carved from the top of the usable range that ends highest; returns them.
fn init_memory(boot_info: &BootInfo) -> [MemoryRange; REGIONS] {
    heap::register_cpu(0);
    let offset =
        bootinfo::physical_memory_offset(boot_info).expect("the boot config maps physical memory");
    HEAP.set_phys_offset(offset);
    let need = REGIONS * REGION_SIZE;
    let base = bootinfo::usable_ranges(&boot_info.memory_regions, offset)
        .filter_map(|r| {
            let top = r.end & !(REGION_ALIGN - 1);
            (top >= need && top - need >= r.start).then_some(top - need)
        })
        .max()
        .unwrap_or_else(|| {
            panic!(
                "bench: no usable range holds 4 x {} MiB (boot with 1G)",
                REGION_SIZE >> 20
            )
        });
    let bench = MemoryRange::new(base, base + need);
    for r in bootinfo::usable_ranges(&boot_info.memory_regions, offset) {
        let below = MemoryRange::new(r.start, r.end.min(bench.start));
        let above = MemoryRange::new(r.start.max(bench.end), r.end);
        for piece in [below, above] {
            if piece.pages().is_some() {
                // SAFETY: usable memory outside the benchmark regions, mapped at the
                // physical-memory offset, used by nothing else. A refusal (a piece too
                // small for arena metadata) leaves the piece unused.
                let _ = unsafe { HEAP.add_memory(piece) };
            }
        }
    }
    core::array::from_fn(|i| MemoryRange::new(base + i * REGION_SIZE, base + (i + 1) * REGION_SIZE))
}

/// Writes every page of `region` once.
fn touch(region: MemoryRange) {
    for page in (region.start..region.end).step_by(4096) {
        // SAFETY: the region is mapped writable and nobody uses it yet.
        unsafe { (page as *mut u8).write_volatile(0) };
    }
}

/// Pages [`grow_soft_tlb`] reads between two TLB flushes (64 MiB).
const TLB_WARM_PAGES: usize = 16 * 1024;
const _: () = assert!(TLB_WARM_PAGES * 4096 <= REGION_SIZE);
/// Flushes [`grow_soft_tlb`] makes.
const TLB_WARM_ROUNDS: usize = 8;

/// Lets QEMU's TCG grow this vCPU's software TLB before any case, so that no CPU
/// measures with a TLB too small for its working set. TCG resizes a vCPU's TLB only
/// when it flushes it, doubling it when most entries were in use since the last
/// flush (`tlb_mmu_resize_locked` in accel/tcg/cputlb.c); an AP flushes almost
/// never after it starts, so it kept its initial 256 entries and took a page walk
/// on most accesses of a working set of a few hundred pages: in `larson` on a
/// shared spanheap, whose spans interleave both CPUs' objects, CPU 1 ran at half
/// CPU 0's speed. A kernel's context switches flush the TLB anyway. Reads one byte
/// of every page of the first benchmark region then reloads CR3, each round.
/// Hardware TLBs do not depend on flushes; on them this costs a few milliseconds.
fn grow_soft_tlb() {
    let region = REGION_START.load(Ordering::Relaxed);
    for _ in 0..TLB_WARM_ROUNDS {
        for page in 0..TLB_WARM_PAGES {
            // SAFETY: inside the first benchmark region (mapped, written once by
            // `touch`); a read races with no write that matters (its value is
            // dropped).
            unsafe { ((region + page * 4096) as *const u8).read_volatile() };
        }
        let (frame, flags) = Cr3::read();
        // SAFETY: the same page table: only the TLB is flushed.
        unsafe { Cr3::write(frame, flags) };
    }
}

/// Gets CPU `cpu` ready for cases: the IDT (the bootstrap CPU's is loaded by
/// `interrupts::init`) and the interrupt flag (`heap::register_cpu` gave it its
/// index for both spanheap platforms).
fn enter_cases(cpu: usize, params: &Params) {
    if cpu != 0 {
        interrupts::init_cpu();
    }
    grow_soft_tlb();
    if params.irq {
        x86_64::instructions::interrupts::enable();
    }
}

/// What every AP runs: one case after the other until told to stop.
fn ap_work(cpu: usize) {
    let params = *PARAMS.get().expect("set before the APs start");
    let cpus = CPUS.load(Ordering::Relaxed);
    enter_cases(cpu, &params);
    loop {
        BARRIER.wait(cpus);
        let case = CASE.load(Ordering::Relaxed);
        if case == QUIT {
            break;
        }
        run_case(cpu, cpus, case);
        BARRIER.wait(cpus);
    }
    x86_64::instructions::interrupts::disable();
}

fn decode(case: usize) -> (Workload, Alloc) {
    (Workload::ALL[case & 0xFF], Alloc::ALL[case >> 8])
}

/// This CPU's part of a case, between the barrier that publishes it and the one that
/// ends it.
fn run_case(cpu: usize, cpus: usize, case: usize) {
    let (workload, alloc) = decode(case);
    let record = &RECORDS[cpu];
    let cx = Cx {
        cpu,
        cpus,
        ops: CASE_OPS.load(Ordering::Relaxed),
        seed: 0x5eed_0005_0000_0000 ^ (case as u64) << 40 ^ (cpu as u64).wrapping_mul(0x9E37_79B9),
        name: alloc.name(),
        barrier: &BARRIER,
        record,
    };
    let tally = match alloc {
        Alloc::Spanheap => {
            let tally = run_workload(workload, &SPANHEAP, &cx);
            SPANHEAP.drain_cpu();
            tally
        }
        Alloc::Talc => run_workload(workload, &TALC, &cx),
        Alloc::Lla => run_workload(workload, &LLA, &cx),
        Alloc::Floor => run_workload(workload, &FLOOR, &cx),
        Alloc::SpanheapTscAux => {
            let tally = run_workload(workload, &SPANHEAP_TSCAUX, &cx);
            SPANHEAP_TSCAUX.drain_cpu();
            tally
        }
        Alloc::SpanheapPercpu => {
            assert!(
                cpus <= PERCPU_HEAPS,
                "spanheap-percpu serves {PERCPU_HEAPS} CPUs"
            );
            let tally = run_workload(workload, &SPANHEAP_PERCPU, &cx);
            for heap in &SPANHEAP_PERCPU.0 {
                heap.drain_cpu();
            }
            tally
        }
    };
    record.allocs.store(tally.allocs, Ordering::Relaxed);
    record.frees.store(tally.frees, Ordering::Relaxed);
}

fn run_workload<S: Subject>(workload: Workload, s: &S, cx: &Cx<'_>) -> Tally {
    match workload {
        Workload::Pairs => workloads::pairs(s, cx),
        Workload::Larson => workloads::larson(s, cx),
        Workload::Xfree => workloads::xfree(s, cx),
    }
}

/// Publishes a case, takes part in it, then checks and prints it.
fn run_case_on_bsp(rep: usize, workload: Workload, alloc: Alloc, params: &Params, cpus: usize) {
    let index = |w: Workload, a: Alloc| {
        Workload::ALL.iter().position(|&x| x == w).expect("listed")
            | Alloc::ALL.iter().position(|&x| x == a).expect("listed") << 8
    };
    let case = index(workload, alloc);
    let stats_of = |cpu| match alloc {
        Alloc::SpanheapTscAux => SPANHEAP_TSCAUX.cpu_stats(cpu),
        _ => SPANHEAP.cpu_stats(cpu),
    };
    let before: [_; MAX_BENCH_CPUS] = core::array::from_fn(stats_of);
    CASE_OPS.store(params.ops_for(workload, alloc), Ordering::Relaxed);
    CASE.store(case, Ordering::Relaxed);
    BARRIER.wait(cpus);
    run_case(0, cpus, case);
    BARRIER.wait(cpus);

    let records = &RECORDS[..cpus];
    let load =
        |f: fn(&CpuRecord) -> &AtomicU64| records.iter().map(move |r| f(r).load(Ordering::Relaxed));
    let start = load(|r| &r.start).min().expect("one CPU");
    let end = load(|r| &r.end).max().expect("one CPU");
    let ops: u64 = load(|r| &r.ops).sum();
    let allocs: u64 = load(|r| &r.allocs).sum();
    let frees: u64 = load(|r| &r.frees).sum();
    print!(
        "bench: workload={} alloc={} cpus={cpus} rep={rep} ops={ops} tsc={} allocs={allocs} frees={frees} cpu_tsc=",
        workload.name(),
        alloc.name(),
        end - start
    );
    for (i, r) in records.iter().enumerate() {
        let own = r.end.load(Ordering::Relaxed) - r.start.load(Ordering::Relaxed);
        print!("{}{own}", if i == 0 { "" } else { "," });
    }
    println!();
    assert_eq!(
        allocs,
        frees,
        "{}: allocations not freed in {}",
        alloc.name(),
        workload.name()
    );
    let verdict = match alloc {
        Alloc::Spanheap => {
            print_cache_traffic(&SPANHEAP, alloc, workload, cpus, &before);
            subjects::spanheap_is_empty(&SPANHEAP)
        }
        Alloc::SpanheapTscAux => {
            print_cache_traffic(&SPANHEAP_TSCAUX, alloc, workload, cpus, &before);
            subjects::spanheap_is_empty(&SPANHEAP_TSCAUX)
        }
        Alloc::SpanheapPercpu => SPANHEAP_PERCPU
            .0
            .iter()
            .try_for_each(|heap| subjects::spanheap_is_empty(heap)),
        Alloc::Talc => subjects::talc_is_empty(),
        Alloc::Lla => subjects::lla_is_empty(),
        Alloc::Floor => {
            // SAFETY: every CPU is past the case's last barrier, every cell is freed.
            unsafe { FLOOR.reset(cpus) };
            Ok(())
        }
    };
    if let Err(leak) = verdict {
        panic!("{leak} ({})", workload.name());
    }
}

/// Prints each CPU's spanheap cache refills and flushes during the case (how often it
/// went to the centrals' locks), and the allocations and frees its cache served.
fn print_cache_traffic<P: Platform>(
    heap: &SpanHeap<P>,
    alloc: Alloc,
    workload: Workload,
    cpus: usize,
    before: &[Option<spanheap::CpuStats>; MAX_BENCH_CPUS],
) {
    /// A counter of [`spanheap::CpuStats`].
    type Field = fn(&spanheap::CpuStats) -> usize;
    print!(
        "bench: spanheap-cache alloc={} workload={} cpus={cpus}",
        alloc.name(),
        workload.name()
    );
    let fields: [(&str, Field); 4] = [
        ("refills", |s| s.refills),
        ("flushes", |s| s.flushes),
        ("allocs", |s| s.allocs),
        ("frees", |s| s.frees),
    ];
    for (name, field) in fields {
        print!(" {name}=");
        for (cpu, before) in before.iter().enumerate().take(cpus) {
            let now = heap.cpu_stats(cpu).map_or(0, |s| field(&s));
            let delta = now - before.map_or(0, |s| field(&s));
            print!("{}{delta}", if cpu == 0 { "" } else { "," });
        }
    }
    println!();
}
