//! The host's state rebuilt from the agent's own JSON lines, in either emit mode.
//!
//! A [`Rebuilder`] takes lines one by one. A `snapshot` record opens an emission; on a keyframe
//! (every emission with `emit = "full"`, the first and then one every `keyframe_interval` with
//! `"changes"`) the state is cleared, because a keyframe sends every entity. Entity records replace
//! the entity with the same key; `delta` records (`"delta": true`, `changes` mode) patch it, and the
//! `agent` record, as JSON merge patches ([`merge_patch`]); `removed` records drop one, `exit` records drop a process (at once, between emissions, or
//! inside one), and the `agent` record closes the emission. Until the first keyframe the state is
//! marked incomplete (a stream cut in the middle of a `changes` run).
//!
//! Records are read leniently: fields this reader does not know are ignored, so records that gain
//! fields (cgroups, hugetlb, exit reasons) still read, and entities of kinds it does not know are
//! kept and counted. Each entity keeps its raw line; the renderers parse the few they show.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A name as the agent writes it: a string, or `{"text": "<lossy>", "bytes": "<base64>"}` when it
/// is not valid UTF-8.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Name {
    Text(String),
    Lossy { text: String },
}

impl Name {
    pub fn as_str(&self) -> &str {
        match self {
            Name::Text(s) | Name::Lossy { text: s } => s,
        }
    }
}

/// The few fields of a line that the rebuild and the time series need; everything else is skipped
/// while parsing (the whole record stays available as the raw line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Line {
    pub kind: String,
    pub seq: Option<u64>,
    pub ts: String,
    pub host: String,
    pub keyframe: Option<bool>,
    pub pid: Option<u64>,
    pub start_ticks: Option<u64>,
    pub name: Option<Name>,
    pub label: Option<Name>,
    pub pss_bytes: Option<u64>,
    pub id: Option<Value>,
    pub dev: Option<Value>,
    pub inode: Option<u64>,
    pub shmid: Option<Value>,
    pub path: Option<Value>,
    /// The key of a `removed` record (a SysV record's `key` is its IPC key, a number).
    pub key: Option<Value>,
    /// The kind of entity a `removed` record removes.
    pub entity: Option<String>,
    /// Why a process exited (`oom_kill`), when the agent knows.
    pub reason: Option<String>,
    pub at_once: Option<bool>,
    pub known: Option<bool>,
    /// A `delta` record (`emit = "changes"`): a JSON merge patch of the entity's record.
    pub delta: Option<bool>,
}

/// A JSON scalar as a key string (`"0:27"`, `17`).
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => o.get("text").and_then(key_text),
        _ => None,
    }
}

impl Line {
    /// Parses one line; `None` for a line that is not a JSON object of the expected shape.
    pub fn parse(text: &str) -> Option<Line> {
        serde_json::from_str(text).ok()
    }

    /// The entity's identity within its kind, as the agent keys it (the `key` of a `removed`
    /// record): a process's pid, an object's `id`, a tmpfs `dev`, a memfd's `dev/inode`, a SysV
    /// `shmid`; singletons (`meminfo`, `shmem_ledger`) have the empty key. Kinds this reader does
    /// not know are keyed by the first of `id`, `path`, `dev`, `pid` they have.
    pub fn entity_key(&self) -> String {
        let pid = || self.pid.map(|p| p.to_string());
        let id = || self.id.as_ref().and_then(key_text);
        let dev = || self.dev.as_ref().and_then(key_text);
        let key = match self.kind.as_str() {
            "process" | "exit" => pid(),
            "object" => id(),
            "tmpfs" => dev(),
            "memfd" => dev().map(|d| format!("{d}/{}", self.inode.unwrap_or(0))),
            "sysv" => self.shmid.as_ref().and_then(key_text),
            "meminfo" | "shmem_ledger" => None,
            _ => id()
                .or_else(|| self.path.as_ref().and_then(key_text))
                .or_else(dev)
                .or_else(pid),
        };
        key.unwrap_or_default()
    }

    /// The display name: `name`, else `label`.
    pub fn display_name(&self) -> &str {
        self.name
            .as_ref()
            .or(self.label.as_ref())
            .map_or("", Name::as_str)
    }
}

/// One entity of the current state: its raw line and the fields the time series use.
#[derive(Debug, Clone)]
pub struct Entity {
    pub raw: String,
    pub name: String,
    pub pid: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub start_ticks: Option<u64>,
}

impl Entity {
    /// The whole record.
    pub fn value(&self) -> Option<Value> {
        serde_json::from_str(&self.raw).ok()
    }
}

/// A process that exited, as its `exit` record says.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub ts: String,
    pub seq: Option<u64>,
    pub pid: u64,
    pub name: String,
    /// Last PSS sent for it (none for a process that lived and died between two ticks).
    pub pss_bytes: Option<u64>,
    pub reason: Option<String>,
    pub at_once: bool,
}

