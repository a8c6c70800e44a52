//! `cargo xtask volume`: how many bytes a day the agent writes on this host, in each emit mode.
//!
//! Runs two agents side by side over the same host for `--seconds` (default 120), both with the
//! default config except for a file sink, one with `emit = "full"` and one with the default
//! `emit = "changes"`, at `--interval` (default the agent's default, 10s). With `--workers N` it
//! first starts a busy host's workload: N `memhog worker` processes (each with private memory and a
//! shared page of its executable), of which `--change-percent` (default 1) % are signalled every
//! interval to map a new 256 KiB region. With `--pid-namespace` (root) everything runs in a PID
//! namespace of its own, with its own `/proc`, so the agents see only the workers (and
//! themselves), not whatever else runs on the host; the tracker is then `polling` (eBPF there
//! would also report the host's exits). `meminfo`, cgroups and tmpfs stay the host's.
//!
//! Run it through `cargo xtask volume` (it builds the agent, this bench and `memhog` in release and
//! passes `--agent`).
//!
//! Prints, per mode, the emissions seen, the processes on the host, the mean bytes of a keyframe
//! (the first emission; every emission with `full`) and of the other emissions, and the bytes per
//! day they add up to: with E emissions a day and a keyframe every K (`keyframe_interval` /
//! `interval`; 1 with `full`), E/K keyframes and E - E/K other emissions. The first emission is a
//! keyframe whatever the run's length, so a short run still counts the keyframes a day has. A
//! figure printed by a command, never a test; on a shared machine say it was measured under load.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use memscope_tests::{
    bench::{
        WORKER_REGION_BYTES, Workers, args_unless_help, in_own_pid_namespace, memhog_path,
        rerun_in_pid_namespace,
    },
    volume::{PhaseMedians, measure, phases, seconds_of},
};

struct Options {
    agent: PathBuf,
    seconds: u64,
    interval: String,
    workers: usize,
    change_percent: f64,
    pid_namespace: bool,
    worker_bytes: usize,
}

const USAGE: &str = "usage: cargo xtask volume -- [--seconds N (120)] [--interval 10s] \
[--workers N (0: the host as it is)] [--change-percent P (1)] [--worker-bytes BYTES (4194304)] [--pid-namespace] [--release (the default)]";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        agent: PathBuf::new(),
        seconds: 120,
        interval: "10s".to_string(),
        workers: 0,
        change_percent: 1.0,
        pid_namespace: false,
        worker_bytes: 4 << 20,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--pid-namespace" {
            o.pid_namespace = true;
            continue;
        }
        // The agent is always the release build (xtask builds it); older command lines say so.
        if a == "--release" {
            continue;
        }
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--agent" => o.agent = PathBuf::from(value),
            "--seconds" => {
                o.seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value}"))?
            }
            "--interval" => o.interval.clone_from(value),
            "--workers" => {
                o.workers = value
                    .parse()
                    .with_context(|| format!("--workers {value}"))?
            }
            "--worker-bytes" => {
                o.worker_bytes = value
                    .parse()
                    .with_context(|| format!("--worker-bytes {value}"))?
            }
            "--change-percent" => {
                o.change_percent = value
                    .parse()
                    .with_context(|| format!("--change-percent {value}"))?
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if o.agent.as_os_str().is_empty() {
        bail!("--agent PATH missing (run through `cargo xtask volume`)");
    }
    Ok(o)
}

