//! Cost-ladder benchmark (root): what one steady-state agent tick costs in polling mode and in eBPF
//! mode, against a full smaps pass of the same workload, measured in one run. Run it via
//! `cargo xtask bench`; it is a benchmark that prints a table, never a timed test.
//!
//! Workload: W `memhog worker` processes (default 300). Each tick the bench signals about 1 % of
//! them (round-robin); each signalled worker maps and touches a new 64 KiB (`--region-bytes`)
//! anonymous region (and unmaps its oldest): anonymous churn, no object changes. Or, with
//! `--churn-all-ms MS`, every worker is signalled every MS ms (a `memhog storm` process) instead;
//! with `--forks-per-s N`, a `memhog forker` process forks and reaps N short-lived children per
//! second meanwhile (both modes alike). After a short pause the bench runs one agent tick with
//! the library as `runtime.rs` does, the whole of it in `changes` mode: drain the tracker, publish
//! the marks, the `statm` pass, then every collector of the default config that is due (the
//! ladder's two tiers, meminfo, sysv, cgroup, tmpfs every 6th tick) with `unbounded: false`, the
//! store's emission and the heap trim, each step measured in CPU ([`PHASES`]) and set against the
//! `statm` pass (issue 14 item 4: the whole tick at most 2x the statm pass). Here the collectors
//! run one after the other on this thread; the runtime runs them side by side, which changes wall
//! time, not CPU.
//!
//! Modes, on the same workload in the same run:
//! - `baseline`: fresh collectors, one tick where every process is `new` (every `smaps_rollup` and
//!   `smaps` read): the cost of a full pass. Three times; the median is shown.
//! - `polling`: fresh collectors, no tracker; tick 0 (a full pass) and a warm-up are discarded, then
//!   T ticks are measured.
//! - `ebpf`: the same with the tracker attached (fails if it falls back to polling). `--ebpf 0`
//!   leaves it out (e.g. inside a PID namespace of its own, where the tracker's pids would not be
//!   the namespace's), and the freshness phase's eBPF half with it.
//!
//! Per tick: the process's CPU (getrusage RUSAGE_SELF, user+sys, over the whole tick interval so the
//! tracker's event thread counts), the agent tick's wall time, bytes read per file class, re-reads
//! per tier and reason, the CPU of each step of the tick ([`PHASES`]), and the age of the oldest
//! number after the tick. The warm-up (default two `max_staleness`) skips the start; the first
//! staleness deadlines are spread evenly over `max_staleness`, so a few ticks (`--warmup 2`) are
//! already at the long-run rate of staleness re-reads, which is printed beside the measured rate.
//!
//! Then the freshness phase, per mode: a `memhog swapper` swaps one 4 MiB memfd mapping for another
//! of the same size, which leaves `statm` as it was, and then maps a 256 KiB window of an existing
//! memfd (another process maps it whole) over an anonymous reserve of that size, which moves
//! `statm` by less than the smaps tier's `min_change`; the bench counts the ticks until the smaps
//! tier's emitted objects show the new mapping (eBPF: the next tick; polling: `max_staleness`).
//!
//! Exits non-zero only on setup errors; the PASS/FAIL lines are information.

