//! The store over collector runs, as the store task drives it.

use std::time::{Duration, SystemTime};

use super::*;
use crate::{
    collectors::processes::{Memory, Numbers, ProcessRecord, ProcessesObservation, Subtree},
    procfs::escape::Name,
};
use crate::{config::EmitMode, procfs::ReadCounters};

fn store(emit: EmitMode, keyframe_every: u32) -> Store {
    store_with(emit, keyframe_every, false, &["processes"])
}

/// A store for tests: host `h`, a 10 s interval, the default hysteresis, the eBPF tracker or
/// polling, the collectors `names`.
pub(super) fn store_with(
    emit: EmitMode,
    keyframe_every: u32,
    ebpf: bool,
    names: &[&'static str],
) -> Store {
    Store::new(
        StoreConfig {
            host: "h".into(),
            emit,
            keyframe_every,
            min_change: crate::config::MinChangeByKind::default(),
            interval: Duration::from_secs(10),
            started: std::time::Instant::now(),
        },
        TrackerInfo {
            mode: if ebpf { "ebpf" } else { "polling" }.into(),
            reason: (!ebpf).then(|| "test".into()),
            load_ms: None,
        },
        names,
    )
}

fn procs(list: &[(u32, u64)]) -> Result<Option<Box<dyn Observation>>, CollectError> {
    Ok(Some(Box::new(ProcessesObservation {
        processes: list
            .iter()
            .map(|&(pid, pss)| ProcessRecord {
                pid,
                ppid: 0,
                name: Name::from("p"),
                cmdline: Name::default(),
                uid: Some(0),
                user: Some("root".into()),
                state: "S".into(),
                threads: 1,
                start_ticks: 1,
                kernel_thread: false,
                cgroup: None,
                container: None,
                unit: None,
                numbers: Numbers::Exact,
                memory: Memory {
                    pss_bytes: pss,
                    ..Memory::default()
                },
                subtree: Subtree::default(),
            })
            .collect(),
        ..ProcessesObservation::default()
    })))
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("valid JSON line"))
        .collect()
}

fn kinds(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn emit(s: &mut Store) -> Vec<serde_json::Value> {
    lines(&s.emit(
        SystemTime::UNIX_EPOCH,
        &SelfCost::default(),
        &ReadCounters::default(),
    ))
}

#[test]
fn full_mode_sends_everything_each_time_and_exits_for_the_gone() {
    let mut s = store(EmitMode::Full, 10);
    s.apply(
        "processes",
        Duration::from_millis(1),
        procs(&[(1, 10), (2, 20)]),
    );
    let a = emit(&mut s);
    assert_eq!(kinds(&a), ["snapshot", "process", "process", "agent"]);
    assert!(
        a.iter()
            .all(|r| r["seq"] == 0 && r["schema"] == "memscope.v1" && r["host"] == "h")
    );
    s.apply("processes", Duration::from_millis(1), procs(&[(1, 10)]));
    let b = emit(&mut s);
    assert_eq!(kinds(&b), ["snapshot", "process", "exit", "agent"]);
    assert_eq!(b[2]["pid"], 2);
    assert_eq!(b[2]["pss_bytes"], 20, "exit carries the last known numbers");
    assert!(b.iter().all(|r| r["seq"] == 1));
}

const MIB: u64 = 1 << 20;

#[test]
fn changes_mode_sends_only_changes_with_keyframes() {
    let mut s = store(EmitMode::Changes, 3);
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(1, 10 * MIB), (2, 20 * MIB)]),
    );
    let e0 = emit(&mut s);
    assert_eq!(kinds(&e0), ["snapshot", "process", "process", "agent"]);
    assert_eq!(e0[0]["keyframe"], true);
    assert!(
        e0[1].get("delta").is_none(),
        "a keyframe sends whole records"
    );
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(1, 10 * MIB), (2, 22 * MIB)]),
    );
    let e1 = emit(&mut s);
    assert_eq!(kinds(&e1), ["snapshot", "process", "agent"]);
    assert_eq!(e1[1]["pid"], 2);
    assert_eq!(e1[1]["delta"], true);
    assert_eq!(e1[1]["pss_bytes"], 22 * MIB);
    assert!(
        e1[1].get("name").is_none(),
        "a delta leaves out what did not move"
    );
    assert_eq!(e1[2]["delta"], true, "the agent record too");
    assert_eq!(e1[0]["keyframe"], false);
    assert_eq!(e1[0]["entities"]["process"], 2);
    assert_eq!(e1[0]["records"]["process"], 1);
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(2, 22 * MIB), (3, 30 * MIB)]),
    );
    let e2 = emit(&mut s);
    assert_eq!(kinds(&e2), ["snapshot", "process", "exit", "agent"]);
    assert_eq!(e2[1]["pid"], 3);
    assert!(e2[1].get("delta").is_none(), "a new entity is sent whole");
    assert_eq!(e2[2]["pid"], 1);
    // seq 3 is a keyframe: everything again.
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(2, 22 * MIB), (3, 30 * MIB)]),
    );
    let e3 = emit(&mut s);
    assert_eq!(kinds(&e3), ["snapshot", "process", "process", "agent"]);
    assert_eq!(e3[0]["keyframe"], true);
    assert!(e3[3].get("delta").is_none());
}

