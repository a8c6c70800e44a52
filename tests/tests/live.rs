//! Live workloads (privileged lane, root): child processes with known memory, and the agent's numbers
//! for them compared with what the kernel says at that moment.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use memscope_agent::{
    config::{Config, Positive},
    procfs::Dev,
};
use memscope_tests::{require_root, run_once};
use serde_json::Value;

/// A `memhog` workload process, killed on drop.
struct Child {
    child: std::process::Child,
    pid: libc::pid_t,
    /// What memhog printed before `ready`.
    info: Vec<String>,
}

impl Child {
    fn spawn(args: &[&str]) -> Child {
        let mut memhog = Command::new(env!("CARGO_BIN_EXE_memhog"));
        memhog.args(args);
        Child::spawn_command(memhog)
    }

    /// Runs `command` (which ends by exec-ing memhog, so its pid is memhog's) until `ready`.
    fn spawn_command(mut command: Command) -> Child {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn memhog");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut info = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read memhog");
            assert!(n > 0, "memhog exited before ready; it printed {info:?}");
            if line.trim() == "ready" {
                break;
            }
            info.push(line.trim().to_string());
        }
        let pid = child.id() as libc::pid_t;
        Child { child, pid, info }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `FIELD: N kB` line of a /proc file, in bytes.
fn kb_field(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no {field} line"));
    kb * 1024
}

fn rollup_pss(pid: libc::pid_t) -> u64 {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

/// The record of `kind` whose `field` is `value`.
fn record<'a, T>(lines: &'a [Value], kind: &str, field: &str, value: T) -> &'a Value
where
    Value: PartialEq<T>,
    T: std::fmt::Debug + Copy,
{
    lines
        .iter()
        .find(|l| l["kind"].as_str() == Some(kind) && l[field] == value)
        .unwrap_or_else(|| panic!("no {kind} record with {field} {value:?}"))
}

fn process(lines: &[Value], pid: libc::pid_t) -> &Value {
    record(lines, "process", "pid", pid)
}

#[test]
fn pss_of_a_child_equals_smaps_rollup_at_that_moment() {
    require_root("live");
    let child = Child::spawn(&["anon", &(32u64 << 20).to_string()]);
    // PSS of shared pages moves when other processes come and go; retry until the kernel's value is
    // the same before and after the agent's pass, then the agent must have seen exactly it.
    // Only the processes collector: the shorter the pass, the narrower the window.
    let mut config = Config::default();
    config.collectors.smaps.enabled = false;
    config.collectors.tmpfs.enabled = false;
    config.collectors.sysv.enabled = false;
    for attempt in 1..=10 {
        let before = rollup_pss(child.pid);
        let lines = run_once(config.clone()).expect("agent runs");
        let after = rollup_pss(child.pid);
        if before != after {
            eprintln!(
                "attempt {attempt}: PSS moved during the pass ({before} -> {after}), retrying"
            );
            continue;
        }
        let p = process(&lines, child.pid);
        // A PSS that moved and came back (A -> B -> A) while the agent read B is not a mismatch of
        // the agent's: try again. An agent that misreports never matches and fails below.
        if p["pss_bytes"].as_u64() != Some(before) {
            eprintln!(
                "attempt {attempt}: agent saw {} while the kernel said {before} before and after",
                p["pss_bytes"]
            );
            continue;
        }
        assert_eq!(p["numbers"], "exact");
        let uss = p["uss_bytes"].as_u64().expect("uss");
        assert!(uss >= 32 << 20, "USS {uss} must include the 32 MiB touched");
        assert!(p["rss_bytes"].as_u64().expect("rss") >= uss);
        return;
    }
    panic!("in 10 passes the agent never reported the child's PSS as smaps_rollup had it");
}

#[test]
fn once_on_this_machine_reports_every_live_process() {
    require_root("live");
    let lines = run_once(Config::default()).expect("agent runs");
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"snapshot"));
    assert_eq!(kinds.last(), Some(&"agent"));
    assert_eq!(kinds.iter().filter(|k| **k == "meminfo").count(), 1);
    let me = std::process::id();
    let mine = process(&lines, me as libc::pid_t);
    assert_eq!(mine["numbers"], "exact");
    // The tree is consistent: the subtrees of the roots (parent not in the set) cover every process.
    let all: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "process").collect();
    let pids: std::collections::HashSet<u64> =
        all.iter().filter_map(|l| l["pid"].as_u64()).collect();
    let covered: u64 = all
        .iter()
        .filter(|l| !l["ppid"].as_u64().is_some_and(|pp| pids.contains(&pp)))
        .filter_map(|l| l["subtree"]["processes"].as_u64())
        .sum();
    assert_eq!(covered, all.len() as u64);
    assert!(all.len() > 10, "only {} processes", all.len());
    // As root nothing is inaccessible.
    assert!(
        lines
            .iter()
            .filter(|l| l["kind"] == "process")
            .all(|l| l["numbers"] != "inaccessible")
    );
}

