//! `/proc/meminfo`: `Key:   N kB` lines, host-wide totals.

use super::{
    ParseError,
    text::{lines, lossy, parse_kb, split_key},
};

/// One `/proc/meminfo` line, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeminfoField {
    /// The name exactly as the kernel prints it, e.g. `MemTotal`, `Active(anon)`.
    pub name: String,
    /// The value in bytes: `kB` fields × 1024; the unitless `HugePages_{Total,Free,Rsvd,Surp}` page
    /// counts × `Hugepagesize`. Other unitless fields (none today) are kept as printed.
    pub bytes: u64,
}

const HUGEPAGE_COUNTS: [&str; 4] = [
    "HugePages_Total",
    "HugePages_Free",
    "HugePages_Rsvd",
    "HugePages_Surp",
];

/// Parses `/proc/meminfo` into every field, in file order, converted to bytes.
///
/// `Hugepagesize` may come after the `HugePages_*` counts it scales; a file with `HugePages_*`
/// counts but no `Hugepagesize` is an error. Unknown fields are kept; blank lines are skipped.
pub fn parse_meminfo(text: &[u8]) -> Result<Vec<MeminfoField>, ParseError> {
    let mut out = Vec::with_capacity(64);
    // (index in `out`, line) of each HugePages_* count, scaled once Hugepagesize is known.
    let mut counts: Vec<(usize, usize)> = Vec::new();
    let mut hugepagesize = None;
    for line in lines(text) {
        if line.bytes.trim_ascii().is_empty() {
            continue;
        }
        let (key, value) = split_key(line.bytes)
            .ok_or_else(|| ParseError::new(line.no, "expected `Key: value`"))?;
        let key = key.trim_ascii();
        if key.is_empty() {
            return Err(ParseError::new(line.no, "empty field name"));
        }
        let bytes = parse_kb(value, line.no, key)?;
        let name = lossy(key).into_owned();
        if name == "Hugepagesize" {
            hugepagesize = Some(bytes);
        }
        if HUGEPAGE_COUNTS.contains(&name.as_str()) {
            counts.push((out.len(), line.no));
        }
        out.push(MeminfoField { name, bytes });
    }
    if let Some(&(_, first_line)) = counts.first() {
        let size = hugepagesize.ok_or_else(|| {
            ParseError::new(first_line, "HugePages_* counts without Hugepagesize")
        })?;
        for (i, line) in counts {
            if let Some(f) = out.get_mut(i) {
                f.bytes = f.bytes.checked_mul(size).ok_or_else(|| {
                    ParseError::new(line, format!("{}: value overflows u64 bytes", f.name))
                })?;
            }
        }
    }
    Ok(out)
}

/// The value in bytes of the field `name` (exact kernel spelling), if present.
pub fn field(fields: &[MeminfoField], name: &str) -> Option<u64> {
    fields.iter().find(|f| f.name == name).map(|f| f.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn inline_fields_in_order_and_in_bytes() {
        let text =
            b"MemTotal:       16384 kB\nActive(anon):     100 kB\nHugePages_Total:       3\n\
HugePages_Free:        1\nHugepagesize:       2048 kB\nFutureField:  7 kB\n";
        let f = parse_meminfo(text).expect("parse");
        let names: Vec<_> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "MemTotal",
                "Active(anon)",
                "HugePages_Total",
                "HugePages_Free",
                "Hugepagesize",
                "FutureField"
            ]
        );
        assert_eq!(field(&f, "MemTotal"), Some(16384 * 1024));
        assert_eq!(field(&f, "Active(anon)"), Some(100 * 1024));
        assert_eq!(field(&f, "HugePages_Total"), Some(3 * 2048 * 1024));
        assert_eq!(field(&f, "HugePages_Free"), Some(2048 * 1024));
        assert_eq!(field(&f, "FutureField"), Some(7 * 1024));
        assert_eq!(field(&f, "Missing"), None);
    }

    #[test]
    fn hugepages_without_size_is_an_error() {
        let err = parse_meminfo(b"MemTotal: 1 kB\nHugePages_Total: 2\n").expect_err("error");
        assert_eq!(err.line, 2);
        // Without any HugePages_* line, no Hugepagesize is needed (old or non-hugetlb kernels).
        assert!(parse_meminfo(b"MemTotal: 1 kB\n").is_ok());
    }

    #[test]
    fn malformed_lines_carry_line_numbers() {
        assert_eq!(
            parse_meminfo(b"MemTotal: 1 kB\nnonsense\n").map_err(|e| e.line),
            Err(2)
        );
        assert_eq!(
            parse_meminfo(b"A: 1 kB\nB: x kB\n").map_err(|e| e.line),
            Err(2)
        );
        assert_eq!(parse_meminfo(b"A: 1 MB\n").map_err(|e| e.line), Err(1));
        assert_eq!(parse_meminfo(b"").map(|f| f.len()), Ok(0));
    }

    #[test]
    fn fixture_capture() {
        let f = parse_meminfo(&fixture("proc/meminfo")).expect("parse");
        assert!(f.len() > 40);
        let total = field(&f, "MemTotal").expect("MemTotal");
        assert!(total > 0 && total.is_multiple_of(1024));
        assert!(field(&f, "MemFree").expect("MemFree") <= total);
        assert!(field(&f, "Shmem").is_some());
        assert!(field(&f, "Active(anon)").is_some());
        assert_eq!(field(&f, "Hugepagesize"), Some(2048 * 1024));
    }

    #[test]
    fn fixture_hugepages_case() {
        let f = parse_meminfo(&fixture("cases/meminfo_hugepages")).expect("parse");
        assert_eq!(field(&f, "Hugepagesize"), Some(1 << 30));
        assert_eq!(field(&f, "HugePages_Total"), Some(4 << 30));
        assert_eq!(field(&f, "HugePages_Free"), Some(3 << 30));
        assert_eq!(field(&f, "HugePages_Rsvd"), Some(1 << 30));
        assert_eq!(field(&f, "HugePages_Surp"), Some(0));
        assert_eq!(field(&f, "Hugetlb"), Some(4 << 30));
    }
}
