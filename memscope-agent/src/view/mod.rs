//! The view for a person: `memscope-agent show` (tables of one collection) and `memscope-agent
//! report` (one self-contained HTML file from a recorded stream).
//!
//! Both are thin readers of the same JSON lines the agent sends to its sink: `show` runs the
//! agent's one-shot path (`--once`) into an in-memory sink and reads those lines back; `report`
//! reads a recorded stream. [`state`] rebuilds the host's state from the lines in either emit mode;
//! [`table`] and [`report`] only render it.

pub mod report;
pub mod state;
pub mod table;
pub mod treemap;

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use serde_json::Value;

use crate::{
    config::{Config, EmitMode},
    sinks::{Sink, WriterSink},
};

/// Runs one collection (the `--once` path: every process read, polling tracker) and returns the
/// emitted lines. The configured sink is not used: the lines stay in memory. Call it inside a
/// multi-threaded tokio runtime.
pub async fn collect_once(mut config: Config) -> anyhow::Result<Vec<u8>> {
    // `show` needs the whole state, whatever the configured emit mode.
    config.output.emit = EmitMode::Full;
    let buf = SharedBuf::default();
    let sink = Sink::Writer(WriterSink::new(Box::new(buf.clone())));
    crate::runtime::run(config, sink, true, std::future::pending()).await?;
    Ok(buf.take())
}

/// An in-memory async writer that the caller can read after the writer was moved away.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl tokio::io::AsyncWrite for SharedBuf {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A size for people: `0 B`, `512 B`, `4.0 KiB`, `12.2 MiB`, `1.5 GiB` (binary units, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A signed size (the ledger's remainder can be negative).
pub fn human_bytes_signed(bytes: i64) -> String {
    if bytes < 0 {
        format!("-{}", human_bytes(bytes.unsigned_abs()))
    } else {
        human_bytes(bytes.unsigned_abs())
    }
}

/// A field as u64 (absent, null or not a number: none).
pub fn field_u64(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// A field as text: a string, or the `text` of a non-UTF-8 name, or a number.
pub fn field_text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(value_text)
}

/// A JSON value as text: a string, a lossy name's `text`, a number or a bool.
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Who a process belongs to, when its record says (records gain `container` and `cgroup` fields
/// from the cgroup collector): the container (runtime and short id, or its name), else the
/// cgroup path. Accepts a plain string or an object for either field.
pub fn owner_label(process: &Value) -> Option<String> {
    if let Some(c) = process.get("container").filter(|c| !c.is_null()) {
        if let Some(s) = value_text(c) {
            return Some(s);
        }
        let name = field_text(c, "name");
        let id = field_text(c, "id").map(|id| id.chars().take(12).collect::<String>());
        let runtime = field_text(c, "runtime");
        let label = match (name, runtime, id) {
            (Some(n), _, _) => Some(n),
            (None, Some(r), Some(i)) => Some(format!("{r}:{i}")),
            (None, None, Some(i)) => Some(i),
            (None, Some(r), None) => Some(r),
            (None, None, None) => None,
        };
        if label.is_some() {
            return label;
        }
    }
    let cg = process.get("cgroup").filter(|c| !c.is_null())?;
    value_text(cg).or_else(|| field_text(cg, "path"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(12_752_896), "12.2 MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(25_276_502_016), "23.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_bytes_signed(-2048), "-2.0 KiB");
    }

    #[test]
    fn owner_from_container_or_cgroup() {
        let c = json!({"container": {"runtime": "docker", "id": "0123456789abcdef0123"}});
        assert_eq!(owner_label(&c).as_deref(), Some("docker:0123456789ab"));
        let n = json!({"container": {"name": "web-1"}, "cgroup": "/x"});
        assert_eq!(owner_label(&n).as_deref(), Some("web-1"));
        let p = json!({"cgroup": {"path": "/system.slice/ssh.service"}});
        assert_eq!(
            owner_label(&p).as_deref(),
            Some("/system.slice/ssh.service")
        );
        assert_eq!(owner_label(&json!({"container": null})), None);
    }
}
