//! The programs, maps and helpers (bpf target only).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use memscope_common::{
    CONFIG_READY, Config, Counters, DIRTY_MAP_ENTRIES, DirtyEntry, EVENTS_RING_BYTES,
    LifecycleEvent, OFFSET_ABSENT, event_flag, event_kind, reason,
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

#[map(name = "MEMSCOPE_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Largest tracepoint field offset we accept from the config (records are far smaller).
const MAX_FIELD_OFFSET: u32 = 4096;
/// Largest `task_struct` member offset we accept from the config.
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

/// Marks the current thread group dirty with `bit`.
///
/// Steady state: the entry exists and has `bit` → one lookup, no update. Otherwise the whole entry
/// is written with `bpf_map_update_elem`, never by a store into the looked-up element: the agent
/// drains with `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, and a store into an element it has just deleted
/// would be lost, whereas an update re-creates the entry.
#[inline(always)]
fn mark(ctx: &TracePointContext, bit: u32) -> Result<u32, u32> {
    let tgid = current_tgid();
    let Some(cfg) = config() else {
        return Ok(0);
    };
    if tgid == cfg.agent_tgid {
        return Ok(0);
    }
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

macro_rules! mark_program {
    ($name:ident, $bit:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match mark(&ctx, $bit) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

mark_program!(memscope_mmap, reason::MMAP);
mark_program!(memscope_munmap, reason::MUNMAP);
mark_program!(memscope_mremap, reason::MREMAP);
mark_program!(memscope_brk, reason::BRK);
mark_program!(memscope_shmat, reason::SHMAT);
mark_program!(memscope_shmdt, reason::SHMDT);
mark_program!(memscope_madvise, reason::MADVISE);

#[tracepoint]
pub fn memscope_shmget(ctx: TracePointContext) -> u32 {
    match try_shmget(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_shmget(ctx: &TracePointContext) -> Result<u32, u32> {
    let cfg = config().ok_or(0_u32)?;
    let tgid = current_tgid();
    if tgid == cfg.agent_tgid {
        return Ok(0);
    }
    // The mark is independent of the event: a full ring buffer must not cost the mark.
    let marked = mark(ctx, reason::SHMGET);
    let size: u64 = read_field(ctx, cfg.shmget_size_off)?;
    emit(ctx, event_kind::SHMGET, tgid, 0, 0, size);
    marked
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
    let marked = mark(ctx, reason::EXEC);
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
    // The process is gone: its mark is of no use and would only take a slot.
    let _ = DIRTY.remove(tgid);
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
