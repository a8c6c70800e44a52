//! The CLI end to end, unprivileged: `--once` output, config errors and their exit codes.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
};

use serde_json::Value;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memscope-agent"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/proc")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run memscope-agent")
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
        .expect("stdout is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn kinds(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("?"))
        .collect()
}

/// `memscope-agent --once --config CFG --proc-root fixtures/proc`.
fn once_over_fixtures(cfg: &Path) -> Output {
    run(agent()
        .args(["--once", "--config"])
        .arg(cfg)
        .arg("--proc-root")
        .arg(fixtures()))
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("memscope.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn once_over_fixtures_emits_snapshot_meminfo_processes_agent() {
    let out = run(agent().args(["--once", "--proc-root"]).arg(fixtures()));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let k = kinds(&lines);
    assert_eq!(k.first(), Some(&"snapshot"));
    assert_eq!(k.last(), Some(&"agent"));
    assert_eq!(k.iter().filter(|k| **k == "meminfo").count(), 1);
    let fixture_pids = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .count();
    assert!(fixture_pids > 0);
    assert_eq!(k.iter().filter(|k| **k == "process").count(), fixture_pids);
    assert!(
        lines
            .iter()
            .all(|l| l["seq"] == 0 && l["schema"] == "memscope.v1")
    );
    assert!(lines[0]["tracker"]["mode"].is_string());
}

#[test]
fn logs_go_to_stderr_not_to_the_data_stream() {
    let out = run(agent()
        .args(["--once", "--log", "debug", "--proc-root"])
        .arg(fixtures()));
    assert!(out.status.success());
    assert!(!out.stderr.is_empty(), "debug logs expected on stderr");
    // Every stdout line is a JSON record.
    assert!(
        json_lines(&out.stdout)
            .iter()
            .all(|l| l["schema"] == "memscope.v1")
    );
}

#[test]
fn processes_collector_can_be_switched_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[collectors.processes]\nenabled = false\n");
    let out = once_over_fixtures(&cfg);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert!(!kinds(&lines).contains(&"process"));
    assert!(kinds(&lines).contains(&"meminfo"));
}

#[test]
fn file_sink_writes_the_lines_and_stdout_stays_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out.jsonl");
    let cfg = write_config(
        dir.path(),
        &format!("[output]\nsink = \"file\"\npath = \"{}\"\n", sink.display()),
    );
    let out = once_over_fixtures(&cfg);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let lines = json_lines(&std::fs::read(&sink).expect("sink file"));
    assert_eq!(kinds(&lines).first(), Some(&"snapshot"));
}

