#![no_main]
//! `/proc/meminfo`: no panic; every field that comes out has a name, every skip a line.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::meminfo::parse_meminfo;

fuzz_target!(|data: &[u8]| {
    let m = parse_meminfo(data);
    assert!(m.value.iter().all(|f| !f.name.is_empty()));
    assert!(m.skipped.iter().all(|e| e.line >= 1));
});
