//! `/proc/PID/status`: `Key:\tvalue` lines, human-readable process state and memory summary.

use super::{
    ParseError,
    escape::Name,
    text::{bad_value, fields, lines, parse_kb, parse_u32, split_key},
};

/// The parts of `/proc/PID/status` memscope uses. Memory values are in bytes; they are `None` when
/// the line is absent (kernel threads have no `Vm*`/`Rss*` lines; `RssAnon`/`RssFile`/`RssShmem`
/// appeared in Linux 4.5).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// `Name:` (the comm, at most 15 bytes), with the kernel's escaping undone.
    pub name: Name,
    /// First letter of `State:` (`R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`, …).
    pub state: char,
    pub tgid: u32,
    pub ppid: u32,
    /// Real, effective, saved set, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved set, filesystem.
    pub gid: [u32; 4],
    pub threads: u32,
    pub vm_size: Option<u64>,
    pub vm_rss: Option<u64>,
    pub rss_anon: Option<u64>,
    pub rss_file: Option<u64>,
    pub rss_shmem: Option<u64>,
    pub vm_swap: Option<u64>,
    pub vm_hwm: Option<u64>,
    /// `HugetlbPages:` (4.4+): hugetlb pages mapped, which `VmRSS` leaves out.
    pub hugetlb_pages: Option<u64>,
}

/// Undoes `proc_task_name(.., escape=true)`: the kernel prints `\n` as `\n` and `\` as `\\`
/// (`seq_escape_str(.., ESCAPE_SPACE | ESCAPE_SPECIAL, "\n\\")`). Other C escapes are decoded too;
/// an unknown escape is kept as is.
fn unescape_name(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter().copied();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'\\') => out.push(b'\\'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'f') => out.push(0x0c),
            Some(b'v') => out.push(0x0b),
            Some(b'a') => out.push(0x07),
            Some(b'e') => out.push(0x1b),
            Some(b'"') => out.push(b'"'),
            Some(other) => out.extend_from_slice(&[b'\\', other]),
            None => out.push(b'\\'),
        }
    }
    out
}

fn four_ids(value: &[u8], line: usize, key: &[u8]) -> Result<[u32; 4], ParseError> {
    let mut ids = [0u32; 4];
    let mut it = fields(value);
    for id in &mut ids {
        let f = it.next().ok_or_else(|| bad_value(line, key, value))?;
        *id = parse_u32(f).ok_or_else(|| bad_value(line, key, value))?;
    }
    Ok(ids)
}