/// The default `keyframe_interval`, in seconds, from the agent's `print-default-config`.
fn default_keyframe_interval(agent: &Path) -> Result<f64> {
    let out = Command::new(agent)
        .arg("print-default-config")
        .output()
        .with_context(|| format!("{} print-default-config", agent.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("keyframe_interval = "))
        .context("no keyframe_interval in the default config")?;
    seconds_of(value.trim_matches('"'))
}

fn stop(child: &mut Child) -> Result<()> {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    child.wait()?;
    Ok(())
}

fn main() -> Result<()> {
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(());
    };
    let o = parse(&args)?;
    let interval = seconds_of(&o.interval)?;
    if o.pid_namespace && !in_own_pid_namespace() {
        // The same command again in a PID namespace of its own with its own /proc: the agents see
        // only the workers and themselves, whatever else runs on the host.
        return rerun_in_pid_namespace("volume", &args);
    }
    let agent = &o.agent;
    let keyframe_every = (default_keyframe_interval(agent)? / interval).ceil();
    let mut workers = match o.workers {
        0 => None,
        n => {
            eprintln!("volume: starting {n} memhog workers");
            Some(Workers::spawn(
                &memhog_path()?,
                n,
                o.worker_bytes,
                WORKER_REGION_BYTES,
                None,
            )?)
        }
    };
    let per_tick = if o.workers == 0 {
        0
    } else {
        ((o.workers as f64 * o.change_percent / 100.0).round() as usize).max(1)
    };
    // The pid alone is not unique: inside a PID namespace this command is always pid 2.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("memscope-volume-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut children = Vec::new();
    for mode in ["full", "changes"] {
        let out = dir.join(format!("{mode}.jsonl"));
        let conf = dir.join(format!("{mode}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[agent]\ninterval = {:?}\n{}\n[output]\nsink = \"file\"\npath = {:?}\nmax_bytes = \"4GiB\"\nemit = {mode:?}\n",
                o.interval,
                // In a PID namespace the agent polls anyway (eBPF names host pids); saying so
                // spares it the attempt.
                if o.pid_namespace { "tracker = \"polling\"\n" } else { "" },
                out.display().to_string()
            ),
        )
        .with_context(|| format!("{}", conf.display()))?;
        let log = std::fs::File::create(dir.join(format!("{mode}.log")))?;
        let child = Command::new(agent)
            .arg("--config")
            .arg(&conf)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{}", agent.display()))?;
        children.push((mode, child, out));
    }
    eprintln!(
        "volume: two agents (emit = full, changes), interval {}, for {} s; files in {}",
        o.interval,
        o.seconds,
        dir.display()
    );
    let started = std::time::Instant::now();
    let tick = Duration::from_secs_f64(interval);
    while started.elapsed() < Duration::from_secs(o.seconds) {
        if let Some(w) = &mut workers {
            w.signal(per_tick)?;
        }
        std::thread::sleep(
            tick.min(Duration::from_secs(o.seconds).saturating_sub(started.elapsed())),
        );
    }
    for (_, child, _) in &mut children {
        stop(child)?;
    }
    drop(workers);
    let per_day = 86_400.0 / interval;
    #[expect(clippy::print_stdout, reason = "the table is this command's output")]
    {
        println!(
            "volume: interval {}, {} memhog workers ({per_tick} signalled per interval), keyframe every {keyframe_every} emissions with changes, {} s{}",
            o.interval,
            o.workers,
            o.seconds,
            if o.pid_namespace {
                ", in a PID namespace of its own (polling tracker)"
            } else {
                ""
            }
        );
        println!(
            "| emit | emissions | processes | bytes/keyframe | bytes/other emission | MB/day |"
        );
        println!("|---|---|---|---|---|---|");
        let mut full_keyframe = None;
        for (mode, _, out) in &children {
            let (every, keyframe) = if *mode == "full" {
                (1.0, None)
            } else {
                (keyframe_every, full_keyframe)
            };
            let v = measure(out, per_day, every, keyframe)?;
            if *mode == "full" {
                full_keyframe = Some(v.keyframe_bytes);
            }
            let label = if *mode == "changes" {
                "changes (default)"
            } else {
                mode
            };
            println!(
                "| {label} | {} | {} | {:.0} | {} | {:.1} |",
                v.emissions,
                v.processes,
                v.keyframe_bytes,
                v.other_bytes.map_or("-".to_string(), |b| format!("{b:.0}")),
                v.bytes_per_day / 1e6
            );
        }
    }
    if let Some((_, _, out)) = children.iter().find(|c| c.0 == "changes") {
        let PhaseMedians {
            ticks: n,
            medians,
            ratio,
        } = phases(out)?;
        #[expect(clippy::print_stdout, reason = "the table is this command's output")]
        {
            println!(
                "\nchanges: the agent's phases_us, median of {n} ticks (from the third emission on), agent {}",
                agent.display()
            );
            println!("| phase | ms |");
            println!("|---|---|");
            for (phase, us) in &medians {
                println!("| {phase} | {:.2} |", us / 1000.0);
            }
            println!("| tick / statm pass (median of the ratios) | {ratio:.2} |");
        }
    }
    #[expect(clippy::print_stdout, reason = "the table is this command's output")]
    for (mode, _, out) in &children {
        let v = measure(out, per_day, keyframe_every, None)?;
        if *mode == "changes" && !v.other_by_kind.is_empty() {
            println!(
                "\nchanges: mean bytes per emission between keyframes (from the third on), by kind"
            );
            println!("| kind | bytes |");
            println!("|---|---|");
            for (kind, b) in &v.other_by_kind {
                println!("| {kind} | {b:.0} |");
            }
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(())
}
