#![no_main]
//! `/proc/PID/smaps`: no panic; the count returned is the number of mappings visited.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::smaps::parse_smaps;

fuzz_target!(|data: &[u8]| {
    let mut visited = 0usize;
    if let Ok(n) = parse_smaps(data, |_| visited += 1) {
        assert_eq!(n, visited);
    }
});