use std::{
    any::Any,
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memscope_agent::{
    collectors::{
        BuildCtx, CollectCtx, Collector, build_collectors,
        smaps::{ObjectKind, ObjectsObservation},
    },
    config::{Config, Interval},
    ladder::{Reason, StatmPass, TierStats},
    proc_events::ProcEvents,
    procfs::{FileClass, OpenFiles, ProcFs},
    store::{ExitCause, SelfCost, Store, StoreConfig, TrackerInfo, keyframe_every},
    tracker::{self, DirtySource, TrackerState},
};
use memscope_common::LifecycleEvent;
use memscope_tests::bench::{
    Workers, args_unless_help, cpu_time, ensure_root, median, memhog_path, percentile,
};

struct Options {
    workers: usize,
    worker_bytes: usize,
    /// Size of the anonymous region a signalled worker maps (and of the one it unmaps).
    region_bytes: usize,
    ticks: usize,
    warmup: Option<usize>,
    tick: Duration,
    max_staleness: Duration,
    /// `max_staleness` of the rollup tier.
    rollup_max_staleness: Duration,
    /// Workers signalled per tick, in percent of W.
    change_percent: f64,
    /// Pause between signalling and the agent tick, for the workers to act.
    act: Duration,
    /// Every worker churns every this often (instead of `change_percent` per tick).
    churn_all: Option<Duration>,
    /// Short-lived processes forked (and reaped) per second during the steady phases.
    forks_per_s: u32,
    /// Skip the freshness phase.
    no_freshness: bool,
    /// Also measure eBPF mode (`--ebpf 0`: polling only, e.g. inside a PID namespace of its own,
    /// where the tracker's pids would not be the namespace's).
    ebpf: bool,
}

const USAGE: &str = "usage: ladder_bench [--workers N (300)] [--worker-bytes BYTES (4194304)] \
[--region-bytes BYTES (65536)] [--ticks T (30)] [--warmup TICKS (2 x max_staleness)] [--tick-ms MS (500)] \
[--max-staleness-s S (15)] [--rollup-max-staleness-s S (15)] [--change-percent P (1)] [--act-ms MS (20)] \
[--churn-all-ms MS] [--forks-per-s N] [--no-freshness 1] [--ebpf 0|1 (1)]";

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut o = Options {
            workers: 300,
            worker_bytes: 4 << 20,
            region_bytes: 64 << 10,
            ticks: 30,
            warmup: None,
            tick: Duration::from_millis(500),
            // The default config's ratio (max_staleness 5m at a 10 s interval: 30 ticks) scaled
            // to the bench's 500 ms tick.
            max_staleness: Duration::from_secs(15),
            rollup_max_staleness: Duration::from_secs(15),
            change_percent: 1.0,
            act: Duration::from_millis(20),
            churn_all: None,
            forks_per_s: 0,
            no_freshness: false,
            ebpf: true,
        };
        let mut args = args.iter().cloned();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let num = |v: &str| -> anyhow::Result<u64> {
                v.parse()
                    .with_context(|| format!("{flag} {v}: not a number\n{USAGE}"))
            };
            match flag.as_str() {
                "--workers" => o.workers = num(&value)? as usize,
                "--worker-bytes" => o.worker_bytes = num(&value)? as usize,
                "--region-bytes" => o.region_bytes = num(&value)? as usize,
                "--ticks" => o.ticks = num(&value)? as usize,
                "--warmup" => o.warmup = Some(num(&value)? as usize),
                "--tick-ms" => o.tick = Duration::from_millis(num(&value)?),
                "--max-staleness-s" => o.max_staleness = Duration::from_secs(num(&value)?),
                "--rollup-max-staleness-s" => {
                    o.rollup_max_staleness = Duration::from_secs(num(&value)?)
                }
                "--change-percent" => {
                    o.change_percent = value
                        .parse()
                        .with_context(|| format!("{flag} {value}: not a number\n{USAGE}"))?;
                }
                "--act-ms" => o.act = Duration::from_millis(num(&value)?),
                "--churn-all-ms" => o.churn_all = Some(Duration::from_millis(num(&value)?)),
                "--forks-per-s" => o.forks_per_s = u32::try_from(num(&value)?)?,
                "--no-freshness" => o.no_freshness = num(&value)? != 0,
                "--ebpf" => o.ebpf = num(&value)? != 0,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if o.workers == 0
            || o.ticks == 0
            || o.tick.is_zero()
            || o.max_staleness.is_zero()
            || o.rollup_max_staleness.is_zero()
        {
            bail!("--workers, --ticks, --tick-ms and --max-staleness-s must be positive\n{USAGE}");
        }
        if o.act >= o.tick {
            bail!("--act-ms must be shorter than --tick-ms");
        }
        Ok(o)
    }

    fn warmup(&self) -> usize {
        self.warmup.unwrap_or_else(|| {
            (2 * self.max_staleness.as_millis()).div_ceil(self.tick.as_millis().max(1)) as usize
        })
    }

    fn per_tick(&self) -> usize {
        ((self.workers as f64 * self.change_percent / 100.0).round() as usize).max(1)
    }
}

fn bytes_by_class(procfs: &ProcFs) -> BTreeMap<&'static str, u64> {
    procfs
        .counters()
        .by_class()
        .into_iter()
        .map(|(c, n)| (c, n.bytes))
        .collect()
}

/// Cumulative re-reads per (tier, reason).
fn rereads(
    tiers: &BTreeMap<&'static str, TierStats>,
) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut m = BTreeMap::new();
    for (tier, stats) in tiers {
        for (reason, n) in &stats.rereads {
            m.insert((*tier, *reason), *n);
        }
    }
    m
}

/// One measured tick.
#[derive(Default, Clone)]
struct Sample {
    cpu: Duration,
    wall: Duration,
    bytes: BTreeMap<&'static str, u64>,
    rereads: BTreeMap<(&'static str, &'static str), u64>,
    carried: u64,
    oldest_age: (Duration, Duration),
    /// CPU of each step of the agent's tick, in [`PHASES`] order.
    phases: [Duration; PHASES.len()],
    /// Tracker marks this tick: for workers signalled this tick, for other workers, for any other
    /// process.
    marks_signalled: u64,
    marks_workers: u64,
    marks_other: u64,
}

impl Sample {
    fn smaps_bytes(&self) -> u64 {
        [FileClass::SMAPS, FileClass::SMAPS_ROLLUP]
            .iter()
            .map(|c| self.bytes.get(c.name()).copied().unwrap_or(0))
            .sum()
    }

    fn proc_bytes(&self) -> u64 {
        self.bytes.values().sum()
    }
}

