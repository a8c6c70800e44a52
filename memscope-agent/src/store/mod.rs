//! The snapshot store: the one owner of the current state. Collectors' observations are applied to
//! it; on each emission it turns the state into JSON lines.
//!
//! An emission is: a `snapshot` record (mode, tracker, per-collector status, counts, warnings), the
//! entity records (`meminfo`, `process`, …), `exit` records for processes gone since the previous
//! emission (carrying their last known numbers) and `removed` records for other entities gone,
//! then an `agent` record with the agent's own cost. In `changes` mode only entities whose record
//! changed are sent, except on keyframes (the first emission and every `keyframe_every`-th), which
//! send everything.
//!
//! - [`state`]: the store itself, applying collector runs and keeping each entity's state;
//! - [`emit`]: turning the state into an emission: change detection, keyframes, `removed` and
//!   `exit` synthesis;
//! - [`bodies`]: the bodies of the `snapshot` and `agent` records (and what feeds them).
//!
//! The store task ([`run`]) owns the store and the sink; it learns everything through one channel
//! of [`StoreMsg`]s.

mod bodies;
mod delta;
mod emit;
mod oom;
#[cfg(test)]
mod replay_tests;
mod state;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::error;

pub(crate) use bodies::{AgentBody, RemovedBody, SnapshotBody};
pub use bodies::{CollectorStatus, LadderReport, Phases, SelfCost, TrackerInfo};
pub use emit::ExitCause;
pub use state::{Store, StoreConfig, keyframe_every};

use crate::{
    collectors::{CollectError, Observation},
    procfs::ProcFs,
    sinks::Sink,
    tracker::TrackerStats,
};

/// Messages to the store task.
pub enum StoreMsg {
    /// One collector run (on time, or finishing in the background after its deadline).
    Collected {
        collector: &'static str,
        duration: Duration,
        result: Result<Option<Box<dyn Observation>>, CollectError>,
    },
    /// A run missed its deadline: the coming emission reports it `late`.
    Late { collector: &'static str },
    /// A due run was skipped because the previous one is still going.
    Skipped { collector: &'static str },
    /// The tracker's counters, after this tick's drain.
    Tracker(TrackerStats),
    /// How long this tick's `statm` pass took (for the `agent` record's `phases_us`).
    StatmPass(Duration),
    /// Emit now.
    Emit,
    /// The tracker saw a process exit, or the OOM killer choose it: send its `exit` record at once
    /// (after an OOM kill, with the re-read `cgroup` records of its cgroup).
    Exit { pid: u32, cause: ExitCause },
    /// The agent stops: flush and end, even while a late run (holding a sender) still goes.
    Stop,
}

/// The store task: applies observations, emits on request, writes to the sink; flushes at the end.
/// `procfs` is the collectors' (its read counters go into the `agent` record).
pub async fn run(
    mut store: Store,
    mut sink: Sink,
    mut rx: mpsc::Receiver<StoreMsg>,
    procfs: ProcFs,
) -> anyhow::Result<()> {
    // The agent's own /proc, for its self-measurement, whatever proc_root the collectors read.
    let own_proc = ProcFs::new("/proc");
    // `exit` records at once, waiting for the end of a burst of exits.
    let mut exits = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            StoreMsg::Collected {
                collector,
                duration,
                result,
            } => store.apply(collector, duration, result),
            StoreMsg::Late { collector } => store.late(collector),
            StoreMsg::Skipped { collector } => store.skipped(collector),
            StoreMsg::Tracker(stats) => store.set_tracker_stats(stats),
            StoreMsg::StatmPass(took) => store.phases.statm_pass = took.as_micros() as u64,
            StoreMsg::Stop => break,
            StoreMsg::Exit { pid, cause } => {
                // An OOM kill: the victim's cgroup is re-read first, so its moved `oom_kill`
                // counter goes out with the exit.
                let fresh = match store
                    .oom_refresh(pid)
                    .filter(|_| cause == ExitCause::OomKill)
                {
                    Some(refresh) => {
                        let procfs = procfs.clone();
                        tokio::task::spawn_blocking(move || refresh.read(&procfs))
                            .await
                            .unwrap_or_default()
                    }
                    None => Vec::new(),
                };
                let now = SystemTime::now();
                exits.extend(store.exit_now(pid, cause, now));
                exits.extend(store.oom_cgroup_lines(fresh, now));
            }
            StoreMsg::Emit => {
                write_exits(&mut store, &mut sink, &mut exits).await?;
                // The cgroups of processes this emission reports gone are re-read now, after the
                // runs that found them gone: an OOM kill among them is in the counters compared.
                if let Some(refresh) = store.exit_refresh() {
                    let procfs = procfs.clone();
                    let fresh = tokio::task::spawn_blocking(move || refresh.read(&procfs))
                        .await
                        .unwrap_or_default();
                    store.apply_cgroups(fresh);
                }
                // getrusage and /proc/self/statm: cheap, but still a /proc read, so off the workers.
                let own = own_proc.clone();
                let cost = tokio::task::spawn_blocking(move || SelfCost::measure(&own))
                    .await
                    .unwrap_or_default();
                if let Some(guard) = procfs.guard() {
                    store.set_stuck_reads(
                        crate::procfs::guard::StuckReads::of(Some(guard)),
                        guard.take_warnings(),
                    );
                }
                let out = store.emit(SystemTime::now(), &cost, procfs.counters());
                let write = std::time::Instant::now();
                let written = sink.write_batch(&out).await;
                store.phases.write_previous = write.elapsed().as_micros() as u64;
                if let Err(e) = written {
                    store.count_dropped(e.dropped_lines);
                    if e.is_broken_pipe() {
                        return Err(anyhow::anyhow!("output closed (broken pipe)"));
                    }
                    error!(error = %e, "sink write failed; lines dropped");
                }
                // What the tick freed (the records, the lines, the observations replaced) goes
                // back to the kernel now, not after another interval resident.
                drop(out);
                let _ = tokio::task::spawn_blocking(crate::runtime::release_freed_heap).await;
            }
        }
        // Exits come in bursts (the tracker hands them over in batches): one write for all that
        // waited, once nothing more is queued.
        if rx.is_empty() {
            write_exits(&mut store, &mut sink, &mut exits).await?;
        }
    }
    write_exits(&mut store, &mut sink, &mut exits).await?;
    sink.flush().await.context("flushing the output")?;
    Ok(())
}

/// Writes the `exit` records waiting in `exits` (if any) and empties it.
async fn write_exits(
    store: &mut Store,
    sink: &mut Sink,
    exits: &mut Vec<u8>,
) -> anyhow::Result<()> {
    if exits.is_empty() {
        return Ok(());
    }
    let written = sink.write_batch(exits).await;
    exits.clear();
    if exits.capacity() > 64 * 1024 {
        exits.shrink_to(64 * 1024);
    }
    if let Err(e) = written {
        store.count_dropped(e.dropped_lines);
        if e.is_broken_pipe() {
            return Err(anyhow::anyhow!("output closed (broken pipe)"));
        }
        error!(error = %e, "sink write failed; exit records dropped");
    }
    Ok(())
}
