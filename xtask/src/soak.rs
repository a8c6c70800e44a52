//! `cargo xtask soak`: the agent's memory over time with many processes on the host (root).
//!
//! For each process count (default 1000, then 3000) it starts that many idle processes (`cat`),
//! runs the release agent with the default config (eBPF when it attaches) and its output read and
//! dropped, and prints the agent's RSS (`VmRSS`, split into anonymous and file-backed) at 10 s and
//! then every `--every` seconds for `--minutes` minutes. Then it stops the agent and the processes.
//! `cargo xtask soak -- --minutes 60 --processes 3000 --every 60` is the hour-long run.
//!
//! With `--pid-namespace` everything runs in a PID namespace of its own, with its own `/proc`: the
//! agent sees exactly the idle processes (and the command and itself), whatever else runs on the
//! host; its tracker is then `polling` (eBPF there would also report the host's exits). With
//! `--agent PATH` that binary runs instead of a fresh release build (to measure one commit while
//! the tree moves on). A figure printed by a command, never a test; on a shared machine say it was
//! measured under load.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

struct Options {
    minutes: u64,
    every: u64,
    processes: Vec<usize>,
    interval: Option<String>,
    pid_namespace: bool,
    agent: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo xtask soak [-- --minutes N] [--every SECONDS] [--processes 1000,3000] [--interval 10s] [--pid-namespace] [--agent PATH]";

/// Set in the environment of the run inside the PID namespace.
const INNER: &str = "MEMSCOPE_SOAK_IN_NAMESPACE";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        minutes: 5,
        every: 30,
        processes: vec![1000, 3000],
        interval: None,
        pid_namespace: false,
        agent: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--pid-namespace" {
            o.pid_namespace = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{a} needs a value; {USAGE}"))?;
        match a.as_str() {
            "--minutes" => {
                o.minutes = value
                    .parse()
                    .with_context(|| format!("--minutes {value}"))?
            }
            "--every" => o.every = value.parse().with_context(|| format!("--every {value}"))?,
            "--processes" => {
                o.processes = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .with_context(|| format!("--processes {value}"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--interval" => o.interval = Some(value.clone()),
            "--agent" => o.agent = Some(PathBuf::from(value)),
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if o.every == 0 || o.minutes == 0 || o.processes.is_empty() {
        bail!("--minutes, --every and --processes must be positive; {USAGE}");
    }
    Ok(o)
}

/// Idle processes (`cat` reading one shared pipe), killed and reaped when dropped. They also end
/// on their own when xtask dies however it dies: the pipe's write end closes and they read EOF.
struct Idle {
    children: Vec<Child>,
    _writer: std::io::PipeWriter,
}

impl Idle {
    fn start(n: usize) -> Result<Idle> {
        let (reader, writer) = std::io::pipe().context("pipe")?;
        let mut idle = Idle {
            children: Vec::with_capacity(n),
            _writer: writer,
        };
        for i in 0..n {
            let child = Command::new("cat")
                .stdin(reader.try_clone().context("pipe")?)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting idle process {i} of {n}"))?;
            idle.children.push(child);
        }
        Ok(idle)
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
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

/// `VmRSS`, `RssAnon`, `RssFile` and `VmHWM` (the peak RSS so far) of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64, u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no {name}"))
    };
    Ok((
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")?,
        field("VmHWM:")?,
    ))
}

/// Processes the agent sees now (on a shared host other work changes the count; in a PID namespace
/// it is the idle processes, this command and the agent).
fn host_processes() -> usize {
    std::fs::read_dir("/proc").map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if !crate::is_root() {
        bail!("cargo xtask soak needs root (the agent reads every process and attaches eBPF)");
    }
    let inner = std::env::var_os(INNER).is_some();
    let binary = match &o.agent {
        Some(path) => std::path::absolute(path).with_context(|| format!("{}", path.display()))?,
        None => crate::release_dir().join("memscope-agent"),
    };
    if !inner && o.agent.is_none() {
        crate::cargo(&["build", "--release", "-p", "memscope-agent"], &[])?;
    }
    if o.pid_namespace && !inner {
        return crate::rerun_in_pid_namespace("soak", args, INNER);
    }
    let dir = tempfile::tempdir().context("temporary directory")?;
    let mut config = String::from("[agent]\n");
    if let Some(i) = &o.interval {
        config.push_str(&format!("interval = {i:?}\n"));
    }
    if o.pid_namespace {
        // In a PID namespace the eBPF tracker would also report the host's exits.
        config.push_str("tracker = \"polling\"\n");
    }
    let conf = dir.path().join("soak.toml");
    std::fs::write(&conf, config).with_context(|| format!("{}", conf.display()))?;
    let mut summary = Vec::new();
    #[expect(clippy::print_stdout, reason = "the table is this command's output")]
    for &n in &o.processes {
        eprintln!("soak: starting {n} idle processes");
        let idle = Idle::start(n)?;
        let log = std::fs::File::create(dir.path().join(format!("agent-{n}.log")))?;
        let mut agent = Agent(
            Command::new(&binary)
                .arg("--config")
                .arg(&conf)
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .with_context(|| format!("{}", binary.display()))?,
        );
        // Its output is drained and dropped here; should xtask die, the agent's next write fails
        // and it exits (broken pipe).
        if let Some(mut out) = agent.0.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
        let pid = agent.0.id();
        let start = Instant::now();
        let end = Duration::from_secs(o.minutes * 60);
        println!(
            "\n{n} idle processes, agent {} (pid {pid}){}",
            binary.display(),
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
            let (rss, anon, file, hwm) = rss_kib(pid).with_context(|| {
                format!(
                    "the agent (pid {pid}) is gone; see its log in {}",
                    dir.path().display()
                )
            })?;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                humantime_secs(at),
                host_processes(),
                mib(rss),
                mib(anon),
                mib(file),
                mib(hwm)
            );
            samples.push((at, rss, hwm));
            at = if at < Duration::from_secs(o.every) {
                Duration::from_secs(o.every)
            } else {
                at + Duration::from_secs(o.every)
            };
        }
        drop(agent);
        drop(idle);
        summary.push((n, samples));
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

fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() -> Result<()> {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse(&args(
            "--minutes 60 --every 120 --processes 3000 --pid-namespace --interval 5s --agent /x",
        ))?;
        assert_eq!((o.minutes, o.every, o.processes), (60, 120, vec![3000]));
        assert_eq!(o.interval.as_deref(), Some("5s"));
        assert!(o.pid_namespace);
        assert_eq!(o.agent, Some(PathBuf::from("/x")));
        let d = parse(&[])?;
        assert_eq!((d.minutes, d.every, d.processes), (5, 30, vec![1000, 3000]));
        assert!(!d.pid_namespace && d.agent.is_none());
        assert!(parse(&args("--minutes 0")).is_err());
        assert!(parse(&args("--processes 1,x")).is_err());
        assert!(parse(&args("--seconds 3")).is_err());
        assert!(parse(&args("--minutes")).is_err());
        Ok(())
    }

    #[test]
    fn rss_of_this_process_is_read() -> Result<()> {
        let (rss, anon, file, hwm) = rss_kib(std::process::id())?;
        assert!(rss > 0 && rss >= anon && rss >= file && hwm >= rss);
        Ok(())
    }
}
