//! The x86_64 platforms for kernels: [`X86_64`] (the CPU index in `IA32_TSC_AUX`) and
//! [`X86_64Gs`] (the CPU index in a per-CPU word that GS points at), both with
//! interrupts off for the critical section.
//!
//! Mechanism, and why:
//! - **CPU index.** [`X86_64::init_cpu`] writes `index + 1` to `IA32_TSC_AUX` on each
//!   CPU; the heap reads it back with RDPID (one instruction, no serialisation), or
//!   RDTSCP on CPUs without RDPID. A CPU that never ran `init_cpu` reads 0 and so has
//!   no index: it uses the centrals, never another CPU's cache. The MSR is the kernel's
//!   to spare: unlike a GS-based per-CPU block it does not collide with a kernel that
//!   already uses GS for its own per-CPU data.
//! - **CPU index through GS** ([`X86_64Gs`]): one load, `mov gs:[OFFSET]`, from a word
//!   the kernel keeps in its per-CPU block (or in spanheap's, [`X86_64Gs::install`]).
//!   Cheaper than RDPID on hardware, and much cheaper than RDTSCP under QEMU's TCG,
//!   whose RDTSCP reads the virtual clock under a lock that every vCPU takes (QEMU 7.2,
//!   which also lacks RDPID): in the in-kernel benchmark on two vCPUs, `X86_64` spent
//!   1.2x to 2x the host CPU time per operation that `X86_64Gs` did. Its price is the
//!   contract: GS must point at such a block on every CPU that calls the heap, from
//!   before its first call.
//! - **Critical section.** `pushfq; cli` on entry, `sti` on exit when interrupts were
//!   on before. With interrupts off the running code can neither be preempted (so it
//!   stays on this CPU) nor be interrupted by a handler that allocates (so the handler
//!   never sees a half-updated cache, and never spins on a central lock the code it
//!   interrupted holds). The alternative, a per-CPU busy flag with a locked fallback,
//!   saves the `cli`/`sti` pair but leaves the centrals' spin locks open to interrupt
//!   handlers, so their slow paths would have to disable interrupts anyway.
//!
//! Requires ring 0 (CLI/STI and WRMSR fault in user mode).
//!
//! # Invariants
//!
//! - `MODE` names an instruction that reads `IA32_TSC_AUX` on this machine, or
//!   `MODE_NONE` before the first successful `init_cpu` (then no CPU has an index);
//! - a CPU's `IA32_TSC_AUX` is 0 (no index) or `index + 1` for the index it was given,
//!   distinct across CPUs (the `init_cpu` contract) and never changed afterwards;
//! - for [`X86_64Gs<OFFSET>`], on every CPU that calls the heap, the word at
//!   `gs:[OFFSET]` is that CPU's alone and holds 0 (no index) or `index + 1`, distinct
//!   across CPUs, at most [`MAX_CPUS`], and never changed once set (the `init_cpu` and
//!   `install` contracts);
//! - `GS_BLOCKS[i]` is used only as CPU `i`'s GS block (through `install`).

use super::{Platform, MAX_CPUS};
use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

/// The x86_64 kernel platform. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct X86_64;

const IA32_TSC_AUX: u32 = 0xC000_0103;
/// `MODE`: no way to read the index found yet (before the first `init_cpu`).
const MODE_NONE: u8 = 0;
const MODE_RDPID: u8 = 1;
const MODE_RDTSCP: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);

/// Why [`X86_64::init_cpu`] or [`X86_64Gs::init_cpu`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuInitError {
    /// The index is not below [`MAX_CPUS`].
    IndexTooLarge,
    /// The CPU has neither RDPID nor RDTSCP (only [`X86_64`] needs them).
    NoTscAux,
}

impl X86_64 {
    /// Gives the running CPU its index for the heap (any index below [`MAX_CPUS`],
    /// distinct per CPU; 0 for the bootstrap CPU is the usual choice).
    ///
    /// # Errors
    ///
    /// [`CpuInitError`] when the index is too large or the CPU cannot read
    /// `IA32_TSC_AUX`; the CPU then uses the centrals directly.
    ///
    /// # Safety
    ///
    /// Ring 0, on the CPU being named, with no heap call in progress on it; no other
    /// CPU gets the same index; nothing else uses `IA32_TSC_AUX`.
    pub unsafe fn init_cpu(index: usize) -> Result<(), CpuInitError> {
        if index >= MAX_CPUS {
            return Err(CpuInitError::IndexTooLarge);
        }
        let mode = detect();
        if mode == MODE_NONE {
            return Err(CpuInitError::NoTscAux);
        }
        // SAFETY: ring 0 (caller); TSC_AUX exists when RDPID or RDTSCP does, and
        // nothing else uses it (caller).
        unsafe {
            asm!("wrmsr", in("ecx") IA32_TSC_AUX, in("eax") index as u32 + 1, in("edx") 0,
                 options(nostack, preserves_flags));
        }
        MODE.store(mode, Ordering::Relaxed);
        Ok(())
    }
}

