//! Reading `/proc`: pure parsers (bytes in, typed values out) in the submodules, and [`ProcFs`], the
//! only thing that does I/O. Every collector gets a `ProcFs` with an injectable root, so tests run
//! against fixture trees in parallel.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

pub mod cgroup;
pub mod cmdline;
pub mod counters;
pub mod dev;
pub mod escape;
pub mod guard;
pub mod meminfo;
pub mod mountinfo;
pub mod pidns;
pub mod redact;
pub mod smaps;
pub mod smaps_rollup;
pub mod stat;
pub mod statm;
pub mod status;
pub mod sysvipc;
mod text;

#[cfg(test)]
mod robustness_tests;

pub use dev::Dev;
/// The 1-based line of a byte offset in a text (also the config's error lines).
pub(crate) use text::line_at;

/// What a `/proc` read was for; bytes and reads are counted per class for the `agent` record.
/// A class is a name: a collector that reads a file of its own defines its class next to it
/// (`const MEMORY_STAT: FileClass = FileClass::new("memory_stat");`), no list to extend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileClass(&'static str);

impl FileClass {
    pub const MEMINFO: FileClass = FileClass("meminfo");
    pub const STATUS: FileClass = FileClass("status");
    pub const STATM: FileClass = FileClass("statm");
    pub const SMAPS_ROLLUP: FileClass = FileClass("smaps_rollup");
    pub const SMAPS: FileClass = FileClass("smaps");
    pub const CMDLINE: FileClass = FileClass("cmdline");
    pub const MOUNTINFO: FileClass = FileClass("mountinfo");
    pub const SYSVIPC: FileClass = FileClass("sysvipc");
    pub const OTHER: FileClass = FileClass("other");

    /// The classes every `agent` record lists, read or not (others appear once read).
    pub const COMMON: &[FileClass] = &[
        FileClass::MEMINFO,
        FileClass::STATUS,
        FileClass::STATM,
        FileClass::SMAPS_ROLLUP,
        FileClass::SMAPS,
        FileClass::CMDLINE,
        FileClass::MOUNTINFO,
        FileClass::SYSVIPC,
        FileClass::OTHER,
    ];

    pub const fn new(name: &'static str) -> FileClass {
        FileClass(name)
    }

    /// The most a single read of this class may return. `/proc` files are generated text of bounded
    /// size, but a fake or broken tree (or `/dev/zero` bind-mounted over `smaps`) is endless: a read
    /// stops at the cap with an error naming the path. `smaps` gets room for a process at a raised
    /// `vm.max_map_count` (262144 mappings at about 1 KiB each); every other file is far below
    /// 16 MiB.
    pub fn read_cap(self) -> u64 {
        if self == FileClass::SMAPS {
            512 << 20
        } else {
            16 << 20
        }
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// Bytes read and reads done for one [`FileClass`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCount {
    pub bytes: u64,
    pub reads: u64,
}

/// Bytes and reads per [`FileClass`], shared by every clone of one [`ProcFs`].
#[derive(Debug)]
pub struct ReadCounters {
    by_class: std::sync::Mutex<std::collections::BTreeMap<FileClass, ReadCount>>,
}

impl Default for ReadCounters {
    fn default() -> Self {
        ReadCounters {
            by_class: std::sync::Mutex::new(
                FileClass::COMMON
                    .iter()
                    .map(|c| (*c, ReadCount::default()))
                    .collect(),
            ),
        }
    }
}

impl ReadCounters {
    fn add(&self, class: FileClass, bytes: usize) {
        let mut g = self.by_class.lock().unwrap_or_else(|p| p.into_inner());
        let c = g.entry(class).or_default();
        c.bytes += bytes as u64;
        c.reads += 1;
    }

    fn get(&self, class: FileClass) -> ReadCount {
        let g = self.by_class.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&class).copied().unwrap_or_default()
    }

