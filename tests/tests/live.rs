//! Live workloads (privileged lane, root): child processes with known memory, and the agent's numbers
//! for them compared with what the kernel says at that moment.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use memscope_agent::config::Config;
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
