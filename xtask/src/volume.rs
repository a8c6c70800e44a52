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
//! Prints, per mode, the emissions seen, the processes on the host, the mean bytes of a keyframe
//! (the first emission; every emission with `full`) and of the other emissions, and the bytes per
//! day they add up to: with E emissions a day and a keyframe every K (`keyframe_interval` /
//! `interval`; 1 with `full`), E/K keyframes and E - E/K other emissions. The first emission is a
//! keyframe whatever the run's length, so a short run still counts the keyframes a day has. A
//! figure printed by a command, never a test; on a shared machine say it was measured under load.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

struct Options {
    seconds: u64,
    interval: String,
    workers: usize,
    change_percent: f64,
    pid_namespace: bool,
    worker_bytes: u64,
    release: bool,
}

const USAGE: &str = "usage: cargo xtask volume [--seconds N (120)] [--interval 10s] \
[--workers N (0: the host as it is)] [--change-percent P (1)] [--worker-bytes BYTES (4194304)] [--pid-namespace] [--release]";

/// Set in the environment of the run inside the PID namespace.
const INNER: &str = "MEMSCOPE_VOLUME_IN_NAMESPACE";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        seconds: 120,
        interval: "10s".to_string(),
        workers: 0,
        change_percent: 1.0,
        pid_namespace: false,
        worker_bytes: 4 << 20,
        release: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--pid-namespace" {
            o.pid_namespace = true;
            continue;
        }
        if a == "--release" {
            o.release = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
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
    Ok(o)
}

/// One mode's figures.
struct Volume {
    emissions: usize,
    processes: u64,
    keyframe_bytes: f64,
    other_bytes: Option<f64>,
    bytes_per_day: f64,
    /// Mean bytes per kind in the emissions that are not keyframes.
    other_by_kind: std::collections::BTreeMap<String, f64>,
}

/// Reads the file sink at `path` (no rotation: max_bytes is large) and computes the figures for
/// `per_day` emissions a day with a keyframe every `keyframe_every`.
/// `keyframe`: the bytes of a keyframe when known from elsewhere (a `full` run's emission: a
/// keyframe sends the same whole records).
///
/// Steady state: the first emission reads every process, and a collector that misses its deadline
/// at start delivers its entities with the second (whole, as new); so keyframes are averaged from
/// the second emission on and the other emissions from the third on (when there are that many).
fn measure(
    path: &Path,
    per_day: f64,
    keyframe_every: f64,
    keyframe: Option<f64>,
) -> Result<Volume> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    // (keyframe, bytes of the emission's lines, processes)
    let mut emissions: Vec<(bool, u64, u64)> = Vec::new();
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        let bytes = line.len() as u64 + 1;
        if v["kind"] == "snapshot" {
            let keyframe = v["keyframe"]
                .as_bool()
                .context("snapshot without keyframe")?;
            let processes = v["entities"]["process"].as_u64().unwrap_or(0);
            emissions.push((keyframe, bytes, processes));
        } else if let Some(last) = emissions.last_mut() {
            last.1 += bytes;
        }
        if emissions.len() > 2 && emissions.last().is_some_and(|e| !e.0) {
            let kind = v["kind"].as_str().unwrap_or("?");
            let delta = if v["delta"] == true { " (delta)" } else { "" };
            *by_kind.entry(format!("{kind}{delta}")).or_default() += bytes;
        }
    }
    if emissions.len() < 3 {
        bail!(
            "{}: only {} emissions; run longer (--seconds) or at a shorter --interval",
            path.display(),
            emissions.len()
        );
    }
    let mean = |keyframe: bool, from: usize| {
        let b: Vec<u64> = emissions
            .iter()
            .skip(from)
            .filter(|e| e.0 == keyframe)
            .map(|e| e.1)
            .collect();
        (!b.is_empty()).then(|| b.iter().sum::<u64>() as f64 / b.len() as f64)
    };
    let keyframe_bytes = match keyframe {
        Some(k) => k,
        None => mean(true, 1).or(mean(true, 0)).context("no keyframe")?,
    };
    let other_bytes = mean(false, 2);
    let others = emissions.iter().skip(2).filter(|e| !e.0).count().max(1) as f64;
    let other_by_kind = by_kind
        .into_iter()
        .map(|(k, b)| (k, b as f64 / others))
        .collect();
    let keyframes = per_day / keyframe_every.max(1.0);
    let bytes_per_day =
        keyframes * keyframe_bytes + (per_day - keyframes) * other_bytes.unwrap_or(keyframe_bytes);
    Ok(Volume {
        emissions: emissions.len(),
        processes: emissions[emissions.len() - 1].2,
        keyframe_bytes,
        other_bytes,
        bytes_per_day,
        other_by_kind,
    })
}

