//! Randomized differential test of the heap against a shadow model of address ranges.
//!
//! The model is a `BTreeMap` from the start of every live block to its end, layout
//! and id. A seeded stream of operations (allocate, allocate_zeroed, deallocate,
//! reallocate, alloc_pages, free_pages) runs against the heap and the model at once,
//! and after every operation the test checks that:
//!
//! - a new block overlaps no live block (one range query in the model), lies inside
//!   the memory given to the heap, and honours its alignment;
//! - `allocate_zeroed` memory reads all zero;
//! - every block keeps the pattern written into it when it was allocated (derived
//!   from its address and id, so a block written through a stale or overlapping
//!   pointer shows up), checked in full at free and before a resize;
//! - `reallocate` keeps the old pattern in the first `min(old, new)` bytes (checked
//!   against the old address and id), and a failed `reallocate` leaves the old block
//!   untouched;
//! - `check_invariants()` holds every 10 000 operations and at the end, where the
//!   stats balance and `in_use_bytes` covers the model's live bytes;
//! - after freeing everything, `in_use_bytes == 0`;
//! - out of memory (`None`) happens only when the model's live bytes are at least
//!   half of the usable memory, and rarely (at most 1 in 1000 operations, except in
//!   `spanheap_differential_near_full`, which drives the heap into it on purpose);
//! - the heap refused no free as wrong (`stats().bad_frees == 0`).
//!
//! Sizes run from 1 B to 1 MiB (70% up to 256 B, 20% up to 4 KiB, 9% up to 64 KiB,
//! 1% up to 1 MiB), alignments from 1 to 4096 (90% up to 16); 1% of allocations are
//! page runs of 1 to 256 pages aligned up to 2 MiB. The live set follows a target that
//! changes every 25 000 operations, with drain phases down to zero.
//!
//! The heap tests: `spanheap_differential` (256 MiB, 64 MiB arenas, the inherent
//! API), `spanheap_differential_hot_add_small_arenas` (ragged unaligned ranges with
//! holes, most of them hot-added during the run, 4 MiB arenas),
//! `spanheap_differential_global_alloc` (the `GlobalAlloc` entry points) and
//! `spanheap_differential_near_full` (32 MiB, live target beyond the heap).
//!
//! The harness itself is proven first against `std::alloc::System` and against
//! deliberately broken bump allocators that it must catch.
//!
//! # Environment
//!
//! - `SPANHEAP_DIFF_OPS`: operations of the main test (default 1 000 000 in release,
//!   200 000 in debug); the other heap tests run a quarter (near-full: an eighth) of
//!   it. The full run is `cargo test --release -p spanheap --test differential`
//!   (about 10 s); e.g. `SPANHEAP_DIFF_OPS=20000000` for a long one.
//! - `SPANHEAP_DIFF_SEED`: the seed of every test (each prints its seed; a failure
//!   prints the seed, the operation index, the last operations and a command line
//!   that replays it).

mod common;

use common::{
    check_pattern, env_u64, fill_pattern, first_nonzero, pattern_seed, skewed_align, skewed_size,
    Backing, Rng, PAGE,
};
use spanheap::platform::{HostThreads, Platform, Uncached};
use spanheap::{Config, MemoryRange, SpanHeap};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ptr::NonNull;

// ---------------------------------------------------------------------------------
// The allocators under test.
// ---------------------------------------------------------------------------------

/// The operations the harness drives, with the heap's signatures.
trait Backend {
    fn name(&self) -> String;
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>>;
    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>>;
    /// # Safety
    /// `ptr` is live, from this backend, with `layout`.
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout);
    /// # Safety
    /// `ptr` is live, from this backend, with `layout`.
    unsafe fn reallocate(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>>;
    fn alloc_pages(&self, count: usize, align: usize) -> Option<NonNull<u8>>;
    /// # Safety
    /// `ptr` is a live run of `count` pages from this backend.
    unsafe fn free_pages(&self, ptr: NonNull<u8>, count: usize);
    /// Called before operation `op`: a chance to add memory.
    fn before_op(&self, _op: u64) {}
    /// `true` when `[start, end)` lies inside memory the backend may hand out.
    fn owns(&self, _start: usize, _end: usize) -> bool {
        true
    }
    /// Bytes the backend could hand out when empty; `None` when it never runs out.
    fn usable_bytes(&self) -> Option<usize>;
    /// The backend's own checks, given the model's live block count and bytes.
    fn check(&self, live_blocks: usize, live_bytes: usize) -> Result<(), String>;
}

/// `std::alloc::System`, the reference the harness is proven against.
#[derive(Default)]
struct SystemBackend {
    /// Alignment of each live page run (System needs the layout to free).
    page_aligns: RefCell<HashMap<usize, usize>>,
}

