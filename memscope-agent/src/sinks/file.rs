//! A file sink with size-based rotation: before a line would push the live file past `max_bytes`,
//! `path` becomes `path.1`, `path.1` becomes `path.2`, … and `path.keep` is dropped. Lines are never
//! split across files. Writes are synchronous (a local file); the store calls this from its own task.
//!
//! The agent runs as root and the records hold command lines, so the file is treated as hostile
//! ground:
//! - The directory must be owned by root or the agent's user, and not writable by group or others
//!   unless it is sticky (`/tmp`-like). It is held open, and every open and rename is relative to
//!   that descriptor (`openat`, `renameat`), so a directory swapped in later is never written into.
//! - The live file is opened with `O_NOFOLLOW | O_CLOEXEC` (a planted symlink is refused, never
//!   followed), must be a regular file with one link, owned by root or the agent's user, and a new
//!   file is created with mode 0640 whatever the umask.
//! - Before each emission the live file's inode is compared with the one at the path: a file (or
//!   directory) that was removed or replaced is reopened rather than written into unseen.
//! - A rotation moves the oldest file first and stops at the first failed step, so a failing
//!   rotation never moves a kept file onto another; the lines it could not place are dropped and
//!   counted ([`WriteError::dropped_lines`]), never written past `max_bytes`.
//! - Each run of lines for one file goes out in one `write`, so a crash leaves at most one partial
//!   line; a file that does not end in a newline when it is opened gets one first, so the next line
//!   is never glued onto a partial one.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Write},
    os::{
        fd::OwnedFd,
        unix::{ffi::OsStrExt, fs::FileExt},
    },
    path::{Path, PathBuf},
};

use rustix::{
    fs::{Access, AtFlags, FileType, Mode, OFlags, Stat},
    io::Errno,
};
use tracing::{info, warn};

use super::{WriteError, count_lines};

/// Mode of a file the sink creates (the umask does not apply).
pub const FILE_MODE: u32 = 0o640;

/// Whom the sink trusts with the output directory: root and the agent's own user. Injectable, so
/// ownership rules are tested without root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trust {
    pub euid: u32,
}

impl Trust {
    /// The running process's effective uid.
    pub fn current() -> Trust {
        Trust {
            euid: rustix::process::geteuid().as_raw(),
        }
    }

    fn owner_ok(self, uid: u32) -> bool {
        uid == 0 || uid == self.euid
    }

    /// Whether files may be created and renamed in a directory with this `stat`: nobody but root
    /// and the agent's user may add, remove or replace entries in it.
    pub fn check_dir(self, st: &Stat) -> Result<(), String> {
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err("not a directory".to_string());
        }
        if !self.owner_ok(st.st_uid) {
            return Err(format!(
                "the directory is owned by uid {}, not by root or the agent's user (uid {}); \
                 its owner could plant links",
                st.st_uid, self.euid
            ));
        }
        if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            return Err(format!(
                "the directory is writable by group or others (mode {:o}) and not sticky; \
                 another user could plant links",
                st.st_mode & 0o7777
            ));
        }
        Ok(())
    }

    /// Whether an existing file with this `lstat` may be appended to.
    pub fn check_file(self, st: &Stat) -> Result<(), String> {
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Symlink {
            return Err("is a symbolic link (never followed)".to_string());
        }
        if kind != FileType::RegularFile {
            return Err(format!("not a regular file ({kind:?})"));
        }
        if st.st_nlink > 1 {
            return Err(format!(
                "has {} hard links; refusing to write through one",
                st.st_nlink
            ));
        }
        if !self.owner_ok(st.st_uid) {
            return Err(format!(
                "owned by uid {}, not by root or the agent's user (uid {})",
                st.st_uid, self.euid
            ));
        }
        Ok(())
    }
}

/// Checks that `path` can be used as the output file, creating nothing: its directory passes
/// [`Trust::check_dir`], an existing file passes [`Trust::check_file`] and is writable, and
/// otherwise the directory is writable. `check-config` and the agent's start use this.
pub fn check_path(path: &Path, trust: Trust) -> io::Result<()> {
    let (dir_path, name) = split(path)?;
    let (dir, _) = open_dir(&dir_path, trust)?;
    match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            trust.check_file(&st).map_err(|m| refused(path, &m))?;
            rustix::fs::accessat(&dir, &name, Access::WRITE_OK, AtFlags::EACCESS)
                .map_err(|e| with_path(path, e.into()))
        }
        Err(Errno::NOENT) => rustix::fs::accessat(
            &dir,
            ".",
            Access::WRITE_OK | Access::EXEC_OK,
            AtFlags::EACCESS,
        )
        .map_err(|e| with_path(&dir_path, e.into())),
        Err(e) => Err(with_path(path, e.into())),
    }
}