/// RFC 7386 merge of `patch` into `target` (a `delta` record into the record it patches).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// What [`phases`] finds.
struct PhaseMedians {
    ticks: usize,
    /// Per phase, then the tick (their sum), in µs.
    medians: Vec<(String, f64)>,
    /// Median of the tick / statm pass ratios.
    ratio: f64,
}

/// The `agent` records' `phases_us` of a stream (deltas applied), from its third emission on (the
/// first reads every process, the second may carry re-reads over): how many, the median of each
/// phase (µs) with the tick (their sum) last, and the median ratio of the tick to the statm pass.
fn phases(path: &Path) -> Result<PhaseMedians> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut agent = Value::Null;
    let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        if v["kind"] != "agent" {
            continue;
        }
        if v["delta"] == true {
            merge(&mut agent, &v);
        } else {
            agent = v.clone();
        }
        if v["seq"].as_u64().unwrap_or(0) >= 2
            && let Some(p) = agent["phases_us"].as_object()
        {
            rows.push(p.clone());
        }
    }
    if rows.is_empty() {
        bail!(
            "{}: no agent record from the third emission on",
            path.display()
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let names: Vec<String> = rows[0].keys().cloned().collect();
    let us = |r: &serde_json::Map<String, Value>, k: &str| {
        r.get(k).and_then(Value::as_f64).unwrap_or(0.0)
    };
    let tick = |r: &serde_json::Map<String, Value>| names.iter().map(|k| us(r, k)).sum::<f64>();
    let mut medians: Vec<(String, f64)> = names
        .iter()
        .map(|k| (k.clone(), median(rows.iter().map(|r| us(r, k)).collect())))
        .collect();
    medians.push((
        "tick (sum)".to_string(),
        median(rows.iter().map(tick).collect()),
    ));
    let ratio = median(
        rows.iter()
            .map(|r| tick(r) / us(r, "statm_pass").max(1.0))
            .collect(),
    );
    Ok(PhaseMedians {
        ticks: rows.len(),
        medians,
        ratio,
    })
}

/// Seconds of a duration as the agent's config writes it (`"500ms"`, `"10s"`, `"30m"`, `"1h"`).
fn seconds_of(d: &str) -> Result<f64> {
    let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
    let (n, unit) = d.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("duration {d:?}"))?;
    Ok(n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => bail!("duration {d:?}: use one unit of ms, s, m, h or d"),
    })
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

/// `memhog worker` processes, signalled round-robin; killed on drop.
struct Workers {
    children: Vec<Child>,
    next: usize,
}

