//! JSON Schemas of the records, one per kind, generated from the record types (schemars).
//!
//! A record is the common header (`schema`, `kind`, `ts`, `host`, `seq`) followed by its kind's
//! body fields; [`record_schemas`] builds each kind's schema from the header and the body type.
//! The schemas are checked in under `schema/` (`cargo xtask schema-update` rewrites them; a test
//! fails when they differ from the types). They leave unknown fields open, so a consumer that
//! validates with them keeps working when `memscope.v1` gains a field (see docs/records.md).

use std::collections::BTreeMap;

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::{
    collectors::{
        cgroup::{CgroupBody, OtherBody as OtherCgroupBody},
        meminfo::Fields,
        processes::ProcessRecord,
        smaps::{ObjectBody, OtherBody},
        sysv::SegmentBody,
        tmpfs::{OpenShmemFile, TmpfsMount},
    },
    derived::ledger::{HugetlbLedger, Ledger},
    records::SCHEMA,
    store::{AgentBody, RemovedBody, SnapshotBody},
};

/// Why a process exited, when the agent knows (`docs/records.md`, OOM kills).
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[expect(dead_code, reason = "only its schema is used")]
enum ExitReason {
    /// The kernel's OOM killer chose it.
    OomKill,
}

/// The body of an `exit` record for an OOM-killed process whose figures were never sent (written by
/// the store as text: `{"pid":N,"known":false,"at_once":true,"reason":"oom_kill"}`, or without
/// `at_once` for a kill seen before the first emission, which goes into that emission). Other
/// exits of such processes are only counted (`snapshot.unseen_exits`).
#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct UnknownExit {
    pid: u32,
    /// Always false: the agent never sent this process's numbers.
    known: bool,
    /// True when sent at once, between emissions; absent for an exit seen before the first
    /// emission (sent in it).
    #[schemars(skip_serializing_if = "std::ops::Not::not")]
    at_once: bool,
    /// `oom_kill` when the OOM killer chose it (eBPF); absent otherwise.
    #[schemars(skip_serializing_if = "Option::is_none")]
    reason: Option<ExitReason>,
}

/// What an `exit` record adds to the last `process` body sent.
#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct ExitExtra {
    /// True when sent at once, between emissions (eBPF tracker); absent when the exit was found at
    /// an emission.
    #[schemars(skip_serializing_if = "std::ops::Not::not")]
    at_once: bool,
    /// `oom_kill` when the OOM killer chose it; absent otherwise.
    #[schemars(skip_serializing_if = "Option::is_none")]
    reason: Option<ExitReason>,
    /// True when the reason is inferred from the cgroup's `oom_kill` counter (no eBPF); absent
    /// when the tracker saw the kill.
    #[schemars(skip_serializing_if = "std::ops::Not::not")]
    reason_inferred: bool,
}

/// What a `cgroup` record sent with an OOM kill's `exit` adds.
#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct CgroupExtra {
    /// True when sent at once, between emissions, with the `exit` of a process the OOM killer
    /// chose in this cgroup or below (eBPF tracker): re-read after the kill, so `events.oom_kill`
    /// counts it. Absent in emissions.
    #[schemars(skip_serializing_if = "std::ops::Not::not")]
    at_once: bool,
}

/// The kinds, in the order an emission writes them (then the ones sent on changes).
pub const KINDS: [&str; 13] = [
    "snapshot",
    "meminfo",
    "process",
    "cgroup",
    "object",
    "sysv",
    "tmpfs",
    "memfd",
    "shmem_ledger",
    "hugetlb_ledger",
    "agent",
    "exit",
    "removed",
];