impl Backend for SystemBackend {
    fn name(&self) -> String {
        "std::alloc::System".into()
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: sizes are non-zero.
        NonNull::new(unsafe { System.alloc(layout) })
    }
    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: sizes are non-zero.
        NonNull::new(unsafe { System.alloc_zeroed(layout) })
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
    unsafe fn reallocate(&self, ptr: NonNull<u8>, layout: Layout, n: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded from the caller; `n` is non-zero.
        NonNull::new(unsafe { System.realloc(ptr.as_ptr(), layout, n) })
    }
    fn alloc_pages(&self, count: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(count * PAGE, align.max(PAGE)).ok()?;
        let ptr = self.allocate(layout)?;
        self.page_aligns
            .borrow_mut()
            .insert(ptr.as_ptr() as usize, layout.align());
        Some(ptr)
    }
    unsafe fn free_pages(&self, ptr: NonNull<u8>, count: usize) {
        let align = self
            .page_aligns
            .borrow_mut()
            .remove(&(ptr.as_ptr() as usize))
            .unwrap();
        let layout = Layout::from_size_align(count * PAGE, align).unwrap();
        // SAFETY: allocated by `alloc_pages` with this layout.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
    fn usable_bytes(&self) -> Option<usize> {
        None
    }
    fn check(&self, _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
}

/// How a [`BumpBackend`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// None: a correct (never reusing) bump allocator.
    None,
    /// Every 64th block starts where the previous one did (when aligned).
    Overlap,
    /// `reallocate` moves without copying.
    ReallocForgetsCopy,
    /// `allocate_zeroed` does not clear (the buffer is dirty).
    NotZeroed,
    /// Every 64th block with alignment above 1 is one byte off.
    Misaligned,
    /// Every 16th `deallocate` scribbles over the block handed out last.
    FreeScribbles,
}

/// A bump allocator over one buffer, correct or with a [`Bug`], to prove that the
/// harness catches each kind of fault. Every write stays inside the buffer.
struct BumpBackend {
    buffer: Backing,
    next: Cell<usize>,
    last: Cell<usize>,
    count: Cell<u64>,
    frees: Cell<u64>,
    bug: Bug,
}

impl BumpBackend {
    fn new(bug: Bug) -> Self {
        let buffer = Backing::new(512 << 20, 1 << 21);
        let next = Cell::new(buffer.start() + PAGE);
        let last = Cell::new(buffer.start() + PAGE);
        Self {
            next,
            last,
            buffer,
            count: Cell::new(0),
            frees: Cell::new(0),
            bug,
        }
    }

    fn bump(&self, layout: Layout) -> Option<NonNull<u8>> {
        let n = self.count.get() + 1;
        self.count.set(n);
        let mut start = self.next.get().next_multiple_of(layout.align());
        if self.bug == Bug::Overlap && n % 64 == 0 && self.last.get() % layout.align() == 0 {
            start = self.last.get();
        }
        if self.bug == Bug::Misaligned && n % 64 == 0 && layout.align() > 1 {
            start += 1;
        }
        // Leave room for `FreeScribbles` to write past the end.
        let end = start + layout.size() + 16;
        if end > self.buffer.end() {
            return None;
        }
        self.next.set(self.next.get().max(end));
        self.last.set(start);
        NonNull::new(start as *mut u8)
    }
}

impl Backend for BumpBackend {
    fn name(&self) -> String {
        format!("bump allocator with bug {:?}", self.bug)
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        self.bump(layout)
    }
    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        let ptr = self.bump(layout)?;
        let byte = if self.bug == Bug::NotZeroed { 0xAA } else { 0 };
        // SAFETY: inside our buffer.
        unsafe { ptr.as_ptr().write_bytes(byte, layout.size()) };
        Some(ptr)
    }
    unsafe fn deallocate(&self, _: NonNull<u8>, _: Layout) {
        self.frees.set(self.frees.get() + 1);
        if self.bug == Bug::FreeScribbles && self.frees.get() % 16 == 0 {
            // SAFETY: inside our buffer (bump leaves 16 bytes after each block).
            unsafe { (self.last.get() as *mut u8).write_bytes(0x55, 16) };
        }
    }
    unsafe fn reallocate(&self, ptr: NonNull<u8>, layout: Layout, n: usize) -> Option<NonNull<u8>> {
        let new = self.bump(Layout::from_size_align(n, layout.align()).ok()?)?;
        if self.bug != Bug::ReallocForgetsCopy {
            // SAFETY: both blocks are inside our buffer and distinct.
            unsafe {
                new.as_ptr()
                    .copy_from_nonoverlapping(ptr.as_ptr(), layout.size().min(n))
            };
        }
        Some(new)
    }
    fn alloc_pages(&self, count: usize, align: usize) -> Option<NonNull<u8>> {
        self.bump(Layout::from_size_align(count * PAGE, align.max(PAGE)).ok()?)
    }
    unsafe fn free_pages(&self, _: NonNull<u8>, _: usize) {}
    fn owns(&self, start: usize, end: usize) -> bool {
        start >= self.buffer.start() && end <= self.buffer.end()
    }
    fn usable_bytes(&self) -> Option<usize> {
        None
    }
    fn check(&self, _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
}

/// How the harness reaches [`SpanHeap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// The inherent methods (`allocate`, `deallocate`, ...).
    Inherent,
    /// `GlobalAlloc` (`alloc`, `dealloc`, ...), null meaning `None`.
    GlobalAlloc,
}

