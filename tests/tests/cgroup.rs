//! The cgroup collector live (privileged lane, root): a memory cgroup made by the test with a
//! 64 MiB limit and a child in it. The `cgroup` record's usage and limit equal the kernel's files,
//! the child's `process` record names the cgroup, and its PSS shows in the cgroup's fair share.
//! Uses the v1 memory controller where the host has it (the development VM), else cgroup v2.

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
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path without NUL");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memhog"));
        cmd.args(["anon", CHILD_BYTES]).stdout(Stdio::piped());
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
        let mut child = cmd.spawn().expect("spawn memhog in the cgroup");
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id();
        self.child = Some(child);
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while line.trim() != "ready" {
            line.clear();
            let n = reader.read_line(&mut line).expect("read memhog");
            assert!(n > 0, "memhog exited before ready");
        }
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
