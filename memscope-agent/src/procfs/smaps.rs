//! `/proc/PID/smaps`: for each mapping, a header line
//! `start-end perms offset major:minor inode   path` followed by `Key: N kB` counter lines,
//! `KernelPageSize`/`MMUPageSize`, `THPeligible`, `ProtectionKey` and `VmFlags`.
//!
//! This runs over tens of MB per pass, so it streams: no per-line allocation, no regex. A mapping
//! allocates only for its path and its `VmFlags` string.

use super::{
    Dev, ParseError,
    counters::{MemCounters, parse_kb_value},
    escape::{Name, SMAPS_ESCAPED, decode_escapes},
    text::{Line, lines, lossy, parse_radix, parse_u64, split_key},
};

/// The `rwxp`/`rwxs` permission column of a mapping header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (MAP_SHARED) rather than `p` (private, copy-on-write).
    pub shared: bool,
}

/// What a mapping maps, from the last column of its header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum MappingPath {
    /// No path: private (or `MAP_SHARED` before the kernel names it) anonymous memory.
    #[default]
    Anonymous,
    /// A file, its one escape (`\012`, a newline) decoded and backslashes kept as they are; `deleted` when the kernel appended ` (deleted)`. Shared
    /// anonymous memory shows as `/dev/zero (deleted)`; anon inodes as `anon_inode:[…]`.
    File { path: Name, deleted: bool },
    /// `/memfd:NAME (deleted)`: a memfd; the object is identified by the header's inode.
    Memfd { name: Name, deleted: bool },
    /// `/SYSV%08x (deleted)`: a SysV shm segment; the header's inode is its shmid. After
    /// `IPC_RMID` `/proc/sysvipc/shm` shows key 0, but this name keeps the original key.
    SysV { key: u32 },
    /// A bracketed kernel name: `[heap]`, `[stack]`, `[vdso]`, `[vvar]`, `[vsyscall]`,
    /// `[anon:NAME]`, `[anon_shmem:NAME]`, …
    Pseudo(String),
}

/// One mapping of `/proc/PID/smaps`. Sizes are in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: Perms,
    pub offset: u64,
    pub dev: Dev,
    pub inode: u64,
    pub path: MappingPath,
    pub counters: MemCounters,
    pub kernel_page_size: u64,
    pub mmu_page_size: u64,
    /// `THPeligible:` (4.15+); `None` when absent.
    pub thp_eligible: Option<bool>,
    /// `VmFlags:` as printed (two-letter codes separated by spaces), empty when absent.
    pub vm_flags: String,
}

impl Mapping {
    /// `end - start`.
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// A hugetlb mapping (hugetlbfs file, `MFD_HUGETLB` memfd, `SHM_HUGETLB` segment,
    /// `MAP_HUGETLB`): `ht` in `VmFlags`, or hugetlb pages counted. Its pages are in
    /// `Shared_Hugetlb`/`Private_Hugetlb`, never in `Rss`/`Pss`.
    pub fn is_hugetlb(&self) -> bool {
        self.counters.hugetlb() > 0 || self.vm_flags.split_ascii_whitespace().any(|f| f == "ht")
    }
}

/// Whether `line` looks like a mapping header: `hexstart-hexend ` at its start.
pub(crate) fn is_header(line: &[u8]) -> bool {
    // Fast reject for the common case: field keys start with an uppercase letter.
    if !line.first().is_some_and(u8::is_ascii_hexdigit)
        || line.first().is_some_and(u8::is_ascii_uppercase)
    {
        return false;
    }
    let range = match line.iter().position(|&b| b == b' ') {
        Some(i) => line.get(..i).unwrap_or_default(),
        None => return false,
    };
    match range.iter().position(|&b| b == b'-') {
        Some(dash) if dash > 0 && dash + 1 < range.len() => range
            .iter()
            .enumerate()
            .all(|(i, b)| i == dash || b.is_ascii_hexdigit()),
        _ => false,
    }
}

/// Splits off the next space-delimited token (leading spaces skipped).
fn token<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let s = rest.trim_ascii_start();
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let (tok, tail) = s.split_at(end);
    *rest = tail;
    tok
}