    /// Bytes read so far for `class`.
    pub fn bytes(&self, class: FileClass) -> u64 {
        self.get(class).bytes
    }

    /// Reads (files opened and read) so far for `class`.
    pub fn reads(&self, class: FileClass) -> u64 {
        self.get(class).reads
    }

    /// Every class counted so far (the common ones always), by name.
    pub fn by_class(&self) -> Vec<(&'static str, ReadCount)> {
        let g = self.by_class.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(c, n)| (c.name(), *n)).collect()
    }

    /// Bytes read so far over all classes.
    pub fn total_bytes(&self) -> u64 {
        self.by_class().iter().map(|(_, n)| n.bytes).sum()
    }
}

/// An error reading or parsing something under `/proc`. Always carries the path.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// ENOENT/ESRCH: the process (or file) is gone. Callers skip quietly.
    #[error("{path}: gone")]
    Gone { path: PathBuf },
    /// EACCES/EPERM: not allowed to read it. Callers mark the field `inaccessible` and count it.
    #[error("{path}: permission denied")]
    Denied { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

impl ProcError {
    pub fn from_io(path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => ProcError::Gone { path },
            Some(libc::EACCES) | Some(libc::EPERM) => ProcError::Denied { path },
            _ if source.kind() == io::ErrorKind::NotFound => ProcError::Gone { path },
            _ if source.kind() == io::ErrorKind::PermissionDenied => ProcError::Denied { path },
            _ => ProcError::Io { path, source },
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, ProcError::Gone { .. })
    }

    pub fn is_denied(&self) -> bool {
        matches!(self, ProcError::Denied { .. })
    }

    pub fn path(&self) -> &Path {
        match self {
            ProcError::Gone { path }
            | ProcError::Denied { path }
            | ProcError::Io { path, .. }
            | ProcError::Parse { path, .. } => path,
        }
    }
}

/// A malformed `/proc` file. `line` is 1-based; 0 means "the file as a whole".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl ParseError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

/// What a line-by-line parser could read, and the lines it skipped (each with its line number and
/// what was wrong). One malformed line costs that line, not the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lenient<T> {
    pub value: T,
    pub skipped: Vec<ParseError>,
}

