//! The pipeline lane (`cargo xtask test-pipeline`): a real shipper, end to end.
//!
//! The agent runs at a 500 ms interval with a small `max_bytes`, so its file sink rotates many
//! times, and is restarted once. rsyslog (`deploy/pipeline/rsyslog/forwarder.conf`: imfile on the
//! live file, mmjsonparse, omrelp) ships the records over RELP on loopback to a second rsyslog
//! (`receiver.conf`), which writes what it received. The agent's own files are the truth: every
//! line in them must arrive exactly once, parsed as JSON, equal to what the agent wrote, with no
//! partial line; checked by (`ts`, `seq`, `kind`, entity).
//!
//! Needs `rsyslogd` with imfile, mmjsonparse and RELP (Debian: rsyslog, rsyslog-relp) and a built
//! agent: the xtask lane installs and builds both, and this test fails loudly without them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use memscope_tests::{
    agent_bin,
    stream::{Line, SchemaValidator, identity, read_jsonl, rotated_files},
    workspace_root,
};
use serde_json::Value;

/// A process started by this test, sent SIGTERM and reaped on drop (so a failing test leaves no
/// rsyslogd or agent behind).
struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let log_file =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .unwrap_or_else(|e| panic!("{}: {e}", log.display())),
            )
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        Proc {
            name,
            child: Some(child),
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process not stopped yet");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to {} (pid {pid}) failed", self.name);
        child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {} (pid {pid}): {e}", self.name))
    }

    fn assert_running(&mut self, log: &Path) {
        let child = self.child.as_mut().expect("process not stopped");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited early ({status}); its log {}:\n{}",
                self.name,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _status = self.stop();
        }
    }
}

