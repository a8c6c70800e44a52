//! The JSON Schemas under `schema/` (one per record kind, `memscope.v1`): they must equal what the
//! record types generate (`cargo xtask schema-update`, MEMSCOPE_UPDATE_SCHEMA=1, rewrites them),
//! and every line of the golden stream and of the fleet fixture must validate against them.

use memscope_agent::{records::SCHEMA, schema::record_schemas};
use memscope_tests::{
    golden_config, run_once,
    stream::{SchemaValidator, read_jsonl},
    workspace_root,
};

#[test]
fn checked_in_schemas_match_the_record_types() {
    let dir = workspace_root().join("schema").join(SCHEMA);
    let update = std::env::var_os("MEMSCOPE_UPDATE_SCHEMA").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut stale = Vec::new();
    for (kind, schema) in record_schemas() {
        let path = dir.join(format!("{kind}.json"));
        let want = format!(
            "{}\n",
            serde_json::to_string_pretty(&schema).expect("schema serializes")
        );
        if update {
            std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "schema files differ from the record types: {stale:?}. If the record change is intended \
         and follows the versioning rule in docs/records.md, run `cargo xtask schema-update` and \
         review the diff"
    );
    // No schema file for a kind that no longer exists.
    let kinds: Vec<String> = record_schemas()
        .keys()
        .map(|k| format!("{k}.json"))
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(kinds.iter().any(|k| *k == name), "{name}: no such kind");
    }
}

fn validate_file(path: &std::path::Path) -> usize {
    let validator = SchemaValidator::strict();
    let lines = read_jsonl(path).unwrap_or_else(|e| panic!("{e:#}"));
    for l in &lines {
        if let Err(e) = validator.validate(&l.value) {
            panic!("{}:{}: {e}", l.file.display(), l.line);
        }
    }
    lines.len()
}

/// The golden run's lines as the agent writes them (the golden file drops volatile fields).
fn golden_lines() -> Vec<serde_json::Value> {
    run_once(golden_config()).expect("agent runs over fixtures")
}

#[test]
fn golden_stream_validates() {
    let validator = SchemaValidator::strict();
    let lines = golden_lines();
    for (i, v) in lines.iter().enumerate() {
        if let Err(e) = validator.validate(v) {
            panic!("golden run, line {}: {e}\n{v}", i + 1);
        }
    }
    assert!(lines.len() > 10, "only {} golden lines", lines.len());
}

#[test]
fn fleet_fixture_validates() {
    let n = validate_file(&workspace_root().join("fixtures/pipeline/fleet.jsonl"));
    assert!(n > 100, "only {n} fleet lines");
}

#[test]
fn validation_catches_a_wrong_type_a_missing_field_and_an_unknown_field() {
    let validator = SchemaValidator::strict();
    let process = golden_lines()
        .into_iter()
        .find(|v| v["kind"] == "process")
        .expect("a process record in the golden stream");
    validator
        .validate(&process)
        .expect("the record itself is valid");
    let mut wrong = process.clone();
    wrong["pss_bytes"] = serde_json::json!("12");
    assert!(
        validator.validate(&wrong).is_err(),
        "a string for pss_bytes"
    );
    let mut missing = process.clone();
    missing.as_object_mut().expect("object").remove("pid");
    assert!(validator.validate(&missing).is_err(), "no pid");
    let mut unknown = process.clone();
    unknown["pss_byte"] = serde_json::json!(1);
    assert!(validator.validate(&unknown).is_err(), "an unknown field");
    let mut kind = process;
    kind["kind"] = serde_json::json!("no_such_kind");
    assert!(validator.validate(&kind).is_err(), "an unknown kind");
}

