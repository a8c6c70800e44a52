//! `/proc/PID/statm`: seven page counts on one line (`size resident shared text lib data dt`).

use super::{
    ParseError,
    text::{fields, lines, lossy, parse_u64},
};

/// `/proc/PID/statm`, in PAGES (multiply by [`super::page_size`] for bytes). `lib` and `dt` (always 0
/// since Linux 2.6) are not kept. Reading it is O(1): no page-table walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statm {
    /// Total program size (VmSize).
    pub size: u64,
    /// Resident pages (VmRSS).
    pub resident: u64,
    /// Resident file-backed and shmem pages (RssFile + RssShmem).
    pub shared: u64,
    /// Text (code) pages.
    pub text: u64,
    /// Data + stack pages.
    pub data: u64,
}

/// Parses `/proc/PID/statm`. Needs at least the first six numbers; extra ones are ignored.
pub fn parse_statm(text: &[u8]) -> Result<Statm, ParseError> {
    let line = lines(text)
        .next()
        .ok_or_else(|| ParseError::new(1, "empty statm"))?;
    let mut v = [0u64; 6];
    let mut it = fields(line.bytes);
    for (i, slot) in v.iter_mut().enumerate() {
        let f = it
            .next()
            .ok_or_else(|| ParseError::new(1, format!("expected 6 numbers, got {i}")))?;
        *slot =
            parse_u64(f).ok_or_else(|| ParseError::new(1, format!("bad number {:?}", lossy(f))))?;
    }
    let [size, resident, shared, text, _lib, data] = v;
    Ok(Statm {
        size,
        resident,
        shared,
        text,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn inline() {
        let s = parse_statm(b"6336 1131 882 1 0 173 0\n").expect("parse");
        assert_eq!(
            s,
            Statm {
                size: 6336,
                resident: 1131,
                shared: 882,
                text: 1,
                data: 173
            }
        );
        // Extra columns from a future kernel are fine; too few are not.
        assert!(parse_statm(b"1 2 3 4 5 6 7 8\n").is_ok());
        assert_eq!(parse_statm(b"1 2 3\n").map_err(|e| e.line), Err(1));
        assert!(parse_statm(b"1 2 x 4 5 6 7\n").is_err());
        assert!(parse_statm(b"").is_err());
    }

    #[test]
    fn fixtures() {
        let kthread = parse_statm(&fixture("proc/2/statm")).expect("parse");
        assert_eq!(kthread, Statm::default());
        for pid in [1, 43, 44] {
            let s = parse_statm(&fixture(&format!("proc/{pid}/statm"))).expect("parse");
            assert!(s.resident > 0 && s.size >= s.resident && s.resident >= s.shared);
        }
    }
}
