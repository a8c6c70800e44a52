//! `cargo xtask volume`: how many bytes a day the agent writes on this host, as it is now.
//!
//! Runs two agents side by side over the same host for `--seconds` (default 120), both with the
//! default config except for a file sink, one with `emit = "full"` (the default) and one with
//! `emit = "changes"`, at `--interval` (default the agent's default, 10s). Prints, per mode, the
//! emissions seen, the processes on the host, the mean bytes per emission after the first (the
//! first is a full read in both modes), and bytes per day extrapolated from the time between the
//! second and the last emission. A figure printed by a command, never a test; on a shared machine
//! say it was measured under load.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

struct Options {
    seconds: u64,
    interval: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        seconds: 120,
        interval: "10s".to_string(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--seconds" => {
                o.seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value}"))?
            }
            "--interval" => o.interval.clone_from(value),
            other => bail!(
                "unknown argument {other}; usage: cargo xtask volume [--seconds N] [--interval 10s]"
            ),
        }
    }
    Ok(o)
}

/// One mode's figures.
struct Volume {
    emissions: usize,
    processes: u64,
    steady_bytes_per_emission: f64,
    bytes_per_day: f64,
}

/// Reads the file sink at `path` (no rotation: max_bytes is large) and computes the figures.
fn measure(path: &Path) -> Result<Volume> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    // (ts in ms of the emission's snapshot, bytes of the emission's lines)
    let mut emissions: Vec<(f64, u64, u64)> = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        let bytes = line.len() as u64 + 1;
        if v["kind"] == "snapshot" {
            let ts = v["ts"].as_str().context("snapshot without ts")?;
            let processes = v["entities"]["process"].as_u64().unwrap_or(0);
            emissions.push((ms_of(ts)?, bytes, processes));
        } else if let Some(last) = emissions.last_mut() {
            last.1 += bytes;
        }
    }
    if emissions.len() < 3 {
        bail!(
            "{}: only {} emissions; run longer (--seconds) or at a shorter --interval",
            path.display(),
            emissions.len()
        );
    }
    // Steady state: from the second emission on. Bytes of emissions 1..n-1 over the time from
    // emission 1 to emission n-1 (the last emission's bytes close the span).
    let steady = &emissions[1..];
    let span_ms = steady[steady.len() - 1].0 - steady[0].0;
    let bytes_in_span: u64 = steady[..steady.len() - 1].iter().map(|e| e.1).sum();
    Ok(Volume {
        emissions: emissions.len(),
        processes: emissions[emissions.len() - 1].2,
        steady_bytes_per_emission: steady.iter().map(|e| e.1 as f64).sum::<f64>()
            / steady.len() as f64,
        bytes_per_day: bytes_in_span as f64 / span_ms * 86_400_000.0,
    })
}

/// Milliseconds since midnight plus days of `YYYY-MM-DDTHH:MM:SS.mmmZ` (enough for differences
/// within a run).
fn ms_of(ts: &str) -> Result<f64> {
    let bad = || format!("unexpected ts {ts}");
    let (date, time) = ts.split_once('T').with_context(bad)?;
    let day: f64 = date
        .rsplit('-')
        .next()
        .with_context(bad)?
        .parse()
        .with_context(bad)?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().with_context(bad)?.parse().with_context(bad)?;
    let m: f64 = parts.next().with_context(bad)?.parse().with_context(bad)?;
    let s: f64 = parts.next().with_context(bad)?.parse().with_context(bad)?;
    Ok(((day * 24.0 + h) * 60.0 + m) * 60_000.0 + s * 1000.0)
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
    // Bytes do not depend on the build profile; the dev build is the one the test lanes make.
    crate::cargo(&["build", "-p", "memscope-agent"], &[])?;
    let root = crate::workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let agent = target.join("debug/memscope-agent");
    let dir = std::env::temp_dir().join(format!("memscope-volume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut children = Vec::new();
    for mode in ["full", "changes"] {
        let out = dir.join(format!("{mode}.jsonl"));
        let conf = dir.join(format!("{mode}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[agent]\ninterval = {:?}\n\n[output]\nsink = \"file\"\npath = {:?}\nmax_bytes = \"4GiB\"\nemit = {mode:?}\n",
                o.interval,
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
    std::thread::sleep(Duration::from_secs(o.seconds));
    for (_, child, _) in &mut children {
        stop(child)?;
    }
    #[expect(clippy::print_stdout, reason = "the table is this command's output")]
    {
        println!("| emit | emissions | processes | bytes/emission (after the first) | MB/day |");
        println!("|---|---|---|---|---|");
        for (mode, _, out) in &children {
            let v = measure(out)?;
            println!(
                "| {mode} | {} | {} | {:.0} | {:.1} |",
                v.emissions,
                v.processes,
                v.steady_bytes_per_emission,
                v.bytes_per_day / 1e6
            );
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_excludes_the_first_emission() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.jsonl");
        let snap = |ts: &str| {
            format!("{{\"kind\":\"snapshot\",\"ts\":\"{ts}\",\"entities\":{{\"process\":7}}}}\n")
        };
        let rec = "{\"kind\":\"process\",\"pid\":1}\n";
        let text = [
            snap("2026-01-01T00:00:00.000Z"),
            rec.repeat(50),
            snap("2026-01-01T00:00:10.000Z"),
            rec.to_string(),
            snap("2026-01-01T00:00:20.000Z"),
            rec.to_string(),
        ]
        .concat();
        std::fs::write(&p, &text)?;
        let v = measure(&p)?;
        let emission = (snap("2026-01-01T00:00:10.000Z").len() + rec.len()) as f64;
        assert_eq!(v.emissions, 3);
        assert_eq!(v.processes, 7);
        assert!((v.steady_bytes_per_emission - emission).abs() < 1e-9);
        // One emission per 10 s: 8640 a day.
        assert!((v.bytes_per_day - emission * 8640.0).abs() < 1e-6);
        Ok(())
    }
}
