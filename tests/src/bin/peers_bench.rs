//! memscope against its peers in one run (root): run it through `cargo xtask bench-peers`, which
//! installs smem, smemstat and prometheus-process-exporter from Debian and builds this, `memhog`
//! and the agent in release. A benchmark that prints tables, never a timed test.
//!
//! For each size N (default 300, 1000 and 3000) the workload is N `memhog worker` processes, each
//! with `--worker-bytes` of private memory and one `/dev/shm` file of `--shared-bytes` mapped
//! shared and read in whole (one shared object, N mappers; the PSS of each is a share of it). On
//! that workload, in one run, repeated `--repeats` times (interleaved, so load from elsewhere
//! falls on all alike), medians shown:
//! - **floor**: this process reading every `/proc/PID/smaps_rollup` and `/proc/PID/smaps` with plain
//!   `read(2)` into one buffer, no parsing (CPU of this process);
//! - **memscope `--once`**, **smemstat** (one pass), **smem** (one pass): CPU and peak RSS of each
//!   child, from `wait4`;
//! - **process-exporter** with `-gather-smaps`, one scrape: the exporter process's CPU over one
//!   `/metrics` request (from `/proc/PID/stat`, 10 ms ticks) after a first, unmeasured scrape; its
//!   peak RSS (`VmHWM`);
//! - **memscope's steady tick** in polling and in eBPF mode: the agent runs with a 1 s interval (the
//!   defaults otherwise) while 1 % of the workers map a new region and unmap their oldest each
//!   second; per-tick CPU from the deltas of its `agent` records after a warm-up, median over
//!   `--ticks` ticks; peak RSS from the records.
//!
//! Then, once, on a host without the workload: the **stall** a monitored process of
//! `--stall-bytes` (2 GiB) sees. It times 4 KiB mmap+munmap pairs in a loop for `--stall-seconds`
//! (each pair takes its mmap lock for writing, which waits for any reader of its page tables) with
//! no monitor, with memscope (1 s interval, eBPF and polling), with process-exporter scraped every
//! second, and with a loop reading its `smaps_rollup` back to back; p50/p99/p99.9/max, medians of
//! `--repeats` runs.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memscope_tests::bench::{
    ChildCost, Latency, Workers, args_unless_help, cpu_time, ensure_root, flag_number, http_body,
    median, memhog_path, pids, process_cpu, process_peak_rss, prometheus_sum, run_measured,
};
use serde_json::Value;

const USAGE: &str = "usage: peers_bench --agent PATH [--sizes 300,1000,3000] [--repeats 3] \
[--worker-bytes 1048576] [--shared-bytes 67108864] [--ticks 10] [--warmup 3] \
[--churn-percent 1] [--stall-bytes 2147483648] [--stall-seconds 10] [--no-stall]";

