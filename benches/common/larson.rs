//! Larson-like random slot replacement on a team of threads, in three variants that
//! differ only in how objects reach another thread (the core of `benches/threads.rs`
//! and of the suite's `larson-*` workloads).
//!
//! Each worker owns an array of 1000 slots, pre-filled before the clock starts. A
//! step picks a random slot, frees the object in it, allocates a new one of 16 to
//! 1024 bytes (uniform) and keeps it there. Every object carries its size and its
//! maker's index in its first word (checked at its free) and has its last byte
//! written.
//!
//! - `Local`: nothing else: every object is freed by the thread that made it.
//! - `Ring(n)`: every n-th new object goes to the next worker's inbox (a
//!   single-producer single-consumer ring) instead of the slot, and every step frees
//!   one object from the worker's own inbox if there is one. One object crosses per
//!   hand-off, so the ring's head and tail lines move between the cores all the time:
//!   the harness's own traffic is a large part of what this variant measures.
//! - `Batch(round)`: after every `round` steps (larson's 1000 by default) a worker
//!   swaps its whole slot array with the one in the team's depot (one atomic pointer:
//!   `swap`) and continues with what it got, as larson hands a thread's slots to its
//!   successor. When the last deposit was another worker's, the frees of the next
//!   round first hit that worker's objects (with 1000 steps, about 63% of a round's
//!   frees; with 10 000, about 10%: each of the 1000 slots is emptied once); the
//!   harness moves one pointer per round, so the allocator's cross-thread free path
//!   is what is measured. A worker never waits: when no other worker came by since
//!   its own deposit it gets its own array back (and the first swap of a run gets a
//!   new, empty array), so how many frees cross depends on how much the threads
//!   overlap in time (the tables show the share).
//!
//! With one thread the inbox and the mailbox are the worker's own, so a step does the
//! same work at any thread count. Ops = allocator calls (allocs + frees).

use super::probe::{Call, LineOwners, LineWatch, Probe, Sampler};
use super::{aligned_layout, out_of_memory, with_align, Padded, Ring, Rng, Team, WorkerOut};
use std::alloc::GlobalAlloc;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

pub(crate) const SLOTS: usize = 1000;
const RING: usize = 4096;
pub(crate) const MIN_SIZE: usize = 16;
pub(crate) const MAX_SIZE: usize = 1024;
/// Steps between two hand-offs of the `Batch` variant, by default (larson's).
pub(crate) const ROUND: u64 = 1000;
/// The objects' alignment, by default (`threads --align N` asks for more, one of
/// `common::ALIGNS`).
pub(crate) const ALIGN: usize = 8;

/// What a worker records besides its calls.
#[derive(Clone, Copy)]
pub(crate) enum Watch<'a> {
    /// Calls only.
    Calls,
    /// Calls and latency samples (`probe::Sampler`).
    Latency,
    /// Calls and the cache lines its object accesses take from another worker
    /// (`probe::LineWatch`; slows the run down).
    Lines(&'a LineOwners),
}

/// How objects reach another thread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Variant {
    Local,
    Ring(u64),
    /// A hand-off every this many steps (at least 1; [`ROUND`] by default).
    Batch(u64),
}

/// A slot array in transit (made with `Box::into_raw`).
type Slots = Box<[usize; SLOTS]>;

/// The shared state of one team: an inbox per worker and the depot of slot arrays.
pub(crate) struct Exchange {
    inboxes: Vec<Ring>,
    depot: Padded<AtomicPtr<[usize; SLOTS]>>,
}

impl Exchange {
    pub(crate) fn new(threads: usize) -> Self {
        Exchange {
            inboxes: (0..threads).map(|_| Ring::new(RING)).collect(),
            depot: Padded(AtomicPtr::new(ptr::null_mut())),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let p = self.depot.swap(ptr::null_mut(), Ordering::Acquire);
        assert!(p.is_null(), "the depot still holds an array");
    }
}

/// One worker: makes and frees objects (aligned to `ALIGNMENT`), hands them on per
/// `variant`.
struct Worker<'a, A, const ALIGNMENT: usize> {
    a: &'a A,
    me: usize,
    rng: Rng,
    out: WorkerOut,
}

impl<A: GlobalAlloc, const ALIGNMENT: usize> Worker<'_, A, ALIGNMENT> {
    fn new_object(&mut self, probe: &mut impl Probe, step: u64) -> usize {
        let size = self.rng.between(MIN_SIZE, MAX_SIZE);
        // SAFETY: non-zero size.
        let p = probe.time(Call::Alloc, step, || unsafe {
            self.a.alloc(aligned_layout(size, ALIGNMENT))
        });
        if p.is_null() {
            out_of_memory("larson", size);
        }
        // SAFETY: `size` >= 16 bytes at `p` are ours.
        unsafe {
            (p as *mut usize).write(size | self.me << 32);
            p.add(size - 1).write(1);
        }
        probe.touch(p as usize);
        probe.touch(p as usize + size - 1);
        self.out.ops += 1;
        p as usize
    }

    /// Frees an object this workload made (its size and maker are in its first word).
    ///
    /// # Safety
    ///
    /// `addr` is a live object of `self.a` from `new_object`, freed once.
    unsafe fn free_object(&mut self, addr: usize, probe: &mut impl Probe, step: u64) {
        // SAFETY: the first word holds size and maker (caller).
        let word = unsafe { (addr as *const usize).read() };
        let (size, maker) = (word & 0xffff_ffff, word >> 32);
        probe.touch(addr);
        assert!(
            (MIN_SIZE..=MAX_SIZE).contains(&size),
            "object {addr:#x} corrupted"
        );
        // SAFETY: allocated by `a` with this layout (caller).
        probe.time(Call::Free, step, || unsafe {
            self.a
                .dealloc(addr as *mut u8, aligned_layout(size, ALIGNMENT))
        });
        self.out.ops += 1;
        self.out.frees += 1;
        self.out.cross_frees += (maker != self.me) as u64;
    }

    /// Frees every object of `slots`.
    fn free_slots(&mut self, slots: &[usize]) {
        for &object in slots.iter().filter(|&&o| o != 0) {
            // SAFETY: a live object of the team, held only here.
            unsafe { self.free_object(object, &mut super::probe::NoProbe, 1) };
        }
    }
}