/// A [`SpanHeap`] over backing memory, optionally fed more ranges as the run goes.
struct HeapBackend<P: Platform> {
    heap: SpanHeap<P>,
    entry: Entry,
    /// The ranges given to the heap so far.
    added: RefCell<Vec<MemoryRange>>,
    /// Ranges still to add, each with the operation before which it is added.
    pending: RefCell<Vec<(u64, MemoryRange)>>,
    /// Keeps the memory alive; declared last so that it is dropped after the heap.
    _backing: Backing,
}

impl<P: Platform> HeapBackend<P> {
    /// A heap with `config` over `backing`, given `initial` now and each of `later`
    /// before its operation index.
    fn new(
        config: Config,
        entry: Entry,
        backing: Backing,
        initial: &[MemoryRange],
        later: Vec<(u64, MemoryRange)>,
    ) -> Self {
        let this = Self {
            heap: SpanHeap::with_config(config),
            entry,
            added: RefCell::new(Vec::new()),
            pending: RefCell::new(later),
            _backing: backing,
        };
        for &range in initial {
            this.add(range);
        }
        this
    }

    fn add(&self, range: MemoryRange) {
        assert!(range.start >= self._backing.start() && range.end <= self._backing.end());
        // SAFETY: the range is inside our backing memory, which lives as long as the
        // heap, and is given to the heap once.
        unsafe { self.heap.add_memory(range) }
            .unwrap_or_else(|e| panic!("add_memory({range:x?}) failed: {e:?}"));
        self.added.borrow_mut().push(range);
    }
}

/// A heap with `config` over `size` bytes of fresh memory given as one range.
fn one_range<P: Platform>(size: usize, config: Config, entry: Entry) -> HeapBackend<P> {
    let backing = Backing::new(size, 1 << 21);
    let range = MemoryRange::new(backing.start(), backing.end());
    HeapBackend::new(config, entry, backing, &[range], Vec::new())
}

