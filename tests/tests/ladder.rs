//! Privileged lane: the cost ladder driven by the eBPF tracker, end to end (root).
//!
//! `cargo test -p memscope-tests --test ladder -- --test-threads=1`. Every test panics with the
//! reason when eBPF cannot attach: this lane never passes in polling mode.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use memscope_agent::{
    collectors::{
        CollectCtx, Collector, Observation,
        smaps::{ObjectKind, ObjectsObservation, SmapsCollector},
    },
    config::{ByteSize, Config, Interval, SinkKind, SmapsConfig, TrackerMode},
    ladder::{StatmPass, TierStats, stale_after},
    proc_events::ProcEvents,
    procfs::{OpenFiles, ProcFs},
    tracker::{self, Tracker, TrackerState},
};
use memscope_tests::{TestChild, require_root};
use serde_json::Value;

const CHILD: &str = env!("CARGO_BIN_EXE_memscope-test-child");

fn ebpf_tracker() -> Tracker {
    require_root("ladder");
    let t = tracker::start(std::process::id());
    if let TrackerState::Polling { reason } = t.source.state() {
        panic!("eBPF did not attach, so the ladder lane cannot run: {reason}");
    }
    t
}

/// What the runtime keeps between ticks: the event stream and the kept `statm` descriptors.
struct Agent {
    events: ProcEvents,
    statm_files: OpenFiles,
    procfs: ProcFs,
}

impl Agent {
    fn new() -> Agent {
        Agent {
            events: ProcEvents::default(),
            statm_files: StatmPass::files(4096),
            procfs: ProcFs::new("/proc"),
        }
    }

    /// One agent tick of the smaps tier, as the runtime does it: drain marks into the stream,
    /// read the statm pass, then collect.
    fn tick(
        &mut self,
        tracker: &mut Tracker,
        smaps: &mut SmapsCollector,
        n: u64,
    ) -> ObjectsObservation {
        self.events.publish_marks(&tracker.source.drain());
        let pass = StatmPass::read(&self.procfs, &mut self.statm_files, &mut Vec::new())
            .expect("statm pass");
        let ctx = CollectCtx {
            procfs: &self.procfs,
            tick: n,
            statm: Some(std::sync::Arc::new(pass)),
            unbounded: false,
        };
        match smaps.collect(&ctx) {
            Ok(Some(Observation::Objects(o))) => o,
            other => panic!("smaps collect: {other:?}"),
        }
    }
}

fn smaps_stats(obs: &ObjectsObservation) -> &TierStats {
    &obs.tier
}

fn maps_test_memfd(obs: &ObjectsObservation, pid: u32) -> bool {
    obs.of_kind(ObjectKind::Memfd).any(|o| {
        o.label.lossy().contains("memscope-test-memfd") && o.consumers.iter().any(|c| c.pid == pid)
    })
}

#[test]
fn dirty_child_is_reread_next_tick_and_idle_child_only_when_stale() {
    let mut tracker = ebpf_tracker();
    let mut agent = Agent::new();
    let max_staleness = Duration::from_secs(3);
    let mut smaps = SmapsCollector::new(
        &SmapsConfig {
            min_object_pss: ByteSize(0),
            max_staleness: Interval(max_staleness),
            // Residency moves of the children must not trigger reads: only marks and staleness.
            min_change: ByteSize(1 << 30),
            ..SmapsConfig::default()
        },
        agent.events.subscribe(),
    );
    let idle = TestChild::spawn(CHILD);
    let mut busy = TestChild::spawn(CHILD);
    let started = Instant::now();
    let obs = agent.tick(&mut tracker, &mut smaps, 0);
    assert!(!maps_test_memfd(&obs, busy.pid()));
    assert_eq!(smaps.reads_of(idle.pid()), Some(1));
    assert_eq!(smaps.reads_of(busy.pid()), Some(1));

    // The busy child maps a memfd: the very next tick re-reads it and shows the object.
    busy.command("memfd");
    let obs = agent.tick(&mut tracker, &mut smaps, 1);
    assert!(
        maps_test_memfd(&obs, busy.pid()),
        "the new memfd mapping is in the next emission"
    );
    assert_eq!(smaps.reads_of(busy.pid()), Some(2));
    assert!(
        smaps_stats(&obs).rereads.get("dirty").copied().unwrap_or(0) >= 1,
        "re-read because of a dirty mark: {:?}",
        smaps_stats(&obs)
    );

    // The idle child is not re-read until its staleness deadline, then exactly once.
    let deadline = stale_after(max_staleness, idle.pid());
    let mut n = 2;
    while started.elapsed() + Duration::from_millis(300) < deadline {
        std::thread::sleep(Duration::from_millis(250));
        agent.tick(&mut tracker, &mut smaps, n);
        n += 1;
        if started.elapsed() < deadline {
            assert_eq!(
                smaps.reads_of(idle.pid()),
                Some(1),
                "idle child re-read after {:?} (deadline {deadline:?})",
                started.elapsed()
            );
        }
    }
    let mut last = None;
    while started.elapsed() < max_staleness + Duration::from_millis(600) {
        std::thread::sleep(Duration::from_millis(250));
        last = Some(agent.tick(&mut tracker, &mut smaps, n));
        n += 1;
    }
    assert_eq!(
        smaps.reads_of(idle.pid()),
        Some(2),
        "re-read once for staleness after {:?}",
        started.elapsed()
    );
    let last = last.expect("ticks after the deadline");
    let stats = smaps_stats(&last);
    assert!(stats.rereads.get("stale").copied().unwrap_or(0) >= 1);
    assert!(
        u128::from(stats.oldest_read_age_ms) <= max_staleness.as_millis() + 600,
        "no number older than max_staleness (+ one tick): {stats:?}"
    );
}