/// Parses `/proc/PID/status`. `Name`, `State`, `Tgid`, `PPid`, `Uid`, `Gid` and `Threads` are
/// required; unknown lines are ignored.
pub fn parse_status(text: &[u8]) -> Result<Status, ParseError> {
    let mut s = Status::default();
    // Bit per required field: Name, State, Tgid, PPid, Uid, Gid, Threads.
    let mut seen = 0u8;
    for line in lines(text) {
        if line.bytes.is_empty() {
            continue;
        }
        let Some((key, value)) = split_key(line.bytes) else {
            return Err(ParseError::new(line.no, "expected `Key:\tvalue`"));
        };
        let n = line.no;
        let u32_of = |v: &[u8]| parse_u32(v).ok_or_else(|| bad_value(n, key, v));
        match key {
            b"Name" => {
                // The value is everything after `Name:\t`, untrimmed: a comm may start or end with
                // a space.
                let raw = line.bytes.get(key.len() + 1..).unwrap_or_default();
                let raw = raw.strip_prefix(b"\t").unwrap_or(raw);
                s.name = Name(unescape_name(raw));
                seen |= 1;
            }
            b"State" => {
                s.state = value
                    .first()
                    .filter(|c| c.is_ascii_alphabetic())
                    .map(|&c| char::from(c))
                    .ok_or_else(|| bad_value(n, key, value))?;
                seen |= 2;
            }
            b"Tgid" => {
                s.tgid = u32_of(value)?;
                seen |= 4;
            }
            b"PPid" => {
                s.ppid = u32_of(value)?;
                seen |= 8;
            }
            b"Uid" => {
                s.uid = four_ids(value, n, key)?;
                seen |= 16;
            }
            b"Gid" => {
                s.gid = four_ids(value, n, key)?;
                seen |= 32;
            }
            b"Threads" => {
                s.threads = u32_of(value)?;
                seen |= 64;
            }
            b"VmSize" => s.vm_size = Some(parse_kb(value, n, key)?),
            b"VmRSS" => s.vm_rss = Some(parse_kb(value, n, key)?),
            b"RssAnon" => s.rss_anon = Some(parse_kb(value, n, key)?),
            b"RssFile" => s.rss_file = Some(parse_kb(value, n, key)?),
            b"RssShmem" => s.rss_shmem = Some(parse_kb(value, n, key)?),
            b"VmSwap" => s.vm_swap = Some(parse_kb(value, n, key)?),
            b"VmHWM" => s.vm_hwm = Some(parse_kb(value, n, key)?),
            b"HugetlbPages" => s.hugetlb_pages = Some(parse_kb(value, n, key)?),
            _ => {}
        }
    }
    const NAMES: [&str; 7] = ["Name", "State", "Tgid", "PPid", "Uid", "Gid", "Threads"];
    if let Some((_, missing)) = NAMES.iter().enumerate().find(|(i, _)| seen & (1 << i) == 0) {
        return Err(ParseError::new(0, format!("missing `{missing}:` line")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    const USER: &[u8] = b"Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1055\nNgid:\t0\n\
Pid:\t1055\nPPid:\t1054\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t4294967294\nGid:\t0\t0\t0\t0\n\
FDSize:\t256\nGroups:\t \nVmPeak:\t    8456 kB\nVmSize:\t    8392 kB\nVmLck:\t       0 kB\n\
VmHWM:\t    4532 kB\nVmRSS:\t    4072 kB\nRssAnon:\t     560 kB\nRssFile:\t    3512 kB\n\
RssShmem:\t       0 kB\nVmSwap:\t      12 kB\nHugetlbPages:\t    4096 kB\nThreads:\t1\nSomethingNew:\tyes\n";

    #[test]
    fn user_process() {
        let s = parse_status(USER).expect("parse");
        assert_eq!(s.name, Name::from("bash"));
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.ppid, s.threads), (1055, 1054, 1));
        assert_eq!(s.uid, [1000, 1001, 1002, 4_294_967_294]);
        assert_eq!(s.gid, [0; 4]);
        assert_eq!(s.vm_size, Some(8392 * 1024));
        assert_eq!(s.vm_rss, Some(4072 * 1024));
        assert_eq!(s.rss_anon, Some(560 * 1024));
        assert_eq!(s.rss_file, Some(3512 * 1024));
        assert_eq!(s.rss_shmem, Some(0));
        assert_eq!(s.vm_swap, Some(12 * 1024));
        assert_eq!(s.vm_hwm, Some(4532 * 1024));
        assert_eq!(s.hugetlb_pages, Some(4096 * 1024));
    }

    #[test]
    fn escaped_name_is_decoded_to_bytes() {
        let t = b"Name:\t a\\nb\\\\c)\t\nState:\tR (running)\nTgid:\t9\nPPid:\t1\nUid:\t0 0 0 0\n\
Gid:\t0 0 0 0\nThreads:\t2\n";
        let s = parse_status(t).expect("parse");
        assert_eq!(s.name, Name::new(&b" a\nb\\c)\t"[..]));
    }

    #[test]
    fn old_kernel_without_rss_split() {
        let t = b"Name:\tx\nState:\tS\nTgid:\t9\nPPid:\t1\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n\
VmRSS:\t 10 kB\nThreads:\t1\n";
        let s = parse_status(t).expect("parse");
        assert_eq!(s.vm_rss, Some(10240));
        assert_eq!((s.rss_anon, s.vm_swap), (None, None));
    }

    #[test]
    fn errors() {
        let bad = b"Name:\tx\nState:\tS\nTgid:\tnope\n";
        assert_eq!(parse_status(bad).map_err(|e| e.line), Err(3));
        let missing = b"Name:\tx\nState:\tS\n";
        assert_eq!(parse_status(missing).map_err(|e| e.line), Err(0));
        assert_eq!(parse_status(b"garbage\n").map_err(|e| e.line), Err(1));
        let short_uid = b"Name:\tx\nUid:\t1 2\n";
        assert_eq!(parse_status(short_uid).map_err(|e| e.line), Err(2));
    }

    #[test]
    fn fixture_kernel_thread_has_no_memory_lines() {
        let s = parse_status(&fixture("proc/2/status")).expect("parse");
        assert_eq!(s.name, Name::from("kthreadd"));
        assert_eq!((s.tgid, s.ppid), (2, 0));
        assert_eq!(
            (s.vm_size, s.vm_rss, s.rss_anon, s.vm_swap),
            (None, None, None, None)
        );
    }

    #[test]
    fn fixture_user_processes() {
        let init = parse_status(&fixture("proc/1/status")).expect("parse");
        assert_eq!((init.tgid, init.ppid), (1, 0));
        assert_eq!(init.name, Name::from("python3"));
        let worker = parse_status(&fixture("proc/43/status")).expect("parse");
        assert_eq!(worker.name, Name::from("fx) worker"));
        assert_eq!((worker.tgid, worker.ppid), (43, 1));
        assert!(worker.rss_shmem.expect("RssShmem") >= 4 << 20);
        let sleep = parse_status(&fixture("proc/44/status")).expect("parse");
        assert_eq!((sleep.name, sleep.ppid), (Name::from("sleep"), 43));
        assert!(sleep.vm_rss.expect("VmRSS") > 0);
    }
}