impl<P: Platform> Backend for HeapBackend<P> {
    fn name(&self) -> String {
        let arena = self.heap.config().arena_size >> 20;
        let platform = std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or("?");
        format!(
            "SpanHeap<{platform}> ({:?}, {arena} MiB arenas)",
            self.entry
        )
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        match self.entry {
            Entry::Inherent => self.heap.allocate(layout),
            // SAFETY: sizes are non-zero.
            Entry::GlobalAlloc => NonNull::new(unsafe { self.heap.alloc(layout) }),
        }
    }
    fn allocate_zeroed(&self, layout: Layout) -> Option<NonNull<u8>> {
        match self.entry {
            Entry::Inherent => self.heap.allocate_zeroed(layout),
            // SAFETY: sizes are non-zero.
            Entry::GlobalAlloc => NonNull::new(unsafe { self.heap.alloc_zeroed(layout) }),
        }
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        match self.entry {
            // SAFETY: forwarded from the caller.
            Entry::Inherent => unsafe { self.heap.deallocate(ptr, layout) },
            // SAFETY: forwarded from the caller.
            Entry::GlobalAlloc => unsafe { self.heap.dealloc(ptr.as_ptr(), layout) },
        }
    }
    unsafe fn reallocate(&self, ptr: NonNull<u8>, layout: Layout, n: usize) -> Option<NonNull<u8>> {
        match self.entry {
            // SAFETY: forwarded from the caller; `n` is at most 1 MiB.
            Entry::Inherent => unsafe { self.heap.reallocate(ptr, layout, n) },
            Entry::GlobalAlloc => {
                // SAFETY: as above.
                NonNull::new(unsafe { self.heap.realloc(ptr.as_ptr(), layout, n) })
            }
        }
    }
    fn alloc_pages(&self, count: usize, align: usize) -> Option<NonNull<u8>> {
        self.heap.alloc_pages(count, align)
    }
    unsafe fn free_pages(&self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.heap.free_pages(ptr, count) }
    }
    fn before_op(&self, op: u64) {
        let due: Vec<MemoryRange> = {
            let mut pending = self.pending.borrow_mut();
            let (due, rest) = pending.drain(..).partition(|&(at, _)| at <= op);
            *pending = rest;
            due.into_iter().map(|(_, range)| range).collect()
        };
        for range in due {
            self.add(range);
        }
    }
    fn owns(&self, start: usize, end: usize) -> bool {
        self.added
            .borrow()
            .iter()
            .any(|r| start >= r.start && end <= r.end)
    }
    fn usable_bytes(&self) -> Option<usize> {
        let stats = self.heap.stats();
        Some(stats.managed_bytes - stats.metadata_bytes)
    }
    fn check(&self, live_blocks: usize, live_bytes: usize) -> Result<(), String> {
        self.heap
            .check_invariants()
            .map_err(|e| format!("check_invariants: {e:?}"))?;
        let stats = self.heap.stats();
        if !stats.balances() {
            return Err(format!("stats do not balance: \n{stats}"));
        }
        if stats.in_use_bytes < live_bytes {
            return Err(format!(
                "stats.in_use_bytes {} < the model's live bytes {live_bytes}",
                stats.in_use_bytes
            ));
        }
        if live_blocks == 0 && stats.in_use_bytes != 0 {
            return Err(format!(
                "all blocks freed but stats.in_use_bytes = {}",
                stats.in_use_bytes
            ));
        }
        if stats.bad_frees != 0 {
            return Err(format!(
                "the heap refused {} frees as wrong",
                stats.bad_frees
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The shadow model.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// From `allocate`, `allocate_zeroed` or `reallocate`.
    Object,
    /// From `alloc_pages(count, ..)`.
    Pages { count: usize },
}

/// A live block: `[start, end)` with the layout it was allocated with.
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    layout: Layout,
    id: u64,
    kind: Kind,
}

impl Block {
    fn len(&self) -> usize {
        self.end - self.start
    }
    fn seed(&self) -> u64 {
        pattern_seed(self.start, self.id)
    }
    /// # Safety
    /// The block is live in the backend.
    unsafe fn fill(&self) {
        // SAFETY: a live block of `len` bytes.
        unsafe { fill_pattern(self.start as *mut u8, self.len(), self.seed()) }
    }
    /// # Safety
    /// The block is live in the backend.
    unsafe fn verify(&self) -> Result<(), String> {
        // SAFETY: a live block of `len` bytes.
        match unsafe { check_pattern(self.start as *const u8, self.len(), self.seed()) } {
            None => Ok(()),
            Some((off, got, want)) => Err(format!(
                "pattern of block {self:x?} broken at offset {off}: {got:#04x}, expected {want:#04x}"
            )),
        }
    }
}

/// The live blocks by start address, plus a dense list of starts for picking a
/// random block in O(1).
#[derive(Default)]
struct Model {
    /// start -> (end, layout, id, kind, index in `starts`).
    blocks: BTreeMap<usize, (usize, Layout, u64, Kind, usize)>,
    starts: Vec<usize>,
    live_bytes: usize,
    next_id: u64,
}

impl Model {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    /// The live block overlapping `[start, end)`, if any.
    fn overlapping(&self, start: usize, end: usize) -> Option<Block> {
        let (&s, &(e, layout, id, kind, _)) = self.blocks.range(..end).next_back()?;
        (e > start).then_some(Block {
            start: s,
            end: e,
            layout,
            id,
            kind,
        })
    }

    /// Records `block`; an error names the live block it overlaps.
    fn insert(&mut self, block: Block) -> Result<(), String> {
        if let Some(other) = self.overlapping(block.start, block.end) {
            return Err(format!(
                "new block {block:x?} overlaps live block {other:x?}"
            ));
        }
        let slot = self.starts.len();
        self.starts.push(block.start);
        self.blocks.insert(
            block.start,
            (block.end, block.layout, block.id, block.kind, slot),
        );
        self.live_bytes += block.layout.size();
        Ok(())
    }

    /// Removes and returns the block at dense index `slot`.
    fn remove_slot(&mut self, slot: usize) -> Block {
        let start = self.starts.swap_remove(slot);
        if let Some(&moved) = self.starts.get(slot) {
            self.blocks.get_mut(&moved).expect("moved block is live").4 = slot;
        }
        let (end, layout, id, kind, _) = self.blocks.remove(&start).expect("block is live");
        self.live_bytes -= layout.size();
        Block {
            start,
            end,
            layout,
            id,
            kind,
        }
    }
}

// ---------------------------------------------------------------------------------
// The operation stream.
// ---------------------------------------------------------------------------------

/// One operation as it ran, for the failure report.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read through Debug only
enum Op {
    Alloc {
        size: usize,
        align: usize,
        zeroed: bool,
        result: Option<usize>,
    },
    Free {
        addr: usize,
        size: usize,
        align: usize,
    },
    Realloc {
        addr: usize,
        size: usize,
        align: usize,
        new_size: usize,
        result: Option<usize>,
    },
    AllocPages {
        count: usize,
        align: usize,
        result: Option<usize>,
    },
    FreePages {
        addr: usize,
        count: usize,
    },
}

/// Parameters of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// The test function, for the replay command line.
    test: &'static str,
    seed: u64,
    ops: u64,
    /// The live-block target is drawn from `0..=max_live` every `phase` operations.
    max_live: usize,
    phase: u64,
    /// `check()` every this many operations.
    check_every: u64,
    /// Out-of-memory results allowed per 1000 operations.
    ooms_per_mille: u64,
}

impl Params {
    /// `ops_default` operations (or `SPANHEAP_DIFF_OPS`), the seed from
    /// `SPANHEAP_DIFF_SEED` or `seed`.
    fn new(test: &'static str, seed: u64, ops: u64, max_live: usize) -> Self {
        let seed = env_u64("SPANHEAP_DIFF_SEED", seed);
        Self {
            test,
            seed,
            ops,
            max_live,
            phase: 25_000,
            check_every: 10_000,
            ooms_per_mille: 1,
        }
    }
}

/// Operations of the main test: `SPANHEAP_DIFF_OPS`, else 1 000 000 in release and
/// 200 000 in debug.
fn main_ops() -> u64 {
    let default = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    env_u64("SPANHEAP_DIFF_OPS", default)
}

const LOG_LEN: usize = 48;

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    allocs: u64,
    zeroed: u64,
    frees: u64,
    reallocs: u64,
    reallocs_in_place: u64,
    pages: u64,
    ooms: u64,
    peak_live_blocks: usize,
    peak_live_bytes: usize,
}

