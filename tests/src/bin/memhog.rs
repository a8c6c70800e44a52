//! A workload process for the live tests: maps and touches memory of a known size, prints `ready`
//! on stdout, then sleeps until killed.
//!
//! `memhog anon BYTES` — private anonymous memory.
//!
//! `memhog shared SIZE N UNMAPPED` — a memfd, a `/dev/shm` file and a SysV segment of SIZE bytes
//! each, touched, then N forked children that map and touch all three; the parent then unmaps them
//! (keeping the memfd fd open and marking the segment for destroy), so each child's PSS of each
//! object is SIZE/N. Also an unmapped `/dev/shm` file of UNMAPPED bytes, and two files with one
//! path (the first deleted, then recreated), both mapped by the parent. Prints one JSON line with
//! the pids, inodes, shmid and paths, then `ready`. Children die with the parent; the test removes
//! the `/dev/shm` files.
//! `memhog shm-deleted PATH BYTES` — creates the file PATH (on a tmpfs such as `/dev/shm`), writes
//! BYTES into it (every page), unlinks it and keeps the descriptor: memory no path reaches.
//! `memhog memfd NAME BYTES` — a memfd named NAME with BYTES written, held only by its descriptor.
//! `memhog map-file PATH BYTES` — creates the file PATH of BYTES, maps it shared and writes every
//! page through the mapping; prints `{"inode":N}`, then `ready`. The live test runs it in a mount
//! namespace of its own, with PATH on a tmpfs mounted only there.
//! `memhog names TAG` — names with a literal backslash: the `/dev/shm` file
//! `/dev/shm/memscope-lit\101oct-TAG.bin` and the memfd `acc-priv\101x`, 1 MiB each, mapped shared,
//! touched and kept (the memfd's descriptor too). Prints one JSON line (`shm_path`, `shm_inode`,
//! `memfd_name`, `memfd_inode`), then `ready`; the test removes the file.
//! `memhog hugetlb BYTES` — a `SHM_HUGETLB` SysV segment and an `MFD_HUGETLB` memfd of BYTES each
//! (a multiple of the huge page size); one forked child attaches and maps both and touches every
//! page; the parent keeps only the memfd's descriptor and marks the segment for destroy. Prints one
//! JSON line (`child`, `shmid`, `memfd_inode`, `memfd_dev` as `major:minor`), then `ready`. Needs
//! huge pages reserved (`/proc/sys/vm/nr_hugepages`).
//! `memhog cow PATH BYTES` — creates the file PATH (on a tmpfs such as `/dev/shm`) with BYTES
//! written, maps it `MAP_PRIVATE`, reads every page and writes the first half: that half becomes
//! copy-on-write anonymous pages, the other half stays the file's. Prints the inode as a JSON line,
//! then `ready`; the test removes the file.
//! `memhog worker BYTES [REGION_BYTES] [SHARED_PATH]` — for the ladder and peers benches: BYTES of
//! private anonymous memory touched, one page of its own executable mapped shared and, given
//! SHARED_PATH (a file on a tmpfs such as `/dev/shm`), that file mapped shared and read in whole;
//! prints `ready`; then on each SIGUSR1 maps and touches a new anonymous region of REGION_BYTES
//! (default 256 KiB), unmapping the oldest once more than [`WORKER_REGIONS`] are held (anonymous
//! churn each time, bounded memory). Dies with its parent (`PR_SET_PDEATHSIG`).
//! `memhog swapper BYTES` — for the ladder bench's freshness phase: two memfds of BYTES
//! (`memscope-swap-a`, `memscope-swap-b`), filled; maps and faults in `a`; also a third memfd
//! (`memscope-attach`) of BYTES that a forked child maps whole and faults in (the object exists
//! before this process maps it), and an untouched private anonymous reserve of BYTES/16; prints
//! `ready`; then on each line of stdin: `swap` unmaps the one it maps, maps and faults in the other,
//! and prints `swapped` with the name now mapped; `attach` maps the first BYTES/16 of the existing
//! `memscope-attach` over the reserve (`MAP_FIXED`) and faults it in, and prints `attached
//! memscope-attach`. The truth (which objects it maps) changes, `statm` barely does: a swap
//! leaves size, resident and shared pages as they were; an attach leaves the size and moves
//! resident and shared by BYTES/16 each (below the smaps tier's default `min_change` for 4 MiB).
//! Exits at end of input; the child dies with it.
//! `memhog forker RATE` — for the ladder bench's fork workload: forks RATE children per second,
//! each exiting at once (fork+exit, no exec), and reaps them; prints `ready` first. Dies with its
//! parent.
//! `memhog storm PERIOD_MS PID...` — for the ladder bench's churn-storm workload: sends SIGUSR1
//! (a `memhog worker`'s churn) to every PID each PERIOD_MS; prints `ready` first. Dies with its
//! parent.
//! `memhog stall BYTES SECONDS` — for the peers bench: BYTES of private anonymous memory touched;
//! prints `ready`; after one line on stdin, times 4 KiB anonymous mmap+munmap pairs in a loop for
//! SECONDS (each pair takes this process's mmap lock for writing, so it waits for any reader of
//! its `smaps`) and prints their latency figures as one JSON line ([`memscope_tests::bench::Latency`]),
//! then exits. Dies with its parent.

