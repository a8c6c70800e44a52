//! Sharing benchmark (root): what a fork or exit among many processes sharing memory costs the
//! agent, and what start-up costs on a host with thousands of sharers, against a full pass. Run it
//! via `cargo xtask bench-sharing`; it prints tables, never asserts a time.
//!
//! Workload: `memhog shared SIZE N`: a memfd, a `/dev/shm` file and a SysV segment of SIZE bytes,
//! each mapped whole by N forked children (every child's share of each is SIZE/N).
//!
//! - `exit`: N = `--sharers` (1000). One agent tick reads everything (as `--once` does); then
//!   `--normal` ticks with nothing changing, then `--kills` times: kill one child (it stays a zombie:
//!   memhog does not reap), run the next tick, then a normal tick. Each tick runs the `processes`
//!   and `smaps` collectors side by side, with the default budget, over the shared `statm` pass,
//!   as `runtime.rs` does (polling mode: no tracker). Printed per tick kind: CPU, bytes read,
//!   `smaps` re-reads and shares derived by arithmetic.
//! - `startup`: N = `--startup-sharers` (3000). `--once` (fresh collectors, one tick with no
//!   budget) three times, median; then a daemon start (fresh collectors, the default 2 s budget)
//!   for `--startup-ticks` ticks of `--tick-ms`: each tick's CPU, carried-over processes, re-reads
//!   by reason; the first ticks' CPU summed against `--once`.
//!
//! The agent's CPU is this process's (getrusage, user+system) around each tick.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memscope_agent::{
    collectors::{
        CollectCtx, Collector, observed,
        processes::{ProcessesCollector, ProcessesConfig, ProcessesObservation},
        smaps::{ObjectsObservation, SmapsCollector, SmapsConfig},
    },
    ladder::StatmPass,
    proc_events::ProcEvents,
    procfs::{FileClass, OpenFiles, ProcFs},
};
use memscope_tests::{
    Sharers,
    bench::{args_unless_help, cpu_time, ensure_root, flag_number, median, memhog_path},
};

const USAGE: &str = "usage: sharing_bench [--only exit|startup] [--size BYTES (4194304)] \
[--sharers N (1000)] [--normal T (5)] [--kills K (5)] [--startup-sharers N (3000)] \
[--startup-ticks T (6)] [--tick-ms MS (1000)]";

struct Options {
    only: Option<String>,
    size: u64,
    sharers: usize,
    normal: usize,
    kills: usize,
    startup_sharers: usize,
    startup_ticks: usize,
    tick: Duration,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut o = Options {
            only: None,
            size: 4 << 20,
            sharers: 1000,
            normal: 5,
            kills: 5,
            startup_sharers: 3000,
            startup_ticks: 6,
            tick: Duration::from_millis(1000),
        };
        let mut args = args.iter().cloned();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let num = |v: &str| flag_number::<u64>(&flag, v, USAGE);
            match flag.as_str() {
                "--only" if value == "exit" || value == "startup" => o.only = Some(value),
                "--size" => o.size = num(&value)?,
                "--sharers" => o.sharers = num(&value)? as usize,
                "--normal" => o.normal = num(&value)? as usize,
                "--kills" => o.kills = num(&value)? as usize,
                "--startup-sharers" => o.startup_sharers = num(&value)? as usize,
                "--startup-ticks" => o.startup_ticks = num(&value)? as usize,
                "--tick-ms" => o.tick = Duration::from_millis(num(&value)?),
                _ => bail!("bad flag {flag} {value}\n{USAGE}"),
            }
        }
        if o.sharers < 2 || o.startup_sharers < 2 || o.normal == 0 || o.startup_ticks == 0 {
            bail!(
                "--sharers and --startup-sharers must be at least 2, the tick counts positive\n{USAGE}"
            );
        }
        if o.kills >= o.sharers {
            bail!("--kills must be fewer than --sharers\n{USAGE}");
        }
        Ok(o)
    }

    fn runs(&self, which: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == which)
    }
}

/// The collectors of the two ladder tiers, fresh.
struct Agent {
    procfs: ProcFs,
    statm_files: OpenFiles,
    processes: ProcessesCollector,
    smaps: SmapsCollector,
    tick: u64,
}