#[test]
fn hysteresis_is_measured_from_the_value_last_sent() {
    let mut s = store(EmitMode::Changes, 1000);
    let mut pss = 100 * MIB;
    s.apply("processes", Duration::ZERO, procs(&[(1, pss)]));
    emit(&mut s);
    // The default for processes: 1 MiB and 1 % of the value sent (1 MiB here). Steps of 300 KiB
    // are each within it, but add up: the fourth step is past it from the value sent.
    let mut sent_at = Vec::new();
    for step in 1..=8 {
        pss += 300 << 10;
        s.apply("processes", Duration::ZERO, procs(&[(1, pss)]));
        let e = emit(&mut s);
        if kinds(&e).contains(&"process".to_string()) {
            assert_eq!(e[1]["pss_bytes"], pss, "the value now, exactly");
            sent_at.push(step);
        }
    }
    assert_eq!(sent_at, [4, 8]);
}

#[test]
fn a_failing_collector_is_reported_and_keeps_its_last_state() {
    let mut s = store(EmitMode::Changes, 100);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10)]));
    emit(&mut s);
    s.apply(
        "processes",
        Duration::from_micros(7),
        Err(CollectError::Other("/proc: boom".into())),
    );
    let e = emit(&mut s);
    assert_eq!(kinds(&e), ["snapshot", "agent"], "no false exit");
    assert_eq!(e[0]["collectors"]["processes"]["ok"], false);
    assert_eq!(e[0]["collectors"]["processes"]["error"], "/proc: boom");
    assert_eq!(e[0]["warnings"][0], "processes: /proc: boom");
    assert_eq!(e[1]["collectors"]["processes"]["failures"], 1);
    assert_eq!(e[1]["collectors"]["processes"]["runs"], 2);
    assert_eq!(e[1]["collectors"]["processes"]["last_duration_us"], 7);
}

#[test]
fn an_exit_before_the_first_emission_follows_its_snapshot() {
    let mut s = store(EmitMode::Full, 10);
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(1, 10), (2, 20), (3, 30)]),
    );
    assert!(
        s.exit_now(2, ExitCause::Exit, SystemTime::UNIX_EPOCH)
            .is_empty(),
        "nothing is written before the first snapshot"
    );
    assert!(
        s.exit_now(3, ExitCause::OomKill, SystemTime::UNIX_EPOCH)
            .is_empty()
    );
    let e = emit(&mut s);
    assert_eq!(kinds(&e), ["snapshot", "process", "exit", "agent"]);
    assert_eq!(e[1]["pid"], 1, "the exited processes are not sent");
    assert_eq!(e[0]["unseen_exits"], 1, "pid 2: counted, not listed");
    // An OOM kill is always told, known or not.
    assert_eq!(e[2]["pid"], 3);
    assert_eq!(e[2]["known"], false, "its numbers were never sent");
    assert_eq!(e[2]["reason"], "oom_kill");
    assert!(e[2].get("pss_bytes").is_none());
    assert_eq!(e[0]["records"]["exit"], 1);
}