/// The body of one worker of a larson team (pass it to `run_team`); every object is
/// asked with alignment `align`, one of `common::ALIGNS` ([`ALIGN`] by default), a
/// constant in the loop (`with_align`).
pub(crate) fn worker<A: GlobalAlloc>(
    a: &A,
    team: &Team<'_>,
    ex: &Exchange,
    variant: Variant,
    align: usize,
    watch: Watch<'_>,
) -> WorkerOut {
    with_align!(align, |N| worker_aligned::<A, N>(
        a, team, ex, variant, watch
    ))
}

fn worker_aligned<A: GlobalAlloc, const ALIGNMENT: usize>(
    a: &A,
    team: &Team<'_>,
    ex: &Exchange,
    variant: Variant,
    watch: Watch<'_>,
) -> WorkerOut {
    let mut w: Worker<'_, A, ALIGNMENT> = Worker {
        a,
        me: team.me,
        rng: Rng(0x5eed_0004_0000_0000 + team.me as u64),
        out: WorkerOut::default(),
    };
    let mut probe = super::probe::NoProbe;
    let mut slots: Slots = Box::new([0; SLOTS]);
    for i in 0..SLOTS {
        slots[i] = w.new_object(&mut probe, 1);
    }
    w.out = WorkerOut::default();
    let next = (team.me + 1) % team.threads;
    // The probes are made before the clock starts (the sampler calibrates the TSC
    // and reserves its buffers).
    let mut sampler = matches!(watch, Watch::Latency).then(Sampler::new);
    let mut lines = match watch {
        Watch::Lines(owners) => Some(LineWatch::new(owners, team.me)),
        _ => None,
    };
    team.start();
    slots = match (&mut sampler, &mut lines) {
        (Some(sampler), _) => w.steps(sampler, team, slots, ex, next, variant),
        (_, Some(lines)) => w.steps(lines, team, slots, ex, next, variant),
        _ => w.steps(&mut probe, team, slots, ex, next, variant),
    };
    team.finish();
    w.out.sampler = sampler;
    w.out.line_moves = lines.map_or(0, |lines| lines.moves);
    let measured = std::mem::take(&mut w.out);
    // Every worker has stopped handing objects over: free what reached us, and what
    // we hold.
    while let Some(received) = ex.inboxes[team.me].pop() {
        // SAFETY: a live object another worker made and gave up.
        unsafe { w.free_object(received, &mut probe, 1) };
    }
    let parked = ex.depot.swap(ptr::null_mut(), Ordering::Acquire);
    if !parked.is_null() {
        // SAFETY: made by `Box::into_raw` in `hand_off`; the depot gave it up.
        let parked = unsafe { Box::from_raw(parked) };
        w.free_slots(&parked[..]);
    }
    w.free_slots(&slots[..]);
    measured
}

impl<A: GlobalAlloc, const ALIGNMENT: usize> Worker<'_, A, ALIGNMENT> {
    /// The measured loop: steps until the team stops.
    fn steps(
        &mut self,
        probe: &mut impl Probe,
        team: &Team<'_>,
        mut slots: Slots,
        ex: &Exchange,
        next: usize,
        variant: Variant,
    ) -> Slots {
        let mut step = 0;
        while !team.should_stop(step) {
            slots = self.step(probe, step, slots, ex, next, variant);
            step += 1;
        }
        slots
    }

    #[inline(always)]
    fn step(
        &mut self,
        probe: &mut impl Probe,
        step: u64,
        mut slots: Slots,
        ex: &Exchange,
        next: usize,
        variant: Variant,
    ) -> Slots {
        let slot = self.rng.below(SLOTS);
        if slots[slot] != 0 {
            // SAFETY: a live object held in our array.
            unsafe { self.free_object(slots[slot], probe, step) };
            slots[slot] = 0;
        }
        let object = self.new_object(probe, step);
        match variant {
            Variant::Local => slots[slot] = object,
            Variant::Ring(n) => {
                if step % n != 0 || !ex.inboxes[next].push(object) {
                    slots[slot] = object;
                }
                if let Some(received) = ex.inboxes[self.me].pop() {
                    // SAFETY: a live object another worker made and gave up.
                    unsafe { self.free_object(received, probe, step) };
                }
            }
            Variant::Batch(round) => {
                slots[slot] = object;
                if step % round == round - 1 {
                    slots = hand_off(slots, ex);
                }
            }
        }
        slots
    }
}

/// Deposits `slots` and takes the array deposited before (or a new, empty one).
#[cold]
#[inline(never)]
fn hand_off(slots: Slots, ex: &Exchange) -> Slots {
    let got = ex.depot.swap(Box::into_raw(slots), Ordering::AcqRel);
    if got.is_null() {
        Box::new([0; SLOTS])
    } else {
        // SAFETY: an array a worker deposited with `into_raw`; the swap gave it to us
        // alone.
        unsafe { Box::from_raw(got) }
    }
}
