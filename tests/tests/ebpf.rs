//! Privileged eBPF lane: `cargo test -p memscope-tests --test ebpf`, as root.
//!
//! Every test panics with the reason when the tracker cannot run eBPF (not root, polling
//! fallback, agent built without the object): this lane never passes empty.

use std::{
    process::Command,
    sync::{LazyLock, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use memscope_agent::tracker::{self, DirtyMark, Tracker, TrackerState, reason_names};
use memscope_common::{LifecycleEvent, event_kind};
use memscope_tests::TestChild;

/// One tracker for the whole lane; tests take turns so no test drains another's marks.
static TRACKER: LazyLock<Mutex<Tracker>> = LazyLock::new(|| {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF lane must run as root (euid is {euid}); it never passes without eBPF"
    );
    let started = Instant::now();
    let tracker = tracker::start(&tracker::StartOptions::new(std::process::id()));
    eprintln!("tracker started in {:?}", started.elapsed());
    if let TrackerState::Polling { reason } = tracker.source.state() {
        panic!("the tracker fell back to polling, so the eBPF lane cannot run: {reason}");
    }
    assert!(
        tracker.events.is_some(),
        "eBPF tracker without an event channel"
    );
    Mutex::new(tracker)
});

fn tracker() -> MutexGuard<'static, Tracker> {
    match TRACKER.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

const CHILD: &str = env!("CARGO_BIN_EXE_memscope-test-child");
const TIMEOUT: Duration = Duration::from_secs(5);

fn mark_of(marks: &[DirtyMark], tgid: u32) -> Option<DirtyMark> {
    marks.iter().copied().find(|m| m.tgid == tgid)
}

/// Waits for an event matching `pred`, keeping the others seen meanwhile.
fn wait_event(
    tracker: &mut Tracker,
    seen: &mut Vec<LifecycleEvent>,
    what: &str,
    pred: impl Fn(&LifecycleEvent) -> bool,
) -> LifecycleEvent {
    let events = tracker.events.as_mut().expect("event channel");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(found) = seen.iter().find(|e| pred(e)) {
            return *found;
        }
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!(
                "no {what} event within {TIMEOUT:?} ({err}); events seen: {seen:?}; stats: {:?}",
                tracker.source.stats()
            ),
        }
    }
}

/// Spawns a test child and clears its start-up marks (the dynamic loader maps libraries: MAPPING;
/// exec: EXEC), waiting for its FORK event so its FORK mark is cleared too.
fn quiet_child(tracker: &mut Tracker) -> TestChild {
    let mut seen = Vec::new();
    let child = TestChild::spawn(CHILD);
    let pid = child.pid();
    wait_event(tracker, &mut seen, "FORK", |e| {
        e.kind == event_kind::FORK && e.tgid == pid
    });
    let _startup = tracker.source.drain();
    child
}

/// Runs `command` in a quiet child and returns its mark (None: not marked).
fn mark_after(tracker: &mut Tracker, command: &str) -> (u32, Option<DirtyMark>) {
    let mut child = quiet_child(tracker);
    child.command(command);
    let marks = tracker.source.drain();
    let pid = child.pid();
    (pid, mark_of(&marks, pid))
}

fn names(mark: Option<DirtyMark>) -> Vec<&'static str> {
    mark.map(|m| reason_names(m.reasons)).unwrap_or_default()
}

#[test]
fn a_shared_mapping_marks_mapping() {
    let mut tracker = tracker();
    let (pid, mark) = mark_after(&mut tracker, "memfd");
    let mark = mark.unwrap_or_else(|| panic!("child {pid} mapped a memfd but was not marked"));
    assert_eq!(reason_names(mark.reasons), ["mapping"], "memfd mapping");
    assert!(mark.count >= 1);
    // Drained means gone: a second drain does not return it again.
    assert_eq!(mark_of(&tracker.source.drain(), pid), None);
    assert!(tracker.source.stats().marks_received >= 1);
}