use std::io::Write;

fn touch(base: *mut u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        // SAFETY: `base..base+bytes` is a writable mapping we own.
        unsafe { base.add(off).write_volatile(1) };
        off += 4096;
    }
}

fn map_anon(bytes: usize) -> anyhow::Result<*mut u8> {
    let p = memscope_tests::map_new(
        bytes,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
    )
    .map_err(|e| anyhow::anyhow!("mmap {bytes} bytes: {e}"))?;
    Ok(p.as_ptr())
}

fn check(ret: libc::c_int, what: &str) -> anyhow::Result<libc::c_int> {
    if ret < 0 {
        anyhow::bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// Maps `fd` shared, `bytes` long.
fn map_shared_fd(fd: libc::c_int, bytes: usize) -> anyhow::Result<*mut u8> {
    let start = memscope_tests::map_shared_fd(fd, bytes)
        .map_err(|e| anyhow::anyhow!("mmap fd {fd}: {e}"))?;
    Ok(start.as_ptr())
}

/// Reads every page so it is mapped in this process's page tables.
fn fault_in(base: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        // SAFETY: `base..base+bytes` is a readable mapping we own.
        unsafe { base.add(off).read_volatile() };
        off += 4096;
    }
}

fn inode_of(fd: libc::c_int) -> anyhow::Result<u64> {
    // SAFETY: fstat into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) }, "fstat")?;
    Ok(st.st_ino)
}

/// Creates (truncating) a file of `bytes` and returns its fd.
fn create_file(path: &str, bytes: usize) -> anyhow::Result<libc::c_int> {
    let c = std::ffi::CString::new(path)?;
    // SAFETY: plain syscalls on a path we own.
    let fd = check(
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC,
                0o600,
            )
        },
        path,
    )?;
    check(
        unsafe { libc::ftruncate(fd, bytes as libc::off_t) },
        "ftruncate",
    )?;
    Ok(fd)
}

