//! memscope's kernel side: programs on the memory-management path that mark processes whose
//! mappings changed, classified in the kernel (no syscall tracepoints: enabling any of those puts
//! every syscall of every task on the slow path).
//!
//! - `tp_btf/ma_write` (`memscope_vma`): a mapping stored into or removed from a process's tree
//!   of mappings. File-backed or shared → [`memscope_common::reason::MAPPING`] in the dirty map
//!   ([`memscope_common::DIRTY_MAP`], `tgid -> DirtyEntry`); anonymous → counted.
//! - `tp_btf/mmap_lock_released` (`memscope_unlock`): after an anonymous change, the net change of
//!   `mm->total_vm` since the last mark; past the configured minimum →
//!   [`memscope_common::reason::ANON`].
//! - `sched:sched_process_{exec,exit}`, `tp_btf/sched_process_fork` and `oom:mark_victim` send
//!   [`memscope_common::LifecycleEvent`]s through the ring buffer
//!   ([`memscope_common::EVENTS_MAP`]); exec also marks [`memscope_common::reason::EXEC`].
//! - The agent's own tgid, the tracepoint field offsets and the kernel struct member offsets (from
//!   the kernel's BTF) come from the config array ([`memscope_common::CONFIG_MAP`]) that the agent
//!   fills before attaching.
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