#[test]
fn an_exit_carries_figures_only_when_they_were_sent() {
    let mut s = store(EmitMode::Full, 10);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10)]));
    let first = emit(&mut s);
    assert!(first[0].get("unseen_exits").is_none(), "absent when 0");
    // Observed (2) but never sent: no record, even though the store holds its numbers; the
    // next snapshot counts it.
    s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 20)]));
    assert!(
        s.exit_now(2, ExitCause::Exit, SystemTime::UNIX_EPOCH)
            .is_empty()
    );
    let one = lines(&s.exit_now(1, ExitCause::Exit, SystemTime::UNIX_EPOCH));
    assert_eq!(kinds(&one), ["exit"]);
    assert_eq!(
        one[0]["pss_bytes"], 10,
        "sent before: its last sent numbers"
    );
    assert_eq!(one[0]["at_once"], true);
    assert_eq!(one[0]["seq"], 0);
    let e = emit(&mut s);
    assert_eq!(
        kinds(&e),
        ["snapshot", "agent"],
        "neither re-sent nor exited twice"
    );
    assert_eq!(e[0]["unseen_exits"], 1);
    let next = emit(&mut s);
    assert!(next[0].get("unseen_exits").is_none(), "counted once");
}

#[test]
fn late_and_skipped_runs_are_reported() {
    let mut s = store(EmitMode::Full, 10);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10)]));
    emit(&mut s);
    s.late("processes");
    let e = emit(&mut s);
    assert_eq!(
        kinds(&e),
        ["snapshot", "process", "agent"],
        "the last observation stands"
    );
    assert_eq!(e[0]["collectors"]["processes"]["late"], true);
    assert_eq!(e[2]["collectors"]["processes"]["late_runs"], 1);
    s.skipped("processes");
    s.apply("processes", Duration::ZERO, procs(&[(1, 11)]));
    let e = emit(&mut s);
    assert_eq!(
        e[1]["pss_bytes"], 11,
        "the background run's result is applied"
    );
    assert_eq!(e[2]["collectors"]["processes"]["skipped_runs"], 1);
    let e = emit(&mut s);
    assert!(e[0]["collectors"].get("processes").is_none());
}

#[test]
fn tracker_counters_and_tier_stats_reach_the_agent_record() {
    let mut s = store(EmitMode::Full, 10);
    let obs = procs(&[(1, 10)]);
    let mut obs = crate::collectors::observed::<ProcessesObservation>(obs).expect("processes");
    obs.tier.count(crate::ladder::Reason::Overflow);
    let obs: Result<Option<Box<dyn Observation>>, CollectError> = Ok(Some(Box::new(obs)));
    s.apply("processes", Duration::ZERO, obs);
    s.set_tracker_stats(TrackerStats {
        marks_received: 4,
        marks_dropped: 3,
        events_received: 2,
        events_lost: 1,
    });
    let e = emit(&mut s);
    let agent = &e[e.len() - 1];
    assert_eq!(agent["tiers"]["rollup"]["rereads"]["overflow"], 1);
    assert_eq!(agent["dirty_marks_received"], 4);
    assert_eq!(agent["dirty_marks_dropped"], 3);
    assert_eq!(agent["events_received"], 2);
    assert_eq!(agent["events_lost"], 1);
}

#[test]
fn agent_record_reports_own_cost_and_reads() {
    let mut s = store(EmitMode::Full, 1);
    let out = s.emit(
        SystemTime::UNIX_EPOCH,
        &SelfCost {
            cpu_user_us: 5,
            cpu_system_us: 6,
            rss_bytes: 7,
            max_rss_bytes: 8,
        },
        &ReadCounters::default(),
    );
    let v = lines(&out);
    let agent = &v[v.len() - 1];
    assert_eq!(agent["kind"], "agent");
    assert_eq!(agent["cpu_user_us"], 5);
    assert_eq!(agent["rss_bytes"], 7);
    assert_eq!(agent["proc_bytes_read"], 0);
    assert_eq!(agent["proc_bytes_read_by_file"]["smaps_rollup"], 0);
    assert_eq!(agent["lines_emitted"], 2);
    assert_eq!(v[0]["ts"], "1970-01-01T00:00:00.000Z");
}

#[test]
fn an_oom_kill_sends_the_exit_with_its_reason_once() {
    let mut s = store(EmitMode::Full, 10);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 20)]));
    emit(&mut s);
    let oom = lines(&s.exit_now(1, ExitCause::OomKill, SystemTime::UNIX_EPOCH));
    assert_eq!(kinds(&oom), ["exit"]);
    assert_eq!(oom[0]["reason"], "oom_kill");
    assert_eq!(oom[0]["pss_bytes"], 10, "its last sent numbers");
    assert!(
        s.exit_now(1, ExitCause::OomKill, SystemTime::UNIX_EPOCH)
            .is_empty(),
        "a repeated mark_victim sends nothing"
    );
    assert!(
        s.exit_now(1, ExitCause::Exit, SystemTime::UNIX_EPOCH)
            .is_empty(),
        "the exit event that follows sends nothing"
    );
    let plain = lines(&s.exit_now(2, ExitCause::Exit, SystemTime::UNIX_EPOCH));
    assert!(plain[0].get("reason").is_none(), "other exits: no reason");
}

