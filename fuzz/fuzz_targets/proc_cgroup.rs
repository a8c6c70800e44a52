#![no_main]
//! `/proc/PID/cgroup`, then the memory cgroup path it names classified into container, pod and
//! systemd unit (what a process record carries). No panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::{collectors::cgroup::container::classify, procfs::cgroup::parse_proc_cgroup};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse_proc_cgroup(data)
        && let Some(path) = c.memory_path()
    {
        let _ = classify(path);
    }
});