fn object(lines: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "object" && pred(l))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one matching object, got {found:?}"
    );
    found[0]
}

/// Each consumer in `top` that is one of `children` has PSS `expect`; all children are there.
fn assert_each_child_pss(top: &Value, children: &[u64], expect: u64, what: &str) {
    let top = top
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no top list"));
    for child in children {
        let c = top
            .iter()
            .find(|c| c["pid"].as_u64() == Some(*child))
            .unwrap_or_else(|| panic!("{what}: child {child} not among consumers {top:?}"));
        assert_eq!(
            c["pss_bytes"].as_u64(),
            Some(expect),
            "{what}: child {child}"
        );
    }
}

#[test]
fn shared_objects_are_split_between_their_mappers() {
    require_root("live");
    const SIZE: u64 = 4 << 20;
    const N: u64 = 4;
    const UNMAPPED: u64 = 3 << 20;
    let hog = Child::spawn(&[
        "shared",
        &SIZE.to_string(),
        &N.to_string(),
        &UNMAPPED.to_string(),
    ]);
    let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
    let cleanup = [
        &info["shm_path"],
        &info["unmapped_path"],
        &info["same_path"],
    ]
    .map(|p| p.as_str().expect("path").to_string());
    let _guard = RemoveOnDrop(cleanup.iter().map(PathBuf::from).collect());
    let children: Vec<u64> = info["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(children.len() as u64, N);

    let mut config = Config::default();
    config.collectors.smaps.top_consumers = memscope_agent::config::Positive(10);
    // The same-name files are small: show every object.
    config.collectors.smaps.min_object_pss = memscope_agent::config::ByteSize(0);
    let lines = run_once(config).expect("agent runs");

    // memfd: N mappers (the parent only holds the fd), S/N each.
    let memfd_inode = info["memfd_inode"].as_u64().expect("inode");
    let memfd = object(&lines, |o| {
        o["object_kind"] == "memfd" && o["inode"].as_u64() == Some(memfd_inode)
    });
    assert_eq!(memfd["mappers"].as_u64(), Some(N));
    assert_eq!(memfd["pss_bytes"].as_u64(), Some(SIZE));
    assert_each_child_pss(&memfd["top"], &children, SIZE / N, "memfd");

    // The /dev/shm file: a tmpfs object.
    let shm_inode = info["shm_inode"].as_u64().expect("inode");
    let shm = object(&lines, |o| {
        o["object_kind"] == "tmpfs" && o["inode"].as_u64() == Some(shm_inode)
    });
    assert_eq!(shm["mappers"].as_u64(), Some(N));
    assert_eq!(shm["label"], info["shm_path"]);
    assert_each_child_pss(&shm["top"], &children, SIZE / N, "/dev/shm file");

    // SysV: one `sysv` record joined with its smaps object, and no separate object record.
    let shmid = info["shmid"].as_u64().expect("shmid");
    let segs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "sysv" && l["shmid"].as_u64() == Some(shmid))
        .collect();
    assert_eq!(segs.len(), 1);
    let seg = segs[0];
    assert_eq!(seg["size_bytes"].as_u64(), Some(SIZE));
    assert_eq!(seg["resident_bytes"].as_u64(), Some(SIZE));
    assert_eq!(seg["attaches"].as_u64(), Some(N));
    assert_eq!(seg["marked_for_destroy"], true);
    assert_eq!(seg["mapped"]["mappers"].as_u64(), Some(N));
    assert_eq!(seg["mapped"]["pss_bytes"].as_u64(), Some(SIZE));
    assert_each_child_pss(&seg["mapped"]["top"], &children, SIZE / N, "sysv");
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "object" && l["shmid"].as_u64() == Some(shmid)),
        "the segment must not also appear as an object"
    );

    // Two files with one path stay two objects (one deleted).
    let same: Vec<u64> = info["same_inodes"]
        .as_array()
        .expect("inodes")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let a = object(&lines, |o| o["inode"].as_u64() == Some(same[0]));
    let b = object(&lines, |o| o["inode"].as_u64() == Some(same[1]));
    assert_eq!(a["label"], info["same_path"]);
    assert_eq!(b["label"], info["same_path"]);
    assert_eq!(
        (a["deleted"].as_bool(), b["deleted"].as_bool()),
        (Some(true), Some(false))
    );
    assert_ne!(a["id"], b["id"]);

    // The ledger: the unmapped /dev/shm file shows as unmapped tmpfs; the mapped one as mapped.
    let ledger = lines
        .iter()
        .find(|l| l["kind"] == "shmem_ledger")
        .expect("ledger");
    assert_eq!(ledger["sources"]["tmpfs"], true, "{ledger}");
    let unmapped = ledger["tmpfs_unmapped_bytes"].as_u64().expect("unmapped");
    let mapped = ledger["tmpfs_mapped_bytes"].as_u64().expect("mapped");
    assert!(
        unmapped >= UNMAPPED,
        "unmapped tmpfs {unmapped} < {UNMAPPED}: {ledger}"
    );
    assert!(mapped >= SIZE, "mapped tmpfs {mapped} < {SIZE}: {ledger}");
    assert!(ledger["memfd_bytes"].as_u64().expect("memfd") >= SIZE);
    assert!(ledger["sysv_bytes"].as_u64().expect("sysv") >= SIZE);
}

