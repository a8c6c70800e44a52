//! A child process for the privileged eBPF tests, driven over stdin/stdout with raw `read`/`write`
//! on stack buffers, so that between commands it makes no memory-layout syscalls at all.
//!
//! Prints `ready` once started, then for each line on stdin: `mmap` maps and touches one anonymous
//! page (and keeps it), `anon` maps and touches 1 MiB of anonymous memory (and keeps it), `churn`
//! maps, touches and unmaps 64 KiB of anonymous memory (the default `min_change`), `shmget` creates and removes a 1 MiB SysV
//! segment, `shmat` creates a 1 MiB SysV segment, attaches and touches it (and keeps it attached;
//! the segment is removed when detached), `shmdt` detaches it, `memfd` maps and touches a new
//! 256 KiB memfd named `memscope-test-memfd` (and keeps it); answers `done` once the command is
//! carried out (an empty line is ignored, without an answer).
//! Exits on end of input. Argument `exit`: exits at once.

use std::os::fd::IntoRawFd as _;

fn write_line(text: &[u8]) {
    // SAFETY: writing a valid buffer to stdout.
    let _written = unsafe { libc::write(1, text.as_ptr().cast(), text.len()) };
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("exit") {
        return;
    }
    write_line(b"ready\n");
    let mut lines = Lines {
        buf: [0; 64],
        len: 0,
        line: [0; 64],
    };
    let mut attached: *mut libc::c_void = std::ptr::null_mut();
    while let Some(command) = lines.next_line() {
        if command.is_empty() {
            continue;
        }
        if command.starts_with(b"mmap") {
            if let Ok(page) = memscope_tests::map_anon_page() {
                // SAFETY: `page` is a fresh writable one-page mapping owned by nobody else.
                unsafe { page.as_ptr().write_volatile(1) };
            }
        } else if command.starts_with(b"anon") {
            let _kept = anon(1 << 20, false);
        } else if command.starts_with(b"churn") {
            let _gone = anon(64 << 10, true);
        } else if command.starts_with(b"shmat") {
            // SAFETY: plain SysV calls with valid arguments; we only write inside the attachment.
            unsafe {
                let id = libc::shmget(libc::IPC_PRIVATE, 1 << 20, libc::IPC_CREAT | 0o600);
                if id >= 0 {
                    let p = libc::shmat(id, std::ptr::null(), 0);
                    // Removed now, destroyed at the last detach: nothing is left behind.
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    if p as isize != -1 {
                        p.cast::<u8>().write_volatile(1);
                        attached = p;
                    }
                }
            }
        } else if command.starts_with(b"shmdt") {
            if !attached.is_null() {
                // SAFETY: `attached` is the address shmat returned; nothing refers to it after.
                unsafe { libc::shmdt(attached) };
                attached = std::ptr::null_mut();
            }
        } else if command.starts_with(b"memfd") {
            const SIZE: usize = 256 << 10;
            if let Ok((fd, start)) = memscope_tests::map_memfd(c"memscope-test-memfd", SIZE) {
                // SAFETY: `start` is the fresh writable mapping of SIZE bytes just made.
                unsafe { touch(start.as_ptr(), SIZE) };
                // Kept open, like the mapping, until the child exits.
                let _kept = fd.into_raw_fd();
            }
        } else if command.starts_with(b"shmget") {
            // SAFETY: plain SysV calls with valid arguments; the segment is removed at once.
            unsafe {
                let id = libc::shmget(libc::IPC_PRIVATE, 1 << 20, libc::IPC_CREAT | 0o600);
                if id >= 0 {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
            }
        }
        write_line(b"done\n");
    }
}

/// Newline-framed commands from stdin, read with raw `read` into a stack buffer (no allocation).
///
/// A read returns whatever the pipe holds: part of a line (the writer's command and newline may
/// arrive in two writes), or more than one line. Taking each read as one command answered a
/// half line twice (`done` for `memfd`, then `done` for the lone newline), which put the test one
/// answer ahead of the child: it drained the tracker before the child had mapped anything.
struct Lines {
    buf: [u8; 64],
    len: usize,
    line: [u8; 64],
}

impl Lines {
    /// The next line without its newline, or None at end of input (or on a read error). A line
    /// longer than the buffer is dropped whole.
    fn next_line(&mut self) -> Option<&[u8]> {
        loop {
            if let Some(end) = self.buf[..self.len].iter().position(|&b| b == b'\n') {
                self.line[..end].copy_from_slice(&self.buf[..end]);
                self.buf.copy_within(end + 1..self.len, 0);
                self.len -= end + 1;
                return Some(&self.line[..end]);
            }
            if self.len == self.buf.len() {
                self.len = 0; // an overlong line: drop it
            }
            let free = &mut self.buf[self.len..];
            // SAFETY: reading into the free part of our own stack buffer.
            let n = unsafe { libc::read(0, free.as_mut_ptr().cast(), free.len()) };
            match usize::try_from(n) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.len += n,
            }
        }
    }
}

/// Maps and touches `size` bytes of anonymous memory; unmaps them again when `unmap`. Returns
/// whether the mapping was made.
fn anon(size: usize, unmap: bool) -> bool {
    let Ok(start) = memscope_tests::map_new(
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
    ) else {
        return false;
    };
    // SAFETY: `start` is the fresh writable mapping of `size` bytes just made; we unmap exactly it.
    unsafe {
        touch(start.as_ptr(), size);
        if unmap {
            libc::munmap(start.as_ptr().cast(), size);
        }
    }
    true
}

/// Writes one byte in every page of `size` bytes from `start`.
///
/// # Safety
/// `start` must be the start of a writable mapping of at least `size` bytes.
unsafe fn touch(start: *mut u8, size: usize) {
    let mut off = 0;
    while off < size {
        // SAFETY: `off < size`, inside the mapping (the caller's promise).
        unsafe { start.add(off).write_volatile(1) };
        off += 4096;
    }
}