#[test]
fn shm_attach_and_detach_mark_mapping() {
    let mut tracker = tracker();
    let mut child = quiet_child(&mut tracker);
    let pid = child.pid();
    child.command("shmat");
    let attach = mark_of(&tracker.source.drain(), pid);
    assert_eq!(names(attach), ["mapping"], "shmat");
    child.command("shmdt");
    let detach = mark_of(&tracker.source.drain(), pid);
    assert_eq!(names(detach), ["mapping"], "shmdt");
}

#[test]
fn anonymous_churn_and_growth_below_min_change_do_not_mark() {
    let mut tracker = tracker();
    let mut child = quiet_child(&mut tracker);
    let pid = child.pid();
    // Start counting from a mark: what the start-up left below the threshold would add up.
    child.command("anon");
    let _counted = tracker.source.drain();
    // 64 KiB (the default min_change, not past it) mapped, touched and unmapped, 64 times.
    for _ in 0..64 {
        child.command("churn");
    }
    // One page, kept: +4 KiB, below the default 64 KiB.
    child.command("mmap");
    let mark = mark_of(&tracker.source.drain(), pid);
    assert_eq!(mark, None, "anonymous churn marked the child");
}

#[test]
fn anonymous_growth_past_min_change_marks_anon_only() {
    let mut tracker = tracker();
    let (pid, mark) = mark_after(&mut tracker, "anon");
    let mark = mark.unwrap_or_else(|| panic!("child {pid} mapped 1 MiB but was not marked"));
    assert_eq!(reason_names(mark.reasons), ["anon"], "1 MiB anonymous");
}

#[test]
fn exec_marks_exec() {
    let mut tracker = tracker();
    let mut seen = Vec::new();
    let child = TestChild::spawn(CHILD);
    let pid = child.pid();
    wait_event(&mut tracker, &mut seen, "EXEC", |e| {
        e.kind == event_kind::EXEC && e.tgid == pid
    });
    let mark = mark_of(&tracker.source.drain(), pid);
    let names = names(mark);
    assert!(names.contains(&"exec"), "{names:?}");
    assert!(
        names.contains(&"mapping"),
        "the loader maps libraries: {names:?}"
    );
}

#[test]
fn idle_child_is_not_marked() {
    let mut tracker = tracker();
    let mut seen = Vec::new();
    let child = TestChild::spawn(CHILD);
    let pid = child.pid();
    // The FORK mark is added when its event comes through the ring buffer; wait for it, then
    // clear it with the start-up marks.
    wait_event(&mut tracker, &mut seen, "FORK", |e| {
        e.kind == event_kind::FORK && e.tgid == pid
    });
    let _startup = tracker.source.drain();
    std::thread::sleep(Duration::from_millis(300));
    let marks = tracker.source.drain();
    assert_eq!(
        mark_of(&marks, child.pid()),
        None,
        "an idle child was marked dirty"
    );
}

#[test]
fn short_lived_child_sends_fork_and_exit() {
    let mut tracker = tracker();
    let mut seen = Vec::new();
    let mut child = Command::new(CHILD)
        .arg("exit")
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {CHILD}: {e}"));
    let pid = child.id();
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("waiting for {pid}: {e}"));
    assert!(status.success());
    let me = std::process::id();
    let fork = wait_event(&mut tracker, &mut seen, "FORK", |e| {
        e.kind == event_kind::FORK && e.tgid == pid
    });
    assert_eq!(fork.ptgid, me, "fork parent");
    let exit = wait_event(&mut tracker, &mut seen, "EXIT", |e| {
        e.kind == event_kind::EXIT && e.tgid == pid
    });
    assert_ne!(exit.flags, 0, "exit event says how it was decided");
}