/// Removes files on drop (also when an assertion fails): the tests' /dev/shm files.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A config for the tmpfs tests: only the tmpfs collector, with room for every file of /dev/shm.
fn tmpfs_config() -> Config {
    let mut config = Config::default();
    config.collectors.processes.enabled = false;
    config.collectors.smaps.enabled = false;
    config.collectors.tmpfs.top_files = Positive(10_000);
    config
}

#[test]
fn tmpfs_reports_a_dev_shm_file_and_a_deleted_file_held_open() {
    require_root("live");
    let me = std::process::id();
    let path = PathBuf::from(format!("/dev/shm/memscope-live-{me}"));
    let _cleanup = RemoveOnDrop(vec![path.clone()]);
    // 3 MiB and three pages, every page written.
    let size = (3usize << 20) + 3 * 4096;
    std::fs::write(&path, vec![0x5au8; size]).expect("write /dev/shm file");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.blocks() * 512, size as u64, "every page allocated");
    let dev = Dev::from_st_dev(meta.dev()).to_string();

    let deleted_path = format!("/dev/shm/memscope-live-deleted-{me}");
    let _cleanup_deleted = RemoveOnDrop(vec![PathBuf::from(&deleted_path)]);
    let deleted_size = (2u64 << 20) + 8192;
    let child = Child::spawn(&["shm-deleted", &deleted_path, &deleted_size.to_string()]);

    let lines = run_once(tmpfs_config()).expect("agent runs");
    let shm = record(&lines, "tmpfs", "dev", dev.as_str());
    assert_eq!(shm["hidden"], false);
    assert_eq!(shm["error"], Value::Null, "{shm}");
    assert!(
        shm["mount_points"]
            .as_array()
            .is_some_and(|m| m.iter().any(|p| p == "/dev/shm"))
    );
    let file = shm["top_files"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|f| f["path"] == path.to_str().expect("utf-8"))
        })
        .unwrap_or_else(|| panic!("{} not in top_files: {shm}", path.display()));
    assert_eq!(file["allocated_bytes"], size as u64);
    assert_eq!(file["size_bytes"], size as u64);

    let held = shm["deleted_open"]
        .as_array()
        .and_then(|d| d.iter().find(|f| f["name"] == deleted_path.as_str()))
        .unwrap_or_else(|| panic!("{deleted_path} not in deleted_open: {shm}"));
    assert_eq!(held["allocated_bytes"], deleted_size);
    assert!(
        held["holders"]
            .as_array()
            .is_some_and(|h| h.iter().any(|p| *p == child.pid)),
        "holder {} missing: {held}",
        child.pid
    );
    assert!(shm["deleted_open_bytes"].as_u64().expect("bytes") >= deleted_size);
    let allocated = shm["allocated_bytes"].as_u64().expect("allocated");
    let walked = shm["walked_bytes"].as_u64().expect("walked");
    assert!(allocated >= size as u64 && walked >= size as u64);
    assert!(shm["unreachable_bytes"].is_u64(), "{shm}");
}

