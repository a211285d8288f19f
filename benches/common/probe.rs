//! Latency probes: every 64th allocator call of a measured loop is timed on its own
//! with the time-stamp counter, the rest run untimed, so the probe costs little and
//! the loop's throughput stays comparable.
//!
//! A sample is `rdtsc; call; rdtsc` minus the median cost of an empty `rdtsc; rdtsc`,
//! converted to nanoseconds with a TSC rate calibrated once against `Instant`. At
//! these lengths (tens of ns) a single sample has a resolution of a few ns; the
//! percentiles over thousands of samples are what the tables quote.
//!
//! A [`Probe`] also hears of the workload's own touches of its objects
//! ([`Probe::touch`], a no-op but for [`LineWatch`], which counts the cache lines the
//! workers take from each other instead of timing anything). Invariant of
//! [`LineOwners`]: an entry holds the mark (worker index + 1) of the last worker
//! that touched a line mapping to it, or 0 before any touch; a table serves one run.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Every `1 << SHIFT`-th call is sampled.
const SHIFT: u32 = 6;
/// Samples kept per kind of call (later ones are dropped).
const CAPACITY: usize = 1 << 16;

#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// TSC ticks per nanosecond and the cost of an empty probe, in ticks.
struct Calibration {
    per_ns: f64,
    empty: u64,
}

fn calibration() -> &'static Calibration {
    static CAL: OnceLock<Calibration> = OnceLock::new();
    CAL.get_or_init(|| {
        let (t0, i0) = (ticks(), Instant::now());
        while i0.elapsed() < Duration::from_millis(20) {}
        let per_ns = (ticks() - t0) as f64 / i0.elapsed().as_nanos() as f64;
        let mut empty: Vec<u64> = (0..1001)
            .map(|_| {
                let a = ticks();
                let b = ticks();
                b - a
            })
            .collect();
        empty.sort_unstable();
        Calibration {
            per_ns: per_ns.max(1e-3),
            empty: empty[empty.len() / 2],
        }
    })
}

/// The cost of an empty probe in nanoseconds: latencies below it read as 0.
pub(crate) fn resolution_ns() -> f64 {
    let cal = calibration();
    cal.empty as f64 / cal.per_ns
}

/// Which call a sample belongs to.
#[derive(Clone, Copy)]
pub(crate) enum Call {
    Alloc,
    Free,
}

/// Times some calls of a loop. `step` is the loop's step counter.
pub(crate) trait Probe {
    fn time<R>(&mut self, call: Call, step: u64, f: impl FnOnce() -> R) -> R;

    /// The workload wrote or read the byte at `addr` (of an object it holds).
    #[inline(always)]
    fn touch(&mut self, _addr: usize) {}
}

/// No timing at all (the callgrind runs).
pub(crate) struct NoProbe;

impl Probe for NoProbe {
    #[inline(always)]
    fn time<R>(&mut self, _call: Call, _step: u64, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Samples every 64th alloc and every 64th free.
pub(crate) struct Sampler {
    alloc: Vec<u32>,
    free: Vec<u32>,
}

/// Percentiles of one run, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Latency {
    pub(crate) alloc_p50: f64,
    pub(crate) alloc_p99: f64,
    pub(crate) free_p50: f64,
    pub(crate) free_p99: f64,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        calibration();
        Sampler {
            alloc: Vec::with_capacity(CAPACITY),
            free: Vec::with_capacity(CAPACITY),
        }
    }

    #[cold]
    #[inline(never)]
    fn sample<R>(&mut self, call: Call, f: impl FnOnce() -> R) -> R {
        let t0 = ticks();
        let r = f();
        let dt = ticks() - t0;
        let v = match call {
            Call::Alloc => &mut self.alloc,
            Call::Free => &mut self.free,
        };
        if v.len() < v.capacity() {
            v.push(dt.min(u32::MAX as u64) as u32);
        }
        r
    }

    /// Adds another worker's samples (as far as there is room).
    pub(crate) fn absorb(&mut self, other: Sampler) {
        for (mine, theirs) in [(&mut self.alloc, other.alloc), (&mut self.free, other.free)] {
            let room = mine.capacity() - mine.len();
            mine.extend(theirs.into_iter().take(room));
        }
    }

    /// p50 and p99 of the samples so far (`None` when there are none).
    pub(crate) fn latency(&self) -> Option<Latency> {
        let cal = calibration();
        let pct = |v: &[u32]| -> Option<(f64, f64)> {
            if v.is_empty() {
                return None;
            }
            let mut v = v.to_vec();
            v.sort_unstable();
            let at = |q: f64| {
                let t = v[((v.len() - 1) as f64 * q) as usize] as u64;
                t.saturating_sub(cal.empty) as f64 / cal.per_ns
            };
            Some((at(0.50), at(0.99)))
        };
        let (alloc_p50, alloc_p99) = pct(&self.alloc)?;
        let (free_p50, free_p99) = pct(&self.free).unwrap_or((f64::NAN, f64::NAN));
        Some(Latency {
            alloc_p50,
            alloc_p99,
            free_p50,
            free_p99,
        })
    }
}

impl Probe for Sampler {
    #[inline(always)]
    fn time<R>(&mut self, call: Call, step: u64, f: impl FnOnce() -> R) -> R {
        if step & ((1 << SHIFT) - 1) == 0 {
            self.sample(call, f)
        } else {
            f()
        }
    }
}

/// Who touched each cache line last, for [`LineWatch`]: one byte per line, the
/// line's address modulo [`LineOwners::SPAN`] (far more than a run's working set, so
/// two live lines rarely share an entry).
pub(crate) struct LineOwners(Box<[std::sync::atomic::AtomicU8]>);

impl LineOwners {
    /// Bytes of address space the table tells apart.
    const SPAN: usize = 1 << 28;
    const LINE: usize = 64;

    pub(crate) fn new() -> Self {
        LineOwners(
            (0..Self::SPAN / Self::LINE)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
        )
    }
}

/// Counts the workload's touches of a line that another worker touched last: the
/// cache-line moves between cores that the workload's own accesses to its objects
/// cause (an allocator's metadata is not seen). Workers sharing a line only because
/// the allocator put their objects side by side show up here as moves beyond the
/// few that handing an object over costs anyway. Not a timing probe: `time` only
/// calls; the table's own atomic swaps make the run much slower.
pub(crate) struct LineWatch<'a> {
    owners: &'a LineOwners,
    /// This worker's mark in the table (its index + 1; 0 is "nobody yet").
    mark: u8,
    pub(crate) moves: u64,
}

impl<'a> LineWatch<'a> {
    pub(crate) fn new(owners: &'a LineOwners, me: usize) -> Self {
        let mark = u8::try_from(me + 1).expect("at most 255 workers");
        LineWatch {
            owners,
            mark,
            moves: 0,
        }
    }
}

impl Probe for LineWatch<'_> {
    #[inline(always)]
    fn time<R>(&mut self, _call: Call, _step: u64, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[inline(always)]
    fn touch(&mut self, addr: usize) {
        let entry = (addr / LineOwners::LINE) % (LineOwners::SPAN / LineOwners::LINE);
        let last = self.owners.0[entry].swap(self.mark, std::sync::atomic::Ordering::Relaxed);
        self.moves += (last != 0 && last != self.mark) as u64;
    }
}
