//! A synthesized recorded stream for the report's tests and benchmark, built from the agent's own
//! records over `fixtures/proc` (so every record has the real shape), moved over time:
//!
//! - a dozen long-lived processes (copies of the fixture's, renamed) whose PSS follows slow waves;
//! - `memhog`, which grows until it is OOM-killed (an `exit` at once with `"reason":"oom_kill"`),
//!   then starts again with a new pid;
//! - a short `cron-job` every 50 emissions, living 3 emissions (a plain `exit`);
//! - a process whose name is HTML (`<b>x</b>`), to check escaping;
//! - meminfo and the `Shmem` ledger moving with them.
//!
//! Emissions follow the store's rules: `full` sends everything; `changes` sends what differs from
//! the last record sent for the entity, `exit` for a process gone, `removed` for anything else
//! gone, and everything on each keyframe.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

/// Stream parameters.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub emissions: usize,
    pub interval_s: u64,
    /// `None`: `emit = "full"`; `Some(n)`: `changes` with a keyframe every n emissions.
    pub keyframe_every: Option<u64>,
    /// Small `worker-N` processes beside the named ones (a bigger host for the benchmark).
    pub extra_processes: usize,
}

const MIB: f64 = 1024.0 * 1024.0;
/// 2026-11-26T00:00:00Z.
const START_UNIX: u64 = 1_795_651_200;

fn ts(secs: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs);
    humantime_like(t)
}