/// What one tick cost and did.
#[derive(Debug, Default, Clone)]
struct Tick {
    cpu: Duration,
    proc_bytes: u64,
    smaps_bytes: u64,
    /// smaps re-reads this tick by reason, and what the budget carried over (both tiers).
    smaps_rereads: BTreeMap<&'static str, u64>,
    rollup_rereads: u64,
    carried: u64,
    derived: u32,
    /// Rollups taken from the smaps tier's read instead of reading `smaps_rollup`.
    rollups_derived: u32,
}

fn total(m: &BTreeMap<&'static str, u64>) -> u64 {
    m.values().sum()
}

impl Agent {
    fn new() -> Agent {
        let events = ProcEvents::default();
        Agent {
            procfs: ProcFs::new("/proc"),
            statm_files: StatmPass::files(8192),
            processes: ProcessesCollector::new(&ProcessesConfig::default(), events.subscribe()),
            smaps: SmapsCollector::new(&SmapsConfig::default(), events.subscribe()),
            tick: 0,
        }
    }

    fn bytes(&self) -> (u64, u64) {
        let by = self.procfs.counters().by_class();
        let all = by.iter().map(|(_, n)| n.bytes).sum();
        let smaps = by
            .iter()
            .filter(|(c, _)| {
                [FileClass::SMAPS, FileClass::SMAPS_ROLLUP]
                    .iter()
                    .any(|k| k.name() == *c)
            })
            .map(|(_, n)| n.bytes)
            .sum();
        (all, smaps)
    }