struct Runner<'a, B: Backend> {
    backend: &'a B,
    params: Params,
    rng: Rng,
    model: Model,
    op: u64,
    log: Vec<(u64, Op)>,
    outcome: Outcome,
}

impl<'a, B: Backend> Runner<'a, B> {
    fn new(backend: &'a B, params: Params) -> Self {
        Self {
            backend,
            params,
            rng: Rng::new(params.seed),
            model: Model::default(),
            op: 0,
            log: Vec::with_capacity(LOG_LEN),
            outcome: Outcome::default(),
        }
    }

    fn record(&mut self, op: Op) {
        if self.log.len() == LOG_LEN {
            self.log.remove(0);
        }
        self.log.push((self.op, op));
    }

    /// Updates the result of the operation just recorded.
    fn set_result(&mut self, result: Option<NonNull<u8>>) {
        let addr = result.map(|p| p.as_ptr() as usize);
        if let Some((
            _,
            Op::Alloc { result, .. } | Op::Realloc { result, .. } | Op::AllocPages { result, .. },
        )) = self.log.last_mut()
        {
            *result = addr;
        }
    }

    /// Panics with everything needed to replay the failure.
    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        let p = &self.params;
        let mut msg = format!(
            "differential test failed: {what}\n  backend: {}\n  seed: {:#x}, operation {} of {}, \
             {} live blocks ({} bytes)\n  last operations (oldest first):\n",
            self.backend.name(),
            p.seed,
            self.op,
            p.ops,
            self.model.len(),
            self.model.live_bytes,
        );
        for (i, op) in &self.log {
            let _ = writeln!(msg, "    #{i}: {op:x?}");
        }
        let _ = write!(
            msg,
            "  replay: SPANHEAP_DIFF_SEED={:#x} cargo test -p spanheap --test differential {} \
             (operation {} fails; SPANHEAP_DIFF_OPS sets the run length)",
            p.seed, p.test, self.op
        );
        panic!("{msg}");
    }

    fn ensure(&self, result: Result<(), String>) {
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    /// Runs the whole stream, then frees everything and runs the final checks.
    fn run(mut self) -> Outcome {
        eprintln!(
            "{}: seed {:#x}, {} operations on {}",
            self.params.test,
            self.params.seed,
            self.params.ops,
            self.backend.name()
        );
        let mut target = 0;
        while self.op < self.params.ops {
            if self.op % self.params.phase == 0 {
                target = if self.rng.chance(125) {
                    0
                } else {
                    self.rng.range(0, self.params.max_live)
                };
            }
            self.backend.before_op(self.op);
            self.step(target);
            self.outcome.peak_live_blocks = self.outcome.peak_live_blocks.max(self.model.len());
            self.outcome.peak_live_bytes = self.outcome.peak_live_bytes.max(self.model.live_bytes);
            self.op += 1;
            if self.op % self.params.check_every == 0 {
                self.check();
            }
        }
        self.check();
        while self.model.len() > 0 {
            let slot = self.rng.below(self.model.len());
            self.free(slot);
            self.op += 1;
        }
        self.check();
        let max_ooms = self.params.ops * self.params.ooms_per_mille / 1000 + 1;
        if self.outcome.ooms > max_ooms {
            self.fail(&format!(
                "{} out-of-memory results, more than {max_ooms}",
                self.outcome.ooms
            ));
        }
        eprintln!("{}: {:?}", self.params.test, self.outcome);
        self.outcome
    }

    fn check(&self) {
        self.ensure(self.backend.check(self.model.len(), self.model.live_bytes));
    }

    fn step(&mut self, target: usize) {
        let live = self.model.len();
        let grow = if live < target { 650 } else { 350 };
        if live == 0 || self.rng.chance(grow) {
            match self.rng.below(100) {
                0 => self.alloc_pages(),
                1..=15 => self.alloc(true),
                _ => self.alloc(false),
            }
        } else {
            let slot = self.rng.below(live);
            if self.rng.chance(250) {
                self.realloc(slot);
            } else {
                self.free(slot);
            }
        }
    }

    /// `None` from the backend: allowed only when the model holds at least half of
    /// the usable memory.
    fn out_of_memory(&mut self, request: usize) {
        self.outcome.ooms += 1;
        match self.backend.usable_bytes() {
            Some(usable) if 2 * (self.model.live_bytes + request) >= usable => {}
            usable => self.fail(&format!(
                "out of memory for {request} bytes with only {} live bytes of {usable:?} usable",
                self.model.live_bytes
            )),
        }
    }

    /// Checks a block fresh from the backend (placement, alignment, overlap) and
    /// records it.
    fn admit(&mut self, block: Block) {
        if !self.backend.owns(block.start, block.end) {
            self.fail(&format!("block {block:x?} lies outside the heap's memory"));
        }
        if block.start % block.layout.align() != 0 {
            self.fail(&format!("block {block:x?} is misaligned"));
        }
        let inserted = self.model.insert(block);
        self.ensure(inserted);
    }

    fn alloc(&mut self, zeroed: bool) {
        let layout =
            Layout::from_size_align(skewed_size(&mut self.rng), skewed_align(&mut self.rng))
                .expect("valid layout");
        self.record(Op::Alloc {
            size: layout.size(),
            align: layout.align(),
            zeroed,
            result: None,
        });
        let ptr = if zeroed {
            self.backend.allocate_zeroed(layout)
        } else {
            self.backend.allocate(layout)
        };
        self.set_result(ptr);
        let Some(ptr) = ptr else {
            return self.out_of_memory(layout.size());
        };
        let start = ptr.as_ptr() as usize;
        let id = self.model.new_id();
        let block = Block {
            start,
            end: start + layout.size(),
            layout,
            id,
            kind: Kind::Object,
        };
        self.admit(block);
        if zeroed {
            self.outcome.zeroed += 1;
            // SAFETY: the block is live.
            if let Some((off, byte)) = unsafe { first_nonzero(ptr.as_ptr(), layout.size()) } {
                self.fail(&format!(
                    "allocate_zeroed block {block:x?}: byte {off} is {byte:#04x}"
                ));
            }
        }
        self.outcome.allocs += 1;
        // SAFETY: the block is live.
        unsafe { block.fill() };
    }

    fn alloc_pages(&mut self) {
        let count = if self.rng.chance(900) {
            self.rng.range(1, 16)
        } else {
            self.rng.range(17, 256)
        };
        let align = if self.rng.chance(20) {
            2 << 20
        } else {
            PAGE << self.rng.below(6)
        };
        self.record(Op::AllocPages {
            count,
            align,
            result: None,
        });
        let ptr = self.backend.alloc_pages(count, align);
        self.set_result(ptr);
        let Some(ptr) = ptr else {
            return self.out_of_memory(count * PAGE);
        };
        let start = ptr.as_ptr() as usize;
        let layout = Layout::from_size_align(count * PAGE, align).unwrap();
        let id = self.model.new_id();
        let block = Block {
            start,
            end: start + count * PAGE,
            layout,
            id,
            kind: Kind::Pages { count },
        };
        self.admit(block);
        self.outcome.pages += 1;
        // SAFETY: the block is live.
        unsafe { block.fill() };
    }

    fn free(&mut self, slot: usize) {
        let block = self.model.remove_slot(slot);
        let ptr = NonNull::new(block.start as *mut u8).unwrap();
        // SAFETY: the block is live until the call below.
        self.ensure(unsafe { block.verify() });
        match block.kind {
            Kind::Object => {
                let (size, align) = (block.layout.size(), block.layout.align());
                self.record(Op::Free {
                    addr: block.start,
                    size,
                    align,
                });
                // SAFETY: live, from this backend, with this layout; forgotten by the model.
                unsafe { self.backend.deallocate(ptr, block.layout) };
            }
            Kind::Pages { count } => {
                self.record(Op::FreePages {
                    addr: block.start,
                    count,
                });
                // SAFETY: a live run of `count` pages; forgotten by the model.
                unsafe { self.backend.free_pages(ptr, count) };
            }
        }
        self.outcome.frees += 1;
    }

    fn realloc(&mut self, slot: usize) {
        let start = self.model.starts[slot];
        if let Kind::Pages { .. } = self.model.blocks[&start].3 {
            return self.free(slot);
        }
        let old = self.model.remove_slot(slot);
        // SAFETY: the block is live.
        self.ensure(unsafe { old.verify() });
        let new_size = if self.rng.chance(400) {
            let delta = self.rng.range(0, old.len() / 4 + 8);
            if self.rng.chance(500) {
                old.len() + delta
            } else {
                old.len().saturating_sub(delta).max(1)
            }
        } else {
            skewed_size(&mut self.rng)
        };
        let (size, align) = (old.layout.size(), old.layout.align());
        self.record(Op::Realloc {
            addr: old.start,
            size,
            align,
            new_size,
            result: None,
        });
        let ptr = NonNull::new(old.start as *mut u8).unwrap();
        // SAFETY: live, from this backend, with this layout; new_size <= 1 MiB.
        let new = unsafe { self.backend.reallocate(ptr, old.layout, new_size) };
        self.set_result(new);
        let Some(new) = new else {
            // The old block must be untouched and still live.
            self.model
                .insert(old)
                .expect("re-inserting a block that was live");
            // SAFETY: still live after a failed reallocate.
            self.ensure(unsafe { old.verify() });
            return self.out_of_memory(new_size);
        };
        let start = new.as_ptr() as usize;
        let layout = Layout::from_size_align(new_size, align).unwrap();
        let id = self.model.new_id();
        let block = Block {
            start,
            end: start + new_size,
            layout,
            id,
            kind: Kind::Object,
        };
        self.admit(block);
        let kept = size.min(new_size);
        // SAFETY: the new block is live and at least `kept` bytes.
        if let Some((off, got, want)) = unsafe { check_pattern(new.as_ptr(), kept, old.seed()) } {
            self.fail(&format!(
                "reallocate {old:x?} -> {block:x?}: byte {off} of the kept {kept} is {got:#04x}, \
                 expected {want:#04x} (the old pattern)"
            ));
        }
        self.outcome.reallocs += 1;
        if start == old.start {
            self.outcome.reallocs_in_place += 1;
        }
        // SAFETY: the block is live.
        unsafe { block.fill() };
    }
}