/// The `/proc` tree memscope reads, rooted anywhere (a fixture tree in tests).
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
    counters: Arc<ReadCounters>,
    /// Reads with a deadline (the agent's); `None`: reads inline (tests, tools).
    guard: Option<Arc<guard::ReadGuard>>,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs {
            root: root.into(),
            counters: Arc::new(ReadCounters::default()),
            guard: None,
        }
    }

    /// This tree with a deadline on every file opened and read ([`guard`]): a read past it is
    /// abandoned and its process put in the penalty box.
    pub fn with_read_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.guard = Some(Arc::new(guard::ReadGuard::new(deadline)));
        self
    }

    /// The read guard, when reads have a deadline.
    pub fn guard(&self) -> Option<&guard::ReadGuard> {
        self.guard.as_deref()
    }

    /// Runs `read` of `path` under the guard's deadline, or inline without one.
    fn guarded<T: Send + 'static>(
        &self,
        path: &Path,
        read: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match &self.guard {
            Some(g) => g.run(guard::BoxKey::of(&self.root, path), path, read),
            None => read(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn counters(&self) -> &ReadCounters {
        &self.counters
    }

    /// `root/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `root/PID/file`.
    pub fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        p.push(file);
        p
    }

    /// Reads `path` whole into `buf` (cleared first), counting the bytes under `class`.
    pub fn read_into(
        &self,
        path: &Path,
        class: FileClass,
        buf: &mut Vec<u8>,
    ) -> Result<(), ProcError> {
        buf.clear();
        let cap = class.read_cap();
        let owned = path.to_path_buf();
        let mut taken = std::mem::take(buf);
        let (back, read) = self
            .guarded(path, move || {
                let read = File::open(&owned).and_then(|f| read_capped(&f, cap, &mut taken));
                Ok((taken, read))
            })
            .map_err(|e| ProcError::from_io(path.to_path_buf(), e))?;
        *buf = back;
        self.counters.add(class, buf.len());
        read.map_err(|e| ProcError::from_io(path.to_path_buf(), e))
    }

    /// Reads a file from a tree the agent does not trust (a cgroup hierarchy): a symlink as the last
    /// component is refused (`O_NOFOLLOW`), so is anything but a regular file (a FIFO would block),
    /// and a file over `max_bytes` is an error rather than a memory hog. Counted under `class`.
    pub fn read_untrusted(
        &self,
        path: &Path,
        class: FileClass,
        buf: &mut Vec<u8>,
        max_bytes: u64,
    ) -> Result<(), ProcError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        buf.clear();
        let err = |e| ProcError::from_io(path.to_path_buf(), e);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        if !f.metadata().map_err(err)?.is_file() {
            return Err(ProcError::Io {
                path: path.to_path_buf(),
                source: io::Error::other("not a regular file"),
            });
        }
        f.take(max_bytes + 1).read_to_end(buf).map_err(err)?;
        if buf.len() as u64 > max_bytes {
            return Err(ProcError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(format!("larger than {max_bytes} bytes")),
            });
        }
        self.counters.add(class, buf.len());
        Ok(())
    }

    /// Reads `path` whole, counting the bytes under `class`.
    pub fn read(&self, path: &Path, class: FileClass) -> Result<Vec<u8>, ProcError> {
        let mut buf = Vec::new();
        self.read_into(path, class, &mut buf)?;
        Ok(buf)
    }

    /// Reads `path` and parses it with `parse`, attaching the path to a parse error.
    pub fn read_parsed<T>(
        &self,
        path: &Path,
        class: FileClass,
        buf: &mut Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
    ) -> Result<T, ProcError> {
        self.read_into(path, class, buf)?;
        parse(buf).map_err(|source| ProcError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads `path` and parses it with a lenient parser: the value, and one warning per skipped
    /// line, naming the path and the line (`/proc/meminfo: line 3: … (skipped)`).
    pub fn read_lenient<T>(
        &self,
        path: &Path,
        class: FileClass,
        buf: &mut Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Lenient<T>,
    ) -> Result<(T, Vec<String>), ProcError> {
        self.read_into(path, class, buf)?;
        let Lenient { value, skipped } = parse(buf);
        let warnings = skipped
            .iter()
            .map(|e| format!("{}: {e} (skipped)", path.display()))
            .collect();
        Ok((value, warnings))
    }

    /// `meminfo`, parsed, and a warning per skipped line.
    pub fn meminfo(
        &self,
        buf: &mut Vec<u8>,
    ) -> Result<(Vec<meminfo::MeminfoField>, Vec<String>), ProcError> {
        let path = self.path("meminfo");
        self.read_lenient(&path, FileClass::MEMINFO, buf, meminfo::parse_meminfo)
    }

    /// The agent's own mount table, `self/mountinfo`, parsed, and a warning per skipped line.
    pub fn self_mountinfo(
        &self,
        buf: &mut Vec<u8>,
    ) -> Result<(Vec<mountinfo::MountInfo>, Vec<String>), ProcError> {
        let path = self.path("self/mountinfo");
        self.read_lenient(&path, FileClass::MOUNTINFO, buf, mountinfo::parse_mountinfo)
    }

    /// The numeric entries of the root (process ids), sorted.
    pub fn pids(&self) -> Result<Vec<u32>, ProcError> {
        let rd =
            std::fs::read_dir(&self.root).map_err(|e| ProcError::from_io(self.root.clone(), e))?;
        let mut pids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| ProcError::from_io(self.root.clone(), e))?;
            if let Some(pid) = parse_pid(entry.file_name().as_encoded_bytes()) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }
}

