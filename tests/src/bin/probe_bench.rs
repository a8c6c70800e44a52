//! Probe overhead benchmark (root): a 4 KiB anonymous mmap+munmap pair and a `getppid` (a syscall
//! that is not memory management) in loops, timed without and with memscope's programs attached,
//! in one run. Run via `cargo xtask probe-bench`.
//!
//! The programs are attached with agent tgid 0, so this process's own calls are *not* filtered:
//! each pair runs the mapping programs (`ma_write` on the store and the clear, `mmap_lock_released`
//! on each release) as any process pays. `getppid` runs no program: the programs hook the memory
//! management path only, so enabling them must not move it (syscall tracepoints would: they put
//! every syscall of every task on the slow path). Short rounds alternate without/with (the programs are
//! attached and detached between rounds) so load from other processes hits both sides alike;
//! each figure is the median of its rounds, the minimum is shown beside it. Rounds are timed in
//! this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so time preempted by other processes is
//! left out; the kernel's own per-program run time (BPF stats) is printed as a cross-check.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use memscope_agent::tracker::{self, TrackerState};
use memscope_tests::{bench::median, mmap_munmap_pair};

const ITERATIONS: u32 = 50_000;
const ROUNDS: usize = 21;
/// Pause after attaching and after detaching, so the kernel's deferred work is not timed.
const SETTLE: Duration = Duration::from_millis(300);

/// This thread's CPU time: unlike wall time it leaves out time spent preempted by other
/// processes, the main noise on a small shared machine.
fn thread_cpu_ns() -> anyhow::Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "seconds of CPU time fit in f64 exactly"
    )]
    Ok(ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64)
}

/// Calls of `getppid` per round (it is about 40x cheaper than a pair).
const GETPPID_ITERATIONS: u32 = 500_000;

/// CPU nanoseconds (user + system, this thread) per mmap+munmap pair over one round.
fn round() -> anyhow::Result<f64> {
    let started = thread_cpu_ns()?;
    for _ in 0..ITERATIONS {
        mmap_munmap_pair()?;
    }
    Ok((thread_cpu_ns()? - started) / f64::from(ITERATIONS))
}

/// CPU nanoseconds per `getppid` over one round (the raw syscall: glibc does not cache it).
fn getppid_round() -> anyhow::Result<f64> {
    let started = thread_cpu_ns()?;
    for _ in 0..GETPPID_ITERATIONS {
        // SAFETY: getppid has no preconditions and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    Ok((thread_cpu_ns()? - started) / f64::from(GETPPID_ITERATIONS))
}

/// Kernel-measured cost of the mapping programs (`BPF_ENABLE_STATS`) over one extra round: (ns
/// per program run, program runs per pair). Stats add their own clock reads, so the timed rounds
/// run without them.
fn ns_per_program_run() -> anyhow::Result<(f64, f64)> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let tracker = tracker::start(&tracker::StartOptions::new(0));
    round()?;
    let (mut time, mut count) = (0_u128, 0_u64);
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if matches!(info.name_as_str(), Some("memscope_vma" | "memscope_unlock")) {
            time += info.run_time().as_nanos();
            count += info.run_count();
        }
    }
    drop(tracker);
    if count == 0 {
        bail!("the mapping programs never ran");
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "nanosecond totals and counts far below 2^52"
    )]
    Ok((
        time as f64 / count as f64,
        count as f64 / f64::from(ITERATIONS),
    ))
}

#[expect(clippy::print_stdout, reason = "the table is this binary's output")]
fn main() -> anyhow::Result<()> {
    for _ in 0..2 {
        round()?; // warm-up
        getppid_round()?;
    }
    let mut without = Vec::new();
    let mut with = Vec::new();
    let (mut ppid_without, mut ppid_with) = (Vec::new(), Vec::new());
    let mut load_attach = Vec::new();
    for _ in 0..ROUNDS {
        without.push(round()?);
        ppid_without.push(getppid_round()?);
        let started = Instant::now();
        let tracker = tracker::start(&tracker::StartOptions::new(0));
        load_attach.push(started.elapsed().as_secs_f64() * 1e3);
        if let TrackerState::Polling { reason } = tracker.source.state() {
            bail!("the programs did not attach, nothing to measure: {reason}");
        }
        std::thread::sleep(SETTLE);
        with.push(round()?);
        ppid_with.push(getppid_round()?);
        drop(tracker);
        // Detaching frees programs and maps in deferred kernel work; let it finish first.
        std::thread::sleep(SETTLE);
    }
    without.push(round()?);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (per_run, runs_per_pair) = ns_per_program_run()?;
    let (ppid_without_min, ppid_with_min) = (min(&ppid_without), min(&ppid_with));
    let (ppid_without, ppid_with) = (median(&ppid_without), median(&ppid_with));
    let (without_min, with_min) = (min(&without), min(&with));
    let (without_ns, with_ns) = (median(&without), median(&with));
    let overhead = (with_ns / without_ns - 1.0) * 100.0;
    println!(
        "probe overhead: 4 KiB mmap+munmap pair ({ITERATIONS} x {ROUNDS} rounds) and getppid \
         ({GETPPID_ITERATIONS} x {ROUNDS} rounds), thread CPU time"
    );
    println!("| operation      | programs | ns/op (median) | ns/op (min) |");
    println!("|----------------|----------|----------------|-------------|");
    println!("| mmap+munmap    | without  | {without_ns:>14.1} | {without_min:>11.1} |");
    println!("| mmap+munmap    | with     | {with_ns:>14.1} | {with_min:>11.1} |");
    println!("| getppid        | without  | {ppid_without:>14.1} | {ppid_without_min:>11.1} |");
    println!("| getppid        | with     | {ppid_with:>14.1} | {ppid_with_min:>11.1} |");
    println!(
        "mmap+munmap overhead: {overhead:+.1} % median ({:+.1} ns per pair), {:+.1} % min",
        with_ns - without_ns,
        (with_min / without_min - 1.0) * 100.0
    );
    println!(
        "getppid overhead: {:+.1} % median, {:+.1} % min (target <= 2 %)",
        (ppid_with / ppid_without - 1.0) * 100.0,
        (ppid_with_min / ppid_without_min - 1.0) * 100.0
    );
    // The stats are per program, not per process: runs for every other process's mapping
    // changes and mmap lock releases during the round are included.
    println!(
        "kernel-measured (BPF stats, host-wide during one round): {per_run:.1} ns per program run, \
         {runs_per_pair:.1} runs per pair of this loop (other processes' runs included, so an upper \
         bound: {:+.1} % of a pair without)",
        runs_per_pair * per_run / without_ns * 100.0
    );
    let load_worst = load_attach.iter().copied().fold(0.0, f64::max);
    println!(
        "load+attach (6 programs): {:.1} ms median, {load_worst:.1} ms worst of {ROUNDS}",
        median(&load_attach)
    );
    Ok(())
}
