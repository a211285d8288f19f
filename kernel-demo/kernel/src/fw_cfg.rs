//! Reading a named file from QEMU's firmware configuration device (`fw_cfg`), which
//! is how the host passes parameters to a kernel: `-fw_cfg name=opt/NAME,string=TEXT`.
//!
//! The device has a 16-bit selector port (0x510) and an 8-bit data port (0x511); a
//! selector write rewinds the item to its first byte. Item 0x0000 reads "QEMU"; item
//! 0x0019 is the file directory: a big-endian `u32` count, then one 64-byte entry per
//! file (big-endian `u32` size, big-endian `u16` selector, two reserved bytes, a
//! NUL-padded 56-byte name).
//!
//! # Invariants
//!
//! - only the bootstrap CPU reads the device, before the APs start (a selector write
//!   and the reads that follow it must not interleave with another CPU's).

use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
const SIGNATURE: u16 = 0x0000;
const FILE_DIR: u16 = 0x0019;
const NAME_LEN: usize = 56;

fn select(key: u16) {
    // SAFETY: the fw_cfg selector port of QEMU's PC machine; selecting an item has no
    // effect on memory.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) };
}

fn read_bytes(buf: &mut [u8]) {
    let mut data = Port::<u8>::new(DATA_PORT);
    for byte in buf {
        // SAFETY: the fw_cfg data port; reading it only advances the item's offset.
        *byte = unsafe { data.read() };
    }
}

fn read_be32() -> u32 {
    let mut bytes = [0; 4];
    read_bytes(&mut bytes);
    u32::from_be_bytes(bytes)
}

/// `true` when a fw_cfg device answers with its signature.
pub fn present() -> bool {
    select(SIGNATURE);
    let mut signature = [0; 4];
    read_bytes(&mut signature);
    &signature == b"QEMU"
}

/// Reads fw_cfg file `name` (e.g. `opt/spanheap/bench`) into `buf` and returns the
/// bytes read (at most `buf.len()`), or `None` when there is no device or no such file.
pub fn read_file(name: &str, buf: &mut [u8]) -> Option<usize> {
    if !present() || name.len() >= NAME_LEN {
        return None;
    }
    select(FILE_DIR);
    let count = read_be32();
    let mut found = None;
    for _ in 0..count {
        let size = read_be32();
        let mut selector = [0; 2];
        read_bytes(&mut selector);
        let mut reserved = [0; 2];
        read_bytes(&mut reserved);
        let mut entry_name = [0; NAME_LEN];
        read_bytes(&mut entry_name);
        let len = entry_name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if found.is_none() && &entry_name[..len] == name.as_bytes() {
            found = Some((u16::from_be_bytes(selector), size as usize));
        }
    }
    let (selector, size) = found?;
    let len = size.min(buf.len());
    select(selector);
    read_bytes(&mut buf[..len]);
    Some(len)
}