// ---------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------

/// The model refuses overlaps and the pattern check finds a single changed byte:
/// the two checks everything else rests on.
#[test]
fn model_and_pattern_self_test() {
    let mut model = Model::default();
    let layout = Layout::from_size_align(16, 8).unwrap();
    let block = |start: usize, len: usize| Block {
        start,
        end: start + len,
        layout,
        id: 1,
        kind: Kind::Object,
    };
    model.insert(block(100, 16)).unwrap();
    model.insert(block(116, 16)).unwrap();
    model.insert(block(84, 16)).unwrap();
    for (start, len) in [(99, 2), (131, 1), (90, 100), (110, 1), (83, 2), (60, 25)] {
        assert!(
            model.insert(block(start, len)).is_err(),
            "overlap at {start}+{len} missed"
        );
    }
    model.insert(block(132, 1)).unwrap();
    assert_eq!(model.len(), 4);
    let removed = model.remove_slot(0);
    assert_eq!(removed.start, 100);
    model.insert(block(100, 16)).unwrap();

    let mut buf = vec![0u8; 1000];
    for len in [0, 1, 7, 8, 9, 63, 1000] {
        // SAFETY: within `buf`.
        unsafe { fill_pattern(buf.as_mut_ptr(), len, 42) };
        // SAFETY: within `buf`.
        assert_eq!(unsafe { check_pattern(buf.as_ptr(), len, 42) }, None);
        // A prefix of a pattern is the pattern of the prefix.
        // SAFETY: within `buf`.
        assert_eq!(unsafe { check_pattern(buf.as_ptr(), len / 2, 42) }, None);
        for k in [0, len / 2, len.saturating_sub(1)] {
            if k < len {
                buf[k] ^= 0x10;
                // SAFETY: within `buf`.
                let found = unsafe { check_pattern(buf.as_ptr(), len, 42) };
                assert_eq!(found.map(|f| f.0), Some(k), "flip at {k} of {len} missed");
                buf[k] ^= 0x10;
            }
        }
        if len > 0 {
            // SAFETY: within `buf`.
            assert!(unsafe { check_pattern(buf.as_ptr(), len, 43) }.is_some());
        }
    }
}

