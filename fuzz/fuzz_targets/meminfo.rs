#![no_main]
//! `/proc/meminfo`: no panic; every field that comes out has a name.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::meminfo::parse_meminfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(fields) = parse_meminfo(data) {
        assert!(fields.iter().all(|f| !f.name.is_empty()));
    }
});