impl Exit {
    pub fn is_oom_kill(&self) -> bool {
        self.reason.as_deref() == Some("oom_kill")
    }
}

/// The rebuilt state at the latest emission.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub host: String,
    /// `seq` and `ts` of the latest emission (its `snapshot` record).
    pub seq: Option<u64>,
    pub ts: String,
    /// False until the first keyframe: a `changes` stream read from its middle.
    pub complete: bool,
    /// The latest `snapshot` and `agent` records (raw).
    pub snapshot: Option<String>,
    pub agent: Option<String>,
    /// Entities by kind, then key.
    entities: BTreeMap<String, BTreeMap<String, Entity>>,
}

impl State {
    /// The entities of one kind, in key order.
    pub fn entities(&self, kind: &str) -> impl Iterator<Item = &Entity> {
        self.entities.get(kind).into_iter().flat_map(|m| m.values())
    }

    /// The entities of one kind, parsed.
    pub fn values(&self, kind: &str) -> Vec<Value> {
        self.entities(kind).filter_map(Entity::value).collect()
    }

    /// The record of a singleton kind (`meminfo`, `shmem_ledger`), parsed.
    pub fn singleton(&self, kind: &str) -> Option<Value> {
        self.entities(kind).next().and_then(Entity::value)
    }

    /// The latest `snapshot` record, parsed.
    pub fn snapshot_value(&self) -> Option<Value> {
        self.snapshot
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// Kinds with at least one entity.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.entities
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, _)| k.as_str())
    }

    fn upsert(&mut self, line: &Line, raw: &str) {
        if line.delta == Some(true) {
            let key = line.entity_key();
            let known = self
                .entities
                .get(&line.kind)
                .and_then(|m| m.get(&key))
                .map(|e| e.raw.as_str());
            // A delta for an entity not known (a stream read from its middle) is kept as it is.
            if let Some(merged) = known.and_then(|old| merge_patch(old, raw))
                && let Some(merged_line) = Line::parse(&merged)
            {
                return self.insert(&merged_line, merged);
            }
        }
        self.insert(line, raw.to_string());
    }

    fn insert(&mut self, line: &Line, raw: String) {
        let entity = Entity {
            raw,
            name: line.display_name().to_string(),
            pid: line.pid,
            pss_bytes: line.pss_bytes,
            start_ticks: line.start_ticks,
        };
        self.entities
            .entry(line.kind.clone())
            .or_default()
            .insert(line.entity_key(), entity);
    }

    fn remove(&mut self, kind: &str, key: &str) -> Option<Entity> {
        self.entities.get_mut(kind).and_then(|m| m.remove(key))
    }
}

/// What one line did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to report (an entity record applied, or an unreadable line skipped).
    Applied,
    /// An emission closed: the state is that of this emission.
    Emission,
    /// A process exited (inside an emission or at once between two).
    Exit(Exit),
    /// The line was not a record (not JSON, or no `kind`).
    Unreadable,
}

/// Rebuilds [`State`] line by line.
#[derive(Debug, Default)]
pub struct Rebuilder {
    state: State,
    open: bool,
    /// Emissions closed so far.
    pub emissions: u64,
    /// Lines that were not records.
    pub unreadable: u64,
    /// Emissions cut short (a `snapshot` before the previous emission's `agent` record).
    pub cut: u64,
}