/// The harness against `std::alloc::System`: it must pass, which shows that the
/// harness reports no false faults.
#[test]
fn harness_against_system() {
    let ops = if cfg!(debug_assertions) {
        15_000
    } else {
        200_000
    };
    let params = Params::new("harness_against_system", 0x5157_e4a1, ops, 4_000);
    let outcome = Runner::new(&SystemBackend::default(), params).run();
    assert!(outcome.allocs > 0 && outcome.reallocs > 0 && outcome.pages > 0 && outcome.zeroed > 0);
}

/// The harness against bump allocators with one bug each: every bug must be caught,
/// with the right complaint, and the correct bump allocator must pass.
#[test]
fn harness_catches_broken_allocators() {
    let cases = [
        (Bug::None, ""),
        (Bug::Overlap, "overlaps live block"),
        (Bug::ReallocForgetsCopy, "(the old pattern)"),
        (Bug::NotZeroed, "allocate_zeroed block"),
        (Bug::Misaligned, "is misaligned"),
        (Bug::FreeScribbles, "pattern of block"),
    ];
    // Keep the expected panics of this thread off the output; others pass through.
    let this = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != this {
            previous(info);
        }
    }));
    for (bug, complaint) in cases {
        let backend = BumpBackend::new(bug);
        let params = Params::new("harness_catches_broken_allocators", 0xb0b, 10_000, 500);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Runner::new(&backend, params).run();
        }));
        match (bug, result) {
            (Bug::None, Ok(())) => {}
            (Bug::None, Err(_)) => panic!("the correct bump allocator failed"),
            (_, Ok(())) => panic!("bug {bug:?} was not caught"),
            (_, Err(payload)) => {
                let msg = payload.downcast_ref::<String>().map_or("", String::as_str);
                assert!(msg.contains(complaint), "bug {bug:?} caught with {msg:?}");
                assert!(
                    msg.contains("replay: SPANHEAP_DIFF_SEED="),
                    "no replay line: {msg}"
                );
            }
        }
    }
}

