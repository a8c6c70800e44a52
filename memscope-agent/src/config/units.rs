//! Value types of the configuration: [`Interval`] (a positive duration with a unit), [`ByteSize`]
//! (bytes, with an optional binary unit) and [`Positive`] (an integer >= 1).

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A strictly positive duration written as a string with a unit: `"500ms"`, `"10s"`, `"5m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl Interval {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Interval;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a positive duration string such as "10s", "500ms" or "5m""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Interval, E> {
                let t = s.trim();
                if t.starts_with('-') {
                    return Err(E::custom(format!("duration must be positive, got {s:?}")));
                }
                let d = humantime::parse_duration(t).map_err(|e| {
                    E::custom(format!(
                        r#"invalid duration {s:?}: {e} (write e.g. "10s", "500ms", "5m")"#
                    ))
                })?;
                if d.is_zero() {
                    return Err(E::custom(format!("duration must be positive, got {s:?}")));
                }
                Ok(Interval(d))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Interval, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit: write "{v}s" rather than {v}{}"#,
                    if v <= 0 {
                        " (and it must be positive)"
                    } else {
                        ""
                    }
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Interval, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit: write e.g. "{v}s" as a string"#
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes: an integer, or a string with a unit (`"100MiB"`, `"1G"`, `"512k"`); >= 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Parses `"100MiB"`, `"1G"`, `"4096"`, `"10 kB"` into bytes. Binary multiples for every unit
/// (`k`/`K`/`KiB`/`kB` all mean 1024), as the kernel does in tmpfs `size=`.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size in bytes, or a string such as "100MiB""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_byte_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer >= 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Positive(pub u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Ok(Positive(n)),
            _ => Err(de::Error::custom(format!(
                "must be an integer from 1 to {}, got {v}",
                u32::MAX
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("1k"), Ok(1024));
        assert_eq!(parse_byte_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_byte_size("2G"), Ok(2 << 30));
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("99999999999T").is_err());
    }
}
