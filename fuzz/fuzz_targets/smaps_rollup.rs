#![no_main]
//! `/proc/PID/smaps_rollup`: no panic; USS never exceeds the sum it is made of (saturating).

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::smaps_rollup::parse_smaps_rollup;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(c)) = parse_smaps_rollup(data) {
        assert!(c.uss() >= c.private_clean && c.uss() >= c.private_dirty);
    }
});
