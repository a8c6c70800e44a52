//! Live workloads (privileged lane, root): child processes with known memory, and the agent's numbers
//! for them compared with what the kernel says at that moment.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use memscope_agent::{
    collectors::tmpfs::Dev,
    config::{Config, Positive},
};
use memscope_tests::{require_root, run_once};
use serde_json::Value;

/// A `memhog` workload process, killed on drop.
struct Child {
    child: std::process::Child,
    pid: libc::pid_t,
}

impl Child {
    fn spawn(args: &[&str]) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_memhog"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn memhog");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read memhog");
        assert_eq!(line.trim(), "ready", "memhog did not start");
        let pid = child.id() as libc::pid_t;
        Child { child, pid }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rollup_pss(pid: libc::pid_t) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Pss line");
    kb * 1024
}

fn process(lines: &[Value], pid: libc::pid_t) -> &Value {
    lines
        .iter()
        .find(|l| l["kind"] == "process" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no process record for pid {pid}"))
}

#[test]
fn pss_of_a_child_equals_smaps_rollup_at_that_moment() {
    require_root("live");
    let child = Child::spawn(&["anon", &(32u64 << 20).to_string()]);
    // PSS of shared pages moves when other processes come and go; retry until the kernel's value is
    // the same before and after the agent's pass, then the agent must have seen exactly it.
    for attempt in 1..=5 {
        let before = rollup_pss(child.pid);
        let lines = run_once(Config::default()).expect("agent runs");
        let after = rollup_pss(child.pid);
        if before != after {
            eprintln!(
                "attempt {attempt}: PSS moved during the pass ({before} -> {after}), retrying"
            );
            continue;
        }
        let p = process(&lines, child.pid);
        assert_eq!(p["pss_bytes"], before, "agent PSS vs smaps_rollup");
        assert_eq!(p["numbers"], "exact");
        let uss = p["uss_bytes"].as_u64().expect("uss");
        assert!(uss >= 32 << 20, "USS {uss} must include the 32 MiB touched");
        assert!(p["rss_bytes"].as_u64().expect("rss") >= uss);
        return;
    }
    panic!("PSS of the child never held still across an agent pass");
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

/// Removes a file on drop (also when an assertion fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A config for the tmpfs tests: only the tmpfs collector, with room for every file of /dev/shm.
fn tmpfs_config() -> Config {
    let mut config = Config::default();
    config.collectors.processes.common.enabled = false;
    config.collectors.tmpfs.top_files = Positive(10_000);
    config
}

fn tmpfs_record<'a>(lines: &'a [Value], dev: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["kind"] == "tmpfs" && l["dev"] == dev)
        .unwrap_or_else(|| panic!("no tmpfs record for {dev}"))
}

#[test]
fn tmpfs_reports_a_dev_shm_file_and_a_deleted_file_held_open() {
    require_root("live");
    let me = std::process::id();
    let path = PathBuf::from(format!("/dev/shm/memscope-live-{me}"));
    let _cleanup = RemoveOnDrop(path.clone());
    // 3 MiB and three pages, every page written.
    let size = (3usize << 20) + 3 * 4096;
    std::fs::write(&path, vec![0x5au8; size]).expect("write /dev/shm file");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.blocks() * 512, size as u64, "every page allocated");
    let dev = Dev::from_st_dev(meta.dev()).to_string();

    let deleted_path = format!("/dev/shm/memscope-live-deleted-{me}");
    let _cleanup_deleted = RemoveOnDrop(PathBuf::from(&deleted_path));
    let deleted_size = (2u64 << 20) + 8192;
    let child = Child::spawn(&["shm-deleted", &deleted_path, &deleted_size.to_string()]);

    let lines = run_once(tmpfs_config()).expect("agent runs");
    let shm = tmpfs_record(&lines, &dev);
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
