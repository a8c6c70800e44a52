//! `/proc/PID/mountinfo` (`self`'s, and one member's per other mount namespace: [`namespaces`]):
//! one mount per line,
//! `id parent major:minor root mount_point options [optional…] - fstype source super_options`.

use super::{
    Dev, Lenient, ParseError,
    escape::{MOUNTINFO_ESCAPED, Name, decode_escapes},
    text::{lines, lossy, parse_u32},
};

/// One line of `/proc/PID/mountinfo` (see proc(5)). Paths are octal-unescaped bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of files on this mount; matches the `major:minor` of smaps headers.
    pub dev: Dev,
    /// The root of the mount within its filesystem.
    pub root: Name,
    pub mount_point: Name,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub mount_options: String,
    /// Zero or more `tag[:value]` fields (`shared:1`, `master:2`, `propagate_from:3`, `unbindable`).
    pub optional_fields: Vec<String>,
    /// `ext4`, `tmpfs`, `fuse.sshfs`, …
    pub fstype: String,
    pub source: Name,
    /// Per-superblock options (`rw,size=1024k,mode=755` for tmpfs).
    pub super_options: String,
}

pub mod namespaces;
mod topology;

pub use namespaces::{MountNamespaces, MountNs, NsCache, NsRef, SharedNamespaces, discover};
pub use topology::{NsMounts, SHMEM_FSTYPES, Superblock, Via, select_superblocks, tmpfs_devices};

/// Undoes mountinfo's escaping of space, tab, newline and backslash (`\040 \011 \012 \134`).
fn decode_mountinfo(f: &[u8]) -> Vec<u8> {
    decode_escapes(f, MOUNTINFO_ESCAPED)
}

fn text_field(f: &[u8]) -> String {
    lossy(&decode_mountinfo(f)).into_owned()
}

/// Parses `/proc/PID/mountinfo`. Optional fields run up to the lone `-` separator; fields are
/// separated by single spaces (spaces inside paths are escaped as `\040`), so an empty source is
/// kept as an empty name. Extra fields after the super options (none today) are ignored.
///
/// A malformed line is skipped and reported ([`Lenient::skipped`]); the other mounts stay usable.
pub fn parse_mountinfo(text: &[u8]) -> Lenient<Vec<MountInfo>> {
    let mut out: Lenient<Vec<MountInfo>> = Lenient::default();
    for line in lines(text) {
        if line.bytes.trim_ascii().is_empty() {
            continue;
        }
        match parse_line(line.no, line.bytes) {
            Ok(m) => out.value.push(m),
            Err(e) => out.skipped.push(e),
        }
    }
    out
}

fn parse_line(no: usize, line: &[u8]) -> Result<MountInfo, ParseError> {
    let mut it = line.split(|&b| b == b' ');
    let mut next = |what: &str| {
        it.next()
            .ok_or_else(|| ParseError::new(no, format!("missing {what}")))
    };
    let num = |f: &[u8], what: &str| {
        parse_u32(f).ok_or_else(|| ParseError::new(no, format!("bad {what} {:?}", lossy(f))))
    };
    let mount_id = num(next("mount id")?, "mount id")?;
    let parent_id = num(next("parent id")?, "parent id")?;
    let dev = next("major:minor")?;
    let dev = Dev::parse(dev, 10)
        .ok_or_else(|| ParseError::new(no, format!("bad major:minor {:?}", lossy(dev))))?;
    let root = Name(decode_mountinfo(next("root")?));
    let mount_point = Name(decode_mountinfo(next("mount point")?));
    let mount_options = text_field(next("mount options")?);
    let mut optional_fields = Vec::new();
    loop {
        match next("`-` separator")? {
            b"-" => break,
            f => optional_fields.push(text_field(f)),
        }
    }
    let fstype = text_field(next("fstype")?);
    let source = Name(decode_mountinfo(next("source")?));
    let super_options = text_field(next("super options")?);
    Ok(MountInfo {
        mount_id,
        parent_id,
        dev,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fstype,
        source,
        super_options,
    })
}

