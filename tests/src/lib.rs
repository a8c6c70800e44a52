//! Helpers for memscope's integration tests: run the agent once (as a library) and read its lines.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use memscope_agent::config::{Config, SinkKind};
use serde_json::Value;

pub mod bench;
pub mod soak;
pub mod stream;
pub mod volume;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The agent binary, for tests that run it as a process: `MEMSCOPE_AGENT_BIN`, else the one cargo
/// built next to the running test (`target/<profile>/memscope-agent`). Panics, saying how to build
/// it, when it is missing.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("MEMSCOPE_AGENT_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/deps/<test>-<hash> -> target/<profile>/memscope-agent
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("memscope-agent"))
        })
        .expect("cannot locate the agent binary");
    assert!(
        bin.exists(),
        "{}: no agent binary; run `cargo build -p memscope-agent` first (`cargo xtask \
         test-pipeline` does), or set MEMSCOPE_AGENT_BIN",
        bin.display()
    );
    bin
}

/// The golden run's config: the agent over `fixtures/proc`, host `golden`.
pub fn golden_config() -> Config {
    let root = workspace_root();
    let mut config = Config::default();
    config.agent.host = "golden".to_string();
    config.agent.proc_root = root.join("fixtures/proc");
    // The fixture's mount points are not this host's: a host root that does not exist makes every
    // tmpfs mount an error of its own (reported, not fatal) instead of measuring the live machine.
    config.collectors.tmpfs.host_root = root.join("fixtures/no-host-root");
    // The fixture processes' /proc/PID/cgroup point into this v2 tree (see fixtures/README.md).
    config.collectors.cgroup.root = root.join("fixtures/cgroup/v2");
    config
}

/// Runs the agent once with `config` (its output redirected to a temporary file) and returns the
/// emitted lines parsed as JSON.
pub fn run_once(mut config: Config) -> anyhow::Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("out.jsonl");
    config.output.sink = SinkKind::File;
    config.output.path = Some(path.clone());
    let sink = memscope_agent::runtime::open_sink(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(memscope_agent::runtime::run(
        config,
        sink,
        true,
        std::future::pending(),
    ))?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON ({e}): {l}")))
        .collect()
}

/// Panics unless running as root: for the privileged lane, which must fail loudly, never pass empty.
pub fn require_root(lane: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the {lane} tests need root (euid is {euid}); run them through `sudo cargo xtask test`"
    );
}

