//! The programs, maps and helpers (bpf target only).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use memscope_common::{
    AnonState, CONFIG_READY, Config, Counters, DIRTY_MAP_ENTRIES, DirtyEntry, EVENTS_RING_BYTES,
    LifecycleEvent, OFFSET_ABSENT, VM_MAYSHARE, VM_SHARED, event_flag, event_kind, reason,
};

/// `tgid -> DirtyEntry`. Not preallocated: entries are created once per process per drain interval,
/// and 64 Ki preallocated entries would pin several MiB on every host.
#[map(name = "MEMSCOPE_DIRTY")]
static DIRTY: HashMap<u32, DirtyEntry> =
    HashMap::with_max_entries(DIRTY_MAP_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "MEMSCOPE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "MEMSCOPE_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// `tgid -> AnonState`: kernel-only bookkeeping of anonymous mapping sizes (see `memscope_vma`).
#[map(name = "MEMSCOPE_ANON")]
static ANON: HashMap<u32, AnonState> =
    HashMap::with_max_entries(DIRTY_MAP_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "MEMSCOPE_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Largest tracepoint field offset we accept from the config (records are far smaller).
const MAX_FIELD_OFFSET: u32 = 4096;
/// Largest kernel struct member offset we accept from the config (`task_struct` is ~10 KiB).
const MAX_TASK_OFFSET: u32 = 16384;

#[inline(always)]
fn current_tgid() -> u32 {
    // The upper half is the tgid; the cast keeps exactly those 32 bits.
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn current_pid() -> u32 {
    // The lower half is the thread id; truncation is the intent.
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a raw helper call without arguments; it cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.flags & CONFIG_READY != 0)
}

/// Reads a tracepoint field at an offset taken from the config.
#[inline(always)]
fn read_field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    if offset >= MAX_FIELD_OFFSET {
        return Err(1);
    }
    // SAFETY: `read_at` goes through `bpf_probe_read_kernel`, which tolerates any address; the
    // offset comes from the tracepoint's tracefs `format` file, so it lies inside the record.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| 1)
}

/// Marks thread group `tgid` (the current one) dirty with `bit`.
///
/// Steady state: the entry exists and has `bit` → one lookup, no update. Otherwise the whole entry
/// is written with `bpf_map_update_elem`, never by a store into the looked-up element: the agent
/// drains with `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, and a store into an element it has just deleted
/// would be lost, whereas an update re-creates the entry.
#[inline(always)]
fn mark<C: EbpfContext>(ctx: &C, tgid: u32, bit: u32) -> Result<u32, u32> {
    let mut previous = None;
    if let Some(entry) = DIRTY.get_ptr(tgid) {
        // One 8-byte load of (tgid, reasons): if the element was deleted and reused for another
        // key meanwhile, the tgid no longer matches and we take the update path.
        // SAFETY: the pointer comes from a successful lookup; hash map elements stay readable
        // for the rest of this program (RCU).
        let head = unsafe { core::ptr::read_volatile(entry.cast::<u64>()) }.to_ne_bytes();
        let seen_tgid = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
        let seen_reasons = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
        if seen_tgid == tgid {
            if seen_reasons & bit != 0 {
                return Ok(0);
            }
            // SAFETY: as above; a torn read here only skews `count`/`first_ns`, never the bits.
            let old = unsafe { core::ptr::read_volatile(entry) };
            previous = Some((seen_reasons, old.count, old.first_ns));
        }
    }
    let (reasons, count, first_ns) = match previous {
        Some((reasons, count, first_ns)) => (reasons | bit, count.saturating_add(1), first_ns),
        None => (bit, 1, now_ns()),
    };
    let entry = DirtyEntry {
        tgid,
        reasons,
        count,
        _pad: 0,
        first_ns,
    };
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return Err(1);
    };
    if DIRTY.insert(tgid, entry, u64::from(BPF_ANY)).is_ok() {
        // SAFETY: per-CPU slot, programs on one CPU do not nest for these tracepoints.
        unsafe { (*counters).marks += 1 };
        Ok(0)
    } else {
        // SAFETY: as above.
        let dropped = unsafe {
            (*counters).marks_dropped += 1;
            (*counters).marks_dropped
        };
        // Logarithmic rate limit: 1st, 2nd, 4th, 8th… drop per CPU.
        if dropped.is_power_of_two() {
            warn!(ctx, "dirty map full: {} marks dropped on this cpu", dropped);
        }
        Err(1)
    }
}

