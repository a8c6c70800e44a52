//! The agent's main loop: a scheduler that, each tick, drains the tracker into the event stream,
//! reads the `statm` pass once (when a ladder collector is due), runs the due collectors on
//! blocking threads under a deadline, and feeds the store task, which owns the snapshot and writes
//! emissions to the sink. The store learns everything through one channel ([`StoreMsg`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use memscope_common::event_kind;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::{
    collectors::{BuildCtx, CollectCtx, CollectError, Collector, build_collectors},
    config::Config,
    config::{AgentConfig, TrackerMode},
    ladder::{StatmPass, statm_fd_cap},
    proc_events::{ProcEvent, ProcEvents},
    procfs::{OpenFiles, ProcFs},
    sinks::Sink,
    store::{self, ExitCause, Store, StoreConfig, StoreMsg, TrackerInfo},
    tracker::{self, DirtySource, PollingSource, Tracker, TrackerState, TrackerStats},
};

/// Resolves the host name: the configured one, else the kernel's.
pub fn host_name(config: &Config) -> String {
    if !config.agent.host.is_empty() {
        return config.agent.host.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// When the agent process started: the clock of the `agent` record's `uptime_ms`. `main` calls
/// this first thing, so uptime counts from process start and includes loading the eBPF programs
/// (`tracker.load_ms`); a library caller's clock starts at its first call, which [`run`] makes
/// before it starts the tracker. A second [`run`] in the same process keeps the first clock.
pub fn process_started() -> Instant {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// Opens the configured sink; a bad output path fails here, before anything is collected.
pub fn open_sink(config: &Config) -> anyhow::Result<Sink> {
    Sink::open(&config.output).with_context(|| match &config.output.path {
        Some(p) => format!("output.path: cannot open {}", p.display()),
        None => "cannot open the output".to_string(),
    })
}

/// The part of the tick a collector run may take before the emission goes out without it: half
/// the agent interval. A run past it is reported `late`, its last observation stands, and it
/// finishes in the background. A collector's first run has no deadline (nothing could stand in
/// for it), so the first snapshot is complete.
pub fn collector_deadline(interval: Duration) -> Duration {
    interval / 2
}

/// How long one `/proc` read may block before it is abandoned and its process put in the penalty
/// box ([`crate::procfs::guard`]): the collector deadline, but at least 1 s (a `smaps` of a process
/// with many mappings legitimately takes a while).
pub fn read_deadline(interval: Duration) -> Duration {
    collector_deadline(interval).max(Duration::from_secs(1))
}

/// Runs the agent until `shutdown` resolves (or after one emission with `once`), writing to `sink`.
pub async fn run(
    config: Config,
    sink: Sink,
    once: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = process_started();
    let interval = config.agent.interval.get();
    let procfs = ProcFs::new(&config.agent.proc_root).with_read_deadline(read_deadline(interval));
    let anon_min_change = config.collectors.processes.min_change.0;
    let (mut tracker, load) = start_tracker(&config.agent, anon_min_change, once).await?;
    let load_ms = load.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let tracker_info = match tracker.source.state() {
        TrackerState::Ebpf => TrackerInfo {
            mode: "ebpf".to_string(),
            reason: None,
            load_ms,
        },
        TrackerState::Polling { reason } => TrackerInfo {
            mode: "polling".to_string(),
            reason: Some(reason.clone()),
            load_ms,
        },
    };
    let lifecycle = tracker.events.take();
    let source = Arc::new(Mutex::new(tracker.source));

    let events = ProcEvents::default();
    // Only the eBPF tracker has a lifecycle stream, and only it marks layout changes.
    events.set_layout_tracked(lifecycle.is_some());
    let (tx, rx) = mpsc::channel::<StoreMsg>(64);
    let scheduler = Scheduler::of_config(
        &config,
        &procfs,
        &events,
        |every| ticks_for(every, interval),
        (!once).then(|| collector_deadline(interval)),
        tx.clone(),
    );
    let names = scheduler.names();
    info!(
        collectors = ?names,
        interval = %humantime::format_duration(interval),
        proc_root = %procfs.root().display(),
        once,
        "memscope starting"
    );
    let store = Store::new(
        StoreConfig {
            host: host_name(&config),
            emit: config.output.emit,
            keyframe_every: store::keyframe_every(config.output.keyframe_interval.get(), interval),
            min_change: config.output.min_change,
            interval,
            started,
        },
        tracker_info,
        &names,
    );
    let mut store_task = tokio::spawn(store::run(store, sink, rx, procfs.clone()));

    // Lifecycle events: into the ladders' stream; an exit also becomes an `exit` record at once.
    let events_task = lifecycle.map(|mut rx| {
        let tx = tx.clone();
        let events = events.clone();
        let procfs = procfs.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                events.publish_lifecycle(&ev);
                let (pid, cause) = match ev.kind {
                    event_kind::EXIT => (ev.tgid, ExitCause::Exit),
                    // The tracepoint names the victim task: map a thread to its process.
                    event_kind::OOM_KILL => {
                        let procfs = procfs.clone();
                        let tid = ev.tgid;
                        let pid = tokio::task::spawn_blocking(move || {
                            crate::collectors::cgroup::oom::victim_process(&procfs, tid)
                        })
                        .await
                        .unwrap_or(tid);
                        (pid, ExitCause::OomKill)
                    }
                    _ => continue,
                };
                if tx.send(StoreMsg::Exit { pid, cause }).await.is_err() {
                    break;
                }
            }
        })
    });

    let ticks = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick: u64 = 0;
        let mut last = TrackerStats::default();
        loop {
            ticker.tick().await;
            let stats = drain_tracker(&source, &events, last).await;
            if tx.send(StoreMsg::Tracker(stats)).await.is_err() {
                break;
            }
            last = stats;
            scheduler.run_tick(tick, once).await;
            if tx.send(StoreMsg::Emit).await.is_err() {
                break;
            }
            tick += 1;
            if once {
                break;
            }
        }
    };
    // The store task ends early only when the output is gone (a broken pipe): stop at once rather
    // than at the next tick's send.
    let store_ended = tokio::select! {
        () = ticks => None,
        () = shutdown => {
            info!("stop requested (shutdown or reload): flushing");
            None
        }
        ended = &mut store_task => Some(ended),
    };
    if let Some(t) = events_task {
        t.abort();
        let _ = t.await;
    }
    // A late run still going holds a sender: the store stops on this message, not on the channel
    // closing.
    let _ = tx.send(StoreMsg::Stop).await;
    drop(scheduler);
    drop(tx);
    let ended = match store_ended {
        Some(ended) => ended,
        None => store_task.await,
    };
    match ended {
        Ok(result) => result,
        Err(e) => Err(anyhow::anyhow!("store task failed: {e}")),
    }
}