fn find_rsyslogd() -> PathBuf {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "rsyslogd not found: the pipeline lane needs the Debian packages rsyslog and \
             rsyslog-relp; run it through `cargo xtask test-pipeline`, which installs them",
        )
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Reads a checked-in config and replaces each `(from, to)`; every `from` must occur, so a config
/// edit that drops a rewritten path makes this test fail instead of shipping from the wrong place.
fn rewrite(config: &str, replacements: &[(&str, String)]) -> String {
    let path = workspace_root()
        .join("deploy/pipeline/rsyslog")
        .join(config);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{}: expected `{from}` in it to rewrite",
            path.display()
        );
        text = text.replace(from, to);
    }
    text
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; returns whether it held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// The size of one emission on this host now: `memscope-agent --once` on stdout.
fn emission_bytes(agent: &Path) -> u64 {
    let out = Command::new(agent)
        .args(["--once", "--log", "warn"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", agent.display()));
    assert!(
        out.status.success(),
        "memscope-agent --once: {}",
        out.status
    );
    out.stdout.len() as u64
}

/// Runs the agent until its sink has rotated at least `rotations` more times (bounded), then
/// stops it with SIGTERM.
fn run_agent(agent: &Path, config: &Path, sink: &Path, log: &Path, rotations: usize) {
    // path.1 … path.N, without the live file.
    let rotated = || {
        rotated_files(sink)
            .map(|f| f.iter().filter(|p| p.as_path() != sink).count())
            .unwrap_or(0)
    };
    let before = rotated();
    let mut proc = Proc::spawn(
        "memscope-agent",
        Command::new(agent).arg("--config").arg(config),
        log,
    );
    let rotated = wait_for(Duration::from_secs(90), || {
        proc.assert_running(log);
        rotated() >= before + rotations
    });
    let status = proc.stop();
    assert!(
        rotated,
        "the sink did not rotate {rotations} times within 90 s; agent log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
}

fn describe(l: &Line) -> String {
    format!(
        "{}:{} {}",
        l.file.display(),
        l.line,
        l.value.to_string().chars().take(200).collect::<String>()
    )
}

/// Checks the agent's own files: whole JSON lines, each emission a snapshot … agent run whose
/// record counts match the snapshot's `records`, and unique identities. A failure here is the file
/// sink's, not the shipper's.
fn check_truth(truth: &[Line]) {
    let mut seen = BTreeSet::new();
    for l in truth {
        assert!(
            seen.insert(identity(&l.value)),
            "the agent's files hold a line twice: {}",
            describe(l)
        );
    }
    // Per emission (ts, seq): kinds counted, against the snapshot's `records`.
    /// An emission's snapshot, and its other records counted per kind.
    type Emission = (Option<Value>, BTreeMap<String, u64>);
    let mut emissions: BTreeMap<(String, String), Emission> = BTreeMap::new();
    for l in truth {
        let (ts, seq, kind, _) = identity(&l.value);
        if l.value.get("at_once") == Some(&Value::Bool(true)) {
            continue; // sent between emissions, not counted in a snapshot
        }
        let e = emissions.entry((ts, seq)).or_default();
        if kind == "snapshot" {
            e.0 = Some(l.value.clone());
        } else {
            *e.1.entry(kind).or_default() += 1;
        }
    }
    let mut complete = 0;
    for ((ts, seq), (snapshot, counts)) in &emissions {
        let snapshot = snapshot
            .as_ref()
            .unwrap_or_else(|| panic!("emission ts={ts} seq={seq} has no snapshot record"));
        let want: BTreeMap<String, u64> = snapshot["records"]
            .as_object()
            .expect("snapshot.records is an object")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut got = counts.clone();
        assert_eq!(
            got.remove("agent"),
            Some(1),
            "emission ts={ts} seq={seq}: one agent record"
        );
        assert_eq!(
            got, want,
            "emission ts={ts} seq={seq}: records per kind in the agent's files vs its snapshot"
        );
        complete += 1;
    }
    // Eight rotations take several emissions in each of the two runs, however large they are.
    assert!(complete >= 4, "only {complete} emissions in the truth");
}

#[test]
fn rsyslog_ships_every_line_exactly_once_across_rotation_and_restart() {
    let rsyslogd = find_rsyslogd();
    let agent = agent_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (out, rx_dir, fwd_dir, fwd_state, rx_state) = (
        d.join("agent"),
        d.join("received"),
        d.join("forwarder"),
        d.join("forwarder/state"),
        d.join("receiver/state"),
    );
    for p in [&out, &rx_dir, &fwd_state, &rx_state] {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let sink = out.join("memscope.jsonl");
    let received = rx_dir.join("received.jsonl");
    let unparsed = fwd_dir.join("unparsed.log");
    let port = free_port().to_string();

    let rx_conf = d.join("receiver.conf");
    let fwd_conf = d.join("forwarder.conf");
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    write(
        &rx_conf,
        rewrite(
            "receiver.conf",
            &[
                (
                    "/var/lib/rsyslog-memscope-rx",
                    rx_state.display().to_string(),
                ),
                (
                    "/var/log/memscope/received.jsonl",
                    received.display().to_string(),
                ),
                ("port=\"2514\"", format!("port=\"{port}\"")),
            ],
        ),
    );
    write(
        &fwd_conf,
        rewrite(
            "forwarder.conf",
            &[
                ("/var/lib/rsyslog-memscope", fwd_state.display().to_string()),
                (
                    "/var/log/memscope/memscope.jsonl",
                    sink.display().to_string(),
                ),
                (
                    "/var/log/memscope/unparsed.log",
                    unparsed.display().to_string(),
                ),
                ("port=\"2514\"", format!("port=\"{port}\"")),
            ],
        ),
    );
    for conf in [&rx_conf, &fwd_conf] {
        let check = Command::new(&rsyslogd)
            .arg("-N1")
            .arg("-f")
            .arg(conf)
            .output()
            .expect("rsyslogd -N1");
        assert!(
            check.status.success(),
            "{}: rsyslogd -N1 rejects it:\n{}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }

    // rsyslogd in the foreground (-n) with its own config and pid file; its output in `<role>.log`.
    let rsyslog = |name: &'static str, role: &str, conf: &Path| -> (Proc, PathBuf) {
        let log = d.join(format!("{role}.log"));
        let mut cmd = Command::new(&rsyslogd);
        cmd.arg("-n")
            .arg("-f")
            .arg(conf)
            .arg("-i")
            .arg(d.join(format!("{role}.pid")));
        (Proc::spawn(name, &mut cmd, &log), log)
    };
    let (mut receiver, rx_log) = rsyslog("rsyslogd (receiver)", "receiver", &rx_conf);
    let listening = wait_for(Duration::from_secs(20), || {
        receiver.assert_running(&rx_log);
        TcpStream::connect((Ipv4Addr::LOCALHOST, port.parse::<u16>().expect("port"))).is_ok()
    });
    assert!(
        listening,
        "the receiver does not listen on 127.0.0.1:{port}"
    );
    let (mut forwarder, fwd_log) = rsyslog("rsyslogd (forwarder)", "forwarder", &fwd_conf);

    // 500 ms interval; max_bytes about four emissions of this host, as it is now (a shared host
    // can be busy): forwarder.conf says why not less. keep = 1000 so that the agent's files hold
    // everything it wrote. `emit = "full"`: every emission whole, so the file rotates every few
    // emissions whatever the host does (in `changes` mode a quiet host writes a few hundred bytes
    // between keyframes and would not rotate 4 times in 90 s).
    let max_bytes = (4 * emission_bytes(&agent)).max(256 << 10);
    let agent_conf = d.join("agent.toml");
    write(
        &agent_conf,
        format!(
            "[agent]\ninterval = \"500ms\"\nhost = \"pipeline-lane\"\n\n[output]\nsink = \
             \"file\"\npath = {:?}\nmax_bytes = {max_bytes}\nkeep = 1000\nemit = \"full\"\n",
            sink.display().to_string()
        ),
    );
    run_agent(&agent, &agent_conf, &sink, &d.join("agent-1.log"), 4);
    forwarder.assert_running(&fwd_log);
    run_agent(&agent, &agent_conf, &sink, &d.join("agent-2.log"), 4);

    let files = rotated_files(&sink).expect("list sink files");
    assert!(
        files.len() >= 9,
        "expected at least 8 rotations, got {}",
        files.len() - 1
    );
    let truth: Vec<Line> = files
        .iter()
        .flat_map(|f| read_jsonl(f).unwrap_or_else(|e| panic!("the agent's file: {e:#}")))
        .collect();
    check_truth(&truth);
    // Every line the agent wrote (eBPF exits included, when run as root) fits its kind's schema.
    let validator = SchemaValidator::strict();
    for l in &truth {
        if let Err(e) = validator.validate(&l.value) {
            panic!("{}: does not fit the schema: {e}", describe(l));
        }
    }
    let runs = truth
        .iter()
        .filter(|l| l.value["kind"] == "snapshot" && l.value["seq"] == 0)
        .count();
    assert_eq!(runs, 2, "two agent runs (one restart) in the truth");

    // Wait until everything arrived (bounded), then a quiet second for late duplicates.
    let arrived = wait_for(Duration::from_secs(120), || {
        forwarder.assert_running(&fwd_log);
        receiver.assert_running(&rx_log);
        count_lines(&received) >= truth.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    forwarder.stop();
    receiver.stop();
    assert!(
        !unparsed.exists(),
        "rsyslog could not parse some lines as JSON:\n{}",
        std::fs::read_to_string(&unparsed).unwrap_or_default()
    );
    let got = read_jsonl(&received).unwrap_or_else(|e| panic!("the received stream: {e:#}"));

    let mut want: BTreeMap<_, &Line> = truth.iter().map(|l| (identity(&l.value), l)).collect();
    let mut duplicates = Vec::new();
    let mut unknown = Vec::new();
    let mut different = Vec::new();
    let mut arrived_once = BTreeSet::new();
    for l in &got {
        let id = identity(&l.value);
        if let Some(t) = want.remove(&id) {
            if t.value != l.value {
                different.push(format!("sent {}\n  got {}", describe(t), describe(l)));
            }
            arrived_once.insert(id);
        } else if arrived_once.contains(&id) {
            duplicates.push(describe(l));
        } else {
            unknown.push(describe(l));
        }
    }
    let missing: Vec<String> = want.values().map(|l| describe(l)).collect();
    let report = |what: &str, v: &[String]| {
        format!(
            "{} {what}{}",
            v.len(),
            v.iter()
                .take(5)
                .map(|s| format!("\n  {s}"))
                .collect::<String>()
        )
    };
    assert!(
        missing.is_empty() && duplicates.is_empty() && unknown.is_empty() && different.is_empty(),
        "all arrived within 120 s: {arrived}; {}; {}; {}; {} (of {} lines sent, {} received)\n\
         forwarder log:\n{}",
        report("missing", &missing),
        report("duplicated", &duplicates),
        report("never sent", &unknown),
        report("changed in transit", &different),
        truth.len(),
        got.len(),
        std::fs::read_to_string(&fwd_log).unwrap_or_default()
    );
    eprintln!(
        "pipeline: {} lines in {} files from 2 agent runs arrived exactly once",
        truth.len(),
        files.len()
    );
}