impl Rebuilder {
    pub fn new() -> Rebuilder {
        Rebuilder::default()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn into_state(self) -> State {
        self.state
    }

    /// Applies one line (without its newline).
    pub fn push(&mut self, raw: &str) -> Step {
        let raw = raw.trim_end();
        if raw.is_empty() {
            return Step::Applied;
        }
        match Line::parse(raw) {
            Some(line) if !line.kind.is_empty() => self.apply(&line, raw),
            _ => {
                self.unreadable += 1;
                Step::Unreadable
            }
        }
    }

    /// Applies one parsed line whose raw text is `raw`.
    pub fn apply(&mut self, line: &Line, raw: &str) -> Step {
        let s = &mut self.state;
        match line.kind.as_str() {
            "snapshot" => {
                // A snapshot while one is open: the previous emission was cut short (the agent
                // stopped mid-write). It is not reported as an emission; its records stay applied
                // until the next keyframe replaces them.
                if self.open {
                    self.cut += 1;
                }
                if line.keyframe.unwrap_or(false) {
                    s.entities.clear();
                    s.complete = true;
                }
                s.seq = line.seq;
                s.ts = line.ts.clone();
                s.host = line.host.clone();
                s.snapshot = Some(raw.to_string());
                self.open = true;
                Step::Applied
            }
            "agent" => {
                let merged = match (&s.agent, line.delta) {
                    (Some(old), Some(true)) => merge_patch(old, raw),
                    _ => None,
                };
                s.agent = Some(merged.unwrap_or_else(|| raw.to_string()));
                self.open = false;
                self.emissions += 1;
                Step::Emission
            }
            "removed" => {
                if let (Some(kind), Some(key)) =
                    (line.entity.as_deref(), line.key.as_ref().and_then(key_text))
                {
                    s.remove(kind, &key);
                }
                Step::Applied
            }
            "exit" => {
                let pid = line.pid.unwrap_or(0);
                let known = s.remove("process", &pid.to_string());
                let name = match (line.display_name(), &known) {
                    ("", Some(e)) => e.name.clone(),
                    (n, _) => n.to_string(),
                };
                Step::Exit(Exit {
                    ts: line.ts.clone(),
                    seq: line.seq,
                    pid,
                    name,
                    pss_bytes: line.pss_bytes.or(known.and_then(|e| e.pss_bytes)),
                    reason: line.reason.clone(),
                    at_once: line.at_once.unwrap_or(false),
                })
            }
            _ => {
                s.upsert(line, raw);
                Step::Applied
            }
        }
    }
}

/// RFC 7386: `patch` merged into `target` (objects member by member, `null` removes a member,
/// anything else replaces).
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, Value::Object(p)) => {
            *t = Value::Object(serde_json::Map::new());
            merge(t, Value::Object(p));
        }
        (t, p) => *t = p,
    }
}

/// The record `old` (a whole line) with the `delta` record `patch` applied as a JSON merge patch
/// (RFC 7386: objects merge member by member, `null` removes a member, anything else replaces):
/// the header fields become the patch's, and the `delta` marker is dropped. `None` when either line
/// is not a JSON object.
pub fn merge_patch(old: &str, patch: &str) -> Option<String> {
    let mut target: Value = serde_json::from_str(old).ok()?;
    let mut patch: Value = serde_json::from_str(patch).ok()?;
    let (Some(_), Some(p)) = (target.as_object(), patch.as_object_mut()) else {
        return None;
    };
    p.remove("delta");
    merge(&mut target, patch);
    Some(target.to_string())
}

