//! Byte-level helpers for names in `/proc`: octal escapes are decoded on bytes, never on chars,
//! because paths may hold any byte.
//!
//! Each file gets the decoding its kernel encoder implies, and nothing more: a backslash the kernel
//! did not escape is part of the name. `maps`/`smaps` (`seq_file_path(m, file, "\n")`) escape only
//! the newline, as `\012`, and leave backslashes alone, so `lit\101oct.bin` there is that name,
//! byte for byte ([`SMAPS_ESCAPED`]). `mountinfo` (`mangle()`: `seq_escape(m, s, " \t\n\\")`)
//! escapes space, tab, newline and backslash ([`MOUNTINFO_ESCAPED`]).

use serde::{Serialize, Serializer, ser::SerializeMap};

/// The bytes `/proc/PID/maps` and `smaps` escape in paths: the newline only.
pub const SMAPS_ESCAPED: &[u8] = b"\n";
/// The bytes `/proc/PID/mountinfo` escapes: space, tab, newline, backslash.
pub const MOUNTINFO_ESCAPED: &[u8] = b" \t\n\\";

/// Decodes the `\NNN` octal escapes (exactly three octal digits) of the bytes in `escaped`: the set
/// the file's kernel encoder escapes. Any other `\NNN` is kept as is, because the kernel wrote it
/// literally (a file named `a\101` in smaps), as is a lone backslash.
pub fn decode_escapes(input: &[u8], escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'\\'
            && let Some(d) = input.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v =
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
            if let Ok(decoded) = u8::try_from(v)
                && escaped.contains(&decoded)
            {
                out.push(decoded);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// A name from `/proc` (a path, a command line, a process name) kept as raw bytes.
///
/// Serialized as a plain JSON string when it is valid UTF-8, and otherwise as
/// `{"text": "<lossy>", "bytes": "<base64>"}` so nothing is lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub Vec<u8>);

impl Name {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Name(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lossy text for display and logs.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(s.as_bytes().to_vec())
    }
}

/// A string when the bytes are UTF-8, else `{"text": lossy, "bytes": base64}`.
impl schemars::JsonSchema for Name {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Name".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A name, command line or path: a string when it is valid UTF-8, else the lossy text and the exact bytes in base64.",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": {
                        "text": { "type": "string" },
                        "bytes": { "type": "string", "contentEncoding": "base64" }
                    },
                    "required": ["text", "bytes"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use base64::Engine as _;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("text", &String::from_utf8_lossy(&self.0))?;
                m.serialize_entry(
                    "bytes",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_decodes_its_four_escapes_on_bytes() {
        let d = |s: &[u8]| decode_escapes(s, MOUNTINFO_ESCAPED);
        assert_eq!(d(br"/mnt/my\040disk"), b"/mnt/my disk");
        assert_eq!(d(br"a\012b"), b"a\nb");
        assert_eq!(d(br"tab\011\134x"), b"tab\t\\x");
        // The kernel never escapes other bytes there: `\101` and `\377` are literal text.
        assert_eq!(d(br"lit\101oct"), br"lit\101oct");
        assert_eq!(d(br"\377"), br"\377");
    }

    #[test]
    fn smaps_decodes_only_the_newline() {
        let d = |s: &[u8]| decode_escapes(s, SMAPS_ESCAPED);
        assert_eq!(d(br"/tmp/a\012b"), b"/tmp/a\nb");
        // A backslash is not escaped in smaps: these are names as they are.
        assert_eq!(d(br"/dev/shm/lit\101oct.bin"), br"/dev/shm/lit\101oct.bin");
        assert_eq!(d(br"/mnt/my\040disk"), br"/mnt/my\040disk");
        assert_eq!(d(br"x\134012"), br"x\134012");
    }

    #[test]
    fn keeps_incomplete_or_invalid_escapes() {
        let d = |s: &[u8]| decode_escapes(s, MOUNTINFO_ESCAPED);
        assert_eq!(d(br"end\04"), br"end\04");
        assert_eq!(d(br"end\012"), b"end\n", "an escape at the very end");
        assert_eq!(d(br"\9xy"), br"\9xy");
        assert_eq!(d(br"\"), br"\");
        assert_eq!(d(br"\400"), br"\400");
    }

    #[test]
    fn name_serializes_losslessly() {
        let ok = serde_json::to_string(&Name::from("plain")).expect("serialize");
        assert_eq!(ok, r#""plain""#);
        let bad = serde_json::to_string(&Name(vec![b'a', 0xff])).expect("serialize");
        assert_eq!(bad, r#"{"text":"a�","bytes":"Yf8="}"#);
    }
}
