//! What the benchmarks in `src/bin/` share: the `memhog worker` pool, CPU and peak-RSS
//! measurement, the statistics (medians, percentiles), the root check and the re-run in a PID
//! namespace of their own. Benchmarks print figures; nothing here asserts a time.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The median; the mean of the middle two for an even count; NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => f64::midpoint(s[mid - 1], s[mid]),
        _ => s[mid],
    }
}

/// The nearest-rank percentile (`p` in 0..=1): the smallest sample at or above which a fraction
/// `p` of the samples lie; 0 for none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile_of_sorted(&s, p)
}

/// [`percentile`] of samples already sorted ascending.
pub fn percentile_of_sorted(s: &[f64], p: f64) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let idx = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

/// Latency figures of a loop: p50, p99, p99.9 and the maximum, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
}

impl Latency {
    /// The figures of `samples_ns` (sorted in place).
    pub fn of(samples_ns: &mut [f64]) -> Latency {
        samples_ns.sort_by(f64::total_cmp);
        Latency {
            samples: samples_ns.len() as u64,
            p50_ns: percentile_of_sorted(samples_ns, 0.50),
            p99_ns: percentile_of_sorted(samples_ns, 0.99),
            p999_ns: percentile_of_sorted(samples_ns, 0.999),
            max_ns: samples_ns.last().copied().unwrap_or(0.0),
        }
    }

