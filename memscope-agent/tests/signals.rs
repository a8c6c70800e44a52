//! The agent loop end to end, unprivileged: a read that never returns (a FIFO in a fake proc tree),
//! the signals (SIGTERM, SIGHUP reload good and bad, SIGUSR1/SIGUSR2), and the tracker over a tree
//! that is not the host's `/proc`.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Generous bounds: they catch a hang, not a slow host.
const LIMIT: Duration = Duration::from_secs(60);

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memscope-agent"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/proc")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        let ty = e.file_type().expect("file type");
        if ty.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if ty.is_symlink() {
            let target = std::fs::read_link(e.path()).expect("readlink");
            std::os::unix::fs::symlink(target, dest).expect("symlink");
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// The fixture tree with `43/smaps_rollup` replaced by a FIFO nobody writes to: opening it blocks.
fn tree_with_a_fifo(dir: &Path) -> PathBuf {
    let proc = dir.join("proc");
    copy_tree(&fixtures(), &proc);
    let rollup = proc.join("43/smaps_rollup");
    std::fs::remove_file(&rollup).expect("rm");
    let status = Command::new("mkfifo")
        .arg(&rollup)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    proc
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("memscope.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

const BASE: &str = "[agent]\ninterval = \"200ms\"\ntracker = \"polling\"\n";

/// For the stuck `smaps_rollup`: without the smaps collector, whose `smaps` read of the same tick
/// would stand in for the rollup (one page walk for both tiers), so the rollup is read.
const ROLLUP_READ: &str = "[collectors.smaps]\nenabled = false\n";

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{name}");
}

/// A running agent: its stdout lines collected as they come, its stderr in a file.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(dir: &Path, cfg: &Path, proc: &Path) -> Running {
        let stderr = dir.join("stderr");
        let mut child = agent()
            .arg("--config")
            .arg(cfg)
            .arg("--proc-root")
            .arg(proc)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn the agent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                match l {
                    Ok(l) => sink.lock().expect("lines").push(l),
                    Err(_) => break,
                }
            }
        });
        Running {
            child,
            lines,
            stderr,
            reader: Some(reader),
        }
    }

    fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `cond` holds for the records so far.
    fn wait_for(&mut self, what: &str, cond: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        while !cond(&self.records()) {
            if start.elapsed() > LIMIT || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                panic!("never saw {what}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent's log so far satisfies `cond`.
    fn wait_for_log(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !cond(&self.stderr()) {
            assert!(
                start.elapsed() < LIMIT,
                "never saw {what}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `n` emissions more than seen so far.
    fn wait_for_more_emissions(&mut self, n: usize) {
        let seen = count(&self.records(), "agent");
        self.wait_for("more emissions", |r| count(r, "agent") >= seen + n);
    }

    /// Sends `sig`, then waits for the agent to exit; every stdout line is then read.
    fn stop(mut self, sig: &str) -> (ExitStatus, Vec<Value>, String) {
        signal(&self.child, sig);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                panic!(
                    "the agent did not exit on SIG{sig}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        let raw = self.lines.lock().expect("lines").clone();
        (status, self.records(), self.stderr_checked(&raw))
    }

    fn stderr_checked(&self, raw: &[String]) -> String {
        // Every line is whole JSON (records() parses each) and the stream ends with an emission.
        if let Some(last) = raw.last() {
            assert!(last.contains("\"kind\":\"agent\""), "last line: {last}");
        }
        self.stderr()
    }
}

/// An agent over the fixture tree (config [`BASE`] in a temporary directory), after its first
/// emission.
fn started_over_fixtures() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), BASE);
    let mut running = Running::start(dir.path(), &cfg, &fixtures());
    running.wait_for("an emission", |r| count(r, "agent") >= 1);
    (dir, running)
}

fn count(records: &[Value], kind: &str) -> usize {
    records.iter().filter(|r| r["kind"] == kind).count()
}

fn snapshots(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["kind"] == "snapshot").collect()
}

#[test]
fn once_with_a_stuck_read_finishes_with_the_other_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc = tree_with_a_fifo(dir.path());
    let cfg = write_config(dir.path(), &format!("{BASE}{ROLLUP_READ}"));
    let mut child = agent()
        .args(["--once", "--config"])
        .arg(&cfg)
        .arg("--proc-root")
        .arg(&proc)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read while waiting: a full pipe must not be what blocks it.
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s).expect("read");
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("--once hung on a stuck read");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let stdout = reader.join().expect("reader");
    let records: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let pids: Vec<u64> = records
        .iter()
        .filter(|r| r["kind"] == "process")
        .filter_map(|r| r["pid"].as_u64())
        .collect();
    assert_eq!(pids, [1, 2, 44], "every process but the stuck one");
    let warnings = records[0]["warnings"].to_string();
    assert!(warnings.contains("43/smaps_rollup"), "{warnings}");
    assert!(warnings.contains("did not return"), "{warnings}");
    let agent = records.last().expect("agent record");
    assert_eq!(agent["kind"], "agent");
    assert_eq!(agent["stuck_reads"]["abandoned"], 1);
    assert_eq!(agent["stuck_reads"]["penalty_box"][0]["pid"], 43);
}

