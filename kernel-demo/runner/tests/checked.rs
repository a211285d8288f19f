//! QEMU test of checked mode: a kernel built with the library's `checked` feature
//! commits every kind of bad free (double frees in this CPU's cache, in its span and
//! across CPUs; foreign, interior and misaligned pointers; wrong layouts; large
//! objects and stacks) and its counting hook must see exactly the expected errors,
//! with the heap intact afterwards.

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

#[test]
fn checked_mode_refuses_and_counts_every_bad_free() {
    let options = Options {
        cpus: 2,
        timeout: Duration::from_secs(300),
        ..Options::default()
    };
    let output = must_pass("test_checked", &options);
    assert!(
        output.contains("checked: refused foreign 2 interior 2 wrong layout 3 double 19"),
        "output:\n{output}"
    );
    assert!(
        output.contains("cpu 1: freed 16 shared objects"),
        "output:\n{output}"
    );
    assert!(output.contains("checked test ok"), "output:\n{output}");
}