/// Starts the tracker the config asks for, with the time spent loading and attaching the eBPF
/// programs (`None` when it was not tried). `--once` never loads eBPF: one pass reads everything.
/// Nor does a `proc_root` whose pids are not the kernel's ([`crate::procfs::pidns`]).
/// `anon_min_change`: the rollup tier's `min_change`, which the kernel side applies to anonymous
/// mapping changes.
async fn start_tracker(
    agent: &AgentConfig,
    anon_min_change: u64,
    once: bool,
) -> anyhow::Result<(Tracker, Option<Duration>)> {
    let mode = agent.tracker;
    let polling = |reason: &str| Tracker {
        source: Box::new(PollingSource::new(reason)),
        events: None,
    };
    if mode == TrackerMode::Polling {
        return Ok((polling("tracker = \"polling\" in the config"), None));
    }
    if once {
        return Ok((
            polling("one-shot run (--once): every process is read"),
            None,
        ));
    }
    // The kernel side names processes by their pids in the initial pid namespace: over any other
    // tree (a fixture, a container's own /proc) its marks and exits would be other processes'.
    let agent_tgid = match crate::procfs::pidns::ebpf_pids(&agent.proc_root) {
        Ok(tgid) => tgid,
        Err(reason) if mode == TrackerMode::Ebpf => {
            anyhow::bail!("agent.tracker = \"ebpf\" but eBPF cannot be used: {reason}");
        }
        Err(reason) => {
            warn!("eBPF tracker not used, running in polling mode: {reason}");
            return Ok((polling(&reason), None));
        }
    };
    let opts = tracker::StartOptions {
        mount_tracefs: agent.mount_tracefs,
        anon_min_change,
        ..tracker::StartOptions::new(agent_tgid)
    };
    let (tracker, load) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let t = tracker::start(&opts);
        let load = started.elapsed();
        release_freed_heap();
        (t, load)
    })
    .await
    .context("starting the tracker")?;
    if let (TrackerMode::Ebpf, TrackerState::Polling { reason }) = (mode, tracker.source.state()) {
        anyhow::bail!("agent.tracker = \"ebpf\" but eBPF cannot attach: {reason}");
    }
    Ok((tracker, Some(load)))
}

