//! The agent's main loop: a scheduler that runs due collectors on blocking threads each tick and
//! feeds the store task, which owns the snapshot and writes emissions to the sink.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use memscope_common::event_kind;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    collectors::{CollectCtx, CollectError, Collector, Observation, build_collectors},
    config::Config,
    config::TrackerMode,
    ladder::{Shared, TrackerCounters},
    procfs::ProcFs,
    sinks::Sink,
    store::{LadderReport, SelfCost, Store, StoreConfig, TrackerInfo},
    tracker::{self, DirtySource, PollingSource, Tracker, TrackerState},
};

/// Messages to the store task.
pub enum StoreMsg {
    /// One collector run.
    Collected {
        collector: &'static str,
        duration: Duration,
        result: Result<Option<Observation>, CollectError>,
    },
    /// Emit now.
    Emit,
    /// The tracker saw a process exit: send its `exit` record at once.
    Exit { pid: u32 },
}

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

struct Slot {
    name: &'static str,
    collector: Arc<Mutex<Box<dyn Collector>>>,
    /// Runs every `every` ticks.
    every: u64,
}

/// Opens the configured sink; a bad output path fails here, before anything is collected.
pub fn open_sink(config: &Config) -> anyhow::Result<Sink> {
    Sink::open(&config.output).with_context(|| match &config.output.path {
        Some(p) => format!("output.path: cannot open {}", p.display()),
        None => "cannot open the output".to_string(),
    })
}

/// Runs the agent until `shutdown` resolves (or after one emission with `once`), writing to `sink`.
pub async fn run(
    config: Config,
    sink: Sink,
    once: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let procfs = ProcFs::new(&config.agent.proc_root);
    let interval = config.agent.interval.get();
    let mut tracker = start_tracker(config.agent.tracker, once).await?;
    let tracker_info = match tracker.source.state() {
        TrackerState::Ebpf => TrackerInfo {
            mode: "ebpf".to_string(),
            reason: None,
        },
        TrackerState::Polling { reason } => TrackerInfo {
            mode: "polling".to_string(),
            reason: Some(reason.clone()),
        },
    };
    let events = tracker.events.take();
    let source = Arc::new(Mutex::new(tracker.source));

    let slots: Vec<Slot> = build_collectors(&config, &procfs)
        .into_iter()
        .map(|r| Slot {
            name: r.collector.name(),
            collector: Arc::new(Mutex::new(r.collector)),
            every: ticks_for(r.interval, interval),
        })
        .collect();
    let names: Vec<&'static str> = slots.iter().map(|s| s.name).collect();
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
            keyframe_every: config.output.keyframe_every.0,
            interval,
        },
        tracker_info,
        &names,
    );

    let (tx, rx) = mpsc::channel::<StoreMsg>(64);
    let shared = Arc::new(Shared::default());
    let mut store_task = tokio::spawn(store_loop(
        store,
        sink,
        rx,
        procfs.clone(),
        Arc::clone(&shared),
    ));

    // Lifecycle events: exits become `exit` records at once; execs mark the process dirty.
    let events_task = events.map(|mut rx| {
        let tx = tx.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev.kind {
                    event_kind::EXIT if tx.send(StoreMsg::Exit { pid: ev.tgid }).await.is_err() => {
                        break;
                    }
                    event_kind::EXEC => shared.dirty.publish([ev.tgid]),
                    _ => {}
                }
            }
        })
    });

    let scheduler = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick: u64 = 0;
        loop {
            ticker.tick().await;
            drain_tracker(&source, &shared).await;
            run_due(&slots, &procfs, &shared, once, tick, &tx).await;
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
        () = scheduler => None,
        () = shutdown => {
            info!("shutdown requested");
            None
        }
        ended = &mut store_task => Some(ended),
    };
    if let Some(t) = events_task {
        t.abort();
        let _ = t.await;
    }
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

/// Starts the tracker the config asks for. `--once` never loads eBPF: one pass reads everything.
async fn start_tracker(mode: TrackerMode, once: bool) -> anyhow::Result<Tracker> {
    let polling = |reason: &str| Tracker {
        source: Box::new(PollingSource::new(reason)),
        events: None,
    };
    if mode == TrackerMode::Polling {
        return Ok(polling("tracker = \"polling\" in the config"));
    }
    if once {
        return Ok(polling("one-shot run (--once): every process is read"));
    }
    let pid = std::process::id();
    let tracker = tokio::task::spawn_blocking(move || {
        let t = tracker::start(pid);
        release_freed_heap();
        t
    })
    .await
    .context("starting the tracker")?;
    if let (TrackerMode::Ebpf, TrackerState::Polling { reason }) = (mode, tracker.source.state()) {
        anyhow::bail!("agent.tracker = \"ebpf\" but eBPF cannot attach: {reason}");
    }
    Ok(tracker)
}