/// Rebuilds the state of a whole text of lines (one emission for `show`; tests).
pub fn rebuild(text: &str) -> (State, Vec<Exit>) {
    let mut r = Rebuilder::new();
    let mut exits = Vec::new();
    for line in text.lines() {
        if let Step::Exit(e) = r.push(line) {
            exits.push(e);
        }
    }
    (r.into_state(), exits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(seq: u64, keyframe: bool) -> String {
        format!(
            r#"{{"schema":"memscope.v1","kind":"snapshot","ts":"t{seq}","host":"h","seq":{seq},"mode":"changes","keyframe":{keyframe}}}"#
        )
    }
    fn agent(seq: u64) -> String {
        format!(r#"{{"schema":"memscope.v1","kind":"agent","ts":"t{seq}","host":"h","seq":{seq}}}"#)
    }
    fn proc_line(seq: u64, pid: u64, pss: u64) -> String {
        format!(
            r#"{{"schema":"memscope.v1","kind":"process","ts":"t{seq}","host":"h","seq":{seq},"pid":{pid},"name":"p{pid}","pss_bytes":{pss},"cgroup":{{"path":"/a"}},"future":[1,2]}}"#
        )
    }

    fn pss_of(s: &State) -> Vec<(String, u64)> {
        s.entities("process")
            .map(|e| (e.name.clone(), e.pss_bytes.unwrap_or(0)))
            .collect()
    }

    #[test]
    fn changes_stream_rebuilds_with_removed_and_exits() {
        let lines = [
            snap(0, true),
            proc_line(0, 1, 100),
            proc_line(0, 2, 200),
            r#"{"kind":"object","seq":0,"id":"memfd:0:1:5","label":"memfd:x","pss_bytes":7}"#.into(),
            r#"{"kind":"sysv","seq":0,"shmid":3,"key":5678}"#.into(),
            agent(0),
            // seq 1: pid 2 changed; pid 1 unchanged (not sent); the memfd object removed.
            snap(1, false),
            proc_line(1, 2, 250),
            r#"{"kind":"removed","seq":1,"entity":"object","key":"memfd:0:1:5"}"#.into(),
            r#"{"kind":"removed","seq":1,"entity":"sysv","key":"3"}"#.into(),
            agent(1),
            // At once, between emissions: pid 2 OOM-killed.
            r#"{"kind":"exit","ts":"t1b","seq":1,"pid":2,"name":"p2","pss_bytes":250,"reason":"oom_kill","at_once":true}"#.into(),
        ];
        let (state, exits) = rebuild(&lines.join("\n"));
        assert!(state.complete);
        assert_eq!(state.seq, Some(1));
        assert_eq!(pss_of(&state), [("p1".to_string(), 100)]);
        assert_eq!(state.entities("object").count(), 0);
        assert_eq!(state.entities("sysv").count(), 0);
        assert_eq!(exits.len(), 1);
        assert!(exits[0].is_oom_kill());
        assert!(exits[0].at_once);
        assert_eq!(exits[0].pss_bytes, Some(250));
    }

    #[test]
    fn keyframe_resets_and_a_cut_stream_is_incomplete() {
        let mut r = Rebuilder::new();
        for l in [snap(5, false), proc_line(5, 9, 1), agent(5)] {
            r.push(&l);
        }
        assert!(!r.state().complete, "no keyframe seen yet");
        for l in [snap(6, true), proc_line(6, 1, 10)] {
            assert_eq!(r.push(&l), Step::Applied);
        }
        assert_eq!(r.push(&agent(6)), Step::Emission);
        assert!(r.state().complete);
        assert_eq!(pss_of(r.state()), [("p1".to_string(), 10)], "pid 9 dropped");
        assert_eq!(r.emissions, 2);
        // An emission cut short (no `agent` record) is not reported; the next one is.
        for l in [snap(7, false), proc_line(7, 1, 11)] {
            assert_eq!(r.push(&l), Step::Applied);
        }
        assert_eq!(r.push(&snap(0, true)), Step::Applied);
        assert_eq!(r.push(&agent(0)), Step::Emission);
        assert_eq!((r.emissions, r.cut), (3, 1));
        assert_eq!(
            r.state().entities("process").count(),
            0,
            "keyframe cleared it"
        );
    }

    #[test]
    fn delta_records_patch_the_entity_and_the_agent_record() {
        let lines = [
            snap(0, true),
            proc_line(0, 1, 100),
            r#"{"schema":"memscope.v1","kind":"agent","ts":"t0","host":"h","seq":0,"cpu_user_us":5,"collectors":{"p":{"runs":1}}}"#.into(),
            snap(1, false),
            r#"{"schema":"memscope.v1","kind":"process","ts":"t1","host":"h","seq":1,"delta":true,"pid":1,"pss_bytes":300,"cgroup":{"path":"/b"},"future":null}"#.into(),
            r#"{"schema":"memscope.v1","kind":"agent","ts":"t1","host":"h","seq":1,"delta":true,"cpu_user_us":9}"#.into(),
        ];
        let (state, _) = rebuild(&lines.join("\n"));
        assert_eq!(
            pss_of(&state),
            [("p1".to_string(), 300)],
            "name kept, PSS patched"
        );
        let p = state.values("process").pop().expect("the process");
        assert_eq!(p["cgroup"]["path"], "/b");
        assert!(p.get("future").is_none(), "null removes a member");
        assert!(p.get("delta").is_none());
        assert_eq!(p["seq"], 1, "the header is the delta's");
        let agent: Value =
            serde_json::from_str(state.agent.as_deref().expect("agent")).expect("json");
        assert_eq!(agent["cpu_user_us"], 9);
        assert_eq!(
            agent["collectors"]["p"]["runs"], 1,
            "kept from the keyframe"
        );
    }

    #[test]
    fn unreadable_lines_are_counted_not_fatal() {
        let mut r = Rebuilder::new();
        assert_eq!(r.push("not json"), Step::Unreadable);
        assert_eq!(r.push(r#"{"no_kind":1}"#), Step::Unreadable);
        assert_eq!(r.push(""), Step::Applied);
        assert_eq!(r.unreadable, 2);
    }

    #[test]
    fn keys_match_the_agents() {
        let key = |s: &str| Line::parse(s).expect("parses").entity_key();
        assert_eq!(key(r#"{"kind":"process","pid":7}"#), "7");
        assert_eq!(key(r#"{"kind":"tmpfs","dev":"0:27"}"#), "0:27");
        assert_eq!(
            key(r#"{"kind":"memfd","dev":"0:1","inode":103}"#),
            "0:1/103"
        );
        assert_eq!(key(r#"{"kind":"sysv","shmid":0,"key":5678}"#), "0");
        assert_eq!(key(r#"{"kind":"object","id":"other:file"}"#), "other:file");
        assert_eq!(key(r#"{"kind":"meminfo","MemTotal_bytes":1}"#), "");
        assert_eq!(
            key(r#"{"kind":"cgroup","path":"/system.slice"}"#),
            "/system.slice"
        );
        let lossy =
            Line::parse(r#"{"kind":"process","pid":1,"name":{"text":"caf?","bytes":"Y2Fm6Q=="}}"#)
                .expect("parses");
        assert_eq!(lossy.display_name(), "caf?");
    }
}
