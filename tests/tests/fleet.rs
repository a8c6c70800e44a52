//! Fleet-wide queries on a real ClickHouse engine (chDB: ClickHouse in-process, from PyPI).
//!
//! `deploy/clickhouse/schema.sql` is applied, a recorded three-host stream
//! (`fixtures/pipeline/fleet.jsonl`, see `record-fleet.sh`) is loaded through the landing table
//! as a shipper would, and every query in `deploy/clickhouse/queries/` runs. Each answer is compared
//! with the same question computed here, in Rust, straight from the stream.
//!
//! The recorded stream has no OOM kills and no losses (a healthy agent reports none), so the
//! stream is loaded a second time with a few lines changed or added (marked `synthetic` below):
//! exits with `"reason": "oom_kill"` and a `cgroup` (the form issue 8 plans), `cgroup` records
//! whose `oom_kill` counter rises, and agent records reporting dropped marks, lost events and
//! dropped lines. That way those queries are checked on a non-empty answer too.
//!
//! Needs `MEMSCOPE_CHDB_PYTHON`: a python with `chdb` importable. `cargo xtask test-pipeline`
//! installs it and sets it; without it this test fails loudly.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use memscope_tests::{stream::read_jsonl, workspace_root};
use serde_json::{Map, Value, json};

type Row = Map<String, Value>;

const QUERIES: [&str; 6] = [
    "top_processes",
    "top_objects",
    "shmem_unexplained",
    "oom_kills",
    "oom_kill_counters",
    "agent_losses",
];

/// Runs `schema.sql`, loads `stream` into `memscope.records_in`, runs every query; returns each
/// query's rows. 64-bit integers come back as JSON numbers.
const RUNNER: &str = r#"
import json, sys
from chdb import session
job = json.load(sys.stdin)
s = session.Session()
def run(sql, fmt="JSONEachRow"):
    return s.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", fmt)
for stmt in job["setup"]:
    s.query(stmt)
s.query("INSERT INTO memscope.records_in SELECT line FROM file('%s', 'LineAsString')" % job["stream"])
out = {}
for name, sql in job["queries"].items():
    try:
        text = str(run(sql))
    except Exception as e:
        sys.exit("query %s: %s" % (name, e))
    out[name] = [json.loads(l) for l in text.splitlines() if l.strip()]
out["_rows"] = json.loads(str(run("SELECT count() AS n FROM memscope.records")))["n"]
json.dump(out, sys.stdout)
"#;