/// The body schema of `kind` (a `$ref` into `generator`'s definitions, or a combination of them).
fn body(kind: &str, g: &mut SchemaGenerator) -> Value {
    let s = |schema: schemars::Schema| schema.to_value();
    match kind {
        "snapshot" => s(g.subschema_for::<SnapshotBody<'static>>()),
        "meminfo" => s(g.subschema_for::<Fields<'static>>()),
        "process" => s(g.subschema_for::<ProcessRecord>()),
        "cgroup" => json!({ "anyOf": [
            { "allOf": [
                s(g.subschema_for::<CgroupBody<'static>>()),
                s(g.subschema_for::<CgroupExtra>()),
            ]},
            s(g.subschema_for::<OtherCgroupBody>()),
        ]}),
        "object" => json!({ "anyOf": [
            s(g.subschema_for::<ObjectBody<'static>>()),
            s(g.subschema_for::<OtherBody>()),
        ]}),
        "sysv" => s(g.subschema_for::<SegmentBody<'static>>()),
        "tmpfs" => s(g.subschema_for::<TmpfsMount>()),
        "memfd" => s(g.subschema_for::<OpenShmemFile>()),
        "shmem_ledger" => s(g.subschema_for::<Ledger>()),
        "hugetlb_ledger" => s(g.subschema_for::<HugetlbLedger>()),
        "agent" => s(g.subschema_for::<AgentBody<'static>>()),
        "exit" => json!({ "anyOf": [
            { "allOf": [
                s(g.subschema_for::<ProcessRecord>()),
                s(g.subschema_for::<ExitExtra>()),
            ]},
            s(g.subschema_for::<UnknownExit>()),
        ]}),
        "removed" => s(g.subschema_for::<RemovedBody<'static>>()),
        other => unreachable!("no record type for kind {other}"),
    }
}

/// The schema of one record kind: header, then the body; definitions under `$defs`.
pub fn record_schema(kind: &str) -> Value {
    // The serialize contract: what the agent writes (a `skip_serializing_if` field is optional).
    let mut g = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let body = body(kind, &mut g);
    let defs: serde_json::Map<String, Value> = g.take_definitions(true);
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA}/{kind}.json"),
        "title": format!("memscope {kind} record ({SCHEMA})"),
        "type": "object",
        "properties": {
            "schema": { "const": SCHEMA },
            "kind": { "const": kind },
            "ts": {
                "description": "Time of the emission (an `exit` sent at once: of the exit), RFC 3339 UTC with milliseconds.",
                "type": "string",
                "format": "date-time"
            },
            "host": { "description": "`[agent] host`, or the kernel's host name.", "type": "string" },
            "seq": {
                "description": "Emission number since the agent started; every record of one emission shares it.",
                "type": "integer",
                "minimum": 0
            }
        },
        "required": ["schema", "kind", "ts", "host", "seq"],
    });
    if has_delta(kind) {
        // A `delta` record (`emit = "changes"`) is a JSON merge patch of the whole record: the same
        // fields and types, none required, and `null` for a member that went away.
        schema["properties"]["delta"] = json!({
            "description": "A JSON merge patch (RFC 7386) of the entity's last record: only its identity and the fields that moved (`emit = \"changes\"`).",
            "const": true
        });
        schema["if"] = json!({ "required": ["delta"] });
        schema["then"] = relaxed(&body);
        schema["else"] = body;
        let mut all = defs.clone();
        for (name, def) in &defs {
            all.insert(format!("{name}{DELTA_SUFFIX}"), relaxed(def));
        }
        schema["$defs"] = Value::Object(all);
    } else {
        schema["allOf"] = json!([body]);
        if !defs.is_empty() {
            schema["$defs"] = Value::Object(defs);
        }
    }
    schema
}

/// Whether `kind` has a `delta` form: the entities, and the `agent` record.
fn has_delta(kind: &str) -> bool {
    !matches!(kind, "snapshot" | "exit" | "removed")
}

const DELTA_SUFFIX: &str = "_delta";

/// `schema` as a merge patch: no member required, any member may be `null`, references to the
/// relaxed definitions. Arrays are replaced whole by a patch, so their items stay strict.
fn relaxed(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, v) in o {
                match k.as_str() {
                    "required" => {}
                    "$ref" => {
                        let r = v.as_str().unwrap_or_default();
                        out.insert(k.clone(), json!(format!("{r}{DELTA_SUFFIX}")));
                    }
                    "items" | "prefixItems" => {
                        out.insert(k.clone(), v.clone());
                    }
                    "properties" => {
                        let props = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(name, s)| {
                                        let s =
                                            json!({ "anyOf": [relaxed(s), { "type": "null" }] });
                                        (name.clone(), s)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), relaxed(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(relaxed).collect()),
        other => other.clone(),
    }
}

/// Every kind's schema, by kind.
pub fn record_schemas() -> BTreeMap<&'static str, Value> {
    KINDS.iter().map(|k| (*k, record_schema(k))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_header_and_a_body() {
        for (kind, s) in record_schemas() {
            assert_eq!(s["properties"]["kind"]["const"], kind);
            assert_eq!(s["properties"]["schema"]["const"], SCHEMA);
            assert!(
                s["allOf"][0].is_object() || s["else"].is_object(),
                "{kind}: body"
            );
        }
    }

    #[test]
    fn process_body_lists_its_fields_with_flattened_memory() {
        let s = record_schema("process");
        let def = &s["$defs"]["ProcessRecord"];
        for f in ["pid", "start_ticks", "pss_bytes", "subtree", "numbers"] {
            assert!(def["properties"][f].is_object(), "{f} in {def}");
        }
    }
}
