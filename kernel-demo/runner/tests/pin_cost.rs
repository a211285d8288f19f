//! QEMU measurement of the heap's critical section (`X86_64`: `pushfq; cli` ...
//! `sti`) against an empty loop, a busy flag and a whole 64-byte alloc+free. Under
//! `-icount shift=0` the TSC counts guest instructions, so those numbers are exact
//! instruction counts per iteration; without icount they are TCG time, which is not
//! hardware time. Run with `--nocapture` to see the numbers.

use spanheap_runner::{must_pass, Options};
use std::time::Duration;

/// The per-iteration cost printed on the line of `label`, in hundredths.
fn cost(output: &str, label: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("pin cost: {label}")))
        .unwrap_or_else(|| panic!("no line for {label}:\n{output}"));
    println!("{line}");
    let number = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unreadable line {line:?}"));
    let (whole, hundredths) = number.split_once('.').expect("N.NN");
    whole.parse::<u64>().expect("a number") * 100 + hundredths.parse::<u64>().expect("a number")
}

/// Boots the measurement and returns (a), (b), (b0), (c), (d) in hundredths.
fn measure(icount: bool) -> [u64; 5] {
    let options = Options {
        cpus: 1,
        icount,
        timeout: Duration::from_secs(120),
        ..Options::default()
    };
    let output = must_pass("test_pin_cost", &options);
    assert!(output.contains("pin cost ok"), "output:\n{output}");
    ["(a) ", "(b) ", "(b0) ", "(c) ", "(d) "].map(|label| cost(&output, label))
}

#[test]
fn pin_cost_in_guest_instructions() {
    let [empty, pin, nested, flag, heap] = measure(true);
    // Exact counts: the empty loop is a couple of instructions (`dec; jne`), the pin
    // and the flag add a few, alloc+free about a hundred or two.
    assert!((100..=1_000).contains(&empty), "empty loop {empty}");
    assert!(pin > empty && pin < empty + 2_000, "pin {pin}");
    assert!(nested > empty && nested <= pin, "nested pin {nested}");
    assert!(flag > empty && flag < empty + 2_000, "busy flag {flag}");
    assert!(heap > pin && heap < 50_000, "alloc+free {heap}");
}

#[test]
fn pin_cost_in_tcg_time() {
    // TCG time: only the gross ordering is stable (the busy flag and the empty loop
    // are within noise of each other; `sti` ends a TCG translation block).
    let [empty, _, _, _, heap] = measure(false);
    assert!(heap > empty, "alloc+free {heap} vs empty loop {empty}");
}