fn shared(size: usize, n: usize, unmapped: usize) -> anyhow::Result<()> {
    let me = std::process::id();
    let memfd = memfd("memscope-live", 0, size)?;
    let memfd_map = map_shared_fd(memfd, size)?;
    touch(memfd_map, size);
    // /dev/shm file
    let shm_path = format!("/dev/shm/memscope-live-{me}-mapped");
    let shm_fd = create_file(&shm_path, size)?;
    let shm_map = map_shared_fd(shm_fd, size)?;
    touch(shm_map, size);
    // SysV
    let shmid = check(
        unsafe { libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600) },
        "shmget",
    )?;
    let sysv_map = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
    if sysv_map as isize == -1 {
        anyhow::bail!("shmat: {}", std::io::Error::last_os_error());
    }
    let sysv_map = sysv_map.cast::<u8>();
    touch(sysv_map, size);
    // An unmapped /dev/shm file with data written (allocated, never mapped).
    let unmapped_path = format!("/dev/shm/memscope-live-{me}-unmapped");
    fill(&mut std::fs::File::create(&unmapped_path)?, unmapped)?;
    // Two files with one path: the first mapped, deleted, then the path recreated and mapped.
    let same_path = format!("/dev/shm/memscope-live-{me}-same");
    let same_size = 64 << 10;
    let a = create_file(&same_path, same_size)?;
    let a_map = map_shared_fd(a, same_size)?;
    touch(a_map, same_size);
    let a_inode = inode_of(a)?;
    std::fs::remove_file(&same_path)?;
    let b = create_file(&same_path, same_size)?;
    let b_map = map_shared_fd(b, same_size)?;
    touch(b_map, same_size);
    let b_inode = inode_of(b)?;

    let mut pipe = [0 as libc::c_int; 2];
    check(unsafe { libc::pipe(pipe.as_mut_ptr()) }, "pipe")?;
    let mut children = Vec::new();
    for _ in 0..n {
        // SAFETY: the child only faults pages in, writes one byte and pauses (async-signal-safe).
        let pid = check(unsafe { libc::fork() }, "fork")?;
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                fault_in(memfd_map, size);
                fault_in(shm_map, size);
                fault_in(sysv_map, size);
                // Drop the same-name mappings: only the parent maps them.
                libc::munmap(a_map.cast(), same_size);
                libc::munmap(b_map.cast(), same_size);
                libc::write(pipe[1], [1u8].as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        children.push(pid);
    }
    let mut got = 0;
    let mut byte = [0u8; 1];
    while got < n {
        let r = unsafe { libc::read(pipe[0], byte.as_mut_ptr().cast(), 1) };
        if r <= 0 {
            anyhow::bail!(
                "children did not start: {}",
                std::io::Error::last_os_error()
            );
        }
        got += 1;
    }
    // The parent lets go of its mappings: the children share each object N ways.
    unsafe {
        libc::munmap(memfd_map.cast(), size);
        libc::munmap(shm_map.cast(), size);
        libc::shmdt(sysv_map.cast());
        libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        libc::close(shm_fd);
    }
    let info = format!(
        "{{\"parent\":{me},\"children\":{children:?},\"memfd_inode\":{},\"shm_inode\":{},\"shmid\":{shmid},\"shm_path\":\"{shm_path}\",\"unmapped_path\":\"{unmapped_path}\",\"same_path\":\"{same_path}\",\"same_inodes\":[{a_inode},{b_inode}]}}",
        inode_of(memfd)?,
        inode_of_path(&shm_path)?,
    );
    let mut out = std::io::stdout();
    writeln!(out, "{info}")?;
    ready_and_wait()
}

/// Creates a memfd named `name` with `flags`, `bytes` long.
fn memfd(name: &str, flags: libc::c_uint, bytes: usize) -> anyhow::Result<libc::c_int> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = check(
        unsafe { libc::memfd_create(c.as_ptr(), flags) },
        "memfd_create",
    )?;
    // SAFETY: `fd` is the descriptor just created.
    check(
        unsafe { libc::ftruncate(fd, bytes as libc::off_t) },
        "ftruncate memfd",
    )?;
    Ok(fd)
}

fn names(tag: &str) -> anyhow::Result<()> {
    const SIZE: usize = 1 << 20;
    let shm_path = format!("/dev/shm/memscope-lit\\101oct-{tag}.bin");
    let shm_fd = create_file(&shm_path, SIZE)?;
    touch(map_shared_fd(shm_fd, SIZE)?, SIZE);
    let memfd_name = "acc-priv\\101x";
    let fd = memfd(memfd_name, 0, SIZE)?;
    touch(map_shared_fd(fd, SIZE)?, SIZE);
    let info = serde_json::json!({
        "shm_path": shm_path,
        "shm_inode": inode_of(shm_fd)?,
        "memfd_name": memfd_name,
        "memfd_inode": inode_of(fd)?,
    });
    writeln!(std::io::stdout(), "{info}")?;
    ready_and_wait()
}

