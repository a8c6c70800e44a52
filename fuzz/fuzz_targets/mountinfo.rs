#![no_main]
//! `/proc/PID/mountinfo` (octal escapes, optional fields): no panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::mountinfo::parse_mountinfo;

fuzz_target!(|data: &[u8]| {
    let _ = parse_mountinfo(data);
});
