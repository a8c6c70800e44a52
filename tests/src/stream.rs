//! Reading recorded JSON-lines streams, and the identity of a record within one: what the pipeline
//! and fleet tests compare by.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One line of a stream file, parsed, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct Line {
    pub file: PathBuf,
    /// 1-based line number within `file`.
    pub line: usize,
    pub value: Value,
}

/// Reads a JSON-lines file. Every line must be a complete JSON object ending in `\n`: a partial
/// last line (no newline) or a line that does not parse is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    if !text.is_empty() && !text.ends_with('\n') {
        bail!(
            "{}: the last line has no newline (a partial line): {:?}",
            path.display(),
            text.rsplit('\n').next().unwrap_or("")
        );
    }
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let value: Value = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON: {l}", path.display(), i + 1))?;
            if !value.is_object() {
                bail!("{}:{}: not a JSON object: {l}", path.display(), i + 1);
            }
            Ok(Line {
                file: path.to_path_buf(),
                line: i + 1,
                value,
            })
        })
        .collect()
}

/// The files of a rotating file sink at `path`, oldest first: `path.N`, …, `path.1`, `path`.
pub fn rotated_files(path: &Path) -> Result<Vec<PathBuf>> {
    let dir = path.parent().context("sink path has no directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("sink path has no UTF-8 file name")?;
    let prefix = format!("{name}.");
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry.with_context(|| format!("{}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        numbered.push((n, entry.path()));
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

fn field(v: &Value, name: &str) -> String {
    match v.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The entity a record is about, within its kind: a process's `pid/start_ticks`, an object's `id`,
/// a tmpfs `dev`, a SysV `shmid`, a `removed` record's `entity/key`; empty for the once-per-emission
/// kinds (`snapshot`, `meminfo`, `shmem_ledger`, `agent`). A kind this function does not know is
/// identified by its whole content, so a new kind is still compared exactly, never merged.
pub fn entity(v: &Value) -> String {
    match v.get("kind").and_then(Value::as_str).unwrap_or("") {
        "process" | "exit" => format!("{}/{}", field(v, "pid"), field(v, "start_ticks")),
        "object" => field(v, "id"),
        "tmpfs" => field(v, "dev"),
        "sysv" => field(v, "shmid"),
        "removed" => format!("{}/{}", field(v, "entity"), field(v, "key")),
        "snapshot" | "meminfo" | "shmem_ledger" | "agent" => String::new(),
        _ => v.to_string(),
    }
}

/// The identity of a line in a stream: emission time, `seq`, `kind` and entity. `ts` tells apart
/// emissions with equal `seq` from two runs of the agent (seq starts again at 0 after a restart).
pub fn identity(v: &Value) -> (String, String, String, String) {
    (field(v, "ts"), field(v, "seq"), field(v, "kind"), entity(v))
}

/// Validates records against the checked-in schemas under `schema/memscope.v1/`, strictly: the
/// published schemas leave unknown fields open (a consumer keeps working when a field is added),
/// but here `unevaluatedProperties: false` is set on each record, so a field the types do not
/// declare fails.
pub struct SchemaValidator {
    by_kind: std::collections::BTreeMap<String, jsonschema::Validator>,
}

impl SchemaValidator {
    pub fn strict() -> SchemaValidator {
        let dir = crate::workspace_root()
            .join("schema")
            .join(memscope_agent::records::SCHEMA);
        let mut by_kind = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            let Some(kind) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut schema: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            schema["unevaluatedProperties"] = Value::Bool(false);
            let validator = jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", path.display()));
            by_kind.insert(kind.to_string(), validator);
        }
        assert!(!by_kind.is_empty(), "{}: no schemas", dir.display());
        SchemaValidator { by_kind }
    }

    /// Ok, or every error (path and message) in one string.
    pub fn validate(&self, record: &Value) -> Result<(), String> {
        let kind = record.get("kind").and_then(Value::as_str).unwrap_or("");
        let validator = self
            .by_kind
            .get(kind)
            .ok_or_else(|| format!("no schema for kind {kind:?}"))?;
        let errors: Vec<String> = validator
            .iter_errors(record)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn identity_tells_processes_objects_and_singletons_apart() {
        let p = json!({"kind":"process","ts":"t","seq":3,"pid":7,"start_ticks":99});
        assert_eq!(
            identity(&p),
            ("t".into(), "3".into(), "process".into(), "7/99".into())
        );
        assert_eq!(
            entity(&json!({"kind":"object","id":"memfd:0:1:5"})),
            "memfd:0:1:5"
        );
        assert_eq!(entity(&json!({"kind":"agent","pid":5})), "");
        let unknown = json!({"kind":"cgroup","path":"/a"});
        assert_eq!(entity(&unknown), unknown.to_string());
    }

    #[test]
    fn a_partial_last_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":").expect("write");
        let e = read_jsonl(&p).expect_err("partial line");
        assert!(e.to_string().contains("partial line"), "{e}");
        std::fs::write(&p, "{\"a\":1}\n").expect("write");
        assert_eq!(read_jsonl(&p).expect("whole lines").len(), 1);
    }

    #[test]
    fn rotated_files_come_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("m.jsonl");
        for f in [
            "m.jsonl",
            "m.jsonl.1",
            "m.jsonl.10",
            "m.jsonl.2",
            "m.jsonl.x",
            "other",
        ] {
            std::fs::write(dir.path().join(f), "").expect("write");
        }
        let names: Vec<String> = rotated_files(&p)
            .expect("list")
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(names, ["m.jsonl.10", "m.jsonl.2", "m.jsonl.1", "m.jsonl"]);
    }
}
