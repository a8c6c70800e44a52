//! The ABI between memscope's kernel side (`memscope-ebpf`) and the agent.
//!
//! Everything here is `#![no_std]` and `#[repr(C)]` with explicit padding and no `bool`, so the
//! layout is the same on both sides. With the `user` feature the structs also implement
//! [`aya::Pod`] so the agent can read them out of maps and ring buffers.
#![no_std]

/// Name of the BPF hash map `tgid (u32) -> DirtyEntry` that marks processes whose mappings changed.
pub const DIRTY_MAP: &str = "MEMSCOPE_DIRTY";
/// Name of the ring buffer carrying [`LifecycleEvent`]s.
pub const EVENTS_MAP: &str = "MEMSCOPE_EVENTS";
/// Name of the single-slot array holding [`Config`] written by the agent before attaching.
pub const CONFIG_MAP: &str = "MEMSCOPE_CONFIG";
/// Name of the per-CPU array of [`Counters`] (events lost, marks set).
pub const COUNTERS_MAP: &str = "MEMSCOPE_COUNTERS";
/// Name of the kernel-only BPF hash map `tgid (u32) -> AnonState`: each process's anonymous
/// mapping size since its last anonymous mark.
pub const ANON_MAP: &str = "MEMSCOPE_ANON";

/// Capacity of the dirty map. A full map drops marks; the agent then falls back to staleness.
pub const DIRTY_MAP_ENTRIES: u32 = 65_536;
/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Reason bits set in [`DirtyEntry::reasons`].
///
/// The programs classify each change in the kernel: [`MAPPING`](reason::MAPPING) and
/// [`EXEC`](reason::EXEC) can change the set of objects a process maps (its `smaps`);
/// [`ANON`](reason::ANON) only its anonymous memory (its `smaps_rollup` totals).
pub mod reason {
    /// A file-backed or shared mapping (a file, memfd, tmpfs or SysV segment, shared anonymous
    /// memory) was mapped, split or merged, or a mapping other than private writable or stack
    /// memory was unmapped: the object set may have changed.
    pub const MAPPING: u32 = 1 << 0;
    /// The process's mappings grew or shrank by more than
    /// [`Config::anon_min_change_pages`](crate::Config::anon_min_change_pages) (net) since its
    /// last ANON or MAPPING mark through anonymous changes alone (a signed sum: mapping and
    /// unmapping the same size cancels out).
    pub const ANON: u32 = 1 << 1;
    /// Set by the agent for a process created by fork (its FORK event), not by a program.
    pub const FORK: u32 = 1 << 8;
    pub const EXEC: u32 = 1 << 9;

    /// Every reason bit with its name, in bit order (for logs and the `agent` record).
    pub const NAMES: [(u32, &str); 4] = [
        (MAPPING, "mapping"),
        (ANON, "anon"),
        (FORK, "fork"),
        (EXEC, "exec"),
    ];

    /// The bits that can change the object set (`smaps` scope); the others change residency only.
    pub const LAYOUT: u32 = MAPPING | FORK | EXEC;
}

/// Value of the dirty map: what changed in the process's mappings since the agent last drained it.
///
/// The kernel side only ever writes a whole entry with `bpf_map_update_elem` (never a store into a
/// looked-up element), so the agent's `BPF_MAP_LOOKUP_AND_DELETE_ELEM` never races with a write into
/// a deleted element. `tgid` repeats the key so a program that looked up an element the agent has just
/// deleted (and the kernel has reused for another key) notices the mismatch instead of trusting it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyEntry {
    /// The key, repeated (see above). `tgid` and `reasons` are read together as one 8-byte load.
    pub tgid: u32,
    /// OR of [`reason`] bits.
    pub reasons: u32,
    /// Number of map updates folded into this entry (a new entry or a new reason bit); marks that
    /// found their bit already set cost one lookup and are not counted here.
    pub count: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the first mark since the last drain.
    pub first_ns: u64,
}

/// Kind of a [`LifecycleEvent`].
pub mod event_kind {
    /// A new process: `tgid` is the child, `ptgid` the parent. (The fork tracepoint fires for new
    /// threads too; the program drops those by comparing the child task's tgid with the parent's.)
    pub const FORK: u32 = 1;
    /// `tgid` called `execve` successfully.
    pub const EXEC: u32 = 2;
    /// The thread group `tgid` is gone (its last thread exited), or, on kernels whose
    /// `sched_process_exit` has no `group_dead` field, its leader thread exited.
    pub const EXIT: u32 = 3;
    /// The OOM killer chose `tgid` as its victim (`oom:mark_victim`); its EXIT follows once the
    /// kill is delivered. `tgid` is the victim task's id as the tracepoint gives it (`pid`): the
    /// thread group leader's id except when the killer picked a non-leader thread (a thread group
    /// whose leader has already released its memory).
    pub const OOM_KILL: u32 = 5;
}

