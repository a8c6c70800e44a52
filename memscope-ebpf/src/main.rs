//! memscope's kernel side: tracepoint programs that mark processes whose memory layout changed.
//!
//! - `syscalls:sys_enter_{mmap,munmap,mremap,brk,shmget,shmat,shmdt,madvise}` mark the calling
//!   thread group in the dirty map ([`memscope_common::DIRTY_MAP`], `tgid -> DirtyEntry`).
//!   Steady state (the entry exists and already has the reason bit): one lookup, no update.
//! - `sched:sched_process_{fork,exec,exit}` and shmget send [`memscope_common::LifecycleEvent`]s through the ring
//!   buffer ([`memscope_common::EVENTS_MAP`]).
//! - The agent's own tgid and the tracepoint field offsets come from the config array
//!   ([`memscope_common::CONFIG_MAP`]) that the agent fills before attaching.
//!
//! On the host this crate builds to an empty `main` so `cargo test --workspace` works; the agent's
//! `build.rs` builds it for `bpfel-unknown-none` with `aya-build`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the bpf target; see the crate docs.
}