#[test]
fn thread_creation_is_not_a_fork_event() {
    let mut tracker = tracker();
    let mut seen = Vec::new();
    // SAFETY: gettid has no preconditions.
    let tid = std::thread::spawn(|| unsafe { libc::gettid() })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
    let tid = u32::try_from(tid).unwrap_or_else(|e| panic!("tid {tid}: {e}"));
    // A process forked afterwards: once its FORK is here, the thread's would have been too.
    let mut child = Command::new(CHILD)
        .arg("exit")
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {CHILD}: {e}"));
    let pid = child.id();
    let _status = child.wait();
    wait_event(&mut tracker, &mut seen, "FORK of the process", |e| {
        e.kind == event_kind::FORK && e.tgid == pid
    });
    assert!(
        !seen
            .iter()
            .any(|e| e.kind == event_kind::FORK && e.tgid == tid),
        "thread {tid} reported as a forked process: {seen:?}"
    );
}

#[test]
fn agent_own_mmaps_are_not_marked() {
    let mut tracker = tracker();
    let _before = tracker.source.drain();
    for _ in 0..100 {
        memscope_tests::mmap_munmap_pair().expect("mmap+munmap");
    }
    // A shared mapping would be MAPPING in any other process.
    const SIZE: usize = 1 << 20;
    let (fd, start) = memscope_tests::map_memfd(c"memscope-own-memfd", SIZE).expect("memfd");
    // SAFETY: the mapping just made, unmapped whole; nothing refers to it.
    let rc = unsafe { libc::munmap(start.as_ptr().cast(), SIZE) };
    assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
    drop(fd);
    let marks = tracker.source.drain();
    assert_eq!(
        mark_of(&marks, std::process::id()),
        None,
        "the agent's own mmaps were marked"
    );
}

fn memlock() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: starting the tracker lifts it
/// (unlimited with CAP_SYS_RESOURCE, else the soft limit up to the hard one).
#[test]
fn memlock_limit_is_lifted_before_loading() {
    let _lane = tracker();
    let before = memlock();
    let lowered = libc::rlimit {
        rlim_cur: 4096.min(before.rlim_max),
        rlim_max: before.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own; lowering the soft limit needs no privilege.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lowered) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    let second = tracker::start(&tracker::StartOptions::new(std::process::id()));
    assert!(matches!(second.source.state(), TrackerState::Ebpf));
    let after = memlock();
    assert!(
        after.rlim_cur == libc::RLIM_INFINITY || after.rlim_cur == before.rlim_max,
        "soft RLIMIT_MEMLOCK {} (hard {}), lowered to {} before the start",
        after.rlim_cur,
        after.rlim_max,
        lowered.rlim_cur
    );
}

/// `uptime_ms` counts from process start, so the first emission's uptime covers the eBPF load
/// (`tracker.load_ms`) and, after it, the first tick's collector runs (the first run of each has no
/// deadline, so the emission waits for all of them). With the clock started after the load, as it
/// once was, uptime falls short of the sum by the load time.
#[test]
fn uptime_at_the_first_emission_includes_the_ebpf_load() {
    use std::io::BufRead as _;
    memscope_tests::require_root("eBPF");
    let mut agent = Command::new(memscope_tests::agent_bin())
        .args(["--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the agent");
    let stdout = agent.stdout.take().expect("piped stdout");
    let first_agent_record = std::io::BufReader::new(stdout)
        .lines()
        .map(|l| l.expect("reading the agent's stdout"))
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).expect("a JSON line"))
        .find(|v| v["kind"] == "agent");
    let _ = agent.kill();
    let _ = agent.wait();
    let rec = first_agent_record.expect("the agent ended before its first `agent` record");
    assert_eq!(rec["tracker"]["mode"], "ebpf", "{rec}");
    let load_ms = rec["tracker"]["load_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tracker.load_ms: {rec}"));
    let uptime_ms = rec["uptime_ms"].as_u64().expect("uptime_ms");
    let longest_run_ms = rec["collectors"]
        .as_object()
        .expect("collectors")
        .values()
        .filter_map(|c| c["last_duration_us"].as_u64())
        .max()
        .expect("no collector ran")
        / 1000;
    // Both figures are truncated to whole milliseconds: allow one for each.
    assert!(
        uptime_ms + 2 >= load_ms + longest_run_ms,
        "uptime {uptime_ms} ms < eBPF load {load_ms} ms + longest first run {longest_run_ms} ms"
    );
}
