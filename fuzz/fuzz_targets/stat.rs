#![no_main]
//! `/proc/PID/stat` (a comm with spaces and parentheses in it): no panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::stat::parse_stat;

fuzz_target!(|data: &[u8]| {
    let _ = parse_stat(data);
});
