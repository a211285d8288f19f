//! spanheap: a span-based heap allocator for x86_64 kernels, after the Go runtime
//! allocator (mcache / mcentral / mheap).
//!
//! # Using it
//!
//! ```no_run
//! use spanheap::{MemoryRange, SpanHeap};
//!
//! #[global_allocator]
//! static HEAP: SpanHeap = SpanHeap::new();
//!
//! fn init_heap(usable: &[(usize, usize)]) {
//!     for &(start, end) in usable {
//!         // SAFETY: the bootloader reported these ranges usable and they are mapped.
//!         if let Err(error) = unsafe { HEAP.add_memory(MemoryRange::new(start, end)) } {
//!             // e.g. a range too small for its arena's metadata
//!             let _ = error;
//!         }
//!     }
//! }
//! ```
//!
//! # Layers, one module each
//!
//! - `platform`: the CPU index and the critical section ([`platform::Platform`]);
//! - `cache`: per-CPU caches, one stack of free objects per class, no locks;
//! - `size_class`: the pure, table-driven map from `(size, align)` to a size class;
//! - `heap`: the front end, [`SpanHeap`] and its `GlobalAlloc`;
//! - `central`: one spin-locked central per class, fuller spans first;
//! - `stack`: kernel stacks: per-CPU stack caches over stack pools, large stacks;
//! - `page_cache`: per-CPU page caches: a 64-page group each, runs under 16 pages;
//! - `span`: span descriptors, object bitmaps and alloc caches;
//! - `page_heap`: arenas in address order, first-fit page runs, the arena index;
//! - `arena`: one window's metadata: span map, page bitmap, descriptor slabs;
//! - `page_bitmap`: the bitmap with free-run summaries (Go's `pageAlloc`);
//! - `range`: memory intake and configuration; `bootinfo`: the `bootloader_api` adapter;
//! - `stats`: the balanced snapshot.
//!
//! The crate is `no_std` and builds on stable Rust for `x86_64-unknown-none`.
//!
//! # Invariants
//!
//! - platform-specific code (CPUs, interrupts, threads) lives only under `platform`;
//!   every other module reaches per-CPU state through `platform::Pinned`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

mod arena;
#[cfg(feature = "bootloader")]
pub mod bootinfo;
mod cache;
mod central;
mod heap;
mod list;
mod page_bitmap;
mod page_cache;
mod page_heap;
pub mod platform;
mod range;
pub mod size_class;
mod span;
mod stack;
mod stats;
mod tiny;

pub use heap::{ErrorHook, FreeError, OomHook, OutOfMemory, SpanHeap};
pub use page_heap::MAX_ARENAS;
pub use range::{AddMemoryError, Config, InitialContents, MemoryRange};
pub use span::{FREE_FILL, FRESH_FILL};
pub use stack::{Stack, MAX_POOLED_STACK_SIZE, MIN_STACK_SIZE};
pub use stats::{ClassStats, CpuStats, Stats};