fn hugetlb(bytes: usize) -> anyhow::Result<()> {
    // SAFETY: plain SysV call; the result is checked.
    let shmid = check(
        unsafe {
            libc::shmget(
                libc::IPC_PRIVATE,
                bytes,
                libc::IPC_CREAT | libc::SHM_HUGETLB | 0o600,
            )
        },
        "shmget(SHM_HUGETLB)",
    )?;
    let fd = memfd("memscope-live-hugetlb", libc::MFD_HUGETLB, bytes)?;
    // SAFETY: fstat into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) }, "fstat")?;
    let mut pipe = [0 as libc::c_int; 2];
    check(unsafe { libc::pipe(pipe.as_mut_ptr()) }, "pipe")?;
    // SAFETY: the child only maps, touches, writes one byte and pauses.
    let child = check(unsafe { libc::fork() }, "fork")?;
    if child == 0 {
        // SAFETY: syscalls on descriptors and a segment this process holds; on any failure the
        // child exits, and the parent sees the pipe close.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let seg = libc::shmat(shmid, std::ptr::null(), 0);
            let Ok(map) = map_shared_fd(fd, bytes) else {
                libc::_exit(1)
            };
            if seg as isize == -1 {
                libc::_exit(1);
            }
            touch(seg.cast(), bytes);
            touch(map, bytes);
            libc::write(pipe[1], [1u8].as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    // SAFETY: closing our copy of the write end, then a blocking read of one byte.
    unsafe { libc::close(pipe[1]) };
    let mut byte = [0u8; 1];
    if unsafe { libc::read(pipe[0], byte.as_mut_ptr().cast(), 1) } != 1 {
        anyhow::bail!("the hugetlb child failed (are huge pages reserved?)");
    }
    // SAFETY: marks the segment for destroy: it goes when the child does.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    let info = serde_json::json!({
        "child": child,
        "shmid": shmid,
        "memfd_inode": st.st_ino,
        "memfd_dev": format!("{}:{}", libc::major(st.st_dev), libc::minor(st.st_dev)),
    });
    writeln!(std::io::stdout(), "{info}")?;
    ready_and_wait()
}

fn cow(path: &str, bytes: usize) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    fill(&mut f, bytes)?;
    let p = memscope_tests::map_new(
        bytes,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
        std::os::fd::AsRawFd::as_raw_fd(&f),
    )
    .map_err(|e| anyhow::anyhow!("mmap {path}: {e}"))?
    .as_ptr();
    fault_in(p.cast(), bytes);
    touch(p.cast(), bytes / 2);
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({ "inode": inode_of_path(path)? })
    )?;
    ready_and_wait()
}

fn inode_of_path(path: &str) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

/// Writes `bytes` of non-zero data (allocating every page) into `f`.
fn fill(f: &mut std::fs::File, bytes: usize) -> anyhow::Result<()> {
    let chunk = vec![0xa5u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.sync_all()?;
    Ok(())
}

/// Regions a worker keeps mapped; the oldest is unmapped past this.
const WORKER_REGIONS: usize = 4;
use memscope_tests::bench::WORKER_REGION_BYTES;

/// See the crate docs: swaps which of two same-sized memfds it maps, on each line of stdin.
fn swapper(bytes: usize) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let names = ["memscope-swap-a", "memscope-swap-b"];
    let mut fds = Vec::new();
    for name in names {
        let fd = memfd(name, 0, 0)?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns; the File keeps it open.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        fill(&mut f, bytes)?;
        fds.push(f);
    }
    let map = |i: usize| -> anyhow::Result<*mut u8> {
        let p = map_shared_fd(std::os::fd::AsRawFd::as_raw_fd(&fds[i]), bytes)?;
        fault_in(p, bytes);
        Ok(p)
    };
    let mut current = 0;
    let mut p = map(current)?;
    // The object to attach to: filled, and mapped whole by a child (so it is resident and has a
    // mapper before this process maps a window of it).
    let attach_name = "memscope-attach";
    let attach_fd = memfd(attach_name, 0, 0)?;
    // SAFETY: `attach_fd` is a fresh descriptor that nothing else owns; the File keeps it open.
    let mut attach_file =
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(attach_fd) };
    fill(&mut attach_file, bytes)?;
    let window = (bytes / 16).max(4096);
    let reserve = map_anon(window)?;
    // SAFETY: fork in a single-threaded process; the child only makes syscalls and sleeps.
    match unsafe { libc::fork() } {
        -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            if die_with_parent().is_ok()
                && let Ok(whole) = map_shared_fd(attach_fd, bytes)
            {
                fault_in(whole, bytes);
                loop {
                    // SAFETY: pause has no preconditions; the child waits for its SIGKILL.
                    unsafe { libc::pause() };
                }
            }
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        _ => {}
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line?.trim() == "attach" {
            // SAFETY: `reserve` is our own untouched `window`-long mapping; MAP_FIXED replaces
            // exactly it with a shared mapping of the memfd we hold open.
            let q = unsafe {
                libc::mmap(
                    reserve.cast(),
                    window,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    attach_fd,
                    0,
                )
            };
            if q == libc::MAP_FAILED {
                anyhow::bail!("mmap {attach_name}: {}", std::io::Error::last_os_error());
            }
            fault_in(q.cast(), window);
            writeln!(out, "attached {attach_name}")?;
            out.flush()?;
            continue;
        }
        // SAFETY: `p` is the `bytes`-long mapping made by `map`; nothing refers to it after.
        check(unsafe { libc::munmap(p.cast(), bytes) }, "munmap")?;
        current = 1 - current;
        p = map(current)?;
        writeln!(out, "swapped {}", names[current])?;
        out.flush()?;
    }
    Ok(())
}

