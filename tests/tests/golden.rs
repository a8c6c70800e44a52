//! Golden end-to-end: the agent run once over `fixtures/proc`, volatile fields dropped, compared with
//! `fixtures/golden/once.jsonl`. `cargo xtask golden-update` (MEMSCOPE_UPDATE_GOLDEN=1) rewrites it.

use memscope_tests::{once_over_fixtures, workspace_root};
use serde_json::Value;

/// Removes what differs from run to run (time, the agent's own cost, durations).
fn normalize(mut v: Value) -> Value {
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    obj.remove("ts");
    match obj.get("kind").and_then(Value::as_str) {
        Some("snapshot") => {
            if let Some(cs) = obj.get_mut("collectors").and_then(Value::as_object_mut) {
                for c in cs.values_mut().filter_map(Value::as_object_mut) {
                    c.remove("duration_us");
                }
            }
        }
        Some("agent") => {
            for k in [
                "pid",
                "uptime_ms",
                "cpu_user_us",
                "cpu_system_us",
                "rss_bytes",
                "max_rss_bytes",
            ] {
                obj.remove(k);
            }
            if let Some(cs) = obj.get_mut("collectors").and_then(Value::as_object_mut) {
                for c in cs.values_mut().filter_map(Value::as_object_mut) {
                    c.remove("last_duration_us");
                }
            }
            if let Some(ts) = obj.get_mut("tiers").and_then(Value::as_object_mut) {
                for t in ts.values_mut().filter_map(Value::as_object_mut) {
                    t.remove("oldest_read_age_ms");
                }
            }
            // Timings: the phases stay listed, their values do not.
            if let Some(ps) = obj.get_mut("phases_us").and_then(Value::as_object_mut) {
                for p in ps.values_mut() {
                    *p = Value::from(0);
                }
            }
        }
        _ => {}
    }
    v
}

#[test]
fn once_over_fixtures_matches_golden() {
    let root = workspace_root();
    let lines = once_over_fixtures().expect("agent runs over fixtures");
    // Paths under the workspace (in error messages) do not depend on where it is checked out.
    let prefix = root.display().to_string();
    let got: String = lines
        .into_iter()
        .map(|l| {
            format!(
                "{}\n",
                normalize(l).to_string().replace(&prefix, "<workspace>")
            )
        })
        .collect();
    let golden = root.join("fixtures/golden/once.jsonl");
    if std::env::var_os("MEMSCOPE_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
        std::fs::write(&golden, &got).expect("write golden");
        eprintln!("updated {}", golden.display());
        return;
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask golden-update`", golden.display()));
    if got != want {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            if g != w {
                panic!(
                    "line {} differs\n got: {g}\nwant: {w}\n(run `cargo xtask golden-update` if intended)",
                    i + 1
                );
            }
        }
        panic!(
            "line counts differ: got {}, want {} (run `cargo xtask golden-update` if intended)",
            got.lines().count(),
            want.lines().count()
        );
    }
}
