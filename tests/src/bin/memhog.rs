//! A workload process for the live tests: maps and touches memory of a known size, prints `ready`
//! on stdout, then sleeps until killed.
//!
//! `memhog anon BYTES` — private anonymous memory.
//! `memhog shm-deleted PATH BYTES` — creates the file PATH (on a tmpfs such as `/dev/shm`), writes
//! BYTES into it (every page), unlinks it and keeps the descriptor: memory no path reaches.
//! `memhog memfd NAME BYTES` — a memfd named NAME with BYTES written, held only by its descriptor.

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
    // SAFETY: a fresh anonymous mapping; checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        anyhow::bail!("mmap {bytes} bytes: {}", std::io::Error::last_os_error());
    }
    Ok(p.cast())
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
        ["memfd", name, bytes] => {
            let bytes: usize = bytes.parse()?;
            let cname = std::ffi::CString::new(*name)?;
            // SAFETY: a valid NUL-terminated name; the result is checked below.
            let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
            if fd < 0 {
                anyhow::bail!("memfd_create {name}: {}", std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            fill(&mut f, bytes)?;
            let _held = f;
            ready_and_wait()
        }
        _ => anyhow::bail!(
            "usage: memhog anon BYTES | memhog shm-deleted PATH BYTES | memhog memfd NAME BYTES"
        ),
    }
}