/// `memhog storm PERIOD_MS PID...`: sends SIGUSR1 to every PID each PERIOD_MS; dies with its parent.
fn storm(period: std::time::Duration, pids: &[i32]) -> anyhow::Result<()> {
    die_with_parent()?;
    {
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut next = std::time::Instant::now();
    loop {
        for &pid in pids {
            // SAFETY: kill(2) with a valid signal; a gone pid is an error we ignore.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
        next += period;
        let now = std::time::Instant::now();
        match next.checked_duration_since(now) {
            Some(left) => std::thread::sleep(left),
            None => next = now,
        }
    }
}

/// `memhog forker RATE`: forks RATE children per second, each exiting at once, and reaps them;
/// dies with its parent.
fn forker(rate: u32) -> anyhow::Result<()> {
    die_with_parent()?;
    let rate = rate.max(1);
    let period = std::time::Duration::from_secs(1) / rate;
    {
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut next = std::time::Instant::now();
    loop {
        // SAFETY: fork; the child exits at once without touching the parent's state.
        match unsafe { libc::fork() } {
            -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
            // SAFETY: the child leaves at once.
            0 => unsafe { libc::_exit(0) },
            child => {
                let mut status = 0;
                // SAFETY: waiting for the child just forked.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
        next += period;
        let now = std::time::Instant::now();
        if let Some(left) = next.checked_duration_since(now) {
            std::thread::sleep(left);
        } else if now - next > std::time::Duration::from_secs(1) {
            // Far behind (a loaded host): do not burst to catch up.
            next = now;
        }
    }
}

/// Set by the SIGUSR1 handler, cleared by the worker's main loop.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    // Async-signal-safe: one atomic store, nothing else.
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Dies with the parent; fails if the parent is already gone (nobody would ever stop us).
fn die_with_parent() -> anyhow::Result<()> {
    // SAFETY: plain syscalls with valid arguments; every result that can fail is checked.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            "prctl(PR_SET_PDEATHSIG)",
        )?;
        if libc::getppid() == 1 {
            anyhow::bail!("parent already gone");
        }
    }
    Ok(())
}

fn worker(bytes: usize, region: usize, shared: Option<&str>) -> anyhow::Result<()> {
    die_with_parent()?;
    let base = map_anon(bytes)?;
    touch(base, bytes);
    if let Some(path) = shared {
        let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let len = usize::try_from(file.metadata()?.len())?;
        let p = memscope_tests::map_new(
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
        )
        .map_err(|e| anyhow::anyhow!("mmap {path}: {e}"))?
        .as_ptr();
        fault_in(p.cast(), len);
    }
    // One page of our own executable, mapped shared: a file object every worker maps.
    let exe = std::fs::File::open("/proc/self/exe")?;
    let page = memscope_tests::map_new(
        4096,
        libc::PROT_READ,
        libc::MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&exe),
    )
    .map_err(|e| anyhow::anyhow!("mmap /proc/self/exe: {e}"))?
    .as_ptr();
    fault_in(page.cast(), 4096);

    // Block SIGUSR1 except inside sigsuspend, so a signal between the check and the wait is not lost.
    // SAFETY: sigset/sigaction structs we own, zero-initialised then filled by libc.
    let old_mask = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        check(
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()),
            "sigaction(SIGUSR1)",
        )?;
        let mut block: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGUSR1);
        let mut old: libc::sigset_t = std::mem::zeroed();
        check(
            libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old),
            "sigprocmask",
        )?;
        libc::sigdelset(&mut old, libc::SIGUSR1);
        old
    };
    {
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut regions: std::collections::VecDeque<*mut u8> = std::collections::VecDeque::new();
    loop {
        while !SIGNALLED.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: waits with SIGUSR1 unblocked; returns -1/EINTR after the handler ran.
            unsafe { libc::sigsuspend(&old_mask) };
        }
        let r = map_anon(region)?;
        touch(r, region);
        regions.push_back(r);
        if regions.len() > WORKER_REGIONS
            && let Some(old) = regions.pop_front()
        {
            // SAFETY: `old` is a mapping of `region` bytes we made and no longer use.
            check(unsafe { libc::munmap(old.cast(), region) }, "munmap")?;
        }
    }
}

