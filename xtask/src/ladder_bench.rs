//! `cargo xtask bench`: the cost ladder's steady-state tick in polling and eBPF mode against a full
//! smaps pass of the same workload (several hundred `memhog worker` processes, ~1 % changing per
//! tick, or the workload the arguments choose), how many ticks each mode takes to show a change
//! `statm` does not see, then the host-wide syscall overhead of the programs (`probe_bench`:
//! getppid and mmap+munmap with and without them), in one run.
//!
//! Builds `ladder_bench`, `probe_bench` and `memhog` of `memscope-tests` in release, then runs the
//! benches (they need root: eBPF, every process's smaps), passing extra arguments to
//! `ladder_bench` and their tables to stdout. It is a benchmark that prints numbers, never a timed
//! test.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds and runs the ladder benchmark with `args` (e.g. `--workers 500`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "the ladder bench needs root (eBPF tracepoints, every process's smaps): run `sudo cargo xtask bench`"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = crate::workspace_root();
    let build = [
        "build",
        "--release",
        "--package",
        "memscope-tests",
        "--bin",
        "ladder_bench",
        "--bin",
        "probe_bench",
        "--bin",
        "memhog",
    ];
    eprintln!("xtask: cargo {}", build.join(" "));
    let status = Command::new(&cargo)
        .args(build)
        .env("MEMSCOPE_REQUIRE_EBPF", "1")
        .current_dir(&root)
        .status()
        .context(
            "running `cargo build --release -p memscope-tests --bin ladder_bench --bin memhog`",
        )?;
    if !status.success() {
        bail!("building the ladder bench failed: {status}");
    }
    crate::run_release_bin("ladder_bench", args)?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(());
    }
    crate::run_release_bin("probe_bench", &[])
}