/// The steps of one agent tick, each measured in CPU (the process's user + system time, so the
/// `/proc` reads the guard runs on its companion threads count where they are asked for):
/// the tracker drain, the `statm` pass, the `smaps` run (it runs before `processes` here, so the
/// rollups it derives are handed over as the runtime's exchange hands them), the `processes` run,
/// the other collectors due (meminfo, sysv, cgroup, and tmpfs every 6th tick as at the defaults),
/// the store's emission in `changes` mode (records, change detection, lines), and handing the
/// freed heap back (`malloc_trim`, as the runtime does every tick).
const PHASES: [&str; 7] = [
    "drain",
    "statm_pass",
    "smaps",
    "processes",
    "other_collectors",
    "emit",
    "trim",
];

/// The agent's state, built fresh for each mode.
struct Agent {
    procfs: ProcFs,
    events: ProcEvents,
    statm_files: OpenFiles,
    /// Tier statistics from the latest observations.
    tiers: BTreeMap<&'static str, TierStats>,
    /// Every collector of the default config with its period in ticks, in emission order.
    collectors: Vec<(Box<dyn Collector>, u64)>,
    store: Store,
    source: Box<dyn DirtySource>,
    lifecycle: Option<tokio::sync::mpsc::Receiver<LifecycleEvent>>,
    tick: u64,
    /// The freshness phase's question to each smaps observation: does `pid` map the memfd named
    /// so? (None: not asked.)
    watch: Option<(u32, String)>,
    /// The answer of the latest smaps observation.
    shown: bool,
    /// Where the `exit` records at once go (the agent writes them to its sink).
    dev_null: std::fs::File,
}

/// Whether the smaps observation `obs` shows `pid` mapping the memfd `name`.
fn shows(obs: &ObjectsObservation, pid: u32, name: &str) -> bool {
    obs.of_kind(ObjectKind::Memfd)
        .any(|o| o.label.lossy().contains(name) && o.consumers.iter().any(|c| c.pid == pid))
}

impl Agent {
    fn new(opts: &Options, ebpf: bool) -> anyhow::Result<Agent> {
        // The default config, its interval the bench's tick (and tmpfs every 6th, as 1m is at 10s).
        let mut config = Config::default();
        config.agent.interval = Interval(opts.tick);
        config.collectors.processes.max_staleness = Interval(opts.rollup_max_staleness);
        config.collectors.smaps.max_staleness = Interval(opts.max_staleness);
        config.collectors.tmpfs.interval = Some(Interval(opts.tick * 6));
        let (source, lifecycle) = if ebpf {
            let t = tracker::start(&tracker::StartOptions {
                anon_min_change: config.collectors.processes.min_change.0,
                ..tracker::StartOptions::new(std::process::id())
            });
            if let TrackerState::Polling { reason } = t.source.state() {
                bail!("eBPF mode asked for, but the tracker fell back to polling: {reason}");
            }
            (t.source, t.events)
        } else {
            let s: Box<dyn DirtySource> = Box::new(tracker::PollingSource::new("bench: polling"));
            (s, None)
        };
        let events = ProcEvents::default();
        // As the runtime does: with eBPF, marks cover every layout change.
        events.set_layout_tracked(lifecycle.is_some());
        // Reads under the runtime's deadline, as the agent reads them.
        let procfs = ProcFs::new("/proc")
            .with_read_deadline(memscope_agent::runtime::read_deadline(opts.tick));
        let collectors = build_collectors(
            &config,
            &BuildCtx {
                procfs: &procfs,
                events: &events,
                mount_namespaces: memscope_agent::procfs::mountinfo::SharedNamespaces::new(
                    config.agent.max_mount_namespaces,
                ),
            },
        )
        .into_iter()
        .map(|r| {
            let every = r
                .interval
                .as_nanos()
                .div_ceil(opts.tick.as_nanos().max(1))
                .max(1);
            (r.collector, u64::try_from(every).unwrap_or(u64::MAX))
        })
        .collect::<Vec<_>>();
        let names: Vec<&'static str> = collectors.iter().map(|(c, _)| c.name()).collect();
        let store = Store::new(
            StoreConfig {
                host: "bench".to_string(),
                emit: config.output.emit,
                keyframe_every: keyframe_every(config.output.keyframe_interval.get(), opts.tick),
                min_change: config.output.min_change,
                interval: opts.tick,
                started: Instant::now(),
            },
            TrackerInfo {
                mode: if ebpf { "ebpf" } else { "polling" }.to_string(),
                reason: None,
                load_ms: None,
            },
            &names,
        );
        Ok(Agent {
            procfs,
            collectors,
            store,
            events,
            statm_files: StatmPass::files(4096),
            tiers: BTreeMap::new(),
            source,
            lifecycle,
            tick: 0,
            watch: None,
            shown: false,
            dev_null: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .context("opening /dev/null")?,
        })
    }