/// The instruction this CPU offers to read `IA32_TSC_AUX`.
// `__cpuid` is an unsafe fn before Rust 1.87 and safe after.
#[allow(unused_unsafe)]
fn detect() -> u8 {
    // SAFETY: CPUID is available on every x86_64 CPU.
    let (max_leaf, max_ext) = unsafe {
        (
            core::arch::x86_64::__cpuid(0).eax,
            core::arch::x86_64::__cpuid(0x8000_0000).eax,
        )
    };
    // SAFETY: as above; the leaves are within the reported maxima.
    if max_leaf >= 7 && unsafe { core::arch::x86_64::__cpuid_count(7, 0) }.ecx & (1 << 22) != 0 {
        return MODE_RDPID;
    }
    if max_ext >= 0x8000_0001
        // SAFETY: as above.
        && unsafe { core::arch::x86_64::__cpuid(0x8000_0001) }.edx & (1 << 27) != 0
    {
        return MODE_RDTSCP;
    }
    MODE_NONE
}

/// This CPU's `IA32_TSC_AUX`, or 0 when no CPU has been given an index yet.
#[inline(always)]
fn tsc_aux() -> usize {
    let aux: u64;
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: RDPID exists (found by `detect`); it only reads TSC_AUX.
        MODE_RDPID => unsafe {
            asm!("rdpid {}", out(reg) aux, options(nomem, nostack, preserves_flags))
        },
        MODE_RDTSCP => {
            let mut low = 0u32;
            // SAFETY: RDTSCP exists (found by `detect`).
            unsafe { core::arch::x86_64::__rdtscp(&mut low) };
            aux = u64::from(low);
        }
        _ => return 0,
    }
    aux as usize
}

// SAFETY: interrupts are off between `enter` and `exit`, so the caller is neither
// preempted (it stays on its CPU) nor interrupted into heap code; `init_cpu` gives
// each CPU a distinct index and the index of a CPU does not change.
unsafe impl Platform for X86_64 {
    /// The interrupt flag before `enter`.
    type Saved = bool;

    #[inline(always)]
    fn enter() -> bool {
        let flags: u64;
        // SAFETY: reading RFLAGS and clearing IF; ring 0 (the platform's contract). No
        // `nomem`: the asm is a compiler barrier, so no cache access moves above it.
        unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags) };
        flags & (1 << 9) != 0
    }

    #[inline(always)]
    unsafe fn exit(enabled: bool) {
        if enabled {
            // SAFETY: interrupts were on before the matching `enter`. A compiler barrier
            // (no `nomem`): no cache access moves below it.
            unsafe { asm!("sti", options(nostack)) };
        }
    }

    #[inline(always)]
    fn cpu_index() -> Option<usize> {
        tsc_aux().checked_sub(1)
    }

    /// `IA32_TSC_AUX` itself: `index + 1` (at most `MAX_CPUS`, as `init_cpu` checks),
    /// or 0 (module invariant).
    #[inline(always)]
    fn cpu_slot() -> usize {
        tsc_aux()
    }
}

/// The x86_64 kernel platform that reads the CPU index through GS: the word at offset
/// `OFFSET` of the per-CPU block GS points at holds `index + 1` (0: no index). The
/// critical section is [`X86_64`]'s (interrupts off). See the module docs.
///
/// A kernel with per-CPU data of its own reserves an aligned word at `OFFSET` in its
/// block, zeroed, and calls [`X86_64Gs::init_cpu`] on each CPU; a kernel that does not
/// use GS calls [`X86_64Gs::install`], which points GS at a block of spanheap's.
#[derive(Debug, Clone, Copy, Default)]
pub struct X86_64Gs<const OFFSET: usize = 0>;

/// `IA32_GS_BASE`.
const IA32_GS_BASE: u32 = 0xC000_0101;

/// A CPU's GS block for [`X86_64Gs::install`]: the slot word, on a cache line of its
/// own.
#[repr(align(64))]
// Read and written through GS only, which the compiler does not see.
#[allow(dead_code)]
struct GsBlock(core::sync::atomic::AtomicUsize);

