//! Shared byte-level helpers for the parsers: numbered line iteration and allocation-free number
//! parsing. Nothing here allocates or panics.

use super::ParseError;

/// One line of a `/proc` file, without its `\n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub no: usize,
    pub bytes: &'a [u8],
    /// Whether the line ended with `\n` (false only for the last line of a truncated file).
    pub terminated: bool,
}

/// Iterates the lines of `text`, numbered from 1. A trailing `\n` does not make an empty last line.
pub(crate) struct Lines<'a> {
    rest: &'a [u8],
    no: usize,
}

pub(crate) fn lines(text: &[u8]) -> Lines<'_> {
    Lines { rest: text, no: 0 }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        self.no += 1;
        let (bytes, terminated) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let (line, rest) = self.rest.split_at(i);
                self.rest = rest.get(1..).unwrap_or_default();
                (line, true)
            }
            None => {
                let line = self.rest;
                self.rest = &[];
                (line, false)
            }
        };
        Some(Line {
            no: self.no,
            bytes,
            terminated,
        })
    }
}

/// The 1-based line number of byte `offset` in `text`.
pub(crate) fn line_at(text: &[u8], offset: usize) -> usize {
    1 + text
        .get(..offset)
        .unwrap_or(text)
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Whitespace-separated fields (runs of spaces/tabs collapse).
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

/// Splits `Key: value` at the first colon; the value is trimmed of surrounding whitespace.
pub(crate) fn split_key(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (key, rest) = line.split_at(colon);
    Some((key, rest.get(1..).unwrap_or_default().trim_ascii()))
}

/// An unsigned decimal number, digits only. `None` on anything else or on overflow.
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

pub(crate) fn parse_u32(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// A signed decimal number (optional leading `-`).
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.split_first() {
        Some((b'-', digits)) => 0i64.checked_sub_unsigned(parse_u64(digits)?),
        _ => i64::try_from(parse_u64(s)?).ok(),
    }
}

/// An unsigned number in base `radix` (8 or 16), digits only, no prefix.
pub(crate) fn parse_radix(s: &[u8], radix: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = char::from(b).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Parses `N kB` into bytes; a bare unitless `N` is returned as is.
pub(crate) fn parse_kb(value: &[u8], line: usize, key: &[u8]) -> Result<u64, ParseError> {
    let (num, unit) = match value.iter().position(u8::is_ascii_whitespace) {
        Some(i) => value.split_at(i),
        None => (value, &b""[..]),
    };
    let unit = unit.trim_ascii();
    let n = parse_u64(num).ok_or_else(|| bad_value(line, key, value))?;
    match unit {
        b"kB" => n.checked_mul(1024).ok_or_else(|| {
            ParseError::new(line, format!("{}: value overflows u64 bytes", lossy(key)))
        }),
        b"" => Ok(n),
        _ => Err(ParseError::new(
            line,
            format!("{}: unknown unit {:?}", lossy(key), lossy(unit)),
        )),
    }
}

pub(crate) fn bad_value(line: usize, key: &[u8], value: &[u8]) -> ParseError {
    ParseError::new(
        line,
        format!("{}: bad value {:?}", lossy(key), lossy(value)),
    )
}

pub(crate) fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

#[cfg(test)]
pub(crate) fn fixture(rel: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1a"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_radix(b"ffffffffffffffff", 16), Some(u64::MAX));
        assert_eq!(parse_radix(b"1777", 8), Some(0o1777));
        assert_eq!(parse_radix(b"8", 8), None);
        assert_eq!(parse_u32(b"4294967296"), None);
    }

    #[test]
    fn numbered_lines() {
        let v: Vec<_> = lines(b"a\n\nb\nc")
            .map(|l| (l.no, l.bytes, l.terminated))
            .collect();
        assert_eq!(
            v,
            vec![
                (1, &b"a"[..], true),
                (2, &b""[..], true),
                (3, &b"b"[..], true),
                (4, &b"c"[..], false)
            ]
        );
        assert_eq!(lines(b"x\n").count(), 1);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(line_at(b"a\nb\nc", 4), 3);
    }

    #[test]
    fn kb_values() {
        assert_eq!(parse_kb(b"12 kB", 1, b"K"), Ok(12 * 1024));
        assert_eq!(parse_kb(b"12", 1, b"K"), Ok(12));
        assert!(parse_kb(b"12 MB", 3, b"K").is_err());
        assert_eq!(parse_kb(b"x kB", 3, b"K").map_err(|e| e.line), Err(3));
        assert!(parse_kb(b"18446744073709551615 kB", 1, b"K").is_err());
    }
}
