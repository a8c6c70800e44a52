//! `/proc/sysvipc/shm`: a header line naming the columns, then one SysV shared memory segment per
//! line (`ipc/shm.c: sysvipc_shm_proc_show`).

use super::{
    ParseError,
    text::{fields, lines, lossy, parse_i64, parse_radix, parse_u32, parse_u64},
};

/// `SHM_DEST`: the segment is marked for destruction (`IPC_RMID`) and goes when the last attach does.
const SHM_DEST: u32 = 0o1000;
/// `SHM_LOCKED`: `SHM_LOCK`ed, never swapped.
const SHM_LOCKED: u32 = 0o2000;

/// One SysV shared memory segment of `/proc/sysvipc/shm`. Sizes are in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShmSegment {
    /// The IPC key (`IPC_PRIVATE` = 0, and 0 again once marked for destroy).
    pub key: i32,
    /// The id; smaps shows it as the inode of the `/SYSV%08x` mapping.
    pub shmid: u64,
    /// Mode bits plus `SHM_DEST`/`SHM_LOCKED`, printed in octal by the kernel.
    pub perms: u32,
    pub size: u64,
    pub cpid: u32,
    pub lpid: u32,
    pub nattch: u64,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    /// Resident bytes (Linux 4.x+); `None` on kernels without the column.
    pub rss: Option<u64>,
    /// Swapped-out bytes; `None` on kernels without the column.
    pub swap: Option<u64>,
}

impl ShmSegment {
    /// `SHM_DEST` is set: removed with `IPC_RMID`, still attached somewhere.
    pub fn marked_for_destroy(&self) -> bool {
        self.perms & SHM_DEST != 0
    }

    /// `SHM_LOCKED` is set.
    pub fn locked(&self) -> bool {
        self.perms & SHM_LOCKED != 0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    Key,
    Shmid,
    Perms,
    Size,
    Cpid,
    Lpid,
    Nattch,
    Uid,
    Gid,
    Cuid,
    Cgid,
    Atime,
    Dtime,
    Ctime,
    Rss,
    Swap,
    Unknown,
}

const REQUIRED: [(Col, &str); 14] = [
    (Col::Key, "key"),
    (Col::Shmid, "shmid"),
    (Col::Perms, "perms"),
    (Col::Size, "size"),
    (Col::Cpid, "cpid"),
    (Col::Lpid, "lpid"),
    (Col::Nattch, "nattch"),
    (Col::Uid, "uid"),
    (Col::Gid, "gid"),
    (Col::Cuid, "cuid"),
    (Col::Cgid, "cgid"),
    (Col::Atime, "atime"),
    (Col::Dtime, "dtime"),
    (Col::Ctime, "ctime"),
];

fn column(name: &[u8]) -> Col {
    match name {
        b"rss" => Col::Rss,
        b"swap" => Col::Swap,
        _ => REQUIRED
            .iter()
            .find(|(_, n)| n.as_bytes() == name)
            .map_or(Col::Unknown, |(c, _)| *c),
    }
}

/// A time column: the kernel prints `time64_t` with `%llu`, so accept both signs.
fn parse_time(f: &[u8]) -> Option<i64> {
    parse_i64(f).or_else(|| parse_u64(f).map(|v| i64::from_ne_bytes(v.to_ne_bytes())))
}

/// Parses `/proc/sysvipc/shm` by the header's column names, not positions: older kernels lack
/// `rss`/`swap`, and unknown new columns are skipped. `perms` is octal, uids are unsigned.
/// Empty input or a header alone (no segments) is an empty vec.
pub fn parse_sysvipc_shm(text: &[u8]) -> Result<Vec<ShmSegment>, ParseError> {
    let mut ls = lines(text).filter(|l| !l.bytes.trim_ascii().is_empty());
    let Some(header) = ls.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<Col> = fields(header.bytes).map(column).collect();
    for (col, name) in REQUIRED {
        if !cols.contains(&col) {
            return Err(ParseError::new(
                header.no,
                format!("no `{name}` column in header"),
            ));
        }
    }
    let mut out = Vec::new();
    for line in ls {
        let no = line.no;
        let mut seg = ShmSegment::default();
        let mut n = 0;
        for (col, f) in cols.iter().zip(fields(line.bytes)) {
            n += 1;
            let bad = || ParseError::new(no, format!("bad value {:?}", lossy(f)));
            let u32_of = |f: &[u8]| parse_u32(f).ok_or_else(bad);
            let u64_of = |f: &[u8]| parse_u64(f).ok_or_else(bad);
            match col {
                Col::Key => {
                    seg.key = parse_i64(f)
                        .and_then(|k| i32::try_from(k).ok())
                        .ok_or_else(bad)?;
                }
                Col::Shmid => seg.shmid = u64_of(f)?,
                Col::Perms => {
                    seg.perms = parse_radix(f, 8)
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or_else(bad)?;
                }
                Col::Size => seg.size = u64_of(f)?,
                Col::Cpid => seg.cpid = u32_of(f)?,
                Col::Lpid => seg.lpid = u32_of(f)?,
                Col::Nattch => seg.nattch = u64_of(f)?,
                Col::Uid => seg.uid = u32_of(f)?,
                Col::Gid => seg.gid = u32_of(f)?,
                Col::Cuid => seg.cuid = u32_of(f)?,
                Col::Cgid => seg.cgid = u32_of(f)?,
                Col::Atime => seg.atime = parse_time(f).ok_or_else(bad)?,
                Col::Dtime => seg.dtime = parse_time(f).ok_or_else(bad)?,
                Col::Ctime => seg.ctime = parse_time(f).ok_or_else(bad)?,
                Col::Rss => seg.rss = Some(u64_of(f)?),
                Col::Swap => seg.swap = Some(u64_of(f)?),
                Col::Unknown => {}
            }
        }
        if n < cols.len() {
            return Err(ParseError::new(
                no,
                format!("expected {} columns, got {n}", cols.len()),
            ));
        }
        out.push(seg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn inline_current_kernel() {
        let t = b"       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
      5678          0   640               1048576     1     1      2     0     0     0     0 1795689360 1795689360 1795689360               1048576                     0
         0          1  1600                262144     1     1      2  1000   100     0     0 1795689360          0 1795689360                262144                  4096
";
        let s = parse_sysvipc_shm(t).expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].key, s[0].shmid, s[0].perms), (0x162e, 0, 0o640));
        assert_eq!(s[0].size, 1 << 20);
        assert_eq!(
            (s[0].nattch, s[0].rss, s[0].swap),
            (2, Some(1 << 20), Some(0))
        );
        assert!(!s[0].marked_for_destroy() && !s[0].locked());
        assert_eq!(s[1].perms, 0o1600);
        assert!(s[1].marked_for_destroy());
        assert_eq!((s[1].uid, s[1].gid, s[1].dtime), (1000, 100, 0));
        assert_eq!(s[1].swap, Some(4096));
    }

