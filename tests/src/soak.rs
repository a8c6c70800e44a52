//! The options and samples of `cargo xtask soak` (`src/bin/soak_bench.rs`): the agent's memory
//! over time with many idle processes on the host.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};

/// What `soak_bench` runs.
#[derive(Debug)]
pub struct Options {
    /// The agent binary (`cargo xtask soak` passes its fresh release build unless given one).
    pub agent: PathBuf,
    pub minutes: u64,
    /// Seconds between samples (after the first, at 10 s).
    pub every: u64,
    /// The idle process counts, one run each.
    pub processes: Vec<usize>,
    /// The agent's `interval`, when not its default.
    pub interval: Option<String>,
    /// The agent's `[output] keyframe_interval`, when not its default (30 m): a keyframe's peak
    /// (`VmHWM`) without waiting half an hour.
    pub keyframe_interval: Option<String>,
    pub pid_namespace: bool,
}

pub const USAGE: &str = "usage: cargo xtask soak -- [--minutes N (5)] [--every SECONDS (30)] \
[--processes 1000,3000] [--interval 10s] [--keyframe-interval 30m] [--pid-namespace] [--agent PATH (the release build)]";

/// The options from the command line (`--help` is the caller's).
pub fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        agent: PathBuf::new(),
        minutes: 5,
        every: 30,
        processes: vec![1000, 3000],
        interval: None,
        keyframe_interval: None,
        pid_namespace: false,
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
            "--keyframe-interval" => o.keyframe_interval = Some(value.clone()),
            // The last one counts: `cargo xtask soak` puts the release build's first.
            "--agent" => o.agent = PathBuf::from(value),
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if o.every == 0 || o.minutes == 0 || o.processes.is_empty() || o.processes.contains(&0) {
        bail!("--minutes, --every and --processes must be positive; {USAGE}");
    }
    if o.agent.as_os_str().is_empty() {
        bail!("--agent PATH missing (run through `cargo xtask soak`); {USAGE}");
    }
    Ok(o)
}

/// A process's memory now, from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub vm_rss: u64,
    pub anon: u64,
    pub file: u64,
    /// `VmHWM`: the peak RSS so far.
    pub hwm: u64,
}

impl Rss {
    /// `VmRSS`, `RssAnon`, `RssFile` and `VmHWM` of `pid`.
    pub fn of(pid: u32) -> Result<Rss> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read(&path).with_context(|| path.clone())?;
        let s =
            memscope_agent::procfs::status::parse_status(&text).with_context(|| path.clone())?;
        let field = |v: Option<u64>, name: &str| v.with_context(|| format!("{path}: no {name}"));
        Ok(Rss {
            vm_rss: field(s.vm_rss, "VmRSS")?,
            anon: field(s.rss_anon, "RssAnon")?,
            file: field(s.rss_file, "RssFile")?,
            hwm: field(s.vm_hwm, "VmHWM")?,
        })
    }
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// `10s`, `2m`, `2m30s`.
pub fn minutes_and_seconds(d: Duration) -> String {
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
            "--agent /release --minutes 60 --every 120 --processes 3000 --pid-namespace --interval 5s --keyframe-interval 2m --agent /x",
        ))?;
        assert_eq!(o.keyframe_interval.as_deref(), Some("2m"));
        assert_eq!((o.minutes, o.every, o.processes), (60, 120, vec![3000]));
        assert_eq!(o.interval.as_deref(), Some("5s"));
        assert!(o.pid_namespace);
        assert_eq!(o.agent, PathBuf::from("/x"));
        let d = parse(&args("--agent /a"))?;
        assert_eq!((d.minutes, d.every, d.processes), (5, 30, vec![1000, 3000]));
        assert!(!d.pid_namespace && d.interval.is_none() && d.keyframe_interval.is_none());
        assert!(parse(&[]).is_err(), "no agent");
        assert!(parse(&args("--agent /a --minutes 0")).is_err());
        assert!(parse(&args("--agent /a --processes 1,0")).is_err());
        assert!(parse(&args("--agent /a --processes 1,x")).is_err());
        assert!(parse(&args("--agent /a --seconds 3")).is_err());
        assert!(parse(&args("--agent /a --minutes")).is_err());
        Ok(())
    }

    #[test]
    fn rss_of_this_process_is_read() -> Result<()> {
        let r = Rss::of(std::process::id())?;
        assert!(r.vm_rss > 0 && r.vm_rss >= r.anon && r.vm_rss >= r.file && r.hwm >= r.vm_rss);
        assert!(Rss::of(u32::MAX).is_err());
        Ok(())
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        let s = |n| minutes_and_seconds(Duration::from_secs(n));
        assert_eq!(
            (s(10), s(60), s(150), s(3600)),
            ("10s".into(), "1m".into(), "2m30s".into(), "60m".into())
        );
    }
}