    /// One agent tick as `runtime.rs` runs it, one step after the other on this thread (the
    /// runtime runs the collectors side by side, which changes wall time, not CPU). Returns the
    /// tgids the tracker marked and the CPU of each step ([`PHASES`]).
    fn tick(&mut self) -> anyhow::Result<(Vec<u32>, [Duration; PHASES.len()])> {
        let mut phases = [Duration::ZERO; PHASES.len()];
        let mut clock = cpu_time();
        let mut lap = |i: usize| {
            let now = cpu_time();
            phases[i] += now.saturating_sub(clock);
            clock = now;
        };
        if let Some(rx) = &mut self.lifecycle {
            // As the agent's store does: an exit becomes an `exit` record at once, and the ones
            // waiting go out in one write.
            let mut exits = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                self.events.publish_lifecycle(&ev);
                if ev.kind == memscope_common::event_kind::EXIT {
                    exits.extend(self.store.exit_now(
                        ev.tgid,
                        ExitCause::Exit,
                        std::time::SystemTime::now(),
                    ));
                }
            }
            if !exits.is_empty() {
                self.dev_null
                    .write_all(&exits)
                    .context("writing exit records to /dev/null")?;
            }
        }
        let marks = self.source.drain();
        self.events.publish_marks(&marks);
        lap(0);
        let pass = StatmPass::read(&self.procfs, &mut self.statm_files, &mut Vec::new())
            .context("statm pass")?;
        lap(1);
        let ctx = CollectCtx {
            procfs: &self.procfs,
            tick: self.tick,
            statm: Some(std::sync::Arc::new(pass)),
            unbounded: false,
        };
        // smaps first (it hands its derived rollups to processes), then processes, then the rest.
        let order = ["smaps", "processes"];
        let mut due: Vec<usize> = (0..self.collectors.len())
            .filter(|&i| self.tick.is_multiple_of(self.collectors[i].1))
            .collect();
        due.sort_by_key(|&i| {
            let name = self.collectors[i].0.name();
            order.iter().position(|n| *n == name).unwrap_or(order.len())
        });
        for i in due {
            let (collector, _) = &mut self.collectors[i];
            let name = collector.name();
            let t0 = Instant::now();
            let obs = collector
                .collect(&ctx)
                .with_context(|| format!("{name} collector"))?;
            if let Some((tier, stats)) = obs.as_ref().and_then(|o| o.tier()) {
                self.tiers.insert(tier, stats.clone());
            }
            if name == "smaps"
                && let Some((pid, memfd)) = &self.watch
            {
                self.shown = obs
                    .as_deref()
                    .and_then(|o| (o as &dyn Any).downcast_ref::<ObjectsObservation>())
                    .is_some_and(|o| shows(o, *pid, memfd));
            }
            self.store.apply(name, t0.elapsed(), Ok(obs));
            lap(match name {
                "smaps" => 2,
                "processes" => 3,
                _ => 4,
            });
        }
        let out = self.store.emit(
            std::time::SystemTime::now(),
            &SelfCost::default(),
            self.procfs.counters(),
        );
        drop(out);
        lap(5);
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        lap(6);
        self.tick += 1;
        Ok((marks.iter().map(|m| m.tgid).collect(), phases))
    }

    /// From now on, each smaps observation answers whether `pid` maps the memfd `name`
    /// ([`Agent::shown`]).
    fn watch(&mut self, pid: u32, name: &str) {
        self.watch = Some((pid, name.to_owned()));
        self.shown = false;
    }

    /// Age of the oldest number of each tier: (rollup, smaps).
    fn oldest_age(&self) -> (Duration, Duration) {
        let stats = &self.tiers;
        let age =
            |tier: &str| Duration::from_millis(stats.get(tier).map_or(0, |s| s.oldest_read_age_ms));
        (age("rollup"), age("smaps"))
    }

    fn carried(&self) -> u64 {
        self.tiers.values().map(|s| s.carried_over).sum()
    }
}

fn delta_map(
    after: &BTreeMap<(&'static str, &'static str), u64>,
    before: &BTreeMap<(&'static str, &'static str), u64>,
) -> BTreeMap<(&'static str, &'static str), u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A full pass: fresh collectors, one tick, every process `new`.
fn full_pass(opts: &Options) -> anyhow::Result<Sample> {
    let mut agent = Agent::new(opts, false)?;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let (_, phases) = agent.tick()?;
    let wall = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    Ok(Sample {
        cpu,
        wall,
        bytes: bytes_by_class(&agent.procfs),
        rereads: rereads(&agent.tiers),
        carried: agent.carried(),
        oldest_age: agent.oldest_age(),
        phases,
        ..Sample::default()
    })
}

