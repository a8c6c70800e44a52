//! Byte-level helpers for names in `/proc`: octal escapes (`\040` in mountinfo, `\012` in smaps) are
//! decoded on bytes, never on chars, because paths may hold any byte.

use serde::{Serialize, Serializer, ser::SerializeMap};

/// Decodes `\NNN` octal escapes (exactly three octal digits, value <= 0o377) into bytes. Anything else,
/// including a lone backslash, is kept as is.
pub fn decode_octal(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' && i + 3 < input.len() {
            let d = &input[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(input[i]);
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
    fn decodes_octal_escapes_on_bytes() {
        assert_eq!(decode_octal(br"/mnt/my\040disk"), b"/mnt/my disk");
        assert_eq!(decode_octal(br"a\012b"), b"a\nb");
        assert_eq!(decode_octal(br"tab\011\134x"), b"tab\t\\x");
        // A non-UTF-8 byte survives.
        assert_eq!(decode_octal(br"\377"), vec![0xff]);
    }

    #[test]
    fn keeps_incomplete_or_invalid_escapes() {
        assert_eq!(decode_octal(br"end\04"), br"end\04");
        assert_eq!(decode_octal(br"\9xy"), br"\9xy");
        assert_eq!(decode_octal(br"\"), br"\");
        assert_eq!(decode_octal(br"\400"), br"\400");
    }

    #[test]
    fn name_serializes_losslessly() {
        let ok = serde_json::to_string(&Name::from("plain")).expect("serialize");
        assert_eq!(ok, r#""plain""#);
        let bad = serde_json::to_string(&Name(vec![b'a', 0xff])).expect("serialize");
        assert_eq!(bad, r#"{"text":"a�","bytes":"Yf8="}"#);
    }
}
