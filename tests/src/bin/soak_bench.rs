//! `cargo xtask soak`: the agent's memory over time with many processes on the host (root).
//!
//! For each process count (default 1000, then 3000) it starts that many idle processes (`cat`),
//! runs the agent with the default config (eBPF when it attaches) and its output read and dropped,
//! and prints the agent's RSS (`VmRSS`, split into anonymous and file-backed, and `VmHWM`, the peak
//! so far) at 10 s and then every `--every` seconds for `--minutes` minutes. Then it stops the agent
//! and the processes, and prints a summary. `cargo xtask soak -- --minutes 60 --processes 3000
//! --every 60` is the hour-long run.
//!
//! With `--pid-namespace` everything runs in a PID namespace of its own, with its own `/proc`: the
//! agent sees exactly the idle processes (and the bench and itself), whatever else runs on the
//! host; its tracker is then `polling` (eBPF there would also report the host's exits).
//!
//! Run it through `cargo xtask soak` (it builds the agent and this bench in release and passes
//! `--agent`). With `--agent PATH` that binary runs instead, and xtask builds no agent (to measure
//! one commit while the tree moves on). A figure printed by a command, never a test; on a shared
//! machine say it was measured under load.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use memscope_tests::{
    bench::{
        Children, args_unless_help, ensure_root, in_own_pid_namespace, pids, rerun_in_pid_namespace,
    },
    soak::{Options, Rss, USAGE, mib, minutes_and_seconds, parse},
};

/// Idle processes (`cat` reading one shared pipe), killed and reaped when dropped. They also end
/// on their own when the bench dies however it dies: the pipe's write end closes and they read EOF.
struct Idle {
    children: Children,
    _writer: std::io::PipeWriter,
}

impl Idle {
    fn start(n: usize) -> Result<Idle> {
        let (reader, writer) = std::io::pipe().context("pipe")?;
        let mut idle = Idle {
            children: Children(Vec::with_capacity(n)),
            _writer: writer,
        };
        for i in 0..n {
            let child = Command::new("cat")
                .stdin(reader.try_clone().context("pipe")?)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting idle process {i} of {n}"))?;
            idle.children.0.push(child);
        }
        Ok(idle)
    }
}

/// The agent, stopped (SIGTERM, then killed) when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run: `n` idle processes and the agent; its samples (time, VmRSS, VmHWM), printed as they
/// come.
#[expect(clippy::print_stdout, reason = "the table is this command's output")]
fn soak(
    o: &Options,
    conf: &std::path::Path,
    logs: &std::path::Path,
    n: usize,
) -> Result<Vec<(Duration, u64, u64)>> {
    eprintln!("soak: starting {n} idle processes");
    let idle = Idle::start(n)?;
    let log_path = logs.join(format!("agent-{n}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| log_path.display().to_string())?;
    let mut agent = Agent(
        Command::new(&o.agent)
            .arg("--config")
            .arg(conf)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("{}", o.agent.display()))?,
    );
    // Its output is drained and dropped here; should the bench die, the agent's next write fails
    // and it exits (broken pipe).
    if let Some(mut out) = agent.0.stdout.take() {
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }
    let pid = agent.0.id();
    let start = Instant::now();
    let end = Duration::from_secs(o.minutes * 60);
    println!(
        "\n{n} idle processes, agent {} (pid {pid}){}",
        o.agent.display(),
        if o.pid_namespace {
            ", in a PID namespace of its own (polling tracker)"
        } else {
            ""
        }
    );
    println!(
        "| time | processes seen | VmRSS MiB | RssAnon MiB | RssFile MiB | VmHWM (peak so far) MiB |"
    );
    println!("|---|---|---|---|---|---|");
    let mut at = Duration::from_secs(10);
    let mut samples = Vec::new();
    while at <= end {
        std::thread::sleep(at.saturating_sub(start.elapsed()));
        let r = Rss::of(pid).with_context(|| {
            // The log's directory goes away with the bench: say what it said.
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "the agent (pid {pid}) is gone; the end of its log {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        // On a shared host other work changes the count; in a PID namespace it is the idle
        // processes, the bench and the agent.
        let seen = pids()?.len();
        println!(
            "| {} | {seen} | {:.1} | {:.1} | {:.1} | {:.1} |",
            minutes_and_seconds(at),
            mib(r.vm_rss),
            mib(r.anon),
            mib(r.file),
            mib(r.hwm)
        );
        samples.push((at, r.vm_rss, r.hwm));
        at = if at < Duration::from_secs(o.every) {
            Duration::from_secs(o.every)
        } else {
            at + Duration::from_secs(o.every)
        };
    }
    drop(agent);
    drop(idle);
    Ok(samples)
}

fn main() -> Result<()> {
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(());
    };
    let mut o = parse(&args)?;
    ensure_root(
        "soak needs root (the agent reads every process and attaches eBPF): run `sudo cargo xtask soak`",
    )?;
    if o.pid_namespace && !in_own_pid_namespace() {
        return rerun_in_pid_namespace("soak", &args);
    }
    o.agent = std::path::absolute(&o.agent).with_context(|| format!("{}", o.agent.display()))?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let mut config = String::from("[agent]\n");
    if let Some(i) = &o.interval {
        config.push_str(&format!("interval = {i:?}\n"));
    }
    if o.pid_namespace {
        // In a PID namespace the eBPF tracker would also report the host's exits.
        config.push_str("tracker = \"polling\"\n");
    }
    if let Some(k) = &o.keyframe_interval {
        config.push_str(&format!("[output]\nkeyframe_interval = {k:?}\n"));
    }
    let conf = dir.path().join("soak.toml");
    std::fs::write(&conf, config).with_context(|| format!("{}", conf.display()))?;
    let mut summary = Vec::new();
    for &n in &o.processes {
        summary.push((n, soak(&o, &conf, dir.path(), n)?));
    }
    #[expect(clippy::print_stdout, reason = "the table is this command's output")]
    {
        println!(
            "\n| processes | RSS at 10 s MiB | RSS at the end MiB | max of the samples MiB | VmHWM at the end MiB | growth over the second half MiB/h |"
        );
        println!("|---|---|---|---|---|---|");
        for (n, samples) in &summary {
            let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
                continue;
            };
            let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
            let mid = samples.iter().find(|s| s.0 >= last.0 / 2).unwrap_or(first);
            let hours = (last.0.saturating_sub(mid.0)).as_secs_f64() / 3600.0;
            let growth = if hours > 0.0 {
                (mib(last.1) - mib(mid.1)) / hours
            } else {
                0.0
            };
            println!(
                "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {growth:.1} |",
                mib(first.1),
                mib(last.1),
                mib(max),
                mib(last.2)
            );
        }
    }
    Ok(())
}