/// Each bad config: non-zero exit, a message naming the key (and line), nothing on the data stream.
fn assert_rejected(text: &str, expect_in_message: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), text);
    let out = once_over_fixtures(&cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing may reach the sink");
    for needle in expect_in_message {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    // check-config agrees.
    let check = run(agent().arg("check-config").arg(&cfg));
    assert_eq!(check.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&check.stderr);
    for needle in expect_in_message {
        assert!(
            stderr.contains(needle),
            "check-config: {needle:?} not in: {stderr}"
        );
    }
}

#[test]
fn unknown_key_is_rejected() {
    assert_rejected(
        "[agent]\ninterval = \"5s\"\nintreval = \"5s\"\n",
        &["line 3", "agent.intreval", "unknown field"],
    );
}

#[test]
fn wrong_type_is_rejected() {
    assert_rejected(
        "[collectors.meminfo]\nenabled = 1\n",
        &["line 2", "collectors.meminfo.enabled", "invalid type"],
    );
}

#[test]
fn negative_interval_is_rejected() {
    assert_rejected(
        "[agent]\ninterval = \"-10s\"\n",
        &["line 2", "agent.interval", "positive"],
    );
}

#[test]
fn unwritable_file_path_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("regular-file");
    std::fs::write(&blocker, b"").expect("write");
    // A path below a regular file cannot be created, not even by root.
    assert_rejected(
        &format!(
            "[output]\nsink = \"file\"\npath = \"{}\"\n",
            blocker.join("out.jsonl").display()
        ),
        &["line 3", "output.path", "cannot open"],
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let out = run(agent().args(["--once", "--config", "/nonexistent/memscope.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/memscope.toml"));
}

#[test]
fn print_default_config_round_trips_through_check_config() {
    let out = run(agent().arg("print-default-config"));
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("default.toml");
    std::fs::write(&cfg, &out.stdout).expect("write");
    let check = run(agent().arg("check-config").arg(&cfg));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Without privileges the tracker falls back to polling with one log line, and the snapshot says
/// why. As root the agent is run as `nobody` (from a copy of the binary that `nobody` can execute).
#[test]
fn unprivileged_run_falls_back_to_polling_with_one_log_line() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.path().join("memscope-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_memscope-agent"), &bin).expect("copy the agent");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = dir.path().join("fast.toml");
    std::fs::write(
        &cfg,
        "[agent]\ninterval = \"300ms\"\n[collectors.tmpfs]\nenabled = false\n",
    )
    .expect("config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&cfg);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    // Read stdout as it comes and stop the agent once it has emitted twice (no fixed sleep: a
    // loaded host may take long for the first emission).
    let stdout = child.stdout.take().expect("piped stdout");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = Vec::new();
        let mut snapshots = 0;
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if line.windows(17).any(|w| w == b"\"kind\":\"snapshot\"") {
                snapshots += 1;
                if snapshots == 2 {
                    let _ = seen_tx.send(());
                }
            }
            all.extend_from_slice(&line);
            all.push(b'\n');
        }
        all
    });
    let emitted_twice = seen_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .is_ok();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("agent output");
    let stdout = reader.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(emitted_twice, "no second emission within 120 s: {stderr}");
    assert!(out.status.success(), "clean exit on SIGTERM: {stderr}");
    let fallbacks = stderr
        .lines()
        .filter(|l| l.contains("running in polling mode"))
        .count();
    assert_eq!(fallbacks, 1, "exactly one fallback line in: {stderr}");
    let lines = json_lines(&stdout);
    let snapshots: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "snapshot").collect();
    assert!(
        snapshots.len() >= 2,
        "the daemon emitted repeatedly: {}",
        snapshots.len()
    );
    for s in snapshots {
        assert_eq!(s["tracker"]["mode"], "polling");
        assert!(
            s["tracker"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "the snapshot says why: {s}"
        );
    }
}

/// The agent as a daemon over the fixture tree with `cfg`, stdout and stderr piped.
fn spawn_over_fixtures(cfg: &Path) -> std::process::Child {
    agent()
        .arg("--config")
        .arg(cfg)
        .arg("--proc-root")
        .arg(fixtures())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent")
}

/// Waits for `child` to exit, up to `limit`; kills it (and fails) if it does not.
fn wait_or_kill(child: &mut std::process::Child, limit: std::time::Duration) -> ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_closed_stdout_stops_the_agent_at_the_first_write_not_an_interval_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One emission an hour: an agent that waits for the next tick to notice never exits in time.
    let cfg = write_config(
        dir.path(),
        "[agent]\ninterval = \"1h\"\ntracker = \"polling\"\n",
    );
    let mut child = spawn_over_fixtures(&cfg);
    drop(child.stdout.take());
    let status = wait_or_kill(&mut child, std::time::Duration::from_secs(120));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).expect("stderr");
    }
    assert!(!status.success(), "a lost output is an error: {stderr}");
    assert!(stderr.contains("broken pipe"), "{stderr}");
}

#[test]
fn check_config_creates_no_output_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out.jsonl");
    let cfg = write_config(
        dir.path(),
        &format!("[output]\nsink = \"file\"\npath = \"{}\"\n", sink.display()),
    );
    let check = run(agent().arg("check-config").arg(&cfg));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        !sink.exists(),
        "check-config must not create {}",
        sink.display()
    );
}

#[test]
fn a_symlinked_output_path_is_rejected_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "secret\n").expect("seed");
    let sink = dir.path().join("out.jsonl");
    std::os::unix::fs::symlink(&victim, &sink).expect("symlink");
    assert_rejected(
        &format!("[output]\nsink = \"file\"\npath = \"{}\"\n", sink.display()),
        &["line 3", "output.path", "symbolic link"],
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "secret\n");
}

#[test]
fn the_output_file_is_0640_even_under_umask_000() {
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out.jsonl");
    let cfg = write_config(
        dir.path(),
        &format!("[output]\nsink = \"file\"\npath = \"{}\"\n", sink.display()),
    );
    let mut cmd = agent();
    cmd.args(["--once", "--config"])
        .arg(&cfg)
        .arg("--proc-root")
        .arg(fixtures());
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&sink).expect("sink").mode() & 0o7777;
    assert_eq!(mode, 0o640, "mode {mode:o}");
}