/// A `memscope-test-child` process driven over stdin/stdout: it answers `ready` at start and `done`
/// after each command (`mmap`, `memfd`, `shmget`); closing its stdin ends it.
pub struct TestChild {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl TestChild {
    /// Starts the test child binary at `path` (an integration test passes
    /// `env!("CARGO_BIN_EXE_memscope-test-child")`) and waits for `ready`.
    pub fn spawn(path: &str) -> TestChild {
        use std::process::{Command, Stdio};
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {path}: {e}"));
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut this = TestChild {
            child,
            stdin,
            stdout,
        };
        this.expect_line("ready");
        this
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect_line(&mut self, want: &str) {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the child's stdout: {e}"));
        assert_eq!(line.trim(), want, "unexpected answer from the test child");
    }

    /// Sends one command and waits for its `done`: when this returns, the child has carried the
    /// command out.
    ///
    /// The line goes out in one `write` (`writeln!` on the unbuffered pipe would write the command
    /// and its newline separately; the child frames by newline, so that would still be one
    /// command, but one write keeps the two sides in step without relying on it).
    pub fn command(&mut self, command: &str) {
        use std::io::Write as _;
        assert!(
            !command.is_empty() && !command.contains('\n'),
            "one non-empty line per command: {command:?}"
        );
        let stdin = self.stdin.as_mut().expect("child stdin open");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .unwrap_or_else(|e| panic!("writing to the child: {e}"));
        self.expect_line("done");
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the child exits
        let _status = self.child.wait();
    }
}

/// A new mapping of `len` bytes with `prot` and `flags` (`MAP_SHARED` or `MAP_PRIVATE`, maybe
/// `MAP_ANONYMOUS` with `fd` -1) of the file behind `fd` from its start, at an address the kernel
/// chooses; untouched. `MAP_FIXED` is refused: it would replace what is mapped there. Allocates
/// nothing, so the eBPF lane's test child can call it between commands without other
/// memory-layout syscalls.
#[inline]
pub fn map_new(
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: std::os::fd::RawFd,
) -> std::io::Result<std::ptr::NonNull<u8>> {
    if flags & libc::MAP_FIXED != 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: without MAP_FIXED the kernel picks an address no mapping holds, so nothing the
    // program has aliases the new one; a bad fd, length or flag is an error, checked below.
    let start = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if start == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    std::ptr::NonNull::new(start.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// Maps one anonymous private read-write 4 KiB page, untouched ([`map_new`]).
#[inline]
pub fn map_anon_page() -> std::io::Result<std::ptr::NonNull<u8>> {
    map_new(
        4096,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
    )
}

/// A new memfd named `name` of `size` bytes, mapped shared, read-write and untouched: the file and
/// the mapping's start (unmap it with `munmap(start, size)`; closing the file leaves the mapping).
/// Allocates nothing, like [`map_anon_page`].
pub fn map_memfd(
    name: &std::ffi::CStr,
    size: usize,
) -> std::io::Result<(std::os::fd::OwnedFd, std::ptr::NonNull<u8>)> {
    use std::os::fd::AsRawFd as _;
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::empty())?;
    rustix::fs::ftruncate(&fd, size as u64)?;
    let start = map_shared_fd(fd.as_raw_fd(), size)?;
    Ok((fd, start))
}

/// Maps the first `size` bytes of the file behind `fd` shared and read-write, untouched
/// ([`map_new`]).
pub fn map_shared_fd(
    fd: std::os::fd::RawFd,
    size: usize,
) -> std::io::Result<std::ptr::NonNull<u8>> {
    map_new(
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        fd,
    )
}

/// Maps one anonymous 4 KiB page and unmaps it: the syscall pair the tracepoint programs watch
/// (the probe benchmark's loop, and the eBPF lane's "the agent's own mmaps are not marked").
#[inline]
pub fn mmap_munmap_pair() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let page = map_anon_page().context("mmap")?;
    // SAFETY: `page` is the one-page mapping just made; nothing refers to it.
    if unsafe { libc::munmap(page.as_ptr().cast(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error()).context("munmap");
    }
    Ok(())
}

pub mod synth;

/// The agent's records of one `--once` run over `fixtures/proc`, as the golden test makes them
/// (host `golden`; tmpfs mounts point at a host root that does not exist, so nothing of this
/// machine is measured).
pub fn once_over_fixtures() -> anyhow::Result<Vec<Value>> {
    run_once(golden_config())
}

/// `memhog shared SIZE N 4096`: a memfd, a `/dev/shm` file and a SysV segment of SIZE bytes,
/// each mapped whole by N forked children (the ladder lane, `cargo xtask bench-sharing`). Killed
/// with its children, and its files removed, on drop.
pub struct Sharers {
    child: std::process::Child,
    /// memhog's info line: `children`, `memfd_inode`, `shm_inode`, `shmid`, the paths.
    pub info: serde_json::Value,
}

impl Sharers {
    pub fn spawn(memhog: &std::path::Path, size: u64, n: usize) -> anyhow::Result<Sharers> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(memhog)
            .args(["shared", &size.to_string(), &n.to_string(), "4096"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", memhog.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("memhog's stdout was not captured")?;
        let mut out = std::io::BufReader::new(stdout);
        let mut info = None;
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).context("reading memhog")? == 0 {
                anyhow::bail!("memhog exited before it was ready");
            }
            if line.trim() == "ready" {
                break;
            }
            info = Some(serde_json::from_str(line.trim()).context("memhog's info line")?);
        }
        let info = info.context("memhog printed no info line")?;
        Ok(Sharers { child, info })
    }

    /// The children's pids.
    pub fn children(&self) -> Vec<u32> {
        self.info["children"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_u64)
                    .filter_map(|p| u32::try_from(p).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Sharers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for k in ["shm_path", "unmapped_path", "same_path"] {
            if let Some(p) = self.info[k].as_str() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