#[test]
fn memfd_held_by_a_descriptor_is_reported_with_its_holder() {
    require_root("live");
    let bytes = (1u64 << 20) + 4096;
    let child = Child::spawn(&["memfd", "memscope-live", &bytes.to_string()]);
    let lines = run_once(tmpfs_config()).expect("agent runs");
    let memfd = lines
        .iter()
        .find(|l| {
            l["kind"] == "memfd"
                && l["name"] == "/memfd:memscope-live"
                && l["holders"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|p| *p == child.pid))
        })
        .unwrap_or_else(|| panic!("no memfd record held by {}", child.pid));
    assert_eq!(memfd["allocated_bytes"], bytes);
    assert_eq!(memfd["holder_count"], 1);
    assert!(memfd["inode"].as_u64().is_some_and(|i| i > 0));
}

/// The one record of `kind` (a ledger).
fn only<'a>(lines: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} record, got {found:?}");
    found[0]
}

fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

#[test]
fn names_with_a_backslash_stay_byte_exact_in_every_record() {
    require_root("live");
    let tag = std::process::id().to_string();
    let hog = Child::spawn(&["names", &tag]);
    let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
    let shm_path = info["shm_path"].as_str().expect("path").to_string();
    let _guard = RemoveOnDrop(vec![PathBuf::from(&shm_path)]);
    assert!(shm_path.contains(r"lit\101oct"), "{shm_path}");
    let memfd_name = info["memfd_name"].as_str().expect("name");
    assert_eq!(memfd_name, r"acc-priv\101x");

    let mut config = Config::default();
    config.collectors.smaps.min_object_pss = memscope_agent::config::ByteSize(0);
    config.collectors.tmpfs.top_files = Positive(10_000);
    let lines = run_once(config).expect("agent runs");

    let shm = object(&lines, |o| {
        o["object_kind"] == "tmpfs" && o["inode"] == info["shm_inode"]
    });
    assert_eq!(shm["label"], shm_path.as_str(), "tmpfs object label");
    let memfd = object(&lines, |o| {
        o["object_kind"] == "memfd" && o["inode"] == info["memfd_inode"]
    });
    assert_eq!(
        memfd["label"],
        format!("memfd:{memfd_name}").as_str(),
        "memfd object label"
    );
    let held = lines
        .iter()
        .find(|l| l["kind"] == "memfd" && l["inode"] == info["memfd_inode"])
        .expect("memfd record");
    assert_eq!(held["name"], format!("/memfd:{memfd_name}").as_str());
    let in_top_files = lines
        .iter()
        .filter(|l| l["kind"] == "tmpfs")
        .filter_map(|l| l["top_files"].as_array())
        .flatten()
        .any(|f| f["path"] == shm_path.as_str());
    assert!(
        in_top_files,
        "{shm_path} not among any tmpfs record's top_files"
    );
}

#[test]
fn copy_on_write_pages_of_a_private_tmpfs_mapping_are_not_the_files() {
    require_root("live");
    const BYTES: u64 = 2 << 20;
    let path = format!("/dev/shm/memscope-live-cow-{}", std::process::id());
    let _guard = RemoveOnDrop(vec![PathBuf::from(&path)]);
    let hog = Child::spawn(&["cow", &path, &BYTES.to_string()]);
    let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
    let mut config = Config::default();
    config.collectors.smaps.min_object_pss = memscope_agent::config::ByteSize(0);
    let lines = run_once(config).expect("agent runs");
    let file = object(&lines, |o| {
        o["object_kind"] == "tmpfs" && o["inode"] == info["inode"]
    });
    // Every page is mapped; the written half is anonymous copies, the rest the file's pages.
    assert_eq!(file["rss_bytes"].as_u64(), Some(BYTES), "{file}");
    assert_eq!(file["anonymous_bytes"].as_u64(), Some(BYTES / 2), "{file}");
    // The ledger's mapped tmpfs is the tmpfs objects' PSS without their copy-on-write pages.
    let own: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "object" && l["object_kind"] == "tmpfs")
        .map(|l| {
            let pss = l["pss_bytes"].as_u64().expect("pss");
            pss.saturating_sub(l["anonymous_bytes"].as_u64().expect("anonymous"))
        })
        .sum();
    let ledger = only(&lines, "shmem_ledger");
    assert_eq!(ledger["tmpfs_mapped_bytes"].as_u64(), Some(own), "{ledger}");
}

