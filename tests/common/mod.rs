//! Helpers shared by the host integration tests: a small deterministic PRNG, the
//! size and alignment distributions, address-derived fill patterns, and backing
//! memory for heaps.
//!
//! Every test crate compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use std::alloc::Layout;

/// Bytes in a page of the page heap.
pub(crate) const PAGE: usize = 4096;

/// The splitmix64 finaliser: a bijective 64-bit mix.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: a tiny, fast, seedable PRNG (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for our `n`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: usize) -> bool {
        self.below(1000) < per_mille
    }
}

/// A request size from 1 B to 1 MiB, skewed to small sizes: 70% in 1..=256,
/// 20% in 257..=4 KiB, 9% up to 64 KiB, 1% up to 1 MiB.
pub(crate) fn skewed_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=69 => rng.range(1, 256),
        70..=89 => rng.range(257, 4 << 10),
        90..=98 => rng.range((4 << 10) + 1, 64 << 10),
        _ => rng.range((64 << 10) + 1, 1 << 20),
    }
}

/// An alignment from 1 to 4096: 90% in 1..=16, 10% in 32..=4096.
pub(crate) fn skewed_align(rng: &mut Rng) -> usize {
    if rng.chance(900) {
        1 << rng.below(5)
    } else {
        1 << rng.range(5, 12)
    }
}

/// The seed of the fill pattern of the block at `addr` with model id `id`.
pub(crate) fn pattern_seed(addr: usize, id: u64) -> u64 {
    mix64(addr as u64 ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Word `i` (bytes `8 i .. 8 i + 8`, little-endian) of the pattern with `seed`.
#[inline]
fn pattern_word(seed: u64, i: usize) -> u64 {
    mix64(seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Fills `len` bytes at `ptr` with the pattern of `seed`: byte `k` is byte `k % 8`
/// of `pattern_word(seed, k / 8)`, so any prefix of a filled block is itself the
/// pattern of that prefix.
///
/// # Safety
///
/// `ptr..ptr + len` is writable memory owned by the caller.
pub(crate) unsafe fn fill_pattern(ptr: *mut u8, len: usize, seed: u64) {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    let mut words = bytes.chunks_exact_mut(8);
    for (i, word) in (&mut words).enumerate() {
        word.copy_from_slice(&pattern_word(seed, i).to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = pattern_word(seed, len / 8).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// The offset of the first byte of `ptr..ptr + len` that differs from the pattern
/// of `seed`, with the byte found and the byte expected; `None` when all match.
///
/// # Safety
///
/// `ptr..ptr + len` is readable memory owned by the caller.
pub(crate) unsafe fn check_pattern(
    ptr: *const u8,
    len: usize,
    seed: u64,
) -> Option<(usize, u8, u8)> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let mut words = bytes.chunks_exact(8);
    for (i, word) in (&mut words).enumerate() {
        let expected = pattern_word(seed, i).to_le_bytes();
        if word != expected {
            let k = (0..8).find(|&k| word[k] != expected[k]).unwrap_or(0);
            return Some((i * 8 + k, word[k], expected[k]));
        }
    }
    let tail = words.remainder();
    let last = pattern_word(seed, len / 8).to_le_bytes();
    let base = len - tail.len();
    (0..tail.len())
        .find(|&k| tail[k] != last[k])
        .map(|k| (base + k, tail[k], last[k]))
}

/// The offset of the first non-zero byte of `ptr..ptr + len`, and that byte.
///
/// # Safety
///
/// `ptr..ptr + len` is readable memory owned by the caller.
pub(crate) unsafe fn first_nonzero(ptr: *const u8, len: usize) -> Option<(usize, u8)> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    bytes.iter().position(|&b| b != 0).map(|k| (k, bytes[k]))
}

/// A block of host memory to give to a heap, freed on drop. Declare it before the
/// heap that uses it so that the heap is dropped first.
pub(crate) struct Backing {
    ptr: *mut u8,
    layout: Layout,
}

impl Backing {
    /// `size` bytes aligned to `align` (a power of two, at least a page).
    pub(crate) fn new(size: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(size, align).expect("backing layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(
            !ptr.is_null(),
            "cannot allocate {size} bytes of backing memory"
        );
        Self { ptr, layout }
    }

    /// First address.
    pub(crate) fn start(&self) -> usize {
        self.ptr as usize
    }

    /// One past the last address.
    pub(crate) fn end(&self) -> usize {
        self.start() + self.layout.size()
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// An unsigned integer from the environment variable `name` (decimal, or hex with
/// `0x`), or `default`. Underscores are ignored.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    let text = text.trim().replace('_', "");
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
}
