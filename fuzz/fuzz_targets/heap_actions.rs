//! Fuzz target `heap_actions`: a fresh heap per input, driven by a decoded
//! `Vec<Action>` and checked against a shadow model of address ranges.
//!
//! The input decodes (with `arbitrary`) into a [`Setup`] (arena size, initial
//! contents, tiny blocks on or off, the first range) and a list of [`Action`]s:
//! allocations of any size and alignment (huge and impossible ones included),
//! zeroed allocations, frees and reallocations of live objects, page runs, kernel
//! stacks, hot-adds of further parts of one pre-reserved host region (good and bad
//! ranges), CPU switches, drains, trims and frees the heap must refuse.
//!
//! The library is built with verified frees (`verify-frees`, fuzz/Cargo.toml), so
//! that every wrong free is refused at the free. Built with `--features
//! checked,debug-fill`, the same runs over the library's
//! checked mode and poisoning (every refused free, a write after free included, goes
//! to the target's hook and fails the run unless the action meant it).
//!
//! The platform is [`FuzzCpus`]: its CPU index is a thread-local the target sets,
//! so one thread exercises many CPUs' caches, CPUs that claim their index only on a
//! slow path, CPUs beyond `MAX_CPUS` and CPUs without an index.
//!
//! Checked against the model:
//!
//! - every block handed out lies inside memory given to the heap (not in arena
//!   metadata), is aligned as asked, and overlaps no live block;
//! - each block is filled with a pattern derived from its address and id, verified
//!   before it is freed or reallocated; `reallocate` keeps the prefix;
//!   `allocate_zeroed` memory reads zero; blocks above 1 MiB are filled and checked
//!   in samples (the first and last 64 KiB, 64 bytes of every page between);
//! - requests beyond the arena size (the documented largest allocation) fail;
//! - `add_memory` returns exactly the error the documented rules predict (null page,
//!   empty, overlap, too small with its `needed` bytes, too many arenas), and a
//!   refused range leaves the stats unchanged; an accepted one adds its pages;
//! - a refused free (foreign, interior, wrong layout, wrong page count, wrong stack
//!   size) reports exactly that error to the hook, counts one bad free, and changes
//!   nothing else; no other call reports any;
//! - after every action the stats balance and match the model (page runs, stacks,
//!   large objects, objects per class; bounds for the two classes tiny blocks use);
//!   every [`CHECK_EVERY`] actions (more for arenas above 16 MiB: the walk costs
//!   O(window pages)), at `Check` actions (at most 4 times as often) and at the end
//!   `check_invariants()` holds;
//! - at the end, after freeing everything, draining every CPU and trimming, every
//!   page is back: nothing in use, cached or left in spans, and free pages plus
//!   metadata (arena metadata, the CPU caches' pages and their descriptor slabs)
//!   make up all managed memory.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spanheap::platform::{Platform, MAX_CPUS};
use spanheap::size_class::{class_of, SizeClass, NUM_CLASSES, PAGE_SIZE};
use spanheap::{
    AddMemoryError, Config, FreeError, InitialContents, MemoryRange, SpanHeap, Stack, Stats,
    MAX_ARENAS, MAX_POOLED_STACK_SIZE, MIN_STACK_SIZE,
};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// The host region every heap takes its memory from: reserved once per process.
const REGION_SIZE: usize = 128 << 20;
/// Alignment of the region: every arena window up to 64 MiB starts inside it.
const REGION_ALIGN: usize = 64 << 20;
/// `check_invariants()` runs after every this many actions.
const CHECK_EVERY: usize = 32;
/// Arenas up to this size are walked every [`CHECK_EVERY`] actions, larger ones
/// proportionally less often.
const CHECK_ARENA: usize = 16 << 20;
/// Blocks up to this size are filled and checked in full.
const FULL_CHECK: usize = 1 << 20;
/// Bytes the fresh memory of a heap with unknown initial contents holds.
const GARBAGE: u8 = 0xA5;

// ---------------------------------------------------------------------------------
// The input.
// ---------------------------------------------------------------------------------

/// One fuzz input: how the heap is built, then what is done to it.
#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    actions: Vec<Action>,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    arena: ArenaSize,
    /// `InitialContents::Zeroed` (the target then gives the heap zeroed memory).
    zeroed: bool,
    /// `Config::tiny_blocks == false`.
    no_tiny: bool,
    /// The first range added (may be refused like any other).
    first: AddRange,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ArenaSize {
    M1,
    M2,
    M4,
    M8,
    M16,
    M64,
    G1,
}

