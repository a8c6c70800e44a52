//! `/proc/meminfo`: `Key:   N kB` lines, host-wide totals.

use super::{
    Lenient, ParseError,
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
/// `Hugepagesize` may come after the `HugePages_*` counts it scales. Unknown fields are kept; blank
/// lines are skipped. A malformed line (no `Key:`, a value that is not `N kB`) is skipped and
/// reported, and so are `HugePages_*` counts without a `Hugepagesize` or that overflow in bytes:
/// one bad value never costs the other fields.
pub fn parse_meminfo(text: &[u8]) -> Lenient<Vec<MeminfoField>> {
    let mut out = Vec::with_capacity(64);
    let mut skipped = Vec::new();
    let mut counts: Vec<(usize, usize)> = Vec::new();
    let mut hugepagesize = None;
    for line in lines(text) {
        if line.bytes.trim_ascii().is_empty() {
            continue;
        }
        let field = split_key(line.bytes)
            .ok_or_else(|| ParseError::new(line.no, "expected `Key: value`"))
            .and_then(|(key, value)| {
                let key = key.trim_ascii();
                if key.is_empty() {
                    return Err(ParseError::new(line.no, "empty field name"));
                }
                Ok((lossy(key).into_owned(), parse_kb(value, line.no, key)?))
            });
        let (name, bytes) = match field {
            Ok(f) => f,
            Err(e) => {
                skipped.push(e);
                continue;
            }
        };
        if name == "Hugepagesize" {
            hugepagesize = Some(bytes);
        }
        if HUGEPAGE_COUNTS.contains(&name.as_str()) {
            counts.push((out.len(), line.no));
        }
        out.push(MeminfoField { name, bytes });
    }
    let mut drop = Vec::new();
    for (i, line) in counts {
        let Some(f) = out.get_mut(i) else { continue };
        match hugepagesize.and_then(|size| f.bytes.checked_mul(size)) {
            Some(b) => f.bytes = b,
            None => {
                let why = if hugepagesize.is_none() {
                    "a HugePages_* count without Hugepagesize"
                } else {
                    "value overflows u64 bytes"
                };
                skipped.push(ParseError::new(line, format!("{}: {why}", f.name)));
                drop.push(i);
            }
        }
    }
    for i in drop.into_iter().rev() {
        out.remove(i);
    }
    Lenient {
        value: out,
        skipped,
    }
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
        let f = parse_meminfo(text).value;
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
    fn hugepages_without_size_are_skipped_and_the_rest_kept() {
        let m = parse_meminfo(b"MemTotal: 1 kB\nHugePages_Total: 2\n");
        assert_eq!(m.value.len(), 1);
        assert_eq!(field(&m.value, "MemTotal"), Some(1024));
        assert_eq!(m.skipped.len(), 1);
        assert_eq!(m.skipped[0].line, 2);
        assert!(
            m.skipped[0].message.contains("HugePages_Total"),
            "{:?}",
            m.skipped
        );
        assert!(parse_meminfo(b"MemTotal: 1 kB\n").skipped.is_empty());
    }

    #[test]
    fn one_bad_value_skips_that_field_only() {
        let m =
            parse_meminfo(b"MemTotal: 1 kB\nnonsense\nShmem: x kB\nMemFree: 1 MB\nCached: 3 kB\n");
        let names: Vec<_> = m.value.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["MemTotal", "Cached"]);
        let lines: Vec<_> = m.skipped.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(m.skipped[1].message.contains("Shmem"), "{:?}", m.skipped);
        assert_eq!(parse_meminfo(b"").value.len(), 0);
    }

    #[test]
    fn fixture_capture() {
        let f = parse_meminfo(&fixture("proc/meminfo")).value;
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
        let f = parse_meminfo(&fixture("cases/meminfo_hugepages")).value;
        assert_eq!(field(&f, "Hugepagesize"), Some(1 << 30));
        assert_eq!(field(&f, "HugePages_Total"), Some(4 << 30));
        assert_eq!(field(&f, "HugePages_Free"), Some(3 << 30));
        assert_eq!(field(&f, "HugePages_Rsvd"), Some(1 << 30));
        assert_eq!(field(&f, "HugePages_Surp"), Some(0));
        assert_eq!(field(&f, "Hugetlb"), Some(4 << 30));
    }
}
