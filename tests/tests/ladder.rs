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
        CollectCtx, Collector, observed,
        smaps::{ObjectKind, ObjectsObservation, SmapsCollector, SmapsConfig},
    },
    config::{ByteSize, Config, Interval, SinkKind, TrackerMode},
    ladder::{StatmPass, TierStats, stale_after},
    proc_events::ProcEvents,
    procfs::{OpenFiles, ProcFs},
    runtime::drain_into,
    tracker::{self, Tracker, TrackerState, TrackerStats},
};
use memscope_tests::{Sharers, TestChild, require_root};
use serde_json::Value;

const CHILD: &str = env!("CARGO_BIN_EXE_memscope-test-child");

fn ebpf_tracker() -> Tracker {
    ebpf_tracker_with(tracker::StartOptions::new(std::process::id()))
}

fn ebpf_tracker_with(opts: tracker::StartOptions) -> Tracker {
    require_root("ladder");
    let t = tracker::start(&opts);
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
    /// The tracker's counters at the last drain.
    last: TrackerStats,
}

impl Agent {
    fn new() -> Agent {
        let events = ProcEvents::default();
        // As the runtime does with eBPF attached: marks cover every layout change.
        events.set_layout_tracked(true);
        Agent {
            events,
            statm_files: StatmPass::files(4096),
            procfs: ProcFs::new("/proc"),
            last: TrackerStats::default(),
        }
    }