struct Options {
    agent: PathBuf,
    sizes: Vec<usize>,
    repeats: usize,
    worker_bytes: usize,
    shared_bytes: usize,
    ticks: usize,
    warmup: usize,
    churn_percent: f64,
    stall_bytes: usize,
    stall_seconds: u64,
    stall: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut o = Options {
            agent: PathBuf::new(),
            sizes: vec![300, 1000, 3000],
            repeats: 3,
            worker_bytes: 1 << 20,
            shared_bytes: 64 << 20,
            ticks: 10,
            warmup: 3,
            churn_percent: 1.0,
            stall_bytes: 2 << 30,
            stall_seconds: 10,
            stall: true,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--no-stall" {
                o.stall = false;
                continue;
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let num = |v: &str| flag_number::<usize>(flag, v, USAGE);
            match flag.as_str() {
                "--agent" => o.agent = PathBuf::from(value),
                "--sizes" => {
                    o.sizes = value.split(',').map(num).collect::<anyhow::Result<_>>()?;
                }
                "--repeats" => o.repeats = num(value)?,
                "--worker-bytes" => o.worker_bytes = num(value)?,
                "--shared-bytes" => o.shared_bytes = num(value)?,
                "--ticks" => o.ticks = num(value)?,
                "--warmup" => o.warmup = num(value)?,
                "--churn-percent" => o.churn_percent = flag_number(flag, value, USAGE)?,
                "--stall-bytes" => o.stall_bytes = num(value)?,
                "--stall-seconds" => o.stall_seconds = flag_number(flag, value, USAGE)?,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if o.agent.as_os_str().is_empty() {
            bail!("--agent is required\n{USAGE}");
        }
        if o.sizes.is_empty() || o.sizes.contains(&0) || o.repeats < 3 || o.ticks < 3 {
            bail!("sizes must be positive, --repeats and --ticks at least 3\n{USAGE}");
        }
        Ok(o)
    }

    fn churn_per_tick(&self, workers: usize) -> usize {
        ((workers as f64 * self.churn_percent / 100.0).round() as usize).max(1)
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    /// A `/dev/shm` file of `bytes`, every page written.
    fn shm(bytes: usize) -> anyhow::Result<TempFile> {
        let path = PathBuf::from(format!(
            "/dev/shm/memscope-peers-{}.bin",
            std::process::id()
        ));
        let mut f = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])
                .with_context(|| path.display().to_string())?;
            left -= n;
        }
        Ok(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills (SIGTERM, then waits) a child on drop.
struct Running(Child);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

/// The plain-read floor: every `smaps_rollup` and `smaps` under `/proc`, read with `read(2)` into
/// one buffer. Returns the CPU it took and the bytes read.
fn floor_pass(buf: &mut [u8]) -> anyhow::Result<(Duration, u64)> {
    let cpu0 = cpu_time();
    let mut bytes = 0u64;
    for pid in pids()? {
        for file in ["smaps_rollup", "smaps"] {
            // A process may exit between the listing and the read: skip it, as a reader must.
            let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/{file}")) else {
                continue;
            };
            while let Ok(n) = f.read(buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    Ok((cpu_time().saturating_sub(cpu0), bytes))
}

/// An agent running with a config of its own; its `agent` records arrive on a channel.
struct Agent {
    _child: Running,
    records: mpsc::Receiver<Value>,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(agent: &Path, tracker: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("memscope.toml");
        std::fs::write(
            &config,
            format!("[agent]\ninterval = \"1s\"\ntracker = \"{tracker}\"\n"),
        )
        .with_context(|| config.display().to_string())?;
        let mut child = Command::new(agent)
            .args(["--log", "warn", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", agent.display()))?;
        let stdout = child.stdout.take().context("agent stdout not captured")?;
        let (tx, records) = mpsc::channel();
        std::thread::spawn(move || forward_agent_records(stdout, &tx));
        Ok(Agent {
            _child: Running(child),
            records,
            _dir: dir,
        })
    }

    /// The next `agent` record, waiting at most `timeout`.
    fn next(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.records
            .recv_timeout(timeout)
            .context("no `agent` record from the agent in time (did it exit? its log is on stderr)")
    }
}

/// Forwards every `agent` record whole: with `emit = "changes"` (the default) the records between
/// keyframes are deltas, applied here to the last one.
fn forward_agent_records(stdout: ChildStdout, tx: &mpsc::Sender<Value>) {
    let mut last: Option<String> = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["kind"] != "agent" {
            continue;
        }
        let whole = match (&last, v["delta"] == true) {
            (Some(old), true) => memscope_agent::view::state::merge_patch(old, &line),
            _ => Some(line),
        };
        let Some(whole) = whole else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&whole) else {
            continue;
        };
        last = Some(whole);
        if tx.send(v).is_err() {
            return;
        }
    }
}

fn agent_cpu(record: &Value) -> anyhow::Result<Duration> {
    let us = |k: &str| {
        record[k]
            .as_u64()
            .with_context(|| format!("agent record without {k}: {record}"))
    };
    Ok(Duration::from_micros(
        us("cpu_user_us")? + us("cpu_system_us")?,
    ))
}

/// The agent's steady tick in `tracker` mode with churn: CPU per tick (each measured tick) and
/// peak RSS, plus the first record (its uptime and eBPF load).
struct Steady {
    tick_cpu_ms: Vec<f64>,
    max_rss_bytes: u64,
    first: Value,
}

fn steady(opts: &Options, workers: &mut Workers, tracker: &str) -> anyhow::Result<Steady> {
    let agent = Agent::start(&opts.agent, tracker)?;
    let per_tick = opts.churn_per_tick(workers.pids.len());
    // The first emission is a full pass: allow it a generous time.
    let first = agent.next(Duration::from_secs(600))?;
    if first["tracker"]["mode"] != tracker {
        bail!(
            "asked for tracker = {tracker}, the agent runs {}",
            first["tracker"]
        );
    }
    let mut records = vec![first.clone()];
    while records.len() < 1 + opts.warmup + opts.ticks {
        workers.signal(per_tick)?;
        records.push(agent.next(Duration::from_secs(120))?);
    }
    let measured = &records[opts.warmup..];
    let mut tick_cpu_ms = Vec::new();
    for pair in measured.windows(2) {
        let d = agent_cpu(&pair[1])?.saturating_sub(agent_cpu(&pair[0])?);
        tick_cpu_ms.push(d.as_secs_f64() * 1e3);
    }
    let max_rss_bytes = records
        .iter()
        .filter_map(|r| r["max_rss_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    Ok(Steady {
        tick_cpu_ms,
        max_rss_bytes,
        first,
    })
}

/// prometheus-process-exporter on a free local port, every process in a group named by its comm.
struct Exporter {
    child: Running,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Exporter {
    fn start() -> anyhow::Result<Exporter> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("process-exporter.yml");
        std::fs::write(
            &config,
            "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n    - \".+\"\n",
        )
        .with_context(|| config.display().to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free local port")?
            .port();
        let child = Command::new("prometheus-process-exporter")
            .arg("-config.path")
            .arg(&config)
            .args([
                "-gather-smaps=true",
                "-threads=false",
                "-web.listen-address",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "spawning prometheus-process-exporter (installed by `cargo xtask bench-peers`)",
            )?;
        let exporter = Exporter {
            child: Running(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("process-exporter did not listen on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(exporter)
    }

    fn scrape(&self) -> anyhow::Result<String> {
        scrape(self.port)
    }
}

/// `GET /metrics` over HTTP/1.0 (no chunking, no compression); the body.
fn scrape(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .with_context(|| format!("reading 127.0.0.1:{port}/metrics"))?;
    Ok(http_body(&response)
        .with_context(|| format!("127.0.0.1:{port}/metrics"))?
        .to_string())
}

/// One scrape's CPU per repeat, the peak RSS, and the processes the last scrape counted.
fn exporter_scrapes(repeats: usize) -> anyhow::Result<(Vec<f64>, u64, f64)> {
    let exporter = Exporter::start()?;
    exporter.scrape()?; // the first scrape also builds the groups: not measured
    let pid = exporter.child.pid();
    let mut cpu_ms = Vec::new();
    let mut procs = 0.0;
    for _ in 0..repeats {
        let cpu0 = process_cpu(pid)?;
        let body = exporter.scrape()?;
        cpu_ms.push(process_cpu(pid)?.saturating_sub(cpu0).as_secs_f64() * 1e3);
        procs = prometheus_sum(&body, "namedprocess_namegroup_num_procs", &[])
            .context("no namedprocess_namegroup_num_procs in the scrape")?;
    }
    Ok((cpu_ms, process_peak_rss(pid)?, procs))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[expect(clippy::print_stdout, reason = "the tables are this binary's output")]
fn size_table(opts: &Options, memhog: &Path, n: usize) -> anyhow::Result<()> {
    let shared = TempFile::shm(opts.shared_bytes)?;
    eprintln!("peers_bench: starting {n} workers");
    let mut workers = Workers::spawn(
        memhog,
        n,
        opts.worker_bytes,
        memscope_tests::bench::WORKER_REGION_BYTES,
        Some(&shared.0),
    )?;
    let processes = pids()?.len();
    let mut buf = vec![0u8; 64 << 10];
    let (mut floor, mut floor_bytes) = (Vec::new(), Vec::new());
    let (mut once, mut smemstat, mut smem) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..opts.repeats {
        eprintln!(
            "peers_bench: {n} workers, round {}/{}: floor, --once, smemstat, smem",
            r + 1,
            opts.repeats
        );
        let (cpu, bytes) = floor_pass(&mut buf)?;
        floor.push(ms(cpu));
        floor_bytes.push(bytes as f64);
        once.push(run_measured(
            Command::new(&opts.agent).args(["--once", "--log", "warn"]),
        )?);
        smemstat.push(run_measured(&mut Command::new("smemstat"))?);
        smem.push(run_measured(&mut Command::new("smem"))?);
    }
    eprintln!("peers_bench: {n} workers: process-exporter scrapes");
    let (scrape_ms, exporter_rss, exporter_procs) = exporter_scrapes(opts.repeats)?;
    eprintln!("peers_bench: {n} workers: steady ticks, polling then eBPF");
    let polling = steady(opts, &mut workers, "polling")?;
    let ebpf = steady(opts, &mut workers, "ebpf")?;
    drop(workers);

    let cost_ms = |v: &[ChildCost]| median(&v.iter().map(|c| ms(c.cpu)).collect::<Vec<_>>());
    let cost_rss = |v: &[ChildCost]| {
        median(&v.iter().map(|c| c.max_rss_bytes as f64).collect::<Vec<_>>()) as u64
    };
    let floor_ms = median(&floor);
    let rows: [(&str, f64, Option<u64>); 7] = [
        (
            "floor: read(2) of every smaps + smaps_rollup",
            floor_ms,
            None,
        ),
        ("memscope --once", cost_ms(&once), Some(cost_rss(&once))),
        (
            "memscope steady tick, polling",
            median(&polling.tick_cpu_ms),
            Some(polling.max_rss_bytes),
        ),
        (
            "memscope steady tick, eBPF",
            median(&ebpf.tick_cpu_ms),
            Some(ebpf.max_rss_bytes),
        ),
        (
            "smemstat, one pass",
            cost_ms(&smemstat),
            Some(cost_rss(&smemstat)),
        ),
        ("smem, one pass", cost_ms(&smem), Some(cost_rss(&smem))),
        (
            "process-exporter -gather-smaps, one scrape",
            median(&scrape_ms),
            Some(exporter_rss),
        ),
    ];
    println!(
        "\n### {n} workers: {processes} processes on the host\n\n{} KiB private each, one {} MiB /dev/shm file mapped by all; floor read {:.1} MiB; process-exporter counted {exporter_procs} processes; steady ticks: 1 s interval, {} of {n} workers churning per tick, median of {} ticks after {} warm-up\n",
        opts.worker_bytes >> 10,
        opts.shared_bytes >> 20,
        median(&floor_bytes) / f64::from(1 << 20),
        opts.churn_per_tick(n),
        opts.ticks,
        opts.warmup,
    );
    println!(
        "| what | CPU ms (median of {}) | peak RSS MiB | x floor |",
        opts.repeats
    );
    println!("|---|---|---|---|");
    for (name, cpu, rss) in &rows {
        println!(
            "| {name} | {cpu:.1} | {} | {:.2} |",
            rss.map_or_else(|| "-".to_string(), |b| format!("{:.1}", mib(b))),
            cpu / floor_ms
        );
    }
    println!("\nmemscope's CPU against each peer's (ratio; below 1 is cheaper):\n");
    println!("| memscope | x smemstat | x smem | x process-exporter scrape |");
    println!("|---|---|---|---|");
    let (s1, s2, s3) = (rows[4].1, rows[5].1, rows[6].1);
    for (name, cpu, _) in &rows[1..4] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            cpu / s1,
            cpu / s2,
            cpu / s3
        );
    }
    println!(
        "\neBPF agent's first emission: uptime_ms {} (tracker.load_ms {}), cumulative CPU {:.0} ms",
        ebpf.first["uptime_ms"],
        ebpf.first["tracker"]["load_ms"],
        ms(agent_cpu(&ebpf.first)?)
    );
    Ok(())
}

/// What watches the stalled process.
#[derive(Clone, Copy)]
enum Monitor {
    None,
    Memscope(&'static str),
    ExporterEverySecond,
    RollupLoop,
}

impl Monitor {
    fn name(self) -> String {
        match self {
            Monitor::None => "no monitor".to_string(),
            Monitor::Memscope(t) => format!("memscope, 1 s interval, tracker = {t}"),
            Monitor::ExporterEverySecond => {
                "process-exporter -gather-smaps, scraped every second".to_string()
            }
            Monitor::RollupLoop => "a loop reading its smaps_rollup back to back".to_string(),
        }
    }
}

/// One stall run: the monitored process's mmap+munmap latencies under `monitor`.
fn stall_run(opts: &Options, memhog: &Path, monitor: Monitor) -> anyhow::Result<Latency> {
    let mut child = Command::new(memhog)
        .args([
            "stall",
            &opts.stall_bytes.to_string(),
            &opts.stall_seconds.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {} stall", memhog.display()))?;
    let mut stdin = child.stdin.take().context("stall stdin not captured")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stall stdout not captured")?);
    let child = Running(child);
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .context("reading the stall process's ready line")?;
    if line.trim() != "ready" {
        bail!("the stall process did not start (said {line:?})");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut _agent = None;
    let mut helper = None;
    match monitor {
        Monitor::None => {}
        Monitor::Memscope(tracker) => {
            let agent = Agent::start(&opts.agent, tracker)?;
            agent.next(Duration::from_secs(120))?; // the first full pass is done
            _agent = Some(agent);
        }
        Monitor::ExporterEverySecond => {
            let exporter = Exporter::start()?;
            let stop = Arc::clone(&stop);
            helper = Some(std::thread::spawn(move || -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + Duration::from_secs(1);
                    exporter.scrape()?;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(())
            }));
        }
        Monitor::RollupLoop => {
            let path = format!("/proc/{}/smaps_rollup", child.pid());
            let stop = Arc::clone(&stop);
            helper = Some(std::thread::spawn(move || -> anyhow::Result<()> {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut f = std::fs::File::open(&path).with_context(|| path.clone())?;
                    while f.read(&mut buf).with_context(|| path.clone())? > 0 {}
                }
                Ok(())
            }));
        }
    }
    writeln!(stdin, "go").context("starting the stall loop")?;
    line.clear();
    stdout
        .read_line(&mut line)
        .context("reading the stall process's figures")?;
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = helper {
        h.join()
            .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))??;
    }
    serde_json::from_str(line.trim())
        .with_context(|| format!("the stall process's figures: {line:?}"))
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn stall_table(opts: &Options, memhog: &Path) -> anyhow::Result<()> {
    let monitors = [
        Monitor::None,
        Monitor::Memscope("ebpf"),
        Monitor::Memscope("polling"),
        Monitor::ExporterEverySecond,
        Monitor::RollupLoop,
    ];
    let mut runs: Vec<Vec<Latency>> = vec![Vec::new(); monitors.len()];
    for r in 0..opts.repeats {
        for (i, m) in monitors.iter().enumerate() {
            eprintln!(
                "peers_bench: stall, round {}/{}: {}",
                r + 1,
                opts.repeats,
                m.name()
            );
            runs[i].push(stall_run(opts, memhog, *m)?);
        }
    }
    println!(
        "\n### Stall of a monitored {} MiB process\n\n4 KiB mmap+munmap pairs timed in a loop for {} s per run, medians of {} runs; µs\n",
        opts.stall_bytes >> 20,
        opts.stall_seconds,
        opts.repeats
    );
    println!("| monitor | pairs | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    for (m, runs) in monitors.iter().zip(&runs) {
        let l = Latency::median_of(runs);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            m.name(),
            l.samples,
            l.p50_ns / 1e3,
            l.p99_ns / 1e3,
            l.p999_ns / 1e3,
            l.max_ns / 1e3
        );
    }
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the header is this binary's output")]
fn main() -> anyhow::Result<()> {
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(());
    };
    let opts = Options::parse(&args)?;
    ensure_root(
        "peers_bench needs root (every process's smaps, eBPF): run `cargo xtask bench-peers` as root",
    )?;
    let memhog = memhog_path()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("/proc/sys/kernel/osrelease")?;
    let ram = std::fs::read_to_string("/proc/meminfo")
        .context("/proc/meminfo")?
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## memscope against its peers");
    println!(
        "\nmachine: kernel {}, {cpus} CPUs, {ram} RAM; load average at start {}",
        kernel.trim(),
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // `cargo xtask bench-peers` puts `--agent PATH` of its release build first (unless given one):
    // the command shows the rest, the agent its own line.
    let mut shown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--agent" {
            it.next();
        } else {
            shown.push(a.as_str());
        }
    }
    println!("command: cargo xtask bench-peers -- {}", shown.join(" "));
    println!("agent: {}", opts.agent.display());
    for &n in &opts.sizes {
        size_table(&opts, &memhog, n)?;
    }
    if opts.stall {
        stall_table(&opts, &memhog)?;
    }
    Ok(())
}