/// The main run: 256 MiB in one range with the default 64 MiB arenas, through the
/// inherent methods; `SPANHEAP_DIFF_OPS` operations (1 000 000 in release, 200 000
/// in debug).
#[test]
fn spanheap_differential() {
    let heap = one_range::<HostThreads>(256 << 20, Config::default(), Entry::Inherent);
    let params = Params::new(
        "spanheap_differential",
        0x5a4e_4ea9_0001,
        main_ops(),
        10_000,
    );
    let outcome = Runner::new(&heap, params).run();
    assert!(
        outcome.reallocs_in_place > 0,
        "no reallocate ever stayed in place: {outcome:?}"
    );
}

/// Small (4 MiB) arenas over 96 MiB given as ragged, unaligned ranges with holes:
/// a quarter of the memory at the start, the rest hot-added while the run goes. A
/// quarter of the main run's operations.
#[test]
fn spanheap_differential_hot_add_small_arenas() {
    let size = 96 << 20;
    let backing = Backing::new(size, 1 << 21);
    let mut rng = Rng::new(0x407_add);
    let mut ranges = Vec::new();
    let mut at = backing.start() + rng.range(0, 3 * PAGE);
    while at + (2 << 20) < backing.end() {
        // 1..6 MiB, unaligned ends, a gap of up to three pages (possibly none).
        let end = (at + rng.range(1 << 20, 6 << 20)).min(backing.end());
        let end = end - rng.below(PAGE);
        ranges.push(MemoryRange::new(at + rng.below(64), end));
        at = end + rng.below(3 * PAGE);
    }
    let ops = main_ops() / 4;
    let first = ranges.len() / 4;
    let later = ranges[first..]
        .iter()
        .enumerate()
        .map(|(i, &r)| ((i as u64 + 1) * ops / 2 / (ranges.len() - first) as u64, r))
        .collect();
    let config = Config {
        arena_size: 4 << 20,
        ..Config::default()
    };
    let heap =
        HeapBackend::<HostThreads>::new(config, Entry::Inherent, backing, &ranges[..first], later);
    let params = Params::new(
        "spanheap_differential_hot_add_small_arenas",
        0x5a4e_4ea9_0002,
        ops,
        4_000,
    );
    Runner::new(&heap, params).run();
    assert!(heap.pending.borrow().is_empty());
}

/// A heap driven into out of memory again and again: 32 MiB in 8 MiB arenas with a
/// live-block target up to about twice the heap. Every `None` must come with the
/// model holding at least half of the usable memory, and a failed `reallocate` must
/// leave its block intact. An eighth of the main run's operations.
#[test]
fn spanheap_differential_near_full() {
    let config = Config {
        arena_size: 8 << 20,
        ..Config::default()
    };
    let heap = one_range::<HostThreads>(32 << 20, config, Entry::Inherent);
    let mut params = Params::new(
        "spanheap_differential_near_full",
        0x5a4e_4ea9_0004,
        main_ops() / 8,
        8_000,
    );
    params.ooms_per_mille = 1000;
    params.phase = 2_500;
    let outcome = Runner::new(&heap, params).run();
    assert!(outcome.ooms > 0, "the heap never ran out: {outcome:?}");
}

/// The same through `GlobalAlloc` (`alloc`, `alloc_zeroed`, `realloc`, `dealloc`):
/// 64 MiB, 16 MiB arenas, a quarter of the main run's operations.
#[test]
fn spanheap_differential_global_alloc() {
    let config = Config {
        arena_size: 16 << 20,
        ..Config::default()
    };
    let heap = one_range::<HostThreads>(64 << 20, config, Entry::GlobalAlloc);
    let params = Params::new(
        "spanheap_differential_global_alloc",
        0x5a4e_4ea9_0003,
        main_ops() / 4,
        2_500,
    );
    Runner::new(&heap, params).run();
}

/// Without per-CPU caches ([`Uncached`]): every operation through the centrals. 128
/// MiB, default arenas, a quarter of the main run's operations.
#[test]
fn spanheap_differential_uncached() {
    let heap = one_range::<Uncached>(128 << 20, Config::default(), Entry::Inherent);
    let params = Params::new(
        "spanheap_differential_uncached",
        0x5a4e_4ea9_0005,
        main_ops() / 4,
        5_000,
    );
    Runner::new(&heap, params).run();
}