impl ArenaSize {
    fn bytes(self) -> usize {
        match self {
            ArenaSize::M1 => 1 << 20,
            ArenaSize::M2 => 2 << 20,
            ArenaSize::M4 => 4 << 20,
            ArenaSize::M8 => 8 << 20,
            ArenaSize::M16 => 16 << 20,
            ArenaSize::M64 => 64 << 20,
            ArenaSize::G1 => 1 << 30,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Action {
    Alloc {
        size: Size,
        align: Align,
        zeroed: bool,
        /// Through `GlobalAlloc` (only for non-zero sizes).
        global: bool,
    },
    /// `count` allocations of one kind in a row (refills, full caches and stack caches,
    /// full pool spans, out of memory).
    Burst {
        of: BurstOf,
        count: u8,
    },
    Free {
        index: u16,
        global: bool,
    },
    /// Frees up to `count` live blocks of one kind (flushes, emptied spans, full stack
    /// caches).
    FreeMany {
        of: Kind,
        index: u16,
        count: u8,
    },
    Realloc {
        index: u16,
        size: Resize,
        global: bool,
    },
    AllocPages {
        count: PageCount,
        align: PageAlign,
    },
    FreePages {
        index: u16,
    },
    AllocStack {
        size: Size,
    },
    FreeStack {
        index: u16,
    },
    AddMemory(AddRange),
    SwitchCpu(Cpu),
    DrainCpu,
    DrainOffline(u8),
    Trim,
    BadFree {
        index: u16,
        kind: BadFree,
    },
    Check,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum BurstOf {
    Objects { size: Size, align: Align },
    Stacks { size: Size },
    Pages { count: PageCount, align: PageAlign },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Objects,
    Stacks,
    Pages,
}

/// A request size: small, large, powers of two and their neighbours, huge.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    /// 0 to 16 bytes: tiny blocks, the 8- and 16-byte classes, zero.
    Tiny(u8),
    Byte(u8),
    Small(u16),
    Large(u32),
    Pow2 {
        shift: u8,
        below: bool,
        delta: u8,
    },
    Huge(u16),
    Any(u64),
}

impl Size {
    fn get(self) -> usize {
        match self {
            Size::Tiny(b) => b as usize % 17,
            Size::Byte(b) => b as usize,
            Size::Small(s) => s as usize % (32 * 1024 + 1),
            Size::Large(l) => 32 * 1024 + l as usize % (16 << 20),
            Size::Pow2 {
                shift,
                below,
                delta,
            } => {
                let p = 1usize << (shift % 64);
                if below {
                    p.wrapping_sub(delta as usize)
                } else {
                    p.wrapping_add(delta as usize)
                }
            }
            Size::Huge(n) => isize::MAX as usize - n as usize,
            Size::Any(x) => x as usize,
        }
    }
}

/// The new size of a reallocation: any, or a step from the old size.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Resize {
    To(Size),
    Shrink(u16),
    Grow(u16),
}

impl Resize {
    fn get(self, old: usize) -> usize {
        match self {
            Resize::To(size) => size.get(),
            Resize::Shrink(by) => old.saturating_sub(by as usize),
            Resize::Grow(by) => old.saturating_add(by as usize),
        }
    }
}

/// An alignment: mostly 1 to 4096, sometimes any power of two up to 2^63.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Align(u8);

impl Align {
    fn get(self) -> usize {
        if self.0 < 208 {
            1 << (self.0 % 13)
        } else {
            1 << (self.0 % 64)
        }
    }
}

/// An alignment for page runs: mostly 4 KiB to 2 MiB, sometimes any power of two.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct PageAlign(u8);

impl PageAlign {
    fn get(self) -> usize {
        if self.0 < 208 {
            PAGE_SIZE << (self.0 % 10)
        } else {
            1 << (self.0 % 64)
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PageCount {
    Few(u8),
    Many(u16),
    Any(u64),
}

impl PageCount {
    fn get(self) -> usize {
        match self {
            PageCount::Few(n) => n as usize % 17,
            PageCount::Many(n) => n as usize,
            PageCount::Any(n) => n as usize,
        }
    }
}

/// A range for `add_memory`, mostly inside the region.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum AddRange {
    /// The next part of the region: `gap` pages after the highest range added so far,
    /// `pages` pages long, its ends moved inward by `head` and `tail` bytes.
    Next {
        gap: u8,
        pages: u16,
        head: u16,
        tail: u16,
    },
    /// Any range inside the region, by byte offsets.
    Within { start: u32, len: u32 },
    /// A range that starts `shift` bytes from the start of a range already added.
    Overlapping { which: u8, shift: i32, len: u32 },
    /// Less than a page (zero-length included).
    Short { start: u32, len: u16 },
    /// End before start.
    Reversed { start: u32, back: u16 },
    /// From address 0 (or the null page) on.
    NullPage { start: u16, end: u32 },
    /// Any addresses at all; given to the heap only when it must refuse them.
    Raw { start: u64, end: u64 },
}

/// The CPU the next calls run on.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cpu {
    /// CPU `n % 6`.
    Index(u8),
    /// CPU `n % 6`, but its index shows only once claimed on a slow path (as host
    /// threads claim theirs).
    Lazy(u8),
    /// The last index with a cache.
    Last,
    /// An index at or beyond `MAX_CPUS`: no cache.
    Beyond(u8),
    /// No index: no cache.
    NoIndex,
}

/// A free the heap must refuse.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum BadFree {
    /// A pointer outside every range given to the heap (inside the region or not).
    Foreign { offset: u32, outside: bool },
    /// A live small object (at least 16 bytes) freed 8 bytes past its start.
    Interior,
    /// A live object freed with the layout of another class.
    WrongLayout,
    /// A live page run freed with one page more.
    WrongPageCount,
    /// A live stack freed with twice its size.
    WrongStackSize,
}

// ---------------------------------------------------------------------------------
// The platform: CPU switches set by the target.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuState {
    /// What `cpu_index` says.
    index: Option<usize>,
    /// The index `claim_index` gives when `index` is `None`.
    claimable: Option<usize>,
}

thread_local! {
    static CPU: Cell<CpuState> = const {
        Cell::new(CpuState { index: Some(0), claimable: None })
    };
}

fn set_cpu(state: CpuState) {
    CPU.with(|cpu| cpu.set(state));
}

/// The fuzzer's platform: the running "CPU" is a thread-local the target switches
/// between heap calls.
struct FuzzCpus;

// SAFETY: one thread drives each heap, and the index changes only between heap calls
// (the target sets it) or in `claim_index`, from `None` to an index kept from then
// on, as the contract allows; no interrupt or other thread enters the heap, so the
// critical section needs no state.
unsafe impl Platform for FuzzCpus {
    type Saved = ();

    fn enter() {}

    unsafe fn exit(_: ()) {}

    fn cpu_index() -> Option<usize> {
        CPU.with(|cpu| cpu.get().index)
    }

