//! [`Dev`]: a device number, as smaps headers, mountinfo and `st_dev` give it.

use std::fmt;

use serde::{Serialize, Serializer};

use super::text::parse_radix;

/// A device number (`st_dev`, mountinfo and smaps `major:minor`); shown and serialized as
/// `"major:minor"` in decimal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    /// Splits a raw `st_dev`.
    pub fn from_st_dev(dev: u64) -> Dev {
        Dev {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    /// Parses `major:minor` with both numbers in base `radix` (smaps headers print them in hex,
    /// mountinfo in decimal). `None` on anything else or on overflow.
    pub fn parse(field: &[u8], radix: u32) -> Option<Dev> {
        let colon = field.iter().position(|&b| b == b':')?;
        let num = |s: &[u8]| parse_radix(s, radix).and_then(|v| u32::try_from(v).ok());
        Some(Dev {
            major: num(field.get(..colon)?)?,
            minor: num(field.get(colon + 1..)?)?,
        })
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// `"major:minor"`, in decimal.
impl schemars::JsonSchema for Dev {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Dev".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A device number, `major:minor` in decimal.",
            "type": "string",
            "pattern": "^[0-9]+:[0-9]+$"
        })
    }
}

impl Serialize for Dev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_decimal_and_prints_decimal() {
        assert_eq!(
            Dev::parse(b"fe:01", 16),
            Some(Dev {
                major: 254,
                minor: 1
            })
        );
        assert_eq!(
            Dev::parse(b"98:0", 10),
            Some(Dev {
                major: 98,
                minor: 0
            })
        );
        assert_eq!(Dev::parse(b"fe:01", 10), None);
        assert_eq!(Dev::parse(b"801", 10), None);
        assert_eq!(Dev::parse(b":1", 10), None);
        assert_eq!(Dev::parse(b"1:", 10), None);
        assert_eq!(Dev::parse(b"1:4294967296", 10), None);
        assert_eq!(
            Dev {
                major: 0,
                minor: 27
            }
            .to_string(),
            "0:27"
        );
        assert_eq!(
            serde_json::to_string(&Dev { major: 8, minor: 1 }).expect("json"),
            "\"8:1\""
        );
        assert_eq!(
            Dev::from_st_dev(libc::makedev(8, 17)),
            Dev {
                major: 8,
                minor: 17
            }
        );
    }
}
