//! A `changes` stream, replayed, gives the state of a `full` stream of the same moments (within the
//! documented hysteresis): two stores, one per mode, are fed the very same collector runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use serde_json::Value;

use super::*;
use crate::{
    collectors::{
        cgroup::CgroupObservation, meminfo::MeminfoObservation, processes::ProcessesObservation,
        smaps::ObjectsObservation, sysv::SysvObservation, tmpfs::TmpfsObservation,
    },
    config::{Config, EmitMode, MinChange, MinChangeByKind},
    proc_events::ProcEvents,
    procfs::ReadCounters,
    runtime::Scheduler,
    view::state::{Rebuilder, State, Step},
};

fn store(emit: EmitMode, names: &[&'static str]) -> Store {
    super::tests::store_with(emit, 5, false, names)
}

/// A copy of a run's result (every observation type is `Clone`).
fn copy(
    result: &Result<Option<Box<dyn Observation>>, CollectError>,
) -> Result<Option<Box<dyn Observation>>, CollectError> {
    let obs = match result {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(None),
        Err(e) => return Err(CollectError::Other(e.to_string())),
    };
    macro_rules! clone_as {
        ($($t:ty),*) => {
            $(if let Some(o) = obs.downcast_ref::<$t>() {
                return Ok(Some(Box::new(o.clone())));
            })*
        };
    }
    clone_as!(
        MeminfoObservation,
        ProcessesObservation,
        ObjectsObservation,
        CgroupObservation,
        SysvObservation,
        TmpfsObservation
    );
    panic!("an observation type this test does not know: {obs:?}");
}

/// A record without its header and with no `null` members (absent and null mean the same).
fn body(raw: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.retain(|_, v| !v.is_null());
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(raw).expect("a record is JSON");
    if let Some(o) = v.as_object_mut() {
        for h in ["schema", "kind", "ts", "host", "seq", "delta"] {
            o.remove(h);
        }
    }
    strip(&mut v);
    v
}

/// Where `rebuilt` differs from `truth` beyond `th` (a `_bytes` member) or at all (any other
/// member, except the `volatile` ones, at any depth): one line per difference.
fn differences(
    path: &str,
    rebuilt: &Value,
    truth: &Value,
    th: MinChange,
    volatile: &[&str],
    out: &mut Vec<String>,
) {
    match (rebuilt, truth) {
        (Value::Object(r), Value::Object(t)) => {
            let keys: BTreeSet<&String> = r.keys().chain(t.keys()).collect();
            for k in keys {
                if volatile.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{path}.{k}");
                match (r.get(k), t.get(k)) {
                    (Some(a), Some(b)) => differences(&p, a, b, th, volatile, out),
                    (a, b) => out.push(format!("{p}: {a:?} vs {b:?}")),
                }
            }
        }
        (Value::Array(r), Value::Array(t)) if r.len() == t.len() => {
            for (i, (a, b)) in r.iter().zip(t).enumerate() {
                differences(&format!("{path}[{i}]"), a, b, th, volatile, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if path.ends_with("_bytes") => {
            let (a, b) = (a.as_i64().unwrap_or(0), b.as_i64().unwrap_or(0));
            let d = a.abs_diff(b);
            // The reader holds the value last sent (`a`); the truth may be that far from it.
            let allowed = th
                .bytes
                .0
                .max((th.percent / 100.0 * a.unsigned_abs() as f64) as u64);
            if d >= allowed && d != 0 {
                out.push(format!("{path}: {a} vs {b} (allowed {allowed})"));
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

/// Every entity of a state, by (kind, key), as its body.
fn entities(s: &State) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for kind in s.kinds().map(str::to_string).collect::<Vec<_>>() {
        for e in s.entities(&kind) {
            let v = body(&e.raw);
            let key = crate::view::state::Line::parse(&e.raw)
                .expect("parses")
                .entity_key();
            out.insert((kind.clone(), key), v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changes_stream_rebuilds_the_state_of_a_full_stream_of_the_same_moments() {
    // The host's own /proc, read as this (possibly unprivileged) user: every collector, for real.
    let mut config = Config::default();
    config.collectors.tmpfs.max_entries = crate::config::Positive(2000);
    config.agent.max_mount_namespaces = 4;
    let procfs = crate::procfs::ProcFs::new("/proc");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    // Every collector every tick.
    let scheduler = Scheduler::of_config(&config, &procfs, &ProcEvents::default(), |_| 1, None, tx);
    let names = scheduler.names();
    let mut full = store(EmitMode::Full, &names);
    let mut changes = store(EmitMode::Changes, &names);
    let (mut full_reader, mut changes_reader) = (Rebuilder::new(), Rebuilder::new());
    let (mut full_bytes, mut changes_bytes, mut deltas, mut exits) = (0, 0, 0, [0, 0]);
    // Changes the test makes itself, besides whatever the host does: memory grown by 8 MiB a tick
    // (the test's own process record moves past 1 MiB), and a child that starts and ends.
    let mut ballast: Vec<Vec<u8>> = Vec::new();
    let mut child = None;
    for tick in 0..12 {
        ballast.push(vec![1u8; 8 << 20]);
        if tick == 2 {
            child = Some(
                std::process::Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .expect("spawn sleep"),
            );
        }
        if tick == 7
            && let Some(mut c) = child.take()
        {
            c.kill().expect("kill the child");
            c.wait().expect("reap the child");
        }
        scheduler.run_tick(tick, true).await;
        while let Ok(msg) = rx.try_recv() {
            if let StoreMsg::Collected {
                collector,
                duration,
                result,
            } = msg
            {
                full.apply(collector, duration, copy(&result));
                changes.apply(collector, duration, result);
            }
        }
        let now = SystemTime::now();
        let f = full.emit(now, &SelfCost::default(), &ReadCounters::default());
        let c = changes.emit(now, &SelfCost::default(), &ReadCounters::default());
        full_bytes += f.len();
        changes_bytes += c.len();
        for (text, reader, n) in [(&f, &mut full_reader, 0), (&c, &mut changes_reader, 1)] {
            for line in std::str::from_utf8(text).expect("utf8").lines() {
                deltas += usize::from(n == 1 && line.contains(",\"delta\":true"));
                if let Step::Exit(_) = reader.push(line) {
                    exits[n] += 1;
                }
            }
        }
        let (truth, rebuilt) = (
            entities(full_reader.state()),
            entities(changes_reader.state()),
        );
        assert_eq!(
            truth.keys().collect::<Vec<_>>(),
            rebuilt.keys().collect::<Vec<_>>(),
            "tick {tick}: the same entities"
        );
        let mut diffs = Vec::new();
        for ((kind, key), t) in &truth {
            let r = &rebuilt[&(kind.clone(), key.clone())];
            let th = MinChangeByKind::default().of(kind);
            let mut d = Vec::new();
            differences("", r, t, th, delta::volatile(kind), &mut d);
            diffs.extend(d.into_iter().map(|d| format!("{kind} {key}: {d}")));
        }
        assert!(diffs.is_empty(), "tick {tick}: {diffs:#?}");
        // The agent record, patched, has every field of a whole one.
        let agent_keys = |s: &State| -> BTreeSet<String> {
            body(s.agent.as_deref().expect("an agent record"))
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            agent_keys(full_reader.state()),
            agent_keys(changes_reader.state())
        );
    }
    drop(ballast);
    assert_eq!(exits[0], exits[1], "the same exits in both streams");
    assert!(exits[1] >= 1, "the child's exit is in both streams");
    assert!(deltas > 0, "the changes stream carried delta records");
    assert!(
        changes_bytes < full_bytes,
        "changes {changes_bytes} < full {full_bytes} bytes"
    );
}