    /// One tick: the statm pass, then both tiers; `unbounded` as `--once`.
    fn tick(&mut self, unbounded: bool, before: &mut Cumulative) -> anyhow::Result<Tick> {
        let (b0, s0) = self.bytes();
        let cpu0 = cpu_time();
        let pass = StatmPass::read(&self.procfs, &mut self.statm_files, &mut Vec::new())
            .context("statm pass")?;
        // As the scheduler does when the smaps collector is due.
        pass.exchange.expect_plan();
        let ctx = CollectCtx {
            procfs: &self.procfs,
            tick: self.tick,
            statm: Some(Arc::new(pass)),
            unbounded,
        };
        // Side by side, as the runtime runs them (the smaps tier hands its derived rollups over).
        let (processes, smaps) = (&mut self.processes, &mut self.smaps);
        let (p, o) = std::thread::scope(|scope| {
            let o = scope.spawn(|| smaps.collect(&ctx));
            (processes.collect(&ctx), o.join())
        });
        let p = p.context("processes collector")?;
        let o = observed::<ObjectsObservation>(
            o.map_err(|_| anyhow::anyhow!("the smaps collector panicked"))?,
        )
        .map_err(|e| anyhow::anyhow!("smaps collector: {e}"))?;
        let cpu = cpu_time().saturating_sub(cpu0);
        self.tick += 1;
        let (b1, s1) = self.bytes();
        let rollup = p
            .as_ref()
            .and_then(|p| p.tier())
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let smaps_rereads: BTreeMap<&'static str, u64> = o
            .tier
            .rereads
            .iter()
            .map(|(r, n)| (*r, n - before.smaps.get(r).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let rollup_total = total(&rollup.rereads);
        let t = Tick {
            cpu,
            proc_bytes: b1 - b0,
            smaps_bytes: s1 - s0,
            smaps_rereads,
            rollup_rereads: rollup_total - before.rollup,
            carried: o.tier.carried_over + rollup.carried_over,
            derived: o.derived_shares,
            rollups_derived: p
                .as_ref()
                .and_then(|p| p.downcast_ref::<ProcessesObservation>())
                .map_or(0, |p| p.rollups_derived),
        };
        before.smaps = o.tier.rereads.clone();
        before.rollup = rollup_total;
        Ok(t)
    }
}

/// Cumulative re-read counters at the last tick.
#[derive(Default)]
struct Cumulative {
    smaps: BTreeMap<&'static str, u64>,
    rollup: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn reasons(m: &BTreeMap<&'static str, u64>) -> String {
    if m.is_empty() {
        return "-".to_string();
    }
    m.iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn print_row(name: &str, t: &Tick) {
    println!(
        "| {name:<22} | {:>9.1} | {:>10.0} | {:>16.0} | {:>6} | {:>6} | {:>10} | {:>7} | {:>7} | {} |",
        ms(t.cpu),
        t.proc_bytes as f64 / 1024.0,
        t.smaps_bytes as f64 / 1024.0,
        total(&t.smaps_rereads),
        t.rollup_rereads,
        t.rollups_derived,
        t.derived,
        t.carried,
        reasons(&t.smaps_rereads)
    );
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn header() {
    println!(
        "| tick                   | CPU ms    | /proc KiB  | smaps+rollup KiB | smaps  | rollup | from smaps | derived | carried | smaps re-reads by reason |"
    );
    println!(
        "|------------------------|-----------|------------|------------------|--------|--------|------------|---------|---------|--------------------------|"
    );
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn exit_workload(opts: &Options) -> anyhow::Result<()> {
    eprintln!(
        "sharing_bench: exit: {} sharers of 3 x {} KiB",
        opts.sharers,
        opts.size >> 10
    );
    let sharers = Sharers::spawn(&memhog_path()?, opts.size, opts.sharers)?;
    let children = sharers.children();
    let mut agent = Agent::new();
    let mut cum = Cumulative::default();
    let full = agent.tick(true, &mut cum)?;
    let mut normal = Vec::new();
    for _ in 0..opts.normal {
        std::thread::sleep(opts.tick);
        normal.push(agent.tick(false, &mut cum)?);
    }
    let mut exits = Vec::new();
    for &pid in children.iter().take(opts.kills) {
        // SAFETY: kill(2) on a child of our child memhog, which stays a zombie until memhog goes.
        if unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("killing {pid}"));
        }
        std::thread::sleep(opts.tick);
        exits.push(agent.tick(false, &mut cum)?);
        std::thread::sleep(opts.tick);
        normal.push(agent.tick(false, &mut cum)?);
    }
    let host = ProcFs::new("/proc").pids().context("listing /proc")?.len();
    println!(
        "sharing bench, exit: {} processes on the host, {} sharers of a memfd, a /dev/shm file and a SysV segment of {} KiB each; tick {} ms; polling mode",
        host,
        opts.sharers,
        opts.size >> 10,
        opts.tick.as_millis()
    );
    println!();
    header();
    print_row("full pass (tick 0)", &full);
    for (i, t) in normal.iter().enumerate() {
        print_row(&format!("normal {}", i + 1), t);
    }
    for (i, t) in exits.iter().enumerate() {
        print_row(&format!("after exit {}", i + 1), t);
    }
    let med = |v: &[Tick], f: &dyn Fn(&Tick) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (n_cpu, e_cpu) = (med(&normal, &|t| ms(t.cpu)), med(&exits, &|t| ms(t.cpu)));
    let (n_kib, e_kib) = (
        med(&normal, &|t| t.proc_bytes as f64 / 1024.0),
        med(&exits, &|t| t.proc_bytes as f64 / 1024.0),
    );
    println!();
    println!(
        "median CPU: normal tick {n_cpu:.1} ms, tick after an exit {e_cpu:.1} ms (ratio {:.2}; full pass {:.1} ms); /proc bytes: normal {n_kib:.0} KiB, after an exit {e_kib:.0} KiB (ratio {:.2})",
        e_cpu / n_cpu.max(1e-9),
        ms(full.cpu),
        e_kib / n_kib.max(1e-9)
    );
    println!(
        "{}: one exit among {} sharers costs {:.2}x a normal tick (target <= 2)",
        if e_cpu <= 2.0 * n_cpu { "PASS" } else { "FAIL" },
        opts.sharers,
        e_cpu / n_cpu.max(1e-9)
    );
    drop(sharers);
    Ok(())
}

/// The floor: every process's `smaps` and `smaps_rollup` read with plain read(2), nothing parsed.
/// CPU of one such pass.
fn floor() -> anyhow::Result<Duration> {
    use std::io::Read as _;
    let pids = ProcFs::new("/proc").pids().context("listing /proc")?;
    let mut buf = Vec::with_capacity(1 << 20);
    let cpu0 = cpu_time();
    for pid in pids {
        for file in ["smaps", "smaps_rollup"] {
            buf.clear();
            // Gone or denied: nothing to read, as for the agent.
            if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/{file}")) {
                let _ = f.read_to_end(&mut buf);
            }
        }
    }
    Ok(cpu_time().saturating_sub(cpu0))
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn startup_workload(opts: &Options) -> anyhow::Result<()> {
    eprintln!(
        "sharing_bench: startup: {} sharers of 3 x {} KiB",
        opts.startup_sharers,
        opts.size >> 10
    );
    let sharers = Sharers::spawn(&memhog_path()?, opts.size, opts.startup_sharers)?;
    let mut once = Vec::new();
    for _ in 0..3 {
        let mut agent = Agent::new();
        once.push(agent.tick(true, &mut Cumulative::default())?);
    }
    once.sort_by_key(|t| t.cpu);
    let once = once.swap_remove(1);
    let mut floors = Vec::new();
    for _ in 0..3 {
        floors.push(floor()?);
    }
    floors.sort();
    let floor = floors[1];
    let mut agent = Agent::new();
    let mut cum = Cumulative::default();
    let mut ticks = Vec::new();
    let mut deadline = Instant::now();
    for _ in 0..opts.startup_ticks {
        ticks.push(agent.tick(false, &mut cum)?);
        deadline += opts.tick;
        if let Some(left) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        } else {
            deadline = Instant::now();
        }
    }
    let host = ProcFs::new("/proc").pids().context("listing /proc")?.len();
    println!();
    println!(
        "sharing bench, start-up: {} processes on the host, {} sharers of 3 x {} KiB; daemon ticks of {} ms with the default 2 s budget; --once = one tick with no budget, median of 3; polling mode",
        host,
        opts.startup_sharers,
        opts.size >> 10,
        opts.tick.as_millis()
    );
    println!();
    header();
    print_row("--once", &once);
    for (i, t) in ticks.iter().enumerate() {
        print_row(&format!("daemon tick {i}"), t);
    }
    // The start-up is over at the first tick with nothing carried over; count the ticks up to it.
    let end = ticks
        .iter()
        .position(|t| t.carried == 0)
        .map_or(ticks.len(), |i| i + 1);
    let sum: Duration = ticks[..end].iter().map(|t| t.cpu).sum();
    let all: Duration = ticks.iter().map(|t| t.cpu).sum();
    let ratio = ms(sum) / ms(once.cpu).max(1e-9);
    println!();
    println!(
        "start-up (ticks 0..{}, until nothing is carried over): {:.0} ms CPU vs --once {:.0} ms: ratio {ratio:.3}; all {} ticks: {:.0} ms ({:.3})",
        end - 1,
        ms(sum),
        ms(once.cpu),
        ticks.len(),
        ms(all),
        ms(all) / ms(once.cpu).max(1e-9)
    );
    let once_floor = ms(once.cpu) / ms(floor).max(1e-9);
    println!(
        "floor (read(2) of every smaps and smaps_rollup, median of 3): {:.0} ms CPU; --once {:.0} ms: ratio {once_floor:.3}",
        ms(floor),
        ms(once.cpu)
    );
    println!(
        "{}: --once costs {once_floor:.3}x the floor (target <= 1.1)",
        if once_floor <= 1.1 { "PASS" } else { "FAIL" }
    );
    println!(
        "{}: start-up at {} processes costs {ratio:.3}x --once (target <= 1.1)",
        if ratio <= 1.1 { "PASS" } else { "FAIL" },
        host
    );
    drop(sharers);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(());
    };
    let opts = Options::parse(&args)?;
    ensure_root(
        "sharing_bench needs root (every process's smaps): run `sudo cargo xtask bench-sharing`",
    )?;
    if opts.runs("exit") {
        exit_workload(&opts)?;
    }
    if opts.runs("startup") {
        startup_workload(&opts)?;
    }
    Ok(())
}
