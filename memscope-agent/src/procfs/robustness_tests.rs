//! Every parser over every fixture cut at every length, and with bytes flipped: errors are fine,
//! panics are not.

use super::{
    cgroup::{parse_flat_keyed, parse_limit, parse_proc_cgroup, parse_psi},
    cmdline::parse_cmdline,
    meminfo::parse_meminfo,
    mountinfo::parse_mountinfo,
    smaps::parse_smaps,
    smaps_rollup::parse_smaps_rollup,
    stat::parse_stat,
    statm::parse_statm,
    status::parse_status,
    sysvipc::parse_sysvipc_shm,
    text::fixture,
};

fn run_all(b: &[u8]) {
    let _ = parse_meminfo(b);
    let _ = parse_status(b);
    let _ = parse_statm(b);
    let _ = parse_stat(b);
    let _ = parse_smaps_rollup(b);
    let _ = parse_smaps(b, |_| {});
    let _ = parse_cmdline(b);
    let _ = parse_mountinfo(b);
    let _ = parse_sysvipc_shm(b);
    let _ = parse_proc_cgroup(b);
    let _ = parse_flat_keyed(b);
    let _ = parse_psi(b);
    let _ = parse_limit(b);
}

const FILES: [&str; 18] = [
    "proc/meminfo",
    "proc/self/mountinfo",
    "proc/sysvipc/shm",
    "proc/43/status",
    "proc/43/statm",
    "proc/43/stat",
    "proc/43/smaps_rollup",
    "proc/44/cmdline",
    "cases/smaps_edge",
    "cases/mountinfo_escapes",
    "cases/sysvipc_shm_huge",
    "cases/sysvipc_shm_old_kernel",
    "cases/meminfo_hugepages",
    "cases/smaps_rollup_old_kernel",
    "cgroup/proc-pid-cgroup/v1-hybrid",
    "cgroup/v1/memory/memory.stat",
    "cgroup/v2/memory.stat",
    "cgroup/v2/memory.pressure",
];

#[test]
fn no_panic_on_truncation() {
    for f in FILES {
        let text = fixture(f);
        for len in 0..=text.len() {
            run_all(&text[..len]);
        }
    }
}

#[test]
fn no_panic_on_corruption() {
    let bytes = [
        b' ', b'\n', b'\t', b'(', b')', b'-', b':', b'\\', 0, 0xff, b'9',
    ];
    for f in FILES {
        let text = fixture(f);
        // Every position would be quadratic on the bigger files; a prime stride covers them well.
        for pos in (0..text.len()).step_by(17) {
            for b in bytes {
                let mut t = text.clone();
                t[pos] = b;
                run_all(&t);
            }
        }
    }
}
