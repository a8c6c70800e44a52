//! `/proc/PID/smaps_rollup` (Linux 4.14+): one `[rollup]` header line, then the counter block summed
//! over all mappings.

use super::{
    ParseError,
    counters::{MemCounters, is_counter, parse_kb_value},
    smaps::is_header,
    text::{lines, split_key},
};

/// Parses `/proc/PID/smaps_rollup` into bytes. An empty file (a kernel thread: no mm) is `Ok(None)`.
///
/// The address-range header (`00400000-7fff… ---p 00000000 00:00 0  [rollup]`) is skipped; unknown
/// `Key: value` lines (newer kernels) are ignored; counters an older kernel lacks stay 0/`None`.
pub fn parse_smaps_rollup(text: &[u8]) -> Result<Option<MemCounters>, ParseError> {
    if text.trim_ascii().is_empty() {
        return Ok(None);
    }
    let mut c = MemCounters::default();
    for line in lines(text) {
        if line.bytes.is_empty() || is_header(line.bytes) {
            continue;
        }
        let Some((key, value)) = split_key(line.bytes) else {
            return Err(ParseError::new(line.no, "expected `Key: N kB`"));
        };
        if is_counter(key) {
            c.apply_line(key, parse_kb_value(value, line.no, key)?);
        }
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    const ROLLUP: &[u8] =
        b"55ff93e43000-7ffd86e22000 ---p 00000000 00:00 0                          [rollup]
Rss:                1776 kB
Pss:                 543 kB
Pss_Dirty:           116 kB
Pss_Anon:            116 kB
Pss_File:            427 kB
Pss_Shmem:             0 kB
Shared_Clean:       1576 kB
Shared_Dirty:          0 kB
Private_Clean:        84 kB
Private_Dirty:       116 kB
Referenced:         1776 kB
Anonymous:           116 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  8 kB
SwapPss:               4 kB
Locked:                0 kB
";

    #[test]
    fn inline_current_kernel() {
        let c = parse_smaps_rollup(ROLLUP).expect("parse").expect("has mm");
        assert_eq!(c.rss, 1776 * 1024);
        assert_eq!(c.pss, 543 * 1024);
        assert_eq!(c.pss_dirty, Some(116 * 1024));
        assert_eq!(c.pss_anon, Some(116 * 1024));
        assert_eq!(c.pss_file, Some(427 * 1024));
        assert_eq!(c.pss_shmem, Some(0));
        assert_eq!(c.ksm, Some(0));
        assert_eq!(c.uss(), 200 * 1024);
        assert_eq!((c.swap, c.swap_pss), (8192, 4096));
    }

    #[test]
    fn empty_is_none_and_errors_have_lines() {
        assert_eq!(parse_smaps_rollup(b""), Ok(None));
        assert_eq!(parse_smaps_rollup(b"\n"), Ok(None));
        let bad = b"0-1 ---p 00000000 00:00 0 [rollup]\nRss: 1 kB\nPss: lots kB\n";
        assert_eq!(parse_smaps_rollup(bad).map_err(|e| e.line), Err(3));
        let junk = b"0-1 ---p 00000000 00:00 0 [rollup]\nRss 1 kB\n";
        assert_eq!(parse_smaps_rollup(junk).map_err(|e| e.line), Err(2));
        // Unknown fields and unitless lines are tolerated.
        let new = b"0-1 ---p 00000000 00:00 0 [rollup]\nRss: 1 kB\nFuture_Thing: 3 MB\n";
        assert_eq!(
            parse_smaps_rollup(new).map(|c| c.map(|c| c.rss)),
            Ok(Some(1024))
        );
    }

    #[test]
    fn fixture_old_kernel_without_pss_split() {
        let c = parse_smaps_rollup(&fixture("cases/smaps_rollup_old_kernel"))
            .expect("parse")
            .expect("has mm");
        assert_eq!(c.rss, 4072 * 1024);
        assert_eq!(c.pss, 1205 * 1024);
        assert_eq!(
            (c.pss_anon, c.pss_file, c.pss_shmem, c.pss_dirty, c.ksm),
            (None, None, None, None, None)
        );
        assert_eq!(c.swap_pss, 12 * 1024);
    }

    #[test]
    fn fixture_capture() {
        assert_eq!(
            parse_smaps_rollup(&fixture("proc/2/smaps_rollup")),
            Ok(None)
        );
        for pid in [1, 43, 44] {
            let c = parse_smaps_rollup(&fixture(&format!("proc/{pid}/smaps_rollup")))
                .expect("parse")
                .expect("has mm");
            assert!(c.rss > 0 && c.pss > 0 && c.pss <= c.rss, "pid {pid}");
            let split =
                c.pss_anon.unwrap_or(0) + c.pss_file.unwrap_or(0) + c.pss_shmem.unwrap_or(0);
            // The three parts sum to Pss up to rounding (each is truncated to kB separately).
            assert!(c.pss.abs_diff(split) <= 2 * 1024, "pid {pid}");
        }
        let worker = parse_smaps_rollup(&fixture("proc/43/smaps_rollup"))
            .expect("parse")
            .expect("has mm");
        // memfd 2 MiB + /dev/shm 1 MiB + SysV 1.25 MiB + shared anon 0.5 MiB, shared with pid 1.
        assert!(worker.pss_shmem.expect("Pss_Shmem") >= (4 << 20) / 2);
    }
}