/// Loading the programs parses the kernel's BTF (about 5 MB here), which leaves ~16 MB of freed
/// heap that glibc keeps; hand it back so the agent's RSS reflects what it uses (measured on this
/// VM, release build, eBPF attached: 23 MB → 13 MB RSS; polling mode is 6 MB).
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Moves the tracker's dirty marks into the hub (a blocking drain, off the async workers).
async fn drain_tracker(source: &Arc<Mutex<Box<dyn DirtySource>>>, shared: &Arc<Shared>) {
    let source = Arc::clone(source);
    let shared = Arc::clone(shared);
    let drained = tokio::task::spawn_blocking(move || {
        let mut s = source.lock().unwrap_or_else(|p| p.into_inner());
        let marks = s.drain();
        shared.dirty.publish(marks.iter().map(|m| m.tgid));
        let st = s.stats();
        shared.set_tracker_counters(TrackerCounters {
            marks_dropped: st.marks_dropped,
            events_received: st.events_received,
            events_lost: st.events_lost,
        });
    })
    .await;
    if let Err(e) = drained {
        error!(error = %e, "draining the tracker failed");
    }
}

/// Number of agent ticks between runs of a collector with `interval` (rounded up, at least 1).
fn ticks_for(interval: Duration, tick: Duration) -> u64 {
    let t = tick.as_nanos().max(1);
    interval.as_nanos().div_ceil(t).max(1) as u64
}

/// Runs the collectors due at `tick` concurrently on blocking threads and sends their results.
async fn run_due(
    slots: &[Slot],
    procfs: &ProcFs,
    shared: &Arc<Shared>,
    unbounded: bool,
    tick: u64,
    tx: &mpsc::Sender<StoreMsg>,
) {
    let mut handles = Vec::new();
    for slot in slots.iter().filter(|s| tick.is_multiple_of(s.every)) {
        let collector = Arc::clone(&slot.collector);
        let procfs = procfs.clone();
        let shared = Arc::clone(shared);
        let name = slot.name;
        handles.push((
            name,
            tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                // A collector that panicked earlier poisoned its mutex; it still gets to run.
                let mut c = collector.lock().unwrap_or_else(|p| p.into_inner());
                let result = c.collect(&CollectCtx {
                    procfs: &procfs,
                    tick,
                    shared: &shared,
                    unbounded,
                });
                (start.elapsed(), result)
            }),
        ));
    }
    for (name, handle) in handles {
        let (duration, result) = match handle.await {
            Ok(r) => r,
            Err(e) => {
                error!(collector = name, error = %e, "collector panicked");
                (
                    Duration::ZERO,
                    Err(CollectError::Other(format!("collector panicked: {e}"))),
                )
            }
        };
        if let Err(e) = &result {
            warn!(collector = name, error = %e, "collector failed");
        } else {
            debug!(collector = name, ?duration, "collected");
        }
        let msg = StoreMsg::Collected {
            collector: name,
            duration,
            result,
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// The store task: applies observations, emits on request, writes to the sink; flushes at the end.
async fn store_loop(
    mut store: Store,
    mut sink: Sink,
    mut rx: mpsc::Receiver<StoreMsg>,
    procfs: ProcFs,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    while let Some(msg) = rx.recv().await {
        match msg {
            StoreMsg::Collected {
                collector,
                duration,
                result,
            } => store.apply(collector, duration, result),
            StoreMsg::Exit { pid } => {
                let out = store.exit_now(pid, SystemTime::now());
                if let Err(e) = sink.write_batch(&out).await {
                    store.count_dropped(e.dropped_lines);
                    if e.is_broken_pipe() {
                        return Err(anyhow::anyhow!("output closed (broken pipe)"));
                    }
                    error!(error = %e, pid, "sink write failed; exit record dropped");
                }
            }
            StoreMsg::Emit => {
                let t = shared.tracker_counters();
                let ladder = LadderReport {
                    tiers: shared.tier_stats(),
                    dirty_marks_received: shared.dirty.received(),
                    dirty_marks_dropped: t.marks_dropped,
                    events_received: t.events_received,
                    events_lost: t.events_lost,
                };
                // getrusage and /proc/self/statm: cheap, but still a /proc read, so off the workers.
                let cost = tokio::task::spawn_blocking(SelfCost::measure)
                    .await
                    .unwrap_or_default();
                let out = store.emit(SystemTime::now(), &cost, procfs.counters(), &ladder);
                if let Err(e) = sink.write_batch(&out).await {
                    store.count_dropped(e.dropped_lines);
                    if e.is_broken_pipe() {
                        return Err(anyhow::anyhow!("output closed (broken pipe)"));
                    }
                    error!(error = %e, "sink write failed; lines dropped");
                }
            }
        }
    }
    sink.flush().await.context("flushing the output")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_rounding() {
        let s = Duration::from_secs;
        assert_eq!(ticks_for(s(10), s(10)), 1);
        assert_eq!(ticks_for(s(30), s(10)), 3);
        assert_eq!(ticks_for(s(25), s(10)), 3);
        assert_eq!(ticks_for(s(1), s(10)), 1);
    }
}
