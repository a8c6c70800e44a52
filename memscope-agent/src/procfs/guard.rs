//! Reads with a deadline, and a penalty box for what got stuck.
//!
//! A `/proc` read can block for good: a FIFO in place of a file in a fake tree, a mapping on a hung
//! NFS server, a process whose mmap lock is held forever. A guarded read runs on a companion thread
//! of the calling thread (one per caller, reused, so a read costs two channel hand-offs, not a
//! thread); the caller waits up to the deadline. A read past it is abandoned: the companion is left
//! behind blocked (counted, at most [`MAX_STUCK`] at once), the caller gets an error naming the path,
//! and the process (or, outside a pid directory, the path) goes into the penalty box: not read again
//! until its backoff expires and the stuck read has returned. Each new strike doubles the backoff,
//! from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]; a read that succeeds clears the strikes.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// Abandoned readers still blocked at once; beyond it a guarded read is refused (fails at once).
pub const MAX_STUCK: usize = 16;
/// Backoff after a first stuck read.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What a penalty applies to: a process (any file under `root/PID/`), or one path elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoxKey {
    Pid(u32),
    Path(PathBuf),
}

impl BoxKey {
    /// The key of `path` under `root`.
    pub fn of(root: &Path, path: &Path) -> BoxKey {
        path.strip_prefix(root)
            .ok()
            .and_then(|rel| rel.components().next())
            .and_then(|c| super::parse_pid(c.as_os_str().as_encoded_bytes()))
            .map_or_else(|| BoxKey::Path(path.to_path_buf()), BoxKey::Pid)
    }
}

/// The state of an abandoned reader.
const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const RETURNED: u8 = 2;

#[derive(Debug)]
struct Penalty {
    /// The path whose read got stuck (the last one).
    path: PathBuf,
    strikes: u32,
    until: Instant,
    /// The stuck reader: `ABANDONED` while it is still blocked.
    reader: Arc<AtomicU8>,
}

/// One penalty, for the `agent` record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct PenaltyReport {
    /// The process, when the path is under a pid directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The path whose read did not return in time.
    pub path: String,
    /// Reads of it that got stuck in a row.
    pub strikes: u32,
    /// Time left before it is read again (0: as soon as the stuck read has returned).
    pub retry_in_ms: u64,
    /// The stuck read has not returned yet.
    pub still_blocked: bool,
}

/// Guarded reads: their deadline, the stuck readers and the penalty box. Shared by every clone of
/// one [`super::ProcFs`].
#[derive(Debug)]
pub struct ReadGuard {
    deadline: Duration,
    boxed: Mutex<HashMap<BoxKey, Penalty>>,
    stuck: Arc<AtomicUsize>,
    abandoned_total: AtomicU64,
    /// Warnings not yet reported (one per stuck read), for the next `snapshot` record.
    warnings: Mutex<Vec<String>>,
}

/// A companion reader thread of one calling thread.
struct Companion {
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    state: Arc<AtomicU8>,
}

thread_local! {
    static COMPANION: RefCell<Option<Companion>> = const { RefCell::new(None) };
}

