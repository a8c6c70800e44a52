#![no_main]
//! `/proc/sysvipc/shm` (with and without the rss/swap columns): no panic.

use libfuzzer_sys::fuzz_target;
use memscope_agent::procfs::sysvipc::parse_sysvipc_shm;

fuzz_target!(|data: &[u8]| {
    let _ = parse_sysvipc_shm(data);
});
