#![no_main]
//! A cgroup's own files: `memory.stat` and `memory.events` (flat keyed), `memory.current`/`peak`
//! (one number), `memory.max`/`swap.max` (a number or `max`). No panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::cgroup::{parse_flat_keyed, parse_limit, parse_u64_file};

fuzz_target!(|data: &[u8]| {
    if let Ok(kv) = parse_flat_keyed(data) {
        let _ = kv.get("anon");
        let _ = kv.get("oom_kill");
    }
    let _ = parse_u64_file(data);
    let _ = parse_limit(data);
});