/// Reserves huge pages for a test and gives the old `nr_hugepages` back on drop.
struct HugePages {
    old: u64,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    /// Adds `extra` default-size huge pages to the pool.
    fn reserve(extra: u64) -> HugePages {
        let old: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .expect("read nr_hugepages")
            .trim()
            .parse()
            .expect("nr_hugepages is a number");
        let guard = HugePages { old };
        std::fs::write(NR_HUGEPAGES, (old + extra).to_string()).expect("write nr_hugepages");
        let now: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .expect("read nr_hugepages")
            .trim()
            .parse()
            .expect("nr_hugepages is a number");
        assert!(
            now >= old + extra,
            "the kernel gave {now} huge pages, {} wanted",
            old + extra
        );
        guard
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, self.old.to_string()) {
            eprintln!("restoring nr_hugepages to {}: {e}", self.old);
        }
    }
}

#[test]
fn hugetlb_shows_in_its_records_and_ledger_and_not_in_shmem() {
    require_root("live");
    const SIZE: u64 = 4 << 20;
    // Declared before the workload, so the pool is given back after the workload is gone.
    let _pages = HugePages::reserve(8);
    let mut config = Config::default();
    config.collectors.smaps.top_consumers = Positive(10);
    let before = run_once(config.clone()).expect("agent runs");
    let hog = Child::spawn(&["hugetlb", &SIZE.to_string()]);
    let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
    let child = info["child"].as_i64().expect("child pid");
    let lines = run_once(config).expect("agent runs");

    // The SysV segment: hugetlb, resident from its mappings (the kernel's column says 2 GiB).
    let seg = record(
        &lines,
        "sysv",
        "shmid",
        info["shmid"].as_u64().expect("shmid"),
    );
    assert_eq!(seg["hugetlb"], true, "{seg}");
    assert_eq!(seg["resident_bytes"].as_u64(), Some(SIZE), "{seg}");
    assert_eq!(seg["mapped"]["hugetlb_bytes"].as_u64(), Some(SIZE), "{seg}");
    // The memfd: a hugetlb object on hugetlbfs, and a hugetlb fd-held memfd.
    let memfd = object(&lines, |o| {
        o["object_kind"] == "memfd"
            && o["inode"] == info["memfd_inode"]
            && o["dev"] == info["memfd_dev"]
    });
    assert_eq!(memfd["hugetlb"], true, "{memfd}");
    assert_eq!(memfd["hugetlb_bytes"].as_u64(), Some(SIZE), "{memfd}");
    let held = lines
        .iter()
        .find(|l| {
            l["kind"] == "memfd"
                && l["inode"] == info["memfd_inode"]
                && l["dev"] == info["memfd_dev"]
        })
        .expect("memfd record");
    assert_eq!(held["hugetlb"], true, "{held}");
    // The process: both objects' pages.
    let p = process(&lines, child as libc::pid_t);
    assert_eq!(p["hugetlb_bytes"].as_u64(), Some(2 * SIZE), "{p}");

    // The hugetlb ledger counts both; the pool is in use by at least that much.
    let h = only(&lines, "hugetlb_ledger");
    assert!(int(h, "sysv_bytes") >= SIZE as i64, "{h}");
    assert!(int(h, "memfd_bytes") >= SIZE as i64, "{h}");
    assert!(int(h, "used_bytes") >= 2 * SIZE as i64, "{h}");
    assert!(int(h, "explained_bytes") <= int(h, "used_bytes"), "{h}");

    // The Shmem ledger: neither is in it. Its SysV part is exactly the non-hugetlb segments'
    // resident bytes of the same run, and its remainder did not move by the workload's size.
    let l = only(&lines, "shmem_ledger");
    let shmem_sysv: u64 = lines
        .iter()
        .filter(|r| r["kind"] == "sysv" && r["hugetlb"] == false)
        .filter_map(|r| r["resident_bytes"].as_u64())
        .sum();
    assert_eq!(l["sysv_bytes"].as_u64(), Some(shmem_sysv), "{l}");
    let moved =
        int(l, "unexplained_bytes") - int(only(&before, "shmem_ledger"), "unexplained_bytes");
    assert!(
        moved.unsigned_abs() < SIZE,
        "the Shmem remainder moved by {moved} bytes with {SIZE}-byte hugetlb objects: {l}"
    );
}