/// `(dev, inode)`: what identifies a file or directory across renames.
type Id = (u64, u64);

fn id(st: &Stat) -> Id {
    (st.st_dev, st.st_ino)
}

pub struct RotatingFile {
    path: PathBuf,
    dir_path: PathBuf,
    name: OsString,
    max_bytes: u64,
    keep: u32,
    trust: Trust,
    /// The directory, held open; `None` until opened (or after it was found gone).
    dir: Option<(OwnedFd, Id)>,
    /// The live file; `None` until (re)opened.
    file: Option<(File, Id)>,
    size: u64,
}

impl RotatingFile {
    /// Opens (creating if needed, never truncating) the live file at `path`.
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        RotatingFile::open_with(path, max_bytes, keep, Trust::current())
    }

    /// [`RotatingFile::open`] with an explicit [`Trust`].
    pub fn open_with(
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
        trust: Trust,
    ) -> io::Result<RotatingFile> {
        let (dir_path, name) = split(&path)?;
        let mut f = RotatingFile {
            path,
            dir_path,
            name,
            max_bytes,
            keep: keep.max(1),
            trust,
            dir: None,
            file: None,
            size: 0,
        };
        f.ensure_open()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes complete lines, rotating between lines when needed. On an error, the lines that were
    /// not written are counted in the [`WriteError`]; the next call starts by reopening whatever
    /// was lost.
    pub fn write_batch(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        let mut rest = lines;
        if rest.is_empty() {
            return Ok(());
        }
        let fail = |rest: &[u8], source| WriteError {
            dropped_lines: count_lines(rest),
            source,
        };
        if let Err(e) = self.ensure_open() {
            return Err(fail(rest, e));
        }
        // At most one rotation per line: after it, the next line goes out whatever the size.
        let mut rotated = false;
        while !rest.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size);
            let take = fitting_prefix(rest, room, self.size == 0 || rotated);
            if take == 0 {
                if let Err(e) = self.rotate() {
                    return Err(fail(rest, e));
                }
                rotated = true;
                continue;
            }
            rotated = false;
            let (chunk, tail) = rest.split_at(take);
            let written = match &mut self.file {
                Some((f, _)) => f.write_all(chunk),
                None => Err(io::Error::other("the output file is not open")),
            };
            if let Err(e) = written {
                // The file may now end mid-line: reopen (and end that line) next time.
                self.file = None;
                return Err(fail(rest, with_path(&self.path, e)));
            }
            self.size += take as u64;
            rest = tail;
        }
        Ok(())
    }

    /// Reopens the directory if it was removed or replaced, and the live file if it was removed,
    /// replaced or moved away, so that no emission goes into an inode nobody can see.
    fn ensure_open(&mut self) -> io::Result<()> {
        let now =
            rustix::fs::stat(&self.dir_path).map_err(|e| with_path(&self.dir_path, e.into()))?;
        if self.dir.as_ref().map(|d| d.1) != Some(id(&now)) {
            if self.dir.is_some() {
                warn!(dir = %self.dir_path.display(), "the output directory was removed or replaced; reopening it");
            }
            self.file = None;
            self.dir = None;
            let (fd, st) = open_dir(&self.dir_path, self.trust)?;
            self.dir = Some((fd, id(&st)));
        }
        let Some((dir, _)) = &self.dir else {
            return Err(io::Error::other("the output directory is not open"));
        };
        if let Some((_, file_id)) = &self.file {
            match rustix::fs::statat(dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if id(&st) == *file_id => return Ok(()),
                Ok(_) | Err(Errno::NOENT) => {
                    warn!(path = %self.path.display(), "the output file was removed or replaced; reopening it");
                    self.file = None;
                }
                Err(e) => return Err(with_path(&self.path, e.into())),
            }
        }
        let (file, st) = open_live(dir, &self.name, &self.path, self.trust)?;
        self.size = st.st_size.max(0) as u64;
        if self.size > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, self.size - 1)
                .map_err(|e| with_path(&self.path, e))?;
            if last[0] != b'\n' {
                (&file)
                    .write_all(b"\n")
                    .map_err(|e| with_path(&self.path, e))?;
                self.size += 1;
                info!(path = %self.path.display(), "the output file ended in a partial line (an earlier run was killed mid-write); ended it");
            }
        }
        self.file = Some((file, id(&st)));
        Ok(())
    }

    fn rotated(&self, n: u32) -> OsString {
        let mut s = self.name.clone();
        s.push(format!(".{n}"));
        s
    }

    /// Shifts the kept files up by one, oldest first, then moves the live file to `.1` and opens a
    /// new one. Stops at the first failed step: a slot is only renamed into once it is empty (the
    /// last slot, `.keep`, is the one meant to be dropped).
    fn rotate(&mut self) -> io::Result<()> {
        let Some((dir, _)) = &self.dir else {
            return Err(io::Error::other("the output directory is not open"));
        };
        let exists = |name: &OsString| -> io::Result<bool> {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(with_path(&self.dir_path.join(name), e.into())),
            }
        };
        for n in (0..self.keep).rev() {
            let from = if n == 0 {
                self.name.clone()
            } else {
                self.rotated(n)
            };
            let to = self.rotated(n + 1);
            if n > 0 && !exists(&from)? {
                continue;
            }
            if n + 1 < self.keep && exists(&to)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: rotation stopped: the slot is still taken, so nothing is moved onto it",
                        self.dir_path.join(&to).display()
                    ),
                ));
            }
            rustix::fs::renameat(dir, &from, dir, &to).map_err(|e| {
                with_path(
                    &self.dir_path.join(&from),
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("rotating to {}: {e}", self.dir_path.join(&to).display()),
                    ),
                )
            })?;
        }
        self.file = None;
        self.ensure_open()
    }
}

