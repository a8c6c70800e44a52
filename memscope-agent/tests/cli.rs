//! The CLI end to end, unprivileged: `--once` output, config errors and their exit codes.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
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
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("agent output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clean exit on SIGTERM: {stderr}");
    let fallbacks = stderr
        .lines()
        .filter(|l| l.contains("running in polling mode"))
        .count();
    assert_eq!(fallbacks, 1, "exactly one fallback line in: {stderr}");
    let lines = json_lines(&out.stdout);
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
