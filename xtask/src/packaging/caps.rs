//! Least privilege, shown: the agent as an unprivileged uid with only the documented capabilities
//! (ambient, through `setpriv`) attaches the eBPF tracker and reads other users' processes
//! `exact`; each capability removed in turn breaks what docs/deploy.md says it breaks.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use super::agent_run::{Run, first_emission};

/// The capabilities the agent needs (setpriv names), in the order of docs/deploy.md.
pub const CAPS: [&str; 4] = ["bpf", "perfmon", "dac_read_search", "sys_ptrace"];
/// `nobody`: a uid that owns no process of the workload.
const UID: u32 = 65534;
const TIMEOUT: Duration = Duration::from_secs(120);

/// A root-owned process holding a deleted 1 MiB /dev/shm file open: another user's process for
/// the agent, with something only the fd scan finds.
struct Workload {
    child: Child,
    path: String,
}

impl Workload {
    fn start() -> anyhow::Result<Self> {
        let path = format!("/dev/shm/memscope-caps-{}", std::process::id());
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"exec 3<>"$1" && head -c 1048576 /dev/zero >&3 && rm -f "$1" && echo ready && exec sleep 600"#,
                "sh",
                &path,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the workload (sh)")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the workload's ready line")?;
        ensure!(line.trim() == "ready", "workload said {line:?}");
        Ok(Self { child, path })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the run's tmpfs records list the workload's deleted file with its pid.
    fn deleted_file_found(&self, run: &Run) -> bool {
        run.records
            .iter()
            .filter(|r| r["kind"] == "tmpfs")
            .flat_map(|r| r["deleted_open"].as_array().into_iter().flatten())
            .any(|f| {
                f["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&self.path))
                    && f["holders"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|p| *p == self.pid()))
            })
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `setpriv` as `UID` with exactly `caps` (inheritable, ambient and bounding), running the agent.
fn as_nobody(agent: &Path, config: &Path, caps: &[&str]) -> Command {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={UID}"))
        .arg(format!("--regid={UID}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all{list}"))
        .arg(format!("--ambient-caps=-all{list}"))
        .arg(format!("--bounding-set=-all{list}"))
        .arg("--")
        .arg(agent)
        .arg("--config")
        .arg(config);
    command
}

/// The checks; `dir` is world-readable and holds the agent binary.
pub fn check(agent: &Path, dir: &Path) -> anyhow::Result<()> {
    let strict = dir.join("caps-ebpf.toml");
    super::write_world_readable(&strict, "[agent]\ninterval = \"1s\"\ntracker = \"ebpf\"\n")?;
    let auto = dir.join("caps-auto.toml");
    super::write_world_readable(&auto, "[agent]\ninterval = \"1s\"\n")?;
    let workload = Workload::start()?;

    // All four: eBPF attaches, another user's process is exact, its deleted file is found.
    let run = first_emission(&mut as_nobody(agent, &strict, &CAPS), TIMEOUT)?;
    ensure!(
        run.exit.is_none(),
        "with {CAPS:?} the agent exited: {:?}\n{}",
        run.exit,
        run.stderr
    );
    ensure!(run.tracker_mode()? == "ebpf", "tracker is not ebpf");
    let own = run.first("agent")?["pid"].as_u64().context("agent.pid")?;
    let own_uid = run.process(u32::try_from(own)?)?["uid"].clone();
    ensure!(own_uid == UID, "the agent ran as uid {own_uid}, not {UID}");
    let child = run.process(workload.pid())?;
    ensure!(
        child["uid"] == 0 && child["numbers"] == "exact",
        "root's workload process is not exact for uid {UID}: {child}"
    );
    ensure!(
        workload.deleted_file_found(&run),
        "the workload's deleted /dev/shm file is missing from deleted_open"
    );
    let (exact, other) = count_other_users(&run);
    eprintln!(
        "packaging: caps {CAPS:?} as uid {UID}: tracker ebpf; other users' processes: {exact} exact, {other} not exact"
    );

    // Each one removed.
    for removed in CAPS {
        let caps: Vec<&str> = CAPS.into_iter().filter(|c| *c != removed).collect();
        let run = first_emission(&mut as_nobody(agent, &strict, &caps), TIMEOUT)?;
        match removed {
            "sys_ptrace" => {
                ensure!(
                    run.exit.is_none() && run.tracker_mode()? == "ebpf",
                    "without sys_ptrace eBPF should still attach: {}",
                    run.stderr
                );
                ensure!(
                    run.process(workload.pid())?["numbers"] == "exact",
                    "without sys_ptrace (CAP_PERFMON grants read access to smaps) the workload should stay exact"
                );
                ensure!(
                    !workload.deleted_file_found(&run),
                    "without sys_ptrace the fd scan should not see the workload's descriptors"
                );
                eprintln!(
                    "packaging: without sys_ptrace: eBPF and exact numbers, but the tmpfs fd scan misses other users' deleted-open files"
                );
            }
            _ => {
                let Some(status) = run.exit else {
                    bail!(
                        "without {removed} the agent attached (tracker {})",
                        run.tracker_mode()?
                    );
                };
                ensure!(
                    !status.success() && run.stderr.contains("eBPF cannot attach"),
                    "without {removed}: expected an attach failure, got {status}: {}",
                    run.stderr
                );
                let cause = run
                    .stderr
                    .lines()
                    .find(|l| l.contains("eBPF cannot attach"))
                    .unwrap_or_default();
                eprintln!("packaging: without {removed}: {}", cause.trim());
            }
        }
    }

    // None (tracker auto): polling, and the same process is no longer exact.
    let run = first_emission(&mut as_nobody(agent, &auto, &[]), TIMEOUT)?;
    ensure!(run.tracker_mode()? == "polling", "no caps but not polling");
    ensure!(
        run.process(workload.pid())?["numbers"] != "exact",
        "without capabilities root's process should not be exact"
    );
    eprintln!("packaging: no caps: polling, other users' processes approximate");
    Ok(())
}

/// (exact, not exact) among processes of other uids (kernel threads left out).
fn count_other_users(run: &Run) -> (usize, usize) {
    let others = run
        .records
        .iter()
        .filter(|r| r["kind"] == "process" && r["uid"] != UID && r["kernel_thread"] == false);
    others.fold((0, 0), |(exact, other), r| {
        if r["numbers"] == "exact" {
            (exact + 1, other)
        } else {
            (exact, other + 1)
        }
    })
}
