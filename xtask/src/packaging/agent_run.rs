//! Runs the agent binary until its first emission with process records is complete (or it exits)
//! and returns it: the packaging checks look at the `snapshot`, `process`, `tmpfs` and `agent`
//! records.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// What one run produced.
pub struct Run {
    /// The records of the first emission with process records (`snapshot` … `agent`), empty if
    /// it exited before.
    pub records: Vec<Value>,
    /// `Some` when the agent exited on its own (it was killed after the emission otherwise).
    pub exit: Option<ExitStatus>,
    /// Its stderr (logs).
    pub stderr: String,
}

impl Run {
    /// The first record of `kind`.
    pub fn first(&self, kind: &str) -> anyhow::Result<&Value> {
        self.records
            .iter()
            .find(|r| r["kind"] == kind)
            .with_context(|| format!("no `{kind}` record; stderr:\n{}", self.stderr))
    }

    /// `snapshot.tracker.mode`.
    pub fn tracker_mode(&self) -> anyhow::Result<&str> {
        self.first("snapshot")?["tracker"]["mode"]
            .as_str()
            .context("snapshot has no tracker.mode")
    }

    /// The `process` record of `pid`.
    pub fn process(&self, pid: u32) -> anyhow::Result<&Value> {
        self.records
            .iter()
            .find(|r| r["kind"] == "process" && r["pid"] == pid)
            .with_context(|| format!("no process record for pid {pid}"))
    }
}

/// Spawns `command` (stdout and stderr piped) and reads until the `agent` record closing an
/// emission with process records, the agent's exit, or `timeout`. The agent is killed afterwards if still running.
pub fn first_emission(command: &mut Command, timeout: Duration) -> anyhow::Result<Run> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut complete = false;
    let mut timed_out = false;
    while !complete {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let record: Value = serde_json::from_str(&line)
                    .with_context(|| format!("the agent wrote a line that is not JSON: {line}"))?;
                let closes = record["kind"] == "agent";
                records.push(record);
                if closes {
                    // An emission whose processes collector was still running (reported `late`)
                    // has no process records yet: wait for the next one.
                    if records.iter().any(|r| r["kind"] == "process") {
                        complete = true;
                    } else {
                        records.clear();
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let mut exit = child.try_wait().context("checking the agent")?;
    if !complete && !timed_out {
        // Its stdout closed: it is exiting. Give it a moment to be reaped rather than kill it.
        let until = Instant::now() + Duration::from_secs(10);
        while exit.is_none() && Instant::now() < until {
            thread::sleep(Duration::from_millis(50));
            exit = child.try_wait().context("checking the agent")?;
        }
    }
    if exit.is_none() {
        // The agent runs until stopped; SIGKILL is fine, the checks read nothing after this.
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for the agent")?;
    let _ = reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    if timed_out {
        bail!(
            "no complete emission within {} s ({} records); stderr:\n{stderr}",
            timeout.as_secs(),
            records.len()
        );
    }
    Ok(Run {
        records: if complete { records } else { Vec::new() },
        exit: exit.map(|_| status),
        stderr,
    })
}
