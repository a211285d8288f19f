//! spanheap: a span-based heap allocator for x86_64 kernels (being built).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