    fn claim_index() -> Option<usize> {
        CPU.with(|cpu| {
            let mut state = cpu.get();
            if state.index.is_none() {
                state.index = state.claimable;
                cpu.set(state);
            }
            state.index
        })
    }
}

type Heap = SpanHeap<FuzzCpus>;

// ---------------------------------------------------------------------------------
// Memory, patterns, the error hook.
// ---------------------------------------------------------------------------------

/// The base of the host region (reserved on first use, never freed).
fn region() -> usize {
    static REGION: OnceLock<usize> = OnceLock::new();
    *REGION.get_or_init(|| {
        let layout = Layout::from_size_align(REGION_SIZE, REGION_ALIGN).unwrap();
        // SAFETY: a non-zero size.
        let base = unsafe { std::alloc::alloc(layout) };
        assert!(!base.is_null(), "cannot reserve the fuzz region");
        base as usize
    })
}

fn in_region(start: usize, end: usize) -> bool {
    start >= region() && end <= region() + REGION_SIZE && start <= end
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` of the pattern with `seed` (byte `k` of a block is byte `k % 8` of word
/// `k / 8`, so every prefix of a filled block is the pattern of that prefix).
fn word(seed: u64, i: usize) -> u64 {
    let x =
        (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^ (x >> 29)
}

fn pattern_byte(seed: u64, k: usize) -> u8 {
    word(seed, k / 8).to_le_bytes()[k % 8]
}

/// The parts of a block of `len` bytes that are filled and checked: all of it up to
/// [`FULL_CHECK`], else the first and last 64 KiB and 64 bytes of each page between.
fn segments(len: usize) -> impl Iterator<Item = (usize, usize)> {
    const EDGE: usize = 64 << 10;
    let full = len <= FULL_CHECK;
    let head = std::iter::once((0, if full { len } else { EDGE }));
    let middle = (EDGE..if full { EDGE } else { len - EDGE })
        .step_by(PAGE_SIZE)
        .map(|at| (at, at + 64));
    let tail = (!full).then(|| (len - EDGE, len));
    head.chain(middle).chain(tail)
}

/// Writes the pattern of `seed` into bytes `from..to` of the block at `base`.
///
/// # Safety
///
/// The block's bytes `from..to` are writable memory the caller owns.
unsafe fn fill_range(base: usize, seed: u64, from: usize, to: usize) {
    let mut k = from;
    while k < to && k % 8 != 0 {
        // SAFETY: inside the range (caller).
        unsafe { ((base + k) as *mut u8).write(pattern_byte(seed, k)) };
        k += 1;
    }
    while k + 8 <= to {
        // SAFETY: as above; unaligned writes.
        unsafe { ((base + k) as *mut u64).write_unaligned(word(seed, k / 8).to_le()) };
        k += 8;
    }
    while k < to {
        // SAFETY: as above.
        unsafe { ((base + k) as *mut u8).write(pattern_byte(seed, k)) };
        k += 1;
    }
}

/// The first byte of `from..to` of the block at `base` that differs from the pattern
/// of `seed` (or, with `seed == None`, from zero): `(offset, found, expected)`.
///
/// # Safety
///
/// The block's bytes `from..to` are readable memory the caller owns.
unsafe fn check_range(
    base: usize,
    seed: Option<u64>,
    from: usize,
    to: usize,
) -> Option<(usize, u8, u8)> {
    let expected = |k: usize| seed.map_or(0, |seed| pattern_byte(seed, k));
    let mut k = from;
    while k < to {
        if k % 8 == 0 && k + 8 <= to {
            // SAFETY: inside the range (caller).
            let found = unsafe { ((base + k) as *const u64).read_unaligned() };
            let want = seed.map_or(0, |seed| word(seed, k / 8).to_le());
            if found == want {
                k += 8;
                continue;
            }
        }
        // SAFETY: inside the range (caller).
        let found = unsafe { ((base + k) as *const u8).read() };
        if found != expected(k) {
            return Some((k, found, expected(k)));
        }
        k += 1;
    }
    None
}

/// Frees the heap refused, as the hook saw them.
static REFUSED: Mutex<Vec<FreeError>> = Mutex::new(Vec::new());

fn on_refused_free(error: &FreeError) {
    REFUSED.lock().unwrap().push(*error);
}

fn take_refused() -> Vec<FreeError> {
    std::mem::take(&mut *REFUSED.lock().unwrap())
}

/// Bytes of arena metadata a window of `arena_size` bytes takes, measured once per
/// size on a scratch heap (the bytes `TooSmall` names, less one page).
fn arena_metadata(arena_size: usize) -> usize {
    static MEASURED: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);
    let mut measured = MEASURED.lock().unwrap();
    *measured
        .get_or_insert_with(HashMap::new)
        .entry(arena_size)
        .or_insert_with(|| {
            let heap = Heap::with_config(Config {
                arena_size,
                ..Config::DEFAULT
            });
            let start = region();
            let end = start + arena_size.min(8 << 20);
            // SAFETY: region memory no heap uses now (each input's heap is gone before
            // the next starts, and fresh memory is rewritten before it is given).
            unsafe { heap.add_memory(MemoryRange::new(start, end)) }.unwrap();
            let stats = heap.stats();
            assert_eq!(stats.arenas, 1);
            stats.metadata_bytes
        })
}

// ---------------------------------------------------------------------------------
// The shadow model.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    len: usize,
    id: u64,
}

impl Block {
    fn seed(&self) -> u64 {
        mix(self.start as u64 ^ self.id.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The bytes the block occupies in the model (a zero-size object still has one).
    fn end(&self) -> usize {
        self.start + self.len.max(1)
    }

    /// # Safety
    ///
    /// The block is live and ours.
    unsafe fn fill(&self) {
        for (from, to) in segments(self.len) {
            // SAFETY: inside the live block.
            unsafe { fill_range(self.start, self.seed(), from, to) };
        }
    }

    /// Checks the pattern of this block over its first `len` bytes, as found at
    /// `at` (the block itself, or where `reallocate` moved it).
    ///
    /// # Safety
    ///
    /// `at..at + len` is live memory of ours.
    unsafe fn verify_at(&self, at: usize, len: usize, what: &str) {
        for (from, to) in segments(self.len) {
            let to = to.min(len);
            if from >= to {
                continue;
            }
            // SAFETY: inside live memory (caller).
            let broken = unsafe { check_range(at, Some(self.seed()), from, to) };
            if let Some((off, found, want)) = broken {
                panic!(
                    "{what}: pattern of block {self:x?} (now at {at:#x}) broken at offset \
                     {off}: {found:#04x}, expected {want:#04x}"
                );
            }
        }
    }

    /// # Safety
    ///
    /// The block is live and ours.
    unsafe fn verify(&self, what: &str) {
        // SAFETY: forwarded.
        unsafe { self.verify_at(self.start, self.len, what) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Object {
    block: Block,
    layout: Layout,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    block: Block,
    count: usize,
}

/// Disjoint address intervals `start -> end`, adjacent ones merged.
#[derive(Debug, Default)]
struct Intervals(BTreeMap<usize, usize>);

impl Intervals {
    /// `true` when some interval overlaps `[start, end)`.
    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.0
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
    }

    /// `true` when one interval holds all of `[start, end)`.
    fn covers(&self, start: usize, end: usize) -> bool {
        self.0
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    fn add(&mut self, mut start: usize, mut end: usize) {
        debug_assert!(!self.overlaps(start, end));
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e == start {
                self.0.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.0.remove(&end) {
            end = e;
        }
        self.0.insert(start, end);
    }
}

/// The window parts of `[start, end)`: split at multiples of `size`.
fn window_parts(start: usize, end: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = (at / size + 1)
            .checked_mul(size)
            .map_or(end, |n| n.min(end));
        let part = (at, next);
        at = next;
        Some(part)
    })
}

/// Windows of `size` bytes that `[start, end)` touches.
fn windows_in(start: usize, end: usize, size: usize) -> usize {
    if end <= start {
        0
    } else {
        (end - 1) / size - start / size + 1
    }
}

/// What the model knows about the heap.
struct Model {
    config: Config,
    /// Bytes of metadata a new arena takes.
    arena_meta: usize,
    objects: Vec<Object>,
    runs: Vec<Run>,
    stacks: Vec<Block>,
    /// Every live block by start.
    live: BTreeMap<usize, usize>,
    /// Pages given to the heap (metadata included).
    given: Intervals,
    /// Pages given to the heap, less arena metadata: where blocks may lie.
    usable: Intervals,
    /// Windows with an arena.
    windows: BTreeSet<usize>,
    managed: usize,
    next_id: u64,
    objects_per_class: [usize; NUM_CLASSES],
    /// Live objects of the 8-byte class that tiny blocks would not take.
    class8_not_tiny: usize,
    /// Live objects a tiny block may hold.
    tiny_eligible: usize,
    large_bytes: usize,
    large_objects: usize,
    run_bytes: usize,
    stack_bytes: usize,
    pooled_stacks: usize,
    bad_frees: usize,
    /// The end of the highest range added inside the region.
    cursor: usize,
}

fn is_tiny(layout: Layout) -> bool {
    (1..=7).contains(&layout.size()) && layout.align() <= 4
}

fn large_pages(size: usize) -> usize {
    size.max(1).div_ceil(PAGE_SIZE)
}

fn stack_bytes(size: usize) -> Option<usize> {
    size.max(MIN_STACK_SIZE).checked_next_power_of_two()
}

impl Model {
    fn new(config: Config) -> Self {
        Self {
            config,
            arena_meta: arena_metadata(config.arena_size),
            objects: Vec::new(),
            runs: Vec::new(),
            stacks: Vec::new(),
            live: BTreeMap::new(),
            given: Intervals::default(),
            usable: Intervals::default(),
            windows: BTreeSet::new(),
            managed: 0,
            next_id: 0,
            objects_per_class: [0; NUM_CLASSES],
            class8_not_tiny: 0,
            tiny_eligible: 0,
            large_bytes: 0,
            large_objects: 0,
            run_bytes: 0,
            stack_bytes: 0,
            pooled_stacks: 0,
            bad_frees: 0,
            cursor: region(),
        }
    }

    fn new_block(&mut self, start: usize, len: usize) -> Block {
        self.next_id += 1;
        Block {
            start,
            len,
            id: self.next_id,
        }
    }

    /// Checks a block fresh from the heap (inside usable memory, aligned, no overlap)
    /// and records it.
    fn admit(&mut self, block: Block, align: usize, what: &str) {
        assert!(
            self.usable.covers(block.start, block.end()),
            "{what}: block {block:x?} lies outside the heap's usable memory"
        );
        assert_eq!(
            block.start % align,
            0,
            "{what}: block {block:x?} not aligned to {align:#x}"
        );
        if let Some((&s, &e)) = self.live.range(..block.end()).next_back() {
            assert!(
                e <= block.start,
                "{what}: block {block:x?} overlaps live block {s:#x}..{e:#x}"
            );
        }
        self.live.insert(block.start, block.end());
    }

    fn forget(&mut self, block: &Block) {
        self.live.remove(&block.start).expect("a live block");
    }

    /// Adds (`sign` 1) or removes (`sign` -1) an object's share of the counters.
    fn count_object(&mut self, layout: Layout, add: bool) {
        let step = |n: &mut usize, by: usize| {
            if add {
                *n += by
            } else {
                *n -= by
            }
        };
        match class_of(layout.size(), layout.align()) {
            Some(class) => {
                step(&mut self.objects_per_class[class.index()], 1);
                if class == class8() && !is_tiny(layout) {
                    step(&mut self.class8_not_tiny, 1);
                }
                if is_tiny(layout) {
                    step(&mut self.tiny_eligible, 1);
                }
            }
            None => {
                step(
                    &mut self.large_bytes,
                    large_pages(layout.size()) * PAGE_SIZE,
                );
                step(&mut self.large_objects, 1);
            }
        }
    }

    fn count_stack(&mut self, size: usize, add: bool) {
        let pooled = usize::from(size <= MAX_POOLED_STACK_SIZE);
        if add {
            self.stack_bytes += size;
            self.pooled_stacks += pooled;
        } else {
            self.stack_bytes -= size;
            self.pooled_stacks -= pooled;
        }
    }

    /// What `add_memory(range)` must answer, by the documented rules in the heap's
    /// order: null page, no whole page, then each window part in address order
    /// (overlap in a window with an arena, too small for a new arena's metadata),
    /// then too many arenas. `Ok` with the page range and the new arenas' metadata.
    #[allow(clippy::type_complexity)]
    fn predict_add(
        &self,
        range: MemoryRange,
    ) -> Result<((usize, usize), Vec<(usize, usize)>), AddMemoryError> {
        if range.start < PAGE_SIZE && range.end > range.start {
            return Err(AddMemoryError::NullPage(range));
        }
        let (start, pages) = range.pages().ok_or(AddMemoryError::Empty(range))?;
        let end = start + pages * PAGE_SIZE;
        let size = self.config.arena_size;
        // More windows than there can be arenas: refused before any overlap is looked
        // for, however many of them already hold arenas.
        if windows_in(start, end, size) > MAX_ARENAS {
            return Err(AddMemoryError::TooManyArenas(range));
        }
        let mut metadata = Vec::new();
        for (part_start, part_end) in window_parts(start, end, size) {
            if self.windows.contains(&(part_start / size)) {
                if self.given.overlaps(part_start, part_end) {
                    return Err(AddMemoryError::Overlap(range));
                }
            } else if part_end - part_start <= self.arena_meta {
                let needed = self.arena_meta + PAGE_SIZE;
                return Err(AddMemoryError::TooSmall { range, needed });
            } else {
                metadata.push((part_start, part_start + self.arena_meta));
            }
        }
        if self.windows.len() + metadata.len() > MAX_ARENAS {
            return Err(AddMemoryError::TooManyArenas(range));
        }
        Ok(((start, end), metadata))
    }
}

fn class8() -> SizeClass {
    class_of(8, 1).unwrap()
}

fn class16() -> SizeClass {
    class_of(16, 1).unwrap()
}

// ---------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------

struct Run1 {
    heap: Box<Heap>,
    model: Model,
    actions: usize,
    /// `actions` at the last `check_invariants()` walk.
    last_walk: usize,
}

fn ptr(addr: usize) -> NonNull<u8> {
    NonNull::new(addr as *mut u8).expect("non-null")
}

impl Run1 {
    fn new(setup: &Setup) -> Self {
        let config = Config {
            arena_size: setup.arena.bytes(),
            contents: if setup.zeroed {
                InitialContents::Zeroed
            } else {
                InitialContents::Unknown
            },
            tiny_blocks: !setup.no_tiny,
        };
        let model = Model::new(config);
        set_cpu(CpuState {
            index: Some(0),
            claimable: None,
        });
        take_refused();
        let heap = Box::new(Heap::with_config(config));
        heap.set_error_hook(on_refused_free);
        Self {
            heap,
            model,
            actions: 0,
            last_walk: 0,
        }
    }

    fn stats(&self) -> Stats {
        self.heap.stats()
    }

    /// No free was refused since the last look.
    fn no_refusals(&self, what: &str) {
        let refused = take_refused();
        assert!(
            refused.is_empty(),
            "{what}: the heap refused frees: {refused:x?}"
        );
    }

    // --- memory intake ---

    fn range_of(&self, add: AddRange) -> MemoryRange {
        let base = region();
        let top = base + REGION_SIZE;
        match add {
            AddRange::Next {
                gap,
                pages,
                head,
                tail,
            } => {
                let start =
                    self.model.cursor.next_multiple_of(PAGE_SIZE) + gap as usize * PAGE_SIZE;
                let end = (start + (pages as usize % 8192 + 1) * PAGE_SIZE).min(top);
                let start = (start + head as usize % PAGE_SIZE).min(top);
                MemoryRange::new(start, end.saturating_sub(tail as usize % PAGE_SIZE))
            }
            AddRange::Within { start, len } => {
                let start = base + start as usize % REGION_SIZE;
                MemoryRange::new(start, start + len as usize % (top - start + 1))
            }
            AddRange::Overlapping { which, shift, len } => {
                let ranges: Vec<(usize, usize)> =
                    self.model.given.0.iter().map(|(&s, &e)| (s, e)).collect();
                let Some(&(s, _)) = ranges.get(which as usize % ranges.len().max(1)) else {
                    return MemoryRange::new(base, base + len as usize % REGION_SIZE);
                };
                let start = s.saturating_add_signed(shift as isize).clamp(base, top);
                MemoryRange::new(start, (start + len as usize).min(top))
            }
            AddRange::Short { start, len } => {
                let start = base + start as usize % REGION_SIZE;
                MemoryRange::new(start, (start + len as usize % PAGE_SIZE).min(top))
            }
            AddRange::Reversed { start, back } => {
                let start = base + start as usize % REGION_SIZE;
                MemoryRange::new(start, start.saturating_sub(back as usize + 1))
            }
            AddRange::NullPage { start, end } => {
                MemoryRange::new(start as usize % PAGE_SIZE, end as usize)
            }
            AddRange::Raw { start, end } => MemoryRange::new(start as usize, end as usize),
        }
    }

    fn add_memory(&mut self, add: AddRange) {
        let range = self.range_of(add);
        let predicted = self.model.predict_add(range);
        if predicted.is_ok() && !in_region(range.start, range.end) {
            // Memory the target does not own: never give it.
            return;
        }
        if let Ok(((start, end), _)) = &predicted {
            // Fresh memory holds what the configuration says: zeroes, or garbage.
            let fill = match self.model.config.contents {
                InitialContents::Zeroed => 0,
                InitialContents::Unknown => GARBAGE,
            };
            // SAFETY: region memory the heap was not given (an accepted range
            // overlaps nothing given): the target's own.
            unsafe { std::ptr::write_bytes(*start as *mut u8, fill, end - start) };
        }
        let before = self.stats();
        // SAFETY: an accepted range is region memory given to the heap once (the model
        // refuses overlaps, and a range it would accept outside the region is never
        // passed); a refused range is not used.
        let result = unsafe { self.heap.add_memory(range) };
        let after = self.stats();
        match predicted {
            Err(error) => {
                assert_eq!(result, Err(error), "add_memory({range:x?})");
                assert_eq!(
                    before, after,
                    "refused add_memory({range:x?}) changed the heap"
                );
            }
            Ok(((start, end), metadata)) => {
                assert_eq!(result, Ok(()), "add_memory({range:x?})");
                let meta = metadata.len() * self.model.arena_meta;
                let added = end - start;
                assert_eq!(
                    after.managed_bytes,
                    before.managed_bytes + added,
                    "add_memory({range:x?})"
                );
                assert_eq!(
                    after.metadata_bytes,
                    before.metadata_bytes + meta,
                    "add_memory({range:x?})"
                );
                assert_eq!(
                    after.free_bytes,
                    before.free_bytes + added - meta,
                    "add_memory({range:x?})"
                );
                assert_eq!(after.arenas, before.arenas + metadata.len());
                let size = self.model.config.arena_size;
                for (part_start, part_end) in window_parts(start, end, size) {
                    let meta_end = metadata
                        .iter()
                        .find(|&&(s, _)| s == part_start)
                        .map_or(part_start, |&(_, e)| e);
                    self.model.windows.insert(part_start / size);
                    self.model.given.add(part_start, part_end);
                    self.model.usable.add(meta_end, part_end);
                }
                self.model.managed += added;
                if in_region(range.start, range.end) {
                    self.model.cursor = self.model.cursor.max(end);
                }
            }
        }
        self.no_refusals("add_memory");
    }

    // --- objects ---

    fn arena_size(&self) -> usize {
        self.model.config.arena_size
    }

    /// `None` is the only answer for a request no arena can hold.
    fn must_fail(&self, layout: Layout) -> bool {
        class_of(layout.size(), layout.align()).is_none()
            && (layout.size() > self.arena_size() || layout.align() > self.arena_size())
    }

    fn alloc(&mut self, layout: Layout, zeroed: bool, global: bool) -> bool {
        let global = global && layout.size() != 0;
        let got = match (zeroed, global) {
            (false, false) => self.heap.allocate(layout),
            (true, false) => self.heap.allocate_zeroed(layout),
            // SAFETY: a non-zero size.
            (false, true) => NonNull::new(unsafe { self.heap.alloc(layout) }),
            // SAFETY: a non-zero size.
            (true, true) => NonNull::new(unsafe { self.heap.alloc_zeroed(layout) }),
        };
        let what = if zeroed {
            "allocate_zeroed"
        } else {
            "allocate"
        };
        self.no_refusals(what);
        let Some(p) = got else {
            return false;
        };
        assert!(
            !self.must_fail(layout),
            "{what}({layout:?}) beyond the arena size gave {p:?}"
        );
        let block = self.model.new_block(p.as_ptr() as usize, layout.size());
        self.model.admit(block, layout.align(), what);
        if zeroed {
            for (from, to) in segments(block.len) {
                // SAFETY: the live block is ours.
                if let Some((off, found, _)) = unsafe { check_range(block.start, None, from, to) } {
                    panic!(
                        "allocate_zeroed({layout:?}) = {:#x}: byte {off} is {found:#04x}",
                        block.start
                    );
                }
            }
        }
        // SAFETY: the live block is ours.
        unsafe { block.fill() };
        self.model.count_object(layout, true);
        self.model.objects.push(Object { block, layout });
        true
    }

    fn free(&mut self, index: usize, global: bool) {
        if self.model.objects.is_empty() {
            return;
        }
        let object = self
            .model
            .objects
            .swap_remove(index % self.model.objects.len());
        // SAFETY: live and ours.
        unsafe { object.block.verify("free") };
        self.model.forget(&object.block);
        self.model.count_object(object.layout, false);
        let p = ptr(object.block.start);
        if global && object.layout.size() != 0 {
            // SAFETY: from this heap with this layout, forgotten by the model.
            unsafe { self.heap.dealloc(p.as_ptr(), object.layout) };
        } else {
            // SAFETY: as above.
            unsafe { self.heap.deallocate(p, object.layout) };
        }
        self.no_refusals("deallocate");
    }

    fn realloc(&mut self, index: usize, resize: Resize, global: bool) {
        if self.model.objects.is_empty() {
            return;
        }
        let at = index % self.model.objects.len();
        let old = self.model.objects[at];
        let new_size = resize.get(old.layout.size());
        let Ok(new_layout) = Layout::from_size_align(new_size, old.layout.align()) else {
            return;
        };
        // SAFETY: live and ours.
        unsafe { old.block.verify("reallocate (before)") };
        let p = ptr(old.block.start);
        let global = global && new_size != 0 && old.layout.size() != 0;
        let got = if global {
            // SAFETY: from this heap with this layout; the new size is non-zero and a
            // valid layout with the same alignment.
            NonNull::new(unsafe { self.heap.realloc(p.as_ptr(), old.layout, new_size) })
        } else {
            // SAFETY: as above (rounded up to the alignment it fits `isize`).
            unsafe { self.heap.reallocate(p, old.layout, new_size) }
        };
        self.no_refusals("reallocate");
        let Some(new) = got else {
            // SAFETY: a failed reallocate leaves the block live and as it was.
            unsafe { old.block.verify("failed reallocate") };
            return;
        };
        assert!(
            !self.must_fail(new_layout),
            "reallocate to {new_layout:?} beyond the arena size"
        );
        self.model.objects.swap_remove(at);
        self.model.forget(&old.block);
        self.model.count_object(old.layout, false);
        let block = self.model.new_block(new.as_ptr() as usize, new_size);
        self.model.admit(block, new_layout.align(), "reallocate");
        let kept = old.layout.size().min(new_size);
        // SAFETY: the new block is live, ours, at least `kept` bytes.
        unsafe {
            old.block
                .verify_at(block.start, kept, "reallocate (kept prefix)")
        };
        // SAFETY: live and ours.
        unsafe { block.fill() };
        self.model.count_object(new_layout, true);
        self.model.objects.push(Object {
            block,
            layout: new_layout,
        });
    }

    // --- page runs and stacks ---

    fn alloc_pages(&mut self, count: usize, align: usize) -> bool {
        let got = self.heap.alloc_pages(count, align);
        self.no_refusals("alloc_pages");
        let Some(p) = got else {
            return false;
        };
        let arena = self.arena_size();
        assert!(
            count != 0 && count <= arena / PAGE_SIZE && align <= arena,
            "alloc_pages({count}, {align:#x}) gave {p:?}"
        );
        let block = self.model.new_block(p.as_ptr() as usize, count * PAGE_SIZE);
        self.model.admit(block, align.max(PAGE_SIZE), "alloc_pages");
        // SAFETY: the live run is ours.
        unsafe { block.fill() };
        self.model.run_bytes += block.len;
        self.model.runs.push(Run { block, count });
        true
    }

    fn free_pages(&mut self, index: usize) {
        if self.model.runs.is_empty() {
            return;
        }
        let run = self.model.runs.swap_remove(index % self.model.runs.len());
        // SAFETY: live and ours.
        unsafe { run.block.verify("free_pages") };
        self.model.forget(&run.block);
        self.model.run_bytes -= run.block.len;
        // SAFETY: a live run of `count` pages from this heap, forgotten by the model.
        unsafe { self.heap.free_pages(ptr(run.block.start), run.count) };
        self.no_refusals("free_pages");
    }

    fn alloc_stack(&mut self, size: usize) -> bool {
        let got = self.heap.alloc_stack(size);
        self.no_refusals("alloc_stack");
        let Some(stack) = got else {
            return false;
        };
        let expected = stack_bytes(size).expect("a stack for a size with no power of two");
        assert!(
            expected <= self.arena_size(),
            "alloc_stack({size:#x}) beyond the arena size"
        );
        assert_eq!(stack.size(), expected, "alloc_stack({size:#x})");
        assert_eq!(stack.top(), stack.base().as_ptr() as usize + expected);
        let (base, size) = stack.into_raw();
        let block = self.model.new_block(base.as_ptr() as usize, size);
        self.model.admit(block, size, "alloc_stack");
        // SAFETY: the live stack is ours.
        unsafe { block.fill() };
        self.model.count_stack(size, true);
        self.model.stacks.push(block);
        true
    }

    fn free_stack(&mut self, index: usize) {
        if self.model.stacks.is_empty() {
            return;
        }
        let block = self
            .model
            .stacks
            .swap_remove(index % self.model.stacks.len());
        // SAFETY: live and ours.
        unsafe { block.verify("free_stack") };
        self.model.forget(&block);
        self.model.count_stack(block.len, false);
        // SAFETY: base and size of a stack from this heap, not in use, forgotten.
        unsafe {
            self.heap
                .free_stack(Stack::from_raw(ptr(block.start), block.len))
        };
        self.no_refusals("free_stack");
    }

    // --- refused frees ---

    fn bad_free(&mut self, index: usize, kind: BadFree) {
        let before = self.stats();
        let expected = match kind {
            BadFree::Foreign { offset, outside } => {
                static OUTSIDE: [u64; 64] = [0; 64];
                let addr = if outside {
                    OUTSIDE.as_ptr() as usize + offset as usize % 64 * 8
                } else {
                    (region() + offset as usize % REGION_SIZE) & !7
                };
                if self.model.given.overlaps(addr, addr + 1) {
                    return;
                }
                let layout = Layout::from_size_align(8, 8).unwrap();
                // SAFETY: not memory of the heap's: refused before anything is touched.
                unsafe { self.heap.deallocate(ptr(addr), layout) };
                FreeError::Foreign { ptr: addr }
            }
            BadFree::Interior => {
                let Some(object) = self.pick_object(index, |o| {
                    o.layout.size() >= 16 && class_of(o.layout.size(), o.layout.align()).is_some()
                }) else {
                    return;
                };
                let addr = object.block.start + 8;
                // SAFETY: inside a live object, not its start: refused.
                unsafe { self.heap.deallocate(ptr(addr), object.layout) };
                FreeError::Interior { ptr: addr }
            }
            BadFree::WrongLayout => {
                let Some(object) = self.pick_object(index, |_| true) else {
                    return;
                };
                let class = class_of(object.layout.size(), object.layout.align());
                let size = match class {
                    Some(c) if c.size() < 1024 => 2048,
                    _ => 24,
                };
                let layout = Layout::from_size_align(size, 8).unwrap();
                assert_ne!(class_of(size, 8), class);
                let addr = object.block.start;
                // SAFETY: a live object with the layout of another class: refused.
                unsafe { self.heap.deallocate(ptr(addr), layout) };
                let refused = take_refused();
                match refused.as_slice() {
                    [FreeError::WrongLayout { ptr, layout: l, .. }]
                        if *ptr == addr && *l == layout => {}
                    other => panic!("free of {object:x?} with {layout:?}: refused {other:x?}"),
                }
                return self.after_bad_free(before);
            }
            BadFree::WrongPageCount => {
                if self.model.runs.is_empty() {
                    return;
                }
                let run = self.model.runs[index % self.model.runs.len()];
                let addr = run.block.start;
                // SAFETY: a live run with the wrong count: refused.
                unsafe { self.heap.free_pages(ptr(addr), run.count + 1) };
                let refused = take_refused();
                match refused.as_slice() {
                    [FreeError::WrongLayout {
                        ptr, expected_size, ..
                    }] if *ptr == addr && *expected_size == run.block.len => {}
                    other => {
                        panic!("free_pages of {run:x?} with one page more: refused {other:x?}")
                    }
                }
                return self.after_bad_free(before);
            }
            BadFree::WrongStackSize => {
                if self.model.stacks.is_empty() {
                    return;
                }
                let block = self.model.stacks[index % self.model.stacks.len()];
                let addr = block.start;
                // SAFETY: a live stack with twice its size: refused.
                unsafe {
                    self.heap
                        .free_stack(Stack::from_raw(ptr(addr), block.len * 2))
                };
                let refused = take_refused();
                match refused.as_slice() {
                    [FreeError::WrongLayout { ptr, .. }] if *ptr == addr => {}
                    other => {
                        panic!("free_stack of {block:x?} with twice its size: refused {other:x?}")
                    }
                }
                return self.after_bad_free(before);
            }
        };
        let refused = take_refused();
        assert_eq!(refused, [expected], "{kind:?}");
        self.after_bad_free(before);
    }

    fn after_bad_free(&mut self, before: Stats) {
        self.model.bad_frees += 1;
        let after = self.stats();
        assert_eq!(after.bad_frees, before.bad_frees + 1);
        assert_eq!(
            Stats {
                bad_frees: before.bad_frees,
                ..after
            },
            before,
            "a refused free changed the heap"
        );
    }

    fn pick_object(&self, index: usize, want: impl Fn(&Object) -> bool) -> Option<Object> {
        let n = self.model.objects.len();
        (0..n)
            .map(|i| self.model.objects[(index + i) % n])
            .find(|o| want(o))
    }

    // --- CPUs ---

    fn switch_cpu(&mut self, cpu: Cpu) {
        let state = match cpu {
            Cpu::Index(n) => CpuState {
                index: Some(n as usize % 6),
                claimable: None,
            },
            Cpu::Lazy(n) => CpuState {
                index: None,
                claimable: Some(n as usize % 6),
            },
            Cpu::Last => CpuState {
                index: Some(MAX_CPUS - 1),
                claimable: None,
            },
            Cpu::Beyond(n) => CpuState {
                index: Some(MAX_CPUS + n as usize),
                claimable: Some(MAX_CPUS + n as usize),
            },
            Cpu::NoIndex => CpuState {
                index: None,
                claimable: None,
            },
        };
        set_cpu(state);
    }

    // --- checks ---

    /// The stats balance and agree with the model.
    fn check_stats(&self, what: &str) {
        let s = self.stats();
        let m = &self.model;
        assert!(s.balances(), "{what}: stats do not balance\n{s}");
        assert_eq!(s.managed_bytes, m.managed, "{what}: managed bytes\n{s}");
        assert_eq!(s.arenas, m.windows.len(), "{what}: arenas\n{s}");
        assert_eq!(s.page_run_bytes, m.run_bytes, "{what}: page run bytes\n{s}");
        assert_eq!(s.stack_bytes, m.stack_bytes, "{what}: stack bytes\n{s}");
        assert_eq!(s.stacks, m.pooled_stacks, "{what}: pooled stacks\n{s}");
        assert_eq!(s.large_bytes, m.large_bytes, "{what}: large bytes\n{s}");
        assert_eq!(
            s.large_objects, m.large_objects,
            "{what}: large objects\n{s}"
        );
        assert_eq!(s.bad_frees, m.bad_frees, "{what}: bad frees\n{s}");
        let tiny = m.config.tiny_blocks;
        for class in SizeClass::all() {
            let i = class.index();
            let (got, model) = (s.classes[i].objects, m.objects_per_class[i]);
            if tiny && class == class8() {
                // Tiny requests take 8-byte objects only on CPUs without a cache.
                assert!(
                    (m.class8_not_tiny..=model).contains(&got),
                    "{what}: {got} 8-byte objects, model {}..={model}\n{s}",
                    m.class8_not_tiny
                );
            } else if tiny && class == class16() {
                // Tiny blocks not held by a CPU hold at least one live tiny object.
                let most = model + m.tiny_eligible;
                assert!(
                    (model..=most).contains(&got),
                    "{what}: {got} 16-byte objects, model {model}..={most}\n{s}"
                );
            } else {
                assert_eq!(got, model, "{what}: objects of class {}\n{s}", class.size());
            }
        }
    }

    /// Actions between two periodic `check_invariants()` walks.
    fn walk_period(&self) -> usize {
        CHECK_EVERY * (self.arena_size() / CHECK_ARENA).max(1)
    }

    fn check_all(&self, what: &str) {
        if let Err(error) = self.heap.check_invariants() {
            panic!("{what}: check_invariants: {error}\n{}", self.stats());
        }
        self.check_stats(what);
    }

    fn act(&mut self, action: &Action) {
        match *action {
            Action::Alloc {
                size,
                align,
                zeroed,
                global,
            } => {
                if let Ok(layout) = Layout::from_size_align(size.get(), align.get()) {
                    self.alloc(layout, zeroed, global);
                }
            }
            Action::Burst { of, count } => {
                for _ in 0..count {
                    let done = match of {
                        BurstOf::Objects { size, align } => {
                            match Layout::from_size_align(size.get(), align.get()) {
                                Ok(layout) => self.alloc(layout, false, false),
                                Err(_) => false,
                            }
                        }
                        BurstOf::Stacks { size } => self.alloc_stack(size.get()),
                        BurstOf::Pages { count, align } => {
                            self.alloc_pages(count.get(), align.get())
                        }
                    };
                    if !done {
                        break;
                    }
                }
            }
            Action::Free { index, global } => self.free(index as usize, global),
            Action::FreeMany { of, index, count } => {
                for _ in 0..count {
                    match of {
                        Kind::Objects => self.free(index as usize, false),
                        Kind::Stacks => self.free_stack(index as usize),
                        Kind::Pages => self.free_pages(index as usize),
                    }
                }
            }
            Action::Realloc {
                index,
                size,
                global,
            } => self.realloc(index as usize, size, global),
            Action::AllocPages { count, align } => {
                self.alloc_pages(count.get(), align.get());
            }
            Action::FreePages { index } => self.free_pages(index as usize),
            Action::AllocStack { size } => {
                self.alloc_stack(size.get());
            }
            Action::FreeStack { index } => self.free_stack(index as usize),
            Action::AddMemory(add) => self.add_memory(add),
            Action::SwitchCpu(cpu) => self.switch_cpu(cpu),
            Action::DrainCpu => self.heap.drain_cpu(),
            Action::DrainOffline(cpu) => {
                // SAFETY: one thread runs every "CPU": none is in a heap call now.
                unsafe { self.heap.drain_offline_cpu(cpu as usize % (MAX_CPUS + 4)) }
            }
            Action::Trim => self.heap.trim(),
            Action::BadFree { index, kind } => self.bad_free(index as usize, kind),
            Action::Check => {
                // At most 4 times as often as the periodic walk: a walk of a 1 GiB
                // window takes tens of milliseconds.
                if self.actions - self.last_walk >= self.walk_period() / 4 {
                    self.last_walk = self.actions;
                    self.check_all("check action");
                }
            }
        }
        self.no_refusals("action");
        self.actions += 1;
        if self.actions - self.last_walk >= self.walk_period() {
            self.last_walk = self.actions;
            self.check_all("periodic check");
        } else {
            self.check_stats("after action");
        }
    }

    /// Frees everything, drains every CPU, trims, and checks that every page is back.
    fn finish(mut self) {
        self.check_all("before the final frees");
        while !self.model.objects.is_empty() {
            self.free(self.model.objects.len() - 1, false);
        }
        while !self.model.runs.is_empty() {
            self.free_pages(0);
        }
        while !self.model.stacks.is_empty() {
            self.free_stack(0);
        }
        for cpu in 0..MAX_CPUS {
            // SAFETY: one thread runs every "CPU": none is in a heap call now.
            unsafe { self.heap.drain_offline_cpu(cpu) };
        }
        self.heap.trim();
        self.check_all("after freeing everything");
        let s = self.stats();
        assert_eq!(
            (s.in_use_bytes, s.cached_bytes, s.span_free_bytes),
            (0, 0, 0),
            "after freeing everything, draining and trimming\n{s}"
        );
        assert_eq!(
            s.free_bytes + s.metadata_bytes,
            s.managed_bytes,
            "pages missing\n{s}"
        );
        // Left as metadata: each arena's own, each CPU cache's pages (at most 7, see
        // the README) and the descriptor slabs of the caches' spans.
        let arena_meta = s.arenas * self.model.arena_meta;
        let kept = s.metadata_bytes - arena_meta;
        let caches = s.cpu_caches * PAGE_SIZE;
        assert!(
            s.metadata_bytes >= arena_meta && (caches..=caches * 8).contains(&kept),
            "metadata left: {kept} bytes beyond the arenas' for {} caches\n{s}",
            s.cpu_caches
        );
        assert_eq!(
            s.free_bytes,
            self.model.managed - arena_meta - kept,
            "free pages at the end\n{s}"
        );
    }
}

fuzz_target!(|input: Input| {
    let mut run = Run1::new(&input.setup);
    run.add_memory(input.setup.first);
    run.check_all("after the first range");
    for action in &input.actions {
        run.act(action);
    }
    run.finish();
});
