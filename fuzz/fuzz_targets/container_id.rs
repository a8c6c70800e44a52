#![no_main]
//! A cgroup path (any bytes) classified into runtime, container id, pod and systemd unit. No panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::collectors::cgroup::container::classify;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
});
