//! The `Key:   N kB` counter block shared by `/proc/PID/smaps_rollup` and by each mapping of
//! `/proc/PID/smaps` (`Rss`, `Pss`, `Shared_Clean`, …, `Locked`).

use super::{
    ParseError,
    text::{lossy, parse_u64},
};

/// The memory counters of one mapping (smaps) or of a whole process (smaps_rollup), in BYTES.
///
/// The `Option` fields appeared in later kernels (`Pss_Anon`/`Pss_File`/`Pss_Shmem` 5.9, `Pss_Dirty`
/// 6.0, `KSM` 6.7) and are `None` when the kernel does not print them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemCounters {
    pub rss: u64,
    pub pss: u64,
    pub pss_dirty: Option<u64>,
    pub pss_anon: Option<u64>,
    pub pss_file: Option<u64>,
    pub pss_shmem: Option<u64>,
    pub shared_clean: u64,
    pub shared_dirty: u64,
    pub private_clean: u64,
    pub private_dirty: u64,
    pub referenced: u64,
    pub anonymous: u64,
    pub ksm: Option<u64>,
    pub lazy_free: u64,
    pub anon_huge_pages: u64,
    pub shmem_pmd_mapped: u64,
    pub file_pmd_mapped: u64,
    pub shared_hugetlb: u64,
    pub private_hugetlb: u64,
    pub swap: u64,
    pub swap_pss: u64,
    pub locked: u64,
}

fn add_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

impl MemCounters {
    /// Unique set size: `Private_Clean + Private_Dirty`.
    pub fn uss(&self) -> u64 {
        self.private_clean.saturating_add(self.private_dirty)
    }

    /// Hugetlb pages mapped: `Shared_Hugetlb + Private_Hugetlb` (never part of `Rss`/`Pss`).
    pub fn hugetlb(&self) -> u64 {
        self.shared_hugetlb.saturating_add(self.private_hugetlb)
    }

    /// Adds `other` field by field (saturating). An `Option` field is `Some` if either side is.
    pub fn add(&mut self, other: &MemCounters) {
        let s = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        s(&mut self.rss, other.rss);
        s(&mut self.pss, other.pss);
        self.pss_dirty = add_opt(self.pss_dirty, other.pss_dirty);
        self.pss_anon = add_opt(self.pss_anon, other.pss_anon);
        self.pss_file = add_opt(self.pss_file, other.pss_file);
        self.pss_shmem = add_opt(self.pss_shmem, other.pss_shmem);
        s(&mut self.shared_clean, other.shared_clean);
        s(&mut self.shared_dirty, other.shared_dirty);
        s(&mut self.private_clean, other.private_clean);
        s(&mut self.private_dirty, other.private_dirty);
        s(&mut self.referenced, other.referenced);
        s(&mut self.anonymous, other.anonymous);
        self.ksm = add_opt(self.ksm, other.ksm);
        s(&mut self.lazy_free, other.lazy_free);
        s(&mut self.anon_huge_pages, other.anon_huge_pages);
        s(&mut self.shmem_pmd_mapped, other.shmem_pmd_mapped);
        s(&mut self.file_pmd_mapped, other.file_pmd_mapped);
        s(&mut self.shared_hugetlb, other.shared_hugetlb);
        s(&mut self.private_hugetlb, other.private_hugetlb);
        s(&mut self.swap, other.swap);
        s(&mut self.swap_pss, other.swap_pss);
        s(&mut self.locked, other.locked);
    }