fn parse_header(line: &[u8], no: usize) -> Result<Mapping, ParseError> {
    let bad = |what: &str, v: &[u8]| ParseError::new(no, format!("bad {what} {:?}", lossy(v)));
    let mut rest = line;
    let range = token(&mut rest);
    let (start, end) = match range.iter().position(|&b| b == b'-') {
        Some(d) => (
            parse_radix(range.get(..d).unwrap_or_default(), 16),
            parse_radix(range.get(d + 1..).unwrap_or_default(), 16),
        ),
        None => (None, None),
    };
    let (Some(start), Some(end)) = (start, end) else {
        return Err(bad("address range", range));
    };
    let perms = match token(&mut rest) {
        &[r, w, x, s] => Perms {
            read: r == b'r',
            write: w == b'w',
            exec: x == b'x',
            shared: s == b's',
        },
        other => return Err(bad("perms", other)),
    };
    let off = token(&mut rest);
    let offset = parse_radix(off, 16).ok_or_else(|| bad("offset", off))?;
    let dev = token(&mut rest);
    let dev = Dev::parse(dev, 16).ok_or_else(|| bad("device", dev))?;
    let ino = token(&mut rest);
    let inode = parse_u64(ino).ok_or_else(|| bad("inode", ino))?;
    // The path starts after the padding and runs to the end of the line, spaces included.
    let path = classify_path(rest.trim_ascii_start());
    Ok(Mapping {
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        path,
        ..Mapping::default()
    })
}

/// Classifies the path column of a smaps/maps header (already stripped of its padding).
pub fn classify_path(raw: &[u8]) -> MappingPath {
    if raw.is_empty() {
        return MappingPath::Anonymous;
    }
    if raw.first() == Some(&b'[') && raw.last() == Some(&b']') {
        return MappingPath::Pseudo(lossy(raw).into_owned());
    }
    let (name, deleted) = match raw.strip_suffix(b" (deleted)") {
        Some(n) => (n, true),
        None => (raw, false),
    };
    if let Some(memfd) = name.strip_prefix(b"/memfd:") {
        return MappingPath::Memfd {
            name: Name(decode_escapes(memfd, SMAPS_ESCAPED)),
            deleted,
        };
    }
    if let Some(hex) = name.strip_prefix(b"/SYSV")
        && hex.len() == 8
        && let Some(key) = parse_radix(hex, 16).and_then(|k| u32::try_from(k).ok())
    {
        return MappingPath::SysV { key };
    }
    MappingPath::File {
        path: Name(decode_escapes(name, SMAPS_ESCAPED)),
        deleted,
    }
}

/// Applies one non-header line to `m`.
fn apply_field(m: &mut Mapping, line: &Line<'_>) -> Result<(), ParseError> {
    let Some((key, value)) = split_key(line.bytes) else {
        return Err(ParseError::new(
            line.no,
            "expected a mapping header or `Key: value`",
        ));
    };
    match key {
        b"VmFlags" => m.vm_flags = lossy(value).into_owned(),
        b"THPeligible" => {
            let v = parse_u64(value).ok_or_else(|| {
                ParseError::new(
                    line.no,
                    format!("THPeligible: bad value {:?}", lossy(value)),
                )
            })?;
            m.thp_eligible = Some(v != 0);
        }
        b"ProtectionKey" => {}
        b"KernelPageSize" => m.kernel_page_size = parse_kb_value(value, line.no, key)? * 1024,
        b"MMUPageSize" => m.mmu_page_size = parse_kb_value(value, line.no, key)? * 1024,
        _ => match parse_kb_value(value, line.no, key) {
            Ok(kb) => {
                // Unknown `N kB` keys (newer kernels) are ignored.
                m.counters.apply_line(key, kb);
            }
            Err(e) if crate::procfs::counters::is_counter(key) => return Err(e),
            // An unknown key with a value of another shape: tolerated.
            Err(_) => {}
        },
    }
    Ok(())
}

/// Parses `/proc/PID/smaps`, calling `visit` for each mapping in file order; returns how many.
///
/// Unknown keys are ignored and keys an older kernel lacks stay 0/`None`. A file cut short (the
/// process exited mid-read, or a partial capture) is parsed as far as it goes: the last mapping is
/// still visited, and an unterminated last line that does not parse is dropped. Any other malformed
/// line is an error carrying its line number.
pub fn parse_smaps(text: &[u8], mut visit: impl FnMut(Mapping)) -> Result<usize, ParseError> {
    let mut cur: Option<Mapping> = None;
    let mut count = 0;
    for line in lines(text) {
        if line.bytes.is_empty() {
            continue;
        }
        let result = if is_header(line.bytes) {
            if !line.terminated {
                // A header cut short: its path may be incomplete, and it has no counters.
                break;
            }
            parse_header(line.bytes, line.no).map(|m| {
                if let Some(prev) = cur.replace(m) {
                    count += 1;
                    visit(prev);
                }
            })
        } else if let Some(m) = cur.as_mut() {
            apply_field(m, &line)
        } else {
            Err(ParseError::new(
                line.no,
                "field line before the first mapping header",
            ))
        };
        match result {
            Ok(()) => {}
            Err(_) if !line.terminated => break,
            Err(e) => return Err(e),
        }
    }
    if let Some(last) = cur {
        count += 1;
        visit(last);
    }
    Ok(count)
}