/// A process directory name as the kernel writes it: decimal digits, no sign, no leading zero, not
/// 0, within `u32`. `043` and `+44` are not pids (in a fake or tampered tree they would duplicate
/// pids 43 and 44).
pub fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.first() == Some(&b'0') {
        return None;
    }
    text::parse_u32(name)
}

/// Reads `f` to its end into `buf` (appending), failing once more than `cap` bytes came.
fn read_capped(f: &File, cap: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut limited = f.take(cap.saturating_add(1));
    limited.read_to_end(buf)?;
    if buf.len() as u64 > cap {
        buf.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {cap} bytes; stopped reading there"),
        ));
    }
    Ok(())
}

/// Open `/proc/PID/<file>` descriptors kept between passes, so a per-tick read of every process is a
/// `pread` at offset 0 (the kernel regenerates the text) rather than a path lookup, open and close:
/// about 6x cheaper for `statm`. A descriptor of a process that exited reads ESRCH; the file is
/// then reopened by path once (the pid may belong to a new process) and dropped if that fails.
/// At most `cap` descriptors are kept; beyond that, files are read the plain way.
#[derive(Debug)]
pub struct OpenFiles {
    file: &'static str,
    class: FileClass,
    cap: usize,
    files: std::collections::HashMap<u32, File>,
}

impl OpenFiles {
    pub fn new(file: &'static str, class: FileClass, cap: usize) -> OpenFiles {
        OpenFiles {
            file,
            class,
            cap,
            files: std::collections::HashMap::new(),
        }
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Closes the descriptors of pids not in `live` (sorted).
    pub fn retain_sorted(&mut self, live: &[u32]) {
        self.files.retain(|pid, _| live.binary_search(pid).is_ok());
        crate::collectors::shrink_sparse(&mut self.files);
    }

    /// Reads `root/pid/<file>` into `buf` through a kept descriptor when possible. A kept
    /// descriptor of a process that is gone fails with ESRCH even when the pid is in use again
    /// (the descriptor names the old process): then the pid is opened afresh and the read says
    /// [`Reopened::OtherProcess`].
    pub fn read(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        buf: &mut Vec<u8>,
    ) -> Result<Reopened, ProcError> {
        let cap = self.class.read_cap();
        let path = || procfs.pid_path(pid, self.file);
        let mut reopened = Reopened::No;
        if let Some(f) = self.files.get(&pid) {
            match pread_all(f, buf, cap) {
                Ok(()) => {
                    procfs.counters.add(self.class, buf.len());
                    return Ok(Reopened::No);
                }
                // The process behind the descriptor is gone: the pid may be someone new.
                Err(e) => {
                    if e.raw_os_error() == Some(libc::ESRCH) {
                        reopened = Reopened::OtherProcess;
                    }
                    self.files.remove(&pid);
                }
            }
        }
        let p = path();
        let owned = p.clone();
        let mut taken = std::mem::take(buf);
        let (back, opened) = procfs
            .guarded(&p, move || {
                let opened = File::open(&owned).and_then(|f| {
                    pread_all(&f, &mut taken, cap)?;
                    Ok(f)
                });
                Ok((taken, opened))
            })
            .map_err(|e| ProcError::from_io(p.clone(), e))?;
        *buf = back;
        let f = opened.map_err(|e| ProcError::from_io(p, e))?;
        procfs.counters.add(self.class, buf.len());
        if self.files.len() < self.cap {
            self.files.insert(pid, f);
        }
        Ok(reopened)
    }
}

/// Reads `f` whole from offset 0 into `buf` (cleared first), failing past `cap` bytes.
fn pread_all(f: &File, buf: &mut Vec<u8>, cap: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read_at(&mut chunk, buf.len() as u64)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("larger than {cap} bytes; stopped reading there"),
            ));
        }
    }
}

/// Whether [`OpenFiles::read`] read through a new descriptor because the kept one's process is
/// gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reopened {
    No,
    /// The kept descriptor's process is gone and the pid belongs to another process now.
    OtherProcess,
}

