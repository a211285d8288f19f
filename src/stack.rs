//! Kernel stacks (Go's stackpool / stackcache / stackLarge): power-of-two sizes, every
//! stack aligned to its size.
//!
//! - **Orders 0..=3** (4, 8, 16, 32 KiB) come from a per-CPU stack cache of up to
//!   [`STACK_CACHE`] stacks per order, refilled to half from the order's stack pool
//!   when empty and released down to half when full, as Go's `stackcacherefill` /
//!   `stackcacherelease` do. A pool is a spin-locked list of pool spans: 32 KiB
//!   spans aligned to 32 KiB, carved into stacks of one order, with an object bitmap
//!   like a small span's; an emptied pool span goes back to the page heap.
//! - **Larger stacks** (64 KiB and up) are page runs aligned to their size; a freed
//!   one waits on a free list by log2 pages for the next stack of its size, and
//!   [`SpanHeap::trim`](crate::SpanHeap::trim) gives those back to the page heap.
//!
//! Free stacks are never linked through their own memory: pool spans keep bitmaps,
//! CPU caches keep arrays, and large free stacks are listed through their span
//! descriptors.
//!
//! May call: `span`, `page_heap` under the page lock (lock order: a stack pool, then
//! the page heap). Called by: `heap`.
//!
//! # Invariants
//!
//! - a pool span is on its pool's `partial` list exactly when it has a free stack and a
//!   stack in use (an empty pool span is freed at once);
//! - `in_use` counts the order's stacks handed out by the pool (including those in CPU
//!   caches); `spans` counts its pool spans;
//! - every span on `large.free[k]` is a free large stack of `2^k` pages.

use crate::list::List;
use crate::page_heap::PageHeap;
use crate::size_class::PAGE_SIZE;
use crate::span::{Span, SpanList};
use core::ptr::NonNull;
use spin::Mutex;

/// The smallest stack: one page.
pub const MIN_STACK_SIZE: usize = PAGE_SIZE;
/// The largest stack served by the stack pools and per-CPU stack caches.
pub const MAX_POOLED_STACK_SIZE: usize = 32 << 10;
/// Stack orders with a pool: 4, 8, 16 and 32 KiB.
pub(crate) const ORDERS: usize = 4;
/// Pages of a pool span (32 KiB).
pub(crate) const POOL_SPAN_PAGES: usize = MAX_POOLED_STACK_SIZE / PAGE_SIZE;
/// Stacks of one order a CPU keeps at most.
pub(crate) const STACK_CACHE: usize = 8;
/// Free lists of large stacks: 2^k pages for k below this.
const LARGE_ORDERS: usize = 32;

/// A kernel stack from [`SpanHeap::alloc_stack`](crate::SpanHeap::alloc_stack):
/// `size` bytes from `base`, aligned to `size`. The stack grows down from [`top`](Self::top).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a stack is freed with SpanHeap::free_stack"]
pub struct Stack {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: a stack is plain memory owned by whoever holds the `Stack`.
unsafe impl Send for Stack {}

impl Stack {
    /// The lowest address of the stack.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The size in bytes (a power of two, at least [`MIN_STACK_SIZE`]).
    pub fn size(&self) -> usize {
        self.size
    }

    /// One past the highest byte: the initial stack pointer.
    pub fn top(&self) -> usize {
        self.base.as_ptr() as usize + self.size
    }

    /// A stack at `base` of `size` bytes, as handed out before.
    ///
    /// # Safety
    ///
    /// `base` and `size` are those of a stack from `alloc_stack` (for example taken
    /// apart with [`Stack::into_raw`]).
    pub unsafe fn from_raw(base: NonNull<u8>, size: usize) -> Stack {
        Stack { base, size }
    }

    /// The base and size, for keeping a stack somewhere a `Stack` cannot go.
    pub fn into_raw(self) -> (NonNull<u8>, usize) {
        (self.base, self.size)
    }