    /// The median of each figure over several runs.
    pub fn median_of(runs: &[Latency]) -> Latency {
        let m = |f: fn(&Latency) -> f64| median(&runs.iter().map(f).collect::<Vec<f64>>());
        Latency {
            samples: median(&runs.iter().map(|r| r.samples as f64).collect::<Vec<_>>()) as u64,
            p50_ns: m(|r| r.p50_ns),
            p99_ns: m(|r| r.p99_ns),
            p999_ns: m(|r| r.p999_ns),
            max_ns: m(|r| r.max_ns),
        }
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.unsigned_abs()) + Duration::from_micros(t.tv_usec.unsigned_abs())
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`).
fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage into a zeroed struct we own; it cannot fail for these `who`.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// CPU time (user + system) of this process, all threads.
pub fn cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of all the children this process has waited for so far.
pub fn children_cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

/// What a finished child cost: CPU (user + system) and peak RSS, from `wait4`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildCost {
    pub cpu: Duration,
    pub max_rss_bytes: u64,
}

/// Runs `command` to completion (its stdout and stderr discarded) and returns its cost; fails on a
/// non-zero exit.
pub fn run_measured(command: &mut Command) -> anyhow::Result<ChildCost> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: wait4 on our own unreaped child, into a zeroed rusage we own. `child` is not waited
    // for again (dropping a `Child` does not wait).
    let (ret, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let ret = libc::wait4(pid, &mut status, 0, &mut ru);
        (ret, ru)
    };
    if ret != pid {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("wait4 {pid}"));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status:#x})");
    }
    Ok(ChildCost {
        cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
        // ru_maxrss is in KiB on Linux.
        max_rss_bytes: ru.ru_maxrss.unsigned_abs() * 1024,
    })
}

/// CPU time (user + system) of a running process, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read(&path).with_context(|| path.clone())?;
    let stat = memscope_agent::procfs::stat::parse_stat(&text).with_context(|| path.clone())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    let ticks = stat.utime_ticks + stat.stime_ticks;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Peak RSS (`VmHWM`) of a running process, from `/proc/PID/status`.
pub fn process_peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read(&path).with_context(|| path.clone())?;
    memscope_agent::procfs::status::parse_status(&text)
        .with_context(|| path.clone())?
        .vm_hwm
        .with_context(|| format!("{path}: no VmHWM"))
}

/// The pids under `/proc` now.
pub fn pids() -> anyhow::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// The bench's command-line arguments; `None`, after printing `usage` on stderr, when they ask for
/// help (`--help`, `-h`).
pub fn args_unless_help(usage: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        eprintln!("{usage}");
        return None;
    }
    Some(args)
}

/// Fails with `message` (what needs root, and how to run it) unless this process runs as root.
pub fn ensure_root(message: &str) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("{message}");
    }
    Ok(())
}

/// Set in the environment of a bench's run again by [`rerun_in_pid_namespace`].
const IN_OWN_PID_NAMESPACE: &str = "MEMSCOPE_BENCH_IN_PID_NAMESPACE";

/// Whether this process is a bench's run again inside a PID namespace of its own
/// ([`rerun_in_pid_namespace`]).
pub fn in_own_pid_namespace() -> bool {
    std::env::var_os(IN_OWN_PID_NAMESPACE).is_some()
}

/// Runs this bench binary again with `args` in a PID namespace of its own with its own `/proc`
/// (root; `unshare` from util-linux) and waits for it: the agents it starts see only what the bench
/// starts, and themselves, whatever else runs on the host. The run inside sees
/// [`in_own_pid_namespace`]. `bench` names the bench in errors.
pub fn rerun_in_pid_namespace(bench: &str, args: &[String]) -> anyhow::Result<()> {
    ensure_root(&format!(
        "{bench} --pid-namespace needs root (unshare --pid --mount)"
    ))?;
    let me = std::env::current_exe().with_context(|| format!("{bench}: its own executable"))?;
    // A shell is the namespace's pid 1, so that the bench is not: a process whose parent is pid 1
    // (a `memhog worker` of the bench) takes it that its parent is gone.
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc"])
        .args(["sh", "-c", "\"$@\"; exit $?", "sh"])
        .arg(&me)
        .args(args)
        .env(IN_OWN_PID_NAMESPACE, "1")
        .status()
        .with_context(|| format!("{bench}: running unshare (util-linux)"))?;
    if !status.success() {
        bail!("{bench} in a PID namespace of its own: {status}");
    }
    Ok(())
}

/// `memhog` beside the running bench binary (`cargo build --release -p memscope-tests --bin
/// memhog`, which the `cargo xtask` bench commands do).
pub fn memhog_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench's own executable")?;
    let path = exe
        .parent()
        .context("the bench executable has no parent directory")?
        .join("memhog");
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p memscope-tests --bin memhog` (or run the bench through `cargo xtask`)",
            path.display()
        );
    }
    Ok(path)
}

/// The anonymous region a `memhog worker` maps and touches on each SIGUSR1 unless told otherwise.
pub const WORKER_REGION_BYTES: usize = 256 << 10;

/// A pool of `memhog worker` processes; killed and reaped on drop.
pub struct Workers {
    children: Children,
    pub pids: Vec<i32>,
    next: usize,
}

impl Workers {
    /// Starts `n` workers of `bytes` private memory each; with `shared`, each also maps that file
    /// shared and reads every page of it (one shared object, N mappers).
    pub fn spawn(
        memhog: &Path,
        n: usize,
        bytes: usize,
        region: usize,
        shared: Option<&Path>,
    ) -> anyhow::Result<Workers> {
        let mut w = Workers {
            children: Children(Vec::with_capacity(n)),
            pids: Vec::with_capacity(n),
            next: 0,
        };
        for i in 0..n {
            let mut command = Command::new(memhog);
            command.args(["worker", &bytes.to_string(), &region.to_string()]);
            if let Some(path) = shared {
                command.arg(path);
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawning worker {i}: {}", memhog.display()))?;
            let pid = i32::try_from(child.id()).context("pid out of range")?;
            let stdout = child
                .stdout
                .take()
                .context("worker stdout was not captured")?;
            w.children.0.push(child);
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .with_context(|| format!("reading worker {pid}'s ready line"))?;
            if line.trim() != "ready" {
                bail!("worker {pid} did not start (said {line:?})");
            }
            w.pids.push(pid);
        }
        Ok(w)
    }

    /// Signals the next `k` workers round-robin (each maps a new region and unmaps its oldest);
    /// returns their pids.
    pub fn signal(&mut self, k: usize) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            let pid = self.pids[self.next % self.pids.len()];
            self.next += 1;
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("signalling worker {pid}"));
            }
            out.push(pid.unsigned_abs());
        }
        Ok(out)
    }
}

/// Child processes, killed and reaped when dropped (also on an error): all killed first, then
/// reaped, so that a large pool ends at once.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// The sum of a Prometheus text-format metric's samples whose labels include every
/// `name="value"` pair of `labels` (process-exporter's `/metrics`). `None` when no sample matched.
pub fn prometheus_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            // Another metric whose name starts with this one.
            None if !rest.starts_with([' ', '\t']) => continue,
            None => ("", rest),
        };
        let matches = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .any(|(lk, lv)| lk.trim() == *k && lv.trim().trim_matches('"') == *v)
        });
        // The value, then an optional timestamp.
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let (true, Some(v)) = (matches, value) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The value of a command-line flag as a number; the error names the flag and shows `usage`.
pub fn flag_number<T: std::str::FromStr>(flag: &str, value: &str, usage: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .parse()
        .with_context(|| format!("{flag} {value}: not a number\n{usage}"))
}

/// The body of an HTTP/1.x response with status 200 (the whole response read to its end).
pub fn http_body(response: &str) -> anyhow::Result<&str> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let status = head.lines().next().unwrap_or_default();
    let mut words = status.split_whitespace();
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) || words.next() != Some("200") {
        bail!("HTTP status {status:?}");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&v, 1.0), 1000.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn latency_figures_and_their_median_over_runs() {
        let mut samples: Vec<f64> = (1..=2000).map(f64::from).collect();
        samples.push(1e6); // one stall
        let l = Latency::of(&mut samples);
        assert_eq!(l.samples, 2001);
        assert_eq!(l.p50_ns, 1001.0);
        assert_eq!(l.p99_ns, 1981.0);
        assert_eq!(l.p999_ns, 1999.0);
        assert_eq!(l.max_ns, 1e6);
        let other = Latency {
            samples: 10,
            p50_ns: 1.0,
            p99_ns: 2.0,
            p999_ns: 3.0,
            max_ns: 4.0,
        };
        let third = Latency {
            samples: 30,
            p50_ns: 5.0,
            p99_ns: 6.0,
            p999_ns: 7.0,
            max_ns: 8.0,
        };
        let m = Latency::median_of(&[l, other, third]);
        assert_eq!(
            (m.samples, m.p50_ns, m.p99_ns, m.p999_ns, m.max_ns),
            (30, 5.0, 6.0, 7.0, 8.0)
        );
    }

    #[test]
    fn http_body_needs_status_200() -> anyhow::Result<()> {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\nb 2\n";
        assert_eq!(http_body(ok)?, "a 1\nb 2\n");
        assert!(http_body("HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
        assert!(http_body("HTTP/1.0 200 OK\r\nTruncated").is_err());
        Ok(())
    }

    /// Lines as process-exporter 0.7 writes them.
    const EXPORTER: &str = "\
# HELP namedprocess_namegroup_num_procs number of processes in this group
# TYPE namedprocess_namegroup_num_procs gauge
namedprocess_namegroup_num_procs{groupname=\"bash\"} 3
namedprocess_namegroup_num_procs{groupname=\"memhog\"} 300
namedprocess_namegroup_num_procs_total{groupname=\"memhog\"} 7
namedprocess_namegroup_memory_bytes{groupname=\"memhog\",memtype=\"proportionalResident\"} 1.3686784e+07
namedprocess_namegroup_memory_bytes{groupname=\"memhog\",memtype=\"resident\"} 5.5656448e+07
namedprocess_namegroup_memory_bytes{groupname=\"bash\",memtype=\"proportionalResident\"} 1e+06
namedprocess_scrape_errors 0
namedprocess_scrape_errors_total 5
";

    #[test]
    fn prometheus_sums_match_name_and_labels_exactly() {
        let sum = |m, l: &[(&str, &str)]| prometheus_sum(EXPORTER, m, l);
        assert_eq!(sum("namedprocess_namegroup_num_procs", &[]), Some(303.0));
        assert_eq!(
            sum(
                "namedprocess_namegroup_num_procs",
                &[("groupname", "memhog")]
            ),
            Some(300.0)
        );
        assert_eq!(
            sum(
                "namedprocess_namegroup_memory_bytes",
                &[("memtype", "proportionalResident")]
            ),
            Some(14_686_784.0)
        );
        assert_eq!(sum("namedprocess_scrape_errors", &[]), Some(0.0));
        assert_eq!(sum("namedprocess_namegroup_cpu_seconds_total", &[]), None);
        assert_eq!(
            sum("namedprocess_namegroup_num_procs", &[("groupname", "x")]),
            None
        );
    }
}