/// The system page size in bytes.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod open_files_tests {
    use super::*;

    #[test]
    fn only_canonical_pid_names_are_pids() {
        for (name, want) in [
            ("1", Some(1)),
            ("43", Some(43)),
            ("4294967295", Some(u32::MAX)),
            ("043", None),
            ("+44", None),
            ("0", None),
            ("-1", None),
            ("4294967296", None),
            ("", None),
            ("self", None),
            ("4 4", None),
        ] {
            assert_eq!(parse_pid(name.as_bytes()), want, "{name:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["43", "043", "+44", "44", "self"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        assert_eq!(ProcFs::new(dir.path()).pids().expect("pids"), vec![43, 44]);
    }

    #[test]
    fn an_endless_file_stops_at_the_cap_with_its_path() {
        let procfs = ProcFs::new("/");
        let zero = Path::new("/dev/zero");
        let mut buf = Vec::new();
        let e = procfs
            .read_into(zero, FileClass::STATUS, &mut buf)
            .expect_err("endless");
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        assert!(e.to_string().contains("larger than"), "{e}");
        assert_eq!(buf.len() as u64, FileClass::STATUS.read_cap());
        let mut files = OpenFiles::new("zero", FileClass::STATM, 4);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("7")).expect("mkdir");
        std::os::unix::fs::symlink(zero, dir.path().join("7/zero")).expect("link");
        let e = files
            .read(&ProcFs::new(dir.path()), 7, &mut buf)
            .expect_err("endless");
        assert!(e.to_string().contains("7/zero"), "{e}");
    }

    #[test]
    fn a_collector_counts_its_own_file_class_without_a_central_list() {
        const MEMORY_STAT: FileClass = FileClass::new("memory_stat");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("memory.stat"), b"anon 4096\n").expect("write");
        let procfs = ProcFs::new(dir.path());
        procfs
            .read(&procfs.path("memory.stat"), MEMORY_STAT)
            .expect("read");
        let by_class = procfs.counters().by_class();
        let names: Vec<&str> = by_class.iter().map(|(c, _)| *c).collect();
        assert!(names.contains(&"memory_stat"), "{names:?}");
        assert!(
            names.contains(&"statm"),
            "the common classes are always listed"
        );
        assert_eq!(procfs.counters().bytes(MEMORY_STAT), 10);
        assert_eq!(procfs.counters().reads(MEMORY_STAT), 1);
        assert_eq!(procfs.counters().total_bytes(), 10);
    }

    #[test]
    fn kept_descriptors_are_reread_counted_and_dropped_when_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        for pid in [10, 11] {
            std::fs::create_dir(dir.path().join(pid.to_string())).expect("mkdir");
            std::fs::write(dir.path().join(format!("{pid}/statm")), "1 2 3 4 0 5 0\n")
                .expect("write");
        }
        let procfs = ProcFs::new(dir.path());
        let mut files = OpenFiles::new("statm", FileClass::STATM, 1);
        let mut buf = Vec::new();
        files.read(&procfs, 10, &mut buf).expect("read 10");
        assert_eq!(buf, b"1 2 3 4 0 5 0\n");
        files.read(&procfs, 11, &mut buf).expect("read 11");
        assert_eq!(files.len(), 1, "the cap bounds the descriptors kept");
        // Kept descriptor: a second read goes through it (pread at 0), counted each time.
        files.read(&procfs, 10, &mut buf).expect("read 10 again");
        assert_eq!(procfs.counters().reads(FileClass::STATM), 3);
        assert_eq!(procfs.counters().bytes(FileClass::STATM), 3 * 14);
        // A process that is gone (and not kept) is Gone.
        std::fs::remove_dir_all(dir.path().join("11")).expect("rm");
        assert!(
            files
                .read(&procfs, 11, &mut buf)
                .expect_err("gone")
                .is_gone()
        );
        files.retain_sorted(&[]);
        assert!(files.is_empty());
    }
}
