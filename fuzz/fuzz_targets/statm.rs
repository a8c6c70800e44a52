#![no_main]
//! `/proc/PID/statm`: no panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::statm::parse_statm;

fuzz_target!(|data: &[u8]| {
    let _ = parse_statm(data);
});