/// RFC 3339 with milliseconds, UTC (the agent's format).
fn humantime_like(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A synthetic process and how its PSS moves.
struct Proc {
    pid: u64,
    name: String,
    base: f64,
    amp: f64,
    period: f64,
}

fn body_of(v: &Value) -> Value {
    let mut b = v.clone();
    if let Some(o) = b.as_object_mut() {
        for k in ["schema", "kind", "ts", "host", "seq"] {
            o.remove(k);
        }
    }
    b
}

fn with_header(kind: &str, t: &str, seq: u64, body: &Value) -> String {
    let mut o = serde_json::Map::new();
    o.insert("schema".into(), json!("memscope.v1"));
    o.insert("kind".into(), json!(kind));
    o.insert("ts".into(), json!(t));
    o.insert("host".into(), json!("synth"));
    o.insert("seq".into(), json!(seq));
    if let Some(b) = body.as_object() {
        for (k, v) in b {
            o.insert(k.clone(), v.clone());
        }
    }
    Value::Object(o).to_string()
}

/// A process record from the template: pid, name (also the command line), start ticks, memory.
fn process_record(template: &Value, pid: u64, name: &str, pss: u64) -> Value {
    let mut r = template.clone();
    r["pid"] = json!(pid);
    r["ppid"] = json!(1);
    r["name"] = json!(name);
    r["cmdline"] = json!(name);
    r["start_ticks"] = json!(pid * 3);
    set_memory(&mut r, pss);
    r
}

fn set_memory(p: &mut Value, pss: u64) {
    let o = p.as_object_mut().expect("process record is an object");
    let rss = pss + pss / 3;
    let uss = pss * 4 / 5;
    o.insert("pss_bytes".into(), json!(pss));
    o.insert("rss_bytes".into(), json!(rss));
    o.insert("uss_bytes".into(), json!(uss));
    o.insert("pss_anon_bytes".into(), json!(uss));
    o.insert("pss_file_bytes".into(), json!(pss - uss));
    o.insert("pss_shmem_bytes".into(), json!(0));
}

/// Builds the stream from the agent's records over the fixtures (`base`, one emission).
pub fn synthesize(base: &[Value], opts: &SynthOptions) -> String {
    let of_kind = |k: &str| -> Vec<Value> {
        base.iter()
            .filter(|v| v["kind"] == k)
            .map(body_of)
            .collect()
    };
    let meminfo0 = of_kind("meminfo").pop().unwrap_or_else(|| json!({}));
    let ledger0 = of_kind("shmem_ledger").pop().unwrap_or_else(|| json!({}));
    let template = of_kind("process")
        .into_iter()
        .find(|p| p["name"] == "sleep")
        .unwrap_or_else(|| json!({"kernel_thread": false, "numbers": "exact", "user": "root"}));
    let others: Vec<(&'static str, String, Value)> = ["object", "sysv", "tmpfs"]
        .iter()
        .flat_map(|k| {
            of_kind(k).into_iter().map(move |v| {
                let key = match *k {
                    "object" => v["id"].as_str().unwrap_or("").to_string(),
                    "sysv" => v["shmid"].to_string(),
                    _ => v["dev"].as_str().unwrap_or("").to_string(),
                };
                (*k, key, v)
            })
        })
        .collect();

    let names = [
        ("postgres", 420.0, 0.25, 2880.0),
        ("java", 900.0, 0.15, 4320.0),
        ("nginx", 60.0, 0.3, 720.0),
        ("redis-server", 250.0, 0.2, 1440.0),
        ("python3", 140.0, 0.4, 960.0),
        ("node", 310.0, 0.2, 2000.0),
        ("dockerd", 80.0, 0.1, 3000.0),
        ("systemd-journal", 45.0, 0.5, 600.0),
        ("sshd", 8.0, 0.1, 5000.0),
        ("<b>x</b>", 20.0, 0.2, 800.0),
        ("containerd", 55.0, 0.15, 2500.0),
        ("grafana", 120.0, 0.3, 1800.0),
    ];
    let mut procs: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(i, (name, base, amp, period))| Proc {
            pid: 1000 + i as u64 * 17,
            name: (*name).to_string(),
            base: base * MIB,
            amp: *amp,
            period: *period,
        })
        .collect();
    for k in 0..opts.extra_processes {
        procs.push(Proc {
            pid: 20_000 + k as u64,
            name: format!("worker-{k}"),
            base: (4.0 + (k % 16) as f64) * MIB,
            amp: 0.1,
            period: 700.0 + (k % 50) as f64 * 40.0,
        });
    }
    // memhog: grows 4 MiB per emission from 50 MiB; killed at 1.2 GiB (after 288 emissions), back
    // 5 emissions later with a new pid.
    let hog_limit = 1200.0 * MIB;
    let mut hog: Option<(u64, usize)> = Some((5000, 0));
    let mut next_pid = 6000;

    let mut out = String::with_capacity(opts.emissions * 6000);
    let mut sent: HashMap<(&'static str, String), String> = HashMap::new();
    let mut hog_dead_at: Option<usize> = None;
    for i in 0..opts.emissions {
        let t = START_UNIX as f64 + (i as u64 * opts.interval_s) as f64;
        let tstr = ts(t);
        let seq = i as u64;
        let keyframe = opts
            .keyframe_every
            .is_none_or(|k| seq.is_multiple_of(k.max(1)));

        // Entities of this emission: (kind, key) -> body.
        let mut now: BTreeMap<(&'static str, String), Value> = BTreeMap::new();
        let mut total_pss = 0.0;
        for p in &mut procs {
            let phase = i as f64 / p.period * std::f64::consts::TAU + p.pid as f64;
            // Quantized to 64 KiB, so unchanged processes send nothing in `changes` mode.
            let pss = (p.base * (1.0 + p.amp * phase.sin()) / 65536.0).round() * 65536.0;
            let r = process_record(&template, p.pid, &p.name, pss as u64);
            total_pss += pss;
            now.insert(("process", p.pid.to_string()), r);
        }
        if let Some((pid, born)) = hog {
            let pss = 50.0 * MIB + (i - born) as f64 * 4.0 * MIB;
            if pss >= hog_limit {
                // Killed between the previous emission and this one: eBPF sends its exit at once,
                // with its last numbers, and the store sends no second exit.
                hog = None;
                hog_dead_at = Some(i);
                if let Some(body) = sent.remove(&("process", pid.to_string())) {
                    let mut b: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    b["reason"] = json!("oom_kill");
                    b["at_once"] = json!(true);
                    let at = t - opts.interval_s as f64 / 2.0;
                    out.push_str(&with_header("exit", &ts(at), seq.saturating_sub(1), &b));
                    out.push('\n');
                }
            } else {
                let r = process_record(&template, pid, "memhog", pss as u64);
                total_pss += pss;
                now.insert(("process", pid.to_string()), r);
            }
        } else if hog_dead_at.is_some_and(|d| i >= d + 5) {
            hog = Some((next_pid, i));
            next_pid += 1;
        }
        if i % 50 < 3 && i >= 3 {
            let pid = 9000 + (i / 50) as u64;
            let r = process_record(&template, pid, "cron-job", (30.0 * MIB) as u64);
            now.insert(("process", pid.to_string()), r);
        }
        for (kind, key, v) in &others {
            now.insert((kind, key.clone()), v.clone());
        }
        let wave = (i as f64 / 500.0).sin();
        let shmem = (200.0 + 80.0 * wave).round() * MIB;
        let mut m = meminfo0.clone();
        let total = m["MemTotal_bytes"].as_f64().unwrap_or(24.0 * 1024.0 * MIB);
        let cached = 3000.0 * MIB + 400.0 * (i as f64 / 900.0).cos() * MIB;
        m["Shmem_bytes"] = json!(shmem as u64);
        m["Cached_bytes"] = json!(cached as u64);
        m["AnonPages_bytes"] = json!(total_pss as u64);
        let free = (total - total_pss - cached - 500.0 * MIB).max(0.0);
        m["MemFree_bytes"] = json!(free as u64);
        m["MemAvailable_bytes"] = json!((free + cached * 0.8) as u64);
        now.insert(("meminfo", String::new()), m);
        let mut l = ledger0.clone();
        let explained = l["explained_bytes"].as_f64().unwrap_or(0.0);
        l["shmem_bytes"] = json!(shmem as u64);
        l["unexplained_bytes"] = json!((shmem - explained) as i64);
        now.insert(("shmem_ledger", String::new()), l);

        // The emission.
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for (k, _) in now.keys() {
            *kinds.entry(k).or_default() += 1;
        }
        let mut lines = Vec::new();
        let mut next_sent = HashMap::new();
        for ((kind, key), body) in &now {
            let text = body.to_string();
            if keyframe || sent.get(&(*kind, key.clone())) != Some(&text) {
                lines.push(with_header(kind, &tstr, seq, body));
            }
            next_sent.insert((*kind, key.clone()), text);
        }
        let mut gone: Vec<_> = sent
            .drain()
            .filter(|(k, _)| !next_sent.contains_key(k))
            .collect();
        gone.sort();
        for ((kind, key), body) in gone {
            if kind == "process" {
                let b: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                lines.push(with_header("exit", &tstr, seq, &b));
            } else {
                lines.push(with_header(
                    "removed",
                    &tstr,
                    seq,
                    &json!({"entity": kind, "key": key}),
                ));
            }
        }
        sent = next_sent;
        let snapshot = json!({
            "mode": if opts.keyframe_every.is_some() { "changes" } else { "full" },
            "keyframe": keyframe,
            "interval_ms": opts.interval_s * 1000,
            "tracker": {"mode": "ebpf"},
            "entities": kinds,
            "warnings": [],
        });
        out.push_str(&with_header("snapshot", &tstr, seq, &snapshot));
        out.push('\n');
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str(&with_header(
            "agent",
            &tstr,
            seq,
            &json!({"emissions": seq + 1}),
        ));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(ts(START_UNIX as f64), "2026-11-26T00:00:00.000Z");
        assert_eq!(ts(START_UNIX as f64 + 86_399.5), "2026-11-26T23:59:59.500Z");
    }
}