    #[test]
    fn errors_and_empty() {
        assert_eq!(parse_sysvipc_shm(b""), Ok(Vec::new()));
        let header = b"       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime\n";
        assert_eq!(parse_sysvipc_shm(header), Ok(Vec::new()));
        let mut short = header.to_vec();
        short.extend_from_slice(b"1 2 600 4096 1 1 0\n");
        assert_eq!(parse_sysvipc_shm(&short).map_err(|e| e.line), Err(2));
        let mut bad_perms = header.to_vec();
        bad_perms.extend_from_slice(b"1 2 689 4096 1 1 0 0 0 0 0 0 0 0\n");
        assert_eq!(parse_sysvipc_shm(&bad_perms).map_err(|e| e.line), Err(2));
        assert_eq!(
            parse_sysvipc_shm(b"key shmid size\n").map_err(|e| e.line),
            Err(1)
        );
    }

    #[test]
    fn fixture_old_kernel_without_rss_swap() {
        let s = parse_sysvipc_shm(&fixture("cases/sysvipc_shm_old_kernel")).expect("parse");
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|s| s.rss.is_none() && s.swap.is_none()));
        assert_eq!((s[0].key, s[0].size, s[0].perms), (0x162e, 4 << 20, 0o666));
        assert!(s[1].locked() && s[1].marked_for_destroy());
        assert_eq!(s[1].key, 0);
    }

    #[test]
    fn fixture_huge_values() {
        let s = parse_sysvipc_shm(&fixture("cases/sysvipc_shm_huge")).expect("parse");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].size, u64::MAX);
        assert_eq!(s[0].rss, Some(u64::MAX - 4095));
        assert_eq!(s[0].swap, Some(1 << 40));
        assert_eq!(
            (s[0].uid, s[0].gid, s[0].cuid, s[0].cgid),
            (4_294_967_294, 4_294_967_294, 65534, 4_294_967_295)
        );
        assert_eq!(s[0].shmid, 2_147_483_647);
        assert_eq!(s[0].key, i32::MAX);
        assert_eq!(s[0].nattch, u64::MAX);
        assert_eq!(s[1].key, -1);
        assert_eq!(s[1].nattch, 1_000_000);
        assert_eq!(s[2].key, i32::MIN);
        assert_eq!(s[2].ctime, 253_402_300_799);
        assert!(s[2].locked() && !s[2].marked_for_destroy());
        // An unknown future column between known ones is skipped.
        assert_eq!(s[2].swap, Some(0));
    }

    #[test]
    fn fixture_capture() {
        let s = parse_sysvipc_shm(&fixture("proc/sysvipc/shm")).expect("parse");
        assert_eq!(s.len(), 2);
        let live = s.iter().find(|s| s.key == 0x162e).expect("segment 0x162e");
        assert_eq!((live.shmid, live.size, live.nattch), (0, 1 << 20, 2));
        assert_eq!(live.rss, Some(1 << 20));
        assert!(!live.marked_for_destroy());
        let dest = s.iter().find(|s| s.shmid == 1).expect("segment 1");
        assert!(dest.marked_for_destroy());
        assert_eq!((dest.key, dest.size), (0, 256 << 10));
    }
}