/// Sends a lifecycle event; counts and (rate-limited) logs a full ring buffer.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, kind: u32, tgid: u32, ptgid: u32, flags: u32, arg: u64) -> u32 {
    let event = LifecycleEvent {
        kind,
        tgid,
        ptgid,
        flags,
        arg,
        ts_ns: now_ns(),
    };
    if EVENTS.output::<LifecycleEvent>(&event, 0).is_ok() {
        return 0;
    }
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, see `mark`.
        let lost = unsafe {
            (*counters).events_lost += 1;
            (*counters).events_lost
        };
        if lost.is_power_of_two() {
            warn!(
                ctx,
                "event ring buffer full: {} events lost on this cpu", lost
            );
        }
    }
    1
}

/// Reads a kernel value at `base + offset`, the offset coming from the kernel's BTF via the config.
#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    if base.is_null() || offset >= MAX_TASK_OFFSET {
        return Err(1);
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address (a bad one is an error, not a fault).
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.map_err(|_| 1)
}

/// The current task's `mm` (null for kernel threads).
#[inline(always)]
fn current_mm(cfg: &Config) -> Result<*const u8, u32> {
    // SAFETY: a helper without arguments; it returns the current task_struct's address.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    read_kernel::<*const u8>(task, cfg.task_mm_off)
}