    /// Publishes the tracker's lifecycle events until the FORK event of every pid in `pids` has
    /// come (at most 60 s), as the runtime publishes them as they come. A test that ticks before a
    /// child's FORK arrives would see it at a later tick, and the ladder would then forget the
    /// child it has read and read it again as `new` (a host busy forking thousands of processes
    /// delays the ring buffer's events by seconds).
    fn settle(&mut self, tracker: &mut Tracker, pids: &[u32]) {
        use memscope_common::event_kind;
        let rx = tracker.events.as_mut().expect("eBPF tracker events");
        let mut waiting: Vec<u32> = pids.to_vec();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !waiting.is_empty() {
            match rx.try_recv() {
                Ok(ev) => {
                    if ev.kind == event_kind::FORK {
                        waiting.retain(|p| *p != ev.tgid);
                    }
                    self.events.publish_lifecycle(&ev);
                }
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "no FORK event for {waiting:?} within 60 s"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// One agent tick of the smaps tier, as the runtime does it: lifecycle events and marks into
    /// the stream, read the statm pass, then collect.
    fn tick(
        &mut self,
        tracker: &mut Tracker,
        smaps: &mut SmapsCollector,
        n: u64,
    ) -> ObjectsObservation {
        // The ring buffer's lifecycle events first (the runtime publishes them as they come).
        if let Some(rx) = tracker.events.as_mut() {
            while let Ok(ev) = rx.try_recv() {
                self.events.publish_lifecycle(&ev);
            }
        }
        self.last = drain_into(tracker.source.as_mut(), &self.events, self.last);
        let pass = StatmPass::read(&self.procfs, &mut self.statm_files, &mut Vec::new())
            .expect("statm pass");
        let ctx = CollectCtx {
            procfs: &self.procfs,
            tick: n,
            statm: Some(std::sync::Arc::new(pass)),
            unbounded: false,
        };
        observed::<ObjectsObservation>(smaps.collect(&ctx))
            .unwrap_or_else(|e| panic!("smaps collect: {e}"))
    }
}

/// A per-tick budget no test run reaches: the tiers read the whole host, and a tick that
/// carried the test's own children over to the next one would break the test's count of reads.
const UNBOUNDED_BUDGET: Duration = Duration::from_secs(600);

/// `base`, or longer on a host with many processes. These tiers read every process on the host, and
/// the staleness tests need a tick to end well within `max_staleness` (their first tick reads
/// everything): 4 ms per process, several times what a `smaps` read costs on a loaded host.
fn staleness_for_host(base: Duration) -> Duration {
    let processes = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    base.max(Duration::from_millis(4 * processes as u64))
}

/// A smaps tier on `agent`'s stream that reports every object and re-reads a process only for a
/// mark, an exit's consequences or staleness (residency moves below 1 GiB are ignored).
fn marks_and_staleness_only(agent: &Agent, max_staleness: Duration) -> SmapsCollector {
    SmapsCollector::new(
        &SmapsConfig {
            min_object_pss: ByteSize(0),
            max_staleness: Interval(max_staleness),
            min_change: ByteSize(1 << 30),
            // Every due process is read in its tick: the tier reads the whole host, and other
            // lanes may run thousands of processes (the default 2 s budget would carry the test's
            // own children over).
            budget: Interval(UNBOUNDED_BUDGET),
            ..SmapsConfig::default()
        },
        agent.events.subscribe(),
    )
}

fn smaps_stats(obs: &ObjectsObservation) -> &TierStats {
    &obs.tier
}

fn maps_test_memfd(obs: &ObjectsObservation, pid: u32) -> bool {
    obs.of_kind(ObjectKind::Memfd).any(|o| {
        o.label.lossy().contains("memscope-test-memfd") && o.shares.iter().any(|c| c.pid == pid)
    })
}

#[test]
fn anonymous_changes_never_reread_smaps_but_a_shared_mapping_does() {
    let mut tracker = ebpf_tracker();
    let mut agent = Agent::new();
    let mut smaps = SmapsCollector::new(
        &SmapsConfig {
            min_object_pss: ByteSize(0),
            max_staleness: Interval(Duration::from_secs(600)),
            // Residency moves must not trigger reads: only marks.
            min_change: ByteSize(1 << 30),
            budget: Interval(UNBOUNDED_BUDGET),
            ..SmapsConfig::default()
        },
        agent.events.subscribe(),
    );
    let mut child = TestChild::spawn(CHILD);
    let pid = child.pid();
    agent.settle(&mut tracker, &[pid]);
    let obs = agent.tick(&mut tracker, &mut smaps, 0);
    assert_eq!(smaps.reads_of(pid), Some(1), "read as new");
    let overflows = |obs: &ObjectsObservation| {
        smaps_stats(obs)
            .rereads
            .get("overflow")
            .copied()
            .unwrap_or(0)
    };
    let mut overflow = overflows(&obs);
    let mut expected = 1;
    let mut clean_ticks = 0;
    // Churn at the default min_change (64 KiB mapped, touched, unmapped), then 1 MiB kept: the
    // first is below the rollup tier's threshold, the second a rollup (ANON) mark only, and
    // neither may cost a smaps read (nor may the virtual size that moved).
    for n in 1..=3 {
        for _ in 0..20 {
            child.command("churn");
        }
        child.command("anon");
        let obs = agent.tick(&mut tracker, &mut smaps, n);
        if overflows(&obs) > overflow {
            // The kernel side lost marks or events (a host running thousands of other processes
            // fills the ring buffer while a tick reads them all): every process is re-read as
            // `overflow`, this child too, as it should be. Count from here.
            eprintln!("tick {n}: the tracker overflowed; {:?}", smaps_stats(&obs));
            overflow = overflows(&obs);
            expected = smaps.reads_of(pid).unwrap_or(0);
            continue;
        }
        clean_ticks += 1;
        assert_eq!(
            smaps.reads_of(pid),
            Some(expected),
            "anonymous changes re-read smaps (tick {n}): {:?}",
            smaps_stats(&obs)
        );
    }
    assert!(
        clean_ticks > 0,
        "the tracker overflowed at every tick, so nothing was tested (a host this busy cannot run the lane)"
    );
    // A shared mapping: re-read at the next tick (once, whether for its mark or an overflow).
    child.command("memfd");
    let obs = agent.tick(&mut tracker, &mut smaps, 4);
    assert_eq!(
        smaps.reads_of(pid),
        Some(expected + 1),
        "{:?}",
        smaps_stats(&obs)
    );
    assert!(maps_test_memfd(&obs, pid));
}

#[test]
fn dirty_child_is_reread_next_tick_and_idle_child_only_when_stale() {
    let mut tracker = ebpf_tracker();
    let mut agent = Agent::new();
    let max_staleness = staleness_for_host(Duration::from_secs(3));
    // Residency moves of the children must not trigger reads: only marks and staleness.
    let mut smaps = marks_and_staleness_only(&agent, max_staleness);
    let idle = TestChild::spawn(CHILD);
    let mut busy = TestChild::spawn(CHILD);
    agent.settle(&mut tracker, &[idle.pid(), busy.pid()]);
    let started = Instant::now();
    let obs = agent.tick(&mut tracker, &mut smaps, 0);
    // The idle child was read during tick 0 (between `started` and now), and a tick re-reads a
    // number that would pass its deadline within twice the run's length: the windows below allow
    // for both (on a quiet host they are milliseconds).
    let first_tick = started.elapsed();
    let mut longest = first_tick;
    assert!(!maps_test_memfd(&obs, busy.pid()));
    assert_eq!(smaps.reads_of(idle.pid()), Some(1));
    assert_eq!(smaps.reads_of(busy.pid()), Some(1));

    // The busy child maps a memfd: the very next tick re-reads it and shows the object.
    busy.command("memfd");
    let t = Instant::now();
    let obs = agent.tick(&mut tracker, &mut smaps, 1);
    longest = longest.max(t.elapsed());
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
        let t = Instant::now();
        agent.tick(&mut tracker, &mut smaps, n);
        longest = longest.max(t.elapsed());
        n += 1;
        if started.elapsed() + 2 * longest < deadline {
            assert_eq!(
                smaps.reads_of(idle.pid()),
                Some(1),
                "idle child re-read after {:?} (deadline {deadline:?})",
                started.elapsed()
            );
        }
    }
    // The first deadline is anywhere in (0, max_staleness] (spread by pid); the next one is a
    // full max_staleness after the re-read, so up to 600 ms past the first (plus the first tick,
    // which may read the whole host) there is exactly one.
    let last = loop {
        std::thread::sleep(Duration::from_millis(250));
        let t = Instant::now();
        let obs = agent.tick(&mut tracker, &mut smaps, n);
        longest = longest.max(t.elapsed());
        n += 1;
        if started.elapsed() >= deadline + first_tick + Duration::from_millis(600) {
            break obs;
        }
    };
    assert_eq!(
        smaps.reads_of(idle.pid()),
        Some(2),
        "re-read once for staleness after {:?} (deadline {deadline:?})",
        started.elapsed()
    );
    let stats = smaps_stats(&last);
    assert!(stats.rereads.get("stale").copied().unwrap_or(0) >= 1);
    assert!(
        u128::from(stats.oldest_read_age_ms)
            <= max_staleness.as_millis() + longest.as_millis() + 600,
        "no number older than max_staleness (+ one tick): {stats:?}"
    );
}

/// Waits until the agent has written `n` complete emissions to `path` (its `agent` lines).
fn wait_for_emissions(path: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("\"kind\":\"agent\""))
                    .count()
            })
            .unwrap_or(0);
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} emissions in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the agent daemon with the eBPF tracker required while `during` runs (it gets the output
/// path), then for two more emissions; returns its lines.
fn run_daemon(during: impl FnOnce(&std::path::Path) + Send + 'static) -> Vec<Value> {
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
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let helper = std::thread::spawn({
        let path = path.clone();
        move || {
            during(&path);
            let before = std::fs::read_to_string(&path)
                .map(|t| {
                    t.lines()
                        .filter(|l| l.contains("\"kind\":\"agent\""))
                        .count()
                })
                .unwrap_or(0);
            wait_for_emissions(&path, before + 2);
            let _ = done_tx.send(());
        }
    });
    rt.block_on(memscope_agent::runtime::run(
        config,
        sink,
        false,
        async move {
            let _ = done_rx.await;
        },
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
fn short_lived_child_is_counted_in_the_next_snapshot_not_listed() {
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = run_daemon(move |out| {
        // Start after the first emission, live for a moment, exit well before the next tick.
        wait_for_emissions(out, 1);
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
    // It never lived through a tick: no process record was ever sent for it, so no exit record
    // either (it would name a process the reader never saw) ...
    assert!(
        !lines
            .iter()
            .any(|l| matches!(l["kind"].as_str(), Some("process" | "exit"))
                && l["pid"].as_u64() == Some(pid)),
        "no record names {pid}"
    );
    // ... but a snapshot after the first counts it (and any other process of the host that did
    // the same meanwhile).
    let unseen: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "snapshot" && l["seq"].as_u64() > Some(0))
        .filter_map(|l| l["unseen_exits"].as_u64())
        .sum();
    assert!(unseen >= 1, "unseen_exits counted {unseen}");
}

#[test]
fn known_process_exit_carries_its_last_numbers() {
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = run_daemon(move |out| {
        let child = TestChild::spawn(CHILD);
        let pid = child.pid();
        let _ = tx.send(pid);
        // Lives until its figures were sent, then exits (EOF on stdin) between ticks.
        let sent = format!("\"pid\":{pid},");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(out).is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains("\"kind\":\"process\"") && l.contains(&sent))
        }) {
            assert!(Instant::now() < deadline, "no process record for {pid}");
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// A pid namespace of its own (`unshare --pid --fork --mount-proc`), where the test decides which
/// pid the next process gets (`ns_last_pid`), seen from the host through `/proc/<unshare>/root/proc`.
/// Driven by lines on stdin; killed (with everything in it) on drop.
struct PidNamespace {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl PidNamespace {
    /// `start PID CMD…`: waits for the process at PID to exit (if any), makes PID the next pid,
    /// starts CMD in the background with its stdout to a FIFO, and answers its pid and its first
    /// line of output.
    fn new() -> PidNamespace {
        require_root("ladder");
        let dir = tempfile::tempdir().expect("tempdir");
        let script = r#"
            fifo="$1"
            while read -r cmd pid rest; do
                case "$cmd" in
                start)
                    if [ -n "${p:-}" ]; then kill "$p"; wait "$p" 2>/dev/null || true; fi
                    echo $((pid - 1)) > /proc/sys/kernel/ns_last_pid
                    $rest > "$fifo" &
                    p=$!
                    read -r first < "$fifo"
                    echo "$p $first"
                    ;;
                esac
            done
        "#;
        let fifo = dir.path().join("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "bash",
                "-c",
            ])
            .arg(script)
            .arg("bash")
            .arg(&fifo)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        PidNamespace {
            child,
            stdin,
            stdout,
            _dir: dir,
        }
    }

    /// A proc root for the collectors: `pid` of the namespace (whichever process has it when a
    /// path is opened) and the host's `self` (the namespace's `self` means nothing to the test).
    fn proc_root(&self, pid: u32) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let ns_proc = format!("/proc/{}/root/proc", self.child.id());
        std::os::unix::fs::symlink(
            format!("{ns_proc}/{pid}"),
            root.path().join(pid.to_string()),
        )
        .expect("symlink pid");
        std::os::unix::fs::symlink("/proc/self", root.path().join("self")).expect("symlink self");
        root
    }

    /// Starts `command` as `pid` (ending the previous one first); returns its first output line.
    fn start(&mut self, pid: u32, command: &str) -> String {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.stdin, "start {pid} {command}").expect("write to the namespace");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        let (got, first) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        assert_eq!(got, pid.to_string(), "the namespace gave another pid");
        first.to_string()
    }
}

impl Drop for PidNamespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polling mode (no tracker): a pid reused between two ticks is noticed through the kept `statm`
/// descriptor, read as `new` in both tiers, and never reported with the old process's numbers,
/// even where nothing else would make it due (huge `min_change`, long `max_staleness`).
#[test]
fn a_reused_pid_is_new_in_both_tiers_and_never_shows_the_old_numbers() {
    use memscope_agent::collectors::processes::{ProcessesCollector, ProcessesConfig};
    const PID: u32 = 100;
    let mut ns = PidNamespace::new();
    let memhog = env!("CARGO_BIN_EXE_memhog");
    assert_eq!(ns.start(PID, &format!("{memhog} anon 8388608")), "ready");

    let root = ns.proc_root(PID);
    let procfs = ProcFs::new(root.path());
    let events = ProcEvents::default();
    let quiet = |c: ByteSize| (c, Interval(Duration::from_secs(3600)));
    let (min_change, max_staleness) = quiet(ByteSize(1 << 40));
    let mut processes = ProcessesCollector::new(
        &ProcessesConfig {
            min_change,
            max_staleness,
            ..ProcessesConfig::default()
        },
        events.subscribe(),
    );
    let mut smaps = SmapsCollector::new(
        &SmapsConfig {
            min_change,
            max_staleness,
            min_object_pss: ByteSize(0),
            ..SmapsConfig::default()
        },
        events.subscribe(),
    );
    let mut files = StatmPass::files(64);
    let mut tick = |n: u64| {
        let pass = StatmPass::read(&procfs, &mut files, &mut Vec::new()).expect("statm pass");
        let ctx = CollectCtx {
            procfs: &procfs,
            tick: n,
            statm: Some(std::sync::Arc::new(pass)),
            unbounded: false,
        };
        let p = observed::<memscope_agent::collectors::processes::ProcessesObservation>(
            processes.collect(&ctx),
        )
        .unwrap_or_else(|e| panic!("processes: {e}"));
        let o = observed::<ObjectsObservation>(smaps.collect(&ctx))
            .unwrap_or_else(|e| panic!("smaps: {e}"));
        (p, o)
    };
    let (p0, o0) = tick(0);
    let old = p0
        .processes
        .iter()
        .find(|r| r.pid == PID)
        .expect("memhog reported")
        .clone();
    assert_eq!(old.name.lossy(), "memhog");
    assert!(old.memory.rss_bytes >= 8 << 20, "{old:?}");
    let old_anon = o0
        .objects
        .iter()
        .any(|o| o.key.kind() == ObjectKind::Anon && o.shares.iter().any(|c| c.pid == PID));
    assert!(old_anon, "memhog's anon memory is an object");
    let new_before = |p: &memscope_agent::collectors::processes::ProcessesObservation| {
        p.tier.rereads.get("new").copied().unwrap_or(0)
    };
    let (rollup_new, smaps_new) = (
        new_before(&p0),
        o0.tier.rereads.get("new").copied().unwrap_or(0),
    );

    // The same pid, another process (with much less memory).
    assert_eq!(ns.start(PID, &format!("{memhog} anon 4096")), "ready");
    let (p1, o1) = tick(1);
    let new = p1
        .processes
        .iter()
        .find(|r| r.pid == PID)
        .expect("the new process is reported");
    // Its command line, read anew (the two may start within one clock tick, so `start_ticks`
    // alone need not differ).
    assert!(
        new.cmdline.lossy().ends_with("anon 4096") && old.cmdline.lossy().ends_with("anon 8388608"),
        "re-read, not the old record: {new:?}"
    );
    assert!(
        new.memory.rss_bytes < old.memory.rss_bytes,
        "{new:?} vs {old:?}"
    );
    assert_eq!(
        new_before(&p1),
        rollup_new + 1,
        "rollup tier: new {:?}",
        p1.tier
    );
    assert_eq!(
        o1.tier.rereads.get("new").copied().unwrap_or(0),
        smaps_new + 1,
        "smaps tier: new {:?}",
        o1.tier
    );
    assert_eq!(smaps.reads_of(PID), Some(1), "a fresh smaps history");
    let anon_of_new: u64 = o1
        .objects
        .iter()
        .flat_map(|o| o.shares.iter())
        .filter(|c| c.pid == PID)
        .map(|c| c.rss_bytes)
        .sum();
    assert!(
        anon_of_new < 8 << 20,
        "the old process's objects are gone: {anon_of_new}"
    );
}

/// A dirty map of 2 entries flooded by 8 children: the kernel drops marks, the next drain sees
/// `marks_dropped` grow, and every process is re-read with reason `overflow`, the idle ones too.
#[test]
fn lost_marks_make_every_process_due_as_overflow() {
    let mut tracker = ebpf_tracker_with(tracker::StartOptions {
        dirty_map_entries: Some(2),
        ..tracker::StartOptions::new(std::process::id())
    });
    let mut agent = Agent::new();
    let mut smaps = SmapsCollector::new(
        &SmapsConfig {
            // Only marks and overflow make anyone due; a budget that reads every process.
            min_change: ByteSize(1 << 40),
            max_staleness: Interval(Duration::from_secs(3600)),
            budget: Interval(UNBOUNDED_BUDGET),
            ..SmapsConfig::default()
        },
        agent.events.subscribe(),
    );
    let idle = TestChild::spawn(CHILD);
    let mut busy: Vec<TestChild> = (0..8).map(|_| TestChild::spawn(CHILD)).collect();
    let pids: Vec<u32> = busy
        .iter()
        .map(TestChild::pid)
        .chain([idle.pid()])
        .collect();
    agent.settle(&mut tracker, &pids);
    agent.tick(&mut tracker, &mut smaps, 0);
    assert_eq!(smaps.reads_of(idle.pid()), Some(1));
    let dropped_before = agent.last.marks_dropped;
    // A memfd mapping marks each (an anonymous page would stay below min_change).
    for child in &mut busy {
        child.command("memfd");
    }
    let obs = agent.tick(&mut tracker, &mut smaps, 1);
    assert!(
        agent.last.marks_dropped > dropped_before,
        "8 marks into a 2-entry map: some dropped ({:?})",
        agent.last
    );
    assert!(
        obs.tier.rereads.get("overflow").copied().unwrap_or(0) >= 1,
        "re-reads for overflow: {:?}",
        obs.tier
    );
    assert_eq!(
        smaps.reads_of(idle.pid()),
        Some(2),
        "the idle child, never marked, is re-read too"
    );
    for child in &busy {
        assert_eq!(
            smaps.reads_of(child.pid()),
            Some(2),
            "each busy child re-read once"
        );
    }
}

/// The shares of `pid` in the three shared objects of `s` (memfd, tmpfs, sysv).
fn shares_of<'a>(
    obs: &'a ObjectsObservation,
    s: &Sharers,
    pid: u32,
) -> Vec<&'a memscope_agent::collectors::smaps::Share> {
    let memfd = s.info["memfd_inode"].as_u64().expect("memfd inode");
    let shm = s.info["shm_inode"].as_u64().expect("shm inode");
    let shmid = s.info["shmid"].as_u64().expect("shmid");
    obs.objects
        .iter()
        .filter(|o| match &o.key {
            memscope_agent::collectors::smaps::ObjectKey::Inode { kind, inode, .. } => {
                (*kind == ObjectKind::Memfd && *inode == memfd)
                    || (*kind == ObjectKind::Tmpfs && *inode == shm)
            }
            memscope_agent::collectors::smaps::ObjectKey::Sysv { shmid: id } => *id == shmid,
            _ => false,
        })
        .flat_map(|o| o.shares.iter().filter(|c| c.pid == pid))
        .collect()
}

/// One exit among many sharers re-reads none of the others: their shares are derived (flagged),
/// equal to what smaps says to the kernel's kB rounding; staleness later re-reads them exactly.
#[test]
fn one_exit_among_sharers_derives_the_others_and_staleness_reads_them_exactly() {
    const SIZE: u64 = 8 << 20;
    const N: usize = 16;
    let mut tracker = ebpf_tracker();
    let mut agent = Agent::new();
    // Three times the host's scale: tick 0 reads the whole host, and a sharer whose first
    // deadline falls within twice that tick is left out of the exit's check below, so on a host
    // with thousands of other processes most sharers' deadlines must still lie beyond it.
    let max_staleness = 3 * staleness_for_host(Duration::from_secs(1));
    // Only the exit, its consequences and staleness may cause reads of the sharers.
    let mut smaps = marks_and_staleness_only(&agent, max_staleness);
    let sharers = Sharers::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_memhog")), SIZE, N)
        .expect("memhog shared");
    let children = sharers.children();
    assert_eq!(children.len(), N);
    agent.settle(&mut tracker, &children);
    let started = Instant::now();
    let obs = agent.tick(&mut tracker, &mut smaps, 0);
    // The sharers were read during tick 0, up to this long after `started`.
    let first_tick = started.elapsed();
    for &pid in &children {
        let shares = shares_of(&obs, &sharers, pid);
        assert_eq!(shares.len(), 3, "pid {pid} maps the three objects");
        for c in shares {
            assert_eq!(c.pss_bytes, SIZE / N as u64, "pid {pid}: 1/{N} of each");
            assert!(!c.derived);
        }
    }

    let (gone, rest) = children.split_first().expect("children");
    // SAFETY: kill(2) on a child of our child memhog; it is reaped by memhog's exit on drop.
    assert_eq!(
        unsafe { libc::kill(*gone as libc::pid_t, libc::SIGKILL) },
        0
    );
    std::thread::sleep(Duration::from_millis(200));
    let obs = agent.tick(&mut tracker, &mut smaps, 1);
    // A sharer's first staleness deadline is anywhere in (0, max_staleness] after its first read
    // (spread by pid, `ladder::stale_after`), and a tick re-reads what would pass its deadline
    // within twice the run's length: a sharer whose deadline falls in that window may be re-read
    // now for staleness. Every other one must not be re-read because of the exit.
    let due_by = started.elapsed() + 2 * first_tick.max(Duration::from_millis(250));
    let mut derived = Vec::new();
    for &pid in rest {
        if stale_after(max_staleness, pid) <= due_by {
            continue;
        }
        assert_eq!(
            smaps.reads_of(pid),
            Some(1),
            "pid {pid} is not re-read after another's exit"
        );
        let shares = shares_of(&obs, &sharers, pid);
        assert_eq!(shares.len(), 3);
        for c in shares {
            assert!(c.derived, "pid {pid}: derived");
            let want = SIZE / (N as u64 - 1);
            assert!(
                c.pss_bytes.abs_diff(want) <= 1,
                "pid {pid}: {} vs {want}",
                c.pss_bytes
            );
            derived.push((pid, c.pss_bytes));
        }
    }
    assert!(
        !derived.is_empty(),
        "every sharer was due for staleness by {due_by:?}: raise max_staleness"
    );
    assert!(obs.derived_shares as usize >= derived.len());

    // Staleness re-reads every survivor, and its figures are then read, not derived.
    let mut n = 2;
    let mut last = obs;
    while started.elapsed() < max_staleness + first_tick + Duration::from_secs(2)
        && rest.iter().any(|p| smaps.reads_of(*p) < Some(2))
    {
        std::thread::sleep(Duration::from_millis(250));
        last = agent.tick(&mut tracker, &mut smaps, n);
        n += 1;
    }
    for &pid in rest {
        assert!(
            smaps.reads_of(pid) >= Some(2),
            "pid {pid} re-read for staleness: {:?}",
            smaps.reads_of(pid)
        );
    }
    assert!(
        smaps_stats(&last)
            .rereads
            .get("stale")
            .copied()
            .unwrap_or(0)
            >= rest.len() as u64
    );
    for (pid, was) in derived {
        for c in shares_of(&last, &sharers, pid) {
            assert!(!c.derived, "pid {pid}: read again");
            // smaps rounds each mapping's PSS down to a kB.
            assert!(
                c.pss_bytes.abs_diff(was) < 1024,
                "pid {pid}: read {} vs derived {was}",
                c.pss_bytes
            );
        }
    }
}