#[test]
fn out_of_range_values_are_rejected_with_exit_2() {
    assert_rejected(
        "[agent]\ninterval = \"1ns\"\n",
        &["line 2", "agent.interval", "out of range"],
    );
    assert_rejected(
        "[agent]\ninterval = \"100y\"\n",
        &["line 2", "agent.interval", "out of range"],
    );
    assert_rejected(
        "[output]\nmax_bytes = 1\n",
        &["line 2", "output.max_bytes", "out of range"],
    );
    assert_rejected(
        "[agent]\ninterval = \" 1 s\"\n",
        &["line 2", "agent.interval", "no spaces"],
    );
}

#[test]
fn a_missing_proc_root_is_rejected_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[agent]\nproc_root = \"/nonexistent/proc\"\n");
    for out in [
        run(agent().args(["--once", "--config"]).arg(&cfg)),
        run(agent().arg("check-config").arg(&cfg)),
    ] {
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in ["line 2", "agent.proc_root", "/nonexistent/proc"] {
            assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
        }
    }
    let out = run(agent().args(["--once", "--proc-root", "/nonexistent/proc"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--proc-root") && stderr.contains("/nonexistent/proc"),
        "{stderr}"
    );
}

#[test]
fn host_flag_names_every_record() {
    let out = run(agent()
        .args(["--once", "--host", "node-7", "--proc-root"])
        .arg(fixtures()));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert!(lines.len() > 2, "{} lines", lines.len());
    for line in &lines {
        assert_eq!(line["host"], "node-7", "{line}");
    }
}

#[test]
fn show_prints_tables_and_json_falls_back_to_records() {
    let out = run(agent()
        .args([
            "show",
            "--width",
            "90",
            "--top",
            "2",
            "--sort",
            "rss",
            "--proc-root",
        ])
        .arg(fixtures()));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 tables");
    for section in [
        "HOST",
        "PROCESSES (top 2 of 4 by RSS)",
        "SHARED OBJECTS",
        "TMPFS MOUNTS",
        "SYSV SEGMENTS",
        "SHMEM LEDGER",
    ] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
    assert!(
        text.lines().all(|l| l.chars().count() <= 90),
        "fits 90 columns:\n{text}"
    );
    // python3 (RSS 20.1 MiB) before fx) worker (17.9 MiB); sleep is not in the top 2.
    let p = text.find("python3").expect("python3 shown");
    let w = text.find("fx) worker").expect("worker shown");
    assert!(p < w, "sorted by RSS");
    assert!(text.contains("… 2 more processes"));

    let out = run(agent()
        .args(["show", "--json", "--proc-root"])
        .arg(fixtures()));
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    assert_eq!(kinds(&lines).first(), Some(&"snapshot"));
    assert_eq!(kinds(&lines).last(), Some(&"agent"));
    assert_eq!(kinds(&lines).iter().filter(|k| **k == "process").count(), 4);
}

#[test]
fn report_of_a_missing_or_empty_stream_fails_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.jsonl");
    let out = run(agent().arg("report").arg(&missing));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.jsonl"), "{err}");

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "not json\n").expect("write");
    let out = run(agent().arg("report").arg(&empty));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no emission"));
    assert!(!dir.path().join("empty.html").exists(), "no report written");
}

#[test]
fn report_writes_html_from_a_recorded_once_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(agent().args(["--once", "--proc-root"]).arg(fixtures()));
    assert!(out.status.success());
    let stream = dir.path().join("rec.jsonl");
    std::fs::write(&stream, &out.stdout).expect("write stream");
    let out = run(agent().arg("report").arg(&stream).args(["--at", "0"]));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(dir.path().join("rec.html")).expect("rec.html written");
    assert!(html.contains("<svg id=\"treemap\""));
    assert!(html.contains("fx) worker (43)"), "process in the treemap");
    let out = run(agent().arg("report").arg(&stream).args(["--at", "7"]));
    assert_eq!(out.status.code(), Some(1), "no emission with seq 7");
}

/// With `tracker = "ebpf"` the agent refuses a tree whose pids are not the kernel's (eBPF names
/// host pids), naming the tree; as root too. `signals.rs` has the `auto` case.
#[test]
fn tracker_ebpf_over_a_fixture_tree_exits_naming_the_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "[agent]\ninterval = \"200ms\"\ntracker = \"ebpf\"\n",
    );
    let mut child = spawn_over_fixtures(&cfg);
    let status = wait_or_kill(&mut child, std::time::Duration::from_secs(60));
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("agent.tracker") && stderr.contains("not a proc filesystem"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing emitted");
}