/// [`parse_smaps`] collected into a `Vec`.
pub fn parse_smaps_vec(text: &[u8]) -> Result<Vec<Mapping>, ParseError> {
    let mut v = Vec::new();
    parse_smaps(text, |m| v.push(m))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::{smaps_rollup::parse_smaps_rollup, text::fixture};

    const TWO: &[u8] =
        b"55dd40a00000-55dd40a01000 r--p 00001000 fe:00 1234                       /usr/bin/my prog
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   4 kB
Pss:                   2 kB
Pss_Dirty:             0 kB
Shared_Clean:          4 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            4 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr mw me sd
7ffcb7d01000-7ffcb7d22000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
Pss:                  16 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
THPeligible:           1
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn inline_two_mappings() {
        let v = parse_smaps_vec(TWO).expect("parse");
        assert_eq!(v.len(), 2);
        let a = &v[0];
        assert_eq!(
            (a.start, a.end, a.offset),
            (0x55dd40a00000, 0x55dd40a01000, 0x1000)
        );
        assert_eq!(
            a.perms,
            Perms {
                read: true,
                ..Perms::default()
            }
        );
        assert_eq!(
            (a.dev, a.inode),
            (
                Dev {
                    major: 0xfe,
                    minor: 0
                },
                1234
            )
        );
        assert_eq!(
            a.path,
            MappingPath::File {
                path: Name::from("/usr/bin/my prog"),
                deleted: false
            }
        );
        assert_eq!((a.counters.rss, a.counters.pss), (4096, 2048));
        assert_eq!(a.counters.pss_dirty, Some(0));
        assert_eq!(a.counters.pss_anon, None);
        assert_eq!((a.kernel_page_size, a.mmu_page_size), (4096, 4096));
        assert_eq!(a.thp_eligible, Some(false));
        assert_eq!(a.vm_flags, "rd mr mw me sd");
        assert_eq!(a.size(), 4096);
        let s = &v[1];
        assert_eq!(s.path, MappingPath::Pseudo("[stack]".into()));
        assert!(s.perms.read && s.perms.write && !s.perms.exec && !s.perms.shared);
        assert_eq!(s.counters.uss(), 16 * 1024);
        assert_eq!(s.thp_eligible, Some(true));
        assert_eq!(s.counters.pss_dirty, None);
    }

    #[test]
    fn path_classes() {
        let f = |s: &[u8]| classify_path(s);
        assert_eq!(f(b""), MappingPath::Anonymous);
        assert_eq!(f(b"[heap]"), MappingPath::Pseudo("[heap]".into()));
        assert_eq!(
            f(b"[anon:my buf]"),
            MappingPath::Pseudo("[anon:my buf]".into())
        );
        assert_eq!(
            f(b"/memfd:wayland-shm (deleted)"),
            MappingPath::Memfd {
                name: Name::from("wayland-shm"),
                deleted: true
            }
        );
        assert_eq!(
            f(b"/SYSV0000162e (deleted)"),
            MappingPath::SysV { key: 0x162e }
        );
        assert_eq!(
            f(b"/SYSVffffffff (deleted)"),
            MappingPath::SysV { key: u32::MAX }
        );
        // Not exactly eight hex digits: an ordinary file.
        assert!(matches!(f(b"/SYSV12"), MappingPath::File { .. }));
        assert_eq!(
            f(b"/tmp/a\\012b (deleted)"),
            MappingPath::File {
                path: Name::new(&b"/tmp/a\nb"[..]),
                deleted: true
            }
        );
        assert_eq!(
            f(b"/dev/zero (deleted)"),
            MappingPath::File {
                path: Name::from("/dev/zero"),
                deleted: true
            }
        );
    }

    #[test]
    fn errors_carry_line_numbers() {
        let bad_header = b"zz-10 r--p 0 00:00 0\n";
        assert!(parse_smaps_vec(bad_header).is_err());
        let bad_perms = b"00-10 r--pp 0 00:00 0\n";
        assert_eq!(parse_smaps_vec(bad_perms).map_err(|e| e.line), Err(1));
        let before_header = b"Rss: 4 kB\n";
        assert_eq!(parse_smaps_vec(before_header).map_err(|e| e.line), Err(1));
        let bad_value = b"00-10 r--p 0 00:00 0\nRss: 4 kB\nPss: four kB\n";
        assert_eq!(parse_smaps_vec(bad_value).map_err(|e| e.line), Err(3));
        let junk = b"00-10 r--p 0 00:00 0\nRss: 4 kB\nwhat is this\nPss: 1 kB\n";
        assert_eq!(parse_smaps_vec(junk).map_err(|e| e.line), Err(3));
        let bad_dev = b"00-10 r--p 0 0000 0\n";
        assert!(parse_smaps_vec(bad_dev).is_err());
        assert_eq!(parse_smaps_vec(b"").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn tolerates_unknown_fields() {
        let t =
            b"00-1000 r--p 0 00:00 0 \nRss: 4 kB\nNewThing: 3 kB\nOddThing: yes\nTHPeligible: 0\n";
        let v = parse_smaps_vec(t).expect("parse");
        assert_eq!(v[0].path, MappingPath::Anonymous);
        assert_eq!(v[0].counters.rss, 4096);
    }

    #[test]
    fn fixture_edge_cases() {
        let v = parse_smaps_vec(&fixture("cases/smaps_edge")).expect("parse");
        let paths: Vec<&MappingPath> = v.iter().map(|m| &m.path).collect();
        assert_eq!(
            paths,
            vec![
                &MappingPath::File {
                    path: Name::from("/opt/my app/bin/server (v2)"),
                    deleted: false
                },
                &MappingPath::File {
                    path: Name::new(&b"/tmp/evil\nname (deleted)"[..]),
                    deleted: true
                },
                &MappingPath::File {
                    path: Name::from("/var/lib/app/old.db"),
                    deleted: true
                },
                &MappingPath::Memfd {
                    name: Name::from("pipewire-memfd:flags=0x0000000f"),
                    deleted: true
                },
                &MappingPath::SysV { key: 0x162e },
                &MappingPath::Pseudo("[anon:dalvik heap]".into()),
                &MappingPath::Pseudo("[anon_shmem:ring]".into()),
                &MappingPath::Anonymous,
                &MappingPath::File {
                    path: Name::from("anon_inode:[perf_event]"),
                    deleted: false
                },
                &MappingPath::File {
                    path: Name::new(&b"/data/caf\xe9"[..]),
                    deleted: false
                },
            ]
        );
        let sysv = &v[4];
        assert_eq!(sysv.inode, 32769);
        assert!(sysv.perms.shared);
        assert_eq!(sysv.counters.pss, 512 * 1024);
        // Per-mapping blocks have no Pss_Anon/Pss_File/Pss_Shmem (only smaps_rollup does).
        assert_eq!(sysv.counters.pss_shmem, None);
        let anon = &v[7];
        assert_eq!(anon.counters.swap, 8192 * 1024);
        assert_eq!(anon.counters.swap_pss, 8192 * 1024);
        assert_eq!(anon.counters.anon_huge_pages, 2048 * 1024);
        assert_eq!(anon.thp_eligible, Some(true));
    }

    #[test]
    fn fixture_accuracy_names_hugetlb_and_cow() {
        let v = parse_smaps_vec(&fixture("cases/smaps_accuracy")).expect("parse");
        assert_eq!(v.len(), 7);
        // smaps escapes only the newline: `\101` is four bytes of the name.
        assert_eq!(
            v[0].path,
            MappingPath::File {
                path: Name::new(&br"/dev/shm/lit\101oct.bin"[..]),
                deleted: false
            }
        );
        assert_eq!(
            v[1].path,
            MappingPath::Memfd {
                name: Name::new(&br"acc-priv\101x"[..]),
                deleted: true
            }
        );
        assert_eq!(v[2].counters.anonymous, 512 << 10, "copy-on-write pages");
        assert!(!v[2].perms.shared && !v[2].is_hugetlb());
        let sysv = &v[3];
        assert!(sysv.is_hugetlb());
        assert_eq!((sysv.counters.rss, sysv.counters.pss), (0, 0));
        assert_eq!(sysv.counters.hugetlb(), 4 << 20);
        assert_eq!(sysv.kernel_page_size, 2 << 20);
        assert!(v[4].is_hugetlb() && v[5].is_hugetlb() && v[6].is_hugetlb());
        assert_eq!(v[5].path, MappingPath::Anonymous);
        assert!(!v[0].is_hugetlb());
    }

    #[test]
    fn fixture_truncated() {
        let v = parse_smaps_vec(&fixture("cases/smaps_truncated")).expect("parse");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].counters.rss, 1024 * 1024);
        let last = &v[1];
        assert_eq!(last.path, MappingPath::Pseudo("[heap]".into()));
        assert_eq!(last.counters.rss, 132 * 1024);
        // The file ends inside `Pss:`: the partial line is dropped, not guessed.
        assert_eq!(last.counters.pss, 0);
        assert_eq!(last.vm_flags, "");
    }

    #[test]
    fn fixture_real_capture_matches_rollup() {
        // Pids 43 and 44 slept while captured, so their smaps and smaps_rollup agree exactly; pid 1
        // was running the capture and allocated a little between the two reads.
        for (pid, slack) in [(1, 256 * 1024), (43, 0), (44, 0)] {
            let text = fixture(&format!("proc/{pid}/smaps"));
            let headers = text.split(|&b| b == b'\n').filter(|l| is_header(l)).count();
            let mut sum = MemCounters::default();
            let n = parse_smaps(&text, |m| sum.add(&m.counters)).expect("parse");
            assert_eq!(n, headers, "pid {pid}");
            let rollup = parse_smaps_rollup(&fixture(&format!("proc/{pid}/smaps_rollup")))
                .expect("rollup")
                .expect("has mm");
            assert!(sum.rss.abs_diff(rollup.rss) <= slack, "pid {pid}");
            assert!(
                sum.anonymous.abs_diff(rollup.anonymous) <= slack,
                "pid {pid}"
            );
            assert!(sum.uss().abs_diff(rollup.uss()) <= slack, "pid {pid}");
            // Per-mapping PSS is truncated to kB; the rollup sums the exact values.
            let pss_slack = slack + n as u64 * 1024;
            assert!(sum.pss.abs_diff(rollup.pss) <= pss_slack, "pid {pid}");
            if slack == 0 {
                assert!(rollup.pss >= sum.pss, "pid {pid}");
            }
        }
        assert_eq!(
            parse_smaps_vec(&fixture("proc/2/smaps")).map(|v| v.len()),
            Ok(0)
        );
    }

    #[test]
    fn fixture_real_capture_shared_objects() {
        let v = parse_smaps_vec(&fixture("proc/43/smaps")).expect("parse");
        let find = |p: &MappingPath| v.iter().find(|m| &m.path == p);
        let memfd = find(&MappingPath::Memfd {
            name: Name::from("fixture-memfd"),
            deleted: true,
        })
        .expect("memfd mapping");
        assert_eq!(memfd.size(), 2 << 20);
        assert_eq!(memfd.counters.rss, 2 << 20);
        assert_eq!(memfd.counters.pss, 1 << 20, "shared with pid 1");
        let sysv = find(&MappingPath::SysV { key: 0x162e }).expect("SysV mapping");
        assert_eq!(sysv.inode, 0, "inode is the shmid");
        assert_eq!(sysv.counters.pss, 512 << 10);
        let destroyed = find(&MappingPath::SysV { key: 0x162f }).expect("destroyed SysV mapping");
        assert_eq!(destroyed.inode, 1);
        let shm = find(&MappingPath::File {
            path: Name::from("/dev/shm/memscope-fixture"),
            deleted: false,
        })
        .expect("/dev/shm mapping");
        assert!(shm.perms.shared);
        assert_eq!(shm.counters.pss, 512 << 10);
        let deleted = find(&MappingPath::File {
            path: Name::from("/tmp/memscope fixture file"),
            deleted: true,
        })
        .expect("deleted file with a space");
        assert!(!deleted.perms.shared);
        for p in ["[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]"] {
            assert!(find(&MappingPath::Pseudo(p.into())).is_some(), "{p}");
        }
        assert!(
            v.iter()
                .all(|m| m.kernel_page_size == 4096 && !m.vm_flags.is_empty())
        );
    }
}