impl Workers {
    fn spawn(memhog: &Path, n: usize, bytes: u64) -> Result<Workers> {
        let mut w = Workers {
            children: Vec::with_capacity(n),
            next: 0,
        };
        for i in 0..n {
            let mut child = Command::new(memhog)
                .args(["worker", &bytes.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawning worker {i}: {}", memhog.display()))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            w.children.push(child);
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .with_context(|| format!("worker {i}: reading its ready line"))?;
            if line.trim() != "ready" {
                bail!("worker {i} did not start (said {line:?})");
            }
        }
        Ok(w)
    }

    /// Signals the next `k` workers (SIGUSR1: map a new region).
    fn signal(&mut self, k: usize) -> Result<()> {
        for _ in 0..k {
            let c = &self.children[self.next % self.children.len()];
            self.next += 1;
            let pid = c.id().to_string();
            let status = Command::new("kill").args(["-USR1", &pid]).status()?;
            if !status.success() {
                bail!("kill -USR1 {pid} failed");
            }
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let interval = seconds_of(&o.interval)?;
    let inner = std::env::var_os(INNER).is_some();
    if !inner {
        // Bytes do not depend on the build profile; the dev build is the one the test lanes make.
        let mut build = vec!["build", "-p", "memscope-agent"];
        if o.workers > 0 {
            build.extend([
                "-p",
                "memscope-tests",
                "--bin",
                "memhog",
                "--bin",
                "memscope-agent",
            ]);
        }
        crate::cargo(&build, &[])?;
        if o.release {
            crate::cargo(&["build", "--release", "-p", "memscope-agent"], &[])?;
        }
    }
    if o.pid_namespace && !inner {
        // The agents see only the workers and themselves, whatever else runs on the host.
        return crate::rerun_in_pid_namespace("volume", args, INNER);
    }
    let root = crate::workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let agent = target.join(if o.release {
        "release/memscope-agent"
    } else {
        "debug/memscope-agent"
    });
    let keyframe_every = (default_keyframe_interval(&agent)? / interval).ceil();
    let mut workers = match o.workers {
        0 => None,
        n => {
            eprintln!("volume: starting {n} memhog workers");
            Some(Workers::spawn(
                &target.join("debug/memhog"),
                n,
                o.worker_bytes,
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
                // In a PID namespace the eBPF tracker would also report the host's exits.
                if o.pid_namespace { "tracker = \"polling\"\n" } else { "" },
                out.display().to_string()
            ),
        )
        .with_context(|| format!("{}", conf.display()))?;
        let log = std::fs::File::create(dir.join(format!("{mode}.log")))?;
        let child = Command::new(&agent)
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
                "\nchanges: the agent's phases_us, median of {n} ticks (from the third emission on), {} build",
                if o.release { "release" } else { "debug" }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_counts_keyframes_and_other_emissions_apart() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.jsonl");
        let snap = |keyframe: bool| {
            format!(
                "{{\"kind\":\"snapshot\",\"keyframe\":{keyframe},\"entities\":{{\"process\":7}}}}\n"
            )
        };
        let rec = "{\"kind\":\"process\",\"pid\":1}\n";
        // A keyframe, then an emission still completing the start (10 new records), then two
        // steady ones.
        let text = [
            snap(true),
            rec.repeat(50),
            snap(false),
            rec.repeat(10),
            snap(false),
            rec.to_string(),
            snap(false),
            rec.to_string(),
        ]
        .concat();
        std::fs::write(&p, &text)?;
        let keyframe = (snap(true).len() + 50 * rec.len()) as f64;
        let other = (snap(false).len() + rec.len()) as f64;
        let v = measure(&p, 8640.0, 180.0, None)?;
        assert_eq!(v.emissions, 4);
        assert_eq!(v.processes, 7);
        assert!((v.keyframe_bytes - keyframe).abs() < 1e-9);
        assert_eq!(
            v.other_bytes,
            Some(other),
            "steady state: from the third emission"
        );
        assert_eq!(v.other_by_kind["process"], rec.len() as f64);
        // 8640 emissions a day, one keyframe in 180: 48 keyframes.
        assert!((v.bytes_per_day - (48.0 * keyframe + 8592.0 * other)).abs() < 1e-6);
        // A keyframe's size from elsewhere (a full run's emission).
        let given = measure(&p, 8640.0, 180.0, Some(1000.0))?;
        assert!((given.bytes_per_day - (48.0 * 1000.0 + 8592.0 * other)).abs() < 1e-6);
        // Every emission a keyframe (full): the mean of the keyframes, 8640 times.
        let all = measure(&p, 8640.0, 1.0, None)?;
        assert!((all.bytes_per_day - 8640.0 * keyframe).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn phases_apply_agent_deltas_and_take_medians() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.jsonl");
        let agent = |seq: u64, body: &str| format!("{{\"kind\":\"agent\",\"seq\":{seq},{body}}}\n");
        let text = [
            agent(0, r#""phases_us":{"statm_pass":100,"diff":900}"#),
            agent(1, r#""delta":true,"phases_us":{"statm_pass":10}"#),
            agent(2, r#""delta":true,"phases_us":{"statm_pass":10,"diff":10}"#),
            agent(3, r#""delta":true,"phases_us":{"diff":30}"#),
            agent(4, r#""delta":true,"phases_us":{"statm_pass":20}"#),
        ]
        .concat();
        std::fs::write(&p, text)?;
        let PhaseMedians {
            ticks: n,
            medians,
            ratio,
        } = phases(&p)?;
        assert_eq!(n, 3, "from seq 2 on");
        // Rows: (10, 10), (10, 30), (20, 30): ticks 20, 40, 50; ratios 2, 4, 2.5.
        assert_eq!(
            medians,
            [
                ("diff".to_string(), 30.0),
                ("statm_pass".to_string(), 10.0),
                ("tick (sum)".to_string(), 40.0)
            ]
        );
        assert_eq!(ratio, 2.5);
        Ok(())
    }

    #[test]
    fn durations_in_the_configs_units() -> Result<()> {
        assert_eq!(seconds_of("10s")?, 10.0);
        assert_eq!(seconds_of("30m")?, 1800.0);
        assert_eq!(seconds_of("500ms")?, 0.5);
        assert!(seconds_of("1h30m").is_err());
        Ok(())
    }
}