impl ReadGuard {
    pub fn new(deadline: Duration) -> ReadGuard {
        ReadGuard {
            deadline,
            boxed: Mutex::default(),
            stuck: Arc::default(),
            abandoned_total: AtomicU64::new(0),
            warnings: Mutex::default(),
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `read` (of `path`, penalty key `key`) on the companion thread, waiting up to the
    /// deadline. Fails at once when the key is in the penalty box, or too many readers are stuck.
    pub fn run<T: Send + 'static>(
        &self,
        key: BoxKey,
        path: &Path,
        read: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        self.admit(&key)?;
        let stuck_now = self.stuck.load(Ordering::Acquire);
        if stuck_now >= MAX_STUCK {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not read: {stuck_now} earlier reads are stuck (at most {MAX_STUCK})"),
            ));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(read());
        });
        let state = COMPANION.with(|c| -> io::Result<Arc<AtomicU8>> {
            let mut c = c.borrow_mut();
            let companion = match c.as_ref() {
                Some(companion) => companion,
                None => c.insert(self.spawn_companion()?),
            };
            let state = Arc::clone(&companion.state);
            if let Err(mpsc::SendError(job)) = companion.jobs.send(job) {
                // The companion is gone (it cannot be, but then read here).
                *c = None;
                job();
            }
            Ok(state)
        })?;
        match rx.recv_timeout(self.deadline) {
            Ok(result) => {
                if result.is_ok() {
                    self.clear(&key);
                }
                result
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.stuck.fetch_add(1, Ordering::AcqRel);
                state.store(ABANDONED, Ordering::Release);
                // Dropping the sender lets the companion end once its read returns.
                COMPANION.with(|c| c.borrow_mut().take());
                self.abandoned_total.fetch_add(1, Ordering::Relaxed);
                Err(self.strike(key, path, state))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::other("reader thread died"))
            }
        }
    }

    fn spawn_companion(&self) -> io::Result<Companion> {
        let (jobs, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mine = Arc::clone(&state);
        let stuck = Arc::clone(&self.stuck);
        std::thread::Builder::new()
            .name("memscope-read".into())
            .stack_size(256 << 10)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                    if mine.load(Ordering::Acquire) != RUNNING {
                        break;
                    }
                }
                if mine
                    .compare_exchange(ABANDONED, RETURNED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    stuck.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
        Ok(Companion { jobs, state })
    }

    /// Refuses a key in the penalty box: its backoff has not expired, or its stuck read has not
    /// returned.
    fn admit(&self, key: &BoxKey) -> io::Result<()> {
        let boxed = self.boxed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = boxed.get(key) else {
            return Ok(());
        };
        let now = Instant::now();
        let blocked = p.reader.load(Ordering::Acquire) == ABANDONED;
        if now < p.until || blocked {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "not read: in the penalty box after {} stuck read(s) of {}{}",
                    p.strikes,
                    p.path.display(),
                    if blocked {
                        " (still blocked)".to_string()
                    } else {
                        format!(
                            ", retried in {}s",
                            p.until.saturating_duration_since(now).as_secs()
                        )
                    },
                ),
            ));
        }
        Ok(())
    }

    fn strike(&self, key: BoxKey, path: &Path, reader: Arc<AtomicU8>) -> io::Error {
        let mut boxed = self.boxed.lock().unwrap_or_else(|p| p.into_inner());
        let strikes = boxed.get(&key).map_or(0, |p| p.strikes) + 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (strikes - 1).min(16))
            .min(MAX_BACKOFF);
        boxed.insert(
            key,
            Penalty {
                path: path.to_path_buf(),
                strikes,
                until: Instant::now() + backoff,
                reader,
            },
        );
        let message = format!(
            "read did not return within {}; abandoned, not read again for {} (strike {strikes})",
            humantime::format_duration(self.deadline),
            humantime::format_duration(backoff),
        );
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{}: {message}", path.display()));
        tracing::warn!(path = %path.display(), strikes, "a read did not return in time; abandoned");
        io::Error::new(io::ErrorKind::TimedOut, message)
    }

    fn clear(&self, key: &BoxKey) {
        let mut boxed = self.boxed.lock().unwrap_or_else(|p| p.into_inner());
        if !boxed.is_empty() {
            boxed.remove(key);
        }
    }

    /// Readers abandoned and still blocked now.
    pub fn stuck_now(&self) -> usize {
        self.stuck.load(Ordering::Acquire)
    }

    /// Reads abandoned since start.
    pub fn abandoned_total(&self) -> u64 {
        self.abandoned_total.load(Ordering::Relaxed)
    }

    /// The penalty box now, by path.
    pub fn penalties(&self) -> Vec<PenaltyReport> {
        let boxed = self.boxed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut v: Vec<PenaltyReport> = boxed
            .iter()
            .map(|(k, p)| PenaltyReport {
                pid: match k {
                    BoxKey::Pid(pid) => Some(*pid),
                    BoxKey::Path(_) => None,
                },
                path: p.path.display().to_string(),
                strikes: p.strikes,
                retry_in_ms: p.until.saturating_duration_since(now).as_millis() as u64,
                still_blocked: p.reader.load(Ordering::Acquire) == ABANDONED,
            })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// The warnings of reads abandoned since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Stuck reads, for the `agent` record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct StuckReads {
    /// Reads abandoned past their deadline since start.
    pub abandoned: u64,
    /// Abandoned readers still blocked (threads left behind; at most 16).
    pub blocked_now: u64,
    /// Processes (or paths) not read until their backoff expires.
    pub penalty_box: Vec<PenaltyReport>,
}