    /// Stores one counter line (`key` as printed, without the colon; value in kB). Returns false,
    /// changing nothing, when `key` is not a counter (e.g. `KernelPageSize`, `VmFlags`, new fields).
    pub fn apply_line(&mut self, key: &[u8], value_kb: u64) -> bool {
        let v = value_kb.saturating_mul(1024);
        // Counters that later kernels added are `Option`s: `Some` once printed.
        let optional = match key {
            b"Pss_Dirty" => Some(&mut self.pss_dirty),
            b"Pss_Anon" => Some(&mut self.pss_anon),
            b"Pss_File" => Some(&mut self.pss_file),
            b"Pss_Shmem" => Some(&mut self.pss_shmem),
            b"KSM" => Some(&mut self.ksm),
            _ => None,
        };
        if let Some(slot) = optional {
            *slot = Some(v);
            return true;
        }
        let slot = match key {
            b"Rss" => &mut self.rss,
            b"Pss" => &mut self.pss,
            b"Shared_Clean" => &mut self.shared_clean,
            b"Shared_Dirty" => &mut self.shared_dirty,
            b"Private_Clean" => &mut self.private_clean,
            b"Private_Dirty" => &mut self.private_dirty,
            b"Referenced" => &mut self.referenced,
            b"Anonymous" => &mut self.anonymous,
            b"LazyFree" => &mut self.lazy_free,
            b"AnonHugePages" => &mut self.anon_huge_pages,
            b"ShmemPmdMapped" => &mut self.shmem_pmd_mapped,
            b"FilePmdMapped" => &mut self.file_pmd_mapped,
            b"Shared_Hugetlb" => &mut self.shared_hugetlb,
            b"Private_Hugetlb" => &mut self.private_hugetlb,
            b"Swap" => &mut self.swap,
            b"SwapPss" => &mut self.swap_pss,
            b"Locked" => &mut self.locked,
            _ => return false,
        };
        *slot = v;
        true
    }
}

/// Whether `key` names one of the `N kB` counters [`MemCounters::apply_line`] stores.
pub(crate) fn is_counter(key: &[u8]) -> bool {
    MemCounters::default().apply_line(key, 0)
}

/// Parses the value of a `kB` counter line (`"1234 kB"`, already trimmed) into kB. The kernel always
/// prints the unit, so a missing one (a line cut short), another unit, a bad number or a value whose
/// bytes overflow u64 is an error.
pub(crate) fn parse_kb_value(value: &[u8], line: usize, key: &[u8]) -> Result<u64, ParseError> {
    let (num, unit) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (
            value.get(..i).unwrap_or_default(),
            value.get(i..).unwrap_or_default().trim_ascii(),
        ),
        None => (value, &b""[..]),
    };
    match (parse_u64(num), unit) {
        (Some(n), b"kB") if n <= u64::MAX / 1024 => Ok(n),
        _ => Err(ParseError::new(
            line,
            format!("{}: bad value {:?}", lossy(key), lossy(value)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_add_and_uss() {
        let mut a = MemCounters::default();
        assert!(a.apply_line(b"Rss", 8));
        assert!(a.apply_line(b"Private_Clean", 1));
        assert!(a.apply_line(b"Private_Dirty", 2));
        assert!(a.apply_line(b"Pss_Anon", 3));
        assert!(!a.apply_line(b"KernelPageSize", 4));
        assert!(!a.apply_line(b"Rss ", 4));
        assert_eq!(a.rss, 8192);
        assert_eq!(a.uss(), 3072);
        assert_eq!(a.pss_anon, Some(3072));
        assert_eq!(a.pss_file, None);

        let mut b = MemCounters::default();
        b.apply_line(b"Rss", 1);
        b.apply_line(b"Pss_File", 5);
        a.add(&b);
        assert_eq!(a.rss, 9 * 1024);
        assert_eq!(a.pss_anon, Some(3072));
        assert_eq!(a.pss_file, Some(5 * 1024));
        assert_eq!(a.ksm, None);

        let mut big = MemCounters {
            swap: u64::MAX,
            ..MemCounters::default()
        };
        big.add(&MemCounters {
            swap: 1,
            ..MemCounters::default()
        });
        assert_eq!(big.swap, u64::MAX);
    }

    #[test]
    fn kb_values() {
        assert_eq!(parse_kb_value(b"12 kB", 1, b"Rss"), Ok(12));
        assert!(parse_kb_value(b"12", 1, b"Rss").is_err());
        assert_eq!(
            parse_kb_value(b"12 MB", 4, b"Rss").map_err(|e| e.line),
            Err(4)
        );
        assert!(parse_kb_value(b"18014398509481984 kB", 1, b"Rss").is_err());
        assert!(is_counter(b"SwapPss") && !is_counter(b"THPeligible"));
    }
}
