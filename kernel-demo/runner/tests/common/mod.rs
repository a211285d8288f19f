//! Reading the kernels' output, for more than one QEMU test.

/// The `allocs` counter of CPU `cpu`'s line `cpu N cache: allocs A frees ...`; panics
/// (with the output) when the line is missing or unreadable.
pub(crate) fn cache_allocs(output: &str, cpu: u32) -> usize {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("cpu {cpu} cache: allocs ")))
        .unwrap_or_else(|| panic!("no stats of cpu {cpu}:\n{output}"));
    line.split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable line {line:?}"))
}