/// The agent binary: `MEMSCOPE_AGENT_BIN` (set by `cargo xtask test-privileged`), else the debug
/// build beside this test's own executable.
fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMSCOPE_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/live-HASH -> target/debug/memscope-agent
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("memscope-agent"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p memscope-agent` or `cargo xtask test-privileged`",
        bin.display()
    );
    bin
}

#[test]
fn a_run_as_nobody_marks_the_ledger_incomplete_and_says_why() {
    require_root("live");
    // Root's process with 1 MiB of shmem mapped: nobody cannot read its smaps, only its status.
    let bytes = 1u64 << 20;
    let hog = Child::spawn(&["names", &format!("nobody-{}", std::process::id())]);
    let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
    let _guard = RemoveOnDrop(vec![PathBuf::from(
        info["shm_path"].as_str().expect("path"),
    )]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .arg("--once")
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        out.status.success(),
        "the agent as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let l = only(&lines, "shmem_ledger");
    assert_eq!(l["complete"], false, "{l}");
    let why: Vec<&str> = l["incomplete"]
        .as_array()
        .expect("incomplete reasons")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        why.iter()
            .any(|r| r.starts_with("smaps: ") && r.contains("unreadable")),
        "{why:?}"
    );
    assert!(
        why.iter().any(|r| r.starts_with("tmpfs fd scan: ")),
        "{why:?}"
    );
    // The memhog process is approximate (from status), and its shmem is attributed.
    let p = process(&lines, hog.pid);
    assert_eq!(p["numbers"], "approximate", "{p}");
    assert!(p["pss_shmem_bytes"].as_u64() >= Some(2 * bytes), "{p}");
    assert!(
        l["unreadable_shmem_bytes"].as_u64() >= Some(2 * bytes),
        "the memhog's 2 MiB of RssShmem: {l}"
    );
}

/// Done-when of the accuracy issue: on a controlled shared-memory workload (N processes sharing a
/// memfd, a `/dev/shm` file and a SysV segment, plus an unmapped `/dev/shm` file) the Shmem
/// ledger's unexplained remainder stays within 1 % of `Shmem`: both the remainder itself, with the
/// workload running, and how far the workload moved it (counted before `unreadable_held_bytes`,
/// which could otherwise absorb an under-count of the workload). Other activity on the host (other test
/// runs create and remove shmem) can spoil a pair of runs, so a spoiled pair is retried.
#[test]
fn shmem_ledger_explains_a_shared_memory_workload_within_one_percent() {
    require_root("live");
    const SIZE: u64 = 4 << 20;
    const UNMAPPED: u64 = 3 << 20;
    // memhog also keeps two 64 KiB `/dev/shm` files of one path (one deleted, still mapped).
    let workload = 3 * SIZE + UNMAPPED + (128 << 10);
    for attempt in 1..=5 {
        // meminfo's `Shmem` is a vmstat counter kept per CPU: a CPU's last pages (up to the node's
        // "vm stats threshold" in /proc/zoneinfo, 36 pages on the development VM) reach the
        // global value /proc/meminfo reads only when the vmstat worker folds them, every
        // vm.stat_interval. Right after shmem is made or freed (this workload, or the last test's)
        // Shmem can lag by those pages (it did by 98304 bytes, one run in two, while every source
        // of the ledger was exact): each run waits for the fold.
        std::thread::sleep(2 * vmstat_interval());
        let before = run_once(Config::default()).expect("agent runs");
        let hog = Child::spawn(&["shared", &SIZE.to_string(), "4", &UNMAPPED.to_string()]);
        let info: Value = serde_json::from_str(&hog.info[0]).expect("memhog info");
        let _guard = RemoveOnDrop(
            ["shm_path", "unmapped_path", "same_path"]
                .iter()
                .map(|k| PathBuf::from(info[k].as_str().expect("path")))
                .collect(),
        );
        std::thread::sleep(2 * vmstat_interval());
        let with = run_once(Config::default()).expect("agent runs");
        drop(hog);
        let (a, b) = (only(&before, "shmem_ledger"), only(&with, "shmem_ledger"));
        let grew = int(b, "shmem_bytes") - int(a, "shmem_bytes");
        // The workload's own attribution, before the ledger gives any of the remainder to
        // unreadable processes' cgroups (which would hide an under-count up to that bound).
        let before_held = |l: &Value| int(l, "unexplained_bytes") + int(l, "unreadable_held_bytes");
        let moved = before_held(b) - before_held(a);
        let bound = int(b, "shmem_bytes") / 100;
        eprintln!(
            "attempt {attempt}: Shmem {} -> {} (+{grew}, workload {workload}); unexplained before unreadable_held {} -> {} ({moved:+}), bound {bound}",
            int(a, "shmem_bytes"),
            int(b, "shmem_bytes"),
            before_held(a),
            before_held(b),
        );
        // Where the explained part moved, against the workload's own objects: a source that moved
        // by other than its objects over- or under-counts.
        let parts = [
            "tmpfs_bytes",
            "devtmpfs_bytes",
            "sysv_bytes",
            "memfd_bytes",
            "shared_anon_bytes",
            "unreadable_shmem_bytes",
        ]
        .map(|k| format!("{k} {:+}", int(b, k) - int(a, k)));
        eprintln!(
            "  explained moved by: {} (workload: memfd {SIZE}, sysv {SIZE}, tmpfs {})",
            parts.join(", "),
            workload - 2 * SIZE
        );
        let left = int(b, "unexplained_bytes");
        eprintln!(
            "  with the workload: unexplained {left} of Shmem {} (unreadable shmem {}, unreadable held {}, complete {})",
            int(b, "shmem_bytes"),
            int(b, "unreadable_shmem_bytes"),
            int(b, "unreadable_held_bytes"),
            b["complete"]
        );
        if moved.abs() <= bound && left.abs() <= bound {
            return;
        }
    }
    panic!(
        "in 5 attempts the remainder (or its move) was never within 1 % of Shmem with the workload"
    );
}

/// How often the kernel folds per-CPU vmstat deltas into the global counters /proc/meminfo reads
/// (`vm.stat_interval`, seconds; 1 s when unreadable).
fn vmstat_interval() -> std::time::Duration {
    let secs = std::fs::read_to_string("/proc/sys/vm/stat_interval")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    std::time::Duration::from_secs(secs)
}

/// `Shmem` from /proc/meminfo, in bytes.
fn meminfo_shmem() -> u64 {
    kb_field("/proc/meminfo", "Shmem")
}

/// The agent's ledger: (Shmem, unexplained).
fn ledger_of(lines: &[Value]) -> (i64, i64) {
    let l = lines
        .iter()
        .find(|l| l["kind"] == "shmem_ledger")
        .expect("ledger");
    (
        l["shmem_bytes"].as_i64().expect("shmem"),
        l["unexplained_bytes"].as_i64().expect("unexplained"),
    )
}

/// A tmpfs mounted only in a second mount namespace (`unshare -m`), holding a file that a process in
/// that namespace maps: the tmpfs gets a record naming that namespace, the mapping is a `tmpfs`
/// object, and the ledger explains the file: with the namespace gone, `Shmem` drops by about the
/// file's size and the unexplained remainder moves by far less. Other tests run concurrently, so an
/// attempt whose `Shmem` moved by much more or less than the file is retried.
#[test]
fn a_tmpfs_in_another_mount_namespace_is_seen_and_explained() {
    require_root("live");
    const SIZE: u64 = 32 << 20;
    let mut config = Config::default();
    config.collectors.processes.enabled = false;
    config.collectors.tmpfs.top_files = Positive(10);
    for attempt in 1..=4 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mnt_s = mnt.to_str().expect("utf-8 tempdir").to_string();
        let file = format!("{mnt_s}/f");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=64m memscope-live "$1" && exec "$2" map-file "$1/f" "$3""#)
            .args(["sh", &mnt_s, env!("CARGO_BIN_EXE_memhog"), &SIZE.to_string()]);
        let child = Child::spawn_command(cmd);
        let info: Value = serde_json::from_str(&child.info[0]).expect("memhog info");
        let inode = info["inode"].as_u64().expect("inode");
        let in_ns = format!("/proc/{}/root{file}", child.pid);
        let meta = std::fs::metadata(&in_ns).expect("the file, through the child's root");
        assert_eq!(meta.ino(), inode);
        let dev = Dev::from_st_dev(meta.dev()).to_string();
        assert!(
            std::fs::metadata(&mnt).expect("stat").dev() != meta.dev(),
            "the tmpfs must not be mounted in the test's own namespace"
        );
        let ns_link = std::fs::read_link(format!("/proc/{}/ns/mnt", child.pid)).expect("ns link");
        let ns_inode: u64 = ns_link
            .to_str()
            .and_then(|t| t.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok())
            .expect("mnt:[N]");

        let with = run_once(config.clone()).expect("agent runs");
        let tmpfs = record(&with, "tmpfs", "dev", dev.as_str());
        assert_eq!(tmpfs["error"], Value::Null, "{tmpfs}");
        assert_eq!(tmpfs["hidden"], false);
        let ns = tmpfs["namespaces"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["mnt_ns"].as_u64() == Some(ns_inode)))
            .unwrap_or_else(|| panic!("namespace {ns_inode} not listed: {tmpfs}"));
        assert_eq!(
            ns["pid"].as_u64(),
            Some(u64::from(child.pid as u32)),
            "{tmpfs}"
        );
        assert!(
            ns["mount_points"]
                .as_array()
                .is_some_and(|m| m.iter().any(|p| *p == mnt_s.as_str())),
            "{tmpfs}"
        );
        assert_eq!(tmpfs["walk_ns"]["mnt_ns"].as_u64(), Some(ns_inode));
        assert!(tmpfs["allocated_bytes"].as_u64().expect("allocated") >= SIZE);
        let top = tmpfs["top_files"]
            .as_array()
            .and_then(|t| t.iter().find(|f| f["path"] == file.as_str()))
            .unwrap_or_else(|| panic!("{file} not in top_files: {tmpfs}"));
        assert_eq!(top["allocated_bytes"].as_u64(), Some(SIZE));
        let obj = object(&with, |o| {
            o["inode"].as_u64() == Some(inode) && o["dev"] == dev.as_str()
        });
        assert_eq!(obj["object_kind"], "tmpfs", "{obj}");
        assert_eq!(obj["pss_bytes"].as_u64(), Some(SIZE), "{obj}");

        // The namespace goes with its only process, and the tmpfs with it.
        let shmem_with = meminfo_shmem();
        drop(child);
        for _ in 0..100 {
            if meminfo_shmem() + SIZE / 2 <= shmem_with {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let without = run_once(config.clone()).expect("agent runs");
        let (s1, u1) = ledger_of(&with);
        let (s0, u0) = ledger_of(&without);
        let (d_shmem, d_unexplained) = (s1 - s0, u1 - u0);
        let size = SIZE as i64;
        eprintln!("attempt {attempt}: Shmem moved by {d_shmem}, unexplained by {d_unexplained}");
        if (d_shmem - size).abs() > size / 4 {
            eprintln!(
                "attempt {attempt}: Shmem moved by {d_shmem}, not about {size}: other work on the \
                 host, retrying"
            );
            continue;
        }
        assert!(
            d_unexplained.abs() < size / 2,
            "the file's {size} bytes went to the unexplained remainder: it moved by \
             {d_unexplained} while Shmem moved by {d_shmem}"
        );
        return;
    }
    panic!("in 4 attempts Shmem never moved by about the file's size alone: host too busy");
}

/// The eBPF tracker's pids are the initial pid namespace's: the host's `/proc`, wherever it is
/// mounted (a DaemonSet's `/host/proc`), gives the tracker the agent's own host pid; the `/proc` of
/// another pid namespace does not (the agent then polls, saying why).
#[test]
fn only_the_hosts_proc_wherever_mounted_gives_the_ebpf_tracker_its_pids() {
    use memscope_agent::procfs::pidns::ebpf_pids;

    require_root("live");
    let me = std::process::id();
    assert_eq!(ebpf_pids(std::path::Path::new("/proc")), Ok(me));

    /// A bind mount of the host's `/proc`, unmounted on drop.
    struct Bind(tempfile::TempDir);
    impl Drop for Bind {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }
    let bind = Bind(tempfile::tempdir().expect("tempdir"));
    let mounted = Command::new("mount")
        .args(["--bind", "/proc"])
        .arg(bind.0.path())
        .status()
        .expect("mount (util-linux)");
    assert!(
        mounted.success(),
        "mount --bind /proc {}",
        bind.0.path().display()
    );
    assert_eq!(ebpf_pids(bind.0.path()), Ok(me));
    drop(bind);

    // A pid namespace of its own with its own proc filesystem, seen through its init's root.
    let mut ns = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg("echo ready; exec sleep 600")
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut line = String::new();
    BufReader::new(ns.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    let root = PathBuf::from(format!("/proc/{}/root/proc", ns.id()));
    let verdict = ebpf_pids(&root);
    let _ = ns.kill();
    let _ = ns.wait();
    let why = verdict.expect_err("another pid namespace");
    assert!(why.contains("another pid namespace"), "{why}");
}
