//! JSON-lines records.
//!
//! Every line is one JSON object for one entity:
//! `{"schema":"memscope.v1","kind":"…","ts":"2026-11-26T10:30:58.123Z","host":"…","seq":N, …}`.
//! `seq` numbers emissions; all records of one emission share it. An emission opens with a
//! `snapshot` record and closes with an `agent` record. Quantities are integers in bytes with
//! `_bytes` in the name; durations are integers with `_us`/`_ms` in the name.
//!
//! A [`Record`] holds the entity's body already serialized (the fields after the header), so the
//! store can compare bodies between emissions (`emit = "changes"`) without re-serializing.

use serde::Serialize;

pub const SCHEMA: &str = "memscope.v1";

/// One entity's record, without the common header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record kind (`process`, `meminfo`, …).
    pub kind: &'static str,
    /// Identity of the entity within its kind (a pid, an object key); empty for singletons.
    pub key: String,
    /// The body fields as a JSON object *without* its braces (`"pid":1,"name":"init"`); may be empty.
    pub body: String,
}

impl Record {
    /// Serializes `body` (which must serialize to a JSON object) into a record: straight from the
    /// typed value into a buffer reused across records (one per thread), then one allocation for
    /// the body.
    pub fn new<T: Serialize>(kind: &'static str, key: impl Into<String>, body: &T) -> Record {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let body = BUF.with_borrow_mut(|buf| {
            buf.clear();
            match serde_json::to_writer(&mut *buf, body) {
                // serde_json writes UTF-8; an object's text without its braces.
                Ok(()) => buf
                    .strip_prefix(b"{")
                    .and_then(|b| b.strip_suffix(b"}"))
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or("")
                    .to_string(),
                // Serializing our own plain structs cannot fail; keep the line valid if it ever
                // does.
                Err(e) => format!("\"serialize_error\":{}", quote(&e.to_string())),
            }
        });
        Record {
            kind,
            key: key.into(),
            body,
        }
    }

    /// Appends the full line (header + body + `\n`) to `out`.
    pub fn write_line(&self, header: &Header<'_>, out: &mut Vec<u8>) {
        write_line(self.kind, &self.body, header, out);
    }
}

/// The fields shared by all records of one emission.
pub struct Header<'a> {
    pub ts: &'a str,
    pub host: &'a str,
    pub seq: u64,
}

/// For `#[serde(skip_serializing_if = "crate::records::is_zero")]`: a count left out of a record
/// while it is zero.
pub fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// Appends one line of `kind` with the body fragment `body` to `out`.
pub fn write_line(kind: &str, body: &str, header: &Header<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"schema\":\"");
    out.extend_from_slice(SCHEMA.as_bytes());
    out.extend_from_slice(b"\",\"kind\":");
    out.extend_from_slice(quote(kind).as_bytes());
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(quote(header.ts).as_bytes());
    out.extend_from_slice(b",\"host\":");
    out.extend_from_slice(quote(header.host).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(header.seq.to_string().as_bytes());
    if !body.is_empty() {
        out.push(b',');
        out.extend_from_slice(body.as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body {
        pid: u32,
        name: &'static str,
    }

    #[test]
    fn line_has_header_then_body() {
        let r = Record::new(
            "process",
            "1",
            &Body {
                pid: 1,
                name: "in\"it",
            },
        );
        let mut out = Vec::new();
        r.write_line(
            &Header {
                ts: "2026-01-01T00:00:00.000Z",
                host: "h",
                seq: 7,
            },
            &mut out,
        );
        let line = String::from_utf8(out).expect("utf8");
        assert_eq!(
            line,
            "{\"schema\":\"memscope.v1\",\"kind\":\"process\",\"ts\":\"2026-01-01T00:00:00.000Z\",\"host\":\"h\",\"seq\":7,\"pid\":1,\"name\":\"in\\\"it\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("valid json");
        assert_eq!(v["pid"], 1);
    }

    #[test]
    fn empty_body_is_valid() {
        #[derive(Serialize)]
        struct Empty {}
        let r = Record::new("x", "", &Empty {});
        let mut out = Vec::new();
        r.write_line(
            &Header {
                ts: "t",
                host: "h",
                seq: 0,
            },
            &mut out,
        );
        serde_json::from_slice::<serde_json::Value>(&out).expect("valid json");
    }
}