#[test]
fn a_daemon_with_a_stuck_read_emits_skips_the_boxed_pid_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc = tree_with_a_fifo(dir.path());
    // Whole records every emission: each one must carry the other processes and the counters.
    let cfg = write_config(
        dir.path(),
        &format!("{BASE}{ROLLUP_READ}[output]\nemit = \"full\"\n"),
    );
    let mut running = Running::start(dir.path(), &cfg, &proc);
    running.wait_for("three emissions", |r| count(r, "agent") >= 3);
    let (status, records, stderr) = running.stop("TERM");
    assert!(status.success(), "{stderr}");
    // The stuck read was abandoned once: later runs do not touch pid 43 (its backoff is 1 min).
    let last = records.last().expect("agent");
    assert_eq!(last["stuck_reads"]["abandoned"], 1, "{last}");
    assert_eq!(last["stuck_reads"]["penalty_box"][0]["pid"], 43);
    assert!(
        records
            .iter()
            .all(|r| r["kind"] != "process" || r["pid"] != 43)
    );
    assert!(count(&records, "process") >= 3 * 3);
    assert!(stderr.contains("43/smaps_rollup"), "{stderr}");
}

#[test]
fn sighup_with_a_valid_config_switches_collectors_without_a_restart() {
    let (dir, mut running) = started_over_fixtures();
    assert!(count(&running.records(), "process") > 0);
    let pid = running.child.id();
    write_config(
        dir.path(),
        &format!("{BASE}[collectors.processes]\nenabled = false\n"),
    );
    signal(&running.child, "HUP");
    let without = |r: &Value| r["collectors"].get("processes").is_none();
    running.wait_for("two emissions without processes", |r| {
        snapshots(r).iter().filter(|s| without(s)).count() >= 2
    });
    assert_eq!(running.child.id(), pid);
    let (status, records, stderr) = running.stop("TERM");
    assert!(status.success(), "{stderr}");
    // After the first snapshot without the collector, no process record.
    let first = records
        .iter()
        .position(|r| r["kind"] == "snapshot" && without(r))
        .expect("snapshot");
    assert_eq!(count(&records[first..], "process"), 0);
    assert!(
        stderr.contains("SIGHUP: the new config is running"),
        "{stderr}"
    );
}

#[test]
fn sighup_with_an_invalid_config_logs_one_line_and_keeps_the_old_one() {
    let (dir, mut running) = started_over_fixtures();
    write_config(dir.path(), "[agent]\nintreval = \"1s\"\n");
    signal(&running.child, "HUP");
    running.wait_for_log("a log line for the bad config", |l| l.contains("SIGHUP"));
    running.wait_for_more_emissions(2);
    let (status, records, stderr) = running.stop("TERM");
    assert!(status.success(), "{stderr}");
    let rejected: Vec<&str> = stderr.lines().filter(|l| l.contains("SIGHUP")).collect();
    assert_eq!(rejected.len(), 1, "{stderr}");
    assert!(
        rejected[0].contains("memscope.toml")
            && rejected[0].contains("line 2")
            && rejected[0].contains("agent.intreval"),
        "{}",
        rejected[0]
    );
    // The old config still runs: one stream, seq counting on, processes in every emission.
    let seqs: Vec<u64> = snapshots(&records)
        .iter()
        .filter_map(|s| s["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        snapshots(&records)
            .iter()
            .all(|s| s["collectors"].get("processes").is_some())
    );
}

#[test]
fn sigusr1_and_sigusr2_do_not_stop_the_agent() {
    let (_dir, mut running) = started_over_fixtures();
    signal(&running.child, "USR1");
    signal(&running.child, "USR2");
    running.wait_for_log("both signals logged", |l| {
        l.contains("SIGUSR1") && l.contains("SIGUSR2")
    });
    running.wait_for_more_emissions(2);
    let (status, _, stderr) = running.stop("INT");
    assert!(status.success(), "{stderr}");
}

/// The eBPF tracker names processes by their host pids: over a fixture tree the daemon polls and
/// says why in one log line, as root too, so no host process's exit lands in the fixture stream.
#[test]
fn over_a_fixture_tree_the_tracker_polls_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[agent]\ninterval = \"200ms\"\n");
    let mut running = Running::start(dir.path(), &cfg, &fixtures());
    running.wait_for("an emission", |r| count(r, "agent") >= 1);
    // A host process that starts and ends while the agent runs: eBPF would report its exit.
    let done = Command::new("true").status().expect("run true");
    assert!(done.success());
    running.wait_for_more_emissions(2);
    let (status, records, stderr) = running.stop("TERM");
    assert!(status.success(), "{stderr}");
    assert!(!snapshots(&records).is_empty());
    for s in snapshots(&records) {
        assert_eq!(s["tracker"]["mode"], "polling", "{s}");
        let reason = s["tracker"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("not a proc filesystem") && reason.contains("fixtures/proc"),
            "{reason}"
        );
    }
    let fallbacks: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("running in polling mode"))
        .collect();
    assert_eq!(fallbacks.len(), 1, "{stderr}");
    assert!(fallbacks[0].contains("not a proc filesystem"), "{stderr}");
    assert_eq!(count(&records, "exit"), 0, "no exit in a fixture stream");
}