/// Splits `path` into its directory (`.` when it has none) and file name.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let name = path
        .file_name()
        .filter(|n| !n.as_bytes().is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: does not name a file", path.display()),
            )
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

fn open_dir(dir: &Path, trust: Trust) -> io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| with_path(dir, e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| with_path(dir, e.into()))?;
    trust.check_dir(&st).map_err(|m| refused(dir, &m))?;
    Ok((fd, st))
}

/// Opens (or creates, mode [`FILE_MODE`]) the live file in `dir` without following a link, and
/// checks what was opened.
fn open_live(
    dir: &OwnedFd,
    name: &OsString,
    path: &Path,
    trust: Trust,
) -> io::Result<(File, Stat)> {
    // O_NONBLOCK: a FIFO planted at the path fails the open instead of blocking it; it does
    // nothing for the regular file the checks below insist on.
    let flags = OFlags::RDWR
        | OFlags::APPEND
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOCTTY
        | OFlags::NONBLOCK;
    let mode = Mode::from_raw_mode(FILE_MODE);
    let (fd, created) =
        match rustix::fs::openat(dir, name, flags | OFlags::CREATE | OFlags::EXCL, mode) {
            Ok(fd) => (fd, true),
            Err(Errno::EXIST) => (
                rustix::fs::openat(dir, name, flags, Mode::empty())
                    .map_err(|e| with_path(path, opened(e)))?,
                false,
            ),
            Err(e) => return Err(with_path(path, opened(e))),
        };
    let st = rustix::fs::fstat(&fd).map_err(|e| with_path(path, e.into()))?;
    trust.check_file(&st).map_err(|m| refused(path, &m))?;
    if created {
        rustix::fs::fchmod(&fd, mode).map_err(|e| with_path(path, e.into()))?;
    }
    Ok((File::from(fd), st))
}

/// An open error, with ELOOP explained (it is what `O_NOFOLLOW` gives for a symlink).
fn opened(e: Errno) -> io::Error {
    if e == Errno::LOOP {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "is a symbolic link (never followed)",
        )
    } else {
        e.into()
    }
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: refusing to write: {why}", path.display()),
    )
}

