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

mod properties {
    //! Any bytes, and lines built from the pieces `/proc` files are made of: no parser panics, and
    //! redaction keeps the arguments.
    use proptest::prelude::*;

    use super::run_all;
    use crate::procfs::{cmdline::parse_cmdline, parse_pid, redact::redact};

    /// Text made of `/proc`-like tokens: keys, numbers near the edges of u64, units, separators.
    fn proc_like() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"Rss:".to_vec()),
            Just(b"Pss:".to_vec()),
            Just(b"MemTotal:".to_vec()),
            Just(b"HugePages_Total:".to_vec()),
            Just(b"Hugepagesize:".to_vec()),
            Just(b"Name:".to_vec()),
            Just(b"Uid:".to_vec()),
            Just(b" kB".to_vec()),
            Just(b"18446744073709551615".to_vec()),
            Just(b"18446744073709551616".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"7f00-7fff rw-s 00000000 00:01 1024 /memfd:x (deleted)".to_vec()),
            Just(b" - tmpfs tmpfs rw".to_vec()),
            Just(b"\\040".to_vec()),
            Just(b"(".to_vec()),
            Just(b")".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\t".to_vec()),
            Just(b" ".to_vec()),
            any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(token, 0..64).prop_map(|t| t.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn no_parser_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            run_all(&b);
        }

        #[test]
        fn no_parser_panics_on_proc_like_text(b in proc_like()) {
            run_all(&b);
        }

        #[test]
        fn redaction_keeps_the_argument_count(b in proc_like()) {
            let args = parse_cmdline(&b);
            prop_assert_eq!(redact(&args).len(), args.len());
        }

        #[test]
        fn a_pid_name_is_its_own_decimal(n in any::<u32>()) {
            prop_assert_eq!(parse_pid(n.to_string().as_bytes()), (n > 0).then_some(n));
            prop_assert_eq!(parse_pid(format!("0{n}").as_bytes()), None);
            prop_assert_eq!(parse_pid(format!("+{n}").as_bytes()), None);
        }
    }
}
