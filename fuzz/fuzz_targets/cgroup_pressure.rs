#![no_main]
//! A cgroup's `memory.pressure` (PSI: `some`/`full` lines of `avg10=… total=…`). No panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::cgroup::parse_psi;

fuzz_target!(|data: &[u8]| {
    let _ = parse_psi(data);
});