#[test]
fn exit_records_validate() {
    let validator = SchemaValidator::strict();
    let process = golden_lines()
        .into_iter()
        .find(|v| v["kind"] == "process")
        .expect("a process record in the golden stream");
    let mut exit = process.clone();
    exit["kind"] = serde_json::json!("exit");
    // Found at an emission: the last process body as it was sent.
    validator
        .validate(&exit)
        .expect("exit found at an emission");
    // Sent at once by the eBPF tracker.
    exit["at_once"] = serde_json::json!(true);
    validator.validate(&exit).expect("exit sent at once");
    let unknown = serde_json::json!({
        "schema": "memscope.v1", "kind": "exit", "ts": process["ts"], "host": "h", "seq": 1,
        "pid": 7, "known": false, "at_once": true,
    });
    validator
        .validate(&unknown)
        .expect("exit of a process never read");
    // OOM kills: the reason (inferred without eBPF), on both forms; an exit seen before the first
    // emission has no `at_once`.
    exit["reason"] = serde_json::json!("oom_kill");
    validator.validate(&exit).expect("an OOM kill sent at once");
    if let Some(o) = exit.as_object_mut() {
        o.remove("at_once");
    }
    exit["reason_inferred"] = serde_json::json!(true);
    validator.validate(&exit).expect("an inferred OOM kill");
    for extra in [
        serde_json::json!({"reason": "oom_kill"}),
        serde_json::json!({"at_once": true, "reason": "oom_kill"}),
        serde_json::json!({}),
    ] {
        let mut early = serde_json::json!({
            "schema": "memscope.v1", "kind": "exit", "ts": process["ts"], "host": "h", "seq": 0,
            "pid": 7, "known": false,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            early[k] = v.clone();
        }
        validator
            .validate(&early)
            .unwrap_or_else(|e| panic!("{early}: {e}"));
    }
    exit["reason"] = serde_json::json!("bored");
    assert!(validator.validate(&exit).is_err(), "an unknown reason");
}

#[test]
fn delta_records_validate_as_merge_patches() {
    let validator = SchemaValidator::strict();
    let lines = golden_lines();
    let first = |kind: &str| {
        lines
            .iter()
            .find(|v| v["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} record in the golden stream"))
            .clone()
    };
    let process = first("process");
    let header = |kind: &str| {
        serde_json::json!({
            "schema": "memscope.v1", "kind": kind, "ts": process["ts"], "host": "h", "seq": 3,
            "delta": true,
        })
    };
    let mut delta = header("process");
    delta["pid"] = process["pid"].clone();
    delta["pss_bytes"] = serde_json::json!(4096);
    delta["subtree"] = serde_json::json!({ "pss_bytes": 8192 });
    delta["unit"] = serde_json::Value::Null;
    validator.validate(&delta).expect("a process delta");
    let mut agent = header("agent");
    agent["cpu_user_us"] = serde_json::json!(12);
    agent["collectors"] = serde_json::json!({ "processes": { "runs": 4 } });
    validator.validate(&agent).expect("an agent delta");
    let mut meminfo = header("meminfo");
    meminfo["MemFree_bytes"] = serde_json::json!(1);
    validator.validate(&meminfo).expect("a meminfo delta");

    let mut wrong = delta.clone();
    wrong["pss_bytes"] = serde_json::json!("4096");
    assert!(
        validator.validate(&wrong).is_err(),
        "a string for pss_bytes"
    );
    let mut unknown = delta.clone();
    unknown["pss_byte"] = serde_json::json!(1);
    assert!(validator.validate(&unknown).is_err(), "an unknown field");
    let mut not_delta = delta;
    not_delta["delta"] = serde_json::json!(false);
    assert!(
        validator.validate(&not_delta).is_err(),
        "without delta: true, a partial record is missing fields"
    );
}

#[test]
fn exits_without_figures_and_with_a_reason_validate() {
    let validator = SchemaValidator::strict();
    let header = |body: serde_json::Value| {
        let mut v = serde_json::json!({
            "schema": "memscope.v1", "kind": "exit", "ts": "2026-11-28T12:59:05.733Z",
            "host": "h", "seq": 0,
        });
        for (k, x) in body.as_object().expect("object") {
            v[k] = x.clone();
        }
        v
    };
    // An exit before the first emission goes out in it: no at_once.
    validator
        .validate(&header(serde_json::json!({"pid": 7, "known": false})))
        .expect("an early exit");
    validator
        .validate(&header(
            serde_json::json!({"pid": 7, "known": false, "reason": "oom_kill"}),
        ))
        .expect("an early OOM kill");
    let process = golden_lines()
        .into_iter()
        .find(|v| v["kind"] == "process")
        .expect("a process record in the golden stream");
    let mut exit = process;
    exit["kind"] = serde_json::json!("exit");
    exit["reason"] = serde_json::json!("oom_kill");
    exit["reason_inferred"] = serde_json::json!(true);
    validator.validate(&exit).expect("an inferred OOM kill");
}
