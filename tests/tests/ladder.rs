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
    ladder::{Shared, stale_after},
    procfs::ProcFs,
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

/// One agent tick of the smaps tier, as the runtime does it: drain marks, then collect.
fn tick(
    tracker: &mut Tracker,
    shared: &Shared,
    procfs: &ProcFs,
    smaps: &mut SmapsCollector,
    n: u64,
) -> ObjectsObservation {
    shared
        .dirty
        .publish(tracker.source.drain().iter().map(|m| m.tgid));
    let ctx = CollectCtx {
        procfs,
        tick: n,
        shared,
        unbounded: false,
    };
    match smaps.collect(&ctx) {
        Ok(Some(Observation::Objects(o))) => o,
        other => panic!("smaps collect: {other:?}"),
    }
}

fn maps_test_memfd(obs: &ObjectsObservation, pid: u32) -> bool {
    obs.of_kind(ObjectKind::Memfd).any(|o| {
        o.label.lossy().contains("memscope-test-memfd") && o.consumers.iter().any(|c| c.pid == pid)
    })
}

#[test]
fn dirty_child_is_reread_next_tick_and_idle_child_only_when_stale() {
    let mut tracker = ebpf_tracker();
    let shared = Shared::default();
    let procfs = ProcFs::new("/proc");
    let max_staleness = Duration::from_secs(3);
    let mut smaps = SmapsCollector::new(&SmapsConfig {
        min_object_pss: ByteSize(0),
        max_staleness: Interval(max_staleness),
        // Residency moves of the children must not trigger reads: only marks and staleness.
        min_change: ByteSize(1 << 30),
        ..SmapsConfig::default()
    });
    let idle = TestChild::spawn(CHILD);
    let mut busy = TestChild::spawn(CHILD);
    let started = Instant::now();
    let obs = tick(&mut tracker, &shared, &procfs, &mut smaps, 0);
    assert!(!maps_test_memfd(&obs, busy.pid()));
    assert_eq!(smaps.reads_of(idle.pid()), Some(1));
    assert_eq!(smaps.reads_of(busy.pid()), Some(1));

    // The busy child maps a memfd: the very next tick re-reads it and shows the object.
    busy.command("memfd");
    let obs = tick(&mut tracker, &shared, &procfs, &mut smaps, 1);
    assert!(
        maps_test_memfd(&obs, busy.pid()),
        "the new memfd mapping is in the next emission"
    );
    assert_eq!(smaps.reads_of(busy.pid()), Some(2));
    assert!(
        shared.tier_stats()["smaps"]
            .rereads
            .get("dirty")
            .copied()
            .unwrap_or(0)
            >= 1,
        "re-read because of a dirty mark: {:?}",
        shared.tier_stats()
    );

    // The idle child is not re-read until its staleness deadline, then exactly once.
    let deadline = stale_after(max_staleness, idle.pid());
    let mut n = 2;
    while started.elapsed() + Duration::from_millis(300) < deadline {
        std::thread::sleep(Duration::from_millis(250));
        tick(&mut tracker, &shared, &procfs, &mut smaps, n);
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
    while started.elapsed() < max_staleness + Duration::from_millis(600) {
        std::thread::sleep(Duration::from_millis(250));
        tick(&mut tracker, &shared, &procfs, &mut smaps, n);
        n += 1;
    }
    assert_eq!(
        smaps.reads_of(idle.pid()),
        Some(2),
        "re-read once for staleness after {:?}",
        started.elapsed()
    );
    let stats = shared.tier_stats();
    assert!(stats["smaps"].rereads.get("stale").copied().unwrap_or(0) >= 1);
    assert!(
        u128::from(stats["smaps"].oldest_read_age_ms) <= max_staleness.as_millis() + 600,
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