/// Hands freed heap back to the kernel: after loading the programs, which parses the kernel's BTF
/// (about 5 MB here) and leaves ~16 MB of freed heap that glibc keeps (measured on this VM, release
/// build, eBPF attached: 23 MB → 13 MB RSS; polling mode is 6 MB), and after every emission (the
/// store task), so what a tick freed is not resident until the next one.
pub(crate) fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drains the tracker off the async workers (see [`drain_into`]).
async fn drain_tracker(
    source: &Arc<Mutex<Box<dyn DirtySource>>>,
    events: &ProcEvents,
    last: TrackerStats,
) -> TrackerStats {
    let source = Arc::clone(source);
    let events = events.clone();
    let drained = tokio::task::spawn_blocking(move || {
        let mut s = source.lock().unwrap_or_else(|p| p.into_inner());
        drain_into(s.as_mut(), &events, last)
    })
    .await;
    drained.unwrap_or_else(|e| {
        error!(error = %e, "draining the tracker failed");
        last
    })
}

/// One drain of the tracker: its marks go into the event stream, and when the kernel side dropped
/// marks or lost events since the last drain (`last`), an [`ProcEvent::Overflow`] follows (every
/// process is suspect). Returns the tracker's counters. Blocking.
pub fn drain_into(
    source: &mut dyn DirtySource,
    events: &ProcEvents,
    last: TrackerStats,
) -> TrackerStats {
    let marks = source.drain();
    let stats = source.stats();
    events.publish_marks(&marks);
    if overflowed(&last, &stats) {
        warn!(
            marks_dropped = stats.marks_dropped,
            events_lost = stats.events_lost,
            "the tracker lost marks or events: every process is re-read (reason overflow)"
        );
        events.publish([ProcEvent::Overflow]);
    }
    stats
}

/// Whether the tracker lost anything between two readings of its counters.
fn overflowed(last: &TrackerStats, now: &TrackerStats) -> bool {
    now.marks_dropped > last.marks_dropped || now.events_lost > last.events_lost
}

/// Number of agent ticks between runs of a collector with `interval` (rounded up, at least 1).
fn ticks_for(interval: Duration, tick: Duration) -> u64 {
    let t = tick.as_nanos().max(1);
    interval.as_nanos().div_ceil(t).max(1) as u64
}

struct Slot {
    name: &'static str,
    collector: Arc<Mutex<Box<dyn Collector>>>,
    /// Runs every `every` ticks.
    every: u64,
    statm: bool,
    /// It hands rollups derived from its smaps reads over ([`Collector::gives_rollups`]).
    smaps_giver: bool,
    /// A run is going (perhaps in the background, past its deadline).
    busy: Arc<AtomicBool>,
    /// A run has ended: from then on its runs have a deadline (its last observation can stand in).
    delivered: Arc<AtomicBool>,
}

/// Runs the due collectors of a tick.
pub struct Scheduler {
    slots: Vec<Slot>,
    procfs: ProcFs,
    /// `statm` descriptors kept open between passes.
    statm_files: Arc<Mutex<OpenFiles>>,
    /// `None`: wait for every run (`--once`).
    deadline: Option<Duration>,
    tx: mpsc::Sender<StoreMsg>,
}

impl Scheduler {
    /// `collectors` with their period in ticks.
    pub fn new(
        collectors: Vec<(Box<dyn Collector>, u64)>,
        procfs: ProcFs,
        deadline: Option<Duration>,
        tx: mpsc::Sender<StoreMsg>,
    ) -> Scheduler {
        Scheduler {
            slots: collectors
                .into_iter()
                .map(|(c, every)| Slot {
                    name: c.name(),
                    statm: c.uses_statm_pass(),
                    smaps_giver: c.gives_rollups(),
                    collector: Arc::new(Mutex::new(c)),
                    every,
                    busy: Arc::default(),
                    delivered: Arc::default(),
                })
                .collect(),
            procfs,
            statm_files: Arc::new(Mutex::new(StatmPass::files(statm_fd_cap()))),
            deadline,
            tx,
        }
    }

