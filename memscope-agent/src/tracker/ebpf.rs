//! The eBPF dirty source: loads and attaches the programs, drains the dirty map, and runs the
//! thread that moves lifecycle events from the ring buffer to the tokio channel.
//!
//! # Why drain cannot lose marks
//!
//! The drain takes each key with `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which reads and removes the
//! entry atomically under the map's bucket lock. The programs never store into an element they
//! looked up: a new reason bit is added by writing the whole entry with `bpf_map_update_elem`.
//! So a mark racing with the drain either lands before the delete (and the drain returns it), or
//! re-creates the entry after it (and the next drain returns it). A store into a looked-up
//! element could instead land in an element the drain just deleted and be lost.
//! The steady state (entry exists with the bit) is one lookup and no write; the entry repeats its
//! tgid so a program reading an element that was deleted and reused for another key sees the
//! mismatch and updates. The only imprecision is between two threads of one process adding
//! different bits at the same instant: one bit may be overwritten, but the process stays marked.
//!
//! The alternative, two maps with a generation flag in the config, needs the agent to wait until
//! no program still writes to the old map (an RCU grace period, obtainable only indirectly) and
//! costs a second map; per-key lookup-and-delete gives the guarantee with the kernel's own locking.
//! Keys marked after the drain listed them stay in the map for the next drain.

