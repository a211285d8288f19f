//! The platform: which CPU is running, and a critical section that keeps the caller on
//! it. The only module that knows about CPUs, interrupts and threads; everything else
//! reaches per-CPU state through a `Pinned` guard.
//!
//! Implementations:
//! - [`Uncached`]: no CPU index, no critical section. Every allocation goes to the
//!   spin-locked centrals, as in a global-lock allocator. The default, and the right
//!   choice before the kernel can name its CPUs.
//! - [`X86_64`] (x86_64 only): the CPU index from `IA32_TSC_AUX` (RDPID, or RDTSCP
//!   where RDPID is missing), interrupts off for the critical section.
//! - [`X86_64Gs`] (x86_64 only): the CPU index from a per-CPU word that GS points at
//!   (one load), the same critical section. The one to use under QEMU's TCG, and
//!   where the kernel has a GS-based per-CPU block anyway.
//! - `HostThreads` (feature `std`): each thread is a CPU, for tests and benchmarks.
//!
//! # Invariants
//!
//! Between [`Platform::enter`] and the matching [`Platform::exit`], [`Platform::cpu_index`]
//! returns the same value on the calling context (except that a context without an
//! index may get one from [`Platform::claim_index`] and keeps it), [`Platform::cpu_slot`]
//! agrees with it, and no other context that gets the
//! same index runs heap code: not another CPU or thread, and not an interrupt handler
//! on this CPU. The per-CPU cache of that index is then the caller's alone.

#[cfg(any(test, feature = "std"))]
mod host;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(any(test, feature = "std"))]
pub use host::HostThreads;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{CpuInitError, X86_64Gs, X86_64};

use core::marker::PhantomData;

/// The most CPUs a heap keeps caches for; CPUs with a higher index (or none) use the
/// centrals directly.
pub const MAX_CPUS: usize = 64;

/// What a heap needs to know about the CPUs it runs on.
///
/// # Safety
///
/// An implementation guarantees the module invariant: from `enter` until the matching
/// `exit`, `cpu_index` keeps returning the same value (`None` or an index below
/// [`MAX_CPUS`]) on the calling context, and no other context that `cpu_index` would
/// give the same index enters heap code in that time (no migration to another CPU, no
/// interrupt handler on this CPU reaching the heap, no two threads sharing an index).
pub unsafe trait Platform: 'static {
    /// State saved by `enter` and restored by `exit` (for example the interrupt flag).
    type Saved: Copy;

    /// Enters the critical section.
    fn enter() -> Self::Saved;

    /// Leaves the critical section entered by the `enter` that returned `saved`.
    ///
    /// # Safety
    ///
    /// `saved` comes from the latest `enter` on this context not yet exited (critical
    /// sections nest like brackets).
    unsafe fn exit(saved: Self::Saved);

    /// The index of the running CPU, or `None` when it has none (not registered, or
    /// beyond [`MAX_CPUS`]). Only meaningful inside the critical section.
    fn cpu_index() -> Option<usize>;

    /// As [`Platform::cpu_index`], but may first give the running context an index
    /// when it has none yet. Called on slow paths only (after `cpu_index` said `None`
    /// or found no cache), so `cpu_index` itself can stay a bare load. The default
    /// assigns nothing.
    #[inline(always)]
    fn claim_index() -> Option<usize> {
        Self::cpu_index()
    }

    /// [`Platform::cpu_index`] as a slot of the heap's cache table: `index + 1`, or 0
    /// when it is `None` (or not below [`MAX_CPUS`]). The fast paths read it and
    /// index the table with it unchecked: an implementation that overrides it (to
    /// drop the default's tests) must return exactly that, so never more than
    /// `MAX_CPUS`.
    #[inline(always)]
    fn cpu_slot() -> usize {
        match Self::cpu_index() {
            Some(index) if index < MAX_CPUS => index + 1,
            _ => 0,
        }
    }
}

/// A platform without per-CPU caches: every allocation takes a central's spin lock.
/// Nothing is done about interrupts: a kernel using it must not allocate in interrupt
/// handlers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uncached;

// SAFETY: `cpu_index` is always `None`, so no per-CPU state is ever shared.
unsafe impl Platform for Uncached {
    type Saved = ();

    #[inline(always)]
    fn enter() {}

    #[inline(always)]
    unsafe fn exit(_: ()) {}

    #[inline(always)]
    fn cpu_index() -> Option<usize> {
        None
    }
}

/// Proof that the caller is inside the platform's critical section, on CPU `cpu`.
/// Dropping it leaves the section. Not `Send`: it belongs to the context that made it.
pub(crate) struct Pinned<P: Platform> {
    saved: P::Saved,
    _context: PhantomData<*mut ()>,
}

impl<P: Platform> Pinned<P> {
    /// Enters the critical section.
    #[inline(always)]
    pub(crate) fn enter() -> Self {
        Self {
            saved: P::enter(),
            _context: PhantomData,
        }
    }

    /// [`Platform::cpu_slot`]: the running CPU's index + 1, or 0 when it has none;
    /// never more than [`MAX_CPUS`] (the platform's contract). Read again at each call
    /// (cheap: a TLS load, RDPID, ...), so that the guard stays a register or nothing
    /// and slow paths that take `&Pinned` do not force it into memory.
    #[inline(always)]
    pub(crate) fn slot(&self) -> usize {
        P::cpu_slot()
    }

    /// The running CPU's index, if it has one (below [`MAX_CPUS`]), through
    /// [`Platform::claim_index`]: for slow paths.
    pub(crate) fn claim_cpu(&self) -> Option<usize> {
        P::claim_index().filter(|&cpu| cpu < MAX_CPUS)
    }
}

impl<P: Platform> Drop for Pinned<P> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `saved` is from the `enter` that made this guard; guards are not
        // `Send` and are dropped in reverse order of creation, so sections nest.
        unsafe { P::exit(self.saved) }
    }
}