/// Length of the longest run of whole lines at the start of `buf` that fits in `room` bytes; with
/// `at_least_one` (a fresh file), at least the first line, however long.
fn fitting_prefix(buf: &[u8], room: u64, at_least_one: bool) -> usize {
    let mut end = 0usize;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        let next = end + line.len();
        if next as u64 > room && !(at_least_one && end == 0) {
            break;
        }
        end = next;
    }
    end
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    fn me() -> Trust {
        Trust::current()
    }

    fn lines_of(n: std::ops::Range<u32>) -> Vec<u8> {
        n.flat_map(|i| format!("{{\"n\":{i:03}}}\n").into_bytes())
            .collect()
    }

    #[test]
    fn rotates_by_size_keeps_n_and_never_splits_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 2).expect("open");
        // 10-byte lines: two fit per file.
        for i in 0..7 {
            f.write_batch(&lines_of(i..i + 1)).expect("write");
        }
        assert_eq!(read(&path), "{\"n\":006}\n");
        assert_eq!(
            read(&dir.path().join("m.jsonl.1")),
            "{\"n\":004}\n{\"n\":005}\n"
        );
        assert_eq!(
            read(&dir.path().join("m.jsonl.2")),
            "{\"n\":002}\n{\"n\":003}\n"
        );
        assert!(
            !dir.path().join("m.jsonl.3").exists(),
            "keep = 2 drops older files"
        );
    }

    #[test]
    fn one_batch_spans_rotations_line_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 3).expect("open");
        f.write_batch(&lines_of(0..5)).expect("write");
        assert_eq!(read(&path), "{\"n\":004}\n");
        assert_eq!(
            read(&dir.path().join("m.jsonl.1")),
            "{\"n\":002}\n{\"n\":003}\n"
        );
        assert_eq!(
            read(&dir.path().join("m.jsonl.2")),
            "{\"n\":000}\n{\"n\":001}\n"
        );
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "0123456789012345678\n").expect("seed");
        let mut f = RotatingFile::open(path.clone(), 25, 1).expect("open");
        f.write_batch(b"abcdefghi\n").expect("write");
        assert_eq!(read(&path), "abcdefghi\n");
        assert_eq!(read(&dir.path().join("m.jsonl.1")), "0123456789012345678\n");
    }

    #[test]
    fn a_line_larger_than_max_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 4, 1).expect("open");
        f.write_batch(b"0123456789\n").expect("write");
        assert_eq!(read(&path), "0123456789\n");
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("m.jsonl");
        let e = RotatingFile::open(path.clone(), 10, 1)
            .err()
            .expect("fails");
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret\n").expect("seed");
        let path = dir.path().join("m.jsonl");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        let e = RotatingFile::open(path.clone(), 1 << 20, 2)
            .err()
            .expect("a symlink must be refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(read(&victim), "secret\n", "the link target is untouched");
        let e = check_path(&path, me()).expect_err("check refuses it too");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_symlink_planted_between_rotations_is_refused_and_its_lines_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret\n").expect("seed");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 2).expect("open");
        f.write_batch(&lines_of(0..2)).expect("fills the file");
        // The attacker's window: right after the live file moved to `.1`, a link appears at the path.
        std::fs::rename(&path, dir.path().join("m.jsonl.1")).expect("rename");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        let e = f.write_batch(&lines_of(2..5)).expect_err("refused");
        assert_eq!(e.dropped_lines, 3);
        assert_eq!(read(&victim), "secret\n");
    }

    #[test]
    fn a_hard_link_to_another_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret\n").expect("seed");
        let path = dir.path().join("m.jsonl");
        std::fs::hard_link(&victim, &path).expect("link");
        let e = RotatingFile::open(path, 1 << 20, 2).err().expect("refused");
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(read(&victim), "secret\n");
    }

    #[test]
    fn new_files_get_mode_0640_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 2).expect("open");
        f.write_batch(&lines_of(0..3)).expect("write");
        for p in [path.clone(), dir.path().join("m.jsonl.1")] {
            let mode = std::fs::metadata(&p).expect("stat").mode() & 0o7777;
            assert_eq!(mode, FILE_MODE, "{}", p.display());
        }
    }

    #[test]
    fn a_directory_writable_by_others_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let path = out.join("m.jsonl");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = RotatingFile::open(path.clone(), 100, 1)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert!(check_path(&path, me()).is_err());
        assert!(!path.exists(), "nothing is created in a refused directory");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        check_path(&path, me()).expect("sticky and ours: fine");
        assert!(!path.exists(), "the check creates nothing");
        RotatingFile::open(path.clone(), 100, 1).expect("opens");
        assert!(path.exists());
    }

    #[test]
    fn ownership_rules_with_an_injected_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = rustix::fs::stat(dir.path()).expect("stat");
        let owner = st.st_uid;
        let stranger = Trust {
            euid: owner.wrapping_add(4242),
        };
        // Root owns everything: a non-root agent still trusts a root-owned directory.
        if owner == 0 {
            assert!(stranger.check_dir(&st).is_ok());
        } else {
            assert!(stranger.check_dir(&st).is_err());
        }
        let mut other = st;
        other.st_uid = 4242;
        other.st_mode = (other.st_mode & !0o7777) | 0o1777;
        let e = Trust { euid: 0 }
            .check_dir(&other)
            .expect_err("someone else's sticky dir");
        assert!(e.contains("owned by uid 4242"), "{e}");
        assert!(Trust { euid: 4242 }.check_dir(&other).is_ok());
        let f = dir.path().join("f");
        std::fs::write(&f, "").expect("write");
        let mut fst = rustix::fs::lstat(&f).expect("lstat");
        fst.st_uid = 4242;
        assert!(Trust { euid: 0 }.check_file(&fst).is_err());
        assert!(Trust { euid: 4242 }.check_file(&fst).is_ok());
    }

    #[test]
    fn a_removed_live_file_is_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 1 << 20, 2).expect("open");
        f.write_batch(&lines_of(0..1)).expect("write");
        std::fs::remove_file(&path).expect("rm");
        f.write_batch(&lines_of(1..2)).expect("write");
        assert_eq!(read(&path), "{\"n\":001}\n");
    }

    #[test]
    fn a_replaced_live_file_is_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 1 << 20, 2).expect("open");
        f.write_batch(&lines_of(0..1)).expect("write");
        // logrotate-style: move away, put a new file in place.
        std::fs::rename(&path, dir.path().join("old")).expect("mv");
        std::fs::write(&path, "").expect("new file");
        f.write_batch(&lines_of(1..2)).expect("write");
        assert_eq!(read(&path), "{\"n\":001}\n");
        assert_eq!(read(&dir.path().join("old")), "{\"n\":000}\n");
    }

    #[test]
    fn a_removed_directory_drops_counted_lines_and_recovers_when_back() {
        let base = tempfile::tempdir().expect("tempdir");
        let out = base.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let path = out.join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 3).expect("open");
        f.write_batch(&lines_of(0..1)).expect("write");
        std::fs::remove_dir_all(&out).expect("rm -r");
        let e = f.write_batch(&lines_of(1..3)).expect_err("no directory");
        assert_eq!(e.dropped_lines, 2);
        std::fs::create_dir(&out).expect("mkdir again");
        f.write_batch(&lines_of(3..4)).expect("writes again");
        assert_eq!(read(&path), "{\"n\":003}\n");
    }

    #[test]
    fn rotation_never_loses_kept_files_after_the_live_file_vanished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let mut f = RotatingFile::open(path.clone(), 20, 3).expect("open");
        f.write_batch(&lines_of(0..6)).expect("write");
        let kept = |d: &Path| -> Vec<String> {
            (1..=3)
                .map(|n| read(&d.join(format!("m.jsonl.{n}"))))
                .collect()
        };
        let before = kept(dir.path());
        std::fs::remove_file(&path).expect("rm");
        for i in 6..8 {
            f.write_batch(&lines_of(i..i + 1)).expect("write");
        }
        assert_eq!(kept(dir.path()), before, "kept files are not shifted away");
    }

    #[test]
    fn a_failing_rotation_step_moves_nothing_onto_a_kept_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        // `.3` is a non-empty directory: `.2 -> .3` fails, even for root.
        std::fs::create_dir_all(dir.path().join("m.jsonl.3/x")).expect("mkdir");
        std::fs::write(dir.path().join("m.jsonl.1"), "one\n").expect("seed");
        std::fs::write(dir.path().join("m.jsonl.2"), "two\n").expect("seed");
        let mut f = RotatingFile::open(path.clone(), 20, 3).expect("open");
        f.write_batch(&lines_of(0..2)).expect("fills the live file");
        for i in 2..5 {
            let e = f
                .write_batch(&lines_of(i..i + 1))
                .expect_err("cannot rotate");
            assert_eq!(e.dropped_lines, 1);
        }
        assert_eq!(read(&dir.path().join("m.jsonl.1")), "one\n");
        assert_eq!(read(&dir.path().join("m.jsonl.2")), "two\n");
        assert_eq!(read(&path), "{\"n\":000}\n{\"n\":001}\n");
    }

    #[test]
    fn a_partial_last_line_is_ended_before_new_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "{\"n\":000}\n{\"n\":0").expect("seed a crash");
        let mut f = RotatingFile::open(path.clone(), 1 << 20, 2).expect("open");
        f.write_batch(&lines_of(1..2)).expect("write");
        assert_eq!(read(&path), "{\"n\":000}\n{\"n\":0\n{\"n\":001}\n");
    }

    #[test]
    fn check_path_creates_nothing_and_names_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        check_path(&path, me()).expect("fine");
        assert!(!path.exists());
        let e = check_path(&dir.path().join("nope/m.jsonl"), me()).expect_err("no dir");
        assert!(e.to_string().contains("nope"), "{e}");
        std::fs::create_dir(&path).expect("a directory in the way");
        let e = check_path(&path, me()).expect_err("a directory is no file");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = check_path(Path::new("/"), me()).expect_err("no file name");
        assert!(e.to_string().contains("does not name a file"), "{e}");
    }
}
