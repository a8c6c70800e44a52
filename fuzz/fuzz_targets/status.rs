#![no_main]
//! `/proc/PID/status`: no panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::status::parse_status;

fuzz_target!(|data: &[u8]| {
    let _ = parse_status(data);
});