/// `tp_btf/ma_write`: a maple tree store. For the tree of a process's mappings, the stored value
/// is a `vm_area_struct`: a new, split or merged mapping stored into `mm->mm_mt`, or a mapping
/// being removed, stored into munmap's detach tree. (A clear stores null: the detach store has
/// already shown that mapping.) Stores into other maple trees carry other values: they are told
/// apart by `vma->vm_mm`, which must be the current task's `mm`, so a fork's copy of the parent's
/// mappings (into the child's new `mm`) and exec's new stack (into the new `mm`) are skipped too.
///
/// - file-backed or shared mapping: [`reason::MAPPING`] (the object set may have changed);
/// - anonymous private mapping: the process's [`AnonState`] becomes pending, and the release of
///   the mmap lock (`memscope_unlock`) compares `total_vm` with its base (which a MAPPING change
///   in the same lock section moves instead: file mappings count in `total_vm` too).
///
/// Only mapping changes run it: page faults, reads and writes of memory and every other syscall do
/// not store into a maple tree.
#[btf_tracepoint(function = "ma_write")]
pub fn memscope_vma(ctx: BtfTracePointContext) -> u32 {
    match try_vma(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_vma(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    // ma_write(const char *fn, struct ma_state *mas, unsigned long piv, void *val)
    let vma: *const u8 = ctx.arg(3);
    let tgid = current_tgid();
    if tgid == cfg.agent_tgid {
        return Ok(0);
    }
    let mm = current_mm(cfg)?;
    if mm.is_null() {
        return Ok(0);
    }
    if vma.is_null() {
        // A clear: a removal when it is the process's own tree (munmap's store of the removed
        // mapping into its detach tree is not traced, so the mapping itself is not seen here).
        let mas: *const u8 = ctx.arg(1);
        let tree: *const u8 = read_kernel(mas, cfg.mas_tree_off)?;
        if cfg.mm_mt_off >= MAX_TASK_OFFSET || tree != mm.wrapping_add(cfg.mm_mt_off as usize) {
            return Ok(0);
        }
        return note(ctx, cfg, tgid, mm, PENDING_REMOVAL);
    }
    if read_kernel::<*const u8>(vma, cfg.vma_mm_off)? != mm {
        return Ok(0);
    }
    let file: *const u8 = read_kernel(vma, cfg.vma_file_off)?;
    let flags: u64 = read_kernel(vma, cfg.vma_flags_off)?;
    if !file.is_null() || flags & (VM_SHARED | VM_MAYSHARE) != 0 {
        // The mark does not wait for the release: it covers both tiers. The release then only
        // moves the anonymous base past this mapping's pages (they count in `total_vm` too).
        let marked = mark(ctx, tgid, reason::MAPPING);
        note(ctx, cfg, tgid, mm, PENDING_MAPPING)?;
        return marked;
    }
    // Anonymous: note it; the lock release does the arithmetic once the counters are final.
    note(ctx, cfg, tgid, mm, PENDING_ANON)
}

/// [`AnonState::pending`]: an anonymous mapping changed.
const PENDING_ANON: u32 = 1 << 0;
/// [`AnonState::pending`]: a file-backed or shared mapping changed (already marked MAPPING).
const PENDING_MAPPING: u32 = 1 << 1;
/// [`AnonState::pending`]: a mapping was removed (the release's counters tell which kind).
const PENDING_REMOVAL: u32 = 1 << 2;

/// `(total_vm, total_vm - data_vm - stack_vm)` of `mm`: all pages, and the pages of mappings that
/// are neither private writable nor stack (file-backed, shared, executable, read-only).
#[inline(always)]
fn vm_pages(cfg: &Config, mm: *const u8) -> Result<(u64, u64), u32> {
    let total: u64 = read_kernel(mm, cfg.mm_total_vm_off)?;
    let data: u64 = read_kernel(mm, cfg.mm_data_vm_off)?;
    let stack: u64 = read_kernel(mm, cfg.mm_stack_vm_off)?;
    Ok((total, total.saturating_sub(data.wrapping_add(stack))))
}

/// Creates the process's [`AnonState`] with the counters of `mm` as its bases. Full map: no
/// bookkeeping for this process (its mapping changes then mark conservatively, see `note`).
#[inline(always)]
fn new_state(cfg: &Config, tgid: u32, mm: *const u8, pending: u32) -> Result<AnonState, u32> {
    let (total, other) = vm_pages(cfg, mm)?;
    let state = AnonState {
        base_pages: total,
        other_pages: other,
        pending,
        _pad: 0,
    };
    ANON.insert(tgid, state, u64::from(BPF_ANY))
        .map_err(|_| 1_u32)?;
    Ok(state)
}

/// Adds `bit` to the process's pending changes, creating its [`AnonState`] if needed.
#[inline(always)]
fn note<C: EbpfContext>(
    ctx: &C,
    cfg: &Config,
    tgid: u32,
    mm: *const u8,
    bit: u32,
) -> Result<u32, u32> {
    if let Some(slot) = ANON.get_ptr_mut(tgid) {
        // SAFETY: from a successful lookup; the element stays valid in this program (RCU), and
        // only this process's own programs and its exit write it (the agent never touches this
        // map), so updating it in place loses nothing but a race between two of its threads,
        // which the next change repairs. In place, because an update re-allocates the element.
        unsafe {
            let pending = core::ptr::read_volatile(&raw const (*slot).pending);
            if pending & bit == 0 {
                core::ptr::write_volatile(&raw mut (*slot).pending, pending | bit);
            }
        }
        return Ok(0);
    }
    // First change seen: the bases are the counters now, before this change is counted (the
    // kernel updates the counters after storing or clearing the mapping).
    if new_state(cfg, tgid, mm, bit).is_err() {
        // No room to count (more than DIRTY_MAP_ENTRIES processes changing mappings): mark what
        // the change could be at most (a clear may have removed a file mapping).
        match bit {
            PENDING_ANON => return mark(ctx, tgid, reason::ANON),
            PENDING_REMOVAL => return mark(ctx, tgid, reason::MAPPING),
            _ => {}
        }
    }
    Ok(0)
}

/// `tp_btf/mmap_lock_released`: a process released its mmap lock. Every mapping change ends with
/// the release of the process's own mmap lock (write, or read after munmap's downgrade), with the
/// counters final; so the release, not `ma_write` (which the maple tree does not call on every
/// store path), is what no change escapes:
///
/// - `total_vm - data_vm - stack_vm` moved from its base: a file-backed, shared, executable or
///   read-only mapping came or went → [`reason::MAPPING`], whatever `ma_write` saw;
/// - else `total_vm` against the anonymous base: a net change of more than
///   `anon_min_change_pages` marks [`reason::ANON`] and moves the base.
///
/// Cost: one hash lookup for a read release of a process without bookkeeping (the common case:
/// page faults do not take the mmap lock on kernels with per-VMA locks); a write release of a
/// process without bookkeeping creates it (the counters now are its bases).
#[btf_tracepoint(function = "mmap_lock_released")]
pub fn memscope_unlock(ctx: BtfTracePointContext) -> u32 {
    match try_unlock(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_unlock(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let tgid = current_tgid();
    // mmap_lock_released(struct mm_struct *mm, bool write)
    let write: u64 = ctx.arg(1);
    let slot = ANON.get_ptr_mut(tgid);
    if slot.is_none() && write & 0xff == 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0_u32)?;
    if tgid == cfg.agent_tgid {
        return Ok(0);
    }
    // Only the process's own mm counts (another task reading this mm, e.g. /proc, releases it
    // too, and so does a kernel thread).
    let mm: *const u8 = ctx.arg(0);
    if mm.is_null() || current_mm(cfg)? != mm {
        return Ok(0);
    }
    let Some(slot) = slot else {
        // A process that changed its mappings before the tracker saw any of its changes (it
        // predates the tracker, or a new-process base could not be stored): no base to compare
        // with, so the change is marked as what it could be at most, once; from now on the
        // counters tell.
        // A failed store of the bases (full map) still marks: the next release tries again.
        let _ = new_state(cfg, tgid, mm, 0);
        return mark(ctx, tgid, reason::MAPPING);
    };
    // SAFETY: from a successful lookup; see `note` for why reading and writing it in place is
    // sound.
    let state = unsafe { core::ptr::read_volatile(slot) };
    let (total, other) = vm_pages(cfg, mm)?;
    let mapping = other != state.other_pages;
    if mapping {
        // Whether `ma_write` saw it or not (its mark, set mid-change, may have been drained
        // already): one lookup when the mark is still there.
        let _ = mark(ctx, tgid, reason::MAPPING);
    }
    let base_pages = if mapping || state.pending & PENDING_MAPPING != 0 {
        // Marked MAPPING (both tiers re-read): start counting afresh.
        total
    } else if total.abs_diff(state.base_pages) > cfg.anon_min_change_pages {
        // The mark's own failure (a full dirty map) is counted there; the base moves either way.
        let _ = mark(ctx, tgid, reason::ANON);
        total
    } else {
        state.base_pages
    };
    // SAFETY: as above.
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).base_pages, base_pages);
        core::ptr::write_volatile(&raw mut (*slot).other_pages, other);
        core::ptr::write_volatile(&raw mut (*slot).pending, 0);
    }
    Ok(0)
}