/// The ladder in steady state: tick 0 and the warm-up discarded, then `opts.ticks` measured.
fn steady(opts: &Options, workers: &mut Workers, ebpf: bool) -> anyhow::Result<Vec<Sample>> {
    let mut agent = Agent::new(opts, ebpf)?;
    let worker_pids: HashSet<u32> = workers.pids.iter().map(|p| p.unsigned_abs()).collect();
    let warmup = opts.warmup();
    let total = 1 + warmup + opts.ticks;
    let mut samples = Vec::with_capacity(opts.ticks);
    let mut deadline = Instant::now();
    for i in 0..total {
        let cpu0 = cpu_time();
        let bytes0 = bytes_by_class(&agent.procfs);
        let rereads0 = rereads(&agent.tiers);
        let signalled: HashSet<u32> = if opts.churn_all.is_some() {
            HashSet::new() // the storm process signals every worker
        } else {
            workers.signal(opts.per_tick())?.into_iter().collect()
        };
        std::thread::sleep(opts.act);
        let t0 = Instant::now();
        let (marks, phases) = agent.tick()?;
        let wall = t0.elapsed();
        let sample = Sample {
            cpu: Duration::ZERO,
            wall,
            bytes: {
                let b = bytes_by_class(&agent.procfs);
                b.iter()
                    .map(|(c, n)| (*c, n - bytes0.get(c).copied().unwrap_or(0)))
                    .collect()
            },
            rereads: delta_map(&rereads(&agent.tiers), &rereads0),
            carried: agent.carried(),
            oldest_age: agent.oldest_age(),
            phases,
            marks_signalled: marks.iter().filter(|m| signalled.contains(m)).count() as u64,
            marks_workers: marks
                .iter()
                .filter(|m| !signalled.contains(m) && worker_pids.contains(m))
                .count() as u64,
            marks_other: marks.iter().filter(|m| !worker_pids.contains(m)).count() as u64,
        };
        deadline += opts.tick;
        if let Some(left) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        } else {
            deadline = Instant::now();
        }
        let cpu = cpu_time().saturating_sub(cpu0);
        if i > warmup {
            samples.push(Sample { cpu, ..sample });
        }
    }
    if ebpf {
        let st = agent.source.stats();
        if st.marks_dropped > 0 || st.events_lost > 0 {
            eprintln!(
                "ladder_bench: tracker dropped {} marks, lost {} events",
                st.marks_dropped, st.events_lost
            );
        }
    }
    Ok(samples)
}

/// Swaps in the freshness phase, per mode.
const SWAPS: usize = 3;
/// Size of each of the swapper's memfds (above the default `min_object_pss`, 1 MiB).
const SWAP_BYTES: usize = 4 << 20;

/// Ticks until the emitted objects were right, per change of the freshness phase.
struct Freshness {
    /// Per swap of one shared mapping for another of the same size.
    swaps: Vec<Option<usize>>,
    /// Mapping a window of an existing memfd.
    attach: Option<usize>,
}

