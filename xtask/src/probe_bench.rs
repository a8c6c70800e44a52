//! `cargo xtask probe-bench`: the programs' overhead on a 4 KiB mmap+munmap loop.
//!
//! Builds and runs the `probe_bench` binary of `memscope-tests` in release (it needs root); the
//! binary measures without and with the programs attached in one run and prints the table.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds and runs the probe overhead benchmark, passing its table through.
pub fn run() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "memscope-tests",
            "--bin",
            "probe_bench",
        ])
        .env("MEMSCOPE_REQUIRE_EBPF", "1")
        .status()
        .context("running `cargo run --release -p memscope-tests --bin probe_bench`")?;
    if !status.success() {
        bail!("probe_bench failed: {status}");
    }
    Ok(())
}