#[test]
fn an_oom_kill_before_the_first_emission_keeps_its_reason() {
    let mut s = store(EmitMode::Full, 10);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 20)]));
    assert!(
        s.exit_now(2, ExitCause::OomKill, SystemTime::UNIX_EPOCH)
            .is_empty()
    );
    assert!(
        s.exit_now(2, ExitCause::Exit, SystemTime::UNIX_EPOCH)
            .is_empty()
    );
    let e = emit(&mut s);
    assert_eq!(kinds(&e), ["snapshot", "process", "exit", "agent"]);
    assert_eq!(e[2]["reason"], "oom_kill");
    assert_eq!(e[0]["records"]["exit"], 1, "one exit, not two");
}

#[tokio::test]
async fn the_store_task_stops_on_stop_while_a_sender_is_still_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = crate::config::OutputConfig {
        sink: crate::config::SinkKind::File,
        path: Some(dir.path().join("out.jsonl")),
        ..crate::config::OutputConfig::default()
    };
    let sink = crate::sinks::Sink::open(&output).expect("sink");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let late_run = tx.clone(); // a collector run still going in the background
    let task = tokio::spawn(run(
        store(EmitMode::Full, 10),
        sink,
        rx,
        crate::procfs::ProcFs::new("/nonexistent"),
    ));
    tx.send(StoreMsg::Emit).await.expect("send");
    tx.send(StoreMsg::Stop).await.expect("send");
    // A guard against a hang, not a timing assertion: without Stop the task never ends.
    let ended = tokio::time::timeout(Duration::from_secs(30), task).await;
    assert!(ended.is_ok(), "the store task ended");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
    assert_eq!(kinds(&lines(text.as_bytes())), ["snapshot", "agent"]);
    drop(late_run);
}

/// A processes observation of run `generation` that says which records are the same as in the
/// run before.
fn procs_run(
    generation: u64,
    list: &[(u32, u64)],
    unchanged: &[u32],
) -> Result<Option<Box<dyn Observation>>, CollectError> {
    let mut obs = crate::collectors::observed::<ProcessesObservation>(procs(list))
        .unwrap_or_else(|e| panic!("{e}"));
    obs.generation = generation;
    obs.unchanged = unchanged.to_vec();
    Ok(Some(Box::new(obs)))
}

/// Applies run `generation` of the processes collector and emits.
fn emit_run(
    s: &mut Store,
    generation: u64,
    list: &[(u32, u64)],
    unchanged: &[u32],
) -> Vec<serde_json::Value> {
    s.apply(
        "processes",
        Duration::ZERO,
        procs_run(generation, list, unchanged),
    );
    emit(s)
}

#[test]
fn records_the_same_as_last_emitted_are_not_built_again_between_keyframes() {
    let mut s = store(EmitMode::Changes, 4);
    let both = ["snapshot", "process", "process", "agent"];
    assert_eq!(kinds(&emit_run(&mut s, 1, &[(1, 10), (2, 20)], &[])), both);
    // Run 2 says pid 1 is unchanged, and it is: only pid 2 (moved) is built and sent.
    let b = emit_run(&mut s, 2, &[(1, 10), (2, 20 + 2 * MIB)], &[1]);
    assert_eq!(kinds(&b), ["snapshot", "process", "agent"]);
    assert_eq!(b[1]["pid"], 2);
    assert_eq!(
        b[0]["entities"]["process"], 2,
        "the unchanged one is counted"
    );
    // The proof that pid 1 was not built: a run that wrongly calls a moved record unchanged
    // sends nothing for it (the collector's word is taken).
    let c = emit_run(&mut s, 3, &[(1, 10 + 5 * MIB), (2, 20 + 2 * MIB)], &[1, 2]);
    assert_eq!(kinds(&c), ["snapshot", "agent"]);
    // No new run (late): the same observation again, nothing built, nothing gone.
    let d = emit(&mut s);
    assert_eq!(kinds(&d), ["snapshot", "agent"]);
    assert_eq!(d[0]["entities"]["process"], 2);
    // A keyframe builds everything whatever the run says.
    assert_eq!(
        kinds(&emit_run(&mut s, 4, &[(1, 10), (2, 20)], &[1, 2])),
        both
    );
    // A run that skips one (run 6 after run 4 was emitted): its flags are about run 5, which
    // was never emitted, so every record is built and compared.
    let f = emit_run(&mut s, 6, &[(1, 10 + 5 * MIB), (2, 20)], &[1, 2]);
    assert_eq!(kinds(&f), ["snapshot", "process", "agent"]);
    assert_eq!(f[1]["pid"], 1);
}