/// The freshness phase: a `memhog swapper` process swaps one 4 MiB memfd mapping for another of
/// the same size ([`SWAPS`] times), which `statm` does not see, then maps a window of an existing
/// memfd, which moves `statm` less than `min_change`. Returns, per change, the ticks until the
/// smaps tier's emitted objects show the new mapping (None: not within `max_staleness` plus two
/// ticks).
fn freshness(opts: &Options, memhog: &PathBuf, ebpf: bool) -> anyhow::Result<Freshness> {
    let mut agent = Agent::new(opts, ebpf)?;
    let mut child = Command::new(memhog)
        .args(["swapper", &SWAP_BYTES.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {} swapper", memhog.display()))?;
    let pid = child.id();
    let result = (|| {
        let mut stdin = child.stdin.take().context("swapper stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("swapper stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).context("swapper ready line")?;
        if line.trim() != "ready" {
            bail!("swapper {pid} did not start (said {line:?})");
        }
        agent.tick()?; // everything new, the swapper included
        let limit = opts
            .max_staleness
            .as_millis()
            .div_ceil(opts.tick.as_millis().max(1)) as usize
            + 2;
        let mut change = |command: &str, answer: &str| -> anyhow::Result<Option<usize>> {
            writeln!(stdin, "{command}").context("writing to the swapper")?;
            line.clear();
            stdout.read_line(&mut line).context("swapper answer")?;
            let name = line
                .trim()
                .strip_prefix(answer)
                .with_context(|| format!("swapper said {line:?}"))?
                .to_owned();
            agent.watch(pid, &name);
            for t in 1..=limit {
                std::thread::sleep(opts.tick);
                agent.tick()?;
                if agent.shown {
                    return Ok(Some(t));
                }
            }
            Ok(None)
        };
        let mut swaps = Vec::with_capacity(SWAPS);
        for _ in 0..SWAPS {
            swaps.push(change("swap", "swapped ")?);
        }
        let attach = change("attach", "attached ")?;
        Ok(Freshness { swaps, attach })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A `memhog` helper process of the workload (`storm`, `forker`), killed and reaped on drop.
struct Helper(std::process::Child);

impl Helper {
    fn spawn(memhog: &PathBuf, args: &[String]) -> anyhow::Result<Helper> {
        let mut child = Command::new(memhog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {} {}", memhog.display(), args.join(" ")))?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let helper = Helper(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("helper ready line")?;
        if line.trim() != "ready" {
            bail!("memhog {} did not start (said {line:?})", args.join(" "));
        }
        Ok(helper)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workload's helper processes for the steady phases.
fn helpers(opts: &Options, memhog: &PathBuf, workers: &Workers) -> anyhow::Result<Vec<Helper>> {
    let mut out = Vec::new();
    if let Some(period) = opts.churn_all {
        let mut args = vec!["storm".to_owned(), period.as_millis().to_string()];
        args.extend(workers.pids.iter().map(i32::to_string));
        out.push(Helper::spawn(memhog, &args)?);
    }
    if opts.forks_per_s > 0 {
        out.push(Helper::spawn(
            memhog,
            &["forker".to_owned(), opts.forks_per_s.to_string()],
        )?);
    }
    Ok(out)
}

fn show_ticks(v: &[Option<usize>]) -> String {
    v.iter()
        .map(|t| t.map_or_else(|| "never".to_owned(), |t| t.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median_sample(mut runs: Vec<Sample>) -> Sample {
    runs.sort_by_key(|s| s.cpu);
    runs.swap_remove(runs.len() / 2)
}

/// Mean per tick of a set of samples.
struct Row {
    cpu_ms: f64,
    cpu_p95_ms: f64,
    wall_ms: f64,
    smaps_kib: f64,
    proc_kib: f64,
    rereads: BTreeMap<(&'static str, &'static str), f64>,
    carried: f64,
    /// Oldest number seen after any tick: (rollup, smaps).
    max_age: (Duration, Duration),
    marks_signalled: f64,
    marks_workers: f64,
    marks_other: f64,
    /// Per phase ([`PHASES`]): the median CPU ms of a tick.
    phase_ms: [f64; PHASES.len()],
    /// The whole tick (the phases' sum): median and mean CPU ms.
    tick_ms: (f64, f64),
    /// The median of the ticks' whole / statm pass ratios.
    tick_ratio: f64,
}

fn row(samples: &[Sample]) -> Row {
    let f = |g: &dyn Fn(&Sample) -> f64| samples.iter().map(g).collect::<Vec<f64>>();
    let cpu = f(&|s| s.cpu.as_secs_f64() * 1e3);
    let whole = f(&whole_ms);
    let mut rereads: BTreeMap<(&'static str, &'static str), f64> = BTreeMap::new();
    for s in samples {
        for (k, v) in &s.rereads {
            *rereads.entry(*k).or_default() += *v as f64 / samples.len() as f64;
        }
    }
    Row {
        cpu_ms: mean(&cpu),
        cpu_p95_ms: percentile(&cpu, 0.95),
        wall_ms: mean(&f(&|s| s.wall.as_secs_f64() * 1e3)),
        smaps_kib: mean(&f(&|s| s.smaps_bytes() as f64 / 1024.0)),
        proc_kib: mean(&f(&|s| s.proc_bytes() as f64 / 1024.0)),
        rereads,
        carried: mean(&f(&|s| s.carried as f64)),
        max_age: (
            samples
                .iter()
                .map(|s| s.oldest_age.0)
                .max()
                .unwrap_or_default(),
            samples
                .iter()
                .map(|s| s.oldest_age.1)
                .max()
                .unwrap_or_default(),
        ),
        marks_signalled: mean(&f(&|s| s.marks_signalled as f64)),
        marks_workers: mean(&f(&|s| s.marks_workers as f64)),
        marks_other: mean(&f(&|s| s.marks_other as f64)),
        phase_ms: std::array::from_fn(|i| median(&f(&|s| s.phases[i].as_secs_f64() * 1e3))),
        tick_ms: (median(&whole), mean(&whole)),
        tick_ratio: median(
            &samples
                .iter()
                .map(|s| whole_ms(s) / (s.phases[1].as_secs_f64() * 1e3).max(1e-3))
                .collect::<Vec<f64>>(),
        ),
    }
}

/// A tick's CPU in ms: the sum of its phases.
fn whole_ms(s: &Sample) -> f64 {
    s.phases.iter().sum::<Duration>().as_secs_f64() * 1e3
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn main() -> anyhow::Result<()> {
    let Some(args) = args_unless_help(USAGE) else {
        return Ok(());
    };
    let opts = Options::parse(&args)?;
    ensure_root(
        "ladder_bench needs root (eBPF tracepoints, every process's smaps): run `sudo cargo xtask bench`",
    )?;
    let memhog = memhog_path()?;
    eprintln!(
        "ladder_bench: starting {} workers of {} KiB",
        opts.workers,
        opts.worker_bytes >> 10
    );
    let mut workers = Workers::spawn(
        &memhog,
        opts.workers,
        opts.worker_bytes,
        opts.region_bytes,
        None,
    )?;
    let processes = ProcFs::new("/proc").pids().context("listing /proc")?;

    eprintln!("ladder_bench: baseline (3 full passes)");
    let mut full = Vec::new();
    for _ in 0..3 {
        full.push(full_pass(&opts)?);
    }
    let base_sample = median_sample(full);
    let base = row(std::slice::from_ref(&base_sample));
    let warmup = opts.warmup();
    let secs = |ticks: usize| ticks as f64 * opts.tick.as_secs_f64();
    eprintln!(
        "ladder_bench: polling ({} + {warmup} warm-up + {} measured ticks, {:.0} s)",
        1,
        opts.ticks,
        secs(1 + warmup + opts.ticks)
    );
    let background = helpers(&opts, &memhog, &workers)?;
    let polling = row(&steady(&opts, &mut workers, false)?);
    let ebpf = if opts.ebpf {
        eprintln!("ladder_bench: ebpf (same)");
        Some(row(&steady(&opts, &mut workers, true)?))
    } else {
        eprintln!("ladder_bench: ebpf left out (--ebpf 0)");
        None
    };
    drop(background);
    let fresh = if opts.no_freshness {
        None
    } else {
        eprintln!(
            "ladder_bench: freshness ({SWAPS} swaps of a shared mapping and one attach, each mode)"
        );
        let polling = freshness(&opts, &memhog, false)?;
        let ebpf = if opts.ebpf {
            Some(freshness(&opts, &memhog, true)?)
        } else {
            None
        };
        Some((polling, ebpf))
    };
    // The steady-state modes measured: polling, and ebpf unless `--ebpf 0`.
    let modes: Vec<(&str, &Row)> = std::iter::once(("polling", &polling))
        .chain(ebpf.as_ref().map(|r| ("ebpf", r)))
        .collect();
    let with_base: Vec<(&str, &Row)> = std::iter::once(("baseline", &base))
        .chain(modes.iter().copied())
        .collect();

    // The long-run rate of smaps staleness re-reads: after the first (spread) deadline, each
    // process once per max_staleness, rounded up to whole ticks (a tier re-reads at the first tick
    // past the deadline).
    let tick_ms = opts.tick.as_millis().max(1);
    let expected_stale: f64 =
        processes.len() as f64 / opts.max_staleness.as_millis().div_ceil(tick_ms).max(1) as f64;

    let churn = match opts.churn_all {
        Some(period) => format!("every worker churning every {} ms", period.as_millis()),
        None => format!(
            "{} changed per tick ({} %)",
            opts.per_tick(),
            opts.change_percent
        ),
    };
    println!(
        "ladder bench: {} processes on the host ({} workers of {} KiB, anonymous regions of {} KiB), {churn}, {} fork+exit/s, tick {} ms, max_staleness rollup {} s / smaps {} s, {} measured ticks after tick 0 + {} warm-up",
        processes.len(),
        opts.workers,
        opts.worker_bytes >> 10,
        opts.region_bytes >> 10,
        opts.forks_per_s,
        opts.tick.as_millis(),
        opts.rollup_max_staleness.as_secs(),
        opts.max_staleness.as_secs(),
        opts.ticks,
        warmup
    );
    println!(
        "baseline = one full pass (every process new), median of 3; polling/ebpf = mean per steady-state tick"
    );
    println!();
    println!(
        "| mode     | CPU ms/tick | CPU p95 ms | wall ms | smaps+rollup KiB | all /proc KiB | CPU ratio | smaps ratio |"
    );
    println!(
        "|----------|-------------|------------|---------|------------------|---------------|-----------|-------------|"
    );
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for &(name, r) in &with_base {
        println!(
            "| {name:<8} | {:>11.2} | {:>10.2} | {:>7.2} | {:>16.1} | {:>13.1} | {:>9.3} | {:>11.3} |",
            r.cpu_ms,
            r.cpu_p95_ms,
            r.wall_ms,
            r.smaps_kib,
            r.proc_kib,
            ratio(r.cpu_ms, base.cpu_ms),
            ratio(r.smaps_kib, base.smaps_kib),
        );
    }
    println!();
    println!(
        "the agent's whole tick in `changes` mode (default config, every collector, the store's emission), CPU ms per phase, median over the ticks:"
    );
    let mut header = String::from("| mode     |");
    let mut rule = String::from("|----------|");
    for p in PHASES {
        header.push_str(&format!(" {p:>10} |"));
        rule.push_str(&format!("{}|", "-".repeat(p.len().max(10) + 2)));
    }
    println!("{header} tick median | tick mean | tick / statm_pass |");
    println!("{rule}-------------|-----------|-------------------|");
    for &(name, r) in &modes {
        let mut line = format!("| {name:<8} |");
        for (p, v) in PHASES.iter().zip(r.phase_ms) {
            line.push_str(&format!(" {v:>w$.2} |", w = p.len().max(10)));
        }
        println!(
            "{line} {:>11.2} | {:>9.2} | {:>17.2} |",
            r.tick_ms.0, r.tick_ms.1, r.tick_ratio
        );
    }
    for &(name, r) in &modes {
        println!(
            "{}: {name} whole tick / statm pass = {:.2} (median of the ticks' ratios; target <= 2.00)",
            verdict(r.tick_ratio <= 2.0),
            r.tick_ratio
        );
    }
    println!();
    println!("re-reads per tick by tier and reason (rollup = smaps_rollup, smaps = smaps):");
    let tiers = ["rollup", "smaps"];
    let mut header = String::from("| mode     | tier   |");
    let mut rule = String::from("|----------|--------|");
    for r in Reason::ALL {
        header.push_str(&format!(" {:>13} |", r.name()));
        rule.push_str("---------------|");
    }
    header.push_str(" carried |");
    rule.push_str("---------|");
    println!("{header}");
    println!("{rule}");
    for &(name, r) in &with_base {
        for tier in tiers {
            let mut line = format!("| {name:<8} | {tier:<6} |");
            for reason in Reason::ALL {
                let v = r
                    .rereads
                    .get(&(tier, reason.name()))
                    .copied()
                    .unwrap_or(0.0);
                line.push_str(&format!(" {v:>13.2} |"));
            }
            line.push_str(&format!(" {:>7.2} |", r.carried));
            println!("{line}");
        }
    }
    println!();
    println!(
        "smaps staleness re-reads per tick, long-run expectation: {expected_stale:.2} (processes / ceil(max_staleness / tick))"
    );
    if let Some(ebpf) = &ebpf {
        println!(
            "tracker marks per tick (ebpf): {:.2} for the workers signalled that tick, {:.2} for other workers, {:.2} for other processes",
            ebpf.marks_signalled, ebpf.marks_workers, ebpf.marks_other
        );
        // The window may see fewer staleness re-reads than the long run: add the missing ones at
        // the full pass's cost per process.
        let per_process_ms =
            base.cpu_ms / base_sample.rereads.values().max().copied().unwrap_or(1) as f64;
        let measured_stale = ebpf
            .rereads
            .get(&("smaps", Reason::Stale.name()))
            .copied()
            .unwrap_or(0.0);
        let projected = ebpf.cpu_ms + (expected_stale - measured_stale).max(0.0) * per_process_ms;
        println!(
            "ebpf CPU/tick projected to the long-run staleness rate: {projected:.2} ms (ratio {:.3}; {:.3} ms per process read in the full pass)",
            ratio(projected, base.cpu_ms),
            per_process_ms
        );
    }
    let (rollup_max, smaps_max) = (opts.rollup_max_staleness, opts.max_staleness);
    for &(name, r) in &modes {
        println!(
            "max age of a number after a tick, {name}: rollup {:.2} s (max_staleness {:.0} s), smaps {:.2} s (max_staleness {:.0} s)",
            r.max_age.0.as_secs_f64(),
            rollup_max.as_secs_f64(),
            r.max_age.1.as_secs_f64(),
            smaps_max.as_secs_f64()
        );
    }
    if let Some(ebpf) = &ebpf {
        let cpu_ratio = ratio(ebpf.cpu_ms, base.cpu_ms);
        let bytes_ratio = ratio(ebpf.smaps_kib, base.smaps_kib);
        println!(
            "{}: ebpf steady-state tick CPU / full pass CPU = {cpu_ratio:.3} (target <= 0.100)",
            verdict(cpu_ratio <= 0.1)
        );
        println!(
            "{}: ebpf steady-state smaps+rollup bytes / full pass = {bytes_ratio:.3} (target <= 0.100)",
            verdict(bytes_ratio <= 0.1)
        );
        println!(
            "{}: oldest numbers in ebpf mode within max_staleness (rollup {:.2} s <= {:.0} s, smaps {:.2} s <= {:.0} s)",
            verdict(ebpf.max_age.0 <= rollup_max && ebpf.max_age.1 <= smaps_max),
            ebpf.max_age.0.as_secs_f64(),
            rollup_max.as_secs_f64(),
            ebpf.max_age.1.as_secs_f64(),
            smaps_max.as_secs_f64()
        );
    }
    if let Some((fresh_polling, fresh_ebpf)) = &fresh {
        println!();
        println!(
            "freshness: a process swaps one {} MiB memfd mapping for another of the same size (statm unchanged), then maps a {} KiB window of an existing memfd over an anonymous reserve (statm moves less than min_change); ticks until the emitted objects show it",
            SWAP_BYTES >> 20,
            (SWAP_BYTES / 16) >> 10
        );
        println!("| mode     | ticks per swap | ticks to attach |");
        println!("|----------|----------------|-----------------|");
        for (name, f) in std::iter::once(("polling", fresh_polling))
            .chain(fresh_ebpf.as_ref().map(|f| ("ebpf", f)))
        {
            println!(
                "| {name:<8} | {:<14} | {:<15} |",
                show_ticks(&f.swaps),
                show_ticks(&[f.attach])
            );
        }
        if let Some(fresh_ebpf) = fresh_ebpf {
            println!(
                "{}: ebpf shows every change within one tick (polling waits for max_staleness)",
                verdict(
                    fresh_ebpf.swaps.iter().all(|t| *t == Some(1)) && fresh_ebpf.attach == Some(1)
                )
            );
        }
    }
    if let Some(ebpf) = &ebpf {
        println!(
            "{}: ebpf CPU/tick <= polling CPU/tick ({:.2} <= {:.2} ms)",
            verdict(ebpf.cpu_ms <= polling.cpu_ms),
            ebpf.cpu_ms,
            polling.cpu_ms,
        );
        println!(
            "{}: ebpf /proc bytes/tick <= 2x polling ({:.1} <= 2 x {:.1} KiB)",
            verdict(ebpf.proc_kib <= 2.0 * polling.proc_kib),
            ebpf.proc_kib,
            polling.proc_kib
        );
    }
    drop(workers);
    Ok(())
}