/// `tp_btf` rather than the classic tracepoint: its arguments are the parent and child
/// `task_struct`s, so the new task's tgid tells a new process from a new thread (the classic
/// tracepoint only has the child's task id, and a short-lived thread is gone before the agent can
/// look it up in /proc).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn memscope_fork(ctx: BtfTracePointContext) -> u32 {
    match try_fork(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    if cfg.task_tgid_off >= MAX_TASK_OFFSET {
        return Err(1);
    }
    // `current` is the parent; argument 1 is the child's `struct task_struct *`.
    let child: *const u8 = ctx.arg(1);
    // SAFETY: bpf_probe_read_kernel tolerates any address; the offset of `tgid` in `task_struct`
    // comes from the running kernel's BTF.
    let child_tgid =
        unsafe { bpf_probe_read_kernel(child.add(cfg.task_tgid_off as usize).cast::<i32>()) };
    let Ok(child_tgid) = child_tgid else {
        warn!(ctx, "sched_process_fork: cannot read the child's tgid");
        return Err(1);
    };
    let child_tgid = u32::try_from(child_tgid).map_err(|_| 1_u32)?;
    let parent = current_tgid();
    if child_tgid == parent {
        return Ok(0); // a new thread, not a new process
    }
    // The child's bases: its mm is a copy of the parent's, counters included (a child sharing
    // the parent's mm, vfork, has the parent's counters too).
    if let Ok(mm) = read_kernel::<*const u8>(child, cfg.task_mm_off)
        && !mm.is_null()
    {
        let _ = new_state(cfg, child_tgid, mm, 0);
    }
    Ok(emit(ctx, event_kind::FORK, child_tgid, parent, 0, 0))
}

#[tracepoint]
pub fn memscope_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    let tgid = current_tgid();
    if tgid == cfg.agent_tgid {
        return Ok(0);
    }
    let marked = mark(ctx, tgid, reason::EXEC);
    // The new program's bases (the agent re-reads it whole for EXEC): its later mapping changes
    // are then told by the counters.
    if let Ok(mm) = current_mm(cfg)
        && !mm.is_null()
    {
        let _ = new_state(cfg, tgid, mm, 0);
    }
    emit(ctx, event_kind::EXEC, tgid, 0, 0, 0);
    marked
}

#[tracepoint]
pub fn memscope_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    let tgid = current_tgid();
    let flags = if cfg.exit_group_dead_off == OFFSET_ABSENT {
        if current_pid() != tgid {
            return Ok(0);
        }
        event_flag::LEADER_EXIT
    } else {
        let group_dead: u8 = read_field(ctx, cfg.exit_group_dead_off)?;
        if group_dead == 0 {
            return Ok(0);
        }
        event_flag::GROUP_DEAD
    };
    // The process is gone: its mark and its bookkeeping are of no use and would only take slots.
    let _ = DIRTY.remove(tgid);
    let _ = ANON.remove(tgid);
    Ok(emit(ctx, event_kind::EXIT, tgid, 0, flags, 0))
}

/// `oom:mark_victim`: the OOM killer chose a victim. Runs in the context of the task that hit the
/// limit (often not the victim), so the victim comes from the record's `pid` field.
#[tracepoint]
pub fn memscope_oom(ctx: TracePointContext) -> u32 {
    match try_oom(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_oom(ctx: &TracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    if cfg.oom_pid_off == OFFSET_ABSENT {
        return Ok(0);
    }
    let pid: i32 = read_field(ctx, cfg.oom_pid_off)?;
    let pid = u32::try_from(pid).map_err(|_| 1_u32)?;
    Ok(emit(ctx, event_kind::OOM_KILL, pid, 0, 0, 0))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