    pub(crate) fn new(base: NonNull<u8>, size: usize) -> Stack {
        Stack { base, size }
    }
}

/// The size a request of `size` bytes gets: a power of two, at least a page.
/// `None` when that overflows.
pub(crate) fn stack_size(size: usize) -> Option<usize> {
    size.max(MIN_STACK_SIZE).checked_next_power_of_two()
}

/// The pool order of a stack size from [`stack_size`], `None` above the pools.
pub(crate) fn order_of(size: usize) -> Option<usize> {
    (size <= MAX_POOLED_STACK_SIZE).then(|| (size / MIN_STACK_SIZE).trailing_zeros() as usize)
}

/// The stack size of pool order `order`.
pub(crate) const fn order_size(order: usize) -> usize {
    MIN_STACK_SIZE << order
}

/// The lists of one order's pool.
pub(crate) struct PoolLists {
    partial: List<Span>,
    /// Stacks of this order handed out by the pool (some may sit in CPU caches).
    pub(crate) in_use: usize,
    /// Pool spans of this order.
    pub(crate) spans: usize,
}

/// Free large stacks by log2 pages.
pub(crate) struct LargeStacks {
    free: [List<Span>; LARGE_ORDERS],
    /// Pages of the stacks on the free lists.
    pub(crate) free_pages: usize,
}

/// The stack pools of a heap.
pub(crate) struct StackPools {
    pub(crate) pools: [Mutex<PoolLists>; ORDERS],
    pub(crate) large: Mutex<LargeStacks>,
}

impl StackPools {
    /// Pools with no spans.
    pub(crate) const fn new() -> Self {
        Self {
            pools: [const {
                Mutex::new(PoolLists {
                    partial: List::new(),
                    in_use: 0,
                    spans: 0,
                })
            }; ORDERS],
            large: Mutex::new(LargeStacks {
                free: [const { List::new() }; LARGE_ORDERS],
                free_pages: 0,
            }),
        }
    }
}

impl PoolLists {
    /// Takes a free stack of `order`, from a partial pool span or a new one.
    pub(crate) fn take(&mut self, order: usize, pages: &Mutex<PageHeap>) -> Option<usize> {
        let span = match NonNull::new(self.partial.head()) {
            Some(span) => span,
            None => {
                let span = pages
                    .lock()
                    .new_stack_span(POOL_SPAN_PAGES, order_size(order))?;
                self.spans += 1;
                // SAFETY: a new descriptor, on no list.
                unsafe {
                    (*span.as_ptr()).list = SpanList::Partial(0);
                    self.partial.push(span.as_ptr());
                }
                span
            }
        };
        // SAFETY: a live pool span of this order on our list, ours under the lock.
        let s = unsafe { &mut *span.as_ptr() };
        let (index, _) = s.take_object()?;
        let addr = s.object_addr(index);
        if s.is_full() {
            s.list = SpanList::None;
            // SAFETY: the span is on `partial`.
            unsafe { self.partial.remove(span.as_ptr()) };
        }
        self.in_use += 1;
        Some(addr)
    }

    /// Returns stack `index` of `span`; an emptied span is unlinked and returned for
    /// the caller to free to the page heap.
    ///
    /// # Safety
    ///
    /// `span` is a live pool span of this order and stack `index` is in use.
    pub(crate) unsafe fn put(
        &mut self,
        span: NonNull<Span>,
        index: usize,
    ) -> Option<NonNull<Span>> {
        // SAFETY: live pool span of this order (caller), ours under the lock.
        let s = unsafe { &mut *span.as_ptr() };
        let was_full = s.is_full();
        s.put_object(index);
        self.in_use -= 1;
        if s.allocated == 0 {
            if !was_full {
                // SAFETY: a span with a free and a used stack is on `partial`.
                unsafe { self.partial.remove(span.as_ptr()) };
            }
            s.list = SpanList::None;
            self.spans -= 1;
            return Some(span);
        }
        if was_full {
            s.list = SpanList::Partial(0);
            // SAFETY: a full span is on no list.
            unsafe { self.partial.push(span.as_ptr()) };
        }
        None
    }
}

impl LargeStacks {
    /// A free large stack of `pages` pages (a power of two) from the free lists.
    pub(crate) fn take(&mut self, pages: usize) -> Option<NonNull<Span>> {
        let list = self.free.get_mut(pages.trailing_zeros() as usize)?;
        let span = NonNull::new(list.head())?;
        // SAFETY: the head of the list, a live large stack span.
        unsafe {
            list.remove(span.as_ptr());
            (*span.as_ptr()).list = SpanList::None;
        }
        self.free_pages -= pages;
        Some(span)
    }

    /// Keeps a freed large stack span of `pages` pages for the next request.
    ///
    /// # Safety
    ///
    /// `span` is a live large stack span of `pages` pages, on no list, not in use.
    pub(crate) unsafe fn put(&mut self, span: NonNull<Span>, pages: usize) {
        let list = &mut self.free[pages.trailing_zeros() as usize];
        // SAFETY: on no list (caller).
        unsafe {
            (*span.as_ptr()).list = SpanList::Reserve;
            list.push(span.as_ptr());
        }
        self.free_pages += pages;
    }

    /// Takes any free large stack span (for trimming).
    pub(crate) fn pop_any(&mut self) -> Option<NonNull<Span>> {
        let k = self.free.iter().position(|list| list.len() != 0)?;
        self.take(1 << k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_powers_of_two_and_orders() {
        assert_eq!(stack_size(1), Some(4096));
        assert_eq!(stack_size(4097), Some(8192));
        assert_eq!(stack_size(usize::MAX), None);
        assert_eq!(order_of(4096), Some(0));
        assert_eq!(order_of(32 << 10), Some(3));
        assert_eq!(order_of(64 << 10), None);
        assert_eq!(order_size(2), 16 << 10);
    }
}