fn stall(bytes: usize, seconds: u64) -> anyhow::Result<()> {
    die_with_parent()?;
    let base = map_anon(bytes)?;
    touch(base, bytes);
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    // About 150 000 pairs a second here: reserve for that, grow past it.
    let mut ns: Vec<f64> = Vec::with_capacity(150_000 * usize::try_from(seconds)?);
    loop {
        let t0 = std::time::Instant::now();
        memscope_tests::mmap_munmap_pair()?;
        let t1 = std::time::Instant::now();
        ns.push(t1.duration_since(t0).as_nanos() as f64);
        if t1 >= end {
            break;
        }
    }
    let latency = memscope_tests::bench::Latency::of(&mut ns);
    writeln!(out, "{}", serde_json::to_string(&latency)?)?;
    Ok(())
}

fn ready_and_wait() -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["anon", bytes] => {
            let bytes: usize = bytes.parse()?;
            let p = map_anon(bytes)?;
            touch(p, bytes);
            ready_and_wait()
        }
        ["worker", bytes] => worker(bytes.parse()?, WORKER_REGION_BYTES, None),
        // A third argument that is a number is REGION_BYTES, anything else SHARED_PATH.
        ["worker", bytes, third] => match third.parse() {
            Ok(region) => worker(bytes.parse()?, region, None),
            Err(_) => worker(bytes.parse()?, WORKER_REGION_BYTES, Some(third)),
        },
        ["worker", bytes, region, shared] => worker(bytes.parse()?, region.parse()?, Some(shared)),
        ["stall", bytes, seconds] => stall(bytes.parse()?, seconds.parse()?),
        ["shared", size, n, unmapped] => shared(size.parse()?, n.parse()?, unmapped.parse()?),
        ["shm-deleted", path, bytes] => {
            let bytes: usize = bytes.parse()?;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            fill(&mut f, bytes)?;
            std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("unlink {path}: {e}"))?;
            let _held = f;
            ready_and_wait()
        }
        ["names", tag] => names(tag),
        ["cow", path, bytes] => cow(path, bytes.parse()?),
        ["hugetlb", bytes] => hugetlb(bytes.parse()?),
        ["memfd", name, bytes] => {
            let bytes: usize = bytes.parse()?;
            let fd = memfd(name, 0, 0)?;
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            fill(&mut f, bytes)?;
            let _held = f;
            ready_and_wait()
        }
        ["swapper", bytes] => swapper(bytes.parse()?),
        ["forker", rate] => forker(rate.parse()?),
        ["storm", period_ms, pids @ ..] => {
            let pids = pids
                .iter()
                .map(|p| p.parse::<i32>())
                .collect::<Result<Vec<_>, _>>()?;
            storm(std::time::Duration::from_millis(period_ms.parse()?), &pids)
        }
        ["map-file", path, bytes] => {
            let bytes: usize = bytes.parse()?;
            let fd = create_file(path, bytes)?;
            let p = map_shared_fd(fd, bytes)?;
            touch(p, bytes);
            let mut out = std::io::stdout();
            writeln!(out, "{{\"inode\":{}}}", inode_of(fd)?)?;
            ready_and_wait()
        }
        _ => anyhow::bail!(
            "usage: memhog anon BYTES | memhog shared SIZE N UNMAPPED | memhog shm-deleted PATH BYTES | memhog memfd NAME BYTES | memhog map-file PATH BYTES | memhog names TAG | memhog hugetlb BYTES | memhog cow PATH BYTES | memhog worker BYTES [REGION_BYTES] [SHARED_PATH] | memhog swapper BYTES | memhog forker RATE | memhog storm PERIOD_MS PID... | memhog stall BYTES SECONDS"
        ),
    }
}