    /// The collectors `config` enables, over `procfs`, each run every `ticks(its interval)` ticks.
    pub fn of_config(
        config: &Config,
        procfs: &ProcFs,
        events: &ProcEvents,
        ticks: impl Fn(Duration) -> u64,
        deadline: Option<Duration>,
        tx: mpsc::Sender<StoreMsg>,
    ) -> Scheduler {
        let registered = build_collectors(
            config,
            &BuildCtx {
                procfs,
                events,
                mount_namespaces: crate::procfs::mountinfo::SharedNamespaces::new(
                    config.agent.max_mount_namespaces,
                ),
            },
        );
        Scheduler::new(
            registered
                .into_iter()
                .map(|r| (r.collector, ticks(r.interval)))
                .collect(),
            procfs.clone(),
            deadline,
            tx,
        )
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.name).collect()
    }

    /// Waits until no run is going (tests).
    #[cfg(test)]
    async fn wait_idle(&self) {
        while self.slots.iter().any(|s| s.busy.load(Ordering::Acquire)) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs the collectors due at `tick` concurrently on blocking threads. Each run's result goes
    /// to the store as soon as it ends; this returns when all have ended or the deadline passed
    /// (then the store hears `Late` for each still running). A collector still running from an
    /// earlier tick is not started twice (`Skipped`).
    pub async fn run_tick(&self, tick: u64, unbounded: bool) {
        let started = tokio::time::Instant::now();
        let mut due = Vec::new();
        for slot in self.slots.iter().filter(|s| tick.is_multiple_of(s.every)) {
            if slot.busy.swap(true, Ordering::AcqRel) {
                debug!(collector = slot.name, "still running: this run is skipped");
                if self
                    .tx
                    .send(StoreMsg::Skipped {
                        collector: slot.name,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                due.push(slot);
            }
        }
        let statm = if due.iter().any(|s| s.statm) {
            self.statm_pass().await
        } else {
            None
        };
        // A due collector that hands smaps-derived rollups over: the others wait for its plan.
        if let Some(pass) = &statm
            && due.iter().any(|s| s.smaps_giver)
        {
            pass.exchange.expect_plan();
        }
        let mut running = Vec::new();
        for slot in due {
            // A first run has no earlier observation to stand in for it: it is waited for, so the
            // first snapshot is complete.
            let deadline = self
                .deadline
                .filter(|_| slot.delivered.load(Ordering::Acquire));
            let done = self.start(slot, tick, statm.clone(), unbounded);
            running.push((slot.name, deadline, done));
        }
        for (name, deadline, done) in running {
            let ended = match deadline {
                None => done.await.is_ok(),
                Some(d) => tokio::time::timeout_at(started + d, done).await.is_ok(),
            };
            if !ended {
                warn!(
                    collector = name,
                    "missed its deadline; the emission goes without it"
                );
                if self
                    .tx
                    .send(StoreMsg::Late { collector: name })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// The tick's `statm` pass, read once for every ladder collector. `None` when it cannot be
    /// read: each collector then reads (and reports the failure) itself.
    async fn statm_pass(&self) -> Option<Arc<StatmPass>> {
        let procfs = self.procfs.clone();
        let files = Arc::clone(&self.statm_files);
        let read = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
            let pass = StatmPass::read(&procfs, &mut files, &mut Vec::with_capacity(256));
            (start.elapsed(), pass)
        })
        .await;
        match read {
            Ok((took, Ok(pass))) => {
                let _ = self.tx.send(StoreMsg::StatmPass(took)).await;
                Some(Arc::new(pass))
            }
            Ok((_, Err(e))) => {
                debug!(error = %e, "statm pass failed");
                None
            }
            Err(e) => {
                error!(error = %e, "statm pass panicked");
                None
            }
        }
    }

    /// Starts one run in the background; the receiver resolves once its result is with the store.
    fn start(
        &self,
        slot: &Slot,
        tick: u64,
        statm: Option<Arc<StatmPass>>,
        unbounded: bool,
    ) -> oneshot::Receiver<()> {
        let (done_tx, done_rx) = oneshot::channel();
        let collector = Arc::clone(&slot.collector);
        let busy = Arc::clone(&slot.busy);
        let delivered = Arc::clone(&slot.delivered);
        let procfs = self.procfs.clone();
        let tx = self.tx.clone();
        let name = slot.name;
        tokio::spawn(async move {
            let run = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                // A collector that panicked earlier poisoned its mutex; it still gets to run.
                let mut c = collector.lock().unwrap_or_else(|p| p.into_inner());
                let result = c.collect(&CollectCtx {
                    procfs: &procfs,
                    tick,
                    statm,
                    unbounded,
                });
                (start.elapsed(), result)
            })
            .await;
            let (duration, result) = run.unwrap_or_else(|e| {
                error!(collector = name, error = %e, "collector panicked");
                (
                    Duration::ZERO,
                    Err(CollectError::Other(format!("collector panicked: {e}"))),
                )
            });
            if let Err(e) = &result {
                warn!(collector = name, error = %e, "collector failed");
            } else {
                debug!(collector = name, ?duration, "collected");
            }
            let _ = tx
                .send(StoreMsg::Collected {
                    collector: name,
                    duration,
                    result,
                })
                .await;
            delivered.store(true, Ordering::Release);
            busy.store(false, Ordering::Release);
            let _ = done_tx.send(());
        });
        done_rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::Observation;

    /// A collector that blocks until the test lets it go, and counts its runs.
    struct Slow {
        release: std::sync::mpsc::Receiver<()>,
        runs: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Collector for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn collect(
            &mut self,
            _: &CollectCtx<'_>,
        ) -> Result<Option<Box<dyn Observation>>, CollectError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            self.release
                .recv()
                .map_err(|e| CollectError::Other(e.to_string()))?;
            Ok(None)
        }
    }

    struct Fast;

    impl Collector for Fast {
        fn name(&self) -> &'static str {
            "fast"
        }
        fn collect(
            &mut self,
            _: &CollectCtx<'_>,
        ) -> Result<Option<Box<dyn Observation>>, CollectError> {
            Ok(None)
        }
    }

    /// The messages sent so far, sorted (runs end in any order), without the statm pass timings.
    fn drain(rx: &mut mpsc::Receiver<StoreMsg>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(match m {
                StoreMsg::StatmPass(_) => continue,
                StoreMsg::Collected { collector, .. } => format!("collected {collector}"),
                StoreMsg::Late { collector } => format!("late {collector}"),
                StoreMsg::Skipped { collector } => format!("skipped {collector}"),
                StoreMsg::Tracker(_) => "tracker".into(),
                StoreMsg::Emit => "emit".into(),
                StoreMsg::Exit { pid, cause } => format!("exit {pid} {cause:?}"),
                StoreMsg::Stop => "stop".into(),
            });
        }
        out.sort();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_collector_is_late_not_run_twice_and_finishes_in_the_background() {
        let (release, rx_release) = std::sync::mpsc::channel();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (tx, mut rx) = mpsc::channel(64);
        let collectors: Vec<(Box<dyn Collector>, u64)> = vec![
            (
                Box::new(Slow {
                    release: rx_release,
                    runs: Arc::clone(&runs),
                }),
                1,
            ),
            (Box::new(Fast), 1),
        ];
        let s = Scheduler::new(
            collectors,
            ProcFs::new("/nonexistent"),
            // Far beyond what the fast one needs, even on a loaded host; the slow one never ends
            // by itself, so it misses the deadline whatever the timing.
            Some(Duration::from_secs(1)),
            tx,
        );
        // Tick 0: a first run is waited for, however long (here: until released).
        release.send(()).expect("release");
        s.run_tick(0, false).await;
        assert_eq!(drain(&mut rx), ["collected fast", "collected slow"]);
        // Tick 1: the slow one blocks past its deadline; the tick still ends, the fast one is in.
        s.run_tick(1, false).await;
        assert_eq!(drain(&mut rx), ["collected fast", "late slow"]);
        // Tick 2: still running, so it is skipped, not started twice.
        s.run_tick(2, false).await;
        assert_eq!(drain(&mut rx), ["collected fast", "skipped slow"]);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Let it finish: its result reaches the store in the background.
        release.send(()).expect("release");
        let msg = rx.recv().await.expect("background result");
        assert!(matches!(
            msg,
            StoreMsg::Collected {
                collector: "slow",
                ..
            }
        ));
        s.wait_idle().await;
        // Tick 3: free again, it runs (and is let go at once).
        release.send(()).expect("release");
        s.run_tick(3, true).await;
        assert_eq!(drain(&mut rx), ["collected fast", "collected slow"]);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn overflow_is_a_counter_that_grew() {
        let base = TrackerStats {
            marks_received: 10,
            marks_dropped: 1,
            events_received: 5,
            events_lost: 2,
        };
        assert!(!overflowed(&base, &base));
        assert!(!overflowed(
            &base,
            &TrackerStats {
                marks_received: 99,
                events_received: 99,
                ..base
            }
        ));
        assert!(overflowed(
            &base,
            &TrackerStats {
                marks_dropped: 2,
                ..base
            }
        ));
        assert!(overflowed(
            &base,
            &TrackerStats {
                events_lost: 3,
                ..base
            }
        ));
    }

    #[test]
    fn tick_rounding() {
        let s = Duration::from_secs;
        assert_eq!(ticks_for(s(10), s(10)), 1);
        assert_eq!(ticks_for(s(30), s(10)), 3);
        assert_eq!(ticks_for(s(25), s(10)), 3);
        assert_eq!(ticks_for(s(1), s(10)), 1);
    }
}