/// Bits of [`LifecycleEvent::flags`].
pub mod event_flag {
    /// EXIT: decided by the tracepoint's `group_dead` field (the whole group is gone).
    pub const GROUP_DEAD: u32 = 1 << 0;
    /// EXIT: decided by `pid == tgid` (the leader exited; other threads may live on as a zombie leader).
    pub const LEADER_EXIT: u32 = 1 << 1;
}

/// An event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// One of [`event_kind`].
    pub kind: u32,
    /// The process (thread group) the event is about; for fork, the child.
    pub tgid: u32,
    /// For fork: the parent's tgid. Otherwise zero.
    pub ptgid: u32,
    /// [`event_flag`] bits.
    pub flags: u32,
    /// Zero (reserved).
    pub arg: u64,
    /// `bpf_ktime_get_ns()` when it happened.
    pub ts_ns: u64,
}

/// [`Config::flags`]: the agent has filled the config; the programs do nothing before.
pub const CONFIG_READY: u32 = 1 << 0;
/// An offset in [`Config`] that the running kernel's tracepoint does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Configuration written by the agent into [`CONFIG_MAP`] slot 0 before attaching.
///
/// Tracepoint field offsets differ between kernels (e.g. `sched_process_exit` gained `group_dead`),
/// so the agent reads them from tracefs `format` files at load time, and kernel struct member
/// offsets from the kernel's BTF (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The agent's own tgid: its marks are dropped in the kernel.
    pub agent_tgid: u32,
    /// [`CONFIG_READY`].
    pub flags: u32,
    /// Offset of `tgid` (4 bytes) in `struct task_struct`, for `tp_btf/sched_process_fork`.
    pub task_tgid_off: u32,
    /// `sched:sched_process_exit` field `group_dead` (1 byte), or [`OFFSET_ABSENT`].
    pub exit_group_dead_off: u32,
    /// `oom:mark_victim` field `pid` (4 bytes), or [`OFFSET_ABSENT`] (the program is then not attached).
    pub oom_pid_off: u32,
    /// Offset of `mm` (a pointer) in `struct task_struct`.
    pub task_mm_off: u32,
    /// Offset of `total_vm` (pages, `unsigned long`) in `struct mm_struct`.
    pub mm_total_vm_off: u32,
    /// Offset of `vm_mm` (a pointer) in `struct vm_area_struct`.
    pub vma_mm_off: u32,
    /// Offset of `vm_flags` (`unsigned long`) in `struct vm_area_struct`.
    pub vma_flags_off: u32,
    /// Offset of `vm_file` (a pointer) in `struct vm_area_struct`.
    pub vma_file_off: u32,
    /// Offset of `data_vm` (pages, `unsigned long`) in `struct mm_struct`.
    pub mm_data_vm_off: u32,
    /// Offset of `stack_vm` (pages, `unsigned long`) in `struct mm_struct`.
    pub mm_stack_vm_off: u32,
    /// Offset of `mm_mt` (the maple tree of mappings) in `struct mm_struct`.
    pub mm_mt_off: u32,
    /// Offset of `tree` (a pointer) in `struct ma_state`.
    pub mas_tree_off: u32,
    /// A process whose anonymous mappings grew or shrank by more than this many pages (net) since
    /// its last [`reason::ANON`] mark is marked again.
    pub anon_min_change_pages: u64,
}

/// `vm_flags` bits (`linux/mm.h`, stable since 2.6): a shared mapping, or one that may become shared.
pub const VM_SHARED: u64 = 0x0000_0008;
pub const VM_MAYSHARE: u64 = 0x0000_0080;

/// Value of [`ANON_MAP`]: the anonymous bookkeeping of one process (kernel side only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnonState {
    /// `mm->total_vm` (pages) at the last ANON mark, or before the first anonymous change seen.
    pub base_pages: u64,
    /// `mm->total_vm - mm->data_vm - mm->stack_vm` (pages of mappings that are neither private
    /// writable nor stack: file-backed, shared, executable, read-only) at the last release of the
    /// mmap lock seen. A move at a release marks MAPPING, whatever `ma_write` saw.
    pub other_pages: u64,
    /// What changed since the mmap lock was last released (bits private to the programs); the
    /// release program then does the arithmetic.
    pub pending: u32,
    pub _pad: u32,
}

/// Per-CPU counters in [`COUNTERS_MAP`] slot 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Marks that could not be stored (dirty map full).
    pub marks_dropped: u64,
    /// Ring buffer reservations that failed (events lost).
    pub events_lost: u64,
    /// Marks stored (a new entry or a new reason bit on an entry).
    pub marks: u64,
}

const _: () = assert!(core::mem::size_of::<DirtyEntry>() == 24);
const _: () = assert!(core::mem::offset_of!(DirtyEntry, reasons) == 4);
const _: () = assert!(core::mem::size_of::<LifecycleEvent>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 64);
const _: () = assert!(core::mem::size_of::<AnonState>() == 24);
const _: () = assert!(core::mem::size_of::<Counters>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::DirtyEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LifecycleEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AnonState {}
}
