//! The cgroup collector live (privileged lane, root): a memory cgroup made by the test with a
//! 64 MiB limit and a child in it. The `cgroup` record's usage and limit equal the kernel's files,
//! the child's `process` record names the cgroup, and its PSS shows in the cgroup's fair share.
//! Uses the v1 memory controller where the host has it (the development VM), else cgroup v2.
//!
//! OOM kills: a child in such a cgroup (swap off) driven to twice the limit is killed; with the eBPF
//! tracker and with polling, its `exit` record says `"reason": "oom_kill"` (inferred, and marked
//! so, with polling), and the cgroup's `events.oom_kill` moves from 0 in the exit's emission (with
//! eBPF: in the at-once lines sent with the exit).

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use memscope_agent::config::{Config, Positive};
use memscope_tests::{require_root, run_once};
use serde_json::Value;

const LIMIT: u64 = 64 << 20;
const CHILD_BYTES: &str = "16777216";

/// The test's cgroup and the child in it; on drop (also on failure) the child is killed and the
/// cgroup removed.
struct TestCgroup {
    dir: PathBuf,
    /// The path `/proc/PID/cgroup` shows.
    rel: String,
    usage_file: &'static str,
    limit_file: &'static str,
    child: Option<std::process::Child>,
}

impl TestCgroup {
    fn create() -> TestCgroup {
        let name = format!(
            "memscope-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (base, usage_file, limit_file) = if v1.join("memory.usage_in_bytes").is_file() {
            (v1, "memory.usage_in_bytes", "memory.limit_in_bytes")
        } else {
            let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
                .unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "memory"),
                "no cgroup memory controller on this host: neither v1 /sys/fs/cgroup/memory nor v2 with memory in cgroup.subtree_control"
            );
            (Path::new("/sys/fs/cgroup"), "memory.current", "memory.max")
        };
        let dir = base.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = TestCgroup {
            dir,
            rel: format!("/{name}"),
            usage_file,
            limit_file,
            child: None,
        };
        std::fs::write(cg.dir.join(limit_file), LIMIT.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", cg.dir.join(limit_file).display()));
        cg
    }

    fn read(&self, file: &str) -> u64 {
        let path = self.dir.join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()))
    }

    /// Starts `memhog anon` inside the cgroup: the child joins it before exec, so everything it
    /// touches is charged there. Returns its pid once it is `ready`.
    fn spawn_child(&mut self) -> u32 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memhog"));
        cmd.args(["anon", CHILD_BYTES]).stdout(Stdio::piped());
        let pid = self.spawn(cmd);
        let stdout = self
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while line.trim() != "ready" {
            line.clear();
            let n = reader.read_line(&mut line).expect("read memhog");
            assert!(n > 0, "memhog exited before ready");
        }
        pid
    }

    /// Starts `cmd` inside the cgroup (it joins before exec); returns its pid.
    fn spawn(&mut self, mut cmd: Command) -> u32 {
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path without NUL");
        // SAFETY: between fork and exec only raw syscalls (open, write, close through rustix, no
        // allocation: the path is a CString made before the fork); "0" moves the writing process
        // itself.
        unsafe {
            cmd.pre_exec(move || {
                use rustix::fs::{Mode, OFlags};
                let fd = rustix::fs::open(
                    procs.as_c_str(),
                    OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rustix::io::write(&fd, b"0")?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn a child in the cgroup");
        let pid = child.id();
        self.child = Some(child);
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The cgroup can be removed once its last process is reaped; give the kernel a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.agent.host = "cgroup-test".to_string();
    config.collectors.smaps.enabled = false;
    config.collectors.tmpfs.enabled = false;
    config.collectors.sysv.enabled = false;
    config.collectors.cgroup.max_records = Positive(100_000);
    config
}

#[test]
fn a_cgroup_with_a_limit_and_a_child_matches_the_kernel_and_carries_its_fair_share() {
    require_root("cgroup");
    let mut cg = TestCgroup::create();
    let pid = cg.spawn_child();

    // The child is idle after `ready`, so its cgroup's usage is steady; a run counts only when the
    // kernel's file read the same before and after it (a handful of tries; never a timing bound).
    let mut last = None;
    for _ in 0..5 {
        let before = cg.read(cg.usage_file);
        let lines = run_once(config()).expect("agent runs");
        let after = cg.read(cg.usage_file);
        let stable = before == after;
        last = Some((before, after, lines));
        if stable {
            break;
        }
    }
    let (before, after, lines) = last.expect("ran");
    let record = lines
        .iter()
        .find(|l| l["kind"] == "cgroup" && l["path"] == cg.rel.as_str())
        .unwrap_or_else(|| panic!("no cgroup record for {}", cg.rel));
    let usage = record["usage_bytes"].as_u64().expect("usage_bytes");
    assert!(
        (before.min(after)..=before.max(after)).contains(&usage),
        "usage_bytes {usage} vs the kernel's {} read before ({before}) and after ({after})",
        cg.usage_file
    );
    assert!(
        usage >= 16 << 20,
        "the child's 16 MiB are charged here: {usage}"
    );
    assert_eq!(record["limit_bytes"].as_u64(), Some(cg.read(cg.limit_file)));
    assert_eq!(record["limit_bytes"].as_u64(), Some(LIMIT));
    assert_eq!(record["events"]["oom_kill"].as_u64(), Some(0));

    let process: &Value = lines
        .iter()
        .find(|l| l["kind"] == "process" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no process record for pid {pid}"));
    assert_eq!(process["cgroup"], cg.rel.as_str());
    let pss = process["pss_bytes"].as_u64().expect("pss_bytes");
    assert!(
        pss >= 16 << 20,
        "the child's PSS covers what it touched: {pss}"
    );
    // The child is the only process in the cgroup: the fair share is its PSS.
    assert_eq!(record["fair"]["processes"], 1);
    assert_eq!(record["fair"]["pss_bytes"].as_u64(), Some(pss));
    assert_eq!(record["fair"]["uss_bytes"], process["uss_bytes"]);
    // And it counts in every ancestor's fair share too (the root's).
    let root = lines
        .iter()
        .find(|l| l["kind"] == "cgroup" && l["path"] == "/")
        .expect("root cgroup record");
    assert!(root["fair"]["pss_bytes"].as_u64().expect("root pss") >= pss);
}

/// What the OOM test's child touches: twice the cgroup's limit.
const OOM_BYTES: &str = "134217728";

impl TestCgroup {
    /// No swap for the cgroup, so a child past the limit is OOM-killed rather than swapped out.
    fn no_swap(&self) {
        let writes: &[(&str, String)] = if self.limit_file == "memory.limit_in_bytes" {
            &[
                ("memory.swappiness", "0".into()),
                ("memory.memsw.limit_in_bytes", LIMIT.to_string()),
            ]
        } else {
            &[("memory.swap.max", "0".into())]
        };
        for (file, value) in writes {
            let path = self.dir.join(file);
            // memsw/swap files are absent when the kernel does no swap accounting: then there is
            // nothing to turn off beyond swappiness.
            if path.exists() {
                std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}

/// Runs the agent (in this process, on its own thread) with a 1 s interval and `tracker`, its
/// output in a file; stops it on drop.
struct RunningAgent {
    out: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningAgent {
    fn start(tracker: memscope_agent::config::TrackerMode) -> RunningAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.jsonl");
        let mut config = config();
        config.agent.tracker = tracker;
        config.agent.interval = memscope_agent::config::Interval(std::time::Duration::from_secs(1));
        config.output.sink = memscope_agent::config::SinkKind::File;
        config.output.path = Some(out.clone());
        let sink = memscope_agent::runtime::open_sink(&config).expect("open the sink");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(memscope_agent::runtime::run(config, sink, false, async {
                let _ = stopped.await;
            }))
        });
        RunningAgent {
            out,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The complete lines written so far.
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Err(e)) => eprintln!("agent: {e:#}"),
                Err(_) => eprintln!("agent thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// Drives a child in a 64 MiB cgroup past the limit with the agent running under `tracker`: an
/// `exit` record with `"reason": "oom_kill"` arrives for that pid (with `reason_inferred` exactly
/// when `inferred`), and the cgroup record's `events.oom_kill` moved from 0.
fn oom_kill_is_reported(tracker: memscope_agent::config::TrackerMode, inferred: bool) {
    require_root("cgroup");
    let mut cg = TestCgroup::create();
    cg.no_swap();
    let agent = RunningAgent::start(tracker);
    // A shell first, so the agent sends the process before it dies (an exit seen by polling is
    // reported only for a process it had sent); it then execs memhog under the same pid.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "sleep 3; exec {} anon {OOM_BYTES}",
            env!("CARGO_BIN_EXE_memhog")
        ),
    ])
    .stdout(Stdio::null());
    let pid = cg.spawn(cmd);
    let status = cg
        .child
        .as_mut()
        .expect("child")
        .wait()
        .expect("wait for the child");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child was not OOM-killed: {status:?}"
    );
    cg.child = None;
    assert!(cg.read_oom_kill() >= 1, "the kernel counted the kill");

    // Wait (bounded, for a failure message rather than a hang) for the exit record and a cgroup
    // record showing the kill.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (lines, exit) = loop {
        let lines = agent.lines();
        let exit = lines
            .iter()
            .find(|l| l["kind"] == "exit" && l["pid"] == pid)
            .cloned();
        let counted = lines.iter().any(|l| {
            l["kind"] == "cgroup"
                && l["path"] == cg.rel.as_str()
                && l["events"]["oom_kill"].as_u64() >= Some(1)
        });
        if let (Some(exit), true) = (&exit, counted) {
            break (lines.clone(), exit.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit record for {pid} with the kill counted after 30 s: exit {exit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(exit["reason"], "oom_kill", "{exit}");
    assert_eq!(exit["cgroup"], cg.rel.as_str(), "{exit}");
    assert_eq!(exit.get("reason_inferred").is_some(), inferred, "{exit}");
    let records: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "cgroup" && l["path"] == cg.rel.as_str())
        .collect();
    let counts: Vec<Option<u64>> = records
        .iter()
        .map(|l| l["events"]["oom_kill"].as_u64())
        .collect();
    assert_eq!(
        counts.first(),
        Some(&Some(0)),
        "the counter moved: {counts:?}"
    );
    // The exit and the moved counter in one emission: a cgroup record with the exit's seq (with
    // eBPF, sent at once with it, marked so, right after it; with polling, in the emission that
    // reports the exit) counts the kill, and no record before it did.
    let same = records
        .iter()
        .find(|l| l["seq"] == exit["seq"] && l["at_once"] == exit["at_once"])
        .unwrap_or_else(|| {
            panic!(
                "no cgroup record for {} in the exit's emission (seq {}): {records:?}",
                cg.rel, exit["seq"]
            )
        });
    assert!(
        same["events"]["oom_kill"].as_u64() >= Some(1),
        "the exit's emission shows the kill: {same}"
    );
    let first_counted = records
        .iter()
        .position(|l| l["events"]["oom_kill"].as_u64() >= Some(1));
    let same_at = records.iter().position(|l| std::ptr::eq(*l, *same));
    assert_eq!(
        first_counted, same_at,
        "the kill shows first in the exit's emission: {counts:?}"
    );
}

impl TestCgroup {
    /// The kernel's OOM kill count of the cgroup.
    fn read_oom_kill(&self) -> u64 {
        let file = if self.limit_file == "memory.limit_in_bytes" {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        let path = self.dir.join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no oom_kill line: {text:?}", path.display()))
    }
}

#[test]
fn an_oom_kill_with_ebpf_sends_the_exit_with_its_reason() {
    oom_kill_is_reported(memscope_agent::config::TrackerMode::Ebpf, false);
}

#[test]
fn an_oom_kill_without_ebpf_is_inferred_from_the_cgroup_counter() {
    oom_kill_is_reported(memscope_agent::config::TrackerMode::Polling, true);
}
