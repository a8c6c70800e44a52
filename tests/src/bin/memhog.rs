//! A workload process for the live tests: maps and touches memory of a known size, prints `ready`
//! on stdout, then sleeps until killed.
//!
//! `memhog anon BYTES` — private anonymous memory.

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
        _ => anyhow::bail!("usage: memhog anon BYTES"),
    }
}
