//! The view's costs, printed (run through `cargo xtask view-bench`):
//!
//! 1. `memscope-agent show` against `memscope-agent --once` on this host: both run the same
//!    collection; `show` adds rebuilding the state and printing tables. The runs alternate, each
//!    child's CPU time (user + system, from `getrusage(RUSAGE_CHILDREN)`) and wall time are taken,
//!    and the median and minimum of each are printed.
//! 2. `memscope-agent report` on a synthesized day (8640 emissions at 10 s) in `changes` and in
//!    `full` mode: stream size, report size, wall and CPU time.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use memscope_tests::{
    bench::{args_unless_help, children_cpu_time, median, pids},
    once_over_fixtures,
    synth::{SynthOptions, synthesize},
};

struct Args {
    agent: PathBuf,
    runs: usize,
    emissions: usize,
    workers: usize,
}

const USAGE: &str = "usage: cargo xtask view-bench -- [--runs N (7)] [--emissions N (8640)] \
[--workers N (150)] [--agent PATH (the release build)]";

/// The arguments; `None` when they ask for help.
fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        agent: PathBuf::from("target/release/memscope-agent"),
        runs: 7,
        emissions: 8640,
        workers: 150,
    };
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(None);
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agent" => a.agent = PathBuf::from(value()?),
            "--runs" => a.runs = value()?.parse().context("--runs")?,
            "--emissions" => a.emissions = value()?.parse().context("--emissions")?,
            "--workers" => a.workers = value()?.parse().context("--workers")?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(Some(a))
}

/// CPU time (user + system) of all waited-for children so far, in ms.
fn children_cpu_ms() -> f64 {
    children_cpu_time().as_secs_f64() * 1e3
}

/// Runs the agent with `args`, output discarded; returns (CPU ms, wall ms).
fn measure(agent: &PathBuf, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let cpu0 = children_cpu_ms();
    let t0 = Instant::now();
    let status = Command::new(agent)
        .args(["--log", "warn"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {} {}", agent.display(), args.join(" ")))?;
    let wall = t0.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("{} {} failed: {status}", agent.display(), args.join(" "));
    }
    Ok((children_cpu_ms() - cpu0, wall))
}

#[expect(clippy::print_stdout, reason = "the tables are this binary's output")]
fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let procs = pids()?.len();
    println!(
        "## show vs --once on this host ({procs} processes, {} runs each, alternating; the host may be loaded)\n",
        args.runs
    );
    let (mut once_cpu, mut once_wall, mut show_cpu, mut show_wall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (c, w) = measure(&args.agent, &["--once"])?;
        once_cpu.push(c);
        once_wall.push(w);
        let (c, w) = measure(&args.agent, &["show"])?;
        show_cpu.push(c);
        show_wall.push(w);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("| command | CPU ms median | CPU ms min | wall ms median | wall ms min |");
    println!("|---|---|---|---|---|");
    for (name, cpu, wall) in [
        ("memscope-agent --once", &once_cpu, &once_wall),
        ("memscope-agent show", &show_cpu, &show_wall),
    ] {
        println!(
            "| `{name}` | {:.1} | {:.1} | {:.1} | {:.1} |",
            median(cpu),
            min(cpu),
            median(wall),
            min(wall)
        );
    }
    println!(
        "\nshow / --once, CPU medians: {:.3}\n",
        median(&show_cpu) / median(&once_cpu)
    );

    let base = once_over_fixtures()?;
    let dir = tempfile::tempdir()?;
    println!(
        "## report of a synthesized day ({} emissions at 10 s, {} processes)\n",
        args.emissions,
        args.workers + 15
    );
    println!("| emit mode | stream MB | lines | report KB | wall s | CPU s |");
    println!("|---|---|---|---|---|---|");
    for (mode, keyframe_every) in [("changes (keyframe every 10)", Some(10)), ("full", None)] {
        let stream = synthesize(
            &base,
            &SynthOptions {
                emissions: args.emissions,
                interval_s: 10,
                keyframe_every,
                extra_processes: args.workers,
            },
        );
        let path = dir.path().join("day.jsonl");
        let html = dir.path().join("day.html");
        std::fs::write(&path, &stream).context("writing the stream")?;
        let lines = stream.lines().count();
        let stream_mb = stream.len() as f64 / 1e6;
        drop(stream);
        let (cpu, wall) = measure(
            &args.agent,
            &[
                "report",
                &path.display().to_string(),
                "-o",
                &html.display().to_string(),
            ],
        )?;
        let report_kb = std::fs::metadata(&html).map(|m| m.len()).unwrap_or(0) as f64 / 1e3;
        println!(
            "| {mode} | {stream_mb:.1} | {lines} | {report_kb:.0} | {:.2} | {:.2} |",
            wall / 1e3,
            cpu / 1e3
        );
    }
    Ok(())
}