/// Runs the agent daemon for `run_for` with the eBPF tracker required, returning its lines.
fn run_daemon(run_for: Duration, during: impl FnOnce() + Send + 'static) -> Vec<Value> {
    require_root("ladder");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let mut config = Config::default();
    config.agent.interval = Interval(Duration::from_millis(500));
    config.agent.tracker = TrackerMode::Ebpf;
    config.collectors.tmpfs.enabled = false;
    config.output.sink = SinkKind::File;
    config.output.path = Some(path.clone());
    let sink = memscope_agent::runtime::open_sink(&config).expect("sink");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let helper = std::thread::spawn(during);
    rt.block_on(memscope_agent::runtime::run(
        config,
        sink,
        false,
        async move { tokio::time::sleep(run_for).await },
    ))
    .expect("agent runs with eBPF");
    helper.join().expect("helper thread");
    std::fs::read_to_string(&path)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn short_lived_child_gets_an_exit_record_between_ticks() {
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = run_daemon(Duration::from_millis(2500), move || {
        // Start after the first emission, live for a moment, exit well before the next tick.
        std::thread::sleep(Duration::from_millis(1200));
        let mut child = Command::new(CHILD).arg("exit").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let _ = tx.send(pid);
    });
    let pid = u64::from(rx.recv().expect("child pid"));
    assert!(
        lines
            .iter()
            .all(|l| l["kind"] != "snapshot" || l["tracker"]["mode"] == "ebpf"),
        "tracker must be ebpf"
    );
    let exits: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "exit" && l["pid"].as_u64() == Some(pid))
        .collect();
    assert_eq!(exits.len(), 1, "one exit record for {pid}: {exits:?}");
    assert_eq!(exits[0]["at_once"], true);
    // It never lived through a tick, so no process record was ever sent for it.
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "process" && l["pid"].as_u64() == Some(pid))
    );
}

#[test]
fn known_process_exit_carries_its_last_numbers() {
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = run_daemon(Duration::from_millis(2500), move || {
        let child = TestChild::spawn(CHILD);
        let _ = tx.send(child.pid());
        // Lives through at least two emissions, then exits (EOF on stdin) between ticks.
        std::thread::sleep(Duration::from_millis(1300));
        drop(child);
    });
    let pid = u64::from(rx.recv().expect("child pid"));
    let seen = lines
        .iter()
        .filter(|l| l["kind"] == "process" && l["pid"].as_u64() == Some(pid))
        .count();
    assert!(seen >= 1, "the child was reported while alive");
    let exits: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "exit" && l["pid"].as_u64() == Some(pid))
        .collect();
    assert_eq!(exits.len(), 1, "exactly one exit: {exits:?}");
    assert_eq!(exits[0]["at_once"], true);
    assert!(
        exits[0]["rss_bytes"].as_u64().is_some_and(|r| r > 0),
        "last numbers: {}",
        exits[0]
    );
    assert_eq!(exits[0]["name"], "memscope-test-c", "comm is 15 bytes");
}