impl StuckReads {
    /// No read was ever abandoned (the field is left out of the `agent` record).
    pub fn is_none(&self) -> bool {
        self.abandoned == 0 && self.blocked_now == 0 && self.penalty_box.is_empty()
    }

    pub fn of(guard: Option<&ReadGuard>) -> StuckReads {
        guard.map_or_else(StuckReads::default, |g| StuckReads {
            abandoned: g.abandoned_total(),
            blocked_now: g.stuck_now() as u64,
            penalty_box: g.penalties(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, rel: &str) -> PathBuf {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600))
            .expect("mkfifo");
        p
    }

    #[test]
    fn a_stuck_read_is_abandoned_boxed_and_its_pid_refused_until_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let path = fifo(root, "43/smaps_rollup");
        std::fs::write(root.join("43/status"), b"Name: x\n").expect("write");
        std::fs::create_dir(root.join("44")).expect("mkdir");
        std::fs::write(root.join("44/status"), b"Name: y\n").expect("write");
        let guard = ReadGuard::new(Duration::from_secs(1));
        let read = |p: PathBuf| move || std::fs::read(p);
        let e = guard
            .run(BoxKey::of(root, &path), &path, read(path.clone()))
            .expect_err("a FIFO with no writer blocks in open");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(guard.stuck_now(), 1);
        assert_eq!(guard.abandoned_total(), 1);
        let w = guard.take_warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("43/smaps_rollup"), "{w:?}");
        // Another file of pid 43 is refused at once; pid 44 is read.
        let status43 = root.join("43/status");
        let e = guard
            .run(
                BoxKey::of(root, &status43),
                &status43,
                read(status43.clone()),
            )
            .expect_err("boxed");
        assert!(e.to_string().contains("penalty box"), "{e}");
        let status44 = root.join("44/status");
        assert_eq!(
            guard
                .run(
                    BoxKey::of(root, &status44),
                    &status44,
                    read(status44.clone())
                )
                .expect("pid 44"),
            b"Name: y\n"
        );
        let report = guard.penalties();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].pid, Some(43));
        assert!(report[0].still_blocked);
        assert!(report[0].retry_in_ms > 0);
        // A writer lets the stuck read return: the reader thread ends and is no longer counted.
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the FIFO for writing");
        drop(w);
        let waited = Instant::now();
        while guard.stuck_now() > 0 && waited.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(guard.stuck_now(), 0);
        assert!(!guard.penalties()[0].still_blocked);
    }

    #[test]
    fn the_box_key_is_the_pid_directory_or_the_path() {
        let root = Path::new("/p");
        assert_eq!(BoxKey::of(root, Path::new("/p/43/smaps")), BoxKey::Pid(43));
        assert_eq!(
            BoxKey::of(root, Path::new("/p/meminfo")),
            BoxKey::Path("/p/meminfo".into())
        );
        assert_eq!(
            BoxKey::of(root, Path::new("/p/043/smaps")),
            BoxKey::Path("/p/043/smaps".into())
        );
    }

    #[test]
    fn strikes_double_the_backoff_up_to_the_cap() {
        let guard = ReadGuard::new(Duration::from_millis(1));
        let key = BoxKey::Pid(7);
        let p = Path::new("/p/7/smaps");
        for n in 1..=12u32 {
            let _ = guard.strike(key.clone(), p, Arc::new(AtomicU8::new(RETURNED)));
            let r = &guard.penalties()[0];
            assert_eq!(r.strikes, n);
            let want = FIRST_BACKOFF.saturating_mul(1 << (n - 1)).min(MAX_BACKOFF);
            assert!(r.retry_in_ms <= want.as_millis() as u64);
            assert!(r.retry_in_ms + 1000 >= want.as_millis() as u64, "{r:?}");
        }
        guard.clear(&key);
        assert!(guard.penalties().is_empty());
    }
}