/// The value of `key` in comma-separated options (`option_value("rw,size=64k", "size")` is
/// `Some("64k")`). A bare flag equal to `key` gives `Some("")`; an absent key gives `None`.
pub fn option_value<'a>(options: &'a str, key: &str) -> Option<&'a str> {
    options
        .split(',')
        .find_map(|opt| match opt.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if opt == key => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::text::fixture;

    #[test]
    fn inline_line_with_optional_fields() {
        let t = b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n";
        let m = parse_mountinfo(t).value;
        assert_eq!(m.len(), 1);
        let m = &m[0];
        assert_eq!((m.mount_id, m.parent_id), (36, 35));
        assert_eq!(
            m.dev,
            Dev {
                major: 98,
                minor: 0
            }
        );
        assert_eq!(m.root, Name::from("/mnt1"));
        assert_eq!(m.mount_point, Name::from("/mnt2"));
        assert_eq!(m.mount_options, "rw,noatime");
        assert_eq!(
            m.optional_fields,
            vec!["master:1".to_string(), "shared:7".to_string()]
        );
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, Name::from("/dev/root"));
        assert_eq!(m.super_options, "rw,errors=continue");
    }

    #[test]
    fn a_malformed_line_is_skipped_and_the_rest_kept() {
        let m = parse_mountinfo(b"1 2 0:1 / / rw - x y z\nbad\n3 1 0:2 / /b rw - tmpfs t rw\n");
        let ids: Vec<u32> = m.value.iter().map(|m| m.mount_id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(m.skipped.iter().map(|e| e.line).collect::<Vec<_>>(), [2]);
        // No separator; a bad device; a bad parent id.
        for bad in [
            &b"1 2 0:1 / / rw shared:1\n"[..],
            b"1 2 01 / / rw - x y z\n",
            b"1 x 0:1 / / rw - x y z\n",
        ] {
            let m = parse_mountinfo(bad);
            assert!(m.value.is_empty());
            assert_eq!(m.skipped.len(), 1);
            assert_eq!(m.skipped[0].line, 1);
        }
        assert_eq!(parse_mountinfo(b""), Lenient::default());
    }

    #[test]
    fn options() {
        assert_eq!(
            option_value("rw,size=65536k,mode=755", "size"),
            Some("65536k")
        );
        assert_eq!(option_value("rw,size=65536k,mode=755", "mode"), Some("755"));
        assert_eq!(option_value("rw,nr_inodes=0", "size"), None);
        assert_eq!(option_value("rw,noexec", "noexec"), Some(""));
        assert_eq!(option_value("", "size"), None);
        assert_eq!(option_value("rw,sizex=1", "size"), None);
    }

    #[test]
    fn fixture_escapes() {
        let m = parse_mountinfo(&fixture("cases/mountinfo_escapes")).value;
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].mount_point, Name::from("/mnt/my disk"));
        assert_eq!(m[1].source, Name::from("/dev/disk with\tspace"));
        assert_eq!(m[2].mount_point, Name::new(&b"/srv/caf\xe9"[..]));
        assert_eq!(m[2].root, Name::new(&b"/dir\\x"[..]));
        assert_eq!(m[2].fstype, "tmpfs");
        assert_eq!(option_value(&m[2].super_options, "size"), Some("1024k"));
        assert!(m[2].optional_fields.is_empty());
        assert_eq!(m[3].source, Name::default());
        assert_eq!(m[3].fstype, "fuse.sshfs");
        assert_eq!(
            m[3].optional_fields,
            vec!["shared:5".to_string(), "master:2".to_string()]
        );
        // `\134` is the backslash; the `101` after it is text, not an escape of `A`.
        assert_eq!(m[4].mount_point, Name::new(&br"/dev/shm/lit\101oct"[..]));
    }

    #[test]
    fn fixture_capture() {
        let m = parse_mountinfo(&fixture("proc/self/mountinfo")).value;
        assert!(m.len() > 5);
        let shm: Vec<_> = m
            .iter()
            .filter(|m| m.mount_point == Name::from("/dev/shm"))
            .collect();
        assert!(!shm.is_empty());
        assert!(shm.iter().all(|m| m.fstype == "tmpfs"));
        assert!(
            shm.iter()
                .all(|m| option_value(&m.super_options, "size").is_some())
        );
        // The smaps of pid 43 maps /dev/shm/memscope-fixture from device 00:1b = 0:27.
        assert!(shm.iter().any(|m| m.dev
            == Dev {
                major: 0,
                minor: 27
            }));
        assert!(m.iter().any(|m| m.mount_point == Name::from("/")));
    }
}
