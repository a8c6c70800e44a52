//! Live workloads (privileged lane, root): child processes with known memory, and the agent's numbers
//! for them compared with what the kernel says at that moment.

use std::time::Duration;

use memscope_agent::config::Config;
use memscope_tests::{require_root, run_once};
use serde_json::Value;

/// A forked child that maps and touches `bytes` of private anonymous memory, then waits to be killed.
struct Child {
    pid: libc::pid_t,
}

impl Child {
    fn with_private_anon(bytes: usize) -> Child {
        // SAFETY: the child only calls async-signal-safe functions (mmap, write through the mapping,
        // pause, _exit) before it is killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(1);
                }
                let base = p.cast::<u8>();
                let mut off = 0;
                while off < bytes {
                    *base.add(off) = 1;
                    off += 4096;
                }
                loop {
                    libc::pause();
                }
            }
        }
        // Let the child touch its pages.
        std::thread::sleep(Duration::from_millis(300));
        Child { pid }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
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

fn process<'a>(lines: &'a [Value], pid: libc::pid_t) -> &'a Value {
    lines
        .iter()
        .find(|l| l["kind"] == "process" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no process record for pid {pid}"))
}

#[test]
fn pss_of_a_child_equals_smaps_rollup_at_that_moment() {
    require_root("live");
    let child = Child::with_private_anon(32 << 20);
    // PSS of shared pages moves when other processes come and go; retry until the kernel's value is
    // the same before and after the agent's pass, then the agent must have seen exactly it.
    for attempt in 1..=5 {
        let before = rollup_pss(child.pid);
        let lines = run_once(Config::default()).expect("agent runs");
        let after = rollup_pss(child.pid);
        if before != after {
            eprintln!("attempt {attempt}: PSS moved during the pass ({before} -> {after}), retrying");
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
    // pid 1 is the root of the tree here: its subtree holds (nearly) every process.
    let procs = kinds.iter().filter(|k| **k == "process").count() as u64;
    assert!(procs > 10, "only {procs} processes");
    let init = process(&lines, 1);
    let subtree = init["subtree"]["processes"].as_u64().expect("subtree");
    assert!(subtree * 10 >= procs * 9, "init subtree {subtree} of {procs}");
    // As root nothing is inaccessible.
    assert!(lines.iter().filter(|l| l["kind"] == "process").all(|l| l["numbers"] != "inaccessible"));
}