use std::{
    collections::HashMap as StdHashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use memscope_common::{
    CONFIG_MAP, COUNTERS_MAP, Config, Counters, DIRTY_MAP, DIRTY_MAP_ENTRIES, DirtyEntry,
    EVENTS_MAP, LifecycleEvent, event_kind, reason,
};
use tokio::sync::mpsc;

use super::{
    DirtyMark, DirtySource, EVENT_CHANNEL_CAPACITY, StartOptions, TrackerError, TrackerState,
    TrackerStats, btf, tracefs,
};

/// The object built by `build.rs` from the `memscope-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memscope-probes"));

/// (program, tracefs category, tracepoint) of the classic tracepoint programs.
const PROGRAMS: [(&str, &str, &str); 2] = [
    ("memscope_exec", "sched", "sched_process_exec"),
    ("memscope_exit", "sched", "sched_process_exit"),
];

/// (program, raw tracepoint) of the `tp_btf` programs: they read kernel structs through pointer
/// arguments (classic tracepoints would copy fields into a trace record first).
const BTF_PROGRAMS: [(&str, &str); 3] = [
    ("memscope_fork", "sched_process_fork"),
    ("memscope_vma", "ma_write"),
    ("memscope_unlock", "mmap_lock_released"),
];

/// Kernel struct members the programs read, from the kernel's BTF (the order of the destructuring
/// in [`EbpfSource::start`]).
const KERNEL_MEMBERS: [(&str, &str); 10] = [
    ("task_struct", "tgid"),
    ("task_struct", "mm"),
    ("mm_struct", "total_vm"),
    ("vm_area_struct", "vm_mm"),
    ("vm_area_struct", "vm_flags"),
    ("vm_area_struct", "vm_file"),
    ("mm_struct", "data_vm"),
    ("mm_struct", "stack_vm"),
    ("mm_struct", "mm_mt"),
    ("ma_state", "tree"),
];

/// How often the event thread wakes up without events, to notice it should stop.
const POLL_TIMEOUT_MS: i32 = 200;

/// After a wakeup for events, how long the event thread lets more gather before it reads them:
/// under fork churn (hundreds of forks and exits a second) a wakeup per event cost the agent more
/// than its ticks, while a batch per 20 ms costs a few. It is also the most an exit waits before
/// its `exit` record goes out (the ring holds 8192 events: a 20 ms batch fills it only at 400 000
/// events a second).
const EVENT_BATCH: Duration = Duration::from_millis(20);

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` from `linux/bpf.h` (stable UAPI; aya keeps its own private).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// Shared between the source and the event thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    events_received: AtomicU64,
    events_unsent: AtomicU64,
    /// Processes created by fork since the last drain: drained as marks with the FORK reason.
    forked: Mutex<Vec<u32>>,
}

pub(super) struct EbpfSource {
    state: TrackerState,
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    dirty: Map,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    marks_received: u64,
}

impl EbpfSource {
    pub(super) fn start(
        opts: &StartOptions,
    ) -> Result<(Self, mpsc::Receiver<LifecycleEvent>), TrackerError> {
        let started = Instant::now();
        let agent_tgid = opts.agent_tgid;
        let tracefs = tracefs::find_or_mount(opts.mount_tracefs)?;
        let vmlinux = std::fs::read(btf::VMLINUX_BTF).map_err(|source| TrackerError::BtfRead {
            path: btf::VMLINUX_BTF.into(),
            source,
        })?;
        let offsets = btf::member_offsets(&vmlinux, &KERNEL_MEMBERS).map_err(|source| {
            TrackerError::BtfParse {
                path: btf::VMLINUX_BTF.into(),
                source,
            }
        })?;
        drop(vmlinux);
        let [
            task_tgid_off,
            task_mm_off,
            mm_total_vm_off,
            vma_mm_off,
            vma_flags_off,
            vma_file_off,
            mm_data_vm_off,
            mm_stack_vm_off,
            mm_mt_off,
            mas_tree_off,
        ] = offsets[..]
        else {
            return Err(TrackerError::BtfParse {
                path: btf::VMLINUX_BTF.into(),
                source: btf::BtfError::Malformed(0),
            });
        };
        let config = Config {
            task_tgid_off,
            task_mm_off,
            mm_total_vm_off,
            vma_mm_off,
            vma_flags_off,
            vma_file_off,
            mm_data_vm_off,
            mm_stack_vm_off,
            mm_mt_off,
            mas_tree_off,
            anon_min_change_pages: opts.anon_min_change / page_size(),
            ..tracefs::Formats::read(&tracefs)?.config(agent_tgid)?
        };

        // One parse of the kernel's BTF serves the loader's relocations and the tp_btf program.
        let kernel_btf = Btf::from_sys_fs().map_err(|e| TrackerError::BtfLoad(Box::new(e)))?;
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&kernel_btf));
        if let Some(entries) = opts.dirty_map_entries {
            loader.map_max_entries(DIRTY_MAP, entries.max(1));
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| TrackerError::Load(Box::new(e)))?;
        let logger = start_logger(&mut ebpf);
        write_config(&mut ebpf, config)?;
        for (name, category, tracepoint) in PROGRAMS {
            attach_tracepoint(&mut ebpf, name, category, tracepoint)?;
        }
        // Optional: without `oom:mark_victim` the OOM kill is inferred from the cgroup counters.
        let oom = config.oom_pid_off != memscope_common::OFFSET_ABSENT;
        if oom {
            attach_tracepoint(&mut ebpf, OOM_PROGRAM, "oom", "mark_victim")?;
        }
        for (name, tracepoint) in BTF_PROGRAMS {
            attach_btf(&mut ebpf, &kernel_btf, name, tracepoint)?;
        }
        let dirty = ebpf
            .take_map(DIRTY_MAP)
            .ok_or(TrackerError::MissingMap { name: DIRTY_MAP })?;
        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or(TrackerError::MissingMap { name: EVENTS_MAP })?;
        let events = RingBuf::try_from(events).map_err(|source| TrackerError::Map {
            name: EVENTS_MAP,
            source: Box::new(source),
        })?;

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("memscope-events".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || event_loop(events, logger, tx, &shared)
            })
            .map_err(TrackerError::Thread)?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            programs = PROGRAMS.len() + BTF_PROGRAMS.len() + usize::from(oom),
            tracefs = %tracefs.display(),
            "eBPF programs loaded and attached"
        );
        Ok((
            Self {
                state: TrackerState::Ebpf,
                ebpf,
                dirty,
                shared,
                thread: Some(thread),
                marks_received: 0,
            },
            rx,
        ))
    }

    fn counters(&self) -> Counters {
        let Some(map) = self.ebpf.map(COUNTERS_MAP) else {
            return Counters::default();
        };
        let Ok(array) = PerCpuArray::<_, Counters>::try_from(map) else {
            return Counters::default();
        };
        match array.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().fold(Counters::default(), |acc, c| Counters {
                marks_dropped: acc.marks_dropped + c.marks_dropped,
                events_lost: acc.events_lost + c.events_lost,
                marks: acc.marks + c.marks,
            }),
            Err(err) => {
                tracing::debug!("reading {COUNTERS_MAP}: {err}");
                Counters::default()
            }
        }
    }
}

impl DirtySource for EbpfSource {
    fn state(&self) -> &TrackerState {
        &self.state
    }

    fn drain(&mut self) -> Vec<DirtyMark> {
        let Map::HashMap(data) = &self.dirty else {
            return Vec::new();
        };
        let mut keys: Vec<u32> = match HashMap::<&MapData, u32, DirtyEntry>::try_from(&self.dirty) {
            // A key deleted by an exiting process mid-walk restarts the kernel's walk: bound it.
            Ok(map) => map
                .keys()
                .take(2 * DIRTY_MAP_ENTRIES as usize)
                .filter_map(Result::ok)
                .collect(),
            Err(err) => {
                tracing::debug!("{DIRTY_MAP}: {err}");
                Vec::new()
            }
        };
        keys.sort_unstable();
        keys.dedup();

        let mut marks: StdHashMap<u32, DirtyMark> = StdHashMap::with_capacity(keys.len());
        let fd = data.fd().as_fd();
        for key in keys {
            match lookup_and_delete(fd, key) {
                Ok(Some(entry)) => {
                    marks.insert(
                        key,
                        DirtyMark {
                            tgid: key,
                            reasons: entry.reasons,
                            count: entry.count.max(1),
                        },
                    );
                }
                Ok(None) => {} // removed since the walk (the process exited)
                Err(err) => tracing::debug!("{DIRTY_MAP}: lookup and delete {key}: {err}"),
            }
        }
        let forked = match self.shared.forked.lock() {
            Ok(mut forked) => std::mem::take(&mut *forked),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for tgid in forked {
            let mark = marks.entry(tgid).or_insert(DirtyMark {
                tgid,
                reasons: 0,
                count: 0,
            });
            mark.reasons |= reason::FORK;
            mark.count = mark.count.saturating_add(1);
        }
        let mut marks: Vec<DirtyMark> = marks.into_values().collect();
        marks.sort_unstable_by_key(|m| m.tgid);
        self.marks_received += marks.len() as u64;
        marks
    }

    fn stats(&self) -> TrackerStats {
        let counters = self.counters();
        TrackerStats {
            marks_received: self.marks_received,
            marks_dropped: counters.marks_dropped,
            events_received: self.shared.events_received.load(Ordering::Relaxed),
            events_lost: counters.events_lost + self.shared.events_unsent.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EbpfSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the eBPF event thread panicked");
        }
    }
}

/// Lifts RLIMIT_MEMLOCK before loading: kernels before 5.11 charge BPF maps and programs to it
/// (later ones to the memory cgroup), and its usual default (8 MiB or less) is too small there.
/// Unlimited needs CAP_SYS_RESOURCE; without it the soft limit is raised to the hard one. A
/// failure is only logged: on a recent kernel the limit does not matter, and on an old one the
/// load then fails with its own error.
fn raise_memlock_limit() {
    let set = |lim: &libc::rlimit| {
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, lim) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if set(&unlimited).is_ok() {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
    lim.rlim_cur = lim.rlim_max;
    let raised = if got {
        set(&lim)
    } else {
        Err(io::Error::last_os_error())
    };
    match raised {
        Ok(()) => tracing::debug!(
            "RLIMIT_MEMLOCK raised to its hard limit ({} bytes), not unlimited (no CAP_SYS_RESOURCE)",
            lim.rlim_max
        ),
        Err(e) => tracing::debug!("raising RLIMIT_MEMLOCK failed: {e}"),
    }
}

/// The program attached to `oom:mark_victim` when the kernel has it.
const OOM_PROGRAM: &str = "memscope_oom";

/// Loads the classic tracepoint program `name` and attaches it to `category:tracepoint`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> Result<(), TrackerError> {
    let failed = |source| TrackerError::Program {
        name,
        category,
        tracepoint,
        source: Box::new(source),
    };
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(TrackerError::MissingProgram { name })?
        .try_into()
        .map_err(failed)?;
    program
        .load()
        .and_then(|()| program.attach(category, tracepoint).map(drop))
        .map_err(failed)
}

/// Loads the `tp_btf` program `name` and attaches it to the raw tracepoint `tracepoint`.
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<(), TrackerError> {
    let program_error = |source| TrackerError::Program {
        name,
        category: "tp_btf",
        tracepoint,
        source: Box::new(source),
    };
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(TrackerError::MissingProgram { name })?
        .try_into()
        .map_err(program_error)?;
    program.load(tracepoint, btf).map_err(program_error)?;
    program.attach().map_err(program_error)?;
    Ok(())
}

/// The system page size (the unit of `mm->total_vm`).
fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<(), TrackerError> {
    let map = ebpf
        .map_mut(CONFIG_MAP)
        .ok_or(TrackerError::MissingMap { name: CONFIG_MAP })?;
    let mut array = Array::<_, Config>::try_from(map).map_err(|source| TrackerError::Map {
        name: CONFIG_MAP,
        source: Box::new(source),
    })?;
    array.set(0, config, 0).map_err(|source| TrackerError::Map {
        name: CONFIG_MAP,
        source: Box::new(source),
    })
}

/// Reads and removes one dirty entry; `Ok(None)` if the key is gone.
fn lookup_and_delete(fd: BorrowedFd<'_>, key: u32) -> io::Result<Option<DirtyEntry>> {
    /// The `bpf_attr` member used by the map element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = DirtyEntry::default();
    let attr = ElemAttr {
        map_fd: u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command whose key and value pointers
    // point to live objects of the map's key and value sizes (u32, DirtyEntry).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(value));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// aya-log: forwards the programs' log records to `tracing`. Warns once and goes on without.
fn start_logger(ebpf: &mut Ebpf) -> Option<aya_log::EbpfLogger<LogToTracing>> {
    match aya_log::EbpfLogger::init_with_logger(ebpf, LogToTracing) {
        Ok(logger) => Some(logger),
        Err(err) => {
            tracing::warn!("eBPF program logs unavailable (aya-log did not start): {err}");
            None
        }
    }
}

/// A `log::Log` that re-emits aya-log records as `tracing` events.
struct LogToTracing;

impl log::Log for LogToTracing {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let args = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "memscope::ebpf", "{args}"),
            log::Level::Warn => tracing::warn!(target: "memscope::ebpf", "{args}"),
            log::Level::Info => tracing::info!(target: "memscope::ebpf", "{args}"),
            log::Level::Debug => tracing::debug!(target: "memscope::ebpf", "{args}"),
            log::Level::Trace => tracing::trace!(target: "memscope::ebpf", "{args}"),
        }
    }

    fn flush(&self) {}
}

/// The event thread: waits on the ring buffers with `poll(2)` (never on an async worker), forwards
/// lifecycle events to the channel, flushes program logs, and stops when the source is dropped.
fn event_loop(
    mut events: RingBuf<MapData>,
    mut logger: Option<aya_log::EbpfLogger<LogToTracing>>,
    tx: mpsc::Sender<LifecycleEvent>,
    shared: &Shared,
) {
    let mut receiver_gone = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = vec![libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(logger) = &logger {
            fds.push(libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let rc = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                libc::nfds_t::try_from(fds.len()).unwrap_or(1),
                POLL_TIMEOUT_MS,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                tracing::warn!("eBPF event thread: poll: {err}; retrying");
                std::thread::sleep(Duration::from_millis(u64::from(
                    POLL_TIMEOUT_MS.unsigned_abs(),
                )));
            }
            continue;
        }
        if rc > 0 && fds[0].revents & libc::POLLIN != 0 && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(EVENT_BATCH);
        }
        while let Some(item) = events.next() {
            let Some(event) = parse_event(&item) else {
                continue;
            };
            drop(item);
            shared.events_received.fetch_add(1, Ordering::Relaxed);
            if event.kind == event_kind::FORK {
                match shared.forked.lock() {
                    Ok(mut forked) => forked.push(event.tgid),
                    Err(poisoned) => poisoned.into_inner().push(event.tgid),
                }
            }
            if receiver_gone || tx.blocking_send(event).is_err() {
                receiver_gone = true;
                shared.events_unsent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(logger) = &mut logger {
            logger.flush();
        }
    }
}

fn parse_event(bytes: &[u8]) -> Option<LifecycleEvent> {
    if bytes.len() < size_of::<LifecycleEvent>() {
        return None;
    }
    // SAFETY: the length is checked; LifecycleEvent is plain integers (any bit pattern is valid)
    // and read_unaligned tolerates the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<LifecycleEvent>()) })
}
