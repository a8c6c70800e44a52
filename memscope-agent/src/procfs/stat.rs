//! `/proc/PID/stat`: one line of space-separated fields, `pid (comm) state ppid …` (see proc(5)).

use super::{
    ParseError,
    escape::Name,
    text::{fields, line_at, lossy, parse_u32, parse_u64},
};

/// The parts of `/proc/PID/stat` memscope uses. Times are in clock ticks (`sysconf(_SC_CLK_TCK)`),
/// `starttime` counts from boot; `rss_pages` is in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// The raw comm, unescaped by the kernel: it may hold `)`, spaces, even a newline.
    pub comm: Name,
    pub state: char,
    pub ppid: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub num_threads: u32,
    pub starttime_ticks: u64,
    pub rss_pages: u64,
}

// Field positions after the closing `)`, 0-based (proc(5) numbers them from 3).
const STATE: usize = 0;
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;
const NUM_THREADS: usize = 17;
const STARTTIME: usize = 19;
const RSS: usize = 21;

/// Parses `/proc/PID/stat`. The comm sits between the first `(` and the LAST `)`, since it may
/// itself contain `)`. Fields after `rss` (newer kernels keep adding some) are ignored.
pub fn parse_stat(text: &[u8]) -> Result<Stat, ParseError> {
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| ParseError::new(1, "no `(` before comm"))?;
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .filter(|&c| c > open)
        .ok_or_else(|| ParseError::new(1, "no `)` after comm"))?;
    let pid_field = text.get(..open).unwrap_or_default().trim_ascii();
    let pid = parse_u32(pid_field)
        .ok_or_else(|| ParseError::new(1, format!("bad pid {:?}", lossy(pid_field))))?;
    let comm = Name::new(text.get(open + 1..close).unwrap_or_default());
    let rest = text.get(close + 1..).unwrap_or_default();
    let line = line_at(text, close);

    let mut f: [&[u8]; RSS + 1] = [&[]; RSS + 1];
    let mut it = fields(rest);
    for (i, slot) in f.iter_mut().enumerate() {
        *slot = it.next().ok_or_else(|| {
            ParseError::new(
                line,
                format!("expected {} fields after comm, got {i}", RSS + 1),
            )
        })?;
    }
    let num = |i: usize, what: &str| {
        parse_u64(f[i])
            .ok_or_else(|| ParseError::new(line, format!("bad {what} {:?}", lossy(f[i]))))
    };
    let state = match f[STATE] {
        [c] if c.is_ascii_alphabetic() => char::from(*c),
        other => {
            return Err(ParseError::new(
                line,
                format!("bad state {:?}", lossy(other)),
            ));
        }
    };
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| ParseError::new(line, format!("{what} out of range")))
    };
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: to_u32(num(PPID, "ppid")?, "ppid")?,
        utime_ticks: num(UTIME, "utime")?,
        stime_ticks: num(STIME, "stime")?,
        num_threads: to_u32(num(NUM_THREADS, "num_threads")?, "num_threads")?,
        starttime_ticks: num(STARTTIME, "starttime")?,
        rss_pages: num(RSS, "rss")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn inline_with_tricky_comm() {
        let t = b"4242 (a) b (c)) R 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 12345 \
10000000 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(t).expect("parse");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, Name::from("a) b (c)"));
        assert_eq!(s.state, 'R');
        assert_eq!(s.ppid, 17);
        assert_eq!((s.utime_ticks, s.stime_ticks), (250, 31));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime_ticks, 12345);
        assert_eq!(s.rss_pages, 789);
    }

    #[test]
    fn comm_with_newline_reports_the_right_line() {
        let t = b"7 (x\ny) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 9\n";
        let s = parse_stat(t).expect("parse");
        assert_eq!(s.comm, Name::new(&b"x\ny"[..]));
        assert_eq!(s.rss_pages, 9);
        let truncated = b"7 (x\ny) S 1 0 0\n";
        assert_eq!(parse_stat(truncated).map_err(|e| e.line), Err(2));
    }

    #[test]
    fn errors() {
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(b"12 comm S 1").is_err());
        assert!(parse_stat(b"x (c) S 1").is_err());
        let bad_state = b"1 (c) 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        assert!(parse_stat(bad_state).is_err());
        let bad_num = b"1 (c) S 0 0 0 0 0 0 0 0 0 0 x 0 0 0 0 0 0 0 0 0 0\n";
        assert!(parse_stat(bad_num).is_err());
    }

    #[test]
    fn fixtures() {
        let k = parse_stat(&fixture("proc/2/stat")).expect("parse");
        assert_eq!((k.pid, k.ppid, k.rss_pages), (2, 0, 0));
        assert_eq!(k.comm, Name::from("kthreadd"));
        let w = parse_stat(&fixture("proc/43/stat")).expect("parse");
        assert_eq!(w.comm, Name::from("fx) worker"));
        assert_eq!((w.pid, w.ppid, w.state, w.num_threads), (43, 1, 'S', 1));
        assert!(w.rss_pages > 0 && w.starttime_ticks > 0);
        let s = parse_stat(&fixture("proc/44/stat")).expect("parse");
        assert_eq!((s.pid, s.ppid), (44, 43));
    }
}