fn chdb_python() -> PathBuf {
    let python = std::env::var_os("MEMSCOPE_CHDB_PYTHON")
        .map(PathBuf::from)
        .expect(
            "MEMSCOPE_CHDB_PYTHON is not set: run the fleet-query test through `cargo xtask \
         test-pipeline`, which installs chDB and sets it",
        );
    assert!(python.exists(), "{}: no such python", python.display());
    python
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The statements of `schema.sql` (split at `;` ending a line; `--` comments dropped).
fn schema_statements() -> Vec<String> {
    let text = read(&workspace_root().join("deploy/clickhouse/schema.sql"));
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs the engine over the JSON lines in `stream`.
fn engine_answers(stream: &Path) -> BTreeMap<String, Value> {
    let dir = workspace_root().join("deploy/clickhouse/queries");
    let queries: Map<String, Value> = QUERIES
        .iter()
        .map(|q| {
            let sql = read(&dir.join(format!("{q}.sql")));
            (q.to_string(), Value::String(sql.trim().to_string()))
        })
        .collect();
    let job = json!({
        "setup": schema_statements(),
        "stream": stream.display().to_string(),
        "queries": queries,
    });
    let python = chdb_python();
    let mut child = Command::new(&python)
        .args(["-c", RUNNER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(job.to_string().as_bytes())
        .expect("writing the job to chDB");
    let out = child.wait_with_output().expect("chDB runner");
    assert!(
        out.status.success(),
        "chDB failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chDB output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}
fn i(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}
/// A name or label: a string, or `{"text": lossy, "bytes": base64}` when it was not UTF-8.
fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(t)) => t.clone(),
        Some(o) => s(o, "text"),
        None => String::new(),
    }
}
/// ClickHouse's DateTime64(3) text form of an RFC 3339 UTC time: `2026-11-28 09:20:32.985`.
fn ch_time(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").trim_end_matches('Z').to_string()
}
fn row(fields: Value) -> Row {
    match fields {
        Value::Object(m) => m,
        _ => unreachable!("row() takes an object literal"),
    }
}

/// Each host's latest keyframe: (host, ts, seq) of its newest snapshot with `keyframe: true`.
fn latest_keyframes(stream: &[Value]) -> BTreeSet<(String, String, i64)> {
    let mut latest: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for v in stream {
        if s(v, "kind") == "snapshot" && v["keyframe"] == Value::Bool(true) {
            let e = latest.entry(s(v, "host")).or_default();
            if s(v, "ts") > e.0 {
                *e = (s(v, "ts"), i(v, "seq"));
            }
        }
    }
    latest
        .into_iter()
        .map(|(h, (ts, seq))| (h, ts, seq))
        .collect()
}

fn in_latest<'a>(stream: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    let latest = latest_keyframes(stream);
    stream.iter().filter(move |v| {
        s(v, "kind") == kind && latest.contains(&(s(v, "host"), s(v, "ts"), i(v, "seq")))
    })
}

fn expected_top_processes(stream: &[Value]) -> Vec<Row> {
    let mut rows: Vec<(i64, String, i64, Row)> = in_latest(stream, "process")
        .map(|v| {
            let r = row(json!({
                "host": s(v, "host"), "pid": i(v, "pid"), "name": text(v, "name"),
                "pss_bytes": i(v, "pss_bytes"), "rss_bytes": i(v, "rss_bytes"),
            }));
            (-i(v, "pss_bytes"), s(v, "host"), i(v, "pid"), r)
        })
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
    rows.into_iter().take(10).map(|r| r.3).collect()
}

fn expected_top_objects(stream: &[Value]) -> Vec<Row> {
    // (kind, label) -> (pss, hosts, mappers)
    let mut groups: BTreeMap<(String, String), (i64, BTreeSet<String>, i64)> = BTreeMap::new();
    let objects = in_latest(stream, "object").map(|v| {
        (
            s(v, "object_kind"),
            text(v, "label"),
            i(v, "pss_bytes"),
            i(v, "mappers"),
            s(v, "host"),
        )
    });
    let sysv = in_latest(stream, "sysv").map(|v| {
        let mapped = v.get("mapped").cloned().unwrap_or(Value::Null);
        (
            "sysv".to_string(),
            format!("key {}", s(v, "key_hex")),
            i(&mapped, "pss_bytes"),
            i(&mapped, "mappers"),
            s(v, "host"),
        )
    });
    for (kind, label, pss, mappers, host) in objects.chain(sysv) {
        let g = groups.entry((kind, label)).or_default();
        g.0 += pss;
        g.1.insert(host);
        g.2 += mappers;
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| (-a.1.0, &a.0).cmp(&(-b.1.0, &b.0)));
    rows.into_iter()
        .take(10)
        .map(|((kind, label), (pss, hosts, mappers))| {
            row(json!({
                "object_kind": kind, "label": label, "pss_bytes": pss,
                "hosts": hosts.len(), "mappers": mappers,
            }))
        })
        .collect()
}

fn expected_shmem_unexplained(stream: &[Value]) -> Vec<Row> {
    // (host, minute) -> (emissions, sum shmem, sum unexplained)
    let mut groups: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    for v in stream.iter().filter(|v| s(v, "kind") == "shmem_ledger") {
        let minute = format!("{}:00", &ch_time(&s(v, "ts"))[..16]);
        let g = groups.entry((s(v, "host"), minute)).or_default();
        g.0 += 1;
        g.1 += i(v, "shmem_bytes");
        g.2 += i(v, "unexplained_bytes");
    }
    groups
        .into_iter()
        .map(|((host, minute), (n, shmem, unexplained))| {
            let share = if shmem == 0 {
                0.0
            } else {
                unexplained as f64 / shmem as f64
            };
            row(json!({
                "host": host, "minute": minute, "emissions": n,
                "shmem_bytes": shmem as f64 / n as f64,
                "unexplained_bytes": unexplained as f64 / n as f64,
                "unexplained_share": share,
            }))
        })
        .collect()
}

fn expected_oom_kills(stream: &[Value]) -> Vec<Row> {
    // (host, cgroup) -> (kills, last ts, largest rss)
    let mut groups: BTreeMap<(String, String), (i64, String, i64)> = BTreeMap::new();
    for v in stream
        .iter()
        .filter(|v| s(v, "kind") == "exit" && s(v, "reason") == "oom_kill")
    {
        let g = groups.entry((s(v, "host"), s(v, "cgroup"))).or_default();
        g.0 += 1;
        g.1 = g.1.clone().max(ch_time(&s(v, "ts")));
        g.2 = g.2.max(i(v, "rss_bytes"));
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| (-a.1.0, &a.0).cmp(&(-b.1.0, &b.0)));
    rows.into_iter()
        .map(|((host, cgroup), (n, last, rss))| {
            row(json!({
                "host": host, "cgroup": cgroup, "oom_kills": n, "last_kill": last,
                "largest_victim_rss_bytes": rss,
            }))
        })
        .collect()
}

fn expected_oom_kill_counters(stream: &[Value]) -> Vec<Row> {
    // (host, cgroup) -> (min counter, max counter, last ts)
    let mut groups: BTreeMap<(String, String), (i64, i64, String)> = BTreeMap::new();
    for v in stream.iter().filter(|v| s(v, "kind") == "cgroup") {
        let Some(n) = v["events"]["oom_kill"].as_i64() else {
            continue;
        };
        let g = groups
            .entry((s(v, "host"), text(v, "path")))
            .or_insert((n, n, String::new()));
        g.0 = g.0.min(n);
        g.1 = g.1.max(n);
        g.2 = g.2.clone().max(ch_time(&s(v, "ts")));
    }
    let mut rows: Vec<_> = groups
        .into_iter()
        .filter(|(_, (lo, hi, _))| hi > lo)
        .collect();
    rows.sort_by(|a, b| (a.1.0 - a.1.1, &a.0).cmp(&(b.1.0 - b.1.1, &b.0)));
    rows.into_iter()
        .map(|((host, cgroup), (lo, hi, last))| {
            row(json!({
                "host": host, "cgroup": cgroup, "oom_kills": hi - lo,
                "oom_kill_counter": hi, "last_seen": last,
            }))
        })
        .collect()
}

fn expected_agent_losses(stream: &[Value]) -> Vec<Row> {
    let counters = ["dirty_marks_dropped", "events_lost", "lines_dropped"];
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for v in stream
        .iter()
        .filter(|v| s(v, "kind") == "agent" && counters.iter().any(|c| i(v, c) > 0))
    {
        groups.entry(s(v, "host")).or_default().push(v);
    }
    groups
        .into_iter()
        .map(|(host, recs)| {
            let max = |c: &str| recs.iter().map(|v| i(v, c)).max().unwrap_or(0);
            let times: BTreeSet<String> = recs.iter().map(|v| ch_time(&s(v, "ts"))).collect();
            let pids: BTreeSet<i64> = recs.iter().map(|v| i(v, "pid")).collect();
            row(json!({
                "host": host, "runs_with_losses": pids.len(),
                "dirty_marks_dropped": max(counters[0]), "events_lost": max(counters[1]),
                "lines_dropped": max(counters[2]),
                "first_seen": times.first(), "last_seen": times.last(),
            }))
        })
        .collect()
}

fn expected(query: &str, stream: &[Value]) -> Vec<Row> {
    match query {
        "top_processes" => expected_top_processes(stream),
        "top_objects" => expected_top_objects(stream),
        "shmem_unexplained" => expected_shmem_unexplained(stream),
        "oom_kills" => expected_oom_kills(stream),
        "oom_kill_counters" => expected_oom_kill_counters(stream),
        "agent_losses" => expected_agent_losses(stream),
        other => panic!("no independent computation for query {other}"),
    }
}

/// Equal field by field; numbers within a relative 1e-9 (averages are floats on both sides).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

fn check(stream_name: &str, stream: &[Value], answers: &BTreeMap<String, Value>) {
    assert_eq!(
        answers["_rows"],
        json!(stream.len()),
        "{stream_name}: rows loaded into memscope.records"
    );
    for q in QUERIES {
        let got: Vec<Row> = answers[q]
            .as_array()
            .unwrap_or_else(|| panic!("{q}: no answer"))
            .iter()
            .map(|r| r.as_object().cloned().expect("a row is an object"))
            .collect();
        let want = expected(q, stream);
        let ok = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| {
                g.len() == w.len()
                    && w.iter()
                        .all(|(k, wv)| g.get(k).is_some_and(|gv| same(gv, wv)))
            });
        assert!(
            ok,
            "{stream_name}: query {q}:\n engine: {}\n stream: {}",
            serde_json::to_string_pretty(&got).unwrap_or_default(),
            serde_json::to_string_pretty(&want).unwrap_or_default()
        );
        eprintln!("fleet: {stream_name}: {q}: {} row(s) agree", got.len());
    }
}

/// The recorded stream with synthetic OOM kills and losses (see the module docs).
fn with_synthetic_events(stream: &[Value]) -> Vec<Value> {
    let mut out = stream.to_vec();
    let last_agent = |out: &mut Vec<Value>, host: &str| -> usize {
        out.iter()
            .rposition(|v| s(v, "kind") == "agent" && s(v, "host") == host)
            .unwrap_or_else(|| panic!("no agent record for {host}"))
    };
    let n = last_agent(&mut out, "web-1");
    out[n]["dirty_marks_dropped"] = json!(7);
    out[n]["events_lost"] = json!(2);
    let n = last_agent(&mut out, "cache-1");
    out[n]["lines_dropped"] = json!(40);
    let template = out
        .iter()
        .find(|v| s(v, "kind") == "process" && s(v, "host") == "cache-1")
        .cloned()
        .expect("a process record of cache-1");
    let exit = |host: &str, ts: &str, pid: i64, rss: i64, reason: Option<&str>, cgroup: &str| {
        let mut e = template.clone();
        e["kind"] = json!("exit");
        e["host"] = json!(host);
        e["ts"] = json!(ts);
        e["pid"] = json!(pid);
        e["rss_bytes"] = json!(rss);
        e["at_once"] = json!(true);
        e["cgroup"] = json!(cgroup);
        if let Some(r) = reason {
            e["reason"] = json!(r);
        }
        e
    };
    let slice = "/system.slice/cache.service";
    // cgroup records: the cache service's oom_kill counter rises from 3 to 5, the web service's
    // stays at 1, and one cgroup has none.
    let cgroup = |host: &str, ts: &str, seq: i64, path: &str, oom_kill: Option<i64>| {
        json!({
            "schema": "memscope.v1", "kind": "cgroup", "ts": ts, "host": host, "seq": seq,
            "path": path, "hierarchy": "v2", "usage_bytes": 1 << 30,
            "events": { "oom": oom_kill, "oom_kill": oom_kill, "max": 0, "high": 0 },
        })
    };
    out.extend([
        cgroup("cache-1", "2026-11-28T09:20:32.985Z", 0, slice, Some(3)),
        cgroup("cache-1", "2026-11-28T09:20:35.963Z", 3, slice, Some(5)),
        cgroup(
            "web-1",
            "2026-11-28T09:20:28.424Z",
            0,
            "/system.slice/web",
            Some(1),
        ),
        cgroup(
            "web-1",
            "2026-11-28T09:20:31.398Z",
            3,
            "/system.slice/web",
            Some(1),
        ),
        cgroup("db-1", "2026-11-28T09:20:26.808Z", 3, "/", None),
    ]);
    out.extend([
        exit(
            "cache-1",
            "2026-11-28T09:20:34.100Z",
            901,
            3 << 30,
            Some("oom_kill"),
            slice,
        ),
        exit(
            "cache-1",
            "2026-11-28T09:20:35.500Z",
            902,
            2 << 30,
            Some("oom_kill"),
            slice,
        ),
        exit(
            "db-1",
            "2026-11-28T09:20:25.000Z",
            903,
            1 << 30,
            Some("oom_kill"),
            "/kubepods/pod-a",
        ),
        exit(
            "web-1",
            "2026-11-28T09:20:30.000Z",
            904,
            1 << 20,
            None,
            "/system.slice/web",
        ),
    ]);
    out
}

#[test]
fn documented_fleet_queries_agree_with_the_stream() {
    let fixture = workspace_root().join("fixtures/pipeline/fleet.jsonl");
    let recorded: Vec<Value> = read_jsonl(&fixture)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .map(|l| l.value)
        .collect();
    let hosts: BTreeSet<String> = recorded.iter().map(|v| s(v, "host")).collect();
    assert!(hosts.len() >= 3, "the fleet fixture has hosts {hosts:?}");
    // Not vacuous: the recorded stream answers the first three questions with rows.
    for q in ["top_processes", "top_objects", "shmem_unexplained"] {
        assert!(!expected(q, &recorded).is_empty(), "{q}: nothing to check");
    }
    check("recorded", &recorded, &engine_answers(&fixture));

    let synthetic = with_synthetic_events(&recorded);
    // The synthetic lines add rows to these answers (the recorded stream may have some of its
    // own: a real OOM kill in one of the host's cgroups while it was recorded).
    for q in ["oom_kills", "oom_kill_counters", "agent_losses"] {
        assert!(
            expected(q, &synthetic).len() > expected(q, &recorded).len(),
            "{q}: the synthetic lines add no row"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet-synthetic.jsonl");
    let text: String = synthetic.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check("with synthetic events", &synthetic, &engine_answers(&path));
}