static GS_BLOCKS: [GsBlock; MAX_CPUS] =
    [const { GsBlock(core::sync::atomic::AtomicUsize::new(0)) }; MAX_CPUS];

impl<const OFFSET: usize> X86_64Gs<OFFSET> {
    /// Gives the running CPU its index for the heap (any index below [`MAX_CPUS`],
    /// distinct per CPU): writes `index + 1` to `gs:[OFFSET]`.
    ///
    /// # Errors
    ///
    /// [`CpuInitError::IndexTooLarge`]; the word is then left 0 and the CPU uses the
    /// centrals directly.
    ///
    /// # Safety
    ///
    /// Ring 0, on the CPU being named, with no heap call in progress on it. GS points
    /// at this CPU's own block, in which the 8 bytes at `OFFSET` are writable,
    /// 8-aligned and used for nothing else. At every later heap call on this CPU, GS
    /// points at such a block of this CPU's whose word holds the value written here
    /// (this one, or one the kernel moved GS to after copying the word; a kernel that
    /// runs user code with `swapgs` calls the heap only with its own GS base loaded).
    /// No other CPU gets the same index.
    pub unsafe fn init_cpu(index: usize) -> Result<(), CpuInitError> {
        if index >= MAX_CPUS {
            return Err(CpuInitError::IndexTooLarge);
        }
        // SAFETY: this CPU's own word at gs:[OFFSET] (caller).
        unsafe {
            asm!("mov qword ptr gs:[{off}], {v}", off = const OFFSET, v = in(reg) index + 1,
                 options(nostack, preserves_flags));
        }
        Ok(())
    }

    /// `gs:[OFFSET]`.
    #[inline(always)]
    fn slot_word() -> usize {
        let word: usize;
        // SAFETY: a load from this CPU's word (the platform's contract); `readonly`:
        // the word never changes under the heap once set.
        unsafe {
            asm!("mov {}, qword ptr gs:[{off}]", out(reg) word, off = const OFFSET,
                 options(nostack, preserves_flags, readonly));
        }
        word
    }
}

impl X86_64Gs {
    /// Points GS at spanheap's GS block for CPU `index` and gives the running CPU that
    /// index ([`X86_64Gs::init_cpu`]): for kernels that do not use GS themselves.
    ///
    /// # Errors
    ///
    /// [`CpuInitError::IndexTooLarge`]; GS is then left as it was.
    ///
    /// # Safety
    ///
    /// Ring 0, on the CPU being named, with no heap call in progress on it; no other
    /// CPU gets the same index. Afterwards nothing else uses this block, and GS stays
    /// on it at every heap call on this CPU unless the kernel moves GS to a block of
    /// its own as [`X86_64Gs::init_cpu`] describes, with the word copied.
    pub unsafe fn install(index: usize) -> Result<(), CpuInitError> {
        let block = GS_BLOCKS.get(index).ok_or(CpuInitError::IndexTooLarge)?;
        let base = block as *const GsBlock as u64;
        // SAFETY: ring 0 (caller); GS_BASE exists in long mode, and from now on GS is
        // this CPU's block alone (caller: nothing else uses GS, one CPU per index).
        unsafe {
            asm!("wrmsr", in("ecx") IA32_GS_BASE, in("eax") base as u32,
                 in("edx") (base >> 32) as u32, options(nostack, preserves_flags));
            Self::init_cpu(index)
        }
    }
}

// SAFETY: as for `X86_64`: interrupts are off between `enter` and `exit`; the word at
// gs:[OFFSET] is this CPU's, holds `index + 1` or 0, distinct across CPUs, and does
// not change (module invariant, kept by `init_cpu`'s and `install`'s contracts).
unsafe impl<const OFFSET: usize> Platform for X86_64Gs<OFFSET> {
    /// The interrupt flag before `enter`.
    type Saved = bool;

    #[inline(always)]
    fn enter() -> bool {
        X86_64::enter()
    }

    #[inline(always)]
    unsafe fn exit(enabled: bool) {
        // SAFETY: the caller's contract is `X86_64::exit`'s.
        unsafe { X86_64::exit(enabled) }
    }

    #[inline(always)]
    fn cpu_index() -> Option<usize> {
        Self::slot_word().checked_sub(1)
    }

    /// The word itself: `index + 1` (at most `MAX_CPUS`, as `init_cpu` checks), or 0.
    #[inline(always)]
    fn cpu_slot() -> usize {
        Self::slot_word()
    }
}