#[test]
fn an_unchanged_record_whose_exit_went_out_at_once_is_sent_whole_if_it_comes_back() {
    let mut s = store(EmitMode::Changes, 100);
    emit_run(&mut s, 1, &[(1, 10), (2, 20)], &[]);
    // The reader was told pid 2 exited; a run read just before says it is unchanged.
    s.exit_now(2, ExitCause::Exit, SystemTime::UNIX_EPOCH);
    s.exited.clear();
    let b = emit_run(&mut s, 2, &[(1, 10), (2, 20)], &[1, 2]);
    assert_eq!(kinds(&b), ["snapshot", "process", "agent"]);
    assert_eq!(b[1]["pid"], 2);
    assert!(b[1].get("delta").is_none(), "whole, as new: {}", b[1]);
}

#[test]
fn an_emissions_output_is_sized_to_its_lines_and_holds_them_once() {
    let mut s = store(EmitMode::Changes, 100);
    let many: Vec<(u32, u64)> = (1..=2000).map(|pid| (pid, 10)).collect();
    s.apply("processes", Duration::from_millis(1), procs(&many));
    let keyframe = s.emit(
        SystemTime::UNIX_EPOCH,
        &SelfCost::default(),
        &ReadCounters::default(),
    );
    assert_eq!(
        lines(&keyframe).len(),
        2002,
        "a keyframe sends every process"
    );
    // Written straight into a buffer of the counted size: no second copy of the lines, and no
    // doubling of the buffer on the way.
    assert!(
        keyframe.capacity() < keyframe.len() + keyframe.len() / 2 + 16384,
        "{} bytes of capacity for {} bytes of lines",
        keyframe.capacity(),
        keyframe.len()
    );
    // One process moved: one delta, in a buffer of a small emission's size.
    let mut moved = many.clone();
    moved[0].1 = 10 * MIB;
    s.apply("processes", Duration::from_millis(1), procs(&moved));
    let next = s.emit(
        SystemTime::UNIX_EPOCH,
        &SelfCost::default(),
        &ReadCounters::default(),
    );
    assert_eq!(kinds(&lines(&next)), ["snapshot", "process", "agent"]);
    assert!(next.capacity() < 32768, "{} bytes", next.capacity());
}

#[test]
fn exits_are_forgotten_at_the_emission_and_not_kept_without_a_processes_collector() {
    let mut s = store(EmitMode::Changes, 100);
    s.apply(
        "processes",
        Duration::ZERO,
        procs(&[(1, 10), (2, 20), (3, 30)]),
    );
    emit(&mut s);
    for pid in [2, 3] {
        assert_eq!(
            kinds(&lines(&s.exit_now(
                pid,
                ExitCause::Exit,
                SystemTime::UNIX_EPOCH
            ))),
            ["exit"]
        );
    }
    // Nothing of 2 and 3 is sent again, though the held observation still listed them.
    let e = emit(&mut s);
    assert_eq!(kinds(&e), ["snapshot", "agent"]);
    assert_eq!(e[0]["entities"]["process"], 1);
    // Kept for the next processes run, which may have read them just before they died ...
    assert_eq!(s.exited.len(), 2);
    s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 20)]));
    assert!(s.exited.is_empty());
    assert_eq!(kinds(&emit(&mut s)), ["snapshot", "agent"], "2 not back");

    // ... but with no processes collector nothing would clear them: the emission does.
    let mut s = store_with(EmitMode::Changes, 100, true, &["meminfo"]);
    for pid in 1..=1000 {
        assert!(
            s.exit_now(pid, ExitCause::Exit, SystemTime::UNIX_EPOCH)
                .is_empty()
        );
    }
    let e = emit(&mut s);
    assert_eq!(e[0]["unseen_exits"], 1000);
    assert!(s.exited.is_empty(), "{} pids kept", s.exited.len());
}
